//! Model management: `/admin/models` (list, show, import, remove) and `/admin/ps`; admin only.
//!
//! An import is the model file itself as the request body (`application/octet-stream`), streamed
//! by the client from its own disk: the sandboxed daemon never opens a path a user names. The
//! body goes straight to a file in the store's `tmp/` through SHA-256 on a blocking thread; the
//! store checks it and renames it into place (see [`crate::models`]). A client that stalls for
//! longer than the body timeout between chunks, or disconnects, aborts the import and leaves
//! nothing behind.

use super::error::ApiError;
use super::{AppState, Caller};
use crate::engine::pool::{LoadedModel, ModelPool};
use crate::engine::ModelInfo;
use crate::models::estimate::Estimate;
use crate::models::{self, ImportRequest, Kind, Manifest, ModelStoreError};
use crate::wire;
use axum::body::Body;
use axum::extract::{ConnectInfo, Path, Query, State};
use axum::http::HeaderMap;
use axum::Json;
use base64::Engine as _;
use serde::Deserialize;
use serde_json::{json, Value};
use std::sync::Arc;

/// Header carrying a signature file (base64 of its JSON) with an import.
pub const SIGNATURE_HEADER: &str = "x-inhouse-signature";

fn pool(s: &AppState) -> Result<&ModelPool, ApiError> {
    s.engine
        .pool()
        .ok_or_else(|| ApiError::from(ModelStoreError::Io("this daemon has no model store".into())))
}

fn store(s: &AppState) -> Result<Arc<models::ModelStore>, ApiError> {
    pool(s)?
        .store()
        .cloned()
        .ok_or_else(|| ApiError::from(ModelStoreError::Io("this daemon has no model store".into())))
}

/// What a stored or configured name looks like in listings, from the pool's lists of what is
/// available and what is loaded (read once per request).
fn entry(
    available: &[(ModelInfo, Estimate)],
    loaded: &[LoadedModel],
    name: &str,
    manifest: Option<&Manifest>,
) -> wire::ModelEntry {
    let found = available.iter().find(|(i, _)| i.name == name);
    wire::ModelEntry {
        name: name.to_string(),
        source: if manifest.is_some() {
            wire::ModelSource::Store
        } else {
            wire::ModelSource::Config
        },
        manifest: manifest.cloned(),
        info: found.map(|(i, _)| i.clone()),
        estimate: found.map(|(_, e)| *e),
        loaded: loaded.iter().find(|l| l.info.name == name).cloned(),
    }
}

/// `GET /admin/models`: every name, stored or configured, with what it is and whether it is
/// in memory.
pub async fn list(State(s): State<AppState>) -> Result<Json<wire::ModelList>, ApiError> {
    let p = pool(&s)?;
    let st = store(&s)?;
    let manifests = st.list();
    let (available, loaded) = (p.available(), p.loaded_models());
    let models = available
        .iter()
        .map(|(info, _)| {
            let (base, adapter) = models::split_adapter(&info.name);
            let m = manifests.iter().find(|m| m.name == adapter.unwrap_or(base));
            entry(&available, &loaded, &info.name, m)
        })
        .collect();
    Ok(Json(wire::ModelList {
        models,
        budget_bytes: p.budget(),
        require_signed_models: st.require_signed(),
    }))
}

/// `GET /admin/models/{name}`: one name in detail.
pub async fn show(
    State(s): State<AppState>,
    Path(name): Path<String>,
) -> Result<Json<wire::ModelEntry>, ApiError> {
    let p = pool(&s)?;
    let (base, adapter) = models::split_adapter(&name);
    models::check_name(base)?;
    if let Some(a) = adapter {
        models::check_name(a)?;
    }
    let st = store(&s)?;
    let manifest = match st.get(adapter.unwrap_or(base)) {
        Ok(m) => Some(m),
        Err(ModelStoreError::NotFound(_)) => None,
        Err(e) => return Err(e.into()),
    };
    let available = p.available();
    if !available.iter().any(|(i, _)| i.name == name) {
        // An adapter is listed under `base+adapter`; asking for it alone shows its manifest.
        return match manifest {
            Some(m) if m.kind == Kind::Adapter => Ok(Json(wire::ModelEntry {
                name,
                source: wire::ModelSource::Store,
                manifest: Some(m),
                info: None,
                estimate: None,
                loaded: None,
            })),
            _ => Err(ModelStoreError::NotFound(name).into()),
        };
    }
    Ok(Json(entry(
        &available,
        &p.loaded_models(),
        &name,
        manifest.as_ref(),
    )))
}

/// Query of an import.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ImportQuery {
    /// Store the file as a LoRA adapter of this model.
    adapter_for: Option<String>,
    /// The SHA-256 the file must have.
    sha256: Option<String>,
    /// The client's file name, for provenance.
    source: Option<String>,
}

