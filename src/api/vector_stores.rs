//! `/v1/vector_stores`: OpenAI's Vector Stores API over sealed, permission-aware collections.
//!
//! Extensions to OpenAI's shapes (accepted in the body, returned on the object; the SDK passes
//! them with `extra_body` and shows them as extra fields):
//! - `groups`: the groups (names or gids) that may read and search the collection. Only the
//!   owner (the uid that created it) changes it; a reader trying to is answered 403 `not_owner`;
//!   anyone else sees 404, exactly like a collection that does not exist.
//! - `anonymize`: run ingest through `prepare`'s anonymiser (creation only).
//! - `owner_uid` (returned): who owns it.
//! - on a collection's file: `progress` (`chunks_embedded`, `chunks_total`) while it ingests.
//! - on search: `ranking_options.ranker` also takes `bm25`, `vector` and `hybrid`; each result
//!   also carries `vector_store_id`, `chunk_index`, `start` and `end`.

use axum::extract::{ConnectInfo, Path, Query, State};
use axum::Json;
use nix::unistd::{Gid, Group};
use serde::Deserialize;
use serde_json::{json, Map, Value};

use super::body::JsonBody;
use super::error::ApiError;
use super::files::{page, ListQuery};
use super::{AppState, Caller};
use crate::collections::{Progress, Ranker};
use crate::knowledge::chunk::ChunkingStrategy;
use crate::storage::knowledge::{AttachedFile, CollectionMeta};

/// Most groups one collection is shared with.
const MAX_GROUPS: usize = 32;
/// Longest collection name.
const MAX_NAME: usize = 256;
/// Most metadata pairs (OpenAI's limit), and their sizes.
const MAX_METADATA: usize = 16;
/// Most results one search returns (OpenAI's limit).
pub const MAX_RESULTS: usize = 50;
/// Longest search query, bytes.
const MAX_QUERY: usize = 8 << 10;

fn chunking_json(max: u32, overlap: u32) -> Value {
    json!({"type": "static", "static": {"max_chunk_size_tokens": max, "chunk_overlap_tokens": overlap}})
}

fn group_names(gids: &[u32]) -> Vec<String> {
    gids.iter()
        .map(|g| match Group::from_gid(Gid::from_raw(*g)) {
            Ok(Some(gr)) => gr.name,
            _ => g.to_string(),
        })
        .collect()
}

/// A collection in OpenAI's shape, plus ours.
pub fn store_json(c: &CollectionMeta) -> Value {
    let status = if c.counts.in_progress > 0 {
        "in_progress"
    } else {
        "completed"
    };
    json!({
        "id": c.id,
        "object": "vector_store",
        "created_at": c.created_at,
        "name": c.name,
        "usage_bytes": c.usage_bytes,
        "file_counts": c.counts,
        "status": status,
        "expires_after": null,
        "expires_at": null,
        "last_active_at": c.last_active_at,
        "metadata": c.metadata,
        "owner_uid": c.uid,
        "groups": group_names(&c.gids),
        "anonymize": c.anonymize,
        "chunking_strategy": chunking_json(c.chunk_max, c.chunk_overlap),
    })
}

/// A collection's file in OpenAI's shape.
pub fn attached_json(a: &AttachedFile, progress: Option<Progress>) -> Value {
    let last_error = a.last_error.as_ref().map(|m| {
        let code = if m.contains("unsupported file type") {
            "unsupported_file"
        } else if m.contains("UTF-8") || m.contains("line ") {
            "invalid_file"
        } else {
            "server_error"
        };
        json!({"code": code, "message": m})
    });
    let mut v = json!({
        "id": a.file_id,
        "object": "vector_store.file",
        "usage_bytes": a.usage_bytes,
        "created_at": a.created_at,
        "vector_store_id": a.store_id,
        "status": a.status,
        "last_error": last_error,
        "chunking_strategy": chunking_json(a.chunk_max, a.chunk_overlap),
        "attributes": a.attributes,
        "chunks": a.chunks,
    });
    if let Some(p) = progress {
        v["progress"] = json!(p);
    }
    v
}

