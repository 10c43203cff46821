//! Budgets and deduplication in Redis (`[shared]`): every replica reserves from, settles into
//! and deduplicates against the same figures.
//!
//! Two Lua scripts, each one round trip: `reserve` checks every budget of a request and
//! reserves its worst case in all of them or none; `settle` deduplicates the answer's ids
//! against the App's set of the day (`SISMEMBER`, `SADD` while under `costs.dedup_max_ids`),
//! computes the cost and moves every budget's figure by cost minus reservation. Keys share
//! one Redis Cluster hash tag, `{budgets}`, so a script's keys are in one slot:
//! `PREFIX{budgets}:budget:NAME:YYYY-MM-DD` (the first day of the budget's period) and
//! `PREFIX{budgets}:seen:APP:YYYY-MM-DD`; a budget key expires a day after its period, a
//! seen set an hour after its day. Redis's set costs about 60 bytes per id (60 MB per
//! million). A replica that dies with requests in flight leaves their reservations counted
//! until the period ends: budgets err towards refusing, never towards overspending.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use ::redis::Script;
use ::redis::aio::ConnectionManager;

use super::ledger::Reserved;
use super::{Day, Part, Rule, period_of};
use crate::clock::date_of_days;
use crate::config::{OnFailure, Period, Shared};
use crate::shared::{Engine, Observer};

const RESERVE: &str = r"
-- KEYS: the budgets' keys. ARGV[1]: the worst case; then per key its limit, its TTL (ms) and
-- the figure to start from when the key is missing (Redis lost it: the caller's last known).
local worst = tonumber(ARGV[1])
for i, k in ipairs(KEYS) do
  if redis.call('EXISTS', k) == 0 then
    redis.call('SET', k, ARGV[3 * i + 1], 'PX', ARGV[3 * i])
  end
  local v = tonumber(redis.call('GET', k) or '0')
  if v + worst > tonumber(ARGV[3 * i - 1]) then return {i, v} end
end
local out = {0}
for i, k in ipairs(KEYS) do
  out[i + 1] = redis.call('INCRBY', k, worst)
  redis.call('PEXPIRE', k, ARGV[3 * i])
end
return out
";

const SETTLE: &str = r"
-- KEYS[1]: the App's seen set of the day; KEYS[2..]: the budgets' keys.
-- ARGV: max ids, seen TTL (ms), base cost, price per new resource, reservation given back,
-- resources without an id; then per budget key its TTL (ms); then the fingerprints.
local max = tonumber(ARGV[1])
local new = tonumber(ARGV[6])
local first = 7 + #KEYS - 1
if #ARGV >= first then
  local size = redis.call('SCARD', KEYS[1])
  for j = first, #ARGV do
    if redis.call('SISMEMBER', KEYS[1], ARGV[j]) == 0 then
      new = new + 1
      if size < max then
        redis.call('SADD', KEYS[1], ARGV[j])
        size = size + 1
      end
    end
  end
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
local delta = tonumber(ARGV[3]) + new * tonumber(ARGV[4]) - tonumber(ARGV[5])
local out = {new}
for i = 2, #KEYS do
  -- A budget Redis lost is not made again from this settlement alone (-1): the next
  -- reservation seeds it from the last figure a replica saw.
  local v = -1
  if redis.call('EXISTS', KEYS[i]) == 1 then
    v = redis.call('INCRBY', KEYS[i], delta)
    if v < 0 then
      redis.call('SET', KEYS[i], 0, 'KEEPTTL')
      v = 0
    end
    redis.call('PEXPIRE', KEYS[i], ARGV[5 + i])
  end
  out[i] = v
end
return out
";

/// Budgets and deduplication shared by replicas.
pub(super) struct SharedLedger {
    conn: ConnectionManager,
    reserve: Script,
    settle: Script,
    prefix: String,
    timeout: Duration,
    on_failure: OnFailure,
    max_ids: usize,
    observer: Arc<dyn Observer>,
}

impl std::fmt::Debug for SharedLedger {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SharedLedger")
            .field("prefix", &self.prefix)
            .finish_non_exhaustive()
    }
}

/// How long a budget key lives past its period.
const BUDGET_LINGER_MS: u64 = 86_400_000;
/// How long a seen set lives past its day.
const SEEN_LINGER_MS: u64 = 3_600_000;

fn unix_ms() -> u64 {
    crate::clock::Clock::unix_time(&crate::clock::SystemClock)
        .as_millis()
        .try_into()
        .unwrap_or(u64::MAX)
}

/// Milliseconds from now until `end_ms` plus `linger`, at least one second.
fn ttl_ms(end_ms: u64, linger: u64) -> u64 {
    (end_ms + linger).saturating_sub(unix_ms()).max(1000)
}

impl SharedLedger {
    /// The ledger on `shared`'s Redis (connected lazily).
    pub(super) fn new(
        shared: &Shared,
        max_ids: usize,
        observer: Arc<dyn Observer>,
    ) -> Result<Self, String> {
        Ok(Self {
            conn: crate::limits::redis::connect(shared)?,
            reserve: Script::new(RESERVE),
            settle: Script::new(SETTLE),
            prefix: shared.key_prefix.clone(),
            timeout: shared.timeout,
            on_failure: shared.on_failure,
            max_ids,
            observer,
        })
    }

