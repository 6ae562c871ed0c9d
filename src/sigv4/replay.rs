//! Refusing replayed signed requests. The broker re-signs what it forwards with a fresh
//! time, so without its own check a captured agent request would stay good forever.
//!
//! Two rules: the request time must be within [`MAX_SKEW_SECS`] of the broker's clock, and
//! a signature is good for [`REUSE_WINDOW`] after the broker first sees it. SDKs sign at
//! one-second resolution and don't sign their per-call ids, so identical calls made in the
//! same second share a signature; a copy sent later is a replay.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::SigError;
use crate::clock;

/// Largest distance between the request time and the broker's clock (AWS allows 15 min).
pub const MAX_SKEW_SECS: i64 = 5 * 60;
/// How long after its first use a signature may be used again.
pub const REUSE_WINDOW: Duration = Duration::from_secs(2);
/// Signatures remembered at most; beyond it new signed requests are refused (fail closed).
const CAPACITY: usize = 1 << 20;
/// Signatures remembered at most for one token and the tokens derived from it (about 200
/// requests a second, sustained); beyond it only that token's new signed requests are
/// refused, so no one token can fill the memory every other one needs.
pub const PER_TOKEN: usize = CAPACITY / 16;

/// A signature this replica admitted, for the claim replicas sharing a store make on it too
/// (a copy sent to another replica is a replay as well).
#[derive(Debug, Clone, Copy)]
pub struct Claim {
    /// The agent's signature.
    pub signature: [u8; 32],
    /// How long its request time can still pass the skew check.
    pub lapse: Duration,
}

/// Signatures seen within the skew window.
#[derive(Default)]
pub struct ReplayGuard {
    seen: Mutex<Seen>,
}

/// A remembered signature.
struct Use {
    first: Instant,
    /// The token it counts against.
    owner: Arc<str>,
}

#[derive(Default)]
struct Seen {
    first_use: HashMap<[u8; 32], Use>,
    /// Signatures by the time from which their request time can't pass the skew check,
    /// soonest first.
    lapse: BinaryHeap<Reverse<(Instant, [u8; 32])>>,
    /// When each signature a token holds lapses, soonest first: how many it holds, and
    /// when it has room again.
    held: HashMap<Arc<str>, BinaryHeap<Reverse<Instant>>>,
}

impl Seen {
    /// Forget signatures whose request time can't pass the skew check any more.
    fn prune(&mut self, at: Instant) {
        while let Some(&Reverse((lapses, signature))) = self.lapse.peek()
            && lapses <= at
        {
            self.lapse.pop();
            let Some(forgotten) = self.first_use.remove(&signature) else {
                continue;
            };
            if let Some(lapses) = self.held.get_mut(&forgotten.owner) {
                // Signatures lapse in order, so this one is the soonest its token holds.
                lapses.pop();
                if lapses.is_empty() {
                    self.held.remove(&forgotten.owner);
                }
            }
        }
    }
}

/// Seconds from `at` until `soonest`, when a remembered signature lapses and makes room, as
/// a `Retry-After` gives them.
fn secs_until(soonest: Option<Instant>, at: Instant) -> u64 {
    clock::retry_secs(soonest.map_or(Duration::ZERO, |t| t.duration_since(at)))
}

