//! The admin API, on its own listener and behind the admin token: deciding held requests.
//! Mint the token with `seks admin token`; only its SHA-256 is stored.

use std::sync::Arc;

use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::{Value, json};
use subtle::ConstantTimeEq;

use crate::clock;
use crate::store::{ApprovalRecord, ApprovalState, DEFAULT_TENANT, META_ADMIN_TOKEN, Store};
use crate::tokens::TokenHash;

/// Who the admin API records as the decider.
const DECIDER: &str = "admin-api";

fn error(status: StatusCode, message: &str) -> Response {
    (status, Json(json!({"error": {"message": message}}))).into_response()
}

/// The admin router over `store`.
pub fn router(store: Arc<dyn Store>) -> Router {
    Router::new()
        .route("/admin/v1/approvals", get(list))
        .route("/admin/v1/approvals/{id}", get(show))
        .route("/admin/v1/approvals/{id}/approve", post(approve))
        .route("/admin/v1/approvals/{id}/deny", post(deny))
        .layer(middleware::from_fn_with_state(store.clone(), authorize))
        .with_state(store)
}

/// Let only requests bearing the admin token through.
async fn authorize(
    State(store): State<Arc<dyn Store>>,
    headers: HeaderMap,
    request: axum::extract::Request,
    next: Next,
) -> Response {
    let presented = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "));
    let Some(presented) = presented else {
        return error(
            StatusCode::UNAUTHORIZED,
            "send the admin token as Authorization: Bearer <token>",
        );
    };
    let expected = match store.meta(META_ADMIN_TOKEN).await {
        Ok(Some(hex)) => hex,
        Ok(None) => {
            return error(
                StatusCode::UNAUTHORIZED,
                "no admin token exists yet: mint one with `seks admin token`",
            );
        }
        Err(e) => {
            tracing::error!(error = %e, "admin token lookup failed");
            return error(
                StatusCode::SERVICE_UNAVAILABLE,
                "the broker's store is unavailable",
            );
        }
    };
    let hash = hex(&TokenHash::of(presented.trim()).0);
    if bool::from(hash.as_bytes().ct_eq(expected.as_bytes())) {
        next.run(request).await
    } else {
        error(StatusCode::UNAUTHORIZED, "wrong admin token")
    }
}

/// Lower-case hex of bytes.
pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn approval_json(a: &ApprovalRecord) -> Value {
    json!({
        "id": a.id,
        "state": a.state,
        "request": serde_json::from_str::<Value>(&a.summary).unwrap_or_default(),
        "reason": a.reason,
        "created_at": clock::format(a.created_at),
        "expires_at": clock::format(a.expires_at),
        "decided_at": a.decided_at.map(clock::format),
        "decided_by": a.decided_by,
    })
}

#[derive(Deserialize)]
struct ListQuery {
    #[serde(default)]
    all: bool,
}

async fn list(State(store): State<Arc<dyn Store>>, Query(q): Query<ListQuery>) -> Response {
    match store.list_approvals(DEFAULT_TENANT, q.all).await {
        Ok(approvals) => {
            Json(approvals.iter().map(approval_json).collect::<Vec<_>>()).into_response()
        }
        Err(_) => error(
            StatusCode::SERVICE_UNAVAILABLE,
            "the broker's store is unavailable",
        ),
    }
}

async fn show(State(store): State<Arc<dyn Store>>, Path(id): Path<String>) -> Response {
    match store.approval(DEFAULT_TENANT, &id).await {
        Ok(Some(a)) => Json(approval_json(&a)).into_response(),
        Ok(None) => error(StatusCode::NOT_FOUND, "no such approval"),
        Err(_) => error(
            StatusCode::SERVICE_UNAVAILABLE,
            "the broker's store is unavailable",
        ),
    }
}

#[derive(Deserialize, Default)]
struct DenyBody {
    reason: Option<String>,
}

async fn approve(State(store): State<Arc<dyn Store>>, Path(id): Path<String>) -> Response {
    decide(store, &id, ApprovalState::Approved, None).await
}

async fn deny(
    State(store): State<Arc<dyn Store>>,
    Path(id): Path<String>,
    body: Option<Json<DenyBody>>,
) -> Response {
    let reason = body.and_then(|Json(b)| b.reason);
    decide(store, &id, ApprovalState::Denied, reason.as_deref()).await
}

async fn decide(
    store: Arc<dyn Store>,
    id: &str,
    state: ApprovalState,
    reason: Option<&str>,
) -> Response {
    let decided = store
        .decide_approval(DEFAULT_TENANT, id, state, reason, DECIDER, clock::now())
        .await;
    match (decided, store.approval(DEFAULT_TENANT, id).await) {
        (Ok(true), Ok(Some(a))) => Json(approval_json(&a)).into_response(),
        (Ok(false), Ok(Some(a))) => error(
            StatusCode::CONFLICT,
            &format!("approval {id} is already {}", a.state.as_str()),
        ),
        (Ok(_), Ok(None)) => error(StatusCode::NOT_FOUND, "no such approval"),
        _ => error(
            StatusCode::SERVICE_UNAVAILABLE,
            "the broker's store is unavailable",
        ),
    }
}
