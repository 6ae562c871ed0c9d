//! Getting records into the store without slowing requests: a bounded queue and one writer
//! task that appends whatever has queued up in one transaction (group commit).
//!
//! A crash loses at most what is queued plus the batch being written: a batch gathers
//! records for 20 ms, then commits, normally within milliseconds. In strict mode a response
//! ends only once its record is committed, and batches don't wait.
//!
//! The queue's bound (`[audit] queue`) counts every record not yet committed, the batch
//! being written included. A request is admitted only with room reserved for its record, so
//! no admitted request's record is ever dropped: when the queue is full, requests are
//! refused instead. While writes fail, requests are refused too, except in batched mode
//! during the store's outage grace, when their records wait in the queue for the store.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use serde::Deserialize;
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc, oneshot, watch};

use super::{AuditRecord, ChainKey};
use crate::config::AuditConfig;
use crate::metrics;
use crate::scrub::Redactor;
use crate::store::{AuditEntry, Store};

/// Most records written in one transaction.
const MAX_BATCH: usize = 4096;
/// How long a batch gathers records in batched mode (part of what a crash can lose).
const BATCH_LINGER: Duration = Duration::from_millis(20);
/// Longest pause between attempts while the store refuses writes.
const MAX_BACKOFF: Duration = Duration::from_secs(1);
/// Attempts left for the last batch once the broker is shutting down.
const ATTEMPTS_AT_SHUTDOWN: u32 = 3;

/// When a response may end relative to its record being written.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Durability {
    /// Records are queued and written in batches; a crash can lose the last few.
    #[default]
    Batched,
    /// A response ends only after its record is committed.
    Strict,
}

/// The audit log can't take records: requests are refused until it can.
#[derive(Debug, Clone, thiserror::Error)]
#[error("the audit log can't be written ({0}), so requests are refused until it can")]
pub struct AuditUnavailable(String);

/// Room in the queue for one record, held from admission until the record is committed.
pub struct Slot {
    /// Given back to the queue when dropped.
    _room: OwnedSemaphorePermit,
}

/// A record on its way to the store.
struct Queued {
    record: AuditRecord,
    /// Told whether the record was committed (strict mode).
    ack: Option<oneshot::Sender<bool>>,
    /// Its room in the queue, given back once it is committed.
    slot: Slot,
}

/// Why requests are refused while the store fails the writer's writes. Agents are told this,
/// never the store's own error (file paths, host names, SQL): that goes to the log.
const WRITES_FAIL: &str = "the store fails its writes";

/// Whether writing works, shared between the writer and the request path.
#[derive(Default)]
struct Health {
    failing: AtomicBool,
    /// Since when, while failing.
    failing_since: Mutex<Option<Instant>>,
    lost: AtomicU64,
}

impl Health {
    fn fail(&self) {
        let mut since = self
            .failing_since
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        since.get_or_insert_with(Instant::now);
        self.failing.store(true, Ordering::Release);
    }

    fn recover(&self) {
        if self.failing.swap(false, Ordering::AcqRel) {
            *self
                .failing_since
                .lock()
                .unwrap_or_else(PoisonError::into_inner) = None;
            tracing::info!("the audit log is being written again");
        }
    }

    /// How long writes have been failing; `None` while they work.
    fn failing_for(&self) -> Option<Duration> {
        if !self.failing.load(Ordering::Acquire) {
            return None;
        }
        let since = self
            .failing_since
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        since.map(|since| since.elapsed())
    }
}

/// The request path's handle on the audit log.
pub struct Auditor {
    queue: mpsc::UnboundedSender<Queued>,
    /// One permit per record the queue may hold: what bounds it.
    room: Arc<Semaphore>,
    /// The queue's bound.
    capacity: usize,
    health: Arc<Health>,
    durability: Durability,
    /// Keep serving when the log can't be written (records are lost meanwhile).
    fail_open: bool,
    /// Records are kept at all (off only for measuring the log's cost).
    enabled: bool,
    /// How long batched mode keeps admitting requests while writes fail.
    outage_grace: Duration,
}

