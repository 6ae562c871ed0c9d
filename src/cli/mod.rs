//! The `seks` command line: argument parsing, shared set-up, one module per command group.

mod admin;
mod approvals;
mod audit;
mod backend;
mod ca;
mod capability;
mod key;
mod migrate;
mod output;
mod policy;
mod provider;
mod remote;
mod secret;
mod serve;
mod token;
mod usage;

use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::{Context as _, bail};
use clap::{Args, Parser, Subcommand};
use secrecy::SecretString;
use tracing_subscriber::EnvFilter;

use crate::capabilities::Catalog;
use crate::capabilities::invoke::Runner;
use crate::config::{CliOverrides, LogFormat, Settings};
use crate::hygiene;
use crate::keyring::Keyring;
use crate::ops::Ops;
use crate::ops::{self, master_key::MasterKeyError};
use crate::providers::Providers;
use crate::proxy::Upstreams;
use crate::scrub::Redactor;
use crate::store::{self, Store};
use crate::vault::{Key, KeySource, Vault, VaultError, master_key};
use backend::Backend;
use remote::Remote;

/// Environment variable naming the store (`store.url` in the config file).
const STORE_URL_ENV: &str = "SEKS_STORE_URL";

/// SEKS: a credential broker for AI agents.
#[derive(Debug, Parser)]
#[command(name = "seks", version, about, long_about = None)]
struct Cli {
    #[command(flatten)]
    global: GlobalArgs,
    #[command(subcommand)]
    command: Command,
}

/// Options every subcommand accepts.
#[derive(Debug, Args)]
struct GlobalArgs {
    /// Data directory holding the database and the generated master key
    /// [default: $XDG_DATA_HOME/seks or ~/.local/share/seks]
    #[arg(long, env = "SEKS_DATA_DIR", global = true, value_name = "DIR")]
    data_dir: Option<PathBuf>,
    /// TOML config file
    #[arg(long, env = "SEKS_CONFIG", global = true, value_name = "FILE")]
    config: Option<PathBuf>,
    /// Act on the running broker whose admin API is at URL instead of the local store
    /// (admin token in SEKS_ADMIN_TOKEN)
    #[arg(long, env = "SEKS_REMOTE", global = true, value_name = "URL")]
    remote: Option<String>,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the broker.
    Serve(serve::ServeArgs),
    /// Store, list, rotate and remove provider credentials.
    #[command(subcommand)]
    Secret(secret::SecretCommand),
    /// Mint, derive, show, update, list and revoke agent tokens.
    #[command(subcommand)]
    Token(token::TokenCommand),
    /// Named policies, and checking policy files.
    #[command(subcommand)]
    Policy(policy::PolicyCommand),
    /// Decide requests held for approval.
    #[command(subcommand)]
    Approvals(approvals::ApprovalsCommand),
    /// Daily requests and LLM tokens per token and per agent.
    Usage(usage::UsageArgs),
    /// The admin API's token.
    #[command(subcommand)]
    Admin(admin::AdminCommand),
    /// Read, export and verify the audit log.
    #[command(subcommand)]
    Audit(audit::AuditCommand),
    /// The providers this broker serves (built-in and from the config file).
    #[command(subcommand)]
    Provider(provider::ProviderCommand),
    /// Actions agents may invoke without the credential: list, show, add, remove, test.
    #[command(subcommand)]
    Capability(capability::CapabilityCommand),
    /// The forward proxy's certificate authority, for agents' trust stores.
    #[command(subcommand)]
    Ca(ca::CaCommand),
    /// The master key: rotate it.
    #[command(subcommand)]
    Key(key::KeyCommand),
    /// Copy this installation into a new store (SQLite to PostgreSQL, or back), verbatim.
    Migrate(migrate::MigrateArgs),
}

