//! The hash chain that makes the audit log tamper-evident.
//!
//! Each record's hash covers the previous record's hash, its tenant, its sequence number and
//! its JSON text, so altering, removing or reordering a record breaks every link after it.
//! The newest head (and the head of pruned history) is signed with a key derived from the
//! master key: the tail can't be cut, nor pruned history faked, without it.

use aws_lc_rs::digest::{Context, SHA256};
use serde::{Deserialize, Serialize};
use subtle::ConstantTimeEq;

use super::AuditRecord;
use crate::store::{AUDIT_TENANTS_KEY, Store, StoreError, audit_checkpoint_key, audit_head_key};
use crate::tokens::hex;
use crate::vault::Key;

/// The `prev_hash` of a tenant's first record.
pub const GENESIS: &str = "0000000000000000000000000000000000000000000000000000000000000000";

/// The hash of one record, given the hash before it: SHA-256 of
/// `prev_hash \n tenant \n seq \n record_json`.
pub fn link(prev_hash: &str, tenant: &str, seq: i64, record_json: &str) -> String {
    let mut hash = Context::new(&SHA256);
    for part in [
        prev_hash,
        "\n",
        tenant,
        "\n",
        &seq.to_string(),
        "\n",
        record_json,
    ] {
        hash.update(part.as_bytes());
    }
    hex(hash.finish().as_ref())
}

/// Append a record to the chain ending at `head`, which then ends at the new record.
pub fn extend(head: &mut Head, tenant: &str, record_json: &str) {
    let seq = head.seq + 1;
    head.hash = link(&head.hash, tenant, seq, record_json);
    head.seq = seq;
}

/// A point in a tenant's chain: a sequence number and the hash of the record there.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Head {
    /// Sequence number (0 before the first record).
    pub seq: i64,
    /// Hash of that record (`GENESIS` at 0).
    pub hash: String,
}

impl Head {
    /// Before the first record.
    pub fn genesis() -> Self {
        Head {
            seq: 0,
            hash: GENESIS.to_owned(),
        }
    }
}

/// A head with its signature, as kept in the store's meta table.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SignedHead {
    /// The head.
    #[serde(flatten)]
    pub head: Head,
    /// HMAC over tenant, seq and hash.
    pub mac: String,
}

/// Signs and checks chain heads.
pub struct ChainKey(Key);

impl std::fmt::Debug for ChainKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ChainKey([REDACTED])")
    }
}

impl ChainKey {
    /// Wrap a derived key.
    pub fn new(key: Key) -> Self {
        ChainKey(key)
    }

    fn mac(&self, role: HeadRole, tenant: &str, head: &Head) -> String {
        let role = match role {
            HeadRole::Newest => "newest",
            HeadRole::Checkpoint => "checkpoint",
        };
        hex(&self
            .0
            .mac(format!("{role}\n{tenant}\n{}\n{}", head.seq, head.hash).as_bytes()))
    }

    /// Sign `head` of `tenant`'s chain in `role`.
    pub fn sign(&self, role: HeadRole, tenant: &str, head: Head) -> SignedHead {
        SignedHead {
            mac: self.mac(role, tenant, &head),
            head,
        }
    }

    /// Whether `signed` was signed by this key for `tenant` in `role`.
    pub fn check(&self, role: HeadRole, tenant: &str, signed: &SignedHead) -> bool {
        bool::from(
            self.mac(role, tenant, &signed.head)
                .as_bytes()
                .ct_eq(signed.mac.as_bytes()),
        )
    }
}

impl ChainKey {
    /// A signed head of `tenant` in `role`, as stored, signed again by `to` (a master-key
    /// rotation); `None` if this key didn't sign it.
    pub fn resigned(
        &self,
        to: &ChainKey,
        role: HeadRole,
        tenant: &str,
        stored: &str,
    ) -> Option<String> {
        let signed = serde_json::from_str::<SignedHead>(stored)
            .ok()
            .filter(|signed| self.check(role, tenant, signed))?;
        serde_json::to_string(&to.sign(role, tenant, signed.head)).ok()
    }
}

impl ChainKey {
    fn mac_tenants(&self, tenants: &[String]) -> String {
        hex(&self
            .0
            .mac(format!("tenants\n{}", tenants.join("\n")).as_bytes()))
    }

