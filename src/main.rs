//! The `xgate` binary: parses the command line and hands it to the library.

use std::process::ExitCode;

use clap::Parser as _;

/// mimalloc gives most of the memory of a connection spike back to the system, where glibc's
/// malloc keeps it, and costs less CPU per request (BENCHMARKS.md, "Allocator").
#[cfg(feature = "mimalloc")]
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    // Transparent huge pages off for this process (mimalloc's own `allow_thp = 0`): where the
    // system sets them to "always", khugepaged collapses the ranges mimalloc gave back into
    // huge pages again, and RSS creeps up while the proxy is idle. Without it, nothing breaks.
    #[cfg(all(feature = "mimalloc", target_os = "linux"))]
    let _thp_unchanged_on_error = nix::sys::prctl::set_thp_disable(true);
    xgate::cli::run(&xgate::cli::Cli::parse())
}
