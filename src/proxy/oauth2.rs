//! Minting OAuth2 access tokens from stored refresh tokens (`auth = { scheme = "oauth2" }`).
//!
//! Each secret's access token is kept until shortly before it expires ([`refresh_margin`]).
//! Refreshes are single-flight per secret: concurrent requests wait for the one in flight
//! and share its outcome, so an expired token costs one call to the token endpoint, not a
//! stampede, and a failing endpoint (or a token the scrubber has no room for) fails the
//! waiting requests together rather than one after another. A refresh token the provider
//! rotates is sealed into a new version of the secret, so a restarted broker uses it. Each
//! access token, and each refresh token the provider replaces, is learned by the scrubber
//! before it is used or forgotten.
//!
//! Brokers sharing a store refresh a secret one at a time, under a lease from the store, and
//! each reads the secret again once it holds the lease: a provider that rotates refresh
//! tokens takes each one once, and may revoke every token of the grant if one comes back.
//! A version sealed after a rotation leaves the other brokers' access tokens in use.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use axum::body::Body;
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use bytes::Bytes;
use http::{HeaderValue, Method, Request, StatusCode, Uri, header};
use http_body_util::{BodyExt, Limited};
use percent_encoding::utf8_percent_encode;
use secrecy::{ExposeSecret, SecretString};
use serde_json::Value;
use zeroize::Zeroizing;

use super::rewrite::QUERY_VALUE;
use super::upstream::UpstreamClient;
use crate::keyring::{Keyring, KeyringError, Unlocked};
use crate::providers::oauth2::{ClientAuth, Oauth2Grant, Oauth2Secret};
use crate::scrub::MIN_SECRET_LEN;
use crate::store::{Leases, StoreError, TokenRecord};

/// Longest a token exchange may take, whatever the upstream response timeout: requests for
/// the secret wait on it.
const MAX_EXCHANGE: Duration = Duration::from_secs(30);
/// Largest token endpoint answer read.
const MAX_ANSWER_BYTES: usize = 64 * 1024;
/// The lifetime assumed when the token endpoint gives none (Google's and Microsoft's
/// usual); an upstream 401 drops a token that dies earlier.
const DEFAULT_LIFETIME: Duration = Duration::from_secs(3600);
/// Longest lifetime believed, so a token that "never expires" is still renewed daily.
const MAX_LIFETIME: Duration = Duration::from_secs(24 * 3600);
/// How long past its expiry an access token stays known to the scrubber (late log lines).
const SCRUB_AFTER_EXPIRY: Duration = Duration::from_secs(3600);
/// The least time between two mints a secret makes because the upstream refused its token:
/// a refusal soon after a re-mint is likely the request's, not the token's, and minting on
/// every 401 would let an agent that can provoke them flood the token endpoint. Spaced
/// further when the secret's share of the scrubber's memory needs it (see
/// [`Granted::remint_spacing`]).
const REMINT_BACKOFF: Duration = Duration::from_secs(30);
/// How long a broker's refresh lease outlives it, should it die while refreshing: longer
/// than any refresh, since the next holder must not start while it may still be going.
const LEASE_TTL: Duration = Duration::from_secs(2 * MAX_EXCHANGE.as_secs());
/// How often a broker asks for a lease another one holds.
const LEASE_POLL: Duration = Duration::from_millis(50);
/// Beyond its own exchange timeout, how long a broker waits for another's refresh: time
/// enough for that one to store what it got.
const LEASE_PATIENCE: Duration = Duration::from_secs(5);
/// RFC 6749 §5.2 error codes: the only part of a refusal repeated, since the rest of the
/// endpoint's body may quote what it was sent.
const OAUTH_ERRORS: &[&str] = &[
    "invalid_request",
    "invalid_client",
    "invalid_grant",
    "unauthorized_client",
    "unsupported_grant_type",
    "invalid_scope",
    "temporarily_unavailable",
    "server_error",
];

/// Why the token endpoint gave no usable access token; never quotes its answer.
#[derive(Debug, Clone, thiserror::Error)]
pub enum RefreshError {
    /// No connection, or it broke before an answer.
    #[error("the token endpoint could not be reached")]
    Unreachable,
    /// No complete answer in time.
    #[error("the token endpoint did not answer within {0:?}")]
    Timeout(Duration),
    /// A non-2xx answer, with its OAuth2 error code when it is a standard one.
    #[error(
        "the token endpoint refused the refresh with HTTP {status}{}",
        .error.map(|code| format!(" ({code})")).unwrap_or_default()
    )]
    Refused {
        /// The HTTP status.
        status: u16,
        /// E.g. `invalid_grant`: the refresh token was revoked or has expired.
        error: Option<&'static str>,
    },
    /// A 2xx answer without a usable access token.
    #[error("the token endpoint's answer can't be used: {0}")]
    BadAnswer(&'static str),
    /// Another broker on the store has been refreshing for longer than a refresh may take.
    #[error("another broker has been refreshing this secret's access token for too long")]
    Busy,
}

