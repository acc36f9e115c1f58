use super::*;

use std::sync::Arc;
use std::time::Instant;

// ---------------------------------------------------------------------------------------------
// Fixtures.

fn weather() -> Tool {
    Tool {
        name: "get_weather".into(),
        description: Some("The weather in a city; braces { and quotes \" in // text #".into()),
        parameters: json!({
            "type": "object",
            "properties": {
                "city": { "type": "string", "description": "a city, e.g. {Paris}" },
                "unit": { "type": "string", "enum": ["celsius", "fahrenheit"] }
            },
            "required": ["city"],
            "additionalProperties": false
        }),
    }
}

fn time() -> Tool {
    Tool {
        name: "get_time".into(),
        description: None,
        parameters: json!({
            "type": "object",
            "properties": { "zone": { "type": "string" } },
            "required": ["zone"]
        }),
    }
}

fn cfg(format: Option<ToolFormat>) -> ParserConfig {
    ParserConfig {
        format,
        tools: vec![weather(), time()],
        id_prefix: "call_x_".into(),
        reasoning: None,
        starts_in_reasoning: false,
        recognise_bare: false,
    }
}

fn think() -> ReasoningTags {
    ReasoningTags {
        open: "<think>".into(),
        close: "</think>".into(),
    }
}

fn with_reasoning(mut c: ParserConfig, starts_in: bool) -> ParserConfig {
    c.reasoning = Some(think());
    c.starts_in_reasoning = starts_in;
    c
}

fn bare(mut c: ParserConfig) -> ParserConfig {
    c.recognise_bare = true;
    c
}

fn call(index: usize, name: &str, arguments: Value) -> ToolCall {
    ToolCall {
        id: format!("call_x_{index}"),
        name: name.into(),
        arguments,
    }
}

fn parsed(content: &str, reasoning: Option<&str>, calls: Vec<ToolCall>) -> Parsed {
    Parsed {
        content: content.into(),
        reasoning: reasoning.map(str::to_string),
        calls,
    }
}

/// Feeds `pieces` and finishes, checking the stream's own rules on the way.
fn stream(c: &ParserConfig, pieces: &[&str]) -> Vec<Delta> {
    let mut p = OutputParser::new(c.clone());
    let mut all = Vec::new();
    for piece in pieces {
        all.extend(p.feed(piece));
    }
    all.extend(p.finish());
    // Each call starts once, in order, and its arguments follow its start.
    let mut started = 0;
    for d in &all {
        match d {
            Delta::CallStart { index, id, .. } => {
                assert_eq!(*index, started, "{all:?}");
                assert_eq!(id, &format!("{}{index}", c.id_prefix));
                started += 1;
            }
            Delta::CallArguments { index, .. } => assert!(*index < started, "{all:?}"),
            Delta::Content(s) | Delta::Reasoning(s) => assert!(!s.is_empty(), "{all:?}"),
        }
    }
    all
}

/// parse_all of `text`, checked to equal the fold of the stream however the text is split:
/// one character at a time, in two pieces at every boundary, in pseudo-random chunks.
fn parse_checked(c: &ParserConfig, text: &str) -> Parsed {
    let whole = parse_all(c.clone(), text);
    let bounds: Vec<usize> = text
        .char_indices()
        .map(|(i, _)| i)
        .chain([text.len()])
        .collect();
    let chars: Vec<&str> = bounds.windows(2).map(|w| &text[w[0]..w[1]]).collect();
    assert_eq!(fold(stream(c, &chars)), whole, "char by char: {text:?}");
    for &b in &bounds {
        let (a, z) = text.split_at(b);
        assert_eq!(fold(stream(c, &[a, z])), whole, "split at {b}: {text:?}");
    }
    let mut rng = Rng(text.len() as u64 + 7);
    for _ in 0..8 {
        let mut pieces = Vec::new();
        let mut at = 0;
        while at < bounds.len() - 1 {
            let n = 1 + (rng.next() % 9) as usize;
            let end = (at + n).min(bounds.len() - 1);
            pieces.push(&text[bounds[at]..bounds[end]]);
            at = end;
        }
        assert_eq!(fold(stream(c, &pieces)), whole, "chunks {pieces:?}");
    }
    whole
}

/// A small deterministic generator (xorshift) for splits and fuzz inputs.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        let mut x = self.0 | 1;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.0 = x;
        x
    }
}

const HERMES: Option<ToolFormat> = Some(ToolFormat::Hermes);
const LLAMA3: Option<ToolFormat> = Some(ToolFormat::Llama3Json);
const MISTRAL: Option<ToolFormat> = Some(ToolFormat::Mistral);

fn paris() -> Value {
    json!({"city": "Paris"})
}

// ---------------------------------------------------------------------------------------------
// Detection.

/// A test model's chat template (`None`: the GGUF has none); the model must be there.
fn model_template(file: &str) -> Option<String> {
    let dir = std::env::var_os("INHOUSE_MODELS_DIR")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| {
            std::path::PathBuf::from(std::env::var_os("HOME").expect("HOME"))
                .join(".cache/inhouse/models")
        });
    let path = dir.join(file);
    let gguf = crate::gguf::open(&path).unwrap_or_else(|e| {
        panic!(
            "test model {} is missing or unreadable ({e}): run scripts/fetch-models",
            path.display()
        )
    });
    gguf.chat_template().map(str::to_string)
}

#[test]
fn detect_from_the_test_models_templates() {
    let qwen = model_template("qwen2.5-coder-0.5b-instruct-q4_k_m.gguf").expect("a template");
    assert_eq!(detect(&qwen), Some(ToolFormat::Hermes));
    assert_eq!(detect_reasoning(&qwen), None);
    for file in [
        "SmolLM2-135M-Instruct.Q4_1.gguf",
        "gemma-3-270m-q4_k_m.gguf",
    ] {
        // Gemma's GGUF carries no template (llama.cpp's built-in one renders it).
        let t = model_template(file).unwrap_or_default();
        assert_eq!(detect(&t), None, "{file}");
        assert_eq!(detect_reasoning(&t), None, "{file}");
    }
}