/// The writer's side of the queue; run it with [`run_writer`].
pub struct Writer {
    queue: mpsc::UnboundedReceiver<Queued>,
    room: Arc<Semaphore>,
    capacity: usize,
    health: Arc<Health>,
    store: Arc<dyn Store>,
    key: ChainKey,
    redactor: Arc<Redactor>,
    /// How long a batch may gather records before it is written.
    linger: Duration,
}

impl Auditor {
    /// An auditor configured by `config`, and the writer that empties its queue.
    pub fn new(
        store: Arc<dyn Store>,
        key: ChainKey,
        redactor: Arc<Redactor>,
        config: &AuditConfig,
    ) -> (Auditor, Writer) {
        // Every queued record holds a permit of `room`, which bounds the channel.
        let (tx, rx) = mpsc::unbounded_channel();
        let capacity = config.queue.clamp(1, Semaphore::MAX_PERMITS);
        let room = Arc::new(Semaphore::new(capacity));
        let health = Arc::new(Health::default());
        let auditor = Auditor {
            queue: tx,
            room: room.clone(),
            capacity,
            health: health.clone(),
            durability: config.durability,
            fail_open: config.fail_open,
            enabled: config.enabled,
            outage_grace: Duration::ZERO,
        };
        let writer = Writer {
            queue: rx,
            room,
            capacity,
            health,
            store,
            key,
            redactor,
            // Strict mode makes responses wait for their records; they don't wait longer.
            linger: match config.durability {
                Durability::Batched => BATCH_LINGER,
                Durability::Strict => Duration::ZERO,
            },
        };
        (auditor, writer)
    }

    /// Admit requests while writes fail, in batched mode, for up to `grace` (the store's
    /// `outage_grace`): their records wait in the queue.
    pub fn with_outage_grace(mut self, grace: Duration) -> Self {
        self.outage_grace = grace;
        self
    }

    /// Whether responses wait for their records.
    pub fn is_strict(&self) -> bool {
        self.enabled && self.durability == Durability::Strict
    }

    /// Whether a new request may be served, with room for its record: refused while the
    /// log can't be written (in batched mode, once that has lasted the outage grace) or its
    /// queue is full, unless configured to fail open.
    pub fn admit(&self) -> Result<Option<Slot>, AuditUnavailable> {
        if !self.enabled {
            return Ok(None);
        }
        if !self.fail_open
            && let Some(failing_for) = self.health.failing_for()
            && (self.durability == Durability::Strict || failing_for >= self.outage_grace)
        {
            return Err(AuditUnavailable(WRITES_FAIL.to_owned()));
        }
        match self.reserve() {
            Some(slot) => Ok(Some(slot)),
            None if self.fail_open => Ok(None),
            None => Err(self.full()),
        }
    }

    /// Whether records are being written and can be queued (for readiness, whatever
    /// `fail_open` says).
    pub fn healthy(&self) -> Result<(), AuditUnavailable> {
        if self.health.failing_for().is_some() {
            return Err(AuditUnavailable(WRITES_FAIL.to_owned()));
        }
        if self.room.available_permits() == 0 {
            return Err(self.full());
        }
        Ok(())
    }

    fn full(&self) -> AuditUnavailable {
        AuditUnavailable(format!(
            "its queue holds {} records not yet written, its limit",
            self.capacity
        ))
    }

    fn reserve(&self) -> Option<Slot> {
        self.room
            .clone()
            .try_acquire_owned()
            .ok()
            .map(|room| Slot { _room: room })
    }

    /// Count a finished request and queue its record, in the room `slot` reserved for it at
    /// admission or, without one (a request refused before), in room found now; with no
    /// room left the record is lost, and counted.
    pub fn submit(&self, record: AuditRecord, slot: Option<Slot>) {
        metrics::get().request(&record);
        if !self.enabled {
            return;
        }
        log(&record);
        self.enqueue(record, slot, None);
    }

