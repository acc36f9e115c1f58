//! Placeholder until the tool-call parsers land (branch `tools`): the types the engine names.
#![allow(missing_docs)]

use crate::request::{Tool, ToolCall, Tools};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ToolFormat {
    Hermes,
    Llama3Json,
    Mistral,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReasoningTags {
    pub open: String,
    pub close: String,
}

pub fn detect(_template_source: &str) -> Option<ToolFormat> {
    None
}
pub fn detect_reasoning(_template_source: &str) -> Option<ReasoningTags> {
    None
}
pub fn starts_in_reasoning(_rendered_prompt: &str, _tags: &ReasoningTags) -> bool {
    false
}
pub struct ParserConfig {
    pub format: Option<ToolFormat>,
    pub tools: Vec<Tool>,
    pub id_prefix: String,
    pub reasoning: Option<ReasoningTags>,
    pub starts_in_reasoning: bool,
    pub recognise_bare: bool,
}
#[derive(Debug, Clone, PartialEq)]
pub enum Delta {
    Content(String),
    Reasoning(String),
    CallStart { index: usize, id: String, name: String },
    CallArguments { index: usize, fragment: String },
}
pub struct OutputParser {}
impl OutputParser {
    pub fn new(_cfg: ParserConfig) -> Self {
        OutputParser {}
    }
    pub fn feed(&mut self, text: &str) -> Vec<Delta> {
        vec![Delta::Content(text.to_string())]
    }
    pub fn finish(&mut self) -> Vec<Delta> {
        vec![]
    }
}
pub struct Parsed {
    pub content: String,
    pub reasoning: Option<String>,
    pub calls: Vec<ToolCall>,
}
pub struct CallGrammar {
    pub lark: String,
    pub trigger: Option<String>,
}
pub fn call_grammar(_format: ToolFormat, _tools: &Tools) -> Option<CallGrammar> {
    None
}