    /// Sign the list of tenants that have a chain, sorted.
    pub fn sign_tenants(&self, mut tenants: Vec<String>) -> SignedTenants {
        tenants.sort();
        tenants.dedup();
        SignedTenants {
            mac: self.mac_tenants(&tenants),
            tenants,
        }
    }

    /// Whether `signed` was signed by this key.
    pub fn check_tenants(&self, signed: &SignedTenants) -> bool {
        bool::from(
            self.mac_tenants(&signed.tenants)
                .as_bytes()
                .ct_eq(signed.mac.as_bytes()),
        )
    }
}

/// Every tenant that has an audit chain, signed: a tenant whose records and head were
/// deleted together is still known to have had them.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SignedTenants {
    /// The tenants, sorted.
    pub tenants: Vec<String>,
    /// HMAC over the list.
    pub mac: String,
}

/// Signs what the store keeps next to the records, for the store (which has no key).
pub trait AuditSigner: Sync {
    /// The signed newest head of `tenant`'s chain, as stored.
    fn newest(&self, tenant: &str, head: Head) -> String;
    /// The signed checkpoint of `tenant`'s pruned history, as stored.
    fn checkpoint(&self, tenant: &str, head: Head) -> String;
    /// The signed list of tenants with a chain, as stored.
    fn tenants(&self, tenants: Vec<String>) -> String;
    /// The head a stored newest head of `tenant` names, if this key signed it.
    fn signed_newest(&self, tenant: &str, stored: &str) -> Option<Head>;
    /// The tenants a stored list names, if this key signed it.
    fn signed_tenants(&self, stored: &str) -> Option<Vec<String>>;
}

impl AuditSigner for ChainKey {
    fn newest(&self, tenant: &str, head: Head) -> String {
        serde_json::to_string(&self.sign(HeadRole::Newest, tenant, head)).unwrap_or_default()
    }

    fn checkpoint(&self, tenant: &str, head: Head) -> String {
        serde_json::to_string(&self.sign(HeadRole::Checkpoint, tenant, head)).unwrap_or_default()
    }

    fn tenants(&self, tenants: Vec<String>) -> String {
        serde_json::to_string(&self.sign_tenants(tenants)).unwrap_or_default()
    }

    fn signed_newest(&self, tenant: &str, stored: &str) -> Option<Head> {
        serde_json::from_str::<SignedHead>(stored)
            .ok()
            .filter(|signed| self.check(HeadRole::Newest, tenant, signed))
            .map(|signed| signed.head)
    }

    fn signed_tenants(&self, stored: &str) -> Option<Vec<String>> {
        serde_json::from_str::<SignedTenants>(stored)
            .ok()
            .filter(|signed| self.check_tenants(signed))
            .map(|signed| signed.tenants)
    }
}

/// What a signed head vouches for; signed apart, so one can't stand in for the other.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HeadRole {
    /// The newest record of a chain.
    Newest,
    /// The last record pruned, where verification starts.
    Checkpoint,
}

/// One stored audit row, as verification reads it.
#[derive(Debug, Clone)]
pub struct StoredRecord {
    /// Tenant.
    pub tenant: String,
    /// Position in the tenant's chain, from 1.
    pub seq: i64,
    /// When the request arrived (Unix ms), as the store's time index has it.
    pub at_ms: i64,
    /// Whether the store's index entries for this record (sequence range, time range,
    /// time) agree with it; an edited index could hide records from queries.
    pub index_ok: bool,
    /// The record's JSON text, as hashed.
    pub record: String,
    /// Hash of the record before.
    pub prev_hash: String,
    /// This record's hash.
    pub hash: String,
}

/// What is wrong with a chain: the first problem found, naming the record.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ChainError {
    /// A record's content doesn't match its hash.
    #[error(
        "record {seq} of tenant `{tenant}` was altered (its content no longer matches its hash)"
    )]
    Altered {
        /// Tenant.
        tenant: String,
        /// The record.
        seq: i64,
    },
    /// Records are missing from the sequence.
    #[error("records {from}..={to} of tenant `{tenant}` were removed")]
    Removed {
        /// Tenant.
        tenant: String,
        /// First missing.
        from: i64,
        /// Last missing.
        to: i64,
    },
    /// A record doesn't follow the one before it.
    #[error(
        "record {seq} of tenant `{tenant}` does not follow record {} (records were reordered or replaced)",
        seq - 1
    )]
    Reordered {
        /// Tenant.
        tenant: String,
        /// The record.
        seq: i64,
    },
    /// A signed head is missing, forged or ahead of the records.
    #[error("tenant `{tenant}`: {why}")]
    Head {
        /// Tenant.
        tenant: String,
        /// What is wrong.
        why: String,
    },
}

