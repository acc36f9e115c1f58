//! `synth`: documents → grounded synthetic question/answer conversations for `finetune`.
//!
//! 1. **Documents** go through `prepare`'s own steps first ([`crate::prepare`]: cleaning,
//!    quality filters, anonymisation, exact and near-duplicate removal), so the teacher never sees
//!    what `prepare` would have removed.
//! 2. **Chunks** of about `chunk_tokens` tokens of the teacher's own tokenizer, overlapping by
//!    `overlap` tokens, cut at word boundaries; each keeps its source (file, line) and byte range.
//! 3. **Generation** runs on the daemon's own engine ([`inhouse::engine::llama::LlamaEngine`]:
//!    continuous batching, the model's chat template, llguidance-constrained JSON), loaded in this
//!    process. Every request of a wave is queued in one step (`generate_all`), so which chunks
//!    decode together never depends on timing, and with deterministic batching the same seed
//!    gives the same output. The answer is constrained by a JSON schema (`{"pairs": [{"question",
//!    "answer"}]}`, at most `per_chunk` items), so every finished generation parses.
//! 4. **Filters**, in this order, each counted (`generated = kept + Σ dropped`): length bounds,
//!    refusals and boilerplate, personal data (the same anonymiser as `prepare`: a pair in which it
//!    finds anything is dropped), lexical grounding (share of the answer's content words found in
//!    the chunk, default ≥ 0.5), model grounding (the teacher's probability of "yes" against "no"
//!    to "is this answer supported by the passage?", read from the first token's log-probabilities
//!    before sampling, default ≥ 0.5), then against the questions already kept and the seed
//!    examples: exact duplicates (normalised text), MinHash near-duplicates (word bigrams, default
//!    Jaccard ≥ 0.8) and ROUGE-L F1 (default ≥ 0.7).
//! 5. **Output**: `train.jsonl` / `eval.jsonl` chat records, `chunks.jsonl` (each chunk with its
//!    source) and `report.json`; written under hidden names and renamed at the end, so a failed or
//!    cancelled run leaves no output.

use std::collections::{BTreeMap, HashSet};
use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use inhouse::engine::llama::{EngineConfig, LlamaEngine, ModelSpec};
use inhouse::engine::{Event, FinishReason};
use inhouse_formats::progress::{eta, Phase, Progress, Reporter, ToolError};
use inhouse_formats::request::{
    ChatMessage, GenerateRequest, LogprobsRequest, Prompt, ResponseFormat, Sampling,
};
use inhouse_formats::template::TemplateLimits;
use llama_cpp_2::model::params::LlamaModelParams;
use llama_cpp_2::model::LlamaModel;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use xxhash_rust::xxh3::{xxh3_128, xxh3_64};

use crate::bias;
use crate::prepare::{self, clean, dedup, filter, ingest, Anonymizer, Content, PiiCounts};

/// The shipped prompts (documented in the file itself).
pub const DEFAULT_PROMPTS: &str = include_str!("../data/synth_prompts.json");
/// The engine's name for the teacher.
const TEACHER: &str = "teacher";

/// Task styles.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Style {
    /// Factual questions with short answers.
    Qa,
    /// "Why / how" questions with explanations.
    Explain,
    /// Summary requests.
    Summary,
    /// The three in turn, by chunk.
    Mix,
}

impl Style {
    fn for_chunk(self, i: usize) -> &'static str {
        match self {
            Style::Qa => "qa",
            Style::Explain => "explain",
            Style::Summary => "summary",
            Style::Mix => ["qa", "explain", "summary"][i % 3],
        }
    }
}

/// Thresholds of the filters.
#[derive(Debug, Clone, Serialize)]
pub struct Thresholds {
    /// Words in a question.
    pub question_words: (usize, usize),
    /// Words in an answer.
    pub answer_words: (usize, usize),
    /// Least share of the answer's content words found in the chunk.
    pub lexical_grounding: f64,
    /// Least P(yes) / (P(yes) + P(no)) of the judge.
    pub model_grounding: f64,
    /// Estimated Jaccard (word bigrams) from which a question is a near-duplicate.
    pub near_duplicate: f64,
    /// ROUGE-L F1 from which a question is too close to a kept one.
    pub rouge_l: f64,
}

impl Default for Thresholds {
    fn default() -> Self {
        Thresholds {
            question_words: (3, 64),
            answer_words: (1, 400),
            lexical_grounding: 0.5,
            model_grounding: 0.5,
            near_duplicate: 0.8,
            rouge_l: 0.7,
        }
    }
}

/// Options of one run.
#[derive(Debug, Clone)]
pub struct Options {
    /// Documents (files and folders).
    pub inputs: Vec<PathBuf>,
    /// The teacher model.
    pub teacher: PathBuf,
    /// Output folder.
    pub out: PathBuf,
    /// Prompt overrides (JSON, the keys of `quantize/data/synth_prompts.json`).
    pub prompts: Option<PathBuf>,
    /// Seed examples (JSONL chat records): their questions count as already kept.
    pub seed_examples: Option<PathBuf>,
    /// Task style.
    pub style: Style,
    /// Tokens per chunk.
    pub chunk_tokens: usize,
    /// Tokens shared by consecutive chunks.
    pub overlap: usize,
    /// Most pairs asked per chunk.
    pub per_chunk: usize,
    /// Most samples kept in all.
    pub max_samples: Option<usize>,
    /// Seed of sampling and of the train/eval split.
    pub seed: u64,
    /// Share of samples in eval.jsonl.
    pub eval_share: f64,
    /// Sampling temperature of the teacher.
    pub temperature: f32,
    /// Generated tokens per chunk at most.
    pub max_tokens: u32,
    /// Chunks decoded together.
    pub batch: u32,
    /// Put the chunk in each record as a system turn.
    pub with_context: bool,
    /// Estimate, generate nothing.
    pub dry_run: bool,
    /// Filter thresholds.
    pub thresholds: Thresholds,
    /// Threads.
    pub threads: u32,
    /// `prepare`'s settings for the documents.
    pub prepare: prepare::Config,
}

