//! The API's admin, models, ps, jobs, history and error bodies, typed once and shared by the
//! daemon's handlers (which answer with them) and [`crate::client`] (which reads them), the way
//! atuin-common's `api.rs` serves atuin's server and client.
//!
//! A handler builds one of these instead of a `json!` literal, so the two ends cannot drift: a
//! renamed or missing field is a compile error on the daemon side and, for an older or newer
//! daemon, a read error on the client side that names the field (see
//! [`crate::client::ClientError::Decode`]). Where an engine, store or model-store type is already
//! what a body carries ([`ModelInfo`], [`LoadedModel`], [`Estimate`], [`Manifest`],
//! [`RecordMeta`], …) it is used as it is rather than copied.
//!
//! Field names and values are those the API has always had; OpenAI-compatible bodies (`/v1/chat`,
//! `/v1/completions`, the Ollama routes) keep their own shapes in their route files.

use crate::engine::pool::LoadedModel;
use crate::engine::ModelInfo;
use crate::jobs::data::DatasetMeta;
use crate::models::estimate::Estimate;
use crate::models::Manifest;
use crate::storage::{EraseReport, JobRow, RecordMeta, RotationStatus, VerifyReport};
use serde::{Deserialize, Serialize};
use serde_json::Value;

pub use crate::jobs::{JobOptions, JobRequest};

// ----- errors -----

/// Every error answer: `{"error":{"message","type","param","code"}}` (OpenAI's shape).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ErrorBody {
    /// What went wrong.
    pub error: ErrorDetail,
}

/// The inside of an [`ErrorBody`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ErrorDetail {
    /// Human-readable explanation.
    pub message: String,
    /// OpenAI error type, e.g. `invalid_request_error`.
    #[serde(rename = "type")]
    pub kind: String,
    /// Which request field was wrong, when one was.
    pub param: Option<String>,
    /// Stable machine-readable code, e.g. `model_not_found`.
    pub code: String,
}

// ----- models -----

/// `GET /v1/models`: the models served (OpenAI's list shape, with inhouse's `meta`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ServedModels {
    /// Always `list`.
    pub object: String,
    /// One entry per name.
    pub data: Vec<ServedModel>,
}

/// One entry of [`ServedModels`] (also `GET /v1/models/{id}`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ServedModel {
    /// The name clients use.
    pub id: String,
    /// Always `model`.
    pub object: String,
    /// Unix time the model was loaded.
    pub created: u64,
    /// Always `inhouse`.
    pub owned_by: String,
    /// What the model is (for an alias: its target).
    pub meta: ModelInfo,
    /// For an alias: the model it points at now (see [`crate::models::alias`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub alias_for: Option<String>,
}

/// Where a name comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ModelSource {
    /// Imported into the model store.
    Store,
    /// Named in the daemon's configuration.
    Config,
}

impl ModelSource {
    /// The serialized name.
    pub fn as_str(self) -> &'static str {
        match self {
            ModelSource::Store => "store",
            ModelSource::Config => "config",
        }
    }
}

/// One name in `GET /admin/models`, and the answer of `GET /admin/models/{name}`.
///
/// A stored model has a `manifest`; a servable name (stored or configured) has `info` and
/// `estimate`; an adapter asked for by its own name has only its manifest.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ModelEntry {
    /// The name asked for (`NAME` or `BASE+ADAPTER`).
    pub name: String,
    /// Store or configuration.
    pub source: ModelSource,
    /// The store's manifest, for a stored name.
    pub manifest: Option<Manifest>,
    /// What the model is, for a servable name.
    pub info: Option<ModelInfo>,
    /// Its memory estimate, for a servable name.
    pub estimate: Option<Estimate>,
    /// How it sits in memory, when loaded.
    pub loaded: Option<LoadedModel>,
}

/// `GET /admin/models`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ModelList {
    /// Every name, stored or configured.
    pub models: Vec<ModelEntry>,
    /// The memory budget of the resident models, bytes.
    pub budget_bytes: u64,
    /// Whether unsigned imports are refused.
    pub require_signed_models: bool,
}

/// `POST /admin/models/{name}`: the stored manifest.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Imported {
    /// What was stored.
    pub imported: Manifest,
}

/// `DELETE /admin/models/{name}`: every name removed (a model takes its adapters with it).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ModelsRemoved {
    /// The names removed.
    pub removed: Vec<String>,
}

// ----- aliases and promotion -----

/// One alias in [`AliasList`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Alias {
    /// The name clients ask for.
    pub alias: String,
    /// What it serves now: a model name or `base+adapter`.
    pub target: String,
    /// Whether the target is served (false once it was removed: requests for the alias then
    /// fail with `model_not_found` until it is set again).
    pub served: bool,
}

