//! How the audit log is laid out in a database: one row per written batch, holding its
//! chained records as lines, plus index columns for queries. One insert per batch instead of
//! one per record is what keeps the log cheap on the request path.
//!
//! A line is `seq \t prev_hash \t hash \t record JSON`; JSON escapes tabs and newlines, so
//! they never occur inside a record.

use std::borrow::Cow;

use serde::Deserialize;

use super::{AuditEntry, AuditFilter, StoreError};
use crate::audit::{self, AuditSigner, Head, StoredRecord};

/// Most records in one stored batch (a bound on what one query step reads).
pub const MAX_LINES: usize = 1024;

/// One stored batch.
#[derive(Debug, Clone)]
pub struct Batch {
    /// Tenant.
    pub tenant: String,
    /// Sequence number of its first record.
    pub first_seq: i64,
    /// Sequence number of its last record.
    pub last_seq: i64,
    /// Earliest arrival time among its records (Unix ms).
    pub min_at_ms: i64,
    /// Latest arrival time among its records (Unix ms).
    pub max_at_ms: i64,
    /// Hash of its last record: the chain's head after it.
    pub last_hash: String,
    /// Its records, one line each.
    pub records: String,
}

/// Chain `entries` (all of `tenant`) after `head`, which moves to the last of them, into
/// batches ready to insert.
pub fn chain(tenant: &str, head: &mut Head, entries: &[&AuditEntry]) -> Vec<Batch> {
    entries
        .chunks(MAX_LINES)
        .map(|chunk| {
            let mut records =
                String::with_capacity(chunk.iter().map(|e| e.record.len() + 150).sum());
            let first_seq = head.seq + 1;
            for (i, entry) in chunk.iter().enumerate() {
                if i > 0 {
                    records.push('\n');
                }
                let prev_hash = head.hash.clone();
                audit::extend(head, tenant, &entry.record);
                for part in [&head.seq.to_string(), &prev_hash, &head.hash, &entry.record] {
                    records.push_str(part);
                    records.push('\t');
                }
                records.pop();
            }
            Batch {
                tenant: tenant.to_owned(),
                first_seq,
                last_seq: head.seq,
                min_at_ms: chunk.iter().map(|e| e.at_ms).min().unwrap_or_default(),
                max_at_ms: chunk.iter().map(|e| e.at_ms).max().unwrap_or_default(),
                last_hash: head.hash.clone(),
                records,
            }
        })
        .collect()
}

/// `entries` grouped by tenant, each group in its original order.
pub fn by_tenant(entries: &[AuditEntry]) -> Vec<(&str, Vec<&AuditEntry>)> {
    let mut tenants: Vec<(&str, Vec<&AuditEntry>)> = Vec::new();
    for entry in entries {
        match tenants.iter_mut().find(|(t, _)| *t == entry.tenant) {
            Some((_, list)) => list.push(entry),
            None => tenants.push((&entry.tenant, vec![entry])),
        }
    }
    tenants
}

/// Where a tenant's chain continues when it has no stored batch: the head of its pruned
/// history (the stored checkpoint), or genesis.
pub fn head_after_checkpoint(checkpoint: Option<&str>) -> Head {
    checkpoint
        .and_then(|c| serde_json::from_str::<audit::SignedHead>(c).ok())
        .map_or_else(Head::genesis, |c| c.head)
}

/// The head a stored newest head of `tenant` names, if `sign`'s key signed it: a process
/// holding another key (one a rotation replaced) must not sign anything next to it.
pub fn signed_newest(
    sign: &dyn AuditSigner,
    tenant: &str,
    stored: &str,
) -> Result<Head, StoreError> {
    sign.signed_newest(tenant, stored)
        .ok_or_else(|| StoreError::AuditTampered {
            tenant: tenant.to_owned(),
            why: "its signed head is forged, or signed with another master key",
        })
}

/// The tenants to sign after appending to `tenant`'s chain, given the stored head the
/// append continues from (`tail`), the stored signed newest head and the stored signed list
/// of tenants; an error if they disagree.
///
/// The next append continues from the stored tail and signs a new head over it, so a tail
/// cut or made up by someone without the master key would otherwise be vouched for by the
/// broker itself, and `seks audit verify` could no longer see it. The tail must be exactly
/// the signed head; a tenant without one must be new: no records, and not listed.
pub fn checked_tenants(
    sign: &dyn AuditSigner,
    tenant: &str,
    tail: &Head,
    newest: Option<&str>,
    listed: Option<&str>,
) -> Result<Vec<String>, StoreError> {
    let tampered = |why| StoreError::AuditTampered {
        tenant: tenant.to_owned(),
        why,
    };
    let mut tenants = match listed {
        Some(listed) => sign.signed_tenants(listed).ok_or_else(|| {
            tampered("the signed list of tenants is forged, or signed with another master key")
        })?,
        None => Vec::new(),
    };
    match newest {
        Some(newest) => {
            let signed = signed_newest(sign, tenant, newest)?;
            if signed != *tail {
                return Err(tampered(
                    "its newest records are not the ones its signed head names",
                ));
            }
            if !tenants.iter().any(|t| t == tenant) {
                return Err(tampered("it is missing from the signed list of tenants"));
            }
        }
        None => {
            if tail.seq != 0 || tenants.iter().any(|t| t == tenant) {
                return Err(tampered("its signed head is missing"));
            }
            tenants.push(tenant.to_owned());
        }
    }
    Ok(tenants)
}