/// The prompts in use.
#[derive(Debug, Clone, Serialize, Deserialize, Default)]
#[serde(default)]
pub struct Prompts {
    /// The teacher's system turn.
    pub system: String,
    /// One user prompt per style.
    pub styles: BTreeMap<String, String>,
    /// The grounding question.
    pub judge: String,
}

impl Prompts {
    /// The shipped prompts with `overrides` (a JSON object of the same keys) applied.
    pub fn load(overrides: Option<&str>) -> Result<Prompts, String> {
        let mut p: Prompts = serde_json::from_str(DEFAULT_PROMPTS).expect("shipped prompts");
        if let Some(text) = overrides {
            let o: Value =
                serde_json::from_str(text).map_err(|e| format!("the prompts file: {e}"))?;
            let o = o
                .as_object()
                .ok_or("the prompts file must hold a JSON object")?;
            for (k, v) in o {
                match (k.as_str(), v) {
                    ("_about", _) => {}
                    ("system", Value::String(s)) => p.system = s.clone(),
                    ("judge", Value::String(s)) => p.judge = s.clone(),
                    ("styles", Value::Object(m)) => {
                        for (style, v) in m {
                            let s = v
                                .as_str()
                                .ok_or(format!("styles.{style} must be a string"))?;
                            if !p.styles.contains_key(style) {
                                return Err(format!(
                                    "styles.{style}: not a style (qa, explain, summary)"
                                ));
                            }
                            p.styles.insert(style.clone(), s.to_string());
                        }
                    }
                    _ => return Err(format!("the prompts file: unknown or mistyped key {k:?}")),
                }
            }
        }
        for (style, s) in &p.styles {
            if !s.contains("{passage}") {
                return Err(format!("styles.{style} must contain {{passage}}"));
            }
        }
        if !(p.judge.contains("{answer}") && p.judge.contains("{passage}")) {
            return Err("judge must contain {passage} and {answer}".into());
        }
        Ok(p)
    }

    fn digest(&self) -> String {
        let text = serde_json::to_string(self).unwrap_or_default();
        format!("{:032x}", xxh3_128(text.as_bytes()))
    }
}

/// One chunk of a document.
#[derive(Debug, Clone, Serialize)]
pub struct Chunk {
    /// Its index in the run.
    pub id: usize,
    /// `file` or `file:line`.
    pub source: String,
    /// Byte range in the prepared (cleaned, anonymised) document.
    pub start: usize,
    /// See `start`.
    pub end: usize,
    /// Tokens (teacher's tokenizer, summed per word).
    pub tokens: usize,
    /// The text.
    pub text: String,
}

/// Cuts `text` into chunks of about `size` tokens overlapping by `overlap`, at word boundaries;
/// `count` gives the tokens of a word (with its leading space).
pub fn chunk_text(
    text: &str,
    size: usize,
    overlap: usize,
    count: &mut dyn FnMut(&str) -> usize,
) -> Vec<(usize, usize, usize)> {
    let mut words = Vec::new();
    let mut start = None;
    for (i, c) in text.char_indices() {
        match (c.is_whitespace(), start) {
            (false, None) => start = Some(i),
            (true, Some(s)) => {
                words.push((s, i));
                start = None;
            }
            _ => {}
        }
    }
    if let Some(s) = start {
        words.push((s, text.len()));
    }
    let costs: Vec<usize> = words
        .iter()
        .map(|&(s, e)| count(&text[s..e]).max(1))
        .collect();
    let mut out = Vec::new();
    let mut i = 0;
    while i < words.len() {
        let mut j = i;
        let mut tokens = 0;
        while j < words.len() && (j == i || tokens + costs[j] <= size) {
            tokens += costs[j];
            j += 1;
        }
        out.push((words[i].0, words[j - 1].1, tokens));
        if j == words.len() {
            break;
        }
        // Step back over `overlap` tokens, always moving forward.
        let mut back = j;
        let mut shared = 0;
        while back > i + 1 && shared + costs[back - 1] <= overlap {
            shared += costs[back - 1];
            back -= 1;
        }
        i = back;
    }
    out
}

/// Lower-cased alphanumeric words.
pub fn words(text: &str) -> Vec<String> {
    text.split(|c: char| !c.is_alphanumeric())
        .filter(|w| !w.is_empty())
        .map(str::to_lowercase)
        .collect()
}

const STOPWORDS: &[&str] = &[
    "a", "about", "after", "all", "also", "an", "and", "any", "are", "as", "at", "be", "been",
    "but", "by", "can", "could", "did", "do", "does", "each", "for", "from", "had", "has", "have",
    "how", "if", "in", "into", "is", "it", "its", "may", "more", "must", "no", "not", "of", "on",
    "or", "other", "should", "so", "such", "than", "that", "the", "their", "them", "then", "there",
    "these", "they", "this", "those", "to", "up", "was", "were", "what", "when", "where", "which",
    "who", "why", "will", "with", "would", "yes", "you", "your",
];

