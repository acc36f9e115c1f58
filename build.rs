//! Build script: makes the built binaries find llama.cpp's shared libraries at run time.
//!
//! With `dynamic-backends`, llama.cpp and ggml are shared libraries (`libllama.so.0`,
//! `libggml.so.0`, `libggml-base.so.0`) and ggml's CPU variants (`libggml-cpu-<level>.so`) are
//! loaded with `dlopen` at start-up. The binaries carry a relative run path, `$ORIGIN` and
//! `$ORIGIN/../lib/inhouse`, so the same binary works from the build directory and installed as
//! `/usr/bin/inhoused` with the libraries in `/usr/lib/inhouse/` and the variants in
//! `/usr/lib/inhouse/ggml/`. No absolute build path is recorded in the binary.
//!
//! Copying the libraries next to the binaries (`target/<profile>/`, variants in
//! `target/<profile>/ggml/`: the layout to package, see docs/BENCHMARKS.md, "CPU dispatch and
//! packaging") is done once, by `quantize/build.rs`: the toolchain crate links llama.cpp
//! directly and every build of this package builds it first.

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    if std::env::var("CARGO_CFG_TARGET_OS").as_deref() == Ok("linux") {
        println!("cargo:rustc-link-arg=-Wl,-rpath,$ORIGIN:$ORIGIN/../lib/inhouse");
    }
}
