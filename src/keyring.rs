//! The keyring turns an agent token into its token record and the real credential,
//! keeping both in memory so a warm request never touches the store.
//!
//! Every secret is decrypted and loaded at start-up and whenever the store changes, because
//! the scrubber must know all of them (not only the one a request uses). A credential is
//! only ever handed out after the scrubber in force knows it; so is a value derived from one
//! (an OAuth2 access token), which is [learned](Keyring::learn) first. Tokens are looked up
//! lazily and cached.
//!
//! Running brokers learn about changes made by other processes (the CLI, other replicas) by
//! polling the store's revision counter, and at once where the store announces changes
//! ([`Store::changes`]); any change reloads the secrets and drops cached tokens. If the store
//! stops answering, cached entries go stale after [`STALE_AFTER`] and tokens not cached are
//! refused: fail closed. An operator may choose an outage grace instead
//! ([`Keyring::with_outage_grace`]): cached tokens keep being served for that long after the
//! last sync, as long as the store fails to answer (not once it has answered that something
//! changed).

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError, RwLock};
use std::time::{Duration, Instant};

use secrecy::{ExposeSecret, SecretString};
use zeroize::Zeroizing;

use crate::clock;
use crate::policy::PolicySpec;
use crate::scrub::{MIN_SECRET_LEN, Redactor, ScrubError, Scrubber};
use crate::store::{Leases, SecretRecord, Store, StoreError, TokenRecord, timed};
use crate::tokens::{ParsedToken, TokenHash};
use crate::vault::{SealedSecret, SecretIdentity, Vault, VaultError};

/// How often the store's revision counter is polled. Announced changes are picked up at
/// once, but announcements can be missed, so polling stays what the bound rests on.
pub const SYNC_INTERVAL: Duration = Duration::from_millis(250);
/// Cached entries are not trusted once the last successful sync is older than this, so a
/// revocation is honoured within a second even when polls fail or stall.
pub const STALE_AFTER: Duration = Duration::from_millis(750);
/// How often last-use times are written back to the store.
const USE_FLUSH_INTERVAL: Duration = Duration::from_secs(5);
/// Cached tokens kept at most; past this a tenth of them make room.
const MAX_TOKENS: usize = 100_000;
/// Values learned for one secret (the access tokens minted from it) that are kept at most:
/// with `n` secrets loaded, each gets `MAX_LEARNED / n` of them, within the bounds below.
/// Shares never add up past the total (or past [`MIN_SHARE`] per secret, with very many
/// secrets), so a secret whose agents make it mint again and again fills its own share, not
/// the room the others need. Rotated secrets' old values are kept past any share: they come
/// from an operator's (or a provider's) rotations, which are few, not from agents' requests.
/// So are values masked for good (access tokens whose endpoint gave no lifetime): counted,
/// they would close the share for good once it filled, and they are minted only when due,
/// never on agents' 401s.
const MAX_LEARNED: usize = 4096;
/// The most one secret's share may be, however few secrets are loaded.
const MAX_SHARE: usize = MAX_LEARNED / 16;
/// The least one secret's share may be, however many secrets are loaded: room for the
/// access tokens that overlap while each stays masked for an hour past its expiry, even
/// when they last only five minutes.
const MIN_SHARE: usize = 16;

/// How many learned values one secret may keep while `secrets` are loaded.
fn share_of(secrets: usize) -> usize {
    (MAX_LEARNED / secrets.max(1)).clamp(MIN_SHARE, MAX_SHARE)
}

/// Why a token or credential could not be resolved.
#[derive(Debug, thiserror::Error)]
pub enum KeyringError {
    /// No token with this hash exists.
    #[error("unknown token")]
    UnknownToken,
    /// The store could not answer.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The last sync found the store not answering, so a token not cached isn't asked for.
    #[error("the store is not answering")]
    StoreDown,
    /// The secret's provider is not the token's: the store was tampered with.
    #[error("secret {0} does not belong to the token's provider")]
    ProviderMismatch(String),
    /// The token's secret is gone or could not be decrypted.
    #[error("secret {0} is not available")]
    SecretMissing(String),
    /// The scrubber could not be built, so no secret may be used.
    #[error(transparent)]
    Scrubber(#[from] ScrubError),
    /// The scrubber's build was cut short (the runtime is shutting down).
    #[error("the scrubber's build did not finish")]
    ScrubberUnfinished,
    /// A token's chain of parents is longer than allowed.
    #[error("token derivation chain is too deep")]
    TooDeep,
    /// A new version of a secret could not be sealed.
    #[error(transparent)]
    Seal(#[from] VaultError),
    /// The scrubber already knows as many values still valid for this secret as its share
    /// allows, so a new one (a minted access token) can't be learned, and is not used.
    #[error(
        "the scrubber already knows as many values still valid for this secret as it may \
         ({0}); no more until some expire"
    )]
    TooManyLearned(usize),
}

impl KeyringError {
    /// Whether the store failed to answer at all (as opposed to answering no, or answering
    /// something that can't be used).
    fn is_outage(&self) -> bool {
        matches!(
            self,
            KeyringError::StoreDown
                | KeyringError::Store(StoreError::Database(_) | StoreError::Timeout)
        )
    }
}

/// A token ready to be checked: its record, its policies, and its parent's entry.
#[derive(Debug)]
pub struct TokenEntry {
    /// The stored token.
    pub record: TokenRecord,
    /// Its policies: its own, then its named policy. An unreadable or missing one is an
    /// `Err` naming it, which refuses every request (fail closed).
    pub policies: Vec<Result<Arc<PolicySpec>, String>>,
    /// The token it was derived from.
    pub parent: Option<Arc<TokenEntry>>,
}

impl TokenEntry {
    fn new(
        record: TokenRecord,
        parent: Option<Arc<TokenEntry>>,
        named: &HashMap<(String, String), Arc<PolicySpec>>,
    ) -> Self {
        let mut policies = Vec::new();
        if let Some(json) = &record.policy {
            policies.push(
                serde_json::from_str::<PolicySpec>(json)
                    .map(Arc::new)
                    .map_err(|_| format!("the policy of token {} can't be read", record.id)),
            );
        }
        if let Some(name) = &record.policy_name {
            policies.push(
                named
                    .get(&(record.tenant.clone(), name.clone()))
                    .cloned()
                    .ok_or_else(|| format!("the named policy `{name}` does not exist")),
            );
        }
        TokenEntry {
            record,
            policies,
            parent,
        }
    }

    /// This token and its ancestors, nearest first.
    pub fn chain(&self) -> impl Iterator<Item = &TokenEntry> {
        std::iter::successors(Some(self), |e| e.parent.as_deref())
    }

    /// The token the operator issued, at the end of the chain: limits an agent could
    /// multiply by deriving tokens are counted against it.
    pub fn root(&self) -> &TokenEntry {
        self.chain().last().unwrap_or(self)
    }
}

