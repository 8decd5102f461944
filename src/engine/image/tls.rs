//! TLS client settings for one registry host: the system roots plus the host's `ca` files, its
//! client certificate, or (`skip_verify`) no server verification at all. Always the ring provider,
//! so no process-wide crypto default is needed. This module must never open connections.

use std::path::Path;
use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::{ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme};

use crate::engine::image::hosts::RegistryHost;
use crate::error::{Error, Result};

/// The system's trusted roots (what `rustls-native-certs` finds); unreadable entries are logged.
pub(crate) fn system_roots() -> RootCertStore {
    let found = rustls_native_certs::load_native_certs();
    for e in &found.errors {
        tracing::warn!(error = %e, "could not load some system CA certificates");
    }
    let mut roots = RootCertStore::empty();
    let (_, ignored) = roots.add_parsable_certificates(found.certs);
    if ignored > 0 {
        tracing::warn!(ignored, "ignored unparsable system CA certificates");
    }
    roots
}

/// The rustls client configuration for `host`.
pub(crate) fn client_config(system: &RootCertStore, host: &RegistryHost) -> Result<ClientConfig> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| Error::internal(format!("configuring tls for registry host {}: {e}", host.host)))?;
    let builder = if host.skip_verify {
        builder.dangerous().with_custom_certificate_verifier(Arc::new(AcceptAnyCertificate(provider)))
    } else {
        let mut roots = system.clone();
        for ca in &host.ca {
            let bad = |why: String| {
                Error::invalid(format!("loading ca {} for registry host {}: {why}", ca.display(), host.host))
            };
            let certs = CertificateDer::pem_file_iter(ca)
                .map_err(|e| bad(e.to_string()))?
                .collect::<std::result::Result<Vec<_>, _>>()
                .map_err(|e| bad(e.to_string()))?;
            if certs.is_empty() {
                return Err(bad("no certificate in file".into()));
            }
            for c in certs {
                roots.add(c).map_err(|e| bad(e.to_string()))?;
            }
        }
        builder.with_root_certificates(roots)
    };
    let mut config = match host.client.first() {
        None => builder.with_no_client_auth(),
        Some((cert, key)) => {
            if host.client.len() > 1 {
                tracing::warn!(host = %host.host, "several client certificates configured; only the first is used");
            }
            let (chain, key) = client_identity(cert, key.as_deref().unwrap_or(cert)).map_err(|why| {
                Error::invalid(format!(
                    "loading client certificate {} for registry host {}: {why}",
                    cert.display(),
                    host.host
                ))
            })?;
            builder.with_client_auth_cert(chain, key).map_err(|e| {
                Error::invalid(format!(
                    "loading client certificate {} for registry host {}: {e}",
                    cert.display(),
                    host.host
                ))
            })?
        }
    };
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(config)
}

fn client_identity(
    cert: &Path,
    key: &Path,
) -> std::result::Result<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>), String> {
    let chain = CertificateDer::pem_file_iter(cert)
        .map_err(|e| e.to_string())?
        .collect::<std::result::Result<Vec<_>, _>>()
        .map_err(|e| e.to_string())?;
    if chain.is_empty() {
        return Err("no certificate in file".into());
    }
    // The error of a key parse never includes key material.
    let key = PrivateKeyDer::from_pem_file(key).map_err(|e| format!("key {}: {e}", key.display()))?;
    Ok((chain, key))
}

/// `skip_verify`: any certificate is accepted, but handshake signatures are still checked so the
/// connection is at least consistent with the certificate the server sent.
#[derive(Debug)]
struct AcceptAnyCertificate(Arc<CryptoProvider>);

impl ServerCertVerifier for AcceptAnyCertificate {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> std::result::Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> std::result::Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.0.signature_verification_algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> std::result::Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.0.signature_verification_algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}
