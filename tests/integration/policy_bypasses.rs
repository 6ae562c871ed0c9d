//! Policies against an agent that tries to get around them: requests shaped to dodge a
//! budget or a model list, policies stacked on one token, floods of held requests and
//! derived tokens. Raw HTTP, since these are requests no SDK would send.

use std::time::{Duration, Instant};

use http_body_util::BodyExt;
use serde_json::Value;

use crate::support::Env;
use crate::support::http::{Reply, send, send_streaming};
use crate::support::mock::MockUpstream;

const KEY: &str = "sk-proj-BYPASS-real-key-0123456789";
const GEMINI_KEY: &str = "AIzaSyBYPASSrealkey0123456789012345678";

async fn setup(extra_config: &str) -> (MockUpstream, Env) {
    let mock = MockUpstream::start().await;
    let env = Env::new(&crate::support::config_for(&mock.url(), extra_config));
    env.add_secret("main", "openai", KEY).await;
    env.add_secret("gem", "gemini", GEMINI_KEY).await;
    (mock, env)
}

fn write(env: &Env, name: &str, text: &str) -> String {
    let path = env.data_dir().join(name);
    std::fs::write(&path, text).unwrap();
    path.display().to_string()
}

async fn post(url: &str, auth: (&str, &str), content_type: &str, body: &str) -> Reply {
    send(
        "POST",
        url,
        &[auth, ("content-type", content_type)],
        body.to_owned(),
    )
    .await
}

/// The status and the broker's error code (in every provider's shape).
fn code(reply: &Reply) -> (u16, String) {
    let code = reply.header("x-seks-error").unwrap_or_default();
    (reply.status, code.to_owned())
}

