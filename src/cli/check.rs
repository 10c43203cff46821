//! `xgate check`: the summary of a valid configuration, with no secret values.

use std::io::Write;

use super::{CliError, io_error};
use crate::config::{
    BudgetScope, ClientAuth, Config, Period, StoreLocation, UserAuth, format_duration, format_usd,
};
use crate::endpoints::{Catalogue, Unit};
use crate::identity::{self, Resolved};
use crate::store;

pub(super) fn run(
    config: &Config,
    out: &mut dyn Write,
    err: &mut dyn Write,
) -> Result<(), CliError> {
    for w in &config.warnings {
        writeln!(err, "warning: {w}").map_err(|e| io_error(&e))?;
    }
    let runtime = super::runtime()?;
    // `check` never creates or changes the store; it reads one that is there. A shared
    // engine that does not answer is reported, and makes the exit status 2.
    let mut engines = Vec::new();
    let observer = crate::shared::not_observed();
    let store = match runtime.block_on(store::open_existing(&config.store, &observer)) {
        Ok(store) => store,
        Err(e) if e.is_config() => {
            return Err(CliError::Config(crate::config::ConfigError {
                problems: vec![crate::config::Problem::new(
                    "store.encryption_key",
                    e.to_string(),
                )],
            }));
        }
        Err(e) if matches!(config.store.location, StoreLocation::Postgres(_)) => {
            engines.push(Engine::checked(
                "postgres (token store)",
                &config.store,
                Err(e.to_string()),
            ));
            None
        }
        Err(e) => return Err(CliError::Store(e)),
    };
    if store.is_some() && matches!(config.store.location, StoreLocation::Postgres(_)) {
        engines.push(Engine::checked(
            "postgres (token store)",
            &config.store,
            Ok("reachable".to_owned()),
        ));
    }
    if let Some(shared) = &config.shared {
        let pinged = runtime.block_on(crate::limits::redis::ping(shared));
        engines.insert(
            0,
            Engine {
                name: "redis (shared buckets)",
                at: shared.redis.shown.clone(),
                state: pinged.map(|took| format!("reachable ({} ms)", took.as_millis())),
            },
        );
    }
    let store_down = engines
        .iter()
        .any(|e| e.name.starts_with("postgres") && e.state.is_err());
    for user in config.users.values() {
        if !matches!(user.auth, UserAuth::Oauth2 { .. }) || store_down {
            continue;
        }
        // The same answer the proxy would find at startup.
        let resolved = runtime.block_on(identity::resolve(config, &user.name, store.as_deref()))?;
        if !matches!(resolved, Some(Resolved::Oauth2 { .. })) {
            writeln!(
                err,
                "warning: users.{0}: no stored OAuth 2.0 token yet (store {1}); run `xgate login --identity {0}`",
                user.name,
                shown_store(&config.store.location)
            )
            .map_err(|e| io_error(&e))?;
        }
    }
    let catalogue = Catalogue::new(&[])?;
    for (i, o) in config.limits.overrides.iter().enumerate() {
        if catalogue.find(&o.endpoint).is_none() {
            writeln!(
                err,
                "warning: limits.override[{i}].endpoint: {} is not in the endpoint catalogue (X API v{}); it is added, with no auth pre-check",
                o.endpoint,
                Catalogue::spec().0
            )
            .map_err(|e| io_error(&e))?;
        }
    }
    summary(config, &catalogue, out).map_err(|e| io_error(&e))?;
    let priced = Catalogue::new(&config.limits.overrides)?
        .priced(&config.costs.overrides)
        .map_err(|e| CliError::Usage(e.to_string()))?;
    costs(config, &priced, out).map_err(|e| io_error(&e))?;
    if !engines.is_empty() {
        writeln!(out, "shared state:").map_err(|e| io_error(&e))?;
    }
    for e in &engines {
        let state = e.state.as_deref().unwrap_or("UNREACHABLE");
        writeln!(out, "  {:<24} {}  {state}", e.name, e.at).map_err(|e| io_error(&e))?;
    }
    let down: Vec<String> = engines
        .iter()
        .filter_map(|e| {
            e.state
                .as_ref()
                .err()
                .map(|why| format!("{} {}: {why}", e.name, e.at))
        })
        .collect();
    if down.is_empty() {
        Ok(())
    } else {
        Err(CliError::Unreachable(down.join("; ")))
    }
}

/// A configured shared engine and what connecting to it gave.
struct Engine {
    name: &'static str,
    /// Where, without user or password.
    at: String,
    /// How it answered, or why it did not.
    state: Result<String, String>,
}

impl Engine {
    /// The store's row.
    fn checked(
        name: &'static str,
        store: &crate::config::Store,
        state: Result<String, String>,
    ) -> Self {
        Self {
            name,
            at: shown_store(&store.location),
            state,
        }
    }
}

/// The store as `check` names it: its file, or its database without user or password.
fn shown_store(location: &StoreLocation) -> String {
    match location {
        StoreLocation::File(path) => path.display().to_string(),
        StoreLocation::Postgres(url) => url.shown.clone(),
    }
}

