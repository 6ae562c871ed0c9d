//! What operator operations take and return: the admin API's JSON bodies and the CLI's
//! `--json` output, one shape for both (and for `--remote`, which reads them back).

use std::collections::BTreeMap;

use secrecy::SecretString;
use serde::{Deserialize, Deserializer, Serialize};
use serde_json::Value;

use crate::capabilities::{Capability, CapabilitySpec};
use crate::clock;
use crate::policy::{self, PolicySpec};
use crate::store::{
    ApprovalRecord, ApprovalState, PolicyRecord, SecretSummary, TokenRecord, UsageRecord,
};

/// An optional Unix time as RFC 3339 (`null` when absent).
fn when(unix: Option<i64>) -> Option<String> {
    unix.map(clock::format)
}

/// A stored secret as listed: never its value.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SecretView {
    /// Row id (`sec_…`).
    pub id: String,
    /// Name tokens refer to it by.
    pub name: String,
    /// Provider the credential is for.
    pub provider: String,
    /// Value version, bumped on rotation.
    pub version: i64,
    /// Tokens (any state) that use it.
    pub tokens: i64,
    /// Creation time (RFC 3339).
    pub created_at: Option<String>,
    /// Last rotation time.
    pub rotated_at: Option<String>,
}

impl From<&SecretSummary> for SecretView {
    fn from(s: &SecretSummary) -> Self {
        SecretView {
            id: s.id.clone(),
            name: s.name.clone(),
            provider: s.provider.clone(),
            version: s.version,
            tokens: s.tokens,
            created_at: when(Some(s.created_at)),
            rotated_at: when(s.rotated_at),
        }
    }
}

/// Read a secret value from JSON straight into a [`SecretString`].
fn secret_value<'de, D: Deserializer<'de>>(d: D) -> Result<SecretString, D::Error> {
    String::deserialize(d).map(SecretString::from)
}

/// `POST /admin/v1/secrets`: store a credential.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NewSecretRequest {
    /// Name to refer to the secret by.
    pub name: String,
    /// Provider the credential is for.
    pub provider: String,
    /// The credential; never echoed.
    #[serde(deserialize_with = "secret_value")]
    pub value: SecretString,
}

/// `POST /admin/v1/secrets/{name}/rotate`: replace a credential's value.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RotateSecretRequest {
    /// The new value; never echoed.
    #[serde(deserialize_with = "secret_value")]
    pub value: SecretString,
}

/// What removing a secret took with it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SecretRemoved {
    /// The secret's name.
    pub name: String,
    /// Tokens removed with it.
    pub tokens_removed: u64,
}

/// A token as listed: never the token text, only a short prefix.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TokenView {
    /// Row id (`tok_…`).
    pub id: String,
    /// Agent the token was issued to.
    pub agent: String,
    /// The secret it unlocks.
    pub secret: String,
    /// That secret's provider.
    pub provider: String,
    /// Short displayable prefix of the token.
    pub token: String,
    /// `active`, `revoked` or `expired`.
    pub state: String,
    /// The token it was derived from.
    pub parent: Option<String>,
    /// The named policy it follows.
    pub policy_name: Option<String>,
    /// Whether it has a policy of its own.
    #[serde(default)]
    pub own_policy: bool,
    /// Creation time.
    pub created_at: Option<String>,
    /// Expiry time.
    pub expires_at: Option<String>,
    /// Revocation time.
    pub revoked_at: Option<String>,
    /// Last time a broker saw it used.
    pub last_used_at: Option<String>,
}

impl TokenView {
    /// The view of a stored token at `now`.
    pub fn of(t: &TokenRecord, now: i64) -> Self {
        let state = match policy::check_lifetime(t, now) {
            Ok(()) => "active",
            Err(policy::Denial::Revoked(_)) => "revoked",
            Err(_) => "expired",
        };
        TokenView {
            id: t.id.clone(),
            agent: t.agent.clone(),
            secret: t.secret_name.clone(),
            provider: t.provider.clone(),
            token: t.hint.clone(),
            state: state.to_owned(),
            parent: t.parent_id.clone(),
            policy_name: t.policy_name.clone(),
            own_policy: t.policy.is_some(),
            created_at: when(Some(t.created_at)),
            expires_at: when(t.expires_at),
            revoked_at: when(t.revoked_at),
            last_used_at: when(t.last_used_at),
        }
    }
}

