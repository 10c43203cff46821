//! `xgate usage`: the metered spend kept in the store (CONTRACT section 11 rule 5), and with
//! `--reconcile` X's own count of Posts read beside xgate's.

use std::collections::BTreeMap;
use std::io::Write;

use bytes::Bytes;
use http::{Request, header};
use http_body_util::BodyExt as _;

use super::{CliError, UsageArgs, UsageBy, io_error, runtime};
use crate::body::UpstreamBody;
use crate::clock::{Clock, SystemClock, date_of_days, days_of_date};
use crate::config::{Config, format_usd};
use crate::store::{self, SpendRow, StoredToken, TokenKind};
use crate::upstream::Upstream;

/// The most days X's `GET /2/usage/tweets` reports.
const MAX_USAGE_DAYS: i64 = 90;

/// The most of X's usage answer read.
const MAX_USAGE_BODY: usize = 1 << 20;

/// One line of the table: the figures of one client, identity or endpoint.
#[derive(Debug, Default, Clone, serde::Serialize)]
struct Totals {
    requests: u64,
    resources: u64,
    repeats: u64,
    posts: u64,
    #[serde(skip)]
    micros: u64,
    cost_usd: f64,
}

impl Totals {
    fn add(&mut self, r: &SpendRow) {
        self.requests += r.requests;
        self.resources += r.resources;
        self.repeats += r.repeats;
        self.posts += r.posts;
        self.micros += r.micros;
        self.cost_usd = self.micros as f64 / 1e6;
    }
}

/// The dates of the range, checked: `--from` and `--to` default to today (UTC).
fn range(args: &UsageArgs, today: i64) -> Result<(i64, i64), CliError> {
    let day = |flag: &str, v: &Option<String>| -> Result<i64, CliError> {
        match v {
            None => Ok(today),
            Some(d) => days_of_date(d).ok_or_else(|| {
                CliError::Usage(format!("{flag} {d}: expected a date as YYYY-MM-DD"))
            }),
        }
    };
    let (from, to) = (day("--from", &args.from)?, day("--to", &args.to)?);
    if from > to {
        return Err(CliError::Usage(format!(
            "--from {} is after --to {}",
            date_of_days(from),
            date_of_days(to)
        )));
    }
    Ok((from, to))
}

/// `xgate usage`.
pub(super) fn run(config: &Config, args: &UsageArgs, out: &mut dyn Write) -> Result<(), CliError> {
    let today = i64::try_from(SystemClock.unix_seconds() / 86_400).unwrap_or(0);
    let (from, to) = range(args, today)?;
    let (from_date, to_date) = (date_of_days(from), date_of_days(to));
    let rt = runtime()?;
    rt.block_on(async {
        let store = store::open_existing(&config.store, &crate::shared::not_observed()).await?;
        let rows = match &store {
            Some(s) => s.spend(&from_date, &to_date).await?,
            None => Vec::new(),
        };
        let mut by: BTreeMap<String, Totals> = BTreeMap::new();
        let mut total = Totals::default();
        for r in &rows {
            let key = match args.by {
                UsageBy::Client => &r.client,
                UsageBy::Identity => &r.identity,
                UsageBy::Endpoint => &r.endpoint,
            };
            by.entry(key.clone()).or_default().add(r);
            total.add(r);
        }
        let reconcile = if args.reconcile {
            Some(reconcile(config, args, store.as_deref(), &rows, (from, to), today).await?)
        } else {
            None
        };
        if args.json {
            let doc = serde_json::json!({
                "from": from_date,
                "to": to_date,
                "by": args.by.as_str(),
                "estimate": true,
                "rows": by.iter().map(|(k, t)| {
                    let mut v = serde_json::to_value(t).unwrap_or_default();
                    if let Some(map) = v.as_object_mut() {
                        map.insert(args.by.as_str().to_owned(), serde_json::Value::from(k.as_str()));
                    }
                    v
                }).collect::<Vec<_>>(),
                "total": total,
                "reconcile": reconcile.as_ref().map(|days| days.iter().map(|d| serde_json::json!({
                    "date": d.date,
                    "x_posts": d.x,
                    "xgate_posts": d.xgate,
                    "difference": d.xgate as i64 - d.x.map_or(0, |x| x as i64),
                })).collect::<Vec<_>>()),
            });
            writeln!(out, "{doc}").map_err(|e| io_error(&e))?;
            return Ok(());
        }
        print_table(out, args.by, &from_date, &to_date, &by, &total).map_err(|e| io_error(&e))?;
        if let Some(days) = reconcile {
            print_reconcile(out, &days).map_err(|e| io_error(&e))?;
        }
        Ok(())
    })
}

