//! `inhouse`: the client for the daemon's socket.

use anyhow::{Context, Result};
use base64::Engine as _;
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
    /// Your own stored requests.
    #[command(subcommand)]
    History(HistoryCmd),
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
    Admin(AdminCmd),
}

#[derive(Subcommand, Debug)]
enum HistoryCmd {
    /// Lists your records, newest first.
    List {
        /// Records per page.
        #[arg(long, default_value_t = 50)]
        limit: u32,
        /// Only records older than this id (the previous page's next_before).
        #[arg(long)]
        before: Option<i64>,
    },
    /// Shows one record with its prompt and response.
    Show {
        /// Record id.
        id: i64,
    },
    /// Deletes one record.
    Rm {
        /// Record id.
        id: i64,
    },
}

#[derive(Subcommand, Debug)]
enum AdminCmd {
    /// Writes a new random 32-byte master key to PATH (mode 0600; never overwrites).
    GenKey {
        /// Where to write the key.
        path: PathBuf,
    },
    /// Destroys every stored record of a uid (crypto-shredding its data key first).
    Erase {
        /// The uid to erase.
        #[arg(long)]
        uid: u32,
    },
    /// Rewraps every data key under a new master key, online. Afterwards install the new key
    /// (credential or key file) in place of the old one: only it opens the store.
    RotateKey {
        /// The new key file (mode 0600), e.g. made with `inhouse admin gen-key`.
        #[arg(long, value_name = "PATH")]
        new_key_file: PathBuf,
    },
    /// The audit log.
    #[command(subcommand)]
    Audit(AuditCmd),
}

#[derive(Subcommand, Debug)]
enum AuditCmd {
    /// Checks the chain; names the first modified, deleted or reordered row. Exit 1 if broken.
    Verify,
    /// Writes the log as JSON lines to stdout or a file.
    Export {
        /// Output file (default stdout).
        #[arg(long)]
        out: Option<PathBuf>,
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
        Command::History(cmd) => history(&client, cmd).await?,
        Command::Request { method, path, data } => {
            let method = Method::from_bytes(method.to_ascii_uppercase().as_bytes())
                .context("not an HTTP method")?;
            let (status, body) = client.raw(method, &path, data.map(Into::into)).await?;
            println!("{}", status.as_u16());
            std::io::stdout().write_all(&body)?;
            println!();
        }
        Command::Admin(cmd) => admin(&client, cmd).await?,
    }
    Ok(())
}

fn print_json(v: &Value) -> Result<()> {
    println!("{}", serde_json::to_string_pretty(v)?);
    Ok(())
}

async fn history(client: &Client, cmd: HistoryCmd) -> Result<()> {
    match cmd {
        HistoryCmd::List { limit, before } => {
            let mut path = format!("/v1/history?limit={limit}");
            if let Some(b) = before {
                path.push_str(&format!("&before={b}"));
            }
            let v = client.json(Method::GET, &path, None).await?;
            for r in v["data"].as_array().context("unexpected answer")? {
                println!(
                    "{}\t{}\t{}\t{}\t{}+{} tokens",
                    r["id"],
                    r["created_at"],
                    r["model"].as_str().unwrap_or("?"),
                    r["status"].as_str().unwrap_or("?"),
                    r["prompt_tokens"],
                    r["completion_tokens"]
                );
            }
            if let Some(next) = v["next_before"].as_i64() {
                eprintln!("more: --before {next}");
            }
        }
        HistoryCmd::Show { id } => print_json(
            &client
                .json(Method::GET, &format!("/v1/history/{id}"), None)
                .await?,
        )?,
        HistoryCmd::Rm { id } => print_json(
            &client
                .json(Method::DELETE, &format!("/v1/history/{id}"), None)
                .await?,
        )?,
    }
    Ok(())
}

async fn admin(client: &Client, cmd: AdminCmd) -> Result<()> {
    match cmd {
        AdminCmd::GenKey { path } => {
            let id = inhouse::crypto::generate_key_file(&path)
                .with_context(|| format!("writing {}", path.display()))?;
            println!("wrote a new master key to {} (key id {id})", path.display());
            eprintln!("keep a copy offline: without it the stored data cannot be read");
        }
        AdminCmd::Erase { uid } => print_json(
            &client
                .json(Method::POST, "/admin/erase", Some(&json!({"uid": uid})))
                .await?,
        )?,
        AdminCmd::RotateKey { new_key_file } => {
            // Read and check the file here (mode 0600, format), then send the key over the
            // socket, which only the daemon's admins can use.
            let key = std::fs::read(&new_key_file)
                .with_context(|| format!("reading {}", new_key_file.display()))?;
            inhouse::crypto::MasterKey::load(&new_key_file)
                .with_context(|| format!("checking {}", new_key_file.display()))?;
            let body = json!({"key": base64::engine::general_purpose::STANDARD.encode(&key)});
            print_json(
                &client
                    .json(Method::POST, "/admin/rotate-key", Some(&body))
                    .await?,
            )?
        }
        AdminCmd::Audit(AuditCmd::Verify) => {
            let v = client.json(Method::GET, "/audit/verify", None).await?;
            print_json(&v)?;
            if v["ok"] != json!(true) {
                anyhow::bail!("the audit log does not verify (see first_fault above)");
            }
        }
        AdminCmd::Audit(AuditCmd::Export { out }) => {
            let (status, body) = client.raw(Method::GET, "/audit/export", None).await?;
            if !status.is_success() {
                let v: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
                anyhow::bail!("{status}: {}", inhouse::client::error_message(&v, &body));
            }
            match out {
                Some(path) => std::fs::write(&path, &body)
                    .with_context(|| format!("writing {}", path.display()))?,
                None => std::io::stdout().write_all(&body)?,
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
