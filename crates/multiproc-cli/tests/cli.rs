//! The `multiproc` binary, run as a user would.

use std::process::{Command, Output};

fn multiproc(args: &[&str]) -> Output {
    let out = Command::new(env!("CARGO_BIN_EXE_multiproc"))
        .args(args)
        .output()
        .expect("run the multiproc binary");
    if !out.status.success() {
        eprintln!("stdout:\n{}", String::from_utf8_lossy(&out.stdout));
        eprintln!("stderr:\n{}", String::from_utf8_lossy(&out.stderr));
    }
    out
}

fn stdout(out: &Output) -> String {
    String::from_utf8(out.stdout.clone()).expect("utf-8 output")
}

/// 2 runs of 0..1,000,000: 2 × 499,999,500,000.
const TOTAL_1M: &str = "999999000000";

#[test]
fn demo_prints_the_right_total_in_all_three_modes() {
    for method in ["forkserver", "fork", "spawn"] {
        let out = multiproc(&[
            "demo",
            "--n",
            "1000000",
            "--repeat",
            "1",
            "--start-method",
            method,
        ]);
        assert!(out.status.success(), "demo with {method} failed");
        let text = stdout(&out);
        let totals: Vec<&str> = text
            .lines()
            .filter_map(|l| l.strip_prefix("total: "))
            .collect();
        assert_eq!(totals, [TOTAL_1M; 3], "{method}:\n{text}");
        assert!(text.contains(&format!("start method: {method}")), "{text}");
        assert!(
            text.contains("1st run") && text.contains("2nd run"),
            "{text}"
        );
        assert!(text.contains("all totals correct"), "{text}");
    }
}

#[test]
fn demo_speaks_the_tutorials_korean() {
    let out = multiproc(&["demo", "--n", "1000000", "--repeat", "1", "--lang", "ko"]);
    assert!(out.status.success());
    let text = stdout(&out);
    for label in ["1 번째 실행", "2 번째 실행", "  초 경과", "  배 속도 향상"] {
        assert!(text.contains(label), "missing {label:?} in:\n{text}");
    }
    let totals = text
        .lines()
        .filter(|l| *l == format!("합계 결과: {TOTAL_1M}"))
        .count();
    assert_eq!(totals, 3, "{text}");
}

#[test]
fn demo_scales_to_more_processes() {
    let out = multiproc(&["demo", "--n", "1000", "--procs", "3", "--repeat", "2"]);
    assert!(out.status.success());
    let text = stdout(&out);
    // 3 × 499,500
    assert_eq!(text.matches("total: 1498500\n").count(), 3, "{text}");
    assert!(text.contains("3rd run"), "{text}");
}

#[test]
fn demo_rejects_a_total_that_cannot_fit() {
    let out = multiproc(&["demo", "--n", "10000000000"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("does not fit"));
}

#[test]
fn bench_json_has_a_row_per_start_method() {
    let out = multiproc(&[
        "bench",
        "--iters",
        "20",
        "--warmup",
        "2",
        "--json",
        "--only",
        "start+join",
    ]);
    assert!(out.status.success());
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).expect("valid JSON");
    assert_eq!(report["iters"], 20);
    let latency = &report["workloads"][0];
    assert_eq!(latency["name"], "start+join");
    let rows = latency["rows"].as_array().expect("rows");
    let reference = latency["reference"].as_str().expect("reference");
    let floor = rows
        .iter()
        .find(|r| r["name"] == reference)
        .expect("reference row");
    assert_eq!(floor["ratio"], 1.0);
    for method in ["fork", "spawn", "forkserver"] {
        let row = rows
            .iter()
            .find(|r| r["name"] == method)
            .unwrap_or_else(|| panic!("no row for {method}: {report}"));
        assert_eq!(row["kind"], "multiproc");
        let median = row["median_us"].as_f64().expect("median_us");
        let (p10, p90) = (
            row["p10_us"].as_f64().unwrap(),
            row["p90_us"].as_f64().unwrap(),
        );
        assert!(median > 0.0 && p10 <= median && median <= p90, "{row}");
        assert!(row["ratio"].as_f64().unwrap() > 0.0);
    }
}

