//! The one place where berth's error kinds become gRPC status codes. The kubelet depends on these:
//! NotFound from a status call is skipped, anything else fails the pod sync.

use tonic::{Code, Status};

use crate::error::{Error, ErrorKind};

pub fn code(kind: ErrorKind) -> Code {
    match kind {
        ErrorKind::NotFound => Code::NotFound,
        ErrorKind::AlreadyExists => Code::AlreadyExists,
        ErrorKind::InvalidArgument => Code::InvalidArgument,
        ErrorKind::FailedPrecondition => Code::FailedPrecondition,
        ErrorKind::Unavailable => Code::Unavailable,
        ErrorKind::DeadlineExceeded => Code::DeadlineExceeded,
        ErrorKind::ResourceExhausted => Code::ResourceExhausted,
        ErrorKind::PermissionDenied => Code::PermissionDenied,
        ErrorKind::Unauthenticated => Code::Unauthenticated,
        ErrorKind::Unimplemented => Code::Unimplemented,
        ErrorKind::Cancelled => Code::Cancelled,
        ErrorKind::Internal => Code::Internal,
    }
}

pub fn to_status(e: &Error) -> Status {
    Status::new(code(e.kind()), e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kinds_map_to_the_codes_the_kubelet_checks() {
        assert_eq!(to_status(&Error::not_found("container \"x\" not found")).code(), Code::NotFound);
        assert_eq!(to_status(&Error::invalid("bad")).code(), Code::InvalidArgument);
        assert_eq!(to_status(&Error::already_exists("x")).code(), Code::AlreadyExists);
        assert_eq!(to_status(&Error::internal("x")).message(), "x");
    }
}
