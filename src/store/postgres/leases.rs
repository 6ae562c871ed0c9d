//! Shared limits on PostgreSQL: the lease functions of migration 0003, and the signature
//! claims of 0004.

use std::time::Duration;

use async_trait::async_trait;

use super::PgStore;
use crate::store::{Leases, StoreError};

fn millis(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX).max(1)
}

fn micros(d: Duration) -> i64 {
    i64::try_from(d.as_micros()).unwrap_or(i64::MAX)
}

fn count(n: i64) -> u32 {
    u32::try_from(n.max(0)).unwrap_or(u32::MAX)
}

#[async_trait]
impl Leases for PgStore {
    async fn lease_rate(
        &self,
        key: &str,
        want: u32,
        interval: Duration,
        burst: Duration,
    ) -> Result<u32, StoreError> {
        let granted: i64 = sqlx::query_scalar("SELECT lease_rate($1, $2, $3, $4)")
            .bind(key)
            .bind(i64::from(want))
            .bind(micros(interval).max(1))
            .bind(micros(burst))
            .fetch_one(&self.pool)
            .await?;
        Ok(count(granted))
    }

    async fn lease_slots(
        &self,
        key: &str,
        replica: &str,
        want: u32,
        max: u32,
        ttl: Duration,
    ) -> Result<u32, StoreError> {
        let held: i64 = sqlx::query_scalar("SELECT lease_slots($1, $2, $3, $4, $5)")
            .bind(key)
            .bind(replica)
            .bind(i64::from(want))
            .bind(i64::from(max))
            .bind(millis(ttl))
            .fetch_one(&self.pool)
            .await?;
        Ok(count(held))
    }

    async fn renew_slots(
        &self,
        replica: &str,
        held: &[(String, u32)],
        ttl: Duration,
    ) -> Result<Vec<String>, StoreError> {
        let keys: Vec<&str> = held.iter().map(|(key, _)| key.as_str()).collect();
        let slots: Vec<i64> = held.iter().map(|(_, n)| i64::from(*n)).collect();
        // A lease that already ran out stays out: the slots may be someone else's now.
        Ok(sqlx::query_scalar(
            "WITH held AS (SELECT * FROM UNNEST($2::TEXT[], $3::BIGINT[]) AS h (key, slots)), \
             released AS (DELETE FROM slot_leases s USING held h \
             WHERE s.replica = $1 AND s.key = h.key AND h.slots = 0) \
             UPDATE slot_leases s SET slots = h.slots, \
             expires_ms = (extract(epoch FROM now()) * 1000)::BIGINT + $4 FROM held h \
             WHERE s.replica = $1 AND s.key = h.key AND h.slots > 0 \
             AND s.expires_ms > (extract(epoch FROM now()) * 1000)::BIGINT RETURNING s.key",
        )
        .bind(replica)
        .bind(&keys)
        .bind(&slots)
        .bind(millis(ttl))
        .fetch_all(&self.pool)
        .await?)
    }

    async fn claim_signature(
        &self,
        signature: &[u8; 32],
        lapse: Duration,
    ) -> Result<Duration, StoreError> {
        let age_ms: i64 = sqlx::query_scalar("SELECT claim_signature($1, $2)")
            .bind(signature.as_slice())
            .bind(millis(lapse))
            .fetch_one(&self.pool)
            .await?;
        Ok(Duration::from_millis(u64::try_from(age_ms).unwrap_or(0)))
    }
}
