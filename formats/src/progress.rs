//! The progress protocol of the toolchain's long commands (`quantize`, `finetune`, `eval`): a
//! contract between `inhouse-quantize`, which writes it, and the daemon's job runner, which
//! starts it as a child and reads its stdout. Both ends use the one [`Event`] type, so a field
//! renamed on one side is a compile error or a parse error, not a silently missing value.
//!
//! With `--progress json`, stdout carries one JSON object per line and nothing else:
//!
//! ```text
//! {"type":"progress","phase":"train","epoch":1,"epochs":2,"step":3,"steps":10,"loss":2.95,
//!  "tokens_per_s":51.2,"eta_s":40.0,"fraction":0.15}
//! {"type":"checkpoint","epoch":1,"path":"/abs/path"}
//! {"type":"log","message":"…"}
//! {"type":"result", …command-specific summary…}            (last, on success only)
//! ```
//!
//! `phase` is one of `train`, `eval`, `quantize`, `convert`; fields that do not apply are left
//! out, `fraction` (0..=1, the whole command's progress) is always there. With `--progress text`
//! (the default) the same events are written to stderr for a person and the result to stdout as
//! pretty JSON. Either way llama.cpp's own log goes to stderr only (the toolchain's `llama`
//! module sees to that).
//!
//! Exit status: 0 success, 1 failure, 2 bad input or usage; the reason is on stderr
//! ([`ToolError`]).

use std::io::Write;
use std::path::Path;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

/// How events are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Format {
    /// Human-readable lines on stderr, the result as pretty JSON on stdout.
    #[default]
    Text,
    /// One JSON object per line on stdout.
    Json,
}

/// The phase a progress line belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Phase {
    /// Training steps.
    Train,
    /// Evaluation (validation loss, perplexity, the bias probe).
    Eval,
    /// Quantizing a model.
    Quantize,
    /// Converting the base model to F32 before training.
    Convert,
    /// Generating and judging synthetic data with a teacher model (`synth`).
    Generate,
}

/// One progress line. Fields that do not apply stay `None` and are left out.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Progress {
    /// The phase.
    pub phase: Phase,
    /// The epoch (1-based).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub epoch: Option<u32>,
    /// Epochs in the run.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub epochs: Option<u32>,
    /// The step in this phase (1-based).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub step: Option<u64>,
    /// Steps in this phase.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub steps: Option<u64>,
    /// The loss of this step (nats per token).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub loss: Option<f64>,
    /// The latest validation loss (finetune: on evaluation lines, and carried on the training
    /// lines after it, so the last line a reader keeps always has it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub eval_loss: Option<f64>,
    /// Tokens processed per second in this phase so far.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tokens_per_s: Option<f64>,
    /// Estimated seconds left for the command.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub eta_s: Option<f64>,
    /// The command's progress, 0..=1.
    pub fraction: f64,
}

impl Progress {
    /// A line with only a phase and a fraction.
    pub fn new(phase: Phase, fraction: f64) -> Self {
        Self {
            phase,
            epoch: None,
            epochs: None,
            step: None,
            steps: None,
            loss: None,
            eval_loss: None,
            tokens_per_s: None,
            eta_s: None,
            fraction,
        }
    }
}

/// One line of the protocol, tagged by `"type"` (written first, so that a person skimming the
/// stream sees it). The toolchain writes it ([`Reporter`]), the daemon's job runner reads it back
/// with `serde_json::from_str::<Event>`; a line that does not parse is not an event.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "lowercase")]
pub enum Event {
    /// How far the command is.
    Progress(Progress),
    /// A checkpoint was written (finetune), from which a later run can resume.
    Checkpoint {
        /// The epoch after which it was written (1-based).
        epoch: u32,
        /// Its absolute path.
        path: String,
    },
    /// A message for a person (a warning, a decision taken). It may quote the data, so the
    /// daemon does not store it.
    Log {
        /// The message.
        message: String,
    },
    /// The command's summary, last and on success only. Its fields depend on the command; it
    /// never holds a `"type"` key of its own.
    Result(Map<String, Value>),
}

/// Writes protocol events in the chosen [`Format`]. Cheap to copy into callbacks.
#[derive(Debug, Clone, Copy, Default)]
pub struct Reporter {
    format: Format,
}

/// A finite value or nothing (JSON has no NaN).
fn finite(x: Option<f64>) -> Option<f64> {
    x.filter(|v| v.is_finite())
}

