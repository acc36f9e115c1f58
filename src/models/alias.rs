//! Aliases and promotion: stable names (`prod`, `staging`) that point at a model, and that are
//! moved, never overwritten.
//!
//! An alias maps to a *target*: a model's name (stored or configured) or `base+adapter`. Clients
//! ask for the alias like any model; the API resolves it once per request, at request time (see
//! [`crate::api::aliases::resolve`]), so moving an alias takes effect on the next request
//! without a restart, and rolling back is setting it to the old target again.
//!
//! The table is the file `<state-dir>/models/aliases.json`, `{"aliases": {"prod": "smol"}}`,
//! next to the manifests it points into: a JSON file rather than a table in the encrypted
//! SQLite store, because the model store is files (blobs and manifests, no database), the names
//! an alias may not take are the manifests' names, and both change under the store's one lock;
//! a copy of `models/` carries its aliases with it. Every write goes through a temporary file in
//! `models/tmp/`, an fsync and a rename, so a crash leaves the old table or the new one, never
//! half of one. The daemon keeps the table in memory (it is the file's only writer) and reads
//! the file once at start-up; a file that does not parse stops the start-up rather than
//! silently serving no aliases.
//!
//! Aliases and model names share one namespace: an alias cannot take a stored model's or
//! adapter's name (nor a configured model's, checked by the API), an import cannot take an
//! alias's name, and a target cannot itself be an alias (no chains: what an alias serves is
//! always one lookup away).
//!
//! Promotion ([`GateStatus`]) moves an alias to a model only when its evaluation gate blessed it:
//! `manifest.provenance.extra.evaluation.gate.blessed == true`, and not registered as a
//! candidate (`provenance.extra.candidate == true`, what a finetune job whose gate refused the
//! model records). A model with no gate result is not blessed either.

use super::{check_name, split_adapter, sync_dir, unique, Manifest, ModelStoreError};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

/// The alias table's file name, under `<state-dir>/models/`.
pub const FILE: &str = "aliases.json";

/// alias → target.
pub type AliasMap = BTreeMap<String, String>;

/// The file's shape.
#[derive(Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct AliasFile {
    aliases: AliasMap,
}

/// Checks a target's spelling: `NAME` or `BASE+ADAPTER`, each part a valid model name.
pub fn check_target(target: &str) -> Result<(), ModelStoreError> {
    let (base, adapter) = split_adapter(target);
    let ok = check_name(base).is_ok() && adapter.is_none_or(|a| check_name(a).is_ok());
    if ok {
        Ok(())
    } else {
        Err(ModelStoreError::AliasTarget(format!(
            "invalid alias target {target:?}: name a model (NAME) or an adapter of one (BASE+ADAPTER)"
        )))
    }
}

/// Reads the table; a missing file is an empty table. A file that does not parse, or that holds
/// a name or target that is not valid, is an error naming the file.
pub(super) fn load(path: &Path) -> Result<AliasMap, ModelStoreError> {
    let bytes = match std::fs::read(path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(AliasMap::new()),
        Err(e) => {
            return Err(ModelStoreError::Io(format!(
                "reading {}: {e}",
                path.display()
            )))
        }
    };
    let corrupt = |why: String| {
        ModelStoreError::Io(format!(
            "the alias table {} is corrupt ({why}); repair it (it is {{\"aliases\": {{\"ALIAS\": \"TARGET\"}}}}) or move it away",
            path.display()
        ))
    };
    let file: AliasFile = serde_json::from_slice(&bytes).map_err(|e| corrupt(e.to_string()))?;
    for (alias, target) in &file.aliases {
        check_name(alias).map_err(|e| corrupt(e.to_string()))?;
        check_target(target).map_err(|e| corrupt(e.to_string()))?;
    }
    Ok(file.aliases)
}

/// Writes the table atomically: a new file in `tmp_dir` (same file system), synced, renamed over
/// `path`, and the directory synced.
pub(super) fn save(path: &Path, tmp_dir: &Path, map: &AliasMap) -> Result<(), ModelStoreError> {
    let io = |e: std::io::Error| ModelStoreError::Io(format!("writing the alias table: {e}"));
    let text = serde_json::to_vec_pretty(&AliasFile {
        aliases: map.clone(),
    })
    .map_err(|e| ModelStoreError::Io(e.to_string()))?;
    let tmp = tmp_dir.join(format!("aliases-{}", unique()));
    let written = (|| {
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o640)
            .open(&tmp)?;
        f.write_all(&text)?;
        f.write_all(b"\n")?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)
    })();
    if let Err(e) = written {
        let _ = std::fs::remove_file(&tmp);
        return Err(io(e));
    }
    if let Some(dir) = path.parent() {
        sync_dir(dir);
    }
    Ok(())
}

/// Whether a model may be promoted: what its evaluation gate said.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum GateStatus {
    /// The gate blessed it.
    Blessed,
    /// The gate refused it.
    Refused,
    /// Registered as a candidate (its finetune job's gate refused it).
    Candidate,
    /// No gate result at all (an imported file, a job run without a policy).
    NoGate,
}

