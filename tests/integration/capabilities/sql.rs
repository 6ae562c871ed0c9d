//! `kind = "sql"` against a real PostgreSQL and a real MariaDB (the servers `scripts/test.sh`
//! starts) and a real SQLite file: named queries return rows, arguments are only ever
//! values, read-only capabilities can't write, limits hold, and the connection string never
//! leaks.

use std::str::FromStr;

use serde_json::{Value, json};
use sqlx::mysql::MySqlConnectOptions;
use sqlx::postgres::PgConnectOptions;
use sqlx::sqlite::SqliteConnectOptions;
use sqlx::{ConnectOptions, Connection, Executor};

use super::{audit_records, call, code};
use crate::support::http::send;
use crate::support::{Env, assert_never_leaked, full_suite, pg};

const SETUP: &str = "CREATE TABLE orders (id integer PRIMARY KEY, customer_id integer NOT NULL, \
     total numeric(10,2) NOT NULL, note text, paid boolean NOT NULL DEFAULT false); \
     INSERT INTO orders VALUES (1, 7, 10.50, 'first', false), (2, 7, 20.00, NULL, false), \
     (3, 8, 99.99, 'someone else', false);";

/// A fresh database and login role on the test cluster: (the role's connection string,
/// the superuser's), or `None` when there is no cluster outside `scripts/test.sh`.
async fn pg_database() -> Option<(String, String)> {
    let admin = pg::shared_cluster()?;
    let suffix = seks::tokens::random_base62(12).to_lowercase();
    let (db, role) = (format!("shop_{suffix}"), format!("agent_{suffix}"));
    // The role's password is the secret that must never leak; it has a canary's shape.
    let password = format!("pg-CANARY-{suffix}");
    let mut conn = PgConnectOptions::from_str(&admin)
        .unwrap()
        .connect()
        .await
        .unwrap();
    conn.execute(sqlx::AssertSqlSafe(format!("CREATE DATABASE {db}")))
        .await
        .unwrap();
    conn.execute(sqlx::AssertSqlSafe(format!(
        "CREATE ROLE {role} LOGIN PASSWORD '{password}'"
    )))
    .await
    .unwrap();
    conn.close().await.unwrap();
    let (base, _) = admin.rsplit_once('/').unwrap();
    let db_admin = format!("{base}/{db}");
    let mut conn = PgConnectOptions::from_str(&db_admin)
        .unwrap()
        .connect()
        .await
        .unwrap();
    conn.execute(SETUP).await.unwrap();
    // The role may write: read-only is the capability's doing, not the database's.
    conn.execute(sqlx::AssertSqlSafe(format!(
        "GRANT SELECT, INSERT, UPDATE, DELETE ON orders TO {role}"
    )))
    .await
    .unwrap();
    conn.close().await.unwrap();
    let host = base.rsplit_once('@').unwrap().1;
    Some((
        format!("postgres://{role}:{password}@{host}/{db}"),
        db_admin,
    ))
}

/// A fresh database and account on the test MariaDB server (`SEKS_TEST_MYSQL_URL`): (the
/// account's connection string, the administrator's for that database), or `None` when
/// there is no server outside `scripts/test.sh`.
async fn mysql_database() -> Option<(String, String)> {
    let Ok(admin) = std::env::var("SEKS_TEST_MYSQL_URL") else {
        assert!(
            !full_suite(),
            "SEKS_TEST_MYSQL_URL is not set: scripts/test.sh starts MariaDB (scripts/mysql-test-server.sh)"
        );
        eprintln!(
            "skipped: no MariaDB (run scripts/test.sh, or source scripts/mysql-test-server.sh)"
        );
        return None;
    };
    let suffix = seks::tokens::random_base62(12).to_lowercase();
    let (db, account) = (format!("shop_{suffix}"), format!("agent_{suffix}"));
    let password = format!("my-CANARY-{suffix}");
    let mut conn = MySqlConnectOptions::from_str(&admin)
        .unwrap()
        .connect()
        .await
        .unwrap();
    for statement in [
        format!("CREATE DATABASE {db}"),
        format!("CREATE USER '{account}'@'127.0.0.1' IDENTIFIED BY '{password}'"),
        // Every right on its database, DDL included: read-only is the capability's doing.
        format!("GRANT ALL ON {db}.* TO '{account}'@'127.0.0.1'"),
    ] {
        conn.execute(sqlx::AssertSqlSafe(statement)).await.unwrap();
    }
    conn.close().await.unwrap();
    let (base, _) = admin.rsplit_once('/').unwrap();
    let db_admin = format!("{base}/{db}");
    let mut conn = MySqlConnectOptions::from_str(&db_admin)
        .unwrap()
        .connect()
        .await
        .unwrap();
    for statement in SETUP.split_inclusive(';') {
        conn.execute(sqlx::AssertSqlSafe(statement.to_owned()))
            .await
            .unwrap();
    }
    conn.close().await.unwrap();
    let host = base.rsplit_once('@').unwrap().1;
    Some((
        format!("mysql://{account}:{password}@{host}/{db}"),
        db_admin,
    ))
}

