//! The embedded SQLite store (WAL mode), shared safely by `seks serve` and CLI processes.

use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::Path;
use std::time::Duration;

use async_trait::async_trait;
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous};
use sqlx::{Row, SqlitePool};

use super::audit_batch;
use super::rows;
use super::transfer::{self, Import, RowSink, TableRows};
use super::{
    AUDIT_TENANTS_KEY, ApprovalRecord, ApprovalState, AuditEntry, AuditFilter, CapabilityRecord,
    META_KEY_VERSION, NewSecret, NewToken, PolicyRecord, Rekey, SecretRecord, SecretSummary, Store,
    StoreError, TokenRecord, UsageDelta, UsageRecord, UsageTotal, audit_checkpoint_key,
    audit_head_key, rekey_raced,
};
use crate::audit::{AuditSigner, Head, StoredRecord};
use crate::tokens::TokenHash;
use crate::vault::{FIRST_KEY_VERSION, SealedSecret};

/// Audit batches read per query step.
const AUDIT_BATCHES_PER_PAGE: i64 = 16;

/// File name of the database inside the data directory.
pub const DB_FILE: &str = "seks.db";

/// SQLite-backed [`Store`].
#[derive(Debug, Clone)]
pub struct SqliteStore {
    pool: SqlitePool,
    /// A connection of its own for audit batches: its page cache stays warm, and each
    /// batch wakes one worker thread rather than whichever the pool hands out.
    audit: SqlitePool,
}

impl SqliteStore {
    /// Open (creating if needed) the database file `db_file` (`seks.db` in the data
    /// directory by default) and apply migrations.
    pub async fn open(db_file: &Path) -> Result<Self, StoreError> {
        let data_dir = db_file
            .parent()
            .filter(|dir| !dir.as_os_str().is_empty())
            .unwrap_or(Path::new("."));
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(data_dir)
            .map_err(|source| StoreError::DataDir {
                path: data_dir.display().to_string(),
                source,
            })?;
        // SQLite gives its -wal and -shm files the database file's mode, so creating it
        // 0600 keeps all three private.
        std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o600)
            .open(db_file)
            .map_err(|source| StoreError::DataDir {
                path: db_file.display().to_string(),
                source,
            })?;
        let options = SqliteConnectOptions::new()
            .filename(db_file)
            .journal_mode(SqliteJournalMode::Wal)
            // FULL: a committed revocation or rotation survives a power cut.
            .synchronous(SqliteSynchronous::Full)
            .busy_timeout(Duration::from_secs(5))
            .foreign_keys(true);
        let pool = SqlitePoolOptions::new()
            .max_connections(4)
            .acquire_timeout(Duration::from_secs(2))
            .connect_with(options.clone())
            .await?;
        let migrator = sqlx::migrate!("migrations/sqlite");
        if migrator.run(&pool).await.is_err() {
            // Two processes migrating a fresh store race; the loser finds the work done.
            tokio::time::sleep(Duration::from_millis(200)).await;
            migrator.run(&pool).await?;
        }
        let audit = SqlitePoolOptions::new()
            .max_connections(1)
            .acquire_timeout(Duration::from_secs(2))
            .connect_with(options)
            .await?;
        Ok(SqliteStore { pool, audit })
    }
}

impl SqliteStore {
    /// A write transaction on the shared pool (see [`begin_immediate`]).
    async fn write(&self) -> Result<sqlx::Transaction<'static, sqlx::Sqlite>, sqlx::Error> {
        begin_immediate(&self.pool).await
    }
}

/// A write transaction. IMMEDIATE takes the write lock at once: a transaction that reads
/// first and upgrades later fails at once (no busy wait) if another connection wrote in
/// between, and two writers can't both extend the same audit head.
async fn begin_immediate(
    pool: &SqlitePool,
) -> Result<sqlx::Transaction<'static, sqlx::Sqlite>, sqlx::Error> {
    pool.begin_with("BEGIN IMMEDIATE").await
}

/// The newest record of `tenant`'s chain, or the checkpoint of pruned history, or genesis.
async fn audit_head(conn: &mut sqlx::SqliteConnection, tenant: &str) -> Result<Head, StoreError> {
    let last = sqlx::query(
        "SELECT last_seq, last_hash FROM audit_batches WHERE tenant_id = ? \
         ORDER BY first_seq DESC LIMIT 1",
    )
    .bind(tenant)
    .fetch_optional(&mut *conn)
    .await?;
    if let Some(row) = last {
        return Ok(Head {
            seq: row.try_get("last_seq")?,
            hash: row.try_get("last_hash")?,
        });
    }
    let checkpoint = get_meta(conn, &audit_checkpoint_key(tenant)).await?;
    Ok(audit_batch::head_after_checkpoint(checkpoint.as_deref()))
}

// Macros rather than consts so `concat!` keeps every query a `&'static str`.
macro_rules! secret_select {
    () => {
        "SELECT id, tenant_id, name, provider, ciphertext, nonce, wrapped_key, wrap_nonce, \
         key_version, version, created_at, rotated_at FROM secrets"
    };
}