impl GateStatus {
    /// What `m`'s provenance says. A candidate is never blessed, whatever its gate field says.
    pub fn of(m: &Manifest) -> GateStatus {
        let extra = &m.provenance.extra;
        if extra.get("candidate").and_then(|v| v.as_bool()) == Some(true) {
            return GateStatus::Candidate;
        }
        match extra
            .pointer("/evaluation/gate/blessed")
            .and_then(|v| v.as_bool())
        {
            Some(true) => GateStatus::Blessed,
            Some(false) => GateStatus::Refused,
            None => GateStatus::NoGate,
        }
    }

    /// Whether a promotion needs no `--force`.
    pub fn blessed(self) -> bool {
        self == GateStatus::Blessed
    }

    /// The serialized name.
    pub fn as_str(self) -> &'static str {
        match self {
            GateStatus::Blessed => "blessed",
            GateStatus::Refused => "refused",
            GateStatus::Candidate => "candidate",
            GateStatus::NoGate => "no_gate",
        }
    }

    /// Why a model with this status is not blessed, for an error message.
    pub fn why_not(self) -> &'static str {
        match self {
            GateStatus::Blessed => "it is blessed",
            GateStatus::Refused => "its evaluation gate refused it",
            GateStatus::Candidate => {
                "it was registered as a candidate: its evaluation gate refused it"
            }
            GateStatus::NoGate => "it has no evaluation gate result",
        }
    }
}

impl std::fmt::Display for GateStatus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The alias a promotion of `m` sets: its own name for a model, `base+name` for an adapter.
pub fn promotion_target(m: &Manifest) -> String {
    match (&m.kind, &m.base) {
        (super::Kind::Adapter, Some(base)) => format!("{base}+{}", m.name),
        _ => m.name.clone(),
    }
}

#[cfg(test)]
mod tests {
    use super::super::{ImportRequest, Kind, ModelStore, Provenance};
    use super::*;
    use serde_json::json;

    fn store(dir: &Path) -> ModelStore {
        ModelStore::open(dir, false, &dir.join("keys"), 1 << 30).unwrap()
    }

    /// A manifest written straight into the store, as an import would leave it.
    fn put(st: &ModelStore, name: &str, kind: Kind, base: Option<&str>, extra: serde_json::Value) {
        let m = Manifest {
            name: name.into(),
            kind,
            base: base.map(str::to_string),
            digest: "00".repeat(32),
            size: 1,
            architecture: "llama".into(),
            n_params: 1,
            quantization: None,
            context_length: None,
            n_layers: None,
            chat_template: false,
            provenance: Provenance {
                imported_at: 0,
                imported_by_uid: 0,
                source: None,
                signed_by: None,
                signed_at: None,
                signature: None,
                extra,
            },
        };
        st.write_manifest(&m).unwrap();
    }

    #[test]
    fn set_resolve_list_and_remove_persist_across_a_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let st = store(dir.path());
        put(&st, "a", Kind::Model, None, json!(null));
        put(&st, "b", Kind::Model, None, json!(null));
        assert_eq!(st.resolve_alias("prod"), None);
        assert_eq!(st.set_alias("prod", "a").unwrap(), None);
        assert_eq!(st.resolve_alias("prod").as_deref(), Some("a"));
        // Moving it returns the old target; the next lookup follows at once.
        assert_eq!(st.set_alias("prod", "b").unwrap().as_deref(), Some("a"));
        assert_eq!(st.resolve_alias("prod").as_deref(), Some("b"));
        assert_eq!(st.set_alias("staging", "a+tune").unwrap(), None);
        assert_eq!(st.resolve_alias("a"), None, "a model name is not an alias");
        drop(st);

