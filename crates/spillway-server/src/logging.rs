//! Structured logging through `tracing`, as text for people or JSON for collectors.
//!
//! Logs go to stdout (the container convention). The start-up line `listening on <addr>` is
//! an ordinary log event, so it appears in either format; tools that start the server on port
//! 0 read the chosen address from it.

use crate::cli::LogFormat;
use std::io::IsTerminal;
use tracing_subscriber::EnvFilter;

/// Installs the global subscriber. Fails on a filter that does not parse, or when a
/// subscriber is already installed.
pub fn init(format: LogFormat, filter: &str) -> Result<(), String> {
    let filter = EnvFilter::try_new(filter)
        .map_err(|err| format!("invalid log filter `{filter}`: {err}"))?;
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stdout)
        .with_ansi(std::io::stdout().is_terminal());
    let installed = match format {
        LogFormat::Text => builder.try_init(),
        LogFormat::Json => builder
            .json()
            .flatten_event(true)
            .with_current_span(false)
            .try_init(),
    };
    installed.map_err(|err| format!("cannot install the logger: {err}"))
}

/// For commands that print their own results on stdout (`spillway catalog`): warnings and
/// errors, as text on stderr, so that what the storage layer notices (rows it reads only in
/// part) reaches the user without mixing into the output. Does nothing if a subscriber is
/// already installed.
pub fn init_warnings_on_stderr() {
    let _ = tracing_subscriber::fmt()
        // Spillway's own, not a dependency's (sqlx's slow statements during an import).
        .with_env_filter(EnvFilter::new("spillway_catalog=warn,spillway_server=warn"))
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .without_time()
        .try_init();
}
