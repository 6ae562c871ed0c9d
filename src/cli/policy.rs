//! `seks policy …`: named policies shared by many tokens, and offline checking of policy files.

use std::path::PathBuf;

use anyhow::{Context as _, anyhow, bail};
use clap::Subcommand;

use super::Context;
use super::output::{print_json, print_table, when};
use super::token::read_policy_file;
use crate::clock;
use crate::policy::PolicySpec;
use crate::store::{DEFAULT_TENANT, StoreError};

#[derive(Debug, Subcommand)]
pub(super) enum PolicyCommand {
    /// Check a policy file without touching any store: prints it back, or the line and the
    /// reason it is rejected.
    Check {
        /// The TOML file.
        file: PathBuf,
    },
    /// Create or replace a named policy; tokens that follow it change within a second.
    Set {
        /// The policy's name.
        name: String,
        /// The TOML file.
        file: PathBuf,
    },
    /// Show a named policy as TOML.
    Show {
        /// The policy's name.
        name: String,
    },
    /// List named policies.
    List {
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Remove a named policy no active token follows.
    Rm {
        /// The policy's name.
        name: String,
    },
}

/// `policy check` needs no store, so it runs before one is opened.
pub(super) fn check(file: &std::path::Path) -> anyhow::Result<()> {
    let spec = read_policy_file(file)?;
    print!("{}", toml::to_string_pretty(&spec)?);
    eprintln!("{}: ok", file.display());
    Ok(())
}

pub(super) async fn run(ctx: Context, cmd: PolicyCommand) -> anyhow::Result<()> {
    match cmd {
        PolicyCommand::Check { file } => check(&file),
        PolicyCommand::Set { name, file } => {
            if name.is_empty()
                || name.len() > 64
                || !name
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
            {
                bail!("policy names are 1-64 characters of letters, digits, `-`, `_` and `.`");
            }
            let spec = read_policy_file(&file)?;
            spec.check_shareable()
                .map_err(|e| anyhow!("{}: {e}", file.display()))?;
            ctx.store
                .put_policy(
                    DEFAULT_TENANT,
                    &name,
                    &serde_json::to_string(&spec)?,
                    clock::now(),
                )
                .await?;
            eprintln!("stored policy `{name}`; tokens that follow it change within a second");
            Ok(())
        }
        PolicyCommand::Show { name } => {
            let record = ctx
                .store
                .policy(DEFAULT_TENANT, &name)
                .await?
                .with_context(|| format!("no policy named `{name}`"))?;
            let spec: PolicySpec = serde_json::from_str(&record.spec)?;
            print!("{}", toml::to_string_pretty(&spec)?);
            Ok(())
        }
        PolicyCommand::List { json } => {
            let policies = ctx.store.list_policies(DEFAULT_TENANT).await?;
            if json {
                let rows: Vec<serde_json::Value> = policies
                    .iter()
                    .map(|p| {
                        serde_json::json!({
                            "name": p.name,
                            "policy": serde_json::from_str::<serde_json::Value>(&p.spec).unwrap_or_default(),
                            "created_at": clock::format(p.created_at),
                            "updated_at": clock::format(p.updated_at),
                        })
                    })
                    .collect();
                return print_json(&rows);
            }
            let rows: Vec<Vec<String>> = policies
                .iter()
                .map(|p| {
                    vec![
                        p.name.clone(),
                        when(Some(p.created_at)),
                        when(Some(p.updated_at)),
                    ]
                })
                .collect();
            print_table(&["NAME", "CREATED", "UPDATED"], &rows);
            Ok(())
        }
        PolicyCommand::Rm { name } => match ctx.store.delete_policy(DEFAULT_TENANT, &name).await {
            Ok(true) => {
                eprintln!("removed policy `{name}`");
                Ok(())
            }
            Ok(false) => bail!("no policy named `{name}`"),
            Err(StoreError::InUse(why)) => bail!("{why}"),
            Err(e) => Err(e.into()),
        },
    }
}
