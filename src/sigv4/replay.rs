//! Refusing replayed signed requests. The broker re-signs what it forwards with a fresh
//! time, so without its own check a captured agent request would stay good forever.
//!
//! Two rules: the request time must be within [`MAX_SKEW_SECS`] of the broker's clock, and
//! a signature is good for [`REUSE_WINDOW`] after the broker first sees it. SDKs sign at
//! one-second resolution and don't sign their per-call ids, so identical calls made in the
//! same second share a signature; a copy sent later is a replay.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use super::SigError;

/// Largest distance between the request time and the broker's clock (AWS allows 15 min).
pub const MAX_SKEW_SECS: i64 = 5 * 60;
/// How long after its first use a signature may be used again.
pub const REUSE_WINDOW: Duration = Duration::from_secs(2);
/// Signatures remembered at most; beyond it new signed requests are refused (fail closed).
const CAPACITY: usize = 1 << 20;

/// How often signatures that can no longer pass the skew check are forgotten.
const PRUNE_EVERY: Duration = Duration::from_secs(10);

/// Signatures seen within the skew window.
#[derive(Default)]
pub struct ReplayGuard {
    seen: Mutex<Seen>,
}

#[derive(Default)]
struct Seen {
    first_use: HashMap<[u8; 32], Instant>,
    pruned_at: Option<Instant>,
}

impl Seen {
    /// Forget signatures whose time can't pass the skew check any more: one first seen at
    /// `f` was signed no earlier than `f - skew`, so it fails from `f + 2 × skew` on.
    fn prune(&mut self, at: Instant) {
        let horizon = Duration::from_secs(u64::try_from(2 * MAX_SKEW_SECS).unwrap_or(600));
        self.first_use
            .retain(|_, first| at.duration_since(*first) <= horizon);
        self.pruned_at = Some(at);
    }
}

impl ReplayGuard {
    /// Admit a request signed at `signed_at` (Unix seconds) with `signature`, at `now`.
    pub fn admit(&self, signature: [u8; 32], signed_at: i64, now: i64) -> Result<(), SigError> {
        if (now - signed_at).abs() > MAX_SKEW_SECS {
            return Err(SigError::Skewed(MAX_SKEW_SECS / 60));
        }
        let at = Instant::now();
        let mut seen = self
            .seen
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(first) = seen.first_use.get(&signature) {
            return if at.duration_since(*first) <= REUSE_WINDOW {
                Ok(())
            } else {
                Err(SigError::Replayed)
            };
        }
        if seen
            .pruned_at
            .is_none_or(|last| at.duration_since(last) >= PRUNE_EVERY)
            || seen.first_use.len() >= CAPACITY
        {
            seen.prune(at);
        }
        if seen.first_use.len() >= CAPACITY {
            return Err(SigError::Overloaded);
        }
        seen.first_use.insert(signature, at);
        Ok(())
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
            guard.admit([1; 32], now - 301, now),
            Err(SigError::Skewed(5))
        );
        assert_eq!(
            guard.admit([1; 32], now + 301, now),
            Err(SigError::Skewed(5))
        );
        assert_eq!(guard.admit([1; 32], now - 10, now), Ok(()));
        // The same second's identical call passes; a copy after the window does not.
        assert_eq!(guard.admit([1; 32], now - 10, now), Ok(()));
        guard.seen.lock().unwrap().first_use.insert(
            [1; 32],
            Instant::now() - REUSE_WINDOW - Duration::from_millis(1),
        );
        assert_eq!(guard.admit([1; 32], now - 10, now), Err(SigError::Replayed));
        assert_eq!(guard.admit([2; 32], now - 10, now), Ok(()));
    }
}
