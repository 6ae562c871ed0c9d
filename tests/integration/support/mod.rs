//! Test support: a real `seks` process on a real socket, a real mock upstream, HTTP helpers.

pub mod forms;
pub mod git;
pub mod http;
pub mod mock;
pub mod pg;
pub mod replicas;
pub mod tls;
pub mod ws;

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::process::{Child, Command};

/// Whether tests that need outside services must run (under `scripts/test.sh`) rather than
/// be skipped.
pub fn full_suite() -> bool {
    std::env::var_os("SEKS_TEST_FULL").is_some()
}

/// Path of the `seks` binary under test.
pub fn seks_bin() -> &'static str {
    env!("CARGO_BIN_EXE_seks")
}

/// Output of one CLI run.
#[derive(Debug)]
pub struct CliOutput {
    pub status: std::process::ExitStatus,
    pub stdout: String,
    pub stderr: String,
}

impl CliOutput {
    /// Panic with the output unless the command succeeded.
    pub fn ok(self) -> Self {
        assert!(self.status.success(), "command failed: {self:#?}");
        self
    }
}

/// A data directory and config for one broker, plus everything its processes printed.
pub struct Env {
    pub dir: tempfile::TempDir,
    pub config: PathBuf,
    /// Everything any process printed (except `token create` stdout), for leak checks.
    pub transcript: Arc<Mutex<String>>,
    /// The test's own PostgreSQL database when the suite runs against PostgreSQL.
    pub pg: Option<pg::TestDb>,
}

impl Env {
    /// A fresh data directory with a config file containing `config_toml`, and a fresh
    /// PostgreSQL database when the suite runs against PostgreSQL.
    pub fn new(config_toml: &str) -> Self {
        Env::with_store(config_toml, pg::on_postgres().then(pg::TestDb::create))
    }

    /// A fresh data directory with a config file containing `config_toml`, and the store in
    /// `db` whichever store the suite runs on (for tests that are about PostgreSQL).
    pub fn on_database(config_toml: &str, db: pg::TestDb) -> Self {
        Env::with_store(config_toml, Some(db))
    }