/// A decrypted secret, with the provider its ciphertext is bound to.
#[derive(Clone)]
struct Credential {
    provider: String,
    version: i64,
    value: Arc<SecretString>,
    /// (tenant, name), for capabilities, which name their secret.
    named: (String, String),
    /// What it was opened from: the same row sealed the same way opens to the same value.
    sealed: SealedSecret,
}

/// A credential ready to inject, with a scrubber that knows it (and every other secret
/// loaded with it), taken from one consistent snapshot.
pub struct Unlocked {
    /// The real credential.
    pub secret: Arc<SecretString>,
    /// Scrubber for the response this credential's request gets.
    pub scrubber: Arc<Scrubber>,
    /// The stored secret's version, so state derived from it can tell it was rotated.
    pub version: i64,
}

/// A value the scrubber must know that is no stored secret: a minted access token, or a
/// refresh token the provider replaced (which may stay valid at the provider for a while).
struct Learned {
    value: SecretString,
    /// Forgotten after this; `None`: kept while the broker runs.
    until: Option<Instant>,
    /// The secret it was learned for, when it counts against that secret's share.
    owner: Option<String>,
}

/// How many learned values may be kept once new ones are added.
#[derive(Clone, Copy)]
enum Room<'a> {
    /// Any number: values rotations replaced, which are few and must never be refused.
    Unbounded,
    /// `share` values for the secret `owner` (see [`share_of`]).
    Shared { owner: &'a str, share: usize },
}

#[derive(Default)]
struct Cache {
    /// Bumped on every clear, so a lookup that raced a clear doesn't re-insert stale data.
    generation: u64,
    tokens: HashMap<TokenHash, Arc<TokenEntry>>,
    /// Named policies by (tenant, name).
    policies: HashMap<(String, String), Arc<PolicySpec>>,
    /// Every usable secret by id.
    credentials: HashMap<String, Credential>,
    /// Knows every secret in `credentials`; replaced together with them.
    scrubber: Arc<Scrubber>,
}

/// What the scrubber looks for of one stored secret: the value, and the parts that travel
/// on their own. A JSON object (an AWS key pair, OAuth client credentials) gives each of
/// its strings, and itself written compactly rather than as stored: line breaks or spaces
/// of a pretty-printed value would make the scrubber hold back every streamed event that
/// ends in one. A URL (an SMTP server, a database connection string) gives its passwords,
/// as written and decoded.
fn scrubbed_values(value: &str) -> Vec<Zeroizing<String>> {
    if let Ok(fields) = serde_json::from_str::<serde_json::Map<String, serde_json::Value>>(value) {
        let compact = serde_json::to_string(&fields).unwrap_or_default();
        return std::iter::once(Zeroizing::new(compact))
            .chain(fields.into_iter().filter_map(|(_, v)| match v {
                serde_json::Value::String(text) => Some(Zeroizing::new(text)),
                _ => None,
            }))
            .collect();
    }
    let mut values = vec![Zeroizing::new(value.to_owned())];
    for password in url_passwords(value) {
        values.push(Zeroizing::new(password.to_owned()));
        values.push(decoded(password));
    }
    values
}

/// Refuse a URL secret with a password too short for the scrubber to mask on its own (see
/// [`scrubbed_values`]): a server that quotes the login back would show it. An empty one is
/// no password. Refuse one, too, whose passwords the SMTP and SQL clients (which read URLs
/// as the `url` crate does) would read otherwise than the scrubber: they would send a
/// password it doesn't know. Errors never quote the value.
pub fn check_url_passwords(value: &str) -> Result<(), String> {
    let too_short = |password: &str| {
        let len = percent_encoding::percent_decode_str(password).count();
        (1..MIN_SECRET_LEN).contains(&len)
    };
    if url_passwords(value).any(too_short) {
        return Err(format!(
            "its password is shorter than {MIN_SECRET_LEN} characters, too short to be scrubbed reliably"
        ));
    }
    let Ok(url) = url::Url::parse(value) else {
        return Ok(());
    };
    let known: Vec<_> = url_passwords(value).map(decoded).collect();
    let in_query = url
        .query_pairs()
        .filter(|(key, _)| key == "password")
        .map(|(_, password)| Zeroizing::new(password.into_owned()));
    let mut read = url.password().map(decoded).into_iter().chain(in_query);
    if read.any(|p| !known.contains(&p)) {
        return Err(
            "its password would be read differently by the client than by the scrubber (a tab \
             or line break, a `+` or an encoded `password` key): percent-encode what isn't a \
             letter or digit"
                .to_owned(),
        );
    }
    Ok(())
}

/// A URL's password percent-decoded, as its client sends it.
fn decoded(password: &str) -> Zeroizing<String> {
    Zeroizing::new(
        percent_encoding::percent_decode_str(password)
            .decode_utf8_lossy()
            .into_owned(),
    )
}

/// The passwords in `scheme://user:password@host/…?password=…`, as written; read in place
/// so that no other copy of the value is made.
fn url_passwords(value: &str) -> impl Iterator<Item = &str> {
    let rest = value.split_once("://").map_or("", |(_, rest)| rest);
    let (before_fragment, _) = rest.split_once('#').unwrap_or((rest, ""));
    let (address, query) = before_fragment
        .split_once('?')
        .unwrap_or((before_fragment, ""));
    let authority = address.split('/').next().unwrap_or("");
    let in_userinfo = authority
        .rsplit_once('@')
        .and_then(|(userinfo, _)| userinfo.split_once(':'))
        .map(|(_, password)| password);
    let in_query = query
        .split('&')
        .filter_map(|pair| pair.strip_prefix("password="));
    in_userinfo.into_iter().chain(in_query)
}

/// Add `values` to `learned`, after dropping those past their deadlines; a value known
/// already keeps the later deadline. Nothing is added if that would keep more than `room`
/// allows: forgetting a value before its deadline instead could let it reach an agent
/// unmasked.
fn remember(
    learned: &mut Vec<Learned>,
    values: impl IntoIterator<Item = (SecretString, Option<Instant>)>,
    room: Room<'_>,
) -> Result<(), KeyringError> {
    let now = Instant::now();
    learned.retain(|l| l.until.is_none_or(|until| until > now));
    let owner = match room {
        Room::Unbounded => None,
        Room::Shared { owner, .. } => Some(owner),
    };
    let mut new: Vec<Learned> = Vec::new();
    for (value, until) in values {
        let known = learned
            .iter_mut()
            .chain(&mut new)
            .find(|l| l.value.expose_secret() == value.expose_secret());
        match known {
            // A later deadline only masks for longer, so it is kept even if the rest is refused.
            Some(known) => {
                known.until = known.until.zip(until).map(|(a, b)| a.max(b));
                if known.until.is_none() {
                    known.owner = None;
                }
            }
            None => new.push(Learned {
                value,
                until,
                owner: owner.filter(|_| until.is_some()).map(str::to_owned),
            }),
        }
    }
    if let Room::Shared { owner, share } = room
        && owned_by(learned.iter().chain(&new), owner, now) > share
    {
        return Err(KeyringError::TooManyLearned(share));
    }
    learned.append(&mut new);
    Ok(())
}

