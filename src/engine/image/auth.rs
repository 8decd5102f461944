//! Registry authentication: credentials (from a pull request or a Docker `config.json`), parsing
//! `WWW-Authenticate` challenges, and the token dance of the distribution spec (anonymous or
//! basic-authenticated GET to the realm, OAuth2 POST with an identity token, as containerd does),
//! with tokens cached per (endpoint, scope) until they expire.
//!
//! Credentials belong to one registry host. An endpoint of a pull (mirror or upstream) gets the
//! credentials configured for its own host and no other's, as containerd's CRI plugin does with
//! `registry.configs."<host>".auth`; and it gets them only after it asked for them with a 401 and a
//! `WWW-Authenticate` challenge, never up front.
//! Secrets must never reach a log line, an error message or a `Debug` output.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::path::Path;
use std::time::{Duration, Instant};

use base64::Engine as _;
use reqwest::StatusCode;
use reqwest::header::{AUTHORIZATION, CONTENT_TYPE, HeaderMap, HeaderValue};
use serde::Deserialize;

use crate::engine::image::hosts::{RegistryHost, is_localhost};
use crate::engine::image::registry::{go_duration, transport_error};
use crate::error::{Context, Error, ErrorKind, Result};

/// Credentials for one registry. Empty strings mean "not given".
#[derive(Clone, Default, PartialEq, Eq)]
pub struct Credentials {
    pub username: String,
    pub password: String,
    /// An OAuth2 refresh token ("identity token"), exchanged for access tokens at the realm.
    pub identity_token: String,
    /// A bearer token for the registry itself, sent as is once the registry asks for a bearer token.
    pub registry_token: String,
    /// The registry these are for: `host[:port]`, optionally as a URL (`https://index.docker.io/v1/`,
    /// the form of CRI's `AuthConfig.server_address` and of config.json keys). Empty: the registry
    /// of the image being pulled.
    pub server_address: String,
}

impl fmt::Debug for Credentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let secret = |s: &str| if s.is_empty() { "" } else { "<redacted>" };
        f.debug_struct("Credentials")
            .field("username", &self.username)
            .field("password", &format_args!("{:?}", secret(&self.password)))
            .field("identity_token", &format_args!("{:?}", secret(&self.identity_token)))
            .field("registry_token", &format_args!("{:?}", secret(&self.registry_token)))
            .field("server_address", &self.server_address)
            .finish()
    }
}

#[derive(Deserialize)]
struct DockerConfig {
    #[serde(default)]
    auths: BTreeMap<String, DockerAuth>,
}

#[derive(Deserialize, Default)]
struct DockerAuth {
    #[serde(default)]
    auth: String,
    #[serde(default)]
    username: String,
    #[serde(default)]
    password: String,
    #[serde(default)]
    identitytoken: String,
    #[serde(default)]
    registrytoken: String,
}

impl Credentials {
    /// The credentials for the registry host `host` in a Docker `config.json` (`auths`; credential
    /// helpers are not run). Keys may be `host`, `https://host` or `http://host/v1/…`; Docker Hub's
    /// names (`docker.io`, `index.docker.io`, `registry-1.docker.io`) are one host. A missing file
    /// means no credentials.
    pub fn from_docker_config(path: &Path, host: &str) -> Result<Option<Credentials>> {
        let text = match std::fs::read(path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(e).context(|| format!("reading credentials file {}", path.display())),
        };
        Self::from_docker_config_bytes(&text, host)
            .map_err(|e| e.context(format!("credentials file {}", path.display())))
    }

    /// [`Credentials::from_docker_config`] on the file's content (also the entry point for fuzzing
    /// the parser).
    pub fn from_docker_config_bytes(text: &[u8], host: &str) -> Result<Option<Credentials>> {
        // Only where: serde_json's message may quote a value of the file, which may be a secret.
        let config: DockerConfig = serde_json::from_slice(text).map_err(|e| {
            Error::invalid(format!("invalid json at line {} column {}", e.line(), e.column()))
        })?;
        for (key, a) in config.auths.iter().filter(|(k, _)| same_registry_host(k, host)) {
            let mut c = Credentials {
                username: a.username.clone(),
                password: a.password.clone(),
                identity_token: a.identitytoken.clone(),
                registry_token: a.registrytoken.clone(),
                server_address: key.clone(),
            };
            if !a.auth.is_empty() {
                let bad = || Error::invalid(format!("invalid \"auth\" for {key:?}"));
                let raw =
                    base64::engine::general_purpose::STANDARD.decode(a.auth.trim()).map_err(|_| bad())?;
                let raw = String::from_utf8(raw).map_err(|_| bad())?;
                let (user, pass) = raw.split_once(':').ok_or_else(bad)?;
                c.username = user.to_string();
                c.password = pass.to_string();
            }
            if !c.is_empty() {
                return Ok(Some(c));
            }
        }
        Ok(None)
    }

