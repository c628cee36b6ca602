//! Structured logging setup (`tracing`), text or JSON.

use tracing_subscriber::EnvFilter;

use crate::RuntimeError;
use crate::config::{LogArgs, LogFormat};

/// Installs the global subscriber and logs the first line: which binary, version and commit
/// starts. Call once, from `main`.
pub fn init(args: &LogArgs, binary: &str) -> Result<(), RuntimeError> {
    let filter = EnvFilter::try_new(&args.filter).map_err(|source| RuntimeError::LogFilter {
        filter: args.filter.clone(),
        source,
    })?;
    // Colour codes only for a terminal: a log file or a pipeline gets plain text.
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(ansi)
        .with_writer(std::io::stderr);
    let result = if args.format == LogFormat::Json {
        builder.json().flatten_event(true).try_init()
    } else {
        builder.try_init()
    };
    result.map_err(RuntimeError::Telemetry)?;
    tracing::info!(
        binary,
        version = crate::build_info::VERSION,
        commit = crate::build_info::COMMIT,
        "starting"
    );
    Ok(())
}
