//! Running the suite against PostgreSQL: with `SEKS_TEST_STORE=postgres`, every [`Env`]
//! gets its own database on the server at `SEKS_TEST_PG_URL` (`scripts/test.sh` starts a
//! throwaway cluster), dropped when the `Env` goes.
//!
//! [`Env`]: super::Env

use std::future::Future;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};

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

/// The shared cluster's superuser URL.
fn shared_server() -> String {
    std::env::var("SEKS_TEST_PG_URL")
        .expect("SEKS_TEST_STORE=postgres needs SEKS_TEST_PG_URL (scripts/pg-test-cluster.sh)")
}

/// The shared cluster's URL, or `None` when there is none outside the full suite (the
/// caller skips).
pub fn shared_cluster() -> Option<String> {
    let url = std::env::var("SEKS_TEST_PG_URL").ok();
    if url.is_none() {
        assert!(
            !super::full_suite(),
            "SEKS_TEST_PG_URL is not set: scripts/test.sh starts PostgreSQL (scripts/pg-test-cluster.sh)"
        );
        eprintln!(
            "skipped: no PostgreSQL (run scripts/test.sh, or source scripts/pg-test-cluster.sh)"
        );
    }
    url
}

/// A database of one test.
pub struct TestDb {
    /// Its name.
    pub name: String,
    /// Its URL, with credentials.
    pub url: String,
    /// The superuser URL of its server, which creates and drops it.
    server: String,
}

impl TestDb {
    /// Create a fresh, empty database on the shared cluster.
    pub fn create() -> TestDb {
        TestDb::create_on(&shared_server())
    }

    /// Create a fresh, empty database on the server at `server` (a superuser URL).
    pub fn create_on(server: &str) -> TestDb {
        let db = TestDb::named(server);
        let create = format!("CREATE DATABASE {}", db.name);
        let options = db.server();
        block_on(async move {
            let mut conn = options.connect().await.expect("connect to PostgreSQL");
            conn.execute(sqlx::AssertSqlSafe(create))
                .await
                .expect("create test database");
        });
        db
    }

    /// A new database name on `server`, and its URL (the database doesn't exist yet).
    fn named(server: &str) -> TestDb {
        static CREATED: AtomicU32 = AtomicU32::new(0);
        // Unique among the tests running at once: nextest gives each its own process.
        let name = format!(
            "seks_test_{}_{}",
            std::process::id(),
            CREATED.fetch_add(1, Ordering::Relaxed)
        );
        let (base, query) = server
            .split_once('?')
            .map_or((server, None), |(b, q)| (b, Some(q)));
        let (origin, _database) = base.rsplit_once('/').expect("a database in the URL");
        let url = match query {
            Some(query) => format!("{origin}/{name}?{query}"),
            None => format!("{origin}/{name}"),
        };
        TestDb {
            name,
            url,
            server: server.to_owned(),
        }
    }

    fn server(&self) -> PgConnectOptions {
        self.server.parse().expect("PostgreSQL server URL")
    }

