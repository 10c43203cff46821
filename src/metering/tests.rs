use proptest::prelude::*;
use serde_json::{Value, json};

use super::*;

/// The scanner's answer for `body` fed in one piece.
fn scan(body: &str) -> (u64, Vec<String>) {
    let mut s = Scanner::new();
    s.feed(body.as_bytes());
    (s.resources(), s.ids().map(str::to_owned).collect())
}

/// What `serde_json` says the document bills: the top-level `data`'s elements (1 for an
/// object, 0 otherwise) and the string `id`s of the resource objects (those the scanner may
/// keep: at most [`MAX_ID_BYTES`]).
fn reference(v: &Value) -> (u64, Vec<String>) {
    let id_of = |r: &Value| {
        r.get("id")
            .and_then(Value::as_str)
            .filter(|id| id.len() <= MAX_ID_BYTES)
            .map(str::to_owned)
    };
    match v.get("data") {
        Some(Value::Array(items)) => (
            u64::try_from(items.len()).unwrap(),
            items
                .iter()
                .filter(|r| r.is_object())
                .filter_map(id_of)
                .collect(),
        ),
        Some(obj @ Value::Object(_)) => (1, id_of(obj).into_iter().collect()),
        _ => (0, Vec::new()),
    }
}

#[test]
fn a_search_page_counts_its_posts_and_their_ids() {
    let body = r#"{"data":[{"id":"1","text":"a \"quoted\" ] } text","edit_history_tweet_ids":["1"]},{"id":"2","text":"b"}],"includes":{"users":[{"id":"9"}]},"meta":{"result_count":2,"next_token":"x"}}"#;
    assert_eq!(scan(body), (2, vec!["1".into(), "2".into()]));
}

