//! The keyring turns an agent token into its token record and the real credential,
//! keeping both in memory so a warm request never touches the store.
//!
//! Running brokers learn about revocations, rotations and removals made by other processes
//! (the CLI, other replicas) by polling the store's revision counter; any change drops
//! the caches. If the store stops answering, cached entries go stale after
//! [`STALE_AFTER`] and every request goes to the store, which then refuses: fail closed.

use std::collections::HashMap;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError, RwLock};
use std::time::{Duration, Instant};

use secrecy::SecretString;

use crate::store::{Store, StoreError, TokenRecord};
use crate::tokens::{ParsedToken, TokenHash};
use crate::vault::{SecretIdentity, Vault, VaultError};

/// How often the store's revision counter is polled.
pub const SYNC_INTERVAL: Duration = Duration::from_millis(250);
/// Cached entries are not trusted once the last successful sync is older than this, so a
/// revocation is honoured within a second even when polls fail or stall.
pub const STALE_AFTER: Duration = Duration::from_millis(750);
/// Longest wait for any store call made on behalf of a request or a sync.
pub const STORE_TIMEOUT: Duration = Duration::from_secs(2);
/// How often last-use times are written back to the store.
const USE_FLUSH_EVERY: u32 = 20;
/// Cache entries kept at most; past this the cache starts over.
const MAX_ENTRIES: usize = 100_000;

/// Why a token or credential could not be resolved.
#[derive(Debug, thiserror::Error)]
pub enum KeyringError {
    /// No token with this hash exists.
    #[error("unknown token")]
    UnknownToken,
    /// The store could not answer.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The store did not answer within [`STORE_TIMEOUT`].
    #[error("the store did not answer within {STORE_TIMEOUT:?}")]
    Timeout,
    /// The secret's provider is not the token's: the store was tampered with.
    #[error("secret {0} does not belong to the token's provider")]
    ProviderMismatch(String),
    /// The token's secret is gone.
    #[error("secret {0} not found")]
    SecretMissing(String),
    /// The secret could not be decrypted.
    #[error(transparent)]
    Vault(#[from] VaultError),
}

#[derive(Default)]
struct Cache {
    /// Bumped on every clear, so a lookup that raced a clear doesn't re-insert stale data.
    generation: u64,
    tokens: HashMap<TokenHash, Arc<TokenRecord>>,
    credentials: HashMap<String, Arc<SecretString>>,
}

/// Token and credential resolution with caching and store synchronisation.
pub struct Keyring {
    store: Arc<dyn Store>,
    vault: Vault,
    cache: RwLock<Cache>,
    revision: AtomicI64,
    started: Instant,
    /// Milliseconds after `started` of the last successful sync, plus one (0: never).
    last_sync_ms: AtomicU64,
    uses: Mutex<HashMap<String, i64>>,
}

impl Keyring {
    /// A keyring over `store`, decrypting with `vault`; call [`Keyring::sync`] before serving.
    pub fn new(store: Arc<dyn Store>, vault: Vault) -> Self {
        Keyring {
            store,
            vault,
            cache: RwLock::default(),
            revision: AtomicI64::new(i64::MIN),
            started: Instant::now(),
            last_sync_ms: AtomicU64::new(0),
            uses: Mutex::default(),
        }
    }

    /// Resolve a well-formed token to its record (revoked and expired ones included: policy decides).
    pub async fn token(&self, parsed: &ParsedToken<'_>) -> Result<Arc<TokenRecord>, KeyringError> {
        let hash = parsed.hash();
        let fresh = self.is_fresh();
        let generation = {
            let cache = self.read_cache();
            if fresh && let Some(hit) = cache.tokens.get(&hash) {
                return Ok(Arc::clone(hit));
            }
            cache.generation
        };
        let record = Arc::new(
            self.store
                .token_by_hash(&hash)
                .await?
                .ok_or(KeyringError::UnknownToken)?,
        );
        self.insert(generation, |cache| {
            cache.tokens.insert(hash, Arc::clone(&record));
        });
        Ok(record)
    }

