//! `report.json`: what a run read, dropped, replaced and wrote, and with which options.
//!
//! Keys are snake_case like the `inspect --json` report. No digest of the outputs is included:
//! the only hash in this crate's data path, xxh3, is not cryptographic, and a checksum that
//! looks like an integrity guarantee but is not one would mislead.

use std::fmt::Write as _;

use serde::Serialize;

use super::anonymize::PiiCounts;
use super::filter::FilterCounts;
use super::ingest::InputError;
use crate::bias::{terms::ratio_text, BiasReport};

/// At most this many errors are listed in the report (all are counted): a corrupt
/// million-line file should not produce a million-entry report.
pub const MAX_LISTED_ERRORS: usize = 1000;

/// Counts for one input file.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct FileCounts {
    /// The file, as named or found.
    pub path: String,
    /// Documents read from it.
    pub documents: usize,
    /// Of those, written to train or eval.
    pub kept: usize,
    /// Lines (or the whole file) that could not be read or parsed.
    pub errors: usize,
}

/// The report of one `prepare` run.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    /// The options used: inputs, output folder, the effective config (with the name list
    /// replaced by its length, so the report does not hold the names it removed) and the LSH
    /// parameters.
    pub options: serde_json::Value,
    /// Per input file, in processing order.
    pub files: Vec<FileCounts>,
    /// Files inside input folders passed over for their extension (hidden ones are not
    /// counted).
    pub files_ignored: usize,
    /// Documents read (every parsed `.txt`/`.md` file and JSONL line).
    pub documents_in: usize,
    /// Dropped: same content as an earlier document.
    pub exact_duplicates: usize,
    /// Dropped: estimated Jaccard ≥ threshold with an earlier kept document.
    pub near_duplicates: usize,
    /// Dropped by a filter, by reason.
    pub filtered: FilterCounts,
    /// Personal data replaced in the written documents, by placeholder label (every configured
    /// label is listed, zero included).
    pub pii_replaced: PiiCounts,
    /// Kept documents written to `train.jsonl` (counterfactual copies are counted in
    /// `augment`).
    pub train: usize,
    /// Kept documents written to `eval.jsonl`.
    pub eval: usize,
    /// Demographic terms in the kept documents, before any augmentation (see [`crate::bias`]).
    pub bias: BiasReport,
    /// What `--augment` added; `None` (`null`) without it.
    pub augment: Option<AugmentReport>,
    /// Input errors, all of them (skipped with `--on-error skip`).
    pub error_count: usize,
    /// The first [`MAX_LISTED_ERRORS`] errors with file and line.
    pub errors: Vec<InputError>,
}

/// What `--augment counterfactual` added.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct AugmentReport {
    /// `counterfactual`.
    pub mode: String,
    /// The pair list used: a path, or `built-in`.
    pub pairs: String,
    /// Pair lines in that list.
    pub pair_count: usize,
    /// Copies written, `train_added + eval_added`.
    pub records_added: usize,
    /// Copies written to `train.jsonl` (each after its original, in the same file).
    pub train_added: usize,
    /// Copies written to `eval.jsonl`.
    pub eval_added: usize,
    /// Copies not written because a kept document or an earlier copy has the same content.
    pub copies_skipped_duplicate: usize,
    /// Documents dropped because an earlier copy has the same content (also counted in
    /// `exact_duplicates`).
    pub originals_dropped_duplicate_of_copy: usize,
    /// The bias report of everything written: the kept documents and the copies.
    pub bias_after: BiasReport,
}

impl Report {
    /// Records an input error.
    pub fn add_error(&mut self, error: InputError) {
        self.error_count += 1;
        if self.errors.len() < MAX_LISTED_ERRORS {
            self.errors.push(error);
        }
    }

    /// A few lines for a person, printed on stderr by the command.
    pub fn summary(&self) -> String {
        let mut s = String::new();
        let out = self.options["out"].as_str().unwrap_or("");
        let _ = writeln!(
            s,
            "prepare: {} documents from {} files -> {} train, {} eval in {out}",
            self.documents_in,
            self.files.len(),
            self.train,
            self.eval
        );
        let _ = writeln!(
            s,
            "  dropped: {} exact duplicates, {} near-duplicates, {} filtered",
            self.exact_duplicates,
            self.near_duplicates,
            self.filtered.total()
        );
        let reasons = self.filtered.nonzero();
        if !reasons.is_empty() {
            let list: Vec<String> = reasons.iter().map(|(r, n)| format!("{r} {n}")).collect();
            let _ = writeln!(s, "  filtered: {}", list.join(", "));
        }
        let pii: Vec<String> = self
            .pii_replaced
            .iter()
            .filter(|(_, &n)| n > 0)
            .map(|(k, n)| format!("{k} {n}"))
            .collect();
        let _ = writeln!(
            s,
            "  anonymized: {}",
            if pii.is_empty() {
                "nothing found".to_string()
            } else {
                pii.join(", ")
            }
        );
        for line in self.bias.summary_lines() {
            let _ = writeln!(s, "  bias: {line}");
        }
        if let Some(a) = &self.augment {
            let ratio = |b: &BiasReport| ratio_text(b.axes.get("gender").and_then(|g| g.ratio));
            let _ = writeln!(
                s,
                "  augmented: {} counterfactual copies ({} train, {} eval); gender ratio {} -> {}",
                a.records_added,
                a.train_added,
                a.eval_added,
                ratio(&self.bias),
                ratio(&a.bias_after)
            );
        }
        if self.error_count > 0 {
            let _ = writeln!(s, "  input errors skipped: {}", self.error_count);
            for e in self.errors.iter().take(5) {
                let _ = writeln!(s, "    {e}");
            }
            if self.error_count > 5 {
                let _ = writeln!(s, "    … (see report.json)");
            }
        }
        if self.files_ignored > 0 {
            let _ = writeln!(
                s,
                "  {} files in input folders ignored (not .txt, .md or .jsonl)",
                self.files_ignored
            );
        }
        s
    }
}
