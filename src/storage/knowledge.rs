//! Files and vector stores (migration 7): sealed rows, owners, shares and the audit events.
//!
//! Every user-written value (a file's name and bytes, a collection's name and metadata, a file's
//! attributes, a chunk's text and vector) is sealed under the owner's data key with table,
//! column, row seq and owner uid in the AAD, exactly like request records. The permission rule
//! (who may read a collection) is applied by `crate::collections`; the methods here that take a
//! uid only ever act on that uid's own rows.

use rusqlite::{params, Connection, OptionalExtension};
use serde_json::{Map, Value};

use super::keys::{load_dek, load_or_create_dek, KeyRing};
use super::{audit, write_tx, Store, StoreError};
use crate::crypto::{self, DataKey, FieldContext};

/// Audit event kinds of this module (metadata only: ids, counts, groups; never text).
pub mod kinds {
    /// A file was uploaded (detail: `id`, `bytes`, `purpose`).
    pub const FILE_UPLOAD: &str = "file.upload";
    /// Its owner deleted a file (detail: `id`, `vector_stores` it was removed from).
    pub const FILE_DELETE: &str = "file.delete";
    /// A collection was created (detail: `id`, `groups`).
    pub const STORE_CREATE: &str = "vector_store.create";
    /// A collection's groups changed (detail: `id`, `groups`: the new list).
    pub const STORE_SHARE: &str = "vector_store.share";
    /// Its owner deleted a collection (detail: `id`).
    pub const STORE_DELETE: &str = "vector_store.delete";
    /// A file was attached to a collection (detail: `vector_store`, `file`).
    pub const FILE_ATTACH: &str = "vector_store.file_attach";
    /// A file's chunks were embedded and stored (detail: `vector_store`, `file`, `chunks`).
    pub const FILE_INGESTED: &str = "vector_store.file_ingested";
    /// A file was removed from a collection (detail: `vector_store`, `file`).
    pub const FILE_DETACH: &str = "vector_store.file_detach";
    /// A search ran (detail: `vector_stores`, `results`, `via`; never the query).
    pub const SEARCH: &str = "vector_store.search";
    /// Retention deleted files (detail: `cutoff`, `files`).
    pub const FILE_RETENTION: &str = "file.retention_purge";
}

/// A stored file, without its content.
#[derive(Clone, PartialEq, Eq)]
pub struct FileMeta {
    /// `file-…`.
    pub id: String,
    /// Owner.
    pub uid: u32,
    /// As given at upload (`assistants` or `user_data`).
    pub purpose: String,
    /// Size of the content.
    pub bytes: u64,
    /// Upload time.
    pub created_at: i64,
    /// The name given at upload (sealed at rest).
    pub filename: String,
}

impl std::fmt::Debug for FileMeta {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FileMeta")
            .field("id", &self.id)
            .field("uid", &self.uid)
            .field("bytes", &self.bytes)
            .finish_non_exhaustive()
    }
}

/// How many of a collection's files are in each state.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct FileCounts {
    /// Being chunked and embedded.
    pub in_progress: u64,
    /// Searchable.
    pub completed: u64,
    /// Failed (see the file's `last_error`).
    pub failed: u64,
    /// Cancelled.
    pub cancelled: u64,
    /// All of them.
    pub total: u64,
}

/// A collection (vector store).
#[derive(Debug, Clone, PartialEq)]
pub struct CollectionMeta {
    /// `vs_…`.
    pub id: String,
    /// Owner: its data key seals everything in the collection.
    pub uid: u32,
    /// The name (sealed at rest).
    pub name: String,
    /// The metadata object (sealed at rest).
    pub metadata: Map<String, Value>,
    /// Whether ingest anonymises text.
    pub anonymize: bool,
    /// Default chunk size in tokens.
    pub chunk_max: u32,
    /// Default chunk overlap in tokens.
    pub chunk_overlap: u32,
    /// Creation time.
    pub created_at: i64,
    /// Last change or search.
    pub last_active_at: i64,
    /// Groups that may read and search it.
    pub gids: Vec<u32>,
    /// Files per state.
    pub counts: FileCounts,
    /// Bytes of chunk text and vectors stored.
    pub usage_bytes: u64,
}

/// A file's membership in a collection.
#[derive(Debug, Clone, PartialEq)]
pub struct AttachedFile {
    /// Row seq (the ingest queue's handle).
    pub seq: i64,
    /// The collection.
    pub store_id: String,
    /// The file.
    pub file_id: String,
    /// Owner of the collection.
    pub uid: u32,
    /// `in_progress`, `completed`, `failed` or `cancelled`.
    pub status: String,
    /// Why it failed.
    pub last_error: Option<String>,
    /// Chunk size used.
    pub chunk_max: u32,
    /// Overlap used.
    pub chunk_overlap: u32,
    /// Chunks stored.
    pub chunks: u64,
    /// Bytes of chunk text and vectors.
    pub usage_bytes: u64,
    /// Attach time.
    pub created_at: i64,
    /// Attributes for filtering (sealed at rest).
    pub attributes: Map<String, Value>,
}

/// A chunk to store.
#[derive(Clone, PartialEq)]
pub struct NewChunk {
    /// Ordinal in the file.
    pub ordinal: u32,
    /// Byte offsets in the cleaned text.
    pub start: usize,
    /// End (exclusive).
    pub end: usize,
    /// The text.
    pub text: String,
    /// The embedding, when the collection has an embedding model.
    pub vector: Option<Vec<f32>>,
}

/// Everything ingest needs to process one attachment.
pub struct IngestSource {
    /// The attachment.
    pub file: AttachedFile,
    /// The file's name.
    pub filename: String,
    /// The file's bytes.
    pub content: Vec<u8>,
    /// Whether the collection anonymises.
    pub anonymize: bool,
}

/// One searchable file as loaded at start-up (or after its ingest).
#[derive(Clone)]
pub struct LoadedFile {
    /// The collection.
    pub store_id: String,
    /// The file.
    pub file_id: String,
    /// Its name.
    pub filename: String,
    /// Its attributes in the collection.
    pub attributes: Map<String, Value>,
    /// Its chunks: (seq, ordinal, start, end, text, vector).
    pub chunks: Vec<(i64, NewChunk)>,
}

const FILES: &str = "files";
const STORES: &str = "vector_stores";
const VSF: &str = "vector_store_files";
const CHUNKS: &str = "chunks";

fn ctx(table: &'static str, column: &'static str, row_id: i64, uid: u32) -> FieldContext<'static> {
    FieldContext {
        table,
        column,
        row_id,
        owner_uid: uid,
    }
}