macro_rules! token_select {
    () => {
        "SELECT t.id, t.tenant_id, t.agent, t.secret_id, s.name AS secret_name, s.provider, \
         t.hint, t.expires_at, t.revoked_at, t.created_at, t.last_used_at, \
         t.parent_id, t.policy, t.policy_name \
         FROM tokens t JOIN secrets s ON s.id = t.secret_id"
    };
}

/// A `meta` value, read on `conn` (inside its transaction).
async fn get_meta(
    conn: &mut sqlx::SqliteConnection,
    key: &str,
) -> Result<Option<String>, sqlx::Error> {
    sqlx::query_scalar("SELECT value FROM meta WHERE key = ?")
        .bind(key)
        .fetch_optional(conn)
        .await
}

async fn put_meta(
    conn: &mut sqlx::SqliteConnection,
    key: &str,
    value: &str,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "INSERT INTO meta (key, value) VALUES (?, ?) \
         ON CONFLICT (key) DO UPDATE SET value = excluded.value",
    )
    .bind(key)
    .bind(value)
    .execute(conn)
    .await?;
    Ok(())
}

#[async_trait]
impl Store for SqliteStore {
    async fn meta(&self, key: &str) -> Result<Option<String>, StoreError> {
        Ok(sqlx::query_scalar("SELECT value FROM meta WHERE key = ?")
            .bind(key)
            .fetch_optional(&self.pool)
            .await?)
    }

    async fn init_meta(&self, key: &str, value: &str) -> Result<String, StoreError> {
        sqlx::query("INSERT INTO meta (key, value) VALUES (?, ?) ON CONFLICT (key) DO NOTHING")
            .bind(key)
            .bind(value)
            .execute(&self.pool)
            .await?;
        self.meta(key)
            .await?
            .ok_or_else(|| StoreError::NotFound(format!("meta {key}")))
    }

    async fn init_sealed_meta(
        &self,
        key: &str,
        value: &str,
        key_version: i64,
    ) -> Result<String, StoreError> {
        sqlx::query(
            "INSERT INTO meta (key, value) SELECT ?, ? \
             WHERE COALESCE((SELECT value FROM meta WHERE key = ?), ?) = ? \
             ON CONFLICT (key) DO NOTHING",
        )
        .bind(key)
        .bind(value)
        .bind(META_KEY_VERSION)
        .bind(FIRST_KEY_VERSION.to_string())
        .bind(key_version.to_string())
        .execute(&self.pool)
        .await?;
        self.meta(key).await?.ok_or(StoreError::StaleMasterKey {
            sealed: key_version,
        })
    }

