//! The model store: GGUF files by content, and the names that point at them.
//!
//! Layout under `<state-dir>/models/`:
//! - `blobs/sha256-<hex>`: each file once, named by its SHA-256; written only by an import,
//!   read-only afterwards (mode 0440).
//! - `manifests/<name>.json`: name → digest, what the file is (architecture, parameters,
//!   quantization…), and where it came from (who imported it, from which file, its signature).
//! - `tmp/`: imports in progress. An import streams into a fresh file here while hashing it, then
//!   checks the digest, the GGUF structure and the signature policy, and only then renames the
//!   file into `blobs/` and writes the manifest (itself through a temporary file and a rename).
//!   A crash or an interrupted upload leaves at most a file in `tmp/`, which start-up removes.
//!
//! Names are checked by [`check_name`]: `^[a-z0-9][a-z0-9._:-]{0,63}$`, so a name is never a
//! path. A LoRA adapter is stored under its own name with `base` set; clients ask for it as
//! `base+adapter`.
//!
//! - `aliases.json`: alias → model (or `base+adapter`), e.g. `prod` → `smol-tuned`; see
//!   [`alias`].

pub mod alias;
pub mod card;
pub mod estimate;

use inhouse_formats::gguf;
use inhouse_formats::sign::{self, SignatureFile, TrustedKeys};
use serde::{Deserialize, Serialize};
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

/// Model store errors; the API maps each to an HTTP status in one place.
#[derive(Debug, thiserror::Error)]
pub enum ModelStoreError {
    /// The name is not allowed.
    #[error("invalid model name {0:?}: use 1 to 64 characters from a-z, 0-9, '.', '_', ':', '-', starting with a letter or digit")]
    InvalidName(String),
    /// No model by that name.
    #[error("model {0:?} does not exist")]
    NotFound(String),
    /// The name is taken.
    #[error("model {0:?} already exists; remove it first (inhouse models rm {0})")]
    Exists(String),
    /// The upload does not have the digest the client announced.
    #[error("digest mismatch: expected sha256 {expected}, the file has {actual}; the copy is corrupt or not the file you meant")]
    DigestMismatch {
        /// What the client announced.
        expected: String,
        /// What arrived.
        actual: String,
    },
    /// The file is not a model llama.cpp can read.
    #[error("not a valid GGUF file: {0}")]
    InvalidGguf(String),
    /// The GGUF's chat template does not compile, raises, or runs past its bounds on a probe
    /// conversation (a hostile or broken template inside the file).
    #[error("the model's chat template is refused: {message}")]
    Template {
        /// The template error's stable code (`template_fuel_exhausted`, …).
        code: &'static str,
        /// What went wrong.
        message: String,
    },
    /// An adapter that does not fit its base model, or a model given as an adapter.
    #[error("{0}")]
    Adapter(String),
    /// Refused by the signature policy.
    #[error("signature check failed: {0}")]
    Signature(String),
    /// The blob on disk no longer has its digest.
    #[error("model {name:?} failed its integrity check: the stored file's sha256 is {actual}, its manifest says {expected}; re-import it")]
    Tampered {
        /// Model name.
        name: String,
        /// From the manifest.
        expected: String,
        /// From the file.
        actual: String,
    },
    /// The upload is larger than allowed.
    #[error("the upload exceeds the {0}-byte limit on model files")]
    TooLarge(u64),
    /// No alias by that name.
    #[error("alias {0:?} does not exist (inhouse models alias list shows them)")]
    AliasNotFound(String),
    /// An alias would take a model's name, or a model an alias's (the message says which).
    #[error("{0}")]
    AliasClash(String),
    /// An alias's target is not a model name, or is itself an alias.
    #[error("{0}")]
    AliasTarget(String),
    /// A promotion of a model its evaluation gate did not bless, without `force`.
    #[error("model {name:?} is not blessed ({}): promote it anyway with --force (admin only; the audit log records it), or promote a model the gate blessed", status.why_not())]
    NotBlessed {
        /// The model.
        name: String,
        /// What its gate said.
        status: alias::GateStatus,
    },
    /// Disk or file system trouble.
    #[error("model store: {0}")]
    Io(String),
}

