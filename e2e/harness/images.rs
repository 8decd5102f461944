//! The test images, built here from busybox-static into one OCI layout, with what a test can expect
//! inside each. They are built once per test process and cached under the system temp dir, keyed by a
//! hash of everything that shapes them (this file, the tar writer, the busybox binary, the large image's
//! size), so reruns skip the build. Builds are deterministic: fixed mtimes, owners and pseudo-random
//! content. This module must never depend on berth's own image code: the images test it.
//!
//! Registry names are `e2e/<name>:<tag>`; see [`TestImages`] for the list.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{self, Read};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use berth::engine::digest::{Digest, Hasher};
use berth::engine::oci::{
    self, Descriptor, ImageConfig, Index, Manifest, Platform, RootFs, RuntimeConfig, media,
};
use serde::{Deserialize, Serialize};

use super::layer::{BlobDir, Compression, Entry, Kind, LayerBlob, MTIME, TarWriter};

/// The busybox-static binary every runnable image is made of.
pub const BUSYBOX: &str = "/bin/busybox";

/// Busybox applets linked in `/bin` of every busybox-based image (`/bin/<applet> -> busybox`).
pub const APPLETS: &[&str] = &[
    "sh",
    "ash",
    "ls",
    "cat",
    "sleep",
    "id",
    "echo",
    "env",
    "true",
    "false",
    "mkdir",
    "rm",
    "rmdir",
    "cp",
    "mv",
    "ln",
    "touch",
    "chmod",
    "chown",
    "stat",
    "readlink",
    "realpath",
    "find",
    "grep",
    "sed",
    "awk",
    "head",
    "tail",
    "wc",
    "sort",
    "uniq",
    "tr",
    "cut",
    "tee",
    "xargs",
    "yes",
    "seq",
    "date",
    "hostname",
    "uname",
    "pwd",
    "test",
    "[",
    "printf",
    "kill",
    "ps",
    "top",
    "du",
    "df",
    "mount",
    "umount",
    "dd",
    "sha256sum",
    "md5sum",
    "basename",
    "dirname",
    "timeout",
    "nc",
    "wget",
    "ip",
    "ifconfig",
    "ping",
    "nslookup",
    "whoami",
    "nproc",
    "sync",
    "mkfifo",
    "tar",
    "gzip",
    "vi",
    "less",
    "more",
    "usleep",
];

/// `PATH` in every busybox-based image's config.
pub const PATH_ENV: &str = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// `created` of every image config.
const CREATED: &str = "2024-01-01T00:00:00Z";

/// Default size of `e2e/large:1` in MiB; `BERTH_E2E_LARGE_MIB` overrides it.
pub const LARGE_MIB_DEFAULT: u64 = 300;

/// A cached build of other inputs unused for this long is deleted when a new build is made.
const STALE_BUILD: std::time::Duration = std::time::Duration::from_secs(3 * 3600);

/// Data layers of `e2e/large:1` (on top of the busybox layer).
const LARGE_DATA_LAYERS: u64 = 4;

/// One platform's manifest of a test image.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PlatformManifest {
    pub platform: Platform,
    /// Digest of the manifest blob.
    pub digest: Digest,
    pub size: u64,
    /// Digest of the config blob: the image ID berth must report for a pull on this platform.
    pub config: Digest,
    pub layers: Vec<LayerBlob>,
}

/// An image as built and pushed: where it lives in a registry and every digest a test may check.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TestImage {
    /// Repository path in every registry, e.g. `e2e/busybox`.
    pub repo: String,
    /// Tags it is pushed under; the first is the one [`TestImage::reference`] uses.
    pub tags: Vec<String>,
    /// Its name in the OCI layout's index.json (`oci:<layout>:<layout_ref>` for skopeo).
    pub layout_ref: String,
    /// Media type of the top-level document (manifest or index).
    pub media_type: String,
    /// Digest of the top-level document: the `@sha256:` of `repo_digests`.
    pub digest: Digest,
    /// Its manifests: one for a plain image, one per platform for an index.
    pub manifests: Vec<PlatformManifest>,
}

impl TestImage {
    /// `<host>/<repo>:<first tag>`.
    pub fn reference(&self, host: &str) -> String {
        self.tag_reference(host, &self.tags[0])
    }

    /// `<host>/<repo>:<tag>`.
    pub fn tag_reference(&self, host: &str, tag: &str) -> String {
        format!("{host}/{}:{tag}", self.repo)
    }

    /// `<host>/<repo>@<digest>`: the pull-by-digest reference and the expected repo digest.
    pub fn digest_reference(&self, host: &str) -> String {
        format!("{host}/{}@{}", self.repo, self.digest)
    }

    /// The manifest this host pulls (the only one of a plain image).
    pub fn host_manifest(&self) -> &PlatformManifest {
        self.for_platform(&Platform::host())
    }

    /// The manifest for `platform`; panics if the image has none.
    pub fn for_platform(&self, platform: &Platform) -> &PlatformManifest {
        self.manifests
            .iter()
            .find(|m| platform.matches(&m.platform))
            .unwrap_or_else(|| panic!("{} has no manifest for {platform:?}", self.repo))
    }

    /// The image ID berth must report when this host pulls it (`sha256:<config digest>`).
    pub fn id(&self) -> String {
        self.host_manifest().config.to_string()
    }

    /// Compressed bytes of the layers this host pulls.
    pub fn layer_bytes(&self) -> u64 {
        self.host_manifest().layers.iter().map(|l| l.size).sum()
    }
}

/// The hostile images: each has a valid manifest and diff ID and one layer trying to write outside
/// the directory it is unpacked into. A pull must fail, and nothing may appear at [`Hostile::host_paths`]
/// nor anywhere under a file named [`Hostile::marker`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Hostile {
    /// `../../berth-e2e-escape-dotdot` and `../`×16 `tmp/berth-e2e-escape-dotdot`.
    DotDot,
    /// `evil -> /`, then the file `evil/tmp/berth-e2e-escape-abs-symlink`.
    AbsSymlink,
    /// `evil -> ../`×16 (the host's `/` from any depth), then `evil/tmp/berth-e2e-escape-rel-symlink`.
    RelSymlink,
    /// Hard links `passwd` to `../`×16 `etc/passwd` and `berth-e2e-hardlink-victim` to
    /// [`Hostile::HARDLINK_VICTIM`], then a regular file of the second name (an unpacker that opens the
    /// existing name instead of replacing it would write through the link into the host file).
    Hardlink,
    /// A GNU sparse file `berth-e2e-sparse-bomb` of [`Hostile::SPARSE_BYTES`], all hole but its last
    /// bytes, in a layer of a few hundred bytes: an unpacker writing the hole as zeros fills the disk.
    Sparse,
}