/// `GET /admin/aliases`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AliasList {
    /// Every alias, by name.
    pub aliases: Vec<Alias>,
}

/// `PUT /admin/aliases/{alias}` body.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AliasSet {
    /// A model name or `base+adapter`.
    pub target: String,
}

/// `PUT` and `DELETE /admin/aliases/{alias}`: the change made.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AliasChanged {
    /// The alias.
    pub alias: String,
    /// Its target now (`None` once removed).
    pub target: Option<String>,
    /// Its target before (`None` when it is new).
    pub previous: Option<String>,
}

/// `POST /admin/models/{name}/promote` body.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PromoteRequest {
    /// The alias to point at the model.
    pub to: String,
    /// Promote a model its evaluation gate did not bless (audited as forced).
    #[serde(default)]
    pub force: bool,
}

/// `POST /admin/models/{name}/promote`: the alias moved.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Promoted {
    /// The model promoted.
    pub name: String,
    /// The alias.
    pub alias: String,
    /// What the alias serves now: the model, or `base+name` for an adapter.
    pub target: String,
    /// What it served before.
    pub previous: Option<String>,
    /// What the model's evaluation gate said.
    pub gate: crate::models::alias::GateStatus,
    /// Whether `force` overrode a gate that did not bless it.
    pub forced: bool,
}

// ----- ps -----

/// `GET /admin/ps`: the models in memory and the budget.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Ps {
    /// The resident models.
    pub loaded: Vec<LoadedModel>,
    /// The memory budget, bytes.
    pub budget_bytes: u64,
    /// The resident models' estimates together, bytes.
    pub used_bytes: u64,
    /// Models unloaded to make room, since start-up.
    pub evictions: u64,
    /// The GPUs llama.cpp sees.
    pub gpus: Vec<Gpu>,
}

/// One GPU in [`Ps`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Gpu {
    /// The device's name.
    pub name: String,
    /// Its free memory, bytes.
    pub free_bytes: u64,
}

// ----- jobs -----

/// A job as the API shows it: its row, with live progress, and how far along it is.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Job {
    /// The stored row (progress replaced by the live one while it runs).
    #[serde(flatten)]
    pub row: JobRow,
    /// 0 to 1 (1 once succeeded).
    pub fraction: f64,
}

/// `POST /admin/jobs`, `GET /admin/jobs/{id}`, `DELETE /admin/jobs/{id}`: one job.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct JobAnswer {
    /// The job.
    pub job: Job,
}

/// `GET /admin/jobs`: the newest jobs first.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct JobList {
    /// The jobs.
    pub jobs: Vec<Job>,
}

/// A job's progress as the toolchain last reported it (`progress` of a [`Job`]); every field is
/// optional because each phase reports only what it knows.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct JobProgress {
    /// What it is doing, e.g. `train`.
    pub phase: Option<String>,
    /// The epoch running.
    pub epoch: Option<u64>,
    /// Epochs in all.
    pub epochs: Option<u64>,
    /// The step running.
    pub step: Option<u64>,
    /// Steps in all.
    pub steps: Option<u64>,
    /// The last loss.
    pub loss: Option<f64>,
    /// The latest validation loss (finetune).
    #[serde(default)]
    pub eval_loss: Option<f64>,
    /// Throughput.
    pub tokens_per_s: Option<f64>,
    /// Seconds left, estimated.
    pub eta_s: Option<f64>,
}

/// The `result` of a succeeded finetune or quantize job: the model it registered.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RegisteredModel {
    /// The name it is stored under.
    pub model: String,
    /// SHA-256 of the file.
    pub digest: String,
    /// File size, bytes.
    pub size: u64,
    /// Its quantization, e.g. `Q8_0`.
    pub quantization: Option<String>,
}

/// `POST /admin/jobs/data`: the stored dataset.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DatasetUploaded {
    /// What was stored.
    pub dataset: DatasetMeta,
}

/// `DELETE /admin/jobs/data/{id}`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DatasetRemoved {
    /// The dataset id removed.
    pub removed: String,
}

// ----- history -----

/// `GET /v1/history`: one page of the caller's records, newest first, metadata only.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HistoryPage {
    /// Always `list`.
    pub object: String,
    /// The records.
    pub data: Vec<RecordMeta>,
    /// Whether older records follow.
    pub has_more: bool,
    /// The `before` of the next page, when there is one.
    pub next_before: Option<i64>,
}

/// `GET /v1/history/{id}`: one record, decrypted.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HistoryRecord {
    /// Its metadata.
    #[serde(flatten)]
    pub meta: RecordMeta,
    /// The prompt as sent (messages or text); stored text that is not JSON comes back as a
    /// string.
    pub prompt: Value,
    /// The answer (possibly partial).
    pub response: String,
}