/// An import in progress (see [`crate::incoming`]).
pub type Upload = crate::incoming::IncomingFile;

impl From<crate::incoming::IncomingError> for ModelStoreError {
    fn from(e: crate::incoming::IncomingError) -> Self {
        match e {
            crate::incoming::IncomingError::TooLarge(max) => ModelStoreError::TooLarge(max),
            crate::incoming::IncomingError::Io(what) => ModelStoreError::Io(what),
        }
    }
}

fn io(context: &str) -> impl FnOnce(std::io::Error) -> ModelStoreError + '_ {
    move |e| ModelStoreError::Io(format!("{context}: {e}"))
}

/// Checks a model name: `^[a-z0-9][a-z0-9._:-]{0,63}$`. Anything path-like (`/`, `..` at the
/// start, empty, too long) fails.
pub fn check_name(name: &str) -> Result<(), ModelStoreError> {
    let b = name.as_bytes();
    let ok = !b.is_empty()
        && b.len() <= 64
        && (b[0].is_ascii_lowercase() || b[0].is_ascii_digit())
        && b.iter()
            .all(|&c| c.is_ascii_lowercase() || c.is_ascii_digit() || b"._:-".contains(&c));
    if ok {
        Ok(())
    } else {
        Err(ModelStoreError::InvalidName(name.to_string()))
    }
}

/// Splits a requested name into base and adapter: `base+adapter` → (`base`, Some(`adapter`)).
pub fn split_adapter(name: &str) -> (&str, Option<&str>) {
    match name.split_once('+') {
        Some((base, adapter)) => (base, Some(adapter)),
        None => (name, None),
    }
}

/// What kind of file a manifest names.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Kind {
    /// A model that can be served.
    Model,
    /// A LoRA adapter for `base`.
    Adapter,
}

/// A name in the store and everything known about its file.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Manifest {
    /// The name clients use.
    pub name: String,
    /// Model or adapter.
    pub kind: Kind,
    /// For an adapter: the model it applies to.
    #[serde(default)]
    pub base: Option<String>,
    /// SHA-256 of the file, lowercase hex.
    pub digest: String,
    /// File size, bytes.
    pub size: u64,
    /// `general.architecture`.
    pub architecture: String,
    /// Parameters (elements of all tensors).
    pub n_params: u64,
    /// Quantization (the file type), e.g. `Q4_1`.
    pub quantization: Option<String>,
    /// Context length the model was trained with.
    pub context_length: Option<u64>,
    /// Layers (`<arch>.block_count`).
    pub n_layers: Option<u64>,
    /// Whether the file carries a chat template.
    pub chat_template: bool,
    /// Where the file came from.
    pub provenance: Provenance,
}

/// Where a stored file came from: who imported it, when, from what, and who signed it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Provenance {
    /// Unix time of the import.
    pub imported_at: u64,
    /// The admin's uid (from the socket's peer credentials).
    pub imported_by_uid: u32,
    /// The file name the client gave (its last path component only).
    pub source: Option<String>,
    /// Key id of the publisher whose signature was verified, if the file was signed.
    pub signed_by: Option<String>,
    /// When the publisher signed it.
    pub signed_at: Option<u64>,
    /// The signature file itself, kept so that it can be checked again at load.
    pub signature: Option<String>,
    /// Anything else the importer recorded (the toolchain puts base model, dataset, options and
    /// evaluation results here).
    #[serde(default)]
    pub extra: serde_json::Value,
}

/// What an import is told besides the bytes.
#[derive(Debug, Clone, Default)]
pub struct ImportRequest {
    /// The name to store it under.
    pub name: String,
    /// Store it as a LoRA adapter of this model.
    pub adapter_for: Option<String>,
    /// The SHA-256 the file must have (hex), when the client knows it.
    pub expected_sha256: Option<String>,
    /// A signature file (JSON) for it.
    pub signature: Option<String>,
    /// The client's file name.
    pub source: Option<String>,
    /// The importing uid.
    pub uid: u32,
    /// Extra provenance.
    pub extra: serde_json::Value,
}