/// Share of the answer's content words (not stop words) that occur in the chunk; 1 when the
/// answer has none (nothing to check lexically: the judge decides).
pub fn lexical_support(answer: &str, chunk: &str) -> f64 {
    let chunk: HashSet<String> = words(chunk).into_iter().collect();
    let content: Vec<String> = words(answer)
        .into_iter()
        .filter(|w| !STOPWORDS.contains(&w.as_str()))
        .collect();
    if content.is_empty() {
        return 1.0;
    }
    let found = content
        .iter()
        .filter(|w| {
            chunk.contains(*w)
                // "policies" answers from "policy": a shared stem of five letters counts.
                || (w.len() > 5 && chunk.iter().any(|c| c.len() > 5 && c[..5] == w[..5]))
        })
        .count();
    found as f64 / content.len() as f64
}

/// ROUGE-L F1 between two word sequences (longest common subsequence).
pub fn rouge_l(a: &[String], b: &[String]) -> f64 {
    if a.is_empty() || b.is_empty() {
        return 0.0;
    }
    let mut prev = vec![0usize; b.len() + 1];
    for x in a {
        let mut cur = vec![0usize; b.len() + 1];
        for (j, y) in b.iter().enumerate() {
            cur[j + 1] = if x == y {
                prev[j] + 1
            } else {
                cur[j].max(prev[j + 1])
            };
        }
        prev = cur;
    }
    let lcs = prev[b.len()] as f64;
    let (p, r) = (lcs / a.len() as f64, lcs / b.len() as f64);
    if lcs == 0.0 {
        0.0
    } else {
        2.0 * p * r / (p + r)
    }
}

/// MinHash signature of a question's word bigrams (a one-word question: the word).
fn question_signature(ws: &[String]) -> Option<dedup::Signature> {
    let shingles: HashSet<u64> = if ws.len() < 2 {
        ws.iter().map(|w| xxh3_64(w.as_bytes())).collect()
    } else {
        ws.windows(2)
            .map(|p| xxh3_64(format!("{}\0{}", p[0], p[1]).as_bytes()))
            .collect()
    };
    dedup::signature(&shingles)
}

const REFUSALS: &[&str] = &[
    "as an ai",
    "i cannot",
    "i can't",
    "i'm sorry",
    "i am sorry",
    "i don't know",
    "not mentioned",
    "does not mention",
    "doesn't mention",
    "no information",
    "not provided",
    "not specified",
    "not stated",
    "cannot be determined",
    "the passage",
    "the text above",
    "lorem ipsum",
];

/// Whether a pair is a refusal or boilerplate (including questions that lean on "the passage",
/// which a user of the fine-tuned model never shows it).
pub fn is_refusal(question: &str, answer: &str) -> bool {
    let q = question.to_lowercase();
    let a = answer.to_lowercase();
    REFUSALS.iter().any(|r| q.contains(r) || a.contains(r))
        || q.trim().is_empty()
        || a.trim().is_empty()
}

/// Drop counters, in filter order.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Dropped {
    /// Question or answer outside the word bounds.
    pub length: usize,
    /// Refusals and boilerplate.
    pub refusal: usize,
    /// Personal data found by the anonymiser.
    pub personal_data: usize,
    /// Lexical grounding below its threshold.
    pub ungrounded_lexical: usize,
    /// The judge's P(yes) below its threshold.
    pub ungrounded_model: usize,
    /// Same normalised question as a kept one or a seed example.
    pub exact_duplicate: usize,
    /// MinHash near-duplicate of a kept question or a seed example.
    pub near_duplicate: usize,
    /// ROUGE-L against a kept question above its threshold.
    pub rouge_l: usize,
    /// Past `max_samples`.
    pub over_cap: usize,
}

impl Dropped {
    fn total(&self) -> usize {
        self.length
            + self.refusal
            + self.personal_data
            + self.ungrounded_lexical
            + self.ungrounded_model
            + self.exact_duplicate
            + self.near_duplicate
            + self.rouge_l
            + self.over_cap
    }
}

/// A pair that passed every filter.
#[derive(Debug, Clone)]
struct Kept {
    chunk: usize,
    question: String,
    answer: String,
    support: f64,
    judge: f64,
}

/// A generated pair on its way through the filters.
struct Candidate {
    chunk: usize,
    question: String,
    answer: String,
    support: f64,
}

/// What the dedup filters compare with: kept questions and seed examples.
#[derive(Default)]
struct Seen {
    exact: HashSet<String>,
    signatures: Vec<dedup::Signature>,
    words: Vec<Vec<String>>,
}

impl Seen {
    fn add(&mut self, question: &str) {
        let ws = words(question);
        self.exact.insert(ws.join(" "));
        if let Some(s) = question_signature(&ws) {
            self.signatures.push(s);
        }
        self.words.push(ws);
    }

    /// Which dedup filter drops `question`, if any.
    fn verdict(&self, question: &str, t: &Thresholds) -> Option<Hit> {
        let ws = words(question);
        if self.exact.contains(&ws.join(" ")) {
            return Some(Hit::Exact);
        }
        if let Some(s) = question_signature(&ws) {
            if self
                .signatures
                .iter()
                .any(|o| dedup::estimate_jaccard(&s, o) >= t.near_duplicate)
            {
                return Some(Hit::Near);
            }
        }
        if self.words.iter().any(|o| rouge_l(&ws, o) >= t.rouge_l) {
            return Some(Hit::Rouge);
        }
        None
    }
}

/// Which de-duplication filter a question fails.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Hit {
    Exact,
    Near,
    Rouge,
}