    /// The host these credentials are for, `image_domain` when they do not say.
    fn host<'a>(&'a self, image_domain: &'a str) -> &'a str {
        if self.server_address.is_empty() { image_domain } else { &self.server_address }
    }

    fn is_empty(&self) -> bool {
        self.username.is_empty()
            && self.password.is_empty()
            && self.identity_token.is_empty()
            && self.registry_token.is_empty()
    }

    fn basic_header(&self) -> Option<String> {
        (!self.username.is_empty() && !self.password.is_empty())
            .then(|| basic(&self.username, &self.password))
    }
}

/// `host[:port]` of a registry name, URL or config.json key, lowercase, with Docker Hub's names
/// (`docker.io`, `index.docker.io`, `registry-1.docker.io`) folded into `docker.io`.
fn canonical_host(name: &str) -> String {
    let name = name.trim();
    let rest = match name.find("://") {
        Some(i) => &name[i + 3..],
        None => name,
    };
    let host = rest.split('/').next().unwrap_or("").to_ascii_lowercase();
    match host.as_str() {
        "index.docker.io" | "registry-1.docker.io" => "docker.io".to_string(),
        _ => host,
    }
}

/// Whether two registry names (hosts, URLs or config.json keys) name the same host.
pub fn same_registry_host(a: &str, b: &str) -> bool {
    let (a, b) = (canonical_host(a), canonical_host(b));
    !a.is_empty() && a == b
}

/// What one endpoint of a pull may be sent: the credentials for its host, if any, and whether
/// there were some that its plain HTTP kept back.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct EndpointCredentials {
    pub creds: Option<Credentials>,
    /// Credentials exist for the host but are not sent over plain HTTP to it.
    pub withheld_over_http: bool,
}

/// The credentials `endpoint` may receive in a pull of an image from `image_domain`: `given` (the
/// pull request's) if they are for the endpoint's host, else what `from_file` has for that host;
/// none over plain HTTP unless the host configuration allows it
/// ([`RegistryHost::may_receive_credentials`]).
pub fn credentials_for_endpoint(
    endpoint: &RegistryHost,
    given: Option<&Credentials>,
    image_domain: &str,
    from_file: impl FnOnce(&str) -> Result<Option<Credentials>>,
) -> Result<EndpointCredentials> {
    let creds = match given {
        Some(c) if same_registry_host(c.host(image_domain), &endpoint.host) => Some(c.clone()),
        _ => from_file(&endpoint.host)?,
    };
    if creds.is_some() && !endpoint.may_receive_credentials() {
        return Ok(EndpointCredentials { creds: None, withheld_over_http: true });
    }
    Ok(EndpointCredentials { creds, withheld_over_http: false })
}

fn basic(user: &str, secret: &str) -> String {
    format!("Basic {}", base64::engine::general_purpose::STANDARD.encode(format!("{user}:{secret}")))
}

/// One challenge of a `WWW-Authenticate` header: the scheme (lowercase) and its parameters
/// (names lowercase).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Challenge {
    pub scheme: String,
    pub params: BTreeMap<String, String>,
}

/// Parses a `WWW-Authenticate` value, which may hold several challenges:
/// `Bearer realm="https://auth",service="r",scope="repository:a:pull", Basic realm="x"`.
pub fn parse_challenges(header: &str) -> Vec<Challenge> {
    let mut p = Parser { s: header.as_bytes(), i: 0 };
    let mut out: Vec<Challenge> = Vec::new();
    loop {
        p.skip(|c| c == b' ' || c == b'\t' || c == b',');
        let scheme = p.token();
        if scheme.is_empty() {
            break;
        }
        let mut params = BTreeMap::new();
        loop {
            p.skip(|c| c == b' ' || c == b'\t');
            let save = p.i;
            let name = p.token();
            p.skip(|c| c == b' ' || c == b'\t');
            if name.is_empty() || !p.eat(b'=') {
                // Not `name=`: the start of the next challenge (or a token68, which is ignored).
                p.i = save;
                break;
            }
            p.skip(|c| c == b' ' || c == b'\t');
            let value = if p.peek() == Some(b'"') { p.quoted() } else { p.token() };
            params.insert(name.to_ascii_lowercase(), value);
            p.skip(|c| c == b' ' || c == b'\t');
            if !p.eat(b',') {
                break;
            }
        }
        out.push(Challenge { scheme: scheme.to_ascii_lowercase(), params });
    }
    out
}

