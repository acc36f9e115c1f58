//! `inhouse jobs …` and `inhouse finetune`: toolchain jobs run by the daemon (admin).

use super::output::{date, duration, job_bar, upload_bar};
use super::{check_requested_name, print_json, typed};
use crate::client::Client;
use crate::jobs::JobSpec;
use crate::storage::JobState;
use crate::wire::{Job, JobOptions, JobProgress, JobRequest, RegisteredModel};
use anyhow::{Context, Result};
use clap::Subcommand;
use std::path::{Path, PathBuf};
use std::sync::Arc;

#[derive(Subcommand, Debug)]
pub(super) enum JobsCmd {
    /// The newest jobs.
    List {
        /// Print the API's answer as JSON.
        #[arg(long)]
        json: bool,
    },
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

/// `inhouse finetune`'s arguments.
#[derive(clap::Args, Debug)]
pub(super) struct FinetuneArgs {
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
    /// Train a LoRA adapter of this rank (registered as an adapter of --model, served as
    /// `MODEL+NAME`) instead of every weight.
    #[arg(long, value_name = "R")]
    lora_rank: Option<u32>,
    /// LoRA alpha [default: 2 × rank].
    #[arg(long, value_name = "A", requires = "lora_rank")]
    lora_alpha: Option<f64>,
    /// The layers LoRA adapts, comma-separated [default: all seven].
    #[arg(
        long,
        value_name = "LIST",
        requires = "lora_rank",
        value_delimiter = ','
    )]
    lora_targets: Option<Vec<String>>,
    /// Count the loss on the system and user turns too, not only the assistant's answers.
    #[arg(long)]
    train_on_inputs: bool,
    /// Samples per optimizer step.
    #[arg(long, value_name = "N")]
    grad_accum: Option<u32>,
    /// Also evaluate and checkpoint every N steps.
    #[arg(long, value_name = "N")]
    eval_every: Option<u32>,
    /// Seed of the data order and the adapter's initialization.
    #[arg(long)]
    seed: Option<u64>,
    /// An evaluation gate policy (JSON file): the output is judged against --model on the
    /// --eval questions, and registered only as a candidate when refused.
    #[arg(long, value_name = "POLICY.json", requires = "eval")]
    gate: Option<PathBuf>,
    /// Print the job id and return without waiting.
    #[arg(long)]
    detach: bool,
}

pub(super) async fn run(client: &Client, cmd: JobsCmd) -> Result<()> {
    match cmd {
        JobsCmd::List { json } => {
            let list = client.jobs().await?;
            if json {
                return print_json(&list);
            }
            println!("ID\tKIND\tSTATE\tPROGRESS\tCREATED\tOUTPUT");
            for j in &list.jobs {
                let spec: JobSpec = typed(
                    &format!("the parameters of job {}", j.row.id),
                    &j.row.params,
                )?;
                println!(
                    "{}\t{}\t{}\t{:.0}%\t{}\t{}",
                    j.row.id,
                    j.row.kind,
                    j.row.state.as_str(),
                    j.fraction * 100.0,
                    date(j.row.created_at),
                    spec.output_name.as_deref().unwrap_or("-"),
                );
            }
        }
        JobsCmd::Show { id } => print_json(&client.job(id).await?)?,
        JobsCmd::Watch { id } => watch(client, id).await?,
        JobsCmd::Cancel { id } => {
            let job = client.cancel_job(id).await?.job;
            println!("job {id} {}", job.row.state.as_str());
        }
    }
    Ok(())
}

/// Uploads, submits and (unless detached) watches a finetune job.
pub(super) async fn finetune(client: &Client, a: FinetuneArgs) -> Result<()> {
    check_requested_name(&a.model)?;
    crate::models::check_name(&a.name)?;
    let gate = match &a.gate {
        Some(p) => {
            let text = std::fs::read_to_string(p)
                .with_context(|| format!("reading the gate policy {}", p.display()))?;
            Some(
                serde_json::from_str::<serde_json::Value>(&text).with_context(|| {
                    format!(
                        "{}: not JSON (see `inhouse-quantize eval --gate`)",
                        p.display()
                    )
                })?,
            )
        }
        None => None,
    };
    let data = upload(client, &a.data).await?;
    let eval_data = match &a.eval {
        Some(e) => Some(upload(client, e).await?),
        None => None,
    };
    let options = JobOptions {
        epochs: a.epochs,
        lr: a.lr,
        ctx: a.ctx,
        optimizer: a.optimizer,
        eval_data,
        lora_rank: a.lora_rank,
        lora_alpha: a.lora_alpha,
        lora_targets: a.lora_targets,
        train_on_inputs: a.train_on_inputs.then_some(true),
        grad_accum: a.grad_accum,
        eval_every: a.eval_every,
        seed: a.seed,
        gate,
        ..JobOptions::default()
    };
    let req = JobRequest {
        kind: "finetune".into(),
        model: Some(a.model),
        data: Some(data),
        options: Some(serde_json::to_value(options)?),
        output_name: Some(a.name),
    };
    let id = client.submit_job(&req).await?.job.row.id;
    if a.detach {
        println!("{id}");
    } else {
        eprintln!("job {id} submitted (Ctrl-C stops watching, not the job; `inhouse jobs cancel {id}` stops it)");
        watch(client, id).await?;
    }
    Ok(())
}

