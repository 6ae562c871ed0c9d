//! Capability operations: list the capabilities a broker serves, and add or remove those
//! kept in the store (the config file's are read-only here).

use super::views::{CapabilityAdded, CapabilityView, NewCapabilities};
use super::{Ops, OpsError};
use crate::capabilities::Catalog;
use crate::clock;
use crate::store::DEFAULT_TENANT;

impl Ops {
    /// Every capability `catalog` serves, by name.
    pub async fn list_capabilities(
        &self,
        catalog: &Catalog,
    ) -> Result<Vec<CapabilityView>, OpsError> {
        let all = catalog.all().await?;
        Ok(all
            .iter()
            .map(|c| CapabilityView::from(c.as_ref()))
            .collect())
    }

    /// The capability named `name`.
    pub async fn show_capability(
        &self,
        catalog: &Catalog,
        name: &str,
    ) -> Result<CapabilityView, OpsError> {
        catalog
            .get(name)
            .await?
            .map(|c| CapabilityView::from(c.as_ref()))
            .ok_or_else(|| OpsError::NotFound(format!("no capability named `{name}`")))
    }

    /// Check every definition, then store them all in one transaction, replacing stored
    /// ones of the same name; running brokers serve them within a second.
    pub async fn add_capabilities(
        &self,
        catalog: &Catalog,
        new: &NewCapabilities,
    ) -> Result<Vec<CapabilityAdded>, OpsError> {
        if new.capabilities.is_empty() {
            return Err(OpsError::Invalid(
                "no capabilities given: define them as [capabilities.NAME] tables".to_owned(),
            ));
        }
        let mut checked = Vec::new();
        for (name, spec) in &new.capabilities {
            if catalog.is_configured(name) {
                return Err(OpsError::Conflict(format!(
                    "capability `{name}` is defined in the config file, which would hide it"
                )));
            }
            let capability = catalog
                .check(name, spec.clone())
                .map_err(|e| OpsError::Invalid(e.to_string()))?;
            let common = capability.spec.common();
            let wanted = capability.spec.secret_provider();
            let secret = self
                .store
                .secret_by_name(DEFAULT_TENANT, common.secret)
                .await?;
            if let Some(secret) = &secret
                && secret.provider != wanted
            {
                return Err(OpsError::Invalid(format!(
                    "capability `{name}`: secret `{}` is stored for `{}`, but a {} capability needs a `{wanted}` secret",
                    common.secret,
                    secret.provider,
                    capability.spec.kind()
                )));
            }
            checked.push((capability, secret.is_some()));
        }
        let specs = checked
            .iter()
            .map(|(c, _)| serde_json::to_string(&c.spec))
            .collect::<Result<Vec<_>, _>>()?;
        let definitions: Vec<(&str, &str)> = checked
            .iter()
            .zip(&specs)
            .map(|((c, _), spec)| (c.name.as_str(), spec.as_str()))
            .collect();
        let replaced = self
            .store
            .put_capabilities(DEFAULT_TENANT, &definitions, clock::now())
            .await?;
        let added = checked
            .iter()
            .zip(replaced)
            .map(|((c, secret_exists), replaced)| CapabilityAdded {
                name: c.name.clone(),
                replaced,
                secret: c.spec.common().secret.to_owned(),
                secret_provider: c.spec.secret_provider().to_owned(),
                secret_exists: *secret_exists,
            })
            .collect();
        Ok(added)
    }

    /// Remove a stored capability.
    pub async fn remove_capability(&self, catalog: &Catalog, name: &str) -> Result<(), OpsError> {
        if catalog.is_configured(name) {
            return Err(OpsError::Conflict(format!(
                "capability `{name}` is defined in the config file; remove it there"
            )));
        }
        if self.store.delete_capability(DEFAULT_TENANT, name).await? {
            Ok(())
        } else {
            Err(OpsError::NotFound(format!(
                "no stored capability named `{name}`"
            )))
        }
    }
}
