//! The README's quickstart is the quickstart example, word for word (the example is
//! what `quickstart_crate.rs` builds as a new user's crate).

#[test]
fn readme_quickstart_is_the_example() {
    let readme = include_str!("../../../README.md");
    let example = include_str!("../examples/quickstart.rs");
    let code: String = example
        .lines()
        .filter(|l| !l.starts_with("//!"))
        .collect::<Vec<_>>()
        .join("\n");
    let first_block = readme
        .split("```rust\n")
        .nth(1)
        .and_then(|b| b.split("```").next())
        .expect("the README has a rust code block");
    assert_eq!(first_block.trim(), code.trim());
}

/// The README's test command is the one CI runs: a newcomer's run and CI's are the same.
#[test]
fn readme_test_command_is_what_ci_runs() {
    let readme = include_str!("../../../README.md");
    let ci = include_str!("../../../.ci/run");
    let commands = readme
        .split("## The two commands")
        .nth(1)
        .and_then(|s| s.split("```sh\n").nth(1))
        .and_then(|b| b.split("```").next())
        .expect("the README's two commands");
    let test_command = commands
        .lines()
        .nth(1)
        .and_then(|l| l.split('#').next())
        .map(str::trim)
        .expect("the second command runs the tests");
    assert_eq!(test_command, "cargo xtask test");
    assert!(
        ci.lines()
            .any(|l| !l.trim_start().starts_with('#') && l.contains(test_command)),
        "`.ci/run` must call the README's test command `{test_command}`"
    );
    let alias = include_str!("../../../.cargo/config.toml");
    assert!(alias.contains("xtask = \"run --quiet --package xtask --\""));
}
