//! `seks key rotate`: the store moves to a new master key whole, everything it held keeps
//! working under the new key, and nothing opens it under the old one.

use std::os::unix::fs::PermissionsExt;

use crate::sigv4::{MockS3, agent_signed, s3_broker};
use crate::support::http::send;
use crate::support::{Broker, Env, assert_never_leaked, list_models, openai_token};

const KEY: &str = "sk-live-rotatethemasterkey0123456789";

/// A PUT through the broker signed with the agent's SigV4 key pair; the mock S3 answers 200
/// only to a request re-signed with the real key pair.
async fn signed_put(broker: &Broker, key_id: &str, token: &str) -> u16 {
    let url = broker.url("/api/s3/bucket/rotated.txt");
    let signed = agent_signed("PUT", &url, key_id, token, &[], b"data");
    let pairs: Vec<(&str, &str)> = signed
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect();
    send("PUT", &url, &pairs, "data").await.status
}

fn key_file(env: &Env) -> std::path::PathBuf {
    env.data_dir().join("master.key")
}

#[tokio::test]
async fn a_rotated_store_keeps_secrets_tokens_audit_and_ca_and_the_old_key_opens_nothing() {
    let mock = MockS3::start().await;
    let (env, key_id, token) = s3_broker(&mock).await;
    let ca = env.cli(&["ca", "export"], "").await.ok().stdout;
    let broker = env.serve().await;
    assert_eq!(signed_put(&broker, &key_id, &token).await, 200);
    broker.terminate().await;
    let old_key = std::fs::read_to_string(key_file(&env)).unwrap();

    let out = env.cli(&["key", "rotate"], "").await.ok();
    assert!(
        out.stdout.contains("version 2: 1 secret(s)") && out.stdout.contains("forward proxy's CA"),
        "{out:#?}"
    );
    let new_key = std::fs::read_to_string(key_file(&env)).unwrap();
    assert_ne!(new_key, old_key);
    let mode = std::fs::metadata(key_file(&env))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600);
    assert!(!env.data_dir().join("master.key.next").exists());

    // The same agent token (its SigV4 key pair recomputed by the broker), the same sealed
    // key pair, the same CA, and an audit log that verifies across the rotation.
    assert_eq!(env.cli(&["ca", "export"], "").await.ok().stdout, ca);
    let broker = env.serve().await;
    assert_eq!(signed_put(&broker, &key_id, &token).await, 200);
    broker.terminate().await;
    let verified = env.cli(&["audit", "verify"], "").await.ok();
    assert!(
        verified.stdout.contains("2 records verified"),
        "{verified:#?}"
    );

    let old = env
        .cli_with_env(
            &["ca", "export"],
            "",
            &[("SEKS_MASTER_KEY", old_key.trim())],
        )
        .await;
    assert!(
        !old.status.success() && old.stderr.contains("does not match"),
        "{old:#?}"
    );
    // Rotating again moves on to version 3.
    let again = env.cli(&["key", "rotate", "--json"], "").await.ok();
    let again: serde_json::Value = serde_json::from_str(&again.stdout).unwrap();
    assert_eq!(again["key_version"], 3, "{again}");
    assert_eq!(again["audit_heads"], 2, "{again}");

    // A rotation cut short after the store moved but before the key file did says where
    // the key that opens the store is.
    std::fs::rename(key_file(&env), env.data_dir().join("master.key.next")).unwrap();
    std::fs::write(key_file(&env), &old_key).unwrap();
    std::fs::set_permissions(key_file(&env), std::fs::Permissions::from_mode(0o600)).unwrap();
    let cut = env.cli(&["ca", "export"], "").await;
    assert!(
        !cut.status.success()
            && cut.stderr.contains("rotation was interrupted")
            && cut.stderr.contains("master.key.next"),
        "{cut:#?}"
    );
    assert_never_leaked(&env, crate::sigv4::SECRET_ACCESS_KEY, b"");
}

