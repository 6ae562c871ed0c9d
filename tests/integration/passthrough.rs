//! Requests through a running broker to a mock upstream: injection, pinning, streaming,
//! auth failures and live changes made with the CLI.

use std::time::{Duration, Instant};

use http_body_util::BodyExt;

use crate::support::http::{send, send_streaming, try_send};
use crate::support::mock::MockUpstream;
use crate::support::{Env, config_for};

const OPENAI_KEY: &str = "sk-proj-REALKEY-0123456789abcdef";

async fn openai_setup(upstream: &str) -> (Env, String) {
    let env = Env::with_upstream(upstream);
    env.add_secret("openai-main", "openai", OPENAI_KEY).await;
    let token = env.create_token("openai-main", &["--agent", "bot"]).await;
    (env, token)
}

#[tokio::test]
async fn the_real_key_replaces_the_token_and_agent_credentials_never_reach_upstream() {
    let mock = MockUpstream::start().await;
    let (env, token) = openai_setup(&format!("{}/prefix/v1", mock.url())).await;
    let broker = env.serve().await;
    let reply = send(
        "POST",
        &broker.url("/api/openai/chat/completions?x=1"),
        &[
            ("authorization", &format!("Bearer {token}")),
            ("content-type", "application/json"),
            ("cookie", "session=agent"),
            ("x-api-key", &token),
            ("connection", "x-hop"),
            ("x-hop", "1"),
            ("x-custom", "kept"),
            ("host", "evil.example"),
            ("x-original-url", "/admin"),
            ("x-http-method-override", "DELETE"),
            ("x-forwarded-host", "evil.example"),
            ("forwarded", "host=evil.example"),
            ("x-seks-error", "forged-by-agent"),
        ],
        r#"{"model":"gpt-4o-mini","messages":[]}"#,
    )
    .await;
    assert_eq!(reply.status, 200, "{reply:?}");
    assert_eq!(
        reply.json()["choices"][0]["message"]["content"],
        "Hello from the mock"
    );
    let seen = mock.requests();
    assert_eq!(seen.len(), 1);
    let req = &seen[0];
    assert_eq!(req.method, "POST");
    assert_eq!(req.target, "/prefix/v1/chat/completions?x=1");
    assert_eq!(
        req.header("authorization"),
        Some(format!("Bearer {OPENAI_KEY}").as_str())
    );
    assert_eq!(req.header("host"), Some(mock.addr.to_string().as_str()));
    assert_eq!(req.header("x-custom"), Some("kept"));
    for gone in [
        "cookie",
        "x-api-key",
        "x-hop",
        "x-original-url",
        "x-http-method-override",
        "x-forwarded-host",
        "forwarded",
        "x-seks-error",
    ] {
        assert_eq!(req.header(gone), None, "{gone} was forwarded");
    }
    assert!(
        !req.raw().contains(&token),
        "the agent token reached the upstream"
    );
    broker.stop().await;
}

