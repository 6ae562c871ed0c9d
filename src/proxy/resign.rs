//! Providers that sign requests (AWS SigV4): the agent's SDK signs with the key pair the
//! broker minted (access key id = token id, secret access key = the token), the broker
//! checks that signature, then signs the forwarded request afresh with the real key pair.

use axum::body::Body;
use bytes::Bytes;
use http::request::Parts;
use http::{HeaderMap, HeaderValue, Request, header};
use http_body_util::BodyExt;
use secrecy::{ExposeSecret, SecretString};

use super::ProxyError;
use crate::providers::{AuthScheme, Provider};
use crate::sigv4::chunked::{self, ChunkChain};
use crate::sigv4::replay::{Claim, ReplayGuard};
use crate::sigv4::{
    Authorization, CONTENT_SHA256_HEADER, DATE_HEADER, DECODED_LENGTH_HEADER, KeyPair,
    RequestParts, SECURITY_TOKEN_HEADER, STREAMING_PAYLOAD, Scope, SigError, SigningKey,
    format_amz_date, parse_amz_date, sha256_hex, string_to_sign,
};
use crate::tokens::SigningTokens;

/// Payload modes whose body goes upstream as it is.
const PASSED_PAYLOADS: [&str; 2] = ["UNSIGNED-PAYLOAD", "STREAMING-UNSIGNED-PAYLOAD-TRAILER"];

/// The signature on an agent's request, and the token its access key id stands for.
pub struct AgentSignature {
    authorization: Authorization,
    /// The token the agent signed with, recomputed from the access key id.
    pub token: SecretString,
}

impl AgentSignature {
    /// Read the `Authorization` header; the token is recomputed, not yet looked up.
    pub fn read(
        signing: &SigningTokens,
        provider: &Provider,
        headers: &HeaderMap,
    ) -> Result<AgentSignature, ProxyError> {
        let mut values = headers.get_all(header::AUTHORIZATION).iter();
        let value = match (values.next(), values.next()) {
            (None, _) => {
                return Err(ProxyError::MissingToken(
                    "an AWS SigV4 Authorization header; presigned URLs are not accepted".to_owned(),
                ));
            }
            (Some(_), Some(_)) => return Err(ProxyError::AmbiguousToken),
            (Some(v), None) => v
                .to_str()
                .map_err(|_| SigError::Malformed("the Authorization header is not text"))?,
        };
        let authorization = Authorization::parse(value)?;
        let id = &authorization.access_key_id;
        if !id.starts_with("tok_") || !id[4..].bytes().all(|b| b.is_ascii_alphanumeric()) {
            return Err(ProxyError::UnknownToken);
        }
        let token = signing.token(&provider.name, id);
        Ok(AgentSignature {
            authorization,
            token,
        })
    }

