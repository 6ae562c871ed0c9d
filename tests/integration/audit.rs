//! The audit log through a running broker: one record per request whatever its outcome,
//! a chain that names tampering, durability across `kill -9`, failing closed, and a commit
//! whose acknowledgement was lost written once.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use http_body_util::BodyExt;
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::support::http::{Reply, send, send_streaming, try_send};
use crate::support::mock::MockUpstream;
use crate::support::pg::{self, LostCommit, TestDb};
use crate::support::{CliOutput, Env, config_for, list_models, openai_token, run_python};

const KEY: &str = "sk-proj-AUDIT-real-key-0123456789abcdef";
const REQUEST_ID: &str = "x-seks-request-id";

/// Every record in the log, by request id (each id must appear once).
pub async fn records(env: &Env) -> HashMap<String, Value> {
    let out = env.cli(&["audit", "export"], "").await.ok();
    let mut by_id = HashMap::new();
    for line in out.stdout.lines() {
        let record: Value = serde_json::from_str(line).unwrap();
        let id = record["request_id"].as_str().unwrap().to_owned();
        assert!(
            by_id.insert(id, record).is_none(),
            "a request has two records"
        );
    }
    by_id
}

fn id_of(reply: &Reply) -> String {
    reply
        .header(REQUEST_ID)
        .expect("every response names its request")
        .to_owned()
}