/// Every order as (id, note, paid), read through `url` (the administrator's).
async fn orders_at<DB: sqlx::Database>(url: &str) -> Vec<(i32, String, bool)>
where
    for<'c> &'c mut DB::Connection: Executor<'c, Database = DB>,
    for<'r> (i32, Option<String>, bool): sqlx::FromRow<'r, DB::Row>,
    DB::Arguments: sqlx::IntoArguments<DB>,
{
    let mut conn = DB::Connection::connect(url).await.unwrap();
    let rows: Vec<(i32, Option<String>, bool)> =
        sqlx::query_as("SELECT id, note, paid FROM orders ORDER BY id")
            .fetch_all(&mut conn)
            .await
            .unwrap();
    rows.into_iter()
        .map(|(id, note, paid)| (id, note.unwrap_or_default(), paid))
        .collect()
}

/// The capabilities every backend is tested with, over the secret `db`.
const CAPABILITIES: &str = r#"
[capabilities.customer_orders]
kind = "sql"
description = "The orders of one customer"
secret = "db"
statement = "select id, total, note from orders where customer_id = $1 order by id"
params = [{ name = "customer_id", type = "integer", min = 1 }]

[capabilities.orders_by_note]
kind = "sql"
description = "Orders with this note"
secret = "db"
statement = "select id from orders where note = $1 order by id"
params = [{ name = "note", type = "string" }]

[capabilities.forget_customer]
kind = "sql"
description = "Delete a customer's orders (read-only, so it can't)"
secret = "db"
statement = "delete from orders where customer_id = $1"
params = [{ name = "customer_id", type = "integer" }]

[capabilities.mark_paid]
kind = "sql"
description = "Mark an order paid"
secret = "db"
statement = "update orders set paid = true where id = $1 returning id, paid"
params = [{ name = "id", type = "integer" }]
read_only = false

[capabilities.numbers]
kind = "sql"
description = "Many rows"
secret = "db"
statement = "select id from orders order by id"
max_rows = 2
"#;

