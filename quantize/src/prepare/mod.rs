//! Data preparation: the enterprise's documents → a clean, de-duplicated, anonymized
//! train/eval set in JSONL, ready for fine-tuning (`inhouse-quantize prepare`).
//!
//! One document at a time, in input order, through:
//!
//! 1. [`ingest`]: list the input files (folders recursively, sorted) and read `.txt`/`.md`
//!    (one document per file) and `.jsonl` (text, chat or Alpaca records) into [`Content`];
//! 2. [`clean`]: NFC, line endings, control characters, whitespace;
//! 3. [`filter`]: length and quality rules, on the cleaned text;
//! 4. [`anonymize`]: personal data → `[EMAIL]`, `[PHONE]`, … placeholders;
//! 5. [`dedup`]: exact and MinHash/LSH near-duplicates, on the anonymized text, so that two
//!    copies of a form letter that differ only in the addressee are recognised as one;
//! 6. a deterministic train/eval split ([`is_eval`]) and the two JSONL files;
//! 7. the bias report ([`crate::bias`]) of the kept documents and, with `--augment
//!    counterfactual`, after each kept document that names one side of a word pair its swapped
//!    copy, in the same file (so train and eval never share a document and its copy), then
//!    [`report`]'s `report.json`.
//!
//! Filters run before anonymization so that a document about to be dropped (a 10 MB log dump)
//! costs no regex time. Everything streams except the de-duplication state (a 16-byte digest per
//! document and a 1 KiB signature per kept document), so memory does not grow with document
//! size. The run is single-threaded and deterministic: the same inputs, options and seed give
//! byte-identical outputs.
//!
//! A copy is checked against the kept documents and the other copies by exact digest only: a
//! copy equal to one of them is not written (counted in `augment.copies_skipped_duplicate`),
//! and a later document equal to a copy is dropped as an exact duplicate (counted in
//! `exact_duplicates` and `augment.originals_dropped_duplicate_of_copy`), so no text is
//! written twice or to both splits. Copies are not entered into the near-duplicate index: a
//! copy is by design a near-duplicate of its original.
//!
//! Outputs are written to hidden `.partial` files and renamed into place only when the run
//! succeeds, so a failed run never leaves a half-written `train.jsonl` next to an old report.

pub mod anonymize;
pub mod clean;
pub mod config;
pub mod dedup;
pub mod filter;
pub mod ingest;
pub mod report;

use std::collections::HashSet;
use std::fs::{self, File};
use std::io::{self, BufWriter, Write};
use std::path::{Path, PathBuf};

use serde::Serialize;
use xxhash_rust::xxh3::{xxh3_128, xxh3_64_with_seed};

pub use anonymize::{Anonymizer, PiiCounts};
pub use config::{AnonymizeConfig, Augment, Config, ConfigError, OnError};
pub use ingest::{Content, InputError, Message};
pub use report::{AugmentReport, Report};

use crate::bias::{self, Counter, Lexicon, Pairs};

use dedup::{Deduplicator, Verdict};
use ingest::Origin;

/// What one run reads and where it writes.
#[derive(Debug, Clone)]
pub struct Options {
    /// Files and folders, in the order given.
    pub inputs: Vec<PathBuf>,
    /// Output folder (created if missing); receives `train.jsonl`, `eval.jsonl`, `report.json`.
    pub out: PathBuf,
    /// Everything else.
    pub config: Config,
}

/// Why a run stopped.
#[derive(Debug, thiserror::Error)]
pub enum PrepareError {
    /// The options are invalid; nothing was read.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// An input error under `--on-error fail`; nothing was written.
    #[error("{0}")]
    Input(InputError),
    /// An output file could not be written.
    #[error("cannot write {}: {source}", path.display())]
    Output {
        /// The file or folder.
        path: PathBuf,
        /// Why.
        source: io::Error,
    },
}

/// The output file names inside the output folder.
pub const TRAIN_FILE: &str = "train.jsonl";
/// See [`TRAIN_FILE`].
pub const EVAL_FILE: &str = "eval.jsonl";
/// See [`TRAIN_FILE`].
pub const REPORT_FILE: &str = "report.json";