/// Entry point of the `seks` binary.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    // On one CPU, worker threads would only hand work to each other.
    let one_cpu = std::thread::available_parallelism().is_ok_and(|n| n.get() == 1);
    let mut builder = if one_cpu {
        tokio::runtime::Builder::new_current_thread()
    } else {
        tokio::runtime::Builder::new_multi_thread()
    };
    let runtime = match builder.enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    let redactor = Arc::new(Redactor::default());
    hygiene::install_panic_hook(redactor.clone());
    let mut overrides = CliOverrides {
        config: cli.global.config,
        data_dir: cli.global.data_dir,
        store_url: std::env::var(STORE_URL_ENV).ok(),
        ..CliOverrides::default()
    };
    let remote = cli.global.remote;
    let local_only = |what: &str| -> anyhow::Result<()> {
        match &remote {
            Some(_) => {
                bail!("`seks {what}` acts on this machine only; drop --remote / SEKS_REMOTE")
            }
            None => Ok(()),
        }
    };
    match cli.command {
        Command::Serve(args) => {
            local_only("serve")?;
            overrides.listen = args.listen;
            overrides.admin_listen = args.admin_listen;
            overrides.log_format = args.log_format;
            overrides.proxy_listen = args.proxy_listen;
            let ctx = Context::open(overrides, "info", redactor).await?;
            serve::run(ctx).await
        }
        Command::Policy(policy::PolicyCommand::Check { file }) => policy::check(&file),
        Command::Provider(cmd) => {
            local_only("provider")?;
            provider::run(&Context::prepare(overrides, "warn", redactor)?, cmd)
        }
        Command::Ca(cmd) => {
            local_only("ca")?;
            ca::run(Context::open(overrides, "warn", redactor).await?, cmd).await
        }
        Command::Key(cmd) => {
            local_only("key")?;
            key::run(Context::open(overrides, "warn", redactor).await?, cmd).await
        }
        Command::Migrate(args) => {
            local_only("migrate")?;
            migrate::run(&Context::prepare(overrides, "warn", redactor)?, args).await
        }
        Command::Admin(cmd) => {
            local_only("admin")?;
            admin::run(Context::open(overrides, "warn", redactor).await?, cmd).await
        }
        Command::Audit(cmd) => {
            audit::run(&Backend::open(remote, overrides, redactor).await?, cmd).await
        }
        Command::Secret(cmd) => {
            secret::run(&Backend::open(remote, overrides, redactor).await?, cmd).await
        }
        Command::Token(cmd) => {
            token::run(&Backend::open(remote, overrides, redactor).await?, cmd).await
        }
        Command::Policy(cmd) => {
            policy::run(&Backend::open(remote, overrides, redactor).await?, cmd).await
        }
        Command::Approvals(cmd) => {
            approvals::run(&Backend::open(remote, overrides, redactor).await?, cmd).await
        }
        Command::Capability(cmd) => {
            capability::run(&Backend::open(remote, overrides, redactor).await?, cmd).await
        }
        Command::Usage(args) => {
            usage::run(&Backend::open(remote, overrides, redactor).await?, &args).await
        }
    }
}

impl Backend {
    /// The remote admin API at `remote`, or else the local store.
    async fn open(
        remote: Option<String>,
        overrides: CliOverrides,
        redactor: Arc<Redactor>,
    ) -> anyhow::Result<Backend> {
        match remote {
            Some(url) => {
                let settings = Context::prepare(overrides, "warn", redactor)?;
                Ok(Backend::Remote(Remote::new(&url, &settings)?))
            }
            None => {
                let ctx = Context::open(overrides, "warn", redactor).await?;
                let ops = Ops::new(ctx.store.clone(), ctx.providers()?);
                Ok(Backend::Local { ctx, ops })
            }
        }
    }
}

/// Settings, the open store and the redactor, shared by every command.
pub(crate) struct Context {
    settings: Settings,
    store: Arc<dyn Store>,
    /// Masks secrets in everything this process writes; `serve` keeps it loaded.
    redactor: Arc<Redactor>,
}

impl Context {
    /// Settings, logging and process hardening: what every command needs, store or not.
    fn prepare(
        overrides: CliOverrides,
        default_log_level: &str,
        redactor: Arc<Redactor>,
    ) -> anyhow::Result<Settings> {
        let settings = Settings::resolve(overrides)?;
        init_logging(settings.log_format, default_log_level, redactor);
        // Every command may hold plaintext secrets in memory (serve, secret add/rotate).
        hygiene::harden_process(settings.security.mlock)?;
        Ok(settings)
    }

    async fn open(
        overrides: CliOverrides,
        default_log_level: &str,
        redactor: Arc<Redactor>,
    ) -> anyhow::Result<Context> {
        let settings = Self::prepare(overrides, default_log_level, redactor.clone())?;
        let location = store::Location::parse(settings.store_url.as_deref(), &settings.data_dir)?;
        let store = location
            .open()
            .await
            .with_context(|| format!("opening the store {location}"))?;
        Ok(Context {
            settings,
            store,
            redactor,
        })
    }

    /// The provider table with config overrides.
    fn providers(&self) -> anyhow::Result<Providers> {
        Ok(Providers::load(&self.settings.providers)?)
    }

