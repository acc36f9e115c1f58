//! What inhouse sends an upstream and how it reads the answer: a checked request written back
//! as an OpenAI request (the upstream's own model id in place of the name callers use), and the
//! upstream's streamed chunks read, typed and checked, into engine [`Event`]s.
//!
//! Every request to an upstream is streamed (`stream: true` with usage), even when the client
//! asked for one answer: the idle timeout then bounds every gap, the text is recorded as it
//! arrives, and a client that leaves cancels the upstream request at once.

use crate::engine::{
    ChatMessage, Event, FinishReason, GenerateRequest, OutputInfo, Prompt, ReasoningTags,
    SampledLogprob, TokenLogprob, ToolFormat,
};
use inhouse_formats::request::{ResponseFormat, ToolChoice};
use serde::Deserialize;
use serde_json::{json, Map, Value};

/// The tags an upstream's separate reasoning text is wrapped in, so that the API's output
/// parser gives it back as reasoning (and the record keeps it, as it does a local model's).
pub const THINK_OPEN: &str = "<think>";
/// See [`THINK_OPEN`].
pub const THINK_CLOSE: &str = "</think>";

/// Which OpenAI endpoint a request goes to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Flavor {
    /// `/v1/chat/completions`.
    Chat,
    /// `/v1/completions`.
    Text,
}

impl Flavor {
    /// The upstream path.
    pub fn path(self) -> &'static str {
        match self {
            Flavor::Chat => "/v1/chat/completions",
            Flavor::Text => "/v1/completions",
        }
    }
}

/// A request field inhouse does not forward, named for the 400 it gets.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Unsupported(pub &'static str);

fn message_json(m: &ChatMessage) -> Value {
    let mut v = json!({"role": m.role, "content": m.content});
    if !m.tool_calls.is_empty() {
        if m.content.is_empty() {
            v["content"] = Value::Null;
        }
        v["tool_calls"] = m
            .tool_calls
            .iter()
            .map(|c| {
                json!({"id": c.id, "type": "function",
                   "function": {"name": c.name, "arguments": c.arguments.to_string()}})
            })
            .collect();
    }
    if let Some(id) = &m.tool_call_id {
        v["tool_call_id"] = json!(id);
    }
    if let Some(name) = &m.name {
        v["name"] = json!(name);
    }
    v
}

