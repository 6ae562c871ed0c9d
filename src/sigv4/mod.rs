//! AWS Signature Version 4, on both sides of the broker: checking the signature an agent's
//! SDK made with the key pair the broker minted for it, and signing the forwarded request
//! with the real key pair. One canonical-request builder serves both, checked against
//! AWS's published examples.

pub mod chunked;
pub mod replay;

use aws_lc_rs::digest::{SHA256, digest};
use aws_lc_rs::hmac;
use http::HeaderMap;
use percent_encoding::{AsciiSet, NON_ALPHANUMERIC, percent_decode_str, utf8_percent_encode};
use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;
use subtle::ConstantTimeEq;
use time::{OffsetDateTime, PrimitiveDateTime, format_description::FormatItem};

use crate::tokens::hex;

/// The only signing algorithm SigV4 defines for HMAC keys.
pub const ALGORITHM: &str = "AWS4-HMAC-SHA256";
/// Header carrying the request time, `YYYYMMDDTHHMMSSZ`.
pub const DATE_HEADER: &str = "x-amz-date";
/// Header carrying the payload hash (or a payload mode), required by S3.
pub const CONTENT_SHA256_HEADER: &str = "x-amz-content-sha256";
/// Header carrying the data length of an `aws-chunked` body, without its framing.
pub const DECODED_LENGTH_HEADER: &str = "x-amz-decoded-content-length";
/// Header carrying a temporary credential's session token.
pub const SECURITY_TOKEN_HEADER: &str = "x-amz-security-token";
/// Payload hash of an `aws-chunked` body whose chunks are signed one by one.
pub const STREAMING_PAYLOAD: &str = "STREAMING-AWS4-HMAC-SHA256-PAYLOAD";

/// Characters left as they are in canonical URIs and query strings: RFC 3986 unreserved.
const UNRESERVED: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'.')
    .remove(b'_')
    .remove(b'~');
/// The same, keeping `/` between path segments.
const UNRESERVED_AND_SLASH: &AsciiSet = &UNRESERVED.remove(b'/');

const AMZ_DATE: &[FormatItem<'static>] =
    time::macros::format_description!("[year][month][day]T[hour][minute][second]Z");

/// A request's SigV4 signature can't be read or doesn't hold.
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum SigError {
    /// The Authorization header or a signed part of the request is malformed.
    #[error("malformed AWS SigV4 request: {0}")]
    Malformed(&'static str),
    /// The signature does not match the request.
    #[error(
        "the request signature does not match: sign it with the access key id and secret access key from `seks token create`"
    )]
    Mismatch,
    /// The request time is too far from the broker's clock.
    #[error("the request time is more than {0} minutes from the broker's clock (or is not signed)")]
    Skewed(i64),
    /// The same signed request was already used.
    #[error("this signed request was already used; an SDK signs every new request afresh")]
    Replayed,
    /// This token (with those derived from it) made too many signed requests in the skew
    /// window for the broker to remember more of them; it has room again after the seconds
    /// given.
    #[error(
        "this token made too many signed requests in the last minutes to check for replays; retry after {0} s"
    )]
    TooMany(u64),
    /// Too many signed requests in the skew window to tell replays apart; there is room
    /// again after the seconds given.
    #[error("too many signed requests in the last minutes to check for replays; retry after {0} s")]
    Overloaded(u64),
    /// The body's payload mode is not one the broker can re-sign.
    #[error(
        "the payload mode `{0}` is not supported; use a signed, unsigned or STREAMING-AWS4-HMAC-SHA256-PAYLOAD body"
    )]
    UnsupportedPayload(String),
}

/// The real key pair, stored as the secret's value:
/// `{"access_key_id": "…", "secret_access_key": "…", "session_token": "…"}` (token optional).
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KeyPair {
    /// Public identifier of the key.
    pub access_key_id: String,
    /// The signing secret.
    pub secret_access_key: SecretString,
    /// Session token of temporary credentials.
    #[serde(default)]
    pub session_token: Option<SecretString>,
}

