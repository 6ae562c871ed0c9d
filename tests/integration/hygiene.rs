//! The canary: run the broker through success, denial, upstream errors and a panic with a
//! canary secret, then search everything it produced for the canary in every form.

use std::time::Duration;

use crate::support::forms::found_in;
use crate::support::http::send;
use crate::support::mock::MockUpstream;
use crate::support::{Env, files_under};

const CANARY: &str = "sk-proj-CANARY/7f3a+91bd=e2c4~55aa";
const OTHER: &str = "sk-ant-SECOND-canary-0099887766";

#[tokio::test]
async fn the_canary_is_nowhere_in_what_the_broker_produced() {
    let mock = MockUpstream::start().await;
    let env = Env::with_upstream(&mock.url());
    env.add_secret("canary", "openai", CANARY).await;
    env.add_secret("other", "anthropic", OTHER).await;
    let token = env
        .create_token("canary", &["--agent", "canary-agent"])
        .await;
    let other_token = env.create_token("other", &[]).await;
    let revoked = env.create_token("canary", &["--agent", "revoked"]).await;
    let id = env.token_id("revoked").await;
    env.cli(&["token", "revoke", &id], "").await.ok();
    let broker = env
        .serve_with(&[("SEKS_LOG", "debug"), ("SEKS_TEST_FAULTS", "1")])
        .await;
    let auth = format!("Bearer {token}");
    let mut responses: Vec<u8> = Vec::new();
    let mut record = |reply: crate::support::http::Reply| {
        for (k, v) in &reply.headers {
            responses.extend_from_slice(format!("{k}: {v}\n").as_bytes());
        }
        responses.extend_from_slice(reply.body.as_bytes());
        reply.status
    };

    // Success, including reflections of the canary, plain and compressed.
    for path in [
        "/v1/chat/completions",
        "/v1/reflect",
        "/v1/reflect?encoding=gzip",
        "/v1/reflect?encoding=br",
        "/v1/reflect-sse",
    ] {
        let status = record(
            send(
                "POST",
                &broker.url(&format!("/api/openai{path}")),
                &[("authorization", &auth)],
                "{}",
            )
            .await,
        );
        assert_eq!(status, 200, "{path}");
    }
    // The other secret, reflected through the canary's token.
    let echoed = record(
        send(
            "POST",
            &broker.url("/api/openai/v1/echo-body"),
            &[("authorization", &auth)],
            OTHER,
        )
        .await,
    );
    assert_eq!(echoed, 200);
    // Denials: revoked, tampered, wrong provider.
    for (path, header, value) in [
        (
            "/api/openai/v1/models",
            "authorization",
            format!("Bearer {revoked}"),
        ),
        (
            "/api/openai/v1/models",
            "authorization",
            format!("Bearer {token}x"),
        ),
        (
            "/api/openai/v1/models",
            "authorization",
            format!("Bearer {other_token}"),
        ),
        ("/api/anthropic/v1/messages", "x-api-key", token.clone()),
    ] {
        assert_eq!(
            record(send("GET", &broker.url(path), &[(header, &value)], "").await),
            401
        );
    }
    // Upstream errors: too slow, reset mid-stream.
    assert_eq!(
        record(
            send(
                "GET",
                &broker.url("/api/openai/v1/slow"),
                &[("authorization", &auth)],
                ""
            )
            .await
        ),
        504
    );
    let reset = crate::support::http::send_streaming(
        "GET",
        &broker.url("/api/openai/v1/reset"),
        &[("authorization", &auth)],
        "",
    )
    .await;
    let _ = http_body_util::BodyExt::collect(reset.into_body()).await;
    // A panic while the credential is in hand: the connection drops, the broker lives on.
    let request = format!(
        "GET /api/openai/v1/__seks_test_panic HTTP/1.1\r\nhost: x\r\nauthorization: {auth}\r\nconnection: close\r\n\r\n"
    );
    let mut stream = tokio::net::TcpStream::connect(broker.addr).await.unwrap();
    tokio::io::AsyncWriteExt::write_all(&mut stream, request.as_bytes())
        .await
        .unwrap();
    let mut after_panic = Vec::new();
    let _ = tokio::time::timeout(
        Duration::from_secs(5),
        tokio::io::AsyncReadExt::read_to_end(&mut stream, &mut after_panic),
    )
    .await;
    assert_eq!(
        record(
            send(
                "POST",
                &broker.url("/api/openai/v1/chat/completions"),
                &[("authorization", &auth)],
                "{}"
            )
            .await
        ),
        200
    );

    responses.extend_from_slice(&after_panic);

    let limits =
        std::fs::read_to_string(format!("/proc/{}/limits", broker.child.id().unwrap())).unwrap();
    let core = limits
        .lines()
        .find(|l| l.starts_with("Max core file size"))
        .unwrap();
    assert_eq!(
        core.split_whitespace().skip(4).take(2).collect::<Vec<_>>(),
        ["0", "0"],
        "{core}"
    );
    broker.stop().await;
    tokio::time::sleep(Duration::from_millis(200)).await;

    // The search must have something to read, or a silent pass would prove nothing.
    let transcript = env.transcript();
    for expected in [
        "listening on",
        "seks::audit",
        "seks panicked",
        "test fault with credential",
        "upstream_timeout",
        "token_revoked",
    ] {
        assert!(
            transcript.contains(expected),
            "the transcript lacks {expected:?}:\n{transcript}"
        );
    }
    assert!(String::from_utf8_lossy(&responses).contains("intact-after"));
    let mut files = files_under(env.data_dir());
    if let Some(db) = &env.pg {
        files.push(("the PostgreSQL database".into(), db.dump()));
    }
    let database = if env.pg.is_some() {
        "the PostgreSQL database"
    } else {
        "seks.db"
    };
    assert!(
        files
            .iter()
            .any(|(p, b)| p.ends_with(database) && b.len() > 4096),
        "no database to search"
    );

    for secret in [CANARY, OTHER] {
        assert_eq!(
            found_in(secret, transcript.as_bytes()),
            Vec::<String>::new(),
            "in the output:\n{transcript}"
        );
        assert_eq!(
            found_in(secret, &responses),
            Vec::<String>::new(),
            "in the responses"
        );
        for (path, bytes) in &files {
            assert_eq!(found_in(secret, bytes), Vec::<String>::new(), "in {path}");
        }
    }
    for t in [&token, &other_token, &revoked] {
        assert!(
            !transcript.contains(t.as_str()),
            "a whole token is in the output"
        );
        assert!(
            files
                .iter()
                .all(|(_, b)| !b.windows(t.len()).any(|w| w == t.as_bytes())),
            "a token is in the data directory"
        );
    }
    assert!(
        transcript.contains(&token[..16]),
        "logs may show a short token prefix"
    );
}

#[tokio::test]
async fn with_security_mlock_all_broker_memory_is_locked() {
    let env = Env::new("[security]\nmlock = true\n");
    let broker = env.serve().await;
    let status =
        std::fs::read_to_string(format!("/proc/{}/status", broker.child.id().unwrap())).unwrap();
    let locked_kb: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmLck:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap();
    assert!(locked_kb > 1024, "only {locked_kb} kB locked:\n{status}");
    broker.stop().await;
}
