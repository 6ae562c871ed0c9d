//! Human in the loop: a request matching `require_approval` is held, with the agent's
//! connection open, until an operator approves or denies it (CLI or API) or it times out.
//! A configured webhook is told about each held request.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use axum::body::Body;
use http::{Request, header};
use serde::Serialize;

use crate::capabilities::params::APPROVAL_SHOWN_BYTES;
use crate::proxy::UpstreamClient;
use crate::store::{self, ApprovalRecord, ApprovalState, Store, StoreError};
use crate::{clock, tokens};

/// How often a held request checks for a decision.
const POLL: Duration = Duration::from_millis(250);
/// Longest wait for the webhook to answer.
const WEBHOOK_TIMEOUT: Duration = Duration::from_secs(5);
/// Requests one token the operator issued, with the tokens derived from it, may have waiting
/// for a decision at once.
pub const MAX_PENDING_PER_TOKEN: u32 = 8;
/// Longest model name or path shown to the person deciding.
const MAX_SHOWN: usize = 200;
/// Longest summary of a capability call's arguments shown: whole arguments up to
/// [`APPROVAL_SHOWN_BYTES`] must fit, with room for escapes.
const MAX_ARGUMENTS_SHOWN: usize = 2 * APPROVAL_SHOWN_BYTES;

/// What an operator (and the webhook) sees of a held request. Never a secret or a body.
#[derive(Debug, Clone, Serialize)]
pub struct Summary {
    /// Agent name of the token.
    pub agent: String,
    /// Token id.
    pub token_id: String,
    /// Provider.
    pub provider: String,
    /// HTTP method.
    pub method: String,
    /// Path below the provider's base.
    pub path: String,
    /// Model, if the request names one.
    pub model: Option<String>,
    /// The `require_approval` rule that matched.
    pub rule: String,
    /// For a capability call, its arguments (whole up to `APPROVAL_SHOWN_BYTES`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub arguments: Option<String>,
}

impl Summary {
    /// A summary whose agent-supplied parts (path, model) are made safe to show: control
    /// characters escaped, so they can't rewrite an operator's terminal, and length capped.
    pub fn new(
        agent: &str,
        token_id: &str,
        provider: &str,
        method: &str,
        path: &str,
        model: Option<&str>,
        rule: String,
    ) -> Self {
        Summary {
            agent: agent.to_owned(),
            token_id: token_id.to_owned(),
            provider: provider.to_owned(),
            method: method.to_owned(),
            path: shown(path),
            model: model.map(shown),
            rule,
            arguments: None,
        }
    }

    /// The same summary, showing a capability call's arguments (escaped and cut like the
    /// path).
    pub fn with_arguments(mut self, arguments: &str) -> Self {
        self.arguments = Some(shown_up_to(arguments, MAX_ARGUMENTS_SHOWN));
        self
    }
}

/// `text` with control characters escaped, cut after `MAX_SHOWN` bytes.
fn shown(text: &str) -> String {
    shown_up_to(text, MAX_SHOWN)
}

/// Invisible characters that reorder or hide text on screen (bidirectional overrides and
/// isolates, zero-width characters), so what the operator reads isn't what was sent.
const HIDING: &[char] = &[
    '\u{200b}', '\u{200c}', '\u{200d}', '\u{200e}', '\u{200f}', '\u{202a}', '\u{202b}', '\u{202c}',
    '\u{202d}', '\u{202e}', '\u{2066}', '\u{2067}', '\u{2068}', '\u{2069}', '\u{feff}',
];

/// `text` with control and hiding characters escaped, cut after `limit` bytes.
pub(crate) fn shown_up_to(text: &str, limit: usize) -> String {
    let mut out = String::new();
    for c in text.chars() {
        if out.len() >= limit {
            out.push('…');
            break;
        }
        if c.is_control() || HIDING.contains(&c) {
            out.extend(c.escape_default());
        } else {
            out.push(c);
        }
    }
    out
}

/// How a hold ended, when not approved.
#[derive(Debug, thiserror::Error)]
pub enum NotApproved {
    /// An operator said no.
    #[error("an operator denied this request{}", reason.as_deref().map(|r| format!(": {r}")).unwrap_or_default())]
    Denied {
        /// The operator's reason.
        reason: Option<String>,
    },
    /// Nobody decided in time.
    #[error("nobody approved this request within {0:?}")]
    TimedOut(Duration),
    /// The token's family (its root and every token derived from it) already has the most
    /// requests waiting that it may have.
    #[error(
        "{MAX_PENDING_PER_TOKEN} requests of the token the operator issued and the tokens \
         derived from it are already waiting for approval"
    )]
    TooManyPending,
    /// The store could not record or report the decision.
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Holds requests for approval.
pub struct Approvals {
    store: Arc<dyn Store>,
    timeout: Duration,
    webhook: Option<(http::Uri, UpstreamClient)>,
    /// Requests waiting, by the id of the token the operator issued: the tokens derived from
    /// it share its place in line, or each child derived would bring as many again.
    pending: Mutex<HashMap<String, u32>>,
}

