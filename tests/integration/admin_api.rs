//! The admin API as the operator's interface, over real sockets: every endpoint group end to
//! end, its authentication, its OpenAPI document, and the CLI acting through it (`--remote`).

use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::support::http::{Reply, send, try_send};
use crate::support::mock::MockUpstream;
use crate::support::{Broker, Env, run_python};

const KEY: &str = "sk-proj-ADMIN-real-key-0123456789";
const KEY2: &str = "sk-proj-ADMIN-rotated-key-9876543210";

/// A broker on a mock upstream with its admin API; returns the admin token too.
async fn setup() -> (MockUpstream, Env, Broker, String) {
    let mock = MockUpstream::start().await;
    let env = Env::with_upstream(&mock.url());
    let admin_token = env.admin_token().await;
    assert!(admin_token.starts_with("seks_admin_"), "{admin_token}");
    let broker = env.serve().await;
    (mock, env, broker, admin_token)
}

/// The admin API at `base`, called with `token`.
struct Admin {
    base: String,
    bearer: String,
}

impl Admin {
    async fn new(broker: &Broker, token: &str) -> Admin {
        Admin {
            base: broker.admin_url().await,
            bearer: format!("Bearer {token}"),
        }
    }

    async fn call(&self, method: &str, path: &str, body: Option<Value>) -> Reply {
        let url = format!("{}{path}", self.base);
        let mut headers = vec![("authorization", self.bearer.as_str())];
        let body = match body {
            Some(b) => {
                headers.push(("content-type", "application/json"));
                b.to_string()
            }
            None => String::new(),
        };
        send(method, &url, &headers, body).await
    }

    /// Call and expect `status`; returns the JSON answer (`null` when empty).
    async fn expect(&self, status: u16, method: &str, path: &str, body: Option<Value>) -> Value {
        let reply = self.call(method, path, body).await;
        assert_eq!(reply.status, status, "{method} {path}: {reply:?}");
        if reply.body.is_empty() {
            Value::Null
        } else {
            reply.json()
        }
    }
}

/// Ask the agent listener for a chat completion with `token`; the status, or 0 when the
/// response was cut off (as one is when its token is revoked while it streams).
async fn chat(broker: &Broker, token: &str) -> u16 {
    try_send(
        "POST",
        &broker.url("/api/openai/v1/chat/completions"),
        &[
            ("authorization", &format!("Bearer {token}")),
            ("content-type", "application/json"),
        ],
        r#"{"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]}"#,
    )
    .await
    .map_or(0, |reply| reply.status)
}

