//! The agent listener: health, the agent-facing SEKS API, capabilities (HTTP and MCP), and
//! the proxy for everything else.

pub mod admin;
pub mod capability;
mod conn;
pub(crate) mod cutoff;
pub mod derive;
pub mod mcp;
pub mod openapi;

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::extract::{ConnectInfo, State};
use axum::response::{IntoResponse, Response};
use axum::routing::{any, get};
use axum::{Json, Router};
use http::{Request, StatusCode};
use serde_json::json;
use tokio::net::TcpListener;

use crate::audit::Auditor;
use crate::capabilities::invoke::Capabilities;
use crate::keyring::Keyring;
use crate::metrics;
use crate::proxy::Proxy;
use crate::store::Store;
pub use conn::{CLIENT_TIMEOUT, timed_body};
use conn::{ClientAddr, CountedListener};
pub(crate) use conn::{OpenRequests, cut_off_signal, serve_until_idle};

/// What the agent listener's handlers share.
pub struct AppState {
    /// The passthrough proxy.
    pub proxy: Arc<Proxy>,
    /// Token resolution, for the SEKS API.
    pub keyring: Arc<Keyring>,
    /// The store, for tokens the SEKS API issues.
    pub store: Arc<dyn Store>,
    /// How fast each token may derive children.
    pub derives: derive::DeriveLimiter,
    /// The audit log, for readiness.
    pub auditor: Arc<Auditor>,
    /// Turns true when responses still streaming must end (the shutdown grace is over).
    pub cut_off: tokio::sync::watch::Receiver<bool>,
    /// Capabilities agents may invoke, over `/v1/capabilities` and MCP.
    pub capabilities: Arc<Capabilities>,
    /// The MCP server at `/mcp`.
    pub mcp: mcp::McpService,
    /// Largest body of capability arguments.
    pub max_arguments_bytes: usize,
}

/// Longest a readiness probe waits for the store.
const READY_TIMEOUT: Duration = Duration::from_secs(1);

/// The agent-facing router: `/healthz`, `/seks/v1/…`, and every other request to the proxy.
pub fn router(state: Arc<AppState>) -> Router {
    Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .route(derive::DERIVE_PATH, any(derive::derive))
        .route(capability::CAPABILITIES_PATH, any(capability::list))
        .route(
            &format!("{}/{{name}}", capability::CAPABILITIES_PATH),
            any(capability::invoke),
        )
        .route(mcp::MCP_PATH, any(mcp::handle))
        .fallback(proxy_handler)
        .with_state(state)
}

async fn proxy_handler(
    State(state): State<Arc<AppState>>,
    ConnectInfo(ClientAddr(client)): ConnectInfo<ClientAddr>,
    request: Request<Body>,
) -> Response {
    let response = state.proxy.handle(client, request).await;
    let cut_off = state.cut_off.clone();
    response.map(|body| Body::new(cutoff::CutOffBody::new(body, cut_off)))
}

/// Ready when the store answers and audit records are being written.
async fn readyz(State(state): State<Arc<AppState>>) -> Response {
    // Agents can reach this, so it names what is wrong, not the error text (paths, hosts):
    // that goes to the log.
    let mut problems = Vec::new();
    match tokio::time::timeout(READY_TIMEOUT, state.store.revision()).await {
        Ok(Ok(_)) => {}
        Ok(Err(e)) => {
            tracing::warn!(error = %e, "not ready: the store failed");
            problems.push("the store is unavailable");
        }
        Err(_) => problems.push("the store did not answer within a second"),
    }
    if let Err(e) = state.auditor.healthy() {
        tracing::warn!(error = %e, "not ready: the audit log can't be written");
        problems.push("the audit log can't be written");
    }
    if problems.is_empty() {
        (StatusCode::OK, Json(json!({"status": "ready"}))).into_response()
    } else {
        let body = json!({"status": "not ready", "problems": problems});
        (StatusCode::SERVICE_UNAVAILABLE, Json(body)).into_response()
    }
}

/// The Prometheus text exposition.
async fn metrics_text() -> Response {
    (
        [(
            http::header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        metrics::get().encode(),
    )
        .into_response()
}

/// Serve the admin API on `listener` until `shutdown` resolves.
pub async fn run_admin(
    listener: TcpListener,
    state: Arc<admin::AdminState>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    // Metrics go to scrapers without the admin token: they hold nothing secret.
    let router = admin::router(state).route("/metrics", get(metrics_text));
    conn::serve(listener, router, shutdown, None).await
}

/// Serve agents on `listener` until `shutdown` resolves, then drain open requests.
pub async fn run(
    listener: TcpListener,
    state: Arc<AppState>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let cut_off = state.cut_off.clone();
    conn::serve(
        CountedListener(listener),
        router(state),
        shutdown,
        Some(cut_off),
    )
    .await
}