        let st = store(dir.path());
        let all = st.aliases();
        assert_eq!(
            all.into_iter().collect::<Vec<_>>(),
            vec![
                ("prod".to_string(), "b".to_string()),
                ("staging".to_string(), "a+tune".to_string())
            ]
        );
        assert_eq!(st.remove_alias("prod").unwrap(), "b");
        assert_eq!(st.resolve_alias("prod"), None);
        assert!(matches!(
            st.remove_alias("prod"),
            Err(ModelStoreError::AliasNotFound(_))
        ));
        drop(st);
        let st = store(dir.path());
        assert_eq!(st.aliases().len(), 1);
        assert_eq!(st.resolve_alias("staging").as_deref(), Some("a+tune"));
    }

    #[test]
    fn aliases_and_model_names_do_not_clash() {
        let dir = tempfile::tempdir().unwrap();
        let st = store(dir.path());
        put(&st, "a", Kind::Model, None, json!(null));
        put(&st, "tune", Kind::Adapter, Some("a"), json!(null));
        // An alias cannot take a model's or an adapter's name.
        for taken in ["a", "tune"] {
            let err = st.set_alias(taken, "a").unwrap_err();
            assert!(matches!(err, ModelStoreError::AliasClash(_)), "{err}");
        }
        // Names and targets are checked.
        for bad in ["", "Prod", "a/b", "x+y", "../prod"] {
            let err = st.set_alias(bad, "a").unwrap_err();
            assert!(
                matches!(err, ModelStoreError::InvalidName(_)),
                "{bad}: {err}"
            );
        }
        for bad in ["", "a+", "+a", "A", "a/b", "a+b+c"] {
            let err = st.set_alias("prod", bad).unwrap_err();
            assert!(
                matches!(err, ModelStoreError::AliasTarget(_)),
                "{bad}: {err}"
            );
        }
        // No chains: a target cannot be an alias, nor contain one.
        st.set_alias("prod", "a").unwrap();
        for chained in ["prod", "prod+tune", "a+prod"] {
            let err = st.set_alias("canary", chained).unwrap_err();
            assert!(
                matches!(err, ModelStoreError::AliasTarget(_)),
                "{chained}: {err}"
            );
        }
        assert_eq!(
            st.aliases().len(),
            1,
            "refused changes leave the table as it was"
        );
        // An import cannot take an alias's name (checked before the file is read).
        let up = st.begin_import().unwrap();
        let err = st
            .finish_import(
                up,
                &ImportRequest {
                    name: "prod".into(),
                    ..Default::default()
                },
            )
            .unwrap_err();
        assert!(matches!(err, ModelStoreError::AliasClash(_)), "{err}");
        assert!(err.to_string().contains("models alias rm prod"), "{err}");
    }

    #[test]
    fn the_table_is_written_through_a_temporary_file_and_a_corrupt_one_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let st = store(dir.path());
        put(&st, "a", Kind::Model, None, json!(null));
        st.set_alias("prod", "a").unwrap();
        let file = dir.path().join("models").join(FILE);
        let v: serde_json::Value = serde_json::from_slice(&std::fs::read(&file).unwrap()).unwrap();
        assert_eq!(v, json!({"aliases": {"prod": "a"}}));
        // Nothing is left in tmp/: the new table was renamed into place.
        let left: Vec<_> = std::fs::read_dir(dir.path().join("models/tmp"))
            .unwrap()
            .collect();
        assert!(left.is_empty(), "{left:?}");
        // A write that cannot complete (tmp/ gone) leaves the old file and the old table.
        std::fs::remove_dir(dir.path().join("models/tmp")).unwrap();
        assert!(st.set_alias("prod", "b").is_err());
        assert_eq!(st.resolve_alias("prod").as_deref(), Some("a"));
        let v: serde_json::Value = serde_json::from_slice(&std::fs::read(&file).unwrap()).unwrap();
        assert_eq!(v, json!({"aliases": {"prod": "a"}}));
        drop(st);
        // A torn or hand-broken file stops the store from opening, naming the file.
        for broken in [
            &b"{\"aliases\": {\"prod\": "[..],
            br#"{"aliases": {"Prod": "a"}}"#,
            br#"{"aliases": {"prod": "a/b"}}"#,
        ] {
            std::fs::write(&file, broken).unwrap();
            let err =
                ModelStore::open(dir.path(), false, &dir.path().join("keys"), 1 << 30).unwrap_err();
            assert!(err.to_string().contains("aliases.json"), "{err}");
        }
    }

    #[test]
    fn gate_status_reads_the_provenance() {
        let dir = tempfile::tempdir().unwrap();
        let st = store(dir.path());
        let cases = [
            (json!(null), GateStatus::NoGate),
            (json!({"evaluation": {"steps": 3}}), GateStatus::NoGate),
            (
                json!({"evaluation": {"gate": {"blessed": true}}}),
                GateStatus::Blessed,
            ),
            (
                json!({"evaluation": {"gate": {"blessed": false}}}),
                GateStatus::Refused,
            ),
            (
                json!({"candidate": true, "evaluation": {"gate": {"blessed": false}}}),
                GateStatus::Candidate,
            ),
            (
                json!({"candidate": true, "evaluation": {"gate": {"blessed": true}}}),
                GateStatus::Candidate,
            ),
            (
                json!({"evaluation": {"gate": {"blessed": "yes"}}}),
                GateStatus::NoGate,
            ),
        ];
        for (i, (extra, want)) in cases.into_iter().enumerate() {
            let name = format!("m{i}");
            put(&st, &name, Kind::Model, None, extra.clone());
            let m = st.get(&name).unwrap();
            assert_eq!(GateStatus::of(&m), want, "{extra}");
            assert_eq!(want.blessed(), want == GateStatus::Blessed);
        }
        put(&st, "tune", Kind::Adapter, Some("m0"), json!(null));
        assert_eq!(promotion_target(&st.get("tune").unwrap()), "m0+tune");
        assert_eq!(promotion_target(&st.get("m0").unwrap()), "m0");
    }
}
