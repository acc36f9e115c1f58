//! The model card (issue 17, point 7): one page per stored model, rendered from its manifest
//! alone, so that it can be regenerated at any time and always says the same thing.
//!
//! What goes in comes from [`Manifest`] and `provenance.extra`, which a finetune or quantize job
//! fills (see `src/jobs/runner.rs`): `job`, `kind`, `base_model {name, digest}`, `dataset {id,
//! sha256, size}`, `eval_dataset`, `options`, `evaluation` (the toolchain's finetune result: method,
//! LoRA settings, loss curves, best checkpoint, the gate's result), `data_reports` (the
//! prepare/synth reports of the data it was trained on) and `quantization {type, perplexity_base,
//! perplexity_quantized}`. Every part may be missing: a missing section says "not recorded".
//!
//! Two formats carry the same content: a self-contained HTML page (inline CSS, inline SVG for the
//! loss curves, no scripts, no external resources; every string from the manifest escaped) and
//! GitHub-flavoured Markdown (tables; the curves as tables of points).
//!
//! The output is a pure function of the manifest (no clock, no file system), so its SHA-256 (which
//! the caller records in the audit log) identifies the card.
//!
//! Numbers: the exact value from the manifest is kept in a `data-value` attribute (serde_json's
//! shortest round-trip form, so `data-value.parse::<f64>()` gives back the stored number); the
//! shown text is losses with 4 decimals, other reals with 4 significant digits, integers as they
//! are. HTML hooks for tests and tools:
//! - sections: `section#identity`, `#provenance`, `#training`, `#loss-curves`, `#gate`, `#bias`,
//!   `#quantization`; `footer#card-basis` (`data-digest`, `data-manifest-sha256`).
//! - key/value tables (`table.kv`) have one `tr[data-key=KEY]` per field; the value cell is
//!   `td.num[data-value]` for numbers. Tables: `#identity-table`, `#provenance-table`, `#options`,
//!   `table.data-report` (`#data-report-N`, rows of personal-data counts have class `pii`),
//!   `#training-table`, `#quantization-table`, `table.bias-report`.
//! - a missing part is `p.not-recorded[data-for=WHAT]` ("… not recorded").
//! - `#verdict` and `#gate-verdict`: class `verdict blessed|refused|not-gated`.
//! - `#gate-table` and `#bias-table`: one `tbody tr.metric[data-metric=NAME]` per metric, class
//!   `pass` or `fail`; cells `td.baseline`, `td.candidate`, `td.change` (with `data-value`),
//!   `td.bounds`, `td.result` (`pass`/`fail`), `td.reason`.
//! - `svg#loss-chart`: `polyline#train-loss.train-loss` and `polyline#eval-loss.eval-loss`, each
//!   with `data-points` (= its points, one per curve entry with a numeric loss), `data-steps` and
//!   `data-losses` (exact values, comma separated); axis labels `text#x-min`, `#x-max`, `#y-min`,
//!   `#y-max` with `data-value`. The points are also listed in `#curve-train-table` and
//!   `#curve-eval-table`.

use super::{Kind, Manifest};
use serde_json::Value;
use std::fmt::Write as _;

/// The card's output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CardFormat {
    /// One self-contained HTML page.
    Html,
    /// GitHub-flavoured Markdown.
    Markdown,
}

impl CardFormat {
    /// The usual file extension (`html`, `md`).
    pub fn extension(self) -> &'static str {
        match self {
            CardFormat::Html => "html",
            CardFormat::Markdown => "md",
        }
    }
}

impl std::str::FromStr for CardFormat {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.to_ascii_lowercase().as_str() {
            "html" => Ok(CardFormat::Html),
            "md" | "markdown" => Ok(CardFormat::Markdown),
            _ => Err(format!(
                "unknown card format {s:?}: use html, md or markdown"
            )),
        }
    }
}

/// Renders the card for `manifest`.
pub fn render(manifest: &Manifest, format: CardFormat) -> String {
    let card = build(manifest);
    match format {
        CardFormat::Html => html(&card),
        CardFormat::Markdown => markdown(&card),
    }
}

/// The text shown for anything the manifest does not hold.
const NOT_RECORDED: &str = "not recorded";

// ---------------------------------------------------------------------------------------------
// The card as data: sections of blocks, rendered by `html` and `markdown` alike.

struct Card {
    name: String,
    verdict: Verdict,
    sections: Vec<Section>,
    digest: String,
    manifest_sha256: String,
}

struct Verdict {
    /// `blessed`, `refused` or `not-gated`.
    class: &'static str,
    text: String,
}

struct Section {
    id: &'static str,
    title: &'static str,
    blocks: Vec<Block>,
}

