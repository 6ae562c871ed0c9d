//! `kind = "email"`: send a plain-text message (with attachments, if allowed) through the
//! SMTP server and account sealed in the vault. The sender is fixed or chosen from a list,
//! the recipients fixed or checked against an allow-list before any connection is made.

use std::num::NonZeroU32;
use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::STANDARD as BASE64;
use lettre::message::header::{ContentTransferEncoding, ContentType};
use lettre::message::{Attachment as Part, Body, Mailbox, MultiPart, SinglePart};
use lettre::transport::smtp::authentication::Credentials;
use lettre::transport::smtp::client::{Certificate, CertificateStore, Tls, TlsParameters};
use lettre::{Address, AsyncSmtpTransport, AsyncTransport, Tokio1Executor};
use secrecy::{ExposeSecret, SecretString};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value, json};

use super::params::{BadArgument, pointer};
use super::{ArgumentError, RunError};
use crate::keyring::check_url_passwords;
use crate::providers::is_loopback;
use crate::tokens;

/// Longest an email capability may take when it sets no `timeout`.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(30);
/// Largest message (subject, body and decoded attachments) when `max_bytes` is not set.
const DEFAULT_MAX_BYTES: usize = 1024 * 1024;
/// Most recipients one call may name when `max_recipients` is not set.
const DEFAULT_MAX_RECIPIENTS: usize = 10;
/// RFC 5322's line limit, which a subject header must fit in.
const MAX_SUBJECT: usize = 998;
/// Longest attachment file name.
const MAX_FILENAME: usize = 255;

/// How the SMTP connection is secured.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum SmtpTls {
    /// Plain connection upgraded with STARTTLS, which the server must offer (port 587).
    Starttls,
    /// TLS from the first byte (port 465).
    Tls,
    /// No TLS: only to a loopback address, where nobody else can read the password.
    None,
}

/// The mail server and the account on it, read from the stored secret:
/// `smtp://USER:PASSWORD@HOST[:PORT]` (STARTTLS, port 587 by default),
/// `smtps://USER:PASSWORD@HOST[:PORT]` (TLS from the first byte, 465), or
/// `smtp://…?tls=none` (clear text, port 25; loopback hosts only). The server is sealed with
/// the password, so no capability definition can send the password anywhere else.
pub struct SmtpServer {
    host: String,
    port: u16,
    username: String,
    password: SecretString,
    tls: SmtpTls,
}

impl SmtpServer {
    /// Read a stored SMTP secret. Errors describe the expected shape and never quote the
    /// value (the host aside, which is not secret).
    pub fn parse(secret: &str) -> Result<SmtpServer, String> {
        const SHAPE: &str = "an SMTP secret is smtp://USER:PASSWORD@HOST[:PORT] (STARTTLS) or \
            smtps://USER:PASSWORD@HOST[:PORT] (TLS), with `@`, `:` and `/` in USER or PASSWORD \
            percent-encoded";
        let url = url::Url::parse(secret).map_err(|_| SHAPE.to_owned())?;
        let host = url
            .host_str()
            .filter(|h| !h.is_empty())
            .ok_or_else(|| SHAPE.to_owned())?
            .to_owned();
        let decode = |part: &str| {
            percent_encoding::percent_decode_str(part)
                .decode_utf8()
                .map(|p| p.into_owned())
                .map_err(|_| SHAPE.to_owned())
        };
        let username = decode(url.username())?;
        let password = SecretString::from(decode(url.password().unwrap_or_default())?);
        if username.is_empty() || password.expose_secret().is_empty() {
            return Err(SHAPE.to_owned());
        }
        check_url_passwords(secret)?;
        if !url.path().trim_start_matches('/').is_empty() || url.fragment().is_some() {
            return Err(SHAPE.to_owned());
        }
        let mut clear_text = false;
        for (key, value) in url.query_pairs() {
            match (&*key, &*value) {
                ("tls", "none") => clear_text = true,
                _ => {
                    return Err(format!(
                        "{SHAPE}; the only option is `?tls=none` (loopback hosts only)"
                    ));
                }
            }
        }
        let tls = match (url.scheme(), clear_text) {
            ("smtp", false) => SmtpTls::Starttls,
            ("smtps", false) => SmtpTls::Tls,
            ("smtp", true) => SmtpTls::None,
            _ => return Err(SHAPE.to_owned()),
        };
        if tls == SmtpTls::None && !is_loopback(&host) {
            return Err(format!(
                "`tls=none` would send the password in clear text; it is allowed only to a \
                 loopback address, not `{host}`"
            ));
        }
        let port = url.port().unwrap_or(match tls {
            SmtpTls::Starttls => 587,
            SmtpTls::Tls => 465,
            SmtpTls::None => 25,
        });
        Ok(SmtpServer {
            host,
            port,
            username,
            password,
            tls,
        })
    }
}

