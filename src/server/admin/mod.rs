//! The admin API, on its own listener and behind the admin token: what the operator CLI
//! does (secrets, tokens, named policies, capabilities, approvals, usage, the audit log),
//! through [`Ops`] so both behave the same. Mint the token with `seks admin token create`;
//! only its SHA-256 is stored. `/openapi.json` describes it and is served without the token
//! (it holds nothing secret).

use std::sync::Arc;

mod endpoints;

use axum::body::Bytes;
use axum::extract::{FromRequest, FromRequestParts, Path, Request, State};
use axum::http::request::Parts;
use axum::http::{HeaderMap, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use serde::de::DeserializeOwned;
use serde_json::{Value, json};
use subtle::ConstantTimeEq;

use super::openapi;
use crate::audit::Auditor;
use crate::capabilities::invoke::Capabilities;
use crate::capabilities::trial::TrialFailure;
use crate::ops::{Ops, OpsError};
use crate::proxy::SEKS_ERROR_HEADER;
use crate::store::{self, META_ADMIN_TOKEN, Store};
use crate::tokens::{TokenHash, hex};
use crate::vault::Vault;

/// Largest request body: policies and secrets are small.
const MAX_BODY_BYTES: usize = 1024 * 1024;

/// What the admin API's handlers share.
pub struct AdminState {
    /// The operations, on the broker's store.
    pub ops: Ops,
    /// Seals secrets added or rotated through the API.
    pub vault: Arc<Vault>,
    /// Where the admin token's hash lives.
    pub store: Arc<dyn Store>,
    /// The capabilities the broker serves, to list, change and try.
    pub capabilities: Arc<Capabilities>,
    /// Where operators' trial runs of capabilities are recorded.
    pub auditor: Arc<Auditor>,
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
        let marker = [(SEKS_ERROR_HEADER, self.code)];
        (self.status, marker, Json(body)).into_response()
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

impl From<TrialFailure> for Refusal {
    fn from(e: TrialFailure) -> Self {
        error(e.status, e.code, &e.message)
    }
}

/// A JSON request body; errors keep the API's shape (400, or 413 when too large).
struct Body<T>(T);

/// A JSON body carrying a secret value: parse errors say nothing of the content, since
/// serde quotes what it could not read.
struct SecretBody<T>(T);

/// A path parameter (`{name}`, `{id}`); errors keep the API's shape.
struct PathParam(String);

impl<S: Send + Sync> FromRequestParts<S> for PathParam {
    type Rejection = Refusal;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Refusal> {
        Path::<String>::from_request_parts(parts, state)
            .await
            .map(|Path(value)| PathParam(value))
            .map_err(|e| error(e.status(), "bad_path", &e.body_text()))
    }
}

/// A JSON body that may be left out, read as `{}` then.
struct OptionalBody<T>(T);

async fn read_body<T: DeserializeOwned, S: Send + Sync>(
    req: Request,
    state: &S,
    echo: bool,
) -> Result<T, Refusal> {
    parse(&read_bytes(req, state).await?, echo)
}

/// The raw body; errors keep the API's shape (413 when too large).
async fn read_bytes<S: Send + Sync>(req: Request, state: &S) -> Result<Bytes, Refusal> {
    Bytes::from_request(req, state)
        .await
        .map_err(|e| match e.status() {
            StatusCode::PAYLOAD_TOO_LARGE => error(
                StatusCode::PAYLOAD_TOO_LARGE,
                "body_too_large",
                &format!("the body is larger than {MAX_BODY_BYTES} bytes"),
            ),
            status => error(status, "bad_body", &e.body_text()),
        })
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

impl<T: DeserializeOwned, S: Send + Sync> FromRequest<S> for OptionalBody<T> {
    type Rejection = Refusal;

    async fn from_request(req: Request, state: &S) -> Result<Self, Refusal> {
        let bytes = read_bytes(req, state).await?;
        let json: &[u8] = if bytes.is_empty() { b"{}" } else { &bytes };
        parse(json, true).map(OptionalBody)
    }
}

impl<T: DeserializeOwned, S: Send + Sync> FromRequest<S> for SecretBody<T> {
    type Rejection = Refusal;

    async fn from_request(req: Request, state: &S) -> Result<Self, Refusal> {
        read_body(req, state, false).await.map(SecretBody)
    }
}

/// The admin router: the endpoints behind the admin token, `/openapi.json` without it.
pub fn router(state: Arc<AdminState>) -> Router {
    let endpoints = endpoints::all();
    let document = Arc::new(openapi::document(
        endpoints.iter().map(|e| (e.path, e.verb, &e.doc)),
    ));
    let api = endpoints
        .into_iter()
        .fold(Router::new(), |api, e| api.route(e.path, e.route))
        .layer(middleware::from_fn_with_state(state.clone(), authorize));
    Router::new()
        .route(
            "/openapi.json",
            get(move || async move { Json(Value::clone(&document)) }),
        )
        .merge(api)
        .fallback(|| async { error(StatusCode::NOT_FOUND, "no_endpoint", "no such endpoint") })
        .method_not_allowed_fallback(|| async {
            error(
                StatusCode::METHOD_NOT_ALLOWED,
                "method_not_allowed",
                "this endpoint doesn't take that method (see /openapi.json)",
            )
        })
        .layer(axum::extract::DefaultBodyLimit::max(MAX_BODY_BYTES))
        .with_state(state)
}

/// Let only requests bearing the admin token through.
async fn authorize(
    State(state): State<Arc<AdminState>>,
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
    let expected = match store::timed(state.store.meta(META_ADMIN_TOKEN)).await {
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
