//! A byte-level BPE `tokenizer.json` (GPT-2 style: Llama 3, Qwen2, SmolLM…) turned into
//! llama.cpp's `gpt2` vocabulary.
//!
//! Token texts and merges are copied as they are (both sides use the same byte-to-unicode
//! mapping). What llama.cpp cannot read from a vocabulary is how the text is split before the
//! merges: it keeps a fixed list of pre-tokenizers and names them (`tokenizer.ggml.pre`).
//! llama.cpp's Python converter recognizes a tokenizer by hashing what it makes of a test text;
//! this one reads the `pre_tokenizer` of `tokenizer.json` and names the llama.cpp pre-tokenizer
//! whose split is that one:
//!
//! | `pre_tokenizer` | `tokenizer.ggml.pre` |
//! | --- | --- |
//! | `ByteLevel` with its own (GPT-2) regex | `gpt-2` |
//! | `Digits` (one digit each), then `ByteLevel` with the GPT-2 regex | `smollm` |
//! | `Split` with Qwen2's regex, then `ByteLevel` without a regex | `qwen2` |
//! | `Split` with Llama 3's regex, then `ByteLevel` without a regex | `llama-bpe` |
//!
//! Anything else is refused: a wrong pre-tokenizer gives a model that loads and answers, but
//! with other token ids than it was trained on.

use std::path::Path;

use serde_json::Value;

use super::checkpoint::read_json;
use super::ImportError;

/// `LLAMA_TOKEN_TYPE_NORMAL`.
const NORMAL: i32 = 1;
/// `LLAMA_TOKEN_TYPE_CONTROL`.
const CONTROL: i32 = 3;
/// `LLAMA_TOKEN_TYPE_USER_DEFINED`.
const USER_DEFINED: i32 = 4;
/// `LLAMA_TOKEN_TYPE_UNUSED`.
const UNUSED: i32 = 5;

/// Qwen2's split, as its `tokenizer.json` writes it.
pub const QWEN2_REGEX: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";
/// Llama 3's split: Qwen2's with numbers in groups of up to three digits.
pub const LLAMA3_REGEX: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";

/// A byte-level BPE vocabulary as llama.cpp stores it.
#[derive(Debug, Clone)]
pub struct Bpe {
    /// Token texts by id (gaps filled with `[PAD{id}]`).
    pub tokens: Vec<String>,
    /// `tokenizer.ggml.token_type` of each.
    pub types: Vec<i32>,
    /// Merges, `"left right"`, by priority.
    pub merges: Vec<String>,
    /// `tokenizer.ggml.pre`.
    pub pre: &'static str,
}

fn unsupported(path: &Path, reason: impl Into<String>) -> ImportError {
    ImportError::Unsupported(format!("{}: {}", path.display(), reason.into()))
}

fn bad(path: &Path, reason: impl Into<String>) -> ImportError {
    ImportError::Invalid {
        path: path.to_path_buf(),
        reason: reason.into(),
    }
}

/// The llama.cpp pre-tokenizer whose split is this `pre_tokenizer`'s.
pub fn pre_type(pre: &Value) -> Option<&'static str> {
    let kind = |v: &Value| {
        v.get("type")
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_string()
    };
    let byte_level = |v: &Value, regex: bool| {
        kind(v) == "ByteLevel"
            && v.get("use_regex").and_then(Value::as_bool).unwrap_or(true) == regex
            && v.get("add_prefix_space").and_then(Value::as_bool) != Some(true)
    };
    if byte_level(pre, true) {
        return Some("gpt-2");
    }
    if kind(pre) != "Sequence" {
        return None;
    }
    let parts = pre.get("pretokenizers")?.as_array()?;
    match parts.as_slice() {
        [digits, bl]
            if kind(digits) == "Digits"
                && digits.get("individual_digits").and_then(Value::as_bool) == Some(true)
                && byte_level(bl, true) =>
        {
            Some("smollm")
        }
        [split, bl] if kind(split) == "Split" && byte_level(bl, false) => {
            let regex = split.pointer("/pattern/Regex")?.as_str()?;
            let isolated = split.get("behavior").and_then(Value::as_str) == Some("Isolated");
            let inverted = split.get("invert").and_then(Value::as_bool) == Some(true);
            if !isolated || inverted {
                return None;
            }
            match regex {
                QWEN2_REGEX => Some("qwen2"),
                LLAMA3_REGEX => Some("llama-bpe"),
                _ => None,
            }
        }
        _ => None,
    }
}

