//! The agent listener: health, the agent-facing SEKS API, and the proxy for everything else.

pub mod admin;
pub mod derive;
pub mod openapi;

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;

use axum::Router;
use axum::body::Body;
use axum::extract::{ConnectInfo, State};
use axum::response::Response;
use axum::routing::{get, post};
use http::Request;
use tokio::net::TcpListener;

use crate::keyring::Keyring;
use crate::proxy::Proxy;
use crate::store::Store;

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
}

/// The agent-facing router: `/healthz`, `/seks/v1/…`, and every other request to the proxy.
pub fn router(state: Arc<AppState>) -> Router {
    Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/seks/v1/tokens/derive", post(derive::derive))
        .fallback(proxy_handler)
        .with_state(state)
}

async fn proxy_handler(
    State(state): State<Arc<AppState>>,
    ConnectInfo(client): ConnectInfo<SocketAddr>,
    request: Request<Body>,
) -> Response {
    state.proxy.handle(client, request).await
}

/// Serve the admin API on `listener` until `shutdown` resolves.
pub async fn run_admin(
    listener: TcpListener,
    state: Arc<admin::AdminState>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    axum::serve(listener, admin::router(state))
        .with_graceful_shutdown(shutdown)
        .await
}

/// Serve agents on `listener` until `shutdown` resolves, then drain open requests.
pub async fn run(
    listener: TcpListener,
    state: Arc<AppState>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    axum::serve(
        listener,
        router(state).into_make_service_with_connect_info::<SocketAddr>(),
    )
    .with_graceful_shutdown(shutdown)
    .await
}
