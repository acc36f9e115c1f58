//! Data keys and field sealing: the on-disk format of every encrypted value.
//!
//! # Layout of a sealed value (format version 1)
//!
//! ```text
//! offset  len  content
//! 0       1    version = 0x01
//! 1       12   nonce, random from SystemRandom
//! 13      n    AES-256-GCM ciphertext (same length as the plaintext)
//! 13+n    16   GCM tag
//! ```
//!
//! # AAD of a field (format version 1)
//!
//! Every part is length-prefixed (4-byte big-endian length, then the bytes), in this order:
//!
//! ```text
//! "inhouse.field" ‖ [version] ‖ table ‖ column ‖ row id (i64, 8 bytes BE) ‖ owner uid (u32, 4 bytes BE)
//! ```
//!
//! The table and column are labels of the *format*, not live SQL names: if a migration ever
//! renames a column, the code must keep passing the old label. Both the layout and the AAD are
//! frozen by the golden tests below; if one fails, the change would make existing databases
//! unreadable.

use ring::aead::{Aad, LessSafeKey, Nonce, UnboundKey, AES_256_GCM, NONCE_LEN};

use super::{put_field, random_fill, CryptoError, Secret32, FORMAT_VERSION};

/// Length of the GCM tag at the end of a sealed value.
pub const TAG_LEN: usize = 16;
/// Bytes a sealed value adds to its plaintext: version, nonce and tag.
pub const OVERHEAD: usize = 1 + NONCE_LEN + TAG_LEN;

const FIELD_DOMAIN: &[u8] = b"inhouse.field";

/// A per-user data key (DEK): 32 random bytes that seal that user's fields.
///
/// Stored only wrapped by the key-encryption key (see [`super::Kek`]); destroying the wrapped
/// copy makes every field it sealed unreadable (crypto-shredding). Not `Clone`, redacted `Debug`,
/// zeroized on drop.
pub struct DataKey {
    secret: Secret32,
}

impl DataKey {
    /// A fresh random data key.
    pub fn generate() -> Result<DataKey, CryptoError> {
        Ok(DataKey {
            secret: Secret32::random()?,
        })
    }

    pub(crate) fn from_secret(secret: Secret32) -> DataKey {
        DataKey { secret }
    }

    pub(crate) fn secret(&self) -> &Secret32 {
        &self.secret
    }

    /// A key with known bytes, for golden tests.
    #[cfg(test)]
    pub(crate) fn from_bytes(bytes: &[u8; 32]) -> DataKey {
        let mut secret = Secret32::zeroed();
        secret.bytes_mut().copy_from_slice(bytes);
        DataKey { secret }
    }
}

impl std::fmt::Debug for DataKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("DataKey(<redacted>)")
    }
}

/// Where a sealed field lives: bound into its AAD so it only opens in that place.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FieldContext<'a> {
    /// Table label, e.g. `"requests"`.
    pub table: &'a str,
    /// Column label, e.g. `"prompt"`.
    pub column: &'a str,
    /// The row's id (its SQLite rowid).
    pub row_id: i64,
    /// The uid that owns the row.
    pub owner_uid: u32,
}

impl FieldContext<'_> {
    /// The exact AAD bytes for this field (see the module docs for the encoding).
    pub fn aad(&self) -> Vec<u8> {
        let mut aad = Vec::with_capacity(64);
        put_field(&mut aad, FIELD_DOMAIN);
        put_field(&mut aad, &[FORMAT_VERSION]);
        put_field(&mut aad, self.table.as_bytes());
        put_field(&mut aad, self.column.as_bytes());
        put_field(&mut aad, &self.row_id.to_be_bytes());
        put_field(&mut aad, &self.owner_uid.to_be_bytes());
        aad
    }
}

/// Seals `plaintext` for the place described by `ctx`. Output: `version ‖ nonce ‖ ct ‖ tag`.
pub fn seal(
    key: &DataKey,
    ctx: &FieldContext<'_>,
    plaintext: &[u8],
) -> Result<Vec<u8>, CryptoError> {
    seal_raw(&key.secret, &ctx.aad(), plaintext)
}

/// Opens a value sealed by [`seal`] for the same `ctx`. Any failure (wrong key, another row's
/// or column's ciphertext, a flipped byte, truncation, unknown version) is
/// [`CryptoError::Integrity`].
pub fn open(key: &DataKey, ctx: &FieldContext<'_>, sealed: &[u8]) -> Result<Vec<u8>, CryptoError> {
    open_raw(&key.secret, &ctx.aad(), sealed)
}

