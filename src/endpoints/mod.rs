//! The endpoint catalogue: every X API v2 operation, what auth it takes and X's limits.
//!
//! Owns the row type of the generated table (`table.rs`, made by
//! `scripts/gen_catalogue.py` from X's OpenAPI document and the fact sheet), the
//! [`Catalogue`] built from it at startup with `[[limits.override]]` applied, and matching a
//! request's method and path to an endpoint: one radix router (`matchit`) per method, so a
//! lookup costs time proportional to the path, never to the number of endpoints. Matching is
//! on the raw path that goes upstream; a path the catalogue does not know is `None` (the
//! `other` endpoint of CONTRACT section 5 rule 5).

use std::num::NonZeroU32;
use std::time::Duration;

use http::Method;

use crate::config::{CostOverride, EndpointPattern, Override, PriceUnit, Rate};
use crate::error::ProxyError;
use crate::identity::{Identity, IdentityKind};

mod table;

/// Auth kind bits of [`Row::auth`]: app-only Bearer.
pub(crate) const APP: u8 = 1;
/// OAuth 2.0 user context.
pub(crate) const O2U: u8 = 2;
/// OAuth 1.0a user context.
pub(crate) const O1U: u8 = 4;

/// One row of the generated table.
#[derive(Debug)]
pub(crate) struct Row {
    pub(crate) method: &'static str,
    /// Docs style: `/2/tweets/:id`.
    pub(crate) path: &'static str,
    pub(crate) auth: u8,
    pub(crate) scopes: &'static [&'static str],
    pub(crate) stream: bool,
    pub(crate) app: &'static [(u32, u32)],
    pub(crate) user: &'static [(u32, u32)],
    /// False for the documented endpoints the spec lacks.
    pub(crate) in_spec: bool,
    /// What X bills for it.
    pub(crate) price: Price,
}

/// How X bills an endpoint (CONTRACT section 11 rule 1).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unit {
    /// A read: per resource of the answer's top-level `data`.
    PerResource,
    /// A write or action: per request answered 2xx.
    PerRequest,
    /// X publishes no price: it costs 0 (and `xgate check` lists it).
    Unpriced,
}

/// [`Unit::PerResource`], as the generated table writes it.
pub(crate) const PER_RESOURCE: Unit = Unit::PerResource;
/// [`Unit::PerRequest`], as the generated table writes it.
pub(crate) const PER_REQUEST: Unit = Unit::PerRequest;
/// [`Unit::Unpriced`], as the generated table writes it.
pub(crate) const UNPRICED: Unit = Unit::Unpriced;

/// An endpoint's price, in micro-USD (1 USD = 1,000,000), and what the worst case of one of
/// its requests is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Price {
    /// How it is billed.
    pub unit: Unit,
    /// X's category (`"Posts: Read"`), or `"override"` for `[[costs.override]]`.
    pub category: &'static str,
    /// Per resource or per request.
    pub micros: u64,
    /// The price of a `POST /2/tweets` whose text holds a URL; 0 for every other endpoint.
    pub url_micros: u64,
    /// Owned Reads may apply (`GET /2/users/:id/<owned list>`).
    pub owned: bool,
    /// The most resources one answer holds (its largest page; 1 for one object or a stream
    /// message).
    pub page: u32,
    /// The query parameter listing what is asked for (`ids`, `usernames`), whose item count
    /// bounds the page; empty when there is none.
    pub list_param: &'static str,
    /// Why this price: the generator's rule (`R4: data is [Post]`), or `"costs.override"`.
    pub basis: &'static str,
}

/// A row's price, as the generated table writes it.
#[expect(
    clippy::too_many_arguments,
    reason = "one argument per column of the generated table"
)]
pub(crate) const fn price(
    unit: Unit,
    category: &'static str,
    micros: u32,
    url_micros: u32,
    owned: bool,
    page: u32,
    list_param: &'static str,
    basis: &'static str,
) -> Price {
    Price {
        unit,
        category,
        micros: micros as u64,
        url_micros: url_micros as u64,
        owned,
        page,
        list_param,
        basis,
    }
}