/// The sender: fixed, or one of a list the agent chooses from.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Senders {
    /// Always this address.
    One(String),
    /// The agent's `from` argument must be one of these.
    AnyOf(Vec<String>),
}

/// An email capability as written in the config.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EmailSpec {
    /// What it does, for the model.
    pub description: String,
    /// The stored SMTP server and account (`seks secret add NAME --provider smtp`, see
    /// [`SmtpServer`]).
    pub secret: String,
    /// Hold every message until an operator approves it.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub require_approval: bool,
    /// Longest a send may take (default 30s).
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        with = "humantime_serde"
    )]
    pub timeout: Option<Duration>,
    /// The sender address, or the addresses the agent may choose from.
    pub from: Senders,
    /// Fixed recipients: the agent can't choose any.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub to: Vec<String>,
    /// Recipients the agent may choose (`to` argument): addresses, or `*@domain` for any
    /// address at exactly that domain.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub allowed_to: Vec<String>,
    /// Most recipients one message may have (default 10).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_recipients: Option<usize>,
    /// Largest message: subject, body and decoded attachments (default 1 MiB).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_bytes: Option<usize>,
    /// Most attachments (default 0: none).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub max_attachments: usize,
    /// Most calls running at once, whichever tokens make them (default 4): each opens its own
    /// SMTP connection.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_in_flight: Option<NonZeroU32>,
}

fn is_zero(n: &usize) -> bool {
    *n == 0
}

/// A message that passed every check, ready to send.
#[derive(Debug)]
pub struct Message {
    from: Address,
    to: Vec<Address>,
    subject: String,
    body: String,
    attachments: Vec<Attachment>,
}

#[derive(Debug)]
struct Attachment {
    filename: String,
    content_type: ContentType,
    bytes: Vec<u8>,
}

/// Local-part characters relays read as routing (`user%host@domain`, `host!user@domain`,
/// and a quoted `"user@host"@domain`): Postfix, for one, rewrites the percent form for its
/// own domains by default, passing the message on to `host`.
const ROUTING: [char; 3] = ['%', '!', '"'];

/// An address pattern of `allowed_to`.
enum Pattern {
    Exact(Address),
    Domain(String),
}

impl Pattern {
    fn parse(text: &str) -> Result<Self, String> {
        match text.strip_prefix("*@") {
            Some(domain) => format!("x@{domain}")
                .parse::<Address>()
                .map(|_| Pattern::Domain(domain.to_ascii_lowercase()))
                .map_err(|_| format!("`allowed_to` pattern `{text}` has no valid domain")),
            None => text.parse().map(Pattern::Exact).map_err(|_| {
                format!("`allowed_to` entry `{text}` is neither an address nor `*@domain`")
            }),
        }
    }

    fn admits(&self, address: &Address) -> bool {
        match self {
            Pattern::Exact(a) => same_address(a, address),
            // At the domain in syntax is not enough: the server must deliver it there too.
            Pattern::Domain(d) => {
                address.domain().eq_ignore_ascii_case(d) && !address.user().contains(ROUTING)
            }
        }
    }
}

/// Mailbox local parts are case-sensitive in theory and never in practice; comparing them
/// exactly would only let `Ops@` slip past a rule for `ops@`.
fn same_address(a: &Address, b: &Address) -> bool {
    <Address as AsRef<str>>::as_ref(a).eq_ignore_ascii_case(b.as_ref())
}

fn parse_address(text: &str, field: &str) -> Result<Address, String> {
    text.parse()
        .map_err(|_| format!("`{field}` entry `{text}` is not an email address"))
}

impl EmailSpec {
    fn senders(&self) -> Vec<&str> {
        match &self.from {
            Senders::One(a) => vec![a.as_str()],
            Senders::AnyOf(list) => list.iter().map(String::as_str).collect(),
        }
    }

    fn patterns(&self) -> Vec<Pattern> {
        // Checked at load, so none fails here.
        self.allowed_to
            .iter()
            .filter_map(|p| Pattern::parse(p).ok())
            .collect()
    }

