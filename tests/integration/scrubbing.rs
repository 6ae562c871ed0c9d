//! Upstreams that reflect the credential, in every form and encoding: nothing gets back to
//! the agent, and the rest of the body arrives intact.

use std::time::{Duration, Instant};

use http_body_util::BodyExt;

use crate::support::Env;
use crate::support::forms::{encodings, found_in, reflect_json};
use crate::support::http::{send, send_streaming};
use crate::support::mock::{MockUpstream, compress};

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
    // Rotating or removing a secret doesn't revoke it at the provider, so its old value
    // stays masked while the broker runs.
    env.cli(&["secret", "rm", "added"], "").await.ok();
    let restored = "sk-ant-SecretAddedAfterTheRemoval-7";
    env.add_secret("restored", "anthropic", restored).await;
    within_a_second(
        || async { echo(restored.into()).await == "*".repeat(restored.len()) },
        "the next change",
    )
    .await;
    assert_eq!(echo(added.into()).await, "*".repeat(added.len()));
    assert!(
        echo("x ghp_OtherSecretHeldByTheBroker y".into())
            .await
            .starts_with("x ****")
    );
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

/// A raw-TCP upstream that hides the injected key where HTTP libraries don't look: the status
/// line's reason phrase, a header name, the content-encoding value, a gzip transfer coding.
async fn hostile_upstream() -> String {
    use std::io::Write;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut request = Vec::new();
                let mut buf = [0u8; 4096];
                while !request.windows(4).any(|w| w == b"\r\n\r\n") {
                    match stream.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => request.extend_from_slice(&buf[..n]),
                    }
                }
                let text = String::from_utf8_lossy(&request).into_owned();
                let path = text.split_whitespace().nth(1).unwrap_or("").to_owned();
                let key = text
                    .lines()
                    .find_map(|l| l.strip_prefix("authorization: Bearer "))
                    .unwrap_or("")
                    .trim()
                    .to_owned();
                let response = match path.rsplit('/').next().unwrap_or("") {
                    "reason" => format!("HTTP/1.1 200 {key}\r\ncontent-length: 2\r\nconnection: close\r\n\r\nok").into_bytes(),
                    "coding" => format!("HTTP/1.1 200 OK\r\ncontent-encoding: {key}\r\ncontent-length: 2\r\nconnection: close\r\n\r\nok").into_bytes(),
                    "name" => format!("HTTP/1.1 200 OK\r\nx-echo-{key}: 1\r\ncontent-length: 2\r\nconnection: close\r\n\r\nok").into_bytes(),
                    "not-modified" => b"HTTP/1.1 304 Not Modified\r\ncontent-encoding: gzip\r\netag: \"x\"\r\nconnection: close\r\n\r\n".to_vec(),
                    _ => {
                        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
                        gz.write_all(format!("{{\"echo\":\"{key}\"}}").as_bytes()).unwrap();
                        let gz = gz.finish().unwrap();
                        let mut r = b"HTTP/1.1 200 OK\r\ntransfer-encoding: gzip, chunked\r\nconnection: close\r\n\r\n".to_vec();
                        r.extend(format!("{:x}\r\n", gz.len()).bytes());
                        r.extend(&gz);
                        r.extend(b"\r\n0\r\n\r\n");
                        r
                    }
                };
                let _ = stream.write_all(&response).await;
                let _ = stream.shutdown().await;
            });
        }
    });
    format!("http://{addr}")
}

#[tokio::test]
async fn hiding_places_outside_header_values_and_body_are_closed() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let upstream = hostile_upstream().await;
    let env = Env::with_upstream(&upstream);
    env.add_secret("main", "openai", SECRET).await;
    // A header name can only hold token characters: this secret fits in one.
    let name_safe = "sk-NameSafe-ABCDEFGHIJ0123456789abc";
    env.add_secret("name-safe", "openai", name_safe).await;
    let main_token = env.create_token("main", &[]).await;
    let name_token = env.create_token("name-safe", &[]).await;
    let broker = env.serve().await;
    let cases = [
        ("reason", "200", SECRET, &main_token),
        ("coding", "502", SECRET, &main_token),
        ("name", "200", name_safe, &name_token),
        ("gzip-transfer", "502", SECRET, &main_token),
        ("not-modified", "304", SECRET, &main_token),
    ];
    for (path, status, secret, token) in cases {
        let request = format!(
            "GET /api/openai/v1/{path} HTTP/1.1\r\nhost: x\r\nauthorization: Bearer {token}\r\nconnection: close\r\n\r\n"
        );
        let mut stream = tokio::net::TcpStream::connect(broker.addr).await.unwrap();
        stream.write_all(request.as_bytes()).await.unwrap();
        let mut response = Vec::new();
        tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut response))
            .await
            .unwrap()
            .unwrap();
        let text = String::from_utf8_lossy(&response);
        assert!(
            text.starts_with(&format!("HTTP/1.1 {status}")),
            "{path}: {text}"
        );
        assert!(found_in(secret, &response).is_empty(), "{path}: {text}");
    }
    broker.stop().await;
}

