//! Generates the gRPC types from `proto/` with protox (a pure-Rust protobuf compiler),
//! so building never needs a system `protoc`.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    // Read at run time: a build script compiled once can be reused by another checkout
    // sharing the target dir, and `env!` would point it at the first checkout's protos.
    let manifest_dir = std::env::var("CARGO_MANIFEST_DIR")?;
    let root = std::path::Path::new(&manifest_dir).join("../../proto");
    let files = ["common", "stream", "data", "cluster", "peer"]
        .map(|name| root.join(format!("tributary/v1/{name}.proto")));
    let descriptors = protox::compile(&files, [&root])?;
    tonic_prost_build::configure()
        .build_server(true)
        .build_client(true)
        .bytes(".")
        .compile_fds(descriptors)?;
    for file in &files {
        println!("cargo:rerun-if-changed={}", file.display());
    }
    Ok(())
}