impl Bpe {
    /// Reads `tokenizer.json`; `n_vocab` is the embedding's row count (the vocabulary is padded
    /// up to it).
    pub fn load(path: &Path, n_vocab: usize) -> Result<Self, ImportError> {
        let doc = read_json(path)?;
        let model = doc
            .get("model")
            .ok_or_else(|| bad(path, "no \"model\" object"))?;
        if model.get("type").and_then(Value::as_str) != Some("BPE") {
            return Err(unsupported(
                path,
                format!(
                    "tokenizer model {}; a decoder's tokenizer must be byte-level BPE",
                    model.get("type").unwrap_or(&Value::Null)
                ),
            ));
        }
        let pre = doc.get("pre_tokenizer").unwrap_or(&Value::Null);
        let pre = pre_type(pre).ok_or_else(|| {
            unsupported(
                path,
                format!(
                    "pre-tokenizer {pre}; llama.cpp's pre-tokenizers recognized here: GPT-2, \
                     SmolLM, Qwen2, Llama 3"
                ),
            )
        })?;
        match doc.pointer("/decoder/type").and_then(Value::as_str) {
            Some("ByteLevel") => {}
            other => {
                return Err(unsupported(
                    path,
                    format!("decoder {other:?}; byte-level BPE decodes with ByteLevel"),
                ))
            }
        }
        let vocab = model
            .get("vocab")
            .and_then(Value::as_object)
            .ok_or_else(|| bad(path, "no model.vocab object"))?;
        let mut tokens: Vec<Option<(String, i32)>> = Vec::new();
        let mut put = |id: usize, text: &str, ty: i32| -> Result<(), ImportError> {
            if id >= n_vocab {
                return Err(bad(
                    path,
                    format!("token {text:?} has id {id}, beyond vocab_size {n_vocab}"),
                ));
            }
            if tokens.len() <= id {
                tokens.resize(id + 1, None);
            }
            match &tokens[id] {
                Some((t, _)) if t != text => {
                    Err(bad(path, format!("id {id} is both {t:?} and {text:?}")))
                }
                _ => {
                    tokens[id] = Some((text.to_string(), ty));
                    Ok(())
                }
            }
        };
        for (text, id) in vocab {
            let id = id
                .as_u64()
                .ok_or_else(|| bad(path, format!("token {text:?}: id {id} is not a number")))?;
            put(id as usize, text, NORMAL)?;
        }
        for t in doc
            .get("added_tokens")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            let id = t
                .get("id")
                .and_then(Value::as_u64)
                .ok_or_else(|| bad(path, "an added token without an id"))?;
            let content = t.get("content").and_then(Value::as_str).unwrap_or("");
            let ty = if t.get("special").and_then(Value::as_bool) == Some(true) {
                CONTROL
            } else {
                USER_DEFINED
            };
            put(id as usize, content, ty)?;
        }
        let mut texts = Vec::with_capacity(n_vocab);
        let mut types = Vec::with_capacity(n_vocab);
        for id in 0..n_vocab {
            match tokens.get(id).cloned().flatten() {
                Some((t, ty)) => {
                    texts.push(t);
                    types.push(ty);
                }
                None => {
                    texts.push(format!("[PAD{id}]"));
                    types.push(UNUSED);
                }
            }
        }
        let merges = model
            .get("merges")
            .and_then(Value::as_array)
            .ok_or_else(|| bad(path, "no model.merges array"))?
            .iter()
            .map(|m| match m {
                Value::String(s) => Ok(s.clone()),
                Value::Array(pair) => match pair.as_slice() {
                    [Value::String(a), Value::String(b)] => Ok(format!("{a} {b}")),
                    _ => Err(bad(path, format!("merge {m} is not a pair of strings"))),
                },
                _ => Err(bad(path, format!("merge {m} is not a string or a pair"))),
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Self {
            tokens: texts,
            types,
            merges,
            pre,
        })
    }

    /// The id of a token text.
    pub fn id(&self, text: &str) -> Option<u32> {
        self.tokens.iter().position(|t| t == text).map(|i| i as u32)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn known_pre_tokenizers_are_named_and_others_refused() {
        assert_eq!(
            pre_type(&json!({"type": "ByteLevel", "add_prefix_space": false})),
            Some("gpt-2")
        );
        let smollm = json!({"type": "Sequence", "pretokenizers": [
            {"type": "Digits", "individual_digits": true},
            {"type": "ByteLevel", "add_prefix_space": false, "use_regex": true}]});
        assert_eq!(pre_type(&smollm), Some("smollm"));
        let split = |re: &str| {
            json!({"type": "Sequence", "pretokenizers": [
                {"type": "Split", "pattern": {"Regex": re}, "behavior": "Isolated", "invert": false},
                {"type": "ByteLevel", "add_prefix_space": false, "use_regex": false}]})
        };
        assert_eq!(pre_type(&split(QWEN2_REGEX)), Some("qwen2"));
        assert_eq!(pre_type(&split(LLAMA3_REGEX)), Some("llama-bpe"));
        assert_eq!(pre_type(&split(r"\s+")), None);
        assert_eq!(pre_type(&json!({"type": "Metaspace"})), None);
        assert_eq!(
            pre_type(&json!({"type": "ByteLevel", "add_prefix_space": true})),
            None
        );
    }
}