/// Walks one tenant's records in sequence order, from a trusted starting head.
pub struct Verifier {
    tenant: String,
    last: Head,
    /// The signed newest head, which the records must reach.
    newest: Option<Head>,
    checked: u64,
}

impl Verifier {
    /// Start after the signed checkpoint of pruned history (or genesis), expecting to reach
    /// the signed newest head; either signature failing is an error.
    pub fn new(
        key: &ChainKey,
        tenant: &str,
        checkpoint: Option<&SignedHead>,
        newest: Option<&SignedHead>,
    ) -> Result<Self, ChainError> {
        let signed = checkpoint
            .map(|c| (HeadRole::Checkpoint, c))
            .into_iter()
            .chain(newest.map(|n| (HeadRole::Newest, n)));
        for (role, signed) in signed {
            if !key.check(role, tenant, signed) {
                return Err(ChainError::Head {
                    tenant: tenant.to_owned(),
                    why: "a signed head is forged, or signed with another master key".into(),
                });
            }
        }
        // Pruning never passes the newest record, so a checkpoint at or past the signed head
        // must be that head: otherwise a rewritten chain was pruned and signed as history.
        if let (Some(checkpoint), Some(newest)) = (checkpoint, newest)
            && checkpoint.head.seq >= newest.head.seq
            && checkpoint.head != newest.head
        {
            return Err(ChainError::Head {
                tenant: tenant.to_owned(),
                why: format!(
                    "the checkpoint of pruned history (record {}) disagrees with the signed head (record {})",
                    checkpoint.head.seq, newest.head.seq
                ),
            });
        }
        Ok(Verifier {
            tenant: tenant.to_owned(),
            last: checkpoint.map_or_else(Head::genesis, |c| c.head.clone()),
            newest: newest.map(|n| n.head.clone()),
            checked: 0,
        })
    }

    /// Check the next stored record.
    pub fn next(&mut self, row: &StoredRecord) -> Result<(), ChainError> {
        let tenant = || self.tenant.clone();
        if row.seq > self.last.seq + 1 {
            return Err(ChainError::Removed {
                tenant: tenant(),
                from: self.last.seq + 1,
                to: row.seq - 1,
            });
        }
        if row.seq <= self.last.seq {
            return Err(ChainError::Reordered {
                tenant: tenant(),
                seq: row.seq,
            });
        }
        if link(&row.prev_hash, &row.tenant, row.seq, &row.record) != row.hash
            || !indexed_fields_match(row)
            || row.tenant != self.tenant
        {
            return Err(ChainError::Altered {
                tenant: tenant(),
                seq: row.seq,
            });
        }
        if row.prev_hash != self.last.hash {
            return Err(ChainError::Reordered {
                tenant: tenant(),
                seq: row.seq,
            });
        }
        if let Some(newest) = &self.newest
            && newest.seq == row.seq
            && newest.hash != row.hash
        {
            return Err(ChainError::Head {
                tenant: tenant(),
                why: format!(
                    "record {} differs from the signed head: the records up to it were rewritten",
                    row.seq
                ),
            });
        }
        self.last = Head {
            seq: row.seq,
            hash: row.hash.clone(),
        };
        self.checked += 1;
        Ok(())
    }

    /// The last record checked (the starting head before any).
    pub fn last(&self) -> &Head {
        &self.last
    }

    /// All records are read: the number checked, unless the log stops short of its head.
    pub fn finish(self) -> Result<u64, ChainError> {
        match &self.newest {
            Some(newest) if newest.seq > self.last.seq => Err(ChainError::Removed {
                tenant: self.tenant,
                from: self.last.seq + 1,
                to: newest.seq,
            }),
            None if self.checked > 0 => Err(ChainError::Head {
                tenant: self.tenant,
                why: "the signed head of the log is missing".into(),
            }),
            _ => Ok(self.checked),
        }
    }
}

