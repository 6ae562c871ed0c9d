//! Capabilities, not credentials: actions the operator writes down — send an email, run a
//! named query, call a provider's API with a templated request — that an agent may invoke
//! without ever holding the SMTP password, the connection string or the API key.
//!
//! Like a stored procedure with definer rights, a capability runs with its own secret and
//! only within the bounds of its definition: the agent supplies arguments, checked against
//! the declared parameters, and nothing else. Definitions come from the config file
//! (`[capabilities.NAME]`) and from the store (`seks capability add FILE`).
//!
//! - [`params`]: declared parameters, their JSON Schema, validation and audit summaries.
//! - [`email`]: SMTP with fixed or allow-listed senders and recipients.
//! - [`sql`]: one parameterised statement on PostgreSQL, MySQL (or MariaDB) or SQLite,
//!   read-only by default.
//! - [`http`]: a templated request to a provider, its credential injected as the proxy does.
//! - [`invoke`]: the path every call takes, over HTTP or MCP: token, policy, arguments,
//!   limits, approval, secret, backend, audit.
//! - [`trial`]: an operator's run of a capability, from the CLI or the admin API.

pub mod email;
pub mod http;
pub mod invoke;
pub mod params;
pub mod sql;
pub mod trial;

use std::collections::BTreeMap;
use std::num::NonZeroU32;
use std::sync::{Arc, PoisonError, RwLock};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::providers::Providers;
use crate::store::{DEFAULT_TENANT, Store, StoreError, timed};
use params::BadArgument;

/// Provider name of secrets that hold an SMTP server and its password (not a proxied provider).
pub const SMTP_SECRETS: &str = "smtp";
/// Provider name of secrets that hold a database connection string (not a proxied provider).
pub const SQL_SECRETS: &str = "sql";
/// Secret kinds that exist only for capabilities: `seks secret add NAME --provider smtp|sql`.
pub const SECRET_KINDS: [&str; 2] = [SMTP_SECRETS, SQL_SECRETS];
/// Longest description shown to a model.
const MAX_DESCRIPTION: usize = 2048;
/// Largest answer a capability returns when it sets no `max_response_bytes`.
const DEFAULT_MAX_RESPONSE: usize = 1024 * 1024;
/// Calls of an SQL or email capability running at once when it sets no `max_in_flight`:
/// each holds a connection of its own, and the agent's token may set no limit.
const DEFAULT_MAX_IN_FLIGHT: NonZeroU32 = NonZeroU32::new(4).expect("4 is not zero");

/// A capability as the operator writes it (`[capabilities.NAME]`), by `kind`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum CapabilitySpec {
    /// Send an email through SMTP.
    Email(email::EmailSpec),
    /// Run one parameterised SQL statement.
    Sql(sql::SqlSpec),
    /// Make one templated request to a provider.
    Http(http::HttpSpec),
}

/// What every kind of capability declares, whatever it does.
#[derive(Debug, Clone, Copy)]
pub struct Common<'a> {
    /// What it does, for the model.
    pub description: &'a str,
    /// The stored secret it runs with.
    pub secret: &'a str,
    /// Whether every call waits for an operator's approval.
    pub require_approval: bool,
    /// Longest a call may take.
    pub timeout: Duration,
    /// Most calls running at once, whichever tokens make them (`None`: no bound).
    pub max_in_flight: Option<NonZeroU32>,
}

