//! Providers are data: where the upstream is, where the agent's SDK puts its key, and how
//! the real credential is injected. Built-ins live in one table; the config file can
//! override a built-in's base URL (e.g. to point it at a test upstream).

mod error_shape;

use std::collections::{BTreeMap, HashMap};
use std::net::IpAddr;
use std::sync::Arc;

use http::uri::{Authority, Scheme, Uri};

pub use error_shape::ErrorShape;

use crate::config::ProviderOverride;

/// Where an agent's SDK sends its key; the broker looks for the `seks_` token there.
#[derive(Debug, Clone)]
pub enum TokenSource {
    /// `Authorization: <scheme> <token>` for one of these schemes (lowercase, e.g. `bearer`).
    Authorization(&'static [&'static str]),
    /// A header (lowercase name) carrying the bare token.
    Header(&'static str),
    /// A query parameter carrying the bare token.
    Query(&'static str),
}

/// How the real credential travels to the upstream.
#[derive(Debug, Clone)]
pub enum AuthScheme {
    /// Set header `name` to `prefix` followed by the credential.
    Header {
        /// Header to set (lowercase name).
        name: &'static str,
        /// Text before the credential, e.g. `Bearer `.
        prefix: &'static str,
    },
}

impl TokenSource {
    /// How an agent would send its token this way, for error messages.
    pub fn describe(&self) -> String {
        match self {
            TokenSource::Authorization(schemes) => schemes
                .iter()
                .map(|s| {
                    format!(
                        "Authorization: {}{} <token>",
                        s[..1].to_uppercase(),
                        &s[1..]
                    )
                })
                .collect::<Vec<_>>()
                .join(" or "),
            TokenSource::Header(name) => format!("{name}: <token>"),
            TokenSource::Query(param) => format!("?{param}=<token>"),
        }
    }
}

impl AuthScheme {
    /// Whether `value` can be injected this way (a header value must be visible ASCII).
    pub fn accepts(&self, value: &str) -> Result<(), &'static str> {
        match self {
            AuthScheme::Header { .. } if value.is_empty() => Err("the value is empty"),
            AuthScheme::Header { .. } if !value.bytes().all(|b| b.is_ascii_graphic()) => {
                Err("an HTTP header credential must be printable ASCII without spaces")
            }
            AuthScheme::Header { .. } => Ok(()),
        }
    }
}

/// The pinned upstream of a provider: scheme, host and port, and a path prefix.
#[derive(Debug, Clone)]
pub struct Upstream {
    /// `https`, or `http` for loopback test upstreams only.
    pub scheme: Scheme,
    /// Host and port.
    pub authority: Authority,
    /// Path prefix without a trailing slash (may be empty), e.g. `/v1`.
    pub path_prefix: String,
}

/// Where an LLM request names its model, for `models` policies.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ModelIn {
    /// The `model` field of the JSON body.
    Body,
    /// The path, as in Gemini's `/models/{model}:generateContent` (or `/tunedModels/…`),
    /// and the body's `model` (`models/` prefix dropped), as in its OpenAI-compatible API.
    PathAndBody,
    /// Not an LLM API.
    Nowhere,
}

/// A request's `model` field is not a string, so it can't be checked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UnreadableModel;

impl ModelIn {
    /// Whether the JSON body can name a model.
    pub fn reads_body(self) -> bool {
        self != ModelIn::Nowhere
    }

    /// Every model a request names.
    pub fn find<'a>(
        self,
        path: &'a str,
        body: Option<&'a serde_json::Value>,
    ) -> Result<Vec<&'a str>, UnreadableModel> {
        let mut found = Vec::new();
        if self == ModelIn::Nowhere {
            return Ok(found);
        }
        if self == ModelIn::PathAndBody {
            let after = path
                .split_once("/models/")
                .or_else(|| path.split_once("/tunedModels/"));
            if let Some(model) = after.and_then(|(_, after)| after.split([':', '/']).next())
                && !model.is_empty()
            {
                found.push(model);
            }
        }
        match body.and_then(|b| b.get("model")) {
            None => {}
            Some(serde_json::Value::String(model)) if self == ModelIn::PathAndBody => {
                found.push(model.strip_prefix("models/").unwrap_or(model));
            }
            Some(serde_json::Value::String(model)) => found.push(model),
            Some(_) => return Err(UnreadableModel),
        }
        Ok(found)
    }
}

/// One provider the broker can forward to.
#[derive(Debug, Clone)]
pub struct Provider {
    /// Name used in `/api/<name>/` and in tokens.
    pub name: String,
    /// The only place requests for this provider go.
    pub upstream: Upstream,
    /// Where the agent's token is looked for, in order.
    pub token_sources: Vec<TokenSource>,
    /// How the real credential is injected.
    pub auth: AuthScheme,
    /// The JSON shape of this provider's error bodies.
    pub errors: ErrorShape,
    /// Whether to offer HTTP/2 (ALPN) to the upstream; HTTP/1.1 keep-alive otherwise.
    pub http2: bool,
    /// Where requests name their model.
    pub model_in: ModelIn,
    /// OpenAI-style APIs report usage in a stream only when the request asks for it
    /// (`stream_options.include_usage`); the broker asks when a token budget needs it.
    pub stream_usage_opt_in: bool,
}