struct Parser<'a> {
    s: &'a [u8],
    i: usize,
}

impl Parser<'_> {
    fn peek(&self) -> Option<u8> {
        self.s.get(self.i).copied()
    }
    fn eat(&mut self, c: u8) -> bool {
        if self.peek() == Some(c) {
            self.i += 1;
            true
        } else {
            false
        }
    }
    fn skip(&mut self, f: impl Fn(u8) -> bool) {
        while self.peek().is_some_and(&f) {
            self.i += 1;
        }
    }
    fn token(&mut self) -> String {
        let start = self.i;
        self.skip(|c| c.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~/:".contains(&c));
        String::from_utf8_lossy(&self.s[start..self.i]).into_owned()
    }
    fn quoted(&mut self) -> String {
        let mut out = Vec::new();
        self.i += 1;
        while let Some(c) = self.peek() {
            self.i += 1;
            match c {
                b'"' => break,
                b'\\' => {
                    if let Some(n) = self.peek() {
                        out.push(n);
                        self.i += 1;
                    }
                }
                c => out.push(c),
            }
        }
        String::from_utf8_lossy(&out).into_owned()
    }
}

/// The token server's answer (`token` and `access_token` are synonyms).
#[derive(Deserialize)]
struct TokenResponse {
    #[serde(default)]
    token: String,
    #[serde(default)]
    access_token: String,
    #[serde(default)]
    expires_in: u64,
}

/// How long a token without `expires_in` is used (the distribution spec's default).
const DEFAULT_TOKEN_LIFETIME: Duration = Duration::from_secs(60);
/// The longest a token is used, whatever its `expires_in` says.
const MAX_TOKEN_LIFETIME: Duration = Duration::from_secs(24 * 3600);
/// The most of a token server's answer that is read.
const MAX_TOKEN_RESPONSE: usize = 1 << 20;

/// What a token request needs from the registry client: its HTTP client (same TLS settings as
/// the registry host), the host's extra headers, and the progress timeout.
pub(crate) struct TokenClient<'a> {
    pub http: &'a reqwest::Client,
    pub headers: &'a HeaderMap,
    pub timeout: Duration,
}

/// The endpoint a request goes to, as the authorizer needs it.
pub(crate) struct AuthTarget<'a> {
    /// `scheme://host`: challenges and tokens are kept per endpoint, so nothing learnt over HTTPS
    /// is replayed over plain HTTP to the same host.
    pub key: &'a str,
    /// The endpoint's configuration (host for messages, plain-HTTP permission for the realm).
    pub host: &'a RegistryHost,
    /// What this endpoint may be sent.
    pub creds: Option<&'a Credentials>,
}

/// Authorization state for one repository: the challenges endpoints answered with and the tokens
/// fetched for them. Shared by every request of a pull; holds no credentials itself.
#[derive(Default)]
pub(crate) struct Authorizer {
    state: tokio::sync::Mutex<State>,
}

#[derive(Default)]
struct State {
    /// The scheme each endpoint asked for on a 401 (`basic` or `bearer` with its parameters).
    challenges: HashMap<String, Challenge>,
    tokens: HashMap<(String, String), (String, Instant)>,
}

