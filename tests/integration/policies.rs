//! Least privilege per token, through a running broker with the official OpenAI SDK: rules,
//! models and body limits, rate, concurrency and budgets, child tokens, approvals.

use std::time::{Duration, Instant};

use serde_json::Value;

use crate::support::mock::MockUpstream;
use crate::support::{Env, pg, run_python};

const KEY: &str = "sk-proj-POLICY-real-key-0123456789";

/// Run `policy_client.py` and return the JSON object it printed for each call.
async fn sdk(base: &str, token: &str, args: &[&str]) -> Vec<Value> {
    let out = run_python(
        "policy_client.py",
        args,
        &[("SEKS_BASE_URL", base), ("SEKS_TOKEN", token)],
    )
    .await;
    assert!(out.status.success(), "{args:?}: {out:#?}");
    out.stdout
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect()
}

/// A burst under `concurrency = 2`: one or two calls passed, the rest were refused for
/// concurrency, and the upstream never saw more than two at once.
fn assert_at_most_two_in_flight(results: &[Value], passed: usize, mock: &MockUpstream) {
    assert!((1..=2).contains(&passed), "{results:?}");
    assert!(
        results
            .iter()
            .all(|r| r["status"] == 200 || r["code"] == "concurrency_limited"),
        "{results:?}"
    );
    assert!(
        mock.max_in_flight() <= 2,
        "the upstream saw {} at once",
        mock.max_in_flight()
    );
}

async fn setup(extra_config: &str) -> (MockUpstream, Env) {
    let mock = MockUpstream::start().await;
    let env = Env::new(&crate::support::config_for(&mock.url(), extra_config));
    env.add_secret("main", "openai", KEY).await;
    (mock, env)
}

fn write(env: &Env, name: &str, text: &str) -> String {
    let path = env.data_dir().join(name);
    std::fs::write(&path, text).unwrap();
    path.display().to_string()
}

#[tokio::test]
async fn paths_models_and_bodies_outside_the_policy_are_refused_before_the_upstream() {
    let (mock, env) = setup("").await;
    let file = write(
        &env,
        "p.toml",
        r#"
allow = ["POST /v1/chat/completions", "GET /v1/models"]
deny = ["* /v1/files/**"]
models = ["gpt-4o-mini"]
body = [{ pointer = "/max_tokens", max = 4096 }]
"#,
    );
    let token = env.create_token("main", &["--policy", &file]).await;
    let broker = env.serve().await;
    let base = broker.url("/api/openai/v1");

    let ok = sdk(&base, &token, &["chat", "gpt-4o-mini", "100"]).await;
    assert_eq!(ok[0]["status"], 200, "{ok:?}");
    let cases: [(&[&str], &str); 4] = [
        (&["files"], "deny: * /v1/files/**"),
        (
            &["chat", "gpt-4o"],
            "model `gpt-4o` is not allowed by this token's policy (allowed: gpt-4o-mini)",
        ),
        (
            &["chat", "gpt-4o-mini", "9000"],
            "/max_tokens = 9000 is out of bounds",
        ),
        (
            &["burst", "1", "/embeddings"],
            "GET /v1/embeddings is not in this token's allow list",
        ),
    ];
    for (args, message) in cases {
        let got = &sdk(&base, &token, args).await[0];
        assert_eq!(
            (got["status"].as_u64(), got["code"].as_str()),
            (Some(403), Some("policy_denied")),
            "{args:?}: {got}"
        );
        assert!(
            got["message"].as_str().unwrap().contains(message),
            "{args:?}: {got}"
        );
    }
    assert_eq!(
        mock.requests().len(),
        1,
        "only the allowed call may reach the upstream"
    );
    broker.stop().await;
}

