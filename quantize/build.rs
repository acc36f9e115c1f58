//! Build script: lets `inhouse-quantize` find llama.cpp's shared libraries at run time.
//!
//! A relative run path (`$ORIGIN` and `$ORIGIN/../lib/inhouse`, like the root crate's
//! binaries), so the binary works from `target/<profile>/` and installed as
//! `/usr/bin/inhouse-quantize` beside `/usr/lib/inhouse/`. This script also copies the
//! libraries, for the whole workspace, under their sonames next to the binaries and the ggml
//! backends (CPU variants, and a GPU backend when built) into `target/<profile>/ggml/`: the
//! layout the `.deb` packages and every binary's run path expects.
use std::path::{Path, PathBuf};

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    if std::env::var("CARGO_CFG_TARGET_OS").as_deref() != Ok("linux") {
        return;
    }
    println!("cargo:rustc-link-arg=-Wl,-rpath,$ORIGIN:$ORIGIN/../lib/inhouse");
    // Set by llama-cpp-sys-2 (`links = "llama"`) when `dynamic-backends` is on.
    let Some(backends) = std::env::var_os("DEP_LLAMA_BACKENDS_DIR").map(PathBuf::from) else {
        return;
    };
    let Some(lib_dir) = backends.parent().map(|p| p.join("lib")) else {
        return;
    };
    let out = PathBuf::from(std::env::var_os("OUT_DIR").expect("OUT_DIR"));
    // OUT_DIR is target/<profile>/build/<pkg>-<hash>/out.
    let Some(profile_dir) = out.ancestors().nth(3) else {
        return;
    };
    for soname in ["libllama.so.0", "libggml.so.0", "libggml-base.so.0"] {
        let src = lib_dir.join(soname);
        println!("cargo:rerun-if-changed={}", src.display());
        for dir in [profile_dir.to_path_buf(), profile_dir.join("deps")] {
            install(&src, &dir.join(soname));
        }
    }
    if let Ok(entries) = std::fs::read_dir(&backends) {
        for e in entries.flatten() {
            let name = e.file_name();
            if name.to_string_lossy().starts_with("libggml-") {
                println!("cargo:rerun-if-changed={}", e.path().display());
                install(&e.path(), &profile_dir.join("ggml").join(&name));
            }
        }
    }
}

/// Copies `src` (following symlinks) to `dst` unless an up-to-date copy is there, through a
/// temporary file named after this process and a rename, so a running process that has the old library mapped is not disturbed.
fn install(src: &Path, dst: &Path) {
    let same = match (std::fs::metadata(src), std::fs::metadata(dst)) {
        (Ok(a), Ok(b)) => a.len() == b.len() && a.modified().ok() <= b.modified().ok(),
        _ => false,
    };
    if same || !src.exists() {
        return;
    }
    if let Some(dir) = dst.parent() {
        let _ = std::fs::create_dir_all(dir);
    }
    let tmp = dst.with_extension(format!("tmp-quantize-{}", std::process::id()));
    if std::fs::copy(src, &tmp).is_ok() && std::fs::rename(&tmp, dst).is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
}
