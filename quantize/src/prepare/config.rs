//! The options of `prepare`: defaults → `--config FILE.json` → command-line flags.
//!
//! The config file is JSON rather than TOML because this crate has no TOML parser and the
//! toolchain keeps its dependencies few; serde_json is already here. Keys are kebab-case and
//! unknown keys are refused (`deny_unknown_fields`), so a typo such as `"min-char"` is an error
//! instead of a silently ignored setting. Every default is written once, in the `Default` impls
//! below, and [`Config::check`] explains what is wrong with a value.
//!
//! A complete file, every key optional:
//!
//! ```json
//! {
//!   "seed": 0,
//!   "eval-share": 0.1,
//!   "near-dup-threshold": 0.8,
//!   "on-error": "skip",
//!   "filters": {
//!     "min-chars": 20, "min-words": 4, "max-chars": 100000,
//!     "min-alpha-ratio": 0.4, "max-repeated-line-share": 0.3
//!   },
//!   "anonymize": {
//!     "patterns": [{ "label": "EMPLOYEE_ID", "regex": "\\bEMP-\\d{6}\\b" }],
//!     "names": ["Jane Doe", "Müller"]
//!   },
//!   "bias-terms": "my_terms.txt",
//!   "augment": "counterfactual",
//!   "counterfactual-pairs": "my_pairs.txt"
//! }
//! ```
//!
//! The two list paths are read relative to the working directory, like the inputs; without
//! them the built-in lists of [`crate::bias`] are used.

use std::fmt;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// Everything that decides what `prepare` writes, apart from the inputs and the output folder.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields, rename_all = "kebab-case")]
pub struct Config {
    /// Seed of the train/eval split. The same seed and the same documents give the same split.
    pub seed: u64,
    /// Expected share of kept documents that go to `eval.jsonl`, in `[0, 1]`.
    pub eval_share: f64,
    /// Estimated Jaccard similarity (of word shingles) at or above which a document is dropped as
    /// a near-duplicate of an earlier one, in `(0, 1]`.
    pub near_dup_threshold: f64,
    /// What to do with unreadable or malformed input.
    pub on_error: OnError,
    /// Length and quality filters.
    pub filters: FilterConfig,
    /// Personal-data replacement.
    pub anonymize: AnonymizeConfig,
    /// Word lists of the bias report (format of quantize/data/bias_terms.txt); `None`: the
    /// built-in lists.
    pub bias_terms: Option<PathBuf>,
    /// Records added to the kept ones.
    pub augment: Augment,
    /// Word pairs of `augment: counterfactual` (format of
    /// quantize/data/counterfactual_pairs.txt); `None`: the built-in pairs.
    pub counterfactual_pairs: Option<PathBuf>,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            seed: 0,
            // One document in ten is enough to watch the eval loss without starving training.
            eval_share: 0.1,
            // 0.8 is the usual near-duplicate threshold for web and enterprise text (boilerplate
            // with a changed date or name lands above it; two pages on one topic land far below).
            near_dup_threshold: 0.8,
            on_error: OnError::Skip,
            filters: FilterConfig::default(),
            anonymize: AnonymizeConfig::default(),
            bias_terms: None,
            // Off: augmentation changes the data a user asked to clean, so it is asked for.
            augment: Augment::None,
            counterfactual_pairs: None,
        }
    }
}

/// Records `prepare` adds to the kept ones.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Augment {
    /// Nothing is added.
    None,
    /// After each kept record that holds a word of a counterfactual pair, a copy with the words
    /// swapped ("He" → "She"), written to the same split as its original.
    Counterfactual,
}

impl fmt::Display for Augment {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::None => "none",
            Self::Counterfactual => "counterfactual",
        })
    }
}

/// What to do with a file or line that cannot be read or parsed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum OnError {
    /// Report it (file and line) in `report.json`, count it and go on: one bad line in a large
    /// export should not cost the whole run.
    Skip,
    /// Stop at the first one; nothing is written.
    Fail,
}

impl fmt::Display for OnError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Skip => "skip",
            Self::Fail => "fail",
        })
    }
}

/// Length and quality filters, applied to the cleaned and anonymized text (for a chat record,
/// to its message contents joined by newlines). The first failing rule, in field order, names the
/// reason a document is dropped.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields, rename_all = "kebab-case")]
pub struct FilterConfig {
    /// Fewer characters (Unicode scalar values) than this: dropped as `too_short`.
    pub min_chars: usize,
    /// Fewer whitespace-separated words than this: dropped as `too_few_words`.
    pub min_words: usize,
    /// More characters than this: dropped as `too_long`.
    pub max_chars: usize,
    /// Share of alphabetic characters among the non-whitespace ones below this: dropped as
    /// `low_alpha_ratio` (tables of numbers, hex dumps, base64, logs).
    pub min_alpha_ratio: f64,
    /// The most common line (among lines with a letter or digit, compared after trimming) makes
    /// up more than this share of those lines and occurs at least twice: dropped as
    /// `repeated_lines` (scraped menus, log spam, templated forms).
    pub max_repeated_line_share: f64,
}