/// `../` repeated enough times to reach `/` from any unpack directory berth could use.
const UP: &str = "../../../../../../../../../../../../../../../../";

impl Hostile {
    pub const ALL: [Hostile; 5] =
        [Hostile::DotDot, Hostile::AbsSymlink, Hostile::RelSymlink, Hostile::Hardlink, Hostile::Sparse];

    /// The logical size of the [`Hostile::Sparse`] file: far over what berth lets a layer this small
    /// unpack to (1 GiB, the expansion guard's floor).
    pub const SPARSE_BYTES: u64 = 8 << 30;

    /// A file the Hardlink test creates on the host before pulling; it must keep its content and a
    /// link count of 1.
    pub const HARDLINK_VICTIM: &str = "/tmp/berth-e2e-hardlink-victim";

    /// The repository, e.g. `e2e/hostile-dotdot`.
    pub fn repo(self) -> &'static str {
        match self {
            Hostile::DotDot => "e2e/hostile-dotdot",
            Hostile::AbsSymlink => "e2e/hostile-abs-symlink",
            Hostile::RelSymlink => "e2e/hostile-rel-symlink",
            Hostile::Hardlink => "e2e/hostile-hardlink",
            Hostile::Sparse => "e2e/hostile-sparse",
        }
    }

    /// The file name the layer writes; no file of that name may exist anywhere after the pull.
    pub fn marker(self) -> &'static str {
        match self {
            Hostile::DotDot => "berth-e2e-escape-dotdot",
            Hostile::AbsSymlink => "berth-e2e-escape-abs-symlink",
            Hostile::RelSymlink => "berth-e2e-escape-rel-symlink",
            Hostile::Hardlink => "berth-e2e-hardlink-victim",
            Hostile::Sparse => "berth-e2e-sparse-bomb",
        }
    }

    /// Host paths a successful escape would create (the Hardlink kind attacks existing files instead:
    /// `/etc/passwd` and [`Hostile::HARDLINK_VICTIM`]; the Sparse kind attacks the disk).
    pub fn host_paths(self) -> Vec<PathBuf> {
        match self {
            Hostile::Hardlink | Hostile::Sparse => Vec::new(),
            _ => vec![Path::new("/tmp").join(self.marker())],
        }
    }

    fn write(self, w: &mut TarWriter<impl io::Write>) -> io::Result<()> {
        let escape = format!("{UP}tmp/{}", self.marker());
        let content = b"berth-e2e: escaped\n";
        match self {
            Hostile::DotDot => {
                w.entry(
                    &Entry::new(format!("../../{}", self.marker()).as_bytes(), Kind::File, 0o644),
                    content,
                )?;
                w.entry(&Entry::new(escape.as_bytes(), Kind::File, 0o644), content)
            }
            Hostile::AbsSymlink | Hostile::RelSymlink => {
                let target = if self == Hostile::AbsSymlink { "/" } else { UP.trim_end_matches('/') };
                w.symlink("evil", target)?;
                w.file(&format!("evil/tmp/{}", self.marker()), 0o644, content)
            }
            Hostile::Hardlink => {
                w.hardlink("passwd", &format!("{UP}etc/passwd"))?;
                w.hardlink(self.marker(), &format!("{UP}{}", &Self::HARDLINK_VICTIM[1..]))?;
                w.file(self.marker(), 0o644, content)
            }
            Hostile::Sparse => w.sparse(self.marker(), 0o644, Self::SPARSE_BYTES, b"berth-e2e: sparse end\n"),
        }
    }

    /// The raw (name, link target) pairs the layer must contain, for the harness self-test.
    pub fn expected_entries(self) -> Vec<(String, Option<String>)> {
        let escape = format!("{UP}tmp/{}", self.marker());
        match self {
            Hostile::DotDot => vec![(format!("../../{}", self.marker()), None), (escape, None)],
            Hostile::AbsSymlink => {
                vec![("evil".into(), Some("/".into())), (format!("evil/tmp/{}", self.marker()), None)]
            }
            Hostile::RelSymlink => vec![
                ("evil".into(), Some(UP.trim_end_matches('/').into())),
                (format!("evil/tmp/{}", self.marker()), None),
            ],
            Hostile::Hardlink => vec![
                ("passwd".into(), Some(format!("{UP}etc/passwd"))),
                (self.marker().into(), Some(format!("{UP}{}", &Self::HARDLINK_VICTIM[1..]))),
                (self.marker().into(), None),
            ],
            Hostile::Sparse => vec![(self.marker().into(), None)],
        }
    }
}

/// Every test image, built into one OCI layout.
///
/// * `busybox` — `e2e/busybox:1` and `:2` (same image): one gzip layer with `/bin/busybox`, the
///   [`APPLETS`] as symlinks to it, and empty `/dev /etc /proc /root /sys /tmp /usr /var`; config
///   `Env [PATH_ENV]`, `Cmd ["sh"]`, no entrypoint, no user.
/// * `layers` — `e2e/layers:1`: three gzip layers exercising whiteouts, an opaque directory, hard and
///   symbolic links, set-uid, ownership, mtime and an xattr; the result is [`LAYERS_TREE`] plus
///   [`LAYERS_ABSENT`] (check a rootfs with [`check_layers_tree`]).
/// * `multiarch` — `e2e/multiarch:1`: an OCI index of the busybox manifest for this host's platform
///   (linux/amd64 on CI) and small marker-only images for the other two of linux/amd64, linux/arm64/v8
///   and linux/s390x (a file `/<arch>-marker` holding `<arch>\n`).
/// * `zstd` — `e2e/zstd:1`: the busybox content plus `/etc/compression` (`zstd\n`, so its image ID
///   differs from busybox's) as one `tar+zstd` layer.
/// * `user` — `e2e/user:1`: busybox plus `/etc/passwd` and `/etc/group` with `app:x:1000:1000`,
///   config `User "1000"`; `username` — `e2e/username:1`, the same with `User "app"`.
/// * `large` — `e2e/large:1`: busybox plus 4 gzip layers totalling [`TestImages::large_mib`] MiB of
///   pseudo-random data (`/data<n>/small/<i>`: 500 small text files per layer; `/data<n>/big-<j>.bin`:
///   incompressible files of up to 32 MiB).
/// * `volume` — `e2e/volume:1`, for image volumes: two gzip data layers without busybox, holding
///   `/data.json` ([`VOLUME_DATA_JSON`]), `/etc/os-release` ([`VOLUME_OS_RELEASE`]), `/data/file.txt`
///   ([`VOLUME_FILE`]), the symlink `/data/etc -> ../etc` (stays inside) and the directory symlinks
///   `/escape-absolute -> /etc` and `/escape-relative -> ../../..` (lead out of the image).
/// * `hostile` — one image per [`Hostile`] kind.
/// * [`TestImages::docker_archive`] and [`TestImages::oci_archive`]: `e2e/busybox:1` as files.
#[derive(Debug, Serialize, Deserialize)]
pub struct TestImages {
    #[serde(skip)]
    layout: PathBuf,
    pub busybox: TestImage,
    pub layers: TestImage,
    pub multiarch: TestImage,
    pub zstd: TestImage,
    pub user: TestImage,
    pub username: TestImage,
    pub large: TestImage,
    pub volume: TestImage,
    /// In [`Hostile::ALL`] order.
    pub hostile: Vec<TestImage>,
    /// Size of the large image's data layers in MiB.
    pub large_mib: u64,
}

