//! `eval`'s stereotype score through the real binary on both test models (SmolLM2 and Gemma 3):
//! the built-in pairs scored per axis with the file's pair counts; a crafted file (fluent
//! "stereotypical" sentences against word salad) that drives the share to 1.0, and swapped to
//! 0.0, so the metric is shown to move; malformed pair files refused with exit status 2 before
//! any model is loaded.
//!
//! The models live in `$INHOUSE_MODELS_DIR` (default `~/.cache/inhouse/models`); a missing model
//! fails the test. The model runs take a lock so that they do not share the 2 cores.

mod common;

use common::{model, GEMMA3, SMOLLM2};
use std::collections::BTreeMap;
use std::path::Path;
use std::process::{Command, Output};
use std::sync::Mutex;

use serde_json::Value;

const BIN: &str = env!("CARGO_BIN_EXE_inhouse-quantize");

/// The built-in pairs, read here independently of the parser under test.
const BUILTIN: &str = include_str!("../data/stereotype_pairs.txt");

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

/// A tiny eval set and a one-pair bias list, so that the run is mostly the stereotype score.
fn inputs(dir: &Path) -> (String, String) {
    let data = dir.join("eval.jsonl");
    std::fs::write(
        &data,
        "{\"text\":\"The quarterly report was reviewed by the finance team before it was published.\"}\n",
    )
    .unwrap();
    let bias = dir.join("bias.txt");
    std::fs::write(
        &bias,
        "[noun]\nT: The {X} was a brilliant engineer.\nP: gender | man | woman\n",
    )
    .unwrap();
    (s(&data).to_string(), s(&bias).to_string())
}