impl Authorizer {
    /// The `Authorization` value for a request to `target` needing `scope`: none until the endpoint
    /// asked for authentication (a 401 with a challenge), then what the challenge asks for from the
    /// endpoint's own credentials (anonymous bearer tokens included). Fetches a token when needed;
    /// the lock is held meanwhile so concurrent requests share one token request.
    pub(crate) async fn authorization(
        &self,
        tc: &TokenClient<'_>,
        target: &AuthTarget<'_>,
        scope: &str,
    ) -> Result<Option<String>> {
        let mut state = self.state.lock().await;
        let Some(challenge) = state.challenges.get(target.key).cloned() else { return Ok(None) };
        if challenge.scheme == "basic" {
            return Ok(target.creds.and_then(Credentials::basic_header));
        }
        if let Some(c) = target.creds
            && !c.registry_token.is_empty()
        {
            return Ok(Some(format!("Bearer {}", c.registry_token)));
        }
        let key = (target.key.to_string(), scope.to_string());
        if let Some((token, expiry)) = state.tokens.get(&key)
            && Instant::now() < *expiry
        {
            return Ok(Some(format!("Bearer {token}")));
        }
        let (token, lifetime) = fetch_token(tc, target, &challenge, scope).await?;
        state.tokens.insert(key, (token.clone(), Instant::now() + lifetime));
        Ok(Some(format!("Bearer {token}")))
    }

    /// Learns from a 401 answer of `target`. Returns whether retrying with (fresh) authorization
    /// can help: a bearer challenge (the cached token, if any, is dropped), or a basic challenge
    /// when the endpoint has a username and password.
    pub(crate) async fn unauthorized(
        &self,
        target: &AuthTarget<'_>,
        www_authenticate: Option<&str>,
        scope: &str,
    ) -> bool {
        let challenges = www_authenticate.map(parse_challenges).unwrap_or_default();
        let mut state = self.state.lock().await;
        state.tokens.remove(&(target.key.to_string(), scope.to_string()));
        let pick = challenges
            .iter()
            .find(|c| c.scheme == "bearer" && c.params.contains_key("realm"))
            .or_else(|| challenges.iter().find(|c| c.scheme == "basic"));
        match pick {
            Some(c) if c.scheme == "bearer" => {
                state.challenges.insert(target.key.to_string(), c.clone());
                true
            }
            Some(c) => {
                state.challenges.insert(target.key.to_string(), c.clone());
                target.creds.and_then(Credentials::basic_header).is_some()
            }
            None => false,
        }
    }
}

/// Whether a secret may go to the token server at `realm` for `target`: over HTTPS, or over plain
/// HTTP to a loopback host or to the endpoint's own host where it may receive credentials over
/// plain HTTP.
fn realm_may_receive_secret(realm: &reqwest::Url, auth_host: &str, target: &AuthTarget<'_>) -> bool {
    realm.scheme() == "https"
        || is_localhost(auth_host)
        || (auth_host == target.host.host && target.host.may_receive_credentials())
}

async fn fetch_token(
    tc: &TokenClient<'_>,
    target: &AuthTarget<'_>,
    c: &Challenge,
    scope: &str,
) -> Result<(String, Duration)> {
    let host = target.host.host.as_str();
    let realm = c.params.get("realm").map(String::as_str).unwrap_or("");
    let realm_url = reqwest::Url::parse(realm)
        .map_err(|_| Error::unavailable(format!("registry {host} sent an invalid token realm {realm:?}")))?;
    let service = c.params.get("service").cloned().unwrap_or_default();
    let mut scopes = vec![scope.to_string()];
    for s in c.params.get("scope").map(|s| s.split(' ')).into_iter().flatten() {
        if !s.is_empty() && !scopes.iter().any(|x| x == s) {
            scopes.push(s.to_string());
        }
    }
    let creds = target.creds;
    let (user, secret) = match creds {
        Some(c) if !c.identity_token.is_empty() => (c.username.as_str(), c.identity_token.as_str()),
        Some(c) if !c.password.is_empty() => (c.username.as_str(), c.password.as_str()),
        _ => ("", ""),
    };
    let auth_host = match realm_url.port() {
        Some(p) => format!("{}:{p}", realm_url.host_str().unwrap_or("")),
        None => realm_url.host_str().unwrap_or("").to_string(),
    };
    if !secret.is_empty() && !realm_may_receive_secret(&realm_url, &auth_host, target) {
        return Err(Error::new(
            ErrorKind::Unauthenticated,
            format!(
                "authentication failed for {host}: its token server {auth_host} is plain http, \
                 and credentials are not sent over plain http"
            ),
        ));
    }
    let ctx = TokenCtx { tc, host, auth_host: &auth_host, anonymous: secret.is_empty() };

    if creds.is_some_and(|c| !c.identity_token.is_empty()) {
        // OAuth2 refresh-token grant, as containerd does; registries without the POST endpoint
        // answer 404/405 (GCR), 401 (Artifactory) or 400 (ACR): fall back to GET then.
        let mut form = vec![
            ("grant_type", "refresh_token"),
            ("refresh_token", secret),
            ("service", service.as_str()),
            ("client_id", "berth"),
        ];
        let joined = scopes.join(" ");
        form.push(("scope", joined.as_str()));
        let req = tc
            .http
            .post(realm_url.clone())
            .headers(tc.headers.clone())
            .header(CONTENT_TYPE, HeaderValue::from_static("application/x-www-form-urlencoded"))
            .body(form_encode(&form));
        match ctx.send(req).await? {
            Ok(t) => return Ok(t),
            Err(status) if matches!(status.as_u16(), 400 | 401 | 404 | 405) => {}
            Err(status) => return Err(ctx.status_error(status)),
        }
    }

    let mut url = realm_url;
    {
        let mut q = url.query_pairs_mut();
        if !service.is_empty() {
            q.append_pair("service", &service);
        }
        for s in &scopes {
            q.append_pair("scope", s);
        }
    }
    let mut req = tc.http.get(url).headers(tc.headers.clone());
    if !secret.is_empty() {
        req = req.header(AUTHORIZATION, basic(user, secret));
    }
    ctx.send(req).await?.map_err(|status| ctx.status_error(status))
}