impl KeyPair {
    /// Read a stored value; the error says what shape is expected, never the value.
    pub fn parse(value: &str) -> Result<KeyPair, &'static str> {
        let pair: KeyPair = serde_json::from_str(value).map_err(|_| {
            r#"an AWS key pair is JSON: {"access_key_id": "…", "secret_access_key": "…"} (and optionally "session_token")"#
        })?;
        let printable = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_graphic());
        if !printable(&pair.access_key_id)
            || pair.access_key_id.contains('/')
            || !printable(pair.secret_access_key.expose_secret())
            || pair
                .session_token
                .as_ref()
                .is_some_and(|t| !printable(t.expose_secret()))
        {
            return Err(
                "AWS key pair fields must be printable ASCII without spaces or `/` in the id",
            );
        }
        Ok(pair)
    }
}

impl std::fmt::Debug for KeyPair {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("KeyPair([REDACTED])")
    }
}

/// Where a signature applies: `date/region/service/aws4_request`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Scope {
    /// `YYYYMMDD`, the day of the request time.
    pub date: String,
    /// E.g. `us-east-1`.
    pub region: String,
    /// E.g. `s3`.
    pub service: String,
}

impl std::fmt::Display for Scope {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{}/{}/{}/aws4_request",
            self.date, self.region, self.service
        )
    }
}

/// The `Authorization` header an SDK sends:
/// `AWS4-HMAC-SHA256 Credential=AKID/scope, SignedHeaders=a;b, Signature=hex`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Authorization {
    /// The access key id the request was signed with.
    pub access_key_id: String,
    /// Where the signature applies.
    pub scope: Scope,
    /// Lowercase header names covered by the signature, sorted.
    pub signed_headers: Vec<String>,
    /// The signature.
    pub signature: [u8; 32],
}

impl Authorization {
    /// Parse the header value.
    pub fn parse(value: &str) -> Result<Authorization, SigError> {
        let rest = value
            .strip_prefix(ALGORITHM)
            .and_then(|r| r.strip_prefix(' '))
            .ok_or(SigError::Malformed(
                "the Authorization scheme is not AWS4-HMAC-SHA256",
            ))?;
        let (mut credential, mut signed, mut signature) = (None, None, None);
        for part in rest.split(',') {
            let (key, value) = part
                .trim()
                .split_once('=')
                .ok_or(SigError::Malformed("an Authorization field has no `=`"))?;
            let slot = match key {
                "Credential" => &mut credential,
                "SignedHeaders" => &mut signed,
                "Signature" => &mut signature,
                _ => return Err(SigError::Malformed("unknown Authorization field")),
            };
            if slot.replace(value).is_some() {
                return Err(SigError::Malformed("repeated Authorization field"));
            }
        }
        let credential = credential.ok_or(SigError::Malformed("no Credential"))?;
        let parts: Vec<&str> = credential.split('/').collect();
        let [id, date, region, service, "aws4_request"] = parts.as_slice() else {
            return Err(SigError::Malformed(
                "Credential is not AKID/date/region/service/aws4_request",
            ));
        };
        if id.is_empty() || date.len() != 8 || !date.bytes().all(|b| b.is_ascii_digit()) {
            return Err(SigError::Malformed("bad Credential scope"));
        }
        let signed_headers: Vec<String> = signed
            .ok_or(SigError::Malformed("no SignedHeaders"))?
            .split(';')
            .map(str::to_owned)
            .collect();
        if signed_headers.is_sorted_by(|a, b| a < b) && !signed_headers.iter().any(String::is_empty)
        {
            Ok(Authorization {
                access_key_id: (*id).to_owned(),
                scope: Scope {
                    date: (*date).to_owned(),
                    region: (*region).to_owned(),
                    service: (*service).to_owned(),
                },
                signed_headers,
                signature: decode_signature(signature.ok_or(SigError::Malformed("no Signature"))?)?,
            })
        } else {
            Err(SigError::Malformed(
                "SignedHeaders must be sorted and unique",
            ))
        }
    }

    /// Render the header value.
    pub fn render(&self) -> String {
        format!(
            "{ALGORITHM} Credential={}/{}, SignedHeaders={}, Signature={}",
            self.access_key_id,
            self.scope,
            self.signed_headers.join(";"),
            hex(&self.signature)
        )
    }
}

