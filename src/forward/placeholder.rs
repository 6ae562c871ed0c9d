//! Agent tokens as placeholders: where tools put credentials (an `Authorization` or API-key
//! header, or the header the token's provider takes its key in; Basic credentials; a query
//! parameter or path segment only where that provider takes its key, such as Gemini's `?key=`
//! or Telegram's `/bot<token>`; for
//! providers that take one there, a top-level key or token field of a form or JSON body), an
//! agent's `seks_` token is found and replaced by the real credential in the same place, when
//! the request may carry it.
//!
//! Finding is broader than replacing: a token counts wherever it is, percent-encoded too, so
//! a token headed to the wrong host is refused however it is spelled. A copy anywhere else
//! (a `User-Agent`, a `description=` parameter, a webhook's `token=`, a file name, a nested
//! field, an encoded copy) is never replaced: the provider could store it where others read
//! it, or hand it to a URL of the agent's choosing, so such a request is refused instead.

use std::borrow::Cow;

use base64::Engine as _;
use base64::alphabet;
use base64::engine::DecodePaddingMode;
use base64::engine::general_purpose::{GeneralPurpose, GeneralPurposeConfig, STANDARD as BASE64};
use http::header::{HeaderMap, HeaderValue};
use percent_encoding::{
    AsciiSet, NON_ALPHANUMERIC, percent_decode, percent_decode_str, utf8_percent_encode,
};

use crate::providers::{Providers, TokenSource};
use crate::proxy::rewrite::QUERY_VALUE;
use crate::tokens::{self, TOKEN_PREFIX};

/// A credential put in a path segment keeps only unreserved characters and `:`, so it can't
/// add a segment, a query or a fragment (Telegram's `123:ABC` stays as it is).
const PATH_VALUE: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'.')
    .remove(b'_')
    .remove(b'~')
    .remove(b':');
/// Basic credentials as lenient servers read them: padding optional, and in the URL-safe
/// alphabet too, so a token can't hide from the search by leaving the padding off.
const LENIENT_BASE64: [GeneralPurpose; 2] = [
    GeneralPurpose::new(
        &alphabet::STANDARD,
        GeneralPurposeConfig::new().with_decode_padding_mode(DecodePaddingMode::Indifferent),
    ),
    GeneralPurpose::new(
        &alphabet::URL_SAFE,
        GeneralPurposeConfig::new().with_decode_padding_mode(DecodePaddingMode::Indifferent),
    ),
];
/// Words that make a header or body field name one that carries credentials
/// (`x-api-key`, `private-token`, `client_secret`), matched whole so that `author` or
/// `keyboard` don't count.
const CREDENTIAL_WORDS: [&str; 9] = [
    "authorization",
    "auth",
    "key",
    "apikey",
    "token",
    "secret",
    "password",
    "credential",
    "cookie",
];

/// A token found in a request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Found {
    /// The token's text (its checksum is valid).
    pub token: String,
    /// Every copy is as it is, where credentials go, so each can be replaced in place.
    pub replaceable: bool,
    /// A copy is in the body (replaceable there only for providers that take credentials
    /// in the body).
    pub in_body: bool,
}

/// Every well-formed token in `text`: where it starts, and its text.
fn tokens_in(text: &[u8]) -> impl Iterator<Item = (usize, &str)> {
    memchr::memmem::find_iter(text, TOKEN_PREFIX.as_bytes()).filter_map(move |at| {
        let rest = &text[at + TOKEN_PREFIX.len()..];
        let provider = rest
            .iter()
            .take_while(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || **b == b'-')
            .count();
        if rest.get(provider) != Some(&b'_') {
            return None;
        }
        let body = rest[provider + 1..]
            .iter()
            .take_while(|b| b.is_ascii_alphanumeric())
            .count();
        // A token followed by more letters is still that token: trailing junk must not hide it.
        let len = TOKEN_PREFIX.len() + provider + 1 + body.min(tokens::TOKEN_BODY_LEN);
        let candidate = std::str::from_utf8(&text[at..at + len]).ok()?;
        tokens::parse(candidate).ok().map(|_| (at, candidate))
    })
}

