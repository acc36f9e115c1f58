//! The model cache the benchmarks read, shared by them (`#[path]`): `$INHOUSE_MODELS_DIR` or
//! `~/.cache/inhouse/models`, as in tests/common and scripts/fetch-models.

use std::path::PathBuf;

pub fn models_dir() -> PathBuf {
    std::env::var_os("INHOUSE_MODELS_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(std::env::var_os("HOME").expect("HOME")).join(".cache/inhouse/models")
        })
}
