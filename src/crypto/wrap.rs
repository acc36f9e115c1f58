//! Wrapping keys under the key-encryption key (KEK), and the key-check record.
//!
//! Every wrapped key uses the field layout of [`super::field`] (`version ‖ nonce ‖ ct ‖ tag`,
//! 61 bytes for a 32-byte key). AADs, each part length-prefixed like field AADs:
//!
//! ```text
//! data key:    "inhouse.dek"       ‖ [version] ‖ uid (u32 BE)          ‖ KEK key id (8 bytes)
//! master key:  "inhouse.master"    ‖ [version] ‖ wrapped key's id      ‖ KEK key id
//! audit key:   "inhouse.audit-key" ‖ [version] ‖ audit key's master id ‖ KEK key id
//! key check:   "inhouse.key-check" ‖ [version] ‖ key id
//! ```
//!
//! Binding the uid means a wrapped data key copied to another user's row does not unwrap;
//! binding the KEK id means a row whose `key_id` column was edited does not either.

use super::field::{open_raw, open_secret, seal_raw};
use super::{
    put_field, AuditKey, CryptoError, DataKey, KeyId, MasterKey, Secret32, FORMAT_VERSION,
};

const DEK_DOMAIN: &[u8] = b"inhouse.dek";
const MASTER_DOMAIN: &[u8] = b"inhouse.master";
const AUDIT_KEY_DOMAIN: &[u8] = b"inhouse.audit-key";
const KEY_CHECK_DOMAIN: &[u8] = b"inhouse.key-check";
/// The known constant the key-check record seals.
const KEY_CHECK_PLAINTEXT: &[u8] = b"inhouse key check v1";

/// The key-encryption key, derived from a master key; it wraps per-user data keys.
pub struct Kek {
    secret: Secret32,
    id: KeyId,
}

impl Kek {
    pub(crate) fn new(secret: Secret32, id: KeyId) -> Kek {
        Kek { secret, id }
    }

    /// The id of the master key this KEK derives from (stored beside each wrapped key).
    pub fn id(&self) -> KeyId {
        self.id
    }

    #[cfg(test)]
    pub(crate) fn secret(&self) -> &Secret32 {
        &self.secret
    }

    /// AAD for a data key of `uid` wrapped under this KEK.
    pub fn dek_aad(&self, uid: u32) -> Vec<u8> {
        let mut aad = Vec::with_capacity(48);
        put_field(&mut aad, DEK_DOMAIN);
        put_field(&mut aad, &[FORMAT_VERSION]);
        put_field(&mut aad, &uid.to_be_bytes());
        put_field(&mut aad, self.id.as_bytes());
        aad
    }

    /// Wraps the data key of `uid`.
    pub fn wrap_dek(&self, uid: u32, dek: &DataKey) -> Result<Vec<u8>, CryptoError> {
        seal_raw(&self.secret, &self.dek_aad(uid), dek.secret().bytes())
    }

    /// Unwraps the data key of `uid`; fails with an integrity error for another uid's key,
    /// another KEK's key, or damaged bytes.
    pub fn unwrap_dek(&self, uid: u32, wrapped: &[u8]) -> Result<DataKey, CryptoError> {
        open_secret(&self.secret, &self.dek_aad(uid), wrapped).map(DataKey::from_secret)
    }

    fn two_id_aad(&self, domain: &[u8], subject: KeyId) -> Vec<u8> {
        let mut aad = Vec::with_capacity(56);
        put_field(&mut aad, domain);
        put_field(&mut aad, &[FORMAT_VERSION]);
        put_field(&mut aad, subject.as_bytes());
        put_field(&mut aad, self.id.as_bytes());
        aad
    }

    /// Wraps another master key under this KEK. Used only while a rotation is in progress,
    /// so that either key can open the store and finish it (see `storage::rotation`).
    pub(crate) fn wrap_master(&self, master: &MasterKey) -> Result<Vec<u8>, CryptoError> {
        let aad = self.two_id_aad(MASTER_DOMAIN, master.id());
        seal_raw(&self.secret, &aad, master.secret().bytes())
    }

    /// Unwraps a master key wrapped by [`Kek::wrap_master`] and checks it is the `expected` one.
    pub(crate) fn unwrap_master(
        &self,
        expected: KeyId,
        wrapped: &[u8],
    ) -> Result<MasterKey, CryptoError> {
        let aad = self.two_id_aad(MASTER_DOMAIN, expected);
        let key = MasterKey::from_secret(open_secret(&self.secret, &aad, wrapped)?);
        if key.id() != expected {
            return Err(CryptoError::Integrity {
                reason: "unwrapped master key has another id",
            });
        }
        Ok(key)
    }

