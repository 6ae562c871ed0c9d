//! Pooled upstream clients over rustls: HTTP/1.1 keep-alive by default, HTTP/2 where a
//! provider opts in. Redirects are never followed and proxy variables are ignored.

use std::path::Path;
use std::sync::Arc;

use axum::body::Body;
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use rustls::RootCertStore;
use rustls_pki_types::CertificateDer;
use rustls_pki_types::pem::PemObject;

use crate::config::UpstreamConfig;

/// A pooled client that forwards to upstreams.
pub type UpstreamClient = Client<HttpsConnector<HttpConnector>, Body>;

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
}

/// The HTTP/1.1-only and the HTTP/2-capable client, sharing one TLS configuration.
#[derive(Clone)]
pub struct Upstreams {
    http1: UpstreamClient,
    http2: UpstreamClient,
}

impl Upstreams {
    /// Build both clients from the `[upstream]` settings.
    pub fn new(config: &UpstreamConfig) -> Result<Self, UpstreamError> {
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

        let mut http = HttpConnector::new();
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
