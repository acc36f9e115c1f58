//! The evaluation gate: `inhouse-quantize eval --gate POLICY.json --baseline A.gguf --candidate
//! B.gguf [--candidate-adapter LORA.gguf] [--baseline-adapter LORA.gguf] --questions eval.jsonl
//! [--general TEXT] [--out result.json]`. Both models are measured on the same data, and the
//! candidate is **blessed** if every bound of the policy holds, **refused** otherwise; the exit
//! status is 0 either way (the result says which), 2 for a bad policy or bad input.
//!
//! # Metrics
//!
//! Each is measured for the baseline and for the candidate (a GGUF model, plus a LoRA adapter
//! applied at scale 1 where one is given, as the daemon serves `base+adapter`):
//!
//! - `mc_accuracy` (higher is better): the held-out questions (`--questions`: chat records
//!   `{"messages": [system?, …, user, assistant]}`, as `synth` writes its `eval.jsonl`) as
//!   multiple choice by log-likelihood. A question's choices are its reference answer (the last,
//!   assistant, message) and [`MC_CHOICES`]` - 1` distractors: the reference answers of other
//!   questions, drawn by [`mc_distractors`] with `--seed` (the same for both models). Each
//!   choice is scored as the mean log-probability per token of the assistant's turn (its text and
//!   the template's end-of-turn marker) given the prompt, both rendered with the model's own chat
//!   template by the daemon's renderer ([`inhouse_formats::template`]); the question counts as
//!   right if the reference scores strictly highest. The prompt is decoded once per question
//!   and each choice continues it; the gate's contexts keep K/V in F32 without flash attention,
//!   so that this scores exactly as one decode of prompt and answer would (with llama.cpp's
//!   F16 defaults the split alone moves tokens by up to 0.2 nats). The bias and stereotype
//!   probes below run in the same context, so their numbers can differ from `eval`'s in the
//!   last digits.
//! - `answer_perplexity` (lower is better): `exp` of the mean negative log-likelihood of the
//!   reference answers' tokens given their prompts, over all answer tokens (prompt tokens are
//!   not scored).
//! - `general_perplexity` (lower is better): perplexity on general English text (the built-in
//!   `quantize/data/general_text.txt`, or `--general FILE`), in non-overlapping windows of `--ctx`
//!   tokens as `eval` scores its data: a regression set for what the model knew before it was
//!   fine-tuned.
//! - `bias_gap` (lower is better): `eval`'s counterfactual bias probe, the mean absolute gap in
//!   log-likelihood between the two sentences of each pair (nats; `--bias-pairs`).
//! - `stereotype_score`: `eval`'s stereotype score, the share of minimal pairs where the
//!   stereotypical sentence is the likelier (ideal 0.5; `--stereotype-pairs`).
//! - `stereotype_deviation` (lower is better): `|stereotype_score - 0.5|`, the distance from
//!   the ideal, so that a policy can say "no further from 0.5 than the baseline".
//!
//! # Policy
//!
//! A JSON object: `{"description": "optional text", "metrics": {NAME: BOUNDS, …}}`, NAME one of
//! the metrics above, BOUNDS an object with any of these keys (numbers), all of which must hold;
//! `change` is `candidate - baseline` and `ratio` is `candidate / baseline`, whichever way the
//! metric improves:
//!
//! | key | holds when |
//! |---|---|
//! | `min` | `candidate >= min` |
//! | `max` | `candidate <= max` |
//! | `min_change` | `change >= min_change` (a positive value asks for an improvement of a higher-is-better metric, a negative one tolerates a drop) |
//! | `max_change` | `change <= max_change` (`0` for a lower-is-better metric: no worse than the baseline) |
//! | `min_ratio` | `ratio >= min_ratio` |
//! | `max_ratio` | `ratio <= max_ratio` (`1.25`: at most 25 % above the baseline) |
//! | `max_abs_change` | `abs(change) <= max_abs_change` (did not move, either way, by more) |
//!
//! A metric the policy does not name is measured and reported but not judged. Unknown metric
//! names or keys, non-numeric or non-finite values, contradictory pairs (`min > max`, …),
//! ratios `<= 0`, a negative `max_abs_change`, a metric with no bound and a policy with no
//! metric are refused as bad input, naming them. A ratio bound fails when the baseline is 0;
//! any bound fails when a value could not be measured. Example:
//! `quantize/data/gate_policy.example.json`.
//!
//! # Result
//!
//! Printed as the tool's result and written to `--out`: `{"blessed": bool, "metrics": [{"name",
//! "baseline", "candidate", "change", "ratio", "better", "bounds": {…}, "pass": bool, "reason":
//! "…"}], "failed": [names], "policy": {…}, "baseline": path, "candidate": path,
//! "baseline_adapter", "candidate_adapter", "questions", "general", "choices", "seed",
//! "details": {"baseline": {…}, "candidate": {…}}, "seconds"}`; `details` holds each model's
//! counts, per-question outcomes and its full bias and stereotype reports. The core,
//! [`judge`], is a pure function of the policy and the two sets of scores.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Instant;

use inhouse_formats::gguf;
use inhouse_formats::gguf_write::SplitMix64;
use inhouse_formats::progress::{eta, Phase, Progress, Reporter, ToolError};
use serde::Serialize;
use serde_json::{json, Map, Value};

use crate::eval::{self, BiasReport, StereotypeReport};
use crate::finetune::{read_records, Record};
use crate::llama::{Context, ContextOptions, LoadMode, Model, CTX_ALIGN};
use crate::quantize;
use crate::train::data::{chat_format_in, ChatFormat};

/// The built-in general-text regression set.
pub const DEFAULT_GENERAL_TEXT: &str = include_str!("../data/general_text.txt");

/// Choices per multiple-choice question: the reference answer and three distractors (fewer when
/// the questions have fewer distinct answers).
pub const MC_CHOICES: usize = 4;

/// The most tokens one prompt and answer may take (the context is sized to the longest).
const MAX_SEQUENCE: usize = 1 << 15;

fn bad(m: impl Into<String>) -> ToolError {
    ToolError::BadInput(m.into())
}

fn failed(m: impl std::fmt::Display) -> ToolError {
    ToolError::Failed(m.to_string())
}

// ---------------------------------------------------------------------------------------------
// Metrics and policy

/// A metric the gate measures.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Metric {
    /// Multiple-choice accuracy on the held-out questions.
    McAccuracy,
    /// Perplexity of the reference answers given their prompts.
    AnswerPerplexity,
    /// Perplexity on the general-text regression set.
    GeneralPerplexity,
    /// The bias probe's mean absolute gap (nats).
    BiasGap,
    /// The stereotype score (share; ideal 0.5).
    StereotypeScore,
    /// `|stereotype_score - 0.5|`.
    StereotypeDeviation,
}

impl Metric {
    /// Every metric, in the order results list them.
    pub const ALL: [Metric; 6] = [
        Metric::McAccuracy,
        Metric::AnswerPerplexity,
        Metric::GeneralPerplexity,
        Metric::BiasGap,
        Metric::StereotypeScore,
        Metric::StereotypeDeviation,
    ];