/// Runs the whole preparation and returns its report (also written to `report.json`).
pub fn run(options: &Options) -> Result<Report, PrepareError> {
    let config = &options.config;
    config.check()?;
    let anonymizer = Anonymizer::new(&config.anonymize)?;
    let lexicon = match &config.bias_terms {
        Some(path) => Lexicon::load(path).map_err(ConfigError::from)?,
        None => Lexicon::builtin(),
    };
    let pairs = match (config.augment, &config.counterfactual_pairs) {
        (Augment::None, _) => None,
        (Augment::Counterfactual, Some(path)) => {
            Some(Pairs::load(path).map_err(ConfigError::from)?)
        }
        (Augment::Counterfactual, None) => Some(Pairs::builtin()),
    };
    let lists = Lists {
        lexicon: &lexicon,
        pairs: pairs.as_ref(),
    };
    let out = &options.out;
    fs::create_dir_all(out).map_err(|source| PrepareError::Output {
        path: out.clone(),
        source,
    })?;
    // Canonical, to recognise the output folder when walking an input folder that contains it.
    let out_canonical = fs::canonicalize(out).ok();

    let mut outputs = Outputs::create(out)?;
    let result = run_into(
        options,
        &anonymizer,
        lists,
        out_canonical.as_deref(),
        &mut outputs,
    );
    match result {
        Ok(report) => {
            outputs.finish(&report)?;
            Ok(report)
        }
        Err(e) => {
            outputs.discard();
            Err(e)
        }
    }
}

/// The bias word lists of a run.
#[derive(Clone, Copy)]
struct Lists<'a> {
    lexicon: &'a Lexicon,
    /// With `--augment counterfactual`.
    pairs: Option<&'a Pairs>,
}

fn run_into(
    options: &Options,
    anonymizer: &Anonymizer,
    lists: Lists<'_>,
    exclude: Option<&Path>,
    outputs: &mut Outputs,
) -> Result<Report, PrepareError> {
    let config = &options.config;
    let list = ingest::list_files(&options.inputs, exclude);
    let dedup = Deduplicator::new(config.near_dup_threshold);
    let bias = Counter::new(lists.lexicon);
    let report = Report {
        options: options_json(options, &dedup, lists),
        files: list
            .files
            .iter()
            .map(|(path, _)| report::FileCounts {
                path: path.display().to_string(),
                ..Default::default()
            })
            .collect(),
        files_ignored: list.ignored,
        documents_in: 0,
        exact_duplicates: 0,
        near_duplicates: 0,
        filtered: filter::FilterCounts::default(),
        pii_replaced: all_labels(config),
        train: 0,
        eval: 0,
        bias: bias.report(),
        augment: lists.pairs.map(|pairs| AugmentReport {
            mode: Augment::Counterfactual.to_string(),
            pairs: pairs.source().to_string(),
            pair_count: pairs.len(),
            records_added: 0,
            train_added: 0,
            eval_added: 0,
            copies_skipped_duplicate: 0,
            originals_dropped_duplicate_of_copy: 0,
            bias_after: bias.report(),
        }),
        error_count: 0,
        errors: Vec::new(),
    };
    let mut state = State {
        config,
        anonymizer,
        dedup,
        report,
        outputs,
        bias,
        augment: lists.pairs.map(|pairs| Augmenting {
            pairs,
            after: Counter::new(lists.lexicon),
            kept: HashSet::new(),
            copies: HashSet::new(),
        }),
    };
    for error in list.errors {
        state.error(error, None)?;
    }
    for (index, (path, format)) in list.files.iter().enumerate() {
        let mut stopped = None;
        ingest::read_file(path, *format, index, &mut |item| {
            let step = match item {
                Ok((origin, content)) => state.document(&origin, content),
                Err(error) => state.error(error, Some(index)),
            };
            match step {
                Ok(()) => true,
                Err(e) => {
                    stopped = Some(e);
                    false
                }
            }
        });
        if let Some(e) = stopped {
            return Err(e);
        }
    }
    state.report.bias = state.bias.report();
    if let (Some(a), Some(r)) = (&state.augment, state.report.augment.as_mut()) {
        r.bias_after = a.after.report();
    }
    Ok(state.report)
}

/// The per-run state the documents flow through.
struct State<'a> {
    config: &'a Config,
    anonymizer: &'a Anonymizer,
    dedup: Deduplicator,
    report: Report,
    outputs: &'a mut Outputs,
    /// The bias counts of the kept documents.
    bias: Counter<'a>,
    /// With `--augment counterfactual`.
    augment: Option<Augmenting<'a>>,
}

/// The state of counterfactual augmentation.
struct Augmenting<'a> {
    pairs: &'a Pairs,
    /// The bias counts of the kept documents and the copies.
    after: Counter<'a>,
    /// Digests of the kept documents and of the copies written, to write no text twice.
    kept: HashSet<u128>,
    copies: HashSet<u128>,
}

