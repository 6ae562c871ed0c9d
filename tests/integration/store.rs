//! The `Store` trait's contract, checked directly on the backend this run uses (SQLite, or
//! PostgreSQL under `SEKS_TEST_STORE=postgres`): the points where the two SQL dialects
//! differ and a broker would notice — the revision counter brokers poll, subtree
//! revocation, upserts that say whether they replaced, insertion-order ties, counters and
//! the audit chain.

use std::sync::Arc;

use seks::audit::ChainKey;
use seks::store::{
    ApprovalRecord, ApprovalState, AuditEntry, AuditFilter, Location, NewSecret, NewToken, Store,
    StoreError, UsageDelta,
};
use seks::tokens::TokenHash;
use seks::vault::{Key, SealedSecret};

use crate::support::Env;

const T: &str = "default";

async fn open(env: &Env) -> Arc<dyn Store> {
    Location::parse(env.store_url(), env.data_dir())
        .unwrap()
        .open()
        .await
        .unwrap()
}

fn sealed(byte: u8) -> SealedSecret {
    SealedSecret {
        ciphertext: vec![byte; 40],
        nonce: vec![byte; 12],
        wrapped_key: vec![byte; 48],
        wrap_nonce: vec![byte; 12],
        key_version: 1,
    }
}

fn token(id: &str, hash: u8, parent: Option<&str>) -> NewToken {
    NewToken {
        id: id.into(),
        tenant: T.into(),
        agent: format!("agent-{id}"),
        secret_id: "sec_a".into(),
        hash: TokenHash([hash; 32]),
        hint: "seks_openai_x".into(),
        expires_at: None,
        created_at: 100,
        parent_id: parent.map(Into::into),
        policy: None,
        policy_name: None,
    }
}

