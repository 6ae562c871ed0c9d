//! Several brokers on one PostgreSQL database: the official OpenAI SDK spread over three
//! replicas, a change made through any of them (or the CLI) reaching all of them within a
//! second, and PostgreSQL stopped under load and started again, with counts of what was
//! served, refused and audited; and a rotating OAuth2 refresh token shared by two replicas,
//! one of which may die mid-refresh; and a SigV4-signed request replayed to another replica.
//! Always on PostgreSQL, whichever store the suite runs on.

use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

use seks::sigv4::replay::REUSE_WINDOW;

use crate::audit::records;
use crate::sigv4::{MockS3, agent_signed, s3_config, s3_token};
use crate::support::http::{Reply, send};
use crate::support::mock::MockUpstream;
use crate::support::mock::token_endpoint::{TokenMode, default_secret};
use crate::support::pg::{self, PgCluster, TestDb};
use crate::support::replicas::{Call, Load, Outcome, Replicas};
use crate::support::{Broker, Env, assert_never_leaked, config_for, run_python};

const KEY: &str = "sk-proj-REPLICA-real-key-0123456789";
const ROTATED: &str = "sk-proj-REPLICA-rotated-key-9876543210";
const MODELS: &str = "/api/openai/v1/models";
/// What the issue promises: a change reaches every replica within a second.
const PROPAGATION: Duration = Duration::from_secs(1);
/// The outage test's `store.outage_grace`: long enough to check what it should while it
/// lasts on a busy machine, short enough to wait out.
const GRACE: Duration = Duration::from_secs(8);
/// The access tokens' lifetime in the OAuth2 test: a few refreshes in a short run.
const LIFETIME: Duration = Duration::from_secs(3);

/// A mock upstream, and an environment on a fresh database of the server at `server`
/// (superuser URL) with secret `main` (openai, [`KEY`]); `top_level` TOML opens the config.
async fn setup(server: &str, top_level: &str) -> (MockUpstream, Env) {
    let mock = MockUpstream::start().await;
    let env = Env::on_database(
        &config_for(&mock.url(), top_level),
        TestDb::create_on(server),
    );
    env.add_secret("main", "openai", KEY).await;
    (mock, env)
}

/// The request id of a broker's answer.
fn id_of(reply: &Reply) -> String {
    reply
        .header("x-seks-request-id")
        .expect("every answer names its request")
        .to_owned()
}

