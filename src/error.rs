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
    /// The failure is a full filesystem (ENOSPC or EDQUOT somewhere below), not some other exhausted
    /// resource; the filesystem has been named in the message once this is `Named`.
    no_space: NoSpace,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum NoSpace {
    No,
    Unnamed,
    Named,
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    pub fn new(kind: ErrorKind, message: impl Into<String>) -> Self {
        Error { kind, message: message.into(), cause: None, no_space: NoSpace::No }
    }

    /// Wraps a lower-level error; the message becomes `"{message}: {source}"`.
    pub fn with_source(
        kind: ErrorKind,
        message: impl Into<String>,
        source: impl std::error::Error + Send + Sync + 'static,
    ) -> Self {
        let message = format!("{}: {}", message.into(), source);
        // A full disk is the operator's to fix, not a bug: the kubelet shows ResourceExhausted as it is.
        let (kind, no_space) = if is_no_space(&source) {
            (ErrorKind::ResourceExhausted, NoSpace::Unnamed)
        } else {
            (kind, NoSpace::No)
        };
        Error { kind, message, cause: Some(Box::new(source)), no_space }
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

    /// Whether this failure is a full filesystem (or an exceeded disk quota).
    pub fn is_no_space(&self) -> bool {
        self.no_space != NoSpace::No
    }

    /// For a full-filesystem failure not yet attributed, prefixes the message with the filesystem that
    /// is full (`filesystem` describes it, e.g. "/var/lib/berth (ext4 on /var)"); anything else is
    /// returned unchanged. Named once: the innermost caller that knows the filesystem wins.
    pub fn on_filesystem(mut self, filesystem: impl fmt::Display) -> Self {
        if self.no_space == NoSpace::Unnamed {
            self.message = format!("no space left on the filesystem of {filesystem}: {}", self.message);
            self.no_space = NoSpace::Named;
        }
        self
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

/// Whether `e`, or an error it wraps, says a filesystem is full (ENOSPC) or a disk quota is exceeded
/// (EDQUOT). Looks through io errors that wrap other errors (the tar crate's) as well as `source()`.
pub fn is_no_space(e: &(dyn std::error::Error + 'static)) -> bool {
    let mut next = Some(e);
    while let Some(e) = next {
        if let Some(io) = e.downcast_ref::<std::io::Error>() {
            if matches!(io.kind(), std::io::ErrorKind::StorageFull | std::io::ErrorKind::QuotaExceeded) {
                return true;
            }
            if let Some(inner) = io.get_ref()
                && is_no_space(inner)
            {
                return true;
            }
        }
        if let Some(errno) = e.downcast_ref::<rustix::io::Errno>()
            && matches!(*errno, rustix::io::Errno::NOSPC | rustix::io::Errno::DQUOT)
        {
            return true;
        }
        if let Some(errno) = e.downcast_ref::<nix::errno::Errno>()
            && matches!(*errno, nix::errno::Errno::ENOSPC | nix::errno::Errno::EDQUOT)
        {
            return true;
        }
        if let Some(inner) = e.downcast_ref::<Error>() {
            return inner.is_no_space();
        }
        next = e.source();
    }
    false
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

    #[test]
    fn a_full_disk_is_resource_exhausted_and_names_its_filesystem_once() {
        let full =
            || -> std::result::Result<(), std::io::Error> { Err(std::io::Error::from_raw_os_error(28)) };
        let e = full().context(|| "writing ingest of blob sha256:ab".into()).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::ResourceExhausted);
        assert!(e.is_no_space());
        let e = e.context("pulling image x").on_filesystem("/var/lib/berth").on_filesystem("/elsewhere");
        assert_eq!(e.kind(), ErrorKind::ResourceExhausted);
        assert!(
            e.to_string().starts_with("no space left on the filesystem of /var/lib/berth: pulling image x: "),
            "{e}"
        );
        assert!(!e.to_string().contains("/elsewhere"), "{e}");

        // Wrapped the way the tar crate wraps it, as a raw errno, and as a quota.
        let tar_like = std::io::Error::other(std::io::Error::from_raw_os_error(28));
        assert!(is_no_space(&tar_like));
        assert!(is_no_space(&rustix::io::Errno::NOSPC));
        assert!(is_no_space(&nix::errno::Errno::EDQUOT));
        let quota: std::result::Result<(), _> = Err(std::io::Error::from_raw_os_error(libc::EDQUOT));
        assert_eq!(quota.context(|| "x".into()).unwrap_err().kind(), ErrorKind::ResourceExhausted);

        // Not a full disk: kind kept, nothing named.
        let other: std::result::Result<(), _> = Err(std::io::Error::from_raw_os_error(libc::EIO));
        let e = other.context(|| "x".into()).unwrap_err().on_filesystem("/var/lib/berth");
        assert_eq!((e.kind(), e.is_no_space()), (ErrorKind::Internal, false));
        assert_eq!(e.to_string(), "x: Input/output error (os error 5)");
        let bomb = Error::new(ErrorKind::ResourceExhausted, "layer expands too much").on_filesystem("/r");
        assert_eq!(bomb.to_string(), "layer expands too much");
    }
}
