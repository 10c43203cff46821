//! What every request costs, and the budgets that refuse what they cannot pay (CONTRACT
//! section 11).
//!
//! Owns the [`Meter`]: before the rate limits, [`Meter::reserve`] prices a request (its
//! endpoint's price from the catalogue, Owned Reads, the URL price of a Post) and reserves its
//! worst case in every budget that covers it, all or none; the [`Charge`] it returns follows
//! the request. When X's answer arrives the charge becomes the response body's [`Tap`]: the
//! [`Scanner`] counts the resources of the top-level `data` as the body streams by (per
//! message for a stream), and when the body ends the charge is settled — the day's repeats
//! removed by deduplication, the budgets' reservation replaced by the metered cost (given back
//! in full when X was not asked or answered 400 or more), the spend added to the rows the
//! flusher writes to the store every second, and the metrics counted.
//!
//! Budgets and deduplication live in this process ([`ledger`]), or in Redis with `[shared]`
//! ([`redis`]), where every replica draws from one figure. A budget's figure is seeded from
//! the store's spend rows of its period at start, so a restart resumes the day's figures.

mod ledger;
mod redis;
#[cfg(test)]
mod tests;

use std::collections::HashMap;
use std::fmt;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock, PoisonError};
use std::time::Duration;

use http::{Method, Uri};

use crate::body::{Tap, Tapped};
use crate::clock::{Clock, civil_from_days, date_of_days, days_from_civil};
use crate::config::{BudgetScope, Config, OnFailure, Period};
use crate::endpoints::{Catalogue, Endpoint, EndpointId, Price, Unit};
use crate::error::ProxyError;
use crate::identity::{Identities, IdentityId};
use crate::metering::Scanner;
use crate::metrics::{CostHandles, CostMetrics, Metrics};
use crate::store::{SpendRow, TokenStore};

pub use ledger::fingerprint;

/// How often the spend rows are written to the store (a crash loses at most this much).
pub const FLUSH_EVERY: Duration = Duration::from_secs(1);

/// The category whose new resources X's `GET /2/usage/tweets` counts.
const POSTS_READ: &str = "Posts: Read";

/// A UTC day: days since 1970-01-01.
pub type Day = i64;

/// One `[[budgets]]`, resolved against the identities.
#[derive(Debug)]
struct Rule {
    name: Arc<str>,
    scope: Scope,
    limit: u64,
    period: Period,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Scope {
    Client(Arc<str>),
    Identity(IdentityId),
    App(IdentityId),
}

impl Rule {
    fn covers(&self, client: &str, identity: IdentityId, identities: &Identities) -> bool {
        match &self.scope {
            Scope::Client(c) => &**c == client,
            Scope::Identity(i) => *i == identity,
            Scope::App(a) => identities.get(identity).app == *a,
        }
    }

    /// Whether the spend row `row` counts against this budget.
    fn covers_row(&self, row: &SpendRow, identities: &Identities) -> bool {
        match identities.find(&row.identity) {
            Some(id) => self.covers(&row.client, id, identities),
            None => matches!(&self.scope, Scope::Client(c) if **c == *row.client),
        }
    }
}

/// The period a budget is in on `day`: its key (the first day of the period) and when it
/// ends (Unix ms).
pub fn period_of(period: Period, day: Day) -> (Day, u64) {
    let (start, end) = match period {
        Period::Day => (day, day + 1),
        Period::Month => {
            let (y, m, _) = civil_from_days(day);
            let next = if m == 12 { (y + 1, 1) } else { (y, m + 1) };
            (days_from_civil(y, m, 1), days_from_civil(next.0, next.1, 1))
        }
    };
    (start, u64::try_from(end).unwrap_or(0) * 86_400_000)
}

fn period_name(period: Period) -> &'static str {
    match period {
        Period::Day => "day",
        Period::Month => "month",
    }
}

/// Who was metered where: a client, an identity, an endpoint (`None`: `other`).
type Who = (Arc<str>, IdentityId, Option<EndpointId>);

