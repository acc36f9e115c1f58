//! The `inspect` report for a validated GGUF file: a text summary for people and a JSON object for
//! scripts. The toolchain's `inspect` command prints it; it lives beside the reader, not in the
//! toolchain, so that the GGUF fuzz target exercises it on odd but valid files without building
//! the toolchain, and so that the binary only parses arguments and maps errors.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::Path;

use serde_json::{json, Map, Value as Json};

use crate::gguf::{Array, GgufFile, Value};

/// Arrays longer than this are shown as `[array of N <type>]` in the text report.
pub const TEXT_MAX_ARRAY: usize = 8;

/// Strings longer than this many characters are cut in the text report.
pub const TEXT_MAX_STRING: usize = 80;

/// Arrays longer than this are summarized as `{"array_of": type, "len": N}` in the JSON report.
/// Strings are kept whole there: a script asking for JSON usually wants the chat template.
pub const JSON_MAX_ARRAY: usize = 64;

/// The text report: a summary block, then every key-value pair on one line.
pub fn text_report(path: &Path, file: &GgufFile) -> String {
    let mut out = String::new();
    // fmt::Write on a String cannot fail; the results are ignored on purpose.
    let mut line = |label: &str, value: &str| {
        let _ = writeln!(out, "{:<16}{value}", format!("{label}:"));
    };
    line("file", &path.display().to_string());
    line("architecture", file.architecture().unwrap_or("(not set)"));
    line("gguf version", &file.version().to_string());
    line("file type", &file_type_label(file));
    let n = file.n_params();
    line("parameters", &format!("{} ({n})", human_count(n)));
    line(
        "context length",
        &file
            .context_length()
            .map_or_else(|| "(not set)".to_string(), |c| c.to_string()),
    );
    line("tensors", &tensor_summary(file));
    line(
        "chat template",
        &file
            .chat_template()
            .map_or_else(|| "no".to_string(), |t| format!("yes ({} bytes)", t.len())),
    );
    line("alignment", &file.alignment().to_string());
    line("data offset", &file.data_offset().to_string());
    line("file size", &format!("{} bytes", file.file_size()));
    let _ = writeln!(out, "metadata ({} keys):", file.kvs().len());
    for (key, value) in file.kvs() {
        let _ = writeln!(out, "  {key} = {}", format_value(value));
    }
    out
}

/// The JSON report: the summary fields, `metadata` (key → value) and `tensors`.
pub fn json_report(path: &Path, file: &GgufFile) -> Json {
    // serde_json's Map sorts keys, which is as good an order as any for scripts.
    let metadata: Map<String, Json> = file
        .kvs()
        .iter()
        .map(|(k, v)| (k.clone(), value_json(v)))
        .collect();
    let tensors: Vec<Json> = file
        .tensors()
        .iter()
        .map(|t| {
            json!({
                "name": t.name,
                "type": t.ggml_type.name(),
                "dims": t.dims,
                "offset": t.offset,
                "n_bytes": t.n_bytes,
            })
        })
        .collect();
    json!({
        "path": path.display().to_string(),
        "architecture": file.architecture(),
        "version": file.version(),
        "file_type": file.file_type_name(),
        "file_type_id": file.file_type(),
        "n_params": file.n_params(),
        "context_length": file.context_length(),
        "n_tensors": file.tensors().len(),
        "has_chat_template": file.chat_template().is_some(),
        "alignment": file.alignment(),
        "data_offset": file.data_offset(),
        "file_size": file.file_size(),
        "metadata": metadata,
        "tensors": tensors,
    })
}

/// One value on one line: strings quoted, escaped and cut at [`TEXT_MAX_STRING`] characters,
/// arrays longer than [`TEXT_MAX_ARRAY`] summarized as `[array of N <type>]`.
pub fn format_value(value: &Value) -> String {
    match value {
        Value::U8(v) => v.to_string(),
        Value::I8(v) => v.to_string(),
        Value::U16(v) => v.to_string(),
        Value::I16(v) => v.to_string(),
        Value::U32(v) => v.to_string(),
        Value::I32(v) => v.to_string(),
        Value::U64(v) => v.to_string(),
        Value::I64(v) => v.to_string(),
        Value::F32(v) => v.to_string(),
        Value::F64(v) => v.to_string(),
        Value::Bool(v) => v.to_string(),
        Value::String(s) => format_string(s),
        Value::Array(a) => format_array(a),
    }
}

fn format_string(s: &str) -> String {
    match s.char_indices().nth(TEXT_MAX_STRING) {
        // Debug formatting quotes and escapes newlines and control characters.
        None => format!("{s:?}"),
        Some((cut, _)) => format!("{:?}… ({} bytes)", &s[..cut], s.len()),
    }
}

