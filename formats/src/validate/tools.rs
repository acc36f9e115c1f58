//! The tool and schema fields of a chat request: `tools`, `tool_choice`, `parallel_tool_calls`,
//! the `tool_calls` of assistant messages in the history, and `response_format`.
//!
//! Tool names reach the template and the output parser, schemas reach the grammar compiler: both
//! are checked here (names against one pattern, schemas for shape and serialized size), so that
//! nothing downstream meets a control character in a name or an unbounded schema.

use super::{json_depth, no_nul, shown, Limits, ToolCallWire, ToolWire, ValidationError};
use crate::request::{ResponseFormat, Tool, ToolCall, ToolChoice, Tools};
use serde_json::{Map, Value};

/// Whether `name` may name a function tool: `^[A-Za-z0-9_.-]{1,64}$`, so no control character,
/// space or quote reaches a template or a grammar.
pub fn valid_tool_name(name: &str) -> bool {
    (1..=64).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'))
}

/// Whether `name` may name a `json_schema` response format: `^[A-Za-z0-9_-]{1,64}$`, OpenAI's
/// rule.
pub fn valid_schema_name(name: &str) -> bool {
    (1..=64).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-'))
}

/// An `io::Write` that only counts, and fails once more than `left` bytes come: the serialized
/// size of a schema is measured without building the text, and measuring stops at the bound.
struct Budget {
    left: usize,
}

