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
