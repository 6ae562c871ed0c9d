//! Rate, concurrency and daily budgets, enforced in memory per token.
//!
//! Daily counters are seeded from the store when a token is first seen; every second their
//! increments are written back and the day's totals read, so a restart doesn't reset a
//! budget and replicas sharing a store see each other's use. Across replicas a daily budget
//! can be overrun by what the others admitted within that second. Rate and concurrency
//! limits are leased from a shared store ([`super::leases`]) and never overrun.

use std::collections::HashMap;
use std::num::NonZeroU32;
use std::sync::atomic::{AtomicI64, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use governor::{DefaultDirectRateLimiter, Quota, RateLimiter, clock::Clock};

use super::PolicySpec;
use super::leases::{self, Held};
use crate::sigv4::replay::Claim;
use crate::store::{self, Store, StoreError, UsageDelta, UsageTotal};

const DAY_SECS: i64 = 86_400;
/// How often usage counters are written back to the store (and slot leases renewed).
const FLUSH_EVERY: Duration = Duration::from_secs(1);
/// Longest wait for a lease.
const LEASE_TIMEOUT: Duration = Duration::from_secs(1);
/// How long after a failed lease requests don't try the store again.
const RETRY_LEASES_AFTER: Duration = Duration::from_secs(1);
/// How far the database's clock may run ahead of a replica's before a signature claim is
/// forgotten while the signature could still pass the replica's skew check.
const CLAIM_CLOCK_MARGIN: Duration = Duration::from_secs(60);
/// Idle time after which a token's counters are dropped from memory.
const FORGET_AFTER_SECS: i64 = 300;

/// Why a request is over a limit; it is answered 429.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum Limited {
    /// Requests per minute.
    #[error("rate limit of {rpm} requests per minute reached")]
    Rate {
        /// The limit.
        rpm: u32,
        /// When the next request may go.
        retry_after: Duration,
    },
    /// Requests in flight.
    #[error("concurrency limit of {max} requests in flight reached")]
    Concurrency {
        /// The limit.
        max: u32,
    },
    /// Calls of one capability in flight, whichever tokens made them.
    #[error("capability `{capability}` already has {max} calls in flight, as many as it may")]
    CapabilityInFlight {
        /// The capability.
        capability: String,
        /// Its `max_in_flight`.
        max: u32,
    },
    /// Requests waiting for approval.
    #[error(
        "{max} requests of the token the operator issued and the tokens derived from it are \
         already waiting for approval"
    )]
    PendingApprovals {
        /// The limit.
        max: u32,
    },
    /// Requests per day.
    #[error("daily budget of {max} requests is used up")]
    DailyRequests {
        /// The limit.
        max: u64,
        /// Until the UTC day ends.
        retry_after: Duration,
    },
    /// Tokens per day.
    #[error("daily budget of {max} LLM tokens is used up ({used} used)")]
    DailyTokens {
        /// The limit.
        max: u64,
        /// Tokens used today.
        used: u64,
        /// Until the UTC day ends.
        retry_after: Duration,
    },
}

impl Limited {
    /// How long the agent should wait before trying again.
    pub fn retry_after(&self) -> Duration {
        match self {
            Limited::Rate { retry_after, .. }
            | Limited::DailyRequests { retry_after, .. }
            | Limited::DailyTokens { retry_after, .. } => *retry_after,
            Limited::Concurrency { .. } | Limited::CapabilityInFlight { .. } => {
                Duration::from_secs(1)
            }
            Limited::PendingApprovals { .. } => Duration::from_secs(5),
        }
    }

    /// Whether a budget (rather than a rate) ran out.
    pub fn is_budget(&self) -> bool {
        matches!(
            self,
            Limited::DailyRequests { .. } | Limited::DailyTokens { .. }
        )
    }
}

/// The limits one token follows: the strictest of its own policy's and its named policy's.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LimitSet {
    /// Requests per minute.
    pub rpm: Option<NonZeroU32>,
    /// Requests in flight.
    pub concurrency: Option<NonZeroU32>,
    /// Requests per UTC day.
    pub daily_requests: Option<u64>,
    /// LLM tokens per UTC day.
    pub daily_tokens: Option<u64>,
}