impl Dropped {
    fn count(&mut self, hit: Hit) {
        match hit {
            Hit::Exact => self.exact_duplicate += 1,
            Hit::Near => self.near_duplicate += 1,
            Hit::Rouge => self.rouge_l += 1,
        }
    }
}

/// A prepared document.
struct Document {
    source: String,
    text: String,
}

/// What `prepare`'s steps did to the input.
#[derive(Debug, Default, Serialize)]
struct PrepareCounts {
    files: usize,
    documents_in: usize,
    filtered: filter::FilterCounts,
    exact_duplicates: usize,
    near_duplicates: usize,
    pii_replaced: PiiCounts,
    input_errors: usize,
    documents: usize,
}

fn bad(e: impl std::fmt::Display) -> ToolError {
    ToolError::BadInput(e.to_string())
}

fn failed(e: impl std::fmt::Display) -> ToolError {
    ToolError::Failed(e.to_string())
}

/// Reads the inputs through `prepare`'s cleaning, filters, anonymisation and de-duplication.
fn documents(
    opts: &Options,
    anonymizer: &Anonymizer,
) -> Result<(Vec<Document>, PrepareCounts), ToolError> {
    let cfg = &opts.prepare;
    let exclude = fs::canonicalize(&opts.out).ok();
    let list = ingest::list_files(&opts.inputs, exclude.as_deref());
    if let Some(e) = list.errors.first() {
        return Err(bad(e));
    }
    let mut counts = PrepareCounts {
        files: list.files.len(),
        ..Default::default()
    };
    let mut dd = dedup::Deduplicator::new(cfg.near_dup_threshold);
    let mut docs = Vec::new();
    for (index, (path, format)) in list.files.iter().enumerate() {
        ingest::read_file(path, *format, index, &mut |item| {
            let Ok((origin, content)) = item else {
                counts.input_errors += 1;
                return true;
            };
            counts.documents_in += 1;
            let content = content.map_texts(clean::clean);
            if let Some(reason) = filter::check(&content, &cfg.filters) {
                counts.filtered.add(reason);
                return true;
            }
            let mut found = PiiCounts::new();
            let content: Content = content.map_texts(|t| anonymizer.anonymize(t, &mut found));
            match dd.check(prepare::digest(&content), &content.joined()) {
                dedup::Verdict::ExactDuplicate => counts.exact_duplicates += 1,
                dedup::Verdict::NearDuplicate => counts.near_duplicates += 1,
                dedup::Verdict::Keep => {
                    for (label, n) in found {
                        *counts.pii_replaced.entry(label).or_default() += n;
                    }
                    let source = match origin.line {
                        Some(l) => format!("{}:{l}", path.display()),
                        None => path.display().to_string(),
                    };
                    docs.push(Document {
                        source,
                        text: content.joined(),
                    });
                }
            }
            true
        });
    }
    counts.documents = docs.len();
    Ok((docs, counts))
}

fn fill(template: &str, vars: &[(&str, &str)]) -> String {
    // One pass, so a value that contains "{answer}" is not substituted again.
    let mut out = String::with_capacity(template.len());
    let mut rest = template;
    'outer: while !rest.is_empty() {
        for (k, v) in vars {
            let key = format!("{{{k}}}");
            if rest.starts_with(&key) {
                out.push_str(v);
                rest = &rest[key.len()..];
                continue 'outer;
            }
        }
        let c = rest.chars().next().expect("not empty");
        out.push(c);
        rest = &rest[c.len_utf8()..];
    }
    out
}

fn pairs_schema(n: usize) -> Value {
    json!({
        "type": "object",
        "properties": {"pairs": {
            "type": "array", "minItems": 1, "maxItems": n,
            "items": {
                "type": "object",
                "properties": {"question": {"type": "string"}, "answer": {"type": "string"}},
                "required": ["question", "answer"],
                "additionalProperties": false
            }
        }},
        "required": ["pairs"],
        "additionalProperties": false
    })
}

/// The teacher on the daemon's engine.
struct Teacher {
    engine: LlamaEngine,
    prompt_tokens: u64,
    completion_tokens: u64,
}

/// One finished generation.
struct Answer {
    text: String,
    reason: Option<FinishReason>,
    first_logprobs: Vec<(String, f32)>,
}

impl Teacher {
    fn start(opts: &Options, queue: usize) -> Result<Teacher, ToolError> {
        let cfg = EngineConfig {
            threads: opts.threads,
            ctx_size: (opts.chunk_tokens as u32 + opts.max_tokens + 512).next_multiple_of(256),
            gpu_layers: 0,
            queue_size: queue.max(16),
            slots: opts.batch,
            cache_reuse_across_users: false,
            prefill_chunk: 512,
            deterministic_batching: true,
            template_limits: TemplateLimits::default(),
            speculative: Default::default(),
        };
        let metrics = Arc::new(inhouse::metrics::Metrics::new(&[TEACHER.to_string()], ""));
        let spec = ModelSpec {
            name: TEACHER.into(),
            path: opts.teacher.clone(),
            adapter: None,
            draft: None,
        };
        let engine = LlamaEngine::start(vec![spec], cfg, metrics)
            .map_err(|e| failed(format!("the teacher could not be loaded: {e}")))?;
        Ok(Teacher {
            engine,
            prompt_tokens: 0,
            completion_tokens: 0,
        })
    }

