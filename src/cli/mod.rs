//! The command line (CONTRACT section 1): flags, commands and exit codes.
//!
//! Owns argument parsing (clap) and turning each command's outcome into an exit status:
//! 0 success, 1 runtime failure, 2 usage or configuration error. Commands write their output
//! to the writers they are given, so tests can read it; nothing here prints a secret except
//! the one deliberate case, `xgate key new` showing the key it just made.

mod check;
mod key;
mod login;
mod serve;
mod sign;
mod usage;

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};

use crate::config::{Config, ConfigError, Env, ProcessEnv};
use crate::server::StartError;
use crate::store::StoreError;
use crate::telemetry::{self, LogFormat};

/// xgate: an authenticating reverse proxy for the X API v2.
///
/// Applications send xgate plain HTTP requests; xgate picks the identity each one acts as
/// (an App or a user of it), attaches that identity's credentials (Bearer, OAuth 1.0a or
/// OAuth 2.0), enforces X's rate limits locally and forwards it to api.x.com.
///
/// Start with `xgate check` to validate proxy.toml, then `xgate key new` to make a key for each
/// application that will call the proxy.
#[derive(Debug, Parser)]
#[command(name = "xgate", version, propagate_version = true)]
pub struct Cli {
    /// Path to the configuration file.
    #[arg(
        long,
        global = true,
        env = "XGATE_CONFIG",
        default_value = "proxy.toml",
        value_name = "PATH"
    )]
    pub config: PathBuf,

    /// Log output format (logs go to stderr; level from XGATE_LOG or RUST_LOG, default info).
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Text, value_name = "FORMAT")]
    pub log_format: LogFormat,

    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// The commands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the proxy and its admin listener until SIGTERM or SIGINT.
    ///
    /// Listens on server.listen (the proxy) and admin.listen (/healthz, /readyz). On SIGTERM
    /// or SIGINT, /readyz turns 503, the listener stops accepting, and in-flight requests get
    /// server.shutdown_grace to finish; then the process exits 0.
    Serve,

    /// Validate proxy.toml, resolve every secret, and print a summary without secret values.
    ///
    /// Exit 0 when the configuration is valid (warnings go to stderr), 2 with one line per
    /// problem, each naming its key path. Never creates the token store.
    Check,

    /// Print the Authorization header value xgate would attach to a request.
    ///
    /// A debugging aid like twurl's: compare it with what X expects. URL is a full URL or a
    /// path such as `/2/tweets?ids=20`, which is joined to upstream.base_url. OAuth 1.0a
    /// headers are printed whole; a Bearer value only with --reveal.
    Sign(SignArgs),

    /// Manage client keys.
    #[command(subcommand)]
    Key(KeyCommand),

    /// Log a user identity in: OAuth 2.0 Authorization Code with PKCE (or --oauth1).
    ///
    /// Prints the authorize URL alone on one line; open it in a browser and approve. xgate
    /// listens once on the App's oauth2_redirect_uri for the redirect (or, with --no-listen,
    /// reads the redirected URL on stdin), checks state, exchanges the code at
    /// {upstream.base_url}/2/oauth2/token and stores the tokens in the token store.
    Login(LoginArgs),

    /// Obtain the App's app-only Bearer token and store it (or invalidate it).
    ///
    /// POST {upstream.base_url}/oauth2/token with grant_type=client_credentials and the App's
    /// consumer key and secret. The stored token is used when apps.APP.bearer_token is not set.
    Bearer(BearerArgs),

    /// Print the metered spend kept in the token store (an estimate of X's bill).
    ///
    /// A table of requests, billable resources, repeats (resources already metered that UTC
    /// day for the App: X bills them once), Posts read and cost in USD, by client, identity or
    /// endpoint, for the UTC days --from to --to (default: today). --reconcile also asks X's
    /// GET /2/usage/tweets with the App's Bearer and prints X's daily Post count beside
    /// xgate's, with the difference.
    Usage(UsageArgs),
}

/// `xgate usage`.
#[derive(Debug, Args)]
pub struct UsageArgs {
    /// First UTC day (YYYY-MM-DD; default today).
    #[arg(long, value_name = "DATE")]
    pub from: Option<String>,