/// What both backends must do the same way; returns the replies for the leak check.
async fn exercise(
    env: &Env,
    secret: &str,
    orders: impl AsyncFn() -> Vec<(i32, String, bool)>,
) -> Vec<u8> {
    env.add_secret("db", "sql", secret).await;
    // A connection string no driver here reads is refused when stored, and not quoted.
    for bad in [
        "mssql://app:pw-NOT-STORED-0042@db/shop",
        "postgres://app:pw-NOT-STORED-0042@[db/shop",
    ] {
        let refused = env
            .cli(&["secret", "add", "db-bad", "--provider", "sql"], bad)
            .await;
        assert!(
            !refused.status.success()
                && refused.stderr.contains("connection string")
                && !refused.stderr.contains("NOT-STORED"),
            "{refused:?}"
        );
    }
    env.add_secret("main", "openai", "sk-openai-unused-1234567")
        .await;
    let token = env
        .create_token(
            "main",
            &[
                "--agent",
                "analyst",
                "--capability",
                "customer_orders",
                "--capability",
                "orders_by_note",
                "--capability",
                "forget_customer",
                "--capability",
                "mark_paid",
                "--capability",
                "numbers",
            ],
        )
        .await;
    let broker = env.serve().await;
    let mut responses = Vec::new();
    let before = orders().await;

    let rows = call(
        &broker,
        &token,
        "customer_orders",
        &json!({"customer_id": 7}),
        &mut responses,
    )
    .await;
    assert_eq!(rows.status, 200, "{rows:?}");
    let answer = rows.json();
    assert_eq!(answer["columns"], json!(["id", "total", "note"]));
    assert_eq!(answer["row_count"], 2);
    assert_eq!(answer["truncated"], false);
    assert_eq!(answer["rows"][0]["id"], 1);
    assert_eq!(answer["rows"][1]["note"], Value::Null);

    // Injection through arguments: a value is only ever a value.
    for note in [
        "first' or '1'='1",
        "x'; delete from orders; --",
        "first\" or 1=1 --",
        "' union select id from orders --",
    ] {
        let r = call(
            &broker,
            &token,
            "orders_by_note",
            &json!({"note": note}),
            &mut responses,
        )
        .await;
        assert_eq!(r.status, 200, "{r:?}");
        assert_eq!(r.json()["row_count"], 0, "{note}: {r:?}");
    }
    let exact = call(
        &broker,
        &token,
        "orders_by_note",
        &json!({"note": "first"}),
        &mut responses,
    )
    .await;
    assert_eq!(exact.json()["rows"], json!([{"id": 1}]));
    for bad in [
        json!({"customer_id": "7 or 1=1"}),
        json!({"customer_id": 0}),
        json!({"customer_id": 7, "extra": 1}),
    ] {
        let r = call(&broker, &token, "customer_orders", &bad, &mut responses).await;
        assert_eq!(
            (r.status, code(&r).as_str()),
            (400, "bad_arguments"),
            "{bad}"
        );
    }
    assert_eq!(orders().await, before, "nothing changed");

    // A read-only capability can't write, whatever its statement says.
    let write = call(
        &broker,
        &token,
        "forget_customer",
        &json!({"customer_id": 7}),
        &mut responses,
    )
    .await;
    assert_eq!(
        (write.status, code(&write).as_str()),
        (403, "read_only"),
        "{write:?}"
    );
    assert_eq!(orders().await, before);

    // A read-write one can.
    let paid = call(
        &broker,
        &token,
        "mark_paid",
        &json!({"id": 2}),
        &mut responses,
    )
    .await;
    assert_eq!(paid.status, 200, "{paid:?}");
    assert_eq!(paid.json()["rows_affected"], 1);
    assert!(orders().await.iter().any(|(id, _, paid)| *id == 2 && *paid));

    let capped = call(&broker, &token, "numbers", &json!({}), &mut responses).await;
    assert_eq!(
        (
            capped.json()["row_count"].clone(),
            capped.json()["truncated"].clone()
        ),
        (json!(2), json!(true))
    );

    let records = audit_records(env, |r| {
        r.iter().filter(|r| r["capability"].is_string()).count() >= 12
    })
    .await;
    assert!(
        records
            .iter()
            .any(|r| r["capability"] == "forget_customer" && r["error"] == "read_only")
    );
    broker.stop().await;
    responses
}

/// A database server's dialect, for [`server_checks`].
struct Dialect {
    /// The shared capabilities, as this server takes them.
    capabilities: String,
    /// A statement that runs for seconds.
    slow: &'static str,
    /// A statement naming the login (`name`) and whether the transaction is read-only (`ro`).
    whoami: &'static str,
    /// `ro` in a read-only call.
    read_only: Value,
    /// What the server's refusal of a wrong password says (in the broker's log).
    refused: &'static str,
    /// Statements of one parameter (its type) with an argument the server refuses as a
    /// value: malformed, out of range, unstorable.
    bad_values: Vec<(&'static str, &'static str, Value)>,
}

