//! A WordPiece `tokenizer.json` (BERT's) turned into the vocabulary llama.cpp's WPM tokenizer
//! reads.
//!
//! llama.cpp (b11434, `llm_tokenizer_wpm_session`) normalizes and splits the text the way
//! BERT's basic tokenizer does (whitespace, punctuation, CJK characters, optional lower-casing
//! and accent stripping), then matches each word greedily, longest piece first, against token
//! texts, with the word prefixed by U+2581 ("▁"). So the vocabulary it expects marks a piece that
//! *starts* a word with a leading "▁" and a continuation piece bare, where Hugging Face marks the
//! continuation instead (`##`). [`gguf_token_text`] converts one into the other; special tokens
//! (`[CLS]`, `[SEP]`, `[unused0]` …) keep their text so they can be matched as specials.
//!
//! The normalizer and pre-tokenizer must be the BERT ones: llama.cpp implements no other for
//! this vocabulary type, and a tokenizer it would split differently is refused rather than
//! converted into silently different token ids.

use std::path::Path;

use serde_json::Value;

use super::checkpoint::read_json;
use super::ImportError;

/// The word-start marker of llama.cpp's WPM vocabularies (SentencePiece's "phantom space").
pub const WORD_START: &str = "\u{2581}";

/// `LLAMA_TOKEN_TYPE_NORMAL`.
pub const TOKEN_TYPE_NORMAL: i32 = 1;
/// `LLAMA_TOKEN_TYPE_CONTROL`.
pub const TOKEN_TYPE_CONTROL: i32 = 3;

/// A WordPiece vocabulary with what llama.cpp needs to tokenize like Hugging Face.
#[derive(Debug, Clone)]
pub struct WordPiece {
    /// Token texts as Hugging Face writes them, indexed by id.
    pub tokens: Vec<String>,
    /// Whether each token is a special (added) token.
    pub special: Vec<bool>,
    /// The continuation prefix (`##`).
    pub prefix: String,
    /// `[UNK]`.
    pub unk: u32,
    /// `[CLS]`: put first by the post-processor (llama.cpp's BOS for this vocabulary).
    pub cls: u32,
    /// `[SEP]`: put last.
    pub sep: u32,
    /// `[PAD]`, if the vocabulary has one.
    pub pad: Option<u32>,
    /// `[MASK]`, if the vocabulary has one.
    pub mask: Option<u32>,
    /// The normalizer lower-cases.
    pub lowercase: bool,
    /// The normalizer strips accents (NFD, then combining marks dropped).
    pub strip_accents: bool,
}

fn bad(path: &Path, reason: impl Into<String>) -> ImportError {
    ImportError::Invalid {
        path: path.to_path_buf(),
        reason: reason.into(),
    }
}

fn unsupported(path: &Path, reason: impl Into<String>) -> ImportError {
    ImportError::Unsupported(format!("{}: {}", path.display(), reason.into()))
}

impl WordPiece {
    /// Reads `tokenizer.json`.
    pub fn load(path: &Path) -> Result<Self, ImportError> {
        Self::from_json(&read_json(path)?, path)
    }

    /// Parses a `tokenizer.json` document (`path` only names it in errors).
    pub fn from_json(doc: &Value, path: &Path) -> Result<Self, ImportError> {
        let model = doc
            .get("model")
            .ok_or_else(|| bad(path, "no \"model\" object"))?;
        let kind = model.get("type").and_then(Value::as_str).unwrap_or("");
        if kind != "WordPiece" {
            return Err(unsupported(
                path,
                format!("tokenizer model {kind:?}; only WordPiece is converted so far"),
            ));
        }
        let prefix = model
            .get("continuing_subword_prefix")
            .and_then(Value::as_str)
            .unwrap_or("##")
            .to_string();
        if prefix.is_empty() {
            return Err(unsupported(path, "an empty continuing_subword_prefix"));
        }
        let vocab = model
            .get("vocab")
            .and_then(Value::as_object)
            .ok_or_else(|| bad(path, "no model.vocab object"))?;
        let n = vocab.len();
        let mut tokens: Vec<Option<String>> = vec![None; n];
        for (text, id) in vocab {
            let id =
                id.as_u64().filter(|&i| (i as usize) < n).ok_or_else(|| {
                    bad(path, format!("token {text:?} has id {id}, outside 0..{n}"))
                })? as usize;
            if tokens[id].replace(text.clone()).is_some() {
                return Err(bad(path, format!("two tokens share id {id}")));
            }
        }
        // n distinct ids below n: every slot is filled.
        let tokens: Vec<String> = tokens.into_iter().map(Option::unwrap_or_default).collect();
        let mut special = vec![false; n];
        for t in doc
            .get("added_tokens")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            let id = t.get("id").and_then(Value::as_u64).unwrap_or(u64::MAX);
            let content = t.get("content").and_then(Value::as_str).unwrap_or("");
            match tokens.get(id as usize) {
                Some(text) if text == content => {
                    special[id as usize] = t.get("special").and_then(Value::as_bool) == Some(true);
                }
                _ => {
                    return Err(unsupported(
                        path,
                        format!(
                            "added token {content:?} (id {id}) is not the vocabulary's token of \
                             that id; tokens added beyond the WordPiece vocabulary are not \
                             converted"
                        ),
                    ))
                }
            }
        }

