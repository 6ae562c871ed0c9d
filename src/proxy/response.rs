//! Upstream responses on their way to the agent: hop-by-hop headers dropped, compressed
//! bodies decoded (a compressed copy of a secret can't be scrubbed), headers and body
//! scrubbed, and a silent stream cut after the read timeout.

use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use async_compression::tokio::bufread::{BrotliDecoder, GzipDecoder, ZlibDecoder, ZstdDecoder};
use axum::body::Body;
use axum::response::Response;
use bytes::Bytes;
use futures_util::TryStreamExt;
use http::{HeaderMap, header};
use http_body::Frame;
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, StreamBody};
use hyper::body::Incoming;
use tokio::io::AsyncRead;
use tokio_util::io::{ReaderStream, StreamReader};
use tower_http::timeout::TimeoutBody;

use super::audited::PendingRecord;
use super::lifetime::{TokenWatch, WatchedBody};
use super::rewrite;
use super::{ProxyError, enforce};
use crate::keyring::Keyring;
use crate::policy::limits::Admission;
use crate::policy::usage::{MeteredBody, UsageMeter};
use crate::scrub::{self, BoxError, ScrubBody, Scrubber};

/// Read size when decoding a compressed body.
const DECODE_CHUNK: usize = 64 * 1024;
/// Largest answer read whole to withhold credential members from; a longer one is cut off,
/// since it can't be checked.
const WITHHOLD_LIMIT: usize = 16 << 20;
/// What a withheld member's value becomes.
const WITHHELD: &str = "[withheld by seks: a root policy must set mint_credentials = true]";

/// A content coding the broker can undo.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Coding {
    Gzip,
    Deflate,
    Brotli,
    Zstd,
}

/// What to do with a response's usage report.
pub struct Metering {
    /// The request's slots and charges, when its token has limits.
    pub admission: Option<Admission>,
    /// Whether the provider is an LLM API, whose usage and model the audit log records.
    pub llm: bool,
    /// The request's audit record.
    pub record: Arc<PendingRecord>,
}

/// What the agent must not see of an answer.
pub struct Hidden<'a> {
    /// Masks every secret.
    pub scrubber: &'a Arc<Scrubber>,
    /// JSON members withheld whole: credentials the upstream hands out (see
    /// [`crate::providers::Provider::credential_members`]).
    pub members: Option<Arc<[String]>>,
    /// Whether the upstream's `Set-Cookie` is withheld: a session it opens on the injected
    /// credential would work without the broker (which never forwards an agent's cookies).
    pub cookies: bool,
}

/// Turn an upstream response into the agent's response, with what `hidden` names hidden.
/// `has_body` is false for answers to HEAD and for 204 and 304, whose headers describe a
/// body that isn't sent.
pub fn to_agent(
    response: http::Response<Incoming>,
    hidden: Hidden<'_>,
    read_timeout: Duration,
    has_body: bool,
    metering: Metering,
    watch: Option<TokenWatch>,
    keyring: &Arc<Keyring>,
) -> Result<Response, ProxyError> {
    let (mut parts, body) = response.into_parts();
    // Extensions carry hyper's copy of the status line's reason phrase, which an upstream
    // could fill with anything; the agent gets the standard one.
    parts.extensions = http::Extensions::new();
    only_chunked_transfer(&parts.headers)?;
    agent_headers(&mut parts.headers, &hidden);
    let mut body = TimeoutBody::new(read_timeout, body)
        .map_err(BoxError::from)
        .boxed_unsync();
    let has_body = has_body
        && parts.status != http::StatusCode::NO_CONTENT
        && parts.status != http::StatusCode::NOT_MODIFIED;
    if let Some(coding) = content_coding(&parts.headers)?
        && has_body
    {
        // The agent gets the decoded body; its length is unknown until the end.
        parts.headers.remove(header::CONTENT_ENCODING);
        parts.headers.remove(header::CONTENT_LENGTH);
        body = decode(coding, body);
    }
    if let Some(members) = hidden.members
        && has_body
        && is_json(&parts.headers)
    {
        parts.headers.remove(header::CONTENT_LENGTH);
        body = withhold(body, members);
    }
    // Usage is read before scrubbing: the numbers are no secret, and the masks could hide
    // them. The admission (concurrency slots) lives as long as the body.
    let Metering {
        admission,
        llm,
        record,
    } = metering;
    let counts_tokens = admission.as_ref().is_some_and(Admission::counts_tokens);
    let meter = (has_body && (llm || counts_tokens)).then(|| {
        let header_text = |name| parts.headers.get(name).and_then(|v| v.to_str().ok());
        UsageMeter::new(
            header_text(header::CONTENT_TYPE),
            header_text(header::CONTENT_LENGTH).and_then(|n| n.parse().ok()),
        )
    });
    if meter.is_some() || admission.is_some() {
        body = MeteredBody::new(
            body,
            meter,
            (admission, record),
            |usage, (admission, record)| {
                if let Some(admission) = admission {
                    enforce::charge_usage(usage.tokens(), admission);
                }
                record.update(|r| {
                    r.usage_tokens = Some(usage.tokens()).filter(|t| *t > 0);
                    if r.model.is_none() {
                        r.model = usage.model().map(str::to_owned);
                    }
                });
            },
        )
        .boxed_unsync();
    }
    let body = ScrubBody::new(body, hidden.scrubber.stream()).following(keyring.redactor());
    let body = match watch {
        Some(token) => Body::new(WatchedBody::new(body, token)),
        None => Body::new(body),
    };
    Ok(Response::from_parts(parts, body))
}