    fn with_store(config_toml: &str, pg: Option<pg::TestDb>) -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let config = dir.path().join("seks.toml");
        std::fs::write(&config, config_toml).expect("write config");
        Env {
            dir,
            config,
            transcript: Arc::default(),
            pg,
        }
    }

    /// The store URL the broker and the CLI get in `SEKS_STORE_URL`, if not the default.
    pub fn store_url(&self) -> Option<&str> {
        self.pg.as_ref().map(|db| db.url.as_str())
    }

    /// Run SQL against the store as an intruder with database access would, all in one
    /// transaction: `sqlite` statements on the SQLite file, or `postgres` ones on the
    /// PostgreSQL database. The error message if it failed.
    pub async fn store_sql(&self, sqlite: &[&str], postgres: &[&str]) -> Result<(), String> {
        match &self.pg {
            Some(db) => db.execute(postgres).await,
            None => {
                let db = self.data_dir().join("seks.db");
                let mut args = vec![db.to_str().expect("utf-8 path")];
                args.extend_from_slice(sqlite);
                let out = run_python("sqlite_exec.py", &args, &[]).await;
                if out.status.success() {
                    Ok(())
                } else {
                    Err(out.stderr)
                }
            }
        }
    }

    /// Make every audit write fail ("disk full") until [`Env::heal_audit_writes`].
    pub async fn break_audit_writes(&self) {
        self.store_sql(
            &["CREATE TRIGGER full_disk BEFORE INSERT ON audit_batches BEGIN SELECT RAISE(ABORT, 'disk full'); END"],
            &[
                "CREATE FUNCTION full_disk() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN RAISE EXCEPTION 'disk full'; END $$",
                "CREATE TRIGGER full_disk BEFORE INSERT ON audit_batches FOR EACH ROW EXECUTE FUNCTION full_disk()",
            ],
        )
        .await
        .expect("break audit writes");
    }

    /// Undo [`Env::break_audit_writes`].
    pub async fn heal_audit_writes(&self) {
        self.store_sql(
            &["DROP TRIGGER full_disk"],
            &[
                "DROP TRIGGER full_disk ON audit_batches",
                "DROP FUNCTION full_disk()",
            ],
        )
        .await
        .expect("heal audit writes");
    }

    /// A config pointing every built-in provider at `upstream` (with short timeouts).
    pub fn with_upstream(upstream: &str) -> Self {
        Self::new(&config_for(upstream, ""))
    }

    pub fn data_dir(&self) -> &Path {
        self.dir.path()
    }

    fn command(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new(seks_bin());
        cmd.args(args)
            .env("SEKS_DATA_DIR", self.data_dir())
            .env("SEKS_CONFIG", &self.config)
            .env_remove("SEKS_MASTER_KEY")
            .env_remove("SEKS_LOG")
            .env_remove("SEKS_REMOTE")
            .env_remove("SEKS_ADMIN_TOKEN")
            .env_remove("SEKS_STORE_URL")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        if let Some(url) = self.store_url() {
            cmd.env("SEKS_STORE_URL", url);
        }
        cmd
    }

    /// Run a CLI command with `stdin` piped in.
    pub async fn cli(&self, args: &[&str], stdin: &str) -> CliOutput {
        self.cli_with_env(args, stdin, &[]).await
    }

    /// Run a CLI command with `stdin` piped in and extra environment variables.
    pub async fn cli_with_env(
        &self,
        args: &[&str],
        stdin: &str,
        env: &[(&str, &str)],
    ) -> CliOutput {
        let out = self.cli_private(args, stdin, env).await;
        self.log(&out.stdout);
        self.log(&out.stderr);
        out
    }

    /// Like [`Env::cli_with_env`], but stdout is not added to the transcript (it holds a fresh token).
    async fn cli_private(&self, args: &[&str], stdin: &str, env: &[(&str, &str)]) -> CliOutput {
        let mut command = self.command(args);
        command.envs(env.iter().copied());
        let mut child = command.spawn().expect("spawn seks");
        let mut input = child.stdin.take().expect("stdin");
        input
            .write_all(stdin.as_bytes())
            .await
            .expect("write stdin");
        drop(input);
        let out = child.wait_with_output().await.expect("wait seks");
        CliOutput {
            status: out.status,
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        }
    }

    /// `seks secret add NAME --provider P` with the value on stdin.
    pub async fn add_secret(&self, name: &str, provider: &str, value: &str) {
        self.cli(&["secret", "add", name, "--provider", provider], value)
            .await
            .ok();
    }

    /// `seks admin token create` → the admin token.
    pub async fn admin_token(&self) -> String {
        let out = self.cli(&["admin", "token", "create"], "").await.ok();
        out.stdout.trim().to_owned()
    }

    /// `seks token create` → the token.
    pub async fn create_token(&self, secret: &str, extra: &[&str]) -> String {
        let mut args = vec!["token", "create", "--secret", secret];
        args.extend_from_slice(extra);
        let out = self.cli_private(&args, "", &[]).await.ok();
        self.log(&out.stderr);
        let token = out.stdout.trim().to_owned();
        assert!(
            token.starts_with("seks_"),
            "unexpected token output: {out:?}"
        );
        assert_eq!(
            out.stdout,
            format!("{token}\n"),
            "stdout must hold only the token"
        );
        token
    }

    /// The id of the only token (or the last one) for `agent`, from `token list --json`.
    pub async fn token_id(&self, agent: &str) -> String {
        let out = self.cli(&["token", "list", "--json"], "").await.ok();
        let rows: serde_json::Value = serde_json::from_str(&out.stdout).expect("token list json");
        rows.as_array()
            .expect("array")
            .iter()
            .rev()
            .find(|r| r["agent"] == agent)
            .and_then(|r| r["id"].as_str())
            .expect("token row")
            .to_owned()
    }

    /// Start `seks serve` on a free loopback port.
    pub async fn serve(&self) -> Broker {
        self.serve_with(&[]).await
    }

    /// Start `seks serve` with extra environment variables. The admin API listens on a free
    /// port (tests run many brokers at once; `SEKS_ADMIN_LISTEN` in `env` overrides it).
    pub async fn serve_with(&self, env: &[(&str, &str)]) -> Broker {
        let mut cmd = self.command(&["serve", "--listen", "127.0.0.1:0"]);
        cmd.env("SEKS_ADMIN_LISTEN", "127.0.0.1:0");
        for (k, v) in env {
            cmd.env(k, v);
        }
        let mut child = cmd.spawn().expect("spawn seks serve");
        let stderr = child.stderr.take().expect("stderr");
        let mut stdout = child.stdout.take().expect("stdout");
        let transcript = self.transcript.clone();
        let admin: Arc<Mutex<Option<String>>> = Arc::default();
        let admin_seen = admin.clone();
        let forward: Arc<Mutex<Option<String>>> = Arc::default();
        let forward_seen = forward.clone();
        let (addr_tx, addr_rx) = tokio::sync::oneshot::channel();
        tokio::spawn(async move {
            let mut lines = BufReader::new(stderr).lines();
            let mut addr_tx = Some(addr_tx);
            let address_after = |line: &str, marker: &str| {
                line.split(marker).nth(1).map(|rest| {
                    // Text logs end the address at a space, JSON logs at a quote.
                    rest.chars()
                        .take_while(|c| !c.is_whitespace() && *c != '"')
                        .collect::<String>()
                })
            };
            while let Ok(Some(line)) = lines.next_line().await {
                if let Some(addr) = address_after(&line, "listening on http://")
                    && let Some(tx) = addr_tx.take()
                {
                    let _ = tx.send(addr);
                }
                if let Some(addr) = address_after(&line, "admin API on http://") {
                    *admin_seen.lock().unwrap() = Some(format!("http://{addr}"));
                }
                if let Some(addr) = address_after(&line, "forward proxy on http://") {
                    *forward_seen.lock().unwrap() = Some(addr);
                }
                let mut t = transcript.lock().unwrap();
                t.push_str(&line);
                t.push('\n');
            }
        });
        let transcript = self.transcript.clone();
        tokio::spawn(async move {
            let mut buf = String::new();
            let _ = stdout.read_to_string(&mut buf).await;
            transcript.lock().unwrap().push_str(&buf);
        });
        let addr = tokio::time::timeout(Duration::from_secs(20), addr_rx)
            .await
            .expect("broker did not start within 20s")
            .expect("broker exited before listening");
        Broker {
            child,
            base: format!("http://{addr}"),
            addr: addr.parse().expect("listen address"),
            admin,
            forward,
        }
    }

    fn log(&self, text: &str) {
        self.transcript.lock().unwrap().push_str(text);
    }

    /// Everything printed so far.
    pub fn transcript(&self) -> String {
        self.transcript.lock().unwrap().clone()
    }
}