impl LimitSet {
    /// The strictest limits of all these specs.
    pub fn strictest<'a>(specs: impl IntoIterator<Item = &'a PolicySpec>) -> Self {
        fn min<T: Ord + Copy>(a: Option<T>, b: Option<T>) -> Option<T> {
            match (a, b) {
                (Some(a), Some(b)) => Some(a.min(b)),
                (a, b) => a.or(b),
            }
        }
        specs
            .into_iter()
            .fold(LimitSet::default(), |set, spec| LimitSet {
                rpm: min(set.rpm, spec.rpm),
                concurrency: min(set.concurrency, spec.concurrency),
                daily_requests: min(set.daily_requests, spec.daily_requests),
                daily_tokens: min(set.daily_tokens, spec.daily_tokens),
            })
    }

    /// Whether no limit is set.
    pub fn is_empty(&self) -> bool {
        *self == LimitSet::default()
    }
}

#[derive(Debug, Default)]
struct Day {
    day: i64,
    requests: u64,
    tokens: u64,
    unsaved_requests: u64,
    unsaved_tokens: u64,
}

/// Why a request's shared limits could not be counted; it is refused.
#[derive(Debug, thiserror::Error)]
pub enum Unleased {
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The store did not answer in time.
    #[error("the store did not grant a lease within {LEASE_TIMEOUT:?}")]
    Timeout,
    /// A lease failed moments ago.
    #[error("the store failed to grant a lease moments ago")]
    StoreDown,
}

/// How a request's rate and concurrency limits are counted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Counting {
    /// Against leases from the store the replicas share.
    Shared,
    /// In this process alone.
    Local,
}

/// The counters of one token.
pub struct TokenLimits {
    pub(super) id: String,
    rate: Mutex<Option<(NonZeroU32, Arc<DefaultDirectRateLimiter>)>>,
    pub(super) in_flight: Arc<AtomicU32>,
    day: Mutex<Day>,
    /// Unix time of the last admission, to forget idle tokens.
    last_seen: AtomicI64,
    /// What this replica leased of the token's limits, when the store is shared.
    held: Mutex<Held>,
    /// Taken while leasing, so one request leases for those arriving with it.
    pub(super) leasing: tokio::sync::Mutex<()>,
}

/// Releases a concurrency slot when dropped (when the response body ends).
pub struct InFlight(Arc<AtomicU32>);

impl InFlight {
    /// One of `counter`'s slots unless `max` are taken, with the number taken then.
    pub fn take(counter: &Arc<AtomicU32>, max: u32) -> Option<(InFlight, u32)> {
        counter
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < max).then_some(n + 1)
            })
            .ok()
            .map(|before| (InFlight(Arc::clone(counter)), before + 1))
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

impl TokenLimits {
    fn rate_limiter(&self, rpm: NonZeroU32) -> Arc<DefaultDirectRateLimiter> {
        let mut rate = self.rate.lock().unwrap_or_else(PoisonError::into_inner);
        match &*rate {
            Some((current, limiter)) if *current == rpm => Arc::clone(limiter),
            _ => {
                let limiter = Arc::new(RateLimiter::direct(Quota::per_minute(rpm)));
                *rate = Some((rpm, Arc::clone(&limiter)));
                limiter
            }
        }
    }

    /// Take in the day's totals from the store, keeping what was counted since they were read.
    fn take_in(&self, total: &UsageTotal) {
        let mut day = self.day.lock().unwrap_or_else(PoisonError::into_inner);
        if day.day == total.day {
            day.requests = total.requests + day.unsaved_requests;
            day.tokens = total.tokens + day.unsaved_tokens;
        }
    }

    /// What this replica leased of the token's limits.
    pub(super) fn held(&self) -> MutexGuard<'_, Held> {
        self.held.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn roll(day: &mut Day, today: i64) {
        if day.day != today {
            *day = Day {
                day: today,
                ..Day::default()
            };
        }
    }
}

/// Counters for every token seen, shared by all requests.
pub struct Limits {
    store: Arc<dyn Store>,
    /// This process's name in slot leases.
    replica: String,
    /// How long after the store last answered limits may be counted locally instead.
    outage_grace: Duration,
    /// When the store last answered, in ms since `started`.
    answered_ms: AtomicU64,
    started: Instant,
    /// When a lease last failed, unless the store has answered since.
    lease_failed: Mutex<Option<Instant>>,
    tokens: Mutex<HashMap<String, Arc<TokenLimits>>>,
    /// Serialises admissions, so concurrent requests can't all pass a budget's last unit.
    admitting: Mutex<()>,
}

/// The slots and charges one request holds; dropping it frees the concurrency slots.
#[derive(Default)]
pub struct Admission {
    in_flight: Vec<InFlight>,
    charged: Vec<Arc<TokenLimits>>,
    /// The charged tokens that have a token budget, with it.
    budgets: Vec<(Arc<TokenLimits>, u64)>,
}

