//! Constrained decoding: the answer's shape enforced while sampling.
//!
//! A JSON schema (`response_format`, Ollama's `format`) or the grammar of a tool call (from
//! [`inhouse_formats::tools::call_grammar_with`]) is compiled by llguidance against the model's own
//! tokenizer into a [`Matcher`]; before each token is sampled, the tokens the grammar does not
//! allow next get a logit of −∞, so the answer parses and validates by construction.
//!
//! Why llguidance rather than llama.cpp's GBNF grammars: it compiles JSON schemas itself (GBNF
//! would need llama.cpp's `common` library, one more C++ build, or a converter written here), it
//! refuses a schema feature it cannot enforce instead of ignoring it, its compilation is bounded
//! by fuel and size limits, and its masks are computed in tens of microseconds from a token
//! trie. It is pure Rust, and llama-cpp-2 builds on the same crate.
//!
//! Two ways to apply a grammar:
//! - **whole** (`json_schema`, `json_object`, `tool_choice` `required` or named): from the first
//!   token; once the grammar is complete only end-of-generation is allowed;
//! - **lazy** (`tool_choice: auto`): the model writes freely until the format's opening marker
//!   (`<tool_call>`, `[TOOL_CALLS]`…) appears in its text; the call that follows is constrained,
//!   and when it is complete the model is free again (it may write another marker).
//!
//! Compiled grammars are cached per model by their canonical JSON (a few dozen; the oldest goes
//! first), so a client sending the same schema again does not pay the compilation again.

use super::{EngineError, OutputInfo};
use inhouse_formats::request::{GenerateRequest, ResponseFormat, ToolChoice};
use inhouse_formats::tools::{call_grammar_with, GrammarOptions};
use llama_cpp_2::model::LlamaModel;
use llama_cpp_2::sampling::LlamaSampler;
use llguidance::api::TopLevelGrammar;
use llguidance::{Matcher, ParserFactory};
use std::collections::VecDeque;
use toktrie::SimpleVob;

/// Compiled grammars kept per model.
const CACHE_ENTRIES: usize = 32;

/// What a request's constraint is, before compilation.
pub struct Spec {
    grammar: TopLevelGrammar,
    /// Lazy: the marker after which the grammar applies.
    trigger: Option<String>,
}

impl Spec {
    /// The constraint a request asks for, if any. Tools shown to the model with a known call
    /// format get a call grammar; a JSON `response_format` gets its schema.
    pub fn of(req: &GenerateRequest, output: &OutputInfo) -> Result<Option<Spec>, EngineError> {
        let tools = req.tools.as_ref().filter(|t| t.choice != ToolChoice::None);
        let json = match &req.format {
            ResponseFormat::Text => None,
            ResponseFormat::JsonObject => Some(serde_json::json!({"type": "object"})),
            ResponseFormat::JsonSchema { schema, .. } => Some(schema.clone()),
        };
        if let (Some(t), Some(_)) = (tools, &json) {
            if t.choice != ToolChoice::Auto {
                return Err(EngineError::Constraint(
                    "a JSON response_format cannot be combined with a required or named \
                     tool_choice: the answer cannot be both a tool call and a JSON document"
                        .into(),
                ));
            }
        }
        if let Some(mut schema) = json {
            compact_json(&mut schema);
            return Ok(Some(Spec {
                grammar: TopLevelGrammar::from_json_schema(schema),
                trigger: None,
            }));
        }
        let (Some(tools), Some(format)) = (tools, output.tool_format) else {
            return Ok(None);
        };
        // A forced call may follow the model's thinking block, not land inside it.
        let options = GrammarOptions {
            reasoning: output.reasoning.clone(),
            starts_in_reasoning: output.starts_in_reasoning,
        };
        Ok(call_grammar_with(format, tools, &options).map(|g| Spec {
            grammar: TopLevelGrammar::from_lark(g.lark),
            trigger: g.trigger,
        }))
    }
}

/// The JSON layout constrained answers get: one line, `", "` between items and `": "` after
/// keys, as Python's `json.dumps` writes. llguidance's default lets any run of whitespace sit
/// between tokens, and small models then fill `max_tokens` with newlines (seen with SmolLM2 and
/// Qwen2.5-0.5B: an answer cut short is not valid JSON). The options go in the schema's
/// `x-guidance` key, llguidance's place for them; a client's own `x-guidance` is replaced, so
/// no request changes how its grammar is compiled.
fn compact_json(schema: &mut serde_json::Value) {
    if let Some(object) = schema.as_object_mut() {
        object.insert(
            "x-guidance".into(),
            serde_json::json!({
                "whitespace_flexible": false,
                "item_separator": ", ",
                "key_separator": ": ",
            }),
        );
    }
}

/// One model's grammar compiler and cache.
pub struct Grammars {
    factory: ParserFactory,
    cache: VecDeque<(String, Matcher)>,
}

