//! An agent's connection to the forward proxy: `CONNECT host:port` opens a tunnel (handed to
//! [`super::mitm`]), an absolute-form `http://` request is relayed as it is; both only for a
//! caller whose token is in Proxy-Authorization, to an allowed destination.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;

use axum::body::Body;
use axum::response::Response;
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use http::uri::Scheme;
use http::{HeaderMap, HeaderValue, Method, Request, StatusCode, header};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use secrecy::{ExposeSecret, SecretString};
use tokio::net::TcpStream;
use zeroize::Zeroizing;

use super::egress::Destination;
use super::{ForwardProxy, Refusal, stopping};
use crate::metrics;
use crate::proxy::{ProxyError, TokenWatch};
use crate::server::{cut_off_signal, timed_body};
use crate::store::TokenRecord;
use crate::tokens::TOKEN_PREFIX;

/// Who is calling and where to: one tunnel, or one plain-HTTP request.
pub(super) struct Route {
    /// The destination: the CONNECT target or the absolute URL's authority.
    pub dest: Destination,
    /// `https` in a tunnel, `http` for an absolute-form request.
    pub scheme: Scheme,
    /// The caller's token, from Proxy-Authorization.
    pub caller: Result<SecretString, Refusal>,
    /// The agent's address.
    pub client: SocketAddr,
}

/// Counts an open agent connection for the `connections_active` metric.
struct Counted;

impl Counted {
    fn new() -> Self {
        metrics::get().connections.inc();
        Counted
    }
}

impl Drop for Counted {
    fn drop(&mut self) {
        metrics::get().connections.dec();
    }
}

/// Serve one agent connection until it closes, or until shutdown once it is idle.
pub(super) async fn serve(forward: Arc<ForwardProxy>, stream: TcpStream, client: SocketAddr) {
    let _counted = Counted::new();
    if let Err(e) = stream.set_nodelay(true) {
        tracing::debug!(error = %e, "could not set TCP_NODELAY");
    }
    let mut stop = forward.stop.subscribe();
    let service = {
        let forward = forward.clone();
        service_fn(move |request: Request<Incoming>| {
            let forward = forward.clone();
            async move { Ok::<_, Infallible>(forward.outer(request.map(timed_body), client).await) }
        })
    };
    let conn = hyper::server::conn::http1::Builder::new()
        .timer(TokioTimer::new())
        .serve_connection(TokioIo::new(stream), service)
        .with_upgrades();
    tokio::pin!(conn);
    let served = tokio::select! {
        served = conn.as_mut() => served,
        () = stopping(&mut stop) => {
            conn.as_mut().graceful_shutdown();
            // As on the agent listener: dropped once cut off, with what it has in flight.
            tokio::select! {
                served = conn.as_mut() => served,
                () = cut_off_signal(forward.cut_off.clone()) => Ok(()),
            }
        }
    };
    if let Err(e) = served {
        tracing::debug!(error = %e, "forward proxy connection ended with an error");
    }
}

impl ForwardProxy {
    /// A request on the agent's connection to the proxy.
    async fn outer(self: Arc<Self>, request: Request<Body>, client: SocketAddr) -> Response {
        if request.method() == Method::CONNECT {
            return self.connect(request, client).await;
        }
        let route = match (request.uri().scheme(), request.uri().authority()) {
            (Some(scheme), Some(authority)) if *scheme == Scheme::HTTP => {
                Destination::new(authority, Some(80)).map(|dest| Route {
                    dest,
                    scheme: Scheme::HTTP,
                    caller: proxy_token(request.headers()),
                    client,
                })
            }
            (Some(_), _) => Err(Refusal::Unsupported(
                "send https:// requests through a CONNECT tunnel (set HTTPS_PROXY)",
            )),
            _ => Err(Refusal::Unsupported(
                "this is the SEKS forward proxy: set HTTPS_PROXY / HTTP_PROXY to it, or send \
                 base-URL requests to the broker's agent listener",
            )),
        };
        let route = match route {
            Ok(route) => route,
            Err(refusal) => return self.refuse(client, request, refusal, None, None).await,
        };
        // The caller first, as for CONNECT: an unauthenticated client learns nothing about
        // destinations (the allow list, or what a name resolves to).
        let entry = match self.authenticate(request.headers()).await {
            Ok((_, entry)) => entry,
            Err(e) => {
                return self
                    .refuse(client, request, e, Some(&route.dest), None)
                    .await;
            }
        };
        if let Err(refusal) = self.check_destination(&route.dest).await {
            return self
                .refuse(
                    client,
                    request,
                    refusal,
                    Some(&route.dest),
                    Some(&entry.record),
                )
                .await;
        }
        self.relay(&route, request).await
    }