#[tokio::test]
async fn rpm_and_concurrency_hold_under_concurrent_load() {
    let (mock, env) = setup("").await;
    let limited = env
        .create_token("main", &["--rpm", "5", "--agent", "rpm"])
        .await;
    let narrow = env
        .create_token("main", &["--concurrency", "2", "--agent", "narrow"])
        .await;
    let broker = env.serve().await;
    let base = broker.url("/api/openai/v1");

    let results = sdk(&base, &limited, &["burst", "12", "/models"]).await;
    let passed = results.iter().filter(|r| r["status"] == 200).count();
    assert_eq!(passed, 5, "{results:?}");
    for r in results.iter().filter(|r| r["status"] != 200) {
        assert_eq!(
            (r["status"].as_u64(), r["code"].as_str()),
            (Some(429), Some("rate_limited")),
            "{r}"
        );
        assert!(
            r["retry_after"]
                .as_str()
                .is_some_and(|s| s.parse::<u64>().is_ok_and(|n| n >= 1)),
            "{r}"
        );
    }
    assert_eq!(mock.requests().len(), 5);

    let results = sdk(&base, &narrow, &["burst", "6", "/sleep"]).await;
    let passed = results.iter().filter(|r| r["status"] == 200).count();
    assert_at_most_two_in_flight(&results, passed, &mock);
    assert_eq!(mock.requests().len(), 5 + passed);
    broker.stop().await;
}

/// Three brokers on one PostgreSQL store share each token's limits: together they admit
/// what one broker alone would, where unshared they would admit three times as much.
#[tokio::test]
async fn rpm_concurrency_and_daily_budgets_hold_across_replicas_sharing_a_store() {
    if !pg::on_postgres() {
        eprintln!("skipped: replicas share a store on PostgreSQL (SEKS_TEST_STORE=postgres)");
        return;
    }
    let (mock, env) = setup("").await;
    let limited = env
        .create_token("main", &["--rpm", "30", "--agent", "rpm"])
        .await;
    let narrow = env
        .create_token("main", &["--concurrency", "2", "--agent", "narrow"])
        .await;
    let budget = env
        .create_token("main", &["--daily-requests", "10", "--agent", "daily"])
        .await;
    let replicas = [env.serve().await, env.serve().await, env.serve().await];
    let spread = replicas
        .iter()
        .map(|r| r.url("/api/openai/v1"))
        .collect::<Vec<_>>()
        .join(" ");

    // rpm 30 allows a burst of 30, then one more every 2 s while the burst lasts.
    let results = sdk(&spread, &limited, &["burst", "90", "/models"]).await;
    let passed = results.iter().filter(|r| r["status"] == 200).count();
    assert!((30..=33).contains(&passed), "{passed} passed: {results:?}");
    assert!(
        results
            .iter()
            .all(|r| r["status"] == 200 || r["code"] == "rate_limited"),
        "{results:?}"
    );
    assert_eq!(mock.requests().len(), passed);

    let results = sdk(&spread, &narrow, &["burst", "9", "/sleep"]).await;
    let slept = results.iter().filter(|r| r["status"] == 200).count();
    assert_at_most_two_in_flight(&results, slept, &mock);

    // Daily budgets are reconciled every second: calls five a second overrun 10 by what the
    // other replicas admitted in the last second or two (unshared, all 30 would pass).
    let results = sdk(&spread, &budget, &["paced", "30", "/models", "200"]).await;
    let admitted = results.iter().filter(|r| r["status"] == 200).count();
    assert!(
        (10..=18).contains(&admitted),
        "{admitted} admitted: {results:?}"
    );
    assert!(
        results
            .iter()
            .all(|r| r["status"] == 200 || r["code"] == "budget_exhausted"),
        "{results:?}"
    );
    for replica in replicas {
        replica.stop().await;
    }
}

