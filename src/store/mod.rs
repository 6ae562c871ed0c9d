//! Persistent state behind one [`Store`] trait: secrets (sealed), tokens (hashed), and the
//! revision counter that tells running brokers to drop their caches (announced as it moves
//! where the backend can, see [`Store::changes`]).
//!
//! SQLite is the embedded default; a PostgreSQL backend implements the same trait. The
//! proxy only ever sees `Arc<dyn Store>`.

mod audit_batch;
mod postgres;
mod rows;
mod sqlite;
pub mod transfer;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;

use crate::audit::{AuditSigner, StoredRecord};
use crate::tokens::TokenHash;
use crate::vault::{SealedSecret, SecretIdentity};
use transfer::{Import, RowSink, TableRows};

pub use postgres::PgStore;
pub use sqlite::SqliteStore;

/// The tenant every row belongs to until multi-tenancy arrives.
pub const DEFAULT_TENANT: &str = "default";
/// Meta key of the master-key fingerprint.
pub const META_KEY_CHECK: &str = "master_key_check";
/// Meta key of the admin token's SHA-256 (hex).
pub const META_ADMIN_TOKEN: &str = "admin_token_hash";
/// Meta key recorded once every secret is sealed under its name too.
pub const META_SECRETS_NAMED: &str = "secrets_sealed_with_names";
/// Meta key of the master key's version, once it has been rotated.
pub const META_KEY_VERSION: &str = "master_key_version";
/// Meta key of the sealed key that recomputes signing providers' tokens, once the master
/// key it was derived from has been rotated.
pub const META_SIGNING_KEY: &str = "signing_tokens_key";

/// Why the store could not answer.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The database could not be reached, read or written.
    #[error("store unavailable: {0}")]
    Database(#[from] sqlx::Error),
    /// Applying schema migrations failed.
    #[error("store migration failed: {0}")]
    Migration(#[from] sqlx::migrate::MigrateError),
    /// The data directory could not be prepared.
    #[error("data directory {path}: {source}")]
    DataDir {
        /// The directory.
        path: String,
        /// The I/O error.
        source: std::io::Error,
    },
    /// A row with this name already exists.
    #[error("{0} already exists")]
    Conflict(String),
    /// A value sealed under another master key version than the store's: written by a
    /// process that still holds the key `seks key rotate` replaced.
    #[error(
        "the store has moved to a new master key since this process opened it (its value is sealed under version {sealed}); restart it with the store's key"
    )]
    StaleMasterKey {
        /// The version the value was sealed under.
        sealed: i64,
    },
    /// What a master-key rotation read changed before it applied: nothing was.
    #[error(
        "{0} changed while the master key was being rotated (is a broker or another command using the store?)"
    )]
    RekeyRaced(String),
    /// The row is still in use and can't be removed.
    #[error("{0}")]
    InUse(String),
    /// The row to change does not exist (or changed under us).
    #[error("{0} not found")]
    NotFound(String),
    /// `store.url` names no backend this build has.
    #[error("store.url `{0}`: expected sqlite://PATH or postgres://…")]
    UnknownUrl(String),
    /// The store did not answer within [`STORE_TIMEOUT`].
    #[error("the store did not answer within {STORE_TIMEOUT:?}")]
    Timeout,
    /// The audit chain's stored tail is not what its signed head says: records were cut,
    /// made up or signatures edited outside the broker. Appending would sign over that.
    #[error(
        "the audit log of tenant `{tenant}` was edited outside the broker ({why}); no record \
         is appended to it until it is restored (`seks audit verify` names the problem)"
    )]
    AuditTampered {
        /// Tenant.
        tenant: String,
        /// What does not match.
        why: &'static str,
    },
}

/// Longest wait for any store call made on behalf of a request or a sync.
pub const STORE_TIMEOUT: Duration = Duration::from_secs(2);

