//! Running the suite against PostgreSQL: with `SEKS_TEST_STORE=postgres`, every [`Env`]
//! gets its own database on the server at `SEKS_TEST_PG_URL` (`scripts/test.sh` starts a
//! throwaway cluster), dropped when the `Env` goes.
//!
//! [`Env`]: super::Env

use std::future::Future;
use std::sync::atomic::{AtomicU32, Ordering};

use sqlx::postgres::PgConnectOptions;
use sqlx::{ConnectOptions, Connection, Executor, PgConnection, Row};

/// Whether this run uses PostgreSQL as the store (`SEKS_TEST_STORE=postgres`).
pub fn on_postgres() -> bool {
    std::env::var("SEKS_TEST_STORE").is_ok_and(|s| s == "postgres")
}

/// Skip a test that can't run against PostgreSQL, saying why; true when skipped.
pub fn skip_on_postgres(why: &str) -> bool {
    if on_postgres() {
        eprintln!("skipped on PostgreSQL: {why}");
    }
    on_postgres()
}

/// Run `work` on a runtime of its own: `Env` is created and dropped in sync code, often
/// inside a test's runtime, where blocking on that runtime is not allowed.
fn block_on<T: Send + 'static>(work: impl Future<Output = T> + Send + 'static) -> T {
    std::thread::spawn(move || {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime")
            .block_on(work)
    })
    .join()
    .expect("database set-up thread")
}

fn server() -> PgConnectOptions {
    let url = std::env::var("SEKS_TEST_PG_URL")
        .expect("SEKS_TEST_STORE=postgres needs SEKS_TEST_PG_URL (scripts/pg-test-cluster.sh)");
    url.parse().expect("SEKS_TEST_PG_URL")
}

/// A database of one test.
pub struct TestDb {
    /// Its name.
    pub name: String,
    /// Its URL, with credentials.
    pub url: String,
}

impl TestDb {
    /// Create a fresh, empty database.
    pub fn create() -> TestDb {
        static CREATED: AtomicU32 = AtomicU32::new(0);
        // Unique among the tests running at once: nextest gives each its own process.
        let name = format!(
            "seks_test_{}_{}",
            std::process::id(),
            CREATED.fetch_add(1, Ordering::Relaxed)
        );
        let create = format!("CREATE DATABASE {name}");
        block_on(async move {
            let mut conn = server().connect().await.expect("connect to PostgreSQL");
            conn.execute(sqlx::AssertSqlSafe(create))
                .await
                .expect("create test database");
        });
        let server_url = std::env::var("SEKS_TEST_PG_URL").expect("checked in server()");
        let (base, query) = server_url
            .split_once('?')
            .map_or((server_url.as_str(), None), |(b, q)| (b, Some(q)));
        let (origin, _database) = base.rsplit_once('/').expect("a database in the URL");
        let url = match query {
            Some(query) => format!("{origin}/{name}?{query}"),
            None => format!("{origin}/{name}"),
        };
        TestDb { name, url }
    }

    async fn connect(&self) -> PgConnection {
        PgConnection::connect_with(&server().database(&self.name))
            .await
            .expect("connect to the test database")
    }

    /// Run `statements` in one transaction; the error message if one failed.
    pub async fn execute(&self, statements: &[&str]) -> Result<(), String> {
        let mut conn = self.connect().await;
        let mut tx = conn.begin().await.map_err(|e| e.to_string())?;
        for statement in statements {
            tx.execute(sqlx::AssertSqlSafe(statement.to_string()))
                .await
                .map_err(|e| e.to_string())?;
        }
        tx.commit().await.map_err(|e| e.to_string())
    }

    /// Every row of every table, as text: what a stolen dump would hold.
    pub fn dump(&self) -> Vec<u8> {
        let options = server().database(&self.name);
        block_on(async move {
            let mut conn = PgConnection::connect_with(&options).await.expect("connect");
            let tables: Vec<String> = sqlx::query_scalar(
                "SELECT tablename::TEXT FROM pg_tables WHERE schemaname = 'public'",
            )
            .fetch_all(&mut conn)
            .await
            .expect("list tables");
            let mut out = Vec::new();
            for table in tables {
                let rows = sqlx::query(sqlx::AssertSqlSafe(format!(
                    "SELECT t::TEXT AS row FROM \"{table}\" t"
                )))
                .fetch_all(&mut conn)
                .await
                .expect("read table");
                for row in rows {
                    let text: String = row.get("row");
                    out.extend_from_slice(text.as_bytes());
                    out.push(b'\n');
                }
            }
            out
        })
    }
}

impl Drop for TestDb {
    fn drop(&mut self) {
        // FORCE: a broker of the test may still be connected.
        let drop = format!("DROP DATABASE IF EXISTS {} WITH (FORCE)", self.name);
        block_on(async move {
            if let Ok(mut conn) = server().connect().await {
                let _ = conn.execute(sqlx::AssertSqlSafe(drop)).await;
            }
        });
    }
}