/// Whether a header or body field with this name carries a credential.
fn is_credential_name(name: &str) -> bool {
    // `accessToken` is the words `access` and `Token`.
    let mut words = String::with_capacity(name.len() + 4);
    let mut after_lowercase = false;
    for c in name.chars() {
        if c.is_ascii_uppercase() && after_lowercase {
            words.push('-');
        }
        after_lowercase = c.is_ascii_lowercase();
        words.push(c);
    }
    words.split(['-', '_', '.']).any(|word| {
        CREDENTIAL_WORDS
            .iter()
            .any(|w| word.eq_ignore_ascii_case(w))
    })
}

/// The token sources of the provider a token is for (none if it is unknown).
fn sources<'p>(providers: &'p Providers, token: &str) -> &'p [TokenSource] {
    tokens::parse(token)
        .ok()
        .and_then(|t| providers.get(t.provider()))
        .map_or(&[], |p| p.token_sources.as_slice())
}

/// The decoded `user:password` of a `Basic` header value.
fn basic_pair(value: &[u8]) -> Option<Vec<u8>> {
    let text = std::str::from_utf8(value).ok()?.trim();
    let (scheme, encoded) = text.split_once(' ')?;
    if !scheme.eq_ignore_ascii_case("basic") {
        return None;
    }
    LENIENT_BASE64
        .iter()
        .find_map(|engine| engine.decode(encoded.trim()).ok())
}

/// The tokens found so far, and whether each copy could be replaced.
#[derive(Default)]
struct Finds(Vec<Found>);

impl Finds {
    fn note(&mut self, token: &str, replaceable: bool) {
        match self.0.iter_mut().find(|f| f.token == token) {
            Some(seen) => seen.replaceable &= replaceable,
            None => self.0.push(Found {
                token: token.to_owned(),
                replaceable,
                in_body: false,
            }),
        }
    }

    /// Note the tokens of a URL part, or a header value, that only a percent-decoded view
    /// shows: copies that can't be replaced. Bytes, not text: a header value with a byte
    /// that isn't UTF-8 is still decoded by the server it goes to.
    fn note_encoded(&mut self, text: &[u8]) {
        if !text.contains(&b'%') {
            return;
        }
        let decoded = percent_decode(text).collect::<Vec<u8>>();
        self.note_extra(&decoded, text);
    }

    /// Note the tokens `more` has more copies of than `than`: copies one reading of a
    /// request part shows and another doesn't, which can't be replaced.
    fn note_extra(&mut self, more: &[u8], than: &[u8]) {
        let count = |text: &[u8], token: &str| tokens_in(text).filter(|(_, t)| *t == token).count();
        for (_, token) in tokens_in(more) {
            if count(more, token) > count(than, token) {
                self.note(token, false);
            }
        }
    }
}

/// Whether the token at `at..end` of `path` fills a segment where its provider takes the
/// key (`/bot<token>`).
fn is_path_credential(path: &str, at: usize, end: usize, sources: &[TokenSource]) -> bool {
    let segment_start = path[..at].rfind('/').map_or(0, |i| i + 1);
    let prefix = &path[segment_start..at];
    matches!(path.as_bytes().get(end), None | Some(b'/'))
        && sources
            .iter()
            .any(|s| matches!(s, TokenSource::Path { prefix: p, .. } if p == prefix))
}

/// Whether a header with this name is where the provider takes its key (a custom provider's
/// `X-Acme-Sig`, whose name has no credential word in it).
fn is_header_credential(name: &http::header::HeaderName, sources: &[TokenSource]) -> bool {
    sources
        .iter()
        .any(|s| matches!(s, TokenSource::Header { name: n } if n == name.as_str()))
}

/// Whether a query parameter with this (decoded) name is where the provider takes its key.
fn is_query_credential(key: &str, sources: &[TokenSource]) -> bool {
    sources
        .iter()
        .any(|s| matches!(s, TokenSource::Query { param } if param == key))
}