#[tokio::test]
async fn a_broker_left_on_the_old_key_refuses_requests_and_the_log_stays_whole() {
    let (mock, env, token) = openai_token(KEY, &[]).await;
    let old_key = std::fs::read_to_string(key_file(&env)).unwrap();
    let old_key = old_key.trim();
    let broker = env.serve().await;
    list_models(&broker, &token, 2).await;

    // A key given in the environment needs its successor given too.
    let vars = [("SEKS_MASTER_KEY", old_key)];
    let refused = env.cli_with_env(&["key", "rotate"], "", &vars).await;
    assert!(
        !refused.status.success() && refused.stderr.contains("SEKS_NEW_MASTER_KEY"),
        "{refused:#?}"
    );
    let new_key = "bmV3IG1hc3RlciBrZXkgZm9yIHRoZSByb3RhdGlvbiE=";
    let vars = [
        ("SEKS_MASTER_KEY", old_key),
        ("SEKS_NEW_MASTER_KEY", new_key),
    ];
    let out = env.cli_with_env(&["key", "rotate"], "", &vars).await.ok();
    assert!(
        out.stdout.contains("new key (SEKS_NEW_MASTER_KEY)"),
        "{out:#?}"
    );
    // The key file was the operator's to replace.
    assert_eq!(
        std::fs::read_to_string(key_file(&env)).unwrap().trim(),
        old_key
    );

    // The broker still holding the old key can no longer sign the audit log: it refuses.
    let seen = mock.requests().len();
    let url = broker.url("/api/openai/v1/models");
    let auth = format!("Bearer {token}");
    let mut statuses = Vec::new();
    for _ in 0..3 {
        let reply =
            crate::support::http::try_send("GET", &url, &[("authorization", &auth)], "").await;
        statuses.push(reply.map(|r| r.status).unwrap_or(0));
        tokio::time::sleep(std::time::Duration::from_millis(400)).await;
    }
    // Killed: its records can't be written, and it would retry them at shutdown.
    broker.stop().await;
    assert_eq!(statuses.last(), Some(&503), "{statuses:?}");

    let vars = [("SEKS_MASTER_KEY", new_key)];
    let broker = env.serve_with(&vars).await;
    let url = broker.url("/api/openai/v1/models");
    let reply = send("GET", &url, &[("authorization", &auth)], "").await;
    assert_eq!(reply.status, 200, "{}", reply.body);
    broker.terminate().await;
    assert!(mock.requests().len() > seen);
    let verified = env.cli_with_env(&["audit", "verify"], "", &vars).await.ok();
    assert!(
        verified.stdout.contains("records verified"),
        "{verified:#?}"
    );
    assert_never_leaked(&env, KEY, b"");
}

#[tokio::test]
async fn a_rotation_refuses_to_vouch_for_an_audit_head_the_old_key_did_not_sign() {
    let (_mock, env, token) = openai_token(KEY, &[]).await;
    let broker = env.serve().await;
    list_models(&broker, &token, 2).await;
    broker.terminate().await;
    let old_key = std::fs::read_to_string(key_file(&env)).unwrap();
    let forged = r#"{"seq":2,"hash":"00","mac":"00"}"#;
    env.store_sql(
        &[&format!(
            "UPDATE meta SET value = '{forged}' WHERE key = 'audit_head/default'"
        )],
        &[&format!(
            "UPDATE meta SET value = '{forged}' WHERE key = 'audit_head/default'"
        )],
    )
    .await
    .unwrap();
    let out = env.cli(&["key", "rotate"], "").await;
    assert!(
        !out.status.success() && out.stderr.contains("audit_head/default is not signed"),
        "{out:#?}"
    );
    // Nothing moved: the old key still opens the store, and no new key replaced it.
    env.cli(&["ca", "export"], "").await.ok();
    assert_eq!(std::fs::read_to_string(key_file(&env)).unwrap(), old_key);
}

#[tokio::test]
async fn a_rotated_store_migrates_to_the_other_store_and_opens_there_under_the_new_key() {
    let mock = MockS3::start().await;
    let (env, key_id, token) = s3_broker(&mock).await;
    let Some(dest) = crate::migrate::Destination::other_than(&env) else {
        return;
    };
    let ca = env.cli(&["ca", "export"], "").await.ok().stdout;
    let broker = env.serve().await;
    assert_eq!(signed_put(&broker, &key_id, &token).await, 200);
    broker.terminate().await;
    env.cli(&["key", "rotate"], "").await.ok();

    let url = dest.url();
    let out = env.cli(&["migrate", "--to", &url], "").await.ok();
    assert!(out.stdout.contains("records verified"), "{out:#?}");
    let on_dest = [("SEKS_STORE_URL", url.as_str())];
    assert_eq!(
        env.cli_with_env(&["ca", "export"], "", &on_dest)
            .await
            .ok()
            .stdout,
        ca
    );
    let broker = env.serve_with(&on_dest).await;
    assert_eq!(signed_put(&broker, &key_id, &token).await, 200);
    broker.terminate().await;
    let verified = env
        .cli_with_env(&["audit", "verify"], "", &on_dest)
        .await
        .ok();
    assert!(
        verified.stdout.contains("2 records verified"),
        "{verified:#?}"
    );
}
