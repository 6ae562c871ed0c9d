//! The `Store` trait's contract, checked directly on the backend this run uses (SQLite, or
//! PostgreSQL under `SEKS_TEST_STORE=postgres`): the points where the two SQL dialects
//! differ and a broker would notice — the revision counter brokers poll, subtree
//! revocation, upserts that say whether they replaced, insertion-order ties, counters and
//! the audit chain.

use std::sync::Arc;
use std::time::Duration;

use secrecy::{ExposeSecret, SecretString};
use seks::audit::ChainKey;
use seks::store::{
    ApprovalRecord, ApprovalState, AuditEntry, AuditFilter, Location, NewSecret, NewToken, Store,
    StoreError, UsageDelta,
};
use seks::tokens::TokenHash;
use seks::vault::{Key, SealedSecret, SecretIdentity, Vault};

use crate::support::{Env, pg};

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

/// Secret `sec_a` ("main"), which the tokens below use.
fn main_secret() -> NewSecret {
    NewSecret {
        id: "sec_a".into(),
        tenant: T.into(),
        name: "main".into(),
        provider: "openai".into(),
        sealed: sealed(1),
        created_at: 100,
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
    store.insert_secret(&main_secret()).await.unwrap();
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
    let after_rotate = store.revision().await.unwrap();
    assert!(after_rotate > after_revoke);

    // Resealing keeps the version and is a compare-and-set on version and ciphertext.
    for (version, was) in [(1, vec![3; 40]), (2, vec![1; 40])] {
        assert!(
            !store
                .reseal_secret(T, "sec_a", version, &was, &sealed(5))
                .await
                .unwrap()
        );
    }
    assert!(
        store
            .reseal_secret(T, "sec_a", 2, &[3; 40], &sealed(5))
            .await
            .unwrap()
    );
    let secret = store.secret_by_name(T, "main").await.unwrap().unwrap();
    assert_eq!(
        (secret.version, secret.sealed, secret.rotated_at),
        (2, sealed(5), Some(700))
    );
    assert!(store.revision().await.unwrap() > after_rotate);

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
    // A policy that doesn't exist can't be named.
    assert!(matches!(
        store
            .update_token_policy(T, "tok_p", None, Some("nope"), None)
            .await,
        Err(StoreError::NotFound(_))
    ));
    assert!(
        !store
            .update_token_policy(T, "tok_none", None, Some("chat"), None)
            .await
            .unwrap()
    );
    let mut follows_nothing = token("tok_n", 40, None);
    follows_nothing.policy_name = Some("nope".into());
    assert!(matches!(
        store.insert_token(&follows_nothing).await,
        Err(StoreError::NotFound(_))
    ));
    assert_eq!(
        store.put_capabilities(T, &[("b", "{}")], 1).await.unwrap(),
        [false]
    );
    assert_eq!(
        store
            .put_capabilities(T, &[("b", "{\"x\":1}"), ("A", "{}")], 2)
            .await
            .unwrap(),
        [true, false]
    );
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
    let totals = store.add_usage(&[delta.clone(), delta]).await.unwrap();
    assert_eq!(totals.len(), 1, "{totals:?}");
    assert_eq!((totals[0].requests, totals[0].tokens), (4, 60));
    assert_eq!(store.usage("tok_p", 20_000).await.unwrap(), (4, 60));
    // A zero delta reads what another broker added, and creates no row for an unused token.
    let read = |id: &str| UsageDelta {
        token_id: id.into(),
        day: 20_000,
        requests: 0,
        tokens: 0,
    };
    let totals = again
        .add_usage(&[read("tok_p"), read("tok_unused")])
        .await
        .unwrap();
    let seen: Vec<_> = totals
        .iter()
        .map(|t| (t.token_id.as_str(), t.requests, t.tokens))
        .collect();
    assert_eq!(seen, [("tok_p", 4, 60), ("tok_unused", 0, 0)]);
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
    assert_eq!(store.prune_audit(T, 1_003, 256, &sign).await.unwrap(), 3);
    let (rest, _) = store.audit_chain_page(T, 0, 10).await.unwrap();
    assert_eq!(rest.iter().map(|r| r.seq).collect::<Vec<_>>(), [4, 5]);

    // Deleting a secret takes its tokens with it.
    assert_eq!(store.delete_secret(T, "sec_a").await.unwrap(), 3);
    assert!(store.all_secrets().await.unwrap().is_empty());
}

/// Only a store several brokers can share leases limits, and its leases never grant more
/// than the limit, however many replicas ask at once.
#[tokio::test]
async fn a_shared_store_leases_rates_and_slots_without_going_over() {
    let env = Env::new("");
    let store = open(&env).await;
    let Some(leases) = store.leases() else {
        assert!(!pg::on_postgres(), "the PostgreSQL store is the shared one");
        return;
    };
    // One request per 10 min with 50 min of burst: 6 now, then none for 10 min.
    let (interval, burst) = (Duration::from_secs(600), Duration::from_secs(3000));
    let mut granted = Vec::new();
    for _ in 0..4 {
        granted.push(
            leases
                .lease_rate("tok_r", 4, interval, burst)
                .await
                .unwrap(),
        );
    }
    assert_eq!(granted, [4, 2, 0, 0]);

    // Five slots across replicas a, b and c.
    let ttl = Duration::from_secs(30);
    assert_eq!(
        leases.lease_slots("tok_c", "a", 3, 5, ttl).await.unwrap(),
        3
    );
    assert_eq!(
        leases.lease_slots("tok_c", "b", 4, 5, ttl).await.unwrap(),
        2
    );
    assert_eq!(
        leases.lease_slots("tok_c", "c", 1, 5, ttl).await.unwrap(),
        0
    );
    // a gives one back and releases nothing else; b can then have it.
    let renewed = leases
        .renew_slots("a", &[("tok_c".into(), 2), ("tok_none".into(), 0)], ttl)
        .await
        .unwrap();
    assert_eq!(renewed, ["tok_c"]);
    assert_eq!(
        leases.lease_slots("tok_c", "b", 4, 5, ttl).await.unwrap(),
        3
    );
    // Releasing all frees them for c.
    leases
        .renew_slots("a", &[("tok_c".into(), 0)], ttl)
        .await
        .unwrap();
    assert_eq!(
        leases.lease_slots("tok_c", "c", 5, 5, ttl).await.unwrap(),
        2
    );

    // A lease that ran out isn't renewed: its slots may be someone else's by then.
    let short = Duration::from_millis(200);
    assert_eq!(
        leases.lease_slots("tok_x", "a", 2, 2, short).await.unwrap(),
        2
    );
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert!(
        leases
            .renew_slots("a", &[("tok_x".into(), 2)], ttl)
            .await
            .unwrap()
            .is_empty()
    );
    assert_eq!(
        leases.lease_slots("tok_x", "b", 2, 2, ttl).await.unwrap(),
        2
    );

    // Twenty replicas asking at once for one slot each of seven get seven between them.
    let mut asks = tokio::task::JoinSet::new();
    for i in 0..20 {
        let store = store.clone();
        asks.spawn(async move {
            let leases = store.leases().expect("shared");
            leases
                .lease_slots("tok_race", &format!("r{i}"), 1, 7, ttl)
                .await
                .unwrap()
        });
    }
    let got: u32 = asks.join_all().await.into_iter().sum();
    assert_eq!(got, 7);
}

/// A policy deleted while a token naming it is created (through two replicas, say): either
/// the token is refused or the delete is, never a token left following a deleted policy.
#[tokio::test]
async fn deleting_a_policy_and_creating_a_token_that_names_it_never_both_succeed() {
    let env = Env::new("");
    let store = open(&env).await;
    let other = open(&env).await;
    store.insert_secret(&main_secret()).await.unwrap();
    for i in 0..40u8 {
        let name = format!("p{i}");
        store.put_policy(T, &name, "{}", 100).await.unwrap();
        let mut new = token(&format!("tok_{i}"), i, None);
        new.policy_name = Some(name.clone());
        let (deleted, inserted) =
            tokio::join!(store.delete_policy(T, &name), other.insert_token(&new));
        match (deleted, inserted) {
            (Ok(true), Err(StoreError::NotFound(_))) | (Err(StoreError::InUse(_)), Ok(())) => {}
            outcome => panic!("round {i}: {outcome:?}"),
        }
    }
}

#[tokio::test]
async fn a_master_key_rotation_applies_whole_or_not_at_all() {
    use seks::store::{MetaSwap, Rekey, RewrappedSecret};
    let env = Env::new("");
    let store = open(&env).await;
    store.insert_secret(&main_secret()).await.unwrap();
    store.set_meta("master_key_check", "old").await.unwrap();
    let rewrapped = SealedSecret {
        wrapped_key: vec![9; 48],
        wrap_nonce: vec![9; 12],
        key_version: 2,
        ..sealed(1)
    };
    let rekey = |was_key: u8, was_check: &str| Rekey {
        secrets: vec![RewrappedSecret {
            tenant: T.into(),
            id: "sec_a".into(),
            version: 1,
            was: vec![was_key; 48],
            sealed: rewrapped.clone(),
        }],
        meta: vec![
            MetaSwap {
                key: "master_key_check".into(),
                was: Some(was_check.into()),
                value: "new".into(),
            },
            MetaSwap {
                key: "master_key_version".into(),
                was: None,
                value: "2".into(),
            },
        ],
        absent: vec!["forward_ca".into()],
        key_version: 2,
    };
    let unchanged = async || {
        let row = store.secret_by_id(T, "sec_a").await.unwrap().unwrap();
        assert_eq!(row.sealed, sealed(1));
        assert_eq!(
            store.meta("master_key_check").await.unwrap().unwrap(),
            "old"
        );
        assert_eq!(store.meta("master_key_version").await.unwrap(), None);
    };

    // A secret or a meta value that changed since it was read: nothing applies.
    for stale in [rekey(7, "old"), rekey(1, "other")] {
        let refused = store.rekey(&stale).await;
        assert!(
            matches!(refused, Err(StoreError::RekeyRaced(_))),
            "{refused:?}"
        );
        let said = refused.unwrap_err().to_string();
        assert!(
            said.contains("changed while the master key was being rotated")
                && !said.contains("already exists"),
            "{said}"
        );
        unchanged().await;
    }
    // A secret added since the secrets were read would stay under the old key.
    store
        .insert_secret(&NewSecret {
            id: "sec_late".into(),
            name: "late".into(),
            ..main_secret()
        })
        .await
        .unwrap();
    let refused = store.rekey(&rekey(1, "old")).await;
    assert!(
        matches!(refused, Err(StoreError::RekeyRaced(_))),
        "{refused:?}"
    );
    unchanged().await;
    store.delete_secret(T, "sec_late").await.unwrap();
    // So would a sealed meta value made since it was found absent.
    let mut made_meanwhile = rekey(1, "old");
    made_meanwhile.absent = vec!["sealed_meanwhile".into()];
    store.set_meta("sealed_meanwhile", "x").await.unwrap();
    let refused = store.rekey(&made_meanwhile).await;
    assert!(
        matches!(refused, Err(StoreError::RekeyRaced(_))),
        "{refused:?}"
    );
    unchanged().await;

    store.rekey(&rekey(1, "old")).await.unwrap();
    let row = store.secret_by_id(T, "sec_a").await.unwrap().unwrap();
    assert_eq!(row.sealed, rewrapped);
    assert_eq!(
        store.meta("master_key_check").await.unwrap().unwrap(),
        "new"
    );
    assert_eq!(
        store.meta("master_key_version").await.unwrap().unwrap(),
        "2"
    );
    // A writer still on the old key can't put a value sealed under it back.
    let stale = store.rotate_secret(T, "sec_a", 2, &sealed(3), 200).await;
    assert!(matches!(stale, Err(StoreError::NotFound(_))), "{stale:?}");
    let resealed = store
        .reseal_secret(T, "sec_a", 1, &sealed(1).ciphertext, &sealed(3))
        .await
        .unwrap();
    assert!(!resealed);
    assert_eq!(
        store
            .secret_by_id(T, "sec_a")
            .await
            .unwrap()
            .unwrap()
            .sealed,
        rewrapped
    );
}

/// A store with audit records for `T`, moved from `old` to a new master key by the real
/// rotation; the vault it now opens with.
async fn rotated_with_audit(store: &dyn Store, old: &Vault) -> Vault {
    store
        .set_meta("master_key_check", &old.key_check())
        .await
        .unwrap();
    let entries: Vec<AuditEntry> = (0..5)
        .map(|i| AuditEntry {
            tenant: T.into(),
            at_ms: 1_000 + i,
            record: format!(
                r#"{{"at_ms":{},"request_id":"req_{i}","tenant":"{T}","method":"GET","path":"/","status":200,"decision":"allowed","bytes_in":0,"bytes_out":0,"total_us":1,"client":"127.0.0.1:1"}}"#,
                1_000 + i
            ),
        })
        .collect();
    // Two batches: pruning takes whole ones.
    for batch in [&entries[..3], &entries[3..]] {
        store.append_audit(batch, &old.audit_key()).await.unwrap();
    }
    let (new, _) = seks::ops::master_key::rotate(store, old, Key::from_bytes([2; 32]))
        .await
        .unwrap();
    new
}

/// Retention in a broker still on the old master key after a rotation is refused: its
/// checkpoint, signed by a key the log no longer answers to, would break verification.
#[tokio::test]
async fn pruning_with_a_rotated_out_master_key_is_refused() {
    let env = Env::new("");
    let store = open(&env).await;
    let old = Vault::new(Key::from_bytes([1; 32]));
    let new = rotated_with_audit(store.as_ref(), &old).await;

    let refused = store.prune_audit(T, 1_003, 256, &old.audit_key()).await;
    assert!(
        matches!(refused, Err(StoreError::AuditTampered { .. })),
        "{refused:?}"
    );
    let verified = seks::audit::verify(store.as_ref(), &new.audit_key()).await;
    assert_eq!(verified.unwrap(), [(T.to_owned(), 5)]);

    assert_eq!(
        store
            .prune_audit(T, 1_003, 256, &new.audit_key())
            .await
            .unwrap(),
        3
    );
    let verified = seks::audit::verify(store.as_ref(), &new.audit_key()).await;
    assert_eq!(verified.unwrap(), [(T.to_owned(), 2)]);
}

/// A secret added by a broker or command still on the old master key after a rotation is
/// refused: the store would hold a value nothing opens any more.
#[tokio::test]
async fn adding_a_secret_with_a_rotated_out_master_key_is_refused() {
    let env = Env::new("");
    let store = open(&env).await;
    let old = Vault::new(Key::from_bytes([1; 32]));
    let new = rotated_with_audit(store.as_ref(), &old).await;
    let identity = SecretIdentity {
        tenant: T,
        secret_id: "sec_late",
        version: 1,
        provider: "openai",
        name: Some("late"),
    };
    let secret = |vault: &Vault| NewSecret {
        id: "sec_late".into(),
        name: "late".into(),
        sealed: vault
            .seal(identity, &SecretString::from("sk-late"))
            .unwrap(),
        ..main_secret()
    };

    let refused = store.insert_secret(&secret(&old)).await;
    assert!(
        matches!(refused, Err(StoreError::StaleMasterKey { sealed: 1 })),
        "{refused:?}"
    );
    assert!(store.all_secrets().await.unwrap().is_empty());

    store.insert_secret(&secret(&new)).await.unwrap();
    let row = store.secret_by_id(T, "sec_late").await.unwrap().unwrap();
    assert_eq!(
        new.open(row.identity(), &row.sealed)
            .unwrap()
            .expose_secret(),
        "sk-late"
    );
}

/// The forward proxy's CA made by a process still on the old master key after a rotation is
/// refused: the store would keep a CA key that nothing opens any more.
#[tokio::test]
async fn a_forward_proxy_ca_made_with_a_rotated_out_master_key_is_refused() {
    use seks::forward::ca::{BrokerCa, CaError, META_FORWARD_CA};
    let env = Env::new("");
    let store = open(&env).await;
    let old = Vault::new(Key::from_bytes([1; 32]));
    let new = rotated_with_audit(store.as_ref(), &old).await;

    let refused = BrokerCa::load_or_create(store.as_ref(), &old).await;
    assert!(
        matches!(
            refused,
            Err(CaError::Store(StoreError::StaleMasterKey { sealed: 1 }))
        ),
        "{:?}",
        refused.err()
    );
    assert_eq!(store.meta(META_FORWARD_CA).await.unwrap(), None);
    let made = BrokerCa::load_or_create(store.as_ref(), &new)
        .await
        .unwrap();
    let again = BrokerCa::load_or_create(store.as_ref(), &new)
        .await
        .unwrap();
    assert_eq!(made.certificate_pem(), again.certificate_pem());
}

/// Two rotations from the same key at once: the second changes nothing, whatever the store
/// holds, and says that the store moved meanwhile (not that something already exists, that
/// the audit log is forged or that secrets need removing).
#[tokio::test]
async fn a_rotation_that_lost_a_race_changes_nothing_and_says_so() {
    for holds in ["nothing", "an audit log", "a secret"] {
        let env = Env::new("");
        let store = open(&env).await;
        let old = Vault::new(Key::from_bytes([1; 32]));
        store
            .set_meta("master_key_check", &old.key_check())
            .await
            .unwrap();
        let first = match holds {
            "nothing" => {
                let rotate = seks::ops::master_key::rotate;
                rotate(store.as_ref(), &old, Key::from_bytes([2; 32]))
                    .await
                    .unwrap()
                    .0
            }
            _ => {
                if holds == "a secret" {
                    let identity = SecretIdentity {
                        tenant: T,
                        secret_id: "sec_a",
                        version: 1,
                        provider: "openai",
                        name: Some("main"),
                    };
                    let sealed = old.seal(identity, &SecretString::from("sk-a")).unwrap();
                    store
                        .insert_secret(&NewSecret {
                            sealed,
                            ..main_secret()
                        })
                        .await
                        .unwrap();
                }
                rotated_with_audit(store.as_ref(), &old).await
            }
        };
        let late = seks::ops::master_key::rotate(store.as_ref(), &old, Key::from_bytes([3; 32]))
            .await
            .map(|_| ())
            .unwrap_err()
            .to_string();
        assert!(
            late.contains("another master key")
                && !late.contains("already exists")
                && !late.contains("not signed")
                && !late.contains("remove or re-add"),
            "{holds}: {late}"
        );
        let check = store.meta("master_key_check").await.unwrap();
        assert_eq!(check, Some(first.key_check()), "{holds}");
    }
}
