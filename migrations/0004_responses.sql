-- Stored responses of the Responses API (`POST /v1/responses` with `store: true`). The
-- conversation itself is the request record's sealed prompt and response; a row here only gives
-- that record its public id (`resp_…`, random) and the id it continued. It goes with the record:
-- deleted by `history rm`, retention and per-uid erasure through the cascade, never on its own.
-- Lookups are always by (id, uid), so another uid's id answers exactly like an unknown one.
CREATE TABLE responses (
    id          TEXT PRIMARY KEY,
    uid         INTEGER NOT NULL,
    request_id  INTEGER NOT NULL UNIQUE REFERENCES requests (id) ON DELETE CASCADE,
    previous_id TEXT,
    created_at  INTEGER NOT NULL
) STRICT;

CREATE INDEX responses_by_uid ON responses (uid, created_at);
