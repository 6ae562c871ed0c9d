//! Where an agent's token is found and how the real credential goes upstream: one small
//! enum each, filled from the built-in table or the config file and checked once at load.

use serde::Deserialize;

use super::oauth2::{Oauth2Grant, Oauth2Secret};

/// The placeholder for the credential in templates.
pub const PLACEHOLDER: &str = "{}";

/// Where an agent's SDK sends its key; the broker looks for the `seks_` token there.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(tag = "in", rename_all = "snake_case", deny_unknown_fields)]
pub enum TokenSource {
    /// `Authorization: <scheme> <token>`; the scheme is matched case-insensitively.
    Authorization {
        /// E.g. `Bearer`, `Bot`, `token`.
        scheme: String,
    },
    /// A header whose whole value is the token (the name is stored lowercase).
    Header {
        /// E.g. `x-api-key`.
        name: String,
    },
    /// A query parameter carrying the token.
    Query {
        /// E.g. `key`.
        param: String,
    },
    /// HTTP Basic with the token as the user name, as `curl -u TOKEN:` sends it.
    Basic,
    /// The first path segment, `/<prefix><token>/…`, as in Telegram's bot API, or the second
    /// after one of `after`, as in its file downloads (`/file/bot<token>/<file_path>`).
    Path {
        /// Text before the token in the segment, e.g. `bot`.
        prefix: String,
        /// Segments the token's segment may also follow, e.g. `["file"]`; the key takes the
        /// token's place, and policies and the audit log see the path without it
        /// (`/file/<file_path>`).
        #[serde(default)]
        after: Vec<String>,
    },
    /// An AWS SigV4 `Authorization` header: the access key id names the token, and the
    /// signature proves the agent holds it (the only source of a `sigv4` provider).
    Sigv4,
}

/// How the real credential travels to the upstream.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(tag = "scheme", rename_all = "snake_case", deny_unknown_fields)]
pub enum AuthScheme {
    /// Header `name` set to `template` with `{}` replaced by the credential.
    Header {
        /// Header to set (stored lowercase).
        name: String,
        /// E.g. `Bearer {}`, `Bot {}`, or `{}` for the bare key.
        #[serde(default = "bare_template")]
        template: String,
    },
    /// A query parameter set to the credential.
    Query {
        /// E.g. `api_key`.
        param: String,
    },
    /// `Authorization: Basic base64(user:password)`, with `{}` in exactly one of the two.
    Basic {
        /// The user name, or `{}` for the key.
        #[serde(default)]
        user: String,
        /// The password, or `{}` for the key.
        #[serde(default)]
        password: String,
    },
    /// The path starts with the segment `/<prefix><credential>`, as in Telegram's bot API.
    Path {
        /// Text before the credential in the segment, e.g. `bot`.
        prefix: String,
    },
    /// The request is re-signed with AWS Signature Version 4; the credential is a key pair
    /// (see [`crate::sigv4::KeyPair`]).
    Sigv4 {
        /// E.g. `us-east-1`.
        region: String,
        /// The signing name of the service, e.g. `s3`.
        service: String,
    },
    /// `Authorization: Bearer <access token>`, minted from the stored client credentials and
    /// refresh token at the token endpoint.
    Oauth2(Oauth2Grant),
}

fn bare_template() -> String {
    PLACEHOLDER.to_owned()
}

/// Headers the broker sets or that frame the message: a provider may not claim them.
const RESERVED_HEADERS: &[&str] = &[
    "host",
    "content-length",
    "transfer-encoding",
    "connection",
    "te",
    "upgrade",
    "accept-encoding",
];

