//! Chat templates rendered as the model's author wrote them: the GGUF's `tokenizer.chat_template`
//! (Jinja) run by minijinja, set up like Hugging Face transformers' environment so that the prompt
//! is the one the model was trained on, byte for byte.
//!
//! What the template sees is what transformers passes to `apply_chat_template`:
//! - `messages`: each `{role, content}`, plus `tool_calls` (`[{id, type: "function", function:
//!   {name, arguments}}]`, the arguments a JSON object, not a string), `tool_call_id` and `name`
//!   when present. An assistant turn that only calls tools has `content: null`, as OpenAI clients
//!   send it, unless the template fails on a null content and renders with `""` (found once, when
//!   the template is compiled: llama.cpp does the same).
//! - `tools`: `[{type: "function", function: {name, description, parameters}}]`, only when tools
//!   are offered, so that `{% if tools %}` and `{% if tools is defined %}` agree.
//! - `add_generation_prompt`, `bos_token`, `eos_token`, and `enable_thinking` only when the request
//!   sets it.
//! - `raise_exception(message)` and `strftime_now(format)` (UTC, where transformers uses local
//!   time: a daemon's prompt should not depend on the host's time zone).
//! - Python's string and dict methods (`.strip()`, `.startswith()`, `.items()`, …) from
//!   minijinja-contrib's pycompat.
//!
//! Where minijinja and Jinja2 differ in ways that change bytes, transformers' behaviour is restored:
//! `tojson` is Python's `json.dumps(x, ensure_ascii=False)` (separators `", "` and `": "`, keys in
//! insertion order, no HTML escaping, `indent`, `separators`, `sort_keys`, `ensure_ascii`), `{{ x }}`
//! prints values as Python's `str()` would (`None`, `True`, `['a']`), and blocks are trimmed
//! (`trim_blocks` and `lstrip_blocks` are on in transformers).
//!
//! Templates are untrusted: they come inside imported GGUF files. Every render runs with fuel (a
//! bound on executed instructions), the output goes through a writer that fails past
//! `max_output_bytes`, values printed inside captured blocks and macros count against a budget of
//! [`EMITTED_BYTES_FACTOR`] × `max_output_bytes`, recursion is bounded, `tojson`'s output is
//! bounded, and a panic inside the engine is caught and answered as an error.
//!
//! Not bounded here: memory taken by string operators inside expressions (`s ~ s` doubles a string
//! in one instruction; minijinja caps `'x' * n` at 100 MB, but not concatenation) and raw template
//! text repeated inside a captured block (at most fuel × template size). minijinja offers no hook
//! for these; a template built to exhaust memory this way needs a process-level bound.

use std::cell::Cell;
use std::collections::HashSet;
use std::fmt::Write as _;
use std::io;
use std::panic::{self, AssertUnwindSafe};
use std::time::{SystemTime, UNIX_EPOCH};

use minijinja::value::{Kwargs, Value, ValueKind};
use minijinja::{AutoEscape, Environment, Error, ErrorKind, UndefinedBehavior};

use crate::request::{ChatMessage, Tool, ToolCall};

/// The name the template is stored under in its environment (no extension: no auto-escaping).
const TEMPLATE_NAME: &str = "chat_template";

/// Values printed by `{{ … }}` anywhere in a render, inside macros and `{% set %}` blocks
/// included, may add up to this many times `max_output_bytes`. Output captured in memory never
/// reaches the size-limited writer, so this is what bounds it; a macro's output is counted again
/// where it is printed, hence the margin.
pub const EMITTED_BYTES_FACTOR: usize = 4;

/// Deepest recursion (macro calls, nested blocks) a template may reach. minijinja counts a macro
/// call as several levels; 200 leaves room for recursive macros over nested JSON schemas and
/// stays far inside a 2 MiB thread stack, also in debug builds.
const RECURSION_LIMIT: usize = 200;

/// Deepest nesting `tojson` and `str()` follow in a value before refusing it.
const MAX_VALUE_DEPTH: usize = 128;

/// Error messages quoted from a template (`raise_exception`, engine errors) are cut to this many
/// bytes: they reach clients and logs.
const MAX_MESSAGE_BYTES: usize = 1024;

/// Bounds on one render of an untrusted template.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TemplateLimits {
    /// Instructions a render may execute (minijinja's fuel).
    pub fuel: u64,
    /// Bytes a rendered prompt may have.
    pub max_output_bytes: usize,
}

impl TemplateLimits {
    /// Default fuel. The real templates (SmolLM2, Qwen2.5) need at most about 23,000 for a
    /// 64-message conversation with 32 tools (measured by `tests/templates.rs`, which fails if the
    /// margin shrinks below 10×); this is about 20× that, and still ends a hostile loop in
    /// well under a second.
    pub const DEFAULT_FUEL: u64 = 500_000;
    /// Default output bound: 4 MiB, far above any prompt a context window holds.
    pub const DEFAULT_MAX_OUTPUT_BYTES: usize = 4 << 20;
}

impl Default for TemplateLimits {
    fn default() -> Self {
        TemplateLimits {
            fuel: Self::DEFAULT_FUEL,
            max_output_bytes: Self::DEFAULT_MAX_OUTPUT_BYTES,
        }
    }
}

/// Why a template could not be compiled or rendered.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TemplateError {
    /// The template does not parse.
    #[error("chat template syntax error: {0}")]
    Syntax(String),
    /// The template called `raise_exception` (it refuses this conversation).
    #[error("chat template refused the conversation: {0}")]
    Raised(String),
    /// The render ran out of fuel (too many instructions executed).
    #[error("chat template ran out of fuel (too many steps)")]
    OutOfFuel,
    /// The rendered prompt (or a value built while rendering) grew past the output bound.
    #[error("chat template output is larger than {max} bytes")]
    TooLarge {
        /// The bound, `max_output_bytes`.
        max: usize,
    },
    /// Any other failure while rendering (an undefined value used, a bad operand, recursion too
    /// deep, …).
    #[error("chat template failed: {0}")]
    Render(String),
}