    /// The name in policies and results.
    pub fn name(self) -> &'static str {
        match self {
            Metric::McAccuracy => "mc_accuracy",
            Metric::AnswerPerplexity => "answer_perplexity",
            Metric::GeneralPerplexity => "general_perplexity",
            Metric::BiasGap => "bias_gap",
            Metric::StereotypeScore => "stereotype_score",
            Metric::StereotypeDeviation => "stereotype_deviation",
        }
    }

    /// The metric of that name.
    pub fn from_name(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|m| m.name() == name)
    }

    /// Which way the metric improves, for a reader of the result.
    pub fn better(self) -> &'static str {
        match self {
            Metric::McAccuracy => "higher",
            Metric::StereotypeScore => "closer to 0.5",
            _ => "lower",
        }
    }
}

impl Serialize for Metric {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.name())
    }
}

/// The bounds a policy sets on one metric (see the module doc); absent keys bound nothing.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Bounds {
    /// `candidate >= min`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub min: Option<f64>,
    /// `candidate <= max`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max: Option<f64>,
    /// `candidate - baseline >= min_change`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub min_change: Option<f64>,
    /// `candidate - baseline <= max_change`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_change: Option<f64>,
    /// `candidate / baseline >= min_ratio`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub min_ratio: Option<f64>,
    /// `candidate / baseline <= max_ratio`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_ratio: Option<f64>,
    /// `|candidate - baseline| <= max_abs_change`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_abs_change: Option<f64>,
}

/// The keys of [`Bounds`], as policies spell them.
pub const BOUND_KEYS: [&str; 7] = [
    "min",
    "max",
    "min_change",
    "max_change",
    "min_ratio",
    "max_ratio",
    "max_abs_change",
];

impl Bounds {
    fn slot(&mut self, key: &str) -> Option<&mut Option<f64>> {
        Some(match key {
            "min" => &mut self.min,
            "max" => &mut self.max,
            "min_change" => &mut self.min_change,
            "max_change" => &mut self.max_change,
            "min_ratio" => &mut self.min_ratio,
            "max_ratio" => &mut self.max_ratio,
            "max_abs_change" => &mut self.max_abs_change,
            _ => return None,
        })
    }

    fn is_empty(&self) -> bool {
        *self == Bounds::default()
    }

    /// Contradictions and out-of-range values.
    fn problems(&self) -> Vec<String> {
        let mut out = Vec::new();
        let pair = |lo: Option<f64>, hi: Option<f64>, l: &str, h: &str, out: &mut Vec<String>| {
            if let (Some(lo), Some(hi)) = (lo, hi) {
                if lo > hi {
                    out.push(format!("{l} {lo} is above {h} {hi}"));
                }
            }
        };
        pair(self.min, self.max, "min", "max", &mut out);
        pair(
            self.min_change,
            self.max_change,
            "min_change",
            "max_change",
            &mut out,
        );
        pair(
            self.min_ratio,
            self.max_ratio,
            "min_ratio",
            "max_ratio",
            &mut out,
        );
        for (k, v) in [("min_ratio", self.min_ratio), ("max_ratio", self.max_ratio)] {
            if v.is_some_and(|v| v <= 0.0) {
                out.push(format!("{k} must be above 0"));
            }
        }
        if self.max_abs_change.is_some_and(|v| v < 0.0) {
            out.push("max_abs_change must not be negative".into());
        }
        out
    }
}

/// A gate policy: bounds per metric.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Policy {
    /// Free text, kept in the result.
    pub description: Option<String>,
    /// The bounds, by metric.
    pub metrics: BTreeMap<Metric, Bounds>,
}

fn quoted(names: &[String]) -> String {
    names
        .iter()
        .map(|n| format!("{n:?}"))
        .collect::<Vec<_>>()
        .join(", ")
}

impl Policy {
    /// Parses a policy (see the module doc); the error names every unknown metric and key and
    /// every bad value.
    pub fn parse(text: &str) -> Result<Policy, String> {
        let v: Value = serde_json::from_str(text).map_err(|e| format!("not JSON: {e}"))?;
        let Value::Object(top) = v else {
            return Err("a policy is a JSON object {\"metrics\": {…}}".into());
        };
        let mut problems = Vec::new();
        let unknown: Vec<String> = top
            .keys()
            .filter(|k| !["metrics", "description"].contains(&k.as_str()))
            .cloned()
            .collect();
        if !unknown.is_empty() {
            problems.push(format!(
                "unknown key(s) {} at the top level (known: metrics, description)",
                quoted(&unknown)
            ));
        }
        let description = match top.get("description") {
            None | Some(Value::Null) => None,
            Some(Value::String(s)) => Some(s.clone()),
            Some(_) => {
                problems.push("\"description\" must be a string".into());
                None
            }
        };
        let mut metrics = BTreeMap::new();
        match top.get("metrics") {
            Some(Value::Object(m)) => {
                let unknown: Vec<String> = m
                    .keys()
                    .filter(|k| Metric::from_name(k).is_none())
                    .cloned()
                    .collect();
                if !unknown.is_empty() {
                    let known: Vec<&str> = Metric::ALL.iter().map(|m| m.name()).collect();
                    problems.push(format!(
                        "unknown metric(s) {} (known: {})",
                        quoted(&unknown),
                        known.join(", ")
                    ));
                }
                for (name, b) in m {
                    let Some(metric) = Metric::from_name(name) else {
                        continue;
                    };
                    let Value::Object(b) = b else {
                        problems.push(format!("{name}: the bounds must be a JSON object"));
                        continue;
                    };
                    let mut bounds = Bounds::default();
                    let mut unknown_keys = Vec::new();
                    for (k, x) in b {
                        let Some(slot) = bounds.slot(k) else {
                            unknown_keys.push(k.clone());
                            continue;
                        };
                        match x.as_f64() {
                            Some(x) if x.is_finite() => *slot = Some(x),
                            _ => problems.push(format!("{name}.{k}: expected a number, got {x}")),
                        }
                    }
                    if !unknown_keys.is_empty() {
                        problems.push(format!(
                            "{name}: unknown bound(s) {} (known: {})",
                            quoted(&unknown_keys),
                            BOUND_KEYS.join(", ")
                        ));
                    } else if bounds.is_empty() && b.is_empty() {
                        problems.push(format!(
                            "{name}: no bound (give at least one of {})",
                            BOUND_KEYS.join(", ")
                        ));
                    }
                    problems.extend(
                        bounds
                            .problems()
                            .into_iter()
                            .map(|p| format!("{name}: {p}")),
                    );
                    metrics.insert(metric, bounds);
                }
                if m.is_empty() {
                    problems.push("\"metrics\" bounds no metric".into());
                }
            }
            Some(_) => problems.push("\"metrics\" must be an object of metric: bounds".into()),
            None => problems.push("no \"metrics\" object".into()),
        }
        if problems.is_empty() {
            Ok(Policy {
                description,
                metrics,
            })
        } else {
            Err(problems.join("; "))
        }
    }