    async fn set_meta(&self, key: &str, value: &str) -> Result<(), StoreError> {
        sqlx::query("INSERT INTO meta (key, value) VALUES (?, ?) ON CONFLICT (key) DO UPDATE SET value = excluded.value")
            .bind(key)
            .bind(value)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    async fn revision(&self) -> Result<i64, StoreError> {
        Ok(
            sqlx::query_scalar("SELECT value FROM revision WHERE id = 1")
                .fetch_one(&self.pool)
                .await?,
        )
    }

    async fn insert_secret(&self, s: &NewSecret) -> Result<(), StoreError> {
        let done = sqlx::query(
            "INSERT INTO secrets (id, tenant_id, name, provider, ciphertext, nonce, wrapped_key, wrap_nonce, \
             key_version, version, created_at) SELECT ?, ?, ?, ?, ?, ?, ?, ?, ?, 1, ? \
             WHERE COALESCE((SELECT value FROM meta WHERE key = ?), ?) = ?",
        )
        .bind(&s.id)
        .bind(&s.tenant)
        .bind(&s.name)
        .bind(&s.provider)
        .bind(&s.sealed.ciphertext)
        .bind(&s.sealed.nonce)
        .bind(&s.sealed.wrapped_key)
        .bind(&s.sealed.wrap_nonce)
        .bind(s.sealed.key_version)
        .bind(s.created_at)
        // Read in the insert itself: a rotation committed since the value was sealed (by a
        // process still on the old key) makes it insert nothing.
        .bind(META_KEY_VERSION)
        .bind(FIRST_KEY_VERSION.to_string())
        .bind(s.sealed.key_version.to_string())
        .execute(&self.pool)
        .await
        .map_err(|e| {
            if rows::is_unique_violation(&e) {
                StoreError::Conflict(format!("secret `{}`", s.name))
            } else {
                e.into()
            }
        })?;
        if done.rows_affected() == 0 {
            return Err(StoreError::StaleMasterKey {
                sealed: s.sealed.key_version,
            });
        }
        Ok(())
    }

    async fn secret_by_name(
        &self,
        tenant: &str,
        name: &str,
    ) -> Result<Option<SecretRecord>, StoreError> {
        let row = sqlx::query(concat!(
            secret_select!(),
            " WHERE tenant_id = ? AND name = ?"
        ))
        .bind(tenant)
        .bind(name)
        .fetch_optional(&self.pool)
        .await?;
        Ok(row.as_ref().map(rows::secret).transpose()?)
    }

    async fn secret_by_id(
        &self,
        tenant: &str,
        id: &str,
    ) -> Result<Option<SecretRecord>, StoreError> {
        let row = sqlx::query(concat!(secret_select!(), " WHERE tenant_id = ? AND id = ?"))
            .bind(tenant)
            .bind(id)
            .fetch_optional(&self.pool)
            .await?;
        Ok(row.as_ref().map(rows::secret).transpose()?)
    }

    async fn all_secrets(&self) -> Result<Vec<SecretRecord>, StoreError> {
        let rows = sqlx::query(secret_select!()).fetch_all(&self.pool).await?;
        Ok(rows.iter().map(rows::secret).collect::<Result<_, _>>()?)
    }

    async fn list_secrets(&self, tenant: &str) -> Result<Vec<SecretSummary>, StoreError> {
        let rows = sqlx::query(
            "SELECT s.id, s.name, s.provider, s.version, s.created_at, s.rotated_at, \
             (SELECT COUNT(*) FROM tokens t WHERE t.secret_id = s.id) AS tokens \
             FROM secrets s WHERE s.tenant_id = ? ORDER BY s.created_at, s.name",
        )
        .bind(tenant)
        .fetch_all(&self.pool)
        .await?;
        Ok(rows
            .iter()
            .map(rows::secret_summary)
            .collect::<Result<_, _>>()?)
    }

    async fn rotate_secret(
        &self,
        tenant: &str,
        id: &str,
        new_version: i64,
        sealed: &SealedSecret,
        rotated_at: i64,
    ) -> Result<(), StoreError> {
        let done = sqlx::query(
            "UPDATE secrets SET ciphertext = ?, nonce = ?, wrapped_key = ?, wrap_nonce = ?, key_version = ?, \
             version = ?, rotated_at = ? WHERE tenant_id = ? AND id = ? AND version = ? AND key_version = ?",
        )
        .bind(&sealed.ciphertext)
        .bind(&sealed.nonce)
        .bind(&sealed.wrapped_key)
        .bind(&sealed.wrap_nonce)
        .bind(sealed.key_version)
        .bind(new_version)
        .bind(rotated_at)
        .bind(tenant)
        .bind(id)
        .bind(new_version - 1)
        .bind(sealed.key_version)
        .execute(&self.pool)
        .await?;
        if done.rows_affected() == 1 {
            Ok(())
        } else {
            Err(StoreError::NotFound(format!(
                "secret {id} at version {} under master key version {}",
                new_version - 1,
                sealed.key_version
            )))
        }
    }

    async fn reseal_secret(
        &self,
        tenant: &str,
        id: &str,
        version: i64,
        was: &[u8],
        sealed: &SealedSecret,
    ) -> Result<bool, StoreError> {
        let done = sqlx::query(
            "UPDATE secrets SET ciphertext = ?, nonce = ?, wrapped_key = ?, wrap_nonce = ?, key_version = ? \
             WHERE tenant_id = ? AND id = ? AND version = ? AND ciphertext = ? AND key_version = ?",
        )
        .bind(&sealed.ciphertext)
        .bind(&sealed.nonce)
        .bind(&sealed.wrapped_key)
        .bind(&sealed.wrap_nonce)
        .bind(sealed.key_version)
        .bind(tenant)
        .bind(id)
        .bind(version)
        .bind(was)
        .bind(sealed.key_version)
        .execute(&self.pool)
        .await?;
        Ok(done.rows_affected() == 1)
    }

    async fn rekey(&self, rekey: &Rekey) -> Result<(), StoreError> {
        // The write lock, at once: audit appends and secret writes wait, then find the swap.
        let mut tx = self.write().await?;
        for secret in &rekey.secrets {
            let done = sqlx::query(
                "UPDATE secrets SET wrapped_key = ?, wrap_nonce = ?, key_version = ? \
                 WHERE tenant_id = ? AND id = ? AND version = ? AND wrapped_key = ?",
            )
            .bind(&secret.sealed.wrapped_key)
            .bind(&secret.sealed.wrap_nonce)
            .bind(secret.sealed.key_version)
            .bind(&secret.tenant)
            .bind(&secret.id)
            .bind(secret.version)
            .bind(&secret.was)
            .execute(&mut *tx)
            .await?;
            if done.rows_affected() != 1 {
                return Err(rekey_raced(&format!("secret {}", secret.id)));
            }
        }
        for swap in &rekey.meta {
            let done = match &swap.was {
                Some(was) => sqlx::query("UPDATE meta SET value = ? WHERE key = ? AND value = ?")
                    .bind(&swap.value)
                    .bind(&swap.key)
                    .bind(was),
                None => sqlx::query(
                    "INSERT INTO meta (key, value) VALUES (?, ?) ON CONFLICT (key) DO NOTHING",
                )
                .bind(&swap.key)
                .bind(&swap.value),
            }
            .execute(&mut *tx)
            .await?;
            if done.rows_affected() != 1 {
                return Err(rekey_raced(&swap.key));
            }
        }
        for key in &rekey.absent {
            if get_meta(&mut tx, key).await?.is_some() {
                return Err(rekey_raced(key));
            }
        }
        let others: i64 = sqlx::query_scalar("SELECT count(*) FROM secrets WHERE key_version <> ?")
            .bind(rekey.key_version)
            .fetch_one(&mut *tx)
            .await?;
        if others != 0 {
            return Err(rekey_raced("the list of secrets"));
        }
        tx.commit().await?;
        Ok(())
    }

    async fn delete_secret(&self, tenant: &str, id: &str) -> Result<u64, StoreError> {
        let mut tx = self.write().await?;
        // Counted first: SQLite's change count leaves out derived tokens that the
        // ON DELETE CASCADE of their parent removed before the statement reached them.
        let tokens: i64 =
            sqlx::query_scalar("SELECT COUNT(*) FROM tokens WHERE tenant_id = ? AND secret_id = ?")
                .bind(tenant)
                .bind(id)
                .fetch_one(&mut *tx)
                .await?;
        sqlx::query("DELETE FROM tokens WHERE tenant_id = ? AND secret_id = ?")
            .bind(tenant)
            .bind(id)
            .execute(&mut *tx)
            .await?;
        let secrets = sqlx::query("DELETE FROM secrets WHERE tenant_id = ? AND id = ?")
            .bind(tenant)
            .bind(id)
            .execute(&mut *tx)
            .await?
            .rows_affected();
        if secrets == 0 {
            return Err(StoreError::NotFound(format!("secret {id}")));
        }
        tx.commit().await?;
        Ok(rows::to_u64(tokens))
    }

    async fn insert_token(&self, t: &NewToken) -> Result<(), StoreError> {
        // The named policy is checked (and, on PostgreSQL, locked) in the same statement, so a
        // policy deleted meanwhile can't be left named by a new token.
        let done = sqlx::query(
            "INSERT INTO tokens (id, tenant_id, agent, secret_id, token_hash, hint, expires_at, created_at, \
             parent_id, policy, policy_name) SELECT ?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11 \
             WHERE ?11 IS NULL OR EXISTS (SELECT 1 FROM policies WHERE tenant_id = ?2 AND name = ?11)",
        )
        .bind(&t.id)
        .bind(&t.tenant)
        .bind(&t.agent)
        .bind(&t.secret_id)
        .bind(&t.hash.0[..])
        .bind(&t.hint)
        .bind(t.expires_at)
        .bind(t.created_at)
        .bind(&t.parent_id)
        .bind(&t.policy)
        .bind(&t.policy_name)
        .execute(&self.pool)
        .await?;
        match (&t.policy_name, done.rows_affected()) {
            (Some(name), 0) => Err(StoreError::NotFound(format!("policy `{name}`"))),
            _ => Ok(()),
        }
    }

    async fn token_by_hash(&self, hash: &TokenHash) -> Result<Option<TokenRecord>, StoreError> {
        let row = sqlx::query(concat!(token_select!(), " WHERE t.token_hash = ?"))
            .bind(&hash.0[..])
            .fetch_optional(&self.pool)
            .await?;
        Ok(row.as_ref().map(rows::token).transpose()?)
    }

    async fn list_tokens(&self, tenant: &str) -> Result<Vec<TokenRecord>, StoreError> {
        let rows = sqlx::query(concat!(
            token_select!(),
            " WHERE t.tenant_id = ? ORDER BY t.created_at, t.id"
        ))
        .bind(tenant)
        .fetch_all(&self.pool)
        .await?;
        Ok(rows.iter().map(rows::token).collect::<Result<_, _>>()?)
    }

    async fn token_by_id(&self, tenant: &str, id: &str) -> Result<Option<TokenRecord>, StoreError> {
        let row = sqlx::query(concat!(
            token_select!(),
            " WHERE t.tenant_id = ? AND t.id = ?"
        ))
        .bind(tenant)
        .bind(id)
        .fetch_optional(&self.pool)
        .await?;
        Ok(row.as_ref().map(rows::token).transpose()?)
    }

    async fn revoke_token(&self, tenant: &str, id: &str, at: i64) -> Result<u64, StoreError> {
        let mut tx = self.write().await?;
        let active: Option<String> = sqlx::query_scalar(
            "SELECT id FROM tokens WHERE tenant_id = ? AND id = ? AND revoked_at IS NULL",
        )
        .bind(tenant)
        .bind(id)
        .fetch_optional(&mut *tx)
        .await?;
        if active.is_none() {
            return Ok(0);
        }
        // Children die with their parent: revoke the whole subtree.
        let done = sqlx::query(
            "WITH RECURSIVE tree(id) AS (SELECT ? UNION SELECT t.id FROM tokens t JOIN tree ON t.parent_id = tree.id) \
             UPDATE tokens SET revoked_at = ? WHERE tenant_id = ? AND revoked_at IS NULL AND id IN (SELECT id FROM tree)",
        )
        .bind(id)
        .bind(at)
        .bind(tenant)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(done.rows_affected())
    }

    async fn update_token_policy(
        &self,
        tenant: &str,
        id: &str,
        policy: Option<&str>,
        policy_name: Option<&str>,
        expires_at: Option<i64>,
    ) -> Result<bool, StoreError> {
        let mut tx = self.write().await?;
        let done = sqlx::query(
            "UPDATE tokens SET policy = ?1, policy_name = ?2, expires_at = ?3 \
             WHERE tenant_id = ?4 AND id = ?5 AND (?2 IS NULL OR EXISTS \
             (SELECT 1 FROM policies WHERE tenant_id = ?4 AND name = ?2))",
        )
        .bind(policy)
        .bind(policy_name)
        .bind(expires_at)
        .bind(tenant)
        .bind(id)
        .execute(&mut *tx)
        .await?;
        if done.rows_affected() == 1 {
            // Brokers hold a child to its ancestors' expiry anyway; cutting the stored one
            // too keeps what `token show` says of the child true.
            if let Some(at) = expires_at {
                sqlx::query(
                    "WITH RECURSIVE tree(id) AS (SELECT id FROM tokens WHERE tenant_id = ?1 AND parent_id = ?2 \
                     UNION SELECT t.id FROM tokens t JOIN tree ON t.parent_id = tree.id) \
                     UPDATE tokens SET expires_at = ?3 WHERE tenant_id = ?1 AND id IN (SELECT id FROM tree) \
                     AND (expires_at IS NULL OR expires_at > ?3)",
                )
                .bind(tenant)
                .bind(id)
                .bind(at)
                .execute(&mut *tx)
                .await?;
            }
            tx.commit().await?;
            return Ok(true);
        }
        drop(tx);
        match policy_name {
            Some(name) if self.policy(tenant, name).await?.is_none() => {
                Err(StoreError::NotFound(format!("policy `{name}`")))
            }
            _ => Ok(false),
        }
    }

    async fn put_policy(
        &self,
        tenant: &str,
        name: &str,
        spec: &str,
        at: i64,
    ) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT INTO policies (tenant_id, name, spec, created_at, updated_at) VALUES (?, ?, ?, ?, ?) \
             ON CONFLICT (tenant_id, name) DO UPDATE SET spec = excluded.spec, updated_at = excluded.updated_at",
        )
        .bind(tenant)
        .bind(name)
        .bind(spec)
        .bind(at)
        .bind(at)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    async fn policy(&self, tenant: &str, name: &str) -> Result<Option<PolicyRecord>, StoreError> {
        let row = sqlx::query("SELECT * FROM policies WHERE tenant_id = ? AND name = ?")
            .bind(tenant)
            .bind(name)
            .fetch_optional(&self.pool)
            .await?;
        Ok(row.as_ref().map(rows::policy).transpose()?)
    }

