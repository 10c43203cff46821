//! Issue "SDKs": the README's lines for each SDK are the SDK suite's own (`tests/sdk/`), word
//! for word, so what a newcomer copies is what CI ran. A runner marks them with
//! `README: NAME` … `README: end` comments.

use std::collections::BTreeMap;
use std::path::Path;

/// The marked blocks of `file`, dedented, by name.
fn blocks(file: &str, comment: &str) -> BTreeMap<String, String> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join(file);
    let text = std::fs::read_to_string(&path).unwrap();
    let marker = format!("{comment} README: ");
    let mut found = BTreeMap::new();
    let mut open: Option<(String, Vec<&str>)> = None;
    for line in text.lines() {
        match line.trim_start().strip_prefix(&marker) {
            Some("end") => {
                let (name, lines) = open.take().expect("README: end without a start");
                let indent = lines
                    .iter()
                    .filter(|l| !l.trim().is_empty())
                    .map(|l| l.len() - l.trim_start().len())
                    .min()
                    .unwrap_or(0);
                let body: Vec<&str> = lines
                    .iter()
                    .map(|l| l.get(indent..).unwrap_or(""))
                    .collect();
                found.insert(name, body.join("\n"));
            }
            Some(name) => open = Some((name.to_owned(), Vec::new())),
            None => {
                if let Some((_, lines)) = open.as_mut() {
                    lines.push(line);
                }
            }
        }
    }
    assert!(open.is_none(), "{file}: a README block is not closed");
    found
}

#[test]
fn the_readmes_sdk_lines_are_the_suites() {
    let readme =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("README.md")).unwrap();
    let mut all = blocks("tests/sdk/python/run.py", "#");
    all.extend(blocks("tests/sdk/node/run.mjs", "//"));
    let names: Vec<&str> = all.keys().map(String::as_str).collect();
    assert_eq!(
        names,
        [
            "tweepy",
            "tweepy-rules",
            "tweepy-stream",
            "twitter-api-v2",
            "twitter-api-v2-rules",
            "xdk-python",
            "xdk-python-rules",
            "xdk-typescript",
            "xdk-typescript-rules",
            "xdk-typescript-stream"
        ]
    );
    for (name, block) in &all {
        assert!(
            readme.contains(block.as_str()),
            "README.md lacks the suite's lines for {name}:\n{block}"
        );
    }
}
