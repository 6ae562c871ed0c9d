//! Providers are data: where the upstream is, where the agent's SDK puts its key, and how
//! the real credential is injected. Built-ins live in one TOML table (`builtin.toml`) in the
//! same format as `[providers.NAME]` in the config file, which can override a built-in field
//! by field or define a new provider.

mod auth;
mod error_shape;
pub mod oauth2;
mod spec;

use std::collections::{BTreeMap, HashMap};
use std::net::IpAddr;
use std::sync::Arc;

use http::uri::{Authority, Scheme, Uri};
use serde::Deserialize;

use crate::policy::{RequestPath, Rule};

pub use auth::{AuthScheme, PLACEHOLDER, TokenSource};
pub use error_shape::ErrorShape;
pub use spec::ProviderSpec;

/// The built-in table, parsed at load time with the config file's own parser.
const BUILTIN_TABLE: &str = include_str!("builtin.toml");

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

impl Upstream {
    /// The base URL as an operator would write it.
    pub fn base_url(&self) -> String {
        format!("{}://{}{}", self.scheme, self.authority, self.path_prefix)
    }
}

/// Where an LLM request names its model, for `models` policies.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
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

    /// Whether a WebSocket session runs the model its URL's `model` query parameter names:
    /// OpenAI-style realtime APIs (OpenAI's, xAI's) take it from there, while Gemini's Live
    /// API takes it from the session's first message, whatever the URL says.
    pub fn session_model_in_query(self) -> bool {
        self == ModelIn::Body
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
        // A batch names a model per request: Anthropic's Message Batches in each request's
        // `params`, Gemini's batch embeddings in each request.
        let batched = body
            .and_then(|b| b.get("requests"))
            .and_then(serde_json::Value::as_array)
            .into_iter()
            .flatten()
            .flat_map(|request| [request.get("model"), request.pointer("/params/model")]);
        for named in std::iter::once(body.and_then(|b| b.get("model"))).chain(batched) {
            match named {
                None => {}
                Some(serde_json::Value::String(model)) if self == ModelIn::PathAndBody => {
                    found.push(model.strip_prefix("models/").unwrap_or(model));
                }
                Some(serde_json::Value::String(model)) => found.push(model),
                Some(_) => return Err(UnreadableModel),
            }
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
    /// Further https hosts where the forward proxy may put the credential in place of the
    /// token (any path there), besides the base URL's host.
    pub extra_hosts: Vec<Authority>,
    /// Whether the forward proxy may replace a token in a key or token field of a form or
    /// JSON body.
    pub body_placeholders: bool,
    /// Requests that hand out a credential usable without the broker, matched like `deny`
    /// rules; see [`crate::policy::check_credential_route`].
    pub credential_routes: Vec<Rule>,
    /// The upstream reads an encoded slash (`%2F`) as part of a path segment, as GitLab reads
    /// `projects/group%2Fproject`; see [`crate::proxy::target`].
    pub encoded_slashes: bool,
    /// GraphQL endpoints, matched like `deny` rules, whose operations are read for
    /// `credential_fields`.
    pub graphql_endpoints: Vec<Rule>,
    /// GraphQL fields that hand out a credential usable without the broker.
    pub credential_fields: Vec<String>,
    /// Requests, matched like `deny` rules, whose JSON answers may hold `credential_members`.
    pub member_routes: Vec<Rule>,
    /// JSON members of answers that hold a credential usable without the broker.
    pub credential_members: Arc<[String]>,
    /// Headers naming another path of the provider that a request reads (S3's
    /// `x-amz-copy-source`); policies judge each as a `GET` of that path.
    pub source_headers: Vec<http::HeaderName>,
}

impl Provider {
    /// Whether the answer to a request may hold one of the credential members.
    pub fn answers_with_members(&self, path: &RequestPath) -> bool {
        !self.credential_members.is_empty() && self.member_routes.iter().any(|r| r.catches(path))
    }

    /// Whether a request goes to a GraphQL endpoint whose operations may name a credential
    /// field, and so must be read.
    pub fn reads_graphql(&self, path: &RequestPath) -> bool {
        !self.credential_fields.is_empty() && self.graphql_endpoints.iter().any(|r| r.catches(path))
    }

    /// Every scheme and host the credential may go to: the base URL's, then the extra hosts.
    pub fn hosts(&self) -> Vec<(Scheme, Authority)> {
        std::iter::once((
            self.upstream.scheme.clone(),
            self.upstream.authority.clone(),
        ))
        .chain(
            self.extra_hosts
                .iter()
                .map(|host| (Scheme::HTTPS, host.clone())),
        )
        .collect()
    }
}

/// A provider definition could not be used.
#[derive(Debug, thiserror::Error)]
pub enum ProviderError {
    /// A field of a provider is missing or invalid.
    #[error("provider `{provider}`: `{field}` {why}")]
    Invalid {
        /// The provider.
        provider: String,
        /// The field, as written in the config (e.g. `auth.template`).
        field: String,
        /// What is wrong.
        why: String,
    },
    /// The built-in table does not parse (a build defect, caught by the unit tests).
    #[error("the built-in provider table is malformed: {0}")]
    Table(#[from] Box<toml::de::Error>),
}

/// The providers this broker serves, by name.
#[derive(Debug, Clone)]
pub struct Providers {
    by_name: HashMap<String, Arc<Provider>>,
}

impl Providers {
    /// The built-in table with the config file's entries laid over it (new names add providers).
    pub fn load(config: &BTreeMap<String, ProviderSpec>) -> Result<Self, ProviderError> {
        let mut specs = builtin_specs()?;
        for (name, over) in config {
            let merged = match specs.remove(name) {
                Some(builtin) => builtin.overlay(name, over.clone())?,
                None => over.clone(),
            };
            specs.insert(name.clone(), merged);
        }
        let by_name = specs
            .into_iter()
            .map(|(name, spec)| Ok((name.clone(), Arc::new(spec.build(&name)?))))
            .collect::<Result<_, ProviderError>>()?;
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

    /// Whether `name` is in the built-in table (rather than defined only in the config).
    pub fn is_builtin(name: &str) -> bool {
        builtin_specs().is_ok_and(|specs| specs.contains_key(name))
    }
}

fn builtin_specs() -> Result<BTreeMap<String, ProviderSpec>, ProviderError> {
    toml::from_str(BUILTIN_TABLE).map_err(|e| ProviderError::Table(Box::new(e)))
}

/// Parse and vet a base URL: https anywhere, plain http only to a loopback host.
fn parse_base_url(url: &str) -> Result<Upstream, String> {
    let bad = |why: &str| format!("`{url}` {why}");
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

/// Whether `host` is a literal loopback address, where a plain connection can't be read by
/// anyone else. A name like `localhost` doesn't count: it depends on resolution.
pub fn is_loopback(host: &str) -> bool {
    let host = host.trim_start_matches('[').trim_end_matches(']');
    host.parse::<IpAddr>().is_ok_and(|ip| ip.is_loopback())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load(toml_text: &str) -> Result<Providers, ProviderError> {
        let config: BTreeMap<String, ProviderSpec> = toml::from_str(toml_text).unwrap();
        Providers::load(&config)
    }

    fn with_base(url: &str) -> Result<Providers, ProviderError> {
        load(&format!("[openai]\nbase_url = \"{url}\"\n"))
    }

    fn field_error(toml_text: &str) -> (String, String) {
        match load(toml_text) {
            Err(ProviderError::Invalid {
                provider, field, ..
            }) => (provider, field),
            other => panic!("expected an invalid field, got {other:?}"),
        }
    }

    #[test]
    fn builtins_load_with_https_upstreams() {
        let p = Providers::load(&BTreeMap::new()).unwrap();
        assert_eq!(
            p.names(),
            [
                "anthropic",
                "brave",
                "cloudflare",
                "deepseek",
                "discord",
                "gemini",
                "github",
                "gitlab",
                "gmail",
                "groq",
                "huggingface",
                "linear",
                "mistral",
                "msgraph",
                "notion",
                "openai",
                "openrouter",
                "s3",
                "slack",
                "stripe",
                "telegram",
                "xai"
            ]
        );
        assert!(p.names().iter().all(|n| Providers::is_builtin(n)));
        let groq = p.get("groq").unwrap();
        assert_eq!(groq.upstream.scheme, Scheme::HTTPS);
        assert_eq!(groq.upstream.authority.as_str(), "api.groq.com");
        assert_eq!(groq.upstream.path_prefix, "/openai");
        assert_eq!(
            p.get("gmail").unwrap().auth.describe(),
            "OAuth2 refresh via https://oauth2.googleapis.com/token → Authorization: Bearer <access>"
        );
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
    fn config_entries_override_builtins_field_by_field_or_define_new_providers() {
        let p = load(
            r#"
            [discord]
            http2 = true
            [acme]
            base_url = "https://api.acme.example/v2"
            token_in = [{ in = "header", name = "X-Api-Key" }, { in = "query", param = "api_key" }]
            auth = { scheme = "query", param = "api_key" }
            errors = "message"
            model_in = "body"
            "#,
        )
        .unwrap();
        let discord = p.get("discord").unwrap();
        assert!(discord.http2);
        assert_eq!(discord.auth.describe(), "Authorization: Bot <key>");
        let acme = p.get("acme").unwrap();
        assert_eq!(acme.upstream.path_prefix, "/v2");
        assert_eq!(
            acme.token_sources[0],
            TokenSource::Header {
                name: "x-api-key".to_owned()
            }
        );
        assert_eq!(acme.errors, ErrorShape::Message);
        assert_eq!(acme.model_in, ModelIn::Body);
        assert!(!Providers::is_builtin("acme"));
    }

    #[test]
    fn sigv4_providers_take_tokens_only_from_signatures() {
        let p = load(
            "[minio]\nbase_url = \"https://minio.example\"\nauth = { scheme = \"sigv4\", region = \"eu-1\", service = \"s3\" }\n",
        )
        .unwrap();
        let minio = p.get("minio").unwrap();
        assert_eq!(minio.token_sources, [TokenSource::Sigv4]);
        assert!(minio.auth.signs_requests());
        assert_eq!(minio.auth.describe(), "AWS SigV4 re-signed (s3, eu-1)");
        assert!(minio.auth.accepts("plain-key-value").is_err());
        assert!(
            minio
                .auth
                .accepts(r#"{"access_key_id":"AKID","secret_access_key":"abc/def"}"#)
                .is_ok()
        );
        let ours = |p: &str, f: &str| (p.to_owned(), f.to_owned());
        assert_eq!(
            field_error("[s3]\ntoken_in = [{ in = \"authorization\", scheme = \"Bearer\" }]\n"),
            ours("s3", "token_in")
        );
        assert_eq!(
            field_error("[openai]\ntoken_in = [{ in = \"sigv4\" }]\n"),
            ours("openai", "token_in")
        );
        assert_eq!(
            field_error(
                "[s3]\nauth = { scheme = \"sigv4\", region = \"US East\", service = \"s3\" }\n"
            ),
            ours("s3", "auth.region")
        );
    }

    #[test]
    fn a_builtin_minting_at_a_token_endpoint_moved_off_its_domain_must_name_its_own() {
        let national = "[msgraph]\nbase_url = \"https://graph.microsoft.us\"\n";
        assert_eq!(
            field_error(national),
            ("msgraph".to_owned(), "auth".to_owned())
        );
        let message = load(national).unwrap_err().to_string();
        assert!(
            message.contains("https://login.microsoftonline.com/common/oauth2/v2.0/token"),
            "{message}"
        );
        let own = load(&format!(
            "{national}auth = {{ scheme = \"oauth2\", token_url = \"https://login.microsoftonline.us/common/oauth2/v2.0/token\" }}\n"
        ))
        .unwrap();
        assert!(
            own.get("msgraph")
                .unwrap()
                .auth
                .describe()
                .contains("https://login.microsoftonline.us/")
        );
        for (entry, host) in [
            ("gmail", "http://127.0.0.1:9000"),
            ("gmail", "https://googleapis.com.example"),
            ("msgraph", "https://evilmicrosoft.com"),
        ] {
            assert!(
                load(&format!("[{entry}]\nbase_url = \"{host}\"\n")).is_err(),
                "{entry} at {host}"
            );
        }
        // Other Google APIs share Google's token endpoint; a new path is no new service.
        for (entry, url) in [
            ("gmail", "https://www.googleapis.com"),
            ("gmail", "https://gmail.googleapis.com/prefix"),
            ("msgraph", "https://canary.graph.microsoft.com"),
        ] {
            let p = load(&format!("[{entry}]\nbase_url = \"{url}\"\n")).unwrap();
            assert!(p.get(entry).unwrap().auth.describe().starts_with("OAuth2"));
        }
    }

    #[test]
    fn invalid_entries_name_the_provider_and_the_field() {
        let ours = |p: &str, f: &str| (p.to_owned(), f.to_owned());
        assert_eq!(
            field_error("[nope]\nhttp2 = true\n"),
            ours("nope", "base_url")
        );
        assert_eq!(
            field_error("[acme]\nbase_url = \"https://a.example\"\n"),
            ours("acme", "auth")
        );
        let with_auth = |auth: &str| {
            field_error(&format!(
                "[acme]\nbase_url = \"https://a.example\"\nauth = {auth}\n"
            ))
        };
        assert_eq!(
            with_auth(r#"{ scheme = "header", name = "x-key", template = "Key" }"#),
            ours("acme", "auth.template")
        );
        assert_eq!(
            with_auth(r#"{ scheme = "header", name = "bad name" }"#),
            ours("acme", "auth.name")
        );
        assert_eq!(
            with_auth(r#"{ scheme = "basic" }"#),
            ours("acme", "auth.user")
        );
        assert_eq!(
            with_auth(r#"{ scheme = "path", prefix = "b/t" }"#),
            ours("acme", "auth.prefix")
        );
        assert_eq!(
            with_auth(r#"{ scheme = "oauth2", token_url = "http://oauth.example/token" }"#),
            ours("acme", "auth.token_url")
        );
        assert_eq!(
            with_auth(
                r#"{ scheme = "oauth2", token_url = "https://oauth.example/token", scope = "a  b" }"#
            ),
            ours("acme", "auth.scope")
        );
        assert_eq!(
            with_auth(
                r#"{ scheme = "oauth2", token_url = "https://oauth.example/token", token_lifetime = "0s" }"#
            ),
            ours("acme", "auth.token_lifetime")
        );
        assert_eq!(
            field_error("[s3]\nsource_headers = [\"x amz\"]\n"),
            ours("s3", "source_headers")
        );
        assert_eq!(
            field_error("[Acme]\nbase_url = \"https://a.example\"\n"),
            ours("Acme", "name")
        );
        assert_eq!(
            field_error("[slack]\ntoken_in = [{ in = \"query\", param = \"\" }]\n"),
            ours("slack", "token_in.param")
        );
        for after in ["\"..\"", "\"a/b\"", "\"\""] {
            assert_eq!(
                field_error(&format!(
                    "[telegram]\ntoken_in = [{{ in = \"path\", prefix = \"bot\", after = [{after}] }}]\n"
                )),
                ours("telegram", "token_in.after")
            );
        }
        assert_eq!(
            field_error("[openai]\nbase_url = \"http://example.com\"\n"),
            ours("openai", "base_url")
        );
        assert_eq!(
            field_error("[gitlab]\ncredential_fields = [\"runner-create\"]\n"),
            ours("gitlab", "credential_fields")
        );
        assert_eq!(
            field_error("[gitlab]\ngraphql_endpoints = []\n"),
            ours("gitlab", "credential_fields")
        );
        let message = with_base("http://example.com").unwrap_err().to_string();
        assert!(
            message.contains("provider `openai`") && message.contains("plain http"),
            "{message}"
        );
        // Unknown keys and schemes are the TOML parser's to refuse.
        assert!(
            toml::from_str::<BTreeMap<String, ProviderSpec>>("[a]\nauth = { scheme = \"magic\" }")
                .is_err()
        );
        assert!(toml::from_str::<BTreeMap<String, ProviderSpec>>("[a]\nbase = \"x\"").is_err());
        assert!(
            toml::from_str::<BTreeMap<String, ProviderSpec>>(
                "[a]\nauth = { scheme = \"query\", param = \"k\", extra = 1 }"
            )
            .is_err()
        );
        assert!(
            toml::from_str::<BTreeMap<String, ProviderSpec>>(
                "[a]\nauth = { scheme = \"oauth2\", token_url = \"https://o.example\", client_auth = \"jwt\" }"
            )
            .is_err()
        );
        assert!(
            toml::from_str::<BTreeMap<String, ProviderSpec>>(
                "[a]\nauth = { scheme = \"oauth2\", token_url = \"https://o.example\", extra = 1 }"
            )
            .is_err()
        );
    }

    fn request(method: &str, path: &str) -> RequestPath {
        RequestPath::new(&http::Method::from_bytes(method.as_bytes()).unwrap(), path)
    }

    #[test]
    fn credential_routes_catch_every_spelling_and_nothing_else() {
        let p = Providers::load(&BTreeMap::new()).unwrap();
        let caught = |provider: &str, method: &str, path: &str| {
            let request = request(method, path);
            p.get(provider)
                .unwrap()
                .credential_routes
                .iter()
                .any(|r| r.catches(&request))
        };
        for (provider, method, path) in [
            ("openai", "POST", "/v1/realtime/client_secrets"),
            ("openai", "POST", "/v1/Realtime/Sessions/"),
            (
                "openai",
                "POST",
                "/v1/organization/projects/proj_1/service_accounts",
            ),
            ("openai", "POST", "/v1/chatkit/sessions"),
            ("gemini", "POST", "/v1alpha/auth_tokens"),
            ("github", "POST", "/repos/acme/widgets/keys"),
            // GitHub serves every repository route by the repository's id too.
            ("github", "POST", "/repositories/1296269/keys"),
            (
                "github",
                "POST",
                "/enterprises/acme/actions/runners/registration-token",
            ),
            (
                "github",
                "POST",
                "/enterprises/acme/actions/runners/generate-jitconfig",
            ),
            (
                "github",
                "POST",
                "/orgs/acme/actions/runners/registration-token",
            ),
            (
                "gitlab",
                "POST",
                "/api/v4/personal_access_tokens/self/rotate",
            ),
            ("gitlab", "POST", "/api/v4/user/personal_access_tokens"),
            (
                "gitlab",
                "POST",
                "/api/v4/projects/acme%2Fwidgets/access_tokens",
            ),
            ("gitlab", "POST", "/api/v4/groups/7/access_tokens/3/rotate"),
            ("gitlab", "POST", "/api/v4/projects/7/deploy_tokens"),
            // A trigger token is shown in full to the user who made it, whenever read.
            ("gitlab", "GET", "/api/v4/projects/7/triggers"),
            ("gitlab", "GET", "/api/v4/projects/7/triggers/3"),
            ("gitlab", "PUT", "/api/v4/projects/7/triggers/3"),
            (
                "gitlab",
                "POST",
                "/api/v4/runners/12/reset_authentication_token",
            ),
            (
                "gitlab",
                "POST",
                "/api/v4/groups/7/runners/reset_registration_token",
            ),
            ("cloudflare", "PUT", "/client/v4/user/tokens/abc/value"),
            ("stripe", "POST", "/v1/ephemeral_keys"),
            ("stripe", "POST", "/v1/terminal/connection_tokens"),
            ("discord", "POST", "/v10/channels/123/webhooks"),
            // Reading or editing a webhook answers with its token too.
            ("discord", "GET", "/v10/channels/123/webhooks"),
            ("discord", "GET", "/v10/guilds/123/webhooks"),
            ("discord", "HEAD", "/webhooks/456"),
            ("discord", "PATCH", "/v10/webhooks/456"),
            (
                "cloudflare",
                "POST",
                "/client/v4/accounts/abc/access/service_tokens/def/rotate",
            ),
            (
                "gitlab",
                "POST",
                "/api/v4/projects/7/cluster_agents/3/tokens",
            ),
            (
                "msgraph",
                "POST",
                "/v1.0/applications/00000000-1/addPassword",
            ),
            (
                "msgraph",
                "POST",
                "/v1.0/applications(appId='1')/addPassword",
            ),
            // OData also names an action by its namespace, as Graph's own OpenAPI paths do.
            (
                "msgraph",
                "POST",
                "/v1.0/applications/00000000-1/microsoft.graph.addPassword",
            ),
            (
                "msgraph",
                "POST",
                "/beta/servicePrincipals/00000000-1/Microsoft.Graph.AddKey",
            ),
            // A JSON batch carries requests to any path, addPassword's among them.
            ("msgraph", "POST", "/v1.0/$batch"),
            ("msgraph", "POST", "/beta/%24batch"),
            ("slack", "POST", "/apps.manifest.create"),
            ("slack", "GET", "/apps.connections.open"),
            ("slack", "POST", "/rtm.connect"),
            ("slack", "POST", "/tooling.tokens.rotate"),
            ("slack", "POST", "/oauth.v2.exchange"),
        ] {
            assert!(
                caught(provider, method, path),
                "{provider}: {method} {path}"
            );
        }
        for (provider, method, path) in [
            ("openai", "POST", "/v1/chat/completions"),
            ("openai", "POST", "/v1/realtime/calls"),
            ("openai", "POST", "/v1/chatkit/sessions/cksess_1/cancel"),
            ("github", "GET", "/user/keys"),
            ("gitlab", "GET", "/api/v4/personal_access_tokens"),
            ("gitlab", "POST", "/api/v4/projects/7/trigger/pipeline"),
            ("gitlab", "DELETE", "/api/v4/projects/7/triggers/3"),
            ("cloudflare", "GET", "/client/v4/user/tokens/verify"),
            ("discord", "POST", "/v10/channels/123/messages"),
            ("discord", "GET", "/v10/channels/123/messages"),
            ("discord", "DELETE", "/v10/webhooks/456"),
            ("stripe", "POST", "/v1/payment_intents"),
            ("anthropic", "POST", "/v1/messages"),
            (
                "msgraph",
                "POST",
                "/v1.0/servicePrincipals/00000000-1/addPasswordSingleSignOnCredentials",
            ),
            ("slack", "POST", "/chat.postMessage"),
            ("slack", "POST", "/apps.manifest.validate"),
        ] {
            assert!(
                !caught(provider, method, path),
                "{provider}: {method} {path}"
            );
        }
    }

    #[test]
    fn graphql_endpoints_are_read_in_every_spelling_and_only_there() {
        let p = Providers::load(&BTreeMap::new()).unwrap();
        let reads = |provider: &str, method: &str, path: &str| {
            p.get(provider)
                .unwrap()
                .reads_graphql(&request(method, path))
        };
        for (provider, method, path) in [
            ("gitlab", "POST", "/api/graphql"),
            ("gitlab", "GET", "/api/graphql"),
            ("gitlab", "POST", "/api/GraphQL/"),
            ("gitlab", "POST", "/api/graphql;x"),
            ("gitlab", "POST", "/api/graphql.json"),
            ("gitlab", "GET", "/-/cable"),
            ("linear", "POST", "/graphql"),
        ] {
            assert!(reads(provider, method, path), "{provider}: {method} {path}");
        }
        for (provider, method, path) in [
            ("gitlab", "POST", "/api/v4/projects"),
            ("gitlab", "POST", "/api/graphql-explorer"),
            // GitHub's GraphQL API has no mutation that answers with a credential.
            ("github", "POST", "/graphql"),
            ("openai", "POST", "/graphql"),
        ] {
            assert!(
                !reads(provider, method, path),
                "{provider}: {method} {path}"
            );
        }
        // A config entry replaces the list; `[]` turns the check off.
        let off = load("[gitlab]\ncredential_fields = []\n").unwrap();
        let graphql = RequestPath::new(&http::Method::POST, "/api/graphql");
        assert!(!off.get("gitlab").unwrap().reads_graphql(&graphql));
    }

    #[test]
    fn any_s3_api_names_its_copy_source_unless_its_entry_says_otherwise() {
        let sigv4 = |service: &str, extra: &str| {
            format!(
                "[store]\nbase_url = \"https://store.example\"\ntoken_in = [{{ in = \"sigv4\" }}]\n\
                 auth = {{ scheme = \"sigv4\", region = \"eu-west-1\", service = \"{service}\" }}\n{extra}"
            )
        };
        let copy_source = [http::HeaderName::from_static("x-amz-copy-source")];
        let headers = |toml: &str| {
            load(toml)
                .unwrap()
                .get("store")
                .unwrap()
                .source_headers
                .clone()
        };
        assert_eq!(headers(&sigv4("s3", "")), copy_source);
        assert_eq!(
            load("").unwrap().get("s3").unwrap().source_headers,
            copy_source
        );
        assert!(headers(&sigv4("execute-api", "")).is_empty());
        assert!(headers(&sigv4("s3", "source_headers = []\n")).is_empty());
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
        let batch = serde_json::json!({"requests": [
            {"params": {"model": "claude-haiku-4-5"}},
            {"model": "models/text-embedding-004"},
        ]});
        assert_eq!(
            gemini.find("/v1beta/models/x:batchEmbedContents", Some(&batch)),
            Ok(vec!["x", "claude-haiku-4-5", "text-embedding-004"])
        );
        let odd = serde_json::json!({"requests": [{"params": {"model": 1}}]});
        assert_eq!(
            ModelIn::Body.find("/v1/x", Some(&odd)),
            Err(UnreadableModel)
        );
    }
}
