//! Turning the agent's request into the upstream request: pin the target, drop the agent's
//! credentials and hop-by-hop headers, inject the real credential.

use std::borrow::Cow;

use axum::body::Body;
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Request, Uri};
use percent_encoding::{AsciiSet, NON_ALPHANUMERIC, percent_decode_str, utf8_percent_encode};
use secrecy::{ExposeSecret, SecretString};

use crate::providers::{AuthScheme, PLACEHOLDER, Provider, TokenSource};

/// Everything but RFC 3986 unreserved characters is encoded in an injected query value
/// (and in a form value sent to an OAuth2 token endpoint).
pub const QUERY_VALUE: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'.')
    .remove(b'_')
    .remove(b'~');

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

/// Find the agent's token where this provider's SDK sends its key (`rest` is the path below
/// `/api/<provider>`, for tokens carried in a path segment).
pub fn find_token<'a>(
    provider: &Provider,
    headers: &'a HeaderMap,
    query: Option<&'a str>,
    rest: &'a str,
) -> Result<Option<Cow<'a, str>>, AmbiguousToken> {
    for source in &provider.token_sources {
        let found = match source {
            TokenSource::Authorization { scheme } => {
                single(headers, "authorization")?.and_then(|value| {
                    let (sent, token) = value.trim().split_once(' ')?;
                    sent.eq_ignore_ascii_case(scheme)
                        .then(|| Cow::Borrowed(token.trim()))
                })
            }
            TokenSource::Header { name } => single(headers, name)?.map(|v| Cow::Borrowed(v.trim())),
            TokenSource::Query { param } => {
                let mut values = query_params(query.unwrap_or("")).filter(|(k, _)| k == param);
                let first = values.next().map(|(_, v)| v);
                if values.next().is_some() {
                    return Err(AmbiguousToken);
                }
                first
            }
            TokenSource::Basic => single(headers, "authorization")?.and_then(basic_user),
            TokenSource::Path { prefix, after } => {
                token_segment(prefix, after, rest).map(|(token, _)| Cow::Borrowed(token))
            }
            // The proxy recomputes a signing agent's token from its signature's key id.
            TokenSource::Sigv4 => None,
        };
        // An empty place (`?key=`) holds no token; a later place may.
        if let Some(token) = found.filter(|t| !t.is_empty()) {
            return Ok(Some(token));
        }
    }
    Ok(None)
}

/// The user name of `Basic base64(user:password)`, where `curl -u TOKEN:` puts a key.
fn basic_user(value: &str) -> Option<Cow<'static, str>> {
    let (scheme, encoded) = value.trim().split_once(' ')?;
    if !scheme.eq_ignore_ascii_case("basic") {
        return None;
    }
    let decoded = BASE64.decode(encoded.trim()).ok()?;
    let text = String::from_utf8(decoded).ok()?;
    let (user, _password) = text.split_once(':')?;
    Some(Cow::Owned(user.to_owned()))
}

/// A request path split around the segment that carried the agent's token, so the real key
/// can take the token's place: `/file/bot<token>/doc.pdf` is lead `/file`, rest `/doc.pdf`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TokenPath<'a> {
    /// The segment before the token's (`/file`); empty when the token's came first.
    pub lead: &'a str,
    /// The path after the token's segment; the whole path when none carried a token.
    pub rest: &'a str,
}

impl<'a> TokenPath<'a> {
    /// A path that carried no token.
    pub fn plain(rest: &'a str) -> Self {
        TokenPath { lead: "", rest }
    }

    /// The path the agent meant, without its token: what policies match and the audit log
    /// records.
    pub fn without_token(&self) -> Cow<'a, str> {
        if self.lead.is_empty() {
            Cow::Borrowed(self.rest)
        } else {
            Cow::Owned(format!("{}{}", self.lead, self.rest))
        }
    }
}

