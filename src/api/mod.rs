//! The HTTP API on the Unix socket: who is calling, which routes exist, and serving them.
//!
//! HTTP/1.1 only, on a Unix socket only; the caller's uid and gid come from the kernel
//! (`SO_PEERCRED`) for every connection, never from anything the client says.

pub mod aliases;
pub mod auth;
pub mod backup;
pub mod body;
pub mod card;
pub mod error;
pub mod files;
pub mod generation;
pub mod history;
pub mod jobs;
pub mod limits;
pub mod metrics;
pub mod models;
pub mod ollama;
pub mod openai;
pub mod responses;
pub mod server;
pub mod upload;
pub mod vector_stores;

use crate::engine::Engine;
use axum::routing::{get, post};
use axum::Router;
use inhouse_formats::validate::Limits;
use std::future::Future;
use std::sync::Arc;
use tokio::net::UnixListener;

/// The connecting process, as the kernel reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Caller {
    /// Effective uid of the peer.
    pub uid: u32,
    /// Effective gid of the peer.
    pub gid: u32,
    /// Peer process id, when known.
    pub pid: Option<i32>,
}

impl Caller {
    /// Used when the kernel could not tell: `nobody`, which no role maps to.
    pub const UNKNOWN: Caller = Caller {
        uid: 65534,
        gid: 65534,
        pid: None,
    };
}

/// Everything a handler needs, shared by all connections.
#[derive(Clone)]
pub struct AppState {
    /// What runs the models: the model pool in the daemon, a scripted fake in the API's tests.
    /// The model-management routes reach the pool and store through it.
    pub engine: Arc<dyn Engine>,
    /// Validation limits.
    pub limits: Limits,
    /// Who holds which role.
    pub roles: Arc<auth::Roles>,
    /// The encrypted store: records, history, audit log.
    pub store: crate::storage::StoreHandle,
    /// Per-uid rate and concurrency limits.
    pub uid_limits: Arc<limits::UidLimits>,
    /// Largest request body accepted.
    pub max_body_bytes: usize,
    /// Time allowed to receive a request body.
    pub body_timeout: std::time::Duration,
    /// The toolchain job runner, for `/admin/jobs`.
    pub jobs: Option<Arc<crate::jobs::JobRunner>>,
    /// Files, vector stores and retrieval (`/v1/files`, `/v1/vector_stores`, `file_search`).
    pub collections: Arc<crate::collections::Collections>,
}

impl AppState {
    /// The state the API serves `config` with, over `engine`, `store` and (in the daemon) the
    /// job runner: one mapping from the configuration, shared by the daemon and the in-process
    /// tests.
    pub fn new(
        config: &crate::config::Config,
        engine: Arc<dyn Engine>,
        store: crate::storage::StoreHandle,
        jobs: Option<Arc<crate::jobs::JobRunner>>,
    ) -> AppState {
        let l = &config.limits;
        let collections = crate::collections::Collections::new(
            store.clone(),
            engine.clone(),
            config.knowledge.clone(),
            crate::jobs::toolchain_path(&config.jobs),
        );
        AppState {
            engine: engine.clone(),
            limits: config.limits(),
            roles: auth::Roles::new(&config.roles),
            store,
            uid_limits: limits::UidLimits::new(l.per_uid_per_minute, l.per_uid_concurrency),
            max_body_bytes: l.max_body_bytes,
            body_timeout: l.body_timeout(),
            jobs,
            collections,
        }
    }

    /// Who `caller` is for the collections' permission rule: its uid and all its groups.
    pub fn access(&self, caller: &Caller) -> crate::collections::Access {
        crate::collections::Access {
            uid: caller.uid,
            gids: self.roles.groups_of(caller),
        }
    }
}

