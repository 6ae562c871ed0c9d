//! Error bodies in each provider's own shape (JSON, or XML for AWS), so an agent's SDK
//! parses the broker's refusals exactly like the provider's errors and the model can read why.

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
    /// `<Error><Code>…</Code><Message>…</Message></Error>` in XML (AWS REST APIs such as S3).
    Aws,
}

impl ErrorShape {
    /// The error body and its content type.
    pub fn body(self, status: StatusCode, code: &str, message: &str) -> (&'static str, Vec<u8>) {
        if self == ErrorShape::Aws {
            let xml = format!(
                "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<Error><Code>{}</Code><Message>{}</Message></Error>",
                xml_escape(code),
                xml_escape(message)
            );
            return ("application/xml", xml.into_bytes());
        }
        let json = self.render(status, code, message);
        (
            "application/json",
            serde_json::to_vec(&json).unwrap_or_default(),
        )
    }

    /// The error as JSON: `code` is SEKS's stable machine-readable reason (AWS's XML
    /// fields, as JSON, for [`ErrorShape::Aws`]).
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
            ErrorShape::Aws => json!({ "Error": { "Code": code, "Message": message } }),
        }
    }
}

fn xml_escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&apos;"),
            c => out.push(c),
        }
    }
    out
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
        let (kind, xml) = ErrorShape::Aws.body(s, "signature_mismatch", "a <b> & 'c'");
        assert_eq!(kind, "application/xml");
        assert!(
            String::from_utf8(xml).unwrap().ends_with(
                "<Error><Code>signature_mismatch</Code><Message>a &lt;b&gt; &amp; &apos;c&apos;</Message></Error>"
            )
        );
        let (kind, json) = ErrorShape::Slack.body(s, "token_revoked", m);
        assert_eq!(kind, "application/json");
        assert_eq!(
            serde_json::from_slice::<Value>(&json).unwrap()["error"],
            "token_revoked"
        );
    }
}
