//! TLS interception inside a CONNECT tunnel: the agent's TLS is terminated with a leaf for
//! the CONNECT host from the broker's CA (a TLS server name naming another host ends the
//! tunnel), and the requests inside are served over HTTP/1.1 or HTTP/2 (ALPN) until the
//! tunnel has had no request open for a while.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use http::Request;
use http::uri::Scheme;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper::upgrade::OnUpgrade;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use rustls::sign::SingleCertAndKey;
use tokio_rustls::LazyConfigAcceptor;

use super::connect::Route;
use super::{ForwardProxy, Refusal, stopping};
use crate::metrics;
use crate::server::{OpenRequests, cut_off_signal, serve_until_idle, timed_body};

/// Longest wait for the agent's TLS handshake once the tunnel is open.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Terminate the agent's TLS in the tunnel and serve the requests inside it.
pub(super) async fn intercept(forward: Arc<ForwardProxy>, on_upgrade: OnUpgrade, route: Route) {
    let upgraded = match on_upgrade.await {
        Ok(upgraded) => upgraded,
        Err(e) => {
            tracing::debug!(error = %e, "forward proxy: the tunnel did not open");
            return;
        }
    };
    let host = route.dest.host.clone();
    let handshake = async {
        let acceptor =
            LazyConfigAcceptor::new(rustls::server::Acceptor::default(), TokioIo::new(upgraded));
        let start = acceptor.await?;
        // Clients send no server name for an IP address; any name sent must be the target's.
        if let Some(name) = start.client_hello().server_name()
            && !route.dest.is_named_by(name, &Scheme::HTTPS)
        {
            let refusal = Refusal::Mismatch(route.dest.to_string());
            metrics::get().egress_refused(refusal.code());
            tracing::warn!(
                destination = %route.dest,
                "forward proxy: TLS server name does not match the CONNECT target; tunnel closed"
            );
            return Err(std::io::Error::other(refusal));
        }
        let leaf = forward.ca.leaf(&host).map_err(std::io::Error::other)?;
        let mut config = (*forward.tls).clone();
        config.cert_resolver = Arc::new(SingleCertAndKey::from(leaf));
        start.into_stream(Arc::new(config)).await
    };
    let tls = match tokio::time::timeout(HANDSHAKE_TIMEOUT, handshake).await {
        Ok(Ok(tls)) => tls,
        Ok(Err(e)) => {
            tracing::debug!(error = %e, "forward proxy: TLS handshake with the agent failed");
            return;
        }
        Err(_) => {
            tracing::debug!("forward proxy: TLS handshake with the agent timed out");
            return;
        }
    };
    let route = Arc::new(route);
    let requests = OpenRequests::default();
    let service = {
        let forward = forward.clone();
        let counted = requests.clone();
        service_fn(move |request: Request<Incoming>| {
            let (forward, route) = (forward.clone(), route.clone());
            let held = counted.hold();
            async move {
                let response = forward.relay(&route, request.map(timed_body)).await;
                Ok::<_, Infallible>(held.on(response))
            }
        })
    };
    let mut stop = forward.stop.subscribe();
    let mut builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
    builder.http1().timer(TokioTimer::new());
    builder.http2().timer(TokioTimer::new());
    let conn = builder.serve_connection_with_upgrades(TokioIo::new(tls), service);
    let cut_off = cut_off_signal(forward.cut_off.clone());
    if let Err(e) = serve_until_idle(conn, &requests, stopping(&mut stop), cut_off).await {
        tracing::debug!(error = %e, "forward proxy: tunnel ended with an error");
    }
}
