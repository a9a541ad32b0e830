//! Compiles `proto/workload.proto` (the SPIFFE Workload API) with protox, a pure-Rust protobuf
//! compiler (there is no `protoc` on the build machines), then generates the tonic server and a
//! transport-agnostic client (used by tests and by anyone who wants a raw client).

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=proto/workload.proto");
    let fds = protox::compile(["workload.proto"], ["proto"])?;
    tonic_prost_build::configure()
        .build_server(true)
        .build_client(true)
        .build_transport(false)
        .compile_fds(fds)?;
    Ok(())
}