    /// The decrypted credential for a token's secret.
    pub async fn credential(&self, token: &TokenRecord) -> Result<Arc<SecretString>, KeyringError> {
        let fresh = self.is_fresh();
        let generation = {
            let cache = self.read_cache();
            if fresh && let Some(hit) = cache.credentials.get(&token.secret_id) {
                return Ok(Arc::clone(hit));
            }
            cache.generation
        };
        let secret = timed(self.store.secret_by_id(&token.tenant, &token.secret_id))
            .await?
            .ok_or_else(|| KeyringError::SecretMissing(token.secret_id.clone()))?;
        if secret.provider != token.provider {
            return Err(KeyringError::ProviderMismatch(secret.id));
        }
        // The provider is bound into the ciphertext, so a relabelled row fails to open.
        let id = SecretIdentity {
            tenant: &secret.tenant,
            secret_id: &secret.id,
            version: secret.version,
            provider: &secret.provider,
        };
        let value = Arc::new(self.vault.open(id, &secret.sealed)?);
        self.insert(generation, |cache| {
            cache
                .credentials
                .insert(secret.id.clone(), Arc::clone(&value));
        });
        Ok(value)
    }

    /// Note that a token was used at Unix time `now`; written back on a later sync.
    pub fn note_use(&self, token_id: &str, now: i64) {
        let mut uses = self.uses.lock().unwrap_or_else(PoisonError::into_inner);
        match uses.get_mut(token_id) {
            Some(at) => *at = (*at).max(now),
            None => {
                uses.insert(token_id.to_owned(), now);
            }
        }
    }

    /// Poll the store's revision and drop the caches if anything changed.
    pub async fn sync(&self) -> Result<(), KeyringError> {
        let revision = timed(self.store.revision()).await?;
        if self.revision.swap(revision, Ordering::AcqRel) != revision {
            let mut cache = self.cache.write().unwrap_or_else(PoisonError::into_inner);
            cache.generation += 1;
            cache.tokens.clear();
            cache.credentials.clear();
        }
        self.last_sync_ms
            .store(self.millis_since_start() + 1, Ordering::Release);
        Ok(())
    }

    /// Write buffered last-use times to the store.
    pub async fn flush_uses(&self) -> Result<(), StoreError> {
        let uses: Vec<(String, i64)> =
            std::mem::take(&mut *self.uses.lock().unwrap_or_else(PoisonError::into_inner))
                .into_iter()
                .collect();
        if uses.is_empty() {
            return Ok(());
        }
        self.store.record_token_use(&uses).await
    }

    /// Keep the caches in step with the store until the task is dropped.
    pub async fn run_sync_loop(self: Arc<Self>) {
        let mut tick = tokio::time::interval(SYNC_INTERVAL);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        for round in 1u32.. {
            tick.tick().await;
            if let Err(e) = self.sync().await {
                tracing::warn!(error = %e, "store sync failed; cached tokens go stale in {STALE_AFTER:?}");
            }
            if round % USE_FLUSH_EVERY == 0
                && let Err(e) = self.flush_uses().await
            {
                tracing::warn!(error = %e, "could not record token use times");
            }
        }
    }

    /// Whether cached entries may be trusted: the last sync is recent enough.
    fn is_fresh(&self) -> bool {
        let last = self.last_sync_ms.load(Ordering::Acquire);
        last != 0
            && (self.millis_since_start() + 1).saturating_sub(last) < STALE_AFTER.as_millis() as u64
    }

    fn millis_since_start(&self) -> u64 {
        u64::try_from(self.started.elapsed().as_millis()).unwrap_or(u64::MAX - 1)
    }

    fn read_cache(&self) -> std::sync::RwLockReadGuard<'_, Cache> {
        self.cache.read().unwrap_or_else(PoisonError::into_inner)
    }

    fn insert(&self, generation: u64, put: impl FnOnce(&mut Cache)) {
        let mut cache = self.cache.write().unwrap_or_else(PoisonError::into_inner);
        if cache.generation != generation {
            return;
        }
        if cache.tokens.len() + cache.credentials.len() >= MAX_ENTRIES {
            cache.generation += 1;
            cache.tokens.clear();
            cache.credentials.clear();
        }
        put(&mut cache);
    }
}

/// Bound a store call by [`STORE_TIMEOUT`], so a locked or unreachable store fails fast.
async fn timed<T>(call: impl Future<Output = Result<T, StoreError>>) -> Result<T, KeyringError> {
    tokio::time::timeout(STORE_TIMEOUT, call)
        .await
        .map_err(|_| KeyringError::Timeout)?
        .map_err(KeyringError::Store)
}
