//! Configuration: command-line flags and environment (via clap) over the TOML config file
//! over built-in defaults.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use crate::capabilities::CapabilitySpec;
use crate::providers::ProviderSpec;

/// Default agent listener address.
pub const DEFAULT_LISTEN: &str = "127.0.0.1:8080";
/// Default admin API listener address: loopback only, so it is never exposed by accident.
pub const DEFAULT_ADMIN_LISTEN: &str = "127.0.0.1:8081";
/// Default request body limit: 64 MiB.
pub const DEFAULT_MAX_BODY_BYTES: u64 = 64 * 1024 * 1024;
/// Default limit on bodies read for policy: 4 MiB.
pub const DEFAULT_MAX_POLICY_BODY_BYTES: u64 = 4 * 1024 * 1024;

/// The config file could not be used.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("config file {}: {source}", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The file is not valid TOML or has unknown or mistyped keys.
    #[error("config file {}: {source}", path.display())]
    Parse {
        /// The file.
        path: PathBuf,
        /// What the parser said.
        source: Box<toml::de::Error>,
    },
}

/// Log output format.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Human-readable lines.
    #[default]
    Text,
    /// One JSON object per line.
    Json,
}

/// Where the admin API listens: an address, or `off`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AdminListen {
    /// No admin API.
    Off,
    /// Listen here.
    At(SocketAddr),
}

impl std::str::FromStr for AdminListen {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        if text.eq_ignore_ascii_case("off") {
            return Ok(AdminListen::Off);
        }
        text.parse()
            .map(AdminListen::At)
            .map_err(|_| format!("`{text}` is neither an address (127.0.0.1:8081) nor `off`"))
    }
}

impl<'de> Deserialize<'de> for AdminListen {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        String::deserialize(d)?
            .parse()
            .map_err(serde::de::Error::custom)
    }
}

/// The TOML config file, as written by the operator.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    /// Agent listener address.
    pub listen: Option<SocketAddr>,
    /// Admin API listener address, or `off`; default 127.0.0.1:8081.
    pub admin_listen: Option<AdminListen>,
    /// Data directory (database, generated master key).
    pub data_dir: Option<PathBuf>,
    /// Master key file; default `<data_dir>/master.key`.
    pub master_key_file: Option<PathBuf>,
    /// Where the store lives.
    #[serde(default)]
    pub store: StoreConfig,
    /// Largest request body forwarded upstream, in bytes.
    pub max_body_bytes: Option<u64>,
    /// Largest request body read to check it against a token's policy, in bytes.
    pub max_policy_body_bytes: Option<u64>,
    /// Log output format.
    pub log_format: Option<LogFormat>,
    /// Upstream connection settings.
    #[serde(default)]
    pub upstream: UpstreamConfig,
    /// Providers added or built-ins overridden, keyed by provider name.
    #[serde(default)]
    pub providers: BTreeMap<String, ProviderSpec>,
    /// Process hardening options.
    #[serde(default)]
    pub security: SecurityConfig,
    /// Holding requests for human approval.
    #[serde(default)]
    pub approvals: ApprovalsConfig,
    /// The audit log.
    #[serde(default)]
    pub audit: AuditConfig,
    /// Capabilities agents may invoke, keyed by name.
    #[serde(default)]
    pub capabilities: BTreeMap<String, CapabilitySpec>,
    /// The forward proxy (HTTPS_PROXY mode).
    #[serde(default)]
    pub forward: ForwardConfig,
    /// Host names resolved to fixed addresses instead of asking DNS (`"api.github.com" =
    /// "127.0.0.1:8443"`): for tests that stand a local server in for a provider.
    #[serde(default)]
    pub resolve: BTreeMap<String, String>,
}

/// Forward proxy settings (`[forward]`).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ForwardConfig {
    /// Address of the forward proxy; off when unset.
    pub listen: Option<SocketAddr>,
    /// Destinations agents may reach besides the providers' hosts: `host`, `host:port`,
    /// `*.domain[:port]` (port 443 unless given).
    pub allow: Vec<String>,
    /// Non-public address ranges the proxy may dial (`10.0.0.0/8`, `127.0.0.1`); cloud
    /// metadata addresses only when named exactly.
    pub allow_addresses: Vec<String>,
}