fn open_bytes(dek: &DataKey, c: &FieldContext<'_>, sealed: &[u8]) -> Result<Vec<u8>, StoreError> {
    crypto::open(dek, c, sealed).map_err(|_| StoreError::Integrity { id: c.row_id })
}

fn open_string(dek: &DataKey, c: &FieldContext<'_>, sealed: &[u8]) -> Result<String, StoreError> {
    String::from_utf8(open_bytes(dek, c, sealed)?)
        .map_err(|_| StoreError::Integrity { id: c.row_id })
}

fn open_map(
    dek: &DataKey,
    c: &FieldContext<'_>,
    sealed: &[u8],
) -> Result<Map<String, Value>, StoreError> {
    serde_json::from_slice(&open_bytes(dek, c, sealed)?)
        .map_err(|_| StoreError::Integrity { id: c.row_id })
}

/// A vector as little-endian f32 bytes.
fn vector_bytes(v: &[f32]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_le_bytes()).collect()
}

fn vector_from(bytes: &[u8]) -> Option<Vec<f32>> {
    if !bytes.len().is_multiple_of(4) {
        return None;
    }
    Some(
        bytes
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            .collect(),
    )
}

/// A random public id: `prefix` and 24 hex digits (96 bits).
fn random_id(prefix: &str) -> Result<String, StoreError> {
    use ring::rand::SecureRandom;
    let mut b = [0u8; 12];
    ring::rand::SystemRandom::new()
        .fill(&mut b)
        .map_err(|_| StoreError::InvalidInput("no randomness for an id".into()))?;
    Ok(format!(
        "{prefix}{}",
        b.iter().map(|x| format!("{x:02x}")).collect::<String>()
    ))
}

fn need_dek(conn: &Connection, keys: &KeyRing, uid: u32) -> Result<DataKey, StoreError> {
    // A row whose owner has no key belongs to an erased uid: it is gone, whatever is left.
    load_dek(conn, keys, uid)?.ok_or(StoreError::DataKeyIntegrity { uid })
}

fn file_meta(
    s: &Store,
    row: (i64, String, u32, String, u64, i64, Vec<u8>),
) -> Result<Option<FileMeta>, StoreError> {
    let (seq, id, uid, purpose, bytes, created_at, name_ct) = row;
    let Some(dek) = load_dek(&s.conn, &s.keys, uid)? else {
        return Ok(None);
    };
    Ok(Some(FileMeta {
        filename: open_string(&dek, &ctx(FILES, "filename", seq, uid), &name_ct)?,
        id,
        uid,
        purpose,
        bytes,
        created_at,
    }))
}

type FileRow = (i64, String, u32, String, u64, i64, Vec<u8>);

/// A count or size column (SQLite integers are i64; these are never negative).
fn get_u64(r: &rusqlite::Row<'_>, i: usize) -> rusqlite::Result<u64> {
    Ok(r.get::<_, Option<i64>>(i)?.unwrap_or(0).max(0) as u64)
}

fn file_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<FileRow> {
    Ok((
        r.get(0)?,
        r.get(1)?,
        r.get(2)?,
        r.get(3)?,
        get_u64(r, 4)?,
        r.get(5)?,
        r.get(6)?,
    ))
}

const FILE_COLS: &str = "seq, id, uid, purpose, bytes, created_at, filename_ct";
const VSF_COLS: &str = "f.seq, s.id, fl.id, f.uid, f.status, f.last_error, f.chunk_max, \
     f.chunk_overlap, f.chunks, f.usage_bytes, f.created_at, f.attributes_ct";
const VSF_FROM: &str = "vector_store_files f JOIN vector_stores s ON s.seq = f.store_seq \
     JOIN files fl ON fl.seq = f.file_seq";

impl Store {
    /// Stores an uploaded file for `uid` and logs `file.upload`, in one transaction.
    pub fn file_create(
        &mut self,
        uid: u32,
        purpose: &str,
        filename: &str,
        content: &[u8],
        now: i64,
    ) -> Result<FileMeta, StoreError> {
        let id = random_id("file-")?;
        let audit_key = self.keys.active.audit_key();
        let tx = write_tx(&mut self.conn)?;
        let dek = load_or_create_dek(&tx, &self.keys, uid)?;
        tx.execute(
            "INSERT INTO files (id, uid, purpose, bytes, created_at, filename_ct, content_ct)
             VALUES (?1, ?2, ?3, ?4, ?5, x'', x'')",
            params![id, uid, purpose, content.len() as i64, now],
        )?;
        let seq = tx.last_insert_rowid();
        let name_ct = crypto::seal(&dek, &ctx(FILES, "filename", seq, uid), filename.as_bytes())?;
        let content_ct = crypto::seal(&dek, &ctx(FILES, "content", seq, uid), content)?;
        tx.execute(
            "UPDATE files SET filename_ct = ?1, content_ct = ?2 WHERE seq = ?3",
            params![name_ct, content_ct, seq],
        )?;
        let detail = serde_json::json!({"id": id, "bytes": content.len(), "purpose": purpose});
        audit::append_in(
            &tx,
            &audit_key,
            kinds::FILE_UPLOAD,
            Some(uid),
            &detail.to_string(),
        )?;
        tx.commit()?;
        Ok(FileMeta {
            id,
            uid,
            purpose: purpose.to_string(),
            bytes: content.len() as u64,
            created_at: now,
            filename: filename.to_string(),
        })
    }

    /// `uid`'s files, newest first.
    pub fn file_list(&self, uid: u32) -> Result<Vec<FileMeta>, StoreError> {
        let mut st = self.conn.prepare(&format!(
            "SELECT {FILE_COLS} FROM files WHERE uid = ?1 ORDER BY created_at DESC, seq DESC"
        ))?;
        let rows = st
            .query_map([uid], file_row)?
            .collect::<Result<Vec<_>, _>>()?;
        let mut out = Vec::with_capacity(rows.len());
        for row in rows {
            out.extend(file_meta(self, row)?);
        }
        Ok(out)
    }

    /// `uid`'s file `id`; `None` alike for an unknown id and another uid's.
    pub fn file_get(&self, uid: u32, id: &str) -> Result<Option<FileMeta>, StoreError> {
        let row = self
            .conn
            .query_row(
                &format!("SELECT {FILE_COLS} FROM files WHERE id = ?1 AND uid = ?2"),
                params![id, uid],
                file_row,
            )
            .optional()?;
        match row {
            Some(row) => file_meta(self, row),
            None => Ok(None),
        }
    }

