//! `seks secret …`: provider credentials. Values come from stdin or a no-echo prompt, never argv.

use std::io::{IsTerminal, Read};

use anyhow::{Context as _, bail};
use clap::Subcommand;
use secrecy::{ExposeSecret, SecretString};
use serde::Serialize;
use zeroize::Zeroizing;

use super::Context;
use super::output::{print_json, print_table, when, when_json};
use crate::providers::Provider;
use crate::scrub::MIN_SECRET_LEN;
use crate::store::{DEFAULT_TENANT, NewSecret, StoreError};
use crate::vault::SecretIdentity;
use crate::{clock, tokens};

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

pub(super) async fn run(ctx: Context, cmd: SecretCommand) -> anyhow::Result<()> {
    match cmd {
        SecretCommand::Add { name, provider } => add(&ctx, &name, &provider).await,
        SecretCommand::List { json } => list(&ctx, json).await,
        SecretCommand::Rotate { name } => rotate(&ctx, &name).await,
        SecretCommand::Rm { name } => remove(&ctx, &name).await,
    }
}

async fn add(ctx: &Context, name: &str, provider_name: &str) -> anyhow::Result<()> {
    check_name(name)?;
    let providers = ctx.providers()?;
    let Some(provider) = providers.get(provider_name) else {
        bail!(
            "unknown provider `{provider_name}`; known providers: {}",
            providers.names().join(", ")
        );
    };
    if ctx
        .store
        .secret_by_name(DEFAULT_TENANT, name)
        .await?
        .is_some()
    {
        bail!(
            "secret `{name}` already exists; use `seks secret rotate {name}` to change its value"
        );
    }
    let vault = ctx.unlock_vault().await?;
    let value = read_value(&format!("Value for secret `{name}` ({provider_name}): "))?;
    check_value(provider, &value)?;
    let id = format!("sec_{}", tokens::random_base62(16));
    let identity = SecretIdentity {
        tenant: DEFAULT_TENANT,
        secret_id: &id,
        version: 1,
        provider: provider_name,
    };
    let secret = NewSecret {
        sealed: vault.seal(identity, &value)?,
        id,
        tenant: DEFAULT_TENANT.to_owned(),
        name: name.to_owned(),
        provider: provider_name.to_owned(),
        created_at: clock::now(),
    };
    match ctx.store.insert_secret(&secret).await {
        Err(StoreError::Conflict(_)) => bail!("secret `{name}` already exists"),
        other => other?,
    }
    eprintln!(
        "stored secret `{name}` for {provider_name}. Mint an agent token with:\n  seks {}token create --secret {name} --agent <agent-name>",
        ctx.data_dir_flag()
    );
    Ok(())
}

#[derive(Serialize)]
struct SecretRow<'a> {
    id: &'a str,
    name: &'a str,
    provider: &'a str,
    version: i64,
    tokens: i64,
    created_at: Option<String>,
    rotated_at: Option<String>,
}

async fn list(ctx: &Context, json: bool) -> anyhow::Result<()> {
    let secrets = ctx.store.list_secrets(DEFAULT_TENANT).await?;
    if json {
        let rows: Vec<SecretRow<'_>> = secrets
            .iter()
            .map(|s| SecretRow {
                id: &s.id,
                name: &s.name,
                provider: &s.provider,
                version: s.version,
                tokens: s.tokens,
                created_at: when_json(Some(s.created_at)),
                rotated_at: when_json(s.rotated_at),
            })
            .collect();
        return print_json(&rows);
    }
    let rows: Vec<Vec<String>> = secrets
        .iter()
        .map(|s| {
            vec![
                s.name.clone(),
                s.provider.clone(),
                s.version.to_string(),
                s.tokens.to_string(),
                when(Some(s.created_at)),
                when(s.rotated_at),
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

async fn rotate(ctx: &Context, name: &str) -> anyhow::Result<()> {
    let secret = ctx
        .store
        .secret_by_name(DEFAULT_TENANT, name)
        .await?
        .with_context(|| format!("no secret named `{name}`"))?;
    let providers = ctx.providers()?;
    let vault = ctx.unlock_vault().await?;
    let value = read_value(&format!(
        "New value for secret `{name}` ({}): ",
        secret.provider
    ))?;
    if let Some(provider) = providers.get(&secret.provider) {
        check_value(provider, &value)?;
    }
    let version = secret.version + 1;
    let identity = SecretIdentity {
        tenant: &secret.tenant,
        secret_id: &secret.id,
        version,
        provider: &secret.provider,
    };
    let sealed = vault.seal(identity, &value)?;
    ctx.store
        .rotate_secret(&secret.tenant, &secret.id, version, &sealed, clock::now())
        .await
        .context("the secret changed while rotating; try again")?;
    eprintln!(
        "rotated secret `{name}` to version {version}; its tokens use the new value within a second"
    );
    Ok(())
}

async fn remove(ctx: &Context, name: &str) -> anyhow::Result<()> {
    let secret = ctx
        .store
        .secret_by_name(DEFAULT_TENANT, name)
        .await?
        .with_context(|| format!("no secret named `{name}`"))?;
    let tokens = ctx.store.delete_secret(&secret.tenant, &secret.id).await?;
    eprintln!("removed secret `{name}` and its {tokens} token(s)");
    Ok(())
}

/// A value must be injectable the provider's way and long enough to scrub reliably.
fn check_value(provider: &Provider, value: &SecretString) -> anyhow::Result<()> {
    let value = value.expose_secret();
    if value.len() < MIN_SECRET_LEN {
        bail!(
            "refusing to store this value: shorter than {MIN_SECRET_LEN} characters, it could not be scrubbed reliably"
        );
    }
    provider
        .auth
        .accepts(value)
        .map_err(|why| anyhow::anyhow!("refusing to store this value: {why}"))
}

fn check_name(name: &str) -> anyhow::Result<()> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'));
    if !ok {
        bail!("secret names are 1-64 characters of letters, digits, `-`, `_` and `.`");
    }
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
