//! The passthrough proxy: `/api/<provider>/<path>` → the provider's pinned upstream,
//! with the agent's token swapped for the real credential and bodies streamed both ways.

mod audited;
mod calls;
mod enforce;
mod error;
mod lifetime;
pub mod oauth2;
mod resign;
mod response;
pub mod rewrite;
pub mod target;
mod upstream;
pub(crate) mod websocket;

use std::borrow::Cow;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::response::Response;
use http::request::Parts;
use http::{HeaderMap, HeaderValue, Method, Request, StatusCode, Version, header};
use http_body_util::{LengthLimitError, Limited};
use secrecy::{ExposeSecret, SecretString};
use tracing::Instrument;

pub use calls::send_built;
pub use error::{ProxyError, SEKS_ERROR_HEADER};
pub(crate) use lifetime::TokenWatch;
pub use upstream::{Resolver, UpstreamClient, UpstreamError, Upstreams};

use crate::approvals::Approvals;
use crate::audit::{AuditRecord, Auditor, Decision};
use crate::keyring::{Keyring, KeyringError, TokenEntry, Unlocked};
use crate::policy::limits::Limits;
use crate::providers::{AuthScheme, ErrorShape, Provider, Providers};
use crate::sigv4::chunked::ChunkError;
use crate::sigv4::replay::ReplayGuard;
use crate::tokens::SigningTokens;
use crate::{clock, tokens};
pub use audited::{AuditedBody, CountedBody, PendingRecord};
use enforce::Enforcer;
pub(crate) use enforce::{
    Admitted, ForwardBody, by_root, check_built_graphql, check_credential_route, withheld_members,
};
pub(crate) use response::{Hidden, Metering, arrives_unencoded, replace_members};

/// Limits and timeouts the proxy applies to every request.
#[derive(Debug, Clone)]
pub struct ProxyLimits {
    /// Largest request body forwarded, in bytes.
    pub max_body_bytes: u64,
    /// Largest request body read to check it against a policy.
    pub max_policy_body_bytes: u64,
    /// Longest wait for upstream response headers.
    pub response_timeout: Duration,
    /// Longest silence while streaming an upstream response body.
    pub read_timeout: Duration,
}

/// Everything the proxy needs to serve a request.
pub struct Proxy {
    providers: Providers,
    keyring: Arc<Keyring>,
    /// Recomputes the tokens agents sign requests with.
    signing: SigningTokens,
    /// Signed requests seen lately, so none is used twice.
    replay: ReplayGuard,
    enforcer: Enforcer,
    upstreams: Upstreams,
    limits: ProxyLimits,
    auditor: Arc<Auditor>,
    /// Access tokens for OAuth2 providers.
    minter: oauth2::Minter,
    /// Open WebSocket sessions.
    sessions: websocket::Sessions,
}

/// What the request resolved to so far, for the audit record.
#[derive(Default)]
pub(crate) struct Seen {
    /// The provider the request is for; its error shape is the response's.
    pub provider: Option<Arc<Provider>>,
    /// Model named by the request, when policy read it.
    pub model: Option<String>,
    /// Held for approval and approved.
    pub approved: bool,
    /// Time until the upstream's response headers.
    pub upstream_us: Option<u64>,
}

/// A request ready to go upstream, and what its answer needs.
pub(crate) struct Outgoing<'a> {
    /// The upstream request, credential in place.
    pub request: Request<Body>,
    /// The client that sends it.
    pub client: &'a UpstreamClient,
    /// Names the upstream in errors: the provider, or the destination host.
    pub upstream: &'a str,
    /// An OAuth2 access token the request carries and the secret it was minted from: if the
    /// upstream refuses it, it is not used again.
    pub minted: Option<(&'a str, &'a Arc<SecretString>)>,
    /// What the response must not show the agent.
    pub hidden: Hidden<'a>,
    /// Usage metering and the audit record.
    pub metering: Metering,
    /// The agent's side of a WebSocket handshake, switched once the upstream has.
    pub upgrade: Option<hyper::upgrade::OnUpgrade>,
    /// The token the request carries: its response or session ends when the token does.
    pub watch: Option<TokenWatch>,
}

/// Response header naming the request in the audit log.
pub const REQUEST_ID_HEADER: &str = "x-seks-request-id";

