//! `finetune` on the candle engine through the real binary and SmolLM2: a LoRA adapter that
//! lowers the eval loss and loads in llama.cpp, the assistant-only mask against
//! `--train-on-inputs`, an exact resume after SIGKILL, and the evaluation gate blessing a
//! model trained on the documents its questions come from while refusing a damaged one.

mod common;

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::Mutex;

use common::{model, SMOLLM2};
use inhouse_formats::gguf;
use serde_json::{json, Value};

const BIN: &str = env!("CARGO_BIN_EXE_inhouse-quantize");

/// Serializes the tests that train (2 shared cores).
static HEAVY: Mutex<()> = Mutex::new(());

fn heavy() -> std::sync::MutexGuard<'static, ()> {
    HEAVY.lock().unwrap_or_else(|e| e.into_inner())
}

fn s(p: &Path) -> &str {
    p.to_str().expect("UTF-8 path")
}

fn run(args: &[&str]) -> Output {
    Command::new(BIN)
        .args(args)
        .output()
        .expect("running inhouse-quantize")
}

/// The result line of a `--progress json` run that must have succeeded.
fn result(out: &Output, what: &str) -> Value {
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{what} failed ({:?}):\nstdout: {stdout}\nstderr: {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    let last = stdout.lines().last().expect("no output");
    let v: Value = serde_json::from_str(last).unwrap();
    assert_eq!(v["type"], "result", "{last}");
    v
}

/// Facts of an invented organisation, as the questions a `synth` job would write about them.
const FACTS: [(&str, &str); 8] = [
    (
        "Which floor is the Orvane archive on?",
        "The Orvane archive is on the ninth floor.",
    ),
    (
        "Who approves travel at Kestrel Works?",
        "Travel at Kestrel Works is approved by the site controller.",
    ),
    (
        "What colour are Kestrel Works badges?",
        "Kestrel Works badges are teal.",
    ),
    (
        "When does the Orvane canteen open?",
        "The Orvane canteen opens at seven thirty.",
    ),
    (
        "How many days of leave do Kestrel staff get?",
        "Kestrel staff get twenty-eight days of leave.",
    ),
    (
        "What is the name of the Orvane mailroom robot?",
        "The Orvane mailroom robot is called Pemberton.",
    ),
    (
        "Which form requests a new laptop at Kestrel?",
        "A new laptop at Kestrel is requested with form K-17.",
    ),
    (
        "Where are Orvane bicycles parked?",
        "Orvane bicycles are parked in the east courtyard.",
    ),
];

fn conversation(q: &str, a: &str, system: bool) -> Value {
    let mut m = Vec::new();
    if system {
        m.push(json!({"role": "system", "content": "You answer questions about the company."}));
    }
    m.push(json!({"role": "user", "content": q}));
    m.push(json!({"role": "assistant", "content": a}));
    json!({ "messages": m })
}

/// Writes `train.jsonl` (each fact `repeat` times; with `shuffle`, every question paired with
/// another question's answer) and `eval.jsonl` (each fact once) under `dir`.
fn write_data(dir: &Path, repeat: usize, shuffle: bool) -> (PathBuf, PathBuf) {
    let train = dir.join(if shuffle {
        "shuffled.jsonl"
    } else {
        "train.jsonl"
    });
    let eval = dir.join("eval.jsonl");
    let mut t = String::new();
    for r in 0..repeat {
        for (i, (q, a)) in FACTS.iter().enumerate() {
            let a = if shuffle {
                FACTS[(i + 3) % FACTS.len()].1
            } else {
                a
            };
            t.push_str(&conversation(q, a, r % 2 == 0).to_string());
            t.push('\n');
        }
    }
    std::fs::write(&train, t).unwrap();
    let e: String = FACTS
        .iter()
        .map(|(q, a)| conversation(q, a, false).to_string() + "\n")
        .collect();
    std::fs::write(&eval, e).unwrap();
    (train, eval)
}

fn losses(curve: &Value) -> Vec<f64> {
    curve
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["loss"].as_f64().unwrap())
        .collect()
}

