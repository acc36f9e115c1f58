//! `synth` through the real binary with the Qwen2.5-Coder-0.5B test model as teacher: valid chat
//! records, counts that add up, planted near-duplicates, ungrounded answers and e-mail addresses
//! each caught by their filter, no planted personal data anywhere in the output, byte-identical
//! reruns, and a dry run that generates nothing.

mod common;

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::Value;

const QWEN: &str = "qwen2.5-coder-0.5b-instruct-q4_k_m.gguf";

/// Personal data planted in the documents; none of it may reach any output file.
const PLANTED: &[&str] = &[
    "jane.whitlock@northwind.example",
    "7946 0958",
    "GB82WEST12345698765432",
];

fn documents(dir: &Path) {
    fs::create_dir_all(dir).unwrap();
    fs::write(
        dir.join("leave.md"),
        "# Annual leave policy\n\nEvery full-time employee of Northwind Logistics receives 27 \
         days of paid annual leave per calendar year. Part-time employees receive leave in \
         proportion to their contracted hours. Leave requests must be submitted in the HR portal \
         at least ten working days in advance and are approved by the employee's line manager. \
         Up to five unused days may be carried over into the first quarter of the next year. For \
         questions, write to jane.whitlock@northwind.example or call +44 20 7946 0958.\n",
    )
    .unwrap();
    fs::write(
        dir.join("expenses.md"),
        "# Travel expenses\n\nStaff travelling on company business book trains and flights \
         through the travel desk. Economy class is the standard for flights shorter than six \
         hours; business class needs written approval from a director. Hotel costs are \
         reimbursed up to 140 euros per night in capital cities and 110 euros elsewhere. Claims \
         are paid into account GB82WEST12345698765432 with the next monthly salary.\n",
    )
    .unwrap();
    fs::write(
        dir.join("security.txt"),
        "Laptop security rules. Every company laptop uses full-disk encryption, and the screen \
         locks automatically after five minutes without input. A lost or stolen laptop must be \
         reported to the IT service desk within one hour, so that the device can be wiped \
         remotely. USB storage devices are blocked on all laptops except those of the hardware \
         engineering team.\n",
    )
    .unwrap();
}

fn synth(docs: &Path, out: &Path, extra: &[&str]) -> Value {
    let output = Command::new(env!("CARGO_BIN_EXE_inhouse-quantize"))
        .arg("synth")
        .arg(docs)
        .arg("--teacher")
        .arg(common::model(QWEN))
        .arg("--out")
        .arg(out)
        .args([
            "--seed",
            "7",
            "--per-chunk",
            "3",
            "--chunk-tokens",
            "128",
            "--max-tokens",
            "320",
            "--threads",
            "2",
            "--progress",
            "json",
        ])
        .args(extra)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "synth failed: {}\n{stdout}",
        String::from_utf8_lossy(&output.stderr)
    );
    let last = stdout.lines().last().expect("a result line");
    serde_json::from_str(last).unwrap()
}