/// `chunking_strategy`: `{"type":"auto"}` or `{"type":"static","static":{…}}`.
fn parse_chunking(v: Option<&Value>) -> Result<Option<ChunkingStrategy>, ApiError> {
    let Some(v) = v else { return Ok(None) };
    let bad = |m: String| ApiError::bad_param("chunking_strategy", m);
    match v.get("type").and_then(Value::as_str) {
        Some("auto") => Ok(Some(ChunkingStrategy::default())),
        Some("static") => {
            let s = v
                .get("static")
                .ok_or_else(|| bad("a static chunking_strategy needs its static object".into()))?;
            serde_json::from_value(s.clone())
                .map(Some)
                .map_err(|e| bad(e.to_string()))
        }
        _ => Err(bad("chunking_strategy.type must be auto or static".into())),
    }
}

/// `groups`: names or gids → gids. An unknown name is refused (it would share with nobody, or
/// with whoever creates that group later).
fn parse_groups(v: &[Value]) -> Result<Vec<u32>, ApiError> {
    if v.len() > MAX_GROUPS {
        return Err(ApiError::bad_param(
            "groups",
            format!("at most {MAX_GROUPS} groups"),
        ));
    }
    let mut out = Vec::new();
    for g in v {
        let gid = match g {
            Value::Number(n) => n.as_u64().and_then(|n| u32::try_from(n).ok()),
            Value::String(s) => match s.parse::<u32>() {
                Ok(n) => Some(n),
                Err(_) => match Group::from_name(s) {
                    Ok(Some(gr)) => Some(gr.gid.as_raw()),
                    _ => {
                        return Err(ApiError::bad_param(
                            "groups",
                            format!("there is no group named {s:?} on this machine"),
                        ))
                    }
                },
            },
            _ => None,
        }
        .ok_or_else(|| ApiError::bad_param("groups", "a group is a name or a gid"))?;
        if !out.contains(&gid) {
            out.push(gid);
        }
    }
    Ok(out)
}

fn check_metadata(m: &Map<String, Value>) -> Result<(), ApiError> {
    let ok = m.len() <= MAX_METADATA
        && m.iter()
            .all(|(k, v)| k.len() <= 64 && v.as_str().is_some_and(|s| s.len() <= 512));
    if ok {
        Ok(())
    } else {
        Err(ApiError::bad_param(
            "metadata",
            "metadata holds at most 16 string values, keys ≤ 64 and values ≤ 512 characters",
        ))
    }
}

fn check_name(name: &str) -> Result<(), ApiError> {
    if name.len() > MAX_NAME || name.chars().any(char::is_control) {
        return Err(ApiError::bad_param(
            "name",
            format!("the name must be at most {MAX_NAME} bytes without control characters"),
        ));
    }
    Ok(())
}

/// `POST /v1/vector_stores` body.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreateStore {
    name: Option<String>,
    #[serde(default)]
    file_ids: Vec<String>,
    #[serde(default)]
    metadata: Map<String, Value>,
    chunking_strategy: Option<Value>,
    /// Accepted; collections do not expire (retention applies to their files).
    #[allow(dead_code)]
    expires_after: Option<Value>,
    #[serde(default)]
    groups: Vec<Value>,
    #[serde(default)]
    anonymize: bool,
}

/// `POST /v1/vector_stores`.
pub async fn create(
    State(s): State<AppState>,
    ConnectInfo(caller): ConnectInfo<Caller>,
    JsonBody(req): JsonBody<CreateStore>,
) -> Result<Json<Value>, ApiError> {
    let name = req.name.unwrap_or_default();
    check_name(&name)?;
    check_metadata(&req.metadata)?;
    let chunking = parse_chunking(req.chunking_strategy.as_ref())?.unwrap_or_default();
    let gids = parse_groups(&req.groups)?;
    let who = s.access(&caller);
    let c = s
        .collections
        .create(&who, name, req.metadata, req.anonymize, chunking, gids)
        .await?;
    for f in &req.file_ids {
        s.collections
            .attach(&who, &c.id, f, Map::new(), None)
            .await?;
    }
    tracing::info!(uid = caller.uid, vector_store = %c.id, "vector store created");
    let c = s.collections.collection(&who, &c.id).await?;
    Ok(Json(store_json(&c)))
}