impl Admission {
    /// The tokens whose budgets this request counts against.
    pub fn charged(&self) -> &[Arc<TokenLimits>] {
        &self.charged
    }

    /// Whether some link has a token budget, so the response's usage must be read.
    pub fn counts_tokens(&self) -> bool {
        !self.budgets.is_empty()
    }

    /// The token budget among this request's links that its usage so far has used up, if
    /// any: for a WebSocket session, charged as it goes, which must end then.
    pub fn budget_used_up(&self, now: i64) -> Option<Limited> {
        self.budgets.iter().find_map(|(counters, max)| {
            let day = counters.day.lock().unwrap_or_else(PoisonError::into_inner);
            tokens_used_up(&day, *max, now)
        })
    }
}

/// How long until the UTC day of `now` ends.
fn until_tomorrow(now: i64) -> Duration {
    let tomorrow = (now.div_euclid(DAY_SECS) + 1) * DAY_SECS;
    Duration::from_secs(u64::try_from(tomorrow - now).unwrap_or(1))
}

/// The refusal of a token budget of `max` that `day`'s usage has reached on the day of `now`.
fn tokens_used_up(day: &Day, max: u64, now: i64) -> Option<Limited> {
    (day.day == now.div_euclid(DAY_SECS) && day.tokens >= max).then(|| Limited::DailyTokens {
        max,
        used: day.tokens,
        retry_after: until_tomorrow(now),
    })
}

impl Limits {
    /// Counters backed by `store` for daily usage.
    pub fn new(store: Arc<dyn Store>) -> Self {
        Limits {
            store,
            replica: crate::tokens::random_base62(16),
            outage_grace: Duration::ZERO,
            answered_ms: AtomicU64::new(0),
            started: Instant::now(),
            lease_failed: Mutex::default(),
            tokens: Mutex::default(),
            admitting: Mutex::default(),
        }
    }

    /// While the store doesn't answer, count limits that are shared through it in this
    /// replica alone, for up to `grace` after it last answered (`store.outage_grace`); each
    /// replica then enforces the whole limit on its own. Zero, the default, refuses.
    pub fn with_outage_grace(mut self, grace: Duration) -> Self {
        self.outage_grace = grace;
        self
    }

    /// The counters of token `id`, loading today's usage from the store the first time.
    pub async fn of(&self, id: &str, now: i64) -> Result<Arc<TokenLimits>, StoreError> {
        if let Some(found) = self
            .tokens
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(id)
        {
            return Ok(Arc::clone(found));
        }
        let today = now.div_euclid(DAY_SECS);
        let (requests, tokens) = store::timed(self.store.usage(id, today)).await?;
        let fresh = Arc::new(TokenLimits {
            id: id.to_owned(),
            rate: Mutex::new(None),
            in_flight: Arc::new(AtomicU32::new(0)),
            day: Mutex::new(Day {
                day: today,
                requests,
                tokens,
                ..Day::default()
            }),
            last_seen: AtomicI64::new(now),
            held: Mutex::default(),
            leasing: tokio::sync::Mutex::const_new(()),
        });
        let mut map = self.tokens.lock().unwrap_or_else(PoisonError::into_inner);
        Ok(Arc::clone(map.entry(id.to_owned()).or_insert(fresh)))
    }

    /// Lease from a shared store what the links' rate and concurrency limits need for one
    /// more request. Says how the request is to be counted: [`Counting::Local`] when the
    /// store isn't shared, or is down within the outage grace.
    pub async fn lease(
        &self,
        links: &[(Arc<TokenLimits>, LimitSet)],
    ) -> Result<Counting, Unleased> {
        let Some(store) = self.store.leases() else {
            return Ok(Counting::Local);
        };
        if self.failed_lately() {
            return self.unleased(Unleased::StoreDown);
        }
        for (counters, spec) in links {
            let top_up = leases::top_up(store, &self.replica, counters, spec.rpm, spec.concurrency);
            let failure = match tokio::time::timeout(LEASE_TIMEOUT, top_up).await {
                Ok(Ok(())) => continue,
                Ok(Err(e)) => Unleased::Store(e),
                Err(_) => Unleased::Timeout,
            };
            return self.note_lease_failure(failure);
        }
        Ok(Counting::Shared)
    }

