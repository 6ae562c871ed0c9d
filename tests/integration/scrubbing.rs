//! Upstreams that reflect the credential, in every form and encoding: nothing gets back to
//! the agent, and the rest of the body arrives intact.

use std::time::{Duration, Instant};

use http_body_util::BodyExt;

use crate::support::Env;
use crate::support::forms::{encodings, found_in, reflect_json};
use crate::support::http::{send, send_streaming};
use crate::support::mock::MockUpstream;

/// Special characters make the encoded forms differ from the raw value.
const SECRET: &str = "sk-proj-Reflect/Me+Please=Now~ok_0123";

async fn setup() -> (MockUpstream, Env, String) {
    let mock = MockUpstream::start().await;
    let env = Env::with_upstream(&mock.url());
    env.add_secret("main", "openai", SECRET).await;
    let token = env.create_token("main", &[]).await;
    (mock, env, token)
}

#[tokio::test]
async fn a_reflected_credential_never_reaches_the_agent_in_any_form_or_compression() {
    let (_mock, env, token) = setup().await;
    let broker = env.serve().await;
    let auth = format!("Bearer {token}");
    for encoding in ["", "gzip", "deflate", "br", "zstd"] {
        let url = broker.url(&format!("/api/openai/v1/reflect?encoding={encoding}"));
        let reply = send("GET", &url, &[("authorization", &auth)], "").await;
        assert_eq!(reply.status, 200, "{encoding}: {reply:?}");
        assert_eq!(
            reply.header("content-encoding"),
            None,
            "{encoding}: the agent gets the decoded body"
        );
        assert_eq!(
            found_in(SECRET, reply.body.as_bytes()),
            Vec::<String>::new(),
            "{encoding}: {}",
            reply.body
        );
        for (name, value) in &reply.headers {
            assert!(
                found_in(SECRET, value.as_bytes()).is_empty(),
                "{encoding}: header {name}: {value}"
            );
        }
        assert!(
            reply
                .header("x-reflect-raw")
                .is_some_and(|v| v.chars().all(|c| c == '*'))
        );
        // Everything around the secrets is intact, and every field kept its length.
        let json = reply.json();
        assert_eq!(
            (json["before"].as_str(), json["after"].as_str()),
            (Some("intact-before"), Some("intact-after"))
        );
        assert_eq!(
            reply.body.len(),
            reflect_json(SECRET).len(),
            "{encoding}: masks keep lengths"
        );
        for (name, _) in encodings(SECRET) {
            assert!(
                json[&name].as_str().is_some_and(|v| v.contains("****")),
                "{encoding}: {name} not masked"
            );
        }
        if encoding.is_empty() {
            assert_eq!(
                reply.header("content-length"),
                Some(reply.body.len().to_string().as_str())
            );
        }
    }
    broker.stop().await;
}

#[tokio::test]
async fn a_secret_split_across_sse_chunks_is_caught_and_the_stream_stays_intact() {
    let (_mock, env, token) = setup().await;
    let broker = env.serve().await;
    let response = send_streaming(
        "GET",
        &broker.url("/api/openai/v1/reflect-sse"),
        &[("authorization", &format!("Bearer {token}"))],
        "",
    )
    .await;
    assert_eq!(response.status(), 200);
    let body = response.into_body().collect().await.unwrap().to_bytes();
    let text = String::from_utf8_lossy(&body);
    assert!(found_in(SECRET, &body).is_empty(), "{text}");
    let events: Vec<&str> = text.split("\n\n").filter(|e| !e.is_empty()).collect();
    assert_eq!(events.len(), 3, "{text}");
    assert!(
        events[0].starts_with("data: {\"n\":1,\"text\":\"key=*"),
        "{text}"
    );
    assert!(events[1].starts_with("data: {\"n\":2,\"b64\":\""), "{text}");
    assert_eq!(events[2], "data: [DONE]");
    broker.stop().await;
}

#[tokio::test]
async fn every_secret_the_broker_holds_is_scrubbed_and_changes_apply_within_a_second() {
    let (_mock, env, token) = setup().await;
    env.add_secret("other", "github", "ghp_OtherSecretHeldByTheBroker")
        .await;
    let broker = env.serve().await;
    let echo = |value: String| {
        let url = broker.url("/api/openai/v1/echo-body");
        let auth = format!("Bearer {token}");
        async move {
            send("POST", &url, &[("authorization", &auth)], value)
                .await
                .body
        }
    };
    // A secret of another provider, never injected into this request, is masked too.
    assert_eq!(
        echo("x ghp_OtherSecretHeldByTheBroker y".into()).await,
        format!("x {} y", "*".repeat(30))
    );

    async fn within_a_second<F: Future<Output = bool>>(mut check: impl FnMut() -> F, what: &str) {
        let start = Instant::now();
        while !check().await {
            assert!(
                start.elapsed() < Duration::from_secs(1),
                "{what} not in effect after 1s"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    let added = "sk-ant-AddedWhileServing-42";
    assert_eq!(echo(added.into()).await, added, "not a secret yet");
    env.add_secret("added", "anthropic", added).await;
    within_a_second(
        || async { echo(added.into()).await == "*".repeat(added.len()) },
        "adding",
    )
    .await;
    env.cli(&["secret", "rm", "added"], "").await.ok();
    within_a_second(|| async { echo(added.into()).await == added }, "removal").await;
    env.cli(&["secret", "rotate", "other"], "ghp_RotatedValueOfTheOther")
        .await
        .ok();
    within_a_second(
        || async {
            echo("ghp_RotatedValueOfTheOther".into())
                .await
                .starts_with("****")
        },
        "rotation",
    )
    .await;
    broker.stop().await;
}

#[tokio::test]
async fn a_large_download_streams_through_in_bounded_memory() {
    let (_mock, env, token) = setup().await;
    let broker = env.serve().await;
    let mb = 256;
    let response = send_streaming(
        "GET",
        &broker.url(&format!("/api/openai/v1/big?mb={mb}")),
        &[("authorization", &format!("Bearer {token}"))],
        "",
    )
    .await;
    assert_eq!(response.status(), 200);
    let mut body = response.into_body();
    let mut received = 0usize;
    while let Some(frame) = body.frame().await {
        received += frame.unwrap().data_ref().map_or(0, |d| d.len());
    }
    assert_eq!(received, mb * 1024 * 1024);
    let status =
        std::fs::read_to_string(format!("/proc/{}/status", broker.child.id().unwrap())).unwrap();
    let peak_kb: usize = status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap();
    assert!(
        peak_kb < 64 * 1024,
        "peak RSS {peak_kb} kB for a {mb} MiB body"
    );
    broker.stop().await;
}