    /// Check the signature against the request as the agent sent it, buffering the body when
    /// its hash is not given in `x-amz-content-sha256`; `owner` is the token the signature
    /// is remembered for.
    pub async fn check(
        self,
        parts: &Parts,
        body: Body,
        max_body: usize,
        replay: &ReplayGuard,
        owner: &str,
        now: i64,
    ) -> Result<(Body, Checked), ProxyError> {
        let AgentSignature {
            authorization: auth,
            token,
        } = self;
        for required in ["host", DATE_HEADER] {
            if !auth.signed_headers.iter().any(|h| h == required) {
                return Err(SigError::Malformed("host and x-amz-date must be signed").into());
            }
        }
        // Headers named in `Connection` are not forwarded, and the forwarded request is signed
        // with what is left: a signed one named there (by an unsigned `Connection`, which anyone
        // on the way can add) would reach the upstream stripped yet validly signed.
        let hop_by_hop = super::rewrite::connection_tokens(&parts.headers);
        if auth
            .signed_headers
            .iter()
            .any(|h| hop_by_hop.iter().any(|t| t.eq_ignore_ascii_case(h)))
        {
            return Err(SigError::Malformed(
                "a signed header is named in Connection, so it would not be forwarded",
            )
            .into());
        }
        // Upstreams act on every `x-amz-*` header (an ACL, a copy source), and the forwarded
        // request carries the agent's unsigned ones under the real key's signature: one added
        // on the way would take effect wherever the upstream is laxer than S3, which refuses
        // them.
        let unsigned_amz = parts.headers.keys().any(|name| {
            name.as_str().starts_with("x-amz-")
                && !auth
                    .signed_headers
                    .iter()
                    .any(|h| h.eq_ignore_ascii_case(name.as_str()))
        });
        if unsigned_amz {
            return Err(SigError::Malformed(
                "an x-amz-* header is not signed; sign every x-amz-* header, as S3 requires",
            )
            .into());
        }
        let amz_date = single_text(&parts.headers, DATE_HEADER)?
            .ok_or(SigError::Malformed("no x-amz-date header"))?
            .to_owned();
        let signed_at = parse_amz_date(&amz_date)?;
        if !amz_date.starts_with(&auth.scope.date) {
            return Err(
                SigError::Malformed("the Credential date is not the x-amz-date day").into(),
            );
        }
        let (payload_hash, body) = match single_text(&parts.headers, CONTENT_SHA256_HEADER)? {
            Some(given) => {
                check_payload_mode(given)?;
                (given.to_owned(), body)
            }
            None => {
                let bytes = read_body(body, max_body).await?;
                (sha256_hex(&bytes), Body::from(bytes))
            }
        };
        // The chunks are checked against it as they pass: S3 refuses a body of another
        // length only once it has all come.
        let decoded_length = if payload_hash == STREAMING_PAYLOAD {
            single_text(&parts.headers, DECODED_LENGTH_HEADER)?
                .and_then(|text| text.parse().ok())
                .ok_or(SigError::Malformed(
                    "an aws-chunked body needs x-amz-decoded-content-length, its data's length",
                ))?
        } else {
            0
        };
        let mut headers = parts.headers.clone();
        if !headers.contains_key(header::HOST)
            && let Some(authority) = parts.uri.authority()
        {
            // HTTP/2 carries the host as `:authority`, which SDKs sign as `host`.
            let host =
                HeaderValue::from_str(authority.as_str()).map_err(|_| ProxyError::BadHost)?;
            headers.insert(header::HOST, host);
        }
        let canonical = RequestParts {
            method: parts.method.as_str(),
            path: parts.uri.path(),
            query: parts.uri.query(),
            headers: &headers,
            payload_hash: &payload_hash,
        }
        .canonical(&auth.signed_headers, &auth.scope.service)?;
        let key = SigningKey::new(&token, &auth.scope);
        let expected = key.sign(&string_to_sign(&amz_date, &auth.scope, &canonical));
        if !crate::sigv4::same_signature(&expected, &auth.signature) {
            return Err(SigError::Mismatch.into());
        }
        let claim = replay.admit(auth.signature, owner, signed_at, now)?;
        let checked = Checked {
            claim,
            decoded_length,
            payload_hash,
            agent_chain: ChunkChain::new(key, &amz_date, auth.scope, auth.signature),
            signed_headers: auth.signed_headers,
        };
        Ok((body, checked))
    }
}

/// What a checked agent signature leaves for signing the forwarded request.
pub struct Checked {
    /// The signature, for the replicas' shared replay claim.
    pub claim: Claim,
    signed_headers: Vec<String>,
    payload_hash: String,
    /// The data length an `aws-chunked` body declares in `x-amz-decoded-content-length`.
    decoded_length: u64,
    /// The agent's chunk-signature chain, for `aws-chunked` uploads.
    agent_chain: ChunkChain,
}

impl Checked {
    /// Sign `request` (already bound for the pinned upstream, Host set) with the real key
    /// pair in `credential`, re-signing a chunked body chunk by chunk.
    pub fn sign_upstream(
        self,
        provider: &Provider,
        request: &mut Request<Body>,
        credential: &SecretString,
        now: i64,
    ) -> Result<(), ProxyError> {
        let AuthScheme::Sigv4 { region, service } = &provider.auth else {
            return Err(ProxyError::CredentialUnavailable);
        };
        let pair = KeyPair::parse(credential.expose_secret()).map_err(|why| {
            tracing::error!(provider = %provider.name, why, "stored AWS key pair is unusable");
            ProxyError::CredentialUnavailable
        })?;
        let amz_date = format_amz_date(now);
        let scope = Scope {
            date: amz_date[..8].to_owned(),
            region: region.clone(),
            service: service.clone(),
        };
        let headers = request.headers_mut();
        // Only the real credential's session token may go upstream.
        headers.remove(SECURITY_TOKEN_HEADER);
        headers.insert(DATE_HEADER, text_value(&amz_date)?);
        let mut signed: Vec<String> = self
            .signed_headers
            .into_iter()
            .filter(|name| headers.contains_key(name.as_str()))
            .collect();
        if let Some(session) = &pair.session_token {
            let mut value = text_value(session.expose_secret())?;
            value.set_sensitive(true);
            headers.insert(SECURITY_TOKEN_HEADER, value);
            signed.push(SECURITY_TOKEN_HEADER.to_owned());
        }
        signed.push("host".to_owned());
        signed.sort();
        signed.dedup();
        let uri = request.uri().clone();
        let canonical = RequestParts {
            method: request.method().as_str(),
            path: uri.path(),
            query: uri.query(),
            headers: request.headers(),
            payload_hash: &self.payload_hash,
        }
        .canonical(&signed, service)?;
        let key = SigningKey::new(&pair.secret_access_key, &scope);
        let signature = key.sign(&string_to_sign(&amz_date, &scope, &canonical));
        let authorization = Authorization {
            access_key_id: pair.access_key_id,
            scope: scope.clone(),
            signed_headers: signed,
            signature,
        };
        let mut value = text_value(&authorization.render())?;
        value.set_sensitive(true);
        request.headers_mut().insert(header::AUTHORIZATION, value);
        if self.payload_hash == STREAMING_PAYLOAD {
            let upstream_chain = ChunkChain::new(key, &amz_date, scope, signature);
            let body = std::mem::take(request.body_mut());
            // S3 wants aws-chunked bodies with a length, and re-signing keeps it: a body that
            // policy buffered (and so lost its header) still has an exact size.
            if let Some(len) = http_body::Body::size_hint(&body).exact() {
                request
                    .headers_mut()
                    .insert(header::CONTENT_LENGTH, HeaderValue::from(len));
            }
            *request.body_mut() = Body::from_stream(chunked::resign(
                body,
                self.agent_chain,
                upstream_chain,
                self.decoded_length,
            ));
        }
        Ok(())
    }
}