/// Uploads a JSONL dataset, with a bar on a terminal; answers its id.
async fn upload(client: &Client, path: &Path) -> Result<String> {
    let len = std::fs::metadata(path).map(|m| m.len()).unwrap_or(0);
    let bar = upload_bar(&format!("uploading {}", path.display()), len);
    let on_sent = {
        let bar = bar.clone();
        Arc::new(move |sent: u64| bar.set_position(sent))
    };
    let answer = client.upload_dataset(path, "jsonl", Some(on_sent)).await;
    bar.finish_and_clear();
    Ok(answer
        .with_context(|| format!("uploading {}", path.display()))?
        .dataset
        .id)
}

/// The details after a job's bar: percent, phase, epoch/step, loss, tokens/s, ETA.
fn progress_detail(job: &Job) -> Result<String> {
    let p: JobProgress = match &job.row.progress {
        Some(v) => typed(&format!("the progress of job {}", job.row.id), v)?,
        None => JobProgress::default(),
    };
    let mut line = format!("{:5.1}%", job.fraction.clamp(0.0, 1.0) * 100.0);
    if let Some(phase) = p.phase {
        line.push_str(&format!("  {phase}"));
    }
    if let (Some(e), Some(n)) = (p.epoch, p.epochs) {
        line.push_str(&format!("  epoch {e}/{n}"));
    }
    if let (Some(s), Some(n)) = (p.step, p.steps) {
        line.push_str(&format!("  step {s}/{n}"));
    }
    if let Some(l) = p.loss {
        line.push_str(&format!("  loss {l:.3}"));
    }
    if let Some(l) = p.eval_loss {
        line.push_str(&format!("  eval loss {l:.3}"));
    }
    if let Some(t) = p.tokens_per_s {
        line.push_str(&format!("  {t:.0} tok/s"));
    }
    if let Some(eta) = p.eta_s {
        line.push_str(&format!("  ETA {}", duration(eta)));
    }
    Ok(line)
}

/// Shows a job's progress on stderr (a bar, on a terminal only) until the job ends; fails
/// unless it succeeded.
async fn watch(client: &Client, id: i64) -> Result<()> {
    let bar = job_bar();
    loop {
        let job = client.job(id).await?.job;
        bar.set_prefix(format!("job {id} {}", job.row.state.as_str()));
        bar.set_position((job.fraction.clamp(0.0, 1.0) * 1000.0).round() as u64);
        bar.set_message(progress_detail(&job)?);
        match job.row.state {
            JobState::Queued | JobState::Running => {
                tokio::time::sleep(std::time::Duration::from_millis(500)).await
            }
            JobState::Succeeded => {
                bar.finish();
                if matches!(job.row.kind.as_str(), "finetune" | "quantize") {
                    let result = job.row.result.as_ref().context("the job has no result")?;
                    let r: RegisteredModel = typed(&format!("the result of job {id}"), result)?;
                    println!("registered {} (sha256 {})", r.model, r.digest);
                } else {
                    print_json(&job.row.result)?;
                }
                return Ok(());
            }
            state @ (JobState::Failed | JobState::Cancelled) => {
                bar.abandon();
                anyhow::bail!(
                    "job {id} {}{}",
                    state.as_str(),
                    job.row.error.map(|e| format!(": {e}")).unwrap_or_default()
                );
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn progress_is_read_typed() {
        let job: Job = serde_json::from_value(serde_json::json!({
            "id": 3, "kind": "finetune", "state": "running", "uid": 0, "params": {},
            "created_at": 1796182170, "started_at": null, "finished_at": null, "pid": 7,
            "attempts": 1, "checkpoint": null, "result": null, "error": null,
            "progress": {"phase": "train", "epoch": 1, "epochs": 3, "loss": 2.5, "eta_s": 725},
            "fraction": 0.25
        }))
        .unwrap();
        assert_eq!(
            progress_detail(&job).unwrap(),
            " 25.0%  train  epoch 1/3  loss 2.500  ETA 12m05s"
        );
        let mut bad = job.clone();
        bad.row.progress = Some(serde_json::json!({"epoch": "one"}));
        let err = format!("{:#}", progress_detail(&bad).unwrap_err());
        assert!(
            err.contains("progress of job 3") && err.contains("epoch"),
            "{err}"
        );
    }
}
