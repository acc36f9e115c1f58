//! The training data's loss mask against the real models' own chat templates: the masked tokens
//! of a rendered conversation are exactly the assistant's words and end-of-turn markers.
//!
//! Tokens are turned back into text here without llama.cpp, from the GGUF's own vocabulary
//! (GPT-2 byte-level pieces for SmolLM2 and Qwen2.5, SentencePiece pieces for Gemma 3), so the
//! check does not trust the tokenizer that produced them. A missing model fails the test.

mod common;

use common::{model, GEMMA3, SMOLLM2};
use inhouse_formats::gguf::{self, Array};
use inhouse_formats::progress::ToolError;
use inhouse_quantize::finetune::Record;
use inhouse_quantize::llama::{LoadMode, Model};
use inhouse_quantize::train::data::{chat_format_of, encode, ChatFormat, Encoded};
use std::collections::HashMap;
use std::path::Path;

const QWEN: &str = "qwen2.5-coder-0.5b-instruct-q4_k_m.gguf";

/// A detokenizer read from the GGUF's vocabulary.
struct Vocab {
    tokens: Vec<String>,
    types: Vec<i32>,
    byte_level: bool,
    unbyte: HashMap<char, u8>,
}

impl Vocab {
    fn open(path: &Path) -> Vocab {
        let f = gguf::open(path).unwrap();
        let tokens = match f.get("tokenizer.ggml.tokens").and_then(|v| v.as_array()) {
            Some(Array::String(t)) => t.clone(),
            other => panic!("tokens: {other:?}"),
        };
        let types = match f
            .get("tokenizer.ggml.token_type")
            .and_then(|v| v.as_array())
        {
            Some(Array::I32(t)) => t.clone(),
            other => panic!("token types: {other:?}"),
        };
        let byte_level = f.get_str("tokenizer.ggml.model") == Some("gpt2");
        // GPT-2's bytes_to_unicode, inverted.
        let mut unbyte = HashMap::new();
        let mut next = 256u32;
        for b in 0..=255u8 {
            let printable = matches!(b, b'!'..=b'~' | 0xA1..=0xAC | 0xAE..=0xFF);
            let c = if printable {
                char::from(b)
            } else {
                next += 1;
                char::from_u32(next - 1).unwrap()
            };
            unbyte.insert(c, b);
        }
        Vocab {
            tokens,
            types,
            byte_level,
            unbyte,
        }
    }

    fn decode(&self, ids: &[u32]) -> String {
        let mut bytes = Vec::new();
        for &id in ids {
            let piece = &self.tokens[id as usize];
            match self.types[id as usize] {
                // Control and user-defined tokens: their text as it is.
                3 | 4 => bytes.extend_from_slice(piece.as_bytes()),
                // SentencePiece byte tokens, <0xNN>.
                6 => bytes.push(u8::from_str_radix(&piece[3..5], 16).unwrap()),
                _ if self.byte_level => bytes.extend(piece.chars().map(|c| self.unbyte[&c])),
                _ => bytes.extend_from_slice(piece.replace('\u{2581}', " ").as_bytes()),
            }
        }
        String::from_utf8(bytes).unwrap()
    }
}

fn conversation() -> Vec<(String, String)> {
    [
        ("system", "You answer in one short sentence."),
        ("user", "What is the capital of France?"),
        ("assistant", "The capital of France is Paris."),
        ("user", "And of Italy? Answer with care:\n  it matters."),
        (
            "assistant",
            "Rome is the capital of Italy.\nIt has been since 1871.",
        ),
    ]
    .iter()
    .map(|(r, c)| (r.to_string(), c.to_string()))
    .collect()
}

/// Runs of consecutive masked positions, decoded.
fn masked_runs(vocab: &Vocab, tokens: &[u32], mask: &[bool]) -> Vec<String> {
    let mut runs = Vec::new();
    let mut cur: Vec<u32> = Vec::new();
    for (&t, &m) in tokens.iter().zip(mask) {
        if m {
            cur.push(t);
        } else if !cur.is_empty() {
            runs.push(vocab.decode(&cur));
            cur.clear();
        }
    }
    if !cur.is_empty() {
        runs.push(vocab.decode(&cur));
    }
    runs
}

