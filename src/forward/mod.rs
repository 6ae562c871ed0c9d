//! The forward proxy (HTTPS_PROXY mode): any tool, unmodified, reaches the providers through
//! the broker, with its `seks_` tokens as placeholders for the real credentials.
//!
//! ```text
//! agent ──CONNECT host:443 + Proxy-Authorization──▶ caller's token checked, destination on
//!        the allow list, its addresses public (egress)
//!       ◀── 200, then TLS with a leaf for `host` from the broker's CA (ca), SNI = host
//!       ──request──▶ Host = host; tokens found in headers, Basic, path, query (placeholder)
//!                    a token for another provider's host → 403, audited, counted
//!                    else the token's policy, its credential in the token's place
//!                    ─▶ the proxy's pipeline: guarded upstream client, scrubbed response
//! ```
//! Absolute-form `http://` requests take the same path without the tunnel. Every request in a
//! tunnel is audited like a base-URL request; refused CONNECTs are audited too.
//!
//! - [`ca`]: the broker's CA, sealed in the store, and its per-host leaf certificates.
//! - [`egress`]: allowed destinations and addresses.
//! - [`placeholder`]: finding tokens in a request and putting the credential in their place.

pub mod ca;
mod connect;
pub mod egress;
mod mitm;
pub mod placeholder;
mod relay;

use std::collections::HashMap;
use std::future::Future;
use std::sync::Arc;

use http::StatusCode;
use http::uri::Scheme;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio_util::task::TaskTracker;

use crate::config::Settings;
use crate::keyring::Keyring;
use crate::providers::Providers;
use crate::proxy::{Proxy, Resolver, UpstreamError, Upstreams};
use ca::BrokerCa;
use egress::{AddressGuard, Destination, Destinations, EgressError, default_port};

/// A request the forward proxy refuses on its own grounds.
#[derive(Debug, Clone, thiserror::Error)]
pub enum Refusal {
    /// The caller sent no usable token in Proxy-Authorization.
    #[error(
        "the forward proxy needs one of your SEKS tokens in Proxy-Authorization (HTTPS_PROXY=http://agent:<token>@host:port): {0}"
    )]
    ProxyAuth(String),
    /// The target is not a `host:port` the proxy can connect to.
    #[error("`{0}` is not a host and port the proxy can connect to")]
    BadTarget(String),
    /// Neither a provider's host nor on the operator's allow list.
    #[error(
        "{0} is not a destination agents may reach through this broker (the providers' hosts and the operator's allow list)"
    )]
    Destination(String),
    /// The host resolves only to addresses the proxy may not dial.
    #[error(
        "{0} resolves to an address agents may not reach (private, loopback, link-local or cloud metadata)"
    )]
    Address(String),
    /// The CONNECT target, the TLS server name and the Host header disagree.
    #[error("the request's host does not match the destination the proxy connected to ({0})")]
    Mismatch(String),
    /// A token was on its way to a host that is not its provider's.
    #[error(
        "a SEKS token for `{provider}` may only be sent to {provider}'s API, not to {host}; the request was refused and reported"
    )]
    ForeignHost {
        /// The token's provider.
        provider: String,
        /// Where it was headed.
        host: String,
    },
    /// A token headed to its own provider is also somewhere a credential can't go.
    #[error(
        "a SEKS token stands in for the credential only where credentials go, as it is: an \
         Authorization or API-key header, Basic credentials, a key or token query parameter, \
         or a path segment such as /bot<token>; this request also carries it elsewhere"
    )]
    MisplacedToken,
    /// Something the forward proxy does not serve.
    #[error("{0}")]
    Unsupported(&'static str),
}

impl Refusal {
    /// HTTP status for this refusal.
    pub fn status(&self) -> StatusCode {
        match self {
            Refusal::ProxyAuth(_) => StatusCode::PROXY_AUTHENTICATION_REQUIRED,
            Refusal::Destination(_) | Refusal::Address(_) | Refusal::ForeignHost { .. } => {
                StatusCode::FORBIDDEN
            }
            Refusal::BadTarget(_)
            | Refusal::Mismatch(_)
            | Refusal::MisplacedToken
            | Refusal::Unsupported(_) => StatusCode::BAD_REQUEST,
        }
    }

    /// Stable machine-readable reason.
    pub fn code(&self) -> &'static str {
        match self {
            Refusal::ProxyAuth(_) => "proxy_auth_required",
            Refusal::BadTarget(_) => "bad_target",
            Refusal::Destination(_) => "destination_not_allowed",
            Refusal::Address(_) => "address_not_allowed",
            Refusal::Mismatch(_) => "host_mismatch",
            Refusal::ForeignHost { .. } => "token_to_foreign_host",
            Refusal::MisplacedToken => "token_misplaced",
            Refusal::Unsupported(_) => "not_proxied",
        }
    }
}

