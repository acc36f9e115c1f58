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

#[cfg(test)]
mod tests {
    use super::super::tests::{bad_value, chat, completion, message, over_limit, with};
    use super::*;
    use crate::request::{ChatMessage, Prompt};
    use serde_json::json;

    const WEATHER: &str = r#"{"type":"function","function":{"name":"get_weather","description":"Weather now","parameters":{"type":"object","properties":{"city":{"type":"string"}},"required":["city"]},"strict":true}}"#;
    const NOARGS: &str = r#"{"type":"function","function":{"name":"ns.list-all_2"}}"#;

    fn tools_of(extra: &str) -> Option<Tools> {
        chat(&with(extra)).unwrap().request.tools
    }

    fn refused(extra: &str) -> &'static str {
        let body = with(extra);
        bad_value(chat(&body), &body)
    }

    fn over(extra: &str) -> &'static str {
        let body = with(extra);
        over_limit(chat(&body), &body)
    }

    #[test]
    fn names_follow_their_patterns() {
        for ok in ["a", "get_weather", "ns.list-all_2", &"x".repeat(64)] {
            assert!(valid_tool_name(ok), "{ok}");
        }
        for bad in ["", "a b", "a\u{1}b", "é", "a/b", "a\"b", &"x".repeat(65)] {
            assert!(!valid_tool_name(bad), "{bad:?}");
        }
        assert!(valid_schema_name("Answer_v-2"));
        assert!(!valid_schema_name("answer.v2"));
        assert!(!valid_schema_name(""));
        assert!(!valid_schema_name(&"x".repeat(65)));
    }

    #[test]
    fn tools_are_checked_into_tools() {
        let t = tools_of(&format!(r#""tools":[{WEATHER},{NOARGS}]"#)).unwrap();
        assert_eq!(t.choice, ToolChoice::Auto);
        assert!(t.parallel);
        assert_eq!(
            t.tools,
            vec![
                Tool {
                    name: "get_weather".into(),
                    description: Some("Weather now".into()),
                    parameters: json!({"type":"object","properties":{"city":{"type":"string"}},"required":["city"]}),
                },
                Tool {
                    name: "ns.list-all_2".into(),
                    description: None,
                    parameters: json!({"type":"object","properties":{}}),
                },
            ]
        );
        // A schema without "type" is an object schema too; null parameters mean none.
        let t = tools_of(
            r#""tools":[{"type":"function","function":{"name":"a","parameters":{"properties":{}}}},{"type":"function","function":{"name":"b","parameters":null}}]"#,
        )
        .unwrap();
        assert_eq!(t.tools[0].parameters, json!({"properties":{}}));
        assert_eq!(
            t.tools[1].parameters,
            json!({"type":"object","properties":{}})
        );
        let t = tools_of(&format!(
            r#""tools":[{WEATHER}],"parallel_tool_calls":false"#
        ))
        .unwrap();
        assert!(!t.parallel);
    }

    #[test]
    fn no_tools_means_none() {
        assert_eq!(tools_of(r#""tools":[]"#), None);
        assert_eq!(tools_of(r#""tools":null"#), None);
        assert_eq!(tools_of(r#""tools":[],"tool_choice":"auto""#), None);
        assert_eq!(tools_of(r#""tool_choice":"none""#), None);
        assert_eq!(tools_of(r#""parallel_tool_calls":false"#), None);
        for extra in [
            r#""tool_choice":"required""#,
            r#""tools":[],"tool_choice":"required""#,
            r#""tool_choice":{"type":"function","function":{"name":"get_weather"}}"#,
        ] {
            assert_eq!(refused(extra), "tool_choice", "{extra}");
        }
    }

    #[test]
    fn tool_choice_is_one_of_four() {
        let choice = |c: &str| {
            tools_of(&format!(
                r#""tools":[{WEATHER},{NOARGS}],"tool_choice":{c}"#
            ))
            .unwrap()
            .choice
        };
        assert_eq!(choice(r#""auto""#), ToolChoice::Auto);
        assert_eq!(choice("null"), ToolChoice::Auto);
        assert_eq!(choice(r#""none""#), ToolChoice::None);
        assert_eq!(choice(r#""required""#), ToolChoice::Required);
        assert_eq!(
            choice(r#"{"type":"function","function":{"name":"ns.list-all_2"}}"#),
            ToolChoice::Named("ns.list-all_2".into())
        );
        for c in [
            r#""sometimes""#,
            r#""Auto""#,
            "true",
            "[]",
            r#"{"type":"function"}"#,
            r#"{"type":"function","function":{}}"#,
            r#"{"type":"function","function":{"name":3}}"#,
            r#"{"type":"tool","function":{"name":"get_weather"}}"#,
            r#"{"function":{"name":"get_weather"}}"#,
        ] {
            assert_eq!(
                refused(&format!(r#""tools":[{WEATHER}],"tool_choice":{c}"#)),
                "tool_choice",
                "{c}"
            );
        }
        let extra = format!(
            r#""tools":[{WEATHER}],"tool_choice":{{"type":"function","function":{{"name":"rm_rf"}}}}"#
        );
        assert_eq!(refused(&extra), "tool_choice");
        assert!(message(chat(&with(&extra))).contains("\"rm_rf\""));
    }

    #[test]
    fn each_tool_is_a_named_function() {
        for tool in [
            r#"{}"#,
            r#"{"type":"function"}"#,
            r#"{"type":"retrieval","function":{"name":"a"}}"#,
            r#"{"function":{"name":"a"}}"#,
            r#"{"type":"function","function":{}}"#,
            r#"{"type":"function","function":{"name":""}}"#,
            r#"{"type":"function","function":{"name":"a b"}}"#,
            r#"{"type":"function","function":{"name":"a\u0007b"}}"#,
            r#"{"type":"function","function":{"name":"a\nb"}}"#,
            r#"{"type":"function","function":{"name":"wetter_für"}}"#,
            r#"{"type":"function","function":{"name":"a","description":"x\u0000"}}"#,
        ] {
            assert_eq!(refused(&format!(r#""tools":[{tool}]"#)), "tools", "{tool}");
        }
        let long = "x".repeat(65);
        assert_eq!(
            refused(&format!(
                r#""tools":[{{"type":"function","function":{{"name":"{long}"}}}}]"#
            )),
            "tools"
        );
        let ok = "x".repeat(64);
        assert!(tools_of(&format!(
            r#""tools":[{{"type":"function","function":{{"name":"{ok}"}}}}]"#
        ))
        .is_some());
        // Names are unique.
        let extra = format!(r#""tools":[{WEATHER},{NOARGS},{WEATHER}]"#);
        assert_eq!(refused(&extra), "tools");
        assert!(message(chat(&with(&extra))).contains("tools[2]"));
        // A malformed tool's message names its place.
        let extra =
            format!(r#""tools":[{WEATHER},{{"type":"function","function":{{"name":"a b"}}}}]"#);
        assert!(message(chat(&with(&extra))).contains("tools[1].function.name"));
    }

    #[test]
    fn parameters_are_object_schemas_of_bounded_size() {
        for params in [
            "[]",
            r#""object""#,
            "true",
            "3",
            r#"{"type":"array","items":{}}"#,
            r#"{"type":["object","null"]}"#,
        ] {
            assert_eq!(
                refused(&format!(
                    r#""tools":[{{"type":"function","function":{{"name":"a","parameters":{params}}}}}]"#
                )),
                "tools",
                "{params}"
            );
        }
        // The test limits allow 256 bytes of schema.
        let pad = "d".repeat(200);
        let fits = format!(
            r#""tools":[{{"type":"function","function":{{"name":"a","parameters":{{"type":"object","description":"{pad}"}}}}}}]"#
        );
        assert!(tools_of(&fits).is_some());
        let pad = "d".repeat(300);
        let big = format!(
            r#""tools":[{{"type":"function","function":{{"name":"a","parameters":{{"type":"object","description":"{pad}"}}}}}}]"#
        );
        assert_eq!(over(&big), "tools");
        assert!(message(chat(&with(&big))).contains("tools[0].function.parameters"));
    }

    #[test]
    fn tools_are_counted() {
        let tools = |n: usize| {
            (0..n)
                .map(|i| format!(r#"{{"type":"function","function":{{"name":"t{i}"}}}}"#))
                .collect::<Vec<_>>()
                .join(",")
        };
        // The test limits allow 4.
        assert_eq!(
            tools_of(&format!(r#""tools":[{}]"#, tools(4)))
                .unwrap()
                .tools
                .len(),
            4
        );
        assert_eq!(over(&format!(r#""tools":[{}]"#, tools(5))), "tools");
        assert_eq!(over(&format!(r#""tools":[{}]"#, tools(10_000))), "tools");
    }

    #[test]
    fn response_formats() {
        let format = |rf: &str| {
            chat(&with(&format!(r#""response_format":{rf}"#)))
                .unwrap()
                .request
                .format
        };
        assert_eq!(format("null"), ResponseFormat::Text);
        assert_eq!(format(r#"{"type":"text"}"#), ResponseFormat::Text);
        assert_eq!(
            format(r#"{"type":"json_object"}"#),
            ResponseFormat::JsonObject
        );
        assert_eq!(
            format(
                r#"{"type":"json_schema","json_schema":{"name":"Answer_1","schema":{"type":"object","properties":{"a":{"type":"integer"}}},"strict":true,"description":"d"}}"#
            ),
            ResponseFormat::JsonSchema {
                name: "Answer_1".into(),
                schema: json!({"type":"object","properties":{"a":{"type":"integer"}}}),
            }
        );
        // Any schema that is an object: the answer need not be an object.
        assert_eq!(
            format(
                r#"{"type":"json_schema","json_schema":{"name":"l","schema":{"type":"array"}}}"#
            ),
            ResponseFormat::JsonSchema {
                name: "l".into(),
                schema: json!({"type":"array"}),
            }
        );
        for rf in [
            r#"{"type":"xml"}"#,
            r#"{"type":3}"#,
            r#"{}"#,
            r#""json_object""#,
            r#"{"type":"json_schema"}"#,
            r#"{"type":"json_schema","json_schema":"x"}"#,
            r#"{"type":"json_schema","json_schema":{"schema":{}}}"#,
            r#"{"type":"json_schema","json_schema":{"name":"a.b","schema":{}}}"#,
            r#"{"type":"json_schema","json_schema":{"name":"a","schema":"{}"}}"#,
            r#"{"type":"json_schema","json_schema":{"name":"a","schema":true}}"#,
            r#"{"type":"json_schema","json_schema":{"name":"a"}}"#,
            r#"{"type":"json_schema","json_schema":{"name":"a","schema":{},"strict":"yes"}}"#,
            r#"{"type":"json_schema","json_schema":{"name":"a","schema":{},"description":1}}"#,
        ] {
            assert_eq!(
                refused(&format!(r#""response_format":{rf}"#)),
                "response_format",
                "{rf}"
            );
        }
        assert!(message(chat(&with(r#""response_format":{"type":"xml"}"#))).contains("\"xml\""));
        let pad = "d".repeat(300);
        let big = format!(
            r#""response_format":{{"type":"json_schema","json_schema":{{"name":"a","schema":{{"description":"{pad}"}}}}}}"#
        );
        assert_eq!(over(&big), "response_format");
        // Completions take it too.
        let body = r#"{"model":"m","prompt":"a","response_format":{"type":"json_object"}}"#;
        assert_eq!(
            completion(body).unwrap().request.format,
            ResponseFormat::JsonObject
        );
        let body = r#"{"model":"m","prompt":"a","response_format":{"type":"yaml"}}"#;
        assert_eq!(bad_value(completion(body), body), "response_format");
    }

    fn history(assistant: &str, tool: &str) -> String {
        format!(
            r#"{{"model":"m","messages":[{{"role":"user","content":"weather?"}},{assistant},{tool}]}}"#
        )
    }

    const ANSWER: &str =
        r#"{"role":"tool","tool_call_id":"call_1","name":"get_weather","content":"sunny"}"#;

    #[test]
    fn tool_calls_and_results_in_the_history() {
        let body = history(
            r#"{"role":"assistant","content":null,"tool_calls":[{"id":"call_1","type":"function","function":{"name":"get_weather","arguments":"{\"city\":\"Oslo\"}"}},{"function":{"name":"ns.list-all_2","arguments":{}}}]}"#,
            ANSWER,
        );
        let Prompt::Chat(m) = chat(&body).unwrap().request.prompt else {
            panic!()
        };
        assert_eq!(
            m[1],
            ChatMessage {
                role: "assistant".into(),
                content: String::new(),
                tool_calls: vec![
                    ToolCall {
                        id: "call_1".into(),
                        name: "get_weather".into(),
                        arguments: json!({"city":"Oslo"}),
                    },
                    ToolCall {
                        id: "call_1_1".into(),
                        name: "ns.list-all_2".into(),
                        arguments: json!({}),
                    },
                ],
                tool_call_id: None,
                name: None,
            }
        );
        assert_eq!(
            m[2],
            ChatMessage {
                role: "tool".into(),
                content: "sunny".into(),
                tool_calls: vec![],
                tool_call_id: Some("call_1".into()),
                name: Some("get_weather".into()),
            }
        );
        // Content beside the calls is kept; an empty list is no calls; the tool's name is
        // optional.
        let body = history(
            r#"{"role":"assistant","content":"Let me look.","tool_calls":[]}"#,
            r#"{"role":"tool","tool_call_id":"c","content":[{"type":"text","text":"sunny"}]}"#,
        );
        let Prompt::Chat(m) = chat(&body).unwrap().request.prompt else {
            panic!()
        };
        assert_eq!(m[1], ChatMessage::text("assistant", "Let me look."));
        assert_eq!(m[2].name, None);
        assert_eq!(m[2].content, "sunny");
    }

    #[test]
    fn malformed_history_names_the_place() {
        let call = |f: &str| {
            format!(
                r#"{{"role":"assistant","tool_calls":[{{"id":"call_1","type":"function","function":{f}}}]}}"#
            )
        };
        for (assistant, named) in [
            (call(r#"{"name":"get_weather","arguments":"{\"city\":"}"#), "messages[1].tool_calls[0].function.arguments"),
            (call(r#"{"name":"get_weather","arguments":"[1,2]"}"#), "messages[1].tool_calls[0].function.arguments"),
            (call(r#"{"name":"get_weather","arguments":"\"x\""}"#), "messages[1].tool_calls[0].function.arguments"),
            (call(r#"{"name":"get_weather","arguments":""}"#), "messages[1].tool_calls[0].function.arguments"),
            (call(r#"{"name":"get_weather","arguments":3}"#), "messages[1].tool_calls[0].function.arguments"),
            (call(r#"{"name":"get_weather","arguments":[]}"#), "messages[1].tool_calls[0].function.arguments"),
            (call(r#"{"name":"get_weather"}"#), "messages[1].tool_calls[0].function.arguments"),
            (call(r#"{"arguments":"{}"}"#), "messages[1].tool_calls[0].function.name"),
            (call(r#"{"name":"a\u0001","arguments":"{}"}"#), "messages[1].tool_calls[0].function.name"),
            (r#"{"role":"assistant","tool_calls":[{"id":"c"}]}"#.to_string(), "messages[1].tool_calls[0].function"),
            (r#"{"role":"assistant","tool_calls":[{"id":"","function":{"name":"a","arguments":"{}"}}]}"#.to_string(), "messages[1].tool_calls[0].id"),
            (r#"{"role":"assistant","tool_calls":[{"type":"code","function":{"name":"a","arguments":"{}"}}]}"#.to_string(), "messages[1].tool_calls[0].type"),
            // Arguments nested deeper than a body may be (the test limits allow 8).
            (call(&format!(r#"{{"name":"a","arguments":"{{\"x\":{}1{}}}"}}"#, "[".repeat(9), "]".repeat(9))), "messages[1].tool_calls[0].function.arguments"),
        ] {
            let body = history(&assistant, ANSWER);
            assert_eq!(bad_value(chat(&body), &body), "messages", "{assistant}");
            let m = message(chat(&body));
            assert!(m.contains(named), "{assistant}: {m}");
        }
        for (tool, named) in [
            (
                r#"{"role":"tool","content":"sunny"}"#,
                "messages[2].tool_call_id",
            ),
            (
                r#"{"role":"tool","tool_call_id":"","content":"sunny"}"#,
                "messages[2].tool_call_id",
            ),
            (
                r#"{"role":"tool","tool_call_id":"c"}"#,
                "messages[2].content",
            ),
            (
                r#"{"role":"tool","tool_call_id":"c\u0000","content":"x"}"#,
                "NUL",
            ),
            (
                r#"{"role":"user","content":"x","tool_calls":[{"id":"c","function":{"name":"a","arguments":"{}"}}]}"#,
                "messages[2].tool_calls",
            ),
        ] {
            let body = history(r#"{"role":"assistant","content":"ok"}"#, tool);
            assert_eq!(bad_value(chat(&body), &body), "messages", "{tool}");
            let m = message(chat(&body));
            assert!(m.contains(named), "{tool}: {m}");
        }
    }
}