/// The parts of a sealed value, borrowed from it. Parsing checks only the shape, not the tag.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SealedParts<'a> {
    /// Format version (always [`FORMAT_VERSION`] for values that parse).
    pub version: u8,
    /// The 96-bit nonce.
    pub nonce: [u8; NONCE_LEN],
    /// The ciphertext, as long as the plaintext.
    pub ciphertext: &'a [u8],
    /// The GCM tag.
    pub tag: [u8; TAG_LEN],
}

impl<'a> SealedParts<'a> {
    /// Splits a sealed value into its parts; an unknown version or a value shorter than
    /// [`OVERHEAD`] is an integrity error.
    pub fn parse(sealed: &'a [u8]) -> Result<SealedParts<'a>, CryptoError> {
        if sealed.len() < OVERHEAD {
            return Err(CryptoError::Integrity {
                reason: "sealed value too short",
            });
        }
        if sealed[0] != FORMAT_VERSION {
            return Err(CryptoError::Integrity {
                reason: "unknown format version",
            });
        }
        let (nonce, rest) = sealed[1..].split_at(NONCE_LEN);
        let (ciphertext, tag) = rest.split_at(rest.len() - TAG_LEN);
        Ok(SealedParts {
            version: sealed[0],
            nonce: nonce.try_into().expect("split at NONCE_LEN"),
            ciphertext,
            tag: tag.try_into().expect("split at TAG_LEN"),
        })
    }
}

fn aead_key(key: &Secret32) -> LessSafeKey {
    LessSafeKey::new(UnboundKey::new(&AES_256_GCM, key.bytes()).expect("32-byte AES-256 key"))
}

/// Seals with an explicit AAD and a fresh random nonce (every sealed value in inhouse goes
/// through here: fields, wrapped keys, the key-check record).
pub(crate) fn seal_raw(
    key: &Secret32,
    aad: &[u8],
    plaintext: &[u8],
) -> Result<Vec<u8>, CryptoError> {
    let mut nonce = [0u8; NONCE_LEN];
    random_fill(&mut nonce)?;
    seal_with_nonce(key, nonce, aad, plaintext)
}

/// Seals with a caller-chosen nonce. Private to the crate so that production code cannot pick
/// nonces; `seal_raw` is the only caller outside tests.
pub(crate) fn seal_with_nonce(
    key: &Secret32,
    nonce: [u8; NONCE_LEN],
    aad: &[u8],
    plaintext: &[u8],
) -> Result<Vec<u8>, CryptoError> {
    let mut out = Vec::with_capacity(OVERHEAD + plaintext.len());
    out.push(FORMAT_VERSION);
    out.extend_from_slice(&nonce);
    out.extend_from_slice(plaintext);
    let tag = aead_key(key)
        .seal_in_place_separate_tag(
            Nonce::assume_unique_for_key(nonce),
            Aad::from(aad),
            &mut out[1 + NONCE_LEN..],
        )
        // ring fails only for inputs beyond GCM's ~64 GiB limit, far above any field.
        .map_err(|_| CryptoError::Integrity {
            reason: "plaintext too long to seal",
        })?;
    out.extend_from_slice(tag.as_ref());
    Ok(out)
}

/// Opens a value sealed by [`seal_raw`] with the same AAD.
pub(crate) fn open_raw(key: &Secret32, aad: &[u8], sealed: &[u8]) -> Result<Vec<u8>, CryptoError> {
    let parts = SealedParts::parse(sealed)?;
    let mut buf = Vec::with_capacity(parts.ciphertext.len() + TAG_LEN);
    buf.extend_from_slice(parts.ciphertext);
    buf.extend_from_slice(&parts.tag);
    let len = aead_key(key)
        .open_in_place(
            Nonce::assume_unique_for_key(parts.nonce),
            Aad::from(aad),
            &mut buf,
        )
        .map_err(|_| CryptoError::Integrity {
            reason: "authentication failed",
        })?
        .len();
    buf.truncate(len);
    Ok(buf)
}

/// Opens a sealed 32-byte secret straight into a [`Secret32`], wiping the temporary buffer.
pub(crate) fn open_secret(
    key: &Secret32,
    aad: &[u8],
    sealed: &[u8],
) -> Result<Secret32, CryptoError> {
    let mut plain = zeroize::Zeroizing::new(open_raw(key, aad, sealed)?);
    if plain.len() != 32 {
        return Err(CryptoError::Integrity {
            reason: "wrapped key has the wrong length",
        });
    }
    let mut secret = Secret32::zeroed();
    secret.bytes_mut().copy_from_slice(&plain);
    zeroize::Zeroize::zeroize(&mut *plain);
    Ok(secret)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crypto::to_hex;

    fn golden_ctx() -> FieldContext<'static> {
        FieldContext {
            table: "requests",
            column: "prompt",
            row_id: 42,
            owner_uid: 1000,
        }
    }

