//! The registry client (OCI distribution API, read side): resolves a reference to the descriptor
//! of its manifest or index and fetches manifests and blobs, trying the hosts of the reference's
//! hosts.toml in order (mirrors, then upstream), with authentication, TLS settings per host,
//! `HTTP(S)_PROXY`/`NO_PROXY` from the environment (reqwest reads them when a client is built),
//! and a progress timeout instead of a total one, so big layers on slow links still arrive.
//! It verifies what it returns in one piece (manifests, configs); streamed blobs are verified by
//! whoever stores them. It must never write to disk, and never log or return a secret.

use std::collections::{HashMap, HashSet};
use std::fmt;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context as TaskContext, Poll};
use std::time::{Duration, SystemTime};

use bytes::{Bytes, BytesMut};
use futures_util::Stream;
use reqwest::header::{ACCEPT, AUTHORIZATION, CONTENT_LENGTH, CONTENT_RANGE, CONTENT_TYPE, HeaderMap, RANGE};
use reqwest::header::{HeaderName, HeaderValue, WWW_AUTHENTICATE};
use reqwest::{Method, StatusCode};
use rustls::RootCertStore;
use serde::Deserialize;

use crate::engine::digest::Digest;
use crate::engine::image::auth::{
    AuthTarget, Authorizer, Credentials, EndpointCredentials, TokenClient, credentials_for_endpoint,
};
use crate::engine::image::hosts::{Capabilities, RegistryHost, Scheme, hosts_for, is_localhost};
use crate::engine::image::reference::Reference;
use crate::engine::image::tls;
use crate::engine::oci::{Descriptor, media};
use crate::error::{Error, ErrorKind, Result};

/// The largest manifest or index accepted when resolving (containerd's limit).
pub const MAX_MANIFEST_SIZE: u64 = 4 * 1024 * 1024;
/// How long connecting to a host may take before the next host is tried (containerd's dial timeout).
const CONNECT_TIMEOUT: Duration = Duration::from_secs(30);
/// The most of an error answer's body read to explain the error.
const MAX_ERROR_BODY: usize = 16 * 1024;

/// Settings of the registry client.
#[derive(Debug, Clone)]
pub struct RegistryOptions {
    /// The `certs.d` directory with `<domain>/hosts.toml`.
    pub config_path: PathBuf,
    /// A Docker `config.json`: credentials per registry host, for every host a pull's own
    /// credentials are not for.
    pub auth_file: PathBuf,
    /// A request or body read that makes no progress for this long fails.
    pub progress_timeout: Duration,
    /// The `User-Agent` sent to registries.
    pub user_agent: String,
}

/// The registry client: long-lived and cheap to clone. HTTP clients are built per TLS setting
/// and reused, so connections to a registry are pooled across pulls.
#[derive(Clone)]
pub struct Registry {
    inner: Arc<RegistryInner>,
}

struct RegistryInner {
    opts: RegistryOptions,
    roots: RootCertStore,
    clients: Mutex<HashMap<ClientKey, reqwest::Client>>,
    warned_skip_verify: Mutex<HashSet<String>>,
}

/// What an HTTP client depends on: the TLS settings, the files' modification times (so that a
/// replaced certificate is picked up), and whether the host is local (never proxied).
#[derive(Clone, PartialEq, Eq, Hash)]
struct ClientKey {
    direct: bool,
    skip_verify: bool,
    ca: Vec<PathBuf>,
    client: Vec<(PathBuf, Option<PathBuf>)>,
    mtimes: Vec<Option<SystemTime>>,
}

impl ClientKey {
    fn of(h: &RegistryHost) -> ClientKey {
        let files = h.ca.iter().chain(h.client.iter().flat_map(|(c, k)| std::iter::once(c).chain(k)));
        let mtimes = files.map(|f| std::fs::metadata(f).and_then(|m| m.modified()).ok()).collect();
        ClientKey {
            direct: is_localhost(&h.host),
            skip_verify: h.skip_verify,
            ca: h.ca.clone(),
            client: h.client.clone(),
            mtimes,
        }
    }
}

/// A resolved reference: its name, the descriptor of its manifest or index, and a fetcher bound
/// to its repository (with the credentials and tokens of the resolve).
#[derive(Debug, Clone)]
pub struct Resolved {
    /// The reference as resolved (normalised string).
    pub name: String,
    pub descriptor: Descriptor,
    pub fetcher: Fetcher,
}

impl Registry {
    /// A registry client; loads the system CA certificates once.
    pub fn new(opts: RegistryOptions) -> Result<Registry> {
        if opts.progress_timeout.is_zero() {
            return Err(Error::invalid("registry progress timeout must be greater than zero"));
        }
        Ok(Registry {
            inner: Arc::new(RegistryInner {
                opts,
                roots: tls::system_roots(),
                clients: Mutex::new(HashMap::new()),
                warned_skip_verify: Mutex::new(HashSet::new()),
            }),
        })
    }

    /// Resolves a reference to the descriptor of its manifest or index, trying each host with the
    /// resolve capability in order (any pull host for a digest reference, which is self-verifying).
    /// `creds` go only to the host they are for (see [`Registry::fetcher`]).
    pub async fn resolve(&self, r: &Reference, creds: Option<Credentials>) -> Result<Resolved> {
        let fetcher = self.fetcher(r, creds)?;
        let descriptor = fetcher.resolve(r).await?;
        Ok(Resolved { name: r.to_string(), descriptor, fetcher })
    }

    /// A fetcher for the repository of `r`, without resolving anything (for content whose
    /// descriptors are already known). Each host of the pull gets only credentials for itself:
    /// `creds` (the pull request's, for their `server_address` or else the image's registry) when
    /// they are for it, else the credentials file's entry for it; and none over plain HTTP unless
    /// its configuration allows that.
    pub fn fetcher(&self, r: &Reference, creds: Option<Credentials>) -> Result<Fetcher> {
        let opts = &self.inner.opts;
        let mut endpoints = Vec::new();
        for host in hosts_for(&opts.config_path, &r.domain)? {
            let http = self.http_client(&host)?;
            let mut headers = HeaderMap::new();
            for (name, values) in &host.header {
                let bad =
                    || Error::invalid(format!("invalid header {name:?} for registry host {}", host.host));
                let name = HeaderName::from_bytes(name.as_bytes()).map_err(|_| bad())?;
                for v in values {
                    headers.append(name.clone(), HeaderValue::from_str(v).map_err(|_| bad())?);
                }
            }
            let creds = credentials_for_endpoint(&host, creds.as_ref(), &r.domain, |h| {
                Credentials::from_docker_config(&opts.auth_file, h)
            })?;
            if creds.withheld_over_http {
                tracing::debug!(host = %host.host, "credentials for registry host not sent: plain http");
            }
            endpoints.push(Endpoint { auth_key: host.base_url(), host, http, headers, creds });
        }
        Ok(Fetcher {
            inner: Arc::new(FetcherInner {
                name: r.name(),
                domain: r.domain.clone(),
                repository: r.repository.clone(),
                scope: format!("repository:{}:pull", r.repository),
                endpoints,
                auth: Authorizer::default(),
                timeout: opts.progress_timeout,
                last_host: Mutex::new(String::new()),
            }),
        })
    }

    fn http_client(&self, host: &RegistryHost) -> Result<reqwest::Client> {
        if host.skip_verify && host.scheme == Scheme::Https {
            let mut warned = self.inner.warned_skip_verify.lock().unwrap_or_else(|e| e.into_inner());
            if warned.insert(host.host.clone()) {
                tracing::warn!(host = %host.host, "tls certificate verification is disabled for registry host (skip_verify)");
            }
        }
        let key = ClientKey::of(host);
        if let Some(c) = self.inner.clients.lock().unwrap_or_else(|e| e.into_inner()).get(&key) {
            return Ok(c.clone());
        }
        let tls = tls::client_config(&self.inner.roots, host)?;
        let opts = &self.inner.opts;
        let user_agent = if opts.user_agent.is_empty() {
            concat!("berth/", env!("CARGO_PKG_VERSION"))
        } else {
            &opts.user_agent
        };
        let mut builder = reqwest::Client::builder()
            .tls_backend_preconfigured(tls)
            .user_agent(user_agent)
            .connect_timeout(CONNECT_TIMEOUT.min(opts.progress_timeout))
            .dns_resolver(super::dns::SystemResolver);
        if key.direct {
            // As in Go (and so containerd), loopback registries are never reached through a proxy.
            builder = builder.no_proxy();
        }
        let client = builder.build().map_err(|e| {
            Error::internal(format!("building http client for registry host {}: {e}", host.host))
        })?;
        self.inner.clients.lock().unwrap_or_else(|e| e.into_inner()).insert(key, client.clone());
        Ok(client)
    }
}