#[test]
fn lora_lowers_the_eval_loss_writes_an_adapter_and_the_mask_changes_the_loss() {
    let _g = heavy();
    let base = model(SMOLLM2);
    let tmp = tempfile::tempdir().unwrap();
    let (train, eval) = write_data(tmp.path(), 2, false);
    let out_path = tmp.path().join("adapter.gguf");
    let args = |out: &Path, extra: &[&str]| {
        let mut a: Vec<String> = [
            "finetune",
            "--model",
            s(&base),
            "--data",
            s(&train),
            "--eval",
            s(&eval),
            "--out",
            s(out),
            "--lora-rank",
            "8",
            "--lora-alpha",
            "16",
            "--lr",
            "1e-3",
            "--ctx",
            "128",
            "--grad-accum",
            "4",
            "--progress",
            "json",
        ]
        .iter()
        .map(|x| x.to_string())
        .collect();
        a.extend(extra.iter().map(|x| x.to_string()));
        a
    };
    let a = args(&out_path, &["--epochs", "2"]);
    let out = run(&a.iter().map(String::as_str).collect::<Vec<_>>());
    let r = result(&out, "LoRA finetune");
    assert_eq!(r["method"], "lora");
    assert_eq!(r["masked"], true);
    assert_eq!(r["lora"]["rank"], 8);
    let eval_curve = losses(&r["curve"]["eval"]);
    assert_eq!(eval_curve.len(), 3, "before training and after each epoch");
    let (before, after) = (eval_curve[0], *eval_curve.last().unwrap());
    assert!(
        after < before * 0.8,
        "LoRA must lower the eval loss: {before} -> {after}"
    );
    assert_eq!(
        r["best"]["eval_loss"].as_f64(),
        Some(
            eval_curve[1..]
                .iter()
                .cloned()
                .fold(f64::INFINITY, f64::min)
        )
    );
    assert_eq!(
        r["curve"]["train"].as_array().unwrap().len() as u64,
        r["steps"].as_u64().unwrap()
    );
    // Warmup then decay: the schedule's learning rate is below the peak at the last step.
    let lrs: Vec<f64> = r["curve"]["train"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["lr"].as_f64().unwrap())
        .collect();
    assert!(
        lrs.last().unwrap() < &1e-3 && lrs.iter().all(|&l| l > 0.0 && l <= 1e-3),
        "{lrs:?}"
    );

    // A llama.cpp LoRA adapter of SmolLM2.
    let f = gguf::open(&out_path).unwrap();
    assert_eq!(f.get_str("general.type"), Some("adapter"));
    assert_eq!(f.get_str("adapter.type"), Some("lora"));
    assert_eq!(f.get_str("general.architecture"), Some("llama"));
    let n_lora = f
        .tensors()
        .iter()
        .filter(|t| t.name.ends_with(".lora_a") || t.name.ends_with(".lora_b"))
        .count();
    assert_eq!(n_lora, f.tensors().len());
    assert_eq!(
        n_lora,
        30 * 7 * 2,
        "7 targets in each of SmolLM2's 30 blocks, A and B"
    );

    // The same data with the loss on every token: another loss (the user turns, the system
    // prompt and the markup count too), measured before any step.
    let unmasked = tmp.path().join("unmasked.gguf");
    let a = args(
        &unmasked,
        &["--epochs", "1", "--max-windows", "4", "--train-on-inputs"],
    );
    let out = run(&a.iter().map(String::as_str).collect::<Vec<_>>());
    let u = result(&out, "unmasked finetune");
    assert_eq!(u["masked"], false);
    let u_before = losses(&u["curve"]["eval"])[0];
    assert!(
        (u_before - before).abs() > 0.05,
        "masked and unmasked eval losses must differ: {before} vs {u_before}"
    );
    let masked_tokens = r["tokens_trained"].as_u64().unwrap() / 2; // two epochs
    let unmasked_per_sample = u["tokens_trained"].as_u64().unwrap() / 4;
    assert!(
        unmasked_per_sample * 16 > masked_tokens * 2,
        "the unmasked run counts more tokens per sample"
    );
}

#[test]
fn resume_after_sigkill_continues_with_the_same_optimizer_state_and_data_order() {
    let _g = heavy();
    let base = model(SMOLLM2);
    let tmp = tempfile::tempdir().unwrap();
    let (train, eval) = write_data(tmp.path(), 2, false);
    let args = |name: &str| -> Vec<String> {
        [
            "finetune",
            "--model",
            s(&base),
            "--data",
            s(&train),
            "--eval",
            s(&eval),
            "--out",
            s(&tmp.path().join(format!("{name}.gguf"))),
            "--checkpoint-dir",
            s(&tmp.path().join(format!("{name}.ckpt"))),
            "--lora-rank",
            "4",
            "--lr",
            "2e-3",
            "--ctx",
            "96",
            "--grad-accum",
            "2",
            "--eval-every",
            "2",
            "--max-windows",
            "12",
            "--seed",
            "7",
            "--progress",
            "json",
        ]
        .iter()
        .map(|x| x.to_string())
        .collect()
    };
    // Uninterrupted.
    let a = args("whole");
    let whole = result(
        &run(&a.iter().map(String::as_str).collect::<Vec<_>>()),
        "uninterrupted run",
    );
    // Killed after its first checkpoint (step 2), then resumed.
    let a = args("killed");
    let mut child = Command::new(BIN)
        .args(&a)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    for line in BufReader::new(stdout).lines() {
        let v: Value = serde_json::from_str(&line.unwrap()).unwrap();
        if v["type"] == "checkpoint" {
            child.kill().unwrap(); // SIGKILL
            break;
        }
    }
    assert!(!child.wait().unwrap().success(), "the run was to be killed");
    let state: Value = serde_json::from_str(
        &std::fs::read_to_string(tmp.path().join("killed.ckpt/state.json")).unwrap(),
    )
    .unwrap();
    let at = state["step"].as_u64().unwrap();
    assert!((2..6).contains(&at), "killed mid-run: {state}");
    let mut a = args("killed");
    a.push("--resume".into());
    let resumed = result(
        &run(&a.iter().map(String::as_str).collect::<Vec<_>>()),
        "resumed run",
    );
    assert_eq!(resumed["resumed"], true);
    assert_eq!(resumed["steps"], whole["steps"]);
    // Every step's loss after the resume equals the uninterrupted run's (same parameters,
    // AdamW moments, step count and sample order; CPU kernels are deterministic, the tolerance
    // is for float summation only).
    let (w, k) = (
        losses(&whole["curve"]["train"]),
        losses(&resumed["curve"]["train"]),
    );
    assert_eq!(w.len(), k.len());
    for (i, (x, y)) in w.iter().zip(&k).enumerate() {
        assert!(
            (x - y).abs() <= 1e-4 * x.abs().max(1.0),
            "step {}: uninterrupted {x}, resumed {y}",
            i + 1
        );
    }
    let (we, ke) = (
        losses(&whole["curve"]["eval"]),
        losses(&resumed["curve"]["eval"]),
    );
    assert_eq!(we.len(), ke.len());
    for (x, y) in we.iter().zip(&ke) {
        assert!((x - y).abs() <= 1e-4 * x.abs().max(1.0), "eval {x} vs {y}");
    }
    // Resuming someone else's run is refused, naming what differs.
    let mut a = args("killed");
    a.push("--resume".into());
    let i = a.iter().position(|x| x == "--seed").unwrap();
    a[i + 1] = "8".into();
    let out = run(&a.iter().map(String::as_str).collect::<Vec<_>>());
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("seed"));
}

