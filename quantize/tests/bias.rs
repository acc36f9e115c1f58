//! The bias report and counterfactual augmentation of `prepare`, through the real binary: a
//! crafted corpus counted exactly, swapped copies with their case and grammar, the gender ratio
//! brought to exactly 1.0, copies in their original's split, and byte-identical reruns.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use serde_json::{json, Value};

fn prepare(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_inhouse-quantize"))
        .arg("prepare")
        .args(args)
        .output()
        .expect("run inhouse-quantize")
}

/// Runs `prepare INPUT --out OUT EXTRA…` and returns report.json.
fn run_ok(input: &Path, out: &Path, extra: &[&str]) -> Value {
    let mut args = vec![input.to_str().unwrap(), "--out", out.to_str().unwrap()];
    args.extend_from_slice(extra);
    let output = prepare(&args);
    assert!(
        output.status.success(),
        "prepare failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    serde_json::from_slice(&fs::read(out.join("report.json")).unwrap()).unwrap()
}

/// The lines of one output file, parsed.
fn lines(out: &Path, file: &str) -> Vec<Value> {
    fs::read_to_string(out.join(file))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

/// A record's texts: its text, or its messages' contents.
fn texts(record: &Value) -> Vec<String> {
    match record.get("text") {
        Some(t) => vec![t.as_str().unwrap().to_string()],
        None => record["messages"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| m["content"].as_str().unwrap().to_string())
            .collect(),
    }
}

fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
    fs::create_dir_all(dir).unwrap();
    let path = dir.join(name);
    fs::write(&path, text).unwrap();
    path
}

fn jsonl(records: &[Value]) -> String {
    records.iter().map(|r| format!("{r}\n")).collect()
}

fn chat(user: &str, assistant: &str) -> Value {
    json!({"messages": [
        {"role": "user", "content": user},
        {"role": "assistant", "content": assistant},
    ]})
}

const A_TXT: &str =
    "He said his mother and her sister visited the church on Sunday. The therapist met them.";

/// Three files, six documents: one without terms, one exact duplicate (not counted), the rest
/// with known terms. Expected counts per document are in the comments.
fn counting_corpus(root: &Path) -> PathBuf {
    let input = root.join("in");
    // gender: female 3 (mother, her, sister), male 2 (He, his); religion: christian 1 (church).
    // "therapist" and "them" hold no term.
    write(&input, "a.txt", A_TXT);
    // age: young 1 (young people), old 3 (older workers, elderly, pensioner); origin: african 1
    // (Nigerian), latin_american 1 (Latin American, not also "american"); religion: muslim 1.
    write(
        &input,
        "b.md",
        "Young people and older workers joined the team.\n\nThe elderly pensioner, a Nigerian \
         Muslim, spoke to the Latin American group.\n",
    );
    write(
        &input,
        "c.jsonl",
        &jsonl(&[
            // Line 1: no term.
            json!({"text": "The quarterly budget review covers invoices and payroll for the region."}),
            // Line 2: gender female 2 (she, she), male 1 (him); disability: disabled 1.
            chat(
                "Did she approve the new policy for disabled employees?",
                "Yes, she approved it and thanked him for the draft.",
            ),
            // Line 3: the same text as a.txt, dropped as an exact duplicate.
            json!({"text": A_TXT}),
            // Line 4: gender female 1 (SHE'LL), male 1 (HIM); sexual_orientation: lgb 2.
            json!({"text": "SHE'LL call HIM later; the Gay and lesbian staff network meets on Friday."}),
        ]),
    );
    input
}

fn groups(axis: &Value) -> Vec<(String, u64)> {
    axis["groups"]
        .as_object()
        .unwrap()
        .iter()
        .map(|(g, n)| (g.clone(), n.as_u64().unwrap()))
        .collect()
}

fn named(list: &[(&str, u64)]) -> Vec<(String, u64)> {
    list.iter().map(|(g, n)| (g.to_string(), *n)).collect()
}

#[test]
fn the_bias_report_counts_a_crafted_corpus_exactly() {
    let tmp = tempfile::tempdir().unwrap();
    let input = counting_corpus(tmp.path());
    let out = tmp.path().join("out");
    let report = run_ok(&input, &out, &[]);
    assert_eq!(report["exact_duplicates"], 1);
    assert_eq!(
        report["train"].as_u64().unwrap() + report["eval"].as_u64().unwrap(),
        5
    );
    assert!(report["augment"].is_null());
    assert_eq!(report["options"]["bias_terms"], "built-in");
    assert_eq!(report["options"]["augment"], "none");

    let bias = &report["bias"];
    assert_eq!(bias["lexicon"], "built-in");
    assert_eq!(bias["documents"], 5);
    assert_eq!(bias["documents_with_terms"], 4);
    let axes = &bias["axes"];
    let names: Vec<&String> = axes.as_object().unwrap().keys().collect();
    assert_eq!(
        names,
        [
            "gender",
            "age",
            "religion",
            "origin",
            "race_ethnicity",
            "disability",
            "sexual_orientation",
            "gender_identity",
            "socioeconomic"
        ]
    );

    let gender = &axes["gender"];
    assert_eq!(groups(gender), named(&[("female", 6), ("male", 4)]));
    assert_eq!(gender["total"], 10);
    assert_eq!(gender["ratio"], 1.5);
    assert_eq!(gender["ratio_present"], 1.5);
    assert_eq!(gender["empty_groups"], json!([]));
    assert_eq!(
        gender["terms"],
        json!({"she": 3, "her": 1, "mother": 1, "sister": 1, "he": 1, "him": 2, "his": 1})
    );

    let age = &axes["age"];
    assert_eq!(groups(age), named(&[("young", 1), ("old", 3)]));
    assert_eq!(age["ratio"], 3.0);
    assert_eq!(
        age["terms"],
        json!({"young people": 1, "elderly": 1, "pensioner": 1, "older workers": 1})
    );

    let religion = &axes["religion"];
    assert_eq!(
        groups(religion),
        named(&[
            ("christian", 1),
            ("muslim", 1),
            ("jewish", 0),
            ("hindu", 0),
            ("buddhist", 0),
            ("sikh", 0),
            ("nonreligious", 0)
        ])
    );
    assert!(religion["ratio"].is_null(), "a group at 0: no finite ratio");
    assert_eq!(religion["ratio_present"], 1.0);
    assert_eq!(
        religion["empty_groups"],
        json!(["jewish", "hindu", "buddhist", "sikh", "nonreligious"])
    );

    let origin = &axes["origin"];
    assert_eq!(
        groups(origin),
        named(&[
            ("african", 1),
            ("asian", 0),
            ("european", 0),
            ("latin_american", 1),
            ("middle_eastern", 0),
            ("north_american", 0)
        ])
    );
    assert_eq!(origin["terms"], json!({"nigerian": 1, "latin american": 1}));

    let disability = &axes["disability"];
    assert_eq!(
        groups(disability),
        named(&[("disabled", 1), ("non_disabled", 0)])
    );
    assert!(disability["ratio"].is_null());
    assert!(
        disability["ratio_present"].is_null(),
        "one group present: no ratio"
    );
    assert_eq!(disability["empty_groups"], json!(["non_disabled"]));

    assert_eq!(
        groups(&axes["sexual_orientation"]),
        named(&[("lgb", 2), ("heterosexual", 0)])
    );
    for axis in ["race_ethnicity", "gender_identity", "socioeconomic"] {
        assert_eq!(axes[axis]["total"], 0, "{axis}");
        assert!(axes[axis]["ratio"].is_null());
        assert_eq!(axes[axis]["terms"], json!({}));
    }

    // Per document: only those with terms, in input order, with the groups that have a count.
    let docs = bias["per_document"].as_array().unwrap();
    assert_eq!(bias["per_document_omitted"], 0);
    let labels: Vec<&str> = docs
        .iter()
        .map(|d| d["document"].as_str().unwrap())
        .collect();
    assert_eq!(labels.len(), 4, "{labels:?}");
    for (label, end) in labels
        .iter()
        .zip(["a.txt", "b.md", "c.jsonl:2", "c.jsonl:4"])
    {
        assert!(label.ends_with(end), "{label} should end with {end}");
    }
    assert_eq!(
        docs[0]["axes"],
        json!({"gender": {"female": 3, "male": 2}, "religion": {"christian": 1}})
    );
    assert_eq!(docs[0]["terms"], 6);
    assert_eq!(
        docs[1]["axes"],
        json!({
            "age": {"young": 1, "old": 3},
            "religion": {"muslim": 1},
            "origin": {"african": 1, "latin_american": 1}
        })
    );
    assert_eq!(docs[1]["terms"], 7);
    assert_eq!(
        docs[2]["axes"],
        json!({"gender": {"female": 2, "male": 1}, "disability": {"disabled": 1}})
    );
    assert_eq!(
        docs[3]["axes"],
        json!({"gender": {"female": 1, "male": 1}, "sexual_orientation": {"lgb": 2}})
    );

    // The stderr summary names the axes with terms.
    let output = prepare(&[input.to_str().unwrap(), "--out", out.to_str().unwrap()]);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("bias: gender: female 6, male 4 (ratio 1.50)"),
        "{stderr}"
    );
}

