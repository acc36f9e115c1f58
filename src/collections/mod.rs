//! Knowledge collections: OpenAI's files and vector stores, sealed and permission-aware.
//!
//! This module is the service the API handlers call (`src/api/files.rs`,
//! `src/api/vector_stores.rs`, `file_search` in `src/api/responses.rs` and the chat extension).
//! It owns:
//! - the **permission rule**: a collection belongs to a uid (its data key seals everything in
//!   it) and may be shared with groups, who may read and search it; only the owner changes it.
//!   A collection the caller may not read answers exactly like one that does not exist (404),
//!   and it is left out *before* anything is ranked: the index is only ever asked about the
//!   collections the caller may read, so a chunk it may not read is never scored;
//! - the **in-memory search index** ([`crate::knowledge::Index`]), built at start-up from the
//!   sealed rows (opened with the owners' data keys) and kept in step with every change. Chunk
//!   text and vectors are never written anywhere in clear;
//! - the **ingest queue** (`ingest.rs`): attach → extract and clean (the toolchain's
//!   `extract-text`, in a child process, anonymising when the collection asks) → chunk → embed
//!   → seal, one file at a time, with progress.

mod ingest;

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, RwLock};

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::api::error::ApiError;
use crate::config::ByteSize;
use crate::engine::Engine;
use crate::knowledge::{self, Index};
use crate::storage::knowledge::{AttachedFile, CollectionMeta, FileMeta, LoadedFile};
use crate::storage::{StoreError, StoreHandle};

pub use ingest::approx_tokens;

/// Default largest file accepted by `POST /v1/files`.
pub const DEFAULT_MAX_FILE_BYTES: u64 = 32 << 20;

/// `[knowledge]` in the config.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case", default)]
pub struct KnowledgeConfig {
    /// The served embedding model that embeds chunks and queries (e.g. a GGUF converted by
    /// `inhouse-quantize import-hf` from all-MiniLM-L6-v2). Absent: collections are searched
    /// by BM25 alone.
    pub embedding_model: Option<String>,
    /// Largest file `POST /v1/files` accepts, bytes or with a unit.
    pub max_file_bytes: ByteSize,
    /// Seconds `extract-text` may take for one file before it is killed and the file failed.
    pub extract_timeout_secs: u64,
    /// Most chunks one file may have (a file over it fails, saying so).
    pub max_chunks_per_file: usize,
}

impl Default for KnowledgeConfig {
    fn default() -> Self {
        KnowledgeConfig {
            embedding_model: None,
            max_file_bytes: ByteSize::Bytes(DEFAULT_MAX_FILE_BYTES),
            extract_timeout_secs: 60,
            max_chunks_per_file: 20_000,
        }
    }
}

impl KnowledgeConfig {
    /// What is wrong with the table, if anything.
    pub fn check(&self) -> Result<(), String> {
        if self.max_file_bytes == ByteSize::Auto {
            return Err("knowledge.max-file-bytes must be a size, not \"auto\"".into());
        }
        if self.extract_timeout_secs == 0 || self.max_chunks_per_file == 0 {
            return Err(
                "knowledge.extract-timeout-secs and knowledge.max-chunks-per-file must be at \
                 least 1"
                    .into(),
            );
        }
        Ok(())
    }

    /// Largest file, bytes.
    pub fn file_limit(&self) -> u64 {
        self.max_file_bytes.resolve(|| DEFAULT_MAX_FILE_BYTES)
    }
}

/// Who is asking: the peer's uid and every group it is in (primary and supplementary).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Access {
    /// The caller's uid.
    pub uid: u32,
    /// The caller's primary and supplementary gids.
    pub gids: Vec<u32>,
}

impl Access {
    /// May this caller read (search, list the files of) `c`?
    pub fn may_read(&self, c: &CollectionMeta) -> bool {
        self.may_read_as(c.uid, &c.gids)
    }

    /// May this caller read a collection of owner `uid` shared with `gids`?
    pub fn may_read_as(&self, uid: u32, gids: &[u32]) -> bool {
        uid == self.uid || gids.iter().any(|g| self.gids.contains(g))
    }
}