/// The store on disk plus its signature policy.
#[derive(Debug)]
pub struct ModelStore {
    root: PathBuf,
    require_signed: bool,
    trusted: TrustedKeys,
    max_bytes: u64,
    /// Held while a name is added or removed: "the name is free" and "the blob is unused" stay
    /// true until the change is written (two imports of one name, or an import and a removal
    /// sharing a blob, would otherwise lose a manifest or a blob). Alias changes take it too.
    changes: std::sync::Mutex<()>,
    /// The alias table (see [`alias`]): the file's contents, kept in memory, replaced only once
    /// a new file is in place.
    aliases: std::sync::RwLock<alias::AliasMap>,
}

impl ModelStore {
    /// Opens (creating if needed) the store under `state_dir/models`, removing leftovers of
    /// interrupted imports, and loads the trusted publisher keys.
    pub fn open(
        state_dir: &Path,
        require_signed: bool,
        trusted_keys_dir: &Path,
        max_bytes: u64,
    ) -> Result<Self, ModelStoreError> {
        let root = state_dir.join("models");
        for d in ["blobs", "manifests", "tmp"] {
            std::fs::create_dir_all(root.join(d)).map_err(io("creating the store"))?;
        }
        let _ = std::fs::set_permissions(&root, std::fs::Permissions::from_mode(0o750));
        if let Ok(entries) = std::fs::read_dir(root.join("tmp")) {
            for e in entries.flatten() {
                tracing::info!(file = %e.path().display(), "removing an interrupted import");
                let _ = std::fs::remove_file(e.path());
            }
        }
        let aliases = alias::load(&root.join(alias::FILE))?;
        let trusted = TrustedKeys::load_dir(trusted_keys_dir)
            .map_err(|e| ModelStoreError::Signature(e.to_string()))?;
        if require_signed && trusted.is_empty() {
            tracing::warn!(
                dir = %trusted_keys_dir.display(),
                "require-signed-models is on but no trusted keys were found: every import will be refused"
            );
        }
        let store = ModelStore {
            root,
            require_signed,
            trusted,
            max_bytes,
            changes: std::sync::Mutex::new(()),
            aliases: std::sync::RwLock::new(aliases),
        };
        store.remove_orphan_blobs();
        Ok(store)
    }

    /// Removes the blobs no manifest names: what an import killed between storing its blob and
    /// writing its manifest leaves (the manifest is the import's commit), or a removal killed
    /// between its two steps. Skipped, with a warning, while any manifest cannot be read: its
    /// blob must not go with it.
    fn remove_orphan_blobs(&self) {
        let manifests = std::fs::read_dir(self.root.join("manifests"))
            .map(|d| {
                d.flatten()
                    .filter(|e| e.path().extension().and_then(|x| x.to_str()) == Some("json"))
                    .count()
            })
            .unwrap_or(0);
        let all = self.list();
        let readable = all.len();
        let named: std::collections::HashSet<String> = all.into_iter().map(|m| m.digest).collect();
        if readable != manifests {
            tracing::warn!(
                unreadable = manifests - readable.min(manifests),
                "not removing unnamed blobs while a manifest cannot be read"
            );
            return;
        }
        let Ok(entries) = std::fs::read_dir(self.root.join("blobs")) else {
            return;
        };
        for e in entries.flatten() {
            let file = e.file_name();
            let Some(digest) = file.to_str().and_then(|n| n.strip_prefix("sha256-")) else {
                continue;
            };
            if !named.contains(digest) {
                tracing::info!(%digest, "removing a blob no model names (an interrupted import)");
                let _ = std::fs::remove_file(e.path());
            }
        }
    }

