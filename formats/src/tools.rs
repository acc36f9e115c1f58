//! Tool calls and reasoning in a model's output: which call format a chat template teaches, a
//! streaming parser that splits the generated text into content, reasoning and calls, and the
//! llguidance grammars that constrain the calls while they are sampled.
//!
//! # Formats
//! Chosen from the template's own text ([`detect`]):
//! - [`ToolFormat::Hermes`] (Qwen2.5, Qwen3, Hermes 2 Pro): each call is
//!   `<tool_call>\n{"name": …, "arguments": {…}}\n</tool_call>`, parallel calls one block each.
//! - [`ToolFormat::Llama3Json`] (Llama 3.1 – 3.3): `{"name": …, "parameters": {…}}`, optionally
//!   after `<|python_tag|>`; parallel calls separated by `;`.
//! - [`ToolFormat::Mistral`]: `[TOOL_CALLS][{"name": …, "arguments": {…}}, …]`.
//!
//! The parser accepts either key (`arguments` or `parameters`) in every format, and the
//! arguments as a JSON object or as a string holding one (OpenAI's own encoding).
//!
//! # What counts as a call
//! A call is returned only when it names an offered tool and its arguments validate against
//! that tool's `parameters` schema (the `jsonschema` crate, no remote or file `$ref`s). Anything
//! else — bad JSON, an unknown name, arguments the schema refuses, a call cut off by the token
//! limit — is returned as content, byte for byte as the model wrote it. So a call is known to
//! be good only once it is complete: [`Delta::CallStart`] and the call's arguments (one
//! [`Delta::CallArguments`] fragment, the compact JSON serialization of the arguments) are sent
//! together when the call closes. Under constrained decoding (see [`call_grammar`]) calls are
//! short and always complete, so this costs little latency and never announces a call that then
//! has to be taken back.
//!
//! # Streaming
//! [`OutputParser::feed`] takes text in arbitrary pieces (split anywhere, inside markers too)
//! and returns what can already be decided; text that could still start a marker is held back,
//! as is whitespace just before a possible call (dropped when a call follows, sent otherwise).
//! The deltas of a stream, folded, equal [`parse_all`] of the whole text, however it was split.
//!
//! # Grammars
//! [`call_grammar`] writes a Lark grammar (llguidance's syntax, `%json` for the schemas) whose
//! language is exactly the calls allowed by the request's `tool_choice` and
//! `parallel_tool_calls`. Under `auto` it is lazy: it starts after the format's trigger text
//! ([`CallGrammar::trigger`]), which the daemon watches for in the content (not in reasoning).
//!
//! # Bounds
//! Everything the generated text controls is bounded: at most [`MAX_CALLS`] calls per answer,
//! [`MAX_CALL_BYTES`] of text per call (or bare candidate), JSON nesting of 128, held
//! whitespace of [`MAX_HELD_WHITESPACE`] bytes; schemas nested deeper than [`MAX_SCHEMA_DEPTH`]
//! are not compiled.

use std::collections::HashMap;
use std::fmt::Write as _;

use serde_json::{json, Map, Value};

use crate::request::{Tool, ToolCall, ToolChoice, Tools};

/// At most this many calls in one answer (the grammars allow no more, the parser returns any
/// further ones as content).
pub const MAX_CALLS: usize = 64;
/// At most this much text in one call (or in an answer held as a possible bare call); a longer
/// one is returned as content.
pub const MAX_CALL_BYTES: usize = 1 << 20;
/// A whitespace run longer than this is sent as text instead of being held back.
pub const MAX_HELD_WHITESPACE: usize = 4096;
/// Schemas nested deeper than this (objects and arrays) are not compiled into validators.
pub const MAX_SCHEMA_DEPTH: usize = 64;
/// Brackets nested deeper than this end a call as malformed (serde_json's own limit).
const MAX_JSON_DEPTH: usize = 128;
/// Whitespace the grammars allow at one place (inside the JSON, between calls, around tags).
const GRAMMAR_WS: &str = r"[\x20\x0A\x0D\x09]";

/// How a model writes its tool calls, as its chat template teaches it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ToolFormat {
    /// Qwen2.5 / Hermes: `<tool_call>\n{"name":…,"arguments":{…}}\n</tool_call>`.
    Hermes,
    /// Llama 3.x: `{"name":…,"parameters":{…}}`, optionally after `<|python_tag|>`.
    Llama3Json,
    /// Mistral: `[TOOL_CALLS][{"name":…,"arguments":{…}}]`.
    Mistral,
}

const HERMES_OPEN: &str = "<tool_call>";
const HERMES_CLOSE: &str = "</tool_call>";
const MISTRAL_MARKER: &str = "[TOOL_CALLS]";
const PYTHON_TAG: &str = "<|python_tag|>";
const LLAMA3_TRIGGER: &str = "{\"name\"";
const FENCE: &str = "```";

impl ToolFormat {
    /// The key the template shows the arguments under.
    pub fn arguments_key(self) -> &'static str {
        match self {
            ToolFormat::Llama3Json => "parameters",
            ToolFormat::Hermes | ToolFormat::Mistral => "arguments",
        }
    }

    /// The text after which, under `tool_choice: auto`, the call grammar takes over.
    ///
    /// Llama 3 uses `{"name"` rather than `<|python_tag|>`: the 3.2 and 3.3 templates teach a
    /// bare JSON object and the models rarely write the tag, which is moreover a control token
    /// that does not appear in detokenized text. The parser treats `{"name"` as the start of a
    /// call anywhere in the content, so a call the trigger constrained is always recognised.
    pub fn trigger(self) -> &'static str {
        match self {
            ToolFormat::Hermes => HERMES_OPEN,
            ToolFormat::Mistral => MISTRAL_MARKER,
            ToolFormat::Llama3Json => LLAMA3_TRIGGER,
        }
    }
}

