//! One request through the forward proxy: the host checked against the tunnel's, the tokens
//! in it found, and either refused (a token for another host), relayed without a credential
//! (no token), or put through the token's policy with the credential in the token's place.

use std::sync::Arc;

use axum::body::Body;
use axum::response::Response;
use bytes::Bytes;
use http::request::Parts;
use http::uri::PathAndQuery;
use http::{HeaderValue, Request, Uri, header};
use http_body_util::{BodyExt, Limited};
use hyper::upgrade::OnUpgrade;
use secrecy::ExposeSecret;

use super::connect::{Route, with_challenge};
use super::placeholder::{self, BodyKind};
use super::{ForwardProxy, Refusal};
use crate::metrics;
use crate::proxy::{
    FORWARDED_METHODS, ForwardBody, Hidden, Metering, Outgoing, PendingRecord, ProxyError, Seen,
    TokenWatch, declared_length, minted, rewrite, target, websocket,
};
use crate::server::cutoff::CutOffBody;
use crate::tokens;

impl ForwardProxy {
    /// Serve one request of `route`, audited like every request.
    pub(super) async fn relay(&self, route: &Route, request: Request<Body>) -> Response {
        let response = self
            .proxy
            .audited(route.client, request, async |request, seen, pending| {
                self.relay_request(route, request, seen, pending).await
            })
            .await;
        let cut_off = self.cut_off.clone();
        with_challenge(response.map(|body| Body::new(CutOffBody::new(body, cut_off))))
    }

