//! `kind = "http"`: a templated request to a provider, the key injected as the proxy does
//! and the answer scrubbed; plus the REST listing and `seks capability` commands.

use serde_json::json;

use super::{audit_records, call, call_until, code, pending_approval};
use crate::support::http::{Reply, send};
use crate::support::mock::MockUpstream;
use crate::support::{Env, assert_never_leaked, config_for};

const KEY: &str = "sk-proj-CAPABILITY/7f3a+91bd=e2c4~55aa";

/// An environment whose `openai` provider is `mock`, with `capabilities` configured and
/// the secret `main` holding [`KEY`].
async fn env_with(mock: &MockUpstream, capabilities: &str) -> Env {
    let env = Env::new(&format!("{}\n{capabilities}", config_for(&mock.url(), "")));
    env.add_secret("main", "openai", KEY).await;
    env
}

#[tokio::test]
async fn http_templates_go_to_the_provider_with_its_key_and_come_back_scrubbed() {
    let mock = MockUpstream::start().await;
    let env = env_with(
        &mock,
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
"##,
    )
    .await;
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
async fn a_capability_the_token_may_not_call_looks_like_one_that_does_not_exist() {
    let mock = MockUpstream::start().await;
    let env = env_with(
        &mock,
        r#"
[capabilities.list_models]
kind = "http"
description = "List models"
secret = "main"
provider = "openai"
method = "GET"
path = "/v1/models"

[capabilities.wipe_files]
kind = "http"
description = "Delete every file"
secret = "main"
provider = "openai"
method = "DELETE"
path = "/v1/files"
"#,
    )
    .await;
    let token = env
        .create_token(
            "main",
            &["--agent", "prober", "--capability", "list_models"],
        )
        .await;
    let broker = env.serve().await;
    let mut responses = Vec::new();

    // Same-length names, so even the lengths of the answers can't tell them apart.
    let unknown = call(&broker, &token, "wipe_filez", &json!({}), &mut responses).await;
    assert_eq!(
        (unknown.status, code(&unknown).as_str()),
        (404, "unknown_capability")
    );
    let answer = |reply: &Reply, name: &str| {
        (
            reply.status,
            reply.header("x-seks-error").map(str::to_owned),
            reply.header("content-type").map(str::to_owned),
            reply.body.replace(name, "NAME"),
        )
    };
    for args in [json!({}), json!({"bogus": 1})] {
        let hidden = call(&broker, &token, "wipe_files", &args, &mut responses).await;
        assert_eq!(
            answer(&hidden, "wipe_files"),
            answer(&unknown, "wipe_filez"),
            "{args}"
        );
    }
    assert!(mock.requests().is_empty());

    // The operator's audit log still says why.
    let records = audit_records(&env, |r| r.iter().any(|r| r["capability"] == "wipe_files")).await;
    let refused = records
        .iter()
        .find(|r| r["capability"] == "wipe_files")
        .unwrap();
    assert_eq!(refused["error"], "policy_denied", "{refused}");
    broker.stop().await;
    assert_never_leaked(&env, KEY, &responses);
}

#[tokio::test]
async fn an_empty_path_argument_is_no_segment_and_cannot_reach_the_collection() {
    let mock = MockUpstream::start().await;
    let env = env_with(
        &mock,
        r##"
[capabilities.customer]
kind = "http"
description = "One customer"
secret = "main"
provider = "openai"
method = "GET"
path = "/v1/customers/{id}"
params = [{ name = "id", type = "string" }]
"##,
    )
    .await;
    let token = env
        .create_token("main", &["--capability", "customer"])
        .await;
    let broker = env.serve().await;
    let mut responses = Vec::new();

    let one = call(
        &broker,
        &token,
        "customer",
        &json!({"id": "c7"}),
        &mut responses,
    )
    .await;
    assert_eq!(one.status, 200, "{one:?}");
    assert_eq!(mock.requests().pop().unwrap().target, "/v1/customers/c7");

    // "" would make `/v1/customers/`: the collection, not one customer.
    let all = call(
        &broker,
        &token,
        "customer",
        &json!({"id": ""}),
        &mut responses,
    )
    .await;
    assert_eq!(
        (all.status, code(&all).as_str()),
        (400, "bad_arguments"),
        "{all:?} reached {:?}",
        mock.requests().last().map(|r| r.target.clone())
    );
    assert!(
        all.json()["error"]["message"]
            .as_str()
            .unwrap()
            .contains("/id"),
        "{all:?}"
    );
    // The schema models see says so too.
    let listed = send(
        "GET",
        &broker.url("/v1/capabilities"),
        &[("authorization", &format!("Bearer {token}"))],
        "",
    )
    .await;
    assert_eq!(
        listed.json()["capabilities"][0]["input_schema"]["properties"]["id"]["minLength"],
        1
    );
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
    let served = call_until(&broker, &token, "models", 200, &mut responses).await;
    assert_eq!(served.json()["status"], 200);

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
    call_until(&broker, &token, "models", 404, &mut responses).await;
    broker.stop().await;
    assert_never_leaked(&env, KEY, &responses);
}

#[tokio::test]
async fn approval_holds_a_call_until_an_operator_decides() {
    let mock = MockUpstream::start().await;
    let env = env_with(
        &mock,
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
"#,
    )
    .await;
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

    // The approver sees all of what would be sent, not just its start.
    let text = format!("{}we ship at noon", "la ".repeat(60));
    // An agent's token in its arguments is kept out of the approvals table, as out of logs.
    let with_token = format!("{text} {token}");
    let (b, t, args) = (broker.clone(), token.clone(), json!({ "text": with_token }));
    let held = tokio::spawn(async move { call(&b, &t, "announce", &args, &mut Vec::new()).await });
    let pending = pending_approval(&env).await;
    let request = &pending["request"];
    assert_eq!(request["agent"], "herald");
    assert_eq!(request["path"], "/v1/capabilities/announce");
    let arguments = request["arguments"].as_str().unwrap();
    assert!(
        arguments.contains(&text) && !arguments.contains(&token),
        "{pending}"
    );
    assert!(mock.requests().is_empty(), "nothing is sent while held");
    let id = pending["id"].as_str().unwrap();
    let listed = env.cli(&["approvals", "list"], "").await.ok().stdout;
    assert!(
        !listed.contains("noon") && listed.contains("approvals show"),
        "{listed}"
    );
    let shown = env.cli(&["approvals", "show", id], "").await.ok().stdout;
    assert!(
        shown.contains(&text) && shown.contains("pending"),
        "{shown}"
    );
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

    // The operator takes `announce` away while a call to it waits; approving it later
    // doesn't bring it back.
    let (b, t) = (broker.clone(), token.clone());
    let held = tokio::spawn(async move {
        call(&b, &t, "announce", &json!({"text": "x"}), &mut Vec::new()).await
    });
    let pending = pending_approval(&env).await;
    let narrower = env.data_dir().join("narrower.toml");
    std::fs::write(&narrower, "capabilities = [\"ping\"]\n").unwrap();
    let id = env.token_id("herald").await;
    let policy_arg = ["--policy", narrower.to_str().unwrap()];
    env.cli(
        &[&["token", "update", id.as_str()][..], &policy_arg].concat(),
        "",
    )
    .await
    .ok();
    env.cli(
        &["approvals", "approve", pending["id"].as_str().unwrap()],
        "",
    )
    .await
    .ok();
    let refused = held.await.unwrap();
    assert_eq!(
        (refused.status, code(&refused).as_str()),
        (404, "unknown_capability"),
        "{refused:?}"
    );
    assert_eq!(mock.requests().len(), 1);
}

#[tokio::test]
async fn a_capability_redefined_while_a_call_waits_for_approval_is_not_run() {
    let mock = MockUpstream::start().await;
    let env = Env::with_upstream(&mock.url());
    env.add_secret("main", "openai", KEY).await;
    let token = env.create_token("main", &["--capability", "notify"]).await;
    let file = env.data_dir().join("notify.toml");
    let define = async |path: &str| {
        std::fs::write(
            &file,
            format!(
                "[capabilities.notify]\nkind = \"http\"\ndescription = \"Notify\"\nsecret = \"main\"\n\
                 provider = \"openai\"\nmethod = \"POST\"\npath = \"{path}\"\nrequire_approval = true\n"
            ),
        )
        .unwrap();
        env.cli(&["capability", "add", file.to_str().unwrap()], "")
            .await
            .ok();
    };
    define("/v1/notify").await;
    let broker = std::sync::Arc::new(env.serve().await);
    let held_call = || {
        let (b, t) = (broker.clone(), token.clone());
        tokio::spawn(async move { call(&b, &t, "notify", &json!({}), &mut Vec::new()).await })
    };

    // The operator approves what was shown: a call of the definition there was then.
    let held = held_call();
    let pending = pending_approval(&env).await;
    define("/v1/elsewhere").await;
    let id = pending["id"].as_str().unwrap();
    env.cli(&["approvals", "approve", id], "").await.ok();
    let refused = held.await.unwrap();
    assert_eq!(
        (refused.status, code(&refused).as_str()),
        (409, "capability_changed"),
        "{refused:?}"
    );
    assert!(mock.requests().is_empty());

    // Called again, the new definition waits for its own approval.
    let held = held_call();
    let pending = pending_approval(&env).await;
    let id = pending["id"].as_str().unwrap();
    env.cli(&["approvals", "approve", id], "").await.ok();
    assert_eq!(held.await.unwrap().status, 200);
    let sent = mock.requests();
    assert_eq!(sent.len(), 1);
    assert_eq!(sent[0].target, "/v1/elsewhere");
}

#[tokio::test]
async fn the_admin_api_and_remote_cli_add_show_try_and_remove_capabilities() {
    let mock = MockUpstream::start().await;
    let env = env_with(
        &mock,
        r#"
[capabilities.pinned]
kind = "http"
description = "Defined in the config file"
secret = "main"
provider = "openai"
method = "GET"
path = "/v1/models"
"#,
    )
    .await;
    let token = env.create_token("main", &["--capability", "reflect"]).await;
    let admin_token = env.admin_token().await;
    let broker = env.serve().await;
    let admin = broker.admin_url().await;
    let mut responses = Vec::new();
    // Another machine: an empty data directory, so everything goes through the admin API.
    let elsewhere = Env::new("");
    let remote_env = [("SEKS_ADMIN_TOKEN", admin_token.as_str())];
    let remote = |args: &[&str]| {
        let mut all = vec![
            "--remote".to_owned(),
            admin.clone(),
            "capability".to_owned(),
        ];
        all.extend(args.iter().map(|a| (*a).to_owned()));
        let elsewhere = &elsewhere;
        async move {
            let all: Vec<&str> = all.iter().map(String::as_str).collect();
            elsewhere.cli_with_env(&all, "", &remote_env).await
        }
    };
    let api = |method: &'static str, path: &str, body: serde_json::Value| {
        let url = format!("{admin}{path}");
        let bearer = format!("Bearer {admin_token}");
        async move {
            let body = if body.is_null() {
                String::new()
            } else {
                body.to_string()
            };
            send(method, &url, &[("authorization", bearer.as_str())], body).await
        }
    };

    let file = elsewhere.data_dir().join("reflect.toml");
    std::fs::write(
        &file,
        "[capabilities.reflect]\nkind = \"http\"\ndescription = \"Quotes the key back\"\n\
         secret = \"main\"\nprovider = \"openai\"\nmethod = \"POST\"\npath = \"/v1/reflect\"\n\
         params = [{ name = \"note\", type = \"string\", required = false }]\n",
    )
    .unwrap();
    let added = remote(&["add", file.to_str().unwrap()]).await.ok();
    assert!(
        added.stderr.contains("added capability `reflect`") && !added.stderr.contains("note:"),
        "{added:?}"
    );
    let listed = remote(&["list", "--json"]).await.ok();
    let rows: serde_json::Value = serde_json::from_str(&listed.stdout).unwrap();
    let sources: Vec<(&str, &str)> = rows
        .as_array()
        .unwrap()
        .iter()
        .map(|r| (r["name"].as_str().unwrap(), r["source"].as_str().unwrap()))
        .collect();
    assert_eq!(sources, [("pinned", "config"), ("reflect", "store")]);
    let shown = remote(&["show", "reflect"]).await.ok();
    let shown: serde_json::Value = serde_json::from_str(&shown.stdout).unwrap();
    assert_eq!(
        shown["input_schema"]["properties"]["note"]["type"],
        "string"
    );

    // The running broker serves it to the agent.
    call_until(&broker, &token, "reflect", 200, &mut responses).await;

    // A trial run goes out with the key and comes back scrubbed, and is audited.
    let tried = remote(&["test", "reflect", "--args", "{\"note\": \"hi\"}"])
        .await
        .ok();
    let answer: serde_json::Value = serde_json::from_str(&tried.stdout).unwrap();
    assert_eq!(answer["status"], 200, "{tried:?}");
    assert!(tried.stdout.contains("****"), "{tried:?}");
    let seen = mock.requests().pop().unwrap();
    assert_eq!(
        (seen.target.as_str(), seen.header("authorization")),
        ("/v1/reflect", Some(format!("Bearer {KEY}").as_str()))
    );
    let records = env
        .cli(&["audit", "query", "--agent", "operator", "--json"], "")
        .await
        .ok();
    let lines: Vec<&str> = records.stdout.lines().collect();
    assert_eq!(lines.len(), 1, "{records:?}");
    let record: serde_json::Value = serde_json::from_str(lines[0]).unwrap();
    assert_eq!(
        (
            &record["method"],
            &record["capability"],
            &record["client"],
            &record["status"]
        ),
        (
            &json!("TEST"),
            &json!("reflect"),
            &json!("admin-api"),
            &json!(200)
        ),
        "{record}"
    );
    let refused = remote(&["test", "reflect", "--args", "{\"x\": 1}"]).await;
    assert!(
        !refused.status.success()
            && refused.stderr.contains("/x")
            && refused.stderr.contains("400"),
        "{refused:?}"
    );
    let too_big = api(
        "POST",
        "/admin/v1/capabilities/reflect/test",
        json!({"arguments": {"note": "n".repeat(2 << 20)}}),
    )
    .await;
    assert_eq!(
        (too_big.status, too_big.json()["error"]["code"].as_str()),
        (413, Some("body_too_large")),
        "{}",
        too_big.body.get(..200).unwrap_or(&too_big.body)
    );
    let wrong_method = api("PATCH", "/admin/v1/capabilities", json!(null)).await;
    assert_eq!(
        (
            wrong_method.status,
            wrong_method.json()["error"]["code"].as_str()
        ),
        (405, Some("method_not_allowed"))
    );
    let garbled = api("GET", "/admin/v1/capabilities/%FF", json!(null)).await;
    assert_eq!(garbled.status, 400);
    assert!(garbled.json()["error"]["code"].is_string(), "{garbled:?}");
    let unknown = api("POST", "/admin/v1/capabilities/nope/test", json!(null)).await;
    assert_eq!(
        (unknown.status, unknown.json()["error"]["code"].as_str()),
        (404, Some("unknown_capability")),
        "{unknown:?}"
    );

    // Definitions are checked, all before any is stored.
    let http = |secret: &str| {
        json!({"kind": "http", "description": "d", "secret": secret, "provider": "openai",
            "method": "GET", "path": "/v1/models"})
    };
    let sql = json!({"kind": "sql", "description": "d", "secret": "main", "statement": "SELECT 1"});
    for (body, status, says) in [
        (
            json!({"capabilities": {"pinned": http("main")}}),
            409,
            "config file",
        ),
        (
            json!({"capabilities": {"fine": http("main"), "wrong": sql}}),
            400,
            "needs a `sql` secret",
        ),
        (
            json!({"capabilities": {"Bad Name": http("main")}}),
            400,
            "names are",
        ),
        (json!({"capabilities": {}}), 400, "no capabilities given"),
        (json!({"capabilities": {"x": {"kind": "ftp"}}}), 400, "ftp"),
    ] {
        let r = api("POST", "/admin/v1/capabilities", body.clone()).await;
        assert_eq!(r.status, status, "{body}: {r:?}");
        assert!(r.body.contains(says), "{body}: {r:?}");
    }
    let fine = api("GET", "/admin/v1/capabilities/fine", json!(null)).await;
    assert_eq!(fine.status, 404, "nothing of a refused batch is stored");
    let missing_secret = api(
        "POST",
        "/admin/v1/capabilities",
        json!({"capabilities": {"later": http("not-yet")}}),
    )
    .await;
    assert_eq!(missing_secret.status, 201, "{missing_secret:?}");
    assert_eq!(missing_secret.json()[0]["secret_exists"], false);
    for (name, status) in [("pinned", 409), ("nope", 404), ("later", 204)] {
        let path = format!("/admin/v1/capabilities/{name}");
        assert_eq!(
            api("DELETE", &path, json!(null)).await.status,
            status,
            "{name}"
        );
    }

    remote(&["rm", "reflect"]).await.ok();
    call_until(&broker, &token, "reflect", 404, &mut responses).await;
    broker.stop().await;
    assert_never_leaked(&env, KEY, &responses);
    assert_never_leaked(&elsewhere, KEY, &[]);
}

