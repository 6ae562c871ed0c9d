//! Turning the agent's request into the upstream request: pin the target, drop the agent's
//! credentials and hop-by-hop headers, inject the real credential.

use std::borrow::Cow;

use axum::body::Body;
use http::header::{self, HeaderMap, HeaderValue};
use http::{Request, Uri};
use percent_encoding::percent_decode_str;
use secrecy::{ExposeSecret, SecretString};

use crate::providers::{AuthScheme, Provider, TokenSource};

/// Headers that only describe one hop and must not be forwarded (RFC 9110 §7.6.1).
const HOP_BY_HOP: &[&str] = &[
    "connection",
    "keep-alive",
    "proxy-connection",
    "proxy-authenticate",
    "proxy-authorization",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
];

/// Headers some servers and frameworks obey to re-route or re-method a request; forwarding
/// them would let an agent steer around the broker's path and method checks.
const ROUTING_OVERRIDES: &[&str] = &[
    "forwarded",
    "x-original-url",
    "x-rewrite-url",
    "x-original-uri",
    "x-http-method-override",
    "x-http-method",
    "x-method-override",
    "x-real-ip",
    "x-client-ip",
    "true-client-ip",
];

/// Prefixes of header families dropped in both directions: proxy metadata, and the broker's
/// own markers (an agent must not forge them upstream, an upstream must not forge them back).
const DROPPED_PREFIXES: &[&str] = &["x-forwarded-", "x-seks-"];

/// Headers in which clients put credentials; the agent's copies never go upstream.
const CREDENTIAL_HEADERS: &[&str] = &[
    "authorization",
    "cookie",
    "x-api-key",
    "api-key",
    "x-goog-api-key",
];

/// The agent sent its token more than once, so which one counts would be a guess.
#[derive(Debug)]
pub struct AmbiguousToken;

/// Find the agent's token where this provider's SDK sends its key.
pub fn find_token<'a>(
    provider: &Provider,
    headers: &'a HeaderMap,
    query: Option<&'a str>,
) -> Result<Option<Cow<'a, str>>, AmbiguousToken> {
    for source in &provider.token_sources {
        let found = match source {
            TokenSource::Authorization(schemes) => {
                single(headers, "authorization")?.and_then(|value| {
                    let (scheme, token) = value.trim().split_once(' ')?;
                    let scheme = scheme.to_ascii_lowercase();
                    schemes
                        .contains(&scheme.as_str())
                        .then(|| Cow::Borrowed(token.trim()))
                })
            }
            TokenSource::Header(name) => single(headers, name)?.map(|v| Cow::Borrowed(v.trim())),
            TokenSource::Query(param) => {
                let mut values = query_params(query.unwrap_or("")).filter(|(k, _)| k == param);
                let first = values.next().map(|(_, v)| v);
                if values.next().is_some() {
                    return Err(AmbiguousToken);
                }
                first
            }
        };
        if found.is_some() {
            return Ok(found);
        }
    }
    Ok(None)
}

/// The value of a header that must not be repeated; non-text values count as absent.
fn single<'a>(headers: &'a HeaderMap, name: &str) -> Result<Option<&'a str>, AmbiguousToken> {
    let mut values = headers.get_all(name).iter();
    let first = values.next();
    if values.next().is_some() {
        return Err(AmbiguousToken);
    }
    Ok(first.and_then(|v| v.to_str().ok()))
}

/// Human description of where a provider expects the token, for the "missing token" error.
pub fn token_locations(provider: &Provider) -> String {
    provider
        .token_sources
        .iter()
        .map(TokenSource::describe)
        .collect::<Vec<_>>()
        .join(" or ")
}

/// The query string without any parameter that carries a credential for this provider.
pub fn strip_token_params<'a>(provider: &Provider, query: Option<&'a str>) -> Option<Cow<'a, str>> {
    let query = query?;
    let is_token_param = |key: &str| {
        provider
            .token_sources
            .iter()
            .any(|s| matches!(s, TokenSource::Query(p) if *p == key))
    };
    let kept: Vec<&str> = query
        .split('&')
        .filter(|pair| {
            let key = pair.split('=').next().unwrap_or("");
            !is_token_param(&percent_decode_str(key).decode_utf8_lossy())
        })
        .collect();
    if kept.len() == query.split('&').count() {
        Some(Cow::Borrowed(query))
    } else if kept.is_empty() {
        None
    } else {
        Some(Cow::Owned(kept.join("&")))
    }
}

