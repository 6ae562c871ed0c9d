//! OAuth2 refresh-token providers as data: where access tokens are minted (the `oauth2`
//! auth scheme) and the shape of the stored secret, a client's credentials and a refresh
//! token. Minting itself is the proxy's (`proxy::oauth2`).

use std::time::Duration;

use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;
use serde_json::Value;

use crate::scrub::MIN_SECRET_LEN;

/// How the client proves itself to the token endpoint (RFC 6749 §2.3.1).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ClientAuth {
    /// `client_id` and `client_secret` in the form body, as Google and Microsoft take them.
    #[default]
    Body,
    /// HTTP Basic with the form-encoded client id and secret.
    Basic,
}

/// Where and how access tokens are minted:
/// `auth = { scheme = "oauth2", token_url = "https://oauth2.googleapis.com/token" }`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Oauth2Grant {
    /// The token endpoint (https, or http to a loopback address), vetted like a base URL.
    pub token_url: String,
    /// Scopes to ask for, space-separated; without, the refresh token's own apply.
    #[serde(default)]
    pub scope: Option<String>,
    /// How the client authenticates at the token endpoint (default `body`).
    #[serde(default)]
    pub client_auth: ClientAuth,
    /// How long an access token is valid when the endpoint's answer gives no `expires_in`
    /// (what its documentation says); without it such tokens are replaced hourly and stay
    /// masked while the broker runs.
    #[serde(default, deserialize_with = "humantime_serde::deserialize")]
    pub token_lifetime: Option<Duration>,
}

impl Oauth2Grant {
    /// Scopes are space-separated tokens of printable ASCII without `"` or `\` (RFC 6749 §3.3).
    pub fn check_scope(&self) -> Result<(), String> {
        let Some(scope) = &self.scope else {
            return Ok(());
        };
        let valid = scope.split(' ').all(|token| {
            !token.is_empty()
                && token
                    .bytes()
                    .all(|b| b.is_ascii_graphic() && b != b'"' && b != b'\\')
        });
        if valid {
            Ok(())
        } else {
            Err(format!(
                "`{scope}` must be scope names separated by single spaces"
            ))
        }
    }
}

/// The stored key that marks a version written back after the provider rotated the refresh
/// token.
const ROTATED_BY_PROVIDER: &str = "rotated_by_provider";
/// Every key a stored value may hold.
const KEYS: [&str; 4] = [
    "client_id",
    "client_secret",
    "refresh_token",
    ROTATED_BY_PROVIDER,
];

/// The stored value of an OAuth2 secret:
/// `{"client_id": "…", "client_secret": "…" (optional), "refresh_token": "…"}`, and
/// `"rotated_by_provider": true` when a broker sealed a refresh token the provider issued in
/// place of the previous version's.
#[derive(Debug, Clone)]
pub struct Oauth2Secret {
    /// The OAuth2 client's id.
    pub client_id: SecretString,
    /// The client's secret; public clients have none.
    pub client_secret: Option<SecretString>,
    /// The long-lived token access tokens are minted from.
    pub refresh_token: SecretString,
    /// This version differs from the one before only by a refresh token the provider
    /// rotated, so access tokens minted from that one are still good.
    pub rotated_by_provider: bool,
}

