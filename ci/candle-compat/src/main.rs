//! Touches sparse-attn and cudarc (with `dynamic-linking`) in one program.

fn main() {
    // Only named, not called: `cargo check` is the test, and calling into the
    // driver would need libcuda at link and run time.
    let _init: fn() -> Result<(), cudarc::driver::DriverError> = cudarc::driver::result::init;
    println!(
        "sparse-attn: driver present: {}; embedded PTX: {} bytes",
        sparse_attn::Gpu::driver_present(),
        sparse_attn::ptx::PTX.len()
    );
}