/// One [`Who`]'s cost metrics, resolved once, and its spend rows not written yet (one per UTC
/// day, so rarely more than one).
#[derive(Debug)]
struct Entry {
    handles: CostHandles,
    rows: Vec<(Day, SpendRow)>,
}

impl Entry {
    /// The row of `day`, made from `blank` when there is none.
    fn row(&mut self, day: Day, blank: impl FnOnce() -> SpendRow) -> Option<&mut SpendRow> {
        if !self.rows.iter().any(|(d, _)| *d == day) {
            self.rows.push((day, blank()));
        }
        self.rows
            .iter_mut()
            .find(|(d, _)| *d == day)
            .map(|(_, row)| row)
    }
}

/// Everything metered and not written yet: one hash lookup per settlement.
#[derive(Debug, Default)]
struct Book {
    entries: HashMap<Who, Entry>,
}

/// Prices requests, holds the budgets, meters answers and keeps the spend.
pub struct Meter {
    catalogue: Arc<Catalogue>,
    identities: Arc<Identities>,
    clock: Arc<dyn Clock>,
    metrics: CostMetrics,
    rules: Vec<Rule>,
    /// Per identity: `Some` for those in `costs.owned_reads`, holding their X user id once
    /// learnt.
    owned: Vec<Option<OnceLock<String>>>,
    local: ledger::Ledger,
    shared: Option<Arc<redis::SharedLedger>>,
    pending: Mutex<Book>,
    store: Option<Arc<dyn TokenStore>>,
    /// Settlements still waiting on Redis.
    settling: AtomicUsize,
    settled: tokio::sync::Notify,
}

impl fmt::Debug for Meter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Meter")
            .field("budgets", &self.rules.len())
            .field("shared", &self.shared.is_some())
            .finish_non_exhaustive()
    }
}

/// The key under which an identity's X user id is kept in the store's metadata.
pub fn user_id_key(identity: &str) -> String {
    format!("x_user_id:{identity}")
}

impl Meter {
    /// The meter of `config`, its budgets seeded from `store`'s spend of their periods.
    pub async fn new(
        config: &Config,
        catalogue: Arc<Catalogue>,
        identities: Arc<Identities>,
        metrics: &Arc<Metrics>,
        store: Option<Arc<dyn TokenStore>>,
        clock: Arc<dyn Clock>,
    ) -> Result<Arc<Self>, String> {
        let rules = config
            .budgets
            .iter()
            .filter_map(|b| {
                let scope = match &b.scope {
                    BudgetScope::Client(c) => Scope::Client(Arc::from(c.as_str())),
                    BudgetScope::Identity(i) => Scope::Identity(identities.find(i)?),
                    BudgetScope::App(a) => Scope::App(identities.find(a)?),
                };
                Some(Rule {
                    name: Arc::from(b.name.as_str()),
                    scope,
                    limit: b.limit_micros,
                    period: b.period,
                })
            })
            .collect::<Vec<_>>();
        let mut owned: Vec<Option<OnceLock<String>>> = identities.iter().map(|_| None).collect();
        for name in &config.costs.owned_reads {
            if let Some(slot) = identities
                .find(name)
                .and_then(|id| owned.get_mut(id.index()))
            {
                *slot = Some(OnceLock::new());
            }
        }
        let shared = match &config.shared {
            Some(shared) => Some(Arc::new(redis::SharedLedger::new(
                shared,
                config.costs.dedup_max_ids,
                Arc::clone(metrics) as Arc<dyn crate::shared::Observer>,
            )?)),
            None => None,
        };
        let meter = Self {
            catalogue,
            identities,
            clock,
            metrics: metrics.costs(),
            local: ledger::Ledger::new(rules.len(), config.costs.dedup_max_ids),
            rules,
            owned,
            shared,
            pending: Mutex::new(Book::default()),
            store,
            settling: AtomicUsize::new(0),
            settled: tokio::sync::Notify::new(),
        };
        for rule in &meter.rules {
            meter.metrics.budget_limit(&rule.name, rule.limit);
            meter.metrics.budget_remaining(&rule.name, rule.limit);
        }
        meter.seed().await?;
        Ok(Arc::new(meter))
    }

