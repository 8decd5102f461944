//! Real OCI registries for the tests: Debian's `docker-registry serve` on 127.0.0.1 at a free port,
//! storage in a temp dir, in three flavours (plain HTTP, htpasswd basic auth, TLS with a test CA), and
//! pushing the test images into them with skopeo. docker-registry 2.8 accepts basic auth over plain
//! HTTP, so the auth flavour is plain HTTP. A registry lives as long as its [`Registry`] value, and no
//! longer than the test process: it runs under a small shell supervisor that stops it and deletes its
//! directory as soon as our end of a pipe closes, which also covers the process-wide [`Registry::shared`]
//! (statics are never dropped) and a test process killed outright. A [`RecordingProxy`] in front of a
//! registry records which Authorization headers reached it. This module must never point a test at a
//! registry outside 127.0.0.1.

use std::collections::HashSet;
use std::io::{Read, Write};
use std::net::{Ipv4Addr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use base64::Engine as _;
use berth::engine::digest::Digest;

use super::images::{TestImage, images};

/// User name and password of the auth flavour.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Creds {
    pub username: String,
    pub password: String,
}

/// The registry's TLS material.
#[derive(Debug)]
struct Tls {
    /// The test CA, PEM (what berth's hosts.toml `ca` names).
    ca_pem: PathBuf,
    /// A directory holding only `ca.crt`, for skopeo's `--dest-cert-dir`.
    cert_dir: PathBuf,
    client: Arc<rustls::ClientConfig>,
}

/// A running docker-registry.
#[derive(Debug)]
pub struct Registry {
    dir: PathBuf,
    port: u16,
    creds: Option<Creds>,
    tls: Option<Tls>,
    supervisor: Child,
    /// Our end of the supervisor's stdin: closing it stops the registry.
    lifeline: Option<ChildStdin>,
    /// `repo:tag` already pushed, so repeated pushes are free.
    pushed: Mutex<HashSet<String>>,
}

/// Stops the registry when stdin reaches EOF (our end closed, or this process died), then deletes its
/// directory; exits when the registry exits, so the harness notices a registry that failed to start.
const SUPERVISOR: &str = r#"
dir="$1"
docker-registry serve "$dir/config.yml" >>"$dir/registry.log" 2>&1 </dev/null &
reg=$!
exec 3<&0
{ read -r _ ; kill "$reg" 2>/dev/null ; while kill -0 "$reg" 2>/dev/null; do sleep 0.1; done ; rm -rf "$dir" ; } <&3 &
wait "$reg"
"#;

impl Registry {
    /// A plain HTTP registry without authentication.
    pub fn plain() -> Registry {
        Self::start(None, false)
    }

    /// A plain HTTP registry requiring basic auth (user `berth`, password `e2e-secret`).
    pub fn with_auth() -> Registry {
        Self::with_credentials("berth", "e2e-secret")
    }

    /// A plain HTTP registry requiring basic auth with these credentials.
    pub fn with_credentials(username: &str, password: &str) -> Registry {
        Self::start(Some(Creds { username: username.into(), password: password.into() }), false)
    }

    /// An HTTPS registry whose certificate (for 127.0.0.1 and localhost) is signed by a fresh test CA,
    /// see [`Registry::ca_pem`].
    pub fn with_tls() -> Registry {
        Self::start(None, true)
    }