/// `GET /v1/vector_stores`: the ones the caller may read.
pub async fn list(
    State(s): State<AppState>,
    ConnectInfo(caller): ConnectInfo<Caller>,
    Query(q): Query<ListQuery>,
) -> Result<Json<Value>, ApiError> {
    let all = s.collections.collections(&s.access(&caller)).await?;
    let items = all.iter().map(|c| (c.id.clone(), store_json(c))).collect();
    Ok(Json(page(items, &q)?))
}

/// `GET /v1/vector_stores/{id}`.
pub async fn get(
    State(s): State<AppState>,
    ConnectInfo(caller): ConnectInfo<Caller>,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let c = s.collections.collection(&s.access(&caller), &id).await?;
    Ok(Json(store_json(&c)))
}

/// `POST /v1/vector_stores/{id}` body (modify).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModifyStore {
    name: Option<String>,
    metadata: Option<Map<String, Value>>,
    #[allow(dead_code)]
    expires_after: Option<Value>,
    groups: Option<Vec<Value>>,
}

/// `POST /v1/vector_stores/{id}`: name, metadata, groups.
pub async fn modify(
    State(s): State<AppState>,
    ConnectInfo(caller): ConnectInfo<Caller>,
    Path(id): Path<String>,
    JsonBody(req): JsonBody<ModifyStore>,
) -> Result<Json<Value>, ApiError> {
    if let Some(n) = &req.name {
        check_name(n)?;
    }
    if let Some(m) = &req.metadata {
        check_metadata(m)?;
    }
    let gids = req.groups.as_deref().map(parse_groups).transpose()?;
    let c = s
        .collections
        .update(&s.access(&caller), &id, req.name, req.metadata, gids)
        .await?;
    Ok(Json(store_json(&c)))
}

/// `DELETE /v1/vector_stores/{id}`.
pub async fn delete(
    State(s): State<AppState>,
    ConnectInfo(caller): ConnectInfo<Caller>,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    s.collections.delete(&s.access(&caller), &id).await?;
    tracing::info!(uid = caller.uid, vector_store = %id, "vector store deleted");
    Ok(Json(
        json!({"id": id, "object": "vector_store.deleted", "deleted": true}),
    ))
}

/// `POST /v1/vector_stores/{id}/files` body.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AttachFile {
    file_id: String,
    #[serde(default)]
    attributes: Map<String, Value>,
    chunking_strategy: Option<Value>,
}

/// `POST /v1/vector_stores/{id}/files`: attach, then chunk and embed in the background.
pub async fn attach(
    State(s): State<AppState>,
    ConnectInfo(caller): ConnectInfo<Caller>,
    Path(id): Path<String>,
    JsonBody(req): JsonBody<AttachFile>,
) -> Result<Json<Value>, ApiError> {
    crate::knowledge::filter::parse_attributes(&req.attributes)
        .map_err(|e| ApiError::bad_param("attributes", e.to_string()))?;
    let chunking = parse_chunking(req.chunking_strategy.as_ref())?;
    let a = s
        .collections
        .attach(
            &s.access(&caller),
            &id,
            &req.file_id,
            req.attributes,
            chunking,
        )
        .await?;
    Ok(Json(attached_json(&a, None)))
}

/// `GET /v1/vector_stores/{id}/files`.
pub async fn files(
    State(s): State<AppState>,
    ConnectInfo(caller): ConnectInfo<Caller>,
    Path(id): Path<String>,
    Query(q): Query<ListQuery>,
) -> Result<Json<Value>, ApiError> {
    let all = s.collections.attached(&s.access(&caller), &id).await?;
    let items = all
        .iter()
        .filter(|a| q.filter.as_deref().is_none_or(|f| f == a.status))
        .map(|a| (a.file_id.clone(), attached_json(a, None)))
        .collect();
    Ok(Json(page(items, &q)?))
}

