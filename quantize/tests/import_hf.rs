//! `import-hf` on a real checkpoint: all-MiniLM-L6-v2 (BERT, sentence embeddings), as
//! `scripts/fetch-models` puts it in `~/.cache/inhouse/models/all-MiniLM-L6-v2/`.
//!
//! The converted GGUF is loaded by llama.cpp (the library the daemon serves with) and judged
//! against an independent implementation: `tests/bert_reference.py`, a WordPiece tokenizer and a
//! BERT forward in NumPy written from the published algorithm, reading the safetensors directly
//! (run with the test venv, `$INHOUSE_PYTHON`). Token ids must be equal; the pooled, normalized
//! vectors must point the same way (cosine ≥ 0.999 in F32, ≥ 0.99 in F16); and paraphrases
//! must be closer than unrelated sentences.

mod common;

use std::num::NonZeroU32;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;
use std::time::Instant;

use inhouse_formats::gguf::{self, Array, GgmlType, Value};
use inhouse_quantize::hf::{self, ImportError, OutType};
use llama_cpp_2::context::params::{LlamaContextParams, LlamaPoolingType};
use llama_cpp_2::llama_backend::LlamaBackend;
use llama_cpp_2::llama_batch::LlamaBatch;
use llama_cpp_2::model::params::LlamaModelParams;
use llama_cpp_2::model::LlamaModel;

const BIN: &str = env!("CARGO_BIN_EXE_inhouse-quantize");

/// The checkpoint's directory under the models cache.
const CHECKPOINT: &str = "all-MiniLM-L6-v2";

/// Sentences whose token ids and vectors are compared with the reference: plain English,
/// punctuation, accents (stripped by the uncased normalizer), CJK characters (one word each),
/// numbers and symbols, words split into many pieces, and odd whitespace.
const SENTENCES: &[&str] = &[
    "A man is playing a guitar.",
    "The quick brown fox jumps over the lazy dog.",
    "Ünïcödé àccents, naïve café!",
    "東京 is in 日本.",
    "e-mail: someone@example.com (2024-12-04) 3.14159",
    "Supercalifragilisticexpialidocious antidisestablishmentarianism",
    "tab\there  spaces\n\nnewlines",
    "unaffable running",
];

/// Paraphrase pairs (written for this test): each pair says the same thing in other words.
const PARAPHRASES: &[(&str, &str)] = &[
    (
        "A man is playing a guitar.",
        "Someone is strumming an acoustic guitar.",
    ),
    (
        "The cat is sleeping on the sofa.",
        "A kitten naps on the couch.",
    ),
    (
        "How do I reset my password?",
        "What are the steps to change a forgotten password?",
    ),
    (
        "The invoice must be paid within thirty days.",
        "Payment of the bill is due in 30 days.",
    ),
];

/// Unrelated pairs: the same first sentences against sentences about something else.
const UNRELATED: &[(&str, &str)] = &[
    (
        "A man is playing a guitar.",
        "The central bank raised interest rates again.",
    ),
    (
        "The cat is sleeping on the sofa.",
        "Compile the kernel with the new configuration.",
    ),
    (
        "How do I reset my password?",
        "Tomatoes grow best in full sun.",
    ),
    (
        "The invoice must be paid within thirty days.",
        "The choir sang in the old cathedral.",
    ),
];

fn checkpoint() -> PathBuf {
    let dir = common::models_dir().join(CHECKPOINT);
    assert!(
        dir.join("model.safetensors").is_file() && dir.join("tokenizer.json").is_file(),
        "the checkpoint {} is missing: run scripts/fetch-models (or set INHOUSE_MODELS_DIR)",
        dir.display()
    );
    dir
}

fn python() -> String {
    let python = std::env::var("INHOUSE_PYTHON").unwrap_or_else(|_| {
        let home = std::env::var("HOME").expect("HOME");
        format!("{home}/.cache/inhouse/venv/bin/python")
    });
    assert!(
        Path::new(&python).exists(),
        "{python} is missing: run scripts/setup (it makes the venv with tests/requirements.txt)"
    );
    python
}

fn backend() -> &'static LlamaBackend {
    static B: OnceLock<LlamaBackend> = OnceLock::new();
    B.get_or_init(|| {
        let dir = inhouse_formats::backends::find_backend_dir(llama_cpp_sys_2::BACKENDS_DIR)
            .expect("ggml backend directory");
        llama_cpp_2::llama_backend::load_backends_from_path(&dir);
        let mut b = LlamaBackend::init().expect("llama.cpp init");
        b.void_logs();
        b
    })
}

