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
    /// Lists the models served; subcommands manage the model store (admin).
    Models {
        #[command(subcommand)]
        cmd: Option<ModelsCmd>,
    },
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
    /// Fine-tunes a model on a JSONL file (admin): uploads the data, submits a finetune job and
    /// shows its progress until it ends. The result is registered in the store as NAME.
    Finetune {
        /// The model to start from (a stored or configured name).
        #[arg(long)]
        model: String,
        /// Training data, JSONL (e.g. train.jsonl from `inhouse-quantize prepare`).
        #[arg(long, value_name = "FILE.jsonl")]
        data: PathBuf,
        /// Name to register the fine-tuned model under.
        #[arg(long)]
        name: String,
        /// Evaluation data, JSONL.
        #[arg(long, value_name = "FILE.jsonl")]
        eval: Option<PathBuf>,
        /// Epochs.
        #[arg(long)]
        epochs: Option<u32>,
        /// Learning rate.
        #[arg(long)]
        lr: Option<f64>,
        /// Training context, tokens.
        #[arg(long)]
        ctx: Option<u32>,
        /// Optimizer: adamw or sgd.
        #[arg(long)]
        optimizer: Option<String>,
        /// Print the job id and return without waiting.
        #[arg(long)]
        detach: bool,
    },
    /// Toolchain jobs run by the daemon (admin).
    #[command(subcommand)]
    Jobs(JobsCmd),
}

#[derive(Subcommand, Debug)]
enum JobsCmd {
    /// The newest jobs.
    List,
    /// One job as JSON.
    Show {
        /// Job id.
        id: i64,
    },
    /// Shows a job's progress until it ends (exit status 1 unless it succeeded).
    Watch {
        /// Job id.
        id: i64,
    },
    /// Cancels a queued or running job: its process is stopped and its files removed.
    Cancel {
        /// Job id.
        id: i64,
    },
}

#[derive(Subcommand, Debug)]
enum ModelsCmd {
    /// Every model, stored or configured, with its store details.
    List,
    /// Imports a GGUF file into the store (streamed through the socket). Its digest is checked
    /// against --sha256 or a PATH.sha256 file when there is one, and its signature (--signature
    /// or PATH.sig) against the daemon's trusted keys.
    Import {
        /// The GGUF file.
        path: PathBuf,
        /// Name to store it under.
        #[arg(long)]
        name: String,
        /// Import a LoRA adapter for this stored model (used as BASE+NAME).
        #[arg(long, value_name = "BASE")]
        adapter_for: Option<String>,
        /// The SHA-256 the file must have.
        #[arg(long, value_name = "HEX")]
        sha256: Option<String>,
        /// Signature file from `inhouse models sign` [default: PATH.sig when it exists].
        #[arg(long, value_name = "FILE")]
        signature: Option<PathBuf>,
    },
    /// One model in detail: architecture, parameters, quantization, context, template, size,
    /// digest, provenance, memory estimate.
    Show {
        /// Model name (or BASE+ADAPTER).
        name: String,
        /// Print the JSON answer.
        #[arg(long)]
        json: bool,
    },
    /// Removes a stored model (and its adapters) and unloads it.
    Rm {
        /// Model name.
        name: String,
    },
    /// The models in memory: where their layers live, memory used, when they unload.
    Ps,
    /// Creates a publisher key pair (offline): DIR/NAME.key (secret, 0600) and DIR/NAME.pub
    /// (copy it to /etc/inhouse/trusted-keys/ on the servers).
    Keygen {
        /// Directory for the two files.
        #[arg(long, default_value = ".")]
        dir: PathBuf,
        /// Key name (file names).
        #[arg(long)]
        name: String,
        /// Comment stored in the public key, e.g. the publisher's team.
        #[arg(long, default_value = "")]
        comment: String,
    },
    /// Signs a model file with a publisher key (offline), writing PATH.sig.
    Sign {
        /// The GGUF file.
        path: PathBuf,
        /// The secret key file from `keygen`.
        #[arg(long)]
        key: PathBuf,
        /// Suggested name recorded in the signature.
        #[arg(long)]
        name: Option<String>,
        /// Where to write the signature [default: PATH.sig].
        #[arg(long)]
        out: Option<PathBuf>,
    },
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
        Command::Models { cmd: None } => {
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
        Command::Models { cmd: Some(cmd) } => models(&client, cmd).await?,
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
        Command::Finetune {
            model,
            data,
            name,
            eval,
            epochs,
            lr,
            ctx,
            optimizer,
            detach,
        } => {
            check_requested_name(&model)?;
            inhouse::models::check_name(&name)?;
            let upload = |path: PathBuf| {
                let client = client.clone();
                async move {
                    let v = client
                        .upload("/admin/jobs/data?format=jsonl", &path, &[])
                        .await
                        .with_context(|| format!("uploading {}", path.display()))?;
                    v["dataset"]["id"]
                        .as_str()
                        .map(str::to_string)
                        .context("unexpected answer to the upload")
                }
            };
            let data_id = upload(data).await?;
            let mut options = json!({});
            if let Some(e) = eval {
                options["eval_data"] = json!(upload(e).await?);
            }
            if let Some(e) = epochs {
                options["epochs"] = json!(e);
            }
            if let Some(l) = lr {
                options["lr"] = json!(l);
            }
            if let Some(c) = ctx {
                options["ctx"] = json!(c);
            }
            if let Some(o) = optimizer {
                options["optimizer"] = json!(o);
            }
            let body = json!({"kind": "finetune", "model": model, "data": data_id,
                              "options": options, "output_name": name});
            let v = client
                .json(Method::POST, "/admin/jobs", Some(&body))
                .await?;
            let id = v["job"]["id"].as_i64().context("unexpected answer")?;
            if detach {
                println!("{id}");
            } else {
                eprintln!("job {id} submitted (Ctrl-C stops watching, not the job; `inhouse jobs cancel {id}` stops it)");
                watch(&client, id).await?;
            }
        }
        Command::Jobs(cmd) => jobs(&client, cmd).await?,
    }
    Ok(())
}

