//! Speculative decoding end to end: the real daemon, real llama.cpp, SmolLM2 (and Qwen for a
//! draft model of another vocabulary). At temperature 0 a speculative answer must be the plain
//! answer byte for byte, alone and batched with plain requests; with sampling the distribution
//! of the first tokens must be the same; and the drafted/accepted counters must move.

mod common;

use common::*;
use inhouse::client::Client;
use serde_json::{json, Value};

/// Copy-heavy prompts (where prompt lookup finds drafts) and free ones (where it rarely does).
const PROMPTS: [&str; 8] = [
    "Repeat this sentence exactly: The quick brown fox jumps over the lazy dog near the river.",
    "Fix the spelling and write the text again: Teh weather is nice todya and the childern \
     play in the park untill dinner.",
    "Extract the name and city as JSON with keys name and city: Maria Lopez lives in Seville \
     and works as a nurse.",
    "Why is the sky blue?",
    "Copy this list, one item per line: apples, pears, plums, grapes, lemons, cherries.",
    "Write a haiku about rain.",
    "Rewrite in capital letters: the meeting starts at nine in the small room upstairs.",
    "Name three colours.",
];

fn body(i: usize, speculative: bool) -> Value {
    chat_body(
        "smol",
        PROMPTS[i],
        json!({"temperature": 0, "max_tokens": 48, "speculative": speculative,
               "logprobs": true, "top_logprobs": 2}),
    )
}

/// A token and its log-probability.
type Scored = (String, f64);

/// A greedy answer: its tokens, each with its log-probability and the runner-up's.
#[derive(Debug, Clone, PartialEq)]
struct Greedy {
    text: String,
    tokens: Vec<(String, f64, Option<Scored>)>,
}

async fn answer_of(c: &Client, b: &Value) -> Greedy {
    let (status, v) = post(c, "/v1/chat/completions", &b.to_string()).await;
    assert_eq!(status, 200, "{v}");
    let tokens = v["choices"][0]["logprobs"]["content"]
        .as_array()
        .expect("logprobs")
        .iter()
        .map(|t| {
            let second = t["top_logprobs"].as_array().and_then(|top| {
                top.iter().find(|x| x["token"] != t["token"]).map(|x| {
                    (
                        x["token"].as_str().unwrap().to_string(),
                        x["logprob"].as_f64().unwrap(),
                    )
                })
            });
            (
                t["token"].as_str().unwrap().to_string(),
                t["logprob"].as_f64().unwrap(),
                second,
            )
        })
        .collect();
    Greedy {
        text: answer(&v),
        tokens,
    }
}

/// The speculative answer is the plain one, byte for byte; on a difference, says where they
/// part and how close the plain run's two best tokens were there.
fn assert_same(i: usize, plain: &Greedy, spec: &Greedy, what: &str) {
    if plain.text == spec.text {
        return;
    }
    let at = plain
        .tokens
        .iter()
        .zip(&spec.tokens)
        .position(|(a, b)| a.0 != b.0);
    let detail = match at {
        Some(at) => format!(
            "token {at}: plain {:?} (runner-up {:?}), speculative {:?}",
            plain.tokens[at], plain.tokens[at].2, spec.tokens[at]
        ),
        None => "the same tokens, another text".to_string(),
    };
    panic!(
        "prompt {i} ({what}) differs at {detail}\nplain: {:?}\nspeculative: {:?}",
        plain.text, spec.text
    );
}

fn counters(text: &str) -> (f64, f64) {
    let e = parse_metrics(text);
    (
        e.get("inhouse_speculative_drafted_tokens_total{model=\"smol\"}"),
        e.get("inhouse_speculative_accepted_tokens_total{model=\"smol\"}"),
    )
}

/// Prompt lookup on `smol`, 8 slots, drafting in batches of all 8 whatever it costs (so that
/// the batched run really mixes speculative and plain sequences in one decode).
const NGRAM_CONFIG: &str = "[limits]\nper-uid-concurrency = 16\n\
    [speculative]\nmode = \"ngram\"\nmax-batch = 8\nverify-cost = 0.0\n";

