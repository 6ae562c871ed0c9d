//! Operator operations — secrets, tokens, named policies, capabilities, approvals, usage,
//! the audit log — shared by the CLI (on the local store) and the admin API, so both check
//! and do exactly the same.

pub mod audit;
mod capabilities;
pub mod master_key;
mod secrets;
pub mod views;

use std::collections::BTreeMap;
use std::sync::Arc;

use secrecy::ExposeSecret;

use crate::clock;
use crate::grants::{self, GrantError, Mint, Minted};
use crate::policy::PolicySpec;
use crate::providers::Providers;
use crate::store::{ApprovalState, DEFAULT_TENANT, Store, StoreError, TokenRecord};
use crate::vault::{Vault, VaultError};
use views::{
    AgentUsage, ApprovalView, DeriveTokenRequest, MintedView, NewTokenRequest, PolicyView, Revoked,
    TokenDetail, TokenUsage, TokenView, UpdateTokenRequest, UsageQuery, UsageReport,
};

pub use secrets::{bind_secret_names, check_secret_name};

/// Longest usage report, in days.
pub const MAX_USAGE_DAYS: u32 = 366;

/// Why an operation was refused or failed; each kind maps to one HTTP status.
#[derive(Debug, thiserror::Error)]
pub enum OpsError {
    /// The request is malformed or not allowed as asked (400).
    #[error("{0}")]
    Invalid(String),
    /// What it names does not exist (404).
    #[error("{0}")]
    NotFound(String),
    /// It clashes with the current state: a taken name, a decided approval, a policy in use (409).
    #[error("{0}")]
    Conflict(String),
    /// The store failed (503).
    #[error(transparent)]
    Store(StoreError),
    /// Sealing failed (500).
    #[error(transparent)]
    Vault(#[from] VaultError),
    /// A stored row no longer parses (500).
    #[error("a stored policy is unreadable: {0}")]
    Corrupt(#[from] serde_json::Error),
}

impl OpsError {
    /// The HTTP status the admin API answers with.
    pub fn status(&self) -> u16 {
        match self {
            OpsError::Invalid(_) => 400,
            OpsError::NotFound(_) => 404,
            OpsError::Conflict(_) => 409,
            OpsError::Store(_) => 503,
            OpsError::Vault(_) | OpsError::Corrupt(_) => 500,
        }
    }

    /// A stable machine-readable code.
    pub fn code(&self) -> &'static str {
        match self {
            OpsError::Invalid(_) => "invalid_request",
            OpsError::NotFound(_) => "not_found",
            OpsError::Conflict(_) => "conflict",
            OpsError::Store(_) => "store_unavailable",
            OpsError::Vault(_) | OpsError::Corrupt(_) => "internal_error",
        }
    }
}

impl From<StoreError> for OpsError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::Conflict(what) => OpsError::Conflict(format!("{what} already exists")),
            StoreError::InUse(why) => OpsError::Conflict(why),
            stale @ StoreError::StaleMasterKey { .. } => OpsError::Conflict(stale.to_string()),
            StoreError::NotFound(what) => OpsError::NotFound(format!("{what} not found")),
            other => OpsError::Store(other),
        }
    }
}

impl From<GrantError> for OpsError {
    fn from(e: GrantError) -> Self {
        match e {
            GrantError::Store(e) => e.into(),
            GrantError::Parent(why) => OpsError::Conflict(why),
            GrantError::AgentName | GrantError::AlreadyExpired => OpsError::Invalid(e.to_string()),
        }
    }
}

/// Operator operations on one store, for the default tenant.
pub struct Ops {
    store: Arc<dyn Store>,
    providers: Providers,
}

impl Ops {
    /// Operations over `store`, with `providers` to check secrets against.
    pub fn new(store: Arc<dyn Store>, providers: Providers) -> Self {
        Ops { store, providers }
    }

    async fn token(&self, id: &str) -> Result<TokenRecord, OpsError> {
        self.store
            .token_by_id(DEFAULT_TENANT, id)
            .await?
            .ok_or_else(|| OpsError::NotFound(format!("no token with id `{id}`")))
    }

    async fn check_policy_name(&self, name: Option<&str>) -> Result<(), OpsError> {
        if let Some(name) = name
            && self.store.policy(DEFAULT_TENANT, name).await?.is_none()
        {
            return Err(OpsError::NotFound(format!("no policy named `{name}`")));
        }
        Ok(())
    }

