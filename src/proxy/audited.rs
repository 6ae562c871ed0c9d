//! A request's audit record while it is under way: filled in as the request goes, and
//! handed to the audit log once the response has ended and its usage is known.

use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll, ready};
use std::time::Instant;

use axum::body::Body;
use bytes::Bytes;
use http_body::{Frame, SizeHint};

use crate::audit::{AuditRecord, AuditUnavailable, Auditor, Decision, Slot};
use crate::metrics;
use crate::scrub::BoxError;

/// The record of one request. It is submitted when the response ends or is dropped, or,
/// if the client leaves before there is a response, when the last holder lets go.
pub struct PendingRecord {
    record: Mutex<Option<AuditRecord>>,
    /// Room in the audit queue, reserved when the request was admitted.
    slot: Mutex<Option<Slot>>,
    auditor: Arc<Auditor>,
    started: Instant,
    bytes_in: Arc<AtomicU64>,
}

impl PendingRecord {
    /// A record for a request that arrived at `started`, whose body is counted in
    /// `bytes_in`.
    pub fn new(
        record: AuditRecord,
        auditor: Arc<Auditor>,
        started: Instant,
        bytes_in: Arc<AtomicU64>,
    ) -> Arc<Self> {
        Arc::new(PendingRecord {
            record: Mutex::new(Some(record)),
            slot: Mutex::default(),
            auditor,
            started,
            bytes_in,
        })
    }

    /// Change the record (no effect once it is submitted).
    pub fn update(&self, change: impl FnOnce(&mut AuditRecord)) {
        if let Some(record) = self
            .record
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .as_mut()
        {
            change(record);
        }
    }

    /// Ask the audit log to admit the request, keeping the room it reserves for the record.
    pub fn admit(&self) -> Result<(), AuditUnavailable> {
        let slot = self.auditor.admit()?;
        *self.slot.lock().unwrap_or_else(PoisonError::into_inner) = slot;
        Ok(())
    }

    /// The response has no body to hold back (HEAD, 204, 304): commit the record now.
    pub async fn commit(&self) -> Result<(), AuditUnavailable> {
        self.response_over(0);
        match self.take() {
            Some((record, slot)) => self.auditor.submit_durable(record, slot).await,
            None => Ok(()),
        }
    }

    /// The response is over: queue the record now rather than when the last holder lets go
    /// (a usage meter may read on for minutes after a client hangs up).
    fn submit(&self) {
        if let Some((record, slot)) = self.take() {
            self.auditor.submit(record, slot);
        }
    }

    /// The record, once, with the room reserved for it.
    fn take(&self) -> Option<(AuditRecord, Option<Slot>)> {
        let record = self
            .record
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take()?;
        let slot = self
            .slot
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
        Some((record, slot))
    }

    /// The response is over (ended or dropped): its size and duration are final.
    fn response_over(&self, bytes_out: u64) {
        let total_us = u64::try_from(self.started.elapsed().as_micros()).unwrap_or(u64::MAX);
        let bytes_in = self.bytes_in.load(Ordering::Relaxed);
        self.update(|r| {
            r.bytes_in = bytes_in;
            r.bytes_out = bytes_out;
            r.total_us = total_us;
        });
    }
}

impl Drop for PendingRecord {
    fn drop(&mut self) {
        self.submit();
    }
}

type Commit = Pin<Box<dyn Future<Output = Result<(), AuditUnavailable>> + Send>>;

/// The agent's response body: counts what is sent and, in strict mode, ends only once the
/// record is committed. Strict mode hides the body's length, so a client can't take the
/// response as complete before its end is released.
pub struct AuditedBody {
    inner: Body,
    pending: Arc<PendingRecord>,
    sent: u64,
    strict: bool,
    commit: Option<Commit>,
    over: bool,
}

impl AuditedBody {
    /// Wrap a response body.
    pub fn new(inner: Body, pending: Arc<PendingRecord>, strict: bool) -> Self {
        metrics::get().streams.inc();
        AuditedBody {
            inner,
            pending,
            sent: 0,
            strict,
            commit: None,
            over: false,
        }
    }
}

impl http_body::Body for AuditedBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = &mut *self;
        loop {
            if let Some(commit) = this.commit.as_mut() {
                let committed = ready!(commit.as_mut().poll(cx));
                this.commit = None;
                return Poll::Ready(committed.err().map(|e| Err(e.into())));
            }
            if this.over {
                return Poll::Ready(None);
            }
            match ready!(Pin::new(&mut this.inner).poll_frame(cx)) {
                Some(Ok(frame)) => {
                    if let Some(data) = frame.data_ref() {
                        this.sent += data.len() as u64;
                    }
                    return Poll::Ready(Some(Ok(frame)));
                }
                Some(Err(e)) => {
                    this.pending.update(|r| {
                        if matches!(r.decision, Decision::Allowed | Decision::Approved) {
                            r.decision = Decision::UpstreamError;
                            r.reason = Some("the response broke off".to_owned());
                        }
                    });
                    return Poll::Ready(Some(Err(e.into())));
                }
                None => {
                    this.over = true;
                    this.pending.response_over(this.sent);
                    if !this.strict {
                        this.pending.submit();
                        return Poll::Ready(None);
                    }
                    if let Some((record, slot)) = this.pending.take() {
                        let auditor = this.pending.auditor.clone();
                        this.commit = Some(Box::pin(async move {
                            auditor.submit_durable(record, slot).await
                        }));
                    }
                }
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        if self.strict {
            self.over && self.commit.is_none()
        } else {
            self.inner.is_end_stream()
        }
    }

    fn size_hint(&self) -> SizeHint {
        if self.strict {
            SizeHint::default()
        } else {
            self.inner.size_hint()
        }
    }
}

impl Drop for AuditedBody {
    fn drop(&mut self) {
        metrics::get().streams.dec();
        if !self.over {
            self.pending.response_over(self.sent);
            self.pending.submit();
        }
    }
}

/// The agent's request body, counted as it is read.
pub struct CountedBody {
    inner: Body,
    count: Arc<AtomicU64>,
}

impl CountedBody {
    /// Count `inner`'s bytes into `count`.
    pub fn new(inner: Body, count: Arc<AtomicU64>) -> Self {
        CountedBody { inner, count }
    }
}

impl http_body::Body for CountedBody {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, axum::Error>>> {
        let frame = ready!(Pin::new(&mut self.inner).poll_frame(cx));
        if let Some(Ok(f)) = &frame
            && let Some(data) = f.data_ref()
        {
            self.count.fetch_add(data.len() as u64, Ordering::Relaxed);
        }
        Poll::Ready(frame)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}