    /// Open a tunnel for an authenticated caller to an allowed destination.
    async fn connect(self: Arc<Self>, mut request: Request<Body>, client: SocketAddr) -> Response {
        let dest = match request.uri().authority() {
            Some(authority) => Destination::new(authority, None),
            None => Err(Refusal::BadTarget(request.uri().to_string())),
        };
        let dest = match dest {
            Ok(dest) => dest,
            Err(refusal) => return self.refuse(client, request, refusal, None, None).await,
        };
        // The caller first: an unauthenticated client learns nothing about destinations.
        let (caller, entry) = match self.authenticate(request.headers()).await {
            Ok(authenticated) => authenticated,
            Err(e) => return self.refuse(client, request, e, Some(&dest), None).await,
        };
        if let Err(refusal) = self.check_destination(&dest).await {
            return self
                .refuse(client, request, refusal, Some(&dest), Some(&entry.record))
                .await;
        }
        let on_upgrade = hyper::upgrade::on(&mut request);
        let route = Route {
            dest,
            scheme: Scheme::HTTPS,
            caller: Ok(caller),
            client,
        };
        self.tasks
            .spawn(super::mitm::intercept(self.clone(), on_upgrade, route));
        Response::new(Body::empty())
    }

    /// Whether agents may reach `dest`: on the allow list, and resolving to an address the
    /// proxy may dial (checked again when the upstream connection is made).
    pub(super) async fn check_destination(&self, dest: &Destination) -> Result<(), ProxyError> {
        let refused = |refusal: Refusal| {
            metrics::get().egress_refused(refusal.code());
            Err(ProxyError::Forward(refusal))
        };
        if !self.destinations.allows(dest) {
            return refused(Refusal::Destination(dest.to_string()));
        }
        if let Some(ip) = dest.ip() {
            return if self.guard.allows(ip) {
                Ok(())
            } else {
                refused(Refusal::Address(dest.to_string()))
            };
        }
        match self.resolver.lookup(&dest.host).await {
            Ok(_) => Ok(()),
            Err(e) => match e.downcast::<Refusal>() {
                Ok(refusal) => refused(*refusal),
                Err(e) => {
                    tracing::warn!(host = %dest.host, error = %e, "forward proxy: lookup failed");
                    Err(ProxyError::UpstreamUnreachable(dest.host.clone()))
                }
            },
        }
    }

    /// The caller's token from Proxy-Authorization and its entry, or a 407 saying why not.
    async fn authenticate(
        &self,
        headers: &HeaderMap,
    ) -> Result<(SecretString, Arc<crate::keyring::TokenEntry>), ProxyError> {
        let token = proxy_token(headers)?;
        let (entry, _) = self.caller(&token).await?;
        Ok((token, entry))
    }

    /// The caller's token entry and a watch on it: alive, or a 407 saying why not.
    pub(super) async fn caller(
        &self,
        token: &SecretString,
    ) -> Result<(Arc<crate::keyring::TokenEntry>, TokenWatch), ProxyError> {
        self.proxy
            .caller(token.expose_secret())
            .await
            .map_err(|e| match e {
                ProxyError::MalformedToken(_)
                | ProxyError::UnknownToken
                | ProxyError::Revoked(_)
                | ProxyError::Expired(_) => ProxyError::Forward(Refusal::ProxyAuth(e.to_string())),
                other => other,
            })
    }