fn print_table(
    out: &mut dyn Write,
    by: UsageBy,
    from: &str,
    to: &str,
    rows: &BTreeMap<String, Totals>,
    total: &Totals,
) -> std::io::Result<()> {
    writeln!(
        out,
        "metered spend {from} to {to} (UTC), by {}; an estimate of X's bill",
        by.as_str()
    )?;
    let width = rows
        .keys()
        .map(String::len)
        .chain([by.as_str().len(), 5])
        .max()
        .unwrap_or(8);
    writeln!(
        out,
        "{:<width$}  {:>9}  {:>10}  {:>8}  {:>9}  {:>12}",
        by.as_str().to_uppercase(),
        "REQUESTS",
        "RESOURCES",
        "REPEATS",
        "POSTS",
        "COST_USD"
    )?;
    for (key, t) in rows.iter().chain([(&"total".to_owned(), total)]) {
        writeln!(
            out,
            "{key:<width$}  {:>9}  {:>10}  {:>8}  {:>9}  {:>12}",
            t.requests,
            t.resources,
            t.repeats,
            t.posts,
            format_usd(t.micros)
        )?;
    }
    Ok(())
}

/// One day of `--reconcile`.
#[derive(Debug)]
struct Day {
    date: String,
    /// X's count, when it reported the day.
    x: Option<u64>,
    xgate: u64,
}

fn print_reconcile(out: &mut dyn Write, days: &[Day]) -> std::io::Result<()> {
    writeln!(out)?;
    writeln!(
        out,
        "Posts read per day: X's GET /2/usage/tweets (the Project) beside xgate's count"
    )?;
    writeln!(
        out,
        "{:<10}  {:>10}  {:>12}  {:>10}",
        "DATE", "X_POSTS", "XGATE_POSTS", "DIFFERENCE"
    )?;
    for d in days {
        let x = d.x.map_or_else(|| "-".to_owned(), |x| x.to_string());
        let diff = d.x.map_or_else(
            || "-".to_owned(),
            |x| format!("{:+}", d.xgate as i64 - x as i64),
        );
        writeln!(out, "{:<10}  {x:>10}  {:>12}  {diff:>10}", d.date, d.xgate)?;
    }
    Ok(())
}

/// The App whose Bearer asks X: `--app`, else the only App.
fn app_of<'c>(config: &'c Config, args: &'c UsageArgs) -> Result<&'c str, CliError> {
    match &args.app {
        Some(app) if config.apps.contains_key(app) => Ok(app),
        Some(app) => Err(CliError::Usage(format!(
            "--app {app}: no such App in [apps]"
        ))),
        None if config.apps.len() == 1 => Ok(config.apps.keys().next().map_or("", String::as_str)),
        None => Err(CliError::Usage(
            "--reconcile: several Apps are configured; name one with --app".to_owned(),
        )),
    }
}

