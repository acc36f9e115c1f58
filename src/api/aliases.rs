//! Aliases and promotion: `/admin/aliases` (list, set, remove) and
//! `POST /admin/models/{name}/promote`; admin only, like every model-management route. The
//! table lives in the model store ([`crate::models::alias`]); this module checks what only the
//! pool knows (is the target served, is the name a configured model's), audits every change
//! with its old and new targets, and resolves an alias once per request ([`resolve`]).
//!
//! Audit events (detail JSON):
//! - `model_alias_set`: `alias`, `old`, `new` (`old` null for a new alias);
//! - `model_alias_remove`: `alias`, `old`, `new` (null);
//! - `model_promote`: `alias`, `old`, `new`, `model`, `gate` (`blessed`, `refused`,
//!   `candidate`, `no_gate`), `forced`;
//! - `model_promote_refused`: `alias`, `model`, `gate`, `forced` (false), `error` — nothing
//!   changed.

use super::error::ApiError;
use super::{AppState, Caller};
use crate::models::alias::{promotion_target, GateStatus};
use crate::models::{self, ModelStore, ModelStoreError};
use crate::wire;
use axum::extract::{ConnectInfo, Path, State};
use axum::Json;
use serde_json::{json, Value};
use std::sync::Arc;

/// The target of `name` when it is an alias; `None` for anything else (a model name, an unknown
/// name, a daemon without a model store). Called once per request, before the engine sees the
/// name: moving an alias takes effect on the next request.
pub(crate) fn resolve(s: &AppState, name: &str) -> Option<String> {
    s.engine.pool()?.store()?.resolve_alias(name)
}

/// Every alias whose target is served now, with that target: what `/v1/models` and
/// `/api/tags` list besides the models.
pub(crate) fn served(s: &AppState) -> Vec<(String, String)> {
    let Some(pool) = s.engine.pool() else {
        return vec![];
    };
    let Some(store) = pool.store() else {
        return vec![];
    };
    store
        .aliases()
        .into_iter()
        .filter(|(_, target)| pool.serves(target))
        .collect()
}

fn store(s: &AppState) -> Result<Arc<ModelStore>, ApiError> {
    s.engine
        .pool()
        .and_then(|p| p.store().cloned())
        .ok_or_else(|| ApiError::from(ModelStoreError::Io("this daemon has no model store".into())))
}

async fn audit(s: &AppState, caller: Caller, kind: &str, detail: Value) {
    if let Err(e) = s
        .store
        .audit_append(kind, Some(caller.uid), detail.to_string())
        .await
    {
        tracing::error!(error = %e, kind, "alias change not audited");
    }
}

/// Runs a store change on a blocking thread (it writes and fsyncs the table).
async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, ModelStoreError> + Send + 'static,
) -> Result<T, ApiError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| ApiError::from(ModelStoreError::Io(format!("alias task: {e}"))))?
        .map_err(ApiError::from)
}

/// Checks what the store cannot: the alias is not a configured model's name, and the target is
/// served (configured, stored, or a stored adapter of its base).
fn check_with_pool(s: &AppState, alias: &str, target: &str) -> Result<(), ApiError> {
    models::check_name(alias)?;
    models::alias::check_target(target)?;
    let pool = s.engine.pool().ok_or_else(|| {
        ApiError::from(ModelStoreError::Io("this daemon has no model pool".into()))
    })?;
    if pool.serves(alias) {
        return Err(ModelStoreError::AliasClash(format!(
            "{alias:?} is the name of a model this daemon serves: an alias needs a name of its own"
        ))
        .into());
    }
    // A chain is refused by the store under its lock; said here first, since an alias is
    // also not a served model.
    let (base, adapter) = models::split_adapter(target);
    if let Some(store) = pool.store() {
        for part in [Some(base), adapter].into_iter().flatten() {
            if let Some(t) = store.resolve_alias(part) {
                return Err(ModelStoreError::AliasTarget(format!(
                    "{part:?} is itself an alias (for {t:?}): point {alias:?} at a model, not at another alias"
                ))
                .into());
            }
        }
    }
    if !pool.serves(target) {
        return Err(ModelStoreError::NotFound(target.to_string()).into());
    }
    Ok(())
}