    fn today(&self) -> Day {
        i64::try_from(self.clock.unix_seconds() / 86_400).unwrap_or(0)
    }

    fn now_ms(&self) -> u64 {
        u64::try_from(self.clock.unix_time().as_millis()).unwrap_or(u64::MAX)
    }

    /// Reads the spend of every budget's current period, and the owned identities' user
    /// ids, from the store.
    async fn seed(&self) -> Result<(), String> {
        let Some(store) = &self.store else {
            return Ok(());
        };
        for (id, identity) in self.identities.iter() {
            if let Some(Some(slot)) = self.owned.get(id.index()) {
                let key = user_id_key(&identity.name);
                if let Some(uid) = store.load_meta(&key).await.map_err(|e| e.to_string())? {
                    let _set = slot.set(uid);
                }
            }
        }
        if self.rules.is_empty() {
            return Ok(());
        }
        let today = self.today();
        let earliest = self
            .rules
            .iter()
            .map(|r| period_of(r.period, today).0)
            .min()
            .unwrap_or(today);
        let rows = store
            .spend(&date_of_days(earliest), &date_of_days(today))
            .await
            .map_err(|e| e.to_string())?;
        for (i, rule) in self.rules.iter().enumerate() {
            let (start, _) = period_of(rule.period, today);
            let from = date_of_days(start);
            let spent: u64 = rows
                .iter()
                .filter(|r| *r.day >= *from && rule.covers_row(r, &self.identities))
                .map(|r| r.micros)
                .sum();
            self.local.seed(i, start, spent);
            if let Some(shared) = &self.shared {
                shared.seed(&rule.name, start, spent, rule.period).await;
            }
            self.metrics
                .budget_remaining(&rule.name, rule.limit.saturating_sub(spent));
        }
        Ok(())
    }

    /// The X user id learnt for `identity`, if it is in `costs.owned_reads`.
    pub fn owned_user_id(&self, identity: IdentityId) -> Option<&str> {
        self.owned
            .get(identity.index())?
            .as_ref()?
            .get()
            .map(String::as_str)
    }

    /// Whether `identity` is in `costs.owned_reads` and its user id is not known yet.
    pub fn needs_user_id(&self, identity: IdentityId) -> bool {
        matches!(self.owned.get(identity.index()), Some(Some(slot)) if slot.get().is_none())
    }

    /// Learns `identity`'s X user id (from its `GET /2/users/me`), and keeps it in the store.
    pub fn learn_user_id(self: &Arc<Self>, identity: IdentityId, user_id: &str) {
        let Some(Some(slot)) = self.owned.get(identity.index()) else {
            return;
        };
        if slot.set(user_id.to_owned()).is_err() {
            return;
        }
        let name = self.identities.get(identity).name.clone();
        tracing::info!(identity = %name, user_id, "learnt the X user id of an owned_reads identity: its own lists are metered at the Owned Reads price");
        if let Some(store) = self.store.clone() {
            let uid = user_id.to_owned();
            tokio::spawn(async move {
                if let Err(e) = store.save_meta(&user_id_key(&name), &uid).await {
                    tracing::warn!(identity = %name, error = %e, "could not keep the X user id in the store; it is learnt again after a restart");
                }
            });
        }
    }

    /// The price of a request to `endpoint` as `identity`: Owned Reads applied.
    fn price_for(&self, endpoint: Option<&Endpoint>, identity: IdentityId, uri: &Uri) -> Price {
        let mut price = endpoint.map_or(Price::NONE, |e| e.price);
        if price.owned && price.basis != "costs.override" {
            let path_id = uri.path().split('/').nth(3);
            if path_id.is_some() && path_id == self.owned_user_id(identity) {
                // The category stays: a resource is the same resource for deduplication.
                price.micros = Price::OWNED_READS_MICROS;
            }
        }
        price
    }