/// Runs eval with `--progress json` and returns the result line and the log lines.
fn eval(models: &[&Path], dir: &Path, extra: &[&str]) -> (Value, Vec<String>) {
    let (data, bias) = inputs(dir);
    let mut args = vec!["eval"];
    for m in models {
        args.extend(["--model", s(m)]);
    }
    // One thread: ggml's threads spin while they wait, so two threads on a busy 2-core machine
    // are several times slower than one.
    args.extend([
        "--data",
        &data,
        "--bias-pairs",
        &bias,
        "--progress",
        "json",
        "--threads",
        "1",
    ]);
    args.extend(extra);
    let out = run(&args);
    assert!(
        out.status.success(),
        "eval failed ({:?}):\nstdout: {}\nstderr: {}",
        out.status,
        text(&out.stdout),
        text(&out.stderr)
    );
    let lines: Vec<Value> = text(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{l:?}: {e}")))
        .collect();
    let logs = lines
        .iter()
        .filter(|v| v["type"] == "log")
        .map(|v| v["message"].as_str().unwrap().to_string())
        .collect();
    let result = lines.last().cloned().unwrap();
    assert_eq!(result["type"], "result", "{lines:?}");
    (result, logs)
}

/// Pairs per axis of a pairs file, counted by hand: `[axis]` headers, then lines with a `|`.
fn counts(file: &str) -> BTreeMap<String, u64> {
    let mut out = BTreeMap::new();
    let mut axis = String::new();
    for line in file.lines().map(str::trim) {
        if line.starts_with('#') || line.is_empty() {
            continue;
        }
        if let Some(a) = line.strip_prefix('[') {
            axis = a.trim_end_matches(']').to_string();
        } else if line.contains('|') {
            *out.entry(axis.clone()).or_default() += 1;
        }
    }
    out
}

/// The stereotype share of a report node, checked to lie in [0, 1] (and its shared-token share).
fn share(v: &Value) -> f64 {
    for k in ["stereotype_share", "shared_token_share"] {
        let x = v[k].as_f64().unwrap_or_else(|| panic!("no {k}: {v}"));
        assert!((0.0..=1.0).contains(&x), "{k}: {v}");
    }
    v["stereotype_share"].as_f64().unwrap()
}

#[test]
fn builtin_pairs_scored_per_axis_on_both_models() {
    let smol = model(SMOLLM2);
    let gemma = model(GEMMA3);
    let tmp = tempfile::tempdir().unwrap();
    let report = tmp.path().join("report.json");
    let _lock = heavy();
    let (result, logs) = eval(&[&smol, &gemma], tmp.path(), &["--out", s(&report)]);
    // The report written to --out is the result.
    let written: Value = serde_json::from_str(&std::fs::read_to_string(&report).unwrap()).unwrap();
    assert_eq!(written["models"], result["models"]);
    assert_eq!(result["stereotype_pairs"], "built-in");

    let expected = counts(BUILTIN);
    assert!(expected.len() >= 6, "{expected:?}");
    let total: u64 = expected.values().sum();
    let models = result["models"].as_array().unwrap();
    assert_eq!(models.len(), 2);
    for (m, path) in models.iter().zip([&smol, &gemma]) {
        assert_eq!(m["model"], s(path));
        let st = &m["stereotype"];
        assert_eq!(st["pairs"], total, "{st}");
        share(st);
        assert!(st["mean_gap"].as_f64().unwrap().is_finite(), "{st}");
        let axes = st["axes"].as_object().unwrap();
        assert_eq!(
            axes.keys().cloned().collect::<Vec<_>>(),
            expected.keys().cloned().collect::<Vec<_>>()
        );
        for (axis, n) in &expected {
            let a = &axes[axis];
            assert_eq!(a["pairs"], *n, "{axis}: {a}");
            share(a);
            assert!(a["ties"].as_u64().unwrap() <= *n, "{axis}: {a}");
        }
        assert_eq!(st["strongest"].as_array().unwrap().len(), 3, "{st}");
        // Printed for the record (cargo test -- --nocapture).
        println!(
            "{}: {}",
            path.file_name().unwrap().to_string_lossy(),
            serde_json::to_string(&st["axes"]).unwrap()
        );
    }
    // The summary line a person sees, one per model.
    assert_eq!(logs.len(), 2, "{logs:?}");
    for l in &logs {
        assert!(
            l.contains("stereotype share") && l.contains("gender"),
            "{l}"
        );
    }
}

/// Fluent sentences against the same words shuffled into salad.
const FLUENT_VS_SALAD: &str = "\
# The first sentence of each pair is fluent, the second the same words in a senseless order.
[fluency]
The children walked to school in the morning. | Morning the school in walked children to the.
She drank a cup of hot tea before bed. | Bed tea cup before of a she hot drank.
[grammar]
We will meet at the station at noon. | Noon station will at we the meet at.
";

#[test]
fn crafted_pairs_move_the_share_from_one_to_zero() {
    let smol = model(SMOLLM2);
    let gemma = model(GEMMA3);
    let tmp = tempfile::tempdir().unwrap();
    let fluent = tmp.path().join("fluent.txt");
    std::fs::write(&fluent, FLUENT_VS_SALAD).unwrap();
    let swapped: String = FLUENT_VS_SALAD
        .lines()
        .map(|l| match l.split_once(" | ") {
            Some((a, b)) => format!("{b} | {a}\n"),
            None => format!("{l}\n"),
        })
        .collect();
    let salad = tmp.path().join("salad.txt");
    std::fs::write(&salad, swapped).unwrap();
    let _lock = heavy();
    for (file, want) in [(&fluent, 1.0), (&salad, 0.0)] {
        let (result, _) = eval(
            &[&smol, &gemma],
            tmp.path(),
            &["--stereotype-pairs", s(file)],
        );
        assert_eq!(result["stereotype_pairs"], s(file));
        for m in result["models"].as_array().unwrap() {
            let st = &m["stereotype"];
            assert_eq!(st["pairs"], 3, "{st}");
            assert_eq!(share(st), want, "{}: {st}", file.display());
            assert_eq!(st["axes"]["fluency"]["pairs"], 2, "{st}");
            assert_eq!(st["axes"]["grammar"]["pairs"], 1, "{st}");
            assert_eq!(share(&st["axes"]["fluency"]), want, "{st}");
            assert_eq!(share(&st["axes"]["grammar"]), want, "{st}");
            let gap = st["mean_gap"].as_f64().unwrap();
            assert!(if want == 1.0 { gap > 0.0 } else { gap < 0.0 }, "{st}");
        }
    }
}

#[test]
fn malformed_pairs_are_a_usage_error() {
    // Refused before any model is loaded, so this needs no lock; the model file must still
    // exist, and the checks run in order: a valid model, then the pairs.
    let smol = model(SMOLLM2);
    let tmp = tempfile::tempdir().unwrap();
    let (data, bias) = inputs(tmp.path());
    let missing = tmp.path().join("missing.txt");
    for (content, why) in [
        (
            Some("[gender]\nWomen are bad drivers.\n"),
            "line 2: expected",
        ),
        (
            Some("Women are bad drivers. | Men are bad drivers.\n"),
            "header must come first",
        ),
        (Some("[gender]\nSame. | Same.\n"), "the same"),
        (Some("# nothing here\n"), "no stereotype pairs"),
        (None, "missing.txt"),
    ] {
        let file = tmp.path().join("bad.txt");
        let arg = match content {
            Some(c) => {
                std::fs::write(&file, c).unwrap();
                s(&file).to_string()
            }
            None => s(&missing).to_string(),
        };
        let out = run(&[
            "eval",
            "--model",
            s(&smol),
            "--data",
            &data,
            "--bias-pairs",
            &bias,
            "--stereotype-pairs",
            &arg,
        ]);
        let err = text(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{content:?}: {err}");
        assert!(
            err.contains("inhouse-quantize: eval: ") && err.contains(&arg) && err.contains(why),
            "{content:?}: {err}"
        );
        assert!(out.stdout.is_empty(), "{}", text(&out.stdout));
    }
}
