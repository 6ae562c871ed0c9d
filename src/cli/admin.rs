//! `seks admin …`: the admin API's token. Only on the local store: whoever holds the
//! database decides who may operate the broker.

use clap::Subcommand;
use secrecy::ExposeSecret;

use super::Context;
use super::output::outln;
use crate::store::META_ADMIN_TOKEN;
use crate::tokens::{self, TokenHash, hex};

#[derive(Debug, Subcommand)]
pub(super) enum AdminCommand {
    /// The admin API token (`seks admin token` alone is `seks admin token create`).
    Token {
        #[command(subcommand)]
        action: Option<TokenAction>,
    },
}

#[derive(Debug, Subcommand)]
pub(super) enum TokenAction {
    /// Mint the admin API token (replacing any previous one); prints it, and only it, once.
    Create,
    /// Revoke the admin API token: the admin API refuses every request until a new one is minted.
    Revoke,
}

pub(super) async fn run(ctx: Context, cmd: AdminCommand) -> anyhow::Result<()> {
    let AdminCommand::Token { action } = cmd;
    match action.unwrap_or(TokenAction::Create) {
        TokenAction::Create => {
            let token = tokens::generate("admin");
            ctx.store
                .set_meta(
                    META_ADMIN_TOKEN,
                    &hex(&TokenHash::of(token.expose_secret()).0),
                )
                .await?;
            outln!("{}", token.expose_secret());
            eprintln!(
                "minted the admin API token (any previous one stops working); send it as Authorization: Bearer <token>, or set SEKS_ADMIN_TOKEN for --remote"
            );
        }
        TokenAction::Revoke => {
            // An empty hash matches no token: the admin API refuses everyone.
            ctx.store.set_meta(META_ADMIN_TOKEN, "").await?;
            eprintln!("revoked the admin API token; running brokers refuse it at once");
        }
    }
    Ok(())
}
