//! The configuration file: TOML parsed into typed structs (unknown keys rejected, one-word
//! values as enums), then validated in one pass that also builds the runtime pieces the
//! crates take. Every error names `file:line:column`, what is wrong and what is expected.
//! `pachgate check`, `serve` and every reload go through `load`, so they accept the same files.
//!
//! `types` is the file as written and `keywords` its one-word values; `validate` runs the
//! pass, with `tls`, `upstreams` and `routes` checking their sections.

mod keywords;
mod routes;
mod tls;
mod types;
mod upstreams;
mod validate;

#[cfg(test)]
mod tests;

use std::fmt;
use std::net::SocketAddr;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::time::Duration;

use pachgate_proxy_core::{PlainMode, ServerLimits, Snapshot};

pub use keywords::AccessLog;
pub use tls::ListenerTlsSource;
pub use types::*;
use validate::Validator;

/// The access log's format as pachgate-observe's log setup takes it.
impl From<AccessLog> for pachgate_observe::logging::AccessFormat {
    fn from(format: AccessLog) -> Self {
        match format {
            AccessLog::Json => Self::Json,
            AccessLog::Text => Self::Text,
            AccessLog::Off => Self::Off,
        }
    }
}

/// One problem in a config file, located.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    pub file: PathBuf,
    pub line: usize,
    pub column: usize,
    pub message: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}:{}:{}: {}",
            self.file.display(),
            self.line,
            self.column,
            self.message
        )
    }
}

/// Everything `serve` needs, built from a valid file.
pub struct RuntimeConfig {
    pub https: Option<SocketAddr>,
    pub http: Option<(SocketAddr, PlainMode)>,
    pub admin: Option<SocketAddr>,
    pub tls: Option<ListenerTlsSource>,
    pub snapshot: Snapshot,
    pub limits: ServerLimits,
    pub worker_threads: Option<usize>,
    pub access_log: AccessLog,
    pub route_count: usize,
    pub upstream_count: usize,
    /// `listen.proxy_protocol` with no `trusted_proxies`: any peer that reaches the listener
    /// may name the client address (warned about at start and on reload).
    pub proxy_headers_from_anyone: bool,
}

/// Reads, parses and validates a config file.
pub fn load(path: &Path) -> Result<RuntimeConfig, Vec<ConfigError>> {
    from_bytes(path, &read(path)?)
}

/// The config file's bytes, for [`from_bytes`]: a reloader keeps the bytes it loaded, to
/// tell an edit from the version running.
pub fn read(path: &Path) -> Result<Vec<u8>, Vec<ConfigError>> {
    std::fs::read(path).map_err(|e| file_error(path, format!("cannot read the config file: {e}")))
}

/// Parses and validates bytes read from the config file at `path` (relative paths inside
/// resolve against its directory).
pub fn from_bytes(path: &Path, bytes: &[u8]) -> Result<RuntimeConfig, Vec<ConfigError>> {
    let text = std::str::from_utf8(bytes).map_err(|e| {
        file_error(
            path,
            format!("cannot read the config file: not UTF-8 ({e})"),
        )
    })?;
    let base = path.parent().unwrap_or(Path::new("."));
    parse(path, text, base)
}

fn file_error(path: &Path, message: String) -> Vec<ConfigError> {
    vec![ConfigError {
        file: path.to_path_buf(),
        line: 1,
        column: 1,
        message,
    }]
}

/// Parses and validates config text; relative paths inside resolve against `base`.
pub fn parse(file: &Path, text: &str, base: &Path) -> Result<RuntimeConfig, Vec<ConfigError>> {
    let locate = Locator { file, text };
    let config: FileConfig = toml::from_str(text).map_err(|e| {
        let span = e.span().unwrap_or(0..0);
        vec![locate.error(&span, e.message().trim_end().to_string())]
    })?;
    Validator {
        locate,
        base,
        errors: Vec::new(),
    }
    .validate(config)
}

struct Locator<'a> {
    file: &'a Path,
    text: &'a str,
}

impl Locator<'_> {
    fn error(&self, span: &Range<usize>, message: String) -> ConfigError {
        let offset = span.start.min(self.text.len());
        let before = &self.text[..offset];
        let line = before.matches('\n').count() + 1;
        let line_start = before.rfind('\n').map(|i| i + 1).unwrap_or(0);
        let column = before[line_start..].chars().count() + 1;
        ConfigError {
            file: self.file.to_path_buf(),
            line,
            column,
            message,
        }
    }
}

/// `"500ms"`, `"5s"`, `"2m"`, `"1h"`, `"7d"` → Duration.
pub fn parse_duration(text: &str) -> Option<Duration> {
    // Longer than any timer needs, and far from where `Instant + Duration` overflows (a
    // panic on every request that starts such a timer).
    const LONGEST: Duration = Duration::from_secs(100 * 365 * 86_400);
    let text = text.trim();
    let split = text.find(|c: char| !c.is_ascii_digit())?;
    let (number, unit) = text.split_at(split);
    let n: u64 = number.parse().ok()?;
    let duration = match unit {
        "ms" => Some(Duration::from_millis(n)),
        "s" => Some(Duration::from_secs(n)),
        "m" => n.checked_mul(60).map(Duration::from_secs),
        "h" => n.checked_mul(3600).map(Duration::from_secs),
        "d" => n.checked_mul(86_400).map(Duration::from_secs),
        _ => None,
    }?;
    (duration <= LONGEST).then_some(duration)
}