/// Bound a store call, so a stuck store (a server that stopped answering) refuses the
/// request that needed it rather than holding it.
pub async fn timed<T>(call: impl Future<Output = Result<T, StoreError>>) -> Result<T, StoreError> {
    tokio::time::timeout(STORE_TIMEOUT, call)
        .await
        .unwrap_or(Err(StoreError::Timeout))
}

/// A secret to insert.
#[derive(Debug)]
pub struct NewSecret {
    /// Row id (`sec_…`).
    pub id: String,
    /// Owning tenant.
    pub tenant: String,
    /// Operator-chosen name, unique per tenant.
    pub name: String,
    /// Provider the credential belongs to.
    pub provider: String,
    /// The sealed value, bound to its identity at version 1.
    pub sealed: SealedSecret,
    /// Creation time (Unix seconds).
    pub created_at: i64,
}

/// A stored secret with its sealed value.
#[derive(Debug, Clone)]
pub struct SecretRecord {
    /// Row id.
    pub id: String,
    /// Owning tenant.
    pub tenant: String,
    /// Operator-chosen name.
    pub name: String,
    /// Provider the credential belongs to.
    pub provider: String,
    /// Value version, bumped on rotation and bound into the ciphertext.
    pub version: i64,
    /// The sealed value.
    pub sealed: SealedSecret,
    /// Creation time (Unix seconds).
    pub created_at: i64,
    /// Last rotation time, if any.
    pub rotated_at: Option<i64>,
}

/// A master-key rotation, applied by [`Store::rekey`] in one transaction or not at all.
#[derive(Debug, Default)]
pub struct Rekey {
    /// Secrets with their data keys wrapped under the new master key.
    pub secrets: Vec<RewrappedSecret>,
    /// Meta values re-sealed or re-signed under the new master key.
    pub meta: Vec<MetaSwap>,
    /// Meta keys of sealed values that were absent when read: one made meanwhile would be
    /// sealed under the old key.
    pub absent: Vec<String>,
    /// The new master key's version, which every secret must be at afterwards.
    pub key_version: i64,
}

/// One secret's new seal; it applies only if the row is still as it was read.
#[derive(Debug)]
pub struct RewrappedSecret {
    /// Owning tenant.
    pub tenant: String,
    /// Row id.
    pub id: String,
    /// The value version it was read at.
    pub version: i64,
    /// The wrapped data key it was read with.
    pub was: Vec<u8>,
    /// The same value under the new master key.
    pub sealed: SealedSecret,
}

/// One meta value's replacement; it applies only if the value is still `was`.
#[derive(Debug)]
pub struct MetaSwap {
    /// Meta key.
    pub key: String,
    /// The value it was read with; `None`: there was none.
    pub was: Option<String>,
    /// The new value.
    pub value: String,
}

/// Why a [`Rekey`] was not applied: the store changed after it was read.
pub(crate) fn rekey_raced(what: &str) -> StoreError {
    StoreError::RekeyRaced(what.to_owned())
}

impl SecretRecord {
    /// The identity its value is sealed under.
    pub fn identity(&self) -> SecretIdentity<'_> {
        SecretIdentity {
            tenant: &self.tenant,
            secret_id: &self.id,
            version: self.version,
            provider: &self.provider,
            name: Some(&self.name),
        }
    }
}

/// A secret as listed: no key material.
#[derive(Debug, Clone, serde::Serialize)]
pub struct SecretSummary {
    /// Row id.
    pub id: String,
    /// Operator-chosen name.
    pub name: String,
    /// Provider the credential belongs to.
    pub provider: String,
    /// Value version.
    pub version: i64,
    /// Creation time (Unix seconds).
    pub created_at: i64,
    /// Last rotation time, if any.
    pub rotated_at: Option<i64>,
    /// Tokens (any state) that use this secret.
    pub tokens: i64,
}