#[tokio::test]
async fn a_capability_mints_no_credential_unless_the_operator_allows_it() {
    let mock = MockUpstream::start().await;
    let env = env_with(
        &mock,
        r##"
[capabilities.realtime]
kind = "http"
description = "Something about a Realtime resource"
secret = "main"
provider = "openai"
method = "POST"
path = "/v1/realtime/{what}"
params = [{ name = "what", type = "string" }]

[capabilities.ephemeral_key]
kind = "http"
description = "An ephemeral Realtime key"
secret = "main"
provider = "openai"
method = "POST"
path = "/v1/realtime/client_secrets"
"##,
    )
    .await;
    let both = "capabilities = [\"realtime\", \"ephemeral_key\"]\n";
    let plain_policy = env.data_dir().join("plain.toml");
    std::fs::write(&plain_policy, both).unwrap();
    let mint_policy = env.data_dir().join("mint.toml");
    std::fs::write(&mint_policy, format!("{both}mint_credentials = true\n")).unwrap();
    let plain = env
        .create_token("main", &["--policy", plain_policy.to_str().unwrap()])
        .await;
    let minter = env
        .create_token("main", &["--policy", mint_policy.to_str().unwrap()])
        .await;
    let broker = env.serve().await;
    let mut responses = Vec::new();
    let minted = || {
        mock.requests()
            .iter()
            .filter(|r| r.target.to_ascii_lowercase().contains("client_secrets"))
            .count()
    };

    // Whether the operator's template or the agent's argument names the route, and however
    // the argument spells it, the key would reach the agent: refused, nothing sent.
    for (name, args) in [
        ("ephemeral_key", json!({})),
        ("realtime", json!({"what": "client_secrets"})),
        ("realtime", json!({"what": "Client_Secrets"})),
        ("realtime", json!({"what": "client_secrets;v=1"})),
    ] {
        let r = call(&broker, &plain, name, &args, &mut responses).await;
        assert_needs_mint_credentials(&r, &format!("{name} {args}"));
    }
    assert_eq!(minted(), 0, "{:?}", mock.requests());

    // Other paths are as before, and the operator's grant opens the route.
    let other = call(
        &broker,
        &plain,
        "realtime",
        &json!({"what": "calls"}),
        &mut responses,
    )
    .await;
    assert_eq!(other.status, 200, "{other:?}");
    let granted = call(
        &broker,
        &minter,
        "ephemeral_key",
        &json!({}),
        &mut responses,
    )
    .await;
    assert_eq!(granted.status, 200, "{granted:?}");
    assert_eq!(minted(), 1);
    broker.stop().await;
    assert_never_leaked(&env, KEY, &responses);
}

