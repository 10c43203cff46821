//! The metering scanner on any bytes, fed in chunks whose sizes the input also chooses: no
//! panic on anything; on input that is one JSON document, the count and the ids that
//! `serde_json` gives (the top-level `data`'s elements, 1 for an object, 0 otherwise; the
//! string `id`s of the resource objects), wherever the chunks are cut.
#![no_main]

use libfuzzer_sys::fuzz_target;
use serde_json::Value;
use xgate::metering::{MAX_ID_BYTES, Scanner};

fuzz_target!(|input: &[u8]| {
    let Some((&cut, body)) = input.split_first() else {
        return;
    };
    let chunk = usize::from(cut % 64) + 1;
    let mut s = Scanner::new();
    for piece in body.chunks(chunk) {
        s.feed(piece);
    }
    let Ok(doc) = serde_json::from_slice::<Value>(body) else {
        return;
    };
    let id_of = |r: &Value| {
        r.get("id")
            .and_then(Value::as_str)
            .filter(|id| id.len() <= MAX_ID_BYTES)
            .map(str::to_owned)
    };
    let (count, ids): (u64, Vec<String>) = match doc.get("data") {
        Some(Value::Array(items)) => (
            items.len() as u64,
            items.iter().filter(|r| r.is_object()).filter_map(id_of).collect(),
        ),
        Some(obj @ Value::Object(_)) => (1, id_of(obj).into_iter().collect()),
        _ => (0, Vec::new()),
    };
    assert_eq!(s.resources(), count, "{:?}", String::from_utf8_lossy(body));
    let got: Vec<&str> = s.ids().collect();
    assert_eq!(got, ids, "{:?}", String::from_utf8_lossy(body));
});