enum Block {
    Table(Table),
    /// A paragraph: optional id, class, text.
    Para(Option<&'static str>, &'static str, String),
    /// `what: not recorded`, with `data-for`.
    NotRecorded(&'static str, String),
    Chart(Curves),
}

struct Table {
    id: Option<String>,
    class: &'static str,
    caption: Option<String>,
    /// Column heads; `None` for a key/value table.
    head: Option<Vec<&'static str>>,
    rows: Vec<Row>,
}

#[derive(Default)]
struct Row {
    /// `data-key` (key/value tables) or `data-metric` (metric tables).
    key: Option<(&'static str, String)>,
    classes: Vec<&'static str>,
    /// The first cell of a key/value row is its label (a `th`).
    label: Option<String>,
    cells: Vec<Cell>,
}

enum Cell {
    Text(&'static str, String),
    /// (class, exact value, shown text).
    Num(&'static str, String, String),
    /// A digest or identifier, in monospace.
    Code(String),
    /// Pass/fail; `None`: not recorded.
    Result(Option<bool>),
    Missing,
}

#[derive(Default)]
struct Curves {
    train: Vec<Point>,
    eval: Vec<Point>,
    /// Entries without a numeric loss, left out of the drawing.
    skipped: usize,
}

struct Point {
    step: f64,
    step_exact: String,
    loss: f64,
    loss_exact: String,
    epoch: Option<(String, f64)>,
    lr: Option<(String, f64)>,
}

impl Table {
    fn kv(id: &str, rows: Vec<Row>) -> Table {
        Table {
            id: Some(id.to_string()),
            class: "kv",
            caption: None,
            head: None,
            rows,
        }
    }
}

fn kv(key: &str, label: &str, cell: Cell) -> Row {
    Row {
        key: Some(("data-key", key.to_string())),
        label: Some(label.to_string()),
        cells: vec![cell],
        ..Row::default()
    }
}

fn text(s: impl Into<String>) -> Cell {
    Cell::Text("", s.into())
}

// ---------------------------------------------------------------------------------------------
// Numbers.

/// 4 significant digits (fixed notation between 1e-3 and 1e7, scientific outside), parseable by
/// `str::parse::<f64>`.
fn sig4(x: f64) -> String {
    if !x.is_finite() {
        return format!("{x}");
    }
    if x == 0.0 {
        return "0".into();
    }
    let a = x.abs();
    if (1e-3..1e7).contains(&a) {
        let decimals = (3 - a.log10().floor() as i32).max(0) as usize;
        format!("{x:.decimals$}")
    } else {
        format!("{x:.3e}")
    }
}

/// A step (or any count that may be stored as a real): integers as integers.
fn step_text(x: f64) -> String {
    if x.is_finite() && x.fract() == 0.0 && x.abs() < 1e15 {
        format!("{}", x as i64)
    } else {
        sig4(x)
    }
}

/// A loss: 4 decimals.
fn loss4(x: f64) -> String {
    format!("{x:.4}")
}

/// Bytes, with a binary-prefixed size.
fn bytes_text(n: u64) -> String {
    const UNITS: [&str; 5] = ["KiB", "MiB", "GiB", "TiB", "PiB"];
    if n < 1024 {
        return format!("{n} bytes");
    }
    let mut v = n as f64;
    let mut unit = "";
    for u in UNITS {
        v /= 1024.0;
        unit = u;
        if v < 1024.0 {
            break;
        }
    }
    format!("{n} bytes ({} {unit})", sig4(v))
}

/// Parameters: 134515008 → "134515008 (134.5M)".
fn count_text(n: u64) -> String {
    let (v, suffix) = match n {
        0..=9_999 => return n.to_string(),
        10_000..=999_999 => (n as f64 / 1e3, "K"),
        1_000_000..=999_999_999 => (n as f64 / 1e6, "M"),
        _ => (n as f64 / 1e9, "B"),
    };
    format!("{n} ({}{suffix})", sig4(v))
}

/// How a number is shown.
#[derive(Clone, Copy)]
enum Style {
    /// Integers as they are, reals with 4 significant digits.
    General,
    /// 4 decimals.
    Loss,
    /// Like `General`, with a sign.
    Change,
}

/// A JSON number as a cell: exact value in `data-value`, shown per `style`.
fn num_cell(class: &'static str, v: &Value, style: Style) -> Cell {
    match v {
        Value::Number(n) => {
            let exact = n.to_string();
            let x = n.as_f64().unwrap_or(f64::NAN);
            let shown = if n.is_i64() || n.is_u64() {
                match style {
                    Style::Loss => loss4(x),
                    Style::Change if x > 0.0 => format!("+{exact}"),
                    _ => exact.clone(),
                }
            } else {
                match style {
                    Style::General => sig4(x),
                    Style::Loss => loss4(x),
                    Style::Change if x > 0.0 => format!("+{}", sig4(x)),
                    Style::Change => sig4(x),
                }
            };
            Cell::Num(class, exact, shown)
        }
        Value::Null => Cell::Missing,
        other => Cell::Text(class, scalar_text(other)),
    }
}

fn u64_cell(n: u64, shown: String) -> Cell {
    Cell::Num("", n.to_string(), shown)
}

fn f64_cell(class: &'static str, x: f64, shown: String) -> Cell {
    Cell::Num(class, format!("{x}"), shown)
}

/// A scalar (or anything) as plain text: strings as they are, the rest as compact JSON.
fn scalar_text(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Bool(b) => if *b { "yes" } else { "no" }.into(),
        other => other.to_string(),
    }
}

/// A JSON value as a cell of a generic key/value table.
fn value_cell(v: &Value) -> Cell {
    match v {
        Value::Number(_) => num_cell("", v, Style::General),
        Value::Null => Cell::Missing,
        Value::Array(a) if a.is_empty() => text("none"),
        Value::Array(a) if a.len() <= 16 && a.iter().all(|x| !x.is_object() && !x.is_array()) => {
            text(a.iter().map(scalar_text).collect::<Vec<_>>().join(", "))
        }
        Value::Array(a) => text(format!("{} items", a.len())),
        other => text(scalar_text(other)),
    }
}

/// The value at `path` (object keys), if present and not null.
fn at<'a>(v: &'a Value, path: &[&str]) -> Option<&'a Value> {
    let mut cur = v;
    for key in path {
        cur = cur.get(key)?;
    }
    (!cur.is_null()).then_some(cur)
}

fn as_f64(v: Option<&Value>) -> Option<f64> {
    v.and_then(Value::as_f64).filter(|x| x.is_finite())
}

/// Key/value rows of a JSON object, nested objects flattened to dotted keys (at most 6 levels,
/// at most `MAX_FLAT_ROWS` rows). Keys naming personal data (`pii`, `personal`) get class `pii`.
fn flatten(v: &Value) -> Vec<Row> {
    const MAX_FLAT_ROWS: usize = 200;
    fn walk(prefix: &str, v: &Value, depth: usize, rows: &mut Vec<Row>, total: &mut usize) {
        match v {
            Value::Object(m) if depth < 6 && !m.is_empty() => {
                for (k, x) in m {
                    let key = if prefix.is_empty() {
                        k.clone()
                    } else {
                        format!("{prefix}.{k}")
                    };
                    walk(&key, x, depth + 1, rows, total);
                }
            }
            other => {
                *total += 1;
                if rows.len() < MAX_FLAT_ROWS {
                    let cell = match other {
                        Value::Object(m) if m.is_empty() => text("none"),
                        Value::Object(_) => text(other.to_string()),
                        _ => value_cell(other),
                    };
                    let mut row = kv(prefix, prefix, cell);
                    let lower = prefix.to_ascii_lowercase();
                    if lower.contains("pii") || lower.contains("personal") {
                        row.classes.push("pii");
                    }
                    rows.push(row);
                }
            }
        }
    }
    let mut rows = Vec::new();
    let mut total = 0;
    match v {
        Value::Object(_) => walk("", v, 0, &mut rows, &mut total),
        other => {
            total = 1;
            rows.push(kv("value", "value", value_cell(other)));
        }
    }
    if total > rows.len() {
        rows.push(Row {
            label: Some("…".into()),
            cells: vec![text(format!("{} more fields", total - rows.len()))],
            ..Row::default()
        });
    }
    rows
}

// ---------------------------------------------------------------------------------------------
// Building the card from the manifest.

fn build(m: &Manifest) -> Card {
    let extra = &m.provenance.extra;
    let evaluation = at(extra, &["evaluation"]).filter(|v| v.is_object());
    let gate = evaluation
        .and_then(|e| at(e, &["gate"]))
        .or_else(|| at(extra, &["gate"]))
        .filter(|v| v.is_object());
    let candidate = at(extra, &["candidate"]).and_then(Value::as_bool) == Some(true);
    let verdict = match gate
        .and_then(|g| at(g, &["blessed"]))
        .and_then(Value::as_bool)
    {
        Some(true) => Verdict {
            class: "blessed",
            text: "Blessed: the evaluation gate passed it".into(),
        },
        Some(false) => Verdict {
            class: "refused",
            text: "Refused: the evaluation gate did not bless it".into(),
        },
        None => Verdict {
            class: "not-gated",
            text: "Not gated: no evaluation gate result is recorded".into(),
        },
    };
    let mut verdict = verdict;
    if candidate {
        verdict.text.push_str(" (registered as a candidate only)");
    }
    let manifest_sha256 = serde_json::to_vec(m)
        .map(|bytes| hex(ring::digest::digest(&ring::digest::SHA256, &bytes).as_ref()))
        .unwrap_or_default();
    Card {
        name: m.name.clone(),
        verdict,
        sections: vec![
            identity(m),
            provenance(m, extra),
            training(evaluation),
            curves(evaluation),
            gate_section(gate),
            bias(extra, gate),
            quantization(m, extra),
        ],
        digest: m.digest.clone(),
        manifest_sha256,
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().fold(String::new(), |mut s, b| {
        let _ = write!(s, "{b:02x}");
        s
    })
}

fn identity(m: &Manifest) -> Section {
    let mut rows = vec![
        kv("name", "Name", text(&m.name)),
        kv(
            "kind",
            "Kind",
            text(match m.kind {
                Kind::Model => "model",
                Kind::Adapter => "LoRA adapter",
            }),
        ),
    ];
    if m.kind == Kind::Adapter || m.base.is_some() {
        rows.push(kv(
            "base",
            "Base model",
            m.base.as_ref().map_or(Cell::Missing, text),
        ));
    }
    rows.extend([
        kv("digest", "SHA-256", Cell::Code(m.digest.clone())),
        kv("size", "Size", u64_cell(m.size, bytes_text(m.size))),
        kv("architecture", "Architecture", text(&m.architecture)),
        kv(
            "parameters",
            "Parameters",
            u64_cell(m.n_params, count_text(m.n_params)),
        ),
        kv(
            "quantization",
            "Quantization",
            m.quantization.as_ref().map_or(Cell::Missing, text),
        ),
        kv(
            "context_length",
            "Context length",
            m.context_length
                .map_or(Cell::Missing, |n| u64_cell(n, n.to_string())),
        ),
        kv(
            "layers",
            "Layers",
            m.n_layers
                .map_or(Cell::Missing, |n| u64_cell(n, n.to_string())),
        ),
        kv(
            "chat_template",
            "Chat template",
            text(if m.chat_template { "yes" } else { "no" }),
        ),
    ]);
    Section {
        id: "identity",
        title: "Identity",
        blocks: vec![Block::Table(Table::kv("identity-table", rows))],
    }
}

fn date_text(unix: u64) -> String {
    i64::try_from(unix)
        .ok()
        .and_then(|s| jiff::Timestamp::from_second(s).ok())
        .and_then(|t| jiff::fmt::strtime::format("%Y-%m-%d %H:%M:%S UTC", t).ok())
        .unwrap_or_else(|| unix.to_string())
}

fn dataset_rows(rows: &mut Vec<Row>, key: &str, label: &str, d: Option<&Value>) {
    match d {
        Some(d) => {
            rows.push(kv(
                &format!("{key}.id"),
                &format!("{label} id"),
                at(d, &["id"]).map_or(Cell::Missing, value_cell),
            ));
            rows.push(kv(
                &format!("{key}.sha256"),
                &format!("{label} SHA-256"),
                at(d, &["sha256"]).map_or(Cell::Missing, |v| Cell::Code(scalar_text(v))),
            ));
            rows.push(kv(
                &format!("{key}.size"),
                &format!("{label} size"),
                match at(d, &["size"]).and_then(Value::as_u64) {
                    Some(n) => u64_cell(n, bytes_text(n)),
                    None => at(d, &["size"]).map_or(Cell::Missing, value_cell),
                },
            ));
        }
        None => rows.push(kv(key, label, Cell::Missing)),
    }
}

fn provenance(m: &Manifest, extra: &Value) -> Section {
    let p = &m.provenance;
    let mut blocks = Vec::new();
    let mut rows = vec![
        kv(
            "imported_at",
            "Registered",
            Cell::Num("", p.imported_at.to_string(), date_text(p.imported_at)),
        ),
        kv(
            "imported_by_uid",
            "Registered by uid",
            u64_cell(p.imported_by_uid.into(), p.imported_by_uid.to_string()),
        ),
        kv(
            "source",
            "Source file",
            p.source.as_ref().map_or(Cell::Missing, text),
        ),
        kv(
            "signed_by",
            "Signed by",
            p.signed_by
                .as_ref()
                .map_or(text("not signed"), |s| Cell::Code(s.clone())),
        ),
    ];
    if let Some(at) = p.signed_at {
        rows.push(kv(
            "signed_at",
            "Signed at",
            Cell::Num("", at.to_string(), date_text(at)),
        ));
    }
    let trained = ["job", "base_model", "dataset", "evaluation"]
        .iter()
        .any(|k| at(extra, &[k]).is_some());
    if trained {
        rows.push(kv(
            "job",
            "Job",
            at(extra, &["job"]).map_or(Cell::Missing, value_cell),
        ));
        rows.push(kv(
            "job_kind",
            "Job kind",
            at(extra, &["kind"]).map_or(Cell::Missing, value_cell),
        ));
        let base = at(extra, &["base_model"]);
        rows.push(kv(
            "base_model.name",
            "Base model",
            base.and_then(|b| at(b, &["name"]))
                .map_or(Cell::Missing, value_cell),
        ));
        rows.push(kv(
            "base_model.digest",
            "Base model SHA-256",
            base.and_then(|b| at(b, &["digest"]))
                .map_or(Cell::Missing, |v| Cell::Code(scalar_text(v))),
        ));
        dataset_rows(&mut rows, "dataset", "Dataset", at(extra, &["dataset"]));
        dataset_rows(
            &mut rows,
            "eval_dataset",
            "Eval dataset",
            at(extra, &["eval_dataset"]),
        );
        if at(extra, &["candidate"]).and_then(Value::as_bool) == Some(true) {
            rows.push(kv(
                "candidate",
                "Candidate",
                text("yes: the gate refused it, so it is registered as a candidate only"),
            ));
        }
    }
    blocks.push(Block::Table(Table::kv("provenance-table", rows)));
    if !trained {
        blocks.push(Block::NotRecorded(
            "training-provenance",
            "Training provenance (job, base model, datasets)".into(),
        ));
    }

    blocks.push(Block::Para(None, "subhead", "Options".into()));
    match at(extra, &["options"]) {
        Some(o) if o.as_object().is_some_and(|o| !o.is_empty()) => {
            blocks.push(Block::Table(Table::kv("options", flatten(o))))
        }
        _ => blocks.push(Block::NotRecorded("options", "Options".into())),
    }

    blocks.push(Block::Para(None, "subhead", "Data reports".into()));
    let reports = at(extra, &["data_reports"])
        .and_then(Value::as_array)
        .filter(|a| !a.is_empty());
    match reports {
        Some(reports) => {
            for (i, r) in reports.iter().enumerate() {
                let job = at(r, &["job"]).map(scalar_text);
                let kind = at(r, &["kind"]).map(scalar_text);
                let caption = match (&kind, &job) {
                    (Some(k), Some(j)) => format!("{k} report (job {j})"),
                    (Some(k), None) => format!("{k} report"),
                    (None, Some(j)) => format!("report of job {j}"),
                    (None, None) => format!("report {}", i + 1),
                };
                match at(r, &["report"]) {
                    Some(report) => blocks.push(Block::Table(Table {
                        id: Some(format!("data-report-{i}")),
                        class: "kv data-report",
                        caption: Some(caption),
                        head: None,
                        rows: flatten(report),
                    })),
                    None => blocks.push(Block::NotRecorded("data-report", caption)),
                }
            }
        }
        None => blocks.push(Block::NotRecorded(
            "data-reports",
            "Data reports (prepare/synth counts, personal data removed)".into(),
        )),
    }
    Section {
        id: "provenance",
        title: "Provenance",
        blocks,
    }
}

fn training(evaluation: Option<&Value>) -> Section {
    let Some(e) = evaluation else {
        return Section {
            id: "training",
            title: "Training",
            blocks: vec![Block::NotRecorded("training", "Training".into())],
        };
    };
    let get = |path: &[&str]| at(e, path);
    let cell = |path: &[&str]| get(path).map_or(Cell::Missing, value_cell);
    let method = get(&["method"]).map(scalar_text);
    let mut rows = vec![kv("method", "Method", cell(&["method"]))];
    match get(&["lora"]) {
        Some(l) => {
            rows.push(kv("lora.rank", "LoRA rank", cell(&["lora", "rank"])));
            rows.push(kv("lora.alpha", "LoRA alpha", cell(&["lora", "alpha"])));
            rows.push(kv(
                "lora.targets",
                "LoRA targets",
                at(l, &["targets"]).map_or(Cell::Missing, value_cell),
            ));
        }
        None if method.as_deref() == Some("full") => {
            rows.push(kv("lora", "LoRA", text("none (full fine-tuning)")))
        }
        None => rows.push(kv("lora", "LoRA", Cell::Missing)),
    }
    rows.push(kv(
        "masked",
        "Loss on",
        match get(&["masked"]).and_then(Value::as_bool) {
            Some(true) => text("the assistant's tokens only (masked)"),
            Some(false) => text("every token (not masked)"),
            None => Cell::Missing,
        },
    ));
    rows.push(kv("epochs", "Epochs", cell(&["epochs"])));
    rows.push(kv("steps", "Steps", cell(&["steps"])));
    rows.push(kv(
        "tokens_trained",
        "Tokens trained",
        cell(&["tokens_trained"]),
    ));
    rows.push(kv(
        "tokens_per_second",
        "Tokens/s",
        cell(&["tokens_per_second"]),
    ));
    rows.push(kv(
        "peak_rss_bytes",
        "Peak RSS",
        match get(&["peak_rss_bytes"]).and_then(Value::as_u64) {
            Some(n) => u64_cell(n, bytes_text(n)),
            None => cell(&["peak_rss_bytes"]),
        },
    ));
    rows.push(kv("best.step", "Best step", cell(&["best", "step"])));
    rows.push(kv(
        "best.eval_loss",
        "Best eval loss",
        get(&["best", "eval_loss"]).map_or(Cell::Missing, |v| num_cell("", v, Style::Loss)),
    ));
    Section {
        id: "training",
        title: "Training",
        blocks: vec![Block::Table(Table::kv("training-table", rows))],
    }
}

fn points(v: Option<&Value>, skipped: &mut usize) -> Vec<Point> {
    let Some(entries) = v.and_then(Value::as_array) else {
        return Vec::new();
    };
    let exact = |v: Option<&Value>| {
        v.filter(|x| x.is_number())
            .map(|x| (x.to_string(), x.as_f64().unwrap_or(f64::NAN)))
    };
    let mut out = Vec::new();
    for (i, e) in entries.iter().enumerate() {
        let Some((loss_exact, loss)) = exact(e.get("loss")).filter(|(_, x)| x.is_finite()) else {
            *skipped += 1;
            continue;
        };
        let (step_exact, step) =
            exact(e.get("step")).unwrap_or_else(|| ((i + 1).to_string(), (i + 1) as f64));
        out.push(Point {
            step,
            step_exact,
            loss,
            loss_exact,
            epoch: exact(e.get("epoch")),
            lr: exact(e.get("lr")),
        });
    }
    out
}

fn curves(evaluation: Option<&Value>) -> Section {
    let curve = evaluation.and_then(|e| at(e, &["curve"]));
    let mut c = Curves::default();
    if let Some(curve) = curve {
        c.train = points(curve.get("train"), &mut c.skipped);
        c.eval = points(curve.get("eval"), &mut c.skipped);
    }
    let blocks = if c.train.is_empty() && c.eval.is_empty() {
        vec![Block::NotRecorded("loss-curves", "Loss curves".into())]
    } else {
        vec![Block::Chart(c)]
    };
    Section {
        id: "loss-curves",
        title: "Loss curves",
        blocks,
    }
}

fn bounds_text(v: Option<&Value>) -> Cell {
    match v {
        None => Cell::Missing,
        Some(Value::Object(m)) if m.is_empty() => text("none"),
        Some(Value::Object(m)) => text(
            m.iter()
                .map(|(k, v)| format!("{k}: {}", scalar_text(v)))
                .collect::<Vec<_>>()
                .join(", "),
        ),
        Some(other) => text(scalar_text(other)),
    }
}

fn metric_rows<'a>(metrics: impl Iterator<Item = &'a Value>) -> Vec<Row> {
    metrics
        .map(|mt| {
            let name = at(mt, &["name"]).map(scalar_text).unwrap_or_default();
            let pass = at(mt, &["pass"]).and_then(Value::as_bool);
            let num = |class, key| {
                at(mt, &[key]).map_or(Cell::Missing, |v| num_cell(class, v, Style::General))
            };
            Row {
                key: Some(("data-metric", name.clone())),
                classes: vec![
                    "metric",
                    match pass {
                        Some(true) => "pass",
                        Some(false) => "fail",
                        None => "unknown",
                    },
                ],
                label: None,
                cells: vec![
                    Cell::Text("metric-name", name),
                    num("baseline", "baseline"),
                    num("candidate", "candidate"),
                    at(mt, &["change"])
                        .map_or(Cell::Missing, |v| num_cell("change", v, Style::Change)),
                    match bounds_text(at(mt, &["bounds"])) {
                        Cell::Text(_, s) => Cell::Text("bounds", s),
                        other => other,
                    },
                    Cell::Result(pass),
                    Cell::Text(
                        "reason",
                        at(mt, &["reason"]).map(scalar_text).unwrap_or_default(),
                    ),
                ],
            }
        })
        .collect()
}

const METRIC_HEAD: [&str; 7] = [
    "Metric",
    "Baseline",
    "Candidate",
    "Change",
    "Bounds",
    "Result",
    "Reason",
];

fn gate_section(gate: Option<&Value>) -> Section {
    let Some(g) = gate else {
        return Section {
            id: "gate",
            title: "Evaluation gate",
            blocks: vec![Block::NotRecorded("gate", "Evaluation gate".into())],
        };
    };
    let mut blocks = Vec::new();
    let (class, verdict) = match at(g, &["blessed"]).and_then(Value::as_bool) {
        Some(true) => ("verdict blessed", "Verdict: blessed"),
        Some(false) => ("verdict refused", "Verdict: refused"),
        None => ("verdict not-gated", "Verdict: not recorded"),
    };
    blocks.push(Block::Para(Some("gate-verdict"), class, verdict.into()));
    let metrics: Vec<&Value> = at(g, &["metrics"])
        .and_then(Value::as_array)
        .map(|a| a.iter().collect())
        .unwrap_or_default();
    if metrics.is_empty() {
        blocks.push(Block::NotRecorded("gate-metrics", "Gate metrics".into()));
    } else {
        blocks.push(Block::Table(Table {
            id: Some("gate-table".into()),
            class: "metrics",
            caption: None,
            head: Some(METRIC_HEAD.to_vec()),
            rows: metric_rows(metrics.into_iter()),
        }));
    }
    if let Some(failed) = at(g, &["failed"])
        .and_then(Value::as_array)
        .filter(|a| !a.is_empty())
    {
        blocks.push(Block::Para(
            Some("gate-failed"),
            "failed",
            format!(
                "Failing metrics: {}",
                failed
                    .iter()
                    .map(scalar_text)
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        ));
    }
    if let Some(policy) =
        at(g, &["policy"]).filter(|p| p.as_object().is_some_and(|o| !o.is_empty()))
    {
        blocks.push(Block::Table(Table {
            id: Some("gate-policy".into()),
            class: "kv",
            caption: Some("Policy".into()),
            head: None,
            rows: flatten(policy),
        }));
    }
    Section {
        id: "gate",
        title: "Evaluation gate",
        blocks,
    }
}

/// Every object under a key named `bias` in `v` (not looking inside those), with its path.
fn find_bias<'a>(path: String, v: &'a Value, depth: usize, out: &mut Vec<(String, &'a Value)>) {
    if depth > 6 {
        return;
    }
    match v {
        Value::Object(m) => {
            for (k, x) in m {
                let p = if path.is_empty() {
                    k.clone()
                } else {
                    format!("{path}.{k}")
                };
                if k == "bias" && x.is_object() {
                    out.push((p, x));
                } else {
                    find_bias(p, x, depth + 1, out);
                }
            }
        }
        Value::Array(a) => {
            for (i, x) in a.iter().enumerate() {
                find_bias(format!("{path}[{i}]"), x, depth + 1, out);
            }
        }
        _ => {}
    }
}

fn bias(extra: &Value, gate: Option<&Value>) -> Section {
    let mut blocks = Vec::new();
    let metrics: Vec<&Value> = gate
        .and_then(|g| at(g, &["metrics"]))
        .and_then(Value::as_array)
        .map(|a| {
            a.iter()
                .filter(|m| {
                    at(m, &["name"]).and_then(Value::as_str).is_some_and(|n| {
                        let n = n.to_ascii_lowercase();
                        n.starts_with("bias") || n.starts_with("stereotype")
                    })
                })
                .collect()
        })
        .unwrap_or_default();
    if !metrics.is_empty() {
        blocks.push(Block::Table(Table {
            id: Some("bias-table".into()),
            class: "metrics",
            caption: Some("Bias and stereotype metrics of the gate".into()),
            head: Some(METRIC_HEAD.to_vec()),
            rows: metric_rows(metrics.into_iter()),
        }));
    }
    let mut found = Vec::new();
    find_bias(String::new(), extra, 0, &mut found);
    for (i, (path, v)) in found.into_iter().enumerate() {
        blocks.push(Block::Table(Table {
            id: Some(format!("bias-report-{i}")),
            class: "kv bias-report",
            caption: Some(path),
            head: None,
            rows: flatten(v),
        }));
    }
    if blocks.is_empty() {
        blocks.push(Block::NotRecorded("bias", "Bias results".into()));
    }
    Section {
        id: "bias",
        title: "Bias",
        blocks,
    }
}

fn quantization(m: &Manifest, extra: &Value) -> Section {
    let q = at(extra, &["quantization"])
        .or_else(|| at(extra, &["evaluation", "quantization"]))
        .filter(|v| v.is_object());
    let mut rows = vec![kv(
        "file_type",
        "File type",
        m.quantization.as_ref().map_or(Cell::Missing, text),
    )];
    let mut blocks = Vec::new();
    match q {
        Some(q) => {
            rows.push(kv(
                "type",
                "Quantized to",
                at(q, &["type"]).map_or(Cell::Missing, value_cell),
            ));
            let base = at(q, &["perplexity_base"]);
            let quant = at(q, &["perplexity_quantized"]);
            rows.push(kv(
                "perplexity_base",
                "Perplexity before",
                base.map_or(Cell::Missing, |v| num_cell("", v, Style::General)),
            ));
            rows.push(kv(
                "perplexity_quantized",
                "Perplexity after",
                quant.map_or(Cell::Missing, |v| num_cell("", v, Style::General)),
            ));
            match (as_f64(base), as_f64(quant)) {
                (Some(b), Some(qz)) if b > 0.0 => {
                    let ratio = qz / b;
                    rows.push(kv(
                        "perplexity_ratio",
                        "Perplexity ratio (after / before)",
                        f64_cell("", ratio, sig4(ratio)),
                    ));
                    let cost = (ratio - 1.0) * 100.0;
                    let shown = if cost > 0.0 {
                        format!("+{}%", sig4(cost))
                    } else {
                        format!("{}%", sig4(cost))
                    };
                    rows.push(kv(
                        "perplexity_cost_percent",
                        "Perplexity cost",
                        f64_cell("", cost, shown),
                    ));
                }
                _ => rows.push(kv("perplexity_ratio", "Perplexity ratio", Cell::Missing)),
            }
            blocks.push(Block::Table(Table::kv("quantization-table", rows)));
        }
        None => {
            blocks.push(Block::Table(Table::kv("quantization-table", rows)));
            blocks.push(Block::NotRecorded(
                "quantization",
                "Quantization and its perplexity cost".into(),
            ));
        }
    }
    Section {
        id: "quantization",
        title: "Quantization",
        blocks,
    }
}

// ---------------------------------------------------------------------------------------------
// HTML.

/// Escapes text and attribute values alike.
fn esc(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

const CSS: &str = "\
body{font-family:system-ui,-apple-system,'Segoe UI',sans-serif;margin:2rem auto;max-width:60rem;\
padding:0 1rem;color:#1b1f23;line-height:1.45}\
h1{font-size:1.6rem;margin-bottom:.3rem}h2{border-bottom:1px solid #d0d7de;padding-bottom:.2rem;\
margin-top:2rem}\
table{border-collapse:collapse;margin:.5rem 0 1rem;font-size:.92rem}\
th,td{border:1px solid #d0d7de;padding:.25rem .6rem;text-align:left;vertical-align:top}\
table.kv th{background:#f6f8fa;font-weight:600;white-space:nowrap}\
thead th{background:#f6f8fa}caption{text-align:left;font-weight:600;padding:.2rem 0}\
td.num{font-variant-numeric:tabular-nums;text-align:right}\
code{font-family:ui-monospace,SFMono-Regular,Menlo,monospace;font-size:.85em;word-break:break-all}\
tr.pii th,tr.pii td{background:#fff4d6}tr.pii th::after{content:' (personal data)';\
font-weight:400;color:#7a5a00}\
tr.fail td{background:#ffebe9}td.result.pass{color:#1a7f37;font-weight:600}\
td.result.fail{color:#cf222e;font-weight:600}\
.verdict{display:inline-block;padding:.3rem .7rem;border-radius:.3rem;font-weight:600}\
.verdict.blessed{background:#dafbe1;color:#1a7f37}.verdict.refused{background:#ffebe9;color:#cf222e}\
.verdict.not-gated{background:#f6f8fa;color:#57606a}\
.not-recorded{color:#57606a;font-style:italic}.subhead{font-weight:600;margin:1rem 0 .2rem}\
.failed{color:#cf222e}\
svg{max-width:100%;height:auto;border:1px solid #d0d7de;background:#fff}\
svg .axis{stroke:#57606a;stroke-width:1}svg text{font-size:11px;fill:#57606a}\
svg .train-loss{stroke:#0969da;stroke-width:1.5;fill:none}\
svg .eval-loss{stroke:#cf222e;stroke-width:2;fill:none}svg .eval-point{fill:#cf222e}\
footer{margin-top:2rem;border-top:1px solid #d0d7de;padding-top:.5rem;color:#57606a;\
font-size:.85rem}";

fn html(card: &Card) -> String {
    let mut h = String::new();
    let name = esc(&card.name);
    let _ = write!(
        h,
        "<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n\
         <meta http-equiv=\"Content-Security-Policy\" content=\"default-src 'none'; style-src 'unsafe-inline'\">\n\
         <meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\n\
         <title>Model card: {name}</title>\n<style>{CSS}</style>\n</head>\n<body>\n\
         <header>\n<h1>Model card: <span id=\"model-name\">{name}</span></h1>\n\
         <p id=\"verdict\" class=\"verdict {}\">{}</p>\n</header>\n<main>\n",
        card.verdict.class,
        esc(&card.verdict.text)
    );
    for s in &card.sections {
        let _ = writeln!(h, "<section id=\"{}\">\n<h2>{}</h2>", s.id, esc(s.title));
        for b in &s.blocks {
            html_block(&mut h, b);
        }
        h.push_str("</section>\n");
    }
    let _ = write!(
        h,
        "</main>\n<footer id=\"card-basis\" data-digest=\"{d}\" data-manifest-sha256=\"{ms}\">\
         Generated by inhouse {v} from the manifest of <strong>{name}</strong> \
         (model file sha256 <code>{d}</code>; manifest sha256 <code>{ms}</code>).\
         </footer>\n</body>\n</html>\n",
        d = esc(&card.digest),
        ms = esc(&card.manifest_sha256),
        v = env!("CARGO_PKG_VERSION"),
    );
    h
}

fn html_cell(h: &mut String, c: &Cell) {
    let class_attr = |class: &str, extra: &str| {
        let all: Vec<&str> = [class, extra]
            .into_iter()
            .filter(|c| !c.is_empty())
            .collect();
        if all.is_empty() {
            String::new()
        } else {
            format!(" class=\"{}\"", all.join(" "))
        }
    };
    match c {
        Cell::Text(class, s) => {
            let _ = write!(h, "<td{}>{}</td>", class_attr(class, ""), esc(s));
        }
        Cell::Num(class, exact, shown) => {
            let _ = write!(
                h,
                "<td{} data-value=\"{}\">{}</td>",
                class_attr(class, "num"),
                esc(exact),
                esc(shown)
            );
        }
        Cell::Code(s) => {
            let _ = write!(h, "<td><code>{}</code></td>", esc(s));
        }
        Cell::Result(p) => {
            let (class, t) = match p {
                Some(true) => ("pass", "pass"),
                Some(false) => ("fail", "fail"),
                None => ("not-recorded", NOT_RECORDED),
            };
            let _ = write!(h, "<td class=\"result {class}\">{t}</td>");
        }
        Cell::Missing => {
            let _ = write!(h, "<td class=\"not-recorded\">{NOT_RECORDED}</td>");
        }
    }
}

fn html_block(h: &mut String, b: &Block) {
    match b {
        Block::Para(_, "subhead", t) => {
            let _ = writeln!(h, "<h3>{}</h3>", esc(t));
        }
        Block::Para(id, class, t) => {
            let id = id.map(|i| format!(" id=\"{i}\"")).unwrap_or_default();
            let _ = writeln!(h, "<p{id} class=\"{class}\">{}</p>", esc(t));
        }
        Block::NotRecorded(what, t) => {
            let _ = writeln!(
                h,
                "<p class=\"not-recorded\" data-for=\"{what}\">{}: {NOT_RECORDED}</p>",
                esc(t)
            );
        }
        Block::Table(t) => html_table(h, t),
        Block::Chart(c) => html_chart(h, c),
    }
}

fn html_table(h: &mut String, t: &Table) {
    let id =
        t.id.as_ref()
            .map(|i| format!(" id=\"{}\"", esc(i)))
            .unwrap_or_default();
    let _ = writeln!(h, "<table{id} class=\"{}\">", t.class);
    if let Some(c) = &t.caption {
        let _ = writeln!(h, "<caption>{}</caption>", esc(c));
    }
    if let Some(head) = &t.head {
        h.push_str("<thead><tr>");
        for c in head {
            let _ = write!(h, "<th>{}</th>", esc(c));
        }
        h.push_str("</tr></thead>\n");
    }
    h.push_str("<tbody>\n");
    for r in &t.rows {
        h.push_str("<tr");
        if let Some((attr, v)) = &r.key {
            let _ = write!(h, " {attr}=\"{}\"", esc(v));
        }
        if !r.classes.is_empty() {
            let _ = write!(h, " class=\"{}\"", r.classes.join(" "));
        }
        h.push('>');
        if let Some(l) = &r.label {
            let _ = write!(h, "<th>{}</th>", esc(l));
        }
        for c in &r.cells {
            html_cell(h, c);
        }
        h.push_str("</tr>\n");
    }
    h.push_str("</tbody>\n</table>\n");
}

const SVG_W: f64 = 720.0;
const SVG_H: f64 = 340.0;
const PAD_L: f64 = 64.0;
const PAD_R: f64 = 24.0;
const PAD_T: f64 = 20.0;
const PAD_B: f64 = 44.0;

/// (min, max) of `xs`, widened when they are all equal.
fn range(xs: impl Iterator<Item = f64>) -> (f64, f64) {
    let (lo, hi) = xs.fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), x| {
        (lo.min(x), hi.max(x))
    });
    if !lo.is_finite() || !hi.is_finite() {
        return (0.0, 1.0);
    }
    if hi > lo {
        (lo, hi)
    } else {
        let pad = if lo == 0.0 { 0.5 } else { lo.abs() * 0.05 };
        (lo - pad, hi + pad)
    }
}

fn html_chart(h: &mut String, c: &Curves) {
    let all = || c.train.iter().chain(c.eval.iter());
    let (x0, x1) = range(all().map(|p| p.step));
    let (y0, y1) = range(all().map(|p| p.loss));
    let (xlo_data, xhi_data) = (
        all().map(|p| p.step).fold(f64::INFINITY, f64::min),
        all().map(|p| p.step).fold(f64::NEG_INFINITY, f64::max),
    );
    let (ylo_data, yhi_data) = (
        all().map(|p| p.loss).fold(f64::INFINITY, f64::min),
        all().map(|p| p.loss).fold(f64::NEG_INFINITY, f64::max),
    );
    let px = |x: f64| PAD_L + (x - x0) / (x1 - x0) * (SVG_W - PAD_L - PAD_R);
    let py = |y: f64| PAD_T + (y1 - y) / (y1 - y0) * (SVG_H - PAD_T - PAD_B);
    let (bottom, right) = (SVG_H - PAD_B, SVG_W - PAD_R);
    let _ = writeln!(
        h,
        "<svg id=\"loss-chart\" xmlns=\"http://www.w3.org/2000/svg\" viewBox=\"0 0 {SVG_W} {SVG_H}\" \
         width=\"{SVG_W}\" height=\"{SVG_H}\" role=\"img\" aria-labelledby=\"loss-chart-title\">\n\
         <title id=\"loss-chart-title\">Train and eval loss by step</title>\n\
         <line class=\"axis\" x1=\"{PAD_L}\" y1=\"{bottom}\" x2=\"{right}\" y2=\"{bottom}\"/>\n\
         <line class=\"axis\" x1=\"{PAD_L}\" y1=\"{PAD_T}\" x2=\"{PAD_L}\" y2=\"{bottom}\"/>"
    );
    // Axis labels: the data's own min and max (exact in data-value).
    let label = |h: &mut String, id: &str, x: f64, y: f64, anchor: &str, v: f64, shown: String| {
        let _ = writeln!(
            h,
            "<text id=\"{id}\" class=\"axis-label\" x=\"{x:.2}\" y=\"{y:.2}\" text-anchor=\"{anchor}\" data-value=\"{v}\">{}</text>",
            esc(&shown)
        );
    };
    label(
        h,
        "x-min",
        px(xlo_data),
        bottom + 16.0,
        "middle",
        xlo_data,
        step_text(xlo_data),
    );
    label(
        h,
        "x-max",
        px(xhi_data),
        bottom + 16.0,
        "middle",
        xhi_data,
        step_text(xhi_data),
    );
    label(
        h,
        "y-min",
        PAD_L - 6.0,
        py(ylo_data) + 4.0,
        "end",
        ylo_data,
        loss4(ylo_data),
    );
    label(
        h,
        "y-max",
        PAD_L - 6.0,
        py(yhi_data) + 4.0,
        "end",
        yhi_data,
        loss4(yhi_data),
    );
    let _ = writeln!(
        h,
        "<text class=\"axis-title\" x=\"{:.2}\" y=\"{:.2}\" text-anchor=\"middle\">step</text>\n\
         <text class=\"axis-title\" x=\"14\" y=\"{:.2}\" text-anchor=\"middle\" transform=\"rotate(-90 14 {:.2})\">loss</text>",
        (PAD_L + right) / 2.0,
        SVG_H - 8.0,
        (PAD_T + bottom) / 2.0,
        (PAD_T + bottom) / 2.0,
    );
    for (id, pts) in [("train-loss", &c.train), ("eval-loss", &c.eval)] {
        let coords: Vec<String> = pts
            .iter()
            .map(|p| format!("{:.2},{:.2}", px(p.step), py(p.loss)))
            .collect();
        let steps: Vec<&str> = pts.iter().map(|p| p.step_exact.as_str()).collect();
        let losses: Vec<&str> = pts.iter().map(|p| p.loss_exact.as_str()).collect();
        let _ = writeln!(
            h,
            "<polyline id=\"{id}\" class=\"{id}\" data-points=\"{}\" data-steps=\"{}\" data-losses=\"{}\" points=\"{}\"/>",
            pts.len(),
            esc(&steps.join(",")),
            esc(&losses.join(",")),
            coords.join(" ")
        );
    }
    for p in &c.eval {
        let _ = writeln!(
            h,
            "<circle class=\"eval-point\" cx=\"{:.2}\" cy=\"{:.2}\" r=\"3\"/>",
            px(p.step),
            py(p.loss)
        );
    }
    // Legend.
    let lx = right - 150.0;
    let _ = writeln!(
        h,
        "<line class=\"train-loss\" x1=\"{lx}\" y1=\"{a}\" x2=\"{b}\" y2=\"{a}\"/>\
         <text x=\"{c}\" y=\"{ta}\">train loss ({nt} points)</text>\n\
         <line class=\"eval-loss\" x1=\"{lx}\" y1=\"{d}\" x2=\"{b}\" y2=\"{d}\"/>\
         <text x=\"{c}\" y=\"{td}\">eval loss ({ne} points)</text>\n</svg>",
        a = PAD_T + 8.0,
        b = lx + 20.0,
        c = lx + 26.0,
        ta = PAD_T + 12.0,
        d = PAD_T + 24.0,
        td = PAD_T + 28.0,
        nt = c.train.len(),
        ne = c.eval.len(),
    );
    if c.skipped > 0 {
        let _ = writeln!(
            h,
            "<p class=\"note\">{} curve entries without a numeric loss are not drawn.</p>",
            c.skipped
        );
    }
    h.push_str("<details>\n<summary>The points</summary>\n");
    for t in point_tables(c) {
        html_table(h, &t);
    }
    h.push_str("</details>\n");
}

/// The curves as tables (Markdown shows these; HTML keeps them under the drawing).
fn point_tables(c: &Curves) -> Vec<Table> {
    let opt = |v: &Option<(String, f64)>, loss: bool| match v {
        Some((exact, x)) => Cell::Num("", exact.clone(), if loss { loss4(*x) } else { sig4(*x) }),
        None => Cell::Missing,
    };
    let row = |p: &Point, with_lr: bool| {
        let mut cells = vec![
            Cell::Num("step", p.step_exact.clone(), step_text(p.step)),
            opt(&p.epoch, false),
            Cell::Num("loss", p.loss_exact.clone(), loss4(p.loss)),
        ];
        if with_lr {
            cells.push(opt(&p.lr, false));
        }
        Row {
            cells,
            ..Row::default()
        }
    };
    vec![
        Table {
            id: Some("curve-train-table".into()),
            class: "points",
            caption: Some(format!("Train loss ({} points)", c.train.len())),
            head: Some(vec!["Step", "Epoch", "Loss", "Learning rate"]),
            rows: c.train.iter().map(|p| row(p, true)).collect(),
        },
        Table {
            id: Some("curve-eval-table".into()),
            class: "points",
            caption: Some(format!("Eval loss ({} points)", c.eval.len())),
            head: Some(vec!["Step", "Epoch", "Loss"]),
            rows: c.eval.iter().map(|p| row(p, false)).collect(),
        },
    ]
}

// ---------------------------------------------------------------------------------------------
// Markdown.

/// Escapes text for a GFM table cell (and for running text): Markdown punctuation with a
/// backslash, HTML's specials as entities (GFM passes raw HTML through), newlines as spaces.
fn md_esc(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '\\' | '|' | '`' | '*' | '_' | '[' | ']' | '#' => {
                out.push('\\');
                out.push(c);
            }
            '\n' | '\r' => out.push(' '),
            c => out.push(c),
        }
    }
    out
}