    /// Prices the request and reserves its worst case in every budget that covers it
    /// (CONTRACT section 11 rule 3); `url` is whether a `POST /2/tweets`'s text holds a URL
    /// (`None`: not known, the URL price is reserved).
    pub async fn reserve(
        self: &Arc<Self>,
        client: Arc<str>,
        identity: IdentityId,
        endpoint: Option<EndpointId>,
        request: (&Method, &Uri),
        url: Option<bool>,
    ) -> Result<Charge, ProxyError> {
        let matched = endpoint.and_then(|e| self.catalogue.get(e));
        let price = self.price_for(matched, identity, request.1);
        let stream = matched.is_some_and(|e| e.stream);
        let worst = worst_case(&price, request.1, stream, url);
        let day = self.today();
        // The budgets that cover the request, each with the period it is in now.
        let budgets: Vec<(usize, Day)> = self
            .rules
            .iter()
            .enumerate()
            .filter(|(_, r)| r.covers(&client, identity, &self.identities))
            .map(|(i, r)| (i, period_of(r.period, day).0))
            .collect();
        let mut charge = Charge {
            meter: Arc::clone(self),
            client,
            identity,
            endpoint,
            price,
            url: url.unwrap_or(price.url_micros > 0),
            stream,
            day,
            budgets: Vec::new(),
            reserved: 0,
            answered: None,
            scanner: None,
            billed: 0,
            cost: Arc::new(AtomicU64::new(0)),
            finished: false,
            done: false,
            learn_me: self.needs_user_id(identity)
                && matched.is_some_and(|e| e.name == "GET /2/users/me"),
        };
        if budgets.is_empty() || worst == 0 {
            return Ok(charge);
        }
        let refused = match &self.shared {
            Some(shared) => match shared
                .reserve(&self.rules, &budgets, worst, |i, period| {
                    self.local.used(i, period)
                })
                .await
            {
                Ok(outcome) => outcome,
                Err(e) => match shared.on_failure() {
                    OnFailure::Local => {
                        tracing::debug!(error = %e, "budgets: Redis did not answer; this replica's figures decide");
                        self.local.reserve(&self.rules, &budgets, worst)
                    }
                    OnFailure::Refuse => return Err(ProxyError::SharedStateUnavailable),
                },
            },
            None => self.local.reserve(&self.rules, &budgets, worst),
        };
        match refused {
            ledger::Reserved::Ok(figures) => {
                if self.shared.is_some() {
                    self.mirror(&budgets, &figures);
                }
                self.show_budgets(&budgets, &figures);
                charge.budgets = budgets;
                charge.reserved = worst;
                Ok(charge)
            }
            ledger::Reserved::Refused { budget, used } => {
                let rule = self.rules.get(budget);
                let (_, reset_ms) = period_of(rule.map_or(Period::Day, |r| r.period), day);
                Err(ProxyError::BudgetExhausted {
                    budget: rule.map_or_else(String::new, |r| r.name.to_string()),
                    period: period_name(rule.map_or(Period::Day, |r| r.period)),
                    endpoint: matched.map_or_else(|| "other".to_owned(), |e| e.name.clone()),
                    used_micros: used,
                    limit_micros: rule.map_or(0, |r| r.limit),
                    worst_micros: worst,
                    reset_ms,
                    now_ms: self.now_ms(),
                })
            }
        }
    }

    /// Keeps Redis's figures of `budgets` here too (the fallback and a lost key's seed).
    fn mirror(&self, budgets: &[(usize, Day)], figures: &[u64]) {
        for (&(i, period), &used) in budgets.iter().zip(figures) {
            self.local.mirror(i, period, used);
        }
    }

    /// Shows the budgets' figures after a reservation or a settlement.
    fn show_budgets(&self, budgets: &[(usize, Day)], figures: &[u64]) {
        for ((i, _), used) in budgets.iter().zip(figures) {
            if let Some(rule) = self.rules.get(*i) {
                self.metrics
                    .budget_remaining(&rule.name, rule.limit.saturating_sub(*used));
            }
        }
    }