#[test]
fn detect_from_template_markers() {
    let llama31 = "{{- '<|start_header_id|>assistant<|end_header_id|>\\n\\n' -}}\
        {%- if builtin_tools is defined %}{{- '<|python_tag|>' }}{% endif %}";
    assert_eq!(detect(llama31), Some(ToolFormat::Llama3Json));
    let llama32 = "{{- '<|start_header_id|>user<|end_header_id|>\\n\\n' -}}\
        {{- 'Respond in the format {\"name\": function name, \"parameters\": dictionary of \
        argument name and its value}.' }}";
    assert_eq!(detect(llama32), Some(ToolFormat::Llama3Json));
    let llama30 = "{{ '<|start_header_id|>' + message['role'] + '<|end_header_id|>' }}";
    assert_eq!(detect(llama30), None);
    let mistral = "{%- if message.tool_calls %}{{- '[TOOL_CALLS] [' }}{% endif %}";
    assert_eq!(detect(mistral), Some(ToolFormat::Mistral));
    assert_eq!(detect(""), None);
}

#[test]
fn reasoning_tags_and_where_the_answer_starts() {
    let qwen3 = "{%- if enable_thinking is defined and enable_thinking is false %}\
        {{- '<think>\\n\\n</think>\\n\\n' }}{%- endif %}";
    assert_eq!(detect_reasoning(qwen3), Some(think()));
    let magistral = "[THINK]...[/THINK]";
    assert_eq!(
        detect_reasoning(magistral).map(|t| t.open),
        Some("[THINK]".to_string())
    );
    assert_eq!(
        detect_reasoning("<thinking></thinking>").map(|t| t.close),
        Some("</thinking>".to_string())
    );
    assert_eq!(detect_reasoning("no tags"), None);

    let t = think();
    assert!(starts_in_reasoning("<|im_start|>assistant\n<think>\n", &t));
    assert!(!starts_in_reasoning(
        "<|im_start|>assistant\n<think>\n\n</think>\n\n",
        &t
    ));
    assert!(!starts_in_reasoning("<|im_start|>assistant\n", &t));
    assert!(!starts_in_reasoning(
        "<think>unclosed in history\nuser: hi",
        &t
    ));
}

// ---------------------------------------------------------------------------------------------
// Plain text and reasoning.

#[test]
fn no_format_is_the_identity() {
    for text in [
        "",
        "  hello\n",
        "<tool_call>{\"name\":\"get_weather\"}</tool_call>",
        "{",
    ] {
        assert_eq!(
            parse_checked(&cfg(None), text),
            parsed(text, None, vec![]),
            "{text:?}"
        );
    }
}

#[test]
fn content_streams_early_holding_only_possible_markers() {
    let mut p = OutputParser::new(cfg(HERMES));
    assert_eq!(p.feed("Hello"), vec![Delta::Content("Hello".into())]);
    assert_eq!(p.feed(" wor<tool"), vec![Delta::Content(" wor".into())]);
    assert_eq!(p.feed("s are"), vec![Delta::Content("<tools are".into())]);
    assert_eq!(p.feed("\n"), vec![]);
    assert_eq!(p.finish(), vec![Delta::Content("\n".into())]);
}

#[test]
fn reasoning_is_split_from_content() {
    let c = with_reasoning(cfg(None), false);
    let text = "<think>\nThe user greets me.\n</think>\n\nHello!";
    assert_eq!(
        parse_checked(&c, text),
        parsed("Hello!", Some("The user greets me."), vec![])
    );
    // The prompt opened the block (DeepSeek-R1's generation prompt).
    let c = with_reasoning(cfg(None), true);
    assert_eq!(
        parse_checked(&c, "Thinking...</think>Hi"),
        parsed("Hi", Some("Thinking..."), vec![])
    );
    // Never closed: all of it is reasoning.
    assert_eq!(
        parse_checked(&c, "still </thin"),
        parsed("", Some("still </thin"), vec![])
    );
    // An opening tag after the start is content.
    let c = with_reasoning(cfg(None), false);
    assert_eq!(
        parse_checked(&c, "Use <think> tags"),
        parsed("Use <think> tags", None, vec![])
    );
    // Reasoning streams as it comes.
    let mut p = OutputParser::new(with_reasoning(cfg(None), false));
    assert_eq!(p.feed("<thi"), vec![]);
    assert_eq!(p.feed("nk>a"), vec![Delta::Reasoning("a".into())]);
    assert!(p.in_reasoning());
    assert_eq!(p.feed("b</th"), vec![Delta::Reasoning("b".into())]);
    assert_eq!(p.feed("ink>c"), vec![Delta::Content("c".into())]);
    assert!(!p.in_reasoning());
}

#[test]
fn reasoning_never_holds_calls() {
    let c = with_reasoning(cfg(HERMES), true);
    let text = "I could write <tool_call>{\"name\": \"get_weather\", \"arguments\": \
                {\"city\": \"Rome\"}}</tool_call> but</think>No.";
    assert_eq!(
        parse_checked(&c, text),
        parsed(
            "No.",
            Some(
                "I could write <tool_call>{\"name\": \"get_weather\", \"arguments\": \
                 {\"city\": \"Rome\"}}</tool_call> but"
            ),
            vec![]
        )
    );
}

// ---------------------------------------------------------------------------------------------
// Hermes.

#[test]
fn hermes_single_call() {
    let text = "<tool_call>\n{\"name\": \"get_weather\", \"arguments\": {\"city\": \"Paris\"}}\n</tool_call>";
    assert_eq!(
        parse_checked(&cfg(HERMES), text),
        parsed("", None, vec![call(0, "get_weather", paris())])
    );
    // The deltas: start (id, name) then the compact arguments.
    let d = stream(&cfg(HERMES), &[text]);
    assert_eq!(
        d,
        vec![
            Delta::CallStart {
                index: 0,
                id: "call_x_0".into(),
                name: "get_weather".into()
            },
            Delta::CallArguments {
                index: 0,
                fragment: "{\"city\":\"Paris\"}".into()
            }
        ]
    );
}

