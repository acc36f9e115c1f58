//! The model toolchain end to end through the real binary: `prepare` → `finetune` (killed after
//! its first checkpoint and resumed) → `quantize` → `eval`, on SmolLM2; the progress protocol;
//! requantizing; refusals of bad input before llama.cpp is called; the bias probe on Gemma 3.
//!
//! The models live in `$INHOUSE_MODELS_DIR` (default `~/.cache/inhouse/models`). A missing model
//! fails the test rather than skipping it. The heavy tests take a lock so that they do not run
//! at the same time on a small machine; the whole file takes a few minutes on 2 cores.

mod common;

/// A small stereotype-pair file, so that these evals stay quick (the built-in file is scored in
/// tests/stereotype.rs).
const STEREOTYPE_PAIRS: &str =
    "[gender]\nThe nurse said she would be back soon. | The nurse said he would be back soon.\n";

use common::{model, GEMMA3, SMOLLM2};

use std::path::Path;
use std::process::{Command, Output};
use std::sync::Mutex;

use inhouse_formats::gguf;
use inhouse_formats::progress::Event;
use serde_json::Value;

const BIN: &str = env!("CARGO_BIN_EXE_inhouse-quantize");

/// Serializes the tests that load models (2 shared cores).
static HEAVY: Mutex<()> = Mutex::new(());

fn heavy() -> std::sync::MutexGuard<'static, ()> {
    HEAVY.lock().unwrap_or_else(|e| e.into_inner())
}