fn mib(v: &Value) -> String {
    format!("{:.1} MiB", v.as_f64().unwrap_or(0.0) / 1048576.0)
}

/// A name as clients ask for it: `NAME` or `BASE+ADAPTER`, each part a valid store name.
fn check_requested_name(name: &str) -> Result<()> {
    let (base, adapter) = inhouse::models::split_adapter(name);
    inhouse::models::check_name(base)?;
    if let Some(a) = adapter {
        inhouse::models::check_name(a)?;
    }
    Ok(())
}

async fn models(client: &Client, cmd: ModelsCmd) -> Result<()> {
    use inhouse_formats::sign;
    match cmd {
        ModelsCmd::List => {
            let v = client.json(Method::GET, "/admin/models", None).await?;
            println!("NAME\tSOURCE\tARCH\tQUANT\tSIZE\tLOADED");
            for m in v["models"].as_array().context("unexpected answer")? {
                println!(
                    "{}\t{}\t{}\t{}\t{}\t{}",
                    m["name"].as_str().unwrap_or("?"),
                    m["source"].as_str().unwrap_or("?"),
                    m["info"]["architecture"].as_str().unwrap_or("?"),
                    m["manifest"]["quantization"].as_str().unwrap_or("-"),
                    mib(&m["info"]["size_bytes"]),
                    if m["loaded"].is_null() { "no" } else { "yes" },
                );
            }
        }
        ModelsCmd::Import {
            path,
            name,
            adapter_for,
            sha256,
            signature,
        } => {
            inhouse::models::check_name(&name)?;
            if let Some(b) = &adapter_for {
                inhouse::models::check_name(b)?;
            }
            let side = |ext: &str| {
                let mut p = path.clone().into_os_string();
                p.push(ext);
                PathBuf::from(p)
            };
            let sha256 = match sha256 {
                Some(h) => Some(h),
                None => match std::fs::read_to_string(side(".sha256")) {
                    Ok(text) => text.split_whitespace().next().map(str::to_string),
                    Err(_) => None,
                },
            };
            let signature = match signature {
                Some(p) => {
                    Some(std::fs::read(&p).with_context(|| format!("reading {}", p.display()))?)
                }
                None => std::fs::read(side(".sig")).ok(),
            };
            let mut query = vec![];
            if let Some(b) = &adapter_for {
                query.push(format!("adapter_for={b}"));
            }
            if let Some(h) = &sha256 {
                query.push(format!("sha256={h}"));
            }
            if let Some(f) = path.file_name().and_then(|f| f.to_str()) {
                if f.bytes()
                    .all(|c| c.is_ascii_alphanumeric() || b"._-".contains(&c))
                {
                    query.push(format!("source={f}"));
                }
            }
            let mut uri = format!("/admin/models/{name}");
            if !query.is_empty() {
                uri = format!("{uri}?{}", query.join("&"));
            }
            let mut headers = vec![];
            if let Some(sig) = signature {
                headers.push((
                    inhouse::api::models::SIGNATURE_HEADER,
                    base64::engine::general_purpose::STANDARD.encode(sig),
                ));
            }
            if sha256.is_none() {
                eprintln!("note: no --sha256 and no {} file: the digest is recorded but not checked against a published one", side(".sha256").display());
            }
            let v = client.upload(&uri, &path, &headers).await?;
            let m = &v["imported"];
            println!(
                "imported {} (sha256 {}, {}{})",
                m["name"].as_str().unwrap_or("?"),
                m["digest"].as_str().unwrap_or("?"),
                mib(&m["size"]),
                match m["provenance"]["signed_by"].as_str() {
                    Some(k) => format!(", signed by key {k}"),
                    None => ", unsigned".into(),
                }
            );
        }
        ModelsCmd::Show { name, json } => {
            check_requested_name(&name)?;
            let v = client
                .json(Method::GET, &format!("/admin/models/{name}"), None)
                .await?;
            if json {
                return print_json(&v);
            }
            let (i, m, e) = (&v["info"], &v["manifest"], &v["estimate"]);
            let s = |x: &Value| match x {
                Value::Null => "-".to_string(),
                Value::String(t) => t.clone(),
                other => other.to_string(),
            };
            println!("name:            {}", s(&v["name"]));
            println!("source:          {}", s(&v["source"]));
            println!(
                "architecture:    {}",
                s(if i.is_null() {
                    &m["architecture"]
                } else {
                    &i["architecture"]
                })
            );
            println!(
                "parameters:      {}",
                s(if i.is_null() {
                    &m["n_params"]
                } else {
                    &i["n_params"]
                })
            );
            println!("quantization:    {}", s(&m["quantization"]));
            println!(
                "context length:  {}",
                s(if i.is_null() {
                    &m["context_length"]
                } else {
                    &i["n_ctx_train"]
                })
            );
            let template = if m.is_null() {
                !i["chat_template"].is_null()
            } else {
                m["chat_template"].as_bool().unwrap_or(false)
            };
            println!("chat template:   {}", if template { "yes" } else { "no" });
            println!(
                "size:            {}",
                mib(if m.is_null() {
                    &i["size_bytes"]
                } else {
                    &m["size"]
                })
            );
            println!("digest:          {}", s(&m["digest"]));
            if !m.is_null() {
                let p = &m["provenance"];
                println!(
                    "imported:        at {} by uid {} from {}",
                    s(&p["imported_at"]),
                    s(&p["imported_by_uid"]),
                    s(&p["source"])
                );
                println!("signed by:       {}", s(&p["signed_by"]));
            }
            if !e.is_null() {
                println!(
                    "memory estimate: {} (weights {}, KV cache {}, compute {})",
                    mib(&e["total"]),
                    mib(&e["weights"]),
                    mib(&e["kv_cache"]),
                    mib(&e["compute"])
                );
            }
            println!(
                "loaded:          {}",
                if v["loaded"].is_null() {
                    "no".to_string()
                } else {
                    format!("yes, {}", s(&v["loaded"]["placement"]))
                }
            );
        }
        ModelsCmd::Rm { name } => {
            inhouse::models::check_name(&name)?;
            let v = client
                .json(Method::DELETE, &format!("/admin/models/{name}"), None)
                .await?;
            println!("removed {}", v["removed"]);
        }
        ModelsCmd::Ps => {
            let v = client.json(Method::GET, "/admin/ps", None).await?;
            println!("NAME\tPLACEMENT\tGPU LAYERS\tMEMORY\tACTIVE\tUNLOADS IN");
            for l in v["loaded"].as_array().context("unexpected answer")? {
                println!(
                    "{}\t{}\t{}/{}\t{}\t{}\t{}",
                    l["name"].as_str().unwrap_or("?"),
                    l["placement"].as_str().unwrap_or("?"),
                    l["gpu_layers"],
                    l["n_layers"],
                    mib(&l["memory"]["total"]),
                    l["active_requests"],
                    match l["expires_in_secs"].as_u64() {
                        Some(s) => format!("{s} s"),
                        None => "never (configured)".into(),
                    }
                );
            }
            println!(
                "budget {} · used {} · evictions {}",
                mib(&v["budget_bytes"]),
                mib(&v["used_bytes"]),
                v["evictions"]
            );
        }
        ModelsCmd::Keygen { dir, name, comment } => {
            let (secret, public, key) = sign::write_keypair(&dir, &name, &comment)?;
            println!("secret key: {} (keep it offline)", secret.display());
            println!(
                "public key: {} (key id {}): copy it to /etc/inhouse/trusted-keys/",
                public.display(),
                key.key_id()
            );
        }
        ModelsCmd::Sign {
            path,
            key,
            name,
            out,
        } => {
            let secret = sign::SecretKey::read(&key)?;
            let (digest, size) = sign::sha256_file(&path)?;
            let sig = sign::sign_model(&secret, &digest, size, name.as_deref(), None)?;
            let out = out.unwrap_or_else(|| sign::signature_path(&path));
            std::fs::write(&out, sig.to_json())
                .with_context(|| format!("writing {}", out.display()))?;
            println!(
                "signed {} (sha256 {digest}) with key {}: {}",
                path.display(),
                secret.key_id(),
                out.display()
            );
        }
    }
    Ok(())
}