    /// `uid`'s file `id` with its content.
    pub fn file_content(
        &self,
        uid: u32,
        id: &str,
    ) -> Result<Option<(FileMeta, Vec<u8>)>, StoreError> {
        let Some(meta) = self.file_get(uid, id)? else {
            return Ok(None);
        };
        let (seq, ct): (i64, Vec<u8>) = self.conn.query_row(
            "SELECT seq, content_ct FROM files WHERE id = ?1",
            [id],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )?;
        let dek = need_dek(&self.conn, &self.keys, uid)?;
        let content = open_bytes(&dek, &ctx(FILES, "content", seq, uid), &ct)?;
        Ok(Some((meta, content)))
    }

    /// Deletes `uid`'s file `id` (and its chunks in every collection) and logs `file.delete`;
    /// `None` when there is none, else the collections it was removed from.
    pub fn file_delete(&mut self, uid: u32, id: &str) -> Result<Option<Vec<String>>, StoreError> {
        let audit_key = self.keys.active.audit_key();
        let tx = write_tx(&mut self.conn)?;
        let seq: Option<i64> = tx
            .query_row(
                "SELECT seq FROM files WHERE id = ?1 AND uid = ?2",
                params![id, uid],
                |r| r.get(0),
            )
            .optional()?;
        let Some(seq) = seq else {
            return Ok(None);
        };
        let stores: Vec<String> = tx
            .prepare(
                "SELECT s.id FROM vector_store_files f JOIN vector_stores s
                 ON s.seq = f.store_seq WHERE f.file_seq = ?1",
            )?
            .query_map([seq], |r| r.get(0))?
            .collect::<Result<_, _>>()?;
        tx.execute("DELETE FROM files WHERE seq = ?1", [seq])?;
        let detail = serde_json::json!({"id": id, "vector_stores": stores});
        audit::append_in(
            &tx,
            &audit_key,
            kinds::FILE_DELETE,
            Some(uid),
            &detail.to_string(),
        )?;
        tx.commit()?;
        let _ = self.checkpoint_truncate();
        Ok(Some(stores))
    }

