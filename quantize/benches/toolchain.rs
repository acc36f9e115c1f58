//! Toolchain benchmark: the in-house model pipeline on SmolLM2, timed and scored.
//!
//! `cargo bench -p inhouse-quantize --bench toolchain` writes a corpus of fictional company memos
//! (deterministic), then runs the real `inhouse-quantize` binary: `prepare` (train/eval split),
//! `finetune` (F32, ctx 256, AdamW), `quantize` of the result to Q8_0 and Q4_K_M, and `eval` of
//! base, fine-tuned, Q8_0 and Q4_K_M side by side on the held-out split. It prints training
//! tokens/s (median of the progress lines), the seconds of each step, the validation loss before
//! and after, each model's perplexity and bias-probe gap, and peak resident memory of the
//! training process. Results and how to rerun them: docs/BENCHMARKS.md, "Toolchain".
//!
//! Environment: `INHOUSE_MODELS_DIR` (test models), `INHOUSE_BENCH_EPOCHS` (default 2),
//! `INHOUSE_BENCH_WINDOWS` (training windows per epoch, default 8), `INHOUSE_BENCH_THREADS`
//! (default 2).

use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

const BIN: &str = env!("CARGO_BIN_EXE_inhouse-quantize");

fn env_num(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn smollm2() -> PathBuf {
    let dir = std::env::var_os("INHOUSE_MODELS_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(std::env::var_os("HOME").expect("HOME")).join(".cache/inhouse/models")
        });
    let p = dir.join("SmolLM2-135M-Instruct.Q4_1.gguf");
    assert!(
        p.is_file(),
        "{} missing: run scripts/fetch-models",
        p.display()
    );
    p
}

/// Memos about a fictional company: each fact appears in several memos, in different company.
fn write_corpus(dir: &Path) {
    let teams = ["Kestrel", "Marlow", "Quarry", "Tamsin", "Orrin", "Vell"];
    let tools = [
        "Heronfield",
        "Saltmarsh",
        "Lanternbook",
        "Copperline",
        "Quillgate",
    ];
    let towns = ["Varrow", "Tarnby", "Oskarsby", "Lindqvist Bay"];
    let mut facts = Vec::new();
    for (i, team) in teams.iter().enumerate() {
        let tool = tools[i % tools.len()];
        let town = towns[i % towns.len()];
        facts.push(format!(
            "The {team} team at Norrfjord Instruments owns {tool} and sits in the {town} office."
        ));
        facts.push(format!(
            "{tool} is restarted by the {team} team every {} at {} o'clock.",
            [
                "Monday",
                "Tuesday",
                "Wednesday",
                "Thursday",
                "Friday",
                "Saturday"
            ][i],
            2 + i
        ));
        facts.push(format!(
            "Questions about {tool} go to the {team} channel, never to the general desk."
        ));
        facts.push(format!("The {town} office of Norrfjord Instruments has {} desks and one meeting room named after {tool}.", 7 + 3 * i));
    }
    for d in 0..48 {
        let mut doc = format!("Norrfjord Instruments internal memo {d}.");
        for k in 0..6 {
            doc.push(' ');
            doc.push_str(&facts[(d * 7 + k * 5) % facts.len()]);
        }
        std::fs::write(dir.join(format!("memo-{d:02}.txt")), doc).expect("corpus");
    }
}

