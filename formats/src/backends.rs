//! Where ggml's CPU variant libraries (`libggml-cpu-<variant>.so`) are looked for.
//!
//! llama.cpp is built with `dynamic-backends`: the CPU backend exists once per x86-64 level and
//! the best one for the running CPU is loaded at start-up. The daemon (`engine::ffi`) and the
//! toolchain (`inhouse-quantize`'s `llama` module) both load them; the search lives here, once,
//! so that the two always find the same libraries. Only the path search is here: loading is
//! FFI and stays with the llama.cpp code of each binary.
//!
//! The directory the llama.cpp build wrote the libraries to is known only to the crate that links
//! llama.cpp (`llama_cpp_sys_2::BACKENDS_DIR`), so callers pass it in.

use std::ffi::OsString;
use std::path::{Path, PathBuf};

/// Where the CPU variant libraries live in an installed system, relative to the binary's own
/// directory: `/usr/sbin/inhoused` and `/usr/bin/inhouse-quantize` → `/usr/lib/inhouse/ggml/`.
pub const INSTALLED_BACKENDS_DIR: &str = "../lib/inhouse/ggml";

/// The environment variable that names a backend directory to try first.
pub const GGML_DIR_ENV: &str = "INHOUSE_GGML_DIR";

/// The directories searched for `libggml-cpu-*.so`, in order: `$INHOUSE_GGML_DIR`, the
/// installed location relative to the running binary, `ggml/` beside the binary (the build
/// layout), and `build_dir`, the directory the llama.cpp build wrote them to
/// (`llama_cpp_sys_2::BACKENDS_DIR`).
pub fn backend_dirs(build_dir: Option<&str>) -> Vec<PathBuf> {
    let exe_dir = std::env::current_exe()
        .ok()
        .and_then(|e| e.parent().map(Path::to_path_buf));
    search_order(
        std::env::var_os(GGML_DIR_ENV),
        exe_dir.as_deref(),
        build_dir,
    )
}

/// [`backend_dirs`] from its inputs, so that the order is testable without the environment.
fn search_order(
    env: Option<OsString>,
    exe_dir: Option<&Path>,
    build: Option<&str>,
) -> Vec<PathBuf> {
    let mut dirs = Vec::new();
    if let Some(d) = env {
        dirs.push(PathBuf::from(d));
    }
    if let Some(exe_dir) = exe_dir {
        dirs.push(exe_dir.join(INSTALLED_BACKENDS_DIR));
        dirs.push(exe_dir.join("ggml"));
    }
    if let Some(d) = build {
        dirs.push(PathBuf::from(d));
    }
    dirs
}

/// The first of [`backend_dirs`] that holds ggml CPU variants; the error lists where it looked.
/// Never the current directory (ggml's default would be): a daemon must not load code from
/// wherever it was started.
pub fn find_backend_dir(build_dir: Option<&str>) -> Result<PathBuf, String> {
    first_with_variants(&backend_dirs(build_dir))
}

/// The first of `dirs` with CPU variants and a UTF-8 path (ggml takes the path as a C string).
fn first_with_variants(dirs: &[PathBuf]) -> Result<PathBuf, String> {
    dirs.iter()
        .find(|d| has_cpu_variants(d) && d.to_str().is_some())
        .cloned()
        .ok_or_else(|| {
            format!(
                "no ggml CPU backend libraries (libggml-cpu-*.so) in any of: {}",
                dirs.iter()
                    .map(|d| d.display().to_string())
                    .collect::<Vec<_>>()
                    .join(", ")
            )
        })
}

fn has_cpu_variants(dir: &Path) -> bool {
    std::fs::read_dir(dir).is_ok_and(|entries| {
        entries.flatten().any(|e| {
            let n = e.file_name();
            let n = n.to_string_lossy();
            n.starts_with("libggml-cpu-") && n.ends_with(".so")
        })
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_search_order_is_env_installed_beside_build() {
        let dirs = search_order(
            Some("/env/ggml".into()),
            Some(Path::new("/usr/sbin")),
            Some("/build/out"),
        );
        assert_eq!(
            dirs,
            [
                PathBuf::from("/env/ggml"),
                PathBuf::from("/usr/sbin/../lib/inhouse/ggml"),
                PathBuf::from("/usr/sbin/ggml"),
                PathBuf::from("/build/out"),
            ]
        );
        assert!(search_order(None, None, None).is_empty());
    }

    #[test]
    fn the_first_directory_with_cpu_variants_wins() {
        let tmp = tempfile::tempdir().unwrap();
        let (empty, other, good, later) = (
            tmp.path().join("empty"),
            tmp.path().join("other"),
            tmp.path().join("good"),
            tmp.path().join("later"),
        );
        for d in [&empty, &other, &good, &later] {
            std::fs::create_dir(d).unwrap();
        }
        std::fs::write(other.join("libggml-base.so"), b"").unwrap();
        std::fs::write(good.join("libggml-cpu-haswell.so"), b"").unwrap();
        std::fs::write(later.join("libggml-cpu-x64.so"), b"").unwrap();
        let missing = tmp.path().join("missing");
        let dirs = [missing, empty, other, good.clone(), later];
        assert_eq!(first_with_variants(&dirs).unwrap(), good);

        let e = first_with_variants(&dirs[..3]).unwrap_err();
        assert!(e.contains("libggml-cpu-*.so"), "{e}");
        for d in &dirs[..3] {
            assert!(e.contains(&d.display().to_string()), "{e}");
        }
    }
}