impl CapabilitySpec {
    /// The fields every kind has.
    pub fn common(&self) -> Common<'_> {
        match self {
            CapabilitySpec::Email(s) => Common {
                description: &s.description,
                secret: &s.secret,
                require_approval: s.require_approval,
                timeout: s.timeout.unwrap_or(email::DEFAULT_TIMEOUT),
                max_in_flight: Some(s.max_in_flight.unwrap_or(DEFAULT_MAX_IN_FLIGHT)),
            },
            CapabilitySpec::Sql(s) => Common {
                description: &s.description,
                secret: &s.secret,
                require_approval: s.require_approval,
                timeout: s.timeout.unwrap_or(sql::DEFAULT_TIMEOUT),
                max_in_flight: Some(s.max_in_flight.unwrap_or(DEFAULT_MAX_IN_FLIGHT)),
            },
            CapabilitySpec::Http(s) => Common {
                description: &s.description,
                secret: &s.secret,
                require_approval: s.require_approval,
                timeout: s.timeout.unwrap_or(http::DEFAULT_TIMEOUT),
                max_in_flight: s.max_in_flight,
            },
        }
    }

    /// `email`, `sql` or `http`.
    pub fn kind(&self) -> &'static str {
        match self {
            CapabilitySpec::Email(_) => "email",
            CapabilitySpec::Sql(_) => "sql",
            CapabilitySpec::Http(_) => "http",
        }
    }

    /// The provider an HTTP capability calls (what its audit records name).
    pub fn provider(&self) -> Option<&str> {
        match self {
            CapabilitySpec::Http(s) => Some(&s.provider),
            _ => None,
        }
    }

    /// The provider the secret must be stored under: the binding that stops a capability
    /// from sending one service's key to another.
    pub fn secret_provider(&self) -> &str {
        match self {
            CapabilitySpec::Email(_) => SMTP_SECRETS,
            CapabilitySpec::Sql(_) => SQL_SECRETS,
            CapabilitySpec::Http(s) => &s.provider,
        }
    }
}

/// A definition that can't be used, naming the capability and the problem.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("capability `{name}`: {why}")]
pub struct InvalidCapability {
    /// The capability.
    pub name: String,
    /// What is wrong.
    pub why: String,
}

/// A checked capability, with the schema its arguments are validated against.
#[derive(Debug)]
pub struct Capability {
    /// Its name (also its MCP tool name).
    pub name: String,
    /// The definition.
    pub spec: CapabilitySpec,
    /// JSON Schema of the arguments, as shown to models.
    pub schema: Value,
    /// Defined in the config file (rather than stored with `capability add`).
    pub from_config: bool,
}

/// Whether `name` can name a capability: 1-64 lowercase letters, digits, `_` and `-`, which
/// is also a valid MCP tool name and a plain URL path segment.
pub fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'_' | b'-'))
}

impl Capability {
    /// Check a definition and derive its argument schema.
    pub fn new(
        name: &str,
        spec: CapabilitySpec,
        providers: &Providers,
        from_config: bool,
    ) -> Result<Self, InvalidCapability> {
        let invalid = |why: String| InvalidCapability {
            name: name.to_owned(),
            why,
        };
        if !valid_name(name) {
            return Err(invalid(
                "names are 1-64 lowercase letters, digits, `_` and `-`".to_owned(),
            ));
        }
        let common = spec.common();
        if common.description.trim().is_empty() || common.description.len() > MAX_DESCRIPTION {
            return Err(invalid(format!(
                "`description` must say what it does, in at most {MAX_DESCRIPTION} bytes"
            )));
        }
        crate::ops::check_secret_name(common.secret).map_err(|e| invalid(e.to_string()))?;
        if common.timeout.is_zero() {
            return Err(invalid("`timeout` must be more than zero".to_owned()));
        }
        let schema = match &spec {
            CapabilitySpec::Email(s) => s.check().map(|()| s.schema()),
            CapabilitySpec::Sql(s) => s.check().map(|()| params::schema(&s.params)),
            CapabilitySpec::Http(s) => s.check(providers).map(|()| s.schema()),
        }
        .map_err(invalid)?;
        Ok(Capability {
            name: name.to_owned(),
            spec,
            schema,
            from_config,
        })
    }

    /// Check `args` against the declared parameters (and the kind's own bounds).
    pub fn validate(&self, args: &Value) -> Result<Validated, ArgumentError> {
        match &self.spec {
            CapabilitySpec::Email(s) => s.validate(args).map(Validated::Email),
            CapabilitySpec::Sql(s) => Ok(Validated::Values(params::validate(&s.params, args)?)),
            CapabilitySpec::Http(s) => {
                let values = params::validate(&s.params, args)?;
                s.path_for(&values)?;
                Ok(Validated::Values(values))
            }
        }
    }
}