/// How many of `learned`, still masked at `now`, count against `owner`'s share.
fn owned_by<'a>(learned: impl Iterator<Item = &'a Learned>, owner: &str, now: Instant) -> usize {
    learned
        .filter(|l| l.owner.as_deref() == Some(owner) && l.until.is_none_or(|until| until > now))
        .count()
}

/// Token and credential resolution with caching and store synchronisation.
pub struct Keyring {
    store: Arc<dyn Store>,
    vault: Arc<Vault>,
    redactor: Arc<Redactor>,
    cache: RwLock<Cache>,
    /// Serialises reloads, so concurrent misses cause one reload, not a stampede.
    reload: tokio::sync::Mutex<()>,
    revision: AtomicI64,
    started: Instant,
    /// Milliseconds after `started` of the last successful sync, plus one (0: never).
    last_sync_ms: AtomicU64,
    /// The last sync failed because the store did not answer.
    store_down: AtomicBool,
    /// How long after the last sync cached tokens are still served while the store is down.
    outage_grace: Duration,
    uses: Mutex<HashMap<String, i64>>,
    /// Changed only under `reload`, so every scrubber built includes all of it.
    learned: Mutex<Vec<Learned>>,
    /// Told each time cached tokens are dropped (something changed in the store), so what a
    /// token keeps open can look it up again.
    changes: tokio::sync::watch::Sender<()>,
}

impl Keyring {
    /// A keyring over `store`, decrypting with `vault` and keeping `redactor` in step with
    /// the secrets; call [`Keyring::sync`] before serving.
    pub fn new(store: Arc<dyn Store>, vault: Arc<Vault>, redactor: Arc<Redactor>) -> Self {
        Keyring {
            store,
            vault,
            redactor,
            cache: RwLock::default(),
            reload: tokio::sync::Mutex::new(()),
            revision: AtomicI64::new(i64::MIN),
            started: Instant::now(),
            last_sync_ms: AtomicU64::new(0),
            store_down: AtomicBool::new(false),
            outage_grace: Duration::ZERO,
            uses: Mutex::default(),
            learned: Mutex::default(),
            changes: tokio::sync::watch::Sender::new(()),
        }
    }

    /// Keep serving cached tokens while the store doesn't answer, for up to `grace` after
    /// the last successful sync (`store.outage_grace`). Zero, the default, fails closed
    /// after [`STALE_AFTER`].
    pub fn with_outage_grace(mut self, grace: Duration) -> Self {
        self.outage_grace = grace;
        self
    }

    /// Resolve a well-formed token to its entry (revoked and expired ones included: policy decides).
    pub async fn token(&self, parsed: &ParsedToken<'_>) -> Result<Arc<TokenEntry>, KeyringError> {
        self.token_by_hash(parsed.hash()).await
    }

    /// Resolve a token by its hash, as [`Keyring::token`] does.
    pub async fn token_by_hash(&self, hash: TokenHash) -> Result<Arc<TokenEntry>, KeyringError> {
        let (cached, generation) = {
            let cache = self.read_cache();
            (cache.tokens.get(&hash).cloned(), cache.generation)
        };
        if let Some(hit) = &cached
            && self.is_trusted()
        {
            return Ok(Arc::clone(hit));
        }
        if self.store_down.load(Ordering::Acquire) {
            // Asking would only hold the request until the store call times out.
            return Err(KeyringError::StoreDown);
        }
        let record = match timed(self.store.token_by_hash(&hash))
            .await
            .map_err(KeyringError::from)
        {
            Ok(record) => record.ok_or(KeyringError::UnknownToken)?,
            // The store went away since the last sync, which hasn't noticed yet.
            Err(e) if e.is_outage() && self.within_grace() => {
                // Unless a sync meanwhile found something changed and dropped the cache.
                return match cached {
                    Some(hit) if self.read_cache().generation == generation => Ok(hit),
                    _ => Err(e),
                };
            }
            Err(e) => return Err(e),
        };
        let entry = Arc::new(self.entry(record).await?);
        let mut cache = self.write_cache();
        if cache.generation == generation {
            if cache.tokens.len() >= MAX_TOKENS {
                // Evicting an arbitrary tenth (hash order) rather than everything keeps a
                // store with more live tokens than the cache from reloading them all at once.
                let evicted: Vec<TokenHash> =
                    cache.tokens.keys().take(MAX_TOKENS / 10).copied().collect();
                for hash in evicted {
                    cache.tokens.remove(&hash);
                }
            }
            cache.tokens.insert(hash, Arc::clone(&entry));
        }
        Ok(entry)
    }

    /// The token `record` names and its ancestors as the store has them now, past the cache:
    /// for a request that waited long (held for approval), so a revocation or expiry made
    /// meanwhile is seen before it goes on.
    pub async fn current(&self, record: &TokenRecord) -> Result<TokenEntry, KeyringError> {
        let fresh = timed(self.store.token_by_id(&record.tenant, &record.id))
            .await?
            .ok_or(KeyringError::UnknownToken)?;
        self.entry(fresh).await
    }

    /// A token with its policies resolved and its ancestors loaded.
    async fn entry(&self, record: TokenRecord) -> Result<TokenEntry, KeyringError> {
        let mut records = vec![record];
        while let Some(parent_id) = records.last().and_then(|r| r.parent_id.clone()) {
            if records.len() > crate::grants::MAX_DEPTH {
                return Err(KeyringError::TooDeep);
            }
            let tenant = records.last().map(|r| r.tenant.clone()).unwrap_or_default();
            let parent = timed(self.store.token_by_id(&tenant, &parent_id))
                .await?
                .ok_or(KeyringError::UnknownToken)?;
            records.push(parent);
        }
        let named = self.read_cache().policies.clone();
        let mut entry: Option<TokenEntry> = None;
        for record in records.into_iter().rev() {
            let parent = entry.take().map(Arc::new);
            entry = Some(TokenEntry::new(record, parent, &named));
        }
        entry.ok_or(KeyringError::UnknownToken)
    }

    /// The decrypted credential for a token's secret, and the scrubber for its response.
    pub async fn credential(&self, token: &TokenRecord) -> Result<Unlocked, KeyringError> {
        if self.is_trusted()
            && let Some(found) = self.loaded_credential(token)
        {
            return found;
        }
        // Stale, or a secret newer than the last load: reload everything, so the scrubber
        // knows the secret before it is used. A new secret moved the store's revision, so a
        // secret missing at an unchanged revision stays missing (one that can't be
        // decrypted): no reload, which an agent could otherwise ask for with every request.
        self.sync_now().await?;
        self.loaded_credential(token)
            .unwrap_or_else(|| Err(KeyringError::SecretMissing(token.secret_id.clone())))
    }