/// The call format a chat template teaches, from the markers its source contains; `None` when
/// it shows none (the template cannot render tools).
pub fn detect(template_source: &str) -> Option<ToolFormat> {
    if template_source.contains(HERMES_OPEN) {
        Some(ToolFormat::Hermes)
    } else if template_source.contains(MISTRAL_MARKER) {
        Some(ToolFormat::Mistral)
    } else if template_source.contains(PYTHON_TAG)
        || (template_source.contains("<|start_header_id|>")
            && template_source.contains("\"parameters\""))
    {
        Some(ToolFormat::Llama3Json)
    } else {
        None
    }
}

/// The tags around a reasoning ("thinking") block.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ReasoningTags {
    /// The opening tag, e.g. `<think>`.
    pub open: String,
    /// The closing tag, e.g. `</think>`.
    pub close: String,
}

/// The reasoning tag pairs recognised, most specific first.
const REASONING_PAIRS: &[(&str, &str)] = &[
    ("<seed:think>", "</seed:think>"),
    ("<|START_THINKING|>", "<|END_THINKING|>"),
    ("[THINK]", "[/THINK]"),
    ("<thinking>", "</thinking>"),
    ("<think>", "</think>"),
];

/// The reasoning tags a chat template uses (Qwen3, DeepSeek-R1, QwQ: `<think>…</think>`; also
/// `<thinking>`, Magistral's `[THINK]`, Command's `<|START_THINKING|>`, Seed's
/// `<seed:think>`), found by the closing tag in its source; `None` when it shows none.
pub fn detect_reasoning(template_source: &str) -> Option<ReasoningTags> {
    REASONING_PAIRS
        .iter()
        .find(|(_, close)| template_source.contains(close))
        .map(|(open, close)| ReasoningTags {
            open: (*open).to_string(),
            close: (*close).to_string(),
        })
}

/// Whether a rendered prompt ends inside an open reasoning block (DeepSeek-R1's generation
/// prompt ends with `<think>\n`), so the answer starts as reasoning: its last opening tag is
/// followed by whitespace only.
pub fn starts_in_reasoning(rendered_prompt: &str, tags: &ReasoningTags) -> bool {
    if tags.open.is_empty() {
        return false;
    }
    match rendered_prompt.rfind(&tags.open) {
        Some(at) => rendered_prompt[at + tags.open.len()..].trim().is_empty(),
        None => false,
    }
}

/// What a parser is told about the request and the template.
#[derive(Debug, Clone, Default)]
pub struct ParserConfig {
    /// The template's call format; `None`: no calls are looked for (only bare ones, if asked).
    pub format: Option<ToolFormat>,
    /// The tools offered: only calls of these are returned.
    pub tools: Vec<Tool>,
    /// Call ids are `{id_prefix}{index}`, unique within the answer.
    pub id_prefix: String,
    /// The template's reasoning tags, if it has any.
    pub reasoning: Option<ReasoningTags>,
    /// The prompt ends inside an open reasoning block ([`starts_in_reasoning`]).
    pub starts_in_reasoning: bool,
    /// Also recognise an answer whose whole content is a bare call object (or a list of them,
    /// or either in a ```` ```json ```` fence), as small models often write under
    /// `tool_choice` `auto` or `required`.
    pub recognise_bare: bool,
}

/// One piece of a parsed stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Delta {
    /// Answer text.
    Content(String),
    /// Reasoning text (inside the reasoning tags, which are not included).
    Reasoning(String),
    /// A call begins: its index in the answer, id and function name.
    CallStart {
        /// 0 for the answer's first call, then 1, 2, …
        index: usize,
        /// `{id_prefix}{index}`.
        id: String,
        /// An offered tool's name.
        name: String,
    },
    /// A piece of a call's arguments; a call's pieces concatenated are the compact JSON
    /// serialization of its arguments object.
    CallArguments {
        /// The call's index.
        index: usize,
        /// The piece.
        fragment: String,
    },
}

/// A whole answer, parsed.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Parsed {
    /// The answer text, without reasoning and calls.
    pub content: String,
    /// The reasoning text, if there was any.
    pub reasoning: Option<String>,
    /// The calls, in order.
    pub calls: Vec<ToolCall>,
}

/// A schema that cannot be used to check arguments.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SchemaError {
    /// Nested too deep to compile safely.
    #[error("the schema nests deeper than {max} levels")]
    TooDeep {
        /// The bound, [`MAX_SCHEMA_DEPTH`].
        max: usize,
    },
    /// Not a JSON schema the validator accepts.
    #[error("the schema is not usable: {0}")]
    Invalid(String),
}

/// Checks that a tool's `parameters` schema can be compiled into the validator the parser uses
/// (for request validation: a tool whose schema fails here could never have a call returned).
pub fn check_parameters(schema: &Value) -> Result<(), SchemaError> {
    compile_validator(schema).map(|_| ())
}

/// Refuses every external `$ref`: a schema is only ever what the request holds.
struct NoRetrieval;

impl jsonschema::Retrieve for NoRetrieval {
    fn retrieve(
        &self,
        uri: &jsonschema::Uri<String>,
    ) -> Result<Value, Box<dyn std::error::Error + Send + Sync>> {
        Err(format!("external schema {} is not fetched", uri.as_str()).into())
    }
}

fn compile_validator(schema: &Value) -> Result<jsonschema::Validator, SchemaError> {
    if json_depth(schema) > MAX_SCHEMA_DEPTH {
        return Err(SchemaError::TooDeep {
            max: MAX_SCHEMA_DEPTH,
        });
    }
    jsonschema::options()
        .with_retriever(NoRetrieval)
        .build(schema)
        .map_err(|e| SchemaError::Invalid(e.to_string()))
}