/// Store settings (`[store]`).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StoreConfig {
    /// `sqlite://PATH` or `postgres://user:password@host/db[?sslmode=verify-full]`;
    /// default SQLite in the data directory.
    pub url: Option<String>,
    /// How long tokens already validated keep being served (and audit records queued) while
    /// the store doesn't answer; default 0: refuse within a second, as for a revocation.
    #[serde(default, deserialize_with = "humantime_serde::deserialize")]
    pub outage_grace: Duration,
}

/// Audit log settings (`[audit]`).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AuditConfig {
    /// `batched` (default) or `strict`: a response ends only once its record is committed.
    pub durability: crate::audit::Durability,
    /// Keep serving when the audit log can't be written (records are lost meanwhile).
    pub fail_open: bool,
    /// Records waiting to be written before new requests are refused.
    pub queue: usize,
    /// Delete records older than this many days (kept forever when unset).
    pub retain_days: Option<u32>,
    /// Keep records at all; turn off only to measure what the log costs.
    pub enabled: bool,
}

impl Default for AuditConfig {
    fn default() -> Self {
        AuditConfig {
            durability: crate::audit::Durability::default(),
            fail_open: false,
            queue: 100_000,
            retain_days: None,
            enabled: true,
        }
    }
}

/// Approval settings (`[approvals]`).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ApprovalsConfig {
    /// How long a held request waits for a decision before it is refused.
    #[serde(deserialize_with = "humantime_serde::deserialize")]
    pub timeout: Duration,
    /// URL that gets a JSON POST for every held request.
    pub webhook_url: Option<String>,
}

impl Default for ApprovalsConfig {
    fn default() -> Self {
        ApprovalsConfig {
            timeout: Duration::from_secs(300),
            webhook_url: None,
        }
    }
}

/// Process hardening options (`[security]`).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SecurityConfig {
    /// Lock all memory (`mlockall`) so decrypted keys are never written to swap.
    #[serde(default)]
    pub mlock: bool,
}

/// Upstream connection settings (`[upstream]`).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct UpstreamConfig {
    /// Longest wait for a TCP connection (and TLS handshake) to an upstream.
    #[serde(deserialize_with = "humantime_serde::deserialize")]
    pub connect_timeout: Duration,
    /// Longest wait from sending a request to receiving the response headers.
    #[serde(deserialize_with = "humantime_serde::deserialize")]
    pub response_timeout: Duration,
    /// Longest silence while a response body streams before the broker gives up.
    #[serde(deserialize_with = "humantime_serde::deserialize")]
    pub read_timeout: Duration,
    /// How long an idle pooled connection is kept.
    #[serde(deserialize_with = "humantime_serde::deserialize")]
    pub pool_idle_timeout: Duration,
    /// Extra PEM CA certificates to trust for upstreams (e.g. a test CA).
    pub extra_ca_file: Option<PathBuf>,
}

impl Default for UpstreamConfig {
    fn default() -> Self {
        UpstreamConfig {
            connect_timeout: Duration::from_secs(10),
            // LLM calls without streaming can think for minutes; SDKs default to 10 minutes.
            response_timeout: Duration::from_secs(600),
            read_timeout: Duration::from_secs(300),
            pool_idle_timeout: Duration::from_secs(90),
            extra_ca_file: None,
        }
    }
}