/// The index is what queries select by, so it must say what the hashed JSON says.
fn indexed_fields_match(row: &StoredRecord) -> bool {
    row.index_ok
        && serde_json::from_str::<AuditRecord>(&row.record)
            .is_ok_and(|r| r.at_ms == row.at_ms && r.tenant == row.tenant)
}

/// Why a whole-log verification stopped.
#[derive(Debug, thiserror::Error)]
pub enum VerifyError {
    /// The chain is broken.
    #[error(transparent)]
    Chain(#[from] ChainError),
    /// The store could not be read.
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Stored batches read per step while verifying.
const VERIFY_BATCHES: u32 = 16;

/// Walk every tenant's chain from its checkpoint to its signed head; the number of records
/// checked per tenant, or the first problem, naming the record.
pub async fn verify(store: &dyn Store, key: &ChainKey) -> Result<Vec<(String, u64)>, VerifyError> {
    match verify_once(store, key).await {
        // A broker pruning while we read moves the checkpoint past records we then miss;
        // a second walk sees the new checkpoint. Tampering fails both.
        Err(VerifyError::Chain(ChainError::Removed { .. })) => verify_once(store, key).await,
        other => other,
    }
}

async fn verify_once(store: &dyn Store, key: &ChainKey) -> Result<Vec<(String, u64)>, VerifyError> {
    let signed = async |meta_key: String| -> Result<Option<SignedHead>, StoreError> {
        Ok(store
            .meta(&meta_key)
            .await?
            .and_then(|text| serde_json::from_str(&text).ok()))
    };
    let mut tenants = store.audit_tenants().await?;
    let mut registered = Vec::new();
    match store.meta(AUDIT_TENANTS_KEY).await? {
        Some(text) => {
            let signed: SignedTenants =
                serde_json::from_str(&text).map_err(|_| ChainError::Head {
                    tenant: "*".into(),
                    why: "the signed list of tenants is unreadable".into(),
                })?;
            if !key.check_tenants(&signed) {
                return Err(ChainError::Head {
                    tenant: "*".into(),
                    why: "the signed list of tenants is forged, or signed with another master key"
                        .into(),
                }
                .into());
            }
            registered = signed.tenants;
            tenants.extend(registered.iter().cloned());
        }
        None if !tenants.is_empty() => {
            return Err(ChainError::Head {
                tenant: "*".into(),
                why: "the signed list of tenants is missing".into(),
            }
            .into());
        }
        None => {}
    }
    tenants.sort();
    tenants.dedup();
    let mut checked = Vec::new();
    for tenant in tenants {
        let checkpoint = signed(audit_checkpoint_key(&tenant)).await?;
        let newest = signed(audit_head_key(&tenant)).await?;
        if newest.is_none() && registered.contains(&tenant) {
            return Err(ChainError::Head {
                tenant,
                why: "the signed head of the log is missing (its records may be gone too)".into(),
            }
            .into());
        }
        let mut verifier = Verifier::new(key, &tenant, checkpoint.as_ref(), newest.as_ref())?;
        // Every stored line, unfiltered: a forged line anywhere must be seen.
        let mut cursor = 0;
        loop {
            let (records, next) = store
                .audit_chain_page(&tenant, cursor, VERIFY_BATCHES)
                .await?;
            for row in &records {
                verifier.next(row)?;
            }
            match next {
                Some(next) => cursor = next,
                None => break,
            }
        }
        if let Some(newest) = &newest
            && verifier.last().seq > newest.head.seq
        {
            // Records past the signed head: appended while we read (a broker writes them
            // and their head in one transaction, so the head read now reaches them), or
            // made up by someone who can compute hashes but not sign a head.
            let now = signed(audit_head_key(&tenant)).await?;
            let last = verifier.last();
            let vouched = now.as_ref().is_some_and(|now| {
                key.check(HeadRole::Newest, &tenant, now)
                    && (now.head.seq > last.seq || now.head == *last)
            });
            if !vouched {
                return Err(ChainError::Head {
                    why: format!(
                        "records {}..={} follow the signed head of the log: they were made up",
                        newest.head.seq + 1,
                        last.seq
                    ),
                    tenant,
                }
                .into());
            }
        }
        checked.push((tenant, verifier.finish()?));
    }
    Ok(checked)
}
