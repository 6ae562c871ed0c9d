//! `/v1/capabilities`: an agent lists what its token may invoke (`GET /v1/capabilities`) and
//! invokes one (`POST /v1/capabilities/NAME`, the JSON arguments as the body), with its
//! `seks_` token as `Authorization: Bearer`. Every request leaves one audit record.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use axum::Json;
use axum::body::Body;
use axum::extract::{ConnectInfo, State};
use axum::response::{IntoResponse, Response};
use http::{HeaderMap, HeaderValue, Method, StatusCode, Uri, header};
use http_body_util::{BodyExt, Limited};
use serde_json::{Value, json};

use super::AppState;
use super::conn::ClientAddr;
use crate::audit::{AuditRecord, Decision};
use crate::capabilities::ArgumentError;
use crate::capabilities::invoke::{CALL_PATH, CallError, Capabilities};
use crate::capabilities::params::BadArgument;
use crate::providers::ErrorShape;
use crate::proxy::{AuditedBody, PendingRecord, ProxyError, REQUEST_ID_HEADER, SEKS_ERROR_HEADER};

/// Where agents list and invoke capabilities.
pub const CAPABILITIES_PATH: &str = CALL_PATH;

/// Serve one agent request with exactly one audit record: `handle` gets the pending
/// record (to attribute and fill) and the request body; the record is written when the
/// response ends or the client leaves.
pub async fn audited<F, Fut>(
    state: &AppState,
    client: std::net::SocketAddr,
    method: &Method,
    path: String,
    handle: F,
) -> Response
where
    F: FnOnce(Arc<PendingRecord>, Arc<AtomicU64>) -> Fut,
    Fut: Future<Output = Response>,
{
    let arrived = AuditRecord::arriving(method.as_str(), path, client);
    let request_id = arrived.request_id.clone();
    let bytes_in = Arc::new(AtomicU64::new(0));
    let pending = PendingRecord::new(
        arrived,
        state.auditor.clone(),
        Instant::now(),
        bytes_in.clone(),
    );
    let (mut response, refused_for_audit) = match pending.admit() {
        Ok(()) => (handle(pending.clone(), bytes_in).await, false),
        Err(e) => (
            ProxyError::AuditUnavailable(e.to_string()).into_response(ErrorShape::OpenAi),
            true,
        ),
    };
    let status = response.status();
    let code = response
        .headers()
        .get(SEKS_ERROR_HEADER)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    pending.update(|r| {
        r.status = status.as_u16();
        // Outcomes a capability call noted stand; anything refused before it is noted here.
        if r.decision == Decision::ClientClosed {
            r.decision = match status {
                s if s.is_success() => Decision::Allowed,
                s if s.is_server_error() => Decision::Failed,
                _ => Decision::Denied,
            };
            r.error = code;
        }
    });
    let headers = response.headers_mut();
    if let Ok(id) = HeaderValue::from_str(&request_id) {
        headers.insert(REQUEST_ID_HEADER, id);
    }
    let strict = state.auditor.is_strict() && !refused_for_audit;
    if strict {
        // The end of a body of unknown length is what a client waits for.
        headers.remove(header::CONTENT_LENGTH);
    }
    response.map(|body| Body::new(AuditedBody::new(body, pending, strict)))
}

/// A JSON error in the capability API's shape, marked with `x-seks-error`.
pub fn error(status: StatusCode, code: &'static str, message: &str) -> Response {
    let (content_type, body) = ErrorShape::OpenAi.body(status, code, message);
    let mut response = (status, body).into_response();
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    headers.insert(SEKS_ERROR_HEADER, HeaderValue::from_static(code));
    response
}

/// `GET /v1/capabilities`: the capabilities this token may invoke, with their schemas.
pub async fn list(
    State(state): State<Arc<AppState>>,
    ConnectInfo(ClientAddr(client)): ConnectInfo<ClientAddr>,
    method: Method,
    headers: HeaderMap,
) -> Response {
    let caps = state.capabilities.clone();
    audited(
        &state,
        client,
        &method.clone(),
        CAPABILITIES_PATH.to_owned(),
        |pending, _| async move {
            if method != Method::GET {
                return error(
                    StatusCode::METHOD_NOT_ALLOWED,
                    "method_not_allowed",
                    "list capabilities with GET",
                );
            }
            let entry = match caps.proxy().bearer(&headers).await {
                Ok(entry) => entry,
                Err(e) => return e.into_response(ErrorShape::OpenAi),
            };
            pending.update(|r| r.attribute_to(&entry.record));
            // A revoked or expired token is told so, not shown an empty list.
            if let Err(e) = caps.proxy().check_call(&entry, |_| Ok(())) {
                return e.into_response(ErrorShape::OpenAi);
            }
            match caps.allowed_for(&entry).await {
                Ok(list) => {
                    let list: Vec<Value> = list.iter().map(|c| Capabilities::describe(c)).collect();
                    Json(json!({"capabilities": list})).into_response()
                }
                Err(e) => caps.error_response(e),
            }
        },
    )
    .await
}

/// `POST /v1/capabilities/NAME`: invoke a capability with the JSON body as arguments.
pub async fn invoke(
    State(state): State<Arc<AppState>>,
    ConnectInfo(ClientAddr(client)): ConnectInfo<ClientAddr>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let caps = state.capabilities.clone();
    let limit = state.max_arguments_bytes;
    let path = uri.path().to_owned();
    // Matched raw: a name needing percent-decoding is no capability's.
    let name = path
        .strip_prefix(CAPABILITIES_PATH)
        .and_then(|rest| rest.strip_prefix('/'))
        .unwrap_or_default()
        .to_owned();
    audited(
        &state,
        client,
        &method.clone(),
        path.clone(),
        |pending, bytes_in| async move {
            if method != Method::POST {
                return error(
                    StatusCode::METHOD_NOT_ALLOWED,
                    "method_not_allowed",
                    "invoke a capability with POST and its arguments as a JSON object",
                );
            }
            let entry = match caps.proxy().bearer(&headers).await {
                Ok(entry) => entry,
                Err(e) => return e.into_response(ErrorShape::OpenAi),
            };
            pending.update(|r| r.attribute_to(&entry.record));
            let bytes = match Limited::new(body, limit).collect().await {
                Ok(collected) => collected.to_bytes(),
                Err(e) => match ProxyError::unreadable_body(e.as_ref(), limit) {
                    ProxyError::BodyTooLarge(_) => {
                        return error(
                            StatusCode::PAYLOAD_TOO_LARGE,
                            "body_too_large",
                            &format!("capability arguments are at most {limit} bytes"),
                        );
                    }
                    other => return other.into_response(ErrorShape::OpenAi),
                },
            };
            bytes_in.store(bytes.len() as u64, Ordering::Relaxed);
            let args = if bytes.iter().all(u8::is_ascii_whitespace) {
                Value::Null
            } else {
                match serde_json::from_slice(&bytes) {
                    Ok(args) => args,
                    Err(_) => {
                        let bad =
                            BadArgument::at("", "the body must be a JSON object of arguments");
                        return caps.error_response(CallError::Arguments(ArgumentError::Bad(bad)));
                    }
                }
            };
            match caps.call(&entry, &name, &args, &pending).await {
                Ok(answer) => Json(answer).into_response(),
                Err(e) => caps.error_response(e),
            }
        },
    )
    .await
}