/// The nesting depth of a JSON value (a scalar is 0), computed without recursion.
fn json_depth(v: &Value) -> usize {
    let mut max = 0;
    let mut stack = vec![(v, 0usize)];
    while let Some((v, d)) = stack.pop() {
        match v {
            Value::Array(a) => {
                max = max.max(d + 1);
                stack.extend(a.iter().map(|x| (x, d + 1)));
            }
            Value::Object(o) => {
                max = max.max(d + 1);
                stack.extend(o.values().map(|x| (x, d + 1)));
            }
            _ => {}
        }
    }
    max
}

// ---------------------------------------------------------------------------------------------
// The streaming parser.

/// Finds where a JSON value (object or array) written as text ends, one character at a time;
/// serde_json checks the text once its extent is known.
#[derive(Debug, Default)]
struct JsonScan {
    depth: usize,
    in_string: bool,
    escaped: bool,
}

#[derive(Debug, PartialEq, Eq)]
enum Scan {
    More,
    Done,
    Bad,
}

impl JsonScan {
    /// The first character must be `{` or `[` (the caller checks).
    fn push(&mut self, c: char) -> Scan {
        if self.in_string {
            if self.escaped {
                self.escaped = false;
            } else if c == '\\' {
                self.escaped = true;
            } else if c == '"' {
                self.in_string = false;
            }
            return Scan::More;
        }
        match c {
            '"' => self.in_string = true,
            '{' | '[' => {
                self.depth += 1;
                if self.depth > MAX_JSON_DEPTH {
                    return Scan::Bad;
                }
            }
            '}' | ']' => {
                if self.depth == 0 {
                    return Scan::Bad;
                }
                self.depth -= 1;
                if self.depth == 0 {
                    return Scan::Done;
                }
            }
            _ => {}
        }
        Scan::More
    }
}

/// Where a marked call stands.
#[derive(Debug)]
enum CallPhase {
    /// Whitespace before the JSON.
    Before,
    /// Inside the JSON.
    Json(JsonScan),
    /// The JSON held good calls; waiting for the closing tag (Hermes).
    Close {
        calls: Vec<(usize, Value)>,
        whitespace: usize,
    },
}

/// A call that began with a marker (or, in Llama 3's format, with `{`).
#[derive(Debug)]
struct CallState {
    /// All text taken since the call began (marker and whitespace before it included): the
    /// content if the call turns out malformed.
    raw: String,
    /// Where the JSON starts in `raw`.
    json_at: usize,
    /// The closing tag the format writes after the JSON, if any.
    close: Option<&'static str>,
    phase: CallPhase,
}

/// Where an answer held as a possible bare call stands.
#[derive(Debug)]
enum BarePhase {
    /// Backticks of the opening fence seen so far.
    Ticks(usize),
    /// The fence's info string ("json" or nothing).
    Lang(String),
    /// Whitespace before the JSON.
    Before { fenced: bool },
    /// Inside the JSON.
    Json { scan: JsonScan, fenced: bool },
    /// Backticks of the closing fence seen so far.
    CloseTicks(usize),
    /// After the JSON (and fence): only whitespace may follow.
    Tail,
}

#[derive(Debug)]
struct BareState {
    raw: String,
    json: (usize, usize),
    phase: BarePhase,
}

#[derive(Debug)]
enum Mode {
    /// Nothing decided yet: leading whitespace, maybe a reasoning block, maybe a bare call.
    Start { drop_whitespace: bool, seen: usize },
    /// Inside the reasoning block; `begun` once its leading whitespace is past.
    Reasoning { begun: bool },
    /// Answer text, watched for call markers.
    Content,
    /// Inside a marked call.
    Call(CallState),
    /// Holding the answer as a possible bare call.
    Bare(BareState),
    /// After calls: whitespace (and Llama 3's `;`) is dropped.
    AfterCall,
}

/// Which marker began a call.
#[derive(Debug, Clone, Copy)]
enum Marker {
    Hermes,
    Mistral,
    PythonTag,
    Llama3Brace,
}

impl Marker {
    fn text(self) -> &'static str {
        match self {
            Marker::Hermes => HERMES_OPEN,
            Marker::Mistral => MISTRAL_MARKER,
            Marker::PythonTag => PYTHON_TAG,
            Marker::Llama3Brace => LLAMA3_TRIGGER,
        }
    }

    /// Whether the marker is syntax before the JSON (not the JSON's own start).
    fn consumed(self) -> bool {
        !matches!(self, Marker::Llama3Brace)
    }

    fn close(self) -> Option<&'static str> {
        match self {
            Marker::Hermes => Some(HERMES_CLOSE),
            _ => None,
        }
    }
}

/// Splits generated text, fed in pieces, into content, reasoning and tool calls.
pub struct OutputParser {
    cfg: ParserConfig,
    names: HashMap<String, usize>,
    /// Each tool's validator, compiled on first use (`Some(None)`: its schema did not compile).
    validators: Vec<Option<Option<jsonschema::Validator>>>,
    /// Text received and not yet decided.
    pending: String,
    mode: Mode,
    calls: usize,
    reasoning_done: bool,
    /// The length of the whitespace run at the end of the text already sent in this mode.
    sent_whitespace: usize,
    out: Vec<Delta>,
}

impl std::fmt::Debug for OutputParser {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OutputParser")
            .field("format", &self.cfg.format)
            .field("mode", &self.mode)
            .field("calls", &self.calls)
            .finish_non_exhaustive()
    }
}

impl OutputParser {
    /// A parser for one answer.
    pub fn new(cfg: ParserConfig) -> Self {
        let mut names = HashMap::new();
        for (i, t) in cfg.tools.iter().enumerate() {
            names.entry(t.name.clone()).or_insert(i);
        }
        let mode = if cfg.reasoning.is_some() && cfg.starts_in_reasoning {
            Mode::Reasoning { begun: false }
        } else {
            Mode::Start {
                drop_whitespace: false,
                seen: 0,
            }
        };
        OutputParser {
            validators: (0..cfg.tools.len()).map(|_| None).collect(),
            names,
            cfg,
            pending: String::new(),
            mode,
            calls: 0,
            reasoning_done: false,
            sent_whitespace: 0,
            out: Vec::new(),
        }
    }

