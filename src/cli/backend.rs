//! Where operator commands act: the local store (through [`Ops`]) or a running broker's
//! admin API (`--remote`). Both return the same views, so every command prints the same
//! tables and JSON either way.

use std::time::Duration;

use http::Method;
use secrecy::{ExposeSecret, SecretString};
use serde::Serialize;
use zeroize::Zeroizing;

use super::remote::{Remote, encode};
use super::{Context, capability};
use crate::ops::Ops;
use crate::ops::audit::{AuditQuery, AuditView, VerifyReport};
use crate::ops::views::{
    ApprovalView, CapabilityAdded, CapabilityView, DenyRequest, DeriveTokenRequest, MintedView,
    NewCapabilities, NewTokenRequest, PolicyView, Revoked, SecretRemoved, SecretView,
    TestCapabilityRequest, TokenDetail, TokenView, UpdateTokenRequest, UsageQuery, UsageReport,
};
use crate::policy::PolicySpec;
use crate::store::ApprovalState;

/// Longest a remote trial run is waited for: a capability's own `timeout` bounds it, and
/// can be long.
const TRIAL_WAIT: Duration = Duration::from_secs(3600);

/// The local store or a remote admin API.
pub(super) enum Backend {
    /// This machine's store.
    Local {
        /// Settings and store (the vault is unlocked only when a secret or token is made).
        ctx: Context,
        /// The operations over that store.
        ops: Ops,
    },
    /// A broker's admin API.
    Remote(Remote),
}

/// Serialize a request body.
fn json<T: Serialize>(value: &T) -> anyhow::Result<Option<Vec<u8>>> {
    Ok(Some(serde_json::to_vec(value)?))
}

/// A body carrying a secret value, wiped once sent.
fn secret_json(value: serde_json::Value) -> anyhow::Result<Option<Vec<u8>>> {
    let text = Zeroizing::new(serde_json::to_vec(&value)?);
    Ok(Some(text.to_vec()))
}

/// Who is deciding, as recorded with the decision made on the local store.
fn operator() -> String {
    std::env::var("USER").map_or_else(|_| "cli".to_owned(), |user| format!("cli:{user}"))
}

impl Backend {
    /// `--data-dir DIR ` to repeat in printed hints, when local and not the default.
    pub fn data_dir_flag(&self) -> String {
        match self {
            Backend::Local { ctx, .. } => ctx.data_dir_flag(),
            Backend::Remote(_) => String::new(),
        }
    }

    /// Every secret; never values.
    pub async fn list_secrets(&self) -> anyhow::Result<Vec<SecretView>> {
        match self {
            Backend::Local { ops, .. } => Ok(ops.list_secrets().await?),
            Backend::Remote(r) => r.call(Method::GET, "/admin/v1/secrets", None).await,
        }
    }

    /// Store a credential.
    pub async fn add_secret(
        &self,
        name: &str,
        provider: &str,
        value: &SecretString,
    ) -> anyhow::Result<SecretView> {
        match self {
            Backend::Local { ctx, ops } => {
                let vault = ctx.unlock_vault().await?;
                Ok(ops.add_secret(&vault, name, provider, value).await?)
            }
            Backend::Remote(r) => {
                let body = serde_json::json!({
                    "name": name, "provider": provider, "value": value.expose_secret()
                });
                r.call(Method::POST, "/admin/v1/secrets", secret_json(body)?)
                    .await
            }
        }
    }

    /// Replace a credential's value.
    pub async fn rotate_secret(
        &self,
        name: &str,
        value: &SecretString,
    ) -> anyhow::Result<SecretView> {
        match self {
            Backend::Local { ctx, ops } => {
                let vault = ctx.unlock_vault().await?;
                Ok(ops.rotate_secret(&vault, name, value).await?)
            }
            Backend::Remote(r) => {
                let body = serde_json::json!({"value": value.expose_secret()});
                let path = format!("/admin/v1/secrets/{}/rotate", encode(name));
                r.call(Method::POST, &path, secret_json(body)?).await
            }
        }
    }

    /// Remove a secret and its tokens.
    pub async fn remove_secret(&self, name: &str) -> anyhow::Result<SecretRemoved> {
        match self {
            Backend::Local { ops, .. } => Ok(ops.remove_secret(name).await?),
            Backend::Remote(r) => {
                let path = format!("/admin/v1/secrets/{}", encode(name));
                r.call(Method::DELETE, &path, None).await
            }
        }
    }

