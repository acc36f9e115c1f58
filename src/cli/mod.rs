//! The `inhouse` command line: arguments, one file per command family, each a thin layer over
//! the typed [`Client`] (`src/bin/inhouse.rs` only parses, runs and maps the error to an exit
//! status, so every command is reachable from tests).
//!
//! - [`models`]: the model store (list, import, show, rm, ps) and publisher keys (keygen, sign).
//! - [`jobs`]: toolchain jobs (list, show, watch, cancel) and `finetune`.
//! - [`history`]: the caller's own records.
//! - [`admin`]: master keys, erasure, rotation, the audit log.
//! - [`generate`]: `run` and `chat`.
//! - [`ask`]: an answer from a collection's documents, with its sources.
//! - [`output`]: how values are shown: dates, sizes, durations, progress bars.
//!
//! Listings take `--json` to print the API's answer itself (the typed [`crate::wire`] value),
//! for scripts; without it they print tab-separated columns with dates in UTC.

mod admin;
mod ask;
mod generate;
mod history;
mod jobs;
mod models;
mod output;

use crate::client::Client;
use anyhow::{Context, Result};
use clap::{Parser, Subcommand};
use hyper::Method;
use std::io::Write;
use std::path::PathBuf;

/// Talk to inhoused over its Unix socket.
#[derive(Parser, Debug)]
#[command(name = "inhouse", version, about)]
pub struct Args {
    /// The daemon's socket.
    #[arg(long, env = "INHOUSE_SOCKET", default_value = crate::config::DEFAULT_SOCKET)]
    socket: PathBuf,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Is the daemon up? Prints its health report.
    Health,
    /// Lists the models served; subcommands manage the model store (admin).
    Models {
        #[command(subcommand)]
        cmd: Option<models::ModelsCmd>,
    },
    /// Sends one prompt and streams the answer to stdout.
    Run {
        /// Model name.
        model: String,
        /// The prompt.
        prompt: String,
        #[command(flatten)]
        opts: generate::GenOpts,
    },
    /// Interactive chat; an empty line or end of input quits.
    Chat {
        /// Model name.
        model: String,
        /// A system prompt.
        #[arg(long)]
        system: Option<String>,
        #[command(flatten)]
        opts: generate::GenOpts,
    },
    /// Answers a question from a collection's documents and lists the sources it cites.
    Ask(ask::AskArgs),
    /// Your own stored requests.
    #[command(subcommand)]
    History(history::HistoryCmd),
    /// Sends any request to the API and prints the status line and the body (like curl).
    Request {
        /// HTTP method, e.g. GET or POST.
        method: String,
        /// Path, e.g. /v1/models.
        path: String,
        /// JSON body.
        #[arg(long)]
        data: Option<String>,
    },
    /// Administration: keys, erasure, audit.
    #[command(subcommand)]
    Admin(admin::AdminCmd),
    /// Fine-tunes a model on a JSONL file (admin): uploads the data, submits a finetune job and
    /// shows its progress until it ends. The result is registered in the store as NAME.
    Finetune(jobs::FinetuneArgs),
    /// Toolchain jobs run by the daemon (admin).
    #[command(subcommand)]
    Jobs(jobs::JobsCmd),
}

/// Runs one command line against the daemon.
pub async fn run(args: Args) -> Result<()> {
    let client = Client::new(&args.socket);
    match args.command {
        Command::Health => print_json(&client.health().await?)?,
        Command::Models { cmd: None } => models::served(&client).await?,
        Command::Models { cmd: Some(cmd) } => models::run(&client, cmd).await?,
        Command::Run {
            model,
            prompt,
            opts,
        } => generate::run(&client, &model, &prompt, &opts).await?,
        Command::Chat {
            model,
            system,
            opts,
        } => generate::chat(&client, &model, system, &opts).await?,
        Command::Ask(a) => ask::run(&client, a).await?,
        Command::History(cmd) => history::run(&client, cmd).await?,
        Command::Request { method, path, data } => {
            let method = Method::from_bytes(method.to_ascii_uppercase().as_bytes())
                .context("not an HTTP method")?;
            let (status, body) = client.raw(method, &path, data.map(Into::into)).await?;
            println!("{}", status.as_u16());
            std::io::stdout().write_all(&body)?;
            println!();
        }
        Command::Admin(cmd) => admin::run(&client, cmd).await?,
        Command::Finetune(args) => jobs::finetune(&client, args).await?,
        Command::Jobs(cmd) => jobs::run(&client, cmd).await?,
    }
    Ok(())
}

/// Prints a value as pretty JSON on stdout.
fn print_json(v: &impl serde::Serialize) -> Result<()> {
    println!("{}", serde_json::to_string_pretty(v)?);
    Ok(())
}

/// Reads a free-form part of an answer (a job's parameters, progress or result) as `T`; an
/// error names `what` and the field at fault.
fn typed<T: serde::de::DeserializeOwned>(what: &str, v: &serde_json::Value) -> Result<T> {
    serde_path_to_error::deserialize(v).map_err(|e| anyhow::anyhow!("{what}: {e}"))
}

/// A name as clients ask for it: `NAME` or `BASE+ADAPTER`, each part a valid store name.
fn check_requested_name(name: &str) -> Result<()> {
    let (base, adapter) = crate::models::split_adapter(name);
    crate::models::check_name(base)?;
    if let Some(a) = adapter {
        crate::models::check_name(a)?;
    }
    Ok(())
}
