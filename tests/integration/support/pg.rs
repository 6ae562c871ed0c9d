//! Running the suite against PostgreSQL: with `SEKS_TEST_STORE=postgres`, every [`Env`]
//! gets its own database on the server at `SEKS_TEST_PG_URL` (`scripts/test.sh` starts a
//! throwaway cluster), dropped when the `Env` goes.
//!
//! [`Env`]: super::Env

use std::future::Future;
use std::path::Path;
use std::sync::atomic::{AtomicU32, Ordering};

use sqlx::postgres::PgConnectOptions;
use sqlx::sqlite::SqliteConnectOptions;
use sqlx::{ConnectOptions, Connection, Executor, PgConnection, Row};

/// Whether this run uses PostgreSQL as the store (`SEKS_TEST_STORE=postgres`).
pub fn on_postgres() -> bool {
    std::env::var("SEKS_TEST_STORE").is_ok_and(|s| s == "postgres")
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

/// An `audit_batches` row, in column order.
type Batch = (String, i64, i64, i64, i64, String, String);

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
        let db = TestDb::named();
        let create = format!("CREATE DATABASE {}", db.name);
        block_on(async move {
            let mut conn = server().connect().await.expect("connect to PostgreSQL");
            conn.execute(sqlx::AssertSqlSafe(create))
                .await
                .expect("create test database");
        });
        db
    }

    /// A new database name, and its URL (the database doesn't exist yet).
    fn named() -> TestDb {
        static CREATED: AtomicU32 = AtomicU32::new(0);
        // Unique among the tests running at once: nextest gives each its own process.
        let name = format!(
            "seks_test_{}_{}",
            std::process::id(),
            CREATED.fetch_add(1, Ordering::Relaxed)
        );
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

    /// A copy of this database (`CREATE DATABASE … TEMPLATE`), dropped with the copy.
    pub fn copy(&self) -> TestDb {
        let copy = TestDb::named();
        let create = format!("CREATE DATABASE {} TEMPLATE {}", copy.name, self.name);
        block_on(async move {
            let mut conn = server().connect().await.expect("connect to PostgreSQL");
            // The template must have no sessions; the broker's may take a moment to end.
            for _ in 0..50 {
                match conn.execute(sqlx::AssertSqlSafe(create.clone())).await {
                    Ok(_) => return,
                    Err(e) if e.to_string().contains("being accessed by other users") => {
                        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                    }
                    Err(e) => panic!("copy test database: {e}"),
                }
            }
            panic!("the test database stayed in use");
        });
        copy
    }

    /// Write the audit log (batches and `audit…` meta rows) into a new SQLite file with the
    /// same two tables, for tools that edit it there (`audit_tamper.py`).
    pub async fn export_audit(&self, file: &Path) {
        let mut pg = self.connect().await;
        let mut lite = SqliteConnectOptions::new()
            .filename(file)
            .create_if_missing(true)
            .connect()
            .await
            .expect("scratch SQLite file");
        for ddl in [
            "CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)",
            "CREATE TABLE audit_batches (tenant_id TEXT NOT NULL, first_seq INTEGER NOT NULL, \
             last_seq INTEGER NOT NULL, min_at_ms INTEGER NOT NULL, max_at_ms INTEGER NOT NULL, \
             last_hash TEXT NOT NULL, records TEXT NOT NULL, PRIMARY KEY (tenant_id, first_seq))",
        ] {
            lite.execute(ddl).await.expect("scratch schema");
        }
        let meta: Vec<(String, String)> =
            sqlx::query_as("SELECT key, value FROM meta WHERE key LIKE 'audit%'")
                .fetch_all(&mut pg)
                .await
                .expect("read meta");
        for (key, value) in meta {
            sqlx::query("INSERT INTO meta (key, value) VALUES (?, ?)")
                .bind(key)
                .bind(value)
                .execute(&mut lite)
                .await
                .expect("write meta");
        }
        let batches: Vec<Batch> = sqlx::query_as("SELECT * FROM audit_batches")
            .fetch_all(&mut pg)
            .await
            .expect("read batches");
        for b in batches {
            sqlx::query("INSERT INTO audit_batches VALUES (?, ?, ?, ?, ?, ?, ?)")
                .bind(b.0)
                .bind(b.1)
                .bind(b.2)
                .bind(b.3)
                .bind(b.4)
                .bind(b.5)
                .bind(b.6)
                .execute(&mut lite)
                .await
                .expect("write batch");
        }
    }

    /// Replace the audit log with what [`TestDb::export_audit`]'s file now holds.
    pub async fn import_audit(&self, file: &Path) {
        let mut lite = SqliteConnectOptions::new()
            .filename(file)
            .connect()
            .await
            .expect("scratch SQLite file");
        let meta: Vec<(String, String)> = sqlx::query_as("SELECT key, value FROM meta")
            .fetch_all(&mut lite)
            .await
            .expect("read meta");
        let batches: Vec<Batch> = sqlx::query_as("SELECT * FROM audit_batches")
            .fetch_all(&mut lite)
            .await
            .expect("read batches");
        let mut pg = self.connect().await;
        let mut tx = pg.begin().await.expect("begin");
        tx.execute("DELETE FROM audit_batches")
            .await
            .expect("clear");
        tx.execute("DELETE FROM meta WHERE key LIKE 'audit%'")
            .await
            .expect("clear");
        for (key, value) in meta {
            sqlx::query("INSERT INTO meta (key, value) VALUES ($1, $2)")
                .bind(key)
                .bind(value)
                .execute(&mut *tx)
                .await
                .expect("write meta");
        }
        for b in batches {
            sqlx::query("INSERT INTO audit_batches VALUES ($1, $2, $3, $4, $5, $6, $7)")
                .bind(b.0)
                .bind(b.1)
                .bind(b.2)
                .bind(b.3)
                .bind(b.4)
                .bind(b.5)
                .bind(b.6)
                .execute(&mut *tx)
                .await
                .expect("write batch");
        }
        tx.commit().await.expect("commit");
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
