//! `kind = "http"`: one request to a provider, built from a template the operator wrote and
//! the agent's checked arguments — e.g. "post a message to #ops" without the Slack token.
//!
//! The request goes where the proxy would send it (the provider's pinned base URL, the
//! credential injected the provider's way, no redirects), and its answer is scrubbed of
//! every secret before the agent sees it.

use std::collections::BTreeMap;
use std::num::NonZeroU32;
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, HeaderName, HeaderValue, Method, header};
use http_body_util::{BodyExt, Limited};
use percent_encoding::{AsciiSet, NON_ALPHANUMERIC, utf8_percent_encode};
use secrecy::SecretString;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use super::params::{self, BadArgument, Param};
use super::{DEFAULT_MAX_RESPONSE, RunError};
use crate::providers::{AuthScheme, Providers};
use crate::proxy::target;
use crate::proxy::{Upstreams, arrives_unencoded, replace_members, send_built};
use crate::scrub::Scrubber;

/// Longest a request may take when the capability sets no `timeout`.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(30);
/// Methods a template may use.
const METHODS: [&str; 5] = ["GET", "POST", "PUT", "PATCH", "DELETE"];
/// Headers a template may not set: the broker's, the message framing's, and credentials.
const RESERVED: [&str; 9] = [
    "authorization",
    "proxy-authorization",
    "cookie",
    "host",
    "content-length",
    "transfer-encoding",
    "connection",
    "accept-encoding",
    "x-api-key",
];
/// A value placed in a path segment keeps only letters, digits, `-`, `_` and `~`: no `/`,
/// no `.` (so no `..`), nothing a server could read as structure.
const PATH_VALUE: &AsciiSet = &NON_ALPHANUMERIC.remove(b'-').remove(b'_').remove(b'~');

/// An HTTP capability as written in the config.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HttpSpec {
    /// What it does, for the model.
    pub description: String,
    /// The stored credential, a secret of `provider`.
    pub secret: String,
    /// Hold every call until an operator approves it.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub require_approval: bool,
    /// Longest the request may take (default 30s).
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        with = "humantime_serde"
    )]
    pub timeout: Option<Duration>,
    /// The provider the request goes to (its base URL and auth scheme).
    pub provider: String,
    /// `GET`, `POST`, `PUT`, `PATCH` or `DELETE`.
    pub method: String,
    /// Path below the provider's base URL; `{name}` is replaced by that argument,
    /// percent-encoded as one path segment.
    pub path: String,
    /// Query parameters; values may hold `{name}` (an absent optional argument drops a
    /// parameter whose value is just `{name}`).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub query: BTreeMap<String, String>,
    /// Fixed extra headers (`Notion-Version`…); never credentials.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub headers: BTreeMap<String, String>,
    /// JSON body; a string that is exactly `{name}` becomes the argument's JSON value, and
    /// `{name}` inside a longer string its text.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub body: Option<Value>,
    /// The arguments.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub params: Vec<Param>,
    /// Largest answer read (default 1 MiB); a larger one is refused.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_response_bytes: Option<usize>,
    /// Most calls running at once, whichever tokens make them (default none): requests share the
    /// broker's pooled connections to the provider.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_in_flight: Option<NonZeroU32>,
}

/// The `{name}` placeholders in `text` whose name could be a parameter's.
fn placeholders(text: &str) -> impl Iterator<Item = &str> {
    text.match_indices('{').filter_map(move |(i, _)| {
        let rest = &text[i + 1..];
        let name = &rest[..rest.find('}')?];
        params::valid_name(name).then_some(name)
    })
}

/// `text` with each `{name}` of a declared parameter replaced by `value(name)`.
fn fill(text: &str, value: impl Fn(&str) -> Option<String>) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(i) = rest.find('{') {
        out.push_str(&rest[..i]);
        let after = &rest[i + 1..];
        let name = after.find('}').map(|end| &after[..end]);
        match name
            .filter(|n| params::valid_name(n))
            .and_then(|n| value(n).map(|v| (n, v)))
        {
            Some((n, v)) => {
                out.push_str(&v);
                rest = &after[n.len() + 1..];
            }
            None => {
                out.push('{');
                rest = after;
            }
        }
    }
    out.push_str(rest);
    out
}

