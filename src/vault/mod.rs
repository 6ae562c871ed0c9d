//! The vault: envelope encryption of stored credentials under the master key.
//!
//! Each secret gets its own random data key (DEK). The value is sealed with the DEK, and
//! the DEK is sealed ("wrapped") with the tenant's key-encryption key (KEK), which is
//! derived from the master key with HKDF (info = tenant id). Both seals bind the tenant,
//! secret id, version, provider and name as associated data, so ciphertexts can't be
//! swapped between rows nor rows relabelled. Rotating the master key re-wraps DEKs
//! ([`Vault::rewrap`]); values are not re-encrypted.

pub(crate) mod crypto;
pub mod master_key;

use std::path::PathBuf;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use secrecy::{ExposeSecret, SecretString};
use serde::{Deserialize, Serialize};
use zeroize::Zeroizing;

pub use crypto::{CryptoError, Key};
pub use master_key::KeySource;

/// The version of a store's first master key (stores that never rotated record none).
pub const FIRST_KEY_VERSION: i64 = 1;

/// What the key that recomputes signing providers' tokens is sealed as, once a rotation
/// has made it outlive the master key it was derived from.
const SIGNING_KEY_ID: SecretIdentity<'static> = SecretIdentity {
    tenant: crate::store::DEFAULT_TENANT,
    secret_id: "signing_tokens_key",
    version: 1,
    provider: "",
    name: None,
};

/// What can go wrong with the master key or with sealing and opening secrets.
#[derive(Debug, thiserror::Error)]
pub enum VaultError {
    /// The master key value could not be used; `why` never contains the value.
    #[error("master key from {origin} is invalid: {why}")]
    BadMasterKey {
        /// Where the value came from (variable name or file path).
        origin: String,
        /// What is wrong with it.
        why: &'static str,
    },
    /// No master key is configured and none may be generated here.
    #[error(
        "no master key: set SEKS_MASTER_KEY or create the key file {} (`seks serve` or `seks secret add` generates one on first run)",
        path.display()
    )]
    NoMasterKey {
        /// The key file that was looked for.
        path: PathBuf,
    },
    /// The key file could not be read or written.
    #[error("master key file {}: {source}", path.display())]
    KeyFile {
        /// The key file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The key file can be read by other users.
    #[error("master key file {} is readable by other users; run `chmod 600 {}`", path.display(), path.display())]
    KeyFileTooOpen {
        /// The key file.
        path: PathBuf,
    },
    /// The master key is not the one this store was created with.
    #[error(
        "the master key does not match the one this store was created with (check SEKS_MASTER_KEY or the key file)"
    )]
    WrongMasterKey,
    /// A stored secret failed to decrypt: altered row, swapped row or wrong key.
    #[error("stored secret could not be decrypted: {0}")]
    Crypto(#[from] CryptoError),
    /// A stored secret decrypted to bytes that are not UTF-8.
    #[error("stored secret is not valid UTF-8")]
    NotUtf8,
    /// A stored secret was wrapped under another master key version than this broker's:
    /// written after a rotation by a process still holding the old key.
    #[error(
        "stored secret is sealed under master key version {found}, this broker holds version {held}"
    )]
    UnknownKeyVersion {
        /// The version the row names.
        found: i64,
        /// This vault's version.
        held: i64,
    },
}

/// Identity of one version of one secret: bound into its ciphertext as associated data, so
/// a row's ciphertext can't be moved to another row, given another version number, or
/// relabelled for another provider or under another name. (A whole older row put back,
/// version and all, still opens: the store's integrity against someone who can write to it
/// is outside what this binding gives.)
#[derive(Debug, Clone, Copy)]
pub struct SecretIdentity<'a> {
    /// Tenant owning the secret.
    pub tenant: &'a str,
    /// The secret's row id.
    pub secret_id: &'a str,
    /// The secret's value version, bumped on every rotation.
    pub version: i64,
    /// The provider whose upstream may receive the value.
    pub provider: &'a str,
    /// The name capabilities refer to the secret by; `None` for a sealed value nothing names
    /// (the forward proxy's CA key), which is bound as values were before names were.
    pub name: Option<&'a str>,
}