/// 64 hex digits to bytes.
pub fn decode_signature(text: &str) -> Result<[u8; 32], SigError> {
    let bad = SigError::Malformed("a signature is not 64 hex digits");
    if text.len() != 64 {
        return Err(bad);
    }
    let mut out = [0u8; 32];
    for (i, pair) in text.as_bytes().chunks(2).enumerate() {
        let pair = std::str::from_utf8(pair).map_err(|_| bad.clone())?;
        out[i] = u8::from_str_radix(pair, 16).map_err(|_| bad.clone())?;
    }
    Ok(out)
}

/// Compare two signatures in constant time.
pub fn same_signature(a: &[u8; 32], b: &[u8; 32]) -> bool {
    a.ct_eq(b).into()
}

/// The day's key for one scope, derived from a secret access key.
pub struct SigningKey(hmac::Key);

impl SigningKey {
    /// `kSigning = HMAC(HMAC(HMAC(HMAC("AWS4" + secret, date), region), service), "aws4_request")`.
    pub fn new(secret: &SecretString, scope: &Scope) -> SigningKey {
        let seed = zeroize::Zeroizing::new(format!("AWS4{}", secret.expose_secret()));
        let mut key = hmac::Key::new(hmac::HMAC_SHA256, seed.as_bytes());
        for part in [&scope.date, &scope.region, &scope.service, "aws4_request"] {
            let tag = hmac::sign(&key, part.as_bytes());
            key = hmac::Key::new(hmac::HMAC_SHA256, tag.as_ref());
        }
        SigningKey(key)
    }

    /// The signature of a string to sign.
    pub fn sign(&self, string_to_sign: &str) -> [u8; 32] {
        let tag = hmac::sign(&self.0, string_to_sign.as_bytes());
        let mut out = [0u8; 32];
        out.copy_from_slice(tag.as_ref());
        out
    }
}

/// Hex SHA-256, the hash SigV4 uses everywhere.
pub fn sha256_hex(data: &[u8]) -> String {
    hex(digest(&SHA256, data).as_ref())
}

/// What a signature covers, before it is reduced to the canonical request text.
pub struct RequestParts<'a> {
    /// Method, uppercase.
    pub method: &'a str,
    /// Path exactly as sent (percent-encoded).
    pub path: &'a str,
    /// Query string as sent, without `?`.
    pub query: Option<&'a str>,
    /// The request's headers; `host` must be among them.
    pub headers: &'a HeaderMap,
    /// Hex SHA-256 of the body, or a payload mode such as `UNSIGNED-PAYLOAD`.
    pub payload_hash: &'a str,
}

impl RequestParts<'_> {
    /// The canonical request over `signed` headers. S3 signs the path as sent; every other
    /// service signs it normalised and encoded once more.
    pub fn canonical(&self, signed: &[String], service: &str) -> Result<String, SigError> {
        let path = if service == "s3" {
            self.path.to_owned()
        } else {
            utf8_percent_encode(&normalize_path(self.path), UNRESERVED_AND_SLASH).to_string()
        };
        let mut text = format!(
            "{}\n{}\n{}\n",
            self.method,
            if path.is_empty() { "/" } else { &path },
            canonical_query(self.query.unwrap_or(""))
        );
        for name in signed {
            let mut values = self.headers.get_all(name.as_str()).iter().peekable();
            if values.peek().is_none() {
                return Err(SigError::Malformed("a signed header is missing"));
            }
            let joined = values
                .map(|v| {
                    let v = std::str::from_utf8(v.as_bytes())
                        .map_err(|_| SigError::Malformed("a signed header is not text"))?;
                    Ok(v.split_ascii_whitespace().collect::<Vec<_>>().join(" "))
                })
                .collect::<Result<Vec<_>, SigError>>()?
                .join(",");
            text.push_str(name);
            text.push(':');
            text.push_str(&joined);
            text.push('\n');
        }
        text.push('\n');
        text.push_str(&signed.join(";"));
        text.push('\n');
        text.push_str(self.payload_hash);
        Ok(text)
    }
}

/// `AWS4-HMAC-SHA256\n<time>\n<scope>\n<hash of canonical request>`.
pub fn string_to_sign(amz_date: &str, scope: &Scope, canonical_request: &str) -> String {
    format!(
        "{ALGORITHM}\n{amz_date}\n{scope}\n{}",
        sha256_hex(canonical_request.as_bytes())
    )
}