#[tokio::test]
async fn a_capability_answer_withholds_credential_members_unless_the_operator_allows_it() {
    let mock = MockUpstream::start().await;
    // The mock answers with `x-mock-answer`: a maintainer's view of a GitLab project, which
    // carries the runner registration token (it registers a runner against GitLab directly).
    let project = r#"{"id":7,"runners_token":"GR1348941project","namespace":{"id":3,"runners_token":"GR1348941group"}}"#;
    let env = env_with(
        &mock,
        &format!(
            r##"
[capabilities.project]
kind = "http"
description = "One GitLab project"
secret = "lab"
provider = "gitlab"
method = "GET"
path = "/api/v4/projects/{{id}}"
headers = {{ "x-mock-answer" = '{project}' }}
params = [{{ name = "id", type = "integer" }}]
"##
        ),
    )
    .await;
    env.add_secret("lab", "gitlab", "glpat-CAPABILITY-key-0123456789")
        .await;
    let granted = env.data_dir().join("granted.toml");
    std::fs::write(&granted, "capabilities = [\"project\"]\n").unwrap();
    let minting = env.data_dir().join("minting.toml");
    std::fs::write(
        &minting,
        "capabilities = [\"project\"]\nmint_credentials = true\n",
    )
    .unwrap();
    let plain = env
        .create_token("lab", &["--policy", granted.to_str().unwrap()])
        .await;
    let minter = env
        .create_token("lab", &["--policy", minting.to_str().unwrap()])
        .await;
    let broker = env.serve().await;
    let mut responses = Vec::new();

    // As through the proxy: the answer comes, without the token.
    let r = call(
        &broker,
        &plain,
        "project",
        &json!({"id": 7}),
        &mut responses,
    )
    .await;
    assert_eq!(r.status, 200, "{r:?}");
    assert!(
        !r.body.contains("GR1348941") && r.body.contains("withheld by seks"),
        "{r:?}"
    );
    assert_eq!(r.json()["body"]["namespace"]["id"], 3, "{r:?}");
    let granted = call(
        &broker,
        &minter,
        "project",
        &json!({"id": 7}),
        &mut responses,
    )
    .await;
    assert_eq!(granted.json()["body"]["runners_token"], "GR1348941project");
    broker.stop().await;
    assert_never_leaked(&env, "glpat-CAPABILITY-key-0123456789", &responses);
}
#[tokio::test]
async fn a_capability_graphql_operation_mints_no_credential_unless_the_operator_allows_it() {
    let mock = MockUpstream::start().await;
    let env = env_with(
        &mock,
        r##"
[capabilities.gitlab_graphql]
kind = "http"
description = "Ask GitLab's GraphQL API"
secret = "lab"
provider = "gitlab"
method = "POST"
path = "/api/graphql"
body = { query = "{query}" }
params = [{ name = "query", type = "string" }]

[capabilities.gitlab_graphql_get]
kind = "http"
description = "Ask GitLab's GraphQL API, in the URL"
secret = "lab"
provider = "gitlab"
method = "GET"
path = "/api/graphql"
query = { query = "{query}" }
params = [{ name = "query", type = "string" }]
"##,
    )
    .await;
    env.add_secret("lab", "gitlab", "glpat-CAPABILITY-key-0123456789")
        .await;
    let both = "capabilities = [\"gitlab_graphql\", \"gitlab_graphql_get\"]\n";
    let granted = env.data_dir().join("granted.toml");
    std::fs::write(&granted, both).unwrap();
    let minting = env.data_dir().join("minting.toml");
    std::fs::write(&minting, format!("{both}mint_credentials = true\n")).unwrap();
    let plain = env
        .create_token("lab", &["--policy", granted.to_str().unwrap()])
        .await;
    let minter = env
        .create_token("lab", &["--policy", minting.to_str().unwrap()])
        .await;
    let broker = env.serve().await;
    let mut responses = Vec::new();
    let reached = || {
        mock.requests()
            .iter()
            .filter(|r| r.target.contains("graphql"))
            .count()
    };
    let mint =
        "mutation { personalAccessTokenCreate(input: {name: \"x\", scopes: [API]}) { token } }";

    // A personal access token works without the broker: refused, whichever way it is asked.
    for name in ["gitlab_graphql", "gitlab_graphql_get"] {
        let r = call(
            &broker,
            &plain,
            name,
            &json!({"query": mint}),
            &mut responses,
        )
        .await;
        assert_needs_mint_credentials(&r, name);
    }
    assert_eq!(reached(), 0, "{:?}", mock.requests());

    // Other operations go as before, and the operator's grant opens the field.
    let read = call(
        &broker,
        &plain,
        "gitlab_graphql",
        &json!({"query": "{ currentUser { username } }"}),
        &mut responses,
    )
    .await;
    assert_eq!(read.status, 200, "{read:?}");
    let minted = call(
        &broker,
        &minter,
        "gitlab_graphql",
        &json!({"query": mint}),
        &mut responses,
    )
    .await;
    assert_eq!(minted.status, 200, "{minted:?}");
    assert_eq!(reached(), 2);
    broker.stop().await;
    assert_never_leaked(&env, "glpat-CAPABILITY-key-0123456789", &responses);
}