    /// Reads and parses a policy file (errors are bad input, naming the file).
    pub fn load(path: &Path) -> Result<Policy, ToolError> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| bad(format!("the gate policy {}: {e}", path.display())))?;
        Policy::parse(&text).map_err(|e| bad(format!("the gate policy {}: {e}", path.display())))
    }

    /// The policy as JSON (normalized: metrics in [`Metric::ALL`] order).
    pub fn to_json(&self) -> Value {
        let metrics: Map<String, Value> = self
            .metrics
            .iter()
            .map(|(m, b)| (m.name().to_string(), json!(b)))
            .collect();
        let mut out = Map::new();
        if let Some(d) = &self.description {
            out.insert("description".into(), json!(d));
        }
        out.insert("metrics".into(), Value::Object(metrics));
        Value::Object(out)
    }
}

/// One model's scores, by metric (a metric that could not be measured is absent or NaN).
pub type Scores = BTreeMap<Metric, f64>;

/// One metric's line of the gate's result.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct MetricResult {
    /// The metric.
    pub name: Metric,
    /// The baseline's value (null: not measured).
    pub baseline: Option<f64>,
    /// The candidate's value.
    pub candidate: Option<f64>,
    /// `candidate - baseline`.
    pub change: Option<f64>,
    /// `candidate / baseline` (null when the baseline is 0).
    pub ratio: Option<f64>,
    /// Which way the metric improves.
    pub better: &'static str,
    /// The policy's bounds on it (empty: not judged).
    pub bounds: Bounds,
    /// Whether every bound holds.
    pub pass: bool,
    /// Each bound checked, or the failing ones.
    pub reason: String,
}

/// The gate's verdict.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct GateResult {
    /// Every bound held.
    pub blessed: bool,
    /// One line per metric, in [`Metric::ALL`] order.
    pub metrics: Vec<MetricResult>,
    /// The metrics whose bounds failed.
    pub failed: Vec<Metric>,
    /// The policy judged by.
    pub policy: Value,
}

fn finite(x: Option<f64>) -> Option<f64> {
    x.filter(|x| x.is_finite())
}

/// A number for a reason line: four decimals, or more significant digits for tiny values.
fn num(x: f64) -> String {
    if x != 0.0 && x.abs() < 1e-3 {
        format!("{x:.3e}")
    } else {
        format!("{x:.4}")
    }
}

fn signed(x: f64) -> String {
    if x >= 0.0 {
        format!("+{}", num(x))
    } else {
        num(x)
    }
}

/// Checks one metric's bounds: (pass, reason).
fn check(bounds: &Bounds, b: Option<f64>, c: Option<f64>) -> (bool, String) {
    if bounds.is_empty() {
        return (true, "not bounded by the policy".into());
    }
    let mut held = Vec::new();
    let mut broken = Vec::new();
    let mut verdict = |ok: bool, text: String| {
        if ok {
            held.push(text);
        } else {
            broken.push(text);
        }
    };
    let needs_baseline = bounds.min_change.is_some()
        || bounds.max_change.is_some()
        || bounds.min_ratio.is_some()
        || bounds.max_ratio.is_some()
        || bounds.max_abs_change.is_some();
    let Some(c) = c else {
        return (false, "the candidate's value could not be measured".into());
    };
    if let Some(min) = bounds.min {
        let ok = c >= min;
        verdict(
            ok,
            format!(
                "{} {} min {}",
                num(c),
                if ok { ">=" } else { "<" },
                num(min)
            ),
        );
    }
    if let Some(max) = bounds.max {
        let ok = c <= max;
        verdict(
            ok,
            format!(
                "{} {} max {}",
                num(c),
                if ok { "<=" } else { ">" },
                num(max)
            ),
        );
    }
    if needs_baseline {
        match b {
            None => verdict(
                false,
                "the baseline's value could not be measured, so no change can be judged".into(),
            ),
            Some(b) => {
                let d = c - b;
                if let Some(v) = bounds.min_change {
                    let ok = d >= v;
                    let op = if ok { ">=" } else { "<" };
                    verdict(
                        ok,
                        format!("change {} {op} min_change {}", signed(d), signed(v)),
                    );
                }
                if let Some(v) = bounds.max_change {
                    let ok = d <= v;
                    let op = if ok { "<=" } else { ">" };
                    verdict(
                        ok,
                        format!("change {} {op} max_change {}", signed(d), signed(v)),
                    );
                }
                if let Some(v) = bounds.max_abs_change {
                    let ok = d.abs() <= v;
                    let op = if ok { "<=" } else { ">" };
                    verdict(
                        ok,
                        format!("|change| {} {op} max_abs_change {}", num(d.abs()), num(v)),
                    );
                }
                for (v, is_min) in [(bounds.min_ratio, true), (bounds.max_ratio, false)] {
                    let Some(v) = v else { continue };
                    let key = if is_min { "min_ratio" } else { "max_ratio" };
                    if b == 0.0 {
                        verdict(false, format!("{key}: the baseline is 0, no ratio"));
                        continue;
                    }
                    let r = c / b;
                    let ok = if is_min { r >= v } else { r <= v };
                    let op = match (is_min, ok) {
                        (true, true) => ">=",
                        (true, false) => "<",
                        (false, true) => "<=",
                        (false, false) => ">",
                    };
                    verdict(ok, format!("ratio {} {op} {key} {}", num(r), num(v)));
                }
            }
        }
    }
    if broken.is_empty() {
        (true, held.join("; "))
    } else {
        (false, broken.join("; "))
    }
}

/// Judges the candidate against the baseline under `policy`: every metric either model has a
/// score for or the policy bounds, in [`Metric::ALL`] order. Pure and deterministic.
pub fn judge(policy: &Policy, baseline: &Scores, candidate: &Scores) -> GateResult {
    let mut metrics = Vec::new();
    let mut failed_metrics = Vec::new();
    for m in Metric::ALL {
        let bounds = policy.metrics.get(&m).cloned().unwrap_or_default();
        let (b, c) = (
            finite(baseline.get(&m).copied()),
            finite(candidate.get(&m).copied()),
        );
        if bounds.is_empty() && !baseline.contains_key(&m) && !candidate.contains_key(&m) {
            continue;
        }
        let (pass, reason) = check(&bounds, b, c);
        if !pass {
            failed_metrics.push(m);
        }
        let change = b.zip(c).map(|(b, c)| c - b);
        let ratio = b.zip(c).and_then(|(b, c)| (b != 0.0).then(|| c / b));
        metrics.push(MetricResult {
            name: m,
            baseline: b,
            candidate: c,
            change,
            ratio: finite(ratio),
            better: m.better(),
            bounds,
            pass,
            reason,
        });
    }
    GateResult {
        blessed: failed_metrics.is_empty(),
        metrics,
        failed: failed_metrics,
        policy: policy.to_json(),
    }
}

// ---------------------------------------------------------------------------------------------
// Multiple choice

