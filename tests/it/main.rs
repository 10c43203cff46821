//! xgate's integration tests: one binary (ripgrep's layout), one module per area.
//! The modules are `cfg(test)` so clippy's test exemptions (clippy.toml) apply to them.
//! Every test talks to FakeX (`support::fake_x`) on 127.0.0.1; nothing reaches the internet.

#![expect(
    unreachable_pub,
    reason = "helpers in `support` are shared by the modules of this one test binary"
)]

#[cfg(test)]
mod architecture;
#[cfg(test)]
mod cli;
#[cfg(test)]
mod costs;
#[cfg(test)]
mod hardening;
#[cfg(test)]
mod observability;
#[cfg(test)]
mod proxy_auth;
#[cfg(test)]
mod proxy_inbound;
#[cfg(test)]
mod proxy_lifecycle;
#[cfg(test)]
mod proxy_limits;
#[cfg(test)]
mod proxy_oauth2;
#[cfg(test)]
mod proxy_upstream;
#[cfg(test)]
mod sdk_docs;
#[cfg(test)]
mod shared_postgres;
#[cfg(test)]
mod shared_redis;
#[cfg(test)]
mod store_faults;
#[cfg(test)]
mod streams;
#[cfg(test)]
mod support;
