//! xgate: an authenticating reverse proxy for the X API v2.
//!
//! Applications send xgate plain, unsigned HTTP requests; xgate picks the identity each one
//! acts as, attaches that identity's credentials and forwards it to `api.x.com`.
//! See ARCHITECTURE.md for the map of modules and the path of a request.
//!
//! - [`config`]: `proxy.toml` parsed and validated into a [`config::Config`].
//! - [`auth`]: outbound credentials (the OAuth 1.0a signer).
//! - [`secret`]: the redacting secret types.
//! - [`clock`]: injected time and randomness.
//! - [`client_key`]: client keys (`xgate key new`) and their hashes.
//! - [`cli`]: the command line and its commands.
//! - [`telemetry`]: log setup.

pub mod auth;
pub mod cli;
pub mod client_key;
pub mod clock;
pub mod config;
pub mod secret;
pub mod telemetry;