/// An answer's headers as the agent may see them: hop-by-hop and forged ones dropped, the
/// cookies when `hidden` says, every secret masked.
pub(crate) fn agent_headers(headers: &mut HeaderMap, hidden: &Hidden<'_>) {
    rewrite::clean_response_headers(headers);
    if hidden.cookies {
        headers.remove(header::SET_COOKIE);
    }
    scrub::scrub_headers(hidden.scrubber, headers);
}

/// Whether the response declares JSON (`application/json`, or a `+json` type).
fn is_json(headers: &HeaderMap) -> bool {
    headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .map(|t| t.trim().to_ascii_lowercase())
        .is_some_and(|t| t == "application/json" || t.ends_with("+json"))
}

/// `body` read whole (up to [`WITHHOLD_LIMIT`]; a longer one fails) with every JSON member
/// named in `members` withheld.
fn withhold(
    body: UnsyncBoxBody<Bytes, BoxError>,
    members: Arc<[String]>,
) -> UnsyncBoxBody<Bytes, BoxError> {
    StreamBody::new(futures_util::stream::once(withheld_whole(body, members))).boxed_unsync()
}

async fn withheld_whole(
    mut body: UnsyncBoxBody<Bytes, BoxError>,
    members: Arc<[String]>,
) -> Result<Frame<Bytes>, BoxError> {
    let mut json = bytes::BytesMut::new();
    while let Some(frame) = body.frame().await {
        if let Ok(data) = frame?.into_data() {
            if json.len() + data.len() > WITHHOLD_LIMIT {
                return Err("the answer is too long to check for credentials to withhold".into());
            }
            json.extend_from_slice(&data);
        }
    }
    withhold_members(json.freeze(), &members).map(Frame::data)
}

/// `json` with the value of every member named in `members`, at any depth, replaced by
/// [`WITHHELD`]; as it was when it isn't JSON or holds none of them.
fn withhold_members(json: Bytes, members: &[String]) -> Result<Bytes, BoxError> {
    let Ok(mut document) = serde_json::from_slice::<serde_json::Value>(&json) else {
        return Ok(json);
    };
    if !replace_members(&mut document, members) {
        return Ok(json);
    }
    Ok(Bytes::from(serde_json::to_vec(&document)?))
}

/// Replace the values of `members` in `value`; whether there was one.
pub(crate) fn replace_members(value: &mut serde_json::Value, members: &[String]) -> bool {
    use serde_json::Value;
    match value {
        Value::Object(map) => map.iter_mut().fold(false, |found, (name, member)| {
            if members.contains(name) {
                let held = !member.is_null();
                if held {
                    *member = Value::String(WITHHELD.to_owned());
                }
                found | held
            } else {
                replace_members(member, members) | found
            }
        }),
        Value::Array(items) => items
            .iter_mut()
            .fold(false, |found, item| replace_members(item, members) | found),
        _ => false,
    }
}

/// Whether a response's body reaches the broker as the upstream wrote it: with no content
/// coding and no transfer coding but `chunked`, which hyper undoes.
pub(crate) fn arrives_unencoded(headers: &HeaderMap) -> bool {
    only_chunked_transfer(headers).is_ok() && matches!(content_coding(headers), Ok(None))
}

