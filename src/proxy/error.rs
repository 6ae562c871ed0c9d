//! Every way the broker itself refuses or fails a request, with its status, a stable code
//! and a message that tells the agent (and its model) what happened.

use std::time::Duration;

use axum::response::{IntoResponse, Response};
use http::{HeaderValue, StatusCode, header};
use http_body_util::LengthLimitError;
use tower_http::timeout::TimeoutError;

use crate::audit::Decision;
use crate::clock;
use crate::forward::Refusal;
use crate::policy::Denial;
use crate::policy::limits::{self as l, Limited};
use crate::providers::ErrorShape;
use crate::proxy::oauth2::RefreshError;
use crate::server::CLIENT_TIMEOUT;
use crate::sigv4::SigError;
use crate::tokens::TokenFormatError;

/// Header marking responses made by the broker rather than the provider.
pub const SEKS_ERROR_HEADER: &str = "x-seks-error";

/// A request the broker refused or could not complete. Messages never contain credentials.
#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    /// CONNECT, TRACE and the like are never forwarded.
    #[error("method {0} is not allowed through the broker")]
    MethodNotAllowed(http::Method),
    /// An absolute-form request target (proxy-style request) was sent.
    #[error(
        "send requests to the broker with a path such as /api/<provider>/..., not an absolute URL"
    )]
    AbsoluteTarget,
    /// The Host header is repeated or malformed.
    #[error("invalid Host header")]
    BadHost,
    /// The path is not under `/api/<provider>/`.
    #[error("no such route: the broker serves providers at /api/<provider>/...")]
    NoRoute,
    /// The provider segment names no configured provider.
    #[error("unknown provider `{0}`; this broker serves: {1}")]
    UnknownProvider(String, String),
    /// The path could escape the provider's base URL.
    #[error("invalid request path: {0}")]
    BadPath(&'static str),
    /// No token where the provider's SDK sends its key.
    #[error(
        "no SEKS token found: send the token the broker issued as this provider's API key ({0})"
    )]
    MissingToken(String),
    /// The token was sent more than once.
    #[error("the SEKS token was sent more than once; send exactly one")]
    AmbiguousToken,
    /// The token is not well formed.
    #[error("invalid SEKS token: {0}")]
    MalformedToken(#[from] TokenFormatError),
    /// The token belongs to another provider.
    #[error("this token was issued for provider `{token}` and cannot be used for `{route}`")]
    WrongProvider {
        /// Provider the token is for.
        token: String,
        /// Provider the request was sent to.
        route: String,
    },
    /// No such token in the store.
    #[error("unknown SEKS token: it was not issued by this broker, or its secret was removed")]
    UnknownToken,
    /// The token (or an ancestor) was revoked: `at <time>` or `with its parent token`.
    #[error("this SEKS token was revoked {0}")]
    Revoked(String),
    /// The token's (or an ancestor's) lifetime is over.
    #[error("this SEKS token expired {0}")]
    Expired(String),
    /// The token's policy refuses the request.
    #[error("{0}")]
    Policy(#[from] Denial),
    /// The token's policy can't be used (missing named policy, unreadable row).
    #[error("this token's policy can't be applied ({0}), so the request is refused")]
    PolicyUnavailable(String),
    /// A rate, concurrency or budget limit stops the request.
    #[error("{0}; retry after {secs} s", secs = clock::retry_secs(.0.retry_after()))]
    Limited(#[from] Limited),
    /// An operator denied the held request.
    #[error("{0}")]
    ApprovalDenied(String),
    /// Nobody approved the held request in time.
    #[error("{0}")]
    ApprovalTimedOut(String),
    /// The body can't be checked against the policy.
    #[error("{0}")]
    BadBody(&'static str),
    /// The request body is larger than allowed.
    #[error("request body exceeds the broker's limit of {0} bytes")]
    BodyTooLarge(u64),
    /// The agent stopped sending its request body.
    #[error(
        "the request body stopped arriving (nothing for {} s), so the request was dropped",
        CLIENT_TIMEOUT.as_secs()
    )]
    BodyStalled,
    /// The upstream could not be connected to.
    #[error("the upstream for `{0}` could not be reached")]
    UpstreamUnreachable(String),
    /// The upstream closed or reset the connection before responding.
    #[error("the upstream for `{0}` closed the connection before sending a response")]
    UpstreamFailed(String),
    /// The upstream compressed its response with a coding the broker can't decode (and so
    /// can't scrub).
    #[error(
        "the upstream compressed its response in a way the broker cannot inspect, so it was withheld"
    )]
    UnsupportedEncoding,
    /// No OAuth2 access token could be minted; the reason never quotes the token endpoint.
    #[error("the broker could not get an access token for `{0}` from its token endpoint: {1}")]
    CredentialRefreshFailed(String, RefreshError),
    /// The upstream did not send response headers in time.
    #[error("the upstream for `{0}` did not respond within {1:?}")]
    UpstreamTimeout(String, Duration),
    /// The store could not answer, so the broker can't vouch for the token.
    #[error("the broker's store is unavailable, so requests are refused until it recovers")]
    StoreUnavailable,
    /// The credential behind a valid token could not be loaded.
    #[error(
        "the credential for this token could not be loaded; ask the operator to check the broker's logs"
    )]
    CredentialUnavailable,
    /// The audit log can't be written, and the broker fails closed.
    #[error("{0}")]
    AuditUnavailable(String),
    /// An AWS SigV4 request's signature is malformed, wrong, stale or replayed.
    #[error(transparent)]
    Signature(#[from] SigError),
    /// The forward proxy refused the request on its own grounds (caller, destination,
    /// address, a token headed elsewhere).
    #[error(transparent)]
    Forward(#[from] Refusal),
}

impl ProxyError {
    /// HTTP status for this error.
    pub fn status(&self) -> StatusCode {
        use ProxyError::*;
        match self {
            MethodNotAllowed(_) | AbsoluteTarget | BadHost | BadPath(_) | BadBody(_) => {
                StatusCode::BAD_REQUEST
            }
            Policy(_) | PolicyUnavailable(_) | ApprovalDenied(_) | ApprovalTimedOut(_) => {
                StatusCode::FORBIDDEN
            }
            Limited(_) => StatusCode::TOO_MANY_REQUESTS,
            NoRoute | UnknownProvider(..) => StatusCode::NOT_FOUND,
            MissingToken(_)
            | AmbiguousToken
            | MalformedToken(_)
            | WrongProvider { .. }
            | UnknownToken
            | Revoked(_)
            | Expired(_) => StatusCode::UNAUTHORIZED,
            BodyTooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            BodyStalled => StatusCode::REQUEST_TIMEOUT,
            UpstreamUnreachable(_)
            | UpstreamFailed(_)
            | UnsupportedEncoding
            | CredentialRefreshFailed(..) => StatusCode::BAD_GATEWAY,
            UpstreamTimeout(..) => StatusCode::GATEWAY_TIMEOUT,
            StoreUnavailable | CredentialUnavailable | AuditUnavailable(_) => {
                StatusCode::SERVICE_UNAVAILABLE
            }
            Signature(SigError::Malformed(_) | SigError::UnsupportedPayload(_)) => {
                StatusCode::BAD_REQUEST
            }
            Signature(SigError::Overloaded(_)) => StatusCode::SERVICE_UNAVAILABLE,
            Signature(SigError::TooMany(_)) => StatusCode::TOO_MANY_REQUESTS,
            Signature(SigError::Mismatch | SigError::Skewed(_) | SigError::Replayed) => {
                StatusCode::FORBIDDEN
            }
            Forward(refusal) => refusal.status(),
        }
    }

    /// What the audit log records the broker as having decided.
    pub fn decision(&self) -> Decision {
        use ProxyError::*;
        match self {
            UpstreamUnreachable(_)
            | UpstreamFailed(_)
            | UnsupportedEncoding
            | UpstreamTimeout(..)
            | CredentialRefreshFailed(..) => Decision::UpstreamError,
            StoreUnavailable
            | CredentialUnavailable
            | PolicyUnavailable(_)
            | AuditUnavailable(_) => Decision::Failed,
            _ => Decision::Denied,
        }
    }

    /// Stable machine-readable reason, sent as the error code and in `x-seks-error`.
    pub fn code(&self) -> &'static str {
        use ProxyError::*;
        match self {
            MethodNotAllowed(_) => "method_not_allowed",
            AbsoluteTarget => "absolute_target",
            BadHost => "bad_host",
            NoRoute => "no_route",
            UnknownProvider(..) => "unknown_provider",
            BadPath(_) => "bad_path",
            MissingToken(_) => "missing_token",
            AmbiguousToken => "ambiguous_token",
            MalformedToken(_) => "malformed_token",
            WrongProvider { .. } => "wrong_provider",
            UnknownToken => "unknown_token",
            Revoked(_) => "token_revoked",
            Expired(_) => "token_expired",
            Policy(_) => "policy_denied",
            PolicyUnavailable(_) => "policy_unavailable",
            Limited(l) if l.is_budget() => "budget_exhausted",
            Limited(l::Limited::Concurrency { .. } | l::Limited::CapabilityInFlight { .. }) => {
                "concurrency_limited"
            }
            Limited(l::Limited::PendingApprovals { .. }) => "too_many_pending_approvals",
            Limited(_) => "rate_limited",
            ApprovalDenied(_) => "approval_denied",
            ApprovalTimedOut(_) => "approval_timeout",
            BadBody(_) => "bad_body",
            BodyTooLarge(_) => "body_too_large",
            BodyStalled => "body_timeout",
            UpstreamUnreachable(_) => "upstream_unreachable",
            UpstreamFailed(_) => "upstream_failed",
            UnsupportedEncoding => "unsupported_encoding",
            UpstreamTimeout(..) => "upstream_timeout",
            CredentialRefreshFailed(..) => "credential_refresh_failed",
            StoreUnavailable => "store_unavailable",
            AuditUnavailable(_) => "audit_unavailable",
            CredentialUnavailable => "credential_unavailable",
            Signature(SigError::Malformed(_)) => "malformed_signature",
            Signature(SigError::UnsupportedPayload(_)) => "unsupported_payload",
            Signature(SigError::Mismatch) => "signature_mismatch",
            Signature(SigError::Skewed(_)) => "request_time_skewed",
            Signature(SigError::Replayed) => "replayed_signature",
            Signature(SigError::Overloaded(_)) => "replay_guard_full",
            Signature(SigError::TooMany(_)) => "too_many_signed_requests",
            Forward(refusal) => refusal.code(),
        }
    }

    /// Why a request body read up to `limit` bytes could not be read: too large, stalled
    /// (the agent stopped sending it), or broken off.
    pub fn unreadable_body(error: &(dyn std::error::Error + 'static), limit: usize) -> Self {
        let mut source = Some(error);
        while let Some(e) = source {
            if e.is::<LengthLimitError>() {
                return ProxyError::BodyTooLarge(u64::try_from(limit).unwrap_or(u64::MAX));
            }
            if e.is::<TimeoutError>() {
                return ProxyError::BodyStalled;
            }
            source = e.source();
        }
        ProxyError::BadBody("the request body could not be read")
    }

    /// The error as a response in `shape`, marked with `x-seks-error`.
    pub fn into_response(self, shape: ErrorShape) -> Response {
        let status = self.status();
        let code = self.code();
        let (content_type, body) = shape.body(status, code, &self.to_string());
        let mut response = (status, body).into_response();
        let headers = response.headers_mut();
        headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
        let retry_after = match &self {
            ProxyError::Limited(limited) => Some(clock::retry_secs(limited.retry_after())),
            ProxyError::Signature(SigError::TooMany(secs) | SigError::Overloaded(secs)) => {
                Some(*secs)
            }
            _ => None,
        };
        if let Some(secs) = retry_after {
            headers.insert(header::RETRY_AFTER, HeaderValue::from(secs));
        }
        headers.insert(SEKS_ERROR_HEADER, HeaderValue::from_static(code));
        headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
        response
    }
}