    /// The process-wide plain registry holding every test image under all its tags. Tests only read
    /// from it; a test that damages a registry starts its own.
    pub fn shared() -> &'static Registry {
        static SHARED: OnceLock<Registry> = OnceLock::new();
        SHARED.get_or_init(|| {
            let reg = Registry::plain();
            for image in images().all() {
                reg.push(image);
            }
            reg
        })
    }

    fn start(creds: Option<Creds>, tls: bool) -> Registry {
        super::require_prerequisites();
        let mut last = String::new();
        // The port is picked by binding :0 and released before docker-registry binds it: another
        // process may take it in between, so a failed start is retried on a new port.
        for _ in 0..5 {
            match Self::try_start(creds.clone(), tls) {
                Ok(r) => return r,
                Err(e) => last = e,
            }
        }
        panic!("starting docker-registry failed 5 times; last: {last}");
    }

    fn try_start(creds: Option<Creds>, tls: bool) -> Result<Registry, String> {
        let dir = super::temp_dir("berth-e2e-registry-");
        let port = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
            .and_then(|l| l.local_addr())
            .map_err(|e| format!("finding a free port: {e}"))?
            .port();
        let mut config = format!(
            "version: 0.1\n\
             log:\n  level: warn\n  accesslog:\n    disabled: true\n\
             storage:\n  filesystem:\n    rootdirectory: {storage}\n  delete:\n    enabled: true\n\
             http:\n  addr: 127.0.0.1:{port}\n  secret: berth-e2e\n",
            storage = dir.join("storage").display()
        );
        let tls = if tls {
            let (tls, cert, key) = make_tls(&dir)?;
            config += &format!("  tls:\n    certificate: {}\n    key: {}\n", cert.display(), key.display());
            Some(tls)
        } else {
            None
        };
        if let Some(c) = &creds {
            let out = Command::new("htpasswd")
                .args(["-Bbn", &c.username, &c.password])
                .output()
                .map_err(|e| format!("running htpasswd: {e}"))?;
            if !out.status.success() {
                return Err(format!("htpasswd failed: {}", String::from_utf8_lossy(&out.stderr)));
            }
            let file = dir.join("htpasswd");
            std::fs::write(&file, &out.stdout).map_err(|e| format!("writing {}: {e}", file.display()))?;
            config += &format!("auth:\n  htpasswd:\n    realm: berth-e2e\n    path: {}\n", file.display());
        }
        std::fs::write(dir.join("config.yml"), config).map_err(|e| format!("writing config.yml: {e}"))?;
        let mut supervisor = Command::new("sh")
            .args(["-c", SUPERVISOR, "berth-e2e-registry"])
            .arg(&dir)
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| format!("spawning docker-registry: {e}"))?;
        let lifeline = supervisor.stdin.take();
        let mut reg =
            Registry { dir, port, creds, tls, supervisor, lifeline, pushed: Mutex::new(HashSet::new()) };
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let log = || std::fs::read_to_string(reg.dir.join("registry.log")).unwrap_or_default();
            if let Ok(Some(status)) = reg.supervisor.try_wait() {
                return Err(format!("docker-registry exited ({status}) before serving:\n{}", log()));
            }
            match reg.get("/v2/", reg.creds.clone().as_ref()) {
                Ok(200) => return Ok(reg),
                Ok(code) => return Err(format!("GET /v2/ answered {code}:\n{}", log())),
                Err(_) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(50)),
                Err(e) => return Err(format!("docker-registry not serving after 20s: {e}\n{}", log())),
            }
        }
    }

    /// `127.0.0.1:<port>`: the registry host of image references.
    pub fn host(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// `http://127.0.0.1:<port>` or `https://…`.
    pub fn url(&self) -> String {
        let scheme = if self.tls.is_some() { "https" } else { "http" };
        format!("{scheme}://{}", self.host())
    }

    /// The credentials, for the auth flavour.
    pub fn creds(&self) -> Option<&Creds> {
        self.creds.as_ref()
    }

    /// The test CA certificate (PEM file), for the TLS flavour.
    pub fn ca_pem(&self) -> Option<&Path> {
        self.tls.as_ref().map(|t| t.ca_pem.as_path())
    }

    /// The registry's storage root (`docker/registry/v2/...` below it).
    pub fn storage_dir(&self) -> PathBuf {
        self.dir.join("storage")
    }

    /// Where the registry keeps the bytes of blob `digest` (to corrupt them).
    pub fn blob_data(&self, digest: &Digest) -> PathBuf {
        let hex = digest.hex();
        self.storage_dir().join(format!("docker/registry/v2/blobs/sha256/{}/{hex}/data", &hex[..2]))
    }

    /// containerd-style `hosts.toml` content that makes berth reach this registry under its own name
    /// (`server` with the right scheme, and the CA for the TLS flavour).
    pub fn hosts_toml(&self) -> String {
        let mut toml = format!("server = \"{}\"\n", self.url());
        if let Some(ca) = self.ca_pem() {
            toml += &format!("ca = \"{}\"\n", ca.display());
        }
        toml
    }

    /// Pushes `image` under all its tags with `skopeo copy --all`, which keeps blobs as they are (the
    /// zstd layer stays zstd, the index stays an index).
    pub fn push(&self, image: &TestImage) {
        let layout = images().layout();
        for tag in &image.tags {
            let dest = image.tag_reference(&self.host(), tag);
            if self.pushed.lock().unwrap().contains(&dest) {
                continue;
            }
            let mut cmd = Command::new("skopeo");
            cmd.args(["--policy", &policy_file().display().to_string()]).args([
                "copy",
                "--all",
                "--quiet",
                "--retry-times",
                "2",
            ]);
            match &self.tls {
                Some(t) => cmd.arg("--dest-cert-dir").arg(&t.cert_dir),
                None => cmd.arg("--dest-tls-verify=false"),
            };
            if let Some(c) = &self.creds {
                cmd.arg("--dest-creds").arg(format!("{}:{}", c.username, c.password));
            }
            cmd.arg(format!("oci:{}:{}", layout.display(), image.layout_ref)).arg(format!("docker://{dest}"));
            super::run(&mut cmd);
            self.pushed.lock().unwrap().insert(dest);
        }
    }

    /// `skopeo inspect` of `<host>/<reference>` with the flags this registry needs (`--raw`, `--config`
    /// or nothing in `what`); returns skopeo's stdout.
    pub fn inspect(&self, what: &[&str], reference: &str) -> String {
        let mut cmd = Command::new("skopeo");
        cmd.args(["--policy", &policy_file().display().to_string(), "inspect"]).args(what);
        match &self.tls {
            Some(t) => cmd.arg("--cert-dir").arg(&t.cert_dir),
            None => cmd.arg("--tls-verify=false"),
        };
        if let Some(c) = &self.creds {
            cmd.arg("--creds").arg(format!("{}:{}", c.username, c.password));
        }
        super::run(cmd.arg(format!("docker://{reference}")))
    }

    /// `GET <path>` on the registry (through TLS with the test CA for that flavour), with basic auth
    /// when `creds` are given; returns the HTTP status code.
    pub fn get(&self, path: &str, creds: Option<&Creds>) -> std::io::Result<u16> {
        let mut request = format!("GET {path} HTTP/1.1\r\nHost: {}\r\nConnection: close\r\n", self.host());
        if let Some(c) = creds {
            let token =
                base64::engine::general_purpose::STANDARD.encode(format!("{}:{}", c.username, c.password));
            request += &format!("Authorization: Basic {token}\r\n");
        }
        request += "\r\n";
        let tcp = TcpStream::connect((Ipv4Addr::LOCALHOST, self.port))?;
        tcp.set_read_timeout(Some(Duration::from_secs(10)))?;
        let mut response = Vec::new();
        match &self.tls {
            None => {
                let mut tcp = tcp;
                tcp.write_all(request.as_bytes())?;
                tcp.read_to_end(&mut response)?;
            }
            Some(t) => {
                let name = rustls_pki_types::ServerName::try_from("127.0.0.1").expect("an IP address");
                let conn =
                    rustls::ClientConnection::new(t.client.clone(), name).map_err(std::io::Error::other)?;
                let mut tls = rustls::StreamOwned::new(conn, tcp);
                tls.write_all(request.as_bytes())?;
                // docker-registry may close without a TLS close_notify: keep what arrived.
                if let Err(e) = tls.read_to_end(&mut response)
                    && response.is_empty()
                {
                    return Err(e);
                }
            }
        }
        let head = String::from_utf8_lossy(&response);
        head.split(' ')
            .nth(1)
            .and_then(|code| code.parse().ok())
            .ok_or_else(|| std::io::Error::other(format!("not an HTTP response: {:?}", head.lines().next())))
    }
}

