//! `eval`: perplexity on a JSONL set and a counterfactual bias probe, for one or more models
//! side by side (typically the base, the fine-tuned model and its quantizations).
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

use std::path::{Path, PathBuf};
use std::time::Instant;

use serde::Serialize;

use crate::finetune::{read_records, tokenize_records};
use crate::llama::{Context, ContextOptions, LoadMode, Model};
use crate::quantize;
use inhouse_formats::progress::{eta, Phase, Progress, Reporter, ToolError};

/// The built-in word list.
pub const DEFAULT_BIAS_PAIRS: &str = include_str!("../data/bias_pairs.txt");

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

/// The bias probe of one model.
#[derive(Debug, Clone, Serialize)]
pub struct BiasReport {
    /// Mean |log p(A) - log p(B)| over all pairs (nats).
    pub mean_abs_gap: f64,
    /// Pairs scored.
    pub pairs: usize,
    /// Mean gap per category.
    pub by_category: std::collections::BTreeMap<String, f64>,
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
    /// Seconds for this model.
    pub seconds: f64,
}

/// Log-likelihood of a whole sentence (nats): the sum over its tokens after the first. The
/// first is BOS when the model adds one; otherwise it is the sentence's first word, which the
/// templates keep the same in both sentences of a pair (the slot is never first).
fn sentence_ll(ctx: &mut Context<'_>, model: &Model, text: &str) -> Result<f64, ToolError> {
    let tokens = model
        .tokenize(text, true, false)
        .map_err(|e| ToolError::Failed(e.to_string()))?;
    if tokens.len() < 2 {
        return Ok(0.0);
    }
    let nlls = ctx
        .token_nlls(&tokens[..tokens.len().min(ctx.n_ctx() as usize)])
        .map_err(|e| ToolError::Failed(e.to_string()))?;
    Ok(-nlls.iter().sum::<f64>())
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
    let pairs_text = match &opts.bias_pairs {
        Some(p) => std::fs::read_to_string(p).map_err(|e| bad(format!("{}: {e}", p.display())))?,
        None => DEFAULT_BIAS_PAIRS.to_string(),
    };
    let pairs = parse_bias_pairs(&pairs_text).map_err(|e| {
        bad(format!(
            "{}: {e}",
            opts.bias_pairs
                .as_deref()
                .unwrap_or(Path::new("bias_pairs.txt"))
                .display()
        ))
    })?;
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
        // Progress units per model: the windows, then the pairs (counted as one window).
        let steps = wins.len() as u64 + 1;
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
        let mut gaps = Vec::with_capacity(pairs.len());
        for pair in &pairs {
            let a = sentence_ll(&mut ctx, &model, &pair.a)?;
            let b = sentence_ll(&mut ctx, &model, &pair.b)?;
            gaps.push((pair, a - b));
        }
        let mut by_cat: std::collections::BTreeMap<String, (f64, usize)> = Default::default();
        for (p, g) in &gaps {
            let e = by_cat.entry(p.category.clone()).or_default();
            e.0 += g.abs();
            e.1 += 1;
        }
        let mean_abs_gap = gaps.iter().map(|(_, g)| g.abs()).sum::<f64>() / gaps.len() as f64;
        let mut largest: Vec<_> = gaps
            .iter()
            .map(|(p, g)| (p.a.clone(), p.b.clone(), *g))
            .collect();
        largest.sort_by(|x, y| y.2.abs().total_cmp(&x.2.abs()));
        largest.truncate(3);
        let mean_nll = sum / count as f64;
        reports.push(ModelReport {
            model: path.clone(),
            perplexity: mean_nll.exp(),
            mean_nll,
            tokens_scored: count,
            windows: wins.len(),
            bias: BiasReport {
                mean_abs_gap,
                pairs: gaps.len(),
                by_category: by_cat
                    .into_iter()
                    .map(|(k, (s, n))| (k, s / n as f64))
                    .collect(),
                largest,
            },
            seconds: t0.elapsed().as_secs_f64(),
        });
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
}
