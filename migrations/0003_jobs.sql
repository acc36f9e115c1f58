-- inhouse schema, version 3: jobs the daemon runs through the toolchain (src/jobs/).
--
-- One row per job, in clear, holding no user text: the kind, who asked, the parameters (model
-- names and digests, dataset ids and digests, options, the output name), progress numbers, the
-- last checkpoint's path inside the state directory, a summary of the result and the reason of
-- a failure. The training data itself is a file under state-dir/jobs/, removed when the job ends
-- unless [jobs] keep-data is set. No index: the table stays small and is read by id or in full.
CREATE TABLE jobs (
    id            INTEGER PRIMARY KEY AUTOINCREMENT,
    kind          TEXT NOT NULL CHECK (kind IN ('prepare', 'finetune', 'quantize', 'eval')),
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
