//! OAuth2 refresh-token providers end to end, against the mock token endpoint: one refresh
//! for a burst of requests on an expired access token, a rotated refresh token sealed and
//! used after a restart, no OAuth value in any response or log line, token endpoint
//! failures as prompt provider-shaped 502s, a 401 dropping the access token (and mints on
//! 401s spaced for the scrubber to hold them), and stored values checked for shape.

use std::path::Path;
use std::time::{Duration, Instant};

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;

use crate::support::forms::found_in;
use crate::support::http::{Reply, send};
use crate::support::mock::token_endpoint::{
    CLIENT_ID, CLIENT_SECRET, REFRESH_TOKEN, TokenMode, default_secret,
};
use crate::support::mock::{MockUpstream, Seen};
use crate::support::{Broker, Env};

/// A Gmail-like call the mock API answers only for an access token it issued.
const PROFILE: &str = "/api/gmail/oauth-api/users/me/profile";

/// `gmail` minting at the mock; `mail`, a config-only provider with the client in Basic and
/// a scope; `offline`, whose token endpoint is down; `documented`, whose tokens last 2 s
/// when the endpoint doesn't say.
fn config(mock: &str) -> String {
    format!(
        r#"
[upstream]
connect_timeout = "2s"
response_timeout = "2s"
read_timeout = "2s"

[providers.gmail]
base_url = "{mock}"
auth = {{ scheme = "oauth2", token_url = "{mock}/oauth2/token" }}

[providers.mail]
base_url = "{mock}"
auth = {{ scheme = "oauth2", token_url = "{mock}/oauth2/token", client_auth = "basic", scope = "mail.read offline_access" }}
errors = "message"

[providers.offline]
base_url = "{mock}"
auth = {{ scheme = "oauth2", token_url = "http://127.0.0.1:1/token" }}

[providers.documented]
base_url = "{mock}"
auth = {{ scheme = "oauth2", token_url = "{mock}/oauth2/token", token_lifetime = "2s" }}
"#
    )
}

/// A mock, an environment with the mock's client stored for `gmail`, and a token for it.
async fn gmail() -> (MockUpstream, Env, String) {
    let mock = MockUpstream::start().await;
    let env = Env::new(&config(&mock.url()));
    env.add_secret("google", "gmail", &default_secret()).await;
    let token = env.create_token("google", &["--agent", "mailer"]).await;
    (mock, env, token)
}

async fn get(broker: &Broker, path: &str, token: &str) -> Reply {
    let auth = format!("Bearer {token}");
    send("GET", &broker.url(path), &[("authorization", &auth)], "").await
}

/// `times` requests at once.
async fn burst(broker: &Broker, path: &str, token: &str, times: usize) -> Vec<Reply> {
    let url = broker.url(path);
    let auth = format!("Bearer {token}");
    let tasks: Vec<_> = (0..times)
        .map(|_| {
            let (url, auth) = (url.clone(), auth.clone());
            tokio::spawn(async move { send("GET", &url, &[("authorization", &auth)], "").await })
        })
        .collect();
    let mut replies = Vec::new();
    for task in tasks {
        replies.push(task.await.expect("request task"));
    }
    replies
}

/// What the API (not the token endpoint) received.
fn api_requests(mock: &MockUpstream) -> Vec<Seen> {
    mock.requests()
        .into_iter()
        .filter(|s| s.target != "/oauth2/token")
        .collect()
}

/// A reply's status line, headers and body as one text to search.
fn everything(reply: &Reply) -> String {
    let mut text = format!("{}\n{}", reply.status, reply.body);
    for (k, v) in &reply.headers {
        text.push_str(&format!("\n{k}: {v}"));
    }
    text
}

/// Panic if any form of any of `secrets` is in `text`.
fn assert_none_in(secrets: &[String], text: &str, what: &str) {
    for secret in secrets {
        let found = found_in(secret, text.as_bytes());
        assert!(found.is_empty(), "{what} holds {secret} as {found:?}");
    }
}

async fn secret_version(env: &Env, name: &str) -> i64 {
    let out = env.cli(&["secret", "list", "--json"], "").await.ok();
    let rows: serde_json::Value = serde_json::from_str(&out.stdout).expect("secret list json");
    rows.as_array()
        .and_then(|rows| rows.iter().find(|r| r["name"] == name))
        .and_then(|r| r["version"].as_i64())
        .expect("secret row")
}

