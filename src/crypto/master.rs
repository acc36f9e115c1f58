//! The master key: loading it, generating key files, its key id and the HKDF sub-keys.
//!
//! # Key file format
//!
//! `inhouse admin gen-key` writes exactly **32 raw bytes** (no header, no newline), mode 0600.
//! [`MasterKey::load`] also accepts **64 hex characters** (either case) followed by at most one
//! `\n`, because keys often travel through text-only channels (a secrets manager, a password
//! vault, `openssl rand -hex 32`). The two formats cannot be confused: they differ in length
//! (32 versus 64 or 65 bytes), and anything else is refused. The same rules apply to the systemd
//! credential.
//!
//! # Key id
//!
//! A key id names a master key in the database (which key sealed the key-check record, which
//! key wrapped each data key, which key MACed each audit row) without revealing it: the first
//! 8 bytes of `HMAC-SHA256(HKDF(master, "inhouse.v1.key-id"), "inhouse key id")`, shown as
//! 16 hex characters. 64 bits make an accidental collision between the handful of keys one
//! installation ever uses negligible; a deliberate one would still fail the key check.

use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use zeroize::Zeroizing;

use super::{from_hex_into, hkdf_32, random_fill, to_hex, CryptoError, Secret32};
use super::{AuditKey, Kek, KeyCheckKey};

/// Length of a master key in bytes.
pub const KEY_LEN: usize = 32;

/// Name of the systemd credential that holds the master key
/// (`LoadCredential=inhouse-master-key:/etc/inhouse/master.key` in the unit).
pub const CREDENTIAL_NAME: &str = "inhouse-master-key";

// HKDF info strings. Each sub-key has its own, so no two purposes ever share a key. They are part
// of the on-disk format: changing one makes every existing database unreadable.
const INFO_KEY_ID: &[u8] = b"inhouse.v1.key-id";
const INFO_KEK: &[u8] = b"inhouse.v1.kek";
const INFO_AUDIT: &[u8] = b"inhouse.v1.audit-mac";
const INFO_KEY_CHECK: &[u8] = b"inhouse.v1.key-check";
const KEY_ID_LABEL: &[u8] = b"inhouse key id";

/// The most bytes a valid key file can hold (64 hex characters and a newline); we read one more
/// to tell "too long" apart without reading an arbitrarily large file.
const MAX_KEY_FILE_LEN: usize = 65;

/// A public, non-secret name for a master key: 8 bytes derived from it, shown as 16 hex digits.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct KeyId([u8; 8]);

impl KeyId {
    /// The raw 8 bytes (they go into AADs, length-prefixed).
    pub fn as_bytes(&self) -> &[u8; 8] {
        &self.0
    }

    /// Parses the 16-hex-digit form, as stored in the database and printed by the CLI.
    pub fn parse(s: &str) -> Option<KeyId> {
        let mut b = [0u8; 8];
        from_hex_into(s.as_bytes(), &mut b).then_some(KeyId(b))
    }

    /// The 16-hex-digit form.
    pub fn to_hex(&self) -> String {
        to_hex(&self.0)
    }
}

impl std::fmt::Display for KeyId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.to_hex())
    }
}

impl std::fmt::Debug for KeyId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "KeyId({})", self.to_hex())
    }
}

impl serde::Serialize for KeyId {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.to_hex())
    }
}

/// Reads the 16-hex-digit form, as the API sends it (the client reads rotation reports).
impl<'de> serde::Deserialize<'de> for KeyId {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<KeyId, D::Error> {
        let text = <String as serde::Deserialize>::deserialize(d)?;
        KeyId::parse(&text)
            .ok_or_else(|| serde::de::Error::custom(format!("{text:?} is not a key id")))
    }
}

/// The 32-byte master key everything else derives from.
///
/// Deliberately not `Clone` and not `Serialize`; `Debug` shows only the key id; the bytes are
/// zeroized when it is dropped. Hand it to `Store::open` by value.
pub struct MasterKey {
    secret: Secret32,
    id: KeyId,
}

impl MasterKey {
    /// Loads a key file given with `--key-file`.
    ///
    /// Refuses a file that group or others can access (`mode & 0o077 != 0`, the error names the
    /// path and says to `chmod 600` it), anything that is not a regular file, and any content
    /// that is not one of the two accepted formats (see the module docs). Permissions are read
    /// from the opened file, not the path, so there is no window between check and read.
    pub fn load(path: impl AsRef<Path>) -> Result<MasterKey, CryptoError> {
        read_key_file(path.as_ref(), true)
    }