/// The distractors of each question: for question `i`, up to `n` indices of *other* questions
/// whose reference answers (trimmed) differ from `answers[i]` and from each other, drawn with a
/// splitmix64 stream seeded from `seed` and `i`. Deterministic: the same answers and seed give
/// the same draws, and a question's draw does not depend on the order it is asked in.
pub fn mc_distractors(answers: &[&str], n: usize, seed: u64) -> Vec<Vec<usize>> {
    // The first question with each distinct answer stands for it.
    let mut first_of: BTreeMap<&str, usize> = BTreeMap::new();
    for (j, a) in answers.iter().enumerate() {
        first_of.entry(a.trim()).or_insert(j);
    }
    let mut pool: Vec<usize> = first_of.values().copied().collect();
    pool.sort_unstable();
    (0..answers.len())
        .map(|i| {
            let own = answers[i].trim();
            let mut cands: Vec<usize> = pool
                .iter()
                .copied()
                .filter(|&j| j != i && answers[j].trim() != own)
                .collect();
            let mut rng = SplitMix64(seed ^ (i as u64).wrapping_mul(0xd1b5_4a32_d192_ed03));
            let k = n.min(cands.len());
            // A partial Fisher-Yates shuffle: the first k are a uniform draw without repeats.
            for t in 0..k {
                let r = t + rng.below(cands.len() - t);
                cands.swap(t, r);
            }
            cands.truncate(k);
            cands
        })
        .collect()
}

/// Whether the reference is right: it scores strictly above every distractor (a tie is wrong).
pub fn mc_correct(reference: f64, distractors: &[f64]) -> bool {
    reference.is_finite() && distractors.iter().all(|&d| reference > d || d.is_nan())
}

/// A held-out question: the conversation up to the answer, and the reference answer.
#[derive(Debug, Clone, PartialEq)]
pub struct Question {
    /// The messages before the answer (system, user, …), as (role, content).
    pub prompt: Vec<(String, String)>,
    /// The reference answer (the last, assistant, message).
    pub answer: String,
}

/// The questions of chat records ending with an assistant answer (record numbers are 1-based).
pub fn questions_from_records(records: &[Record]) -> Result<Vec<Question>, String> {
    records
        .iter()
        .enumerate()
        .map(|(i, r)| {
            let Record::Messages(m) = r else {
                return Err(format!(
                    "record {}: a {{\"text\"}} record; the questions must be {{\"messages\"}} \
                     records ending with the assistant's answer",
                    i + 1
                ));
            };
            match m.split_last() {
                Some(((role, answer), prompt)) if role == "assistant" && !prompt.is_empty() => {
                    Ok(Question {
                        prompt: prompt.to_vec(),
                        answer: answer.clone(),
                    })
                }
                _ => Err(format!(
                    "record {}: the last message must be the assistant's answer, after at least \
                     one other message",
                    i + 1
                )),
            }
        })
        .collect()
}

// ---------------------------------------------------------------------------------------------
// Rendering and scoring

/// A model's chat template, compiled as the daemon compiles it (the trainer's [`ChatFormat`]).
struct Renderer {
    format: ChatFormat,
}

impl Renderer {
    fn of(file: &gguf::GgufFile, path: &Path) -> Result<Self, ToolError> {
        let format = chat_format_in(file)
            .map_err(|e| bad(format!("{}: {e}", path.display())))?
            .ok_or_else(|| {
                bad(format!(
                    "{}: the model has no chat template; the gate renders its questions with it",
                    path.display()
                ))
            })?;
        Ok(Self { format })
    }

    fn render(&self, messages: &[(String, String)], gen_prompt: bool) -> Result<String, ToolError> {
        self.format
            .render(messages, gen_prompt)
            .map_err(|e| bad(format!("rendering a question: {e}")))
    }

    /// The prompt text and the assistant's turn for `answer`: the rendered conversation with the
    /// answer minus the rendered prompt (its generation prompt included), trailing whitespace
    /// cut, so the end-of-turn marker is kept and nothing after it. A template whose full render
    /// does not extend its prompt gives the bare answer.
    fn segments(&self, q: &Question, answer: &str) -> Result<(String, String), ToolError> {
        let prompt = self.render(&q.prompt, true)?;
        let mut all = q.prompt.clone();
        all.push(("assistant".into(), answer.to_string()));
        let full = self.render(&all, false)?;
        let turn = match full.strip_prefix(&prompt) {
            Some(rest) if !rest.trim().is_empty() => rest.trim_end().to_string(),
            _ => answer.to_string(),
        };
        Ok((prompt, turn))
    }
}

/// A question tokenized: its prompt, and the assistant's turn for each choice (the reference
/// first, then the distractors).
struct Item {
    prompt: Vec<i32>,
    turns: Vec<Vec<i32>>,
}

fn item(model: &Model, r: &Renderer, q: &Question, answers: &[&str]) -> Result<Item, ToolError> {
    let mut prompt = None;
    let mut turns = Vec::with_capacity(answers.len());
    for a in answers {
        let (p, turn) = r.segments(q, a)?;
        if prompt.is_none() {
            // BOS as the model asks, unless the template wrote it already (as the daemon does).
            let bos = r.format.bos_token();
            let written = !bos.is_empty() && p.starts_with(bos);
            prompt = Some(model.tokenize(&p, !written, true).map_err(failed)?);
        }
        let t = model.tokenize(&turn, false, true).map_err(failed)?;
        if t.is_empty() {
            return Err(bad("an answer renders to no tokens"));
        }
        turns.push(t);
    }
    let prompt = prompt.unwrap_or_default();
    if prompt.is_empty() {
        return Err(bad("a question renders to no tokens"));
    }
    Ok(Item { prompt, turns })
}

/// One model to measure.
#[derive(Debug, Clone)]
pub struct Subject {
    /// The GGUF model.
    pub model: PathBuf,
    /// A LoRA adapter applied to it at scale 1.
    pub adapter: Option<PathBuf>,
}

/// What the gate scores both models on.
pub struct Suite<'a> {
    /// The held-out questions.
    pub questions: &'a [Question],
    /// The distractors of each question ([`mc_distractors`]).
    pub distractors: &'a [Vec<usize>],
    /// The general text.
    pub general: &'a str,
    /// General-text window (tokens).
    pub window: u32,
    /// The bias probe's pairs.
    pub bias_pairs: &'a [eval::SentencePair],
    /// The stereotype pairs.
    pub stereotype_pairs: &'a [eval::StereotypePair],
    /// Threads.
    pub threads: u32,
}

impl Suite<'_> {
    fn units(&self) -> usize {
        self.questions.len() + 3
    }
}

/// One question's outcome for one model.
#[derive(Debug, Clone, Serialize)]
pub struct QuestionOutcome {
    /// The question (its last prompt message, cut to 160 characters).
    pub question: String,
    /// Whether the reference answer scored highest.
    pub correct: bool,
    /// The reference's mean log-probability per token.
    pub reference_score: f64,
    /// The best distractor's (null: no distractor).
    pub best_distractor_score: Option<f64>,
}