    fn loaded_credential(&self, token: &TokenRecord) -> Option<Result<Unlocked, KeyringError>> {
        let cache = self.read_cache();
        let credential = cache.credentials.get(&token.secret_id)?;
        // The provider is bound into the ciphertext, so a relabelled row never loads; this
        // catches a token row pointed at another provider's secret.
        Some(if credential.provider == token.provider {
            Ok(Unlocked {
                secret: Arc::clone(&credential.value),
                scrubber: Arc::clone(&cache.scrubber),
                version: credential.version,
            })
        } else {
            Err(KeyringError::ProviderMismatch(token.secret_id.clone()))
        })
    }

    /// The decrypted secret `name` of `tenant` (a capability's) with the provider it is
    /// bound to, and the scrubber for what its use returns.
    pub async fn named_credential(
        &self,
        tenant: &str,
        name: &str,
    ) -> Result<(String, Unlocked), KeyringError> {
        // Unlike a token's secret, a name can stay missing (a capability defined before its
        // secret): that must not make every call reload all secrets, so only a stale cache
        // is brought up to date first.
        if !self.is_trusted() {
            self.sync_now().await?;
        }
        self.loaded_named(tenant, name)
            .ok_or_else(|| KeyringError::SecretMissing(name.to_owned()))
    }

    fn loaded_named(&self, tenant: &str, name: &str) -> Option<(String, Unlocked)> {
        let cache = self.read_cache();
        let credential = cache
            .credentials
            .values()
            .find(|c| c.named.0 == tenant && c.named.1 == name)?;
        Some((
            credential.provider.clone(),
            Unlocked {
                secret: Arc::clone(&credential.value),
                scrubber: Arc::clone(&cache.scrubber),
                version: credential.version,
            },
        ))
    }

    /// Note that a token was used at Unix time `now`; written back on a later sync.
    pub fn note_use(&self, token_id: &str, now: i64) {
        let mut uses = self.uses.lock().unwrap_or_else(PoisonError::into_inner);
        match uses.get_mut(token_id) {
            Some(at) => *at = (*at).max(now),
            None => {
                uses.insert(token_id.to_owned(), now);
            }
        }
    }

    /// Poll the store's revision; if anything changed, reload the secrets and drop cached tokens.
    pub async fn sync(&self) -> Result<(), KeyringError> {
        self.sync_now().await
    }

    async fn sync_now(&self) -> Result<(), KeyringError> {
        let _one_at_a_time = self.reload.lock().await;
        let synced = self.sync_locked().await;
        match &synced {
            Ok(()) => {
                if self.store_down.swap(false, Ordering::AcqRel) {
                    tracing::info!("the store answers again");
                }
            }
            Err(e) if e.is_outage() => {
                if !self.store_down.swap(true, Ordering::AcqRel) {
                    self.report_outage(e);
                }
            }
            Err(_) => {}
        }
        synced
    }

    /// One sync; called under `reload`.
    async fn sync_locked(&self) -> Result<(), KeyringError> {
        let revision = timed(self.store.revision()).await?;
        let changed = self.revision.load(Ordering::Acquire) != revision;
        if changed {
            if let Err(e) = self.load_secrets().await {
                // The store said something changed (a revocation, say) and then failed: no
                // cached token may be served on the strength of the outage grace.
                let mut cache = self.write_cache();
                self.drop_tokens(&mut cache);
                return Err(e);
            }
            self.revision.store(revision, Ordering::Release);
        }
        self.last_sync_ms
            .store(self.millis_since_start() + 1, Ordering::Release);
        Ok(())
    }

    /// Forget every cached token, and say so to whoever watches one.
    fn drop_tokens(&self, cache: &mut Cache) {
        cache.generation += 1;
        cache.tokens.clear();
        self.changes.send_replace(());
    }

    /// Changes when cached tokens are dropped: a token may have been revoked, re-scoped or
    /// removed since it was last looked up.
    pub fn changes(&self) -> tokio::sync::watch::Receiver<()> {
        self.changes.subscribe()
    }

    fn report_outage(&self, e: &KeyringError) {
        if self.outage_grace > STALE_AFTER {
            tracing::warn!(error = %e, grace = ?self.outage_grace, "the store is not answering; cached tokens are served until the outage grace after the last sync ends, others are refused");
        } else {
            tracing::warn!(error = %e, "the store is not answering; tokens are refused once cached ones go stale in {STALE_AFTER:?}");
        }
    }

    async fn load_secrets(&self) -> Result<(), KeyringError> {
        let rows = timed(self.store.all_secrets()).await?;
        let mut policies = HashMap::new();
        for p in timed(self.store.all_policies()).await? {
            let spec = serde_json::from_str::<PolicySpec>(&p.spec).map_err(|e| e.to_string());
            match spec.and_then(|spec| spec.check_shareable().map(|()| spec)) {
                Ok(spec) => {
                    policies.insert((p.tenant, p.name), Arc::new(spec));
                }
                Err(e) => {
                    tracing::error!(policy = %p.name, error = %e, "stored policy cannot be read; its tokens are refused")
                }
            }
        }
        let (credentials, changed) = self.open_secrets(rows);
        let scrubber = if changed {
            self.retire_replaced(&credentials)?;
            Arc::new(self.build_scrubber(&credentials).await?)
        } else {
            // Most changes are to tokens: the scrubber for the same secrets would be the same,
            // and with many secrets it takes a while to build.
            Arc::clone(&self.read_cache().scrubber)
        };
        // Logs get the new scrubber; requests get credentials and the scrubber that knows
        // them from one snapshot (`Unlocked`), so neither can run ahead of the other.
        self.redactor.set(Arc::clone(&scrubber));
        let mut cache = self.write_cache();
        self.drop_tokens(&mut cache);
        cache.credentials = credentials;
        cache.scrubber = scrubber;
        cache.policies = policies;
        Ok(())
    }

    /// The secrets in `rows` that can be used, each decrypted unless loaded already from the
    /// same row, and whether they differ from those loaded.
    fn open_secrets(&self, rows: Vec<SecretRecord>) -> (HashMap<String, Credential>, bool) {
        let cache = self.read_cache();
        let mut changed = false;
        let mut credentials = HashMap::with_capacity(rows.len());
        for row in rows {
            let loaded = cache.credentials.get(&row.id).filter(|c| {
                c.sealed == row.sealed
                    && c.version == row.version
                    && c.provider == row.provider
                    && (&c.named.0, &c.named.1) == (&row.tenant, &row.name)
            });
            if let Some(loaded) = loaded {
                credentials.insert(row.id, loaded.clone());
                continue;
            }
            changed = true;
            match self.vault.open(row.identity(), &row.sealed) {
                Ok(value) => {
                    let credential = Credential {
                        provider: row.provider,
                        version: row.version,
                        value: Arc::new(value),
                        named: (row.tenant, row.name),
                        sealed: row.sealed,
                    };
                    credentials.insert(row.id, credential);
                }
                Err(e) => {
                    tracing::error!(secret = %row.name, error = %e, "stored secret cannot be used")
                }
            }
        }
        // Removed ones.
        changed |= credentials.len() != cache.credentials.len();
        (credentials, changed)
    }