    fn max_recipients(&self) -> usize {
        self.max_recipients.unwrap_or(DEFAULT_MAX_RECIPIENTS)
    }

    /// Check the definition: addresses and patterns (the server is the secret's).
    pub fn check(&self) -> Result<(), String> {
        let senders = self.senders();
        if senders.is_empty() {
            return Err("`from` needs at least one address".to_owned());
        }
        for s in senders {
            parse_address(s, "from")?;
        }
        match (self.to.is_empty(), self.allowed_to.is_empty()) {
            (false, false) | (true, true) => {
                return Err(
                    "give either `to` (fixed recipients) or `allowed_to` (what the agent may choose)"
                        .to_owned(),
                );
            }
            _ => {}
        }
        for t in &self.to {
            parse_address(t, "to")?;
        }
        for p in &self.allowed_to {
            Pattern::parse(p)?;
        }
        if self.max_recipients() == 0 {
            return Err("`max_recipients` must be at least 1".to_owned());
        }
        Ok(())
    }

    /// The JSON Schema of the arguments, for models.
    pub fn schema(&self) -> Value {
        let mut properties = Map::new();
        let mut required = vec!["subject", "body"];
        properties.insert(
            "subject".into(),
            json!({"type": "string", "maxLength": MAX_SUBJECT, "description": "The subject line"}),
        );
        properties.insert(
            "body".into(),
            json!({"type": "string", "description": "The message, as plain text"}),
        );
        if !self.allowed_to.is_empty() {
            required.push("to");
            properties.insert(
                "to".into(),
                json!({
                    "type": "array",
                    "items": {"type": "string"},
                    "minItems": 1,
                    "maxItems": self.max_recipients(),
                    "description": format!("Recipients; allowed: {}", self.allowed_to.join(", ")),
                }),
            );
        }
        if let Senders::AnyOf(list) = &self.from {
            required.push("from");
            properties.insert(
                "from".into(),
                json!({"type": "string", "enum": list, "description": "The sender"}),
            );
        }
        if self.max_attachments > 0 {
            properties.insert(
                "attachments".into(),
                json!({
                    "type": "array",
                    "maxItems": self.max_attachments,
                    "items": {
                        "type": "object",
                        "properties": {
                            "filename": {"type": "string", "maxLength": MAX_FILENAME},
                            "content_type": {"type": "string", "description": "default application/octet-stream"},
                            "content_base64": {"type": "string"},
                        },
                        "required": ["filename", "content_base64"],
                        "additionalProperties": false,
                    },
                }),
            );
        }
        json!({
            "type": "object",
            "properties": properties,
            "required": required,
            "additionalProperties": false,
        })
    }

    /// Check a call's arguments; recipients and senders outside the definition are refused
    /// here, before any connection to the mail server.
    pub fn validate(&self, args: &Value) -> Result<Message, ArgumentError> {
        let empty = Map::new();
        let object = match args {
            Value::Object(o) => o,
            Value::Null => &empty,
            _ => return Err(BadArgument::at("", "the arguments must be a JSON object").into()),
        };
        let schema = self.schema();
        if let Some(unknown) = object
            .keys()
            .find(|k| schema["properties"].get(k.as_str()).is_none())
        {
            return Err(BadArgument::at(
                pointer(unknown),
                "no such parameter (additional properties are not allowed)",
            )
            .into());
        }
        let subject = string(object, "subject")?;
        if subject.chars().count() > MAX_SUBJECT || subject.chars().any(char::is_control) {
            return Err(BadArgument::at(
                "/subject",
                format!("must be one line of at most {MAX_SUBJECT} characters"),
            )
            .into());
        }
        let body = string(object, "body")?;
        let to = if self.allowed_to.is_empty() {
            self.to.iter().filter_map(|t| t.parse().ok()).collect()
        } else {
            self.chosen_recipients(object)?
        };
        let from = match &self.from {
            Senders::One(a) => parse_address(a, "from").map_err(|why| BadArgument::at("", why))?,
            Senders::AnyOf(list) => {
                let chosen = string(object, "from")?;
                let address = chosen
                    .parse::<Address>()
                    .map_err(|_| BadArgument::at("/from", "is not an email address"))?;
                if !list
                    .iter()
                    .filter_map(|a| a.parse::<Address>().ok())
                    .any(|a| same_address(&a, &address))
                {
                    return Err(ArgumentError::NotAllowed(format!(
                        "sender {address} is not allowed; allowed: {}",
                        list.join(", ")
                    )));
                }
                address
            }
        };
        let attachments = self.attachments(object)?;
        let size =
            subject.len() + body.len() + attachments.iter().map(|a| a.bytes.len()).sum::<usize>();
        let max = self.max_bytes.unwrap_or(DEFAULT_MAX_BYTES);
        if size > max {
            return Err(
                BadArgument::at("", format!("the message is larger than {max} bytes")).into(),
            );
        }
        Ok(Message {
            from,
            to,
            subject: subject.to_owned(),
            // The mail library turns a bare LF into CRLF but leaves a bare CR: servers that
            // read `<CR>.<CR>` as the end of the message would take what follows as
            // another one (SMTP smuggling), so a bare CR becomes a line break too.
            body: body.replace("\r\n", "\n").replace('\r', "\n"),
            attachments,
        })
    }