/// A provider definition could not be used.
#[derive(Debug, thiserror::Error)]
pub enum ProviderError {
    /// The config names a provider that is not built in.
    #[error("unknown provider `{0}` in config (built-in providers: {1})")]
    Unknown(String, String),
    /// A base URL is malformed or not allowed.
    #[error("provider `{provider}`: base_url `{url}` {why}")]
    BadBaseUrl {
        /// The provider.
        provider: String,
        /// The offending URL.
        url: String,
        /// What is wrong.
        why: &'static str,
    },
}

struct Builtin {
    name: &'static str,
    base_url: &'static str,
    token_sources: &'static [TokenSource],
    auth: AuthScheme,
    errors: ErrorShape,
    model_in: ModelIn,
    stream_usage_opt_in: bool,
}

/// `Authorization: Bearer <token>`, as almost every SDK sends its key.
const BEARER_TOKEN: TokenSource = TokenSource::Authorization(&["bearer"]);

const BEARER: AuthScheme = AuthScheme::Header {
    name: "authorization",
    prefix: "Bearer ",
};

const BUILTINS: &[Builtin] = &[
    Builtin {
        name: "openai",
        base_url: "https://api.openai.com",
        token_sources: &[BEARER_TOKEN],
        auth: BEARER,
        errors: ErrorShape::OpenAi,
        model_in: ModelIn::Body,
        stream_usage_opt_in: true,
    },
    Builtin {
        name: "anthropic",
        base_url: "https://api.anthropic.com",
        token_sources: &[TokenSource::Header("x-api-key"), BEARER_TOKEN],
        auth: AuthScheme::Header {
            name: "x-api-key",
            prefix: "",
        },
        errors: ErrorShape::Anthropic,
        model_in: ModelIn::Body,
        stream_usage_opt_in: false,
    },
    Builtin {
        name: "gemini",
        base_url: "https://generativelanguage.googleapis.com",
        token_sources: &[
            TokenSource::Header("x-goog-api-key"),
            TokenSource::Query("key"),
        ],
        auth: AuthScheme::Header {
            name: "x-goog-api-key",
            prefix: "",
        },
        errors: ErrorShape::Google,
        model_in: ModelIn::PathAndBody,
        stream_usage_opt_in: false,
    },
    Builtin {
        name: "groq",
        base_url: "https://api.groq.com/openai",
        token_sources: &[BEARER_TOKEN],
        auth: BEARER,
        errors: ErrorShape::OpenAi,
        model_in: ModelIn::Body,
        stream_usage_opt_in: true,
    },
    Builtin {
        name: "github",
        base_url: "https://api.github.com",
        // GitHub clients send `token <pat>` as often as `Bearer <pat>`.
        token_sources: &[TokenSource::Authorization(&["bearer", "token"])],
        auth: BEARER,
        errors: ErrorShape::GitHub,
        model_in: ModelIn::Nowhere,
        stream_usage_opt_in: false,
    },
];

/// The providers this broker serves, by name.
#[derive(Debug, Clone)]
pub struct Providers {
    by_name: HashMap<String, Arc<Provider>>,
}

impl Providers {
    /// The built-in table with the config file's overrides applied.
    pub fn load(overrides: &BTreeMap<String, ProviderOverride>) -> Result<Self, ProviderError> {
        if let Some(name) = overrides
            .keys()
            .find(|n| !BUILTINS.iter().any(|b| b.name == n.as_str()))
        {
            return Err(ProviderError::Unknown(name.clone(), builtin_names()));
        }
        let mut by_name = HashMap::new();
        for b in BUILTINS {
            let o = overrides.get(b.name);
            let url = o.and_then(|o| o.base_url.as_deref()).unwrap_or(b.base_url);
            let provider = Provider {
                name: b.name.to_owned(),
                upstream: parse_base_url(b.name, url)?,
                token_sources: b.token_sources.to_vec(),
                auth: b.auth.clone(),
                errors: b.errors,
                http2: o.and_then(|o| o.http2).unwrap_or(false),
                model_in: b.model_in,
                stream_usage_opt_in: b.stream_usage_opt_in,
            };
            by_name.insert(b.name.to_owned(), Arc::new(provider));
        }
        Ok(Providers { by_name })
    }

    /// Look a provider up by name.
    pub fn get(&self, name: &str) -> Option<&Arc<Provider>> {
        self.by_name.get(name)
    }

    /// All provider names, sorted.
    pub fn names(&self) -> Vec<&str> {
        let mut names: Vec<&str> = self.by_name.keys().map(String::as_str).collect();
        names.sort_unstable();
        names
    }
}

fn builtin_names() -> String {
    BUILTINS
        .iter()
        .map(|b| b.name)
        .collect::<Vec<_>>()
        .join(", ")
}