#[test]
fn hermes_parallel_calls() {
    let text = "<tool_call>\n{\"name\": \"get_weather\", \"arguments\": {\"city\": \"Paris\"}}\n</tool_call>\n\
                <tool_call>\n{\"name\": \"get_time\", \"arguments\": {\"zone\": \"CET\"}}\n</tool_call>\n";
    assert_eq!(
        parse_checked(&cfg(HERMES), text),
        parsed(
            "",
            None,
            vec![
                call(0, "get_weather", paris()),
                call(1, "get_time", json!({"zone": "CET"}))
            ]
        )
    );
}

#[test]
fn hermes_content_before_and_after_a_call() {
    let text = "Let me look.\n<tool_call>{\"name\":\"get_weather\",\"arguments\":{\"city\":\"Paris\"}}</tool_call>\nDone.";
    assert_eq!(
        parse_checked(&cfg(HERMES), text),
        parsed(
            "Let me look.Done.",
            None,
            vec![call(0, "get_weather", paris())]
        )
    );
}

#[test]
fn hermes_reasoning_then_a_call() {
    let c = with_reasoning(cfg(HERMES), false);
    let text = "<think>\nThe user wants the weather.\n</think>\n\n<tool_call>\n{\"name\": \"get_weather\", \"arguments\": {\"city\": \"Paris\", \"unit\": \"celsius\"}}\n</tool_call>";
    assert_eq!(
        parse_checked(&c, text),
        parsed(
            "",
            Some("The user wants the weather."),
            vec![call(
                0,
                "get_weather",
                json!({"city": "Paris", "unit": "celsius"})
            )]
        )
    );
}

#[test]
fn hermes_malformed_calls_stay_content() {
    let cases = [
        // Bad JSON.
        "<tool_call>\n{\"name\": \"get_weather\", \"arguments\": {\"city\": Paris}}\n</tool_call>",
        // Not JSON at all.
        "<tool_call>get_weather(city=Paris)</tool_call>",
        // An unknown tool.
        "<tool_call>{\"name\": \"rm_rf\", \"arguments\": {}}</tool_call>",
        // Arguments the schema refuses (missing `city`, an unknown key, a bad enum value).
        "<tool_call>{\"name\": \"get_weather\", \"arguments\": {}}</tool_call>",
        "<tool_call>{\"name\": \"get_weather\", \"arguments\": {\"city\": \"P\", \"x\": 1}}</tool_call>",
        "<tool_call>{\"name\": \"get_weather\", \"arguments\": {\"city\": \"P\", \"unit\": \"kelvin\"}}</tool_call>",
        // Arguments that are not an object.
        "<tool_call>{\"name\": \"get_weather\", \"arguments\": [1]}</tool_call>",
        // Cut off by the token limit.
        "<tool_call>\n{\"name\": \"get_weather\", \"arguments\": {\"city\": \"Par",
        "Text then <tool_call>",
        "<tool_call>{\"name\": \"get_weather\"}}}",
    ];
    for text in cases {
        assert_eq!(
            parse_checked(&cfg(HERMES), text),
            parsed(text, None, vec![]),
            "{text:?}"
        );
    }
    // A malformed call does not hide a good one after it.
    let text = "<tool_call>{oops}</tool_call>\n<tool_call>{\"name\":\"get_time\",\"arguments\":{\"zone\":\"UTC\"}}</tool_call>";
    assert_eq!(
        parse_checked(&cfg(HERMES), text),
        parsed(
            "<tool_call>{oops}</tool_call>",
            None,
            vec![call(0, "get_time", json!({"zone": "UTC"}))]
        )
    );
}

#[test]
fn hermes_tolerated_variants() {
    // No closing tag at the end; arguments as a JSON string; `parameters` for `arguments`.
    for text in [
        "<tool_call>\n{\"name\": \"get_weather\", \"arguments\": {\"city\": \"Paris\"}}\n",
        "<tool_call>\n{\"name\": \"get_weather\", \"arguments\": {\"city\": \"Paris\"}}\n</tool_",
        "<tool_call>{\"name\": \"get_weather\", \"arguments\": \"{\\\"city\\\": \\\"Paris\\\"}\"}</tool_call>",
        "<tool_call>{\"name\": \"get_weather\", \"parameters\": {\"city\": \"Paris\"}}</tool_call>",
    ] {
        assert_eq!(
            parse_checked(&cfg(HERMES), text),
            parsed("", None, vec![call(0, "get_weather", paris())]),
            "{text:?}"
        );
    }
    // Omitted arguments are `{}` (valid for a tool without required arguments).
    let mut c = cfg(HERMES);
    c.tools.push(Tool {
        name: "ping".into(),
        description: None,
        parameters: json!({"type": "object", "properties": {}}),
    });
    assert_eq!(
        parse_checked(&c, "<tool_call>{\"name\": \"ping\"}</tool_call>"),
        parsed("", None, vec![call(0, "ping", json!({}))])
    );
}

#[test]
fn hermes_unicode_arguments() {
    let text = "Voilà : <tool_call>\n{\"name\": \"get_weather\", \"arguments\": {\"city\": \"Zürich 🌧 東京 \\u00e9 \\\"q\\\" }{\"}}\n</tool_call>";
    let p = parse_checked(&cfg(HERMES), text);
    assert_eq!(
        p,
        parsed(
            "Voilà :",
            None,
            vec![call(
                0,
                "get_weather",
                json!({"city": "Zürich 🌧 東京 é \"q\" }{"})
            )]
        )
    );
    let d = stream(&cfg(HERMES), &[text]);
    assert!(d.contains(&Delta::CallArguments {
        index: 0,
        fragment: "{\"city\":\"Zürich 🌧 東京 é \\\"q\\\" }{\"}".into()
    }));
}

// ---------------------------------------------------------------------------------------------
// Llama 3 JSON.

#[test]
fn llama3_single_call() {
    for text in [
        "{\"name\": \"get_weather\", \"parameters\": {\"city\": \"Paris\"}}",
        "\n{\"name\": \"get_weather\", \"parameters\": {\"city\": \"Paris\"}}\n",
        "<|python_tag|>{\"name\": \"get_weather\", \"parameters\": {\"city\": \"Paris\"}}",
        "{ \"name\": \"get_weather\", \"parameters\": {\"city\": \"Paris\"} }",
        "{\"type\": \"function\", \"name\": \"get_weather\", \"parameters\": {\"city\": \"Paris\"}}",
    ] {
        assert_eq!(
            parse_checked(&cfg(LLAMA3), text),
            parsed("", None, vec![call(0, "get_weather", paris())]),
            "{text:?}"
        );
    }
}

