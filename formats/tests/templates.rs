//! Golden tests: the chat templates of the real test models (read from their GGUF files, fetched
//! by `scripts/fetch-models`) rendered for fixed conversations, pinned byte for byte. The expected
//! prompts are written out from each model's documented format (ChatML for SmolLM2, Qwen2.5's
//! `<tools>`/`<tool_call>`/`<tool_response>` layout); a change in the renderer that moves one
//! byte fails here. A missing model fails: it is never skipped.

use inhouse_formats::gguf;
use inhouse_formats::request::{ChatMessage, Tool, ToolCall};
use inhouse_formats::template::{ChatTemplate, RenderInput, TemplateLimits};
use serde_json::json;
use std::path::PathBuf;

fn model(file: &str) -> PathBuf {
    let dir = match std::env::var_os("INHOUSE_MODELS_DIR") {
        Some(d) => PathBuf::from(d),
        None => {
            PathBuf::from(std::env::var_os("HOME").expect("HOME")).join(".cache/inhouse/models")
        }
    };
    let path = dir.join(file);
    assert!(
        path.is_file(),
        "{} is missing: run scripts/fetch-models",
        path.display()
    );
    path
}

/// The GGUF's template compiled as the daemon compiles it, with its BOS and EOS texts.
fn template_of(file: &str) -> ChatTemplate {
    let f = gguf::open(model(file)).unwrap();
    let source = f.chat_template().expect("the model has a chat template");
    let tokens = f.get("tokenizer.ggml.tokens").unwrap().as_array().unwrap();
    let token = |key: &str| {
        let id = f.get_u64(key).unwrap() as usize;
        tokens.get(id).unwrap().as_str().unwrap().to_string()
    };
    let (bos, eos) = (
        token("tokenizer.ggml.bos_token_id"),
        token("tokenizer.ggml.eos_token_id"),
    );
    ChatTemplate::new(source, &bos, &eos, TemplateLimits::default()).unwrap()
}

fn render(t: &ChatTemplate, messages: &[ChatMessage], tools: &[Tool]) -> String {
    t.render(&RenderInput {
        messages,
        tools,
        add_generation_prompt: true,
        enable_thinking: None,
    })
    .unwrap()
}

const SMOL: &str = "SmolLM2-135M-Instruct.Q4_1.gguf";
const QWEN: &str = "qwen2.5-coder-0.5b-instruct-q4_k_m.gguf";

fn weather_tool() -> Tool {
    Tool {
        name: "get_weather".into(),
        description: Some("Current weather in a city".into()),
        parameters: json!({
            "type": "object",
            "properties": {"city": {"type": "string"}, "unit": {"enum": ["C", "F"]}},
            "required": ["city"]
        }),
    }
}

#[test]
fn smollm2_adds_its_default_system_turn() {
    let t = template_of(SMOL);
    let got = render(&t, &[ChatMessage::text("user", "What is 2+2?")], &[]);
    assert_eq!(
        got,
        "<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n\
         <|im_start|>user\nWhat is 2+2?<|im_end|>\n\
         <|im_start|>assistant\n"
    );
}

#[test]
fn smollm2_multi_turn_with_a_system_message() {
    let t = template_of(SMOL);
    let got = render(
        &t,
        &[
            ChatMessage::text("system", "Answer in one word."),
            ChatMessage::text("user", "Capital of Italy?"),
            ChatMessage::text("assistant", "Rome"),
            ChatMessage::text("user", "And of Spain?"),
        ],
        &[],
    );
    assert_eq!(
        got,
        "<|im_start|>system\nAnswer in one word.<|im_end|>\n\
         <|im_start|>user\nCapital of Italy?<|im_end|>\n\
         <|im_start|>assistant\nRome<|im_end|>\n\
         <|im_start|>user\nAnd of Spain?<|im_end|>\n\
         <|im_start|>assistant\n"
    );
    assert!(!t.reads("tools"), "SmolLM2's template shows no tools");
}

#[test]
fn qwen25_without_tools_is_chatml_with_its_default_system_turn() {
    let t = template_of(QWEN);
    assert!(t.reads("tools"));
    let got = render(&t, &[ChatMessage::text("user", "Hi")], &[]);
    assert_eq!(
        got,
        "<|im_start|>system\nYou are Qwen, created by Alibaba Cloud. You are a helpful assistant.<|im_end|>\n\
         <|im_start|>user\nHi<|im_end|>\n\
         <|im_start|>assistant\n"
    );
}