#[test]
fn ngram_speculation_gives_the_plain_text_alone_and_in_a_mixed_batch() {
    let d = Daemon::start(
        &[("smol", &smollm2())],
        &["--slots", "8", "--config", &config_file(NGRAM_CONFIG)],
    );
    rt().block_on(async {
        let c = d.client();
        // Alone, with speculation, first: no answer to the same prompt exists yet, so drafts
        // come from the prompt and the text so far.
        let mut cold = Vec::new();
        for i in 0..PROMPTS.len() {
            cold.push(answer_of(&c, &body(i, true)).await);
        }
        let (d1, a1) = counters(&metrics_when_idle(&c, "smol").await);
        assert!(a1 > 0.0 && d1 >= a1, "drafted {d1}, accepted {a1}");
        eprintln!("alone: drafted {d1}, accepted {a1}");
        // Then each prompt plainly, and at once again with speculation: the repeat reuses the
        // slot of the plain run and drafts from the answer it gave (the previous request's
        // continuation), nearly all of it accepted.
        let mut plain = Vec::new();
        let (mut dr, mut ar) = (0.0, 0.0);
        for (i, prompt) in PROMPTS.iter().enumerate() {
            let before = counters(&metrics_when_idle(&c, "smol").await);
            let a = answer_of(&c, &body(i, false)).await;
            assert!(!a.text.is_empty(), "empty answer to {prompt:?}");
            assert_same(i, &a, &cold[i], "alone");
            let after = counters(&metrics_when_idle(&c, "smol").await);
            assert_eq!(after, before, "a plain request drafted");
            let again = answer_of(&c, &body(i, true)).await;
            assert_same(i, &a, &again, "repeated");
            let (d, acc) = counters(&metrics_when_idle(&c, "smol").await);
            (dr, ar) = (dr + d - after.0, ar + acc - after.1);
            plain.push(a);
        }
        eprintln!("repeated: drafted {dr}, accepted {ar}");
        assert!(
            ar >= 0.9 * dr && ar > a1,
            "a repeated request drafts from its earlier answer: drafted {dr}, accepted {ar} \
             (cold: {a1} of {d1})"
        );
        let (d1, a1) = (d1 + dr, a1 + ar);
        // Eight at once, every other one speculative; then all eight speculative.
        for (what, on) in [
            ("mixed batch", [true, false]),
            ("speculative batch", [true, true]),
        ] {
            let together = futures_util::future::join_all(
                (0..PROMPTS.len()).map(|i| answer_of_owned(c.clone(), body(i, on[i % 2]))),
            )
            .await;
            for (i, (want, got)) in plain.iter().zip(&together).enumerate() {
                assert_same(i, want, got, what);
            }
        }
        let (d2, a2) = counters(&metrics_when_idle(&c, "smol").await);
        assert!(a2 > a1 && d2 > d1, "no drafts in the batches");
        eprintln!("batched: drafted {}, accepted {}", d2 - d1, a2 - a1);
    });
}

async fn answer_of_owned(c: Client, b: Value) -> Greedy {
    answer_of(&c, &b).await
}

/// Writes `toml` to a config file that lives as long as the test process (tests are short).
fn config_file(toml: &str) -> String {
    let dir = tempfile::tempdir().unwrap().keep();
    let path = dir.join("inhouse.toml");
    std::fs::write(&path, toml).unwrap();
    path.to_str().unwrap().to_string()
}

/// The text of the first generated tokens, one per run, for seeds `seeds`, 8 requests at a time.
async fn first_tokens(c: &Client, seeds: std::ops::Range<u64>, speculative: bool) -> Vec<String> {
    let mut out = Vec::new();
    let seeds: Vec<u64> = seeds.collect();
    for chunk in seeds.chunks(8) {
        let answers = futures_util::future::join_all(chunk.iter().map(|&seed| {
            let c = c.clone();
            async move {
                let b = json!({
                    "model": "smol",
                    "prompt": "Colours: red, green, blue, yellow. Colours: red, green,",
                    "temperature": 1.0,
                    "top_k": 0,
                    "min_p": 0,
                    "seed": seed,
                    "max_tokens": 4,
                    "speculative": speculative,
                });
                let (status, v) = post(&c, "/v1/completions", &b.to_string()).await;
                assert_eq!(status, 200, "{v}");
                v["choices"][0]["text"].as_str().unwrap().to_string()
            }
        }))
        .await;
        out.extend(answers);
    }
    out
}

/// Two-sample chi-square test of homogeneity: the statistic and its degrees of freedom, with
/// categories seen fewer than 10 times in both samples together pooled into one.
fn chi_square(a: &[String], b: &[String]) -> (f64, usize) {
    use std::collections::BTreeMap;
    let mut counts: BTreeMap<&str, (f64, f64)> = BTreeMap::new();
    for x in a {
        counts.entry(x).or_default().0 += 1.0;
    }
    for x in b {
        counts.entry(x).or_default().1 += 1.0;
    }
    let mut cells: Vec<(f64, f64)> = Vec::new();
    let mut rare = (0.0, 0.0);
    for &(x, y) in counts.values() {
        if x + y < 10.0 {
            rare.0 += x;
            rare.1 += y;
        } else {
            cells.push((x, y));
        }
    }
    if rare.0 + rare.1 > 0.0 {
        cells.push(rare);
    }
    let (na, nb) = (a.len() as f64, b.len() as f64);
    let n = na + nb;
    let stat = cells
        .iter()
        .map(|&(x, y)| {
            let t = x + y;
            let (ea, eb) = (t * na / n, t * nb / n);
            (x - ea).powi(2) / ea + (y - eb).powi(2) / eb
        })
        .sum();
    (stat, cells.len().saturating_sub(1))
}