    /// Accounts `part`, a settled part of a charge: the spend row, the metrics, the budget
    /// gauges. `new` of its resources were new today, `resources` in all.
    fn account(&self, charge: &Charge, resources: u64, new: u64, cost: u64) {
        let endpoint_name = charge
            .endpoint
            .and_then(|e| self.catalogue.get(e))
            .map_or("other", |e| e.name.as_str());
        let identity = &self.identities.get(charge.identity).name;
        let blank = || SpendRow {
            day: date_of_days(charge.day),
            client: charge.client.to_string(),
            identity: identity.to_string(),
            endpoint: endpoint_name.to_owned(),
            ..SpendRow::default()
        };
        let handles = {
            let mut book = self.pending.lock().unwrap_or_else(PoisonError::into_inner);
            let who = (Arc::clone(&charge.client), charge.identity, charge.endpoint);
            let entry = book.entries.entry(who).or_insert_with(|| Entry {
                handles: self
                    .metrics
                    .handles(&charge.client, identity, endpoint_name),
                rows: Vec::new(),
            });
            if let Some(row) = entry.row(charge.day, blank) {
                if !charge.finished {
                    row.requests += 1;
                }
                row.resources += resources;
                row.repeats += resources - new.min(resources);
                if charge.price.category == POSTS_READ {
                    row.posts += new;
                }
                row.micros += cost;
            }
            entry.handles.clone()
        };
        handles.count(cost, new, resources.saturating_sub(new));
    }

    /// The spend rows not yet written, taken.
    fn take_pending(&self) -> Vec<SpendRow> {
        let mut book = self.pending.lock().unwrap_or_else(PoisonError::into_inner);
        book.entries
            .values_mut()
            .flat_map(|e| e.rows.drain(..).map(|(_, row)| row))
            .collect()
    }

    /// Puts rows that could not be written back, to be written with the next ones.
    fn put_back(&self, rows: Vec<SpendRow>) {
        let mut book = self.pending.lock().unwrap_or_else(PoisonError::into_inner);
        for r in rows {
            let identity = self.identities.find(&r.identity);
            let endpoint = self
                .catalogue
                .endpoints()
                .iter()
                .position(|e| e.name == r.endpoint);
            let (Some(identity), Some(day)) = (identity, crate::clock::days_of_date(&r.day)) else {
                continue;
            };
            let who = (Arc::from(r.client.as_str()), identity, endpoint);
            let entry = book.entries.entry(who).or_insert_with(|| Entry {
                handles: self.metrics.handles(&r.client, &r.identity, &r.endpoint),
                rows: Vec::new(),
            });
            let blank = || SpendRow {
                day: r.day.clone(),
                client: r.client.clone(),
                identity: r.identity.clone(),
                endpoint: r.endpoint.clone(),
                ..SpendRow::default()
            };
            if let Some(row) = entry.row(day, blank) {
                row.requests += r.requests;
                row.resources += r.resources;
                row.repeats += r.repeats;
                row.posts += r.posts;
                row.micros += r.micros;
            }
        }
    }

    /// Writes the pending spend rows to the store; on failure they stay pending.
    pub async fn flush(&self) -> Result<usize, String> {
        let Some(store) = &self.store else {
            return Ok(0);
        };
        let rows = self.take_pending();
        if rows.is_empty() {
            return Ok(0);
        }
        match store.add_spend(&rows).await {
            Ok(()) => Ok(rows.len()),
            Err(e) => {
                self.put_back(rows);
                Err(e.to_string())
            }
        }
    }

    /// Writes the spend every [`FLUSH_EVERY`] while `meter` lives; a store that fails is
    /// logged once per outage and retried.
    pub async fn flush_every_second(meter: std::sync::Weak<Self>) {
        let mut tick = tokio::time::interval(FLUSH_EVERY);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut failing = false;
        loop {
            tick.tick().await;
            let Some(meter) = meter.upgrade() else {
                return;
            };
            let flushed = meter.flush().await;
            match &flushed {
                Ok(_) if failing => tracing::info!("spend is written to the token store again"),
                Err(e) if !failing => {
                    tracing::error!(error = %e, "could not write the metered spend to the token store; it is kept in memory and written when the store takes writes")
                }
                Ok(_) | Err(_) => {}
            }
            failing = flushed.is_err();
        }
    }