    /// Last UTC day (YYYY-MM-DD; default today).
    #[arg(long, value_name = "DATE")]
    pub to: Option<String>,

    /// What each line of the table is.
    #[arg(long, value_enum, default_value_t = UsageBy::Client)]
    pub by: UsageBy,

    /// One JSON document instead of the table.
    #[arg(long)]
    pub json: bool,

    /// Also print X's daily Post consumption (GET /2/usage/tweets) beside xgate's count.
    #[arg(long)]
    pub reconcile: bool,

    /// The App whose Bearer asks X (--reconcile; default: the only App).
    #[arg(long, value_name = "APP")]
    pub app: Option<String>,
}

/// `xgate usage --by`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum UsageBy {
    /// One line per client.
    Client,
    /// One line per identity.
    Identity,
    /// One line per endpoint.
    Endpoint,
}

impl UsageBy {
    /// The flag's value.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Client => "client",
            Self::Identity => "identity",
            Self::Endpoint => "endpoint",
        }
    }
}

/// `xgate login`.
#[derive(Debug, Args)]
pub struct LoginArgs {
    /// The user identity (a [users] name) to log in.
    #[arg(long, value_name = "ID")]
    pub identity: String,

    /// Read the redirected URL from stdin instead of listening on the redirect URI.
    #[arg(long, conflicts_with = "oauth1")]
    pub no_listen: bool,

    /// 3-legged OAuth 1.0a with a PIN (oauth_callback=oob) for an auth = "oauth1" user:
    /// prints the authorize URL, reads the PIN on stdin, stores the access token and secret.
    #[arg(long)]
    pub oauth1: bool,
}

/// `xgate bearer`.
#[derive(Debug, Args)]
pub struct BearerArgs {
    /// The App (an [apps] name).
    #[arg(long, value_name = "APP")]
    pub app: String,

    /// Invalidate the stored token at X and forget it.
    #[arg(long)]
    pub invalidate: bool,
}

/// `xgate sign`.
#[derive(Debug, Args)]
pub struct SignArgs {
    /// The identity (an [apps] or [users] name) to sign as.
    #[arg(long, value_name = "ID")]
    pub identity: String,

    /// A form-body parameter (application/x-www-form-urlencoded); repeat for several.
    #[arg(long = "form", value_name = "K=V")]
    pub form: Vec<String>,

    /// Use this oauth_nonce instead of a random one (to reproduce a signature).
    #[arg(long, value_name = "N")]
    pub nonce: Option<String>,

    /// Use this oauth_timestamp (Unix seconds) instead of the clock.
    #[arg(long, value_name = "T")]
    pub timestamp: Option<u64>,

    /// Show a Bearer token instead of `Bearer [redacted]`.
    #[arg(long)]
    pub reveal: bool,

    /// HTTP method, e.g. GET or POST.
    #[arg(value_name = "METHOD")]
    pub method: String,

    /// Full URL, or a path joined to upstream.base_url.
    #[arg(value_name = "URL")]
    pub url: String,
}

/// `xgate key ...`.
#[derive(Debug, Subcommand)]
pub enum KeyCommand {
    /// Make a new random client key and print it once, with its [[clients]] snippet.
    ///
    /// proxy.toml keeps only the key's SHA-256; the key itself is shown only now.
    New {
        /// The client's name in the snippet (used in logs and metrics).
        #[arg(long, default_value = "my-service", value_name = "NAME")]
        name: String,
    },
}

