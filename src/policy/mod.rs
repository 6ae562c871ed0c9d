//! Policy: what a token may do, at what rate, for how long.
//!
//! A token's effective policy is a chain: its own spec and named policy, then its parent's,
//! and so on up. A request must pass every link, and every link's limits are charged, so a
//! child token can only ever narrow what its parent may do.

mod body;
pub mod graphql;
mod leases;
pub mod limits;
mod rules;
pub mod usage;

use std::num::NonZeroU32;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_json::Value;

pub use body::BodyRule;
pub use rules::{RequestPath, Rule};

use crate::store::TokenRecord;

/// A policy as written in a TOML file (or JSON for the agent-facing derive endpoint).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PolicySpec {
    /// Requests allowed; absent means every path of the provider.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub allow: Option<Vec<Rule>>,
    /// Requests refused; deny wins over allow.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub deny: Vec<Rule>,
    /// Requests held until a person approves them.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub require_approval: Vec<Rule>,
    /// Model names allowed (LLM providers).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub models: Option<Vec<String>>,
    /// Limits on JSON fields of the request body.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub body: Vec<BodyRule>,
    /// Requests per minute (bursts up to this many, refilled evenly).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rpm: Option<NonZeroU32>,
    /// Requests in flight at once.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub concurrency: Option<NonZeroU32>,
    /// Requests per UTC day.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub daily_requests: Option<u64>,
    /// LLM tokens per UTC day, counted from the provider's reported usage.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub daily_tokens: Option<u64>,
    /// Lifetime from when the policy is applied (`8h`, `30m`).
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        with = "humantime_serde"
    )]
    pub ttl: Option<Duration>,
    /// Absolute expiry (RFC 3339).
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        with = "rfc3339_option"
    )]
    pub expires_at: Option<i64>,
    /// Capabilities the token may invoke (see [`check_capability`]); absent here means this
    /// policy adds no restriction, but only a root token's policy can grant one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub capabilities: Option<Vec<String>>,
    /// Whether the token may call a provider's credential routes, which hand out a credential
    /// usable without the broker (see [`check_credential_route`]); granted like capabilities.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mint_credentials: Option<bool>,
}

impl PolicySpec {
    /// Parse a TOML policy; errors name the line and the reason.
    pub fn from_toml(text: &str) -> Result<Self, String> {
        toml::from_str(text).map_err(|e| e.to_string())
    }

    /// The expiry this spec sets when applied at `now`: the earlier of `ttl` and `expires_at`.
    pub fn expiry_from(&self, now: i64) -> Option<i64> {
        let from_ttl = self
            .ttl
            .map(|ttl| now.saturating_add(i64::try_from(ttl.as_secs()).unwrap_or(i64::MAX)));
        match (from_ttl, self.expires_at) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// Whether checking this spec needs the request's JSON body.
    pub fn needs_body(&self, model_in_body: bool) -> bool {
        !self.body.is_empty() || (self.models.is_some() && model_in_body)
    }

    /// Check a spec meant to be shared by many tokens under a name: lifetimes belong to a
    /// token (its own policy or `--ttl`), since a shared one would end at a different moment
    /// for each.
    pub fn check_shareable(&self) -> Result<(), String> {
        if self.ttl.is_some() || self.expires_at.is_some() {
            return Err(
                "a named policy can't set `ttl` or `expires_at`; give each token its \
                 lifetime with `seks token create --ttl` or in its own policy"
                    .to_owned(),
            );
        }
        Ok(())
    }

    /// Whether this spec sets any rate, concurrency or budget limit.
    pub fn has_limits(&self) -> bool {
        self.rpm.is_some()
            || self.concurrency.is_some()
            || self.daily_requests.is_some()
            || self.daily_tokens.is_some()
    }
}

/// What policy learned about a request, read once and checked against every link.
#[derive(Debug)]
pub struct RequestFacts<'a> {
    /// Method and path.
    pub path: &'a RequestPath,
    /// Every model the request names.
    pub models: &'a [&'a str],
    /// The parsed JSON body, when some rule needed it.
    pub body: Option<&'a Value>,
}