/// What a database server must do beyond [`exercise`], for the login in `url` (whose
/// password holds `canary`): run as that login, read-only, DDL included; refuse a wrong
/// password, the agent learning only that the capability can't run and the log why; stop a
/// slow statement at its timeout; and leak no connection string, password or wrong password.
async fn server_checks(
    dialect: Dialect,
    url: &str,
    canary: &str,
    orders: impl AsyncFn() -> Vec<(i32, String, bool)>,
) {
    let Dialect {
        capabilities,
        slow,
        whoami,
        read_only,
        refused,
        bad_values,
    } = dialect;
    let bad_capabilities: String = bad_values
        .iter()
        .enumerate()
        .map(|(i, (statement, ty, _))| {
            format!(
                "[capabilities.bad_{i}]\nkind = \"sql\"\ndescription = \"A value the server refuses\"\n\
                 secret = \"db\"\nstatement = \"{statement}\"\nread_only = false\n\
                 params = [{{ name = \"v\", type = \"{ty}\" }}]\n"
            )
        })
        .collect();
    let env = Env::new(&format!(
        "{capabilities}\n\
         [capabilities.slow]\nkind = \"sql\"\ndescription = \"Too slow\"\nsecret = \"db\"\n\
         statement = \"{slow}\"\ntimeout = \"300ms\"\n\
         [capabilities.whoami]\nkind = \"sql\"\ndescription = \"Who runs it\"\nsecret = \"db\"\n\
         statement = \"{whoami}\"\n\
         [capabilities.drop_orders]\nkind = \"sql\"\ndescription = \"DDL (read-only, so it can't)\"\n\
         secret = \"db\"\nstatement = \"drop table orders\"\n\
         [capabilities.wrong_login]\nkind = \"sql\"\ndescription = \"A password the server refuses\"\n\
         secret = \"db-wrong\"\nstatement = \"select 1 as n\"\n\
         {bad_capabilities}"
    ));
    let mut responses = exercise(&env, url, &orders).await;
    let wrong = url.replace(canary, "WRONG");
    env.add_secret("db-wrong", "sql", &wrong).await;
    let mut args = Vec::new();
    for name in [
        "wrong_login",
        "slow",
        "whoami",
        "drop_orders",
        "customer_orders",
    ] {
        args.extend(["--capability", name]);
    }
    let bad_names: Vec<String> = (0..bad_values.len()).map(|i| format!("bad_{i}")).collect();
    for name in &bad_names {
        args.extend(["--capability", name]);
    }
    let token = env.create_token("main", &args).await;
    let broker = env.serve().await;
    let who = call(&broker, &token, "whoami", &json!({}), &mut responses).await;
    let row = &who.json()["rows"][0];
    assert!(
        row["name"].as_str().unwrap().starts_with("agent_"),
        "{who:?}"
    );
    assert_eq!(row["ro"], read_only, "a READ ONLY transaction");
    let listed = call(
        &broker,
        &token,
        "customer_orders",
        &json!({"customer_id": 7}),
        &mut responses,
    )
    .await;
    assert_eq!(
        listed.json()["rows"][0]["total"],
        "10.50",
        "NUMERIC and DECIMAL come back exact"
    );
    // DDL too: MySQL's commits the transaction it is in, and must be refused all the same.
    let before = orders().await;
    let dropped = call(&broker, &token, "drop_orders", &json!({}), &mut responses).await;
    assert_eq!(
        (dropped.status, code(&dropped).as_str()),
        (403, "read_only"),
        "{dropped:?}"
    );
    assert_eq!(orders().await, before);
    // A value the server can't use is the agent's mistake to correct, not the backend's.
    for (name, (statement, _, value)) in bad_names.iter().zip(&bad_values) {
        let r = call(
            &broker,
            &token,
            name,
            &json!({ "v": value }),
            &mut responses,
        )
        .await;
        assert_eq!(r.status, 400, "{statement} with {value}: {r:?}");
        assert_eq!(code(&r), "bad_arguments", "{r:?}");
    }
    // The server quotes the value it refused: the stored password, sent as one, is masked.
    let password = url.split(':').nth(2).unwrap().split('@').next().unwrap();
    let (name, _) = bad_names
        .iter()
        .zip(&bad_values)
        .find(|(_, (_, ty, _))| *ty == "string")
        .unwrap();
    let r = call(
        &broker,
        &token,
        name,
        &json!({ "v": password }),
        &mut responses,
    )
    .await;
    assert_eq!(r.status, 400, "{r:?}");
    assert!(
        !r.body.contains(password) && r.body.contains("****"),
        "{r:?}"
    );
    assert_eq!(orders().await, before);
    // The server checks the stored login; the agent learns only that the capability can't
    // run, the operator finds why in the log.
    let refused_call = call(&broker, &token, "wrong_login", &json!({}), &mut responses).await;
    assert_eq!(
        (refused_call.status, code(&refused_call).as_str()),
        (503, "capability_unavailable"),
        "{refused_call:?}"
    );
    let slow = call(&broker, &token, "slow", &json!({}), &mut responses).await;
    assert_eq!(
        (slow.status, code(&slow).as_str()),
        (504, "backend_timeout"),
        "{slow:?}"
    );
    broker.stop().await;
    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    assert!(env.transcript().contains(refused), "{refused}");
    assert_never_leaked(&env, url, &responses);
    assert_never_leaked(&env, password, &responses);
    assert_never_leaked(&env, &wrong, &responses);
}