/// One request a [`RecordingProxy`] forwarded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Recorded {
    /// `GET /v2/... HTTP/1.1`.
    pub request_line: String,
    /// The `Authorization` header, if the request had one.
    pub authorization: Option<String>,
}

/// A plain HTTP proxy on 127.0.0.1 in front of a registry, recording the request line and the
/// `Authorization` header of every request before forwarding it: it shows what a client sent to a
/// host, which the registry's own log does not. One request per connection (it asks the registry to
/// close after each answer), so no request passes unseen on a kept-alive connection. Stops when
/// dropped.
pub struct RecordingProxy {
    port: u16,
    seen: Arc<Mutex<Vec<Recorded>>>,
    stop: Arc<std::sync::atomic::AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl RecordingProxy {
    /// A proxy forwarding to `target` (a registry of this harness).
    pub fn start(target: &Registry) -> RecordingProxy {
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).expect("binding the recording proxy");
        let port = listener.local_addr().expect("proxy address").port();
        let upstream = target.port;
        let seen = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let (seen2, stop2) = (seen.clone(), stop.clone());
        let thread = std::thread::spawn(move || {
            for conn in listener.incoming() {
                if stop2.load(std::sync::atomic::Ordering::SeqCst) {
                    return;
                }
                let Ok(conn) = conn else { continue };
                let seen = seen2.clone();
                std::thread::spawn(move || {
                    let _ = proxy_one(conn, upstream, &seen);
                });
            }
        });
        RecordingProxy { port, seen, stop, thread: Some(thread) }
    }

