//! Shared by the build scripts of the two packages that link llama.cpp, the root package
//! (`build.rs`: `inhoused`, `inhouse`) and the toolchain (`quantize/build.rs`:
//! `inhouse-quantize`), so that a build of either alone leaves a runnable layout.
//!
//! With `dynamic-backends`, llama.cpp and ggml are shared libraries (`libllama.so.0`,
//! `libggml.so.0`, `libggml-base.so.0`) and ggml's CPU variants (`libggml-cpu-<level>.so`) are
//! loaded with `dlopen` at start-up. The binaries carry a relative run path, `$ORIGIN` and
//! `$ORIGIN/../lib/inhouse`, so the same binary works from the build directory and installed as
//! `/usr/sbin/inhoused` or `/usr/bin/inhouse-quantize` with the libraries in `/usr/lib/inhouse/`
//! and the variants in `/usr/lib/inhouse/ggml/`. No absolute build path is recorded.
//!
//! The sys crate leaves the libraries in its own output directory (only unversioned symlinks
//! reach `target/<profile>/`), so they are copied under their sonames next to the binaries, and
//! the backends into `target/<profile>/ggml/`: that directory is the layout to package (see
//! docs/BENCHMARKS.md, "CPU dispatch and packaging"). When both packages build, both copy; the
//! copies go through a temporary file per process and a rename, so neither sees half a file.

use std::path::{Path, PathBuf};

/// Sets the run path and copies the libraries; `tag` names the temporary files.
pub fn run(tag: &str) {
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
            install(&src, &dir.join(soname), tag);
        }
    }
    if let Ok(entries) = std::fs::read_dir(&backends) {
        for e in entries.flatten() {
            let name = e.file_name();
            // The CPU variants, and a GPU backend (libggml-cuda.so, libggml-vulkan.so) when one
            // was built: every backend is a module loaded from this directory.
            if name.to_string_lossy().starts_with("libggml-") {
                println!("cargo:rerun-if-changed={}", e.path().display());
                install(&e.path(), &profile_dir.join("ggml").join(&name), tag);
            }
        }
    }
}

/// Copies `src` (following symlinks) to `dst` unless an up-to-date copy is there, through a
/// temporary file named after this process and a rename, so a running process that has the old
/// library mapped is not disturbed.
fn install(src: &Path, dst: &Path, tag: &str) {
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
    let tmp = dst.with_extension(format!("tmp-{tag}-{}", std::process::id()));
    if std::fs::copy(src, &tmp).is_ok() && std::fs::rename(&tmp, dst).is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
}