/// Converts the checkpoint to `dir/NAME`, returning the path and the seconds it took.
fn convert(dir: &Path, out_type: OutType) -> (PathBuf, f64) {
    let out = dir.join(format!("minilm-{}.gguf", out_type.name().to_lowercase()));
    let start = Instant::now();
    hf::import(&hf::Options {
        dir: checkpoint(),
        out: out.clone(),
        out_type,
        name: None,
    })
    .expect("the checkpoint converts");
    (out, start.elapsed().as_secs_f64())
}

fn load(path: &Path) -> LlamaModel {
    let params = LlamaModelParams::default().with_n_gpu_layers(0);
    LlamaModel::load_from_file(backend(), path, &params).expect("llama.cpp loads the GGUF")
}

fn llama_ids(model: &LlamaModel, text: &str) -> Vec<i32> {
    model
        .vocab()
        .tokenize(text.as_bytes(), true, false)
        .into_iter()
        .map(|t| t.0)
        .collect()
}

/// llama.cpp's sentence embeddings, pooled as the GGUF says (the context asks for no pooling of
/// its own) and L2-normalized, as the daemon serves them.
fn llama_embed(model: &LlamaModel, texts: &[&str]) -> Vec<Vec<f32>> {
    let params = LlamaContextParams::default()
        .with_n_ctx(NonZeroU32::new(512))
        .with_n_batch(512)
        .with_n_ubatch(512)
        .with_n_threads(2)
        .with_n_threads_batch(2)
        .with_embeddings(true)
        .with_pooling_type(LlamaPoolingType::Unspecified);
    let mut ctx = model.new_context(backend(), params).expect("context");
    texts
        .iter()
        .map(|text| {
            let tokens = model.vocab().tokenize(text.as_bytes(), true, false);
            ctx.clear_kv_cache();
            let mut batch = LlamaBatch::new(tokens.len(), 1);
            batch.add_sequence(&tokens, 0, false).unwrap();
            ctx.decode(&mut batch).expect("decode");
            let v = ctx.embeddings_seq_ith(0).expect("pooled embedding");
            normalize(v)
        })
        .collect()
}

fn normalize(v: &[f32]) -> Vec<f32> {
    let n = v.iter().map(|x| x * x).sum::<f32>().sqrt();
    v.iter().map(|x| x / n).collect()
}

fn cosine(a: &[f32], b: &[f32]) -> f32 {
    let dot: f32 = a.iter().zip(b).map(|(x, y)| x * y).sum();
    let na = a.iter().map(|x| x * x).sum::<f32>().sqrt();
    let nb = b.iter().map(|x| x * x).sum::<f32>().sqrt();
    dot / (na * nb)
}

/// The reference's token ids and vectors for `texts`.
fn reference(texts: &[&str]) -> (Vec<Vec<i32>>, Vec<Vec<f32>>) {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/bert_reference.py");
    let mut child = Command::new(python())
        .arg(&script)
        .arg(checkpoint())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run the reference");
    {
        use std::io::Write;
        let mut stdin = child.stdin.take().unwrap();
        stdin
            .write_all(serde_json::to_string(texts).unwrap().as_bytes())
            .unwrap();
    }
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "bert_reference.py failed (numpy missing? run scripts/setup):\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("reference JSON");
    let ids = serde_json::from_value(v["ids"].clone()).unwrap();
    let vectors = serde_json::from_value(v["vectors"].clone()).unwrap();
    (ids, vectors)
}

