//! Placeholder until the Jinja renderer lands (branch `tmpl`): the API the engine names.
#![allow(missing_docs)]

use crate::request::{ChatMessage, Tool};

#[derive(Debug, Clone, Copy)]
pub struct TemplateLimits {
    pub fuel: u64,
    pub max_output_bytes: usize,
}
impl Default for TemplateLimits {
    fn default() -> Self {
        TemplateLimits {
            fuel: 1,
            max_output_bytes: 1,
        }
    }
}
pub struct ChatTemplate {}
pub struct RenderInput<'a> {
    pub messages: &'a [ChatMessage],
    pub tools: &'a [Tool],
    pub add_generation_prompt: bool,
    pub enable_thinking: Option<bool>,
}
#[derive(Debug, thiserror::Error)]
pub enum TemplateError {
    #[error("syntax {0}")]
    Syntax(String),
}
impl TemplateError {
    pub fn code(&self) -> &'static str {
        "template_syntax"
    }
}
impl ChatTemplate {
    pub fn new(
        _source: &str,
        _bos: &str,
        _eos: &str,
        _limits: TemplateLimits,
    ) -> Result<Self, TemplateError> {
        Err(TemplateError::Syntax("stub".into()))
    }
    pub fn render(&self, _input: &RenderInput<'_>) -> Result<String, TemplateError> {
        Err(TemplateError::Syntax("stub".into()))
    }
    pub fn reads(&self, _v: &str) -> bool {
        false
    }
}
pub fn check(
    _source: &str,
    _bos: &str,
    _eos: &str,
    _limits: TemplateLimits,
) -> Result<(), TemplateError> {
    Ok(())
}
