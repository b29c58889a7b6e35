//! Under `panic = "abort"` a panicking task kills its process before any unwinding: the
//! panic hook must report the message first, and a pool must lose only that call (the
//! other calls the dying worker held go back to the queue, with `retries(0)`). Built
//! as a user's crate with that profile (a test binary here always unwinds).

mod common;

const MAIN: &str = r#"
use multiproc::{ChunkSize, Pool, Process, StartMethod};

fn boom(x: u32) -> u32 {
    if x == 3 {
        panic!("abort-mode panic on {x}");
    }
    x * 10
}

fn main() {
    multiproc::init();
    for method in StartMethod::ALL {
        let p = Process::builder().start_method(method).start(boom, 3).unwrap();
        match p.join() {
            Err(e) => println!("process {method}: {}", e.panic_message().unwrap_or("none")),
            Ok(v) => println!("process {method}: unexpected value {v}"),
        }
        let pool = Pool::builder()
            .processes(2)
            .start_method(method)
            .chunk_size(ChunkSize::Fixed(1))
            // The aborting worker may hold the next calls too (pipelining): they go
            // back to the queue (no retry needed); the panicking call is answered.
            .retries(0)
            .build()
            .unwrap();
        let out = pool.map_results(boom, 0..6).unwrap();
        let ok = out.iter().filter(|r| r.is_ok()).count();
        let msg = out[3].as_ref().err().and_then(|e| e.panic_message()).unwrap_or("none");
        println!("pool {method}: ok={ok} call3={msg}");
    }
}
"#;

#[test]
fn panics_under_panic_abort_are_reported_and_cost_one_call() {
    let out = common::run_user_crate("panic-abort", MAIN, "[profile.dev]\npanic = \"abort\"\n");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{}\n{stdout}\n{stderr}", out.status);
    for method in ["fork", "spawn", "forkserver"] {
        assert!(
            stdout.contains(&format!("process {method}: abort-mode panic on 3")),
            "{stdout}\n{stderr}"
        );
        assert!(
            stdout.contains(&format!("pool {method}: ok=5 call3=abort-mode panic on 3")),
            "{stdout}\n{stderr}"
        );
    }
}
