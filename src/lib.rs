//! xgate: an authenticating reverse proxy for the X API v2.
//!
//! Applications send xgate plain, unsigned HTTP requests; xgate picks the identity each one
//! acts as, attaches that identity's credentials and forwards it to `api.x.com`.
//! See ARCHITECTURE.md for the map of modules and the path of a request.
//!
//! - [`server`]: [`server::run`], listeners, connections, shutdown; [`admin`]: health.
//! - [`stack`], [`proxy`]: the service for a connection and the phases of a request.
//! - [`inbound`], [`client_auth`], [`headers`], [`body`], [`upstream`]: the rules of each
//!   phase; [`error`]: every failure and its one mapping to a response.
//! - [`config`]: `proxy.toml` parsed and validated into a [`config::Config`].
//! - [`auth`]: outbound credentials (Bearer, the OAuth 1.0a signer, clock skew).
//! - [`limits`]: X's rate limits: the endpoint catalogue, buckets, the auth pre-check.
//! - [`metering`], [`costs`]: what X's answers bill, budgets, the spend kept in the store.
//! - [`streams`]: one connection to an X stream per App shared by many consumers, and the
//!   clients' own filtered-stream rules.
//! - [`metrics`]: the Prometheus metrics of a running proxy.
//! - [`secret`]: the redacting secret types.
//! - [`store`]: the token store (SQLite, optionally encrypted).
//! - [`clock`]: injected time and randomness; [`digits`]: decimal digits without `fmt`.
//! - [`client_key`]: client keys (`xgate key new`) and their hashes.
//! - [`cli`]: the command line and its commands.
//! - [`telemetry`]: log setup.

pub mod admin;
pub mod auth;
pub mod body;
pub mod cli;
pub mod client_auth;
pub mod client_key;
pub mod clock;
pub mod config;
pub mod costs;
pub mod digits;
pub mod endpoints;
pub mod error;
pub mod forward;
pub mod headers;
pub mod identity;
pub mod inbound;
pub mod limits;
pub mod metering;
pub mod metrics;
pub mod proxy;
pub mod secret;
pub mod server;
pub mod service;
pub mod shared;
pub mod stack;
pub mod state;
pub mod store;
pub mod streams;
pub mod telemetry;
pub mod upstream;
