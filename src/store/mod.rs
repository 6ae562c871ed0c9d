//! Persistent state behind one [`Store`] trait: secrets (sealed), tokens (hashed), and the
//! revision counter that tells running brokers to drop their caches.
//!
//! SQLite is the embedded default; a PostgreSQL backend implements the same trait. The
//! proxy only ever sees `Arc<dyn Store>`.

mod sqlite;

use std::path::Path;
use std::sync::Arc;

use async_trait::async_trait;

use crate::tokens::TokenHash;
use crate::vault::SealedSecret;

pub use sqlite::SqliteStore;

/// The tenant every row belongs to until multi-tenancy arrives.
pub const DEFAULT_TENANT: &str = "default";

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
    /// The row to change does not exist (or changed under us).
    #[error("{0} not found")]
    NotFound(String),
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
    /// The sealed value, bound to (tenant, id, version 1).
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
}

/// Everything the broker and the CLI persist.
#[async_trait]
pub trait Store: Send + Sync {
    /// The master-key fingerprint recorded when the store was first given a key.
    async fn key_check(&self) -> Result<Option<String>, StoreError>;
    /// Record the master-key fingerprint unless one is already recorded; returns the recorded one.
    async fn init_key_check(&self, value: &str) -> Result<String, StoreError>;
    /// The change counter that invalidates broker caches.
    async fn revision(&self) -> Result<i64, StoreError>;

    /// Insert a secret; `Conflict` if the name is taken in its tenant.
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
    /// Replace a secret's value with `sealed` at `new_version`, if it is still at `new_version - 1`.
    async fn rotate_secret(
        &self,
        tenant: &str,
        id: &str,
        new_version: i64,
        sealed: &SealedSecret,
        rotated_at: i64,
    ) -> Result<(), StoreError>;
    /// Delete a secret and every token that uses it; returns how many tokens went with it.
    async fn delete_secret(&self, tenant: &str, id: &str) -> Result<u64, StoreError>;

    /// Insert a token.
    async fn insert_token(&self, token: &NewToken) -> Result<(), StoreError>;
    /// Find a token by the hash of its text.
    async fn token_by_hash(&self, hash: &TokenHash) -> Result<Option<TokenRecord>, StoreError>;
    /// All tokens of a tenant, oldest first.
    async fn list_tokens(&self, tenant: &str) -> Result<Vec<TokenRecord>, StoreError>;
    /// Mark a token revoked; false if there is no such token or it was already revoked.
    async fn revoke_token(&self, tenant: &str, id: &str, at: i64) -> Result<bool, StoreError>;
    /// Record when tokens were last used: `(token id, unix time)` pairs.
    async fn record_token_use(&self, uses: &[(String, i64)]) -> Result<(), StoreError>;
}

/// Open the embedded store in `data_dir`, creating it and applying migrations as needed.
pub async fn open_default(data_dir: &Path) -> Result<Arc<dyn Store>, StoreError> {
    Ok(Arc::new(SqliteStore::open(data_dir).await?))
}