fn query_params(query: &str) -> impl Iterator<Item = (Cow<'_, str>, Cow<'_, str>)> {
    query.split('&').filter_map(|pair| {
        let (k, v) = pair.split_once('=')?;
        Some((
            percent_decode_str(k).decode_utf8_lossy(),
            percent_decode_str(v).decode_utf8_lossy(),
        ))
    })
}

/// The upstream URI: the provider's pinned origin and prefix, the validated path, the query.
pub fn upstream_uri(
    provider: &Provider,
    rest: &str,
    query: Option<&str>,
) -> Result<Uri, http::Error> {
    let up = &provider.upstream;
    let mut path = format!("{}{}", up.path_prefix, rest);
    if path.is_empty() {
        path.push('/');
    }
    if let Some(q) = query {
        path.push('?');
        path.push_str(q);
    }
    Uri::builder()
        .scheme(up.scheme.clone())
        .authority(up.authority.clone())
        .path_and_query(path)
        .build()
}

/// Copy the agent's headers that may go upstream.
pub fn forwardable_headers(provider: &Provider, agent: &HeaderMap) -> HeaderMap {
    let named_in_connection = connection_tokens(agent);
    let mut out = HeaderMap::with_capacity(agent.len() + 2);
    for (name, value) in agent {
        let n = name.as_str();
        let drop = name == header::HOST
            || name == header::EXPECT
            || HOP_BY_HOP.contains(&n)
            || CREDENTIAL_HEADERS.contains(&n)
            || ROUTING_OVERRIDES.contains(&n)
            || DROPPED_PREFIXES.iter().any(|p| n.starts_with(p))
            || named_in_connection.iter().any(|c| c == n)
            || provider
                .token_sources
                .iter()
                .any(|s| matches!(s, TokenSource::Header(h) if *h == n))
            || matches!(&provider.auth, AuthScheme::Header { name: h, .. } if *h == n);
        if !drop {
            out.append(name.clone(), value.clone());
        }
    }
    // Uncompressed answers can be scrubbed as they stream; compressed ones are decoded anyway.
    out.insert(
        header::ACCEPT_ENCODING,
        HeaderValue::from_static("identity"),
    );
    out
}

/// Remove hop-by-hop headers and forged broker markers from an upstream response.
pub fn clean_response_headers(headers: &mut HeaderMap) {
    for name in connection_tokens(headers) {
        headers.remove(name.as_str());
    }
    for name in HOP_BY_HOP {
        headers.remove(*name);
    }
    let forged: Vec<_> = headers
        .keys()
        .filter(|k| k.as_str().starts_with("x-seks-"))
        .cloned()
        .collect();
    for name in forged {
        headers.remove(name);
    }
}

fn connection_tokens(headers: &HeaderMap) -> Vec<String> {
    headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(|t| t.trim().to_ascii_lowercase())
        .filter(|t| !t.is_empty())
        .collect()
}