    fn chosen_recipients(
        &self,
        object: &Map<String, Value>,
    ) -> Result<Vec<Address>, ArgumentError> {
        let Some(Value::Array(list)) = object.get("to") else {
            return Err(BadArgument::at("/to", "is required: a list of addresses").into());
        };
        if list.is_empty() || list.len() > self.max_recipients() {
            return Err(BadArgument::at(
                "/to",
                format!("must name 1 to {} recipients", self.max_recipients()),
            )
            .into());
        }
        let patterns = self.patterns();
        let mut out = Vec::with_capacity(list.len());
        for (i, item) in list.iter().enumerate() {
            let at = format!("/to/{i}");
            let address = item
                .as_str()
                .and_then(|t| t.parse::<Address>().ok())
                .ok_or_else(|| BadArgument::at(at, "is not an email address"))?;
            if !patterns.iter().any(|p| p.admits(&address)) {
                return Err(ArgumentError::NotAllowed(format!(
                    "recipient {address} is not allowed; allowed: {}",
                    self.allowed_to.join(", ")
                )));
            }
            out.push(address);
        }
        Ok(out)
    }

    fn attachments(&self, object: &Map<String, Value>) -> Result<Vec<Attachment>, ArgumentError> {
        let list = match object.get("attachments") {
            None | Some(Value::Null) => return Ok(Vec::new()),
            Some(Value::Array(list)) if list.len() <= self.max_attachments => list,
            Some(_) => {
                return Err(BadArgument::at(
                    "/attachments",
                    format!("must be a list of at most {} items", self.max_attachments),
                )
                .into());
            }
        };
        let mut out = Vec::with_capacity(list.len());
        for (i, item) in list.iter().enumerate() {
            let at = |field: &str| format!("/attachments/{i}/{field}");
            let Some(item) = item.as_object() else {
                return Err(
                    BadArgument::at(format!("/attachments/{i}"), "must be an object").into(),
                );
            };
            if let Some(k) = item
                .keys()
                .find(|k| !["filename", "content_type", "content_base64"].contains(&k.as_str()))
            {
                return Err(BadArgument::at(at(k), "no such field").into());
            }
            let filename = item
                .get("filename")
                .and_then(Value::as_str)
                .filter(|f| {
                    !f.is_empty()
                        && f.len() <= MAX_FILENAME
                        && !f.chars().any(|c| c.is_control() || c == '/' || c == '\\')
                })
                .ok_or_else(|| {
                    BadArgument::at(at("filename"), "must be a plain file name (no path)")
                })?;
            let content_type = match item.get("content_type") {
                None | Some(Value::Null) => ContentType::parse("application/octet-stream"),
                Some(v) => v
                    .as_str()
                    .map_or_else(|| ContentType::parse("not a string"), ContentType::parse),
            }
            .map_err(|_| BadArgument::at(at("content_type"), "is not a MIME type"))?;
            let bytes = item
                .get("content_base64")
                .and_then(Value::as_str)
                .and_then(|b| BASE64.decode(b).ok())
                .ok_or_else(|| BadArgument::at(at("content_base64"), "must be base64"))?;
            out.push(Attachment {
                filename: filename.to_owned(),
                content_type,
                bytes,
            });
        }
        Ok(out)
    }

