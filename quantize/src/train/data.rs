//! Training data for `finetune`: JSONL records (as [`crate::finetune::read_records`] reads them)
//! turned into token sequences with a **loss mask**, so that a chat model learns the assistant's
//! words and not the user's turns, the system prompt or the template's markup.
//!
//! A [`Sample`] is `tokens` and `mask`, of equal length; `mask[i]` says whether the loss counts
//! the prediction of `tokens[i]` from `tokens[..i]` (the logits at position `i - 1`), so
//! `mask[0]` is always false.
//!
//! **Chat records** (`{"messages": […]}`) are rendered with the model's own Jinja chat template
//! through [`inhouse_formats::template::ChatTemplate`], the daemon's renderer, so the text is
//! byte for byte the prompt serving builds. The assistant's spans are found by rendering
//! prefixes, which needs no knowledge of the template's markup: for each assistant message `i`,
//!
//! - `prefix = render(messages[..i], add_generation_prompt = true)`: what serving would send the
//!   model before it answers,
//! - `turn = render(messages[..=i], add_generation_prompt = false)`: the conversation once it has,
//!
//! and `turn` must start with `prefix` (a template for which it does not cannot be split into
//! "prompt" and "answer" at all, and the record is refused naming it). What follows the prefix is
//! the answer as the model would have to generate it: the content, then the end-of-turn marker
//! (the model's EOT or EOS token text, `<|im_end|>`, `<end_of_turn>`, …), then the template's
//! separator (ChatML's `"\n"`). The trained text is cut right after the first marker that follows
//! the content: generation stops at that token, so the model never produces the separator, and
//! training on it would teach nothing serving uses. A template whose answer has no marker at all
//! trains on the whole continuation without its trailing whitespace.
//!
//! The whole conversation is then rendered once (`add_generation_prompt = false`), each span must
//! sit at the same bytes there (a template that renders an earlier assistant turn differently
//! once later messages follow, as thinking models that strip old reasoning do, is refused: the
//! model would be trained on a text it never sees), and the rendering is cut into alternating
//! untrained / trained text [segments](ChatFormat::segments).
//!
//! **Tokenization is piece by piece**: each segment is tokenized on its own with llama.cpp
//! (special tokens parsed, as serving parses the template's control tokens) and the pieces are
//! concatenated; BOS is put only at the very start, when the model asks for one and the template
//! did not write it (Gemma's writes `<bos>` itself), exactly as the daemon tokenizes a prompt.
//! Piecewise because that is how serving sees an answer: the prompt is tokenized as text, and the
//! answer's tokens are generated one by one after it, never merged by the tokenizer with the
//! prompt's last characters. Tokenizing the joined text could let a BPE merge straddle the
//! boundary, and then a token would be half prompt, half answer, and no mask could be right.
//!
//! With `train_on_inputs` every position but the first counts (the old behaviour of
//! `finetune`). **Plain records** (`{"text": …}`) are tokenized as they are (BOS as the model
//! asks, special-token text not parsed) with EOS appended, and every position counts.
//!
//! **Windows.** A sample longer than `ctx` tokens is cut into [windows](windows) of at most `ctx`
//! tokens that overlap by one token: window `k` starts at `k·(ctx − 1)`, and its first position's
//! mask is false (it has no context inside the window; it was the previous window's last label).
//! So every position of the sample is a label in exactly one window, with its mask kept, and the
//! masked count is the same before and after the cut. Windows (or whole samples) with no masked
//! position are dropped, and counted in [`Encoded::n_windows_dropped`].

use std::path::Path;

use crate::finetune::Record;
use crate::llama::Model;
use inhouse_formats::gguf;
use inhouse_formats::progress::ToolError;
use inhouse_formats::request::ChatMessage;
use inhouse_formats::template::{ChatTemplate, RenderInput, TemplateLimits};

/// End-of-turn texts of the common chat formats, looked for after an assistant's content in
/// addition to the model's own EOS and EOT token texts (a GGUF's EOS is often `<|endoftext|>`
/// while its template ends turns with `<|im_end|>`).
const KNOWN_END_MARKERS: &[&str] = &[
    "<|im_end|>",
    "<end_of_turn>",
    "<|eot_id|>",
    "<|end|>",
    "<|endoftext|>",
];

/// One training sequence: `mask[i]` is whether the loss counts predicting `tokens[i]` from
/// `tokens[..i]`; `mask[0]` is false.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sample {
    /// Token ids (llama.cpp's, as serving tokenizes).
    pub tokens: Vec<u32>,
    /// Whether each position is a label of the loss (same length as `tokens`).
    pub mask: Vec<bool>,
}

