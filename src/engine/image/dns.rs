//! Host name resolution for registry connections, in Rust: hickory-resolver reading `/etc/hosts` and
//! `/etc/resolv.conf`, instead of glibc's `getaddrinfo`. Release binaries are linked statically, and a
//! static glibc binary calling `getaddrinfo` needs the NSS modules of the very glibc it was built with
//! at run time, which a node need not have. Both files are read again for every name (connections
//! are pooled, so lookups are rare), so a node's changed DNS settings apply without a restart.

use std::net::SocketAddr;

use hickory_resolver::TokioResolver;
use hickory_resolver::config::LookupIpStrategy;
use reqwest::dns::{Addrs, Name, Resolve, Resolving};

/// reqwest's resolver for registry hosts (IP literals never reach it).
#[derive(Debug, Default, Clone, Copy)]
pub struct SystemResolver;

impl Resolve for SystemResolver {
    fn resolve(&self, name: Name) -> Resolving {
        let host = name.as_str().to_string();
        Box::pin(async move {
            let mut builder = TokioResolver::builder_tokio()
                .map_err(|e| format!("reading the resolver configuration (/etc/resolv.conf): {e}"))?;
            builder.options_mut().ip_strategy = LookupIpStrategy::Ipv4AndIpv6;
            let resolver = builder.build().map_err(|e| format!("building a resolver: {e}"))?;
            let lookup =
                resolver.lookup_ip(host.as_str()).await.map_err(|e| format!("resolving {host}: {e}"))?;
            let addrs: Vec<SocketAddr> = lookup.iter().map(|ip| SocketAddr::new(ip, 0)).collect();
            Ok(Box::new(addrs.into_iter()) as Addrs)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `localhost` is in every /etc/hosts (and answered by the resolver itself otherwise), so this
    /// needs no DNS server.
    #[tokio::test]
    async fn localhost_resolves_to_loopback_without_getaddrinfo() {
        let addrs: Vec<SocketAddr> =
            SystemResolver.resolve("localhost".parse().unwrap()).await.unwrap().collect();
        assert!(!addrs.is_empty());
        assert!(addrs.iter().all(|a| a.ip().is_loopback()), "{addrs:?}");
    }

    /// A registry over a host name: the client built for it connects through this resolver.
    #[tokio::test]
    async fn a_client_with_the_resolver_reaches_a_server_by_name() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        tokio::spawn(async move {
            use tokio::io::{AsyncReadExt, AsyncWriteExt};
            let (mut s, _) = listener.accept().await.unwrap();
            let mut buf = [0u8; 1024];
            let _ = s.read(&mut buf).await.unwrap();
            s.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\nconnection: close\r\n\r\nok")
                .await
                .unwrap();
        });
        let tls = rustls::ClientConfig::builder_with_provider(std::sync::Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(rustls::RootCertStore::empty())
        .with_no_client_auth();
        let client = reqwest::Client::builder()
            .tls_backend_preconfigured(tls)
            .dns_resolver(SystemResolver)
            .no_proxy()
            .build()
            .unwrap();
        let body =
            client.get(format!("http://localhost:{port}/v2/")).send().await.unwrap().text().await.unwrap();
        assert_eq!(body, "ok");
    }
}