fn md_cell(c: &Cell) -> String {
    match c {
        Cell::Text(_, s) => md_esc(s),
        Cell::Num(_, _, shown) => md_esc(shown),
        Cell::Code(s)
            if !s.is_empty()
                && s.chars()
                    .all(|c| c.is_ascii_alphanumeric() || ":-.+/=".contains(c)) =>
        {
            format!("`{s}`")
        }
        Cell::Code(s) => md_esc(s),
        Cell::Result(Some(true)) => "pass".into(),
        Cell::Result(Some(false)) => "**fail**".into(),
        Cell::Result(None) | Cell::Missing => format!("_{NOT_RECORDED}_"),
    }
}

fn md_table(out: &mut String, t: &Table) {
    if let Some(c) = &t.caption {
        let _ = writeln!(out, "**{}**\n", md_esc(c));
    }
    let head: Vec<&str> = t.head.clone().unwrap_or_else(|| vec!["Field", "Value"]);
    let _ = writeln!(out, "| {} |", head.join(" | "));
    let _ = writeln!(
        out,
        "|{}",
        head.iter().map(|_| " --- |").collect::<String>()
    );
    for r in &t.rows {
        let mut cells = Vec::new();
        if let Some(l) = &r.label {
            if r.classes.contains(&"pii") {
                cells.push(format!("**{}** (personal data)", md_esc(l)));
            } else {
                cells.push(md_esc(l));
            }
        }
        cells.extend(r.cells.iter().map(md_cell));
        let _ = writeln!(out, "| {} |", cells.join(" | "));
    }
    out.push('\n');
}

