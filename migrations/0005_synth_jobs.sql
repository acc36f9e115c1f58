-- inhouse schema, version 5: a fifth job kind, `synth` (grounded synthetic Q&A from documents).
--
-- SQLite cannot change a CHECK constraint in place: the table is rebuilt with the wider list and
-- the rows copied over, ids kept (the AUTOINCREMENT counter in sqlite_sequence is kept too, so an
-- id is never reused). Runs inside the migration's transaction.
CREATE TABLE jobs_new (
    id            INTEGER PRIMARY KEY AUTOINCREMENT,
    kind          TEXT NOT NULL
                  CHECK (kind IN ('prepare', 'finetune', 'quantize', 'eval', 'synth')),
    state         TEXT NOT NULL
                  CHECK (state IN ('queued', 'running', 'succeeded', 'failed', 'cancelled')),
    uid           INTEGER NOT NULL,
    params_json   TEXT NOT NULL,
    created_at    INTEGER NOT NULL,
    started_at    INTEGER,
    finished_at   INTEGER,
    pid           INTEGER,
    attempts      INTEGER NOT NULL DEFAULT 0 CHECK (attempts >= 0),
    progress_json TEXT,
    checkpoint    TEXT,
    result_json   TEXT,
    error         TEXT
) STRICT;
INSERT INTO jobs_new SELECT * FROM jobs;
DROP TABLE jobs;
ALTER TABLE jobs_new RENAME TO jobs;
