-- inhouse schema, version 6: which release applied each migration, and when.
--
-- One row per schema version from 6 on, written in the same transaction as the migration itself
-- (the primary key makes a migration that ran twice an error, not a duplicate). An older binary
-- that finds a newer database reads the last row to say which release it needs.
CREATE TABLE schema_history (
    version         INTEGER PRIMARY KEY CHECK (version > 0),
    applied_at      INTEGER NOT NULL,
    inhouse_version TEXT NOT NULL
);