/// Five records, female 6 / male 7: every gender term in them has a counterpart, so the copies
/// bring the axis to 13 / 13.
fn augment_corpus(root: &Path) -> PathBuf {
    let input = root.join("in");
    write(
        &input,
        "docs.jsonl",
        &jsonl(&[
            // male 3 (He, his, his), female 1 (wife).
            json!({"text": "He told his wife that the report was his."}),
            // male 1 (Mr), female 2 (her, her).
            json!({"text": "Mr Brown thanked her for the draft and her team."}),
            // male 2 (HE, men).
            json!({"text": "HE SAID the policy applies to all men."}),
            // female 3 (woman, she, she), male 1 (him); John is a name, not a term.
            chat(
                "Is John's manager a woman?",
                "Yes, she is, and she also mentors him.",
            ),
            // No term: no copy.
            json!({"text": "The budget review covers invoices and payroll for the region."}),
        ]),
    );
    input
}

const SWAPPED: [&str; 3] = [
    "She told her husband that the report was hers.",
    "Ms Brown thanked him for the draft and his team.",
    "SHE SAID the policy applies to all women.",
];

#[test]
fn counterfactual_copies_swap_the_words_and_balance_gender_exactly() {
    let tmp = tempfile::tempdir().unwrap();
    let input = augment_corpus(tmp.path());
    let out = tmp.path().join("out");
    let report = run_ok(
        &input,
        &out,
        &[
            "--augment",
            "counterfactual",
            "--eval-share",
            "0.5",
            "--seed",
            "3",
        ],
    );

    let augment = &report["augment"];
    assert_eq!(augment["mode"], "counterfactual");
    assert_eq!(augment["pairs"], "built-in");
    assert_eq!(augment["records_added"], 4);
    // This seed puts copies on both sides of the split.
    assert_eq!(
        (&augment["train_added"], &augment["eval_added"]),
        (&json!(1), &json!(3))
    );
    assert_eq!(augment["copies_skipped_duplicate"], 0);
    assert_eq!(augment["originals_dropped_duplicate_of_copy"], 0);
    assert_eq!(report["options"]["augment"], "counterfactual");
    assert_eq!(report["options"]["counterfactual_pairs"], "built-in");

    // Before: the kept documents only.
    let before = &report["bias"]["axes"]["gender"];
    assert_eq!(groups(before), named(&[("female", 6), ("male", 7)]));
    assert_eq!(before["ratio"].as_f64().unwrap(), 7.0 / 6.0);
    assert_eq!(report["bias"]["documents"], 5);
    // After: with the copies, exactly balanced.
    let after = &augment["bias_after"];
    assert_eq!(after["documents"], 9);
    assert_eq!(
        groups(&after["axes"]["gender"]),
        named(&[("female", 13), ("male", 13)])
    );
    assert_eq!(after["axes"]["gender"]["ratio"].as_f64().unwrap(), 1.0);
    let copy_labels: Vec<&str> = after["per_document"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|d| d["document"].as_str())
        .filter(|l| l.ends_with(" (counterfactual)"))
        .collect();
    assert_eq!(copy_labels.len(), 4, "{copy_labels:?}");

    // The copies: each right after its original, in the same file.
    let train = lines(&out, "train.jsonl");
    let eval = lines(&out, "eval.jsonl");
    assert_eq!(train.len() + eval.len(), 9);
    let all: Vec<Vec<String>> = train.iter().chain(&eval).map(texts).collect();
    for expected in SWAPPED {
        assert!(
            all.iter().any(|t| t == &[expected.to_string()]),
            "missing {expected:?} in {all:?}"
        );
    }
    let chat_copy = [
        "Is Patricia's manager a man?".to_string(),
        "Yes, he is, and he also mentors her.".to_string(),
    ];
    assert!(all.contains(&chat_copy.to_vec()), "{all:?}");
    let chat_record = train
        .iter()
        .chain(&eval)
        .find(|r| texts(r) == chat_copy)
        .unwrap();
    assert_eq!(chat_record["messages"][0]["role"], "user");
    assert_eq!(chat_record["messages"][1]["role"], "assistant");

    let originals = [
        "He told his wife that the report was his.",
        "Mr Brown thanked her for the draft and her team.",
        "HE SAID the policy applies to all men.",
        "Is John's manager a woman?",
    ];
    let mut seen = 0;
    for file in [&train, &eval] {
        let file: Vec<Vec<String>> = file.iter().map(texts).collect();
        for (i, t) in file.iter().enumerate() {
            if let Some(k) = originals.iter().position(|o| t[0] == *o) {
                let next = file.get(i + 1).expect("a copy follows its original");
                let expected = if k < 3 {
                    SWAPPED[k]
                } else {
                    chat_copy[0].as_str()
                };
                assert_eq!(
                    next[0], expected,
                    "the copy of {t:?} is in the same file, next"
                );
                seen += 1;
            }
        }
    }
    assert_eq!(seen, 4);
    assert_eq!(
        report["train"].as_u64().unwrap() + report["eval"].as_u64().unwrap(),
        5,
        "train/eval count the originals"
    );

    // Byte-identical on a rerun.
    let bytes = |f: &str| fs::read(out.join(f)).unwrap();
    let first: Vec<Vec<u8>> = ["train.jsonl", "eval.jsonl", "report.json"]
        .iter()
        .map(|f| bytes(f))
        .collect();
    run_ok(
        &input,
        &out,
        &[
            "--augment",
            "counterfactual",
            "--eval-share",
            "0.5",
            "--seed",
            "3",
        ],
    );
    let second: Vec<Vec<u8>> = ["train.jsonl", "eval.jsonl", "report.json"]
        .iter()
        .map(|f| bytes(f))
        .collect();
    assert_eq!(first, second);
}

