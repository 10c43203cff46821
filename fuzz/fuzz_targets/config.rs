//! The `proxy.toml` loader on any text: a config or a list of problems, never a panic, and
//! never a problem message holding a secret value the environment gave it.
#![no_main]

use std::collections::BTreeMap;
use std::path::Path;

use libfuzzer_sys::fuzz_target;
use xgate::config::Config;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let env = BTreeMap::from([("X_BEARER_TOKEN", "fuzz-secret-value")]);
    match Config::from_toml_str(text, Path::new("/nonexistent"), &env) {
        Ok(_) => {}
        // The secret comes from the environment; only text the file itself holds (a key
        // name, say) may be named back.
        Err(e) if !text.contains("fuzz-secret-value") => {
            let shown = e.to_string();
            assert!(!shown.contains("fuzz-secret-value"), "{shown}");
        }
        Err(_) => {}
    }
});