    /// Keep scrubbing the values of secrets that `loaded` rotated or removed while the broker
    /// runs: the operator's change doesn't revoke them at the provider, and a response may
    /// still echo one. Called under `reload`.
    fn retire_replaced(&self, loaded: &HashMap<String, Credential>) -> Result<(), KeyringError> {
        let cache = self.read_cache();
        let retired = cache
            .credentials
            .iter()
            .filter(|(id, old)| loaded.get(*id).is_none_or(|new| new.version != old.version))
            .flat_map(|(_, old)| scrubbed_values(old.value.expose_secret()))
            .map(|mut value| (SecretString::from(std::mem::take(&mut *value)), None));
        remember(
            &mut self.learned.lock().unwrap_or_else(PoisonError::into_inner),
            retired,
            Room::Unbounded,
        )
    }

    /// A scrubber for every loaded secret, the parts of structured ones, and every value
    /// learned; called under `reload`. Built on a blocking thread: with many secrets it takes
    /// long enough to hold up every request on the runtime's thread.
    async fn build_scrubber(
        &self,
        credentials: &HashMap<String, Credential>,
    ) -> Result<Scrubber, KeyringError> {
        let mut values: Vec<Zeroizing<String>> = credentials
            .values()
            .flat_map(|c| scrubbed_values(c.value.expose_secret()))
            .collect();
        values.extend(
            self.learned
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .iter()
                .map(|l| Zeroizing::new(l.value.expose_secret().to_owned())),
        );
        let build =
            tokio::task::spawn_blocking(move || Scrubber::new(values.iter().map(|v| v.as_bytes())));
        match build.await {
            Ok(scrubber) => Ok(scrubber?),
            Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
            Err(_) => Err(KeyringError::ScrubberUnfinished),
        }
    }

    /// Make the scrubber (for responses from now on, and for logs) know `values`, learned for
    /// the secret `secret_id`, until their deadlines, before any of them is used;
    /// [`KeyringError::TooManyLearned`] if that secret's share of values still valid is
    /// full, and then none of `values` may be used.
    pub async fn learn(
        &self,
        secret_id: &str,
        values: impl IntoIterator<Item = (SecretString, Option<Instant>)>,
    ) -> Result<(), KeyringError> {
        let room = Room::Shared {
            owner: secret_id,
            share: self.learned_share(),
        };
        self.learn_within(values, room).await
    }

    /// [`KeyringError::TooManyLearned`] if [`Keyring::learn`] would refuse one more value
    /// for `secret_id` now: asked before minting, so that a full share costs no mint.
    pub fn check_room(&self, secret_id: &str) -> Result<(), KeyringError> {
        let share = self.learned_share();
        let learned = self.learned.lock().unwrap_or_else(PoisonError::into_inner);
        if owned_by(learned.iter(), secret_id, Instant::now()) >= share {
            return Err(KeyringError::TooManyLearned(share));
        }
        Ok(())
    }

    /// How many values still valid [`Keyring::learn`] keeps for each secret now.
    pub fn learned_share(&self) -> usize {
        share_of(self.read_cache().credentials.len())
    }

    /// Make the scrubber know, while the broker runs, `values` a rotation replaced or put in
    /// place (an OAuth2 refresh token the provider rotated), however many values it knows,
    /// as it knows a rotated secret's old values: refusing the new one would lose it.
    pub async fn learn_rotated(
        &self,
        values: impl IntoIterator<Item = SecretString>,
    ) -> Result<(), KeyringError> {
        self.learn_within(
            values.into_iter().map(|value| (value, None)),
            Room::Unbounded,
        )
        .await
    }

    async fn learn_within(
        &self,
        values: impl IntoIterator<Item = (SecretString, Option<Instant>)>,
        room: Room<'_>,
    ) -> Result<(), KeyringError> {
        let _one_at_a_time = self.reload.lock().await;
        remember(
            &mut self.learned.lock().unwrap_or_else(PoisonError::into_inner),
            values,
            room,
        )?;
        let credentials = self.read_cache().credentials.clone();
        let scrubber = Arc::new(self.build_scrubber(&credentials).await?);
        self.redactor.set(Arc::clone(&scrubber));
        self.write_cache().scrubber = scrubber;
        Ok(())
    }

    /// The redactor, which always holds the newest scrubber: what long streams follow.
    pub fn redactor(&self) -> Arc<Redactor> {
        Arc::clone(&self.redactor)
    }

    /// The scrubber in force: it knows every loaded secret and every value learned so far.
    pub fn scrubber(&self) -> Arc<Scrubber> {
        Arc::clone(&self.read_cache().scrubber)
    }

    /// Leases on the store, when other brokers share it: what they coordinate through.
    pub fn leases(&self) -> Option<&dyn Leases> {
        self.store.leases()
    }

    /// Seal `value` as the next version of `token`'s secret and store it, if the secret is
    /// still at `from_version`: how a value the provider replaced (a rotated OAuth2 refresh
    /// token) outlives a restart. `NotFound` if the secret changed meanwhile.
    pub async fn store_new_version(
        &self,
        token: &TokenRecord,
        from_version: i64,
        value: &SecretString,
    ) -> Result<(), KeyringError> {
        let version = from_version + 1;
        let identity = SecretIdentity {
            tenant: &token.tenant,
            secret_id: &token.secret_id,
            version,
            provider: &token.provider,
            name: Some(&token.secret_name),
        };
        let sealed = self.vault.seal(identity, value)?;
        timed(self.store.rotate_secret(
            &token.tenant,
            &token.secret_id,
            version,
            &sealed,
            clock::now(),
        ))
        .await?;
        Ok(())
    }

    /// Write buffered last-use times to the store; on failure they are kept for the next try.
    pub async fn flush_uses(&self) -> Result<(), KeyringError> {
        let uses: Vec<(String, i64)> =
            std::mem::take(&mut *self.uses.lock().unwrap_or_else(PoisonError::into_inner))
                .into_iter()
                .collect();
        if uses.is_empty() {
            return Ok(());
        }
        let result = timed(self.store.record_token_use(&uses)).await;
        if result.is_err() {
            for (id, at) in uses {
                self.note_use(&id, at);
            }
        }
        Ok(result?)
    }