    /// Claim a SigV4 signature in the store the replicas share: how long ago a replica first
    /// claimed it; `None` when the store isn't shared, or is down within the outage grace
    /// (this replica's own replay guard then decides alone).
    pub async fn claim_signature(&self, claim: &Claim) -> Result<Option<Duration>, Unleased> {
        let Some(store) = self.store.leases() else {
            return Ok(None);
        };
        if self.failed_lately() {
            return self.unleased(Unleased::StoreDown).map(|_| None);
        }
        // The database forgets a claim by its own clock, which may run ahead of this one.
        let lapse = claim.lapse + CLAIM_CLOCK_MARGIN;
        let claimed = store.claim_signature(&claim.signature, lapse);
        let failure = match tokio::time::timeout(LEASE_TIMEOUT, claimed).await {
            Ok(Ok(age)) => return Ok(Some(age)),
            Ok(Err(e)) => Unleased::Store(e),
            Err(_) => Unleased::Timeout,
        };
        self.note_lease_failure(failure).map(|_| None)
    }

    /// Whether a lease failed moments ago: requests then don't each wait on a store that is
    /// probably down.
    fn failed_lately(&self) -> bool {
        self.lease_failed
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .is_some_and(|at| at.elapsed() < RETRY_LEASES_AFTER)
    }

    /// Note a failed lease (logged here, at most once a second, rather than for every
    /// request it touches) and count as [`Limits::unleased`] says.
    fn note_lease_failure(&self, failure: Unleased) -> Result<Counting, Unleased> {
        tracing::warn!(error = %failure, "limits can't be leased from the store");
        *self
            .lease_failed
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = Some(Instant::now());
        self.unleased(failure)
    }

    /// Count locally within the outage grace (each replica then enforces the whole limit on
    /// its own); refuse otherwise.
    fn unleased(&self, why: Unleased) -> Result<Counting, Unleased> {
        let answered = Duration::from_millis(self.answered_ms.load(Ordering::Acquire));
        let silent = self.started.elapsed().saturating_sub(answered);
        if silent < self.outage_grace {
            Ok(Counting::Local)
        } else {
            Err(why)
        }
    }

    fn store_answered(&self) {
        let ms = u64::try_from(self.started.elapsed().as_millis()).unwrap_or(u64::MAX);
        self.answered_ms.store(ms, Ordering::Release);
        *self
            .lease_failed
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = None;
    }

    /// Admit one request against every link of a token's chain (one `(counters, limits)`
    /// pair per token, nearest first), or say which limit stops it. Slots and daily counts
    /// are taken only if all pass; a rate permit can't be given back (see below).
    pub fn admit(
        &self,
        links: &[(Arc<TokenLimits>, LimitSet)],
        counting: Counting,
        now: i64,
    ) -> Result<Admission, Limited> {
        let _admitting = self
            .admitting
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let today = now.div_euclid(DAY_SECS);
        for (counters, spec) in links {
            let mut day = counters.day.lock().unwrap_or_else(PoisonError::into_inner);
            TokenLimits::roll(&mut day, today);
            if let Some(max) = spec.daily_requests
                && day.requests >= max
            {
                return Err(Limited::DailyRequests {
                    max,
                    retry_after: until_tomorrow(now),
                });
            }
            if let Some(spent) = spec
                .daily_tokens
                .and_then(|max| tokens_used_up(&day, max, now))
            {
                return Err(spent);
            }
        }
        let mut admission = Admission {
            budgets: links
                .iter()
                .filter_map(|(counters, spec)| {
                    spec.daily_tokens.map(|max| (Arc::clone(counters), max))
                })
                .collect(),
            ..Admission::default()
        };
        let shared = counting == Counting::Shared;
        let instant = Instant::now();
        for (counters, spec) in links {
            if let Some(max) = spec.concurrency {
                let mut held = counters.held();
                let cap = if shared {
                    held.slots(instant).min(max.get())
                } else {
                    max.get()
                };
                let Some((slot, taken)) = InFlight::take(&counters.in_flight, cap) else {
                    return Err(Limited::Concurrency { max: max.get() });
                };
                held.note_in_flight(taken);
                admission.in_flight.push(slot);
            }
        }
        // Nearest first: a child refused by an ancestor's rate has spent its own permit,
        // but a child over its own rate never spends what its siblings share.
        for (counters, spec) in links {
            if let Some(rpm) = spec.rpm
                && shared
            {
                if !counters.held().take_permit(instant) {
                    return Err(Limited::Rate {
                        rpm: rpm.get(),
                        retry_after: (Duration::from_secs(60) / rpm.get())
                            .max(Duration::from_secs(1)),
                    });
                }
            } else if let Some(rpm) = spec.rpm {
                let limiter = counters.rate_limiter(rpm);
                if let Err(not_until) = limiter.check() {
                    let clock = governor::clock::DefaultClock::default();
                    return Err(Limited::Rate {
                        rpm: rpm.get(),
                        retry_after: not_until
                            .wait_time_from(clock.now())
                            .max(Duration::from_secs(1)),
                    });
                }
            }
        }
        for (counters, _) in links {
            counters.last_seen.store(now, Ordering::Relaxed);
            let mut day = counters.day.lock().unwrap_or_else(PoisonError::into_inner);
            day.requests += 1;
            day.unsaved_requests += 1;
            admission.charged.push(Arc::clone(counters));
        }
        Ok(admission)
    }