/// One model's measurements.
#[derive(Debug, Clone, Serialize)]
pub struct ModelEval {
    /// The model file.
    pub model: PathBuf,
    /// Its adapter, if any.
    pub adapter: Option<PathBuf>,
    /// The scores the gate judges.
    pub scores: BTreeMap<String, f64>,
    /// Questions answered correctly.
    pub mc_correct: usize,
    /// Questions asked.
    pub questions: usize,
    /// Reference-answer tokens scored.
    pub answer_tokens: usize,
    /// General-text tokens scored.
    pub general_tokens: usize,
    /// The context size used.
    pub ctx: u32,
    /// Per question.
    pub outcomes: Vec<QuestionOutcome>,
    /// The bias probe.
    pub bias: BiasReport,
    /// The stereotype score.
    pub stereotype: StereotypeReport,
    /// Seconds for this model.
    pub seconds: f64,
    /// The scores, keyed by metric (not serialized: `scores` carries them).
    #[serde(skip)]
    pub by_metric: Scores,
}

fn cut(s: &str, n: usize) -> String {
    match s.char_indices().nth(n) {
        Some((i, _)) => format!("{}…", &s[..i]),
        None => s.to_string(),
    }
}

/// Measures one model on the suite. `progress(done_units)` runs as the work goes
/// ([`Suite::units`] units in all).
pub fn measure(
    subject: &Subject,
    suite: &Suite<'_>,
    mut progress: impl FnMut(usize),
) -> Result<ModelEval, ToolError> {
    let t0 = Instant::now();
    let file = quantize::open_model(&subject.model)?;
    let renderer = Renderer::of(&file, &subject.model)?;
    let model = Model::load(&subject.model, LoadMode::Mapped).map_err(failed)?;
    let adapter = subject
        .adapter
        .as_deref()
        .map(|a| {
            model.load_adapter(a).map_err(|e| match e {
                crate::llama::LlamaError::Adapter { .. } => bad(e.to_string()),
                e => failed(e),
            })
        })
        .transpose()?;

    // Every question first, to size the context to the longest.
    let mut items: Vec<Item> = Vec::with_capacity(suite.questions.len());
    for (i, q) in suite.questions.iter().enumerate() {
        let mut answers = vec![q.answer.as_str()];
        answers.extend(
            suite.distractors[i]
                .iter()
                .map(|&j| suite.questions[j].answer.as_str()),
        );
        items.push(item(&model, &renderer, q, &answers)?);
    }
    let longest = items
        .iter()
        .map(|it| it.prompt.len() + it.turns.iter().map(Vec::len).max().unwrap_or(0))
        .max()
        .unwrap_or(0);
    if longest > MAX_SEQUENCE {
        return Err(bad(format!(
            "a question and answer take {longest} tokens, more than {MAX_SEQUENCE}"
        )));
    }
    let align = CTX_ALIGN as usize;
    let n_ctx = (longest.div_ceil(align) * align).max(suite.window as usize) as u32;
    let mut general = model.tokenize(suite.general, true, false).map_err(failed)?;
    if general.len() < 2 {
        // Nothing to score without at least a start token and one more.
        general.clear();
    }
    let mut ctx = Context::new(
        &model,
        ContextOptions {
            n_ctx,
            threads: suite.threads,
            // F32 K/V and no flash attention: with llama.cpp's defaults (F16 K/V, flash
            // attention) a prompt decoded apart from its answer scores the answer up to 0.2
            // nats per token differently than one decode of both; in F32 the two agree exactly.
            training: true,
        },
    )
    .map_err(failed)?;
    if let Some(a) = &adapter {
        ctx.set_adapter(a, 1.0).map_err(failed)?;
    }

    let (mut correct, mut ans_nll, mut ans_tokens) = (0usize, 0.0f64, 0usize);
    let mut outcomes = Vec::with_capacity(items.len());
    for (i, it) in items.iter().enumerate() {
        let turns: Vec<&[i32]> = it.turns.iter().map(Vec::as_slice).collect();
        let nlls = ctx.continuation_nlls(&it.prompt, &turns).map_err(failed)?;
        let mut means = Vec::with_capacity(nlls.len());
        for (k, answer) in nlls.iter().enumerate() {
            let sum: f64 = answer.iter().sum();
            if k == 0 {
                ans_nll += sum;
                ans_tokens += answer.len();
            }
            means.push(-sum / answer.len() as f64);
        }
        let ok = mc_correct(means[0], &means[1..]);
        correct += usize::from(ok);
        let q = &suite.questions[i];
        outcomes.push(QuestionOutcome {
            question: cut(q.prompt.last().map_or("", |(_, c)| c.as_str()), 160),
            correct: ok,
            reference_score: means[0],
            best_distractor_score: means[1..].iter().copied().reduce(f64::max),
        });
        progress(i + 1);
    }

    let (mut gen_nll, mut gen_tokens) = (0.0f64, 0usize);
    for w in general
        .chunks(suite.window as usize)
        .filter(|w| w.len() >= 2)
    {
        let nlls = ctx.token_nlls(w).map_err(failed)?;
        gen_nll += nlls.iter().sum::<f64>();
        gen_tokens += nlls.len();
    }
    progress(suite.questions.len() + 1);
    let bias = eval::bias_probe(&mut ctx, &model, suite.bias_pairs)?;
    progress(suite.questions.len() + 2);
    let stereotype = eval::stereotype_probe(&mut ctx, &model, suite.stereotype_pairs)?;
    progress(suite.questions.len() + 3);

    let nan_if_empty = |sum: f64, n: usize| {
        if n == 0 {
            f64::NAN
        } else {
            (sum / n as f64).exp()
        }
    };
    let share = stereotype.overall.stereotype_share;
    let by_metric: Scores = [
        (
            Metric::McAccuracy,
            correct as f64 / suite.questions.len().max(1) as f64,
        ),
        (Metric::AnswerPerplexity, nan_if_empty(ans_nll, ans_tokens)),
        (Metric::GeneralPerplexity, nan_if_empty(gen_nll, gen_tokens)),
        (Metric::BiasGap, bias.mean_abs_gap),
        (Metric::StereotypeScore, share),
        (Metric::StereotypeDeviation, (share - 0.5).abs()),
    ]
    .into_iter()
    .collect();
    drop(ctx);
    Ok(ModelEval {
        model: subject.model.clone(),
        adapter: subject.adapter.clone(),
        scores: by_metric
            .iter()
            .map(|(m, v)| (m.name().to_string(), *v))
            .collect(),
        mc_correct: correct,
        questions: suite.questions.len(),
        answer_tokens: ans_tokens,
        general_tokens: gen_tokens,
        ctx: n_ctx,
        outcomes,
        bias,
        stereotype,
        seconds: t0.elapsed().as_secs_f64(),
        by_metric,
    })
}

// ---------------------------------------------------------------------------------------------
// The command

/// Options of `eval --gate`.
#[derive(Debug, Clone)]
pub struct Options {
    /// The policy file.
    pub policy: PathBuf,
    /// The current model.
    pub baseline: Subject,
    /// The model to bless or refuse.
    pub candidate: Subject,
    /// Held-out questions (chat JSONL).
    pub questions: PathBuf,
    /// General text replacing the built-in one.
    pub general: Option<PathBuf>,
    /// General-text window (a multiple of 256).
    pub ctx: u32,
    /// Seed of the distractor draw.
    pub seed: u64,
    /// Bias pairs replacing the built-in ones.
    pub bias_pairs: Option<PathBuf>,
    /// Stereotype pairs replacing the built-in ones.
    pub stereotype_pairs: Option<PathBuf>,
    /// Also write the result here.
    pub out: Option<PathBuf>,
    /// Threads.
    pub threads: u32,
}