/// What the command line (flags or environment) set; `None` means "not given".
#[derive(Debug, Default, Clone)]
pub struct CliOverrides {
    /// `--config` / `SEKS_CONFIG`.
    pub config: Option<PathBuf>,
    /// `--data-dir` / `SEKS_DATA_DIR`.
    pub data_dir: Option<PathBuf>,
    /// `--listen` / `SEKS_LISTEN`.
    pub listen: Option<SocketAddr>,
    /// `--admin-listen` / `SEKS_ADMIN_LISTEN`.
    pub admin_listen: Option<AdminListen>,
    /// `--log-format` / `SEKS_LOG_FORMAT`.
    pub log_format: Option<LogFormat>,
    /// `--proxy-listen` / `SEKS_PROXY_LISTEN`.
    pub proxy_listen: Option<SocketAddr>,
    /// `SEKS_STORE_URL` (environment only: the URL may hold a password).
    pub store_url: Option<String>,
}

/// The effective settings after merging flags, environment, file and defaults.
#[derive(Debug)]
pub struct Settings {
    /// Agent listener address.
    pub listen: SocketAddr,
    /// Admin API listener address; `None` when it is off.
    pub admin_listen: Option<SocketAddr>,
    /// Data directory.
    pub data_dir: PathBuf,
    /// Whether the data directory was chosen by the operator (vs the default).
    pub data_dir_is_default: bool,
    /// Master key file.
    pub master_key_file: PathBuf,
    /// The store's URL; `None`: SQLite in the data directory.
    pub store_url: Option<String>,
    /// How long cached tokens are served while the store doesn't answer.
    pub store_outage_grace: Duration,
    /// Request body limit in bytes.
    pub max_body_bytes: u64,
    /// Limit on bodies read for policy, in bytes.
    pub max_policy_body_bytes: u64,
    /// Log output format.
    pub log_format: LogFormat,
    /// Upstream connection settings.
    pub upstream: UpstreamConfig,
    /// Providers added or built-ins overridden.
    pub providers: BTreeMap<String, ProviderSpec>,
    /// Process hardening options.
    pub security: SecurityConfig,
    /// Approval settings.
    pub approvals: ApprovalsConfig,
    /// Audit log settings.
    pub audit: AuditConfig,
    /// Capabilities defined in the config file.
    pub capabilities: BTreeMap<String, CapabilitySpec>,
    /// Forward proxy settings; `forward.listen` holds the flag's value when given.
    pub forward: ForwardConfig,
    /// Fixed addresses for host names.
    pub resolve: BTreeMap<String, String>,
}

impl Settings {
    /// Merge: command line over config file over defaults.
    pub fn resolve(cli: CliOverrides) -> Result<Settings, ConfigError> {
        let file = match &cli.config {
            Some(path) => FileConfig::read(path)?,
            None => FileConfig::default(),
        };
        let chosen_dir = cli.data_dir.or(file.data_dir);
        let data_dir_is_default = chosen_dir.is_none();
        let data_dir = chosen_dir.unwrap_or_else(default_data_dir);
        let master_key_file = file
            .master_key_file
            .unwrap_or_else(|| data_dir.join("master.key"));
        let mut forward = file.forward;
        forward.listen = cli.proxy_listen.or(forward.listen);
        let default_listen: SocketAddr = DEFAULT_LISTEN
            .parse()
            .expect("default listen address is valid");
        Ok(Settings {
            listen: cli.listen.or(file.listen).unwrap_or(default_listen),
            admin_listen: match cli.admin_listen.or(file.admin_listen) {
                Some(AdminListen::At(addr)) => Some(addr),
                Some(AdminListen::Off) => None,
                None => Some(
                    DEFAULT_ADMIN_LISTEN
                        .parse()
                        .expect("default admin address is valid"),
                ),
            },
            data_dir,
            data_dir_is_default,
            master_key_file,
            store_url: cli.store_url.or(file.store.url),
            store_outage_grace: file.store.outage_grace,
            max_body_bytes: file.max_body_bytes.unwrap_or(DEFAULT_MAX_BODY_BYTES),
            max_policy_body_bytes: file
                .max_policy_body_bytes
                .unwrap_or(DEFAULT_MAX_POLICY_BODY_BYTES),
            log_format: cli.log_format.or(file.log_format).unwrap_or_default(),
            upstream: file.upstream,
            providers: file.providers,
            security: file.security,
            approvals: file.approvals,
            audit: file.audit,
            capabilities: file.capabilities,
            forward,
            resolve: file.resolve,
        })
    }
}

