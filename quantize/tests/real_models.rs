//! The GGUF reader and the `inspect` binary against the real models the project tests with.
//!
//! The models live in `$INHOUSE_MODELS_DIR` (default `~/.cache/inhouse/models`) and are put there
//! by `scripts/fetch-models`. A missing model fails the test rather than skipping it: a skipped
//! test would let a broken reader pass unnoticed.

mod common;

use common::{model, GEMMA3, SMOLLM2};
use std::path::Path;
use std::process::{Command, Output};

use inhouse_formats::gguf::{self, GgufFile};

fn open(path: &Path) -> GgufFile {
    gguf::open(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn check_model(name: &str, arch: &str, file_type: &str, approx_params: f64) -> GgufFile {
    let path = model(name);
    let f = open(&path);
    assert_eq!(f.architecture(), Some(arch), "{name}: architecture");
    assert_eq!(f.file_type_name(), Some(file_type), "{name}: file type");
    assert!(!f.tensors().is_empty(), "{name}: no tensors");
    let n = f.n_params() as f64;
    assert!(
        (n - approx_params).abs() <= 0.2 * approx_params,
        "{name}: {n} parameters, expected about {approx_params}"
    );
    assert!(
        f.context_length().is_some_and(|c| c > 0),
        "{name}: context length"
    );
    // Parsing already enforces these; restating them documents what a valid file guarantees.
    assert_eq!(f.data_offset() % f.alignment(), 0);
    for t in f.tensors() {
        let (start, end) = f.tensor_data_range(t);
        assert!(
            start >= f.data_offset() && end <= f.file_size(),
            "{name}: {}",
            t.name
        );
    }
    f
}

#[test]
fn smollm2_135m_q4_1() {
    let f = check_model(SMOLLM2, "llama", "Q4_1", 135e6);
    assert_eq!(f.context_length(), Some(8192));
    let template = f.chat_template().expect("SmolLM2 has a chat template");
    assert!(template.contains("<|im_start|>"), "{template}");
}

#[test]
fn gemma3_270m_q4_k_m() {
    let f = check_model(GEMMA3, "gemma3", "Q4_K_M", 270e6);
    assert_eq!(f.context_length(), Some(32768));
    // The pinned file (sha256 a5fd3b62…6818) is the base gemma-3-270m, not the instruct model,
    // and carries no tokenizer.chat_template: whoever serves it must supply a template. If this
    // fails, the fetched file changed; update this test and the serving fallback together.
    assert_eq!(
        f.chat_template(),
        None,
        "gemma-3-270m-q4_k_m.gguf now has a chat template: the model file changed"
    );
    assert_eq!(f.get_u64("tokenizer.ggml.bos_token_id"), Some(2));
}

fn run_inspect(args: &[&std::ffi::OsStr]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_inhouse-quantize"))
        .arg("inspect")
        .args(args)
        .output()
        .expect("running inhouse-quantize")
}

#[test]
fn inspect_prints_a_real_model() {
    let path = model(SMOLLM2);
    let out = run_inspect(&[path.as_os_str()]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{:?}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    for expected in [
        "architecture:   llama",
        "file type:      Q4_1 (3)",
        "context length: 8192",
        "chat template:  yes",
        "tokenizer.ggml.tokens = [array of ",
    ] {
        assert!(
            stdout.contains(expected),
            "missing {expected:?} in:\n{stdout}"
        );
    }

    let out = run_inspect(&[path.as_os_str(), "--json".as_ref()]);
    assert!(out.status.success());
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).expect("valid JSON");
    assert_eq!(report["architecture"], "llama");
    assert_eq!(report["file_type"], "Q4_1");
    assert_eq!(report["has_chat_template"], true);
    assert_eq!(report["context_length"], 8192);
    assert!(report["n_tensors"].as_u64().is_some_and(|n| n > 0));
    assert_eq!(
        report["metadata"]["general.architecture"], "llama",
        "metadata in JSON"
    );
}

#[test]
fn inspect_rejects_bad_files_with_exit_2() {
    let dir = tempfile::tempdir().unwrap();
    let garbage = dir.path().join("garbage.gguf");
    std::fs::write(&garbage, b"this is not a model, only some text\n").unwrap();
    let out = run_inspect(&[garbage.as_os_str()]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "stderr: {stderr}");
    assert!(
        stderr.contains("garbage.gguf") && stderr.contains("not a GGUF file"),
        "{stderr}"
    );
    assert!(out.stdout.is_empty());

    // A real header cut short.
    let mut head = Vec::new();
    let real = std::fs::File::open(model(SMOLLM2)).unwrap();
    std::io::Read::read_to_end(&mut std::io::Read::take(real, 4096), &mut head).unwrap();
    let cut = dir.path().join("cut.gguf");
    std::fs::write(&cut, &head).unwrap();
    let out = run_inspect(&[cut.as_os_str()]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "stderr: {stderr}");
    assert!(stderr.contains("truncated"), "{stderr}");

    let missing = dir.path().join("missing.gguf");
    let out = run_inspect(&[missing.as_os_str()]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "stderr: {stderr}");
    assert!(stderr.contains("cannot open"), "{stderr}");

    let out = run_inspect(&[dir.path().as_os_str()]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("not a regular file"));
}
