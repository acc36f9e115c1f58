//! Envelope encryption for everything inhouse writes to disk.
//!
//! The key hierarchy, top to bottom:
//!
//! ```text
//! master key (32 bytes, key file or systemd credential; never stored in the database)
//!  ├─ HKDF "inhouse.v1.key-id"    → id key  → key id = HMAC(id key, "inhouse key id")[..8]
//!  ├─ HKDF "inhouse.v1.kek"       → key-encryption key: wraps per-user data keys
//!  ├─ HKDF "inhouse.v1.audit-mac" → HMAC key of the audit chain
//!  └─ HKDF "inhouse.v1.key-check" → seals a known constant so a wrong key is caught at start-up
//! per-user data key (random 32 bytes, stored wrapped by the KEK) → seals prompt and response fields
//! ```
//!
//! Every ciphertext has the same layout, `version ‖ nonce ‖ ciphertext ‖ tag` (see [`field`]),
//! AES-256-GCM with a random 96-bit nonce from `SystemRandom` (never a counter: several processes
//! and restarts share a key, so a counter could repeat). What a ciphertext is *for* is bound into
//! its additional authenticated data (AAD), so a ciphertext copied to another row, column, user
//! or purpose fails to open.
//!
//! Submodules:
//! - [`master`]: the master key, key files, key ids and the HKDF sub-keys.
//! - [`field`]: data keys and field sealing (the on-disk record format, frozen by golden tests).
//! - [`wrap`]: wrapping data keys (and, during rotation, master and audit keys) under a KEK,
//!   and the key-check record.
//! - [`audit_mac`]: the keyed hash that chains audit rows.
//!
//! Secrets live in types with no `Clone`, no `Serialize`, a redacted `Debug`, and whose bytes
//! are zeroized on drop. A known limit: `ring` builds its own expanded key schedules from our
//! bytes for the duration of one operation and does not zeroize them.

pub mod audit_mac;
pub mod field;
pub mod master;
pub mod wrap;

use std::path::PathBuf;

pub use audit_mac::{AuditKey, AuditMacInput, AUDIT_GENESIS_MAC};
pub use field::{open, seal, DataKey, FieldContext, SealedParts};
pub use master::{generate_key_file, KeyId, MasterKey, CREDENTIAL_NAME, KEY_LEN};
pub use wrap::{Kek, KeyCheckKey};

/// Version byte at the start of every sealed value, and bound into every AAD. Bump it (and keep
/// the old code path for reading) if the layout or the AAD encoding ever changes.
pub const FORMAT_VERSION: u8 = 1;

/// Errors of the crypto layer. None of them carries key material; paths and modes are fine.
#[derive(Debug, thiserror::Error)]
pub enum CryptoError {
    /// The key file could not be read or written.
    #[error("key file {path}: {source}")]
    KeyFileIo {
        /// The file in question.
        path: PathBuf,
        /// What the OS said.
        #[source]
        source: std::io::Error,
    },
    /// The key file is readable or writable by group or others.
    #[error(
        "key file {path} has mode {mode:04o}, so group or others can read it; \
         run `chmod 600 {path}` (and make sure only the inhouse user owns it)"
    )]
    KeyFilePermissions {
        /// The file in question.
        path: PathBuf,
        /// Its permission bits.
        mode: u32,
    },
    /// The key file does not hold a key in a format we accept.
    #[error(
        "key file {path} holds {len} bytes; a master key is exactly 32 raw bytes \
         (as written by `inhouse admin gen-key`) or 64 hex characters with an optional newline"
    )]
    KeyFileFormat {
        /// The file in question.
        path: PathBuf,
        /// How many bytes it held (never its content).
        len: usize,
    },
    /// The key file is not a regular file.
    #[error("key file {path} is not a regular file")]
    KeyFileNotRegular {
        /// The path in question.
        path: PathBuf,
    },
    /// `generate_key_file` refuses to overwrite an existing key.
    #[error("key file {path} already exists; refusing to overwrite a key (move it away first)")]
    KeyFileExists {
        /// The path in question.
        path: PathBuf,
    },
    /// `from_systemd_credential` was called outside a unit with credentials.
    #[error(
        "$CREDENTIALS_DIRECTORY is not set: run inhoused under systemd with \
         `LoadCredential={name}:/path/to/key` (or `LoadCredentialEncrypted=`), or pass --key-file"
    )]
    NoCredentialsDirectory {
        /// The credential name we looked for.
        name: &'static str,
    },
    /// A sealed value did not open: wrong key, wrong context (moved to another row), truncated,
    /// an unknown version, or modified bytes. Deliberately no more detail than a short reason.
    #[error("integrity check failed ({reason})")]
    Integrity {
        /// A short, fixed description, never data.
        reason: &'static str,
    },
    /// The operating system's random number generator failed.
    #[error("the system random number generator failed")]
    Random,
}

impl CryptoError {
    /// A stable machine-readable name for this error.
    pub fn kind(&self) -> &'static str {
        match self {
            CryptoError::KeyFileIo { .. }
            | CryptoError::KeyFilePermissions { .. }
            | CryptoError::KeyFileFormat { .. }
            | CryptoError::KeyFileNotRegular { .. }
            | CryptoError::KeyFileExists { .. }
            | CryptoError::NoCredentialsDirectory { .. } => "key_error",
            CryptoError::Integrity { .. } => "integrity_error",
            CryptoError::Random => "crypto_error",
        }
    }
}

