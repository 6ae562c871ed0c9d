//! `seks migrate`: an installation set up through the CLI and used through a running broker
//! moves to the other kind of store (SQLite to PostgreSQL; PostgreSQL to SQLite when the
//! suite runs on PostgreSQL) and works there as before: the same agent tokens with the real
//! key injected, revocations, policies and approvals kept, an audit log that verifies and
//! goes on growing, and no secret in the copy. The source is never changed, and refused
//! migrations leave the destination as it was.

use std::path::{Path, PathBuf};

use base64::Engine;
use serde_json::Value;

use seks::audit::{self, AuditRecord, ChainKey};
use seks::store::{AuditEntry, DEFAULT_TENANT, Location, NewSecret, NewToken, transfer};
use seks::tokens::TokenHash;
use seks::vault::{Key, SealedSecret};

use crate::support::http::{Reply, send};
use crate::support::mock::MockUpstream;
use crate::support::pg::{self, TestDb};
use crate::support::{Broker, Env, assert_never_leaked, config_for, forms, run_python};

const KEY: &str = "sk-proj-MIGRATE-real-key-0123456789abcdef";
const GITHUB_KEY: &str = "ghp_MIGRATEgithubKEY0123456789abcdefXYZ";

/// An empty store of the other kind than an environment's.
pub(crate) enum Destination {
    /// A SQLite file (not there yet).
    File(PathBuf),
    /// A PostgreSQL database.
    Db(TestDb),
}

impl Destination {
    /// The other kind than `env`'s store; `None` (skip) when that takes a PostgreSQL server
    /// and none runs outside the full suite.
    pub(crate) fn other_than(env: &Env) -> Option<Destination> {
        if env.pg.is_some() {
            return Some(Destination::File(env.data_dir().join("moved/seks.db")));
        }
        pg::shared_cluster()?;
        Some(Destination::Db(TestDb::create()))
    }

    pub(crate) fn url(&self) -> String {
        match self {
            Destination::File(file) => format!("sqlite://{}", file.display()),
            Destination::Db(db) => db.url.clone(),
        }
    }

    /// Every row it holds, as text.
    async fn dump(&self) -> String {
        match self {
            Destination::File(file) => sqlite_dump(file).await,
            Destination::Db(db) => String::from_utf8_lossy(&db.dump()).into_owned(),
        }
    }
}

/// Every row of a SQLite file as SQL ("" when there is no file).
async fn sqlite_dump(file: &Path) -> String {
    if !file.exists() {
        return String::new();
    }
    run_python("sqlite_dump.py", &[file.to_str().unwrap()], &[])
        .await
        .ok()
        .stdout
}

/// Every row of `env`'s own store, as text.
async fn source_dump(env: &Env) -> String {
    match &env.pg {
        Some(db) => String::from_utf8_lossy(&db.dump()).into_owned(),
        None => sqlite_dump(&env.data_dir().join("seks.db")).await,
    }
}

/// What the operator commands show of a store (`env` names another with `SEKS_STORE_URL`).
async fn listings(env: &Env, on: &[(&str, &str)]) -> Vec<String> {
    let mut shown = Vec::new();
    for args in [
        &["secret", "list", "--json"][..],
        &["token", "list", "--json"],
        &["policy", "list", "--json"],
        &["capability", "list", "--json"],
        &["approvals", "list", "--all", "--json"],
        &["usage", "--json"],
        &["audit", "export"],
        &["audit", "verify"],
        &["ca", "export"],
    ] {
        shown.push(env.cli_with_env(args, "", on).await.ok().stdout);
    }
    shown
}

async fn call(broker: &Broker, method: &str, path: &str, token: &str) -> Reply {
    let body = if method == "POST" { "{}" } else { "" };
    let auth = format!("Bearer {token}");
    send(method, &broker.url(path), &[("authorization", &auth)], body).await
}

/// Records verified, from `seks audit verify`.
fn verified(out: &str) -> u64 {
    out.split(": ")
        .nth(1)
        .and_then(|rest| rest.split(' ').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("unexpected `audit verify` output: {out}"))
}

