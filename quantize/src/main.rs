//! `inhouse-quantize`: command line of the model toolchain.
//!
//! Thin on purpose: it parses arguments, calls the library and maps errors to exit codes.
//! Exit codes: 0 success, 2 the file is not a valid GGUF model (or cannot be opened; clap also
//! uses 2 for usage errors), 1 anything else (such as failing to write the report).
#![forbid(unsafe_code)]

use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, Subcommand};
use inhouse_quantize::gguf::{self, GgufError};
use inhouse_quantize::inspect;

/// Exit status for a file that is missing, unreadable or not a valid GGUF model.
const EXIT_BAD_FILE: u8 = 2;

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
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Inspect { path, json } => inspect_cmd(&path, json),
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