impl TestImages {
    /// The OCI layout holding every image (`oci:<layout>:<layout_ref>`).
    pub fn layout(&self) -> &Path {
        &self.layout
    }

    /// Every image, each to be pushed under all its tags.
    pub fn all(&self) -> Vec<&TestImage> {
        let mut all = vec![
            &self.busybox,
            &self.layers,
            &self.multiarch,
            &self.zstd,
            &self.user,
            &self.username,
            &self.large,
            &self.volume,
        ];
        all.extend(&self.hostile);
        all
    }

    /// The image of one hostile kind.
    pub fn hostile(&self, h: Hostile) -> &TestImage {
        let i = Hostile::ALL.iter().position(|x| *x == h).expect("listed");
        &self.hostile[i]
    }

    /// A `docker save`-style archive of `e2e/busybox:1`: `manifest.json` (RepoTags `["e2e/busybox:1"]`),
    /// `repositories`, `<config hex>.json` and `<diff id hex>/layer.tar` (uncompressed).
    pub fn docker_archive(&self) -> PathBuf {
        self.layout.with_file_name("busybox-docker.tar")
    }

    /// An OCI layout tarball of `e2e/busybox:1` as `docker save` writes since Docker 25: index.json's one
    /// manifest is annotated `io.containerd.image.name = docker.io/e2e/busybox:1` and
    /// `org.opencontainers.image.ref.name = 1`.
    pub fn oci_archive(&self) -> PathBuf {
        self.layout.with_file_name("busybox-oci.tar")
    }
}

/// The test images, built (or loaded from the cache) on first use in this process.
pub fn images() -> &'static TestImages {
    static IMAGES: OnceLock<TestImages> = OnceLock::new();
    IMAGES.get_or_init(|| {
        super::require_prerequisites();
        load_or_build().unwrap_or_else(|e| panic!("building the e2e test images: {e}"))
    })
}

fn large_mib() -> u64 {
    match std::env::var("BERTH_E2E_LARGE_MIB") {
        Ok(v) => v.parse().unwrap_or_else(|_| panic!("BERTH_E2E_LARGE_MIB={v:?} is not a number of MiB")),
        Err(_) => LARGE_MIB_DEFAULT,
    }
}

/// The cache key: a hash of every input of the build.
fn cache_key(busybox: &[u8], large_mib: u64) -> String {
    let mut h = Hasher::new();
    for part in [include_str!("images.rs").as_bytes(), include_str!("layer.rs").as_bytes(), busybox] {
        h.update(&(part.len() as u64).to_le_bytes());
        h.update(part);
    }
    h.update(format!("{large_mib} {}", std::env::consts::ARCH).as_bytes());
    h.finish().hex()[..16].to_string()
}

fn load_or_build() -> io::Result<TestImages> {
    let busybox = std::fs::read(BUSYBOX)?;
    let large_mib = large_mib();
    let cache = std::env::temp_dir().join("berth-e2e-images");
    std::fs::create_dir_all(&cache)?;
    // One builder at a time across test processes; the others wait and then load its result.
    let lock = File::create(cache.join("lock"))?;
    let _lock = nix::fcntl::Flock::lock(lock, nix::fcntl::FlockArg::LockExclusive)
        .map_err(|(_, e)| io::Error::other(format!("locking the image cache: {e}")))?;
    let key = cache_key(&busybox, large_mib);
    let dir = cache.join(&key);
    let catalog = dir.join("catalog.json");
    if let Ok(bytes) = std::fs::read(&catalog) {
        let mut images: TestImages = serde_json::from_slice(&bytes).map_err(io::Error::other)?;
        images.layout = dir.join("layout");
        // Marks the build as in use, so another checkout's run does not remove it (see below).
        File::options().append(true).open(&catalog)?.set_modified(std::time::SystemTime::now())?;
        return Ok(images);
    }
    // Other builds (older versions of this file, other checkouts on the machine) are big: remove those
    // unused for a while, and incomplete ones (a build runs only under the lock, so none is under way).
    for entry in std::fs::read_dir(&cache)? {
        let entry = entry?;
        if !entry.file_type()?.is_dir() || entry.file_name() == key.as_str() {
            continue;
        }
        let last_used = std::fs::metadata(entry.path().join("catalog.json")).and_then(|m| m.modified());
        let idle = last_used.ok().and_then(|t| t.elapsed().ok());
        if idle.is_none_or(|idle| idle > STALE_BUILD) {
            std::fs::remove_dir_all(entry.path())?;
        }
    }
    let _ = std::fs::remove_dir_all(&dir);
    let started = std::time::Instant::now();
    let mut images = build(&dir.join("layout"), &busybox, large_mib)?;
    images.layout = dir.join("layout");
    write_docker_archive(&images)?;
    write_oci_archive(&images)?;
    // The catalog is written last: its presence means the build is complete.
    let tmp = dir.join("catalog.json.tmp");
    std::fs::write(&tmp, serde_json::to_vec_pretty(&images).map_err(io::Error::other)?)?;
    std::fs::rename(&tmp, &catalog)?;
    eprintln!("built the e2e test images in {:.1?} into {}", started.elapsed(), dir.display());
    Ok(images)
}

/// Writes manifests, configs and the layout's index.json.
struct LayoutWriter {
    root: PathBuf,
    blobs: BlobDir,
    refs: Vec<Descriptor>,
}

impl LayoutWriter {
    fn new(root: &Path) -> io::Result<Self> {
        Ok(LayoutWriter { root: root.to_path_buf(), blobs: BlobDir::new(root)?, refs: Vec::new() })
    }