#[tokio::test]
async fn the_store_contract_holds_on_this_backend() {
    let env = Env::new("");
    let store = open(&env).await;
    // A second open (another process, another replica) finds the schema in place.
    let again = open(&env).await;

    let rev = store.revision().await.unwrap();
    store
        .insert_secret(&NewSecret {
            id: "sec_a".into(),
            tenant: T.into(),
            name: "main".into(),
            provider: "openai".into(),
            sealed: sealed(1),
            created_at: 100,
        })
        .await
        .unwrap();
    let after_secret = again.revision().await.unwrap();
    assert!(after_secret > rev, "a new secret must reach every broker");
    let duplicate = NewSecret {
        id: "sec_b".into(),
        tenant: T.into(),
        name: "main".into(),
        provider: "openai".into(),
        sealed: sealed(2),
        created_at: 100,
    };
    assert!(matches!(
        store.insert_secret(&duplicate).await,
        Err(StoreError::Conflict(_))
    ));

    // New tokens and last-use updates don't move the revision; revocation does.
    store.insert_token(&token("tok_p", 1, None)).await.unwrap();
    store
        .insert_token(&token("tok_c", 2, Some("tok_p")))
        .await
        .unwrap();
    store
        .insert_token(&token("tok_g", 3, Some("tok_c")))
        .await
        .unwrap();
    store
        .record_token_use(&[("tok_p".into(), 500), ("tok_p".into(), 400)])
        .await
        .unwrap();
    assert_eq!(store.revision().await.unwrap(), after_secret);
    let found = store
        .token_by_hash(&TokenHash([1; 32]))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        (
            found.id.as_str(),
            found.secret_name.as_str(),
            found.last_used_at
        ),
        ("tok_p", "main", Some(500))
    );
    assert_eq!(store.revoke_token(T, "tok_c", 600).await.unwrap(), 2);
    assert_eq!(store.revoke_token(T, "tok_c", 700).await.unwrap(), 0);
    let after_revoke = store.revision().await.unwrap();
    assert!(after_revoke > after_secret);
    let revoked: Vec<_> = store
        .list_tokens(T)
        .await
        .unwrap()
        .into_iter()
        .map(|t| (t.id, t.revoked_at))
        .collect();
    assert_eq!(
        revoked,
        [
            ("tok_c".into(), Some(600)),
            ("tok_g".into(), Some(600)),
            ("tok_p".into(), None)
        ]
    );

    // Rotation is a compare-and-set on the version.
    store
        .rotate_secret(T, "sec_a", 2, &sealed(3), 700)
        .await
        .unwrap();
    assert!(matches!(
        store.rotate_secret(T, "sec_a", 2, &sealed(4), 800).await,
        Err(StoreError::NotFound(_))
    ));
    let secret = store.secret_by_name(T, "main").await.unwrap().unwrap();
    assert_eq!((secret.version, secret.sealed.nonce), (2, vec![3; 12]));
    assert!(store.revision().await.unwrap() > after_revoke);

    // Named policies in use can't go; capabilities say whether they replaced one.
    store.put_policy(T, "chat", "{}", 100).await.unwrap();
    assert!(
        store
            .update_token_policy(T, "tok_p", None, Some("chat"), None)
            .await
            .unwrap()
    );
    assert!(matches!(
        store.delete_policy(T, "chat").await,
        Err(StoreError::InUse(_))
    ));
    assert!(!store.put_capability(T, "b", "{}", 1).await.unwrap());
    assert!(store.put_capability(T, "b", "{\"x\":1}", 2).await.unwrap());
    assert!(!store.put_capability(T, "A", "{}", 3).await.unwrap());
    let names: Vec<_> = store
        .list_capabilities(T)
        .await
        .unwrap()
        .into_iter()
        .map(|c| c.name)
        .collect();
    assert_eq!(names, ["A", "b"], "names sort bytewise on both backends");

    // Approvals held in the same second list newest first.
    for id in ["apr_z", "apr_a"] {
        store
            .insert_approval(&ApprovalRecord {
                id: id.into(),
                tenant: T.into(),
                token_id: "tok_p".into(),
                summary: "{}".into(),
                state: ApprovalState::Pending,
                reason: None,
                created_at: 100,
                expires_at: 400,
                decided_at: None,
                decided_by: None,
            })
            .await
            .unwrap();
    }
    let order: Vec<_> = store
        .list_approvals(T, false)
        .await
        .unwrap()
        .into_iter()
        .map(|a| a.id)
        .collect();
    assert_eq!(order, ["apr_a", "apr_z"]);
    assert!(
        store
            .decide_approval(T, "apr_a", ApprovalState::Approved, None, "op", 200)
            .await
            .unwrap()
    );
    assert!(
        !store
            .decide_approval(T, "apr_a", ApprovalState::Denied, None, "op", 201)
            .await
            .unwrap()
    );
    assert_eq!(store.list_approvals(T, false).await.unwrap().len(), 1);

    // Daily counters add up.
    let delta = UsageDelta {
        token_id: "tok_p".into(),
        day: 20_000,
        requests: 2,
        tokens: 30,
    };
    store.add_usage(&[delta.clone(), delta]).await.unwrap();
    assert_eq!(store.usage("tok_p", 20_000).await.unwrap(), (4, 60));
    assert_eq!(store.usage_since(T, 19_999).await.unwrap().len(), 1);

    // The audit chain: appended in order, read back filtered, pruned behind a checkpoint.
    let sign = ChainKey::new(Key::from_bytes([7; 32]));
    let entries: Vec<AuditEntry> = (0..5)
        .map(|i| AuditEntry {
            tenant: T.into(),
            at_ms: 1_000 + i,
            record: format!(
                r#"{{"at_ms":{},"agent":"a{}","status":200}}"#,
                1_000 + i,
                i % 2
            ),
        })
        .collect();
    store.append_audit(&entries[..3], &sign).await.unwrap();
    again.append_audit(&entries[3..], &sign).await.unwrap();
    let filter = AuditFilter {
        tenant: T.into(),
        after_seq: 0,
        since_ms: None,
        agent: Some("a0".into()),
        provider: None,
        status: None,
        limit: 10,
        newest: false,
    };
    let seqs: Vec<i64> = store
        .audit_records(&filter)
        .await
        .unwrap()
        .iter()
        .map(|r| r.seq)
        .collect();
    assert_eq!(seqs, [1, 3, 5]);
    assert_eq!(store.audit_tenants().await.unwrap(), [T]);
    assert_eq!(store.prune_audit(T, 1_003, &sign).await.unwrap(), 3);
    let (rest, _) = store.audit_chain_page(T, 0, 10).await.unwrap();
    assert_eq!(rest.iter().map(|r| r.seq).collect::<Vec<_>>(), [4, 5]);

    // Deleting a secret takes its tokens with it.
    assert_eq!(store.delete_secret(T, "sec_a").await.unwrap(), 3);
    assert!(store.all_secrets().await.unwrap().is_empty());
}