    /// Takes the next piece of generated text; returns what is decided so far.
    pub fn feed(&mut self, text: &str) -> Vec<Delta> {
        self.pending.push_str(text);
        self.run(false);
        std::mem::take(&mut self.out)
    }

    /// The text has ended: decides everything still held back.
    pub fn finish(&mut self) -> Vec<Delta> {
        self.run(true);
        std::mem::take(&mut self.out)
    }

    /// Whether the text so far ends inside the reasoning block (the daemon watches for a call
    /// grammar's trigger only outside it).
    pub fn in_reasoning(&self) -> bool {
        matches!(self.mode, Mode::Reasoning { .. })
    }

    /// The calls returned so far.
    pub fn calls(&self) -> usize {
        self.calls
    }

    fn run(&mut self, at_end: bool) {
        loop {
            let progressed = match self.mode {
                Mode::Start { .. } => self.step_start(at_end),
                Mode::Reasoning { .. } => self.step_reasoning(at_end),
                Mode::Content => self.step_content(at_end),
                Mode::Call(_) => self.step_call(at_end),
                Mode::Bare(_) => self.step_bare(at_end),
                Mode::AfterCall => self.step_after_call(at_end),
            };
            if !progressed {
                break;
            }
        }
    }

    // -- output ---------------------------------------------------------------------------

    fn emit_text(&mut self, reasoning: bool, text: &str) {
        if text.is_empty() {
            return;
        }
        let kept = text.trim_end().len();
        if kept == 0 {
            self.sent_whitespace += text.len();
        } else {
            self.sent_whitespace = text.len() - kept;
        }
        match self.out.last_mut() {
            Some(Delta::Content(s)) if !reasoning => s.push_str(text),
            Some(Delta::Reasoning(s)) if reasoning => s.push_str(text),
            _ => self.out.push(if reasoning {
                Delta::Reasoning(text.to_string())
            } else {
                Delta::Content(text.to_string())
            }),
        }
    }

    fn enter(&mut self, mode: Mode) {
        self.sent_whitespace = 0;
        self.mode = mode;
    }

    /// How much of `text` (which ends where a marker may follow) to send now: all but its
    /// trailing whitespace, unless that run (with what was sent before it) is too long to hold.
    fn whitespace_cut(&self, text: &str) -> usize {
        let kept = text.trim_end().len();
        let run = if kept == 0 {
            self.sent_whitespace + text.len()
        } else {
            text.len() - kept
        };
        if run <= MAX_HELD_WHITESPACE {
            kept
        } else {
            text.len()
        }
    }

    fn emit_calls(&mut self, calls: Vec<(usize, Value)>) {
        for (tool, args) in calls {
            let index = self.calls;
            self.calls += 1;
            self.out.push(Delta::CallStart {
                index,
                id: format!("{}{}", self.cfg.id_prefix, index),
                name: self.cfg.tools[tool].name.clone(),
            });
            self.out.push(Delta::CallArguments {
                index,
                fragment: args.to_string(),
            });
        }
    }

    // -- checking calls -------------------------------------------------------------------

    /// The calls a JSON text holds (an object, or a non-empty list of them), if every one names
    /// an offered tool and its arguments validate.
    fn check_calls(&mut self, text: &str) -> Option<Vec<(usize, Value)>> {
        let v: Value = serde_json::from_str(text).ok()?;
        let items = match v {
            Value::Array(a) => a,
            obj @ Value::Object(_) => vec![obj],
            _ => return None,
        };
        if items.is_empty() || self.calls + items.len() > MAX_CALLS {
            return None;
        }
        items.into_iter().map(|c| self.check_call(c)).collect()
    }

    fn check_call(&mut self, call: Value) -> Option<(usize, Value)> {
        let Value::Object(mut call) = call else {
            return None;
        };
        let tool = *self.names.get(call.get("name")?.as_str()?)?;
        let args = match call
            .remove("arguments")
            .or_else(|| call.remove("parameters"))
        {
            None => Value::Object(Map::new()),
            Some(Value::String(s)) => serde_json::from_str(&s).ok()?,
            Some(v) => v,
        };
        if !args.is_object() {
            return None;
        }
        let slot = &mut self.validators[tool];
        let validator =
            slot.get_or_insert_with(|| compile_validator(&self.cfg.tools[tool].parameters).ok());
        match validator {
            Some(v) if v.is_valid(&args) => Some((tool, args)),
            _ => None,
        }
    }

    // -- modes ----------------------------------------------------------------------------

