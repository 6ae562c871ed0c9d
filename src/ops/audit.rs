//! Reading and verifying the audit log, for the CLI and the admin API alike.

use serde::{Deserialize, Serialize};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

use super::{Ops, OpsError};
use crate::audit::{self, AuditRecord, ChainKey, StoredRecord, VerifyError};
use crate::clock;
use crate::store::{AuditFilter, DEFAULT_TENANT};

/// Most records one query returns.
pub const MAX_AUDIT_LIMIT: u32 = 10_000;

/// Which audit records to read (the admin API's query string, the CLI's flags).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct AuditQuery {
    /// Only this agent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub agent: Option<String>,
    /// Only this provider.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub provider: Option<String>,
    /// Only records since a duration ago (`1h`, `7d`) or an RFC 3339 time.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub since: Option<String>,
    /// Only this status (`404`) or class (`4xx`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<String>,
    /// At most this many.
    #[serde(default = "default_limit")]
    pub limit: u32,
    /// Only records after this sequence number (for paging and following).
    #[serde(default)]
    pub after: i64,
    /// The oldest matches rather than the newest (both are returned oldest first).
    #[serde(default)]
    pub oldest: bool,
}

fn default_limit() -> u32 {
    100
}

/// One stored record with its place in the chain.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct AuditView {
    /// Position in the tenant's chain.
    pub seq: i64,
    /// When the request arrived (RFC 3339, milliseconds).
    pub time: String,
    /// The record.
    #[serde(flatten)]
    pub record: AuditRecord,
    /// Hash of the record before.
    pub prev_hash: String,
    /// This record's hash.
    pub hash: String,
}

/// How many records of one tenant verified.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TenantVerified {
    /// The tenant.
    pub tenant: String,
    /// Records checked.
    pub records: u64,
}

/// The outcome of walking every chain.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct VerifyReport {
    /// Whether every chain is intact.
    pub intact: bool,
    /// The chains that verified (all of them when intact).
    pub tenants: Vec<TenantVerified>,
    /// The first problem found, naming the record.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub problem: Option<String>,
}

impl AuditQuery {
    fn filter(&self) -> Result<AuditFilter, OpsError> {
        if self.limit == 0 || self.limit > MAX_AUDIT_LIMIT {
            return Err(OpsError::Invalid(format!(
                "limit must be between 1 and {MAX_AUDIT_LIMIT}"
            )));
        }
        let status = match &self.status {
            Some(text) => Some(audit::status_range(text).ok_or_else(|| {
                OpsError::Invalid(format!(
                    "status `{text}`: use a status (404) or a class (4xx)"
                ))
            })?),
            None => None,
        };
        Ok(AuditFilter {
            tenant: DEFAULT_TENANT.to_owned(),
            after_seq: self.after,
            since_ms: self.since.as_deref().map(since_ms).transpose()?,
            agent: self.agent.clone(),
            provider: self.provider.clone(),
            status,
            limit: self.limit,
            newest: !self.oldest,
        })
    }
}

/// `1h` ago, or an RFC 3339 time, in Unix milliseconds.
fn since_ms(text: &str) -> Result<i64, OpsError> {
    if let Ok(ago) = humantime::parse_duration(text) {
        let ago = i64::try_from(ago.as_millis()).unwrap_or(i64::MAX);
        return Ok(clock::now_ms().saturating_sub(ago));
    }
    let at = OffsetDateTime::parse(text, &Rfc3339).map_err(|_| {
        OpsError::Invalid(format!(
            "since `{text}`: use a duration (1h) or an RFC 3339 time"
        ))
    })?;
    Ok(i64::try_from(at.unix_timestamp_nanos() / 1_000_000).unwrap_or(i64::MAX))
}

impl From<StoredRecord> for AuditView {
    fn from(row: StoredRecord) -> Self {
        AuditView {
            seq: row.seq,
            time: clock::format_ms(row.at_ms),
            // A row that no longer parses still shows where it is; `verify` names it.
            record: serde_json::from_str(&row.record).unwrap_or_default(),
            prev_hash: row.prev_hash,
            hash: row.hash,
        }
    }
}

impl Ops {
    /// Audit records matching `q`, oldest first.
    pub async fn audit(&self, q: &AuditQuery) -> Result<Vec<AuditView>, OpsError> {
        let rows = self.store.audit_records(&q.filter()?).await?;
        Ok(rows.into_iter().map(AuditView::from).collect())
    }

    /// Walk every chain with the key that signs their heads.
    pub async fn verify_audit(&self, key: &ChainKey) -> Result<VerifyReport, OpsError> {
        match audit::verify(self.store.as_ref(), key).await {
            Ok(tenants) => Ok(VerifyReport {
                intact: true,
                tenants: tenants
                    .into_iter()
                    .map(|(tenant, records)| TenantVerified { tenant, records })
                    .collect(),
                problem: None,
            }),
            Err(VerifyError::Chain(problem)) => Ok(VerifyReport {
                intact: false,
                tenants: Vec::new(),
                problem: Some(problem.to_string()),
            }),
            Err(VerifyError::Store(e)) => Err(OpsError::Store(e)),
        }
    }
}
