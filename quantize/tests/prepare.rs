//! `prepare`: a crafted corpus with known duplicates, filter cases, planted personal data and
//! look-alikes, run through the real binary; plus the checksum rules and MinHash accuracy.

use std::collections::HashSet;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use inhouse_quantize::prepare::anonymize::{card_valid, iban_valid, luhn_valid, ssn_valid};
use inhouse_quantize::prepare::config::{AnonymizeConfig, PatternConfig};
use inhouse_quantize::prepare::dedup::{estimate_jaccard, signature, Banding};
use inhouse_quantize::prepare::{self, Config, OnError};
use serde_json::Value;

// ---------------------------------------------------------------------------------------------
// The corpus
// ---------------------------------------------------------------------------------------------

/// Ordinary words, none of them a planted name or PII; random sequences of these never share a
/// five-word shingle by chance.
const WORDS: &[&str] = &[
    "account",
    "agenda",
    "approval",
    "archive",
    "budget",
    "calendar",
    "client",
    "contract",
    "customer",
    "deadline",
    "delivery",
    "department",
    "design",
    "document",
    "draft",
    "estimate",
    "feedback",
    "finance",
    "forecast",
    "guideline",
    "handbook",
    "invoice",
    "ledger",
    "logistics",
    "manager",
    "meeting",
    "milestone",
    "minutes",
    "network",
    "office",
    "onboarding",
    "order",
    "overview",
    "partner",
    "payment",
    "payroll",
    "planning",
    "policy",
    "priority",
    "process",
    "procurement",
    "product",
    "project",
    "proposal",
    "purchase",
    "quality",
    "quarter",
    "receipt",
    "record",
    "region",
    "release",
    "request",
    "review",
    "revenue",
    "risk",
    "roadmap",
    "safety",
    "schedule",
    "security",
    "service",
    "shipment",
    "software",
    "staff",
    "standard",
    "strategy",
    "supplier",
    "support",
    "survey",
    "system",
    "target",
    "team",
    "template",
    "timeline",
    "training",
    "travel",
    "update",
    "vendor",
    "warehouse",
    "workflow",
    "workshop",
    "always",
    "carefully",
    "quickly",
    "rarely",
    "usually",
    "before",
    "after",
    "during",
    "within",
    "across",
    "between",
    "under",
    "over",
    "the",
    "a",
    "our",
    "every",
    "each",
    "new",
    "old",
    "internal",
    "external",
    "weekly",
    "monthly",
    "annual",
    "shared",
    "final",
    "early",
    "late",
    "clear",
    "simple",
];

/// `n` pseudo-random words for `seed` (a 64-bit LCG: fixed, so the corpus never changes).
fn words(seed: u64, n: usize) -> Vec<String> {
    let mut state = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ 0xD1B5_4A32_D192_ED03;
    (0..n)
        .map(|_| {
            state = state
                .wrapping_mul(6_364_136_223_846_793_005)
                .wrapping_add(1_442_695_040_888_963_407);
            WORDS[(state >> 33) as usize % WORDS.len()].to_string()
        })
        .collect()
}

/// Renders words as sentences of twelve words, one per line, joined by `newline`.
fn render(words: &[String], newline: &str) -> String {
    words
        .chunks(12)
        .map(|chunk| {
            let mut line = chunk.join(" ");
            line[..1].make_ascii_uppercase();
            line.push('.');
            line
        })
        .collect::<Vec<_>>()
        .join(newline)
}

fn para(seed: u64, n: usize) -> String {
    render(&words(seed, n), "\n")
}

/// Personal data that must be replaced, by label.
const PLANTED: &[(&str, &str)] = &[
    ("EMAIL", "jane.doe@example.com"),
    ("EMAIL", "j.müller@firma.de"),
    ("EMAIL", "ops+alerts@mail.corp.example.org"),
    ("PHONE", "+1 (555) 123-4567"),
    ("PHONE", "+44 20 7946 0958"),
    ("PHONE", "030 1234567"),
    ("PHONE", "555-123-4567"),
    ("CARD", "4111 1111 1111 1111"),
    ("CARD", "5500-0000-0000-0004"),
    ("CARD", "378282246310005"),
    ("IBAN", "DE89 3704 0044 0532 0130 00"),
    ("IBAN", "GB82WEST12345698765432"),
    ("SSN", "123-45-6789"),
    ("SSN", "078-05-1120"),
    ("IP", "192.168.10.20"),
    ("IP", "10.0.0.1"),
    ("IP", "2001:db8:85a3::8a2e:370:7334"),
    ("EMPLOYEE_ID", "EMP-004211"),
    ("EMPLOYEE_ID", "EMP-918273"),
    ("NAME", "Jane Doe"),
    ("NAME", "oskar lindqvist"),
];