    /// The markers that start a call in content.
    fn markers(&self) -> &'static [Marker] {
        if self.calls >= MAX_CALLS {
            return &[];
        }
        match self.cfg.format {
            None => &[],
            Some(ToolFormat::Hermes) => &[Marker::Hermes],
            Some(ToolFormat::Mistral) => &[Marker::Mistral],
            Some(ToolFormat::Llama3Json) => &[Marker::PythonTag, Marker::Llama3Brace],
        }
    }

    fn step_start(&mut self, at_end: bool) -> bool {
        let Mode::Start {
            drop_whitespace,
            seen,
        } = self.mode
        else {
            return false;
        };
        let rest_at = self.pending.len() - self.pending.trim_start().len();
        let lead = seen + rest_at;
        if lead > MAX_HELD_WHITESPACE {
            self.enter(Mode::Content);
            return true;
        }
        if drop_whitespace && rest_at > 0 {
            self.pending.drain(..rest_at);
            self.mode = Mode::Start {
                drop_whitespace,
                seen: lead,
            };
            return true;
        }
        let rest = &self.pending[rest_at..];
        if rest.is_empty() {
            if at_end {
                let text = std::mem::take(&mut self.pending);
                self.emit_text(false, &text);
            }
            return false;
        }
        // A proper prefix of something that would decide: wait for more text.
        let mut wait = false;
        if let Some(tags) = self.cfg.reasoning.as_ref().filter(|_| !self.reasoning_done) {
            if !tags.open.is_empty() && rest.starts_with(&tags.open) {
                let n = rest_at + tags.open.len();
                self.pending.drain(..n);
                self.reasoning_done = true;
                self.enter(Mode::Reasoning { begun: false });
                return true;
            }
            wait |= tags.open.starts_with(rest);
        }
        let markers = self.markers();
        if markers.iter().any(|m| rest.starts_with(m.text())) {
            self.enter(Mode::Content);
            return true;
        }
        wait |= markers.iter().any(|m| m.text().starts_with(rest));
        if self.cfg.recognise_bare {
            wait |= FENCE.starts_with(rest);
        }
        if wait && !at_end {
            return false;
        }
        let first = rest.chars().next();
        if first == Some('{') && self.cfg.format == Some(ToolFormat::Llama3Json) {
            let raw: String = self.pending.drain(..rest_at).collect();
            self.enter(Mode::Call(CallState {
                json_at: raw.len(),
                raw,
                close: None,
                phase: CallPhase::Before,
            }));
            return true;
        }
        if self.cfg.recognise_bare {
            let phase = if matches!(first, Some('{' | '[')) {
                Some(BarePhase::Before { fenced: false })
            } else if rest.starts_with(FENCE) {
                Some(BarePhase::Ticks(0))
            } else {
                None
            };
            if let Some(phase) = phase {
                let raw: String = self.pending.drain(..rest_at).collect();
                self.enter(Mode::Bare(BareState {
                    raw,
                    json: (0, 0),
                    phase,
                }));
                return true;
            }
        }
        self.enter(Mode::Content);
        true
    }

    fn step_reasoning(&mut self, at_end: bool) -> bool {
        let Mode::Reasoning { begun } = self.mode else {
            return false;
        };
        let Some(close) = self.cfg.reasoning.as_ref().map(|t| t.close.clone()) else {
            self.enter(Mode::Content);
            return true;
        };
        if !begun {
            let n = self.pending.len() - self.pending.trim_start().len();
            self.pending.drain(..n);
            if self.pending.is_empty() {
                return false;
            }
            self.mode = Mode::Reasoning { begun: true };
        }
        if let Some(at) = (!close.is_empty())
            .then(|| self.pending.find(&close))
            .flatten()
        {
            let cut = self.whitespace_cut(&self.pending[..at]);
            let text = self.pending[..cut].to_string();
            self.emit_text(true, &text);
            self.pending.drain(..at + close.len());
            self.reasoning_done = true;
            self.enter(Mode::Start {
                drop_whitespace: true,
                seen: 0,
            });
            return true;
        }
        let cut = if at_end {
            self.whitespace_cut(&self.pending)
        } else {
            let hold = prefix_hold(&self.pending, &[close.as_str()]);
            self.whitespace_cut(&self.pending[..hold])
        };
        let text: String = self.pending.drain(..cut).collect();
        self.emit_text(true, &text);
        if at_end {
            self.pending.clear();
        }
        false
    }

    fn step_content(&mut self, at_end: bool) -> bool {
        let markers = self.markers();
        let texts: Vec<&str> = markers.iter().map(|m| m.text()).collect();
        if let Some((at, i)) = find_marker(&self.pending, &texts) {
            let marker = markers[i];
            let cut = self.whitespace_cut(&self.pending[..at]);
            let text = self.pending[..cut].to_string();
            self.emit_text(false, &text);
            let taken = if marker.consumed() {
                at + marker.text().len()
            } else {
                at
            };
            let raw = self.pending[cut..taken].to_string();
            self.pending.drain(..taken);
            self.enter(Mode::Call(CallState {
                json_at: raw.len(),
                raw,
                close: marker.close(),
                phase: CallPhase::Before,
            }));
            return true;
        }
        let cut = if at_end {
            self.pending.len()
        } else {
            let hold = prefix_hold(&self.pending, &texts);
            self.whitespace_cut(&self.pending[..hold])
        };
        let text: String = self.pending.drain(..cut).collect();
        self.emit_text(false, &text);
        false
    }

    /// The call in progress turned out malformed: its text is content, and parsing goes on
    /// after it.
    fn call_malformed(&mut self, raw: String) {
        self.enter(Mode::Content);
        self.emit_text(false, &raw);
    }

    fn step_call(&mut self, at_end: bool) -> bool {
        let Mode::Call(mut st) = std::mem::replace(&mut self.mode, Mode::Content) else {
            return false;
        };
        // Closing tag wanted after good calls.
        if let CallPhase::Close { calls, whitespace } = &mut st.phase {
            let close = st.close.unwrap_or_default();
            let n = self.pending.len() - self.pending.trim_start().len();
            *whitespace += n;
            self.pending.drain(..n);
            // Past the whitespace bound the tag is no longer looked for (whatever the split).
            let closed = *whitespace <= MAX_HELD_WHITESPACE && self.pending.starts_with(close);
            if closed {
                self.pending.drain(..close.len());
            }
            let partial = close.starts_with(self.pending.as_str());
            if !closed && partial && !at_end && *whitespace <= MAX_HELD_WHITESPACE {
                self.mode = Mode::Call(st);
                return false;
            }
            // Closed, or anything but the tag follows, or the tag is cut off by the end: the
            // calls stand (a cut-off tag is call syntax and is dropped).
            if !closed && partial && at_end {
                self.pending.clear();
            }
            let calls = std::mem::take(calls);
            self.emit_calls(calls);
            self.enter(Mode::AfterCall);
            return true;
        }
        // Take text until the JSON ends.
        let mut taken = 0;
        let mut outcome = Scan::More;
        for c in self.pending.chars() {
            match &mut st.phase {
                CallPhase::Before => {
                    if c.is_whitespace() {
                    } else if c == '{' || c == '[' {
                        st.json_at = st.raw.len() + taken;
                        let mut scan = JsonScan::default();
                        scan.push(c);
                        st.phase = CallPhase::Json(scan);
                    } else {
                        outcome = Scan::Bad;
                        break;
                    }
                }
                CallPhase::Json(scan) => outcome = scan.push(c),
                CallPhase::Close { .. } => {}
            }
            taken += c.len_utf8();
            if outcome != Scan::More || st.raw.len() + taken > MAX_CALL_BYTES {
                break;
            }
        }
        st.raw.extend(self.pending.drain(..taken));
        match outcome {
            Scan::Done => match self.check_calls(&st.raw[st.json_at..]) {
                Some(calls) => {
                    if st.close.is_some() {
                        st.phase = CallPhase::Close {
                            calls,
                            whitespace: 0,
                        };
                        self.mode = Mode::Call(st);
                    } else {
                        self.emit_calls(calls);
                        self.enter(Mode::AfterCall);
                    }
                    true
                }
                None => {
                    self.call_malformed(st.raw);
                    true
                }
            },
            Scan::Bad => {
                self.call_malformed(st.raw);
                true
            }
            Scan::More if at_end || st.raw.len() > MAX_CALL_BYTES => {
                self.call_malformed(st.raw);
                true
            }
            Scan::More => {
                self.mode = Mode::Call(st);
                false
            }
        }
    }

    fn step_bare(&mut self, at_end: bool) -> bool {
        let Mode::Bare(mut st) = std::mem::replace(&mut self.mode, Mode::Content) else {
            return false;
        };
        let mut taken = 0;
        let mut abort = false;
        for c in self.pending.chars() {
            let at = st.raw.len() + taken;
            let ok = match &mut st.phase {
                BarePhase::Ticks(n) => {
                    if c == '`' {
                        *n += 1;
                        if *n == FENCE.len() {
                            st.phase = BarePhase::Lang(String::new());
                        }
                        true
                    } else {
                        false
                    }
                }
                BarePhase::Lang(lang) => {
                    if c == '\n' {
                        let l = lang.trim();
                        if l.is_empty() || l.eq_ignore_ascii_case("json") {
                            st.phase = BarePhase::Before { fenced: true };
                            true
                        } else {
                            false
                        }
                    } else {
                        lang.push(c);
                        lang.len() <= 16
                    }
                }
                BarePhase::Before { fenced } => {
                    if c.is_whitespace() {
                        true
                    } else if c == '{' || c == '[' {
                        let mut scan = JsonScan::default();
                        scan.push(c);
                        st.json.0 = at;
                        st.phase = BarePhase::Json {
                            scan,
                            fenced: *fenced,
                        };
                        true
                    } else {
                        false
                    }
                }
                BarePhase::Json { scan, fenced } => match scan.push(c) {
                    Scan::More => true,
                    Scan::Bad => false,
                    Scan::Done => {
                        st.json.1 = at + c.len_utf8();
                        st.phase = if *fenced {
                            BarePhase::CloseTicks(0)
                        } else {
                            BarePhase::Tail
                        };
                        true
                    }
                },
                BarePhase::CloseTicks(n) => {
                    if c == '`' {
                        *n += 1;
                        if *n == FENCE.len() {
                            st.phase = BarePhase::Tail;
                        }
                        true
                    } else {
                        *n == 0 && c.is_whitespace()
                    }
                }
                BarePhase::Tail => c.is_whitespace(),
            };
            if !ok {
                abort = true;
                break;
            }
            taken += c.len_utf8();
            if st.raw.len() + taken > MAX_CALL_BYTES {
                abort = true;
                break;
            }
        }
        st.raw.extend(self.pending.drain(..taken));
        if abort {
            self.call_malformed(st.raw);
            return true;
        }
        if !at_end {
            self.mode = Mode::Bare(st);
            return false;
        }
        let calls = match st.phase {
            BarePhase::Tail => self.check_calls(&st.raw[st.json.0..st.json.1]),
            _ => None,
        };
        match calls {
            Some(calls) => {
                self.emit_calls(calls);
                self.enter(Mode::AfterCall);
            }
            None => self.call_malformed(st.raw),
        }
        true
    }

    fn step_after_call(&mut self, _at_end: bool) -> bool {
        let llama3 = self.cfg.format == Some(ToolFormat::Llama3Json);
        let rest = self
            .pending
            .trim_start_matches(|c: char| c.is_whitespace() || (llama3 && c == ';'));
        let n = self.pending.len() - rest.len();
        self.pending.drain(..n);
        if self.pending.is_empty() {
            return false;
        }
        if llama3 && self.pending.starts_with('{') && self.calls < MAX_CALLS {
            self.enter(Mode::Call(CallState {
                raw: String::new(),
                json_at: 0,
                close: None,
                phase: CallPhase::Before,
            }));
        } else {
            self.enter(Mode::Content);
        }
        true
    }
}