    /// At shutdown: waits (up to `grace`) for settlements still on their way to Redis, then
    /// writes the last spend rows.
    pub async fn close(&self, grace: Duration) {
        let waited = tokio::time::timeout(grace, async {
            loop {
                let notified = self.settled.notified();
                if self.settling.load(Ordering::Acquire) == 0 {
                    return;
                }
                notified.await;
            }
        })
        .await;
        if waited.is_err() {
            tracing::warn!("shutdown: some settlements did not reach Redis in time");
        }
        if let Err(e) = self.flush().await {
            tracing::error!(error = %e, "shutdown: the last second of metered spend could not be written to the token store");
        }
    }
}

/// The worst case of one request: what a budget reserves.
fn worst_case(price: &Price, uri: &Uri, stream: bool, url: Option<bool>) -> u64 {
    match price.unit {
        Unit::Unpriced => 0,
        Unit::PerRequest => match url {
            Some(false) => price.micros,
            _ => price.micros.max(price.url_micros),
        },
        Unit::PerResource if stream => price.micros,
        Unit::PerResource => {
            let page = u64::from(price.page.max(1));
            let query = uri.query().unwrap_or("");
            let param = |name: &str| {
                query.split('&').find_map(|kv| {
                    let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
                    (k == name).then_some(v)
                })
            };
            let asked = param("max_results")
                .and_then(|v| v.parse::<u64>().ok())
                .or_else(|| {
                    (!price.list_param.is_empty())
                        .then(|| param(price.list_param))
                        .flatten()
                        .map(|v| v.split("%2C").flat_map(|p| p.split(',')).count() as u64)
                })
                .unwrap_or(page);
            asked.clamp(1, page) * price.micros
        }
    }
}

/// Whether the text of a `POST /2/tweets` body holds a URL (X bills the URL price): a link
/// with a scheme or a `www.` host. `None` when the body is not the JSON X takes.
pub fn post_has_url(body: &[u8]) -> Option<bool> {
    #[derive(serde::Deserialize)]
    struct Post {
        text: Option<String>,
    }
    let post: Post = serde_json::from_slice(body).ok()?;
    let text = post.text.unwrap_or_default().to_ascii_lowercase();
    Some(text.contains("http://") || text.contains("https://") || text.contains("www."))
}

/// A request's price and reservation, from [`Meter::reserve`] until its answer has been
/// metered and settled; dropped before X answered, it gives its reservation back.
pub struct Charge {
    meter: Arc<Meter>,
    client: Arc<str>,
    identity: IdentityId,
    endpoint: Option<EndpointId>,
    price: Price,
    url: bool,
    stream: bool,
    day: Day,
    /// The budgets reserved in, with their period keys.
    budgets: Vec<(usize, Day)>,
    /// What is reserved in each of them now.
    reserved: u64,
    /// X's status, once it answered.
    answered: Option<u16>,
    scanner: Option<Scanner>,
    /// Resources of a stream already settled.
    billed: u64,
    /// The cost settled so far (shared with settlements that finish later).
    cost: Arc<AtomicU64>,
    /// A part was settled already (a stream's messages): the request is counted once.
    finished: bool,
    /// Settled for the last time.
    done: bool,
    /// The answer is `GET /2/users/me` of an owned-reads identity whose user id is not known:
    /// its `data.id` is it.
    learn_me: bool,
}

impl fmt::Debug for Charge {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Charge")
            .field("price", &self.price)
            .field("reserved", &self.reserved)
            .field("answered", &self.answered)
            .finish_non_exhaustive()
    }
}

impl Charge {
    /// X answered with `status`: whether the body is to be metered (this charge as its tap).
    pub fn answered(&mut self, status: u16) -> bool {
        self.answered = Some(status);
        let metered = (200..300).contains(&status) && self.price.unit == Unit::PerResource;
        if metered {
            self.scanner = Some(Scanner::new());
        }
        metered
    }