/// Look-alikes that fail a check and must come through unchanged.
const DECOYS: &[&str] = &[
    "4111 1111 1111 1112",
    "5500-0000-0000-0005",
    "DE88 3704 0044 0532 0130 00",
    "GB82WEST12345698765433",
    "000-12-3456",
    "666-12-3456",
    "900-12-3456",
    "123-00-4567",
    "123-45-0000",
    "256.300.1.1",
    "999.1.1.1",
    "2024-01-15",
    "1999-2024",
    "EMP-12345",
    "Oskarsson",
];

/// Writes the corpus and returns its folder. Expected, in input order (folders sorted):
/// 20 documents read, 3 exact and 2 near duplicates, one document per filter reason, 4 errors,
/// 9 documents kept. See each file's comment.
fn write_corpus(root: &Path) -> PathBuf {
    let dir = root.join("in");
    fs::create_dir_all(dir.join("sub")).unwrap();
    let w = |name: &str, text: &str| fs::write(dir.join(name), text).unwrap();
    let long_a = words(1, 132);
    let guide = format!(
        "# Guide\n\n{}\n\n```\nrun the weekly report\n```\n",
        para(2, 110)
    );

    // Kept (1-4).
    w("a_policy.txt", &render(&long_a, "\n"));
    w("b_guide.md", &guide);
    w(
        "c_contacts.txt",
        &format!(
            "{}\nWrite to jane.doe@example.com or to j.müller@firma.de, alerts go to \
             ops+alerts@mail.corp.example.org for the team.\nCall +1 (555) 123-4567 or \
             +44 20 7946 0958 in the morning, the office line is 030 1234567 and the desk \
             555-123-4567.\nThe contract of 2024-01-15 covers the years 1999-2024 in full.\n{}",
            para(3, 40),
            para(4, 40)
        ),
    );
    w(
        "d_finance.txt",
        &format!(
            "{}\nCards on file: 4111 1111 1111 1111, 5500-0000-0000-0004 and 378282246310005 \
             for the travel budget.\nTypos in the old ledger: 4111 1111 1111 1112 and \
             5500-0000-0000-0005 were rejected.\nPay to DE89 3704 0044 0532 0130 00 or \
             GB82WEST12345698765432 each quarter.\nThe drafts said DE88 3704 0044 0532 0130 00 \
             and GB82WEST12345698765433 by mistake.\n{}",
            para(5, 60),
            para(6, 60)
        ),
    );

    // data.jsonl: lines 1-4 and 14 kept, 5/6/8 errors, 7 blank, 9/10 exact duplicates of 1/2,
    // 11 too short, 12 too few words, 13 an empty assistant message.
    let ssn_text = format!(
        "{}\nThe valid numbers 123-45-6789 and 078-05-1120 were filed, while 000-12-3456, \
         666-12-3456, 900-12-3456, 123-00-4567 and 123-45-0000 can never be issued.",
        para(10, 70)
    );
    let chat = serde_json::json!({"messages": [
        {"role": "system", "content": "You are the helpdesk assistant of the company."},
        {"role": "user", "content": format!(
            "My laptop has 192.168.10.20 and the gateway shows 10.0.0.1, why does it fail? {}",
            para(11, 20))},
        {"role": "assistant", "content": format!(
            "{} Check that 2001:db8:85a3::8a2e:370:7334 is allowed; 256.300.1.1 and 999.1.1.1 \
             in your note are not addresses.", para(12, 50))},
    ]});
    let lines: Vec<Vec<u8>> = vec![
        serde_json::json!({"text": ssn_text})
            .to_string()
            .into_bytes(),
        chat.to_string().into_bytes(),
        serde_json::json!({
            "instruction": "Summarize the following message from Jane Doe.",
            "input": format!("{} Her number is EMP-004211, not EMP-12345.", para(13, 40)),
            "output": para(14, 40),
        })
        .to_string()
        .into_bytes(),
        serde_json::json!({
            "instruction": "Write a short note to oskar lindqvist about the audit.",
            "input": "",
            "output": format!("{} Oskarsson from EMP-918273 will join.", para(15, 40)),
        })
        .to_string()
        .into_bytes(),
        br#"{"text": "unterminated"#.to_vec(),
        br#"{"foo": "bar"}"#.to_vec(),
        Vec::new(),
        b"{\"text\": \"caf\xe9 au lait\"}".to_vec(),
        // The same text with trailing spaces and CRLF line endings: equal after cleanup.
        serde_json::json!({"text": ssn_text.replace('\n', "  \r\n")})
            .to_string()
            .into_bytes(),
        chat.to_string().into_bytes(),
        br#"{"text": "Hi there"}"#.to_vec(),
        br#"{"text": "Supercalifragilisticexpialidocious antidisestablishmentarianism"}"#.to_vec(),
        serde_json::json!({"messages": [
            {"role": "user", "content": "Please answer this question about the holidays."},
            {"role": "assistant", "content": "   "},
        ]})
        .to_string()
        .into_bytes(),
        serde_json::json!({"text": para(16, 80)})
            .to_string()
            .into_bytes(),
    ];
    let mut jsonl = lines.join(&b'\n');
    jsonl.push(b'\n');
    fs::write(dir.join("data.jsonl"), jsonl).unwrap();

    // Exact duplicate of a_policy.txt (CRLF, trailing spaces, extra blank lines at the end).
    w(
        "e_copy_of_a.txt",
        &format!("{}\r\n\r\n\r\n\r\n", render(&long_a, " \r\n")),
    );
    // Near duplicate of a_policy.txt: one word in 132 changed.
    let mut near_a = long_a.clone();
    near_a[60] = "zebra".into();
    w("f_near_a.txt", &render(&near_a, "\n"));
    // Not UTF-8 on line 2.
    fs::write(
        dir.join("g_latin1.txt"),
        b"First line is fine\ncaf\xe9 au lait\n",
    )
    .unwrap();
    // Ignored (extension) and skipped (hidden).
    w("notes.pdf", "%PDF-1.4");
    w(".hidden.txt", &para(99, 50));

    // Filtered: too long, low alphabetic ratio, repeated lines.
    w("sub/h_long.txt", &para(20, 20_000));
    w(
        "sub/i_numbers.txt",
        "Totals 1234 5678 9012 3456 7890 1234 5678 9012 3456 7890 ab cd",
    );
    w(
        "sub/j_menu.txt",
        "Home page\nHome page\nHome page\nContact us for the weekly schedule",
    );
    // Near duplicate of b_guide.md.
    w(
        "sub/k_near_b.md",
        &guide.replacen("weekly report", "weekly summary", 1),
    );
    dir
}