/// The earliest marker in `s`: its position and index.
fn find_marker(s: &str, markers: &[&str]) -> Option<(usize, usize)> {
    markers
        .iter()
        .enumerate()
        .filter_map(|(i, m)| s.find(m).map(|at| (at, i)))
        .min()
}

/// Where the longest end of `s` that could still grow into a marker begins (`s.len()` if none).
fn prefix_hold(s: &str, markers: &[&str]) -> usize {
    let longest = markers.iter().map(|m| m.len()).max().unwrap_or(0);
    if longest == 0 {
        return s.len();
    }
    let mut from = s.len().saturating_sub(longest - 1);
    while !s.is_char_boundary(from) {
        from += 1;
    }
    for (i, _) in s[from..].char_indices() {
        let tail = &s[from + i..];
        if markers.iter().any(|m| m.starts_with(tail)) {
            return from + i;
        }
    }
    s.len()
}

/// Folds a stream's deltas into the whole answer.
pub fn fold(deltas: impl IntoIterator<Item = Delta>) -> Parsed {
    let mut content = String::new();
    let mut reasoning: Option<String> = None;
    let mut calls: Vec<(ToolCall, String)> = Vec::new();
    for d in deltas {
        match d {
            Delta::Content(s) => content.push_str(&s),
            Delta::Reasoning(s) => reasoning.get_or_insert_with(String::new).push_str(&s),
            Delta::CallStart { id, name, .. } => calls.push((
                ToolCall {
                    id,
                    name,
                    arguments: Value::Null,
                },
                String::new(),
            )),
            Delta::CallArguments { index, fragment } => {
                if let Some((_, args)) = calls.get_mut(index) {
                    args.push_str(&fragment);
                }
            }
        }
    }
    let calls = calls
        .into_iter()
        .map(|(mut call, args)| {
            call.arguments = serde_json::from_str(&args).unwrap_or(Value::String(args));
            call
        })
        .collect();
    Parsed {
        content,
        reasoning,
        calls,
    }
}