/// How a command failed, which decides the exit status.
#[derive(Debug, thiserror::Error)]
pub enum CliError {
    /// The configuration is invalid: exit 2, one line per problem.
    #[error("{0}")]
    Config(#[from] ConfigError),
    /// The command line is wrong: exit 2.
    #[error("{0}")]
    Usage(String),
    /// The proxy could not start (exit 2 when the configuration is at fault, else 1).
    #[error(transparent)]
    Start(#[from] StartError),
    /// The token store failed (exit 2 for a wrong `store.encryption_key`, else 1).
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The command's output could not be written (a closed pipe): exit 1.
    #[error("cannot write output: {0}")]
    Output(#[source] std::io::Error),
    /// The async runtime could not start: exit 1.
    #[error("cannot start the async runtime: {0}")]
    AsyncRuntime(#[source] std::io::Error),
    /// A login or token exchange with X failed: exit 1.
    #[error(transparent)]
    Login(#[from] login::LoginError),
    /// The identity has no credential to show (`sign`): exit 1.
    #[error("identity {identity} has no credentials: {hint}")]
    NoCredentials {
        /// The identity.
        identity: String,
        /// What the operator should do.
        hint: String,
    },
    /// The OS random source failed (a nonce, a key): exit 1.
    #[error(transparent)]
    Random(#[from] crate::clock::RandomError),
    /// The built-in endpoint catalogue could not be built: exit 1.
    #[error(transparent)]
    Catalogue(#[from] crate::endpoints::CatalogueError),
    /// A configured shared engine does not answer (`check`): exit 2.
    #[error("unreachable: {0}")]
    Unreachable(String),
}

impl CliError {
    /// The exit status for this failure (CONTRACT section 1).
    pub fn exit_code(&self) -> u8 {
        let config = match self {
            Self::Config(_) | Self::Usage(_) | Self::Unreachable(_) => true,
            Self::Start(e) => e.is_config(),
            Self::Store(e) => e.is_config(),
            Self::Output(_)
            | Self::AsyncRuntime(_)
            | Self::Login(_)
            | Self::NoCredentials { .. }
            | Self::Random(_)
            | Self::Catalogue(_) => false,
        };
        if config { 2 } else { 1 }
    }
}

/// A single-threaded runtime for a command that talks to X or to the store.
pub(crate) fn runtime() -> Result<tokio::runtime::Runtime, CliError> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(CliError::AsyncRuntime)
}

/// Runs a parsed command line and returns the process exit status.
pub fn run(cli: &Cli) -> ExitCode {
    let env = ProcessEnv;
    let filter = match telemetry::filter_from(
        env.var("XGATE_LOG").as_deref(),
        env.var("RUST_LOG").as_deref(),
    ) {
        Ok(f) => f,
        Err(e) => return report(&CliError::Usage(e)),
    };
    let log_guard = telemetry::init(cli.log_format, filter);
    // Unlocked handles: `serve` logs to stderr from every worker thread, and a lock held
    // here for the whole command would block them all.
    let mut out = std::io::stdout();
    let mut err = std::io::stderr();
    let result = execute(cli, &env, &mut out, &mut err);
    // Queued log lines go out before the final error line.
    drop(log_guard);
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => report(&e),
    }
}

/// Runs `cli` with its output going to `out` (results) and `err` (warnings).
pub fn execute(
    cli: &Cli,
    env: &dyn Env,
    out: &mut dyn Write,
    err: &mut dyn Write,
) -> Result<(), CliError> {
    match &cli.command {
        Command::Serve => serve::run(load(cli, env)?),
        Command::Check => check::run(&load(cli, env)?, out, err),
        Command::Sign(args) => sign::run(&load(cli, env)?, args, out),
        Command::Key(KeyCommand::New { name }) => key::new(name, out),
        Command::Login(args) if args.oauth1 => login::oauth1(
            &load(cli, env)?,
            &args.identity,
            &mut std::io::stdin().lock(),
            out,
            err,
        ),
        Command::Login(args) => login::oauth2(
            &load(cli, env)?,
            &args.identity,
            args.no_listen,
            &mut std::io::stdin().lock(),
            out,
        ),
        Command::Bearer(args) => login::bearer(&load(cli, env)?, &args.app, args.invalidate, out),
        Command::Usage(args) => usage::run(&load(cli, env)?, args, out),
    }
}

fn load(cli: &Cli, env: &dyn Env) -> Result<Config, CliError> {
    Ok(Config::load(&cli.config, env)?)
}

fn report(e: &CliError) -> ExitCode {
    let mut err = std::io::stderr().lock();
    // Each problem on its own line, as CONTRACT section 1 shows them.
    let _ignored = writeln!(err, "{e}");
    ExitCode::from(e.exit_code())
}

/// Maps an I/O failure on stdout/stderr (a closed pipe) to a runtime error.
pub(crate) fn io_error(e: &std::io::Error) -> CliError {
    CliError::Output(std::io::Error::new(e.kind(), e.to_string()))
}