/// Asks X's `GET /2/usage/tweets` with the App's Bearer, and pairs its days with xgate's
/// Posts read by that App's identities.
async fn reconcile(
    config: &Config,
    args: &UsageArgs,
    store: Option<&dyn store::TokenStore>,
    rows: &[SpendRow],
    (from, to): (i64, i64),
    today: i64,
) -> Result<Vec<Day>, CliError> {
    let app = app_of(config, args)?;
    let bearer = match config.apps.get(app).and_then(|a| a.bearer_token.as_ref()) {
        Some(token) => token.expose().to_owned(),
        None => match store {
            Some(s) => match s.load(app, TokenKind::Bearer).await? {
                Some(StoredToken::Bearer { ref token }) => token.clone(),
                _ => String::new(),
            },
            None => String::new(),
        },
    };
    if bearer.is_empty() {
        return Err(CliError::NoCredentials {
            identity: app.to_owned(),
            hint: format!("set apps.{app}.bearer_token or run `xgate bearer --app {app}`"),
        });
    }
    let days = (today - from + 1).clamp(1, MAX_USAGE_DAYS);
    let upstream = Upstream::new(&config.upstream, config.server.request_timeout)
        .map_err(|e| CliError::Usage(e.to_string()))?;
    let uri: http::Uri = format!("{}/2/usage/tweets?days={days}", upstream.base())
        .parse()
        .map_err(|e| CliError::Usage(format!("upstream.base_url: {e}")))?;
    let mut req = Request::new(UpstreamBody::Full(None));
    *req.uri_mut() = uri;
    let mut auth = http::HeaderValue::try_from(format!("Bearer {bearer}")).map_err(|_invalid| {
        CliError::Usage(format!(
            "apps.{app}: the Bearer token cannot be sent in a header"
        ))
    })?;
    auth.set_sensitive(true);
    req.headers_mut().insert(header::AUTHORIZATION, auth);
    let resp = upstream
        .send(req)
        .await
        .map_err(|e| CliError::Unreachable(format!("GET /2/usage/tweets: {e}")))?;
    let status = resp.status();
    let body: Bytes = http_body_util::Limited::new(resp.into_body(), MAX_USAGE_BODY)
        .collect()
        .await
        .map(|c| c.to_bytes())
        .map_err(|e| {
            CliError::Unreachable(format!(
                "GET /2/usage/tweets: the answer could not be read: {e}"
            ))
        })?;
    if !status.is_success() {
        return Err(CliError::Unreachable(format!(
            "GET /2/usage/tweets answered {status}: {}",
            String::from_utf8_lossy(&body)
                .chars()
                .take(300)
                .collect::<String>()
        )));
    }
    let x = x_daily_posts(&body);
    let identities: Vec<&str> = config
        .apps
        .keys()
        .filter(|a| *a == app)
        .map(String::as_str)
        .chain(
            config
                .users
                .values()
                .filter(|u| u.app == app)
                .map(|u| u.name.as_str()),
        )
        .collect();
    let mut out = Vec::new();
    for day in from..=to {
        let date = date_of_days(day);
        let xgate = rows
            .iter()
            .filter(|r| r.day == date && identities.contains(&r.identity.as_str()))
            .map(|r| r.posts)
            .sum();
        out.push(Day {
            x: x.get(&date).copied(),
            date,
            xgate,
        });
    }
    Ok(out)
}

/// X's daily Posts consumed, by `YYYY-MM-DD`, from either shape X documents: the OpenAPI
/// schema's (`daily_project_usage.usage[] = {date, usage}`, `usage` a string count, `date` ISO
/// 8601) or the docs' example (`daily_project_usage[] = {date, usage: [{tweets_consumed}]}`).
fn x_daily_posts(body: &[u8]) -> BTreeMap<String, u64> {
    let doc: serde_json::Value = serde_json::from_slice(body).unwrap_or_default();
    let count = |v: &serde_json::Value| -> u64 {
        v.as_u64()
            .or_else(|| v.as_str().and_then(|s| s.trim().parse().ok()))
            .unwrap_or(0)
    };
    let date = |v: &serde_json::Value| v.as_str().map(|d| d.chars().take(10).collect::<String>());
    let mut out = BTreeMap::new();
    let daily = doc
        .pointer("/data/daily_project_usage")
        .unwrap_or(&serde_json::Value::Null);
    if let Some(days) = daily.get("usage").and_then(serde_json::Value::as_array) {
        for d in days {
            if let Some(date) = date(&d["date"]) {
                *out.entry(date).or_default() += count(&d["usage"]);
            }
        }
    } else if let Some(days) = daily.as_array() {
        for d in days {
            let Some(date) = date(&d["date"]) else {
                continue;
            };
            let n: u64 = d["usage"]
                .as_array()
                .map(|apps| apps.iter().map(|a| count(&a["tweets_consumed"])).sum())
                .unwrap_or_else(|| count(&d["usage"]));
            *out.entry(date).or_default() += n;
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn both_shapes_of_xs_usage_answer_are_read() {
        let schema = br#"{"data":{"daily_project_usage":{"project_id":"1","usage":[
            {"date":"2026-12-01T00:00:00.000Z","usage":"120"},{"date":"2026-12-02T00:00:00.000Z","usage":"7"}]},
            "project_usage":"127","project_cap":"3000000"}}"#;
        let got = x_daily_posts(schema);
        assert_eq!(got.get("2026-12-01"), Some(&120));
        assert_eq!(got.get("2026-12-02"), Some(&7));
        let example = br#"{"data":{"daily_project_usage":[
            {"date":"2026-12-01","usage":[{"app_id":"9","tweets_consumed":"100"},{"app_id":"8","tweets_consumed":5}]}]}}"#;
        assert_eq!(x_daily_posts(example).get("2026-12-01"), Some(&105));
        assert!(x_daily_posts(b"not json").is_empty());
    }
}