impl Reporter {
    /// A reporter writing `format`.
    pub fn new(format: Format) -> Self {
        Self { format }
    }

    /// The format.
    pub fn format(&self) -> Format {
        self.format
    }

    /// Writes one event as a JSON line to stdout. A closed stdout (the reader went away) is
    /// ignored: the work goes on and the exit status still tells the outcome.
    fn json_line(event: &Event) {
        let Ok(line) = serde_json::to_string(event) else {
            return;
        };
        let mut out = std::io::stdout().lock();
        let _ = writeln!(out, "{line}").and_then(|()| out.flush());
    }

    fn text_line(line: &str) {
        let _ = writeln!(std::io::stderr().lock(), "{line}");
    }

    /// Reports progress.
    pub fn progress(&self, p: &Progress) {
        let mut p = p.clone();
        p.loss = finite(p.loss);
        p.tokens_per_s = finite(p.tokens_per_s);
        p.eta_s = finite(p.eta_s.map(|e| e.max(0.0)));
        p.fraction = if p.fraction.is_finite() {
            p.fraction.clamp(0.0, 1.0)
        } else {
            0.0
        };
        match self.format {
            Format::Json => Self::json_line(&Event::Progress(p)),
            Format::Text => {
                let mut line = format!(
                    "{:>8} {:5.1}%",
                    format!("{:?}", p.phase).to_lowercase(),
                    p.fraction * 100.0
                );
                if let (Some(e), Some(n)) = (p.epoch, p.epochs) {
                    line += &format!("  epoch {e}/{n}");
                }
                if let (Some(s), Some(n)) = (p.step, p.steps) {
                    line += &format!("  step {s}/{n}");
                }
                if let Some(l) = p.loss {
                    line += &format!("  loss {l:.4}");
                }
                if let Some(t) = p.tokens_per_s {
                    line += &format!("  {t:.1} tok/s");
                }
                if let Some(e) = p.eta_s {
                    line += &format!("  eta {e:.0}s");
                }
                Self::text_line(&line);
            }
        }
    }

    /// Reports a checkpoint written after `epoch`.
    pub fn checkpoint(&self, epoch: u32, path: &Path) {
        let path = std::path::absolute(path).unwrap_or_else(|_| path.to_path_buf());
        match self.format {
            Format::Json => Self::json_line(&Event::Checkpoint {
                epoch,
                path: path.to_string_lossy().into_owned(),
            }),
            Format::Text => Self::text_line(&format!(
                "checkpoint after epoch {epoch}: {}",
                path.display()
            )),
        }
    }

    /// Reports a message for a person (a warning, a decision taken).
    pub fn log(&self, message: &str) {
        match self.format {
            Format::Json => Self::json_line(&Event::Log {
                message: message.to_string(),
            }),
            Format::Text => Self::text_line(message),
        }
    }

    /// Reports the result: `summary` must be a JSON object without a `"type"` key;
    /// `"type": "result"` is added.
    pub fn result(&self, summary: Value) {
        match self.format {
            Format::Json => {
                // Anything but an object has no fields to carry: an empty result says "done".
                let fields = match summary {
                    Value::Object(mut m) => {
                        m.remove("type");
                        m
                    }
                    _ => Map::new(),
                };
                Self::json_line(&Event::Result(fields));
            }
            Format::Text => {
                let mut v = summary;
                if let Value::Object(m) = &mut v {
                    m.insert("type".into(), "result".into());
                }
                let text = serde_json::to_string_pretty(&v).unwrap_or_default();
                let mut out = std::io::stdout().lock();
                let _ = writeln!(out, "{text}").and_then(|()| out.flush());
            }
        }
    }
}

/// Why a command failed, and so its exit status.
#[derive(Debug, thiserror::Error)]
pub enum ToolError {
    /// Bad input or parameters, found before any heavy work: exit status 2.
    #[error("{0}")]
    BadInput(String),
    /// The work itself failed: exit status 1.
    #[error("{0}")]
    Failed(String),
}

impl ToolError {
    /// The process exit status for this error.
    pub fn exit_code(&self) -> u8 {
        match self {
            Self::BadInput(_) => 2,
            Self::Failed(_) => 1,
        }
    }
}