/// One waiting request's place in `pending`, given back when the hold ends or the agent
/// hangs up.
struct Waiting<'a> {
    pending: &'a Mutex<HashMap<String, u32>>,
    token_id: String,
}

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        let mut pending = self.pending.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(n) = pending.get_mut(&self.token_id) {
            *n -= 1;
            if *n == 0 {
                pending.remove(&self.token_id);
            }
        }
    }
}

impl Approvals {
    /// Hold for at most `timeout`; notify `webhook` (POST JSON) of each held request.
    pub fn new(
        store: Arc<dyn Store>,
        timeout: Duration,
        webhook: Option<(http::Uri, UpstreamClient)>,
    ) -> Self {
        Approvals {
            store,
            timeout,
            webhook,
            pending: Mutex::default(),
        }
    }

    fn wait_in_line(&self, token_id: &str) -> Result<Waiting<'_>, NotApproved> {
        let mut pending = self.pending.lock().unwrap_or_else(PoisonError::into_inner);
        let n = pending.entry(token_id.to_owned()).or_default();
        if *n >= MAX_PENDING_PER_TOKEN {
            return Err(NotApproved::TooManyPending);
        }
        *n += 1;
        Ok(Waiting {
            pending: &self.pending,
            token_id: token_id.to_owned(),
        })
    }

    /// Hold a request until it is decided; `Ok` means approved. `root` is the id of the token
    /// the operator issued at the end of the requesting token's chain.
    pub async fn hold(
        &self,
        tenant: &str,
        root: &str,
        summary: Summary,
    ) -> Result<(), NotApproved> {
        let _waiting = self.wait_in_line(root)?;
        let now = clock::now();
        let timeout_secs = i64::try_from(self.timeout.as_secs()).unwrap_or(i64::MAX);
        let record = ApprovalRecord {
            id: format!("apr_{}", tokens::random_base62(12)),
            tenant: tenant.to_owned(),
            token_id: summary.token_id.clone(),
            summary: serde_json::to_string(&summary).unwrap_or_default(),
            state: ApprovalState::Pending,
            reason: None,
            created_at: now,
            expires_at: now.saturating_add(timeout_secs),
            decided_at: None,
            decided_by: None,
        };
        store::timed(self.store.insert_approval(&record)).await?;
        tracing::info!(approval = %record.id, agent = %summary.agent, rule = %summary.rule, "request held for approval");
        self.notify(&record, &summary);
        let deadline = tokio::time::Instant::now() + self.timeout;
        loop {
            tokio::time::sleep(POLL).await;
            let state = store::timed(self.store.approval(tenant, &record.id)).await?;
            match state.as_ref().map(|a| a.state) {
                Some(ApprovalState::Approved) => return Ok(()),
                Some(ApprovalState::Denied) => {
                    return Err(NotApproved::Denied {
                        reason: state.and_then(|a| a.reason),
                    });
                }
                Some(ApprovalState::Expired) | None => {
                    return Err(NotApproved::TimedOut(self.timeout));
                }
                Some(ApprovalState::Pending) if tokio::time::Instant::now() >= deadline => {
                    let expired = store::timed(self.store.decide_approval(
                        tenant,
                        &record.id,
                        ApprovalState::Expired,
                        None,
                        "timeout",
                        clock::now(),
                    ))
                    .await?;
                    // Decided at the last moment: go by the decision.
                    if !expired {
                        continue;
                    }
                    return Err(NotApproved::TimedOut(self.timeout));
                }
                Some(ApprovalState::Pending) => {}
            }
        }
    }

    /// Tell the webhook, without waiting for it: a slow webhook must not delay the hold.
    fn notify(&self, record: &ApprovalRecord, summary: &Summary) {
        let Some((uri, client)) = &self.webhook else {
            return;
        };
        let payload = serde_json::json!({
            "event": "approval.requested",
            "approval_id": record.id,
            "created_at": clock::format(record.created_at),
            "expires_at": clock::format(record.expires_at),
            "request": summary,
        });
        let request = Request::post(uri.clone())
            .header(header::CONTENT_TYPE, "application/json")
            .body(Body::from(payload.to_string()));
        let (client, id) = (client.clone(), record.id.clone());
        tokio::spawn(async move {
            let Ok(request) = request else { return };
            match tokio::time::timeout(WEBHOOK_TIMEOUT, client.request(request)).await {
                Ok(Ok(response)) if response.status().is_success() => {}
                Ok(Ok(response)) => {
                    tracing::warn!(approval = %id, status = %response.status(), "approval webhook refused the notice")
                }
                Ok(Err(e)) => {
                    tracing::warn!(approval = %id, error = %e, "approval webhook unreachable")
                }
                Err(_) => tracing::warn!(approval = %id, "approval webhook timed out"),
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn what_an_agent_wrote_is_shown_escaped_and_short() {
        assert_eq!(
            shown("dall-e-2\u{1b}[2K\r\nFAKE"),
            "dall-e-2\\u{1b}[2K\\r\\nFAKE"
        );
        let long = shown(&"x".repeat(1000));
        assert_eq!(long.len(), MAX_SHOWN + '…'.len_utf8());
        // Right-to-left override: "pay alice" would read as "pay ecila" reversed on screen.
        assert_eq!(shown("pay \u{202e}ecila"), "pay \\u{202e}ecila");
    }
}
