//! The crate's only `unsafe`: loading ggml's CPU variant libraries and asking the chosen one
//! which instruction-set features it was built for.
//!
//! llama.cpp is built with `GGML_BACKEND_DL` + `GGML_CPU_ALL_VARIANTS` (the `dynamic-backends`
//! feature of `llama-cpp-sys-2`): ggml's CPU backend exists once per x86-64 level as
//! `libggml-cpu-<variant>.so`, and at start-up ggml scores each against the running CPU and keeps
//! the best. The safe `llama-cpp-2` API can load them but cannot say which one won, so the
//! feature list is read here through ggml's registry (`ggml_backend_get_features`).
#![allow(unsafe_code)]

use std::ffi::CStr;
use std::path::PathBuf;
use std::sync::OnceLock;

/// Where the CPU variant libraries live in an installed system, relative to the binary's own
/// directory (`/usr/bin/inhoused` → `/usr/lib/inhouse/ggml/`); the search itself is shared
/// with the toolchain (`inhouse_formats::backends::find_backend_dir`), so both agree.
pub use inhouse_formats::backends::INSTALLED_BACKENDS_DIR;

/// The CPU backend that is in use.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CpuBackend {
    /// ggml's name for the variant, derived from its features (`haswell`, `skylakex`, …).
    pub variant: String,
    /// Instruction-set and build features the variant reports (`AVX2`, `FMA`, `OPENMP`, …).
    pub features: Vec<String>,
    /// The directory the variant libraries were loaded from.
    pub dir: PathBuf,
}

/// Loads the best CPU variant (once per process) and reports it; the error says where it looked.
/// Never searches the current directory (ggml's default would): a daemon must not load code
/// from wherever it was started.
pub fn cpu_backend() -> Result<CpuBackend, String> {
    static LOADED: OnceLock<Result<CpuBackend, String>> = OnceLock::new();
    LOADED
        .get_or_init(|| {
            let dir = &inhouse_formats::backends::find_backend_dir(llama_cpp_sys_2::BACKENDS_DIR)?;
            llama_cpp_2::send_logs_to_tracing(llama_cpp_2::LogOptions::default());
            llama_cpp_2::llama_backend::load_backends_from_path(dir);
            let features = cpu_features().ok_or_else(|| {
                format!(
                    "{}: no CPU variant loads on this processor (x86-64 required)",
                    dir.display()
                )
            })?;
            Ok(CpuBackend {
                variant: variant_name(&features).to_string(),
                features,
                dir: dir.clone(),
            })
        })
        .clone()
}

/// The feature names the registered CPU backend reports (those whose value is not "0"), or
/// `None` when no CPU backend is registered.
fn cpu_features() -> Option<Vec<String>> {
    use llama_cpp_sys_2 as sys;
    // SAFETY: the registry functions only read ggml's global registry, which is filled by
    // `ggml_backend_load_all_from_path` above (serialised by the OnceLock) and never shrinks.
    // `ggml_backend_reg_name` returns a NUL-terminated static string owned by the backend.
    let reg = unsafe {
        (0..sys::ggml_backend_reg_count())
            .map(|i| sys::ggml_backend_reg_get(i))
            .find(|&r| {
                !r.is_null() && CStr::from_ptr(sys::ggml_backend_reg_name(r)).to_bytes() == b"CPU"
            })
    }?;
    // SAFETY: `reg` is a live registry entry; the proc-address lookup takes a NUL-terminated name
    // and returns null or a function with the signature `ggml_backend_get_features_t` (ggml's
    // documented contract for this name). The returned array is static inside the variant
    // library (which stays loaded for the process) and ends with a `{NULL, NULL}` entry; every
    // name and value in it is a NUL-terminated static string.
    unsafe {
        let f = sys::ggml_backend_reg_get_proc_address(reg, c"ggml_backend_get_features".as_ptr());
        if f.is_null() {
            return Some(Vec::new());
        }
        let get: unsafe extern "C" fn(sys::ggml_backend_reg_t) -> *mut sys::ggml_backend_feature =
            std::mem::transmute(f);
        let mut out = Vec::new();
        let mut p = get(reg);
        while !p.is_null() && !(*p).name.is_null() {
            let name = CStr::from_ptr((*p).name).to_string_lossy().into_owned();
            let value = if (*p).value.is_null() {
                String::new()
            } else {
                CStr::from_ptr((*p).value).to_string_lossy().into_owned()
            };
            if value != "0" {
                out.push(name);
            }
            p = p.add(1);
        }
        Some(out)
    }
}

/// ggml's variant name (`ggml/src/CMakeLists.txt`, `GGML_CPU_ALL_VARIANTS`) for a feature list:
/// the most capable level whose features are all present.
pub fn variant_name(features: &[String]) -> &'static str {
    let has = |f: &str| features.iter().any(|x| x == f);
    let avx512 = has("AVX512");
    if has("AMX_INT8") {
        "sapphirerapids"
    } else if avx512 && has("AVX512_BF16") && has("AVX512_VBMI") {
        "zen4"
    } else if avx512 && has("AVX512_BF16") {
        "cooperlake"
    } else if avx512 && has("AVX512_VBMI") && has("AVX512_VNNI") {
        "icelake"
    } else if avx512 && has("AVX512_VNNI") {
        "cascadelake"
    } else if avx512 && has("AVX512_VBMI") {
        "cannonlake"
    } else if avx512 {
        "skylakex"
    } else if has("AVX_VNNI") {
        "alderlake"
    } else if has("AVX2") {
        "haswell"
    } else if has("FMA") {
        "piledriver"
    } else if has("F16C") {
        "ivybridge"
    } else if has("AVX") {
        "sandybridge"
    } else if has("SSE3") {
        "sse42"
    } else {
        "x64"
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v(f: &[&str]) -> &'static str {
        variant_name(&f.iter().map(|s| s.to_string()).collect::<Vec<_>>())
    }

    #[test]
    fn variant_names_follow_ggml_levels() {
        assert_eq!(v(&[]), "x64");
        assert_eq!(
            v(&["SSE3", "AVX", "F16C", "FMA", "AVX2", "BMI2"]),
            "haswell"
        );
        assert_eq!(v(&["AVX2", "AVX_VNNI"]), "alderlake");
        assert_eq!(v(&["AVX2", "AVX512"]), "skylakex");
        assert_eq!(
            v(&["AVX512", "AVX512_VBMI", "AVX512_VNNI", "AVX512_BF16"]),
            "zen4"
        );
        assert_eq!(v(&["AVX512", "AVX512_VNNI", "AMX_INT8"]), "sapphirerapids");
    }
}