/// The fields queries select by. Borrowed where the JSON allows, owned where it escapes
/// (`"`, `\`), since a `&str` can't hold an unescaped copy and would fail the whole record.
#[derive(Deserialize)]
struct Facets<'a> {
    at_ms: i64,
    #[serde(borrow, default)]
    agent: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    provider: Option<Cow<'a, str>>,
    #[serde(default)]
    status: u16,
}

/// The records of a stored batch, each marked with whether the batch's index agrees with it.
pub fn records(batch: &Batch) -> Vec<StoredRecord> {
    let lines: Vec<&str> = batch.records.split('\n').collect();
    let mut out = Vec::with_capacity(lines.len());
    let mut expected_seq = batch.first_seq;
    for (i, line) in lines.iter().enumerate() {
        let mut parts = line.splitn(4, '\t');
        let (seq, prev_hash, hash, record) = (
            parts.next().and_then(|s| s.parse::<i64>().ok()),
            parts.next().unwrap_or_default(),
            parts.next().unwrap_or_default(),
            parts.next().unwrap_or_default(),
        );
        // A line too mangled to read still takes its place, and fails verification there.
        let seq = seq.unwrap_or(expected_seq);
        expected_seq = seq + 1;
        let at_ms = serde_json::from_str::<Facets<'_>>(record).map_or(i64::MIN, |f| f.at_ms);
        let is_last = i + 1 == lines.len();
        let index_ok = (i > 0 || seq == batch.first_seq)
            && (batch.first_seq..=batch.last_seq).contains(&seq)
            && (batch.min_at_ms..=batch.max_at_ms).contains(&at_ms)
            && (!is_last || (seq == batch.last_seq && hash == batch.last_hash));
        out.push(StoredRecord {
            tenant: batch.tenant.clone(),
            seq,
            at_ms,
            index_ok,
            record: record.to_owned(),
            prev_hash: prev_hash.to_owned(),
            hash: hash.to_owned(),
        });
    }
    out
}

/// The head after `batches`, the front of `tenant`'s chain about to be pruned, and how many
/// records they hold; an error unless every record is intact and older than `before_ms`.
///
/// Pruning signs a checkpoint over what it deletes, so trusting the index columns would let
/// someone who backdated them have the broker delete recent records and vouch for the gap.
pub fn pruned_head(
    tenant: &str,
    batches: &[Batch],
    before_ms: i64,
) -> Result<Option<(Head, u64)>, StoreError> {
    let mut pruned = 0;
    for record in batches.iter().flat_map(records) {
        if !record.index_ok
            || record.at_ms >= before_ms
            || audit::link(&record.prev_hash, tenant, record.seq, &record.record) != record.hash
        {
            return Err(StoreError::AuditTampered {
                tenant: tenant.to_owned(),
                why: "records due for pruning are not what their index says",
            });
        }
        pruned += 1;
    }
    Ok(batches.last().map(|last| {
        let head = Head {
            seq: last.last_seq,
            hash: last.last_hash.clone(),
        };
        (head, pruned)
    }))
}

/// Whether a record passes `filter`'s record-level conditions (sequence, time, agent,
/// provider, status).
pub fn matches(filter: &AuditFilter, record: &StoredRecord) -> bool {
    if record.seq <= filter.after_seq || filter.since_ms.is_some_and(|since| record.at_ms < since) {
        return false;
    }
    if filter.agent.is_none() && filter.provider.is_none() && filter.status.is_none() {
        return true;
    }
    let Ok(facets) = serde_json::from_str::<Facets<'_>>(&record.record) else {
        return false;
    };
    filter
        .agent
        .as_deref()
        .is_none_or(|a| facets.agent.as_deref() == Some(a))
        && filter
            .provider
            .as_deref()
            .is_none_or(|p| facets.provider.as_deref() == Some(p))
        && filter
            .status
            .is_none_or(|(low, high)| (low..=high).contains(&facets.status))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(at_ms: i64, agent: &str) -> AuditEntry {
        AuditEntry {
            tenant: "t".into(),
            at_ms,
            record: format!(r#"{{"at_ms":{at_ms},"tenant":"t","agent":"{agent}","status":200}}"#),
        }
    }

    #[test]
    fn batches_round_trip_and_their_index_is_checked() {
        let entries = [entry(5, "a"), entry(3, "b"), entry(9, "a")];
        let refs: Vec<&AuditEntry> = entries.iter().collect();
        let mut head = Head::genesis();
        let batches = chain("t", &mut head, &refs);
        assert_eq!(batches.len(), 1);
        let batch = &batches[0];
        assert_eq!(
            (
                batch.first_seq,
                batch.last_seq,
                batch.min_at_ms,
                batch.max_at_ms
            ),
            (1, 3, 3, 9)
        );
        assert_eq!(head.seq, 3);
        let rows = records(batch);
        assert_eq!(rows.len(), 3);
        assert!(rows.iter().all(|r| r.index_ok));
        assert_eq!(rows[1].prev_hash, rows[0].hash);
        assert_eq!(rows[2].hash, head.hash);

        let mut hidden = batch.clone();
        hidden.max_at_ms = 8;
        assert!(!records(&hidden)[2].index_ok);
        let mut moved = batch.clone();
        moved.first_seq = 0;
        assert!(!records(&moved)[0].index_ok);

        let filter = AuditFilter {
            tenant: "t".into(),
            after_seq: 1,
            since_ms: None,
            agent: Some("a".into()),
            provider: None,
            status: Some((200, 299)),
            limit: 10,
            newest: false,
        };
        let picked: Vec<i64> = rows
            .iter()
            .filter(|r| matches(&filter, r))
            .map(|r| r.seq)
            .collect();
        assert_eq!(picked, [3]);
    }
}
