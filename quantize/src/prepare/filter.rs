//! Length and quality filters (thresholds in [`FilterConfig`], defaults documented there).

use std::collections::HashMap;

use serde::Serialize;

use super::config::FilterConfig;
use super::ingest::Content;

/// Why a document was filtered out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reason {
    /// A chat message is empty after cleanup: an empty turn trains the model to say nothing.
    EmptyMessage,
    /// Fewer characters than `min-chars`.
    TooShort,
    /// Fewer words than `min-words`.
    TooFewWords,
    /// More characters than `max-chars`.
    TooLong,
    /// Alphabetic share of the non-whitespace characters below `min-alpha-ratio`.
    LowAlphaRatio,
    /// The most common line is over `max-repeated-line-share` of the lines.
    RepeatedLines,
}

/// Documents filtered out, by reason.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct FilterCounts {
    /// See [`Reason::EmptyMessage`].
    pub empty_message: usize,
    /// See [`Reason::TooShort`].
    pub too_short: usize,
    /// See [`Reason::TooFewWords`].
    pub too_few_words: usize,
    /// See [`Reason::TooLong`].
    pub too_long: usize,
    /// See [`Reason::LowAlphaRatio`].
    pub low_alpha_ratio: usize,
    /// See [`Reason::RepeatedLines`].
    pub repeated_lines: usize,
}

impl FilterCounts {
    /// Counts one filtered document.
    pub fn add(&mut self, reason: Reason) {
        *match reason {
            Reason::EmptyMessage => &mut self.empty_message,
            Reason::TooShort => &mut self.too_short,
            Reason::TooFewWords => &mut self.too_few_words,
            Reason::TooLong => &mut self.too_long,
            Reason::LowAlphaRatio => &mut self.low_alpha_ratio,
            Reason::RepeatedLines => &mut self.repeated_lines,
        } += 1;
    }

    /// All filtered documents.
    pub fn total(&self) -> usize {
        self.empty_message
            + self.too_short
            + self.too_few_words
            + self.too_long
            + self.low_alpha_ratio
            + self.repeated_lines
    }

    /// `(reason, count)` pairs with a non-zero count, in report order.
    pub fn nonzero(&self) -> Vec<(&'static str, usize)> {
        [
            ("empty_message", self.empty_message),
            ("too_short", self.too_short),
            ("too_few_words", self.too_few_words),
            ("too_long", self.too_long),
            ("low_alpha_ratio", self.low_alpha_ratio),
            ("repeated_lines", self.repeated_lines),
        ]
        .into_iter()
        .filter(|&(_, n)| n > 0)
        .collect()
    }
}

/// The first rule a cleaned document breaks, in the order of [`Reason`], or `None` to keep it.
/// Length and ratios are measured on the whole document (a chat's contents joined by newlines):
/// a short answer in a long conversation is fine.
pub fn check(content: &Content, config: &FilterConfig) -> Option<Reason> {
    if let Content::Messages(ms) = content {
        if ms.iter().any(|m| m.content.is_empty()) {
            return Some(Reason::EmptyMessage);
        }
    }
    let text = content.joined();
    let chars = text.chars().count();
    if chars < config.min_chars {
        return Some(Reason::TooShort);
    }
    if text.split_whitespace().count() < config.min_words {
        return Some(Reason::TooFewWords);
    }
    if chars > config.max_chars {
        return Some(Reason::TooLong);
    }
    if alpha_ratio(&text) < config.min_alpha_ratio {
        return Some(Reason::LowAlphaRatio);
    }
    if repeated_line_share(&text) > config.max_repeated_line_share {
        return Some(Reason::RepeatedLines);
    }
    None
}

/// Share of alphabetic characters (any script) among the non-whitespace ones; whitespace is
/// left out so that indentation and table layout do not count against a text. 0 for a text
/// without non-whitespace characters.
pub fn alpha_ratio(text: &str) -> f64 {
    let (mut alpha, mut visible) = (0usize, 0usize);
    for c in text.chars().filter(|c| !c.is_whitespace()) {
        visible += 1;
        if c.is_alphabetic() {
            alpha += 1;
        }
    }
    if visible == 0 {
        0.0
    } else {
        alpha as f64 / visible as f64
    }
}

/// Share of the most common line among the lines holding a letter or digit (compared after
/// trimming), or 0 when no line occurs twice. Lines of only punctuation (`---`, code fences,
/// table rules) are left out: Markdown repeats them legitimately.
pub fn repeated_line_share(text: &str) -> f64 {
    let mut counts: HashMap<&str, usize> = HashMap::new();
    let mut total = 0usize;
    for line in text.lines().map(str::trim) {
        if line.chars().any(char::is_alphanumeric) {
            *counts.entry(line).or_default() += 1;
            total += 1;
        }
    }
    let top = counts.values().copied().max().unwrap_or(0);
    if top < 2 {
        0.0
    } else {
        top as f64 / total as f64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reasons_in_order() {
        let cfg = FilterConfig::default();
        let text = |s: &str| Content::Text(s.to_string());
        assert_eq!(check(&text("too short"), &cfg), Some(Reason::TooShort));
        assert_eq!(
            check(&text("supercalifragilistic expialidocious"), &cfg),
            Some(Reason::TooFewWords)
        );
        assert_eq!(
            check(&text("1234 5678 9012 3456 7890 ab"), &cfg),
            Some(Reason::LowAlphaRatio)
        );
        assert_eq!(
            check(&text("Home\nHome\nHome\nAbout us and more"), &cfg),
            Some(Reason::RepeatedLines)
        );
        assert_eq!(
            check(&text("A perfectly ordinary sentence about work."), &cfg),
            None
        );
    }

    #[test]
    fn punctuation_lines_do_not_count_as_repeats() {
        assert_eq!(
            repeated_line_share("```\ncode one\n```\n\n```\ncode two\n```"),
            0.0
        );
    }
}