    /// What the answer bills, and what is new of it: `(resources, fingerprints of their ids,
    /// resources without an id kept)`, the part not settled yet.
    fn metered_part(&mut self) -> (u64, Vec<u64>, u64) {
        let Some(scanner) = self.scanner.as_mut() else {
            return (0, Vec::new(), 0);
        };
        let resources = scanner.resources().saturating_sub(self.billed);
        if resources == 0 {
            return (0, Vec::new(), 0);
        }
        if std::mem::take(&mut self.learn_me) {
            if let Some(me) = scanner.ids().next() {
                self.meter.learn_user_id(self.identity, me);
            }
        }
        let kind = self.price.category;
        let prints: Vec<u64> = scanner.ids().map(|id| fingerprint(kind, id)).collect();
        let without = resources.saturating_sub(prints.len() as u64);
        self.billed += resources;
        scanner.clear_ids();
        (resources, prints, without)
    }

    /// The cost of the part of the answer not settled yet, settled: locally at once, or
    /// through Redis. `last`: the request is over (its reservation goes back).
    fn settle(&mut self, last: bool) -> Tapped {
        let meter = Arc::clone(&self.meter);
        if self.stream {
            // A stream outlives days: each part is billed to the day it is delivered on.
            let today = meter.today();
            if today != self.day {
                self.day = today;
                for (i, period) in &mut self.budgets {
                    if let Some(rule) = meter.rules.get(*i) {
                        *period = period_of(rule.period, today).0;
                    }
                }
            }
        }
        let ok = self.answered.is_some_and(|s| (200..300).contains(&s));
        let app = meter.identities.get(self.identity).app;
        let (resources, prints, without) = if ok {
            self.metered_part()
        } else {
            (0, Vec::new(), 0)
        };
        let base = match self.price.unit {
            Unit::PerRequest if ok && !self.finished => {
                if self.url && self.price.url_micros > 0 {
                    self.price.url_micros
                } else {
                    self.price.micros
                }
            }
            _ => 0,
        };
        // A stream keeps its one-message reservation while it goes on.
        let release = if last { self.reserved } else { 0 };
        self.reserved -= release;
        // X answered: the request is counted once, and each part that billed something.
        let count = self.answered.is_some() && (!self.finished || resources > 0);
        let part = Part {
            app,
            day: self.day,
            prints,
            without,
            resources,
            base,
            unit_micros: if self.price.unit == Unit::PerResource {
                self.price.micros
            } else {
                0
            },
            release,
        };
        let snapshot = self.snapshot();
        self.finished |= self.answered.is_some();
        let budgets = self.budgets.clone();
        if let Some(shared) = meter
            .shared
            .as_ref()
            .filter(|_| part.touches_redis(&budgets))
        {
            let settling = Settling::begin(&meter);
            let app_name = &meter.identities.get(app).name;
            let fut = shared.settle(&meter.rules, &budgets, &part, app_name);
            return Tapped::Later(Box::pin(async move {
                let new = match fut.await {
                    Ok((new, figures)) => {
                        // A budget Redis lost keeps its last figure here.
                        let seen: Vec<(usize, Day)> = budgets
                            .iter()
                            .zip(&figures)
                            .filter(|(_, f)| f.is_some())
                            .map(|(b, _)| *b)
                            .collect();
                        let figures: Vec<u64> = figures.into_iter().flatten().collect();
                        meter.mirror(&seen, &figures);
                        meter.show_budgets(&seen, &figures);
                        new
                    }
                    Err(e) => {
                        tracing::debug!(error = %e, "settling through Redis failed; metered here, every resource as new");
                        let new = part.new_without_dedup();
                        let figures = meter.local.settle(
                            &meter.rules,
                            &budgets,
                            part.cost(new),
                            part.release,
                        );
                        meter.show_budgets(&budgets, &figures);
                        new
                    }
                };
                let new = new.min(part.resources);
                let cost = part.cost(new);
                if count {
                    meter.account(&snapshot, part.resources, new, cost);
                }
                drop(settling);
                snapshot.cost.fetch_add(cost, Ordering::AcqRel) + cost
            }));
        }
        let new = (meter.local.dedup(part.app, part.day, &part.prints) + part.without)
            .min(part.resources);
        let cost = part.cost(new);
        let figures = meter
            .local
            .settle(&meter.rules, &budgets, cost, part.release);
        meter.show_budgets(&budgets, &figures);
        if count {
            meter.account(&snapshot, part.resources, new, cost);
        }
        Tapped::Now(self.cost.fetch_add(cost, Ordering::AcqRel) + cost)
    }