#[test]
fn copies_never_repeat_a_text_and_never_cross_the_split() {
    let tmp = tempfile::tempdir().unwrap();
    let input = tmp.path().join("in");
    write(
        &input,
        "docs.jsonl",
        &jsonl(&[
            // Kept; its copy reads "Ms Smith …".
            json!({"text": "Mr Smith left the office early today."}),
            // Kept; its copy ("Mr Smith …") is the first document: not written.
            json!({"text": "Mrs Smith left the office early today."}),
            // The first document's copy: dropped as an exact duplicate.
            json!({"text": "Ms Smith left the office early today."}),
        ]),
    );
    let out = tmp.path().join("out");
    let report = run_ok(&input, &out, &["--augment", "counterfactual"]);
    let augment = &report["augment"];
    assert_eq!(augment["records_added"], 1);
    assert_eq!(augment["copies_skipped_duplicate"], 1);
    assert_eq!(augment["originals_dropped_duplicate_of_copy"], 1);
    assert_eq!(report["exact_duplicates"], 1);
    let mut all: Vec<String> = ["train.jsonl", "eval.jsonl"]
        .iter()
        .flat_map(|f| lines(&out, f))
        .map(|r| texts(&r).remove(0))
        .collect();
    all.sort();
    assert_eq!(
        all,
        [
            "Mr Smith left the office early today.",
            "Mrs Smith left the office early today.",
            "Ms Smith left the office early today.",
        ]
    );
    // The dropped third document is not in the "before" counts: Mr 1 and Mrs 1.
    assert_eq!(
        groups(&report["bias"]["axes"]["gender"]),
        named(&[("female", 1), ("male", 1)])
    );
}