impl Sample {
    /// Positions the loss counts.
    pub fn n_masked(&self) -> usize {
        self.mask.iter().filter(|&&m| m).count()
    }
}

/// The samples of a data set and what happened on the way.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Encoded {
    /// The training sequences, each at most `ctx` tokens, each with a masked position.
    pub samples: Vec<Sample>,
    /// Records read.
    pub n_records: usize,
    /// Of which chat (`{"messages"}`) records.
    pub n_chat_records: usize,
    /// Tokens in `samples` (the one-token overlaps of split records counted twice).
    pub n_tokens: usize,
    /// Masked positions in `samples`: the tokens the loss is computed on.
    pub n_masked: usize,
    /// Records longer than `ctx` tokens, cut into several windows.
    pub n_split: usize,
    /// Windows (a whole record when it was not cut) dropped because no position in them is
    /// masked (e.g. a conversation with no assistant turn, or a window of a long user turn).
    pub n_windows_dropped: usize,
}

/// A model's chat template with the token texts the span finder needs: compiled as the daemon
/// compiles it (the GGUF's `tokenizer.chat_template`, its BOS and EOS token texts).
#[derive(Debug)]
pub struct ChatFormat {
    template: ChatTemplate,
    bos_token: String,
    end_markers: Vec<String>,
}

impl ChatFormat {
    /// Compiles `source` with the BOS and EOS token texts (what the template sees as `bos_token`
    /// and `eos_token`) and, when the model has one, its end-of-turn token text; the EOT and EOS
    /// texts, then [`KNOWN_END_MARKERS`], are the markers that end an assistant's trained text.
    pub fn new(
        source: &str,
        bos_token: &str,
        eos_token: &str,
        eot_token: Option<&str>,
    ) -> Result<Self, ToolError> {
        let template =
            ChatTemplate::new(source, bos_token, eos_token, TemplateLimits::default())
                .map_err(|e| ToolError::BadInput(format!("the model's chat template: {e}")))?;
        let mut end_markers: Vec<String> = Vec::new();
        let candidates = eot_token
            .into_iter()
            .chain([eos_token])
            .chain(KNOWN_END_MARKERS.iter().copied());
        for m in candidates {
            if !m.is_empty() && !end_markers.iter().any(|x| x == m) {
                end_markers.push(m.to_string());
            }
        }
        Ok(ChatFormat {
            template,
            bos_token: bos_token.to_string(),
            end_markers,
        })
    }

    /// The compiled template.
    pub fn template(&self) -> &ChatTemplate {
        &self.template
    }

    /// The BOS token's text (empty if the model has none).
    pub fn bos_token(&self) -> &str {
        &self.bos_token
    }

    /// The texts that end an assistant's trained text, in the order they are preferred when two
    /// start at the same byte.
    pub fn end_markers(&self) -> &[String] {
        &self.end_markers
    }

    /// Renders `(role, content)` messages as serving would.
    pub fn render(
        &self,
        messages: &[(String, String)],
        add_generation_prompt: bool,
    ) -> Result<String, String> {
        let msgs: Vec<ChatMessage> = messages
            .iter()
            .map(|(r, c)| ChatMessage::text(r.as_str(), c.as_str()))
            .collect();
        self.template
            .render(&RenderInput {
                messages: &msgs,
                tools: &[],
                add_generation_prompt,
                enable_thinking: None,
            })
            .map_err(|e| e.to_string())
    }