    /// `http://127.0.0.1:<port>`.
    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// Every request forwarded so far.
    pub fn requests(&self) -> Vec<Recorded> {
        self.seen.lock().unwrap().clone()
    }
}

impl Drop for RecordingProxy {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::SeqCst);
        // Wakes the accept loop so that it sees the flag.
        let _ = TcpStream::connect((Ipv4Addr::LOCALHOST, self.port));
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Reads one request head from `client`, records it, forwards it to the registry on `upstream` with
/// `Connection: close`, then copies bytes both ways until the registry closes.
fn proxy_one(mut client: TcpStream, upstream: u16, seen: &Mutex<Vec<Recorded>>) -> std::io::Result<()> {
    client.set_read_timeout(Some(Duration::from_secs(30)))?;
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        if client.read(&mut byte)? == 0 {
            return Ok(());
        }
        head.push(byte[0]);
        if head.len() > 64 * 1024 {
            return Err(std::io::Error::other("request head too long"));
        }
    }
    let text = String::from_utf8_lossy(&head).into_owned();
    let mut lines = text.split("\r\n").filter(|l| !l.is_empty());
    let request_line = lines.next().unwrap_or("").to_string();
    let mut authorization = None;
    let mut forwarded = format!("{request_line}\r\n");
    for line in lines {
        let name = line.split(':').next().unwrap_or("").trim().to_ascii_lowercase();
        if name == "authorization" {
            authorization = Some(line.split_once(':').map(|(_, v)| v.trim().to_string()).unwrap_or_default());
        }
        if name != "connection" {
            forwarded += &format!("{line}\r\n");
        }
    }
    forwarded += "Connection: close\r\n\r\n";
    seen.lock().unwrap().push(Recorded { request_line, authorization });

    let mut server = TcpStream::connect((Ipv4Addr::LOCALHOST, upstream))?;
    server.write_all(forwarded.as_bytes())?;
    // A request body (none in a pull, but a token POST could have one) follows the head.
    let (mut from_client, mut to_server) = (client.try_clone()?, server.try_clone()?);
    std::thread::spawn(move || {
        let _ = std::io::copy(&mut from_client, &mut to_server);
    });
    std::io::copy(&mut server, &mut client)?;
    let _ = client.shutdown(std::net::Shutdown::Both);
    Ok(())
}

impl Drop for Registry {
    fn drop(&mut self) {
        // Closing the pipe makes the supervisor stop docker-registry and delete the directory.
        drop(self.lifeline.take());
        let _ = self.supervisor.wait();
    }
}

/// A skopeo signature policy accepting anything, so pushes work without /etc/containers/policy.json.
fn policy_file() -> &'static Path {
    static POLICY: OnceLock<PathBuf> = OnceLock::new();
    POLICY.get_or_init(|| {
        let path = std::env::temp_dir().join("berth-e2e-skopeo-policy.json");
        let tmp = path.with_extension(format!("{}.tmp", std::process::id()));
        std::fs::write(&tmp, br#"{"default":[{"type":"insecureAcceptAnything"}]}"#)
            .and_then(|_| std::fs::rename(&tmp, &path))
            .unwrap_or_else(|e| panic!("writing {}: {e}", path.display()));
        path
    })
}