/// How the hits are ranked.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Ranker {
    /// BM25 and vector similarity fused by reciprocal rank (the default).
    #[default]
    Hybrid,
    /// BM25 over the chunk text alone.
    Bm25,
    /// Vector similarity alone.
    Vector,
}

impl Ranker {
    /// OpenAI's `ranking_options.ranker` (`auto`, `default-2024-11-15`: hybrid) and ours
    /// (`hybrid`, `bm25`, `vector`).
    pub fn parse(s: &str) -> Option<Ranker> {
        Some(match s {
            "auto" | "default-2024-11-15" | "default_2024_08_21" | "hybrid" => Ranker::Hybrid,
            "bm25" => Ranker::Bm25,
            "vector" => Ranker::Vector,
            _ => return None,
        })
    }
}

/// One retrieved chunk, as `file_search` and the search endpoint return it (and as a stored
/// response's sealed record keeps it).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Retrieved {
    /// The collection (`vs_…`) it came from.
    pub vector_store_id: String,
    /// The file (`file-…`) it is part of.
    pub file_id: String,
    /// The file's name.
    pub filename: String,
    /// The chunk's ordinal in the file (0-based).
    pub chunk_index: u32,
    /// Byte offsets of the chunk in the file's cleaned text.
    pub start: usize,
    /// End offset (exclusive).
    pub end: usize,
    /// The chunk's text.
    pub text: String,
    /// Relevance in 0..=1 (higher is better).
    pub score: f32,
    /// The file's attributes in this collection.
    #[serde(default)]
    pub attributes: Map<String, Value>,
}

/// What the index does not hold about a searchable file.
#[derive(Debug, Clone)]
struct FileInfo {
    filename: String,
    attributes: Map<String, Value>,
}

/// An ingest's progress, for `GET …/files/{id}` while it runs.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct Progress {
    /// Chunks embedded so far.
    pub chunks_embedded: u64,
    /// Chunks the file has (0 until it is chunked).
    pub chunks_total: u64,
}

/// The service. Shared as `Arc<Collections>`.
pub struct Collections {
    store: StoreHandle,
    engine: Arc<dyn Engine>,
    cfg: KnowledgeConfig,
    toolchain: PathBuf,
    index: RwLock<Index>,
    files: RwLock<HashMap<(String, String), FileInfo>>,
    /// chunk seq → ordinal in its file.
    ordinals: RwLock<HashMap<u64, u32>>,
    progress: Mutex<HashMap<i64, Progress>>,
    queue: ingest::Queue,
}

/// A storage failure as the API says it.
fn store_err(e: StoreError) -> ApiError {
    ApiError::from(e)
}

/// 404 for a collection that does not exist or that the caller may not read.
pub fn store_not_found(id: &str) -> ApiError {
    ApiError {
        status: axum::http::StatusCode::NOT_FOUND,
        kind: "invalid_request_error",
        code: "vector_store_not_found",
        message: format!("no vector store {id:?}"),
        param: None,
        retry_after: None,
    }
}

/// 404 for a file that does not exist or is another uid's.
pub fn file_not_found(id: &str) -> ApiError {
    ApiError {
        status: axum::http::StatusCode::NOT_FOUND,
        kind: "invalid_request_error",
        code: "file_not_found",
        message: format!("no file {id:?}"),
        param: None,
        retry_after: None,
    }
}

/// 403 for a reader of a shared collection that tries to change it.
fn owner_only(id: &str) -> ApiError {
    ApiError {
        status: axum::http::StatusCode::FORBIDDEN,
        kind: "permission_error",
        code: "not_owner",
        message: format!(
            "vector store {id:?} is shared with you to read; only its owner changes it"
        ),
        param: None,
        retry_after: None,
    }
}

impl Collections {
    /// The service over `store` and `engine`; nothing is loaded until [`Collections::start`].
    pub fn new(
        store: StoreHandle,
        engine: Arc<dyn Engine>,
        cfg: KnowledgeConfig,
        toolchain: PathBuf,
    ) -> Arc<Collections> {
        Arc::new(Collections {
            store,
            engine,
            cfg,
            toolchain,
            index: RwLock::new(Index::default()),
            files: RwLock::new(HashMap::new()),
            ordinals: RwLock::new(HashMap::new()),
            progress: Mutex::new(HashMap::new()),
            queue: ingest::Queue::default(),
        })
    }