    fn alias_table(&self) -> std::sync::RwLockReadGuard<'_, alias::AliasMap> {
        self.aliases.read().unwrap_or_else(|e| e.into_inner())
    }

    /// Every alias with its target.
    pub fn aliases(&self) -> alias::AliasMap {
        self.alias_table().clone()
    }

    /// The target of alias `name`; `None` when `name` is not an alias.
    pub fn resolve_alias(&self, name: &str) -> Option<String> {
        self.alias_table().get(name).cloned()
    }

    /// Points alias `name` at `target` (a model name or `base+adapter`), creating or moving it;
    /// returns the previous target. The name must not be a stored model's or adapter's, and the
    /// target must not be (or contain) an alias. Whether the target is served is the caller's
    /// check (configured models are not the store's to know). The table is written before the
    /// change is visible: a failed write changes nothing.
    pub fn set_alias(&self, name: &str, target: &str) -> Result<Option<String>, ModelStoreError> {
        let _changing = self.changes.lock().unwrap_or_else(|e| e.into_inner());
        check_name(name)?;
        if self.manifest_path(name).exists() {
            return Err(ModelStoreError::AliasClash(format!(
                "{name:?} is the name of a stored model or adapter: an alias needs a name of its own"
            )));
        }
        alias::check_target(target)?;
        let mut next = self.aliases();
        let (base, adapter) = split_adapter(target);
        if let Some(a) = [Some(base), adapter]
            .into_iter()
            .flatten()
            .find(|part| next.contains_key(*part))
        {
            return Err(ModelStoreError::AliasTarget(format!(
                "{a:?} is itself an alias (for {:?}): point {name:?} at a model, not at another alias",
                next[a]
            )));
        }
        let previous = next.insert(name.to_string(), target.to_string());
        alias::save(&self.root.join(alias::FILE), &self.root.join("tmp"), &next)?;
        *self.aliases.write().unwrap_or_else(|e| e.into_inner()) = next;
        Ok(previous)
    }

    /// Removes alias `name`; returns the target it had.
    pub fn remove_alias(&self, name: &str) -> Result<String, ModelStoreError> {
        let _changing = self.changes.lock().unwrap_or_else(|e| e.into_inner());
        check_name(name)?;
        let mut next = self.aliases();
        let previous = next
            .remove(name)
            .ok_or_else(|| ModelStoreError::AliasNotFound(name.to_string()))?;
        alias::save(&self.root.join(alias::FILE), &self.root.join("tmp"), &next)?;
        *self.aliases.write().unwrap_or_else(|e| e.into_inner()) = next;
        Ok(previous)
    }

    /// Whether unsigned models are refused.
    pub fn require_signed(&self) -> bool {
        self.require_signed
    }

    fn manifest_path(&self, name: &str) -> PathBuf {
        self.root.join("manifests").join(format!("{name}.json"))
    }

    /// The blob file of a digest.
    pub fn blob_path(&self, digest: &str) -> PathBuf {
        self.root.join("blobs").join(format!("sha256-{digest}"))
    }

    /// Every manifest, sorted by name. Unreadable manifests are logged and skipped.
    pub fn list(&self) -> Vec<Manifest> {
        let mut out = Vec::new();
        let Ok(entries) = std::fs::read_dir(self.root.join("manifests")) else {
            return out;
        };
        for e in entries.flatten() {
            let p = e.path();
            if p.extension().and_then(|x| x.to_str()) != Some("json") {
                continue;
            }
            match std::fs::read(&p)
                .map_err(|e| e.to_string())
                .and_then(|b| serde_json::from_slice::<Manifest>(&b).map_err(|e| e.to_string()))
            {
                Ok(m) if check_name(&m.name).is_ok() => out.push(m),
                Ok(_) => tracing::warn!(file = %p.display(), "manifest with an invalid name"),
                Err(e) => tracing::warn!(file = %p.display(), error = %e, "unreadable manifest"),
            }
        }
        out.sort_by(|a, b| a.name.cmp(&b.name));
        out
    }

    /// One manifest.
    pub fn get(&self, name: &str) -> Result<Manifest, ModelStoreError> {
        check_name(name)?;
        let bytes = match std::fs::read(self.manifest_path(name)) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(ModelStoreError::NotFound(name.to_string()))
            }
            Err(e) => return Err(io("reading a manifest")(e)),
        };
        serde_json::from_slice(&bytes)
            .map_err(|e| ModelStoreError::Io(format!("manifest of {name:?} is corrupt: {e}")))
    }

    /// Starts an import: a new file in `tmp/` that the upload is written to.
    pub fn begin_import(&self) -> Result<Upload, ModelStoreError> {
        let tmp = self
            .root
            .join("tmp")
            .join(format!("import-{}-{}", std::process::id(), unique()));
        Ok(Upload::create(tmp, self.max_bytes)?.with_crash_point("import.mid_upload"))
    }

    /// Checks a finished upload and stores it under `req.name`. On any error the upload is
    /// removed and the store is as before.
    pub fn finish_import(
        &self,
        mut upload: Upload,
        req: &ImportRequest,
    ) -> Result<Manifest, ModelStoreError> {
        let _changing = self.changes.lock().unwrap_or_else(|e| e.into_inner());
        let result = (|| {
            check_name(&req.name)?;
            if let Some(target) = self.resolve_alias(&req.name) {
                return Err(ModelStoreError::AliasClash(format!(
                    "{:?} is an alias (for {target:?}): import the model under another name, or remove the alias first (inhouse models alias rm {})",
                    req.name, req.name
                )));
            }
            if self.manifest_path(&req.name).exists() {
                return Err(ModelStoreError::Exists(req.name.clone()));
            }
            let (digest, size) = upload.close()?;
            if let Some(expected) = &req.expected_sha256 {
                let expected = expected.trim().to_ascii_lowercase();
                if expected != digest {
                    return Err(ModelStoreError::DigestMismatch {
                        expected,
                        actual: digest,
                    });
                }
            }
            let file = gguf::open(upload.path())
                .map_err(|e| ModelStoreError::InvalidGguf(e.to_string()))?;
            check_template(&file)?;
            let (signed_by, signed_at) =
                self.check_signature(req.signature.as_deref(), &digest, size)?;
            let manifest = describe(&req.name, &digest, size, &file, req, signed_by, signed_at)?;
            if let Some(base) = &req.adapter_for {
                let b = self.get(base)?;
                if b.kind != Kind::Model {
                    return Err(ModelStoreError::Adapter(format!(
                        "{base:?} is an adapter, not a model"
                    )));
                }
                if b.architecture != manifest.architecture {
                    return Err(ModelStoreError::Adapter(format!(
                        "the adapter is for architecture {:?}, but {base:?} is {:?}",
                        manifest.architecture, b.architecture
                    )));
                }
            }
            let blob = self.blob_path(&digest);
            if blob.exists() {
                let _ = std::fs::remove_file(upload.path());
            } else {
                std::fs::set_permissions(upload.path(), std::fs::Permissions::from_mode(0o440))
                    .map_err(io("protecting the blob"))?;
                std::fs::rename(upload.path(), &blob).map_err(io("storing the blob"))?;
                sync_dir(&self.root.join("blobs"));
            }
            crate::fault::point("import.after_blob");
            self.write_manifest(&manifest)?;
            crate::fault::point("import.after_manifest");
            Ok(manifest)
        })();
        if result.is_err() {
            let _ = std::fs::remove_file(upload.path());
        }
        result
    }

    /// Imports a file the daemon itself produced (a job's output, see [`crate::jobs`]) through
    /// the same checks as an upload: it is copied into `tmp/` while hashed, then
    /// [`ModelStore::finish_import`]. The file at `path` is left where it is.
    pub fn import_file(
        &self,
        path: &Path,
        req: &ImportRequest,
    ) -> Result<Manifest, ModelStoreError> {
        use std::io::Read;
        let mut src = std::fs::File::open(path).map_err(io("opening the job's output"))?;
        let mut up = self.begin_import()?;
        let mut buf = vec![0u8; 1 << 20];
        loop {
            let n = match src.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    up.abort();
                    return Err(io("reading the job's output")(e));
                }
            };
            if let Err(e) = up.write(&buf[..n]) {
                up.abort();
                return Err(e.into());
            }
        }
        self.finish_import(up, req)
    }

    fn check_signature(
        &self,
        signature: Option<&str>,
        digest: &str,
        size: u64,
    ) -> Result<(Option<String>, Option<u64>), ModelStoreError> {
        let sig_err = |e: String| ModelStoreError::Signature(e);
        match signature {
            None if self.require_signed => Err(sig_err(
                "the model is unsigned and require-signed-models is on; sign it with `inhouse models sign` and import it with --signature".into(),
            )),
            None => Ok((None, None)),
            Some(text) => {
                let sig = SignatureFile::from_json(text.as_bytes()).map_err(|e| sig_err(e.to_string()))?;
                // Refused even without the policy: a signature that does not verify says
                // something about the file that is not true.
                let v = self
                    .trusted
                    .verify(&sig, digest, size)
                    .map_err(|e| sig_err(e.to_string()))?;
                Ok((Some(v.key_id), Some(v.signed_at)))
            }
        }
    }

    fn write_manifest(&self, m: &Manifest) -> Result<(), ModelStoreError> {
        let path = self.manifest_path(&m.name);
        let tmp = self.root.join("tmp").join(format!("manifest-{}", unique()));
        let text = serde_json::to_vec_pretty(m).map_err(|e| ModelStoreError::Io(e.to_string()))?;
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o640)
            .open(&tmp)
            .map_err(io("writing a manifest"))?;
        f.write_all(&text)
            .and_then(|()| f.sync_all())
            .map_err(io("writing a manifest"))?;
        std::fs::rename(&tmp, &path).map_err(io("writing a manifest"))?;
        sync_dir(&self.root.join("manifests"));
        Ok(())
    }

    /// Removes a name. Its blob goes too unless another name uses it; removing a model also
    /// removes its adapters' names.
    pub fn remove(&self, name: &str) -> Result<Vec<String>, ModelStoreError> {
        let _changing = self.changes.lock().unwrap_or_else(|e| e.into_inner());
        self.get(name)?; // NotFound for an unknown name, before anything is touched
        let mut removed = vec![name.to_string()];
        let all = self.list();
        for a in all.iter().filter(|a| a.base.as_deref() == Some(name)) {
            std::fs::remove_file(self.manifest_path(&a.name)).map_err(io("removing a manifest"))?;
            removed.push(a.name.clone());
        }
        std::fs::remove_file(self.manifest_path(name)).map_err(io("removing a manifest"))?;
        sync_dir(&self.root.join("manifests"));
        let left = self.list();
        for gone in all.iter().filter(|x| removed.contains(&x.name)) {
            if !left.iter().any(|x| x.digest == gone.digest) {
                let _ = std::fs::remove_file(self.blob_path(&gone.digest));
            }
        }
        Ok(removed)
    }

    /// Checks a stored file before it is loaded: its bytes must still hash to the manifest's
    /// digest, and under `require-signed-models` its signature must verify against the keys
    /// trusted now. Returns the blob's path.
    pub fn verify_for_load(&self, m: &Manifest) -> Result<PathBuf, ModelStoreError> {
        let path = self.blob_path(&m.digest);
        let (actual, size) =
            sign::sha256_file(&path).map_err(|e| ModelStoreError::Io(e.to_string()))?;
        if actual != m.digest || size != m.size {
            return Err(ModelStoreError::Tampered {
                name: m.name.clone(),
                expected: m.digest.clone(),
                actual,
            });
        }
        if self.require_signed {
            self.check_signature(m.provenance.signature.as_deref(), &m.digest, m.size)?;
        }
        Ok(path)
    }
}