/// Fetches manifests and blobs of one repository, trying its pull hosts in order. Clones share
/// the credentials and the token cache.
#[derive(Clone)]
pub struct Fetcher {
    inner: Arc<FetcherInner>,
}

struct FetcherInner {
    /// `domain/repository`, for messages.
    name: String,
    domain: String,
    repository: String,
    scope: String,
    endpoints: Vec<Endpoint>,
    auth: Authorizer,
    timeout: Duration,
    last_host: Mutex<String>,
}

struct Endpoint {
    host: RegistryHost,
    /// `scheme://host`, what challenges and tokens are kept under.
    auth_key: String,
    http: reqwest::Client,
    headers: HeaderMap,
    creds: EndpointCredentials,
}

impl Endpoint {
    fn auth_target(&self) -> AuthTarget<'_> {
        AuthTarget { key: &self.auth_key, host: &self.host, creds: self.creds.creds.as_ref() }
    }
}

impl fmt::Debug for Fetcher {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let hosts: Vec<String> = self.inner.endpoints.iter().map(|e| e.host.base_url()).collect();
        f.debug_struct("Fetcher").field("name", &self.inner.name).field("hosts", &hosts).finish()
    }
}

impl Fetcher {
    /// The host that answered last, for logs and metrics.
    pub fn host(&self) -> String {
        self.inner.last_host.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// A manifest, index or config, verified against `desc.digest` and `desc.size`; refused if
    /// `desc.size` is over `max`.
    pub async fn fetch_bytes(&self, desc: &Descriptor, max: u64) -> Result<Bytes> {
        let size = u64::try_from(desc.size).map_err(|_| {
            Error::invalid(format!("invalid size {} of {} in {}", desc.size, desc.digest, self.inner.name))
        })?;
        if size > max {
            return Err(Error::invalid(format!(
                "{} of {} is {size} bytes, over the {max} byte limit",
                desc.digest, self.inner.name
            )));
        }
        let what = format!("fetching {} of {}", desc.digest, self.inner.name);
        let mut failures = Vec::new();
        for ep in self.endpoints(|c| c.pull) {
            let attempt = async {
                let resp = self.get_object(ep, desc, None, &what).await?;
                let body = self.read_body(ep, resp, size, &what).await?;
                let Some(body) = body else {
                    return Err(mismatch(&what, ep, format!("more than the descriptor's {size} bytes")));
                };
                if body.len() as u64 != size {
                    return Err(mismatch(&what, ep, format!("{} bytes instead of {size}", body.len())));
                }
                let actual = Digest::of(&body);
                if actual != desc.digest {
                    return Err(mismatch(&what, ep, format!("digest mismatch: content is {actual}")));
                }
                Ok(body)
            };
            match attempt.await {
                Ok(body) => {
                    self.answered(ep);
                    return Ok(body);
                }
                Err(e) => self.failed(ep, e, &mut failures),
            }
        }
        Err(pick_error(failures, || {
            Error::not_found(format!("{} of {} not found", desc.digest, self.inner.name))
        }))
    }

    /// A blob from `offset` (a Range request when `offset` > 0). [`BlobStream::offset`] says where
    /// the stream really starts: 0 when the server ignored the range (or `offset` is not inside the
    /// blob). The stream is not verified; a stall longer than the progress timeout ends it with
    /// DeadlineExceeded.
    pub async fn fetch_blob(&self, desc: &Descriptor, offset: u64) -> Result<BlobStream> {
        let range = (offset > 0 && i64::try_from(offset).is_ok_and(|o| o < desc.size)).then_some(offset);
        let what = format!("fetching {} of {}", desc.digest, self.inner.name);
        let mut failures = Vec::new();
        for ep in self.endpoints(|c| c.pull) {
            let attempt = async {
                let resp = self.get_object(ep, desc, range, &what).await?;
                let honoured = match (range, resp.status()) {
                    (Some(o), StatusCode::PARTIAL_CONTENT) => {
                        let cr =
                            resp.headers().get(CONTENT_RANGE).and_then(|v| v.to_str().ok()).unwrap_or("");
                        if !cr.starts_with(&format!("bytes {o}-")) {
                            return Err(Error::unavailable(format!(
                                "{what}: {} answered an unexpected content range {cr:?}",
                                ep.host.host
                            )));
                        }
                        o
                    }
                    _ => 0,
                };
                Ok(BlobStream::new(resp, honoured, ep.host.host.clone(), what.clone(), self.inner.timeout))
            };
            match attempt.await {
                Ok(stream) => {
                    self.answered(ep);
                    return Ok(stream);
                }
                Err(e) => self.failed(ep, e, &mut failures),
            }
        }
        Err(pick_error(failures, || {
            Error::not_found(format!("{} of {} not found", desc.digest, self.inner.name))
        }))
    }

    async fn resolve(&self, r: &Reference) -> Result<Descriptor> {
        let object = match (&r.digest, &r.tag) {
            (Some(d), _) => d.to_string(),
            (None, Some(t)) => t.clone(),
            (None, None) => return Err(Error::invalid(format!("reference {r} has neither tag nor digest"))),
        };
        let by_digest = r.digest.is_some();
        let what = format!("resolving {r}");
        let mut failures = Vec::new();
        let mut tried = false;
        for ep in self.endpoints(|c| c.pull && (by_digest || c.resolve)) {
            tried = true;
            match self.resolve_on(ep, r, &object, &what).await {
                Ok(desc) => {
                    self.answered(ep);
                    return Ok(desc);
                }
                Err(e) => self.failed(ep, e, &mut failures),
            }
        }
        if !tried {
            return Err(Error::not_found(format!(
                "resolving {r}: no registry host of {} has the resolve capability",
                r.domain
            )));
        }
        Err(pick_error(failures, || Error::not_found(format!("image {:?} not found", r.to_string()))))
    }

    async fn resolve_on(&self, ep: &Endpoint, r: &Reference, object: &str, what: &str) -> Result<Descriptor> {
        let url = self.url(ep, "manifests", object);
        let accept = HeaderValue::from_static(media::MANIFEST_ACCEPT);
        let mut head = true;
        let mut resp = self.send(ep, Method::HEAD, &url, &[(ACCEPT, accept.clone())], what).await?;
        if resp.status() == StatusCode::METHOD_NOT_ALLOWED {
            // Some registries do not implement HEAD on manifests.
            head = false;
            resp = self.send(ep, Method::GET, &url, &[(ACCEPT, accept.clone())], what).await?;
        }
        let resp = self.check(ep, resp, what).await?;
        let headers = resp.headers();
        let media_type = content_type(headers);
        let length =
            headers.get(CONTENT_LENGTH).and_then(|v| v.to_str().ok()).and_then(|v| v.parse::<u64>().ok());
        let header_digest = match headers.get("docker-content-digest") {
            None => None,
            Some(v) => Some(v.to_str().ok().and_then(|v| Digest::parse(v).ok()).ok_or_else(|| {
                Error::unavailable(format!("{what}: {} sent an invalid Docker-Content-Digest", ep.host.host))
            })?),
        };
        let digest = r.digest.clone().or(header_digest.clone());

        if let (true, Some(digest), Some(size), false) = (head, &digest, length, media_type.is_empty()) {
            if size > MAX_MANIFEST_SIZE {
                return Err(too_large(what, ep, size));
            }
            return Ok(Descriptor::new(media_type, digest.clone(), size as i64));
        }

        // No digest, size or type in the answer to HEAD: fetch the manifest and hash it.
        let resp = if head {
            let resp = self.send(ep, Method::GET, &url, &[(ACCEPT, accept)], what).await?;
            self.check(ep, resp, what).await?
        } else {
            resp
        };
        let media_type = content_type(resp.headers());
        let Some(body) = self.read_body(ep, resp, MAX_MANIFEST_SIZE, what).await? else {
            return Err(too_large(what, ep, MAX_MANIFEST_SIZE + 1));
        };
        let actual = Digest::of(&body);
        if let Some(expected) = r.digest.as_ref().or(header_digest.as_ref())
            && *expected != actual
        {
            return Err(mismatch(
                what,
                ep,
                format!("digest mismatch: manifest is {actual}, expected {expected}"),
            ));
        }
        let media_type = if media_type.is_empty() {
            crate::engine::oci::probe_media_type(&body).unwrap_or_default()
        } else {
            media_type
        };
        Ok(Descriptor::new(media_type, actual, body.len() as i64))
    }

    /// GET of a manifest (manifests endpoint) or blob, checked for a successful status.
    async fn get_object(
        &self,
        ep: &Endpoint,
        desc: &Descriptor,
        range: Option<u64>,
        what: &str,
    ) -> Result<reqwest::Response> {
        let manifest = desc.is_index()
            || desc.is_manifest()
            || desc.media_type == media::DOCKER_SCHEMA1
            || desc.media_type == media::DOCKER_SCHEMA1_SIGNED;
        let (kind, accept) = if manifest {
            (
                "manifests",
                HeaderValue::from_str(&format!("{}, */*", desc.media_type))
                    .unwrap_or(HeaderValue::from_static(media::MANIFEST_ACCEPT)),
            )
        } else {
            ("blobs", HeaderValue::from_static("*/*"))
        };
        let url = self.url(ep, kind, &desc.digest.to_string());
        let mut headers = vec![(ACCEPT, accept)];
        if let Some(o) = range {
            headers.push((RANGE, HeaderValue::from_str(&format!("bytes={o}-")).expect("ascii range")));
        }
        let resp = self.send(ep, Method::GET, &url, &headers, what).await?;
        self.check(ep, resp, what).await
    }

    /// Sends a request with the host's headers and authorization; on a 401 learns the challenge
    /// and retries once with fresh authorization. Any status comes back; transport failures and
    /// stalls are errors.
    async fn send(
        &self,
        ep: &Endpoint,
        method: Method,
        url: &reqwest::Url,
        headers: &[(HeaderName, HeaderValue)],
        what: &str,
    ) -> Result<reqwest::Response> {
        let inner = &self.inner;
        let host = &ep.host.host;
        let tc = TokenClient { http: &ep.http, headers: &ep.headers, timeout: inner.timeout };
        let mut retried = false;
        loop {
            let mut req = ep.http.request(method.clone(), url.clone()).headers(ep.headers.clone());
            for (k, v) in headers {
                req = req.header(k, v);
            }
            let target = ep.auth_target();
            if let Some(a) =
                inner.auth.authorization(&tc, &target, &inner.scope).await.map_err(|e| e.context(what))?
            {
                let mut v = HeaderValue::from_str(&a).map_err(|_| {
                    Error::invalid(format!("{what}: credentials for {host} are not valid in a header"))
                })?;
                v.set_sensitive(true);
                req = req.header(AUTHORIZATION, v);
            }
            let resp = tokio::time::timeout(inner.timeout, req.send())
                .await
                .map_err(|_| stalled(what, host, inner.timeout))?
                .map_err(|e| transport_error(what, host, e))?;
            if resp.status() == StatusCode::UNAUTHORIZED && !retried {
                let challenge = resp.headers().get(WWW_AUTHENTICATE).and_then(|v| v.to_str().ok());
                if inner.auth.unauthorized(&target, challenge, &inner.scope).await {
                    retried = true;
                    continue;
                }
            }
            return Ok(resp);
        }
    }

    /// Turns an unsuccessful status into an error that says what it means.
    async fn check(&self, ep: &Endpoint, resp: reqwest::Response, what: &str) -> Result<reqwest::Response> {
        let status = resp.status();
        if status.is_success() {
            return Ok(resp);
        }
        let host = &ep.host.host;
        let detail = self.error_detail(resp).await;
        Err(match status.as_u16() {
            401 => {
                let why = if ep.creds.creds.is_some() {
                    "the credentials were rejected"
                } else if ep.creds.withheld_over_http {
                    "the registry requires credentials, and credentials are not sent over plain http \
                     unless the registry's own hosts.toml names it with an http:// server"
                } else {
                    "the registry requires credentials and none were given for it"
                };
                Error::new(
                    ErrorKind::Unauthenticated,
                    format!("{what}: authentication failed for {host}: {why}{detail}"),
                )
            }
            403 => Error::new(
                ErrorKind::PermissionDenied,
                format!("{what}: access denied by {host} (403 Forbidden){detail}"),
            ),
            404 => Error::not_found(format!("{what}: not found on {host}{detail}")),
            _ => Error::unavailable(format!("{what}: {host} answered {status}{detail}")),
        })
    }

    /// `: CODE: message` from a distribution-spec error body, if there is one.
    async fn error_detail(&self, mut resp: reqwest::Response) -> String {
        #[derive(Deserialize)]
        struct Errors {
            errors: Vec<ErrorEntry>,
        }
        #[derive(Deserialize)]
        struct ErrorEntry {
            #[serde(default)]
            code: String,
            #[serde(default)]
            message: String,
        }
        let mut body = Vec::new();
        let deadline = tokio::time::Instant::now() + self.inner.timeout.min(Duration::from_secs(5));
        while body.len() < MAX_ERROR_BODY {
            match tokio::time::timeout_at(deadline, resp.chunk()).await {
                Ok(Ok(Some(c))) => body.extend_from_slice(&c),
                _ => break,
            }
        }
        match serde_json::from_slice::<Errors>(&body) {
            Ok(e) if !e.errors.is_empty() => {
                let parts: Vec<String> = e
                    .errors
                    .iter()
                    .map(|x| format!("{}: {}", x.code, x.message.chars().take(200).collect::<String>()))
                    .collect();
                format!(": {}", parts.join("; "))
            }
            _ => String::new(),
        }
    }

    /// The whole body, or None if it is longer than `limit`.
    async fn read_body(
        &self,
        ep: &Endpoint,
        mut resp: reqwest::Response,
        limit: u64,
        what: &str,
    ) -> Result<Option<Bytes>> {
        let host = &ep.host.host;
        let mut body = BytesMut::new();
        while let Some(chunk) = tokio::time::timeout(self.inner.timeout, resp.chunk())
            .await
            .map_err(|_| stalled(what, host, self.inner.timeout))?
            .map_err(|e| transport_error(what, host, e))?
        {
            if (body.len() + chunk.len()) as u64 > limit {
                return Ok(None);
            }
            body.extend_from_slice(&chunk);
        }
        Ok(Some(body.freeze()))
    }

    fn url(&self, ep: &Endpoint, kind: &str, object: &str) -> reqwest::Url {
        let h = &ep.host;
        let s = format!("{}{}/{}/{kind}/{object}", h.base_url(), h.path, self.inner.repository);
        let mut url = reqwest::Url::parse(&s).expect("registry url from validated parts");
        if h.is_mirror_for(&self.inner.domain) {
            url.query_pairs_mut().append_pair("ns", &self.inner.domain);
        }
        url
    }

    fn endpoints(&self, cap: impl Fn(&Capabilities) -> bool) -> impl Iterator<Item = &Endpoint> {
        self.inner.endpoints.iter().filter(move |e| cap(&e.host.capabilities))
    }

    fn answered(&self, ep: &Endpoint) {
        *self.inner.last_host.lock().unwrap_or_else(|e| e.into_inner()) = ep.host.host.clone();
    }

    fn failed(&self, ep: &Endpoint, e: Error, failures: &mut Vec<Error>) {
        tracing::info!(host = %ep.host.host, name = %self.inner.name, error = %e, "registry host failed, trying the next one");
        failures.push(e);
    }
}

/// The content type without parameters (`application/json; charset=utf-8` → `application/json`).
fn content_type(h: &HeaderMap) -> String {
    let ct = h.get(CONTENT_TYPE).and_then(|v| v.to_str().ok()).unwrap_or("");
    let ct = ct.split(';').next().unwrap_or("").trim();
    // Servers that know nothing better say so; the document itself may tell.
    if ct == "application/octet-stream" || ct == "text/plain" { String::new() } else { ct.to_string() }
}

fn too_large(what: &str, ep: &Endpoint, size: u64) -> Error {
    Error::invalid(format!(
        "{what}: {} serves a manifest of {size} bytes, over the {MAX_MANIFEST_SIZE} byte limit",
        ep.host.host
    ))
}

fn mismatch(what: &str, ep: &Endpoint, why: String) -> Error {
    Error::precondition(format!("{what}: {} sent bad content: {why}", ep.host.host))
}

fn stalled(what: &str, host: &str, timeout: Duration) -> Error {
    Error::new(
        ErrorKind::DeadlineExceeded,
        format!("{what}: {host} made no progress for {}", go_duration(timeout)),
    )
}

/// The error of a failed HTTP exchange (connection refused, TLS, reset…), naming the host. The
/// URL is left out: a redirect target may carry signed query parameters.
pub(crate) fn transport_error(what: &str, host: &str, e: reqwest::Error) -> Error {
    let kind = if e.is_timeout() { ErrorKind::DeadlineExceeded } else { ErrorKind::Unavailable };
    let e = e.without_url();
    // reqwest's own message is terse ("error sending request"); the causes say what happened.
    let mut msg = e.to_string();
    let mut source = std::error::Error::source(&e);
    while let Some(s) = source {
        let s_msg = s.to_string();
        if !msg.ends_with(&s_msg) {
            msg.push_str(": ");
            msg.push_str(&s_msg);
        }
        source = s.source();
    }
    Error::new(kind, format!("{what}: {host}: {msg}"))
}

/// The most meaningful of the errors of all hosts: an authentication failure, then bad content,
/// then "not found" (as `not_found` words it), then a stall, then unreachable hosts (all named).
fn pick_error(failures: Vec<Error>, not_found: impl FnOnce() -> Error) -> Error {
    let rank = |e: &Error| match e.kind() {
        ErrorKind::Unauthenticated | ErrorKind::PermissionDenied => 5,
        ErrorKind::InvalidArgument | ErrorKind::FailedPrecondition => 4,
        ErrorKind::NotFound => 3,
        ErrorKind::DeadlineExceeded => 2,
        _ => 1,
    };
    let Some(best) = failures.iter().map(rank).max() else { return not_found() };
    match best {
        3 => not_found(),
        1 => {
            let msgs: Vec<&str> = failures.iter().filter(|e| rank(e) == 1).map(|e| e.message()).collect();
            let kind =
                failures.iter().find(|e| rank(e) == 1).map(Error::kind).unwrap_or(ErrorKind::Unavailable);
            Error::new(kind, msgs.join("; "))
        }
        _ => failures.into_iter().find(|e| rank(e) == best).expect("a failure of the best rank"),
    }
}

/// A duration as Go prints it (`5m0s`, `1.5s`, `300ms`), the form containerd users know.
pub(crate) fn go_duration(d: Duration) -> String {
    if d < Duration::from_secs(1) {
        return format!("{}ms", d.as_millis());
    }
    let secs = d.as_secs();
    let (h, m, s) = (secs / 3600, secs / 60 % 60, secs % 60);
    let mut out = String::new();
    if h > 0 {
        out.push_str(&format!("{h}h"));
    }
    if h > 0 || m > 0 {
        out.push_str(&format!("{m}m"));
    }
    let nanos = d.subsec_nanos();
    if nanos == 0 {
        out.push_str(&format!("{s}s"));
    } else {
        let frac = format!("{nanos:09}");
        out.push_str(&format!("{s}.{}s", frac.trim_end_matches('0')));
    }
    out
}

/// A blob being downloaded: a stream of chunks. Each chunk must arrive within the progress
/// timeout of the moment the consumer asked for it, or the stream ends with DeadlineExceeded.
pub struct BlobStream {
    body: Pin<Box<dyn Stream<Item = reqwest::Result<Bytes>> + Send>>,
    offset: u64,
    host: String,
    what: String,
    timeout: Duration,
    deadline: Pin<Box<tokio::time::Sleep>>,
    /// Whether `deadline` runs for the chunk being waited for.
    armed: bool,
    done: bool,
}

impl BlobStream {
    fn new(
        resp: reqwest::Response,
        offset: u64,
        host: String,
        what: String,
        timeout: Duration,
    ) -> BlobStream {
        BlobStream {
            body: Box::pin(resp.bytes_stream()),
            offset,
            host,
            what,
            timeout,
            deadline: Box::pin(tokio::time::sleep(timeout)),
            armed: false,
            done: false,
        }
    }

