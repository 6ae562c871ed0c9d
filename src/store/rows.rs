//! Row → record conversions shared by both backends: the column names are the same in the
//! SQLite and PostgreSQL schemas, only the row types differ.

use sqlx::Row;
use sqlx::postgres::PgRow;
use sqlx::sqlite::SqliteRow;

use super::audit_batch::Batch;
use super::{
    ApprovalRecord, ApprovalState, CapabilityRecord, PolicyRecord, SecretRecord, SecretSummary,
    TokenRecord,
};
use crate::vault::SealedSecret;

/// Typed column reads, the subset of [`Row::try_get`] the conversions need.
pub(super) trait Fields {
    /// A text column.
    fn text(&self, column: &str) -> Result<String, sqlx::Error>;
    /// A nullable text column.
    fn opt_text(&self, column: &str) -> Result<Option<String>, sqlx::Error>;
    /// An integer column.
    fn int(&self, column: &str) -> Result<i64, sqlx::Error>;
    /// A nullable integer column.
    fn opt_int(&self, column: &str) -> Result<Option<i64>, sqlx::Error>;
    /// A binary column.
    fn bytes(&self, column: &str) -> Result<Vec<u8>, sqlx::Error>;
}

macro_rules! fields_for {
    ($row:ty) => {
        impl Fields for $row {
            fn text(&self, column: &str) -> Result<String, sqlx::Error> {
                self.try_get(column)
            }
            fn opt_text(&self, column: &str) -> Result<Option<String>, sqlx::Error> {
                self.try_get(column)
            }
            fn int(&self, column: &str) -> Result<i64, sqlx::Error> {
                self.try_get(column)
            }
            fn opt_int(&self, column: &str) -> Result<Option<i64>, sqlx::Error> {
                self.try_get(column)
            }
            fn bytes(&self, column: &str) -> Result<Vec<u8>, sqlx::Error> {
                self.try_get(column)
            }
        }
    };
}

fields_for!(SqliteRow);
fields_for!(PgRow);

/// A `secrets` row.
pub(super) fn secret(row: &impl Fields) -> Result<SecretRecord, sqlx::Error> {
    Ok(SecretRecord {
        id: row.text("id")?,
        tenant: row.text("tenant_id")?,
        name: row.text("name")?,
        provider: row.text("provider")?,
        version: row.int("version")?,
        sealed: SealedSecret {
            ciphertext: row.bytes("ciphertext")?,
            nonce: row.bytes("nonce")?,
            wrapped_key: row.bytes("wrapped_key")?,
            wrap_nonce: row.bytes("wrap_nonce")?,
            key_version: row.int("key_version")?,
        },
        created_at: row.int("created_at")?,
        rotated_at: row.opt_int("rotated_at")?,
    })
}

/// A row of the secret list query (a secret with its token count).
pub(super) fn secret_summary(row: &impl Fields) -> Result<SecretSummary, sqlx::Error> {
    Ok(SecretSummary {
        id: row.text("id")?,
        name: row.text("name")?,
        provider: row.text("provider")?,
        version: row.int("version")?,
        created_at: row.int("created_at")?,
        rotated_at: row.opt_int("rotated_at")?,
        tokens: row.int("tokens")?,
    })
}

/// A `tokens` row joined with its secret's name and provider.
pub(super) fn token(row: &impl Fields) -> Result<TokenRecord, sqlx::Error> {
    Ok(TokenRecord {
        id: row.text("id")?,
        tenant: row.text("tenant_id")?,
        agent: row.text("agent")?,
        secret_id: row.text("secret_id")?,
        secret_name: row.text("secret_name")?,
        provider: row.text("provider")?,
        hint: row.text("hint")?,
        expires_at: row.opt_int("expires_at")?,
        revoked_at: row.opt_int("revoked_at")?,
        created_at: row.int("created_at")?,
        last_used_at: row.opt_int("last_used_at")?,
        parent_id: row.opt_text("parent_id")?,
        policy: row.opt_text("policy")?,
        policy_name: row.opt_text("policy_name")?,
    })
}

/// A `policies` row.
pub(super) fn policy(row: &impl Fields) -> Result<PolicyRecord, sqlx::Error> {
    Ok(PolicyRecord {
        tenant: row.text("tenant_id")?,
        name: row.text("name")?,
        spec: row.text("spec")?,
        created_at: row.int("created_at")?,
        updated_at: row.int("updated_at")?,
    })
}

/// A `capabilities` row.
pub(super) fn capability(row: &impl Fields) -> Result<CapabilityRecord, sqlx::Error> {
    Ok(CapabilityRecord {
        tenant: row.text("tenant_id")?,
        name: row.text("name")?,
        spec: row.text("spec")?,
        created_at: row.int("created_at")?,
        updated_at: row.int("updated_at")?,
    })
}

/// An `approvals` row.
pub(super) fn approval(row: &impl Fields) -> Result<ApprovalRecord, sqlx::Error> {
    let state = row.text("state")?;
    Ok(ApprovalRecord {
        id: row.text("id")?,
        tenant: row.text("tenant_id")?,
        token_id: row.text("token_id")?,
        summary: row.text("summary")?,
        state: ApprovalState::parse(&state).ok_or_else(|| sqlx::Error::ColumnDecode {
            index: "state".into(),
            source: format!("unknown approval state {state}").into(),
        })?,
        reason: row.opt_text("reason")?,
        created_at: row.int("created_at")?,
        expires_at: row.int("expires_at")?,
        decided_at: row.opt_int("decided_at")?,
        decided_by: row.opt_text("decided_by")?,
    })
}

/// An `audit_batches` row.
pub(super) fn batch(row: &impl Fields) -> Result<Batch, sqlx::Error> {
    Ok(Batch {
        tenant: row.text("tenant_id")?,
        first_seq: row.int("first_seq")?,
        last_seq: row.int("last_seq")?,
        min_at_ms: row.int("min_at_ms")?,
        max_at_ms: row.int("max_at_ms")?,
        last_hash: row.text("last_hash")?,
        records: row.text("records")?,
    })
}

/// Counters are stored as signed 64-bit integers; they never get near the limit.
pub(super) fn to_i64(n: u64) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

/// A stored counter back to unsigned (a negative one, which nothing writes, reads as 0).
pub(super) fn to_u64(n: i64) -> u64 {
    n.max(0).unsigned_abs()
}

/// Whether a write failed on a unique constraint.
pub(super) fn is_unique_violation(e: &sqlx::Error) -> bool {
    matches!(e, sqlx::Error::Database(db) if db.is_unique_violation())
}
