//! What the broker's own calls (capabilities) reuse of the proxy, so they are held to the
//! same rules as forwarded requests: the agent's token and its chain's lifetimes, policies,
//! limits and approvals; and sending a request the broker built to a provider's pinned
//! upstream with the credential injected the provider's way.

use std::sync::Arc;

use axum::body::Body;
use bytes::Bytes;
use http::{HeaderMap, Method, Request, header};
use hyper::body::Incoming;
use secrecy::SecretString;

use super::{Proxy, ProxyError, Upstreams, keyring_error, rewrite};
use crate::approvals::Summary;
use crate::keyring::TokenEntry;
use crate::policy::limits::Admission;
use crate::policy::{Denial, PolicySpec};
use crate::providers::Provider;
use crate::{clock, tokens};

impl Proxy {
    /// The token sent as `Authorization: Bearer <token>`, with its chain and policies.
    pub async fn bearer(&self, headers: &HeaderMap) -> Result<Arc<TokenEntry>, ProxyError> {
        let mut values = headers.get_all(header::AUTHORIZATION).iter();
        let first = values.next();
        if values.next().is_some() {
            return Err(ProxyError::AmbiguousToken);
        }
        let text = first
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .ok_or_else(|| ProxyError::MissingToken("Authorization: Bearer".to_owned()))?;
        let parsed = tokens::parse(text.trim())?;
        self.keyring.token(&parsed).await.map_err(keyring_error)
    }

    /// Check a call the broker makes itself against the token's chain: alive, policies
    /// readable, and `allowed` by them (see [`super::enforce::Enforcer::check_call`]).
    pub fn check_call(
        &self,
        entry: &TokenEntry,
        allowed: impl FnOnce(&[(&TokenEntry, &PolicySpec)]) -> Result<(), Denial>,
    ) -> Result<(), ProxyError> {
        self.enforcer.check_call(entry, allowed)
    }

    /// Take the chain's limits for a checked call and hold it for approval if `hold` says
    /// so, then `recheck` the chain as it is once approved; the admission is held until the
    /// call ends.
    pub async fn admit_call(
        &self,
        entry: &TokenEntry,
        hold: Option<Summary>,
        recheck: impl FnOnce(&TokenEntry) -> Result<(), ProxyError>,
    ) -> Result<Option<Admission>, ProxyError> {
        self.enforcer.admit_call(entry, hold, recheck).await
    }

    /// Note that the token was used now (written back to the store later).
    pub fn note_use(&self, token_id: &str) {
        self.keyring.note_use(token_id, clock::now());
    }
}

/// Send a request the broker built (a capability's) to `provider` through `upstreams`:
/// `rest` (already validated) below its base URL, `credential` injected as for proxied
/// requests, no redirects followed.
#[allow(clippy::too_many_arguments)]
pub async fn send_built(
    upstreams: &Upstreams,
    provider: &Provider,
    method: Method,
    rest: &str,
    query: Option<&str>,
    headers: HeaderMap,
    body: Bytes,
    credential: &SecretString,
) -> Result<http::Response<Incoming>, ProxyError> {
    let uri = rewrite::upstream_uri(provider, &rewrite::TokenPath::plain(rest), query, credential).map_err(|_| {
        tracing::error!(provider = %provider.name, "a capability's request has no valid upstream URL");
        ProxyError::CredentialUnavailable
    })?;
    let mut request = Request::new(Body::from(body));
    *request.method_mut() = method;
    *request.uri_mut() = uri;
    *request.headers_mut() = headers;
    rewrite::inject(provider, &mut request, credential).map_err(|_| {
        tracing::error!(provider = %provider.name, "a capability's credential is not a valid header value");
        ProxyError::CredentialUnavailable
    })?;
    upstreams
        .client(provider.http2)
        .request(request)
        .await
        .map_err(|e| {
            tracing::warn!(provider = %provider.name, error = %e, "a capability's request failed");
            if e.is_connect() {
                ProxyError::UpstreamUnreachable(provider.name.clone())
            } else {
                ProxyError::UpstreamFailed(provider.name.clone())
            }
        })
}