    /// Runs a script invocation within `shared.timeout`, observed as `op`.
    async fn run(
        &self,
        op: &'static str,
        call: &::redis::ScriptInvocation<'_>,
    ) -> Result<Vec<i64>, String> {
        let mut conn = self.conn.clone();
        let started = tokio::time::Instant::now();
        let answer = tokio::time::timeout(self.timeout, call.invoke_async::<Vec<i64>>(&mut conn))
            .await
            .map_err(|_elapsed| format!("no answer within {:?}", self.timeout))
            .and_then(|r| r.map_err(|e| e.to_string()));
        self.observer
            .op(Engine::Redis, op, started.elapsed(), answer.is_ok());
        answer
    }

    /// `shared.on_failure`.
    pub(super) fn on_failure(&self) -> OnFailure {
        self.on_failure
    }

    fn budget_key(&self, name: &str, period: Day) -> String {
        format!(
            "{}{{budgets}}:budget:{name}:{}",
            self.prefix,
            date_of_days(period)
        )
    }

    fn seen_key(&self, app: &str, day: Day) -> String {
        format!(
            "{}{{budgets}}:seen:{app}:{}",
            self.prefix,
            date_of_days(day)
        )
    }

    /// Sets budget `name`'s figure for the period starting `period` to `spent` unless Redis
    /// has one (another replica's, which includes what is in flight there).
    pub(super) async fn seed(&self, name: &str, period: Day, spent: u64, kind: Period) {
        let (_, end_ms) = period_of(kind, period);
        let mut cmd = ::redis::cmd("SET");
        cmd.arg(self.budget_key(name, period))
            .arg(spent)
            .arg("NX")
            .arg("PX")
            .arg(ttl_ms(end_ms, BUDGET_LINGER_MS));
        let mut conn = self.conn.clone();
        let started = tokio::time::Instant::now();
        let result = tokio::time::timeout(self.timeout, cmd.query_async::<()>(&mut conn)).await;
        let ok = matches!(result, Ok(Ok(())));
        self.observer
            .op(Engine::Redis, "budget_seed", started.elapsed(), ok);
        if !ok {
            tracing::warn!(
                budget = name,
                "could not seed the budget in Redis; the first replica to reach it sets it"
            );
        }
    }

    /// Reserves `worst` in every budget of `budgets`, or in none; a budget Redis has lost
    /// starts again from `seed(index, period)`, the caller's last known figure.
    pub(super) async fn reserve(
        &self,
        rules: &[Rule],
        budgets: &[(usize, Day)],
        worst: u64,
        seed: impl Fn(usize, Day) -> u64,
    ) -> Result<Reserved, String> {
        let mut call = self.reserve.prepare_invoke();
        call.arg(worst);
        for &(i, period) in budgets {
            let Some(rule) = rules.get(i) else { continue };
            let (_, end_ms) = period_of(rule.period, period);
            call.key(self.budget_key(&rule.name, period));
            call.arg(rule.limit)
                .arg(ttl_ms(end_ms, BUDGET_LINGER_MS))
                .arg(seed(i, period));
        }
        let answer = self.run("budget_reserve", &call).await?;
        match answer.as_slice() {
            [0, figures @ ..] => Ok(Reserved::Ok(
                figures
                    .iter()
                    .map(|&v| u64::try_from(v).unwrap_or(0))
                    .collect(),
            )),
            [i, used] => {
                let index = usize::try_from(*i).unwrap_or(1).saturating_sub(1);
                let budget = budgets.get(index).map_or(0, |b| b.0);
                Ok(Reserved::Refused {
                    budget,
                    used: u64::try_from(*used).unwrap_or(0),
                })
            }
            other => Err(format!(
                "unexpected answer from the reserve script: {other:?}"
            )),
        }
    }

    /// Deduplicates and settles `part` in every budget of `budgets`: how many of its
    /// resources were new, and the budgets' figures after (`None` for a budget Redis lost).
    pub(super) fn settle(
        self: &Arc<Self>,
        rules: &[Rule],
        budgets: &[(usize, Day)],
        part: &Part,
        app: &str,
    ) -> impl Future<Output = Result<(u64, Vec<Option<u64>>), String>> + Send + 'static {
        let (_, day_end) = period_of(Period::Day, part.day);
        let mut keys = vec![self.seen_key(app, part.day)];
        let mut args: Vec<u64> = vec![
            u64::try_from(self.max_ids).unwrap_or(u64::MAX),
            ttl_ms(day_end, SEEN_LINGER_MS),
            part.base,
            part.unit_micros,
            part.release,
            part.without,
        ];
        for &(i, period) in budgets {
            let Some(rule) = rules.get(i) else { continue };
            let (_, end_ms) = period_of(rule.period, period);
            keys.push(self.budget_key(&rule.name, period));
            args.push(ttl_ms(end_ms, BUDGET_LINGER_MS));
        }
        args.extend(&part.prints);
        let this = Arc::clone(self);
        async move {
            let mut call = this.settle.prepare_invoke();
            for k in &keys {
                call.key(k);
            }
            for a in &args {
                call.arg(a);
            }
            let answer = this.run("budget_settle", &call).await?;
            let (new, figures) = answer
                .split_first()
                .ok_or_else(|| "empty answer from the settle script".to_owned())?;
            let figures = figures.iter().map(|&v| u64::try_from(v).ok()).collect();
            Ok((u64::try_from(*new).unwrap_or(0), figures))
        }
    }
}