    /// The configuration.
    pub fn config(&self) -> &KnowledgeConfig {
        &self.cfg
    }

    /// Builds the index from the sealed rows and starts the ingest worker, which first takes
    /// the attachments left `in_progress` by the last run. Returns how many chunks were
    /// loaded.
    pub async fn start(self: &Arc<Self>) -> Result<usize, StoreError> {
        let seqs = self.store.call(|s| s.searchable_seqs()).await?;
        let mut n = 0;
        for seq in seqs {
            // One file at a time: the opened copies of one file's chunks at most, besides the
            // index, so the start-up peak stays near the index's own size.
            for f in self
                .store
                .call(move |s| s.searchable_files(Some(seq)))
                .await?
            {
                n += f.chunks.len();
                self.add_to_index(f);
            }
        }
        if let Ok(mut index) = self.index.write() {
            index.shrink_to_fit();
        }
        let pending = self.store.call(|s| s.ingests_pending()).await?;
        ingest::spawn_worker(self.clone(), pending);
        Ok(n)
    }

    /// Approximate heap bytes of the index (chunk text, vectors, postings).
    pub fn index_bytes(&self) -> usize {
        self.index.read().map(|i| i.memory_bytes()).unwrap_or(0)
    }

    fn add_to_index(&self, f: LoadedFile) {
        let chunks: Vec<knowledge::NewChunk> = f
            .chunks
            .iter()
            .map(|(seq, c)| knowledge::NewChunk {
                id: *seq as u64,
                range: c.start..c.end,
                text: c.text.clone(),
                vector: c.vector.clone(),
            })
            .collect();
        if let Ok(mut o) = self.ordinals.write() {
            for (seq, c) in &f.chunks {
                o.insert(*seq as u64, c.ordinal);
            }
        }
        let attrs = knowledge::filter::attributes_from_json(&f.attributes);
        if let Ok(mut index) = self.index.write() {
            if let Err(e) = index.insert_chunks(&f.store_id, &f.file_id, attrs, chunks) {
                tracing::error!(vector_store = %f.store_id, file = %f.file_id,
                    "file left out of the search index: {e}");
                return;
            }
        }
        if let Ok(mut files) = self.files.write() {
            files.insert(
                (f.store_id, f.file_id),
                FileInfo {
                    filename: f.filename,
                    attributes: f.attributes,
                },
            );
        }
    }

    fn forget_file(&self, store_id: &str, file_id: &str) {
        if let Ok(mut index) = self.index.write() {
            index.remove_file(store_id, file_id);
        }
        if let Ok(mut files) = self.files.write() {
            files.remove(&(store_id.to_string(), file_id.to_string()));
        }
    }

    fn forget_store(&self, store_id: &str) {
        if let Ok(mut index) = self.index.write() {
            index.remove_store(store_id);
        }
        if let Ok(mut files) = self.files.write() {
            files.retain(|(s, _), _| s != store_id);
        }
    }

    /// Drops every collection the index holds that is no longer in the store (after an
    /// erasure or a retention purge).
    pub async fn resync(&self) -> Result<(), ApiError> {
        let live: std::collections::HashSet<(String, String)> = self
            .store
            .call(|s| {
                Ok(s.searchable_files_ids()?
                    .into_iter()
                    .collect::<std::collections::HashSet<_>>())
            })
            .await
            .map_err(store_err)?;
        let gone: Vec<(String, String)> = self
            .files
            .read()
            .map(|f| f.keys().filter(|k| !live.contains(*k)).cloned().collect())
            .unwrap_or_default();
        for (s, f) in gone {
            self.forget_file(&s, &f);
        }
        Ok(())
    }

    /// Deletes the files uploaded before `cutoff_unix` (retention), from the index too.
    pub async fn purge_older_than(&self, cutoff_unix: i64) -> Result<usize, StoreError> {
        let gone = self
            .store
            .call(move |s| s.purge_files_older_than(cutoff_unix))
            .await?;
        for (s, f) in &gone {
            self.forget_file(s, f);
        }
        Ok(gone.len())
    }

    // ---- files ----

