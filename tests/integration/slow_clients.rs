//! Agents that send slowly or stall: their connections are cut, never held open forever.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::support::Env;
use crate::support::mock::MockUpstream;

/// Send `head` and never finish it; how long the broker kept the connection open.
async fn held_open_for(addr: SocketAddr, head: &[u8]) -> Duration {
    let mut stream = TcpStream::connect(addr).await.expect("connect");
    stream.write_all(head).await.expect("write");
    let started = Instant::now();
    let mut buf = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(60), stream.read_to_end(&mut buf)).await;
    assert!(read.is_ok(), "the connection was still open after 60 s");
    started.elapsed()
}

#[tokio::test]
async fn a_request_head_that_never_ends_is_cut() {
    let mock = MockUpstream::start().await;
    let env = Env::with_upstream(&mock.url());
    let broker = env.serve().await;
    let admin: SocketAddr = broker
        .admin_url()
        .await
        .trim_start_matches("http://")
        .parse()
        .expect("admin address");
    let head = b"GET /api/openai/v1/models HTTP/1.1\r\nhost: localhost\r\nx-slow: ";
    let (agents, operators) =
        tokio::join!(held_open_for(broker.addr, head), held_open_for(admin, head));
    assert!(
        agents < Duration::from_secs(45),
        "agent listener: {agents:?}"
    );
    assert!(
        operators < Duration::from_secs(45),
        "admin listener: {operators:?}"
    );
    broker.stop().await;
}

#[tokio::test]
async fn an_http2_connection_that_opens_no_stream_is_cut() {
    let mock = MockUpstream::start().await;
    let env = Env::with_upstream(&mock.url());
    let broker = env.serve().await;
    // The connection preface, empty settings and an acknowledgement of the broker's: a live
    // HTTP/2 client that then never sends a request.
    let mut hello = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
    hello.extend_from_slice(&[0, 0, 0, 4, 0, 0, 0, 0, 0]);
    hello.extend_from_slice(&[0, 0, 0, 4, 1, 0, 0, 0, 0]);
    let held = held_open_for(broker.addr, &hello).await;
    assert!(held < Duration::from_secs(45), "agent listener: {held:?}");
    broker.stop().await;
}

/// Send `request` and read the broker's whole answer, within 60 s.
async fn answer_to(addr: SocketAddr, request: &[u8]) -> String {
    let mut stream = TcpStream::connect(addr).await.expect("connect");
    stream.write_all(request).await.expect("write");
    let mut buf = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(60), stream.read_to_end(&mut buf)).await;
    let line = String::from_utf8_lossy(request.split(|&b| b == b'\r').next().unwrap_or(b""));
    assert!(read.is_ok(), "no answer within 60 s to {line}");
    String::from_utf8_lossy(&buf).into_owned()
}

/// What an MCP client accepts: with it, `/mcp` gets as far as reading the body.
const ACCEPT_MCP: &str = "accept: application/json, text/event-stream\r\n";

#[tokio::test]
async fn a_request_body_that_stops_arriving_is_a_408_wherever_the_broker_reads_it() {
    let mock = MockUpstream::start().await;
    let env = Env::with_upstream(&mock.url());
    env.add_secret("k", "anthropic", "sk-ant-REAL-stall").await;
    // A `models` rule makes the broker read the body before forwarding it.
    let token = env.create_token("k", &["--model", "claude-x"]).await;
    let broker = env.serve().await;

    let started = Instant::now();
    let head = |path: &str, auth: &str| {
        format!(
            "POST {path} HTTP/1.1\r\nhost: localhost\r\n{auth}{token}\r\ncontent-type: application/json\r\n{ACCEPT_MCP}content-length: 100\r\n\r\n{{\"mo"
        )
    };
    let bearer = "authorization: Bearer ";
    let (proxied, capability, derive, mcp) = (
        head("/api/anthropic/v1/messages", "x-api-key: "),
        head("/v1/capabilities/anything", bearer),
        head("/seks/v1/tokens/derive", bearer),
        head("/mcp", bearer),
    );
    let (proxied, capability, derive, mcp) = tokio::join!(
        answer_to(broker.addr, proxied.as_bytes()),
        answer_to(broker.addr, capability.as_bytes()),
        answer_to(broker.addr, derive.as_bytes()),
        answer_to(broker.addr, mcp.as_bytes()),
    );
    assert!(started.elapsed() < Duration::from_secs(45));
    for answer in [&proxied, &capability, &derive, &mcp] {
        assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
        assert!(answer.contains("x-seks-error: body_timeout"), "{answer}");
    }
    // In the provider's shape.
    assert!(proxied.contains(r#""type":"error""#), "{proxied}");
    assert!(mock.requests().is_empty());
    broker.stop().await;
}

#[tokio::test]
async fn a_broken_request_body_is_a_400_not_a_413() {
    let mock = MockUpstream::start().await;
    let env = Env::with_upstream(&mock.url());
    env.add_secret("k", "openai", "sk-REAL-broken-body").await;
    let token = env.create_token("k", &[]).await;
    let broker = env.serve().await;
    for path in [
        "/v1/capabilities/anything",
        "/seks/v1/tokens/derive",
        "/mcp",
    ] {
        let request = format!(
            "POST {path} HTTP/1.1\r\nhost: localhost\r\nauthorization: Bearer {token}\r\ncontent-type: application/json\r\n{ACCEPT_MCP}transfer-encoding: chunked\r\n\r\nzz\r\n{{}}\r\n"
        );
        let answer = answer_to(broker.addr, request.as_bytes()).await;
        assert!(answer.starts_with("HTTP/1.1 400"), "{path}: {answer}");
        assert!(
            answer.contains("x-seks-error: bad_body"),
            "{path}: {answer}"
        );
    }
    broker.stop().await;
}