#[tokio::test]
async fn daily_tokens_stop_a_token_after_its_usage_streamed_or_not_and_survive_a_restart() {
    let (mock, env) = setup("").await;
    let plain = env
        .create_token("main", &["--daily-tokens", "15", "--agent", "plain"])
        .await;
    let streamed = env
        .create_token("main", &["--daily-tokens", "15", "--agent", "streamed"])
        .await;
    let broker = env.serve().await;
    let base = broker.url("/api/openai/v1");
    // Each answer reports 9 tokens: two calls fit under 15 when they start, the third doesn't.
    for (token, scenario) in [(&plain, "chat"), (&streamed, "stream")] {
        for _ in 0..2 {
            assert_eq!(
                sdk(&base, token, &[scenario, "gpt-4o-mini"]).await[0]["status"],
                200
            );
        }
        let third = &sdk(&base, token, &[scenario, "gpt-4o-mini"]).await[0];
        assert_eq!(
            (third["status"].as_u64(), third["code"].as_str()),
            (Some(429), Some("budget_exhausted")),
            "{third}"
        );
        assert!(
            third["message"]
                .as_str()
                .unwrap()
                .contains("daily budget of 15 LLM tokens"),
            "{third}"
        );
    }
    // The broker asked for the streams' usage report, which OpenAI only sends when asked.
    let streamed_bodies: Vec<Value> = mock
        .requests()
        .iter()
        .filter_map(|r| serde_json::from_slice::<Value>(&r.body).ok())
        .filter(|b| b["stream"] == true)
        .collect();
    assert_eq!(streamed_bodies.len(), 2);
    assert!(
        streamed_bodies
            .iter()
            .all(|b| b["stream_options"]["include_usage"] == true)
    );
    assert_eq!(mock.requests().len(), 4);

    broker.terminate().await;
    let broker = env.serve().await;
    let again = &sdk(
        &broker.url("/api/openai/v1"),
        &plain,
        &["chat", "gpt-4o-mini"],
    )
    .await[0];
    assert_eq!(
        again["code"], "budget_exhausted",
        "the budget survives a restart: {again}"
    );
    broker.stop().await;
}

async fn derive(broker: &crate::support::Broker, token: &str, body: Value) -> (u16, Value) {
    let reply = crate::support::http::send(
        "POST",
        &broker.url("/seks/v1/tokens/derive"),
        &[
            ("authorization", &format!("Bearer {token}")),
            ("content-type", "application/json"),
        ],
        body.to_string(),
    )
    .await;
    (reply.status, reply.json())
}

/// Each SDK call's status and error code, in order.
fn outcomes(calls: &[Value]) -> Vec<(Option<u64>, Option<&str>)> {
    calls
        .iter()
        .map(|r| (r["status"].as_u64(), r["code"].as_str()))
        .collect()
}

#[tokio::test]
async fn a_child_over_its_own_rate_never_spends_what_its_parent_shares() {
    let (mock, env) = setup("").await;
    let parent = env
        .create_token("main", &["--rpm", "3", "--agent", "lead"])
        .await;
    let broker = env.serve().await;
    let (status, child) = derive(
        &broker,
        &parent,
        serde_json::json!({"agent": "sub", "policy": {"rpm": 1}}),
    )
    .await;
    assert_eq!(status, 201, "{child}");
    let (c, p) = (child["token"].as_str().unwrap(), parent.as_str());
    let base = broker.url("/api/openai/v1");
    let calls = sdk(&base, p, &["chats", "gpt-4o-mini", c, c, c, p, p, p]).await;
    let seen = outcomes(&calls);
    let (ok, limited) = ((Some(200), None), (Some(429), Some("rate_limited")));
    // The child's two refused calls leave the parent two of its three.
    assert_eq!(seen, [ok, limited, limited, ok, ok, limited], "{calls:?}");
    assert_eq!(mock.requests().len(), 3);
    broker.stop().await;
}

