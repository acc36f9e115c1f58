//! `eval --gate` through the real binary on SmolLM2: the same model as baseline and candidate is
//! refused by a policy asking for an improvement in `mc_accuracy` (named as the failing metric)
//! and blessed by a lenient one, with identical scores on both sides (also with an all-zero LoRA
//! adapter on the candidate); a random adapter applied with `--candidate-adapter` raises the
//! perplexities and is refused on them; bad policies, bad adapters and bad questions exit with
//! status 2 before any model runs.
//!
//! The questions are a six-record fixture (tests/fixtures/gate_questions.jsonl), the bias and
//! stereotype probes one pair each, so a gate run takes seconds. The models live in
//! `$INHOUSE_MODELS_DIR` (default `~/.cache/inhouse/models`); a missing model fails the test.

mod common;

use common::{model, SMOLLM2};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::Mutex;

use inhouse_formats::gguf;
use inhouse_formats::gguf_write::{random_lora_for, write_lora_adapter};
use serde_json::Value;

const BIN: &str = env!("CARGO_BIN_EXE_inhouse-quantize");

const METRICS: [&str; 6] = [
    "mc_accuracy",
    "answer_perplexity",
    "general_perplexity",
    "bias_gap",
    "stereotype_score",
    "stereotype_deviation",
];

static HEAVY: Mutex<()> = Mutex::new(());

fn heavy() -> std::sync::MutexGuard<'static, ()> {
    HEAVY.lock().unwrap_or_else(|e| e.into_inner())
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

fn s(p: &Path) -> &str {
    p.to_str().expect("UTF-8 path")
}

fn questions() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/gate_questions.jsonl")
}

/// A policy file and small probe files in `dir`.
fn write_inputs(dir: &Path, policy: &str) -> (PathBuf, PathBuf, PathBuf) {
    let p = dir.join("policy.json");
    std::fs::write(&p, policy).unwrap();
    let bias = dir.join("bias.txt");
    std::fs::write(
        &bias,
        "[noun]\nT: The {X} was a brilliant engineer.\nP: gender | man | woman\n",
    )
    .unwrap();
    let st = dir.join("stereotype.txt");
    std::fs::write(
        &st,
        "[gender]\nThe nurse said she would be back soon. | The nurse said he would be back soon.\n",
    )
    .unwrap();
    (p, bias, st)
}

/// Runs `eval --gate` with the small probes, one thread and `--progress json` (and the fixture's
/// questions unless `extra` names others).
fn gate(dir: &Path, policy: &str, extra: &[&str]) -> Output {
    let (p, bias, st) = write_inputs(dir, policy);
    let q = questions();
    let mut args = vec!["eval", "--gate", s(&p)];
    if !extra.contains(&"--questions") {
        args.extend(["--questions", s(&q)]);
    }
    args.extend([
        "--bias-pairs",
        s(&bias),
        "--stereotype-pairs",
        s(&st),
        "--progress",
        "json",
        // One thread: ggml's threads spin while they wait, which is slow on 2 busy cores.
        "--threads",
        "1",
    ]);
    args.extend(extra);
    Command::new(BIN)
        .args(&args)
        .output()
        .expect("running inhouse-quantize")
}

/// The result line of a successful run.
fn result(out: &Output) -> Value {
    assert!(
        out.status.success(),
        "eval --gate failed ({:?}):\nstdout: {}\nstderr: {}",
        out.status,
        text(&out.stdout),
        text(&out.stderr)
    );
    let stdout = text(&out.stdout);
    let last = stdout.lines().last().expect("a result line");
    let v: Value = serde_json::from_str(last).unwrap_or_else(|e| panic!("{last:?}: {e}"));
    assert_eq!(v["type"], "result", "{stdout}");
    v
}

fn metric<'a>(r: &'a Value, name: &str) -> &'a Value {
    r["metrics"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["name"] == name)
        .unwrap_or_else(|| panic!("no {name} in {r}"))
}

fn num(v: &Value, k: &str) -> f64 {
    v[k].as_f64()
        .unwrap_or_else(|| panic!("no number {k}: {v}"))
}

/// Every metric measured on both sides, with sane values.
fn check_metrics(r: &Value) {
    for name in METRICS {
        let m = metric(r, name);
        for side in ["baseline", "candidate"] {
            let x = num(m, side);
            assert!(x.is_finite() && x >= 0.0, "{name} {side}: {m}");
        }
        assert!(m["reason"].as_str().is_some_and(|s| !s.is_empty()), "{m}");
    }
    let acc = num(metric(r, "mc_accuracy"), "candidate");
    assert!((0.0..=1.0).contains(&acc), "{acc}");
    assert!(num(metric(r, "answer_perplexity"), "candidate") > 1.0);
    assert!(num(metric(r, "general_perplexity"), "candidate") > 1.0);
    let d = &r["details"]["candidate"];
    assert_eq!(d["questions"], 6);
    assert_eq!(d["outcomes"].as_array().unwrap().len(), 6);
    assert!(d["answer_tokens"].as_u64().unwrap() > 30, "{d}");
    assert!(d["general_tokens"].as_u64().unwrap() > 300, "{d}");
}

