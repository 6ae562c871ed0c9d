//! `POST /seks/v1/tokens/derive`: an agent mints a narrower, shorter-lived child of its own
//! token for a sub-agent, without operator rights. The child can never widen anything: its
//! requests must also pass every policy of its ancestors, and it dies with its parent.

use std::num::NonZeroU32;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::Json;
use axum::extract::{ConnectInfo, State};
use axum::response::{IntoResponse, Response};
use governor::clock::{Clock, DefaultClock};
use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};
use http::{HeaderMap, Method, StatusCode, header};
use http_body_util::BodyExt;
use secrecy::ExposeSecret;
use serde::Deserialize;
use serde_json::json;

use super::AppState;
use super::capability::error;
use super::conn::ClientAddr;
use crate::audit::{AuditRecord, Decision};
use crate::clock;
use crate::grants::{self, GrantError};
use crate::keyring::TokenEntry;
use crate::policy::PolicySpec;
use crate::providers::ErrorShape;
use crate::proxy::{ProxyError, REQUEST_ID_HEADER, SEKS_ERROR_HEADER};
use crate::store::DEFAULT_TENANT;

/// What the agent asks for.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeriveRequest {
    /// Lifetime (`10m`); at most the parent's remaining lifetime, an hour by default.
    #[serde(default, with = "humantime_serde")]
    ttl: Option<Duration>,
    /// Name for the sub-agent.
    agent: Option<String>,
    /// The child's own policy (same fields as a policy file).
    policy: Option<PolicySpec>,
}

/// Children one operator-issued token and its descendants may derive per minute, all
/// together: enough for any fan-out of sub-agents, too few to flood the store.
const DERIVES_PER_MINUTE: NonZeroU32 = NonZeroU32::new(30).expect("non-zero");
/// Past this many tokens tracked, idle entries are forgotten.
const TRACKED_TOKENS: usize = 4096;

/// The rate at which each token may derive children.
pub struct DeriveLimiter(DefaultKeyedRateLimiter<String>);

impl Default for DeriveLimiter {
    fn default() -> Self {
        DeriveLimiter(RateLimiter::keyed(Quota::per_minute(DERIVES_PER_MINUTE)))
    }
}

impl DeriveLimiter {
    /// Take one derive for the family of the root token `id`, or say how long to wait.
    fn check(&self, id: &str) -> Result<(), Duration> {
        if self.0.len() > TRACKED_TOKENS {
            self.0.retain_recent();
        }
        self.0.check_key(&id.to_owned()).map_err(|not_until| {
            not_until
                .wait_time_from(DefaultClock::default().now())
                .max(Duration::from_secs(1))
        })
    }
}

/// Where agents derive tokens.
pub const DERIVE_PATH: &str = "/seks/v1/tokens/derive";
/// Largest derive request body.
const MAX_DERIVE_BODY: usize = 64 * 1024;

/// Handle a derive request, and audit it like any other request.
pub async fn derive(
    State(state): State<Arc<AppState>>,
    ConnectInfo(ClientAddr(client)): ConnectInfo<ClientAddr>,
    method: Method,
    headers: HeaderMap,
    body: axum::body::Body,
) -> Response {
    let started = Instant::now();
    let mut record = AuditRecord {
        at_ms: clock::now_ms(),
        request_id: crate::audit::new_request_id(),
        tenant: DEFAULT_TENANT.to_owned(),
        method: method.to_string(),
        path: DERIVE_PATH.to_owned(),
        client: client.to_string(),
        ..AuditRecord::default()
    };
    let mut caller = None;
    // Every way this can end is audited, so the method and the size are checked here
    // rather than by the router.
    let admitted = state.auditor.admit();
    let mut response = if let Err(e) = &admitted {
        error(
            StatusCode::SERVICE_UNAVAILABLE,
            "audit_unavailable",
            &e.to_string(),
        )
    } else if method != Method::POST {
        error(
            StatusCode::METHOD_NOT_ALLOWED,
            "method_not_allowed",
            "derive a token with POST",
        )
    } else {
        match http_body_util::Limited::new(body, MAX_DERIVE_BODY)
            .collect()
            .await
        {
            Ok(body) => {
                let body = body.to_bytes();
                record.bytes_in = body.len() as u64;
                mint(&state, &headers, &body, &mut caller).await
            }
            Err(e) => match ProxyError::unreadable_body(e.as_ref(), MAX_DERIVE_BODY) {
                ProxyError::BodyTooLarge(_) => error(
                    StatusCode::PAYLOAD_TOO_LARGE,
                    "body_too_large",
                    &format!("a derive request is at most {MAX_DERIVE_BODY} bytes"),
                ),
                other => error(other.status(), other.code(), &other.to_string()),
            },
        }
    };
    if let Some(entry) = caller {
        let token = &entry.record;
        record.attribute_to(token);
        record.provider = Some(token.provider.clone());
    }
    let status = response.status();
    record.status = status.as_u16();
    record.decision = match status {
        s if s.is_success() => Decision::Allowed,
        s if s.is_server_error() => Decision::Failed,
        _ => Decision::Denied,
    };
    record.error = response
        .headers()
        .get(SEKS_ERROR_HEADER)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    record.bytes_out = http_body::Body::size_hint(response.body())
        .exact()
        .unwrap_or_default();
    record.total_us = u64::try_from(started.elapsed().as_micros()).unwrap_or(u64::MAX);
    if let Ok(id) = http::HeaderValue::from_str(&record.request_id) {
        response.headers_mut().insert(REQUEST_ID_HEADER, id);
    }
    let refused_for_audit = record.error.as_deref() == Some("audit_unavailable");
    let slot = admitted.ok().flatten();
    if state.auditor.is_strict() && !refused_for_audit {
        // A minted token must not reach the agent before its record is durable.
        if let Err(e) = state.auditor.submit_durable(record, slot).await {
            return error(
                StatusCode::SERVICE_UNAVAILABLE,
                "audit_unavailable",
                &e.to_string(),
            );
        }
    } else {
        state.auditor.submit(record, slot);
    }
    response
}