#[test]
fn an_object_costs_one_and_no_data_costs_nothing() {
    assert_eq!(
        scan(r#"{"data":{"id":"20","text":"hello"}}"#),
        (1, vec!["20".into()])
    );
    assert_eq!(scan(r#"{"errors":[{"message":"x"}]}"#), (0, vec![]));
    assert_eq!(scan(r#"{"data":[]}"#), (0, vec![]));
    assert_eq!(scan(r#"{"data":null}"#), (0, vec![]));
    assert_eq!(scan(r#"[{"data":[1,2]}]"#), (0, vec![]));
    assert_eq!(scan(""), (0, vec![]));
}

#[test]
fn only_the_top_level_data_counts() {
    let body = r#"{"meta":{"data":[1,2,3]},"includes":{"tweets":[{"data":{"id":"5"}}]},"data":[{"id":"7","data":[{"id":"8"}]}]}"#;
    assert_eq!(scan(body), (1, vec!["7".into()]));
}

#[test]
fn escaped_keys_and_ids_are_decoded() {
    let body =
        r#"{"d\u0061ta":[{"\u0069d":"\u0031\u0032"},{"id":"\ud83d\ude80\n"},{"id":"a\"b\\c\/"}]}"#;
    assert_eq!(
        scan(body),
        (3, vec!["12".into(), "🚀\n".into(), "a\"b\\c/".into()])
    );
}

#[test]
fn a_lone_surrogate_or_a_long_id_is_billed_without_its_id() {
    let long = "9".repeat(MAX_ID_BYTES + 1);
    let body = format!(r#"{{"data":[{{"id":"\ud83d"}},{{"id":"{long}"}},{{"id":"3"}}]}}"#);
    let mut s = Scanner::new();
    s.feed(body.as_bytes());
    assert_eq!(s.resources(), 3);
    assert_eq!(s.ids().collect::<Vec<_>>(), ["3"]);
    assert_eq!(s.ids_dropped(), 2);
}

#[test]
fn a_stream_bills_each_message() {
    let body = "{\"data\":{\"id\":\"1\"},\"matching_rules\":[{\"id\":\"r\"}]}\r\n\r\n{\"data\":{\"id\":\"2\"}}\r\n";
    assert_eq!(scan(body), (2, vec!["1".into(), "2".into()]));
}

#[test]
fn a_repeated_data_key_counts_the_last_one() {
    assert_eq!(
        scan(r#"{"data":[{"id":"1"},{"id":"2"}],"data":[{"id":"3"}]}"#),
        (1, vec!["3".into()])
    );
    assert_eq!(
        scan(r#"{"data":[{"id":"1","id":"2"},{"id":"3","id":4},{"id":5,"id":"6"}]}"#),
        (3, vec!["2".into(), "6".into()])
    );
    // ... within its own document only.
    assert_eq!(
        scan(r#"{"data":{"id":"1"}} {"data":[{"id":"2"}],"data":{"id":"3"}}"#),
        (2, vec!["1".into(), "3".into()])
    );
}

#[test]
fn deep_nesting_is_followed_without_billing_it() {
    let deep = format!("{}{}", "[".repeat(10_000), "]".repeat(10_000));
    let body = format!(r#"{{"meta":{deep},"data":[{{"id":"1","x":{deep}}},{{"id":"2"}}]}}"#);
    assert_eq!(scan(&body), (2, vec!["1".into(), "2".into()]));
}

#[test]
fn garbage_is_scanned_without_panic() {
    for body in [
        "}}}]]]",
        "\"\\",
        "{\"data\":[{\"id\":\"\\u12",
        "{\"data\":[{\"id\":\"\\uzz\"}]}",
        "\u{0}\u{ff}",
        "{\"data\"::[",
        "{\"id\":\"1\"}",
    ] {
        let mut s = Scanner::new();
        s.feed(body.as_bytes());
        let _count = s.resources();
    }
}

/// Arbitrary JSON: scalars, strings with every kind of escape, arrays and objects whose keys
/// include `data` and `id`, a few levels deep.
fn any_json() -> impl Strategy<Value = Value> {
    let key = prop_oneof![
        Just("data".to_owned()),
        Just("id".to_owned()),
        Just("meta".to_owned()),
        "[a-z\"\\\\]{0,6}",
    ];
    let string = prop_oneof![
        "[0-9]{1,19}",
        any::<String>(),
        "[\"\\\\/\u{8}\u{c}\n\r\t\u{1}\u{1f}é🚀 \\]\\[{}:,]{0,12}",
    ];
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::from),
        any::<i64>().prop_map(Value::from),
        any::<f64>()
            .prop_filter("finite", |f| f.is_finite())
            .prop_map(Value::from),
        string.prop_map(Value::from),
    ];
    leaf.prop_recursive(5, 64, 8, move |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..8).prop_map(Value::Array),
            prop::collection::vec((key.clone(), inner), 0..6)
                .prop_map(|pairs| Value::Object(pairs.into_iter().collect())),
        ]
    })
}

/// A document shaped like X's answers: an object with `data` (an array of resources or one),
/// and other members.
fn x_like() -> impl Strategy<Value = Value> {
    let resource = (any_json(), "[0-9]{1,19}")
        .prop_map(|(extra, id)| {
            let mut r = json!({ "id": id, "extra": extra });
            if let (Some(obj), Value::Object(more)) = (r.as_object_mut(), extra) {
                obj.extend(more);
            }
            r
        })
        .boxed();
    (
        prop_oneof![
            prop::collection::vec(resource.clone(), 0..12).prop_map(Value::Array),
            resource,
            any_json(),
        ],
        any_json(),
    )
        .prop_map(|(data, meta)| json!({ "meta": meta, "data": data, "includes": meta }))
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    /// The scanner agrees with `serde_json` on any JSON, compact or pretty, split into chunks
    /// at any points.
    #[test]
    fn the_count_and_the_ids_are_serde_jsons(
        doc in prop_oneof![x_like(), any_json()],
        pretty in any::<bool>(),
        cuts in prop::collection::vec(any::<prop::sample::Index>(), 0..8),
    ) {
        let text = if pretty {
            serde_json::to_string_pretty(&doc).unwrap()
        } else {
            serde_json::to_string(&doc).unwrap()
        };
        let bytes = text.as_bytes();
        let mut points: Vec<usize> = cuts.iter().map(|i| i.index(bytes.len() + 1)).collect();
        points.sort_unstable();
        let mut s = Scanner::new();
        let mut from = 0;
        for p in points.into_iter().chain([bytes.len()]) {
            s.feed(&bytes[from..p]);
            from = p;
        }
        let got = (s.resources(), s.ids().map(str::to_owned).collect::<Vec<_>>());
        prop_assert_eq!(got, reference(&doc), "{}", text);
    }
}