    /// Wraps a retired key's audit MAC key, so that old audit rows stay verifiable.
    pub(crate) fn wrap_audit_key(&self, key: &AuditKey) -> Result<Vec<u8>, CryptoError> {
        let aad = self.two_id_aad(AUDIT_KEY_DOMAIN, key.key_id());
        seal_raw(&self.secret, &aad, key.secret().bytes())
    }

    /// Unwraps the audit MAC key of the retired master key `audit_key_id`.
    pub(crate) fn unwrap_audit_key(
        &self,
        audit_key_id: KeyId,
        wrapped: &[u8],
    ) -> Result<AuditKey, CryptoError> {
        let aad = self.two_id_aad(AUDIT_KEY_DOMAIN, audit_key_id);
        Ok(AuditKey::new(
            open_secret(&self.secret, &aad, wrapped)?,
            audit_key_id,
        ))
    }
}

impl std::fmt::Debug for Kek {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Kek(<redacted>, id={})", self.id)
    }
}

/// The key that seals the key-check record of one master key.
pub struct KeyCheckKey {
    secret: Secret32,
    id: KeyId,
}

impl KeyCheckKey {
    pub(crate) fn new(secret: Secret32, id: KeyId) -> KeyCheckKey {
        KeyCheckKey { secret, id }
    }

    #[cfg(test)]
    pub(crate) fn secret(&self) -> &Secret32 {
        &self.secret
    }

    fn aad(&self) -> Vec<u8> {
        let mut aad = Vec::with_capacity(48);
        put_field(&mut aad, KEY_CHECK_DOMAIN);
        put_field(&mut aad, &[FORMAT_VERSION]);
        put_field(&mut aad, self.id.as_bytes());
        aad
    }

    /// A fresh key-check record: the known constant sealed under this key.
    pub fn seal_check(&self) -> Result<Vec<u8>, CryptoError> {
        seal_raw(&self.secret, &self.aad(), KEY_CHECK_PLAINTEXT)
    }

    /// True if `record` was sealed by [`KeyCheckKey::seal_check`] of the same master key.
    pub fn verify(&self, record: &[u8]) -> bool {
        matches!(open_raw(&self.secret, &self.aad(), record), Ok(p) if p == KEY_CHECK_PLAINTEXT)
    }
}

impl std::fmt::Debug for KeyCheckKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "KeyCheckKey(<redacted>, id={})", self.id)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crypto::to_hex;

    fn master(b: u8) -> MasterKey {
        MasterKey::from_bytes(&[b; 32])
    }

    /// Golden: the AAD of a wrapped data key.
    #[test]
    fn dek_aad_is_stable() {
        let kek = MasterKey::from_bytes(&std::array::from_fn(|i| i as u8)).kek();
        assert_eq!(to_hex(&kek.dek_aad(1000)), GOLDEN_DEK_AAD);
    }
    const GOLDEN_DEK_AAD: &str = concat!(
        "0000000b696e686f7573652e64656b", // "inhouse.dek"
        "0000000101",                     // version 1
        "00000004000003e8",               // uid 1000
        "000000085ac0bed946495e96",       // KEK key id
    );

    #[test]
    fn dek_wrap_binds_uid_and_kek() {
        let kek = master(1).kek();
        let dek = DataKey::generate().unwrap();
        let wrapped = kek.wrap_dek(1000, &dek).unwrap();
        assert_eq!(wrapped.len(), 61);
        let back = kek.unwrap_dek(1000, &wrapped).unwrap();
        assert_eq!(back.secret().bytes(), dek.secret().bytes());
        assert!(kek.unwrap_dek(1001, &wrapped).is_err());
        assert!(master(2).kek().unwrap_dek(1000, &wrapped).is_err());
    }

    #[test]
    fn master_and_audit_key_wrapping() {
        let old = master(1);
        let new = master(2);
        let wrapped = new.kek().wrap_master(&old).unwrap();
        assert_eq!(
            new.kek().unwrap_master(old.id(), &wrapped).unwrap().id(),
            old.id()
        );
        assert!(new.kek().unwrap_master(new.id(), &wrapped).is_err());
        assert!(old.kek().unwrap_master(old.id(), &wrapped).is_err());

        let audit = old.audit_key();
        let w = new.kek().wrap_audit_key(&audit).unwrap();
        let back = new.kek().unwrap_audit_key(old.id(), &w).unwrap();
        assert_eq!(back.secret().bytes(), audit.secret().bytes());
        assert!(new.kek().unwrap_audit_key(new.id(), &w).is_err());
    }

    #[test]
    fn key_check_accepts_only_its_own_key() {
        let rec = master(1).key_check_key().seal_check().unwrap();
        assert!(master(1).key_check_key().verify(&rec));
        assert!(!master(2).key_check_key().verify(&rec));
        let mut bad = rec.clone();
        bad[20] ^= 1;
        assert!(!master(1).key_check_key().verify(&bad));
    }
}