/// `GET /admin/aliases`: every alias, its target, and whether that target is served.
pub async fn list(State(s): State<AppState>) -> Result<Json<wire::AliasList>, ApiError> {
    let st = store(&s)?;
    let pool = s.engine.pool();
    let aliases = st
        .aliases()
        .into_iter()
        .map(|(alias, target)| wire::Alias {
            served: pool.is_some_and(|p| p.serves(&target)),
            alias,
            target,
        })
        .collect();
    Ok(Json(wire::AliasList { aliases }))
}

/// `PUT /admin/aliases/{alias}` with `{"target": T}`: creates or moves the alias (also how a
/// promotion is rolled back: set the alias to its old target).
pub async fn set(
    State(s): State<AppState>,
    ConnectInfo(caller): ConnectInfo<Caller>,
    Path(alias): Path<String>,
    super::body::JsonBody(body): super::body::JsonBody<wire::AliasSet>,
) -> Result<Json<wire::AliasChanged>, ApiError> {
    let st = store(&s)?;
    check_with_pool(&s, &alias, &body.target)?;
    let (a, t) = (alias.clone(), body.target.clone());
    let previous = blocking(move || st.set_alias(&a, &t)).await?;
    audit(
        &s,
        caller,
        "model_alias_set",
        json!({"alias": alias, "old": previous, "new": body.target}),
    )
    .await;
    tracing::info!(%alias, target = %body.target, previous = ?previous, "alias set");
    Ok(Json(wire::AliasChanged {
        alias,
        target: Some(body.target),
        previous,
    }))
}

/// `DELETE /admin/aliases/{alias}`.
pub async fn remove(
    State(s): State<AppState>,
    ConnectInfo(caller): ConnectInfo<Caller>,
    Path(alias): Path<String>,
) -> Result<Json<wire::AliasChanged>, ApiError> {
    let st = store(&s)?;
    let a = alias.clone();
    let previous = blocking(move || st.remove_alias(&a)).await?;
    audit(
        &s,
        caller,
        "model_alias_remove",
        json!({"alias": alias, "old": previous, "new": null}),
    )
    .await;
    tracing::info!(%alias, previous = %previous, "alias removed");
    Ok(Json(wire::AliasChanged {
        alias,
        target: None,
        previous: Some(previous),
    }))
}

/// `POST /admin/models/{name}/promote` with `{"to": ALIAS, "force": bool}`: points the alias at
/// a stored model (`base+name` for an adapter) if its evaluation gate blessed it; `force`
/// promotes one it did not (the route is admin only; the event says `forced`). A refusal is
/// `409 model_not_blessed` and is audited too.
pub async fn promote(
    State(s): State<AppState>,
    ConnectInfo(caller): ConnectInfo<Caller>,
    Path(name): Path<String>,
    super::body::JsonBody(body): super::body::JsonBody<wire::PromoteRequest>,
) -> Result<Json<wire::Promoted>, ApiError> {
    let st = store(&s)?;
    models::check_name(&name)?;
    let manifest = st.get(&name)?;
    let gate = GateStatus::of(&manifest);
    let target = promotion_target(&manifest);
    if !gate.blessed() && !body.force {
        let e = ModelStoreError::NotBlessed {
            name: name.clone(),
            status: gate,
        };
        audit(
            &s,
            caller,
            "model_promote_refused",
            json!({"alias": body.to, "model": name, "gate": gate, "forced": false,
                   "error": e.to_string()}),
        )
        .await;
        return Err(e.into());
    }
    check_with_pool(&s, &body.to, &target)?;
    let forced = !gate.blessed();
    let (a, t) = (body.to.clone(), target.clone());
    let previous = blocking(move || st.set_alias(&a, &t)).await?;
    audit(
        &s,
        caller,
        "model_promote",
        json!({"alias": body.to, "old": previous, "new": target, "model": name,
               "gate": gate, "forced": forced}),
    )
    .await;
    tracing::info!(model = %name, alias = %body.to, %gate, forced, "model promoted");
    Ok(Json(wire::Promoted {
        name,
        alias: body.to,
        target,
        previous,
        gate,
        forced,
    }))
}