/// The OpenAI request for `req`, sent to the upstream as its model `model`.
pub fn generate_body(req: &GenerateRequest, model: &str) -> Result<(Flavor, Value), Unsupported> {
    let sp = &req.sampling;
    let mut body = Map::new();
    body.insert("model".into(), json!(model));
    let flavor = match &req.prompt {
        Prompt::Chat(messages) => {
            body.insert(
                "messages".into(),
                messages.iter().map(message_json).collect(),
            );
            Flavor::Chat
        }
        Prompt::Text(text) => {
            body.insert("prompt".into(), json!(text));
            Flavor::Text
        }
    };
    body.insert("stream".into(), json!(true));
    body.insert("stream_options".into(), json!({"include_usage": true}));
    body.insert("max_tokens".into(), json!(req.max_tokens));
    body.insert("temperature".into(), json!(sp.temperature));
    body.insert("top_p".into(), json!(sp.top_p));
    body.insert("top_k".into(), json!(sp.top_k));
    body.insert("min_p".into(), json!(sp.min_p));
    body.insert("presence_penalty".into(), json!(sp.presence_penalty));
    body.insert("frequency_penalty".into(), json!(sp.frequency_penalty));
    body.insert("seed".into(), json!(sp.seed));
    if req.n > 1 {
        body.insert("n".into(), json!(req.n));
    }
    if !req.stop.is_empty() {
        body.insert("stop".into(), json!(req.stop));
    }
    if let Some(lp) = req.logprobs {
        if flavor == Flavor::Text {
            return Err(Unsupported("logprobs"));
        }
        body.insert("logprobs".into(), json!(true));
        body.insert("top_logprobs".into(), json!(lp.top));
    }
    if !req.logit_bias.is_empty() {
        let bias: Map<String, Value> = req
            .logit_bias
            .iter()
            .map(|(t, b)| (t.to_string(), json!(b)))
            .collect();
        body.insert("logit_bias".into(), Value::Object(bias));
    }
    match &req.format {
        ResponseFormat::Text => {}
        ResponseFormat::JsonObject => {
            body.insert("response_format".into(), json!({"type": "json_object"}));
        }
        ResponseFormat::JsonSchema { name, schema } => {
            body.insert(
                "response_format".into(),
                json!({"type": "json_schema", "json_schema": {"name": name, "schema": schema}}),
            );
        }
    }
    // Tools the model is shown: the upstream answers with structured calls, which
    // [`StreamReader`] writes back as Hermes-format text so that the API's own parser checks
    // them against the offered tools, as it does a local model's.
    if let Some(t) = req.tools.as_ref().filter(|t| t.choice != ToolChoice::None) {
        if flavor == Flavor::Text {
            return Err(Unsupported("tools"));
        }
        let tools: Vec<Value> = t
            .tools
            .iter()
            .map(|tool| {
                let mut f = json!({"name": tool.name, "parameters": tool.parameters});
                if let Some(d) = &tool.description {
                    f["description"] = json!(d);
                }
                json!({"type": "function", "function": f})
            })
            .collect();
        body.insert("tools".into(), Value::Array(tools));
        let choice = match &t.choice {
            ToolChoice::Auto | ToolChoice::None => json!("auto"),
            ToolChoice::Required => json!("required"),
            ToolChoice::Named(name) => json!({"type": "function", "function": {"name": name}}),
        };
        body.insert("tool_choice".into(), choice);
        body.insert("parallel_tool_calls".into(), json!(t.parallel));
    }
    if let Some(thinking) = req.thinking {
        body.insert(
            "chat_template_kwargs".into(),
            json!({"enable_thinking": thinking}),
        );
    }
    Ok((flavor, Value::Object(body)))
}

/// The OpenAI embeddings request for `inputs`.
pub fn embeddings_body(inputs: &[String], model: &str) -> Value {
    json!({"model": model, "input": inputs, "encoding_format": "float"})
}

/// Token counts an upstream reports.
#[derive(Debug, Clone, Copy, Deserialize, Default)]
pub struct Usage {
    /// Tokens in the prompt.
    #[serde(default)]
    pub prompt_tokens: u32,
    /// Tokens generated.
    #[serde(default)]
    pub completion_tokens: u32,
}

/// One streamed chunk, chat or text; fields beyond these are ignored.
#[derive(Debug, Deserialize)]
struct Chunk {
    choices: Option<Vec<ChunkChoice>>,
    usage: Option<Usage>,
    /// llama-server's and OpenAI's error event: `{"error": {"message": …}}`.
    error: Option<Value>,
    /// vLLM's error event: `{"object": "error", "message": …}`.
    object: Option<String>,
    message: Option<String>,
}

#[derive(Debug, Deserialize)]
struct ChunkChoice {
    index: u32,
    delta: Option<ChunkDelta>,
    text: Option<String>,
    finish_reason: Option<String>,
    logprobs: Option<ChunkLogprobs>,
}

#[derive(Debug, Deserialize)]
struct ChunkDelta {
    content: Option<String>,
    /// `reasoning_content` (llama-server, older vLLM) or `reasoning` (newer vLLM).
    #[serde(alias = "reasoning")]
    reasoning_content: Option<String>,
    tool_calls: Option<Vec<CallDelta>>,
}

/// A piece of a streamed tool call: the first names the function, the others add to its
/// arguments (JSON text).
#[derive(Debug, Deserialize)]
struct CallDelta {
    index: usize,
    function: Option<FunctionDelta>,
}

