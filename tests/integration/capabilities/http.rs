//! `kind = "http"`: a templated request to a provider, the key injected as the proxy does
//! and the answer scrubbed; plus the REST listing and `seks capability` commands.

use serde_json::json;

use super::{call, code};
use crate::support::http::send;
use crate::support::mock::MockUpstream;
use crate::support::{Env, assert_never_leaked, config_for};

const KEY: &str = "sk-proj-CAPABILITY/7f3a+91bd=e2c4~55aa";

#[tokio::test]
async fn http_templates_go_to_the_provider_with_its_key_and_come_back_scrubbed() {
    let mock = MockUpstream::start().await;
    let env = Env::new(&format!(
        "{}\n{}",
        config_for(&mock.url(), ""),
        r##"
[capabilities.post_note]
kind = "http"
description = "Post a note to #ops"
secret = "main"
provider = "openai"
method = "POST"
path = "/v1/notes/{channel}"
query = { dry_run = "{dry_run}" }
body = { channel = "#ops", text = "{text}", urgent = "{urgent}" }
params = [
  { name = "channel", type = "string" },
  { name = "text", type = "string", max_length = 100 },
  { name = "urgent", type = "boolean", required = false },
  { name = "dry_run", type = "boolean", required = false },
]

[capabilities.reflect]
kind = "http"
description = "An upstream that quotes the key back"
secret = "main"
provider = "openai"
method = "POST"
path = "/v1/reflect"
"##
    ));
    env.add_secret("main", "openai", KEY).await;
    let token = env
        .create_token(
            "main",
            &[
                "--agent",
                "poster",
                "--capability",
                "post_note",
                "--capability",
                "reflect",
            ],
        )
        .await;
    let broker = env.serve().await;
    let mut responses = Vec::new();

    let posted = call(
        &broker,
        &token,
        "post_note",
        &json!({"channel": "ops team", "text": "deploy done", "urgent": true}),
        &mut responses,
    )
    .await;
    assert_eq!(posted.status, 200, "{posted:?}");
    assert_eq!(posted.json()["status"], 200);
    let seen = mock.requests().pop().unwrap();
    assert_eq!(seen.method, "POST");
    assert_eq!(
        seen.target, "/v1/notes/ops%20team",
        "absent optional query values are left out"
    );
    assert_eq!(
        seen.header("authorization"),
        Some(format!("Bearer {KEY}").as_str())
    );
    let body: serde_json::Value = serde_json::from_slice(&seen.body).unwrap();
    assert_eq!(
        body,
        json!({"channel": "#ops", "text": "deploy done", "urgent": true})
    );

    // A path argument stays one segment: no way out of the provider's base URL.
    for channel in ["../../admin", "..", "a/b"] {
        let r = call(
            &broker,
            &token,
            "post_note",
            &json!({"channel": channel, "text": "x"}),
            &mut responses,
        )
        .await;
        if r.status == 200 {
            let target = mock.requests().pop().unwrap().target;
            assert!(
                target.starts_with("/v1/notes/") && !target[10..].contains('/'),
                "{target}"
            );
        } else {
            assert_eq!(
                (r.status, code(&r).as_str()),
                (400, "bad_arguments"),
                "{channel}: {r:?}"
            );
        }
    }

    // The upstream quotes the key in every form; none of it reaches the agent.
    let reflected = call(&broker, &token, "reflect", &json!({}), &mut responses).await;
    assert_eq!(reflected.status, 200, "{reflected:?}");
    assert!(reflected.body.contains("****"), "{reflected:?}");

    // The REST listing shows what this token may call.
    let listed = send(
        "GET",
        &broker.url("/v1/capabilities"),
        &[("authorization", &format!("Bearer {token}"))],
        "",
    )
    .await;
    let names: Vec<String> = listed.json()["capabilities"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["name"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(names, ["post_note", "reflect"]);
    let unknown = call(&broker, &token, "nope", &json!({}), &mut responses).await;
    assert_eq!(
        (unknown.status, code(&unknown).as_str()),
        (404, "unknown_capability")
    );
    let anonymous = send("POST", &broker.url("/v1/capabilities/reflect"), &[], "{}").await;
    assert_eq!(anonymous.status, 401);
    broker.stop().await;
    assert_never_leaked(&env, KEY, &responses);
}

#[tokio::test]
async fn operators_add_list_test_and_remove_capabilities_and_running_brokers_follow() {
    let mock = MockUpstream::start().await;
    let env = Env::with_upstream(&mock.url());
    env.add_secret("main", "openai", KEY).await;
    let token = env.create_token("main", &["--capability", "models"]).await;
    let broker = env.serve().await;
    let file = env.data_dir().join("models.toml");
    std::fs::write(
        &file,
        "[capabilities.models]\nkind = \"http\"\ndescription = \"List models\"\nsecret = \"main\"\n\
         provider = \"openai\"\nmethod = \"GET\"\npath = \"/v1/models\"\n",
    )
    .unwrap();
    let mut responses = Vec::new();
    let before = call(&broker, &token, "models", &json!({}), &mut responses).await;
    assert_eq!(before.status, 404);

    let added = env
        .cli(&["capability", "add", file.to_str().unwrap()], "")
        .await
        .ok();
    assert!(
        added.stderr.contains("added capability `models`"),
        "{added:?}"
    );
    let listed = env.cli(&["capability", "list", "--json"], "").await.ok();
    let rows: serde_json::Value = serde_json::from_str(&listed.stdout).unwrap();
    assert_eq!(rows[0]["name"], "models");
    assert_eq!(rows[0]["source"], "store");
    let mut served = None;
    for _ in 0..40 {
        let r = call(&broker, &token, "models", &json!({}), &mut responses).await;
        if r.status == 200 {
            served = Some(r);
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert_eq!(served.expect("served within seconds").json()["status"], 200);

    let tested = env
        .cli(&["capability", "test", "models", "--args", "{}"], "")
        .await
        .ok();
    let answer: serde_json::Value = serde_json::from_str(&tested.stdout).unwrap();
    assert_eq!(answer["status"], 200);
    let refused = env
        .cli(
            &["capability", "test", "models", "--args", "{\"x\": 1}"],
            "",
        )
        .await;
    assert!(
        !refused.status.success() && refused.stderr.contains("/x"),
        "{refused:?}"
    );

    let bad = env.data_dir().join("bad.toml");
    std::fs::write(
        &bad,
        "[capabilities.bad]\nkind = \"http\"\ndescription = \"d\"\nsecret = \"main\"\n\
         provider = \"openai\"\nmethod = \"GET\"\npath = \"/v1/{nope}\"\n",
    )
    .unwrap();
    let refused = env
        .cli(&["capability", "add", bad.to_str().unwrap()], "")
        .await;
    assert!(
        !refused.status.success() && refused.stderr.contains("nope"),
        "{refused:?}"
    );

    env.cli(&["capability", "rm", "models"], "").await.ok();
    let mut gone = false;
    for _ in 0..40 {
        if call(&broker, &token, "models", &json!({}), &mut responses)
            .await
            .status
            == 404
        {
            gone = true;
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert!(gone);
    broker.stop().await;
    assert_never_leaked(&env, KEY, &responses);
}

/// The first pending approval, waiting until there is one.
async fn pending_approval(env: &Env) -> serde_json::Value {
    for _ in 0..150 {
        let out = env.cli(&["approvals", "list", "--json"], "").await.ok();
        let listed: serde_json::Value = serde_json::from_str(&out.stdout).unwrap();
        if let Some(first) = listed.as_array().and_then(|a| a.first()) {
            return first.clone();
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    panic!("no approval became pending");
}

#[tokio::test]
async fn approval_holds_a_call_until_an_operator_decides() {
    let mock = MockUpstream::start().await;
    let env = Env::new(&format!(
        "{}\n{}",
        config_for(&mock.url(), ""),
        r#"
[capabilities.announce]
kind = "http"
description = "Announce something"
secret = "main"
provider = "openai"
method = "POST"
path = "/v1/announce"
body = { text = "{text}" }
params = [{ name = "text", type = "string" }]
require_approval = true

[capabilities.ping]
kind = "http"
description = "Ping"
secret = "main"
provider = "openai"
method = "GET"
path = "/v1/ping"
"#
    ));
    env.add_secret("main", "openai", KEY).await;
    let policy = env.data_dir().join("policy.toml");
    // A token's policy can hold a capability call too, by its path.
    std::fs::write(
        &policy,
        "capabilities = [\"announce\", \"ping\"]\nrequire_approval = [\"POST /v1/capabilities/ping\"]\n",
    )
    .unwrap();
    let token = env
        .create_token(
            "main",
            &["--agent", "herald", "--policy", policy.to_str().unwrap()],
        )
        .await;
    let broker = std::sync::Arc::new(env.serve().await);

    let (b, t) = (broker.clone(), token.clone());
    let held = tokio::spawn(async move {
        call(
            &b,
            &t,
            "announce",
            &json!({"text": "we ship at noon"}),
            &mut Vec::new(),
        )
        .await
    });
    let pending = pending_approval(&env).await;
    let request = &pending["request"];
    assert_eq!(request["agent"], "herald");
    assert_eq!(request["path"], "/v1/capabilities/announce");
    assert!(
        request["arguments"]
            .as_str()
            .unwrap()
            .contains("we ship at noon"),
        "{pending}"
    );
    assert!(mock.requests().is_empty(), "nothing is sent while held");
    let id = pending["id"].as_str().unwrap();
    env.cli(&["approvals", "approve", id], "").await.ok();
    let done = held.await.unwrap();
    assert_eq!(done.status, 200, "{done:?}");
    assert_eq!(mock.requests().len(), 1);

    let (b, t) = (broker.clone(), token.clone());
    let held = tokio::spawn(async move { call(&b, &t, "ping", &json!({}), &mut Vec::new()).await });
    let pending = pending_approval(&env).await;
    assert_eq!(pending["request"]["rule"], "POST /v1/capabilities/ping");
    let id = pending["id"].as_str().unwrap();
    env.cli(&["approvals", "deny", id, "--reason", "not now"], "")
        .await
        .ok();
    let denied = held.await.unwrap();
    assert_eq!(
        (denied.status, code(&denied).as_str()),
        (403, "approval_denied")
    );
    assert!(denied.body.contains("not now"));
    assert_eq!(mock.requests().len(), 1);
}