/// Mint the child; `caller` learns the calling token once it is known.
async fn mint(
    state: &AppState,
    headers: &HeaderMap,
    body: &[u8],
    caller: &mut Option<Arc<TokenEntry>>,
) -> Response {
    // The same reading of `Authorization` as every other agent endpoint (one header only).
    let entry = match state.proxy.bearer(headers).await {
        Ok(entry) => caller.insert(entry).clone(),
        Err(e) => return e.into_response(ErrorShape::OpenAi),
    };
    let request: DeriveRequest = if body.iter().all(u8::is_ascii_whitespace) {
        DeriveRequest {
            ttl: None,
            agent: None,
            policy: None,
        }
    } else {
        match serde_json::from_slice(body) {
            Ok(r) => r,
            Err(e) => {
                return error(
                    StatusCode::BAD_REQUEST,
                    "bad_request",
                    &format!("invalid derive request: {e}"),
                );
            }
        }
    };
    // Counted for the token the operator issued, whose descendants share it: a budget per
    // token would let each child derive as many again, multiplying it every generation.
    if let Err(wait) = state.derives.check(&entry.root().record.id) {
        let mut response = error(
            StatusCode::TOO_MANY_REQUESTS,
            "rate_limited",
            &format!(
                "a token and the tokens derived from it may derive at most \
                 {DERIVES_PER_MINUTE} children per minute, all together"
            ),
        );
        response
            .headers_mut()
            .insert(header::RETRY_AFTER, wait.as_secs().max(1).into());
        return response;
    }
    let ttl = request
        .ttl
        .map(|t| i64::try_from(t.as_secs()).unwrap_or(i64::MAX));
    let minted = grants::derive(
        state.store.as_ref(),
        state.proxy.signing_for(&entry.record.provider),
        &entry.record,
        request.policy.as_ref(),
        ttl,
        request.agent.as_deref(),
        clock::now(),
    )
    .await;
    match minted {
        Ok(minted) => {
            tracing::info!(parent = %entry.record.id, child = %minted.record.id, "token derived by its agent");
            (
                StatusCode::CREATED,
                Json(json!({
                    "token": minted.token.expose_secret(),
                    "id": minted.record.id,
                    "parent_id": entry.record.id,
                    "provider": entry.record.provider,
                    "agent": minted.record.agent,
                    "expires_at": minted.record.expires_at.map(clock::format),
                    "access_key_id": state
                        .proxy
                        .signing_for(&entry.record.provider)
                        .map(|_| &minted.record.id),
                })),
            )
                .into_response()
        }
        Err(GrantError::Store(e)) => {
            tracing::error!(error = %e, "could not store a derived token");
            error(
                StatusCode::SERVICE_UNAVAILABLE,
                "store_unavailable",
                "the broker's store is unavailable",
            )
        }
        Err(e @ GrantError::Parent(_)) => {
            error(StatusCode::FORBIDDEN, "derive_refused", &e.to_string())
        }
        Err(e) => error(StatusCode::BAD_REQUEST, "bad_request", &e.to_string()),
    }
}
