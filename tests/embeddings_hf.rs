//! `/v1/embeddings` through the real `inhoused` with an embedding model converted from a Hugging
//! Face checkpoint by `inhouse-quantize import-hf` (all-MiniLM-L6-v2, BERT; fetched by
//! `scripts/fetch-models`).
//!
//! The vectors the daemon serves are compared with the independent NumPy BERT of
//! `quantize/tests/bert_reference.py` (the same reference the converter's own test uses):
//! cosine ≥ 0.99 per sentence, unit length, and paraphrases closer than unrelated sentences.
//! A copy of the checkpoint that declares CLS pooling is served with CLS pooling: the daemon
//! pools as the GGUF says. The inputs of one request are decoded together; each gets the vector
//! it gets alone.

mod common;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use common::*;
use serde_json::{json, Value};

const SENTENCES: &[&str] = &[
    "A man is playing a guitar.",
    "Someone is strumming an acoustic guitar.",
    "The central bank raised interest rates again.",
    "How do I reset my password?",
    "What are the steps to change a forgotten password?",
    "Tomatoes grow best in full sun.",
];

fn checkpoint() -> PathBuf {
    let dir = models_dir().join("all-MiniLM-L6-v2");
    assert!(
        dir.join("model.safetensors").is_file(),
        "the checkpoint {} is missing: run scripts/fetch-models",
        dir.display()
    );
    dir
}

fn convert(dir: &Path, out: &Path) {
    let run = Command::new(toolchain())
        .arg("import-hf")
        .arg(dir)
        .arg("--out")
        .arg(out)
        .output()
        .expect("run inhouse-quantize");
    assert!(
        run.status.success(),
        "import-hf failed: {}",
        String::from_utf8_lossy(&run.stderr)
    );
}

fn reference(dir: &Path, pooling: &str, texts: &[&str]) -> Vec<Vec<f64>> {
    let python = std::env::var("INHOUSE_PYTHON").unwrap_or_else(|_| {
        format!(
            "{}/.cache/inhouse/venv/bin/python",
            std::env::var("HOME").unwrap()
        )
    });
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("quantize/tests/bert_reference.py");
    let mut child = Command::new(&python)
        .arg(&script)
        .arg(dir)
        .arg(pooling)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("{python}: {e} (run scripts/setup)"));
    child
        .stdin
        .take()
        .unwrap()
        .write_all(serde_json::to_string(texts).unwrap().as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "bert_reference.py failed (run scripts/setup):\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    serde_json::from_value(v["vectors"].clone()).unwrap()
}

fn cosine(a: &[f64], b: &[f64]) -> f64 {
    let dot: f64 = a.iter().zip(b).map(|(x, y)| x * y).sum();
    let na = a.iter().map(|x| x * x).sum::<f64>().sqrt();
    let nb = b.iter().map(|x| x * x).sum::<f64>().sqrt();
    dot / (na * nb)
}

/// The daemon's vectors for `texts` (one request) from the model `name`.
fn served_texts(d: &Daemon, name: &str, texts: &[&str]) -> Vec<Vec<f64>> {
    rt().block_on(async {
        let c = d.client();
        let body = json!({"model": name, "input": texts});
        let (st, v) = post(&c, "/v1/embeddings", &body.to_string()).await;
        assert_eq!(st, 200, "{v}\n{}", d.log());
        v["data"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| serde_json::from_value(e["embedding"].clone()).unwrap())
            .collect()
    })
}

/// The daemon's vectors for `SENTENCES`, in one request (decoded together).
fn served(d: &Daemon, name: &str) -> Vec<Vec<f64>> {
    served_texts(d, name, SENTENCES)
}

fn assert_close(what: &str, got: &[Vec<f64>], want: &[Vec<f64>]) {
    assert_eq!(got.len(), SENTENCES.len());
    for ((text, g), w) in SENTENCES.iter().zip(got).zip(want) {
        assert_eq!(g.len(), 384, "all-MiniLM-L6-v2 is 384 wide");
        let norm = g.iter().map(|x| x * x).sum::<f64>().sqrt();
        assert!((norm - 1.0).abs() < 1e-3, "{what}: {text:?}: norm {norm}");
        let c = cosine(g, w);
        eprintln!("{what}: {text:?}: cosine to the NumPy reference {c:.6}");
        assert!(c >= 0.99, "{what}: {text:?}: cosine {c} to the reference");
    }
}

#[test]
fn a_converted_bert_serves_the_reference_embeddings_with_its_own_pooling() {
    let tmp = tempfile::tempdir().unwrap();
    let mean_gguf = tmp.path().join("minilm.gguf");
    convert(&checkpoint(), &mean_gguf);
    // The same weights declaring CLS pooling (as BGE-style models do).
    let cls_dir = tmp.path().join("minilm-cls");
    std::fs::create_dir_all(cls_dir.join("1_Pooling")).unwrap();
    for f in ["config.json", "model.safetensors", "tokenizer.json"] {
        std::os::unix::fs::symlink(checkpoint().join(f), cls_dir.join(f)).unwrap();
    }
    std::fs::write(
        cls_dir.join("1_Pooling/config.json"),
        r#"{"word_embedding_dimension": 384, "pooling_mode_cls_token": true,
            "pooling_mode_mean_tokens": false}"#,
    )
    .unwrap();
    let cls_gguf = tmp.path().join("minilm-cls.gguf");
    convert(&cls_dir, &cls_gguf);

    let d = Daemon::start(&[("minilm", &mean_gguf), ("minilm-cls", &cls_gguf)], &[]);
    let mean = served(&d, "minilm");
    assert_close("mean", &mean, &reference(&checkpoint(), "mean", SENTENCES));
    let para = [cosine(&mean[0], &mean[1]), cosine(&mean[3], &mean[4])];
    let unrel = [cosine(&mean[0], &mean[2]), cosine(&mean[3], &mean[5])];
    assert!(
        para.iter().all(|p| unrel.iter().all(|u| p > u)),
        "paraphrases {para:?} vs unrelated {unrel:?}"
    );
    // Decoded together or alone, an input gets the same vector.
    for (i, text) in SENTENCES.iter().enumerate() {
        let alone = served_texts(&d, "minilm", &[text]);
        let c = cosine(&alone[0], &mean[i]);
        assert!(c > 0.9999, "{text:?}: alone vs in a batch: cosine {c}");
    }
    // More inputs than one batch takes (32): split across batches, still in order.
    let many: Vec<&str> = SENTENCES.iter().copied().cycle().take(45).collect();
    let got = served_texts(&d, "minilm", &many);
    assert_eq!(got.len(), 45);
    for (i, g) in got.iter().enumerate() {
        let c = cosine(g, &mean[i % SENTENCES.len()]);
        assert!(
            c > 0.9999,
            "input {i} of 45: cosine {c} to the same sentence alone"
        );
    }
    let cls = served(&d, "minilm-cls");
    assert_close("cls", &cls, &reference(&checkpoint(), "cls", SENTENCES));
    // CLS and mean pooling are different vectors: the pooling really followed the file.
    assert!(cosine(&cls[0], &mean[0]) < 0.99);
}