/// A token to insert; only its hash is kept.
#[derive(Debug)]
pub struct NewToken {
    /// Row id (`tok_…`).
    pub id: String,
    /// Owning tenant.
    pub tenant: String,
    /// Name of the agent the token was issued to.
    pub agent: String,
    /// The secret it unlocks.
    pub secret_id: String,
    /// SHA-256 of the token text.
    pub hash: TokenHash,
    /// Short displayable prefix of the token.
    pub hint: String,
    /// Expiry time, if any.
    pub expires_at: Option<i64>,
    /// Creation time (Unix seconds).
    pub created_at: i64,
    /// The token this one was derived from.
    pub parent_id: Option<String>,
    /// The token's own policy (JSON of `PolicySpec`).
    pub policy: Option<String>,
    /// A named policy the token also follows.
    pub policy_name: Option<String>,
}

/// A stored token joined with its secret's name and provider.
#[derive(Debug, Clone, serde::Serialize)]
pub struct TokenRecord {
    /// Row id.
    pub id: String,
    /// Owning tenant.
    pub tenant: String,
    /// Agent name.
    pub agent: String,
    /// The secret it unlocks.
    pub secret_id: String,
    /// That secret's name.
    pub secret_name: String,
    /// That secret's provider: the only provider this token works for.
    pub provider: String,
    /// Short displayable prefix of the token.
    pub hint: String,
    /// Expiry time, if any.
    pub expires_at: Option<i64>,
    /// Revocation time, if revoked.
    pub revoked_at: Option<i64>,
    /// Creation time.
    pub created_at: i64,
    /// Last time the broker saw it used (flushed every few seconds).
    pub last_used_at: Option<i64>,
    /// The token this one was derived from.
    pub parent_id: Option<String>,
    /// The token's own policy (JSON of `PolicySpec`).
    pub policy: Option<String>,
    /// A named policy the token also follows.
    pub policy_name: Option<String>,
}

/// A named policy.
#[derive(Debug, Clone, serde::Serialize)]
pub struct PolicyRecord {
    /// Owning tenant.
    pub tenant: String,
    /// Name tokens refer to it by.
    pub name: String,
    /// The policy (JSON of `PolicySpec`).
    pub spec: String,
    /// Creation time.
    pub created_at: i64,
    /// Last change.
    pub updated_at: i64,
}

/// A stored capability definition (`seks capability add`).
#[derive(Debug, Clone)]
pub struct CapabilityRecord {
    /// Owning tenant.
    pub tenant: String,
    /// Its name, unique per tenant.
    pub name: String,
    /// The definition (JSON of `CapabilitySpec`).
    pub spec: String,
    /// Creation time.
    pub created_at: i64,
    /// Last change.
    pub updated_at: i64,
}

/// Where a held request stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ApprovalState {
    /// Waiting for a person.
    Pending,
    /// Let through.
    Approved,
    /// Refused.
    Denied,
    /// Nobody decided in time.
    Expired,
}

impl ApprovalState {
    /// The stored spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            ApprovalState::Pending => "pending",
            ApprovalState::Approved => "approved",
            ApprovalState::Denied => "denied",
            ApprovalState::Expired => "expired",
        }
    }

    /// Parse the stored spelling.
    pub fn parse(text: &str) -> Option<Self> {
        Some(match text {
            "pending" => ApprovalState::Pending,
            "approved" => ApprovalState::Approved,
            "denied" => ApprovalState::Denied,
            "expired" => ApprovalState::Expired,
            _ => return None,
        })
    }
}

/// A request held for approval.
#[derive(Debug, Clone, serde::Serialize)]
pub struct ApprovalRecord {
    /// Row id (`apr_…`).
    pub id: String,
    /// Owning tenant.
    pub tenant: String,
    /// The token that made the request.
    pub token_id: String,
    /// What was asked (JSON: agent, provider, method, path, model, rule); never a secret.
    pub summary: String,
    /// Where it stands.
    pub state: ApprovalState,
    /// Why it was denied, if given.
    pub reason: Option<String>,
    /// When it was held.
    pub created_at: i64,
    /// When it expires undecided.
    pub expires_at: i64,
    /// When it was decided.
    pub decided_at: Option<i64>,
    /// Who decided.
    pub decided_by: Option<String>,
}