impl Default for FilterConfig {
    fn default() -> Self {
        Self {
            // 20 characters / 4 words: shorter records ("OK", "Thanks!", a lone heading) teach
            // the model nothing about the enterprise and mostly add noise.
            min_chars: 20,
            min_words: 4,
            // 100k characters (~25k tokens): beyond that a "document" is usually an export or a
            // dump, and it would be truncated by the training context anyway.
            max_chars: 100_000,
            min_alpha_ratio: 0.4,
            max_repeated_line_share: 0.3,
        }
    }
}

/// Personal-data replacement. The built-in types (`EMAIL`, `IBAN`, `CARD`, `SSN`, `IP`, `PHONE`)
/// are always on; this adds the enterprise's own patterns and names.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields, rename_all = "kebab-case")]
pub struct AnonymizeConfig {
    /// Extra patterns, applied in this order after the built-in types.
    pub patterns: Vec<PatternConfig>,
    /// Names replaced by `[NAME]`, matched case-insensitively as whole words (a space in a name
    /// matches any run of spaces or tabs).
    pub names: Vec<String>,
}

/// One custom pattern: every match of `regex` becomes `[LABEL]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct PatternConfig {
    /// Placeholder label: an uppercase letter, then uppercase letters, digits or `_`.
    pub label: String,
    /// Rust `regex` syntax (no look-around); it must not match the empty string.
    pub regex: String,
}

/// A config file that cannot be read, parsed or accepted.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read config {}: {source}", path.display())]
    Read {
        /// The config file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The file is not JSON of the expected shape (serde_json names the line and column).
    #[error("config {}: {source}", path.display())]
    Parse {
        /// The config file.
        path: PathBuf,
        /// Why.
        source: serde_json::Error,
    },
    /// A value is out of range or inconsistent.
    #[error("invalid option: {0}")]
    Invalid(String),
    /// A bias word list or pair file cannot be read or is malformed.
    #[error(transparent)]
    List(#[from] crate::bias::ListError),
}

/// Labels the built-in detectors use; a custom pattern may not take one, or the report could
/// not tell the two apart.
pub const BUILTIN_LABELS: [&str; 7] = ["EMAIL", "IBAN", "CARD", "SSN", "IP", "PHONE", "NAME"];

impl Config {
    /// Reads a JSON config file. Keys not given keep their defaults; the result is not checked
    /// yet, because command-line flags may still override it (call [`Config::check`] last).
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        serde_json::from_str(&text).map_err(|source| ConfigError::Parse {
            path: path.to_path_buf(),
            source,
        })
    }

    /// Explains the first value that is out of range. Custom regexes are compiled here too, so
    /// a bad pattern is reported before any input is read.
    pub fn check(&self) -> Result<(), ConfigError> {
        let invalid = |msg: String| Err(ConfigError::Invalid(msg));
        if !(0.0..=1.0).contains(&self.eval_share) {
            return invalid(format!(
                "eval-share must be between 0 and 1, got {}",
                self.eval_share
            ));
        }
        if !(self.near_dup_threshold > 0.0 && self.near_dup_threshold <= 1.0) {
            return invalid(format!(
                "near-dup-threshold must be above 0 and at most 1, got {}",
                self.near_dup_threshold
            ));
        }
        let f = &self.filters;
        if f.min_chars > f.max_chars {
            return invalid(format!(
                "filters.min-chars ({}) is above filters.max-chars ({})",
                f.min_chars, f.max_chars
            ));
        }
        if !(0.0..=1.0).contains(&f.min_alpha_ratio) {
            return invalid(format!(
                "filters.min-alpha-ratio must be between 0 and 1, got {}",
                f.min_alpha_ratio
            ));
        }
        if !(0.0..=1.0).contains(&f.max_repeated_line_share) {
            return invalid(format!(
                "filters.max-repeated-line-share must be between 0 and 1, got {}",
                f.max_repeated_line_share
            ));
        }
        for (i, p) in self.anonymize.patterns.iter().enumerate() {
            let mut chars = p.label.chars();
            let well_formed = chars.next().is_some_and(|c| c.is_ascii_uppercase())
                && chars.all(|c| c.is_ascii_uppercase() || c.is_ascii_digit() || c == '_');
            if !well_formed {
                return invalid(format!(
                    "anonymize.patterns[{i}].label {:?}: use A-Z, 0-9 and _, starting with a letter",
                    p.label
                ));
            }
            if BUILTIN_LABELS.contains(&p.label.as_str()) {
                return invalid(format!(
                    "anonymize.patterns[{i}].label {:?} is a built-in type",
                    p.label
                ));
            }
            let re = regex::Regex::new(&p.regex)
                .map_err(|e| ConfigError::Invalid(format!("anonymize.patterns[{i}].regex: {e}")))?;
            if re.is_match("") {
                return invalid(format!(
                    "anonymize.patterns[{i}].regex {:?} matches the empty string",
                    p.regex
                ));
            }
        }
        if let Some(i) = self
            .anonymize
            .names
            .iter()
            .position(|n| n.trim().is_empty())
        {
            return invalid(format!("anonymize.names[{i}] is empty"));
        }
        Ok(())
    }
}
