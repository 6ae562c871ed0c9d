//! The admin API, on its own listener and behind the admin token: everything the operator
//! CLI does (secrets, tokens, named policies, approvals, usage), through [`Ops`] so both
//! behave the same. Mint the token with `seks admin token create`; only its SHA-256 is stored.
//! `/openapi.json` describes it and is served without the token (it holds nothing secret).

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::rejection::QueryRejection;
use axum::extract::{FromRequest, Path, Query, Request, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::Deserialize;
use serde::de::DeserializeOwned;
use serde_json::json;
use subtle::ConstantTimeEq;

use super::openapi;
use crate::ops::views::{
    DenyRequest, DeriveTokenRequest, NewSecretRequest, NewTokenRequest, RotateSecretRequest,
    UpdateTokenRequest, UsageQuery,
};
use crate::ops::{Ops, OpsError};
use crate::policy::PolicySpec;
use crate::store::{ApprovalState, META_ADMIN_TOKEN, Store};
use crate::tokens::TokenHash;
use crate::vault::Vault;

/// Who the admin API records as the decider.
const DECIDER: &str = "admin-api";
/// Largest request body: policies and secrets are small.
const MAX_BODY_BYTES: usize = 1024 * 1024;

/// What the admin API's handlers share.
pub struct AdminState {
    /// The operations, on the broker's store.
    pub ops: Ops,
    /// Seals secrets added or rotated through the API.
    pub vault: Vault,
    /// Where the admin token's hash lives.
    pub store: Arc<dyn Store>,
}

/// A refused request, answered in the admin API's shape: `{"error": {"message", "code"}}`.
struct Refusal {
    status: StatusCode,
    code: &'static str,
    message: String,
}

fn error(status: StatusCode, code: &'static str, message: &str) -> Refusal {
    Refusal {
        status,
        code,
        message: message.to_owned(),
    }
}

impl IntoResponse for Refusal {
    fn into_response(self) -> Response {
        let body = json!({"error": {"message": self.message, "code": self.code}});
        (self.status, Json(body)).into_response()
    }
}

impl From<OpsError> for Refusal {
    fn from(e: OpsError) -> Self {
        let status = StatusCode::from_u16(e.status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        if status.is_server_error() {
            tracing::warn!(error = %e, "admin API operation failed");
        }
        error(status, e.code(), &e.to_string())
    }
}

/// A JSON request body; errors keep the API's shape (400, or 413 when too large).
struct Body<T>(T);

/// A JSON body carrying a secret value: parse errors say nothing of the content, since
/// serde quotes what it could not read.
struct SecretBody<T>(T);

async fn read_body<T: DeserializeOwned, S: Send + Sync>(
    req: Request,
    state: &S,
    echo: bool,
) -> Result<T, Refusal> {
    let bytes = Bytes::from_request(req, state)
        .await
        .map_err(|e| match e.status() {
            StatusCode::PAYLOAD_TOO_LARGE => error(
                StatusCode::PAYLOAD_TOO_LARGE,
                "body_too_large",
                &format!("the body is larger than {MAX_BODY_BYTES} bytes"),
            ),
            status => error(status, "bad_body", &e.body_text()),
        })?;
    parse(&bytes, echo)
}

/// Parse a JSON body; with `echo`, the error quotes serde's reason.
fn parse<T: DeserializeOwned>(bytes: &[u8], echo: bool) -> Result<T, Refusal> {
    serde_json::from_slice(bytes).map_err(|e| {
        let why = if echo {
            format!("the body is not the expected JSON: {e}")
        } else {
            "the body is not the expected JSON (see /openapi.json)".to_owned()
        };
        error(StatusCode::BAD_REQUEST, "bad_body", &why)
    })
}

impl<T: DeserializeOwned, S: Send + Sync> FromRequest<S> for Body<T> {
    type Rejection = Refusal;

    async fn from_request(req: Request, state: &S) -> Result<Self, Refusal> {
        read_body(req, state, true).await.map(Body)
    }
}

impl<T: DeserializeOwned, S: Send + Sync> FromRequest<S> for SecretBody<T> {
    type Rejection = Refusal;

    async fn from_request(req: Request, state: &S) -> Result<Self, Refusal> {
        read_body(req, state, false).await.map(SecretBody)
    }
}

/// A query string, with errors in the API's shape.
fn query<T>(q: Result<Query<T>, QueryRejection>) -> Result<T, Refusal> {
    q.map(|Query(q)| q)
        .map_err(|e| error(StatusCode::BAD_REQUEST, "bad_query", &e.body_text()))
}

type Shared = State<Arc<AdminState>>;
type Answer = Result<Response, Refusal>;

fn ok<T: serde::Serialize>(status: StatusCode, value: Result<T, OpsError>) -> Answer {
    value
        .map(|v| (status, Json(v)).into_response())
        .map_err(Refusal::from)
}

/// The admin router.
pub fn router(state: Arc<AdminState>) -> Router {
    let api = Router::new()
        .route("/admin/v1/secrets", get(list_secrets).post(add_secret))
        .route(
            "/admin/v1/secrets/{name}",
            axum::routing::delete(remove_secret),
        )
        .route("/admin/v1/secrets/{name}/rotate", post(rotate_secret))
        .route("/admin/v1/tokens", get(list_tokens).post(create_token))
        .route("/admin/v1/tokens/{id}", get(show_token).patch(update_token))
        .route("/admin/v1/tokens/{id}/revoke", post(revoke_token))
        .route("/admin/v1/tokens/{id}/derive", post(derive_token))
        .route("/admin/v1/policies", get(list_policies))
        .route(
            "/admin/v1/policies/{name}",
            get(show_policy).put(set_policy).delete(remove_policy),
        )
        .route("/admin/v1/approvals", get(list_approvals))
        .route("/admin/v1/approvals/{id}", get(show_approval))
        .route("/admin/v1/approvals/{id}/approve", post(approve))
        .route("/admin/v1/approvals/{id}/deny", post(deny))
        .route("/admin/v1/usage", get(usage))
        .layer(middleware::from_fn_with_state(state.clone(), authorize));
    Router::new()
        .route("/openapi.json", get(|| async { Json(openapi::document()) }))
        .merge(api)
        .fallback(|| async { error(StatusCode::NOT_FOUND, "no_endpoint", "no such endpoint") })
        .layer(axum::extract::DefaultBodyLimit::max(MAX_BODY_BYTES))
        .with_state(state)
}

/// Let only requests bearing the admin token through.
async fn authorize(
    State(state): Shared,
    headers: HeaderMap,
    request: Request,
    next: Next,
) -> Response {
    let unauthorized =
        |code, message| error(StatusCode::UNAUTHORIZED, code, message).into_response();
    let presented = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim);
    let Some(presented) = presented else {
        return unauthorized(
            "missing_token",
            "send the admin token as Authorization: Bearer <token>",
        );
    };
    // An agent token is never an admin token; say so rather than just "wrong".
    if presented.starts_with("seks_") && !presented.starts_with("seks_admin_") {
        return unauthorized(
            "agent_token",
            "an agent token has no rights on the admin API",
        );
    }
    let expected = match state.store.meta(META_ADMIN_TOKEN).await {
        Ok(Some(hex)) if !hex.is_empty() => hex,
        Ok(_) => {
            return unauthorized(
                "no_admin_token",
                "no admin token exists: mint one with `seks admin token create`",
            );
        }
        Err(e) => {
            tracing::error!(error = %e, "admin token lookup failed");
            return error(
                StatusCode::SERVICE_UNAVAILABLE,
                "store_unavailable",
                "the broker's store is unavailable",
            )
            .into_response();
        }
    };
    let hash = hex(&TokenHash::of(presented).0);
    if bool::from(hash.as_bytes().ct_eq(expected.as_bytes())) {
        next.run(request).await
    } else {
        unauthorized("wrong_token", "wrong admin token")
    }
}

/// Lower-case hex of bytes.
pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

async fn list_secrets(State(s): Shared) -> Answer {
    ok(StatusCode::OK, s.ops.list_secrets().await)
}

async fn add_secret(State(s): Shared, SecretBody(req): SecretBody<NewSecretRequest>) -> Answer {
    let added = s
        .ops
        .add_secret(&s.vault, &req.name, &req.provider, &req.value)
        .await;
    ok(StatusCode::CREATED, added)
}

async fn rotate_secret(
    State(s): Shared,
    Path(name): Path<String>,
    SecretBody(req): SecretBody<RotateSecretRequest>,
) -> Answer {
    ok(
        StatusCode::OK,
        s.ops.rotate_secret(&s.vault, &name, &req.value).await,
    )
}

async fn remove_secret(State(s): Shared, Path(name): Path<String>) -> Answer {
    ok(StatusCode::OK, s.ops.remove_secret(&name).await)
}

async fn list_tokens(State(s): Shared) -> Answer {
    ok(StatusCode::OK, s.ops.list_tokens().await)
}

async fn create_token(State(s): Shared, Body(req): Body<NewTokenRequest>) -> Answer {
    ok(StatusCode::CREATED, s.ops.create_token(&req).await)
}

async fn show_token(State(s): Shared, Path(id): Path<String>) -> Answer {
    ok(StatusCode::OK, s.ops.show_token(&id).await)
}

async fn update_token(
    State(s): Shared,
    Path(id): Path<String>,
    Body(req): Body<UpdateTokenRequest>,
) -> Answer {
    ok(StatusCode::OK, s.ops.update_token(&id, &req).await)
}

async fn revoke_token(State(s): Shared, Path(id): Path<String>) -> Answer {
    ok(StatusCode::OK, s.ops.revoke_token(&id).await)
}

async fn derive_token(
    State(s): Shared,
    Path(id): Path<String>,
    Body(req): Body<DeriveTokenRequest>,
) -> Answer {
    ok(StatusCode::CREATED, s.ops.derive_token(&id, &req).await)
}

async fn list_policies(State(s): Shared) -> Answer {
    ok(StatusCode::OK, s.ops.list_policies().await)
}

async fn show_policy(State(s): Shared, Path(name): Path<String>) -> Answer {
    ok(StatusCode::OK, s.ops.show_policy(&name).await)
}

async fn set_policy(
    State(s): Shared,
    Path(name): Path<String>,
    Body(spec): Body<PolicySpec>,
) -> Answer {
    ok(StatusCode::OK, s.ops.set_policy(&name, &spec).await)
}

async fn remove_policy(State(s): Shared, Path(name): Path<String>) -> Answer {
    s.ops
        .remove_policy(&name)
        .await
        .map(|()| StatusCode::NO_CONTENT.into_response())
        .map_err(Refusal::from)
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ListQuery {
    #[serde(default)]
    all: bool,
}

async fn list_approvals(State(s): Shared, q: Result<Query<ListQuery>, QueryRejection>) -> Answer {
    let q = query(q)?;
    ok(StatusCode::OK, s.ops.list_approvals(q.all).await)
}

async fn show_approval(State(s): Shared, Path(id): Path<String>) -> Answer {
    ok(StatusCode::OK, s.ops.approval(&id).await)
}

async fn approve(State(s): Shared, Path(id): Path<String>) -> Answer {
    let decided = s
        .ops
        .decide(&id, ApprovalState::Approved, None, DECIDER)
        .await;
    ok(StatusCode::OK, decided)
}

async fn deny(State(s): Shared, Path(id): Path<String>, body: Bytes) -> Answer {
    // The reason is optional, and so is the body.
    let req: DenyRequest = if body.is_empty() {
        DenyRequest::default()
    } else {
        parse(&body, true)?
    };
    let decided = s
        .ops
        .decide(&id, ApprovalState::Denied, req.reason.as_deref(), DECIDER)
        .await;
    ok(StatusCode::OK, decided)
}

async fn usage(State(s): Shared, q: Result<Query<UsageQuery>, QueryRejection>) -> Answer {
    let q = query(q)?;
    ok(StatusCode::OK, s.ops.usage(&q).await)
}