    /// Runs every request as one wave and returns the answers in order.
    fn run(&mut self, reqs: Vec<GenerateRequest>) -> Result<Vec<Answer>, ToolError> {
        let receivers = self.engine.generate_all(reqs).map_err(failed)?;
        let mut out = Vec::with_capacity(receivers.len());
        for mut rx in receivers {
            let mut a = Answer {
                text: String::new(),
                reason: None,
                first_logprobs: vec![],
            };
            while let Some(ev) = rx.blocking_recv() {
                match ev {
                    Event::Text { text, logprobs, .. } => {
                        if a.first_logprobs.is_empty() {
                            if let Some(l) = logprobs.first() {
                                a.first_logprobs =
                                    l.top.iter().map(|t| (t.token.clone(), t.logprob)).collect();
                            }
                        }
                        a.text.push_str(&text);
                    }
                    Event::Finished {
                        reason,
                        prompt_tokens,
                        completion_tokens,
                        ..
                    } => {
                        a.reason = Some(reason);
                        self.prompt_tokens += u64::from(prompt_tokens);
                        self.completion_tokens += u64::from(completion_tokens);
                    }
                    Event::Failed(e) => return Err(failed(format!("the teacher failed: {e}"))),
                    Event::Started { .. } => {}
                }
            }
            out.push(a);
        }
        Ok(out)
    }
}

impl Drop for Teacher {
    fn drop(&mut self) {
        self.engine.shutdown();
    }
}

/// P(yes) / (P(yes) + P(no)) over the first token's alternatives; 0 when neither is among them.
pub fn yes_share(top: &[(String, f32)]) -> f64 {
    let (mut yes, mut no) = (0.0f64, 0.0f64);
    for (tok, lp) in top {
        match tok.trim().to_lowercase().as_str() {
            "yes" => yes += f64::from(*lp).exp(),
            "no" => no += f64::from(*lp).exp(),
            _ => {}
        }
    }
    if yes + no == 0.0 {
        0.0
    } else {
        yes / (yes + no)
    }
}

/// The running state of a run.
struct Run<'a> {
    opts: &'a Options,
    prompts: Prompts,
    anonymizer: &'a Anonymizer,
    teacher: Teacher,
    seen: Seen,
    kept: Vec<Kept>,
    dropped: Dropped,
    generated: usize,
    pii_found: PiiCounts,
    truncated: usize,
    unparsable: usize,
    judged: usize,
}

impl Run<'_> {
    fn generation_request(&self, chunk: &Chunk) -> GenerateRequest {
        let style = self.opts.style.for_chunk(chunk.id);
        let user = fill(
            &self.prompts.styles[style],
            &[
                ("passage", &chunk.text),
                ("n", &self.opts.per_chunk.to_string()),
            ],
        );
        let mut msgs = vec![];
        if !self.prompts.system.is_empty() {
            msgs.push(ChatMessage::text("system", self.prompts.system.clone()));
        }
        msgs.push(ChatMessage::text("user", user));
        let sampling = Sampling {
            temperature: self.opts.temperature,
            top_p: 0.95,
            top_k: 40,
            min_p: 0.05,
            presence_penalty: 0.0,
            frequency_penalty: 0.0,
            seed: (self.opts.seed as u32).wrapping_add(chunk.id as u32),
        };
        let mut r = GenerateRequest::new(
            0,
            TEACHER,
            Prompt::Chat(msgs),
            sampling,
            self.opts.max_tokens,
        );
        r.format = ResponseFormat::JsonSchema {
            name: "pairs".into(),
            schema: pairs_schema(self.opts.per_chunk),
        };
        r
    }

    fn judge_request(&self, chunk: &Chunk, c: &Candidate) -> GenerateRequest {
        let user = fill(
            &self.prompts.judge,
            &[
                ("passage", &chunk.text),
                ("question", &c.question),
                ("answer", &c.answer),
            ],
        );
        let sampling = Sampling {
            temperature: 0.0,
            top_p: 1.0,
            top_k: 0,
            min_p: 0.0,
            presence_penalty: 0.0,
            frequency_penalty: 0.0,
            seed: 0,
        };
        let mut r = GenerateRequest::new(
            0,
            TEACHER,
            Prompt::Chat(vec![ChatMessage::text("user", user)]),
            sampling,
            1,
        );
        r.logprobs = Some(LogprobsRequest { top: 20 });
        r
    }

    /// Generates, filters and keeps the pairs of `chunks`.
    fn wave(&mut self, chunks: &[Chunk]) -> Result<(), ToolError> {
        let reqs = chunks.iter().map(|c| self.generation_request(c)).collect();
        let answers = self.teacher.run(reqs)?;
        let t = &self.opts.thresholds;
        let mut candidates = Vec::new();
        for (chunk, a) in chunks.iter().zip(answers) {
            if a.reason == Some(FinishReason::Length) {
                self.truncated += 1;
                continue;
            }
            let Ok(v) = serde_json::from_str::<Value>(&a.text) else {
                self.unparsable += 1;
                continue;
            };
            let pairs = v["pairs"].as_array().cloned().unwrap_or_default();
            for p in pairs.iter().take(self.opts.per_chunk) {
                let q = p["question"].as_str().unwrap_or("").trim().to_string();
                let ans = p["answer"].as_str().unwrap_or("").trim().to_string();
                self.generated += 1;
                let (qw, aw) = (words(&q).len(), words(&ans).len());
                if qw < t.question_words.0
                    || qw > t.question_words.1
                    || aw < t.answer_words.0
                    || aw > t.answer_words.1
                {
                    self.dropped.length += 1;
                    continue;
                }
                if is_refusal(&q, &ans) {
                    self.dropped.refusal += 1;
                    continue;
                }
                let mut found = PiiCounts::new();
                self.anonymizer.anonymize(&q, &mut found);
                self.anonymizer.anonymize(&ans, &mut found);
                if !found.is_empty() {
                    for (label, n) in found {
                        *self.pii_found.entry(label).or_default() += n;
                    }
                    self.dropped.personal_data += 1;
                    continue;
                }
                let support = lexical_support(&ans, &chunk.text);
                if support < t.lexical_grounding {
                    self.dropped.ungrounded_lexical += 1;
                    continue;
                }
                candidates.push(Candidate {
                    chunk: chunk.id,
                    question: q,
                    answer: ans,
                    support,
                });
            }
        }
        let first = chunks.first().map_or(0, |c| c.id);
        let reqs = candidates
            .iter()
            .map(|c| self.judge_request(&chunks[c.chunk - first], c))
            .collect();
        let verdicts = self.teacher.run(reqs)?;
        self.judged += candidates.len();
        for (c, v) in candidates.into_iter().zip(verdicts) {
            let judge = yes_share(&v.first_logprobs);
            if judge < t.model_grounding {
                self.dropped.ungrounded_model += 1;
                continue;
            }
            if let Some(hit) = self.seen.verdict(&c.question, t) {
                self.dropped.count(hit);
                continue;
            }
            if self.opts.max_samples.is_some_and(|m| self.kept.len() >= m) {
                self.dropped.over_cap += 1;
                continue;
            }
            self.seen.add(&c.question);
            self.kept.push(Kept {
                chunk: c.chunk,
                question: c.question,
                answer: c.answer,
                support: c.support,
                judge,
            });
        }
        Ok(())
    }
}

