//! A shared stream's bytes from X on any input, fed in chunks whose sizes the input also
//! chooses: no panic in cutting lines or in reading and rewriting `matching_rules`; the lines
//! put together are the input (up to its last newline), wherever the chunks are cut; on a
//! line that is one JSON object, the span found is that of `serde_json`'s `matching_rules`,
//! and a rewritten line is JSON again, with only the rules the client knows.
#![no_main]

use bytes::Bytes;
use libfuzzer_sys::fuzz_target;
use serde_json::Value;
use xgate::streams::line::{Lines, Matched, matching_rules_span};

fuzz_target!(|input: &[u8]| {
    let Some((&cut, body)) = input.split_first() else {
        return;
    };
    let chunk = usize::from(cut % 64) + 1;
    let mut lines = Lines::default();
    let mut out: Vec<Bytes> = Vec::new();
    for piece in body.chunks(chunk) {
        lines
            .push(Bytes::copy_from_slice(piece), |l| out.push(l))
            .unwrap();
    }
    let whole: Vec<u8> = out.iter().flat_map(|l| l.iter().copied()).collect();
    let end = body.iter().rposition(|b| *b == b'\n').map_or(0, |i| i + 1);
    assert_eq!(whole, &body[..end]);
    for line in out {
        let span = matching_rules_span(&line);
        if let Ok(Value::Object(doc)) = serde_json::from_slice::<Value>(&line) {
            let found = span
                .clone()
                .map(|s| serde_json::from_slice::<Value>(&line[s]).unwrap());
            assert_eq!(found.as_ref(), doc.get("matching_rules"));
        }
        let Some(m) = Matched::parse(line.clone()) else {
            continue;
        };
        let first = m.ids().next().map(str::to_owned);
        let rewritten = m.for_client(|id| (Some(id) == first.as_deref()).then_some(Some("tag")));
        if let (Some(r), Ok(Value::Object(_))) = (rewritten, serde_json::from_slice::<Value>(&line)) {
            let doc: Value = serde_json::from_slice(&r).unwrap();
            let rules = doc["matching_rules"].as_array().unwrap();
            assert!(rules.iter().all(|r| r["tag"] == "tag"));
        }
    }
});
