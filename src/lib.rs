//! SEKS — Secure Execution Key Sequestration: a credential broker for AI agents.
//!
//! Agents hold opaque `seks_` tokens; the broker holds the real credentials, encrypted at
//! rest, and injects them into requests it forwards to each provider's pinned upstream.
//!
//! Module map:
//! - [`cli`]: the `seks` command line (serve, secret, token).
//! - [`config`]: flags, environment and the TOML config file.
//! - [`server`]: the agent listener and routes.
//! - [`proxy`]: request checks, rewrite, upstream clients, streaming.
//! - [`forward`]: the forward proxy (HTTPS_PROXY mode): CONNECT, TLS interception with the
//!   broker's CA, tokens as placeholders, the egress guard.
//! - [`providers`]: the provider table, token sources, auth schemes, error shapes.
//! - [`keyring`]: token → record → credential, cached and kept in step with the store.
//! - [`policy`]: whether a token may make a request now: rules, limits, usage.
//! - [`approvals`]: holding requests until a person decides.
//! - [`capabilities`]: operator-defined actions (email, SQL, HTTP) agents invoke without the
//!   credential, over `/v1/capabilities` and MCP.
//! - [`scrub`]: masking secrets in responses, headers, logs and panics.
//! - [`vault`]: master key and envelope encryption.
//! - [`store`]: the `Store` trait and its SQLite backend.
//! - [`sigv4`]: AWS Signature Version 4, checked on agent requests and made for upstreams.
//! - [`tokens`]: token format, checksum and hashing.
//! - [`grants`]: minting tokens and deriving narrower children.
//! - [`ops`]: operator operations shared by the CLI and the admin API.
//! - [`audit`]: one record per request.
//! - [`hygiene`]: redacted logs and panics, process hardening.
//! - [`clock`]: Unix time and its display.

#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod approvals;
pub mod audit;
pub mod capabilities;
pub mod cli;
pub mod clock;
pub mod config;
pub mod forward;
pub mod grants;
pub mod hygiene;
pub mod keyring;
pub mod metrics;
pub mod ops;
pub mod policy;
pub mod providers;
pub mod proxy;
pub mod scrub;
pub mod server;
pub mod sigv4;
pub mod store;
pub mod tokens;
pub mod vault;