fn seed_questions(path: &Path) -> Result<Vec<String>, ToolError> {
    let text = fs::read_to_string(path).map_err(|e| bad(format!("{}: {e}", path.display())))?;
    let mut out = vec![];
    for (i, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let v: Value = serde_json::from_str(line)
            .map_err(|e| bad(format!("{}:{}: {e}", path.display(), i + 1)))?;
        let q = v["messages"]
            .as_array()
            .and_then(|ms| ms.iter().find(|m| m["role"] == "user"))
            .and_then(|m| m["content"].as_str())
            .ok_or_else(|| {
                bad(format!(
                    "{}:{}: a seed example is a chat record with a user turn",
                    path.display(),
                    i + 1
                ))
            })?;
        out.push(q.to_string());
    }
    Ok(out)
}

fn check(opts: &Options) -> Result<(), ToolError> {
    let t = &opts.thresholds;
    let unit = |name: &str, v: f64| {
        if (0.0..=1.0).contains(&v) {
            Ok(())
        } else {
            Err(bad(format!("{name} must be in [0, 1], got {v}")))
        }
    };
    unit("--lexical-threshold", t.lexical_grounding)?;
    unit("--judge-threshold", t.model_grounding)?;
    unit("--near-dup-threshold", t.near_duplicate)?;
    unit("--rouge-threshold", t.rouge_l)?;
    unit("--eval-share", opts.eval_share)?;
    if !(16..=4096).contains(&opts.chunk_tokens) {
        return Err(bad("--chunk-tokens must be in 16..=4096"));
    }
    if opts.overlap >= opts.chunk_tokens {
        return Err(bad("--overlap must be smaller than --chunk-tokens"));
    }
    if !(1..=20).contains(&opts.per_chunk) {
        return Err(bad("--per-chunk must be in 1..=20"));
    }
    if !(1..=64).contains(&opts.batch) {
        return Err(bad("--batch must be in 1..=64"));
    }
    if !(0.0..=2.0).contains(&opts.temperature) {
        return Err(bad("--temperature must be in [0, 2]"));
    }
    if !(32..=8192).contains(&opts.max_tokens) {
        return Err(bad("--max-tokens must be in 32..=8192"));
    }
    inhouse_formats::gguf::open(&opts.teacher)
        .map_err(|e| bad(format!("{}: {e}", opts.teacher.display())))?;
    Ok(())
}