fn read(path: PathBuf) -> String {
    fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn report(out: &Path) -> Value {
    serde_json::from_str(&read(out.join("report.json"))).unwrap()
}

/// Every line a chat record with a user question and an assistant answer.
fn records(out: &Path) -> Vec<(String, String)> {
    let mut all = vec![];
    for f in ["train.jsonl", "eval.jsonl"] {
        for line in read(out.join(f)).lines() {
            let v: Value = serde_json::from_str(line).unwrap();
            let ms = v["messages"].as_array().expect("messages");
            assert_eq!(ms.len(), 2, "{line}");
            assert_eq!(ms[0]["role"], "user");
            assert_eq!(ms[1]["role"], "assistant");
            let q = ms[0]["content"].as_str().unwrap().to_string();
            let a = ms[1]["content"].as_str().unwrap().to_string();
            assert!(!q.trim().is_empty() && !a.trim().is_empty(), "{line}");
            all.push((q, a));
        }
    }
    all
}

/// generated = kept + each filter's drops; kept = train + eval.
fn check_counts(r: &Value) {
    let dropped: u64 = r["dropped"]
        .as_object()
        .unwrap()
        .values()
        .map(|v| v.as_u64().unwrap())
        .sum();
    assert_eq!(r["dropped_total"].as_u64().unwrap(), dropped);
    assert_eq!(
        r["generated"].as_u64().unwrap(),
        r["kept"].as_u64().unwrap() + dropped,
        "{r}"
    );
    assert_eq!(
        r["kept"].as_u64().unwrap(),
        r["train"].as_u64().unwrap() + r["eval"].as_u64().unwrap()
    );
}

fn no_planted_data(out: &Path) {
    for e in fs::read_dir(out).unwrap() {
        let text = read(e.unwrap().path());
        for p in PLANTED {
            assert!(!text.contains(p), "{p} reached the output");
        }
    }
}

#[test]
fn synth_generates_grounded_pairs_deterministically_and_its_filters_catch_what_was_planted() {
    let tmp = tempfile::tempdir().unwrap();
    let docs = tmp.path().join("docs");
    documents(&docs);

    // A dry run estimates and writes nothing.
    let dry_out = tmp.path().join("dry");
    let dry = synth(&docs, &dry_out, &["--dry-run"]);
    assert_eq!(dry["dry_run"], true, "{dry}");
    assert_eq!(dry["documents"], 3);
    let chunks = dry["chunks"].as_u64().unwrap();
    assert!(chunks >= 3);
    assert_eq!(dry["expected_samples"].as_u64().unwrap(), chunks * 3);
    assert!(dry["estimated_seconds"].as_f64().unwrap() > 0.0);
    assert!(!dry_out.exists(), "a dry run writes nothing");

    // A real run.
    let a = tmp.path().join("a");
    synth(&docs, &a, &[]);
    let r = report(&a);
    check_counts(&r);
    let kept = records(&a);
    assert!(!kept.is_empty(), "{r}");
    assert_eq!(kept.len() as u64, r["kept"].as_u64().unwrap());
    assert_eq!(r["chunks"].as_u64().unwrap(), chunks);
    assert_eq!(read(a.join("chunks.jsonl")).lines().count() as u64, chunks);
    assert_eq!(r["prepare"]["pii_replaced"]["EMAIL"], 1);
    assert_eq!(r["prepare"]["pii_replaced"]["PHONE"], 1);
    assert_eq!(r["prepare"]["pii_replaced"]["IBAN"], 1);
    assert_eq!(
        r["generations"]["unparsable"], 0,
        "constrained output always parses"
    );
    assert!(r["judged"].as_u64().unwrap() >= r["kept"].as_u64().unwrap());
    assert!(r["bias"]["axes"].is_object());
    assert_eq!(r["teacher"]["sha256"].as_str().unwrap().len(), 64);
    no_planted_data(&a);

    // The same seed: byte-identical output.
    let b = tmp.path().join("b");
    synth(&docs, &b, &[]);
    for f in ["train.jsonl", "eval.jsonl", "chunks.jsonl"] {
        assert_eq!(read(a.join(f)), read(b.join(f)), "{f} differs between runs");
    }

    // A seed example close to a kept question (its first word repeated): that question is now
    // a near-duplicate.
    let (q, ans) = &kept[0];
    let first = q.split_whitespace().next().unwrap();
    let seed = serde_json::json!({"messages": [
        {"role": "user", "content": format!("{first} {q}")},
        {"role": "assistant", "content": ans}]});
    let seeds = tmp.path().join("seeds.jsonl");
    fs::write(&seeds, format!("{seed}\n")).unwrap();
    let c = tmp.path().join("c");
    synth(&docs, &c, &["--seed-examples", seeds.to_str().unwrap()]);
    let rc = report(&c);
    check_counts(&rc);
    assert!(
        rc["dropped"]["near_duplicate"].as_u64().unwrap()
            > r["dropped"]["near_duplicate"].as_u64().unwrap(),
        "{rc}"
    );
    assert!(!records(&c).iter().any(|(kq, _)| kq == q));

    // Test-only prompt overrides, on one document: questions about another subject
    // (ungrounded), then answers carrying an e-mail address (personal data).
    let one = tmp.path().join("one");
    fs::create_dir_all(&one).unwrap();
    fs::copy(docs.join("security.txt"), one.join("security.txt")).unwrap();
    let overrides = [
        (
            "qa",
            "Ignore this passage: {passage}\n\nWrite {n} questions about the planet Mars, each \
             with an answer about Mars (its moons, its colour, its distance from the Sun). Reply \
             as JSON: {\"pairs\": [{\"question\": \"...\", \"answer\": \"...\"}]}",
        ),
        (
            "explain",
            "Passage:\n{passage}\nContact for these rules: help.desk@northwind.example\n\nWrite \
             {n} questions with answers. The first question is \"Whom do I contact about these \
             rules?\" and its answer is the contact e-mail address. Reply as JSON: {\"pairs\": \
             [{\"question\": \"...\", \"answer\": \"...\"}]}",
        ),
    ];
    let mut reports = vec![];
    for (style, prompt) in overrides {
        let prompts = tmp.path().join(format!("{style}.json"));
        let text = serde_json::json!({"styles": {style: prompt}}).to_string();
        fs::write(&prompts, text).unwrap();
        let d = tmp.path().join(style);
        synth(
            &one,
            &d,
            &["--prompts", prompts.to_str().unwrap(), "--style", style],
        );
        let rd = report(&d);
        check_counts(&rd);
        assert_ne!(rd["prompts_digest"], r["prompts_digest"]);
        for (q, a) in records(&d) {
            assert!(!a.contains("help.desk@"), "{q} / {a}");
        }
        no_planted_data(&d);
        reports.push(rd);
    }
    let (mars, email) = (&reports[0], &reports[1]);
    let ungrounded = mars["dropped"]["ungrounded_lexical"].as_u64().unwrap()
        + mars["dropped"]["ungrounded_model"].as_u64().unwrap();
    assert!(ungrounded >= 1, "{mars}");
    assert!(
        email["dropped"]["personal_data"].as_u64().unwrap() >= 1,
        "{email}"
    );
    assert!(
        email["personal_data_found"]["EMAIL"].as_u64().unwrap() >= 1,
        "{email}"
    );
}

#[test]
fn synth_refuses_bad_options_before_loading_the_teacher() {
    let tmp = tempfile::tempdir().unwrap();
    let docs = tmp.path().join("docs");
    documents(&docs);
    let run = |extra: &[&str]| {
        Command::new(env!("CARGO_BIN_EXE_inhouse-quantize"))
            .arg("synth")
            .arg(&docs)
            .arg("--teacher")
            .arg(common::model(QWEN))
            .arg("--out")
            .arg(tmp.path().join("out"))
            .args(extra)
            .output()
            .unwrap()
    };
    for (extra, says) in [
        (&["--per-chunk", "0"][..], "--per-chunk"),
        (&["--overlap", "300"][..], "--overlap"),
        (&["--judge-threshold", "2"][..], "--judge-threshold"),
    ] {
        let o = run(extra);
        assert_eq!(o.status.code(), Some(2), "{extra:?}");
        assert!(String::from_utf8_lossy(&o.stderr).contains(says));
    }
    let bad = tmp.path().join("bad.json");
    fs::write(&bad, r#"{"styles": {"poem": "{passage}"}}"#).unwrap();
    let o = run(&["--prompts", bad.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&o.stderr).contains("styles.poem"));
    assert!(!tmp.path().join("out").exists());
}