/// Seconds left at a constant rate: `elapsed / done * (total - done)`.
pub fn eta(elapsed_s: f64, done: f64, total: f64) -> Option<f64> {
    (done > 0.0 && total >= done).then(|| elapsed_s / done * (total - done))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn progress_omits_missing_fields() {
        let mut p = Progress::new(Phase::Train, 0.5);
        p.loss = Some(f64::NAN);
        let v = serde_json::to_value(&p).unwrap();
        assert_eq!(v["phase"], "train");
        assert!(v.get("epoch").is_none());
        assert_eq!(eta(10.0, 1.0, 3.0), Some(20.0));
    }

    /// What the toolchain writes is what the daemon reads back, variant by variant, with
    /// `"type"` first on the line.
    #[test]
    fn events_round_trip_from_emit_to_parse() {
        let mut train = Progress::new(Phase::Train, 0.15);
        train.epoch = Some(1);
        train.epochs = Some(2);
        train.step = Some(3);
        train.steps = Some(10);
        train.loss = Some(2.95);
        train.tokens_per_s = Some(51.2);
        train.eta_s = Some(40.0);
        let mut result = Map::new();
        result.insert("command".into(), json!("quantize"));
        result.insert("output_bytes".into(), json!(123));
        result.insert("report".into(), json!({"ppl": [1.5, 2.5]}));
        let events = [
            Event::Progress(train),
            Event::Progress(Progress::new(Phase::Convert, 0.0)),
            Event::Checkpoint {
                epoch: 1,
                path: "/work/job/ckpt-1.gguf".into(),
            },
            Event::Log {
                message: "a \"quoted\" line\nand another".into(),
            },
            Event::Result(result),
            Event::Result(Map::new()),
        ];
        for e in &events {
            let line = serde_json::to_string(e).unwrap();
            assert!(!line.contains('\n'), "one line per event: {line}");
            assert!(line.starts_with("{\"type\":\""), "{line}");
            let back: Event = serde_json::from_str(&line).unwrap();
            assert_eq!(&back, e, "{line}");
        }
    }

    /// The lines as the protocol documents them (and as older toolchains wrote them, keys in any
    /// order) parse into the typed events.
    #[test]
    fn documented_lines_parse() {
        let e: Event = serde_json::from_str(
            r#"{"type":"progress","phase":"train","epoch":1,"epochs":2,"step":3,"steps":10,"loss":2.95,"tokens_per_s":51.2,"eta_s":40.0,"fraction":0.15}"#,
        )
        .unwrap();
        let Event::Progress(p) = e else {
            panic!("{e:?}")
        };
        assert_eq!(
            (p.phase, p.epoch, p.steps),
            (Phase::Train, Some(1), Some(10))
        );
        let e: Event =
            serde_json::from_str(r#"{"fraction":1.0,"phase":"quantize","type":"progress"}"#)
                .unwrap();
        assert_eq!(e, Event::Progress(Progress::new(Phase::Quantize, 1.0)));
        let e: Event =
            serde_json::from_str(r#"{"type":"checkpoint","epoch":2,"path":"/abs/p"}"#).unwrap();
        assert_eq!(
            e,
            Event::Checkpoint {
                epoch: 2,
                path: "/abs/p".into()
            }
        );
        let e: Event = serde_json::from_str(r#"{"type":"result","command":"eval"}"#).unwrap();
        let Event::Result(m) = e else { panic!("{e:?}") };
        assert_eq!(m.get("command"), Some(&json!("eval")));
        assert!(m.get("type").is_none(), "the tag is not a result field");
    }

    /// A renamed field or an unknown type is an error that names it, not a silent default.
    #[test]
    fn lines_off_the_protocol_are_refused() {
        for (line, names) in [
            (r#"{"type":"progress","phase":"train"}"#, "fraction"),
            (
                r#"{"type":"progress","phase":"warmup","fraction":0.1}"#,
                "warmup",
            ),
            (r#"{"type":"checkpoint","epoch":1,"file":"/x"}"#, "path"),
            (r#"{"type":"status","fraction":0.1}"#, "status"),
            (r#"{"phase":"train","fraction":0.1}"#, "type"),
        ] {
            let e = serde_json::from_str::<Event>(line).unwrap_err().to_string();
            assert!(e.contains(names), "{line}: {e}");
        }
        assert!(serde_json::from_str::<Event>("[1]").is_err());
    }

    #[test]
    fn exit_statuses() {
        assert_eq!(ToolError::BadInput("x".into()).exit_code(), 2);
        assert_eq!(ToolError::Failed("x".into()).exit_code(), 1);
    }
}