/// Runs `synth`; returns the summary (also in `report.json`, or, for a dry run, only printed).
pub fn run(opts: &Options, reporter: Reporter) -> Result<Value, ToolError> {
    let started = Instant::now();
    check(opts)?;
    opts.prepare.check().map_err(bad)?;
    let prompts_text = match &opts.prompts {
        Some(p) => Some(fs::read_to_string(p).map_err(|e| bad(format!("{}: {e}", p.display())))?),
        None => None,
    };
    let prompts = Prompts::load(prompts_text.as_deref()).map_err(bad)?;
    let seeds = match &opts.seed_examples {
        Some(p) => seed_questions(p)?,
        None => vec![],
    };
    let anonymizer = Anonymizer::new(&opts.prepare.anonymize).map_err(bad)?;
    let (docs, prep) = documents(opts, &anonymizer)?;
    if docs.is_empty() {
        return Err(bad("no document is left after preparation"));
    }

    // Chunks, measured with the teacher's own tokenizer.
    let backend = inhouse::engine::llama::backend().map_err(failed)?;
    let vocab_model = LlamaModel::load_from_file(
        backend,
        &opts.teacher,
        &LlamaModelParams::default().with_vocab_only(true),
    )
    .map_err(|e| failed(format!("the teacher's vocabulary: {e}")))?;
    let mut cache: BTreeMap<String, usize> = BTreeMap::new();
    let mut count = |w: &str| {
        *cache.entry(w.to_string()).or_insert_with(|| {
            vocab_model
                .vocab()
                .tokenize(format!(" {w}").as_bytes(), false, false)
                .len()
        })
    };
    let mut chunks = Vec::new();
    for d in &docs {
        for (start, end, tokens) in chunk_text(&d.text, opts.chunk_tokens, opts.overlap, &mut count)
        {
            chunks.push(Chunk {
                id: chunks.len(),
                source: d.source.clone(),
                start,
                end,
                tokens,
                text: d.text[start..end].to_string(),
            });
        }
    }
    drop(vocab_model);
    let expected = chunks.len() * opts.per_chunk;
    let expected = opts.max_samples.map_or(expected, |m| expected.min(m));
    let wave_size = (opts.batch as usize) * 2;
    let queue = (wave_size * opts.per_chunk).max(wave_size);
    let mut run = Run {
        opts,
        prompts,
        anonymizer: &anonymizer,
        teacher: Teacher::start(opts, queue)?,
        seen: Seen::default(),
        kept: vec![],
        dropped: Dropped::default(),
        generated: 0,
        pii_found: PiiCounts::new(),
        truncated: 0,
        unparsable: 0,
        judged: 0,
    };
    for q in &seeds {
        run.seen.add(q);
    }

    if opts.dry_run {
        // A short measured run: one wave of at most `batch` chunks, through every step.
        let n = chunks.len().min(opts.batch as usize);
        let t = Instant::now();
        run.wave(&chunks[..n])?;
        let per_chunk_s = t.elapsed().as_secs_f64() / n as f64;
        let needed = match opts.max_samples {
            Some(m) => {
                let yield_per_chunk = (run.kept.len() as f64 / n as f64).max(0.1);
                ((m as f64 / yield_per_chunk).ceil() as usize).min(chunks.len())
            }
            None => chunks.len(),
        };
        return Ok(json!({
            "dry_run": true,
            "documents": docs.len(),
            "chunks": chunks.len(),
            "chunks_needed": needed,
            "expected_samples": expected,
            "measured": {"chunks": n, "seconds": t.elapsed().as_secs_f64(),
                         "generated": run.generated, "kept": run.kept.len()},
            "estimated_seconds": per_chunk_s * needed as f64,
        }));
    }

    let mut done = 0;
    for wave in chunks.chunks(wave_size) {
        if opts.max_samples.is_some_and(|m| run.kept.len() >= m) {
            break;
        }
        run.wave(wave)?;
        done += wave.len();
        let elapsed = started.elapsed().as_secs_f64();
        let mut p = Progress::new(Phase::Generate, done as f64 / chunks.len() as f64);
        p.step = Some(done as u64);
        p.steps = Some(chunks.len() as u64);
        p.tokens_per_s = Some(run.teacher.completion_tokens as f64 / elapsed.max(1e-9));
        p.eta_s = eta(elapsed, done as f64, chunks.len() as f64);
        reporter.progress(&p);
    }
    let elapsed = started.elapsed().as_secs_f64();
    write_outputs(opts, &chunks, &run, &prep, &docs, elapsed)
}

fn record(opts: &Options, chunks: &[Chunk], k: &Kept) -> Value {
    let mut messages = vec![];
    if opts.with_context {
        messages.push(json!({"role": "system", "content": chunks[k.chunk].text}));
    }
    messages.push(json!({"role": "user", "content": k.question}));
    messages.push(json!({"role": "assistant", "content": k.answer}));
    json!({ "messages": messages })
}

fn write_outputs(
    opts: &Options,
    chunks: &[Chunk],
    run: &Run<'_>,
    prep: &PrepareCounts,
    docs: &[Document],
    elapsed: f64,
) -> Result<Value, ToolError> {
    let out = &opts.out;
    fs::create_dir_all(out).map_err(|e| failed(format!("{}: {e}", out.display())))?;
    let lexicon = bias::Lexicon::builtin();
    let mut counter = bias::Counter::new(&lexicon);
    let (mut train, mut eval) = (Vec::new(), Vec::new());
    let (mut n_train, mut n_eval) = (0, 0);
    for (i, k) in run.kept.iter().enumerate() {
        let line = serde_json::to_string(&record(opts, chunks, k)).map_err(failed)?;
        counter.add_texts(
            &format!("sample {i}"),
            [k.question.as_str(), k.answer.as_str()],
        );
        let digest = xxh3_128(format!("{}\0{}", k.question, k.answer).as_bytes());
        let buf = if prepare::is_eval(opts.seed, digest, opts.eval_share) {
            n_eval += 1;
            &mut eval
        } else {
            n_train += 1;
            &mut train
        };
        writeln!(buf, "{line}").map_err(failed)?;
    }
    let mut chunk_lines = Vec::new();
    for c in chunks {
        let line = serde_json::to_string(c).map_err(failed)?;
        writeln!(chunk_lines, "{line}").map_err(failed)?;
    }
    let teacher_sha = inhouse_formats::sign::sha256_file(&opts.teacher)
        .map(|(d, _)| d)
        .map_err(failed)?;
    let kept = run.kept.len();
    let t = &opts.thresholds;
    let report = json!({
        "teacher": {"path": opts.teacher.display().to_string(), "sha256": teacher_sha},
        "prompts_digest": run.prompts.digest(),
        "prompts_source": opts.prompts.as_ref().map_or("built-in".to_string(), |p| p.display().to_string()),
        "options": {
            "style": opts.style, "chunk_tokens": opts.chunk_tokens, "overlap": opts.overlap,
            "per_chunk": opts.per_chunk, "max_samples": opts.max_samples, "seed": opts.seed,
            "eval_share": opts.eval_share, "temperature": opts.temperature,
            "max_tokens": opts.max_tokens, "batch": opts.batch, "with_context": opts.with_context,
            "seed_examples": run.seen.words.len() - kept,
        },
        "thresholds": t,
        "prepare": prep,
        "documents": docs.len(),
        "chunks": chunks.len(),
        "generations": {"truncated": run.truncated, "unparsable": run.unparsable},
        "generated": run.generated,
        "kept": kept,
        "dropped": run.dropped,
        "dropped_total": run.dropped.total(),
        "judged": run.judged,
        "personal_data_found": run.pii_found,
        "train": n_train,
        "eval": n_eval,
        "tokens": {"prompt": run.teacher.prompt_tokens, "generated": run.teacher.completion_tokens},
        "seconds": elapsed,
        "samples_per_minute": kept as f64 / elapsed * 60.0,
        "teacher_tokens_per_s": run.teacher.completion_tokens as f64 / elapsed,
        "mean_lexical_support": mean(run.kept.iter().map(|k| k.support)),
        "mean_judge_yes": mean(run.kept.iter().map(|k| k.judge)),
        "bias": counter.report(),
    });
    let mut report_text = serde_json::to_vec_pretty(&report).map_err(failed)?;
    report_text.push(b'\n');
    let files: [(&str, &[u8]); 4] = [
        (prepare::TRAIN_FILE, &train),
        (prepare::EVAL_FILE, &eval),
        ("chunks.jsonl", &chunk_lines),
        (prepare::REPORT_FILE, &report_text),
    ];
    for (name, bytes) in files {
        let partial = out.join(format!(".{name}.partial"));
        fs::write(&partial, bytes).map_err(|e| failed(format!("{}: {e}", partial.display())))?;
    }
    for (name, _) in files {
        fs::rename(out.join(format!(".{name}.partial")), out.join(name))
            .map_err(|e| failed(format!("{name}: {e}")))?;
    }
    Ok(json!({
        "chunks": chunks.len(), "generated": run.generated, "kept": kept,
        "train": n_train, "eval": n_eval, "dropped": run.dropped, "seconds": elapsed,
        "report": out.join(prepare::REPORT_FILE).display().to_string(),
    }))
}

