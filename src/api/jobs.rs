//! Toolchain jobs: `/admin/jobs` (submit, list, show, cancel) and `/admin/jobs/data` (dataset
//! uploads); admin only. The runner behind them is [`crate::jobs`].
//!
//! A dataset upload is the file itself as the body (`application/octet-stream`), streamed by the
//! client like a model import (see [`super::models`]): written to a file under the state
//! directory while hashed, on a blocking thread, with the body timeout applied per chunk.

use super::body::JsonBody;
use super::error::ApiError;
use super::{AppState, Caller};
use crate::jobs::data::check_format;
use crate::jobs::{JobError, JobRequest, JobRunner};
use crate::wire;
use axum::body::Body;
use axum::extract::{ConnectInfo, Path, Query, State};
use axum::http::StatusCode;
use axum::Json;
use serde::Deserialize;
use serde_json::{json, Value};
use std::sync::Arc;

fn runner(s: &AppState) -> Result<&Arc<JobRunner>, ApiError> {
    s.jobs
        .as_ref()
        .ok_or_else(|| ApiError::from(JobError::Io("this daemon runs no jobs".into())))
}

/// A job as [`JobRunner`] shows it, typed for the answer.
// The runner builds the view as JSON (row plus live progress and `fraction`); reading it back
// here checks that it is the shape [`wire::Job`] promises.
fn job(view: Value) -> Result<wire::Job, ApiError> {
    serde_json::from_value(view).map_err(|e| ApiError::from(JobError::Io(format!("job view: {e}"))))
}

fn job_id(id: &str) -> Result<i64, ApiError> {
    id.parse::<i64>()
        .ok()
        .filter(|n| *n > 0)
        .ok_or_else(|| ApiError::bad_param("id", "a job id is a positive integer"))
}

/// Query of a dataset upload.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DataQuery {
    /// `jsonl` (default), `txt` or `md`: how `prepare` reads it; finetune and eval need JSONL.
    format: Option<String>,
}

/// `POST /admin/jobs/data`: stores the body as a dataset and answers its id.
pub async fn upload_data(
    State(s): State<AppState>,
    ConnectInfo(caller): ConnectInfo<Caller>,
    query: Result<Query<DataQuery>, axum::extract::rejection::QueryRejection>,
    body: Body,
) -> Result<(StatusCode, Json<wire::DatasetUploaded>), ApiError> {
    let checked = query
        .map_err(|e| ApiError::invalid_query(e.body_text()))
        .and_then(|Query(q)| Ok(check_format(q.format.as_deref().unwrap_or("jsonl"))?))
        .and_then(|format| Ok((format, runner(&s)?.clone())));
    let (format, r) = match checked {
        Ok(x) => x,
        Err(e) => {
            // Read what the client is sending before answering, so it sees the error.
            super::upload::discard(body, s.body_timeout).await;
            return Err(e);
        }
    };
    let r2 = r.clone();
    let uid = caller.uid;
    let meta = super::upload::stream_into(
        body,
        s.body_timeout,
        move || r.datasets().begin(),
        move |up| r2.datasets().finish(up, format, uid),
        JobError::Io,
    )
    .await?;
    let _ = s
        .store
        .audit_append(
            "dataset_upload",
            Some(caller.uid),
            json!({"id": meta.id, "format": meta.format, "size": meta.size, "sha256": meta.sha256})
                .to_string(),
        )
        .await;
    Ok((
        StatusCode::CREATED,
        Json(wire::DatasetUploaded { dataset: meta }),
    ))
}

/// `POST /admin/jobs`: checks and queues a job; answers it (`queued`).
pub async fn submit(
    State(s): State<AppState>,
    ConnectInfo(caller): ConnectInfo<Caller>,
    JsonBody(req): JsonBody<JobRequest>,
) -> Result<(StatusCode, Json<wire::JobAnswer>), ApiError> {
    let r = runner(&s)?;
    let row = r.submit(req, caller.uid).await?;
    let job = job(r.view(row))?;
    Ok((StatusCode::ACCEPTED, Json(wire::JobAnswer { job })))
}

/// Query of the job list.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListQuery {
    /// Most jobs returned, newest first (default 100, at most 1000).
    limit: Option<u32>,
}

/// `GET /admin/jobs`: the newest jobs.
pub async fn list(
    State(s): State<AppState>,
    query: Result<Query<ListQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<wire::JobList>, ApiError> {
    let Query(q) = query.map_err(|e| ApiError::invalid_query(e.body_text()))?;
    let limit = q.limit.unwrap_or(100).clamp(1, 1000);
    let jobs = runner(&s)?.list(limit).await?;
    Ok(Json(wire::JobList {
        jobs: jobs.into_iter().map(job).collect::<Result<_, _>>()?,
    }))
}

/// `GET /admin/jobs/{id}`: one job with its progress.
pub async fn show(
    State(s): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<wire::JobAnswer>, ApiError> {
    let id = job_id(&id)?;
    let job = job(runner(&s)?.get(id).await?)?;
    Ok(Json(wire::JobAnswer { job }))
}

/// `DELETE /admin/jobs/{id}`: cancels a queued or running job (its process is stopped and its
/// working files removed) and answers it once it has ended.
pub async fn cancel(
    State(s): State<AppState>,
    ConnectInfo(caller): ConnectInfo<Caller>,
    Path(id): Path<String>,
) -> Result<Json<wire::JobAnswer>, ApiError> {
    let id = job_id(&id)?;
    let job = job(runner(&s)?.cancel(id, caller.uid).await?)?;
    Ok(Json(wire::JobAnswer { job }))
}

/// `DELETE /admin/jobs/data/{id}`: removes a dataset no job has claimed.
pub async fn remove_data(
    State(s): State<AppState>,
    ConnectInfo(caller): ConnectInfo<Caller>,
    Path(id): Path<String>,
) -> Result<Json<wire::DatasetRemoved>, ApiError> {
    let r = runner(&s)?.clone();
    let meta = tokio::task::spawn_blocking(move || r.datasets().remove(&id))
        .await
        .map_err(|e| ApiError::from(JobError::Io(format!("remove task: {e}"))))??;
    let _ = s
        .store
        .audit_append(
            "dataset_remove",
            Some(caller.uid),
            json!({"id": meta.id, "sha256": meta.sha256}).to_string(),
        )
        .await;
    Ok(Json(wire::DatasetRemoved { removed: meta.id }))
}