    /// Queue `record` (see [`Auditor::submit`]); whether it was.
    fn enqueue(
        &self,
        record: AuditRecord,
        slot: Option<Slot>,
        ack: Option<oneshot::Sender<bool>>,
    ) -> bool {
        let Some(slot) = slot.or_else(|| self.reserve()) else {
            self.lose(&record);
            return false;
        };
        match self.queue.send(Queued { record, ack, slot }) {
            Ok(()) => true,
            // The writer has stopped (shutdown).
            Err(unsent) => {
                self.lose(&unsent.0.record);
                false
            }
        }
    }

    fn lose(&self, record: &AuditRecord) {
        metrics::get().audit_lost.inc();
        let lost = self.health.lost.fetch_add(1, Ordering::Relaxed) + 1;
        let request_id = &record.request_id;
        tracing::error!(%request_id, lost, "an audit record was lost: no room in the queue, or the writer has stopped");
    }

    /// Count a finished request, queue its record (in `slot`, as for
    /// [`Auditor::submit`]) and wait until it is committed.
    pub async fn submit_durable(
        &self,
        record: AuditRecord,
        slot: Option<Slot>,
    ) -> Result<(), AuditUnavailable> {
        if self.health.failing_for().is_some() {
            // Nothing commits until the store is back: keep the record queued for then and
            // say so now, rather than hold the response.
            self.submit(record, slot);
            return Err(AuditUnavailable(WRITES_FAIL.to_owned()));
        }
        metrics::get().request(&record);
        let (ack, committed) = oneshot::channel();
        log(&record);
        if !self.enqueue(record, slot, Some(ack)) {
            return Err(self.full());
        }
        match committed.await {
            Ok(true) => Ok(()),
            Ok(false) => Err(AuditUnavailable("a write failed".to_owned())),
            Err(_) => Err(AuditUnavailable("the writer has stopped".to_owned())),
        }
    }
}

/// One line per request in the log (target `seks::audit`), when it logs at info.
fn log(record: &AuditRecord) {
    tracing::info!(
        target: "seks::audit",
        request_id = %record.request_id,
        client = %record.client,
        method = %record.method,
        provider = record.provider.as_deref().unwrap_or("-"),
        token_id = record.token_id.as_deref().unwrap_or("-"),
        agent = record.agent.as_deref().unwrap_or("-"),
        status = record.status,
        decision = record.decision.as_str(),
        error = record.error.as_deref().unwrap_or("-"),
        total_us = record.total_us,
        "request"
    );
}

/// Write queued records until `stop` turns true, then write what is left and return.
pub async fn run_writer(mut writer: Writer, mut stop: watch::Receiver<bool>) {
    let mut batch = Vec::with_capacity(MAX_BATCH);
    loop {
        let mut stopping = tokio::select! {
            received = writer.queue.recv_many(&mut batch, MAX_BATCH) => received == 0,
            _ = stop.changed() => true,
        };
        if !stopping && !writer.linger.is_zero() && batch.len() < MAX_BATCH {
            // Let the batch fill without waking up for every record: fewer, larger
            // transactions cost far less per record.
            tokio::select! {
                () = tokio::time::sleep(writer.linger) => {}
                _ = stop.changed() => stopping = true,
            }
            while batch.len() < MAX_BATCH {
                match writer.queue.try_recv() {
                    Ok(queued) => batch.push(queued),
                    Err(_) => break,
                }
            }
        }
        let held = writer.capacity - writer.room.available_permits();
        metrics::get().audit_queue.set(held as i64);
        if stopping {
            while let Ok(queued) = writer.queue.try_recv() {
                batch.push(queued);
            }
            writer.write(&mut batch, &stop).await;
            return;
        }
        writer.write(&mut batch, &stop).await;
    }
}

