//! Kubernetes' port-forward protocol as the kubelet serves it. Over SPDY (`portforward.k8s.io`,
//! also tunnelled in WebSocket as `SPDY/3.1+portforward.k8s.io`) every forwarded connection is a
//! pair of streams, data and error, with the same `requestID` and a `port` header; many pairs run
//! at once. Over plain WebSocket (`v4.channel.k8s.io`) the ports are fixed up front: channel 2i
//! carries the data of the i-th port and 2i+1 its errors, each starting with the port number as two
//! little-endian bytes. Failures go on the error channel as text. This module must never reach a
//! port the request did not list (when it listed any).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::task::JoinSet;
use tokio::time::Instant;
use tokio_tungstenite::WebSocketStream;
use tracing::Instrument;

use super::relay::{Sink, Source, SpdySink, SpdySource};
use super::server::PortForwardRequest;
use super::spdy::frame::rst;
use super::spdy::{Headers, Session, Stream};
use super::websocket::{ChannelConn, Codec};
use super::{Backend, PortStream};
use crate::error::{Context, Error, Result};

/// The SPDY subprotocol.
pub(crate) const SPDY_PROTOCOL: &str = "portforward.k8s.io";
/// SPDY carried in WebSocket binary messages (what client-go's WebSocket port-forward dials).
pub(crate) const TUNNEL_PROTOCOL: &str = "SPDY/3.1+portforward.k8s.io";
/// The channel subprotocols; a client offering none gets binary channels too.
pub(crate) const CHANNEL_PROTOCOLS: &[&str] = &["v4.channel.k8s.io", "v4.base64.channel.k8s.io"];

/// The streams of one forwarded connection, as they arrive.
struct Pair {
    data: Option<Stream>,
    error: Option<Stream>,
    created: Instant,
}

/// Serves port forwarding over an SPDY session until the client is done with it.
pub(crate) async fn serve_spdy(
    session: Session,
    backend: Arc<dyn Backend>,
    req: PortForwardRequest,
    creation_timeout: Duration,
) {
    let allowed: Arc<[u16]> = req.ports.clone().into();
    let mut pending: HashMap<String, Pair> = HashMap::new();
    let mut forwards = JoinSet::new();
    let mut sweep = tokio::time::interval(Duration::from_secs(1));
    loop {
        tokio::select! {
            stream = session.accept() => {
                let Some(stream) = stream else { break };
                let Some((request_id, data, error)) = add_stream(&mut pending, stream) else { continue };
                let port = data.headers().get("port").and_then(|p| p.parse().ok()).unwrap_or(0);
                let (data, error) = (Arc::new(data), Arc::new(error));
                let span = tracing::debug_span!("port_forward", sandbox = %req.pod_sandbox_id, port, request = %request_id);
                forwards.spawn(
                    forward(
                        backend.clone(),
                        req.pod_sandbox_id.clone(),
                        port,
                        allowed.clone(),
                        Box::new(SpdySource(data.clone())),
                        Arc::new(SpdySink(data)),
                        Arc::new(SpdySink(error)),
                    )
                    .instrument(span),
                );
            }
            _ = sweep.tick() => {
                let expired: Vec<String> =
                    pending.iter().filter(|(_, p)| p.created.elapsed() >= creation_timeout).map(|(id, _)| id.clone()).collect();
                for id in expired {
                    let Some(pair) = pending.remove(&id) else { continue };
                    tracing::debug!(request = %id, "timed out waiting for the other stream of a port-forward pair");
                    if let Some(error) = pair.error {
                        forwards.spawn(async move {
                            let _ = error.write(format!("timed out waiting for streams of request {id}").as_bytes()).await;
                            error.close();
                        });
                    }
                }
            }
            Some(_) = forwards.join_next() => {}
        }
    }
    // No new pairs: let the running ones finish, unless the connection is gone.
    tokio::select! {
        _ = async { while forwards.join_next().await.is_some() {} } => {}
        _ = session.done() => {}
    }
    drop(pending);
    session.close().await;
}

/// Files `stream` under its request; returns the request id and the (data, error) streams once
/// both are there. Streams that are not a valid data or error stream are reset, as the kubelet does.
fn add_stream(pending: &mut HashMap<String, Pair>, stream: Stream) -> Option<(String, Stream, Stream)> {
    let headers = stream.headers();
    let port_ok = headers.get("port").and_then(|p| p.parse::<u16>().ok()).is_some_and(|p| p > 0);
    let ty = headers.get("streamtype").unwrap_or_default().to_string();
    if !port_ok || (ty != "data" && ty != "error") {
        tracing::debug!(?headers, "rejecting a port-forward stream without a valid port and stream type");
        stream.reset(rst::CANCEL);
        return None;
    }
    stream.reply(Headers::new()).ok()?;
    // Clients older than the requestID header open each pair as consecutive streams, error last.
    let request_id = match headers.get("requestid") {
        Some(id) => id.to_string(),
        None if ty == "error" => stream.id().to_string(),
        None => (i64::from(stream.id()) - 2).to_string(),
    };
    let pair = pending.entry(request_id.clone()).or_insert_with(|| Pair {
        data: None,
        error: None,
        created: Instant::now(),
    });
    let slot = if ty == "data" { &mut pair.data } else { &mut pair.error };
    if slot.is_some() {
        tracing::debug!(request = %request_id, stream_type = %ty, "resetting a second stream of the same type in a port-forward pair");
        stream.reset(rst::PROTOCOL_ERROR);
        return None;
    }
    *slot = Some(stream);
    if let Some(Pair { data: Some(_), error: Some(_), .. }) = pending.get(&request_id)
        && let Some(Pair { data: Some(data), error: Some(error), .. }) = pending.remove(&request_id)
    {
        return Some((request_id, data, error));
    }
    None
}