#[derive(Debug, Deserialize)]
struct FunctionDelta {
    name: Option<String>,
    arguments: Option<String>,
}

/// Most tool calls one choice may make.
const MAX_CALLS: usize = 128;

#[derive(Debug, Deserialize)]
struct ChunkLogprobs {
    content: Option<Vec<LogprobEntry>>,
}

#[derive(Debug, Deserialize)]
struct LogprobEntry {
    token: String,
    logprob: f32,
    #[serde(default)]
    bytes: Option<Vec<u8>>,
    #[serde(default)]
    top_logprobs: Vec<TopEntry>,
}

#[derive(Debug, Deserialize)]
struct TopEntry {
    token: String,
    logprob: f32,
    #[serde(default)]
    bytes: Option<Vec<u8>>,
}

fn token(text: String, logprob: f32, bytes: Option<Vec<u8>>) -> TokenLogprob {
    let bytes = bytes.unwrap_or_else(|| text.as_bytes().to_vec());
    TokenLogprob {
        token: text,
        bytes,
        logprob: if logprob.is_finite() {
            logprob.min(0.0)
        } else {
            f32::MIN
        },
    }
}

/// Why an upstream's stream is refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StreamError {
    /// Not the chunks asked for.
    Bad(String),
    /// More than the request allows.
    TooLong(String),
    /// The upstream reported an error in the stream.
    Upstream(String),
}

/// Text pieces an answer may hold beyond its `max_tokens`, per choice.
pub const TEXT_CHUNK_SLACK: u64 = 16;

/// Reads an upstream's chunks into events, checking them as it goes.
#[derive(Debug)]
pub struct StreamReader {
    flavor: Flavor,
    n: u32,
    /// Every chunk counts: a stream of more than this many is endless, whatever it holds.
    max_chunks: u64,
    chunks: u64,
    /// Content tokens an answer may hold, all choices together (bounds text chunks too: each
    /// carries at least one token).
    max_text_chunks: u64,
    text_chunks: u64,
    started: bool,
    /// Per choice: why it ended, once it did.
    ended: Vec<Option<FinishReason>>,
    /// Per choice: inside reasoning text.
    reasoning: Vec<bool>,
    /// Tools were offered: calls are expected (and written back as Hermes text).
    tools: bool,
    /// Per choice: the tool calls so far, (name, arguments text).
    calls: Vec<Vec<(String, String)>>,
    usage: Option<Usage>,
    done: bool,
}

impl StreamReader {
    /// A reader for `n` choices of at most `max_tokens` tokens each.
    pub fn new(flavor: Flavor, n: u32, max_tokens: u32) -> StreamReader {
        let n = n.max(1);
        // A piece holds at least one token, but one token may end up in two pieces (where a
        // reasoning block closes): a little slack on top of `max_tokens`.
        let max_text_chunks = u64::from(n) * (u64::from(max_tokens) + TEXT_CHUNK_SLACK);
        StreamReader {
            flavor,
            n,
            max_chunks: max_text_chunks * 2 + 64,
            chunks: 0,
            max_text_chunks,
            text_chunks: 0,
            started: false,
            ended: vec![None; n as usize],
            reasoning: vec![false; n as usize],
            tools: false,
            calls: vec![Vec::new(); n as usize],
            usage: None,
            done: false,
        }
    }

    /// A reader for a request that offered tools.
    pub fn with_tools(mut self, tools: bool) -> StreamReader {
        self.tools = tools;
        self
    }