    /// Answer a refused request, with its audit record (naming the caller, once known).
    async fn refuse(
        &self,
        client: SocketAddr,
        request: Request<Body>,
        refusal: impl Into<ProxyError>,
        dest: Option<&Destination>,
        caller: Option<&TokenRecord>,
    ) -> Response {
        let refusal = refusal.into();
        let target = dest.map(Destination::to_string);
        let response = self
            .proxy
            .audited(client, request, async |request, _, pending| {
                pending.update(|r| {
                    if request.method() == Method::CONNECT {
                        r.path = target.clone().unwrap_or_default();
                    }
                    r.host = target;
                    if let Some(caller) = caller {
                        r.attribute_to(caller);
                    }
                });
                Err(refusal)
            })
            .await;
        with_challenge(response)
    }
}

/// A 407 names the scheme clients should answer with.
pub(super) fn with_challenge(mut response: Response) -> Response {
    if response.status() == StatusCode::PROXY_AUTHENTICATION_REQUIRED {
        response.headers_mut().insert(
            header::PROXY_AUTHENTICATE,
            HeaderValue::from_static("Basic realm=\"seks\""),
        );
    }
    response
}

/// The caller's token from Proxy-Authorization: Basic with the token as the password
/// (`http://agent:TOKEN@proxy`) or the user (`http://TOKEN@proxy`), or Bearer.
pub(super) fn proxy_token(headers: &HeaderMap) -> Result<SecretString, Refusal> {
    let mut values = headers.get_all(header::PROXY_AUTHORIZATION).iter();
    let value = values
        .next()
        .ok_or_else(|| Refusal::ProxyAuth("none was sent".to_owned()))?;
    if values.next().is_some() {
        return Err(Refusal::ProxyAuth("it was sent more than once".to_owned()));
    }
    let unreadable = || Refusal::ProxyAuth("it can't be read".to_owned());
    let text = value.to_str().map_err(|_| unreadable())?.trim();
    let (scheme, rest) = text.split_once(' ').ok_or_else(unreadable)?;
    if scheme.eq_ignore_ascii_case("bearer") {
        return Ok(SecretString::from(rest.trim()));
    }
    if !scheme.eq_ignore_ascii_case("basic") {
        return Err(Refusal::ProxyAuth("use Basic or Bearer".to_owned()));
    }
    let decoded = Zeroizing::new(BASE64.decode(rest.trim()).map_err(|_| unreadable())?);
    let pair = std::str::from_utf8(&decoded).map_err(|_| unreadable())?;
    let (user, password) = pair.split_once(':').unwrap_or((pair, ""));
    let token = if password.starts_with(TOKEN_PREFIX) {
        password
    } else {
        user
    };
    Ok(SecretString::from(token))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn with(value: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.append(header::PROXY_AUTHORIZATION, value.parse().unwrap());
        h
    }

    #[test]
    fn the_token_comes_from_basic_or_bearer() {
        let token = |h: &HeaderMap| proxy_token(h).map(|t| t.expose_secret().to_owned());
        let basic = |pair: &str| with(&format!("Basic {}", BASE64.encode(pair)));
        assert_eq!(token(&basic("agent:seks_a_b")).unwrap(), "seks_a_b");
        assert_eq!(token(&basic("seks_a_b:")).unwrap(), "seks_a_b");
        assert_eq!(token(&basic("seks_a_b")).unwrap(), "seks_a_b");
        assert_eq!(token(&with("Bearer seks_a_b")).unwrap(), "seks_a_b");
        assert!(matches!(
            proxy_token(&HeaderMap::new()),
            Err(Refusal::ProxyAuth(_))
        ));
        assert!(proxy_token(&with("Digest x")).is_err());
        assert!(proxy_token(&with("Basic !!!")).is_err());
        let mut twice = with("Bearer a");
        twice.append(header::PROXY_AUTHORIZATION, "Bearer b".parse().unwrap());
        assert!(proxy_token(&twice).is_err());
    }
}
