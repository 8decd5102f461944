//! The CRI v1 facade: tonic services that translate CRI messages into calls on the engine (and,
//! later, the pod runtime). Generated CRI types never leave this folder. Every RPC goes through
//! [`rpc`], which opens a span, times the call and maps errors to gRPC codes in one place.

use std::future::Future;
use std::time::Instant;

use tonic::{Response, Status};
use tracing::Instrument;

use crate::metrics::Metrics;

pub use k8s_cri::v1 as api;

pub mod container_create;
pub mod container_exec;
pub mod container_start;
pub mod container_status;
pub mod container_stop;
pub mod container_stream;
pub mod files;
pub mod image;
pub mod pause;
pub mod pods;
pub mod recover;
pub mod runtime;
pub mod sandbox_run;
pub mod sandbox_status;
pub mod sandbox_stop;
pub mod spec;
pub mod stats;
pub mod status;
pub mod store;

/// Runs one CRI call: a tracing span named after the method carrying the object id, debug logs of the
/// outcome and duration, the request metrics, and the error → status mapping.
pub async fn rpc<T, F>(metrics: &Metrics, method: &'static str, id: &str, f: F) -> Result<Response<T>, Status>
where
    F: Future<Output = crate::Result<T>>,
{
    let span = tracing::info_span!("cri", method, id = %id);
    let start = Instant::now();
    let result = f.instrument(span.clone()).await;
    let elapsed = start.elapsed();
    let _enter = span.enter();
    match result {
        Ok(v) => {
            metrics.observe_rpc(method, tonic::Code::Ok, elapsed);
            tracing::debug!(?elapsed, "ok");
            Ok(Response::new(v))
        }
        Err(e) => {
            let status = status::to_status(&e);
            metrics.observe_rpc(method, status.code(), elapsed);
            match e.kind() {
                crate::ErrorKind::NotFound
                | crate::ErrorKind::InvalidArgument
                | crate::ErrorKind::AlreadyExists => {
                    tracing::info!(?elapsed, code = ?status.code(), error = %e, "failed")
                }
                _ => tracing::warn!(?elapsed, code = ?status.code(), error = %e, "failed"),
            }
            Err(status)
        }
    }
}