#[tokio::test]
async fn postgres_queries_bind_arguments_and_read_only_means_read_only() {
    let Some((url, admin)) = pg_database().await else {
        return;
    };
    let dialect = Dialect {
        capabilities: CAPABILITIES.to_owned(),
        slow: "select 1 as n from pg_sleep(5)",
        whoami: "select current_user::text as name, current_setting('transaction_read_only') as ro",
        read_only: json!("on"),
        refused: "password authentication failed",
        bad_values: vec![
            ("select $1::uuid::text as id", "string", json!("abc")),
            ("select $1::text as t", "string", json!("a\u{0}b")),
            ("select $1::int2 as n", "integer", json!(100_000)),
            (
                "update orders set total = $1 where id = 3",
                "number",
                json!(1e12),
            ),
        ],
    };
    let orders = async || orders_at::<sqlx::Postgres>(&admin).await;
    server_checks(dialect, &url, "pg-CANARY", orders).await;
}

#[tokio::test]
async fn mysql_queries_bind_arguments_and_read_only_means_read_only() {
    let Some((url, admin)) = mysql_database().await else {
        return;
    };
    let dialect = Dialect {
        // MySQL's placeholders are `?`, and MariaDB's UPDATE returns no rows.
        capabilities: CAPABILITIES
            .replace("$1", "?")
            .replace(" returning id, paid", ""),
        slow: "select sleep(5) as n",
        whoami: "select current_user() as name, @@session.tx_read_only as ro",
        read_only: json!(1),
        refused: "Access denied for user",
        bad_values: vec![
            (
                "update orders set total = ? where id = 3",
                "number",
                json!(1e12),
            ),
            (
                "update orders set paid = ? where id = 3",
                "string",
                json!("abc"),
            ),
            (
                "update orders set note = repeat(?, 10000) where id = 3",
                "string",
                json!("0123456789"),
            ),
        ],
    };
    let orders = async || orders_at::<sqlx::MySql>(&admin).await;
    server_checks(dialect, &url, "my-CANARY", orders).await;
}

#[tokio::test]
async fn sqlite_queries_bind_arguments_and_read_only_means_read_only() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("shop.db");
    let mut conn = SqliteConnectOptions::new()
        .filename(&path)
        .create_if_missing(true)
        .connect()
        .await
        .unwrap();
    conn.execute(sqlx::AssertSqlSafe(
        SETUP
            .replace("numeric(10,2)", "real")
            .replace("boolean", "integer"),
    ))
    .await
    .unwrap();
    conn.close().await.unwrap();
    let url = format!("sqlite://{}", path.display());
    let env = Env::new(CAPABILITIES);
    let responses = exercise(&env, &url, async || orders_at::<sqlx::Sqlite>(&url).await).await;
    assert_never_leaked(&env, &url, &responses);
}