/// Set the Host and the real credential on an upstream request.
pub fn inject(
    provider: &Provider,
    request: &mut Request<Body>,
    credential: &SecretString,
) -> Result<(), http::header::InvalidHeaderValue> {
    let host = HeaderValue::from_str(provider.upstream.authority.as_str())?;
    request.headers_mut().insert(header::HOST, host);
    match &provider.auth {
        AuthScheme::Header { name, prefix } => {
            let mut value =
                HeaderValue::from_str(&format!("{prefix}{}", credential.expose_secret()))?;
            value.set_sensitive(true);
            request.headers_mut().insert(*name, value);
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::providers::Providers;
    use http::HeaderName;
    use std::collections::BTreeMap;

    fn provider(name: &str) -> std::sync::Arc<Provider> {
        Providers::load(&BTreeMap::new())
            .unwrap()
            .get(name)
            .unwrap()
            .clone()
    }

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(
                HeaderName::from_bytes(k.as_bytes()).unwrap(),
                HeaderValue::from_str(v).unwrap(),
            );
        }
        h
    }

    fn found(name: &str, h: &[(&str, &str)], query: Option<&str>) -> Option<String> {
        find_token(&provider(name), &headers(h), query)
            .unwrap()
            .map(Cow::into_owned)
    }

    #[test]
    fn tokens_are_found_where_each_sdk_sends_them() {
        let t = |v: &str| Some(v.to_owned());
        let bearer = |v: &'static str| [("authorization", v)];
        assert_eq!(
            found("openai", &bearer("Bearer seks_openai_x"), None),
            t("seks_openai_x")
        );
        assert_eq!(
            found("openai", &bearer("bearer  seks_openai_x "), None),
            t("seks_openai_x")
        );
        assert_eq!(
            found("github", &bearer("token seks_github_x"), None),
            t("seks_github_x")
        );
        assert_eq!(found("openai", &bearer("token seks_openai_x"), None), None);
        assert_eq!(found("openai", &bearer("Basic abc"), None), None);
        let both = [
            ("x-api-key", "seks_anthropic_a"),
            ("authorization", "Bearer b"),
        ];
        assert_eq!(found("anthropic", &both, None), t("seks_anthropic_a"));
        assert_eq!(
            found("anthropic", &bearer("Bearer seks_anthropic_b"), None),
            t("seks_anthropic_b")
        );
        assert_eq!(
            found("gemini", &[], Some("alt=sse&key=seks_gemini_q")),
            t("seks_gemini_q")
        );
        assert_eq!(
            found("gemini", &[("x-goog-api-key", "seks_gemini_h")], None),
            t("seks_gemini_h")
        );
    }

    #[test]
    fn a_repeated_token_is_ambiguous() {
        let twice = headers(&[("authorization", "Bearer a"), ("authorization", "Bearer b")]);
        assert!(find_token(&provider("openai"), &twice, None).is_err());
        assert!(find_token(&provider("gemini"), &HeaderMap::new(), Some("key=a&key=b")).is_err());
        assert_eq!(
            token_locations(&provider("github")),
            "Authorization: Bearer <token> or Authorization: Token <token>"
        );
    }

    #[test]
    fn token_query_parameters_are_removed() {
        let gemini = provider("gemini");
        assert_eq!(
            strip_token_params(&gemini, Some("alt=sse&key=seks_gemini_q")).as_deref(),
            Some("alt=sse")
        );
        assert_eq!(strip_token_params(&gemini, Some("%6bey=x")), None);
        assert_eq!(
            strip_token_params(&gemini, Some("keys=1")).as_deref(),
            Some("keys=1")
        );
        assert_eq!(
            strip_token_params(&provider("openai"), Some("key=1")).as_deref(),
            Some("key=1")
        );
    }

    #[test]
    fn agent_credentials_and_hop_by_hop_headers_never_go_upstream() {
        let agent = headers(&[
            ("authorization", "Bearer seks_openai_x"),
            ("x-api-key", "seks_x"),
            ("cookie", "session=1"),
            ("host", "evil.example"),
            ("connection", "keep-alive, x-private"),
            ("x-private", "1"),
            ("proxy-authorization", "Basic abc"),
            ("transfer-encoding", "chunked"),
            ("content-type", "application/json"),
            ("anthropic-version", "2023-06-01"),
            ("x-original-url", "/admin"),
            ("x-http-method-override", "DELETE"),
            ("x-forwarded-host", "evil.example"),
            ("forwarded", "host=evil.example"),
            ("x-seks-error", "forged"),
        ]);
        let out = forwardable_headers(&provider("anthropic"), &agent);
        let names: Vec<&str> = out.keys().map(|k| k.as_str()).collect();
        assert_eq!(
            names,
            ["content-type", "anthropic-version", "accept-encoding"]
        );
        assert_eq!(out["accept-encoding"], "identity");
    }

    #[test]
    fn upstream_responses_cannot_forge_broker_markers() {
        let mut h = headers(&[
            ("x-seks-error", "spoofed"),
            ("connection", "close"),
            ("content-type", "text/plain"),
        ]);
        clean_response_headers(&mut h);
        let names: Vec<&str> = h.keys().map(|k| k.as_str()).collect();
        assert_eq!(names, ["content-type"]);
    }

    #[test]
    fn uri_keeps_the_base_prefix_and_pins_the_origin() {
        let groq = provider("groq");
        let uri = upstream_uri(&groq, "/v1/chat/completions", Some("a=1")).unwrap();
        assert_eq!(
            uri.to_string(),
            "https://api.groq.com/openai/v1/chat/completions?a=1"
        );
        assert_eq!(
            upstream_uri(&provider("openai"), "", None)
                .unwrap()
                .to_string(),
            "https://api.openai.com/"
        );
    }

    #[test]
    fn injected_credentials_are_marked_sensitive() {
        let mut req = Request::new(Body::empty());
        inject(
            &provider("openai"),
            &mut req,
            &SecretString::from("sk-real"),
        )
        .unwrap();
        let auth = req.headers().get(header::AUTHORIZATION).unwrap();
        assert!(auth.is_sensitive());
        assert_eq!(auth.to_str().unwrap(), "Bearer sk-real");
        assert_eq!(req.headers().get(header::HOST).unwrap(), "api.openai.com");
        assert!(
            inject(
                &provider("openai"),
                &mut req,
                &SecretString::from("bad\nvalue")
            )
            .is_err()
        );
    }
}
