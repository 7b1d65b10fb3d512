//! The README's Rust example is `host/examples/quickstart.rs` (which `cargo
//! test` compiles against the current API), word for word after the file's
//! `//!` header.

const README: &str = "README.md";
const EXAMPLE: &str = "host/examples/quickstart.rs";

use xtask::read_repo_file as read;

#[test]
fn readme_example_is_the_compiled_example() {
    let readme = read(README);
    let start = readme
        .find("```rust\n")
        .unwrap_or_else(|| panic!("{README} has no ```rust block"))
        + "```rust\n".len();
    let len = readme[start..]
        .find("```\n")
        .unwrap_or_else(|| panic!("{README}: the ```rust block does not end"));
    let shown = &readme[start..start + len];

    let example = read(EXAMPLE);
    let body = example
        .lines()
        .skip_while(|l| l.starts_with("//!"))
        .skip_while(|l| l.is_empty())
        .map(|l| format!("{l}\n"))
        .collect::<String>();
    assert!(
        shown == body,
        "the ```rust block of {README} differs from {EXAMPLE} (after its //! header): \
         copy the example into the README (or the other way round)\n\
         --- README ---\n{shown}--- {EXAMPLE} ---\n{body}"
    );
}