/// Runs the binary under `/usr/bin/time -f %M` (peak resident KiB, last stderr line) when it is
/// installed; returns the JSON lines of stdout, the seconds and the peak memory in MiB.
fn run(args: &[&str]) -> (Vec<Value>, f64, Option<f64>) {
    let timed = Path::new("/usr/bin/time").exists();
    let mut cmd = if timed {
        let mut c = Command::new("/usr/bin/time");
        c.args(["-f", "%M", BIN]);
        c
    } else {
        Command::new(BIN)
    };
    let t = Instant::now();
    let out = cmd.args(args).output().expect("inhouse-quantize");
    let secs = t.elapsed().as_secs_f64();
    let peak = timed
        .then(|| {
            String::from_utf8_lossy(&out.stderr)
                .lines()
                .last()?
                .trim()
                .parse::<f64>()
                .ok()
        })
        .flatten()
        .map(|kib| kib / 1024.0);
    assert!(
        out.status.success(),
        "inhouse-quantize {args:?} failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let lines = String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect();
    (lines, secs, peak)
}

fn result(lines: &[Value]) -> &Value {
    lines
        .iter()
        .rev()
        .find(|v| v["type"] == "result")
        .expect("a result line")
}

fn median(mut v: Vec<f64>) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn main() {
    if !std::env::args().any(|a| a == "--bench") {
        println!(
            "toolchain benchmark: run with `cargo bench -p inhouse-quantize --bench toolchain`"
        );
        return;
    }
    let epochs = env_num("INHOUSE_BENCH_EPOCHS", 2).to_string();
    let windows = env_num("INHOUSE_BENCH_WINDOWS", 8).to_string();
    let threads = env_num("INHOUSE_BENCH_THREADS", 2).to_string();
    let base = smollm2();
    let tmp = tempfile::tempdir().expect("temp dir");
    let p = |name: &str| tmp.path().join(name);
    let s = |p: &Path| p.to_str().expect("UTF-8 path").to_string();
    std::fs::create_dir(p("docs")).expect("docs");
    write_corpus(&p("docs"));

    let (_, prep_secs, _) = run(&[
        "prepare",
        &s(&p("docs")),
        "--out",
        &s(&p("data")),
        "--eval-share",
        "0.2",
        "--seed",
        "7",
    ]);
    let (train, eval) = (p("data").join("train.jsonl"), p("data").join("eval.jsonl"));

    let ft_args = [
        "finetune",
        "--model",
        &s(&base),
        "--data",
        &s(&train),
        "--eval",
        &s(&eval),
        "--out",
        &s(&p("ft.gguf")),
        "--epochs",
        &epochs,
        "--ctx",
        "256",
        "--max-windows",
        &windows,
        "--checkpoint-dir",
        &s(&p("ckpt")),
        "--threads",
        &threads,
        "--progress",
        "json",
    ];
    let (lines, ft_secs, ft_peak) = run(&ft_args);
    let rates: Vec<f64> = lines
        .iter()
        .filter(|v| v["type"] == "progress" && v["phase"] == "train")
        .filter_map(|v| v["tokens_per_s"].as_f64())
        .collect();
    let ft = result(&lines).clone();

    let mut quant_secs = Vec::new();
    for (t, out) in [("Q8_0", "ft-q8_0.gguf"), ("Q4_K_M", "ft-q4_k_m.gguf")] {
        let (_, secs, _) = run(&[
            "quantize",
            &s(&p("ft.gguf")),
            &s(&p(out)),
            "--type",
            t,
            "--threads",
            &threads,
            "--progress",
            "json",
        ]);
        quant_secs.push((t, secs));
    }
    let models = [
        ("base (Q4_1)", s(&base)),
        ("fine-tuned (F32)", s(&p("ft.gguf"))),
        ("fine-tuned Q8_0", s(&p("ft-q8_0.gguf"))),
        ("fine-tuned Q4_K_M", s(&p("ft-q4_k_m.gguf"))),
    ];
    let mut eval_args = vec!["eval".to_string()];
    for (_, m) in &models {
        eval_args.extend(["--model".to_string(), m.clone()]);
    }
    eval_args.extend(
        [
            "--data",
            &s(&eval),
            "--ctx",
            "256",
            "--threads",
            &threads,
            "--progress",
            "json",
        ]
        .map(String::from),
    );
    let eval_refs: Vec<&str> = eval_args.iter().map(String::as_str).collect();
    let (lines, eval_secs, _) = run(&eval_refs);
    let report = result(&lines).clone();

    println!("# inhouse toolchain benchmark");
    println!(
        "base {} | threads {threads} | ctx 256 | epochs {epochs} × {windows} windows",
        base.display()
    );
    println!("\n| step | seconds |\n|---|---|");
    println!("| prepare (48 memos) | {prep_secs:.2} |");
    println!("| finetune | {ft_secs:.1} |");
    for (t, secs) in &quant_secs {
        println!("| quantize to {t} | {secs:.2} |");
    }
    println!("| eval (4 models) | {eval_secs:.1} |");
    println!(
        "\ntraining: median {:.1} tokens/s over {} progress lines; validation loss {} → {}",
        median(rates.clone()),
        rates.len(),
        ft["eval_loss_before"],
        ft["eval_loss_after"],
    );
    println!("\n| model | perplexity (held-out memos) | bias gap (nats) |\n|---|---|---|");
    let entries = report["models"].as_array().cloned().unwrap_or_default();
    for ((label, _), e) in models.iter().zip(entries.iter()) {
        println!(
            "| {label} | {} | {} |",
            e["perplexity"]
                .as_f64()
                .map(|v| format!("{v:.3}"))
                .unwrap_or("?".into()),
            e["bias"]["mean_abs_gap"]
                .as_f64()
                .map(|v| format!("{v:.3}"))
                .unwrap_or("?".into()),
        );
    }
    if let Some(mib) = ft_peak {
        println!("\npeak resident memory of the training process: {mib:.0} MiB");
    }
}
