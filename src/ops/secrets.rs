//! Secret operations: values are checked, sealed and stored, and never returned.

use secrecy::{ExposeSecret, SecretString};

use super::views::{SecretRemoved, SecretView};
use super::{Ops, OpsError};
use crate::capabilities::email::SmtpServer;
use crate::capabilities::{SECRET_KINDS, SMTP_SECRETS, SQL_SECRETS, sql};
use crate::providers::Provider;
use crate::scrub::MIN_SECRET_LEN;
use crate::store::{
    DEFAULT_TENANT, META_SECRETS_NAMED, NewSecret, SecretRecord, Store, StoreError,
};
use crate::vault::{SecretIdentity, Vault};
use crate::{clock, tokens};

/// Secret names are short and plain, so they are safe in URLs, tables and logs.
pub fn check_secret_name(name: &str) -> Result<(), OpsError> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'));
    if ok {
        Ok(())
    } else {
        Err(OpsError::Invalid(
            "secret names are 1-64 characters of letters, digits, `-`, `_` and `.`".to_owned(),
        ))
    }
}

/// A value must be long enough to scrub reliably and, for a provider, injectable the
/// provider's way; an `smtp` secret must name its server, a `sql` one a database.
fn check_secret_value(
    kind: &str,
    provider: Option<&Provider>,
    value: &SecretString,
) -> Result<(), OpsError> {
    let value = value.expose_secret();
    if value.len() < MIN_SECRET_LEN {
        return Err(OpsError::Invalid(format!(
            "refusing to store this value: shorter than {MIN_SECRET_LEN} characters, it could not be scrubbed reliably"
        )));
    }
    let checked = match provider {
        Some(provider) => provider.auth.accepts(value).map_err(str::to_owned),
        None if kind == SMTP_SECRETS => SmtpServer::parse(value).map(drop),
        None if kind == SQL_SECRETS => sql::check_connection_string(value),
        None => Ok(()),
    };
    checked.map_err(|why| OpsError::Invalid(format!("refusing to store this value: {why}")))
}

/// Reseal every secret a broker sealed before names were bound into the associated data,
/// so that relabelling rows in the store can't hand a capability another secret; done once
/// per store, on the first unlock with the master key. A row that opens neither way is left
/// as it is: the keyring reports it and never uses it.
pub async fn bind_secret_names(store: &dyn Store, vault: &Vault) -> Result<(), OpsError> {
    if store.meta(META_SECRETS_NAMED).await?.is_some() {
        return Ok(());
    }
    for row in store.all_secrets().await? {
        if let Ok(Some(sealed)) = vault.reseal_unnamed(row.identity(), &row.sealed) {
            // A row that changed meanwhile (rotated, or resealed by another broker) is
            // already sealed under its name.
            store
                .reseal_secret(
                    &row.tenant,
                    &row.id,
                    row.version,
                    &row.sealed.ciphertext,
                    &sealed,
                )
                .await?;
        }
    }
    store.set_meta(META_SECRETS_NAMED, "1").await?;
    Ok(())
}

impl Ops {
    async fn secret(&self, name: &str) -> Result<SecretRecord, OpsError> {
        self.store
            .secret_by_name(DEFAULT_TENANT, name)
            .await?
            .ok_or_else(|| OpsError::NotFound(format!("no secret named `{name}`")))
    }

    /// Every secret, oldest first; never a value.
    pub async fn list_secrets(&self) -> Result<Vec<SecretView>, OpsError> {
        let secrets = self.store.list_secrets(DEFAULT_TENANT).await?;
        Ok(secrets.iter().map(SecretView::from).collect())
    }

    /// Check, seal and store a new credential.
    pub async fn add_secret(
        &self,
        vault: &Vault,
        name: &str,
        provider_name: &str,
        value: &SecretString,
    ) -> Result<SecretView, OpsError> {
        check_secret_name(name)?;
        let provider = self.providers.get(provider_name);
        if provider.is_none() && !SECRET_KINDS.contains(&provider_name) {
            return Err(OpsError::Invalid(format!(
                "unknown provider `{provider_name}`; known providers: {} (and, for capabilities, {})",
                self.providers.names().join(", "),
                SECRET_KINDS.join(", ")
            )));
        }
        if self
            .store
            .secret_by_name(DEFAULT_TENANT, name)
            .await?
            .is_some()
        {
            return Err(OpsError::Conflict(format!(
                "secret `{name}` already exists; rotate it to change its value"
            )));
        }
        check_secret_value(provider_name, provider.map(|p| &**p), value)?;
        let id = format!("sec_{}", tokens::random_base62(16));
        let identity = SecretIdentity {
            tenant: DEFAULT_TENANT,
            secret_id: &id,
            version: 1,
            provider: provider_name,
            name: Some(name),
        };
        let secret = NewSecret {
            sealed: vault.seal(identity, value)?,
            id,
            tenant: DEFAULT_TENANT.to_owned(),
            name: name.to_owned(),
            provider: provider_name.to_owned(),
            created_at: clock::now(),
        };
        self.store.insert_secret(&secret).await?;
        self.secret_view(name).await
    }

    /// Replace a credential's value; its tokens keep working with the new one.
    pub async fn rotate_secret(
        &self,
        vault: &Vault,
        name: &str,
        value: &SecretString,
    ) -> Result<SecretView, OpsError> {
        let secret = self.secret(name).await?;
        check_secret_value(
            &secret.provider,
            self.providers.get(&secret.provider).map(|p| &**p),
            value,
        )?;
        let version = secret.version + 1;
        let identity = SecretIdentity {
            version,
            ..secret.identity()
        };
        let sealed = vault.seal(identity, value)?;
        self.store
            .rotate_secret(&secret.tenant, &secret.id, version, &sealed, clock::now())
            .await
            .map_err(|e| match e {
                StoreError::NotFound(_) => {
                    OpsError::Conflict(format!("secret `{name}` changed while rotating; try again"))
                }
                other => other.into(),
            })?;
        self.secret_view(name).await
    }

    /// Remove a secret and every token that uses it.
    pub async fn remove_secret(&self, name: &str) -> Result<SecretRemoved, OpsError> {
        let secret = self.secret(name).await?;
        let tokens_removed = self.store.delete_secret(&secret.tenant, &secret.id).await?;
        Ok(SecretRemoved {
            name: name.to_owned(),
            tokens_removed,
        })
    }

    async fn secret_view(&self, name: &str) -> Result<SecretView, OpsError> {
        self.list_secrets()
            .await?
            .into_iter()
            .find(|s| s.name == name)
            .ok_or_else(|| OpsError::NotFound(format!("no secret named `{name}`")))
    }
}
