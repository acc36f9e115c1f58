-- inhouse schema, version 7: files and vector stores (knowledge collections, OpenAI's shapes).
--
-- Everything a user wrote is sealed under its owner's data key, with table, column, row seq and
-- owner uid in the AAD (crypto::field): a file's name and content; a collection's name and
-- metadata; a file's attributes in a collection; a chunk's text and its embedding vector
-- (vectors leak content: embedding inversion recovers much of the text). What is clear: ids,
-- owners, sizes, counts, statuses, chunk offsets and times, needed to list, to bound and to
-- apply retention without keys. A row's `seq` (AUTOINCREMENT, never reused) is what its
-- ciphertexts are bound to; the public ids (`file-…`, `vs_…`) are random.
--
-- Deleting a file removes it from every collection with its chunks (cascade); deleting a
-- collection removes its attachments and chunks, not the files. Per-uid erasure deletes the
-- uid's files and collections with the key; retention deletes files by `created_at`.
CREATE TABLE files (
    seq         INTEGER PRIMARY KEY AUTOINCREMENT,
    id          TEXT NOT NULL UNIQUE,
    uid         INTEGER NOT NULL,
    purpose     TEXT NOT NULL,
    bytes       INTEGER NOT NULL CHECK (bytes >= 0),
    created_at  INTEGER NOT NULL,
    filename_ct BLOB NOT NULL,
    content_ct  BLOB NOT NULL
) STRICT;

CREATE INDEX files_by_uid ON files (uid, created_at);

CREATE TABLE vector_stores (
    seq            INTEGER PRIMARY KEY AUTOINCREMENT,
    id             TEXT NOT NULL UNIQUE,
    uid            INTEGER NOT NULL,
    created_at     INTEGER NOT NULL,
    last_active_at INTEGER NOT NULL,
    anonymize      INTEGER NOT NULL DEFAULT 0 CHECK (anonymize IN (0, 1)),
    chunk_max      INTEGER NOT NULL CHECK (chunk_max > 0),
    chunk_overlap  INTEGER NOT NULL CHECK (chunk_overlap >= 0),
    name_ct        BLOB NOT NULL,
    metadata_ct    BLOB NOT NULL
) STRICT;

CREATE INDEX vector_stores_by_uid ON vector_stores (uid);

-- The groups a collection is shared with (read and search only; the owner alone changes it).
CREATE TABLE vector_store_groups (
    store_seq INTEGER NOT NULL REFERENCES vector_stores (seq) ON DELETE CASCADE,
    gid       INTEGER NOT NULL,
    PRIMARY KEY (store_seq, gid)
) STRICT;

CREATE TABLE vector_store_files (
    seq           INTEGER PRIMARY KEY AUTOINCREMENT,
    store_seq     INTEGER NOT NULL REFERENCES vector_stores (seq) ON DELETE CASCADE,
    file_seq      INTEGER NOT NULL REFERENCES files (seq) ON DELETE CASCADE,
    uid           INTEGER NOT NULL,
    status        TEXT NOT NULL
                  CHECK (status IN ('in_progress', 'completed', 'failed', 'cancelled')),
    last_error    TEXT,
    chunk_max     INTEGER NOT NULL,
    chunk_overlap INTEGER NOT NULL,
    chunks        INTEGER NOT NULL DEFAULT 0,
    usage_bytes   INTEGER NOT NULL DEFAULT 0,
    created_at    INTEGER NOT NULL,
    attributes_ct BLOB NOT NULL,
    UNIQUE (store_seq, file_seq)
) STRICT;

CREATE INDEX vector_store_files_by_file ON vector_store_files (file_seq);

CREATE TABLE chunks (
    seq       INTEGER PRIMARY KEY AUTOINCREMENT,
    vsf_seq   INTEGER NOT NULL REFERENCES vector_store_files (seq) ON DELETE CASCADE,
    uid       INTEGER NOT NULL,
    ordinal   INTEGER NOT NULL,
    start     INTEGER NOT NULL,
    end       INTEGER NOT NULL,
    text_ct   BLOB NOT NULL,
    vector_ct BLOB
) STRICT;

CREATE INDEX chunks_by_file ON chunks (vsf_seq, ordinal);
