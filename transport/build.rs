//! Compiles `proto/*.proto` with protox (pure Rust), so no `protoc` is needed on any machine.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let protos = [
        "proto/raft.proto",
        "proto/meta.proto",
        "proto/kv.proto",
        "proto/transport.proto",
        "proto/service.proto",
    ];
    for proto in protos {
        println!("cargo:rerun-if-changed={proto}");
    }
    let descriptors = protox::compile(protos, ["proto"])?;
    prost_build::Config::new()
        .bytes(["."])
        .compile_fds(descriptors)?;
    Ok(())
}