/// An argument as text inside a longer string (null is empty).
fn as_text(value: &Value) -> String {
    match value {
        Value::String(s) => s.clone(),
        Value::Null => String::new(),
        other => other.to_string(),
    }
}

fn strings_in(value: &Value, out: &mut Vec<String>) {
    match value {
        Value::String(s) => out.push(s.clone()),
        Value::Array(items) => items.iter().for_each(|v| strings_in(v, out)),
        Value::Object(map) => map.values().for_each(|v| strings_in(v, out)),
        _ => {}
    }
}

impl HttpSpec {
    fn param(&self, name: &str) -> Option<&Param> {
        self.params.iter().find(|p| p.name == name)
    }

    /// Check the definition against the provider table.
    pub fn check(&self, providers: &Providers) -> Result<(), String> {
        params::check(&self.params)?;
        let provider = providers.get(&self.provider).ok_or_else(|| {
            format!(
                "unknown provider `{}`; known providers: {}",
                self.provider,
                providers.names().join(", ")
            )
        })?;
        if provider.auth.signs_requests() {
            return Err(format!(
                "provider `{}` signs requests, which HTTP capabilities don't support",
                self.provider
            ));
        }
        if matches!(provider.auth, AuthScheme::Oauth2(_)) {
            return Err(format!(
                "provider `{}` mints OAuth2 access tokens, which HTTP capabilities don't support yet",
                self.provider
            ));
        }
        if !METHODS.contains(&self.method.as_str()) {
            return Err(format!("`method` must be one of {}", METHODS.join(", ")));
        }
        let mut texts = vec![self.path.clone()];
        texts.extend(self.query.values().cloned());
        if let Some(body) = &self.body {
            strings_in(body, &mut texts);
        }
        for name in texts.iter().flat_map(|t| placeholders(t)) {
            if self.param(name).is_none() {
                return Err(format!("`{{{name}}}` names no declared parameter"));
            }
        }
        for name in placeholders(&self.path) {
            if self.param(name).is_some_and(|p| !p.required) {
                return Err(format!(
                    "path parameter `{name}` must be required: a path can't leave a segment out"
                ));
            }
        }
        target::validate(&fill(&self.path, |_| Some("x".to_owned())), false)
            .map_err(|why| format!("`path`: {why}"))?;
        let (injected_header, injected_param) = match &provider.auth {
            AuthScheme::Header { name, .. } => (Some(name.as_str()), None),
            AuthScheme::Query { param } => (None, Some(param.as_str())),
            _ => (None, None),
        };
        for (name, value) in &self.headers {
            let lower = name.to_ascii_lowercase();
            if RESERVED.contains(&lower.as_str()) || Some(lower.as_str()) == injected_header {
                return Err(format!("header `{name}` is set by the broker"));
            }
            HeaderName::from_bytes(name.as_bytes())
                .map_err(|_| format!("`{name}` is not a header name"))?;
            HeaderValue::from_str(value)
                .map_err(|_| format!("header `{name}` has a value that can't be sent"))?;
        }
        if let Some(p) = injected_param
            && self.query.contains_key(p)
        {
            return Err(format!("query parameter `{p}` carries the credential"));
        }
        Ok(())
    }

    /// The JSON Schema of the arguments, for models: a path argument (a string, as nothing
    /// else can be empty) needs at least one character, as [`HttpSpec::path_for`] checks.
    pub fn schema(&self) -> Value {
        let mut schema = params::schema(&self.params);
        for name in placeholders(&self.path) {
            if let Some(prop) = schema["properties"].get_mut(name)
                && prop["type"] == "string"
            {
                prop["minLength"] = 1.into();
            }
        }
        schema
    }

