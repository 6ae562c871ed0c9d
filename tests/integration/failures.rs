//! Upstreams that are down, reset, slow or stalled: clear 502/504, never a hang.

use std::time::{Duration, Instant};

use http_body_util::BodyExt;

use crate::support::Env;
use crate::support::http::{send, send_streaming};
use crate::support::mock::MockUpstream;

/// Open a streaming response from the mock's `path` through the broker.
async fn stream(broker: &crate::support::Broker, token: &str, path: &str) -> hyper::body::Incoming {
    let response = send_streaming("GET", &broker.url(path), &[("x-api-key", token)], "").await;
    assert_eq!(response.status(), 200);
    response.into_body()
}

/// POST /v1/messages through the broker.
async fn messages(broker: &crate::support::Broker, token: &str) -> crate::support::http::Reply {
    send(
        "POST",
        &broker.url("/api/anthropic/v1/messages"),
        &[("x-api-key", token)],
        "{}",
    )
    .await
}

async fn broker_for(upstream: &str) -> (Env, crate::support::Broker, String) {
    let env = Env::with_upstream(upstream);
    env.add_secret("k", "anthropic", "sk-ant-REAL").await;
    let token = env.create_token("k", &[]).await;
    let broker = env.serve().await;
    (env, broker, token)
}

#[tokio::test]
async fn a_closed_upstream_port_is_a_502_in_the_providers_shape() {
    // Bind then drop a listener so the port is (almost certainly) closed.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let (_env, broker, token) = broker_for(&format!("http://127.0.0.1:{port}")).await;
    let reply = messages(&broker, &token).await;
    assert_eq!(
        (reply.status, reply.header("x-seks-error")),
        (502, Some("upstream_unreachable"))
    );
    assert_eq!(reply.json()["type"], "error");
    assert_eq!(reply.json()["error"]["type"], "api_error");
    assert!(!reply.body.contains("sk-ant-REAL"));
    broker.stop().await;
}

#[tokio::test]
async fn an_upstream_that_accepts_then_closes_without_answering_is_a_502() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            use tokio::io::AsyncReadExt;
            let mut buf = [0u8; 1024];
            let _ = stream.read(&mut buf).await;
            drop(stream);
        }
    });
    let (_env, broker, token) = broker_for(&format!("http://{addr}")).await;
    let reply = messages(&broker, &token).await;
    assert_eq!(
        (reply.status, reply.header("x-seks-error")),
        (502, Some("upstream_failed"))
    );
    broker.stop().await;
}

#[tokio::test]
async fn an_upstream_slower_than_the_response_timeout_is_a_504() {
    let mock = MockUpstream::start().await;
    let (_env, broker, token) = broker_for(&mock.url()).await;
    let start = Instant::now();
    let reply = send(
        "GET",
        &broker.url("/api/anthropic/v1/slow"),
        &[("x-api-key", &token)],
        "",
    )
    .await;
    assert_eq!(
        (reply.status, reply.header("x-seks-error")),
        (504, Some("upstream_timeout"))
    );
    assert_eq!(reply.json()["error"]["type"], "timeout_error");
    assert!(
        start.elapsed() < Duration::from_secs(15),
        "took {:?}",
        start.elapsed()
    );
    broker.stop().await;
}

#[tokio::test]
async fn a_reset_mid_stream_ends_the_agents_response_with_an_error_not_a_hang() {
    let mock = MockUpstream::start().await;
    let (_env, broker, token) = broker_for(&mock.url()).await;
    let body = stream(&broker, &token, "/api/anthropic/v1/reset").await;
    let collected = tokio::time::timeout(Duration::from_secs(10), body.collect())
        .await
        .expect("the broker hung after the upstream reset");
    assert!(
        collected.is_err(),
        "a truncated stream must not look complete"
    );
    broker.stop().await;
}

#[tokio::test]
async fn a_stream_that_goes_silent_is_cut_after_the_read_timeout() {
    let mock = MockUpstream::start().await;
    let (_env, broker, token) = broker_for(&mock.url()).await;
    let mut body = stream(&broker, &token, "/api/anthropic/v1/stall").await;
    let first = body.frame().await.unwrap().unwrap();
    assert_eq!(first.data_ref().unwrap().as_ref(), b"data: first\n\n");
    let rest = tokio::time::timeout(Duration::from_secs(10), body.collect())
        .await
        .expect("the broker kept a silent stream open past its read timeout");
    assert!(rest.is_err(), "a cut stream must not look complete");
    broker.stop().await;
}
