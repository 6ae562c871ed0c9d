//! A provider as written in TOML: the built-in table and `[providers.NAME]` in the config
//! file share this shape, so a config entry can override a built-in field by field or define
//! a new provider completely.

use http::Uri;
use serde::Deserialize;

use super::auth::{AuthScheme, TokenSource};
use super::{ErrorShape, ModelIn, Provider, ProviderError, parse_base_url};
use crate::policy::{Rule, graphql};
use crate::tokens::is_provider_name;

/// One `[providers.NAME]` entry; every field is optional so an entry can override a built-in.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProviderSpec {
    /// The upstream base URL (https, or http to a loopback address); a path prefix is kept.
    pub base_url: Option<String>,
    /// Offer HTTP/2 to this upstream (default: HTTP/1.1 keep-alive).
    pub http2: Option<bool>,
    /// Where the agent's token is looked for, in order (default: `Authorization: Bearer`).
    pub token_in: Option<Vec<TokenSource>>,
    /// How the real credential goes upstream.
    pub auth: Option<AuthScheme>,
    /// The JSON shape of the broker's own errors for this provider (default `openai`).
    pub errors: Option<ErrorShape>,
    /// Where requests name their model, for `models` policies (default `nowhere`).
    pub model_in: Option<ModelIn>,
    /// Whether streamed requests must ask for usage (`stream_options.include_usage`).
    pub stream_usage_opt_in: Option<bool>,
    /// Further hosts (`host` or `host:port`, https) where the forward proxy may put the
    /// credential in place of the token, besides the base URL's (e.g. `github.com` for git).
    pub hosts: Option<Vec<String>>,
    /// Whether the forward proxy may put the credential in place of a token in a key or
    /// token field of a form or JSON body (as Slack takes `token=`).
    pub body_placeholders: Option<bool>,
    /// Requests that hand out a credential usable without the broker (an API key, an SSH
    /// key, a runner token), refused unless a root policy sets `mint_credentials = true`.
    pub credential_routes: Option<Vec<Rule>>,
    /// Whether the upstream reads `%2F` as part of a path segment (GitLab's project paths),
    /// so agents may send it.
    pub encoded_slashes: Option<bool>,
    /// The provider's GraphQL endpoints (`* /api/graphql`), matched like `deny` rules, whose
    /// operations are read for `credential_fields`.
    pub graphql_endpoints: Option<Vec<Rule>>,
    /// GraphQL fields (mutations, or fields a query reads) that hand out a credential usable
    /// without the broker, refused at `graphql_endpoints` like `credential_routes`.
    pub credential_fields: Option<Vec<String>>,
    /// Requests (matched like `deny` rules) whose JSON answers may hold `credential_members`.
    pub member_routes: Option<Vec<Rule>>,
    /// JSON members of answers to `member_routes` that hold a credential usable without the
    /// broker (GitLab's `runners_token`), withheld unless a root policy sets
    /// `mint_credentials = true`.
    pub credential_members: Option<Vec<String>>,
    /// Headers naming another path of the provider that a request reads (S3's
    /// `x-amz-copy-source: /bucket/key`), judged by policies as a `GET` of that path.
    pub source_headers: Option<Vec<String>>,
}

impl ProviderSpec {
    /// This spec with every field `over` sets replaced by `over`'s value; a new `base_url`
    /// also replaces the hosts unless `over` names them, and needs `auth` if the built-in's
    /// mints at a token endpoint and the new host is off the built-in's domain.
    pub fn overlay(self, name: &str, over: ProviderSpec) -> Result<ProviderSpec, ProviderError> {
        // A token endpoint serves its own cloud: msgraph moved to a national cloud would
        // send its client secret and refresh token to the public one.
        if let (Some(moved), None, Some(AuthScheme::Oauth2(grant)), Some(builtin)) =
            (&over.base_url, &over.auth, &self.auth, &self.base_url)
            && !on_same_domain(builtin, moved)
        {
            return Err(ProviderError::Invalid {
                provider: name.to_owned(),
                field: "auth".to_owned(),
                why: format!(
                    "must be given with a base_url off `{builtin}`'s domain: the built-in \
                     token endpoint `{}` serves only that service",
                    grant.token_url
                ),
            });
        }
        // A built-in's hosts belong to its service (`github.com` to api.github.com): a
        // provider moved to another server (GitHub Enterprise) must not send its key there.
        let hosts = match &over.base_url {
            Some(_) => over.hosts,
            None => over.hosts.or(self.hosts),
        };
        Ok(ProviderSpec {
            base_url: over.base_url.or(self.base_url),
            http2: over.http2.or(self.http2),
            token_in: over.token_in.or(self.token_in),
            auth: over.auth.or(self.auth),
            errors: over.errors.or(self.errors),
            model_in: over.model_in.or(self.model_in),
            stream_usage_opt_in: over.stream_usage_opt_in.or(self.stream_usage_opt_in),
            hosts,
            body_placeholders: over.body_placeholders.or(self.body_placeholders),
            credential_routes: over.credential_routes.or(self.credential_routes),
            encoded_slashes: over.encoded_slashes.or(self.encoded_slashes),
            graphql_endpoints: over.graphql_endpoints.or(self.graphql_endpoints),
            credential_fields: over.credential_fields.or(self.credential_fields),
            member_routes: over.member_routes.or(self.member_routes),
            credential_members: over.credential_members.or(self.credential_members),
            source_headers: over.source_headers.or(self.source_headers),
        })
    }