impl std::io::Write for Budget {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        match self.left.checked_sub(buf.len()) {
            Some(left) => {
                self.left = left;
                Ok(buf.len())
            }
            None => Err(std::io::Error::other("over the bound")),
        }
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Refuses a schema whose compact JSON text is longer than `limits.max_schema_bytes`.
fn check_schema_size(
    param: &'static str,
    path: &str,
    schema: &Value,
    limits: &Limits,
) -> Result<(), ValidationError> {
    let mut budget = Budget {
        left: limits.max_schema_bytes,
    };
    if serde_json::to_writer(&mut budget, schema).is_err() {
        return Err(ValidationError::limit(
            param,
            format!(
                "{path}: the schema is longer than {} bytes (serialized); a longer one is not accepted",
                limits.max_schema_bytes
            ),
        ));
    }
    Ok(())
}

/// The JSON type of `v`, in words, for messages that must not echo a large value.
pub(super) fn kind_of(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// The arguments' schema of one tool: absent (or null) means no arguments; otherwise a JSON
/// object whose `type`, when given, is `"object"`.
fn tool_parameters(
    i: usize,
    parameters: Option<Value>,
    limits: &Limits,
) -> Result<Value, ValidationError> {
    let path = format!("tools[{i}].function.parameters");
    let schema = match parameters {
        None | Some(Value::Null) => {
            let mut empty = Map::new();
            empty.insert("type".into(), Value::String("object".into()));
            empty.insert("properties".into(), Value::Object(Map::new()));
            return Ok(Value::Object(empty));
        }
        Some(Value::Object(o)) => o,
        Some(other) => {
            return Err(ValidationError::param(
                "tools",
                format!(
                    "{path} must be a JSON schema object, not {}",
                    kind_of(&other)
                ),
            ))
        }
    };
    match schema.get("type") {
        None => {}
        Some(Value::String(t)) if t == "object" => {}
        Some(_) => {
            return Err(ValidationError::param(
                "tools",
                format!("{path} must describe an object: its \"type\" must be \"object\""),
            ))
        }
    }
    let schema = Value::Object(schema);
    check_schema_size("tools", &path, &schema, limits)?;
    Ok(schema)
}

/// One entry of `tools`.
fn tool(i: usize, w: ToolWire, limits: &Limits) -> Result<Tool, ValidationError> {
    if w.kind.as_deref() != Some("function") {
        return Err(ValidationError::param(
            "tools",
            format!("tools[{i}].type must be \"function\" (the only kind of tool)"),
        ));
    }
    let Some(f) = w.function else {
        return Err(ValidationError::param(
            "tools",
            format!("tools[{i}].function is missing"),
        ));
    };
    let name = match f.name {
        Some(n) if valid_tool_name(&n) => n,
        Some(n) => {
            return Err(ValidationError::param(
                "tools",
                format!(
                    "tools[{i}].function.name {} must match ^[A-Za-z0-9_.-]{{1,64}}$ (no spaces or control characters)",
                    shown(&n)
                ),
            ))
        }
        None => {
            return Err(ValidationError::param(
                "tools",
                format!("tools[{i}].function.name is missing"),
            ))
        }
    };
    if let Some(d) = &f.description {
        no_nul("tools", d)?;
    }
    Ok(Tool {
        name,
        description: f.description,
        parameters: tool_parameters(i, f.parameters, limits)?,
    })
}

/// `tool_choice` as the client gave it; `None` when absent or null.
fn tool_choice(v: Option<&Value>) -> Result<Option<ToolChoice>, ValidationError> {
    let bad = || {
        ValidationError::param(
            "tool_choice",
            "tool_choice must be \"auto\", \"none\", \"required\" or {\"type\":\"function\",\"function\":{\"name\":…}}",
        )
    };
    match v {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => match s.as_str() {
            "auto" => Ok(Some(ToolChoice::Auto)),
            "none" => Ok(Some(ToolChoice::None)),
            "required" => Ok(Some(ToolChoice::Required)),
            _ => Err(bad()),
        },
        Some(Value::Object(o)) => {
            if o.get("type").and_then(Value::as_str) != Some("function") {
                return Err(bad());
            }
            match o
                .get("function")
                .and_then(|f| f.get("name"))
                .and_then(Value::as_str)
            {
                Some(name) => Ok(Some(ToolChoice::Named(name.to_string()))),
                None => Err(bad()),
            }
        }
        Some(_) => Err(bad()),
    }
}

/// `tools`, `tool_choice` and `parallel_tool_calls` together. An absent or empty `tools` offers
/// none, and then only `auto` or `none` may be chosen.
pub(super) fn validate_tools(
    tools: Option<Vec<ToolWire>>,
    choice: Option<&Value>,
    parallel: Option<bool>,
    limits: &Limits,
) -> Result<Option<Tools>, ValidationError> {
    let choice = tool_choice(choice)?;
    let tools = tools.unwrap_or_default();
    if tools.is_empty() {
        return match choice {
            None | Some(ToolChoice::Auto) | Some(ToolChoice::None) => Ok(None),
            Some(_) => Err(ValidationError::param(
                "tool_choice",
                "tool_choice requires a tool, and the request offers none (tools is absent or empty)",
            )),
        };
    }
    if tools.len() > limits.max_tools {
        return Err(ValidationError::limit(
            "tools",
            format!(
                "the request offers {} tools; at most {} are accepted",
                tools.len(),
                limits.max_tools
            ),
        ));
    }
    let mut checked: Vec<Tool> = Vec::with_capacity(tools.len());
    for (i, w) in tools.into_iter().enumerate() {
        let t = tool(i, w, limits)?;
        // Quadratic, but `max_tools` bounds it, and a set would not keep the order.
        if checked.iter().any(|c| c.name == t.name) {
            return Err(ValidationError::param(
                "tools",
                format!("tools[{i}]: the name {:?} is offered twice", t.name),
            ));
        }
        checked.push(t);
    }
    let choice = choice.unwrap_or(ToolChoice::Auto);
    if let ToolChoice::Named(name) = &choice {
        if !checked.iter().any(|t| &t.name == name) {
            return Err(ValidationError::param(
                "tool_choice",
                format!(
                    "tool_choice names the tool {}, which is not among the tools offered",
                    shown(name)
                ),
            ));
        }
    }
    Ok(Some(Tools {
        tools: checked,
        choice,
        parallel: parallel.unwrap_or(true),
    }))
}

/// The `tool_calls` of assistant message `i` in the history. Arguments given as a string must
/// hold a JSON object (nested no deeper than the body may be); an object is taken as it is.
pub(super) fn validate_tool_calls(
    i: usize,
    calls: &[ToolCallWire],
    limits: &Limits,
) -> Result<Vec<ToolCall>, ValidationError> {
    let mut out = Vec::with_capacity(calls.len());
    for (j, c) in calls.iter().enumerate() {
        let at = format!("messages[{i}].tool_calls[{j}]");
        let bad = |what: String| ValidationError::param("messages", format!("{at}{what}"));
        if c.kind.as_deref().is_some_and(|k| k != "function") {
            return Err(bad(
                ".type must be \"function\" (the only kind of call)".into()
            ));
        }
        let id = match &c.id {
            Some(id) if id.is_empty() => return Err(bad(".id must not be empty".into())),
            Some(id) => {
                no_nul("messages", id)?;
                id.clone()
            }
            // Ollama's history has no ids; the template only needs them to be distinct.
            None => format!("call_{i}_{j}"),
        };
        let Some(f) = &c.function else {
            return Err(bad(".function is missing".into()));
        };
        let name = match &f.name {
            Some(n) if valid_tool_name(n) => n.clone(),
            Some(n) => {
                return Err(bad(format!(
                    ".function.name {} must match ^[A-Za-z0-9_.-]{{1,64}}$",
                    shown(n)
                )))
            }
            None => return Err(bad(".function.name is missing".into())),
        };
        let arguments = match &f.arguments {
            Some(Value::Object(o)) => Value::Object(o.clone()),
            Some(Value::String(s)) => {
                let depth = json_depth(s.as_bytes());
                if depth > limits.max_json_depth {
                    return Err(bad(format!(
                        ".function.arguments nests {depth} levels deep; at most {} are accepted",
                        limits.max_json_depth
                    )));
                }
                match serde_json::from_str::<Value>(s) {
                    Ok(v @ Value::Object(_)) => v,
                    Ok(other) => {
                        return Err(bad(format!(
                            ".function.arguments must hold a JSON object, not {}",
                            kind_of(&other)
                        )))
                    }
                    Err(e) => {
                        return Err(bad(format!(".function.arguments is not valid JSON: {e}")))
                    }
                }
            }
            Some(other) => {
                return Err(bad(format!(
                    ".function.arguments must be a string holding a JSON object, not {}",
                    kind_of(other)
                )))
            }
            None => return Err(bad(".function.arguments is missing".into())),
        };
        out.push(ToolCall {
            id,
            name,
            arguments,
        });
    }
    Ok(out)
}

/// `response_format`: text, any JSON object, or JSON validating against a schema that is an
/// object no longer than `limits.max_schema_bytes`.
pub(super) fn validate_response_format(
    v: Option<&Value>,
    limits: &Limits,
) -> Result<ResponseFormat, ValidationError> {
    let bad = |m: String| ValidationError::param("response_format", m);
    let o = match v {
        None | Some(Value::Null) => return Ok(ResponseFormat::Text),
        Some(Value::Object(o)) => o,
        Some(other) => {
            return Err(bad(format!(
                "response_format must be an object, not {}",
                kind_of(other)
            )))
        }
    };
    match o.get("type") {
        Some(Value::String(t)) if t == "text" => Ok(ResponseFormat::Text),
        Some(Value::String(t)) if t == "json_object" => Ok(ResponseFormat::JsonObject),
        Some(Value::String(t)) if t == "json_schema" => {
            let Some(Value::Object(js)) = o.get("json_schema") else {
                return Err(bad(
                    "response_format.json_schema must be an object with a name and a schema".into(),
                ));
            };
            let name = match js.get("name") {
                Some(Value::String(n)) if valid_schema_name(n) => n.clone(),
                Some(Value::String(n)) => {
                    return Err(bad(format!(
                        "response_format.json_schema.name {} must match ^[A-Za-z0-9_-]{{1,64}}$",
                        shown(n)
                    )))
                }
                _ => {
                    return Err(bad(
                        "response_format.json_schema.name is missing (a string)".into(),
                    ))
                }
            };
            let schema = match js.get("schema") {
                Some(s @ Value::Object(_)) => s,
                Some(other) => {
                    return Err(bad(format!(
                        "response_format.json_schema.schema must be a JSON schema object, not {}",
                        kind_of(other)
                    )))
                }
                None => return Err(bad("response_format.json_schema.schema is missing".into())),
            };
            if !matches!(
                js.get("strict"),
                None | Some(Value::Null) | Some(Value::Bool(_))
            ) {
                return Err(bad(
                    "response_format.json_schema.strict must be true or false".into(),
                ));
            }
            match js.get("description") {
                None | Some(Value::Null) => {}
                Some(Value::String(d)) => no_nul("response_format", d)?,
                Some(_) => {
                    return Err(bad(
                        "response_format.json_schema.description must be a string".into(),
                    ))
                }
            }
            check_schema_size(
                "response_format",
                "response_format.json_schema.schema",
                schema,
                limits,
            )?;
            Ok(ResponseFormat::JsonSchema {
                name,
                schema: schema.clone(),
            })
        }
        Some(Value::String(t)) => Err(bad(format!(
            "response_format type {} is not supported (text, json_object, json_schema)",
            shown(t)
        ))),
        Some(other) => Err(bad(format!(
            "response_format.type must be a string (text, json_object, json_schema), not {}",
            kind_of(other)
        ))),
        None => Err(bad(
            "response_format.type is missing (text, json_object, json_schema)".into(),
        )),
    }
}