fn markdown(card: &Card) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "# Model card: {}\n\n**{}**\n",
        md_esc(&card.name),
        md_esc(&card.verdict.text)
    );
    for s in &card.sections {
        let _ = writeln!(out, "## {}\n", s.title);
        for b in &s.blocks {
            match b {
                Block::Para(_, "subhead", t) => {
                    let _ = writeln!(out, "### {}\n", md_esc(t));
                }
                Block::Para(_, _, t) => {
                    let _ = writeln!(out, "**{}**\n", md_esc(t));
                }
                Block::NotRecorded(_, t) => {
                    let _ = writeln!(out, "_{}: {NOT_RECORDED}_\n", md_esc(t));
                }
                Block::Table(t) => md_table(&mut out, t),
                Block::Chart(c) => {
                    out.push_str(
                        "The HTML card (`--format html`) draws these curves as SVG; here are \
                         their points.\n\n",
                    );
                    if c.skipped > 0 {
                        let _ = writeln!(
                            out,
                            "{} curve entries without a numeric loss are left out.\n",
                            c.skipped
                        );
                    }
                    for t in point_tables(c) {
                        md_table(&mut out, &t);
                    }
                }
            }
        }
    }
    let _ = writeln!(
        out,
        "---\n\nGenerated by inhouse {} from the manifest of {} (model file sha256 {}; \
         manifest sha256 {}).",
        env!("CARGO_PKG_VERSION"),
        md_esc(&card.name),
        md_cell(&Cell::Code(card.digest.clone())),
        md_cell(&Cell::Code(card.manifest_sha256.clone()))
    );
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::models::Provenance;
    use scraper::{ElementRef, Html, Selector};
    use serde_json::json;

    fn finetune_result() -> Value {
        let train: Vec<Value> = (1..=40)
            .map(|s| {
                json!({"step": s, "epoch": s as f64 / 20.0,
                       "loss": 2.5 - 0.03125 * s as f64 + 0.001 * (s % 3) as f64,
                       "lr": 2e-4 * (1.0 - s as f64 / 41.0)})
            })
            .collect();
        json!({
            "method": "lora", "out": "/var/lib/inhouse/jobs/7/out.gguf",
            "base": "/var/lib/inhouse/models/blobs/sha256-aa",
            "lora": {"rank": 16, "alpha": 32.0, "targets": ["attn_q", "attn_k", "attn_v", "attn_output"]},
            "masked": true, "epochs": 2, "steps": 40, "tokens_trained": 12345,
            "curve": {"train": train,
                      "eval": [{"step": 20, "epoch": 1.0, "loss": 1.912345678},
                               {"step": 40, "epoch": 2.0, "loss": 1.87654321}]},
            "best": {"step": 40, "eval_loss": 1.87654321},
            "tokens_per_second": 118.73456, "peak_rss_bytes": 1_234_567_890u64,
            "gate": {
                "blessed": true,
                "policy": {"docs_mc_accuracy": {"min": 0.5, "min_change": 0.02}},
                "metrics": [
                    {"name": "docs_mc_accuracy", "baseline": 0.41, "candidate": 0.6875,
                     "change": 0.2775, "bounds": {"min": 0.5, "min_change": 0.02},
                     "pass": true, "reason": "0.6875 >= 0.5 and +0.2775 >= +0.02"},
                    {"name": "docs_answer_ppl", "baseline": 12.5, "candidate": 6.25,
                     "change": -0.5, "bounds": {"max_change": 0.0}, "pass": true, "reason": "ok"},
                    {"name": "general_ppl", "baseline": 20.0, "candidate": 20.9,
                     "change": 0.045, "bounds": {"max_change": 0.1}, "pass": true, "reason": "ok"},
                    {"name": "bias_gender_gap", "baseline": 0.1, "candidate": 0.12,
                     "change": 0.02, "bounds": {"max": 0.15}, "pass": true, "reason": "ok"},
                    {"name": "stereotype_preference", "baseline": 0.52, "candidate": 0.61,
                     "change": 0.09, "bounds": {"max": 0.6}, "pass": false,
                     "reason": "0.61 > max 0.6 <b>"}
                ],
                "failed": ["stereotype_preference"]
            }
        })
    }

    fn manifest(extra: Value) -> Manifest {
        Manifest {
            name: "smol-support".into(),
            kind: Kind::Adapter,
            base: Some("smollm2".into()),
            digest: "ab".repeat(32),
            size: 3_456_789,
            architecture: "llama".into(),
            n_params: 4_884_480,
            quantization: Some("F32".into()),
            context_length: Some(8192),
            n_layers: Some(30),
            chat_template: false,
            provenance: Provenance {
                imported_at: 1_767_225_600,
                imported_by_uid: 0,
                source: Some("job-7.gguf".into()),
                signed_by: None,
                signed_at: None,
                signature: None,
                extra,
            },
        }
    }

    fn full_extra() -> Value {
        json!({
            "job": 7, "kind": "finetune",
            "base_model": {"name": "smollm2", "digest": "cd".repeat(32)},
            "dataset": {"id": "ds-3", "sha256": "ef".repeat(32), "size": 45678},
            "eval_dataset": {"id": "ds-4", "sha256": "01".repeat(32), "size": 5678},
            "options": {"epochs": 2, "lr": 0.0002, "lora_rank": 16,
                        "note": "<script>alert(1)</script>", "<img src=x>": "k"},
            "evaluation": finetune_result(),
            "data_reports": [
                {"job": 5, "kind": "prepare", "report": {
                    "documents_in": 120, "exact_duplicates": 4, "near_duplicates": 2,
                    "filtered": {"too_short": 3, "language": 1},
                    "pii_replaced": {"EMAIL": 7, "PHONE": 2},
                    "train": 100, "eval": 10,
                    "bias": {"documents": 110, "axes": {"gender": {"groups": {"female": 12, "male": 15}}}},
                    "errors": []}},
                {"job": 6, "kind": "synth", "report": {
                    "kept": 240, "personal_data_found": 3, "samples_per_minute": 12.3456,
                    "teacher": {"path": "/x/</td>teacher.gguf"}}}
            ],
            "quantization": {"type": "Q4_K_M", "perplexity_base": 10.0, "perplexity_quantized": 10.42}
        })
    }

    fn sel(s: &str) -> Selector {
        Selector::parse(s).unwrap()
    }

    fn parse(html: &str) -> Html {
        let doc = Html::parse_document(html);
        assert!(doc.errors.is_empty(), "HTML parse errors: {:?}", doc.errors);
        doc
    }

    fn one<'a>(doc: &'a Html, s: &str) -> ElementRef<'a> {
        let all: Vec<_> = doc.select(&sel(s)).collect();
        assert_eq!(all.len(), 1, "{s}: {} matches", all.len());
        all[0]
    }

    fn data_value(doc: &Html, s: &str) -> f64 {
        one(doc, s)
            .value()
            .attr("data-value")
            .unwrap()
            .parse()
            .unwrap()
    }

    #[test]
    fn formats_parse() {
        assert_eq!("html".parse::<CardFormat>(), Ok(CardFormat::Html));
        assert_eq!("md".parse::<CardFormat>(), Ok(CardFormat::Markdown));
        assert_eq!("Markdown".parse::<CardFormat>(), Ok(CardFormat::Markdown));
        assert!("pdf".parse::<CardFormat>().unwrap_err().contains("html"));
        assert_eq!(CardFormat::Markdown.extension(), "md");
    }

    #[test]
    fn numbers_are_shown_consistently() {
        assert_eq!(sig4(1.23456), "1.235");
        assert_eq!(sig4(118.73456), "118.7");
        assert_eq!(sig4(0.0002), "2.000e-4");
        assert_eq!(sig4(0.0), "0");
        assert_eq!(sig4(-0.5), "-0.5000");
        assert_eq!(loss4(1.87654321), "1.8765");
        assert_eq!(step_text(40.0), "40");
        assert_eq!(step_text(2.5), "2.500");
        for s in [sig4(0.0002), sig4(123456789.0), sig4(-0.5)] {
            s.parse::<f64>().unwrap();
        }
        assert_eq!(bytes_text(1_234_567_890), "1234567890 bytes (1.150 GiB)");
        assert_eq!(count_text(134_515_008), "134515008 (134.5M)");
    }

    #[test]
    fn html_is_self_contained_and_well_formed() {
        let html = render(&manifest(full_extra()), CardFormat::Html);
        let doc = parse(&html);
        // No scripts, no external resources (the escaped option key `<img src=x>` is text).
        let active = "script, link, iframe, img, object, embed, [src], [href], [style]";
        assert_eq!(doc.select(&sel(active)).count(), 0);
        for banned in ["<script", "<link", "url(", "@import"] {
            assert!(!html.contains(banned), "{banned} in the card");
        }
        for id in [
            "identity",
            "provenance",
            "training",
            "loss-curves",
            "gate",
            "bias",
            "quantization",
        ] {
            one(&doc, &format!("section#{id}"));
        }
        let footer = one(&doc, "footer#card-basis");
        assert_eq!(
            footer.value().attr("data-digest"),
            Some("ab".repeat(32).as_str())
        );
        assert_eq!(
            footer.value().attr("data-manifest-sha256").unwrap().len(),
            64
        );
        // INHOUSE_CARD_DUMP=DIR writes the sample card there, to look at it in a browser.
        if let Some(dir) = std::env::var_os("INHOUSE_CARD_DUMP") {
            let dir = std::path::Path::new(&dir);
            std::fs::write(dir.join("card.html"), &html).unwrap();
            let md = render(&manifest(full_extra()), CardFormat::Markdown);
            std::fs::write(dir.join("card.md"), md).unwrap();
        }
        // Pure: the same manifest gives the same bytes.
        assert_eq!(html, render(&manifest(full_extra()), CardFormat::Html));
        // Identity.
        assert_eq!(
            data_value(&doc, "#identity-table tr[data-key=size] td"),
            3_456_789.0
        );
        let base = one(&doc, "#identity-table tr[data-key=base] td");
        assert_eq!(base.text().collect::<String>(), "smollm2");
    }

    #[test]
    fn svg_polylines_have_one_point_per_curve_entry() {
        let result = finetune_result();
        let doc = parse(&render(&manifest(full_extra()), CardFormat::Html));
        one(&doc, "svg#loss-chart");
        for (id, key) in [("train-loss", "train"), ("eval-loss", "eval")] {
            let curve = result["curve"][key].as_array().unwrap();
            let line = one(&doc, &format!("svg#loss-chart polyline#{id}.{id}"));
            let attr = |a| line.value().attr(a).unwrap();
            assert_eq!(attr("data-points").parse::<usize>().unwrap(), curve.len());
            let pts: Vec<&str> = attr("points").split_whitespace().collect();
            assert_eq!(pts.len(), curve.len());
            for p in &pts {
                let (x, y) = p.split_once(',').unwrap();
                let (x, y): (f64, f64) = (x.parse().unwrap(), y.parse().unwrap());
                assert!(
                    (0.0..=SVG_W).contains(&x) && (0.0..=SVG_H).contains(&y),
                    "{p}"
                );
            }
            let losses: Vec<f64> = attr("data-losses")
                .split(',')
                .map(|s| s.parse().unwrap())
                .collect();
            let want: Vec<f64> = curve.iter().map(|e| e["loss"].as_f64().unwrap()).collect();
            assert_eq!(losses, want);
            let steps: Vec<f64> = attr("data-steps")
                .split(',')
                .map(|s| s.parse().unwrap())
                .collect();
            let want: Vec<f64> = curve.iter().map(|e| e["step"].as_f64().unwrap()).collect();
            assert_eq!(steps, want);
        }
        let table_rows = doc.select(&sel("#curve-train-table tbody tr")).count();
        assert_eq!(table_rows, 40);
        assert_eq!(data_value(&doc, "#x-min"), 1.0);
        assert_eq!(data_value(&doc, "#x-max"), 40.0);
        let train = &result["curve"]["train"];
        let min_loss = (0..40)
            .map(|i| train[i]["loss"].as_f64().unwrap())
            .fold(f64::INFINITY, f64::min)
            .min(1.87654321);
        assert_eq!(data_value(&doc, "#y-min"), min_loss);
        assert_eq!(
            data_value(&doc, "#y-max"),
            train[0]["loss"].as_f64().unwrap()
        );
    }

    #[test]
    fn numbers_match_the_job_result() {
        let r = finetune_result();
        let doc = parse(&render(&manifest(full_extra()), CardFormat::Html));
        let kv =
            |key: &str| data_value(&doc, &format!("#training-table tr[data-key=\"{key}\"] td"));
        assert_eq!(kv("steps"), 40.0);
        assert_eq!(kv("epochs"), 2.0);
        assert_eq!(kv("tokens_trained"), 12345.0);
        assert_eq!(
            kv("tokens_per_second"),
            r["tokens_per_second"].as_f64().unwrap()
        );
        assert_eq!(kv("best.step"), 40.0);
        assert_eq!(kv("best.eval_loss"), 1.87654321);
        assert_eq!(kv("lora.rank"), 16.0);
        assert_eq!(kv("lora.alpha"), 32.0);
        assert_eq!(kv("peak_rss_bytes"), 1_234_567_890.0);
        let shown = one(&doc, "#training-table tr[data-key=\"best.eval_loss\"] td");
        assert_eq!(shown.text().collect::<String>(), "1.8765");
        let targets = one(&doc, "#training-table tr[data-key=\"lora.targets\"] td");
        assert_eq!(
            targets.text().collect::<String>(),
            "attn_q, attn_k, attn_v, attn_output"
        );
        // Provenance.
        let prov = |key: &str| {
            one(
                &doc,
                &format!("#provenance-table tr[data-key=\"{key}\"] td"),
            )
            .text()
            .collect::<String>()
        };
        assert_eq!(prov("base_model.digest"), "cd".repeat(32));
        assert_eq!(prov("dataset.sha256"), "ef".repeat(32));
        assert_eq!(prov("eval_dataset.id"), "ds-4");
        assert_eq!(prov("job"), "7");
        // Quantization: the ratio of the perplexities.
        let q = |key: &str| data_value(&doc, &format!("#quantization-table tr[data-key={key}] td"));
        assert_eq!(q("perplexity_base"), 10.0);
        assert_eq!(q("perplexity_quantized"), 10.42);
        assert_eq!(q("perplexity_ratio"), 10.42 / 10.0);
        assert!((q("perplexity_cost_percent") - 4.2).abs() < 1e-9);
    }

    #[test]
    fn gate_table_has_a_row_per_metric() {
        let r = finetune_result();
        let metrics = r["gate"]["metrics"].as_array().unwrap();
        let doc = parse(&render(&manifest(full_extra()), CardFormat::Html));
        let verdict = one(&doc, "#gate-verdict");
        assert!(verdict.value().classes().any(|c| c == "blessed"));
        assert!(one(&doc, "#verdict")
            .value()
            .classes()
            .any(|c| c == "blessed"));
        let rows: Vec<_> = doc.select(&sel("#gate-table tbody tr.metric")).collect();
        assert_eq!(rows.len(), metrics.len());
        for (row, m) in rows.iter().zip(metrics) {
            assert_eq!(row.value().attr("data-metric"), m["name"].as_str());
            let pass = m["pass"].as_bool().unwrap();
            let want = if pass { "pass" } else { "fail" };
            assert!(row.value().classes().any(|c| c == want));
            let cell = |c: &str| row.select(&sel(&format!("td.{c}"))).next().unwrap();
            assert_eq!(cell("result").text().collect::<String>(), want);
            for k in ["baseline", "candidate", "change"] {
                let v: f64 = cell(k).value().attr("data-value").unwrap().parse().unwrap();
                assert_eq!(v, m[k].as_f64().unwrap(), "{k}");
            }
            assert_eq!(
                cell("reason").text().collect::<String>(),
                m["reason"].as_str().unwrap()
            );
        }
        assert_eq!(doc.select(&sel("#gate-table thead th")).count(), 7);
        let failed = one(&doc, "#gate-failed").text().collect::<String>();
        assert!(failed.contains("stereotype_preference"), "{failed}");
        // The bias section: the gate's bias/stereotype metrics and the reports' bias objects.
        let bias: Vec<_> = doc
            .select(&sel("#bias-table tbody tr.metric"))
            .map(|r| r.value().attr("data-metric").unwrap().to_string())
            .collect();
        assert_eq!(bias, ["bias_gender_gap", "stereotype_preference"]);
        let reports: Vec<_> = doc
            .select(&sel("#bias table.bias-report caption"))
            .collect();
        assert_eq!(reports.len(), 1);
        assert_eq!(
            reports[0].text().collect::<String>(),
            "data_reports[0].report.bias"
        );
        let female = "#bias table.bias-report tr[data-key=\"axes.gender.groups.female\"] td";
        assert_eq!(data_value(&doc, female), 12.0);
    }

    #[test]
    fn refused_candidate_says_so() {
        let mut extra = full_extra();
        extra["evaluation"]["gate"]["blessed"] = json!(false);
        extra["candidate"] = json!(true);
        let doc = parse(&render(&manifest(extra.clone()), CardFormat::Html));
        let v = one(&doc, "#verdict");
        assert!(v.value().classes().any(|c| c == "refused"));
        assert!(v.text().collect::<String>().contains("candidate"));
        assert!(one(&doc, "#gate-verdict")
            .value()
            .classes()
            .any(|c| c == "refused"));
        let md = render(&manifest(extra), CardFormat::Markdown);
        assert!(md.contains("**Verdict: refused**"), "{md}");
    }

    #[test]
    fn data_reports_render_with_personal_data_highlighted() {
        let doc = parse(&render(&manifest(full_extra()), CardFormat::Html));
        let tables: Vec<_> = doc.select(&sel("#provenance table.data-report")).collect();
        assert_eq!(tables.len(), 2);
        let caption = one(&doc, "#data-report-0 caption")
            .text()
            .collect::<String>();
        assert_eq!(caption, "prepare report (job 5)");
        assert_eq!(
            data_value(
                &doc,
                "#data-report-0 tr[data-key=\"pii_replaced.EMAIL\"] td"
            ),
            7.0
        );
        assert_eq!(
            data_value(
                &doc,
                "#data-report-0 tr[data-key=\"filtered.too_short\"] td"
            ),
            3.0
        );
        let pii: Vec<_> = doc
            .select(&sel("table.data-report tr.pii"))
            .map(|r| r.value().attr("data-key").unwrap().to_string())
            .collect();
        assert_eq!(
            pii,
            [
                "pii_replaced.EMAIL",
                "pii_replaced.PHONE",
                "personal_data_found"
            ]
        );
        let path = one(&doc, "#data-report-1 tr[data-key=\"teacher.path\"] td");
        assert_eq!(path.text().collect::<String>(), "/x/</td>teacher.gguf");
    }

    #[test]
    fn user_strings_are_escaped() {
        let mut extra = full_extra();
        extra["base_model"]["name"] = json!("x\"><script>alert(2)</script>");
        let mut m = manifest(extra);
        m.provenance.source = Some("<b>bold</b>.gguf".into());
        let html = render(&m, CardFormat::Html);
        assert!(!html.contains("<script"), "unescaped script");
        assert!(!html.contains("<img"), "unescaped img");
        assert!(!html.contains("<b>"), "unescaped b");
        assert!(html.contains("&lt;script&gt;alert(1)&lt;/script&gt;"));
        let doc = parse(&html);
        let note = one(&doc, "#options tr[data-key=note] td");
        assert_eq!(note.text().collect::<String>(), "<script>alert(1)</script>");
        let key = one(&doc, "#options tr[data-key=\"<img src=x>\"] th");
        assert_eq!(key.text().collect::<String>(), "<img src=x>");
        let reason = "#gate-table tr[data-metric=stereotype_preference] td.reason";
        assert!(one(&doc, reason)
            .text()
            .collect::<String>()
            .ends_with("<b>"));
        let md = render(&m, CardFormat::Markdown);
        assert!(!md.contains("<script") && !md.contains("<img") && !md.contains("<b>"));
        assert!(md.contains("&lt;script&gt;alert(1)&lt;/script&gt;"));
    }

    #[test]
    fn missing_sections_say_not_recorded() {
        let mut m = manifest(Value::Null);
        m.kind = Kind::Model;
        m.base = None;
        m.quantization = None;
        let html = render(&m, CardFormat::Html);
        let doc = parse(&html);
        for what in [
            "training-provenance",
            "options",
            "data-reports",
            "training",
            "loss-curves",
            "gate",
            "bias",
            "quantization",
        ] {
            let p = one(&doc, &format!("p.not-recorded[data-for={what}]"));
            assert!(
                p.text().collect::<String>().ends_with("not recorded"),
                "{what}"
            );
        }
        assert_eq!(doc.select(&sel("svg")).count(), 0);
        assert!(one(&doc, "#verdict")
            .value()
            .classes()
            .any(|c| c == "not-gated"));
        assert_eq!(
            doc.select(&sel("#identity-table tr[data-key=base]"))
                .count(),
            0
        );
        let q = one(&doc, "#identity-table tr[data-key=quantization] td");
        assert_eq!(q.text().collect::<String>(), "not recorded");
        let md = render(&m, CardFormat::Markdown);
        for t in [
            "_Training: not recorded_",
            "_Loss curves: not recorded_",
            "_Evaluation gate: not recorded_",
        ] {
            assert!(md.contains(t), "{t} missing in\n{md}");
        }

        // Partly recorded: an evaluation without curve or gate, eval curve empty.
        let mut extra = full_extra();
        extra["evaluation"]["gate"] = Value::Null;
        extra["evaluation"]["curve"]["eval"] = json!([]);
        extra["evaluation"]["curve"]["train"][3]["loss"] = Value::Null;
        extra.as_object_mut().unwrap().remove("quantization");
        let doc = parse(&render(&manifest(extra), CardFormat::Html));
        let attr = |s: &str, a: &str| one(&doc, s).value().attr(a).unwrap().to_string();
        assert_eq!(attr("#train-loss", "data-points"), "39");
        assert_eq!(attr("#eval-loss", "data-points"), "0");
        one(&doc, "p.not-recorded[data-for=gate]");
        one(&doc, "p.not-recorded[data-for=quantization]");
        // The bias section still has the prepare report's bias object.
        assert_eq!(doc.select(&sel("#bias table.bias-report")).count(), 1);
    }

    #[test]
    fn markdown_has_the_same_tables() {
        let md = render(&manifest(full_extra()), CardFormat::Markdown);
        assert!(md.starts_with("# Model card: smol-support\n"));
        for h in [
            "## Identity",
            "## Provenance",
            "### Options",
            "### Data reports",
            "## Training",
            "## Loss curves",
            "## Evaluation gate",
            "## Bias",
            "## Quantization",
        ] {
            assert!(md.contains(&format!("\n{h}\n")), "{h}");
        }
        let head = "| Metric | Baseline | Candidate | Change | Bounds | Result | Reason |";
        assert_eq!(md.matches(head).count(), 2, "gate and bias tables");
        assert!(md.contains("| docs\\_mc\\_accuracy | 0.4100 | 0.6875 | +0.2775 | min: 0.5, min\\_change: 0.02 | pass |"), "{md}");
        assert!(
            md.contains(
                "| stereotype\\_preference | 0.5200 | 0.6100 | +0.09000 | max: 0.6 | **fail** |"
            ),
            "{md}"
        );
        assert!(md.contains("draws these curves as SVG"));
        assert!(md.contains("| Step | Epoch | Loss | Learning rate |"));
        let train_rows = md
            .lines()
            .skip_while(|l| !l.starts_with("**Train loss (40 points)**"))
            .skip(4)
            .take_while(|l| l.starts_with('|'))
            .count();
        assert_eq!(train_rows, 40);
        assert!(md.contains("| 40 | 2.000 | 1.8765 |"), "eval point");
        assert!(md.contains("| Best eval loss | 1.8765 |"));
        assert!(md.contains("| **pii\\_replaced.EMAIL** (personal data) | 7 |"));
        assert!(md.contains("| Perplexity ratio (after / before) | 1.042 |"));
        assert!(md.contains(&format!("`{}`", "ab".repeat(32))));
        // Every table row has as many cells as its head.
        let mut cols = 0;
        for l in md.lines() {
            if !l.starts_with('|') {
                cols = 0;
                continue;
            }
            let n = l.replace("\\|", "").matches('|').count();
            if cols == 0 {
                cols = n;
            }
            assert_eq!(n, cols, "{l}");
        }
    }
}
