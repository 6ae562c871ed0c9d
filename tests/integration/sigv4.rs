//! AWS SigV4 providers: the official boto3 client signs with the key pair the broker minted,
//! the broker checks that signature and re-signs with the real key pair, and a mock S3
//! verifies the result with botocore's own signer and the real key.

use std::process::Stdio;
use std::time::Duration;

use serde_json::Value;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

use crate::support::forms::found_in;
use crate::support::http::{Reply, send};
use crate::support::{Env, python, run_python};

const ACCESS_KEY_ID: &str = "AKIAREALKEY7EXAMPLE0";
pub(crate) const SECRET_ACCESS_KEY: &str = "wJalrXUtnFEMI/K7MDENG+bPxRfiCYREALKEY00";

/// `tests/python/s3_mock.py` running with the real key pair.
pub(crate) struct MockS3 {
    _child: Child,
    url: String,
}

impl MockS3 {
    pub(crate) async fn start() -> MockS3 {
        let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/python/s3_mock.py");
        let mut child = Command::new(python())
            .args([script, ACCESS_KEY_ID, SECRET_ACCESS_KEY, "us-east-1"])
            .stdout(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .expect("start the S3 mock");
        let stdout = child.stdout.take().expect("mock stdout");
        let line = tokio::time::timeout(
            Duration::from_secs(30),
            BufReader::new(stdout).lines().next_line(),
        )
        .await
        .expect("the S3 mock did not start")
        .expect("read mock stdout")
        .expect("the S3 mock exited");
        let port = line.strip_prefix("PORT ").expect("PORT line");
        MockS3 {
            _child: child,
            url: format!("http://127.0.0.1:{port}"),
        }
    }

    async fn stats(&self) -> Value {
        let reply = send("GET", &format!("{}/__stats", self.url), &[], "").await;
        assert_eq!(reply.status, 200);
        reply.json()
    }
}

/// A config with the `s3` provider pointed at the mock.
pub(crate) fn s3_config(mock: &MockS3) -> String {
    format!(
        "[providers.s3]\nbase_url = \"{}\"\n[upstream]\nresponse_timeout = \"10s\"\n",
        mock.url
    )
}

/// A broker whose `s3` provider points at the mock, with the real key pair stored as `aws`
/// and a token for agent `uploader`: (env, access key id, secret access key).
pub(crate) async fn s3_broker(mock: &MockS3) -> (Env, String, String) {
    let env = Env::new(&s3_config(mock));
    let (id, secret) = s3_token(&env).await;
    (env, id, secret)
}

/// The real key pair stored in `env` as `aws`, and a token for agent `uploader`: (access
/// key id, secret access key).
pub(crate) async fn s3_token(env: &Env) -> (String, String) {
    let pair = serde_json::json!({
        "access_key_id": ACCESS_KEY_ID,
        "secret_access_key": SECRET_ACCESS_KEY,
    });
    env.add_secret("aws", "s3", &pair.to_string()).await;
    let out = env
        .cli(
            &["token", "create", "--secret", "aws", "--agent", "uploader"],
            "",
        )
        .await
        .ok();
    let secret = out.stdout.trim().to_owned();
    let id = env.token_id("uploader").await;
    assert!(
        out.stderr.contains(&format!("access key id {id}")),
        "the CLI must say which access key id goes with the token: {}",
        out.stderr
    );
    (id, secret)
}

#[tokio::test]
async fn boto3_works_through_the_broker_and_only_real_signatures_reach_s3() {
    let mock = MockS3::start().await;
    let (env, key_id, token) = s3_broker(&mock).await;
    let broker = env.serve().await;
    let out = run_python("s3_client.py", &[&broker.url(""), &key_id, &token], &[]).await;
    assert!(out.status.success(), "boto3 client failed: {out:?}");
    let results: Value = serde_json::from_str(out.stdout.trim()).expect("client json");

    assert_eq!(results["get"], "hello through the broker");
    assert_eq!(
        results["listed"],
        serde_json::json!(["notes/hello world.txt"])
    );
    assert_eq!(results["multipart_ok"], true);
    assert_eq!(results["managed_ok"], true);
    assert_eq!(results["chunked_status"], 200);
    assert_eq!(results["chunked_ok"], true);
    // Identical calls an SDK signs in the same second share a signature and pass.
    assert_eq!(results["first_send"], 200);
    assert_eq!(results["same_second_copy"], 200);

    let refused = |field: &str, status: u64, code: &str| {
        let entry = &results[field];
        assert_eq!(entry[0], status, "{field}: {entry}");
        assert!(
            entry[1]
                .as_str()
                .unwrap_or("")
                .contains(&format!("<Code>{code}</Code>")),
            "{field} must be an S3-shaped error with code {code}: {entry}"
        );
    };
    refused("replayed", 403, "replayed_signature");
    refused("stale", 403, "request_time_skewed");
    refused("forged_chunk", 403, "signature_mismatch");
    assert_eq!(
        results["wrong_secret"],
        serde_json::json!(["signature_mismatch", 403])
    );

    // The upstream saw only requests signed by the real key, never a seks_ token; the
    // refused ones never reached it, but for the forged upload, whose good first chunk was
    // already on its way: the broker cut that body short.
    let stats = mock.stats().await;
    assert_eq!(stats["bad_signatures"], 0, "{stats}");
    assert_eq!(stats["truncated"], 1, "{stats}");
    assert_eq!(stats["seks_tokens_seen"], 0, "{stats}");
    assert_eq!(stats["chunked_uploads"], 1, "{stats}");
    let forwarded = stats["verified"].as_u64().unwrap();
    assert!(forwarded >= 14, "{stats}");

    // An upstream that echoes the real secret access key gets it masked.
    let leak = results["leak"].as_str().unwrap();
    assert!(leak.starts_with("debug dump: key="), "{leak}");
    assert!(
        found_in(SECRET_ACCESS_KEY, leak.as_bytes()).is_empty(),
        "{leak}"
    );
    broker.stop().await;
    let transcript = env.transcript();
    assert!(
        found_in(SECRET_ACCESS_KEY, transcript.as_bytes()).is_empty(),
        "the real secret key must not appear in the broker's output"
    );
}

/// Request headers, and the status and error code they must get.
type Case<'a> = (&'a [(&'a str, &'a str)], u16, &'static str);

#[tokio::test]
async fn requests_without_a_valid_sigv4_signature_are_refused_before_upstream() {
    let mock = MockS3::start().await;
    let (env, key_id, token) = s3_broker(&mock).await;
    let broker = env.serve().await;
    let url = broker.url("/api/s3/bucket/key");
    let before = mock.stats().await["requests"].as_u64().unwrap();
    let cases: [Case; 5] = [
        (&[], 401, "missing_token"),
        (
            &[("authorization", &format!("Bearer {token}"))],
            400,
            "malformed_signature",
        ),
        (
            &[(
                "authorization",
                "AWS4-HMAC-SHA256 Credential=tok_unknown0000000000/20260101/us-east-1/s3/aws4_request, SignedHeaders=host;x-amz-date, Signature=0000000000000000000000000000000000000000000000000000000000000000",
            )],
            401,
            "unknown_token",
        ),
        (
            &[
                (
                    "authorization",
                    &format!(
                        "AWS4-HMAC-SHA256 Credential={key_id}/20260101/us-east-1/s3/aws4_request, SignedHeaders=host;x-amz-date, Signature={}",
                        "0".repeat(64)
                    ),
                ),
                ("x-amz-date", "20260101T000000Z"),
            ],
            403,
            "signature_mismatch",
        ),
        (
            &[
                (
                    "authorization",
                    &format!(
                        "AWS4-HMAC-SHA256 Credential={key_id}/20260101/us-east-1/s3/aws4_request, SignedHeaders=host, Signature={}",
                        "0".repeat(64)
                    ),
                ),
                ("x-amz-date", "20260101T000000Z"),
            ],
            400,
            "malformed_signature",
        ),
    ];
    for (headers, status, code) in cases {
        let reply = send("GET", &url, headers, "").await;
        assert_eq!(reply.status, status, "{headers:?}: {}", reply.body);
        assert_eq!(reply.header("x-seks-error"), Some(code), "{}", reply.body);
        assert!(
            reply.body.contains(&format!("<Code>{code}</Code>")),
            "{}",
            reply.body
        );
    }
    assert_eq!(mock.stats().await["requests"].as_u64().unwrap(), before + 1);
    broker.stop().await;
}

/// Headers for `method url` signed as an SDK signs them with the agent's key pair:
/// `extra` and the payload hash of `body` (or the payload mode `extra` gives in
/// `x-amz-content-sha256`) among the signed headers.
pub(crate) fn agent_signed(
    method: &str,
    url: &str,
    key_id: &str,
    token: &str,
    extra: &[(&str, &str)],
    body: &[u8],
) -> Vec<(String, String)> {
    use seks::sigv4::{self, Authorization, RequestParts, Scope, SigningKey};
    let uri: http::Uri = url.parse().expect("url");
    let amz_date = sigv4::format_amz_date(seks::clock::now());
    let body_hash = sigv4::sha256_hex(body);
    let mut headers = http::HeaderMap::new();
    let host = uri.authority().expect("authority").as_str();
    for (name, value) in [
        ("host", host),
        (sigv4::DATE_HEADER, &amz_date),
        (sigv4::CONTENT_SHA256_HEADER, &body_hash),
    ]
    .into_iter()
    .chain(extra.iter().copied())
    {
        headers.insert(
            http::HeaderName::from_bytes(name.as_bytes()).unwrap(),
            value.parse().unwrap(),
        );
    }
    let payload_hash = headers[sigv4::CONTENT_SHA256_HEADER]
        .to_str()
        .unwrap()
        .to_owned();
    let mut signed: Vec<String> = headers.keys().map(|k| k.as_str().to_owned()).collect();
    signed.sort();
    let scope = Scope {
        date: amz_date[..8].to_owned(),
        region: "us-east-1".to_owned(),
        service: "s3".to_owned(),
    };
    let canonical = RequestParts {
        method,
        path: uri.path(),
        query: uri.query(),
        headers: &headers,
        payload_hash: &payload_hash,
    }
    .canonical(&signed, "s3")
    .unwrap();
    let key = SigningKey::new(&token.to_owned().into(), &scope);
    let authorization = Authorization {
        access_key_id: key_id.to_owned(),
        signature: key.sign(&sigv4::string_to_sign(&amz_date, &scope, &canonical)),
        scope,
        signed_headers: signed,
    };
    let mut out: Vec<(String, String)> = headers
        .iter()
        .map(|(k, v)| (k.as_str().to_owned(), v.to_str().unwrap().to_owned()))
        .collect();
    out.push(("authorization".to_owned(), authorization.render()));
    out
}

#[tokio::test]
async fn sigv4_signed_headers_named_in_connection_are_refused_not_stripped_and_resigned() {
    let mock = MockS3::start().await;
    let (env, key_id, token) = s3_broker(&mock).await;
    let broker = env.serve().await;
    let url = broker.url("/api/s3/bucket/guarded");
    let before = mock.stats().await["requests"].as_u64().unwrap();
    // The agent's upload may only create the object, and only encrypted.
    let conditions = [
        ("if-none-match", "*"),
        ("x-amz-server-side-encryption", "AES256"),
    ];
    let signed = agent_signed("PUT", &url, &key_id, &token, &conditions, b"data");
    // Someone on the way adds an unsigned Connection header naming them: the broker would
    // drop them as hop-by-hop and sign the rest with the real key.
    let mut tampered = signed.clone();
    tampered.push((
        "connection".to_owned(),
        "if-none-match, X-Amz-Server-Side-Encryption".to_owned(),
    ));
    let pairs: Vec<(&str, &str)> = tampered
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect();
    let reply = send("PUT", &url, &pairs, "data").await;
    assert_malformed(&reply, "Connection");
    assert_eq!(
        mock.stats().await["requests"].as_u64().unwrap(),
        before + 1,
        "the stripped request must not reach the upstream"
    );

    // Untouched, the same signed request goes through, its conditions signed by the real key.
    let pairs: Vec<(&str, &str)> = signed
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect();
    let reply = send("PUT", &url, &pairs, "data").await;
    assert_eq!(reply.status, 200, "{}", reply.body);
    let stats = mock.stats().await;
    assert_eq!(stats["bad_signatures"], 0, "{stats}");
    broker.stop().await;
}

/// `pairs` as the `&str` pairs `send` takes.
/// Panic unless `reply` is the 400 `malformed_signature` in S3's XML, naming `about`.
fn assert_malformed(reply: &Reply, about: &str) {
    assert_eq!(reply.status, 400, "{}", reply.body);
    assert_eq!(reply.header("x-seks-error"), Some("malformed_signature"));
    assert!(
        reply.body.contains("<Code>malformed_signature</Code>") && reply.body.contains(about),
        "{}",
        reply.body
    );
}

fn as_pairs(pairs: &[(String, String)]) -> Vec<(&str, &str)> {
    pairs
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect()
}

#[tokio::test]
async fn sigv4_unsigned_amz_headers_are_refused_not_forwarded_under_the_real_signature() {
    let mock = MockS3::start().await;
    let (env, key_id, token) = s3_broker(&mock).await;
    let broker = env.serve().await;
    let url = broker.url("/api/s3/bucket/private");
    let before = mock.stats().await["requests"].as_u64().unwrap();
    let signed = agent_signed("PUT", &url, &key_id, &token, &[], b"data");
    // Someone on the way makes the upload public: S3 acts on every x-amz-* header, and the
    // broker's signature with the real key would carry it.
    for added in ["x-amz-acl", "X-Amz-Grant-Read"] {
        let mut tampered = signed.clone();
        tampered.push((added.to_owned(), "public-read".to_owned()));
        let reply = send("PUT", &url, &as_pairs(&tampered), "data").await;
        assert_malformed(&reply, "x-amz-");
    }
    assert_eq!(
        mock.stats().await["requests"].as_u64().unwrap(),
        before + 1,
        "an unsigned x-amz-* header must not reach the upstream"
    );

    // Signed, the same header goes through; `x-amzn-trace-id`, which SDKs leave unsigned, is
    // not an x-amz-* header.
    let acl = [("x-amz-acl", "public-read")];
    let mut traced = agent_signed("PUT", &url, &key_id, &token, &acl, b"data");
    traced.push(("x-amzn-trace-id".to_owned(), "Root=1-abc".to_owned()));
    let reply = send("PUT", &url, &as_pairs(&traced), "data").await;
    assert_eq!(reply.status, 200, "{}", reply.body);
    assert_eq!(mock.stats().await["bad_signatures"], 0);
    broker.stop().await;
}

/// An `aws-chunked` body of `chunks` (the final empty one added), each signed on the chain
/// that starts at the signature in `signed`'s Authorization header, made with `token`.
fn agent_chunks(signed: &[(String, String)], token: &str, chunks: &[&[u8]]) -> Vec<u8> {
    use seks::sigv4::chunked::ChunkChain;
    use seks::sigv4::{Authorization, DATE_HEADER, SigningKey};
    let header = |name: &str| {
        signed
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
            .expect(name)
    };
    let auth = Authorization::parse(header("authorization")).unwrap();
    let key = SigningKey::new(&token.to_owned().into(), &auth.scope);
    let mut chain = ChunkChain::new(key, header(DATE_HEADER), auth.scope, auth.signature);
    let mut body = Vec::new();
    for data in chunks.iter().copied().chain([&b""[..]]) {
        let signature = seks::tokens::hex(&chain.sign_next(data));
        body.extend_from_slice(
            format!("{:x};chunk-signature={signature}\r\n", data.len()).as_bytes(),
        );
        body.extend_from_slice(data);
        body.extend_from_slice(b"\r\n");
    }
    body
}

#[tokio::test]
async fn sigv4_chunked_bodies_must_carry_their_signed_decoded_length() {
    let mock = MockS3::start().await;
    let (env, key_id, token) = s3_broker(&mock).await;
    let broker = env.serve().await;
    let url = broker.url("/api/s3/bucket/chunked");
    let verified = mock.stats().await["verified"].as_u64().unwrap();
    let data: [&[u8]; 2] = [b"hello ", b"world"];
    // Signed declared lengths shorter and longer than the 11 bytes the chunks carry, and none.
    for declared in [Some("6"), Some("12"), None] {
        let mut extra = vec![
            ("x-amz-content-sha256", seks::sigv4::STREAMING_PAYLOAD),
            ("content-encoding", "aws-chunked"),
        ];
        extra.extend(declared.map(|d| ("x-amz-decoded-content-length", d)));
        let signed = agent_signed("PUT", &url, &key_id, &token, &extra, b"");
        let body = agent_chunks(&signed, &token, &data);
        let reply = send("PUT", &url, &as_pairs(&signed), body).await;
        assert_eq!(reply.status, 400, "{declared:?}: {}", reply.body);
        assert_eq!(reply.header("x-seks-error"), Some("malformed_signature"));
        assert!(
            reply.body.contains("x-amz-decoded-content-length"),
            "{}",
            reply.body
        );
    }
    assert_eq!(
        mock.stats().await["verified"].as_u64().unwrap(),
        verified,
        "no body at odds with its declared length may reach S3 complete"
    );

    // Told truly, the same upload goes through.
    let extra = [
        ("x-amz-content-sha256", seks::sigv4::STREAMING_PAYLOAD),
        ("content-encoding", "aws-chunked"),
        ("x-amz-decoded-content-length", "11"),
    ];
    let signed = agent_signed("PUT", &url, &key_id, &token, &extra, b"");
    let body = agent_chunks(&signed, &token, &data);
    let reply = send("PUT", &url, &as_pairs(&signed), body).await;
    assert_eq!(reply.status, 200, "{}", reply.body);
    assert_eq!(
        mock.stats().await["verified"].as_u64().unwrap(),
        verified + 1
    );
    broker.stop().await;
}

#[tokio::test]
async fn an_s3_copy_source_is_judged_by_the_policy_as_a_read_of_its_object() {
    let mock = MockS3::start().await;
    let (env, _, _) = s3_broker(&mock).await;
    // An agent confined to bucket-a: CopyObject must not read bucket-b's objects into it.
    let token = env
        .create_token(
            "aws",
            &[
                "--agent",
                "copier",
                "--allow",
                "PUT /bucket-a/**",
                "--allow",
                "GET /bucket-a/**",
            ],
        )
        .await;
    let key_id = env.token_id("copier").await;
    let broker = env.serve().await;
    let url = broker.url("/api/s3/bucket-a/copy");
    let copy = |source: &str| {
        let signed = agent_signed(
            "PUT",
            &url,
            &key_id,
            &token,
            &[("x-amz-copy-source", source)],
            b"",
        );
        let url = url.clone();
        async move { send("PUT", &url, &as_pairs(&signed), "").await }
    };
    let before = mock.stats().await["requests"].as_u64().unwrap();
    for (source, status, code) in [
        ("/bucket-b/payroll.csv", 403, "policy_denied"),
        ("bucket-b/payroll.csv?versionId=3", 403, "policy_denied"),
        ("bucket-a/../bucket-b/payroll.csv", 400, "bad_path"),
        (
            "arn:aws:s3:us-east-1:123456789012:accesspoint/ap/object/payroll.csv",
            400,
            "bad_path",
        ),
    ] {
        let reply = copy(source).await;
        assert_eq!(
            (reply.status, reply.header("x-seks-error")),
            (status, Some(code)),
            "{source}: {}",
            reply.body
        );
    }
    assert_eq!(
        mock.stats().await["requests"].as_u64().unwrap(),
        before + 1,
        "a refused copy reached the upstream"
    );
    let within = copy("bucket-a/report.csv?versionId=3").await;
    assert_eq!(within.status, 200, "{}", within.body);
    assert_eq!(mock.stats().await["bad_signatures"], 0);

    // A copy held for approval because of what it reads shows the operator what that is.
    let asking = env
        .create_token(
            "aws",
            &[
                "--agent",
                "asking",
                "--allow",
                "PUT /bucket-a/**",
                "--allow",
                "GET /bucket-*/**",
                "--require-approval",
                "GET /bucket-b/**",
            ],
        )
        .await;
    let asking_id = env.token_id("asking").await;
    let signed = agent_signed(
        "PUT",
        &url,
        &asking_id,
        &asking,
        &[("x-amz-copy-source", "bucket-b/payroll.csv")],
        b"",
    );
    let held = tokio::spawn({
        let url = url.clone();
        async move { send("PUT", &url, &as_pairs(&signed), "").await }
    });
    let pending = crate::capabilities::pending_approval(&env).await;
    assert_eq!(
        pending["request"]["path"], "/bucket-a/copy, reading /bucket-b/payroll.csv",
        "{pending}"
    );
    let id = pending["id"].as_str().unwrap();
    env.cli(&["approvals", "deny", id], "").await.ok();
    let denied = held.await.unwrap();
    assert_eq!(
        (denied.status, denied.header("x-seks-error")),
        (403, Some("approval_denied")),
        "{}",
        denied.body
    );
    broker.stop().await;
}
