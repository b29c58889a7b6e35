//! The quickstart, as a new user's own crate: a fresh cargo project that depends on
//! multiproc by path, with `examples/quickstart.rs` as its `main.rs`, built and run
//! offline. Catches what tests inside this crate cannot: a bootstrap that only works
//! in test binaries, a missing re-export, an unusable public API.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

const MAIN: &str = include_str!("../examples/quickstart.rs");

/// The cargo target directory this test binary was built in (`.../target`).
fn target_dir() -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    // target/<profile>/deps/<this test>
    exe.ancestors().nth(3).unwrap().to_path_buf()
}

#[test]
fn quickstart_as_a_separate_crate() {
    let crate_dir = Path::new(env!("CARGO_MANIFEST_DIR"));
    let project = common::TempDir::new("quickstart-crate");
    let dir = project.path();
    std::fs::create_dir_all(dir.join("src")).unwrap();
    std::fs::write(
        dir.join("Cargo.toml"),
        format!(
            r#"[package]
name = "quickstart-user"
version = "0.1.0"
edition = "2024"
publish = false

[dependencies]
multiproc = {{ path = {:?} }}

# Not part of any enclosing workspace.
[workspace]
"#,
            crate_dir.to_str().unwrap()
        ),
    )
    .unwrap();
    std::fs::write(dir.join("src/main.rs"), MAIN).unwrap();
    // The workspace's lock file pins the versions this repository was tested with, all of
    // them in the local registry cache: no network needed.
    let lock = crate_dir.join("../../Cargo.lock");
    if lock.exists() {
        std::fs::copy(&lock, dir.join("Cargo.lock")).unwrap();
    }

    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    // Kept between runs (inside this workspace's target directory), so only the first
    // run compiles the dependencies.
    let target = target_dir().join("quickstart-crate");
    let t = Instant::now();
    let out = Command::new(cargo)
        .args(["run", "--offline", "--quiet"])
        .current_dir(dir)
        .env("CARGO_TARGET_DIR", &target)
        .env_remove("RUSTFLAGS")
        .output()
        .expect("run cargo");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    eprintln!("cargo run of the quickstart crate: {:?}", t.elapsed());
    assert!(
        out.status.success(),
        "cargo run failed ({}):\n{stdout}\n{stderr}",
        out.status
    );
    assert!(
        stdout.contains("total: 1249999975000000"),
        "unexpected output:\n{stdout}\n{stderr}"
    );
    assert_eq!(stdout.matches("process ").count(), 2, "{stdout}");
}