    /// Creates a collection for `uid` and logs `vector_store.create`.
    #[allow(clippy::too_many_arguments)]
    pub fn vs_create(
        &mut self,
        uid: u32,
        name: &str,
        metadata: &Map<String, Value>,
        anonymize: bool,
        chunking: (u32, u32),
        gids: &[u32],
        now: i64,
    ) -> Result<CollectionMeta, StoreError> {
        let id = random_id("vs_")?;
        let audit_key = self.keys.active.audit_key();
        let tx = write_tx(&mut self.conn)?;
        let dek = load_or_create_dek(&tx, &self.keys, uid)?;
        tx.execute(
            "INSERT INTO vector_stores (id, uid, created_at, last_active_at, anonymize,
                 chunk_max, chunk_overlap, name_ct, metadata_ct)
             VALUES (?1, ?2, ?3, ?3, ?4, ?5, ?6, x'', x'')",
            params![id, uid, now, anonymize, chunking.0, chunking.1],
        )?;
        let seq = tx.last_insert_rowid();
        seal_store_fields(&tx, &dek, seq, uid, Some(name), Some(metadata))?;
        set_groups(&tx, seq, gids)?;
        let detail = serde_json::json!({"id": id, "groups": gids, "anonymize": anonymize});
        audit::append_in(
            &tx,
            &audit_key,
            kinds::STORE_CREATE,
            Some(uid),
            &detail.to_string(),
        )?;
        tx.commit()?;
        Ok(self.vs_get(&id)?.expect("the collection was just created"))
    }

    /// Who may read collection `id`: its owner and its groups (`None` when there is no such
    /// collection, or its owner was erased). What a search checks, without opening the
    /// collection's sealed name and metadata or counting its files.
    pub fn vs_readers(&self, id: &str) -> Result<Option<(u32, Vec<u32>)>, StoreError> {
        let row: Option<(i64, u32)> = self
            .conn
            .query_row(
                "SELECT s.seq, s.uid FROM vector_stores s WHERE s.id = ?1
                 AND EXISTS (SELECT 1 FROM users_keys k WHERE k.uid = s.uid)",
                [id],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .optional()?;
        let Some((seq, uid)) = row else {
            return Ok(None);
        };
        Ok(Some((uid, store_gids(&self.conn, seq)?)))
    }

    /// The collection `id`, whoever owns it (the caller checks who may see it).
    pub fn vs_get(&self, id: &str) -> Result<Option<CollectionMeta>, StoreError> {
        let seq: Option<i64> = self
            .conn
            .query_row("SELECT seq FROM vector_stores WHERE id = ?1", [id], |r| {
                r.get(0)
            })
            .optional()?;
        match seq {
            Some(seq) => self.vs_by_seq(seq),
            None => Ok(None),
        }
    }

    fn vs_by_seq(&self, seq: i64) -> Result<Option<CollectionMeta>, StoreError> {
        type Row = (String, u32, i64, i64, bool, u32, u32, Vec<u8>, Vec<u8>);
        let row: Row = self.conn.query_row(
            "SELECT id, uid, created_at, last_active_at, anonymize, chunk_max, chunk_overlap,
                    name_ct, metadata_ct FROM vector_stores WHERE seq = ?1",
            [seq],
            |r| {
                Ok((
                    r.get(0)?,
                    r.get(1)?,
                    r.get(2)?,
                    r.get(3)?,
                    r.get(4)?,
                    r.get(5)?,
                    r.get(6)?,
                    r.get(7)?,
                    r.get(8)?,
                ))
            },
        )?;
        let (id, uid, created_at, last_active_at, anonymize, chunk_max, chunk_overlap, n, m) = row;
        let Some(dek) = load_dek(&self.conn, &self.keys, uid)? else {
            return Ok(None);
        };
        let gids = store_gids(&self.conn, seq)?;
        let mut counts = FileCounts::default();
        let mut usage_bytes = 0u64;
        {
            let mut st = self.conn.prepare(
                "SELECT status, COUNT(*), SUM(usage_bytes) FROM vector_store_files
                 WHERE store_seq = ?1 GROUP BY status",
            )?;
            let mut rows = st.query([seq])?;
            while let Some(r) = rows.next()? {
                let status: String = r.get(0)?;
                let n = get_u64(r, 1)?;
                usage_bytes += get_u64(r, 2)?;
                match status.as_str() {
                    "in_progress" => counts.in_progress = n,
                    "completed" => counts.completed = n,
                    "failed" => counts.failed = n,
                    _ => counts.cancelled = n,
                }
                counts.total += n;
            }
        }
        Ok(Some(CollectionMeta {
            name: open_string(&dek, &ctx(STORES, "name", seq, uid), &n)?,
            metadata: open_map(&dek, &ctx(STORES, "metadata", seq, uid), &m)?,
            id,
            uid,
            anonymize,
            chunk_max,
            chunk_overlap,
            created_at,
            last_active_at,
            gids,
            counts,
            usage_bytes,
        }))
    }

    /// The collections a caller with `uid` and `gids` may read: its own and those shared with
    /// one of its groups, newest first.
    pub fn vs_list_readable(
        &self,
        uid: u32,
        gids: &[u32],
    ) -> Result<Vec<CollectionMeta>, StoreError> {
        let seqs: Vec<i64> = self
            .conn
            .prepare(
                "SELECT seq FROM vector_stores s WHERE uid = ?1 OR EXISTS (
                     SELECT 1 FROM vector_store_groups g, json_each(?2) j
                     WHERE g.store_seq = s.seq AND g.gid = j.value)
                 ORDER BY created_at DESC, seq DESC",
            )?
            .query_map(
                params![uid, serde_json::to_string(gids).unwrap_or_default()],
                |r| r.get(0),
            )?
            .collect::<Result<_, _>>()?;
        let mut out = Vec::with_capacity(seqs.len());
        for seq in seqs {
            out.extend(self.vs_by_seq(seq)?);
        }
        Ok(out)
    }

    /// Changes `uid`'s collection `id`: its name, metadata and groups, each when given; a
    /// change of groups logs `vector_store.share`. `None` when `uid` has no such collection.
    pub fn vs_update(
        &mut self,
        uid: u32,
        id: &str,
        name: Option<&str>,
        metadata: Option<&Map<String, Value>>,
        gids: Option<&[u32]>,
        now: i64,
    ) -> Result<Option<CollectionMeta>, StoreError> {
        let audit_key = self.keys.active.audit_key();
        let tx = write_tx(&mut self.conn)?;
        let Some(seq) = own_store_seq(&tx, uid, id)? else {
            return Ok(None);
        };
        let dek = need_dek(&tx, &self.keys, uid)?;
        seal_store_fields(&tx, &dek, seq, uid, name, metadata)?;
        if let Some(gids) = gids {
            set_groups(&tx, seq, gids)?;
            let detail = serde_json::json!({"id": id, "groups": gids});
            audit::append_in(
                &tx,
                &audit_key,
                kinds::STORE_SHARE,
                Some(uid),
                &detail.to_string(),
            )?;
        }
        tx.execute(
            "UPDATE vector_stores SET last_active_at = ?1 WHERE seq = ?2",
            params![now, seq],
        )?;
        tx.commit()?;
        self.vs_by_seq(seq)
    }

    /// Deletes `uid`'s collection `id` with its chunks (not its files) and logs
    /// `vector_store.delete`; `false` when there is none.
    pub fn vs_delete(&mut self, uid: u32, id: &str) -> Result<bool, StoreError> {
        let audit_key = self.keys.active.audit_key();
        let tx = write_tx(&mut self.conn)?;
        let Some(seq) = own_store_seq(&tx, uid, id)? else {
            return Ok(false);
        };
        tx.execute("DELETE FROM vector_stores WHERE seq = ?1", [seq])?;
        let detail = serde_json::json!({"id": id});
        audit::append_in(
            &tx,
            &audit_key,
            kinds::STORE_DELETE,
            Some(uid),
            &detail.to_string(),
        )?;
        tx.commit()?;
        let _ = self.checkpoint_truncate();
        Ok(true)
    }

    /// Attaches `uid`'s file to `uid`'s collection, `in_progress`, and logs
    /// `vector_store.file_attach`. An attachment that exists is returned as it is.
    /// [`StoreError::NotFound`] (id 0) when either is not `uid`'s.
    pub fn vs_attach(
        &mut self,
        uid: u32,
        store_id: &str,
        file_id: &str,
        attributes: &Map<String, Value>,
        chunking: (u32, u32),
        now: i64,
    ) -> Result<(AttachedFile, bool), StoreError> {
        let audit_key = self.keys.active.audit_key();
        let tx = write_tx(&mut self.conn)?;
        let store = own_store_seq(&tx, uid, store_id)?;
        let file: Option<i64> = tx
            .query_row(
                "SELECT seq FROM files WHERE id = ?1 AND uid = ?2",
                params![file_id, uid],
                |r| r.get(0),
            )
            .optional()?;
        let (Some(store), Some(file)) = (store, file) else {
            return Err(StoreError::NotFound { id: 0 });
        };
        let existing: Option<i64> = tx
            .query_row(
                "SELECT seq FROM vector_store_files WHERE store_seq = ?1 AND file_seq = ?2",
                params![store, file],
                |r| r.get(0),
            )
            .optional()?;
        if let Some(seq) = existing {
            drop(tx);
            return Ok((self.vsf_by_seq(seq)?.expect("the row exists"), false));
        }
        let dek = need_dek(&tx, &self.keys, uid)?;
        tx.execute(
            "INSERT INTO vector_store_files (store_seq, file_seq, uid, status, chunk_max,
                 chunk_overlap, created_at, attributes_ct)
             VALUES (?1, ?2, ?3, 'in_progress', ?4, ?5, ?6, x'')",
            params![store, file, uid, chunking.0, chunking.1, now],
        )?;
        let seq = tx.last_insert_rowid();
        let attrs = serde_json::to_vec(attributes).unwrap_or_default();
        let ct = crypto::seal(&dek, &ctx(VSF, "attributes", seq, uid), &attrs)?;
        tx.execute(
            "UPDATE vector_store_files SET attributes_ct = ?1 WHERE seq = ?2",
            params![ct, seq],
        )?;
        tx.execute(
            "UPDATE vector_stores SET last_active_at = ?1 WHERE seq = ?2",
            params![now, store],
        )?;
        let detail = serde_json::json!({"vector_store": store_id, "file": file_id});
        audit::append_in(
            &tx,
            &audit_key,
            kinds::FILE_ATTACH,
            Some(uid),
            &detail.to_string(),
        )?;
        tx.commit()?;
        Ok((
            self.vsf_by_seq(seq)?.expect("the row was just written"),
            true,
        ))
    }

    fn vsf_by_seq(&self, seq: i64) -> Result<Option<AttachedFile>, StoreError> {
        let sql = format!("SELECT {VSF_COLS} FROM {VSF_FROM} WHERE f.seq = ?1");
        let mut st = self.conn.prepare(&sql)?;
        let mut rows = st.query([seq])?;
        match rows.next()? {
            Some(r) => self.attached_from(r),
            None => Ok(None),
        }
    }

    fn attached_from(&self, r: &rusqlite::Row<'_>) -> Result<Option<AttachedFile>, StoreError> {
        let seq: i64 = r.get(0)?;
        let uid: u32 = r.get(3)?;
        let Some(dek) = load_dek(&self.conn, &self.keys, uid)? else {
            return Ok(None);
        };
        let ct: Vec<u8> = r.get(11)?;
        Ok(Some(AttachedFile {
            seq,
            store_id: r.get(1)?,
            file_id: r.get(2)?,
            uid,
            status: r.get(4)?,
            last_error: r.get(5)?,
            chunk_max: r.get(6)?,
            chunk_overlap: r.get(7)?,
            chunks: get_u64(r, 8)?,
            usage_bytes: get_u64(r, 9)?,
            created_at: r.get(10)?,
            attributes: open_map(&dek, &ctx(VSF, "attributes", seq, uid), &ct)?,
        }))
    }

    /// The files of collection `store_id`, newest first (the caller checked it may read it).
    pub fn vs_files(&self, store_id: &str) -> Result<Vec<AttachedFile>, StoreError> {
        let sql = format!(
            "SELECT {VSF_COLS} FROM {VSF_FROM} WHERE s.id = ?1 ORDER BY f.created_at DESC, f.seq DESC"
        );
        let mut st = self.conn.prepare(&sql)?;
        let mut rows = st.query([store_id])?;
        let mut out = Vec::new();
        while let Some(r) = rows.next()? {
            out.extend(self.attached_from(r)?);
        }
        Ok(out)
    }

    /// File `file_id` in collection `store_id`.
    pub fn vs_file(
        &self,
        store_id: &str,
        file_id: &str,
    ) -> Result<Option<AttachedFile>, StoreError> {
        let seq: Option<i64> = self
            .conn
            .query_row(
                &format!("SELECT f.seq FROM {VSF_FROM} WHERE s.id = ?1 AND fl.id = ?2"),
                params![store_id, file_id],
                |r| r.get(0),
            )
            .optional()?;
        match seq {
            Some(seq) => self.vsf_by_seq(seq),
            None => Ok(None),
        }
    }

    /// Removes file `file_id` from `uid`'s collection `store_id` with its chunks, and logs
    /// `vector_store.file_detach`; `false` when there is no such attachment.
    pub fn vs_detach(
        &mut self,
        uid: u32,
        store_id: &str,
        file_id: &str,
    ) -> Result<bool, StoreError> {
        let audit_key = self.keys.active.audit_key();
        let tx = write_tx(&mut self.conn)?;
        let seq: Option<i64> = tx
            .query_row(
                &format!(
                    "SELECT f.seq FROM {VSF_FROM} WHERE s.id = ?1 AND fl.id = ?2 AND s.uid = ?3"
                ),
                params![store_id, file_id, uid],
                |r| r.get(0),
            )
            .optional()?;
        let Some(seq) = seq else {
            return Ok(false);
        };
        tx.execute("DELETE FROM vector_store_files WHERE seq = ?1", [seq])?;
        let detail = serde_json::json!({"vector_store": store_id, "file": file_id});
        audit::append_in(
            &tx,
            &audit_key,
            kinds::FILE_DETACH,
            Some(uid),
            &detail.to_string(),
        )?;
        tx.commit()?;
        let _ = self.checkpoint_truncate();
        Ok(true)
    }

    /// What ingest needs for attachment `seq`; `None` when it is gone or not in progress.
    pub fn ingest_source(&self, seq: i64) -> Result<Option<IngestSource>, StoreError> {
        let Some(file) = self.vsf_by_seq(seq)? else {
            return Ok(None);
        };
        if file.status != "in_progress" {
            return Ok(None);
        }
        let (file_seq, file_uid, name_ct, content_ct, anonymize): (
            i64,
            u32,
            Vec<u8>,
            Vec<u8>,
            bool,
        ) = self.conn.query_row(
            "SELECT fl.seq, fl.uid, fl.filename_ct, fl.content_ct, s.anonymize
                 FROM vector_store_files f JOIN files fl ON fl.seq = f.file_seq
                 JOIN vector_stores s ON s.seq = f.store_seq WHERE f.seq = ?1",
            [seq],
            |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?)),
        )?;
        let dek = need_dek(&self.conn, &self.keys, file_uid)?;
        Ok(Some(IngestSource {
            filename: open_string(&dek, &ctx(FILES, "filename", file_seq, file_uid), &name_ct)?,
            content: open_bytes(
                &dek,
                &ctx(FILES, "content", file_seq, file_uid),
                &content_ct,
            )?,
            anonymize,
            file,
        }))
    }

    /// Attachments still `in_progress` (to queue again at start-up), oldest first.
    pub fn ingests_pending(&self) -> Result<Vec<i64>, StoreError> {
        Ok(self
            .conn
            .prepare(
                "SELECT seq FROM vector_store_files WHERE status = 'in_progress' ORDER BY seq",
            )?
            .query_map([], |r| r.get(0))?
            .collect::<Result<_, _>>()?)
    }

    /// Stores the chunks of attachment `seq` sealed, marks it `completed` and logs
    /// `vector_store.file_ingested`, in one transaction. `false` when the attachment went away
    /// meanwhile (deleted, erased): nothing is stored then.
    pub fn ingest_complete(&mut self, seq: i64, chunks: &[NewChunk]) -> Result<bool, StoreError> {
        let audit_key = self.keys.active.audit_key();
        let tx = write_tx(&mut self.conn)?;
        let row: Option<(u32, String, String)> = tx
            .query_row(
                &format!("SELECT f.uid, s.id, fl.id FROM {VSF_FROM} WHERE f.seq = ?1 AND f.status = 'in_progress'"),
                [seq],
                |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
            )
            .optional()?;
        let Some((uid, store_id, file_id)) = row else {
            return Ok(false);
        };
        let Some(dek) = load_dek(&tx, &self.keys, uid)? else {
            return Ok(false);
        };
        tx.execute("DELETE FROM chunks WHERE vsf_seq = ?1", [seq])?;
        let mut usage = 0u64;
        {
            let mut insert = tx.prepare(
                "INSERT INTO chunks (vsf_seq, uid, ordinal, start, end, text_ct, vector_ct)
                 VALUES (?1, ?2, ?3, ?4, ?5, x'', NULL)",
            )?;
            let mut update =
                tx.prepare("UPDATE chunks SET text_ct = ?1, vector_ct = ?2 WHERE seq = ?3")?;
            for c in chunks {
                insert.execute(params![seq, uid, c.ordinal, c.start as i64, c.end as i64])?;
                let cseq = tx.last_insert_rowid();
                let text_ct =
                    crypto::seal(&dek, &ctx(CHUNKS, "text", cseq, uid), c.text.as_bytes())?;
                let vector_ct = match &c.vector {
                    Some(v) => Some(crypto::seal(
                        &dek,
                        &ctx(CHUNKS, "vector", cseq, uid),
                        &vector_bytes(v),
                    )?),
                    None => None,
                };
                usage += (c.text.len() + c.vector.as_ref().map_or(0, |v| v.len() * 4)) as u64;
                update.execute(params![text_ct, vector_ct, cseq])?;
            }
        }
        tx.execute(
            "UPDATE vector_store_files SET status = 'completed', last_error = NULL, chunks = ?1,
                 usage_bytes = ?2 WHERE seq = ?3",
            params![chunks.len() as i64, usage as i64, seq],
        )?;
        let detail = serde_json::json!({"vector_store": store_id, "file": file_id,
            "chunks": chunks.len()});
        audit::append_in(
            &tx,
            &audit_key,
            kinds::FILE_INGESTED,
            Some(uid),
            &detail.to_string(),
        )?;
        crate::fault::point("ingest.before_commit");
        tx.commit()?;
        crate::fault::point("ingest.after_commit");
        Ok(true)
    }

    /// Marks attachment `seq` `failed` with `error` (a message for its owner).
    pub fn ingest_failed(&mut self, seq: i64, error: &str) -> Result<(), StoreError> {
        self.conn.execute(
            "UPDATE vector_store_files SET status = 'failed', last_error = ?1
             WHERE seq = ?2 AND status = 'in_progress'",
            params![error, seq],
        )?;
        Ok(())
    }

    /// The searchable files (completed attachments) with their chunks opened: the in-memory
    /// index is built from this at start-up. Rows of an erased uid (no key) are skipped.
    /// `only` restricts it to one attachment (after its ingest).
    pub fn searchable_files(&self, only: Option<i64>) -> Result<Vec<LoadedFile>, StoreError> {
        let sql = format!(
            "SELECT {VSF_COLS}, fl.seq, fl.uid, fl.filename_ct FROM {VSF_FROM}
             WHERE f.status = 'completed' AND (?1 IS NULL OR f.seq = ?1) ORDER BY f.seq"
        );
        let mut files = Vec::new();
        {
            let mut st = self.conn.prepare(&sql)?;
            let mut rows = st.query([only])?;
            while let Some(r) = rows.next()? {
                let Some(att) = self.attached_from(r)? else {
                    continue;
                };
                let (fseq, fuid, name_ct): (i64, u32, Vec<u8>) =
                    (r.get(12)?, r.get(13)?, r.get(14)?);
                let Some(fdek) = load_dek(&self.conn, &self.keys, fuid)? else {
                    continue;
                };
                let filename = open_string(&fdek, &ctx(FILES, "filename", fseq, fuid), &name_ct)?;
                files.push((att, filename));
            }
        }
        let mut out = Vec::with_capacity(files.len());
        let mut st = self.conn.prepare(
            "SELECT seq, ordinal, start, end, text_ct, vector_ct FROM chunks
             WHERE vsf_seq = ?1 ORDER BY ordinal",
        )?;
        for (att, filename) in files {
            match self.open_chunks(&mut st, &att) {
                Ok(chunks) => out.push(LoadedFile {
                    store_id: att.store_id,
                    file_id: att.file_id,
                    filename,
                    attributes: att.attributes,
                    chunks,
                }),
                // One damaged row costs its file a place in the index, not the daemon its start.
                Err(e) => tracing::error!(
                    vector_store = %att.store_id,
                    file = %att.file_id,
                    "a sealed chunk does not open ({e}); the file is left out of the search index"
                ),
            }
        }
        Ok(out)
    }

    fn open_chunks(
        &self,
        st: &mut rusqlite::Statement<'_>,
        att: &AttachedFile,
    ) -> Result<Vec<(i64, NewChunk)>, StoreError> {
        let dek = need_dek(&self.conn, &self.keys, att.uid)?;
        let mut rows = st.query([att.seq])?;
        let mut chunks = Vec::new();
        while let Some(r) = rows.next()? {
            let cseq: i64 = r.get(0)?;
            let text_ct: Vec<u8> = r.get(4)?;
            let vector_ct: Option<Vec<u8>> = r.get(5)?;
            let vector = match vector_ct {
                Some(ct) => Some(
                    vector_from(&open_bytes(
                        &dek,
                        &ctx(CHUNKS, "vector", cseq, att.uid),
                        &ct,
                    )?)
                    .ok_or(StoreError::Integrity { id: cseq })?,
                ),
                None => None,
            };
            chunks.push((
                cseq,
                NewChunk {
                    ordinal: r.get(1)?,
                    start: r.get::<_, i64>(2)? as usize,
                    end: r.get::<_, i64>(3)? as usize,
                    text: open_string(&dek, &ctx(CHUNKS, "text", cseq, att.uid), &text_ct)?,
                    vector,
                },
            ));
        }
        Ok(chunks)
    }

    /// The seqs of the completed attachments, in order: start-up opens them one by one, so that
    /// only one file's opened chunks exist outside the index at a time.
    pub fn searchable_seqs(&self) -> Result<Vec<i64>, StoreError> {
        Ok(self
            .conn
            .prepare("SELECT seq FROM vector_store_files WHERE status = 'completed' ORDER BY seq")?
            .query_map([], |r| r.get(0))?
            .collect::<Result<_, _>>()?)
    }

    /// The (collection, file) pairs of the completed attachments whose owners still have a key.
    pub fn searchable_files_ids(&self) -> Result<Vec<(String, String)>, StoreError> {
        Ok(self
            .conn
            .prepare(&format!(
                "SELECT s.id, fl.id FROM {VSF_FROM} WHERE f.status = 'completed'
                 AND EXISTS (SELECT 1 FROM users_keys k WHERE k.uid = f.uid)"
            ))?
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?
            .collect::<Result<_, _>>()?)
    }

    /// Logs a search (metadata only) and marks the collections active.
    pub fn audit_search(
        &mut self,
        uid: u32,
        store_ids: &[String],
        results: usize,
        via: &str,
        now: i64,
    ) -> Result<(), StoreError> {
        let audit_key = self.keys.active.audit_key();
        let tx = write_tx(&mut self.conn)?;
        for id in store_ids {
            tx.execute(
                "UPDATE vector_stores SET last_active_at = ?1 WHERE id = ?2",
                params![now, id],
            )?;
        }
        let detail =
            serde_json::json!({"vector_stores": store_ids, "results": results, "via": via});
        audit::append_in(
            &tx,
            &audit_key,
            kinds::SEARCH,
            Some(uid),
            &detail.to_string(),
        )?;
        tx.commit()?;
        Ok(())
    }

    /// Deletes files uploaded before `cutoff_unix` (with their chunks everywhere) and logs one
    /// `file.retention_purge`; returns the (collection, file) pairs that left the index.
    pub fn purge_files_older_than(
        &mut self,
        cutoff_unix: i64,
    ) -> Result<Vec<(String, String)>, StoreError> {
        let audit_key = self.keys.active.audit_key();
        let tx = write_tx(&mut self.conn)?;
        let gone: Vec<(String, String)> = tx
            .prepare(&format!(
                "SELECT s.id, fl.id FROM {VSF_FROM} WHERE fl.created_at < ?1"
            ))?
            .query_map([cutoff_unix], |r| Ok((r.get(0)?, r.get(1)?)))?
            .collect::<Result<_, _>>()?;
        let n = tx.execute("DELETE FROM files WHERE created_at < ?1", [cutoff_unix])?;
        if n == 0 {
            return Ok(gone);
        }
        let detail = serde_json::json!({"cutoff": cutoff_unix, "files": n});
        audit::append_in(
            &tx,
            &audit_key,
            kinds::FILE_RETENTION,
            None,
            &detail.to_string(),
        )?;
        tx.commit()?;
        let _ = self.checkpoint_truncate();
        Ok(gone)
    }
}