    /// Keep the caches in step with the store until the task is dropped: every
    /// [`SYNC_INTERVAL`], and at once when the store announces a change.
    pub async fn run_sync_loop(self: Arc<Self>) {
        let mut changes = self.store.changes();
        let mut tick = tokio::time::interval(SYNC_INTERVAL);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut flushed = Instant::now();
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                announced = next_change(&mut changes) => {
                    if !announced {
                        changes = None;
                    }
                }
            }
            if let Err(e) = self.sync().await
                && !e.is_outage()
            {
                // Outages are reported once, when they start and end.
                tracing::warn!(error = %e, "store sync failed; cached tokens go stale in {STALE_AFTER:?}");
            }
            if flushed.elapsed() >= USE_FLUSH_INTERVAL {
                flushed = Instant::now();
                if let Err(e) = self.flush_uses().await {
                    tracing::warn!(error = %e, "could not record token use times");
                }
            }
        }
    }

    /// Whether cached entries may be served: the last sync is recent, or the store is down
    /// and the outage grace has not run out.
    fn is_trusted(&self) -> bool {
        self.since_last_sync() < STALE_AFTER
            || (self.store_down.load(Ordering::Acquire) && self.within_grace())
    }

    /// Whether the last successful sync is within the outage grace.
    fn within_grace(&self) -> bool {
        self.since_last_sync() < self.outage_grace
    }

    /// Time since the last successful sync; `Duration::MAX` before the first.
    fn since_last_sync(&self) -> Duration {
        match self.last_sync_ms.load(Ordering::Acquire) {
            0 => Duration::MAX,
            last => Duration::from_millis((self.millis_since_start() + 1).saturating_sub(last)),
        }
    }

    fn millis_since_start(&self) -> u64 {
        u64::try_from(self.started.elapsed().as_millis()).unwrap_or(u64::MAX - 1)
    }

    fn read_cache(&self) -> std::sync::RwLockReadGuard<'_, Cache> {
        self.cache.read().unwrap_or_else(PoisonError::into_inner)
    }

    fn write_cache(&self) -> std::sync::RwLockWriteGuard<'_, Cache> {
        self.cache.write().unwrap_or_else(PoisonError::into_inner)
    }
}

/// The next announced change; `false` once the store stops announcing.
async fn next_change(changes: &mut Option<tokio::sync::watch::Receiver<u64>>) -> bool {
    match changes {
        Some(feed) => feed.changed().await.is_ok(),
        None => std::future::pending().await,
    }
}

#[cfg(test)]
mod tests {
    use sqlx::{Connection, Executor, SqliteConnection};

    use super::*;
    use crate::ops::Ops;
    use crate::ops::views::NewTokenRequest;
    use crate::providers::Providers;
    use crate::store::{DEFAULT_TENANT, Location};
    use crate::vault::Key;

    fn values(secret: &str) -> Vec<String> {
        scrubbed_values(secret)
            .iter()
            .map(|v| v.to_string())
            .collect()
    }

    #[test]
    fn the_passwords_of_a_url_secret_are_scrubbed_as_written_and_decoded() {
        let secret = "smtps://bot%40example.com:p%2Fss-w0rd@mail.example.com:465";
        assert_eq!(values(secret), [secret, "p%2Fss-w0rd", "p/ss-w0rd"]);
        let secret = "postgres://app@db/shop?sslmode=require&password=s3cr%3Ft";
        assert_eq!(values(secret), [secret, "s3cr%3Ft", "s3cr?t"]);
        let secret = "postgres://app:one@db:5432/shop?password=two";
        assert_eq!(url_passwords(secret).collect::<Vec<_>>(), ["one", "two"]);
        for none in ["sk-plain-key", "mysql://app@db/shop", "https://host/a:b@c"] {
            assert_eq!(url_passwords(none).count(), 0, "{none}");
        }
    }

    #[test]
    fn a_url_secret_whose_client_would_read_another_password_is_refused() {
        for plain in [
            "smtps://bot%40example.com:p%2Fss-w0rd@mail.example.com:465",
            "postgres://app:p ss-w0rd@db/shop",
            "postgres://app@db/shop?sslmode=require&password=s3cr%3Ft-long",
            "sqlite://data.db",
        ] {
            assert_eq!(check_url_passwords(plain), Ok(()), "{plain}");
        }
        // The client drops the tab, decodes the key and reads `+` as a space.
        for other in [
            "smtps://bot:pass\tw0rd-long@mail.example.com:465",
            "postgres://app@db/shop?pass%77ord=s3cret-long",
            "postgres://app@db/shop?password=s3cr+t-long",
        ] {
            let refused = check_url_passwords(other).expect_err(other);
            assert!(
                !refused.contains("s3cr") && !refused.contains("w0rd"),
                "{refused}"
            );
        }
    }

    #[test]
    fn a_json_secret_is_scrubbed_compact_and_string_by_string_however_it_was_written() {
        let pretty = " {\n  \"access_key_id\": \"AKIAEXAMPLE\",\n  \"secret_access_key\": \"wJalrXUt/K7MDENG\",\n  \"ttl\": 3600\n}\n";
        assert_eq!(
            values(pretty),
            [
                r#"{"access_key_id":"AKIAEXAMPLE","secret_access_key":"wJalrXUt/K7MDENG","ttl":3600}"#,
                "AKIAEXAMPLE",
                "wJalrXUt/K7MDENG",
            ]
        );
    }

    /// A keyring with `grace` over a fresh SQLite store holding an openai secret and tokens
    /// for `agents`, synced; the tokens' texts, and a connection to break the store with.
    async fn fixture(
        dir: &std::path::Path,
        grace: Duration,
        agents: &[&str],
    ) -> (Keyring, Vec<String>, SqliteConnection) {
        let location = Location::parse(None, dir).unwrap();
        let store = location.open().await.unwrap();
        let vault = Arc::new(Vault::new(Key::from_bytes([7; 32])));
        let ops = Ops::new(store.clone(), Providers::load(&Default::default()).unwrap());
        let value = SecretString::from("sk-keyring-test-0123456789abcdef".to_owned());
        ops.add_secret(&vault, "main", "openai", &value)
            .await
            .unwrap();
        let mut texts = Vec::new();
        for agent in agents {
            let request = NewTokenRequest {
                secret: "main".into(),
                agent: (*agent).into(),
                policy: None,
                policy_name: None,
            };
            texts.push(ops.create_token(&vault, &request).await.unwrap().token);
        }
        let keyring =
            Keyring::new(store, vault, Arc::new(Redactor::default())).with_outage_grace(grace);
        keyring.sync().await.unwrap();
        let Location::Sqlite(file) = &location else {
            panic!("the default store is SQLite");
        };
        let conn = SqliteConnection::connect(&format!("sqlite://{}", file.display()))
            .await
            .unwrap();
        (keyring, texts, conn)
    }

    async fn resolve(keyring: &Keyring, text: &str) -> Result<Arc<TokenEntry>, KeyringError> {
        keyring.token(&crate::tokens::parse(text).unwrap()).await
    }

    /// Operator actions on `keyring`'s store.
    fn ops_on(keyring: &Keyring) -> Ops {
        Ops::new(
            keyring.store.clone(),
            Providers::load(&Default::default()).unwrap(),
        )
    }

    /// Whether `keyring`'s scrubber masks `value` whole.
    fn masked_by(keyring: &Keyring, value: &str) -> bool {
        let mut text = format!("<{value}>").into_bytes();
        keyring.scrubber().scrub_all(&mut text);
        text == format!("<{}>", "*".repeat(value.len())).into_bytes()
    }