    /// Stores an upload.
    pub async fn upload(
        &self,
        who: &Access,
        purpose: String,
        filename: String,
        content: Vec<u8>,
    ) -> Result<FileMeta, ApiError> {
        let uid = who.uid;
        let now = crate::storage::now_unix();
        self.store
            .call(move |s| s.file_create(uid, &purpose, &filename, &content, now))
            .await
            .map_err(store_err)
    }

    /// The caller's files.
    pub async fn files(&self, who: &Access) -> Result<Vec<FileMeta>, ApiError> {
        let uid = who.uid;
        self.store
            .call(move |s| s.file_list(uid))
            .await
            .map_err(store_err)
    }

    /// One of the caller's files.
    pub async fn file(&self, who: &Access, id: &str) -> Result<FileMeta, ApiError> {
        let (uid, owned) = (who.uid, id.to_string());
        self.store
            .call(move |s| s.file_get(uid, &owned))
            .await
            .map_err(store_err)?
            .ok_or_else(|| file_not_found(id))
    }

    /// One of the caller's files with its bytes.
    pub async fn file_content(
        &self,
        who: &Access,
        id: &str,
    ) -> Result<(FileMeta, Vec<u8>), ApiError> {
        let (uid, owned) = (who.uid, id.to_string());
        self.store
            .call(move |s| s.file_content(uid, &owned))
            .await
            .map_err(store_err)?
            .ok_or_else(|| file_not_found(id))
    }

    /// Deletes one of the caller's files, from every collection too.
    pub async fn delete_file(&self, who: &Access, id: &str) -> Result<(), ApiError> {
        let (uid, owned) = (who.uid, id.to_string());
        let stores = self
            .store
            .call(move |s| s.file_delete(uid, &owned))
            .await
            .map_err(store_err)?
            .ok_or_else(|| file_not_found(id))?;
        for s in stores {
            self.forget_file(&s, id);
        }
        Ok(())
    }

    // ---- collections ----

    /// A collection the caller may read.
    pub async fn collection(&self, who: &Access, id: &str) -> Result<CollectionMeta, ApiError> {
        let owned = id.to_string();
        match self
            .store
            .call(move |s| s.vs_get(&owned))
            .await
            .map_err(store_err)?
        {
            Some(c) if who.may_read(&c) => Ok(c),
            _ => Err(store_not_found(id)),
        }
    }

    /// A collection the caller owns (403 for a reader, 404 for anyone else).
    async fn owned(&self, who: &Access, id: &str) -> Result<CollectionMeta, ApiError> {
        let c = self.collection(who, id).await?;
        if c.uid != who.uid {
            return Err(owner_only(id));
        }
        Ok(c)
    }

    /// Creates a collection.
    #[allow(clippy::too_many_arguments)]
    pub async fn create(
        &self,
        who: &Access,
        name: String,
        metadata: Map<String, Value>,
        anonymize: bool,
        chunking: knowledge::chunk::ChunkingStrategy,
        gids: Vec<u32>,
    ) -> Result<CollectionMeta, ApiError> {
        let uid = who.uid;
        let now = crate::storage::now_unix();
        let ch = (
            chunking.max_chunk_size_tokens() as u32,
            chunking.chunk_overlap_tokens() as u32,
        );
        self.store
            .call(move |s| s.vs_create(uid, &name, &metadata, anonymize, ch, &gids, now))
            .await
            .map_err(store_err)
    }

    /// The collections the caller may read.
    pub async fn collections(&self, who: &Access) -> Result<Vec<CollectionMeta>, ApiError> {
        let (uid, gids) = (who.uid, who.gids.clone());
        self.store
            .call(move |s| s.vs_list_readable(uid, &gids))
            .await
            .map_err(store_err)
    }

    /// Changes the caller's collection.
    pub async fn update(
        &self,
        who: &Access,
        id: &str,
        name: Option<String>,
        metadata: Option<Map<String, Value>>,
        gids: Option<Vec<u32>>,
    ) -> Result<CollectionMeta, ApiError> {
        self.owned(who, id).await?;
        let (uid, owned) = (who.uid, id.to_string());
        let now = crate::storage::now_unix();
        self.store
            .call(move |s| {
                s.vs_update(
                    uid,
                    &owned,
                    name.as_deref(),
                    metadata.as_ref(),
                    gids.as_deref(),
                    now,
                )
            })
            .await
            .map_err(store_err)?
            .ok_or_else(|| store_not_found(id))
    }

