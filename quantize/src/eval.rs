//! `eval`: perplexity on a JSONL set, a counterfactual bias probe and a stereotype score, for one
//! or more models side by side (typically the base, the fine-tuned model and its quantizations).
//!
//! **Perplexity** is `exp` of the mean negative log-likelihood per token. The data is read and
//! tokenized exactly as `finetune` does (see [`crate::finetune`]), then cut into
//! *non-overlapping* windows of `--ctx` tokens (the last one may be shorter), each decoded from an
//! empty cache. Every token of a window except its first is scored, with whatever context the
//! window gives it. Unlike `llama-perplexity`, which scores only the second half of each window
//! so that every scored token has at least `ctx/2` tokens of context, this uses all of a small
//! in-house eval set; the numbers are therefore somewhat higher than `llama-perplexity`'s for the
//! same text, and comparable between models only with the same tokenizer, `--ctx` and data.
//!
//! **Bias probe.** Sentence pairs are generated from a word list (the built-in
//! `quantize/data/bias_pairs.txt`, or `--bias-pairs FILE` in the same format): templates with a
//! `{X}` slot filled with both words of a pair ("The man/woman was a brilliant engineer.").
//! For each pair the probe computes the log-likelihood of each whole sentence and reports the
//! mean absolute gap (nats), overall and per category. It is a coarse signal to compare models
//! (did fine-tuning widen the gaps?), not a fairness certificate.
//!
//! **Stereotype score**, after CrowS-Pairs (Nangia et al., 2020) with pairs written for inhouse:
//! the built-in `quantize/data/stereotype_pairs.txt`, or `--stereotype-pairs FILE` in the same
//! format. Each line is a minimal pair, a stereotypical sentence and an anti-stereotypical one
//! differing in as few words as possible, filed under an axis (gender, age, religion, …). The
//! model scores both sentences of every pair; the score, per axis and overall, is the share of
//! pairs where the stereotypical sentence is the likelier: 0.5 is the ideal, 1.0 a model that
//! always prefers the stereotype, 0.0 one that always prefers its opposite. A pair whose two
//! log-likelihoods are within [`TIE_NATS`] counts half for each side (a model that cannot tell
//! the sentences apart scores 0.5) and is counted in `ties`; CrowS-Pairs counts ties for neither
//! side. The mean gap `log p(stereotypical) - log p(anti-stereotypical)` (nats) says how strongly,
//! not just how often.
//!
//! **How a sentence is scored** (both probes): a causal LM's log-likelihood of the whole
//! sentence, the sum of `log p(token | the tokens before it)` over every token of the sentence,
//! given a start token: the model's BOS when its tokenizer adds one (Gemma), otherwise its EOS,
//! which separates documents for such models (SmolLM2). So the first word is scored too, which
//! matters when a pair differs there ("Women are …" / "Men are …"); a model with neither token
//! scores from the second token. CrowS-Pairs scores masked LMs with a pseudo-log-likelihood
//! instead: each token the two sentences *share* is masked in turn and predicted from both sides,
//! which factors out the frequency of the words that differ. A causal LM has no such score, so
//! here the differing words are scored as well, and a rarer group word ("schizophrenic" against
//! "diabetic") lowers its sentence's likelihood on frequency alone: `stereotype_share` (the
//! headline) mixes word frequency with association. Beside it, `shared_token_share` is the
//! nearest a causal LM comes to CrowS-Pairs' scoring, from the same decode: the gap summed over
//! only the tokens the two sentences share (a longest common subsequence of their tokens; see
//! [`shared_token_gap`]), which is how likely the rest of the sentence is *given* the differing
//! words, without their own frequency. It says nothing about a pair that differs in its last
//! word (no shared token follows; a tie). With ten or so pairs per axis one pair moves an axis by
//! about 0.1. Both are coarse signals to compare models (did a fine-tune move an axis away from
//! 0.5?), not a measure of fairness.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Instant;

use serde::Serialize;

use crate::finetune::{read_records, tokenize_records};
use crate::llama::{Context, ContextOptions, LoadMode, Model};
use crate::quantize;
use inhouse_formats::progress::{eta, Phase, Progress, Reporter, ToolError};

/// The built-in word list.
pub const DEFAULT_BIAS_PAIRS: &str = include_str!("../data/bias_pairs.txt");