    async fn list_policies(&self, tenant: &str) -> Result<Vec<PolicyRecord>, StoreError> {
        let rows = sqlx::query("SELECT * FROM policies WHERE tenant_id = ? ORDER BY name")
            .bind(tenant)
            .fetch_all(&self.pool)
            .await?;
        Ok(rows.iter().map(rows::policy).collect::<Result<_, _>>()?)
    }

    async fn all_policies(&self) -> Result<Vec<PolicyRecord>, StoreError> {
        let rows = sqlx::query("SELECT * FROM policies")
            .fetch_all(&self.pool)
            .await?;
        Ok(rows.iter().map(rows::policy).collect::<Result<_, _>>()?)
    }

    async fn delete_policy(&self, tenant: &str, name: &str) -> Result<bool, StoreError> {
        let mut tx = self.write().await?;
        let users: i64 = sqlx::query_scalar(
            "SELECT COUNT(*) FROM tokens WHERE tenant_id = ? AND policy_name = ? AND revoked_at IS NULL",
        )
        .bind(tenant)
        .bind(name)
        .fetch_one(&mut *tx)
        .await?;
        if users > 0 {
            return Err(StoreError::InUse(format!(
                "policy `{name}` is used by {users} active token(s); update or revoke them first"
            )));
        }
        let done = sqlx::query("DELETE FROM policies WHERE tenant_id = ? AND name = ?")
            .bind(tenant)
            .bind(name)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(done.rows_affected() == 1)
    }

