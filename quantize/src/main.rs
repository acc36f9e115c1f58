//! `inhouse-quantize`: command line of the model toolchain.
//!
//! Thin on purpose: it parses arguments, calls the library and maps errors to exit codes.
//! Exit codes: 0 success, 2 the file is not a valid GGUF model (or cannot be opened; clap also
//! uses 2 for usage errors, and `prepare` for an invalid config), 1 anything else (such as
//! failing to write the report, or `prepare --on-error fail` meeting a bad input line).
#![forbid(unsafe_code)]

use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, Subcommand};
use inhouse_quantize::gguf::{self, GgufError};
use inhouse_quantize::inspect;
use inhouse_quantize::prepare::{self, Config, OnError, PrepareError};

/// Exit status for a file that is missing, unreadable or not a valid GGUF model.
const EXIT_BAD_FILE: u8 = 2;
/// Exit status for an invalid `prepare` config or option, like clap's usage errors.
const EXIT_USAGE: u8 = 2;

/// inhouse's model toolchain.
#[derive(Parser)]
#[command(name = "inhouse-quantize", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Validate a GGUF model file and print its metadata (the tensor data is not read).
    Inspect {
        /// The GGUF file.
        path: PathBuf,
        /// Print one JSON object instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Turn documents (.txt, .md, .jsonl; folders recursively) into a cleaned, de-duplicated,
    /// anonymized train/eval set: DIR/train.jsonl, DIR/eval.jsonl and DIR/report.json.
    Prepare(PrepareArgs),
}

/// Arguments of `prepare`. Flags override the config file, which overrides the defaults.
#[derive(clap::Args)]
struct PrepareArgs {
    /// Input files and folders.
    #[arg(required = true, value_name = "INPUT")]
    inputs: Vec<PathBuf>,
    /// Output folder (created if missing).
    #[arg(long, value_name = "DIR")]
    out: PathBuf,
    /// JSON config file: split, filters, custom PII patterns, names (see `prepare::config`).
    #[arg(long, value_name = "FILE.json")]
    config: Option<PathBuf>,
    /// Seed of the train/eval split [default: 0].
    #[arg(long, value_name = "N")]
    seed: Option<u64>,
    /// Expected share of documents in eval.jsonl [default: 0.1].
    #[arg(long, value_name = "F")]
    eval_share: Option<f64>,
    /// Estimated Jaccard similarity from which a document is a near-duplicate [default: 0.8].
    #[arg(long, value_name = "J")]
    near_dup_threshold: Option<f64>,
    /// Bad input: skip and count it, or stop with exit code 1 [default: skip].
    #[arg(long, value_enum)]
    on_error: Option<OnErrorArg>,
}

/// `--on-error` values.
#[derive(Clone, Copy, clap::ValueEnum)]
enum OnErrorArg {
    Skip,
    Fail,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Inspect { path, json } => inspect_cmd(&path, json),
        Command::Prepare(args) => prepare_cmd(args),
    }
}

fn prepare_cmd(args: PrepareArgs) -> ExitCode {
    let config = match args.config.as_deref().map(Config::load).transpose() {
        Ok(config) => config.unwrap_or_default(),
        Err(e) => {
            eprintln!("inhouse-quantize: prepare: {e}");
            return ExitCode::from(EXIT_USAGE);
        }
    };
    let config = Config {
        seed: args.seed.unwrap_or(config.seed),
        eval_share: args.eval_share.unwrap_or(config.eval_share),
        near_dup_threshold: args.near_dup_threshold.unwrap_or(config.near_dup_threshold),
        on_error: args.on_error.map_or(config.on_error, |o| match o {
            OnErrorArg::Skip => OnError::Skip,
            OnErrorArg::Fail => OnError::Fail,
        }),
        ..config
    };
    let options = prepare::Options {
        inputs: args.inputs,
        out: args.out,
        config,
    };
    match prepare::run(&options) {
        Ok(report) => {
            eprint!("{}", report.summary());
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("inhouse-quantize: prepare: {e}");
            match e {
                PrepareError::Config(_) => ExitCode::from(EXIT_USAGE),
                PrepareError::Input(_) | PrepareError::Output { .. } => ExitCode::FAILURE,
            }
        }
    }
}

fn inspect_cmd(path: &Path, json: bool) -> ExitCode {
    let file = match gguf::open(path) {
        Ok(file) => file,
        Err(e) => {
            match e {
                // These already name the path.
                GgufError::Open { .. } | GgufError::NotAFile { .. } => {
                    eprintln!("inhouse-quantize: {e}");
                }
                _ => eprintln!("inhouse-quantize: {}: {e}", path.display()),
            }
            return ExitCode::from(EXIT_BAD_FILE);
        }
    };
    let report = if json {
        serde_json::to_string_pretty(&inspect::json_report(path, &file))
            .map(|mut s| {
                s.push('\n');
                s
            })
            .context("encoding the JSON report")
    } else {
        Ok(inspect::text_report(path, &file))
    };
    match report.and_then(|r| print(&r)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("inhouse-quantize: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// Writes to stdout; a closed pipe (`inspect … | head`) is not an error.
fn print(text: &str) -> anyhow::Result<()> {
    let mut out = io::stdout().lock();
    match out.write_all(text.as_bytes()).and_then(|()| out.flush()) {
        Err(e) if e.kind() != io::ErrorKind::BrokenPipe => {
            Err(e).context("writing the report to stdout")
        }
        _ => Ok(()),
    }
}