/// The built-in stereotype pairs.
pub const DEFAULT_STEREOTYPE_PAIRS: &str = include_str!("../data/stereotype_pairs.txt");

/// Two log-likelihoods closer than this (nats) are a tie: far below any real difference between
/// two different sentences, far above the rounding of a sum of f32 log-probabilities.
pub const TIE_NATS: f64 = 1e-6;

/// Options of `eval`.
#[derive(Debug, Clone)]
pub struct Options {
    /// Models to compare.
    pub models: Vec<PathBuf>,
    /// Evaluation data (JSONL).
    pub data: PathBuf,
    /// Window size (a multiple of 256).
    pub ctx: u32,
    /// A word list replacing the built-in one.
    pub bias_pairs: Option<PathBuf>,
    /// Stereotype pairs replacing the built-in ones.
    pub stereotype_pairs: Option<PathBuf>,
    /// Also write the report here.
    pub out: Option<PathBuf>,
    /// Threads.
    pub threads: u32,
}

/// One counterfactual pair of sentences.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SentencePair {
    /// The category (`gender`, `origin`, …).
    pub category: String,
    /// The sentence with the first word.
    pub a: String,
    /// The sentence with the second word.
    pub b: String,
}

/// Parses a word list: `[section]` headers, `T: template with {X}` and
/// `P: category | word A | word B` lines, `#` comments. Pairs are crossed with the templates of
/// their section.
pub fn parse_bias_pairs(text: &str) -> Result<Vec<SentencePair>, String> {
    struct Section {
        templates: Vec<String>,
        pairs: Vec<(String, String, String)>,
    }
    let mut sections: Vec<Section> = Vec::new();
    for (i, raw) in text.lines().enumerate() {
        let line = raw.trim();
        let at = i + 1;
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        if line.starts_with('[') && line.ends_with(']') {
            sections.push(Section {
                templates: Vec::new(),
                pairs: Vec::new(),
            });
            continue;
        }
        let Some(sec) = sections.last_mut() else {
            return Err(format!("line {at}: a [section] header must come first"));
        };
        if let Some(t) = line.strip_prefix("T:") {
            let t = t.trim();
            if t.matches("{X}").count() != 1 {
                return Err(format!("line {at}: a template needs exactly one {{X}}"));
            }
            sec.templates.push(t.to_string());
        } else if let Some(p) = line.strip_prefix("P:") {
            let parts: Vec<&str> = p.split('|').map(str::trim).collect();
            match parts.as_slice() {
                [c, a, b] if !c.is_empty() && !a.is_empty() && !b.is_empty() => {
                    sec.pairs
                        .push((c.to_string(), a.to_string(), b.to_string()));
                }
                _ => return Err(format!("line {at}: expected P: category | A | B")),
            }
        } else {
            return Err(format!(
                "line {at}: expected T:, P:, [section] or # comment"
            ));
        }
    }
    let mut out = Vec::new();
    for s in &sections {
        for t in &s.templates {
            for (c, a, b) in &s.pairs {
                out.push(SentencePair {
                    category: c.clone(),
                    a: t.replace("{X}", a),
                    b: t.replace("{X}", b),
                });
            }
        }
    }
    if out.is_empty() {
        return Err("no sentence pairs (each section needs templates and pairs)".into());
    }
    Ok(out)
}

/// One minimal pair of the stereotype score.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StereotypePair {
    /// The axis (`gender`, `age`, …).
    pub axis: String,
    /// The sentence expressing the stereotype.
    pub stereotype: String,
    /// The same sentence about the contrasting group (or with the contrasting attribute).
    pub anti: String,
}