/// Poll `$check` until it holds, for up to 15 s.
macro_rules! eventually {
    ($what:expr, $check:expr) => {{
        let start = Instant::now();
        while !$check {
            assert!(
                start.elapsed() < Duration::from_secs(10),
                "never: {}",
                $what
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }};
}

#[tokio::test]
async fn secrets_tokens_policies_and_usage_work_through_the_admin_api() {
    let (mock, env, broker, admin_token) = setup().await;
    let api = Admin::new(&broker, &admin_token).await;

    // Secrets: add, refusals, list without values.
    let added = api
        .expect(
            201,
            "POST",
            "/admin/v1/secrets",
            Some(json!({"name": "main", "provider": "openai", "value": KEY})),
        )
        .await;
    assert_eq!(
        (added["name"].as_str(), added["version"].as_i64()),
        (Some("main"), Some(1))
    );
    let dup = api
        .call(
            "POST",
            "/admin/v1/secrets",
            Some(json!({"name": "main", "provider": "openai", "value": KEY})),
        )
        .await;
    assert_eq!(
        (dup.status, dup.json()["error"]["code"].as_str()),
        (409, Some("conflict"))
    );
    for (body, why) in [
        (
            json!({"name": "short", "provider": "openai", "value": "abc"}),
            "shorter than",
        ),
        (
            json!({"name": "x", "provider": "nope", "value": KEY}),
            "unknown provider",
        ),
        (
            json!({"name": "bad name", "provider": "openai", "value": KEY}),
            "secret names",
        ),
    ] {
        let refused = api.call("POST", "/admin/v1/secrets", Some(body)).await;
        assert_eq!(refused.status, 400, "{refused:?}");
        assert!(
            refused.json()["error"]["message"]
                .as_str()
                .unwrap()
                .contains(why),
            "{refused:?}"
        );
    }
    // A malformed body is refused without quoting what it held.
    let malformed = api
        .call(
            "POST",
            "/admin/v1/secrets",
            Some(json!({"name": "n", "provider": "openai", "value": 918_273_645_501_i64})),
        )
        .await;
    assert_eq!(malformed.status, 400);
    assert!(!malformed.body.contains("918273645501"), "{malformed:?}");
    let too_big = api
        .call(
            "POST",
            "/admin/v1/secrets",
            Some(json!({"name": "big", "provider": "openai", "value": "k".repeat(2 << 20)})),
        )
        .await;
    assert_eq!(
        (too_big.status, too_big.json()["error"]["code"].as_str()),
        (413, Some("body_too_large"))
    );
    let secrets = api.call("GET", "/admin/v1/secrets", None).await;
    assert_eq!(secrets.status, 200);
    assert_eq!(secrets.json().as_array().unwrap().len(), 1);

    // Named policies: set (shareable only), show, list.
    api.expect(
        200,
        "PUT",
        "/admin/v1/policies/chat-only",
        Some(json!({"allow": ["POST /v1/chat/completions"], "daily_requests": 100})),
    )
    .await;
    let with_ttl = api
        .call(
            "PUT",
            "/admin/v1/policies/short-lived",
            Some(json!({"ttl": "1h"})),
        )
        .await;
    assert_eq!(with_ttl.status, 400, "{with_ttl:?}");
    let bad_rule = api
        .call(
            "PUT",
            "/admin/v1/policies/bad",
            Some(json!({"allow": ["FETCH"]})),
        )
        .await;
    assert_eq!(bad_rule.status, 400, "{bad_rule:?}");
    let shown = api
        .expect(200, "GET", "/admin/v1/policies/chat-only", None)
        .await;
    assert_eq!(shown["policy"]["daily_requests"], 100);
    let listed = api.expect(200, "GET", "/admin/v1/policies", None).await;
    assert_eq!(listed.as_array().unwrap().len(), 1);
    api.expect(404, "GET", "/admin/v1/policies/nope", None)
        .await;

    // Tokens: create (text once), use it, list/show without the text.
    let minted = api
        .expect(
            201,
            "POST",
            "/admin/v1/tokens",
            Some(json!({"secret": "main", "agent": "api-bot", "policy_name": "chat-only"})),
        )
        .await;
    let token = minted["token"].as_str().unwrap().to_owned();
    let id = minted["id"].as_str().unwrap().to_owned();
    assert!(token.starts_with("seks_openai_"), "{minted}");
    // A named policy reaches the broker's cache within a second of being set.
    eventually!("the new token works", chat(&broker, &token).await == 200);
    assert_eq!(
        mock.requests().last().unwrap().header("authorization"),
        Some(format!("Bearer {KEY}").as_str())
    );
    let all = api.call("GET", "/admin/v1/tokens", None).await;
    assert!(!all.body.contains(&token), "a listing never holds a token");
    assert_eq!(all.json()[0]["id"], id.as_str());
    let detail = api
        .expect(200, "GET", &format!("/admin/v1/tokens/{id}"), None)
        .await;
    assert_eq!(detail["token"]["policy_name"], "chat-only");
    assert_eq!(detail["named_policy"]["daily_requests"], 100);
    api.expect(404, "GET", "/admin/v1/tokens/tok_nope", None)
        .await;
    api.expect(
        404,
        "POST",
        "/admin/v1/tokens",
        Some(json!({"secret": "nope"})),
    )
    .await;

    // Update: an empty update is refused; a new policy reaches the broker within a second.
    api.expect(
        400,
        "PATCH",
        &format!("/admin/v1/tokens/{id}"),
        Some(json!({})),
    )
    .await;
    let updated = api
        .expect(
            200,
            "PATCH",
            &format!("/admin/v1/tokens/{id}"),
            Some(json!({"policy": {"deny": ["* /v1/chat/**"]}})),
        )
        .await;
    assert_eq!(updated["policy"]["deny"][0], "* /v1/chat/**");
    eventually!("the new policy refuses chat", {
        chat(&broker, &token).await == 403
    });
    api.expect(
        200,
        "PATCH",
        &format!("/admin/v1/tokens/{id}"),
        Some(json!({"policy": {"daily_requests": 100}})),
    )
    .await;
    eventually!("the relaxed policy lets chat through", {
        chat(&broker, &token).await == 200
    });

    // Derive a child; a named policy in use can't be removed.
    let child = api
        .expect(
            201,
            "POST",
            &format!("/admin/v1/tokens/{id}/derive"),
            Some(json!({"agent": "sub-bot", "policy": {"ttl": "10m"}})),
        )
        .await;
    assert_eq!(child["parent_id"], id.as_str());
    assert!(child["expires_at"].is_string());
    api.expect(409, "DELETE", "/admin/v1/policies/chat-only", None)
        .await;

    // Usage: the broker flushes its counters every few seconds.
    api.expect(400, "GET", "/admin/v1/usage?days=0", None).await;
    let usage_path = format!("/admin/v1/usage?days=2&token={id}");
    eventually!("usage reaches the store", {
        let report = api.expect(200, "GET", &usage_path, None).await;
        report["tokens"][0]["requests"].as_u64().unwrap_or(0) >= 2
            && report["agents"][0]["agent"] == "api-bot"
    });

    // Rotate: the token keeps working with the new value.
    let rotated = api
        .expect(
            200,
            "POST",
            "/admin/v1/secrets/main/rotate",
            Some(json!({"value": KEY2})),
        )
        .await;
    assert_eq!(rotated["version"], 2);
    eventually!("the rotated key is injected", {
        chat(&broker, &token).await == 200
            && mock.requests().last().unwrap().header("authorization")
                == Some(format!("Bearer {KEY2}").as_str())
    });

    // Revoke parent and child; the broker refuses the token within a second.
    let revoked = api
        .expect(200, "POST", &format!("/admin/v1/tokens/{id}/revoke"), None)
        .await;
    assert_eq!(revoked["revoked"], 2);
    api.expect(404, "POST", &format!("/admin/v1/tokens/{id}/revoke"), None)
        .await;
    eventually!("the revoked token is refused", {
        chat(&broker, &token).await == 401
    });

    // Remove the policy (no active token follows it) and the secret with its tokens.
    api.expect(204, "DELETE", "/admin/v1/policies/chat-only", None)
        .await;
    let removed = api
        .expect(200, "DELETE", "/admin/v1/secrets/main", None)
        .await;
    // The child goes by cascade, which SQLite leaves out of the count.
    assert!(removed["tokens_removed"].as_u64() >= Some(1), "{removed}");
    let left = api.expect(200, "GET", "/admin/v1/tokens", None).await;
    assert_eq!(left, json!([]));
    api.expect(404, "DELETE", "/admin/v1/secrets/main", None)
        .await;

    let transcript = env.transcript();
    assert!(
        !transcript.contains(KEY) && !transcript.contains(KEY2),
        "{transcript}"
    );
    broker.stop().await;
}

#[tokio::test]
async fn the_admin_api_refuses_missing_wrong_revoked_and_agent_tokens() {
    let (_mock, env, broker, admin_token) = setup().await;
    env.add_secret("main", "openai", KEY).await;
    let agent_token = env.create_token("main", &[]).await;
    let admin = broker.admin_url().await;
    let url = format!("{admin}/admin/v1/tokens");
    // The code is in the body and, as on every answer the broker makes itself, in the marker.
    let code = |reply: &Reply| {
        let code = reply.json()["error"]["code"].as_str().map(str::to_owned);
        assert_eq!(code.as_deref(), reply.header("x-seks-error"), "{reply:?}");
        code
    };

    let none = send("GET", &url, &[], "").await;
    assert_eq!(
        (none.status, code(&none).as_deref()),
        (401, Some("missing_token"))
    );
    let wrong = format!("Bearer {admin_token}x");
    let refused = send("GET", &url, &[("authorization", &wrong)], "").await;
    assert_eq!(
        (refused.status, code(&refused).as_deref()),
        (401, Some("wrong_token"))
    );
    let agent = format!("Bearer {agent_token}");
    let refused = send("GET", &url, &[("authorization", &agent)], "").await;
    assert_eq!(
        (refused.status, code(&refused).as_deref()),
        (401, Some("agent_token"))
    );
    // The agent listener never serves the admin API, even with the admin token.
    let bearer = format!("Bearer {admin_token}");
    let on_agent = send(
        "GET",
        &broker.url("/admin/v1/tokens"),
        &[("authorization", &bearer)],
        "",
    )
    .await;
    assert_eq!(on_agent.status, 404, "{on_agent:?}");
    assert_eq!(
        send("GET", &url, &[("authorization", &bearer)], "")
            .await
            .status,
        200
    );

    env.cli(&["admin", "token", "revoke"], "").await.ok();
    let revoked = send("GET", &url, &[("authorization", &bearer)], "").await;
    assert_eq!(
        (revoked.status, code(&revoked).as_deref()),
        (401, Some("no_admin_token"))
    );
    broker.stop().await;
}

#[tokio::test]
async fn the_openapi_document_validates_and_every_path_it_lists_is_served() {
    let (_mock, env, broker, admin_token) = setup().await;
    let admin = broker.admin_url().await;
    let reply = send("GET", &format!("{admin}/openapi.json"), &[], "").await;
    assert_eq!(reply.status, 200, "served without the admin token");
    let file = env.data_dir().join("openapi.json");
    std::fs::write(&file, &reply.body).unwrap();
    let checked = run_python("openapi_check.py", &[file.to_str().unwrap()], &[]).await;
    assert!(checked.status.success(), "{checked:#?}");

    // A broken document fails the same check, so the check can fail.
    let mut broken = reply.json();
    broken["paths"]["/admin/v1/tokens"]["get"]["responses"] = json!("none");
    std::fs::write(&file, broken.to_string()).unwrap();
    let failed = run_python("openapi_check.py", &[file.to_str().unwrap()], &[]).await;
    assert!(!failed.status.success(), "{failed:#?}");

    let api = Admin::new(&broker, &admin_token).await;
    let document = reply.json();
    let paths = document["paths"].as_object().unwrap();
    assert!(paths.len() >= 14, "{paths:?}");
    for (path, operations) in paths {
        let concrete = path.replace("{name}", "nope").replace("{id}", "nope");
        for method in operations.as_object().unwrap().keys() {
            let method = method.to_uppercase();
            let body = operations[method.to_lowercase()]
                .get("requestBody")
                .map(|_| json!({}));
            let answer = api.call(&method, &concrete, body).await;
            let unserved = answer.status == 405
                || (answer.status == 404 && answer.json()["error"]["code"] == "no_endpoint");
            assert!(
                !unserved,
                "{method} {path} is documented but not served: {answer:?}"
            );
        }
    }
    broker.stop().await;
}

#[tokio::test]
async fn the_cli_acts_on_a_running_broker_with_remote() {
    let (mock, env, broker, admin_token) = setup().await;
    let admin = broker.admin_url().await;
    // Another machine: an empty data directory, so everything must go through the API.
    let elsewhere = Env::new("");
    let remote_env = [("SEKS_ADMIN_TOKEN", admin_token.as_str())];
    let remote = |args: &[&str]| {
        let mut all = vec!["--remote", admin.as_str()];
        all.extend_from_slice(args);
        all.iter().map(|s| (*s).to_owned()).collect::<Vec<_>>()
    };
    let run = |args: Vec<String>, stdin: &'static str| {
        let elsewhere = &elsewhere;
        async move {
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            elsewhere.cli_with_env(&args, stdin, &remote_env).await
        }
    };

    run(
        remote(&["secret", "add", "main", "--provider", "openai"]),
        KEY,
    )
    .await
    .ok();
    let secrets = run(remote(&["secret", "list", "--json"]), "").await.ok();
    assert!(
        secrets.stdout.contains("\"main\"") && !secrets.stdout.contains(KEY),
        "{secrets:?}"
    );
    let policy = elsewhere.data_dir().join("chat.toml");
    std::fs::write(&policy, "allow = [\"POST /v1/chat/completions\"]\n").unwrap();
    run(
        remote(&["policy", "set", "chat", policy.to_str().unwrap()]),
        "",
    )
    .await
    .ok();
    let shown = run(remote(&["policy", "show", "chat"]), "").await.ok();
    assert!(
        shown.stdout.contains("POST /v1/chat/completions"),
        "{shown:?}"
    );

    let created = run(
        remote(&[
            "token",
            "create",
            "--secret",
            "main",
            "--agent",
            "remote-bot",
            "--policy-name",
            "chat",
        ]),
        "",
    )
    .await
    .ok();
    let token = created.stdout.trim().to_owned();
    assert!(token.starts_with("seks_openai_"), "{created:?}");
    assert_eq!(
        created.stdout,
        format!("{token}\n"),
        "stdout holds only the token"
    );
    // A named policy reaches the broker's cache within a second of being set.
    eventually!("the new token works", chat(&broker, &token).await == 200);
    let seen = mock.requests();
    assert_eq!(seen.len(), 1);
    assert_eq!(
        seen[0].header("authorization"),
        Some(format!("Bearer {KEY}").as_str())
    );

    // The same tables and JSON as locally: the local CLI on the broker's store agrees.
    let remote_list = run(remote(&["token", "list", "--json"]), "").await.ok();
    let local_list = env.cli(&["token", "list", "--json"], "").await.ok();
    let ids = |text: &str| -> Vec<String> {
        let rows: Value = serde_json::from_str(text).unwrap();
        rows.as_array()
            .unwrap()
            .iter()
            .map(|r| r["id"].as_str().unwrap().to_owned())
            .collect()
    };
    assert_eq!(ids(&remote_list.stdout), ids(&local_list.stdout));
    let table = run(remote(&["token", "list"]), "").await.ok();
    assert!(
        table.stdout.contains("remote-bot") && table.stdout.contains("chat"),
        "{table:?}"
    );
    run(remote(&["approvals", "list"]), "").await.ok();
    let missing = run(remote(&["approvals", "show", "apr_missing"]), "").await;
    assert!(
        !missing.status.success() && missing.stderr.contains("no approval with id `apr_missing`"),
        "{missing:?}"
    );
    run(remote(&["usage", "--json"]), "").await.ok();

    // The audit log, read and verified remotely, matches the broker's own.
    let audited = run(
        remote(&["audit", "query", "--agent", "remote-bot", "--json"]),
        "",
    )
    .await
    .ok();
    let records: Vec<Value> = audited
        .stdout
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert!(!records.is_empty(), "{audited:?}");
    assert!(
        records
            .iter()
            .all(|r| r["agent"] == "remote-bot" && r["hash"].is_string())
    );
    let local = env
        .cli(&["audit", "query", "--agent", "remote-bot", "--json"], "")
        .await
        .ok();
    assert_eq!(audited.stdout, local.stdout);
    let verified = run(remote(&["audit", "verify"]), "").await.ok();
    assert!(verified.stdout.contains("chain intact"), "{verified:?}");
    let bad = run(remote(&["audit", "query", "--status", "6xx"]), "").await;
    assert!(
        !bad.status.success() && bad.stderr.contains("use a status"),
        "{bad:?}"
    );

    // Errors come back as the API's message; local-only commands refuse --remote.
    let missing = run(remote(&["token", "show", "tok_nope"]), "").await;
    assert!(
        !missing.status.success() && missing.stderr.contains("no token with id"),
        "{missing:?}"
    );
    let id = env.token_id("remote-bot").await;
    let revoked = run(remote(&["token", "revoke", &id]), "").await.ok();
    assert!(revoked.stderr.contains("revoked token"), "{revoked:?}");
    let serve = run(remote(&["serve"]), "").await;
    assert!(
        !serve.status.success() && serve.stderr.contains("this machine only"),
        "{serve:?}"
    );
    let args = ["--remote", admin.as_str(), "secret", "list"];
    let no_token = elsewhere.cli(&args, "").await;
    assert!(
        !no_token.status.success() && no_token.stderr.contains("SEKS_ADMIN_TOKEN"),
        "{no_token:?}"
    );
    assert!(!env.transcript().contains(KEY) && !elsewhere.transcript().contains(KEY));
    broker.stop().await;
}

#[tokio::test]
async fn the_admin_listener_can_be_turned_off_and_a_taken_port_fails_startup() {
    let env = Env::new("");
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    let out = tokio::time::timeout(
        Duration::from_secs(20),
        env.cli(
            &["serve", "--listen", "127.0.0.1:0", "--admin-listen", &addr],
            "",
        ),
    )
    .await
    .expect("a broker whose admin port is taken must exit");
    assert!(!out.status.success(), "{out:?}");
    assert!(
        out.stderr
            .contains(&format!("binding the admin API on {addr}")),
        "{out:?}"
    );

    let off = Env::new("admin_listen = \"off\"\n");
    let broker = off.serve_with(&[("SEKS_ADMIN_LISTEN", "off")]).await;
    assert_eq!(
        send("GET", &broker.url("/healthz"), &[], "").await.status,
        200
    );
    assert!(
        !off.transcript().contains("admin API on"),
        "{}",
        off.transcript()
    );
    broker.stop().await;

    // Off loopback, the operator is warned that what the admin API is sent travels in clear.
    for (listen, warned) in [("0.0.0.0:0", true), ("127.0.0.1:0", false)] {
        let env = Env::new("");
        let broker = env.serve_with(&[("SEKS_ADMIN_LISTEN", listen)]).await;
        broker.admin_url().await;
        // Logged just after the address: give the transcript a moment to catch up.
        let mut seen = false;
        for _ in 0..20 {
            seen = env.transcript().contains("over plain HTTP");
            if seen {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        assert_eq!(seen, warned, "{listen}: {}", env.transcript());
        broker.stop().await;
    }
}

/// This machine's address on its network (not loopback), or `localhost` (a name, not a
/// loopback address) when it has none.
fn network_host() -> String {
    let socket = std::net::UdpSocket::bind("0.0.0.0:0").expect("udp socket");
    // Connecting a UDP socket sends nothing; it only picks the outgoing address.
    match socket
        .connect("192.0.2.1:9")
        .and_then(|()| socket.local_addr())
    {
        Ok(addr) if !addr.ip().is_loopback() && !addr.ip().is_unspecified() => {
            addr.ip().to_string()
        }
        _ => "localhost".to_owned(),
    }
}

#[tokio::test]
async fn the_cli_sends_no_secret_to_a_remote_broker_over_plain_http_off_loopback() {
    use tokio::io::AsyncReadExt;
    let listener = tokio::net::TcpListener::bind("0.0.0.0:0").await.unwrap();
    let url = format!(
        "http://{}:{}",
        network_host(),
        listener.local_addr().unwrap().port()
    );
    // Whatever reaches "the broker" travelled the network in clear text.
    let (done, cli_done) = tokio::sync::oneshot::channel::<()>();
    let received = tokio::spawn(async move {
        let mut seen = Vec::new();
        let accepted = tokio::select! {
            biased;
            accepted = listener.accept() => accepted.ok(),
            _ = cli_done => None,
        };
        if let Some((mut conn, _)) = accepted {
            let mut buf = [0u8; 4096];
            while let Ok(Ok(n)) =
                tokio::time::timeout(Duration::from_secs(2), conn.read(&mut buf)).await
            {
                if n == 0 {
                    break;
                }
                seen.extend_from_slice(&buf[..n]);
            }
        }
        String::from_utf8_lossy(&seen).into_owned()
    });
    let admin_token = "seks_admin_0123456789abcdefghijklmnopqrstuvwxyzABCD";
    let out = Env::new("")
        .cli_with_env(
            &[
                "--remote",
                &url,
                "secret",
                "add",
                "main",
                "--provider",
                "openai",
            ],
            KEY,
            &[("SEKS_ADMIN_TOKEN", admin_token)],
        )
        .await;
    let _ = done.send(());
    let received = received.await.unwrap();
    assert!(!received.contains(KEY), "the key went out in clear text");
    assert!(
        !received.contains(admin_token),
        "the admin token went out in clear text"
    );
    assert!(
        !out.status.success() && out.stderr.contains("https"),
        "{out:?}"
    );
}

#[tokio::test]
async fn a_refused_or_unreachable_remote_is_named_without_its_password() {
    let env = Env::new("");
    let admin_token = "seks_admin_0123456789abcdefghijklmnopqrstuvwxyzABCD";
    let closed = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    for (url, why) in [
        ("http://admin:hunter2-pw@192.0.2.1:8081", "clear text"),
        ("ftp://admin:hunter2-pw@192.0.2.1:8081", "http(s) URL"),
        (
            &format!("https://admin:hunter2-pw@127.0.0.1:{closed}") as &str,
            "cannot reach",
        ),
    ] {
        let out = env
            .cli_with_env(
                &["--remote", url, "secret", "list"],
                "",
                &[("SEKS_ADMIN_TOKEN", admin_token)],
            )
            .await;
        assert!(
            !out.status.success() && out.stderr.contains(why),
            "{url}: {out:?}"
        );
        assert!(
            !out.stderr.contains("hunter2") && !out.stdout.contains("hunter2"),
            "{url}: {out:?}"
        );
        assert!(out.stderr.contains("admin:***@"), "{url}: {out:?}");
    }
}