    async fn put_capabilities(
        &self,
        tenant: &str,
        definitions: &[(&str, &str)],
        at: i64,
    ) -> Result<Vec<bool>, StoreError> {
        let mut tx = self.write().await?;
        let mut replaced = Vec::with_capacity(definitions.len());
        for (name, spec) in definitions {
            let existed: i64 = sqlx::query_scalar(
                "SELECT COUNT(*) FROM capabilities WHERE tenant_id = ? AND name = ?",
            )
            .bind(tenant)
            .bind(name)
            .fetch_one(&mut *tx)
            .await?;
            sqlx::query(
                "INSERT INTO capabilities (tenant_id, name, spec, created_at, updated_at) VALUES (?, ?, ?, ?, ?) \
                 ON CONFLICT (tenant_id, name) DO UPDATE SET spec = excluded.spec, updated_at = excluded.updated_at",
            )
            .bind(tenant)
            .bind(name)
            .bind(spec)
            .bind(at)
            .bind(at)
            .execute(&mut *tx)
            .await?;
            replaced.push(existed > 0);
        }
        tx.commit().await?;
        Ok(replaced)
    }

    async fn list_capabilities(&self, tenant: &str) -> Result<Vec<CapabilityRecord>, StoreError> {
        let rows = sqlx::query("SELECT * FROM capabilities WHERE tenant_id = ? ORDER BY name")
            .bind(tenant)
            .fetch_all(&self.pool)
            .await?;
        Ok(rows
            .iter()
            .map(rows::capability)
            .collect::<Result<_, _>>()?)
    }