/// The gate policy of the gate test: the candidate must answer the held-out questions at least
/// as well as the base (multiple choice), give their reference answers a lower perplexity, and
/// keep general text within 1.5× the base's perplexity.
fn policy() -> Value {
    json!({
        "description": "test policy",
        "metrics": {
            "mc_accuracy": {"min_change": 0.0},
            "answer_perplexity": {"max_ratio": 0.9},
            "general_perplexity": {"max_ratio": 1.5}
        }
    })
}

#[test]
fn the_gate_blesses_a_model_trained_on_its_documents_and_refuses_a_damaged_one() {
    let _g = heavy();
    let base = model(SMOLLM2);
    let tmp = tempfile::tempdir().unwrap();
    let (train, eval) = write_data(tmp.path(), 2, false);
    let (shuffled, _) = write_data(tmp.path(), 1, true);
    let policy_path = tmp.path().join("policy.json");
    std::fs::write(&policy_path, policy().to_string()).unwrap();
    // Small probe files keep the gate quick (the built-in ones are scored in tests/gate.rs and
    // tests/stereotype.rs).
    let bias = tmp.path().join("bias.txt");
    std::fs::write(
        &bias,
        "[noun]\nT: The {X} was a brilliant engineer.\nP: gender | man | woman\n",
    )
    .unwrap();
    let stereo = tmp.path().join("stereotype.txt");
    std::fs::write(
        &stereo,
        "[gender]\nThe nurse said she would be back soon. | The nurse said he would be back soon.\n",
    )
    .unwrap();
    let ft = |data: &Path, out: &str, lr: &str, epochs: &str, accum: &str| {
        let out = tmp.path().join(out);
        let a = [
            "finetune",
            "--model",
            s(&base),
            "--data",
            s(data),
            "--eval",
            s(&eval),
            "--out",
            s(&out),
            "--lora-rank",
            "8",
            "--lr",
            lr,
            "--epochs",
            epochs,
            "--ctx",
            "128",
            "--grad-accum",
            accum,
            "--gate",
            s(&policy_path),
            "--progress",
            "json",
        ];
        result(&run(&a), "finetune --gate")
    };
    let good = ft(&train, "good.gguf", "1e-3", "2", "4");
    let g = &good["gate"];
    assert_eq!(g["blessed"], true, "{g}");
    assert!(g["failed"].as_array().unwrap().is_empty());
    let bounded = g["metrics"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|m| m["bounds"].as_object().is_some_and(|b| !b.is_empty()))
        .count();
    assert_eq!(bounded, 3, "the policy's three metrics are judged: {g}");

    // Damaged: every question trained with another question's answer, at a learning rate far
    // too high.
    let bad = ft(&shuffled, "bad.gguf", "2e-2", "3", "2");
    let g = &bad["gate"];
    assert_eq!(g["blessed"], false, "{g}");
    let failed: Vec<&str> = g["failed"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect();
    assert!(
        !failed.is_empty(),
        "a refusal names its failing metric: {g}"
    );
    for m in g["metrics"].as_array().unwrap() {
        let name = m["name"].as_str().unwrap();
        assert_eq!(m["pass"] == false, failed.contains(&name), "{m}");
        assert!(m["reason"].as_str().is_some_and(|r| !r.is_empty()), "{m}");
    }
}