    /// A copy of this database (`CREATE DATABASE … TEMPLATE`), dropped with the copy.
    pub fn copy(&self) -> TestDb {
        let copy = TestDb::named(&self.server);
        let create = format!("CREATE DATABASE {} TEMPLATE {}", copy.name, self.name);
        let options = self.server();
        block_on(async move {
            let mut conn = options.connect().await.expect("connect to PostgreSQL");
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
        PgConnection::connect_with(&self.server().database(&self.name))
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
        let options = self.server().database(&self.name);
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
        let options = self.server();
        block_on(async move {
            if let Ok(mut conn) = options.connect().await {
                let _ = conn.execute(sqlx::AssertSqlSafe(drop)).await;
            }
        });
    }
}

/// A PostgreSQL server of one test's own on a free loopback port, for tests that stop and
/// start it (the shared cluster's other users must never see that). Made like
/// `scripts/pg-test-cluster.sh` does, as the `postgres` user when the tests run as root
/// (`initdb` refuses root); stopped and deleted on drop.
pub struct PgCluster {
    dir: tempfile::TempDir,
    bindir: PathBuf,
    port: u16,
    as_postgres: bool,
}

impl PgCluster {
    /// Create the cluster and start its server.
    pub async fn start() -> PgCluster {
        let bindir = std::process::Command::new("pg_config")
            .arg("--bindir")
            .output()
            .expect("pg_config (PostgreSQL) is needed");
        let bindir = PathBuf::from(String::from_utf8_lossy(&bindir.stdout).trim());
        let uid = std::process::Command::new("id")
            .arg("-u")
            .output()
            .expect("id -u");
        let as_postgres = String::from_utf8_lossy(&uid.stdout).trim() == "0";
        let dir = tempfile::tempdir().expect("tempdir");
        if as_postgres {
            let owned = std::process::Command::new("chown")
                .arg("postgres:")
                .arg(dir.path())
                .status()
                .expect("chown");
            assert!(owned.success(), "chown the cluster directory to postgres");
        }
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("a free port")
            .port();
        let cluster = PgCluster {
            dir,
            bindir,
            port,
            as_postgres,
        };
        let data = cluster.data();
        let initdb = cluster
            .run("initdb")
            .arg("-D")
            .arg(&data)
            .args(["-U", "postgres", "-A", "trust", "--no-sync"])
            .output()
            .await
            .expect("run initdb");
        assert!(
            initdb.status.success(),
            "initdb: {}",
            String::from_utf8_lossy(&initdb.stderr)
        );
        cluster.resume().await;
        cluster
    }

    /// Its superuser URL.
    pub fn url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}/postgres", self.port)
    }

    /// Start the server (again), once it accepts connections.
    pub async fn resume(&self) {
        let options = format!(
            "-p {} -k {} -c listen_addresses=127.0.0.1",
            self.port,
            self.dir.path().display()
        );
        let log = self.dir.path().join("server.log");
        let started = self
            .run("pg_ctl")
            .arg("-D")
            .arg(self.data())
            .arg("-l")
            .arg(&log)
            .args(["-w", "-o", &options, "start"])
            .status()
            .await
            .expect("run pg_ctl start");
        assert!(
            started.success(),
            "pg_ctl start: {}",
            std::fs::read_to_string(&log).unwrap_or_default()
        );
    }

    /// Stop the server as an operator in a hurry does (`pg_ctl stop -m fast`): sessions are
    /// ended, no new ones are accepted.
    pub async fn stop(&self) {
        let stopped = self
            .run("pg_ctl")
            .arg("-D")
            .arg(self.data())
            .args(["-w", "-m", "fast", "stop"])
            .status()
            .await
            .expect("run pg_ctl stop");
        assert!(stopped.success(), "pg_ctl stop");
    }

