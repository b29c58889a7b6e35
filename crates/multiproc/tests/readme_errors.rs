//! The README's "What comes back" section names only errors that exist, by their real
//! names, and shows each case it lists as the code reports it.

use std::time::Duration;

use multiproc::{Error, Process, Signal};

/// The `Error::Name` mentions in the README's "What comes back" section.
fn readme_error_names() -> Vec<String> {
    let readme = include_str!("../../../README.md");
    let section = readme
        .split("## What comes back")
        .nth(1)
        .and_then(|s| s.split("\n## ").next())
        .expect("the README has a \"What comes back\" section");
    let mut names: Vec<String> = section
        .match_indices("Error::")
        .map(|(at, _)| {
            section[at + "Error::".len()..]
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric())
                .collect()
        })
        .collect();
    names.sort();
    names.dedup();
    names
}

#[test]
fn every_error_the_readme_names_is_a_variant() {
    let source = include_str!("../src/error.rs");
    let names = readme_error_names();
    assert!(names.len() >= 10, "{names:?}");
    for name in names {
        let declared = [format!("\n    {name} {{"), format!("\n    {name},")]
            .iter()
            .any(|d| source.contains(d.as_str()));
        assert!(
            declared,
            "the README names Error::{name}, which is no variant"
        );
    }
}

fn panics(_: ()) {
    panic!("as the table says");
}

fn aborts(_: ()) {
    std::process::abort();
}

fn exits(_: ()) {
    std::process::exit(3);
}

fn sleeps(_: ()) {
    std::thread::sleep(Duration::from_secs(30));
}

#[test]
fn each_case_of_the_table_comes_back_as_it_says() {
    let shown = |what: &str, e: &Error| eprintln!("{what:<24} {e:?}\n{:<24} {e}", "");
    let e = Process::start(panics, ()).unwrap().join().unwrap_err();
    shown("a panic", &e);
    assert!(matches!(e, Error::Panicked { .. }) && e.panic_message() == Some("as the table says"));
    let e = Process::start(aborts, ()).unwrap().join().unwrap_err();
    shown("abort()", &e);
    assert!(matches!(e, Error::Killed { .. }) && e.signal() == Some(Signal::ABRT));
    let e = Process::start(exits, ()).unwrap().join().unwrap_err();
    shown("exit(3)", &e);
    assert!(matches!(e, Error::Exited { code: 3, .. }) && e.exit_code() == Some(3));
    let mut p = Process::start(sleeps, ()).unwrap();
    let e = p.join_timeout(Duration::from_millis(50)).unwrap_err();
    shown("join_timeout", &e);
    assert!(matches!(e, Error::Timeout { .. }) && e.is_timeout());
    p.kill().unwrap();
    let e = p.join().unwrap_err();
    shown("kill -9", &e);
    assert_eq!(e.signal(), Some(Signal::KILL));
}

/// Not a test: run by the test below with `RUST_BACKTRACE=1`, for every start method.
#[test]
fn backtrace_entry() {
    if std::env::var_os("MULTIPROC_TEST_BACKTRACE").is_none() {
        return;
    }
    for m in multiproc::StartMethod::ALL {
        let e = Process::builder()
            .start_method(m)
            .start(panics, ())
            .unwrap()
            .join()
            .unwrap_err();
        let bt = e.backtrace().unwrap_or("");
        println!(
            "{m}: backtrace {} lines, names the task: {}",
            bt.lines().count(),
            bt.contains("panics")
        );
    }
}

#[test]
fn with_rust_backtrace_a_panic_carries_the_childs_backtrace() {
    let out = std::process::Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "backtrace_entry",
            "--nocapture",
            "--test-threads=1",
        ])
        .env("MULTIPROC_TEST_BACKTRACE", "1")
        .env("RUST_BACKTRACE", "1")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}");
    let lines: Vec<&str> = stdout
        .lines()
        .filter(|l| l.contains(": backtrace "))
        .collect();
    assert_eq!(lines.len(), multiproc::StartMethod::ALL.len(), "{stdout}");
    for l in lines {
        assert!(l.ends_with("names the task: true"), "{l}");
    }
    // Without RUST_BACKTRACE there is none (this process runs without it here).
    if std::env::var_os("RUST_BACKTRACE").is_none() {
        let e = Process::start(panics, ()).unwrap().join().unwrap_err();
        assert_eq!(e.backtrace(), None);
    }
}

/// A value that refuses to be encoded, with a message of its own.
#[derive(Debug)]
struct Refuses;

impl serde::Serialize for Refuses {
    fn serialize<S: serde::Serializer>(&self, _: S) -> Result<S::Ok, S::Error> {
        Err(serde::ser::Error::custom(
            "Refuses cannot cross: open it in the child",
        ))
    }
}

impl<'de> serde::Deserialize<'de> for Refuses {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        <()>::deserialize(d)?;
        Ok(Refuses)
    }
}

fn makes_refuses(_: ()) -> Refuses {
    Refuses
}

#[test]
fn an_encode_error_keeps_the_types_own_message_and_says_it_once() {
    let e = Process::start(makes_refuses, ())
        .unwrap()
        .join()
        .unwrap_err();
    let text = e.to_string();
    eprintln!("{text}");
    assert!(matches!(e, Error::Encode { .. }), "{e:?}");
    assert!(text.contains("Refuses"), "{text}");
    assert_eq!(text.matches("could not encode").count(), 1, "{text}");
    let e = Process::start(|_: Refuses| (), Refuses)
        .map(|_| ())
        .unwrap_err();
    let text = e.to_string();
    eprintln!("{text}");
    assert_eq!(text.matches("could not encode").count(), 1, "{text}");
}