/// Why no access token could be had.
#[derive(Debug, thiserror::Error)]
pub enum MintError {
    /// The token endpoint failed.
    #[error(transparent)]
    Refresh(#[from] RefreshError),
    /// The stored secret can't be used, or the scrubber can't learn the token.
    #[error(transparent)]
    Keyring(#[from] KeyringError),
}

/// What a successful refresh answered.
struct Granted {
    access_token: SecretString,
    /// How long the token is used for before it is replaced.
    lifetime: Duration,
    /// How long the endpoint said the token is valid (`expires_in`, else the provider's
    /// `token_lifetime`), however long; `None` when neither said.
    valid_for: Option<Duration>,
}

/// An access token and what it is good for.
struct Minted {
    access: Arc<SecretString>,
    /// Versions of the stored secret it answers for: the one it was minted from, and the
    /// one written back with a rotated refresh token.
    versions: Vec<i64>,
    refresh_at: Instant,
    /// How long after the secret's last mint on a 401 a 401 may drop this token; `None`:
    /// never, the token is kept until it is due.
    remint_spacing: Option<Duration>,
}

/// One secret's access token and its refreshes.
#[derive(Default)]
struct Slot {
    /// Read without waiting for a refresh in flight.
    current: Mutex<Option<Arc<Minted>>>,
    /// Held while refreshing; the other requests wait here, then look again.
    refreshing: Arc<tokio::sync::Mutex<Refreshing>>,
    /// Refreshes finished, so a waiter can tell one ended while it waited.
    finished: AtomicU64,
    /// The cached token was dropped after the upstream refused it: the next mint is one
    /// on a 401.
    refused: AtomicBool,
    /// When the last mint on a 401 ended.
    reminted: Mutex<Option<Instant>>,
}

#[derive(Default)]
struct Refreshing {
    /// A refresh token the provider issued in place of the one stored at this version:
    /// used until the keyring serves the written-back version (or for good, if the write
    /// failed, until a restart).
    rotated: Option<(i64, SecretString)>,
    /// How the last refresh failed, for the requests that waited on it.
    failed: Option<Failed>,
}

/// How a refresh failed, told to the requests that waited on it as well: asking the token
/// endpoint again for each of them would fail the same way.
#[derive(Clone)]
enum Failed {
    /// The token endpoint failed.
    Refresh(RefreshError),
    /// The scrubber could not learn the access token: the secret's share is full.
    Unlearned(usize),
}

impl From<Failed> for MintError {
    fn from(failed: Failed) -> Self {
        match failed {
            Failed::Refresh(e) => e.into(),
            Failed::Unlearned(share) => KeyringError::TooManyLearned(share).into(),
        }
    }
}

/// Mints, caches and refreshes access tokens for every OAuth2 secret.
pub struct Minter {
    refresher: Arc<Refresher>,
    slots: Mutex<HashMap<String, Arc<Slot>>>,
}

/// What a refresh needs, shared with the task it runs in.
struct Refresher {
    keyring: Arc<Keyring>,
    client: UpstreamClient,
    timeout: Duration,
    /// Names this broker's refresh leases in a store other brokers share.
    holder: String,
}

impl Minter {
    /// Minting through `client` (the upstream pool: no redirects, no proxy variables),
    /// each exchange bounded by `timeout` (at most [`MAX_EXCHANGE`]).
    pub fn new(keyring: Arc<Keyring>, client: UpstreamClient, timeout: Duration) -> Self {
        Minter {
            refresher: Arc::new(Refresher {
                keyring,
                client,
                timeout: timeout.min(MAX_EXCHANGE),
                holder: crate::tokens::random_base62(16),
            }),
            slots: Mutex::default(),
        }
    }

    /// The access token for `token`'s secret (`stored`), minted unless a fresh one is
    /// cached, with a scrubber that knows it.
    pub async fn unlock(
        &self,
        grant: &Oauth2Grant,
        token: &TokenRecord,
        stored: &Unlocked,
    ) -> Result<Unlocked, MintError> {
        let slot = self.slot(&token.secret_id);
        if let Some(minted) = slot.usable(stored) {
            return Ok(self.unlocked(&minted, stored.version));
        }
        let finished = slot.finished.load(Ordering::Acquire);
        let mut refreshing = Arc::clone(&slot.refreshing).lock_owned().await;
        if let Some(minted) = slot.usable(stored) {
            return Ok(self.unlocked(&minted, stored.version));
        }
        if slot.finished.load(Ordering::Acquire) != finished
            && let Some(failed) = &refreshing.failed
        {
            return Err(failed.clone().into());
        }
        // A task of its own, holding the lock to the end: a client that leaves mid-refresh
        // must not lose a rotated refresh token between the endpoint's answer and the store.
        let refresher = Arc::clone(&self.refresher);
        let (grant, token, secret, version) = (
            grant.clone(),
            token.clone(),
            Arc::clone(&stored.secret),
            stored.version,
        );
        let task = tokio::spawn(async move {
            let result = refresher
                .refresh_shared(&grant, &token, secret, version, &mut refreshing)
                .await;
            refreshing.failed = match &result {
                Err(MintError::Refresh(e)) => Some(Failed::Refresh(e.clone())),
                Err(MintError::Keyring(KeyringError::TooManyLearned(share))) => {
                    Some(Failed::Unlearned(*share))
                }
                _ => None,
            };
            slot.finished.fetch_add(1, Ordering::Release);
            let minted = Arc::new(result?);
            if slot.refused.swap(false, Ordering::AcqRel) {
                *slot.reminted.lock().unwrap_or_else(PoisonError::into_inner) =
                    Some(Instant::now());
            }
            *slot.current.lock().unwrap_or_else(PoisonError::into_inner) =
                Some(Arc::clone(&minted));
            Ok::<_, MintError>(minted)
        });
        let minted = match task.await {
            Ok(result) => result?,
            Err(e) => match e.try_into_panic() {
                Ok(panic) => std::panic::resume_unwind(panic),
                // Only when the runtime shuts down.
                Err(_) => return Err(RefreshError::Unreachable.into()),
            },
        };
        Ok(self.unlocked(&minted, stored.version))
    }

    /// Drop `access` after the upstream refused it, so the next request mints a new one;
    /// unless the secret minted on a 401 too recently (see [`Granted::remint_spacing`]).
    pub fn forget(&self, secret_id: &str, access: &Arc<SecretString>) {
        let slot = self.slot(secret_id);
        let mut current = slot.current.lock().unwrap_or_else(PoisonError::into_inner);
        let reminted = *slot.reminted.lock().unwrap_or_else(PoisonError::into_inner);
        // Only this token: one minted meanwhile by another request stays.
        if current.as_ref().is_some_and(|m| {
            Arc::ptr_eq(&m.access, access)
                && m.remint_spacing
                    .is_some_and(|spacing| reminted.is_none_or(|at| at.elapsed() >= spacing))
        }) {
            *current = None;
            slot.refused.store(true, Ordering::Release);
        }
    }

    fn slot(&self, secret_id: &str) -> Arc<Slot> {
        let mut slots = self.slots.lock().unwrap_or_else(PoisonError::into_inner);
        Arc::clone(slots.entry(secret_id.to_owned()).or_default())
    }

    fn unlocked(&self, minted: &Minted, version: i64) -> Unlocked {
        // Taken now, not with the stored secret: this one knows the access token.
        Unlocked {
            secret: Arc::clone(&minted.access),
            scrubber: self.refresher.keyring.scrubber(),
            version,
        }
    }
}

impl Refresher {
    /// [`Refresher::refresh`], under the store's lease for the secret when other brokers
    /// share the store, from the secret as stored once the lease is held: another broker may
    /// have rotated the refresh token meanwhile. If the store can't be asked, it refreshes
    /// alone from `stored` rather than refuse while the store is down.
    async fn refresh_shared(
        &self,
        grant: &Oauth2Grant,
        token: &TokenRecord,
        stored: Arc<SecretString>,
        version: i64,
        refreshing: &mut Refreshing,
    ) -> Result<Minted, MintError> {
        let Some(leases) = self.keyring.leases() else {
            return self
                .refresh(grant, token, &stored, version, refreshing)
                .await;
        };
        let key = format!("oauth2 refresh {}", token.secret_id);
        let held = self.take_lease(leases, &key).await?;
        let newest = if held && self.keyring.sync().await.is_ok() {
            self.keyring.credential(token).await.ok()
        } else {
            None
        };
        let (secret, from) = match &newest {
            Some(newest) => (&newest.secret, newest.version),
            None => (&stored, version),
        };
        let mut result = self.refresh(grant, token, secret, from, refreshing).await;
        if let Ok(minted) = &mut result
            && from != version
        {
            // Requests that saw the older version take this token too, not one each.
            minted.versions.push(version);
        }
        if held
            && let Err(e) = leases
                .renew_slots(&self.holder, &[(key, 0)], LEASE_TTL)
                .await
        {
            tracing::warn!(secret = %token.secret_name, error = %e, "an OAuth2 refresh lease could not be given back; it lapses by itself");
        }
        result
    }

    /// Hold `key` in the store, waiting while another broker does; false when the store
    /// can't be asked.
    async fn take_lease(&self, leases: &dyn Leases, key: &str) -> Result<bool, RefreshError> {
        let give_up = Instant::now() + self.timeout + LEASE_PATIENCE;
        loop {
            let asked = tokio::time::timeout(
                LEASE_PATIENCE,
                leases.lease_slots(key, &self.holder, 1, 1, LEASE_TTL),
            )
            .await;
            match asked {
                Ok(Ok(0)) if Instant::now() < give_up => tokio::time::sleep(LEASE_POLL).await,
                Ok(Ok(0)) => return Err(RefreshError::Busy),
                Ok(Ok(_)) => return Ok(true),
                Ok(Err(e)) => {
                    tracing::warn!(error = %e, "the store gave no OAuth2 refresh lease; refreshing alone");
                    return Ok(false);
                }
                Err(_) => {
                    tracing::warn!(
                        "the store gave no OAuth2 refresh lease in time; refreshing alone"
                    );
                    return Ok(false);
                }
            }
        }
    }

    /// Mint from `stored` (the secret at `version`), learn what the scrubber must know, and
    /// write a rotated refresh token back.
    async fn refresh(
        &self,
        grant: &Oauth2Grant,
        token: &TokenRecord,
        stored: &SecretString,
        version: i64,
        refreshing: &mut Refreshing,
    ) -> Result<Minted, MintError> {
        let secret = Oauth2Secret::parse(stored.expose_secret()).map_err(|why| {
            tracing::error!(secret = %token.secret_name, "stored secret is unusable for OAuth2: {why}");
            KeyringError::SecretMissing(token.secret_id.clone())
        })?;
        // A rotation older than the stored version has reached the store (or was
        // superseded by an operator's rotation).
        if refreshing
            .rotated
            .as_ref()
            .is_some_and(|(replaced, _)| *replaced < version)
        {
            refreshing.rotated = None;
        }
        let refresh_token = match &refreshing.rotated {
            Some((replaced, rotated)) if *replaced == version => rotated.clone(),
            _ => secret.refresh_token.clone(),
        };
        // Its token would be refused: asking would only spend the endpoint's patience and,
        // where refresh tokens rotate, seal a new version and mask two more values for good.
        self.keyring.check_room(&token.secret_id)?;
        let sent = Instant::now();
        let answer = self.exchange(grant, &secret, &refresh_token).await;
        // Kept even when the rest of the answer can't be used: the provider has taken the
        // old one, so losing the new one would end the grant.
        let rotated = answer
            .as_ref()
            .ok()
            .and_then(|answer| rotated_refresh_token(answer))
            .filter(|new| new.expose_secret() != refresh_token.expose_secret());
        let mut versions = vec![version];
        if let Some(new) = rotated {
            // The replaced token may stay valid at the provider, and the keyring forgets it
            // once it loads the new version. Kept before the access token is learned, which
            // may be refused: the provider has taken the old one.
            self.keyring
                .learn_rotated([refresh_token, new.clone()])
                .await?;
            let value = secret.with_refresh_token(&new);
            match self.keyring.store_new_version(token, version, &value).await {
                Ok(()) => versions.push(version + 1),
                Err(KeyringError::Store(StoreError::NotFound(_))) => {
                    tracing::warn!(secret = %token.secret_name, "the secret was rotated during an OAuth2 refresh; the operator's value is kept");
                }
                Err(e) => {
                    tracing::error!(secret = %token.secret_name, error = %e, "the rotated refresh token could not be stored; it is used from memory until the broker restarts");
                }
            }
            refreshing.rotated = Some((version, new));
        }
        let granted = answer
            .and_then(|answer| parse_granted(&answer, grant.token_lifetime))
            .inspect_err(|e| {
                tracing::warn!(secret = %token.secret_name, provider = %token.provider, "OAuth2 refresh failed: {e}");
            })?;
        if granted.valid_for.is_none() {
            tracing::warn!(
                provider = %token.provider,
                "the token endpoint gave no expires_in and the provider sets no token_lifetime: \
                 the token is replaced after {DEFAULT_LIFETIME:?} and stays masked while the broker runs"
            );
        }
        let expires_at = sent + granted.lifetime;
        let scrub_until = granted.scrub_until(sent);
        let remint_spacing = granted.remint_spacing(self.keyring.learned_share());
        self.keyring
            .learn(
                &token.secret_id,
                [(granted.access_token.clone(), scrub_until)],
            )
            .await?;
        tracing::debug!(secret = %token.secret_name, lifetime = ?granted.lifetime, "minted an OAuth2 access token");
        Ok(Minted {
            access: Arc::new(granted.access_token),
            versions,
            refresh_at: expires_at - refresh_margin(granted.lifetime),
            remint_spacing,
        })
    }

    /// POST the refresh-token grant and read the answer, all within the timeout: the body of
    /// a 2xx answer.
    async fn exchange(
        &self,
        grant: &Oauth2Grant,
        secret: &Oauth2Secret,
        refresh_token: &SecretString,
    ) -> Result<Bytes, RefreshError> {
        // Checked when the provider table loaded.
        let uri: Uri = grant
            .token_url
            .parse()
            .map_err(|_| RefreshError::Unreachable)?;
        let mut form = vec![
            ("grant_type", "refresh_token"),
            ("refresh_token", refresh_token.expose_secret()),
        ];
        let mut request = Request::builder()
            .method(Method::POST)
            .uri(uri)
            .header(header::CONTENT_TYPE, "application/x-www-form-urlencoded")
            .header(header::ACCEPT, "application/json")
            .header(header::ACCEPT_ENCODING, "identity");
        match grant.client_auth {
            ClientAuth::Body => {
                form.push(("client_id", secret.client_id.expose_secret()));
                if let Some(client_secret) = &secret.client_secret {
                    form.push(("client_secret", client_secret.expose_secret()));
                }
            }
            ClientAuth::Basic => {
                request = request.header(header::AUTHORIZATION, basic_client(secret)?);
            }
        }
        if let Some(scope) = &grant.scope {
            form.push(("scope", scope.as_str()));
        }
        let body = form_encode(&form);
        let request = request
            .body(Body::from(body.as_bytes().to_vec()))
            .map_err(|_| RefreshError::Unreachable)?;
        let exchange = async {
            let response = self.client.request(request).await.map_err(|e| {
                tracing::debug!(error = %e, "token endpoint request failed");
                RefreshError::Unreachable
            })?;
            let status = response.status();
            let answer = Limited::new(response.into_body(), MAX_ANSWER_BYTES)
                .collect()
                .await
                .map_err(|_| RefreshError::BadAnswer("it was cut off or too large"))?
                .to_bytes();
            Ok((status, answer))
        };
        let (status, answer) = tokio::time::timeout(self.timeout, exchange)
            .await
            .map_err(|_| RefreshError::Timeout(self.timeout))??;
        if status.is_success() {
            Ok(answer)
        } else {
            Err(refused(status, &answer))
        }
    }
}

impl Slot {
    /// The cached token, if it is fresh and answers for this version of the secret: one it
    /// was minted from, or one another broker sealed after its provider rotated the refresh
    /// token of a version the token answers for.
    fn usable(&self, stored: &Unlocked) -> Option<Arc<Minted>> {
        let mut current = self.current.lock().unwrap_or_else(PoisonError::into_inner);
        let minted = current.as_ref().filter(|m| Instant::now() < m.refresh_at)?;
        if minted.versions.contains(&stored.version) {
            return Some(Arc::clone(minted));
        }
        let rotated = minted.versions.contains(&(stored.version - 1))
            && Oauth2Secret::parse(stored.secret.expose_secret())
                .is_ok_and(|secret| secret.rotated_by_provider);
        if !rotated {
            return None;
        }
        let mut versions = minted.versions.clone();
        versions.push(stored.version);
        let adopted = Arc::new(Minted {
            access: Arc::clone(&minted.access),
            versions,
            ..**minted
        });
        *current = Some(Arc::clone(&adopted));
        Some(adopted)
    }
}

/// How long before expiry a token is replaced: a minute, or a tenth of its life if shorter,
/// so a request never carries a token that dies on the way.
pub fn refresh_margin(lifetime: Duration) -> Duration {
    (lifetime / 10).min(Duration::from_secs(60))
}

/// `application/x-www-form-urlencoded`, every reserved character escaped.
fn form_encode(pairs: &[(&str, &str)]) -> Zeroizing<String> {
    let mut out = Zeroizing::new(String::new());
    for (key, value) in pairs {
        if !out.is_empty() {
            out.push('&');
        }
        out.push_str(key);
        out.push('=');
        out.extend(utf8_percent_encode(value, QUERY_VALUE));
    }
    out
}

/// `Basic base64(urlencoded id ":" urlencoded secret)`, as RFC 6749 §2.3.1 has it.
fn basic_client(secret: &Oauth2Secret) -> Result<HeaderValue, RefreshError> {
    let encode = |s: &SecretString| {
        Zeroizing::new(utf8_percent_encode(s.expose_secret(), QUERY_VALUE).to_string())
    };
    let id = encode(&secret.client_id);
    let password = secret
        .client_secret
        .as_ref()
        .map(encode)
        .unwrap_or_default();
    let pair = Zeroizing::new(format!("{}:{}", *id, *password));
    let mut value = HeaderValue::from_str(&format!("Basic {}", BASE64.encode(pair.as_bytes())))
        .map_err(|_| RefreshError::BadAnswer("the client credentials can't form a header"))?;
    value.set_sensitive(true);
    Ok(value)
}

/// Read a successful answer (RFC 6749 §5.1); `documented`: the lifetime to take when it
/// gives no `expires_in`.
fn parse_granted(answer: &[u8], documented: Option<Duration>) -> Result<Granted, RefreshError> {
    let bad = RefreshError::BadAnswer;
    let Ok(Value::Object(map)) = serde_json::from_slice::<Value>(answer) else {
        return Err(bad("it is not a JSON object"));
    };
    if let Some(kind) = map.get("token_type")
        && !kind
            .as_str()
            .is_some_and(|k| k.eq_ignore_ascii_case("bearer"))
    {
        return Err(bad("the token type is not Bearer"));
    }
    let access_token = answer_token(&map, "access_token")?.ok_or(bad("it has no access_token"))?;
    // A refresh token that could not be masked makes the whole answer unusable.
    answer_token(&map, "refresh_token")?;
    let seconds = match map.get("expires_in") {
        None => documented.map(|lifetime| lifetime.as_secs().max(1)),
        Some(v) => Some(
            v.as_u64()
                // Some endpoints send the number as a string.
                .or_else(|| v.as_str()?.parse().ok())
                .filter(|s| *s > 0)
                .ok_or(bad("expires_in is not a positive number of seconds"))?,
        ),
    };
    Ok(Granted {
        access_token,
        lifetime: seconds.map_or(DEFAULT_LIFETIME, |s| {
            Duration::from_secs(s).min(MAX_LIFETIME)
        }),
        valid_for: seconds.map(Duration::from_secs),
    })
}

/// The token named `key` of an answer, if it has one that can be scrubbed reliably.
fn answer_token(
    map: &serde_json::Map<String, Value>,
    key: &str,
) -> Result<Option<SecretString>, RefreshError> {
    match map.get(key) {
        None => Ok(None),
        Some(Value::String(t))
            if t.len() >= MIN_SECRET_LEN && t.bytes().all(|b| b.is_ascii_graphic()) =>
        {
            Ok(Some(SecretString::from(t.as_str())))
        }
        Some(_) => Err(RefreshError::BadAnswer(
            "a token is not printable ASCII of at least 8 characters without spaces",
        )),
    }
}

/// The refresh token a successful answer rotated in, whether or not the rest of it can be
/// used.
fn rotated_refresh_token(answer: &[u8]) -> Option<SecretString> {
    let Ok(Value::Object(map)) = serde_json::from_slice::<Value>(answer) else {
        return None;
    };
    answer_token(&map, "refresh_token").ok().flatten()
}

impl Granted {
    /// Until when the scrubber must know the access token minted at `sent`: an hour past
    /// the expiry the endpoint gave, not the shorter time the broker uses it for (the
    /// provider still accepts it until then). `None`, kept while the broker runs, when the
    /// endpoint gave no lifetime or one too far off to count to.
    fn scrub_until(&self, sent: Instant) -> Option<Instant> {
        sent.checked_add(self.masked_for()?)
    }

    /// How long the scrubber knows the token; `None`: while the broker runs.
    fn masked_for(&self) -> Option<Duration> {
        self.valid_for?.checked_add(SCRUB_AFTER_EXPIRY)
    }

    /// How far apart the secret's mints on a 401 must be while this token is current, for
    /// their tokens and those minted when due, all masked for as long as this one, to fit in
    /// the secret's `share` of the scrubber's memory: else an agent that provokes 401s
    /// fills it, and the secret can't mint for anyone until the tokens expire. `None`
    /// (never) when the tokens minted when due leave no room, or are masked for good.
    fn remint_spacing(&self, share: usize) -> Option<Duration> {
        let masked = self.masked_for()?;
        let due_every = self.lifetime - refresh_margin(self.lifetime);
        // Those minted when due that are masked at once, and one more for the mint under way.
        let due = masked.as_millis().div_ceil(due_every.as_millis().max(1)) + 1;
        let spare = u128::try_from(share).ok()?.checked_sub(due)?;
        let spare = u32::try_from(spare).ok().filter(|n| *n > 0)?;
        Some((masked / spare).max(REMINT_BACKOFF))
    }
}

/// A refusal, naming the standard error code if the answer carries one.
fn refused(status: StatusCode, answer: &[u8]) -> RefreshError {
    let code = serde_json::from_slice::<Value>(answer)
        .ok()
        .and_then(|v| v.get("error")?.as_str().map(str::to_owned));
    RefreshError::Refused {
        status: status.as_u16(),
        error: code.and_then(|c| OAUTH_ERRORS.iter().copied().find(|known| *known == c)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answers_give_the_token_its_lifetime_and_a_rotated_refresh_token() {
        let granted = parse_granted(
            br#"{"access_token": "ya29.access-1", "token_type": "Bearer", "expires_in": 3599, "scope": "x"}"#,
            None,
        )
        .unwrap();
        assert_eq!(granted.access_token.expose_secret(), "ya29.access-1");
        assert_eq!(granted.lifetime, Duration::from_secs(3599));
        assert_eq!(granted.valid_for, Some(Duration::from_secs(3599)));
        assert!(rotated_refresh_token(br#"{"access_token": "ya29.access-1"}"#).is_none());
        let answer = br#"{"access_token": "ya29.access-2", "token_type": "bearer", "expires_in": "60", "refresh_token": "refresh-new"}"#;
        let rotated = parse_granted(answer, None).unwrap();
        assert_eq!(rotated.lifetime, Duration::from_secs(60));
        assert_eq!(
            rotated_refresh_token(answer)
                .as_ref()
                .map(|t| t.expose_secret()),
            Some("refresh-new")
        );
        // Taken from an answer whose access token can't be used, too.
        let unusable = br#"{"access_token": "ya29.access-3", "expires_in": 0, "refresh_token": "refresh-newer"}"#;
        assert!(parse_granted(unusable, None).is_err());
        assert_eq!(
            rotated_refresh_token(unusable)
                .as_ref()
                .map(|t| t.expose_secret()),
            Some("refresh-newer")
        );
        let bare = parse_granted(br#"{"access_token": "ya29.access-3"}"#, None).unwrap();
        assert_eq!(bare.valid_for, None);
        assert_eq!(bare.lifetime, DEFAULT_LIFETIME);
        let forever = parse_granted(
            br#"{"access_token": "ya29.access-4", "expires_in": 99999999999}"#,
            None,
        )
        .unwrap();
        assert_eq!(forever.lifetime, MAX_LIFETIME);
        // The provider's documented lifetime stands in for a missing expires_in, as if given.
        let documented = Some(Duration::from_secs(600));
        let bare = parse_granted(br#"{"access_token": "ya29.access-5"}"#, documented).unwrap();
        assert_eq!(bare.valid_for, documented);
        assert_eq!(bare.lifetime, Duration::from_secs(600));
        assert!(bare.scrub_until(Instant::now()).is_some());
        let given = br#"{"access_token": "ya29.access-6", "expires_in": 60}"#;
        assert_eq!(
            parse_granted(given, documented).unwrap().valid_for,
            Some(Duration::from_secs(60))
        );
    }

    #[test]
    fn the_scrubber_knows_a_token_for_as_long_as_the_provider_accepts_it() {
        let sent = Instant::now();
        let scrub_until = |answer: &[u8]| parse_granted(answer, None).unwrap().scrub_until(sent);
        let hour = br#"{"access_token": "ya29.access-1", "expires_in": 3600}"#;
        assert_eq!(scrub_until(hour), Some(sent + 2 * SCRUB_AFTER_EXPIRY));
        // Used for a day at most, valid for thirty: masked for all thirty.
        let month = br#"{"access_token": "ya29.access-2", "expires_in": 2592000}"#;
        assert_eq!(
            scrub_until(month),
            Some(sent + Duration::from_secs(2_592_000) + SCRUB_AFTER_EXPIRY)
        );
        for unbounded in [
            &br#"{"access_token": "ya29.access-3"}"#[..],
            br#"{"access_token": "ya29.access-4", "expires_in": 18446744073709551615}"#,
        ] {
            assert_eq!(scrub_until(unbounded), None);
        }
    }

    #[test]
    fn unusable_answers_are_refused_without_quoting_them() {
        for answer in [
            &br#"not json ya29.secret"#[..],
            br#"{"token_type": "Bearer"}"#,
            br#"{"access_token": "ya29.secret", "token_type": "mac"}"#,
            br#"{"access_token": "short"}"#,
            br#"{"access_token": "ya29 secret"}"#,
            br#"{"access_token": "ya29.secret", "expires_in": 0}"#,
            br#"{"access_token": "ya29.secret", "expires_in": -5}"#,
            br#"{"access_token": "ya29.secret", "refresh_token": 7}"#,
        ] {
            let Err(e) = parse_granted(answer, None) else {
                panic!("accepted {}", String::from_utf8_lossy(answer));
            };
            assert!(!e.to_string().contains("ya29"), "{e}");
        }
        let e = refused(
            StatusCode::BAD_REQUEST,
            br#"{"error": "invalid_grant", "error_description": "token ya29.secret revoked"}"#,
        );
        assert_eq!(
            e.to_string(),
            "the token endpoint refused the refresh with HTTP 400 (invalid_grant)"
        );
        let e = refused(
            StatusCode::INTERNAL_SERVER_ERROR,
            br#"{"error": "refresh-token-1//0g-echoed"}"#,
        );
        assert_eq!(
            e.to_string(),
            "the token endpoint refused the refresh with HTTP 500"
        );
    }

    #[test]
    fn mints_on_401s_are_spaced_for_the_share_to_hold_them_with_the_ones_due() {
        let spacing = |answer: &[u8], share: usize| {
            parse_granted(answer, None).unwrap().remint_spacing(share)
        };
        let hour = br#"{"access_token": "ya29.access-1", "expires_in": 3600}"#;
        // Masked for two hours, three minted when due at once: 252 places spare, or 12.
        assert_eq!(spacing(hour, 256), Some(REMINT_BACKOFF));
        assert_eq!(spacing(hour, 16), Some(Duration::from_secs(600)));
        // Those minted when due fill the share by themselves, or stay masked for good.
        let seconds = br#"{"access_token": "ya29.access-2", "expires_in": 2}"#;
        assert_eq!(spacing(seconds, 16), None);
        assert_eq!(spacing(br#"{"access_token": "ya29.access-3"}"#, 256), None);
    }

    #[test]
    fn tokens_are_replaced_a_minute_or_a_tenth_of_their_life_early() {
        assert_eq!(
            refresh_margin(Duration::from_secs(3600)),
            Duration::from_secs(60)
        );
        assert_eq!(
            refresh_margin(Duration::from_secs(10)),
            Duration::from_secs(1)
        );
    }

    #[test]
    fn client_credentials_are_form_encoded_in_the_body_or_in_basic() {
        let body = form_encode(&[
            ("grant_type", "refresh_token"),
            ("refresh_token", "1//0g+a/b="),
        ]);
        assert_eq!(
            body.as_str(),
            "grant_type=refresh_token&refresh_token=1%2F%2F0g%2Ba%2Fb%3D"
        );
        let secret = Oauth2Secret {
            client_id: SecretString::from("id:1"),
            client_secret: Some(SecretString::from("s/cret?x")),
            refresh_token: SecretString::from("refresh-1"),
            rotated_by_provider: false,
        };
        let header = basic_client(&secret).unwrap();
        assert!(header.is_sensitive());
        assert_eq!(
            header.to_str().unwrap(),
            format!("Basic {}", BASE64.encode("id%3A1:s%2Fcret%3Fx"))
        );
    }
}
