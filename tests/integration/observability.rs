//! Health, readiness and Prometheus metrics of a running broker.

use std::time::{Duration, Instant};

use serde_json::Value;

use crate::support::http::send;
use crate::support::mock::MockUpstream;
use crate::support::{Env, list_models, openai_token, run_python};

const KEY: &str = "sk-proj-METRICS-real-key-0123456789abcdef";

/// The broker's metrics, parsed by Prometheus's own Python parser.
async fn scrape(admin: &str) -> (Vec<Value>, String) {
    let out = run_python("parse_metrics.py", &[&format!("{admin}/metrics")], &[]).await;
    assert!(out.status.success(), "/metrics does not parse: {out:#?}");
    let page: Value = serde_json::from_str(&out.stdout).unwrap();
    (
        page["samples"].as_array().unwrap().clone(),
        page["text"].as_str().unwrap().to_owned(),
    )
}

fn sample(samples: &[Value], name: &str, labels: &[(&str, &str)]) -> f64 {
    samples
        .iter()
        .filter(|s| s["name"] == name)
        .filter(|s| labels.iter().all(|(k, v)| s["labels"][*k] == *v))
        .map(|s| s["value"].as_f64().unwrap())
        .sum()
}

#[tokio::test]
async fn metrics_parse_and_count_every_request_without_a_secret_in_sight() {
    let mock = MockUpstream::start().await;
    let env = Env::with_upstream(&mock.url());
    env.add_secret("main", "openai", KEY).await;
    let token = env
        .create_token(
            "main",
            &["--agent", "counted-agent", "--deny", "* /v1/files/**"],
        )
        .await;
    let broker = env
        .serve_with(&[("SEKS_ADMIN_LISTEN", "127.0.0.1:0")])
        .await;
    let admin = broker.admin_url().await;
    let auth = format!("Bearer {token}");
    let models = broker.url("/api/openai/v1/models");
    for _ in 0..5 {
        assert_eq!(
            send("GET", &models, &[("authorization", &auth)], "")
                .await
                .status,
            200
        );
    }
    for _ in 0..3 {
        assert_eq!(send("GET", &models, &[], "").await.status, 401);
    }
    let files = broker.url("/api/openai/v1/files/x");
    for _ in 0..2 {
        assert_eq!(
            send("GET", &files, &[("authorization", &auth)], "")
                .await
                .status,
            403
        );
    }
    // The mock echoes the injected key; the broker masks it.
    let reflected = send(
        "GET",
        &broker.url("/api/openai/v1/reflect"),
        &[("authorization", &auth)],
        "",
    )
    .await;
    assert!(!reflected.body.contains(KEY));

    let want = [
        (("openai", "200", "allowed"), 6.0),
        (("openai", "401", "denied"), 3.0),
        (("openai", "403", "denied"), 2.0),
    ];
    let start = Instant::now();
    let (samples, text) = loop {
        // A request is counted when its response has ended, a moment after the client has it.
        let (samples, text) = scrape(&admin).await;
        let counted = |(provider, status, decision): (&str, &str, &str)| {
            sample(
                &samples,
                "seks_requests_total",
                &[
                    ("provider", provider),
                    ("status", status),
                    ("decision", decision),
                ],
            )
        };
        if want.iter().all(|(labels, n)| counted(*labels) == *n)
            || start.elapsed() > Duration::from_secs(5)
        {
            for (labels, n) in want {
                assert_eq!(counted(labels), n, "{labels:?}\n{text}");
            }
            break (samples, text);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(
        sample(
            &samples,
            "seks_request_duration_seconds_count",
            &[("provider", "openai")]
        ),
        11.0
    );
    assert_eq!(
        sample(
            &samples,
            "seks_upstream_duration_seconds_count",
            &[("provider", "openai")]
        ),
        6.0
    );
    assert!(
        sample(&samples, "seks_scrub_hits_total", &[]) >= 1.0,
        "{text}"
    );
    assert!(
        sample(&samples, "seks_audit_write_duration_seconds_count", &[]) >= 1.0,
        "{text}"
    );
    assert_eq!(sample(&samples, "seks_audit_records_lost_total", &[]), 0.0);
    for name in [
        "seks_connections_active",
        "seks_streams_active",
        "seks_audit_queue_depth",
    ] {
        assert!(
            samples.iter().any(|s| s["name"] == name),
            "{name} missing:\n{text}"
        );
    }
    for needle in [KEY, &token, &token[..20], "counted-agent", "/v1/files"] {
        assert!(!text.contains(needle), "/metrics holds {needle}");
    }
    // Metrics live on the admin listener only.
    assert_eq!(
        send("GET", &broker.url("/metrics"), &[], "").await.status,
        404
    );
    broker.stop().await;
}

#[tokio::test]
async fn readiness_follows_the_store_and_the_audit_log() {
    let (_mock, env, token) = openai_token(KEY, &[]).await;
    let broker = env.serve().await;
    let readyz = broker.url("/readyz");
    let ready = || send("GET", &readyz, &[], "");
    assert_eq!(
        send("GET", &broker.url("/healthz"), &[], "").await.status,
        200
    );
    let first = ready().await;
    assert_eq!(
        (first.status, first.json()["status"].clone()),
        (200, "ready".into())
    );

    env.break_audit_writes().await;
    // A request whose record can't be written makes the broker not ready.
    list_models(&broker, &token, 1).await;
    let start = Instant::now();
    let not_ready = loop {
        let reply = ready().await;
        if reply.status == 503 || start.elapsed() > Duration::from_secs(10) {
            break reply;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(not_ready.status, 503, "{}", not_ready.body);
    assert!(
        not_ready.body.contains("the audit log can't be written"),
        "{}",
        not_ready.body
    );
    assert_eq!(
        send("GET", &broker.url("/healthz"), &[], "").await.status,
        200
    );

    env.heal_audit_writes().await;
    let start = Instant::now();
    while ready().await.status != 200 {
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "never ready again"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    broker.stop().await;
}

#[tokio::test]
async fn json_logs_carry_the_request_id_the_agent_was_given() {
    let (_mock, env, token) = openai_token(KEY, &[]).await;
    let broker = env
        .serve_with(&[("SEKS_LOG_FORMAT", "json"), ("SEKS_LOG", "info")])
        .await;
    let auth = format!("Bearer {token}");
    let reply = send(
        "GET",
        &broker.url("/api/openai/v1/models"),
        &[("authorization", &auth)],
        "",
    )
    .await;
    let id = reply.header("x-seks-request-id").unwrap().to_owned();
    broker.terminate().await;
    let transcript = env.transcript();
    let line: Value = transcript
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .find(|l| l["fields"]["request_id"] == id.as_str())
        .unwrap_or_else(|| panic!("no JSON log line names {id}:\n{transcript}"));
    assert_eq!(line["target"], "seks::audit");
    assert_eq!(line["fields"]["status"], 200);
    assert!(!transcript.contains(KEY) && !transcript.contains(&token));
}