/// Usage to add to a token's daily counters.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UsageDelta {
    /// The token.
    pub token_id: String,
    /// Day number (Unix days, UTC).
    pub day: i64,
    /// Requests to add.
    pub requests: u64,
    /// LLM tokens to add.
    pub tokens: u64,
}

impl UsageDelta {
    /// The deltas with those of one token and day summed into one, in (token, day) order.
    pub fn summed(deltas: &[UsageDelta]) -> Vec<UsageDelta> {
        let mut sums: std::collections::BTreeMap<(&str, i64), (u64, u64)> = Default::default();
        for d in deltas {
            let sum = sums.entry((&d.token_id, d.day)).or_default();
            sum.0 += d.requests;
            sum.1 += d.tokens;
        }
        sums.into_iter()
            .map(|((token_id, day), (requests, tokens))| UsageDelta {
                token_id: token_id.to_owned(),
                day,
                requests,
                tokens,
            })
            .collect()
    }
}

/// A token's counters for one day after an [`Store::add_usage`], as every broker added them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UsageTotal {
    /// The token.
    pub token_id: String,
    /// Day number (Unix days, UTC).
    pub day: i64,
    /// Requests counted.
    pub requests: u64,
    /// LLM tokens counted.
    pub tokens: u64,
}

/// An audit record to append; the store numbers and chains it.
#[derive(Debug, Clone)]
pub struct AuditEntry {
    /// Tenant whose chain it joins.
    pub tenant: String,
    /// When the request arrived (Unix ms), for the time index.
    pub at_ms: i64,
    /// The record's JSON text (no raw tabs or newlines: JSON escapes them).
    pub record: String,
}

/// Which audit records to read.
#[derive(Debug, Clone)]
pub struct AuditFilter {
    /// Tenant.
    pub tenant: String,
    /// Only records after this sequence number.
    pub after_seq: i64,
    /// Only records at or after this time (Unix ms).
    pub since_ms: Option<i64>,
    /// Only this agent.
    pub agent: Option<String>,
    /// Only this provider.
    pub provider: Option<String>,
    /// Only statuses in this inclusive range.
    pub status: Option<(u16, u16)>,
    /// At most this many.
    pub limit: u32,
    /// The newest `limit` matches rather than the oldest (still returned oldest first).
    pub newest: bool,
}

/// Meta key of the signed list of tenants with an audit chain.
pub const AUDIT_TENANTS_KEY: &str = "audit_tenants";

/// Meta key of a tenant's signed newest audit head.
pub fn audit_head_key(tenant: &str) -> String {
    format!("audit_head/{tenant}")
}

/// Meta key of a tenant's signed head of pruned audit history.
pub fn audit_checkpoint_key(tenant: &str) -> String {
    format!("audit_checkpoint/{tenant}")
}

/// One token's counters for one day, with the token's agent (for usage reports).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UsageRecord {
    /// The token.
    pub token_id: String,
    /// The token's agent.
    pub agent: String,
    /// Day number (Unix days, UTC).
    pub day: i64,
    /// Requests counted.
    pub requests: u64,
    /// LLM tokens counted.
    pub tokens: u64,
}

