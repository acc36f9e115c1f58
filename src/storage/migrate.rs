//! Schema migrations: append-only SQL files embedded at build time.
//!
//! The schema version is `PRAGMA user_version` (0 for a new file). Opening applies every
//! migration above it, in order, inside **one** `BEGIN IMMEDIATE` transaction that also sets the
//! new `user_version`, so a failure or a crash leaves the previous schema untouched. A file whose
//! version is above the newest migration this binary embeds is refused with
//! [`StoreError::TooNew`]: an older binary must not write into a schema it does not understand.
//!
//! To change the schema, add `migrations/000N_what.sql` and one line to [`MIGRATIONS`]; never
//! edit a released file (the upgrade test keeps a frozen copy of version 1 to catch that).

use rusqlite::{Connection, TransactionBehavior};

use super::StoreError;

/// One numbered schema step.
#[derive(Debug, Clone, Copy)]
pub struct Migration {
    /// The `user_version` after this step.
    pub version: u32,
    /// The SQL text, embedded from `migrations/`.
    pub sql: &'static str,
}

// `CARGO_MANIFEST_DIR` keeps the path right wherever this module is compiled from.
/// Every migration, in order; versions are 1, 2, 3, ... without gaps.
pub const MIGRATIONS: &[Migration] = &[
    Migration {
        version: 1,
        sql: include_str!(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/migrations/0001_init.sql"
        )),
    },
    Migration {
        version: 2,
        sql: include_str!(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/migrations/0002_history_indexes.sql"
        )),
    },
    Migration {
        version: 3,
        sql: include_str!(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/migrations/0003_jobs.sql"
        )),
    },
    Migration {
        version: 4,
        sql: include_str!(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/migrations/0004_responses.sql"
        )),
    },
    Migration {
        version: 5,
        sql: include_str!(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/migrations/0005_synth_jobs.sql"
        )),
    },
    Migration {
        version: 6,
        sql: include_str!(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/migrations/0006_schema_history.sql"
        )),
    },
    Migration {
        version: 7,
        sql: include_str!(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/migrations/0007_knowledge.sql"
        )),
    },
];

/// The first schema version with the `schema_history` table (migration 6): from it on, every
/// migration records the release that applied it.
const HISTORY_FROM: u32 = 6;

/// The schema version this binary writes and the newest it accepts.
pub const SCHEMA_VERSION: u32 = MIGRATIONS.len() as u32;

/// The refusal of a database newer than this binary, naming the release that wrote it when
/// the database says (schema 6 and later keep a `schema_history`).
fn too_new(conn: &Connection, found: u32, supported: u32) -> StoreError {
    let needs = conn
        .query_row(
            "SELECT inhouse_version FROM schema_history ORDER BY version DESC LIMIT 1",
            [],
            |r| r.get::<_, String>(0),
        )
        .ok();
    StoreError::TooNew {
        found,
        supported,
        needs,
    }
}

/// Brings the database up to the last of `migrations`; returns the version it found.
pub(crate) fn migrate(conn: &mut Connection, migrations: &[Migration]) -> Result<u32, StoreError> {
    let supported = migrations.last().map_or(0, |m| m.version);
    let found: u32 = conn.pragma_query_value(None, "user_version", |r| r.get(0))?;
    if found > supported {
        return Err(too_new(conn, found, supported));
    }
    if found == supported {
        return Ok(found);
    }
    // IMMEDIATE takes the write lock up front, so two processes opening a new database at the
    // same time cannot both start migrating it.
    let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
    // Re-read under the lock: another process may have migrated meanwhile.
    let found: u32 = tx.pragma_query_value(None, "user_version", |r| r.get(0))?;
    if found > supported {
        return Err(too_new(&tx, found, supported));
    }
    let now = super::now_unix();
    for m in migrations.iter().filter(|m| m.version > found) {
        tx.execute_batch(m.sql)?;
        if m.version >= HISTORY_FROM {
            tx.execute(
                "INSERT INTO schema_history (version, applied_at, inhouse_version) \
                 VALUES (?1, ?2, ?3)",
                rusqlite::params![m.version, now, env!("CARGO_PKG_VERSION")],
            )?;
        }
    }
    tx.pragma_update(None, "user_version", supported)?;
    tx.commit()?;
    // Once per migration, so the journal shows it ran exactly once (the upgrade test counts it).
    tracing::info!(from = found, to = supported, "database schema migrated");
    Ok(found)
}