/// The upstream failed because the agent's chunked body did; as the agent's error.
pub fn chunk_error(error: &chunked::ChunkError) -> Option<ProxyError> {
    match error {
        chunked::ChunkError::Signature => Some(SigError::Mismatch.into()),
        chunked::ChunkError::Malformed(why) => Some(SigError::Malformed(why).into()),
        chunked::ChunkError::Body(_) => None,
    }
}

fn check_payload_mode(given: &str) -> Result<(), SigError> {
    let is_hash = given.len() == 64 && given.bytes().all(|b| b.is_ascii_hexdigit());
    if is_hash || given == STREAMING_PAYLOAD || PASSED_PAYLOADS.contains(&given) {
        Ok(())
    } else {
        Err(SigError::UnsupportedPayload(
            given.chars().take(64).collect(),
        ))
    }
}

fn single_text<'a>(headers: &'a HeaderMap, name: &str) -> Result<Option<&'a str>, SigError> {
    let mut values = headers.get_all(name).iter();
    match (values.next(), values.next()) {
        (None, _) => Ok(None),
        (Some(_), Some(_)) => Err(SigError::Malformed("a signing header is repeated")),
        (Some(v), None) => v
            .to_str()
            .map(Some)
            .map_err(|_| SigError::Malformed("a signing header is not text")),
    }
}

fn text_value(text: &str) -> Result<HeaderValue, ProxyError> {
    HeaderValue::from_str(text).map_err(|_| ProxyError::CredentialUnavailable)
}

async fn read_body(body: Body, max: usize) -> Result<Bytes, ProxyError> {
    match http_body_util::Limited::new(body, max).collect().await {
        Ok(collected) => Ok(collected.to_bytes()),
        Err(e) => Err(ProxyError::unreadable_body(e.as_ref(), max)),
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;
    use std::time::Duration;

    use super::*;
    use crate::providers::Providers;

    #[test]
    fn temporary_credentials_send_and_sign_their_session_token() {
        let providers = Providers::load(&BTreeMap::new()).unwrap();
        let s3 = providers.get("s3").unwrap();
        let empty = sha256_hex(b"");
        let mut request = Request::builder()
            .uri("https://s3.amazonaws.com/bucket/key")
            .header("host", "s3.amazonaws.com")
            .header(CONTENT_SHA256_HEADER, &empty)
            .header("x-agent-only", "1")
            .body(Body::empty())
            .unwrap();
        let scope = Scope {
            date: "20130524".to_owned(),
            region: "us-east-1".to_owned(),
            service: "s3".to_owned(),
        };
        let agent_key = SigningKey::new(&SecretString::from("agent"), &scope);
        let checked = Checked {
            claim: Claim {
                signature: [0; 32],
                lapse: Duration::ZERO,
            },
            signed_headers: ["host", "x-amz-content-sha256", "x-amz-date", "x-gone"]
                .map(str::to_owned)
                .to_vec(),
            payload_hash: empty,
            decoded_length: 0,
            agent_chain: ChunkChain::new(agent_key, "20130524T000000Z", scope, [0; 32]),
        };
        let credential = SecretString::from(
            r#"{"access_key_id":"AKID","secret_access_key":"real","session_token":"FwoG-session"}"#,
        );
        checked
            .sign_upstream(s3, &mut request, &credential, 1_369_353_600)
            .unwrap();
        let headers = request.headers();
        assert_eq!(headers[SECURITY_TOKEN_HEADER], "FwoG-session");
        assert_eq!(headers[DATE_HEADER], "20130524T000000Z");
        let auth = Authorization::parse(headers[header::AUTHORIZATION].to_str().unwrap()).unwrap();
        assert_eq!(auth.access_key_id, "AKID");
        assert_eq!(
            auth.signed_headers,
            [
                "host",
                "x-amz-content-sha256",
                "x-amz-date",
                "x-amz-security-token"
            ]
        );
        assert_eq!(auth.scope.to_string(), "20130524/us-east-1/s3/aws4_request");
        assert!(
            headers[header::AUTHORIZATION].is_sensitive()
                && headers[SECURITY_TOKEN_HEADER].is_sensitive()
        );
    }
}
