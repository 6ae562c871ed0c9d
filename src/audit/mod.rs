//! The audit log: one record for every request that reaches the agent listener, in a hash
//! chain per tenant, written in batches off the hot path.
//!
//! The proxy fills an [`AuditRecord`] as the request goes and hands it to the [`Auditor`]
//! when the response ends; the writer task appends batches to the store, which numbers and
//! chains them (see [`chain`]).

mod chain;
mod retention;
mod writer;

use serde::{Deserialize, Serialize};

use crate::store::TokenRecord;

pub use chain::{
    AuditSigner, ChainError, ChainKey, GENESIS, Head, HeadRole, SignedHead, SignedTenants,
    StoredRecord, Verifier, VerifyError, extend, link, verify,
};
pub use retention::{prune, run_retention};
pub use writer::{AuditUnavailable, Auditor, Durability, Slot, Writer, run_writer};

/// What the broker made of a request.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Decision {
    /// Forwarded to the upstream.
    #[default]
    Allowed,
    /// Held for approval, approved, and forwarded.
    Approved,
    /// Refused: authentication, policy, a limit, or an operator.
    Denied,
    /// Forwarded, but the upstream failed, timed out or broke off.
    UpstreamError,
    /// The broker couldn't serve it: store, credential or audit log unavailable.
    Failed,
    /// The client closed the connection before the response (status 499).
    ClientClosed,
}

impl Decision {
    /// The spelling records use.
    pub fn as_str(self) -> &'static str {
        match self {
            Decision::Allowed => "allowed",
            Decision::Approved => "approved",
            Decision::Denied => "denied",
            Decision::UpstreamError => "upstream_error",
            Decision::Failed => "failed",
            Decision::ClientClosed => "client_closed",
        }
    }
}

/// One request, as the audit log keeps it. Never holds a secret or a full token.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct AuditRecord {
    /// When the request arrived (Unix milliseconds).
    pub at_ms: i64,
    /// The id the agent got in `x-seks-request-id`.
    pub request_id: String,
    /// Tenant.
    pub tenant: String,
    /// Token id, once the token was recognised.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token_id: Option<String>,
    /// Agent name of the token.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub agent: Option<String>,
    /// Name of the secret the token unlocks.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret: Option<String>,
    /// Provider, when the route named a known one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub provider: Option<String>,
    /// HTTP method.
    pub method: String,
    /// Path below the provider's base, with credential-carrying query parameters removed.
    pub path: String,
    /// The capability invoked, for a capability call.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub capability: Option<String>,
    /// A capability call's arguments, shortened (long text cut, never a secret).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub arguments: Option<String>,
    /// The destination (`host:port`) of a request through the forward proxy.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host: Option<String>,
    /// Model, when the request or its answer named one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model: Option<String>,
    /// LLM tokens the provider reported.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub usage_tokens: Option<u64>,
    /// Status returned to the agent.
    pub status: u16,
    /// What the broker made of it.
    pub decision: Decision,
    /// The broker's error code, when it refused or failed the request.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// Why, in the words the agent got (names the rule that stopped it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// Request body bytes received from the agent.
    pub bytes_in: u64,
    /// Response body bytes sent to the agent.
    pub bytes_out: u64,
    /// Time from forwarding until the upstream's response headers (microseconds).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub upstream_us: Option<u64>,
    /// Time from arrival until the response ended (microseconds).
    pub total_us: u64,
    /// Client address.
    pub client: String,
}

/// The status recorded for a request whose client left before the response (as nginx logs it).
pub const CLIENT_CLOSED: u16 = 499;

impl AuditRecord {
    /// The record of a request that has just arrived, as it stands if its client leaves
    /// before the response; the request fills it in as it goes.
    pub fn arriving(method: &str, path: String, client: std::net::SocketAddr) -> AuditRecord {
        AuditRecord {
            at_ms: crate::clock::now_ms(),
            request_id: new_request_id(),
            tenant: crate::store::DEFAULT_TENANT.to_owned(),
            method: method.to_owned(),
            path,
            client: client.to_string(),
            status: CLIENT_CLOSED,
            decision: Decision::ClientClosed,
            ..AuditRecord::default()
        }
    }

    /// Attribute the request to the token that made it: its tenant, id, agent and secret.
    pub fn attribute_to(&mut self, token: &TokenRecord) {
        self.tenant = token.tenant.clone();
        self.token_id = Some(token.id.clone());
        self.agent = Some(token.agent.clone());
        self.secret = Some(token.secret_name.clone());
    }
}

/// A fresh request id: `req_`, a random prefix drawn once per process, and a counter, so ids
/// are unique across restarts without asking the system for randomness on every request.
pub fn new_request_id() -> String {
    static PREFIX: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let prefix = PREFIX.get_or_init(|| crate::tokens::random_base62(8));
    let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let mut id = String::with_capacity(4 + prefix.len() + 8);
    id.push_str("req_");
    id.push_str(prefix);
    id.extend(crate::tokens::base62_digits::<8>(n).map(char::from));
    id
}

/// A status filter: `4xx` for a class, `404` for one status.
pub fn status_range(text: &str) -> Option<(u16, u16)> {
    if let Some(class) = text.strip_suffix("xx") {
        let class: u16 = class.parse().ok().filter(|c| (1..=5).contains(c))?;
        return Some((class * 100, class * 100 + 99));
    }
    let status: u16 = text.parse().ok().filter(|s| (100..=599).contains(s))?;
    Some((status, status))
}

#[cfg(test)]
mod tests;