impl State<'_> {
    fn error(&mut self, error: InputError, file: Option<usize>) -> Result<(), PrepareError> {
        if self.config.on_error == OnError::Fail {
            return Err(PrepareError::Input(error));
        }
        if let Some(f) = file {
            self.report.files[f].errors += 1;
        }
        self.report.add_error(error);
        Ok(())
    }

    fn document(&mut self, origin: &Origin, content: Content) -> Result<(), PrepareError> {
        self.report.documents_in += 1;
        self.report.files[origin.file].documents += 1;

        let content = content.map_texts(clean::clean);
        if let Some(reason) = filter::check(&content, &self.config.filters) {
            self.report.filtered.add(reason);
            return Ok(());
        }
        let mut found = PiiCounts::new();
        let content = content.map_texts(|t| self.anonymizer.anonymize(t, &mut found));
        let digest = digest(&content);
        if let (Some(a), Some(r)) = (&self.augment, self.report.augment.as_mut()) {
            if a.copies.contains(&digest) {
                self.report.exact_duplicates += 1;
                r.originals_dropped_duplicate_of_copy += 1;
                return Ok(());
            }
        }
        match self.dedup.check(digest, &content.joined()) {
            Verdict::ExactDuplicate => {
                self.report.exact_duplicates += 1;
                return Ok(());
            }
            Verdict::NearDuplicate => {
                self.report.near_duplicates += 1;
                return Ok(());
            }
            Verdict::Keep => {}
        }
        // Counted only for documents that are written: the report describes the dataset.
        for (label, n) in found {
            *self.report.pii_replaced.entry(label).or_default() += n;
        }
        let eval = is_eval(self.config.seed, digest, self.config.eval_share);
        self.outputs.write(eval, &content)?;
        if eval {
            self.report.eval += 1;
        } else {
            self.report.train += 1;
        }
        self.report.files[origin.file].kept += 1;

        let file = &self.report.files[origin.file].path;
        let label = match origin.line {
            Some(line) => format!("{file}:{line}"),
            None => file.clone(),
        };
        self.bias.add_texts(&label, content.texts());
        if let (Some(a), Some(r)) = (self.augment.as_mut(), self.report.augment.as_mut()) {
            a.after.add_texts(&label, content.texts());
            a.kept.insert(digest);
            if let Some(copy) = counterfactual_content(&content, a.pairs) {
                let copy_digest = crate::prepare::digest(&copy);
                if a.kept.contains(&copy_digest) || a.copies.contains(&copy_digest) {
                    r.copies_skipped_duplicate += 1;
                } else {
                    self.outputs.write(eval, &copy)?;
                    a.copies.insert(copy_digest);
                    a.after
                        .add_texts(&format!("{label} (counterfactual)"), copy.texts());
                    r.records_added += 1;
                    if eval {
                        r.eval_added += 1;
                    } else {
                        r.train_added += 1;
                    }
                }
            }
        }
        Ok(())
    }
}

/// The counterfactual copy of a document ([`bias::counterfactual`] on its text, or on every
/// message's content with the roles kept), or `None` when it holds no word of a pair.
pub fn counterfactual_content(content: &Content, pairs: &Pairs) -> Option<Content> {
    let texts = bias::counterfactual_texts(content.texts(), pairs)?;
    Some(match content {
        Content::Text(_) => Content::Text(texts.into_iter().next()?),
        Content::Messages(ms) => Content::Messages(
            ms.iter()
                .zip(texts)
                .map(|(m, content)| Message {
                    role: m.role.clone(),
                    content,
                })
                .collect(),
        ),
    })
}

/// The 128-bit digest of a document's content, roles included: the exact-duplicate key and the
/// input of the split. (Cleanup has removed every control character, so `\0` cannot occur in
/// the content and separates fields unambiguously.)
pub fn digest(content: &Content) -> u128 {
    let mut bytes = Vec::new();
    match content {
        Content::Text(t) => {
            bytes.extend_from_slice(b"text\0");
            bytes.extend_from_slice(t.as_bytes());
        }
        Content::Messages(ms) => {
            bytes.extend_from_slice(b"chat\0");
            for m in ms {
                bytes.extend_from_slice(m.role.as_bytes());
                bytes.push(0);
                bytes.extend_from_slice(m.content.as_bytes());
                bytes.push(0);
            }
        }
    }
    xxh3_128(&bytes)
}

/// Whether a document goes to eval: xxh3 of its digest under the seed, read as a number in
/// `[0, 1)`, below `eval_share`. Each document's side depends only on its content and the seed,
/// not on the other documents, so adding documents never moves existing ones between train and
/// eval (no leakage from a reshuffle between runs). The eval size is therefore `eval_share` of
/// the documents on average, not exactly.
pub fn is_eval(seed: u64, digest: u128, eval_share: f64) -> bool {
    let h = xxh3_64_with_seed(&digest.to_le_bytes(), seed);
    // The top 53 bits, so the conversion to f64 is exact.
    let unit = (h >> 11) as f64 / (1u64 << 53) as f64;
    unit < eval_share
}