/// `12m05s` style.
fn duration(secs: f64) -> String {
    let s = secs.max(0.0).round() as u64;
    match s {
        0..=59 => format!("{s}s"),
        60..=3599 => format!("{}m{:02}s", s / 60, s % 60),
        _ => format!("{}h{:02}m", s / 3600, s % 3600 / 60),
    }
}

/// One status line for a job: a bar, percent, epoch/step, loss, tokens/s, ETA.
fn progress_line(job: &Value) -> String {
    let p = &job["progress"];
    let fraction = job["fraction"].as_f64().unwrap_or(0.0).clamp(0.0, 1.0);
    let filled = (fraction * 20.0).round() as usize;
    let mut line = format!(
        "job {} {} [{}{}] {:5.1}%",
        job["id"],
        job["state"].as_str().unwrap_or("?"),
        "#".repeat(filled),
        ".".repeat(20 - filled),
        fraction * 100.0
    );
    if let Some(phase) = p["phase"].as_str() {
        line.push_str(&format!("  {phase}"));
    }
    if let (Some(e), Some(n)) = (p["epoch"].as_u64(), p["epochs"].as_u64()) {
        line.push_str(&format!("  epoch {e}/{n}"));
    }
    if let (Some(s), Some(n)) = (p["step"].as_u64(), p["steps"].as_u64()) {
        line.push_str(&format!("  step {s}/{n}"));
    }
    if let Some(l) = p["loss"].as_f64() {
        line.push_str(&format!("  loss {l:.3}"));
    }
    if let Some(t) = p["tokens_per_s"].as_f64() {
        line.push_str(&format!("  {t:.0} tok/s"));
    }
    if let Some(eta) = p["eta_s"].as_f64() {
        line.push_str(&format!("  ETA {}", duration(eta)));
    }
    line
}