fn encode_one(model: &Model, chat: &ChatFormat, train_on_inputs: bool, ctx: usize) -> Encoded {
    let records = [Record::Messages(conversation())];
    encode(model, Some(chat), &records, train_on_inputs, ctx).unwrap()
}

fn check_chat_model(file: &str, marker: &str) {
    let path = model(file);
    let vocab = Vocab::open(&path);
    let chat = chat_format_of(&path).unwrap().expect("a chat template");
    let model = Model::load(&path, LoadMode::Mapped).unwrap();
    let conv = conversation();
    let full = chat.render(&conv, false).unwrap();

    let enc = encode_one(&model, &chat, false, 4096);
    assert_eq!((enc.n_records, enc.n_chat_records), (1, 1));
    assert_eq!((enc.n_split, enc.n_windows_dropped), (0, 0));
    assert_eq!(enc.samples.len(), 1);
    let s = &enc.samples[0];
    assert_eq!(s.tokens.len(), s.mask.len());
    assert!(!s.mask[0]);
    assert_eq!(enc.n_tokens, s.tokens.len());
    assert_eq!(enc.n_masked, s.mask.iter().filter(|&&m| m).count());

    // The masked tokens are exactly each answer and its end-of-turn marker.
    let answers: Vec<String> = conv
        .iter()
        .filter(|(r, _)| r == "assistant")
        .map(|(_, c)| format!("{c}{marker}"))
        .collect();
    assert_eq!(masked_runs(&vocab, &s.tokens, &s.mask), answers, "{file}");
    // All tokens, untrained and trained in order, are the full rendering (these models add no
    // BOS of their own).
    assert_eq!(vocab.decode(&s.tokens), full, "{file}");
    // Here the pieces tokenize as the whole text does (no BPE merge would cross a boundary),
    // so the sample is token for token the prompt serving builds.
    let whole: Vec<u32> = model
        .tokenize(&full, false, true)
        .unwrap()
        .into_iter()
        .map(|t| t as u32)
        .collect();
    assert_eq!(whole, s.tokens, "{file}");

    // --train-on-inputs: every position but the first.
    let all = encode_one(&model, &chat, true, 4096);
    let a = &all.samples[0];
    assert_eq!(a.tokens, s.tokens);
    assert!(!a.mask[0] && a.mask[1..].iter().all(|&m| m));

    // Short windows: at most ctx tokens each, the first position unmasked, every label kept
    // once; windows inside the prompt (nothing to learn) dropped.
    let ctx = 12;
    let win = encode_one(&model, &chat, false, ctx);
    assert_eq!(win.n_split, 1);
    assert!(
        win.n_windows_dropped > 0,
        "the system and user turns span whole windows"
    );
    assert!(win.samples.len() > 1);
    for w in &win.samples {
        assert!(w.tokens.len() <= ctx && !w.mask[0] && w.mask.iter().any(|&m| m));
    }
    assert_eq!(win.n_masked, enc.n_masked);
    let n_windows = win.samples.len() + win.n_windows_dropped;
    assert_eq!(
        (s.tokens.len() - 1).div_ceil(ctx - 1),
        n_windows,
        "windows of {ctx} overlapping by one"
    );
}

#[test]
fn smollm2_masks_exactly_the_answers() {
    check_chat_model(SMOLLM2, "<|im_end|>");
}

#[test]
fn qwen2_masks_exactly_the_answers() {
    check_chat_model(QWEN, "<|im_end|>");
}

