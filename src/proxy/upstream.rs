//! Pooled upstream clients over rustls: HTTP/1.1 keep-alive by default, HTTP/2 where a
//! provider opts in. Redirects are never followed and proxy variables are ignored.
//!
//! Host names are resolved by [`Resolver`]: fixed addresses from `[resolve]` (tests), else the
//! system resolver; the forward proxy's resolver also checks every address before it is dialled.

use std::collections::HashMap;
use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::path::Path;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use axum::body::Body;
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::connect::dns::Name;
use hyper_util::rt::TokioExecutor;
use rustls::RootCertStore;
use rustls_pki_types::CertificateDer;
use rustls_pki_types::pem::PemObject;

use crate::config::UpstreamConfig;
use crate::forward::egress::AddressGuard;

/// A pooled client that forwards to upstreams.
pub type UpstreamClient = Client<HttpsConnector<HttpConnector<Resolver>>, Body>;

/// The upstream clients could not be built.
#[derive(Debug, thiserror::Error)]
pub enum UpstreamError {
    /// The extra CA file could not be read or holds no certificate.
    #[error("upstream extra CA file {path}: {why}")]
    ExtraCa {
        /// The file.
        path: String,
        /// What went wrong.
        why: String,
    },
    /// rustls refused the configuration.
    #[error("TLS configuration: {0}")]
    Tls(#[from] rustls::Error),
    /// A `[resolve]` entry is not an address.
    #[error("resolve.\"{host}\": `{value}` is not an IP address or IP:port")]
    Resolve {
        /// The host name.
        host: String,
        /// What was written.
        value: String,
    },
}

/// Resolves upstream host names: `[resolve]` overrides first, then the system resolver.
/// With a guard, only addresses it allows are returned, so the connector dials exactly the
/// address that was checked (no second lookup that DNS rebinding could answer differently).
#[derive(Clone, Default)]
pub struct Resolver {
    /// Host name (lowercase) → address; port 0 keeps the URL's port.
    overrides: Arc<HashMap<String, SocketAddr>>,
    guard: Option<Arc<AddressGuard>>,
}

impl Resolver {
    /// A resolver with `[resolve]` entries (`"host" = "IP"` or `"IP:port"`) and an optional
    /// address guard.
    pub fn new(
        overrides: &std::collections::BTreeMap<String, String>,
        guard: Option<Arc<AddressGuard>>,
    ) -> Result<Self, UpstreamError> {
        let parsed = overrides
            .iter()
            .map(|(host, value)| {
                let addr = value
                    .parse::<SocketAddr>()
                    .or_else(|_| value.parse::<IpAddr>().map(|ip| SocketAddr::new(ip, 0)))
                    .map_err(|_| UpstreamError::Resolve {
                        host: host.clone(),
                        value: value.clone(),
                    })?;
                Ok((host.to_ascii_lowercase(), addr))
            })
            .collect::<Result<_, UpstreamError>>()?;
        Ok(Resolver {
            overrides: Arc::new(parsed),
            guard,
        })
    }

    /// The addresses `host` may be dialled at (port 0: the URL's), as the connector will
    /// get them.
    pub async fn lookup(&self, host: &str) -> Result<Vec<SocketAddr>, BoxError> {
        self.clone()
            .resolve(host.to_owned())
            .await
            .map(Iterator::collect)
    }

    /// The addresses `host` may be dialled at.
    async fn resolve(self, host: String) -> Result<std::vec::IntoIter<SocketAddr>, BoxError> {
        let found: Vec<SocketAddr> = match self.overrides.get(&host.to_ascii_lowercase()) {
            Some(addr) => vec![*addr],
            None => tokio::net::lookup_host((host.as_str(), 0)).await?.collect(),
        };
        let allowed = match &self.guard {
            Some(guard) => guard.filter(&host, found)?,
            None => found,
        };
        Ok(allowed.into_iter())
    }
}

type BoxError = Box<dyn std::error::Error + Send + Sync>;

impl tower_service::Service<Name> for Resolver {
    type Response = std::vec::IntoIter<SocketAddr>;
    type Error = BoxError;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, BoxError>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, name: Name) -> Self::Future {
        Box::pin(self.clone().resolve(name.as_str().to_owned()))
    }
}

/// The HTTP/1.1-only and the HTTP/2-capable client, sharing one TLS configuration.
#[derive(Clone)]
pub struct Upstreams {
    http1: UpstreamClient,
    http2: UpstreamClient,
}

impl Upstreams {
    /// Build both clients from the `[upstream]` settings, resolving with the system resolver.
    pub fn new(config: &UpstreamConfig) -> Result<Self, UpstreamError> {
        Self::with_resolver(config, Resolver::default())
    }

    /// Build both clients from the `[upstream]` settings, resolving with `resolver`.
    pub fn with_resolver(
        config: &UpstreamConfig,
        resolver: Resolver,
    ) -> Result<Self, UpstreamError> {
        let mut roots = RootCertStore {
            roots: webpki_roots::TLS_SERVER_ROOTS.to_vec(),
        };
        if let Some(path) = &config.extra_ca_file {
            for cert in read_pem_certs(path)? {
                roots.add(cert)?;
            }
        }
        let tls = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::aws_lc_rs::default_provider(),
        ))
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots)
        .with_no_client_auth();

        let mut http = HttpConnector::new_with_resolver(resolver);
        // The connector also sees https:// URLs; TLS is layered on by hyper-rustls.
        http.enforce_http(false);
        http.set_connect_timeout(Some(config.connect_timeout));
        http.set_nodelay(true);
        http.set_keepalive(Some(std::time::Duration::from_secs(60)));

        let h1 = hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config(tls.clone())
            .https_or_http()
            .enable_http1()
            .wrap_connector(http.clone());
        let h2 = hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config(tls)
            .https_or_http()
            .enable_all_versions()
            .wrap_connector(http);

        let client = |connector| {
            Client::builder(TokioExecutor::new())
                .pool_idle_timeout(config.pool_idle_timeout)
                .pool_timer(hyper_util::rt::TokioTimer::new())
                .build(connector)
        };
        Ok(Upstreams {
            http1: client(h1),
            http2: client(h2),
        })
    }

    /// The client for a provider.
    pub fn client(&self, http2: bool) -> &UpstreamClient {
        if http2 { &self.http2 } else { &self.http1 }
    }
}

fn read_pem_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, UpstreamError> {
    let bad = |why: String| UpstreamError::ExtraCa {
        path: path.display().to_string(),
        why,
    };
    let certs = CertificateDer::pem_file_iter(path)
        .map_err(|e| bad(e.to_string()))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| bad(e.to_string()))?;
    if certs.is_empty() {
        return Err(bad("no PEM certificate found".to_owned()));
    }
    Ok(certs)
}