    /// The full rendering of a conversation cut into `(text, trained)` pieces, alternating (no
    /// two neighbours share a flag, none is empty): their concatenation is
    /// `render(messages, false)`, and the trained pieces are the assistant turns' content with
    /// the end-of-turn marker (see the module documentation). A conversation with no assistant
    /// turn is one untrained piece. The error says which message defeated the span finder.
    pub fn segments(&self, messages: &[(String, String)]) -> Result<Vec<(String, bool)>, String> {
        let full = self.render(messages, false)?;
        let mut spans: Vec<(usize, usize)> = Vec::new();
        for (i, (role, content)) in messages.iter().enumerate() {
            if role != "assistant" {
                continue;
            }
            let at = || format!("message {} (assistant)", i + 1);
            let prefix = self
                .render(&messages[..i], true)
                .map_err(|e| format!("{}: rendering the turns before it: {e}", at()))?;
            let turn = if i + 1 == messages.len() {
                full.clone()
            } else {
                self.render(&messages[..=i], false)
                    .map_err(|e| format!("{}: {e}", at()))?
            };
            if !turn.starts_with(&prefix) {
                return Err(format!(
                    "{}: the chat template's rendering of the conversation up to this turn does \
                     not start with its rendering of the turns before it plus the generation \
                     prompt, so the assistant's text cannot be told apart from the prompt \
                     (use --train-on-inputs to train on every token)",
                    at()
                ));
            }
            let start = prefix.len();
            let stop = start + self.answer_len(&turn[start..], content);
            if full.get(..stop) != Some(&turn[..stop]) {
                return Err(format!(
                    "{}: the chat template renders this turn differently once later messages \
                     follow (it rewrites earlier turns), so no single rendering of the \
                     conversation holds every answer as it was generated; split the \
                     conversation into one record per assistant turn",
                    at()
                ));
            }
            if let Some(&(_, last)) = spans.last() {
                if start < last {
                    return Err(format!(
                        "{}: its prompt ends inside the previous assistant turn's text",
                        at()
                    ));
                }
            }
            if stop > start {
                spans.push((start, stop));
            }
        }
        let mut out: Vec<(String, bool)> = Vec::new();
        let mut push = |text: &str, trained: bool| {
            if text.is_empty() {
                return;
            }
            match out.last_mut() {
                Some((t, f)) if *f == trained => t.push_str(text),
                _ => out.push((text.to_string(), trained)),
            }
        };
        let mut cursor = 0;
        for (s, e) in spans {
            push(&full[cursor..s], false);
            push(&full[s..e], true);
            cursor = e;
        }
        push(&full[cursor..], false);
        Ok(out)
    }

    /// How many bytes of `rest` (what the template renders after the generation prompt) the
    /// model generates: up to and including the first end marker after `content`.
    fn answer_len(&self, rest: &str, content: &str) -> usize {
        let from = match rest.find(content) {
            Some(p) if !content.is_empty() => p + content.len(),
            _ => 0,
        };
        let tail = &rest[from..];
        let best = self
            .end_markers
            .iter()
            .filter_map(|m| tail.find(m.as_str()).map(|p| (p, m.len())))
            // The earliest; of two starting at the same byte, the longer.
            .min_by_key(|&(p, len)| (p, usize::MAX - len));
        match best {
            Some((p, len)) => from + p + len,
            None => rest.trim_end().len().max(from),
        }
    }
}

/// The model's chat template as the daemon builds it: `tokenizer.chat_template` of the GGUF at
/// `model_path`, with the texts of its BOS, EOS and (when the file names one) EOT tokens.
/// `Ok(None)` when the model has no template (then only `{"text"}` records can be encoded).
pub fn chat_format_of(model_path: &Path) -> Result<Option<ChatFormat>, ToolError> {
    let f = gguf::open(model_path)
        .map_err(|e| ToolError::BadInput(format!("{}: {e}", model_path.display())))?;
    chat_format_in(&f)
}

/// [`chat_format_of`] for a GGUF already open.
pub fn chat_format_in(f: &gguf::GgufFile) -> Result<Option<ChatFormat>, ToolError> {
    let Some(source) = f.chat_template() else {
        return Ok(None);
    };
    let tokens = match f.get("tokenizer.ggml.tokens").and_then(|v| v.as_array()) {
        Some(gguf::Array::String(t)) => t.as_slice(),
        _ => &[],
    };
    let token = |key: &str| -> Option<&str> {
        let id = usize::try_from(f.get_u64(key)?).ok()?;
        tokens.get(id).map(String::as_str)
    };
    let bos = token("tokenizer.ggml.bos_token_id").unwrap_or("");
    let eos = token("tokenizer.ggml.eos_token_id").unwrap_or("");
    let eot = token("tokenizer.ggml.eot_token_id");
    ChatFormat::new(source, bos, eos, eot).map(Some)
}