/// The response's content coding; codings the broker can't decode (and lists of several)
/// are refused, since what can't be read can't be scrubbed.
fn content_coding(headers: &HeaderMap) -> Result<Option<Coding>, ProxyError> {
    let mut values = headers.get_all(header::CONTENT_ENCODING).iter();
    let Some(value) = values.next() else {
        return Ok(None);
    };
    if values.next().is_some() {
        return Err(ProxyError::UnsupportedEncoding);
    }
    let text = value
        .to_str()
        .map_err(|_| ProxyError::UnsupportedEncoding)?
        .trim()
        .to_ascii_lowercase();
    match text.as_str() {
        "" | "identity" => Ok(None),
        "gzip" | "x-gzip" => Ok(Some(Coding::Gzip)),
        "deflate" => Ok(Some(Coding::Deflate)),
        "br" => Ok(Some(Coding::Brotli)),
        "zstd" => Ok(Some(Coding::Zstd)),
        _ => Err(ProxyError::UnsupportedEncoding),
    }
}

/// Hyper undoes `chunked` only; any other transfer coding (`gzip, chunked`) would reach the
/// scrubber still encoded, so it is refused.
fn only_chunked_transfer(headers: &HeaderMap) -> Result<(), ProxyError> {
    let all_chunked = headers
        .get_all(header::TRANSFER_ENCODING)
        .iter()
        .all(|value| {
            value.to_str().is_ok_and(|text| {
                text.split(',')
                    .all(|coding| coding.trim().eq_ignore_ascii_case("chunked"))
            })
        });
    if all_chunked {
        Ok(())
    } else {
        Err(ProxyError::UnsupportedEncoding)
    }
}

fn decode(coding: Coding, body: UnsyncBoxBody<Bytes, BoxError>) -> UnsyncBoxBody<Bytes, BoxError> {
    let reader = StreamReader::new(body.into_data_stream().map_err(std::io::Error::other));
    let decoder: Pin<Box<dyn AsyncRead + Send>> = match coding {
        Coding::Gzip => {
            let mut d = GzipDecoder::new(reader);
            d.multiple_members(true);
            Box::pin(d)
        }
        // HTTP's "deflate" is the zlib format (RFC 9110 §8.4.1.2).
        Coding::Deflate => Box::pin(ZlibDecoder::new(reader)),
        Coding::Brotli => Box::pin(BrotliDecoder::new(reader)),
        Coding::Zstd => Box::pin(ZstdDecoder::new(reader)),
    };
    let frames = ReaderStream::with_capacity(decoder, DECODE_CHUNK)
        .map_ok(Frame::data)
        .map_err(BoxError::from);
    StreamBody::new(frames).boxed_unsync()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn with_coding(value: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(header::CONTENT_ENCODING, value.parse().unwrap());
        h
    }

    #[test]
    fn known_codings_are_decoded_and_others_refused() {
        assert_eq!(content_coding(&HeaderMap::new()).unwrap(), None);
        assert_eq!(content_coding(&with_coding("identity")).unwrap(), None);
        assert_eq!(
            content_coding(&with_coding("GZIP")).unwrap(),
            Some(Coding::Gzip)
        );
        assert_eq!(
            content_coding(&with_coding("br")).unwrap(),
            Some(Coding::Brotli)
        );
        assert_eq!(
            content_coding(&with_coding("zstd")).unwrap(),
            Some(Coding::Zstd)
        );
        assert_eq!(
            content_coding(&with_coding("deflate")).unwrap(),
            Some(Coding::Deflate)
        );
        assert!(content_coding(&with_coding("compress")).is_err());
        assert!(content_coding(&with_coding("gzip, br")).is_err());
        let mut latin1 = HeaderMap::new();
        latin1.insert(
            header::CONTENT_ENCODING,
            http::HeaderValue::from_bytes(b"gz\xe9p").unwrap(),
        );
        assert!(content_coding(&latin1).is_err());
    }

    #[test]
    fn transfer_codings_other_than_chunked_are_refused() {
        let with = |value: &'static str| {
            let mut h = HeaderMap::new();
            h.insert(
                header::TRANSFER_ENCODING,
                http::HeaderValue::from_static(value),
            );
            h
        };
        assert!(only_chunked_transfer(&HeaderMap::new()).is_ok());
        assert!(only_chunked_transfer(&with("chunked")).is_ok());
        assert!(only_chunked_transfer(&with("gzip, chunked")).is_err());
    }
}