#[test]
fn llama3_parallel_calls() {
    let text = "{\"name\": \"get_weather\", \"parameters\": {\"city\": \"Paris\"}}; {\"name\": \"get_time\", \"parameters\": {\"zone\": \"CET\"}}";
    let want = parsed(
        "",
        None,
        vec![
            call(0, "get_weather", paris()),
            call(1, "get_time", json!({"zone": "CET"})),
        ],
    );
    assert_eq!(parse_checked(&cfg(LLAMA3), text), want);
    let newline = text.replace("; ", "\n");
    assert_eq!(parse_checked(&cfg(LLAMA3), &newline), want);
}

#[test]
fn llama3_content_before_a_call() {
    let text = "Checking now. {\"name\": \"get_weather\", \"parameters\": {\"city\": \"Paris\"}}";
    assert_eq!(
        parse_checked(&cfg(LLAMA3), text),
        parsed("Checking now.", None, vec![call(0, "get_weather", paris())])
    );
    let text = "Checking. <|python_tag|>{\"name\": \"get_weather\", \"parameters\": {\"city\": \"Paris\"}}";
    assert_eq!(
        parse_checked(&cfg(LLAMA3), text),
        parsed("Checking.", None, vec![call(0, "get_weather", paris())])
    );
}

#[test]
fn llama3_reasoning_then_a_call() {
    let c = with_reasoning(cfg(LLAMA3), true);
    let text = "weather needed\n</think>\n{\"name\": \"get_weather\", \"parameters\": {\"city\": \"Paris\"}}";
    assert_eq!(
        parse_checked(&c, text),
        parsed(
            "",
            Some("weather needed"),
            vec![call(0, "get_weather", paris())]
        )
    );
}

#[test]
fn llama3_malformed_calls_stay_content() {
    for text in [
        "{\"name\": \"get_weather\", \"parameters\": {\"city\": }}",
        "{\"name\": \"nope\", \"parameters\": {}}",
        "{\"name\": \"get_weather\", \"parameters\": {\"city\": 3}}",
        "{\"answer\": 42}",
        "<|python_tag|>brave_search.call(query=\"x\")",
        "Use {\"name\": \"x\"} as the key",
        "{\"name\": \"get_weather\", \"parameters\": {\"city\": \"Par",
    ] {
        assert_eq!(
            parse_checked(&cfg(LLAMA3), text),
            parsed(text, None, vec![]),
            "{text:?}"
        );
    }
}

#[test]
fn llama3_unicode_arguments() {
    let text = "{\"name\": \"get_weather\", \"parameters\": {\"city\": \"São Paulo ☀\"}}";
    assert_eq!(
        parse_checked(&cfg(LLAMA3), text),
        parsed(
            "",
            None,
            vec![call(0, "get_weather", json!({"city": "São Paulo ☀"}))]
        )
    );
}

// ---------------------------------------------------------------------------------------------
// Mistral.

#[test]
fn mistral_single_call() {
    for text in [
        "[TOOL_CALLS][{\"name\": \"get_weather\", \"arguments\": {\"city\": \"Paris\"}}]",
        "[TOOL_CALLS] [{\"name\": \"get_weather\", \"arguments\": {\"city\": \"Paris\"}}]",
        "[TOOL_CALLS]{\"name\": \"get_weather\", \"arguments\": {\"city\": \"Paris\"}}",
    ] {
        assert_eq!(
            parse_checked(&cfg(MISTRAL), text),
            parsed("", None, vec![call(0, "get_weather", paris())]),
            "{text:?}"
        );
    }
}

#[test]
fn mistral_parallel_calls() {
    let text = "[TOOL_CALLS][{\"name\": \"get_weather\", \"arguments\": {\"city\": \"Paris\"}}, {\"name\": \"get_time\", \"arguments\": {\"zone\": \"CET\"}}]";
    assert_eq!(
        parse_checked(&cfg(MISTRAL), text),
        parsed(
            "",
            None,
            vec![
                call(0, "get_weather", paris()),
                call(1, "get_time", json!({"zone": "CET"}))
            ]
        )
    );
}

#[test]
fn mistral_content_before_a_call() {
    let text =
        "Sure.[TOOL_CALLS][{\"name\": \"get_weather\", \"arguments\": {\"city\": \"Paris\"}}]";
    assert_eq!(
        parse_checked(&cfg(MISTRAL), text),
        parsed("Sure.", None, vec![call(0, "get_weather", paris())])
    );
}

#[test]
fn mistral_reasoning_then_a_call() {
    let mut c = cfg(MISTRAL);
    c.reasoning = Some(ReasoningTags {
        open: "[THINK]".into(),
        close: "[/THINK]".into(),
    });
    let text = "[THINK]Weather, so a call.[/THINK][TOOL_CALLS][{\"name\": \"get_weather\", \"arguments\": {\"city\": \"Paris\"}}]";
    assert_eq!(
        parse_checked(&c, text),
        parsed(
            "",
            Some("Weather, so a call."),
            vec![call(0, "get_weather", paris())]
        )
    );
}

#[test]
fn mistral_malformed_calls_stay_content() {
    for text in [
        "[TOOL_CALLS][{\"name\": \"get_weather\", \"arguments\": {\"city\": \"Paris\"}}, {\"name\": \"nope\", \"arguments\": {}}]",
        "[TOOL_CALLS][]",
        "[TOOL_CALLS]get_weather[ARGS]{\"city\": \"Paris\"}",
        "[TOOL_CALLS][{\"name\": \"get_weather\", \"arguments\": {\"city\": \"Paris\"}",
        "[TOOL_CALLS][1, 2]",
    ] {
        assert_eq!(
            parse_checked(&cfg(MISTRAL), text),
            parsed(text, None, vec![]),
            "{text:?}"
        );
    }
}

