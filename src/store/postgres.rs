//! The PostgreSQL store: what several broker replicas share. Same tables, same semantics
//! as the SQLite store (`sqlite.rs`); the row conversions and the audit batch layout are
//! shared (`rows.rs`, `audit_batch.rs`).

use std::str::FromStr;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use async_trait::async_trait;
use sqlx::postgres::{PgConnectOptions, PgListener, PgPoolOptions};
use sqlx::{Connection, PgConnection, PgPool, Row};
use tokio::sync::watch;

mod leases;

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
/// Connections per process: the broker's writers (audit, usage, last use), the keyring's
/// poll and CLI/admin calls rarely need more at once.
const MAX_CONNECTIONS: u32 = 8;
/// Longest wait for a pooled connection (a new one includes connecting and TLS).
const ACQUIRE_TIMEOUT: Duration = Duration::from_secs(5);
/// Longest wait for a lock (a row another replica is changing, the audit lock): the
/// counterpart of SQLite's 5 s busy timeout, so contention fails a write instead of hanging it.
const LOCK_TIMEOUT: &str = "5s";
/// Longest a statement may run: a runaway query fails rather than holding a connection.
const STATEMENT_TIMEOUT: &str = "30s";
/// Longest wait to connect for migrations (they wait as long as needed for the migration
/// lock another replica holds, once connected).
const MIGRATE_CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// Advisory lock key serialising audit appends and pruning across replicas (what SQLite's
/// `BEGIN IMMEDIATE` does there): two writers must not extend the same chain head.
const AUDIT_LOCK: i64 = 0x5345_4b53_4155_4454; // "SEKSAUDT"
/// The channel `bump_revision()` notifies on (migration 0002).
const CHANGES_CHANNEL: &str = "seks_changes";
/// Longest wait to (re)connect the change listener; the poll covers for it meanwhile.
const LISTEN_CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// Pause before the change listener tries again after a failure.
const LISTEN_RETRY: Duration = Duration::from_millis(500);

/// PostgreSQL-backed [`Store`].
#[derive(Debug, Clone)]
pub struct PgStore {
    pool: PgPool,
    /// The change feed, started by the first [`Store::changes`] call (a CLI command never
    /// makes one, so it never holds a listening connection).
    changes: Arc<OnceLock<watch::Receiver<u64>>>,
}

impl PgStore {
    /// Connect to `url` (`postgres://…`; `sslmode=require`/`verify-ca`/`verify-full` in
    /// it turn on TLS) and apply migrations.
    ///
    /// Several replicas may start at once: sqlx's migrator holds a PostgreSQL advisory lock
    /// (`pg_advisory_lock`, keyed on the database name) while it applies migrations, so one
    /// applies them and the others then find them applied.
    pub async fn open(url: &str) -> Result<Self, StoreError> {
        let options = PgConnectOptions::from_str(url)?.application_name("seks");
        {
            // Migrations run on their own connection, without the statement timeout: waiting
            // for another replica's migration lock is expected.
            let mut conn = tokio::time::timeout(
                MIGRATE_CONNECT_TIMEOUT,
                PgConnection::connect_with(&options),
            )
            .await
            .map_err(|_| sqlx::Error::PoolTimedOut)??;
            sqlx::migrate!("migrations/postgres").run(&mut conn).await?;
            conn.close().await?;
        }
        let options = options.options([
            ("statement_timeout", STATEMENT_TIMEOUT),
            ("lock_timeout", LOCK_TIMEOUT),
        ]);
        let pool = PgPoolOptions::new()
            .max_connections(MAX_CONNECTIONS)
            .acquire_timeout(ACQUIRE_TIMEOUT)
            .connect_with(options)
            .await?;
        Ok(PgStore {
            pool,
            changes: Arc::default(),
        })
    }

    /// A pool of one connection, apart from the main pool, for the change listener: it holds
    /// its connection for good and reconnects through this pool.
    fn listener_pool(&self) -> PgPool {
        PgPoolOptions::new()
            .max_connections(1)
            .acquire_timeout(LISTEN_CONNECT_TIMEOUT)
            .max_lifetime(None)
            .idle_timeout(None)
            .connect_lazy_with((*self.pool.connect_options()).clone())
    }
}