    /// A choice's tool calls as the Hermes format writes them, in order; an error when one is
    /// not a named call with a JSON object of arguments.
    fn calls_text(&mut self, i: usize) -> Result<String, StreamError> {
        let mut text = String::new();
        for (name, arguments) in std::mem::take(&mut self.calls[i]) {
            if name.is_empty() {
                return Err(StreamError::Bad(
                    "a tool call without a function name".into(),
                ));
            }
            let arguments: Value = if arguments.trim().is_empty() {
                json!({})
            } else {
                serde_json::from_str(&arguments).map_err(|e| {
                    StreamError::Bad(format!("a tool call's arguments are not JSON: {e}"))
                })?
            };
            if !arguments.is_object() {
                return Err(StreamError::Bad(
                    "a tool call's arguments are not a JSON object".into(),
                ));
            }
            text.push_str(&format!(
                "<tool_call>\n{}\n</tool_call>",
                json!({"name": name, "arguments": arguments})
            ));
        }
        Ok(text)
    }

    /// `[DONE]` arrived.
    pub fn is_done(&self) -> bool {
        self.done
    }

    /// The first chunk was read (so [`Event::Started`] was sent).
    pub fn started(&self) -> bool {
        self.started
    }

    /// The events one `data` payload gives.
    pub fn data(&mut self, data: &str) -> Result<Vec<Event>, StreamError> {
        if self.done {
            return Err(StreamError::Bad("data after [DONE]".into()));
        }
        self.chunks += 1;
        if self.chunks > self.max_chunks {
            return Err(StreamError::TooLong(format!(
                "the answer ran past {} pieces without ending",
                self.max_chunks
            )));
        }
        let mut out = Vec::new();
        if data.trim() == "[DONE]" {
            self.done = true;
            if !self.started {
                return Err(StreamError::Bad(
                    "the stream ended before any answer".into(),
                ));
            }
            return self.finish();
        }
        let chunk: Chunk = serde_json::from_str(data)
            .map_err(|e| StreamError::Bad(format!("an event is not a completion chunk: {e}")))?;
        if let Some(err) = chunk.error {
            let message = err
                .get("message")
                .and_then(Value::as_str)
                .unwrap_or("no message");
            return Err(StreamError::Upstream(clean_message(message)));
        }
        if chunk.object.as_deref() == Some("error") {
            let message = chunk.message.as_deref().unwrap_or("no message");
            return Err(StreamError::Upstream(clean_message(message)));
        }
        if chunk.choices.is_none() && chunk.usage.is_none() {
            return Err(StreamError::Bad(
                "an event has neither choices nor usage".into(),
            ));
        }
        if !self.started {
            self.started = true;
            out.push(Event::Started {
                prompt_tokens: 0,
                output: OutputInfo {
                    tool_format: self.tools.then_some(ToolFormat::Hermes),
                    reasoning: (self.flavor == Flavor::Chat).then(|| ReasoningTags {
                        open: THINK_OPEN.into(),
                        close: THINK_CLOSE.into(),
                    }),
                    starts_in_reasoning: false,
                },
            });
        }
        if let Some(u) = chunk.usage {
            self.usage = Some(u);
        }
        for c in chunk.choices.unwrap_or_default() {
            if c.index >= self.n {
                return Err(StreamError::Bad(format!(
                    "choice {} of an answer with {} choices",
                    c.index, self.n
                )));
            }
            let i = c.index as usize;
            if self.ended[i].is_some() {
                return Err(StreamError::Bad(format!(
                    "choice {} continued after it ended",
                    c.index
                )));
            }
            let mut text = String::new();
            match self.flavor {
                Flavor::Chat => {
                    if let Some(d) = c.delta {
                        if let Some(r) = d.reasoning_content.filter(|r| !r.is_empty()) {
                            if !self.reasoning[i] {
                                self.reasoning[i] = true;
                                text.push_str(THINK_OPEN);
                            }
                            text.push_str(&r);
                        }
                        if let Some(t) = d.content.filter(|t| !t.is_empty()) {
                            if self.reasoning[i] {
                                self.reasoning[i] = false;
                                text.push_str(THINK_CLOSE);
                            }
                            text.push_str(&t);
                        }
                        for call in d.tool_calls.unwrap_or_default() {
                            if !self.tools {
                                return Err(StreamError::Bad(
                                    "a tool call when no tools were offered".into(),
                                ));
                            }
                            if call.index >= MAX_CALLS {
                                return Err(StreamError::TooLong(format!(
                                    "more than {MAX_CALLS} tool calls"
                                )));
                            }
                            let calls = &mut self.calls[i];
                            if calls.len() <= call.index {
                                calls.resize(call.index + 1, (String::new(), String::new()));
                            }
                            if let Some(f) = call.function {
                                let (name, arguments) = &mut calls[call.index];
                                if let Some(n) = f.name {
                                    name.push_str(&n);
                                }
                                if let Some(a) = f.arguments {
                                    arguments.push_str(&a);
                                }
                            }
                            // Each piece holds at least a token: bounded like text.
                            self.text_chunks += 1;
                            if self.text_chunks > self.max_text_chunks {
                                return Err(StreamError::TooLong(
                                    "the tool calls run past the tokens asked for".into(),
                                ));
                            }
                        }
                    }
                }
                Flavor::Text => {
                    if let Some(t) = c.text {
                        text = t;
                    }
                }
            }
            let logprobs: Vec<SampledLogprob> = c
                .logprobs
                .and_then(|l| l.content)
                .unwrap_or_default()
                .into_iter()
                .map(|e| SampledLogprob {
                    sampled: token(e.token, e.logprob, e.bytes),
                    top: e
                        .top_logprobs
                        .into_iter()
                        .map(|t| token(t.token, t.logprob, t.bytes))
                        .collect(),
                })
                .collect();
            if text.contains('\0') {
                return Err(StreamError::Bad("the answer holds a NUL character".into()));
            }
            if !text.is_empty() || !logprobs.is_empty() {
                self.text_chunks += 1;
                if self.text_chunks > self.max_text_chunks {
                    return Err(StreamError::TooLong(format!(
                        "the answer runs past the {} tokens asked for",
                        self.max_text_chunks - u64::from(self.n) * TEXT_CHUNK_SLACK
                    )));
                }
                out.push(Event::Text {
                    choice: c.index,
                    text,
                    logprobs,
                });
            }
            if let Some(reason) = c.finish_reason {
                let mut tail = String::new();
                if self.reasoning[i] {
                    self.reasoning[i] = false;
                    tail.push_str(THINK_CLOSE);
                }
                tail.push_str(&self.calls_text(i)?);
                if !tail.is_empty() {
                    out.push(Event::Text {
                        choice: c.index,
                        text: tail,
                        logprobs: vec![],
                    });
                }
                self.ended[i] = Some(match reason.as_str() {
                    "length" => FinishReason::Length,
                    _ => FinishReason::Stop,
                });
            }
        }
        Ok(out)
    }