#[tokio::test]
async fn child_tokens_never_exceed_their_parent_and_die_with_it() {
    let (mock, env) = setup("").await;
    let parent = env
        .create_token(
            "main",
            &[
                "--allow",
                "POST /v1/chat/completions",
                "--rpm",
                "4",
                "--ttl",
                "1h",
                "--agent",
                "lead",
            ],
        )
        .await;
    let parent_id = env.token_id("lead").await;
    let broker = env.serve().await;
    let base = broker.url("/api/openai/v1");

    // The child asks for everything, for ten hours: it gets neither.
    let (status, child) = derive(
        &broker,
        &parent,
        serde_json::json!({"ttl": "10h", "agent": "sub", "policy": {"allow": ["* /**"]}}),
    )
    .await;
    assert_eq!(status, 201, "{child}");
    let child_token = child["token"].as_str().unwrap().to_owned();
    assert_eq!(child["parent_id"], parent_id.as_str());
    let shown: Value = serde_json::from_str(
        &env.cli(&["token", "show", &parent_id, "--json"], "")
            .await
            .ok()
            .stdout,
    )
    .unwrap();
    assert!(
        child["expires_at"].as_str().unwrap() <= shown["token"]["expires_at"].as_str().unwrap()
    );

    let widened = &sdk(&base, &child_token, &["burst", "1", "/models"]).await[0];
    assert_eq!(
        (widened["status"].as_u64(), widened["code"].as_str()),
        (Some(403), Some("policy_denied")),
        "{widened}"
    );
    // The child's call counts against the parent's rpm of 4. One process makes all the
    // calls, so the 15 s in which one of 4 per minute comes back isn't spent starting them.
    let (c, p) = (child_token.as_str(), parent.as_str());
    let calls = sdk(&base, p, &["chats", "gpt-4o-mini", c, p, p, p, p, c]).await;
    let seen = outcomes(&calls);
    let (ok, limited) = ((Some(200), None), (Some(429), Some("rate_limited")));
    assert_eq!(seen, [ok, ok, ok, ok, limited, limited], "{calls:?}");

    // The operator derives too; a broken token can't derive at all.
    let cli_child = env
        .cli(
            &[
                "token",
                "derive",
                &parent_id,
                "--ttl",
                "5m",
                "--deny",
                "* /v1/files/**",
            ],
            "",
        )
        .await
        .ok();
    assert!(
        cli_child.stdout.trim().starts_with("seks_openai_"),
        "{cli_child:?}"
    );
    let (status, refused) = derive(&broker, &format!("{parent}x"), serde_json::json!({})).await;
    assert_eq!(
        (status, refused["error"]["code"].as_str()),
        (401, Some("malformed_token"))
    );
    // Two tokens in two headers: which one derives would depend on who reads them.
    let bearer = format!("Bearer {parent}");
    let two = crate::support::http::send(
        "POST",
        &broker.url("/seks/v1/tokens/derive"),
        &[("authorization", &bearer), ("authorization", &bearer)],
        String::new(),
    )
    .await;
    assert_eq!(
        (two.status, two.header("x-seks-error")),
        (401, Some("ambiguous_token")),
        "{}",
        two.body
    );

    let revoked = env.cli(&["token", "revoke", &parent_id], "").await.ok();
    assert!(
        revoked.stderr.contains("2 token(s) derived from it"),
        "{}",
        revoked.stderr
    );
    let start = Instant::now();
    loop {
        let got = &sdk(&base, &child_token, &["chat", "gpt-4o-mini"]).await[0];
        if got["status"] == 401 {
            assert_eq!(got["code"], "token_revoked");
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(1),
            "the child still works 1s after its parent was revoked"
        );
    }
    let (status, _) = derive(&broker, &child_token, serde_json::json!({"ttl": "1m"})).await;
    assert_eq!(status, 403, "a revoked token can't derive");
    assert_eq!(mock.requests().len(), 4);
    broker.stop().await;
}