        let find = |text: &str| tokens.iter().position(|t| t == text).map(|i| i as u32);
        let unk_text = model
            .get("unk_token")
            .and_then(Value::as_str)
            .unwrap_or("[UNK]");
        let unk = find(unk_text).ok_or_else(|| {
            bad(
                path,
                format!("the unknown token {unk_text:?} is not in the vocabulary"),
            )
        })?;
        // The post-processor names what surrounds a single sequence: `[CLS] $A [SEP]` for BERT.
        let (cls_text, sep_text) = post_processor_specials(doc).unwrap_or(("[CLS]", "[SEP]"));
        let cls = find(cls_text).ok_or_else(|| {
            bad(
                path,
                format!("the CLS token {cls_text:?} is not in the vocabulary"),
            )
        })?;
        let sep = find(sep_text).ok_or_else(|| {
            bad(
                path,
                format!("the SEP token {sep_text:?} is not in the vocabulary"),
            )
        })?;
        let pad = doc
            .pointer("/padding/pad_id")
            .and_then(Value::as_u64)
            .map(|i| i as u32)
            .filter(|&i| (i as usize) < n)
            .or_else(|| find("[PAD]"));
        let mask = find("[MASK]");

        let (lowercase, strip_accents) = match doc.get("normalizer") {
            Some(norm) if norm.get("type").and_then(Value::as_str) == Some("BertNormalizer") => {
                let flag = |k: &str| norm.get(k).and_then(Value::as_bool);
                if flag("clean_text") == Some(false) || flag("handle_chinese_chars") == Some(false)
                {
                    return Err(unsupported(
                        path,
                        "a BertNormalizer without clean_text or handle_chinese_chars (llama.cpp \
                         always does both)",
                    ));
                }
                let lowercase = flag("lowercase").unwrap_or(true);
                // Hugging Face: strip_accents null means "as lowercase".
                (lowercase, flag("strip_accents").unwrap_or(lowercase))
            }
            Some(Value::Null) | None => {
                return Err(unsupported(
                    path,
                    "no normalizer (llama.cpp's WordPiece always cleans the text as \
                     BertNormalizer does)",
                ))
            }
            Some(other) => {
                return Err(unsupported(
                    path,
                    format!(
                        "normalizer {}; only BertNormalizer matches llama.cpp's WordPiece",
                        other.get("type").unwrap_or(&Value::Null)
                    ),
                ))
            }
        };
        match doc.pointer("/pre_tokenizer/type").and_then(Value::as_str) {
            Some("BertPreTokenizer") => {}
            other => {
                return Err(unsupported(
                    path,
                    format!(
                        "pre-tokenizer {other:?}; only BertPreTokenizer matches llama.cpp's \
                         WordPiece"
                    ),
                ))
            }
        }
        Ok(Self {
            tokens,
            special,
            prefix,
            unk,
            cls,
            sep,
            pad,
            mask,
            lowercase,
            strip_accents,
        })
    }

    /// The token texts llama.cpp's WPM tokenizer expects, indexed by id (see the module
    /// documentation); refused if two tokens would end up with the same text.
    pub fn gguf_tokens(&self) -> Result<Vec<String>, ImportError> {
        let out: Vec<String> = self
            .tokens
            .iter()
            .zip(&self.special)
            .map(|(t, &s)| gguf_token_text(t, s, &self.prefix))
            .collect();
        let mut seen = std::collections::HashMap::with_capacity(out.len());
        for (id, t) in out.iter().enumerate() {
            if let Some(first) = seen.insert(t.as_str(), id) {
                return Err(ImportError::Unsupported(format!(
                    "tokens {first} ({:?}) and {id} ({:?}) both become {t:?} in llama.cpp's \
                     WordPiece vocabulary",
                    self.tokens[first], self.tokens[id]
                )));
            }
        }
        Ok(out)
    }

    /// `tokenizer.ggml.token_type` of each token.
    pub fn token_types(&self) -> Vec<i32> {
        self.special
            .iter()
            .map(|&s| {
                if s {
                    TOKEN_TYPE_CONTROL
                } else {
                    TOKEN_TYPE_NORMAL
                }
            })
            .collect()
    }
}

