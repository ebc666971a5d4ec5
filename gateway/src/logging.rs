//! The gateways' log: `RUST_LOG` filters it (`info` by default), and colour
//! codes are written only to a terminal, so that a log redirected to a file or
//! a collector reads as plain text.

use std::io::IsTerminal;

/// Installs the process's log subscriber, writing to stdout beside the
/// gateway's own start and stop lines.
pub fn init() {
    init_with(&[]);
}

/// [`init`], with the log targets in `always` written at INFO whatever
/// `RUST_LOG` says: logs a flag asked for, such as the access log.
pub fn init_with(always: &[&str]) {
    let mut filter =
        tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into());
    for target in always {
        match format!("{target}=info").parse() {
            Ok(directive) => filter = filter.add_directive(directive),
            Err(error) => eprintln!("cannot enable the log target {target}: {error}"),
        }
    }
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::stdout().is_terminal())
        .init();
}
