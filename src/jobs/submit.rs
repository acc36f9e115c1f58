//! Submission: a `POST /admin/jobs` request is checked into a [`JobSpec`] (models resolved in
//! the configuration or the store, datasets by id, options range-checked), stored as a `queued`
//! row, and given its datasets, which move into the job's own folder; then the runner drives
//! it ([`super::runner`]).

use super::data::{private_dir, DatasetMeta};
use super::runner::JobRunner;
use super::{check_options, DataRef, JobError, JobKind, JobRequest, JobSpec, ModelRef};
use crate::models::Kind;
use crate::storage::{JobRow, JobState};
use serde_json::Value;
use std::sync::atomic::Ordering;

impl JobRunner {
    fn resolve_model(&self, name: &str) -> Result<ModelRef, JobError> {
        if let Some(path) = self.configured.get(name) {
            let (digest, _) = inhouse_formats::sign::sha256_file(path)
                .map_err(|e| JobError::Io(format!("model {name:?}: {e}")))?;
            return Ok(ModelRef {
                name: name.to_string(),
                digest,
                path: path.clone(),
            });
        }
        let store = self
            .models
            .as_ref()
            .ok_or_else(|| JobError::UnknownModel(name.to_string()))?;
        match store.get(name) {
            Ok(m) if m.kind == Kind::Model => Ok(ModelRef {
                name: name.to_string(),
                path: store.blob_path(&m.digest),
                digest: m.digest,
            }),
            Ok(_) => Err(JobError::Invalid {
                field: "model".into(),
                message: format!("{name:?} is a LoRA adapter, not a model"),
            }),
            Err(_) => Err(JobError::UnknownModel(name.to_string())),
        }
    }

    /// The reports of the prepare or synth jobs whose outputs these datasets are (their
    /// source reads `job N (train)`): counts only, as those jobs stored them.
    async fn data_reports(&self, datasets: &[DatasetMeta]) -> Vec<Value> {
        let mut out = Vec::new();
        for d in datasets {
            let Some(job) = d
                .source
                .strip_prefix("job ")
                .and_then(|r| r.split(' ').next())
                .and_then(|n| n.parse::<i64>().ok())
            else {
                continue;
            };
            if out.iter().any(|r: &Value| r["job"] == job) {
                continue;
            }
            if let Ok(row) = self.store.call(move |s| s.job_get(job)).await {
                if let Some(report) = row.result.as_ref().and_then(|r| r.get("report")) {
                    out.push(serde_json::json!({"job": job, "kind": row.kind, "report": report}));
                }
            }
        }
        out
    }

    fn resolve_data(&self, id: &str, kind: JobKind) -> Result<DatasetMeta, JobError> {
        let meta = self.datasets.get(id)?;
        if !matches!(kind, JobKind::Prepare | JobKind::Synth) && meta.format != "jsonl" {
            return Err(JobError::Invalid {
                field: "data".into(),
                message: format!(
                    "a {} job reads JSONL; dataset {id} is {} (run a prepare job on it first)",
                    kind.as_str(),
                    meta.format
                ),
            });
        }
        Ok(meta)
    }