/// `rest` = `/<prefix><token>` + the path after it, or the same under one of the `after`
/// segments (`/file/<prefix><token>/…`): the token and the path around it.
fn token_segment<'a>(
    prefix: &str,
    after: &[String],
    rest: &'a str,
) -> Option<(&'a str, TokenPath<'a>)> {
    let first = |path: &'a str| {
        let body = path.strip_prefix('/')?;
        let (segment, tail) = body.split_at(body.find('/').unwrap_or(body.len()));
        segment
            .strip_prefix(prefix)
            .filter(|token| !token.is_empty())
            .map(|token| (token, tail))
    };
    // A listed segment is never a token itself, so it is tried first (an empty prefix would
    // take any first segment for one).
    let body = rest.strip_prefix('/')?;
    if let Some(end) = body.find('/')
        && after.iter().any(|a| *a == body[..end])
        && let Some((token, tail)) = first(&body[end..])
    {
        let lead = &rest[..=end];
        return Some((token, TokenPath { lead, rest: tail }));
    }
    first(rest).map(|(token, tail)| (token, TokenPath::plain(tail)))
}

/// The path split around the segment that carries the agent's token, if one does.
pub fn strip_token_segment<'a>(provider: &Provider, rest: &'a str) -> TokenPath<'a> {
    provider
        .token_sources
        .iter()
        .find_map(|s| match s {
            TokenSource::Path { prefix, after } => {
                token_segment(prefix, after, rest).map(|(_, path)| path)
            }
            _ => None,
        })
        .unwrap_or(TokenPath::plain(rest))
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
    // The agent's copy of the parameter the broker injects goes too, so the upstream never
    // has two to choose from.
    let is_token_param = |key: &str| {
        provider
            .token_sources
            .iter()
            .any(|s| matches!(s, TokenSource::Query { param } if param == key))
            || matches!(&provider.auth, AuthScheme::Query { param } if param == key)
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

/// The upstream URI could not be formed.
#[derive(Debug, thiserror::Error)]
pub enum UriError {
    /// The agent's path or query does not make a valid URI.
    #[error("the path does not form a valid upstream URL")]
    Path,
    /// The stored credential can't be placed in a path segment safely.
    #[error("the stored credential can't go in a URL path")]
    Credential,
}

/// The upstream URI: the provider's pinned origin and prefix, the validated path with the
/// credential's segment where the agent's token was (first, if the token came elsewhere) for
/// path schemes, the query (plus the credential for query schemes).
pub fn upstream_uri(
    provider: &Provider,
    token_path: &TokenPath<'_>,
    query: Option<&str>,
    credential: &SecretString,
) -> Result<Uri, UriError> {
    let up = &provider.upstream;
    let mut path = up.path_prefix.clone();
    path.push_str(token_path.lead);
    if let AuthScheme::Path { prefix } = &provider.auth {
        // Checked when stored, and again here: the key must stay one plain segment.
        provider
            .auth
            .accepts(credential.expose_secret())
            .map_err(|_| UriError::Credential)?;
        path.push('/');
        path.push_str(prefix);
        path.push_str(credential.expose_secret());
    }
    path.push_str(token_path.rest);
    if path.is_empty() {
        path.push('/');
    }
    let injected = match &provider.auth {
        AuthScheme::Query { param } => Some(format!(
            "{param}={}",
            utf8_percent_encode(credential.expose_secret(), QUERY_VALUE)
        )),
        _ => None,
    };
    let query = [query, injected.as_deref()]
        .into_iter()
        .flatten()
        .collect::<Vec<_>>()
        .join("&");
    if !query.is_empty() {
        path.push('?');
        path.push_str(&query);
    }
    Uri::builder()
        .scheme(up.scheme.clone())
        .authority(up.authority.clone())
        .path_and_query(path)
        .build()
        .map_err(|_| UriError::Path)
}

/// Copy the agent's headers that may go upstream.
pub fn forwardable_headers(provider: &Provider, agent: &HeaderMap) -> HeaderMap {
    copy_headers(agent, |n| {
        CREDENTIAL_HEADERS.contains(&n)
            || provider
                .token_sources
                .iter()
                .any(|s| matches!(s, TokenSource::Header { name: h } if h == n))
            || matches!(&provider.auth, AuthScheme::Header { name: h, .. } if h == n)
    })
}

/// Copy the headers of a request the forward proxy relays: as [`forwardable_headers`], but
/// the agent's credentials stay (a token among them is replaced in place).
pub fn relayed_headers(agent: &HeaderMap) -> HeaderMap {
    copy_headers(agent, |_| false)
}

/// Copy the agent's headers but Host, Expect, hop-by-hop and routing headers, the broker's
/// markers and those `also_drop` names; ask for an uncompressed answer.
fn copy_headers(agent: &HeaderMap, also_drop: impl Fn(&str) -> bool) -> HeaderMap {
    let named_in_connection = connection_tokens(agent);
    let mut out = HeaderMap::with_capacity(agent.len() + 2);
    for (name, value) in agent {
        let n = name.as_str();
        let drop = name == header::HOST
            || name == header::EXPECT
            || HOP_BY_HOP.contains(&n)
            || ROUTING_OVERRIDES.contains(&n)
            || DROPPED_PREFIXES.iter().any(|p| n.starts_with(p))
            || named_in_connection.iter().any(|c| c == n)
            || also_drop(n);
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
    // One pass over the few names a response has, rather than a lookup per listed name:
    // this runs on every response.
    let named_in_connection = connection_tokens(headers);
    let dropped: Vec<_> = headers
        .keys()
        .filter(|k| {
            let n = k.as_str();
            HOP_BY_HOP.contains(&n)
                || n.starts_with("x-seks-")
                || named_in_connection.iter().any(|c| c == n)
        })
        .cloned()
        .collect();
    for name in dropped {
        headers.remove(name);
    }
}

/// The lowercase header names a request's `Connection` headers list: hop-by-hop, never forwarded.
pub fn connection_tokens(headers: &HeaderMap) -> Vec<String> {
    headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(|t| t.trim().to_ascii_lowercase())
        .filter(|t| !t.is_empty())
        .collect()
}

/// The credential (or the upstream's host) can't be sent as a header value.
#[derive(Debug, thiserror::Error)]
#[error("the credential can't be sent as an HTTP header")]
pub struct InjectError;

/// Set the Host, and the real credential for header, Basic and OAuth2 schemes (for OAuth2
/// the minted access token; path and query schemes put it in the URI: see [`upstream_uri`];
/// SigV4 signs the finished request).
pub fn inject(
    provider: &Provider,
    request: &mut Request<Body>,
    credential: &SecretString,
) -> Result<(), InjectError> {
    let host =
        HeaderValue::from_str(provider.upstream.authority.as_str()).map_err(|_| InjectError)?;
    request.headers_mut().insert(header::HOST, host);
    let key = credential.expose_secret();
    let (name, text) = match &provider.auth {
        AuthScheme::Header { name, template } => (
            HeaderName::from_bytes(name.as_bytes()).map_err(|_| InjectError)?,
            template.replacen(PLACEHOLDER, key, 1),
        ),
        AuthScheme::Basic { user, password } => {
            let pair = format!(
                "{}:{}",
                user.replacen(PLACEHOLDER, key, 1),
                password.replacen(PLACEHOLDER, key, 1)
            );
            (
                header::AUTHORIZATION,
                format!("Basic {}", BASE64.encode(pair)),
            )
        }
        AuthScheme::Oauth2(_) => (header::AUTHORIZATION, format!("Bearer {key}")),
        // Signed after everything else is set: see `proxy::resign`.
        AuthScheme::Query { .. } | AuthScheme::Path { .. } | AuthScheme::Sigv4 { .. } => {
            return Ok(());
        }
    };
    let mut value = HeaderValue::from_str(&text).map_err(|_| InjectError)?;
    value.set_sensitive(true);
    request.headers_mut().insert(name, value);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::providers::Providers;
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
        find_token(&provider(name), &headers(h), query, "/v1/x")
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
    fn an_empty_place_holds_no_token_and_the_next_place_is_looked_at() {
        let config: BTreeMap<String, crate::providers::ProviderSpec> = toml::from_str(
            r#"[acme]
            base_url = "https://api.acme.example"
            token_in = [{ in = "query", param = "key" }, { in = "header", name = "x-api-key" }]
            auth = { scheme = "header", name = "x-api-key" }"#,
        )
        .unwrap();
        let acme = Providers::load(&config)
            .unwrap()
            .get("acme")
            .unwrap()
            .clone();
        let sent = headers(&[("x-api-key", "seks_acme_h")]);
        let token = find_token(&acme, &sent, Some("key="), "/").unwrap();
        assert_eq!(token.as_deref(), Some("seks_acme_h"));
        let blank = headers(&[("x-api-key", " ")]);
        assert_eq!(find_token(&acme, &blank, Some("key="), "/").unwrap(), None);
    }

    #[test]
    fn a_repeated_token_is_ambiguous() {
        let twice = headers(&[("authorization", "Bearer a"), ("authorization", "Bearer b")]);
        assert!(find_token(&provider("openai"), &twice, None, "").is_err());
        assert!(
            find_token(
                &provider("gemini"),
                &HeaderMap::new(),
                Some("key=a&key=b"),
                ""
            )
            .is_err()
        );
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
        let key = SecretString::from("sk-real");
        let uri = upstream_uri(
            &groq,
            &TokenPath::plain("/v1/chat/completions"),
            Some("a=1"),
            &key,
        )
        .unwrap();
        assert_eq!(
            uri.to_string(),
            "https://api.groq.com/openai/v1/chat/completions?a=1"
        );
        assert_eq!(
            upstream_uri(&provider("openai"), &TokenPath::plain(""), None, &key)
                .unwrap()
                .to_string(),
            "https://api.openai.com/"
        );
    }

    fn custom(auth: &str, token_in: &str) -> Provider {
        let text = format!(
            "[acme]\nbase_url = \"https://acme.example/p\"\nauth = {auth}\ntoken_in = {token_in}\n"
        );
        let config: BTreeMap<String, crate::providers::ProviderSpec> =
            toml::from_str(&text).unwrap();
        Providers::load(&config)
            .unwrap()
            .get("acme")
            .unwrap()
            .as_ref()
            .clone()
    }

    fn without_token(provider: &Provider, rest: &str) -> String {
        strip_token_segment(provider, rest)
            .without_token()
            .into_owned()
    }

    #[test]
    fn path_tokens_are_the_first_segment_only_and_are_replaced_by_the_real_key() {
        let telegram = provider("telegram");
        let h = HeaderMap::new();
        let rest = "/botseks_telegram_abc/sendMessage";
        assert_eq!(
            find_token(&telegram, &h, None, rest).unwrap().as_deref(),
            Some("seks_telegram_abc")
        );
        assert_eq!(without_token(&telegram, rest), "/sendMessage");
        assert_eq!(without_token(&telegram, "/botX"), "");
        for no_token in [
            "/sendMessage",
            "/bot",
            "/bot/x",
            "",
            "/x/botX/y",
            "/sendMessage/botX",
        ] {
            assert_eq!(find_token(&telegram, &h, None, no_token).unwrap(), None);
            assert_eq!(without_token(&telegram, no_token), no_token);
        }
        let key = SecretString::from("123456:ABC-def");
        let split = strip_token_segment(&telegram, rest);
        assert_eq!(
            upstream_uri(&telegram, &split, Some("a=1"), &key)
                .unwrap()
                .to_string(),
            "https://api.telegram.org/bot123456:ABC-def/sendMessage?a=1"
        );
        for bad in ["12/../x", "a?b", "..", "a%2fb"] {
            assert!(matches!(
                upstream_uri(&telegram, &split, None, &SecretString::from(bad)),
                Err(UriError::Credential)
            ));
        }
    }

    #[test]
    fn file_downloads_carry_the_token_after_file_and_get_the_key_there() {
        let telegram = provider("telegram");
        let h = HeaderMap::new();
        let rest = "/file/botseks_telegram_abc/documents/file_1.pdf";
        assert_eq!(
            find_token(&telegram, &h, None, rest).unwrap().as_deref(),
            Some("seks_telegram_abc")
        );
        let split = strip_token_segment(&telegram, rest);
        assert_eq!(
            split,
            TokenPath {
                lead: "/file",
                rest: "/documents/file_1.pdf"
            }
        );
        assert_eq!(split.without_token(), "/file/documents/file_1.pdf");
        let key = SecretString::from("123456:ABC-def");
        assert_eq!(
            upstream_uri(&telegram, &split, None, &key)
                .unwrap()
                .to_string(),
            "https://api.telegram.org/file/bot123456:ABC-def/documents/file_1.pdf"
        );
        // Only directly under a listed segment, and a method named like one stays a method.
        for no_token in [
            "/file",
            "/file/bot",
            "/file/x/botX/y",
            "/files/botX/y",
            "/file/",
        ] {
            assert_eq!(find_token(&telegram, &h, None, no_token).unwrap(), None);
            assert_eq!(without_token(&telegram, no_token), no_token);
        }
        assert_eq!(
            strip_token_segment(&telegram, "/botX/file/y"),
            TokenPath::plain("/file/y")
        );
        // With an empty prefix a listed segment is still not taken for the token.
        let bare = custom(
            r#"{ scheme = "path", prefix = "" }"#,
            r#"[{ in = "path", prefix = "", after = ["dl"] }]"#,
        );
        assert_eq!(
            find_token(&bare, &h, None, "/dl/seks_acme_x/f")
                .unwrap()
                .as_deref(),
            Some("seks_acme_x")
        );
        assert_eq!(
            find_token(&bare, &h, None, "/seks_acme_x/f")
                .unwrap()
                .as_deref(),
            Some("seks_acme_x")
        );
        assert_eq!(
            token_locations(&telegram),
            "path /bot<token>/… or /file/bot<token>/…"
        );
    }

    #[test]
    fn query_schemes_replace_the_agents_parameter_with_the_encoded_key() {
        let acme = custom(
            r#"{ scheme = "query", param = "api_key" }"#,
            r#"[{ in = "query", param = "token" }]"#,
        );
        let kept = strip_token_params(&acme, Some("token=seks_x&api_key=forged&q=1"));
        assert_eq!(kept.as_deref(), Some("q=1"));
        let uri = upstream_uri(
            &acme,
            &TokenPath::plain("/v1/s"),
            kept.as_deref(),
            &SecretString::from("k+y/z"),
        )
        .unwrap();
        assert_eq!(
            uri.to_string(),
            "https://acme.example/p/v1/s?q=1&api_key=k%2By%2Fz"
        );
    }

    #[test]
    fn basic_tokens_and_basic_injection() {
        let stripe = provider("stripe");
        let sent = format!("Basic {}", BASE64.encode("seks_stripe_t:"));
        assert_eq!(
            find_token(&stripe, &headers(&[("authorization", &sent)]), None, "")
                .unwrap()
                .as_deref(),
            Some("seks_stripe_t")
        );
        let acme = custom(
            r#"{ scheme = "basic", user = "api", password = "{}" }"#,
            r#"[{ in = "header", name = "X-Api-Key" }]"#,
        );
        let mut req = Request::new(Body::empty());
        inject(&acme, &mut req, &SecretString::from("key-123")).unwrap();
        assert_eq!(
            req.headers()[header::AUTHORIZATION],
            format!("Basic {}", BASE64.encode("api:key-123")).as_str()
        );
        let linear = provider("linear");
        for (sent, token) in [
            ("seks_linear_a", "seks_linear_a"),
            ("Bearer seks_linear_b", "seks_linear_b"),
        ] {
            assert_eq!(
                find_token(&linear, &headers(&[("authorization", sent)]), None, "")
                    .unwrap()
                    .as_deref(),
                Some(token)
            );
        }
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