/// Move `feed` on every change notification, and on every (re)connection since those
/// sent while disconnected are lost, until nobody watches it any more.
async fn listen_for_changes(pool: PgPool, feed: watch::Sender<u64>) {
    let mut listener = None;
    let mut failing = false;
    loop {
        let next = tokio::select! {
            () = feed.closed() => return,
            next = next_change(&pool, &mut listener) => next,
        };
        match next {
            Ok(()) => {
                if failing {
                    failing = false;
                    tracing::info!("receiving the store's change notifications again");
                }
                feed.send_modify(|n| *n = n.wrapping_add(1));
            }
            Err(e) => {
                if !failing {
                    failing = true;
                    tracing::warn!(error = %e, "lost the store's change notifications; polling until they are back");
                }
                listener = None;
                tokio::select! {
                    () = feed.closed() => return,
                    () = tokio::time::sleep(LISTEN_RETRY) => {}
                }
            }
        }
    }
}

/// Wait for the next change notification, connecting first if need be (which counts as one).
async fn next_change(pool: &PgPool, listener: &mut Option<PgListener>) -> Result<(), sqlx::Error> {
    match listener {
        // `None` from `try_recv`: the connection was lost and has been made again.
        Some(listening) => listening.try_recv().await.map(|_| ()),
        None => {
            let mut listening = PgListener::connect_with(pool).await?;
            listening.listen(CHANGES_CHANNEL).await?;
            *listener = Some(listening);
            Ok(())
        }
    }
}

/// Take the audit lock for the rest of `tx`.
async fn lock_audit(conn: &mut PgConnection) -> Result<(), sqlx::Error> {
    sqlx::query("SELECT pg_advisory_xact_lock($1)")
        .bind(AUDIT_LOCK)
        .execute(conn)
        .await?;
    Ok(())
}