#[tokio::test]
async fn an_installation_moves_to_the_other_store_and_keeps_working_there() {
    let mock = MockUpstream::start().await;
    let env = Env::new(&(config_for(&mock.url(), "") + "[approvals]\ntimeout = \"1s\"\n"));
    let Some(dest) = Destination::other_than(&env) else {
        return;
    };
    env.add_secret("main", "openai", KEY).await;
    env.add_secret("gh", "github", GITHUB_KEY).await;
    let policy = env.data_dir().join("chat.toml");
    std::fs::write(&policy, "allow = [\"GET /v1/models\"]\n").unwrap();
    env.cli(&["policy", "set", "chat", policy.to_str().unwrap()], "")
        .await
        .ok();
    let capability = env.data_dir().join("models.toml");
    std::fs::write(
        &capability,
        "[capabilities.models]\nkind = \"http\"\ndescription = \"List models\"\nsecret = \"main\"\n\
         provider = \"openai\"\nmethod = \"GET\"\npath = \"/v1/models\"\n",
    )
    .unwrap();
    env.cli(&["capability", "add", capability.to_str().unwrap()], "")
        .await
        .ok();
    let worker = env
        .create_token("main", &["--agent", "worker", "--daily-requests", "100"])
        .await;
    let member = env
        .create_token("main", &["--agent", "member", "--policy-name", "chat"])
        .await;
    let careful = env
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
    let worker_id = env.token_id("worker").await;
    let child = env
        .cli(
            &["token", "derive", &worker_id, "--deny", "GET /v1/files"],
            "",
        )
        .await
        .ok()
        .stdout
        .trim()
        .to_owned();
    let gone = env.create_token("gh", &["--agent", "gone"]).await;
    let gone_id = env.token_id("gone").await;
    env.cli(&["token", "revoke", &gone_id], "").await.ok();
    let admin = env.admin_token().await;
    // Makes the forward proxy's CA, sealed in the store.
    env.cli(&["ca", "export"], "").await.ok();

    // Traffic on the source: allowed, denied by each kind of policy, held, revoked.
    let mut responses = Vec::new();
    let broker = env.serve().await;
    for (method, path, token, status) in [
        ("GET", "/api/openai/v1/models", &worker, 200),
        ("GET", "/api/openai/v1/models", &member, 200),
        ("POST", "/api/openai/v1/chat/completions", &member, 403),
        ("GET", "/api/openai/v1/files", &child, 403),
        ("POST", "/api/openai/v1/images/generations", &careful, 403),
        ("GET", "/api/github/user", &gone, 401),
    ] {
        let reply = call(&broker, method, path, token).await;
        assert_eq!(reply.status, status, "{method} {path}: {}", reply.body);
        responses.extend_from_slice(reply.body.as_bytes());
    }
    // A clean stop flushes the audit log, usage counters and last-use times.
    broker.terminate().await;

    let before = listings(&env, &[]).await;
    let source = source_dump(&env).await;
    let out = env
        .cli(&["migrate", "--to", &dest.url(), "--json"], "")
        .await
        .ok();
    let report: Value = serde_json::from_str(&out.stdout).unwrap();
    let rows = |table: &str| {
        report["tables"]
            .as_array()
            .unwrap()
            .iter()
            .find(|t| t["table"] == table)
            .and_then(|t| t["rows"].as_u64())
            .unwrap_or_else(|| panic!("no count for {table}: {report}"))
    };
    assert_eq!(
        ["secrets", "tokens", "policies", "capabilities", "approvals"].map(rows),
        [2, 5, 1, 1, 1],
        "{report}"
    );
    assert!(rows("usage") >= 1 && rows("audit_batches") >= 1, "{report}");
    let migrated_records = report["audit"][0]["records"].as_u64().unwrap();
    assert_eq!(migrated_records, verified(&before[7]), "{report}");
    assert_eq!(
        source_dump(&env).await,
        source,
        "the source must not change"
    );

    // The destination shows exactly what the source did, CA included.
    let url = dest.url();
    let on_dest = [("SEKS_STORE_URL", url.as_str())];
    assert_eq!(listings(&env, &on_dest).await, before);

    // A broker on the destination, same master key: the old tokens work as before.
    let broker = env.serve_with(&on_dest).await;
    let reply = call(&broker, "GET", "/api/openai/v1/models", &worker).await;
    assert_eq!(reply.status, 200, "{}", reply.body);
    let upstream = mock.requests().pop().unwrap();
    assert_eq!(
        upstream.header("authorization"),
        Some(format!("Bearer {KEY}").as_str()),
        "the real key is injected"
    );
    for (method, path, token, status, code) in [
        ("GET", "/api/openai/v1/models", &member, 200, None),
        (
            "POST",
            "/api/openai/v1/chat/completions",
            &member,
            403,
            Some("policy_denied"),
        ),
        ("GET", "/api/openai/v1/models", &child, 200, None),
        (
            "GET",
            "/api/openai/v1/files",
            &child,
            403,
            Some("policy_denied"),
        ),
        ("GET", "/api/github/user", &gone, 401, Some("token_revoked")),
    ] {
        let reply = call(&broker, method, path, token).await;
        assert_eq!(reply.status, status, "{method} {path}: {}", reply.body);
        assert_eq!(reply.header("x-seks-error"), code, "{method} {path}");
        responses.extend_from_slice(reply.body.as_bytes());
    }
    let tokens = send(
        "GET",
        &format!("{}/admin/v1/tokens", broker.admin_url().await),
        &[("authorization", &format!("Bearer {admin}"))],
        "",
    )
    .await;
    assert_eq!(tokens.status, 200, "the admin token moved too");
    broker.terminate().await;

    // The chain goes on from the migrated head, and still verifies.
    let after = env
        .cli_with_env(&["audit", "verify"], "", &on_dest)
        .await
        .ok();
    assert_eq!(verified(&after.stdout), migrated_records + 6);

    let copy = dest.dump().await;
    for secret in [KEY, GITHUB_KEY] {
        assert_eq!(
            forms::found_in(secret, copy.as_bytes()),
            Vec::<String>::new(),
            "a secret in the destination"
        );
        assert_never_leaked(&env, secret, &responses);
    }
}

