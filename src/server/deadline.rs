//! gRPC deadlines answered as gRPC says. A client's deadline arrives as the `grpc-timeout` header;
//! when it passes, the call ends with DEADLINE_EXCEEDED, which is what the kubelet and critest
//! expect (containerd's grpc-go server answers so). tonic's server enforces the header too, but
//! answers CANCELLED ("Timeout expired"). This layer sits inside tonic's: its timer is made first
//! (tonic builds the inner future before its own timer) and it is polled first, so when the
//! deadline passes its answer is the one sent.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use tonic::codegen::http;

/// The layer for `tonic::transport::Server::layer`.
#[derive(Debug, Clone, Copy, Default)]
pub struct DeadlineLayer;

impl<S> tower::Layer<S> for DeadlineLayer {
    type Service = Deadline<S>;
    fn layer(&self, inner: S) -> Deadline<S> {
        Deadline { inner }
    }
}

/// See the module documentation.
#[derive(Debug, Clone)]
pub struct Deadline<S> {
    inner: S,
}

impl<S, ReqBody, ResBody> tower::Service<http::Request<ReqBody>> for Deadline<S>
where
    S: tower::Service<http::Request<ReqBody>, Response = http::Response<ResBody>>,
    S::Future: Send + 'static,
    ResBody: Default + Send + 'static,
{
    type Response = http::Response<ResBody>;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Self::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: http::Request<ReqBody>) -> Self::Future {
        let timeout = req.headers().get("grpc-timeout").and_then(|v| v.to_str().ok()).and_then(parse_timeout);
        let call = self.inner.call(req);
        let Some(timeout) = timeout else { return Box::pin(call) };
        // Made now, not at the first poll, so that it is due no later than tonic's.
        let sleep = tokio::time::sleep(timeout);
        Box::pin(async move {
            tokio::select! {
                biased;
                r = call => r,
                () = sleep => Ok(tonic::Status::deadline_exceeded("the call's deadline passed").into_http()),
            }
        })
    }
}

/// A `grpc-timeout` value: at most 8 digits and a unit (H, M, S, m, u, n), per gRPC over HTTP/2.
fn parse_timeout(v: &str) -> Option<Duration> {
    let (digits, unit) = v.split_at(v.len().checked_sub(1)?);
    if digits.is_empty() || digits.len() > 8 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let n: u64 = digits.parse().ok()?;
    Some(match unit {
        "H" => Duration::from_secs(n * 3600),
        "M" => Duration::from_secs(n * 60),
        "S" => Duration::from_secs(n),
        "m" => Duration::from_millis(n),
        "u" => Duration::from_micros(n),
        "n" => Duration::from_nanos(n),
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use tower::{Layer, Service, ServiceExt};

    #[test]
    fn timeouts_parse_per_the_spec() {
        assert_eq!(parse_timeout("1H"), Some(Duration::from_secs(3600)));
        assert_eq!(parse_timeout("2M"), Some(Duration::from_secs(120)));
        assert_eq!(parse_timeout("99999999S"), Some(Duration::from_secs(99_999_999)));
        assert_eq!(parse_timeout("250m"), Some(Duration::from_millis(250)));
        assert_eq!(parse_timeout("7u"), Some(Duration::from_micros(7)));
        assert_eq!(parse_timeout("0n"), Some(Duration::ZERO));
        for bad in ["", "S", "100", "123456789S", "1x", "-1S", "1.5S", "1 S"] {
            assert_eq!(parse_timeout(bad), None, "{bad:?}");
        }
    }

    fn request(timeout: Option<&str>) -> http::Request<()> {
        let mut b = http::Request::builder();
        if let Some(t) = timeout {
            b = b.header("grpc-timeout", t);
        }
        b.body(()).unwrap()
    }

    fn grpc_status(r: &http::Response<String>) -> Option<&str> {
        r.headers().get("grpc-status").and_then(|v| v.to_str().ok())
    }

    /// A call still running at its deadline ends with DEADLINE_EXCEEDED (gRPC code 4); a faster one,
    /// or one without a deadline, gets the service's own answer.
    #[tokio::test]
    async fn a_passed_deadline_is_deadline_exceeded() {
        let slow = tower::service_fn(|_req: http::Request<()>| async {
            tokio::time::sleep(Duration::from_secs(3600)).await;
            Ok::<_, std::convert::Infallible>(http::Response::new("late".to_string()))
        });
        let r = DeadlineLayer.layer(slow).oneshot(request(Some("30m"))).await.unwrap();
        assert_eq!(grpc_status(&r), Some("4"));

        let fast = tower::service_fn(|_req: http::Request<()>| async {
            Ok::<_, std::convert::Infallible>(http::Response::new("answer".to_string()))
        });
        let mut svc = DeadlineLayer.layer(fast);
        for t in [Some("5S"), None, Some("nonsense")] {
            let r = svc.ready().await.unwrap().call(request(t)).await.unwrap();
            assert_eq!((grpc_status(&r), r.body().as_str()), (None, "answer"), "{t:?}");
        }
    }
}