/// A field of a token source or auth scheme is unusable: (field, why).
pub type Invalid = (&'static str, String);

impl TokenSource {
    /// Normalise and check a configured source; the error names the offending field.
    pub fn validate(&mut self) -> Result<(), Invalid> {
        match self {
            TokenSource::Authorization { scheme } => {
                if scheme.is_empty() || !scheme.bytes().all(|b| b.is_ascii_alphanumeric()) {
                    return Err(("scheme", format!("`{scheme}` must be letters and digits")));
                }
                Ok(())
            }
            TokenSource::Header { name } => header_name(name),
            TokenSource::Query { param } => url_word("param", param, false),
            TokenSource::Basic => Ok(()),
            TokenSource::Path { prefix, after } => {
                url_word("prefix", prefix, true)?;
                for segment in after {
                    url_word("after", segment, false)?;
                    if segment.bytes().all(|b| b == b'.') {
                        return Err(("after", format!("`{segment}` is not a path segment")));
                    }
                }
                Ok(())
            }
            TokenSource::Sigv4 => Ok(()),
        }
    }

    /// How an agent would send its token this way, for error messages and listings.
    pub fn describe(&self) -> String {
        match self {
            TokenSource::Authorization { scheme } => {
                format!("Authorization: {} <token>", title_case(scheme))
            }
            TokenSource::Header { name } => format!("{}: <token>", title_case(name)),
            TokenSource::Query { param } => format!("?{param}=<token>"),
            TokenSource::Basic => "Authorization: Basic <token>: (token as user)".to_owned(),
            TokenSource::Path { prefix, after } => {
                let places: Vec<String> = std::iter::once(String::new())
                    .chain(after.iter().map(|a| format!("/{a}")))
                    .map(|lead| format!("{lead}/{prefix}<token>/…"))
                    .collect();
                format!("path {}", places.join(" or "))
            }
            TokenSource::Sigv4 => {
                "AWS SigV4 signature (access key id = token id, secret access key = token)"
                    .to_owned()
            }
        }
    }
}

impl AuthScheme {
    /// Normalise and check a configured scheme; the error names the offending field.
    pub fn validate(&mut self) -> Result<(), Invalid> {
        match self {
            AuthScheme::Header { name, template } => {
                header_name(name)?;
                if RESERVED_HEADERS.contains(&name.as_str()) {
                    return Err(("name", format!("`{name}` is set by the broker itself")));
                }
                one_placeholder("template", template)?;
                if !template.bytes().all(|b| b == b' ' || b.is_ascii_graphic()) {
                    return Err(("template", "must be printable ASCII".to_owned()));
                }
                Ok(())
            }
            AuthScheme::Query { param } => url_word("param", param, false),
            AuthScheme::Basic { user, password } => {
                let joined = format!("{user}:{password}");
                one_placeholder("user", &joined).map_err(|_| {
                    (
                        "user",
                        "or `password` must hold `{}`, once in the two".to_owned(),
                    )
                })?;
                if user.contains(':') {
                    return Err(("user", "must not contain `:`".to_owned()));
                }
                Ok(())
            }
            AuthScheme::Path { prefix } => url_word("prefix", prefix, true),
            AuthScheme::Sigv4 { region, service } => {
                let word = |b: u8| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-';
                if region.is_empty() || !region.bytes().all(word) {
                    return Err(("region", format!("`{region}` is not a region name")));
                }
                if service.is_empty() || !service.bytes().all(word) {
                    return Err(("service", format!("`{service}` is not a service name")));
                }
                Ok(())
            }
            AuthScheme::Oauth2(grant) => {
                super::parse_base_url(&grant.token_url).map_err(|why| ("token_url", why))?;
                if grant.token_lifetime.is_some_and(|t| t.is_zero()) {
                    return Err(("token_lifetime", "must be longer than zero".to_owned()));
                }
                grant.check_scope().map_err(|why| ("scope", why))
            }
        }
    }

    /// Whether the scheme signs whole requests, so the agent's token must be a key the
    /// broker can recompute to check the agent's own signature.
    pub fn signs_requests(&self) -> bool {
        matches!(self, AuthScheme::Sigv4 { .. })
    }

    /// Whether `value` can be injected this way without changing the request's meaning.
    pub fn accepts(&self, value: &str) -> Result<(), &'static str> {
        if value.is_empty() {
            return Err("the value is empty");
        }
        if self.signs_requests() {
            return crate::sigv4::KeyPair::parse(value).map(drop);
        }
        // Not injected itself: the JSON the access tokens are minted from.
        if let AuthScheme::Oauth2(_) = self {
            return Oauth2Secret::parse(value).map(drop);
        }
        if !value.bytes().all(|b| b.is_ascii_graphic()) {
            return Err("a credential must be printable ASCII without spaces");
        }
        match self {
            AuthScheme::Basic { user, .. } if user.contains(PLACEHOLDER) && value.contains(':') => {
                Err("a Basic user name must not contain `:`")
            }
            // The key becomes a path segment: only characters that can't start a new segment,
            // a query, an escape or a dot segment.
            AuthScheme::Path { .. }
                if !value.bytes().all(is_segment_char) || value.bytes().all(|b| b == b'.') =>
            {
                Err("a path credential may only hold letters, digits and `-._~:`")
            }
            _ => Ok(()),
        }
    }

    /// How the credential goes upstream, for listings.
    pub fn describe(&self) -> String {
        match self {
            AuthScheme::Header { name, template } => {
                let shown = template.replace(PLACEHOLDER, "<key>");
                format!("{}: {shown}", title_case(name))
            }
            AuthScheme::Query { param } => format!("?{param}=<key>"),
            AuthScheme::Basic { user, password } => format!(
                "Authorization: Basic base64({}:{})",
                user.replace(PLACEHOLDER, "<key>"),
                password.replace(PLACEHOLDER, "<key>")
            ),
            AuthScheme::Path { prefix } => format!("path /{prefix}<key>/…"),
            AuthScheme::Sigv4 { region, service } => {
                format!("AWS SigV4 re-signed ({service}, {region})")
            }
            AuthScheme::Oauth2(grant) => format!(
                "OAuth2 refresh via {} → Authorization: Bearer <access>",
                grant.token_url
            ),
        }
    }
}

