//! Splitting a cleaned document into chunks for embedding, with the semantics of OpenAI's
//! `static` chunking strategy: every chunk has at most `max_chunk_size_tokens` tokens, and each
//! chunk after the first repeats at most `chunk_overlap_tokens` tokens of the one before it.
//!
//! Tokens are counted by the caller (the embedding model's tokenizer in production, so that a
//! chunk always fits the model's context), through `&dyn Fn(&str) -> usize`. The counter is
//! called once per word and once per finished chunk (a few more times when a chunk's own count
//! is over, or a word is longer than a chunk): the per-word counts pack the chunk, and the count
//! of the chunk's own text has the last word (a tokenizer is not exactly additive, and it may add
//! special tokens such as BERT's `[CLS]`/`[SEP]`, which `count("")` measures and which are
//! counted once per chunk).
//!
//! A chunk ends, by preference, at the end of a paragraph (a blank line), else of a sentence or
//! line, else of a word; a preferred end is taken only while it keeps the chunk at least half
//! full, so that a short heading does not become a chunk of its own. A single "word" longer than
//! a chunk (a URL, a base64 blob) is cut between characters. Each chunk carries its byte range in
//! the document, its position for citations; chunks never start or end with whitespace.

use serde::{Deserialize, Serialize};
use std::ops::Range;

/// Our default chunk size, in tokens of the embedding model. all-MiniLM-L6-v2 reads 256 tokens
/// (its sentence-transformers `max_seq_length`); 200 leaves room for the special tokens and for
/// a tokenizer that counts a little differently, and keeps a chunk about a paragraph long.
pub const DEFAULT_MAX_CHUNK_TOKENS: usize = 200;
/// Our default overlap between consecutive chunks, in tokens: a quarter of a chunk, so that a
/// sentence cut at a chunk's end is whole in the next one.
pub const DEFAULT_CHUNK_OVERLAP_TOKENS: usize = 50;
/// OpenAI's bounds on `max_chunk_size_tokens`.
pub const MAX_CHUNK_TOKENS_RANGE: std::ops::RangeInclusive<usize> = 100..=4096;

/// OpenAI's `static` chunking strategy, checked: build it with [`ChunkingStrategy::new`] (or
/// [`Default`]) and its bounds hold.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct ChunkingStrategy {
    max_chunk_size_tokens: usize,
    chunk_overlap_tokens: usize,
}

/// A chunking strategy OpenAI's API would refuse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ChunkError {
    /// `max_chunk_size_tokens` outside 100..=4096.
    #[error("max_chunk_size_tokens must be between 100 and 4096, not {0}")]
    MaxOutOfRange(usize),
    /// `chunk_overlap_tokens` more than half of `max_chunk_size_tokens`.
    #[error(
        "chunk_overlap_tokens ({overlap}) must not exceed half of max_chunk_size_tokens ({max})"
    )]
    OverlapTooLarge {
        /// The overlap asked for.
        overlap: usize,
        /// The chunk size asked for.
        max: usize,
    },
}

impl ChunkingStrategy {
    /// A strategy within OpenAI's limits: `max` in 100..=4096, `overlap` ≤ `max / 2`.
    pub fn new(
        max_chunk_size_tokens: usize,
        chunk_overlap_tokens: usize,
    ) -> Result<Self, ChunkError> {
        if !MAX_CHUNK_TOKENS_RANGE.contains(&max_chunk_size_tokens) {
            return Err(ChunkError::MaxOutOfRange(max_chunk_size_tokens));
        }
        if chunk_overlap_tokens > max_chunk_size_tokens / 2 {
            return Err(ChunkError::OverlapTooLarge {
                overlap: chunk_overlap_tokens,
                max: max_chunk_size_tokens,
            });
        }
        Ok(ChunkingStrategy {
            max_chunk_size_tokens,
            chunk_overlap_tokens,
        })
    }

    /// Most tokens in one chunk.
    pub fn max_chunk_size_tokens(&self) -> usize {
        self.max_chunk_size_tokens
    }

