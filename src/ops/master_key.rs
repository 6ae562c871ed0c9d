//! The master key over a store: opening the vault with it, and rotating it.
//!
//! A rotation re-wraps every data key (and the forward proxy CA's) under the new key,
//! re-signs the audit log's heads, and records the new key's fingerprint and version, in
//! one transaction. Values are not re-encrypted, and agents' tokens keep working: the key
//! that recomputes signing providers' tokens is kept, sealed under the new master key.

use crate::audit::{AuditSigner, ChainKey, HeadRole};
use crate::forward::ca::{BrokerCa, CaError, META_FORWARD_CA};
use crate::store::{
    AUDIT_TENANTS_KEY, META_KEY_CHECK, META_KEY_VERSION, META_SIGNING_KEY, MetaSwap, Rekey,
    RewrappedSecret, Store, StoreError, audit_checkpoint_key, audit_head_key,
};
use crate::vault::{Key, SealedSecret, Vault, VaultError};

/// Why the vault could not be opened or the master key rotated.
#[derive(Debug, thiserror::Error)]
pub enum MasterKeyError {
    /// The store could not be read or written.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The key is not the store's, or what it sealed doesn't open.
    #[error(transparent)]
    Vault(#[from] VaultError),
    /// A stored master-key record is unreadable.
    #[error("the store's {0} is unreadable")]
    Corrupt(&'static str),
    /// A secret doesn't open under the current key, so it can't be moved to the new one.
    #[error(
        "secret `{name}` (tenant {tenant}) can't be opened with the current master key ({why}); remove or re-add it first"
    )]
    UnreadableSecret {
        /// The secret's tenant.
        tenant: String,
        /// The secret's name.
        name: String,
        /// Why it doesn't open.
        why: VaultError,
    },
    /// The forward proxy's CA key doesn't open under the current key.
    #[error("the forward proxy's CA can't be moved to the new key: {0}")]
    Ca(#[from] CaError),
    /// An audit head isn't signed by the current key: re-signing it would vouch for it.
    #[error(
        "the audit log's {0} is not signed by the current master key; run `seks audit verify` before rotating"
    )]
    AuditUnsigned(String),
    /// The new key is the one in use.
    #[error("the new master key is the one already in use")]
    SameKey,
    /// The store no longer opens with the current key: a rotation run at the same time
    /// moved it first.
    #[error(
        "the store moved to another master key while this rotation read it (another `seks key rotate`?); it opens only with that key now"
    )]
    Moved,
}

/// `vault` (new over the master key) checked against the store's fingerprint, at the
/// store's key version and with the signing-token key a rotation left sealed in it.
pub async fn open_vault(store: &dyn Store, vault: Vault) -> Result<Vault, MasterKeyError> {
    if let Some(check) = store.meta(META_KEY_CHECK).await? {
        vault.verify_key_check(&check)?;
    }
    let Some(version) = store.meta(META_KEY_VERSION).await? else {
        return Ok(vault);
    };
    let version = version
        .parse()
        .map_err(|_| MasterKeyError::Corrupt("master key version"))?;
    let signing = store
        .meta(META_SIGNING_KEY)
        .await?
        .and_then(|text| serde_json::from_str::<SealedSecret>(&text).ok())
        .ok_or(MasterKeyError::Corrupt("signing-token key"))?;
    Ok(vault.restored(version, &signing)?)
}

/// What a rotation moved to the new key.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Rotation {
    /// The new master key's version.
    pub key_version: i64,
    /// Secrets whose data keys were re-wrapped.
    pub secrets: usize,
    /// Audit heads, checkpoints and tenant lists re-signed.
    pub audit_heads: usize,
    /// Whether the forward proxy's CA key was re-wrapped.
    pub forward_ca: bool,
}