#[tokio::test]
async fn every_outcome_leaves_exactly_one_record_with_the_right_fields() {
    let mock = MockUpstream::start().await;
    let config = config_for(&mock.url(), "").replace(
        &format!("[providers.groq]\nbase_url = \"{}\"", mock.url()),
        "[providers.groq]\nbase_url = \"http://127.0.0.1:1\"",
    ) + "[approvals]\ntimeout = \"2s\"\n";
    let env = Env::new(&config);
    env.add_secret("main", "openai", KEY).await;
    env.add_secret("fast", "groq", KEY).await;
    let token = env.create_token("main", &["--agent", "worker"]).await;
    let denied = env
        .create_token(
            "main",
            &[
                "--agent",
                "fenced",
                "--deny",
                "* /v1/files/**",
                "--rpm",
                "1",
            ],
        )
        .await;
    let held = env
        .create_token(
            "main",
            &[
                "--agent",
                "careful",
                "--require-approval",
                "POST /v1/images/generations",
            ],
        )
        .await;
    let groq = env.create_token("fast", &["--agent", "quick"]).await;
    let broker = env.serve().await;
    let bearer = |t: &str| format!("Bearer {t}");
    let chat = broker.url("/api/openai/v1/chat/completions");
    let body = r#"{"model":"gpt-4o-mini","messages":[{"role":"user","content":"hi"}]}"#;

    let mut expected: Vec<(String, u16, &str, Option<&str>)> = Vec::new();
    let mut expect =
        |reply: Reply, status: u16, decision: &'static str, error: Option<&'static str>| {
            assert_eq!(reply.status, status, "{}", reply.body);
            expected.push((id_of(&reply), status, decision, error));
        };
    let ok = send("POST", &chat, &[("authorization", &bearer(&token))], body).await;
    let ok_id = id_of(&ok);
    expect(ok, 200, "allowed", None);
    let none = String::new();
    // (method, path, token, body, status, decision, error), in this order: the rate limit
    // counts the allowed call before it.
    let outcomes = [
        (
            "GET",
            "/api/openai/v1/models?limit=2",
            &none,
            "",
            401,
            "denied",
            Some("missing_token"),
        ),
        (
            "GET",
            "/api/nowhere/v1/x",
            &none,
            "",
            404,
            "denied",
            Some("unknown_provider"),
        ),
        (
            "GET",
            "/api/openai/v1/files/abc",
            &denied,
            "",
            403,
            "denied",
            Some("policy_denied"),
        ),
        (
            "GET",
            "/api/openai/v1/models",
            &denied,
            "",
            200,
            "allowed",
            None,
        ),
        (
            "GET",
            "/api/openai/v1/models",
            &denied,
            "",
            429,
            "denied",
            Some("rate_limited"),
        ),
        (
            "GET",
            "/api/groq/openai/v1/models",
            &groq,
            "",
            502,
            "upstream_error",
            Some("upstream_unreachable"),
        ),
        (
            "POST",
            "/api/openai/v1/images/generations",
            &held,
            "{}",
            403,
            "denied",
            Some("approval_timeout"),
        ),
    ];
    for (method, path, token, request_body, status, decision, error) in outcomes {
        let auth = bearer(token);
        let headers: &[(&str, &str)] = if token.is_empty() {
            &[]
        } else {
            &[("authorization", &auth)]
        };
        let reply = send(method, &broker.url(path), headers, request_body.to_owned()).await;
        expect(reply, status, decision, error);
    }
    // A held request an operator approves.
    let images = broker.url("/api/openai/v1/images/generations");
    let auth = bearer(&held);
    let call =
        tokio::spawn(async move { send("POST", &images, &[("authorization", &auth)], "{}").await });
    let start = Instant::now();
    loop {
        let listed: Value = serde_json::from_str(
            &env.cli(&["approvals", "list", "--json"], "")
                .await
                .ok()
                .stdout,
        )
        .unwrap();
        if let Some(id) = listed[0]["id"].as_str() {
            env.cli(&["approvals", "approve", id], "").await.ok();
            break;
        }
        assert!(start.elapsed() < Duration::from_secs(10), "nothing held");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    expect(call.await.unwrap(), 200, "approved", None);
    // Deriving a token through the agent API is audited too, however it ends.
    let derive = broker.url("/seks/v1/tokens/derive");
    let auth = bearer(&token);
    expect(
        send("GET", &derive, &[("authorization", &auth)], "").await,
        405,
        "denied",
        Some("method_not_allowed"),
    );
    expect(
        send(
            "POST",
            &derive,
            &[("authorization", &auth)],
            r#"{"ttl":"5m"}"#,
        )
        .await,
        201,
        "allowed",
        None,
    );
    expect(
        send("POST", &derive, &[("authorization", &auth)], "{not json").await,
        400,
        "denied",
        Some("bad_request"),
    );
    broker.terminate().await;

    let records = records(&env).await;
    assert_eq!(records.len(), expected.len(), "{records:#?}");
    for (id, status, decision, error) in &expected {
        let record = &records[id];
        assert_eq!(record["status"], *status, "{record}");
        assert_eq!(record["decision"], *decision, "{record}");
        assert_eq!(record["error"].as_str(), *error, "{record}");
        assert_eq!(record["tenant"], "default");
        assert!(record["time"].as_str().unwrap().ends_with('Z'));
        assert!(record["client"].as_str().unwrap().starts_with("127.0.0.1:"));
        if error.is_some() && record["path"] != "/seks/v1/tokens/derive" {
            assert!(!record["reason"].as_str().unwrap().is_empty(), "{record}");
        }
    }
    let ok = &records[&ok_id];
    assert_eq!(
        (
            &ok["agent"],
            &ok["secret"],
            &ok["provider"],
            &ok["method"],
            &ok["path"]
        ),
        (
            &Value::from("worker"),
            &Value::from("main"),
            &Value::from("openai"),
            &Value::from("POST"),
            &Value::from("/v1/chat/completions")
        )
    );
    assert_eq!(
        (&ok["model"], &ok["usage_tokens"]),
        (&Value::from("gpt-4o-mini"), &Value::from(9))
    );
    assert_eq!(ok["bytes_in"], body.len());
    assert!(ok["bytes_out"].as_u64().unwrap() > 100, "{ok}");
    assert!(ok["upstream_us"].as_u64().unwrap() > 0);
    assert!(ok["total_us"].as_u64().unwrap() >= ok["upstream_us"].as_u64().unwrap());
    let refused = records
        .values()
        .find(|r| r["error"] == "policy_denied")
        .unwrap();
    assert_eq!(refused["agent"], "fenced");
    assert!(
        refused["reason"]
            .as_str()
            .unwrap()
            .contains("deny: * /v1/files/**")
    );
    let unauthenticated = records
        .values()
        .find(|r| r["error"] == "missing_token")
        .unwrap();
    assert_eq!(unauthenticated["path"], "/v1/models?limit=2");

    // No record, and nothing the export holds, carries the secret or a full token.
    let export = env.cli(&["audit", "export"], "").await.ok().stdout;
    assert_eq!(export.lines().count(), expected.len());
    for needle in [KEY, &token, &denied, &held, &groq] {
        assert!(!export.contains(needle), "the audit log holds {needle}");
    }
    let verified = env.cli(&["audit", "verify"], "").await.ok();
    assert!(
        verified
            .stdout
            .contains(&format!("{} records verified", expected.len())),
        "{verified:#?}"
    );
    let table = env
        .cli(
            &["audit", "query", "--agent", "fenced", "--status", "4xx"],
            "",
        )
        .await
        .ok()
        .stdout;
    assert_eq!(table.lines().count(), 3, "{table}");
    assert!(table.contains("denied:rate_limited"), "{table}");
}

/// `seks audit verify` run on a copy of `env`'s data directory (and PostgreSQL database)
/// after `tamper` (arguments of `audit_tamper.py`; none for an untouched copy).
async fn verify_after(env: &Env, tamper: &[&str]) -> CliOutput {
    let copy = tempfile::tempdir().unwrap();
    for entry in std::fs::read_dir(env.data_dir()).unwrap() {
        let entry = entry.unwrap();
        std::fs::copy(entry.path(), copy.path().join(entry.file_name())).unwrap();
    }
    let pg_copy = env.pg.as_ref().map(|db| db.copy());
    if !tamper.is_empty() {
        // On PostgreSQL the log goes through a scratch SQLite file, so one tool tampers
        // with both backends.
        let db = copy.path().join("seks.db");
        if let Some(pg) = &pg_copy {
            pg.export_audit(&db).await;
        }
        let out = run_python(
            "sqlite_exec.py",
            &[
                db.to_str().unwrap(),
                "DROP TRIGGER IF EXISTS audit_batches_are_append_only",
            ],
            &[],
        )
        .await;
        assert!(out.status.success(), "{out:#?}");
        let mut args = vec![db.to_str().unwrap()];
        args.extend_from_slice(tamper);
        let out = run_python("audit_tamper.py", &args, &[]).await;
        assert!(out.status.success(), "{out:#?}");
        if let Some(pg) = &pg_copy {
            pg.import_audit(&db).await;
        }
    }
    let mut vars = vec![("SEKS_DATA_DIR", copy.path().to_str().unwrap())];
    vars.extend(
        pg_copy
            .as_ref()
            .map(|db| ("SEKS_STORE_URL", db.url.as_str())),
    );
    env.cli_with_env(&["audit", "verify"], "", &vars).await
}

#[tokio::test]
async fn verify_names_the_record_that_was_altered_removed_or_swapped() {
    let (_mock, env, token) = openai_token(KEY, &[]).await;
    let broker = env.serve().await;
    list_models(&broker, &token, 5).await;
    broker.terminate().await;

    let intact = verify_after(&env, &[]).await;
    assert!(intact.stdout.contains("5 records verified"), "{intact:#?}");

    for (tamper, named) in [
        (
            &["alter", "3", "\"status\":200", "\"status\":201"][..],
            "record 3 of tenant `default` was altered",
        ),
        (
            &["delete", "2"],
            "records 2..=2 of tenant `default` were removed",
        ),
        (
            &["delete", "5"],
            "records 5..=5 of tenant `default` were removed",
        ),
        (
            &["swap", "2", "3"],
            "record 2 of tenant `default` was altered",
        ),
        // Index columns that would hide records from time queries.
        (&["index", "4"], "of tenant `default` was altered"),
        // A made-up line placed after the real ones.
        (&["forge", "3"], "record 3 of tenant `default`"),
        // Every record and the signed head gone: the signed list of tenants remembers.
        (
            &[
                "sql",
                "DELETE FROM audit_batches",
                "DELETE FROM meta WHERE key = 'audit_head/default'",
            ],
            "the signed head of the log is missing",
        ),
        // The signed head passed off as a checkpoint of pruned history.
        (
            &[
                "sql",
                "DELETE FROM audit_batches",
                "INSERT INTO meta (key, value) SELECT 'audit_checkpoint/default', value \
                 FROM meta WHERE key = 'audit_head/default'",
            ],
            "forged",
        ),
    ] {
        let out = verify_after(&env, tamper).await;
        assert!(!out.status.success(), "{tamper:?} went unnoticed");
        assert!(out.stderr.contains(named), "{tamper:?}: {}", out.stderr);
    }
}

#[tokio::test]
async fn the_log_is_append_only_through_sql_too() {
    let (_mock, env, token) = openai_token(KEY, &[]).await;
    let broker = env.serve().await;
    list_models(&broker, &token, 1).await;
    broker.terminate().await;
    let update = "UPDATE audit_batches SET min_at_ms = 0";
    let refused = env.store_sql(&[update], &[update]).await.unwrap_err();
    assert!(refused.contains("append-only"), "{refused}");
}

/// Drive `workers` concurrent clients and `kill -9` the broker after `kill_after`, in the
/// middle of the load; the request ids of responses received in full before the kill, with
/// how long before it.
async fn load_then_kill(
    env: &Env,
    workers: usize,
    kill_after: Duration,
) -> Vec<(String, Duration)> {
    let token = env.create_token("main", &[]).await;
    let broker = env.serve().await;
    let url = broker.url("/api/openai/v1/chat/completions");
    let clients: Vec<_> = (0..workers)
        .map(|_| {
            let (url, auth) = (url.clone(), format!("Bearer {token}"));
            tokio::spawn(async move {
                let mut received = Vec::new();
                let headers = [("authorization", auth.as_str())];
                // Runs until the broker dies under it.
                while let Ok(reply) = try_send("POST", &url, &headers, r#"{"model":"m"}"#).await {
                    if reply.status == 200 {
                        received.push((id_of(&reply), Instant::now()));
                    }
                }
                received
            })
        })
        .collect();
    tokio::time::sleep(kill_after).await;
    broker.stop().await;
    let killed_at = Instant::now();
    let mut received = Vec::new();
    for client in clients {
        received.extend(client.await.unwrap());
    }
    received
        .into_iter()
        .filter(|(_, at)| *at <= killed_at)
        .map(|(id, at)| (id, killed_at - at))
        .collect()
}

/// How long before the kill each answered request without a record was answered.
fn lost(received: &[(String, Duration)], stored: &HashMap<String, Value>) -> Vec<Duration> {
    received
        .iter()
        .filter(|(id, _)| !stored.contains_key(id))
        .map(|(_, before_kill)| *before_kill)
        .collect()
}

#[tokio::test]
async fn after_kill_9_strict_mode_has_every_answered_record_and_batched_mode_nearly_all() {
    let mock = MockUpstream::start().await;
    let strict = Env::new(&config_for(
        &mock.url(),
        "[audit]\ndurability = \"strict\"\n",
    ));
    strict.add_secret("main", "openai", KEY).await;
    let received = load_then_kill(&strict, 8, Duration::from_secs(2)).await;
    let missing = lost(&received, &records(&strict).await);
    eprintln!(
        "strict mode: {} of {} answered requests had no record after kill -9",
        missing.len(),
        received.len()
    );
    assert!(
        received.len() > 50,
        "too little load to tell: {}",
        received.len()
    );
    assert_eq!(missing, Vec::<Duration>::new(), "strict mode lost records");

    let batched = Env::with_upstream(&mock.url());
    batched.add_secret("main", "openai", KEY).await;
    let received = load_then_kill(&batched, 8, Duration::from_secs(2)).await;
    let missing = lost(&received, &records(&batched).await);
    eprintln!(
        "batched mode: {} of {} answered requests had no record after kill -9, the oldest \
         answered {:?} before the kill",
        missing.len(),
        received.len(),
        missing.iter().max()
    );
    // The documented window: only requests answered in the last second may be lost.
    assert!(
        missing
            .iter()
            .all(|before_kill| *before_kill < Duration::from_secs(1)),
        "{missing:?}"
    );
}

#[tokio::test]
async fn when_the_log_cannot_be_written_requests_are_refused_until_it_can() {
    let (mock, env, token) = openai_token(KEY, &[]).await;
    let broker = env.serve().await;
    let url = broker.url("/api/openai/v1/models");
    let auth = format!("Bearer {token}");
    let headers = [("authorization", auth.as_str())];
    let get = || send("GET", &url, &headers, "");
    assert_eq!(get().await.status, 200);

    env.break_audit_writes().await;
    let until = |want: u16| async move {
        let start = Instant::now();
        loop {
            let reply = get().await;
            if reply.status == want {
                return reply;
            }
            assert!(
                start.elapsed() < Duration::from_secs(10),
                "never got {want}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    };
    let refused = until(503).await;
    assert_eq!(refused.header("x-seks-error"), Some("audit_unavailable"));
    // No token is minted while nothing can be recorded either.
    let derived = send(
        "POST",
        &broker.url("/seks/v1/tokens/derive"),
        &[("authorization", auth.as_str())],
        "{}",
    )
    .await;
    assert_eq!(derived.status, 503, "{}", derived.body);
    // The agent learns what failed, not the store's own error text (paths, hosts, SQL).
    for reply in [&refused, &derived] {
        assert!(
            reply.body.contains("audit log can't be written"),
            "{}",
            reply.body
        );
        assert!(!reply.body.contains("disk full"), "{}", reply.body);
    }
    // Refused requests never reach the upstream.
    let upstream_before = mock.requests().len();
    assert_eq!(until(503).await.status, 503);
    assert_eq!(mock.requests().len(), upstream_before);

    env.heal_audit_writes().await;
    until(200).await;
    broker.terminate().await;
    // The records queued meanwhile were written once the log worked again, refusals too.
    let stored = records(&env).await;
    assert!(stored.values().any(|r| r["error"] == "audit_unavailable"));
    let verified = env.cli(&["audit", "verify"], "").await.ok();
    assert!(verified.stdout.contains("chain intact"), "{verified:#?}");
}

#[tokio::test]
async fn pruning_old_records_keeps_the_rest_verifiable() {
    let (_mock, env, token) = openai_token(KEY, &[]).await;
    let broker = env.serve().await;
    list_models(&broker, &token, 4).await;
    broker.terminate().await;
    tokio::time::sleep(Duration::from_millis(20)).await;

    // With retain_days = 0 everything older than now goes at start-up.
    let config = std::fs::read_to_string(&env.config).unwrap();
    std::fs::write(&env.config, format!("{config}[audit]\nretain_days = 0\n")).unwrap();
    let broker = env.serve().await;
    let start = Instant::now();
    while !records(&env).await.is_empty() {
        assert!(start.elapsed() < Duration::from_secs(10), "nothing pruned");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    list_models(&broker, &token, 2).await;
    broker.terminate().await;
    let verified = env.cli(&["audit", "verify"], "").await.ok();
    assert!(
        verified.stdout.contains("2 records verified"),
        "{verified:#?}"
    );
    let seqs: Vec<i64> = records(&env)
        .await
        .values()
        .map(|r| r["seq"].as_i64().unwrap())
        .collect();
    assert!(seqs.iter().all(|s| *s > 4), "{seqs:?}");
}

#[tokio::test]
async fn strict_mode_refuses_promptly_while_the_log_cannot_be_written() {
    let mock = MockUpstream::start().await;
    let env = Env::new(&config_for(
        &mock.url(),
        "[audit]\ndurability = \"strict\"\n",
    ));
    env.add_secret("main", "openai", KEY).await;
    let token = env.create_token("main", &[]).await;
    let broker = env.serve().await;
    let url = broker.url("/api/openai/v1/models");
    let auth = format!("Bearer {token}");
    let headers = [("authorization", auth.as_str())];
    assert_eq!(send("GET", &url, &headers, "").await.status, 200);
    env.break_audit_writes().await;
    // The first answer after the failure may break off (its record never commits); after
    // that the broker says why, at once, instead of holding responses.
    let start = Instant::now();
    loop {
        if let Ok(reply) = try_send("GET", &url, &headers, "").await
            && reply.status == 503
        {
            assert_eq!(reply.header("x-seks-error"), Some("audit_unavailable"));
            break;
        }
        assert!(start.elapsed() < Duration::from_secs(10), "never refused");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    env.heal_audit_writes().await;
    broker.terminate().await;
}

#[tokio::test]
async fn clients_that_leave_early_still_leave_a_record_at_once() {
    let (_mock, env, token) = openai_token(KEY, &["--agent", "impatient"]).await;
    let broker = env.serve().await;
    let auth = format!("Bearer {token}");

    // Gone before the answer: the upstream takes 30 s.
    let slow = broker.url("/api/openai/v1/slow");
    let headers = [("authorization", auth.as_str())];
    let _ =
        tokio::time::timeout(Duration::from_millis(300), send("GET", &slow, &headers, "")).await;
    // Gone mid-stream: the upstream then falls silent for an hour.
    let stall = send_streaming("GET", &broker.url("/api/openai/v1/stall"), &headers, "").await;
    let mut body = stall.into_body();
    body.frame().await.unwrap().unwrap();
    drop(body);

    let start = Instant::now();
    let stored = loop {
        let stored = records(&env).await;
        let paths: Vec<&str> = stored.values().filter_map(|r| r["path"].as_str()).collect();
        if paths.contains(&"/v1/slow") && paths.contains(&"/v1/stall") {
            break stored;
        }
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "no records: {stored:#?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let left = stored.values().find(|r| r["path"] == "/v1/slow").unwrap();
    assert_eq!(
        (&left["status"], &left["decision"], &left["agent"]),
        (
            &Value::from(499),
            &Value::from("client_closed"),
            &Value::from("impatient")
        )
    );
    let cut = stored.values().find(|r| r["path"] == "/v1/stall").unwrap();
    assert_eq!(
        (&cut["status"], &cut["decision"]),
        (&Value::from(200), &Value::from("allowed"))
    );
    broker.stop().await;
}

#[tokio::test]
async fn streams_still_open_at_shutdown_are_cut_off_and_recorded() {
    let (_mock, env, token) = openai_token(KEY, &["--agent", "lingering"]).await;
    let broker = env.serve().await;
    let auth = format!("Bearer {token}");
    let headers = [("authorization", auth.as_str())];
    let stream = send_streaming("GET", &broker.url("/api/openai/v1/drip"), &headers, "").await;
    let mut body = stream.into_body();
    body.frame().await.unwrap().unwrap();
    // Keep reading while the broker shuts down: its grace runs out, and it cuts us off.
    let reader = tokio::spawn(async move { while let Some(Ok(_)) = body.frame().await {} });
    broker.terminate().await;
    reader.await.unwrap();
    let stored = records(&env).await;
    let cut = stored
        .values()
        .find(|r| r["path"] == "/v1/drip")
        .unwrap_or_else(|| panic!("the cut-off stream left no record: {stored:#?}"));
    assert_eq!(
        (&cut["status"], &cut["agent"]),
        (&Value::from(200), &Value::from("lingering"))
    );
    assert!(cut["bytes_out"].as_u64().unwrap() > 0);
}

#[tokio::test]
async fn a_download_its_client_stopped_reading_is_recorded_at_shutdown() {
    let (_mock, env, token) = openai_token(KEY, &["--agent", "stalled"]).await;
    let broker = env.serve().await;
    // A client that reads the response head and then nothing: the broker's writes block on a
    // full socket, so it never gets to end the body itself when its grace runs out.
    let mut client = tokio::net::TcpStream::connect(broker.addr).await.unwrap();
    let request = format!(
        "GET /api/openai/v1/big?mb=256 HTTP/1.1\r\nhost: x\r\nauthorization: Bearer {token}\r\n\r\n"
    );
    client.write_all(request.as_bytes()).await.unwrap();
    let mut head = [0u8; 1024];
    let read = client.read(&mut head).await.unwrap();
    assert!(
        head[..read].starts_with(b"HTTP/1.1 200"),
        "{:?}",
        String::from_utf8_lossy(&head[..read])
    );
    broker.terminate().await;
    let stored = records(&env).await;
    let cut = stored
        .values()
        .find(|r| r["path"] == "/v1/big?mb=256")
        .unwrap_or_else(|| panic!("the stalled download left no record: {stored:#?}"));
    assert_eq!(
        (&cut["status"], &cut["agent"]),
        (&Value::from(200), &Value::from("stalled"))
    );
    drop(client);
}

#[tokio::test]
async fn a_batch_committed_without_acknowledgement_is_not_written_again() {
    let Some(server) = pg::shared_cluster() else {
        return;
    };
    let mock = MockUpstream::start().await;
    let env = Env::on_database(&config_for(&mock.url(), ""), TestDb::create_on(&server));
    env.add_secret("main", "openai", KEY).await;
    let token = env.create_token("main", &[]).await;
    let relay = LostCommit::start(env.store_url().expect("a PostgreSQL store")).await;
    let broker = env.serve_with(&[("SEKS_STORE_URL", &relay.url)]).await;

    let (url, auth) = (
        broker.url("/api/openai/v1/models"),
        format!("Bearer {token}"),
    );
    let models = async || send("GET", &url, &[("authorization", &auth)], "").await;

    relay.arm();
    let reply = models().await;
    assert_eq!(reply.status, 200, "{reply:?}");
    let id = id_of(&reply);
    // The writer's commit reaches PostgreSQL but its answer never reaches the writer, which
    // retries: the retry finds the batch already there. `records` fails on a second copy.
    let start = Instant::now();
    while !records(&env).await.contains_key(&id) || relay.cuts() == 0 {
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "no record of {id}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(relay.cuts(), 1);
    // Later batches go on the same chain, once each.
    let later = id_of(&models().await);
    while !records(&env).await.contains_key(&later) {
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "no record of {later}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(records(&env).await.len(), 2);
    let verified = env.cli(&["audit", "verify"], "").await.ok();
    assert!(verified.stdout.contains("chain intact"), "{verified:#?}");
}

#[tokio::test]
async fn the_log_shown_as_a_table_escapes_what_an_agent_could_use_to_drive_the_terminal() {
    let (_mock, env, token) = openai_token(KEY, &["--model", "gpt-4o-mini"]).await;
    let broker = env.serve().await;
    // A model name that would retitle the window, clear the screen and reverse the text.
    let body = r#"{"model": "gpt\u001b]0;owned\u0007\u001b[2J\u202eok", "messages": []}"#;
    let denied = send(
        "POST",
        &broker.url("/api/openai/v1/chat/completions"),
        &[
            ("authorization", &format!("Bearer {token}")),
            ("content-type", "application/json"),
        ],
        body,
    )
    .await;
    assert_eq!(denied.status, 403, "{denied:?}");
    broker.terminate().await;
    let exported = env.cli(&["audit", "export"], "").await.ok().stdout;
    assert!(exported.contains(r"\u001b[2J"), "{exported}");
    for args in [
        &["audit", "tail"][..],
        &["audit", "query", "--status", "4xx"],
    ] {
        let table = env.cli(args, "").await.ok().stdout;
        assert!(table.contains("gpt"), "{table}");
        assert!(
            !table.contains(['\u{1b}', '\u{7}', '\u{202e}']),
            "{args:?}: {table:?}"
        );
    }
}

#[tokio::test]
async fn an_agent_name_with_quotes_or_backslashes_neither_breaks_verify_nor_hides_its_records() {
    let (_mock, env, token) = openai_token(KEY, &[]).await;
    let broker = env.serve().await;
    // The agent names its sub-agent: JSON escapes `"` and `\` in every record it leaves.
    let agent = r#"sub "quoted" \ agent"#;
    let derived = send(
        "POST",
        &broker.url("/seks/v1/tokens/derive"),
        &[("authorization", &format!("Bearer {token}"))],
        serde_json::json!({ "agent": agent }).to_string(),
    )
    .await;
    assert_eq!(derived.status, 201, "{derived:?}");
    let child = derived.json()["token"].as_str().unwrap().to_owned();
    list_models(&broker, &child, 2).await;
    broker.terminate().await;

    let verified = env.cli(&["audit", "verify"], "").await;
    assert!(verified.status.success(), "{verified:#?}");
    for filter in [&["--agent", agent][..], &["--since", "1h"]] {
        let mut args = vec!["audit", "export"];
        args.extend_from_slice(filter);
        let exported = env.cli(&args, "").await.ok().stdout;
        let theirs = exported
            .lines()
            .filter(|line| serde_json::from_str::<Value>(line).unwrap()["agent"] == agent)
            .count();
        assert_eq!(theirs, 2, "{filter:?}: {exported}");
    }
}

#[tokio::test]
async fn pruning_does_not_vouch_for_recent_records_an_edited_index_calls_old() {
    let (_mock, env, token) = openai_token(KEY, &[]).await;
    let broker = env.serve().await;
    list_models(&broker, &token, 3).await;
    broker.terminate().await;
    // Someone with write access to the database, but not the master key, marks today's
    // records as years old, hoping the broker prunes them and signs the gap.
    let backdate = "UPDATE audit_batches SET min_at_ms = 0, max_at_ms = 0";
    env.store_sql(
        &["DROP TRIGGER audit_batches_are_append_only", backdate],
        &[
            "DROP TRIGGER audit_batches_are_append_only ON audit_batches",
            backdate,
        ],
    )
    .await
    .unwrap();

    let config = std::fs::read_to_string(&env.config).unwrap();
    std::fs::write(&env.config, format!("{config}[audit]\nretain_days = 1\n")).unwrap();
    let broker = env.serve().await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    broker.terminate().await;

    assert_eq!(records(&env).await.len(), 3, "recent records were pruned");
    let verified = env.cli(&["audit", "verify"], "").await;
    assert!(!verified.status.success(), "{verified:#?}");
    assert!(verified.stderr.contains("was altered"), "{verified:#?}");
}

#[tokio::test]
async fn a_rewritten_log_pruned_whole_still_fails_against_its_signed_head() {
    let (_mock, env, token) = openai_token(KEY, &[]).await;
    let broker = env.serve().await;
    list_models(&broker, &token, 3).await;
    broker.terminate().await;
    // Every record rewritten as years old, with a chain recomputed to match: only the signed
    // head still tells; pruning all of it must not make the log verify.
    let db = env.data_dir().join("seks.db");
    if let Some(pg) = &env.pg {
        pg.export_audit(&db).await;
    }
    for tamper in [
        &[
            "sql",
            "DROP TRIGGER IF EXISTS audit_batches_are_append_only",
        ][..],
        &["rewrite", "1000"],
    ] {
        let mut args = vec![db.to_str().unwrap()];
        args.extend_from_slice(tamper);
        let out = run_python("audit_tamper.py", &args, &[]).await;
        assert!(out.status.success(), "{out:#?}");
    }
    if let Some(pg) = &env.pg {
        pg.import_audit(&db).await;
    }

    let config = std::fs::read_to_string(&env.config).unwrap();
    std::fs::write(&env.config, format!("{config}[audit]\nretain_days = 1\n")).unwrap();
    let broker = env.serve().await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    broker.terminate().await;

    let verified = env.cli(&["audit", "verify"], "").await;
    assert!(!verified.status.success(), "{verified:#?}");
    assert!(verified.stderr.contains("signed head"), "{verified:#?}");
}
