//! Store tests on real SQLite files in temporary directories.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use rusqlite::params;

use super::*;
use crate::crypto::{to_hex, MasterKey};

fn key(b: u8) -> MasterKey {
    MasterKey::from_bytes(&[b; 32])
}

fn rec(uid: u32, prompt: &str, response: &str) -> NewRecord {
    NewRecord {
        uid,
        model: "smollm2-135m".into(),
        params_json: r#"{"temperature":0.7,"max_tokens":64}"#.into(),
        created_at: 1_700_000_000,
        finished_at: Some(1_700_000_002),
        prompt_tokens: 12,
        completion_tokens: 34,
        status: RequestStatus::Completed,
        prompt_text: prompt.into(),
        response_text: response.into(),
    }
}

struct Fixture {
    _dir: tempfile::TempDir,
    db: PathBuf,
}

fn fixture() -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("inhouse.db");
    Fixture { _dir: dir, db }
}

/// The raw bytes of the database file and, when present, its WAL and shared-memory files.
fn raw_files(db: &Path) -> Vec<(String, Vec<u8>)> {
    ["", "-wal", "-shm"]
        .iter()
        .filter_map(|suffix| {
            let p = PathBuf::from(format!("{}{suffix}", db.display()));
            std::fs::read(&p).ok().map(|b| (p.display().to_string(), b))
        })
        .collect()
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    !needle.is_empty() && haystack.windows(needle.len()).any(|w| w == needle)
}

/// Panics if any of the files holds `needle`, naming the file and `what`.
fn assert_absent(db: &Path, needle: &[u8], what: &str) {
    for (name, bytes) in raw_files(db) {
        assert!(!contains(&bytes, needle), "{what} found in {name}");
    }
}