/// The LoRA targets of the test adapters.
const TARGETS: [&str; 4] = [
    "attn_q.weight",
    "attn_v.weight",
    "attn_output.weight",
    "ffn_down.weight",
];

/// A rank-4 adapter for SmolLM2 in `dir`: all zeros (B·A = 0, the model unchanged) when
/// `scale` is 0, else uniform in ±scale (which visibly damages it).
fn adapter(dir: &Path, smol: &Path, scale: f32) -> PathBuf {
    let base = gguf::open(smol).unwrap();
    let mut pairs = random_lora_for(&base, &TARGETS, 4, scale, 7);
    if scale == 0.0 {
        for p in &mut pairs {
            p.a.1.iter_mut().for_each(|x| *x = 0.0);
            p.b.1.iter_mut().for_each(|x| *x = 0.0);
        }
    }
    let path = dir.join(format!("lora-{scale}.gguf"));
    write_lora_adapter(&path, "llama", 4.0, &pairs).unwrap();
    path
}

#[test]
fn the_same_model_is_refused_by_a_strict_policy_and_blessed_by_a_lenient_one() {
    let smol = model(SMOLLM2);
    let tmp = tempfile::tempdir().unwrap();
    let out_file = tmp.path().join("result.json");
    let _lock = heavy();
    let t0 = std::time::Instant::now();
    let strict = r#"{"metrics": {"mc_accuracy": {"min_change": 0.01},
                                  "general_perplexity": {"max_ratio": 1.0}}}"#;
    let out = gate(
        tmp.path(),
        strict,
        &[
            "--baseline",
            s(&smol),
            "--candidate",
            s(&smol),
            "--out",
            s(&out_file),
        ],
    );
    let r = result(&out);
    eprintln!("strict gate run: {:.1} s", t0.elapsed().as_secs_f64());
    check_metrics(&r);
    assert_eq!(r["blessed"], false, "{r}");
    assert_eq!(r["failed"], serde_json::json!(["mc_accuracy"]), "{r}");
    let acc = metric(&r, "mc_accuracy");
    assert_eq!(acc["pass"], false);
    assert_eq!(num(acc, "change"), 0.0);
    assert!(
        acc["reason"].as_str().unwrap().contains("< min_change"),
        "{acc}"
    );
    assert_eq!(acc["bounds"], serde_json::json!({"min_change": 0.01}));
    // The same model scores the same on both sides, metric by metric.
    for name in METRICS {
        let m = metric(&r, name);
        assert_eq!(num(m, "baseline"), num(m, "candidate"), "{name}: {m}");
    }
    assert_eq!(metric(&r, "general_perplexity")["pass"], true);
    assert_eq!(
        metric(&r, "bias_gap")["reason"],
        "not bounded by the policy"
    );
    assert_eq!(r["baseline"], s(&smol));
    assert_eq!(r["candidate"], s(&smol));
    assert_eq!(r["candidate_adapter"], Value::Null);
    assert_eq!(r["general"], "built-in");
    assert_eq!(r["choices"], 4);
    assert_eq!(
        r["policy"]["metrics"]["mc_accuracy"]["min_change"],
        serde_json::json!(0.01)
    );
    let logs: Vec<String> = text(&out.stdout)
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter(|v| v["type"] == "log")
        .map(|v| v["message"].as_str().unwrap_or_default().to_string())
        .collect();
    assert!(logs.iter().any(|l| l == "refused: mc_accuracy"), "{logs:?}");
    // --out holds the result (less the protocol's "type").
    let mut written: Value =
        serde_json::from_str(&std::fs::read_to_string(&out_file).unwrap()).unwrap();
    written
        .as_object_mut()
        .unwrap()
        .insert("type".into(), "result".into());
    assert_eq!(written["metrics"], r["metrics"]);
    assert_eq!(written["blessed"], r["blessed"]);

    // A lenient policy blesses the same model, here with an all-zero LoRA adapter on the
    // candidate, which must change no score.
    let zero = adapter(tmp.path(), &smol, 0.0);
    let lenient = r#"{"metrics": {"mc_accuracy": {"min": 0.0, "min_change": 0.0},
                                   "answer_perplexity": {"max_change": 0.0},
                                   "general_perplexity": {"max_ratio": 1.25},
                                   "bias_gap": {"max_abs_change": 0.0},
                                   "stereotype_score": {"max_abs_change": 0.1},
                                   "stereotype_deviation": {"max_change": 0.0}}}"#;
    let t1 = std::time::Instant::now();
    let r = result(&gate(
        tmp.path(),
        lenient,
        &[
            "--baseline",
            s(&smol),
            "--candidate",
            s(&smol),
            "--candidate-adapter",
            s(&zero),
        ],
    ));
    eprintln!("lenient gate run: {:.1} s", t1.elapsed().as_secs_f64());
    assert_eq!(r["blessed"], true, "{r}");
    assert_eq!(r["failed"], serde_json::json!([]));
    assert_eq!(r["candidate_adapter"], s(&zero));
    for name in METRICS {
        let m = metric(&r, name);
        assert_eq!(m["pass"], true, "{name}");
        assert_eq!(num(m, "baseline"), num(m, "candidate"), "{name}: {m}");
    }
}