    /// Where in the blob the stream starts: the requested offset if the server honoured the
    /// range, else 0.
    pub fn offset(&self) -> u64 {
        self.offset
    }

    /// The host serving the blob.
    pub fn host(&self) -> &str {
        &self.host
    }
}

impl fmt::Debug for BlobStream {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BlobStream").field("host", &self.host).field("offset", &self.offset).finish()
    }
}

impl Stream for BlobStream {
    type Item = Result<Bytes>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut TaskContext<'_>) -> Poll<Option<Self::Item>> {
        let this = &mut *self;
        if this.done {
            return Poll::Ready(None);
        }
        if !this.armed {
            let at = tokio::time::Instant::now() + this.timeout;
            this.deadline.as_mut().reset(at);
            this.armed = true;
        }
        match this.body.as_mut().poll_next(cx) {
            Poll::Ready(Some(Ok(chunk))) => {
                this.armed = false;
                Poll::Ready(Some(Ok(chunk)))
            }
            Poll::Ready(Some(Err(e))) => {
                this.done = true;
                Poll::Ready(Some(Err(transport_error(&this.what, &this.host, e))))
            }
            Poll::Ready(None) => {
                this.done = true;
                Poll::Ready(None)
            }
            Poll::Pending => match this.deadline.as_mut().poll(cx) {
                Poll::Ready(()) => {
                    this.done = true;
                    Poll::Ready(Some(Err(stalled(&this.what, &this.host, this.timeout))))
                }
                Poll::Pending => Poll::Pending,
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use futures_util::StreamExt as _;

    use super::*;
    use crate::engine::image::fake_registry::{FakeAuth, FakeRegistry, TestPki};

    const REPO: &str = "team/app";

    struct Setup {
        _tmp: tempfile::TempDir,
        dir: PathBuf,
    }

    impl Setup {
        fn new() -> Setup {
            let tmp = tempfile::tempdir().unwrap();
            let dir = tmp.path().to_path_buf();
            Setup { _tmp: tmp, dir }
        }
        fn registry(&self, timeout: Duration) -> Registry {
            Registry::new(RegistryOptions {
                config_path: self.dir.join("certs.d"),
                auth_file: self.dir.join("config.json"),
                progress_timeout: timeout,
                user_agent: "berth-test".into(),
            })
            .unwrap()
        }
        fn hosts_toml(&self, domain: &str, text: &str) {
            let d = self.dir.join("certs.d").join(domain);
            std::fs::create_dir_all(&d).unwrap();
            std::fs::write(d.join("hosts.toml"), text).unwrap();
        }
        fn file(&self, rel: &str, text: &str) -> PathBuf {
            let p = self.dir.join(rel);
            std::fs::create_dir_all(p.parent().unwrap()).unwrap();
            std::fs::write(&p, text).unwrap();
            p
        }
    }

    /// An image: config and layer blobs, and a manifest tagged `v1`.
    struct Image {
        manifest: Descriptor,
        manifest_body: Vec<u8>,
        config: Descriptor,
        layer: Descriptor,
        layer_body: Vec<u8>,
    }

    fn push_image(reg: &FakeRegistry) -> Image {
        let config_body =
            br#"{"architecture":"amd64","os":"linux","rootfs":{"type":"layers","diff_ids":[]}}"#;
        let layer_body: Vec<u8> = (0..200u8).collect();
        let config =
            Descriptor::new(media::OCI_CONFIG, reg.push_blob(REPO, config_body), config_body.len() as i64);
        let layer =
            Descriptor::new(media::OCI_LAYER_GZIP, reg.push_blob(REPO, &layer_body), layer_body.len() as i64);
        let manifest_body = serde_json::to_vec(&serde_json::json!({
            "schemaVersion": 2,
            "mediaType": media::OCI_MANIFEST,
            "config": config,
            "layers": [layer],
        }))
        .unwrap();
        let d = reg.push_manifest(REPO, Some("v1"), media::OCI_MANIFEST, &manifest_body);
        let manifest = Descriptor::new(media::OCI_MANIFEST, d, manifest_body.len() as i64);
        Image { manifest, manifest_body, config, layer, layer_body }
    }

    fn reference(reg: &FakeRegistry, tail: &str) -> Reference {
        Reference::parse(&format!("{}/{REPO}{tail}", reg.host())).unwrap()
    }

    async fn collect(mut s: BlobStream) -> Result<Vec<u8>> {
        let mut out = Vec::new();
        while let Some(chunk) = s.next().await {
            out.extend_from_slice(&chunk?);
        }
        Ok(out)
    }

    /// A port nothing listens on.
    async fn dead_port() -> u16 {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        l.local_addr().unwrap().port()
    }

    const T: Duration = Duration::from_secs(10);

    #[tokio::test]
    async fn resolve_by_tag_and_fetch() {
        let reg = FakeRegistry::start().await;
        let img = push_image(&reg);
        let s = Setup::new();
        let r = reference(&reg, ":v1");
        let resolved = s.registry(T).resolve(&r, None).await.unwrap();
        assert_eq!(resolved.name, format!("{}/{REPO}:v1", reg.host()));
        assert_eq!(resolved.descriptor, img.manifest);
        let f = &resolved.fetcher;
        assert_eq!(f.host(), reg.host());
        assert_eq!(f.fetch_bytes(&img.manifest, MAX_MANIFEST_SIZE).await.unwrap(), img.manifest_body);
        let config = f.fetch_bytes(&img.config, MAX_MANIFEST_SIZE).await.unwrap();
        assert_eq!(Digest::of(&config), img.config.digest);
        let blob = f.fetch_blob(&img.layer, 0).await.unwrap();
        assert_eq!(blob.offset(), 0);
        assert_eq!(collect(blob).await.unwrap(), img.layer_body);

        let reqs = reg.api_requests();
        assert_eq!(reqs[0].method, Method::HEAD);
        assert_eq!(reqs[0].path, format!("/v2/{REPO}/manifests/v1"));
        let accept = reqs[0].headers.get(ACCEPT).unwrap().to_str().unwrap();
        assert!(accept.contains(media::OCI_INDEX) && accept.contains(media::DOCKER_MANIFEST), "{accept}");
        assert_eq!(reqs[1].path, format!("/v2/{REPO}/manifests/{}", img.manifest.digest));
        assert_eq!(reqs[2].path, format!("/v2/{REPO}/blobs/{}", img.config.digest));
        assert!(reqs.iter().all(|r| r.query.is_empty()), "no ns= for the upstream");
        assert_eq!(reqs[0].headers.get("user-agent").unwrap(), "berth-test");
    }

    #[tokio::test]
    async fn resolve_by_digest() {
        let reg = FakeRegistry::start().await;
        let img = push_image(&reg);
        let s = Setup::new();
        let r = reference(&reg, &format!("@{}", img.manifest.digest));
        let resolved = s.registry(T).resolve(&r, None).await.unwrap();
        assert_eq!(resolved.descriptor, img.manifest);
        assert_eq!(resolved.name, format!("{}/{REPO}@{}", reg.host(), img.manifest.digest));
        assert_eq!(reg.api_requests()[0].path, format!("/v2/{REPO}/manifests/{}", img.manifest.digest));
    }

    #[tokio::test]
    async fn head_without_digest_falls_back_to_get() {
        let reg = FakeRegistry::start().await;
        let img = push_image(&reg);
        reg.state().omit_digest_header = true;
        let s = Setup::new();
        let resolved = s.registry(T).resolve(&reference(&reg, ":v1"), None).await.unwrap();
        assert_eq!(resolved.descriptor, img.manifest);
        let methods: Vec<Method> = reg.api_requests().iter().map(|r| r.method.clone()).collect();
        assert_eq!(methods, [Method::HEAD, Method::GET]);

        // A registry without HEAD on manifests.
        let reg2 = FakeRegistry::start().await;
        let img2 = push_image(&reg2);
        reg2.state().no_head = true;
        let resolved = s.registry(T).resolve(&reference(&reg2, ":v1"), None).await.unwrap();
        assert_eq!(resolved.descriptor, img2.manifest);
    }

    #[tokio::test]
    async fn resolve_by_digest_verifies_a_fetched_manifest() {
        let reg = FakeRegistry::start().await;
        let img = push_image(&reg);
        {
            // Without HEAD the manifest is fetched, and what is fetched is checked.
            let mut st = reg.state();
            st.no_head = true;
            let key = (REPO.to_string(), img.manifest.digest.to_string());
            st.manifests.get_mut(&key).unwrap().1 = Bytes::from_static(b"{\"schemaVersion\":2,\"evil\":1}");
        }
        let s = Setup::new();
        let r = reference(&reg, &format!("@{}", img.manifest.digest));
        let err = s.registry(T).resolve(&r, None).await.unwrap_err();
        assert_eq!(err.kind(), ErrorKind::FailedPrecondition, "{err}");
        assert!(err.to_string().contains("digest mismatch"), "{err}");
    }

    #[tokio::test]
    async fn not_found_on_every_host() {
        let reg = FakeRegistry::start().await;
        push_image(&reg);
        let s = Setup::new();
        let r = reference(&reg, ":nope");
        let err = s.registry(T).resolve(&r, None).await.unwrap_err();
        assert_eq!(err.kind(), ErrorKind::NotFound);
        assert_eq!(err.to_string(), format!("image \"{r}\" not found"));
    }

    #[tokio::test]
    async fn mirrors_are_tried_in_order() {
        let mirror = FakeRegistry::start().await; // has nothing: 404
        let upstream = FakeRegistry::start().await;
        let img = push_image(&upstream);
        let dead = dead_port().await;
        let s = Setup::new();
        s.hosts_toml(
            "registry.test",
            &format!(
                "server = \"http://{up}\"\n\
                 [host.\"http://127.0.0.1:{dead}\"]\n  capabilities = [\"pull\", \"resolve\"]\n\
                 [host.\"http://{m}\"]\n  capabilities = [\"pull\", \"resolve\"]\n",
                up = upstream.host(),
                m = mirror.host()
            ),
        );
        let r = Reference::parse(&format!("registry.test/{REPO}:v1")).unwrap();
        let resolved = s.registry(T).resolve(&r, None).await.unwrap();
        assert_eq!(resolved.descriptor, img.manifest);
        assert_eq!(resolved.fetcher.host(), upstream.host());
        let blob = resolved.fetcher.fetch_blob(&img.layer, 0).await.unwrap();
        assert_eq!(blob.host(), upstream.host());
        assert_eq!(collect(blob).await.unwrap(), img.layer_body);

        let m = mirror.api_requests();
        assert_eq!(m.len(), 2, "resolve and blob tried on the mirror first");
        assert!(m.iter().all(|r| r.query == "ns=registry.test"), "{m:?}");
        assert!(
            upstream.api_requests().iter().all(|r| r.query == "ns=registry.test"),
            "server is not the domain"
        );

        // Once the mirror has the content, it answers, pull-only mirrors included.
        let img2 = push_image(&mirror);
        s.hosts_toml(
            "registry.test",
            &format!(
                "server = \"http://{up}\"\n[host.\"http://{m}\"]\n  capabilities = [\"pull\"]\n",
                up = upstream.host(),
                m = mirror.host()
            ),
        );
        let resolved = s.registry(T).resolve(&r, None).await.unwrap();
        assert_eq!(resolved.fetcher.host(), upstream.host(), "a pull-only mirror never resolves tags");
        let blob = resolved.fetcher.fetch_blob(&img2.layer, 0).await.unwrap();
        assert_eq!(blob.host(), mirror.host());
    }

    #[tokio::test]
    async fn unreachable_hosts_are_named() {
        let (a, b) = (dead_port().await, dead_port().await);
        let s = Setup::new();
        s.hosts_toml(
            "registry.test",
            &format!("server = \"http://127.0.0.1:{a}\"\n[host.\"http://127.0.0.1:{b}\"]\n"),
        );
        let r = Reference::parse("registry.test/x:v1").unwrap();
        let err = s.registry(T).resolve(&r, None).await.unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Unavailable, "{err}");
        let msg = err.to_string();
        assert!(msg.contains(&format!("127.0.0.1:{a}")) && msg.contains(&format!("127.0.0.1:{b}")), "{msg}");

        // 5xx everywhere is Unavailable too, with the registry's explanation.
        let reg = FakeRegistry::start().await;
        reg.state().status = Some(503);
        let err = s.registry(T).resolve(&reference(&reg, ":v1"), None).await.unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Unavailable);
        assert!(err.to_string().contains("503"), "{err}");
        let f = s.registry(T).fetcher(&reference(&reg, ":v1"), None).unwrap();
        let err =
            f.fetch_bytes(&Descriptor::new(media::OCI_CONFIG, Digest::of(b"x"), 1), 10).await.unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Unavailable);
        assert!(err.to_string().contains("UNAVAILABLE: fake failure"), "{err}");
    }

    #[tokio::test]
    async fn bearer_tokens_are_fetched_once_per_scope() {
        let reg = FakeRegistry::start().await;
        let img = push_image(&reg);
        reg.state().auth = FakeAuth::Bearer { creds: None, refresh_token: None };
        let s = Setup::new();
        let resolved = s.registry(T).resolve(&reference(&reg, ":v1"), None).await.unwrap();
        let f = &resolved.fetcher;
        f.fetch_bytes(&img.manifest, MAX_MANIFEST_SIZE).await.unwrap();
        f.fetch_bytes(&img.config, MAX_MANIFEST_SIZE).await.unwrap();
        assert_eq!(collect(f.fetch_blob(&img.layer, 0).await.unwrap()).await.unwrap(), img.layer_body);
        {
            let st = reg.state();
            assert_eq!(st.tokens_issued, 1);
            let token_req = st.requests.iter().find(|r| r.path == "/token").unwrap();
            assert!(token_req.authorization().is_none(), "anonymous");
            assert!(token_req.query.contains("service=fake"), "{}", token_req.query);
            assert!(token_req.query.contains("scope=repository%3Ateam%2Fapp%3Apull"), "{}", token_req.query);
            let api: Vec<&str> = st
                .requests
                .iter()
                .filter(|r| r.path != "/token")
                .map(|r| r.authorization().unwrap_or("-"))
                .collect();
            assert_eq!(api, ["-", "Bearer tok1", "Bearer tok1", "Bearer tok1", "Bearer tok1"]);
        }

        // A revoked (or expired) token is replaced on the next 401.
        reg.state().tokens.clear();
        f.fetch_bytes(&img.config, MAX_MANIFEST_SIZE).await.unwrap();
        assert_eq!(reg.state().tokens_issued, 2);
    }

    #[tokio::test]
    async fn expired_tokens_are_renewed_up_front() {
        let reg = FakeRegistry::start().await;
        let img = push_image(&reg);
        reg.state().auth = FakeAuth::Bearer { creds: None, refresh_token: None };
        reg.state().token_expires_in = Some(1);
        let s = Setup::new();
        let f = s.registry(T).resolve(&reference(&reg, ":v1"), None).await.unwrap().fetcher;
        tokio::time::sleep(Duration::from_millis(1100)).await;
        f.fetch_bytes(&img.config, MAX_MANIFEST_SIZE).await.unwrap();
        let auths: Vec<Option<String>> =
            reg.api_requests().iter().map(|r| r.authorization().map(str::to_string)).collect();
        assert_eq!(auths, [None, Some("Bearer tok1".into()), Some("Bearer tok2".into())]);
    }

    #[tokio::test]
    async fn tokens_that_never_expire_are_kept_without_overflowing_the_clock() {
        let reg = FakeRegistry::start().await;
        let img = push_image(&reg);
        reg.state().auth = FakeAuth::Bearer { creds: None, refresh_token: None };
        reg.state().token_expires_in = Some(u64::MAX);
        let s = Setup::new();
        let f = s.registry(T).resolve(&reference(&reg, ":v1"), None).await.unwrap().fetcher;
        f.fetch_bytes(&img.config, MAX_MANIFEST_SIZE).await.unwrap();
        assert_eq!(reg.state().tokens_issued, 1);
    }

    #[tokio::test]
    async fn bearer_with_basic_credentials() {
        let reg = FakeRegistry::start().await;
        let img = push_image(&reg);
        reg.state().auth =
            FakeAuth::Bearer { creds: Some(("alice".into(), "s3cret-pw".into())), refresh_token: None };
        let s = Setup::new();
        let creds =
            Credentials { username: "alice".into(), password: "s3cret-pw".into(), ..Default::default() };
        let resolved = s.registry(T).resolve(&reference(&reg, ":v1"), Some(creds)).await.unwrap();
        assert_eq!(resolved.descriptor, img.manifest);
        {
            let st = reg.state();
            let token_req = st.requests.iter().find(|r| r.path == "/token").unwrap();
            assert_eq!(token_req.method, Method::GET);
            assert!(token_req.authorization().unwrap().starts_with("Basic "));
        }

        // The credentials file is used when the pull brings none.
        let b64 = base64::Engine::encode(&base64::engine::general_purpose::STANDARD, "alice:s3cret-pw");
        s.file("config.json", &format!(r#"{{"auths":{{"{}":{{"auth":"{b64}"}}}}}}"#, reg.host()));
        s.registry(T).resolve(&reference(&reg, ":v1"), None).await.unwrap();
    }

    #[tokio::test]
    async fn wrong_or_missing_credentials_are_unauthenticated() {
        let reg = FakeRegistry::start().await;
        push_image(&reg);
        let s = Setup::new();
        let wrong =
            Credentials { username: "alice".into(), password: "wrong-pw-123".into(), ..Default::default() };
        for auth in [
            FakeAuth::Bearer { creds: Some(("alice".into(), "s3cret-pw".into())), refresh_token: None },
            FakeAuth::Basic { user: "alice".into(), pass: "s3cret-pw".into() },
        ] {
            reg.state().auth = auth;
            let err = s.registry(T).resolve(&reference(&reg, ":v1"), Some(wrong.clone())).await.unwrap_err();
            assert_eq!(err.kind(), ErrorKind::Unauthenticated, "{err}");
            let msg = format!("{err} {err:?}");
            assert!(msg.contains(&format!("authentication failed for {}", reg.host())), "{msg}");
            assert!(!msg.contains("wrong-pw-123") && !msg.contains("s3cret-pw"), "{msg}");
            let err = s.registry(T).resolve(&reference(&reg, ":v1"), None).await.unwrap_err();
            assert_eq!(err.kind(), ErrorKind::Unauthenticated, "{err}");
        }
    }

    #[tokio::test]
    async fn basic_auth() {
        let reg = FakeRegistry::start().await;
        let img = push_image(&reg);
        reg.state().auth = FakeAuth::Basic { user: "bob".into(), pass: "pw".into() };
        let s = Setup::new();
        let creds = Credentials { username: "bob".into(), password: "pw".into(), ..Default::default() };
        let resolved = s.registry(T).resolve(&reference(&reg, ":v1"), Some(creds)).await.unwrap();
        resolved.fetcher.fetch_bytes(&img.config, MAX_MANIFEST_SIZE).await.unwrap();
        let auths: Vec<Option<String>> =
            reg.api_requests().iter().map(|r| r.authorization().map(str::to_string)).collect();
        let basic = Some("Basic Ym9iOnB3".to_string());
        assert_eq!(auths, [None, basic.clone(), basic], "challenge once, then basic up front");
    }

    #[tokio::test]
    async fn identity_token_uses_oauth_then_get() {
        let reg = FakeRegistry::start().await;
        let img = push_image(&reg);
        reg.state().auth = FakeAuth::Bearer { creds: None, refresh_token: Some("refresh-xyz".into()) };
        let s = Setup::new();
        let creds = Credentials { identity_token: "refresh-xyz".into(), ..Default::default() };
        let resolved = s.registry(T).resolve(&reference(&reg, ":v1"), Some(creds.clone())).await.unwrap();
        assert_eq!(resolved.descriptor, img.manifest);
        {
            let st = reg.state();
            let t: Vec<&crate::engine::image::fake_registry::Logged> =
                st.requests.iter().filter(|r| r.path == "/token").collect();
            assert_eq!(t.len(), 1);
            assert_eq!(t[0].method, Method::POST);
            assert!(t[0].body.contains("grant_type=refresh_token"), "{}", t[0].body);
            assert!(t[0].body.contains("scope=repository%3Ateam%2Fapp%3Apull"), "{}", t[0].body);
        }
        // Without the POST endpoint: GET with the identity token as basic password.
        reg.state().token_post = false;
        s.registry(T).resolve(&reference(&reg, ":v1"), Some(creds)).await.unwrap();
        let st = reg.state();
        let methods: Vec<&Method> =
            st.requests.iter().filter(|r| r.path == "/token").map(|r| &r.method).collect();
        assert_eq!(methods, [&Method::POST, &Method::POST, &Method::GET]);
    }

    // Issue 8 item 7: the registry token waits for the registry to ask for a bearer token.
    #[tokio::test]
    async fn registry_token_is_sent_as_is_once_asked_for() {
        let reg = FakeRegistry::start().await;
        let img = push_image(&reg);
        reg.state().auth = FakeAuth::RegistryToken("reg-tok".into());
        let s = Setup::new();
        let creds = Credentials { registry_token: "reg-tok".into(), ..Default::default() };
        let resolved = s.registry(T).resolve(&reference(&reg, ":v1"), Some(creds)).await.unwrap();
        assert_eq!(resolved.descriptor, img.manifest);
        resolved.fetcher.fetch_bytes(&img.config, MAX_MANIFEST_SIZE).await.unwrap();
        let auths: Vec<Option<String>> =
            reg.api_requests().iter().map(|r| r.authorization().map(str::to_string)).collect();
        let token = Some("Bearer reg-tok".to_string());
        assert_eq!(auths, [None, token.clone(), token], "challenged once, then the token");
        assert_eq!(reg.state().tokens_issued, 0);

        // A registry that never asks never sees it.
        let open = FakeRegistry::start().await;
        push_image(&open);
        let creds = Credentials { registry_token: "reg-tok".into(), ..Default::default() };
        s.registry(T).resolve(&reference(&open, ":v1"), Some(creds)).await.unwrap();
        assert!(open.api_requests().iter().all(|r| r.authorization().is_none()));
    }

    fn basic(user: &str, pass: &str) -> String {
        let b64 =
            base64::Engine::encode(&base64::engine::general_purpose::STANDARD, format!("{user}:{pass}"));
        format!("Basic {b64}")
    }

    /// Every Authorization header `reg` received, the token endpoint's included.
    fn authorizations(reg: &FakeRegistry) -> Vec<String> {
        reg.state().requests.iter().filter_map(|r| r.authorization().map(str::to_string)).collect()
    }

    // Issue 8 item 7: a mirror never sees the upstream's credentials, whatever it asks for.
    #[tokio::test]
    async fn mirrors_never_see_the_upstreams_credentials() {
        let upstream = FakeRegistry::start().await;
        let img = push_image(&upstream);
        upstream.state().auth = FakeAuth::Basic { user: "alice".into(), pass: "up-secret".into() };
        let basic_mirror = FakeRegistry::start().await;
        push_image(&basic_mirror);
        basic_mirror.state().auth = FakeAuth::Basic { user: "mallory".into(), pass: "m-secret".into() };
        let bearer_mirror = FakeRegistry::start().await;
        push_image(&bearer_mirror);
        bearer_mirror.state().auth =
            FakeAuth::Bearer { creds: Some(("mallory".into(), "m-secret".into())), refresh_token: None };
        let s = Setup::new();
        let domain = upstream.host();
        s.hosts_toml(
            &domain,
            &format!(
                "server = \"http://{domain}\"\n\
                 [host.\"http://{b}\"]\n  capabilities = [\"pull\", \"resolve\"]\n\
                 [host.\"http://{t}\"]\n  capabilities = [\"pull\", \"resolve\"]\n",
                b = basic_mirror.host(),
                t = bearer_mirror.host()
            ),
        );
        let r = reference(&upstream, ":v1");
        let alice =
            Credentials { username: "alice".into(), password: "up-secret".into(), ..Default::default() };
        let resolved = s.registry(T).resolve(&r, Some(alice.clone())).await.unwrap();
        assert_eq!(resolved.fetcher.host(), domain, "the mirrors refused, upstream answered");
        let blob = resolved.fetcher.fetch_blob(&img.layer, 0).await.unwrap();
        assert_eq!(collect(blob).await.unwrap(), img.layer_body);

        assert!(!basic_mirror.api_requests().is_empty() && !bearer_mirror.api_requests().is_empty());
        assert_eq!(authorizations(&basic_mirror), Vec::<String>::new(), "basic mirror got credentials");
        // The bearer mirror's token endpoint was asked anonymously.
        assert_eq!(authorizations(&bearer_mirror), Vec::<String>::new(), "bearer mirror got credentials");
        assert!(bearer_mirror.state().requests.iter().any(|r| r.path == "/token"));
        let alices = basic("alice", "up-secret");
        assert!(authorizations(&upstream).iter().all(|a| *a == alices));
        assert!(!authorizations(&upstream).is_empty());

        // Credentials the file has for a mirror's host go to that mirror, and only there.
        let b64 = base64::Engine::encode(&base64::engine::general_purpose::STANDARD, "mallory:m-secret");
        s.file("config.json", &format!(r#"{{"auths":{{"{}":{{"auth":"{b64}"}}}}}}"#, basic_mirror.host()));
        basic_mirror.state().requests.clear();
        bearer_mirror.state().requests.clear();
        let resolved = s.registry(T).resolve(&r, Some(alice)).await.unwrap();
        assert_eq!(resolved.fetcher.host(), basic_mirror.host());
        assert!(authorizations(&basic_mirror).iter().all(|a| *a == basic("mallory", "m-secret")));
        assert!(!authorizations(&basic_mirror).is_empty());
        assert!(bearer_mirror.state().requests.is_empty());
    }

    // Issue 8 item 7: credentials given for one host (AuthConfig.server_address) go there only.
    #[tokio::test]
    async fn credentials_for_a_server_address_go_only_there() {
        let upstream = FakeRegistry::start().await;
        push_image(&upstream);
        upstream.state().auth = FakeAuth::Basic { user: "mallory".into(), pass: "m-secret".into() };
        let mirror = FakeRegistry::start().await;
        let img = push_image(&mirror);
        mirror.state().auth = FakeAuth::Basic { user: "alice".into(), pass: "mirror-secret".into() };
        let s = Setup::new();
        let domain = upstream.host();
        s.hosts_toml(
            &domain,
            &format!(
                "server = \"http://{domain}\"\n[host.\"http://{m}\"]\n  capabilities = [\"pull\"]\n",
                m = mirror.host()
            ),
        );
        let for_mirror = Credentials {
            username: "alice".into(),
            password: "mirror-secret".into(),
            server_address: format!("http://{}/", mirror.host()),
            ..Default::default()
        };
        let r = reference(&upstream, &format!("@{}", img.manifest.digest));
        let resolved = s.registry(T).resolve(&r, Some(for_mirror)).await.unwrap();
        assert_eq!(resolved.fetcher.host(), mirror.host());
        assert!(authorizations(&upstream).is_empty(), "upstream got the mirror's credentials");

        // By tag the mirror may not resolve: upstream asks, and has no credentials to get.
        let for_mirror = Credentials {
            username: "alice".into(),
            password: "mirror-secret".into(),
            server_address: mirror.host(),
            ..Default::default()
        };
        let err = s.registry(T).resolve(&reference(&upstream, ":v1"), Some(for_mirror)).await.unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Unauthenticated, "{err}");
        assert!(err.to_string().contains("none were given for it"), "{err}");
        assert!(authorizations(&upstream).is_empty(), "upstream got the mirror's credentials");
    }

    #[tokio::test]
    async fn range_resume_and_ignored_range() {
        let reg = FakeRegistry::start().await;
        let img = push_image(&reg);
        let s = Setup::new();
        let f = s.registry(T).fetcher(&reference(&reg, ":v1"), None).unwrap();
        let blob = f.fetch_blob(&img.layer, 10).await.unwrap();
        assert_eq!(blob.offset(), 10);
        assert_eq!(collect(blob).await.unwrap(), img.layer_body[10..]);
        assert_eq!(reg.api_requests()[0].headers.get(RANGE).unwrap(), "bytes=10-");

        reg.state().ignore_range = true;
        let blob = f.fetch_blob(&img.layer, 10).await.unwrap();
        assert_eq!(blob.offset(), 0);
        assert_eq!(collect(blob).await.unwrap(), img.layer_body);

        // An offset at or past the end asks for the whole blob.
        reg.state().ignore_range = false;
        let blob = f.fetch_blob(&img.layer, img.layer_body.len() as u64).await.unwrap();
        assert_eq!(blob.offset(), 0);
        assert_eq!(collect(blob).await.unwrap(), img.layer_body);
    }

    #[tokio::test]
    async fn stalled_body_fails_but_slow_body_completes() {
        let reg = FakeRegistry::start().await;
        let img = push_image(&reg);
        let s = Setup::new();
        let f = s.registry(Duration::from_millis(300)).fetcher(&reference(&reg, ":v1"), None).unwrap();

        reg.state().slow_chunks = Some((20, Duration::from_millis(100)));
        let started = std::time::Instant::now();
        let got = collect(f.fetch_blob(&img.layer, 0).await.unwrap()).await.unwrap();
        assert_eq!(got, img.layer_body);
        assert!(started.elapsed() > Duration::from_millis(600), "the download was slow");

        reg.state().slow_chunks = None;
        reg.state().stall_after = Some(5);
        let mut blob = f.fetch_blob(&img.layer, 0).await.unwrap();
        let first = blob.next().await.unwrap().unwrap();
        assert_eq!(first[..], img.layer_body[..5]);
        let err = blob.next().await.unwrap().unwrap_err();
        assert_eq!(err.kind(), ErrorKind::DeadlineExceeded);
        assert!(err.to_string().contains("made no progress for 300ms"), "{err}");
        assert!(blob.next().await.is_none());
    }

    #[tokio::test]
    async fn silent_server_times_out() {
        // Accepts connections and never answers.
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let task = tokio::spawn(async move {
            let mut held = Vec::new();
            while let Ok((conn, _)) = listener.accept().await {
                held.push(conn);
            }
        });
        let s = Setup::new();
        let r = Reference::parse(&format!("127.0.0.1:{port}/x:v1")).unwrap();
        let err = s.registry(Duration::from_millis(200)).resolve(&r, None).await.unwrap_err();
        task.abort();
        assert_eq!(err.kind(), ErrorKind::DeadlineExceeded, "{err}");
        assert!(err.to_string().contains("made no progress for 200ms"), "{err}");
    }

    #[tokio::test]
    async fn manifest_size_limit() {
        let reg = FakeRegistry::start().await;
        let big = vec![b' '; MAX_MANIFEST_SIZE as usize + 1];
        let d = reg.push_manifest(REPO, Some("big"), media::OCI_MANIFEST, &big);
        let s = Setup::new();
        let err = s.registry(T).resolve(&reference(&reg, ":big"), None).await.unwrap_err();
        assert_eq!(err.kind(), ErrorKind::InvalidArgument, "{err}");
        assert!(err.to_string().contains("limit"), "{err}");
        reg.state().omit_digest_header = true;
        let err = s.registry(T).resolve(&reference(&reg, ":big"), None).await.unwrap_err();
        assert_eq!(err.kind(), ErrorKind::InvalidArgument, "{err}");

        let f = s.registry(T).fetcher(&reference(&reg, ":big"), None).unwrap();
        let before = reg.api_requests().len();
        let desc = Descriptor::new(media::OCI_MANIFEST, d, big.len() as i64);
        let err = f.fetch_bytes(&desc, MAX_MANIFEST_SIZE).await.unwrap_err();
        assert_eq!(err.kind(), ErrorKind::InvalidArgument);
        assert_eq!(reg.api_requests().len(), before, "refused without asking");
    }

    #[tokio::test]
    async fn fetched_bytes_are_verified() {
        let reg = FakeRegistry::start().await;
        let img = push_image(&reg);
        let s = Setup::new();
        let f = s.registry(T).fetcher(&reference(&reg, ":v1"), None).unwrap();
        let key = (REPO.to_string(), img.config.digest.to_string());
        let good = reg.state().blobs[&key].clone();
        let mut evil = good.to_vec();
        evil[0] ^= 1;
        reg.state().blobs.insert(key.clone(), Bytes::from(evil));
        let err = f.fetch_bytes(&img.config, MAX_MANIFEST_SIZE).await.unwrap_err();
        assert_eq!(err.kind(), ErrorKind::FailedPrecondition);
        assert!(err.to_string().contains("digest mismatch"), "{err}");

        reg.state().blobs.insert(key, good.slice(1..));
        let err = f.fetch_bytes(&img.config, MAX_MANIFEST_SIZE).await.unwrap_err();
        assert_eq!(err.kind(), ErrorKind::FailedPrecondition, "{err}");

        let mkey = (REPO.to_string(), img.manifest.digest.to_string());
        reg.state().manifests.get_mut(&mkey).unwrap().1 = Bytes::from_static(b"{}");
        let err = f.fetch_bytes(&img.manifest, MAX_MANIFEST_SIZE).await.unwrap_err();
        assert_eq!(err.kind(), ErrorKind::FailedPrecondition, "{err}");
    }

    #[tokio::test]
    async fn blob_redirects_do_not_forward_credentials() {
        let storage = FakeRegistry::start().await;
        let reg = FakeRegistry::start().await;
        let img = push_image(&reg);
        storage.push_blob(REPO, &img.layer_body);
        {
            let mut st = reg.state();
            st.auth = FakeAuth::Basic { user: "bob".into(), pass: "pw".into() };
            st.redirect_blobs = Some(format!("http://localhost:{}", storage.addr.port()));
        }
        let s = Setup::new();
        let creds = Credentials { username: "bob".into(), password: "pw".into(), ..Default::default() };
        let f = s.registry(T).resolve(&reference(&reg, ":v1"), Some(creds)).await.unwrap().fetcher;
        let blob = f.fetch_blob(&img.layer, 0).await.unwrap();
        assert_eq!(collect(blob).await.unwrap(), img.layer_body);
        let blob_req = reg.api_requests().into_iter().find(|r| r.path.contains("/blobs/")).unwrap();
        assert!(blob_req.authorization().is_some());
        let redirected = storage.api_requests();
        assert_eq!(redirected.len(), 1);
        assert_eq!(redirected[0].authorization(), None);
    }

    #[tokio::test]
    async fn hosts_toml_headers_are_sent() {
        let reg = FakeRegistry::start().await;
        push_image(&reg);
        let s = Setup::new();
        s.hosts_toml(
            "registry.test",
            &format!("server = \"http://{}\"\n[header]\n  x-custom = [\"a\", \"b\"]\n", reg.host()),
        );
        let r = Reference::parse(&format!("registry.test/{REPO}:v1")).unwrap();
        s.registry(T).resolve(&r, None).await.unwrap();
        let req = &reg.api_requests()[0];
        let values: Vec<&str> = req.headers.get_all("x-custom").iter().map(|v| v.to_str().unwrap()).collect();
        assert_eq!(values, ["a", "b"]);
    }

    fn tls_domain(reg: &FakeRegistry) -> String {
        format!("127.0.0.1:{}", reg.addr.port())
    }

    #[tokio::test]
    async fn tls_with_test_ca_and_skip_verify() {
        let pki = TestPki::new();
        let reg = FakeRegistry::start_tls(pki.server(false)).await;
        let img = push_image(&reg);
        let s = Setup::new();
        let domain = tls_domain(&reg);
        let r = Reference::parse(&format!("{domain}/{REPO}:v1")).unwrap();

        // Unknown CA: refused.
        s.hosts_toml(&domain, &format!("server = \"https://{domain}\"\n"));
        let err = s.registry(T).resolve(&r, None).await.unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Unavailable, "{err}");
        assert!(err.to_string().to_lowercase().contains("certificate"), "{err}");

        // The test CA, relative to the hosts.toml directory.
        s.file(&format!("certs.d/{domain}/ca.pem"), &pki.ca_pem);
        s.hosts_toml(&domain, &format!("server = \"https://{domain}\"\nca = \"ca.pem\"\n"));
        let resolved = s.registry(T).resolve(&r, None).await.unwrap();
        assert_eq!(resolved.descriptor, img.manifest);
        let blob = resolved.fetcher.fetch_blob(&img.layer, 0).await.unwrap();
        assert_eq!(collect(blob).await.unwrap(), img.layer_body);

        // skip_verify: any certificate.
        s.hosts_toml(&domain, &format!("server = \"https://{domain}\"\nskip_verify = true\n"));
        assert_eq!(s.registry(T).resolve(&r, None).await.unwrap().descriptor, img.manifest);
    }

    #[tokio::test]
    async fn tls_client_certificate() {
        let pki = TestPki::new();
        let reg = FakeRegistry::start_tls(pki.server(true)).await;
        let img = push_image(&reg);
        let s = Setup::new();
        let domain = tls_domain(&reg);
        let r = Reference::parse(&format!("{domain}/{REPO}:v1")).unwrap();
        s.file(&format!("certs.d/{domain}/ca.pem"), &pki.ca_pem);
        s.hosts_toml(&domain, &format!("server = \"https://{domain}\"\nca = \"ca.pem\"\n"));
        let err = s.registry(T).resolve(&r, None).await.unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Unavailable, "no client certificate: {err}");

        s.file(&format!("certs.d/{domain}/client.cert"), &pki.client_cert_pem);
        s.file(&format!("certs.d/{domain}/client.key"), &pki.client_key_pem);
        s.hosts_toml(
            &domain,
            &format!("server = \"https://{domain}\"\nca = \"ca.pem\"\nclient = [[\"client.cert\", \"client.key\"]]\n"),
        );
        assert_eq!(s.registry(T).resolve(&r, None).await.unwrap().descriptor, img.manifest);
    }

    #[test]
    fn bad_tls_files_are_reported() {
        let s = Setup::new();
        s.file("certs.d/r.test/ca.pem", "not a certificate");
        s.hosts_toml("r.test", "ca = \"ca.pem\"\n");
        let r = Reference::parse("r.test/x:v1").unwrap();
        let err = s.registry(T).fetcher(&r, None).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::InvalidArgument);
        assert!(err.to_string().contains("ca.pem"), "{err}");
    }

    #[test]
    fn durations_print_like_go() {
        assert_eq!(go_duration(Duration::from_secs(300)), "5m0s");
        assert_eq!(go_duration(Duration::from_secs(3600)), "1h0m0s");
        assert_eq!(go_duration(Duration::from_secs(90)), "1m30s");
        assert_eq!(go_duration(Duration::from_millis(1500)), "1.5s");
        assert_eq!(go_duration(Duration::from_millis(300)), "300ms");
    }
}