/// Everything the broker and the CLI persist.
#[async_trait]
pub trait Store: Send + Sync {
    /// A store-wide setting (master-key fingerprint, admin token hash).
    async fn meta(&self, key: &str) -> Result<Option<String>, StoreError>;
    /// Record a setting unless one is already recorded; returns the recorded one.
    async fn init_meta(&self, key: &str, value: &str) -> Result<String, StoreError>;
    /// [`Store::init_meta`] for a value sealed under master key version `key_version`:
    /// `StaleMasterKey` instead of recording it if the store is at another version.
    async fn init_sealed_meta(
        &self,
        key: &str,
        value: &str,
        key_version: i64,
    ) -> Result<String, StoreError>;
    /// Record or replace a setting.
    async fn set_meta(&self, key: &str, value: &str) -> Result<(), StoreError>;
    /// The change counter that invalidates broker caches.
    async fn revision(&self) -> Result<i64, StoreError>;
    /// Leases of limits and turns shared by several brokers, if this store can be shared
    /// by them.
    fn leases(&self) -> Option<&dyn Leases> {
        None
    }
    /// A feed whose value moves whenever [`Store::revision`] may have moved, for backends
    /// that announce changes (PostgreSQL's LISTEN/NOTIFY): a broker then reloads at once
    /// instead of at its next poll. `None`: poll. Announcements can be missed (a dropped
    /// connection), so they only ever add to polling.
    fn changes(&self) -> Option<tokio::sync::watch::Receiver<u64>> {
        None
    }

    /// Insert a secret; `Conflict` if the name is taken in its tenant, `StaleMasterKey` if it
    /// is sealed under another master key version than the store's.
    async fn insert_secret(&self, secret: &NewSecret) -> Result<(), StoreError>;
    /// Look a secret up by name.
    async fn secret_by_name(
        &self,
        tenant: &str,
        name: &str,
    ) -> Result<Option<SecretRecord>, StoreError>;
    /// Look a secret up by id.
    async fn secret_by_id(
        &self,
        tenant: &str,
        id: &str,
    ) -> Result<Option<SecretRecord>, StoreError>;
    /// Every secret of every tenant, sealed: what a broker loads to serve and scrub.
    async fn all_secrets(&self) -> Result<Vec<SecretRecord>, StoreError>;
    /// All secrets of a tenant, oldest first.
    async fn list_secrets(&self, tenant: &str) -> Result<Vec<SecretSummary>, StoreError>;
    /// Replace a secret's value with `sealed` at `new_version`, if it is still at
    /// `new_version - 1` and sealed under `sealed`'s master key version.
    async fn rotate_secret(
        &self,
        tenant: &str,
        id: &str,
        new_version: i64,
        sealed: &SealedSecret,
        rotated_at: i64,
    ) -> Result<(), StoreError>;
    /// Replace a secret's sealed value with `sealed` holding the same value, if the row is
    /// still at `version` with ciphertext `was`, under `sealed`'s master key version;
    /// returns whether it was.
    async fn reseal_secret(
        &self,
        tenant: &str,
        id: &str,
        version: i64,
        was: &[u8],
        sealed: &SealedSecret,
    ) -> Result<bool, StoreError>;
    /// Apply a master-key rotation in one transaction: every swap applies, or nothing does
    /// (`RekeyRaced` if anything changed since it was read, or a secret was added meanwhile).
    async fn rekey(&self, rekey: &Rekey) -> Result<(), StoreError>;
    /// Delete a secret and every token that uses it; returns how many tokens went with it.
    async fn delete_secret(&self, tenant: &str, id: &str) -> Result<u64, StoreError>;

    /// Insert a token; `NotFound` if the named policy it follows doesn't exist.
    async fn insert_token(&self, token: &NewToken) -> Result<(), StoreError>;
    /// Find a token by the hash of its text.
    async fn token_by_hash(&self, hash: &TokenHash) -> Result<Option<TokenRecord>, StoreError>;
    /// Find a token by id.
    async fn token_by_id(&self, tenant: &str, id: &str) -> Result<Option<TokenRecord>, StoreError>;
    /// All tokens of a tenant, oldest first.
    async fn list_tokens(&self, tenant: &str) -> Result<Vec<TokenRecord>, StoreError>;
    /// Mark a token and every token derived from it revoked; returns how many were, 0 if
    /// there is no such active token.
    async fn revoke_token(&self, tenant: &str, id: &str, at: i64) -> Result<u64, StoreError>;
    /// Replace a token's policy, named policy and expiry; false if there is no such token,
    /// `NotFound` if there is no such named policy.
    async fn update_token_policy(
        &self,
        tenant: &str,
        id: &str,
        policy: Option<&str>,
        policy_name: Option<&str>,
        expires_at: Option<i64>,
    ) -> Result<bool, StoreError>;