fn python3_works() -> bool {
    Command::new("python3")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success())
}

#[test]
fn bench_apply_round_trip_compares_with_the_floor_and_python() {
    let out = multiproc(&[
        "bench",
        "--iters",
        "3",
        "--warmup",
        "1",
        "--json",
        "--only",
        "apply round trip",
    ]);
    assert!(out.status.success());
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).expect("valid JSON");
    assert!(report["memory"].is_null(), "{report}");
    let workload = &report["workloads"][0];
    assert_eq!(workload["name"], "apply round trip");
    assert_eq!(workload["reference"], "raw pipe round trip");
    let rows = workload["rows"].as_array().expect("rows");
    let row = |name: &str| {
        rows.iter()
            .find(|r| r["name"] == name)
            .unwrap_or_else(|| panic!("no row {name:?}: {workload}"))
    };
    assert_eq!(row("raw pipe round trip")["ratio"], 1.0);
    for name in ["Pool::apply, 1 worker", "ThreadPool::apply"] {
        assert_eq!(row(name)["kind"], "multiproc");
        assert!(row(name)["median_us"].as_f64().unwrap() > 0.0);
    }
    let findings = workload["findings"].as_array().expect("findings");
    assert!(
        findings
            .iter()
            .any(|f| f.as_str().unwrap().contains("target")),
        "{workload}"
    );
    let pool = row("Pool::apply, 1 worker");
    if python3_works() {
        assert_eq!(row("Python Pool.apply")["kind"], "python");
        assert_eq!(pool["python_case"], "Python Pool.apply");
        assert!(pool["speedup_vs_python"].as_f64().unwrap() > 0.0, "{pool}");
    } else {
        assert!(pool["speedup_vs_python"].is_null(), "{pool}");
    }
}

#[test]
fn bench_rejects_an_unknown_workload() {
    let out = multiproc(&["bench", "--only", "no such thing"]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("no such thing") && err.contains("tiny tasks"),
        "{err}"
    );
}

#[test]
fn demo_pool_mode_gets_the_right_total() {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_multiproc"))
        .args(["demo", "--n", "1000000", "--repeat", "1", "--pool"])
        .output()
        .expect("run multiproc demo --pool");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("Pool of 2 worker processes"), "{stdout}");
    assert_eq!(stdout.matches("total: 999999000000").count(), 4, "{stdout}");
}

fn redis_server_on_path() -> bool {
    Command::new("redis-server")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success())
}

#[test]
fn bench_cluster_runs_beside_the_local_pool_and_cleans_up() {
    let out = multiproc(&[
        "bench", "--iters", "1", "--warmup", "0", "--json", "--only", "cluster",
    ]);
    assert!(out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).expect("valid JSON");
    let workloads = report["workloads"].as_array().expect("workloads");
    if !redis_server_on_path() {
        assert!(workloads.is_empty(), "{report}");
        assert!(stderr.contains("no redis-server on the PATH"), "{stderr}");
        return;
    }
    let names: Vec<&str> = workloads
        .iter()
        .map(|w| w["name"].as_str().unwrap())
        .collect();
    assert_eq!(
        names,
        [
            "cluster tiny calls",
            "cluster tutorial job",
            "cluster node loss"
        ]
    );
    for w in workloads {
        let rows = w["rows"].as_array().expect("rows");
        assert_eq!(rows.len(), 2, "{w}");
        let reference = rows.iter().find(|r| r["name"] == w["reference"]);
        assert_eq!(reference.expect("reference row")["ratio"], 1.0, "{w}");
        assert!(rows.iter().all(|r| r["median_us"].as_f64().unwrap() > 0.0));
    }
    // Losing a node costs at least its lease (1 s).
    let kill = &workloads[2]["rows"][1];
    assert!(kill["name"].as_str().unwrap().contains("SIGKILL"), "{kill}");
    assert!(kill["median_us"].as_f64().unwrap() >= 1e6, "{kill}");
    assert!(
        !stderr.contains("keys left") && !stderr.contains("did not stop"),
        "{stderr}"
    );
}

