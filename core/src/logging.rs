//! Logging for every binary: tracing to stderr, filtered by `RUST_LOG`, with
//! colour codes only when stderr is a terminal (a log file or a pipe gets
//! plain text).

use std::io::IsTerminal;

use tracing_subscriber::EnvFilter;

/// Installs the global subscriber. `default_filter` (e.g. `"payment_service=info"`)
/// applies when `RUST_LOG` is unset or unreadable. A second call is a no-op, so
/// libraries and tests may call it freely.
pub fn init(default_filter: &str) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default_filter));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .try_init();
}
