//! What the toolchain's integration tests share: where the test models are.
//!
//! The models live in `$INHOUSE_MODELS_DIR` (default `~/.cache/inhouse/models`) and are put there
//! by `scripts/fetch-models`. A missing model fails the test rather than skipping it: a skipped
//! test would let a broken toolchain pass unnoticed.
#![allow(dead_code)]

use std::path::PathBuf;

/// SmolLM2's file name.
pub const SMOLLM2: &str = "SmolLM2-135M-Instruct.Q4_1.gguf";
/// Gemma 3's file name.
pub const GEMMA3: &str = "gemma-3-270m-q4_k_m.gguf";

/// The directory of the test models.
pub fn models_dir() -> PathBuf {
    match std::env::var_os("INHOUSE_MODELS_DIR") {
        Some(dir) if !dir.is_empty() => PathBuf::from(dir),
        _ => {
            let home = std::env::var_os("HOME")
                .expect("HOME is not set; set INHOUSE_MODELS_DIR to the models directory");
            PathBuf::from(home).join(".cache/inhouse/models")
        }
    }
}

/// The path of a test model, failing with instructions if it is missing.
pub fn model(name: &str) -> PathBuf {
    let path = models_dir().join(name);
    assert!(
        path.is_file(),
        "test model {} is missing: run scripts/fetch-models (or set INHOUSE_MODELS_DIR)",
        path.display()
    );
    path
}