    /// Most tokens a chunk repeats from the one before it.
    pub fn chunk_overlap_tokens(&self) -> usize {
        self.chunk_overlap_tokens
    }
}

impl Default for ChunkingStrategy {
    fn default() -> Self {
        ChunkingStrategy {
            max_chunk_size_tokens: DEFAULT_MAX_CHUNK_TOKENS,
            chunk_overlap_tokens: DEFAULT_CHUNK_OVERLAP_TOKENS,
        }
    }
}

/// The wire shape (`{"max_chunk_size_tokens": …, "chunk_overlap_tokens": …}`), checked as it is
/// read.
impl<'de> Deserialize<'de> for ChunkingStrategy {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(deny_unknown_fields)]
        struct Wire {
            max_chunk_size_tokens: usize,
            chunk_overlap_tokens: usize,
        }
        let w = Wire::deserialize(d)?;
        ChunkingStrategy::new(w.max_chunk_size_tokens, w.chunk_overlap_tokens)
            .map_err(serde::de::Error::custom)
    }
}

/// One chunk of a document.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Chunk {
    /// Its bytes in the document (`&document[range]` is `text`): its position for citations.
    pub range: Range<usize>,
    /// Its text.
    pub text: String,
    /// Its tokens, as the caller's counter counts `text`.
    pub tokens: usize,
}

/// How strongly the text may be broken after a word.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Break {
    /// Only between words.
    Word,
    /// At the end of a sentence or a line.
    Sentence,
    /// At the end of a paragraph (a blank line follows).
    Paragraph,
}

/// A word: its bytes (without the whitespace after it), its tokens, and how strongly the text
/// breaks after it.
#[derive(Debug, Clone)]
struct Piece {
    range: Range<usize>,
    tokens: usize,
    after: Break,
}

/// Splits `document` into chunks by `strategy`, counting tokens with `count_tokens`.
///
/// Each chunk's `tokens` is at most `max_chunk_size_tokens`, except where a single character
/// alone counts more (then that character is a chunk of its own). The chunks cover every
/// non-whitespace byte of the document, in order; consecutive chunks share at most
/// `chunk_overlap_tokens` tokens (counted per word). An empty or all-whitespace document has no
/// chunks.
pub fn chunk(
    document: &str,
    strategy: &ChunkingStrategy,
    count_tokens: &dyn Fn(&str) -> usize,
) -> Vec<Chunk> {
    let max = strategy.max_chunk_size_tokens;
    // What the counter adds to any text (special tokens): counted once per chunk.
    let base = count_tokens("");
    let budget = max.saturating_sub(base).max(1);
    let pieces = pieces(document, budget, base, count_tokens);
    let mut chunks = Vec::new();
    let mut start = 0;
    // The first word the chunk must hold: after the overlap, the word after the previous
    // chunk, so that every chunk brings new text.
    let mut first_new = 0;
    while start < pieces.len() {
        // The longest run of words from `start` whose counts fit (the first new word always).
        let mut end = start;
        let mut sum = 0;
        while end < pieces.len() && (end <= first_new || sum + pieces[end].tokens <= budget) {
            sum += pieces[end].tokens;
            end += 1;
        }
        if end < pieces.len() {
            let least = first_new + 1 - start;
            end = preferred_end(&pieces[start..end], budget, least).map_or(end, |n| start + n);
        }
        // The counter has the last word on the chunk's own text.
        let mut text = &document[pieces[start].range.start..pieces[end - 1].range.end];
        let mut tokens = count_tokens(text);
        while tokens > max && end - start > 1 {
            end -= 1;
            text = &document[pieces[start].range.start..pieces[end - 1].range.end];
            tokens = count_tokens(text);
        }
        chunks.push(Chunk {
            range: pieces[start].range.start..pieces[end - 1].range.end,
            text: text.to_string(),
            tokens,
        });
        if end == pieces.len() {
            break;
        }
        // The next chunk starts with the last words of this one, up to the overlap and leaving
        // room for the next word, and always after this one's start.
        let room = strategy
            .chunk_overlap_tokens
            .min(budget.saturating_sub(pieces[end].tokens));
        let mut next = end;
        let mut overlap = 0;
        while next > start + 1 && overlap + pieces[next - 1].tokens <= room {
            overlap += pieces[next - 1].tokens;
            next -= 1;
        }
        start = next;
        first_new = end;
    }
    chunks
}