    /// The capabilities the config file and the store define.
    fn catalog(&self) -> anyhow::Result<Catalog> {
        Ok(Catalog::new(
            &self.settings.capabilities,
            self.providers()?,
            self.store.clone(),
        )?)
    }

    /// Load the master key and check it against the store; on a store that has never seen a
    /// key and with no key configured, generate one and say where it is.
    async fn unlock_vault(&self) -> anyhow::Result<Vault> {
        Ok(self.unlock_vault_from().await?.0)
    }

    /// [`Context::unlock_vault`], and where the key came from.
    async fn unlock_vault_from(&self) -> anyhow::Result<(Vault, KeySource)> {
        let recorded = self.store.meta(store::META_KEY_CHECK).await?;
        let (key, source) = load_master_key(&self.settings, recorded.is_none())?;
        let vault = Vault::new(key);
        if recorded.is_none() {
            self.store
                .init_meta(store::META_KEY_CHECK, &vault.key_check())
                .await?;
        }
        let vault = match ops::master_key::open_vault(self.store.as_ref(), vault).await {
            Err(MasterKeyError::Vault(VaultError::WrongMasterKey))
                if self.store_moved_to_pending_key(recorded.as_deref()) =>
            {
                let key_file = &self.settings.master_key_file;
                bail!(
                    "a master key rotation was interrupted: this store now opens with the new key in {}; move it to {}",
                    master_key::pending_file(key_file).display(),
                    key_file.display()
                )
            }
            opened => opened?,
        };
        crate::ops::bind_secret_names(self.store.as_ref(), &vault)
            .await
            .context("sealing stored secrets under their names")?;
        if let KeySource::Generated(path) = &source {
            eprintln!(
                "seks: generated a new master key in {} (mode 0600).\n\
                 \x20     Back it up: without it the stored secrets cannot be decrypted.\n\
                 \x20     Fine for a laptop; in production set {} from a secret manager instead.",
                path.display(),
                master_key::MASTER_KEY_ENV
            );
        }
        Ok((vault, source))
    }

    /// Whether `seks key rotate` left a new key beside the key file and the store, with
    /// fingerprint `recorded`, already uses it.
    fn store_moved_to_pending_key(&self, recorded: Option<&str>) -> bool {
        let pending = master_key::pending_file(&self.settings.master_key_file);
        match (master_key::load(None, &pending, false), recorded) {
            (Ok((key, _)), Some(check)) => Vault::new(key).verify_key_check(check).is_ok(),
            _ => false,
        }
    }

    /// What runs capabilities: secrets from `keyring`, HTTP through `upstreams`, SMTP
    /// trusting the `[upstream] extra_ca_file` too.
    fn runner(
        &self,
        keyring: Arc<Keyring>,
        providers: Providers,
        upstreams: Upstreams,
    ) -> anyhow::Result<Runner> {
        let extra_ca = match &self.settings.upstream.extra_ca_file {
            Some(path) => Some(
                std::fs::read(path)
                    .with_context(|| format!("reading the extra CA file {}", path.display()))?,
            ),
            None => None,
        };
        Runner::new(keyring, providers, upstreams, extra_ca.as_deref()).map_err(anyhow::Error::msg)
    }

    /// `--data-dir DIR ` to repeat in printed commands when it isn't the default.
    fn data_dir_flag(&self) -> String {
        if self.settings.data_dir_is_default {
            String::new()
        } else {
            format!("--data-dir {} ", self.settings.data_dir.display())
        }
    }
}

/// The master key from `SEKS_MASTER_KEY` or the key file; with neither, a key generated into
/// the key file if `may_generate`.
fn load_master_key(settings: &Settings, may_generate: bool) -> anyhow::Result<(Key, KeySource)> {
    let env = key_from_env(master_key::MASTER_KEY_ENV);
    Ok(master_key::load(
        env,
        &settings.master_key_file,
        may_generate,
    )?)
}

/// Environment variable `name` with its value, if set.
fn key_from_env(name: &str) -> Option<(&str, SecretString)> {
    std::env::var(name)
        .ok()
        .map(|value| (name, SecretString::from(value)))
}

fn init_logging(format: LogFormat, default_level: &str, redactor: Arc<Redactor>) {
    let filter =
        EnvFilter::try_from_env("SEKS_LOG").unwrap_or_else(|_| EnvFilter::new(default_level));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(hygiene::RedactingStderr::new(redactor))
        .with_ansi(std::io::stderr().is_terminal());
    // A second initialisation (tests calling in twice) is harmless; ignore it.
    let _ = match format {
        LogFormat::Text => builder.try_init(),
        LogFormat::Json => builder.json().try_init(),
    };
}