/// Every built-in provider but S3, in `seks provider list` order (S3 signs requests and has
/// its own tests in `sigv4.rs`).
pub const BUILTIN_PROVIDERS: [&str; 21] = [
    "openai",
    "anthropic",
    "gemini",
    "groq",
    "mistral",
    "openrouter",
    "deepseek",
    "xai",
    "huggingface",
    "github",
    "gitlab",
    "slack",
    "discord",
    "telegram",
    "notion",
    "brave",
    "cloudflare",
    "stripe",
    "linear",
    "gmail",
    "msgraph",
];

/// The built-ins whose access tokens are minted by an OAuth2 token endpoint.
pub const OAUTH2_PROVIDERS: [&str; 2] = ["gmail", "msgraph"];

/// A mock upstream, an environment pointed at it with secret `main` (openai, value `key`),
/// and a token for that secret minted with `token_args`.
pub async fn openai_token(key: &str, token_args: &[&str]) -> (mock::MockUpstream, Env, String) {
    let mock = mock::MockUpstream::start().await;
    let env = Env::with_upstream(&mock.url());
    env.add_secret("main", "openai", key).await;
    let token = env.create_token("main", token_args).await;
    (mock, env, token)
}

/// `GET /api/openai/v1/models` with `token`, `times` times, answers ignored: traffic for
/// the audit log.
pub async fn list_models(broker: &Broker, token: &str, times: usize) {
    let url = broker.url("/api/openai/v1/models");
    let auth = format!("Bearer {token}");
    for _ in 0..times {
        http::send("GET", &url, &[("authorization", &auth)], "").await;
    }
}

/// A config with every built-in provider pointed at `upstream` (OAuth2 token endpoints at
/// its `/oauth2/token`); `top_level` TOML goes first.
pub fn config_for(upstream: &str, top_level: &str) -> String {
    let mut cfg = format!(
        "{top_level}\n[upstream]\nconnect_timeout = \"2s\"\nresponse_timeout = \"2s\"\nread_timeout = \"2s\"\n"
    );
    for p in BUILTIN_PROVIDERS {
        cfg.push_str(&format!("[providers.{p}]\nbase_url = \"{upstream}\"\n"));
        if OAUTH2_PROVIDERS.contains(&p) {
            cfg.push_str(&format!(
                "auth = {{ scheme = \"oauth2\", token_url = \"{upstream}/oauth2/token\" }}\n"
            ));
        }
    }
    cfg
}

