//! `docs/architecture.md` names the files of the crate: each file it names
//! exists, so the page cannot drift from the tree unnoticed. A name is looked
//! up under `src/` (where the page says its paths are), beside the page, or at
//! the repository root.

use std::path::{Path, PathBuf};

/// Every word of `text` that names a file: letters, digits, `_`, `-`, `.` and
/// `/`, ending in one of the extensions the repository's files have.
fn named_files(text: &str) -> Vec<&str> {
    const EXTENSIONS: [&str; 5] = [".rs", ".py", ".md", ".sh", ".toml"];
    text.split(|c: char| !(c.is_ascii_alphanumeric() || "_-./".contains(c)))
        .map(|word| word.trim_end_matches('.'))
        .filter(|word| EXTENSIONS.iter().any(|ext| word.ends_with(ext)))
        .filter(|word| word.len() > 3 && !word.starts_with('.') || word.starts_with("../"))
        .collect()
}

#[test]
fn every_file_the_architecture_page_names_exists() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let page = root.join("docs/architecture.md");
    let text = std::fs::read_to_string(&page).unwrap();
    let names = named_files(&text);
    assert!(
        names.len() > 40,
        "the page names only {} files: {names:?}",
        names.len()
    );
    let places: [PathBuf; 3] = [root.join("src"), root.join("docs"), root.to_path_buf()];
    let missing: Vec<&str> = names
        .iter()
        .copied()
        .filter(|name| !places.iter().any(|place| place.join(name).is_file()))
        .collect();
    assert!(
        missing.is_empty(),
        "docs/architecture.md names files that do not exist: {missing:?}"
    );
}

#[test]
fn the_file_finder_sees_paths_in_prose_and_diagrams() {
    let text = "│  shared/slots.rs  the machine │ see `docs/protocol.md`, ../RELIABILITY.md.\n\
                config.rs error.rs — not Shared::begin_acquire nor a.b";
    assert_eq!(
        named_files(text),
        [
            "shared/slots.rs",
            "docs/protocol.md",
            "../RELIABILITY.md",
            "config.rs",
            "error.rs"
        ]
    );
}