    async fn relay_request(
        &self,
        route: &Route,
        request: Request<Body>,
        seen: &mut Seen,
        pending: &Arc<PendingRecord>,
    ) -> Result<Response, ProxyError> {
        let (mut parts, body) = request.into_parts();
        let upgrade = websocket::take_upgrade(&mut parts);
        pending.update(|r| r.host = Some(route.dest.to_string()));
        let caller_token = route.caller.as_ref().map_err(Clone::clone)?;
        let (caller, caller_watch) = self.caller(caller_token).await?;
        pending.update(|r| r.attribute_to(&caller.record));
        if !FORWARDED_METHODS.contains(&parts.method) {
            return Err(ProxyError::MethodNotAllowed(parts.method.clone()));
        }
        check_host(&parts, route).inspect_err(|r| metrics::get().egress_refused(r.code()))?;
        let max_body = self.proxy.limits().max_body_bytes;
        if declared_length(&parts.headers).is_some_and(|len| len > max_body) {
            return Err(ProxyError::BodyTooLarge(max_body));
        }
        let path = parts.uri.path();
        let query = parts.uri.query();
        // What would go upstream is searched: hop-by-hop headers (Proxy-Authorization) never do.
        let mut headers = rewrite::relayed_headers(&parts.headers);
        let (body, scanned) = self.read_body(&parts.headers, body).await?;
        let mut found = placeholder::find(&headers, path, query, &self.providers);
        if let Some((kind, bytes)) = &scanned {
            placeholder::merge(&mut found, placeholder::find_in_body(*kind, bytes));
        }
        // Every token must be headed to its own provider's host, whatever else is in the request.
        let mut placed = Vec::with_capacity(found.len());
        for f in &found {
            let provider = tokens::parse(&f.token).map(|t| t.provider()).unwrap_or("");
            match self.placement(provider, &route.scheme, &route.dest, path) {
                Some(rest) => placed.push((provider, rest)),
                None => return Err(self.foreign(&f.token, provider, route, pending).await),
            }
        }
        let [(provider_name, rest)] = placed[..] else {
            return if placed.is_empty() {
                let limit = usize::try_from(max_body).unwrap_or(usize::MAX);
                let body = Body::new(Limited::new(body, limit));
                let upstream = Upstream {
                    route,
                    path,
                    query,
                    websocket: upgrade.is_some(),
                }
                .request(parts.method.clone(), headers, body)?;
                self.pass_through(route, upstream, upgrade, caller_watch, seen, pending)
                    .await
            } else {
                Err(ProxyError::AmbiguousToken)
            };
        };
        let token = &found[0].token;
        let provider = self
            .providers
            .get(provider_name)
            .ok_or_else(|| {
                let known = self.providers.names().join(", ");
                ProxyError::UnknownProvider(provider_name.to_owned(), known)
            })?
            .clone();
        if !found[0].replaceable || (found[0].in_body && !provider.body_placeholders) {
            return Err(Refusal::MisplacedToken.into());
        }
        seen.provider = Some(provider.clone());
        if provider.auth.signs_requests() {
            return Err(Refusal::Unsupported(
                "requests signed with AWS SigV4 go through the broker's base URL, not the proxy",
            )
            .into());
        }
        // The path goes upstream as it is, so it must not leave the provider's base path.
        target::validate(path, provider.encoded_slashes).map_err(ProxyError::BadPath)?;
        let token_path = rewrite::strip_token_segment(&provider, rest);
        let policy_path = token_path.without_token();
        pending.update(|r| {
            r.provider = Some(provider.name.clone());
            r.path = match query {
                Some(q) => format!("{policy_path}?{q}"),
                None => policy_path.to_string(),
            };
        });
        let (entry, watch) = self.proxy.token_for(token, &provider, pending).await?;
        let (admitted, unlocked) = self
            .proxy
            .admit_and_unlock(&entry, &provider, &parts, &policy_path, body, seen)
            .await?;
        let credential = unlocked.secret.expose_secret();
        let (path, query) = placeholder::replace_in_target(path, query, token, credential);
        placeholder::replace_in_headers(&mut headers, token, credential, &self.providers).map_err(
            |_| {
                tracing::error!(
                    token_id = %entry.record.id,
                    "stored credential can't take the token's place"
                );
                ProxyError::CredentialUnavailable
            },
        )?;
        let body = match (&scanned, found[0].in_body) {
            (Some((kind, original)), true) => {
                // Policy may have amended a body it read; otherwise the body is as read.
                let current = match admitted.body {
                    ForwardBody::Buffered(bytes) => bytes,
                    ForwardBody::Streamed(_) => original.clone(),
                };
                let replaced = placeholder::replace_in_body(*kind, &current, token, credential)
                    .map_err(|_| ProxyError::CredentialUnavailable)?;
                ForwardBody::Buffered(Bytes::from(replaced))
            }
            _ => admitted.body,
        };
        let body = self.proxy.upstream_body(body, &mut headers);
        let upstream = Upstream {
            route,
            path: &path,
            query: query.as_deref(),
            websocket: upgrade.is_some(),
        }
        .request(parts.method, headers, body)?;
        let outgoing = Outgoing {
            request: upstream,
            // WebSocket handshakes are HTTP/1.1 only.
            client: self.upstreams.client(provider.http2 && upgrade.is_none()),
            upstream: &provider.name,
            minted: minted(&provider, &entry.record, &unlocked),
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
        self.proxy.send_upstream(outgoing, seen).await
    }

    /// The body, and for a text, form or JSON one within the policy read limit its bytes,
    /// read so it can be searched for tokens. Other bodies (binary, multipart, compressed,
    /// larger) stream unsearched.
    async fn read_body(
        &self,
        headers: &http::HeaderMap,
        body: Body,
    ) -> Result<(Body, Option<(BodyKind, Bytes)>), ProxyError> {
        let limit = self.proxy.limits().max_policy_body_bytes;
        let Some(kind) = placeholder::body_kind(headers) else {
            return Ok((body, None));
        };
        if is_encoded(headers) || declared_length(headers).is_some_and(|len| len > limit) {
            return Ok((body, None));
        }
        let limit = usize::try_from(limit).unwrap_or(usize::MAX);
        match Limited::new(body, limit).collect().await {
            Ok(collected) => {
                let bytes = collected.to_bytes();
                Ok((Body::from(bytes.clone()), Some((kind, bytes))))
            }
            Err(e) => Err(ProxyError::unreadable_body(e.as_ref(), limit)),
        }
    }

    /// A request with no token, relayed to the allowed destination with the agent's headers
    /// (hop-by-hop ones aside); its response is scrubbed of every secret like any other, and
    /// it ends, as a session does, once the caller's token may no longer be used (`caller`).
    async fn pass_through(
        &self,
        route: &Route,
        request: Request<Body>,
        upgrade: Option<OnUpgrade>,
        caller: TokenWatch,
        seen: &mut Seen,
        pending: &Arc<PendingRecord>,
    ) -> Result<Response, ProxyError> {
        let scrubber = self.keyring.scrubber();
        let outgoing = Outgoing {
            request,
            client: self.upstreams.client(false),
            upstream: &route.dest.host,
            minted: None,
            // The agent's own cookies, for a request that carries no credential.
            hidden: Hidden {
                scrubber: &scrubber,
                members: None,
                cookies: false,
            },
            metering: Metering {
                admission: None,
                llm: false,
                record: pending.clone(),
            },
            upgrade,
            watch: Some(caller),
        };
        self.proxy.send_upstream(outgoing, seen).await
    }

    /// Refuse a request carrying `token` to a host that is not its provider's: the record
    /// names the token (so the operator can revoke it), and the refusal is counted.
    async fn foreign(
        &self,
        token: &str,
        provider: &str,
        route: &Route,
        pending: &PendingRecord,
    ) -> ProxyError {
        // Metric labels come from the provider table only, never from request text.
        let label = if self.providers.get(provider).is_some() {
            provider
        } else {
            "unknown"
        };
        metrics::get().token_to_foreign_host(label);
        if let Ok(parsed) = tokens::parse(token)
            && let Ok(entry) = self.keyring.token(&parsed).await
        {
            pending.update(|r| r.attribute_to(&entry.record));
        }
        tracing::warn!(
            token = %tokens::hint(token),
            destination = %route.dest,
            "a SEKS token was headed to a host that is not its provider's; refused"
        );
        Refusal::ForeignHost {
            provider: label.to_owned(),
            host: route.dest.to_string(),
        }
        .into()
    }
}

/// Whether a body is sent in a content coding the search can't read; `identity` (a
/// body as it is) is none, so naming it doesn't let a body pass unsearched.
fn is_encoded(headers: &http::HeaderMap) -> bool {
    headers
        .get_all(header::CONTENT_ENCODING)
        .iter()
        .flat_map(|v| v.as_bytes().split(|&b| b == b','))
        .any(|coding| {
            let coding = coding.trim_ascii();
            !coding.is_empty() && !coding.eq_ignore_ascii_case(b"identity")
        })
}

/// The Host header and the URI's authority (HTTP/2, absolute form), whichever are present,
/// must name the route's destination, over its scheme.
fn check_host(parts: &Parts, route: &Route) -> Result<(), Refusal> {
    let mismatch = || Refusal::Mismatch(route.dest.to_string());
    let mut hosts = parts.headers.get_all(header::HOST).iter();
    let host = hosts.next();
    if hosts.next().is_some() {
        return Err(mismatch());
    }
    if parts.uri.scheme().is_some_and(|s| *s != route.scheme) {
        return Err(mismatch());
    }
    let names = |text: &str| route.dest.is_named_by(text, &route.scheme);
    let host_ok = host.map(|h| h.to_str().is_ok_and(names));
    let authority_ok = parts.uri.authority().map(|a| names(a.as_str()));
    match (host_ok, authority_ok) {
        (None, None) | (Some(false), _) | (_, Some(false)) => Err(mismatch()),
        _ => Ok(()),
    }
}

/// Where a relayed request goes: the route's destination, this path and query.
struct Upstream<'a> {
    route: &'a Route,
    path: &'a str,
    query: Option<&'a str>,
    /// The request is a WebSocket handshake.
    websocket: bool,
}

impl Upstream<'_> {
    /// The upstream request, with `headers` (Host set to the destination's).
    fn request(
        &self,
        method: http::Method,
        mut headers: http::HeaderMap,
        body: Body,
    ) -> Result<Request<Body>, ProxyError> {
        let bad_path = || ProxyError::BadPath("the path does not form a valid upstream URL");
        let path_and_query = match self.query {
            Some(query) => format!("{}?{query}", self.path),
            None => self.path.to_owned(),
        };
        let authority = self.route.dest.authority(&self.route.scheme);
        let uri = Uri::builder()
            .scheme(self.route.scheme.clone())
            .authority(authority.as_str())
            .path_and_query(PathAndQuery::try_from(path_and_query).map_err(|_| bad_path())?)
            .build()
            .map_err(|_| bad_path())?;
        let host = HeaderValue::from_str(&authority)
            .map_err(|_| ProxyError::Forward(Refusal::BadTarget(self.route.dest.to_string())))?;
        headers.insert(header::HOST, host);
        if self.websocket {
            websocket::prepare_request(&mut headers);
        }
        let mut request = Request::new(body);
        *request.method_mut() = method;
        *request.uri_mut() = uri;
        *request.headers_mut() = headers;
        Ok(request)
    }
}
