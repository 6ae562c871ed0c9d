//! `seks policy …`: named policies shared by many tokens, and offline checking of policy files.

use std::path::PathBuf;

use anyhow::Context as _;
use clap::Subcommand;

use super::backend::Backend;
use super::output::{dash, out, print_json, print_table};
use super::token::read_policy_file;

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
    out!("{}", toml::to_string_pretty(&spec)?);
    eprintln!("{}: ok", file.display());
    Ok(())
}

pub(super) async fn run(backend: &Backend, cmd: PolicyCommand) -> anyhow::Result<()> {
    match cmd {
        PolicyCommand::Check { file } => check(&file),
        PolicyCommand::Set { name, file } => {
            let spec = read_policy_file(&file)?;
            backend
                .set_policy(&name, &spec)
                .await
                .with_context(|| format!("{}", file.display()))?;
            eprintln!("stored policy `{name}`; tokens that follow it change within a second");
            Ok(())
        }
        PolicyCommand::Show { name } => {
            let view = backend.show_policy(&name).await?;
            out!("{}", toml::to_string_pretty(&view.policy)?);
            Ok(())
        }
        PolicyCommand::List { json } => {
            let policies = backend.list_policies().await?;
            if json {
                return print_json(&policies);
            }
            let rows: Vec<Vec<String>> = policies
                .iter()
                .map(|p| {
                    vec![
                        p.name.clone(),
                        dash(p.created_at.as_deref()),
                        dash(p.updated_at.as_deref()),
                    ]
                })
                .collect();
            print_table(&["NAME", "CREATED", "UPDATED"], &rows);
            Ok(())
        }
        PolicyCommand::Rm { name } => {
            backend.remove_policy(&name).await?;
            eprintln!("removed policy `{name}`");
            Ok(())
        }
    }
}