    fn args<'a>(&'a self, values: &'a [Value]) -> BTreeMap<&'a str, &'a Value> {
        self.params
            .iter()
            .map(|p| p.name.as_str())
            .zip(values)
            .collect()
    }

    /// The request path for `values` (one per parameter), each percent-encoded as one
    /// segment; refused if the result could leave the provider's base URL anyway.
    pub fn path_for(&self, values: &[Value]) -> Result<String, BadArgument> {
        let args = self.args(values);
        // An empty value is no segment at all: `/customers/{id}` would become
        // `/customers/`, the collection rather than one item.
        if let Some(empty) =
            placeholders(&self.path).find(|n| args.get(n).is_some_and(|v| as_text(v).is_empty()))
        {
            return Err(BadArgument::at(
                params::pointer(empty),
                "must not be empty: it fills a path segment",
            ));
        }
        let path = fill(&self.path, |n| {
            args.get(n)
                .map(|v| utf8_percent_encode(&as_text(v), PATH_VALUE).to_string())
        });
        target::validate(&path, false).map_err(|why| {
            BadArgument::at(
                "",
                format!("the arguments don't form a valid request path: {why}"),
            )
        })?;
        Ok(path)
    }

    /// The URL's query and the JSON body (if the template has one) of the request for
    /// `values` (one per parameter).
    pub fn query_and_body(&self, values: &[Value]) -> Result<(String, Option<Bytes>), RunError> {
        let args = self.args(values);
        let arg = |name: &str| args.get(name).copied();
        let pairs: Vec<(&str, String)> = self
            .query
            .iter()
            .filter(|(_, template)| {
                // `{name}` alone, for an absent optional argument, leaves the parameter out.
                !template
                    .strip_prefix('{')
                    .and_then(|t| t.strip_suffix('}'))
                    .and_then(arg)
                    .is_some_and(Value::is_null)
            })
            .map(|(k, template)| (k.as_str(), fill(template, |n| arg(n).map(as_text))))
            .collect();
        let query = serde_urlencoded::to_string(&pairs)
            .map_err(|e| RunError::Misconfigured(format!("query: {e}")))?;
        let body = self
            .body
            .as_ref()
            .map(|template| Bytes::from(fill_json(template, &arg).to_string()));
        Ok((query, body))
    }

    /// The request's method (one of [`METHODS`], as [`HttpSpec::check`] made sure).
    pub fn method(&self) -> Result<Method, RunError> {
        Method::from_bytes(self.method.as_bytes())
            .map_err(|_| RunError::Misconfigured("method".to_owned()))
    }

    /// Build the request from checked `values` (one per parameter), send it through the
    /// proxy's upstream clients with `credential`, and return the scrubbed answer with the
    /// JSON members named in `withheld` replaced.
    pub async fn send(
        &self,
        providers: &Providers,
        upstreams: &Upstreams,
        values: &[Value],
        credential: &SecretString,
        scrubber: &Scrubber,
        withheld: Option<&[String]>,
    ) -> Result<Value, RunError> {
        let provider = providers.get(&self.provider).ok_or_else(|| {
            RunError::Misconfigured(format!("provider `{}` is gone", self.provider))
        })?;
        let path = self
            .path_for(values)
            .map_err(|e| RunError::Refused(e.to_string()))?;
        let (query, body) = self.query_and_body(values)?;
        let mut headers = HeaderMap::new();
        for (name, value) in &self.headers {
            if let (Ok(n), Ok(v)) = (
                HeaderName::from_bytes(name.as_bytes()),
                HeaderValue::from_str(value),
            ) {
                headers.insert(n, v);
            }
        }
        headers.insert(
            header::ACCEPT_ENCODING,
            HeaderValue::from_static("identity"),
        );
        if body.is_some() {
            headers.insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/json"),
            );
        }
        let response = send_built(
            upstreams,
            provider,
            self.method()?,
            &path,
            (!query.is_empty()).then_some(query.as_str()),
            headers,
            body.unwrap_or_default(),
            credential,
        )
        .await
        .map_err(|e| RunError::Unreachable(e.to_string()))?;
        let status = response.status().as_u16();
        if !arrives_unencoded(response.headers()) {
            return Err(RunError::Refused(
                "the provider compressed its answer, so it can't be checked for secrets".to_owned(),
            ));
        }
        let limit = self.max_response_bytes.unwrap_or(DEFAULT_MAX_RESPONSE);
        let mut bytes = Limited::new(response.into_body(), limit)
            .collect()
            .await
            .map_err(|e| {
                if e.is::<http_body_util::LengthLimitError>() {
                    RunError::Refused(format!(
                        "the provider's answer is larger than {limit} bytes"
                    ))
                } else {
                    RunError::Unreachable("the provider's answer broke off".to_owned())
                }
            })?
            .to_bytes()
            .to_vec();
        scrubber.scrub_all(&mut bytes);
        let body = match serde_json::from_slice::<Value>(&bytes) {
            Ok(mut json) => {
                if let Some(members) = withheld {
                    replace_members(&mut json, members);
                }
                json
            }
            Err(_) => Value::String(String::from_utf8_lossy(&bytes).into_owned()),
        };
        Ok(json!({"status": status, "body": body}))
    }
}