    /// Deletes the caller's collection (its files stay).
    pub async fn delete(&self, who: &Access, id: &str) -> Result<(), ApiError> {
        self.owned(who, id).await?;
        let (uid, owned) = (who.uid, id.to_string());
        if !self
            .store
            .call(move |s| s.vs_delete(uid, &owned))
            .await
            .map_err(store_err)?
        {
            return Err(store_not_found(id));
        }
        self.forget_store(id);
        Ok(())
    }

    /// Attaches one of the caller's files to its collection and queues the ingest.
    pub async fn attach(
        &self,
        who: &Access,
        store_id: &str,
        file_id: &str,
        attributes: Map<String, Value>,
        chunking: Option<knowledge::chunk::ChunkingStrategy>,
    ) -> Result<AttachedFile, ApiError> {
        let c = self.owned(who, store_id).await?;
        // The file's owner is checked by `vs_attach` itself (NotFound, mapped below).
        let ch = match chunking {
            Some(s) => (
                s.max_chunk_size_tokens() as u32,
                s.chunk_overlap_tokens() as u32,
            ),
            None => (c.chunk_max, c.chunk_overlap),
        };
        let (uid, s_id, f_id) = (who.uid, store_id.to_string(), file_id.to_string());
        let now = crate::storage::now_unix();
        let (att, new) = self
            .store
            .call(move |s| s.vs_attach(uid, &s_id, &f_id, &attributes, ch, now))
            .await
            .map_err(|e| match e {
                StoreError::NotFound { .. } => file_not_found(file_id),
                e => store_err(e),
            })?;
        if new {
            self.queue.push(att.seq);
        }
        Ok(att)
    }

    /// The files of a collection the caller may read.
    pub async fn attached(
        &self,
        who: &Access,
        store_id: &str,
    ) -> Result<Vec<AttachedFile>, ApiError> {
        self.collection(who, store_id).await?;
        let owned = store_id.to_string();
        self.store
            .call(move |s| s.vs_files(&owned))
            .await
            .map_err(store_err)
    }

    /// One file of a collection the caller may read, with the ingest's progress while it runs.
    pub async fn attached_file(
        &self,
        who: &Access,
        store_id: &str,
        file_id: &str,
    ) -> Result<(AttachedFile, Option<Progress>), ApiError> {
        self.collection(who, store_id).await?;
        let (s_id, f_id) = (store_id.to_string(), file_id.to_string());
        let att = self
            .store
            .call(move |s| s.vs_file(&s_id, &f_id))
            .await
            .map_err(store_err)?
            .ok_or_else(|| file_not_found(file_id))?;
        let progress = self
            .progress
            .lock()
            .ok()
            .and_then(|p| p.get(&att.seq).copied());
        Ok((att, progress))
    }

    /// Removes a file from the caller's collection.
    pub async fn detach(
        &self,
        who: &Access,
        store_id: &str,
        file_id: &str,
    ) -> Result<(), ApiError> {
        self.owned(who, store_id).await?;
        let (uid, s_id, f_id) = (who.uid, store_id.to_string(), file_id.to_string());
        if !self
            .store
            .call(move |s| s.vs_detach(uid, &s_id, &f_id))
            .await
            .map_err(store_err)?
        {
            return Err(file_not_found(file_id));
        }
        self.forget_file(store_id, file_id);
        Ok(())
    }

    // ---- search ----

    /// The chunks of the collections `store_ids` that best answer `query`, at most
    /// `max_results`, after the attribute `filters` (OpenAI's filter object). A collection the
    /// caller may not read answers exactly like one that does not exist (404
    /// `vector_store_not_found`). The search is audited (metadata only) with `via` naming the
    /// route.
    #[allow(clippy::too_many_arguments)]
    pub async fn retrieve(
        &self,
        who: &Access,
        store_ids: &[String],
        query: &str,
        max_results: usize,
        filters: Option<&Value>,
        ranker: Ranker,
    ) -> Result<Vec<Retrieved>, ApiError> {
        self.search_via(
            who,
            store_ids,
            query,
            max_results,
            filters,
            ranker,
            "file_search",
        )
        .await
    }