/// Encodes `records` for training with at most `ctx` tokens a sample (see the module
/// documentation). `chat` is the model's template ([`chat_format_of`]); chat records without one
/// are refused. Errors name the record (1-based, in file order, blank lines not counted).
pub fn encode(
    model: &Model,
    chat: Option<&ChatFormat>,
    records: &[Record],
    train_on_inputs: bool,
    ctx: usize,
) -> Result<Encoded, ToolError> {
    if ctx < 2 {
        return Err(ToolError::BadInput(format!(
            "a training window needs at least 2 tokens (ctx = {ctx})"
        )));
    }
    let mut out = Encoded {
        n_records: records.len(),
        ..Encoded::default()
    };
    for (n, record) in records.iter().enumerate() {
        if matches!(record, Record::Messages(_)) {
            out.n_chat_records += 1;
        }
        let sample = encode_record(model, chat, record, train_on_inputs)
            .map_err(|e| prefix_error(e, &format!("record {}", n + 1)))?;
        if sample.tokens.len() > ctx {
            out.n_split += 1;
        }
        for w in windows(&sample, ctx) {
            if w.mask.iter().any(|&m| m) {
                out.n_tokens += w.tokens.len();
                out.n_masked += w.n_masked();
                out.samples.push(w);
            } else {
                out.n_windows_dropped += 1;
            }
        }
    }
    Ok(out)
}

/// One record as one sample, not cut to a window.
pub fn encode_record(
    model: &Model,
    chat: Option<&ChatFormat>,
    record: &Record,
    train_on_inputs: bool,
) -> Result<Sample, ToolError> {
    let tok = |text: &str, add_special: bool, parse_special: bool| {
        model
            .tokenize(text, add_special, parse_special)
            .map_err(|e| ToolError::Failed(format!("tokenizing: {e}")))
    };
    let (tokens, mut mask): (Vec<i32>, Vec<bool>) = match record {
        Record::Text(t) => {
            let mut tokens = tok(t, true, false)?;
            tokens.extend(model.eos());
            let mask = vec![true; tokens.len()];
            (tokens, mask)
        }
        Record::Messages(messages) => {
            let chat = chat.ok_or_else(|| {
                ToolError::BadInput(
                    "this model has no chat template: give {\"text\"} records".to_string(),
                )
            })?;
            let segments = chat.segments(messages).map_err(ToolError::BadInput)?;
            let mut tokens = Vec::new();
            let mut mask = Vec::new();
            let written = segments
                .first()
                .is_some_and(|(t, _)| !chat.bos_token.is_empty() && t.starts_with(&chat.bos_token));
            if !written {
                // BOS (and only BOS) where the model adds one: llama.cpp's add_special on an
                // empty text gives exactly the tokens it would put around any text.
                let lead: Vec<i32> = tok("", true, false)?
                    .into_iter()
                    .filter(|&t| Some(t) != model.eos())
                    .collect();
                mask.extend(std::iter::repeat_n(false, lead.len()));
                tokens.extend(lead);
            }
            for (text, trained) in &segments {
                let piece = tok(text, false, true)?;
                mask.extend(std::iter::repeat_n(*trained, piece.len()));
                tokens.extend(piece);
            }
            (tokens, mask)
        }
    };
    if train_on_inputs {
        mask.iter_mut().for_each(|m| *m = true);
    }
    if let Some(m) = mask.first_mut() {
        *m = false;
    }
    let tokens = tokens
        .into_iter()
        .map(|t| u32::try_from(t).map_err(|_| ToolError::Failed(format!("token id {t}"))))
        .collect::<Result<Vec<u32>, _>>()?;
    Ok(Sample { tokens, mask })
}

/// `sample` cut into windows of at most `ctx` tokens (`ctx >= 2`) overlapping by one token, each
/// with its part of the mask and its first position unmasked: every position but the first is a
/// label in exactly one window. A sample that fits is returned whole.
pub fn windows(sample: &Sample, ctx: usize) -> Vec<Sample> {
    let len = sample.tokens.len();
    if len <= ctx || ctx < 2 {
        return vec![sample.clone()];
    }
    let mut out = Vec::new();
    let mut start = 0;
    loop {
        let end = (start + ctx).min(len);
        let mut mask = sample.mask[start..end].to_vec();
        mask[0] = false;
        out.push(Sample {
            tokens: sample.tokens[start..end].to_vec(),
            mask,
        });
        if end == len {
            return out;
        }
        start += ctx - 1;
    }
}