/// The price table in use, the budgets, and every endpoint X does not price that no
/// `[[costs.override]]` covers (CONTRACT section 11 rule 1).
fn costs(c: &Config, catalogue: &Catalogue, out: &mut dyn Write) -> std::io::Result<()> {
    let unpriced: Vec<&str> = catalogue
        .endpoints()
        .iter()
        .filter(|e| e.price.unit == Unit::Unpriced)
        .map(|e| e.name.as_str())
        .collect();
    writeln!(
        out,
        "costs: {} endpoints priced (X's pay-per-use table; {} overridden), {} unpriced",
        catalogue.endpoints().len() - unpriced.len(),
        c.costs.overrides.len(),
        unpriced.len()
    )?;
    for b in &c.budgets {
        let (scope, who) = match &b.scope {
            BudgetScope::Client(n) => ("client", n),
            BudgetScope::Identity(n) => ("identity", n),
            BudgetScope::App(n) => ("app", n),
        };
        let per = match b.period {
            Period::Day => "UTC day",
            Period::Month => "calendar month (UTC)",
        };
        writeln!(
            out,
            "  budget {}: {scope} {who}, {} USD per {per}",
            b.name,
            format_usd(b.limit_micros)
        )?;
    }
    if !unpriced.is_empty() {
        writeln!(
            out,
            "  unpriced (metered at 0 USD; add a [[costs.override]] if X bills one):"
        )?;
        for name in unpriced {
            writeln!(out, "    {name}")?;
        }
    }
    Ok(())
}

fn summary(c: &Config, catalogue: &Catalogue, out: &mut dyn Write) -> std::io::Result<()> {
    if let Some(src) = &c.source {
        writeln!(out, "config {}: OK", src.display())?;
    } else {
        writeln!(out, "config: OK")?;
    }
    writeln!(out, "listeners:")?;
    let scheme = if c.server.tls.is_some() {
        "https (TLS; HTTP/1.1 and HTTP/2)"
    } else {
        "http (HTTP/1.1 and h2c)"
    };
    writeln!(out, "  proxy  {}  {scheme}", c.server.listen)?;
    writeln!(
        out,
        "  admin  {}  /healthz /readyz /metrics",
        c.admin.listen
    )?;
    writeln!(
        out,
        "upstream: {}  allowed prefixes: {}{}",
        c.upstream.base_url,
        c.upstream.allowed_prefixes.join(" "),
        if c.upstream.ca_file.is_some() {
            "  extra CA file: yes"
        } else {
            ""
        }
    )?;
    writeln!(
        out,
        "store: {}  encryption: {}",
        shown_store(&c.store.location),
        if c.store.encryption_key.is_some() {
            "on"
        } else {
            "off"
        }
    )?;

    writeln!(out, "identities:")?;
    for app in c.apps.values() {
        let bearer = if app.bearer_token.is_some() {
            "configured"
        } else {
            "from the store (xgate bearer)"
        };
        let mut extras = Vec::new();
        if app.consumer.is_some() {
            extras.push("consumer key");
        }
        if let Some(o) = &app.oauth2 {
            extras.push(if o.client_secret.is_some() {
                "OAuth 2.0 confidential client"
            } else {
                "OAuth 2.0 public client"
            });
        }
        let extras = if extras.is_empty() {
            String::new()
        } else {
            format!("; {}", extras.join(", "))
        };
        writeln!(
            out,
            "  app   {:<16} app-only Bearer ({bearer}{extras})",
            app.name
        )?;
    }
    for user in c.users.values() {
        match &user.auth {
            UserAuth::Oauth1 { token } => writeln!(
                out,
                "  user  {:<16} OAuth 1.0a via app {} (token: {})",
                user.name,
                user.app,
                if token.is_some() {
                    "configured"
                } else {
                    "from the store"
                }
            )?,
            UserAuth::Oauth2 { scopes } => writeln!(
                out,
                "  user  {:<16} OAuth 2.0 via app {} (scopes: {})",
                user.name,
                user.app,
                scopes.join(" ")
            )?,
        }
    }

    writeln!(out, "clients:")?;
    if c.clients.is_empty() {
        writeln!(out, "  (none)")?;
    }
    for client in &c.clients {
        let how = match client.auth {
            ClientAuth::KeySha256(_) => "key",
            ClientAuth::Anonymous => "anonymous",
        };
        let default = client
            .default_identity
            .as_deref()
            .map(|d| format!("  default: {d}"))
            .unwrap_or_default();
        let rate = client
            .rate
            .map(|r| format!("  rate: {r}"))
            .unwrap_or_default();
        writeln!(
            out,
            "  {:<16} {how:<9} identities: {}{default}{rate}",
            client.name,
            client.identities.join(", ")
        )?;
    }

    let l = &c.limits;
    writeln!(
        out,
        "limits: on_exhausted = {}  max_wait = {}  usage_cap_cooldown = {}",
        match l.on_exhausted {
            crate::config::OnExhausted::Reject => "reject",
            crate::config::OnExhausted::Wait => "wait",
        },
        format_duration(l.max_wait),
        format_duration(l.usage_cap_cooldown)
    )?;
    writeln!(
        out,
        "endpoint catalogue: {} endpoints (X API v{})",
        catalogue.endpoints().len(),
        Catalogue::spec().0
    )?;
    if !l.overrides.is_empty() {
        writeln!(out, "overrides:")?;
        for o in &l.overrides {
            let list = |rates: &[crate::config::Rate]| {
                if rates.is_empty() {
                    "(built-in)".to_owned()
                } else {
                    rates
                        .iter()
                        .map(ToString::to_string)
                        .collect::<Vec<_>>()
                        .join(", ")
                }
            };
            writeln!(
                out,
                "  {:<40} app {}  user {}",
                o.endpoint.to_string(),
                list(&o.app),
                list(&o.user)
            )?;
        }
    }
    Ok(())
}