    #[tokio::test]
    async fn rotated_and_removed_values_stay_scrubbed_while_the_broker_runs() {
        let dir = tempfile::tempdir().unwrap();
        let (keyring, _, _conn) = fixture(dir.path(), Duration::from_secs(1), &[]).await;
        let ops = ops_on(&keyring);
        let masked = |value: &str| masked_by(&keyring, value);
        let (first, second) = (
            "sk-keyring-test-0123456789abcdef",
            "sk-keyring-rotated-fedcba9876543210",
        );
        assert!(masked(first) && !masked(second));
        let rotated = SecretString::from(second.to_owned());
        ops.rotate_secret(&keyring.vault, "main", &rotated)
            .await
            .unwrap();
        keyring.sync().await.unwrap();
        assert!(masked(first) && masked(second));
        ops.remove_secret("main").await.unwrap();
        keyring.sync().await.unwrap();
        assert!(masked(first) && masked(second));
    }

    #[tokio::test]
    async fn only_a_change_to_the_secrets_builds_a_new_scrubber() {
        let dir = tempfile::tempdir().unwrap();
        let (keyring, _, _conn) = fixture(dir.path(), Duration::from_secs(1), &[]).await;
        let ops = ops_on(&keyring);
        let before = keyring.scrubber();
        let request = NewTokenRequest {
            secret: "main".into(),
            agent: "another".into(),
            policy: None,
            policy_name: None,
        };
        let token = ops.create_token(&keyring.vault, &request).await.unwrap();
        keyring.sync().await.unwrap();
        assert!(resolve(&keyring, &token.token).await.is_ok());
        assert!(Arc::ptr_eq(&before, &keyring.scrubber()));
        let added = "sk-keyring-added-00112233445566778899";
        let value = SecretString::from(added.to_owned());
        ops.add_secret(&keyring.vault, "added", "openai", &value)
            .await
            .unwrap();
        keyring.sync().await.unwrap();
        assert!(!Arc::ptr_eq(&before, &keyring.scrubber()));
        assert!(masked_by(&keyring, added));
    }

    #[tokio::test]
    async fn a_full_share_of_learned_values_refuses_new_ones_rather_than_forget_live_ones() {
        let dir = tempfile::tempdir().unwrap();
        let (keyring, _, _conn) = fixture(dir.path(), Duration::from_secs(1), &[]).await;
        let ops = ops_on(&keyring);
        let masked = |value: &str| masked_by(&keyring, value);
        let old = "sk-keyring-test-0123456789abcdef";
        let rotated = SecretString::from("sk-keyring-rotated-fedcba9876543210".to_owned());
        ops.rotate_secret(&keyring.vault, "main", &rotated)
            .await
            .unwrap();
        // Seventeen secrets: more than the most any share may be (256) fits sixteen times.
        for n in 0..16 {
            let value = SecretString::from(format!("sk-keyring-other-{n:016}"));
            ops.add_secret(&keyring.vault, &format!("other-{n}"), "openai", &value)
                .await
                .unwrap();
        }
        keyring.sync().await.unwrap();
        let minted = |n: usize, valid: Duration| {
            (
                SecretString::from(format!("ya29.minted-{n:05}")),
                Some(Instant::now() + valid),
            )
        };
        let hour = Duration::from_secs(3600);
        let share = share_of(17);
        // Sixteen secrets' agents make them mint as many tokens as they may, each still valid
        // at its provider (as agents get by making upstreams answer 401 again and again).
        for greedy in 0..16 {
            let secret = format!("sec_{greedy}");
            let tokens = |count: usize| (0..count).map(move |n| minted(greedy * 1000 + n, hour));
            let over = keyring.learn(&secret, tokens(MAX_SHARE)).await;
            assert!(
                matches!(over, Err(KeyringError::TooManyLearned(_))),
                "one secret took more than its share"
            );
            keyring.learn(&secret, tokens(share)).await.unwrap();
        }
        assert!(
            !masked(&format!("ya29.minted-{share:05}")),
            "a refused value was learned"
        );
        // The last secret still gets all of its share, the last one about to expire.
        let last = |n: usize| minted(50_000 + n, hour);
        keyring
            .learn("sec_last", (1..share).map(last))
            .await
            .unwrap();
        let soon = minted(50_000, Duration::from_secs(3));
        let expiry = soon.1.unwrap();
        keyring.learn("sec_last", [soon]).await.unwrap();
        let overflow = keyring.learn("sec_last", [minted(60_000, hour)]).await;
        assert!(
            matches!(overflow, Err(KeyringError::TooManyLearned(_))),
            "a value was learned past the share"
        );
        assert!(masked(old), "the rotated secret's old value was forgotten");
        assert!(
            masked("ya29.minted-00000") && masked("ya29.minted-50001"),
            "a live access token was forgotten"
        );
        assert!(!masked("ya29.minted-60000"), "a refused value was learned");
        // A value known already takes no room; an expired one makes room.
        keyring.learn("sec_last", [last(1)]).await.unwrap();
        tokio::time::sleep_until(expiry.into()).await;
        keyring
            .learn("sec_last", [minted(60_000, hour)])
            .await
            .unwrap();
        assert!(masked("ya29.minted-60000") && masked(old));
        // Values masked for good (minted when due by an endpoint that gave no lifetime) take
        // no room: counted, one share's worth would close the secret until a restart.
        let forever =
            (0..=share).map(|n| (SecretString::from(format!("ya29.forever-{n:05}")), None));
        keyring.learn("sec_last", forever).await.unwrap();
        assert!(masked("ya29.forever-00000") && masked(&format!("ya29.forever-{share:05}")));
        let full = keyring.learn("sec_last", [minted(70_000, hour)]).await;
        assert!(matches!(full, Err(KeyringError::TooManyLearned(_))));
    }

    #[tokio::test]
    async fn in_an_outage_cached_tokens_are_served_for_the_grace_and_others_refused() {
        let dir = tempfile::tempdir().unwrap();
        let grace = Duration::from_secs(3);
        let (keyring, texts, mut conn) = fixture(dir.path(), grace, &["known", "new"]).await;
        let known = resolve(&keyring, &texts[0]).await.unwrap();
        let synced = Instant::now();
        // The store stops answering the revision: the sync fails, as on a lost server.
        conn.execute("ALTER TABLE revision RENAME TO revision_gone")
            .await
            .unwrap();
        assert!(keyring.sync().await.is_err());

        tokio::time::sleep(STALE_AFTER + Duration::from_millis(250)).await;
        let served = resolve(&keyring, &texts[0]).await.unwrap();
        assert!(Arc::ptr_eq(&served, &known));
        assert!(keyring.credential(&known.record).await.is_ok());
        assert!(matches!(
            resolve(&keyring, &texts[1]).await,
            Err(KeyringError::StoreDown)
        ));

        tokio::time::sleep_until((synced + grace).into()).await;
        assert!(matches!(
            resolve(&keyring, &texts[0]).await,
            Err(KeyringError::StoreDown)
        ));

        conn.execute("ALTER TABLE revision_gone RENAME TO revision")
            .await
            .unwrap();
        keyring.sync().await.unwrap();
        assert!(resolve(&keyring, &texts[0]).await.is_ok());
        assert!(resolve(&keyring, &texts[1]).await.is_ok());
    }