    /// Mint a token for a secret (`vault` recomputes tokens of providers that sign requests).
    pub async fn create_token(
        &self,
        vault: &Vault,
        req: &NewTokenRequest,
    ) -> Result<MintedView, OpsError> {
        self.check_policy_name(req.policy_name.as_deref()).await?;
        let secret = self
            .store
            .secret_by_name(DEFAULT_TENANT, &req.secret)
            .await?
            .ok_or_else(|| OpsError::NotFound(format!("no secret named `{}`", req.secret)))?;
        let now = clock::now();
        let keys = vault.signing_tokens();
        let signing = grants::signing_for(&self.providers, &secret.provider, &keys);
        let minted = grants::mint(
            self.store.as_ref(),
            Mint {
                tenant: &secret.tenant,
                secret_id: &secret.id,
                provider: &secret.provider,
                agent: &req.agent,
                policy: req.policy.as_ref(),
                policy_name: req.policy_name.as_deref(),
                expires_at: req.policy.as_ref().and_then(|s| s.expiry_from(now)),
                parent_id: None,
                signing,
            },
            now,
        )
        .await?;
        Ok(minted_view(&minted, signing.is_some()))
    }

    /// Mint a narrower child of token `parent_id`.
    pub async fn derive_token(
        &self,
        vault: &Vault,
        parent_id: &str,
        req: &DeriveTokenRequest,
    ) -> Result<MintedView, OpsError> {
        let parent = self.token(parent_id).await?;
        let ttl = req
            .policy
            .as_ref()
            .and_then(|s| s.ttl)
            .map(|t| i64::try_from(t.as_secs()).unwrap_or(i64::MAX));
        let keys = vault.signing_tokens();
        let signing = grants::signing_for(&self.providers, &parent.provider, &keys);
        let minted = grants::derive(
            self.store.as_ref(),
            signing,
            &parent,
            req.policy.as_ref(),
            ttl,
            req.agent.as_deref(),
            clock::now(),
        )
        .await?;
        Ok(minted_view(&minted, signing.is_some()))
    }

    /// Every token, oldest first.
    pub async fn list_tokens(&self) -> Result<Vec<TokenView>, OpsError> {
        let now = clock::now();
        let tokens = self.store.list_tokens(DEFAULT_TENANT).await?;
        Ok(tokens.iter().map(|t| TokenView::of(t, now)).collect())
    }

    /// A token with its own and its named policy.
    pub async fn show_token(&self, id: &str) -> Result<TokenDetail, OpsError> {
        let token = self.token(id).await?;
        let policy = token
            .policy
            .as_deref()
            .map(serde_json::from_str)
            .transpose()?;
        let named_policy = match &token.policy_name {
            Some(name) => match self.store.policy(DEFAULT_TENANT, name).await? {
                Some(p) => Some(serde_json::from_str(&p.spec)?),
                None => None,
            },
            None => None,
        };
        Ok(TokenDetail {
            token: TokenView::of(&token, clock::now()),
            policy,
            named_policy,
        })
    }

    /// Replace a token's policy and/or named policy; running brokers apply it within a second.
    pub async fn update_token(
        &self,
        id: &str,
        req: &UpdateTokenRequest,
    ) -> Result<TokenDetail, OpsError> {
        if req.policy.is_none() && req.policy_name.is_none() && !req.clear_policy_name {
            return Err(OpsError::Invalid(
                "nothing to update: give a policy or a policy name".to_owned(),
            ));
        }
        if req.policy_name.is_some() && req.clear_policy_name {
            return Err(OpsError::Invalid(
                "give a policy name or clear it, not both".to_owned(),
            ));
        }
        let token = self.token(id).await?;
        self.check_policy_name(req.policy_name.as_deref()).await?;
        let now = clock::now();
        let policy_json = match &req.policy {
            Some(spec) => Some(serde_json::to_string(spec)?),
            None => token.policy.clone(),
        };
        let name = if req.clear_policy_name {
            None
        } else {
            req.policy_name.clone().or(token.policy_name.clone())
        };
        let expires_at = match req.policy.as_ref().and_then(|s| s.expiry_from(now)) {
            // A child dies with its parent, so a later expiry would only be shown, never
            // honoured: it is cut to its ancestors' as derive does.
            Some(at) => match &token.parent_id {
                Some(parent_id) => {
                    let parent = self.token(parent_id).await?;
                    let ancestors =
                        grants::lineage_expiry(self.store.as_ref(), &parent, now).await?;
                    Some(ancestors.map_or(at, |a| a.min(at)))
                }
                None => Some(at),
            },
            None => token.expires_at,
        };
        self.store
            .update_token_policy(
                DEFAULT_TENANT,
                id,
                policy_json.as_deref(),
                name.as_deref(),
                expires_at,
            )
            .await?;
        self.show_token(id).await
    }

    /// Revoke a token and its descendants.
    pub async fn revoke_token(&self, id: &str) -> Result<Revoked, OpsError> {
        match self
            .store
            .revoke_token(DEFAULT_TENANT, id, clock::now())
            .await?
        {
            0 => Err(OpsError::NotFound(format!(
                "no active token with id `{id}`"
            ))),
            revoked => Ok(Revoked {
                id: id.to_owned(),
                revoked,
            }),
        }
    }

