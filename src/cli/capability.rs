//! `seks capability …`: the capabilities agents may invoke — list them, add or remove those
//! kept in the store, and run one as the operator to try it.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

use anyhow::{Context as _, bail};
use clap::Subcommand;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::Context;
use super::output::{print_json, print_table};
use crate::audit::{self, AuditRecord, Auditor, Decision};
use crate::capabilities::invoke::CALL_PATH;
use crate::capabilities::params::summarise;
use crate::capabilities::{Capability, CapabilitySpec, Catalog};
use crate::clock;
use crate::keyring::Keyring;
use crate::proxy::Upstreams;
use crate::store::DEFAULT_TENANT;

#[derive(Debug, Subcommand)]
pub(super) enum CapabilityCommand {
    /// Every capability (config file and store) with its kind, secret and description.
    List {
        /// Print JSON, with each capability's argument schema.
        #[arg(long)]
        json: bool,
    },
    /// Add the capabilities FILE defines (`[capabilities.NAME]` tables, as in the config
    /// file), replacing stored ones of the same name; running brokers serve them within a
    /// second.
    Add {
        /// TOML file.
        file: PathBuf,
    },
    /// Remove a capability added with `capability add`.
    Rm {
        /// Its name.
        name: String,
    },
    /// Run a capability now, as the operator (no token, policy or approval; audited), and
    /// print its answer.
    Test {
        /// Its name.
        name: String,
        /// The arguments, a JSON object.
        #[arg(long, default_value = "{}")]
        args: String,
    },
}

/// A file of capability definitions.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct CapabilityFile {
    capabilities: BTreeMap<String, CapabilitySpec>,
}

/// One row of `capability list`.
#[derive(Debug, Serialize)]
struct CapabilityRow<'a> {
    name: &'a str,
    kind: &'static str,
    description: &'a str,
    secret: &'a str,
    /// `config` or `store`.
    source: &'static str,
    require_approval: bool,
    input_schema: &'a Value,
}

impl<'a> CapabilityRow<'a> {
    fn new(c: &'a Capability) -> Self {
        let common = c.spec.common();
        CapabilityRow {
            name: &c.name,
            kind: c.spec.kind(),
            description: common.description,
            secret: common.secret,
            source: if c.from_config { "config" } else { "store" },
            require_approval: common.require_approval,
            input_schema: &c.schema,
        }
    }
}

pub(super) async fn run(ctx: Context, cmd: CapabilityCommand) -> anyhow::Result<()> {
    let providers = ctx.providers()?;
    let catalog = Catalog::new(&ctx.settings.capabilities, providers, ctx.store.clone())?;
    match cmd {
        CapabilityCommand::List { json } => list(&catalog, json).await,
        CapabilityCommand::Add { file } => add(&ctx, &catalog, &file).await,
        CapabilityCommand::Rm { name } => {
            if catalog.is_configured(&name) {
                bail!("capability `{name}` is defined in the config file; remove it there");
            }
            if !ctx.store.delete_capability(DEFAULT_TENANT, &name).await? {
                bail!("no stored capability named `{name}`");
            }
            eprintln!("removed capability `{name}`");
            Ok(())
        }
        CapabilityCommand::Test { name, args } => test(ctx, &catalog, &name, &args).await,
    }
}

async fn list(catalog: &Catalog, json: bool) -> anyhow::Result<()> {
    let all = catalog.all().await?;
    let rows: Vec<CapabilityRow> = all.iter().map(|c| CapabilityRow::new(c)).collect();
    if json {
        return print_json(&rows);
    }
    let table: Vec<Vec<String>> = rows
        .iter()
        .map(|r| {
            vec![
                r.name.to_owned(),
                r.kind.to_owned(),
                r.secret.to_owned(),
                r.source.to_owned(),
                if r.require_approval { "yes" } else { "no" }.to_owned(),
                r.description.to_owned(),
            ]
        })
        .collect();
    print_table(
        &[
            "NAME",
            "KIND",
            "SECRET",
            "SOURCE",
            "APPROVAL",
            "DESCRIPTION",
        ],
        &table,
    );
    Ok(())
}