/// The CLS and SEP token texts of a `TemplateProcessing` post-processor whose single-sequence
/// template is `SPECIAL $A SPECIAL`.
fn post_processor_specials(doc: &Value) -> Option<(&str, &str)> {
    let single = doc.pointer("/post_processor/single")?.as_array()?;
    fn special(v: &Value) -> Option<&str> {
        v.pointer("/SpecialToken/id").and_then(Value::as_str)
    }
    match single.as_slice() {
        [first, seq, last] if seq.get("Sequence").is_some() => {
            Some((special(first)?, special(last)?))
        }
        _ => None,
    }
}

/// One token's text in llama.cpp's WPM vocabulary: specials and bracketed tokens (`[unused3]`)
/// unchanged, a continuation piece (`##ing`) without its prefix, any other piece (`play`) as a
/// word start (`▁play`). A token that is only the prefix (`##`) is a word of its own.
pub fn gguf_token_text(text: &str, special: bool, prefix: &str) -> String {
    if special || (text.len() > 2 && text.starts_with('[') && text.ends_with(']')) {
        text.to_string()
    } else if let Some(rest) = text.strip_prefix(prefix).filter(|r| !r.is_empty()) {
        rest.to_string()
    } else {
        format!("{WORD_START}{text}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn doc() -> Value {
        json!({
            "added_tokens": [
                {"id": 0, "content": "[PAD]", "special": true},
                {"id": 1, "content": "[UNK]", "special": true},
                {"id": 2, "content": "[CLS]", "special": true},
                {"id": 3, "content": "[SEP]", "special": true},
            ],
            "normalizer": {"type": "BertNormalizer", "clean_text": true,
                           "handle_chinese_chars": true, "strip_accents": null, "lowercase": true},
            "pre_tokenizer": {"type": "BertPreTokenizer"},
            "post_processor": {"type": "TemplateProcessing", "single": [
                {"SpecialToken": {"id": "[CLS]", "type_id": 0}},
                {"Sequence": {"id": "A", "type_id": 0}},
                {"SpecialToken": {"id": "[SEP]", "type_id": 0}}]},
            "model": {"type": "WordPiece", "unk_token": "[UNK]", "continuing_subword_prefix": "##",
                      "vocab": {"[PAD]": 0, "[UNK]": 1, "[CLS]": 2, "[SEP]": 3, "play": 4,
                                "##ing": 5, "##": 6, "[unused0]": 7, "[": 8}}
        })
    }

    #[test]
    fn word_starts_get_the_marker_and_continuations_lose_the_prefix() {
        let wp = WordPiece::from_json(&doc(), Path::new("tokenizer.json")).unwrap();
        assert_eq!(
            (wp.unk, wp.cls, wp.sep, wp.pad, wp.mask),
            (1, 2, 3, Some(0), None)
        );
        assert!(wp.lowercase && wp.strip_accents);
        assert_eq!(
            wp.gguf_tokens().unwrap(),
            [
                "[PAD]",
                "[UNK]",
                "[CLS]",
                "[SEP]",
                "▁play",
                "ing",
                "▁##",
                "[unused0]",
                "▁["
            ]
        );
        assert_eq!(wp.token_types()[..5], [3, 3, 3, 3, 1]);
    }

    #[test]
    fn other_tokenizers_are_refused() {
        let mut d = doc();
        d["model"]["type"] = json!("BPE");
        assert!(matches!(
            WordPiece::from_json(&d, Path::new("t.json")),
            Err(ImportError::Unsupported(_))
        ));
        let mut d = doc();
        d["pre_tokenizer"] = json!({"type": "Whitespace"});
        assert!(matches!(
            WordPiece::from_json(&d, Path::new("t.json")),
            Err(ImportError::Unsupported(_))
        ));
    }

    #[test]
    fn colliding_texts_are_refused() {
        let mut d = doc();
        // "##[unused0]" loses its prefix and meets the bracketed "[unused0]", kept as it is.
        d["model"]["vocab"]["##[unused0]"] = json!(9);
        let wp = WordPiece::from_json(&d, Path::new("t.json")).unwrap();
        assert!(wp.gguf_tokens().is_err());
    }
}