fn config_file(root: &Path) -> PathBuf {
    let path = root.join("prepare.json");
    fs::write(
        &path,
        r#"{
            "anonymize": {
                "patterns": [{"label": "EMPLOYEE_ID", "regex": "\\bEMP-\\d{6}\\b"}],
                "names": ["Jane Doe", "Oskar Lindqvist"]
            }
        }"#,
    )
    .unwrap();
    path
}

fn prepare(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_inhouse-quantize"))
        .arg("prepare")
        .args(args)
        .output()
        .expect("run inhouse-quantize")
}

/// Runs `prepare INPUT --out OUT --config CONFIG EXTRA…`.
fn prepare_into(input: &Path, out: &Path, config: &Path, extra: &[&str]) -> std::process::Output {
    let mut args = vec![
        input.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
        "--config",
        config.to_str().unwrap(),
    ];
    args.extend_from_slice(extra);
    prepare(&args)
}

fn run_ok(input: &Path, out: &Path, config: &Path, extra: &[&str]) -> Value {
    let output = prepare_into(input, out, config, extra);
    assert!(
        output.status.success(),
        "prepare failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    serde_json::from_slice(&fs::read(out.join("report.json")).unwrap()).unwrap()
}

fn records(out: &Path) -> Vec<Value> {
    ["train.jsonl", "eval.jsonl"]
        .iter()
        .flat_map(|f| {
            fs::read_to_string(out.join(f))
                .unwrap()
                .lines()
                .map(|l| serde_json::from_str(l).unwrap())
                .collect::<Vec<Value>>()
        })
        .collect()
}

// ---------------------------------------------------------------------------------------------
// End to end
// ---------------------------------------------------------------------------------------------

/// Writes the crafted corpus and its config into `dir` and runs `prepare` on it into `dir/out`
/// with `extra` options; returns the run and the output folder.
fn prepare_corpus(dir: &Path, extra: &[&str]) -> (std::process::Output, PathBuf) {
    let input = write_corpus(dir);
    let config = config_file(dir);
    let out = dir.join("out");
    (prepare_into(&input, &out, &config, extra), out)
}

#[test]
fn crafted_corpus_end_to_end() {
    let tmp = tempfile::tempdir().unwrap();
    let (output, out) = prepare_corpus(tmp.path(), &["--seed", "7"]);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{stderr}");
    assert!(stderr.contains("20 documents from 12 files"), "{stderr}");
    let report: Value =
        serde_json::from_slice(&fs::read(out.join("report.json")).unwrap()).unwrap();

    assert_eq!(report["documents_in"], 20, "{report:#}");
    assert_eq!(report["exact_duplicates"], 3);
    assert_eq!(report["near_duplicates"], 2);
    assert_eq!(
        report["filtered"],
        serde_json::json!({
            "empty_message": 1, "too_short": 1, "too_few_words": 1, "too_long": 1,
            "low_alpha_ratio": 1, "repeated_lines": 1,
        })
    );
    assert_eq!(
        report["pii_replaced"],
        serde_json::json!({
            "CARD": 3, "EMAIL": 3, "EMPLOYEE_ID": 2, "IBAN": 2, "IP": 3, "NAME": 2,
            "PHONE": 4, "SSN": 2,
        })
    );
    let (train, eval) = (
        report["train"].as_u64().unwrap(),
        report["eval"].as_u64().unwrap(),
    );
    assert_eq!(train + eval, 9);
    assert_eq!(report["files_ignored"], 1);
    assert_eq!(report["files"].as_array().unwrap().len(), 12);
    let data = report["files"]
        .as_array()
        .unwrap()
        .iter()
        .find(|f| f["path"].as_str().unwrap().ends_with("data.jsonl"))
        .unwrap();
    assert_eq!(
        (&data["documents"], &data["kept"], &data["errors"]),
        (&Value::from(10), &Value::from(5), &Value::from(3))
    );

    // Errors with file and line, in input order.
    assert_eq!(report["error_count"], 4);
    let errors: Vec<(String, u64)> = report["errors"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            let file = Path::new(e["file"].as_str().unwrap());
            (
                file.file_name().unwrap().to_string_lossy().into_owned(),
                e["line"].as_u64().unwrap(),
            )
        })
        .collect();
    let expected = [
        ("data.jsonl", 5),
        ("data.jsonl", 6),
        ("data.jsonl", 8),
        ("g_latin1.txt", 2),
    ];
    assert_eq!(errors, expected.map(|(f, l)| (f.to_string(), l)).to_vec());
    assert!(report["errors"][1]["message"]
        .as_str()
        .unwrap()
        .contains("unknown shape"));

    // Options and LSH parameters are recorded; the names themselves are not.
    let opts = &report["options"];
    assert_eq!(opts["seed"], 7);
    assert_eq!(opts["eval_share"], 0.1);
    assert_eq!(opts["minhash"]["bands"], 12);
    assert_eq!(opts["minhash"]["rows"], 10);
    assert_eq!(opts["anonymize"]["names"], 2);

    // No planted PII anywhere in the outputs; every look-alike intact.
    let written = format!(
        "{}{}",
        fs::read_to_string(out.join("train.jsonl")).unwrap(),
        fs::read_to_string(out.join("eval.jsonl")).unwrap()
    );
    let report_text = fs::read_to_string(out.join("report.json")).unwrap();
    for (label, pii) in PLANTED {
        assert!(!written.contains(pii), "{label} {pii} survived");
        assert!(!report_text.contains(pii), "{label} {pii} is in the report");
    }
    for decoy in DECOYS {
        assert!(written.contains(decoy), "look-alike {decoy} was changed");
    }
    assert_eq!(written.lines().count(), 9);

    // Structure kept: the Alpaca record became a user and an assistant turn.
    let all = records(&out);
    let alpaca = all
        .iter()
        .find(|r| {
            r["messages"][0]["content"]
                .as_str()
                .is_some_and(|c| c.starts_with("Summarize the following message from [NAME]."))
        })
        .expect("the Alpaca record");
    let messages = alpaca["messages"].as_array().unwrap();
    assert_eq!(messages.len(), 2);
    assert_eq!(messages[0]["role"], "user");
    assert!(messages[0]["content"].as_str().unwrap().contains(".\n\n"));
    assert_eq!(messages[1]["role"], "assistant");
    let chats = all.iter().filter(|r| r.get("messages").is_some()).count();
    assert_eq!(chats, 3);
    assert_eq!(all.iter().filter(|r| r.get("text").is_some()).count(), 6);
}