/// Writes a fresh CA and a server certificate for 127.0.0.1 and localhost into `dir`; returns the TLS
/// material and the server's certificate and key paths.
fn make_tls(dir: &Path) -> Result<(Tls, PathBuf, PathBuf), String> {
    use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair, KeyUsagePurpose};
    let err = |e: rcgen::Error| format!("generating test certificates: {e}");
    let ca_key = KeyPair::generate().map_err(err)?;
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).map_err(err)?;
    ca_params.distinguished_name.push(DnType::CommonName, "berth e2e test CA");
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    let ca_cert = ca_params.self_signed(&ca_key).map_err(err)?;
    let issuer = Issuer::new(ca_params, ca_key);
    let key = KeyPair::generate().map_err(err)?;
    let mut params =
        CertificateParams::new(vec!["127.0.0.1".to_string(), "localhost".to_string()]).map_err(err)?;
    params.distinguished_name.push(DnType::CommonName, "127.0.0.1");
    let cert = params.signed_by(&key, &issuer).map_err(err)?;

    let write = |name: &str, pem: String| -> Result<PathBuf, String> {
        let path = dir.join(name);
        std::fs::write(&path, pem).map_err(|e| format!("writing {}: {e}", path.display()))?;
        Ok(path)
    };
    let ca_pem = write("ca.pem", ca_cert.pem())?;
    let cert_dir = dir.join("certs");
    std::fs::create_dir(&cert_dir).map_err(|e| format!("creating {}: {e}", cert_dir.display()))?;
    write("certs/ca.crt", ca_cert.pem())?;
    let cert_path = write("server.pem", cert.pem())?;
    let key_path = write("server-key.pem", key.serialize_pem())?;

    let mut roots = rustls::RootCertStore::empty();
    roots.add(ca_cert.der().clone()).map_err(|e| format!("trusting the test CA: {e}"))?;
    let client =
        rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_safe_default_protocol_versions()
            .map_err(|e| format!("configuring rustls: {e}"))?
            .with_root_certificates(roots)
            .with_no_client_auth();
    Ok((Tls { ca_pem, cert_dir, client: Arc::new(client) }, cert_path, key_path))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_registry_serves_v2_and_cleans_up_on_drop() {
        let reg = Registry::plain();
        assert_eq!(reg.get("/v2/", None).unwrap(), 200);
        assert!(reg.url().starts_with("http://127.0.0.1:"));
        assert_eq!(reg.hosts_toml(), format!("server = \"{}\"\n", reg.url()));
        let (dir, port) = (reg.dir.clone(), reg.port);
        assert!(reg.storage_dir().starts_with(&dir));
        drop(reg);
        assert!(TcpStream::connect((Ipv4Addr::LOCALHOST, port)).is_err(), "registry still listening");
        let deadline = Instant::now() + Duration::from_secs(10);
        while dir.exists() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(50));
        }
        assert!(!dir.exists(), "{} left behind", dir.display());
    }

    #[test]
    fn auth_registry_requires_the_password() {
        let reg = Registry::with_auth();
        let creds = reg.creds().unwrap().clone();
        assert_eq!(reg.get("/v2/", None).unwrap(), 401);
        let wrong = Creds { password: "wrong".into(), ..creds.clone() };
        assert_eq!(reg.get("/v2/", Some(&wrong)).unwrap(), 401);
        assert_eq!(reg.get("/v2/", Some(&creds)).unwrap(), 200);

        // Pushing needs the credentials too.
        let busybox = &images().busybox;
        reg.push(busybox);
        let raw = reg.inspect(&["--raw"], &busybox.reference(&reg.host()));
        assert_eq!(Digest::of(raw.as_bytes()), busybox.digest);
        let anonymous = Command::new("skopeo")
            .args(["inspect", "--raw", "--tls-verify=false"])
            .arg(format!("docker://{}", busybox.reference(&reg.host())))
            .output()
            .unwrap();
        assert!(!anonymous.status.success(), "anonymous inspect succeeded on the auth registry");
    }

    #[test]
    fn recording_proxy_forwards_and_records_authorization() {
        let reg = Registry::with_auth();
        let proxy = RecordingProxy::start(&reg);
        let get = |auth: Option<&str>| -> u16 {
            let mut tcp = TcpStream::connect((Ipv4Addr::LOCALHOST, proxy.port)).unwrap();
            let mut req =
                format!("GET /v2/ HTTP/1.1\r\nHost: 127.0.0.1:{}\r\nConnection: keep-alive\r\n", proxy.port);
            if let Some(a) = auth {
                req += &format!("Authorization: {a}\r\n");
            }
            tcp.write_all(format!("{req}\r\n").as_bytes()).unwrap();
            let mut response = String::new();
            tcp.read_to_string(&mut response).unwrap();
            response.split(' ').nth(1).unwrap().parse().unwrap()
        };
        let c = reg.creds().unwrap();
        let b64 = base64::engine::general_purpose::STANDARD.encode(format!("{}:{}", c.username, c.password));
        let good = format!("Basic {b64}");
        assert_eq!(get(None), 401);
        assert_eq!(get(Some(&good)), 200);
        let seen = proxy.requests();
        assert_eq!(seen.len(), 2);
        assert!(seen.iter().all(|r| r.request_line == "GET /v2/ HTTP/1.1"), "{seen:?}");
        assert_eq!(seen[0].authorization, None);
        assert_eq!(seen[1].authorization, Some(good));
    }

    #[test]
    fn tls_registry_is_trusted_only_with_the_test_ca() {
        let reg = Registry::with_tls();
        assert!(reg.url().starts_with("https://"));
        assert_eq!(reg.get("/v2/", None).unwrap(), 200);
        let ca = reg.ca_pem().unwrap();
        assert!(std::fs::read_to_string(ca).unwrap().starts_with("-----BEGIN CERTIFICATE-----"));
        assert!(reg.hosts_toml().contains(&format!("ca = \"{}\"", ca.display())));

        // curl checks the certificate independently of rustls, for both names.
        for host in ["127.0.0.1", "localhost"] {
            let url = format!("https://{host}:{}/v2/", reg.port);
            let with_ca = super::super::run(
                Command::new("curl")
                    .args(["-sS", "-o", "/dev/null", "-w", "%{http_code}", "--cacert"])
                    .arg(ca)
                    .arg(&url),
            );
            assert_eq!(with_ca, "200", "{url}");
            let without = Command::new("curl").args(["-sS", "-o", "/dev/null"]).arg(&url).output().unwrap();
            assert!(!without.status.success(), "{url} accepted without the test CA");
        }

        let busybox = &images().busybox;
        reg.push(busybox);
        let raw = reg.inspect(&["--raw"], &busybox.reference(&reg.host()));
        assert_eq!(Digest::of(raw.as_bytes()), busybox.digest);
    }

    #[test]
    fn shared_registry_serves_every_image_as_built() {
        let reg = Registry::shared();
        let images = images();
        for image in images.all() {
            for tag in &image.tags {
                let raw = reg.inspect(&["--raw"], &image.tag_reference(&reg.host(), tag));
                assert_eq!(Digest::of(raw.as_bytes()), image.digest, "{}:{tag}", image.repo);
            }
            // Every blob is in the registry's storage, byte for byte.
            for m in &image.manifests {
                for l in &m.layers {
                    let data = reg.blob_data(&l.digest);
                    let len =
                        std::fs::metadata(&data).unwrap_or_else(|e| panic!("{}: {e}", data.display())).len();
                    assert_eq!(len, l.size, "{}", data.display());
                }
            }
        }
        // The zstd layer stayed zstd, the index stayed an index.
        let raw = reg.inspect(&["--raw"], &images.zstd.reference(&reg.host()));
        let manifest: berth::engine::oci::Manifest = serde_json::from_str(&raw).unwrap();
        assert_eq!(manifest.layers[0].media_type, berth::engine::oci::media::OCI_LAYER_ZSTD);
        let raw = reg.inspect(&["--raw"], &images.multiarch.reference(&reg.host()));
        let index: berth::engine::oci::Index = serde_json::from_str(&raw).unwrap();
        assert_eq!(index.manifests.len(), images.multiarch.manifests.len());
        // skopeo resolves the index to this host's platform, as berth must.
        let config: berth::engine::oci::ImageConfig =
            serde_json::from_str(&reg.inspect(&["--config"], &images.multiarch.reference(&reg.host())))
                .unwrap();
        let host_config: berth::engine::oci::ImageConfig =
            serde_json::from_str(&reg.inspect(&["--config"], &images.busybox.reference(&reg.host())))
                .unwrap();
        assert_eq!(config, host_config);
        let user: berth::engine::oci::ImageConfig =
            serde_json::from_str(&reg.inspect(&["--config"], &images.user.reference(&reg.host()))).unwrap();
        assert_eq!(user.config.user, "1000");
    }

    #[test]
    fn blob_data_points_at_the_stored_bytes() {
        let reg = Registry::plain();
        let busybox = &images().busybox;
        reg.push(busybox);
        let layer = &busybox.host_manifest().layers[0];
        let stored = std::fs::read(reg.blob_data(&layer.digest)).unwrap();
        assert_eq!(Digest::of(&stored), layer.digest);
    }
}