    /// Send `message` through the server and account in `secret`, trusting the Mozilla
    /// roots plus `extra_ca`.
    pub async fn send(
        &self,
        message: Message,
        secret: &SecretString,
        extra_ca: &[Certificate],
        timeout: Duration,
    ) -> Result<Value, RunError> {
        let misconfigured = |why: String| RunError::Misconfigured(why);
        let smtp = SmtpServer::parse(secret.expose_secret())
            .map_err(|why| misconfigured(format!("secret `{}`: {why}", self.secret)))?;
        let tls = if smtp.tls == SmtpTls::None {
            Tls::None
        } else {
            let mut builder = TlsParameters::builder(smtp.host.clone())
                .certificate_store(CertificateStore::WebpkiRoots);
            for ca in extra_ca {
                builder = builder.add_root_certificate(ca.clone());
            }
            let params = builder
                .build_rustls()
                .map_err(|e| misconfigured(format!("SMTP TLS settings: {e}")))?;
            match smtp.tls {
                SmtpTls::Tls => Tls::Wrapper(params),
                _ => Tls::Required(params),
            }
        };
        let Message {
            from,
            to,
            subject,
            body,
            attachments,
        } = message;
        let message_id = format!("<seks.{}@{}>", tokens::random_base62(20), from.domain());
        let mut builder = lettre::Message::builder()
            .from(Mailbox::new(None, from.clone()))
            .subject(subject)
            .message_id(Some(message_id.clone()));
        for address in &to {
            builder = builder.to(Mailbox::new(None, address.clone()));
        }
        let email = if attachments.is_empty() {
            builder.header(ContentType::TEXT_PLAIN).body(body)
        } else {
            let mut parts = MultiPart::mixed().singlepart(SinglePart::plain(body));
            for a in attachments {
                // Left to the library, an ASCII file goes out as 7bit with its bare line
                // breaks, and `<LF>.<CR><LF>` ends the message to some servers: base64 always.
                let content = Body::new_with_encoding(a.bytes, ContentTransferEncoding::Base64)
                    .map_err(|_| misconfigured("an attachment could not be encoded".to_owned()))?;
                parts = parts.singlepart(Part::new(a.filename).body(content, a.content_type));
            }
            builder.multipart(parts)
        }
        .map_err(|e| misconfigured(format!("the message could not be built: {e}")))?;
        let transport = AsyncSmtpTransport::<Tokio1Executor>::builder_dangerous(smtp.host.as_str())
            .port(smtp.port)
            .tls(tls)
            .credentials(Credentials::new(
                smtp.username.clone(),
                smtp.password.expose_secret().to_owned(),
            ))
            .timeout(Some(timeout))
            .build();
        let server = format!("{}:{}", smtp.host, smtp.port);
        match tokio::time::timeout(timeout, transport.send(email)).await {
            Err(_) => Err(RunError::Timeout(timeout)),
            Ok(Err(e)) if e.is_timeout() => Err(RunError::Timeout(timeout)),
            Ok(Err(e)) if e.is_permanent() || e.is_transient() => Err(RunError::Refused(format!(
                "the mail server {server} refused: {e}"
            ))),
            Ok(Err(e)) => {
                tracing::warn!(%server, error = %e, "SMTP failed");
                Err(RunError::Unreachable(format!(
                    "the mail server {server} could not be reached or spoken to"
                )))
            }
            Ok(Ok(_)) => Ok(json!({
                "sent": true,
                "message_id": message_id,
                "from": from.to_string(),
                "to": to.iter().map(Address::to_string).collect::<Vec<_>>(),
            })),
        }
    }
}