/// Where to end a chunk made of `window` (words that fit, and more follow): after the last
/// paragraph end, else the last sentence end, that keeps the chunk at least half full and at
/// least `least` words long; `None` for the whole window.
fn preferred_end(window: &[Piece], budget: usize, least: usize) -> Option<usize> {
    let half = budget.div_ceil(2);
    for strength in [Break::Paragraph, Break::Sentence] {
        let mut sum = 0;
        let mut best = None;
        for (i, p) in window.iter().enumerate() {
            sum += p.tokens;
            if p.after >= strength && sum >= half && i + 1 >= least {
                best = Some(i + 1);
            }
        }
        if best.is_some() {
            return best;
        }
    }
    None
}

/// The document's words with their token counts (the counter's base subtracted), a word over
/// `budget` cut into parts that fit.
fn pieces(
    document: &str,
    budget: usize,
    base: usize,
    count_tokens: &dyn Fn(&str) -> usize,
) -> Vec<Piece> {
    let count = |s: &str| count_tokens(s).saturating_sub(base);
    let mut out = Vec::new();
    let mut words = document
        .char_indices()
        .filter(|(_, c)| !c.is_whitespace())
        .peekable();
    while let Some((start, _)) = words.next() {
        // The word runs to the next whitespace.
        let end = document[start..]
            .find(char::is_whitespace)
            .map_or(document.len(), |n| start + n);
        while words.peek().is_some_and(|&(i, _)| i < end) {
            words.next();
        }
        let gap_end = document[end..]
            .find(|c: char| !c.is_whitespace())
            .map_or(document.len(), |n| end + n);
        let gap = &document[end..gap_end];
        let word = &document[start..end];
        let after = if gap.matches('\n').count() >= 2 || gap_end == document.len() {
            Break::Paragraph
        } else if gap.contains('\n') || ends_sentence(word) {
            Break::Sentence
        } else {
            Break::Word
        };
        let tokens = count(word);
        if tokens <= budget {
            out.push(Piece {
                range: start..end,
                tokens,
                after,
            });
        } else {
            split_long_word(document, start..end, budget, &count, after, &mut out);
        }
    }
    out
}

/// Cuts the word at `range` between characters into parts of at most `budget` tokens (a single
/// character that counts more is a part of its own); the last part keeps the word's break.
fn split_long_word(
    document: &str,
    range: Range<usize>,
    budget: usize,
    count: &dyn Fn(&str) -> usize,
    after: Break,
    out: &mut Vec<Piece>,
) {
    let mut start = range.start;
    while start < range.end {
        // The character boundaries after `start`, enough of them that the last does not fit
        // (or the word's end): a window that doubles, so a long word costs O(n log n) counts
        // and not a scan of its rest per part.
        let mut window = budget.max(1) * 4;
        let bounds = loop {
            let mut bounds: Vec<usize> = document[start..range.end]
                .char_indices()
                .map(|(i, _)| start + i)
                .skip(1)
                .take(window)
                .collect();
            if bounds.len() < window {
                bounds.push(range.end);
                break bounds;
            }
            if count(&document[start..bounds[window - 1]]) > budget {
                break bounds;
            }
            window *= 2;
        };
        // The longest prefix that fits (at least one character): a binary search over the
        // character boundaries, the counts growing with the prefix.
        let (mut lo, mut hi) = (0, bounds.len() - 1);
        while lo < hi {
            let mid = (lo + hi).div_ceil(2);
            if count(&document[start..bounds[mid]]) <= budget {
                lo = mid;
            } else {
                hi = mid - 1;
            }
        }
        let end = bounds[lo];
        out.push(Piece {
            range: start..end,
            tokens: count(&document[start..end]),
            after: if end == range.end { after } else { Break::Word },
        });
        start = end;
    }
}