/// Move the store from `old`'s master key to `new_master`, all at once or not at all.
pub async fn rotate(
    store: &dyn Store,
    old: &Vault,
    new_master: Key,
) -> Result<(Vault, Rotation), MasterKeyError> {
    let rotated = rotate_from(store, old, new_master).await;
    // What another rotation moved reads as unopenable or unsigned under `old`: say so.
    if rotated.is_err() && store.meta(META_KEY_CHECK).await? != Some(old.key_check()) {
        return Err(MasterKeyError::Moved);
    }
    rotated
}

async fn rotate_from(
    store: &dyn Store,
    old: &Vault,
    new_master: Key,
) -> Result<(Vault, Rotation), MasterKeyError> {
    let new = old.rotated(new_master);
    if new.key_check() == old.key_check() {
        return Err(MasterKeyError::SameKey);
    }
    let mut rekey = Rekey {
        key_version: new.version(),
        ..Rekey::default()
    };
    for row in store.all_secrets().await? {
        let sealed = old
            .rewrap(row.identity(), &row.sealed, &new)
            .map_err(|why| MasterKeyError::UnreadableSecret {
                tenant: row.tenant.clone(),
                name: row.name.clone(),
                why,
            })?;
        rekey.secrets.push(RewrappedSecret {
            was: row.sealed.wrapped_key.clone(),
            tenant: row.tenant,
            id: row.id,
            version: row.version,
            sealed,
        });
    }
    let signing = serde_json::to_string(&new.sealed_signing_key()?)
        .map_err(|_| MasterKeyError::Corrupt("signing-token key"))?;
    // Applies only if the store is still at `old`'s key, whatever it was read at.
    rekey.meta.push(swap(
        META_KEY_CHECK.to_owned(),
        Some(old.key_check()),
        new.key_check(),
    ));
    for (key, value) in [
        (META_KEY_VERSION, new.version().to_string()),
        (META_SIGNING_KEY, signing),
    ] {
        let was = store.meta(key).await?;
        rekey.meta.push(swap(key.to_owned(), was, value));
    }
    let ca = store.meta(META_FORWARD_CA).await?;
    match &ca {
        Some(ca) => {
            let value = BrokerCa::rewrapped(ca, old, &new)?;
            rekey
                .meta
                .push(swap(META_FORWARD_CA.to_owned(), Some(ca.clone()), value));
        }
        None => rekey.absent.push(META_FORWARD_CA.to_owned()),
    }
    let audit = resigned_audit_heads(store, &old.audit_key(), &new.audit_key()).await?;
    let audit_heads = audit.len();
    rekey.meta.extend(audit);
    store.rekey(&rekey).await?;
    let rotation = Rotation {
        key_version: new.version(),
        secrets: rekey.secrets.len(),
        audit_heads,
        forward_ca: ca.is_some(),
    };
    Ok((new, rotation))
}

fn swap(key: String, was: Option<String>, value: String) -> MetaSwap {
    MetaSwap { key, was, value }
}

/// Every signed audit head, checkpoint and tenant list, signed again by `new`.
async fn resigned_audit_heads(
    store: &dyn Store,
    old: &ChainKey,
    new: &ChainKey,
) -> Result<Vec<MetaSwap>, MasterKeyError> {
    let Some(listed) = store.meta(AUDIT_TENANTS_KEY).await? else {
        return Ok(Vec::new());
    };
    let tenants = old
        .signed_tenants(&listed)
        .ok_or_else(|| MasterKeyError::AuditUnsigned("list of tenants".to_owned()))?;
    let mut swaps = Vec::new();
    for tenant in &tenants {
        for (role, key) in [
            (HeadRole::Newest, audit_head_key(tenant)),
            (HeadRole::Checkpoint, audit_checkpoint_key(tenant)),
        ] {
            if let Some(stored) = store.meta(&key).await? {
                let value = old
                    .resigned(new, role, tenant, &stored)
                    .ok_or_else(|| MasterKeyError::AuditUnsigned(key.clone()))?;
                swaps.push(swap(key, Some(stored), value));
            }
        }
    }
    swaps.push(swap(
        AUDIT_TENANTS_KEY.to_owned(),
        Some(listed),
        new.tenants(tenants),
    ));
    Ok(swaps)
}