impl ReplayGuard {
    /// Admit a request of the token `owner` (the root of its token's chain), signed at
    /// `signed_at` (Unix seconds) with `signature`, at `now`.
    pub fn admit(
        &self,
        signature: [u8; 32],
        owner: &str,
        signed_at: i64,
        now: i64,
    ) -> Result<Claim, SigError> {
        if (now - signed_at).abs() > MAX_SKEW_SECS {
            return Err(SigError::Skewed(MAX_SKEW_SECS / 60));
        }
        // `now` is whole seconds, so the request time may pass the check for up to a
        // second longer than the difference says.
        let left = u64::try_from(signed_at + MAX_SKEW_SECS + 1 - now).unwrap_or(0);
        let claim = Claim {
            signature,
            lapse: Duration::from_secs(left),
        };
        let at = Instant::now();
        let mut seen = self
            .seen
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(used) = seen.first_use.get(&signature) {
            return if at.duration_since(used.first) <= REUSE_WINDOW {
                Ok(claim)
            } else {
                Err(SigError::Replayed)
            };
        }
        seen.prune(at);
        let owner = match seen.held.get_key_value(owner) {
            Some((_, lapses)) if lapses.len() >= PER_TOKEN => {
                let soonest = lapses.peek().map(|&Reverse(t)| t);
                return Err(SigError::TooMany(secs_until(soonest, at)));
            }
            Some((owner, _)) => Arc::clone(owner),
            None => Arc::from(owner),
        };
        if seen.first_use.len() >= CAPACITY {
            let soonest = seen.lapse.peek().map(|&Reverse((t, _))| t);
            return Err(SigError::Overloaded(secs_until(soonest, at)));
        }
        let lapses = at + claim.lapse;
        seen.lapse.push(Reverse((lapses, signature)));
        seen.held
            .entry(Arc::clone(&owner))
            .or_default()
            .push(Reverse(lapses));
        seen.first_use.insert(signature, Use { first: at, owner });
        Ok(claim)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stale_or_reused_signatures_are_refused() {
        let guard = ReplayGuard::default();
        let now = 1_800_000_000;
        assert_eq!(
            guard.admit([1; 32], "tok_a", now - 301, now).map(drop),
            Err(SigError::Skewed(5))
        );
        assert_eq!(
            guard.admit([1; 32], "tok_a", now + 301, now).map(drop),
            Err(SigError::Skewed(5))
        );
        assert_eq!(
            guard.admit([1; 32], "tok_a", now - 10, now).map(drop),
            Ok(())
        );
        // The same second's identical call passes; a copy after the window does not.
        assert_eq!(
            guard.admit([1; 32], "tok_a", now - 10, now).map(drop),
            Ok(())
        );
        guard
            .seen
            .lock()
            .unwrap()
            .first_use
            .get_mut(&[1; 32])
            .unwrap()
            .first = Instant::now() - REUSE_WINDOW - Duration::from_millis(1);
        assert_eq!(
            guard.admit([1; 32], "tok_a", now - 10, now).map(drop),
            Err(SigError::Replayed)
        );
        assert_eq!(
            guard.admit([2; 32], "tok_a", now - 10, now).map(drop),
            Ok(())
        );
    }

    fn distinct(n: usize) -> [u8; 32] {
        let mut signature = [0xee; 32];
        signature[..8].copy_from_slice(&(n as u64).to_le_bytes());
        signature
    }

    #[test]
    fn one_token_signing_as_fast_as_it_can_does_not_lock_others_out() {
        let guard = ReplayGuard::default();
        let now = 1_800_000_000;
        let mut refused = 0;
        for n in 0..CAPACITY {
            match guard.admit(distinct(n), "tok_greedy", now, now).map(drop) {
                Ok(()) => {}
                Err(e) => {
                    assert!(matches!(e, SigError::TooMany(_)), "{e:?}");
                    refused += 1;
                }
            }
        }
        assert_eq!(refused, CAPACITY - PER_TOKEN);
        assert_eq!(
            guard.admit([1; 32], "tok_other", now, now).map(drop),
            Ok(())
        );

        // Once its signatures lapse, the token has its room back.
        {
            let mut seen = guard.seen.lock().unwrap();
            let lapsed: Vec<_> = std::mem::take(&mut seen.lapse)
                .into_iter()
                .map(|Reverse((_, signature))| Reverse((Instant::now(), signature)))
                .collect();
            seen.lapse.extend(lapsed);
        }
        assert_eq!(
            guard
                .admit(distinct(CAPACITY), "tok_greedy", now, now)
                .map(drop),
            Ok(())
        );
        let seen = guard.seen.lock().unwrap();
        assert_eq!((seen.first_use.len(), seen.lapse.len()), (1, 1));
        assert_eq!(seen.held.get("tok_greedy").map(BinaryHeap::len), Some(1));
        assert!(!seen.held.contains_key("tok_other"));
    }

    #[test]
    fn a_token_out_of_room_is_told_when_its_soonest_signature_lapses() {
        let guard = ReplayGuard::default();
        let now = 1_800_000_000;
        // Its oldest request time passes the skew check for 51 more seconds, the rest 101.
        assert_eq!(
            guard
                .admit(distinct(0), "tok_busy", now - 250, now)
                .map(drop),
            Ok(())
        );
        for n in 1..PER_TOKEN {
            assert_eq!(
                guard
                    .admit(distinct(n), "tok_busy", now - 200, now)
                    .map(drop),
                Ok(())
            );
        }
        let Err(SigError::TooMany(secs)) = guard
            .admit(distinct(PER_TOKEN), "tok_busy", now, now)
            .map(drop)
        else {
            panic!("a token past its room was admitted");
        };
        assert!((50..=51).contains(&secs), "{secs}");
        let response = crate::proxy::ProxyError::Signature(SigError::TooMany(secs))
            .into_response(crate::providers::ErrorShape::Aws);
        assert_eq!(response.status(), 429);
        assert_eq!(
            response.headers().get(http::header::RETRY_AFTER),
            Some(&http::HeaderValue::from(secs))
        );
    }

    #[test]
    fn a_full_memory_says_when_its_soonest_signature_lapses() {
        let guard = ReplayGuard::default();
        let now = 1_800_000_000;
        let owners: Vec<String> = (0..CAPACITY / PER_TOKEN)
            .map(|t| format!("tok_{t}"))
            .collect();
        // The last request time passes the skew check for 51 more seconds, the others 101
        // (filling the memory takes seconds, so the soonest to lapse is made last).
        for n in 0..CAPACITY {
            let signed_at = if n == CAPACITY - 1 {
                now - 250
            } else {
                now - 200
            };
            assert_eq!(
                guard
                    .admit(distinct(n), &owners[n / PER_TOKEN], signed_at, now)
                    .map(drop),
                Ok(())
            );
        }
        let full = guard
            .admit(distinct(CAPACITY), "tok_new", now, now)
            .map(drop)
            .unwrap_err();
        let response = crate::proxy::ProxyError::Signature(full)
            .into_response(crate::providers::ErrorShape::Aws);
        assert_eq!(response.status(), 503);
        let secs: u64 = response
            .headers()
            .get(http::header::RETRY_AFTER)
            .expect("a Retry-After")
            .to_str()
            .unwrap()
            .parse()
            .unwrap();
        assert!((50..=51).contains(&secs), "{secs}");
    }
}