    /// The stream ended (after `[DONE]`, or the upstream closed it): the `Finished` events, or
    /// an error when a choice never ended.
    pub fn finish(&mut self) -> Result<Vec<Event>, StreamError> {
        if let Some(i) = self.ended.iter().position(Option::is_none) {
            return Err(StreamError::Bad(format!(
                "the stream ended before choice {i} did"
            )));
        }
        let usage = self.usage.unwrap_or_default();
        // The usage is the whole answer's: choice 0 carries the count, so that the sum is right.
        Ok(self
            .ended
            .iter()
            .enumerate()
            .map(|(i, reason)| Event::Finished {
                choice: i as u32,
                reason: reason.unwrap_or(FinishReason::Stop),
                prompt_tokens: usage.prompt_tokens,
                completion_tokens: if i == 0 { usage.completion_tokens } else { 0 },
            })
            .collect())
    }
}

/// An upstream's message made safe to show: printable, short.
pub fn clean_message(m: &str) -> String {
    let mut s: String = m.chars().filter(|c| !c.is_control()).take(300).collect();
    if m.chars().count() > 300 {
        s.push('…');
    }
    s
}

/// The message of an upstream's error body, in OpenAI's, vLLM's or llama-server's shape.
pub fn error_message(body: &[u8]) -> Option<String> {
    let v: Value = serde_json::from_slice(body).ok()?;
    let m = v
        .pointer("/error/message")
        .or_else(|| v.get("message"))
        .or_else(|| v.get("detail"))
        .and_then(Value::as_str)?;
    Some(clean_message(m))
}