impl Writer {
    /// Write `batch`, retrying until it commits, or, once `stop` is set, until
    /// [`ATTEMPTS_AT_SHUTDOWN`] failures; then empty it.
    async fn write(&self, batch: &mut Vec<Queued>, stop: &watch::Receiver<bool>) {
        if batch.is_empty() {
            return;
        }
        let mut acks = Vec::with_capacity(batch.len());
        // The records' room in the queue is given back only once they are committed (or
        // given up), so the queue's bound counts this batch too.
        let mut slots = Vec::with_capacity(batch.len());
        let entries: Vec<AuditEntry> = batch
            .drain(..)
            .map(|queued| {
                acks.push(queued.ack);
                slots.push(queued.slot);
                self.entry(queued.record)
            })
            .collect();
        let mut backoff = Duration::from_millis(50);
        // After a failure: it may have been only the acknowledgement that failed.
        let mut maybe_written = false;
        let mut attempts_left = ATTEMPTS_AT_SHUTDOWN;
        let committed = loop {
            let started = Instant::now();
            let written = async {
                // One transaction wrote every record of the batch, or none.
                if maybe_written
                    && let Some(first) = entries.first()
                    && self.store.audit_holds(first).await?
                {
                    return Ok(());
                }
                self.store.append_audit(&entries, &self.key).await
            };
            match written.await {
                Ok(()) => {
                    metrics::get().audit_write(started.elapsed());
                    self.health.recover();
                    break true;
                }
                Err(e) => {
                    maybe_written = true;
                    tracing::error!(error = %e, records = entries.len(), "audit records could not be written; retrying");
                    self.health.fail();
                    // Strict-mode responses can't wait forever: they fail now, while
                    // their records keep being retried.
                    for ack in acks.iter_mut().filter_map(Option::take) {
                        let _ = ack.send(false);
                    }
                    // A stop that comes while a batch is being retried must still end the
                    // writer, or shutdown would wait on the store forever.
                    if *stop.borrow() {
                        attempts_left = attempts_left.saturating_sub(1);
                        if attempts_left == 0 {
                            break false;
                        }
                    }
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(MAX_BACKOFF);
                }
            }
        };
        if !committed {
            metrics::get().audit_lost.inc_by(entries.len() as u64);
            tracing::error!(records = entries.len(), "audit records lost at shutdown");
        }
        for ack in acks.into_iter().flatten() {
            let _ = ack.send(committed);
        }
        drop(slots);
    }

    /// A record as stored: its JSON, redacted, with its tenant and time for the index.
    fn entry(&self, record: AuditRecord) -> AuditEntry {
        // Serialising a struct of strings and numbers can't fail.
        let json = serde_json::to_vec(&record).unwrap_or_default();
        // Everything in a record came from the agent or the broker, and none of it should be
        // a secret or a token; redaction makes sure.
        // Masks are whole ASCII runs over whole matches, so the text stays UTF-8; lossy
        // decoding would only ever replace, never drop, the record.
        let json = String::from_utf8(self.redactor.redact_text(&json))
            .unwrap_or_else(|e| String::from_utf8_lossy(e.as_bytes()).into_owned());
        AuditEntry {
            tenant: record.tenant,
            at_ms: record.at_ms,
            record: json,
        }
    }
}

#[cfg(test)]
mod tests {
    use sqlx::{Connection, Executor, SqliteConnection};

    use super::*;
    use crate::store::{AuditFilter, SqliteStore};
    use crate::vault::Key;

    /// An auditor on a SQLite store in `dir`, with its writer running, and a connection to
    /// break and heal the store's audit writes with.
    async fn auditor(
        dir: &std::path::Path,
        config: AuditConfig,
        grace: Duration,
    ) -> (Auditor, Arc<dyn Store>, SqliteConnection) {
        let (auditor, store, conn, stop, writer) = stoppable_auditor(dir, config, grace).await;
        tokio::spawn(async move {
            let _ = writer.await;
            // Dropping it earlier would stop the writer.
            drop(stop);
        });
        (auditor, store, conn)
    }

