//! Reading the inputs: which files, in which order, and how each becomes documents.
//!
//! - `.txt` and `.md`: one document per file, the whole text.
//! - `.jsonl`: one document per non-blank line, in one of three shapes:
//!   `{"text": …}`, chat `{"messages": [{"role", "content"}, …]}`, or Alpaca
//!   `{"instruction", "input" (optional), "output"}`. Other keys on a line (ids, sources, …) are
//!   ignored; a line with keys of two shapes is refused as ambiguous.
//!
//! Folders are walked recursively in file-name order so that the same tree always gives the
//! same document order (and so the same "first" document when duplicates are dropped). Inside a
//! folder, files with other extensions are skipped and counted, hidden entries (`.git`,
//! `.DS_Store`) are skipped silently; a file named directly on the command line must have a supported extension.

use std::fs::File;
use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};

use serde::Serialize;
use serde_json::Value;

/// One chat message. Roles are limited to the three every chat template knows; a `tool` message
/// would need the tool-call metadata that this format does not keep.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Message {
    /// `system`, `user` or `assistant`.
    pub role: String,
    /// The message text.
    pub content: String,
}

/// What a document holds. The structure is kept to the output so that fine-tuning can apply the
/// model's own chat template later.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Content {
    /// Plain text (a `.txt`/`.md` file or a `{"text": …}` line).
    Text(String),
    /// A conversation (a chat line, or an Alpaca line turned into a user and an assistant turn).
    Messages(Vec<Message>),
}

impl Content {
    /// The texts of the document: the text itself, or each message's content in order.
    pub fn texts(&self) -> Vec<&str> {
        match self {
            Self::Text(t) => vec![t.as_str()],
            Self::Messages(ms) => ms.iter().map(|m| m.content.as_str()).collect(),
        }
    }

    /// Applies `f` to every text of the document, keeping roles and order.
    pub fn map_texts(self, mut f: impl FnMut(&str) -> String) -> Self {
        match self {
            Self::Text(t) => Self::Text(f(&t)),
            Self::Messages(ms) => Self::Messages(
                ms.into_iter()
                    .map(|m| Message {
                        content: f(&m.content),
                        role: m.role,
                    })
                    .collect(),
            ),
        }
    }

    /// The message contents joined by newlines: what filters and near-duplicate detection read.
    pub fn joined(&self) -> String {
        self.texts().join("\n")
    }
}

/// Where a document or an error comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Origin {
    /// Index of the file in the run's file list.
    pub file: usize,
    /// 1-based line in a JSONL file; `None` for a whole-file document or error.
    pub line: Option<usize>,
}

/// One problem with the input, reported with its file and line.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct InputError {
    /// The file, as it was named or found.
    pub file: String,
    /// 1-based line, when the problem is on one line.
    pub line: Option<usize>,
    /// What is wrong.
    pub message: String,
}

impl std::fmt::Display for InputError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.line {
            Some(line) => write!(f, "{}:{line}: {}", self.file, self.message),
            None => write!(f, "{}: {}", self.file, self.message),
        }
    }
}

/// The kinds of input file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// `.txt` or `.md`: one document.
    Text,
    /// `.jsonl`: one document per line.
    Jsonl,
}

impl Format {
    /// The format a file name implies (case-insensitive extension), if supported.
    pub fn of(path: &Path) -> Option<Self> {
        let ext = path.extension()?.to_str()?.to_ascii_lowercase();
        match ext.as_str() {
            "txt" | "md" => Some(Self::Text),
            "jsonl" => Some(Self::Jsonl),
            _ => None,
        }
    }
}

/// The files a run reads, in order, and what was passed over.
#[derive(Debug, Default)]
pub struct FileList {
    /// Supported files, in processing order.
    pub files: Vec<(PathBuf, Format)>,
    /// Files inside input folders skipped for their extension (hidden entries are skipped
    /// without being counted: a `.git` folder would swamp the number).
    pub ignored: usize,
    /// Inputs that could not be listed (missing path, unreadable folder, unsupported file).
    pub errors: Vec<InputError>,
}

