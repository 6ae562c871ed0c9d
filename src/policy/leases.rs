//! Limits held across broker replicas that share a store (PostgreSQL).
//!
//! A replica takes rate permits and concurrency slots from the store in chunks and counts
//! them locally, so a request waits on the database only when its token's chunk runs out.
//! The store grants no more than the limit, so the replicas together never go over it;
//! what leasing costs is undershoot:
//! - `rpm`: permits are leased about a second's worth at a time (one at least, 100 at most)
//!   and lapse after [`PERMITS_LAST`] unused, so each replica can leave up to one chunk
//!   unused.
//! - `concurrency`: slots a replica held but stopped using are given back at the next
//!   renewal (every second); a replica that dies frees its slots after [`SLOT_TTL`].
//!
//! Without the store there are no leases: a token with these limits is refused (fail
//! closed), and the local copy of a slot lease runs out before the store's does.

use std::collections::HashSet;
use std::num::NonZeroU32;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use super::limits::TokenLimits;
use crate::store::{Leases, StoreError};

/// How long leased rate permits may be used; unused ones lapse.
const PERMITS_LAST: Duration = Duration::from_secs(2);
/// Most rate permits leased at once.
const MAX_PERMIT_CHUNK: u32 = 100;
/// How long a slot lease lasts unless renewed.
pub const SLOT_TTL: Duration = Duration::from_secs(5);
/// The local copy of a slot lease ends this much before the store's, which started later.
const SLOT_MARGIN: Duration = Duration::from_secs(1);

/// What one replica holds of one token's shared limits.
#[derive(Debug, Default)]
pub struct Held {
    permits: u32,
    permits_until: Option<Instant>,
    slots: u32,
    slots_until: Option<Instant>,
    /// Most requests in flight since the last renewal: the slots worth keeping.
    peak: u32,
}

impl Held {
    /// Take one rate permit, if a live one is left.
    pub fn take_permit(&mut self, now: Instant) -> bool {
        let live = self.permits_until.is_some_and(|until| now < until);
        if live && self.permits > 0 {
            self.permits -= 1;
            true
        } else {
            false
        }
    }

    /// The concurrency slots usable now.
    pub fn slots(&self, now: Instant) -> u32 {
        if self.slots_until.is_some_and(|until| now < until) {
            self.slots
        } else {
            0
        }
    }

    /// Note `in_flight` requests after an admission.
    pub fn note_in_flight(&mut self, in_flight: u32) {
        self.peak = self.peak.max(in_flight);
    }

    /// Whether a token with `rpm` needs permits before its next request.
    fn needs_permits(&self, now: Instant) -> bool {
        self.permits == 0 || self.permits_until.is_none_or(|until| now >= until)
    }
}

/// The interval between requests at `rpm`, and the burst allowed ahead of it: a full
/// minute's worth, as the local limiter allows.
fn rate_of(rpm: NonZeroU32) -> (Duration, Duration) {
    let interval = Duration::from_secs(60) / rpm.get();
    (interval, Duration::from_secs(60).saturating_sub(interval))
}

/// Lease what `counters` needs for its next request: rate permits if `rpm` is set and none
/// are left, more concurrency slots if `concurrency` is set and all are in use.
pub async fn top_up(
    leases: &dyn Leases,
    replica: &str,
    counters: &TokenLimits,
    rpm: Option<NonZeroU32>,
    concurrency: Option<NonZeroU32>,
) -> Result<(), StoreError> {
    let wants = |now: Instant| {
        let held = counters.held();
        let permits = rpm.is_some() && held.needs_permits(now);
        let in_flight = counters.in_flight.load(Ordering::Acquire);
        let slots = concurrency.is_some_and(|max| {
            let usable = held.slots(now);
            in_flight >= usable && usable < max.get()
        });
        (permits, slots, in_flight)
    };
    let (permits, slots, _) = wants(Instant::now());
    if !permits && !slots {
        return Ok(());
    }
    // One lease at a time per token: requests arriving together share the first one's.
    let _leasing = counters.leasing.lock().await;
    let (permits, slots, in_flight) = wants(Instant::now());
    if let (true, Some(rpm)) = (permits, rpm) {
        let (interval, burst) = rate_of(rpm);
        let chunk = (rpm.get() / 60).clamp(1, MAX_PERMIT_CHUNK);
        let sent = Instant::now();
        let granted = leases
            .lease_rate(&counters.id, chunk, interval, burst)
            .await?;
        let mut held = counters.held();
        held.permits = granted;
        held.permits_until = Some(sent + PERMITS_LAST);
    }
    if let (true, Some(max)) = (slots, concurrency) {
        let usable = counters.held().slots(Instant::now());
        // Doubling reaches a burst's size in few round trips; renewal gives back the excess.
        let want = (usable * 2).max(in_flight + 1).min(max.get());
        let sent = Instant::now();
        let got = leases
            .lease_slots(&counters.id, replica, want, max.get(), SLOT_TTL)
            .await?;
        let mut held = counters.held();
        held.slots = got;
        held.slots_until = Some(sent + SLOT_TTL - SLOT_MARGIN);
    }
    Ok(())
}

/// Give back the slots each token stopped using and renew the rest.
pub async fn renew(
    leases: &dyn Leases,
    replica: &str,
    all: &[Arc<TokenLimits>],
) -> Result<(), StoreError> {
    let now = Instant::now();
    let mut keep = Vec::new();
    for counters in all {
        let mut held = counters.held();
        if held.slots(now) == 0 {
            continue;
        }
        let in_flight = counters.in_flight.load(Ordering::Acquire);
        let slots = held.peak.max(in_flight).min(held.slots);
        // Shrunk before the store hears of it: from now on this replica uses only these.
        held.slots = slots;
        held.peak = in_flight;
        keep.push((counters.id.clone(), slots));
    }
    if keep.is_empty() {
        return Ok(());
    }
    let sent = Instant::now();
    let renewed: HashSet<String> = leases
        .renew_slots(replica, &keep, SLOT_TTL)
        .await?
        .into_iter()
        .collect();
    for counters in all {
        if renewed.contains(&counters.id) {
            counters.held().slots_until = Some(sent + SLOT_TTL - SLOT_MARGIN);
        }
    }
    Ok(())
}

/// Whether `counters` holds nothing leased, so it can be forgotten.
pub fn holds_nothing(counters: &TokenLimits) -> bool {
    counters.held().slots(Instant::now()) == 0
}
