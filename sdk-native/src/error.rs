//! The one error enum of the SDK.
//!
//! Every variant has a stable [`Error::code`]; the codes of the core (`chain_broken`,
//! `invalid_history`, `bad_signature`, …) and of the server's problem details
//! (`version_conflict`, `quorum_not_met`, …) come through unchanged.

use std::fmt;
use std::path::PathBuf;

use crate::history::PublicKey;
use crate::id::PaymentId;
use crate::CoreError;

/// Where a history or export stopped verifying, and why.
///
/// `error` is the core's own error (its message and [`CoreError::code`] are the ones
/// every trustfold implementation reports for the same input); `stream`, `seq` and
/// `line` locate the broken event in the file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Broken {
    /// The payment, when it could be read.
    pub stream: Option<PaymentId>,
    /// The broken event's sequence number within its payment (1-based), where one applies.
    pub seq: Option<u64>,
    /// The 1-based line of the file holding that event, where known.
    pub line: Option<u64>,
    /// What is wrong, as the core reports it.
    pub error: CoreError,
}

impl fmt::Display for Broken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Some(s) = self.stream {
            write!(f, "payment {s}")?;
        } else {
            write!(f, "history")?;
        }
        if let Some(seq) = self.seq {
            write!(f, ", event seq {seq}")?;
        }
        if let Some(line) = self.line {
            write!(f, " (line {line})")?;
        }
        write!(f, ": {}", self.error)
    }
}

/// Everything the SDK can fail with.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A history or export does not verify; see [`Broken`] for where and why.
    #[error("{0}")]
    Broken(Box<Broken>),
    /// A file could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The operating system's error.
        source: std::io::Error,
    },
    /// An error of the core outside a history (a bad key, a bad id, …).
    #[error(transparent)]
    Core(#[from] CoreError),
    /// A usage error: options that do not fit together, or a file in the wrong format.
    #[error("{0}")]
    Usage(String),

    // ---- client ---------------------------------------------------------------
    /// The server rejected a command by a domain rule (HTTP 422), e.g. `quorum_not_met`.
    #[error("rejected ({code}): {message}")]
    Rejected {
        /// The stable code from the problem details.
        code: String,
        /// The server's explanation.
        message: String,
        /// The offending field, where one applies.
        field: Option<String>,
    },
    /// Another writer changed the payment first (HTTP 409): reload and retry.
    ///
    /// ```
    /// use trustfold::Error;
    /// let e = Error::VersionConflict { current_version: Some(7), message: "reload".into() };
    /// assert_eq!(e.to_string(), "version conflict: the payment is at version 7: reload");
    /// ```
    #[error(
        "version conflict: the payment is at version {}: {message}",
        version_or_unknown(*.current_version)
    )]
    VersionConflict {
        /// The payment's current version, as the server reported it.
        current_version: Option<u64>,
        /// The server's explanation.
        message: String,
    },
    /// Missing or bad credentials (401), or not allowed (403).
    #[error("not authorized (HTTP {status}): {message}")]
    Auth {
        /// 401 or 403.
        status: u16,
        /// The server's code (`unauthorized`, `token_expired`, `participant_removed`,
        /// `token_scope`, …); `unauthorized` or `forbidden` when it sent none.
        code: String,
        /// The server's explanation.
        message: String,
    },
    /// Unknown (or another tenant's) object (404).
    #[error("not found: {message}")]
    NotFound {
        /// The server's explanation.
        message: String,
    },
    /// Any other HTTP error status, with the problem's code when there was one.
    #[error("HTTP {status} ({code}): {message}")]
    Http {
        /// The status.
        status: u16,
        /// The problem's code, or `http_<status>`.
        code: String,
        /// The server's explanation.
        message: String,
    },
    /// The request never got an answer (connection refused, reset, timeout, TLS…),
    /// after the retries.
    #[error("transport: {0}")]
    Transport(String),
    /// A replica was given a client pinned to another server key than the one it was
    /// told to trust (`Replica::new`): pin one key, or pass the client's.
    #[error(
        "the client is pinned to server key {pinned}, the replica was given {key}: \
         pass the key the client is pinned to (Client::pinned), or a client without one"
    )]
    KeyMismatch {
        /// The key the client is pinned to.
        pinned: PublicKey,
        /// The key the replica was given.
        key: PublicKey,
    },
    /// An answer longer than a trustfold server ever sends ([`crate::client::MAX_BODY`]
    /// for a page or any other answer, [`crate::client::MAX_ERROR_BODY`] for an error's
    /// body, [`crate::replica::MAX_SSE_EVENT`] for a line or an event of the live
    /// stream): refused before more of it is held in memory (not retried, and `follow`
    /// ends). The URL is not a trustfold server's, or something on the way sends it.
    #[error(
        "the server's {what} passed {limit} bytes, more than a trustfold server sends: \
         refused unread (check the server URL and any proxy on the way)"
    )]
    TooLarge {
        /// What was being read (`answer`, `error body (HTTP 503)`, `live-stream event`…).
        what: String,
        /// The most bytes read of it.
        limit: usize,
    },
    /// A webhook whose signature or timestamp does not verify.
    #[error("webhook: {0}")]
    Webhook(String),
    /// The credential (a participant token whose roles the policy hides something from)
    /// gets a redacted view of the history, which has no hashes and cannot be verified
    /// or folded: read it with `Client::events_view`, and the state with
    /// `Client::payment`.
    #[error(
        "this credential gets a redacted view of the history, which cannot be verified; \
         use Client::events_view to read it, or an API key (or a role that sees \
         everything) for the verifiable records"
    )]
    RedactedHistory,
}