    /// Create or replace a named policy.
    async fn put_policy(
        &self,
        tenant: &str,
        name: &str,
        spec: &str,
        at: i64,
    ) -> Result<(), StoreError>;
    /// A named policy.
    async fn policy(&self, tenant: &str, name: &str) -> Result<Option<PolicyRecord>, StoreError>;
    /// Named policies of a tenant, by name.
    async fn list_policies(&self, tenant: &str) -> Result<Vec<PolicyRecord>, StoreError>;
    /// Every named policy of every tenant: what a broker loads.
    async fn all_policies(&self) -> Result<Vec<PolicyRecord>, StoreError>;
    /// Remove a named policy; `Conflict` while tokens use it, false if there is none.
    async fn delete_policy(&self, tenant: &str, name: &str) -> Result<bool, StoreError>;

    /// Create or replace capability definitions, `(name, spec)`, all in one transaction;
    /// for each, true if it replaced one.
    async fn put_capabilities(
        &self,
        tenant: &str,
        definitions: &[(&str, &str)],
        at: i64,
    ) -> Result<Vec<bool>, StoreError>;
    /// A tenant's capability definitions, by name.
    async fn list_capabilities(&self, tenant: &str) -> Result<Vec<CapabilityRecord>, StoreError>;
    /// Remove a capability definition; false if there is none.
    async fn delete_capability(&self, tenant: &str, name: &str) -> Result<bool, StoreError>;

    /// Record a held request.
    async fn insert_approval(&self, approval: &ApprovalRecord) -> Result<(), StoreError>;
    /// One held request.
    async fn approval(&self, tenant: &str, id: &str) -> Result<Option<ApprovalRecord>, StoreError>;
    /// Held requests of a tenant, newest first; only pending ones unless `all`.
    async fn list_approvals(
        &self,
        tenant: &str,
        all: bool,
    ) -> Result<Vec<ApprovalRecord>, StoreError>;
    /// Decide a pending request; false if it is not pending (any more).
    async fn decide_approval(
        &self,
        tenant: &str,
        id: &str,
        state: ApprovalState,
        reason: Option<&str>,
        by: &str,
        at: i64,
    ) -> Result<bool, StoreError>;

    /// A token's (requests, LLM tokens) counted so far on `day`.
    async fn usage(&self, token_id: &str, day: i64) -> Result<(u64, u64), StoreError>;
    /// Add to daily counters (a zero delta only reads) and return the totals of each token
    /// and day the deltas name.
    async fn add_usage(&self, deltas: &[UsageDelta]) -> Result<Vec<UsageTotal>, StoreError>;
    /// Record when tokens were last used: `(token id, unix time)` pairs.
    async fn record_token_use(&self, uses: &[(String, i64)]) -> Result<(), StoreError>;