#[test]
fn a_damaging_candidate_adapter_is_refused() {
    let smol = model(SMOLLM2);
    let tmp = tempfile::tempdir().unwrap();
    let zero = adapter(tmp.path(), &smol, 0.0);
    let noise = adapter(tmp.path(), &smol, 0.2);
    let policy = r#"{"metrics": {"general_perplexity": {"max_ratio": 1.1},
                                 "answer_perplexity": {"max_ratio": 1.1}}}"#;
    let _lock = heavy();
    let t0 = std::time::Instant::now();
    let r = result(&gate(
        tmp.path(),
        policy,
        &[
            "--baseline",
            s(&smol),
            "--baseline-adapter",
            s(&zero),
            "--candidate",
            s(&smol),
            "--candidate-adapter",
            s(&noise),
        ],
    ));
    eprintln!("adapter gate run: {:.1} s", t0.elapsed().as_secs_f64());
    check_metrics(&r);
    assert_eq!(r["baseline_adapter"], s(&zero));
    assert_eq!(r["candidate_adapter"], s(&noise));
    assert_eq!(r["details"]["candidate"]["adapter"], s(&noise));
    assert_eq!(r["blessed"], false, "{r}");
    let failed: Vec<&str> = r["failed"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect();
    assert!(failed.contains(&"general_perplexity"), "{r}");
    let g = metric(&r, "general_perplexity");
    assert!(num(g, "ratio") > 1.1, "{g}");
    assert!(g["reason"].as_str().unwrap().contains("> max_ratio"), "{g}");
}

/// Exit status and stderr of a run expected to fail.
fn refused(out: &Output) -> (i32, String) {
    assert!(
        !out.status.success(),
        "expected a failure:\nstdout: {}",
        text(&out.stdout)
    );
    (out.status.code().unwrap_or(-1), text(&out.stderr))
}

#[test]
fn bad_policies_and_inputs_exit_2_before_any_model_runs() {
    let smol = model(SMOLLM2);
    let tmp = tempfile::tempdir().unwrap();
    let pair = ["--baseline", s(&smol), "--candidate", s(&smol)];
    let t0 = std::time::Instant::now();
    for (policy, why) in [
        (
            r#"{"metrics": {"accuracy": {"min": 0.5}, "mc_accuracy": {"min": 0.5}}}"#,
            "unknown metric(s) \"accuracy\"",
        ),
        (
            r#"{"metrics": {"mc_accuracy": {"minimum": 0.5}}}"#,
            "mc_accuracy: unknown bound(s) \"minimum\"",
        ),
        (r#"{"metrics": {}}"#, "bounds no metric"),
        ("{not json", "not JSON"),
        (
            r#"{"metrics": {"mc_accuracy": {"min": 0.9, "max": 0.1}}}"#,
            "min 0.9 is above max 0.1",
        ),
    ] {
        let (code, err) = refused(&gate(tmp.path(), policy, &pair));
        assert_eq!(code, 2, "{policy}: {err}");
        assert!(err.contains(why), "{policy}: {err}");
        assert!(err.contains("gate policy"), "{err}");
    }
    let ok = r#"{"metrics": {"mc_accuracy": {"min": 0.0}}}"#;
    // A whole model is not an adapter.
    let (code, err) = refused(&gate(
        tmp.path(),
        ok,
        &[
            "--baseline",
            s(&smol),
            "--candidate",
            s(&smol),
            "--candidate-adapter",
            s(&smol),
        ],
    ));
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("general.type"), "{err}");
    // Plain-text records are not questions.
    let texts = tmp.path().join("texts.jsonl");
    std::fs::write(&texts, "{\"text\": \"a\"}\n{\"text\": \"b\"}\n").unwrap();
    let mut args = pair.to_vec();
    args.extend(["--questions", s(&texts)]);
    let (code, err) = refused(&gate(tmp.path(), ok, &args));
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("record 1"), "{err}");
    // A missing candidate.
    let missing = tmp.path().join("missing.gguf");
    let (code, err) = refused(&gate(
        tmp.path(),
        ok,
        &["--baseline", s(&smol), "--candidate", s(&missing)],
    ));
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("missing.gguf"), "{err}");
    // Usage errors: no candidate; --model with --gate; a gate option without --gate.
    let (code, _) = refused(&gate(tmp.path(), ok, &["--baseline", s(&smol)]));
    assert_eq!(code, 2);
    let (code, _) = refused(&gate(
        tmp.path(),
        ok,
        &[&pair[..], &["--model", s(&smol)]].concat(),
    ));
    assert_eq!(code, 2);
    let out = Command::new(BIN)
        .args(["eval", "--model", s(&smol), "--data", s(&texts)])
        .args(["--candidate", s(&smol)])
        .output()
        .unwrap();
    assert_eq!(refused(&out).0, 2);
    assert!(
        t0.elapsed().as_secs() < 60,
        "refusals must come before any model runs"
    );
}
