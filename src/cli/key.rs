//! `xgate key new`: a fresh client key and its `[[clients]]` snippet.

use std::io::Write;

use super::{CliError, io_error};
use crate::client_key;

pub(super) fn new(name: &str, out: &mut dyn Write) -> Result<(), CliError> {
    if !crate::config::is_valid_name(name) {
        return Err(CliError::Usage(format!(
            "--name {name:?}: use 1 to 64 of A-Z a-z 0-9 _ . - starting with a letter or digit"
        )));
    }
    let key = client_key::generate()?;
    let hash = client_key::to_hex(&client_key::sha256(key.expose()));
    // The one place xgate prints a credential: the key it has just made, once.
    write!(
        out,
        "\
# Client key for \"{name}\". It is shown only now: hand it to the client and keep it secret.
# Clients send it as `X-Xgate-Key: <key>` or `Authorization: Bearer <key>`.
{key}

# Add this to proxy.toml (it holds only the key's SHA-256), then set its identities:
[[clients]]
name = \"{name}\"
key_sha256 = \"{hash}\"
identities = [\"main\"]        # the [apps]/[users] names this client may act as
default_identity = \"main\"    # used when a request has no X-Xgate-Identity header
",
        key = key.expose()
    )
    .map_err(|e| io_error(&e))
}