#[tokio::test]
async fn fifty_concurrent_requests_on_an_expired_access_token_cause_exactly_one_refresh() {
    let (mock, env, token) = gmail().await;
    // Refreshes take a while, so the burst piles up behind one.
    mock.oauth.set_delay(Duration::from_millis(300));
    mock.oauth.set_expires_in(Some(2));
    let broker = env.serve().await;

    for reply in burst(&broker, PROFILE, &token, 50).await {
        assert_eq!(reply.status, 200, "{reply:?}");
    }
    assert_eq!(
        mock.oauth.hits(),
        1,
        "no token yet: one refresh for the burst"
    );
    // Past the token's refresh time (a tenth of its 2 s life before it expires).
    tokio::time::sleep(Duration::from_millis(2500)).await;
    mock.oauth.set_expires_in(Some(3600));
    for reply in burst(&broker, PROFILE, &token, 50).await {
        assert_eq!(reply.status, 200, "{reply:?}");
    }
    assert_eq!(mock.oauth.hits(), 2, "the expired token: one refresh");
    // A fresh token is reused.
    assert_eq!(get(&broker, PROFILE, &token).await.status, 200);
    assert_eq!(mock.oauth.hits(), 2);

    // Each burst carried the token minted for it, and nothing the agent or store holds.
    let issued = mock.oauth.issued();
    let api = api_requests(&mock);
    assert_eq!(api.len(), 101);
    for (i, seen) in api.iter().enumerate() {
        let minted = &issued[(i / 50).min(1)];
        assert_eq!(
            seen.header("authorization"),
            Some(format!("Bearer {minted}").as_str()),
            "request {i}"
        );
        let raw = seen.raw();
        assert!(
            !raw.contains("seks_"),
            "the agent token went upstream: {raw}"
        );
        assert_none_in(
            &[REFRESH_TOKEN.to_owned(), CLIENT_SECRET.to_owned()],
            &raw,
            "an API request",
        );
    }
    // The refresh-token grant, with the client in the body.
    for (body, authorization) in mock.oauth.requests() {
        assert_eq!(authorization, None);
        let form: Vec<(String, String)> = serde_urlencoded::from_str(&body).unwrap();
        let pairs: Vec<(&str, &str)> = form.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        assert_eq!(
            pairs,
            [
                ("grant_type", "refresh_token"),
                ("refresh_token", REFRESH_TOKEN),
                ("client_id", CLIENT_ID),
                ("client_secret", CLIENT_SECRET),
            ]
        );
    }
    broker.stop().await;
}

#[tokio::test]
async fn without_expires_in_a_token_lasts_the_providers_documented_lifetime_or_an_hour() {
    let (mock, env, token) = gmail().await;
    mock.oauth.set_expires_in(None);
    env.add_secret("documented", "documented", &default_secret())
        .await;
    let documented = env.create_token("documented", &["--agent", "mailer"]).await;
    let documented_profile = PROFILE.replace("/gmail/", "/documented/");
    let broker = env.serve().await;

    assert_eq!(get(&broker, PROFILE, &token).await.status, 200);
    assert_eq!(
        get(&broker, &documented_profile, &documented).await.status,
        200
    );
    assert_eq!(mock.oauth.hits(), 2);
    // Past `documented`'s refresh time (a tenth of its 2 s before it ends); `gmail`'s token,
    // taken to last an hour, is kept.
    tokio::time::sleep(Duration::from_millis(2500)).await;
    assert_eq!(get(&broker, PROFILE, &token).await.status, 200);
    assert_eq!(mock.oauth.hits(), 2);
    assert_eq!(
        get(&broker, &documented_profile, &documented).await.status,
        200
    );
    assert_eq!(mock.oauth.hits(), 3);
    broker.stop().await;
}

/// Every file under `dir`, recursively.
fn files(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).expect("read dir").flatten() {
        let path = entry.path();
        if path.is_dir() {
            out.extend(files(&path));
        } else {
            out.push(path);
        }
    }
    out
}

