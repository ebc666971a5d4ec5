//! The gateways' log: `RUST_LOG` filters it (`info` by default), and colour
//! codes are written only to a terminal, so that a log redirected to a file or
//! a collector reads as plain text.

use std::io::IsTerminal;

/// Installs the process's log subscriber, writing to stdout beside the
/// gateway's own start and stop lines.
pub fn init() {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .with_ansi(std::io::stdout().is_terminal())
        .init();
}