    /// Append records to their tenants' chains in one transaction, with each tenant's new
    /// signed head and, for a tenant's first records, the signed list of tenants.
    async fn append_audit(
        &self,
        entries: &[AuditEntry],
        sign: &dyn AuditSigner,
    ) -> Result<(), StoreError>;
    /// Whether the log holds `entry`, its record text exactly: a batch whose commit went
    /// unacknowledged may have been written all the same.
    async fn audit_holds(&self, entry: &AuditEntry) -> Result<bool, StoreError>;
    /// Audit records matching `filter`, oldest first.
    async fn audit_records(&self, filter: &AuditFilter) -> Result<Vec<StoredRecord>, StoreError>;
    /// For verification: every record of `tenant`, unfiltered and in storage order, from
    /// the next `batches` batches after the one starting at `after_batch` (0: the start);
    /// with the cursor for the next page, `None` at the end.
    async fn audit_chain_page(
        &self,
        tenant: &str,
        after_batch: i64,
        batches: u32,
    ) -> Result<(Vec<StoredRecord>, Option<i64>), StoreError>;
    /// Every tenant with an audit chain.
    async fn audit_tenants(&self) -> Result<Vec<String>, StoreError>;
    /// Delete `tenant`'s records before `before_ms`, from at most `batches` batches at the
    /// front of its chain, keeping the signed head of what was deleted (from `sign`) as the
    /// checkpoint verification starts from; how many records went.
    async fn prune_audit(
        &self,
        tenant: &str,
        before_ms: i64,
        batches: u32,
        sign: &dyn AuditSigner,
    ) -> Result<u64, StoreError>;
    /// Daily counters of a tenant's tokens from `since_day` on, by day then token.
    async fn usage_since(
        &self,
        tenant: &str,
        since_day: i64,
    ) -> Result<Vec<UsageRecord>, StoreError>;

    /// Every row of every table ([`transfer::TABLES`]) into `sink`, read in one snapshot;
    /// the row counts of that snapshot. Writes nothing.
    async fn export(&self, sink: &mut dyn RowSink) -> Result<Vec<TableRows>, StoreError>;
    /// Begin an import ([`transfer::copy`]): one write transaction on this store.
    async fn import(&self) -> Result<Box<dyn Import>, StoreError>;
}

/// Where the store lives, from `store.url` / `SEKS_STORE_URL`.
#[derive(Clone, PartialEq, Eq)]
pub enum Location {
    /// A SQLite database file.
    Sqlite(PathBuf),
    /// A PostgreSQL server (the URL may hold a password: never print it, see `Display`).
    Postgres(String),
}

impl Location {
    /// The store `url` names; with none, SQLite in `data_dir` (the zero-setup default).
    pub fn parse(url: Option<&str>, data_dir: &Path) -> Result<Location, StoreError> {
        let Some(url) = url.filter(|u| !u.is_empty()) else {
            return Ok(Location::Sqlite(data_dir.join(sqlite::DB_FILE)));
        };
        if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            return Ok(Location::Postgres(url.to_owned()));
        }
        match url
            .strip_prefix("sqlite://")
            .or_else(|| url.strip_prefix("sqlite:"))
        {
            Some("") => Ok(Location::Sqlite(data_dir.join(sqlite::DB_FILE))),
            Some(path) => Ok(Location::Sqlite(PathBuf::from(path))),
            None => Err(StoreError::UnknownUrl(redacted(url))),
        }
    }

    /// Open the store here, creating it and applying migrations as needed.
    pub async fn open(&self) -> Result<Arc<dyn Store>, StoreError> {
        Ok(match self {
            Location::Sqlite(file) => Arc::new(SqliteStore::open(file).await?),
            Location::Postgres(url) => Arc::new(PgStore::open(url).await?),
        })
    }
}

/// A URL with its password (if any) replaced by `***`, for messages.
pub(crate) fn redacted(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_owned();
    };
    // Up to the last `@`: a password may hold one; masking too much is the safe mistake.
    let masked = match rest.rsplit_once('@') {
        Some((credentials, host)) => {
            let user = credentials.split(':').next().unwrap_or_default();
            format!("{scheme}://{user}:***@{host}")
        }
        None => url.to_owned(),
    };
    // The driver also takes the password as a parameter (`?password=`, its name decoded).
    match masked.split_once('?') {
        Some((base, query)) => {
            let params: Vec<String> = query
                .split('&')
                .map(|param| {
                    let name = param.split('=').next().unwrap_or_default();
                    let decoded = url::form_urlencoded::parse(name.as_bytes()).next();
                    match decoded {
                        Some((key, _)) if key.eq_ignore_ascii_case("password") => {
                            format!("{name}=***")
                        }
                        _ => param.to_owned(),
                    }
                })
                .collect();
            format!("{base}?{}", params.join("&"))
        }
        None => masked,
    }
}