/// Parses a whole answer: [`OutputParser::feed`] of all of it, then
/// [`OutputParser::finish`], folded.
pub fn parse_all(cfg: ParserConfig, text: &str) -> Parsed {
    let mut p = OutputParser::new(cfg);
    let mut deltas = p.feed(text);
    deltas.extend(p.finish());
    fold(deltas)
}

// ---------------------------------------------------------------------------------------------
// Grammars.

/// A Lark grammar (llguidance's dialect) that constrains tool calls while they are sampled.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CallGrammar {
    /// The grammar.
    pub lark: String,
    /// Under `tool_choice: auto`, the text after which the grammar applies: it describes the
    /// rest of the call(s) after the trigger. The daemon watches the content (not reasoning)
    /// for it, and feeds the grammar whatever the token that completed the trigger holds after
    /// it. `None`: the grammar covers the whole answer from its first token.
    pub trigger: Option<String>,
}

/// What else a call grammar allows.
#[derive(Debug, Clone, Default)]
pub struct GrammarOptions {
    /// The template's reasoning tags: a grammar covering the whole answer then allows one
    /// reasoning block before the calls.
    pub reasoning: Option<ReasoningTags>,
    /// The prompt ends inside the reasoning block: the answer starts with reasoning text up to
    /// the closing tag.
    pub starts_in_reasoning: bool,
}

/// The grammar for a request's calls in `format`: exactly one or more calls (one when
/// `parallel` is false, at most [`MAX_CALLS`]) of the offered tools (only the named one under
/// [`ToolChoice::Named`]), each one's arguments constrained by its schema. `None` when no call
/// may be made ([`ToolChoice::None`], or a named tool that is not offered).
pub fn call_grammar(format: ToolFormat, tools: &Tools) -> Option<CallGrammar> {
    call_grammar_with(format, tools, &GrammarOptions::default())
}

/// [`call_grammar`], with a reasoning block allowed before forced calls.
pub fn call_grammar_with(
    format: ToolFormat,
    tools: &Tools,
    opts: &GrammarOptions,
) -> Option<CallGrammar> {
    let offered: Vec<&Tool> = match &tools.choice {
        ToolChoice::None => return None,
        ToolChoice::Named(name) => tools.tools.iter().filter(|t| &t.name == name).collect(),
        ToolChoice::Auto | ToolChoice::Required => tools.tools.iter().collect(),
    };
    let first = *offered.first()?;
    let offered = if matches!(tools.choice, ToolChoice::Named(_)) {
        vec![first]
    } else {
        offered
    };
    let lazy = tools.choice == ToolChoice::Auto;
    // Further calls after the first, when parallel calls are allowed.
    let more = |item: &str| {
        if tools.parallel {
            format!(" ({item}){{0,{}}}", MAX_CALLS - 1)
        } else {
            String::new()
        }
    };
    let key = format.arguments_key();

    let mut g = String::from("%llguidance {}\n\n");
    let prefix = if lazy {
        String::new()
    } else {
        reasoning_prefix(&mut g, opts)
    };
    match (format, lazy) {
        (ToolFormat::Hermes, true) => {
            let _ = writeln!(
                g,
                "start: WS? call WS? {close}{more}",
                close = lark_str(HERMES_CLOSE),
                more = more("WS? hcall")
            );
        }
        (ToolFormat::Hermes, false) => {
            let _ = writeln!(g, "start: {prefix}hcall{}", more("WS? hcall"));
        }
        (ToolFormat::Mistral, true) => {
            let _ = writeln!(g, "start: WS? mlist");
        }
        (ToolFormat::Mistral, false) => {
            let _ = writeln!(
                g,
                "start: {prefix}{marker} WS? mlist",
                marker = lark_str(MISTRAL_MARKER)
            );
        }
        (ToolFormat::Llama3Json, true) => {
            let _ = writeln!(g, "start: tail{}", more("CALL_SEP call"));
        }
        (ToolFormat::Llama3Json, false) => {
            let _ = writeln!(g, "start: {prefix}call{}", more("CALL_SEP call"));
        }
    }
    match format {
        ToolFormat::Hermes => {
            let _ = writeln!(
                g,
                "hcall: {open} WS? call WS? {close}",
                open = lark_str(HERMES_OPEN),
                close = lark_str(HERMES_CLOSE)
            );
        }
        ToolFormat::Mistral => {
            let _ = writeln!(
                g,
                "mlist: \"[\" WS? call{} WS? \"]\"",
                more("ITEM_SEP call")
            );
        }
        ToolFormat::Llama3Json => {}
    }
    // Whole call objects, one alternative per tool (llguidance merges their lexer classes, so
    // the choice is made by the name). Llama 3's lazy single call needs only the tails below.
    if !(format == ToolFormat::Llama3Json && lazy && !tools.parallel) {
        let alternatives: Vec<String> = (0..offered.len()).map(|i| format!("call_{i}")).collect();
        let _ = writeln!(g, "call: {}", alternatives.join(" | "));
        for (i, tool) in offered.iter().enumerate() {
            let _ = writeln!(g, "call_{i}: %json {}", call_schema(tool, key));
        }
    }
    if format == ToolFormat::Llama3Json && lazy {
        // The trigger `{"name"` was the call object's start: the rest is written out here.
        let tails: Vec<String> = (0..offered.len()).map(|i| format!("tail_{i}")).collect();
        let _ = writeln!(g, "tail: {}", tails.join(" | "));
        for (i, tool) in offered.iter().enumerate() {
            let quoted_name = Value::String(tool.name.clone()).to_string();
            let _ = writeln!(
                g,
                "tail_{i}: KEY_SEP {name} ITEM_SEP {key} KEY_SEP args_{i} CLOSE_BRACE",
                name = lark_str(&quoted_name),
                key = lark_str(&format!("\"{key}\"")),
            );
            let _ = writeln!(g, "args_{i}: %json {}", arguments_schema(tool));
        }
    }
    let _ = writeln!(g, "WS: /{GRAMMAR_WS}{{1,8}}/");
    let _ = writeln!(g, "ITEM_SEP: /{GRAMMAR_WS}{{0,8}},{GRAMMAR_WS}{{0,8}}/");
    let _ = writeln!(g, "KEY_SEP: /{GRAMMAR_WS}{{0,8}}:{GRAMMAR_WS}{{0,8}}/");
    let _ = writeln!(g, "CALL_SEP: /{GRAMMAR_WS}{{0,8}};{GRAMMAR_WS}{{0,8}}/");
    let _ = writeln!(g, "CLOSE_BRACE: /{GRAMMAR_WS}{{0,8}}\\}}/");
    if let Some(tags) = opts.reasoning.as_ref().filter(|_| !lazy) {
        let _ = writeln!(
            g,
            "think[suffix={close}]: /(?s:.*)/",
            close = lark_str(&tags.close)
        );
    }
    Some(CallGrammar {
        lark: g,
        trigger: lazy.then(|| format.trigger().to_string()),
    })
}