impl SecretIdentity<'_> {
    fn associated_data(&self) -> Vec<u8> {
        // NUL never occurs in tenant ids, secret ids, provider or secret names, and the two
        // prefixes differ, so this is unambiguous.
        let unnamed = format!(
            "\0{}\0{}\0{}\0{}",
            self.tenant, self.secret_id, self.version, self.provider
        );
        match self.name {
            Some(name) => format!("seks-secret-v2{unnamed}\0{name}"),
            None => format!("seks-secret-v1{unnamed}"),
        }
        .into_bytes()
    }
}

/// A secret value at rest: everything needed to open it, nothing usable without the master key.
/// In JSON (sealed keys in the meta table) its bytes are base64.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SealedSecret {
    /// The value sealed under the data key (ciphertext ‖ tag).
    #[serde(with = "base64_text")]
    pub ciphertext: Vec<u8>,
    /// Nonce of the value's seal.
    #[serde(with = "base64_text")]
    pub nonce: Vec<u8>,
    /// The data key sealed under the tenant key (ciphertext ‖ tag).
    #[serde(with = "base64_text")]
    pub wrapped_key: Vec<u8>,
    /// Nonce of the data key's seal.
    #[serde(with = "base64_text")]
    pub wrap_nonce: Vec<u8>,
    /// Version of the master key the data key is wrapped with.
    pub key_version: i64,
}

impl std::fmt::Debug for SealedSecret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SealedSecret")
            .field("key_version", &self.key_version)
            .finish_non_exhaustive()
    }
}

/// Sealed bytes as base64 strings in JSON.
mod base64_text {
    use super::BASE64;
    use base64::Engine as _;
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(bytes: &[u8], out: S) -> Result<S::Ok, S::Error> {
        out.serialize_str(&BASE64.encode(bytes))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(input: D) -> Result<Vec<u8>, D::Error> {
        BASE64
            .decode(String::deserialize(input)?)
            .map_err(serde::de::Error::custom)
    }
}

/// Seals and opens secrets with keys derived from the master key.
pub struct Vault {
    master: Key,
    /// The master key's version: what new seals record, and the only one this vault opens.
    version: i64,
    /// Recomputes signing providers' tokens: derived from the store's first master key and
    /// kept through rotations, so agents' tokens outlive them.
    signing: Key,
}

impl std::fmt::Debug for Vault {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Vault([REDACTED])")
    }
}

impl Vault {
    /// A vault over the first master key of a store (one that has never been rotated).
    pub fn new(master: Key) -> Self {
        let signing = master.derive(b"seks-signing-tokens-v1", b"");
        Vault {
            master,
            version: FIRST_KEY_VERSION,
            signing,
        }
    }

    /// This vault at master key `version` of a rotated store, with the signing-token key
    /// the store keeps sealed under it.
    pub fn restored(mut self, version: i64, signing: &SealedSecret) -> Result<Self, VaultError> {
        self.version = version;
        let encoded = self.open(SIGNING_KEY_ID, signing)?;
        let bytes = Zeroizing::new(
            BASE64
                .decode(encoded.expose_secret())
                .map_err(|_| CryptoError)?,
        );
        let array: [u8; crypto::KEY_LEN] = bytes.as_slice().try_into().map_err(|_| CryptoError)?;
        self.signing = Key::from_bytes(array);
        Ok(self)
    }

    /// The vault after rotating to `master`: the next version, the same signing-token key.
    pub fn rotated(&self, master: Key) -> Vault {
        Vault {
            master,
            version: self.version + 1,
            signing: Key::from_bytes(*self.signing.expose()),
        }
    }

    /// The master key's version.
    pub fn version(&self) -> i64 {
        self.version
    }

    /// The signing-token key sealed under this master key, for the store to keep.
    pub fn sealed_signing_key(&self) -> Result<SealedSecret, VaultError> {
        let encoded = Zeroizing::new(BASE64.encode(self.signing.expose()));
        self.seal(SIGNING_KEY_ID, &SecretString::from(encoded.as_str()))
    }

    /// A one-way fingerprint of the master key, stored so a wrong key is caught at start-up.
    pub fn key_check(&self) -> String {
        let check = self.master.derive(b"seks-key-check-v1", b"");
        crate::tokens::hex(&check.expose()[..16])
    }