/// A token with its policies.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TokenDetail {
    /// The token.
    pub token: TokenView,
    /// Its own policy.
    pub policy: Option<PolicySpec>,
    /// Its named policy's content (`null` if it has none, or the name no longer exists).
    pub named_policy: Option<PolicySpec>,
}

/// A freshly minted token: the only time its text is shown.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct MintedView {
    /// The token text; only its hash is kept.
    pub token: String,
    /// Row id.
    pub id: String,
    /// Agent name.
    pub agent: String,
    /// The parent, for derived tokens.
    pub parent_id: Option<String>,
    /// Expiry time.
    pub expires_at: Option<String>,
    /// For providers that sign requests (AWS SigV4): the access key id to give the agent's
    /// SDK with the token as its secret access key.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub access_key_id: Option<String>,
}

/// `POST /admin/v1/tokens`: mint a token for a secret.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NewTokenRequest {
    /// The secret the token unlocks.
    pub secret: String,
    /// Agent name.
    #[serde(default = "default_agent")]
    pub agent: String,
    /// The token's own policy (its `ttl` / `expires_at` set the token's lifetime).
    #[serde(default)]
    pub policy: Option<PolicySpec>,
    /// A named policy the token also follows.
    #[serde(default)]
    pub policy_name: Option<String>,
}

fn default_agent() -> String {
    "default".to_owned()
}

/// `POST /admin/v1/tokens/{id}/derive`: mint a narrower child.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeriveTokenRequest {
    /// Agent name (default: the parent's, marked as a child).
    #[serde(default)]
    pub agent: Option<String>,
    /// The child's own policy; its `ttl` is the child's lifetime (an hour by default).
    #[serde(default)]
    pub policy: Option<PolicySpec>,
}

/// `PATCH /admin/v1/tokens/{id}`: replace a token's policy and/or named policy.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UpdateTokenRequest {
    /// The new own policy (replaces the old one; its `ttl` restarts the token's lifetime,
    /// which for a derived token still ends with its parent's).
    #[serde(default)]
    pub policy: Option<PolicySpec>,
    /// Follow this named policy from now on.
    #[serde(default)]
    pub policy_name: Option<String>,
    /// Stop following a named policy.
    #[serde(default)]
    pub clear_policy_name: bool,
}

/// What revoking a token did.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Revoked {
    /// The token revoked.
    pub id: String,
    /// How many tokens were revoked: it and its descendants.
    pub revoked: u64,
}

/// A named policy.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PolicyView {
    /// Its name.
    pub name: String,
    /// Its content.
    pub policy: PolicySpec,
    /// Creation time.
    pub created_at: Option<String>,
    /// Last change.
    pub updated_at: Option<String>,
}

impl PolicyView {
    /// The view of a stored policy; a row that no longer parses is a store fault.
    pub fn of(p: &PolicyRecord) -> Result<Self, serde_json::Error> {
        Ok(PolicyView {
            name: p.name.clone(),
            policy: serde_json::from_str(&p.spec)?,
            created_at: when(Some(p.created_at)),
            updated_at: when(Some(p.updated_at)),
        })
    }
}

/// A capability agents may invoke, as listed.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CapabilityView {
    /// Its name (also its MCP tool name).
    pub name: String,
    /// `email`, `sql` or `http`.
    pub kind: String,
    /// What it does, for the model.
    pub description: String,
    /// The secret it runs with.
    pub secret: String,
    /// `config` (the config file's, read-only here) or `store` (`capability add`).
    pub source: String,
    /// Whether every call waits for an operator's approval.
    pub require_approval: bool,
    /// JSON Schema of its arguments, as shown to models.
    pub input_schema: Value,
}

impl From<&Capability> for CapabilityView {
    fn from(c: &Capability) -> Self {
        let common = c.spec.common();
        CapabilityView {
            name: c.name.clone(),
            kind: c.spec.kind().to_owned(),
            description: common.description.to_owned(),
            secret: common.secret.to_owned(),
            source: if c.from_config { "config" } else { "store" }.to_owned(),
            require_approval: common.require_approval,
            input_schema: c.schema.clone(),
        }
    }
}

