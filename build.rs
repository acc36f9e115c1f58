//! Build script: makes the built binaries find llama.cpp's shared libraries at run time (a
//! relative run path, and the libraries copied next to the binaries). The work is shared with
//! the toolchain's `quantize/build.rs`, in `build/llama_libs.rs`, which says why.

#[path = "build/llama_libs.rs"]
mod llama_libs;

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    println!("cargo:rerun-if-changed=build/llama_libs.rs");
    llama_libs::run("inhouse");
}