/// The secret in the forms an upstream writes it in a JSON answer: as the model name (which
/// the audit record keeps), raw, in base64 at an offset that isn't a multiple of 3, and
/// percent-encoded twice.
fn quoting_answer(secret: &str) -> String {
    use base64::Engine;
    let b64 = base64::engine::general_purpose::STANDARD.encode(format!("xy{secret}tail"));
    let twice: String = secret.bytes().map(|b| format!("%25{b:02X}")).collect();
    let filler = "lorem ipsum ".repeat(200);
    format!(
        r#"{{"model":"{secret}","filler":"{filler}","raw":"{secret}","b64":"{b64}","next":"/cb?u={twice}","usage":{{"prompt_tokens":2,"completion_tokens":3,"total_tokens":5}}}}"#
    )
}

/// An upstream that answers every request with [`quoting_answer`], compressed with the coding
/// the query names, and dribbles the compressed bytes out a few at a time in chunked
/// frames, so decoded text (and the secret in it) arrives in pieces.
async fn dribbling_upstream(secret: &'static str) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut socket, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut head = Vec::new();
                let mut byte = [0u8; 1];
                while !head.ends_with(b"\r\n\r\n") {
                    if socket.read(&mut byte).await.unwrap_or(0) == 0 {
                        return;
                    }
                    head.push(byte[0]);
                }
                let head = String::from_utf8_lossy(&head);
                let coding = ["gzip", "br", "zstd"]
                    .into_iter()
                    .find(|c| head.contains(&format!("encoding={c}")))
                    .unwrap_or("gzip");
                let body = compress(coding, quoting_answer(secret).as_bytes());
                let start = format!(
                    "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-encoding: {coding}\r\ntransfer-encoding: chunked\r\nconnection: close\r\n\r\n"
                );
                socket.write_all(start.as_bytes()).await.unwrap();
                let mut rest = &body[..];
                for size in (1..4).cycle() {
                    if rest.is_empty() {
                        break;
                    }
                    let (piece, after) = rest.split_at(size.min(rest.len()));
                    rest = after;
                    let frame =
                        [format!("{:x}\r\n", piece.len()).as_bytes(), piece, b"\r\n"].concat();
                    if socket.write_all(&frame).await.is_err() {
                        return;
                    }
                    tokio::time::sleep(Duration::from_micros(300)).await;
                }
                let _ = socket.write_all(b"0\r\n\r\n").await;
            });
        }
    });
    format!("http://{addr}")
}

#[tokio::test]
async fn a_compressed_answer_dribbled_in_pieces_leaks_the_secret_nowhere() {
    const SECRET: &str = "sk-proj-Dribble/Me+Slowly=Now~ok_4567";
    let upstream = dribbling_upstream(SECRET).await;
    let env = Env::with_upstream(&upstream);
    env.add_secret("main", "openai", SECRET).await;
    let token = env.create_token("main", &[]).await;
    let broker = env.serve().await;
    let mut bodies = Vec::new();
    for coding in ["gzip", "br", "zstd"] {
        let url = broker.url(&format!(
            "/api/openai/v1/chat/completions?encoding={coding}"
        ));
        let reply = send(
            "GET",
            &url,
            &[("authorization", &format!("Bearer {token}"))],
            "",
        )
        .await;
        assert_eq!(reply.status, 200, "{coding}: {reply:?}");
        assert_eq!(reply.body.len(), quoting_answer(SECRET).len(), "{coding}");
        let json = reply.json();
        for field in ["model", "raw", "b64", "next"] {
            assert!(
                json[field].as_str().is_some_and(|v| v.contains("****")),
                "{coding}: {field} not masked: {}",
                reply.body
            );
        }
        bodies.extend_from_slice(reply.body.as_bytes());
    }
    broker.stop().await;
    let audit = env.cli(&["audit", "export"], "").await.ok().stdout;
    assert!(audit.contains("chat/completions"), "{audit}");
    bodies.extend_from_slice(audit.as_bytes());
    crate::support::assert_never_leaked(&env, SECRET, &bodies);
}

