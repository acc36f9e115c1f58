//! Build script: lets `inhouse-quantize` find llama.cpp's shared libraries at run time (a
//! relative run path, and the libraries copied next to the binaries), so the binary works from
//! `target/<profile>/` and installed as `/usr/bin/inhouse-quantize` beside `/usr/lib/inhouse/`.
//! The work is shared with the root package's `build.rs`, in `build/llama_libs.rs`, which says
//! why.

#[path = "../build/llama_libs.rs"]
mod llama_libs;

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    println!("cargo:rerun-if-changed=../build/llama_libs.rs");
    llama_libs::run("quantize");
}