    /// Golden: the AAD encoding. If this fails, existing databases no longer open.
    #[test]
    fn field_aad_bytes_are_stable() {
        assert_eq!(to_hex(&golden_ctx().aad()), GOLDEN_AAD);
    }
    const GOLDEN_AAD: &str = concat!(
        "0000000d696e686f7573652e6669656c64", // "inhouse.field"
        "0000000101",                         // version 1
        "000000087265717565737473",           // "requests"
        "0000000670726f6d7074",               // "prompt"
        "00000008000000000000002a",           // row id 42
        "00000004000003e8",                   // uid 1000
    );

    /// Golden: the sealed layout with a fixed key and nonce. The expected bytes were reproduced
    /// independently (Python `cryptography` AESGCM with the AAD above), not copied from this code.
    #[test]
    fn sealed_layout_is_stable() {
        let key = DataKey::from_bytes(&[0x42; 32]);
        let nonce: [u8; 12] = std::array::from_fn(|i| i as u8);
        let sealed =
            seal_with_nonce(&key.secret, nonce, &golden_ctx().aad(), b"hello, inhouse").unwrap();
        assert_eq!(to_hex(&sealed), GOLDEN_SEALED);
        assert_eq!(
            open(&key, &golden_ctx(), &sealed).unwrap(),
            b"hello, inhouse"
        );
    }
    const GOLDEN_SEALED: &str = concat!(
        "01",                               // version
        "000102030405060708090a0b",         // nonce
        "6dbbfdb1de00d262f36e2b66a2b8",     // ciphertext of "hello, inhouse"
        "0dc000cb542b2a8376a9deb5190ba14f", // tag
    );

    /// Golden: parsing a known blob gives the known fields.
    #[test]
    fn parse_known_blob() {
        let mut blob = vec![1u8];
        blob.extend(0u8..12); // nonce
        blob.extend_from_slice(b"ciphertext"); // ciphertext
        blob.extend(100u8..116); // tag
        let parts = SealedParts::parse(&blob).unwrap();
        assert_eq!(parts.version, 1);
        assert_eq!(parts.nonce, [0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11]);
        assert_eq!(parts.ciphertext, b"ciphertext");
        assert_eq!(
            parts.tag,
            std::array::from_fn::<u8, 16, _>(|i| 100 + i as u8)
        );
        // An empty plaintext is legal: exactly the overhead.
        assert!(SealedParts::parse(&blob[..OVERHEAD - 10]).is_err());
        let mut empty = blob[..13].to_vec();
        empty.extend(100u8..116);
        assert_eq!(SealedParts::parse(&empty).unwrap().ciphertext, b"");
        let mut v2 = blob.clone();
        v2[0] = 2;
        assert!(matches!(
            SealedParts::parse(&v2),
            Err(CryptoError::Integrity {
                reason: "unknown format version"
            })
        ));
    }

    #[test]
    fn round_trip_uses_fresh_nonces() {
        let key = DataKey::generate().unwrap();
        let a = seal(&key, &golden_ctx(), b"same").unwrap();
        let b = seal(&key, &golden_ctx(), b"same").unwrap();
        assert_ne!(
            a, b,
            "two seals of the same plaintext must differ (random nonce)"
        );
        assert_eq!(a.len(), OVERHEAD + 4);
        assert_eq!(open(&key, &golden_ctx(), &a).unwrap(), b"same");
        assert_eq!(open(&key, &golden_ctx(), &b).unwrap(), b"same");
    }

    #[test]
    fn any_change_of_context_key_or_bytes_fails() {
        let key = DataKey::generate().unwrap();
        let ctx = golden_ctx();
        let sealed = seal(&key, &ctx, b"secret prompt").unwrap();
        let others = [
            FieldContext {
                table: "audit",
                ..ctx
            },
            FieldContext {
                column: "response",
                ..ctx
            },
            FieldContext { row_id: 43, ..ctx },
            FieldContext {
                owner_uid: 1001,
                ..ctx
            },
        ];
        for other in &others {
            assert!(matches!(
                open(&key, other, &sealed),
                Err(CryptoError::Integrity { .. })
            ));
        }
        assert!(open(&DataKey::generate().unwrap(), &ctx, &sealed).is_err());
        for i in 0..sealed.len() {
            let mut bad = sealed.clone();
            bad[i] ^= 0x01;
            assert!(
                open(&key, &ctx, &bad).is_err(),
                "flip at byte {i} not caught"
            );
        }
        assert!(open(&key, &ctx, &sealed[..sealed.len() - 1]).is_err());
        assert!(open(&key, &ctx, &[]).is_err());
    }

    #[test]
    fn data_key_debug_is_redacted() {
        assert_eq!(
            format!("{:?}", DataKey::from_bytes(&[1; 32])),
            "DataKey(<redacted>)"
        );
    }
}
