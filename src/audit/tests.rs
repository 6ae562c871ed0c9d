use super::*;
use crate::vault::Key;

fn key() -> ChainKey {
    ChainKey::new(Key::from_bytes([7; 32]))
}

/// A chain of `n` records for tenant `t`, and its signed head.
fn chain(n: i64) -> (Vec<StoredRecord>, SignedHead) {
    let mut rows = Vec::new();
    let mut prev = GENESIS.to_owned();
    for seq in 1..=n {
        let record = AuditRecord {
            at_ms: seq * 1000,
            request_id: format!("req_{seq}"),
            tenant: "t".into(),
            agent: Some("bot".into()),
            status: 200,
            ..AuditRecord::default()
        };
        let json = serde_json::to_string(&record).unwrap();
        let hash = link(&prev, "t", seq, &json);
        rows.push(StoredRecord {
            tenant: "t".into(),
            seq,
            at_ms: record.at_ms,
            index_ok: true,
            record: json,
            prev_hash: prev,
            hash: hash.clone(),
        });
        prev = hash;
    }
    let head = key().sign(HeadRole::Newest, "t", Head { seq: n, hash: prev });
    (rows, head)
}

fn walk(rows: &[StoredRecord], head: &SignedHead) -> Result<u64, ChainError> {
    let mut verifier = Verifier::new(&key(), "t", None, Some(head))?;
    for row in rows {
        verifier.next(row)?;
    }
    verifier.finish()
}

#[test]
fn an_untouched_chain_verifies() {
    let (rows, head) = chain(5);
    assert_eq!(walk(&rows, &head), Ok(5));
}

#[test]
fn altering_a_record_or_its_index_names_it() {
    let (mut rows, head) = chain(5);
    rows[2].record = rows[2].record.replace("\"status\":200", "\"status\":201");
    assert!(matches!(
        walk(&rows, &head),
        Err(ChainError::Altered { seq: 3, .. })
    ));
    let (mut rows, head) = chain(5);
    rows[1].index_ok = false;
    assert!(matches!(
        walk(&rows, &head),
        Err(ChainError::Altered { seq: 2, .. })
    ));
    let (mut rows, head) = chain(5);
    rows[3].at_ms += 1;
    assert!(matches!(
        walk(&rows, &head),
        Err(ChainError::Altered { seq: 4, .. })
    ));
}

#[test]
fn removing_records_names_them_even_at_the_tail() {
    let (mut rows, head) = chain(5);
    rows.remove(1);
    assert!(matches!(
        walk(&rows, &head),
        Err(ChainError::Removed { from: 2, to: 2, .. })
    ));
    let (mut rows, head) = chain(5);
    rows.truncate(3);
    assert!(matches!(
        walk(&rows, &head),
        Err(ChainError::Removed { from: 4, to: 5, .. })
    ));
}

#[test]
fn swapping_records_or_rewriting_the_chain_is_caught() {
    let (mut rows, head) = chain(5);
    // Swap the contents of 2 and 3, keeping their positions.
    let (a, b) = (rows[1].clone(), rows[2].clone());
    rows[1] = StoredRecord { seq: 2, ..b };
    rows[2] = StoredRecord { seq: 3, ..a };
    assert!(matches!(
        walk(&rows, &head),
        Err(ChainError::Altered { seq: 2, .. })
    ));

    // Rewriting everything from record 2 with fresh hashes still misses the signed head.
    let (mut rows, head) = chain(5);
    for i in 1..rows.len() {
        rows[i].record = rows[i].record.replace("req_", "REQ_");
        rows[i].prev_hash = rows[i - 1].hash.clone();
        rows[i].hash = link(&rows[i].prev_hash, "t", rows[i].seq, &rows[i].record);
    }
    assert!(matches!(walk(&rows, &head), Err(ChainError::Head { .. })));
}

#[test]
fn a_forged_head_or_checkpoint_is_refused() {
    let (rows, mut head) = chain(3);
    head.head.seq = 2;
    assert!(matches!(walk(&rows, &head), Err(ChainError::Head { .. })));
}

#[test]
fn status_filters_read_classes_and_single_statuses() {
    assert_eq!(status_range("4xx"), Some((400, 499)));
    assert_eq!(status_range("404"), Some((404, 404)));
    assert_eq!(status_range("9xx"), None);
    assert_eq!(status_range("abc"), None);
}

#[test]
fn a_newest_head_cannot_stand_in_for_a_checkpoint() {
    let (_, head) = chain(3);
    let forged = Verifier::new(&key(), "t", Some(&head), Some(&head));
    assert!(matches!(forged, Err(ChainError::Head { .. })));
}

#[test]
fn request_ids_share_a_process_prefix_and_never_repeat() {
    let (a, b) = (new_request_id(), new_request_id());
    assert_ne!(a, b);
    for id in [&a, &b] {
        assert!(id.starts_with("req_") && id.len() == 20, "{id}");
        assert!(id[4..].bytes().all(|c| c.is_ascii_alphanumeric()), "{id}");
    }
    assert_eq!(a[..12], b[..12]);
}
