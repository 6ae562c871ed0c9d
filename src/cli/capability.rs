//! `seks capability …`: the capabilities agents may invoke — list them, add or remove those
//! kept in the store, and run one as the operator to try it; on this machine's store or,
//! with `--remote`, through a broker's admin API.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::Context as _;
use clap::Subcommand;
use serde_json::Value;

use super::Context;
use super::backend::Backend;
use super::output::{print_json, print_table};
use crate::audit::{self, Auditor};
use crate::capabilities::trial::Trial;
use crate::keyring::Keyring;
use crate::ops::views::NewCapabilities;
use crate::proxy::Upstreams;

#[derive(Debug, Subcommand)]
pub(super) enum CapabilityCommand {
    /// Every capability (config file and store) with its kind, secret and description.
    List {
        /// Print JSON, with each capability's argument schema.
        #[arg(long)]
        json: bool,
    },
    /// One capability as JSON, with its argument schema.
    Show {
        /// Its name.
        name: String,
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

pub(super) async fn run(backend: &Backend, cmd: CapabilityCommand) -> anyhow::Result<()> {
    match cmd {
        CapabilityCommand::List { json } => list(backend, json).await,
        CapabilityCommand::Show { name } => print_json(&backend.show_capability(&name).await?),
        CapabilityCommand::Add { file } => add(backend, &file).await,
        CapabilityCommand::Rm { name } => {
            backend.remove_capability(&name).await?;
            eprintln!("removed capability `{name}`");
            Ok(())
        }
        CapabilityCommand::Test { name, args } => {
            let args: Value =
                serde_json::from_str(&args).context("--args must be a JSON object")?;
            print_json(&backend.test_capability(&name, &args).await?)
        }
    }
}

async fn list(backend: &Backend, json: bool) -> anyhow::Result<()> {
    let rows = backend.list_capabilities().await?;
    if json {
        return print_json(&rows);
    }
    let table: Vec<Vec<String>> = rows
        .into_iter()
        .map(|r| {
            vec![
                r.name,
                r.kind,
                r.secret,
                r.source,
                if r.require_approval { "yes" } else { "no" }.to_owned(),
                r.description,
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

async fn add(backend: &Backend, file: &Path) -> anyhow::Result<()> {
    let text =
        std::fs::read_to_string(file).with_context(|| format!("reading {}", file.display()))?;
    let parsed: NewCapabilities =
        toml::from_str(&text).map_err(|e| anyhow::anyhow!("{}: {e}", file.display()))?;
    for c in backend.add_capabilities(&parsed).await? {
        if !c.secret_exists {
            eprintln!(
                "note: secret `{}` does not exist yet; store it with `seks secret add {} --provider {}`",
                c.secret, c.secret, c.secret_provider
            );
        }
        eprintln!(
            "{} capability `{}`; grant it in a token's policy with `capabilities = [\"{}\"]` (or `--capability {}`)",
            if c.replaced { "replaced" } else { "added" },
            c.name,
            c.name,
            c.name
        );
    }
    Ok(())
}

/// Run a capability as the operator on this machine: its secret from the local store, its
/// audit record into the local log.
pub(super) async fn test_here(ctx: &Context, name: &str, args: &Value) -> anyhow::Result<Value> {
    let catalog = ctx.catalog()?;
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
    let trial = Trial {
        catalog: &catalog,
        runner: &runner,
        auditor: &auditor,
        redactor: &ctx.redactor,
    };
    let result = trial.run(name, args, "cli").await;
    let _ = stop.send(true);
    let _ = writing.await;
    result.map_err(|e| anyhow::anyhow!("capability `{name}` failed ({}): {}", e.code, e.message))
}