#[tokio::test]
async fn token_budgets_count_streams_that_try_to_hide_their_usage() {
    let (mock, env) = setup("").await;
    let broker = env.serve().await;
    let chat = broker.url("/api/openai/v1/chat/completions");

    // `stream_options: null` must not switch the usage report off: 9 tokens per answer.
    let nulled = env.create_token("main", &["--daily-tokens", "15"]).await;
    let auth = format!("Bearer {nulled}");
    let body = r#"{"model":"gpt-4o-mini","stream":true,"stream_options":null,"messages":[]}"#;
    for _ in 0..2 {
        let reply = post(&chat, ("authorization", &auth), "application/json", body).await;
        assert_eq!(reply.status, 200, "{}", reply.body);
    }
    let third = post(&chat, ("authorization", &auth), "application/json", body).await;
    assert_eq!(
        code(&third),
        (429, "budget_exhausted".into()),
        "{}",
        third.body
    );
    let asked: Vec<Value> = mock
        .requests()
        .iter()
        .map(|r| serde_json::from_slice(&r.body).unwrap())
        .collect();
    assert!(
        asked
            .iter()
            .all(|b| b["stream_options"]["include_usage"] == true),
        "{asked:?}"
    );

    // Hanging up after the answer, before the usage report (1000 tokens, 800 ms later),
    // still pays: the broker reads the rest of the stream.
    let quitter = env.create_token("main", &["--daily-tokens", "500"]).await;
    let auth = format!("Bearer {quitter}");
    let late = broker.url("/api/openai/v1/late-usage/chat/completions");
    let response = send_streaming(
        "POST",
        &late,
        &[
            ("authorization", &auth),
            ("content-type", "application/json"),
        ],
        r#"{"model":"gpt-4o-mini","stream":true,"messages":[]}"#,
    )
    .await;
    assert_eq!(response.status(), 200);
    let mut body = response.into_body();
    let first = body.frame().await.unwrap().unwrap().into_data().unwrap();
    assert!(String::from_utf8_lossy(&first).contains("hi"));
    drop(body);
    let start = Instant::now();
    let models = broker.url("/api/openai/v1/models");
    let refused = loop {
        let reply = send("GET", &models, &[("authorization", &auth)], "").await;
        if reply.status == 429 || start.elapsed() > Duration::from_secs(10) {
            break reply;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert_eq!(code(&refused), (429, "budget_exhausted".into()));
    assert!(refused.body.contains("1000 used"), "{}", refused.body);

    // Gemini streams a JSON array of chunks unless asked for SSE; its usage counts too.
    let gemini = env.create_token("gem", &["--daily-tokens", "15"]).await;
    let stream = broker.url("/api/gemini/v1beta/models/gemini-2.0-flash:streamGenerateContent");
    for _ in 0..2 {
        let reply = post(
            &stream,
            ("x-goog-api-key", &gemini),
            "application/json",
            "{}",
        )
        .await;
        assert_eq!(reply.status, 200, "{}", reply.body);
        assert!(reply.json().is_array());
    }
    let third = post(
        &stream,
        ("x-goog-api-key", &gemini),
        "application/json",
        "{}",
    )
    .await;
    assert_eq!(third.status, 429, "{}", third.body);
    broker.stop().await;
}

/// Tokens limited to one model each: an OpenAI one (`gpt-4o-mini`) and a Gemini one
/// (`gemini-2.0-flash`).
async fn model_list_tokens(env: &Env) -> (String, String) {
    let openai = write(env, "o.toml", "models = [\"gpt-4o-mini\"]\n");
    let gemini = write(env, "g.toml", "models = [\"gemini-2.0-flash\"]\n");
    (
        env.create_token("main", &["--policy", &openai]).await,
        env.create_token("gem", &["--policy", &gemini]).await,
    )
}

#[tokio::test]
async fn model_lists_refuse_bodies_whose_model_cannot_be_read() {
    let (mock, env) = setup("").await;
    let (token, gemini) = model_list_tokens(&env).await;
    let broker = env.serve().await;
    let auth = format!("Bearer {token}");
    let chat = broker.url("/api/openai/v1/chat/completions");

    // Bodies a lenient upstream parser might accept but serde can't: NaN, a huge number, a
    // byte order mark; and a model that isn't a string.
    for body in [
        r#"{"model":"gpt-4o","messages":[],"temperature":NaN}"#,
        r#"{"model":"gpt-4o","messages":[],"x":1e400}"#,
        "\u{feff}{\"model\":\"gpt-4o\",\"messages\":[]}",
        r#"{"model":["gpt-4o"],"messages":[]}"#,
    ] {
        let reply = post(&chat, ("authorization", &auth), "application/json", body).await;
        assert_eq!(
            code(&reply),
            (400, "bad_body".into()),
            "{body:?}: {}",
            reply.body
        );
    }
    let multipart = "--b\r\nContent-Disposition: form-data; name=\"model\"\r\n\r\ngpt-4o-transcribe\r\n--b--\r\n";
    let reply = post(
        &broker.url("/api/openai/v1/audio/transcriptions"),
        ("authorization", &auth),
        "multipart/form-data; boundary=b",
        multipart,
    )
    .await;
    assert_eq!(code(&reply), (400, "bad_body".into()), "{}", reply.body);

    // Gemini names models in its OpenAI-compatible body and in tuned-model paths too.
    let compat = broker.url("/api/gemini/v1beta/openai/chat/completions");
    let key = ("x-goog-api-key", gemini.as_str());
    let reply = post(
        &compat,
        key,
        "application/json",
        r#"{"model":"gemini-2.5-pro"}"#,
    )
    .await;
    assert_eq!(
        code(&reply),
        (403, "policy_denied".into()),
        "{}",
        reply.body
    );
    let tuned = broker.url("/api/gemini/v1beta/tunedModels/mine:generateContent");
    let reply = post(&tuned, key, "application/json", "{}").await;
    assert_eq!(reply.status, 403, "{}", reply.body);
    assert_eq!(mock.requests().len(), 0, "nothing reached the upstream");

    let body = r#"{"model":"models/gemini-2.0-flash","messages":[]}"#;
    assert_eq!(
        post(&compat, key, "application/json", body).await.status,
        200
    );
    let ok = r#"{"model":"gpt-4o-mini","messages":[]}"#;
    assert_eq!(
        post(&chat, ("authorization", &auth), "application/json", ok)
            .await
            .status,
        200
    );
    broker.stop().await;
}

#[tokio::test]
async fn a_token_with_its_own_and_a_named_policy_is_counted_once_under_the_stricter_limits() {
    let (_mock, env) = setup("").await;
    let team = write(&env, "team.toml", "rpm = 60\ndaily_requests = 10\n");
    env.cli(&["policy", "set", "team", &team], "").await.ok();
    let rated = env
        .create_token("main", &["--rpm", "2", "--policy-name", "team"])
        .await;
    let budgeted = env
        .create_token("main", &["--daily-requests", "4", "--policy-name", "team"])
        .await;
    let broker = env.serve().await;
    let models = broker.url("/api/openai/v1/models");
    for (token, passes) in [(&rated, 2), (&budgeted, 4)] {
        let auth = format!("Bearer {token}");
        let mut statuses = Vec::new();
        for _ in 0..6 {
            statuses.push(
                send("GET", &models, &[("authorization", &auth)], "")
                    .await
                    .status,
            );
        }
        let want: Vec<u16> = (0..6).map(|i| if i < passes { 200 } else { 429 }).collect();
        assert_eq!(statuses, want);
    }
    broker.stop().await;
}

#[tokio::test]
async fn concurrent_requests_never_overshoot_a_daily_request_budget() {
    let (mock, env) = setup("").await;
    let token = env.create_token("main", &["--daily-requests", "5"]).await;
    let broker = env.serve().await;
    let url = broker.url("/api/openai/v1/sleep");
    let auth = format!("Bearer {token}");
    let calls: Vec<_> = (0..24)
        .map(|_| {
            let (url, auth) = (url.clone(), auth.clone());
            tokio::spawn(async move { send("GET", &url, &[("authorization", &auth)], "").await })
        })
        .collect();
    let mut passed = 0;
    for call in calls {
        let reply = call.await.unwrap();
        match reply.status {
            200 => passed += 1,
            status => assert_eq!(code(&reply), (429, "budget_exhausted".into()), "{status}"),
        }
    }
    assert_eq!((passed, mock.requests().len()), (5, 5));
    broker.stop().await;
}

#[tokio::test]
async fn named_policies_cannot_carry_a_lifetime() {
    let (_mock, env) = setup("").await;
    for text in ["ttl = \"1s\"\n", "expires_at = \"2020-01-01T00:00:00Z\"\n"] {
        let file = write(&env, "old.toml", text);
        let out = env.cli(&["policy", "set", "old", &file], "").await;
        assert!(!out.status.success(), "{text}");
        assert!(
            out.stderr.contains("can't set `ttl` or `expires_at`"),
            "{}",
            out.stderr
        );
    }
}

/// Start `n` held requests with `token`; return their handles.
fn hold_many(url: &str, token: &str, n: usize) -> Vec<tokio::task::JoinHandle<Reply>> {
    (0..n)
        .map(|i| {
            let (url, auth) = (url.to_owned(), format!("Bearer {token}"));
            let body = format!(r#"{{"model":"dall-e-{i}","prompt":"x"}}"#);
            tokio::spawn(async move { send("POST", &url, &[("authorization", &auth)], body).await })
        })
        .collect()
}

async fn pending(env: &Env) -> Vec<Value> {
    let listed = env.cli(&["approvals", "list", "--json"], "").await.ok();
    serde_json::from_str::<Value>(&listed.stdout)
        .unwrap()
        .as_array()
        .unwrap()
        .clone()
}

#[tokio::test]
async fn held_requests_count_against_limits_and_are_capped_per_token() {
    let (_mock, env) = setup("[approvals]\ntimeout = \"3s\"\n").await;
    let images = "POST /v1/images/generations";
    let single = env
        .create_token(
            "main",
            &["--concurrency", "1", "--require-approval", images],
        )
        .await;
    let flood = env
        .create_token("main", &["--require-approval", images, "--agent", "flood"])
        .await;
    let broker = env.serve().await;
    let url = broker.url("/api/openai/v1/images/generations");

    let single_calls = hold_many(&url, &single, 3);
    let flood_calls = hold_many(&url, &flood, 12);
    let mut refused = Vec::new();
    for call in single_calls.into_iter().chain(flood_calls) {
        let reply = call.await.unwrap();
        refused.push(code(&reply));
    }
    let count = |c: &str| refused.iter().filter(|(_, code)| code == c).count();
    // Each token's held requests all time out (3 s) unless refused up front.
    assert_eq!(count("concurrency_limited"), 2, "{refused:?}");
    assert_eq!(count("too_many_pending_approvals"), 4, "{refused:?}");
    assert_eq!(count("approval_timeout"), 1 + 8, "{refused:?}");
    broker.stop().await;
}

#[tokio::test]
async fn held_requests_of_derived_tokens_share_their_roots_cap() {
    let (_mock, env) = setup("[approvals]\ntimeout = \"3s\"\n").await;
    let root = env
        .create_token(
            "main",
            &["--require-approval", "POST /v1/images/generations"],
        )
        .await;
    let broker = env.serve().await;
    // Each child is a new token id: counted apart, every child derived would bring 8 more.
    let mut children = Vec::new();
    for _ in 0..2 {
        let reply = post(
            &broker.url("/seks/v1/tokens/derive"),
            ("authorization", &format!("Bearer {root}")),
            "application/json",
            "{}",
        )
        .await;
        assert_eq!(reply.status, 201, "{}", reply.body);
        children.push(reply.json()["token"].as_str().unwrap().to_owned());
    }
    let url = broker.url("/api/openai/v1/images/generations");
    let calls: Vec<_> = hold_many(&url, &children[0], 6)
        .into_iter()
        .chain(hold_many(&url, &children[1], 6))
        .chain(hold_many(&url, &root, 2))
        .collect();
    let mut refused = Vec::new();
    for call in calls {
        refused.push(code(&call.await.unwrap()));
    }
    let count = |c: &str| refused.iter().filter(|(_, code)| code == c).count();
    assert_eq!(count("too_many_pending_approvals"), 14 - 8, "{refused:?}");
    assert_eq!(count("approval_timeout"), 8, "{refused:?}");
    broker.stop().await;
}

#[tokio::test]
async fn what_an_agent_writes_into_a_held_request_cannot_spoof_the_approvals_list() {
    let (_mock, env) = setup("[approvals]\ntimeout = \"3s\"\n").await;
    let token = env
        .create_token(
            "main",
            &["--require-approval", "POST /v1/images/generations"],
        )
        .await;
    let broker = env.serve().await;
    let url = broker.url("/api/openai/v1/images/generations");
    let auth = format!("Bearer {token}");
    let spoof = r#"{"model":"dall-e-2\u001b[2K\r\napr_fake pending nice-bot GET /v1/models"}"#;
    let call =
        tokio::spawn(async move { send("POST", &url, &[("authorization", &auth)], spoof).await });
    let start = Instant::now();
    while pending(&env).await.is_empty() {
        assert!(start.elapsed() < Duration::from_secs(10), "nothing held");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let table = env.cli(&["approvals", "list"], "").await.ok().stdout;
    assert!(
        !table.contains('\u{1b}') && !table.contains('\r'),
        "{table:?}"
    );
    assert!(
        table.contains("dall-e-2\\u{1b}[2K\\r\\napr_fake"),
        "{table}"
    );
    assert_eq!(table.lines().count(), 2, "{table}");
    call.await.unwrap();
    broker.stop().await;
}

#[tokio::test]
async fn an_agent_can_derive_only_so_many_children_a_minute() {
    let (_mock, env) = setup("").await;
    let token = env.create_token("main", &[]).await;
    let broker = env.serve().await;
    let url = broker.url("/seks/v1/tokens/derive");
    let auth = format!("Bearer {token}");
    let mut statuses = Vec::new();
    let mut child = String::new();
    for _ in 0..31 {
        let reply = post(&url, ("authorization", &auth), "application/json", "{}").await;
        statuses.push(reply.status);
        if reply.status == 429 {
            assert!(reply.header("retry-after").is_some());
        } else {
            child = reply.json()["token"].as_str().unwrap().to_owned();
        }
    }
    assert_eq!(statuses.iter().filter(|s| **s == 201).count(), 30);
    assert_eq!(statuses.last(), Some(&429));
    // Each child deriving its own 30 a minute, and theirs, would multiply the rate by 30 a
    // generation: the whole family shares the one budget.
    let auth = format!("Bearer {child}");
    let reply = post(&url, ("authorization", &auth), "application/json", "{}").await;
    assert_eq!(reply.status, 429, "{reply:?}");
    broker.stop().await;
}

#[tokio::test]
async fn a_child_of_a_token_with_the_longest_agent_name_can_be_derived() {
    let (_mock, env) = setup("").await;
    let name = "a".repeat(128);
    let token = env.create_token("main", &["--agent", &name]).await;
    let broker = env.serve().await;
    let auth = format!("Bearer {token}");
    let url = broker.url("/seks/v1/tokens/derive");
    // The agent names no child: its name comes from the parent's, and must still be valid.
    let reply = post(&url, ("authorization", &auth), "application/json", "{}").await;
    assert_eq!(reply.status, 201, "{reply:?}");
    let child = reply.json()["agent"].as_str().unwrap().to_owned();
    assert!(child.starts_with("aaaa") && child.len() <= 128, "{child}");
    broker.stop().await;
}

/// The headers of a WebSocket handshake.
const UPGRADE: [(&str, &str); 4] = [
    ("connection", "upgrade"),
    ("upgrade", "websocket"),
    ("sec-websocket-version", "13"),
    ("sec-websocket-key", "dGhlIHNhbXBsZSBub25jZQ=="),
];

#[tokio::test]
async fn model_lists_see_models_named_in_the_query_or_a_websocket_session() {
    let (mock, env) = setup("").await;
    let (token, gemini) = model_list_tokens(&env).await;
    let broker = env.serve().await;
    let auth = format!("Bearer {token}");

    // OpenAI's Realtime API reads the model from the handshake's query, not a body.
    for target in [
        "/api/openai/v1/realtime?model=gpt-4o-realtime-preview",
        "/api/openai/v1/realtime?%6Dodel=gpt-4o-realtime-preview",
        "/api/openai/v1/realtime?model=gpt-4o-mini&model=gpt-4o-realtime-preview",
    ] {
        let mut headers = vec![("authorization", auth.as_str())];
        headers.extend(UPGRADE);
        let reply = send("GET", &broker.url(target), &headers, "").await;
        assert_eq!(
            code(&reply),
            (403, "policy_denied".into()),
            "{target}: {}",
            reply.body
        );
    }
    // Nor is a model named in a handshake's body, which the upstream doesn't read.
    let mut headers = vec![
        ("authorization", auth.as_str()),
        ("content-type", "application/json"),
    ];
    headers.extend(UPGRADE);
    let realtime = broker.url("/api/openai/v1/realtime");
    let reply = send("GET", &realtime, &headers, r#"{"model":"gpt-4o-mini"}"#).await;
    assert_eq!(code(&reply), (400, "bad_body".into()), "{}", reply.body);
    // Gemini's Live API names its model in the session's first message, which the broker
    // doesn't read, whatever the URL says: a model list can't be checked there.
    let mut headers = vec![("x-goog-api-key", gemini.as_str())];
    headers.extend(UPGRADE);
    let live =
        "/api/gemini/ws/google.ai.generativelanguage.v1beta.GenerativeService.BidiGenerateContent";
    for target in [live.to_owned(), format!("{live}?model=gemini-2.0-flash")] {
        let reply = send("GET", &broker.url(&target), &headers, "").await;
        assert_eq!(
            code(&reply),
            (400, "bad_body".into()),
            "{target}: {}",
            reply.body
        );
    }
    assert_eq!(mock.requests().len(), 0, "nothing reached the upstream");

    // A handshake naming an allowed model in the query goes upstream.
    let allowed = broker.url("/api/openai/v1/realtime?model=gpt-4o-mini");
    let mut headers = vec![("authorization", auth.as_str())];
    headers.extend(UPGRADE);
    let reply = send("GET", &allowed, &headers, "").await;
    assert_eq!(reply.status, 200, "{}", reply.body);
    assert_eq!(mock.requests().len(), 1);
    broker.stop().await;
}

/// A Slack token whose body rule lets it post to one channel only.
async fn slack_channel_token(env: &Env) -> String {
    env.add_secret("slack", "slack", "xoxb-BYPASS-real-key-0123456789")
        .await;
    let policy = write(
        env,
        "s.toml",
        "body = [{ pointer = \"/channel\", one_of = [\"C_OK\"] }]\n",
    );
    env.create_token("slack", &["--policy", &policy]).await
}

#[tokio::test]
async fn body_rules_refuse_a_json_body_declared_as_something_the_upstream_parses_otherwise() {
    let (mock, env) = setup("").await;
    let token = slack_channel_token(&env).await;
    let broker = env.serve().await;
    let auth = format!("Bearer {token}");
    let url = broker.url("/api/slack/chat.postMessage");
    // Valid JSON naming the allowed channel, and a form whose `channel` is another one.
    let both = r#"{"channel":"C_OK","text":"&channel=C_EVIL&x="}"#;
    for content_type in [
        "application/x-www-form-urlencoded",
        "text/plain",
        "multipart/form-data; boundary=x",
    ] {
        let reply = post(&url, ("authorization", &auth), content_type, both).await;
        assert_eq!(
            code(&reply),
            (400, "bad_body".into()),
            "{content_type}: {}",
            reply.body
        );
    }
    assert_eq!(mock.requests().len(), 0, "nothing reached the upstream");
    for content_type in [
        "application/json; charset=utf-8",
        "application/merge-patch+json",
    ] {
        let reply = post(&url, ("authorization", &auth), content_type, both).await;
        assert_eq!(reply.status, 200, "{content_type}: {}", reply.body);
    }
    broker.stop().await;
}
#[tokio::test]
async fn body_rules_refuse_the_fields_they_check_in_the_query_string() {
    let (mock, env) = setup("").await;
    let token = slack_channel_token(&env).await;
    let broker = env.serve().await;
    let auth = format!("Bearer {token}");
    // Slack (like Telegram and Stripe) reads arguments from the query string as well.
    for (query, body) in [
        ("channel=C_EVIL&text=hi", ""),
        ("%63hannel=C_EVIL", ""),
        ("channel=C_EVIL", r#"{"channel":"C_OK"}"#),
    ] {
        let url = broker.url(&format!("/api/slack/chat.postMessage?{query}"));
        let reply = post(&url, ("authorization", &auth), "application/json", body).await;
        assert_eq!(
            code(&reply),
            (400, "bad_body".into()),
            "{query}: {}",
            reply.body
        );
    }
    assert_eq!(mock.requests().len(), 0, "nothing reached the upstream");
    let url = broker.url("/api/slack/chat.postMessage?pretty=1");
    let reply = post(
        &url,
        ("authorization", &auth),
        "application/json",
        r#"{"channel":"C_OK"}"#,
    )
    .await;
    assert_eq!(reply.status, 200, "{}", reply.body);
    broker.stop().await;
}

#[tokio::test]
async fn model_lists_see_the_models_of_a_batch_of_requests() {
    let (mock, env) = setup("").await;
    env.add_secret(
        "claude",
        "anthropic",
        "sk-ant-api03-BYPASS-real-key-0123456789",
    )
    .await;
    let policy = write(&env, "a.toml", "models = [\"claude-haiku-4-5\"]\n");
    let token = env.create_token("claude", &["--policy", &policy]).await;
    let broker = env.serve().await;
    let key = ("x-api-key", token.as_str());
    // Anthropic's Message Batches name each request's model in its `params`.
    let batches = broker.url("/api/anthropic/v1/messages/batches");
    let batch = |model: &str| {
        format!(
            r#"{{"requests":[{{"custom_id":"a","params":{{"model":"claude-haiku-4-5","max_tokens":1,"messages":[]}}}},{{"custom_id":"b","params":{{"model":"{model}","max_tokens":1,"messages":[]}}}}]}}"#
        )
    };
    let reply = post(&batches, key, "application/json", &batch("claude-opus-4-1")).await;
    assert_eq!(
        code(&reply),
        (403, "policy_denied".into()),
        "{}",
        reply.body
    );
    let odd = r#"{"requests":[{"custom_id":"a","params":{"model":["claude-opus-4-1"]}}]}"#;
    let reply = post(&batches, key, "application/json", odd).await;
    assert_eq!(code(&reply), (400, "bad_body".into()), "{}", reply.body);
    assert_eq!(mock.requests().len(), 0, "nothing reached the upstream");
    let reply = post(
        &batches,
        key,
        "application/json",
        &batch("claude-haiku-4-5"),
    )
    .await;
    assert_eq!(reply.status, 200, "{}", reply.body);
    broker.stop().await;
}

#[tokio::test]
async fn an_agent_mints_no_credential_that_works_without_the_broker_unless_the_operator_allows_it()
{
    let (mock, env) = setup("").await;
    let plain = env.create_token("main", &[]).await;
    let minting = write(&env, "mint.toml", "mint_credentials = true\n");
    let minter = env.create_token("main", &["--policy", &minting]).await;
    let broker = env.serve().await;
    let mint = |token: &str, path: &str| {
        let url = broker.url(&format!("/api/openai{path}"));
        let auth = format!("Bearer {token}");
        async move {
            post(
                &url,
                ("authorization", &auth),
                "application/json",
                r#"{"expires_after":{"anchor":"created_at","seconds":7200}}"#,
            )
            .await
        }
    };
    let reached = |path: &str| {
        mock.requests()
            .iter()
            .filter(|r| r.target.eq_ignore_ascii_case(path))
            .count()
    };

    // An ephemeral Realtime key works against api.openai.com directly, outside policy and
    // audit: a token without the grant can't ask for one, however it spells the path.
    for path in [
        "/v1/realtime/client_secrets",
        "/v1/Realtime/Client_Secrets/",
        "/v1/realtime/sessions",
    ] {
        let reply = mint(&plain, path).await;
        assert_eq!(code(&reply), (403, "policy_denied".into()), "{path}");
        assert!(
            reply.json()["error"]["message"]
                .as_str()
                .unwrap()
                .contains("mint_credentials = true"),
            "{}",
            reply.body
        );
    }
    assert_eq!(reached("/v1/realtime/client_secrets/"), 0);
    assert_eq!(reached("/v1/realtime/client_secrets"), 0);

    // The operator's grant opens the route; a derived token can close it, not open it.
    let reply = mint(&minter, "/v1/realtime/client_secrets").await;
    assert_ne!(reply.status, 403, "{}", reply.body);
    assert_eq!(reached("/v1/realtime/client_secrets"), 1);
    let derive = |parent: &str, policy: Value| {
        let url = broker.url("/seks/v1/tokens/derive");
        let auth = format!("Bearer {parent}");
        async move {
            let reply = post(
                &url,
                ("authorization", &auth),
                "application/json",
                &serde_json::json!({ "policy": policy }).to_string(),
            )
            .await;
            assert_eq!(reply.status, 201, "{}", reply.body);
            reply.json()["token"].as_str().unwrap().to_owned()
        }
    };
    let opened = derive(&plain, serde_json::json!({"mint_credentials": true})).await;
    let closed = derive(&minter, serde_json::json!({"mint_credentials": false})).await;
    for child in [opened, closed] {
        let reply = mint(&child, "/v1/realtime/client_secrets").await;
        assert_eq!(
            code(&reply),
            (403, "policy_denied".into()),
            "{}",
            reply.body
        );
    }
    assert_eq!(reached("/v1/realtime/client_secrets"), 1);
    // Everything else is as before.
    let chat = mint(&plain, "/v1/chat/completions").await;
    assert_eq!(chat.status, 200, "{}", chat.body);
    broker.stop().await;
}

/// A GitLab secret `lab` in `env`, with a token of no policy and one whose policy may mint
/// credentials: (plain, minter).
async fn gitlab_tokens(env: &Env) -> (String, String) {
    env.add_secret("lab", "gitlab", "glpat-BYPASS-real-key-0123456789")
        .await;
    let plain = env.create_token("lab", &[]).await;
    let minting = write(env, "mint.toml", "mint_credentials = true\n");
    let minter = env.create_token("lab", &["--policy", &minting]).await;
    (plain, minter)
}

#[tokio::test]
async fn a_graphql_operation_mints_no_credential_unless_the_operator_allows_it() {
    let (mock, env) = setup("max_policy_body_bytes = 4096").await;
    let (plain, minter) = gitlab_tokens(&env).await;
    let broker = env.serve().await;
    let graphql = broker.url("/api/gitlab/api/graphql");
    let ask = |token: &str, url: &str, content_type: &str, body: &str| {
        let (url, body, content_type) = (url.to_owned(), body.to_owned(), content_type.to_owned());
        let token = token.to_owned();
        async move { post(&url, ("private-token", &token), &content_type, &body).await }
    };
    let reached = || {
        mock.requests()
            .into_iter()
            .filter(|r| r.target.to_ascii_lowercase().contains("graphql"))
            .collect::<Vec<_>>()
    };

    // `runnerCreate` answers with the new runner's authentication token, which registers a
    // runner against gitlab.com directly: refused however the operation spells it.
    let minted = [
        r#"{"query":"mutation { runnerCreate(input: {runnerType: INSTANCE_TYPE}) { runner { id } errors } }"}"#,
        r#"{"query":"mutation { \u0072unnerCreate(input: {}) { errors } }"}"#,
        r#"{"query":"mutation { x: runnerCreate(input: {}) { errors } }"}"#,
        r#"[{"query":"{ currentUser { id } }"},{"query":"mutation M{runnerCreate(input:{}){errors}}"}]"#,
        r#"{"query":"mutation { ...F } fragment F on Mutation { runnerCreate(input: {}) { errors } }"}"#,
        // The runner's token stays readable for a while after it is made.
        r#"{"query":"{ runner(id: \"gid://gitlab/Ci::Runner/1\") { ephemeralAuthenticationToken } }"}"#,
        r#"{"query":"mutation { clusterAgentTokenCreate(input: {clusterAgentId: \"1\"}) { secret } }"}"#,
        // Rails runs a batch in `_json` whatever `query` says.
        r#"{"query":"{ currentUser { id } }","_json":[{"query":"mutation { runnerCreate(input: {}) { errors } }"}]}"#,
    ];
    for body in minted {
        let reply = ask(&plain, &graphql, "application/json", body).await;
        assert_eq!(code(&reply), (403, "policy_denied".into()), "{body}");
        assert!(
            reply.json()["message"]
                .as_str()
                .unwrap()
                .contains("mint_credentials = true"),
            "{}",
            reply.body
        );
    }
    for odd_path in ["/api/gitlab/api/GraphQL/", "/api/gitlab/api/graphql.json"] {
        let reply = ask(&plain, &broker.url(odd_path), "application/json", minted[0]).await;
        assert_eq!(
            code(&reply),
            (403, "policy_denied".into()),
            "{}",
            reply.body
        );
    }
    let by_get = broker.url(
        "/api/gitlab/api/graphql?query=%7Brunner(id%3A%221%22)%7BephemeralAuthenticationToken%7D%7D",
    );
    let reply = send("GET", &by_get, &[("private-token", &plain)], "").await;
    assert_eq!(
        code(&reply),
        (403, "policy_denied".into()),
        "{}",
        reply.body
    );
    // ActionCable runs GraphQL sent in WebSocket messages, which the broker relays unread.
    let cable = broker.url("/api/gitlab/-/cable");
    let reply = send("GET", &cable, &[("private-token", &plain)], "").await;
    assert_eq!(code(&reply), (400, "bad_body".into()), "{}", reply.body);

    // What can't be read as GraphQL over JSON might hide such an operation.
    let big = format!(
        r#"{{"query":"{{ currentUser {{ id }} }}","pad":"{}"}}"#,
        "x".repeat(5000)
    );
    for (content_type, body, status) in [
        ("application/json", "mutation { runnerCreate }", 400),
        ("application/json", r#"{"variables":{}}"#, 400),
        (
            "application/json",
            r#"{"query":["mutation { runnerCreate }"]}"#,
            400,
        ),
        (
            "application/json",
            r#"{"query":"{ a }","query":"mutation { runnerCreate }"}"#,
            400,
        ),
        ("application/json", "", 400),
        (
            "application/x-www-form-urlencoded",
            r#"{"query":"{ a }","x":"&query=mutation{runnerCreate}"}"#,
            400,
        ),
        ("application/json", big.as_str(), 413),
    ] {
        let reply = ask(&plain, &graphql, content_type, body).await;
        assert_eq!(reply.status, status, "{body}: {}", reply.body);
        assert!(reply.header("x-seks-error").is_some(), "{}", reply.body);
        assert!(reply.json()["message"].is_string(), "{}", reply.body);
    }
    assert_eq!(reached().len(), 0, "nothing reached the upstream");

    // An ordinary query goes through untouched, names that merely start like a listed one too.
    let ordinary = r#"{"query":"query P($p: ID!) { project(fullPath: $p) { name runnerCreated: id runners { count } } }","variables":{"p":"acme/widgets"}}"#;
    let reply = ask(&plain, &graphql, "application/json", ordinary).await;
    assert_eq!(reply.status, 200, "{}", reply.body);
    let seen = reached();
    assert_eq!(seen.len(), 1);
    assert_eq!(seen[0].body, ordinary.as_bytes());
    let read = broker.url("/api/gitlab/api/graphql?query=%7BcurrentUser%7Bid%7D%7D");
    let reply = send("GET", &read, &[("private-token", &plain)], "").await;
    assert_eq!(reply.status, 200, "{}", reply.body);

    // The operator's grant opens the endpoint, to every operation.
    for body in [minted[3], "not json"] {
        let reply = ask(&minter, &graphql, "application/json", body).await;
        assert_eq!(reply.status, 200, "{}", reply.body);
        assert_eq!(reached().last().unwrap().body, body.as_bytes());
    }
    assert_eq!(reached().len(), 4);
    broker.stop().await;
}

#[tokio::test]
async fn gitlab_projects_named_by_path_pass_whole_and_are_held_to_the_rules() {
    let (mock, env) = setup("").await;
    env.add_secret("lab", "gitlab", "glpat-BYPASS-real-key-0123456789")
        .await;
    let policy = write(
        &env,
        "lab.toml",
        "deny = [\"* /api/v4/projects/*/variables/**\"]\n",
    );
    let token = env.create_token("lab", &["--policy", &policy]).await;
    let agent = env.create_token("main", &[]).await;
    let broker = env.serve().await;
    let get = |path: &str| {
        let url = broker.url(path);
        let token = token.clone();
        async move { send("GET", &url, &[("private-token", &token)], "").await }
    };

    // python-gitlab names a project by its path in one segment; it goes upstream as sent.
    let project = "/api/v4/projects/group%2Fsub%2Fproject";
    let reply = get(&format!("/api/gitlab{project}")).await;
    assert_eq!(reply.status, 200, "{}", reply.body);
    let targets = || {
        mock.requests()
            .into_iter()
            .map(|r| r.target)
            .collect::<Vec<_>>()
    };
    assert_eq!(targets(), [project]);

    // A rule's `*` is the whole segment, so the path's slashes don't slip past it.
    for variables in [
        "/api/gitlab/api/v4/projects/group%2Fproject/variables",
        "/api/gitlab/api/v4/projects/group%2fsub%2Fproject/Variables/KEY",
    ] {
        assert_eq!(
            code(&get(variables).await),
            (403, "policy_denied".to_owned()),
            "{variables}"
        );
    }
    // Each part between encoded slashes is a segment to a server that decodes them.
    for escape in [
        "/api/gitlab/api/v4/projects/group%2F..%2F..%2Fuser",
        "/api/gitlab/api/v4/projects/group%2F%2Fproject",
        "/api/gitlab/api/v4/projects/group%2F",
    ] {
        assert_eq!(code(&get(escape).await).0, 400, "{escape}");
    }
    // Other providers read `%2F` as a slash, so it stays refused there.
    let openai = broker.url("/api/openai/v1/files/a%2Fb");
    let auth = format!("Bearer {agent}");
    let reply = send("GET", &openai, &[("authorization", &auth)], "").await;
    assert_eq!(code(&reply).0, 400);
    assert_eq!(
        targets(),
        [project],
        "a refused request reached the upstream"
    );
    broker.stop().await;
}

#[tokio::test]
async fn gitlab_answers_withhold_runner_registration_tokens_unless_the_operator_allows_it() {
    let (_mock, env) = setup("").await;
    let (plain, minter) = gitlab_tokens(&env).await;
    let broker = env.serve().await;
    let ask = |token: &str, path: &str, answer: &str, encoding: &str| {
        let url = broker.url(&format!("/api/gitlab{path}"));
        let (token, answer, encoding) = (token.to_owned(), answer.to_owned(), encoding.to_owned());
        async move {
            let headers = [
                ("private-token", token.as_str()),
                ("x-mock-answer", answer.as_str()),
                ("x-mock-encoding", encoding.as_str()),
            ];
            send("GET", &url, &headers, "").await
        }
    };
    let project = r#"{"id":7,"runners_token":"GR1348941project","namespace":{"id":3,"runners_token":"GR1348941group"},"description":null}"#;

    // A maintainer's view of a project carries the runner registration token, which
    // registers a runner against GitLab directly: the answer comes without it, however
    // the project is named, encoded or listed.
    for (path, answer, encoding) in [
        ("/api/v4/projects/7", project, ""),
        ("/api/v4/projects/group%2Fproject", project, "gzip"),
        (
            "/api/v4/groups/3/projects",
            &format!("[{project},{project}]"),
            "br",
        ),
        ("/api/v4/projects/7/archive", project, "zstd"),
        (
            "/api/v4/projects/7",
            r#"{"id":7,"runners\u005ftoken":"GR1348941escaped"}"#,
            "",
        ),
        (
            "/api/v4/application/settings",
            r#"{"runners_registration_token":"GR1348941admin"}"#,
            "",
        ),
    ] {
        let reply = ask(&plain, path, answer, encoding).await;
        assert_eq!(reply.status, 200, "{path}: {}", reply.body);
        assert!(
            !reply.body.contains("GR1348941") && reply.body.contains("withheld by seks"),
            "{path}: {}",
            reply.body
        );
        assert!(reply.header("content-encoding").is_none());
        let first = match reply.json() {
            Value::Array(items) => items[0].clone(),
            one => one,
        };
        assert!(first["id"] == 7 || path.contains("settings"), "{first}");
    }
    let reply = ask(&plain, "/api/v4/projects/7", project, "").await;
    assert_eq!(reply.json()["namespace"]["id"], 3);
    assert_eq!(reply.json()["description"], Value::Null);

    // Answers elsewhere pass as sent, and so does everything for a root that may mint.
    let file = "/api/v4/projects/7/repository/files/notes.json";
    assert_eq!(ask(&plain, file, project, "").await.body, project);
    assert_eq!(
        ask(&minter, "/api/v4/projects/7", project, "").await.body,
        project
    );
    broker.stop().await;
}
