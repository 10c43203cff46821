//! Outbound credentials: what xgate attaches to a request before it goes upstream.
//!
//! Owns the credential schemes of CONTRACT section 4. Today: the OAuth 1.0a signer
//! ([`oauth1`]). Only this module and `config` ever read secret values.

pub mod oauth1;