/// Every token in what would go upstream: headers (as they are, inside Basic credentials,
/// percent-decoded), path and query (as they are and percent-decoded). Path and query
/// copies are replaceable only where the token's provider (in `providers`) takes its key.
pub fn find(
    headers: &HeaderMap,
    path: &str,
    query: Option<&str>,
    providers: &Providers,
) -> Vec<Found> {
    let mut finds = Finds::default();
    for (name, value) in headers {
        let bytes = value.as_bytes();
        let named = is_credential_name(name.as_str());
        let credential =
            |token: &str| named || is_header_credential(name, sources(providers, token));
        for (_, token) in tokens_in(bytes) {
            finds.note(token, credential(token));
        }
        if let Some(pair) = basic_pair(bytes) {
            for (_, token) in tokens_in(&pair) {
                finds.note(token, credential(token));
            }
        }
        finds.note_encoded(bytes);
    }
    for (at, token) in tokens_in(path.as_bytes()) {
        let slot = is_path_credential(path, at, at + token.len(), sources(providers, token));
        finds.note(token, slot);
    }
    finds.note_encoded(path.as_bytes());
    if let Some(query) = query {
        for pair in query.split('&') {
            let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
            let key = percent_decode_str(key).decode_utf8_lossy();
            for (at, token) in tokens_in(pair.as_bytes()) {
                let whole_value = value == token && at == pair.len() - token.len();
                finds.note(
                    token,
                    whole_value && is_query_credential(&key, sources(providers, token)),
                );
            }
        }
        finds.note_encoded(query.as_bytes());
    }
    finds.0
}

/// How a request body is searched for tokens, by its content type.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BodyKind {
    /// `application/json` and `…+json`: string values of top-level key or token fields are
    /// replaceable.
    Json,
    /// `application/x-www-form-urlencoded`: values of key or token fields are replaceable.
    Form,
    /// Any `text/*`: searched, never replaced.
    Text,
}

/// How a body with these headers is searched; `None`: it isn't (binary, multipart).
pub fn body_kind(headers: &HeaderMap) -> Option<BodyKind> {
    let content_type = headers
        .get(http::header::CONTENT_TYPE)?
        .to_str()
        .ok()?
        .split(';')
        .next()?
        .trim()
        .to_ascii_lowercase();
    if content_type == "application/json" || content_type.ends_with("+json") {
        Some(BodyKind::Json)
    } else if content_type == "application/x-www-form-urlencoded" {
        Some(BodyKind::Form)
    } else if content_type.starts_with("text/") {
        Some(BodyKind::Text)
    } else {
        None
    }
}

/// A form body's fields, decoded (`+` is a space).
fn form_fields(body: &str) -> impl Iterator<Item = (&str, String, String)> {
    body.split('&').map(|pair| {
        let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
        let decode = |text: &str| {
            percent_decode_str(&text.replace('+', " "))
                .decode_utf8_lossy()
                .into_owned()
        };
        (pair, decode(key), decode(value))
    })
}

/// Every token in a body of `kind`: replaceable where it is the whole value of a top-level
/// field named like a credential (`"token": "<token>"`, `api_key=<token>`).
pub fn find_in_body(kind: BodyKind, body: &[u8]) -> Vec<Found> {
    let mut finds = Finds::default();
    let parsed = match kind {
        BodyKind::Json => serde_json::from_slice::<serde_json::Value>(body)
            .ok()
            .map(|json| {
                json_tokens(&json, None, true, &mut finds);
                // A repeated key keeps one value; the upstream's parser may keep another, so a
                // copy the parsed view dropped still counts.
                let kept = serde_json::to_vec(&json).unwrap_or_default();
                finds.note_extra(body, &kept);
            }),
        BodyKind::Form => {
            // Bytes that aren't UTF-8 don't stop a server decoding the fields around them;
            // only an exact body can have a credential put in it.
            let text = String::from_utf8_lossy(body);
            let exact = matches!(text, Cow::Borrowed(_));
            for (_, key, value) in form_fields(&text) {
                for (_, token) in tokens_in(key.as_bytes()) {
                    finds.note(token, false);
                }
                for (_, token) in tokens_in(value.as_bytes()) {
                    finds.note(token, exact && value == token && is_credential_name(&key));
                }
            }
            Some(())
        }
        BodyKind::Text => None,
    };
    // Whatever can't be read as its type is only searched.
    if parsed.is_none() {
        for (_, token) in tokens_in(body) {
            finds.note(token, false);
        }
    }
    let mut found = finds.0;
    for f in &mut found {
        f.in_body = true;
    }
    found
}

/// Tokens in a JSON value: replaceable only as the whole string of a credential-named field
/// of the top-level object (`key`, when `top` says the value is one).
fn json_tokens(value: &serde_json::Value, key: Option<&str>, top: bool, finds: &mut Finds) {
    use serde_json::Value;
    match value {
        Value::String(text) => {
            for (_, token) in tokens_in(text.as_bytes()) {
                let slot = top && text == token && key.is_some_and(is_credential_name);
                finds.note(token, slot);
            }
        }
        Value::Array(items) => items
            .iter()
            .for_each(|v| json_tokens(v, None, false, finds)),
        Value::Object(fields) => {
            for (name, v) in fields {
                for (_, token) in tokens_in(name.as_bytes()) {
                    finds.note(token, false);
                }
                json_tokens(v, Some(name), top && key.is_none(), finds);
            }
        }
        _ => {}
    }
}