/// Wait until the audit log holds a record of every request in `ids`; the log, by id.
async fn audited(env: &Env, ids: &HashSet<String>) -> HashMap<String, serde_json::Value> {
    let start = Instant::now();
    loop {
        let stored = records(env).await;
        if ids.iter().all(|id| stored.contains_key(id)) {
            return stored;
        }
        let missing = ids.iter().filter(|id| !stored.contains_key(*id)).count();
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "{missing} of {} requests never reached the audit log",
            ids.len()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

async fn assert_chain_intact(env: &Env) {
    let verified = env.cli(&["audit", "verify"], "").await.ok();
    assert!(verified.stdout.contains("chain intact"), "{verified:#?}");
}

#[tokio::test]
async fn the_openai_sdk_spread_over_three_replicas_is_served_by_each_and_audited_in_one_chain() {
    let Some(server) = pg::shared_cluster() else {
        return;
    };
    let (mock, env) = setup(&server, "").await;
    let token = env.create_token("main", &["--agent", "spread"]).await;
    let replicas = Replicas::start(&env, 3, &[]).await;

    let mut args = vec!["30"];
    args.extend(replicas.brokers.iter().map(|b| b.base.as_str()));
    let out = run_python("openai_replicas.py", &args, &[("SEKS_TOKEN", &token)]).await;
    assert!(out.status.success(), "{out:#?}");
    let ids: HashSet<String> = out.stdout.lines().map(str::to_owned).collect();
    assert_eq!(ids.len(), 30, "{}", out.stdout);
    // A request id opens with its process's own random prefix (`req_` and 8 characters):
    // the client's round robin had each replica answer a third of the calls.
    let mut per_replica: HashMap<&str, usize> = HashMap::new();
    for id in &ids {
        *per_replica.entry(&id[..12]).or_default() += 1;
    }
    assert_eq!(per_replica.values().copied().collect::<Vec<_>>(), [10; 3]);
    // The upstream got the real key every time.
    let seen = mock.requests();
    assert_eq!(seen.len(), 30);
    let bearer = format!("Bearer {KEY}");
    assert!(
        seen.iter()
            .all(|r| r.header("authorization") == Some(bearer.as_str())),
        "{seen:#?}"
    );
    // Three writers, one chain: every request in it once, and it verifies.
    let stored = audited(&env, &ids).await;
    assert!(
        ids.iter()
            .all(|id| stored[id]["status"] == 200 && stored[id]["agent"] == "spread")
    );
    assert_chain_intact(&env).await;
    assert_never_leaked(&env, KEY, out.stdout.as_bytes());
}

#[tokio::test]
async fn a_change_through_any_replica_or_the_cli_reaches_every_replica_within_a_second() {
    let Some(server) = pg::shared_cluster() else {
        return;
    };
    let (mock, env) = setup(&server, "").await;
    let admin_token = env.admin_token().await;
    let mut tokens = HashMap::new();
    for agent in ["rescoped", "cli-revoked", "api-revoked", "created"] {
        tokens.insert(agent, env.create_token("main", &["--agent", agent]).await);
    }
    let call = |agent: &str| Call::get(MODELS, Some(&tokens[agent]));
    let replicas = Replicas::start(&env, 3, &[]).await;
    // Every replica has answered with each token, so each has it cached.
    for agent in ["rescoped", "cli-revoked", "api-revoked"] {
        let statuses: Vec<u16> = replicas
            .each(&call(agent))
            .await
            .iter()
            .map(|r| r.status)
            .collect();
        assert_eq!(statuses, [200; 3], "{agent}");
    }
    let mut measured = Vec::new();

    let id = env.token_id("rescoped").await;
    env.cli(&["token", "update", &id, "--deny", "GET /v1/models"], "")
        .await
        .ok();
    let since = Instant::now();
    let took = replicas
        .each_until(&call("rescoped"), since, Duration::from_secs(10), |r| {
            r.status == 403 && r.header("x-seks-error") == Some("policy_denied")
        })
        .await;
    measured.push(("re-scoped by the CLI", took));

    let id = env.token_id("cli-revoked").await;
    env.cli(&["token", "revoke", &id], "").await.ok();
    let since = Instant::now();
    let took = replicas
        .each_until(
            &call("cli-revoked"),
            since,
            Duration::from_secs(10),
            revoked,
        )
        .await;
    measured.push(("revoked by the CLI", took));

    let id = env.token_id("api-revoked").await;
    let admin = replicas.brokers[0].admin_url().await;
    let answer = send(
        "POST",
        &format!("{admin}/admin/v1/tokens/{id}/revoke"),
        &[("authorization", &format!("Bearer {admin_token}"))],
        "",
    )
    .await;
    assert_eq!(answer.status, 200, "{answer:?}");
    let since = Instant::now();
    let took = replicas
        .each_until(
            &call("api-revoked"),
            since,
            Duration::from_secs(10),
            revoked,
        )
        .await;
    measured.push(("revoked through replica 0's admin API", took));

    // A token no replica has seen yet works on each at once (nothing cached to drop).
    let statuses: Vec<u16> = replicas
        .each(&call("created"))
        .await
        .iter()
        .map(|r| r.status)
        .collect();
    assert_eq!(statuses, [200; 3]);

    env.cli(&["secret", "rotate", "main"], ROTATED).await.ok();
    let since = Instant::now();
    let rotated = format!("Bearer {ROTATED}");
    let mut took = Vec::new();
    for broker in &replicas.brokers {
        // Asked one replica after another, so later ones are measured long, never short.
        loop {
            let reply = call("created").send(&broker.base).await.expect("answer");
            let upstream_got = mock
                .requests()
                .last()
                .and_then(|r| r.header("authorization").map(str::to_owned));
            if reply.status == 200 && upstream_got.as_deref() == Some(rotated.as_str()) {
                took.push(since.elapsed());
                break;
            }
            assert!(
                since.elapsed() < Duration::from_secs(10),
                "rotation never arrived"
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
    measured.push(("secret rotated by the CLI", took));

    eprintln!("propagation to each of 3 replicas: {measured:?}");
    for (change, took) in &measured {
        assert!(
            took.iter().all(|t| *t < PROPAGATION),
            "{change}: {took:?} (all: {measured:?})"
        );
    }
}

/// Refused as revoked.
fn revoked(reply: &Reply) -> bool {
    reply.status == 401 && reply.header("x-seks-error") == Some("token_revoked")
}

/// The load's answers to requests sent in `[from, to)`.
fn sent_within(outcomes: &[Outcome], from: Instant, to: Instant) -> Vec<&Outcome> {
    outcomes
        .iter()
        .filter(|o| o.sent >= from && o.sent < to)
        .collect()
}

/// Answers counted by status and error code.
fn tally(outcomes: &[&Outcome]) -> HashMap<(u16, String), usize> {
    let mut counts = HashMap::new();
    for o in outcomes {
        *counts
            .entry((o.status, o.code.clone().unwrap_or_default()))
            .or_default() += 1;
    }
    counts
}

#[tokio::test]
async fn a_postgresql_outage_under_load_serves_known_tokens_for_the_grace_and_loses_no_record() {
    // PostgreSQL is installed (the suite's cluster runs); this test stops a server of its own.
    if pg::shared_cluster().is_none() {
        return;
    }
    let cluster = PgCluster::start().await;
    let grace = format!("[store]\noutage_grace = \"{}s\"\n", GRACE.as_secs());
    let (mock, env) = setup(&cluster.url(), &grace).await;
    let known = env.create_token("main", &["--agent", "steady"]).await;
    let fresh = env.create_token("main", &["--agent", "fresh"]).await;
    // Limits leased from the store are counted by each replica alone during the grace.
    let limited = env
        .create_token(
            "main",
            &[
                "--agent",
                "limited",
                "--rpm",
                "100000",
                "--concurrency",
                "8",
            ],
        )
        .await;
    let replicas = Replicas::start(&env, 3, &[]).await;
    let known_call = Call::get(MODELS, Some(&known));
    let fresh_call = Call::get(MODELS, Some(&fresh));
    let limited_call = Call::get(MODELS, Some(&limited));
    let mut checked: Vec<Reply> = replicas.each(&known_call).await;
    checked.extend(replicas.each(&limited_call).await);
    assert!(checked.iter().all(|r| r.status == 200), "{checked:#?}");

    let load = Load::start(&replicas, &known_call, Duration::from_millis(20));
    tokio::time::sleep(Duration::from_secs(1)).await;
    let stopping = Instant::now();
    cluster.stop().await;
    let stopped = Instant::now();

    // Past the moment cached tokens normally go stale, within the grace: the known token is
    // served by every replica, a token none has seen is refused, and none says it is ready.
    tokio::time::sleep_until((stopped + Duration::from_secs(1)).into()).await;
    let mut during = replicas.each(&known_call).await;
    // Past the 2 s a leased rate permit lasts: leasing fails, local counting takes over.
    tokio::time::sleep_until((stopped + Duration::from_millis(2500)).into()).await;
    during.extend(replicas.each(&limited_call).await);
    assert!(during.iter().all(|r| r.status == 200), "{during:#?}");
    let refused = replicas.each(&fresh_call).await;
    for reply in &refused {
        assert_eq!(reply.status, 503, "{reply:?}");
        assert_eq!(reply.header("x-seks-error"), Some("store_unavailable"));
        // In the provider's error shape, so the SDK reads it.
        assert_eq!(
            reply.json()["error"]["code"],
            "store_unavailable",
            "{reply:?}"
        );
    }
    replicas
        .each_until(&Call::get("/readyz", None), stopped, GRACE, |r| {
            r.status == 503
        })
        .await;
    checked.extend(during);
    checked.extend(refused);

    // Once the grace is over, the known token is refused too.
    tokio::time::sleep_until((stopped + GRACE).into()).await;
    let mut after = replicas.each(&known_call).await;
    after.extend(replicas.each(&limited_call).await);
    assert!(after.iter().all(|r| r.status == 503), "{after:#?}");
    checked.extend(after);
    tokio::time::sleep(Duration::from_secs(1)).await;

    // PostgreSQL comes back: the same processes recover by themselves.
    let restarting = Instant::now();
    cluster.resume().await;
    let resumed = Instant::now();
    let ready_in = replicas
        .each_until(
            &Call::get("/readyz", None),
            resumed,
            Duration::from_secs(30),
            |r| r.status == 200,
        )
        .await;
    replicas
        .each_until(&known_call, resumed, Duration::from_secs(30), |r| {
            r.status == 200
        })
        .await;
    let recovered = Instant::now();
    let fresh_after = replicas.each(&fresh_call).await;
    assert!(
        fresh_after.iter().all(|r| r.status == 200),
        "{fresh_after:#?}"
    );
    checked.extend(fresh_after);
    tokio::time::sleep(Duration::from_millis(500)).await;
    let outcomes = load.finish().await;

    let before = sent_within(&outcomes, stopping - Duration::from_secs(1), stopping);
    // From past the usual stale second to the grace's end, which counts from the last
    // successful sync: before `stopped`, when the server had stopped answering.
    let in_grace = sent_within(
        &outcomes,
        stopped + Duration::from_secs(1),
        stopping + GRACE - Duration::from_millis(500),
    );
    // Requests sent after the grace but well before the server was asked to start.
    let past_grace = sent_within(
        &outcomes,
        stopped + GRACE,
        restarting - Duration::from_millis(500),
    );
    let back = sent_within(&outcomes, recovered, Instant::now());
    for (phase, answers) in [
        ("before", &before),
        ("in the grace", &in_grace),
        ("after recovery", &back),
    ] {
        for replica in 0..replicas.brokers.len() {
            assert!(
                answers
                    .iter()
                    .any(|o| o.replica == replica && o.status == 200),
                "replica {replica} served nothing {phase}: {:?}",
                tally(answers)
            );
        }
    }
    assert!(!past_grace.is_empty());
    assert!(
        past_grace.iter().all(|o| o.status == 503),
        "served after the grace: {:?}",
        tally(&past_grace)
    );
    assert!(
        before.iter().all(|o| o.status == 200),
        "{:?}",
        tally(&before)
    );

    // Every answer the load and the checks got has its record: those of requests served or
    // refused while the store was down waited in the queue, and none was lost.
    let mut ids: HashSet<String> = outcomes
        .iter()
        .filter_map(|o| o.request_id.clone())
        .collect();
    assert_eq!(ids.len(), outcomes.len(), "every answer names its request");
    ids.extend(checked.iter().map(id_of));
    let stored = audited(&env, &ids).await;
    assert_chain_intact(&env).await;
    let served = outcomes.iter().filter(|o| o.status == 200).count();
    let served_audited = outcomes
        .iter()
        .filter(|o| o.status == 200)
        .filter(|o| {
            o.request_id
                .as_ref()
                .is_some_and(|id| stored[id]["status"] == 200)
        })
        .count();
    assert_eq!(served_audited, served);
    assert!(mock.requests().len() >= served);
    eprintln!(
        "outage with {} replicas, grace {GRACE:?}, `pg_ctl stop` took {:?}: {} answers, \
         {served} served; (status, code) sent in the grace {:?}, after it {:?}; ready again \
         {ready_in:?} after `pg_ctl start`; {} records in the log, every answer's among them, \
         chain intact",
        replicas.brokers.len(),
        stopped - stopping,
        outcomes.len(),
        tally(&sent_within(&outcomes, stopping, stopping + GRACE)),
        tally(&sent_within(&outcomes, stopping + GRACE, restarting)),
        stored.len(),
    );
}

/// A mock token endpoint and API, an environment on a fresh database of `server` with the
/// mock's client stored for `gmail` (`top_level` TOML opens the config), and a call to the
/// API with a token for it.
async fn gmail_on(server: &str, top_level: &str) -> (MockUpstream, Env, Call) {
    let mock = MockUpstream::start().await;
    let config = format!(
        "{top_level}[providers.gmail]\nbase_url = \"{0}\"\nauth = {{ scheme = \"oauth2\", token_url = \"{0}/oauth2/token\" }}\n",
        mock.url()
    );
    let env = Env::on_database(&config, TestDb::create_on(server));
    env.add_secret("google", "gmail", &default_secret()).await;
    let token = env.create_token("google", &[]).await;
    let call = Call::get("/api/gmail/oauth-api/users/me/profile", Some(&token));
    (mock, env, call)
}

#[tokio::test]
async fn replicas_refresh_a_rotating_oauth2_secret_one_at_a_time_and_keep_each_others_tokens() {
    let Some(server) = pg::shared_cluster() else {
        return;
    };
    let (mock, env, call) = gmail_on(&server, "").await;
    // Every grant replaces the refresh token and the old one stops working, as with
    // providers that rotate them; a slow endpoint makes the replicas' refreshes overlap.
    mock.oauth.set_rotate(true);
    mock.oauth.set_expires_in(Some(LIFETIME.as_secs()));
    mock.oauth.set_delay(Duration::from_millis(300));
    let replicas = Replicas::start(&env, 2, &[]).await;

    // Both replicas need an access token at once, then again as each one's expires.
    let load = Load::start(&replicas, &call, Duration::from_millis(20));
    tokio::time::sleep(LIFETIME * 2 + LIFETIME / 2).await;
    let outcomes = load.finish().await;

    let failed: Vec<&Outcome> = outcomes.iter().filter(|o| o.status != 200).collect();
    assert!(failed.is_empty(), "{failed:#?}");
    for replica in 0..2 {
        assert!(outcomes.iter().filter(|o| o.replica == replica).count() > 20);
    }
    // No refresh token was sent twice: a provider that detects reuse would revoke them all.
    let sent: Vec<String> = mock
        .oauth
        .requests()
        .iter()
        .filter_map(|(body, _)| {
            serde_urlencoded::from_str::<Vec<(String, String)>>(body)
                .ok()?
                .into_iter()
                .find(|(k, _)| k == "refresh_token")
                .map(|(_, v)| v)
        })
        .collect();
    let distinct: HashSet<&String> = sent.iter().collect();
    assert_eq!(distinct.len(), sent.len(), "{sent:#?}");
    // Each replica refreshes once per lifetime (nine tenths of it): one replica's rotation
    // doesn't make the other drop a token that is still good, which would have them refresh
    // in turn without end (dozens of times in this run). Three refreshes each, and slack.
    assert!(
        (2..=8).contains(&sent.len()),
        "{} refreshes in {:?}",
        sent.len(),
        LIFETIME * 2 + LIFETIME / 2
    );
}

#[tokio::test]
async fn a_replica_that_dies_mid_refresh_holds_the_others_off_only_for_a_bounded_wait() {
    let Some(server) = pg::shared_cluster() else {
        return;
    };
    let (mock, env, call) = gmail_on(&server, "[upstream]\nresponse_timeout = \"1s\"\n").await;
    let (first, second) = (env.serve().await, env.serve().await);

    // The first replica takes the secret's refresh lease and is killed while its token
    // endpoint call hangs: the lease outlives it.
    mock.oauth.set_mode(TokenMode::Hang);
    let base = first.base.clone();
    let hung = {
        let call = call.clone();
        tokio::spawn(async move { call.send(&base).await })
    };
    let start = Instant::now();
    while mock.oauth.hits() == 0 {
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "no refresh began"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    first.stop().await;
    let _ = hung.await;
    mock.oauth.set_mode(TokenMode::Grant);

    // The other waits for the lease at most its own exchange timeout (1 s) and 5 s more,
    // then says why, without calling the endpoint with the refresh token meanwhile.
    let asked = Instant::now();
    let reply = call.send(&second.base).await.unwrap();
    let waited = asked.elapsed();
    assert_eq!(
        (reply.status, reply.header("x-seks-error")),
        (502, Some("credential_refresh_failed")),
        "{reply:?}"
    );
    assert!(reply.body.contains("another broker"), "{}", reply.body);
    assert!(
        (Duration::from_secs(5)..Duration::from_secs(20)).contains(&waited),
        "{waited:?}"
    );
    assert_eq!(mock.oauth.hits(), 1);
}

#[tokio::test]
async fn a_signed_request_captured_on_its_way_to_one_replica_is_a_replay_at_another() {
    let Some(server) = pg::shared_cluster() else {
        return;
    };
    let mock = MockS3::start().await;
    let env = Env::on_database(&s3_config(&mock), TestDb::create_on(&server));
    let (key_id, token) = s3_token(&env).await;
    let replicas = Replicas::start(&env, 2, &[]).await;
    let (first, second) = (&replicas.brokers[0], &replicas.brokers[1]);
    // Signed for the first replica's address; the Host header travels with the copy.
    let put = |name: &str| {
        let url = first.url(&format!("/api/s3/bucket/{name}"));
        agent_signed("PUT", &url, &key_id, &token, &[], b"data")
    };
    let send_to = async |broker: &Broker, name: &str, signed: &[(String, String)]| {
        let pairs: Vec<(&str, &str)> = signed
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        send(
            "PUT",
            &broker.url(&format!("/api/s3/bucket/{name}")),
            &pairs,
            "data",
        )
        .await
    };

    // Identical calls an SDK signs in the same second may land on two replicas: both pass.
    let twins = put("twins.txt");
    assert_eq!(send_to(first, "twins.txt", &twins).await.status, 200);
    assert_eq!(send_to(second, "twins.txt", &twins).await.status, 200);

    // A copy sent later to a replica that never saw it is refused all the same.
    let captured = put("captured.txt");
    assert_eq!(send_to(first, "captured.txt", &captured).await.status, 200);
    tokio::time::sleep(REUSE_WINDOW + Duration::from_millis(500)).await;
    let replayed = send_to(second, "captured.txt", &captured).await;
    assert_eq!(replayed.status, 403, "{}", replayed.body);
    assert_eq!(replayed.header("x-seks-error"), Some("replayed_signature"));
    assert_eq!(
        send_to(second, "fresh.txt", &put("fresh.txt")).await.status,
        200
    );
}
