//! `inhouse`: the client for the daemon's socket.

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};
use hyper::Method;
use inhouse::client::Client;
use serde_json::{json, Value};
use std::io::{BufRead, Write};
use std::path::PathBuf;

/// Talk to inhoused over its Unix socket.
#[derive(Parser, Debug)]
#[command(name = "inhouse", version, about)]
struct Args {
    /// The daemon's socket.
    #[arg(long, env = "INHOUSE_SOCKET", default_value = inhouse::config::DEFAULT_SOCKET)]
    socket: PathBuf,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Is the daemon up? Prints its health report.
    Health,
    /// Lists the models served.
    Models,
    /// Sends one prompt and streams the answer to stdout.
    Run {
        /// Model name.
        model: String,
        /// The prompt.
        prompt: String,
        #[command(flatten)]
        opts: GenOpts,
    },
    /// Interactive chat; an empty line or end of input quits.
    Chat {
        /// Model name.
        model: String,
        /// A system prompt.
        #[arg(long)]
        system: Option<String>,
        #[command(flatten)]
        opts: GenOpts,
    },
}

#[derive(clap::Args, Debug)]
struct GenOpts {
    /// Most tokens in the answer.
    #[arg(long)]
    max_tokens: Option<u32>,
    /// Sampling temperature (0 = greedy).
    #[arg(long)]
    temperature: Option<f32>,
    /// Random seed.
    #[arg(long)]
    seed: Option<i64>,
}

impl GenOpts {
    fn apply(&self, body: &mut Value) {
        if let Some(m) = self.max_tokens {
            body["max_tokens"] = json!(m);
        }
        if let Some(t) = self.temperature {
            body["temperature"] = json!(t);
        }
        if let Some(s) = self.seed {
            body["seed"] = json!(s);
        }
    }
}

async fn stream_answer(client: &Client, body: &Value) -> Result<String> {
    let mut out = std::io::stdout();
    let (answer, _) = client
        .chat_stream(body, |t| {
            let _ = out.write_all(t.as_bytes());
            let _ = out.flush();
        })
        .await?;
    println!();
    Ok(answer)
}

async fn run(args: Args) -> Result<()> {
    let client = Client::new(&args.socket);
    match args.command {
        Command::Health => {
            let v = client.json(Method::GET, "/health", None).await?;
            println!("{}", serde_json::to_string_pretty(&v)?);
        }
        Command::Models => {
            let v = client.json(Method::GET, "/v1/models", None).await?;
            for m in v["data"].as_array().context("unexpected answer")? {
                let meta = &m["meta"];
                println!(
                    "{}\t{}\t{} params\tctx {}",
                    m["id"].as_str().unwrap_or("?"),
                    meta["architecture"].as_str().unwrap_or("?"),
                    meta["n_params"],
                    meta["n_ctx"]
                );
            }
        }
        Command::Run {
            model,
            prompt,
            opts,
        } => {
            let mut body =
                json!({"model": model, "messages": [{"role": "user", "content": prompt}]});
            opts.apply(&mut body);
            stream_answer(&client, &body).await?;
        }
        Command::Chat {
            model,
            system,
            opts,
        } => {
            let mut messages = Vec::new();
            if let Some(s) = system {
                messages.push(json!({"role": "system", "content": s}));
            }
            let stdin = std::io::stdin();
            loop {
                eprint!("> ");
                let mut line = String::new();
                if stdin.lock().read_line(&mut line)? == 0 || line.trim().is_empty() {
                    break;
                }
                messages.push(json!({"role": "user", "content": line.trim_end()}));
                let mut body = json!({"model": model, "messages": messages});
                opts.apply(&mut body);
                let answer = stream_answer(&client, &body).await?;
                messages.push(json!({"role": "assistant", "content": answer}));
            }
        }
    }
    Ok(())
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> std::process::ExitCode {
    match run(Args::parse()).await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("inhouse: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