#[tokio::test]
async fn a_rotated_refresh_token_is_stored_encrypted_and_used_after_a_restart() {
    let (mock, env, token) = gmail().await;
    mock.oauth.set_rotate(true);
    let broker = env.serve().await;
    assert_eq!(get(&broker, PROFILE, &token).await.status, 200);
    let rotated = mock.oauth.refresh_token();
    assert_ne!(rotated, REFRESH_TOKEN);
    // Written back before the answer went out, as the secret's next version.
    assert_eq!(secret_version(&env, "google").await, 2);
    // Once the broker has loaded that version, the replaced refresh token is still masked.
    tokio::time::sleep(Duration::from_millis(800)).await;
    let reflected = get(&broker, "/api/gmail/oauth-reflect", &token).await;
    assert_eq!(reflected.status, 200);
    assert_none_in(&mock.oauth.secrets(), &everything(&reflected), "a reply");
    broker.terminate().await;

    // Sealed like every secret: no plaintext anywhere in the data directory.
    for file in files(env.data_dir()) {
        let bytes = std::fs::read(&file).expect("read data file");
        for value in [&rotated, REFRESH_TOKEN, CLIENT_SECRET] {
            assert!(
                !bytes.windows(value.len()).any(|w| w == value.as_bytes()),
                "{value} in plaintext in {}",
                file.display()
            );
        }
    }

    // A new broker knows only the store; the endpoint now takes only the rotated token.
    let broker = env.serve().await;
    let reply = get(&broker, PROFILE, &token).await;
    assert_eq!(reply.status, 200, "{reply:?}");
    assert_eq!(mock.oauth.hits(), 2);
    let (body, _) = mock.oauth.requests().pop().expect("a token request");
    let form: Vec<(String, String)> = serde_urlencoded::from_str(&body).unwrap();
    assert!(
        form.contains(&("refresh_token".to_owned(), rotated.clone())),
        "{form:?}"
    );
    assert_eq!(secret_version(&env, "google").await, 3);
    broker.stop().await;
    assert_none_in(&mock.oauth.secrets(), &env.transcript(), "the logs");
}

#[tokio::test]
async fn a_client_leaving_mid_refresh_does_not_lose_a_rotated_refresh_token() {
    let (mock, env, token) = gmail().await;
    mock.oauth.set_rotate(true);
    mock.oauth.set_delay(Duration::from_millis(1000));
    let broker = env.serve().await;
    // The endpoint has rotated the refresh token (the old one is dead) when the agent gives up.
    let gave_up =
        tokio::time::timeout(Duration::from_millis(300), get(&broker, PROFILE, &token)).await;
    assert!(gave_up.is_err(), "the request should still be waiting");
    tokio::time::sleep(Duration::from_millis(1500)).await;
    // The refresh finished anyway: the rotated token is stored and its access token cached.
    assert_eq!(secret_version(&env, "google").await, 2);
    mock.oauth.set_delay(Duration::ZERO);
    assert_eq!(get(&broker, PROFILE, &token).await.status, 200);
    assert_eq!(mock.oauth.hits(), 1);
    broker.stop().await;
}

#[tokio::test]
async fn access_and_refresh_tokens_never_come_back_nor_reach_the_logs() {
    let (mock, env, token) = gmail().await;
    let broker = env.serve_with(&[("SEKS_LOG", "debug")]).await;
    // The upstream echoes the access token it got, in every encoding.
    let echoed = get(&broker, "/api/gmail/reflect", &token).await;
    assert_eq!(echoed.status, 200, "{echoed:?}");
    // One that quotes every OAuth value it could know: client, refresh and access tokens.
    let quoted = get(&broker, "/api/gmail/oauth-reflect", &token).await;
    assert_eq!(quoted.status, 200, "{quoted:?}");
    // The API's 401 quotes the Authorization header it refused.
    mock.oauth.revoke_access_tokens();
    let refused = get(&broker, PROFILE, &token).await;
    assert_eq!(refused.status, 401, "{refused:?}");
    assert!(refused.body.contains("Bearer ****"), "{refused:?}");
    broker.stop().await;

    let secrets = mock.oauth.secrets();
    assert!(secrets.len() >= 4, "{secrets:?}");
    for reply in [&echoed, &quoted, &refused] {
        assert_none_in(&secrets, &everything(reply), "a reply");
    }
    let transcript = env.transcript();
    assert_none_in(&secrets, &transcript, "the logs");
    assert!(
        !transcript.contains(&token),
        "the full agent token was logged"
    );
}

