//! Compiles the kubelet's protos (in `proto/`) with `protox`, a protobuf compiler in pure
//! Rust, and generates tonic clients and servers for them. No `protoc` binary is needed.

use std::path::PathBuf;

const PROTOS: [&str; 5] = [
    "deviceplugin/v1beta1/api.proto",
    "pluginregistration/v1/api.proto",
    "dra/v1/api.proto",
    "dra/v1beta1/api.proto",
    "podresources/v1/api.proto",
];

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let out_dir = PathBuf::from(std::env::var("OUT_DIR")?);
    let files = protox::compile(PROTOS, ["proto"])?;
    // Kept for the test that checks the field numbers against upstream's.
    std::fs::write(
        out_dir.join("kubelet_api.bin"),
        prost::Message::encode_to_vec(&files),
    )?;
    tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        .compile_fds(files)?;
    println!("cargo:rerun-if-changed=proto");
    Ok(())
}
