//! `inhouse run` and `inhouse chat`: generation, streamed to stdout.

use crate::client::Client;
use anyhow::Result;
use serde_json::{json, Value};
use std::io::{BufRead, Write};

/// Sampling options shared by `run` and `chat`.
#[derive(clap::Args, Debug)]
pub(super) struct GenOpts {
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

/// `inhouse run`: one prompt, one streamed answer.
pub(super) async fn run(client: &Client, model: &str, prompt: &str, opts: &GenOpts) -> Result<()> {
    let mut body = json!({"model": model, "messages": [{"role": "user", "content": prompt}]});
    opts.apply(&mut body);
    stream_answer(client, &body).await?;
    Ok(())
}

/// `inhouse chat`: reads user turns from stdin until an empty line or its end.
pub(super) async fn chat(
    client: &Client,
    model: &str,
    system: Option<String>,
    opts: &GenOpts,
) -> Result<()> {
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
        let answer = stream_answer(client, &body).await?;
        messages.push(json!({"role": "assistant", "content": answer}));
    }
    Ok(())
}