impl Price {
    /// What an endpoint the catalogue does not price costs: nothing.
    pub const NONE: Self = price(UNPRICED, "", 0, 0, false, 1, "", "not in the catalogue");

    /// X's Owned Reads price per resource (micro-USD).
    pub const OWNED_READS_MICROS: u64 = table::OWNED_READS_MICROS as u64;
}

/// A rate of the table: `(limit, window in seconds)`.
pub(crate) const fn r(limit: u32, window_secs: u32) -> (u32, u32) {
    (limit, window_secs)
}

/// Which kinds of auth an endpoint accepts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AuthKinds(u8);

impl AuthKinds {
    /// App-only Bearer.
    pub fn app(self) -> bool {
        self.0 & APP != 0
    }
    /// OAuth 2.0 user context.
    pub fn oauth2_user(self) -> bool {
        self.0 & O2U != 0
    }
    /// OAuth 1.0a user context.
    pub fn oauth1_user(self) -> bool {
        self.0 & O1U != 0
    }
    /// No auth at all (X's `GET /2/openapi.json`): nothing to pre-check.
    pub fn none(self) -> bool {
        self.0 == 0
    }

    /// `"app-only Bearer, OAuth 2.0 user context"`, for problem details.
    pub fn describe(self) -> String {
        let names: Vec<&str> = [
            (APP, "app-only Bearer"),
            (O2U, "OAuth 2.0 user context"),
            (O1U, "OAuth 1.0a user context"),
        ]
        .iter()
        .filter(|(bit, _)| self.0 & bit != 0)
        .map(|(_, name)| *name)
        .collect();
        names.join(" or ")
    }
}

/// One window set of an endpoint (per App or per user), and whether `[[limits.override]]`
/// set it (an override also wins over the limit X reports).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Figure {
    /// The windows; empty when X publishes none.
    pub rates: Vec<Rate>,
    /// Set by `[[limits.override]]`.
    pub overridden: bool,
}

/// An endpoint of the catalogue.
#[derive(Debug, Clone)]
pub struct Endpoint {
    /// `METHOD /2/path/:param`, as X's docs name it: the metrics' `endpoint` label.
    pub name: String,
    /// Auth kinds it accepts.
    pub auth: AuthKinds,
    /// OAuth 2.0 scopes it needs, all together.
    pub scopes: &'static [&'static str],
    /// A streaming endpoint.
    pub stream: bool,
    /// Per-App figure.
    pub app: Figure,
    /// Per-user figure.
    pub user: Figure,
    /// In X's OpenAPI document (false: a documented endpoint the spec lacks, or one added by
    /// an override).
    pub in_spec: bool,
    /// What X bills for it (`[[costs.override]]` applied).
    pub price: Price,
}

/// Index of an endpoint in the [`Catalogue`].
pub type EndpointId = usize;

/// The methods X's API uses; each has its own router.
const METHODS: [Method; 5] = [
    Method::GET,
    Method::POST,
    Method::PUT,
    Method::DELETE,
    Method::PATCH,
];

fn method_index(method: &Method) -> Option<usize> {
    METHODS.iter().position(|m| m == method)
}

/// Every endpoint, and the routers that find them.
#[derive(Debug)]
pub struct Catalogue {
    endpoints: Vec<Endpoint>,
    routers: [matchit::Router<EndpointId>; 5],
}

/// The catalogue could not be built (a generated row or an override that the router refuses).
#[derive(Debug, thiserror::Error)]
#[error("endpoint catalogue: {0}")]
pub struct CatalogueError(String);

fn rates_of(table: &[(u32, u32)]) -> Vec<Rate> {
    table
        .iter()
        .filter_map(|&(limit, secs)| {
            Some(Rate {
                limit: NonZeroU32::new(limit)?,
                window: Duration::from_secs(u64::from(secs)),
            })
        })
        .collect()
}