impl TemplateError {
    /// A stable machine-readable code for the error, for API error bodies.
    pub fn code(&self) -> &'static str {
        match self {
            Self::Syntax(_) => "template_syntax",
            Self::Raised(_) => "template_exception",
            Self::OutOfFuel => "template_fuel_exhausted",
            Self::TooLarge { .. } => "template_output_too_large",
            Self::Render(_) => "template_error",
        }
    }
}

/// What one render takes: the conversation and the switches the template reads.
#[derive(Debug, Clone, Copy)]
pub struct RenderInput<'a> {
    /// The conversation.
    pub messages: &'a [ChatMessage],
    /// Tools offered; empty when none are (then `tools` is undefined in the template).
    pub tools: &'a [Tool],
    /// Whether the prompt ends with the opening of an assistant turn.
    pub add_generation_prompt: bool,
    /// The template's thinking switch, passed only when set.
    pub enable_thinking: Option<bool>,
}

/// A compiled chat template: compiled once, shared by every request (`Send + Sync`).
pub struct ChatTemplate {
    env: Environment<'static>,
    bos_token: String,
    eos_token: String,
    limits: TemplateLimits,
    /// Top-level variables the template refers to (static analysis).
    undeclared: HashSet<String>,
    /// Whether an assistant turn with only tool calls gets `content: null` (else `""`).
    null_tool_call_content: bool,
}

impl std::fmt::Debug for ChatTemplate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ChatTemplate")
            .field("bos_token", &self.bos_token)
            .field("eos_token", &self.eos_token)
            .field("limits", &self.limits)
            .field("null_tool_call_content", &self.null_tool_call_content)
            .finish_non_exhaustive()
    }
}

impl ChatTemplate {
    /// Compiles `source`, the template, with the model's BOS and EOS token texts.
    pub fn new(
        source: &str,
        bos_token: &str,
        eos_token: &str,
        limits: TemplateLimits,
    ) -> Result<Self, TemplateError> {
        guard(|| {
            let mut env = environment(limits);
            env.add_template_owned(TEMPLATE_NAME, source.to_owned())
                .map_err(|e| TemplateError::Syntax(message_of(&e)))?;
            let undeclared = env
                .get_template(TEMPLATE_NAME)
                .map_err(|e| TemplateError::Syntax(message_of(&e)))?
                .undeclared_variables(false);
            let mut template = ChatTemplate {
                env,
                bos_token: bos_token.to_owned(),
                eos_token: eos_token.to_owned(),
                limits,
                undeclared,
                null_tool_call_content: true,
            };
            template.null_tool_call_content = template.accepts_null_tool_call_content();
            Ok(template)
        })
    }

    /// Renders the prompt for `input`.
    pub fn render(&self, input: &RenderInput<'_>) -> Result<String, TemplateError> {
        guard(|| self.render_context(self.context(input)))
    }

    /// Whether the template refers to the top-level variable `variable` (`tools`,
    /// `enable_thinking`, …), found by static analysis: a name it reads on any path counts.
    pub fn reads(&self, variable: &str) -> bool {
        self.undeclared.contains(variable)
    }

    /// The limits every render runs under.
    pub fn limits(&self) -> TemplateLimits {
        self.limits
    }

    /// Whether an assistant turn with only tool calls is rendered with `content: null`, as
    /// transformers receives it from OpenAI clients (else with `""`, for templates that fail on
    /// a null content).
    pub fn null_tool_call_content(&self) -> bool {
        self.null_tool_call_content
    }

    /// Probes once, at compile time, whether the template renders a tool-call-only assistant turn
    /// with a null content; if it fails on that but renders it with `""`, `""` is used. Errors of
    /// other kinds (a refusal of tool turns, the limits) keep the transformers behaviour.
    fn accepts_null_tool_call_content(&self) -> bool {
        let messages = [
            ChatMessage::text("user", "What is the weather in Paris?"),
            probe_tool_call_turn(),
        ];
        let input = RenderInput {
            messages: &messages,
            tools: &[],
            add_generation_prompt: false,
            enable_thinking: None,
        };
        match self.render_context(self.context_with(&input, true)) {
            Ok(_) => true,
            Err(TemplateError::Render(_)) => self
                .render_context(self.context_with(&input, false))
                .is_err(),
            Err(_) => true,
        }
    }

    fn context(&self, input: &RenderInput<'_>) -> Value {
        self.context_with(input, self.null_tool_call_content)
    }

    fn context_with(&self, input: &RenderInput<'_>, null_content: bool) -> Value {
        let messages: Value = input
            .messages
            .iter()
            .map(|m| message_value(m, null_content))
            .collect();
        let mut ctx: Vec<(&str, Value)> = vec![
            ("messages", messages),
            (
                "add_generation_prompt",
                Value::from(input.add_generation_prompt),
            ),
            ("bos_token", Value::from(self.bos_token.as_str())),
            ("eos_token", Value::from(self.eos_token.as_str())),
        ];
        if !input.tools.is_empty() {
            ctx.push(("tools", input.tools.iter().map(tool_value).collect()));
        }
        if let Some(thinking) = input.enable_thinking {
            ctx.push(("enable_thinking", Value::from(thinking)));
        }
        ctx.into_iter().collect()
    }

