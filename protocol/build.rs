//! Compiles the scheduler protocol with protox (no protoc on build machines).
fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=proto/scheduler.proto");
    let fds = protox::compile(["proto/scheduler.proto"], ["proto"])?;
    tonic_prost_build::configure().compile_fds(fds)?;
    Ok(())
}