fn string<'a>(object: &'a Map<String, Value>, name: &str) -> Result<&'a str, BadArgument> {
    match object.get(name) {
        Some(Value::String(s)) => Ok(s),
        None | Some(Value::Null) => Err(BadArgument::at(pointer(name), "is required")),
        Some(_) => Err(BadArgument::at(pointer(name), "expected a string")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(extra: &str) -> EmailSpec {
        toml::from_str(&format!(
            "description = \"d\"\nsecret = \"smtp-ops\"\n{extra}"
        ))
        .unwrap()
    }

    #[test]
    fn recipients_off_the_allow_list_are_refused_and_case_does_not_help() {
        let s = spec(
            "from = \"bot@example.com\"\nallowed_to = [\"*@example.com\", \"boss@other.org\"]\n",
        );
        s.check().unwrap();
        let ok = s
            .validate(
                &json!({"subject": "s", "body": "b", "to": ["a@Example.com", "BOSS@other.org"]}),
            )
            .unwrap();
        assert_eq!(ok.to.len(), 2);
        for to in [
            "evil@attacker.com",
            "a@example.com.attacker.com",
            "x@other.org",
        ] {
            let err = s
                .validate(&json!({"subject": "s", "body": "b", "to": [to]}))
                .unwrap_err();
            assert!(matches!(err, ArgumentError::NotAllowed(_)), "{to}: {err:?}");
        }
        let err = s
            .validate(&json!({"subject": "s", "body": "b", "to": ["not an address"]}))
            .unwrap_err();
        assert_eq!(
            err,
            ArgumentError::Bad(BadArgument::at("/to/0", "is not an email address"))
        );
    }

    #[test]
    fn fixed_recipients_take_no_to_and_headers_cannot_be_injected() {
        let s = spec("from = [\"a@example.com\", \"b@example.com\"]\nto = [\"ops@example.com\"]\n");
        s.check().unwrap();
        let err = s
            .validate(
                &json!({"subject": "s", "body": "b", "from": "a@example.com", "to": ["x@y.z"]}),
            )
            .unwrap_err();
        assert!(
            matches!(err, ArgumentError::Bad(ref b) if b.path == "/to"),
            "{err:?}"
        );
        let err = s
            .validate(&json!({"subject": "s\r\nBcc: x@y.z", "body": "b", "from": "a@example.com"}))
            .unwrap_err();
        assert!(
            matches!(err, ArgumentError::Bad(ref b) if b.path == "/subject"),
            "{err:?}"
        );
        let err = s
            .validate(&json!({"subject": "s", "body": "b", "from": "c@example.com"}))
            .unwrap_err();
        assert!(matches!(err, ArgumentError::NotAllowed(_)), "{err:?}");
    }

    #[test]
    fn sizes_and_attachments_are_bounded() {
        let s = spec("from = \"bot@example.com\"\nto = [\"ops@example.com\"]\nmax_bytes = 10\n");
        let err = s
            .validate(&json!({"subject": "s", "body": "0123456789"}))
            .unwrap_err();
        assert!(err.to_string().contains("larger than 10"), "{err}");
        let err = s
            .validate(&json!({"subject": "s", "body": "b", "attachments": []}))
            .unwrap_err();
        assert!(matches!(err, ArgumentError::Bad(ref b) if b.path == "/attachments"));
        let s =
            spec("from = \"bot@example.com\"\nto = [\"ops@example.com\"]\nmax_attachments = 1\n");
        let file = json!({"filename": "../etc/passwd", "content_base64": "aGk="});
        let err = s
            .validate(&json!({"subject": "s", "body": "b", "attachments": [file]}))
            .unwrap_err();
        assert!(matches!(err, ArgumentError::Bad(ref b) if b.path == "/attachments/0/filename"));
    }

    #[test]
    fn the_server_comes_from_the_secret_and_clear_text_is_for_loopback_only() {
        let server =
            SmtpServer::parse("smtps://bot%40example.com:p%40ss%2Fw0rd@mail.example.com").unwrap();
        assert_eq!(
            (
                server.host.as_str(),
                server.port,
                server.username.as_str(),
                server.password.expose_secret(),
                server.tls
            ),
            (
                "mail.example.com",
                465,
                "bot@example.com",
                "p@ss/w0rd",
                SmtpTls::Tls
            )
        );
        let server = SmtpServer::parse("smtp://u:pw-long-enough@127.0.0.1:2525?tls=none").unwrap();
        assert_eq!((server.port, server.tls), (2525, SmtpTls::None));
        assert_eq!(
            SmtpServer::parse("smtp://u:pw-long-enough@mail.example.com")
                .unwrap()
                .tls,
            SmtpTls::Starttls
        );
        let refused = [
            (
                "smtp://u:hunter2-secret@mail.example.com?tls=none",
                "clear text",
            ),
            // A name, even this one, is only as loopback as its resolution.
            ("smtp://u:hunter2-secret@localhost?tls=none", "clear text"),
            ("hunter2-secret", "smtp://USER"),
            ("smtp://u@mail.example.com", "smtp://USER"),
            ("smtp://u:hunter2-secret@mail.example.com/x", "smtp://USER"),
            (
                "smtp://u:hunter2-secret@mail.example.com?tls=maybe",
                "only option",
            ),
            ("https://u:hunter2-secret@mail.example.com", "smtp://USER"),
            ("smtp://bot:hunter2@mail.example.com", "too short"),
        ];
        for (secret, says) in refused {
            let why = SmtpServer::parse(secret).err().unwrap();
            assert!(
                why.contains(says) && !why.contains("hunter2"),
                "{secret}: {why}"
            );
        }
        assert!(spec("from = \"a@b.c\"\n").check().is_err(), "no recipients");
    }
}