impl Proxy {
    /// A proxy over these providers, credentials, counters, approvals, upstream clients
    /// and audit log, whose WebSocket sessions end when `cut_off` turns true.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        providers: Providers,
        keyring: Arc<Keyring>,
        signing: SigningTokens,
        counters: Arc<Limits>,
        approvals: Approvals,
        upstreams: Upstreams,
        limits: ProxyLimits,
        auditor: Arc<Auditor>,
        cut_off: tokio::sync::watch::Receiver<bool>,
    ) -> Self {
        let enforcer = Enforcer::new(
            counters,
            approvals,
            keyring.clone(),
            usize::try_from(limits.max_policy_body_bytes).unwrap_or(usize::MAX),
            usize::try_from(limits.max_body_bytes).unwrap_or(usize::MAX),
        );
        let minter = oauth2::Minter::new(
            keyring.clone(),
            upstreams.client(false).clone(),
            limits.response_timeout,
        );
        let sessions = websocket::Sessions::new(
            keyring.clone(),
            usize::try_from(limits.max_body_bytes).unwrap_or(usize::MAX),
            cut_off,
        );
        Proxy {
            providers,
            keyring,
            signing,
            replay: ReplayGuard::default(),
            enforcer,
            upstreams,
            limits,
            auditor,
            minter,
            sessions,
        }
    }

    /// The open WebSocket sessions.
    pub(crate) fn sessions(&self) -> &websocket::Sessions {
        &self.sessions
    }

    /// The key new tokens for `provider` are recomputed with, if it signs requests.
    pub fn signing_for(&self, provider: &str) -> Option<&SigningTokens> {
        crate::grants::signing_for(&self.providers, provider, &self.signing)
    }

    /// Serve one agent request; never fails, errors become provider-shaped responses.
    /// Every request gets exactly one audit record, written when its response ends.
    pub async fn handle(&self, client: SocketAddr, request: Request<Body>) -> Response {
        self.audited(client, request, async |request, seen, pending| {
            self.forward(request, seen, pending).await
        })
        .await
    }

    /// Serve one request with `forward`, which resolves and sends it, inside what every
    /// request gets: a request id, one audit record, the audit log's admission check and
    /// errors as provider-shaped responses.
    pub(crate) async fn audited(
        &self,
        client: SocketAddr,
        request: Request<Body>,
        forward: impl AsyncFnOnce(
            Request<Body>,
            &mut Seen,
            &Arc<PendingRecord>,
        ) -> Result<Response, ProxyError>,
    ) -> Response {
        let started = Instant::now();
        let arrived = AuditRecord::arriving(
            request.method().as_str(),
            request.uri().path().to_owned(),
            client,
        );
        let request_id = arrived.request_id.clone();
        let bytes_in = Arc::new(AtomicU64::new(0));
        let pending = PendingRecord::new(arrived, self.auditor.clone(), started, bytes_in.clone());
        let method = request.method().clone();
        let request = request.map(|body| Body::new(CountedBody::new(body, bytes_in)));
        let mut seen = Seen::default();
        // Everything logged while serving the request carries its id.
        let span = tracing::info_span!("request", request_id = %request_id);
        let result = match pending.admit() {
            Ok(()) => forward(request, &mut seen, &pending).instrument(span).await,
            Err(e) => Err(ProxyError::AuditUnavailable(e.to_string())),
        };
        let shape = seen
            .provider
            .as_ref()
            .map_or(ErrorShape::OpenAi, |p| p.errors);
        let for_want_of_audit = matches!(result, Err(ProxyError::AuditUnavailable(_)));
        let (mut response, decision, refusal) = match result {
            Ok(response) => {
                let decision = if seen.approved {
                    Decision::Approved
                } else {
                    Decision::Allowed
                };
                (response, decision, None)
            }
            Err(e) => {
                let code = e.code();
                if e.status().is_server_error() {
                    tracing::warn!(code, %request_id, "{e}");
                }
                let decision = e.decision();
                let refusal = Some((code, e.to_string()));
                (e.into_response(shape), decision, refusal)
            }
        };
        let status = response.status();
        // A refusal for want of an audit log can't wait for it.
        let strict = self.auditor.is_strict() && !for_want_of_audit;
        pending.update(|r| {
            r.model = seen.model.take();
            r.status = status.as_u16();
            r.decision = decision;
            r.upstream_us = seen.upstream_us;
            (r.error, r.reason) = match refusal {
                Some((code, message)) => (Some(code.to_owned()), Some(message)),
                None => (None, None),
            };
        });
        let headers = response.headers_mut();
        if let Ok(id) = HeaderValue::from_str(&request_id) {
            headers.insert(REQUEST_ID_HEADER, id);
        }
        // A 101 has no body either: the WebSocket session starts once it is sent.
        let body_is_sent = method != Method::HEAD
            && status != StatusCode::NO_CONTENT
            && status != StatusCode::NOT_MODIFIED
            && status != StatusCode::SWITCHING_PROTOCOLS;
        if strict && !body_is_sent {
            // No body end to hold back: the record commits before the response goes.
            if let Err(e) = pending.commit().await {
                return ProxyError::AuditUnavailable(e.to_string()).into_response(shape);
            }
        } else if strict {
            // The end of a body of unknown length is what a client waits for.
            headers.remove(header::CONTENT_LENGTH);
        }
        response.map(|body| Body::new(AuditedBody::new(body, pending, strict)))
    }

    async fn forward(
        &self,
        request: Request<Body>,
        seen: &mut Seen,
        pending: &Arc<PendingRecord>,
    ) -> Result<Response, ProxyError> {
        seen.provider = target::provider_segment(request.uri().path())
            .and_then(|name| self.providers.get(name))
            .cloned();
        check_request_line(&request)?;
        let (mut parts, body) = request.into_parts();
        let upgrade = websocket::take_upgrade(&mut parts);
        let encoded_slashes = seen.provider.as_ref().is_some_and(|p| p.encoded_slashes);
        let route = target::route(parts.uri.path(), encoded_slashes).map_err(|e| match e {
            target::TargetError::NoRoute => ProxyError::NoRoute,
            target::TargetError::BadPath(why) => ProxyError::BadPath(why),
        })?;
        let provider = self
            .providers
            .get(route.provider)
            .ok_or_else(|| {
                ProxyError::UnknownProvider(
                    route.provider.to_owned(),
                    self.providers.names().join(", "),
                )
            })?
            .clone();
        seen.provider = Some(provider.clone());
        let query = parts.uri.query();
        let upstream_query = rewrite::strip_token_params(&provider, query);
        // The path without a token segment (Telegram's `/bot<token>`, `/file/bot<token>`) is
        // what policies match and the audit log records; the key goes where the token was.
        let token_path = rewrite::strip_token_segment(&provider, route.rest);
        let rest = token_path.without_token();
        pending.update(|r| {
            r.provider = Some(provider.name.clone());
            r.path = match &upstream_query {
                Some(q) => format!("{rest}?{q}"),
                None => rest.to_string(),
            };
        });

        let signature = match &provider.auth {
            AuthScheme::Sigv4 { .. } => Some(resign::AgentSignature::read(
                &self.signing,
                &provider,
                &parts.headers,
            )?),
            _ => None,
        };
        let token_text = match &signature {
            Some(signature) => Cow::Borrowed(signature.token.expose_secret()),
            None => rewrite::find_token(&provider, &parts.headers, query, route.rest)
                .map_err(|_| ProxyError::AmbiguousToken)?
                .ok_or_else(|| ProxyError::MissingToken(rewrite::token_locations(&provider)))?,
        };
        let (entry, watch) = self.token_for(&token_text, &provider, pending).await?;
        let token = &entry.record;
        if declared_length(&parts.headers).is_some_and(|len| len > self.limits.max_body_bytes) {
            return Err(ProxyError::BodyTooLarge(self.limits.max_body_bytes));
        }
        let max_body = usize::try_from(self.limits.max_body_bytes).unwrap_or(usize::MAX);
        let (body, signed) = match signature {
            Some(signature) => {
                // Counted against the token the operator issued, so an agent can't get more
                // room by deriving tokens of its own.
                let root = &entry.root().record.id;
                let (body, checked) = signature
                    .check(&parts, body, max_body, &self.replay, root, clock::now())
                    .await?;
                self.enforcer.claim_signature(&checked.claim).await?;
                (body, Some(checked))
            }
            None => (body, None),
        };
        let (admitted, unlocked) = self
            .admit_and_unlock(&entry, &provider, &parts, &rest, body, seen)
            .await?;
        #[cfg(debug_assertions)]
        panic_if_asked(&rest, &unlocked.secret);

        let uri = rewrite::upstream_uri(
            &provider,
            &token_path,
            upstream_query.as_deref(),
            &unlocked.secret,
        )
        .map_err(|e| match e {
            rewrite::UriError::Path => {
                ProxyError::BadPath("the path does not form a valid upstream URL")
            }
            rewrite::UriError::Credential => {
                tracing::error!(token_id = %token.id, "stored credential can't go in a URL path");
                ProxyError::CredentialUnavailable
            }
        })?;
        let mut headers = rewrite::forwardable_headers(&provider, &parts.headers);
        if upgrade.is_some() {
            websocket::prepare_request(&mut headers);
        }
        let body = self.upstream_body(admitted.body, &mut headers);
        let mut upstream_request = Request::new(body);
        *upstream_request.method_mut() = parts.method;
        *upstream_request.uri_mut() = uri;
        *upstream_request.headers_mut() = headers;
        rewrite::inject(&provider, &mut upstream_request, &unlocked.secret).map_err(|_| {
            tracing::error!(token_id = %token.id, "stored credential is not a valid header value");
            ProxyError::CredentialUnavailable
        })?;
        if let Some(signed) = signed {
            signed.sign_upstream(
                &provider,
                &mut upstream_request,
                &unlocked.secret,
                clock::now(),
            )?;
        }
        let outgoing = Outgoing {
            request: upstream_request,
            // WebSocket handshakes are HTTP/1.1 only.
            client: self.upstreams.client(provider.http2 && upgrade.is_none()),
            upstream: &provider.name,
            minted: minted(&provider, token, &unlocked),
            hidden: Hidden {
                scrubber: &unlocked.scrubber,
                members: admitted.withheld,
                cookies: true,
            },
            metering: Metering {
                admission: admitted.admission,
                llm: provider.model_in.reads_body(),
                record: pending.clone(),
            },
            upgrade,
            watch: Some(watch),
        };
        self.send_upstream(outgoing, seen).await
    }

    /// The entry of `token_text`, which must be a token for `provider`, and a watch on it
    /// for the response; the request's record is attributed to it.
    pub(crate) async fn token_for(
        &self,
        token_text: &str,
        provider: &Provider,
        pending: &PendingRecord,
    ) -> Result<(Arc<TokenEntry>, TokenWatch), ProxyError> {
        let parsed = tokens::parse(token_text)?;
        if parsed.provider() != provider.name {
            return Err(ProxyError::WrongProvider {
                token: parsed.provider().to_owned(),
                route: provider.name.clone(),
            });
        }
        let hash = parsed.hash();
        // Watching starts before the lookup, so a change the entry doesn't show yet is seen.
        let changes = self.keyring.changes();
        let entry = self
            .keyring
            .token_by_hash(hash)
            .await
            .map_err(keyring_error)?;
        let token = &entry.record;
        pending.update(|r| r.attribute_to(token));
        // The token text names its provider, but the stored secret decides.
        if token.provider != provider.name {
            return Err(ProxyError::WrongProvider {
                token: token.provider.clone(),
                route: provider.name.clone(),
            });
        }
        let watch = TokenWatch::new(&self.keyring, changes, hash, &entry);
        Ok((entry, watch))
    }

    /// The entry of a token that identifies its holder (the forward proxy's caller): any
    /// provider's, but alive, as are its ancestors; and a watch on it for what it opens.
    pub(crate) async fn caller(
        &self,
        token_text: &str,
    ) -> Result<(Arc<TokenEntry>, TokenWatch), ProxyError> {
        let parsed = tokens::parse(token_text)?;
        // Watching starts before the lookup, so a change the entry doesn't show yet is seen.
        let changes = self.keyring.changes();
        let entry = self.keyring.token(&parsed).await.map_err(keyring_error)?;
        enforce::check_lifetimes(&entry, clock::now())?;
        let watch = TokenWatch::new(&self.keyring, changes, parsed.hash(), &entry);
        Ok((entry, watch))
    }

    /// Apply the token's policy to a request for `provider` (`rest` is the path its rules
    /// see), then unlock the credential it may carry (for OAuth2, a minted access token).
    pub(crate) async fn admit_and_unlock(
        &self,
        entry: &TokenEntry,
        provider: &Provider,
        parts: &Parts,
        rest: &str,
        body: Body,
        seen: &mut Seen,
    ) -> Result<(Admitted, Unlocked), ProxyError> {
        let admitted = self
            .enforcer
            .admit(entry, provider, parts, rest, body, seen)
            .await?;
        let token = &entry.record;
        let unlocked = self
            .keyring
            .credential(token)
            .await
            .map_err(keyring_error)?;
        // OAuth2: what goes upstream is an access token minted from the stored secret.
        let unlocked = match &provider.auth {
            AuthScheme::Oauth2(grant) => self
                .minter
                .unlock(grant, token, &unlocked)
                .await
                .map_err(|e| match e {
                    oauth2::MintError::Refresh(why) => {
                        ProxyError::CredentialRefreshFailed(provider.name.clone(), why)
                    }
                    oauth2::MintError::Keyring(e) => keyring_error(e),
                })?,
            _ => unlocked,
        };
        self.keyring.note_use(&token.id, clock::now());
        Ok((admitted, unlocked))
    }

    /// The request body for the upstream: streamed within the body limit, or as policy read
    /// it, whose length then comes from the buffer (policy may have amended it).
    pub(crate) fn upstream_body(&self, body: ForwardBody, headers: &mut HeaderMap) -> Body {
        match body {
            ForwardBody::Streamed(body) => {
                let max_body = usize::try_from(self.limits.max_body_bytes).unwrap_or(usize::MAX);
                Body::new(Limited::new(body, max_body))
            }
            ForwardBody::Buffered(bytes) => {
                headers.remove(header::CONTENT_LENGTH);
                headers.remove(header::TRANSFER_ENCODING);
                Body::from(bytes)
            }
        }
    }

    /// Send a request upstream within the response timeout and turn the answer into the
    /// agent's response: scrubbed, metered, its upstream time noted.
    pub(crate) async fn send_upstream(
        &self,
        outgoing: Outgoing<'_>,
        seen: &mut Seen,
    ) -> Result<Response, ProxyError> {
        let Outgoing {
            request,
            client,
            upstream,
            minted,
            hidden,
            metering,
            upgrade,
            watch,
        } = outgoing;
        let method_has_body = request.method() != Method::HEAD;
        let forwarded = Instant::now();
        let sent =
            tokio::time::timeout(self.limits.response_timeout, client.request(request)).await;
        seen.upstream_us = Some(u64::try_from(forwarded.elapsed().as_micros()).unwrap_or(u64::MAX));
        let response = match sent {
            Err(_) => {
                return Err(ProxyError::UpstreamTimeout(
                    upstream.to_owned(),
                    self.limits.response_timeout,
                ));
            }
            Ok(Err(e)) => return Err(self.upstream_error(upstream, &e)),
            Ok(Ok(response)) => response,
        };
        // OAuth2: a refused access token (revoked, or dead before its time) is not reused.
        if response.status() == StatusCode::UNAUTHORIZED
            && let Some((secret_id, access)) = minted
        {
            self.minter.forget(secret_id, access);
        }
        if let Some(agent) = upgrade
            && response.status() == StatusCode::SWITCHING_PROTOCOLS
        {
            // The session is the request in flight: it holds its concurrency slots until it ends.
            return self
                .sessions
                .switch(agent, response, &hidden, watch, metering.admission);
        }
        response::to_agent(
            response,
            hidden,
            self.limits.read_timeout,
            method_has_body,
            metering,
            watch,
            &self.keyring,
        )
    }

    /// The proxy's limits.
    pub(crate) fn limits(&self) -> &ProxyLimits {
        &self.limits
    }

    fn upstream_error(
        &self,
        upstream: &str,
        error: &hyper_util::client::legacy::Error,
    ) -> ProxyError {
        let mut source: Option<&(dyn std::error::Error + 'static)> = Some(error);
        while let Some(e) = source {
            if e.is::<LengthLimitError>() {
                return ProxyError::BodyTooLarge(self.limits.max_body_bytes);
            }
            // The agent stopped sending the body being streamed upstream.
            if e.is::<tower_http::timeout::TimeoutError>() {
                return ProxyError::BodyStalled;
            }
            if let Some(refusal) = e.downcast_ref::<ChunkError>().and_then(resign::chunk_error) {
                return refusal;
            }
            // The forward proxy's resolver refused every address of the host.
            if let Some(refusal) = e.downcast_ref::<crate::forward::Refusal>() {
                return ProxyError::Forward(refusal.clone());
            }
            source = e.source();
        }
        tracing::warn!(upstream, error = %error, "upstream request failed");
        if error.is_connect() {
            ProxyError::UpstreamUnreachable(upstream.to_owned())
        } else {
            ProxyError::UpstreamFailed(upstream.to_owned())
        }
    }
}

