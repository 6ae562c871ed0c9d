//! An OAuth2 token endpoint on the mock upstream (`POST /oauth2/token`, refresh-token grant)
//! that checks the client and the refresh token, counts refreshes, can rotate refresh tokens
//! and fail on demand; and an API under `/oauth-api/` that takes only the access tokens it
//! issued, the way Google's and Microsoft's do.

use std::sync::Mutex;
use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use hyper::Response;

use super::{MockBody, full, json_response};

/// The client and first refresh token the endpoint accepts unless a test changes them.
pub const CLIENT_ID: &str = "1234567890-mock.apps.googleusercontent.com";
pub const CLIENT_SECRET: &str = "GOCSPX-mock-client-SECRET-0123";
pub const REFRESH_TOKEN: &str = "1//0g-mock-refresh-TOKEN-0123456789";

/// The stored secret for the default client, as `seks secret add` takes it.
pub fn default_secret() -> String {
    serde_json::json!({
        "client_id": CLIENT_ID,
        "client_secret": CLIENT_SECRET,
        "refresh_token": REFRESH_TOKEN,
    })
    .to_string()
}

/// How the token endpoint answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TokenMode {
    /// Grants tokens to the right client and refresh token.
    Grant,
    /// 500 with a body quoting the refresh token it was sent.
    Fail,
    /// Never answers.
    Hang,
}

/// The endpoint's state; tests change the knobs between requests.
pub struct TokenEndpoint {
    state: Mutex<State>,
}

struct State {
    refresh_token: String,
    expires_in: Option<u64>,
    rotate: bool,
    mode: TokenMode,
    delay: Duration,
    /// Calls to the endpoint, whatever their outcome.
    hits: usize,
    /// Access tokens granted, oldest first, and whether each still works.
    issued: Vec<(String, bool)>,
    /// Every refresh token it accepted or issued.
    refresh_tokens: Vec<String>,
    /// Bodies and Authorization headers of the token requests, in order.
    requests: Vec<(String, Option<String>)>,
}

impl Default for TokenEndpoint {
    fn default() -> Self {
        TokenEndpoint {
            state: Mutex::new(State {
                refresh_token: REFRESH_TOKEN.to_owned(),
                expires_in: Some(3600),
                rotate: false,
                mode: TokenMode::Grant,
                delay: Duration::ZERO,
                hits: 0,
                issued: Vec::new(),
                refresh_tokens: vec![REFRESH_TOKEN.to_owned()],
                requests: Vec::new(),
            }),
        }
    }
}

impl TokenEndpoint {
    /// `expires_in` of the next grants (`None`: left out).
    pub fn set_expires_in(&self, seconds: Option<u64>) {
        self.state.lock().unwrap().expires_in = seconds;
    }

    /// Issue a new refresh token with every grant, and accept only the newest.
    pub fn set_rotate(&self, rotate: bool) {
        self.state.lock().unwrap().rotate = rotate;
    }

    pub fn set_mode(&self, mode: TokenMode) {
        self.state.lock().unwrap().mode = mode;
    }

    /// Wait this long before answering (after granting), so concurrent requests pile up
    /// behind a refresh.
    pub fn set_delay(&self, delay: Duration) {
        self.state.lock().unwrap().delay = delay;
    }

    /// Calls to the endpoint so far.
    pub fn hits(&self) -> usize {
        self.state.lock().unwrap().hits
    }

    /// Access tokens granted, oldest first.
    pub fn issued(&self) -> Vec<String> {
        let state = self.state.lock().unwrap();
        state.issued.iter().map(|(t, _)| t.clone()).collect()
    }

    /// The refresh token accepted now.
    pub fn refresh_token(&self) -> String {
        self.state.lock().unwrap().refresh_token.clone()
    }

    /// Every value a leak would expose: the client, refresh and access tokens.
    pub fn secrets(&self) -> Vec<String> {
        let state = self.state.lock().unwrap();
        let mut all = vec![CLIENT_ID.to_owned(), CLIENT_SECRET.to_owned()];
        all.extend(state.refresh_tokens.iter().cloned());
        all.extend(state.issued.iter().map(|(t, _)| t.clone()));
        all
    }

    /// Form bodies and Authorization headers of the token requests, in order.
    pub fn requests(&self) -> Vec<(String, Option<String>)> {
        self.state.lock().unwrap().requests.clone()
    }

    /// Make every access token granted so far stop working (the API answers 401).
    pub fn revoke_access_tokens(&self) {
        for (_, valid) in &mut self.state.lock().unwrap().issued {
            *valid = false;
        }
    }