fn describe(
    name: &str,
    digest: &str,
    size: u64,
    file: &gguf::GgufFile,
    req: &ImportRequest,
    signed_by: Option<String>,
    signed_at: Option<u64>,
) -> Result<Manifest, ModelStoreError> {
    let architecture = file
        .architecture()
        .ok_or_else(|| ModelStoreError::InvalidGguf("no general.architecture".into()))?
        .to_string();
    let is_adapter = file.get_str("general.type") == Some("adapter");
    let kind = match (is_adapter, &req.adapter_for) {
        (true, Some(_)) => Kind::Adapter,
        (false, None) => Kind::Model,
        (true, None) => {
            return Err(ModelStoreError::Adapter(
                "this file is a LoRA adapter: import it with --adapter-for BASE".into(),
            ))
        }
        (false, Some(_)) => {
            return Err(ModelStoreError::Adapter(
                "this file is a model, not a LoRA adapter (general.type is not \"adapter\")".into(),
            ))
        }
    };
    Ok(Manifest {
        name: name.to_string(),
        kind,
        base: req.adapter_for.clone(),
        digest: digest.to_string(),
        size,
        n_params: file.n_params(),
        quantization: file.file_type_name().map(str::to_string),
        context_length: file.context_length(),
        n_layers: file.get_u64(&format!("{architecture}.block_count")),
        chat_template: file.chat_template().is_some(),
        architecture,
        provenance: Provenance {
            imported_at: now_unix(),
            imported_by_uid: req.uid,
            source: req.source.as_deref().map(|s| {
                Path::new(s)
                    .file_name()
                    .map(|f| f.to_string_lossy().into_owned())
                    .unwrap_or_default()
            }),
            signed_by,
            signed_at,
            signature: req.signature.clone(),
            extra: req.extra.clone(),
        },
    })
}