/// Parse and vet a base URL: https anywhere, plain http only to a loopback host.
fn parse_base_url(provider: &str, url: &str) -> Result<Upstream, ProviderError> {
    let bad = |why| ProviderError::BadBaseUrl {
        provider: provider.to_owned(),
        url: url.to_owned(),
        why,
    };
    let uri: Uri = url.parse().map_err(|_| bad("is not a valid URL"))?;
    let parts = uri.into_parts();
    let scheme = parts
        .scheme
        .ok_or_else(|| bad("must start with https://"))?;
    let authority = parts.authority.ok_or_else(|| bad("has no host"))?;
    if authority.as_str().contains('@') {
        return Err(bad("must not contain credentials"));
    }
    if scheme == Scheme::HTTP {
        if !is_loopback(authority.host()) {
            return Err(bad(
                "uses plain http to a non-loopback host; credentials only travel over https",
            ));
        }
    } else if scheme != Scheme::HTTPS {
        return Err(bad("must use https"));
    }
    let path_and_query = parts.path_and_query;
    if path_and_query
        .as_ref()
        .is_some_and(|pq| pq.query().is_some())
    {
        return Err(bad("must not have a query string"));
    }
    let path_prefix = path_and_query
        .as_ref()
        .map(|pq| pq.path().trim_end_matches('/').to_owned())
        .unwrap_or_default();
    Ok(Upstream {
        scheme,
        authority,
        path_prefix,
    })
}

/// Only literal loopback addresses count: a name like `localhost` depends on resolution.
fn is_loopback(host: &str) -> bool {
    let host = host.trim_start_matches('[').trim_end_matches(']');
    host.parse::<IpAddr>().is_ok_and(|ip| ip.is_loopback())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn with_base(url: &str) -> Result<Providers, ProviderError> {
        let mut o = BTreeMap::new();
        o.insert(
            "openai".to_owned(),
            ProviderOverride {
                base_url: Some(url.to_owned()),
                http2: None,
            },
        );
        Providers::load(&o)
    }

    #[test]
    fn builtins_load_with_https_upstreams() {
        let p = Providers::load(&BTreeMap::new()).unwrap();
        assert_eq!(
            p.names(),
            ["anthropic", "gemini", "github", "groq", "openai"]
        );
        let groq = p.get("groq").unwrap();
        assert_eq!(groq.upstream.scheme, Scheme::HTTPS);
        assert_eq!(groq.upstream.authority.as_str(), "api.groq.com");
        assert_eq!(groq.upstream.path_prefix, "/openai");
    }

    #[test]
    fn overrides_keep_a_path_prefix_and_allow_http_only_to_loopback() {
        let p = with_base("http://127.0.0.1:9000/prefix/v1/").unwrap();
        let up = &p.get("openai").unwrap().upstream;
        assert_eq!(up.authority.as_str(), "127.0.0.1:9000");
        assert_eq!(up.path_prefix, "/prefix/v1");
        assert!(with_base("http://[::1]:9000").is_ok());
        assert!(with_base("http://localhost:9000").is_err());
        assert!(with_base("https://localhost:9000").is_ok());
        assert!(with_base("http://example.com").is_err());
        assert!(with_base("ftp://example.com").is_err());
        assert!(with_base("https://user:pw@example.com").is_err());
        assert!(with_base("https://example.com/?a=b").is_err());
        assert!(with_base("/relative").is_err());
    }

    #[test]
    fn unknown_providers_in_config_are_refused() {
        let mut o = BTreeMap::new();
        o.insert("nope".to_owned(), ProviderOverride::default());
        assert!(matches!(
            Providers::load(&o),
            Err(ProviderError::Unknown(..))
        ));
    }

    #[test]
    fn models_are_found_in_the_body_or_the_path() {
        let body = serde_json::json!({"model": "gpt-4o-mini"});
        assert_eq!(
            ModelIn::Body.find("/v1/chat/completions", Some(&body)),
            Ok(vec!["gpt-4o-mini"])
        );
        assert_eq!(ModelIn::Body.find("/v1/models", None), Ok(vec![]));
        let path = "/v1beta/models/gemini-2.0-flash:generateContent";
        let gemini = ModelIn::PathAndBody;
        assert_eq!(gemini.find(path, None), Ok(vec!["gemini-2.0-flash"]));
        assert_eq!(
            gemini.find("/v1beta/tunedModels/mine:generateContent", None),
            Ok(vec!["mine"])
        );
        assert_eq!(gemini.find("/v1beta/models", None), Ok(vec![]));
        let compat = serde_json::json!({"model": "models/gemini-2.5-pro"});
        assert_eq!(
            gemini.find("/v1beta/openai/chat/completions", Some(&compat)),
            Ok(vec!["gemini-2.5-pro"])
        );
        assert_eq!(ModelIn::Nowhere.find(path, Some(&body)), Ok(vec![]));
        let odd = serde_json::json!({"model": ["gpt-4o"]});
        assert_eq!(
            ModelIn::Body.find("/v1/x", Some(&odd)),
            Err(UnreadableModel)
        );
    }

    #[test]
    fn header_credentials_must_be_printable() {
        assert!(BEARER.accepts("sk-abc").is_ok());
        assert!(BEARER.accepts("").is_err());
        assert!(BEARER.accepts("sk abc").is_err());
        assert!(BEARER.accepts("sk\nabc").is_err());
    }
}