fn format_array(a: &Array) -> String {
    if a.len() > TEXT_MAX_ARRAY {
        return format!("[array of {} {}]", a.len(), a.elem_type());
    }
    let items: Vec<String> = (0..a.len())
        .filter_map(|i| a.get(i))
        .map(|v| format_value(&v))
        .collect();
    format!("[{}]", items.join(", "))
}

fn value_json(value: &Value) -> Json {
    match value {
        Value::U8(v) => json!(v),
        Value::I8(v) => json!(v),
        Value::U16(v) => json!(v),
        Value::I16(v) => json!(v),
        Value::U32(v) => json!(v),
        Value::I32(v) => json!(v),
        Value::U64(v) => json!(v),
        Value::I64(v) => json!(v),
        Value::F32(v) => f32_json(*v),
        // NaN and infinities have no JSON form; serde_json writes them as null.
        Value::F64(v) => json!(v),
        Value::Bool(v) => json!(v),
        Value::String(s) => json!(s),
        Value::Array(a) if a.len() > JSON_MAX_ARRAY => {
            json!({ "array_of": a.elem_type().name(), "len": a.len() })
        }
        Value::Array(a) => Json::Array(
            (0..a.len())
                .filter_map(|i| a.get(i))
                .map(|v| value_json(&v))
                .collect(),
        ),
    }
}

/// An f32 as the shortest decimal that reads back as the same f32: widening to f64 first would
/// print representation noise (1e-6 would become 9.999999974752427e-7). NaN and infinities are
/// null.
fn f32_json(v: f32) -> Json {
    v.to_string()
        .parse::<f64>()
        .ok()
        .and_then(serde_json::Number::from_f64)
        .map_or(Json::Null, Json::Number)
}

fn file_type_label(file: &GgufFile) -> String {
    match (file.file_type(), file.file_type_name()) {
        (Some(id), Some(name)) => format!("{name} ({id})"),
        (Some(id), None) => format!("unknown ({id})"),
        (None, _) => match file.get("general.file_type") {
            Some(v) => format!("invalid ({})", format_value(v)),
            None => "(not set)".to_string(),
        },
    }
}

/// "272 (Q4_1 ×170, F32 ×61, …)": the count and how many tensors of each type, most first.
fn tensor_summary(file: &GgufFile) -> String {
    let mut by_type: BTreeMap<&str, usize> = BTreeMap::new();
    for t in file.tensors() {
        *by_type.entry(t.ggml_type.name()).or_default() += 1;
    }
    let mut counts: Vec<(&str, usize)> = by_type.into_iter().collect();
    counts.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(b.0)));
    let parts: Vec<String> = counts.iter().map(|(t, n)| format!("{t} ×{n}")).collect();
    if parts.is_empty() {
        "0".to_string()
    } else {
        format!("{} ({})", file.tensors().len(), parts.join(", "))
    }
}

/// 134515008 → "134.5M".
fn human_count(n: u64) -> String {
    // Lossy on purpose: this is for display only.
    let f = n as f64;
    if n >= 1_000_000_000 {
        format!("{:.2}B", f / 1e9)
    } else if n >= 1_000_000 {
        format!("{:.1}M", f / 1e6)
    } else if n >= 1_000 {
        format!("{:.1}K", f / 1e3)
    } else {
        n.to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_are_summarized() {
        assert_eq!(format_value(&Value::U32(7)), "7");
        assert_eq!(format_value(&Value::String("a\nb".into())), "\"a\\nb\"");
        let long = "é".repeat(100);
        let s = format_value(&Value::String(long));
        assert!(s.ends_with("… (200 bytes)"), "{s}");
        assert_eq!(
            format_value(&Value::Array(Array::U32(vec![1, 2, 3]))),
            "[1, 2, 3]"
        );
        assert_eq!(
            format_value(&Value::Array(Array::String(vec!["x".into(); 100]))),
            "[array of 100 string]"
        );
        assert_eq!(
            value_json(&Value::Array(Array::F32(vec![0.0; 100]))),
            json!({"array_of": "f32", "len": 100})
        );
        assert_eq!(value_json(&Value::F32(f32::NAN)), Json::Null);
        assert_eq!(value_json(&Value::F32(f32::INFINITY)), Json::Null);
        assert_eq!(value_json(&Value::F32(1e-6)).to_string(), "1e-6");
        assert_eq!(value_json(&Value::F32(10000.0)).to_string(), "10000.0");
    }

    #[test]
    fn counts_are_humanized() {
        assert_eq!(human_count(999), "999");
        assert_eq!(human_count(134_515_008), "134.5M");
        assert_eq!(human_count(7_241_732_096), "7.24B");
    }
}