/// A read-only call over `url` whose statement would return `rows` rows, `max_rows = 2`:
/// the answer is the first two, marked cut, long before the timeout; the rest of the result
/// is not read first.
async fn a_huge_result_is_cut_without_reading_it_all(url: &str, rows: &str) {
    let env = Env::new(&format!(
        "[capabilities.everything]\nkind = \"sql\"\ndescription = \"Far too many rows\"\n\
         secret = \"db\"\nstatement = \"{rows}\"\nmax_rows = 2\ntimeout = \"8s\"\n"
    ));
    env.add_secret("db", "sql", url).await;
    let token = env
        .create_token("db", &["--capability", "everything"])
        .await;
    let broker = env.serve().await;
    let started = std::time::Instant::now();
    let reply = call(&broker, &token, "everything", &json!({}), &mut Vec::new()).await;
    let took = started.elapsed();
    assert_eq!(reply.status, 200, "after {took:?}: {reply:?}");
    assert_eq!(
        (
            reply.json()["row_count"].clone(),
            reply.json()["truncated"].clone()
        ),
        (json!(2), json!(true))
    );
    assert!(took < std::time::Duration::from_secs(4), "took {took:?}");
    broker.stop().await;
}

#[tokio::test]
async fn postgres_stops_reading_a_huge_result_at_max_rows() {
    let Some((url, _)) = pg_database().await else {
        return;
    };
    // 400 million rows, the first at once.
    let rows =
        "select a.x as n from generate_series(1, 20000) a(x), generate_series(1, 20000) b(x)";
    a_huge_result_is_cut_without_reading_it_all(&url, rows).await;
}

#[tokio::test]
async fn mysql_stops_reading_a_huge_result_at_max_rows() {
    let Some((url, _)) = mysql_database().await else {
        return;
    };
    // MariaDB's sequence engine: 400 million rows, the first at once.
    let rows = "select a.seq as n from seq_1_to_20000 a, seq_1_to_20000 b";
    a_huge_result_is_cut_without_reading_it_all(&url, rows).await;
}

/// The database role in a `postgres://role:password@…` URL.
fn role_of(url: &str) -> String {
    url.strip_prefix("postgres://")
        .and_then(|rest| rest.split(':').next())
        .unwrap()
        .to_owned()
}

/// `count` calls of capability `name` with no arguments, all started at once.
fn calls_at_once(
    broker: &crate::support::Broker,
    token: &str,
    name: &str,
    count: usize,
) -> tokio::task::JoinSet<crate::support::http::Reply> {
    let mut calls = tokio::task::JoinSet::new();
    for _ in 0..count {
        let target = broker.url(&format!("/v1/capabilities/{name}"));
        let auth = format!("Bearer {token}");
        calls.spawn(async move {
            let headers = [
                ("authorization", auth.as_str()),
                ("content-type", "application/json"),
            ];
            send("POST", &target, &headers, "{}").await
        });
    }
    calls
}