#[tokio::test]
async fn refused_migrations_leave_the_destination_as_it_was() {
    let env = Env::new("");
    let Some(dest) = Destination::other_than(&env) else {
        return;
    };
    env.add_secret("main", "openai", KEY).await;
    env.create_token("main", &[]).await;
    let to = dest.url();
    let empty = dest.dump().await;

    // A master key other than the source's: refused before the destination is opened.
    let other = base64::engine::general_purpose::STANDARD.encode([7u8; 32]);
    let wrong = env
        .cli_with_env(
            &["migrate", "--to", &to],
            "",
            &[("SEKS_MASTER_KEY", &other)],
        )
        .await;
    assert!(!wrong.status.success(), "{wrong:?}");
    assert!(
        wrong.stderr.contains("master key does not match"),
        "{wrong:?}"
    );
    assert_eq!(dest.dump().await, empty);

    // A source that isn't there is not created; a store can't be copied onto itself.
    let missing = env.data_dir().join("nowhere.db");
    let nowhere = format!("sqlite://{}", missing.display());
    let out = env
        .cli(&["migrate", "--from", &nowhere, "--to", &to], "")
        .await;
    assert!(
        !out.status.success() && out.stderr.contains("there is no store"),
        "{out:?}"
    );
    assert!(!missing.exists());
    let here = env.store_url().map_or_else(
        || format!("sqlite://{}", env.data_dir().join("seks.db").display()),
        str::to_owned,
    );
    let out = env.cli(&["migrate", "--to", &here], "").await;
    assert!(
        !out.status.success() && out.stderr.contains("the same store"),
        "{out:?}"
    );

    // The destination URL may come from the environment, out of the process list.
    env.cli_with_env(&["migrate"], "", &[("SEKS_MIGRATE_TO", &to)])
        .await
        .ok();
    let migrated = dest.dump().await;
    assert_ne!(migrated, empty);

    // Once it holds data, migrating into it again is refused and changes nothing.
    env.add_secret("more", "openai", "sk-proj-MIGRATE-more-0123456789")
        .await;
    let again = env.cli(&["migrate", "--to", &to], "").await;
    assert!(!again.status.success(), "{again:?}");
    assert!(
        again.stderr.contains("the destination store is not empty"),
        "{again:?}"
    );
    assert_eq!(dest.dump().await, migrated);
}