/// Each `&`-separated pair decoded and re-encoded, then sorted by key and value.
fn canonical_query(query: &str) -> String {
    let mut pairs: Vec<(String, String)> = query
        .split('&')
        .filter(|pair| !pair.is_empty())
        .map(|pair| {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            (reencode(k), reencode(v))
        })
        .collect();
    pairs.sort();
    pairs
        .into_iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join("&")
}

fn reencode(part: &str) -> String {
    // A `+` in a query is a literal plus to AWS, not a space.
    let decoded = percent_decode_str(part).collect::<Vec<u8>>();
    percent_encoding::percent_encode(&decoded, UNRESERVED).to_string()
}

/// RFC 3986 dot-segment removal, keeping a trailing slash.
fn normalize_path(path: &str) -> String {
    let mut out: Vec<&str> = Vec::new();
    for segment in path.split('/') {
        match segment {
            "" | "." => {}
            ".." => {
                out.pop();
            }
            s => out.push(s),
        }
    }
    let mut joined = format!("/{}", out.join("/"));
    if path.ends_with('/') && joined != "/" {
        joined.push('/');
    }
    joined
}

/// Parse `x-amz-date`.
pub fn parse_amz_date(text: &str) -> Result<i64, SigError> {
    PrimitiveDateTime::parse(text, AMZ_DATE)
        .map(|t| t.assume_utc().unix_timestamp())
        .map_err(|_| SigError::Malformed("x-amz-date is not YYYYMMDDTHHMMSSZ"))
}

