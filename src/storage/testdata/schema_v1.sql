-- inhouse schema, version 1.
--
-- Append-only: never edit this file once released; add 0002_*.sql and so on instead. Each file is
-- applied inside the single transaction that migrates the database, so it must not contain
-- statements SQLite refuses in a transaction (VACUUM, PRAGMA journal_mode, ...). Connection
-- settings (WAL, foreign keys, secure_delete) are set by the code, not here.
--
-- Times are Unix seconds (UTC). uids are Unix uids. Key ids are 16 lower-case hex characters
-- naming a master key (derived from it, never the key itself). Ciphertexts use the layout
-- version || nonce || ciphertext || tag described in src/crypto/field.rs.

-- Small facts about the database: 'active_key_id' (the master key that seals new data),
-- 'created_at'.
CREATE TABLE meta (
    key   TEXT PRIMARY KEY,
    value TEXT NOT NULL
) STRICT, WITHOUT ROWID;

-- One row per master key that can open this database: the active key, plus the incoming key
-- while a rotation is in progress. check_ct is a known constant sealed under the key's
-- key-check sub-key; opening with a key that has no row here, or whose check fails, is refused.
CREATE TABLE key_check (
    key_id     TEXT PRIMARY KEY,
    check_ct   BLOB NOT NULL,
    created_at INTEGER NOT NULL
) STRICT;

-- Per-user data keys, each wrapped by the KEK of master key key_id. Deleting a row is
-- crypto-shredding: every ciphertext of that uid becomes unreadable.
CREATE TABLE users_keys (
    uid         INTEGER PRIMARY KEY,
    key_id      TEXT NOT NULL,
    wrapped_dek BLOB NOT NULL,
    created     INTEGER NOT NULL
) STRICT;

-- One row per served request. Metadata in clear, prompt and response sealed under the owner's
-- data key with the row id in the AAD. AUTOINCREMENT so an id is never reused after a delete:
-- a reused id would let an old ciphertext of the same user open in a new row.
CREATE TABLE requests (
    id                INTEGER PRIMARY KEY AUTOINCREMENT,
    uid               INTEGER NOT NULL,
    model             TEXT NOT NULL,
    params_json       TEXT NOT NULL,
    created_at        INTEGER NOT NULL,
    finished_at       INTEGER,
    prompt_tokens     INTEGER NOT NULL CHECK (prompt_tokens >= 0),
    completion_tokens INTEGER NOT NULL CHECK (completion_tokens >= 0),
    status            TEXT NOT NULL CHECK (status IN ('completed', 'aborted', 'error')),
    prompt_ct         BLOB NOT NULL,
    response_ct       BLOB NOT NULL
) STRICT;

-- The audit chain. mac = HMAC(audit key of key_id, prev_mac || seq || ts || kind || actor ||
-- detail || key_id), see src/crypto/audit_mac.rs. Never updated or deleted by inhouse.
CREATE TABLE audit (
    seq         INTEGER PRIMARY KEY,
    ts          INTEGER NOT NULL,
    kind        TEXT NOT NULL,
    actor_uid   INTEGER,
    detail_json TEXT NOT NULL,
    key_id      TEXT NOT NULL,
    prev_mac    BLOB NOT NULL,
    mac         BLOB NOT NULL
) STRICT;

-- A key rotation in progress (at most one row). Each master key is wrapped under the other's
-- KEK so that the store opens, and the rotation resumes, with either key. The row is deleted
-- (and the WAL truncated) when the rotation finishes. Progress itself is the key_id column of
-- users_keys; rewrapped only counts.
CREATE TABLE key_rotation (
    id                INTEGER PRIMARY KEY CHECK (id = 1),
    old_key_id        TEXT NOT NULL,
    new_key_id        TEXT NOT NULL,
    started_at        INTEGER NOT NULL,
    new_master_by_old BLOB NOT NULL,
    old_master_by_new BLOB NOT NULL,
    rewrapped         INTEGER NOT NULL DEFAULT 0
) STRICT;

-- Master keys retired by a rotation. Their KEKs are gone; only their audit MAC key is kept,
-- wrapped under the KEK of the active key (wrapped_by), so audit rows they MACed stay
-- verifiable. last_audit_seq is the last audit row MACed with that key.
CREATE TABLE key_history (
    key_id            TEXT PRIMARY KEY,
    retired_at        INTEGER NOT NULL,
    successor_key_id  TEXT NOT NULL,
    audit_key_wrapped BLOB NOT NULL,
    wrapped_by        TEXT NOT NULL,
    last_audit_seq    INTEGER NOT NULL
) STRICT;
