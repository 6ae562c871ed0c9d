//! The agent listener: health endpoint plus the proxy for everything else.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;

use axum::Router;
use axum::body::Body;
use axum::extract::{ConnectInfo, State};
use axum::response::Response;
use axum::routing::get;
use http::Request;
use tokio::net::TcpListener;

use crate::proxy::Proxy;

/// The agent-facing router: `/healthz`, and every other request to the proxy.
pub fn router(proxy: Arc<Proxy>) -> Router {
    Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .fallback(proxy_handler)
        .with_state(proxy)
}

async fn proxy_handler(
    State(proxy): State<Arc<Proxy>>,
    ConnectInfo(client): ConnectInfo<SocketAddr>,
    request: Request<Body>,
) -> Response {
    proxy.handle(client, request).await
}

/// Serve agents on `listener` until `shutdown` resolves, then drain open requests.
pub async fn run(
    listener: TcpListener,
    proxy: Arc<Proxy>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    axum::serve(
        listener,
        router(proxy).into_make_service_with_connect_info::<SocketAddr>(),
    )
    .with_graceful_shutdown(shutdown)
    .await
}