    async fn delete_capability(&self, tenant: &str, name: &str) -> Result<bool, StoreError> {
        let done = sqlx::query("DELETE FROM capabilities WHERE tenant_id = ? AND name = ?")
            .bind(tenant)
            .bind(name)
            .execute(&self.pool)
            .await?;
        Ok(done.rows_affected() == 1)
    }

    async fn insert_approval(&self, a: &ApprovalRecord) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT INTO approvals (id, tenant_id, token_id, summary, state, reason, created_at, expires_at, \
             decided_at, decided_by) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        )
        .bind(&a.id)
        .bind(&a.tenant)
        .bind(&a.token_id)
        .bind(&a.summary)
        .bind(a.state.as_str())
        .bind(&a.reason)
        .bind(a.created_at)
        .bind(a.expires_at)
        .bind(a.decided_at)
        .bind(&a.decided_by)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    async fn approval(&self, tenant: &str, id: &str) -> Result<Option<ApprovalRecord>, StoreError> {
        let row = sqlx::query("SELECT * FROM approvals WHERE tenant_id = ? AND id = ?")
            .bind(tenant)
            .bind(id)
            .fetch_optional(&self.pool)
            .await?;
        Ok(row.as_ref().map(rows::approval).transpose()?)
    }

    async fn list_approvals(
        &self,
        tenant: &str,
        all: bool,
    ) -> Result<Vec<ApprovalRecord>, StoreError> {
        // Ids are random, so insertion order (rowid) breaks ties within a second.
        let rows = sqlx::query(
            "SELECT * FROM approvals WHERE tenant_id = ? AND (? OR state = 'pending') ORDER BY created_at DESC, rowid DESC",
        )
        .bind(tenant)
        .bind(all)
        .fetch_all(&self.pool)
        .await?;
        Ok(rows.iter().map(rows::approval).collect::<Result<_, _>>()?)
    }

    async fn decide_approval(
        &self,
        tenant: &str,
        id: &str,
        state: ApprovalState,
        reason: Option<&str>,
        by: &str,
        at: i64,
    ) -> Result<bool, StoreError> {
        let done = sqlx::query(
            "UPDATE approvals SET state = ?, reason = ?, decided_by = ?, decided_at = ? \
             WHERE tenant_id = ? AND id = ? AND state = 'pending'",
        )
        .bind(state.as_str())
        .bind(reason)
        .bind(by)
        .bind(at)
        .bind(tenant)
        .bind(id)
        .execute(&self.pool)
        .await?;
        Ok(done.rows_affected() == 1)
    }

    async fn usage(&self, token_id: &str, day: i64) -> Result<(u64, u64), StoreError> {
        let row: Option<(i64, i64)> =
            sqlx::query_as("SELECT requests, tokens FROM usage WHERE token_id = ? AND day = ?")
                .bind(token_id)
                .bind(day)
                .fetch_optional(&self.pool)
                .await?;
        let (requests, tokens) = row.unwrap_or_default();
        Ok((rows::to_u64(requests), rows::to_u64(tokens)))
    }

    async fn add_usage(&self, deltas: &[UsageDelta]) -> Result<Vec<UsageTotal>, StoreError> {
        let mut tx = self.write().await?;
        let deltas = UsageDelta::summed(deltas);
        let mut totals = Vec::with_capacity(deltas.len());
        for d in &deltas {
            // Zero is only a read: no row for a day without usage.
            let query = if d.requests + d.tokens == 0 {
                sqlx::query_as("SELECT requests, tokens FROM usage WHERE token_id = ? AND day = ?")
                    .bind(&d.token_id)
                    .bind(d.day)
            } else {
                sqlx::query_as(
                    "INSERT INTO usage (token_id, day, requests, tokens) VALUES (?, ?, ?, ?) \
                     ON CONFLICT (token_id, day) DO UPDATE SET requests = requests + excluded.requests, \
                     tokens = tokens + excluded.tokens RETURNING requests, tokens",
                )
                .bind(&d.token_id)
                .bind(d.day)
                .bind(rows::to_i64(d.requests))
                .bind(rows::to_i64(d.tokens))
            };
            let row: Option<(i64, i64)> = query.fetch_optional(&mut *tx).await?;
            let (requests, tokens) = row.unwrap_or_default();
            totals.push(UsageTotal {
                token_id: d.token_id.clone(),
                day: d.day,
                requests: rows::to_u64(requests),
                tokens: rows::to_u64(tokens),
            });
        }
        tx.commit().await?;
        Ok(totals)
    }

    async fn record_token_use(&self, uses: &[(String, i64)]) -> Result<(), StoreError> {
        let mut tx = self.write().await?;
        for (id, at) in uses {
            sqlx::query(
                "UPDATE tokens SET last_used_at = MAX(COALESCE(last_used_at, 0), ?) WHERE id = ?",
            )
            .bind(at)
            .bind(id)
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await?;
        Ok(())
    }

    async fn append_audit(
        &self,
        entries: &[AuditEntry],
        sign: &dyn AuditSigner,
    ) -> Result<(), StoreError> {
        let mut tx = begin_immediate(&self.audit).await?;
        for (tenant, list) in audit_batch::by_tenant(entries) {
            let mut head = audit_head(&mut tx, tenant).await?;
            let newest = get_meta(&mut tx, &audit_head_key(tenant)).await?;
            let listed = get_meta(&mut tx, AUDIT_TENANTS_KEY).await?;
            let tenants = audit_batch::checked_tenants(
                sign,
                tenant,
                &head,
                newest.as_deref(),
                listed.as_deref(),
            )?;
            for batch in audit_batch::chain(tenant, &mut head, &list) {
                sqlx::query(
                    "INSERT INTO audit_batches (tenant_id, first_seq, last_seq, min_at_ms, \
                     max_at_ms, last_hash, records) VALUES (?, ?, ?, ?, ?, ?, ?)",
                )
                .bind(&batch.tenant)
                .bind(batch.first_seq)
                .bind(batch.last_seq)
                .bind(batch.min_at_ms)
                .bind(batch.max_at_ms)
                .bind(&batch.last_hash)
                .bind(&batch.records)
                .execute(&mut *tx)
                .await?;
            }
            if head.seq == 0 {
                continue;
            }
            if newest.is_none() {
                // A tenant's first records: it joins the signed list of tenants.
                put_meta(&mut tx, AUDIT_TENANTS_KEY, &sign.tenants(tenants)).await?;
            }
            put_meta(&mut tx, &audit_head_key(tenant), &sign.newest(tenant, head)).await?;
        }
        tx.commit().await?;
        Ok(())
    }

    async fn audit_holds(&self, entry: &AuditEntry) -> Result<bool, StoreError> {
        // A record's text, with its unique request id, appears whole only as itself: inside
        // another record every quote of it would be escaped.
        Ok(sqlx::query_scalar(
            "SELECT EXISTS (SELECT 1 FROM audit_batches WHERE tenant_id = ? \
             AND max_at_ms >= ? AND instr(records, ?) > 0)",
        )
        .bind(&entry.tenant)
        .bind(entry.at_ms)
        .bind(&entry.record)
        .fetch_one(&self.audit)
        .await?)
    }

    async fn audit_records(&self, filter: &AuditFilter) -> Result<Vec<StoredRecord>, StoreError> {
        let order = if filter.newest { "DESC" } else { "ASC" };
        let beyond = if filter.newest { "<" } else { ">" };
        let sql = format!(
            "SELECT * FROM audit_batches WHERE tenant_id = ? AND last_seq > ? AND first_seq > ? \
             AND max_at_ms >= ? AND (? IS NULL OR first_seq {beyond} ?) \
             ORDER BY first_seq {order} LIMIT ?"
        );
        let mut found = Vec::new();
        let mut cursor: Option<i64> = None;
        'pages: loop {
            let page = sqlx::query(sqlx::AssertSqlSafe(sql.clone()))
                .bind(&filter.tenant)
                .bind(filter.after_seq)
                // Batches are contiguous and short, so this bound lets the key index skip
                // everything before `after_seq`.
                .bind(
                    filter
                        .after_seq
                        .saturating_sub(audit_batch::MAX_LINES as i64),
                )
                .bind(filter.since_ms.unwrap_or(i64::MIN))
                .bind(cursor)
                .bind(cursor)
                .bind(AUDIT_BATCHES_PER_PAGE)
                .fetch_all(&self.pool)
                .await?;
            if page.is_empty() {
                break;
            }
            for row in &page {
                let batch = rows::batch(row)?;
                cursor = Some(batch.first_seq);
                let mut records = audit_batch::records(&batch);
                if filter.newest {
                    records.reverse();
                }
                for record in records {
                    if audit_batch::matches(filter, &record) {
                        found.push(record);
                        if found.len() >= filter.limit as usize {
                            break 'pages;
                        }
                    }
                }
            }
        }
        if filter.newest {
            found.reverse();
        }
        Ok(found)
    }

    async fn audit_chain_page(
        &self,
        tenant: &str,
        after_batch: i64,
        batches: u32,
    ) -> Result<(Vec<StoredRecord>, Option<i64>), StoreError> {
        let rows = sqlx::query(
            "SELECT * FROM audit_batches WHERE tenant_id = ? AND first_seq > ? \
             ORDER BY first_seq LIMIT ?",
        )
        .bind(tenant)
        .bind(after_batch)
        .bind(i64::from(batches))
        .fetch_all(&self.pool)
        .await?;
        let mut records = Vec::new();
        let mut cursor = None;
        for row in &rows {
            let batch = rows::batch(row)?;
            cursor = Some(batch.first_seq);
            records.extend(audit_batch::records(&batch));
        }
        Ok((records, cursor))
    }

    async fn audit_tenants(&self) -> Result<Vec<String>, StoreError> {
        Ok(sqlx::query_scalar(
            "SELECT DISTINCT tenant_id FROM audit_batches UNION \
             SELECT substr(key, length('audit_head/') + 1) FROM meta WHERE key LIKE 'audit_head/%'",
        )
        .fetch_all(&self.pool)
        .await?)
    }

    async fn prune_audit(
        &self,
        tenant: &str,
        before_ms: i64,
        batches: u32,
        sign: &dyn AuditSigner,
    ) -> Result<u64, StoreError> {
        let mut tx = self.write().await?;
        // Prune whole batches from the front of the chain only, up to the first one holding
        // a record from after the cut-off, so the rest still links to the checkpoint.
        let rows = sqlx::query(
            "SELECT * FROM audit_batches WHERE tenant_id = ? \
             AND first_seq < COALESCE((SELECT MIN(first_seq) FROM audit_batches \
             WHERE tenant_id = ? AND max_at_ms >= ?), 9223372036854775807) \
             ORDER BY first_seq LIMIT ?",
        )
        .bind(tenant)
        .bind(tenant)
        .bind(before_ms)
        .bind(i64::from(batches))
        .fetch_all(&mut *tx)
        .await?;
        let batches = rows
            .iter()
            .map(rows::batch)
            .collect::<Result<Vec<_>, _>>()?;
        let Some((head, pruned)) = audit_batch::pruned_head(tenant, &batches, before_ms)? else {
            return Ok(0);
        };
        // Records pruned have a signed head; only its key may sign the checkpoint.
        let newest = get_meta(&mut tx, &audit_head_key(tenant))
            .await?
            .unwrap_or_default();
        audit_batch::signed_newest(sign, tenant, &newest)?;
        sqlx::query("DELETE FROM audit_batches WHERE tenant_id = ? AND first_seq <= ?")
            .bind(tenant)
            .bind(head.seq)
            .execute(&mut *tx)
            .await?;
        put_meta(
            &mut tx,
            &audit_checkpoint_key(tenant),
            &sign.checkpoint(tenant, head),
        )
        .await?;
        tx.commit().await?;
        Ok(pruned)
    }

    async fn usage_since(
        &self,
        tenant: &str,
        since_day: i64,
    ) -> Result<Vec<UsageRecord>, StoreError> {
        let rows: Vec<(String, String, i64, i64, i64)> = sqlx::query_as(
            "SELECT u.token_id, t.agent, u.day, u.requests, u.tokens FROM usage u \
             JOIN tokens t ON t.id = u.token_id WHERE t.tenant_id = ? AND u.day >= ? \
             ORDER BY u.day, u.token_id",
        )
        .bind(tenant)
        .bind(since_day)
        .fetch_all(&self.pool)
        .await?;
        Ok(rows
            .into_iter()
            .map(|(token_id, agent, day, requests, tokens)| UsageRecord {
                token_id,
                agent,
                day,
                requests: rows::to_u64(requests),
                tokens: rows::to_u64(tokens),
            })
            .collect())
    }

    async fn export(&self, sink: &mut dyn RowSink) -> Result<Vec<TableRows>, StoreError> {
        // A deferred transaction reads one WAL snapshot from its first statement on, while
        // brokers keep writing.
        let mut tx = self.pool.begin().await?;
        let counts = transfer::export(&mut tx, "rowid", sink).await?;
        tx.rollback().await?;
        Ok(counts)
    }

    async fn import(&self) -> Result<Box<dyn Import>, StoreError> {
        Ok(Box::new(transfer::Importer::new(self.write().await?)))
    }
}