/// The OAuth2 access token a request carries and the secret it was minted from.
pub(crate) fn minted<'a>(
    provider: &Provider,
    token: &'a crate::store::TokenRecord,
    unlocked: &'a Unlocked,
) -> Option<(&'a str, &'a Arc<SecretString>)> {
    matches!(provider.auth, AuthScheme::Oauth2(_))
        .then_some((token.secret_id.as_str(), &unlocked.secret))
}

/// Methods an API client uses. Anything else (CONNECT, TRACE, `trace`, TRACK, WebDAV…) could
/// tunnel or reflect the injected credential, so it is refused rather than forwarded.
pub(crate) const FORWARDED_METHODS: [Method; 7] = [
    Method::GET,
    Method::HEAD,
    Method::POST,
    Method::PUT,
    Method::PATCH,
    Method::DELETE,
    Method::OPTIONS,
];

/// Refuse what must never be forwarded: methods outside the allow-list, proxy-style
/// absolute targets, and repeated or malformed Host headers.
fn check_request_line(request: &Request<Body>) -> Result<(), ProxyError> {
    let method = request.method();
    if !FORWARDED_METHODS.contains(method) {
        return Err(ProxyError::MethodNotAllowed(method.clone()));
    }
    // HTTP/2 always carries scheme and authority; in HTTP/1 they mean an absolute-form target.
    if request.version() < Version::HTTP_2 && request.uri().authority().is_some() {
        return Err(ProxyError::AbsoluteTarget);
    }
    let mut hosts = request.headers().get_all(header::HOST).iter();
    if let Some(host) = hosts.next() {
        let valid = host
            .to_str()
            .ok()
            .and_then(|h| h.parse::<http::uri::Authority>().ok())
            .is_some_and(|a| !a.as_str().contains('@'));
        if !valid || hosts.next().is_some() {
            return Err(ProxyError::BadHost);
        }
    }
    Ok(())
}