/// Standard base64 without padding of `data`, for the canary search.
fn base64(data: &[u8]) -> String {
    const A: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::new();
    for chunk in data.chunks(3) {
        let b = [
            chunk[0],
            *chunk.get(1).unwrap_or(&0),
            *chunk.get(2).unwrap_or(&0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..=chunk.len() {
            out.push(A[((n >> (18 - 6 * i)) & 63) as usize] as char);
        }
    }
    out
}

/// Every encoding of `canary` that `grep -a` could find: UTF-8, UTF-16 (both byte orders),
/// hex (both cases) and base64 at each of the three byte alignments (the inner part of the
/// encoding, which does not depend on neighbouring bytes).
fn encodings(canary: &str) -> Vec<(String, Vec<u8>)> {
    let mut out = vec![("utf-8".to_string(), canary.as_bytes().to_vec())];
    let le: Vec<u8> = canary.encode_utf16().flat_map(u16::to_le_bytes).collect();
    let be: Vec<u8> = canary.encode_utf16().flat_map(u16::to_be_bytes).collect();
    out.push(("utf-16le".into(), le));
    out.push(("utf-16be".into(), be));
    let hex = to_hex(canary.as_bytes());
    out.push(("hex".into(), hex.clone().into_bytes()));
    out.push(("HEX".into(), hex.to_uppercase().into_bytes()));
    for pad in 0..3usize {
        let mut data = vec![b'x'; pad];
        data.extend_from_slice(canary.as_bytes());
        let enc = base64(&data);
        // Drop the characters that mix in the padding bytes and the last, partial group.
        let start = (pad * 4).div_ceil(3) + 1;
        let inner = &enc[start..enc.len() - 4];
        out.push((format!("base64+{pad}"), inner.as_bytes().to_vec()));
    }
    out
}

#[test]
fn base64_helper_matches_known_vectors() {
    assert_eq!(base64(b"foobar"), "Zm9vYmFy");
    assert_eq!(base64(b"fooba"), "Zm9vYmE");
    assert_eq!(base64(b"f"), "Zg");
}

#[test]
fn connection_settings_and_file_mode() {
    let fx = fixture();
    let store = Store::open(&fx.db, key(1)).unwrap();
    let get = |pragma: &str| -> String {
        store
            .conn
            .query_row(&format!("PRAGMA {pragma}"), [], |r| {
                r.get::<_, rusqlite::types::Value>(0)
            })
            .map(|v| match v {
                rusqlite::types::Value::Integer(i) => i.to_string(),
                rusqlite::types::Value::Text(t) => t,
                other => format!("{other:?}"),
            })
            .unwrap()
    };
    assert_eq!(get("journal_mode"), "wal");
    assert_eq!(get("synchronous"), "2"); // FULL
    assert_eq!(get("foreign_keys"), "1");
    assert_eq!(get("secure_delete"), "1");
    assert_eq!(get("user_version"), SCHEMA_VERSION.to_string());
    let mode = std::fs::metadata(&fx.db).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);
    assert!(format!("{store:?}").contains(&store.active_key_id().to_hex()));
}

#[test]
fn record_round_trip_and_history_ownership() {
    let fx = fixture();
    let mut store = Store::open(&fx.db, key(1)).unwrap();
    let a1 = store
        .record_request(&rec(1000, "alice one", "reply a1"))
        .unwrap();
    let b1 = store
        .record_request(&rec(2000, "bob one", "reply b1"))
        .unwrap();
    let a2 = store
        .record_request(&rec(1000, "alice two", "reply a2"))
        .unwrap();
    let a3 = store
        .record_request(&rec(1000, "alice three", "reply a3"))
        .unwrap();
    assert!(a1 < b1 && b1 < a2 && a2 < a3);

    let r = store.get_history(1000, a2).unwrap();
    assert_eq!(r.prompt_text, "alice two");
    assert_eq!(r.response_text, "reply a2");
    assert_eq!(r.meta.uid, 1000);
    assert_eq!(r.meta.status, RequestStatus::Completed);
    assert_eq!(r.meta.prompt_tokens, 12);
    assert_eq!(r.meta.finished_at, Some(1_700_000_002));
    let dbg = format!("{r:?}");
    assert!(
        !dbg.contains("alice two") && !dbg.contains("reply a2"),
        "{dbg}"
    );
    assert!(!format!("{:?}", rec(1, "secret p", "secret r")).contains("secret"));

    // Listing: only the caller's, newest first, paginated by before_id.
    let page: Vec<i64> = store
        .list_history(1000, 2, None)
        .unwrap()
        .iter()
        .map(|m| m.id)
        .collect();
    assert_eq!(page, [a3, a2]);
    let page: Vec<i64> = store
        .list_history(1000, 2, Some(a2))
        .unwrap()
        .iter()
        .map(|m| m.id)
        .collect();
    assert_eq!(page, [a1]);
    let bobs = store.list_history(2000, 100, None).unwrap();
    assert_eq!(bobs.len(), 1);
    assert_eq!(bobs[0].id, b1);
    assert!(store.list_history(3000, 100, None).unwrap().is_empty());

    // Another uid's record is "not found", to read and to delete.
    let err = store.get_history(1000, b1).unwrap_err();
    assert!(matches!(err, StoreError::NotFound { id } if id == b1));
    assert_eq!(err.kind(), "not_found");
    assert!(matches!(
        store.delete_history(1000, b1),
        Err(StoreError::NotFound { .. })
    ));
    assert_eq!(store.get_history(2000, b1).unwrap().prompt_text, "bob one");

    store.delete_history(1000, a2).unwrap();
    assert!(matches!(
        store.get_history(1000, a2),
        Err(StoreError::NotFound { .. })
    ));
    assert!(matches!(
        store.delete_history(1000, a2),
        Err(StoreError::NotFound { .. })
    ));
    // Ids are never reused, even after deleting the newest.
    store.delete_history(1000, a3).unwrap();
    let a4 = store
        .record_request(&rec(1000, "alice four", "reply a4"))
        .unwrap();
    assert!(a4 > a3);

    let err = store
        .record_request(&NewRecord {
            params_json: "{not json".into(),
            ..rec(1000, "p", "r")
        })
        .unwrap_err();
    assert_eq!(err.kind(), "invalid_input");
}

#[test]
fn canary_never_reaches_the_disk() {
    let fx = fixture();
    let mut nonce = [0u8; 8];
    crate::crypto::random_fill(&mut nonce).unwrap();
    let canary = format!("CANARY-{}-zebra-quartz", to_hex(&nonce));
    let mut store = Store::open(&fx.db, key(1)).unwrap();
    for i in 0..20 {
        let prompt = format!(r#"[{{"role":"user","content":"tell me about {canary} #{i}"}}]"#);
        store
            .record_request(&rec(
                1000 + i % 3,
                &prompt,
                &format!("{canary} is a secret {i}"),
            ))
            .unwrap();
    }
    store
        .audit_append("request", Some(1000), r#"{"model":"smollm2-135m"}"#)
        .unwrap();
    // Control: a string stored in clear metadata *is* found by the same search, in the WAL, so
    // the absence of the canary means something.
    let control = format!("CONTROL-{}", to_hex(&nonce));
    store
        .record_request(&NewRecord {
            model: control.clone(),
            ..rec(5000, "p", "r")
        })
        .unwrap();
    assert!(raw_files(&fx.db)
        .iter()
        .any(|(_, b)| contains(b, control.as_bytes())));

    let check = |when: &str| {
        for (name, needle) in encodings(&canary) {
            assert_absent(&fx.db, &needle, &format!("canary ({name}, {when})"));
        }
    };
    // Before any checkpoint the new pages are only in the WAL: make sure it is really there.
    let wal = std::fs::metadata(format!("{}-wal", fx.db.display())).unwrap();
    assert!(
        wal.len() > 0,
        "the WAL should hold the records before a checkpoint"
    );
    check("in the WAL");
    assert!(store.checkpoint_truncate().unwrap());
    check("after a checkpoint");
    // And the records still read.
    let id = store.list_history(1000, 1, None).unwrap()[0].id;
    assert!(store
        .get_history(1000, id)
        .unwrap()
        .prompt_text
        .contains(&canary));
    drop(store);
    check("after close");
}

#[test]
fn flipped_byte_fails_only_that_record() {
    let fx = fixture();
    let mut store = Store::open(&fx.db, key(1)).unwrap();
    let ids: Vec<i64> = (0..3)
        .map(|i| {
            store
                .record_request(&rec(1000, &format!("prompt {i}"), "resp"))
                .unwrap()
        })
        .collect();
    let ct: Vec<u8> = store
        .conn
        .query_row(
            "SELECT prompt_ct FROM requests WHERE id = ?1",
            [ids[1]],
            |r| r.get(0),
        )
        .unwrap();
    for pos in [0, 5, 20, ct.len() - 1] {
        let mut bad = ct.clone();
        bad[pos] ^= 0x80;
        store
            .conn
            .execute(
                "UPDATE requests SET prompt_ct = ?1 WHERE id = ?2",
                params![bad, ids[1]],
            )
            .unwrap();
        let err = store.get_history(1000, ids[1]).unwrap_err();
        assert!(
            matches!(err, StoreError::Integrity { id } if id == ids[1]),
            "{err}"
        );
        assert_eq!(err.kind(), "integrity_error");
        assert!(err.to_string().contains(&ids[1].to_string()));
        // The others still read, and the listing still shows the damaged one's metadata.
        assert_eq!(
            store.get_history(1000, ids[0]).unwrap().prompt_text,
            "prompt 0"
        );
        assert_eq!(
            store.get_history(1000, ids[2]).unwrap().prompt_text,
            "prompt 2"
        );
        assert_eq!(store.list_history(1000, 10, None).unwrap().len(), 3);
    }
    // Damage in the response column is caught too.
    store
        .conn
        .execute(
            "UPDATE requests SET response_ct = x'00' WHERE id = ?1",
            [ids[0]],
        )
        .unwrap();
    assert!(matches!(
        store.get_history(1000, ids[0]),
        Err(StoreError::Integrity { .. })
    ));
    assert!(store.integrity_check().unwrap());
}

#[test]
fn ciphertext_copied_elsewhere_fails() {
    let fx = fixture();
    let mut store = Store::open(&fx.db, key(1)).unwrap();
    let a = store
        .record_request(&rec(1000, "prompt a", "response a"))
        .unwrap();
    let b = store
        .record_request(&rec(1000, "prompt b", "response b"))
        .unwrap();
    let other = store
        .record_request(&rec(2000, "prompt o", "response o"))
        .unwrap();
    let copy = |store: &Store, sql: &str| {
        store.conn.execute(sql, []).unwrap();
    };
    // Another row of the same user.
    copy(&store, &format!("UPDATE requests SET prompt_ct = (SELECT prompt_ct FROM requests WHERE id = {a}) WHERE id = {b}"));
    assert!(matches!(store.get_history(1000, b), Err(StoreError::Integrity { id }) if id == b));
    // Another column of the same row.
    copy(
        &store,
        &format!("UPDATE requests SET response_ct = prompt_ct WHERE id = {a}"),
    );
    assert!(matches!(store.get_history(1000, a), Err(StoreError::Integrity { id }) if id == a));
    // A row moved to another user (ciphertext and all).
    copy(
        &store,
        &format!("UPDATE requests SET uid = 1000 WHERE id = {other}"),
    );
    assert!(matches!(
        store.get_history(1000, other),
        Err(StoreError::Integrity { .. })
    ));
    // A wrapped data key copied to another user.
    copy(&store, "UPDATE users_keys SET wrapped_dek = (SELECT wrapped_dek FROM users_keys WHERE uid = 1000) WHERE uid = 2000");
    copy(
        &store,
        &format!("UPDATE requests SET uid = 2000 WHERE id = {other}"),
    );
    assert!(matches!(
        store.get_history(2000, other),
        Err(StoreError::Integrity { .. })
    ));
}

#[test]
fn wrong_key_is_refused_with_both_key_ids() {
    let fx = fixture();
    let good = key(1);
    let good_id = good.id();
    drop(Store::open(&fx.db, good).unwrap());
    let bad = key(2);
    let bad_id = bad.id();
    let err = Store::open(&fx.db, bad).unwrap_err();
    assert_eq!(err.kind(), "wrong_key");
    let msg = err.to_string();
    assert!(
        msg.contains(&good_id.to_hex()) && msg.contains(&bad_id.to_hex()),
        "{msg}"
    );
    assert!(msg.contains("--key-file"), "{msg}");
    // No key bytes in the message or the debug output.
    for text in [msg, format!("{err:?}")] {
        assert!(
            !text.contains("0202020202") && !text.contains("0101010101"),
            "{text}"
        );
    }
    // The right key still opens it.
    Store::open(&fx.db, key(1)).unwrap();
}

#[test]
fn tampered_key_check_is_refused() {
    let fx = fixture();
    drop(Store::open(&fx.db, key(1)).unwrap());
    {
        let conn = rusqlite::Connection::open(&fx.db).unwrap();
        let mut ct: Vec<u8> = conn
            .query_row("SELECT check_ct FROM key_check", [], |r| r.get(0))
            .unwrap();
        ct[20] ^= 1;
        conn.execute("UPDATE key_check SET check_ct = ?1", [ct])
            .unwrap();
    }
    let err = Store::open(&fx.db, key(1)).unwrap_err();
    assert_eq!(err.kind(), "wrong_key");
    assert!(
        err.to_string().contains("key-check record does not open"),
        "{err}"
    );
}

#[test]
fn newer_schema_is_refused_on_open() {
    let fx = fixture();
    drop(Store::open(&fx.db, key(1)).unwrap());
    rusqlite::Connection::open(&fx.db)
        .unwrap()
        .pragma_update(None, "user_version", 99)
        .unwrap();
    let err = Store::open(&fx.db, key(1)).unwrap_err();
    assert!(
        matches!(err, StoreError::TooNew { found: 99, supported, .. } if supported == SCHEMA_VERSION)
    );
}

/// A frozen copy of migrations/0001_init.sql as first released (testdata/schema_v1.sql). Never
/// update it: it is what databases in the field were created with.
const FROZEN_V1: &str = include_str!("testdata/schema_v1.sql");

#[test]
fn released_migration_was_not_edited() {
    assert_eq!(
        MIGRATIONS[0].sql, FROZEN_V1,
        "migrations/0001_init.sql changed after release: add a new migration instead"
    );
}

#[test]
fn upgrade_from_frozen_v1() {
    let fx = fixture();
    let v1 = [Migration {
        version: 1,
        sql: FROZEN_V1,
    }];
    let ids: Vec<i64> = {
        let mut store = Store::open_with_migrations(&fx.db, key(1), &v1).unwrap();
        let ids = (0..5)
            .map(|i| {
                store
                    .record_request(&rec(1000 + i % 2, &format!("v1 prompt {i}"), "v1 reply"))
                    .unwrap()
            })
            .collect();
        store.audit_append("request", Some(1000), "{}").unwrap();
        let v: u32 = store
            .conn
            .pragma_query_value(None, "user_version", |r| r.get(0))
            .unwrap();
        assert_eq!(v, 1);
        ids
    };
    let mut store = Store::open(&fx.db, key(1)).unwrap();
    let v: u32 = store
        .conn
        .pragma_query_value(None, "user_version", |r| r.get(0))
        .unwrap();
    assert_eq!(v, SCHEMA_VERSION);
    let indexes: Vec<String> = store
        .conn
        .prepare("SELECT name FROM sqlite_schema WHERE type = 'index' AND name NOT LIKE 'sqlite_%' ORDER BY name")
        .unwrap()
        .query_map([], |r| r.get(0))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    assert_eq!(
        indexes,
        [
            "chunks_by_file",
            "files_by_uid",
            "requests_created_at",
            "requests_uid_id",
            "responses_by_uid",
            "users_keys_key_id",
            "vector_store_files_by_file",
            "vector_stores_by_uid"
        ]
    );
    // The history query uses the new index.
    let plan: String = store
        .conn
        .query_row(
            "EXPLAIN QUERY PLAN SELECT id FROM requests WHERE uid = 1 AND id < 9 ORDER BY id DESC LIMIT 5",
            [],
            |r| r.get(3),
        )
        .unwrap();
    assert!(plan.contains("requests_uid_id"), "{plan}");
    for (i, id) in ids.iter().enumerate() {
        let r = store.get_history(1000 + i as u32 % 2, *id).unwrap();
        assert_eq!(r.prompt_text, format!("v1 prompt {i}"));
    }
    store
        .record_request(&rec(1000, "v2 prompt", "v2 reply"))
        .unwrap();
    assert!(store.audit_verify().unwrap().is_ok());
    assert!(store.integrity_check().unwrap());
}

#[test]
fn erase_uid_shreds_the_key_and_leaves_no_wrapped_bytes() {
    let fx = fixture();
    let mut store = Store::open(&fx.db, key(1)).unwrap();
    let ids: Vec<i64> = (0..4)
        .map(|i| {
            store
                .record_request(&rec(1000, &format!("erase me {i}"), "gone"))
                .unwrap()
        })
        .collect();
    let keep = store.record_request(&rec(2000, "keep me", "kept")).unwrap();
    let wrapped: Vec<u8> = store
        .conn
        .query_row(
            "SELECT wrapped_dek FROM users_keys WHERE uid = 1000",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(wrapped.len(), 61);
    let (old_prompt, old_response): (Vec<u8>, Vec<u8>) = store
        .conn
        .query_row(
            "SELECT prompt_ct, response_ct FROM requests WHERE id = ?1",
            [ids[0]],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .unwrap();
    // The wrapped key really is on disk before the erase (so the absence check means something).
    assert!(raw_files(&fx.db).iter().any(|(_, b)| contains(b, &wrapped)));

    let report = store.erase_uid(1000).unwrap();
    assert_eq!(
        report,
        EraseReport {
            keys_destroyed: 1,
            requests_deleted: 4,
            knowledge_deleted: 0,
            wal_truncated: true
        }
    );
    assert_absent(&fx.db, &wrapped, "wrapped data key after erase");
    assert_absent(&fx.db, &old_prompt, "erased ciphertext");
    assert_eq!(
        std::fs::metadata(format!("{}-wal", fx.db.display()))
            .unwrap()
            .len(),
        0
    );

    for id in &ids {
        assert!(matches!(
            store.get_history(1000, *id),
            Err(StoreError::NotFound { .. })
        ));
    }
    assert!(store.list_history(1000, 10, None).unwrap().is_empty());
    assert_eq!(
        store.get_history(2000, keep).unwrap().prompt_text,
        "keep me"
    );

    // Even with the master key, the old ciphertexts no longer open: put one back (as if from a
    // backup of the rows) under a uid that has a fresh data key.
    store
        .record_request(&rec(1000, "after erase", "new key"))
        .unwrap();
    store
        .conn
        .execute(
            "INSERT INTO requests (id, uid, model, params_json, created_at, prompt_tokens,
                 completion_tokens, status, prompt_ct, response_ct)
             VALUES (?1, 1000, 'm', '{}', 1, 0, 0, 'completed', ?2, ?3)",
            params![ids[0], old_prompt, old_response],
        )
        .unwrap();
    assert!(matches!(
        store.get_history(1000, ids[0]),
        Err(StoreError::Integrity { .. })
    ));

    let kinds: Vec<String> = store
        .conn
        .prepare("SELECT kind FROM audit ORDER BY seq")
        .unwrap()
        .query_map([], |r| r.get(0))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    assert_eq!(kinds, ["store_created", "data_key_destroyed", "uid_erased"]);
    // Erasing again is harmless.
    assert_eq!(store.erase_uid(4242).unwrap().keys_destroyed, 0);
    assert!(store.audit_verify().unwrap().is_ok());
}

#[test]
fn interrupted_erase_is_finished_at_open() {
    let fx = fixture();
    let mut store = Store::open(&fx.db, key(1)).unwrap();
    let gone = store.record_request(&rec(1000, "to erase", "r")).unwrap();
    let kept = store.record_request(&rec(2000, "to keep", "r")).unwrap();
    // The first step of erase_uid, then a crash before the second.
    store
        .conn
        .execute_batch(
            "DELETE FROM users_keys WHERE uid = 1000;
             INSERT INTO meta (key, value) VALUES ('erase_pending:1000', '0');",
        )
        .unwrap();
    assert!(matches!(
        store.get_history(1000, gone),
        Err(StoreError::NotFound { .. })
    ));
    drop(store);
    let store = Store::open(&fx.db, key(1)).unwrap();
    assert!(store.list_history(1000, 10, None).unwrap().is_empty());
    assert_eq!(
        store.get_history(2000, kept).unwrap().prompt_text,
        "to keep"
    );
    let markers: i64 = one(
        &store,
        "SELECT count(*) FROM meta WHERE key LIKE 'erase_pending:%'",
    );
    assert_eq!(markers, 0);
    let last_kind: String = one(&store, "SELECT kind FROM audit ORDER BY seq DESC LIMIT 1");
    assert_eq!(last_kind, "uid_erased");
}

/// The single value a query returns.
fn one<T: rusqlite::types::FromSql>(store: &Store, sql: &str) -> T {
    store.conn.query_row(sql, [], |r| r.get(0)).unwrap()
}

#[test]
fn erase_finished_at_open_keeps_records_written_after_it() {
    let fx = fixture();
    let mut store = Store::open(&fx.db, key(1)).unwrap();
    let old: Vec<i64> = (0..3)
        .map(|i| {
            store
                .record_request(&rec(1000, &format!("old {i}"), "r"))
                .unwrap()
        })
        .collect();
    let other = store.record_request(&rec(2000, "other uid", "r")).unwrap();
    // The second step of erase_uid (purging the rows) fails; the first is committed.
    store
        .conn
        .execute_batch(
            "CREATE TEMP TRIGGER no_delete BEFORE DELETE ON main.requests
             BEGIN SELECT RAISE(ABORT, 'injected failure (test)'); END;",
        )
        .unwrap();
    assert!(store.erase_uid(1000).is_err());
    store
        .conn
        .execute_batch("DROP TRIGGER temp.no_delete;")
        .unwrap();
    let marker: String = store
        .conn
        .query_row(
            "SELECT value FROM meta WHERE key = 'erase_pending:1000'",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(marker, format!("max_id:{}", old[2]));
    for id in &old {
        assert!(matches!(
            store.get_history(1000, *id),
            Err(StoreError::NotFound { .. })
        ));
    }
    // The user keeps working: a new data key, a new record.
    let new = store
        .record_request(&rec(1000, "after the erase", "r"))
        .unwrap();
    drop(store);

    // Finishing the erase at open purges the old rows only.
    let store = Store::open(&fx.db, key(1)).unwrap();
    let left: Vec<i64> = store
        .list_history(1000, 10, None)
        .unwrap()
        .iter()
        .map(|m| m.id)
        .collect();
    assert_eq!(left, [new]);
    assert_eq!(
        store.get_history(1000, new).unwrap().prompt_text,
        "after the erase"
    );
    assert_eq!(
        store.get_history(2000, other).unwrap().prompt_text,
        "other uid"
    );
    let markers: i64 = one(
        &store,
        "SELECT count(*) FROM meta WHERE key LIKE 'erase_pending:%'",
    );
    assert_eq!(markers, 0);
    let erased: String = one(
        &store,
        "SELECT detail_json FROM audit WHERE kind = 'uid_erased'",
    );
    let erased: serde_json::Value = serde_json::from_str(&erased).unwrap();
    assert_eq!(
        erased,
        serde_json::json!({"requests_deleted": 3, "uid": 1000})
    );
    assert!(store.audit_verify().unwrap().is_ok());
}

#[test]
fn purge_older_than_deletes_old_records() {
    let fx = fixture();
    let mut store = Store::open(&fx.db, key(1)).unwrap();
    for t in [100, 200, 300] {
        store
            .record_request(&NewRecord {
                created_at: t,
                ..rec(1000, "p", "r")
            })
            .unwrap();
    }
    assert_eq!(store.oldest_record_time().unwrap(), Some(100));
    assert_eq!(store.purge_older_than(250).unwrap(), 2);
    assert_eq!(store.purge_older_than(250).unwrap(), 0);
    let left = store.list_history(1000, 10, None).unwrap();
    assert_eq!(left.len(), 1);
    assert_eq!(left[0].created_at, 300);
    assert!(store.audit_verify().unwrap().is_ok());
}

/// The `deleted` count of each `retention_purge` audit row, oldest first.
fn retention_events(store: &Store) -> Vec<i64> {
    store
        .conn
        .prepare("SELECT detail_json FROM audit WHERE kind = 'retention_purge' ORDER BY seq")
        .unwrap()
        .query_map([], |r| r.get::<_, String>(0))
        .unwrap()
        .map(|d| {
            let d: serde_json::Value = serde_json::from_str(&d.unwrap()).unwrap();
            assert_eq!(d["cutoff"], 250, "{d}");
            d["deleted"].as_i64().unwrap()
        })
        .collect()
}

#[test]
fn purge_older_than_logs_each_batch_in_its_own_transaction() {
    let fx = fixture();
    let mut store = Store::open(&fx.db, key(1)).unwrap();
    let first = store
        .record_request(&NewRecord {
            created_at: 100,
            ..rec(1000, "p", "r")
        })
        .unwrap();
    // 2499 more old rows, copied in SQL (nothing decrypts them).
    store
        .conn
        .execute(
            "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 2499)
             INSERT INTO requests (uid, model, params_json, created_at, finished_at,
                 prompt_tokens, completion_tokens, status, prompt_ct, response_ct)
             SELECT uid, model, params_json, created_at, finished_at, prompt_tokens,
                 completion_tokens, status, prompt_ct, response_ct
             FROM requests, n WHERE requests.id = ?1",
            [first],
        )
        .unwrap();
    let kept = store
        .record_request(&NewRecord {
            created_at: 300,
            ..rec(1000, "kept", "r")
        })
        .unwrap();

    // A batch whose audit event cannot be written deletes nothing.
    store
        .conn
        .execute_batch(
            "CREATE TEMP TRIGGER no_audit BEFORE INSERT ON main.audit
             BEGIN SELECT RAISE(ABORT, 'injected failure (test)'); END;",
        )
        .unwrap();
    assert!(store.purge_older_than(250).is_err());
    store
        .conn
        .execute_batch("DROP TRIGGER temp.no_audit;")
        .unwrap();
    let rows: i64 = store
        .conn
        .query_row("SELECT count(*) FROM requests", [], |r| r.get(0))
        .unwrap();
    assert_eq!(rows, 2501);
    assert!(retention_events(&store).is_empty());

    // One audit event per batch, each with its own count; none for an empty purge.
    assert_eq!(store.purge_older_than(250).unwrap(), 2500);
    assert_eq!(retention_events(&store), [1000, 1000, 500]);
    assert_eq!(store.purge_older_than(250).unwrap(), 0);
    assert_eq!(retention_events(&store), [1000, 1000, 500]);
    let left = store.list_history(1000, 10, None).unwrap();
    assert_eq!(left.iter().map(|m| m.id).collect::<Vec<_>>(), [kept]);
    assert!(store.audit_verify().unwrap().is_ok());
}

/// Records for `users` uids, two each; returns (uid, id, prompt) triples.
fn populate(store: &mut Store, users: u32) -> Vec<(u32, i64, String)> {
    let mut out = Vec::new();
    for uid in 0..users {
        for j in 0..2 {
            let prompt = format!("user {uid} prompt {j}");
            let id = store.record_request(&rec(uid, &prompt, "reply")).unwrap();
            out.push((uid, id, prompt));
        }
    }
    out
}

fn assert_all_read(store: &Store, records: &[(u32, i64, String)]) {
    for (uid, id, prompt) in records {
        assert_eq!(&store.get_history(*uid, *id).unwrap().prompt_text, prompt);
    }
}

#[test]
fn rotate_then_reopen_with_only_the_new_key() {
    let fx = fixture();
    let mut store = Store::open(&fx.db, key(1)).unwrap();
    let records = populate(&mut store, 5);
    store
        .audit_append("request", Some(1), r#"{"n":1}"#)
        .unwrap();
    let status = store.rotate_key(key(2)).unwrap();
    assert!(status.finished);
    assert_eq!(
        (status.old_key_id, status.new_key_id),
        (key(1).id(), key(2).id())
    );
    assert_eq!((status.rewrapped, status.remaining), (5, 0));
    assert_eq!(store.active_key_id(), key(2).id());
    store
        .audit_append("request", Some(1), r#"{"n":2}"#)
        .unwrap();
    drop(store);

    // The old key is refused, and told why.
    let err = Store::open(&fx.db, key(1)).unwrap_err();
    assert_eq!(err.kind(), "wrong_key");
    assert!(err.to_string().contains("retired"), "{err}");

    let mut store = Store::open(&fx.db, key(2)).unwrap();
    assert_eq!(store.rotation_status().unwrap(), None);
    assert_all_read(&store, &records);
    let report = store.audit_verify().unwrap();
    assert!(report.is_ok(), "{:?}", report.first_fault);
    let key_ids: Vec<String> = store
        .conn
        .prepare("SELECT DISTINCT key_id FROM users_keys UNION SELECT key_id FROM key_check")
        .unwrap()
        .query_map([], |r| r.get(0))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    assert_eq!(key_ids, [key(2).id().to_hex()]);

    // A second rotation keeps the first epoch of the audit chain verifiable.
    store.rotate_key(key(3)).unwrap();
    store
        .audit_append("request", Some(1), r#"{"n":3}"#)
        .unwrap();
    drop(store);
    let store = Store::open(&fx.db, key(3)).unwrap();
    assert_all_read(&store, &records);
    let report = store.audit_verify().unwrap();
    assert!(report.is_ok(), "{:?}", report.first_fault);
    let epochs: i64 = store
        .conn
        .query_row("SELECT count(DISTINCT key_id) FROM audit", [], |r| r.get(0))
        .unwrap();
    assert_eq!(epochs, 3);
}

#[test]
fn rotation_resumes_after_a_crash_with_either_key() {
    let fx = fixture();
    let mut store = Store::open(&fx.db, key(1)).unwrap();
    let records = populate(&mut store, 10);
    store.fail_rotation_after = Some(1);
    store.begin_rotation(key(2)).unwrap();
    let first = store.rotation_step(3).unwrap();
    assert_eq!(
        (first.rewrapped, first.remaining, first.finished),
        (3, 7, false)
    );
    let err = store.rotation_step(3).unwrap_err();
    assert!(err.to_string().contains("injected"), "{err}");
    let cross_wrapped: Vec<u8> = store
        .conn
        .query_row("SELECT new_master_by_old FROM key_rotation", [], |r| {
            r.get(0)
        })
        .unwrap();
    assert!(raw_files(&fx.db)
        .iter()
        .any(|(_, b)| contains(b, &cross_wrapped)));
    drop(store); // the "crash"

    // Mid-rotation the old key opens the store and everything reads...
    let mut store = Store::open(&fx.db, key(1)).unwrap();
    let status = store.rotation_status().unwrap().unwrap();
    assert_eq!((status.rewrapped, status.remaining), (3, 7));
    assert_all_read(&store, &records);
    // ...new data keys go under the new key...
    let late = store
        .record_request(&rec(99, "late user", "reply"))
        .unwrap();
    // ...and a different third key is refused while the rotation is unfinished.
    assert_eq!(
        store.begin_rotation(key(3)).unwrap_err().kind(),
        "rotation_conflict"
    );
    drop(store);
    let err = Store::open(&fx.db, key(3)).unwrap_err();
    assert!(
        err.to_string().contains(&key(1).id().to_hex())
            && err.to_string().contains(&key(2).id().to_hex())
    );

    // So does the new key, which resumes and finishes the rotation.
    let mut store = Store::open(&fx.db, key(2)).unwrap();
    assert_all_read(&store, &records);
    let done = store.resume_rotation().unwrap();
    assert!(done.finished);
    assert_eq!((done.rewrapped, done.remaining), (10, 0));
    drop(store);

    assert_eq!(Store::open(&fx.db, key(1)).unwrap_err().kind(), "wrong_key");
    let store = Store::open(&fx.db, key(2)).unwrap();
    assert_all_read(&store, &records);
    assert_eq!(
        store.get_history(99, late).unwrap().prompt_text,
        "late user"
    );
    assert!(store.audit_verify().unwrap().is_ok());
    drop(store);
    // The cross-wrapped master keys are gone from the file and the WAL.
    assert_absent(
        &fx.db,
        &cross_wrapped,
        "cross-wrapped master key after rotation",
    );
}

#[test]
fn rotation_refuses_active_and_retired_keys() {
    let fx = fixture();
    let mut store = Store::open(&fx.db, key(1)).unwrap();
    assert_eq!(
        store.rotate_key(key(1)).unwrap_err().kind(),
        "rotation_conflict"
    );
    assert_eq!(
        store.rotation_step(10).unwrap_err().kind(),
        "rotation_conflict"
    );
    // A store with no data keys rotates in one step.
    assert!(store.rotate_key(key(2)).unwrap().finished);
    let err = store.rotate_key(key(1)).unwrap_err();
    assert!(err.to_string().contains("retired"), "{err}");
    // Beginning again with the key in progress just reports it.
    store.begin_rotation(key(3)).unwrap();
    let again = store.begin_rotation(key(3)).unwrap();
    assert_eq!(again.new_key_id, key(3).id());
    assert!(store.resume_rotation().unwrap().finished);
}

/// A store with `n` audit rows (seq 1 is `store_created`), and the connection to tamper with.
fn audited_store(fx: &Fixture, n: i64) -> Store {
    let mut store = Store::open(&fx.db, key(1)).unwrap();
    for i in 2..=n {
        let detail = serde_json::json!({ "i": i }).to_string();
        assert_eq!(
            store.audit_append("request", Some(1000), &detail).unwrap(),
            i
        );
    }
    store
}

#[test]
fn audit_verify_passes_untouched() {
    let fx = fixture();
    let store = audited_store(&fx, 8);
    let report = store.audit_verify().unwrap();
    assert!(report.is_ok());
    assert_eq!(report.rows_checked, 8);
    assert_eq!(report.head_seq, Some(8));
    assert_eq!(report.head_mac.as_ref().map(String::len), Some(64));
}

#[test]
fn audit_verify_names_a_modified_row() {
    let fx = fixture();
    let store = audited_store(&fx, 8);
    store
        .conn
        .execute(
            r#"UPDATE audit SET detail_json = '{"i":40}' WHERE seq = 4"#,
            [],
        )
        .unwrap();
    let fault = store.audit_verify().unwrap().first_fault.unwrap();
    assert_eq!(
        fault,
        AuditFault {
            seq: 4,
            problem: AuditProblem::BadMac
        }
    );
    assert!(fault.to_string().contains("audit row 4"), "{fault}");
    // Changing the actor is caught the same way.
    store
        .conn
        .execute(
            "UPDATE audit SET detail_json = '{\"i\":4}', actor_uid = 0 WHERE seq = 4",
            [],
        )
        .unwrap();
    assert_eq!(store.audit_verify().unwrap().first_fault.unwrap().seq, 4);
}

#[test]
fn audit_verify_names_a_deleted_row() {
    let fx = fixture();
    let store = audited_store(&fx, 8);
    store
        .conn
        .execute("DELETE FROM audit WHERE seq = 4", [])
        .unwrap();
    let report = store.audit_verify().unwrap();
    let fault = report.first_fault.unwrap();
    assert_eq!(
        fault,
        AuditFault {
            seq: 5,
            problem: AuditProblem::Missing { expected_seq: 4 }
        }
    );
    assert!(fault.to_string().contains("row 4"), "{fault}");
    assert_eq!(report.head_seq, Some(8));
    // Deleting the first row is caught as well.
    store
        .conn
        .execute("DELETE FROM audit WHERE seq = 1", [])
        .unwrap();
    let fault = store.audit_verify().unwrap().first_fault.unwrap();
    assert_eq!(fault.problem, AuditProblem::Missing { expected_seq: 1 });
}

#[test]
fn audit_verify_names_swapped_rows() {
    let fx = fixture();
    let store = audited_store(&fx, 8);
    // Swap rows 3 and 5 (everything but their seq), as an attacker reordering events would.
    store
        .conn
        .execute_batch(
            "CREATE TEMP TABLE t AS SELECT * FROM audit WHERE seq IN (3, 5);
             UPDATE audit SET (ts, kind, actor_uid, detail_json, key_id, prev_mac, mac) =
                 (SELECT ts, kind, actor_uid, detail_json, key_id, prev_mac, mac FROM t
                  WHERE t.seq = 8 - audit.seq)
             WHERE seq IN (3, 5);",
        )
        .unwrap();
    let fault = store.audit_verify().unwrap().first_fault.unwrap();
    assert_eq!(
        fault,
        AuditFault {
            seq: 3,
            problem: AuditProblem::BrokenLink
        }
    );
    // Renumbering instead (moving row 5 to seq 3 and back) breaks the MAC.
    let fx2 = fixture();
    let store = audited_store(&fx2, 8);
    store
        .conn
        .execute_batch(
            "UPDATE audit SET seq = -3 WHERE seq = 3;
             UPDATE audit SET seq = 3 WHERE seq = 5;
             UPDATE audit SET seq = 5 WHERE seq = -3;",
        )
        .unwrap();
    assert_eq!(store.audit_verify().unwrap().first_fault.unwrap().seq, 3);
}

#[test]
fn audit_tampering_before_a_rotation_is_found_with_the_new_key() {
    let fx = fixture();
    let mut store = audited_store(&fx, 5);
    store.rotate_key(key(2)).unwrap();
    store.audit_append("request", Some(1), "{}").unwrap();
    drop(store);
    let store = Store::open(&fx.db, key(2)).unwrap();
    assert!(store.audit_verify().unwrap().is_ok());
    store
        .conn
        .execute("UPDATE audit SET ts = ts + 1 WHERE seq = 3", [])
        .unwrap();
    assert_eq!(store.audit_verify().unwrap().first_fault.unwrap().seq, 3);
}

/// A store rotated from key(1) to key(2) with audit rows on both sides, reopened with key(2);
/// and the seq of its `key_rotated` row.
fn rotated_store(fx: &Fixture) -> (Store, i64) {
    let mut store = audited_store(fx, 4);
    store.rotate_key(key(2)).unwrap();
    for i in 0..3 {
        let detail = serde_json::json!({ "after": i }).to_string();
        store.audit_append("request", Some(1000), &detail).unwrap();
    }
    drop(store);
    let store = Store::open(&fx.db, key(2)).unwrap();
    assert!(store.audit_verify().unwrap().is_ok());
    let rotated: i64 = store
        .conn
        .query_row(
            "SELECT seq FROM audit WHERE kind = 'key_rotated'",
            [],
            |r| r.get(0),
        )
        .unwrap();
    (store, rotated)
}

/// Appends a row MACed with the retired key(1), as an attacker holding it would.
fn forge_with_old_key(store: &Store, i: i64) -> i64 {
    let detail = serde_json::json!({ "forged": i }).to_string();
    audit::append_in(
        &store.conn,
        &key(1).audit_key(),
        "request",
        Some(1000),
        &detail,
    )
    .unwrap()
}

#[test]
fn audit_rows_rewritten_with_a_retired_key_are_found() {
    let fx = fixture();
    let (store, rotated) = rotated_store(&fx);
    // Rows after the rotation replaced by rows MACed with the old key.
    store
        .conn
        .execute("DELETE FROM audit WHERE seq > ?1", [rotated])
        .unwrap();
    let first = forge_with_old_key(&store, 1);
    forge_with_old_key(&store, 2);
    let report = store.audit_verify().unwrap();
    let fault = report.first_fault.unwrap();
    assert_eq!(
        fault,
        AuditFault {
            seq: first,
            problem: AuditProblem::RetiredKey {
                key_id: key(1).id().to_hex()
            }
        }
    );
    assert_eq!(fault.seq, rotated + 1);
    assert!(fault.to_string().contains("retired"), "{fault}");
    assert_eq!(
        serde_json::to_value(&fault).unwrap(),
        serde_json::json!({"seq": first, "problem": "retired_key", "key_id": key(1).id().to_hex()})
    );
}

#[test]
fn audit_chain_cut_at_the_rotation_and_remaced_with_the_old_key_is_found() {
    let fx = fixture();
    let (store, rotated) = rotated_store(&fx);
    // The rotation row and everything after it deleted, new rows MACed with the old key: every
    // row verifies by itself, but key_history says key(1) was retired.
    store
        .conn
        .execute("DELETE FROM audit WHERE seq >= ?1", [rotated])
        .unwrap();
    forge_with_old_key(&store, 1);
    let head = forge_with_old_key(&store, 2);
    let report = store.audit_verify().unwrap();
    assert_eq!(report.head_seq, Some(head));
    let fault = report.first_fault.unwrap();
    assert_eq!(
        fault,
        AuditFault {
            seq: head,
            problem: AuditProblem::RotationEventMissing {
                key_id: key(1).id().to_hex()
            }
        }
    );
    assert!(fault.to_string().contains("key_rotated"), "{fault}");
    assert_eq!(
        serde_json::to_value(&fault).unwrap()["problem"],
        "rotation_event_missing"
    );
    // An emptied log is reported at seq 1.
    store.conn.execute("DELETE FROM audit", []).unwrap();
    let fault = store.audit_verify().unwrap().first_fault.unwrap();
    assert_eq!(fault.seq, 1);
    assert!(matches!(
        fault.problem,
        AuditProblem::RotationEventMissing { .. }
    ));
}

#[test]
fn audit_append_validates_and_export_writes_jsonl() {
    let fx = fixture();
    let mut store = audited_store(&fx, 3);
    assert_eq!(
        store.audit_append("", None, "{}").unwrap_err().kind(),
        "invalid_input"
    );
    assert_eq!(
        store
            .audit_append("Bad Kind", None, "{}")
            .unwrap_err()
            .kind(),
        "invalid_input"
    );
    assert_eq!(
        store.audit_append("ok", None, "{oops").unwrap_err().kind(),
        "invalid_input"
    );
    store
        .audit_append("admin.erase", Some(0), r#"{"uid": 1000}"#)
        .unwrap();
    let mut out = Vec::new();
    assert_eq!(store.audit_export(&mut out).unwrap(), 4);
    let lines: Vec<serde_json::Value> = String::from_utf8(out)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 4);
    assert_eq!(lines[0]["seq"], 1);
    assert_eq!(lines[0]["kind"], "store_created");
    assert_eq!(lines[0]["actor_uid"], serde_json::Value::Null);
    assert_eq!(lines[0]["prev_mac"], "0".repeat(64));
    assert_eq!(lines[3]["detail_json"], r#"{"uid": 1000}"#);
    assert_eq!(lines[3]["actor_uid"], 0);
    assert_eq!(lines[3]["prev_mac"], lines[2]["mac"]);
    assert_eq!(lines[3]["key_id"], key(1).id().to_hex());
}

#[test]
fn storage_full_is_reported_and_recovers() {
    let fx = fixture();
    let mut store = Store::open(&fx.db, key(1)).unwrap();
    let first = store
        .record_request(&rec(1000, "before full", "r"))
        .unwrap();
    let pages: i64 = store
        .conn
        .query_row("PRAGMA page_count", [], |r| r.get(0))
        .unwrap();
    // max_page_count makes SQLite answer SQLITE_FULL exactly as a full disk does.
    store
        .conn
        .pragma_update(None, "max_page_count", pages + 4)
        .unwrap();
    let big = "x".repeat(64 * 1024);
    let err = (0..10)
        .find_map(|_| store.record_request(&rec(1000, &big, "r")).err())
        .expect("the store should fill up");
    assert!(matches!(err, StoreError::StorageFull), "{err:?}");
    assert_eq!(err.kind(), "storage_full");
    // Intact and still serving reads.
    assert_eq!(
        store.get_history(1000, first).unwrap().prompt_text,
        "before full"
    );
    assert!(store.integrity_check().unwrap());
    // Writes resume once there is room.
    store
        .conn
        .pragma_update(None, "max_page_count", 1_000_000)
        .unwrap();
    let id = store.record_request(&rec(1000, "after full", "r")).unwrap();
    assert_eq!(
        store.get_history(1000, id).unwrap().prompt_text,
        "after full"
    );
    assert!(store.audit_verify().unwrap().is_ok());
}

#[test]
fn error_kinds_are_stable() {
    let cases: Vec<(StoreError, &str)> = vec![
        (StoreError::Integrity { id: 1 }, "integrity_error"),
        (StoreError::DataKeyIntegrity { uid: 1 }, "integrity_error"),
        (StoreError::NotFound { id: 1 }, "not_found"),
        (StoreError::StorageFull, "storage_full"),
        (
            StoreError::WrongKey {
                expected: "x".into(),
                given: key(1).id(),
                note: String::new(),
            },
            "wrong_key",
        ),
        (
            StoreError::TooNew {
                found: 3,
                supported: 2,
                needs: None,
            },
            "too_new",
        ),
        (StoreError::Rotation("x".into()), "rotation_conflict"),
        (StoreError::InvalidInput("x".into()), "invalid_input"),
        (
            StoreError::Crypto(crate::crypto::CryptoError::Random),
            "crypto_error",
        ),
        (StoreError::Io(std::io::Error::other("x")), "storage_error"),
        (StoreError::Closed, "unavailable"),
        (
            StoreError::from(std::io::Error::from(std::io::ErrorKind::StorageFull)),
            "storage_full",
        ),
    ];
    for (err, kind) in cases {
        assert_eq!(err.kind(), kind, "{err:?}");
    }
}

#[test]
fn handle_is_clone_send_sync() {
    fn assert_traits<T: Clone + Send + Sync + 'static>() {}
    assert_traits::<StoreHandle>();
}

#[tokio::test]
async fn handle_serves_from_its_own_thread() {
    let fx = fixture();
    let handle = StoreHandle::open(fx.db.clone(), key(1)).await.unwrap();
    let thread = handle
        .call(|_| Ok(std::thread::current().name().map(String::from)))
        .await
        .unwrap();
    assert_eq!(thread.as_deref(), Some("inhouse-store"));

    // Concurrent writers through clones.
    let mut tasks = Vec::new();
    for i in 0..8u32 {
        let h = handle.clone();
        tasks.push(tokio::spawn(async move {
            h.record_request(rec(1000 + i % 2, &format!("async {i}"), "r"))
                .await
                .unwrap()
        }));
    }
    let mut ids = Vec::new();
    for t in tasks {
        ids.push(t.await.unwrap());
    }
    assert_eq!(handle.list_history(1000, 100, None).await.unwrap().len(), 4);
    let r = handle.get_history(1001, ids[1]).await.unwrap();
    assert_eq!(r.prompt_text, "async 1");
    assert!(matches!(
        handle.get_history(1000, ids[1]).await,
        Err(StoreError::NotFound { .. })
    ));
    handle.delete_history(1001, ids[1]).await.unwrap();
    handle
        .audit_append("request", Some(1000), "{}")
        .await
        .unwrap();
    assert_eq!(
        handle
            .audit_append("BAD", None, "{}")
            .await
            .unwrap_err()
            .kind(),
        "invalid_input"
    );
    assert_eq!(handle.failed_writes(), 1);

    let status = handle.rotate_key(key(2)).await.unwrap();
    assert!(status.finished);
    assert_eq!(handle.resume_rotation().await.unwrap(), None);
    assert!(handle.audit_verify().await.unwrap().is_ok());
    let (buf, n) = handle.audit_export(Vec::new()).await.unwrap();
    assert_eq!(buf.iter().filter(|&&b| b == b'\n').count() as u64, n);
    assert_eq!(handle.erase_uid(1000).await.unwrap().requests_deleted, 4);
    assert_eq!(handle.purge_older_than(i64::MAX).await.unwrap(), 3);

    // A panicking job does not take the thread down.
    let panicked: Result<(), StoreError> = handle.call(|_| panic!("boom")).await;
    assert!(matches!(panicked, Err(StoreError::Closed)));
    assert!(handle.rotation_status().await.unwrap().is_none());

    let other = handle.clone();
    handle.close().await;
    assert!(matches!(
        other.list_history(1, 1, None).await,
        Err(StoreError::Closed)
    ));

    // The store reopens with the new key only.
    let err = StoreHandle::open(fx.db.clone(), key(2 + 1))
        .await
        .unwrap_err();
    assert_eq!(err.kind(), "wrong_key");
    let reopened = StoreHandle::open(fx.db.clone(), key(2)).await.unwrap();
    assert_eq!(
        reopened.list_history(1001, 10, None).await.unwrap().len(),
        0
    );
}

/// Child side of the SIGKILL test: writes records (and audit rows) forever, printing
/// `ack <uid> <id>` after each commit returns. Ignored unless the parent runs it.
#[test]
#[ignore = "run by sigkill_under_write_load_loses_no_acknowledged_record"]
fn crash_writer_child() {
    use std::io::Write as _;
    let Some(db) = std::env::var_os("INHOUSE_CRASH_DB") else {
        return;
    };
    let mut store = Store::open(PathBuf::from(db), key(1)).unwrap();
    let mut out = std::io::stdout().lock();
    for i in 0u32.. {
        let uid = 1000 + i % 4;
        let id = store
            .record_request(&rec(
                uid,
                &format!("crash prompt {i}"),
                &"y".repeat(i as usize % 3000),
            ))
            .unwrap();
        writeln!(out, "ack {uid} {id}").unwrap();
        out.flush().unwrap();
        if i % 7 == 0 {
            store
                .audit_append("request", Some(uid), r#"{"crash":true}"#)
                .unwrap();
        }
    }
}

#[test]
fn sigkill_under_write_load_loses_no_acknowledged_record() {
    use std::io::BufRead as _;
    let fx = fixture();
    let mut acked: Vec<(u32, i64)> = Vec::new();
    for round in 0..6 {
        let mut r = [0u8; 1];
        crate::crypto::random_fill(&mut r).unwrap();
        let kill_after = 3 + usize::from(r[0]) % 40;
        let mut child = std::process::Command::new(std::env::current_exe().unwrap())
            .args([
                "--exact",
                "storage::tests::crash_writer_child",
                "--ignored",
                "--nocapture",
            ])
            .args(["--test-threads", "1"])
            .env("INHOUSE_CRASH_DB", &fx.db)
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        let mut lines = std::io::BufReader::new(child.stdout.take().unwrap()).lines();
        let mut seen = 0;
        for line in lines.by_ref() {
            let line = line.unwrap();
            if let Some(rest) = line.strip_prefix("ack ") {
                let (uid, id) = rest.split_once(' ').unwrap();
                acked.push((uid.parse().unwrap(), id.parse().unwrap()));
                seen += 1;
                if seen == kill_after {
                    // Somewhere inside the next write (0 to ~1.8 ms later).
                    std::thread::sleep(std::time::Duration::from_micros(u64::from(r[0]) * 7));
                    child.kill().unwrap(); // SIGKILL
                }
            }
        }
        // Lines after the kill were printed after their commit returned: acknowledged too.
        child.wait().unwrap();
        assert!(seen >= kill_after, "round {round}: child died early");

        let store = Store::open(&fx.db, key(1)).unwrap();
        assert!(store.integrity_check().unwrap(), "round {round}");
        for (uid, id) in &acked {
            store.get_history(*uid, *id).unwrap();
        }
        let report = store.audit_verify().unwrap();
        assert!(report.is_ok(), "round {round}: {:?}", report.first_fault);
    }
}

#[test]
fn a_stored_response_is_its_owners_and_goes_with_its_record() {
    let fx = fixture();
    let mut store = Store::open(&fx.db, key(1)).unwrap();
    let first = store.record_request(&rec(1000, "turn one", "a")).unwrap();
    let second = store.record_request(&rec(1000, "turn two", "b")).unwrap();
    let other = store.record_request(&rec(2000, "theirs", "c")).unwrap();
    store.link_response(1000, "resp_1", first, None).unwrap();
    store
        .link_response(1000, "resp_2", second, Some("resp_1"))
        .unwrap();
    // A uid cannot give another uid's record an id.
    assert!(matches!(
        store.link_response(1000, "resp_x", other, None),
        Err(StoreError::NotFound { .. })
    ));
    let found = store.find_response(1000, "resp_2").unwrap().unwrap();
    assert_eq!(found.request_id, second);
    assert_eq!(found.previous_id.as_deref(), Some("resp_1"));
    // Another uid's id, an unknown one and a deleted one look the same: None.
    assert_eq!(store.find_response(2000, "resp_1").unwrap(), None);
    assert_eq!(store.find_response(1000, "resp_nope").unwrap(), None);
    assert!(!store.delete_response(2000, "resp_1").unwrap());
    assert!(store.find_response(1000, "resp_1").unwrap().is_some());
    // Deleting the response deletes its sealed record.
    assert!(store.delete_response(1000, "resp_2").unwrap());
    assert_eq!(store.find_response(1000, "resp_2").unwrap(), None);
    assert!(matches!(
        store.get_history(1000, second),
        Err(StoreError::NotFound { .. })
    ));
    // `history rm` of the record takes the id with it, and erasure takes the rest.
    let third = store.record_request(&rec(1000, "turn three", "d")).unwrap();
    store.link_response(1000, "resp_3", third, None).unwrap();
    store.delete_history(1000, third).unwrap();
    assert_eq!(store.find_response(1000, "resp_3").unwrap(), None);
    store.erase_uid(1000).unwrap();
    assert_eq!(store.find_response(1000, "resp_1").unwrap(), None);
    let left: i64 = one(&store, "SELECT count(*) FROM responses");
    assert_eq!(left, 0);
}

#[test]
fn recording_a_response_links_and_audits_in_one_transaction() {
    let fx = fixture();
    let mut store = Store::open(&fx.db, key(1)).unwrap();
    let link = |id: &str, previous: Option<&str>| crate::storage::ResponseLink {
        id: id.into(),
        previous_id: previous.map(str::to_string),
        input_items: 2,
    };
    let first = store
        .record_response(&rec(1000, "secret turn", "a"), &link("resp_a", None))
        .unwrap();
    store
        .record_response(&rec(1000, "next", "b"), &link("resp_b", Some("resp_a")))
        .unwrap();
    // A duplicate id rolls back the whole transaction: no record without its id.
    let before: i64 = one(&store, "SELECT count(*) FROM requests");
    assert!(store
        .record_response(&rec(1000, "dup", "c"), &link("resp_a", None))
        .is_err());
    assert_eq!(before, one::<i64>(&store, "SELECT count(*) FROM requests"));
    assert_eq!(
        store
            .find_response(1000, "resp_a")
            .unwrap()
            .unwrap()
            .request_id,
        first
    );
    assert!(store.delete_response(1000, "resp_a").unwrap());
    let kinds: Vec<(String, String)> = store
        .conn
        .prepare("SELECT kind, detail_json FROM audit WHERE kind LIKE 'response.%' ORDER BY seq")
        .unwrap()
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
        .unwrap()
        .map(Result::unwrap)
        .collect();
    let names: Vec<&str> = kinds.iter().map(|(k, _)| k.as_str()).collect();
    assert_eq!(
        names,
        ["response.create", "response.continue", "response.delete"]
    );
    assert!(
        kinds[1].1.contains("\"previous_id\":\"resp_a\""),
        "{}",
        kinds[1].1
    );
    // Metadata only: the sealed text never reaches the audit log.
    assert!(kinds.iter().all(|(_, d)| !d.contains("secret")));
    assert!(store.audit_verify().unwrap().is_ok());
}