/// Every label the run can replace, at zero, so the report always lists them.
fn all_labels(config: &Config) -> PiiCounts {
    let mut labels: PiiCounts = config::BUILTIN_LABELS
        .iter()
        .map(|l| (l.to_string(), 0))
        .collect();
    for p in &config.anonymize.patterns {
        labels.insert(p.label.clone(), 0);
    }
    labels
}

fn options_json(options: &Options, dedup: &Deduplicator, lists: Lists<'_>) -> serde_json::Value {
    let c = &options.config;
    let f = &c.filters;
    let banding = dedup.banding();
    serde_json::json!({
        "inputs": options.inputs.iter().map(|p| p.display().to_string()).collect::<Vec<_>>(),
        "out": options.out.display().to_string(),
        "seed": c.seed,
        "eval_share": c.eval_share,
        "near_dup_threshold": c.near_dup_threshold,
        "on_error": c.on_error.to_string(),
        "filters": {
            "min_chars": f.min_chars,
            "min_words": f.min_words,
            "max_chars": f.max_chars,
            "min_alpha_ratio": f.min_alpha_ratio,
            "max_repeated_line_share": f.max_repeated_line_share,
        },
        "anonymize": {
            "patterns": c.anonymize.patterns,
            "names": c.anonymize.names.len(),
        },
        "minhash": {
            "permutations": dedup::PERMUTATIONS,
            "shingle_words": dedup::SHINGLE_WORDS,
            "bands": banding.bands,
            "rows": banding.rows,
        },
        "bias_terms": lists.lexicon.source(),
        "augment": c.augment.to_string(),
        "counterfactual_pairs": lists.pairs.map(Pairs::source),
    })
}

/// One output line: the structure of the input is kept.
#[derive(Serialize)]
#[serde(untagged)]
enum Record<'a> {
    Text { text: &'a str },
    Chat { messages: &'a [Message] },
}

/// The two JSONL files being written, under temporary names until the run succeeds.
struct Outputs {
    dir: PathBuf,
    train: BufWriter<File>,
    eval: BufWriter<File>,
}

impl Outputs {
    fn partial(dir: &Path, name: &str) -> PathBuf {
        dir.join(format!(".{name}.partial"))
    }

    fn create(dir: &Path) -> Result<Self, PrepareError> {
        let open = |name: &str| {
            let path = Self::partial(dir, name);
            File::create(&path)
                .map(BufWriter::new)
                .map_err(|source| PrepareError::Output { path, source })
        };
        Ok(Self {
            dir: dir.to_path_buf(),
            train: open(TRAIN_FILE)?,
            eval: open(EVAL_FILE)?,
        })
    }

    fn write(&mut self, eval: bool, content: &Content) -> Result<(), PrepareError> {
        let (writer, name) = if eval {
            (&mut self.eval, EVAL_FILE)
        } else {
            (&mut self.train, TRAIN_FILE)
        };
        let record = match content {
            Content::Text(text) => Record::Text { text },
            Content::Messages(messages) => Record::Chat { messages },
        };
        serde_json::to_writer(&mut *writer, &record)
            .map_err(io::Error::from)
            .and_then(|()| writer.write_all(b"\n"))
            .map_err(|source| PrepareError::Output {
                path: Self::partial(&self.dir, name),
                source,
            })
    }

    /// Flushes, writes the report and renames everything into place.
    fn finish(self, report: &Report) -> Result<(), PrepareError> {
        let dir = self.dir.clone();
        let fail = |name: &str| {
            let path = Self::partial(&dir, name);
            move |source| PrepareError::Output { path, source }
        };
        for (writer, name) in [(self.train, TRAIN_FILE), (self.eval, EVAL_FILE)] {
            writer
                .into_inner()
                .map_err(io::IntoInnerError::into_error)
                .and_then(|f| f.sync_all())
                .map_err(fail(name))?;
        }
        let mut json =
            serde_json::to_vec_pretty(report).map_err(|e| fail(REPORT_FILE)(e.into()))?;
        json.push(b'\n');
        fs::write(Self::partial(&dir, REPORT_FILE), json).map_err(fail(REPORT_FILE))?;
        for name in [TRAIN_FILE, EVAL_FILE, REPORT_FILE] {
            fs::rename(Self::partial(&dir, name), dir.join(name)).map_err(fail(name))?;
        }
        Ok(())
    }

    /// Removes the partial files of a failed run (best effort: they are hidden and overwritten
    /// by the next run anyway).
    fn discard(self) {
        let dir = self.dir.clone();
        drop(self);
        for name in [TRAIN_FILE, EVAL_FILE, REPORT_FILE] {
            let _ = fs::remove_file(Self::partial(&dir, name));
        }
    }
}
