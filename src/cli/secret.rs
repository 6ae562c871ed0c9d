//! `seks secret …`: provider credentials. Values come from stdin or a no-echo prompt, never argv.

use std::io::{IsTerminal, Read};

use anyhow::{Context as _, bail};
use clap::Subcommand;
use secrecy::SecretString;
use zeroize::Zeroizing;

use super::backend::Backend;
use super::output::{dash, print_json, print_table};
use crate::capabilities::{SMTP_SECRETS, SQL_SECRETS};
use crate::ops::check_secret_name;

#[derive(Debug, Subcommand)]
pub(super) enum SecretCommand {
    /// Store a credential; the value is read from stdin (or a no-echo prompt on a terminal).
    Add {
        /// Name to refer to the secret by.
        name: String,
        /// Provider the credential is for (see `seks serve` output or the README).
        #[arg(long)]
        provider: String,
    },
    /// List stored secrets (names, providers, dates; never values).
    List {
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Replace a secret's value (from stdin); its tokens keep working with the new value.
    Rotate {
        /// The secret's name.
        name: String,
    },
    /// Remove a secret and every token that uses it.
    Rm {
        /// The secret's name.
        name: String,
    },
}

pub(super) async fn run(backend: &Backend, cmd: SecretCommand) -> anyhow::Result<()> {
    match cmd {
        SecretCommand::Add { name, provider } => {
            // Refuse a bad name before anyone types a key.
            check_secret_name(&name)?;
            let form = match provider.as_str() {
                SMTP_SECRETS => ", smtp[s]://USER:PASSWORD@HOST[:PORT]",
                SQL_SECRETS => {
                    ", a postgres://, mysql:// (requiring TLS unless local) or sqlite: connection string"
                }
                _ => "",
            };
            let value = read_value(&format!("Value for secret `{name}` ({provider}{form}): "))?;
            backend.add_secret(&name, &provider, &value).await?;
            eprintln!(
                "stored secret `{name}` for {provider}. Mint an agent token with:\n  seks {}token create --secret {name} --agent <agent-name>",
                backend.data_dir_flag()
            );
            Ok(())
        }
        SecretCommand::List { json } => list(backend, json).await,
        SecretCommand::Rotate { name } => {
            let value = read_value(&format!("New value for secret `{name}`: "))?;
            let rotated = backend.rotate_secret(&name, &value).await?;
            eprintln!(
                "rotated secret `{name}` to version {}; its tokens use the new value within a second",
                rotated.version
            );
            Ok(())
        }
        SecretCommand::Rm { name } => {
            let removed = backend.remove_secret(&name).await?;
            eprintln!(
                "removed secret `{name}` and its {} token(s)",
                removed.tokens_removed
            );
            Ok(())
        }
    }
}

async fn list(backend: &Backend, json: bool) -> anyhow::Result<()> {
    let secrets = backend.list_secrets().await?;
    if json {
        return print_json(&secrets);
    }
    let rows: Vec<Vec<String>> = secrets
        .iter()
        .map(|s| {
            vec![
                s.name.clone(),
                s.provider.clone(),
                s.version.to_string(),
                s.tokens.to_string(),
                dash(s.created_at.as_deref()),
                dash(s.rotated_at.as_deref()),
            ]
        })
        .collect();
    print_table(
        &[
            "NAME", "PROVIDER", "VERSION", "TOKENS", "CREATED", "ROTATED",
        ],
        &rows,
    );
    Ok(())
}

/// Read a secret value: a no-echo prompt on a terminal, else all of stdin minus one trailing newline.
fn read_value(prompt: &str) -> anyhow::Result<SecretString> {
    let mut text = Zeroizing::new(String::new());
    if std::io::stdin().is_terminal() {
        *text =
            rpassword::prompt_password(prompt).context("reading the secret from the terminal")?;
    } else {
        std::io::stdin()
            .read_to_string(&mut text)
            .context("reading the secret from stdin")?;
        if text.ends_with('\n') {
            text.pop();
            if text.ends_with('\r') {
                text.pop();
            }
        }
    }
    if text.is_empty() {
        bail!("no secret value given on stdin");
    }
    Ok(SecretString::from(text.as_str()))
}
