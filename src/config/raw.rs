//! The raw shape of `proxy.toml`: serde structs that mirror the file, before validation.
//!
//! Owns the TOML-to-struct step only. Leaf values that need checking (durations, rates,
//! addresses, URLs) stay strings here and almost every key is optional, so that
//! [`super::validate`] can report every missing or malformed value with its key path instead
//! of stopping at the first. Unknown keys are collected by `serde_ignored` in [`parse`].

use std::collections::BTreeMap;
use std::fmt;

use serde::Deserialize;
use serde::de::{self, Deserializer, MapAccess, SeqAccess, Visitor};

use super::Problem;

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub(super) struct RawConfig {
    pub(super) server: RawServer,
    pub(super) admin: RawAdmin,
    pub(super) upstream: RawUpstream,
    pub(super) store: RawStore,
    pub(super) shared: Option<RawShared>,
    pub(super) apps: BTreeMap<String, RawApp>,
    pub(super) users: BTreeMap<String, RawUser>,
    pub(super) clients: Vec<RawClient>,
    pub(super) limits: RawLimits,
    pub(super) costs: RawCosts,
    pub(super) budgets: Vec<RawBudget>,
    pub(super) streams: RawStreams,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub(super) struct RawStreams {
    pub(super) max_consumers: Option<u64>,
    pub(super) consumer_buffer_bytes: Option<u64>,
    pub(super) linger: Option<String>,
    pub(super) max_rules: Option<u64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub(super) struct RawCosts {
    pub(super) owned_reads: Option<Vec<String>>,
    pub(super) dedup_max_ids: Option<u64>,
    #[serde(rename = "override")]
    pub(super) overrides: Vec<RawCostOverride>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub(super) struct RawCostOverride {
    pub(super) endpoint: Option<String>,
    pub(super) per_resource: Option<f64>,
    pub(super) per_request: Option<f64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub(super) struct RawBudget {
    pub(super) name: Option<String>,
    pub(super) client: Option<String>,
    pub(super) identity: Option<String>,
    pub(super) app: Option<String>,
    pub(super) limit: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub(super) struct RawServer {
    pub(super) listen: Option<String>,
    pub(super) tls: Option<RawTls>,
    pub(super) max_body_bytes: Option<u64>,
    pub(super) max_header_bytes: Option<u64>,
    pub(super) max_connections: Option<u64>,
    pub(super) workers: Option<u64>,
    pub(super) header_read_timeout: Option<String>,
    pub(super) keepalive_timeout: Option<String>,
    pub(super) tls_handshake_timeout: Option<String>,
    pub(super) http2_max_concurrent_streams: Option<u64>,
    pub(super) request_timeout: Option<String>,
    pub(super) idle_timeout: Option<String>,
    pub(super) shutdown_grace: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub(super) struct RawTls {
    pub(super) cert: Option<String>,
    pub(super) key: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub(super) struct RawAdmin {
    pub(super) listen: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub(super) struct RawUpstream {
    pub(super) base_url: Option<String>,
    pub(super) ca_file: Option<String>,
    pub(super) connect_timeout: Option<String>,
    pub(super) pool_idle_timeout: Option<String>,
    pub(super) pool_max_idle_per_host: Option<u64>,
    pub(super) allowed_prefixes: Option<Vec<String>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub(super) struct RawStore {
    pub(super) path: Option<String>,
    pub(super) url: Option<RawSecret>,
    pub(super) encryption_key: Option<RawSecret>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub(super) struct RawShared {
    pub(super) redis_url: Option<RawSecret>,
    pub(super) key_prefix: Option<String>,
    pub(super) on_failure: Option<String>,
    pub(super) timeout: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub(super) struct RawApp {
    pub(super) consumer_key: Option<RawSecret>,
    pub(super) consumer_secret: Option<RawSecret>,
    pub(super) bearer_token: Option<RawSecret>,
    pub(super) oauth2_client_id: Option<RawSecret>,
    pub(super) oauth2_client_secret: Option<RawSecret>,
    pub(super) oauth2_redirect_uri: Option<String>,
    pub(super) oauth2_authorize_url: Option<String>,
    pub(super) oauth1_authorize_url: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub(super) struct RawUser {
    pub(super) app: Option<String>,
    pub(super) auth: Option<String>,
    pub(super) token: Option<RawSecret>,
    pub(super) token_secret: Option<RawSecret>,
    pub(super) scopes: Option<Vec<String>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub(super) struct RawClient {
    pub(super) name: Option<String>,
    pub(super) key_sha256: Option<String>,
    pub(super) anonymous: Option<bool>,
    pub(super) identities: Option<Vec<String>>,
    pub(super) default_identity: Option<String>,
    pub(super) rate: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub(super) struct RawLimits {
    pub(super) on_exhausted: Option<String>,
    pub(super) max_wait: Option<String>,
    pub(super) usage_cap_cooldown: Option<String>,
    #[serde(rename = "override")]
    pub(super) overrides: Vec<RawOverride>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub(super) struct RawOverride {
    pub(super) endpoint: Option<String>,
    pub(super) app: Option<OneOrMany>,
    pub(super) user: Option<OneOrMany>,
}

/// A secret as written: `"literal"`, `{ env = "NAME" }` or `{ file = "path" }`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum RawSecret {
    Literal(String),
    Env(String),
    File(String),
}

impl<'de> Deserialize<'de> for RawSecret {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = RawSecret;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(r#"a string, { env = "NAME" } or { file = "path" }"#)
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<RawSecret, E> {
                Ok(RawSecret::Literal(v.to_owned()))
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<RawSecret, A::Error> {
                let mut found = None;
                while let Some(key) = map.next_key::<String>()? {
                    let value: String = map.next_value()?;
                    let secret = match key.as_str() {
                        "env" => RawSecret::Env(value),
                        "file" => RawSecret::File(value),
                        other => {
                            return Err(de::Error::custom(format!(
                                "unknown key `{other}` in a secret: expected `env` or `file`"
                            )));
                        }
                    };
                    if found.replace(secret).is_some() {
                        return Err(de::Error::custom(
                            "a secret takes exactly one of `env` or `file`",
                        ));
                    }
                }
                found.ok_or_else(|| de::Error::custom("a secret needs `env` or `file`"))
            }
        }
        d.deserialize_any(V)
    }
}

/// One rate or a list of rates: `"450/15m"` or `["1/1s", "300/15m"]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct OneOrMany(pub(super) Vec<String>);

impl<'de> Deserialize<'de> for OneOrMany {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = OneOrMany;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(r#"a rate such as "450/15m" or a list of rates"#)
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<OneOrMany, E> {
                Ok(OneOrMany(vec![v.to_owned()]))
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<OneOrMany, A::Error> {
                let mut out = Vec::new();
                while let Some(s) = seq.next_element::<String>()? {
                    out.push(s);
                }
                Ok(OneOrMany(out))
            }
        }
        d.deserialize_any(V)
    }
}

/// Parses `text` into the raw shape. Unknown keys do not stop parsing: each one becomes a
/// problem naming its full key path. A syntax or type error stops it, and is reported with the
/// key path and line it was found at.
pub(super) fn parse(text: &str, problems: &mut Vec<Problem>) -> Option<RawConfig> {
    let mut unknown = Vec::new();
    let result = toml::de::Deserializer::parse(text)
        .and_then(|de| serde_ignored::deserialize(de, |path| unknown.push(path.to_string())));
    match result {
        Ok(raw) => {
            problems.extend(
                unknown
                    .into_iter()
                    .map(|path| Problem::new(path, "unknown key")),
            );
            Some(raw)
        }
        Err(e) => {
            let (path, line) = e
                .span()
                .map(|span| locate(text, span.start))
                .unwrap_or_default();
            let mut message = e.message().trim().to_owned();
            if line > 0 {
                message.push_str(&format!(" (line {line})"));
            }
            let path = if path.is_empty() {
                "proxy.toml".to_owned()
            } else {
                path
            };
            problems.push(Problem::new(path, message));
            None
        }
    }
}

/// Whether `k` reads as a TOML key path of this file's kind (`apps.main.bearer_token`): at
/// most 128 of `A-Z a-z 0-9 _ - .`.
fn is_plain_key(k: &str) -> bool {
    k.len() <= 128
        && k.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.'))
}

/// The key path (`server.max_body_bytes`, `clients[1].rate`) and 1-based line of the byte at
/// `offset`, found from the nearest table header above it and the key on its line.
fn locate(text: &str, offset: usize) -> (String, usize) {
    let before = text.get(..offset).unwrap_or(text);
    let line_no = before.matches('\n').count() + 1;
    let mut table = String::new();
    let mut array_counts: BTreeMap<String, usize> = BTreeMap::new();
    for line in before.lines() {
        let t = line.trim();
        if let Some(name) = t.strip_prefix("[[").and_then(|r| r.split("]]").next()) {
            let name = name.trim().to_owned();
            let n = array_counts.entry(name.clone()).or_insert(0);
            table = format!("{name}[{n}]");
            *n += 1;
        } else if let Some(name) = t.strip_prefix('[').and_then(|r| r.split(']').next()) {
            table = name.trim().to_owned();
        }
    }
    let line = text.lines().nth(line_no - 1).unwrap_or_default();
    let key = line
        .split_once('=')
        .map(|(k, _)| k.trim().trim_matches('"').to_owned())
        .filter(|k| !k.is_empty() && is_plain_key(k));
    if !is_plain_key(&table.replace(['[', ']'], "")) {
        // Whatever the file holds where a name should be is not echoed: it may be a secret
        // pasted on the wrong line.
        table.clear();
    }
    let path = match (table.is_empty(), key) {
        (true, Some(k)) => k,
        (false, Some(k)) => format!("{table}.{k}"),
        (_, None) => table,
    };
    (path, line_no)
}
