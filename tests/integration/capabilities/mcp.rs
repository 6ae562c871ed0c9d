//! The MCP server at `/mcp`, driven by the official Python MCP client.

use serde_json::{Value, json};
use sqlx::sqlite::SqliteConnectOptions;
use sqlx::{ConnectOptions, Connection, Executor};

use super::audit_records;
use crate::support::http::send;
use crate::support::{Broker, Env, run_python};

async fn mcp(broker: &Broker, token: &str, args: &[&str]) -> Value {
    let url = broker.url("/mcp");
    let mut argv = vec![url.as_str(), token];
    argv.extend_from_slice(args);
    let out = run_python("mcp_client.py", &argv, &[]).await;
    assert!(out.status.success(), "{out:#?}");
    serde_json::from_str(out.stdout.trim()).unwrap_or_else(|e| panic!("{e}: {out:#?}"))
}

#[tokio::test]
async fn the_mcp_client_sees_and_calls_exactly_the_tokens_capabilities() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("shop.db");
    let mut conn = SqliteConnectOptions::new()
        .filename(&path)
        .create_if_missing(true)
        .connect()
        .await
        .unwrap();
    conn.execute(
        "CREATE TABLE orders (id INTEGER PRIMARY KEY, customer_id INTEGER, total REAL); \
         INSERT INTO orders VALUES (1, 7, 10.5), (2, 7, 20.0), (3, 8, 1.0);",
    )
    .await
    .unwrap();
    conn.close().await.unwrap();
    let env = Env::new(
        r#"
[capabilities.customer_orders]
kind = "sql"
description = "The latest orders of one customer"
secret = "shop-db"
statement = "select id, total from orders where customer_id = ? order by id desc"
params = [{ name = "customer_id", type = "integer", description = "The customer's id" }]

[capabilities.revenue]
kind = "sql"
description = "Total revenue"
secret = "shop-db"
statement = "select sum(total) as revenue from orders"
"#,
    );
    let url = format!("sqlite://{}", path.display());
    env.add_secret("shop-db", "sql", &url).await;
    // A token minted on the capability's own secret can do nothing but call capabilities.
    let clerk = env
        .create_token(
            "shop-db",
            &["--agent", "clerk", "--capability", "customer_orders"],
        )
        .await;
    let accountant = env
        .create_token(
            "shop-db",
            &["--agent", "accountant", "--capability", "revenue"],
        )
        .await;
    let revoked = env
        .create_token(
            "shop-db",
            &["--agent", "gone", "--capability", "customer_orders"],
        )
        .await;
    let id = env.token_id("gone").await;
    env.cli(&["token", "revoke", &id], "").await.ok();
    let broker = env.serve().await;

    let listed = mcp(&broker, &clerk, &["list"]).await;
    let tools = listed["tools"].as_array().unwrap();
    assert_eq!(tools.len(), 1, "{listed}");
    assert_eq!(tools[0]["name"], "customer_orders");
    assert_eq!(tools[0]["description"], "The latest orders of one customer");
    let schema = &tools[0]["input_schema"];
    assert_eq!(schema["properties"]["customer_id"]["type"], "integer");
    assert_eq!(schema["required"], json!(["customer_id"]));

    let called = mcp(
        &broker,
        &clerk,
        &["call", "customer_orders", r#"{"customer_id": 7}"#],
    )
    .await;
    assert_eq!(called["is_error"], false, "{called}");
    assert_eq!(
        called["structured"]["rows"],
        json!([{"id": 2, "total": 20.0}, {"id": 1, "total": 10.5}])
    );
    let bad = mcp(
        &broker,
        &clerk,
        &["call", "customer_orders", r#"{"customer_id": "7"}"#],
    )
    .await;
    assert_eq!(bad["is_error"], true, "{bad}");
    assert!(
        bad["text"][0].as_str().unwrap().contains("/customer_id"),
        "{bad}"
    );

    // Another token sees only its own tool, and is refused the other's if it tries.
    let other = mcp(&broker, &accountant, &["list"]).await;
    let names: Vec<&str> = other["tools"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["revenue"]);
    let refused = mcp(
        &broker,
        &accountant,
        &["call", "customer_orders", r#"{"customer_id": 7}"#],
    )
    .await;
    assert!(
        refused["protocol_error"]
            .as_str()
            .is_some_and(|e| e.contains("unknown tool")),
        "{refused}"
    );
    assert!(refused.get("structured").is_none());

    // Without a valid token the MCP layer is never reached.
    for auth in [
        format!("Bearer {revoked}"),
        "Bearer seks_openai_nope".to_owned(),
        String::new(),
    ] {
        let reply = send(
            "POST",
            &broker.url("/mcp"),
            &[
                ("authorization", &auth),
                ("content-type", "application/json"),
                ("accept", "application/json, text/event-stream"),
            ],
            r#"{"jsonrpc": "2.0", "id": 1, "method": "tools/list"}"#,
        )
        .await;
        assert_eq!(reply.status, 401, "{auth}: {reply:?}");
        // Nor does the HTTP listing answer it with an empty list.
        let listed = send(
            "GET",
            &broker.url("/v1/capabilities"),
            &[("authorization", &auth)],
            String::new(),
        )
        .await;
        assert_eq!(listed.status, 401, "{auth}: {listed:?}");
    }

    let records = audit_records(&env, |r| {
        r.iter()
            .any(|r| r["capability"] == "customer_orders" && r["agent"] == "accountant")
    })
    .await;
    let call = records
        .iter()
        .find(|r| {
            r["path"] == "/mcp"
                && r["capability"] == "customer_orders"
                && r["agent"] == "clerk"
                && r["decision"] == "allowed"
        })
        .expect("the tools/call is audited");
    assert_eq!(call["arguments"], r#"{"customer_id":7}"#);
    assert!(
        records
            .iter()
            .any(|r| r["agent"] == "accountant" && r["error"] == "policy_denied")
    );
    broker.stop().await;
    crate::support::assert_never_leaked(&env, &url, b"");
}

#[tokio::test]
async fn what_the_mcp_layer_refuses_comes_back_as_a_json_error() {
    let env = Env::new("max_policy_body_bytes = 4096\n");
    env.add_secret("main", "openai", "sk-mcp-refusals").await;
    let token = env.create_token("main", &[]).await;
    let broker = env.serve().await;
    let auth = format!("Bearer {token}");
    let both = "application/json, text/event-stream";
    let list = r#"{"jsonrpc": "2.0", "id": 1, "method": "tools/list"}"#;
    let big = format!(
        r#"{{"jsonrpc": "2.0", "id": 1, "method": "{}"}}"#,
        "x".repeat(8192)
    );
    let cases: [(&str, &str, &str, &str, u16, &str); 6] = [
        (
            "GET",
            both,
            "application/json",
            "",
            405,
            "method_not_allowed",
        ),
        (
            "POST",
            "application/json",
            "application/json",
            list,
            406,
            "not_acceptable",
        ),
        (
            "POST",
            both,
            "text/plain",
            list,
            415,
            "unsupported_media_type",
        ),
        (
            "POST",
            both,
            "application/json",
            "{not json",
            400,
            "bad_body",
        ),
        (
            "POST",
            both,
            "application/json",
            r#"{"foo": 1}"#,
            400,
            "bad_body",
        ),
        (
            "POST",
            both,
            "application/json",
            &big,
            413,
            "body_too_large",
        ),
    ];
    for (method, accept, content_type, body, status, code) in cases {
        let what = format!(
            "{method} accept={accept} content-type={content_type} {:.20}",
            body
        );
        let reply = send(
            method,
            &broker.url("/mcp"),
            &[
                ("authorization", &auth),
                ("accept", accept),
                ("content-type", content_type),
            ],
            body.to_owned(),
        )
        .await;
        assert_eq!(reply.status, status, "{what}: {reply:?}");
        assert_eq!(
            reply.header("x-seks-error"),
            Some(code),
            "{what}: {reply:?}"
        );
        assert_eq!(
            reply.header("content-type"),
            Some("application/json"),
            "{what}"
        );
        let error: Value =
            serde_json::from_str(&reply.body).unwrap_or_else(|e| panic!("{what}: {e}"));
        assert_eq!(error["error"]["code"], code, "{what}: {error}");
        assert!(
            !error["error"]["message"].as_str().unwrap_or("").is_empty(),
            "{what}: {error}"
        );
        if status == 405 {
            assert_eq!(reply.header("allow"), Some("POST"), "{what}");
        }
    }
    // A request the MCP layer takes is answered as before.
    let reply = send(
        "POST",
        &broker.url("/mcp"),
        &[
            ("authorization", &auth),
            ("accept", both),
            ("content-type", "application/json"),
        ],
        list,
    )
    .await;
    assert_eq!(reply.status, 200, "{reply:?}");
    assert_eq!(
        serde_json::from_str::<Value>(&reply.body).unwrap()["result"]["tools"],
        json!([])
    );
    let records = audit_records(&env, |r| r.len() >= 7).await;
    assert!(
        records
            .iter()
            .any(|r| r["path"] == "/mcp" && r["error"] == "not_acceptable" && r["status"] == 406)
    );
    broker.stop().await;
}

#[tokio::test]
async fn a_tool_name_no_capability_could_have_is_not_recorded() {
    let env = Env::new("");
    env.add_secret("main", "openai", "sk-mcp-tool-names").await;
    let token = env.create_token("main", &[]).await;
    let broker = env.serve().await;
    let junk = format!("\u{1b}[2J{}", "x".repeat(3000));
    let request = json!({
        "jsonrpc": "2.0", "id": 1, "method": "tools/call",
        "params": {"name": junk, "arguments": {}},
    });
    let reply = send(
        "POST",
        &broker.url("/mcp"),
        &[
            ("authorization", &format!("Bearer {token}")),
            ("accept", "application/json, text/event-stream"),
            ("content-type", "application/json"),
        ],
        request.to_string(),
    )
    .await;
    assert_eq!(reply.status, 200, "{reply:?}");
    let answer: Value = serde_json::from_str(&reply.body).unwrap();
    assert!(answer["error"]["message"].is_string(), "{answer}");
    let records = audit_records(&env, |r| r.iter().any(|r| r["path"] == "/mcp")).await;
    let record = records.iter().find(|r| r["path"] == "/mcp").unwrap();
    assert_eq!(record["capability"], Value::Null, "{record}");
    broker.stop().await;
}