/// `POST /admin/v1/capabilities`: definitions to store, all or none, by name (each the
/// JSON of a `[capabilities.NAME]` table).
#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NewCapabilities {
    /// The definitions.
    pub capabilities: BTreeMap<String, CapabilitySpec>,
}

/// A capability stored by `capability add`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CapabilityAdded {
    /// Its name.
    pub name: String,
    /// Whether it replaced a stored one of that name.
    pub replaced: bool,
    /// The secret it runs with.
    pub secret: String,
    /// The provider that secret must be stored for.
    pub secret_provider: String,
    /// Whether that secret exists yet (calls fail until it does).
    pub secret_exists: bool,
}

/// `POST /admin/v1/capabilities/{name}/test`: the arguments to run it with.
#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TestCapabilityRequest {
    /// The arguments, a JSON object (`{}` when absent).
    #[serde(default = "empty_object")]
    pub arguments: Value,
}

fn empty_object() -> Value {
    Value::Object(serde_json::Map::new())
}

/// A request held for approval.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ApprovalView {
    /// Row id (`apr_…`).
    pub id: String,
    /// Where it stands.
    pub state: ApprovalState,
    /// What was asked (agent, provider, method, path, model, rule).
    pub request: serde_json::Value,
    /// Why it was denied.
    pub reason: Option<String>,
    /// When it was held.
    pub created_at: Option<String>,
    /// When it expires undecided.
    pub expires_at: Option<String>,
    /// When it was decided.
    pub decided_at: Option<String>,
    /// Who decided.
    pub decided_by: Option<String>,
}

impl From<&ApprovalRecord> for ApprovalView {
    fn from(a: &ApprovalRecord) -> Self {
        ApprovalView {
            id: a.id.clone(),
            state: a.state,
            request: serde_json::from_str(&a.summary).unwrap_or_default(),
            reason: a.reason.clone(),
            created_at: when(Some(a.created_at)),
            expires_at: when(Some(a.expires_at)),
            decided_at: when(a.decided_at),
            decided_by: a.decided_by.clone(),
        }
    }
}

/// `POST /admin/v1/approvals/{id}/deny`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DenyRequest {
    /// Why, for the agent.
    #[serde(default)]
    pub reason: Option<String>,
}

/// Which usage to report (`GET /admin/v1/usage`).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UsageQuery {
    /// Days to cover, today included.
    #[serde(default = "default_days")]
    pub days: u32,
    /// Only this token.
    #[serde(default)]
    pub token: Option<String>,
    /// Only this agent's tokens.
    #[serde(default)]
    pub agent: Option<String>,
}

fn default_days() -> u32 {
    7
}

/// One token's counters on one day.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TokenUsage {
    /// The day (UTC, `YYYY-MM-DD`).
    pub day: String,
    /// The token.
    pub token_id: String,
    /// Its agent.
    pub agent: String,
    /// Requests.
    pub requests: u64,
    /// LLM tokens.
    pub tokens: u64,
}

impl From<&UsageRecord> for TokenUsage {
    fn from(u: &UsageRecord) -> Self {
        TokenUsage {
            day: day_text(u.day),
            token_id: u.token_id.clone(),
            agent: u.agent.clone(),
            requests: u.requests,
            tokens: u.tokens,
        }
    }
}

/// One agent's counters on one day, summed over its tokens.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct AgentUsage {
    /// The day (UTC, `YYYY-MM-DD`).
    pub day: String,
    /// The agent.
    pub agent: String,
    /// Requests.
    pub requests: u64,
    /// LLM tokens.
    pub tokens: u64,
}

/// Daily usage per token and per agent.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct UsageReport {
    /// Per token and day.
    pub tokens: Vec<TokenUsage>,
    /// Per agent and day.
    pub agents: Vec<AgentUsage>,
}

/// `YYYY-MM-DD` of a Unix day number.
fn day_text(day: i64) -> String {
    clock::format(day.saturating_mul(86_400))
        .chars()
        .take(10)
        .collect()
}
