//! The MPI pool under a real launcher: `mpirun -n 3` on the `mpi_check` example.
//!
//! Needs Open MPI's `mpirun` (Debian: `openmpi-bin`); without it each test says so and
//! passes. The README's test command, `cargo xtask test`, installs it, builds the example
//! (these tests run it), and runs these tests with feature `mpi`.
#![cfg(feature = "mpi")]

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

use common::mpi::{MPI_ENV, SERIAL, ShmDir, have_mpirun, mpirun};
use common::netns::TwoHosts;

/// `target/<profile>/examples/mpi_check`, next to this test's `deps/` directory.
fn example() -> PathBuf {
    let exe = std::env::current_exe().expect("test executable path");
    let profile_dir = exe
        .parent()
        .and_then(Path::parent)
        .expect("target/<profile>");
    let path = profile_dir.join("examples").join("mpi_check");
    assert!(
        path.exists(),
        "{} is missing: build it with `cargo build -p multiproc --features mpi --example mpi_check`",
        path.display()
    );
    path
}

fn text(o: &Output) -> (String, String) {
    (
        String::from_utf8_lossy(&o.stdout).into_owned(),
        String::from_utf8_lossy(&o.stderr).into_owned(),
    )
}

#[test]
fn map_tutorial_panic_and_interface_on_three_ranks() {
    if !have_mpirun() {
        return;
    }
    let ex = example();
    let (out, _) = mpirun(&["-n", "3", ex.to_str().unwrap()]);
    let (stdout, _) = text(&out);
    assert!(out.status.success(), "mpi_check failed");
    assert!(stdout.contains("2 worker ranks"), "{stdout}");
    assert!(stdout.contains("map of 10000 ok"), "{stdout}");
    assert!(
        stdout.contains("tutorial total 1249999975000000 ok"),
        "{stdout}"
    );
    assert!(stdout.contains("task 7 failed on purpose"), "{stdout}");
    assert!(stdout.contains("mpi_check: OK"), "{stdout}");
}

#[test]
fn without_a_launcher_the_pool_is_a_clear_error() {
    // No mpirun needed: that is the point.
    let ex = example();
    let out = Command::new("timeout")
        .args(["-k", "5", "30"])
        .arg(&ex)
        .env_remove("OMPI_COMM_WORLD_RANK")
        .env_remove("PMIX_RANK")
        .env_remove("PMI_RANK")
        .output()
        .expect("running the example");
    let (_, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("not started by an MPI launcher") && stderr.contains("mpirun -n N"),
        "{stderr}"
    );
}

#[test]
fn one_rank_is_a_clear_error() {
    if !have_mpirun() {
        return;
    }
    let ex = example();
    let (out, _) = mpirun(&["-n", "1", ex.to_str().unwrap()]);
    let (_, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("this MPI job has 1 rank"), "{stderr}");
}

#[test]
fn a_task_past_its_timeout_errors_then_aborts_the_job() {
    if !have_mpirun() {
        return;
    }
    let ex = example();
    let (out, took) = mpirun(&["-n", "3", ex.to_str().unwrap(), "--timeout"]);
    let (stdout, stderr) = text(&out);
    // The caller saw the typed error, then the job was aborted (the rank never came back).
    assert!(stdout.contains("Err(Timeout"), "{stdout}");
    assert_eq!(out.status.code(), Some(124), "{stderr}");
    assert!(stderr.contains("task_timeout"), "{stderr}");
    assert!(took < Duration::from_secs(30), "{took:?}");
}

#[test]
fn a_dying_rank_fails_the_whole_job() {
    if !have_mpirun() {
        return;
    }
    let ex = example();
    let (out, took) = mpirun(&["-n", "3", ex.to_str().unwrap(), "--die"]);
    let (stdout, _) = text(&out);
    assert!(!out.status.success());
    assert_ne!(
        out.status.code(),
        Some(124),
        "must not need the outer timeout"
    );
    assert!(
        !stdout.contains("die result"),
        "rank 0 must not go on: {stdout}"
    );
    assert!(took < Duration::from_secs(30), "{took:?}");
}

/// A copy of the example whose GNU build id differs in one byte: "another build".
fn other_build(ex: &Path) -> PathBuf {
    let mut bytes = std::fs::read(ex).expect("reading the example");
    // Note header: namesz 4, descsz 20, type 3 (NT_GNU_BUILD_ID), name "GNU\0".
    let header: [u8; 16] = [4, 0, 0, 0, 20, 0, 0, 0, 3, 0, 0, 0, b'G', b'N', b'U', 0];
    let at = bytes
        .windows(header.len())
        .position(|w| w == header)
        .expect("the example has a GNU build id note");
    bytes[at + header.len()] ^= 0xff;
    let dir = std::env::temp_dir().join(format!("multiproc-mpi-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("mpi_check_other_build");
    std::fs::write(&path, bytes).unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
    path
}

#[test]
fn ranks_running_another_build_refuse() {
    if !have_mpirun() {
        return;
    }
    let ex = example();
    let other = other_build(&ex);
    let (out, took) = mpirun(&[
        "-n",
        "1",
        ex.to_str().unwrap(),
        ":",
        "-n",
        "2",
        other.to_str().unwrap(),
    ]);
    let _ = std::fs::remove_dir_all(other.parent().unwrap());
    let (_, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("refused to serve") && stderr.contains("different build"),
        "{stderr}"
    );
    assert!(took < Duration::from_secs(30), "{took:?}");
}

#[test]
fn ranks_on_two_hosts_in_network_namespaces() {
    if !have_mpirun() {
        return;
    }
    let Some(hosts) = TwoHosts::try_create() else {
        return;
    };
    let ex = example();
    let _one = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
    let shm = ShmDir::new();
    let subnet = "10.99.0.0/24";
    let out = Command::new("ip")
        .args(["netns", "exec", &hosts.names[0]])
        .args(["timeout", "-k", "5", "60", "mpirun"])
        .args(["--host", "10.99.0.1:1,10.99.0.2:2", "-n", "3"])
        .arg(&ex)
        .envs(MPI_ENV)
        .env("OMPI_MCA_btl_tcp_if_include", subnet)
        .env("OMPI_MCA_oob_tcp_if_include", subnet)
        .env("OMPI_MCA_plm_rsh_agent", hosts.agent())
        .env("OMPI_MCA_btl_vader_backing_directory", &shm.0)
        .output()
        .expect("running mpirun in a namespace");
    drop(shm);
    let (stdout, stderr) = text(&out);
    eprintln!("--- stdout\n{stdout}--- stderr\n{stderr}");
    assert!(out.status.success(), "{stderr}");
    // Both workers run on the second "host", named after its namespace.
    let b = &hosts.names[1];
    assert_eq!(
        stdout.matches(&format!("host: \"{b}\"")).count(),
        2,
        "{stdout}"
    );
    assert!(stdout.contains("mpi_check: OK"), "{stdout}");
}