    /// Checks a request into a spec and the datasets it claims (blocking: it may hash a
    /// configured model).
    fn check(&self, req: &JobRequest) -> Result<(JobSpec, Vec<DatasetMeta>), JobError> {
        let kind = JobKind::parse(&req.kind)?;
        let k = kind.as_str();
        let options = check_options(kind, req.options.as_ref())?;
        let needs_model = kind != JobKind::Prepare;
        let needs_data = kind != JobKind::Quantize;
        let needs_output = matches!(kind, JobKind::Finetune | JobKind::Quantize);
        let refuse = |field: &str, present: bool| -> Result<(), JobError> {
            if present {
                Err(JobError::Invalid {
                    field: field.into(),
                    message: format!("a {k} job does not take {field}"),
                })
            } else {
                Ok(())
            }
        };
        if !needs_model {
            refuse("model", req.model.is_some())?;
        }
        if !needs_data {
            refuse("data", req.data.is_some())?;
        }
        if !needs_output {
            refuse("output_name", req.output_name.is_some())?;
        }
        let model = match (&req.model, needs_model) {
            (Some(m), true) => Some(self.resolve_model(m)?),
            (None, true) => {
                return Err(JobError::Missing {
                    kind: k,
                    field: "model",
                })
            }
            _ => None,
        };
        let compare = options
            .compare
            .as_deref()
            .map(|m| self.resolve_model(m))
            .transpose()?;
        let mut claimed = vec![];
        let data = match (&req.data, needs_data) {
            (Some(id), true) => {
                let meta = self.resolve_data(id, kind)?;
                claimed.push(meta.clone());
                Some(meta)
            }
            (None, true) => {
                return Err(JobError::Missing {
                    kind: k,
                    field: "data",
                })
            }
            _ => None,
        };
        let eval_data = match options.eval_data.as_deref() {
            Some(id) if Some(id) == req.data.as_deref() => {
                return Err(JobError::Invalid {
                    field: "options.eval_data".into(),
                    message: "must be another dataset than data".into(),
                })
            }
            Some(id) => {
                let meta = self.resolve_data(id, kind)?;
                claimed.push(meta.clone());
                Some(meta)
            }
            None if options.gate.is_some() => {
                return Err(JobError::Invalid {
                    field: "options.gate".into(),
                    message: "a gate needs held-out questions: give options.eval_data (e.g. a \
                              synth job's eval set)"
                        .into(),
                })
            }
            None => None,
        };
        let output_name = match (&req.output_name, needs_output) {
            (Some(n), true) => {
                crate::models::check_name(n).map_err(|e| JobError::Invalid {
                    field: "output_name".into(),
                    message: e.to_string(),
                })?;
                let taken = self.configured.contains_key(n)
                    || self.models.as_ref().is_some_and(|s| s.get(n).is_ok());
                if taken {
                    return Err(JobError::OutputExists(n.clone()));
                }
                Some(n.clone())
            }
            (None, true) => {
                return Err(JobError::Missing {
                    kind: k,
                    field: "output_name",
                })
            }
            _ => None,
        };
        let to_ref = |m: &DatasetMeta| DataRef {
            id: m.id.clone(),
            sha256: m.sha256.clone(),
            size: m.size,
            format: m.format.clone(),
        };
        let spec = JobSpec {
            kind,
            model,
            compare,
            data: data.as_ref().map(to_ref),
            eval_data: eval_data.as_ref().map(to_ref),
            options,
            output_name,
            data_reports: Vec::new(),
        };
        Ok((spec, claimed))
    }

    /// Checks and records a job, moves its datasets into its working folder and starts driving
    /// it. Returns its row (`queued`).
    pub async fn submit(&self, req: JobRequest, uid: u32) -> Result<JobRow, JobError> {
        if self.stopping.load(Ordering::SeqCst) {
            return Err(JobError::ShuttingDown);
        }
        let me = self.arc();
        let (mut spec, claimed) = tokio::task::spawn_blocking(move || me.check(&req))
            .await
            .map_err(|e| JobError::Io(format!("checking the job: {e}")))??;
        if spec.kind == JobKind::Finetune {
            spec.data_reports = self.data_reports(&claimed).await;
        }
        if !self.toolchain.is_file() {
            return Err(JobError::Toolchain(self.toolchain.display().to_string()));
        }
        let params = serde_json::to_string(&spec).map_err(|e| JobError::Io(e.to_string()))?;
        let kind = spec.kind.as_str();
        let row = self
            .store
            .call(move |s| s.job_create(kind, uid, &params))
            .await?;
        let id = row.id;
        // The job owns its data from now on: a failure here ends it at once.
        let work = self.work_dir(id);
        let moved = (|| {
            private_dir(&work.join("data"))?;
            for (meta, role) in claimed.iter().zip(["train", "eval"]) {
                let dest = work.join("data").join(format!("{role}.{}", meta.format));
                self.datasets.claim(meta, &dest)?;
            }
            Ok::<(), JobError>(())
        })();
        if let Err(e) = moved {
            let reason = e.to_string();
            let _ = self
                .store
                .call(move |s| s.job_finish(id, JobState::Failed, None, Some(&reason), None))
                .await;
            self.clean(id, true);
            return Err(e);
        }
        tracing::info!(job = id, kind, uid, "job submitted");
        self.start_task(id, uid, spec, false);
        Ok(row)
    }
}