/// All routes, each with the role it needs: this table is the one place where access is
/// declared. `/health` is open to anyone who can reach the socket (it reveals no data).
pub fn router(state: AppState) -> Router {
    use auth::Role::{Admin, Auditor, User};
    let denials = Arc::new(auth::DenialLimiter::default());
    let needs = |role| {
        axum::middleware::from_fn_with_state(
            auth::Requirement {
                roles: state.roles.clone(),
                role,
                store: state.store.clone(),
                denials: denials.clone(),
            },
            auth::require,
        )
    };
    let limited = axum::middleware::from_fn_with_state(state.uid_limits.clone(), limits::per_uid);
    let max_body = state.max_body_bytes;
    let body_timeout = state.body_timeout;
    let file_limit = state.collections.config().file_limit();
    // Model imports and datasets stream a whole file: no body size or JSON rule, and a
    // per-chunk idle timeout inside the handler instead of one for the whole body.
    let uploads = Router::new()
        .route(
            "/admin/models/{name}",
            post(models::import)
                .get(models::show)
                .delete(models::remove)
                .route_layer(needs(Admin))
                .layer(axum::extract::DefaultBodyLimit::disable()),
        )
        .route(
            "/admin/jobs/data",
            post(jobs::upload_data)
                .route_layer(needs(Admin))
                .layer(axum::extract::DefaultBodyLimit::disable()),
        )
        // A multipart form: the file's limit plus room for the form's own parts.
        .route(
            "/v1/files",
            post(files::upload)
                .get(files::list)
                .route_layer(limited.clone())
                .route_layer(needs(User))
                .layer(axum::extract::DefaultBodyLimit::max(
                    usize::try_from(file_limit)
                        .unwrap_or(usize::MAX)
                        .saturating_add(1 << 20),
                )),
        );
    Router::new()
        .route("/admin/models", get(models::list).route_layer(needs(Admin)))
        .route("/admin/ps", get(models::ps).route_layer(needs(Admin)))
        .route(
            "/admin/backup",
            get(backup::backup).route_layer(needs(Admin)),
        )
        .route(
            "/admin/models/{name}/promote",
            post(aliases::promote).route_layer(needs(Admin)),
        )
        .route(
            "/admin/models/{name}/card",
            get(card::card).route_layer(needs(Admin)),
        )
        .route(
            "/admin/aliases",
            get(aliases::list).route_layer(needs(Admin)),
        )
        .route(
            "/admin/aliases/{alias}",
            axum::routing::put(aliases::set)
                .delete(aliases::remove)
                .route_layer(needs(Admin)),
        )
        .route(
            "/admin/jobs",
            post(jobs::submit).get(jobs::list).route_layer(needs(Admin)),
        )
        .route(
            "/admin/jobs/{id}",
            get(jobs::show)
                .delete(jobs::cancel)
                .route_layer(needs(Admin)),
        )
        .route(
            "/admin/jobs/data/{id}",
            axum::routing::delete(jobs::remove_data).route_layer(needs(Admin)),
        )
        .route("/health", get(openai::health))
        .route(
            "/metrics",
            get(metrics::metrics).route_layer(needs(Auditor)),
        )
        .route(
            "/v1/models",
            get(openai::list_models).route_layer(needs(User)),
        )
        .route(
            "/v1/models/{id}",
            get(openai::get_model).route_layer(needs(User)),
        )
        .route(
            "/v1/chat/completions",
            post(openai::chat_completions)
                .route_layer(limited.clone())
                .route_layer(needs(User)),
        )
        .route(
            "/v1/completions",
            post(openai::completions)
                .route_layer(limited.clone())
                .route_layer(needs(User)),
        )
        .route(
            "/v1/embeddings",
            post(openai::embeddings)
                .route_layer(limited.clone())
                .route_layer(needs(User)),
        )
        .route(
            "/v1/responses",
            post(responses::create)
                .route_layer(limited.clone())
                .route_layer(needs(User)),
        )
        .route(
            "/v1/responses/{id}",
            get(responses::get)
                .delete(responses::delete)
                .route_layer(needs(User)),
        )
        .route(
            "/v1/responses/{id}/input_items",
            get(responses::input_items).route_layer(needs(User)),
        )
        .route(
            "/v1/files/{id}",
            get(files::get)
                .delete(files::delete)
                .route_layer(needs(User)),
        )
        .route(
            "/v1/files/{id}/content",
            get(files::content).route_layer(needs(User)),
        )
        .route(
            "/v1/vector_stores",
            post(vector_stores::create)
                .get(vector_stores::list)
                .route_layer(needs(User)),
        )
        .route(
            "/v1/vector_stores/{id}",
            get(vector_stores::get)
                .post(vector_stores::modify)
                .delete(vector_stores::delete)
                .route_layer(needs(User)),
        )
        .route(
            "/v1/vector_stores/{id}/files",
            post(vector_stores::attach)
                .get(vector_stores::files)
                .route_layer(needs(User)),
        )
        .route(
            "/v1/vector_stores/{id}/files/{file_id}",
            get(vector_stores::file)
                .delete(vector_stores::detach)
                .route_layer(needs(User)),
        )
        .route(
            "/v1/vector_stores/{id}/search",
            post(vector_stores::search)
                .route_layer(limited.clone())
                .route_layer(needs(User)),
        )
        .route("/v1/history", get(history::list).route_layer(needs(User)))
        .route(
            "/v1/history/{id}",
            get(history::get)
                .delete(history::delete)
                .route_layer(needs(User)),
        )
        .route(
            "/admin/erase",
            post(history::erase).route_layer(needs(Admin)),
        )
        .route(
            "/admin/rotate-key",
            post(history::rotate_key)
                .get(history::rotation_status)
                .route_layer(needs(Admin)),
        )
        .route(
            "/audit/verify",
            get(history::audit_verify).route_layer(needs(Auditor)),
        )
        .route(
            "/audit/export",
            get(history::audit_export).route_layer(needs(Auditor)),
        )
        // Ollama's API, same roles and limits as /v1.
        .route("/api/version", get(ollama::version))
        .route("/api/tags", get(ollama::tags).route_layer(needs(User)))
        .route("/api/ps", get(ollama::ps).route_layer(needs(User)))
        .route("/api/show", post(ollama::show).route_layer(needs(User)))
        .route(
            "/api/chat",
            post(ollama::chat)
                .route_layer(limited.clone())
                .route_layer(needs(User)),
        )
        .route(
            "/api/generate",
            post(ollama::generate)
                .route_layer(limited.clone())
                .route_layer(needs(User)),
        )
        .route(
            "/api/embed",
            post(ollama::embed)
                .route_layer(limited.clone())
                .route_layer(needs(User)),
        )
        .fallback(|| async { error::ApiError::no_route() })
        .method_not_allowed_fallback(|| async { error::ApiError::wrong_method() })
        .layer(axum::middleware::from_fn(limits::json_only))
        .layer(axum::extract::DefaultBodyLimit::max(max_body))
        .layer(tower_http::timeout::RequestBodyTimeoutLayer::new(
            body_timeout,
        ))
        .merge(uploads)
        .with_state(state)
}

/// Serves the API on `listener` until `shutdown` resolves (see [`server::serve`]).
pub async fn serve(
    listener: UnixListener,
    state: AppState,
    limits: server::ServerLimits,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    server::serve(listener, router(state), limits, shutdown).await
}