/// Erasure's part: every file and collection of `uid` (attachments and chunks follow by
/// cascade), inside the transaction that destroys its key. Returns the rows deleted.
pub(super) fn erase_in(conn: &Connection, uid: u32) -> Result<u64, StoreError> {
    let stores = conn.execute("DELETE FROM vector_stores WHERE uid = ?1", [uid])?;
    let files = conn.execute("DELETE FROM files WHERE uid = ?1", [uid])?;
    // Chunks of other collections cannot be the uid's: a collection's chunks are its owner's.
    Ok((stores + files) as u64)
}

/// The groups collection `seq` is shared with, in order.
fn store_gids(conn: &Connection, seq: i64) -> Result<Vec<u32>, StoreError> {
    Ok(conn
        .prepare("SELECT gid FROM vector_store_groups WHERE store_seq = ?1 ORDER BY gid")?
        .query_map([seq], |r| r.get(0))?
        .collect::<Result<_, _>>()?)
}

fn own_store_seq(conn: &Connection, uid: u32, id: &str) -> Result<Option<i64>, StoreError> {
    Ok(conn
        .query_row(
            "SELECT seq FROM vector_stores WHERE id = ?1 AND uid = ?2",
            params![id, uid],
            |r| r.get(0),
        )
        .optional()?)
}