#[test]
fn same_seed_same_bytes_other_seed_other_split() {
    let tmp = tempfile::tempdir().unwrap();
    let input = write_corpus(tmp.path());
    let config = config_file(tmp.path());
    let share = ["--eval-share", "0.5"];
    let (a, b, c) = (
        tmp.path().join("a"),
        tmp.path().join("b"),
        tmp.path().join("c"),
    );
    let mut report_a = run_ok(
        &input,
        &a,
        &config,
        &[&share[..], &["--seed", "1"]].concat(),
    );
    let mut report_b = run_ok(
        &input,
        &b,
        &config,
        &[&share[..], &["--seed", "1"]].concat(),
    );
    run_ok(
        &input,
        &c,
        &config,
        &[&share[..], &["--seed", "2"]].concat(),
    );
    for f in ["train.jsonl", "eval.jsonl"] {
        assert_eq!(
            fs::read(a.join(f)).unwrap(),
            fs::read(b.join(f)).unwrap(),
            "{f}"
        );
    }
    // The reports differ only in the output folder they name.
    report_a["options"]["out"] = Value::Null;
    report_b["options"]["out"] = Value::Null;
    assert_eq!(report_a, report_b);
    assert_ne!(
        fs::read(a.join("eval.jsonl")).unwrap(),
        fs::read(c.join("eval.jsonl")).unwrap()
    );
    // The same documents, split differently.
    let set = |dir: &Path| {
        records(dir)
            .into_iter()
            .map(|r| r.to_string())
            .collect::<HashSet<_>>()
    };
    assert_eq!(set(&a), set(&c));
}

