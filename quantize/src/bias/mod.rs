//! Bias in training data: who a dataset talks about ([`terms`]), and a counterfactual copy of a
//! record that talks about the other side ([`counterfactual`]).
//!
//! Both read text the same way, through [`words`]: a word is a maximal run of letters and
//! digits (Unicode `alphanumeric`), compared in lowercase. So "therapist" never holds "he" or
//! "the", "she'll" holds "she" (the apostrophe ends a word), and "non-binary" is the two words
//! "non" and "binary", matched as a phrase.
//!
//! - [`Lexicon`] and [`Counter`] count demographic terms per axis and group (per document and
//!   overall) into a [`BiasReport`]; `prepare` writes it into `report.json` (`bias`), and
//!   `synth` can do the same with the same calls:
//!   `let mut c = Counter::new(&lexicon); c.add("doc-1", text); let report = c.report();`.
//! - [`Pairs`] and [`counterfactual`] swap the words of each pair ("He" → "She", "his book" →
//!   "her book"); `prepare --augment counterfactual` writes the swapped copy next to its
//!   original.
//!
//! The word lists are `quantize/data/bias_terms.txt` and `quantize/data/counterfactual_pairs.txt`,
//! compiled in ([`Lexicon::builtin`], [`Pairs::builtin`]) and replaceable by a file of the same
//! format ([`Lexicon::load`], [`Pairs::load`]); their headers document the format and the
//! choice of words.

pub mod counterfactual;
pub mod terms;

use std::path::PathBuf;

use serde::ser::{Serialize, SerializeMap, Serializer};

pub use counterfactual::{counterfactual, counterfactual_texts, Pairs};
pub use terms::{AxisReport, BiasReport, Counter, DocumentCounts, Lexicon, MAX_LISTED_DOCUMENTS};

/// The name a built-in list goes by in reports and errors.
pub const BUILTIN: &str = "built-in";

/// A word list that cannot be read or accepted.
#[derive(Debug, thiserror::Error)]
pub enum ListError {
    /// The file could not be read.
    #[error("cannot read {}: {source}", path.display())]
    Read {
        /// The list file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// A line is malformed or contradicts an earlier one.
    #[error("{list}:{line}: {message}")]
    Invalid {
        /// The list: its path, or [`BUILTIN`].
        list: String,
        /// 1-based line number.
        line: usize,
        /// What is wrong.
        message: String,
    },
}

/// Reads a list file as UTF-8 text.
fn read_list(path: &std::path::Path) -> Result<String, ListError> {
    std::fs::read_to_string(path).map_err(|source| ListError::Read {
        path: path.to_path_buf(),
        source,
    })
}

/// One word of a text: its byte range and its lowercase form.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Word {
    /// Byte offset of the first character.
    pub start: usize,
    /// Byte offset just past the last character.
    pub end: usize,
    /// The word in lowercase (Unicode `to_lowercase`).
    pub lower: String,
}

/// The words of `text`, in order: maximal runs of alphanumeric characters.
pub(crate) fn words(text: &str) -> Vec<Word> {
    let mut out = Vec::new();
    let mut start = None;
    for (i, c) in text.char_indices() {
        match (c.is_alphanumeric(), start) {
            (true, None) => start = Some(i),
            (false, Some(s)) => {
                out.push(word(text, s, i));
                start = None;
            }
            _ => {}
        }
    }
    if let Some(s) = start {
        out.push(word(text, s, text.len()));
    }
    out
}

fn word(text: &str, start: usize, end: usize) -> Word {
    Word {
        start,
        end,
        lower: text[start..end].to_lowercase(),
    }
}

/// A map that serializes its entries in the order they were pushed: the report lists axes,
/// groups and terms in word-list order, whatever serde_json's map features are.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Named<T>(pub Vec<(String, T)>);

impl<T> Named<T> {
    /// The value under `name`, if any.
    pub fn get(&self, name: &str) -> Option<&T> {
        self.0.iter().find(|(n, _)| n == name).map(|(_, v)| v)
    }

    /// The entries in order.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &T)> {
        self.0.iter().map(|(n, v)| (n.as_str(), v))
    }
}

impl<T: Serialize> Serialize for Named<T> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut map = serializer.serialize_map(Some(self.0.len()))?;
        for (name, value) in &self.0 {
            map.serialize_entry(name, value)?;
        }
        map.end()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lowers(text: &str) -> Vec<String> {
        words(text).into_iter().map(|w| w.lower).collect()
    }

    #[test]
    fn words_are_alphanumeric_runs() {
        assert_eq!(
            lowers("She'll see the therapist, non-binary HE2 café."),
            [
                "she",
                "ll",
                "see",
                "the",
                "therapist",
                "non",
                "binary",
                "he2",
                "café"
            ]
        );
        assert!(words("").is_empty());
        assert!(words(" ,.- ").is_empty());
        let w = words("Ünal's");
        assert_eq!((w[0].start, w[0].end, w[0].lower.as_str()), (0, 5, "ünal"));
    }
}