fn mean(xs: impl Iterator<Item = f64>) -> Option<f64> {
    let v: Vec<f64> = xs.collect();
    (!v.is_empty()).then(|| v.iter().sum::<f64>() / v.len() as f64)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn w(s: &str) -> Vec<String> {
        words(s)
    }

    #[test]
    fn chunks_overlap_and_cover_the_text() {
        let text = (0..100)
            .map(|i| format!("w{i}"))
            .collect::<Vec<_>>()
            .join(" ");
        let chunks = chunk_text(&text, 10, 3, &mut |_| 1);
        assert_eq!(chunks[0], (0, text.find("w9").unwrap() + 2, 10));
        // The second chunk starts three words before the first one's end.
        assert_eq!(&text[chunks[1].0..chunks[1].0 + 2], "w7");
        assert_eq!(chunks.last().unwrap().1, text.len());
        assert!(chunks.iter().all(|c| c.2 <= 10));
        // A word larger than the chunk still makes progress.
        assert_eq!(chunk_text("a b", 1, 0, &mut |_| 5).len(), 2);
    }

    #[test]
    fn rouge_l_and_lexical_support() {
        assert_eq!(rouge_l(&w("a b c"), &w("a b c")), 1.0);
        assert_eq!(rouge_l(&w("a b c"), &w("x y z")), 0.0);
        let r = rouge_l(
            &w("what is the leave policy"),
            &w("what is the travel policy"),
        );
        assert!((r - 0.8).abs() < 1e-9);
        let chunk = "Employees receive 25 days of annual leave per year.";
        assert_eq!(lexical_support("25 days of annual leave", chunk), 1.0);
        assert_eq!(lexical_support("Mars is red and dusty", chunk), 0.0);
        assert_eq!(lexical_support("Yes.", chunk), 1.0);
    }

    #[test]
    fn near_duplicates_and_refusals() {
        let mut seen = Seen::default();
        let t = Thresholds::default();
        seen.add("How many days of annual leave do employees receive each year?");
        assert!(seen
            .verdict(
                "how many days of annual leave do employees receive each year",
                &t
            )
            .is_some());
        assert_eq!(
            seen.verdict(
                "How how many days of annual leave do employees receive each year?",
                &t
            ),
            Some(Hit::Near)
        );
        assert!(seen.verdict("Who approves expense claims?", &t).is_none());
        assert!(is_refusal("What colour?", "I'm sorry, I cannot say."));
        assert!(is_refusal("What does the passage say?", "Leave."));
        assert!(!is_refusal("Who approves claims?", "The finance team."));
    }

    #[test]
    fn judge_share_and_prompt_fill() {
        let top = vec![("Yes".to_string(), -0.1f32), ("No".to_string(), -2.5)];
        let s = yes_share(&top);
        assert!(s > 0.9 && s < 1.0);
        assert_eq!(yes_share(&[("Maybe".into(), -0.1)]), 0.0);
        assert_eq!(
            fill("{a}-{b}", &[("a", "{b}"), ("b", "x")]),
            "{b}-x",
            "a value is never substituted again"
        );
        let p = Prompts::load(Some(r#"{"styles": {"qa": "{passage} only"}}"#)).unwrap();
        assert_eq!(p.styles["qa"], "{passage} only");
        assert!(Prompts::load(Some(r#"{"styles": {"poem": "{passage}"}}"#)).is_err());
        assert!(Prompts::load(Some(r#"{"judge": "no slots"}"#)).is_err());
        assert!(Prompts::load(Some("[1]")).is_err());
    }
}
