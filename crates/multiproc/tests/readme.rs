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