impl FileConfig {
    /// Read and parse a TOML config file.
    pub fn read(path: &Path) -> Result<FileConfig, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        toml::from_str(&text).map_err(|source| ConfigError::Parse {
            path: path.to_owned(),
            source: Box::new(source),
        })
    }
}

/// `$XDG_DATA_HOME/seks`, else `~/.local/share/seks`, else `./.seks`.
pub fn default_data_dir() -> PathBuf {
    let non_empty = |var| {
        std::env::var_os(var)
            .filter(|v| !v.is_empty())
            .map(PathBuf::from)
    };
    non_empty("XDG_DATA_HOME")
        .or_else(|| non_empty("HOME").map(|home| home.join(".local/share")))
        .map(|base| base.join("seks"))
        .unwrap_or_else(|| PathBuf::from(".seks"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn file_values_apply_and_flags_win() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("seks.toml");
        std::fs::write(
            &path,
            r#"
            listen = "127.0.0.1:9999"
            data_dir = "/tmp/from-file"
            max_body_bytes = 1024
            [store]
            outage_grace = "30s"
            [upstream]
            connect_timeout = "2s"
            [providers.openai]
            base_url = "http://127.0.0.1:1/v1"
            "#,
        )
        .unwrap();
        let s = Settings::resolve(CliOverrides {
            config: Some(path.clone()),
            data_dir: Some("/tmp/from-flag".into()),
            ..Default::default()
        })
        .unwrap();
        assert_eq!(s.listen.port(), 9999);
        assert_eq!(s.data_dir, PathBuf::from("/tmp/from-flag"));
        assert_eq!(
            s.master_key_file,
            PathBuf::from("/tmp/from-flag/master.key")
        );
        assert_eq!(s.max_body_bytes, 1024);
        assert_eq!(s.store_outage_grace, Duration::from_secs(30));
        assert_eq!(s.upstream.connect_timeout, Duration::from_secs(2));
        assert_eq!(s.upstream.read_timeout, Duration::from_secs(300));
        assert!(s.providers.contains_key("openai"));
    }

    #[test]
    fn the_admin_api_listens_on_loopback_by_default_and_can_be_turned_off() {
        let defaults = Settings::resolve(CliOverrides::default()).unwrap();
        assert_eq!(
            defaults.admin_listen,
            Some(DEFAULT_ADMIN_LISTEN.parse().unwrap())
        );
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("seks.toml");
        std::fs::write(&path, "admin_listen = \"off\"\n").unwrap();
        let off = Settings::resolve(CliOverrides {
            config: Some(path.clone()),
            ..Default::default()
        })
        .unwrap();
        assert_eq!(off.admin_listen, None);
        let flag = Settings::resolve(CliOverrides {
            config: Some(path),
            admin_listen: Some("127.0.0.1:0".parse().unwrap()),
            ..Default::default()
        })
        .unwrap();
        assert_eq!(flag.admin_listen, Some("127.0.0.1:0".parse().unwrap()));
        assert!("nonsense".parse::<AdminListen>().is_err());
    }

    #[test]
    fn a_store_outage_refuses_tokens_unless_a_grace_is_chosen() {
        let defaults = Settings::resolve(CliOverrides::default()).unwrap();
        assert_eq!(defaults.store_outage_grace, Duration::ZERO);
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("seks.toml");
        std::fs::write(&path, "[store]\noutage_grace = \"soon\"\n").unwrap();
        let err = FileConfig::read(&path).unwrap_err().to_string();
        assert!(err.contains("outage_grace"), "{err}");
    }

    #[test]
    fn unknown_keys_are_rejected_with_the_file_named() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("seks.toml");
        std::fs::write(&path, "listne = \"127.0.0.1:1\"\n").unwrap();
        let err = FileConfig::read(&path).unwrap_err().to_string();
        assert!(err.contains("seks.toml") && err.contains("listne"), "{err}");
    }
}