async fn add(ctx: &Context, catalog: &Catalog, file: &std::path::Path) -> anyhow::Result<()> {
    let text =
        std::fs::read_to_string(file).with_context(|| format!("reading {}", file.display()))?;
    let parsed: CapabilityFile =
        toml::from_str(&text).map_err(|e| anyhow::anyhow!("{}: {e}", file.display()))?;
    if parsed.capabilities.is_empty() {
        bail!("{} defines no [capabilities.NAME]", file.display());
    }
    // Check them all before storing any.
    let mut checked = Vec::new();
    for (name, spec) in parsed.capabilities {
        if catalog.is_configured(&name) {
            bail!("capability `{name}` is defined in the config file, which would hide it");
        }
        let capability = catalog.check(&name, spec)?;
        let common = capability.spec.common();
        let wanted = capability.spec.secret_provider();
        match ctx
            .store
            .secret_by_name(DEFAULT_TENANT, common.secret)
            .await?
        {
            Some(secret) if secret.provider != wanted => bail!(
                "capability `{name}`: secret `{}` is stored for `{}`, but a {} capability needs a `{wanted}` secret",
                common.secret,
                secret.provider,
                capability.spec.kind()
            ),
            Some(_) => {}
            None => eprintln!(
                "note: secret `{}` does not exist yet; store it with `seks secret add {} --provider {wanted}`",
                common.secret, common.secret
            ),
        }
        checked.push(capability);
    }
    for c in checked {
        let replaced = ctx
            .store
            .put_capability(
                DEFAULT_TENANT,
                &c.name,
                &serde_json::to_string(&c.spec)?,
                clock::now(),
            )
            .await?;
        eprintln!(
            "{} capability `{}`; grant it in a token's policy with `capabilities = [\"{}\"]` (or `--capability {}`)",
            if replaced { "replaced" } else { "added" },
            c.name,
            c.name,
            c.name
        );
    }
    Ok(())
}

/// Run a capability as the operator and audit it like an agent's call.
async fn test(ctx: Context, catalog: &Catalog, name: &str, args: &str) -> anyhow::Result<()> {
    let args: Value = serde_json::from_str(args).context("--args must be a JSON object")?;
    let Some(capability) = catalog.get(name).await? else {
        bail!("no capability named `{name}` (see `seks capability list`)");
    };
    let validated = capability.validate(&args)?;
    let vault = Arc::new(ctx.unlock_vault().await?);
    let keyring = Arc::new(Keyring::new(
        ctx.store.clone(),
        vault.clone(),
        ctx.redactor.clone(),
    ));
    keyring.sync().await.context("reading the store")?;
    let runner = ctx.runner(
        keyring,
        ctx.providers()?,
        Upstreams::new(&ctx.settings.upstream)?,
    )?;
    let (auditor, writer) = Auditor::new(
        ctx.store.clone(),
        vault.audit_key(),
        ctx.redactor.clone(),
        &ctx.settings.audit,
    );
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let writing = tokio::spawn(audit::run_writer(writer, stopped));
    let started = Instant::now();
    let result = runner.run(DEFAULT_TENANT, &capability, validated).await;
    let mut record = AuditRecord {
        at_ms: clock::now_ms(),
        request_id: crate::audit::new_request_id(),
        tenant: DEFAULT_TENANT.to_owned(),
        agent: Some("operator (seks capability test)".to_owned()),
        secret: Some(capability.spec.common().secret.to_owned()),
        provider: capability.spec.provider().map(str::to_owned),
        method: "TEST".to_owned(),
        path: format!("{CALL_PATH}/{name}"),
        capability: Some(name.to_owned()),
        arguments: Some(summarise(&args)),
        status: 200,
        decision: Decision::Allowed,
        total_us: u64::try_from(started.elapsed().as_micros()).unwrap_or(u64::MAX),
        client: "cli".to_owned(),
        ..AuditRecord::default()
    };
    if let Err(e) = &result {
        record.status = e.status().as_u16();
        record.decision = e.decision();
        record.error = Some(e.code().to_owned());
        record.reason = Some(e.to_string());
    }
    let written = auditor.submit_durable(record, None).await;
    let _ = stop.send(true);
    let _ = writing.await;
    written.context("the audit log could not be written")?;
    match result {
        Ok(answer) => print_json(&answer),
        Err(e) => {
            // A backend's words can quote anything, even a secret: masked like a log line.
            let shown = ctx.redactor.redact_text(e.to_string().as_bytes());
            bail!(
                "capability `{name}` failed ({}): {}",
                e.code(),
                String::from_utf8_lossy(&shown)
            )
        }
    }
}