/// Appends one length-prefixed field: a 4-byte big-endian length, then the bytes.
///
/// Every byte string that feeds an AAD or a MAC is built from these, so no two different field
/// lists can encode to the same bytes (no ambiguity between "ab"+"c" and "a"+"bc").
pub(crate) fn put_field(out: &mut Vec<u8>, bytes: &[u8]) {
    let len = u32::try_from(bytes.len()).expect("AAD/MAC field longer than 4 GiB");
    out.extend_from_slice(&len.to_be_bytes());
    out.extend_from_slice(bytes);
}

/// Lower-case hex of `bytes` (used for key ids and in tests; never for secrets in messages).
pub(crate) fn to_hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        s.push(DIGITS[usize::from(b >> 4)] as char);
        s.push(DIGITS[usize::from(b & 0x0f)] as char);
    }
    s
}

/// Parses hex (either case) into `out`; false if the length or a character is wrong.
pub(crate) fn from_hex_into(hex: &[u8], out: &mut [u8]) -> bool {
    fn nibble(c: u8) -> Option<u8> {
        match c {
            b'0'..=b'9' => Some(c - b'0'),
            b'a'..=b'f' => Some(c - b'a' + 10),
            b'A'..=b'F' => Some(c - b'A' + 10),
            _ => None,
        }
    }
    if hex.len() != out.len() * 2 {
        return false;
    }
    for (i, pair) in hex.chunks_exact(2).enumerate() {
        match (nibble(pair[0]), nibble(pair[1])) {
            (Some(h), Some(l)) => out[i] = (h << 4) | l,
            _ => return false,
        }
    }
    true
}

/// Fills `buf` from the operating system's CSPRNG.
pub(crate) fn random_fill(buf: &mut [u8]) -> Result<(), CryptoError> {
    use ring::rand::SecureRandom;
    ring::rand::SystemRandom::new()
        .fill(buf)
        .map_err(|_| CryptoError::Random)
}

/// A 32-byte secret on the heap, zeroized on drop.
///
/// Boxed so that moving the owning type around does not leave stray copies of the bytes in old
/// stack frames. Not `Clone`; `Debug` prints nothing of the bytes.
pub(crate) struct Secret32(Box<[u8; 32]>);

impl Secret32 {
    /// A fresh all-zero secret, to be filled in place (so the bytes never sit on the stack).
    pub(crate) fn zeroed() -> Secret32 {
        Secret32(Box::new([0u8; 32]))
    }

    /// A fresh secret from the system CSPRNG.
    pub(crate) fn random() -> Result<Secret32, CryptoError> {
        let mut s = Secret32::zeroed();
        random_fill(&mut s.0[..])?;
        Ok(s)
    }

    pub(crate) fn bytes(&self) -> &[u8; 32] {
        &self.0
    }

    pub(crate) fn bytes_mut(&mut self) -> &mut [u8; 32] {
        &mut self.0
    }
}

impl Drop for Secret32 {
    fn drop(&mut self) {
        zeroize::Zeroize::zeroize(&mut self.0[..]);
    }
}

impl std::fmt::Debug for Secret32 {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("<redacted>")
    }
}

/// One HKDF-SHA256 expansion of a 32-byte input key into a 32-byte output key.
///
/// The salt is a fixed, public application label: the master key is already uniformly random,
/// so the salt only separates inhouse's derivations from any other use of the same bytes.
pub(crate) fn hkdf_32(ikm: &Secret32, info: &[u8]) -> Secret32 {
    struct Len32;
    impl ring::hkdf::KeyType for Len32 {
        fn len(&self) -> usize {
            32
        }
    }
    const SALT: &[u8] = b"inhouse.hkdf.salt.v1";
    let prk = ring::hkdf::Salt::new(ring::hkdf::HKDF_SHA256, SALT).extract(ikm.bytes());
    let mut out = Secret32::zeroed();
    prk.expand(&[info], Len32)
        .and_then(|okm| okm.fill(out.bytes_mut()))
        // 32 bytes is far below HKDF-SHA256's limit of 255 * 32 bytes; this cannot fail.
        .expect("HKDF expand of 32 bytes");
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn length_prefix_is_big_endian_u32() {
        let mut v = Vec::new();
        put_field(&mut v, b"ab");
        put_field(&mut v, b"");
        assert_eq!(v, [0, 0, 0, 2, b'a', b'b', 0, 0, 0, 0]);
    }

    #[test]
    fn hex_round_trip() {
        let mut out = [0u8; 3];
        assert!(from_hex_into(b"00fFa1", &mut out));
        assert_eq!(out, [0x00, 0xff, 0xa1]);
        assert_eq!(to_hex(&out), "00ffa1");
        assert!(!from_hex_into(b"00fFa", &mut out));
        assert!(!from_hex_into(b"00fFg1", &mut out));
    }

    #[test]
    fn secret_debug_is_redacted() {
        let mut s = Secret32::zeroed();
        s.bytes_mut()[0] = 0xAB;
        assert_eq!(format!("{s:?}"), "<redacted>");
    }
}
