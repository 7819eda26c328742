//! The one error type of Dispatch, classified by [`ErrorKind`].
//!
//! Callers branch on `kind()`, never on message text. Stores convert driver errors at their crate
//! boundary and keep the driver error as [`std::error::Error::source`].

use std::borrow::Cow;
use std::fmt;

/// What went wrong, coarsely enough to decide what to do about it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ErrorKind {
    /// The thing asked for does not exist.
    NotFound,
    /// The request conflicts with the current state (for example a replay of a replayed entry).
    Conflict,
    /// The store can not be reached; retry later.
    Unavailable,
    /// A store call did not finish within its timeout.
    Timeout,
    /// The request itself is malformed: bad options, an ID that does not parse, bad cron syntax.
    InvalidInput,
    /// A payload is larger than the configured limit.
    PayloadTooLarge,
    /// A payload could not be encoded or decoded.
    Codec,
    /// The store's schema was written by a newer version, or is not a Dispatch schema.
    IncompatibleSchema,
    /// The store was opened without migrating, and its schema is missing or older than this
    /// version needs: run the store's migrations (its `migrate()`, or open it with migrations
    /// on) first, for example in a deploy step. Not transient: retrying does not migrate.
    NotMigrated,
    /// The caller's lease no longer holds: another attempt owns the work now, and this write was
    /// refused (fencing). Stop, do not retry.
    LeaseLost,
    /// The caller's leader term is no longer valid (a newer leader took over, or the term's
    /// lease expired): the leader write was refused (fencing). Step down, do not retry.
    NotLeader,
    /// A bug or an invariant broken inside a store.
    Internal,
}

impl ErrorKind {
    /// A stable lowercase name, for logs and metrics labels.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::NotFound => "not_found",
            Self::Conflict => "conflict",
            Self::Unavailable => "unavailable",
            Self::Timeout => "timeout",
            Self::InvalidInput => "invalid_input",
            Self::PayloadTooLarge => "payload_too_large",
            Self::Codec => "codec",
            Self::IncompatibleSchema => "incompatible_schema",
            Self::NotMigrated => "not_migrated",
            Self::NotLeader => "not_leader",
            Self::LeaseLost => "lease_lost",
            Self::Internal => "internal",
        }
    }

    /// Whether the same call may succeed if retried later.
    pub fn is_transient(self) -> bool {
        matches!(self, Self::Unavailable | Self::Timeout)
    }
}

impl fmt::Display for ErrorKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// The error of every fallible Dispatch call.
#[derive(Debug, thiserror::Error)]
#[error("{kind}: {message}")]
pub struct Error {
    kind: ErrorKind,
    message: Cow<'static, str>,
    #[source]
    source: Option<BoxError>,
}

impl Error {
    /// An error of `kind` with a lowercase message.
    pub fn new(kind: ErrorKind, message: impl Into<Cow<'static, str>>) -> Self {
        Self { kind, message: message.into(), source: None }
    }

    /// Attach the underlying cause (a driver error, an I/O error).
    pub fn with_source(mut self, source: impl Into<BoxError>) -> Self {
        self.source = Some(source.into());
        self
    }

    /// What went wrong.
    pub fn kind(&self) -> ErrorKind {
        self.kind
    }

    /// The human-readable message, without the kind.
    pub fn message(&self) -> &str {
        &self.message
    }

    /// Shorthand for [`ErrorKind::NotFound`].
    pub fn not_found(message: impl Into<Cow<'static, str>>) -> Self {
        Self::new(ErrorKind::NotFound, message)
    }

    /// Shorthand for [`ErrorKind::InvalidInput`].
    pub fn invalid_input(message: impl Into<Cow<'static, str>>) -> Self {
        Self::new(ErrorKind::InvalidInput, message)
    }

    /// Shorthand for [`ErrorKind::Unavailable`].
    pub fn unavailable(message: impl Into<Cow<'static, str>>) -> Self {
        Self::new(ErrorKind::Unavailable, message)
    }

    /// Shorthand for [`ErrorKind::Internal`].
    pub fn internal(message: impl Into<Cow<'static, str>>) -> Self {
        Self::new(ErrorKind::Internal, message)
    }
}

/// `Result` with [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn display_has_kind_and_message_and_source_is_kept() {
        let io = std::io::Error::other("socket closed");
        let err = Error::unavailable("store unreachable").with_source(io);
        assert_eq!(err.to_string(), "unavailable: store unreachable");
        assert_eq!(err.kind(), ErrorKind::Unavailable);
        assert!(err.kind().is_transient());
        let source = std::error::Error::source(&err).map(ToString::to_string);
        assert_eq!(source.as_deref(), Some("socket closed"));
    }

    #[test]
    fn not_migrated_is_not_transient() {
        assert!(!ErrorKind::NotMigrated.is_transient());
        assert_eq!(ErrorKind::NotMigrated.as_str(), "not_migrated");
    }
}