/// Format a Unix time as `x-amz-date`.
pub fn format_amz_date(unix: i64) -> String {
    OffsetDateTime::from_unix_timestamp(unix)
        .ok()
        .and_then(|t| t.format(AMZ_DATE).ok())
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    /// AWS's documented example key (S3 "Signature Calculations" examples).
    pub(super) fn example_secret() -> SecretString {
        SecretString::from("wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY")
    }

    pub(super) fn example_scope() -> Scope {
        Scope {
            date: "20130524".to_owned(),
            region: "us-east-1".to_owned(),
            service: "s3".to_owned(),
        }
    }

    #[test]
    fn signs_aws_documented_get_object_example() {
        let mut headers = HeaderMap::new();
        headers.insert(
            "host",
            HeaderValue::from_static("examplebucket.s3.amazonaws.com"),
        );
        headers.insert("range", HeaderValue::from_static("bytes=0-9"));
        let empty = sha256_hex(b"");
        headers.insert(
            CONTENT_SHA256_HEADER,
            HeaderValue::from_str(&empty).unwrap(),
        );
        headers.insert(DATE_HEADER, HeaderValue::from_static("20130524T000000Z"));
        let signed: Vec<String> = ["host", "range", "x-amz-content-sha256", "x-amz-date"]
            .map(str::to_owned)
            .to_vec();
        let parts = RequestParts {
            method: "GET",
            path: "/test.txt",
            query: None,
            headers: &headers,
            payload_hash: &empty,
        };
        let canonical = parts.canonical(&signed, "s3").unwrap();
        let scope = example_scope();
        let sts = string_to_sign("20130524T000000Z", &scope, &canonical);
        let signature = SigningKey::new(&example_secret(), &scope).sign(&sts);
        assert_eq!(
            hex(&signature),
            "f0e8bdb87c964420e857bd35b5d6ed310bd44f0170aba48dd91039c6036bdb41"
        );
    }

    #[test]
    fn signs_aws_documented_list_objects_example() {
        let mut headers = HeaderMap::new();
        headers.insert(
            "host",
            HeaderValue::from_static("examplebucket.s3.amazonaws.com"),
        );
        let empty = sha256_hex(b"");
        headers.insert(
            CONTENT_SHA256_HEADER,
            HeaderValue::from_str(&empty).unwrap(),
        );
        headers.insert(DATE_HEADER, HeaderValue::from_static("20130524T000000Z"));
        let signed: Vec<String> = ["host", "x-amz-content-sha256", "x-amz-date"]
            .map(str::to_owned)
            .to_vec();
        let parts = RequestParts {
            method: "GET",
            path: "/",
            query: Some("max-keys=2&prefix=J"),
            headers: &headers,
            payload_hash: &empty,
        };
        let canonical = parts.canonical(&signed, "s3").unwrap();
        let scope = example_scope();
        let sts = string_to_sign("20130524T000000Z", &scope, &canonical);
        assert_eq!(
            hex(&SigningKey::new(&example_secret(), &scope).sign(&sts)),
            "34b48302e7b5fa45bde8084f4b7868a86f0a534bc59db6670ed5711ef69dc6f7"
        );
    }

    #[test]
    fn authorization_headers_round_trip_and_refuse_garbage() {
        let text = "AWS4-HMAC-SHA256 Credential=AKIAIOSFODNN7EXAMPLE/20130524/us-east-1/s3/aws4_request, SignedHeaders=host;range;x-amz-date, Signature=fe5f80f77d5fa3beca038a248ff027d0445342fe2855ddc963176630326f1024";
        let parsed = Authorization::parse(text).unwrap();
        assert_eq!(parsed.access_key_id, "AKIAIOSFODNN7EXAMPLE");
        assert_eq!(
            parsed.scope.to_string(),
            "20130524/us-east-1/s3/aws4_request"
        );
        assert_eq!(parsed.signed_headers, ["host", "range", "x-amz-date"]);
        assert_eq!(parsed.render(), text);
        for bad in [
            "Bearer x",
            "AWS4-HMAC-SHA256 Credential=A/2013/us/s3/aws4_request, SignedHeaders=host, Signature=00",
            "AWS4-HMAC-SHA256 Credential=A/20130524/us/s3/aws4_request, SignedHeaders=x;host, Signature=fe5f80f77d5fa3beca038a248ff027d0445342fe2855ddc963176630326f1024",
            "AWS4-HMAC-SHA256 Credential=A/20130524/us/s3/other, SignedHeaders=host, Signature=fe5f80f77d5fa3beca038a248ff027d0445342fe2855ddc963176630326f1024",
            "AWS4-HMAC-SHA256 Credential=A/20130524/us/s3/aws4_request, Credential=B/20130524/us/s3/aws4_request, SignedHeaders=host, Signature=fe5f80f77d5fa3beca038a248ff027d0445342fe2855ddc963176630326f1024",
        ] {
            assert!(Authorization::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn other_services_sign_a_normalised_twice_encoded_path_and_sorted_query() {
        let mut headers = HeaderMap::new();
        headers.insert("host", HeaderValue::from_static("example.amazonaws.com"));
        let parts = RequestParts {
            method: "GET",
            path: "/a/./b/../c%20d",
            query: Some("b=2&a=x+y&a=1&flag"),
            headers: &headers,
            payload_hash: "UNSIGNED-PAYLOAD",
        };
        let canonical = parts
            .canonical(&["host".to_owned()], "execute-api")
            .unwrap();
        assert_eq!(
            canonical,
            "GET\n/a/c%2520d\na=1&a=x%2By&b=2&flag=\nhost:example.amazonaws.com\n\nhost\nUNSIGNED-PAYLOAD"
        );
        assert_eq!(normalize_path("/"), "/");
        assert_eq!(normalize_path("/x/"), "/x/");
    }

    #[test]
    fn dates_parse_and_format() {
        assert_eq!(parse_amz_date("20130524T000000Z"), Ok(1_369_353_600));
        assert_eq!(format_amz_date(1_369_353_600), "20130524T000000Z");
        assert!(parse_amz_date("2013-05-24").is_err());
    }

    #[test]
    fn key_pairs_are_json_and_never_printed() {
        let pair =
            KeyPair::parse(r#"{"access_key_id":"AKID","secret_access_key":"s3cr3t/K"}"#).unwrap();
        assert_eq!(pair.access_key_id, "AKID");
        assert_eq!(format!("{pair:?}"), "KeyPair([REDACTED])");
        assert!(KeyPair::parse("AKID:secret").is_err());
        assert!(KeyPair::parse(r#"{"access_key_id":"A/B","secret_access_key":"x"}"#).is_err());
        assert!(KeyPair::parse(r#"{"access_key_id":"A","secret_access_key":"a b"}"#).is_err());
    }
}