/// The most connections `role` had open to the cluster at once while `for_how_long` passed,
/// seen through `admin`.
async fn peak_connections(admin: &str, role: &str, for_how_long: std::time::Duration) -> i64 {
    let mut conn = PgConnectOptions::from_str(admin)
        .unwrap()
        .connect()
        .await
        .unwrap();
    let until = std::time::Instant::now() + for_how_long;
    let mut peak = 0;
    while std::time::Instant::now() < until {
        let (open,): (i64,) =
            sqlx::query_as("SELECT count(*) FROM pg_stat_activity WHERE usename = $1")
                .bind(role)
                .fetch_one(&mut conn)
                .await
                .unwrap();
        peak = peak.max(open);
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    conn.close().await.unwrap();
    peak
}

/// A burst of slow calls from a token with no limits of its own: the capability's
/// `max_in_flight` (4 unless set) bounds the calls running, and so the connections the
/// database sees; the rest are refused 429 `concurrency_limited` with `Retry-After`, and the
/// slots are free again once the calls end.
#[tokio::test]
async fn postgres_connections_are_bounded_by_max_in_flight() {
    let Some((url, admin)) = pg_database().await else {
        return;
    };
    let env = Env::new(
        "[capabilities.nap]\nkind = \"sql\"\ndescription = \"Slow\"\nsecret = \"db\"\n\
         statement = \"select 1 as n from pg_sleep(1.5)\"\n\
         [capabilities.short_nap]\nkind = \"sql\"\ndescription = \"Slow, two at once\"\n\
         secret = \"db\"\nstatement = \"select 1 as n from pg_sleep(1.5)\"\nmax_in_flight = 2\n",
    );
    env.add_secret("db", "sql", &url).await;
    let token = env
        .create_token("db", &["--capability", "nap", "--capability", "short_nap"])
        .await;
    let broker = env.serve().await;
    let role = role_of(&url);
    for (name, cap) in [("nap", 4), ("short_nap", 2)] {
        let calls = calls_at_once(&broker, &token, name, 12);
        let peak = peak_connections(&admin, &role, std::time::Duration::from_millis(1200)).await;
        let replies = calls.join_all().await;
        let ran = replies.iter().filter(|r| r.status == 200).count();
        let refused: Vec<_> = replies.iter().filter(|r| r.status == 429).collect();
        assert_eq!((ran, refused.len()), (cap, 12 - cap), "{name}: {replies:?}");
        for r in refused {
            assert_eq!(code(r), "concurrency_limited", "{r:?}");
            assert_eq!(r.header("retry-after"), Some("1"), "{r:?}");
            assert!(
                r.json()["error"]["message"]
                    .as_str()
                    .unwrap()
                    .contains(name),
                "{r:?}"
            );
        }
        assert!(
            (1..=cap as i64).contains(&peak),
            "{name}: the database saw {peak} connections at once"
        );
    }
    let again = call(&broker, &token, "nap", &json!({}), &mut Vec::new()).await;
    assert_eq!(again.status, 200, "slots are given back: {again:?}");
    broker.stop().await;
}

/// Agents that leave while their calls run don't free the calls' slots early: the database
/// goes on running what they started, so calls made meanwhile still find the capability
/// full, and the database never sees more than `max_in_flight` connections.
#[tokio::test]
async fn postgres_calls_abandoned_midway_keep_their_slots_until_they_end() {
    let Some((url, admin)) = pg_database().await else {
        return;
    };
    let env = Env::new(
        "[capabilities.nap]\nkind = \"sql\"\ndescription = \"Slow\"\nsecret = \"db\"\n\
         statement = \"select 1 as n from pg_sleep(2)\"\ntimeout = \"2500ms\"\n",
    );
    env.add_secret("db", "sql", &url).await;
    let token = env.create_token("db", &["--capability", "nap"]).await;
    let broker = env.serve().await;
    let role = role_of(&url);
    let request = format!(
        "POST /v1/capabilities/nap HTTP/1.1\r\nhost: seks\r\nauthorization: Bearer {token}\r\n\
         content-type: application/json\r\ncontent-length: 2\r\n\r\n{{}}"
    );
    let mut left = Vec::new();
    for _ in 0..4 {
        let mut stream = tokio::net::TcpStream::connect(broker.addr).await.unwrap();
        tokio::io::AsyncWriteExt::write_all(&mut stream, request.as_bytes())
            .await
            .unwrap();
        left.push(stream);
    }
    tokio::time::sleep(std::time::Duration::from_millis(400)).await;
    drop(left);
    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    let calls = calls_at_once(&broker, &token, "nap", 4);
    let peak = peak_connections(&admin, &role, std::time::Duration::from_millis(1000)).await;
    let replies = calls.join_all().await;
    assert!(peak <= 4, "the database saw {peak} connections at once");
    assert!(
        replies.iter().all(|r| r.status == 429),
        "the capability is still full: {replies:?}"
    );
    tokio::time::sleep(std::time::Duration::from_secs(3)).await;
    let again = call(&broker, &token, "nap", &json!({}), &mut Vec::new()).await;
    assert_eq!(again.status, 200, "slots are given back: {again:?}");
    broker.stop().await;
}