/// The part of `start` before the calls when a reasoning block is allowed (the `think` rule is
/// written by the caller).
fn reasoning_prefix(g: &mut String, opts: &GrammarOptions) -> String {
    let Some(tags) = &opts.reasoning else {
        return String::new();
    };
    if opts.starts_in_reasoning {
        "think WS? ".to_string()
    } else {
        let _ = writeln!(
            g,
            "reasoning: {open} think WS?",
            open = lark_str(&tags.open)
        );
        "reasoning? ".to_string()
    }
}

/// A Lark string literal matching exactly `s` (Lark strings are read as JSON strings).
fn lark_str(s: &str) -> String {
    Value::String(s.to_string()).to_string()
}

/// The whitespace the JSON of a call may hold at one place (llguidance's `x-guidance` option;
/// bounded so that a model cannot loop on whitespace inside a call).
fn whitespace_option() -> Value {
    json!({ "whitespace_pattern": format!("{GRAMMAR_WS}{{1,32}}") })
}

/// The schema of one call object: the name as a constant, then the arguments under `key`,
/// nothing else. The tool's `$defs`/`definitions` move to the call object's root and its other
/// local `$ref`s are rebased, so that references inside the arguments still resolve.
fn call_schema(tool: &Tool, key: &str) -> Value {
    let mut params = tool.parameters.clone();
    let mut root = Map::new();
    root.insert("x-guidance".into(), whitespace_option());
    if let Value::Object(p) = &mut params {
        p.remove("x-guidance");
        p.remove("$schema");
        for defs in ["$defs", "definitions"] {
            if let Some(d) = p.remove(defs) {
                root.insert(defs.into(), d);
            }
        }
    }
    let base = format!("#/properties/{key}");
    rebase_refs(&mut params, &base);
    root.insert("type".into(), json!("object"));
    root.insert(
        "properties".into(),
        json!({ "name": { "const": tool.name }, key: params }),
    );
    root.insert("required".into(), json!(["name", key]));
    root.insert("additionalProperties".into(), json!(false));
    Value::Object(root)
}

/// The schema of a call's arguments alone (the tool's own, with the whitespace option).
fn arguments_schema(tool: &Tool) -> Value {
    let mut params = match &tool.parameters {
        Value::Object(p) => p.clone(),
        other => {
            let mut m = Map::new();
            m.insert("allOf".into(), json!([other]));
            m
        }
    };
    params.insert("x-guidance".into(), whitespace_option());
    Value::Object(params)
}

/// Rewrites local `$ref`s that point into the schema itself (other than into its definitions)
/// to point into it at `base`.
fn rebase_refs(v: &mut Value, base: &str) {
    let mut stack = vec![(v, 0usize)];
    while let Some((v, depth)) = stack.pop() {
        if depth > MAX_SCHEMA_DEPTH * 2 {
            continue;
        }
        match v {
            Value::Object(o) => {
                if let Some(Value::String(r)) = o.get_mut("$ref") {
                    let local = r == "#" || r.starts_with("#/");
                    let into_defs = r.starts_with("#/$defs/") || r.starts_with("#/definitions/");
                    if local && !into_defs {
                        *r = format!("{base}{}", &r[1..]);
                    }
                }
                stack.extend(o.values_mut().map(|x| (x, depth + 1)));
            }
            Value::Array(a) => stack.extend(a.iter_mut().map(|x| (x, depth + 1))),
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests;