    /// Loads the key from the systemd credential `$CREDENTIALS_DIRECTORY/inhouse-master-key`.
    ///
    /// No permission check: systemd creates the credentials directory itself, private to the
    /// unit, with modes it controls.
    pub fn from_systemd_credential() -> Result<MasterKey, CryptoError> {
        let dir = std::env::var_os("CREDENTIALS_DIRECTORY").ok_or(
            CryptoError::NoCredentialsDirectory {
                name: CREDENTIAL_NAME,
            },
        )?;
        MasterKey::from_credentials_dir(Path::new(&dir))
    }

    /// Same as [`MasterKey::from_systemd_credential`] with the directory given explicitly
    /// (what the daemon calls once it has read the environment; what tests call).
    pub fn from_credentials_dir(dir: &Path) -> Result<MasterKey, CryptoError> {
        read_key_file(&dir.join(CREDENTIAL_NAME), false)
    }

    /// A fresh random key held only in memory (tests, and the CLI before writing a key file).
    pub fn generate() -> Result<MasterKey, CryptoError> {
        Ok(MasterKey::from_secret(Secret32::random()?))
    }

    /// The key's public id.
    pub fn id(&self) -> KeyId {
        self.id
    }

    /// Parses key material that did not come from a file (the rotate-key API, which receives
    /// the new key over the socket): the same two formats as a key file. `None` when neither.
    pub fn from_material(content: &[u8]) -> Option<MasterKey> {
        parse_key_bytes(content)
    }

    /// Builds a key from known bytes (golden tests and fixtures).
    #[cfg(test)]
    pub(crate) fn from_bytes(bytes: &[u8; KEY_LEN]) -> MasterKey {
        let mut secret = Secret32::zeroed();
        secret.bytes_mut().copy_from_slice(bytes);
        MasterKey::from_secret(secret)
    }

    pub(crate) fn from_secret(secret: Secret32) -> MasterKey {
        let id = derive_key_id(&secret);
        MasterKey { secret, id }
    }

    /// The raw key, for wrapping it under another KEK during a rotation only.
    pub(crate) fn secret(&self) -> &Secret32 {
        &self.secret
    }

    /// The key-encryption key that wraps per-user data keys. Its id is this key's id.
    pub fn kek(&self) -> Kek {
        Kek::new(hkdf_32(&self.secret, INFO_KEK), self.id)
    }

    /// The HMAC key of the audit chain rows written while this key is active.
    pub fn audit_key(&self) -> AuditKey {
        AuditKey::new(hkdf_32(&self.secret, INFO_AUDIT), self.id)
    }

    /// The key that seals and opens the key-check record.
    pub fn key_check_key(&self) -> KeyCheckKey {
        KeyCheckKey::new(hkdf_32(&self.secret, INFO_KEY_CHECK), self.id)
    }
}

impl std::fmt::Debug for MasterKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "MasterKey(<redacted>, id={})", self.id)
    }
}

fn derive_key_id(secret: &Secret32) -> KeyId {
    let id_key = hkdf_32(secret, INFO_KEY_ID);
    let tag = ring::hmac::sign(
        &ring::hmac::Key::new(ring::hmac::HMAC_SHA256, id_key.bytes()),
        KEY_ID_LABEL,
    );
    let mut id = [0u8; 8];
    id.copy_from_slice(&tag.as_ref()[..8]);
    KeyId(id)
}

fn read_key_file(path: &Path, check_mode: bool) -> Result<MasterKey, CryptoError> {
    let io_err = |source| CryptoError::KeyFileIo {
        path: path.to_path_buf(),
        source,
    };
    let file = File::open(path).map_err(io_err)?;
    let meta = file.metadata().map_err(io_err)?;
    if !meta.is_file() {
        return Err(CryptoError::KeyFileNotRegular {
            path: path.to_path_buf(),
        });
    }
    let mode = meta.permissions().mode() & 0o7777;
    if check_mode && mode & 0o077 != 0 {
        return Err(CryptoError::KeyFilePermissions {
            path: path.to_path_buf(),
            mode,
        });
    }
    // Zeroizing: the buffer holds the key (raw or hex) and must be wiped whatever happens next.
    let mut content = Zeroizing::new(Vec::with_capacity(MAX_KEY_FILE_LEN + 1));
    file.take(MAX_KEY_FILE_LEN as u64 + 1)
        .read_to_end(&mut content)
        .map_err(io_err)?;
    parse_key_bytes(&content).ok_or_else(|| CryptoError::KeyFileFormat {
        path: path.to_path_buf(),
        len: content.len(),
    })
}

