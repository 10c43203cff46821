//! ARCHITECTURE.md's layer order, checked against the source: every module of `src/` imports
//! only modules of lower layers, so no module imports one that imports it back.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// The layers, lowest first; ARCHITECTURE.md ("Layers") shows the same table.
const LAYERS: &[&[&str]] = &[
    &["secret", "clock", "digits", "headers", "body", "metering"],
    &["config"],
    &["shared"],
    &["client_key", "store", "error"],
    &["identity", "inbound", "upstream"],
    &["endpoints"],
    &["limits", "metrics", "telemetry"],
    &["client_auth", "auth", "costs"],
    &["streams"],
    &["state"],
    &["forward"],
    &["proxy"],
    &["service"],
    &["admin", "stack"],
    &["server"],
    &["cli"],
];

fn layer_of() -> BTreeMap<&'static str, usize> {
    LAYERS
        .iter()
        .enumerate()
        .flat_map(|(i, layer)| layer.iter().map(move |m| (*m, i)))
        .collect()
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// The top-level module a file of `src/` belongs to (`src/auth/oauth2.rs` → `auth`).
fn module_of(src: &Path, file: &Path) -> String {
    let rel = file.strip_prefix(src).unwrap();
    let first = rel
        .components()
        .next()
        .unwrap()
        .as_os_str()
        .to_string_lossy();
    first.trim_end_matches(".rs").to_owned()
}

/// The top-level modules `code` names through `crate::` (paths and `crate::{a, b::c}` groups).
fn crate_refs(code: &str) -> Vec<String> {
    let mut refs = Vec::new();
    for (i, _) in code.match_indices("crate::") {
        let rest = &code[i + "crate::".len()..];
        if let Some(group) = rest.strip_prefix('{') {
            let inner = &group[..group.find('}').unwrap_or(group.len())];
            for item in inner.split(',') {
                let name: String = item
                    .trim()
                    .chars()
                    .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                    .collect();
                if !name.is_empty() {
                    refs.push(name);
                }
            }
        } else {
            let name: String = rest
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                .collect();
            if !name.is_empty() {
                refs.push(name);
            }
        }
    }
    refs
}

/// A file's code outside tests: a `tests.rs` file is all test code; elsewhere the code after
/// the first `#[cfg(test)]` is (tests sit at the bottom of a file).
fn non_test_code(file: &Path, text: &str) -> String {
    if file.file_name().is_some_and(|n| n == "tests.rs") {
        return String::new();
    }
    let code = text.split("#[cfg(test)]").next().unwrap_or_default();
    // Doc and line comments name modules in prose; only code counts.
    code.lines()
        .filter(|l| !l.trim_start().starts_with("//"))
        .collect::<Vec<_>>()
        .join("\n")
}

#[test]
fn every_module_imports_only_lower_layers() {
    let src = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("src");
    let layers = layer_of();
    let mut files = Vec::new();
    rust_files(&src, &mut files);
    let mut problems = Vec::new();
    for file in &files {
        let module = module_of(&src, file);
        if module == "lib" || module == "main" {
            continue;
        }
        let Some(&own) = layers.get(module.as_str()) else {
            problems.push(format!(
                "{module}: not in the layer table (tests/it/architecture.rs and ARCHITECTURE.md)"
            ));
            continue;
        };
        let text = std::fs::read_to_string(file).unwrap();
        for r in crate_refs(&non_test_code(file, &text)) {
            if r == module {
                continue;
            }
            match layers.get(r.as_str()) {
                Some(&theirs) if theirs < own => {}
                Some(_) => problems.push(format!(
                    "{}: module {module} (layer {own}) imports {r} (layer {}), which is not below it",
                    file.strip_prefix(&src).unwrap().display(),
                    layers[r.as_str()]
                )),
                None => problems.push(format!("{module} imports {r}, which has no layer")),
            }
        }
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

#[test]
fn the_reference_parser_reads_groups_and_paths() {
    assert_eq!(
        crate_refs("use crate::{forward, inbound::check};\nlet x = crate::error::Kind;"),
        ["forward", "inbound", "error"]
    );
}