    /// [`auditor`], with the writer's stop signal and its task.
    async fn stoppable_auditor(
        dir: &std::path::Path,
        config: AuditConfig,
        grace: Duration,
    ) -> (
        Auditor,
        Arc<dyn Store>,
        SqliteConnection,
        watch::Sender<bool>,
        tokio::task::JoinHandle<()>,
    ) {
        let file = dir.join("seks.db");
        let store: Arc<dyn Store> = Arc::new(SqliteStore::open(&file).await.unwrap());
        let key = ChainKey::new(Key::from_bytes([7; 32]));
        let (auditor, writer) =
            Auditor::new(store.clone(), key, Arc::new(Redactor::default()), &config);
        let (stop, stopped) = watch::channel(false);
        let task = tokio::spawn(run_writer(writer, stopped));
        let conn = SqliteConnection::connect(&format!("sqlite://{}", file.display()))
            .await
            .unwrap();
        (auditor.with_outage_grace(grace), store, conn, stop, task)
    }

    fn record(n: u32) -> AuditRecord {
        AuditRecord {
            request_id: format!("req_{n}"),
            tenant: "default".into(),
            status: 200,
            ..AuditRecord::default()
        }
    }

    /// Every record of the default tenant, oldest first.
    async fn records(store: &dyn Store) -> Vec<crate::audit::StoredRecord> {
        let filter = AuditFilter {
            tenant: "default".into(),
            after_seq: 0,
            since_ms: None,
            agent: None,
            provider: None,
            status: None,
            limit: 1000,
            newest: false,
        };
        store.audit_records(&filter).await.unwrap()
    }

    async fn stored(store: &dyn Store) -> usize {
        records(store).await.len()
    }