#[test]
fn on_error_fail_names_file_and_line_and_writes_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let (output, out) = prepare_corpus(tmp.path(), &["--on-error", "fail"]);
    assert_eq!(output.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("data.jsonl:5: not JSON"), "{stderr}");
    for f in ["train.jsonl", "eval.jsonl", "report.json"] {
        assert!(!out.join(f).exists(), "{f} written");
    }
    assert_eq!(fs::read_dir(&out).unwrap().count(), 0, "partial files left");
}

#[test]
fn bad_config_is_a_usage_error() {
    let tmp = tempfile::tempdir().unwrap();
    let config = tmp.path().join("bad.json");
    fs::write(&config, r#"{"filters": {"min-char": 3}}"#).unwrap();
    let output = prepare(&[
        tmp.path().to_str().unwrap(),
        "--out",
        tmp.path().join("out").to_str().unwrap(),
        "--config",
        config.to_str().unwrap(),
    ]);
    assert_eq!(output.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&output.stderr).contains("unknown field `min-char`"));

    let output = prepare(&[
        tmp.path().to_str().unwrap(),
        "--out",
        tmp.path().join("out").to_str().unwrap(),
        "--eval-share",
        "1.5",
    ]);
    assert_eq!(output.status.code(), Some(2));
}

// ---------------------------------------------------------------------------------------------
// Library
// ---------------------------------------------------------------------------------------------

#[test]
fn output_inside_the_input_folder_is_not_read_back() {
    let tmp = tempfile::tempdir().unwrap();
    let input = tmp.path().join("docs");
    fs::create_dir_all(&input).unwrap();
    fs::write(input.join("one.txt"), para(30, 60)).unwrap();
    fs::write(input.join("two.md"), para(31, 60)).unwrap();
    let options = prepare::Options {
        inputs: vec![input.clone()],
        out: input.join("prepared"),
        config: Config::default(),
    };
    let first = prepare::run(&options).unwrap();
    let second = prepare::run(&options).unwrap();
    assert_eq!(first.documents_in, 2);
    assert_eq!(second.documents_in, 2);
    assert_eq!(second.train + second.eval, 2);
}

