//! A child that runs a different build refuses the task (it calls nothing), and the
//! parent gets `Error::BuildMismatch`.
//!
//! Two "other builds": a copy of this very test binary with its GNU build id changed
//! (identical code, so only the check stands between the message and a call), and the
//! `quickstart` example, a different program that links multiproc (built by `cargo test`).

mod common;

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use multiproc::{Error, Process, StartMethod};

/// Creates the file named by its argument: proof that the task ran.
fn touch(path: String) -> u32 {
    std::fs::write(path, b"ran").unwrap();
    7
}

/// Finds the `NT_GNU_BUILD_ID` note's descriptor in an ELF image (name "GNU\0", type 3).
fn build_id_range(elf: &[u8]) -> Option<std::ops::Range<usize>> {
    let pattern = |w: &[u8]| {
        w[0..4] == 4u32.to_le_bytes() && w[8..12] == 3u32.to_le_bytes() && &w[12..16] == b"GNU\0"
    };
    let at = elf.windows(16).position(pattern)?;
    let len = u32::from_le_bytes(elf[at + 4..at + 8].try_into().ok()?) as usize;
    Some(at + 16..at + 16 + len)
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// Starts `touch` in `exe` under Spawn, retrying while the kernel still sees the file as
/// open for writing (ETXTBSY: a concurrent fork+exec may briefly hold our write handle).
fn start_in(exe: &Path, marker: &Path) -> multiproc::Result<Process<u32>> {
    let mut tries = 0;
    loop {
        let r = Process::builder()
            .start_method(StartMethod::Spawn)
            .executable(exe)
            .start(touch, marker.to_str().unwrap().to_owned());
        match r {
            Err(Error::Start { source, .. })
                if source.raw_os_error() == Some(libc::ETXTBSY) && tries < 50 =>
            {
                tries += 1;
                std::thread::sleep(Duration::from_millis(20));
            }
            r => return r,
        }
    }
}

#[test]
fn same_code_other_build_id_is_refused() {
    let dir = common::TempDir::new("mismatch");
    let me = std::fs::read(std::env::current_exe().unwrap()).unwrap();
    let range = build_id_range(&me).expect("this test binary has a GNU build id");
    let ours = hex(&me[range.clone()]);
    let mut other = me.clone();
    for b in &mut other[range.clone()] {
        *b ^= 0xff;
    }
    let theirs = hex(&other[range]);
    let exe = dir.path().join("other-build");
    std::fs::write(&exe, &other).unwrap();
    std::fs::set_permissions(&exe, std::fs::Permissions::from_mode(0o755)).unwrap();

    // Control: the same binary with its own build id runs the task (so what stops the
    // patched one is the build check, nothing else).
    let same = dir.path().join("same-build");
    std::fs::write(&same, &me).unwrap();
    std::fs::set_permissions(&same, std::fs::Permissions::from_mode(0o755)).unwrap();
    let marker = dir.path().join("control-ran");
    assert_eq!(start_in(&same, &marker).unwrap().join().unwrap(), 7);
    assert!(marker.exists());

    let marker = dir.path().join("task-ran");
    let p = start_in(&exe, &marker).unwrap();
    let pid = p.pid();
    match p.join() {
        Err(Error::BuildMismatch {
            pid: got,
            parent,
            child,
        }) => {
            assert_eq!(got, pid);
            assert_eq!(parent, ours);
            assert_eq!(child, theirs);
        }
        other => panic!("a child of another build gave {other:?}"),
    }
    assert!(!marker.exists(), "the other build ran the task");
}

/// `target/<profile>/examples/quickstart`, next to this test's `deps/` directory.
fn quickstart_example() -> Option<PathBuf> {
    let exe = std::env::current_exe().ok()?;
    let profile_dir = exe.parent()?.parent()?;
    let path = profile_dir.join("examples").join("quickstart");
    path.exists().then_some(path)
}

#[test]
fn another_program_is_refused() {
    let Some(quickstart) = quickstart_example() else {
        // `cargo test` builds examples; `cargo test --test build_mismatch` alone does not.
        eprintln!("skipped: examples/quickstart is not built (run `cargo test` or build it)");
        return;
    };
    let dir = common::TempDir::new("mismatch-example");
    let marker = dir.path().join("task-ran");
    let err = start_in(&quickstart, &marker).unwrap().join().unwrap_err();
    assert!(matches!(err, Error::BuildMismatch { .. }), "{err:?}");
    assert!(err.to_string().contains("different build"), "{err}");
    assert!(!marker.exists());
}

#[test]
fn a_program_without_multiproc_is_a_death_not_a_hang() {
    let dir = common::TempDir::new("mismatch-true");
    let marker = dir.path().join("task-ran");
    let err = start_in(Path::new("/bin/true"), &marker)
        .unwrap()
        .join()
        .unwrap_err();
    assert_eq!(err.exit_code(), Some(0), "{err:?}");
    let err = start_in(Path::new("/bin/false"), &marker)
        .unwrap()
        .join()
        .unwrap_err();
    assert_eq!(err.exit_code(), Some(1), "{err:?}");
}

#[test]
fn a_missing_executable_fails_to_start() {
    let err = start_in(
        Path::new("/nonexistent/multiproc-child"),
        Path::new("/dev/null"),
    )
    .unwrap_err();
    match err {
        Error::Start { method, source } => {
            assert_eq!(method, StartMethod::Spawn);
            assert_eq!(source.kind(), std::io::ErrorKind::NotFound);
        }
        other => panic!("{other:?}"),
    }
}
