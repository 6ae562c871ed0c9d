//! Request targets that try to leave the provider's base URL or reach another host: all 400,
//! none forwarded anywhere.

use crate::support::Env;
use crate::support::http::raw;
use crate::support::mock::MockUpstream;

#[tokio::test]
async fn escape_attempts_are_refused_and_never_reach_any_upstream() {
    let mock = MockUpstream::start().await;
    let env = Env::with_upstream(&format!("{}/base", mock.url()));
    env.add_secret("k", "openai", "sk-REAL-escape").await;
    let token = env.create_token("k", &[]).await;
    let broker = env.serve().await;
    let auth = format!("authorization: Bearer {token}\r\n");

    let targets = [
        "/api/openai/../github/user",
        "/api/openai/v1/../../x",
        "/api/openai/%2e%2e/x",
        "/api/openai/%2E%2E/%2e%2e/x",
        "/api/openai/.%2e/x",
        "/api/openai/..;/x",
        "/api/openai/v1%2f..%2f..%2fx",
        "/api/openai/v1%5c..%5cx",
        "/api/openai/v1\\..\\x",
        "/api/openai//evil.example/x",
        "/api/openai/v1//x",
        "/api/openai/%252e%252e/x",
        "/api/openai/v1%00",
        "/api/openai/v1/%0d%0ahost:evil",
        "/api/openai/%2e%2e%3fa/x",
        "/api/openai/..%20/x",
        "/api/openai/.../x",
        "/api/openai/%c0%ae%c0%ae/x",
        "/api/openai/%ef%bc%8e%ef%bc%8e/x",
        "http://evil.example/api/openai/v1/models",
        "http://127.0.0.1/api/openai/v1/models",
        "//evil.example/api/openai/v1/models",
    ];
    for target in targets {
        let request =
            format!("GET {target} HTTP/1.1\r\nhost: localhost\r\n{auth}connection: close\r\n\r\n");
        let (status, body) = raw(broker.addr, request.as_bytes()).await;
        assert_eq!(status, 400, "{target} → {status} {body}");
    }

    let odd = [
        format!(
            "CONNECT evil.example:443 HTTP/1.1\r\nhost: evil.example:443\r\n{auth}connection: close\r\n\r\n"
        ),
        format!(
            "TRACE /api/openai/v1/models HTTP/1.1\r\nhost: localhost\r\n{auth}connection: close\r\n\r\n"
        ),
        format!(
            "GET /api/openai/v1/models HTTP/1.1\r\nhost: a.example\r\nhost: b.example\r\n{auth}connection: close\r\n\r\n"
        ),
        format!(
            "GET /api/openai/v1/models HTTP/1.1\r\nhost: user@evil.example\r\n{auth}connection: close\r\n\r\n"
        ),
        format!(
            "GET /api/openai/v1/models HTTP/1.1\r\nhost: evil.example/x\r\n{auth}connection: close\r\n\r\n"
        ),
    ];
    for request in &odd {
        let (status, body) = raw(broker.addr, request.as_bytes()).await;
        assert_eq!(status, 400, "{request:?} → {status} {body}");
    }
    assert!(
        mock.requests().is_empty(),
        "forwarded: {:?}",
        mock.requests()
    );
    assert_eq!(mock.connections(), 0);

    // The same broker does forward a clean request, so the refusals above were about the targets.
    let request = format!(
        "GET /api/openai/v1/models HTTP/1.1\r\nhost: evil.example\r\n{auth}connection: close\r\n\r\n"
    );
    let (status, _) = raw(broker.addr, request.as_bytes()).await;
    assert_eq!(status, 200);
    let seen = mock.requests();
    assert_eq!(seen[0].target, "/base/v1/models");
    assert_eq!(seen[0].header("host"), Some(mock.addr.to_string().as_str()));
    broker.stop().await;
}

#[tokio::test]
async fn refusals_of_a_malformed_request_come_in_the_routed_providers_shape() {
    let mock = MockUpstream::start().await;
    let env = Env::with_upstream(&mock.url());
    let broker = env.serve().await;

    // Refused before any token is looked at, but the path names the provider, whose SDK
    // must be able to parse the refusal.
    let cases = [
        ("TRACE", "/api/anthropic/v1/messages", r#""type":"error""#),
        ("GET", "/api/anthropic/v1/../x", r#""type":"error""#),
        (
            "GET",
            "/api/gemini/v1beta/%2e%2e/x",
            r#""status":"INVALID_ARGUMENT""#,
        ),
        (
            "GET",
            "/api/s3/bucket/..%2fx",
            "<Error><Code>bad_path</Code>",
        ),
        (
            "TRACE",
            "/api/s3/bucket/key",
            "<Error><Code>method_not_allowed</Code>",
        ),
    ];
    for (method, target, shape) in cases {
        let request =
            format!("{method} {target} HTTP/1.1\r\nhost: localhost\r\nconnection: close\r\n\r\n");
        let (status, body) = raw(broker.addr, request.as_bytes()).await;
        assert_eq!(status, 400, "{method} {target} → {status} {body}");
        assert!(body.contains(shape), "{method} {target} → {body}");
    }
    assert!(mock.requests().is_empty());
    broker.stop().await;
}