    fn render_context(&self, ctx: Value) -> Result<String, TemplateError> {
        let max = self.limits.max_output_bytes;
        let template = self
            .env
            .get_template(TEMPLATE_NAME)
            .map_err(|e| TemplateError::Syntax(message_of(&e)))?;
        let mut out = LimitedWriter {
            buf: Vec::new(),
            max,
            exceeded: false,
        };
        let result = {
            let _budget = EmitBudget::enter(max.saturating_mul(EMITTED_BYTES_FACTOR));
            template.render_captured_to(ctx, &mut out).map(drop)
        };
        match result {
            Ok(()) => String::from_utf8(out.buf)
                .map_err(|_| TemplateError::Render("the output is not UTF-8".into())),
            Err(e) if out.exceeded => {
                drop(e);
                Err(TemplateError::TooLarge { max })
            }
            Err(e) => Err(classify(&e, max)),
        }
    }
}

/// Checks an imported template: it compiles, and renders a probe conversation within `limits`.
///
/// A plain conversation (user, assistant, user; with and without `add_generation_prompt`) must
/// render. A fuller one (system, user, assistant with a tool call, tool result, user; with and
/// without tools; with and without `add_generation_prompt`) must not exhaust the limits, but may
/// be refused by the template (`raise_exception`) or fail on a shape it does not support: many
/// real templates accept no system or tool turns, and are still fine for plain chat.
pub fn check(
    source: &str,
    bos_token: &str,
    eos_token: &str,
    limits: TemplateLimits,
) -> Result<(), TemplateError> {
    let template = ChatTemplate::new(source, bos_token, eos_token, limits)?;
    let plain = [
        ChatMessage::text("user", "Hello!"),
        ChatMessage::text("assistant", "Hello, how can I help?"),
        ChatMessage::text("user", "What is the weather in Paris?"),
    ];
    for add_generation_prompt in [true, false] {
        template.render(&RenderInput {
            messages: &plain,
            tools: &[],
            add_generation_prompt,
            enable_thinking: None,
        })?;
    }
    let full = [
        ChatMessage::text("system", "You are a helpful assistant."),
        ChatMessage::text("user", "What is the weather in Paris?"),
        probe_tool_call_turn(),
        ChatMessage {
            role: "tool".into(),
            content: "{\"temperature\": 21}".into(),
            tool_call_id: Some("call_probe".into()),
            name: Some("get_weather".into()),
            ..Default::default()
        },
        ChatMessage::text("user", "Thanks!"),
    ];
    let tools = [Tool {
        name: "get_weather".into(),
        description: Some("The current weather in a city.".into()),
        parameters: serde_json::json!({
            "type": "object",
            "properties": {"city": {"type": "string"}},
            "required": ["city"],
        }),
    }];
    for with_tools in [true, false] {
        for add_generation_prompt in [true, false] {
            let rendered = template.render(&RenderInput {
                messages: &full,
                tools: if with_tools { &tools } else { &[] },
                add_generation_prompt,
                enable_thinking: None,
            });
            match rendered {
                Ok(_) | Err(TemplateError::Raised(_)) | Err(TemplateError::Render(_)) => {}
                Err(e) => return Err(e),
            }
        }
    }
    Ok(())
}

/// The assistant turn of the probes: one tool call, no text.
fn probe_tool_call_turn() -> ChatMessage {
    ChatMessage {
        role: "assistant".into(),
        tool_calls: vec![ToolCall {
            id: "call_probe".into(),
            name: "get_weather".into(),
            arguments: serde_json::json!({"city": "Paris"}),
        }],
        ..Default::default()
    }
}

/// The environment transformers sets up, with the sandbox's bounds.
fn environment(limits: TemplateLimits) -> Environment<'static> {
    let mut env = Environment::new();
    env.set_trim_blocks(true);
    env.set_lstrip_blocks(true);
    env.set_keep_trailing_newline(false);
    env.set_undefined_behavior(UndefinedBehavior::Lenient);
    env.set_auto_escape_callback(|_| AutoEscape::None);
    env.set_fuel(Some(limits.fuel));
    env.set_recursion_limit(RECURSION_LIMIT);
    env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
    // `debug()` dumps the whole render state; Jinja2 has no such global.
    env.remove_global("debug");

    let max = limits.max_output_bytes;
    env.set_formatter(move |out, _state, value| format_value(out, value, max));
    env.add_filter("tojson", move |value: Value, kwargs: Kwargs| {
        tojson(&value, &kwargs, max)
    });
    env.add_filter("string", move |value: Value| -> Result<Value, Error> {
        let mut buf = Bounded::new(max);
        py_str(&value, &mut buf, 0)?;
        Ok(Value::from(buf.s))
    });
    env.add_function(
        "raise_exception",
        |message: Value| -> Result<Value, Error> {
            let mut buf = Bounded::new(MAX_MESSAGE_BYTES * 4);
            // A message too long to print is cut, not a different error.
            let _ = py_str(&message, &mut buf, 0);
            let text = truncate(&buf.s);
            Err(Error::new(
                ErrorKind::InvalidOperation,
                format!("raise_exception: {text}"),
            )
            .with_source(Abort::Raised(text)))
        },
    );
    env.add_function("strftime_now", |format: String| -> Result<Value, Error> {
        if format.len() > 256 {
            return Err(Error::new(
                ErrorKind::InvalidOperation,
                "strftime_now: the format is longer than 256 bytes",
            ));
        }
        let secs = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        Ok(Value::from(strftime_utc(&format, secs)))
    });
    env
}

/// Runs `f`, answering a panic inside the engine as an error.
fn guard<T>(f: impl FnOnce() -> Result<T, TemplateError>) -> Result<T, TemplateError> {
    panic::catch_unwind(AssertUnwindSafe(f)).unwrap_or_else(|_| {
        Err(TemplateError::Render(
            "the template engine failed unexpectedly".into(),
        ))
    })
}