/// `/2/tweets/:id` → `/2/tweets/{}`: the shape overrides are compared by.
fn shape(docs_path: &str) -> String {
    docs_path
        .split('/')
        .map(|seg| if seg.starts_with(':') { "{}" } else { seg })
        .collect::<Vec<_>>()
        .join("/")
}

/// `/2/users/:id/following/:target` → `/2/users/{p0}/following/{p1}`: matchit needs one
/// parameter name per position, and X's spec names the same position differently in
/// different operations, so the router gets positional names.
fn router_path(docs_path: &str) -> String {
    let mut n = 0;
    docs_path
        .split('/')
        .map(|seg| {
            if seg.starts_with(':') {
                n += 1;
                format!("{{p{n}}}")
            } else {
                seg.to_owned()
            }
        })
        .collect::<Vec<_>>()
        .join("/")
}

/// The endpoint an override names: same method, same shape.
fn find(endpoints: &[Endpoint], pattern: &EndpointPattern) -> Option<EndpointId> {
    endpoints.iter().position(|e| {
        e.name
            .split_once(' ')
            .is_some_and(|(m, p)| m == pattern.method && shape(p) == pattern.shape)
    })
}

impl Catalogue {
    /// The endpoint `pattern` (an override's `endpoint`) names, if the catalogue has it.
    pub fn find(&self, pattern: &EndpointPattern) -> Option<&Endpoint> {
        find(&self.endpoints, pattern).and_then(|i| self.endpoints.get(i))
    }

    /// The built-in catalogue with `overrides` applied. An override for an endpoint the
    /// catalogue lacks adds that endpoint (any auth, no scopes).
    pub fn new(overrides: &[Override]) -> Result<Self, CatalogueError> {
        let mut endpoints: Vec<Endpoint> = table::ROWS
            .iter()
            .map(|row| Endpoint {
                name: format!("{} {}", row.method, row.path),
                auth: AuthKinds(row.auth),
                scopes: row.scopes,
                stream: row.stream,
                app: Figure {
                    rates: rates_of(row.app),
                    overridden: false,
                },
                user: Figure {
                    rates: rates_of(row.user),
                    overridden: false,
                },
                in_spec: row.in_spec,
                price: row.price,
            })
            .collect();
        for o in overrides {
            let i = match find(&endpoints, &o.endpoint) {
                Some(i) => i,
                None => {
                    endpoints.push(Endpoint {
                        name: o.endpoint.to_string(),
                        auth: AuthKinds(APP | O2U | O1U),
                        scopes: &[],
                        stream: false,
                        app: Figure::default(),
                        user: Figure::default(),
                        in_spec: false,
                        price: Price::NONE,
                    });
                    endpoints.len() - 1
                }
            };
            if let Some(e) = endpoints.get_mut(i) {
                if !o.app.is_empty() {
                    e.app = Figure {
                        rates: o.app.clone(),
                        overridden: true,
                    };
                }
                if !o.user.is_empty() {
                    e.user = Figure {
                        rates: o.user.clone(),
                        overridden: true,
                    };
                }
            }
        }
        let mut routers: [matchit::Router<EndpointId>; 5] = Default::default();
        for (id, e) in endpoints.iter().enumerate() {
            let (method, path) = e
                .name
                .split_once(' ')
                .ok_or_else(|| CatalogueError(format!("{}: no method", e.name)))?;
            let m = method
                .parse::<Method>()
                .ok()
                .as_ref()
                .and_then(method_index)
                .ok_or_else(|| CatalogueError(format!("{}: unknown method", e.name)))?;
            let router = routers
                .get_mut(m)
                .ok_or_else(|| CatalogueError(format!("{}: unknown method", e.name)))?;
            router
                .insert(router_path(path), id)
                .map_err(|err| CatalogueError(format!("{}: {err}", e.name)))?;
        }
        Ok(Self { endpoints, routers })
    }