#[test]
fn mistral_unicode_arguments() {
    let text = "[TOOL_CALLS][{\"name\": \"get_weather\", \"arguments\": {\"city\": \"Kraków ❄\"}}]";
    assert_eq!(
        parse_checked(&cfg(MISTRAL), text),
        parsed(
            "",
            None,
            vec![call(0, "get_weather", json!({"city": "Kraków ❄"}))]
        )
    );
}

// ---------------------------------------------------------------------------------------------
// Bare and fenced calls.

#[test]
fn bare_and_fenced_calls_recognised_when_valid() {
    let good = [
        "{\"name\": \"get_weather\", \"arguments\": {\"city\": \"Paris\"}}",
        "  {\"name\": \"get_weather\", \"parameters\": {\"city\": \"Paris\"}}\n",
        "[{\"name\": \"get_weather\", \"arguments\": {\"city\": \"Paris\"}}]",
        "```json\n{\"name\": \"get_weather\", \"arguments\": {\"city\": \"Paris\"}}\n```",
        "```\n{\"name\": \"get_weather\", \"arguments\": {\"city\": \"Paris\"}}\n```\n",
    ];
    for format in [None, HERMES, MISTRAL, LLAMA3] {
        let c = bare(cfg(format));
        for text in good {
            assert_eq!(
                parse_checked(&c, text),
                parsed("", None, vec![call(0, "get_weather", paris())]),
                "{format:?} {text:?}"
            );
        }
    }
    let two = "```json\n[{\"name\": \"get_weather\", \"arguments\": {\"city\": \"Paris\"}}, {\"name\": \"get_time\", \"arguments\": {\"zone\": \"CET\"}}]\n```";
    assert_eq!(parse_checked(&bare(cfg(HERMES)), two).calls.len(), 2);
    // After reasoning, too.
    let c = with_reasoning(bare(cfg(HERMES)), false);
    assert_eq!(
        parse_checked(&c, &format!("<think>hm</think>\n{}", good[3])),
        parsed("", Some("hm"), vec![call(0, "get_weather", paris())])
    );
}

#[test]
fn bare_and_fenced_objects_not_calls_stay_content() {
    let bad = [
        // Unknown tool, invalid arguments, not a call shape.
        "{\"name\": \"nope\", \"arguments\": {}}",
        "{\"name\": \"get_weather\", \"arguments\": {\"town\": \"Paris\"}}",
        "{\"name\": \"Ada\", \"age\": 36}",
        "[1, 2, 3]",
        // Followed or preceded by text.
        "{\"name\": \"get_weather\", \"arguments\": {\"city\": \"Paris\"}} is the call",
        "The call: {\"name\": \"get_weather\", \"arguments\": {\"city\": \"Paris\"}}",
        // Another language in the fence, text after it, an unclosed fence.
        "```python\nprint({\"name\": 1})\n```",
        "```json\n{\"name\": \"get_weather\", \"arguments\": {\"city\": \"Paris\"}}\n```\nThere.",
        "```json\n{\"name\": \"get_weather\", \"arguments\": {\"city\": \"Paris\"}}",
        "``",
        "{",
    ];
    for text in bad {
        assert_eq!(
            parse_checked(&bare(cfg(HERMES)), text),
            parsed(text, None, vec![]),
            "{text:?}"
        );
    }
    // Without `recognise_bare`, a valid bare object is content too.
    let text = "{\"name\": \"get_weather\", \"arguments\": {\"city\": \"Paris\"}}";
    assert_eq!(
        parse_checked(&cfg(HERMES), text),
        parsed(text, None, vec![])
    );
}

#[test]
fn bare_unicode_arguments() {
    let text = "```json\n{\"name\": \"get_weather\", \"arguments\": {\"city\": \"Ελλάδα 🏛\"}}\n```";
    assert_eq!(
        parse_checked(&bare(cfg(None)), text),
        parsed(
            "",
            None,
            vec![call(0, "get_weather", json!({"city": "Ελλάδα 🏛"}))]
        )
    );
}

// ---------------------------------------------------------------------------------------------
// Bounds and hostile text.

#[test]
fn bounds_hold() {
    // Long whitespace runs are sent, not held; the result does not depend on the split.
    let ws = " ".repeat(MAX_HELD_WHITESPACE + 10);
    let text = format!(
        "a{ws}<tool_call>{{\"name\":\"get_time\",\"arguments\":{{\"zone\":\"U\"}}}}</tool_call>"
    );
    let p = parse_all(cfg(HERMES), &text);
    assert_eq!(p.content, format!("a{ws}"));
    assert_eq!(p.calls.len(), 1);
    let mut s = OutputParser::new(cfg(HERMES));
    let mut d = Vec::new();
    for piece in text.as_bytes().chunks(1000) {
        d.extend(s.feed(std::str::from_utf8(piece).expect("ascii")));
    }
    d.extend(s.finish());
    assert_eq!(fold(d), p);

    // Whitespace past the bound before a closing tag: the call stands, the tag is content,
    // however the text is split.
    let text = format!(
        "<tool_call>{{\"name\":\"get_time\",\"arguments\":{{\"zone\":\"U\"}}}}{ws}</tool_call>"
    );
    let p = parse_all(cfg(HERMES), &text);
    assert_eq!((p.content.as_str(), p.calls.len()), ("</tool_call>", 1));
    let mut s = OutputParser::new(cfg(HERMES));
    let mut d = Vec::new();
    for piece in text.as_bytes().chunks(7) {
        d.extend(s.feed(std::str::from_utf8(piece).expect("ascii")));
    }
    d.extend(s.finish());
    assert_eq!(fold(d), p);

    // Deep nesting and huge calls are content, not a crash.
    let deep = format!("<tool_call>{}", "[".repeat(10_000));
    assert_eq!(parse_all(cfg(HERMES), &deep).content, deep);
    let deep_bare = "[".repeat(10_000);
    assert_eq!(parse_all(bare(cfg(None)), &deep_bare).content, deep_bare);
    let huge = format!(
        "<tool_call>{{\"name\":\"get_time\",\"arguments\":{{\"zone\":\"{}\"}}}}</tool_call>",
        "z".repeat(MAX_CALL_BYTES)
    );
    let p = parse_all(cfg(HERMES), &huge);
    assert_eq!((p.content.len(), p.calls.len()), (huge.len(), 0));

    // At most MAX_CALLS calls; the rest is content.
    let one = "<tool_call>{\"name\":\"get_time\",\"arguments\":{\"zone\":\"U\"}}</tool_call>";
    let many = one.repeat(MAX_CALLS + 2);
    let p = parse_all(cfg(HERMES), &many);
    assert_eq!(p.calls.len(), MAX_CALLS);
    assert_eq!(p.content, one.repeat(2));
    let ids: std::collections::HashSet<_> = p.calls.iter().map(|c| c.id.clone()).collect();
    assert_eq!(ids.len(), MAX_CALLS);
}