fn seal_store_fields(
    conn: &Connection,
    dek: &DataKey,
    seq: i64,
    uid: u32,
    name: Option<&str>,
    metadata: Option<&Map<String, Value>>,
) -> Result<(), StoreError> {
    if let Some(name) = name {
        let ct = crypto::seal(dek, &ctx(STORES, "name", seq, uid), name.as_bytes())?;
        conn.execute(
            "UPDATE vector_stores SET name_ct = ?1 WHERE seq = ?2",
            params![ct, seq],
        )?;
    }
    if let Some(m) = metadata {
        let bytes = serde_json::to_vec(m).unwrap_or_default();
        let ct = crypto::seal(dek, &ctx(STORES, "metadata", seq, uid), &bytes)?;
        conn.execute(
            "UPDATE vector_stores SET metadata_ct = ?1 WHERE seq = ?2",
            params![ct, seq],
        )?;
    }
    Ok(())
}

fn set_groups(conn: &Connection, seq: i64, gids: &[u32]) -> Result<(), StoreError> {
    conn.execute(
        "DELETE FROM vector_store_groups WHERE store_seq = ?1",
        [seq],
    )?;
    let mut st =
        conn.prepare("INSERT OR IGNORE INTO vector_store_groups (store_seq, gid) VALUES (?1, ?2)")?;
    for g in gids {
        st.execute(params![seq, g])?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crypto::MasterKey;

    const CANARY: &str = "CANARY-4c1d-kestrel";

    fn open(dir: &std::path::Path) -> Store {
        Store::open(dir.join("inhouse.db"), MasterKey::from_bytes(&[7; 32])).unwrap()
    }

    fn raw(dir: &std::path::Path) -> Vec<u8> {
        ["inhouse.db", "inhouse.db-wal"]
            .iter()
            .flat_map(|f| std::fs::read(dir.join(f)).unwrap_or_default())
            .collect()
    }

    fn has(hay: &[u8], needle: &str) -> bool {
        hay.windows(needle.len()).any(|w| w == needle.as_bytes())
    }

    /// A collection of uid 1000 shared with gid 50, holding one ingested file of two chunks.
    fn populated(s: &mut Store) -> (CollectionMeta, FileMeta, AttachedFile) {
        let f = s
            .file_create(1000, "assistants", "secret-plan.md", CANARY.as_bytes(), 100)
            .unwrap();
        let mut meta = Map::new();
        meta.insert("team".into(), Value::from("board"));
        let c = s
            .vs_create(1000, "Board papers", &meta, false, (200, 50), &[50], 100)
            .unwrap();
        let mut attrs = Map::new();
        attrs.insert("year".into(), Value::from(2026));
        let (a, new) = s
            .vs_attach(1000, &c.id, &f.id, &attrs, (200, 50), 100)
            .unwrap();
        assert!(new && a.status == "in_progress");
        let chunks = vec![
            NewChunk {
                ordinal: 0,
                start: 0,
                end: 10,
                text: format!("{CANARY} one"),
                vector: Some(vec![0.6, 0.8]),
            },
            NewChunk {
                ordinal: 1,
                start: 5,
                end: 19,
                text: "two".into(),
                vector: None,
            },
        ];
        assert!(s.ingest_complete(a.seq, &chunks).unwrap());
        (c, f, a)
    }

    #[test]
    fn everything_a_user_wrote_is_sealed_and_reads_back_for_the_index() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = open(dir.path());
        let (c, f, _) = populated(&mut s);
        let loaded = s.searchable_files(None).unwrap();
        assert_eq!(loaded.len(), 1);
        let l = &loaded[0];
        assert_eq!(
            (l.store_id.as_str(), l.file_id.as_str()),
            (c.id.as_str(), f.id.as_str())
        );
        assert_eq!(l.filename, "secret-plan.md");
        assert_eq!(l.attributes["year"], 2026);
        assert_eq!(l.chunks.len(), 2);
        assert_eq!(l.chunks[0].1.vector, Some(vec![0.6, 0.8]));
        assert_eq!(l.chunks[1].1.vector, None);
        assert_eq!(l.chunks[1].1.start..l.chunks[1].1.end, 5..19);
        let got = s.vs_get(&c.id).unwrap().unwrap();
        assert_eq!(got.name, "Board papers");
        assert_eq!(got.metadata["team"], "board");
        assert_eq!(got.counts.completed, 1);
        assert!(got.usage_bytes > 0);
        assert_eq!(
            s.file_content(1000, &f.id).unwrap().unwrap().1,
            CANARY.as_bytes()
        );
        let _ = s.checkpoint_truncate();
        let bytes = raw(dir.path());
        for needle in [CANARY, "secret-plan", "Board papers", "board"] {
            assert!(!has(&bytes, needle), "{needle:?} is on disk in clear");
        }
    }

    #[test]
    fn readers_are_the_owner_and_the_groups_and_only_the_owner_changes() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = open(dir.path());
        let (c, f, _) = populated(&mut s);
        let ids = |v: Vec<CollectionMeta>| v.into_iter().map(|c| c.id).collect::<Vec<_>>();
        assert_eq!(
            ids(s.vs_list_readable(1000, &[]).unwrap()),
            vec![c.id.clone()]
        );
        assert_eq!(
            ids(s.vs_list_readable(2000, &[7, 50]).unwrap()),
            vec![c.id.clone()]
        );
        assert!(s.vs_list_readable(2000, &[7]).unwrap().is_empty());
        // Another uid neither changes, attaches to, deletes nor reads the owner's files.
        assert!(s
            .vs_update(2000, &c.id, Some("x"), None, None, 1)
            .unwrap()
            .is_none());
        assert!(!s.vs_delete(2000, &c.id).unwrap());
        assert!(s.file_get(2000, &f.id).unwrap().is_none());
        let theirs = s.file_create(2000, "assistants", "t.txt", b"t", 1).unwrap();
        assert!(matches!(
            s.vs_attach(2000, &c.id, &theirs.id, &Map::new(), (200, 50), 1),
            Err(StoreError::NotFound { .. })
        ));
        assert!(matches!(
            s.vs_attach(1000, &c.id, &theirs.id, &Map::new(), (200, 50), 1),
            Err(StoreError::NotFound { .. })
        ));
        // The owner re-shares: the old group loses it.
        let c2 = s
            .vs_update(1000, &c.id, None, None, Some(&[60]), 2)
            .unwrap()
            .unwrap();
        assert_eq!(c2.gids, vec![60]);
        assert!(s.vs_list_readable(2000, &[50]).unwrap().is_empty());
    }

    #[test]
    fn deleting_erasing_and_retention_take_the_chunks_with_them() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = open(dir.path());
        let count = |s: &Store, t: &str| -> i64 {
            s.conn
                .query_row(&format!("SELECT count(*) FROM {t}"), [], |r| r.get(0))
                .unwrap()
        };
        // Deleting the file removes it from the collection.
        let (c, f, _) = populated(&mut s);
        assert_eq!(
            s.file_delete(1000, &f.id).unwrap(),
            Some(vec![c.id.clone()])
        );
        assert_eq!(
            (count(&s, "chunks"), count(&s, "vector_store_files")),
            (0, 0)
        );
        assert_eq!(s.file_delete(1000, &f.id).unwrap(), None);
        // Retention: files uploaded before the cutoff go, with their chunks.
        let (c, _, _) = populated(&mut s);
        assert_eq!(s.purge_files_older_than(50).unwrap(), vec![]);
        let gone = s.purge_files_older_than(101).unwrap();
        assert_eq!(gone.len(), 1);
        assert_eq!(gone[0].0, c.id);
        assert_eq!((count(&s, "files"), count(&s, "chunks")), (0, 0));
        // Erasure: files and collections go with the key, in one transaction.
        populated(&mut s);
        let report = s.erase_uid(1000).unwrap();
        // The three rounds' collections (deleting files leaves their collections) and the last
        // round's file.
        assert_eq!(report.knowledge_deleted, 4);
        for t in ["files", "vector_stores", "vector_store_files", "chunks"] {
            assert_eq!(count(&s, t), 0, "{t}");
        }
        let _ = s.checkpoint_truncate();
        assert!(!has(&raw(dir.path()), CANARY));
    }

    #[test]
    fn an_ingest_whose_attachment_went_away_stores_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = open(dir.path());
        let f = s.file_create(1000, "assistants", "a.txt", b"a", 1).unwrap();
        let c = s
            .vs_create(1000, "c", &Map::new(), true, (100, 0), &[], 1)
            .unwrap();
        let (a, _) = s
            .vs_attach(1000, &c.id, &f.id, &Map::new(), (100, 0), 1)
            .unwrap();
        assert_eq!(s.ingests_pending().unwrap(), vec![a.seq]);
        let src = s.ingest_source(a.seq).unwrap().unwrap();
        assert!(src.anonymize && src.content == b"a" && src.filename == "a.txt");
        assert!(s.vs_detach(1000, &c.id, &f.id).unwrap());
        let chunk = NewChunk {
            ordinal: 0,
            start: 0,
            end: 1,
            text: "a".into(),
            vector: None,
        };
        assert!(!s.ingest_complete(a.seq, &[chunk]).unwrap());
        assert!(s.ingest_source(a.seq).unwrap().is_none());
        assert!(s.ingests_pending().unwrap().is_empty());
    }

    #[test]
    fn vectors_round_trip_as_little_endian_f32() {
        let v = vec![0.5f32, -1.25, 3.0e-7];
        assert_eq!(vector_from(&vector_bytes(&v)).unwrap(), v);
        assert!(vector_from(&[1, 2, 3]).is_none());
    }

    #[test]
    fn public_ids_are_random_and_prefixed() {
        let a = random_id("vs_").unwrap();
        let b = random_id("vs_").unwrap();
        assert!(a.starts_with("vs_") && a.len() == 27);
        assert_ne!(a, b);
    }
}
