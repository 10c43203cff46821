//! `[costs]` and `[[budgets]]` (CONTRACT section 11).

use std::collections::BTreeMap;

use super::super::raw::{RawBudget, RawCostOverride, RawCosts};
use super::super::units::parse_usd;
use super::super::{
    App, Budget, BudgetScope, Client, CostOverride, Costs, DEDUP_MAX_IDS, Period, PriceUnit, User,
};
use super::Validator;

/// The highest price an override may set: a typo guard (X's dearest is 0.20 USD).
const MAX_OVERRIDE_USD: f64 = 1_000.0;

impl Validator<'_> {
    pub(super) fn costs(&mut self, raw: RawCosts, users: &BTreeMap<String, User>) -> Costs {
        let owned_reads = raw.owned_reads.unwrap_or_default();
        for (i, name) in owned_reads.iter().enumerate() {
            if !users.contains_key(name) {
                self.problem(
                    format!("costs.owned_reads[{i}]"),
                    format!("\"{name}\" is not a user identity ([users.{name}])"),
                );
            }
        }
        let dedup_max_ids = self.count("costs.dedup_max_ids", raw.dedup_max_ids, DEDUP_MAX_IDS, 0);
        let mut overrides: Vec<CostOverride> = Vec::new();
        for (i, o) in raw.overrides.into_iter().enumerate() {
            let Some(o) = self.cost_override(i, o) else {
                continue;
            };
            let earlier = overrides.iter().map(|p| &p.endpoint);
            if self.unique_endpoint("costs.override", i, &o.endpoint, earlier) {
                overrides.push(o);
            }
        }
        Costs {
            owned_reads,
            overrides,
            dedup_max_ids,
        }
    }

    fn cost_override(&mut self, i: usize, raw: RawCostOverride) -> Option<CostOverride> {
        let at = |key: &str| format!("costs.override[{i}].{key}");
        let endpoint = self.endpoint(at("endpoint"), raw.endpoint, "GET /2/tweets/search/recent");
        let (unit, usd, key) = match (raw.per_resource, raw.per_request) {
            (Some(usd), None) => (PriceUnit::PerResource, usd, "per_resource"),
            (None, Some(usd)) => (PriceUnit::PerRequest, usd, "per_request"),
            _ => {
                self.problem(
                    format!("costs.override[{i}]"),
                    "needs exactly one of per_resource or per_request (USD)",
                );
                return None;
            }
        };
        if !(0.0..=MAX_OVERRIDE_USD).contains(&usd) {
            self.problem(
                at(key),
                format!("must be between 0 and {MAX_OVERRIDE_USD} USD, got {usd}"),
            );
            return None;
        }
        // Whole micro-USD: X's prices have at most three decimals.
        let micros = (usd * 1_000_000.0).round() as u64;
        Some(CostOverride {
            endpoint: endpoint?,
            unit,
            micros,
        })
    }

    pub(super) fn budgets(
        &mut self,
        raw: Vec<RawBudget>,
        apps: &BTreeMap<String, App>,
        users: &BTreeMap<String, User>,
        clients: &[Client],
    ) -> Vec<Budget> {
        let mut out: Vec<Budget> = Vec::with_capacity(raw.len());
        let mut names: Vec<Option<String>> = Vec::with_capacity(raw.len());
        for (i, b) in raw.into_iter().enumerate() {
            names.push(b.name.clone());
            let at = |key: &str| format!("budgets[{i}].{key}");
            let Some(name) = b.name else {
                self.problem(at("name"), "missing");
                continue;
            };
            self.name(&at("name"), &name);
            if let Some(j) = names
                .iter()
                .position(|n| n.as_deref() == Some(&*name))
                .filter(|&j| j < i)
            {
                self.problem(
                    at("name"),
                    format!("\"{name}\" is also budgets[{j}]'s name"),
                );
            }
            let scope = match (b.client, b.identity, b.app) {
                (Some(c), None, None) => {
                    if !clients.iter().any(|k| k.name == c) {
                        self.problem(at("client"), format!("no [[clients]] is named \"{c}\""));
                    }
                    BudgetScope::Client(c)
                }
                (None, Some(id), None) => {
                    if !apps.contains_key(&id) && !users.contains_key(&id) {
                        self.problem(at("identity"), format!("no identity is named \"{id}\""));
                    }
                    BudgetScope::Identity(id)
                }
                (None, None, Some(app)) => {
                    if !apps.contains_key(&app) {
                        self.problem(at("app"), format!("no [apps.{app}]"));
                    }
                    BudgetScope::App(app)
                }
                _ => {
                    self.problem(
                        format!("budgets[{i}]"),
                        "needs exactly one of client, identity or app",
                    );
                    continue;
                }
            };
            let Some(limit) = b.limit else {
                self.problem(
                    at("limit"),
                    r#"missing: e.g. "25.00/1d" or "500/1mo" (USD)"#,
                );
                continue;
            };
            let (amount, period) = match limit.rsplit_once('/') {
                Some((a, "1d")) => (a, Period::Day),
                Some((a, "1mo")) => (a, Period::Month),
                _ => {
                    self.problem(
                        at("limit"),
                        format!(r#"invalid "{limit}": expected USD per "/1d" (UTC day) or "/1mo" (calendar month), e.g. "25.00/1d""#),
                    );
                    continue;
                }
            };
            match parse_usd(amount) {
                Ok(0) => self.problem(at("limit"), "must be more than 0 USD"),
                Ok(limit_micros) => out.push(Budget {
                    name,
                    scope,
                    limit_micros,
                    period,
                }),
                Err(e) => self.problem(at("limit"), e),
            }
        }
        out
    }
}
