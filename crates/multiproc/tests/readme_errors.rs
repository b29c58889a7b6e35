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