    /// The fields [`Meter::account`] reads, for a settlement that finishes later.
    fn snapshot(&self) -> Self {
        Self {
            meter: Arc::clone(&self.meter),
            client: Arc::clone(&self.client),
            identity: self.identity,
            endpoint: self.endpoint,
            price: self.price,
            url: self.url,
            stream: self.stream,
            day: self.day,
            budgets: Vec::new(),
            reserved: 0,
            answered: None,
            scanner: None,
            billed: 0,
            cost: Arc::clone(&self.cost),
            finished: self.finished,
            done: true,
            learn_me: false,
        }
    }

    /// Whether every budget covering this request can pay its next message (a stream goes
    /// on): the figure holds the stream's one-message reservation, so it may reach the limit.
    fn budgets_have_room(&self) -> bool {
        self.budgets.iter().all(|&(i, period)| {
            self.meter
                .rules
                .get(i)
                .is_none_or(|rule| self.meter.local.used(i, period) <= rule.limit)
        })
    }
}

/// One settled part of a charge: what Redis or the local ledger needs.
#[derive(Debug, Clone)]
struct Part {
    app: IdentityId,
    day: Day,
    prints: Vec<u64>,
    without: u64,
    resources: u64,
    /// The per-request cost (a write answered 2xx).
    base: u64,
    /// The price per new resource.
    unit_micros: u64,
    /// The reservation given back.
    release: u64,
}

impl Part {
    /// The cost when `new` of its resources are new (never more than it has: an id whose
    /// resource was settled in an earlier part, a stream's message cut between chunks, is not
    /// billed twice).
    fn cost(&self, new: u64) -> u64 {
        self.base + new.min(self.resources) * self.unit_micros
    }

    fn new_without_dedup(&self) -> u64 {
        self.prints.len() as u64 + self.without
    }

    /// Whether settling needs Redis: resources to deduplicate, or budgets to settle.
    fn touches_redis(&self, budgets: &[(usize, Day)]) -> bool {
        !self.prints.is_empty() || !budgets.is_empty()
    }
}

/// Counts a settlement on its way to Redis, for [`Meter::close`].
struct Settling(Arc<Meter>);

impl Settling {
    fn begin(meter: &Arc<Meter>) -> Self {
        meter.settling.fetch_add(1, Ordering::AcqRel);
        Self(Arc::clone(meter))
    }
}

impl Drop for Settling {
    fn drop(&mut self) {
        if self.0.settling.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.0.settled.notify_waiters();
        }
    }
}

impl Tap for Charge {
    fn chunk(&mut self, chunk: &[u8]) -> bool {
        let Some(scanner) = self.scanner.as_mut() else {
            return true;
        };
        scanner.feed(chunk);
        if !self.stream || scanner.resources() == self.billed {
            return true;
        }
        // A stream bills each message as it is delivered.
        let figure = self.settle(false);
        if let Tapped::Later(fut) = figure {
            tokio::spawn(fut);
        }
        let room = self.budgets_have_room();
        if !room {
            tracing::info!(client = %self.client, "a budget covering this stream is spent: the stream is ended");
        }
        room
    }

    fn finish(mut self: Box<Self>) -> Tapped {
        let tapped = self.settle(true);
        self.done = true;
        tapped
    }
}

impl Drop for Charge {
    fn drop(&mut self) {
        if self.done || (self.answered.is_none() && self.reserved == 0) {
            return;
        }
        // Not metered through a body (X was not asked, or its answer never became one): what
        // is owed is settled — a write's price if X answered 2xx, else nothing — and the
        // reservation goes back.
        if let Tapped::Later(fut) = self.settle(true) {
            if let Ok(rt) = tokio::runtime::Handle::try_current() {
                rt.spawn(fut);
            }
        }
    }
}