/// Arguments that passed validation, ready for their kind's backend.
#[derive(Debug)]
pub enum Validated {
    /// A message to send.
    Email(email::Message),
    /// One value per declared parameter, in declaration order.
    Values(Vec<Value>),
}

/// Arguments refused before anything runs.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ArgumentError {
    /// Not what the parameters declare (400).
    #[error(transparent)]
    Bad(#[from] BadArgument),
    /// Well-formed but outside what the operator allows, such as a recipient off the
    /// allow-list (403).
    #[error("{0}")]
    NotAllowed(String),
}

/// Running a capability against its backend failed. Messages may quote the backend, so
/// they are scrubbed of every secret before an agent sees them.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    /// The backend answered, and said no.
    #[error("{0}")]
    Refused(String),
    /// The backend could not use a value the agent gave: malformed for its type, out of
    /// range, not storable (400, like arguments the broker refuses itself).
    #[error("{0}")]
    BadValue(String),
    /// A read-only capability's statement tried to change data.
    #[error("this capability is read-only, and its statement tried to change data")]
    ReadOnly,
    /// The backend could not be reached or spoken to.
    #[error("{0}")]
    Unreachable(String),
    /// The backend did not finish in time.
    #[error("the backend did not finish within {0:?}")]
    Timeout(Duration),
    /// The definition or its secret doesn't work: the operator's to fix, so the detail goes
    /// to the log and the agent is told only that.
    #[error("{0}")]
    Misconfigured(String),
}

/// Every capability this broker serves: the config file's, fixed at start, and the store's,
/// reloaded whenever the store changes.
pub struct Catalog {
    configured: BTreeMap<String, Arc<Capability>>,
    stored: RwLock<Stored>,
    /// Serialises reloads, so concurrent calls after a change reload once.
    reload: tokio::sync::Mutex<()>,
    store: Arc<dyn Store>,
    providers: Providers,
}

#[derive(Default)]
struct Stored {
    /// The store revision these were loaded at.
    revision: Option<i64>,
    by_name: BTreeMap<String, Arc<Capability>>,
}

impl Catalog {
    /// The config file's capabilities (refused at start if any is invalid) plus whatever
    /// `store` holds.
    pub fn new(
        configured: &BTreeMap<String, CapabilitySpec>,
        providers: Providers,
        store: Arc<dyn Store>,
    ) -> Result<Self, InvalidCapability> {
        let configured = configured
            .iter()
            .map(|(name, spec)| {
                Capability::new(name, spec.clone(), &providers, true)
                    .map(|c| (name.clone(), Arc::new(c)))
            })
            .collect::<Result<_, _>>()?;
        Ok(Catalog {
            configured,
            stored: RwLock::default(),
            reload: tokio::sync::Mutex::new(()),
            store,
            providers,
        })
    }

    /// Whether the config file defines `name` (so the store may not).
    pub fn is_configured(&self, name: &str) -> bool {
        self.configured.contains_key(name)
    }

    /// Check a definition against the providers this catalog knows.
    pub fn check(&self, name: &str, spec: CapabilitySpec) -> Result<Capability, InvalidCapability> {
        Capability::new(name, spec, &self.providers, false)
    }

    /// The capability named `name`, if any.
    pub async fn get(&self, name: &str) -> Result<Option<Arc<Capability>>, StoreError> {
        if let Some(c) = self.configured.get(name) {
            return Ok(Some(c.clone()));
        }
        self.refresh().await?;
        Ok(self.read().by_name.get(name).cloned())
    }

    /// Every capability, by name (a config definition hides a stored one of the same name).
    pub async fn all(&self) -> Result<Vec<Arc<Capability>>, StoreError> {
        self.refresh().await?;
        let stored = self.read();
        let mut all: BTreeMap<&str, Arc<Capability>> = stored
            .by_name
            .iter()
            .map(|(k, v)| (k.as_str(), v.clone()))
            .collect();
        all.extend(self.configured.iter().map(|(k, v)| (k.as_str(), v.clone())));
        Ok(all.into_values().collect())
    }

