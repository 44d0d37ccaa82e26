//! The README's code is real: every Rust snippet in it stands, line for line, in one of the
//! examples, which the test build compiles.

mod support;

use std::fs;

fn normalized(text: &str) -> Vec<String> {
    text.lines()
        .map(|l| l.split_whitespace().collect::<Vec<_>>().join(" "))
        .filter(|l| !l.is_empty())
        .collect()
}

#[test]
fn readme_snippets_are_taken_from_the_examples() {
    let root = env!("CARGO_MANIFEST_DIR");
    let readme = fs::read_to_string(format!("{root}/README.md")).unwrap();
    let examples: Vec<Vec<String>> = fs::read_dir(format!("{root}/examples"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "rs"))
        .map(|p| normalized(&fs::read_to_string(p).unwrap()))
        .collect();
    let snippets: Vec<&str> = readme
        .split("```rust\n")
        .skip(1)
        .map(|rest| rest.split("```").next().unwrap())
        .collect();
    assert!(!snippets.is_empty());
    for snippet in snippets {
        let lines = normalized(snippet);
        let found = examples
            .iter()
            .any(|example| example.windows(lines.len()).any(|w| w == lines.as_slice()));
        assert!(found, "README snippet is not in any example:\n{snippet}");
    }
}

#[test]
fn the_shared_handler_recipe_shares_state_with_the_program() {
    let status = std::process::Command::new(support::example("shared_handler"))
        .stdout(std::process::Stdio::null())
        .status()
        .unwrap();
    assert!(status.success());
}