impl Grammars {
    /// Builds the compiler for `model` (reads its whole vocabulary once: tens to hundreds of
    /// milliseconds).
    pub fn new(model: &LlamaModel) -> Result<Self, EngineError> {
        let env = LlamaSampler::llguidance_tok_env(model);
        let mut factory = ParserFactory::new_simple(&env)
            .map_err(|e| EngineError::Inference(format!("grammar compiler: {e}")))?;
        // Nothing about a request reaches stderr (the journal), and errors do not quote the
        // tokens generated so far.
        factory.quiet();
        factory.limits_mut().verbose_errors = false;
        Ok(Grammars {
            factory,
            cache: VecDeque::new(),
        })
    }

    /// A fresh matcher for `grammar`, compiled or from the cache.
    fn matcher(&mut self, grammar: &TopLevelGrammar) -> Result<Matcher, EngineError> {
        let key = serde_json::to_string(grammar)
            .map_err(|e| EngineError::Constraint(format!("grammar: {e}")))?;
        if let Some(i) = self.cache.iter().position(|(k, _)| *k == key) {
            let entry = self.cache.remove(i).expect("index from position");
            let fresh = entry.1.deep_clone();
            self.cache.push_back(entry);
            return Ok(fresh);
        }
        let parser = self
            .factory
            .create_parser(grammar.clone())
            .map_err(|e| EngineError::Constraint(e.to_string()))?;
        let matcher = Matcher::new(Ok(parser));
        if let Some(e) = matcher.get_error() {
            return Err(EngineError::Constraint(e));
        }
        if self.cache.len() >= CACHE_ENTRIES {
            self.cache.pop_front();
        }
        self.cache.push_back((key, matcher.deep_clone()));
        Ok(matcher)
    }

    /// The running constraint of one choice.
    pub fn start(&mut self, spec: &Spec) -> Result<Constraint, EngineError> {
        let matcher = self.matcher(&spec.grammar)?;
        Ok(match &spec.trigger {
            None => Constraint::Whole(Box::new(matcher)),
            Some(t) => Constraint::Waiting {
                trigger: t.as_bytes().to_vec(),
                tail: Vec::new(),
                fresh: Box::new(matcher),
            },
        })
    }
}

/// The grammar state of one choice.
pub enum Constraint {
    /// The whole answer follows the grammar.
    Whole(Box<Matcher>),
    /// Free text until `trigger` appears.
    Waiting {
        /// The marker.
        trigger: Vec<u8>,
        /// The end of the text so far, enough to see a marker split across tokens.
        tail: Vec<u8>,
        /// The grammar of what follows a marker, not yet started.
        fresh: Box<Matcher>,
    },
    /// Inside a call, after its marker.
    Inside {
        /// The call's matcher.
        matcher: Box<Matcher>,
        /// The marker, to wait for again once the call is complete.
        trigger: Vec<u8>,
        /// The grammar of the next call.
        fresh: Box<Matcher>,
    },
}

fn failed(e: impl std::fmt::Display) -> EngineError {
    EngineError::Constraint(format!("the grammar failed while sampling: {e}"))
}

impl Constraint {
    /// The tokens allowed next, or `None` while the text is free.
    pub fn mask(&mut self) -> Result<Option<SimpleVob>, EngineError> {
        match self {
            Constraint::Whole(m) | Constraint::Inside { matcher: m, .. } => {
                m.compute_mask_or_eos().map(Some).map_err(failed)
            }
            Constraint::Waiting { .. } => Ok(None),
        }
    }

    /// Takes the sampled token (not an end-of-generation one) and its text.
    pub fn accept(&mut self, token: u32, piece: &[u8]) -> Result<(), EngineError> {
        let next = match self {
            Constraint::Whole(m) => {
                m.consume_token(token).map_err(failed)?;
                None
            }
            Constraint::Waiting {
                trigger,
                tail,
                fresh,
            } => {
                tail.extend_from_slice(piece);
                if tail.windows(trigger.len()).any(|w| w == trigger.as_slice()) {
                    Some(Constraint::Inside {
                        matcher: Box::new(fresh.deep_clone()),
                        trigger: std::mem::take(trigger),
                        fresh: Box::new(fresh.deep_clone()),
                    })
                } else {
                    let keep = trigger.len().saturating_sub(1);
                    if tail.len() > keep {
                        tail.drain(..tail.len() - keep);
                    }
                    None
                }
            }
            Constraint::Inside {
                matcher,
                trigger,
                fresh,
            } => {
                matcher.consume_token(token).map_err(failed)?;
                // The call is complete when nothing but its end may follow: free again.
                if matcher.is_stopped() || matcher.is_accepting().unwrap_or(false) {
                    Some(Constraint::Waiting {
                        trigger: std::mem::take(trigger),
                        tail: Vec::new(),
                        fresh: Box::new(fresh.deep_clone()),
                    })
                } else {
                    None
                }
            }
        };
        if let Some(n) = next {
            *self = n;
        }
        Ok(())
    }
}