/// Merge tokens found in the body into those found elsewhere.
pub fn merge(found: &mut Vec<Found>, in_body: Vec<Found>) {
    for f in in_body {
        match found.iter_mut().find(|seen| seen.token == f.token) {
            Some(seen) => {
                seen.replaceable &= f.replaceable;
                seen.in_body = true;
            }
            None => found.push(f),
        }
    }
}

/// The body with `credential` as the value of every top-level credential field whose whole
/// value is `token` (re-serialised for JSON, percent-encoded for forms).
pub fn replace_in_body(
    kind: BodyKind,
    body: &[u8],
    token: &str,
    credential: &str,
) -> Result<Vec<u8>, ReplaceError> {
    match kind {
        BodyKind::Json => {
            let mut json: serde_json::Value =
                serde_json::from_slice(body).map_err(|_| ReplaceError)?;
            replace_json(&mut json, token, credential);
            serde_json::to_vec(&json).map_err(|_| ReplaceError)
        }
        BodyKind::Form => {
            let text = std::str::from_utf8(body).map_err(|_| ReplaceError)?;
            let pairs: Vec<String> = form_fields(text)
                .map(|(pair, key, value)| {
                    if value == token && is_credential_name(&key) {
                        let raw_key = pair.split('=').next().unwrap_or("");
                        format!("{raw_key}={}", utf8_percent_encode(credential, QUERY_VALUE))
                    } else {
                        pair.to_owned()
                    }
                })
                .collect();
            Ok(pairs.join("&").into_bytes())
        }
        BodyKind::Text => Err(ReplaceError),
    }
}

/// Replace `token` in the top-level credential-named fields, the only copies `find_in_body`
/// lets through.
fn replace_json(value: &mut serde_json::Value, token: &str, credential: &str) {
    use serde_json::Value;
    let Value::Object(fields) = value else {
        return;
    };
    for (name, v) in fields.iter_mut() {
        if v.as_str() == Some(token) && is_credential_name(name) {
            *v = Value::String(credential.to_owned());
        }
    }
}

/// A credential can't go where the token was.
#[derive(Debug, thiserror::Error)]
#[error("the credential can't be sent in place of the token")]
pub struct ReplaceError;

/// Put `credential` wherever `token` is in a credential header (as [`find`] judges them,
/// with the token's provider in `providers`): as it is, or inside Basic credentials
/// (re-encoded). Replaced values are marked sensitive.
pub fn replace_in_headers(
    headers: &mut HeaderMap,
    token: &str,
    credential: &str,
    providers: &Providers,
) -> Result<(), ReplaceError> {
    let sources = sources(providers, token);
    for (name, value) in headers.iter_mut() {
        // The same headers `find` let through: else a token in a provider's own header
        // (`X-Acme-Sig`) would go upstream as it is, without the credential.
        if !is_credential_name(name.as_str()) && !is_header_credential(name, sources) {
            continue;
        }
        let bytes = value.as_bytes();
        let replaced = if memchr::memmem::find(bytes, token.as_bytes()).is_some() {
            let text = std::str::from_utf8(bytes).map_err(|_| ReplaceError)?;
            Some(text.replace(token, credential))
        } else if let Some(pair) = basic_pair(bytes)
            && memchr::memmem::find(&pair, token.as_bytes()).is_some()
        {
            let pair = String::from_utf8(pair).map_err(|_| ReplaceError)?;
            let scheme = value
                .to_str()
                .ok()
                .and_then(|v| v.trim().split_once(' '))
                .map_or("Basic", |(scheme, _)| scheme);
            Some(format!(
                "{scheme} {}",
                BASE64.encode(pair.replace(token, credential))
            ))
        } else {
            None
        };
        if let Some(text) = replaced {
            let mut new = HeaderValue::from_str(&text).map_err(|_| ReplaceError)?;
            new.set_sensitive(true);
            *value = new;
        }
    }
    Ok(())
}