/// The body template with its placeholders filled.
fn fill_json<'a>(template: &Value, arg: &impl Fn(&str) -> Option<&'a Value>) -> Value {
    match template {
        Value::String(s) => {
            let whole = s
                .strip_prefix('{')
                .and_then(|t| t.strip_suffix('}'))
                .and_then(arg);
            match whole {
                Some(value) => value.clone(),
                None => Value::String(fill(s, |n| arg(n).map(as_text))),
            }
        }
        Value::Array(items) => Value::Array(items.iter().map(|v| fill_json(v, arg)).collect()),
        Value::Object(map) => Value::Object(
            map.iter()
                .map(|(k, v)| (k.clone(), fill_json(v, arg)))
                .collect(),
        ),
        other => other.clone(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(extra: &str) -> HttpSpec {
        toml::from_str(&format!(
            "description = \"d\"\nsecret = \"gh\"\nprovider = \"github\"\nmethod = \"POST\"\n{extra}"
        ))
        .unwrap()
    }

    fn providers() -> Providers {
        Providers::load(&BTreeMap::new()).unwrap()
    }

    #[test]
    fn templates_fill_only_declared_names_and_keep_types() {
        let args: BTreeMap<&str, Value> = [("text", json!("hi {there}")), ("n", json!(3))].into();
        let arg = |n: &str| args.get(n);
        assert_eq!(
            fill("a {text} {unknown} {", |n| arg(n).map(as_text)),
            "a hi {there} {unknown} {"
        );
        let body = json!({"channel": "#ops", "text": "{text}", "count": "{n}", "label": "n={n}"});
        assert_eq!(
            fill_json(&body, &arg),
            json!({"channel": "#ops", "text": "hi {there}", "count": 3, "label": "n=3"})
        );
    }

    #[test]
    fn definitions_are_checked_against_the_provider_table() {
        let ok = spec(
            "path = \"/repos/{owner}/{repo}/issues\"\nbody = { title = \"{title}\" }\n\
             params = [{ name = \"owner\", type = \"string\" }, { name = \"repo\", type = \"string\" }, { name = \"title\", type = \"string\" }]\n",
        );
        ok.check(&providers()).unwrap();
        for (extra, why) in [
            ("path = \"/x/{nope}\"\n", "no declared"),
            ("path = \"/x/../y\"\n", "path"),
            (
                "path = \"/x\"\nheaders = { Authorization = \"x\" }\n",
                "set by the broker",
            ),
            (
                "path = \"/x/{a}\"\nparams = [{ name = \"a\", type = \"string\", required = false }]\n",
                "must be required",
            ),
        ] {
            let err = spec(extra).check(&providers()).unwrap_err();
            assert!(err.contains(why), "{extra}: {err}");
        }
        let mut s3 = spec("path = \"/x\"\n");
        s3.provider = "s3".to_owned();
        assert!(s3.check(&providers()).unwrap_err().contains("signs"));
    }

    #[test]
    fn path_values_stay_one_segment() {
        for (value, encoded) in [
            ("a/b", "a%2Fb"),
            ("..", "%2E%2E"),
            ("x y", "x%20y"),
            ("ok-1_~", "ok-1_~"),
        ] {
            let path = fill("/r/{v}", |_| {
                Some(utf8_percent_encode(value, PATH_VALUE).to_string())
            });
            assert_eq!(path, format!("/r/{encoded}"));
        }
        assert!(
            target::validate("/r/%2E%2E", false).is_err(),
            "encoded dots are still refused"
        );
    }
}