    /// The endpoint's and the API's answers; `None` for other paths.
    pub async fn serve(
        &self,
        method: &str,
        path: &str,
        headers: &[(String, String)],
        body: &[u8],
    ) -> Option<Response<MockBody>> {
        let authorization = headers
            .iter()
            .find(|(k, _)| k == "authorization")
            .map(|(_, v)| v.clone());
        if path == "/oauth2/token" && method == "POST" {
            let (mode, delay) = {
                let mut state = self.state.lock().unwrap();
                state.hits += 1;
                state.requests.push((
                    String::from_utf8_lossy(body).into_owned(),
                    authorization.clone(),
                ));
                (state.mode, state.delay)
            };
            if mode == TokenMode::Hang {
                tokio::time::sleep(Duration::from_secs(3600)).await;
            }
            // Granted (and a refresh token rotated) before the delay, as a real endpoint
            // does, whether or not the client is still there to read the answer.
            let answer = self.grant(body, authorization);
            tokio::time::sleep(delay).await;
            Some(answer)
        } else if path.starts_with("/oauth-api/") {
            let state = self.state.lock().unwrap();
            let bearer = authorization
                .as_deref()
                .and_then(|a| a.strip_prefix("Bearer "));
            let valid = state
                .issued
                .iter()
                .position(|(t, valid)| *valid && Some(t.as_str()) == bearer);
            Some(match valid {
                Some(n) => json_response(serde_json::json!({
                    "emailAddress": "agent@example.com",
                    "token": n + 1,
                })),
                None => status_json(
                    401,
                    serde_json::json!({"error": {"code": 401, "message": format!(
                        "Request had invalid authentication credentials: {}",
                        authorization.unwrap_or_default()
                    ), "status": "UNAUTHENTICATED"}}),
                ),
            })
        } else if path.ends_with("/oauth-reflect") {
            // A hostile upstream that somehow knows every OAuth value, in every form.
            let secrets = self.secrets();
            let mut builder = Response::builder().header("content-type", "application/json");
            for (i, s) in secrets.iter().enumerate() {
                builder = builder.header(format!("x-reflect-{i}"), s.as_str());
            }
            let parts: Vec<String> = secrets
                .iter()
                .map(|s| super::super::forms::reflect_json(s))
                .collect();
            Some(
                builder
                    .body(full(format!("[{}]", parts.join(","))))
                    .unwrap(),
            )
        } else {
            None
        }
    }

    fn grant(&self, body: &[u8], authorization: Option<String>) -> Response<MockBody> {
        let mut state = self.state.lock().unwrap();
        let form: Vec<(String, String)> = serde_urlencoded::from_bytes(body).unwrap_or_default();
        let get = |key: &str| form.iter().find(|(k, _)| k == key).map(|(_, v)| v.clone());
        if state.mode == TokenMode::Fail {
            return status_json(
                500,
                serde_json::json!({"error": "server_error", "echo": get("refresh_token"), "marker": "token-endpoint-body"}),
            );
        }
        // The client in the body, or in Basic as RFC 6749 §2.3.1 has it.
        let client = match authorization
            .as_deref()
            .and_then(|a| a.strip_prefix("Basic "))
        {
            Some(basic) => BASE64
                .decode(basic)
                .ok()
                .and_then(|b| String::from_utf8(b).ok())
                .and_then(|pair| {
                    let (id, secret) = pair.split_once(':')?;
                    let decode = |s: &str| {
                        percent_encoding::percent_decode_str(s)
                            .decode_utf8_lossy()
                            .into_owned()
                    };
                    Some((Some(decode(id)), Some(decode(secret))))
                })
                .unwrap_or_default(),
            None => (get("client_id"), get("client_secret")),
        };
        if client != (Some(CLIENT_ID.to_owned()), Some(CLIENT_SECRET.to_owned())) {
            return status_json(401, serde_json::json!({"error": "invalid_client"}));
        }
        if get("grant_type").as_deref() != Some("refresh_token") {
            return status_json(400, serde_json::json!({"error": "unsupported_grant_type"}));
        }
        if get("refresh_token").as_deref() != Some(state.refresh_token.as_str()) {
            return status_json(
                400,
                serde_json::json!({"error": "invalid_grant", "error_description": format!("Token has been expired or revoked: {}", get("refresh_token").unwrap_or_default())}),
            );
        }
        let n = state.issued.len() + 1;
        let access = format!("ya29.mock-ACCESS-{n:04}-token-AbCdEfGh");
        state.issued.push((access.clone(), true));
        let mut answer = serde_json::json!({
            "access_token": access,
            "token_type": "Bearer",
            "scope": "https://mail.google.com/",
        });
        if let Some(seconds) = state.expires_in {
            answer["expires_in"] = seconds.into();
        }
        if state.rotate {
            let rotated = format!("1//0g-mock-ROTATED-{n:04}-refresh-XyZ");
            state.refresh_token = rotated.clone();
            state.refresh_tokens.push(rotated.clone());
            answer["refresh_token"] = rotated.into();
        }
        json_response(answer)
    }
}

fn status_json(status: u16, value: serde_json::Value) -> Response<MockBody> {
    Response::builder()
        .status(status)
        .header("content-type", "application/json")
        .body(full(value.to_string()))
        .unwrap()
}
