//! What one audit record costs the broker: building its stored form (JSON, redaction) and
//! appending it to the SQLite chain in batches like the writer's. Run: `cargo bench --bench audit`.

use std::sync::Arc;

use seks::audit::{AuditRecord, ChainKey, Decision};
use seks::store::{AuditEntry, Store};
use seks::vault::Key;

fn main() {
    divan::main();
}

fn record(i: u64) -> AuditRecord {
    AuditRecord {
        at_ms: 1_800_000_000_000 + i as i64,
        request_id: format!("req_{i:016}"),
        tenant: "default".into(),
        token_id: Some("tok_0123456789abcdef".into()),
        agent: Some("bench-agent".into()),
        secret: Some("openai-main".into()),
        provider: Some("openai".into()),
        method: "POST".into(),
        path: "/v1/chat/completions".into(),
        model: Some("gpt-4o-mini".into()),
        usage_tokens: Some(42),
        status: 200,
        decision: Decision::Allowed,
        bytes_in: 120,
        bytes_out: 560,
        upstream_us: Some(900),
        total_us: 1100,
        client: "127.0.0.1:50000".into(),
        ..AuditRecord::default()
    }
}

/// Serialising one record as the writer stores it.
#[divan::bench]
fn serialize_record() -> usize {
    serde_json::to_vec(divan::black_box(&record(1)))
        .unwrap()
        .len()
}

/// Appending batches of records to a fresh SQLite store; per record.
#[divan::bench(args = [100, 500], sample_count = 20)]
fn append_batch(bencher: divan::Bencher, batch: usize) {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let store: Arc<dyn Store> = runtime
        .block_on(
            seks::store::Location::parse(None, dir.path())
                .unwrap()
                .open(),
        )
        .unwrap();
    let key = ChainKey::new(Key::from_bytes([7; 32]));
    let mut n = 0;
    bencher
        .counter(divan::counter::ItemsCount::new(batch))
        .with_inputs(|| {
            (0..batch)
                .map(|_| {
                    n += 1;
                    let r = record(n);
                    AuditEntry {
                        tenant: r.tenant.clone(),
                        at_ms: r.at_ms,
                        record: serde_json::to_string(&r).unwrap(),
                    }
                })
                .collect::<Vec<_>>()
        })
        .bench_local_values(|entries| {
            runtime
                .block_on(store.append_audit(&entries, &key))
                .unwrap()
        });
}