    /// Compare with the fingerprint a store recorded when it was created.
    pub fn verify_key_check(&self, stored: &str) -> Result<(), VaultError> {
        use subtle::ConstantTimeEq;
        if bool::from(self.key_check().as_bytes().ct_eq(stored.as_bytes())) {
            Ok(())
        } else {
            Err(VaultError::WrongMasterKey)
        }
    }

    /// The key that signs audit chain heads, so a store edited without the master key
    /// can't forge one.
    pub fn audit_key(&self) -> crate::audit::ChainKey {
        crate::audit::ChainKey::new(self.master.derive(b"seks-audit-chain-v1", b""))
    }

    /// The key tokens of request-signing providers are recomputed with.
    pub fn signing_tokens(&self) -> crate::tokens::SigningTokens {
        crate::tokens::SigningTokens::new(Key::from_bytes(*self.signing.expose()))
    }

    /// Encrypt a secret value for storage under a fresh data key.
    pub fn seal(
        &self,
        id: SecretIdentity<'_>,
        value: &SecretString,
    ) -> Result<SealedSecret, VaultError> {
        let aad = id.associated_data();
        let dek = Key::random();
        let (nonce, ciphertext) = dek.seal(&aad, value.expose_secret().as_bytes())?;
        let (wrap_nonce, wrapped_key) = self.tenant_key(id.tenant).seal(&aad, dek.expose())?;
        Ok(SealedSecret {
            ciphertext,
            nonce: nonce.to_vec(),
            wrapped_key,
            wrap_nonce: wrap_nonce.to_vec(),
            key_version: self.version,
        })
    }

    /// Decrypt a stored secret; fails if any byte or the identity it is bound to differs.
    pub fn open(
        &self,
        id: SecretIdentity<'_>,
        sealed: &SealedSecret,
    ) -> Result<SecretString, VaultError> {
        let aad = id.associated_data();
        let dek = self.unwrap_data_key(id.tenant, &aad, sealed)?;
        let plaintext = dek.open(&sealed.nonce, &aad, &sealed.ciphertext)?;
        let text = std::str::from_utf8(&plaintext).map_err(|_| VaultError::NotUtf8)?;
        Ok(SecretString::from(text))
    }

    /// `sealed` with its data key wrapped under `to`'s master key instead of this one; the
    /// value's ciphertext is kept, once checked to open.
    pub fn rewrap(
        &self,
        id: SecretIdentity<'_>,
        sealed: &SealedSecret,
        to: &Vault,
    ) -> Result<SealedSecret, VaultError> {
        let aad = id.associated_data();
        let dek = self.unwrap_data_key(id.tenant, &aad, sealed)?;
        // A row whose value doesn't open is not vouched for under the new key.
        dek.open(&sealed.nonce, &aad, &sealed.ciphertext)?;
        let (wrap_nonce, wrapped_key) = to.tenant_key(id.tenant).seal(&aad, dek.expose())?;
        Ok(SealedSecret {
            wrapped_key,
            wrap_nonce: wrap_nonce.to_vec(),
            key_version: to.version,
            ..sealed.clone()
        })
    }

    fn unwrap_data_key(
        &self,
        tenant: &str,
        aad: &[u8],
        sealed: &SealedSecret,
    ) -> Result<Key, VaultError> {
        if sealed.key_version != self.version {
            return Err(VaultError::UnknownKeyVersion {
                found: sealed.key_version,
                held: self.version,
            });
        }
        let dek_bytes =
            self.tenant_key(tenant)
                .open(&sealed.wrap_nonce, aad, &sealed.wrapped_key)?;
        let dek_array: [u8; crypto::KEY_LEN] =
            dek_bytes.as_slice().try_into().map_err(|_| CryptoError)?;
        Ok(Key::from_bytes(dek_array))
    }

    /// For a secret sealed before names were bound (without its name), the same value
    /// sealed under its full identity `id`; `None` if it is sealed under `id` already.
    pub fn reseal_unnamed(
        &self,
        id: SecretIdentity<'_>,
        sealed: &SealedSecret,
    ) -> Result<Option<SealedSecret>, VaultError> {
        if self.open(id, sealed).is_ok() {
            return Ok(None);
        }
        let value = self.open(SecretIdentity { name: None, ..id }, sealed)?;
        self.seal(id, &value).map(Some)
    }

