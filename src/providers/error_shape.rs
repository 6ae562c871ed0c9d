//! Error bodies in each provider's own JSON shape, so an agent's SDK parses the broker's
//! refusals exactly like the provider's errors and the model can read why.

use http::StatusCode;
use serde::Deserialize;
use serde_json::{Value, json};

/// The JSON error format a provider's SDK expects (named in lowercase in the config).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ErrorShape {
    /// `{"error": {"message", "type", "param", "code"}}` (OpenAI and compatible APIs, Stripe).
    OpenAi,
    /// `{"type": "error", "error": {"type", "message"}}`.
    Anthropic,
    /// `{"error": {"code", "message", "status"}}` (Google APIs).
    Google,
    /// `{"message", "documentation_url", "status"}`.
    GitHub,
    /// `{"message", "code", "status"}`: a top-level message, which most REST clients show.
    Message,
    /// `{"ok": false, "error": code, "message"}` (Slack Web API).
    Slack,
    /// `{"ok": false, "error_code", "description"}` (Telegram Bot API).
    Telegram,
}

impl ErrorShape {
    /// Render an error: `code` is SEKS's stable machine-readable reason.
    pub fn render(self, status: StatusCode, code: &str, message: &str) -> Value {
        match self {
            ErrorShape::OpenAi => json!({
                "error": {
                    "message": message,
                    "type": openai_type(status),
                    "param": null,
                    "code": code,
                }
            }),
            ErrorShape::Anthropic => json!({
                "type": "error",
                "error": { "type": anthropic_type(status), "message": message }
            }),
            ErrorShape::Google => json!({
                "error": {
                    "code": status.as_u16(),
                    "message": message,
                    "status": google_status(status),
                }
            }),
            ErrorShape::GitHub => json!({
                "message": message,
                "documentation_url": "https://docs.github.com/rest",
                "status": status.as_str(),
            }),
            ErrorShape::Message => json!({
                "message": message,
                "code": code,
                "status": status.as_u16(),
            }),
            ErrorShape::Slack => json!({ "ok": false, "error": code, "message": message }),
            ErrorShape::Telegram => json!({
                "ok": false,
                "error_code": status.as_u16(),
                "description": message,
            }),
        }
    }
}

fn openai_type(status: StatusCode) -> &'static str {
    match status.as_u16() {
        401 => "authentication_error",
        403 => "permission_error",
        429 => "rate_limit_error",
        500.. => "api_error",
        _ => "invalid_request_error",
    }
}

fn anthropic_type(status: StatusCode) -> &'static str {
    match status.as_u16() {
        401 => "authentication_error",
        403 => "permission_error",
        404 => "not_found_error",
        413 => "request_too_large",
        429 => "rate_limit_error",
        504 => "timeout_error",
        503 => "overloaded_error",
        500.. => "api_error",
        _ => "invalid_request_error",
    }
}

fn google_status(status: StatusCode) -> &'static str {
    match status.as_u16() {
        401 => "UNAUTHENTICATED",
        403 => "PERMISSION_DENIED",
        404 => "NOT_FOUND",
        429 => "RESOURCE_EXHAUSTED",
        504 => "DEADLINE_EXCEEDED",
        502 | 503 => "UNAVAILABLE",
        500.. => "INTERNAL",
        _ => "INVALID_ARGUMENT",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_shape_carries_the_message_where_its_sdk_reads_it() {
        let s = StatusCode::UNAUTHORIZED;
        let m = "token revoked";
        assert_eq!(
            ErrorShape::OpenAi.render(s, "token_revoked", m)["error"]["message"],
            m
        );
        assert_eq!(
            ErrorShape::OpenAi.render(s, "token_revoked", m)["error"]["code"],
            "token_revoked"
        );
        let a = ErrorShape::Anthropic.render(s, "token_revoked", m);
        assert_eq!(
            (a["type"].as_str(), a["error"]["type"].as_str()),
            (Some("error"), Some("authentication_error"))
        );
        let g = ErrorShape::Google.render(s, "token_revoked", m);
        assert_eq!(
            (g["error"]["code"].as_u64(), g["error"]["status"].as_str()),
            (Some(401), Some("UNAUTHENTICATED"))
        );
        assert_eq!(
            ErrorShape::GitHub.render(s, "token_revoked", m)["message"],
            m
        );
        assert_eq!(
            ErrorShape::Message.render(s, "token_revoked", m)["message"],
            m
        );
        assert_eq!(
            ErrorShape::Slack.render(s, "token_revoked", m)["error"],
            "token_revoked"
        );
        assert_eq!(
            ErrorShape::Telegram.render(s, "token_revoked", m)["description"],
            m
        );
    }
}