/// The token and how long it may be used, from a token server's answer; what is wrong with the
/// answer otherwise.
fn token_response(body: &[u8]) -> std::result::Result<(String, Duration), &'static str> {
    let t: TokenResponse = serde_json::from_slice(body).map_err(|_| "the answer is not a token response")?;
    let token = if t.access_token.is_empty() { t.token } else { t.access_token };
    if token.is_empty() {
        return Err("the answer holds no token");
    }
    let lifetime = match t.expires_in {
        0 => DEFAULT_TOKEN_LIFETIME,
        // A day at most: an Instant cannot hold any number of seconds from now, and a 401
        // drops the token sooner anyway.
        secs => Duration::from_secs(secs.min(MAX_TOKEN_LIFETIME.as_secs())),
    };
    Ok((token, lifetime))
}

struct TokenCtx<'a> {
    tc: &'a TokenClient<'a>,
    host: &'a str,
    auth_host: &'a str,
    anonymous: bool,
}

impl TokenCtx<'_> {
    /// Sends a token request: Ok(Ok(token)) on success, Ok(Err(status)) on an error status.
    async fn send(
        &self,
        req: reqwest::RequestBuilder,
    ) -> Result<std::result::Result<(String, Duration), StatusCode>> {
        let what = format!("token for {} from {}", self.host, self.auth_host);
        let timeout = self.tc.timeout;
        let stalled = || {
            Error::new(
                ErrorKind::DeadlineExceeded,
                format!("requesting {what} made no progress for {}", go_duration(timeout)),
            )
        };
        let mut resp = tokio::time::timeout(timeout, req.send())
            .await
            .map_err(|_| stalled())?
            .map_err(|e| transport_error(&format!("requesting {what}"), self.auth_host, e))?;
        if !resp.status().is_success() {
            return Ok(Err(resp.status()));
        }
        let mut body = Vec::new();
        while let Some(chunk) = tokio::time::timeout(timeout, resp.chunk())
            .await
            .map_err(|_| stalled())?
            .map_err(|e| transport_error(&format!("reading {what}"), self.auth_host, e))?
        {
            if body.len() + chunk.len() > MAX_TOKEN_RESPONSE {
                return Err(Error::unavailable(format!(
                    "{what}: answer larger than {MAX_TOKEN_RESPONSE} bytes"
                )));
            }
            body.extend_from_slice(&chunk);
        }
        let (token, lifetime) =
            token_response(&body).map_err(|why| Error::unavailable(format!("{what}: {why}")))?;
        Ok(Ok((token, lifetime)))
    }

    fn status_error(&self, status: StatusCode) -> Error {
        match status.as_u16() {
            401 | 403 => Error::new(
                ErrorKind::Unauthenticated,
                format!(
                    "authentication failed for {}: token server {} answered {status}{}",
                    self.host,
                    self.auth_host,
                    if self.anonymous { " (no credentials were given)" } else { "" }
                ),
            ),
            _ => Error::unavailable(format!(
                "requesting token for {} from {}: answered {status}",
                self.host, self.auth_host
            )),
        }
    }
}