#[test]
fn qwen25_shows_tools_as_python_json_dumps_writes_them() {
    let t = template_of(QWEN);
    let got = render(
        &t,
        &[ChatMessage::text("user", "Weather in Paris?")],
        &[weather_tool()],
    );
    assert_eq!(
        got,
        "<|im_start|>system\nYou are Qwen, created by Alibaba Cloud. You are a helpful assistant.\n\n\
         # Tools\n\nYou may call one or more functions to assist with the user query.\n\n\
         You are provided with function signatures within <tools></tools> XML tags:\n<tools>\n\
         {\"type\": \"function\", \"function\": {\"name\": \"get_weather\", \"description\": \"Current weather in a city\", \
         \"parameters\": {\"type\": \"object\", \"properties\": {\"city\": {\"type\": \"string\"}, \"unit\": {\"enum\": [\"C\", \"F\"]}}, \
         \"required\": [\"city\"]}}}\n</tools>\n\n\
         For each function call, return a json object with function name and arguments within <tool_call></tool_call> XML tags:\n\
         <tool_call>\n{\"name\": <function-name>, \"arguments\": <args-json-object>}\n</tool_call><|im_end|>\n\
         <|im_start|>user\nWeather in Paris?<|im_end|>\n\
         <|im_start|>assistant\n"
    );
}

#[test]
fn qwen25_renders_a_tool_round_trip() {
    let t = template_of(QWEN);
    let call = ChatMessage {
        role: "assistant".into(),
        content: String::new(),
        tool_calls: vec![
            ToolCall {
                id: "call_1".into(),
                name: "get_weather".into(),
                arguments: json!({"city": "Paris", "unit": "C"}),
            },
            ToolCall {
                id: "call_2".into(),
                name: "get_weather".into(),
                arguments: json!({"city": "Lyon"}),
            },
        ],
        ..Default::default()
    };
    let result = |id: &str, text: &str| ChatMessage {
        role: "tool".into(),
        content: text.into(),
        tool_call_id: Some(id.into()),
        ..Default::default()
    };
    let got = render(
        &t,
        &[
            ChatMessage::text("system", "You are terse."),
            ChatMessage::text("user", "Weather in Paris and Lyon?"),
            call,
            result("call_1", "{\"temp\": 18}"),
            result("call_2", "{\"temp\": 21}"),
        ],
        &[weather_tool()],
    );
    let expected_tail = "<|im_start|>user\nWeather in Paris and Lyon?<|im_end|>\n\
         <|im_start|>assistant\n<tool_call>\n{\"name\": \"get_weather\", \"arguments\": {\"city\": \"Paris\", \"unit\": \"C\"}}\n</tool_call>\
         \n<tool_call>\n{\"name\": \"get_weather\", \"arguments\": {\"city\": \"Lyon\"}}\n</tool_call><|im_end|>\n\
         <|im_start|>user\n<tool_response>\n{\"temp\": 18}\n</tool_response>\
         \n<tool_response>\n{\"temp\": 21}\n</tool_response><|im_end|>\n\
         <|im_start|>assistant\n";
    assert!(
        got.starts_with("<|im_start|>system\nYou are terse.\n\n# Tools\n"),
        "{got}"
    );
    assert!(got.ends_with(expected_tail), "{got}");
    // Only the system turn and the tool listing come before the conversation.
    let head = &got[..got.len() - expected_tail.len()];
    assert!(head.ends_with("</tool_call><|im_end|>\n"), "{head}");
    assert_eq!(head.matches("<|im_start|>").count(), 1, "{head}");
}

#[test]
fn non_ascii_text_passes_through_unescaped() {
    let t = template_of(QWEN);
    let mut tool = weather_tool();
    tool.description = Some("Météo — 天気".into());
    let got = render(&t, &[ChatMessage::text("user", "Ça va ?")], &[tool]);
    assert!(got.contains("\"description\": \"Météo — 天気\""), "{got}");
    assert!(
        got.contains("<|im_start|>user\nÇa va ?<|im_end|>\n"),
        "{got}"
    );
}

/// The default fuel keeps a 10× margin over what the real templates need for a long conversation
/// with many tools (64 messages, 32 tools): they render with a tenth of it.
#[test]
fn real_templates_render_long_conversations_within_a_tenth_of_the_default_fuel() {
    let tools: Vec<Tool> = (0..32)
        .map(|i| {
            let mut t = weather_tool();
            t.name = format!("tool_{i}");
            t
        })
        .collect();
    let mut messages = vec![ChatMessage::text("system", "You are a helpful assistant.")];
    for i in 0..63 {
        let role = if i % 2 == 0 { "user" } else { "assistant" };
        messages.push(ChatMessage::text(role, format!("message number {i}")));
    }
    let tenth = TemplateLimits {
        fuel: TemplateLimits::DEFAULT_FUEL / 10,
        ..TemplateLimits::default()
    };
    for file in [SMOL, QWEN] {
        let f = gguf::open(model(file)).unwrap();
        let t = ChatTemplate::new(f.chat_template().unwrap(), "", "", tenth).unwrap();
        let out = render(&t, &messages, &tools);
        assert!(out.contains("message number 62"), "{file}");
    }
}