#[tokio::test]
async fn an_updated_child_never_outlives_its_parent_and_a_narrowed_parent_holds_its_children() {
    let (_mock, env) = setup("").await;
    let parent = env
        .create_token("main", &["--ttl", "1h", "--agent", "elder"])
        .await;
    let parent_id = env.token_id("elder").await;
    let broker = env.serve().await;
    let (status, child) = derive(&broker, &parent, serde_json::json!({"ttl": "5m"})).await;
    assert_eq!(status, 201, "{child}");
    let child_id = child["id"].as_str().unwrap().to_owned();
    let child_token = child["token"].as_str().unwrap().to_owned();
    let expiry = |id: String| {
        let env = &env;
        async move {
            let shown = env.cli(&["token", "show", &id, "--json"], "").await.ok();
            let shown: Value = serde_json::from_str(&shown.stdout).unwrap();
            shown["token"]["expires_at"].as_str().unwrap().to_owned()
        }
    };

    // Asked for ten hours, the child gets what derive would give it: its parent's end.
    env.cli(&["token", "update", &child_id, "--ttl", "10h"], "")
        .await
        .ok();
    assert_eq!(
        expiry(child_id.clone()).await,
        expiry(parent_id.clone()).await
    );

    // A parent given a shorter life takes its child's stored expiry with it.
    let before = expiry(parent_id.clone()).await;
    env.cli(&["token", "update", &parent_id, "--ttl", "10m"], "")
        .await
        .ok();
    let shortened = expiry(parent_id.clone()).await;
    assert!(shortened < before, "{shortened} !< {before}");
    assert_eq!(expiry(child_id.clone()).await, shortened);

    // Narrowing the parent reaches its child within a second.
    let models = broker.url("/api/openai/v1/models");
    let status = || async {
        crate::support::http::send(
            "GET",
            &models,
            &[("authorization", &format!("Bearer {child_token}"))],
            "",
        )
        .await
        .status
    };
    assert_eq!(status().await, 200);
    env.cli(
        &["token", "update", &parent_id, "--deny", "GET /v1/models"],
        "",
    )
    .await
    .ok();
    let start = Instant::now();
    while status().await != 403 {
        assert!(
            start.elapsed() < Duration::from_secs(1),
            "the child still lists models 1s after its parent was narrowed"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    broker.stop().await;
}

/// Once a request is held, run the CLI command `change`, give the broker a second to see it,
/// then approve the request anyway.
async fn change_then_approve(env: &Env, change: &[&str]) {
    let approval = first_pending(env).await["id"].as_str().unwrap().to_owned();
    env.cli(change, "").await.ok();
    tokio::time::sleep(Duration::from_secs(1)).await;
    env.cli(&["approvals", "approve", &approval], "").await.ok();
}

/// The first approval pending, once there is one.
async fn first_pending(env: &Env) -> Value {
    let start = Instant::now();
    loop {
        let listed: Value = serde_json::from_str(
            &env.cli(&["approvals", "list", "--json"], "")
                .await
                .ok()
                .stdout,
        )
        .unwrap();
        if let Some(first) = listed.as_array().and_then(|a| a.first()) {
            return first.clone();
        }
        assert!(
            start.elapsed() < Duration::from_secs(15),
            "no approval became pending"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Start a held SDK call, wait until it is pending, decide it with `decision`, and return
/// what the SDK got and what the pending approval said.
async fn held_call(
    env: &Env,
    base: &str,
    token: &str,
    decision: Option<&[&str]>,
) -> (Value, Value) {
    let (base, token) = (base.to_owned(), token.to_owned());
    let call = tokio::spawn(async move { sdk(&base, &token, &["chat", "gpt-4o-mini"]).await });
    let pending = first_pending(env).await;
    if let Some(decision) = decision {
        let id = pending["id"].as_str().unwrap();
        let mut args = decision.to_vec();
        args.insert(2, id);
        env.cli(&args, "").await.ok();
    }
    (call.await.unwrap()[0].clone(), pending)
}

#[tokio::test]
async fn held_requests_are_approved_denied_or_time_out_and_the_webhook_hears_of_them() {
    let mock = MockUpstream::start().await;
    let config = crate::support::config_for(&mock.url(), "")
        + &format!(
            "[approvals]\ntimeout = \"3s\"\nwebhook_url = \"{}/hooks/approval\"\n",
            mock.url()
        );
    let env = Env::new(&config);
    env.add_secret("main", "openai", KEY).await;
    let token = env
        .create_token(
            "main",
            &[
                "--require-approval",
                "POST /v1/chat/completions",
                "--agent",
                "careful",
            ],
        )
        .await;
    let broker = env.serve().await;
    let base = broker.url("/api/openai/v1");

    let (approved, pending) = held_call(&env, &base, &token, Some(&["approvals", "approve"])).await;
    assert_eq!(approved["status"], 200, "{approved}");
    assert_eq!(approved["result"]["content"], "Hello from the mock");
    let request = &pending["request"];
    assert_eq!(
        (request["agent"].as_str(), request["method"].as_str()),
        (Some("careful"), Some("POST"))
    );
    assert_eq!(
        (request["path"].as_str(), request["model"].as_str()),
        (Some("/v1/chat/completions"), Some("gpt-4o-mini"))
    );

    let (denied, _) = held_call(
        &env,
        &base,
        &token,
        Some(&["approvals", "deny", "--reason", "not during the freeze"]),
    )
    .await;
    assert_eq!(
        (denied["status"].as_u64(), denied["code"].as_str()),
        (Some(403), Some("approval_denied")),
        "{denied}"
    );
    assert!(
        denied["message"]
            .as_str()
            .unwrap()
            .contains("not during the freeze")
    );

    let start = Instant::now();
    let (timed_out, _) = held_call(&env, &base, &token, None).await;
    assert_eq!(
        (timed_out["status"].as_u64(), timed_out["code"].as_str()),
        (Some(403), Some("approval_timeout")),
        "{timed_out}"
    );
    assert!(start.elapsed() >= Duration::from_secs(3));
    let all: Value = serde_json::from_str(
        &env.cli(&["approvals", "list", "--all", "--json"], "")
            .await
            .ok()
            .stdout,
    )
    .unwrap();
    let states: Vec<&str> = all
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["state"].as_str().unwrap())
        .collect();
    assert_eq!(states, ["expired", "denied", "approved"]);

    let seen = mock.requests();
    let chats: Vec<_> = seen
        .iter()
        .filter(|r| r.target.ends_with("/chat/completions"))
        .collect();
    assert_eq!(
        chats.len(),
        1,
        "only the approved call reaches the upstream"
    );
    let hooks: Vec<_> = seen
        .iter()
        .filter(|r| r.target == "/hooks/approval")
        .collect();
    assert_eq!(hooks.len(), 3);
    for hook in hooks {
        let notice: Value = serde_json::from_slice(&hook.body).unwrap();
        assert!(notice["approval_id"].as_str().unwrap().starts_with("apr_"));
        assert_eq!(notice["request"]["rule"], "POST /v1/chat/completions");
        let raw = hook.raw();
        assert!(
            !raw.contains(KEY) && !raw.contains(&token) && !raw.contains("seks_"),
            "{raw}"
        );
    }
    broker.stop().await;
}

#[tokio::test]
async fn a_request_held_while_its_token_is_revoked_or_narrowed_is_refused_even_if_approved() {
    let (mock, env) = setup("[approvals]\ntimeout = \"20s\"\n").await;
    let broker = env.serve().await;
    let base = broker.url("/api/openai/v1");
    let hold = ["--require-approval", "POST /v1/chat/completions"];
    // What the operator does while the request waits, and what the agent gets once someone
    // approves it anyway.
    let cases: [(&str, &[&str], u64, &str); 2] = [
        ("revoked", &["token", "revoke"], 401, "token_revoked"),
        (
            "narrowed",
            &["token", "update", "--deny", "POST /v1/chat/completions"],
            403,
            "policy_denied",
        ),
    ];
    for (agent, change, status, code) in cases {
        let token = env
            .create_token("main", &[&hold[..], &["--agent", agent]].concat())
            .await;
        let id = env.token_id(agent).await;
        let (call_base, call_token) = (base.clone(), token.clone());
        let call =
            tokio::spawn(
                async move { sdk(&call_base, &call_token, &["chat", "gpt-4o-mini"]).await },
            );
        let (verb, flags) = change.split_at(2);
        change_then_approve(&env, &[verb, &[id.as_str()], flags].concat()).await;
        let got = call.await.unwrap()[0].clone();
        assert_eq!(
            (got["status"].as_u64(), got["code"].as_str()),
            (Some(status), Some(code)),
            "{agent}: {got}"
        );
    }
    assert!(
        !mock
            .requests()
            .iter()
            .any(|r| r.target.ends_with("/chat/completions")),
        "a request refused after its approval reached the upstream"
    );
    broker.stop().await;
}

#[tokio::test]
async fn a_held_request_whose_model_a_narrowed_policy_cannot_read_is_refused_once_approved() {
    let (mock, env) = setup("[approvals]\ntimeout = \"20s\"\n").await;
    let broker = env.serve().await;
    let hold = ["--require-approval", "POST /v1/images/edits"];
    let token = env
        .create_token("main", &[&hold[..], &["--agent", "editor"]].concat())
        .await;
    let id = env.token_id("editor").await;
    // A multipart upload names its model where the broker doesn't read: under a model list
    // it is refused on arrival, and so must it be when the list was set while it waited.
    let boundary = "b0undary";
    let body = format!(
        "--{boundary}\r\ncontent-disposition: form-data; name=\"model\"\r\n\r\n\
         gpt-image-1\r\n--{boundary}--\r\n"
    );
    let (url, auth) = (
        broker.url("/api/openai/v1/images/edits"),
        format!("Bearer {token}"),
    );
    let content_type = format!("multipart/form-data; boundary={boundary}");
    let call = tokio::spawn(async move {
        crate::support::http::send(
            "POST",
            &url,
            &[("authorization", &auth), ("content-type", &content_type)],
            body,
        )
        .await
    });
    let narrow = [
        &["token", "update", id.as_str(), "--model", "dall-e-2"],
        &hold[..],
    ]
    .concat();
    change_then_approve(&env, &narrow).await;
    let reply = call.await.unwrap();
    assert_eq!(
        (reply.status, reply.header("x-seks-error")),
        (400, Some("bad_body")),
        "{}",
        reply.body
    );
    assert!(
        !mock
            .requests()
            .iter()
            .any(|r| r.target.ends_with("/images/edits")),
        "a request refused after its approval reached the upstream"
    );
    broker.stop().await;
}

#[tokio::test]
async fn a_held_graphql_operation_that_mints_a_credential_is_refused_once_the_grant_is_gone() {
    let (mock, env) = setup("[approvals]\ntimeout = \"20s\"\n").await;
    env.add_secret("lab", "gitlab", "glpat-HELD-real-key-0123456789")
        .await;
    let policy = write(
        &env,
        "mint.toml",
        "mint_credentials = true\nrequire_approval = [\"* /api/graphql\"]\n",
    );
    let token = env
        .create_token("lab", &["--policy", &policy, "--agent", "held"])
        .await;
    let id = env.token_id("held").await;
    let broker = env.serve().await;
    let url = broker.url("/api/gitlab/api/graphql");
    let call = tokio::spawn(async move {
        crate::support::http::send(
            "POST",
            &url,
            &[
                ("private-token", &token),
                ("content-type", "application/json"),
            ],
            r#"{"query":"mutation { runnerCreate(input: {}) { errors } }"}"#,
        )
        .await
    });
    // The operator takes the grant away while the request waits, then approves it anyway.
    change_then_approve(
        &env,
        &[
            "token",
            "update",
            &id,
            "--require-approval",
            "* /api/graphql",
        ],
    )
    .await;
    let reply = call.await.unwrap();
    assert_eq!(
        (reply.status, reply.header("x-seks-error")),
        (403, Some("policy_denied")),
        "{}",
        reply.body
    );
    assert!(
        !mock.requests().iter().any(|r| r.target.contains("graphql")),
        "a request refused after its approval reached the upstream"
    );
    broker.stop().await;
}

#[tokio::test]
async fn policy_files_are_checked_and_changes_reach_a_running_broker_within_a_second() {
    let (mock, env) = setup("").await;
    let bad = write(&env, "bad.toml", "allow = [\"GET /v1/models\"]\nrpn = 5\n");
    let refused = env
        .cli(
            &["token", "create", "--secret", "main", "--policy", &bad],
            "",
        )
        .await;
    assert!(
        !refused.status.success() && refused.stdout.is_empty(),
        "{refused:?}"
    );
    assert!(
        refused.stderr.contains("line 2") && refused.stderr.contains("rpn"),
        "{}",
        refused.stderr
    );
    let checked = env.cli(&["policy", "check", &bad], "").await;
    assert!(
        !checked.status.success() && checked.stderr.contains("line 2"),
        "{checked:?}"
    );
    let good = write(&env, "good.toml", "deny = [\"GET /v1/models\"]\n");
    assert!(
        env.cli(&["policy", "check", &good], "")
            .await
            .ok()
            .stdout
            .contains("deny = [\"GET /v1/models\"]")
    );

    let token = env.create_token("main", &["--agent", "moving"]).await;
    let id = env.token_id("moving").await;
    env.cli(&["policy", "set", "team", &good], "").await.ok();
    let member = env
        .create_token("main", &["--policy-name", "team", "--agent", "member"])
        .await;
    let broker = env.serve().await;
    let url = broker.url("/api/openai/v1/models");
    let status = |token: String| {
        let url = url.clone();
        async move {
            crate::support::http::send(
                "GET",
                &url,
                &[("authorization", &format!("Bearer {token}"))],
                "",
            )
            .await
            .status
        }
    };
    assert_eq!(status(token.clone()).await, 200);
    assert_eq!(status(member.clone()).await, 403);

    async fn within_a_second<F: Future<Output = u16>>(check: impl Fn() -> F, want: u16) {
        let start = Instant::now();
        while check().await != want {
            assert!(
                start.elapsed() < Duration::from_secs(1),
                "not {want} after 1s"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    env.cli(&["token", "update", &id, "--deny", "GET /v1/models"], "")
        .await
        .ok();
    within_a_second(|| status(token.clone()), 403).await;
    let open = write(&env, "open.toml", "deny = [\"DELETE /v1/files/**\"]\n");
    env.cli(&["policy", "set", "team", &open], "").await.ok();
    within_a_second(|| status(member.clone()), 200).await;
    let in_use = env.cli(&["policy", "rm", "team"], "").await;
    assert!(
        !in_use.status.success() && in_use.stderr.contains("used by 1 active token"),
        "{in_use:?}"
    );
    let shown = env.cli(&["token", "show", &id], "").await.ok();
    assert!(
        shown.stdout.contains("deny = [\"GET /v1/models\"]"),
        "{}",
        shown.stdout
    );
    assert!(mock.requests().len() >= 2);
    broker.stop().await;
}

#[tokio::test]
async fn the_admin_api_decides_held_requests_behind_its_token() {
    let (mock, env) = setup("[approvals]\ntimeout = \"20s\"\n").await;
    let token = env
        .create_token(
            "main",
            &["--require-approval", "* /**", "--agent", "admin-case"],
        )
        .await;
    let admin_token = env
        .cli(&["admin", "token"], "")
        .await
        .ok()
        .stdout
        .trim()
        .to_owned();
    assert!(admin_token.starts_with("seks_admin_"));
    let broker = env
        .serve_with(&[("SEKS_ADMIN_LISTEN", "127.0.0.1:0")])
        .await;
    let admin = broker.admin_url().await;
    let send = crate::support::http::send;
    let bearer = format!("Bearer {admin_token}");

    assert_eq!(
        send("GET", &format!("{admin}/admin/v1/approvals"), &[], "")
            .await
            .status,
        401
    );
    let wrong = format!("Bearer {admin_token}x");
    assert_eq!(
        send(
            "GET",
            &format!("{admin}/admin/v1/approvals"),
            &[("authorization", &wrong)],
            ""
        )
        .await
        .status,
        401
    );
    // The agent's token is no admin token, and the agent listener serves no admin API.
    let agent = format!("Bearer {token}");
    assert_eq!(
        send(
            "GET",
            &format!("{admin}/admin/v1/approvals"),
            &[("authorization", &agent)],
            ""
        )
        .await
        .status,
        401
    );
    assert_eq!(
        send(
            "GET",
            &broker.url("/admin/v1/approvals"),
            &[("authorization", &bearer)],
            ""
        )
        .await
        .status,
        404
    );

    let base = broker.url("/api/openai/v1");
    let call = {
        let (base, token) = (base.clone(), token.clone());
        tokio::spawn(async move { sdk(&base, &token, &["chat", "gpt-4o-mini"]).await })
    };
    let start = Instant::now();
    let id = loop {
        let listed = send(
            "GET",
            &format!("{admin}/admin/v1/approvals"),
            &[("authorization", &bearer)],
            "",
        )
        .await
        .json();
        if let Some(id) = listed[0]["id"].as_str() {
            break id.to_owned();
        }
        assert!(start.elapsed() < Duration::from_secs(15), "nothing held");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let decided = send(
        "POST",
        &format!("{admin}/admin/v1/approvals/{id}/approve"),
        &[("authorization", &bearer)],
        "",
    )
    .await;
    assert_eq!(
        (decided.status, decided.json()["state"].as_str()),
        (200, Some("approved")),
        "{decided:?}"
    );
    assert_eq!(call.await.unwrap()[0]["status"], 200);
    // An oversized body is refused in the API's own shape, like every other body.
    let too_big = crate::support::http::send(
        "POST",
        &format!("{admin}/admin/v1/approvals/{id}/deny"),
        &[("authorization", &bearer)],
        format!("{{\"reason\": \"{}\"}}", "r".repeat(2 << 20)),
    )
    .await;
    assert_eq!(
        (too_big.status, too_big.json()["error"]["code"].as_str()),
        (413, Some("body_too_large"))
    );
    let again = send(
        "POST",
        &format!("{admin}/admin/v1/approvals/{id}/deny"),
        &[("authorization", &bearer)],
        "",
    )
    .await;
    assert_eq!(again.status, 409);
    assert_eq!(mock.requests().len(), 1);
    broker.stop().await;
}