/// A WebSocket upstream that answers the first message with the secret in fragmented
/// messages (text, and binary in base64 at an odd offset, each cut mid-secret into
/// continuation frames), a ping carrying it, then closes with it as the reason.
async fn quoting_ws_upstream(secret: &'static str) -> String {
    use base64::Engine;
    use futures_util::{SinkExt, StreamExt};
    use tokio_tungstenite::tungstenite::Message;
    use tokio_tungstenite::tungstenite::handshake::server::{Request, Response};
    use tokio_tungstenite::tungstenite::http::HeaderValue;
    use tokio_tungstenite::tungstenite::protocol::frame::coding::{Data, OpCode};
    use tokio_tungstenite::tungstenite::protocol::frame::{CloseFrame, Frame};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                // A session cookie in the handshake's answer, as a server might set on the
                // credential it was given.
                #[allow(clippy::result_large_err)]
                let with_cookie = |_: &Request, mut answer: Response| {
                    let cookie = HeaderValue::from_static("ws-session=opened-on-the-real-key");
                    answer.headers_mut().insert("set-cookie", cookie);
                    Ok(answer)
                };
                let Ok(mut ws) = tokio_tungstenite::accept_hdr_async(stream, with_cookie).await
                else {
                    return;
                };
                if !matches!(ws.next().await, Some(Ok(Message::Text(_)))) {
                    return;
                }
                let text = format!("{{\"error\":\"bad key {secret}, see logs\"}}").into_bytes();
                let binary = base64::engine::general_purpose::STANDARD
                    .encode(format!("x{secret}yz"))
                    .into_bytes();
                for (data, kind) in [(text, Data::Text), (binary, Data::Binary)] {
                    let pieces: Vec<&[u8]> = data.chunks(5).collect();
                    for (i, piece) in pieces.iter().enumerate() {
                        let opcode = if i == 0 {
                            OpCode::Data(kind)
                        } else {
                            OpCode::Data(Data::Continue)
                        };
                        let last = i + 1 == pieces.len();
                        let frame = Frame::message(piece.to_vec(), opcode, last);
                        if ws.send(Message::Frame(frame)).await.is_err() {
                            return;
                        }
                    }
                }
                let _ = ws
                    .send(Message::Ping(secret.as_bytes().to_vec().into()))
                    .await;
                let _ = ws
                    .send(Message::Close(Some(CloseFrame {
                        code: 1008u16.into(),
                        reason: format!("key {secret} refused").into(),
                    })))
                    .await;
                while let Some(Ok(_)) = ws.next().await {}
            });
        }
    });
    format!("http://{addr}")
}

#[tokio::test]
async fn websocket_messages_in_fragments_ping_and_close_never_carry_the_secret() {
    use futures_util::{SinkExt, StreamExt};
    use tokio_tungstenite::tungstenite::Message;
    use tokio_tungstenite::tungstenite::client::IntoClientRequest;
    const SECRET: &str = "sk-proj-Socket/Me+Fragment=Now~ok_8901";
    let upstream = quoting_ws_upstream(SECRET).await;
    let env = Env::with_upstream(&upstream);
    env.add_secret("main", "openai", SECRET).await;
    let token = env.create_token("main", &[]).await;
    let broker = env.serve().await;
    let mut request = format!("ws://{}/api/openai/v1/realtime", broker.addr)
        .into_client_request()
        .unwrap();
    request
        .headers_mut()
        .insert("authorization", format!("Bearer {token}").parse().unwrap());
    let tcp = tokio::net::TcpStream::connect(broker.addr).await.unwrap();
    let (mut ws, handshake) = tokio_tungstenite::client_async(request, tcp).await.unwrap();
    // The session the upstream opened on the real key stays with the broker.
    assert!(handshake.headers().get("set-cookie").is_none());
    ws.send(Message::text("hello")).await.unwrap();
    let mut seen = Vec::new();
    let mut kinds = Vec::new();
    while let Ok(Some(Ok(message))) = tokio::time::timeout(Duration::from_secs(10), ws.next()).await
    {
        let bytes = match &message {
            Message::Text(t) => t.as_bytes().to_vec(),
            Message::Binary(b) | Message::Ping(b) => b.to_vec(),
            Message::Close(Some(frame)) => frame.reason.as_bytes().to_vec(),
            _ => Vec::new(),
        };
        kinds.push(format!("{message:?}").chars().take(6).collect::<String>());
        seen.extend_from_slice(&bytes);
        seen.push(b'\n');
    }
    assert!(
        kinds.len() >= 3,
        "{kinds:?}: {}",
        String::from_utf8_lossy(&seen)
    );
    assert!(
        found_in(SECRET, &seen).is_empty(),
        "{}",
        String::from_utf8_lossy(&seen)
    );
    broker.stop().await;
    crate::support::assert_never_leaked(&env, SECRET, &seen);
}