/// A fresh, empty directory for one test's files, removed when dropped.
struct TempDir(std::path::PathBuf);

impl TempDir {
    fn new(tag: &str) -> TempDir {
        let dir = std::env::temp_dir().join(format!("multiproc-cli-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("create a temp dir");
        TempDir(dir)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

#[test]
fn demo_plot_draws_both_series_the_ideal_line_and_labelled_axes() {
    let dir = TempDir::new("plot");
    let svg = dir.0.join("speedup.svg");
    let out = multiproc(&[
        "demo",
        "--n",
        "100000",
        "--repeat",
        "1",
        "--max-workers",
        "2",
        "--plot",
        svg.to_str().unwrap(),
    ]);
    assert!(out.status.success());
    let text = stdout(&out);
    assert!(text.contains("all totals correct"), "{text}");
    // A line per worker count.
    for workers in ["      1  ", "      2  "] {
        assert!(text.lines().any(|l| l.starts_with(workers)), "{text}");
    }
    let chart = std::fs::read_to_string(&svg).expect("the SVG was written");
    assert!(chart.starts_with("<svg"), "{chart}");
    let texts: Vec<&str> = chart
        .split("<text")
        .skip(1)
        .filter_map(|t| t.split_once('>')?.1.split_once("</text>"))
        .map(|(inner, _)| inner.trim())
        .collect();
    for label in [
        "workers",
        "speed-up over sequential",
        "processes",
        "threads",
        "ideal (linear)",
        "1",
        "2",
    ] {
        assert!(texts.contains(&label), "no text {label:?} in {texts:?}");
    }
    // Lines: the ideal one and a line for each series (with a legend sample each),
    // and a dot per measured point (2 series × 2 worker counts).
    assert!(chart.matches("<polyline").count() >= 6, "{chart}");
    assert!(chart.matches("<circle").count() >= 4, "{chart}");
}

#[test]
fn demo_plot_and_procs_do_not_mix() {
    let out = multiproc(&["demo", "--plot", "x.svg", "--procs", "3"]);
    assert!(!out.status.success());
    let out = multiproc(&["demo", "--max-workers", "2"]);
    assert!(!out.status.success(), "--max-workers needs --plot");
}

#[test]
fn rust_log_shows_the_pool_workers_starting() {
    let run = |rust_log: Option<&str>| {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_multiproc"));
        cmd.args(["demo", "--n", "1000", "--repeat", "1", "--pool"]);
        cmd.env_remove("RUST_LOG");
        if let Some(v) = rust_log {
            cmd.env("RUST_LOG", v);
        }
        let out = cmd.output().expect("run multiproc");
        assert!(out.status.success());
        String::from_utf8_lossy(&out.stderr).into_owned()
    };
    let logged = run(Some("multiproc=debug"));
    assert!(logged.contains("pool worker started"), "{logged}");
    assert!(logged.contains("DEBUG"), "{logged}");
    let quiet = run(None);
    assert!(!quiet.contains("pool worker started"), "{quiet}");
}

/// Every case of the word count and managers workloads runs once, Python's included
/// (where `python3` is), with a first-call figure for each: a broken Python job or a
/// first-call child that fails ends the bench with an error, so this catches both.
#[test]
fn bench_word_count_and_managers_run_every_case_with_first_calls() {
    let out = multiproc(&[
        "bench",
        "--iters",
        "1",
        "--warmup",
        "0",
        "--first-call",
        "1",
        "--json",
        "--only",
        "word count",
        "--only",
        "managers",
    ]);
    assert!(out.status.success());
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).expect("valid JSON");
    let workloads = report["workloads"].as_array().expect("workloads");
    assert_eq!(workloads.len(), 2, "{report}");
    let python = Command::new("python3").arg("--version").output().is_ok();
    for w in workloads {
        let rows = w["rows"].as_array().unwrap();
        assert!(
            rows.iter().any(|r| r["kind"] == "python") == python,
            "{}: Python rows iff python3 exists",
            w["name"]
        );
        if w["name"] == "word count" {
            for r in rows {
                assert!(r["first_call"]["median_us"].as_f64().unwrap() > 0.0, "{r}");
            }
        }
    }
}