/// Why policy refused a request.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum Denial {
    /// The token (or an ancestor) was revoked at this time.
    #[error("token was revoked")]
    Revoked(i64),
    /// The token (or an ancestor) expired at this time.
    #[error("token has expired")]
    Expired(i64),
    /// No allow rule matches.
    #[error("{method} {path} is not in this token's allow list")]
    NotAllowed {
        /// Request method.
        method: String,
        /// Request path.
        path: String,
    },
    /// A deny rule matches.
    #[error("{method} {path} is refused by the policy rule `deny: {rule}`")]
    Denied {
        /// Request method.
        method: String,
        /// Request path.
        path: String,
        /// The matching rule.
        rule: String,
    },
    /// The model is not allowed.
    #[error("model `{model}` is not allowed by this token's policy (allowed: {allowed})")]
    Model {
        /// The requested model.
        model: String,
        /// The allowed models.
        allowed: String,
    },
    /// A body rule fails.
    #[error("the request body breaks the policy rule `{rule}`: {why}")]
    Body {
        /// The rule.
        rule: String,
        /// What is wrong.
        why: String,
    },
    /// The capability is not granted to the token.
    #[error("this token's policy does not list the capability `{0}`")]
    Capability(String),
    /// The request would hand out a credential usable without the broker.
    #[error(
        "{method} {path} hands out a credential usable without the broker (the provider's \
         credential route `{rule}`); a root policy must set `mint_credentials = true` to allow it"
    )]
    MintsCredential {
        /// Request method.
        method: String,
        /// Request path.
        path: String,
        /// The provider's credential route it matches.
        rule: String,
    },
    /// The GraphQL request names a field that hands out a credential usable without the broker.
    #[error(
        "{method} {path}: the GraphQL field `{field}` hands out a credential usable without the \
         broker (one of the provider's `credential_fields`); a root policy must set \
         `mint_credentials = true` to allow it"
    )]
    MintsCredentialField {
        /// Request method.
        method: String,
        /// Request path.
        path: String,
        /// The provider's credential field it names.
        field: String,
    },
}

/// The outcome of checking a request's path, model and body against one spec.
#[derive(Debug, PartialEq)]
pub enum Verdict {
    /// Go ahead.
    Allow,
    /// Hold for approval under this rule.
    Approve(String),
}

/// Check that a token is alive at Unix time `now`.
pub fn check_lifetime(token: &TokenRecord, now: i64) -> Result<(), Denial> {
    if let Some(at) = token.revoked_at {
        return Err(Denial::Revoked(at));
    }
    match token.expires_at {
        Some(at) if now >= at => Err(Denial::Expired(at)),
        _ => Ok(()),
    }
}

/// Check a request against one spec's rules (not its limits).
pub fn check_request(spec: &PolicySpec, facts: &RequestFacts<'_>) -> Result<Verdict, Denial> {
    let verdict = check_path(spec, facts.path)?;
    if let Some(allowed) = &spec.models
        && let Some(model) = facts
            .models
            .iter()
            .find(|m| !allowed.iter().any(|a| a == *m))
    {
        return Err(Denial::Model {
            model: (*model).to_owned(),
            allowed: allowed.join(", "),
        });
    }
    if !spec.body.is_empty() {
        let body = facts.body.unwrap_or(&Value::Null);
        for rule in &spec.body {
            rule.check(body).map_err(|why| Denial::Body {
                rule: rule.to_string(),
                why,
            })?;
        }
    }
    Ok(verdict)
}

/// Check a method and path against a policy's path rules alone (`deny`, `allow`,
/// `require_approval`): how a path a request reads besides its own (an S3 copy source) is
/// judged.
pub fn check_path(spec: &PolicySpec, path: &RequestPath) -> Result<Verdict, Denial> {
    if let Some(rule) = spec.deny.iter().find(|r| r.catches(path)) {
        return Err(Denial::Denied {
            method: path.method().to_string(),
            path: path.path().to_owned(),
            rule: rule.to_string(),
        });
    }
    if let Some(allow) = &spec.allow
        && !allow.iter().any(|r| r.allows(path))
    {
        return Err(Denial::NotAllowed {
            method: path.method().to_string(),
            path: path.path().to_owned(),
        });
    }
    Ok(
        match spec.require_approval.iter().find(|r| r.catches(path)) {
            Some(rule) => Verdict::Approve(rule.to_string()),
            None => Verdict::Allow,
        },
    )
}

