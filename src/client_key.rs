//! Client keys: the revocable keys applications present to xgate (`X-Xgate-Key`).
//!
//! Owns making a key (`xgate key new`) and hashing one. proxy.toml stores only the SHA-256
//! of a key, so the file never holds a usable credential for the proxy itself.

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use sha2::{Digest, Sha256};

use crate::clock::{RandomError, fill_random};
use crate::secret::SecretString;

/// Every key xgate makes starts with this, so a leaked one is easy to recognise and scan for.
pub const KEY_PREFIX: &str = "xgk_";

/// A fresh client key: `xgk_` and 32 bytes from the OS CSPRNG in URL-safe base64.
pub fn generate() -> Result<SecretString, RandomError> {
    let mut bytes = zeroize::Zeroizing::new([0u8; 32]);
    fill_random(bytes.as_mut())?;
    let mut key = String::with_capacity(KEY_PREFIX.len() + 43);
    key.push_str(KEY_PREFIX);
    URL_SAFE_NO_PAD.encode_string(bytes.as_ref(), &mut key);
    Ok(SecretString::new(key))
}

/// SHA-256 of the key's UTF-8 bytes.
pub fn sha256(key: &str) -> [u8; 32] {
    Sha256::digest(key.as_bytes()).into()
}

/// Lower-case hex of 32 bytes, as `key_sha256` is written.
pub fn to_hex(hash: &[u8; 32]) -> String {
    let mut out = String::with_capacity(64);
    for b in hash {
        out.push_str(&format!("{b:02x}"));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_keys_are_prefixed_random_and_hashable() {
        let a = generate().unwrap();
        let b = generate().unwrap();
        assert!(a.expose().starts_with(KEY_PREFIX));
        assert_eq!(a.expose().len(), KEY_PREFIX.len() + 43);
        assert_ne!(a.expose(), b.expose());
        let hex = to_hex(&sha256(a.expose()));
        assert_eq!(hex.len(), 64);
        assert_eq!(
            crate::config::parse_sha256_hex(&hex),
            Some(sha256(a.expose()))
        );
    }

    #[test]
    fn sha256_known_answer() {
        // SHA-256("abc"), FIPS 180-2 appendix B.1.
        assert_eq!(
            to_hex(&sha256("abc")),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }
}
