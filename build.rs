use std::path::PathBuf;
use std::process::Command;

fn main() {
    println!("cargo:rerun-if-changed=proto");
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