#[test]
fn with_sampling_speculation_keeps_the_distribution_of_the_first_tokens() {
    let d = Daemon::start(
        &[("smol", &smollm2())],
        &["--slots", "8", "--config", &config_file(NGRAM_CONFIG)],
    );
    rt().block_on(async {
        let c = d.client();
        // Different seeds on each side: a test of the distribution, not of the random stream.
        let runs = 240;
        let off = first_tokens(&c, 0..runs, false).await;
        let before = counters(&metrics_when_idle(&c, "smol").await);
        let on = first_tokens(&c, 10_000..10_000 + runs, true).await;
        let after = counters(&metrics_when_idle(&c, "smol").await);
        assert!(
            after.1 > before.1,
            "no draft accepted: the test shows nothing"
        );
        let (stat, df) = chi_square(&off, &on);
        // Tolerance: reject at a false-alarm rate of 0.1% — the chi-square statistic's upper
        // 0.001 quantile, from the Wilson–Hilferty approximation (z = 3.09).
        let k = df.max(1) as f64;
        let z = 3.09;
        let limit = k * (1.0 - 2.0 / (9.0 * k) + z * (2.0 / (9.0 * k)).sqrt()).powi(3);
        let distinct = |v: &[String]| v.iter().collect::<std::collections::BTreeSet<_>>().len();
        eprintln!(
            "chi-square {stat:.1} on {df} df (limit {limit:.1}); {} distinct off, {} on; \
             drafted {}, accepted {}",
            distinct(&off),
            distinct(&on),
            after.0 - before.0,
            after.1 - before.1
        );
        assert!(df >= 1, "the answers do not vary: sampling shows nothing");
        assert!(
            stat < limit,
            "the first tokens are distributed differently with speculation: chi-square {stat:.1} \
             on {df} df ≥ {limit:.1}"
        );
    });
}

#[test]
fn a_model_as_its_own_draft_gives_the_plain_text_and_shows_its_acceptance() {
    // The draft drafts greedily with the target's own weights: nearly every draft is accepted,
    // and the answers are the plain ones.
    let config = "[limits]\nper-uid-concurrency = 16\n\
        [speculative]\nmode = \"draft\"\nmax-batch = 8\ndraft-max = 4\nverify-cost = 0.0\n\
        draft-cost = 0.0\n\
        [speculative.drafts]\nsmol = \"smol\"\n";
    let d = Daemon::start(
        &[("smol", &smollm2())],
        &["--slots", "8", "--config", &config_file(config)],
    );
    rt().block_on(async {
        let c = d.client();
        let mut plain = Vec::new();
        for i in 0..PROMPTS.len() {
            plain.push(answer_of(&c, &body(i, false)).await);
        }
        for (i, want) in plain.iter().enumerate() {
            let got = answer_of(&c, &body(i, true)).await;
            assert_same(i, want, &got, "draft alone");
        }
        let together = futures_util::future::join_all(
            (0..PROMPTS.len()).map(|i| answer_of_owned(c.clone(), body(i, i % 2 == 0))),
        )
        .await;
        for (i, (want, got)) in plain.iter().zip(&together).enumerate() {
            assert_same(i, want, got, "draft, mixed batch");
        }
        let (drafted, accepted) = counters(&metrics_when_idle(&c, "smol").await);
        eprintln!("own draft: drafted {drafted}, accepted {accepted}");
        assert!(
            accepted >= 0.8 * drafted && drafted > 0.0,
            "a model drafting for itself: drafted {drafted}, accepted {accepted}"
        );
        // `inhouse models ps` shows the acceptance rate.
        let ps = ok(&cli(&d, &["models", "ps"]));
        let line = ps
            .lines()
            .find(|l| l.starts_with("smol\t"))
            .unwrap_or_else(|| panic!("no smol in {ps}"));
        let want = format!("{:.0}% of {drafted}", 100.0 * accepted / drafted);
        assert!(line.contains(&want), "{want:?} not in {line:?}");
    });
}

#[test]
fn a_draft_model_with_another_vocabulary_is_refused_at_load() {
    let dir = tempfile::tempdir().unwrap();
    let key = dir.path().join("master.key");
    inhouse::crypto::generate_key_file(&key).unwrap();
    let config = dir.path().join("inhouse.toml");
    std::fs::write(
        &config,
        "[speculative.models.smol]\nmode = \"draft\"\n[speculative.drafts]\nsmol = \"qwen\"\n",
    )
    .unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_inhoused"))
        .arg("--socket")
        .arg(dir.path().join("s.sock"))
        .arg("--state-dir")
        .arg(dir.path())
        .arg("--key-file")
        .arg(&key)
        .args(["--threads", "2", "--ctx-size", "512", "--config"])
        .arg(&config)
        .arg("--model")
        .arg(format!("smol={}", smollm2().display()))
        .arg("--model")
        .arg(format!("qwen={}", qwen().display()))
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "started with a mismatched draft");
    assert!(
        stderr.contains("draft model \"qwen\" has another vocabulary than \"smol\"")
            && stderr.contains("151936 tokens against 49152"),
        "{stderr}"
    );
}