/// `POST /admin/models/{name}`: imports the request body as a model (or adapter).
pub async fn import(
    State(s): State<AppState>,
    ConnectInfo(caller): ConnectInfo<Caller>,
    Path(name): Path<String>,
    query: Result<Query<ImportQuery>, axum::extract::rejection::QueryRejection>,
    headers: HeaderMap,
    body: Body,
) -> Result<Json<wire::Imported>, ApiError> {
    let (st, req) = match import_request(&s, caller, &name, query, &headers) {
        Ok(x) => x,
        Err(e) => {
            // Read what the client is sending before answering, so it sees the error.
            super::upload::discard(body, s.body_timeout).await;
            return Err(e);
        }
    };
    let writer_store = st.clone();
    let result = super::upload::stream_into(
        body,
        s.body_timeout,
        move || st.begin_import(),
        move |up| writer_store.finish_import(up, &req),
        ModelStoreError::Io,
    )
    .await;
    finish_import(&s, caller, &name, result).await
}

/// Checks an import's name, query and headers before any of its body is stored.
fn import_request(
    s: &AppState,
    caller: Caller,
    name: &str,
    query: Result<Query<ImportQuery>, axum::extract::rejection::QueryRejection>,
    headers: &HeaderMap,
) -> Result<(Arc<models::ModelStore>, ImportRequest), ApiError> {
    let Query(q) = query.map_err(|e| ApiError::invalid_query(e.body_text()))?;
    models::check_name(name)?;
    // An upstream's name is taken: the request for it would never reach the stored model.
    if s.engine.upstreams().iter().any(|u| u.name == name) {
        return Err(ModelStoreError::Exists(name.to_string()).into());
    }
    if let Some(b) = &q.adapter_for {
        models::check_name(b)?;
    }
    if let Some(h) = &q.sha256 {
        if h.len() != 64 || !h.bytes().all(|c| c.is_ascii_hexdigit()) {
            return Err(ApiError::bad_param(
                "sha256",
                "sha256 must be 64 hex digits",
            ));
        }
    }
    let signature = match headers.get(SIGNATURE_HEADER) {
        None => None,
        Some(v) => {
            let text = base64::engine::general_purpose::STANDARD
                .decode(v.as_bytes())
                .ok()
                .and_then(|b| String::from_utf8(b).ok())
                .ok_or_else(|| ApiError::invalid_signature_header(SIGNATURE_HEADER))?;
            Some(text)
        }
    };
    let st = store(s)?;
    let req = ImportRequest {
        name: name.to_string(),
        adapter_for: q.adapter_for,
        expected_sha256: q.sha256,
        signature,
        source: q.source,
        uid: caller.uid,
        extra: Value::Null,
    };
    Ok((st, req))
}

/// Audits an import's outcome and answers it.
async fn finish_import(
    s: &AppState,
    caller: Caller,
    name: &str,
    result: Result<Manifest, ModelStoreError>,
) -> Result<Json<wire::Imported>, ApiError> {
    let audit = |outcome: &str, detail: Value| {
        let store = s.store.clone();
        let kind = format!("model_import_{outcome}");
        async move {
            let _ = store
                .audit_append(kind, Some(caller.uid), detail.to_string())
                .await;
        }
    };
    match result {
        Ok(m) => {
            audit(
                "ok",
                json!({"name": m.name, "digest": m.digest, "size": m.size, "kind": m.kind,
                       "base": m.base, "signed_by": m.provenance.signed_by}),
            )
            .await;
            tracing::info!(model = %m.name, digest = %m.digest, "model imported");
            Ok(Json(wire::Imported { imported: m }))
        }
        Err(e) => {
            audit("refused", json!({"name": name, "error": e.to_string()})).await;
            Err(e.into())
        }
    }
}

/// `DELETE /admin/models/{name}`: removes a stored name (and a model's adapters), unloading
/// whatever used it.
pub async fn remove(
    State(s): State<AppState>,
    ConnectInfo(caller): ConnectInfo<Caller>,
    Path(name): Path<String>,
) -> Result<Json<wire::ModelsRemoved>, ApiError> {
    let st = store(&s)?;
    let n = name.clone();
    let removed = tokio::task::spawn_blocking(move || st.remove(&n))
        .await
        .map_err(|e| ApiError::from(ModelStoreError::Io(format!("remove task: {e}"))))??;
    for r in &removed {
        s.engine.unload(r).await;
    }
    let _ = s
        .store
        .audit_append(
            "model_remove",
            Some(caller.uid),
            json!({"names": removed}).to_string(),
        )
        .await;
    Ok(Json(wire::ModelsRemoved { removed }))
}

/// `GET /admin/ps`: the models in memory, where their layers live, and the budget.
pub async fn ps(State(s): State<AppState>) -> Result<Json<wire::Ps>, ApiError> {
    let p = pool(&s)?;
    let loaded = p.loaded_models();
    let used_bytes = loaded.iter().map(|l| l.memory.total).sum();
    Ok(Json(wire::Ps {
        loaded,
        budget_bytes: p.budget(),
        used_bytes,
        evictions: p.evictions(),
        gpus: crate::engine::pool::gpu_devices()
            .into_iter()
            .map(|(name, free_bytes)| wire::Gpu { name, free_bytes })
            .collect(),
    }))
}