/// `x-api-key` as `X-Api-Key`: header names are stored lowercase but read better this way.
fn title_case(name: &str) -> String {
    name.split('-')
        .map(|word| {
            let mut word = word.to_owned();
            if let Some(first) = word.get_mut(..1) {
                first.make_ascii_uppercase();
            }
            word
        })
        .collect::<Vec<_>>()
        .join("-")
}

/// Letters, digits and `-._~:`: safe inside one path segment without encoding.
fn is_segment_char(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"-._~:".contains(&b)
}

/// A valid header name, stored lowercase so it compares with `HeaderName::as_str`.
fn header_name(name: &mut String) -> Result<(), Invalid> {
    name.make_ascii_lowercase();
    http::HeaderName::from_bytes(name.as_bytes())
        .map(drop)
        .map_err(|_| ("name", format!("`{name}` is not a valid header name")))
}

/// A query parameter name or path prefix: unreserved URL characters only.
fn url_word(field: &'static str, word: &str, may_be_empty: bool) -> Result<(), Invalid> {
    if (word.is_empty() && !may_be_empty)
        || !word
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-._~".contains(&b))
    {
        return Err((
            field,
            format!("`{word}` must be letters, digits and `-._~` only"),
        ));
    }
    Ok(())
}

fn one_placeholder(field: &'static str, template: &str) -> Result<(), Invalid> {
    if template.matches(PLACEHOLDER).count() != 1 {
        return Err((
            field,
            format!("`{template}` must contain `{{}}` exactly once"),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header(template: &str) -> AuthScheme {
        AuthScheme::Header {
            name: "Authorization".to_owned(),
            template: template.to_owned(),
        }
    }

    #[test]
    fn schemes_are_checked_and_normalised() {
        let mut ok = header("Bearer {}");
        assert_eq!(ok.validate(), Ok(()));
        assert_eq!(ok.describe(), "Authorization: Bearer <key>");
        assert!(header("Bearer").validate().is_err());
        assert!(header("{} {}").validate().is_err());
        let mut host = AuthScheme::Header {
            name: "Host".to_owned(),
            template: "{}".to_owned(),
        };
        assert_eq!(host.validate().map_err(|e| e.0), Err("name"));
        let basic = |user: &str, password: &str| AuthScheme::Basic {
            user: user.to_owned(),
            password: password.to_owned(),
        };
        assert!(basic("{}", "").validate().is_ok());
        assert!(basic("api", "{}").validate().is_ok());
        assert!(basic("", "").validate().is_err());
        assert!(basic("{}", "{}").validate().is_err());
        assert!(basic("a:{}", "").validate().is_err());
        let mut path = AuthScheme::Path {
            prefix: "b/t".to_owned(),
        };
        assert_eq!(path.validate().map_err(|e| e.0), Err("prefix"));
    }

    #[test]
    fn credentials_must_fit_their_scheme() {
        let bearer = header("Bearer {}");
        assert!(bearer.accepts("sk-abc").is_ok());
        assert!(bearer.accepts("").is_err());
        assert!(bearer.accepts("sk abc").is_err());
        assert!(bearer.accepts("sk\nabc").is_err());
        let path = AuthScheme::Path {
            prefix: "bot".to_owned(),
        };
        assert!(path.accepts("123456:ABC-def_ghi").is_ok());
        for bad in ["12/..", "a?b", "a%2fb", "a#b", "..", "a;b"] {
            assert!(path.accepts(bad).is_err(), "{bad}");
        }
        let as_user = AuthScheme::Basic {
            user: "{}".to_owned(),
            password: String::new(),
        };
        assert!(as_user.accepts("sk_live_abc").is_ok());
        assert!(as_user.accepts("a:b").is_err());
        let oauth2 = AuthScheme::Oauth2(Oauth2Grant {
            token_url: "https://oauth2.example/token".to_owned(),
            scope: None,
            client_auth: Default::default(),
            token_lifetime: None,
        });
        assert!(
            oauth2
                .accepts(r#"{"client_id": "c", "refresh_token": "1//0g-refresh"}"#)
                .is_ok()
        );
        assert!(oauth2.accepts("ya29.not-json").is_err());
    }
}