/// The newest record of `tenant`'s chain, or the checkpoint of pruned history, or genesis.
async fn audit_head(conn: &mut PgConnection, tenant: &str) -> Result<Head, StoreError> {
    let last = sqlx::query(
        "SELECT last_seq, last_hash FROM audit_batches WHERE tenant_id = $1 \
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
async fn get_meta(conn: &mut PgConnection, key: &str) -> Result<Option<String>, sqlx::Error> {
    sqlx::query_scalar("SELECT value FROM meta WHERE key = $1")
        .bind(key)
        .fetch_optional(conn)
        .await
}

async fn put_meta(conn: &mut PgConnection, key: &str, value: &str) -> Result<(), sqlx::Error> {
    sqlx::query(
        "INSERT INTO meta (key, value) VALUES ($1, $2) \
         ON CONFLICT (key) DO UPDATE SET value = excluded.value",
    )
    .bind(key)
    .bind(value)
    .execute(conn)
    .await?;
    Ok(())
}

#[async_trait]
impl Store for PgStore {
    async fn meta(&self, key: &str) -> Result<Option<String>, StoreError> {
        Ok(sqlx::query_scalar("SELECT value FROM meta WHERE key = $1")
            .bind(key)
            .fetch_optional(&self.pool)
            .await?)
    }

    async fn init_meta(&self, key: &str, value: &str) -> Result<String, StoreError> {
        sqlx::query("INSERT INTO meta (key, value) VALUES ($1, $2) ON CONFLICT (key) DO NOTHING")
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
            "INSERT INTO meta (key, value) SELECT $1, $2 \
             WHERE COALESCE((SELECT value FROM meta WHERE key = $3), $4) = $5 \
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
        let mut conn = self.pool.acquire().await?;
        put_meta(&mut conn, key, value).await?;
        Ok(())
    }

    fn leases(&self) -> Option<&dyn super::Leases> {
        Some(self)
    }

    async fn revision(&self) -> Result<i64, StoreError> {
        Ok(
            sqlx::query_scalar("SELECT value FROM revision WHERE id = 1")
                .fetch_one(&self.pool)
                .await?,
        )
    }

    fn changes(&self) -> Option<watch::Receiver<u64>> {
        // Outside a runtime there is nothing to run the listener on: the caller polls.
        let runtime = tokio::runtime::Handle::try_current().ok()?;
        let mut changes = self
            .changes
            .get_or_init(|| {
                let (feed, changes) = watch::channel(0);
                runtime.spawn(listen_for_changes(self.listener_pool(), feed));
                changes
            })
            .clone();
        changes.mark_unchanged();
        Some(changes)
    }

    async fn insert_secret(&self, s: &NewSecret) -> Result<(), StoreError> {
        let done = sqlx::query(
            "INSERT INTO secrets (id, tenant_id, name, provider, ciphertext, nonce, wrapped_key, wrap_nonce, \
             key_version, version, created_at) SELECT $1, $2, $3, $4, $5, $6, $7, $8, $9, 1, $10 \
             WHERE COALESCE((SELECT value FROM meta WHERE key = $11), $12) = $13",
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
            " WHERE tenant_id = $1 AND name = $2"
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
        let row = sqlx::query(concat!(
            secret_select!(),
            " WHERE tenant_id = $1 AND id = $2"
        ))
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
             FROM secrets s WHERE s.tenant_id = $1 ORDER BY s.created_at, s.name",
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
            "UPDATE secrets SET ciphertext = $1, nonce = $2, wrapped_key = $3, wrap_nonce = $4, \
             key_version = $5, version = $6, rotated_at = $7 \
             WHERE tenant_id = $8 AND id = $9 AND version = $10 AND key_version = $5",
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
            "UPDATE secrets SET ciphertext = $1, nonce = $2, wrapped_key = $3, wrap_nonce = $4, \
             key_version = $5 WHERE tenant_id = $6 AND id = $7 AND version = $8 AND ciphertext = $9 \
             AND key_version = $5",
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
        .execute(&self.pool)
        .await?;
        Ok(done.rows_affected() == 1)
    }

    async fn rekey(&self, rekey: &Rekey) -> Result<(), StoreError> {
        let mut tx = self.pool.begin().await?;
        // Audit appends and secret writes wait until the swap is committed, then find it.
        lock_audit(&mut tx).await?;
        sqlx::query("LOCK TABLE secrets IN SHARE ROW EXCLUSIVE MODE")
            .execute(&mut *tx)
            .await?;
        // Sealed meta values made meanwhile (the forward proxy's CA) wait too, then find it.
        sqlx::query("LOCK TABLE meta IN SHARE ROW EXCLUSIVE MODE")
            .execute(&mut *tx)
            .await?;
        for secret in &rekey.secrets {
            let done = sqlx::query(
                "UPDATE secrets SET wrapped_key = $1, wrap_nonce = $2, key_version = $3 \
                 WHERE tenant_id = $4 AND id = $5 AND version = $6 AND wrapped_key = $7",
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
                Some(was) => {
                    sqlx::query("UPDATE meta SET value = $1 WHERE key = $2 AND value = $3")
                        .bind(&swap.value)
                        .bind(&swap.key)
                        .bind(was)
                }
                None => sqlx::query(
                    "INSERT INTO meta (key, value) VALUES ($1, $2) ON CONFLICT (key) DO NOTHING",
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
        let others: i64 =
            sqlx::query_scalar("SELECT count(*) FROM secrets WHERE key_version <> $1")
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
        let mut tx = self.pool.begin().await?;
        let tokens = sqlx::query("DELETE FROM tokens WHERE tenant_id = $1 AND secret_id = $2")
            .bind(tenant)
            .bind(id)
            .execute(&mut *tx)
            .await?
            .rows_affected();
        let secrets = sqlx::query("DELETE FROM secrets WHERE tenant_id = $1 AND id = $2")
            .bind(tenant)
            .bind(id)
            .execute(&mut *tx)
            .await?
            .rows_affected();
        if secrets == 0 {
            return Err(StoreError::NotFound(format!("secret {id}")));
        }
        tx.commit().await?;
        Ok(tokens)
    }

    async fn insert_token(&self, t: &NewToken) -> Result<(), StoreError> {
        // The named policy is checked (and, on PostgreSQL, locked) in the same statement, so a
        // policy deleted meanwhile can't be left named by a new token.
        let done = sqlx::query(
            "INSERT INTO tokens (id, tenant_id, agent, secret_id, token_hash, hint, expires_at, created_at, \
             parent_id, policy, policy_name) SELECT $1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11 \
             WHERE $11::TEXT IS NULL OR EXISTS \
             (SELECT 1 FROM policies WHERE tenant_id = $2 AND name = $11 FOR SHARE)",
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
        let row = sqlx::query(concat!(token_select!(), " WHERE t.token_hash = $1"))
            .bind(&hash.0[..])
            .fetch_optional(&self.pool)
            .await?;
        Ok(row.as_ref().map(rows::token).transpose()?)
    }

    async fn token_by_id(&self, tenant: &str, id: &str) -> Result<Option<TokenRecord>, StoreError> {
        let row = sqlx::query(concat!(
            token_select!(),
            " WHERE t.tenant_id = $1 AND t.id = $2"
        ))
        .bind(tenant)
        .bind(id)
        .fetch_optional(&self.pool)
        .await?;
        Ok(row.as_ref().map(rows::token).transpose()?)
    }

    async fn list_tokens(&self, tenant: &str) -> Result<Vec<TokenRecord>, StoreError> {
        let rows = sqlx::query(concat!(
            token_select!(),
            " WHERE t.tenant_id = $1 ORDER BY t.created_at, t.id"
        ))
        .bind(tenant)
        .fetch_all(&self.pool)
        .await?;
        Ok(rows.iter().map(rows::token).collect::<Result<_, _>>()?)
    }

    async fn revoke_token(&self, tenant: &str, id: &str, at: i64) -> Result<u64, StoreError> {
        // Children die with their parent: revoke the whole subtree, provided the token
        // itself is still active (0 otherwise), in one statement.
        let done = sqlx::query(
            "WITH RECURSIVE tree(id) AS ( \
               SELECT id FROM tokens WHERE tenant_id = $1 AND id = $2 AND revoked_at IS NULL \
               UNION SELECT t.id FROM tokens t JOIN tree ON t.parent_id = tree.id) \
             UPDATE tokens SET revoked_at = $3 WHERE tenant_id = $1 AND revoked_at IS NULL \
             AND id IN (SELECT id FROM tree)",
        )
        .bind(tenant)
        .bind(id)
        .bind(at)
        .execute(&self.pool)
        .await?;
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
        let mut tx = self.pool.begin().await?;
        let done = sqlx::query(
            "UPDATE tokens SET policy = $1, policy_name = $2, expires_at = $3 \
             WHERE tenant_id = $4 AND id = $5 AND ($2::TEXT IS NULL OR EXISTS \
             (SELECT 1 FROM policies WHERE tenant_id = $4 AND name = $2 FOR SHARE))",
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
                    "WITH RECURSIVE tree(id) AS (SELECT id FROM tokens WHERE tenant_id = $1 AND parent_id = $2 \
                     UNION SELECT t.id FROM tokens t JOIN tree ON t.parent_id = tree.id) \
                     UPDATE tokens SET expires_at = $3 WHERE tenant_id = $1 AND id IN (SELECT id FROM tree) \
                     AND (expires_at IS NULL OR expires_at > $3)",
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
            "INSERT INTO policies (tenant_id, name, spec, created_at, updated_at) VALUES ($1, $2, $3, $4, $4) \
             ON CONFLICT (tenant_id, name) DO UPDATE SET spec = excluded.spec, updated_at = excluded.updated_at",
        )
        .bind(tenant)
        .bind(name)
        .bind(spec)
        .bind(at)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    async fn policy(&self, tenant: &str, name: &str) -> Result<Option<PolicyRecord>, StoreError> {
        let row = sqlx::query("SELECT * FROM policies WHERE tenant_id = $1 AND name = $2")
            .bind(tenant)
            .bind(name)
            .fetch_optional(&self.pool)
            .await?;
        Ok(row.as_ref().map(rows::policy).transpose()?)
    }

    async fn list_policies(&self, tenant: &str) -> Result<Vec<PolicyRecord>, StoreError> {
        let rows = sqlx::query("SELECT * FROM policies WHERE tenant_id = $1 ORDER BY name")
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
        let mut tx = self.pool.begin().await?;
        // Lock the policy row first, so the count and the delete see the same tokens as far
        // as updates to this policy go.
        sqlx::query("SELECT 1 FROM policies WHERE tenant_id = $1 AND name = $2 FOR UPDATE")
            .bind(tenant)
            .bind(name)
            .fetch_optional(&mut *tx)
            .await?;
        let users: i64 = sqlx::query_scalar(
            "SELECT COUNT(*) FROM tokens WHERE tenant_id = $1 AND policy_name = $2 AND revoked_at IS NULL",
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
        let done = sqlx::query("DELETE FROM policies WHERE tenant_id = $1 AND name = $2")
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
        let mut tx = self.pool.begin().await?;
        let mut replaced = Vec::with_capacity(definitions.len());
        for (name, spec) in definitions {
            // `xmax` is 0 on a freshly inserted row and set on one the upsert updated:
            // whether it replaced one, from the same statement.
            let was: bool = sqlx::query_scalar(
                "INSERT INTO capabilities (tenant_id, name, spec, created_at, updated_at) VALUES ($1, $2, $3, $4, $4) \
                 ON CONFLICT (tenant_id, name) DO UPDATE SET spec = excluded.spec, updated_at = excluded.updated_at \
                 RETURNING xmax <> 0",
            )
            .bind(tenant)
            .bind(name)
            .bind(spec)
            .bind(at)
            .fetch_one(&mut *tx)
            .await?;
            replaced.push(was);
        }
        tx.commit().await?;
        Ok(replaced)
    }

    async fn list_capabilities(&self, tenant: &str) -> Result<Vec<CapabilityRecord>, StoreError> {
        let rows = sqlx::query("SELECT * FROM capabilities WHERE tenant_id = $1 ORDER BY name")
            .bind(tenant)
            .fetch_all(&self.pool)
            .await?;
        Ok(rows
            .iter()
            .map(rows::capability)
            .collect::<Result<_, _>>()?)
    }

    async fn delete_capability(&self, tenant: &str, name: &str) -> Result<bool, StoreError> {
        let done = sqlx::query("DELETE FROM capabilities WHERE tenant_id = $1 AND name = $2")
            .bind(tenant)
            .bind(name)
            .execute(&self.pool)
            .await?;
        Ok(done.rows_affected() == 1)
    }

    async fn insert_approval(&self, a: &ApprovalRecord) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT INTO approvals (id, tenant_id, token_id, summary, state, reason, created_at, expires_at, \
             decided_at, decided_by) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)",
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
        let row = sqlx::query("SELECT * FROM approvals WHERE tenant_id = $1 AND id = $2")
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
        // Ids are random, so insertion order (`ord`) breaks ties within a second.
        let rows = sqlx::query(
            "SELECT * FROM approvals WHERE tenant_id = $1 AND ($2 OR state = 'pending') \
             ORDER BY created_at DESC, ord DESC",
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
            "UPDATE approvals SET state = $1, reason = $2, decided_by = $3, decided_at = $4 \
             WHERE tenant_id = $5 AND id = $6 AND state = 'pending'",
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
            sqlx::query_as("SELECT requests, tokens FROM usage WHERE token_id = $1 AND day = $2")
                .bind(token_id)
                .bind(day)
                .fetch_optional(&self.pool)
                .await?;
        let (requests, tokens) = row.unwrap_or_default();
        Ok((rows::to_u64(requests), rows::to_u64(tokens)))
    }

    async fn add_usage(&self, deltas: &[UsageDelta]) -> Result<Vec<UsageTotal>, StoreError> {
        // One statement for all, as several replicas flush every second; summed first, as an
        // upsert may not touch a row twice.
        let deltas = UsageDelta::summed(deltas);
        let ids: Vec<&str> = deltas.iter().map(|d| d.token_id.as_str()).collect();
        let days: Vec<i64> = deltas.iter().map(|d| d.day).collect();
        let requests: Vec<i64> = deltas.iter().map(|d| rows::to_i64(d.requests)).collect();
        let tokens: Vec<i64> = deltas.iter().map(|d| rows::to_i64(d.tokens)).collect();
        // Zero deltas only read: a day without usage gets no row.
        let found: Vec<(String, i64, i64, i64)> = sqlx::query_as(
            "WITH delta AS (SELECT * FROM UNNEST($1::TEXT[], $2::BIGINT[], $3::BIGINT[], $4::BIGINT[]) \
             AS d (token_id, day, requests, tokens)), \
             added AS (INSERT INTO usage (token_id, day, requests, tokens) \
             SELECT * FROM delta WHERE requests + tokens > 0 \
             ON CONFLICT (token_id, day) DO UPDATE SET requests = usage.requests + excluded.requests, \
             tokens = usage.tokens + excluded.tokens RETURNING token_id, day, requests, tokens) \
             SELECT * FROM added UNION ALL SELECT u.token_id, u.day, u.requests, u.tokens \
             FROM usage u JOIN delta d USING (token_id, day) WHERE d.requests + d.tokens = 0",
        )
        .bind(&ids)
        .bind(&days)
        .bind(&requests)
        .bind(&tokens)
        .fetch_all(&self.pool)
        .await?;
        let mut found: std::collections::HashMap<(String, i64), (i64, i64)> = found
            .into_iter()
            .map(|(id, day, r, t)| ((id, day), (r, t)))
            .collect();
        Ok(deltas
            .into_iter()
            .map(|d| {
                let (r, t) = found
                    .remove(&(d.token_id.clone(), d.day))
                    .unwrap_or_default();
                UsageTotal {
                    token_id: d.token_id,
                    day: d.day,
                    requests: rows::to_u64(r),
                    tokens: rows::to_u64(t),
                }
            })
            .collect())
    }

    async fn record_token_use(&self, uses: &[(String, i64)]) -> Result<(), StoreError> {
        let mut tx = self.pool.begin().await?;
        for (id, at) in uses {
            sqlx::query(
                "UPDATE tokens SET last_used_at = GREATEST(COALESCE(last_used_at, 0), $1) WHERE id = $2",
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
        let mut tx = self.pool.begin().await?;
        lock_audit(&mut tx).await?;
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
                     max_at_ms, last_hash, records) VALUES ($1, $2, $3, $4, $5, $6, $7)",
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
            "SELECT EXISTS (SELECT 1 FROM audit_batches WHERE tenant_id = $1 \
             AND max_at_ms >= $2 AND strpos(records, $3) > 0)",
        )
        .bind(&entry.tenant)
        .bind(entry.at_ms)
        .bind(&entry.record)
        .fetch_one(&self.pool)
        .await?)
    }

    async fn audit_records(&self, filter: &AuditFilter) -> Result<Vec<StoredRecord>, StoreError> {
        let order = if filter.newest { "DESC" } else { "ASC" };
        let beyond = if filter.newest { "<" } else { ">" };
        let sql = format!(
            "SELECT * FROM audit_batches WHERE tenant_id = $1 AND last_seq > $2 AND first_seq > $3 \
             AND max_at_ms >= $4 AND ($5::BIGINT IS NULL OR first_seq {beyond} $5) \
             ORDER BY first_seq {order} LIMIT $6"
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
            "SELECT * FROM audit_batches WHERE tenant_id = $1 AND first_seq > $2 \
             ORDER BY first_seq LIMIT $3",
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
        let mut tx = self.pool.begin().await?;
        lock_audit(&mut tx).await?;
        // Prune whole batches from the front of the chain only, up to the first one holding
        // a record from after the cut-off, so the rest still links to the checkpoint.
        let rows = sqlx::query(
            "SELECT * FROM audit_batches WHERE tenant_id = $1 \
             AND first_seq < COALESCE((SELECT MIN(first_seq) FROM audit_batches \
             WHERE tenant_id = $1 AND max_at_ms >= $2), 9223372036854775807) \
             ORDER BY first_seq LIMIT $3",
        )
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
        sqlx::query("DELETE FROM audit_batches WHERE tenant_id = $1 AND first_seq <= $2")
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
             JOIN tokens t ON t.id = u.token_id WHERE t.tenant_id = $1 AND u.day >= $2 \
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
        let mut tx = self
            .pool
            .begin_with("BEGIN ISOLATION LEVEL REPEATABLE READ, READ ONLY")
            .await?;
        // Streaming a long audit log to a slower destination may take longer than the
        // statement timeout that guards the request path.
        sqlx::query("SET LOCAL statement_timeout = 0")
            .execute(&mut *tx)
            .await?;
        let counts = transfer::export(&mut tx, "ord", sink).await?;
        tx.rollback().await?;
        Ok(counts)
    }

    async fn import(&self) -> Result<Box<dyn Import>, StoreError> {
        Ok(Box::new(transfer::Importer::new(self.pool.begin().await?)))
    }
}