#[test]
fn plain_text_trains_every_token_and_ends_with_eos() {
    let path = model(SMOLLM2);
    let vocab = Vocab::open(&path);
    let model = Model::load(&path, LoadMode::Mapped).unwrap();
    let records = [Record::Text("Paris is the capital of France.".into())];
    let enc = encode(&model, None, &records, false, 4096).unwrap();
    let s = &enc.samples[0];
    assert!(!s.mask[0] && s.mask[1..].iter().all(|&m| m));
    assert_eq!(*s.tokens.last().unwrap() as i32, model.eos().unwrap());
    assert_eq!(
        vocab.decode(&s.tokens),
        "Paris is the capital of France.<|im_end|>"
    );
}

#[test]
fn gemma3_has_no_template_so_chat_records_are_refused() {
    let path = model(GEMMA3);
    assert!(chat_format_of(&path).unwrap().is_none());
    let model = Model::load(&path, LoadMode::Mapped).unwrap();
    let records = [
        Record::Text("Hello there.".into()),
        Record::Messages(conversation()),
    ];
    match encode(&model, None, &records, false, 4096) {
        Err(ToolError::BadInput(m)) => {
            assert!(m.starts_with("record 2: "), "{m}");
            assert!(m.contains("this model has no chat template"), "{m}");
        }
        other => panic!("{other:?}"),
    }
    // Plain text works, with the BOS Gemma asks for.
    let vocab = Vocab::open(&path);
    let enc = encode(&model, None, &records[..1], false, 4096).unwrap();
    let s = &enc.samples[0];
    assert_eq!(vocab.decode(&s.tokens), "<bos>Hello there.<eos>");
}

#[test]
fn gemma3_layout_with_its_bos_written_by_the_template() {
    // Gemma 3's instruct template (the base GGUF carries none), reduced to its layout: the
    // template writes <bos> itself, so no second BOS may be added.
    let source = "{{ bos_token }}{% for m in messages %}{% if m['role'] == 'assistant' %}\
                  {% set role = 'model' %}{% else %}{% set role = m['role'] %}{% endif %}\
                  {{ '<start_of_turn>' + role + '\\n' + m['content'] | trim + '<end_of_turn>\\n' }}\
                  {% endfor %}{% if add_generation_prompt %}{{ '<start_of_turn>model\\n' }}{% endif %}";
    let path = model(GEMMA3);
    let vocab = Vocab::open(&path);
    let chat = ChatFormat::new(source, "<bos>", "<eos>", None).unwrap();
    let model = Model::load(&path, LoadMode::Mapped).unwrap();
    let conv: Vec<(String, String)> = conversation().into_iter().skip(1).collect();
    let enc = encode(
        &model,
        Some(&chat),
        &[Record::Messages(conv.clone())],
        false,
        4096,
    )
    .unwrap();
    let s = &enc.samples[0];
    let full = chat.render(&conv, false).unwrap();
    assert!(full.starts_with("<bos><start_of_turn>user\n"));
    assert_eq!(vocab.decode(&s.tokens), full);
    assert_eq!(
        masked_runs(&vocab, &s.tokens, &s.mask),
        [
            "The capital of France is Paris.<end_of_turn>",
            "Rome is the capital of Italy.\nIt has been since 1871.<end_of_turn>"
        ]
    );
}

#[test]
fn a_template_that_cannot_be_split_names_the_record() {
    let path = model(SMOLLM2);
    let model = Model::load(&path, LoadMode::Mapped).unwrap();
    let odd = "{% for m in messages %}<{{ m.role }}>{{ m.content }}</s>{% endfor %}\
               {% if add_generation_prompt %}<gen>{% endif %}";
    let chat = ChatFormat::new(odd, "", "</s>", None).unwrap();
    let records = [
        Record::Text("fine".into()),
        Record::Text("also fine".into()),
        Record::Messages(conversation()),
    ];
    match encode(&model, Some(&chat), &records, false, 4096) {
        Err(ToolError::BadInput(m)) => {
            assert!(m.starts_with("record 3: message 3 (assistant): "), "{m}")
        }
        other => panic!("{other:?}"),
    }
}