#[test]
fn random_marker_soup_never_panics_and_never_depends_on_the_split() {
    let atoms = [
        "<tool_call>",
        "</tool_call>",
        "[TOOL_CALLS]",
        "<|python_tag|>",
        "{\"name\"",
        "<think>",
        "</think>",
        "```",
        "json\n",
        "{",
        "}",
        "[",
        "]",
        "\"",
        "\\",
        ":",
        ",",
        ";",
        " ",
        "\n",
        "get_weather",
        "\"get_time\"",
        "\"arguments\"",
        "\"parameters\"",
        "\"city\"",
        "é",
        "🌧",
        "{\"name\": \"get_time\", \"arguments\": {\"zone\": \"Z\"}}",
        "x",
        "<",
        "`",
    ];
    let mut rng = Rng(0x5eed);
    for round in 0..300 {
        let n = 1 + (rng.next() % 14) as usize;
        let text: String = (0..n)
            .map(|_| atoms[(rng.next() % atoms.len() as u64) as usize])
            .collect();
        let format = [None, HERMES, LLAMA3, MISTRAL][round % 4];
        let mut c = cfg(format);
        c.recognise_bare = round % 3 == 0;
        if round % 5 == 0 {
            c = with_reasoning(c, round % 10 == 0);
        }
        let p = parse_checked(&c, &text);
        // Nothing is lost: content, reasoning and calls hold at most the input's text.
        assert!(p.content.len() + p.reasoning.map_or(0, |r| r.len()) <= text.len());
        for call in &p.calls {
            assert!(call.arguments.is_object());
        }
    }
}

#[test]
fn schemas_the_validator_cannot_use() {
    let mut deep = json!({"type": "string"});
    for _ in 0..(MAX_SCHEMA_DEPTH + 5) {
        deep = json!({"type": "object", "properties": {"a": deep}});
    }
    assert_eq!(
        check_parameters(&deep),
        Err(SchemaError::TooDeep {
            max: MAX_SCHEMA_DEPTH
        })
    );
    assert!(matches!(
        check_parameters(
            &json!({"type": "object", "properties": {"a": {"$ref": "https://example.invalid/s.json"}}})
        ),
        Err(SchemaError::Invalid(_))
    ));
    assert!(matches!(
        check_parameters(&json!({"type": 12})),
        Err(SchemaError::Invalid(_))
    ));
    assert_eq!(check_parameters(&weather().parameters), Ok(()));

    // A call of a tool whose schema cannot be compiled is content.
    let mut c = cfg(HERMES);
    c.tools[1].parameters = deep;
    let text = "<tool_call>{\"name\": \"get_time\", \"arguments\": {}}</tool_call>";
    assert_eq!(parse_checked(&c, text), parsed(text, None, vec![]));

    // A backtracking pattern is checked in bounded time.
    let mut c = cfg(HERMES);
    c.tools[1].parameters =
        json!({"type": "object", "properties": {"zone": {"type": "string", "pattern": "^(a+)+$"}}});
    let text = format!(
        "<tool_call>{{\"name\": \"get_time\", \"arguments\": {{\"zone\": \"{}b\"}}}}</tool_call>",
        "a".repeat(40)
    );
    let t = Instant::now();
    let p = parse_all(c, &text);
    assert!(p.calls.is_empty());
    assert!(t.elapsed().as_secs() < 5, "{:?}", t.elapsed());
}

// ---------------------------------------------------------------------------------------------
// Grammars, compiled and run with llguidance over a byte-level vocabulary.

const EOS: u32 = 256;

fn tok_env() -> toktrie::TokEnv {
    let mut words: Vec<Vec<u8>> = (0..=255u8).map(|b| vec![b]).collect();
    words.push(b"\xFF<|eos|>".to_vec());
    let info = toktrie::TokRxInfo::new(words.len() as u32, EOS);
    Arc::new(toktrie::ApproximateTokEnv::new(toktrie::TokTrie::from(
        &info, &words,
    )))
}

fn matcher(lark: &str) -> llguidance::Matcher {
    let mut factory = llguidance::ParserFactory::new_simple(&tok_env()).expect("factory");
    factory.quiet();
    let parser = factory
        .create_parser(llguidance::api::TopLevelGrammar::from_lark(
            lark.to_string(),
        ))
        .unwrap_or_else(|e| panic!("grammar does not compile: {e}\n{lark}"));
    llguidance::Matcher::new(Ok(parser))
}

/// Whether the grammar accepts exactly `text`, fed one byte token at a time, then EOS.
fn accepts(lark: &str, text: &str) -> Result<(), String> {
    let mut m = matcher(lark);
    for (i, b) in text.bytes().enumerate() {
        let mask = m.compute_mask().map_err(|e| e.to_string())?;
        if !mask.is_allowed(b as u32) {
            return Err(format!(
                "byte {i} ({:?}) refused after {:?}",
                b as char,
                &text[..i]
            ));
        }
        m.consume_token(b as u32).map_err(|e| e.to_string())?;
    }
    let mask = m.compute_mask_or_eos().map_err(|e| e.to_string())?;
    if mask.is_allowed(EOS) && m.is_accepting().map_err(|e| e.to_string())? {
        Ok(())
    } else {
        Err(format!("not complete after {text:?}"))
    }
}

fn tools(choice: ToolChoice, parallel: bool) -> Tools {
    Tools {
        tools: vec![weather(), time()],
        choice,
        parallel,
    }
}

const W_ARGS: &str = "{\"city\": \"Paris\", \"unit\": \"celsius\"}";