#[tokio::test]
async fn a_long_history_copies_page_by_page_with_parents_before_children() {
    const N: usize = 150;
    let env = Env::new("");
    let Some(dest) = Destination::other_than(&env) else {
        return;
    };
    let from = Location::parse(env.store_url(), env.data_dir())
        .unwrap()
        .open()
        .await
        .unwrap();
    let to = Location::parse(Some(&dest.url()), env.data_dir())
        .unwrap()
        .open()
        .await
        .unwrap();
    let t = DEFAULT_TENANT;
    from.insert_secret(&NewSecret {
        id: "sec_a".into(),
        tenant: t.into(),
        name: "main".into(),
        provider: "openai".into(),
        sealed: SealedSecret {
            ciphertext: vec![1; 40],
            nonce: vec![2; 12],
            wrapped_key: vec![3; 48],
            wrap_nonce: vec![4; 12],
            key_version: 1,
        },
        created_at: 100,
    })
    .await
    .unwrap();
    // Each token derived from the one before, with ids sorting the other way round: only
    // parents-first order inserts them.
    for i in 0..N {
        from.insert_token(&NewToken {
            id: format!("tok_{:04}", N - i),
            tenant: t.into(),
            agent: format!("agent-{i}"),
            secret_id: "sec_a".into(),
            hash: TokenHash::of(&format!("token-{i}")),
            hint: "seks_openai_x".into(),
            expires_at: None,
            created_at: 100,
            parent_id: (i > 0).then(|| format!("tok_{:04}", N - i + 1)),
            policy: None,
            policy_name: None,
        })
        .await
        .unwrap();
    }
    // One stored batch per append: more batches than a page holds.
    let sign = ChainKey::new(Key::from_bytes([7; 32]));
    for i in 0..N as i64 {
        let record = AuditRecord {
            at_ms: 1_000 + i,
            tenant: t.into(),
            method: "GET".into(),
            path: "/v1/models".into(),
            status: 200,
            ..AuditRecord::default()
        };
        let entry = AuditEntry {
            tenant: t.into(),
            at_ms: record.at_ms,
            record: serde_json::to_string(&record).unwrap(),
        };
        from.append_audit(&[entry], &sign).await.unwrap();
    }

    let moved = transfer::copy(from.as_ref(), to.as_ref()).await.unwrap();
    let rows = |table: &str| moved.iter().find(|c| c.table == table).unwrap().rows;
    assert_eq!(
        (rows("tokens"), rows("audit_batches")),
        (N as u64, N as u64)
    );
    let listed = |tokens: Vec<seks::store::TokenRecord>| serde_json::to_value(tokens).unwrap();
    assert_eq!(
        listed(to.list_tokens(t).await.unwrap()),
        listed(from.list_tokens(t).await.unwrap())
    );
    let last = TokenHash::of(&format!("token-{}", N - 1));
    let found = to.token_by_hash(&last).await.unwrap().unwrap();
    assert_eq!(found.parent_id.as_deref(), Some("tok_0002"));
    let checked = audit::verify(to.as_ref(), &sign).await.unwrap();
    assert_eq!(checked, [(t.to_owned(), N as u64)]);
    // A second copy finds the destination taken.
    assert!(matches!(
        transfer::copy(from.as_ref(), to.as_ref()).await,
        Err(transfer::TransferError::NotEmpty(_))
    ));
}