/// A message as transformers passes it: `role` and `content`, then only the fields present.
fn message_value(m: &ChatMessage, null_content: bool) -> Value {
    let mut fields: Vec<(&str, Value)> = Vec::with_capacity(5);
    fields.push(("role", Value::from(m.role.as_str())));
    let content = if m.content.is_empty() && !m.tool_calls.is_empty() && null_content {
        Value::from(())
    } else {
        Value::from(m.content.as_str())
    };
    fields.push(("content", content));
    if !m.tool_calls.is_empty() {
        let calls: Value = m.tool_calls.iter().map(tool_call_value).collect();
        fields.push(("tool_calls", calls));
    }
    if let Some(id) = &m.tool_call_id {
        fields.push(("tool_call_id", Value::from(id.as_str())));
    }
    if let Some(name) = &m.name {
        fields.push(("name", Value::from(name.as_str())));
    }
    fields.into_iter().collect()
}

/// `{id, type: "function", function: {name, arguments}}`, the arguments a JSON value.
fn tool_call_value(call: &ToolCall) -> Value {
    let function: Value = [
        ("name", Value::from(call.name.as_str())),
        ("arguments", Value::from_serialize(&call.arguments)),
    ]
    .into_iter()
    .collect();
    [
        ("id", Value::from(call.id.as_str())),
        ("type", Value::from("function")),
        ("function", function),
    ]
    .into_iter()
    .collect()
}

/// `{type: "function", function: {name, description, parameters}}` (no description when none).
fn tool_value(tool: &Tool) -> Value {
    let mut function: Vec<(&str, Value)> = vec![("name", Value::from(tool.name.as_str()))];
    if let Some(description) = &tool.description {
        function.push(("description", Value::from(description.as_str())));
    }
    function.push(("parameters", Value::from_serialize(&tool.parameters)));
    [
        ("type", Value::from("function")),
        ("function", function.into_iter().collect()),
    ]
    .into_iter()
    .collect()
}

/// The marks the sandbox's own errors carry, found again in minijinja's error chain.
#[derive(Debug, thiserror::Error)]
enum Abort {
    #[error("raise_exception: {0}")]
    Raised(String),
    #[error("the output is larger than {0} bytes")]
    TooLarge(usize),
}

fn too_large(max: usize) -> Error {
    Error::new(
        ErrorKind::InvalidOperation,
        format!("output larger than {max} bytes"),
    )
    .with_source(Abort::TooLarge(max))
}

/// Maps a render error to its variant, looking through the chain for the sandbox's marks.
fn classify(err: &Error, max: usize) -> TemplateError {
    let mut cur: Option<&(dyn std::error::Error + 'static)> = Some(err);
    let mut depth = 0;
    while let Some(e) = cur {
        if let Some(abort) = e.downcast_ref::<Abort>() {
            return match abort {
                Abort::Raised(text) => TemplateError::Raised(text.clone()),
                Abort::TooLarge(_) => TemplateError::TooLarge { max },
            };
        }
        if let Some(inner) = e.downcast_ref::<Error>() {
            match inner.kind() {
                ErrorKind::OutOfFuel => return TemplateError::OutOfFuel,
                ErrorKind::SyntaxError => return TemplateError::Syntax(message_of(inner)),
                _ => {}
            }
        }
        depth += 1;
        if depth > 64 {
            break;
        }
        cur = e.source();
    }
    TemplateError::Render(message_of(err))
}

/// The error's text (kind, detail, template line), cut to [`MAX_MESSAGE_BYTES`].
fn message_of(err: &Error) -> String {
    truncate(&err.to_string())
}

fn truncate(text: &str) -> String {
    if text.len() <= MAX_MESSAGE_BYTES {
        return text.to_owned();
    }
    let mut end = MAX_MESSAGE_BYTES;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &text[..end])
}

/// The rendered prompt, refusing to grow past `max` bytes.
struct LimitedWriter {
    buf: Vec<u8>,
    max: usize,
    exceeded: bool,
}