    /// Count LLM tokens a request used against every token it was charged to.
    pub fn add_tokens(charged: &[Arc<TokenLimits>], tokens: u64, now: i64) {
        let today = now.div_euclid(DAY_SECS);
        for counters in charged {
            let mut day = counters.day.lock().unwrap_or_else(PoisonError::into_inner);
            TokenLimits::roll(&mut day, today);
            day.tokens += tokens;
            day.unsaved_tokens += tokens;
        }
    }

    /// Write usage back every few seconds until the task is dropped.
    pub async fn run_flush_loop(self: Arc<Self>) {
        let mut tick = tokio::time::interval(FLUSH_EVERY);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            match self.flush().await {
                Ok(()) => self.forget_idle(crate::clock::now()),
                Err(e) => tracing::warn!(error = %e, "could not record usage counters; will retry"),
            }
            if let Err(e) = self.renew_leases().await {
                tracing::warn!(error = %e, "could not renew concurrency leases; they will lapse");
            }
        }
    }

    /// Drop the counters of tokens idle for a while with nothing unsaved and nothing in
    /// flight; their rate buckets are full again and their day is in the store.
    fn forget_idle(&self, now: i64) {
        self.tokens
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .retain(|_, counters| {
                let day = counters.day.lock().unwrap_or_else(PoisonError::into_inner);
                Arc::strong_count(counters) > 1
                    || now - counters.last_seen.load(Ordering::Relaxed) < FORGET_AFTER_SECS
                    || day.unsaved_requests + day.unsaved_tokens > 0
                    || !leases::holds_nothing(counters)
            });
    }

    /// Write unsaved usage to the store and take in the day's totals, which include other
    /// replicas' use; on failure the unsaved usage is kept for the next try.
    pub async fn flush(&self) -> Result<(), StoreError> {
        let all = self.all();
        // With a shared store, tokens with nothing unsaved are read too: others may use them.
        let shared = self.store.leases().is_some();
        let mut deltas = Vec::new();
        for counters in &all {
            let mut day = counters.day.lock().unwrap_or_else(PoisonError::into_inner);
            if shared || day.unsaved_requests + day.unsaved_tokens > 0 {
                deltas.push(UsageDelta {
                    token_id: counters.id.clone(),
                    day: day.day,
                    requests: std::mem::take(&mut day.unsaved_requests),
                    tokens: std::mem::take(&mut day.unsaved_tokens),
                });
            }
        }
        if deltas.is_empty() {
            return Ok(());
        }
        let by_id: HashMap<&str, &Arc<TokenLimits>> =
            all.iter().map(|c| (c.id.as_str(), c)).collect();
        match self.store.add_usage(&deltas).await {
            Ok(totals) => {
                self.store_answered();
                for total in totals {
                    if let Some(counters) = by_id.get(total.token_id.as_str()) {
                        counters.take_in(&total);
                    }
                }
                Ok(())
            }
            Err(e) => {
                for delta in &deltas {
                    if let Some(counters) = by_id.get(delta.token_id.as_str()) {
                        let mut day = counters.day.lock().unwrap_or_else(PoisonError::into_inner);
                        if day.day == delta.day {
                            day.unsaved_requests += delta.requests;
                            day.unsaved_tokens += delta.tokens;
                        }
                    }
                }
                Err(e)
            }
        }
    }

    /// Give back unused concurrency slots leased from a shared store and renew the rest.
    async fn renew_leases(&self) -> Result<(), StoreError> {
        match self.store.leases() {
            Some(store) => {
                leases::renew(store, &self.replica, &self.all()).await?;
                self.store_answered();
                Ok(())
            }
            None => Ok(()),
        }
    }

    fn all(&self) -> Vec<Arc<TokenLimits>> {
        self.tokens
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .values()
            .cloned()
            .collect()
    }
}