#[test]
fn custom_patterns_and_names_are_counted() {
    let tmp = tempfile::tempdir().unwrap();
    let file = tmp.path().join("a.jsonl");
    let text = format!("{} Ticket for Ada Lovelace, badge B-77-1234.", para(40, 30));
    fs::write(&file, format!("{}\n", serde_json::json!({ "text": text }))).unwrap();
    let config = Config {
        on_error: OnError::Fail,
        anonymize: AnonymizeConfig {
            patterns: vec![PatternConfig {
                label: "BADGE".into(),
                regex: r"\bB-\d{2}-\d{4}\b".into(),
            }],
            names: vec!["ada lovelace".into()],
        },
        ..Config::default()
    };
    let report = prepare::run(&prepare::Options {
        inputs: vec![file],
        out: tmp.path().join("out"),
        config,
    })
    .unwrap();
    assert_eq!(report.pii_replaced["BADGE"], 1);
    assert_eq!(report.pii_replaced["NAME"], 1);
    let written = records(&tmp.path().join("out"));
    assert!(written[0]["text"]
        .as_str()
        .unwrap()
        .ends_with("Ticket for [NAME], badge [BADGE]."));
}

#[test]
fn invalid_custom_patterns_are_refused() {
    for (label, regex) in [
        ("badge", "x"),
        ("EMAIL", "x"),
        ("BADGE", "("),
        ("BADGE", "a*"),
    ] {
        let config = Config {
            anonymize: AnonymizeConfig {
                patterns: vec![PatternConfig {
                    label: label.into(),
                    regex: regex.into(),
                }],
                names: vec![],
            },
            ..Config::default()
        };
        assert!(config.check().is_err(), "{label} {regex}");
    }
}

// ---------------------------------------------------------------------------------------------
// Checksums and MinHash
// ---------------------------------------------------------------------------------------------

#[test]
fn luhn() {
    for ok in [
        "4111111111111111",
        "5500 0000 0000 0004",
        "378282246310005",
        "79927398713",
    ] {
        assert!(luhn_valid(ok), "{ok}");
    }
    for bad in ["4111111111111112", "79927398710", "1234567812345678", ""] {
        assert!(!luhn_valid(bad), "{bad}");
    }
    assert!(card_valid("4111-1111-1111-1111"));
    // Mixed separators, a non-issuer first digit, too short.
    assert!(!card_valid("4111-1111 1111-1111"));
    assert!(!card_valid("9780306406157"));
    assert!(!card_valid("411111111111"));
}

#[test]
fn iban_mod97() {
    for ok in [
        "DE89 3704 0044 0532 0130 00",
        "DE89370400440532013000",
        "GB82WEST12345698765432",
        "GB82 WEST 1234 5698 7654 32",
        "FR14 2004 1010 0505 0001 3M02 606",
        "NL91ABNA0417164300",
        "NO9386011117947",
        "de89 3704 0044 0532 0130 00",
    ] {
        assert!(iban_valid(ok), "{ok}");
    }
    for bad in [
        "DE88 3704 0044 0532 0130 00",
        "GB82WEST12345698765433",
        "DE89 37040044 0532 0130 00",
        "DE8937040044053201300",
        "De89370400440532013000",
        "DE89 3704 0044 0532 0130 00 00",
        "NO93 8601 111",
    ] {
        assert!(!iban_valid(bad), "{bad}");
    }
}

#[test]
fn ssn_ranges() {
    for ok in ["123-45-6789", "078-05-1120", "899-99-9999", "665-01-0001"] {
        assert!(ssn_valid(ok), "{ok}");
    }
    for bad in [
        "000-12-3456",
        "666-12-3456",
        "900-12-3456",
        "999-12-3456",
        "123-00-4567",
        "123-45-0000",
        "12-345-6789",
        "123456789",
    ] {
        assert!(!ssn_valid(bad), "{bad}");
    }
}

#[test]
fn minhash_estimates_known_overlaps() {
    // Sets of integers with an exact Jaccard similarity, as shingle hashes.
    for (a, b, exact) in [
        (0..1000u64, 500..1500u64, 500.0 / 1500.0),
        (0..900, 100..1000, 800.0 / 1000.0),
        (0..1000, 50..1000, 950.0 / 1000.0),
        (0..500, 500..1000, 0.0),
        (0..700, 0..700, 1.0),
    ] {
        let sa = signature(&a.collect()).unwrap();
        let sb = signature(&b.collect()).unwrap();
        let est = estimate_jaccard(&sa, &sb);
        // Standard error with 128 permutations is at most 0.044; allow three of them.
        assert!(
            (est - exact).abs() <= 0.13,
            "exact {exact}, estimated {est}"
        );
    }
    let banding = Banding::for_threshold(0.8);
    assert_eq!(banding.bands * banding.rows, 120);
    assert!(banding.candidate_probability(0.8) > 0.7);
}