/// Check that a token chain may invoke capability `name`. `root` holds the policies of the
/// token the operator minted (the end of the chain), `derived` those of its descendants.
///
/// Capabilities are granted explicitly, by a root policy that lists the name; a derived
/// token's list can only narrow that (every policy with a list must name it). A child's
/// own list grants nothing, so an agent can't give itself a capability by deriving a token.
pub fn check_capability(
    name: &str,
    root: &[&PolicySpec],
    derived: &[&PolicySpec],
) -> Result<(), Denial> {
    let lists = |s: &PolicySpec| {
        s.capabilities
            .as_ref()
            .map(|list| list.iter().any(|c| c == name))
    };
    if root_grants(root, derived, lists) {
        Ok(())
    } else {
        Err(Denial::Capability(name.to_owned()))
    }
}

/// Check that a token chain may make a request that matches `route`, one of its provider's
/// credential routes. Like a capability, this is granted only by a root policy
/// (`mint_credentials = true`), and any policy of the chain can take it away.
pub fn check_credential_route(
    route: &Rule,
    path: &RequestPath,
    root: &[&PolicySpec],
    derived: &[&PolicySpec],
) -> Result<(), Denial> {
    if may_mint_credentials(root, derived) {
        Ok(())
    } else {
        Err(Denial::MintsCredential {
            method: path.method().to_string(),
            path: path.path().to_owned(),
            rule: route.to_string(),
        })
    }
}

/// Whether a token chain may make requests that hand out a credential usable without the
/// broker: granted by a root policy, and taken away by any policy of the chain.
pub fn may_mint_credentials(root: &[&PolicySpec], derived: &[&PolicySpec]) -> bool {
    root_grants(root, derived, |s| s.mint_credentials)
}

/// Whether a root policy grants what `says` reads (`Some(true)`) and no policy of the chain
/// refuses it (`Some(false)`); `None` adds nothing either way.
fn root_grants(
    root: &[&PolicySpec],
    derived: &[&PolicySpec],
    says: impl Fn(&PolicySpec) -> Option<bool>,
) -> bool {
    root.iter().any(|s| says(s) == Some(true))
        && !root.iter().chain(derived).any(|s| says(s) == Some(false))
}

/// Serde helpers for `Option<i64>` Unix time as RFC 3339 text.
mod rfc3339_option {
    use serde::{Deserialize, Deserializer, Serializer};
    use time::OffsetDateTime;
    use time::format_description::well_known::Rfc3339;

