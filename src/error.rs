//! The one error type of the library: every failure carries a kind that says how a caller (and the
//! kubelet, through `cri/status.rs`) should treat it. Messages are lowercase, say what was being done
//! and to what, and end without a period. This module must never know about gRPC.

use std::fmt;

/// How a failure should be treated by the caller. Mapped to gRPC codes once, in `cri/status.rs`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ErrorKind {
    NotFound,
    AlreadyExists,
    InvalidArgument,
    FailedPrecondition,
    Unavailable,
    DeadlineExceeded,
    ResourceExhausted,
    PermissionDenied,
    Unauthenticated,
    Unimplemented,
    Cancelled,
    Internal,
}

impl fmt::Display for ErrorKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self, f)
    }
}

/// A library error: a kind, a message, and optionally the lower-level error that caused it.
#[derive(Debug, thiserror::Error)]
#[error("{message}")]
pub struct Error {
    kind: ErrorKind,
    message: String,
    // Not exposed as `source()`: the message already contains it, and error chains printed with
    // `{:#}` would repeat it.
    cause: Option<Box<dyn std::error::Error + Send + Sync + 'static>>,
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    pub fn new(kind: ErrorKind, message: impl Into<String>) -> Self {
        Error { kind, message: message.into(), cause: None }
    }

    /// Wraps a lower-level error; the message becomes `"{message}: {source}"`.
    pub fn with_source(
        kind: ErrorKind,
        message: impl Into<String>,
        source: impl std::error::Error + Send + Sync + 'static,
    ) -> Self {
        let message = format!("{}: {}", message.into(), source);
        Error { kind, message, cause: Some(Box::new(source)) }
    }

    /// The lower-level error this one wraps, if any.
    pub fn cause(&self) -> Option<&(dyn std::error::Error + Send + Sync + 'static)> {
        self.cause.as_deref()
    }

    pub fn kind(&self) -> ErrorKind {
        self.kind
    }

    pub fn message(&self) -> &str {
        &self.message
    }

    pub fn is_not_found(&self) -> bool {
        self.kind == ErrorKind::NotFound
    }

    /// Prefixes the message with what the caller was doing, keeping the kind.
    pub fn context(mut self, what: impl fmt::Display) -> Self {
        self.message = format!("{what}: {}", self.message);
        self
    }

    pub fn not_found(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::NotFound, message)
    }
    pub fn already_exists(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::AlreadyExists, message)
    }
    pub fn invalid(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::InvalidArgument, message)
    }
    pub fn precondition(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::FailedPrecondition, message)
    }
    pub fn unavailable(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::Unavailable, message)
    }
    pub fn internal(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::Internal, message)
    }
    pub fn unimplemented(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::Unimplemented, message)
    }
}

/// Adds "what was being done" to lower-level results (io, database, json), turning them into
/// [`Error`]s of the given kind (Internal by default).
pub trait Context<T> {
    fn context(self, what: impl FnOnce() -> String) -> Result<T>;
    fn context_kind(self, kind: ErrorKind, what: impl FnOnce() -> String) -> Result<T>;
}

impl<T, E> Context<T> for std::result::Result<T, E>
where
    E: std::error::Error + Send + Sync + 'static,
{
    fn context(self, what: impl FnOnce() -> String) -> Result<T> {
        self.context_kind(ErrorKind::Internal, what)
    }
    fn context_kind(self, kind: ErrorKind, what: impl FnOnce() -> String) -> Result<T> {
        self.map_err(|e| Error::with_source(kind, what(), e))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn context_keeps_kind_and_prefixes_message() {
        let e = Error::not_found("image \"x\" not found").context("removing image");
        assert_eq!(e.kind(), ErrorKind::NotFound);
        assert_eq!(e.to_string(), "removing image: image \"x\" not found");
    }

    #[test]
    fn io_errors_become_internal_with_source() {
        let r: std::result::Result<(), std::io::Error> = Err(std::io::Error::other("boom"));
        let e = r.context(|| "writing blob sha256:ab".into()).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::Internal);
        assert_eq!(e.to_string(), "writing blob sha256:ab: boom");
        assert!(e.cause().is_some());
        assert!(std::error::Error::source(&e).is_none(), "the message already holds the cause");
    }
}