    /// Check every field and make the provider; errors name the provider and the field.
    pub fn build(self, name: &str) -> Result<Provider, ProviderError> {
        let invalid = |field: &str, why: String| ProviderError::Invalid {
            provider: name.to_owned(),
            field: field.to_owned(),
            why,
        };
        if !is_provider_name(name) {
            return Err(invalid(
                "name",
                "must be 1-32 lowercase letters, digits or `-` (it appears in tokens and paths)"
                    .to_owned(),
            ));
        }
        let url = self.base_url.ok_or_else(|| {
            invalid(
                "base_url",
                "is required for a provider that is not built in".to_owned(),
            )
        })?;
        let upstream = parse_base_url(&url).map_err(|why| invalid("base_url", why))?;
        let mut auth = self.auth.ok_or_else(|| {
            invalid(
                "auth",
                "is required for a provider that is not built in".to_owned(),
            )
        })?;
        auth.validate()
            .map_err(|(field, why)| invalid(&format!("auth.{field}"), why))?;
        let mut token_sources = self.token_in.unwrap_or_else(|| {
            vec![if auth.signs_requests() {
                TokenSource::Sigv4
            } else {
                TokenSource::Authorization {
                    scheme: "Bearer".to_owned(),
                }
            }]
        });
        // A signature can only be checked with a token the broker can recompute, and such
        // a token must not also work as a plain bearer key.
        if auth.signs_requests() != (token_sources == [TokenSource::Sigv4]) {
            return Err(invalid(
                "token_in",
                "must be `[{ in = \"sigv4\" }]` exactly when auth is `sigv4`".to_owned(),
            ));
        }
        if token_sources.is_empty() {
            return Err(invalid(
                "token_in",
                "must name at least one place".to_owned(),
            ));
        }
        for source in &mut token_sources {
            source
                .validate()
                .map_err(|(field, why)| invalid(&format!("token_in.{field}"), why))?;
        }
        if token_sources
            .iter()
            .filter(|s| matches!(s, TokenSource::Path { .. }))
            .count()
            > 1
        {
            return Err(invalid(
                "token_in",
                "may have only one `path` source (a token has one place in the path)".to_owned(),
            ));
        }
        let extra_hosts = self
            .hosts
            .unwrap_or_default()
            .iter()
            .map(|host| {
                host.parse::<http::uri::Authority>()
                    .ok()
                    .filter(|a| !a.as_str().contains('@') && !a.host().is_empty())
                    .ok_or_else(|| invalid("hosts", format!("`{host}` is not a host or host:port")))
            })
            .collect::<Result<_, _>>()?;
        let graphql_endpoints = self.graphql_endpoints.unwrap_or_default();
        let credential_fields = self.credential_fields.unwrap_or_default();
        if let Some(bad) = credential_fields.iter().find(|f| !graphql::is_name(f)) {
            return Err(invalid(
                "credential_fields",
                format!("`{bad}` is not a GraphQL name"),
            ));
        }
        if !credential_fields.is_empty() && graphql_endpoints.is_empty() {
            return Err(invalid(
                "credential_fields",
                "needs `graphql_endpoints`, the paths whose operations name them".to_owned(),
            ));
        }
        let member_routes = self.member_routes.unwrap_or_default();
        let credential_members = self.credential_members.unwrap_or_default();
        if credential_members.iter().any(String::is_empty) {
            return Err(invalid(
                "credential_members",
                "names a member with an empty name".to_owned(),
            ));
        }
        if !credential_members.is_empty() && member_routes.is_empty() {
            return Err(invalid(
                "credential_members",
                "needs `member_routes`, the requests whose answers hold them".to_owned(),
            ));
        }
        // S3's API, wherever it is served (MinIO, R2): a copy names the object it reads.
        let s3 = matches!(&auth, AuthScheme::Sigv4 { service, .. } if service == "s3");
        let source_headers = self
            .source_headers
            .unwrap_or_else(|| {
                if s3 {
                    vec!["x-amz-copy-source".to_owned()]
                } else {
                    Vec::new()
                }
            })
            .iter()
            .map(|name| {
                http::HeaderName::from_bytes(name.as_bytes()).map_err(|_| {
                    invalid("source_headers", format!("`{name}` is not a header name"))
                })
            })
            .collect::<Result<_, _>>()?;
        Ok(Provider {
            name: name.to_owned(),
            upstream,
            token_sources,
            auth,
            errors: self.errors.unwrap_or(ErrorShape::OpenAi),
            http2: self.http2.unwrap_or(false),
            model_in: self.model_in.unwrap_or(ModelIn::Nowhere),
            stream_usage_opt_in: self.stream_usage_opt_in.unwrap_or(false),
            extra_hosts,
            body_placeholders: self.body_placeholders.unwrap_or(false),
            credential_routes: self.credential_routes.unwrap_or_default(),
            encoded_slashes: self.encoded_slashes.unwrap_or(false),
            graphql_endpoints,
            credential_fields,
            member_routes,
            credential_members: credential_members.into(),
            source_headers,
        })
    }
}

/// Whether `moved`'s host is `builtin`'s or shares its parent domain (`www.googleapis.com`
/// beside `gmail.googleapis.com`), where the built-in's token endpoint still applies.
fn on_same_domain(builtin: &str, moved: &str) -> bool {
    let host = |url: &str| {
        url.parse::<Uri>()
            .ok()
            .and_then(|uri| uri.host().map(str::to_ascii_lowercase))
    };
    let (Some(builtin), Some(moved)) = (host(builtin), host(moved)) else {
        return false;
    };
    let domain = builtin
        .split_once('.')
        .map(|(_, parent)| parent)
        .filter(|parent| parent.contains('.'));
    moved == builtin
        || domain.is_some_and(|domain| {
            moved
                .strip_suffix(domain)
                .is_some_and(|label| label.ends_with('.'))
        })
}
