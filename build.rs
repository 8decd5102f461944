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
        .expect("compiling proto/berth/shim/v1/shim.proto (is protoc installed?)");
}