    /// Writes the config and manifest of one platform's image.
    fn manifest(
        &self,
        platform: &Platform,
        runtime: RuntimeConfig,
        layers: &[LayerBlob],
    ) -> io::Result<PlatformManifest> {
        let config = ImageConfig {
            created: Some(CREATED.into()),
            architecture: platform.architecture.clone(),
            os: platform.os.clone(),
            variant: platform.variant.clone(),
            config: runtime,
            rootfs: RootFs {
                kind: "layers".into(),
                diff_ids: layers.iter().map(|l| l.diff_id.clone()).collect(),
            },
            ..Default::default()
        };
        let config_bytes = serde_json::to_vec(&config).map_err(io::Error::other)?;
        let config_digest = self.blobs.put(&config_bytes)?;
        let manifest = Manifest {
            schema_version: 2,
            media_type: media::OCI_MANIFEST.into(),
            config: Descriptor::new(media::OCI_CONFIG, config_digest.clone(), config_bytes.len() as i64),
            layers: layers
                .iter()
                .map(|l| Descriptor::new(l.media_type.clone(), l.digest.clone(), l.size as i64))
                .collect(),
            annotations: BTreeMap::new(),
        };
        let bytes = serde_json::to_vec(&manifest).map_err(io::Error::other)?;
        let digest = self.blobs.put(&bytes)?;
        Ok(PlatformManifest {
            platform: platform.clone(),
            digest,
            size: bytes.len() as u64,
            config: config_digest,
            layers: layers.to_vec(),
        })
    }

    /// A single-platform image, named in index.json.
    fn image(
        &mut self,
        repo: &str,
        tags: &[&str],
        runtime: RuntimeConfig,
        layers: &[LayerBlob],
    ) -> io::Result<TestImage> {
        self.image_for(repo, tags, &Platform::host(), runtime, layers)
    }

    fn image_for(
        &mut self,
        repo: &str,
        tags: &[&str],
        platform: &Platform,
        runtime: RuntimeConfig,
        layers: &[LayerBlob],
    ) -> io::Result<TestImage> {
        let m = self.manifest(platform, runtime, layers)?;
        Ok(self.named(repo, tags, media::OCI_MANIFEST, m.digest.clone(), m.size, vec![m]))
    }

    /// A multi-platform image: an OCI index of `manifests`, named in index.json.
    fn index(
        &mut self,
        repo: &str,
        tags: &[&str],
        manifests: Vec<PlatformManifest>,
    ) -> io::Result<TestImage> {
        let index = Index {
            schema_version: 2,
            media_type: media::OCI_INDEX.into(),
            manifests: manifests
                .iter()
                .map(|m| {
                    let mut d = Descriptor::new(media::OCI_MANIFEST, m.digest.clone(), m.size as i64);
                    d.platform = Some(m.platform.clone());
                    d
                })
                .collect(),
            annotations: BTreeMap::new(),
        };
        let bytes = serde_json::to_vec(&index).map_err(io::Error::other)?;
        let digest = self.blobs.put(&bytes)?;
        Ok(self.named(repo, tags, media::OCI_INDEX, digest, bytes.len() as u64, manifests))
    }

    fn named(
        &mut self,
        repo: &str,
        tags: &[&str],
        media_type: &str,
        digest: Digest,
        size: u64,
        manifests: Vec<PlatformManifest>,
    ) -> TestImage {
        let layout_ref = repo.trim_start_matches("e2e/").to_string();
        let mut d = Descriptor::new(media_type, digest.clone(), size as i64);
        d.annotations.insert("org.opencontainers.image.ref.name".into(), layout_ref.clone());
        self.refs.push(d);
        TestImage {
            repo: repo.into(),
            tags: tags.iter().map(|t| t.to_string()).collect(),
            layout_ref,
            media_type: media_type.into(),
            digest,
            manifests,
        }
    }