/// `DELETE /v1/history/{id}`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HistoryDeleted {
    /// The record id.
    pub id: i64,
    /// Always `history.record`.
    pub object: String,
    /// Always true.
    pub deleted: bool,
}

// ----- administration and audit -----

/// `POST /admin/erase` body.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EraseRequest {
    /// The uid whose data is destroyed.
    pub uid: u32,
}

/// `POST /admin/erase` answer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Erased {
    /// The uid erased.
    pub uid: u32,
    /// What was destroyed.
    pub report: EraseReport,
    /// Why the audit event could not be written, if it could not (the erasure still happened).
    pub audit_error: Option<String>,
}

/// `POST /admin/rotate-key` body. It holds a master key: its `Debug` redacts the key, and the
/// key text is zeroized when the body is dropped, on both ends.
#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RotateKeyRequest {
    /// The new master key, base64 of its 32 bytes (the client reads it from a 0600 file).
    #[serde(
        serialize_with = "serialize_zeroizing",
        deserialize_with = "zeroizing_string"
    )]
    pub key: zeroize::Zeroizing<String>,
}

impl std::fmt::Debug for RotateKeyRequest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RotateKeyRequest")
            .field("key", &"<redacted>")
            .finish()
    }
}

/// Deserializes a string straight into a [`zeroize::Zeroizing`] (the `zeroize` crate is built
/// without its `serde` feature).
fn zeroizing_string<'de, D: serde::Deserializer<'de>>(
    d: D,
) -> Result<zeroize::Zeroizing<String>, D::Error> {
    String::deserialize(d).map(zeroize::Zeroizing::new)
}

fn serialize_zeroizing<S: serde::Serializer>(
    key: &zeroize::Zeroizing<String>,
    s: S,
) -> Result<S::Ok, S::Error> {
    s.serialize_str(key.as_str())
}

/// `POST /admin/rotate-key` answer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct KeyRotated {
    /// Where the rotation ended (finished).
    pub status: RotationStatus,
    /// Why the audit event could not be written, if it could not.
    pub audit_error: Option<String>,
}

/// `GET /admin/rotate-key`: an unfinished rotation, if any.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RotationState {
    /// The rotation under way.
    pub rotation: Option<RotationStatus>,
}

/// `GET /audit/verify`. (`GET /audit/export` answers JSON lines, one audit row each.)
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AuditVerified {
    /// True when every row verified.
    pub ok: bool,
    /// What was checked, and the first bad row.
    pub report: VerifyReport,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rotate_key_request_debug_redacts_the_key_and_round_trips() {
        let body: RotateKeyRequest = serde_json::from_str(r#"{"key":"c2VjcmV0LWtleQ=="}"#).unwrap();
        assert_eq!(body.key.as_str(), "c2VjcmV0LWtleQ==");
        let shown = format!("{body:?}");
        assert!(!shown.contains("c2VjcmV0"), "{shown}");
        assert_eq!(
            serde_json::to_string(&body).unwrap(),
            r#"{"key":"c2VjcmV0LWtleQ=="}"#
        );
    }

    #[test]
    fn audit_reports_read_back_with_their_flattened_problem() {
        use crate::storage::{AuditFault, AuditProblem};
        for (json, problem) in [
            (r#"{"seq":2,"problem":"bad_mac"}"#, AuditProblem::BadMac),
            (
                r#"{"seq":2,"problem":"missing","expected_seq":1}"#,
                AuditProblem::Missing { expected_seq: 1 },
            ),
        ] {
            let body = format!(
                r#"{{"ok":false,"report":{{"rows_checked":2,"head_seq":3,"head_mac":"ab","first_fault":{json}}}}}"#
            );
            let v: AuditVerified = serde_json::from_str(&body).unwrap();
            assert_eq!(v.report.first_fault, Some(AuditFault { seq: 2, problem }));
            let again: Value = serde_json::to_value(&v).unwrap();
            assert_eq!(again, serde_json::from_str::<Value>(&body).unwrap());
        }
    }

    #[test]
    fn error_body_has_the_openai_shape() {
        let body = ErrorBody {
            error: ErrorDetail {
                message: "no".into(),
                kind: "invalid_request_error".into(),
                param: Some("limit".into()),
                code: "invalid_value".into(),
            },
        };
        assert_eq!(
            serde_json::to_value(&body).unwrap(),
            serde_json::json!({"error": {"message": "no", "type": "invalid_request_error",
                                         "param": "limit", "code": "invalid_value"}})
        );
    }
}