/// `application/x-www-form-urlencoded`.
fn form_encode(pairs: &[(&str, &str)]) -> String {
    let enc = |s: &str| {
        let mut out = String::new();
        for b in s.bytes() {
            match b {
                b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'*' => out.push(b as char),
                b' ' => out.push('+'),
                b => out.push_str(&format!("%{b:02X}")),
            }
        }
        out
    };
    pairs.iter().map(|(k, v)| format!("{}={}", enc(k), enc(v))).collect::<Vec<_>>().join("&")
}

/// Entry points for the fuzz targets in `fuzz/` (cargo-fuzz). Not an API: nothing in berth calls
/// them, and they change with the fuzz targets.
#[doc(hidden)]
pub mod fuzzing {
    use std::time::Duration;

    /// What the token request makes of a token server's answer: the token and its lifetime, or
    /// None when the request fails.
    pub fn token_response(body: &[u8]) -> Option<(String, Duration)> {
        super::token_response(body).ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::image::hosts::Scheme;

    #[test]
    fn debug_never_shows_secrets() {
        let c = Credentials {
            username: "bob".into(),
            password: "hunter2".into(),
            identity_token: "idtok".into(),
            registry_token: "regtok".into(),
            server_address: "r.example".into(),
        };
        let s = format!("{c:?} {c:#?}");
        assert!(s.contains("bob") && s.contains("<redacted>") && s.contains("r.example"), "{s}");
        for secret in ["hunter2", "idtok", "regtok"] {
            assert!(!s.contains(secret), "{s}");
        }
    }

    #[test]
    fn docker_config_lookup() {
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("config.json");
        assert_eq!(Credentials::from_docker_config(&path, "docker.io").unwrap(), None);
        let b64 = base64::engine::general_purpose::STANDARD.encode("hubuser:hub:pass");
        std::fs::write(
            &path,
            format!(
                r#"{{"auths": {{
                    "https://index.docker.io/v1/": {{"auth": "{b64}"}},
                    "quay.io": {{"username": "q", "password": "qp"}},
                    "http://r.example:5000/v1/": {{"identitytoken": "idt", "username": "u"}},
                    "ghcr.io": {{"registrytoken": "rt"}},
                    "empty.io": {{}}
                }}, "credsStore": "desktop"}}"#
            ),
        )
        .unwrap();
        let hub = Credentials::from_docker_config(&path, "docker.io").unwrap().unwrap();
        assert_eq!((hub.username.as_str(), hub.password.as_str()), ("hubuser", "hub:pass"));
        let q = Credentials::from_docker_config(&path, "quay.io").unwrap().unwrap();
        assert_eq!((q.username.as_str(), q.password.as_str()), ("q", "qp"));
        let r = Credentials::from_docker_config(&path, "r.example:5000").unwrap().unwrap();
        assert_eq!((r.username.as_str(), r.identity_token.as_str()), ("u", "idt"));
        assert_eq!(Credentials::from_docker_config(&path, "ghcr.io").unwrap().unwrap().registry_token, "rt");
        assert_eq!(Credentials::from_docker_config(&path, "empty.io").unwrap(), None);
        assert_eq!(Credentials::from_docker_config(&path, "r.example").unwrap(), None);

        std::fs::write(&path, r#"{"auths": {"x.io": {"auth": "!!notbase64-secret"}}}"#).unwrap();
        let err = Credentials::from_docker_config(&path, "x.io").unwrap_err();
        assert_eq!(err.kind(), ErrorKind::InvalidArgument);
        assert!(!err.to_string().contains("notbase64-secret"), "{err}");
        std::fs::write(&path, r#"{"auths": {"x.io": {"password": "s3cret""#).unwrap();
        let err = Credentials::from_docker_config(&path, "x.io").unwrap_err();
        assert!(err.to_string().contains("config.json") && !err.to_string().contains("s3cret"), "{err}");
    }

    fn endpoint(scheme: Scheme, host: &str, http_credentials: bool) -> RegistryHost {
        RegistryHost { scheme, http_credentials, ..RegistryHost::upstream(host) }
    }

    fn creds(user: &str, server_address: &str) -> Credentials {
        Credentials {
            username: user.into(),
            password: "pw".into(),
            server_address: server_address.into(),
            ..Default::default()
        }
    }

    // Issue 8 item 7: an endpoint gets the credentials of its own host, never another's.
    /// Found by the registry_auth fuzz target (fuzz/seeds/registry_auth/error_quotes_a_value):
    /// serde_json's message quotes a string found where another type belongs, and in a
    /// malformed config.json that string may be a secret.
    #[test]
    fn invalid_docker_configs_are_refused_without_quoting_their_values() {
        for (text, value) in [
            (&br#""username""#[..], "username"),
            (br#"{"auths": {"quay.io": "dXNlcjpzM2NyZXQ="}}"#, "dXNlcjpzM2NyZXQ="),
            (br#"{"auths": ["s3cret-token"]}"#, "s3cret-token"),
        ] {
            let err = Credentials::from_docker_config_bytes(text, "quay.io").unwrap_err();
            assert_eq!(err.kind(), ErrorKind::InvalidArgument);
            assert!(err.to_string().starts_with("invalid json at line 1 column "), "{err}");
            assert!(!err.to_string().contains(value) && !format!("{err:?}").contains(value), "{err:?}");
        }
    }

    /// Seen while writing the registry_auth fuzz target (fuzz/seeds/registry_auth/token_expires_never):
    /// the token cache adds the lifetime to the clock, which panicked past what an Instant holds.
    #[test]
    fn token_lifetimes_fit_the_clock() {
        for body in [
            &br#"{"token":"a","expires_in":9223372036854775807}"#[..],
            br#"{"access_token":"a","expires_in":18446744073709551615}"#,
        ] {
            let (token, lifetime) = token_response(body).unwrap();
            assert_eq!(token, "a");
            assert!(Instant::now().checked_add(lifetime).is_some(), "{lifetime:?}");
        }
        assert_eq!(token_response(br#"{"token":"a"}"#).unwrap().1, DEFAULT_TOKEN_LIFETIME);
        assert_eq!(token_response(br#"{"token":"a","expires_in":300}"#).unwrap().1, Duration::from_secs(300));
    }

    #[test]
    fn credentials_go_only_to_their_own_host() {
        let file = |host: &str| -> Result<Option<Credentials>> {
            Ok((host == "mirror.example").then(|| creds("mirror-user", host)))
        };
        let user = |e: &EndpointCredentials| e.creds.as_ref().map(|c| c.username.clone());
        let hub = endpoint(Scheme::Https, "registry-1.docker.io", false);
        let mirror = endpoint(Scheme::Https, "mirror.example", false);
        let other = endpoint(Scheme::Https, "other.example", false);

        // The pull's credentials, for the image's registry (Docker Hub's names are one host).
        let given = creds("hub-user", "");
        let got = credentials_for_endpoint(&hub, Some(&given), "docker.io", file).unwrap();
        assert_eq!(user(&got), Some("hub-user".into()));
        // A mirror gets what the file has for it, or nothing; never the pull's credentials.
        let got = credentials_for_endpoint(&mirror, Some(&given), "docker.io", file).unwrap();
        assert_eq!(user(&got), Some("mirror-user".into()));
        let got = credentials_for_endpoint(&other, Some(&given), "docker.io", file).unwrap();
        assert_eq!(got, EndpointCredentials::default());

        // server_address names the host, in any of its usual spellings.
        for addr in ["https://index.docker.io/v1/", "docker.io", "REGISTRY-1.docker.io"] {
            let given = creds("hub-user", addr);
            let got = credentials_for_endpoint(&hub, Some(&given), "quay.io", file).unwrap();
            assert_eq!(user(&got), Some("hub-user".into()), "{addr}");
        }
        let for_mirror = creds("given-mirror-user", "https://mirror.example");
        let got = credentials_for_endpoint(&mirror, Some(&for_mirror), "docker.io", file).unwrap();
        assert_eq!(user(&got), Some("given-mirror-user".into()));
        let got = credentials_for_endpoint(&hub, Some(&for_mirror), "docker.io", file).unwrap();
        assert_eq!(got, EndpointCredentials::default(), "credentials for the mirror went upstream");

        // The port is part of the host.
        let r = endpoint(Scheme::Https, "r.example:5000", false);
        let given = creds("u", "r.example");
        assert_eq!(credentials_for_endpoint(&r, Some(&given), "r.example:5000", file).unwrap().creds, None);

        // Plain HTTP: kept back unless the host configuration allows it.
        let plain = endpoint(Scheme::Http, "r.example:5000", false);
        let given = creds("u", "");
        let got = credentials_for_endpoint(&plain, Some(&given), "r.example:5000", file).unwrap();
        assert_eq!(got, EndpointCredentials { creds: None, withheld_over_http: true });
        let allowed = endpoint(Scheme::Http, "r.example:5000", true);
        let got = credentials_for_endpoint(&allowed, Some(&given), "r.example:5000", file).unwrap();
        assert_eq!(user(&got), Some("u".into()));
        let plain_mirror = endpoint(Scheme::Http, "mirror.example", false);
        let got = credentials_for_endpoint(&plain_mirror, None, "docker.io", file).unwrap();
        assert_eq!(got, EndpointCredentials { creds: None, withheld_over_http: true });
        // Nothing to withhold: nothing said.
        let got = credentials_for_endpoint(&plain, None, "r.example:5000", file).unwrap();
        assert_eq!(got, EndpointCredentials::default());
    }

    #[test]
    fn token_servers_get_secrets_over_https_or_where_plain_http_is_allowed() {
        let may = |realm: &str, host: &RegistryHost| {
            let url = reqwest::Url::parse(realm).unwrap();
            let auth_host = match url.port() {
                Some(p) => format!("{}:{p}", url.host_str().unwrap()),
                None => url.host_str().unwrap().to_string(),
            };
            realm_may_receive_secret(&url, &auth_host, &AuthTarget { key: "k", host, creds: None })
        };
        let secure = endpoint(Scheme::Https, "r.example", false);
        assert!(may("https://auth.example/token", &secure));
        assert!(!may("http://auth.example/token", &secure));
        assert!(may("http://127.0.0.1:9/token", &secure));
        let plain = endpoint(Scheme::Http, "r.example", true);
        assert!(may("http://r.example/token", &plain));
        assert!(!may("http://auth.example/token", &plain));
    }

    #[test]
    fn registry_names_compare_as_hosts() {
        assert!(same_registry_host("https://index.docker.io/v1/", "registry-1.docker.io"));
        assert!(same_registry_host("Quay.IO", "https://quay.io/v2/"));
        assert!(same_registry_host("http://r.example:5000/v1/", "r.example:5000"));
        assert!(!same_registry_host("r.example:5000", "r.example"));
        assert!(!same_registry_host("", ""));
        assert!(!same_registry_host("evil.example/quay.io", "quay.io"));
    }

    #[test]
    fn challenge_parsing() {
        let got = parse_challenges(
            r#"Bearer realm="https://auth.docker.io/token",service="registry.docker.io",scope="repository:library/busybox:pull,push""#,
        );
        assert_eq!(got.len(), 1);
        assert_eq!(got[0].scheme, "bearer");
        assert_eq!(got[0].params["realm"], "https://auth.docker.io/token");
        assert_eq!(got[0].params["service"], "registry.docker.io");
        assert_eq!(got[0].params["scope"], "repository:library/busybox:pull,push");

        let got = parse_challenges(r#"Basic realm="Registry \"Realm\"", charset=UTF-8"#);
        assert_eq!(got.len(), 1);
        assert_eq!(got[0].scheme, "basic");
        assert_eq!(got[0].params["realm"], r#"Registry "Realm""#);
        assert_eq!(got[0].params["charset"], "UTF-8");

        let got = parse_challenges(
            r#"Bearer realm="https://a/token", error="invalid_token", Basic realm="b",  Negotiate"#,
        );
        let schemes: Vec<&str> = got.iter().map(|c| c.scheme.as_str()).collect();
        assert_eq!(schemes, ["bearer", "basic", "negotiate"]);
        assert_eq!(got[0].params["error"], "invalid_token");
        assert_eq!(got[1].params["realm"], "b");

        let got = parse_challenges("BEARER Realm=https://a/t ,Service=s");
        assert_eq!(got[0].scheme, "bearer");
        assert_eq!(got[0].params["realm"], "https://a/t");
        assert_eq!(got[0].params["service"], "s");
        assert!(parse_challenges("").is_empty());
    }

    #[test]
    fn form_encoding() {
        assert_eq!(
            form_encode(&[("scope", "repository:a/b:pull push"), ("x", "&=%")]),
            "scope=repository%3Aa%2Fb%3Apull+push&x=%26%3D%25"
        );
    }
}