/// An upstream's embeddings answer.
#[derive(Debug, Deserialize)]
struct EmbeddingsAnswer {
    data: Vec<EmbeddingItem>,
    usage: Option<Usage>,
}

#[derive(Debug, Deserialize)]
struct EmbeddingItem {
    index: usize,
    embedding: Vec<f32>,
}

/// Reads and checks an embeddings answer for `n` inputs: one finite vector per input, all of
/// one width.
pub fn embeddings(body: &[u8], n: usize) -> Result<crate::engine::Embeddings, String> {
    let a: EmbeddingsAnswer =
        serde_json::from_slice(body).map_err(|e| format!("not an embeddings answer: {e}"))?;
    if a.data.len() != n {
        return Err(format!("{} vectors for {n} inputs", a.data.len()));
    }
    let mut vectors: Vec<Option<Vec<f32>>> = vec![None; n];
    let width = a.data.first().map_or(0, |d| d.embedding.len());
    for d in a.data {
        if d.index >= n || vectors[d.index].is_some() {
            return Err(format!("vector index {} is out of place", d.index));
        }
        if d.embedding.len() != width || width == 0 {
            return Err("vectors of different or zero widths".into());
        }
        if d.embedding.iter().any(|x| !x.is_finite()) {
            return Err("a vector holds a value that is not finite".into());
        }
        vectors[d.index] = Some(d.embedding);
    }
    Ok(crate::engine::Embeddings {
        vectors: vectors.into_iter().flatten().collect(),
        prompt_tokens: a.usage.map_or(0, |u| u.prompt_tokens),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::Sampling;

    fn req(prompt: Prompt) -> GenerateRequest {
        let sampling = Sampling {
            temperature: 0.0,
            top_p: 1.0,
            top_k: 40,
            min_p: 0.05,
            presence_penalty: 0.0,
            frequency_penalty: 0.0,
            seed: 7,
        };
        GenerateRequest::new(1000, "big", prompt, sampling, 16)
    }

    #[test]
    fn the_upstream_gets_its_own_model_id_and_a_streamed_request() {
        let r = req(Prompt::Chat(vec![ChatMessage::text("user", "hi")]));
        let (flavor, body) = generate_body(&r, "org/Model-70B").unwrap();
        assert_eq!(flavor, Flavor::Chat);
        assert_eq!(body["model"], "org/Model-70B");
        assert_eq!(body["messages"], json!([{"role": "user", "content": "hi"}]));
        assert_eq!(body["stream"], true);
        assert_eq!(body["stream_options"]["include_usage"], true);
        assert_eq!(body["max_tokens"], 16);
        assert_eq!(body["temperature"], 0.0);
        assert_eq!(body["seed"], 7);
        assert!(body.get("n").is_none() && body.get("tools").is_none());
        let (flavor, body) = generate_body(&req(Prompt::Text("x".into())), "m").unwrap();
        assert_eq!((flavor, flavor.path()), (Flavor::Text, "/v1/completions"));
        assert_eq!(body["prompt"], "x");
    }

    #[test]
    fn tools_are_forwarded_and_calls_come_back_as_hermes_text() {
        let mut r = req(Prompt::Chat(vec![ChatMessage::text("user", "hi")]));
        r.tools = Some(inhouse_formats::request::Tools {
            tools: vec![inhouse_formats::request::Tool {
                name: "f".into(),
                description: None,
                parameters: json!({"type": "object"}),
            }],
            choice: ToolChoice::Auto,
            parallel: true,
        });
        let (_, body) = generate_body(&r, "m").unwrap();
        assert_eq!(body["tools"][0]["function"]["name"], "f");
        assert_eq!(body["tool_choice"], "auto");
        assert_eq!(body["parallel_tool_calls"], true);
        r.prompt = Prompt::Text("x".into());
        assert_eq!(generate_body(&r, "m").unwrap_err(), Unsupported("tools"));

        let mut s = StreamReader::new(Flavor::Chat, 1, 8).with_tools(true);
        let piece = |v: Value| json!({"choices": [{"index": 0, "delta": v}]}).to_string();
        let started = s
            .data(&piece(
                json!({"tool_calls": [{"index": 0, "id": "a", "type": "function",
                "function": {"name": "weather", "arguments": ""}}]}),
            ))
            .unwrap();
        assert!(matches!(&started[0], Event::Started { output, .. }
            if output.tool_format == Some(ToolFormat::Hermes)));
        s.data(&piece(
            json!({"tool_calls": [{"index": 0, "function": {"arguments": "{\"city\": "}}]}),
        ))
        .unwrap();
        s.data(&piece(
            json!({"tool_calls": [{"index": 0, "function": {"arguments": "\"Paris\"}"}}]}),
        ))
        .unwrap();
        let end = json!({"choices": [{"index": 0, "delta": {}, "finish_reason": "tool_calls"}]});
        assert_eq!(
            s.data(&end.to_string()).unwrap(),
            vec![Event::text(
                "<tool_call>\n{\"name\":\"weather\",\"arguments\":{\"city\":\"Paris\"}}\n</tool_call>"
            )]
        );
        // Arguments that are not a JSON object are refused; calls nobody offered too.
        let mut s = StreamReader::new(Flavor::Chat, 1, 8).with_tools(true);
        s.data(&piece(json!({"tool_calls": [{"index": 0,
            "function": {"name": "f", "arguments": "[1"}}]})))
            .unwrap();
        assert!(matches!(s.data(&end.to_string()), Err(StreamError::Bad(_))));
        let mut s = StreamReader::new(Flavor::Chat, 1, 8);
        let call = piece(json!({"tool_calls": [{"index": 0, "function": {"name": "f"}}]}));
        assert!(matches!(s.data(&call), Err(StreamError::Bad(_))));
    }

    fn chunk(content: &str, finish: Option<&str>) -> String {
        json!({"choices": [{"index": 0, "delta": {"content": content}, "finish_reason": finish}]})
            .to_string()
    }

    #[test]
    fn a_stream_becomes_started_text_and_finished_with_its_usage() {
        let mut s = StreamReader::new(Flavor::Chat, 1, 8);
        let first = s.data(&chunk("", None)).unwrap();
        assert!(matches!(first.as_slice(), [Event::Started { .. }]));
        assert_eq!(
            s.data(&chunk("Hel", None)).unwrap(),
            vec![Event::text("Hel")]
        );
        assert_eq!(
            s.data(&chunk("lo", Some("length"))).unwrap(),
            vec![Event::text("lo")]
        );
        let usage = json!({"choices": [], "usage": {"prompt_tokens": 5, "completion_tokens": 2}});
        assert!(s.data(&usage.to_string()).unwrap().is_empty());
        let end = s.data("[DONE]").unwrap();
        assert_eq!(
            end,
            vec![Event::Finished {
                choice: 0,
                reason: FinishReason::Length,
                prompt_tokens: 5,
                completion_tokens: 2
            }]
        );
        assert!(s.is_done());
    }

    #[test]
    fn reasoning_is_wrapped_in_think_tags() {
        let mut s = StreamReader::new(Flavor::Chat, 1, 8);
        let r = json!({"choices": [{"index": 0, "delta": {"reasoning_content": "hmm"}}]});
        let got = s.data(&r.to_string()).unwrap();
        assert_eq!(got[1], Event::text("<think>hmm"));
        // Newer vLLM calls it `reasoning`.
        let r = json!({"choices": [{"index": 0, "delta": {"reasoning": ", so"}}]});
        assert_eq!(s.data(&r.to_string()).unwrap(), vec![Event::text(", so")]);
        assert_eq!(
            s.data(&chunk("ok", Some("stop"))).unwrap(),
            vec![Event::text("</think>ok")]
        );
    }

    #[test]
    fn bad_streams_are_refused() {
        let mut s = StreamReader::new(Flavor::Chat, 1, 8);
        assert!(matches!(s.data("not json"), Err(StreamError::Bad(_))));
        let mut s = StreamReader::new(Flavor::Chat, 1, 8);
        assert!(matches!(s.data("{\"x\": 1}"), Err(StreamError::Bad(_))));
        let mut s = StreamReader::new(Flavor::Chat, 1, 8);
        let other = json!({"choices": [{"index": 3, "delta": {"content": "x"}}]});
        assert!(matches!(
            s.data(&other.to_string()),
            Err(StreamError::Bad(_))
        ));
        let mut s = StreamReader::new(Flavor::Chat, 1, 8);
        s.data(&chunk("a", None)).unwrap();
        assert!(matches!(s.finish(), Err(StreamError::Bad(_))));
        let mut s = StreamReader::new(Flavor::Chat, 1, 8);
        let vllm = json!({"object": "error", "message": "CUDA out of memory", "code": 500});
        assert_eq!(
            s.data(&vllm.to_string()),
            Err(StreamError::Upstream("CUDA out of memory".into()))
        );
        let mut s = StreamReader::new(Flavor::Chat, 1, 8);
        let e = json!({"error": {"message": "boom\u{7}", "code": "x"}});
        assert_eq!(
            s.data(&e.to_string()),
            Err(StreamError::Upstream("boom".into()))
        );
    }

    #[test]
    fn an_endless_answer_is_cut_at_max_tokens() {
        let mut s = StreamReader::new(Flavor::Chat, 1, 4);
        for _ in 0..4 + TEXT_CHUNK_SLACK {
            s.data(&chunk("x", None)).unwrap();
        }
        assert!(matches!(
            s.data(&chunk("x", None)),
            Err(StreamError::TooLong(_))
        ));
        // Empty chunks forever are cut too.
        let mut s = StreamReader::new(Flavor::Chat, 1, 4);
        let mut r = Ok(vec![]);
        for _ in 0..1000 {
            r = s.data(&chunk("", None));
            if r.is_err() {
                break;
            }
        }
        assert!(matches!(r, Err(StreamError::TooLong(_))));
    }

    #[test]
    fn embeddings_are_checked() {
        let ok = json!({"data": [{"index": 1, "embedding": [0.0, 1.0]},
                                 {"index": 0, "embedding": [1.0, 0.0]}],
                        "usage": {"prompt_tokens": 3}});
        let e = embeddings(ok.to_string().as_bytes(), 2).unwrap();
        assert_eq!(e.vectors, vec![vec![1.0, 0.0], vec![0.0, 1.0]]);
        assert_eq!(e.prompt_tokens, 3);
        assert!(embeddings(ok.to_string().as_bytes(), 3).is_err());
        let ragged = json!({"data": [{"index": 0, "embedding": [0.0]},
                                     {"index": 1, "embedding": [0.0, 1.0]}]});
        assert!(embeddings(ragged.to_string().as_bytes(), 2).is_err());
        assert!(embeddings(b"garbage", 1).is_err());
    }

    #[test]
    fn upstream_error_messages_are_read_in_each_shape() {
        assert_eq!(
            error_message(br#"{"error":{"message":"too long","code":400}}"#).as_deref(),
            Some("too long")
        );
        assert_eq!(
            error_message(br#"{"object":"error","message":"bad model"}"#).as_deref(),
            Some("bad model")
        );
        assert_eq!(error_message(b"<html>"), None);
    }
}