/// Serves port forwarding over WebSocket channels, one connection per port in `ports`.
pub(crate) async fn serve_websocket<S>(
    ws: WebSocketStream<S>,
    codec: Codec,
    ports: Vec<u16>,
    backend: Arc<dyn Backend>,
    req: PortForwardRequest,
    idle_timeout: Duration,
) where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let allowed: Arc<[u16]> = req.ports.clone().into();
    let data_channels: Vec<u8> = (0..ports.len()).map(|i| (2 * i) as u8).collect();
    let (conn, mut sources) = ChannelConn::open(ws, codec, &data_channels, false, idle_timeout);
    let mut forwards = JoinSet::new();
    for (i, &port) in ports.iter().enumerate() {
        let (data, error) = (conn.sink((2 * i) as u8), conn.sink((2 * i + 1) as u8));
        // Each channel opens with its port, so the client can tell them apart.
        let _ = data.write(&port.to_le_bytes()).await;
        let _ = error.write(&port.to_le_bytes()).await;
        let Some(source) = sources.remove(&((2 * i) as u8)) else { continue };
        let span = tracing::debug_span!("port_forward", sandbox = %req.pod_sandbox_id, port);
        forwards.spawn(
            forward(
                backend.clone(),
                req.pod_sandbox_id.clone(),
                port,
                allowed.clone(),
                Box::new(source),
                data,
                error,
            )
            .instrument(span),
        );
    }
    tokio::select! {
        _ = async { while forwards.join_next().await.is_some() {} } => {}
        _ = conn.done() => {}
    }
    conn.close().await;
}

/// Forwards one connection to `port` in the sandbox, then closes the pair; a failure is reported
/// on `error` the way the kubelet words it.
async fn forward(
    backend: Arc<dyn Backend>,
    sandbox: String,
    port: u16,
    allowed: Arc<[u16]>,
    data_in: Box<dyn Source>,
    data_out: Arc<dyn Sink>,
    error: Arc<dyn Sink>,
) {
    let result = if !allowed.is_empty() && !allowed.contains(&port) {
        Err(Error::invalid(format!("port {port} is not one of the ports this port forward was granted")))
    } else {
        match backend.port_forward(&sandbox, port).await {
            Ok(conn) => relay(conn, data_in, data_out.as_ref())
                .await
                .context(|| format!("copying data on port {port}")),
            Err(e) => Err(e),
        }
    };
    data_out.close();
    if let Err(e) = result {
        tracing::debug!(error = %e, "port forward failed");
        let message = format!("error forwarding port {port} to pod {sandbox}, uid : {e}");
        let _ = error.write(message.as_bytes()).await;
    }
    error.close();
}

/// Copies both ways until the pod's side has nothing more to send. The client finishing its side
/// half-closes the connection to the pod, whose answer still flows back.
async fn relay(
    conn: Box<dyn PortStream>,
    mut data_in: Box<dyn Source>,
    data_out: &dyn Sink,
) -> std::io::Result<()> {
    let (mut pod_read, mut pod_write) = tokio::io::split(conn);
    let to_pod = async {
        while let Some(data) = data_in.read().await {
            pod_write.write_all(&data).await?;
        }
        pod_write.shutdown().await
    };
    let from_pod = async {
        let mut buf = vec![0u8; 32 * 1024];
        loop {
            let n = pod_read.read(&mut buf).await?;
            // The client not taking data any more is its business, not a forwarding error.
            if n == 0 || data_out.write(&buf[..n]).await.is_err() {
                return Ok(());
            }
        }
    };
    tokio::pin!(to_pod, from_pod);
    tokio::select! {
        r = &mut from_pod => r,
        r = &mut to_pod => match r {
            Ok(()) => from_pod.await,
            Err(e) => Err(e),
        },
    }
}

/// The ports of a WebSocket port forward: the `port` query parameters (repeatable,
/// comma-separated), else the request's own list.
pub(crate) fn websocket_ports(query: Option<&str>, req: &PortForwardRequest) -> Result<Vec<u16>> {
    let mut ports = Vec::new();
    for pair in query.unwrap_or_default().split('&') {
        let Some(value) = pair.strip_prefix("port=") else { continue };
        if value.is_empty() {
            return Err(Error::invalid("query parameter \"port\" cannot be empty"));
        }
        for p in value.split(',') {
            // Ports are plain digits; anything percent-encoded is not a port anyway.
            match p.parse::<u16>() {
                Ok(port) if port > 0 => ports.push(port),
                _ => return Err(Error::invalid(format!("unable to parse {value:?} as a port"))),
            }
        }
    }
    if ports.is_empty() {
        ports = req.ports.clone();
    }
    if ports.is_empty() {
        return Err(Error::invalid("query parameter \"port\" is required"));
    }
    if ports.len() > 127 {
        return Err(Error::invalid(format!("{} ports do not fit in the channel numbers", ports.len())));
    }
    Ok(ports)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(ports: &[u16]) -> PortForwardRequest {
        PortForwardRequest { pod_sandbox_id: "pod".into(), ports: ports.to_vec() }
    }

    #[test]
    fn websocket_ports_come_from_the_query_or_the_request() {
        assert_eq!(websocket_ports(Some("port=80&port=443,8080"), &req(&[])).unwrap(), vec![80, 443, 8080]);
        assert_eq!(websocket_ports(None, &req(&[22])).unwrap(), vec![22]);
        assert!(websocket_ports(Some("port=0"), &req(&[])).is_err());
        assert!(websocket_ports(Some("port=http"), &req(&[])).is_err());
        assert!(websocket_ports(Some("port="), &req(&[])).is_err());
        assert!(websocket_ports(Some("x=1"), &req(&[])).is_err());
    }
}