/// Whether `word` ends a sentence: a full stop, question or exclamation mark (ASCII or CJK),
/// possibly followed by closing quotes or brackets.
fn ends_sentence(word: &str) -> bool {
    let trimmed = word.trim_end_matches(['"', '\'', ')', ']', '»', '”', '’']);
    trimmed.ends_with(['.', '!', '?', '。', '！', '？', '…'])
}

#[cfg(test)]
mod tests {
    use super::*;

    fn words(s: &str) -> usize {
        s.split_whitespace().count()
    }

    /// Checks what every chunking promises: sizes, order, coverage, overlap, text = range.
    fn check(
        doc: &str,
        strategy: &ChunkingStrategy,
        chunks: &[Chunk],
        count: &dyn Fn(&str) -> usize,
    ) {
        let mut covered = vec![false; doc.len()];
        for (i, c) in chunks.iter().enumerate() {
            assert_eq!(&doc[c.range.clone()], c.text);
            assert_eq!(c.tokens, count(&c.text));
            assert!(
                c.tokens <= strategy.max_chunk_size_tokens(),
                "chunk {i}: {} tokens",
                c.tokens
            );
            assert!(!c.text.is_empty());
            assert_eq!(c.text.trim(), c.text);
            for b in c.range.clone() {
                covered[b] = true;
            }
            if i > 0 {
                let prev = &chunks[i - 1];
                assert!(c.range.start > prev.range.start, "chunks move forward");
                assert!(c.range.end > prev.range.end, "chunks move forward");
                if c.range.start < prev.range.end {
                    let shared = &doc[c.range.start..prev.range.end];
                    assert!(
                        words(shared) <= strategy.chunk_overlap_tokens(),
                        "overlap of {} words",
                        words(shared)
                    );
                }
            }
        }
        for (b, ch) in doc.char_indices() {
            if !ch.is_whitespace() {
                assert!(covered[b], "byte {b} ({ch:?}) is in no chunk");
            }
        }
    }

    fn sentence(n: usize, tag: &str) -> String {
        let mut s: Vec<String> = (0..n - 1).map(|i| format!("{tag}{i}")).collect();
        s.push(format!("{tag}end."));
        s.join(" ")
    }

