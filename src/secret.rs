//! Secret values: API secrets, tokens, client keys and the store's encryption key.
//!
//! Owns the one type that holds credential text, [`SecretString`], and the store key
//! [`StoreKey`]. Their `Debug` and `Display` print `[redacted]`, so a secret cannot reach a log
//! line, an error body or a metric through formatting; the bytes are zeroed when the value is
//! dropped. Code that really needs the text (the signer, the header builder) calls
//! [`SecretString::expose`], which is easy to grep for.

use std::fmt;

use zeroize::{Zeroize, ZeroizeOnDrop};

/// What every secret prints instead of its value.
pub const REDACTED: &str = "[redacted]";

/// A secret string. Its text is only reachable through [`SecretString::expose`].
#[derive(Clone, PartialEq, Eq, Zeroize, ZeroizeOnDrop)]
pub struct SecretString(String);

impl SecretString {
    /// Wraps `value`; the caller's copy moves in, so no unzeroed copy is left behind.
    pub fn new(value: String) -> Self {
        Self(value)
    }

    /// The secret text. Call it only where the value leaves for its one legitimate use.
    pub fn expose(&self) -> &str {
        &self.0
    }

    /// Whether the secret is the empty string.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl From<&str> for SecretString {
    fn from(value: &str) -> Self {
        Self(value.to_owned())
    }
}

impl fmt::Debug for SecretString {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(REDACTED)
    }
}

impl fmt::Display for SecretString {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(REDACTED)
    }
}

/// The token store's 256-bit encryption key (`store.encryption_key`).
#[derive(Clone, PartialEq, Eq, Zeroize, ZeroizeOnDrop)]
pub struct StoreKey([u8; 32]);

impl StoreKey {
    /// Wraps 32 key bytes.
    pub fn new(bytes: [u8; 32]) -> Self {
        Self(bytes)
    }

    /// The key bytes, for the cipher only.
    pub fn expose(&self) -> &[u8; 32] {
        &self.0
    }
}

impl fmt::Debug for StoreKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(REDACTED)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_and_display_redact() {
        let s = SecretString::from("hunter2");
        assert_eq!(format!("{s:?}"), "[redacted]");
        assert_eq!(format!("{s}"), "[redacted]");
        assert_eq!(format!("{:?}", Some(&s)), "Some([redacted])");
        assert_eq!(s.expose(), "hunter2");
        let k = StoreKey::new([7; 32]);
        assert_eq!(format!("{k:?}"), "[redacted]");
    }
}
