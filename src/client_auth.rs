//! Who is calling the proxy, and as which identity (CONTRACT section 3).
//!
//! Owns the client table: keys are looked up by their SHA-256 (proxy.toml stores only hashes,
//! so a lookup never compares secrets), with `X-Xgate-Key` winning over
//! `Authorization: Bearer`, and an anonymous client for requests without a key. Then the
//! identity: `X-Xgate-Identity` or the client's default; unknown and forbidden names get the
//! same 403, so the answer does not reveal which identities exist.

use std::collections::HashMap;
use std::sync::Arc;

use http::{HeaderMap, header};

use crate::client_key;
use crate::clock::Clock;
use crate::config::{ClientAuth, Config};
use crate::error::{BadRequest, ProxyError};
use crate::headers::{XGATE_IDENTITY, XGATE_KEY};
use crate::identity::{Identities, IdentityId};
use crate::limits::ClientRate;

/// A configured client.
#[derive(Debug)]
pub struct Client {
    /// Its name, for logs and metrics.
    pub name: Arc<str>,
    /// Identities it may act as.
    identities: Vec<IdentityId>,
    /// Used when a request names none.
    default: Option<IdentityId>,
    /// Its own smoothing bucket (`rate`), when set.
    pub rate: Option<ClientRate>,
}

/// Every client, by key hash.
#[derive(Debug)]
pub struct Clients {
    list: Vec<Client>,
    by_hash: HashMap<[u8; 32], usize>,
    anonymous: Option<usize>,
}

impl Clients {
    /// Builds the table from a validated config (whose client identities all exist); the
    /// clients' own shares read `clock`.
    pub fn from_config(config: &Config, identities: &Identities, clock: &Arc<dyn Clock>) -> Self {
        let mut list = Vec::with_capacity(config.clients.len());
        let mut by_hash = HashMap::new();
        let mut anonymous = None;
        for (i, c) in config.clients.iter().enumerate() {
            match c.auth {
                ClientAuth::KeySha256(hash) => {
                    by_hash.insert(hash, i);
                }
                ClientAuth::Anonymous => anonymous = Some(i),
            }
            list.push(Client {
                name: Arc::from(c.name.as_str()),
                identities: c
                    .identities
                    .iter()
                    .filter_map(|n| identities.find(n))
                    .collect(),
                default: c
                    .default_identity
                    .as_deref()
                    .and_then(|n| identities.find(n)),
                rate: c.rate.map(|r| ClientRate::new(r, Arc::clone(clock))),
            });
        }
        Self {
            list,
            by_hash,
            anonymous,
        }
    }

    /// The client a request comes from (401 if none).
    pub fn authenticate(&self, headers: &HeaderMap) -> Result<&Client, ProxyError> {
        let key = match headers.get(XGATE_KEY) {
            Some(v) => Some(v.as_bytes()),
            None => headers.get(header::AUTHORIZATION).and_then(|v| {
                let v = v.as_bytes();
                let (scheme, rest) = v.split_at_checked(7)?;
                scheme
                    .eq_ignore_ascii_case(b"bearer ")
                    .then(|| rest.trim_ascii())
            }),
        };
        let index = match key {
            Some(key) => std::str::from_utf8(key)
                .ok()
                .and_then(|k| self.by_hash.get(&client_key::sha256(k)).copied()),
            None => self.anonymous,
        };
        index
            .and_then(|i| self.list.get(i))
            .ok_or(ProxyError::ClientUnauthenticated)
    }

    /// The identity a request of `client` acts as: 400 if it names none and the client has no
    /// default, 403 if the name is unknown or not the client's.
    pub fn identity(
        client: &Client,
        headers: &HeaderMap,
        identities: &Identities,
    ) -> Result<IdentityId, ProxyError> {
        let id = match headers.get(XGATE_IDENTITY) {
            Some(name) => name
                .to_str()
                .ok()
                .and_then(|n| identities.find(n.trim()))
                .ok_or(ProxyError::IdentityForbidden)?,
            None => client.default.ok_or(BadRequest::NoIdentity)?,
        };
        if client.identities.contains(&id) {
            Ok(id)
        } else {
            Err(ProxyError::IdentityForbidden)
        }
    }
}