    #[test]
    fn strategy_bounds_are_openais() {
        assert_eq!(
            ChunkingStrategy::new(99, 0),
            Err(ChunkError::MaxOutOfRange(99))
        );
        assert_eq!(
            ChunkingStrategy::new(4097, 0),
            Err(ChunkError::MaxOutOfRange(4097))
        );
        assert_eq!(
            ChunkingStrategy::new(100, 51),
            Err(ChunkError::OverlapTooLarge {
                overlap: 51,
                max: 100
            })
        );
        assert!(ChunkingStrategy::new(100, 50).is_ok());
        assert!(ChunkingStrategy::new(4096, 2048).is_ok());
        assert!(
            ChunkingStrategy::new(800, 400).is_ok(),
            "OpenAI's own default"
        );
        let d = ChunkingStrategy::default();
        assert_eq!(
            ChunkingStrategy::new(d.max_chunk_size_tokens(), d.chunk_overlap_tokens()),
            Ok(d)
        );
        let wire: ChunkingStrategy =
            serde_json::from_str(r#"{"max_chunk_size_tokens":300,"chunk_overlap_tokens":20}"#)
                .unwrap();
        assert_eq!(wire, ChunkingStrategy::new(300, 20).unwrap());
        let bad = serde_json::from_str::<ChunkingStrategy>(
            r#"{"max_chunk_size_tokens":300,"chunk_overlap_tokens":200}"#,
        )
        .unwrap_err();
        assert!(bad.to_string().contains("must not exceed half"), "{bad}");
        assert!(serde_json::from_str::<ChunkingStrategy>(
            r#"{"max_chunk_size_tokens":300,"chunk_overlap_tokens":2,"x":1}"#
        )
        .is_err());
        assert_eq!(
            serde_json::to_value(d).unwrap(),
            serde_json::json!({"max_chunk_size_tokens": 200, "chunk_overlap_tokens": 50})
        );
    }

    #[test]
    fn an_empty_document_has_no_chunks_and_a_short_one_is_one_chunk() {
        let s = ChunkingStrategy::default();
        assert!(chunk("", &s, &words).is_empty());
        assert!(chunk(" \n\n\t ", &s, &words).is_empty());
        let doc = "\n  Hello, world.  \n";
        let c = chunk(doc, &s, &words);
        assert_eq!(c.len(), 1);
        assert_eq!(c[0].text, "Hello, world.");
        assert_eq!(c[0].range, 3..16);
        assert_eq!(c[0].tokens, 2);
    }

    #[test]
    fn chunks_end_at_paragraphs_before_sentences_before_words() {
        let s = ChunkingStrategy::new(100, 0).unwrap();
        // Two paragraphs of 70 words (7 sentences of 10): the first chunk is the first
        // paragraph, not 100 words.
        let para = |tag: &str| {
            (0..7)
                .map(|i| sentence(10, &format!("{tag}{i}s")))
                .collect::<Vec<_>>()
                .join(" ")
        };
        let doc = format!("{}\n\n{}", para("a"), para("b"));
        let c = chunk(&doc, &s, &words);
        check(&doc, &s, &c, &words);
        assert_eq!(c.len(), 2);
        assert_eq!(c[0].text, para("a"));
        assert_eq!(c[1].text, para("b"));
        // One paragraph of 15 sentences of 10 words: chunks end at sentence ends.
        let doc = (0..15)
            .map(|i| sentence(10, &format!("s{i}w")))
            .collect::<Vec<_>>()
            .join(" ");
        let c = chunk(&doc, &s, &words);
        check(&doc, &s, &c, &words);
        assert_eq!(c.len(), 2);
        assert_eq!(c[0].tokens, 100);
        assert!(c[0].text.ends_with("s9wend."));
        // No sentence end anywhere: cut between words, chunks full.
        let doc = (0..250)
            .map(|i| format!("w{i}"))
            .collect::<Vec<_>>()
            .join(" ");
        let c = chunk(&doc, &s, &words);
        check(&doc, &s, &c, &words);
        assert_eq!(
            c.iter().map(|c| c.tokens).collect::<Vec<_>>(),
            vec![100, 100, 50]
        );
    }

    #[test]
    fn a_preferred_end_must_keep_the_chunk_half_full() {
        let s = ChunkingStrategy::new(100, 0).unwrap();
        // A 3-word heading, then one long paragraph without sentence ends: the heading is not a
        // chunk of its own.
        let body = (0..150)
            .map(|i| format!("w{i}"))
            .collect::<Vec<_>>()
            .join(" ");
        let doc = format!("Our travel policy\n\n{body}");
        let c = chunk(&doc, &s, &words);
        check(&doc, &s, &c, &words);
        assert!(c[0].text.starts_with("Our travel policy\n\nw0"));
        assert_eq!(c[0].tokens, 100);
    }

    #[test]
    fn consecutive_chunks_overlap_by_at_most_the_overlap() {
        let s = ChunkingStrategy::new(100, 30).unwrap();
        let doc = (0..40)
            .map(|i| sentence(8, &format!("s{i}w")))
            .collect::<Vec<_>>()
            .join(" ");
        let c = chunk(&doc, &s, &words);
        check(&doc, &s, &c, &words);
        assert!(c.len() >= 4);
        for pair in c.windows(2) {
            let shared = &doc[pair[1].range.start..pair[0].range.end];
            assert_eq!(
                words(shared),
                30,
                "the overlap is used in full here: {shared:?}"
            );
        }
    }

    #[test]
    fn the_counter_decides_even_when_it_adds_special_tokens_or_is_not_additive() {
        let s = ChunkingStrategy::new(100, 20).unwrap();
        // BERT-like: [CLS] and [SEP] around every text.
        let bert = |t: &str| words(t) + 2;
        let doc = (0..300)
            .map(|i| format!("w{i}"))
            .collect::<Vec<_>>()
            .join(" ");
        let c = chunk(&doc, &s, &bert);
        check(&doc, &s, &c, &bert);
        assert_eq!(c[0].tokens, 100);
        // A counter for which a chunk costs more than its words: an extra token per 10 words.
        let odd = |t: &str| {
            let n = words(t);
            n + n / 10
        };
        let c = chunk(&doc, &s, &odd);
        check(&doc, &s, &c, &odd);
        assert!(c.iter().all(|c| c.tokens <= 100));
    }

    #[test]
    fn a_word_longer_than_a_chunk_is_cut_between_characters() {
        let s = ChunkingStrategy::new(100, 0).unwrap();
        // One token per 4 bytes, like a tokenizer on a base64 blob; "é" is two bytes.
        let per4 = |t: &str| t.len().div_ceil(4);
        let blob = "é".repeat(500);
        let doc = format!("start {blob} end");
        let c = chunk(&doc, &s, &per4);
        for ch in &c {
            assert!(ch.tokens <= 100);
            assert!(doc.is_char_boundary(ch.range.start) && doc.is_char_boundary(ch.range.end));
            assert_eq!(&doc[ch.range.clone()], ch.text);
        }
        let joined: String = c
            .iter()
            .map(|c| c.text.as_str())
            .collect::<Vec<_>>()
            .join("");
        assert_eq!(joined.replace(' ', ""), doc.replace(' ', ""));
        // A megabyte without a space is cut in a bounded number of counts.
        let calls = std::cell::Cell::new(0usize);
        let counting = |t: &str| {
            calls.set(calls.get() + 1);
            t.len().div_ceil(4)
        };
        let blob = "x".repeat(1 << 20);
        let c = chunk(&blob, &s, &counting);
        assert_eq!(c.len(), (1usize << 20).div_ceil(400));
        assert!(calls.get() < 100 * c.len(), "{} counts", calls.get());
        // A character that alone counts more than a chunk is a chunk of its own.
        let huge = |t: &str| t.chars().filter(|&c| c == '∞').count() * 500 + words(t);
        let doc = "a ∞ b";
        let c = chunk(doc, &s, &huge);
        assert_eq!(
            c.iter().map(|c| c.text.as_str()).collect::<Vec<_>>(),
            ["a", "∞", "b"]
        );
    }

    #[test]
    fn unicode_text_keeps_char_boundaries_and_sentence_ends() {
        let s = ChunkingStrategy::new(100, 10).unwrap();
        let doc = (0..60)
            .map(|i| format!("Größe{i} straße über Ærø。 Ça va? «oui»."))
            .collect::<Vec<_>>()
            .join("\n");
        let c = chunk(&doc, &s, &words);
        check(&doc, &s, &c, &words);
        for ch in &c {
            assert!(ch.text.ends_with(['.', '?', '。']), "{:?}", ch.text);
        }
    }

    #[test]
    fn random_documents_keep_every_promise() {
        // A fixed pseudo-random generator: documents of words, sentence ends, newlines.
        let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
        let mut next = move || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        for round in 0..200 {
            let n = (next() % 900) as usize;
            let mut doc = String::new();
            for i in 0..n {
                let w = ["alpha", "béta", "γάμμα", "d", "x1234567890", "ü"][(next() % 6) as usize];
                doc.push_str(w);
                doc.push_str(match next() % 20 {
                    0 => ".\n\n",
                    1 | 2 => ". ",
                    3 => "\n",
                    4 => "?  ",
                    _ if i % 97 == 96 => "\t",
                    _ => " ",
                });
            }
            let max = 100 + (next() % 300) as usize;
            let overlap = (next() as usize) % (max / 2 + 1);
            let s = ChunkingStrategy::new(max, overlap).unwrap();
            let c = chunk(&doc, &s, &words);
            check(&doc, &s, &c, &words);
            assert_eq!(c.is_empty(), n == 0, "round {round}");
        }
    }
}