/// The `schema_history` rows, `(version, the release that applied it)`, oldest first (for the
/// admin's and the upgrade test's look at what ran).
pub fn schema_history(conn: &Connection) -> rusqlite::Result<Vec<(u32, String)>> {
    conn.prepare("SELECT version, inhouse_version FROM schema_history ORDER BY version")?
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_are_contiguous_from_one() {
        for (i, m) in MIGRATIONS.iter().enumerate() {
            assert_eq!(m.version as usize, i + 1);
            assert!(!m.sql.trim().is_empty());
        }
    }

    #[test]
    fn migrations_apply_in_one_transaction() {
        let dir = tempfile::tempdir().unwrap();
        let mut conn = Connection::open(dir.path().join("t.db")).unwrap();
        let broken = [
            MIGRATIONS[0],
            Migration {
                version: 2,
                sql: "CREATE INDEX good ON requests (uid); THIS IS NOT SQL;",
            },
        ];
        assert!(migrate(&mut conn, &broken).is_err());
        let version: u32 = conn
            .pragma_query_value(None, "user_version", |r| r.get(0))
            .unwrap();
        assert_eq!(version, 0);
        let tables: i64 = conn
            .query_row("SELECT count(*) FROM sqlite_schema", [], |r| r.get(0))
            .unwrap();
        assert_eq!(tables, 0, "a failed migration must leave nothing behind");

        assert_eq!(migrate(&mut conn, MIGRATIONS).unwrap(), 0);
        assert_eq!(migrate(&mut conn, MIGRATIONS).unwrap(), SCHEMA_VERSION);
    }

    #[test]
    fn newer_database_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let mut conn = Connection::open(dir.path().join("t.db")).unwrap();
        conn.pragma_update(None, "user_version", SCHEMA_VERSION + 7)
            .unwrap();
        let err = migrate(&mut conn, MIGRATIONS).unwrap_err();
        assert!(
            matches!(err, StoreError::TooNew { found, supported, .. } if found == SCHEMA_VERSION + 7 && supported == SCHEMA_VERSION)
        );
        assert_eq!(err.kind(), "too_new");
        assert!(err.to_string().contains("newer than this build"), "{err}");
    }

    #[test]
    fn each_migration_from_six_is_recorded_once_with_its_release() {
        let dir = tempfile::tempdir().unwrap();
        let mut conn = Connection::open(dir.path().join("t.db")).unwrap();
        // A database of the previous release (schema 5), then this one.
        migrate(&mut conn, &MIGRATIONS[..5]).unwrap();
        assert_eq!(migrate(&mut conn, MIGRATIONS).unwrap(), 5);
        assert_eq!(migrate(&mut conn, MIGRATIONS).unwrap(), SCHEMA_VERSION);
        let rows = schema_history(&conn).unwrap();
        let expected: Vec<(u32, String)> = (HISTORY_FROM..=SCHEMA_VERSION)
            .map(|v| (v, env!("CARGO_PKG_VERSION").to_string()))
            .collect();
        assert_eq!(rows, expected);
    }

    #[test]
    fn a_newer_database_names_the_release_it_needs() {
        let dir = tempfile::tempdir().unwrap();
        let mut conn = Connection::open(dir.path().join("t.db")).unwrap();
        migrate(&mut conn, MIGRATIONS).unwrap();
        // What a later release would leave: a higher version, recorded in the history.
        conn.execute(
            "INSERT INTO schema_history VALUES (?1, 0, '9.4.1')",
            [SCHEMA_VERSION + 1],
        )
        .unwrap();
        conn.pragma_update(None, "user_version", SCHEMA_VERSION + 1)
            .unwrap();
        let err = migrate(&mut conn, MIGRATIONS).unwrap_err();
        let text = err.to_string();
        assert!(text.contains("inhouse 9.4.1 or newer"), "{text}");
        assert!(
            text.contains(&format!("schema version {}", SCHEMA_VERSION + 1)),
            "{text}"
        );
    }
}