/// Redraws a job's progress line on stderr until the job ends; fails unless it succeeded.
async fn watch(client: &Client, id: i64) -> Result<()> {
    let mut width = 0usize;
    loop {
        let v = client
            .json(Method::GET, &format!("/admin/jobs/{id}"), None)
            .await?;
        let job = &v["job"];
        let line = progress_line(job);
        let pad = width.saturating_sub(line.chars().count());
        width = width.max(line.chars().count());
        eprint!("\r{line}{}", " ".repeat(pad));
        let _ = std::io::stderr().flush();
        match job["state"].as_str() {
            Some("queued") | Some("running") => {
                tokio::time::sleep(std::time::Duration::from_millis(500)).await
            }
            Some("succeeded") => {
                eprintln!();
                let r = &job["result"];
                match r["model"].as_str() {
                    Some(m) => println!(
                        "registered {m} (sha256 {})",
                        r["digest"].as_str().unwrap_or("?")
                    ),
                    None => print_json(r)?,
                }
                return Ok(());
            }
            state => {
                eprintln!();
                anyhow::bail!(
                    "job {id} {}{}",
                    state.unwrap_or("?"),
                    job["error"]
                        .as_str()
                        .map(|e| format!(": {e}"))
                        .unwrap_or_default()
                );
            }
        }
    }
}

async fn jobs(client: &Client, cmd: JobsCmd) -> Result<()> {
    match cmd {
        JobsCmd::List => {
            let v = client.json(Method::GET, "/admin/jobs", None).await?;
            println!("ID\tKIND\tSTATE\tPROGRESS\tCREATED\tOUTPUT");
            for j in v["jobs"].as_array().context("unexpected answer")? {
                println!(
                    "{}\t{}\t{}\t{:.0}%\t{}\t{}",
                    j["id"],
                    j["kind"].as_str().unwrap_or("?"),
                    j["state"].as_str().unwrap_or("?"),
                    j["fraction"].as_f64().unwrap_or(0.0) * 100.0,
                    j["created_at"],
                    j["params"]["output_name"].as_str().unwrap_or("-"),
                );
            }
        }
        JobsCmd::Show { id } => print_json(
            &client
                .json(Method::GET, &format!("/admin/jobs/{id}"), None)
                .await?,
        )?,
        JobsCmd::Watch { id } => watch(client, id).await?,
        JobsCmd::Cancel { id } => {
            let v = client
                .json(Method::DELETE, &format!("/admin/jobs/{id}"), None)
                .await?;
            println!("job {id} {}", v["job"]["state"].as_str().unwrap_or("?"));
        }
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