/// The forward proxy could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum ForwardError {
    /// A `[forward]` setting is invalid.
    #[error(transparent)]
    Egress(#[from] EgressError),
    /// The upstream client could not be built (`[upstream]`, `[resolve]`).
    #[error(transparent)]
    Upstream(#[from] UpstreamError),
    /// rustls refused the TLS configuration.
    #[error("TLS configuration: {0}")]
    Tls(#[from] rustls::Error),
}

/// A place a provider's credential may go: a scheme and destination, and below which path.
struct Place {
    scheme: Scheme,
    dest: Destination,
    /// The base URL's path prefix, or `None` for an extra host (any path).
    prefix: Option<String>,
}

/// Everything the forward proxy needs.
pub struct ForwardProxy {
    /// The request pipeline shared with base-URL mode.
    proxy: Arc<Proxy>,
    keyring: Arc<Keyring>,
    providers: Providers,
    /// Where each provider's credential may go, by provider name.
    places: HashMap<String, Vec<Place>>,
    destinations: Destinations,
    guard: Arc<AddressGuard>,
    /// Resolves (and checks) host names, for the CONNECT-time check.
    resolver: Resolver,
    /// Upstream clients that dial only checked addresses.
    upstreams: Upstreams,
    ca: Arc<BrokerCa>,
    /// The TLS configuration agents are served with; each tunnel sets its own certificate.
    tls: Arc<rustls::ServerConfig>,
    /// Turns true when responses still streaming must end (the shutdown grace is over).
    cut_off: watch::Receiver<bool>,
    /// Turns true when connections should finish what they are doing and close.
    stop: watch::Sender<bool>,
    /// Every connection and tunnel, so shutdown can wait for them.
    tasks: TaskTracker,
}

/// Resolves no certificate: a placeholder until each tunnel sets its own.
#[derive(Debug)]
struct NoCertificate;

impl rustls::server::ResolvesServerCert for NoCertificate {
    fn resolve(
        &self,
        _: rustls::server::ClientHello<'_>,
    ) -> Option<Arc<rustls::sign::CertifiedKey>> {
        None
    }
}

impl ForwardProxy {
    /// A forward proxy over `proxy`'s pipeline, with `[forward]`, `[upstream]` and
    /// `[resolve]` from `settings`, terminating TLS with leaves from `ca`.
    pub fn new(
        proxy: Arc<Proxy>,
        keyring: Arc<Keyring>,
        providers: Providers,
        ca: Arc<BrokerCa>,
        settings: &Settings,
        cut_off: watch::Receiver<bool>,
    ) -> Result<Self, ForwardError> {
        let destinations = Destinations::new(&providers, &settings.forward.allow)?;
        let guard = Arc::new(AddressGuard::new(&settings.forward.allow_addresses)?);
        let resolver = Resolver::new(&settings.resolve, Some(guard.clone()))?;
        let upstreams = Upstreams::with_resolver(&settings.upstream, resolver.clone())?;
        let mut places = HashMap::new();
        for name in providers.names() {
            let Some(provider) = providers.get(name) else {
                continue;
            };
            let base = &provider.upstream;
            let own = provider
                .hosts()
                .into_iter()
                .filter_map(|(scheme, authority)| {
                    let dest = Destination::new(&authority, Some(default_port(&scheme))).ok()?;
                    let prefix = (authority == base.authority && scheme == base.scheme)
                        .then(|| base.path_prefix.clone());
                    Some(Place {
                        scheme,
                        dest,
                        prefix,
                    })
                });
            places.insert(name.to_owned(), own.collect());
        }
        let mut tls = rustls::ServerConfig::builder_with_provider(Arc::new(
            rustls::crypto::aws_lc_rs::default_provider(),
        ))
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_cert_resolver(Arc::new(NoCertificate));
        tls.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        Ok(ForwardProxy {
            proxy,
            keyring,
            providers,
            places,
            destinations,
            guard,
            resolver,
            upstreams,
            ca,
            tls: Arc::new(tls),
            cut_off,
            stop: watch::channel(false).0,
            tasks: TaskTracker::new(),
        })
    }

    /// The path below the provider's base URL (or the whole path on an extra host) when a
    /// request to `dest` over `scheme` may carry `provider`'s credential; `None` when it may not.
    fn placement<'p>(
        &self,
        provider: &str,
        scheme: &Scheme,
        dest: &Destination,
        path: &'p str,
    ) -> Option<&'p str> {
        self.places
            .get(provider)?
            .iter()
            .filter(|place| place.scheme == *scheme && place.dest == *dest)
            .find_map(|place| match &place.prefix {
                None => Some(path),
                Some(prefix) => path
                    .strip_prefix(prefix.as_str())
                    .filter(|rest| rest.is_empty() || rest.starts_with('/')),
            })
    }
}

/// Resolves once shutdown has begun (or the proxy is gone).
async fn stopping(stop: &mut watch::Receiver<bool>) {
    let _ = stop.wait_for(|stop| *stop).await;
}

/// Serve the forward proxy on `listener` until `shutdown` resolves, then let open
/// connections finish.
pub async fn run(
    listener: TcpListener,
    forward: Arc<ForwardProxy>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, client)) => {
                    forward.tasks.spawn(connect::serve(forward.clone(), stream, client));
                }
                // Out of file descriptors and the like: back off rather than spin.
                Err(e) => {
                    tracing::warn!(error = %e, "forward proxy: accept failed");
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                }
            },
            () = &mut shutdown => break,
        }
    }
    drop(listener);
    let _ = forward.stop.send(true);
    forward.tasks.close();
    forward.tasks.wait().await;
    Ok(())
}