    pub fn serialize<S: Serializer>(t: &Option<i64>, s: S) -> Result<S::Ok, S::Error> {
        match t {
            Some(t) => s.serialize_str(&crate::clock::format(*t)),
            None => s.serialize_none(),
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<i64>, D::Error> {
        let text = String::deserialize(d)?;
        OffsetDateTime::parse(&text, &Rfc3339)
            .map(|t| Some(t.unix_timestamp()))
            .map_err(|e| {
                serde::de::Error::custom(format!("expires_at `{text}` is not RFC 3339: {e}"))
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::Method;
    use serde_json::json;

    const EXAMPLE: &str = r#"
allow = ["POST /v1/chat/completions", "GET /v1/models"]
deny = ["* /v1/files/**"]
require_approval = ["POST /v1/images/generations"]
models = ["gpt-4o-mini"]
body = [{ pointer = "/max_tokens", max = 4096 }]
rpm = 60
concurrency = 4
daily_tokens = 200000
ttl = "8h"
"#;

    fn facts<'a>(
        path: &'a RequestPath,
        models: &'a [&'a str],
        body: Option<&'a Value>,
    ) -> RequestFacts<'a> {
        RequestFacts { path, models, body }
    }

    #[test]
    fn the_example_policy_parses_and_round_trips_through_json() {
        let spec = PolicySpec::from_toml(EXAMPLE).unwrap();
        assert_eq!(spec.rpm.map(NonZeroU32::get), Some(60));
        assert_eq!(spec.expiry_from(100), Some(100 + 8 * 3600));
        let json = serde_json::to_string(&spec).unwrap();
        assert_eq!(serde_json::from_str::<PolicySpec>(&json).unwrap(), spec);
    }

    #[test]
    fn errors_name_the_line_and_the_reason() {
        let err = PolicySpec::from_toml("allow = [\"GET /v1/models\"]\nrpn = 5\n").unwrap_err();
        assert!(err.contains("line 2") && err.contains("rpn"), "{err}");
        let err = PolicySpec::from_toml("deny = [\"get /x\"]\n").unwrap_err();
        assert!(
            err.contains("line 1") && err.contains("upper case"),
            "{err}"
        );
        assert!(PolicySpec::from_toml("rpm = 0\n").is_err());
        assert!(PolicySpec::from_toml("ttl = \"soon\"\n").is_err());
    }

    #[test]
    fn capabilities_are_granted_by_the_root_and_only_narrowed_below() {
        let list = |names: &[&str]| PolicySpec {
            capabilities: Some(names.iter().map(|n| (*n).to_owned()).collect()),
            ..PolicySpec::default()
        };
        let (both, one, none, silent) = (
            list(&["a", "b"]),
            list(&["a"]),
            list(&[]),
            PolicySpec::default(),
        );
        assert_eq!(check_capability("a", &[&both], &[]), Ok(()));
        assert_eq!(
            check_capability("a", &[&silent, &both], &[&silent, &one]),
            Ok(())
        );
        assert!(
            check_capability("b", &[&both], &[&one]).is_err(),
            "narrowed by the child"
        );
        assert!(check_capability("a", &[&both], &[&none]).is_err());
        assert!(
            check_capability("a", &[&silent], &[&both]).is_err(),
            "a child can't grant"
        );
        assert!(
            check_capability("a", &[], &[]).is_err(),
            "no policy, no capability"
        );
        assert!(
            check_capability("a", &[&both, &none], &[]).is_err(),
            "every root policy counts"
        );
    }

    #[test]
    fn credential_routes_are_opened_by_the_root_and_only_closed_below() {
        let route = Rule::try_from("POST /v1/realtime/client_secrets".to_owned()).unwrap();
        let path = RequestPath::new(&Method::POST, "/v1/realtime/client_secrets");
        let says = |mint: Option<bool>| PolicySpec {
            mint_credentials: mint,
            ..PolicySpec::default()
        };
        let (yes, no, silent) = (says(Some(true)), says(Some(false)), says(None));
        let check = |root: &[&PolicySpec], derived: &[&PolicySpec]| {
            check_credential_route(&route, &path, root, derived)
        };
        assert_eq!(check(&[&silent, &yes], &[&silent]), Ok(()));
        let refused = check(&[], &[]).unwrap_err();
        assert!(
            refused.to_string().contains("mint_credentials = true"),
            "no policy, no credential: {refused}"
        );
        assert!(check(&[&silent], &[&yes]).is_err(), "a child can't open it");
        assert!(check(&[&yes], &[&no]).is_err(), "a child can close it");
        assert!(
            check(&[&yes, &no], &[]).is_err(),
            "every root policy counts"
        );
    }

    #[test]
    fn deny_wins_then_allow_models_body_and_approval() {
        let spec = PolicySpec::from_toml(EXAMPLE).unwrap();
        let chat = RequestPath::new(&Method::POST, "/v1/chat/completions");
        let ok_body = json!({"model": "gpt-4o-mini", "max_tokens": 100});
        assert_eq!(
            check_request(&spec, &facts(&chat, &["gpt-4o-mini"], Some(&ok_body))),
            Ok(Verdict::Allow)
        );
        let files = RequestPath::new(&Method::GET, "/v1/files/abc");
        assert!(matches!(
            check_request(&spec, &facts(&files, &[], None)),
            Err(Denial::Denied { .. })
        ));
        let other = RequestPath::new(&Method::POST, "/v1/embeddings");
        assert!(matches!(
            check_request(&spec, &facts(&other, &[], None)),
            Err(Denial::NotAllowed { .. })
        ));
        let err = check_request(&spec, &facts(&chat, &["gpt-4o"], Some(&ok_body))).unwrap_err();
        assert!(err.to_string().contains("gpt-4o-mini"), "{err}");
        let big = json!({"max_tokens": 9000});
        let err = check_request(&spec, &facts(&chat, &["gpt-4o-mini"], Some(&big))).unwrap_err();
        assert!(err.to_string().contains("/max_tokens"), "{err}");
        let mut held = spec.clone();
        held.allow = None;
        let images = RequestPath::new(&Method::POST, "/v1/images/generations");
        assert_eq!(
            check_request(&held, &facts(&images, &[], None)),
            Ok(Verdict::Approve("POST /v1/images/generations".into()))
        );
    }
}