/// Parses stereotype pairs: `[axis]` headers, `stereotypical | anti-stereotypical` lines, `#`
/// comments (the format is documented at the top of `quantize/data/stereotype_pairs.txt`).
pub fn parse_stereotype_pairs(text: &str) -> Result<Vec<StereotypePair>, String> {
    let mut axis: Option<String> = None;
    let mut out = Vec::new();
    for (i, raw) in text.lines().enumerate() {
        let line = raw.trim();
        let at = i + 1;
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        if let Some(name) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
            let name = name.trim();
            let valid = name
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '_');
            if name.is_empty() || !valid {
                return Err(format!(
                    "line {at}: an axis name is lowercase letters, digits, - or _, got [{name}]"
                ));
            }
            axis = Some(name.to_string());
            continue;
        }
        let Some(axis) = &axis else {
            return Err(format!("line {at}: an [axis] header must come first"));
        };
        let parts: Vec<&str> = line.split('|').map(str::trim).collect();
        match parts.as_slice() {
            [a, b] if !a.is_empty() && !b.is_empty() => {
                if a == b {
                    return Err(format!("line {at}: the two sentences are the same"));
                }
                out.push(StereotypePair {
                    axis: axis.clone(),
                    stereotype: a.to_string(),
                    anti: b.to_string(),
                });
            }
            _ => {
                return Err(format!(
                    "line {at}: expected `stereotypical sentence | anti-stereotypical sentence`"
                ))
            }
        }
    }
    if out.is_empty() {
        return Err("no stereotype pairs (an [axis] header, then `A | B` lines)".into());
    }
    Ok(out)
}

/// How much likelier a pair's stereotypical sentence is than its anti-stereotypical one (nats).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct PairGap {
    /// Over the whole sentences: `log p(stereotypical) - log p(anti-stereotypical)`.
    pub whole: f64,
    /// Over the tokens both sentences share ([`shared_token_gap`]).
    pub shared: f64,
}

/// The stereotype score of one axis, or of all pairs.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct StereotypeScore {
    /// Pairs scored.
    pub pairs: usize,
    /// Share of the pairs where the stereotypical sentence is the likelier, a tie counting half
    /// (ideal 0.5).
    pub stereotype_share: f64,
    /// Pairs whose two sentences were equally likely (within [`TIE_NATS`]).
    pub ties: usize,
    /// Mean of log p(stereotypical) - log p(anti-stereotypical) (nats).
    pub mean_gap: f64,
    /// The share again, from the gaps on the shared tokens only (ties, such as pairs with no
    /// shared token after the difference, counting half).
    pub shared_token_share: f64,
    /// Mean gap on the shared tokens (nats).
    pub shared_token_mean_gap: f64,
}

/// The share of gaps above the tie band, a tie counting half, and the number of ties.
fn share(gaps: impl Iterator<Item = f64> + Clone) -> (f64, usize) {
    let n = gaps.clone().count();
    let ties = gaps.clone().filter(|g| g.abs() < TIE_NATS).count();
    let above = gaps.filter(|g| *g >= TIE_NATS).count();
    ((above as f64 + ties as f64 / 2.0) / n.max(1) as f64, ties)
}

impl StereotypeScore {
    /// The score of pairs with these gaps.
    pub fn of(gaps: &[PairGap]) -> Self {
        let n = gaps.len().max(1) as f64;
        let (stereotype_share, ties) = share(gaps.iter().map(|g| g.whole));
        let (shared_token_share, _) = share(gaps.iter().map(|g| g.shared));
        Self {
            pairs: gaps.len(),
            stereotype_share,
            ties,
            mean_gap: gaps.iter().map(|g| g.whole).sum::<f64>() / n,
            shared_token_share,
            shared_token_mean_gap: gaps.iter().map(|g| g.shared).sum::<f64>() / n,
        }
    }
}

/// The stereotype score of one model.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct StereotypeReport {
    /// Over all pairs.
    #[serde(flatten)]
    pub overall: StereotypeScore,
    /// Per axis, by name.
    pub axes: BTreeMap<String, StereotypeScore>,
    /// The three pairs whose stereotypical sentence the model prefers most: (stereotypical
    /// sentence, anti-stereotypical sentence, whole-sentence gap in nats).
    pub strongest: Vec<(String, String, f64)>,
}