#[test]
fn custom_lists_from_flags_and_config() {
    let tmp = tempfile::tempdir().unwrap();
    let input = write(
        &tmp.path().join("in"),
        "a.txt",
        "The cat and the dog met another cat near the old barn.",
    );
    let terms = write(
        tmp.path(),
        "terms.txt",
        "# pets\n[pets]\nfeline: cat, cats\ncanine: dog, dogs\n",
    );
    let pairs = write(tmp.path(), "pairs.txt", "cat | dog\ncats | dogs\n");
    let config = write(
        tmp.path(),
        "config.json",
        &json!({"augment": "counterfactual", "counterfactual-pairs": pairs}).to_string(),
    );
    let out = tmp.path().join("out");
    let report = run_ok(
        &input,
        &out,
        &[
            "--config",
            config.to_str().unwrap(),
            "--bias-terms",
            terms.to_str().unwrap(),
        ],
    );
    assert_eq!(report["bias"]["lexicon"], terms.to_str().unwrap());
    let pets = &report["bias"]["axes"]["pets"];
    assert_eq!(groups(pets), named(&[("feline", 2), ("canine", 1)]));
    assert_eq!(pets["ratio"], 2.0);
    assert_eq!(report["augment"]["pairs"], pairs.to_str().unwrap());
    assert_eq!(report["augment"]["pair_count"], 2);
    let after = &report["augment"]["bias_after"]["axes"]["pets"];
    assert_eq!(groups(after), named(&[("feline", 3), ("canine", 3)]));
    let all: Vec<String> = ["train.jsonl", "eval.jsonl"]
        .iter()
        .flat_map(|f| lines(&out, f))
        .map(|r| texts(&r).remove(0))
        .collect();
    assert!(all.contains(&"The dog and the cat met another dog near the old barn.".to_string()));

    // `--augment none` on the command line overrides the config file.
    let report = run_ok(
        &input,
        &out,
        &["--config", config.to_str().unwrap(), "--augment", "none"],
    );
    assert!(report["augment"].is_null());
    assert_eq!(report["bias"]["lexicon"], "built-in");
}

#[test]
fn malformed_lists_are_usage_errors_naming_the_line() {
    let tmp = tempfile::tempdir().unwrap();
    let input = write(
        &tmp.path().join("in"),
        "a.txt",
        "He met her at the office near the station.",
    );
    let out = tmp.path().join("out");
    let terms = write(
        tmp.path(),
        "terms.txt",
        "[gender]\nfemale: she\nmale: he, she\n",
    );
    let output = prepare(&[
        input.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
        "--bias-terms",
        terms.to_str().unwrap(),
    ]);
    assert_eq!(output.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("terms.txt:3:"), "{stderr}");
    assert!(!out.join("report.json").exists());

    let pairs = write(tmp.path(), "pairs.txt", "he | she\nhe | her\n");
    let output = prepare(&[
        input.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
        "--augment",
        "counterfactual",
        "--counterfactual-pairs",
        pairs.to_str().unwrap(),
    ]);
    assert_eq!(output.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("pairs.txt:2:"), "{stderr}");

    let output = prepare(&[
        input.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
        "--bias-terms",
        tmp.path().join("missing.txt").to_str().unwrap(),
    ]);
    assert_eq!(output.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&output.stderr).contains("missing.txt"));
}
