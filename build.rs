use std::path::PathBuf;
use std::process::Command;

fn main() {
    println!("cargo:rerun-if-changed=proto");
    build_cri_api();
    tonic_prost_build::configure()
        .compile_protos(&["proto/berth/v1/berth.proto"], &["proto"])
        .expect("compiling proto/berth/v1/berth.proto (is protoc installed?)");
    // The shim API is plain messages over a unix socket (no gRPC), so the shim links no tonic.
    tonic_prost_build::configure()
        .build_server(false)
        .build_client(false)
        .compile_protos(&["proto/berth/shim/v1/shim.proto"], &["proto"])
        .expect("compiling proto/berth/shim/v1/shim.proto");
    build_static_pause();
}

/// Compiles the CRI API (proto/cri-api, the upstream file unchanged) with its client and server.
///
/// The one preprocessing step: upstream marks four `AuthConfig` fields `[debug_redact = true]`, an
/// option Debian's protoc 3.21 rejects as unknown and prost ignores anyway. The copy compiled from
/// OUT_DIR has those options removed, and `AuthConfig` gets no derived `Debug`: src/cri/mod.rs writes one
/// that redacts the same four fields. A new upstream version that redacts other fields stops the build
/// here, so that the hand-written `Debug` is revisited.
fn build_cri_api() {
    const SRC: &str = "proto/cri-api/runtime/v1/api.proto";
    const REDACT: &str = " [debug_redact = true]";
    let text = std::fs::read_to_string(SRC).expect("reading the CRI api.proto");
    let redacted: Vec<&str> = text
        .lines()
        .filter(|l| l.contains(REDACT))
        .map(|l| l.split_whitespace().nth(1).unwrap_or_default())
        .collect();
    assert_eq!(
        redacted,
        ["password", "auth", "identity_token", "registry_token"],
        "{SRC}: the debug_redact fields changed; update AuthConfig's Debug in src/cri/mod.rs"
    );
    let stripped = text.replace(REDACT, "");
    assert!(!stripped.contains("debug_redact"), "{SRC}: a debug_redact option build.rs does not strip");
    let dir = PathBuf::from(std::env::var("OUT_DIR").expect("OUT_DIR")).join("cri-api");
    std::fs::create_dir_all(&dir).expect("creating OUT_DIR/cri-api");
    std::fs::write(dir.join("api.proto"), stripped).expect("writing OUT_DIR/cri-api/api.proto");
    // Records persist the kubelet's configs as JSON (src/cri/store.rs), in the format the k8s-cri
    // crate's serde derives gave them: `default` lets records written before a field existed load.
    // Env values became `bytes` in v0.36; they keep their string form (src/cri/store.rs `env_value`).
    tonic_prost_build::configure()
        .type_attribute(".", "#[derive(serde::Serialize, serde::Deserialize)]")
        .message_attribute(".", "#[serde(default)]")
        .field_attribute(".runtime.v1.KeyValue.value", "#[serde(with = \"crate::cri::store::env_value\")]")
        .skip_debug([".runtime.v1.AuthConfig"])
        .compile_protos(&[dir.join("api.proto")], &[dir])
        .expect("compiling the CRI api.proto");
}

/// Compiles src/bin/berth-pause.rs on its own as a static executable (no crates, only std), for
/// berthd to embed as its built-in pause image: the pause container's rootfs has no libc.
fn build_static_pause() {
    println!("cargo:rerun-if-changed=src/bin/berth-pause.rs");
    let out = PathBuf::from(std::env::var("OUT_DIR").expect("OUT_DIR")).join("berth-pause");
    let rustc = std::env::var("RUSTC").unwrap_or_else(|_| "rustc".into());
    let target = std::env::var("TARGET").expect("TARGET");
    let status = Command::new(rustc)
        .args(["--edition", "2024", "--crate-type", "bin", "--crate-name", "berth_pause"])
        .args(["--target", &target])
        .args(["-C", "opt-level=s", "-C", "panic=abort", "-C", "strip=symbols", "-C", "debuginfo=0"])
        .args(["-C", "target-feature=+crt-static"])
        .arg(format!(
            "--remap-path-prefix={}=.",
            std::env::var("CARGO_MANIFEST_DIR").expect("CARGO_MANIFEST_DIR")
        ))
        .env("CARGO_PKG_VERSION", std::env::var("CARGO_PKG_VERSION").expect("CARGO_PKG_VERSION"))
        .arg("src/bin/berth-pause.rs")
        .arg("-o")
        .arg(&out)
        .status()
        .expect("running rustc for berth-pause");
    assert!(status.success(), "building the static berth-pause failed");
}