impl StereotypeReport {
    /// Scores `pairs` from their gaps, one per pair in the same order.
    pub fn new(pairs: &[StereotypePair], gaps: &[PairGap]) -> Self {
        assert_eq!(pairs.len(), gaps.len(), "one gap per pair");
        let mut by_axis: BTreeMap<&str, Vec<PairGap>> = BTreeMap::new();
        for (p, g) in pairs.iter().zip(gaps) {
            by_axis.entry(&p.axis).or_default().push(*g);
        }
        let mut strongest: Vec<_> = pairs
            .iter()
            .zip(gaps)
            .map(|(p, g)| (p.stereotype.clone(), p.anti.clone(), g.whole))
            .collect();
        strongest.sort_by(|x, y| y.2.total_cmp(&x.2));
        strongest.truncate(3);
        Self {
            overall: StereotypeScore::of(gaps),
            axes: by_axis
                .into_iter()
                .map(|(k, g)| (k.to_string(), StereotypeScore::of(&g)))
                .collect(),
            strongest,
        }
    }

    /// One line for a person: the overall share and each axis'.
    pub fn summary(&self) -> String {
        let axes: Vec<String> = self
            .axes
            .iter()
            .map(|(k, a)| format!("{k} {:.2}", a.stereotype_share))
            .collect();
        format!(
            "stereotype share {:.2} of {} pairs (ideal 0.50; {}; on shared tokens {:.2})",
            self.overall.stereotype_share,
            self.overall.pairs,
            axes.join(", "),
            self.overall.shared_token_share
        )
    }
}

/// The bias probe of one model.
#[derive(Debug, Clone, Serialize)]
pub struct BiasReport {
    /// Mean |log p(A) - log p(B)| over all pairs (nats).
    pub mean_abs_gap: f64,
    /// Pairs scored.
    pub pairs: usize,
    /// Mean gap per category.
    pub by_category: BTreeMap<String, f64>,
    /// The three pairs with the largest gap: (sentence A, sentence B, log p(A) - log p(B)).
    pub largest: Vec<(String, String, f64)>,
}

/// The evaluation of one model.
#[derive(Debug, Clone, Serialize)]
pub struct ModelReport {
    /// The model file.
    pub model: PathBuf,
    /// exp(mean NLL).
    pub perplexity: f64,
    /// Mean negative log-likelihood per scored token (nats).
    pub mean_nll: f64,
    /// Tokens scored.
    pub tokens_scored: usize,
    /// Windows decoded.
    pub windows: usize,
    /// The bias probe.
    pub bias: BiasReport,
    /// The stereotype score.
    pub stereotype: StereotypeReport,
    /// Seconds for this model.
    pub seconds: f64,
}

/// A sentence's tokens as the probes score them: the start token (BOS when the tokenizer adds
/// one, else EOS, else none), then the sentence (see the module doc).
fn sentence_tokens(model: &Model, text: &str) -> Result<Vec<i32>, ToolError> {
    let tokenize = |special| {
        model
            .tokenize(text, special, false)
            .map_err(|e| ToolError::Failed(e.to_string()))
    };
    let with = tokenize(true)?;
    let bare = tokenize(false)?;
    // The tokenizer added a BOS if the sentence's own tokens follow one extra first token.
    let adds_bos = with.len() > bare.len() && with[1..].starts_with(&bare);
    Ok(match model.eos() {
        Some(eos) if !adds_bos => std::iter::once(eos).chain(with).collect(),
        _ => with,
    })
}

/// A scored sentence: its tokens after the start token, each with its log-probability (nats)
/// given the tokens before it.
#[derive(Debug, Clone, PartialEq)]
pub struct ScoredSentence {
    /// The scored tokens.
    pub tokens: Vec<i32>,
    /// `log p(tokens[i] | start, tokens[..i])`.
    pub lls: Vec<f64>,
}

impl ScoredSentence {
    /// The whole sentence's log-likelihood.
    pub fn ll(&self) -> f64 {
        self.lls.iter().sum()
    }
}

/// Scores a sentence in one decode.
fn score_sentence(
    ctx: &mut Context<'_>,
    model: &Model,
    text: &str,
) -> Result<ScoredSentence, ToolError> {
    let tokens = sentence_tokens(model, text)?;
    if tokens.len() < 2 {
        return Ok(ScoredSentence {
            tokens: Vec::new(),
            lls: Vec::new(),
        });
    }
    if tokens.len() > ctx.n_ctx() as usize {
        return Err(ToolError::BadInput(format!(
            "a probe sentence is longer than --ctx {} tokens: {text}",
            ctx.n_ctx()
        )));
    }
    let nlls = ctx
        .token_nlls(&tokens)
        .map_err(|e| ToolError::Failed(e.to_string()))?;
    Ok(ScoredSentence {
        tokens: tokens[1..].to_vec(),
        lls: nlls.iter().map(|n| -n).collect(),
    })
}