    fn tenant_key(&self, tenant: &str) -> Key {
        self.master.derive(b"seks-kek-v1", tenant.as_bytes())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(version: i64) -> SecretIdentity<'static> {
        SecretIdentity {
            tenant: "default",
            secret_id: "sec_1",
            version,
            provider: "openai",
            name: Some("main"),
        }
    }

    #[test]
    fn sealed_secrets_open_only_under_their_own_identity_and_key() {
        let vault = Vault::new(Key::random());
        let sealed = vault
            .seal(id(1), &SecretString::from("sk-live-abc"))
            .unwrap();
        assert_eq!(
            vault.open(id(1), &sealed).unwrap().expose_secret(),
            "sk-live-abc"
        );
        assert!(vault.open(id(2), &sealed).is_err());
        let other_tenant = SecretIdentity {
            tenant: "acme",
            ..id(1)
        };
        assert!(vault.open(other_tenant, &sealed).is_err());
        let relabelled = SecretIdentity {
            provider: "github",
            ..id(1)
        };
        assert!(vault.open(relabelled, &sealed).is_err());
        let renamed = SecretIdentity {
            name: Some("other"),
            ..id(1)
        };
        assert!(vault.open(renamed, &sealed).is_err());
        let unnamed = SecretIdentity {
            name: None,
            ..id(1)
        };
        assert!(vault.open(unnamed, &sealed).is_err());
        assert!(Vault::new(Key::random()).open(id(1), &sealed).is_err());
        assert!(!format!("{sealed:?}").contains("ciphertext:"));
    }

    #[test]
    fn a_secret_sealed_without_its_name_is_resealed_under_it_once() {
        let vault = Vault::new(Key::random());
        let unnamed = SecretIdentity {
            name: None,
            ..id(1)
        };
        let legacy = vault
            .seal(unnamed, &SecretString::from("sk-live-abc"))
            .unwrap();
        let resealed = vault.reseal_unnamed(id(1), &legacy).unwrap().unwrap();
        assert_eq!(
            vault.open(id(1), &resealed).unwrap().expose_secret(),
            "sk-live-abc"
        );
        assert!(vault.open(unnamed, &resealed).is_err());
        assert!(vault.reseal_unnamed(id(1), &resealed).unwrap().is_none());
        let other_row = SecretIdentity {
            secret_id: "sec_2",
            ..id(1)
        };
        assert!(vault.reseal_unnamed(other_row, &legacy).is_err());
    }

    #[test]
    fn a_rotation_rewraps_data_keys_and_keeps_the_signing_token_key() {
        let old = Vault::new(Key::random());
        let sealed = old.seal(id(1), &SecretString::from("sk-live-abc")).unwrap();
        let new = old.rotated(Key::random());
        assert_eq!(new.version(), 2);
        let moved = old.rewrap(id(1), &sealed, &new).unwrap();
        assert_eq!(moved.ciphertext, sealed.ciphertext);
        assert_eq!(moved.key_version, 2);
        assert_eq!(
            new.open(id(1), &moved).unwrap().expose_secret(),
            "sk-live-abc"
        );
        // Each vault opens only what is wrapped under its own key and version.
        assert!(matches!(
            old.open(id(1), &moved),
            Err(VaultError::UnknownKeyVersion { found: 2, held: 1 })
        ));
        assert!(new.open(id(1), &sealed).is_err());
        assert!(old.rewrap(id(2), &sealed, &new).is_err());

        // A broker started on the new key finds the signing-token key the store kept.
        let kept = new.sealed_signing_key().unwrap();
        let restarted = Vault::new(Key::from_bytes(*new.master.expose()))
            .restored(2, &kept)
            .unwrap();
        let token = |vault: &Vault| {
            vault
                .signing_tokens()
                .token("s3", "tok_1")
                .expose_secret()
                .to_owned()
        };
        assert_eq!(token(&restarted), token(&old));
        assert!(old.restored(2, &kept).is_err());
    }

    #[test]
    fn key_check_detects_a_different_master_key() {
        let vault = Vault::new(Key::from_bytes([1; 32]));
        let stored = vault.key_check();
        assert!(vault.verify_key_check(&stored).is_ok());
        let other = Vault::new(Key::from_bytes([2; 32]));
        assert!(matches!(
            other.verify_key_check(&stored),
            Err(VaultError::WrongMasterKey)
        ));
    }
}
