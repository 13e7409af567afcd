//! How a stream or the whole connection ended badly, and what the caller's body sees.

use std::io;
use std::sync::Arc;

use crate::BodyError;

/// Why a stream or the connection ended badly.
#[derive(Debug, Clone)]
pub enum Failure {
    /// The upstream reset the stream (or we did, for a protocol violation).
    Reset(h2::Reason),
    /// The upstream went away before it processed the stream: safe to send again.
    Refused,
    /// The connection failed.
    Connection(Arc<str>),
    /// The upstream broke HTTP/2 or our limits: we reset the stream or ended the connection.
    Violation(Arc<str>),
}

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Failure::Reset(reason) => write!(f, "stream reset: {reason:?}"),
            Failure::Refused => f.write_str("stream refused (upstream going away)"),
            Failure::Connection(text) => f.write_str(text),
            Failure::Violation(text) => write!(f, "upstream protocol error: {text}"),
        }
    }
}

impl std::error::Error for Failure {}

impl Failure {
    /// As a body error: a reset keeps its reason (hyper passes it on to the client's stream).
    pub(crate) fn into_body_error(self) -> BodyError {
        match self {
            Failure::Reset(reason) => h2::Error::from(reason).into(),
            Failure::Refused => h2::Error::from(h2::Reason::REFUSED_STREAM).into(),
            Failure::Connection(text) | Failure::Violation(text) => {
                io::Error::other(text.to_string()).into()
            }
        }
    }
}
