//! Capabilities end to end: a real SMTP server, a real PostgreSQL and SQLite, the mock
//! upstream for HTTP templates, and the official MCP client — and the canary check on every
//! capability's secret.

mod email;
mod http;
mod mcp;
mod sql;

use std::time::Duration;

use serde_json::Value;

use crate::support::http::{Reply, send};
use crate::support::{Broker, Env};

/// `POST /v1/capabilities/NAME` with `token` and `args`; the raw reply is appended to
/// `responses` for the leak check.
pub async fn call(
    broker: &Broker,
    token: &str,
    name: &str,
    args: &Value,
    responses: &mut Vec<u8>,
) -> Reply {
    let reply = send(
        "POST",
        &broker.url(&format!("/v1/capabilities/{name}")),
        &[
            ("authorization", &format!("Bearer {token}")),
            ("content-type", "application/json"),
        ],
        args.to_string(),
    )
    .await;
    for (k, v) in &reply.headers {
        responses.extend_from_slice(format!("{k}: {v}\n").as_bytes());
    }
    responses.extend_from_slice(reply.body.as_bytes());
    reply
}

/// Call capability `name` with `{}` until the answer has `status` (a definition the store
/// changed reaches a running broker within a second); that answer, or a panic after 4 s.
pub async fn call_until(
    broker: &Broker,
    token: &str,
    name: &str,
    status: u16,
    responses: &mut Vec<u8>,
) -> Reply {
    for _ in 0..40 {
        let reply = call(
            broker,
            token,
            name,
            &Value::Object(Default::default()),
            responses,
        )
        .await;
        if reply.status == status {
            return reply;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("`{name}` never answered {status}");
}

/// The error code of a broker error reply, checked against its `x-seks-error` header.
pub fn code(reply: &Reply) -> String {
    let code = reply.json()["error"]["code"]
        .as_str()
        .unwrap_or_else(|| panic!("not an error: {reply:?}"))
        .to_owned();
    assert_eq!(
        reply.header("x-seks-error"),
        Some(code.as_str()),
        "{reply:?}"
    );
    code
}

/// Audit records (`seks audit query --json`), waiting until `enough` holds of them.
pub async fn audit_records(env: &Env, enough: impl Fn(&[Value]) -> bool) -> Vec<Value> {
    for _ in 0..100 {
        let out = env
            .cli(&["audit", "query", "--json", "--limit", "1000"], "")
            .await
            .ok();
        let records: Vec<Value> = out
            .stdout
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        if enough(&records) {
            return records;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("the audit log never had the records expected");
}

/// The first pending approval, waiting until there is one.
pub async fn pending_approval(env: &Env) -> serde_json::Value {
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