/// One call's text in a format.
fn call_text(format: ToolFormat, name: &str, args: &str) -> String {
    let key = format.arguments_key();
    let obj = format!("{{\"name\": \"{name}\", \"{key}\": {args}}}");
    match format {
        ToolFormat::Hermes => format!("<tool_call>\n{obj}\n</tool_call>"),
        ToolFormat::Llama3Json => obj,
        ToolFormat::Mistral => format!("[TOOL_CALLS][{obj}]"),
    }
}

/// Several calls' text in a format.
fn calls_text(format: ToolFormat, calls: &[(&str, &str)]) -> String {
    let key = format.arguments_key();
    let objs: Vec<String> = calls
        .iter()
        .map(|(n, a)| format!("{{\"name\": \"{n}\", \"{key}\": {a}}}"))
        .collect();
    match format {
        ToolFormat::Hermes => objs
            .iter()
            .map(|o| format!("<tool_call>\n{o}\n</tool_call>"))
            .collect::<Vec<_>>()
            .join("\n"),
        ToolFormat::Llama3Json => objs.join("; "),
        ToolFormat::Mistral => format!("[TOOL_CALLS][{}]", objs.join(", ")),
    }
}

const FORMATS: [ToolFormat; 3] = [
    ToolFormat::Hermes,
    ToolFormat::Llama3Json,
    ToolFormat::Mistral,
];

#[test]
fn no_grammar_without_calls() {
    for f in FORMATS {
        assert_eq!(call_grammar(f, &tools(ToolChoice::None, true)), None);
        assert_eq!(
            call_grammar(f, &tools(ToolChoice::Named("absent".into()), true)),
            None
        );
    }
}

#[test]
fn required_grammars_accept_calls_and_refuse_the_rest() {
    for f in FORMATS {
        let g = call_grammar(f, &tools(ToolChoice::Required, true)).expect("grammar");
        assert_eq!(g.trigger, None);
        let one = call_text(f, "get_weather", W_ARGS);
        accepts(&g.lark, &one).unwrap_or_else(|e| panic!("{f:?}: {e}\n{}", g.lark));
        let compact = call_text(f, "get_time", "{\"zone\":\"CET\"}").replace(": ", ":");
        accepts(&g.lark, &compact).unwrap_or_else(|e| panic!("{f:?}: {e}"));
        let two = calls_text(
            f,
            &[("get_weather", W_ARGS), ("get_time", "{\"zone\": \"CET\"}")],
        );
        accepts(&g.lark, &two).unwrap_or_else(|e| panic!("{f:?}: {e}"));
        // What the parser makes of it.
        assert_eq!(parse_all(cfg(Some(f)), &two).calls.len(), 2);

        for bad in [
            // Schema violations: a wrong type, an unknown key, a bad enum value, none at all.
            call_text(f, "get_weather", "{\"city\": 3}"),
            call_text(f, "get_weather", "{\"city\": \"P\", \"x\": 1}"),
            call_text(f, "get_weather", "{\"city\": \"P\", \"unit\": \"kelvin\"}"),
            call_text(f, "get_weather", "{}"),
            // An unknown tool, plain text, no call at all.
            call_text(f, "rm_rf", "{}"),
            "I will not call a tool.".to_string(),
            String::new(),
        ] {
            assert!(accepts(&g.lark, &bad).is_err(), "{f:?} accepted {bad:?}");
        }
        // Extra keys in the call object.
        let extra = one.replace("\"name\"", "\"id\": 1, \"name\"");
        assert!(
            accepts(&g.lark, &extra).is_err(),
            "{f:?} accepted {extra:?}"
        );
    }
}

#[test]
fn single_call_grammars_allow_one_call() {
    for f in FORMATS {
        let g = call_grammar(f, &tools(ToolChoice::Required, false)).expect("grammar");
        accepts(&g.lark, &call_text(f, "get_weather", W_ARGS)).expect("one call");
        let two = calls_text(
            f,
            &[("get_weather", W_ARGS), ("get_time", "{\"zone\": \"CET\"}")],
        );
        assert!(accepts(&g.lark, &two).is_err(), "{f:?} accepted two calls");
    }
}

#[test]
fn named_grammars_allow_only_that_tool() {
    for f in FORMATS {
        let g =
            call_grammar(f, &tools(ToolChoice::Named("get_time".into()), false)).expect("grammar");
        assert_eq!(g.trigger, None);
        accepts(&g.lark, &call_text(f, "get_time", "{\"zone\": \"UTC\"}")).expect("named");
        assert!(accepts(&g.lark, &call_text(f, "get_weather", W_ARGS)).is_err());
    }
}

#[test]
fn auto_grammars_start_after_their_trigger() {
    for f in FORMATS {
        let g = call_grammar(f, &tools(ToolChoice::Auto, true)).expect("grammar");
        let trigger = g.trigger.clone().expect("a trigger");
        assert_eq!(trigger, f.trigger());
        let full = calls_text(
            f,
            &[("get_weather", W_ARGS), ("get_time", "{\"zone\": \"CET\"}")],
        );
        let rest = full
            .strip_prefix(trigger.as_str())
            .expect("starts with the trigger");
        accepts(&g.lark, rest).unwrap_or_else(|e| panic!("{f:?}: {e}\n{}", g.lark));
        let one = call_text(f, "get_weather", W_ARGS);
        accepts(&g.lark, &one[trigger.len()..]).unwrap_or_else(|e| panic!("{f:?}: {e}"));
        let bad = call_text(f, "get_weather", "{\"city\": false}");
        assert!(accepts(&g.lark, &bad[trigger.len()..]).is_err());
        let unknown = call_text(f, "rm_rf", "{}");
        assert!(accepts(&g.lark, &unknown[trigger.len()..]).is_err());
        // Content, then the trigger and what the grammar allowed: the parser finds the calls.
        let answer = format!("Let me check. {full}");
        let p = parse_all(cfg(Some(f)), &answer);
        assert_eq!(
            (p.content.as_str(), p.calls.len()),
            ("Let me check.", 2),
            "{f:?}"
        );
    }
}