    fn data(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    /// A PostgreSQL program, run as `postgres` when we are root. Its output is not piped: the
    /// server `pg_ctl` leaves running would hold a pipe open.
    fn command(&self, program: &str) -> std::process::Command {
        let program = self.bindir.join(program);
        let mut command = if self.as_postgres {
            let mut runuser = std::process::Command::new("runuser");
            runuser.args(["-u", "postgres", "--"]).arg(program);
            runuser
        } else {
            std::process::Command::new(program)
        };
        command.stdin(Stdio::null()).stdout(Stdio::null());
        command
    }

    /// [`PgCluster::command`], to await.
    fn run(&self, program: &str) -> tokio::process::Command {
        self.command(program).into()
    }
}

impl Drop for PgCluster {
    fn drop(&mut self) {
        let _ = self
            .command("pg_ctl")
            .arg("-D")
            .arg(self.data())
            .args(["-w", "-m", "immediate", "stop"])
            .stderr(Stdio::null())
            .status();
    }
}

/// A relay to a PostgreSQL database that, once armed, lets the next COMMIT of audit records
/// through to the server and then cuts the connection before the answer comes back: a
/// commit that took effect but whose acknowledgement was lost.
pub struct LostCommit {
    /// The database's URL through the relay.
    pub url: String,
    armed: Arc<AtomicBool>,
    cut: Arc<AtomicU32>,
}

/// A simple-protocol `COMMIT`, as sqlx ends a transaction: `Q`, its length, the text.
const COMMIT: &[u8] = b"Q\0\0\0\x0bCOMMIT\0";
/// What the bytes of an audit batch hold, among a transaction's parameters.
const AUDIT_RECORD: &[u8] = br#""request_id":""#;

impl LostCommit {
    /// Relay to the database at `url`.
    pub async fn start(url: &str) -> LostCommit {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("relay port");
        let relay = listener.local_addr().expect("relay address");
        let options: PgConnectOptions = url.parse().expect("PostgreSQL URL");
        let server = format!("{}:{}", options.get_host(), options.get_port());
        let (head, tail) = url.split_once('@').expect("a URL with a user");
        let (_, path) = tail.split_once('/').expect("a database in the URL");
        let lost = LostCommit {
            url: format!("{head}@{relay}/{path}"),
            armed: Arc::default(),
            cut: Arc::default(),
        };
        let (armed, cut) = (lost.armed.clone(), lost.cut.clone());
        tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let upstream = tokio::net::TcpStream::connect(&server)
                    .await
                    .expect("connect to PostgreSQL");
                tokio::spawn(relay_connection(
                    client,
                    upstream,
                    armed.clone(),
                    cut.clone(),
                ));
            }
        });
        lost
    }

    /// Lose the acknowledgement of the next commit of audit records.
    pub fn arm(&self) {
        self.armed.store(true, Ordering::SeqCst);
    }

    /// Commits whose acknowledgement was lost so far.
    pub fn cuts(&self) -> u32 {
        self.cut.load(Ordering::SeqCst)
    }
}

async fn relay_connection(
    client: tokio::net::TcpStream,
    server: tokio::net::TcpStream,
    armed: Arc<AtomicBool>,
    cut: Arc<AtomicU32>,
) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let (mut client_in, mut client_out) = client.into_split();
    let (mut server_in, mut server_out) = server.into_split();
    let cutting = Arc::new(AtomicBool::new(false));
    let answers = {
        let cutting = cutting.clone();
        tokio::spawn(async move {
            let mut buf = vec![0; 64 * 1024];
            while let Ok(n @ 1..) = server_in.read(&mut buf).await {
                if cutting.load(Ordering::SeqCst) || client_out.write_all(&buf[..n]).await.is_err()
                {
                    return;
                }
            }
        })
    };
    let mut buf = vec![0; 64 * 1024];
    // Whether audit records went by since the last commit, and the end of the last read
    // (the marker may straddle two).
    let (mut records, mut tail) = (false, Vec::new());
    while let Ok(n @ 1..) = client_in.read(&mut buf).await {
        let chunk = &buf[..n];
        tail.extend_from_slice(chunk);
        records |= contains(&tail, AUDIT_RECORD);
        tail.drain(..tail.len().saturating_sub(AUDIT_RECORD.len()));
        let commits = contains(chunk, COMMIT);
        let lose = commits && records && armed.swap(false, Ordering::SeqCst);
        if lose {
            cutting.store(true, Ordering::SeqCst);
        }
        if server_out.write_all(chunk).await.is_err() {
            break;
        }
        if lose {
            // Time for the server to commit and answer, to nobody.
            tokio::time::sleep(std::time::Duration::from_millis(300)).await;
            cut.fetch_add(1, Ordering::SeqCst);
            break;
        }
        if commits {
            records = false;
        }
    }
    answers.abort();
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}
