//! Log output of both daemons, set up one way: to stderr, filtered by an environment variable
//! (`info` when unset), as text lines (colours only on a terminal, so journald gets plain
//! text) or, with `--log-format json`, one JSON object a line.

/// Installs the process's log subscriber; a second call does nothing.
pub fn init(filter_env: &str, json: bool, with_target: bool) {
    let filter = tracing_subscriber::EnvFilter::try_from_env(filter_env)
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_target(with_target);
    let _ = if json {
        builder.json().flatten_event(true).try_init()
    } else {
        builder
            .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
            .try_init()
    };
}
