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
const DAY_MS: i64 = 86_400_000;

/// Delete every tenant's records older than `days` days; how many went.
pub async fn prune(store: &dyn Store, key: &ChainKey, days: u32) -> Result<u64, StoreError> {
    let before_ms = clock::now_ms() - i64::from(days) * DAY_MS;
    let mut pruned = 0;
    for tenant in store.audit_tenants().await? {
        pruned += store.prune_audit(&tenant, before_ms, key).await?;
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