/// Lists the files of `inputs` in order: the inputs as given, folders expanded recursively in
/// file-name order. Anything under `exclude` (the output folder, when it lies inside an input
/// folder) is skipped, so a rerun never reads its own previous output.
pub fn list_files(inputs: &[PathBuf], exclude: Option<&Path>) -> FileList {
    let mut list = FileList::default();
    for input in inputs {
        let shown = input.display().to_string();
        let meta = match std::fs::metadata(input) {
            Ok(m) => m,
            Err(e) => {
                list.errors.push(InputError {
                    file: shown,
                    line: None,
                    message: format!("cannot open: {e}"),
                });
                continue;
            }
        };
        if meta.is_file() {
            match Format::of(input) {
                Some(format) => list.files.push((input.clone(), format)),
                None => list.errors.push(InputError {
                    file: shown,
                    line: None,
                    message: "unsupported file type (expected .txt, .md or .jsonl)".into(),
                }),
            }
            continue;
        }
        let walker = walkdir::WalkDir::new(input)
            .follow_links(true)
            .sort_by_file_name()
            .into_iter()
            .filter_entry(|e| {
                let hidden = e.depth() > 0 && e.file_name().to_string_lossy().starts_with('.');
                let excluded = exclude.is_some_and(|x| {
                    e.file_type().is_dir() && std::fs::canonicalize(e.path()).is_ok_and(|p| p == x)
                });
                !hidden && !excluded
            });
        for entry in walker {
            match entry {
                Ok(e) if e.file_type().is_file() => match Format::of(e.path()) {
                    Some(format) => list.files.push((e.into_path(), format)),
                    None => list.ignored += 1,
                },
                Ok(_) => {}
                Err(e) => list.errors.push(InputError {
                    file: e
                        .path()
                        .map_or_else(|| shown.clone(), |p| p.display().to_string()),
                    line: None,
                    message: format!("cannot read: {e}"),
                }),
            }
        }
    }
    list
}

/// Reads one file and hands each document (or error) to `sink`, in order. `sink` returns
/// `false` to stop early (`--on-error fail`).
pub fn read_file(
    path: &Path,
    format: Format,
    file_index: usize,
    sink: &mut dyn FnMut(Result<(Origin, Content), InputError>) -> bool,
) {
    let shown = path.display().to_string();
    let error = |line: Option<usize>, message: String| InputError {
        file: shown.clone(),
        line,
        message,
    };
    let file = match File::open(path) {
        Ok(f) => f,
        Err(e) => {
            sink(Err(error(None, format!("cannot open: {e}"))));
            return;
        }
    };
    match format {
        Format::Text => {
            let mut bytes = Vec::new();
            if let Err(e) = BufReader::new(file).read_to_end(&mut bytes) {
                sink(Err(error(None, format!("cannot read: {e}"))));
                return;
            }
            let doc = match String::from_utf8(bytes) {
                Ok(text) => Ok((
                    Origin {
                        file: file_index,
                        line: None,
                    },
                    Content::Text(text),
                )),
                Err(e) => {
                    // Name the line of the first bad byte so the file can be fixed.
                    let at = e.utf8_error().valid_up_to();
                    let line = 1 + e.as_bytes()[..at].iter().filter(|&&b| b == b'\n').count();
                    Err(error(Some(line), "not valid UTF-8".into()))
                }
            };
            sink(doc);
        }
        Format::Jsonl => {
            let mut reader = BufReader::new(file);
            let mut buf = Vec::new();
            let mut line_no = 0usize;
            loop {
                buf.clear();
                match reader.read_until(b'\n', &mut buf) {
                    Ok(0) => break,
                    Ok(_) => {}
                    Err(e) => {
                        sink(Err(error(Some(line_no + 1), format!("cannot read: {e}"))));
                        return;
                    }
                }
                line_no += 1;
                let mut bytes = buf.as_slice();
                bytes = bytes.strip_suffix(b"\n").unwrap_or(bytes);
                bytes = bytes.strip_suffix(b"\r").unwrap_or(bytes);
                if line_no == 1 {
                    bytes = bytes.strip_prefix(b"\xef\xbb\xbf").unwrap_or(bytes);
                }
                let item = match std::str::from_utf8(bytes) {
                    Err(_) => Err(error(Some(line_no), "not valid UTF-8".into())),
                    Ok(text) if text.trim().is_empty() => continue,
                    Ok(text) => parse_line(text)
                        .map(|content| {
                            (
                                Origin {
                                    file: file_index,
                                    line: Some(line_no),
                                },
                                content,
                            )
                        })
                        .map_err(|msg| error(Some(line_no), msg)),
                };
                if !sink(item) {
                    return;
                }
            }
        }
    }
}