fn now_unix() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// A name part unique within this process's life and unlikely across restarts.
fn unique() -> String {
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    format!("{nanos:x}-{}", N.fetch_add(1, Ordering::Relaxed))
}

/// Makes a rename in `dir` durable.
fn sync_dir(dir: &Path) {
    if let Ok(d) = std::fs::File::open(dir) {
        let _ = d.sync_all();
    }
}

/// Renders a probe conversation through the GGUF's chat template, if it has one, within the
/// bounds the engine uses: a template that cannot render, loops or floods is refused before the
/// model is stored.
fn check_template(file: &gguf::GgufFile) -> Result<(), ModelStoreError> {
    let Some(source) = file.chat_template() else {
        return Ok(());
    };
    let token = |key: &str| -> String {
        let tokens = file.get("tokenizer.ggml.tokens").and_then(|v| v.as_array());
        match (file.get_u64(key), tokens) {
            (Some(id), Some(tokens)) => tokens
                .get(id as usize)
                .and_then(|v| v.as_str().map(str::to_string))
                .unwrap_or_default(),
            _ => String::new(),
        }
    };
    let (bos, eos) = (
        token("tokenizer.ggml.bos_token_id"),
        token("tokenizer.ggml.eos_token_id"),
    );
    inhouse_formats::template::check(
        source,
        &bos,
        &eos,
        inhouse_formats::template::TemplateLimits::default(),
    )
    .map_err(|e| ModelStoreError::Template {
        code: e.code(),
        message: e.to_string(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        for ok in ["smol", "gemma3:270m", "a", "x.y_z-1", &"a".repeat(64)] {
            assert!(check_name(ok).is_ok(), "{ok}");
        }
        for bad in [
            "",
            "../x",
            "/etc/passwd",
            "a/b",
            ".hidden",
            "-x",
            "A",
            "a b",
            "a+b",
            "a\0b",
            &"a".repeat(65),
        ] {
            assert!(check_name(bad).is_err(), "{bad:?}");
        }
        assert_eq!(split_adapter("smol+tune"), ("smol", Some("tune")));
        assert_eq!(split_adapter("smol"), ("smol", None));
    }
}