    /// The catalogue with `overrides` (`[[costs.override]]`) replacing their endpoints' prices;
    /// an override naming an endpoint the catalogue lacks is an error.
    pub fn priced(mut self, overrides: &[CostOverride]) -> Result<Self, CatalogueError> {
        for (n, o) in overrides.iter().enumerate() {
            let i = find(&self.endpoints, &o.endpoint).ok_or_else(|| {
                CatalogueError(format!(
                    "costs.override[{n}].endpoint: {} is not an endpoint of the catalogue (add it with [[limits.override]] first)",
                    o.endpoint
                ))
            })?;
            if let Some(e) = self.endpoints.get_mut(i) {
                let page = e.price.page;
                e.price = Price {
                    unit: match o.unit {
                        PriceUnit::PerResource => Unit::PerResource,
                        PriceUnit::PerRequest => Unit::PerRequest,
                    },
                    category: "override",
                    micros: o.micros,
                    url_micros: 0,
                    owned: e.price.owned,
                    page: if o.unit == PriceUnit::PerResource {
                        page.max(1)
                    } else {
                        1
                    },
                    list_param: e.price.list_param,
                    basis: "costs.override",
                };
            }
        }
        Ok(self)
    }

    /// The endpoint a request calls; `None` is `other`. `HEAD` counts as the `GET` it
    /// mirrors.
    pub fn lookup(&self, method: &Method, path: &str) -> Option<EndpointId> {
        let method = if method == Method::HEAD {
            &Method::GET
        } else {
            method
        };
        let router = self.routers.get(method_index(method)?)?;
        router.at(path).ok().map(|m| *m.value)
    }

    /// The endpoint at `id`.
    pub fn get(&self, id: EndpointId) -> Option<&Endpoint> {
        self.endpoints.get(id)
    }

    /// Every endpoint, in table order (overrides' additions last).
    pub fn endpoints(&self) -> &[Endpoint] {
        &self.endpoints
    }

    /// The spec's `info.version` and SHA-256 the table was generated from.
    pub fn spec() -> (&'static str, &'static str) {
        (table::SPEC_VERSION, table::SPEC_SHA256)
    }

    /// Rows of the generated table (tests).
    #[cfg(test)]
    pub(crate) fn rows() -> &'static [Row] {
        table::ROWS
    }
}

// === pre-check ===

/// The pre-check for a request matched to `endpoint` (`None`, `other`, has nothing to check).
pub fn precheck_at(
    catalogue: &Catalogue,
    endpoint: Option<EndpointId>,
    identity: &Identity,
    granted: &[String],
) -> Result<(), ProxyError> {
    match endpoint.and_then(|e| catalogue.get(e)) {
        Some(endpoint) => precheck(endpoint, identity, granted),
        None => Ok(()),
    }
}

/// CONTRACT section 4's pre-check: the endpoint must accept the identity's kind of auth and,
/// for OAuth 2.0 users, `granted` must hold every scope it needs.
pub fn precheck(
    endpoint: &Endpoint,
    identity: &Identity,
    granted: &[String],
) -> Result<(), ProxyError> {
    let auth = endpoint.auth;
    if auth.none() {
        return Ok(());
    }
    let ok = match identity.kind {
        IdentityKind::App => auth.app(),
        IdentityKind::Oauth1User => auth.oauth1_user(),
        IdentityKind::Oauth2User => auth.oauth2_user(),
    };
    if !ok {
        return Err(ProxyError::AuthTypeUnsupported {
            identity: identity.name.to_string(),
            endpoint: endpoint.name.clone(),
            needs: auth.describe(),
            has: identity.kind.describe(),
        });
    }
    if identity.kind == IdentityKind::Oauth2User {
        let missing: Vec<String> = endpoint
            .scopes
            .iter()
            .filter(|s| !granted.iter().any(|g| g == **s))
            .map(|s| (*s).to_owned())
            .collect();
        if !missing.is_empty() {
            return Err(ProxyError::ScopeMissing {
                identity: identity.name.to_string(),
                endpoint: endpoint.name.clone(),
                missing,
                has: granted.to_vec(),
            });
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests;