/// Parses one JSONL line into a document, or says why it cannot.
pub fn parse_line(line: &str) -> Result<Content, String> {
    let value: Value = serde_json::from_str(line).map_err(|e| format!("not JSON: {e}"))?;
    let Value::Object(obj) = value else {
        return Err("not a JSON object".into());
    };
    let has = |k: &str| obj.contains_key(k);
    let shapes = [
        has("text"),
        has("messages"),
        has("instruction") || has("output"),
    ];
    match shapes {
        [true, false, false] => Ok(Content::Text(string_field(&obj, "text")?)),
        [false, true, false] => {
            let Some(Value::Array(items)) = obj.get("messages") else {
                return Err("\"messages\" is not an array".into());
            };
            if items.is_empty() {
                return Err("\"messages\" is empty".into());
            }
            let mut messages = Vec::with_capacity(items.len());
            for (i, item) in items.iter().enumerate() {
                let Value::Object(m) = item else {
                    return Err(format!("messages[{i}] is not an object"));
                };
                let role = string_field(m, "role").map_err(|e| format!("messages[{i}]: {e}"))?;
                if !matches!(role.as_str(), "system" | "user" | "assistant") {
                    return Err(format!(
                        "messages[{i}]: unknown role {role:?} (expected system, user or assistant)"
                    ));
                }
                let content =
                    string_field(m, "content").map_err(|e| format!("messages[{i}]: {e}"))?;
                messages.push(Message { role, content });
            }
            Ok(Content::Messages(messages))
        }
        [false, false, true] => {
            let instruction = string_field(&obj, "instruction")?;
            let output = string_field(&obj, "output")?;
            let input = match obj.get("input") {
                None | Some(Value::Null) => String::new(),
                Some(Value::String(s)) => s.clone(),
                Some(_) => return Err("\"input\" is not a string".into()),
            };
            // The user turn carries the instruction, then the input when there is one; a blank
            // line between them is how the Alpaca prompt itself separates the two.
            let user = if input.trim().is_empty() {
                instruction
            } else {
                format!("{instruction}\n\n{input}")
            };
            Ok(Content::Messages(vec![
                Message {
                    role: "user".into(),
                    content: user,
                },
                Message {
                    role: "assistant".into(),
                    content: output,
                },
            ]))
        }
        [false, false, false] => Err(
            "unknown shape (expected \"text\", \"messages\", or \"instruction\"/\"output\")".into(),
        ),
        _ => Err("ambiguous shape: keys of more than one of text / messages / instruction".into()),
    }
}

fn string_field(obj: &serde_json::Map<String, Value>, key: &str) -> Result<String, String> {
    match obj.get(key) {
        Some(Value::String(s)) => Ok(s.clone()),
        Some(_) => Err(format!("{key:?} is not a string")),
        None => Err(format!("missing {key:?}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn three_shapes() {
        assert_eq!(
            parse_line(r#"{"text":"hi","id":3}"#),
            Ok(Content::Text("hi".into()))
        );
        let chat = parse_line(
            r#"{"messages":[{"role":"user","content":"q"},{"role":"assistant","content":"a"}]}"#,
        );
        assert!(matches!(chat, Ok(Content::Messages(ref m)) if m.len() == 2));
        let alpaca = parse_line(r#"{"instruction":"Do","input":"this","output":"done"}"#).unwrap();
        assert_eq!(alpaca.texts(), vec!["Do\n\nthis", "done"]);
        let no_input = parse_line(r#"{"instruction":"Do","input":"","output":"done"}"#).unwrap();
        assert_eq!(no_input.texts(), vec!["Do", "done"]);
    }

    #[test]
    fn refused_shapes() {
        for bad in [
            "{",
            "[1]",
            r#"{"foo":1}"#,
            r#"{"text":5}"#,
            r#"{"text":"a","messages":[]}"#,
            r#"{"messages":[]}"#,
            r#"{"messages":[{"role":"tool","content":"x"}]}"#,
            r#"{"instruction":"x"}"#,
        ] {
            assert!(parse_line(bad).is_err(), "{bad}");
        }
    }
}