    fn finish(self) -> io::Result<()> {
        std::fs::write(self.root.join("oci-layout"), br#"{"imageLayoutVersion":"1.0.0"}"#)?;
        let index = Index {
            schema_version: 2,
            media_type: media::OCI_INDEX.into(),
            manifests: self.refs,
            annotations: BTreeMap::new(),
        };
        std::fs::write(self.root.join("index.json"), serde_json::to_vec(&index).map_err(io::Error::other)?)
    }
}

fn busybox_runtime() -> RuntimeConfig {
    RuntimeConfig { env: Some(vec![PATH_ENV.into()]), cmd: Some(vec!["sh".into()]), ..Default::default() }
}

/// The busybox root filesystem: directories, the binary and its applet links.
fn busybox_tree(w: &mut TarWriter<impl io::Write>, busybox: &[u8]) -> io::Result<()> {
    for (dir, mode) in [
        ("bin", 0o755),
        ("dev", 0o755),
        ("etc", 0o755),
        ("proc", 0o555),
        ("root", 0o700),
        ("sys", 0o555),
        ("tmp", 0o1777),
        ("usr", 0o755),
        ("var", 0o755),
    ] {
        w.dir(dir, mode)?;
    }
    w.file("bin/busybox", 0o755, busybox)?;
    for applet in APPLETS {
        w.symlink(&format!("bin/{applet}"), "busybox")?;
    }
    Ok(())
}

/// `/etc/passwd` and `/etc/group` with root and `app` (1000:1000).
fn passwd_tree(w: &mut TarWriter<impl io::Write>) -> io::Result<()> {
    w.dir("etc", 0o755)?;
    w.dir("home", 0o755)?;
    let mut home = Entry::new(b"home/app", Kind::Dir, 0o755);
    home.uid = 1000;
    home.gid = 1000;
    w.entry(&home, &[])?;
    w.file("etc/passwd", 0o644, b"root:x:0:0:root:/root:/bin/sh\napp:x:1000:1000:app:/home/app:/bin/sh\n")?;
    w.file("etc/group", 0o644, b"root:x:0:\napp:x:1000:\n")
}

/// What a rootfs of `e2e/layers:1` holds (besides the busybox tree of its first layer).
#[derive(Debug, Clone, Copy)]
pub struct Expected {
    pub path: &'static str,
    pub kind: ExpectedKind,
    /// Permission bits including set-uid/set-gid/sticky (not checked for symlinks).
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    /// Checked when given (seconds since the epoch).
    pub mtime: Option<i64>,
    /// An extended attribute that must be present with this value.
    pub xattr: Option<(&'static str, &'static [u8])>,
}

/// The kind and content of an [`Expected`] entry.
#[derive(Debug, Clone, Copy)]
pub enum ExpectedKind {
    Dir,
    /// A regular file whose content is not checked.
    AnyFile,
    File(&'static [u8]),
    Symlink(&'static str),
    /// A regular file that is the same inode as the other path (a hard link), with this content.
    HardlinkOf(&'static str, &'static [u8]),
}

const fn expect(path: &'static str, kind: ExpectedKind, mode: u32) -> Expected {
    Expected { path, kind, mode, uid: 0, gid: 0, mtime: None, xattr: None }
}

/// An mtime distinct from [`MTIME`], set on `/data/mtime` (2001-09-09T01:46:40Z).
pub const LAYERS_MTIME: i64 = 1_000_000_000;

/// The final tree of `e2e/layers:1` (paths relative to the rootfs), layer by layer:
/// 1. busybox, `/etc/hostname` = `layer1`, `/data/{keep.txt,deleted.txt}`, `/opaque/{old-a,old-sub/old-b}`;
/// 2. whiteout `/data/.wh.deleted.txt`, hard link `/data/hardlink` → `/data/hardlink-target`, symlink
///    `/data/symlink -> keep.txt`, `/data/setuid` mode 4755 owned 1000:1000, `/data/mtime` with mtime
///    [`LAYERS_MTIME`], `/data/xattr` with `user.berth=1`;
/// 3. `/opaque/.wh..wh..opq` and `/opaque/new`, `/etc/hostname` = `layer3`.
pub const LAYERS_TREE: &[Expected] = &[
    expect("bin/busybox", ExpectedKind::AnyFile, 0o755),
    expect("bin/sh", ExpectedKind::Symlink("busybox"), 0o777),
    expect("etc/hostname", ExpectedKind::File(b"layer3\n"), 0o644),
    expect("data", ExpectedKind::Dir, 0o755),
    expect("data/keep.txt", ExpectedKind::File(b"keep\n"), 0o644),
    expect("data/hardlink-target", ExpectedKind::File(b"shared content\n"), 0o644),
    expect("data/hardlink", ExpectedKind::HardlinkOf("data/hardlink-target", b"shared content\n"), 0o644),
    expect("data/symlink", ExpectedKind::Symlink("keep.txt"), 0o777),
    Expected {
        uid: 1000,
        gid: 1000,
        ..expect("data/setuid", ExpectedKind::File(b"#!/bin/sh\necho setuid\n"), 0o4755)
    },
    Expected { mtime: Some(LAYERS_MTIME), ..expect("data/mtime", ExpectedKind::File(b"old\n"), 0o644) },
    Expected { xattr: Some(("user.berth", b"1")), ..expect("data/xattr", ExpectedKind::File(b"x\n"), 0o644) },
    expect("opaque", ExpectedKind::Dir, 0o755),
    expect("opaque/new", ExpectedKind::File(b"new\n"), 0o644),
];

/// Paths that must not exist in a rootfs of `e2e/layers:1` (deleted, hidden, or whiteout markers).
pub const LAYERS_ABSENT: &[&str] =
    &["data/deleted.txt", "data/.wh.deleted.txt", "opaque/old-a", "opaque/old-sub", "opaque/.wh..wh..opq"];

fn layers_image(lw: &mut LayoutWriter, busybox: &[u8]) -> io::Result<TestImage> {
    let l1 = lw.blobs.layer(Compression::Gzip, |w| {
        busybox_tree(w, busybox)?;
        w.file("etc/hostname", 0o644, b"layer1\n")?;
        w.dir("data", 0o755)?;
        w.file("data/keep.txt", 0o644, b"keep\n")?;
        w.file("data/deleted.txt", 0o644, b"deleted in layer 2\n")?;
        w.dir("opaque", 0o755)?;
        w.file("opaque/old-a", 0o644, b"hidden by layer 3\n")?;
        w.dir("opaque/old-sub", 0o755)?;
        w.file("opaque/old-sub/old-b", 0o644, b"hidden by layer 3\n")
    })?;
    let l2 = lw.blobs.layer(Compression::Gzip, |w| {
        w.dir("data", 0o755)?;
        w.whiteout("data/deleted.txt")?;
        w.file("data/hardlink-target", 0o644, b"shared content\n")?;
        w.hardlink("data/hardlink", "data/hardlink-target")?;
        w.symlink("data/symlink", "keep.txt")?;
        let mut setuid = Entry::new(b"data/setuid", Kind::File, 0o4755);
        setuid.uid = 1000;
        setuid.gid = 1000;
        w.entry(&setuid, b"#!/bin/sh\necho setuid\n")?;
        let mut old = Entry::new(b"data/mtime", Kind::File, 0o644);
        old.mtime = LAYERS_MTIME as u64;
        w.entry(&old, b"old\n")?;
        let mut xattr = Entry::new(b"data/xattr", Kind::File, 0o644);
        xattr.xattrs.push(("user.berth", b"1"));
        w.entry(&xattr, b"x\n")
    })?;
    let l3 = lw.blobs.layer(Compression::Gzip, |w| {
        w.dir("opaque", 0o755)?;
        w.opaque("opaque")?;
        w.file("opaque/new", 0o644, b"new\n")?;
        w.dir("etc", 0o755)?;
        w.file("etc/hostname", 0o644, b"layer3\n")
    })?;
    lw.image("e2e/layers", &["1"], busybox_runtime(), &[l1, l2, l3])
}

/// `/data.json` of `e2e/volume:1`.
pub const VOLUME_DATA_JSON: &str = "{\"image\": \"e2e/volume\", \"file\": \"kitten.jpg\"}\n";
/// `/etc/os-release` of `e2e/volume:1`.
pub const VOLUME_OS_RELEASE: &str = "NAME=\"berth e2e image volume\"\nID=berth-e2e\n";
/// `/data/file.txt` of `e2e/volume:1`.
pub const VOLUME_FILE: &str = "in the data directory\n";

/// `e2e/volume:1` (see [`TestImages`]): data to read through an image volume, split over two layers
/// so that the volume is an overlay of them, and symlinks that try to lead a sub path out.
fn volume_image(lw: &mut LayoutWriter) -> io::Result<TestImage> {
    let l1 = lw.blobs.layer(Compression::Gzip, |w| {
        w.dir("etc", 0o755)?;
        w.file("etc/os-release", 0o644, VOLUME_OS_RELEASE.as_bytes())?;
        w.dir("data", 0o755)?;
        w.file("data/file.txt", 0o644, VOLUME_FILE.as_bytes())
    })?;
    let l2 = lw.blobs.layer(Compression::Gzip, |w| {
        w.file("data.json", 0o644, VOLUME_DATA_JSON.as_bytes())?;
        w.dir("data", 0o755)?;
        w.symlink("data/etc", "../etc")?;
        w.symlink("escape-absolute", "/etc")?;
        w.symlink("escape-relative", "../../..")
    })?;
    lw.image("e2e/volume", &["1"], RuntimeConfig::default(), &[l1, l2])
}

/// Compares a rootfs of `e2e/layers:1` with [`LAYERS_TREE`] and [`LAYERS_ABSENT`]; returns every
/// difference (empty when it matches).
pub fn check_layers_tree(rootfs: &Path) -> Vec<String> {
    let mut problems = Vec::new();
    for e in LAYERS_TREE {
        let path = rootfs.join(e.path);
        let meta = match std::fs::symlink_metadata(&path) {
            Ok(m) => m,
            Err(err) => {
                problems.push(format!("/{}: {err}", e.path));
                continue;
            }
        };
        let mut bad = |what: String| problems.push(format!("/{}: {what}", e.path));
        let ft = meta.file_type();
        match e.kind {
            ExpectedKind::AnyFile => {
                if !ft.is_file() {
                    bad("is not a regular file".into());
                }
            }
            ExpectedKind::Dir => {
                if !ft.is_dir() {
                    bad("is not a directory".into());
                }
            }
            ExpectedKind::File(content) => {
                if !ft.is_file() {
                    bad("is not a regular file".into());
                } else if std::fs::read(&path).ok().as_deref() != Some(content) {
                    bad(format!("content differs from {:?}", String::from_utf8_lossy(content)));
                }
            }
            ExpectedKind::Symlink(target) => match std::fs::read_link(&path) {
                Ok(t) if t == Path::new(target) => {}
                Ok(t) => bad(format!("links to {t:?}, expected {target:?}")),
                Err(err) => bad(format!("is not a symlink: {err}")),
            },
            ExpectedKind::HardlinkOf(other, content) => {
                let other_meta = std::fs::symlink_metadata(rootfs.join(other));
                if !ft.is_file() || std::fs::read(&path).ok().as_deref() != Some(content) {
                    bad("is not a regular file with the expected content".into());
                }
                match other_meta {
                    Ok(o) if o.ino() == meta.ino() && o.dev() == meta.dev() && meta.nlink() >= 2 => {}
                    _ => bad(format!("is not a hard link of /{other}")),
                }
            }
        }
        if !ft.is_symlink() && meta.mode() & 0o7777 != e.mode {
            bad(format!("mode {:o}, expected {:o}", meta.mode() & 0o7777, e.mode));
        }
        if (meta.uid(), meta.gid()) != (e.uid, e.gid) {
            bad(format!("owner {}:{}, expected {}:{}", meta.uid(), meta.gid(), e.uid, e.gid));
        }
        if let Some(mtime) = e.mtime
            && meta.mtime() != mtime
        {
            bad(format!("mtime {}, expected {mtime}", meta.mtime()));
        }
        if let Some((name, value)) = e.xattr {
            match xattr::get(&path, name) {
                Ok(Some(v)) if v == value => {}
                other => {
                    bad(format!("xattr {name} is {other:?}, expected {:?}", String::from_utf8_lossy(value)))
                }
            }
        }
    }
    for absent in LAYERS_ABSENT {
        if std::fs::symlink_metadata(rootfs.join(absent)).is_ok() {
            problems.push(format!("/{absent}: exists but must not"));
        }
    }
    problems
}

/// A deterministic pseudo-random byte stream (splitmix64): incompressible, and the same every build.
struct Noise {
    state: u64,
}

impl Noise {
    fn new(seed: u64) -> Self {
        Noise { state: seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ 0xD1B5_4A32_D192_ED03 }
    }
    fn next(&mut self) -> u64 {
        self.state = self.state.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.state;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
}

impl Read for Noise {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let mut chunks = buf.chunks_exact_mut(8);
        for c in &mut chunks {
            c.copy_from_slice(&self.next().to_le_bytes());
        }
        let rest = chunks.into_remainder();
        let n = rest.len();
        rest.copy_from_slice(&self.next().to_le_bytes()[..n]);
        Ok(buf.len())
    }
}

fn large_image(lw: &mut LayoutWriter, base: &LayerBlob, mib: u64) -> io::Result<TestImage> {
    const SMALL_FILES: u64 = 500;
    const BIG_FILE: u64 = 32 << 20;
    let per_layer = (mib << 20) / LARGE_DATA_LAYERS;
    let mut layers = vec![base.clone()];
    for n in 0..LARGE_DATA_LAYERS {
        layers.push(lw.blobs.layer(Compression::Gzip, |w| {
            let dir = format!("data{n}");
            w.dir(&dir, 0o755)?;
            w.dir(&format!("{dir}/small"), 0o755)?;
            let mut noise = Noise::new(n);
            let mut written = 0;
            for i in 0..SMALL_FILES {
                // Text-like content (letters and newlines) so these compress as real files do.
                let len = 512 + noise.next() % 7680;
                let text: Vec<u8> = (0..len)
                    .map(|_| match noise.next() % 32 {
                        0 => b'\n',
                        r => b'a' + (r % 26) as u8,
                    })
                    .collect();
                w.file(&format!("{dir}/small/{i:04}"), 0o644, &text)?;
                written += len;
            }
            let mut j = 0;
            while written < per_layer {
                let len = (per_layer - written).min(BIG_FILE);
                let name = format!("{dir}/big-{j}.bin");
                let e = Entry::new(name.as_bytes(), Kind::File, 0o644);
                w.entry_from(&e, len, &mut Noise::new(1000 * (n + 1) + j))?;
                written += len;
                j += 1;
            }
            Ok(())
        })?);
    }
    lw.image("e2e/large", &["1"], busybox_runtime(), &layers)
}

fn build(layout: &Path, busybox: &[u8], large_mib: u64) -> io::Result<TestImages> {
    std::fs::create_dir_all(layout)?;
    let mut lw = LayoutWriter::new(layout)?;
    let base = lw.blobs.layer(Compression::Gzip, |w| busybox_tree(w, busybox))?;
    let busybox_image =
        lw.image("e2e/busybox", &["1", "2"], busybox_runtime(), std::slice::from_ref(&base))?;

    let layers = layers_image(&mut lw, busybox)?;

    let host = Platform::host();
    let mut platforms = vec![busybox_image.manifests[0].clone()];
    for (arch, variant) in [("amd64", ""), ("arm64", "v8"), ("s390x", "")] {
        if arch == host.architecture {
            continue;
        }
        let platform = Platform {
            architecture: arch.into(),
            os: "linux".into(),
            variant: variant.into(),
            ..Default::default()
        };
        let marker = lw.blobs.layer(Compression::Gzip, |w| {
            w.file(&format!("{arch}-marker"), 0o644, format!("{arch}\n").as_bytes())
        })?;
        let runtime = RuntimeConfig { cmd: Some(vec![format!("/{arch}-marker")]), ..Default::default() };
        platforms.push(lw.manifest(&platform, runtime, &[marker])?);
    }
    let multiarch = lw.index("e2e/multiarch", &["1"], platforms)?;

    let zstd_layer = lw.blobs.layer(Compression::Zstd, |w| {
        busybox_tree(w, busybox)?;
        w.file("etc/compression", 0o644, b"zstd\n")
    })?;
    let zstd = lw.image("e2e/zstd", &["1"], busybox_runtime(), &[zstd_layer])?;

    let passwd = lw.blobs.layer(Compression::Gzip, passwd_tree)?;
    let user_layers = [base.clone(), passwd];
    let user = lw.image(
        "e2e/user",
        &["1"],
        RuntimeConfig { user: "1000".into(), ..busybox_runtime() },
        &user_layers,
    )?;
    let username = lw.image(
        "e2e/username",
        &["1"],
        RuntimeConfig { user: "app".into(), ..busybox_runtime() },
        &user_layers,
    )?;

    let large = large_image(&mut lw, &base, large_mib)?;
    let volume = volume_image(&mut lw)?;

    let mut hostile = Vec::new();
    for h in Hostile::ALL {
        let layer = lw.blobs.layer(Compression::Gzip, |w| h.write(w))?;
        hostile.push(lw.image(h.repo(), &["1"], busybox_runtime(), &[layer])?);
    }
    lw.finish()?;
    Ok(TestImages {
        layout: layout.to_path_buf(),
        busybox: busybox_image,
        layers,
        multiarch,
        zstd,
        user,
        username,
        large,
        volume,
        hostile,
        large_mib,
    })
}

/// Appends a file with fixed metadata to a (well-formed) archive.
fn append(tar: &mut tar::Builder<File>, name: &str, size: u64, data: impl Read) -> io::Result<()> {
    let mut h = tar::Header::new_ustar();
    h.set_mode(0o644);
    h.set_mtime(MTIME);
    h.set_size(size);
    h.set_entry_type(tar::EntryType::Regular);
    tar.append_data(&mut h, name, data)
}

fn append_blob(tar: &mut tar::Builder<File>, name: &str, path: &Path) -> io::Result<()> {
    let file = File::open(path)?;
    let size = file.metadata()?.len();
    append(tar, name, size, file)
}

fn write_docker_archive(images: &TestImages) -> io::Result<()> {
    let image = &images.busybox;
    let m = image.host_manifest();
    let blobs = BlobDir::new(images.layout())?;
    let layer = &m.layers[0];
    let mut tarball = Vec::new();
    super::layer::decompress(&layer.media_type, File::open(blobs.path(&layer.digest))?)?
        .read_to_end(&mut tarball)?;
    let layer_dir = layer.diff_id.hex().to_string();
    let config_name = format!("{}.json", m.config.hex());
    let manifest = serde_json::json!([{
        "Config": config_name,
        "RepoTags": [format!("{}:{}", image.repo, image.tags[0])],
        "Layers": [format!("{layer_dir}/layer.tar")],
    }]);
    let repositories = serde_json::json!({ &image.repo: { &image.tags[0]: &layer_dir } });
    let path = images.docker_archive();
    let mut tar = tar::Builder::new(File::create(&path)?);
    append_blob(&mut tar, &config_name, &blobs.path(&m.config))?;
    append(&mut tar, &format!("{layer_dir}/VERSION"), 3, &b"1.0"[..])?;
    append(&mut tar, &format!("{layer_dir}/layer.tar"), tarball.len() as u64, &tarball[..])?;
    for (name, doc) in [("manifest.json", manifest), ("repositories", repositories)] {
        let bytes = serde_json::to_vec(&doc).map_err(io::Error::other)?;
        append(&mut tar, name, bytes.len() as u64, &bytes[..])?;
    }
    tar.into_inner()?.sync_all()
}

fn write_oci_archive(images: &TestImages) -> io::Result<()> {
    let image = &images.busybox;
    let m = image.host_manifest();
    let blobs = BlobDir::new(images.layout())?;
    let mut d = Descriptor::new(media::OCI_MANIFEST, m.digest.clone(), m.size as i64);
    d.annotations
        .insert("io.containerd.image.name".into(), format!("docker.io/{}:{}", image.repo, image.tags[0]));
    d.annotations.insert("org.opencontainers.image.ref.name".into(), image.tags[0].clone());
    let index = oci::Index {
        schema_version: 2,
        media_type: media::OCI_INDEX.into(),
        manifests: vec![d],
        annotations: BTreeMap::new(),
    };
    let index = serde_json::to_vec(&index).map_err(io::Error::other)?;
    let layout = br#"{"imageLayoutVersion":"1.0.0"}"#;
    let mut tar = tar::Builder::new(File::create(images.oci_archive())?);
    append(&mut tar, "oci-layout", layout.len() as u64, &layout[..])?;
    append(&mut tar, "index.json", index.len() as u64, &index[..])?;
    for digest in [&m.digest, &m.config].into_iter().chain(m.layers.iter().map(|l| &l.digest)) {
        append_blob(&mut tar, &format!("blobs/sha256/{}", digest.hex()), &blobs.path(digest))?;
    }
    tar.into_inner()?.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read_blob(images: &TestImages, digest: &Digest) -> Vec<u8> {
        std::fs::read(BlobDir::new(images.layout()).unwrap().path(digest)).unwrap()
    }

    #[test]
    fn every_blob_in_the_layout_is_named_by_its_digest() {
        let images = images();
        let mut count = 0;
        for entry in std::fs::read_dir(images.layout().join("blobs/sha256")).unwrap() {
            let entry = entry.unwrap();
            let name = entry.file_name().into_string().unwrap();
            let mut h = Hasher::new();
            let mut f = File::open(entry.path()).unwrap();
            let mut buf = vec![0u8; 1 << 20];
            loop {
                let n = f.read(&mut buf).unwrap();
                if n == 0 {
                    break;
                }
                h.update(&buf[..n]);
            }
            assert_eq!(h.finish().hex(), name, "blob {name} does not hash to its name");
            count += 1;
        }
        assert!(count > 20, "only {count} blobs in the layout");
    }

    #[test]
    fn configs_carry_the_diff_ids_of_their_layers() {
        let images = images();
        for image in images.all() {
            for m in &image.manifests {
                let config: ImageConfig = serde_json::from_slice(&read_blob(images, &m.config)).unwrap();
                let diff_ids: Vec<_> = m.layers.iter().map(|l| l.diff_id.clone()).collect();
                assert_eq!(config.rootfs.diff_ids, diff_ids, "{}", image.repo);
                assert_eq!(config.architecture, m.platform.architecture, "{}", image.repo);
                let blobs = BlobDir::new(images.layout()).unwrap();
                for l in &m.layers {
                    let mut tar = super::super::layer::decompress(
                        &l.media_type,
                        File::open(blobs.path(&l.digest)).unwrap(),
                    )
                    .unwrap();
                    let mut h = Hasher::new();
                    let mut buf = vec![0u8; 1 << 20];
                    loop {
                        let n = tar.read(&mut buf).unwrap();
                        if n == 0 {
                            break;
                        }
                        h.update(&buf[..n]);
                    }
                    assert_eq!(h.finish(), l.diff_id, "diff id of a layer of {}", image.repo);
                }
            }
        }
    }

    #[test]
    fn image_configs_say_what_the_docs_promise() {
        let images = images();
        let config = |image: &TestImage| -> ImageConfig {
            serde_json::from_slice(&read_blob(images, &image.host_manifest().config)).unwrap()
        };
        let busybox = config(&images.busybox);
        assert_eq!(busybox.config.cmd, Some(vec!["sh".to_string()]));
        assert_eq!(busybox.config.entrypoint, None);
        assert_eq!(busybox.config.user, "");
        assert_eq!(config(&images.user).config.user, "1000");
        assert_eq!(config(&images.username).config.user, "app");
        assert_eq!(images.zstd.host_manifest().layers[0].media_type, media::OCI_LAYER_ZSTD);
        assert_eq!(images.multiarch.media_type, media::OCI_INDEX);
        let archs: Vec<_> =
            images.multiarch.manifests.iter().map(|m| m.platform.architecture.as_str()).collect();
        assert_eq!(archs.len(), 3, "{archs:?}");
        for arch in ["amd64", "arm64", "s390x"] {
            assert!(archs.contains(&arch), "{archs:?}");
        }
        assert_eq!(images.multiarch.host_manifest().digest, images.busybox.host_manifest().digest);
        assert_eq!(images.busybox.tags, ["1", "2"]);
        let large = images.large.layer_bytes();
        // The small text files compress; the big ones do not.
        assert!(
            large >= (images.large_mib << 20) * 95 / 100,
            "large image has only {large} compressed bytes"
        );
        assert_eq!(images.large.host_manifest().layers.len(), 1 + LARGE_DATA_LAYERS as usize);
    }

    #[test]
    fn hostile_layers_really_contain_the_hostile_entries() {
        let images = images();
        let blobs = BlobDir::new(images.layout()).unwrap();
        for h in Hostile::ALL {
            let image = images.hostile(h);
            let layer = &image.host_manifest().layers[0];
            let tar = super::super::layer::decompress(
                &layer.media_type,
                File::open(blobs.path(&layer.digest)).unwrap(),
            )
            .unwrap();
            let entries: Vec<(String, Option<String>)> = super::super::layer::list_entries(tar)
                .unwrap()
                .into_iter()
                .map(|e| (String::from_utf8(e.name).unwrap(), e.link.map(|l| String::from_utf8(l).unwrap())))
                .collect();
            assert_eq!(entries, h.expected_entries(), "{h:?}");
        }
        let dotdot = Hostile::DotDot.expected_entries();
        assert!(dotdot.iter().all(|(name, _)| name.starts_with("../")), "{dotdot:?}");

        // The sparse bomb: a tiny layer whose one file is huge.
        let layer = &images.hostile(Hostile::Sparse).host_manifest().layers[0];
        assert!(layer.size < 4096, "sparse layer of {} bytes", layer.size);
        let tar = super::super::layer::decompress(
            &layer.media_type,
            File::open(blobs.path(&layer.digest)).unwrap(),
        )
        .unwrap();
        let mut archive = tar::Archive::new(tar);
        let entry = archive.entries().unwrap().next().unwrap().unwrap();
        assert_eq!(entry.header().entry_type(), tar::EntryType::GNUSparse);
        assert_eq!(entry.size(), Hostile::SPARSE_BYTES);
    }

    #[test]
    fn layers_image_unpacks_with_umoci_to_the_documented_tree() {
        let images = images();
        let dir = tempfile::tempdir().unwrap();
        let bundle = dir.path().join("bundle");
        super::super::run(
            std::process::Command::new("umoci")
                .arg("unpack")
                .arg("--image")
                .arg(format!("{}:{}", images.layout().display(), images.layers.layout_ref))
                .arg(&bundle),
        );
        let problems = check_layers_tree(&bundle.join("rootfs"));
        assert!(problems.is_empty(), "umoci's unpack differs from LAYERS_TREE:\n{}", problems.join("\n"));
        // The checker is not vacuous: a tree with a deleted file present fails it.
        std::fs::write(bundle.join("rootfs/data/deleted.txt"), b"back").unwrap();
        std::fs::remove_file(bundle.join("rootfs/data/hardlink")).unwrap();
        std::fs::copy(bundle.join("rootfs/data/hardlink-target"), bundle.join("rootfs/data/hardlink"))
            .unwrap();
        let problems = check_layers_tree(&bundle.join("rootfs"));
        assert_eq!(problems.len(), 2, "{problems:?}");
    }

    #[test]
    fn archives_are_readable_by_skopeo() {
        let images = images();
        let m = images.busybox.host_manifest();
        let config = |transport: String| -> ImageConfig {
            let out = super::super::run(
                std::process::Command::new("skopeo").args(["inspect", "--config"]).arg(transport),
            );
            serde_json::from_str(&out).unwrap()
        };
        let want: ImageConfig = serde_json::from_slice(&read_blob(images, &m.config)).unwrap();
        let docker = config(format!("docker-archive:{}", images.docker_archive().display()));
        assert_eq!(docker.rootfs.diff_ids, want.rootfs.diff_ids);
        assert_eq!(docker.config, want.config);
        let raw = super::super::run(
            std::process::Command::new("skopeo")
                .args(["inspect", "--raw"])
                .arg(format!("oci-archive:{}:1", images.oci_archive().display())),
        );
        assert_eq!(
            Digest::of(raw.as_bytes()),
            m.digest,
            "the OCI archive holds the busybox manifest as built"
        );
    }

    #[test]
    fn builds_are_deterministic() {
        let busybox = std::fs::read(BUSYBOX).unwrap();
        let a = tempfile::tempdir().unwrap();
        let b = tempfile::tempdir().unwrap();
        let small = |dir: &Path| {
            let mut lw = LayoutWriter::new(dir).unwrap();
            let base = lw.blobs.layer(Compression::Gzip, |w| busybox_tree(w, &busybox)).unwrap();
            let layers = layers_image(&mut lw, &busybox).unwrap();
            let large = large_image(&mut lw, &base, 1).unwrap();
            (layers.digest, large.digest)
        };
        assert_eq!(small(a.path()), small(b.path()));
    }
}