    /// Mint a token.
    pub async fn create_token(&self, req: &NewTokenRequest) -> anyhow::Result<MintedView> {
        match self {
            Backend::Local { ctx, ops } => {
                let vault = ctx.unlock_vault().await?;
                Ok(ops.create_token(&vault, req).await?)
            }
            Backend::Remote(r) => r.call(Method::POST, "/admin/v1/tokens", json(req)?).await,
        }
    }

    /// Mint a child of a token.
    pub async fn derive_token(
        &self,
        parent: &str,
        req: &DeriveTokenRequest,
    ) -> anyhow::Result<MintedView> {
        match self {
            Backend::Local { ctx, ops } => {
                let vault = ctx.unlock_vault().await?;
                Ok(ops.derive_token(&vault, parent, req).await?)
            }
            Backend::Remote(r) => {
                let path = format!("/admin/v1/tokens/{}/derive", encode(parent));
                r.call(Method::POST, &path, json(req)?).await
            }
        }
    }

    /// Every token.
    pub async fn list_tokens(&self) -> anyhow::Result<Vec<TokenView>> {
        match self {
            Backend::Local { ops, .. } => Ok(ops.list_tokens().await?),
            Backend::Remote(r) => r.call(Method::GET, "/admin/v1/tokens", None).await,
        }
    }

    /// A token and its policies.
    pub async fn show_token(&self, id: &str) -> anyhow::Result<TokenDetail> {
        match self {
            Backend::Local { ops, .. } => Ok(ops.show_token(id).await?),
            Backend::Remote(r) => {
                let path = format!("/admin/v1/tokens/{}", encode(id));
                r.call(Method::GET, &path, None).await
            }
        }
    }

    /// Replace a token's policy or named policy.
    pub async fn update_token(
        &self,
        id: &str,
        req: &UpdateTokenRequest,
    ) -> anyhow::Result<TokenDetail> {
        match self {
            Backend::Local { ops, .. } => Ok(ops.update_token(id, req).await?),
            Backend::Remote(r) => {
                let path = format!("/admin/v1/tokens/{}", encode(id));
                r.call(Method::PATCH, &path, json(req)?).await
            }
        }
    }

    /// Revoke a token and its children.
    pub async fn revoke_token(&self, id: &str) -> anyhow::Result<Revoked> {
        match self {
            Backend::Local { ops, .. } => Ok(ops.revoke_token(id).await?),
            Backend::Remote(r) => {
                let path = format!("/admin/v1/tokens/{}/revoke", encode(id));
                r.call(Method::POST, &path, None).await
            }
        }
    }

    /// Create or replace a named policy.
    pub async fn set_policy(&self, name: &str, spec: &PolicySpec) -> anyhow::Result<PolicyView> {
        match self {
            Backend::Local { ops, .. } => Ok(ops.set_policy(name, spec).await?),
            Backend::Remote(r) => {
                let path = format!("/admin/v1/policies/{}", encode(name));
                r.call(Method::PUT, &path, json(spec)?).await
            }
        }
    }

    /// A named policy.
    pub async fn show_policy(&self, name: &str) -> anyhow::Result<PolicyView> {
        match self {
            Backend::Local { ops, .. } => Ok(ops.show_policy(name).await?),
            Backend::Remote(r) => {
                let path = format!("/admin/v1/policies/{}", encode(name));
                r.call(Method::GET, &path, None).await
            }
        }
    }

    /// Every named policy.
    pub async fn list_policies(&self) -> anyhow::Result<Vec<PolicyView>> {
        match self {
            Backend::Local { ops, .. } => Ok(ops.list_policies().await?),
            Backend::Remote(r) => r.call(Method::GET, "/admin/v1/policies", None).await,
        }
    }

    /// Remove a named policy.
    pub async fn remove_policy(&self, name: &str) -> anyhow::Result<()> {
        match self {
            Backend::Local { ops, .. } => Ok(ops.remove_policy(name).await?),
            Backend::Remote(r) => {
                let path = format!("/admin/v1/policies/{}", encode(name));
                r.call_empty(Method::DELETE, &path).await
            }
        }
    }

    /// Every capability the broker serves.
    pub async fn list_capabilities(&self) -> anyhow::Result<Vec<CapabilityView>> {
        match self {
            Backend::Local { ctx, ops } => Ok(ops.list_capabilities(&ctx.catalog()?).await?),
            Backend::Remote(r) => r.call(Method::GET, "/admin/v1/capabilities", None).await,
        }
    }

    /// One capability.
    pub async fn show_capability(&self, name: &str) -> anyhow::Result<CapabilityView> {
        match self {
            Backend::Local { ctx, ops } => Ok(ops.show_capability(&ctx.catalog()?, name).await?),
            Backend::Remote(r) => {
                let path = format!("/admin/v1/capabilities/{}", encode(name));
                r.call(Method::GET, &path, None).await
            }
        }
    }

