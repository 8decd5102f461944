//! Registry authentication: credentials (from a pull request or a Docker `config.json`), parsing
//! `WWW-Authenticate` challenges, and the token dance of the distribution spec (anonymous or
//! basic-authenticated GET to the realm, OAuth2 POST with an identity token, as containerd does),
//! with tokens cached per (host, scope) until they expire.
//! Secrets must never reach a log line, an error message or a `Debug` output.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::path::Path;
use std::time::{Duration, Instant};

use base64::Engine as _;
use reqwest::StatusCode;
use reqwest::header::{AUTHORIZATION, CONTENT_TYPE, HeaderMap, HeaderValue};
use serde::Deserialize;

use crate::engine::image::registry::{go_duration, transport_error};
use crate::error::{Context, Error, ErrorKind, Result};

/// Credentials for one registry. Empty strings mean "not given".
#[derive(Clone, Default, PartialEq, Eq)]
pub struct Credentials {
    pub username: String,
    pub password: String,
    /// An OAuth2 refresh token ("identity token"), exchanged for access tokens at the realm.
    pub identity_token: String,
    /// A bearer token for the registry itself, sent as is.
    pub registry_token: String,
}

impl fmt::Debug for Credentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let secret = |s: &str| if s.is_empty() { "" } else { "<redacted>" };
        f.debug_struct("Credentials")
            .field("username", &self.username)
            .field("password", &format_args!("{:?}", secret(&self.password)))
            .field("identity_token", &format_args!("{:?}", secret(&self.identity_token)))
            .field("registry_token", &format_args!("{:?}", secret(&self.registry_token)))
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
    /// The credentials for `domain` in a Docker `config.json` (`auths`; credential helpers are not
    /// run). Keys may be `host`, `https://host` or `http://host/v1/…`; `docker.io` also matches
    /// `index.docker.io` (Docker's `https://index.docker.io/v1/`). A missing file means no credentials.
    pub fn from_docker_config(path: &Path, domain: &str) -> Result<Option<Credentials>> {
        let text = match std::fs::read(path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(e).context(|| format!("reading credentials file {}", path.display())),
        };
        // serde_json's error names a position, never the content.
        let config: DockerConfig = serde_json::from_slice(&text)
            .context_kind(ErrorKind::InvalidArgument, || {
                format!("parsing credentials file {}", path.display())
            })?;
        let wanted = |key: &str| {
            let host = key.trim_start_matches("https://").trim_start_matches("http://");
            let host = host.split('/').next().unwrap_or("");
            host == domain
                || (domain == "docker.io" && matches!(host, "index.docker.io" | "registry-1.docker.io"))
        };
        for (key, a) in config.auths.iter().filter(|(k, _)| wanted(k)) {
            let mut c = Credentials {
                username: a.username.clone(),
                password: a.password.clone(),
                identity_token: a.identitytoken.clone(),
                registry_token: a.registrytoken.clone(),
            };
            if !a.auth.is_empty() {
                let bad = || {
                    Error::invalid(format!(
                        "invalid \"auth\" for {key:?} in credentials file {}",
                        path.display()
                    ))
                };
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
/// The most of a token server's answer that is read.
const MAX_TOKEN_RESPONSE: usize = 1 << 20;

/// What a token request needs from the registry client: its HTTP client (same TLS settings as
/// the registry host), the host's extra headers, and the progress timeout.
pub(crate) struct TokenClient<'a> {
    pub http: &'a reqwest::Client,
    pub headers: &'a HeaderMap,
    pub timeout: Duration,
}

/// Authorization state for one repository: the challenges hosts answered with and the tokens
/// fetched for them. Shared by every request of a pull.
pub(crate) struct Authorizer {
    creds: Option<Credentials>,
    state: tokio::sync::Mutex<State>,
}

#[derive(Default)]
struct State {
    /// The scheme each host asked for on a 401 (`basic` or `bearer` with its parameters).
    challenges: HashMap<String, Challenge>,
    tokens: HashMap<(String, String), (String, Instant)>,
}

impl Authorizer {
    pub(crate) fn new(creds: Option<Credentials>) -> Self {
        Authorizer { creds, state: tokio::sync::Mutex::new(State::default()) }
    }

    /// Whether any credentials were given (for error messages).
    pub(crate) fn has_credentials(&self) -> bool {
        self.creds.is_some()
    }

    /// The `Authorization` value for a request to `host` needing `scope`, if the host asked for
    /// authentication before (or a registry token was given). Fetches a token when needed; the
    /// lock is held meanwhile so concurrent requests share one token request.
    pub(crate) async fn authorization(
        &self,
        tc: &TokenClient<'_>,
        host: &str,
        scope: &str,
    ) -> Result<Option<String>> {
        if let Some(c) = &self.creds
            && !c.registry_token.is_empty()
        {
            return Ok(Some(format!("Bearer {}", c.registry_token)));
        }
        let mut state = self.state.lock().await;
        let Some(challenge) = state.challenges.get(host).cloned() else { return Ok(None) };
        if challenge.scheme == "basic" {
            return Ok(self.creds.as_ref().and_then(Credentials::basic_header));
        }
        let key = (host.to_string(), scope.to_string());
        if let Some((token, expiry)) = state.tokens.get(&key)
            && Instant::now() < *expiry
        {
            return Ok(Some(format!("Bearer {token}")));
        }
        let (token, lifetime) = self.fetch_token(tc, host, &challenge, scope).await?;
        state.tokens.insert(key, (token.clone(), Instant::now() + lifetime));
        Ok(Some(format!("Bearer {token}")))
    }

    /// Learns from a 401 answer of `host`. Returns whether retrying with (fresh) authorization can
    /// help: a bearer challenge (the cached token, if any, is dropped), or a basic challenge when
    /// a username and password are known.
    pub(crate) async fn unauthorized(&self, host: &str, www_authenticate: Option<&str>, scope: &str) -> bool {
        let challenges = www_authenticate.map(parse_challenges).unwrap_or_default();
        let mut state = self.state.lock().await;
        state.tokens.remove(&(host.to_string(), scope.to_string()));
        let pick = challenges
            .iter()
            .find(|c| c.scheme == "bearer" && c.params.contains_key("realm"))
            .or_else(|| challenges.iter().find(|c| c.scheme == "basic"));
        match pick {
            Some(c) if c.scheme == "bearer" => {
                state.challenges.insert(host.to_string(), c.clone());
                true
            }
            Some(c) => {
                state.challenges.insert(host.to_string(), c.clone());
                self.creds.as_ref().and_then(Credentials::basic_header).is_some()
            }
            None => false,
        }
    }

    async fn fetch_token(
        &self,
        tc: &TokenClient<'_>,
        host: &str,
        c: &Challenge,
        scope: &str,
    ) -> Result<(String, Duration)> {
        let realm = c.params.get("realm").map(String::as_str).unwrap_or("");
        let realm_url = reqwest::Url::parse(realm).map_err(|_| {
            Error::unavailable(format!("registry {host} sent an invalid token realm {realm:?}"))
        })?;
        let service = c.params.get("service").cloned().unwrap_or_default();
        let mut scopes = vec![scope.to_string()];
        for s in c.params.get("scope").map(|s| s.split(' ')).into_iter().flatten() {
            if !s.is_empty() && !scopes.iter().any(|x| x == s) {
                scopes.push(s.to_string());
            }
        }
        let creds = self.creds.as_ref();
        let (user, secret) = match creds {
            Some(c) if !c.identity_token.is_empty() => (c.username.as_str(), c.identity_token.as_str()),
            Some(c) if !c.password.is_empty() => (c.username.as_str(), c.password.as_str()),
            _ => ("", ""),
        };
        let auth_host = match realm_url.port() {
            Some(p) => format!("{}:{p}", realm_url.host_str().unwrap_or("")),
            None => realm_url.host_str().unwrap_or("").to_string(),
        };
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
        let t: TokenResponse = serde_json::from_slice(&body)
            .map_err(|_| Error::unavailable(format!("{what}: the answer is not a token response")))?;
        let token = if t.access_token.is_empty() { t.token } else { t.access_token };
        if token.is_empty() {
            return Err(Error::unavailable(format!("{what}: the answer holds no token")));
        }
        let lifetime =
            if t.expires_in == 0 { DEFAULT_TOKEN_LIFETIME } else { Duration::from_secs(t.expires_in) };
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_never_shows_secrets() {
        let c = Credentials {
            username: "bob".into(),
            password: "hunter2".into(),
            identity_token: "idtok".into(),
            registry_token: "regtok".into(),
        };
        let s = format!("{c:?} {c:#?}");
        assert!(s.contains("bob") && s.contains("<redacted>"), "{s}");
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