#[tokio::test]
async fn a_failing_token_endpoint_gives_a_prompt_502_in_the_providers_shape_without_its_body() {
    let (mock, env, token) = gmail().await;
    let revoked = serde_json::json!({
        "client_id": CLIENT_ID,
        "client_secret": CLIENT_SECRET,
        "refresh_token": "1//0g-REVOKED-refresh-token-0123",
    });
    env.add_secret("revoked", "gmail", &revoked.to_string())
        .await;
    let revoked_token = env.create_token("revoked", &["--agent", "r"]).await;
    env.add_secret("offline", "offline", &default_secret())
        .await;
    let offline_token = env.create_token("offline", &["--agent", "o"]).await;
    let broker = env.serve().await;

    // A 500 whose body quotes the refresh token it was sent.
    mock.oauth.set_mode(TokenMode::Fail);
    let failed = get(&broker, PROFILE, &token).await;
    assert_eq!(failed.status, 502, "{failed:?}");
    assert_eq!(
        failed.header("x-seks-error"),
        Some("credential_refresh_failed")
    );
    let error = &failed.json()["error"];
    assert_eq!(
        (error["code"].as_u64(), error["status"].as_str()),
        (Some(502), Some("UNAVAILABLE"))
    );
    let message = error["message"].as_str().unwrap_or_default();
    assert!(
        message.contains("token endpoint") && message.contains("HTTP 500"),
        "{message}"
    );
    assert!(!failed.body.contains("token-endpoint-body"), "{failed:?}");
    assert_none_in(&[REFRESH_TOKEN.to_owned()], &everything(&failed), "a 502");

    // A refresh token the endpoint refuses: its standard code is named, its description isn't.
    mock.oauth.set_mode(TokenMode::Grant);
    let refused = get(&broker, PROFILE, &revoked_token).await;
    assert_eq!(refused.status, 502, "{refused:?}");
    assert!(
        refused.body.contains("HTTP 400 (invalid_grant)"),
        "{refused:?}"
    );
    assert!(!refused.body.contains("REVOKED"), "{refused:?}");

    // An endpoint nobody listens on.
    let down = get(&broker, "/api/offline/oauth-api/x", &offline_token).await;
    assert_eq!(down.status, 502, "{down:?}");
    assert_eq!(down.json()["error"]["code"], "credential_refresh_failed");
    assert!(down.body.contains("could not be reached"), "{down:?}");

    // One that never answers: bounded by the upstream timeout, and the requests that waited
    // on that refresh share its failure instead of each trying in turn.
    mock.oauth.set_mode(TokenMode::Hang);
    let hits = mock.oauth.hits();
    let started = Instant::now();
    for reply in burst(&broker, PROFILE, &token, 5).await {
        assert_eq!(reply.status, 502, "{reply:?}");
        assert!(reply.body.contains("did not answer within 2s"), "{reply:?}");
    }
    assert!(
        started.elapsed() < Duration::from_secs(8),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(mock.oauth.hits(), hits + 1);

    // Failures aren't remembered: the next request refreshes.
    mock.oauth.set_mode(TokenMode::Grant);
    assert_eq!(get(&broker, PROFILE, &token).await.status, 200);
    assert_eq!(
        api_requests(&mock).len(),
        1,
        "nothing reached the API without a token"
    );
    broker.stop().await;
    assert_none_in(&mock.oauth.secrets(), &env.transcript(), "the logs");
}

#[tokio::test]
async fn an_upstream_401_drops_the_access_token_and_basic_client_auth_sends_the_scope() {
    let mock = MockUpstream::start().await;
    let env = Env::new(&config(&mock.url()));
    env.add_secret("mail", "mail", &default_secret()).await;
    let token = env.create_token("mail", &["--agent", "m"]).await;
    let broker = env.serve().await;
    let path = "/api/mail/oauth-api/me";

    assert_eq!(get(&broker, path, &token).await.status, 200);
    assert_eq!(get(&broker, path, &token).await.status, 200);
    assert_eq!(mock.oauth.hits(), 1);
    mock.oauth.revoke_access_tokens();
    let refused = get(&broker, path, &token).await;
    assert_eq!(refused.status, 401, "{refused:?}");
    assert_eq!(
        refused.header("x-seks-error"),
        None,
        "the upstream's own 401"
    );
    assert_eq!(get(&broker, path, &token).await.status, 200);
    assert_eq!(mock.oauth.hits(), 2);
    let issued = mock.oauth.issued();
    let last = api_requests(&mock).pop().expect("an API request");
    assert_eq!(
        last.header("authorization"),
        Some(format!("Bearer {}", issued[1]).as_str())
    );
    // Refused again at once, the token minted after a refusal is kept for a while: minting
    // on every 401 would let an agent flood the endpoint and the scrubber's memory.
    mock.oauth.revoke_access_tokens();
    for _ in 0..3 {
        assert_eq!(get(&broker, path, &token).await.status, 401);
    }
    assert_eq!(mock.oauth.hits(), 2, "a token minted on every 401");

    // The client in Basic (its id and secret need no escaping), never in the form.
    let basic = format!(
        "Basic {}",
        BASE64.encode(format!("{CLIENT_ID}:{CLIENT_SECRET}"))
    );
    for (body, authorization) in mock.oauth.requests() {
        assert_eq!(authorization.as_deref(), Some(basic.as_str()));
        let form: Vec<(String, String)> = serde_urlencoded::from_str(&body).unwrap();
        let keys: Vec<&str> = form.iter().map(|(k, _)| k.as_str()).collect();
        assert_eq!(keys, ["grant_type", "refresh_token", "scope"]);
        assert_eq!(form[2].1, "mail.read offline_access");
    }
    broker.stop().await;
}

#[tokio::test]
async fn oauth2_secrets_must_be_a_client_and_a_refresh_token() {
    let env = Env::new(&config("http://127.0.0.1:9"));
    for (value, expected) in [
        ("ya29.a-bare-ACCESS-token", "must be JSON"),
        (
            r#"{"client_id": "c", "client_secret": "GOCSPX-secret-VALUE"}"#,
            "needs a client_id and a refresh_token",
        ),
        (
            r#"{"client_id": "c", "refresh_token": "1//0g-refresh-VALUE", "token_uri": "x"}"#,
            "may only hold the keys",
        ),
        (
            r#"{"client_id": "c", "refresh_token": "short"}"#,
            "at least 8 characters",
        ),
    ] {
        let out = env
            .cli(&["secret", "add", "g", "--provider", "gmail"], value)
            .await;
        assert!(
            !out.status.success() && out.stderr.contains(expected),
            "{value}: {out:?}"
        );
        for part in ["ACCESS", "secret-VALUE", "refresh-VALUE"] {
            assert!(!out.stderr.contains(part), "{out:?}");
        }
    }
    // Pretty-printed JSON is fine.
    let pretty = serde_json::to_string_pretty(
        &serde_json::from_str::<serde_json::Value>(&default_secret()).unwrap(),
    )
    .unwrap();
    env.add_secret("g", "gmail", &pretty).await;
    let out = env
        .cli(&["secret", "rotate", "g"], "ya29.a-bare-ACCESS-token")
        .await;
    assert!(
        !out.status.success() && out.stderr.contains("must be JSON"),
        "{out:?}"
    );
    assert_eq!(secret_version(&env, "g").await, 1);

    let listed = env.cli(&["provider", "list", "--json"], "").await.ok();
    let rows: serde_json::Value = serde_json::from_str(&listed.stdout).unwrap();
    let gmail = rows
        .as_array()
        .and_then(|rows| rows.iter().find(|r| r["name"] == "gmail"))
        .expect("gmail row");
    assert_eq!(
        gmail["inject"],
        "OAuth2 refresh via http://127.0.0.1:9/oauth2/token → Authorization: Bearer <access>"
    );
}

#[tokio::test]
async fn a_rotated_refresh_token_is_kept_when_the_rest_of_the_answer_is_unusable() {
    let (mock, env, token) = gmail().await;
    mock.oauth.set_rotate(true);
    // The endpoint rotates the refresh token, but its answer's lifetime can't be used.
    mock.oauth.set_expires_in(Some(0));
    let broker = env.serve().await;
    assert_eq!(get(&broker, PROFILE, &token).await.status, 502);
    let rotated = mock.oauth.refresh_token();
    assert_ne!(rotated, REFRESH_TOKEN);
    // The replaced refresh token is dead at the endpoint: only the rotated one mints now.
    mock.oauth.set_expires_in(Some(3600));
    let reply = get(&broker, PROFILE, &token).await;
    assert_eq!(reply.status, 200, "{reply:?}");
    let (body, _) = mock.oauth.requests().pop().expect("a token request");
    let form: Vec<(String, String)> = serde_urlencoded::from_str(&body).unwrap();
    assert!(
        form.contains(&("refresh_token".to_owned(), rotated.clone())),
        "{form:?}"
    );
    broker.stop().await;
    assert_none_in(&mock.oauth.secrets(), &env.transcript(), "the logs");
}

/// `gmail` among 255 other secrets, so that each secret's share of the values the scrubber
/// learns is the smallest there is (16), with a victim's and an attacker's token for it.
async fn gmail_among_many() -> (MockUpstream, Env, Broker, String, String) {
    let (mock, env, victim) = gmail().await;
    let attacker = env.create_token("google", &["--agent", "attacker"]).await;
    let broker = env.serve().await;
    let admin = broker.admin_url().await;
    let bearer = format!("Bearer {}", env.admin_token().await);
    let headers = [
        ("authorization", bearer.as_str()),
        ("content-type", "application/json"),
    ];
    for n in 0..255 {
        let body = serde_json::json!({
            "name": format!("other-{n}"),
            "provider": "openai",
            "value": format!("sk-other-secret-{n:08}-0123456789"),
        });
        let added = send(
            "POST",
            &format!("{admin}/admin/v1/secrets"),
            &headers,
            body.to_string(),
        )
        .await;
        assert_eq!(added.status, 201, "{added:?}");
    }
    (mock, env, broker, victim, attacker)
}

/// A Gmail call whose answer the attacker makes a 401, as an agent can with an API that
/// refuses some requests (a scope it lacks, a resource of another user).
async fn provoke_401(broker: &Broker, token: &str) {
    let auth = format!("Bearer {token}");
    let headers = [
        ("authorization", auth.as_str()),
        ("x-mock-answer", r#"{"error": {"code": 401}}"#),
        ("x-mock-status", "401"),
    ];
    let reply = send(
        "GET",
        &broker.url("/api/gmail/gmail/v1/users/me/labels"),
        &headers,
        "",
    )
    .await;
    assert_eq!(reply.status, 401, "{reply:?}");
}

#[tokio::test]
async fn a_secret_mints_on_401s_no_faster_than_its_share_of_the_scrubber_can_hold() {
    let (mock, _env, broker, victim, attacker) = gmail_among_many().await;
    assert_eq!(get(&broker, PROFILE, &victim).await.status, 200);
    // The first 401 drops the token at once: it may have been revoked.
    provoke_401(&broker, &attacker).await;
    assert_eq!(get(&broker, PROFILE, &victim).await.status, 200);
    assert_eq!(mock.oauth.hits(), 2);
    // Sixteen places for two-hour masks, three of them for tokens minted when due: a mint
    // on a 401 every 30 s would fill them in six minutes, and then nobody could mint.
    tokio::time::sleep(Duration::from_millis(30_500)).await;
    provoke_401(&broker, &attacker).await;
    assert_eq!(get(&broker, PROFILE, &victim).await.status, 200);
    assert_eq!(
        mock.oauth.hits(),
        2,
        "a 401 minted again within ten minutes"
    );
    broker.stop().await;
}

#[tokio::test]
async fn a_full_share_of_the_scrubber_refuses_mints_without_asking_the_token_endpoint() {
    let (mock, env, broker, victim, _attacker) = gmail_among_many().await;
    // Tokens living a second, each masked for an hour past it: the secret's sixteen places
    // fill within seconds, and the mints after that can't be used.
    mock.oauth.set_expires_in(Some(1));
    let mut refused = None;
    for _ in 0..40 {
        let reply = get(&broker, PROFILE, &victim).await;
        if reply.status != 200 {
            refused = Some(reply);
            break;
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    let refused = refused.expect("sixteen places held forty tokens");
    assert_eq!(refused.status, 503, "{refused:?}");
    assert_eq!(
        mock.oauth.hits(),
        16,
        "a token that couldn't be masked was minted"
    );
    // Neither requests one at a time nor a burst waiting on one refusal ask again: the
    // endpoint would mint tokens only to have them dropped (and, where refresh tokens
    // rotate, the broker would seal a new version each time).
    mock.oauth.set_rotate(true);
    let version = secret_version(&env, "google").await;
    let mut replies = burst(&broker, PROFILE, &victim, 10).await;
    replies.push(get(&broker, PROFILE, &victim).await);
    for reply in replies {
        assert_eq!(
            (reply.status, reply.header("x-seks-error").is_some()),
            (503, true),
            "{reply:?}"
        );
    }
    assert_eq!(
        mock.oauth.hits(),
        16,
        "a full share asked the token endpoint"
    );
    assert_eq!(secret_version(&env, "google").await, version);
    broker.stop().await;
}
