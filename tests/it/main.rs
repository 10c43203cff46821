//! xgate's integration tests: one binary (ripgrep's layout), one module per area.
//! The modules are `cfg(test)` so clippy's test exemptions (clippy.toml) apply to them.

#[cfg(test)]
mod cli;
#[cfg(test)]
mod support;