impl io::Write for LimitedWriter {
    fn write(&mut self, bytes: &[u8]) -> io::Result<usize> {
        if self.buf.len().saturating_add(bytes.len()) > self.max {
            self.exceeded = true;
            return Err(io::Error::other("chat template output limit reached"));
        }
        self.buf.extend_from_slice(bytes);
        Ok(bytes.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

thread_local! {
    /// Bytes `{{ … }}` may still print in the render running on this thread (captured output
    /// included). Renders are synchronous, so the formatter runs on the render's thread.
    static EMIT_LEFT: Cell<usize> = const { Cell::new(0) };
}

/// Sets this thread's print budget for one render and restores the previous one afterwards.
struct EmitBudget {
    previous: usize,
}

impl EmitBudget {
    fn enter(budget: usize) -> Self {
        EmitBudget {
            previous: EMIT_LEFT.with(|left| left.replace(budget)),
        }
    }
}

impl Drop for EmitBudget {
    fn drop(&mut self) {
        EMIT_LEFT.with(|left| left.set(self.previous));
    }
}

/// Charges `n` printed bytes to the render's budget.
fn charge(n: usize, max: usize) -> Result<(), Error> {
    EMIT_LEFT.with(|left| {
        let remaining = left.get();
        if n > remaining {
            left.set(0);
            Err(too_large(max))
        } else {
            left.set(remaining - n);
            Ok(())
        }
    })
}

/// `{{ value }}`: Python's `str(value)`, charged to the print budget.
fn format_value(out: &mut minijinja::Output, value: &Value, max: usize) -> Result<(), Error> {
    let write_failed = |_| Error::new(ErrorKind::WriteFailure, "could not write the output");
    if let Some(s) = value.as_str() {
        charge(s.len(), max)?;
        return out.write_str(s).map_err(write_failed);
    }
    let remaining = EMIT_LEFT.with(Cell::get);
    let mut buf = Bounded::new(remaining.min(max));
    py_str(value, &mut buf, 0)?;
    charge(buf.s.len(), max)?;
    out.write_str(&buf.s).map_err(write_failed)
}

/// A string that refuses to grow past `max` bytes.
struct Bounded {
    s: String,
    max: usize,
}

impl Bounded {
    fn new(max: usize) -> Self {
        Bounded {
            s: String::new(),
            max,
        }
    }

    fn push(&mut self, text: &str) -> Result<(), Error> {
        if self.s.len().saturating_add(text.len()) > self.max {
            return Err(too_large(self.max));
        }
        self.s.push_str(text);
        Ok(())
    }

    fn push_char(&mut self, c: char) -> Result<(), Error> {
        self.push(c.encode_utf8(&mut [0; 4]))
    }
}

fn too_deep() -> Error {
    Error::new(
        ErrorKind::InvalidOperation,
        format!("value nested deeper than {MAX_VALUE_DEPTH} levels"),
    )
}

/// Python's `str(value)`: strings as they are, `None`, `True`/`False`, containers as their repr.
fn py_str(value: &Value, out: &mut Bounded, depth: usize) -> Result<(), Error> {
    match value.kind() {
        ValueKind::Undefined => Ok(()),
        ValueKind::String => out.push(value.as_str().unwrap_or_default()),
        _ => py_repr(value, out, depth),
    }
}

/// Python's `repr(value)` for the kinds a template meets.
fn py_repr(value: &Value, out: &mut Bounded, depth: usize) -> Result<(), Error> {
    if depth > MAX_VALUE_DEPTH {
        return Err(too_deep());
    }
    match value.kind() {
        ValueKind::Undefined => out.push("Undefined"),
        ValueKind::None => out.push("None"),
        ValueKind::Bool => out.push(if value.is_true() { "True" } else { "False" }),
        ValueKind::Number => {
            if value.is_integer() {
                out.push(&value.to_string())
            } else {
                let f = f64::try_from(value.clone()).unwrap_or(f64::NAN);
                out.push(&py_float(f, false))
            }
        }
        ValueKind::String => py_repr_str(value.as_str().unwrap_or_default(), out),
        ValueKind::Seq | ValueKind::Iterable => {
            out.push("[")?;
            for (i, item) in value.try_iter()?.enumerate() {
                if i > 0 {
                    out.push(", ")?;
                }
                py_repr(&item, out, depth + 1)?;
            }
            out.push("]")
        }
        ValueKind::Map => {
            out.push("{")?;
            for (i, key) in value.try_iter()?.enumerate() {
                if i > 0 {
                    out.push(", ")?;
                }
                py_repr(&key, out, depth + 1)?;
                out.push(": ")?;
                let item = value.get_item(&key)?;
                py_repr(&item, out, depth + 1)?;
            }
            out.push("}")
        }
        _ => {
            let mut text = String::new();
            let _ = write!(text, "{value}");
            out.push(&text)
        }
    }
}

/// Python's `repr(str)`: single quotes unless the text holds one and no double quote.
fn py_repr_str(s: &str, out: &mut Bounded) -> Result<(), Error> {
    let quote = if s.contains('\'') && !s.contains('"') {
        '"'
    } else {
        '\''
    };
    out.push_char(quote)?;
    for c in s.chars() {
        match c {
            '\\' => out.push("\\\\")?,
            '\n' => out.push("\\n")?,
            '\r' => out.push("\\r")?,
            '\t' => out.push("\\t")?,
            c if c == quote => {
                out.push_char('\\')?;
                out.push_char(c)?;
            }
            c if (c as u32) < 0x20 || (0x7f..=0x9f).contains(&(c as u32)) => {
                out.push(&format!("\\x{:02x}", c as u32))?;
            }
            c => out.push_char(c)?,
        }
    }
    out.push_char(quote)
}

/// Python's `repr(float)` (`json` is true: `json.dumps`'s spelling of NaN and the infinities).
fn py_float(f: f64, json: bool) -> String {
    if f.is_nan() {
        return if json { "NaN" } else { "nan" }.into();
    }
    if f.is_infinite() {
        let text = match (json, f < 0.0) {
            (true, false) => "Infinity",
            (true, true) => "-Infinity",
            (false, false) => "inf",
            (false, true) => "-inf",
        };
        return text.into();
    }
    // Rust's `{:e}` writes the shortest digits that round-trip, as Python's repr chooses them;
    // only the layout differs.
    let sci = format!("{:e}", f.abs());
    let (mantissa, exp) = sci.split_once('e').unwrap_or((&sci, "0"));
    let exp: i32 = exp.parse().unwrap_or(0);
    let digits: String = mantissa.chars().filter(|c| *c != '.').collect();
    let mut out = String::new();
    if f.is_sign_negative() {
        out.push('-');
    }
    if !(-4..16).contains(&exp) {
        out.push_str(&digits[..1]);
        if digits.len() > 1 {
            out.push('.');
            out.push_str(&digits[1..]);
        }
        let _ = write!(
            out,
            "e{}{:02}",
            if exp < 0 { '-' } else { '+' },
            exp.unsigned_abs()
        );
    } else if exp >= 0 {
        let int_len = exp as usize + 1;
        if digits.len() <= int_len {
            out.push_str(&digits);
            out.extend(std::iter::repeat_n('0', int_len - digits.len()));
            out.push_str(".0");
        } else {
            out.push_str(&digits[..int_len]);
            out.push('.');
            out.push_str(&digits[int_len..]);
        }
    } else {
        out.push_str("0.");
        out.extend(std::iter::repeat_n('0', (-exp - 1) as usize));
        out.push_str(&digits);
    }
    out
}

/// How `tojson` writes: Python `json.dumps`'s options.
struct JsonStyle {
    ensure_ascii: bool,
    indent: Option<String>,
    item_separator: String,
    key_separator: String,
    sort_keys: bool,
}

/// The `tojson` filter transformers installs: `json.dumps(x, ensure_ascii=False, indent=indent,
/// separators=separators, sort_keys=sort_keys)`, its output bounded by `max`.
fn tojson(value: &Value, kwargs: &Kwargs, max: usize) -> Result<Value, Error> {
    let ensure_ascii = kwargs.get::<Option<bool>>("ensure_ascii")?.unwrap_or(false);
    let sort_keys = kwargs.get::<Option<bool>>("sort_keys")?.unwrap_or(false);
    let indent = match kwargs.get::<Option<Value>>("indent")? {
        None => None,
        Some(v) if v.is_none() => None,
        Some(v) => Some(match v.kind() {
            ValueKind::String => v.as_str().unwrap_or_default().to_owned(),
            ValueKind::Bool => if v.is_true() { " " } else { "" }.to_owned(),
            ValueKind::Number if v.is_integer() => {
                let n = i64::try_from(v).unwrap_or(i64::MAX);
                let n = usize::try_from(n.max(0)).unwrap_or(usize::MAX);
                if n > max {
                    return Err(too_large(max));
                }
                " ".repeat(n)
            }
            _ => {
                return Err(Error::new(
                    ErrorKind::InvalidOperation,
                    "tojson: indent must be an integer or a string",
                ))
            }
        }),
    };
    let (item_separator, key_separator) = match kwargs.get::<Option<Value>>("separators")? {
        Some(v) if !v.is_none() => {
            let parts: Vec<Value> = v.try_iter()?.take(3).collect();
            match (parts.first(), parts.get(1), parts.len()) {
                (Some(a), Some(b), 2) if a.as_str().is_some() && b.as_str().is_some() => (
                    a.as_str().unwrap_or_default().to_owned(),
                    b.as_str().unwrap_or_default().to_owned(),
                ),
                _ => {
                    return Err(Error::new(
                        ErrorKind::InvalidOperation,
                        "tojson: separators must be a pair of strings",
                    ))
                }
            }
        }
        _ if indent.is_some() => (",".to_owned(), ": ".to_owned()),
        _ => (", ".to_owned(), ": ".to_owned()),
    };
    kwargs.assert_all_used()?;
    let style = JsonStyle {
        ensure_ascii,
        indent,
        item_separator,
        key_separator,
        sort_keys,
    };
    let mut out = Bounded::new(max);
    write_json(value, &style, &mut out, 0)?;
    Ok(Value::from(out.s))
}

fn not_serializable(value: &Value) -> Error {
    Error::new(
        ErrorKind::InvalidOperation,
        format!(
            "tojson: a value of type {} is not JSON serializable",
            value.kind()
        ),
    )
}

fn json_newline(style: &JsonStyle, out: &mut Bounded, level: usize) -> Result<(), Error> {
    if let Some(indent) = &style.indent {
        out.push("\n")?;
        for _ in 0..level {
            out.push(indent)?;
        }
    }
    Ok(())
}

fn write_json(
    value: &Value,
    style: &JsonStyle,
    out: &mut Bounded,
    level: usize,
) -> Result<(), Error> {
    if level > MAX_VALUE_DEPTH {
        return Err(too_deep());
    }
    match value.kind() {
        ValueKind::None => out.push("null"),
        ValueKind::Bool => out.push(if value.is_true() { "true" } else { "false" }),
        ValueKind::Number => out.push(&json_number(value)),
        ValueKind::String => json_string(value.as_str().unwrap_or_default(), style, out),
        ValueKind::Seq | ValueKind::Iterable => {
            let mut items = value.try_iter()?.peekable();
            if items.peek().is_none() {
                return out.push("[]");
            }
            out.push("[")?;
            for (i, item) in items.enumerate() {
                if i > 0 {
                    out.push(&style.item_separator)?;
                }
                json_newline(style, out, level + 1)?;
                write_json(&item, style, out, level + 1)?;
            }
            json_newline(style, out, level)?;
            out.push("]")
        }
        ValueKind::Map => {
            let mut entries = Vec::new();
            for key in value.try_iter()? {
                let item = value.get_item(&key)?;
                entries.push((json_key(&key)?, item));
            }
            if entries.is_empty() {
                return out.push("{}");
            }
            if style.sort_keys {
                entries.sort_by(|a, b| a.0.cmp(&b.0));
            }
            out.push("{")?;
            for (i, (key, item)) in entries.iter().enumerate() {
                if i > 0 {
                    out.push(&style.item_separator)?;
                }
                json_newline(style, out, level + 1)?;
                json_string(key, style, out)?;
                out.push(&style.key_separator)?;
                write_json(item, style, out, level + 1)?;
            }
            json_newline(style, out, level)?;
            out.push("}")
        }
        _ => Err(not_serializable(value)),
    }
}

fn json_number(value: &Value) -> String {
    if value.is_integer() {
        value.to_string()
    } else {
        py_float(f64::try_from(value.clone()).unwrap_or(f64::NAN), true)
    }
}

/// A map key as `json.dumps` converts it: strings as they are, numbers, booleans and None spelled.
fn json_key(key: &Value) -> Result<String, Error> {
    match key.kind() {
        ValueKind::String => Ok(key.as_str().unwrap_or_default().to_owned()),
        ValueKind::Number => Ok(json_number(key)),
        ValueKind::Bool => Ok(if key.is_true() { "true" } else { "false" }.to_owned()),
        ValueKind::None => Ok("null".to_owned()),
        _ => Err(Error::new(
            ErrorKind::InvalidOperation,
            format!(
                "tojson: keys must be str, int, float, bool or None, not {}",
                key.kind()
            ),
        )),
    }
}

/// A JSON string as Python writes it: `\"`, `\\`, `\n`, `\r`, `\t`, `\b`, `\f`, other controls
/// as `\u00XX`; with `ensure_ascii`, everything outside printable ASCII as `\uXXXX`.
fn json_string(s: &str, style: &JsonStyle, out: &mut Bounded) -> Result<(), Error> {
    // Escaping at most sextuples the text: refuse early what cannot fit.
    if out.s.len().saturating_add(s.len()) > out.max {
        return Err(too_large(out.max));
    }
    let mut buf = String::with_capacity(s.len() + 2);
    buf.push('"');
    for c in s.chars() {
        match c {
            '"' => buf.push_str("\\\""),
            '\\' => buf.push_str("\\\\"),
            '\n' => buf.push_str("\\n"),
            '\r' => buf.push_str("\\r"),
            '\t' => buf.push_str("\\t"),
            '\u{8}' => buf.push_str("\\b"),
            '\u{c}' => buf.push_str("\\f"),
            c if (c as u32) < 0x20 => {
                let _ = write!(buf, "\\u{:04x}", c as u32);
            }
            c if style.ensure_ascii && (c as u32) > 0x7e => {
                let mut units = [0u16; 2];
                for unit in c.encode_utf16(&mut units) {
                    let _ = write!(buf, "\\u{unit:04x}");
                }
            }
            c => buf.push(c),
        }
        if buf.len() > out.max {
            return Err(too_large(out.max));
        }
    }
    buf.push('"');
    out.push(&buf)
}

const WEEKDAYS: [&str; 7] = [
    "Sunday",
    "Monday",
    "Tuesday",
    "Wednesday",
    "Thursday",
    "Friday",
    "Saturday",
];
const MONTHS: [&str; 12] = [
    "January",
    "February",
    "March",
    "April",
    "May",
    "June",
    "July",
    "August",
    "September",
    "October",
    "November",
    "December",
];

/// The civil date (year, month 1..=12, day 1..=31) of a day count since 1970-01-01.
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

fn is_leap(year: i64) -> bool {
    (year % 4 == 0 && year % 100 != 0) || year % 400 == 0
}

/// Python's `strftime` for the time `secs` after the epoch, in UTC: `%Y %y %m %d %e %H %I %M %S
/// %p %j %a %A %b %B %h %%`, and glibc's `-` flag (`%-d`) that drops the padding. Anything else is
/// copied as it is.
fn strftime_utc(format: &str, secs: u64) -> String {
    let days = i64::try_from(secs / 86_400).unwrap_or(0);
    let rem = secs % 86_400;
    let (hour, minute, second) = (rem / 3600, rem / 60 % 60, rem % 60);
    let (year, month, day) = civil_from_days(days);
    let weekday = (days + 4).rem_euclid(7) as usize;
    let month_name = MONTHS[(month - 1) as usize];
    let cumulative = [0u32, 31, 59, 90, 120, 151, 181, 212, 243, 273, 304, 334];
    let yday = cumulative[(month - 1) as usize] + day + u32::from(month > 2 && is_leap(year));
    let hour12 = match hour % 12 {
        0 => 12,
        h => h,
    };

    let mut out = String::new();
    let mut chars = format.chars().peekable();
    while let Some(c) = chars.next() {
        if c != '%' {
            out.push(c);
            continue;
        }
        let unpadded = chars.peek() == Some(&'-');
        if unpadded {
            chars.next();
        }
        let Some(code) = chars.next() else {
            out.push('%');
            if unpadded {
                out.push('-');
            }
            break;
        };
        let num = |out: &mut String, n: u64, width: usize| {
            if unpadded {
                let _ = write!(out, "{n}");
            } else {
                let _ = write!(out, "{n:0width$}");
            }
        };
        match code {
            'Y' => {
                let _ = write!(out, "{year}");
            }
            'y' => num(&mut out, year.rem_euclid(100) as u64, 2),
            'm' => num(&mut out, month.into(), 2),
            'd' => num(&mut out, day.into(), 2),
            'e' => {
                if unpadded {
                    let _ = write!(out, "{day}");
                } else {
                    let _ = write!(out, "{day:2}");
                }
            }
            'H' => num(&mut out, hour, 2),
            'I' => num(&mut out, hour12, 2),
            'M' => num(&mut out, minute, 2),
            'S' => num(&mut out, second, 2),
            'p' => out.push_str(if hour < 12 { "AM" } else { "PM" }),
            'j' => num(&mut out, yday.into(), 3),
            'a' => out.push_str(&WEEKDAYS[weekday][..3]),
            'A' => out.push_str(WEEKDAYS[weekday]),
            'b' | 'h' => out.push_str(&month_name[..3]),
            'B' => out.push_str(month_name),
            '%' => out.push('%'),
            other => {
                out.push('%');
                if unpadded {
                    out.push('-');
                }
                out.push(other);
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn render_str(source: &str) -> Result<String, TemplateError> {
        let t = ChatTemplate::new(source, "<s>", "</s>", TemplateLimits::default())?;
        t.render(&RenderInput {
            messages: &[ChatMessage::text("user", "hi")],
            tools: &[],
            add_generation_prompt: false,
            enable_thinking: None,
        })
    }

    #[test]
    fn chat_template_is_send_and_sync() {
        fn assert_send_sync<T: Send + Sync>() {}
        assert_send_sync::<ChatTemplate>();
    }

    #[test]
    fn floats_are_written_as_python_writes_them() {
        let cases = [
            (0.0, "0.0"),
            (-0.0, "-0.0"),
            (1.0, "1.0"),
            (0.1, "0.1"),
            (1.5, "1.5"),
            (123.456, "123.456"),
            (1e15, "1000000000000000.0"),
            (1e16, "1e+16"),
            (1.5e16, "1.5e+16"),
            (0.0001, "0.0001"),
            (0.00001, "1e-05"),
            (1.25e-7, "1.25e-07"),
            (1e100, "1e+100"),
            (-2.5, "-2.5"),
            (f64::MAX, "1.7976931348623157e+308"),
        ];
        for (f, want) in cases {
            assert_eq!(py_float(f, true), want, "{f}");
        }
        assert_eq!(py_float(f64::NAN, true), "NaN");
        assert_eq!(py_float(f64::INFINITY, true), "Infinity");
        assert_eq!(py_float(f64::NEG_INFINITY, false), "-inf");
    }

    #[test]
    fn tojson_is_python_json_dumps() {
        let out = render_str(r#"{{ {"b": 1, "a": [1, 2.5, "x<y>&'"], "c": none, "d": true, "é": "ü\n\u0001"} | tojson }}"#)
            .unwrap();
        assert_eq!(
            out,
            r#"{"b": 1, "a": [1, 2.5, "x<y>&'"], "c": null, "d": true, "é": "ü\n\u0001"}"#
        );
        let out =
            render_str(r#"{{ {"b": 1, "a": [1, {}], "e": []} | tojson(indent=2) }}"#).unwrap();
        assert_eq!(
            out,
            "{\n  \"b\": 1,\n  \"a\": [\n    1,\n    {}\n  ],\n  \"e\": []\n}"
        );
        let out = render_str(
            r#"{{ {"b": "é😀", "a": 1} | tojson(ensure_ascii=true, sort_keys=true, separators=(",", ":")) }}"#,
        )
        .unwrap();
        assert_eq!(out, r#"{"a":1,"b":"\u00e9\ud83d\ude00"}"#);
        let out = render_str(r#"{{ [1] | tojson(indent="\t") }}"#).unwrap();
        assert_eq!(out, "[\n\t1\n]");
        assert!(matches!(
            render_str("{{ undefined_thing | tojson }}"),
            Err(TemplateError::Render(_))
        ));
        assert!(matches!(
            render_str("{{ 1 | tojson(bogus=1) }}"),
            Err(TemplateError::Render(_))
        ));
    }

    #[test]
    fn values_print_as_python_str() {
        let out = render_str(
            r#"{{ none }}|{{ true }}|{{ false }}|{{ 1.0 }}|{{ ["a", 1, none] }}|{{ {"k": "it's"} }}|{{ nothing }}|{{ none | string }}"#,
        )
        .unwrap();
        assert_eq!(
            out,
            r#"None|True|False|1.0|['a', 1, None]|{'k': "it's"}||None"#
        );
    }

    #[test]
    fn blocks_are_trimmed_like_transformers() {
        let out = render_str("{% for m in messages %}\n  {% if true %}\n[{{ m.role }}]\n  {% endif %}\n{% endfor %}\n").unwrap();
        assert_eq!(out, "[user]\n");
    }

    #[test]
    fn pycompat_methods_work() {
        let out = render_str(
            r#"{{ "  a b  ".strip() }}|{{ "abc".startswith("ab") }}|{{ "a,b".split(",") }}{% for k, v in {"x": 1}.items() %}|{{ k }}={{ v }}{% endfor %}"#,
        )
        .unwrap();
        assert_eq!(out, "a b|True|['a', 'b']|x=1");
    }

    #[test]
    fn strftime_formats_utc() {
        // 2024-02-29 13:05:09 UTC, a Thursday.
        let secs = 1_709_211_909;
        assert_eq!(
            strftime_utc(
                "%Y-%m-%d %H:%M:%S %a %A %b %B %j %y %I%p %-d %e %% %Q",
                secs
            ),
            "2024-02-29 13:05:09 Thu Thursday Feb February 060 24 01PM 29 29 % %Q"
        );
        assert_eq!(strftime_utc("%d %b %Y", 0), "01 Jan 1970");
        let out = render_str("{{ strftime_now('%Y') | length }}").unwrap();
        assert_eq!(out, "4");
    }

    #[test]
    fn raise_exception_message_is_kept_and_cut() {
        assert_eq!(
            render_str("{{ raise_exception('no system role') }}"),
            Err(TemplateError::Raised("no system role".into()))
        );
        match render_str("{{ raise_exception('x' * 100000) }}") {
            Err(TemplateError::Raised(m)) => assert!(m.len() < 2 * MAX_MESSAGE_BYTES),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn captured_output_counts_against_the_budget() {
        let limits = TemplateLimits {
            fuel: 10_000_000,
            max_output_bytes: 1 << 20,
        };
        let t = ChatTemplate::new(
            "{% macro m() %}{% for i in range(1000) %}{{ 'x' * 100000 }}{% endfor %}{% endmacro %}{% set s = m() %}ok",
            "",
            "",
            limits,
        )
        .unwrap();
        let out = t.render(&RenderInput {
            messages: &[],
            tools: &[],
            add_generation_prompt: false,
            enable_thinking: None,
        });
        assert_eq!(out, Err(TemplateError::TooLarge { max: 1 << 20 }));
    }

    #[test]
    fn codes_are_stable() {
        assert_eq!(
            TemplateError::Syntax(String::new()).code(),
            "template_syntax"
        );
        assert_eq!(
            TemplateError::Raised(String::new()).code(),
            "template_exception"
        );
        assert_eq!(TemplateError::OutOfFuel.code(), "template_fuel_exhausted");
        assert_eq!(
            TemplateError::TooLarge { max: 1 }.code(),
            "template_output_too_large"
        );
        assert_eq!(
            TemplateError::Render(String::new()).code(),
            "template_error"
        );
    }
}