    /// Poll `check` for up to 10 s.
    async fn eventually(what: &str, check: impl Fn() -> bool) {
        let start = Instant::now();
        while !check() {
            assert!(start.elapsed() < Duration::from_secs(10), "never: {what}");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    const BREAK: &str = "CREATE TRIGGER full_disk BEFORE INSERT ON audit_batches \
                         BEGIN SELECT RAISE(ABORT, 'disk full'); END";

    #[tokio::test]
    async fn during_an_outage_grace_records_wait_within_the_queue_bound_and_none_admitted_is_lost()
    {
        let dir = tempfile::tempdir().unwrap();
        let config = AuditConfig {
            queue: 3,
            ..AuditConfig::default()
        };
        let (auditor, store, mut conn) =
            auditor(dir.path(), config, Duration::from_secs(600)).await;
        conn.execute(BREAK).await.unwrap();

        let first = auditor.admit().unwrap();
        auditor.submit(record(1), first);
        eventually("the failed write is noticed", || auditor.healthy().is_err()).await;
        // Writes fail, yet within the grace requests are admitted while their records fit.
        for n in 2..=3 {
            let slot = auditor.admit().expect("room in the queue");
            auditor.submit(record(n), slot);
        }
        let refused = auditor.admit().err().expect("the queue is full");
        assert!(refused.to_string().contains("3 records"), "{refused}");
        // A refusal's record finds no room: it is the one record lost, and the queue
        // doesn't grow past its bound.
        auditor.submit(record(4), None);
        assert_eq!(auditor.health.lost.load(Ordering::Relaxed), 1);
        assert_eq!(auditor.room.available_permits(), 0);

        conn.execute("DROP TRIGGER full_disk").await.unwrap();
        let start = Instant::now();
        while stored(store.as_ref()).await < 3 {
            assert!(
                start.elapsed() < Duration::from_secs(10),
                "records never written"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert_eq!(stored(store.as_ref()).await, 3);
        eventually("the queue empties", || {
            auditor.room.available_permits() == 3
        })
        .await;
        assert!(auditor.healthy().is_ok());
        assert!(auditor.admit().is_ok());
    }

    #[tokio::test]
    async fn the_store_tells_whether_it_holds_a_record_exactly() {
        let dir = tempfile::tempdir().unwrap();
        let (auditor, store, _conn) =
            auditor(dir.path(), AuditConfig::default(), Duration::ZERO).await;
        for n in [1, 2] {
            auditor.submit(record(n), auditor.admit().unwrap());
        }
        let mut found = Vec::new();
        while found.len() < 2 {
            tokio::time::sleep(Duration::from_millis(10)).await;
            found = records(store.as_ref()).await;
        }
        let held = |record: &str, at_ms: i64| AuditEntry {
            tenant: "default".into(),
            at_ms,
            record: record.to_owned(),
        };
        for stored in &found {
            assert!(
                store
                    .audit_holds(&held(&stored.record, stored.at_ms))
                    .await
                    .unwrap()
            );
            let other = stored.record.replace("req_", "req_0");
            assert!(
                !store
                    .audit_holds(&held(&other, stored.at_ms))
                    .await
                    .unwrap()
            );
            let later = held(&stored.record, stored.at_ms + 60_000);
            assert!(!store.audit_holds(&later).await.unwrap());
        }
    }

    /// Append `n` records, one batch each, straight to the store.
    async fn append(store: &dyn Store, key: &ChainKey, from: u32, n: u32) -> Result<(), String> {
        for i in from..from + n {
            let entry = AuditEntry {
                tenant: "default".into(),
                at_ms: i64::from(i),
                record: serde_json::to_string(&AuditRecord {
                    at_ms: i64::from(i),
                    ..record(i)
                })
                .unwrap(),
            };
            store
                .append_audit(&[entry], key)
                .await
                .map_err(|e| e.to_string())?;
        }
        Ok(())
    }

    /// Append a made-up record `seq` after the stored tail, with a correct (unkeyed) hash,
    /// as someone who can write to the database but has no master key could.
    async fn made_up(conn: &mut SqliteConnection, seq: i64) {
        let (last_hash,): (String,) = sqlx::query_as(
            "SELECT last_hash FROM audit_batches WHERE tenant_id = 'default' \
             ORDER BY first_seq DESC LIMIT 1",
        )
        .fetch_one(&mut *conn)
        .await
        .unwrap();
        let json = serde_json::to_string(&AuditRecord {
            at_ms: seq,
            ..record(99)
        })
        .unwrap();
        let hash = crate::audit::link(&last_hash, "default", seq, &json);
        sqlx::query("INSERT INTO audit_batches VALUES ('default', ?, ?, ?, ?, ?, ?)")
            .bind(seq)
            .bind(seq)
            .bind(seq)
            .bind(seq)
            .bind(&hash)
            .bind(format!("{seq}\t{last_hash}\t{hash}\t{json}"))
            .execute(&mut *conn)
            .await
            .unwrap();
    }

    #[tokio::test]
    async fn records_cut_from_the_tail_or_made_up_there_are_not_signed_over_by_the_next_append() {
        let key = || ChainKey::new(Key::from_bytes([7; 32]));
        for intrusion in [
            // Cut the last two records (no old signed head needed).
            "DELETE FROM audit_batches WHERE first_seq > 3",
            // Append a made-up record after the signed head, with a correct (unkeyed) hash.
            "MADE_UP",
        ] {
            let dir = tempfile::tempdir().unwrap();
            let (_auditor, store, mut conn) =
                auditor(dir.path(), AuditConfig::default(), Duration::ZERO).await;
            append(store.as_ref(), &key(), 1, 5).await.unwrap();
            assert!(crate::audit::verify(store.as_ref(), &key()).await.is_ok());
            if intrusion == "MADE_UP" {
                made_up(&mut conn, 6).await;
            } else {
                conn.execute(intrusion).await.unwrap();
            }
            // The broker's next write must not sign a head over the edited tail.
            let appended = append(store.as_ref(), &key(), 10, 3).await;
            let verified = crate::audit::verify(store.as_ref(), &key()).await;
            assert!(
                appended.is_err() || verified.is_err(),
                "{intrusion}: the next append laundered it: {verified:?}"
            );
        }
    }

    #[tokio::test]
    async fn old_records_are_pruned_a_few_batches_at_a_time_and_the_rest_verifies() {
        let key = || ChainKey::new(Key::from_bytes([7; 32]));
        let dir = tempfile::tempdir().unwrap();
        let (_auditor, store, _conn) =
            auditor(dir.path(), AuditConfig::default(), Duration::ZERO).await;
        // One batch per record, at times 1 to 5 ms.
        append(store.as_ref(), &key(), 1, 5).await.unwrap();
        let pruned = crate::audit::retention::prune_before(store.as_ref(), &key(), 4, 1)
            .await
            .unwrap();
        assert_eq!(pruned, 3);
        let left: Vec<i64> = records(store.as_ref())
            .await
            .iter()
            .map(|r| r.seq)
            .collect();
        assert_eq!(left, [4, 5]);
        assert!(crate::audit::verify(store.as_ref(), &key()).await.is_ok());
    }

    #[tokio::test]
    async fn records_made_up_past_the_signed_head_fail_verification() {
        let key = || ChainKey::new(Key::from_bytes([7; 32]));
        let dir = tempfile::tempdir().unwrap();
        let (_auditor, store, mut conn) =
            auditor(dir.path(), AuditConfig::default(), Duration::ZERO).await;
        append(store.as_ref(), &key(), 1, 5).await.unwrap();
        assert!(crate::audit::verify(store.as_ref(), &key()).await.is_ok());
        made_up(&mut conn, 6).await;
        let found = crate::audit::verify(store.as_ref(), &key()).await;
        assert!(
            found
                .as_ref()
                .is_err_and(|e| e.to_string().contains("records 6..=6")),
            "{found:?}"
        );
    }

    #[tokio::test]
    async fn without_a_grace_or_in_strict_mode_failing_writes_refuse_requests() {
        for (durability, grace) in [
            (Durability::Batched, Duration::ZERO),
            (Durability::Strict, Duration::from_secs(600)),
        ] {
            let dir = tempfile::tempdir().unwrap();
            let config = AuditConfig {
                durability,
                ..AuditConfig::default()
            };
            let (auditor, _store, mut conn) = auditor(dir.path(), config, grace).await;
            conn.execute(BREAK).await.unwrap();
            let slot = auditor.admit().unwrap();
            auditor.submit(record(1), slot);
            eventually("the failed write is noticed", || auditor.healthy().is_err()).await;
            let refused = auditor.admit().err().expect("refused");
            // The store's own error is for the log; the refusal names what failed.
            assert!(refused.to_string().contains(WRITES_FAIL), "{refused}");
            assert!(!refused.to_string().contains("disk full"), "{refused}");
        }
    }

    #[tokio::test]
    async fn a_stop_ends_the_writer_even_while_it_retries_a_batch_the_store_refuses() {
        let dir = tempfile::tempdir().unwrap();
        let config = AuditConfig::default();
        let queue = config.queue;
        let (auditor, _store, mut conn, stop, task) =
            stoppable_auditor(dir.path(), config, Duration::ZERO).await;
        conn.execute(BREAK).await.unwrap();
        let slot = auditor.admit().unwrap();
        auditor.submit(record(1), slot);
        eventually("the failed write is noticed", || auditor.healthy().is_err()).await;

        stop.send(true).unwrap();
        tokio::time::timeout(Duration::from_secs(10), task)
            .await
            .expect("the writer stops within its shutdown attempts")
            .unwrap();
        assert_eq!(auditor.room.available_permits(), queue);
    }
}