    #[tokio::test]
    async fn secrets_whose_names_were_swapped_in_the_store_are_not_used() {
        let dir = tempfile::tempdir().unwrap();
        let (keyring, _, mut conn) = fixture(dir.path(), Duration::from_secs(1), &[]).await;
        let ops = ops_on(&keyring);
        let other = SecretString::from("sk-keyring-other-fedcba9876543210".to_owned());
        ops.add_secret(&keyring.vault, "other", "openai", &other)
            .await
            .unwrap();
        // Someone who can write to the store but lacks the master key relabels the rows, so
        // that what a capability names `main` would be the other secret.
        for swap in [
            "UPDATE secrets SET name = 'swapping' WHERE name = 'main'",
            "UPDATE secrets SET name = 'main' WHERE name = 'other'",
            "UPDATE secrets SET name = 'other' WHERE name = 'swapping'",
        ] {
            conn.execute(swap).await.unwrap();
        }
        keyring.sync().await.unwrap();
        for name in ["main", "other"] {
            assert!(
                matches!(
                    keyring.named_credential(DEFAULT_TENANT, name).await,
                    Err(KeyringError::SecretMissing(_))
                ),
                "the secret stored as another's was used as `{name}`"
            );
        }
    }

    #[tokio::test]
    async fn a_secret_sealed_before_names_were_bound_is_resealed_under_its_name() {
        let dir = tempfile::tempdir().unwrap();
        let (keyring, _, mut conn) = fixture(dir.path(), Duration::from_secs(1), &[]).await;
        let value = SecretString::from("sk-keyring-legacy-0123456789abcdef".to_owned());
        let unnamed = SecretIdentity {
            tenant: DEFAULT_TENANT,
            secret_id: "sec_legacy",
            version: 1,
            provider: "openai",
            name: None,
        };
        let legacy = crate::store::NewSecret {
            sealed: keyring.vault.seal(unnamed, &value).unwrap(),
            id: "sec_legacy".to_owned(),
            tenant: DEFAULT_TENANT.to_owned(),
            name: "legacy".to_owned(),
            provider: "openai".to_owned(),
            created_at: 0,
        };
        keyring.store.insert_secret(&legacy).await.unwrap();
        keyring.sync().await.unwrap();
        assert!(
            keyring
                .named_credential(DEFAULT_TENANT, "legacy")
                .await
                .is_err()
        );

        crate::ops::bind_secret_names(keyring.store.as_ref(), &keyring.vault)
            .await
            .unwrap();
        keyring.sync().await.unwrap();
        let (_, unlocked) = keyring
            .named_credential(DEFAULT_TENANT, "legacy")
            .await
            .unwrap();
        assert_eq!(unlocked.secret.expose_secret(), value.expose_secret());
        let (_, main) = keyring
            .named_credential(DEFAULT_TENANT, "main")
            .await
            .unwrap();
        assert_eq!(
            main.secret.expose_secret(),
            "sk-keyring-test-0123456789abcdef"
        );

        // Done once: a row relabelled later is not resealed under its new name.
        conn.execute("UPDATE secrets SET name = 'renamed' WHERE name = 'legacy'")
            .await
            .unwrap();
        crate::ops::bind_secret_names(keyring.store.as_ref(), &keyring.vault)
            .await
            .unwrap();
        keyring.sync().await.unwrap();
        assert!(
            keyring
                .named_credential(DEFAULT_TENANT, "renamed")
                .await
                .is_err()
        );
    }

    #[tokio::test]
    async fn a_secret_that_cannot_be_decrypted_does_not_make_each_request_reload() {
        let dir = tempfile::tempdir().unwrap();
        let (keyring, texts, mut conn) =
            fixture(dir.path(), Duration::from_secs(1), &["bot"]).await;
        // A tampered ciphertext: the row is there, but it no longer opens.
        conn.execute("UPDATE secrets SET ciphertext = zeroblob(length(ciphertext))")
            .await
            .unwrap();
        keyring.sync().await.unwrap();
        let entry = resolve(&keyring, &texts[0]).await.unwrap();
        let reloads = keyring.changes();
        for _ in 0..3 {
            assert!(matches!(
                keyring.credential(&entry.record).await,
                Err(KeyringError::SecretMissing(_))
            ));
        }
        assert!(
            !reloads.has_changed().unwrap(),
            "a request reloaded the secrets"
        );
    }

    #[tokio::test]
    async fn a_change_the_store_announced_but_could_not_deliver_drops_cached_tokens() {
        let dir = tempfile::tempdir().unwrap();
        let (keyring, texts, mut conn) =
            fixture(dir.path(), Duration::from_secs(600), &["known"]).await;
        resolve(&keyring, &texts[0]).await.unwrap();
        // The revision moves (a revocation, say), then reading what changed fails.
        conn.execute("UPDATE revision SET value = value + 1")
            .await
            .unwrap();
        conn.execute("ALTER TABLE secrets RENAME TO secrets_gone")
            .await
            .unwrap();
        assert!(keyring.sync().await.is_err());
        assert!(matches!(
            resolve(&keyring, &texts[0]).await,
            Err(KeyringError::StoreDown)
        ));
    }

    #[tokio::test]
    async fn what_a_token_keeps_open_ends_once_an_outage_outlasts_the_grace() {
        let dir = tempfile::tempdir().unwrap();
        let grace = Duration::from_secs(2);
        let (keyring, texts, mut conn) = fixture(dir.path(), grace, &["bot"]).await;
        let keyring = Arc::new(keyring);
        let hash = crate::tokens::parse(&texts[0]).unwrap().hash();
        let changes = keyring.changes();
        let entry = keyring.token_by_hash(hash).await.unwrap();
        let watch = crate::proxy::TokenWatch::new(&keyring, changes, hash, &entry);
        let syncing = tokio::spawn(Arc::clone(&keyring).run_sync_loop());
        // The store stops answering, as on a lost server; nothing about the token changed
        // as far as the broker can tell.
        conn.execute("ALTER TABLE revision RENAME TO revision_gone")
            .await
            .unwrap();
        let outage = Instant::now();
        let ended = tokio::time::timeout(grace + Duration::from_secs(2), watch.ended()).await;
        syncing.abort();
        let reason = ended.expect("a session outlived the outage grace");
        assert!(matches!(reason, crate::proxy::ProxyError::StoreUnavailable));
        assert!(
            outage.elapsed() + SYNC_INTERVAL >= grace,
            "a session ended within the outage grace"
        );
    }
}