    /// [`Collections::retrieve`], naming the route in the audit event.
    #[allow(clippy::too_many_arguments)]
    pub async fn search_via(
        &self,
        who: &Access,
        store_ids: &[String],
        query: &str,
        max_results: usize,
        filters: Option<&Value>,
        ranker: Ranker,
        via: &'static str,
    ) -> Result<Vec<Retrieved>, ApiError> {
        // Permission first: every collection named must be readable, or the whole search is
        // refused as if it did not exist. Only readable collections reach the index.
        for id in store_ids {
            let owned = id.clone();
            let readers = self
                .store
                .call(move |s| s.vs_readers(&owned))
                .await
                .map_err(store_err)?;
            match readers {
                Some((uid, gids)) if who.may_read_as(uid, &gids) => {}
                _ => return Err(store_not_found(id)),
            }
        }
        let filter = match filters {
            Some(v) => Some(
                knowledge::filter::Filter::parse(v)
                    .map_err(|e| ApiError::bad_param("filters", e.to_string()))?,
            ),
            None => None,
        };
        let query_vec = match (&self.cfg.embedding_model, ranker) {
            (Some(model), Ranker::Hybrid | Ranker::Vector) if !query.trim().is_empty() => {
                let e = self
                    .engine
                    .embed(model.clone(), vec![query.to_string()])
                    .await
                    .map_err(ApiError::from)?;
                e.vectors.into_iter().next()
            }
            _ => None,
        };
        let mode = match (ranker, &query_vec) {
            (Ranker::Bm25, _) | (_, None) => knowledge::Mode::Bm25,
            (Ranker::Vector, Some(_)) => knowledge::Mode::Vector,
            (Ranker::Hybrid, Some(_)) => knowledge::Mode::Hybrid,
        };
        let stores: Vec<&str> = store_ids.iter().map(String::as_str).collect();
        let hits = self
            .index
            .read()
            .map(|i| {
                i.search(
                    &stores,
                    query,
                    query_vec.as_deref(),
                    max_results,
                    filter.as_ref(),
                    mode,
                )
            })
            .unwrap_or_default();
        let out = self.describe(hits);
        let (uid, ids, n) = (who.uid, store_ids.to_vec(), out.len());
        let now = crate::storage::now_unix();
        self.store
            .call(move |s| s.audit_search(uid, &ids, n, via, now))
            .await
            .map_err(store_err)?;
        Ok(out)
    }

    /// The hits with what the index does not hold (file names, attributes, ordinals). No lock
    /// is held across an await.
    fn describe(&self, hits: Vec<knowledge::Hit>) -> Vec<Retrieved> {
        let files = self.files.read().ok();
        let ordinals = self.ordinals.read().ok();
        hits.into_iter()
            .map(|h| {
                let info = files
                    .as_ref()
                    .and_then(|f| f.get(&(h.store.clone(), h.file_id.clone())).cloned());
                Retrieved {
                    chunk_index: ordinals
                        .as_ref()
                        .and_then(|o| o.get(&h.chunk_id).copied())
                        .unwrap_or(0),
                    filename: info
                        .as_ref()
                        .map(|i| i.filename.clone())
                        .unwrap_or_default(),
                    attributes: info.map(|i| i.attributes).unwrap_or_default(),
                    vector_store_id: h.store,
                    file_id: h.file_id,
                    start: h.range.start,
                    end: h.range.end,
                    text: h.text,
                    score: h.score,
                }
            })
            .collect()
    }
}

/// Deletes files older than `retention-days`, now and then every `retention-check-secs`: the
/// retention of request records applies to documents too (their chunks and vectors go with
/// them).
pub async fn retention_loop(c: Arc<Collections>, days: u32, every: std::time::Duration) {
    let mut tick = tokio::time::interval(every);
    loop {
        tick.tick().await;
        let cutoff = crate::storage::now_unix() - i64::from(days) * 86_400;
        match c.purge_older_than(cutoff).await {
            Ok(0) => {}
            Ok(n) => tracing::info!(attachments = n, days, "retention purge of files"),
            Err(StoreError::Closed) => return,
            Err(e) => tracing::error!(error = %e, kind = e.kind(), "file retention purge failed"),
        }
    }
}