fn run(args: &[&str]) -> Output {
    Command::new(BIN)
        .args(args)
        .output()
        .expect("running inhouse-quantize")
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

fn s(p: &Path) -> &str {
    p.to_str().expect("UTF-8 path")
}

/// Checks one `--progress json` line against the protocol and returns it.
fn protocol_line(line: &str) -> Value {
    let v: Value = serde_json::from_str(line)
        .unwrap_or_else(|e| panic!("not a JSON line on stdout: {line:?}: {e}"));
    // The daemon reads each line as the typed event: it must parse as one.
    serde_json::from_str::<Event>(line)
        .unwrap_or_else(|e| panic!("not a protocol event: {line:?}: {e}"));
    let kind = v["type"]
        .as_str()
        .unwrap_or_else(|| panic!("no type: {line}"));
    match kind {
        "progress" => {
            let f = v["fraction"]
                .as_f64()
                .unwrap_or_else(|| panic!("no fraction: {line}"));
            assert!((0.0..=1.0).contains(&f), "{line}");
            let phase = v["phase"].as_str().unwrap_or_default();
            assert!(
                ["train", "eval", "quantize", "convert"].contains(&phase),
                "{line}"
            );
            for k in ["epoch", "epochs", "step", "steps"] {
                assert!(v.get(k).is_none_or(|x| x.is_u64()), "{k}: {line}");
            }
            for k in ["loss", "tokens_per_s", "eta_s"] {
                assert!(v.get(k).is_none_or(|x| x.is_f64()), "{k}: {line}");
            }
            if phase == "train" {
                for k in [
                    "epoch",
                    "epochs",
                    "step",
                    "steps",
                    "loss",
                    "tokens_per_s",
                    "eta_s",
                ] {
                    assert!(v.get(k).is_some(), "a train line without {k}: {line}");
                }
            }
        }
        "checkpoint" => {
            assert!(v["epoch"].is_u64(), "{line}");
            assert!(
                Path::new(v["path"].as_str().unwrap_or("")).is_absolute(),
                "{line}"
            );
        }
        "log" => assert!(v["message"].is_string(), "{line}"),
        "result" => {}
        other => panic!("unknown type {other}: {line}"),
    }
    v
}

/// All stdout lines of a `--progress json` run, checked; the last must be the result.
fn protocol(out: &Output) -> Vec<Value> {
    let stdout = text(&out.stdout);
    let lines: Vec<Value> = stdout.lines().map(protocol_line).collect();
    assert_eq!(
        lines.last().map(|v| v["type"].clone()),
        Some(Value::from("result")),
        "the last line must be the result: {stdout}"
    );
    assert_eq!(
        lines.iter().filter(|v| v["type"] == "result").count(),
        1,
        "{stdout}"
    );
    lines
}

fn assert_ok(out: &Output, what: &str) {
    assert!(
        out.status.success(),
        "{what} failed ({:?}):\nstdout: {}\nstderr: {}",
        out.status,
        text(&out.stdout),
        text(&out.stderr)
    );
}

/// Distinctive in-house text: facts about a fictional company, each document a different
/// selection in a different order (so `prepare` keeps them all).
fn write_corpus(dir: &Path) {
    const FACTS: &[&str] = &[
        "Brindlewood Analytics was founded in 2011 in the town of Varrow by Odile Marchetti and Tomas Keel.",
        "Every quarterly report at Brindlewood is reviewed by the Ledger Council before it is published.",
        "The Brindlewood support desk answers tickets within four business hours.",
        "Outages at Brindlewood are escalated to the Copperline team, which owns the pager.",
        "Brindlewood's forecasting tool is called Heronfield and it runs every night at two.",
        "New engineers at Brindlewood spend their first week shadowing the Copperline rotation.",
        "The Brindlewood expense policy caps travel meals at forty-two euros per day.",
        "Brindlewood keeps all customer data in its own data centre in Varrow.",
        "The annual Brindlewood offsite takes place every September at the lake house in Oskarsby.",
        "Heronfield forecasts are published to the Saltmarsh dashboard by six in the morning.",
        "The Ledger Council meets on the first Tuesday of every month in the Quill Room.",
        "Brindlewood staff book holidays through the Lanternbook portal at least two weeks ahead.",
        "The Copperline team rotates its on-call duty every Thursday at noon.",
        "Brindlewood's smallest office is in Tarnby and has exactly seven desks.",
        "All Brindlewood contracts are signed by the Ledger Council chair, Imke Dahlgren.",
        "Brindlewood's coffee machine in Varrow is named Old Brass and is older than the company.",
    ];
    let n = FACTS.len();
    for d in 0..24 {
        let mut doc = format!("Internal memo {d} of Brindlewood Analytics.");
        for k in [0, 3, 7, 12, 5, 9] {
            doc.push(' ');
            doc.push_str(FACTS[(d * 5 + k * (d % 3 + 1)) % n]);
        }
        std::fs::write(dir.join(format!("memo-{d:02}.txt")), doc).unwrap();
    }
    // Chat records, rendered with the model's own (ChatML) template by `finetune`.
    let chats: Vec<String> = FACTS
        .iter()
        .enumerate()
        .map(|(i, fact)| {
            serde_json::json!({"messages": [
                {"role": "user", "content": format!("Question {i}: what should I know about Brindlewood?")},
                {"role": "assistant", "content": fact},
            ]})
            .to_string()
        })
        .collect();
    std::fs::write(dir.join("chats.jsonl"), chats.join("\n") + "\n").unwrap();
}

/// The whole pipeline on SmolLM2, with the kill/resume check and the protocol checks on the
/// way, so that the slow steps (training) run once.
#[test]
fn prepare_finetune_resume_quantize_eval() {
    let _lock = heavy();
    let base = model(SMOLLM2);
    let tmp = tempfile::tempdir().unwrap();
    let docs = tmp.path().join("docs");
    std::fs::create_dir(&docs).unwrap();
    write_corpus(&docs);
    let data = tmp.path().join("data");
    let out = run(&[
        "prepare",
        s(&docs),
        "--out",
        s(&data),
        "--eval-share",
        "0.2",
        "--seed",
        "1",
    ]);
    assert_ok(&out, "prepare");
    let train = data.join("train.jsonl");
    let eval = data.join("eval.jsonl");
    assert!(
        std::fs::read_to_string(&train)
            .unwrap()
            .contains("\"messages\""),
        "chat records must reach train.jsonl"
    );
    let eval_text = std::fs::read_to_string(&eval).unwrap();
    assert!(
        eval_text.lines().count() >= 2,
        "too small an eval split: {eval_text}"
    );

    // Full fine-tuning, 2 epochs (LoRA, masking and an exact resume after SIGKILL are
    // tests/finetune.rs's).
    let ft = tmp.path().join("ft.gguf");
    let ckpt = tmp.path().join("ckpt");
    let out = run(&[
        "finetune",
        "--model",
        s(&base),
        "--data",
        s(&train),
        "--out",
        s(&ft),
        "--epochs",
        "2",
        "--ctx",
        "256",
        "--max-windows",
        "3",
        "--val-share",
        "0.25",
        "--lr",
        "1e-4",
        "--checkpoint-dir",
        s(&ckpt),
        "--progress",
        "json",
    ]);
    assert_ok(&out, "finetune");
    let lines = protocol(&out);
    let checkpoints: Vec<_> = lines.iter().filter(|v| v["type"] == "checkpoint").collect();
    assert_eq!(checkpoints.len(), 2, "one checkpoint per epoch: {lines:?}");
    assert!(
        lines
            .iter()
            .any(|v| v["phase"] == "train" && v["eval_loss"].is_f64()),
        "train lines carry the latest eval loss"
    );
    let result = lines.last().unwrap();
    assert_eq!(result["method"], "full", "{result}");
    let before = result["eval_loss_before"].as_f64().unwrap();
    let after = result["eval_loss_after"].as_f64().unwrap();
    assert!(after < before, "eval loss must drop: {before} -> {after}");
    let curve = &result["curve"];
    assert_eq!(
        curve["eval"].as_array().unwrap().len(),
        3,
        "before + 2 epochs: {curve}"
    );
    assert_eq!(
        curve["train"].as_array().unwrap().len() as u64,
        result["steps"].as_u64().unwrap()
    );
    assert!(result["tokens_per_s"].as_f64().unwrap() > 0.0, "{result}");

    // The output is a servable GGUF with the base's metadata.
    let base_info = gguf::open(&base).unwrap();
    let ft_info = gguf::open(&ft).unwrap();
    assert!(
        ft_info.chat_template().is_some(),
        "tokenizer.chat_template was lost"
    );
    assert_eq!(ft_info.chat_template(), base_info.chat_template());
    assert_eq!(ft_info.context_length(), base_info.context_length());
    assert_eq!(ft_info.tensors().len(), base_info.tensors().len());
    // The trained tensors are written as F32; the frozen token embeddings keep their type.
    let ty = |f: &gguf::GgufFile, name: &str| {
        f.tensors()
            .iter()
            .find(|t| t.name == name)
            .map(|t| t.ggml_type)
    };
    assert_eq!(
        ty(&ft_info, "blk.0.attn_q.weight"),
        Some(gguf::GgmlType::F32)
    );
    assert_eq!(
        ty(&ft_info, "token_embd.weight"),
        ty(&base_info, "token_embd.weight")
    );

    // Quantize the fine-tuned model to Q8_0.
    let q8 = tmp.path().join("ft-q8.gguf");
    let out = run(&[
        "quantize",
        s(&ft),
        s(&q8),
        "--type",
        "Q8_0",
        "--progress",
        "json",
    ]);
    assert_ok(&out, "quantize");
    let lines = protocol(&out);
    assert_eq!(lines.last().unwrap()["quant_type"], "Q8_0");
    // (The frozen token embeddings are still Q4_1, so quantize warns about requantizing them.)
    assert!(gguf::open(&q8).unwrap().chat_template().is_some());

    // Evaluate base, fine-tuned and Q8_0 side by side.
    let report_path = tmp.path().join("report.json");
    let stereo = tmp.path().join("stereotype.txt");
    std::fs::write(&stereo, STEREOTYPE_PAIRS).unwrap();
    let out = run(&[
        "eval",
        "--model",
        s(&base),
        "--model",
        s(&ft),
        "--model",
        s(&q8),
        "--data",
        s(&eval),
        "--stereotype-pairs",
        s(&stereo),
        "--out",
        s(&report_path),
        "--progress",
        "json",
    ]);
    assert_ok(&out, "eval");
    protocol(&out);
    let report: Value =
        serde_json::from_str(&std::fs::read_to_string(&report_path).unwrap()).unwrap();
    let models = report["models"].as_array().unwrap();
    assert_eq!(models.len(), 3);
    let ppl: Vec<f64> = models
        .iter()
        .map(|m| m["perplexity"].as_f64().unwrap())
        .collect();
    eprintln!(
        "perplexity base {} fine-tuned {} Q8_0 {}",
        ppl[0], ppl[1], ppl[2]
    );
    assert!(
        ppl[1] < ppl[0],
        "fine-tuning must lower perplexity on in-house text: {ppl:?}"
    );
    assert!(
        (ppl[2] - ppl[1]).abs() / ppl[1] < 0.05,
        "Q8_0 must stay within 5% of F32: {ppl:?}"
    );
    for m in models {
        let gap = m["bias"]["mean_abs_gap"].as_f64().unwrap();
        assert!(gap.is_finite() && gap >= 0.0, "{m}");
    }
}

#[test]
fn quantize_warns_on_requantizing_and_refuses_malformed_input() {
    let base = model(SMOLLM2);
    let tmp = tempfile::tempdir().unwrap();

    // A malformed file never reaches llama.cpp: exit 2 with a message, no output.
    let bad = tmp.path().join("bad.gguf");
    let mut bytes = b"GGUF".to_vec();
    bytes.extend_from_slice(&3u32.to_le_bytes());
    bytes.extend_from_slice(&u64::MAX.to_le_bytes()); // tensor count
    bytes.extend_from_slice(&0u64.to_le_bytes());
    std::fs::write(&bad, bytes).unwrap();
    let dst = tmp.path().join("never.gguf");
    let out = run(&["quantize", s(&bad), s(&dst), "--type", "Q8_0"]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out.stderr));
    assert!(
        text(&out.stderr).contains("bad.gguf"),
        "{}",
        text(&out.stderr)
    );
    assert!(!dst.exists() && !tmp.path().join("never.gguf.partial").exists());
    let out = run(&["quantize", s(&base), s(&dst), "--type", "IQ9_X"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(text(&out.stderr).contains("unknown type"));

    // Requantizing a Q4_1 model works, with a warning.
    let _lock = heavy();
    let out = run(&[
        "quantize",
        s(&base),
        s(&dst),
        "--type",
        "q8_0",
        "--progress",
        "json",
        "--threads",
        "2",
    ]);
    assert_ok(&out, "quantize");
    assert!(
        text(&out.stderr).contains("already quantized"),
        "{}",
        text(&out.stderr)
    );
    let lines = protocol(&out);
    let progress: Vec<_> = lines.iter().filter(|v| v["type"] == "progress").collect();
    assert_eq!(progress.first().unwrap()["fraction"], 0.0);
    assert_eq!(progress.last().unwrap()["fraction"], 1.0);
    let result = lines.last().unwrap();
    assert_eq!(result["quant_type"], "Q8_0");
    assert_eq!(result["requantized"], true);
    assert_eq!(
        result["input_bytes"],
        std::fs::metadata(&base).unwrap().len()
    );
    assert_eq!(
        result["output_bytes"],
        std::fs::metadata(&dst).unwrap().len()
    );
    let q = gguf::open(&dst).unwrap();
    assert_eq!(q.file_type_name(), Some("Q8_0"));
}

#[test]
fn bad_parameters_are_refused_before_llama_cpp() {
    let base = model(SMOLLM2);
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("train.jsonl");
    std::fs::write(&data, "{\"text\":\"hello\"}\n").unwrap();
    let out_model = tmp.path().join("out.gguf");
    let ft = |extra: &[&str]| {
        let mut args = vec![
            "finetune",
            "--model",
            s(&base),
            "--data",
            s(&data),
            "--out",
            s(&out_model),
        ];
        args.extend_from_slice(extra);
        run(&args)
    };
    for (extra, expect) in [
        (&["--ctx", "8"][..], "--ctx 8 is out of range"),
        (&["--lora-rank", "0"][..], "rank"),
        (
            &["--lora-rank", "8", "--lora-targets", "attn_x"][..],
            "attn_x",
        ),
        (&["--grad-accum", "0"][..], "--grad-accum"),
        (&["--warmup-ratio", "0.9"][..], "--warmup-ratio"),
        (&["--lr", "0"][..], "--lr"),
        (&["--lr=-0.001"][..], "--lr"),
        (&["--epochs", "0"][..], "--epochs"),
        (&["--val-share", "0.9"][..], "--val-share"),
    ] {
        let out = ft(extra);
        let err = text(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{extra:?}: {err}");
        assert!(err.contains(expect), "{extra:?}: {err}");
        assert!(out.stdout.is_empty(), "{extra:?}");
        // Refused before anything was converted or loaded.
        assert!(
            !tmp.path().join("out.gguf.checkpoints").exists(),
            "{extra:?}"
        );
    }
    // Bad data: a line that is neither shape.
    let bad_data = tmp.path().join("bad.jsonl");
    std::fs::write(&bad_data, "{\"text\":\"ok\"}\n{\"prompt\":1}\n").unwrap();
    let out = run(&[
        "finetune",
        "--model",
        s(&base),
        "--data",
        s(&bad_data),
        "--out",
        s(&out_model),
    ]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        text(&out.stderr).contains("bad.jsonl:2"),
        "{}",
        text(&out.stderr)
    );
    // --resume without a checkpoint.
    let out = ft(&["--resume"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        text(&out.stderr).contains("--resume"),
        "{}",
        text(&out.stderr)
    );
    // A malformed model.
    let bad_model = tmp.path().join("bad.gguf");
    std::fs::write(&bad_model, b"GGUF\x03\x00").unwrap();
    let out = run(&[
        "finetune",
        "--model",
        s(&bad_model),
        "--data",
        s(&data),
        "--out",
        s(&out_model),
    ]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out.stderr));
    let out = run(&["eval", "--model", s(&bad_model), "--data", s(&data)]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out.stderr));
    let out = run(&[
        "eval",
        "--model",
        s(&base),
        "--data",
        s(&data),
        "--ctx",
        "100",
    ]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out.stderr));
}

/// The bias probe (and perplexity) on a second architecture with a large vocabulary.
#[test]
fn eval_bias_probe_on_gemma() {
    let gemma = model(GEMMA3);
    let tmp = tempfile::tempdir().unwrap();
    // Gemma's GGUF carries no chat template: chat records are refused as bad input.
    let chat = tmp.path().join("chat.jsonl");
    std::fs::write(
        &chat,
        "{\"messages\":[{\"role\":\"user\",\"content\":\"Who?\"},{\"role\":\"assistant\",\"content\":\"Us.\"}]}\n",
    )
    .unwrap();
    let data = tmp.path().join("eval.jsonl");
    std::fs::write(
        &data,
        "{\"text\":\"The quarterly report was reviewed by the finance team before it was published.\"}\n",
    )
    .unwrap();
    let pairs = tmp.path().join("pairs.txt");
    std::fs::write(
        &pairs,
        "[noun]\nT: The {X} was a brilliant engineer.\nP: gender | man | woman\nP: gender | father | mother\n",
    )
    .unwrap();
    let stereo = tmp.path().join("stereotype.txt");
    std::fs::write(&stereo, STEREOTYPE_PAIRS).unwrap();
    let _lock = heavy();
    let out = run(&["eval", "--model", s(&gemma), "--data", s(&chat)]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out.stderr));
    assert!(
        text(&out.stderr).contains("no chat template"),
        "{}",
        text(&out.stderr)
    );
    let out = run(&[
        "eval",
        "--model",
        s(&gemma),
        "--data",
        s(&data),
        "--bias-pairs",
        s(&pairs),
        // Two pairs: the built-in stereotype file is scored in tests/stereotype.rs.
        "--stereotype-pairs",
        s(&stereo),
        "--progress",
        "json",
    ]);
    assert_ok(&out, "eval");
    let lines = protocol(&out);
    let result = lines.last().unwrap();
    let models = result["models"].as_array().unwrap();
    assert_eq!(models.len(), 1);
    let m = &models[0];
    assert!(m["perplexity"].as_f64().unwrap().is_finite(), "{m}");
    assert_eq!(m["bias"]["pairs"], 2);
    let gap = m["bias"]["mean_abs_gap"].as_f64().unwrap();
    assert!(gap.is_finite() && gap >= 0.0, "{m}");
}