/// A running `seks serve`; killed on drop.
pub struct Broker {
    pub child: Child,
    pub base: String,
    pub addr: std::net::SocketAddr,
    /// The admin API's base URL, once the broker has logged it.
    admin: Arc<Mutex<Option<String>>>,
    /// The forward proxy's address, once the broker has logged it.
    forward: Arc<Mutex<Option<String>>>,
}

impl Broker {
    /// URL of a path on the broker.
    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    /// The admin API's base URL, as the broker logged it.
    pub async fn admin_url(&self) -> String {
        for _ in 0..200 {
            if let Some(url) = self.admin.lock().unwrap().clone() {
                return url;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("the broker never logged its admin API address");
    }

    /// The forward proxy's address (`--proxy-listen`), as the broker logged it.
    pub async fn proxy_addr(&self) -> std::net::SocketAddr {
        for _ in 0..200 {
            if let Some(addr) = self.forward.lock().unwrap().clone() {
                return addr.parse().expect("forward proxy address");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("the broker never logged its forward proxy address");
    }

    /// Kill the broker (SIGKILL) and wait.
    pub async fn stop(mut self) {
        let _ = self.child.kill().await;
    }

    /// Ask the broker to shut down (SIGTERM) and wait for it to exit: only then has it
    /// written what it keeps at shutdown (audit records, use times, counters).
    pub async fn terminate(mut self) {
        if let Some(pid) = self.child.id() {
            let _ = std::process::Command::new("kill")
                .args(["-TERM", &pid.to_string()])
                .status();
        }
        // A shutdown takes up to the broker's 10 s grace and then some, longer on a busy
        // machine; returning before the exit would kill it (on drop) before it writes what it
        // keeps. Only a broker that never exits is a failure.
        let exited = tokio::time::timeout(Duration::from_secs(120), self.child.wait()).await;
        assert!(
            exited.is_ok(),
            "the broker did not exit within 120 s of SIGTERM"
        );
    }
}

/// Every file under `dir`, with its bytes.
pub fn files_under(dir: &Path) -> Vec<(String, Vec<u8>)> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            out.extend(files_under(&path));
        } else {
            out.push((path.display().to_string(), std::fs::read(&path).unwrap()));
        }
    }
    out
}

/// The canary check: `secret`, in any form, is not in what the broker's processes printed,
/// in `responses`, in any file of the data directory (SQLite database included), or in any
/// row of the PostgreSQL database.
pub fn assert_never_leaked(env: &Env, secret: &str, responses: &[u8]) {
    let transcript = env.transcript();
    assert_eq!(
        forms::found_in(secret, transcript.as_bytes()),
        Vec::<String>::new(),
        "in the output:\n{transcript}"
    );
    assert_eq!(
        forms::found_in(secret, responses),
        Vec::<String>::new(),
        "in the responses"
    );
    for (path, bytes) in files_under(env.data_dir()) {
        assert_eq!(
            forms::found_in(secret, &bytes),
            Vec::<String>::new(),
            "in {path}"
        );
    }
    if let Some(db) = &env.pg {
        assert_eq!(
            forms::found_in(secret, &db.dump()),
            Vec::<String>::new(),
            "in the PostgreSQL database"
        );
    }
}

/// The Python interpreter of the test venv (set up by `scripts/test.sh`).
pub fn python() -> PathBuf {
    if let Some(p) = std::env::var_os("SEKS_TEST_PYTHON") {
        return p.into();
    }
    let venv = Path::new(env!("CARGO_MANIFEST_DIR")).join(".venv/bin/python");
    assert!(
        venv.exists(),
        "the SDK tests need the Python venv: run `scripts/test.sh` (or set SEKS_TEST_PYTHON)"
    );
    venv
}

/// Run a script from `tests/python` with `args`; returns (success, stdout, stderr).
pub async fn run_python(script: &str, args: &[&str], env: &[(&str, &str)]) -> CliOutput {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/python")
        .join(script);
    let mut cmd = Command::new(python());
    cmd.arg(path).args(args).kill_on_drop(true);
    for (k, v) in env {
        cmd.env(k, v);
    }
    let out = tokio::time::timeout(Duration::from_secs(120), cmd.output())
        .await
        .expect("python client timed out")
        .expect("run python");
    CliOutput {
        status: out.status,
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}