    /// Reload stored definitions if the store changed since they were read.
    async fn refresh(&self) -> Result<(), StoreError> {
        let revision = timed(self.store.revision()).await?;
        if self.read().revision == Some(revision) {
            return Ok(());
        }
        let _one_at_a_time = self.reload.lock().await;
        if self.read().revision == Some(revision) {
            return Ok(());
        }
        let mut by_name = BTreeMap::new();
        for record in timed(self.store.list_capabilities(DEFAULT_TENANT)).await? {
            if self.configured.contains_key(&record.name) {
                tracing::warn!(capability = %record.name, "a stored capability has the name of one in the config file, which wins");
                continue;
            }
            let loaded = serde_json::from_str::<CapabilitySpec>(&record.spec)
                .map_err(|e| InvalidCapability {
                    name: record.name.clone(),
                    why: e.to_string(),
                })
                .and_then(|spec| self.check(&record.name, spec));
            match loaded {
                Ok(c) => {
                    by_name.insert(record.name, Arc::new(c));
                }
                Err(e) => {
                    tracing::error!(error = %e, "stored capability can't be used; it is not served")
                }
            }
        }
        *self.stored.write().unwrap_or_else(PoisonError::into_inner) = Stored {
            revision: Some(revision),
            by_name,
        };
        Ok(())
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, Stored> {
        self.stored.read().unwrap_or_else(PoisonError::into_inner)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const EXAMPLE: &str = r##"
[capabilities.email_ops]
kind = "email"
description = "Send an email to the ops team"
secret = "smtp-ops"
from = "bot@example.com"
to = ["ops@example.com"]

[capabilities.customer_orders]
kind = "sql"
description = "The latest orders of one customer"
secret = "shop-db"
statement = "select id, total from orders where customer_id = $1 order by id desc limit 50"
params = [{ name = "customer_id", type = "integer" }]

[capabilities.post_ops]
kind = "http"
description = "Post a message to #ops"
secret = "slack-bot"
provider = "slack"
method = "POST"
path = "/chat.postMessage"
body = { channel = "#ops", text = "{text}" }
params = [{ name = "text", type = "string", max_length = 3000 }]
"##;

    #[derive(Deserialize)]
    struct File {
        capabilities: BTreeMap<String, CapabilitySpec>,
    }

    #[test]
    fn the_issue_example_parses_checks_and_round_trips() {
        let file: File = toml::from_str(EXAMPLE).unwrap();
        let providers = Providers::load(&BTreeMap::new()).unwrap();
        for (name, spec) in &file.capabilities {
            let c = Capability::new(name, spec.clone(), &providers, true).unwrap();
            assert_eq!(c.schema["type"], "object", "{name}");
            let json = serde_json::to_string(spec).unwrap();
            assert_eq!(
                &serde_json::from_str::<CapabilitySpec>(&json).unwrap(),
                spec
            );
        }
        let orders = &file.capabilities["customer_orders"];
        assert_eq!(orders.common().timeout, sql::DEFAULT_TIMEOUT);
        assert_eq!(orders.secret_provider(), SQL_SECRETS);
        // SQL and email calls each hold a connection: bounded unless the operator says more.
        let bounds: Vec<_> = ["email_ops", "customer_orders", "post_ops"]
            .map(|name| {
                file.capabilities[name]
                    .common()
                    .max_in_flight
                    .map(NonZeroU32::get)
            })
            .into();
        assert_eq!(bounds, [Some(4), Some(4), None]);
    }

    #[test]
    fn unknown_fields_and_kinds_are_refused() {
        for bad in [
            "[capabilities.x]\nkind = \"ftp\"\ndescription = \"d\"\nsecret = \"s\"\n",
            "[capabilities.x]\nkind = \"sql\"\ndescription = \"d\"\nsecret = \"s\"\nstatement = \"select 1\"\nstatment = \"x\"\n",
            "[capabilities.x]\nkind = \"sql\"\ndescription = \"d\"\nsecret = \"s\"\nstatement = \"select 1\"\nmax_in_flight = 0\n",
        ] {
            assert!(toml::from_str::<File>(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn names_are_plain() {
        assert!(valid_name("customer_orders-2"));
        for bad in ["", "Orders", "a/b", "a b", &"x".repeat(65)] {
            assert!(!valid_name(bad), "{bad}");
        }
    }
}
