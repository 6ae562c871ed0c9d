//! Getting records into the store without slowing requests: a bounded queue and one writer
//! task that appends whatever has queued up in one transaction (group commit).
//!
//! A crash loses at most what is queued plus the batch being written: a batch gathers
//! records for 20 ms, then commits, normally within milliseconds. In strict mode a response
//! ends only once its record is committed, and batches don't wait.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use serde::Deserialize;
use tokio::sync::{mpsc, oneshot, watch};

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

/// A record on its way to the store.
struct Queued {
    record: AuditRecord,
    /// Told whether the record was committed (strict mode).
    ack: Option<oneshot::Sender<bool>>,
}

/// Whether writing works, shared between the writer and the request path.
#[derive(Default)]
struct Health {
    failing: AtomicBool,
    why: Mutex<String>,
    lost: AtomicU64,
}

impl Health {
    fn fail(&self, why: String) {
        *self.why.lock().unwrap_or_else(PoisonError::into_inner) = why;
        self.failing.store(true, Ordering::Release);
    }

    fn recover(&self) {
        if self.failing.swap(false, Ordering::AcqRel) {
            tracing::info!("the audit log is being written again");
        }
    }
}

/// The request path's handle on the audit log.
pub struct Auditor {
    queue: mpsc::Sender<Queued>,
    health: Arc<Health>,
    durability: Durability,
    /// Keep serving when the log can't be written (records are lost meanwhile).
    fail_open: bool,
    /// Records are kept at all (off only for measuring the log's cost).
    enabled: bool,
}

/// The writer's side of the queue; run it with [`run_writer`].
pub struct Writer {
    queue: mpsc::Receiver<Queued>,
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
        let (tx, rx) = mpsc::channel(config.queue.max(1));
        let health = Arc::new(Health::default());
        let auditor = Auditor {
            queue: tx,
            health: health.clone(),
            durability: config.durability,
            fail_open: config.fail_open,
            enabled: config.enabled,
        };
        let writer = Writer {
            queue: rx,
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

    /// Whether responses wait for their records.
    pub fn is_strict(&self) -> bool {
        self.enabled && self.durability == Durability::Strict
    }

    /// Records waiting to be written.
    pub fn queue_depth(&self) -> usize {
        self.queue.max_capacity() - self.queue.capacity()
    }

    /// Whether a new request may be served: refused while the log can't be written,
    /// unless configured to fail open.
    pub fn admit(&self) -> Result<(), AuditUnavailable> {
        if self.fail_open {
            return Ok(());
        }
        self.healthy()
    }

    /// Whether records are being written (for readiness, whatever `fail_open` says).
    pub fn healthy(&self) -> Result<(), AuditUnavailable> {
        if !self.health.failing.load(Ordering::Acquire) {
            return Ok(());
        }
        let why = self
            .health
            .why
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone();
        Err(AuditUnavailable(why))
    }

    /// Count a finished request and queue its record; if the queue is full the record is
    /// lost, counted, and new requests are refused until the writer catches up.
    pub fn submit(&self, record: AuditRecord) {
        metrics::get().request(&record);
        if !self.enabled {
            return;
        }
        log(&record);
        let queued = Queued { record, ack: None };
        if let Err(full) = self.queue.try_send(queued) {
            metrics::get().audit_lost.inc();
            let lost = self.health.lost.fetch_add(1, Ordering::Relaxed) + 1;
            self.health
                .fail(format!("its queue is full; {lost} records lost so far"));
            let request_id = full.into_inner().record.request_id;
            tracing::error!(%request_id, "audit queue full: a record was lost");
        }
    }

    /// Count a finished request, queue its record and wait until it is committed.
    pub async fn submit_durable(&self, record: AuditRecord) -> Result<(), AuditUnavailable> {
        if let Err(failing) = self.healthy() {
            // Nothing commits until the store is back: keep the record queued for then and
            // say so now, rather than hold the response.
            self.submit(record);
            return Err(failing);
        }
        metrics::get().request(&record);
        let (ack, committed) = oneshot::channel();
        log(&record);
        let queued = Queued {
            record,
            ack: Some(ack),
        };
        let unavailable = || AuditUnavailable("the writer has stopped".to_owned());
        self.queue.send(queued).await.map_err(|_| unavailable())?;
        match committed.await {
            Ok(true) => Ok(()),
            Ok(false) => Err(AuditUnavailable("a write failed".to_owned())),
            Err(_) => Err(unavailable()),
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
        metrics::get().audit_queue.set(writer.queue.len() as i64);
        if stopping {
            while let Ok(queued) = writer.queue.try_recv() {
                batch.push(queued);
            }
            writer.write(&mut batch, Some(ATTEMPTS_AT_SHUTDOWN)).await;
            return;
        }
        writer.write(&mut batch, None).await;
    }
}

impl Writer {
    /// Write `batch`, retrying until it commits (or `attempts` run out), then empty it.
    async fn write(&self, batch: &mut Vec<Queued>, mut attempts: Option<u32>) {
        if batch.is_empty() {
            return;
        }
        let (entries, mut acks): (Vec<AuditEntry>, Vec<Option<oneshot::Sender<bool>>>) = batch
            .drain(..)
            .map(|queued| (self.entry(queued.record), queued.ack))
            .unzip();
        let mut backoff = Duration::from_millis(50);
        let committed = loop {
            let started = Instant::now();
            match self.store.append_audit(&entries, &self.key).await {
                Ok(()) => {
                    metrics::get().audit_write(started.elapsed());
                    self.health.recover();
                    break true;
                }
                Err(e) => {
                    tracing::error!(error = %e, records = entries.len(), "audit records could not be written; retrying");
                    self.health.fail(e.to_string());
                    // Strict-mode responses can't wait forever: they fail now, while
                    // their records keep being retried.
                    for ack in acks.iter_mut().filter_map(Option::take) {
                        let _ = ack.send(false);
                    }
                    if let Some(left) = attempts.as_mut() {
                        *left = left.saturating_sub(1);
                        if *left == 0 {
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
    }

    /// A record as stored: its JSON, redacted, with its tenant and time for the index.
    fn entry(&self, record: AuditRecord) -> AuditEntry {
        // Serialising a struct of strings and numbers can't fail.
        let json = serde_json::to_vec(&record).unwrap_or_default();
        // Everything in a record came from the agent or the broker, and none of it should be
        // a secret or a token; redaction makes sure.
        // Masks are whole ASCII runs over whole matches, so the text stays UTF-8; lossy
        // decoding would only ever replace, never drop, the record.
        let json = String::from_utf8_lossy(&self.redactor.redact_text(&json)).into_owned();
        AuditEntry {
            tenant: record.tenant,
            at_ms: record.at_ms,
            record: json,
        }
    }
}