impl std::fmt::Display for Location {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Location::Sqlite(file) => write!(f, "{}", file.display()),
            Location::Postgres(url) => f.write_str(&redacted(url)),
        }
    }
}

impl std::fmt::Debug for Location {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Location({self})")
    }
}

/// Limits shared by the brokers on one store, leased in chunks so that counting stays local;
/// a slot with a limit of one is also how they take turns (an OAuth2 refresh).
#[async_trait]
pub trait Leases: Send + Sync {
    /// Take up to `want` requests of `key`'s rate, one per `interval` with up to `burst`
    /// of them early; how many were granted.
    async fn lease_rate(
        &self,
        key: &str,
        want: u32,
        interval: Duration,
        burst: Duration,
    ) -> Result<u32, StoreError>;
    /// Raise what `replica` holds of `key`'s `max` concurrency slots towards `want`, for
    /// `ttl`; what it holds now (less than `want` when the other replicas hold the rest).
    async fn lease_slots(
        &self,
        key: &str,
        replica: &str,
        want: u32,
        max: u32,
        ttl: Duration,
    ) -> Result<u32, StoreError>;
    /// Set what `replica` holds to `held` (zero releases) and extend those leases by `ttl`;
    /// the keys whose lease was still alive to extend.
    async fn renew_slots(
        &self,
        replica: &str,
        held: &[(String, u32)],
        ttl: Duration,
    ) -> Result<Vec<String>, StoreError>;
    /// Claim a SigV4 signature for `lapse`; how long ago a replica first claimed it (zero:
    /// this call did).
    async fn claim_signature(
        &self,
        signature: &[u8; 32],
        lapse: Duration,
    ) -> Result<Duration, StoreError>;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn store_urls_pick_the_backend_and_never_show_a_password() {
        let dir = Path::new("/data");
        assert_eq!(
            Location::parse(None, dir).unwrap(),
            Location::Sqlite("/data/seks.db".into())
        );
        assert_eq!(
            Location::parse(Some("sqlite:///tmp/x.db"), dir).unwrap(),
            Location::Sqlite("/tmp/x.db".into())
        );
        let pg = Location::parse(
            Some("postgres://seks:hunter2@db:5432/seks?sslmode=require"),
            dir,
        )
        .unwrap();
        assert!(matches!(pg, Location::Postgres(_)));
        assert_eq!(
            pg.to_string(),
            "postgres://seks:***@db:5432/seks?sslmode=require"
        );
        assert!(!format!("{pg:?}").contains("hunter2"));
        let odd = Location::parse(Some("postgres://seks:hun@ter2@db/seks"), dir).unwrap();
        assert_eq!(odd.to_string(), "postgres://seks:***@db/seks");
        let query = Location::parse(
            Some("postgres://db/seks?sslmode=require&Pass%77ord=hunter2&user=seks"),
            dir,
        )
        .unwrap();
        assert_eq!(
            query.to_string(),
            "postgres://db/seks?sslmode=require&Pass%77ord=***&user=seks"
        );
        let err = Location::parse(Some("mysql://u:hunter2@h/db"), dir).unwrap_err();
        assert!(!err.to_string().contains("hunter2"), "{err}");
    }

    #[tokio::test(start_paused = true)]
    async fn a_store_call_that_never_answers_is_a_timeout() {
        let stuck = std::future::pending::<Result<(), StoreError>>();
        assert!(matches!(timed(stuck).await, Err(StoreError::Timeout)));
        assert_eq!(timed(async { Ok(7) }).await.unwrap(), 7);
    }
}