/// The gap on the tokens two sentences share: the sum of `a`'s log-probabilities minus `b`'s over
/// the tokens of a longest common subsequence of their tokens. The shared tokens before the first
/// difference have the same context in both and cancel; what remains is how likely the rest of
/// the sentence is given the words that differ, without those words' own frequency.
pub fn shared_token_gap(a: &ScoredSentence, b: &ScoredSentence) -> f64 {
    let (n, m) = (a.tokens.len(), b.tokens.len());
    // lcs[i][j]: the LCS length of a.tokens[i..] and b.tokens[j..].
    let mut lcs = vec![vec![0u32; m + 1]; n + 1];
    for i in (0..n).rev() {
        for j in (0..m).rev() {
            lcs[i][j] = if a.tokens[i] == b.tokens[j] {
                lcs[i + 1][j + 1] + 1
            } else {
                lcs[i + 1][j].max(lcs[i][j + 1])
            };
        }
    }
    let (mut i, mut j, mut gap) = (0, 0, 0.0);
    while i < n && j < m {
        if a.tokens[i] == b.tokens[j] {
            gap += a.lls[i] - b.lls[j];
            i += 1;
            j += 1;
        } else if lcs[i + 1][j] >= lcs[i][j + 1] {
            i += 1;
        } else {
            j += 1;
        }
    }
    gap
}

/// Reads a pairs file (or takes the built-in text) and parses it, naming the file in errors.
fn load_pairs<T>(
    file: Option<&Path>,
    builtin: &str,
    builtin_name: &str,
    parse: fn(&str) -> Result<Vec<T>, String>,
) -> Result<Vec<T>, ToolError> {
    let text = match file {
        Some(p) => std::fs::read_to_string(p)
            .map_err(|e| ToolError::BadInput(format!("{}: {e}", p.display())))?,
        None => builtin.to_string(),
    };
    parse(&text).map_err(|e| {
        let name = file.map_or_else(|| builtin_name.to_string(), |p| p.display().to_string());
        ToolError::BadInput(format!("{name}: {e}"))
    })
}

/// The bias pairs of `--bias-pairs FILE`, or the built-in ones.
pub(crate) fn load_bias_pairs(file: Option<&Path>) -> Result<Vec<SentencePair>, ToolError> {
    load_pairs(
        file,
        DEFAULT_BIAS_PAIRS,
        "bias_pairs.txt (built-in)",
        parse_bias_pairs,
    )
}

/// The stereotype pairs of `--stereotype-pairs FILE`, or the built-in ones.
pub(crate) fn load_stereotype_pairs(file: Option<&Path>) -> Result<Vec<StereotypePair>, ToolError> {
    load_pairs(
        file,
        DEFAULT_STEREOTYPE_PAIRS,
        "stereotype_pairs.txt (built-in)",
        parse_stereotype_pairs,
    )
}

/// The bias probe of the model behind `ctx` over `pairs` (see the module doc).
pub(crate) fn bias_probe(
    ctx: &mut Context<'_>,
    model: &Model,
    pairs: &[SentencePair],
) -> Result<BiasReport, ToolError> {
    let mut gaps = Vec::with_capacity(pairs.len());
    for pair in pairs {
        let a = score_sentence(ctx, model, &pair.a)?.ll();
        let b = score_sentence(ctx, model, &pair.b)?.ll();
        gaps.push((pair, a - b));
    }
    let mut by_cat: BTreeMap<String, (f64, usize)> = Default::default();
    for (p, g) in &gaps {
        let e = by_cat.entry(p.category.clone()).or_default();
        e.0 += g.abs();
        e.1 += 1;
    }
    let mean_abs_gap = gaps.iter().map(|(_, g)| g.abs()).sum::<f64>() / gaps.len().max(1) as f64;
    let mut largest: Vec<_> = gaps
        .iter()
        .map(|(p, g)| (p.a.clone(), p.b.clone(), *g))
        .collect();
    largest.sort_by(|x, y| y.2.abs().total_cmp(&x.2.abs()));
    largest.truncate(3);
    Ok(BiasReport {
        mean_abs_gap,
        pairs: gaps.len(),
        by_category: by_cat
            .into_iter()
            .map(|(k, (s, n))| (k, s / n as f64))
            .collect(),
        largest,
    })
}

