//! The README's code is real: every Rust snippet in it stands, line for line, in one of the
//! examples, which the test build compiles. (The guide's snippets, in `src/guide/`, are
//! doctests.) What the README and the guide say about versions and pages holds too.

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

/// The line of `Cargo.toml` that starts with `key = `, as written there.
fn manifest_line(key: &str) -> String {
    let root = env!("CARGO_MANIFEST_DIR");
    let manifest = fs::read_to_string(format!("{root}/Cargo.toml")).unwrap();
    let prefix = format!("{key} = ");
    manifest
        .lines()
        .find(|l| l.starts_with(&prefix))
        .unwrap_or_else(|| panic!("no `{key}` in Cargo.toml"))
        .to_owned()
}

#[test]
fn the_thrift_version_users_are_told_is_the_one_this_crate_uses() {
    let root = env!("CARGO_MANIFEST_DIR");
    let ours = manifest_line("thrift");
    for doc in ["README.md", "src/lib.rs", "src/guide/start.md"] {
        let text = fs::read_to_string(format!("{root}/{doc}")).unwrap();
        let told: Vec<&str> = text
            .lines()
            .map(|l| l.trim_start_matches("//!").trim())
            .filter(|l| l.starts_with("thrift = "))
            .collect();
        assert!(
            !told.is_empty(),
            "{doc} does not say which thrift to depend on"
        );
        assert!(
            told.iter().all(|l| *l == ours),
            "{doc} says {told:?}, Cargo.toml `{ours}`"
        );
    }
}

#[test]
fn the_readme_states_the_rust_version() {
    let root = env!("CARGO_MANIFEST_DIR");
    let line = manifest_line("rust-version");
    let version = line.split('"').nth(1).unwrap();
    for doc in ["README.md", "src/lib.rs", "src/guide/start.md"] {
        let text = fs::read_to_string(format!("{root}/{doc}")).unwrap();
        assert!(
            text.contains(&format!("Rust {version}")),
            "{doc} does not say Rust {version}"
        );
    }
}

#[test]
fn the_readme_links_to_guide_pages_that_exist() {
    let root = env!("CARGO_MANIFEST_DIR");
    let readme = fs::read_to_string(format!("{root}/README.md")).unwrap();
    let guide = fs::read_to_string(format!("{root}/src/guide/mod.rs")).unwrap();
    let pages: Vec<&str> = readme
        .split("/blocking_thrift/guide/")
        .skip(1)
        .map(|rest| rest.split('/').next().unwrap())
        .collect();
    assert!(!pages.is_empty());
    for page in pages {
        assert!(
            guide.contains(&format!("pub mod {page} {{}}")),
            "the README links to guide page `{page}`, which src/guide/mod.rs does not declare"
        );
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