/// The path and query with `credential` (percent-encoded for where it goes) in place of
/// every plain `token`.
pub fn replace_in_target<'a>(
    path: &'a str,
    query: Option<&'a str>,
    token: &str,
    credential: &str,
) -> (Cow<'a, str>, Option<Cow<'a, str>>) {
    let swap = |text: &'a str, encoded: &dyn Fn() -> String| -> Cow<'a, str> {
        if text.contains(token) {
            Cow::Owned(text.replace(token, &encoded()))
        } else {
            Cow::Borrowed(text)
        }
    };
    let path = swap(path, &|| {
        utf8_percent_encode(credential, PATH_VALUE).to_string()
    });
    let query = query.map(|q| {
        swap(q, &|| {
            utf8_percent_encode(credential, QUERY_VALUE).to_string()
        })
    });
    (path, query)
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderName;

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

    fn token(provider: &str) -> String {
        secrecy::ExposeSecret::expose_secret(&tokens::generate(provider)).to_owned()
    }

    fn find(headers: &HeaderMap, path: &str, query: Option<&str>) -> Vec<Found> {
        let providers = Providers::load(&Default::default()).unwrap();
        super::find(headers, path, query, &providers)
    }

    #[test]
    fn tokens_are_found_anywhere_but_replaceable_only_where_credentials_go() {
        let (a, g, t) = (token("openai"), token("github"), token("telegram"));
        let basic = BASE64.encode(format!("x-access-token:{g}"));
        let h = headers(&[
            ("authorization", &format!("Basic {basic}")),
            ("x-api-key", &a),
            ("content-type", "application/json"),
        ]);
        let found = find(&h, &format!("/bot{t}/sendMessage"), Some("q=1"));
        let names: Vec<&str> = found.iter().map(|f| f.token.as_str()).collect();
        assert_eq!(names, [g.as_str(), a.as_str(), t.as_str()]);
        assert!(found.iter().all(|f| f.replaceable));
        let gemini = token("gemini");
        let query = format!("key={gemini}&q=1");
        assert!(find(&HeaderMap::new(), "/x", Some(&query))[0].replaceable);
        let file = format!("/file/bot{t}/photos/1.jpg");
        assert!(find(&HeaderMap::new(), &file, None)[0].replaceable);
        let (gl, sl) = (token("gitlab"), token("slack"));
        let h = headers(&[("private-token", &gl), ("x-auth-token", &sl)]);
        assert!(find(&h, "/", None).iter().all(|f| f.replaceable));

        let encoded = a.replace('_', "%5F");
        for (h, path, query) in [
            (headers(&[("user-agent", &a)]), "/".to_owned(), None),
            (
                headers(&[("x-other", &format!("Basic {basic}"))]),
                "/".to_owned(),
                None,
            ),
            (HeaderMap::new(), format!("/v1/files-{a}"), None),
            (HeaderMap::new(), format!("/v1/{a}.json"), None),
            // Only where the provider takes its key: not a file name, not another prefix,
            // not a query parameter the provider doesn't read its key from (a webhook's
            // `token=` is handed to the hook's URL).
            (HeaderMap::new(), format!("/v1/{a}"), None),
            (HeaderMap::new(), format!("/repos/o/r/contents/{g}"), None),
            (HeaderMap::new(), format!("/key{t}/x"), None),
            (
                HeaderMap::new(),
                "/api/v4/projects/1/hooks".to_owned(),
                Some(format!("url=https://x.example/&token={gl}")),
            ),
            (
                HeaderMap::new(),
                "/x".to_owned(),
                Some(format!("api_key={a}")),
            ),
            (headers(&[("x-author", &sl)]), "/".to_owned(), None),
            (
                HeaderMap::new(),
                "/x".to_owned(),
                Some(format!("description={a}")),
            ),
            (
                HeaderMap::new(),
                "/x".to_owned(),
                Some(format!("key=pre{a}")),
            ),
            (HeaderMap::new(), "/x".to_owned(), Some(format!("{a}=1"))),
            (
                HeaderMap::new(),
                "/x".to_owned(),
                Some(format!("key={encoded}")),
            ),
            (HeaderMap::new(), format!("/bot{encoded}/x"), None),
            (
                headers(&[("cookie", &format!("k={encoded}"))]),
                "/".to_owned(),
                None,
            ),
            // One copy in its place does not excuse another elsewhere.
            (
                headers(&[("authorization", &format!("Bearer {a}")), ("x-note", &a)]),
                "/".to_owned(),
                None,
            ),
        ] {
            let found = find(&h, &path, query.as_deref());
            assert_eq!(found.len(), 1, "{h:?} {path} {query:?}");
            assert!(!found[0].replaceable, "{h:?} {path} {query:?}");
        }
        // Trailing junk doesn't hide a token; a wrong checksum is no token.
        let junk = format!("/v1/{a}XYZ");
        assert_eq!(find(&HeaderMap::new(), &junk, None)[0].token, a);
        let mut typo = a.clone();
        typo.pop();
        typo.push(if a.ends_with('A') { 'B' } else { 'A' });
        assert!(find(&headers(&[("x", &typo)]), "/", None).is_empty());
    }

    #[test]
    fn a_custom_providers_own_header_takes_its_token_whatever_its_name() {
        let config = toml::from_str(
            r#"
            [acme]
            base_url = "https://api.acme.example"
            token_in = [{ in = "header", name = "X-Acme-Sig" }]
            auth = { scheme = "header", name = "X-Acme-Sig" }
            "#,
        )
        .unwrap();
        let providers = Providers::load(&config).unwrap();
        let (acme, openai) = (token("acme"), token("openai"));
        let own = super::find(&headers(&[("x-acme-sig", &acme)]), "/", None, &providers);
        assert!(own[0].replaceable);
        // Another provider's token in that header is just a copy in an odd place.
        let other = super::find(&headers(&[("x-acme-sig", &openai)]), "/", None, &providers);
        assert!(!other[0].replaceable);
        // Where it was found replaceable, it is replaced.
        let mut h = headers(&[("x-acme-sig", &acme)]);
        replace_in_headers(&mut h, &acme, "acme-real", &providers).unwrap();
        assert_eq!(h["x-acme-sig"], "acme-real");
    }

    #[test]
    fn bodies_are_searched_and_credential_fields_replaced() {
        let a = token("slack");
        let json = format!(r#"{{"token":"{a}","text":"hi","list":["{a}"]}}"#);
        let found = find_in_body(BodyKind::Json, json.as_bytes());
        assert_eq!(found.len(), 1);
        assert!(
            found[0].in_body && !found[0].replaceable,
            "the copy in a list is no field"
        );
        let json = format!(r#"{{"token":"{a}","api_key":"{a}","n":{{"k":1}}}}"#);
        assert!(find_in_body(BodyKind::Json, json.as_bytes())[0].replaceable);
        let replaced =
            replace_in_body(BodyKind::Json, json.as_bytes(), &a, "xoxb-\"real\"").unwrap();
        let v: serde_json::Value = serde_json::from_slice(&replaced).unwrap();
        assert_eq!(v["token"], "xoxb-\"real\"");
        assert_eq!(v["api_key"], "xoxb-\"real\"");
        // Nested fields are the provider's data (message metadata, attachments) and a name
        // that merely contains `auth` is no credential's.
        let camel = format!(r#"{{"accessToken":"{a}"}}"#);
        assert!(find_in_body(BodyKind::Json, camel.as_bytes())[0].replaceable);
        for json in [
            format!(r#"{{"authorName":"{a}"}}"#),
            format!(r#"{{"metadata":{{"event_payload":{{"api_key":"{a}"}}}}}}"#),
            format!(r#"{{"attachments":[{{"token":"{a}"}}]}}"#),
            format!(r#"{{"author_name":"{a}"}}"#),
        ] {
            let found = find_in_body(BodyKind::Json, json.as_bytes());
            assert!(!found[0].replaceable, "{json}");
        }
        let escaped = format!(r#"{{"note":"{}"}}"#, a.replace('_', "\\u005f"));
        let found = find_in_body(BodyKind::Json, escaped.as_bytes());
        assert_eq!(found[0].token, a, "JSON escapes don't hide a token");
        assert!(!found[0].replaceable);

        let form = format!("channel=C1&token={a}&text=hello+there");
        assert!(find_in_body(BodyKind::Form, form.as_bytes())[0].replaceable);
        let replaced = replace_in_body(BodyKind::Form, form.as_bytes(), &a, "xoxb 1/2").unwrap();
        assert_eq!(
            String::from_utf8(replaced).unwrap(),
            "channel=C1&token=xoxb%201%2F2&text=hello+there"
        );
        let text = format!("text={a}");
        assert!(!find_in_body(BodyKind::Form, text.as_bytes())[0].replaceable);
        assert!(!find_in_body(BodyKind::Text, a.as_bytes())[0].replaceable);
        assert!(find_in_body(BodyKind::Json, b"{\"token\": 1}").is_empty());

        let mut h = HeaderMap::new();
        h.insert(
            "content-type",
            "application/json; charset=utf-8".parse().unwrap(),
        );
        assert_eq!(body_kind(&h), Some(BodyKind::Json));
        h.insert(
            "content-type",
            "multipart/form-data; boundary=x".parse().unwrap(),
        );
        assert_eq!(body_kind(&h), None);

        let mut found = find(
            &headers(&[("authorization", &format!("Bearer {a}"))]),
            "/",
            None,
        );
        merge(&mut found, find_in_body(BodyKind::Form, form.as_bytes()));
        assert_eq!(found.len(), 1);
        assert!(found[0].replaceable && found[0].in_body);
    }

    #[test]
    fn copies_a_lenient_reader_sees_are_found() {
        let a = token("openai");
        let encoded = a.replacen('_', "%5F", 1);
        // A repeated JSON key: the parsed view keeps one value, an upstream may keep the other.
        let dup = format!(r#"{{"x":"{a}","x":1}}"#);
        assert!(!find_in_body(BodyKind::Json, dup.as_bytes())[0].replaceable);
        let slack = token("slack");
        let dup = format!(r#"{{"token":"{slack}","token":"{slack}"}}"#);
        assert!(!find_in_body(BodyKind::Json, dup.as_bytes())[0].replaceable);
        // A form or header value with a byte that isn't UTF-8 is still percent-decoded.
        let mut form = b"a=\xff&token=".to_vec();
        form.extend_from_slice(encoded.as_bytes());
        assert_eq!(find_in_body(BodyKind::Form, &form)[0].token, a);
        let mut form = b"a=\xff&token=".to_vec();
        form.extend_from_slice(slack.as_bytes());
        assert!(!find_in_body(BodyKind::Form, &form)[0].replaceable);
        let mut cookie = format!("k={encoded}; b=").into_bytes();
        cookie.push(0xff);
        let mut h = HeaderMap::new();
        h.insert("cookie", HeaderValue::from_bytes(&cookie).unwrap());
        assert_eq!(find(&h, "/", None)[0].token, a);
        // Basic credentials without their padding, or in the URL-safe alphabet.
        for user in ["a", "ab", "abc", "ab?>"] {
            let pair = format!("{user}:{a}");
            for encoded in [
                BASE64.encode(&pair).trim_end_matches('=').to_owned(),
                base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(&pair),
            ] {
                let h = headers(&[("authorization", &format!("Basic {encoded}"))]);
                assert_eq!(find(&h, "/", None)[0].token, a, "{encoded}");
            }
        }
    }

    #[test]
    fn the_credential_takes_the_tokens_place() {
        let (a, g) = (token("openai"), token("github"));
        let basic = BASE64.encode(format!("x-access-token:{g}"));
        let mut h = headers(&[
            ("authorization", &format!("Basic {basic}")),
            ("x-api-key", &a),
            ("accept", "*/*"),
        ]);
        let providers = Providers::load(&Default::default()).unwrap();
        replace_in_headers(&mut h, &g, "ghp_real", &providers).unwrap();
        assert_eq!(
            h["authorization"],
            format!("Basic {}", BASE64.encode("x-access-token:ghp_real")).as_str()
        );
        assert!(h["authorization"].is_sensitive());
        assert_eq!(h["x-api-key"], a.as_str());
        replace_in_headers(&mut h, &a, "sk-real", &providers).unwrap();
        assert_eq!(h["x-api-key"], "sk-real");
        assert!(replace_in_headers(&mut h, "sk-real", "bad\nvalue", &providers).is_err());

        let (path, query) = (format!("/bot{a}/send"), format!("key={a}&q=1"));
        let (path, query) = replace_in_target(&path, Some(&query), &a, "12:ab/c d");
        assert_eq!(path, "/bot12:ab%2Fc%20d/send");
        assert_eq!(query.as_deref(), Some("key=12%3Aab%2Fc%20d&q=1"));
        let (path, query) = replace_in_target("/plain", None, &a, "x");
        assert!(matches!(path, Cow::Borrowed("/plain")) && query.is_none());
    }
}