#[test]
fn bert_is_written_with_llama_cpp_names_metadata_and_vocabulary() {
    let tmp = tempfile::tempdir().unwrap();
    let (path, seconds) = convert(tmp.path(), OutType::F16);
    eprintln!("import-hf: all-MiniLM-L6-v2 to F16 in {seconds:.2} s");
    let f = gguf::open(&path).expect("the reader accepts the file");
    assert_eq!(f.architecture(), Some("bert"));
    assert_eq!(f.get_str("general.name"), Some(CHECKPOINT));
    assert_eq!(f.file_type(), Some(1));
    for (key, want) in [
        ("bert.context_length", 512),
        ("bert.embedding_length", 384),
        ("bert.feed_forward_length", 1536),
        ("bert.block_count", 6),
        ("bert.attention.head_count", 12),
        ("bert.pooling_type", 1),
        ("tokenizer.ggml.token_type_count", 2),
        ("tokenizer.ggml.bos_token_id", 101),
        ("tokenizer.ggml.seperator_token_id", 102),
        ("tokenizer.ggml.unknown_token_id", 100),
        ("tokenizer.ggml.padding_token_id", 0),
        ("tokenizer.ggml.mask_token_id", 103),
    ] {
        assert_eq!(f.get_u64(key), Some(want), "{key}");
    }
    assert_eq!(f.get_str("tokenizer.ggml.model"), Some("bert"));
    let Some(Value::Array(Array::String(tokens))) = f.get("tokenizer.ggml.tokens") else {
        panic!("no token list");
    };
    assert_eq!(tokens.len(), 30522);
    // Specials keep their text, word starts get "▁", continuations lose "##".
    assert_eq!(tokens[101], "[CLS]");
    assert_eq!(tokens[1], "[unused0]");
    assert_eq!(tokens[2158], "\u{2581}man");
    assert_eq!(tokens[2075], "ing");
    // 4 embedding tensors (2 + 1 + 1 norms x2 = 5) and 16 per layer; no pooler, no position ids.
    assert_eq!(f.tensors().len(), 5 + 16 * 6);
    let ty = |name: &str| {
        f.tensors()
            .iter()
            .find(|t| t.name == name)
            .unwrap_or_else(|| panic!("no tensor {name}"))
            .ggml_type
    };
    assert_eq!(ty("token_embd.weight"), GgmlType::F16);
    assert_eq!(ty("blk.5.ffn_down.weight"), GgmlType::F16);
    assert_eq!(ty("blk.0.attn_q.bias"), GgmlType::F32);
    assert_eq!(ty("token_embd_norm.weight"), GgmlType::F32);
    assert_eq!(ty("token_types.weight"), GgmlType::F32);
    let dims = &f
        .tensors()
        .iter()
        .find(|t| t.name == "blk.0.ffn_up.weight")
        .unwrap()
        .dims;
    assert_eq!(
        dims.as_slice(),
        [384, 1536],
        "ggml order: ne0 = the input width"
    );
}

#[test]
fn llama_cpp_tokenizes_the_converted_vocabulary_like_wordpiece() {
    let tmp = tempfile::tempdir().unwrap();
    let (path, _) = convert(tmp.path(), OutType::F16);
    let model = load(&path);
    let (want, _) = reference(SENTENCES);
    for (text, want) in SENTENCES.iter().zip(&want) {
        assert_eq!(&llama_ids(&model, text), want, "token ids of {text:?}");
    }
}

#[test]
fn embeddings_agree_with_a_numpy_bert_and_rank_paraphrases_first() {
    let tmp = tempfile::tempdir().unwrap();
    let mut texts: Vec<&str> = SENTENCES.to_vec();
    for (a, b) in PARAPHRASES.iter().chain(UNRELATED) {
        for t in [*a, *b] {
            if !texts.contains(&t) {
                texts.push(t);
            }
        }
    }
    let (_, want) = reference(&texts);
    for (out_type, floor) in [(OutType::F32, 0.999), (OutType::F16, 0.99)] {
        let (path, seconds) = convert(tmp.path(), out_type);
        let model = load(&path);
        let start = Instant::now();
        let got = llama_embed(&model, &texts);
        let embed_s = start.elapsed().as_secs_f64();
        let cosines: Vec<f32> = got.iter().zip(&want).map(|(g, w)| cosine(g, w)).collect();
        let min = cosines.iter().copied().fold(f32::INFINITY, f32::min);
        eprintln!(
            "import-hf {}: converted in {seconds:.2} s; {} sentences embedded in {embed_s:.2} s; \
             cosine to the NumPy reference: min {min:.6}, mean {:.6}",
            out_type.name(),
            texts.len(),
            cosines.iter().sum::<f32>() / cosines.len() as f32
        );
        for (text, c) in texts.iter().zip(&cosines) {
            assert!(
                *c >= floor,
                "{}: {text:?}: cosine {c} to the reference, below {floor}",
                out_type.name()
            );
        }
        let vec_of = |t: &str| &got[texts.iter().position(|x| *x == t).unwrap()];
        let para: Vec<f32> = PARAPHRASES
            .iter()
            .map(|(a, b)| cosine(vec_of(a), vec_of(b)))
            .collect();
        let unrel: Vec<f32> = UNRELATED
            .iter()
            .map(|(a, b)| cosine(vec_of(a), vec_of(b)))
            .collect();
        eprintln!("  paraphrase cosines {para:.3?}; unrelated {unrel:.3?}");
        for (i, (p, u)) in para.iter().zip(&unrel).enumerate() {
            assert!(
                p > u,
                "{:?} is closer to the unrelated {:?} ({u}) than to its paraphrase ({p})",
                PARAPHRASES[i].0,
                UNRELATED[i].1
            );
        }
        let worst_para = para.iter().copied().fold(f32::INFINITY, f32::min);
        let best_unrel = unrel.iter().copied().fold(f32::NEG_INFINITY, f32::max);
        assert!(
            worst_para > best_unrel,
            "paraphrases {para:?} do not all beat unrelated pairs {unrel:?}"
        );
    }
}