    /// Store capabilities, all or none.
    pub async fn add_capabilities(
        &self,
        new: &NewCapabilities,
    ) -> anyhow::Result<Vec<CapabilityAdded>> {
        match self {
            Backend::Local { ctx, ops } => Ok(ops.add_capabilities(&ctx.catalog()?, new).await?),
            Backend::Remote(r) => {
                r.call(Method::POST, "/admin/v1/capabilities", json(new)?)
                    .await
            }
        }
    }

    /// Remove a stored capability.
    pub async fn remove_capability(&self, name: &str) -> anyhow::Result<()> {
        match self {
            Backend::Local { ctx, ops } => Ok(ops.remove_capability(&ctx.catalog()?, name).await?),
            Backend::Remote(r) => {
                let path = format!("/admin/v1/capabilities/{}", encode(name));
                r.call_empty(Method::DELETE, &path).await
            }
        }
    }

    /// Run a capability as the operator, where the backend is; its answer.
    pub async fn test_capability(
        &self,
        name: &str,
        args: &serde_json::Value,
    ) -> anyhow::Result<serde_json::Value> {
        match self {
            Backend::Local { ctx, .. } => capability::test_here(ctx, name, args).await,
            Backend::Remote(r) => {
                let path = format!("/admin/v1/capabilities/{}/test", encode(name));
                let body = TestCapabilityRequest {
                    arguments: args.clone(),
                };
                r.call_waiting(Method::POST, &path, json(&body)?, TRIAL_WAIT)
                    .await
            }
        }
    }

    /// Held requests.
    pub async fn list_approvals(&self, all: bool) -> anyhow::Result<Vec<ApprovalView>> {
        match self {
            Backend::Local { ops, .. } => Ok(ops.list_approvals(all).await?),
            Backend::Remote(r) => {
                let path = format!("/admin/v1/approvals?all={all}");
                r.call(Method::GET, &path, None).await
            }
        }
    }

    /// One held (or decided) request.
    pub async fn approval(&self, id: &str) -> anyhow::Result<ApprovalView> {
        match self {
            Backend::Local { ops, .. } => Ok(ops.approval(id).await?),
            Backend::Remote(r) => {
                let path = format!("/admin/v1/approvals/{}", encode(id));
                r.call(Method::GET, &path, None).await
            }
        }
    }

    /// Approve or deny a held request.
    pub async fn decide(
        &self,
        id: &str,
        state: ApprovalState,
        reason: Option<&str>,
    ) -> anyhow::Result<ApprovalView> {
        match self {
            Backend::Local { ops, .. } => Ok(ops.decide(id, state, reason, &operator()).await?),
            Backend::Remote(r) => {
                let id = encode(id);
                match state {
                    ApprovalState::Denied => {
                        let body = DenyRequest {
                            reason: reason.map(str::to_owned),
                        };
                        let path = format!("/admin/v1/approvals/{id}/deny");
                        r.call(Method::POST, &path, json(&body)?).await
                    }
                    _ => {
                        let path = format!("/admin/v1/approvals/{id}/approve");
                        r.call(Method::POST, &path, None).await
                    }
                }
            }
        }
    }

    /// Audit records matching `q`, oldest first.
    pub async fn audit(&self, q: &AuditQuery) -> anyhow::Result<Vec<AuditView>> {
        match self {
            Backend::Local { ops, .. } => Ok(ops.audit(q).await?),
            Backend::Remote(r) => {
                let query = serde_urlencoded::to_string(q)?;
                r.call(Method::GET, &format!("/admin/v1/audit?{query}"), None)
                    .await
            }
        }
    }

    /// Walk the audit log's hash chains.
    pub async fn verify_audit(&self) -> anyhow::Result<VerifyReport> {
        match self {
            Backend::Local { ctx, ops } => {
                let key = ctx.unlock_vault().await?.audit_key();
                Ok(ops.verify_audit(&key).await?)
            }
            Backend::Remote(r) => r.call(Method::GET, "/admin/v1/audit/verify", None).await,
        }
    }

    /// Daily usage per token and agent.
    pub async fn usage(&self, q: &UsageQuery) -> anyhow::Result<UsageReport> {
        match self {
            Backend::Local { ops, .. } => Ok(ops.usage(q).await?),
            Backend::Remote(r) => {
                let mut path = format!("/admin/v1/usage?days={}", q.days);
                for (key, value) in [("token", &q.token), ("agent", &q.agent)] {
                    if let Some(value) = value {
                        path.push_str(&format!("&{key}={}", encode(value)));
                    }
                }
                r.call(Method::GET, &path, None).await
            }
        }
    }
}