/// A version as a number, or `unknown` when the server did not say.
fn version_or_unknown(v: Option<u64>) -> String {
    v.map_or_else(|| "unknown".into(), |v| v.to_string())
}

impl Error {
    /// A stable machine-readable code.
    ///
    /// ```
    /// use trustfold::Error;
    /// assert_eq!(Error::Usage("x".into()).code(), "usage");
    /// assert_eq!(Error::Core(trustfold::CoreError::Overflow).code(), "amount_overflow");
    /// ```
    pub fn code(&self) -> &str {
        match self {
            Error::Broken(b) => b.error.code(),
            Error::Io { .. } => "io",
            Error::Core(e) => e.code(),
            Error::Usage(_) => "usage",
            Error::Rejected { code, .. } | Error::Http { code, .. } => code,
            Error::VersionConflict { .. } => "version_conflict",
            Error::Auth { code, .. } => code,
            Error::NotFound { .. } => "not_found",
            Error::Transport(_) => "transport",
            Error::KeyMismatch { .. } => "key_mismatch",
            Error::TooLarge { .. } => "response_too_large",
            Error::Webhook(_) => "webhook_invalid",
            Error::RedactedHistory => "redacted_history",
        }
    }

    /// Where a history broke, when this is a verification failure.
    pub fn broken(&self) -> Option<&Broken> {
        match self {
            Error::Broken(b) => Some(b),
            _ => None,
        }
    }

    pub(crate) fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Error::Io {
            path: path.into(),
            source,
        }
    }
}

impl From<Broken> for Error {
    fn from(b: Broken) -> Self {
        Error::Broken(Box::new(b))
    }
}

/// Shorthand for results in this crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_version_conflict_prints_the_version_or_unknown() {
        let e = Error::VersionConflict {
            current_version: Some(7),
            message: "reload the payment and try again".into(),
        };
        assert_eq!(
            e.to_string(),
            "version conflict: the payment is at version 7: reload the payment and try again"
        );
        let e = Error::VersionConflict {
            current_version: None,
            message: "x".into(),
        };
        assert_eq!(
            e.to_string(),
            "version conflict: the payment is at version unknown: x"
        );
    }
}