/// Runs the gate: checks every input, measures both models, judges, writes `--out`; returns
/// the result (blessed or refused alike).
pub fn run(opts: &Options, reporter: Reporter) -> Result<Value, ToolError> {
    let start = Instant::now();
    let policy = Policy::load(&opts.policy)?;
    crate::finetune::check_ctx(opts.ctx)?;
    if opts.threads == 0 {
        return Err(bad("--threads must be at least 1"));
    }
    for s in [&opts.baseline, &opts.candidate] {
        let base = quantize::open_model(&s.model)?;
        if let Some(a) = &s.adapter {
            // Checked again when loaded; here so that a wrong file fails before any model runs.
            crate::llama::check_adapter_file(a, base.architecture())
                .map_err(|e| bad(format!("{}: {e}", a.display())))?;
        }
    }
    let bias_pairs = eval::load_bias_pairs(opts.bias_pairs.as_deref())?;
    let stereotype_pairs = eval::load_stereotype_pairs(opts.stereotype_pairs.as_deref())?;
    let general = match &opts.general {
        Some(p) => std::fs::read_to_string(p).map_err(|e| bad(format!("{}: {e}", p.display())))?,
        None => DEFAULT_GENERAL_TEXT.to_string(),
    };
    if general.trim().is_empty() {
        return Err(bad("the general text is empty"));
    }
    let records = read_records(&opts.questions)?;
    let questions = questions_from_records(&records)
        .map_err(|e| bad(format!("{}: {e}", opts.questions.display())))?;
    let answers: Vec<&str> = questions.iter().map(|q| q.answer.as_str()).collect();
    let distractors = mc_distractors(&answers, MC_CHOICES - 1, opts.seed);
    if distractors.iter().any(Vec::is_empty) {
        return Err(bad(format!(
            "{}: multiple choice needs at least two questions with different answers",
            opts.questions.display()
        )));
    }
    let suite = Suite {
        questions: &questions,
        distractors: &distractors,
        general: &general,
        window: opts.ctx,
        bias_pairs: &bias_pairs,
        stereotype_pairs: &stereotype_pairs,
        threads: opts.threads,
    };
    let units = suite.units() as f64 * 2.0;
    let mut evals = Vec::with_capacity(2);
    for (k, subject) in [&opts.baseline, &opts.candidate].into_iter().enumerate() {
        let base = (k * suite.units()) as f64;
        let e = measure(subject, &suite, |done| {
            let done = base + done as f64;
            let mut p = Progress::new(Phase::Eval, done / units);
            p.eta_s = eta(start.elapsed().as_secs_f64(), done, units);
            reporter.progress(&p);
        })?;
        let name = subject
            .model
            .file_name()
            .unwrap_or(subject.model.as_os_str())
            .to_string_lossy();
        let scores: Vec<String> = e
            .by_metric
            .iter()
            .map(|(m, v)| format!("{} {}", m.name(), num(*v)))
            .collect();
        let role = if k == 0 { "baseline" } else { "candidate" };
        reporter.log(&format!(
            "{role} {name}{}: {}",
            if subject.adapter.is_some() {
                " + adapter"
            } else {
                ""
            },
            scores.join(", ")
        ));
        evals.push(e);
    }
    let result = judge(&policy, &evals[0].by_metric, &evals[1].by_metric);
    reporter.log(&if result.blessed {
        "blessed: every bound of the policy holds".to_string()
    } else {
        let names: Vec<&str> = result.failed.iter().map(|m| m.name()).collect();
        format!("refused: {}", names.join(", "))
    });
    let mut out = match serde_json::to_value(&result) {
        Ok(Value::Object(m)) => m,
        _ => Map::new(),
    };
    let path = |p: &Path| json!(p.display().to_string());
    out.insert("command".into(), json!("eval --gate"));
    out.insert("baseline".into(), path(&opts.baseline.model));
    out.insert("candidate".into(), path(&opts.candidate.model));
    out.insert(
        "baseline_adapter".into(),
        opts.baseline.adapter.as_deref().map_or(Value::Null, path),
    );
    out.insert(
        "candidate_adapter".into(),
        opts.candidate.adapter.as_deref().map_or(Value::Null, path),
    );
    out.insert("questions".into(), path(&opts.questions));
    out.insert(
        "general".into(),
        opts.general
            .as_deref()
            .map_or_else(|| json!("built-in"), path),
    );
    out.insert("choices".into(), json!(MC_CHOICES));
    out.insert("seed".into(), json!(opts.seed));
    out.insert(
        "details".into(),
        json!({"baseline": &evals[0], "candidate": &evals[1]}),
    );
    out.insert("seconds".into(), json!(start.elapsed().as_secs_f64()));
    let report = Value::Object(out);
    if let Some(o) = &opts.out {
        let tmp = o.with_extension("partial");
        let text = serde_json::to_string_pretty(&report).unwrap_or_default();
        std::fs::write(&tmp, text + "\n")
            .and_then(|()| std::fs::rename(&tmp, o))
            .map_err(|e| failed(format!("{}: {e}", o.display())))?;
    }
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scores(pairs: &[(Metric, f64)]) -> Scores {
        pairs.iter().copied().collect()
    }

    fn policy(text: &str) -> Policy {
        Policy::parse(text).unwrap_or_else(|e| panic!("{text}: {e}"))
    }

    fn line(r: &GateResult, m: Metric) -> &MetricResult {
        r.metrics.iter().find(|l| l.name == m).unwrap()
    }

    #[test]
    fn the_example_policy_parses() {
        let p = policy(include_str!("../data/gate_policy.example.json"));
        assert!(p.metrics.len() >= 5);
        assert!(p.description.is_some());
        // Round trip through the normalized JSON.
        assert_eq!(Policy::parse(&p.to_json().to_string()).unwrap(), p);
    }

    #[test]
    fn absolute_bounds() {
        let p = policy(
            r#"{"metrics": {"mc_accuracy": {"min": 0.5}, "answer_perplexity": {"max": 20}}}"#,
        );
        let b = scores(&[(Metric::McAccuracy, 0.9), (Metric::AnswerPerplexity, 30.0)]);
        let ok = judge(
            &p,
            &b,
            &scores(&[(Metric::McAccuracy, 0.5), (Metric::AnswerPerplexity, 20.0)]),
        );
        assert!(ok.blessed, "{ok:?}");
        assert!(ok.failed.is_empty());
        assert_eq!(line(&ok, Metric::McAccuracy).reason, "0.5000 >= min 0.5000");
        let no = judge(
            &p,
            &b,
            &scores(&[(Metric::McAccuracy, 0.49), (Metric::AnswerPerplexity, 20.5)]),
        );
        assert!(!no.blessed);
        assert_eq!(
            no.failed,
            vec![Metric::McAccuracy, Metric::AnswerPerplexity]
        );
        assert_eq!(line(&no, Metric::McAccuracy).reason, "0.4900 < min 0.5000");
        assert_eq!(
            line(&no, Metric::AnswerPerplexity).reason,
            "20.5000 > max 20.0000"
        );
    }

    #[test]
    fn change_bounds() {
        let p = policy(
            r#"{"metrics": {"mc_accuracy": {"min_change": 0.1},
                            "general_perplexity": {"max_change": 0}}}"#,
        );
        let b = scores(&[(Metric::McAccuracy, 0.5), (Metric::GeneralPerplexity, 10.0)]);
        let same = judge(&p, &b, &b);
        assert!(!same.blessed);
        assert_eq!(same.failed, vec![Metric::McAccuracy]);
        let l = line(&same, Metric::McAccuracy);
        assert_eq!(l.change, Some(0.0));
        assert_eq!(l.reason, "change +0.0000 < min_change +0.1000");
        assert!(line(&same, Metric::GeneralPerplexity).pass);
        let better = judge(
            &p,
            &b,
            &scores(&[(Metric::McAccuracy, 0.75), (Metric::GeneralPerplexity, 9.0)]),
        );
        assert!(better.blessed, "{better:?}");
        let worse = judge(
            &p,
            &b,
            &scores(&[
                (Metric::McAccuracy, 0.75),
                (Metric::GeneralPerplexity, 10.5),
            ]),
        );
        assert_eq!(worse.failed, vec![Metric::GeneralPerplexity]);
        assert_eq!(
            line(&worse, Metric::GeneralPerplexity).reason,
            "change +0.5000 > max_change +0.0000"
        );
        // A negative min_change tolerates a drop.
        let p = policy(r#"{"metrics": {"mc_accuracy": {"min_change": -0.2}}}"#);
        assert!(judge(&p, &b, &scores(&[(Metric::McAccuracy, 0.3)])).blessed);
        assert!(!judge(&p, &b, &scores(&[(Metric::McAccuracy, 0.29)])).blessed);
    }

    #[test]
    fn ratio_bounds() {
        let p = policy(
            r#"{"metrics": {"general_perplexity": {"max_ratio": 1.25},
                            "mc_accuracy": {"min_ratio": 0.9}}}"#,
        );
        let b = scores(&[(Metric::GeneralPerplexity, 8.0), (Metric::McAccuracy, 0.5)]);
        let ok = judge(
            &p,
            &b,
            &scores(&[
                (Metric::GeneralPerplexity, 10.0),
                (Metric::McAccuracy, 0.45),
            ]),
        );
        assert!(ok.blessed, "{ok:?}");
        assert_eq!(line(&ok, Metric::GeneralPerplexity).ratio, Some(1.25));
        let no = judge(
            &p,
            &b,
            &scores(&[
                (Metric::GeneralPerplexity, 10.02),
                (Metric::McAccuracy, 0.44),
            ]),
        );
        assert_eq!(
            no.failed,
            vec![Metric::McAccuracy, Metric::GeneralPerplexity]
        );
        assert!(line(&no, Metric::GeneralPerplexity)
            .reason
            .starts_with("ratio 1.2525 > max_ratio 1.2500"));
        // A zero baseline has no ratio: the bound fails, and says why.
        let z = judge(
            &p,
            &scores(&[(Metric::GeneralPerplexity, 8.0), (Metric::McAccuracy, 0.0)]),
            &scores(&[(Metric::GeneralPerplexity, 8.0), (Metric::McAccuracy, 0.5)]),
        );
        assert_eq!(z.failed, vec![Metric::McAccuracy]);
        assert_eq!(line(&z, Metric::McAccuracy).ratio, None);
        assert!(line(&z, Metric::McAccuracy)
            .reason
            .contains("baseline is 0"));
    }

    #[test]
    fn abs_change_and_combined_bounds() {
        let p = policy(
            r#"{"metrics": {"stereotype_score": {"max_abs_change": 0.1},
                            "mc_accuracy": {"min": 0.5, "min_change": 0.0}}}"#,
        );
        let b = scores(&[(Metric::StereotypeScore, 0.5), (Metric::McAccuracy, 0.6)]);
        for (s, ok) in [(0.6, true), (0.4, true), (0.61, false), (0.39, false)] {
            let r = judge(
                &p,
                &b,
                &scores(&[(Metric::StereotypeScore, s), (Metric::McAccuracy, 0.6)]),
            );
            assert_eq!(line(&r, Metric::StereotypeScore).pass, ok, "{s}: {r:?}");
        }
        // Both bounds must hold: above min but dropped, and improved but below min.
        let r = judge(
            &p,
            &b,
            &scores(&[(Metric::StereotypeScore, 0.5), (Metric::McAccuracy, 0.55)]),
        );
        assert_eq!(r.failed, vec![Metric::McAccuracy]);
        assert_eq!(
            line(&r, Metric::McAccuracy).reason,
            "change -0.0500 < min_change +0.0000"
        );
        let low = scores(&[(Metric::StereotypeScore, 0.5), (Metric::McAccuracy, 0.2)]);
        let r = judge(
            &p,
            &low,
            &scores(&[(Metric::StereotypeScore, 0.5), (Metric::McAccuracy, 0.4)]),
        );
        assert_eq!(r.failed, vec![Metric::McAccuracy]);
        assert_eq!(line(&r, Metric::McAccuracy).reason, "0.4000 < min 0.5000");
        let r = judge(
            &p,
            &b,
            &scores(&[(Metric::StereotypeScore, 0.5), (Metric::McAccuracy, 0.6)]),
        );
        assert!(r.blessed);
        assert_eq!(
            line(&r, Metric::McAccuracy).reason,
            "0.6000 >= min 0.5000; change +0.0000 >= min_change +0.0000"
        );
    }

    #[test]
    fn unbounded_and_unmeasured_metrics() {
        let p = policy(r#"{"metrics": {"mc_accuracy": {"min": 0.1}}}"#);
        let b = scores(&[(Metric::McAccuracy, 0.5), (Metric::BiasGap, 1.0)]);
        let c = scores(&[(Metric::McAccuracy, 0.5), (Metric::BiasGap, 9.0)]);
        let r = judge(&p, &b, &c);
        assert!(r.blessed);
        // Reported, not judged; metrics nobody measured or bounded are left out.
        assert_eq!(r.metrics.len(), 2);
        let bias = line(&r, Metric::BiasGap);
        assert!(bias.pass);
        assert_eq!(bias.reason, "not bounded by the policy");
        assert_eq!(bias.change, Some(8.0));
        // NaN is "not measured": a bound on it fails.
        let r = judge(&p, &b, &scores(&[(Metric::McAccuracy, f64::NAN)]));
        assert_eq!(r.failed, vec![Metric::McAccuracy]);
        assert_eq!(line(&r, Metric::McAccuracy).candidate, None);
        let p = policy(r#"{"metrics": {"mc_accuracy": {"min_change": 0}}}"#);
        let r = judge(&p, &Scores::new(), &scores(&[(Metric::McAccuracy, 0.5)]));
        assert!(!r.blessed);
        assert!(line(&r, Metric::McAccuracy).reason.contains("baseline"));
        // The result's JSON shape.
        let v = serde_json::to_value(&r).unwrap();
        assert_eq!(v["blessed"], false);
        assert_eq!(v["failed"], json!(["mc_accuracy"]));
        assert_eq!(v["metrics"][0]["name"], "mc_accuracy");
        assert_eq!(v["metrics"][0]["baseline"], Value::Null);
        assert_eq!(v["metrics"][0]["bounds"], json!({"min_change": 0.0}));
        assert_eq!(v["policy"]["metrics"]["mc_accuracy"]["min_change"], 0.0);
    }

    #[test]
    fn bad_policies_name_what_is_wrong() {
        for (text, why) in [
            ("[]", "a policy is a JSON object"),
            ("not json", "not JSON"),
            ("{}", "no \"metrics\""),
            (r#"{"metrics": {}}"#, "bounds no metric"),
            (r#"{"metrics": []}"#, "must be an object"),
            (r#"{"metric": {}}"#, "unknown key(s) \"metric\""),
            (
                r#"{"metrics": {"accuracy": {"min": 1}, "perplexity": {"max": 1}}}"#,
                "unknown metric(s) \"accuracy\", \"perplexity\" (known: mc_accuracy",
            ),
            (
                r#"{"metrics": {"mc_accuracy": {"minimum": 1, "at_least": 2}}}"#,
                "mc_accuracy: unknown bound(s) \"minimum\", \"at_least\"",
            ),
            (
                r#"{"metrics": {"mc_accuracy": {}}}"#,
                "mc_accuracy: no bound",
            ),
            (
                r#"{"metrics": {"mc_accuracy": 0.5}}"#,
                "must be a JSON object",
            ),
            (
                r#"{"metrics": {"mc_accuracy": {"min": "0.5"}}}"#,
                "mc_accuracy.min: expected a number",
            ),
            (
                r#"{"metrics": {"mc_accuracy": {"min": 0.6, "max": 0.5}}}"#,
                "min 0.6 is above max 0.5",
            ),
            (
                r#"{"metrics": {"general_perplexity": {"max_ratio": 0}}}"#,
                "max_ratio must be above 0",
            ),
            (
                r#"{"metrics": {"bias_gap": {"max_abs_change": -1}}}"#,
                "must not be negative",
            ),
            (
                r#"{"description": 3, "metrics": {"bias_gap": {"max": 1}}}"#,
                "description",
            ),
        ] {
            let e = Policy::parse(text).unwrap_err();
            assert!(e.contains(why), "{text}: {e}");
        }
        // Every problem at once.
        let e = Policy::parse(r#"{"x": 1, "metrics": {"nope": {}, "mc_accuracy": {"mn": 1}}}"#)
            .unwrap_err();
        assert!(
            e.contains("\"x\"") && e.contains("\"nope\"") && e.contains("\"mn\""),
            "{e}"
        );
    }

    #[test]
    fn distractors_are_deterministic_distinct_and_never_the_reference() {
        let answers = [
            "Paris.",
            "Blue",
            "Paris.",
            " Blue ",
            "42",
            "Seven days",
            "A cat",
            "Tuesday",
            "Tea",
            "Rome",
        ];
        let d = mc_distractors(&answers, 3, 0);
        assert_eq!(d, mc_distractors(&answers, 3, 0));
        assert_eq!(d.len(), answers.len());
        for (i, row) in d.iter().enumerate() {
            assert_eq!(row.len(), 3, "{i}: {row:?}");
            let texts: std::collections::BTreeSet<&str> =
                row.iter().map(|&j| answers[j].trim()).collect();
            assert_eq!(texts.len(), 3, "distinct texts: {row:?}");
            assert!(!texts.contains(answers[i].trim()), "{i}: {row:?}");
            assert!(row.iter().all(|&j| j != i && j < answers.len()));
        }
        // Another seed draws otherwise (for some question).
        assert_ne!(d, mc_distractors(&answers, 3, 1));
        // Fewer distinct answers than choices: as many as there are.
        let two = mc_distractors(&["a", "b", "a"], 3, 0);
        assert_eq!(two, vec![vec![1], vec![0], vec![1]]);
        // A single distinct answer: no distractor at all.
        assert_eq!(
            mc_distractors(&["a", "a"], 3, 0),
            vec![Vec::<usize>::new(), Vec::new()]
        );
        assert!(mc_distractors(&[], 3, 0).is_empty());
    }

    #[test]
    fn a_tie_is_not_correct() {
        assert!(mc_correct(-1.0, &[-2.0, -1.5]));
        assert!(!mc_correct(-1.0, &[-2.0, -1.0]));
        assert!(!mc_correct(-1.0, &[-0.5]));
        assert!(!mc_correct(f64::NAN, &[-0.5]));
        assert!(mc_correct(-1.0, &[]));
    }

    #[test]
    fn questions_are_chat_records_ending_with_the_answer() {
        let m = |v: &[(&str, &str)]| {
            Record::Messages(
                v.iter()
                    .map(|(r, c)| (r.to_string(), c.to_string()))
                    .collect(),
            )
        };
        let ok = questions_from_records(&[
            m(&[("system", "ctx"), ("user", "q?"), ("assistant", "a.")]),
            m(&[("user", "q2?"), ("assistant", "b.")]),
        ])
        .unwrap();
        assert_eq!(ok[0].prompt.len(), 2);
        assert_eq!(ok[0].answer, "a.");
        assert_eq!(ok[1].prompt, vec![("user".to_string(), "q2?".to_string())]);
        let e = questions_from_records(&[Record::Text("t".into())]).unwrap_err();
        assert!(e.contains("record 1"), "{e}");
        let e = questions_from_records(&[m(&[("user", "q")]), m(&[("user", "q")])]).unwrap_err();
        assert!(e.starts_with("record 1:"), "{e}");
        assert!(questions_from_records(&[m(&[("assistant", "a")])]).is_err());
    }

    #[test]
    fn segments_keep_the_end_of_turn_marker() {
        // ChatML, as SmolLM2 and Qwen2.5 write it.
        let src = "{% for m in messages %}<|im_start|>{{ m.role }}\n{{ m.content }}<|im_end|>\n\
                   {% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}";
        let r = Renderer {
            format: ChatFormat::new(src, "", "<|im_end|>", None).unwrap(),
        };
        let q = Question {
            prompt: vec![("user".into(), "Why?".into())],
            answer: "Because.".into(),
        };
        let (p, t) = r.segments(&q, "Because.").unwrap();
        assert_eq!(
            p,
            "<|im_start|>user\nWhy?<|im_end|>\n<|im_start|>assistant\n"
        );
        assert_eq!(t, "Because.<|im_end|>");
        let (_, t) = r.segments(&q, "Other.").unwrap();
        assert_eq!(t, "Other.<|im_end|>");
    }

    #[test]
    fn the_general_text_is_a_few_kilobytes() {
        let n = DEFAULT_GENERAL_TEXT.len();
        assert!((2000..=3500).contains(&n), "{n}");
        assert!(DEFAULT_GENERAL_TEXT.split("\n\n").count() >= 5);
    }
}
