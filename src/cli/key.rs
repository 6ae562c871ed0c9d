//! `seks key …`: the master key.

use std::path::{Path, PathBuf};

use anyhow::{Context as _, bail};
use clap::{Args, Subcommand};

use super::output::{outln, print_json};
use super::{Context, key_from_env};
use crate::ops::master_key::{self, Rotation};
use crate::vault::master_key::{
    MASTER_KEY_ENV, NEW_MASTER_KEY_ENV, load, pending_file, sync_parent,
};
use crate::vault::{Key, KeySource};

#[derive(Debug, Subcommand)]
pub(super) enum KeyCommand {
    /// Move the store to a new master key: every secret's data key is wrapped again under
    /// it and the audit log's heads are signed again, in one transaction; values and agents'
    /// tokens stay as they are. Stop every broker first, start them with the new key after.
    Rotate(RotateArgs),
}

#[derive(Debug, Args)]
pub(super) struct RotateArgs {
    /// Take the new key from FILE (base64 of 32 bytes, mode 0600), generated there if it
    /// doesn't exist. Default: `SEKS_NEW_MASTER_KEY` if set; else, when the current key is
    /// the key file, a new key that then replaces the key file.
    #[arg(long, value_name = "FILE")]
    new_key_file: Option<PathBuf>,
    /// Print what was moved as JSON.
    #[arg(long)]
    json: bool,
}

/// Where the new key came from, and what to do with it once the store uses it.
enum NewKey {
    /// Given by the operator (variable or file): they put it in place.
    Given(String),
    /// Generated beside the key file, which it replaces.
    ReplacesKeyFile { pending: PathBuf, key_file: PathBuf },
}

pub(super) async fn run(ctx: Context, cmd: KeyCommand) -> anyhow::Result<()> {
    let KeyCommand::Rotate(args) = cmd;
    let (old, source) = ctx.unlock_vault_from().await?;
    let (new_key, new_key_at) = new_key(args.new_key_file.as_deref(), &source)?;
    let (_, rotation) = master_key::rotate(ctx.store.as_ref(), &old, new_key)
        .await
        .context("rotating the master key; the store was left as it was")?;
    if let NewKey::ReplacesKeyFile { pending, key_file } = &new_key_at {
        std::fs::rename(pending, key_file).with_context(|| {
            format!(
                "the store now opens only with the new key in {}, which could not replace {}: move it there",
                pending.display(),
                key_file.display()
            )
        })?;
        sync_parent(key_file).with_context(|| {
            format!(
                "the new key replaced {}, but the directory could not be synced to disk",
                key_file.display()
            )
        })?;
    }
    if args.json {
        return print_json(&rotation);
    }
    print_rotation(&rotation, &new_key_at);
    Ok(())
}

/// The new key as `RotateArgs` say, given that the current one came from `current`.
fn new_key(file: Option<&Path>, current: &KeySource) -> anyhow::Result<(Key, NewKey)> {
    let env = key_from_env(NEW_MASTER_KEY_ENV);
    match (env, file, current) {
        (Some(_), Some(_), _) => {
            bail!("give the new key in {NEW_MASTER_KEY_ENV} or --new-key-file, not both")
        }
        (Some(env), None, _) => {
            let (key, _) = load(Some(env), Path::new(""), false)?;
            Ok((key, NewKey::Given(NEW_MASTER_KEY_ENV.to_owned())))
        }
        (None, Some(file), _) => {
            let (key, _) = load(None, file, true)?;
            Ok((key, NewKey::Given(file.display().to_string())))
        }
        (None, None, KeySource::File(key_file) | KeySource::Generated(key_file)) => {
            let pending = pending_file(key_file);
            let (key, _) = load(None, &pending, true)?;
            let key_file = key_file.clone();
            Ok((key, NewKey::ReplacesKeyFile { pending, key_file }))
        }
        (None, None, KeySource::Environment) => bail!(
            "the master key comes from {MASTER_KEY_ENV}: give the new one in {NEW_MASTER_KEY_ENV} \
             or --new-key-file FILE (a new key is generated there if FILE doesn't exist)"
        ),
    }
}

fn print_rotation(rotation: &Rotation, new_key_at: &NewKey) {
    let ca = if rotation.forward_ca {
        ", and the forward proxy's CA"
    } else {
        ""
    };
    outln!(
        "Rotated the master key to version {}: {} secret(s) and {} audit head(s) moved{ca}.",
        rotation.key_version,
        rotation.secrets,
        rotation.audit_heads
    );
    match new_key_at {
        NewKey::Given(from) => outln!(
            "The store now opens only with the new key ({from}): give it to every broker and \
             command in {MASTER_KEY_ENV} or as the key file."
        ),
        NewKey::ReplacesKeyFile { key_file, .. } => outln!(
            "The new key replaced {}; back it up, the old one no longer opens the store.",
            key_file.display()
        ),
    }
    outln!("Restart every broker with the new key: brokers still on the old one refuse requests.");
}