#[test]
fn forced_grammars_allow_a_reasoning_block_first() {
    for f in FORMATS {
        let one = call_text(f, "get_weather", W_ARGS);
        let opened = GrammarOptions {
            reasoning: Some(think()),
            starts_in_reasoning: false,
        };
        let g = call_grammar_with(f, &tools(ToolChoice::Required, true), &opened).expect("g");
        accepts(
            &g.lark,
            &format!("<think>\nneed weather\n</think>\n\n{one}"),
        )
        .unwrap_or_else(|e| panic!("{f:?}: {e}\n{}", g.lark));
        accepts(&g.lark, &one).expect("reasoning is optional");
        let inside = GrammarOptions {
            reasoning: Some(think()),
            starts_in_reasoning: true,
        };
        let g = call_grammar_with(f, &tools(ToolChoice::Required, true), &inside).expect("g");
        let answer = format!("need weather, {{ and more\n</think>\n{one}");
        accepts(&g.lark, &answer).unwrap_or_else(|e| panic!("{f:?}: {e}\n{}", g.lark));
        assert!(
            accepts(&g.lark, &one).is_err(),
            "the block must be closed first"
        );
        let p = parse_all(with_reasoning(cfg(Some(f)), true), &answer);
        assert_eq!(p.calls.len(), 1, "{f:?}");
        assert_eq!(p.reasoning.as_deref(), Some("need weather, { and more"));
    }
}

#[test]
fn grammars_resolve_the_tools_own_references() {
    let tool = Tool {
        name: "add_point".into(),
        description: None,
        parameters: json!({
            "$schema": "https://json-schema.org/draft/2020-12/schema",
            "type": "object",
            "$defs": { "coord": { "type": "integer", "minimum": 0 } },
            "properties": {
                "x": { "$ref": "#/$defs/coord" },
                "y": { "$ref": "#/properties/x" }
            },
            "required": ["x", "y"],
            "additionalProperties": false
        }),
    };
    check_parameters(&tool.parameters).expect("a usable schema");
    let t = Tools {
        tools: vec![tool],
        choice: ToolChoice::Required,
        parallel: false,
    };
    for f in FORMATS {
        let g = call_grammar(f, &t).expect("grammar");
        accepts(&g.lark, &call_text(f, "add_point", "{\"x\": 1, \"y\": 2}"))
            .unwrap_or_else(|e| panic!("{f:?}: {e}\n{}", g.lark));
        assert!(accepts(&g.lark, &call_text(f, "add_point", "{\"x\": -1, \"y\": 2}")).is_err());
        assert!(accepts(
            &g.lark,
            &call_text(f, "add_point", "{\"x\": 1, \"y\": \"2\"}")
        )
        .is_err());
        let mut c = cfg(Some(f));
        c.tools = t.tools.clone();
        let p = parse_all(c, &call_text(f, "add_point", "{\"x\": 1, \"y\": 2}"));
        assert_eq!(p.calls.len(), 1);
    }
}

#[test]
fn grammars_bound_whitespace_inside_calls() {
    let g = call_grammar(ToolFormat::Hermes, &tools(ToolChoice::Required, false)).expect("g");
    let spaced = format!("<tool_call>\n{{\"name\":{}\"get_time\", \"arguments\": {{\"zone\": \"U\"}}}}\n</tool_call>", " ".repeat(32));
    accepts(&g.lark, &spaced).expect("32 spaces");
    let too_spaced = spaced.replacen(&" ".repeat(32), &" ".repeat(33), 1);
    assert!(accepts(&g.lark, &too_spaced).is_err());
}

/// Compile time of a call grammar: the grammar's construction and the first token mask (the
/// byte-level vocabulary keeps the mask cheap; a real vocabulary adds to the mask, not to the
/// grammar). Printed with `--nocapture`; the bound only catches a blow-up.
#[test]
fn grammar_compile_time() {
    fn tool_n(i: usize) -> Tool {
        Tool {
            name: format!("tool_{i:03}"),
            description: None,
            parameters: json!({
                "type": "object",
                "properties": {
                    "query": { "type": "string", "maxLength": 200 },
                    "limit": { "type": "integer", "minimum": 1, "maximum": 100 },
                    "mode": { "enum": ["fast", "exact", format!("m{i}")] },
                    "tags": { "type": "array", "items": { "type": "string" }, "maxItems": 8 },
                    "since": { "type": "string", "format": "date" }
                },
                "required": ["query"],
                "additionalProperties": false
            }),
        }
    }
    let env = tok_env();
    for n in [1usize, 128] {
        for f in FORMATS {
            for choice in [ToolChoice::Required, ToolChoice::Auto] {
                let t = Tools {
                    tools: (0..n).map(tool_n).collect(),
                    choice: choice.clone(),
                    parallel: true,
                };
                let start = Instant::now();
                let g = call_grammar(f, &t).expect("grammar");
                let written = start.elapsed();
                let mut factory = llguidance::ParserFactory::new_simple(&env).expect("factory");
                factory.quiet();
                let parser = factory
                    .create_parser(llguidance::api::TopLevelGrammar::from_lark(g.lark.clone()))
                    .expect("compiles");
                let mut m = llguidance::Matcher::new(Ok(parser));
                m.compute_mask().expect("mask");
                let total = start.elapsed();
                eprintln!(
                    "grammar compile: {n:>3} tools {f:?} {choice:?}: {:.1} ms ({} bytes of Lark, {:.2} ms to write it)",
                    total.as_secs_f64() * 1e3,
                    g.lark.len(),
                    written.as_secs_f64() * 1e3
                );
                assert!(total.as_secs() < 10, "{n} tools {f:?}: {total:?}");
            }
        }
    }
    // The typical tool's call is accepted, and one of the 128 in the large grammar too.
    let t = Tools {
        tools: (0..128).map(tool_n).collect(),
        choice: ToolChoice::Required,
        parallel: true,
    };
    let g = call_grammar(ToolFormat::Hermes, &t).expect("grammar");
    let call = call_text(
        ToolFormat::Hermes,
        "tool_077",
        "{\"query\": \"q\", \"limit\": 5, \"mode\": \"m77\", \"tags\": [\"a\"], \"since\": \"2024-02-29\"}",
    );
    accepts(&g.lark, &call).expect("accepted");
    assert!(accepts(&g.lark, &call.replace("m77", "m78")).is_err());
}
