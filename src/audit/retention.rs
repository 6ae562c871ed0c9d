//! Retention: records older than `audit.retain_days` are deleted from the front of each
//! chain, leaving a signed checkpoint of the last deleted record for verification to start
//! from.

use std::sync::Arc;
use std::time::Duration;

use super::ChainKey;
use crate::clock;
use crate::store::{Store, StoreError};

/// How often old records are pruned.
const PRUNE_EVERY: Duration = Duration::from_secs(3600);
/// Batches deleted in one transaction: each is read and checked first, and an hour at full
/// load is some hundred thousand of them.
const PRUNE_AT_ONCE: u32 = 256;
const DAY_MS: i64 = 86_400_000;

/// Delete every tenant's records older than `days` days; how many went.
pub async fn prune(store: &dyn Store, key: &ChainKey, days: u32) -> Result<u64, StoreError> {
    let before_ms = clock::now_ms() - i64::from(days) * DAY_MS;
    prune_before(store, key, before_ms, PRUNE_AT_ONCE).await
}

/// Delete every tenant's records before `before_ms`, `at_once` batches per transaction.
pub(super) async fn prune_before(
    store: &dyn Store,
    key: &ChainKey,
    before_ms: i64,
    at_once: u32,
) -> Result<u64, StoreError> {
    let mut pruned = 0;
    for tenant in store.audit_tenants().await? {
        loop {
            match store.prune_audit(&tenant, before_ms, at_once, key).await? {
                0 => break,
                n => pruned += n,
            }
        }
    }
    Ok(pruned)
}

/// Prune every hour until the task is dropped.
pub async fn run_retention(store: Arc<dyn Store>, key: ChainKey, days: u32) {
    let mut tick = tokio::time::interval(PRUNE_EVERY);
    loop {
        tick.tick().await;
        match prune(store.as_ref(), &key, days).await {
            Ok(0) => {}
            Ok(n) => tracing::info!(records = n, days, "pruned old audit records"),
            Err(e) => tracing::warn!(error = %e, "could not prune old audit records; will retry"),
        }
    }
}