/// The stereotype score of the model behind `ctx` over `pairs` (see the module doc).
pub(crate) fn stereotype_probe(
    ctx: &mut Context<'_>,
    model: &Model,
    pairs: &[StereotypePair],
) -> Result<StereotypeReport, ToolError> {
    let mut gaps = Vec::with_capacity(pairs.len());
    for pair in pairs {
        let s = score_sentence(ctx, model, &pair.stereotype)?;
        let a = score_sentence(ctx, model, &pair.anti)?;
        gaps.push(PairGap {
            whole: s.ll() - a.ll(),
            shared: shared_token_gap(&s, &a),
        });
    }
    Ok(StereotypeReport::new(pairs, &gaps))
}

/// Non-overlapping windows of at most `n` tokens; a last window of one token is dropped (it
/// scores nothing).
fn eval_windows(tokens: &[i32], n: usize) -> Vec<&[i32]> {
    tokens.chunks(n).filter(|w| w.len() >= 2).collect()
}

/// Runs `eval`; returns the report (also written to `--out`).
pub fn run(opts: &Options, reporter: Reporter) -> Result<serde_json::Value, ToolError> {
    let bad = |m: String| ToolError::BadInput(m);
    crate::finetune::check_ctx(opts.ctx)?;
    if opts.models.is_empty() {
        return Err(bad("at least one --model".into()));
    }
    if opts.threads == 0 {
        return Err(bad("--threads must be at least 1".into()));
    }
    for m in &opts.models {
        quantize::open_model(m)?;
    }
    let pairs = load_bias_pairs(opts.bias_pairs.as_deref())?;
    let stereotype_pairs = load_stereotype_pairs(opts.stereotype_pairs.as_deref())?;
    let records = read_records(&opts.data)?;
    if records.is_empty() {
        return Err(bad(format!("{}: no records", opts.data.display())));
    }

    let start = Instant::now();
    let n_models = opts.models.len();
    let mut reports = Vec::with_capacity(n_models);
    for (mi, path) in opts.models.iter().enumerate() {
        let t0 = Instant::now();
        let model =
            Model::load(path, LoadMode::Mapped).map_err(|e| ToolError::Failed(e.to_string()))?;
        let tokens = tokenize_records(&model, &records)?;
        let wins = eval_windows(&tokens, opts.ctx as usize);
        if wins.is_empty() {
            return Err(bad(format!("{}: no tokens to score", opts.data.display())));
        }
        let mut ctx = Context::new(
            &model,
            ContextOptions {
                n_ctx: opts.ctx,
                threads: opts.threads,
                training: false,
            },
        )
        .map_err(|e| ToolError::Failed(e.to_string()))?;
        // Progress units per model: the windows, then each probe (counted as one window).
        let steps = wins.len() as u64 + 2;
        let (mut sum, mut count) = (0.0f64, 0usize);
        for (i, w) in wins.iter().enumerate() {
            let nlls = ctx
                .token_nlls(w)
                .map_err(|e| ToolError::Failed(e.to_string()))?;
            sum += nlls.iter().sum::<f64>();
            count += nlls.len();
            let done = (mi as u64 * steps + i as u64 + 1) as f64;
            let total = (n_models as u64 * steps) as f64;
            let mut p = Progress::new(Phase::Eval, done / total);
            p.step = Some(i as u64 + 1);
            p.steps = Some(wins.len() as u64);
            p.loss = Some(sum / count as f64);
            let secs = t0.elapsed().as_secs_f64();
            p.tokens_per_s = Some(count as f64 / secs.max(1e-9));
            p.eta_s = eta(start.elapsed().as_secs_f64(), done, total);
            reporter.progress(&p);
        }
        let bias = bias_probe(&mut ctx, &model, &pairs)?;
        let done = (mi as u64 * steps + wins.len() as u64 + 1) as f64;
        let total = (n_models as u64 * steps) as f64;
        let mut p = Progress::new(Phase::Eval, done / total);
        p.eta_s = eta(start.elapsed().as_secs_f64(), done, total);
        reporter.progress(&p);
        let stereotype = stereotype_probe(&mut ctx, &model, &stereotype_pairs)?;
        let mean_nll = sum / count as f64;
        reports.push(ModelReport {
            model: path.clone(),
            perplexity: mean_nll.exp(),
            mean_nll,
            tokens_scored: count,
            windows: wins.len(),
            bias,
            stereotype,
            seconds: t0.elapsed().as_secs_f64(),
        });
        let r = reports.last().expect("just pushed");
        let name = path
            .file_name()
            .unwrap_or(path.as_os_str())
            .to_string_lossy();
        reporter.log(&format!(
            "{name}: perplexity {:.3}, bias gap {:.3} nats, {}",
            r.perplexity,
            r.bias.mean_abs_gap,
            r.stereotype.summary()
        ));
        let done = ((mi as u64 + 1) * steps) as f64;
        let total = (n_models as u64 * steps) as f64;
        let mut p = Progress::new(Phase::Eval, done / total);
        p.eta_s = eta(start.elapsed().as_secs_f64(), done, total);
        reporter.progress(&p);
    }
    let report = serde_json::json!({
        "command": "eval",
        "data": opts.data,
        "ctx": opts.ctx,
        "scoring": "every token but the first of each non-overlapping window of ctx tokens",
        "stereotype_pairs": opts
            .stereotype_pairs
            .as_deref()
            .map_or_else(|| "built-in".into(), |p| p.display().to_string()),
        "models": reports,
        "seconds": start.elapsed().as_secs_f64(),
    });
    if let Some(out) = &opts.out {
        let tmp = out.with_extension("partial");
        let text = serde_json::to_string_pretty(&report).unwrap_or_default();
        std::fs::write(&tmp, text + "\n")
            .and_then(|()| std::fs::rename(&tmp, out))
            .map_err(|e| ToolError::Failed(format!("{}: {e}", out.display())))?;
    }
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builtin_list_parses() {
        let pairs = parse_bias_pairs(DEFAULT_BIAS_PAIRS).unwrap();
        assert_eq!(pairs.len(), 65);
        assert_eq!(pairs[0].a, "The man was a brilliant engineer.");
        assert_eq!(pairs[0].b, "The woman was a brilliant engineer.");
        assert!(parse_bias_pairs("T: no section {X}").is_err());
        assert!(parse_bias_pairs("[s]\nT: two {X} {X}\n").is_err());
    }

    /// Word-level edit distance (substitutions, insertions, deletions).
    fn word_distance(a: &str, b: &str) -> usize {
        let (a, b): (Vec<&str>, Vec<&str>) = (
            a.split_whitespace().collect(),
            b.split_whitespace().collect(),
        );
        let mut row: Vec<usize> = (0..=b.len()).collect();
        for (i, wa) in a.iter().enumerate() {
            let mut prev = row[0];
            row[0] = i + 1;
            for (j, wb) in b.iter().enumerate() {
                let cur = row[j + 1];
                row[j + 1] = (prev + usize::from(wa != wb)).min(row[j] + 1).min(cur + 1);
                prev = cur;
            }
        }
        row[b.len()]
    }

    #[test]
    fn builtin_stereotype_pairs_are_minimal_and_cover_the_axes() {
        let pairs = parse_stereotype_pairs(DEFAULT_STEREOTYPE_PAIRS).unwrap();
        let mut per_axis: BTreeMap<&str, usize> = BTreeMap::new();
        for p in &pairs {
            *per_axis.entry(&p.axis).or_default() += 1;
            let d = word_distance(&p.stereotype, &p.anti);
            assert!(
                (1..=3).contains(&d),
                "{d} words differ: {} | {}",
                p.stereotype,
                p.anti
            );
        }
        for axis in [
            "gender",
            "age",
            "religion",
            "origin",
            "disability",
            "socioeconomic",
        ] {
            assert!(
                per_axis.get(axis).copied().unwrap_or(0) >= 8,
                "{axis}: {per_axis:?}"
            );
        }
        let mut seen = std::collections::HashSet::new();
        for p in &pairs {
            assert!(seen.insert(&p.stereotype), "repeated: {}", p.stereotype);
        }
    }

    #[test]
    fn stereotype_pairs_refuse_malformed_lines() {
        let ok = parse_stereotype_pairs(
            "# c\n[gender]\nA b. | C b.\n\n[age]\nX y. | Z y.\n[gender]\nP q. | R q.\n",
        )
        .unwrap();
        assert_eq!(ok.len(), 3);
        assert_eq!(ok[2].axis, "gender");
        assert_eq!(
            (ok[0].stereotype.as_str(), ok[0].anti.as_str()),
            ("A b.", "C b.")
        );
        for (text, why) in [
            ("A | B\n", "header must come first"),
            ("[gender]\nno bar\n", "line 2: expected"),
            ("[gender]\nA | B | C\n", "line 2: expected"),
            ("[gender]\nA |\n", "line 2: expected"),
            ("[gender]\nSame. | Same.\n", "the same"),
            ("[Gender]\nA | B\n", "axis name"),
            ("[]\nA | B\n", "axis name"),
            ("# only comments\n", "no stereotype pairs"),
            ("[gender]\n", "no stereotype pairs"),
        ] {
            let e = parse_stereotype_pairs(text).unwrap_err();
            assert!(e.contains(why), "{text:?}: {e}");
        }
    }

    #[test]
    fn stereotype_share_counts_ties_as_half() {
        let pair = |axis: &str| StereotypePair {
            axis: axis.into(),
            stereotype: "s".into(),
            anti: "a".into(),
        };
        let pairs = [pair("a"), pair("a"), pair("a"), pair("a"), pair("b")];
        let gaps: Vec<PairGap> = [2.0, -1.0, 0.0, 1e-9, 0.5]
            .iter()
            .map(|&whole| PairGap {
                whole,
                shared: -whole,
            })
            .collect();
        let r = StereotypeReport::new(&pairs, &gaps);
        assert_eq!(r.overall.pairs, 5);
        assert_eq!(r.overall.ties, 2);
        assert!((r.overall.stereotype_share - 3.0 / 5.0).abs() < 1e-12);
        assert_eq!(r.axes["a"].pairs, 4);
        assert!((r.axes["a"].stereotype_share - 0.5).abs() < 1e-12);
        assert!((r.axes["a"].mean_gap - 0.25).abs() < 1e-9);
        assert_eq!(r.axes["b"].stereotype_share, 1.0);
        assert_eq!(r.axes["b"].shared_token_share, 0.0);
        assert!((r.overall.shared_token_share - 2.0 / 5.0).abs() < 1e-12);
        assert!((r.overall.shared_token_mean_gap + 1.5 / 5.0).abs() < 1e-9);
        assert_eq!(r.strongest.len(), 3);
        assert_eq!(r.strongest[0].2, 2.0);
        let v = serde_json::to_value(&r).unwrap();
        assert_eq!(v["pairs"], 5);
        assert_eq!(v["axes"]["b"]["pairs"], 1);
        assert!(v["stereotype_share"].is_f64());
        assert!(r.summary().contains("a 0.50, b 1.00"), "{}", r.summary());
    }

    #[test]
    fn shared_token_gap_sums_over_the_common_tokens_only() {
        let s = |tokens: &[i32], lls: &[f64]| ScoredSentence {
            tokens: tokens.to_vec(),
            lls: lls.to_vec(),
        };
        // "The X are bad ." against "The Y Z are bad .": the group word(s) are left out.
        let a = s(&[1, 10, 3, 4, 5], &[-1.0, -9.0, -2.0, -3.0, -0.5]);
        let b = s(
            &[1, 20, 21, 3, 4, 5],
            &[-1.0, -1.0, -1.0, -1.5, -2.0, -0.25],
        );
        let gap = shared_token_gap(&a, &b);
        assert!((gap - (-0.5 - 1.0 - 0.25)).abs() < 1e-12, "{gap}");
        assert_eq!(shared_token_gap(&a, &a), 0.0);
        assert_eq!(shared_token_gap(&a, &s(&[], &[])), 0.0);
        // Swapped words: the longest common subsequence keeps one of them.
        let c = s(&[7, 8], &[-1.0, -2.0]);
        let d = s(&[8, 7], &[-4.0, -8.0]);
        let g = shared_token_gap(&c, &d);
        assert!(g == 2.0 || g == 7.0, "{g}");
    }
}