/// Raw 32 bytes, or 64 hex characters with at most one trailing `\n`.
fn parse_key_bytes(content: &[u8]) -> Option<MasterKey> {
    let mut secret = Secret32::zeroed();
    let ok = match content.len() {
        KEY_LEN => {
            secret.bytes_mut().copy_from_slice(content);
            true
        }
        64 => from_hex_into(content, secret.bytes_mut()),
        65 if content[64] == b'\n' => from_hex_into(&content[..64], secret.bytes_mut()),
        _ => false,
    };
    ok.then(|| MasterKey::from_secret(secret))
}

/// Writes a new random master key to `path`: 32 raw bytes, mode 0600, and returns its key id.
///
/// Fails if `path` already exists: a key is never overwritten. The file appears atomically,
/// complete or not at all: the bytes go to a temporary file in the same directory (created with
/// `O_EXCL` and mode 0600), are fsynced, then hard-linked to `path` (`link(2)` fails rather than
/// replace an existing file, unlike `rename(2)`), and the directory is fsynced.
pub fn generate_key_file(path: impl AsRef<Path>) -> Result<KeyId, CryptoError> {
    let path = path.as_ref();
    let io_err = |p: &Path| {
        let p = p.to_path_buf();
        move |source| CryptoError::KeyFileIo { path: p, source }
    };
    let exists = || CryptoError::KeyFileExists {
        path: path.to_path_buf(),
    };
    if path.symlink_metadata().is_ok() {
        return Err(exists());
    }
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let name = path.file_name().ok_or_else(|| CryptoError::KeyFileIo {
        path: path.to_path_buf(),
        source: std::io::Error::new(std::io::ErrorKind::InvalidInput, "not a file name"),
    })?;
    let mut suffix = [0u8; 8];
    random_fill(&mut suffix)?;
    let mut tmp_name = std::ffi::OsString::from(".");
    tmp_name.push(name);
    tmp_name.push(format!(".tmp-{}", to_hex(&suffix)));
    let tmp = dir.join(tmp_name);

    let key = MasterKey::generate()?;
    let written = (|| -> Result<(), CryptoError> {
        let mut f = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&tmp)
            .map_err(io_err(&tmp))?;
        f.write_all(key.secret().bytes()).map_err(io_err(&tmp))?;
        f.sync_all().map_err(io_err(&tmp))?;
        std::fs::hard_link(&tmp, path).map_err(|e| {
            if e.kind() == std::io::ErrorKind::AlreadyExists {
                exists()
            } else {
                io_err(path)(e)
            }
        })
    })();
    // The temporary name goes away whether or not the link succeeded.
    let _ = std::fs::remove_file(&tmp);
    written?;
    File::open(&dir)
        .and_then(|d| d.sync_all())
        .map_err(io_err(&dir))?;
    Ok(key.id())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn write_mode(path: &Path, bytes: &[u8], mode: u32) {
        std::fs::write(path, bytes).unwrap();
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
    }

    /// Golden: the key id derivation is part of the on-disk format (key ids are stored). The
    /// value was reproduced independently with Python's `hmac`/`hashlib` (RFC 5869 HKDF).
    #[test]
    fn key_id_is_stable() {
        let bytes: [u8; 32] = std::array::from_fn(|i| i as u8);
        let key = MasterKey::from_bytes(&bytes);
        assert_eq!(key.id().to_hex(), GOLDEN_KEY_ID);
        assert_eq!(KeyId::parse(GOLDEN_KEY_ID), Some(key.id()));
    }
    const GOLDEN_KEY_ID: &str = "5ac0bed946495e96";

    #[test]
    fn debug_is_redacted() {
        let bytes = [0xA5u8; 32];
        let key = MasterKey::from_bytes(&bytes);
        let dbg = format!("{key:?}");
        assert_eq!(dbg, format!("MasterKey(<redacted>, id={})", key.id()));
        assert!(!dbg.to_lowercase().contains("a5a5"));
    }

    #[test]
    fn generate_key_file_writes_0600_and_refuses_to_overwrite() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("master.key");
        let id = generate_key_file(&path).unwrap();
        let meta = std::fs::metadata(&path).unwrap();
        assert_eq!(meta.permissions().mode() & 0o777, 0o600);
        assert_eq!(meta.len(), 32);
        assert_eq!(MasterKey::load(&path).unwrap().id(), id);
        // No temporary file is left behind.
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
        let err = generate_key_file(&path).unwrap_err();
        assert!(matches!(err, CryptoError::KeyFileExists { .. }), "{err}");
        // A second key is different.
        let other = generate_key_file(dir.path().join("other.key")).unwrap();
        assert_ne!(other, id);
    }

    #[test]
    fn load_refuses_group_or_other_readable_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("master.key");
        write_mode(&path, &[7u8; 32], 0o644);
        let err = MasterKey::load(&path).unwrap_err();
        let msg = err.to_string();
        assert!(matches!(
            err,
            CryptoError::KeyFilePermissions { mode: 0o644, .. }
        ));
        assert!(msg.contains(&path.display().to_string()), "{msg}");
        assert!(msg.contains("chmod 600"), "{msg}");
        assert_eq!(err.kind(), "key_error");
        for mode in [0o640, 0o604, 0o660, 0o602] {
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).unwrap();
            assert!(MasterKey::load(&path).is_err(), "mode {mode:o} accepted");
        }
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o400)).unwrap();
        assert_eq!(
            MasterKey::load(&path).unwrap().id(),
            MasterKey::from_bytes(&[7u8; 32]).id()
        );
    }

    #[test]
    fn load_refuses_wrong_lengths_and_accepts_hex() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("k");
        for bad in [
            &[1u8; 31][..],
            &[1u8; 33][..],
            &[][..],
            &[b'a'; 66][..],
            &[1u8; 64][..],
        ] {
            write_mode(&path, bad, 0o600);
            let err = MasterKey::load(&path).unwrap_err();
            assert!(
                matches!(err, CryptoError::KeyFileFormat { len, .. } if len == bad.len()),
                "{err}"
            );
        }
        // A file far too long is read only up to the limit.
        write_mode(&path, &[b'0'; 4096], 0o600);
        assert!(matches!(
            MasterKey::load(&path).unwrap_err(),
            CryptoError::KeyFileFormat { len: 66, .. }
        ));

        let raw: [u8; 32] = std::array::from_fn(|i| (i * 7) as u8);
        let want = MasterKey::from_bytes(&raw).id();
        let hex = to_hex(&raw);
        write_mode(&path, hex.as_bytes(), 0o600);
        assert_eq!(MasterKey::load(&path).unwrap().id(), want);
        write_mode(&path, format!("{}\n", hex.to_uppercase()).as_bytes(), 0o600);
        assert_eq!(MasterKey::load(&path).unwrap().id(), want);
        write_mode(&path, &raw, 0o600);
        assert_eq!(MasterKey::load(&path).unwrap().id(), want);
    }

    #[test]
    fn load_refuses_directory_and_missing_file() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o700)).unwrap();
        assert!(matches!(
            MasterKey::load(dir.path()).unwrap_err(),
            CryptoError::KeyFileNotRegular { .. }
        ));
        let missing = dir.path().join("missing");
        let msg = MasterKey::load(&missing).unwrap_err().to_string();
        assert!(msg.contains(&missing.display().to_string()), "{msg}");
    }

    #[test]
    fn credential_dir_skips_mode_check() {
        let dir = tempfile::tempdir().unwrap();
        write_mode(&dir.path().join(CREDENTIAL_NAME), &[9u8; 32], 0o644);
        let key = MasterKey::from_credentials_dir(dir.path()).unwrap();
        assert_eq!(key.id(), MasterKey::from_bytes(&[9u8; 32]).id());
    }

    #[test]
    fn sub_keys_differ_from_each_other() {
        let key = MasterKey::from_bytes(&[3u8; 32]);
        let kek = key.kek();
        let audit = key.audit_key();
        let check = key.key_check_key();
        assert_ne!(kek.secret().bytes(), audit.secret().bytes());
        assert_ne!(kek.secret().bytes(), check.secret().bytes());
        assert_ne!(audit.secret().bytes(), check.secret().bytes());
        assert_ne!(kek.secret().bytes(), key.secret().bytes());
    }
}