    /// Create or replace a named policy.
    pub async fn set_policy(&self, name: &str, spec: &PolicySpec) -> Result<PolicyView, OpsError> {
        let ok = !name.is_empty()
            && name.len() <= 64
            && name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b));
        if !ok {
            return Err(OpsError::Invalid(
                "policy names are 1-64 characters of letters, digits, `-`, `_` and `.`".to_owned(),
            ));
        }
        spec.check_shareable().map_err(OpsError::Invalid)?;
        self.store
            .put_policy(
                DEFAULT_TENANT,
                name,
                &serde_json::to_string(spec)?,
                clock::now(),
            )
            .await?;
        self.show_policy(name).await
    }

    /// A named policy.
    pub async fn show_policy(&self, name: &str) -> Result<PolicyView, OpsError> {
        let record = self
            .store
            .policy(DEFAULT_TENANT, name)
            .await?
            .ok_or_else(|| OpsError::NotFound(format!("no policy named `{name}`")))?;
        Ok(PolicyView::of(&record)?)
    }

    /// Every named policy, by name.
    pub async fn list_policies(&self) -> Result<Vec<PolicyView>, OpsError> {
        let policies = self.store.list_policies(DEFAULT_TENANT).await?;
        Ok(policies
            .iter()
            .map(PolicyView::of)
            .collect::<Result<_, _>>()?)
    }

    /// Remove a named policy no active token follows.
    pub async fn remove_policy(&self, name: &str) -> Result<(), OpsError> {
        if self.store.delete_policy(DEFAULT_TENANT, name).await? {
            Ok(())
        } else {
            Err(OpsError::NotFound(format!("no policy named `{name}`")))
        }
    }

    /// Held requests, newest first; pending ones unless `all`.
    pub async fn list_approvals(&self, all: bool) -> Result<Vec<ApprovalView>, OpsError> {
        let approvals = self.store.list_approvals(DEFAULT_TENANT, all).await?;
        Ok(approvals.iter().map(ApprovalView::from).collect())
    }

    /// One held request.
    pub async fn approval(&self, id: &str) -> Result<ApprovalView, OpsError> {
        self.store
            .approval(DEFAULT_TENANT, id)
            .await?
            .map(|a| ApprovalView::from(&a))
            .ok_or_else(|| OpsError::NotFound(format!("no approval with id `{id}`")))
    }

    /// Approve or deny a pending request, recording `by` as the decider.
    pub async fn decide(
        &self,
        id: &str,
        state: ApprovalState,
        reason: Option<&str>,
        by: &str,
    ) -> Result<ApprovalView, OpsError> {
        let decided = self
            .store
            .decide_approval(DEFAULT_TENANT, id, state, reason, by, clock::now())
            .await?;
        let approval = self.approval(id).await?;
        if decided {
            Ok(approval)
        } else {
            Err(OpsError::Conflict(format!(
                "approval {id} is already {}",
                approval.state.as_str()
            )))
        }
    }

    /// Daily requests and LLM tokens per token and per agent, as last flushed by brokers
    /// (every few seconds).
    pub async fn usage(&self, q: &UsageQuery) -> Result<UsageReport, OpsError> {
        if q.days == 0 || q.days > MAX_USAGE_DAYS {
            return Err(OpsError::Invalid(format!(
                "days must be between 1 and {MAX_USAGE_DAYS}"
            )));
        }
        let today = clock::now().div_euclid(86_400);
        let since = today - i64::from(q.days) + 1;
        let rows = self.store.usage_since(DEFAULT_TENANT, since).await?;
        let tokens: Vec<TokenUsage> = rows
            .iter()
            .filter(|u| q.token.as_ref().is_none_or(|t| *t == u.token_id))
            .filter(|u| q.agent.as_ref().is_none_or(|a| *a == u.agent))
            .map(TokenUsage::from)
            .collect();
        let mut by_agent: BTreeMap<(String, String), (u64, u64)> = BTreeMap::new();
        for t in &tokens {
            let sum = by_agent
                .entry((t.day.clone(), t.agent.clone()))
                .or_default();
            sum.0 = sum.0.saturating_add(t.requests);
            sum.1 = sum.1.saturating_add(t.tokens);
        }
        let agents = by_agent
            .into_iter()
            .map(|((day, agent), (requests, tokens))| AgentUsage {
                day,
                agent,
                requests,
                tokens,
            })
            .collect();
        Ok(UsageReport { tokens, agents })
    }
}

fn minted_view(m: &Minted, signs_requests: bool) -> MintedView {
    MintedView {
        token: m.token.expose_secret().to_owned(),
        id: m.record.id.clone(),
        agent: m.record.agent.clone(),
        parent_id: m.record.parent_id.clone(),
        expires_at: m.record.expires_at.map(clock::format),
        access_key_id: signs_requests.then(|| m.record.id.clone()),
    }
}