/// A change to `config.json`.
type ConfigEdit = dyn FnOnce(&mut serde_json::Value);

/// A directory with the checkpoint's files linked in, and `config.json` changed by `edit`.
fn variant(edit: impl FnOnce(&mut serde_json::Value)) -> tempfile::TempDir {
    let src = checkpoint();
    let tmp = tempfile::tempdir().unwrap();
    for f in ["model.safetensors", "tokenizer.json"] {
        std::os::unix::fs::symlink(src.join(f), tmp.path().join(f)).unwrap();
    }
    let mut config: serde_json::Value =
        serde_json::from_slice(&std::fs::read(src.join("config.json")).unwrap()).unwrap();
    edit(&mut config);
    std::fs::write(
        tmp.path().join("config.json"),
        serde_json::to_vec(&config).unwrap(),
    )
    .unwrap();
    tmp
}

#[test]
fn what_it_cannot_convert_faithfully_is_refused_and_nothing_written() {
    let cases: Vec<(&str, Box<ConfigEdit>)> = vec![
        (
            "model_type",
            Box::new(|c| c["model_type"] = "roberta".into()),
        ),
        ("hidden_act", Box::new(|c| c["hidden_act"] = "relu".into())),
        (
            "num_hidden_layers",
            // Fewer layers than the weights hold: the extra tensors are not silently dropped.
            Box::new(|c| c["num_hidden_layers"] = 5.into()),
        ),
        ("shape", Box::new(|c| c["intermediate_size"] = 1024.into())),
    ];
    for (what, edit) in cases {
        let dir = variant(edit);
        let out = dir.path().join("out.gguf");
        let err = hf::import(&hf::Options {
            dir: dir.path().to_path_buf(),
            out: out.clone(),
            out_type: OutType::F16,
            name: None,
        })
        .expect_err(what);
        assert!(
            matches!(
                err,
                ImportError::Unsupported(_) | ImportError::Tensor { .. }
            ),
            "{what}: {err}"
        );
        assert!(!out.exists(), "{what}: an output was left behind");
    }
    // No weights at all.
    let dir = tempfile::tempdir().unwrap();
    std::fs::copy(
        checkpoint().join("config.json"),
        dir.path().join("config.json"),
    )
    .unwrap();
    let err = hf::import(&hf::Options {
        dir: dir.path().to_path_buf(),
        out: dir.path().join("out.gguf"),
        out_type: OutType::F16,
        name: None,
    })
    .unwrap_err();
    assert!(err.to_string().contains("safetensors"), "{err}");
}

#[test]
fn the_command_line_converts_and_reports_and_exits_2_on_bad_input() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("m.gguf");
    let run = Command::new(BIN)
        .args([
            "import-hf",
            "--type",
            "f32",
            "--name",
            "minilm",
            "--progress",
            "json",
        ])
        .arg(checkpoint())
        .arg("--out")
        .arg(&out)
        .output()
        .unwrap();
    assert!(
        run.status.success(),
        "{}",
        String::from_utf8_lossy(&run.stderr)
    );
    let stdout = String::from_utf8_lossy(&run.stdout);
    let result: serde_json::Value = stdout
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .find(|v| v["type"] == "result")
        .unwrap_or_else(|| panic!("no result line in {stdout}"));
    assert_eq!(result["architecture"], "bert", "{result}");
    assert_eq!(result["name"], "minilm");
    assert_eq!(result["weight_type"], "F32");
    assert_eq!(result["pooling"], "mean");
    assert_eq!(result["tensors"], 101);
    assert_eq!(result["vocab_size"], 30522);
    // 22.7M parameters without the pooler (the pooler's 147,840 are not converted).
    assert_eq!(result["parameters"], 22_565_376);
    assert_eq!(
        gguf::open(&out).unwrap().get_str("general.name"),
        Some("minilm")
    );

    let bad = Command::new(BIN)
        .args(["import-hf"])
        .arg(tmp.path())
        .arg("--out")
        .arg(tmp.path().join("x.gguf"))
        .output()
        .unwrap();
    assert_eq!(bad.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&bad.stderr).contains("config.json"));
}