/// Test seam, compiled into debug builds only and armed by `SEKS_TEST_FAULTS`: panics with
/// the credential in the message, so tests can prove the panic hook redacts it.
#[cfg(debug_assertions)]
fn panic_if_asked(rest: &str, credential: &secrecy::SecretString) {
    if rest.ends_with("/__seks_test_panic") && std::env::var_os("SEKS_TEST_FAULTS").is_some() {
        panic!("test fault with credential {}", credential.expose_secret());
    }
}

/// The body length a request declares in `Content-Length`.
pub(crate) fn declared_length(headers: &HeaderMap) -> Option<u64> {
    headers
        .get(header::CONTENT_LENGTH)?
        .to_str()
        .ok()?
        .parse()
        .ok()
}

fn keyring_error(e: KeyringError) -> ProxyError {
    match e {
        KeyringError::UnknownToken => ProxyError::UnknownToken,
        KeyringError::TooDeep => ProxyError::PolicyUnavailable(e.to_string()),
        KeyringError::Store(_) => {
            tracing::error!(error = %e, "store lookup failed; refusing the request");
            ProxyError::StoreUnavailable
        }
        // Logged once, when the sync found the store down; not again for every request.
        KeyringError::StoreDown => ProxyError::StoreUnavailable,
        KeyringError::SecretMissing(_)
        | KeyringError::ProviderMismatch(_)
        | KeyringError::Scrubber(_)
        | KeyringError::ScrubberUnfinished
        | KeyringError::TooManyLearned(_)
        | KeyringError::Seal(_) => {
            tracing::error!(error = %e, "credential could not be loaded");
            ProxyError::CredentialUnavailable
        }
    }
}
