//! Nothing a token opened outlives it: a response still streaming stops at its next chunk,
//! and a WebSocket session closes, once the token (or an ancestor) is revoked, expires or is
//! removed.
//!
//! Watching costs little while nothing changes: the token is looked up again (through the
//! keyring's cache) after the keyring has dropped its cached tokens, which it does on every
//! change in the store, once the chain's earliest expiry has passed, and every
//! [`STALE_AFTER`]. The last is for outages: a store that stops answering announces no
//! change, so only looking again finds that the keyring no longer vouches for its cache
//! (stale, or past the outage grace), which would otherwise let a session outlive the grace
//! (and any revocation made meanwhile) for as long as the outage lasts.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use tokio::sync::watch;
use tokio::time::Instant;

use super::{ProxyError, enforce, keyring_error};
use crate::clock;
use crate::keyring::{Keyring, STALE_AFTER, TokenEntry};
use crate::scrub::BoxError;
use crate::tokens::TokenHash;

/// A token whose streams and sessions are watched.
pub struct TokenWatch {
    keyring: Arc<Keyring>,
    hash: TokenHash,
    changes: watch::Receiver<()>,
    /// The chain's earliest expiry (Unix seconds).
    expires_at: Option<i64>,
    /// When the token was last looked up.
    checked: Instant,
}

/// The earliest expiry along a token's chain.
fn earliest_expiry(entry: &TokenEntry) -> Option<i64> {
    entry
        .chain()
        .filter_map(|link| link.record.expires_at)
        .min()
}

impl TokenWatch {
    /// Watch the token with this hash, whose entry was looked up after `changes` was taken
    /// from `keyring`.
    pub fn new(
        keyring: &Arc<Keyring>,
        changes: watch::Receiver<()>,
        hash: TokenHash,
        entry: &TokenEntry,
    ) -> Self {
        TokenWatch {
            keyring: Arc::clone(keyring),
            hash,
            changes,
            expires_at: earliest_expiry(entry),
            checked: Instant::now(),
        }
    }

    /// Whether the token must be looked up again before more is relayed.
    fn due(&self) -> bool {
        // A keyring gone away can't vouch for the token any more.
        self.changes.has_changed().unwrap_or(true)
            || self.expires_at.is_some_and(|at| clock::now() >= at)
            || self.checked.elapsed() >= STALE_AFTER
    }

    /// Look the token up again: `Err` says why it may no longer be used.
    async fn recheck(mut self) -> (Self, Result<(), ProxyError>) {
        self.changes.mark_unchanged();
        self.checked = Instant::now();
        let alive = match self.keyring.token_by_hash(self.hash).await {
            Ok(entry) => {
                self.expires_at = earliest_expiry(&entry);
                enforce::check_lifetimes(&entry, clock::now())
            }
            Err(e) => Err(keyring_error(e)),
        };
        (self, alive)
    }

    /// Resolves once the token may no longer be used, with the reason.
    pub async fn ended(mut self) -> ProxyError {
        loop {
            let until_expiry = self
                .expires_at
                .map(|at| Duration::from_secs(u64::try_from(at - clock::now()).unwrap_or(0)));
            let next_look = until_expiry.map_or(STALE_AFTER, |expiry| expiry.min(STALE_AFTER));
            tokio::select! {
                changed = self.changes.changed() => {
                    if changed.is_err() {
                        return ProxyError::StoreUnavailable;
                    }
                }
                () = tokio::time::sleep(next_look) => {}
            }
            let alive;
            (self, alive) = self.recheck().await;
            if let Err(reason) = alive {
                return reason;
            }
        }
    }
}

type Recheck = Pin<Box<dyn Future<Output = (TokenWatch, Result<(), ProxyError>)> + Send>>;

/// Where a watched body is.
enum State {
    Streaming(TokenWatch),
    /// A frame waits while the token is looked up again.
    Rechecking(Recheck, Frame<Bytes>),
    Ended,
}

/// A response body that ends, with an error, at its first chunk after its token may no
/// longer be used.
pub struct WatchedBody<B> {
    inner: B,
    state: State,
}

impl<B> WatchedBody<B> {
    /// Wrap `inner`, watching `token`.
    pub fn new(inner: B, token: TokenWatch) -> Self {
        WatchedBody {
            inner,
            state: State::Streaming(token),
        }
    }
}

impl<B> Body for WatchedBody<B>
where
    B: Body<Data = Bytes, Error = BoxError> + Unpin,
{
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = &mut *self;
        loop {
            match std::mem::replace(&mut this.state, State::Ended) {
                State::Ended => return Poll::Ready(None),
                State::Rechecking(mut recheck, frame) => match recheck.as_mut().poll(cx) {
                    Poll::Pending => {
                        this.state = State::Rechecking(recheck, frame);
                        return Poll::Pending;
                    }
                    Poll::Ready((token, Ok(()))) => {
                        this.state = State::Streaming(token);
                        return Poll::Ready(Some(Ok(frame)));
                    }
                    Poll::Ready((_, Err(reason))) => {
                        tracing::info!(%reason, "a streaming response was cut off: its token may no longer be used");
                        return Poll::Ready(Some(Err(reason.into())));
                    }
                },
                State::Streaming(token) => match Pin::new(&mut this.inner).poll_frame(cx) {
                    Poll::Ready(Some(Ok(frame))) if token.due() => {
                        this.state = State::Rechecking(Box::pin(token.recheck()), frame);
                    }
                    other => {
                        this.state = State::Streaming(token);
                        return other;
                    }
                },
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        match &self.state {
            State::Streaming(_) => self.inner.is_end_stream(),
            State::Rechecking(..) => false,
            State::Ended => true,
        }
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}