/// `r` is the refusal of a call whose answer would hand out a credential usable without
/// the broker; `what` names the call.
fn assert_needs_mint_credentials(r: &Reply, what: &str) {
    assert_eq!(
        (r.status, code(r).as_str()),
        (403, "policy_denied"),
        "{what}: {r:?}"
    );
    assert!(r.body.contains("mint_credentials = true"), "{r:?}");
}

#[tokio::test]
async fn a_capability_answer_in_any_content_coding_is_refused_unread() {
    let mock = MockUpstream::start().await;
    // Each capability's answer quotes the key in every form, compressed as its name says:
    // one `Content-Encoding` line per coding, so `identity_then_gzip` is gzip behind an
    // `identity` line that alone would let it pass unread.
    let encodings = [
        ("plain", "identity"),
        ("gzip", "gzip"),
        ("identity_then_gzip", "identity,gzip"),
    ];
    let capabilities: String = encodings
        .iter()
        .map(|(name, encoding)| {
            format!(
                r##"
[capabilities.{name}]
kind = "http"
description = "The key quoted back in {encoding}"
secret = "main"
provider = "openai"
method = "GET"
path = "/v1/reflect"
query = {{ encoding = "{encoding}" }}
"##
            )
        })
        .collect();
    let env = env_with(&mock, &capabilities).await;
    let mut args = vec!["--agent", "reader"];
    for (name, _) in &encodings {
        args.extend(["--capability", name]);
    }
    let token = env.create_token("main", &args).await;
    let broker = env.serve().await;
    let mut responses = Vec::new();

    let plain = call(&broker, &token, "plain", &json!({}), &mut responses).await;
    assert_eq!(plain.status, 200, "{plain:?}");
    assert!(plain.json()["body"].is_object(), "{plain:?}");
    for (name, _) in &encodings[1..] {
        let r = call(&broker, &token, name, &json!({}), &mut responses).await;
        assert_eq!(
            (r.status, code(&r).as_str()),
            (502, "backend_refused"),
            "{name}: {r:?}"
        );
    }
    assert_eq!(mock.requests().len(), encodings.len());
    broker.stop().await;
    assert_never_leaked(&env, KEY, &responses);
}