#[tokio::test]
async fn a_session_the_upstream_opens_on_the_real_key_never_reaches_the_agent() {
    let mock = MockUpstream::start().await;
    let (env, token) = openai_setup(&mock.url()).await;
    let broker = env.serve().await;
    // A session cookie set on a request the real key authenticated would let its holder
    // act as that key without the broker, which never forwards an agent's cookies anyway.
    let reply = send(
        "GET",
        &broker.url("/api/openai/v1/models"),
        &[
            ("authorization", &format!("Bearer {token}")),
            ("x-mock-answer", r#"{"data":[]}"#),
            (
                "x-mock-set-cookie",
                "session=opened-on-the-real-key; HttpOnly",
            ),
        ],
        "",
    )
    .await;
    assert_eq!(reply.status, 200, "{reply:?}");
    assert_eq!(reply.header("set-cookie"), None);
    assert_eq!(reply.json()["data"], serde_json::json!([]));
    broker.stop().await;
}

#[tokio::test]
async fn every_provider_gets_its_key_in_its_own_scheme() {
    let mock = MockUpstream::start().await;
    let env = Env::with_upstream(&mock.url());
    for (name, provider, key) in [
        ("a", "anthropic", "sk-ant-REAL"),
        ("g", "gemini", "AIzaREAL"),
        ("q", "groq", "gsk_REAL"),
        ("h", "github", "ghp_REAL"),
    ] {
        env.add_secret(name, provider, key).await;
    }
    let anthropic = env.create_token("a", &[]).await;
    let gemini = env.create_token("g", &[]).await;
    let groq = env.create_token("q", &[]).await;
    let github = env.create_token("h", &[]).await;
    let broker = env.serve().await;

    struct Case {
        /// Path and query on the broker.
        target: String,
        /// Header carrying the agent's token.
        agent_header: (&'static str, String),
        /// Header in which the upstream must see the real key, and its value.
        upstream_header: (&'static str, &'static str),
    }
    let case = |target: &str, agent_header: (&'static str, String), upstream_header| Case {
        target: target.to_owned(),
        agent_header,
        upstream_header,
    };
    let generate = "/api/gemini/v1beta/models/gemini-2.0-flash:generateContent";
    let cases = [
        case(
            "/api/anthropic/v1/messages",
            ("x-api-key", anthropic.clone()),
            ("x-api-key", "sk-ant-REAL"),
        ),
        case(
            "/api/anthropic/v1/messages",
            ("authorization", format!("Bearer {anthropic}")),
            ("x-api-key", "sk-ant-REAL"),
        ),
        case(
            generate,
            ("x-goog-api-key", gemini.clone()),
            ("x-goog-api-key", "AIzaREAL"),
        ),
        case(
            &format!("{generate}?alt=json&key={gemini}"),
            ("x-unrelated", "1".into()),
            ("x-goog-api-key", "AIzaREAL"),
        ),
        case(
            "/api/groq/v1/chat/completions",
            ("authorization", format!("Bearer {groq}")),
            ("authorization", "Bearer gsk_REAL"),
        ),
        case(
            "/api/github/user",
            ("authorization", format!("token {github}")),
            ("authorization", "Bearer ghp_REAL"),
        ),
    ];
    for (i, c) in cases.iter().enumerate() {
        let headers = [
            (c.agent_header.0, c.agent_header.1.as_str()),
            ("anthropic-version", "2023-06-01"),
        ];
        let reply = send("POST", &broker.url(&c.target), &headers, "{}").await;
        assert_eq!(reply.status, 200, "{}: {reply:?}", c.target);
        let seen = mock.requests();
        let req = &seen[i];
        assert_eq!(
            req.header(c.upstream_header.0),
            Some(c.upstream_header.1),
            "{}",
            c.target
        );
        assert!(
            !req.raw().contains("seks_"),
            "{}: token forwarded: {}",
            c.target,
            req.raw()
        );
        assert_eq!(
            req.header("anthropic-version"),
            Some("2023-06-01"),
            "provider headers are kept"
        );
    }
    assert_eq!(
        mock.requests()[3].target,
        "/v1beta/models/gemini-2.0-flash:generateContent?alt=json"
    );
    broker.stop().await;
}

#[tokio::test]
async fn auth_failures_are_401_in_the_providers_shape_and_never_reach_upstream() {
    let mock = MockUpstream::start().await;
    let (env, token) = openai_setup(&mock.url()).await;
    env.add_secret("ant", "anthropic", "sk-ant-REAL").await;
    env.add_secret("gem", "gemini", "AIzaREAL").await;
    let anthropic = env.create_token("ant", &[]).await;
    let expired = env
        .create_token("openai-main", &["--agent", "old", "--ttl", "1s"])
        .await;
    let revoked = env.create_token("openai-main", &["--agent", "gone"]).await;
    let id = env.token_id("gone").await;
    env.cli(&["token", "revoke", &id], "").await.ok();
    // Well-formed, correct checksum, but minted by another broker.
    let stranger = {
        let other = Env::new("");
        other.add_secret("s", "openai", "sk-other").await;
        other.create_token("s", &[]).await
    };
    let mut tampered = token.clone().into_bytes();
    let i = tampered.len() - 10;
    tampered[i] = if tampered[i] == b'x' { b'y' } else { b'x' };
    let tampered = String::from_utf8(tampered).unwrap();
    let broker = env.serve().await;
    tokio::time::sleep(Duration::from_millis(1100)).await;

    let url = broker.url("/api/openai/v1/chat/completions");
    let bearer = |t: &str| format!("Bearer {t}");
    let cases = [
        (None, "missing_token"),
        (Some(bearer("sk-not-a-seks-token")), "malformed_token"),
        (Some(bearer(&tampered)), "malformed_token"),
        (Some(bearer(&stranger)), "unknown_token"),
        (Some(bearer(&revoked)), "token_revoked"),
        (Some(bearer(&expired)), "token_expired"),
        (Some(bearer(&anthropic)), "wrong_provider"),
    ];
    let twice = send(
        "POST",
        &url,
        &[
            ("authorization", &bearer(&token)),
            ("authorization", &bearer(&token)),
        ],
        "{}",
    )
    .await;
    assert_eq!(
        (twice.status, twice.header("x-seks-error")),
        (401, Some("ambiguous_token"))
    );
    for (auth, code) in cases {
        let headers: Vec<(&str, &str)> =
            auth.iter().map(|a| ("authorization", a.as_str())).collect();
        let reply = send("POST", &url, &headers, "{}").await;
        assert_eq!(reply.status, 401, "{code}: {reply:?}");
        assert_eq!(reply.header("x-seks-error"), Some(code));
        let body = reply.json();
        assert_eq!(body["error"]["code"], code, "{body}");
        assert!(body["error"]["message"].as_str().unwrap().len() > 10);
    }
    // Anthropic and Gemini get their own error shapes.
    let reply = send(
        "POST",
        &broker.url("/api/anthropic/v1/messages"),
        &[("x-api-key", &revoked)],
        "{}",
    )
    .await;
    assert_eq!(reply.status, 401);
    assert_eq!(reply.json()["type"], "error");
    assert_eq!(reply.json()["error"]["type"], "authentication_error");
    let reply = send(
        "POST",
        &broker.url("/api/gemini/v1beta/models/x:generateContent"),
        &[],
        "{}",
    )
    .await;
    assert_eq!(
        (reply.status, reply.json()["error"]["status"].as_str()),
        (401, Some("UNAUTHENTICATED"))
    );
    // A valid token still works, so the failures above were about the tokens.
    assert_eq!(
        send("POST", &url, &[("authorization", &bearer(&token))], "{}")
            .await
            .status,
        200
    );
    assert_eq!(
        mock.requests().len(),
        1,
        "only the valid request may reach the upstream"
    );
    broker.stop().await;
}

#[tokio::test]
async fn unknown_providers_and_paths_are_404() {
    let mock = MockUpstream::start().await;
    let (env, token) = openai_setup(&mock.url()).await;
    let broker = env.serve().await;
    let auth = format!("Bearer {token}");
    let reply = send(
        "GET",
        &broker.url("/api/nope/v1/models"),
        &[("authorization", &auth)],
        "",
    )
    .await;
    assert_eq!(
        (reply.status, reply.header("x-seks-error")),
        (404, Some("unknown_provider"))
    );
    assert!(
        reply.json()["error"]["message"]
            .as_str()
            .unwrap()
            .contains("openai")
    );
    let reply = send(
        "GET",
        &broker.url("/v1/models"),
        &[("authorization", &auth)],
        "",
    )
    .await;
    assert_eq!(
        (reply.status, reply.header("x-seks-error")),
        (404, Some("no_route"))
    );
    assert_eq!(
        send("GET", &broker.url("/healthz"), &[], "").await.status,
        200
    );
    assert!(mock.requests().is_empty());
    broker.stop().await;
}

#[tokio::test]
async fn tokens_created_revoked_and_rotated_with_the_cli_reach_the_running_broker_within_a_second()
{
    let mock = MockUpstream::start().await;
    let env = Env::with_upstream(&mock.url());
    env.add_secret("openai-main", "openai", OPENAI_KEY).await;
    let broker = env.serve().await;
    let url = broker.url("/api/openai/v1/models");

    async fn status_within(url: &str, token: &str, want: u16) -> Duration {
        let start = Instant::now();
        loop {
            let auth = format!("Bearer {token}");
            // A response under way when its token goes is cut off: that is no answer yet.
            let got = try_send("GET", url, &[("authorization", &auth)], "")
                .await
                .map(|reply| reply.status);
            if got == Ok(want) {
                return start.elapsed();
            }
            assert!(
                start.elapsed() < Duration::from_secs(1),
                "still {got:?}, wanted {want}, after 1s"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    let token = env.create_token("openai-main", &["--agent", "live"]).await;
    status_within(&url, &token, 200).await;

    env.cli(&["secret", "rotate", "openai-main"], "sk-proj-ROTATED")
        .await
        .ok();
    let start = Instant::now();
    loop {
        send(
            "GET",
            &url,
            &[("authorization", &format!("Bearer {token}"))],
            "",
        )
        .await;
        let last = mock.requests().pop().unwrap();
        if last.header("authorization") == Some("Bearer sk-proj-ROTATED") {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(1),
            "rotation not seen after 1s"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    let id = env.token_id("live").await;
    env.cli(&["token", "revoke", &id], "").await.ok();
    status_within(&url, &token, 401).await;

    let other = env
        .create_token("openai-main", &["--agent", "second"])
        .await;
    status_within(&url, &other, 200).await;
    env.cli(&["secret", "rm", "openai-main"], "").await.ok();
    status_within(&url, &other, 401).await;
    broker.stop().await;
}

#[tokio::test]
async fn sse_events_reach_the_agent_as_the_upstream_sends_them() {
    let mock = MockUpstream::start().await;
    let (env, token) = openai_setup(&mock.url()).await;
    let broker = env.serve().await;
    let response = crate::support::http::send_streaming(
        "GET",
        &broker.url("/api/openai/v1/gated"),
        &[("authorization", &format!("Bearer {token}"))],
        "",
    )
    .await;
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()["content-type"], "text/event-stream");
    let mut body = response.into_body();
    // The upstream holds the second event until released: the first must already be here.
    let first = tokio::time::timeout(Duration::from_secs(5), body.frame())
        .await
        .expect("first event was held back")
        .unwrap()
        .unwrap();
    assert_eq!(first.data_ref().unwrap().as_ref(), b"data: first\n\n");
    mock.release();
    let second = tokio::time::timeout(Duration::from_secs(5), body.frame())
        .await
        .expect("second event never came")
        .unwrap()
        .unwrap();
    assert_eq!(second.data_ref().unwrap().as_ref(), b"data: second\n\n");
    broker.stop().await;
}

#[tokio::test]
async fn bodies_over_the_limit_are_413() {
    let mock = MockUpstream::start().await;
    let env = Env::new(&config_for(&mock.url(), "max_body_bytes = 1000\n"));
    env.add_secret("openai-main", "openai", OPENAI_KEY).await;
    let token = env.create_token("openai-main", &[]).await;
    let broker = env.serve().await;
    let auth = format!("Bearer {token}");
    let url = broker.url("/api/openai/v1/files");

    let reply = send("POST", &url, &[("authorization", &auth)], vec![b'a'; 1001]).await;
    assert_eq!(
        (reply.status, reply.header("x-seks-error")),
        (413, Some("body_too_large"))
    );
    assert!(
        mock.requests().is_empty(),
        "a declared oversized body must not be forwarded"
    );

    // Without Content-Length the limit is enforced while streaming.
    let mut raw = format!(
        "POST /api/openai/v1/files HTTP/1.1\r\nhost: x\r\nauthorization: {auth}\r\ntransfer-encoding: chunked\r\nconnection: close\r\n\r\n"
    )
    .into_bytes();
    for _ in 0..3 {
        raw.extend_from_slice(b"1f4\r\n");
        raw.extend_from_slice(&[b'b'; 500]);
        raw.extend_from_slice(b"\r\n");
    }
    raw.extend_from_slice(b"0\r\n\r\n");
    let (status, body) = crate::support::http::raw(broker.addr, &raw).await;
    assert_eq!(status, 413, "{body}");
    assert!(mock.requests().iter().all(|r| r.body.len() <= 1000));

    let reply = send("POST", &url, &[("authorization", &auth)], vec![b'a'; 1000]).await;
    assert_eq!(reply.status, 200);
    assert_eq!(reply.json()["received_bytes"], 1000);
    broker.stop().await;
}

#[tokio::test]
async fn a_body_read_for_the_policy_is_held_to_the_forwarding_limit_too() {
    let mock = MockUpstream::start().await;
    let config = "max_body_bytes = 1000\nmax_policy_body_bytes = 4096\n";
    let env = Env::new(&config_for(&mock.url(), config));
    env.add_secret("openai-main", "openai", OPENAI_KEY).await;
    let policy = env.data_dir().join("models.toml");
    std::fs::write(&policy, "models = [\"gpt-4o-mini\"]\n").unwrap();
    let policy = policy.display().to_string();
    let token = env
        .create_token("openai-main", &["--policy", &policy])
        .await;
    let broker = env.serve().await;
    // Chunked, so no Content-Length tells the size before the policy reads it.
    let body = format!(r#"{{"model":"gpt-4o-mini","user":"{}"}}"#, "u".repeat(1500));
    let raw = format!(
        "POST /api/openai/v1/chat/completions HTTP/1.1\r\nhost: x\r\nauthorization: Bearer {token}\r\ncontent-type: application/json\r\ntransfer-encoding: chunked\r\nconnection: close\r\n\r\n{:x}\r\n{body}\r\n0\r\n\r\n",
        body.len()
    );
    let (status, answer) = crate::support::http::raw(broker.addr, raw.as_bytes()).await;
    assert_eq!(status, 413, "{answer}");
    assert!(
        mock.requests().is_empty(),
        "a body over max_body_bytes was forwarded"
    );
    broker.stop().await;
}

#[tokio::test]
async fn agents_may_speak_http2_without_tls() {
    let mock = MockUpstream::start().await;
    let (env, token) = openai_setup(&mock.url()).await;
    let broker = env.serve().await;
    let client = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .http2_only(true)
        .build_http::<http_body_util::Full<bytes::Bytes>>();
    let request = hyper::Request::post(broker.url("/api/openai/v1/chat/completions"))
        .header("authorization", format!("Bearer {token}"))
        .body(http_body_util::Full::new(bytes::Bytes::from_static(b"{}")))
        .unwrap();
    let response = client.request(request).await.expect("h2c request");
    assert_eq!(response.version(), hyper::Version::HTTP_2);
    assert_eq!(response.status(), 200);
    let seen = mock.requests();
    assert_eq!(
        seen[0].version,
        hyper::Version::HTTP_11,
        "upstreams default to HTTP/1.1"
    );
    assert_eq!(
        seen[0].header("authorization"),
        Some(format!("Bearer {OPENAI_KEY}").as_str())
    );
    broker.stop().await;
}

#[tokio::test]
async fn an_upstream_cannot_forge_the_brokers_error_marker() {
    let mock = MockUpstream::start().await;
    let (env, token) = openai_setup(&mock.url()).await;
    let broker = env.serve().await;
    let reply = send(
        "GET",
        &broker.url("/api/openai/v1/spoof"),
        &[("authorization", &format!("Bearer {token}"))],
        "",
    )
    .await;
    assert_eq!(reply.status, 418);
    assert_eq!(reply.header("x-seks-error"), None, "{reply:?}");
    assert_eq!(reply.header("x-upstream"), Some("kept"));
    broker.stop().await;
}

#[tokio::test]
async fn one_agent_connection_reaches_each_upstream_with_its_own_key_across_reconnects() {
    let openai = MockUpstream::start().await;
    let anthropic = MockUpstream::start().await;
    let env = Env::new(&format!(
        "[upstream]\nresponse_timeout = \"5s\"\n\
         [providers.openai]\nbase_url = \"{}/v1\"\n\
         [providers.anthropic]\nbase_url = \"{}\"\n",
        openai.url(),
        anthropic.url()
    ));
    env.add_secret("openai-main", "openai", OPENAI_KEY).await;
    env.add_secret("anthropic-main", "anthropic", "sk-ant-REAL")
        .await;
    let openai_token = env.create_token("openai-main", &[]).await;
    let anthropic_token = env.create_token("anthropic-main", &[]).await;
    let broker = env.serve().await;

    // One keep-alive agent connection, requests in turn.
    let stream = tokio::net::TcpStream::connect(broker.addr).await.unwrap();
    let (mut agent, connection) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
            .await
            .unwrap();
    tokio::spawn(connection);
    let openai_auth = format!("Bearer {openai_token}");
    let mut call = async |path: &str, auth: (&str, &str)| {
        agent
            .ready()
            .await
            .expect("the agent connection stays open");
        let request = hyper::Request::post(path)
            .header("host", broker.addr.to_string())
            .header(auth.0, auth.1)
            .body(http_body_util::Full::new(bytes::Bytes::from_static(b"{}")))
            .unwrap();
        let response = agent.send_request(request).await.expect("a response");
        let status = response.status();
        let body = response.into_body().collect().await.unwrap().to_bytes();
        assert_eq!(status, 200, "{path}: {}", String::from_utf8_lossy(&body));
    };
    let chat = "/api/openai/chat/completions";
    for _ in 0..3 {
        call(chat, ("authorization", &openai_auth)).await;
    }
    assert_eq!(
        openai.connections(),
        1,
        "upstream connections are kept alive"
    );

    // Another provider on the same agent connection goes to its own upstream, with its key.
    call(
        "/api/anthropic/v1/messages",
        ("x-api-key", &anthropic_token),
    )
    .await;
    let seen = anthropic.requests();
    assert_eq!(seen.len(), 1);
    assert_eq!(seen[0].header("x-api-key"), Some("sk-ant-REAL"));
    assert_eq!(
        seen[0].header("host"),
        Some(anthropic.addr.to_string().as_str())
    );
    call(chat, ("authorization", &openai_auth)).await;
    assert_eq!(
        anthropic.requests().len(),
        1,
        "nothing crossed to the other upstream"
    );

    // An upstream that ends keep-alive costs the agent nothing: the next request goes on a
    // new connection.
    let before = openai.connections();
    call("/api/openai/close", ("authorization", &openai_auth)).await;
    call(chat, ("authorization", &openai_auth)).await;
    assert_eq!(openai.connections(), before + 1);
    let seen = openai.requests();
    assert_eq!(seen.len(), 6);
    for request in &seen {
        assert_eq!(
            request.header("authorization"),
            Some(format!("Bearer {OPENAI_KEY}").as_str())
        );
        assert_eq!(
            request.header("host"),
            Some(openai.addr.to_string().as_str())
        );
        assert!(request.target.starts_with("/v1/"), "{}", request.target);
    }
    broker.stop().await;
}

/// Read `body` until it ends: whether it ended with an error, and when.
async fn read_to_end(mut body: hyper::body::Incoming) -> (bool, Instant) {
    let outcome = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            match body.frame().await {
                Some(Ok(_)) => {}
                Some(Err(_)) => return true,
                None => return false,
            }
        }
    })
    .await
    .expect("the stream went on for 10 s");
    (outcome, Instant::now())
}

#[tokio::test]
async fn a_stream_scrubs_a_secret_added_after_it_started() {
    const ADDED: &str = "sk-added-while-the-stream-is-open-0123456789";
    let mock = MockUpstream::start().await;
    let (env, token) = openai_setup(&mock.url()).await;
    let broker = env.serve().await;
    let url = broker.url(&format!("/api/openai/v1/gated-say?say={ADDED}"));
    let auth = format!("Bearer {token}");
    let response = send_streaming("GET", &url, &[("authorization", &auth)], "").await;
    assert_eq!(response.status(), 200);
    let mut body = response.into_body();
    body.frame().await.unwrap().unwrap();
    // The stream is open; the operator adds a secret, which reaches the broker within a
    // second; then the upstream says it.
    env.add_secret("added", "openai", ADDED).await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    mock.release();
    let rest = tokio::time::timeout(Duration::from_secs(10), body.collect())
        .await
        .expect("the stream went on for 10 s")
        .unwrap()
        .to_bytes();
    let rest = String::from_utf8_lossy(&rest);
    assert_eq!(rest, format!("data: {}\n\n", "*".repeat(ADDED.len())));
    broker.stop().await;
}

#[tokio::test]
async fn a_stream_is_cut_off_once_its_token_is_revoked_or_expires() {
    let mock = MockUpstream::start().await;
    let (env, token) = openai_setup(&mock.url()).await;
    let brief = env
        .create_token("openai-main", &["--agent", "brief", "--ttl", "3s"])
        .await;
    let created = Instant::now();
    let broker = env.serve().await;
    // The upstream sends an event every 200 ms for as long as anyone listens.
    let open = |token: String| {
        let url = broker.url("/api/openai/v1/drip");
        async move {
            let auth = format!("Bearer {token}");
            let response = send_streaming("GET", &url, &[("authorization", &auth)], "").await;
            assert_eq!(response.status(), 200);
            let mut body = response.into_body();
            body.frame().await.unwrap().unwrap();
            body
        }
    };
    let revoked = tokio::spawn(read_to_end(open(token.clone()).await));
    let expiring = tokio::spawn(read_to_end(open(brief).await));
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(!revoked.is_finished() && !expiring.is_finished());

    let id = env.token_id("bot").await;
    env.cli(&["token", "revoke", &id], "").await.ok();
    let revoked_at = Instant::now();
    let (with_error, ended) = revoked.await.unwrap();
    assert!(with_error, "a cut-off stream must not look complete");
    assert!(
        ended - revoked_at < Duration::from_secs(2),
        "ended {:?} after the revocation",
        ended - revoked_at
    );

    let (with_error, ended) = expiring.await.unwrap();
    assert!(with_error);
    assert!(
        ended - created < Duration::from_secs(6),
        "ended {:?} after creation, with a 3 s lifetime",
        ended - created
    );
    broker.stop().await;
}