/// `GET /v1/vector_stores/{id}/files/{file_id}`.
pub async fn file(
    State(s): State<AppState>,
    ConnectInfo(caller): ConnectInfo<Caller>,
    Path((id, file_id)): Path<(String, String)>,
) -> Result<Json<Value>, ApiError> {
    let (a, p) = s
        .collections
        .attached_file(&s.access(&caller), &id, &file_id)
        .await?;
    Ok(Json(attached_json(&a, p)))
}

/// `DELETE /v1/vector_stores/{id}/files/{file_id}`: the file leaves the collection (it stays
/// in `/v1/files`).
pub async fn detach(
    State(s): State<AppState>,
    ConnectInfo(caller): ConnectInfo<Caller>,
    Path((id, file_id)): Path<(String, String)>,
) -> Result<Json<Value>, ApiError> {
    s.collections
        .detach(&s.access(&caller), &id, &file_id)
        .await?;
    Ok(Json(
        json!({"id": file_id, "object": "vector_store.file.deleted", "deleted": true}),
    ))
}

/// `POST /v1/vector_stores/{id}/search` body.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Search {
    query: Value,
    max_num_results: Option<usize>,
    filters: Option<Value>,
    ranking_options: Option<RankingOptions>,
    /// Accepted; queries are used as given.
    #[allow(dead_code)]
    rewrite_query: Option<bool>,
}

/// `ranking_options`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RankingOptions {
    ranker: Option<String>,
    score_threshold: Option<f32>,
}

/// Parses `ranking_options.ranker`.
pub fn parse_ranker(r: Option<&str>) -> Result<Ranker, ApiError> {
    match r {
        None => Ok(Ranker::Hybrid),
        Some(r) => Ranker::parse(r).ok_or_else(|| {
            ApiError::bad_param(
                "ranking_options.ranker",
                "ranker must be auto, default-2024-11-15, hybrid, bm25 or vector",
            )
        }),
    }
}

/// `POST /v1/vector_stores/{id}/search`.
pub async fn search(
    State(s): State<AppState>,
    ConnectInfo(caller): ConnectInfo<Caller>,
    Path(id): Path<String>,
    JsonBody(req): JsonBody<Search>,
) -> Result<Json<Value>, ApiError> {
    let query = match &req.query {
        Value::String(q) => q.clone(),
        Value::Array(a) if a.iter().all(Value::is_string) && !a.is_empty() => a
            .iter()
            .filter_map(Value::as_str)
            .collect::<Vec<_>>()
            .join(" "),
        _ => {
            return Err(ApiError::bad_param(
                "query",
                "query is a string or a list of strings",
            ))
        }
    };
    if query.trim().is_empty() || query.len() > MAX_QUERY {
        return Err(ApiError::bad_param(
            "query",
            format!("the query must be 1..={MAX_QUERY} bytes"),
        ));
    }
    let k = req.max_num_results.unwrap_or(10);
    if !(1..=MAX_RESULTS).contains(&k) {
        return Err(ApiError::bad_param(
            "max_num_results",
            format!("max_num_results must be 1..={MAX_RESULTS}"),
        ));
    }
    let ranking = req.ranking_options.as_ref();
    let ranker = parse_ranker(ranking.and_then(|r| r.ranker.as_deref()))?;
    let threshold = ranking.and_then(|r| r.score_threshold).unwrap_or(0.0);
    let hits = s
        .collections
        .search_via(
            &s.access(&caller),
            std::slice::from_ref(&id),
            &query,
            k,
            req.filters.as_ref(),
            ranker,
            "search",
        )
        .await?;
    let data: Vec<Value> = hits
        .iter()
        .filter(|h| h.score >= threshold)
        .map(|h| {
            json!({
                "file_id": h.file_id,
                "filename": h.filename,
                "score": h.score,
                "attributes": h.attributes,
                "content": [{"type": "text", "text": h.text}],
                "vector_store_id": h.vector_store_id,
                "chunk_index": h.chunk_index,
                "start": h.start,
                "end": h.end,
            })
        })
        .collect();
    Ok(Json(json!({
        "object": "vector_store.search_results.page",
        "search_query": [query],
        "data": data,
        "has_more": false,
        "next_page": null,
    })))
}
