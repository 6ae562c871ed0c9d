//! Issuing tokens: minting one for a secret, and deriving a narrower, shorter-lived child
//! from an existing token (by the operator, or by an agent with its own token).

use secrecy::{ExposeSecret, SecretString};

use crate::policy::PolicySpec;
use crate::providers::Providers;
use crate::store::{NewToken, Store, StoreError, TokenRecord};
use crate::tokens::{self, SigningTokens, TokenHash};

/// How many generations of children a token may have.
pub const MAX_DEPTH: usize = 8;
/// Lifetime of a derived token when none is asked for.
pub const DEFAULT_CHILD_TTL_SECS: i64 = 3600;
/// Longest agent name, in bytes.
const MAX_AGENT_NAME: usize = 128;

/// A token could not be issued.
#[derive(Debug, thiserror::Error)]
pub enum GrantError {
    /// The store refused or failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The parent can't have children (revoked, expired, too deep).
    #[error("{0}")]
    Parent(String),
    /// The agent name is unusable.
    #[error("agent names are 1 to 128 bytes of printable characters (UTF-8)")]
    AgentName,
    /// The policy has no lifetime that ends after now.
    #[error("the token would already be expired")]
    AlreadyExpired,
}

/// A freshly issued token: shown once, then only its hash exists.
pub struct Minted {
    /// The token text.
    pub token: SecretString,
    /// What was stored.
    pub record: NewToken,
}

/// What to issue.
pub struct Mint<'a> {
    /// Tenant of the secret.
    pub tenant: &'a str,
    /// The secret the token unlocks.
    pub secret_id: &'a str,
    /// That secret's provider (named in the token text).
    pub provider: &'a str,
    /// Agent name.
    pub agent: &'a str,
    /// The token's own policy.
    pub policy: Option<&'a PolicySpec>,
    /// A named policy it also follows.
    pub policy_name: Option<&'a str>,
    /// Expiry.
    pub expires_at: Option<i64>,
    /// Parent, for derived tokens.
    pub parent_id: Option<&'a str>,
    /// Set for providers that sign requests: the token is recomputable from its id.
    pub signing: Option<&'a SigningTokens>,
}

/// `keys` when `provider` signs requests (its tokens must be recomputable), else `None`.
pub fn signing_for<'a>(
    providers: &Providers,
    provider: &str,
    keys: &'a SigningTokens,
) -> Option<&'a SigningTokens> {
    providers
        .get(provider)
        .is_some_and(|p| p.auth.signs_requests())
        .then_some(keys)
}

/// Mint and store a token.
pub async fn mint(store: &dyn Store, m: Mint<'_>, now: i64) -> Result<Minted, GrantError> {
    if m.agent.is_empty() || m.agent.len() > MAX_AGENT_NAME || m.agent.chars().any(char::is_control)
    {
        return Err(GrantError::AgentName);
    }
    if m.expires_at.is_some_and(|at| at <= now) {
        return Err(GrantError::AlreadyExpired);
    }
    let id = format!("tok_{}", tokens::random_base62(16));
    let token = match m.signing {
        Some(keys) => keys.token(m.provider, &id),
        None => tokens::generate(m.provider),
    };
    let record = NewToken {
        id,
        tenant: m.tenant.to_owned(),
        agent: m.agent.to_owned(),
        secret_id: m.secret_id.to_owned(),
        hash: TokenHash::of(token.expose_secret()),
        hint: tokens::hint_of(&token),
        expires_at: m.expires_at,
        created_at: now,
        parent_id: m.parent_id.map(str::to_owned),
        policy: m
            .policy
            .map(|p| serde_json::to_string(p).unwrap_or_default()),
        policy_name: m.policy_name.map(str::to_owned),
    };
    store.insert_token(&record).await?;
    Ok(Minted { token, record })
}

/// The earliest expiry of `parent` and its ancestors, which bounds any child's: refused
/// when one of them is revoked or expired, or the chain is too deep for another generation.
pub async fn lineage_expiry(
    store: &dyn Store,
    parent: &TokenRecord,
    now: i64,
) -> Result<Option<i64>, GrantError> {
    let mut ancestors_expiry: Option<i64> = None;
    let mut depth = 1;
    let mut link = Some(parent.clone());
    while let Some(token) = link {
        if token.revoked_at.is_some() {
            return Err(GrantError::Parent(format!("token {} is revoked", token.id)));
        }
        if let Some(at) = token.expires_at {
            if at <= now {
                return Err(GrantError::Parent(format!(
                    "token {} has expired",
                    token.id
                )));
            }
            ancestors_expiry = Some(ancestors_expiry.map_or(at, |e| e.min(at)));
        }
        depth += 1;
        if depth > MAX_DEPTH {
            return Err(GrantError::Parent(format!(
                "tokens may be derived at most {MAX_DEPTH} levels deep"
            )));
        }
        link = match &token.parent_id {
            Some(id) => store.token_by_id(&token.tenant, id).await?,
            None => None,
        };
    }
    Ok(ancestors_expiry)
}

/// Derive a child of `parent`: same secret, its own (narrowing) policy, and an expiry no
/// later than any ancestor's. `ttl_secs` defaults to an hour.
pub async fn derive(
    store: &dyn Store,
    signing: Option<&SigningTokens>,
    parent: &TokenRecord,
    policy: Option<&PolicySpec>,
    ttl_secs: Option<i64>,
    agent: Option<&str>,
    now: i64,
) -> Result<Minted, GrantError> {
    let ancestors_expiry = lineage_expiry(store, parent, now).await?;
    let own = now.saturating_add(ttl_secs.unwrap_or(DEFAULT_CHILD_TTL_SECS));
    let from_policy = policy.and_then(|p| p.expiry_from(now));
    let expires_at = [Some(own), from_policy, ancestors_expiry]
        .into_iter()
        .flatten()
        .min();
    let agent = agent.map_or_else(
        || {
            // A name that was valid stays valid: the mark is left off where it wouldn't fit.
            let marked = format!("{} (child)", parent.agent);
            if marked.len() <= MAX_AGENT_NAME {
                marked
            } else {
                parent.agent.clone()
            }
        },
        str::to_owned,
    );
    mint(
        store,
        Mint {
            tenant: &parent.tenant,
            secret_id: &parent.secret_id,
            provider: &parent.provider,
            agent: &agent,
            policy,
            policy_name: None,
            expires_at,
            parent_id: Some(&parent.id),
            signing,
        },
        now,
    )
    .await
}