fn prefix_error(e: ToolError, at: &str) -> ToolError {
    match e {
        ToolError::BadInput(m) => ToolError::BadInput(format!("{at}: {m}")),
        ToolError::Failed(m) => ToolError::Failed(format!("{at}: {m}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// ChatML with a default system turn, as SmolLM2's and Qwen2.5's templates write it.
    const CHATML: &str = "{% for message in messages %}{% if loop.first and \
        messages[0]['role'] != 'system' %}{{ '<|im_start|>system\\nYou are helpful.<|im_end|>\\n' \
        }}{% endif %}{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + \
        '<|im_end|>' + '\\n' }}{% endfor %}{% if add_generation_prompt %}{{ \
        '<|im_start|>assistant\\n' }}{% endif %}";

    /// Gemma's layout: BOS written by the template, `model` for the assistant, `<end_of_turn>`.
    const GEMMA: &str = "{{ bos_token }}{% for message in messages %}{% if message['role'] == \
        'assistant' %}{% set role = 'model' %}{% else %}{% set role = message['role'] %}{% endif \
        %}{{ '<start_of_turn>' + role + '\\n' + message['content'] | trim + '<end_of_turn>\\n' }}\
        {% endfor %}{% if add_generation_prompt %}{{ '<start_of_turn>model\\n' }}{% endif %}";

    fn msgs(list: &[(&str, &str)]) -> Vec<(String, String)> {
        list.iter()
            .map(|(r, c)| (r.to_string(), c.to_string()))
            .collect()
    }

    fn conversation() -> Vec<(String, String)> {
        msgs(&[
            ("system", "Answer briefly."),
            ("user", "What is 2+2?"),
            ("assistant", "4."),
            ("user", "And 3+3?"),
            ("assistant", "6, of course."),
        ])
    }

    fn trained(segs: &[(String, bool)]) -> Vec<&str> {
        segs.iter()
            .filter(|(_, t)| *t)
            .map(|(s, _)| s.as_str())
            .collect()
    }

    fn check_alternating(segs: &[(String, bool)]) {
        assert!(segs.iter().all(|(s, _)| !s.is_empty()));
        assert!(segs.windows(2).all(|w| w[0].1 != w[1].1), "{segs:?}");
    }

    #[test]
    fn chatml_trains_exactly_the_answers_and_their_end_marker() {
        let chat = ChatFormat::new(CHATML, "<|im_start|>", "<|im_end|>", None).unwrap();
        let conv = conversation();
        let segs = chat.segments(&conv).unwrap();
        let joined: String = segs.iter().map(|(s, _)| s.as_str()).collect();
        assert_eq!(joined, chat.render(&conv, false).unwrap());
        assert_eq!(trained(&segs), ["4.<|im_end|>", "6, of course.<|im_end|>"]);
        check_alternating(&segs);
        // The separator after the last answer is not trained.
        assert_eq!(segs.last().unwrap(), &("\n".to_string(), false));
        assert!(segs[0].0.ends_with("<|im_start|>assistant\n"));
    }

    #[test]
    fn the_default_system_turn_and_a_trailing_user_turn_stay_untrained() {
        // EOS given as another token: the ChatML marker is still found (known markers).
        let chat = ChatFormat::new(CHATML, "", "<|endoftext|>", None).unwrap();
        let conv = msgs(&[("user", "Hi"), ("assistant", "Hello!"), ("user", "Bye")]);
        let segs = chat.segments(&conv).unwrap();
        let joined: String = segs.iter().map(|(s, _)| s.as_str()).collect();
        assert_eq!(joined, chat.render(&conv, false).unwrap());
        assert!(joined.starts_with("<|im_start|>system\nYou are helpful."));
        assert_eq!(trained(&segs), ["Hello!<|im_end|>"]);
        assert_eq!(segs.len(), 3);
        check_alternating(&segs);
    }

    #[test]
    fn no_assistant_turn_is_one_untrained_piece() {
        let chat = ChatFormat::new(CHATML, "", "<|im_end|>", None).unwrap();
        let conv = msgs(&[("user", "Hi")]);
        let segs = chat.segments(&conv).unwrap();
        assert_eq!(segs, [(chat.render(&conv, false).unwrap(), false)]);
    }

    #[test]
    fn an_answer_containing_marker_like_text_is_cut_after_its_own_marker() {
        let chat = ChatFormat::new(CHATML, "", "<|im_end|>", None).unwrap();
        let conv = msgs(&[("user", "Quote it"), ("assistant", "It reads <|end|> here")]);
        let segs = chat.segments(&conv).unwrap();
        assert_eq!(trained(&segs), ["It reads <|end|> here<|im_end|>"]);
    }

    #[test]
    fn gemma_layout_uses_its_end_of_turn_marker() {
        let chat = ChatFormat::new(GEMMA, "<bos>", "<eos>", Some("<end_of_turn>")).unwrap();
        let conv = msgs(&[
            ("user", "Name a colour."),
            ("assistant", "Blue."),
            ("user", "Another?"),
            ("assistant", "Green."),
        ]);
        let segs = chat.segments(&conv).unwrap();
        let joined: String = segs.iter().map(|(s, _)| s.as_str()).collect();
        assert_eq!(joined, chat.render(&conv, false).unwrap());
        assert!(joined.starts_with("<bos><start_of_turn>user\n"));
        assert_eq!(
            trained(&segs),
            ["Blue.<end_of_turn>", "Green.<end_of_turn>"]
        );
        check_alternating(&segs);
        assert_eq!(chat.end_markers()[0], "<end_of_turn>");
    }

    #[test]
    fn a_template_without_the_prefix_property_is_refused_naming_the_turn() {
        let odd = "{% for m in messages %}<{{ m.role }}>{{ m.content }}</s>{% endfor %}\
                   {% if add_generation_prompt %}<gen>{% endif %}";
        let chat = ChatFormat::new(odd, "", "</s>", None).unwrap();
        let err = chat
            .segments(&msgs(&[("user", "q"), ("assistant", "a")]))
            .unwrap_err();
        assert!(err.starts_with("message 2 (assistant):"), "{err}");
        assert!(err.contains("does not start with"), "{err}");
    }

    #[test]
    fn a_template_rewriting_earlier_turns_is_refused() {
        let rewriting = "{% for m in messages %}{% if m.role == 'assistant' and not loop.last %}\
                         <assistant>(earlier)</s>{% else %}<{{ m.role }}>{{ m.content }}</s>\
                         {% endif %}{% endfor %}{% if add_generation_prompt %}<assistant>{% endif %}";
        let chat = ChatFormat::new(rewriting, "", "</s>", None).unwrap();
        let conv = msgs(&[("user", "q"), ("assistant", "a"), ("user", "r")]);
        let err = chat.segments(&conv).unwrap_err();
        assert!(
            err.contains("differently once later messages follow"),
            "{err}"
        );
        // With the answer last, it is fine.
        let segs = chat.segments(&conv[..2]).unwrap();
        assert_eq!(trained(&segs), ["a</s>"]);
    }

    #[test]
    fn a_template_without_markers_trains_the_continuation_without_trailing_space() {
        let plain = "{% for m in messages %}{{ m.role }}: {{ m.content }}\n\n{% endfor %}\
                     {% if add_generation_prompt %}assistant: {% endif %}";
        let chat = ChatFormat::new(plain, "", "", None).unwrap();
        let segs = chat
            .segments(&msgs(&[("user", "q"), ("assistant", "a b")]))
            .unwrap();
        assert_eq!(trained(&segs), ["a b"]);
        assert_eq!(segs.last().unwrap().0, "\n\n");
    }

    fn sample(n: usize, masked: impl Fn(usize) -> bool) -> Sample {
        Sample {
            tokens: (0..n as u32).collect(),
            mask: (0..n).map(|i| i > 0 && masked(i)).collect(),
        }
    }

    #[test]
    fn windows_overlap_by_one_and_keep_every_label_once() {
        let s = sample(10, |i| i % 3 != 0);
        let w = windows(&s, 4);
        let starts: Vec<u32> = w.iter().map(|w| w.tokens[0]).collect();
        assert_eq!(starts, [0, 3, 6]);
        assert!(w.iter().all(|w| w.tokens.len() <= 4 && !w.mask[0]));
        assert_eq!(w.last().unwrap().tokens, [6, 7, 8, 9]);
        // A tail that leaves one label: a window of two tokens.
        let tail = windows(&sample(8, |_| true), 4);
        assert_eq!(tail.last().unwrap().tokens, [6, 7]);
        // Every label position appears masked exactly once.
        let mut seen = vec![0; 10];
        for win in &w {
            for (t, m) in win.tokens.iter().zip(&win.mask) {
                if *m {
                    seen[*t as usize] += 1;
                }
            }
        }
        let expect: Vec<i32> = (0..10).map(|i| i32::from(s.mask[i])).collect();
        assert_eq!(seen, expect);
        assert_eq!(w.iter().map(Sample::n_masked).sum::<usize>(), s.n_masked());
    }

    #[test]
    fn a_sample_that_fits_is_one_window() {
        let s = sample(5, |_| true);
        assert_eq!(windows(&s, 5), std::slice::from_ref(&s));
        assert_eq!(windows(&s, 8), [s]);
    }
}