impl Oauth2Secret {
    /// Read a stored or offered value. The reasons name keys only: serde's own messages can
    /// quote the value, and this one is a secret.
    pub fn parse(text: &str) -> Result<Self, &'static str> {
        let Ok(Value::Object(map)) = serde_json::from_str::<Value>(text) else {
            return Err(
                r#"an oauth2 secret must be JSON {"client_id": "…", "client_secret": "…", "refresh_token": "…"} (client_secret optional)"#,
            );
        };
        if map.keys().any(|k| !KEYS.contains(&k.as_str())) {
            return Err(
                "an oauth2 secret may only hold the keys client_id, client_secret and refresh_token",
            );
        }
        let rotated_by_provider = match map.get(ROTATED_BY_PROVIDER) {
            None => false,
            Some(Value::Bool(rotated)) => *rotated,
            Some(_) => return Err("rotated_by_provider must be true or false"),
        };
        let field = |key: &str| -> Result<Option<SecretString>, &'static str> {
            match map.get(key) {
                None => Ok(None),
                Some(Value::String(s))
                    if !s.is_empty() && s.bytes().all(|b| b.is_ascii_graphic()) =>
                {
                    Ok(Some(SecretString::from(s.as_str())))
                }
                Some(_) => Err(
                    "client_id, client_secret and refresh_token must be non-empty strings of printable ASCII without spaces",
                ),
            }
        };
        let (Some(client_id), client_secret, Some(refresh_token)) = (
            field("client_id")?,
            field("client_secret")?,
            field("refresh_token")?,
        ) else {
            return Err("an oauth2 secret needs a client_id and a refresh_token");
        };
        // A client id is public; the other two are what the scrubber must recognise.
        if std::iter::once(&refresh_token)
            .chain(&client_secret)
            .any(|s| s.expose_secret().len() < MIN_SECRET_LEN)
        {
            return Err(
                "client_secret and refresh_token must be at least 8 characters, or they could not be scrubbed reliably",
            );
        }
        Ok(Oauth2Secret {
            client_id,
            client_secret,
            refresh_token,
            rotated_by_provider,
        })
    }

    /// The value to store once the provider has replaced the refresh token.
    pub fn with_refresh_token(&self, refresh_token: &SecretString) -> SecretString {
        let mut stored = serde_json::json!({
            "client_id": self.client_id.expose_secret(),
            "refresh_token": refresh_token.expose_secret(),
            ROTATED_BY_PROVIDER: true,
        });
        if let Some(client_secret) = &self.client_secret {
            stored["client_secret"] = client_secret.expose_secret().into();
        }
        SecretString::from(stored.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_must_have_the_documented_shape() {
        let ok = Oauth2Secret::parse(
            r#"{"client_id": "123.apps.example", "client_secret": "GOCSPX-secret", "refresh_token": "1//0g-refresh"}"#,
        )
        .unwrap();
        assert_eq!(ok.client_id.expose_secret(), "123.apps.example");
        let public =
            Oauth2Secret::parse(r#"{"client_id": "c", "refresh_token": "1//0g-refresh"}"#).unwrap();
        assert!(public.client_secret.is_none());
        for bad in [
            "1//0g-refresh",
            r#"["a"]"#,
            r#"{"client_id": "c"}"#,
            r#"{"refresh_token": "1//0g-refresh"}"#,
            r#"{"client_id": "c", "refresh_token": "1//0g-refresh", "refreshToken": "x"}"#,
            r#"{"client_id": 5, "refresh_token": "1//0g-refresh"}"#,
            r#"{"client_id": "", "refresh_token": "1//0g-refresh"}"#,
            r#"{"client_id": "c", "refresh_token": "has space 123"}"#,
            r#"{"client_id": "c", "refresh_token": "short"}"#,
            r#"{"client_id": "c", "client_secret": "short", "refresh_token": "1//0g-refresh"}"#,
            r#"{"client_id": "c", "refresh_token": "1//0g-refresh", "rotated_by_provider": 1}"#,
        ] {
            // The reason names keys, never the value.
            let why = Oauth2Secret::parse(bad).unwrap_err();
            assert!(
                !why.contains("0g-refresh") && !why.contains("space 123"),
                "{why}"
            );
        }
    }

    #[test]
    fn a_rotated_refresh_token_keeps_the_client() {
        let secret = Oauth2Secret::parse(
            r#"{"client_id": "cid-1", "client_secret": "csecret-1", "refresh_token": "refresh-old"}"#,
        )
        .unwrap();
        let next = secret.with_refresh_token(&SecretString::from("refresh-new"));
        let reread = Oauth2Secret::parse(next.expose_secret()).unwrap();
        assert_eq!(reread.client_id.expose_secret(), "cid-1");
        assert_eq!(
            reread.client_secret.as_ref().map(|s| s.expose_secret()),
            Some("csecret-1")
        );
        assert_eq!(reread.refresh_token.expose_secret(), "refresh-new");
        assert!(!secret.rotated_by_provider && reread.rotated_by_provider);
        assert!(!format!("{reread:?}").contains("refresh-new"));
    }

    #[test]
    fn scopes_are_space_separated_names() {
        let grant = |scope: &str| Oauth2Grant {
            token_url: "https://oauth2.example/token".to_owned(),
            scope: Some(scope.to_owned()),
            client_auth: ClientAuth::Body,
            token_lifetime: None,
        };
        assert!(
            grant("https://graph.microsoft.com/.default offline_access")
                .check_scope()
                .is_ok()
        );
        for bad in ["", "a  b", "a\nb", "a\"b", " a"] {
            assert!(grant(bad).check_scope().is_err(), "{bad:?}");
        }
    }
}
