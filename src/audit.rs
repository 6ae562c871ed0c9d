//! The audit hook: one structured record per request that reaches the agent listener.
//!
//! Records go to the log (target `seks::audit`) for now; a durable, hash-chained writer
//! replaces the sink without changing what the proxy reports.

use std::net::SocketAddr;
use std::time::Duration;

/// What happened to one agent request. Never holds a credential or a full token.
#[derive(Debug)]
pub struct RequestRecord<'a> {
    /// Client address.
    pub client: SocketAddr,
    /// HTTP method.
    pub method: &'a str,
    /// Provider name, if the route named a known one.
    pub provider: Option<&'a str>,
    /// Path below `/api/<provider>`, without the query string.
    pub path: &'a str,
    /// Token row id, once the token was recognised.
    pub token_id: Option<&'a str>,
    /// Agent name, once the token was recognised.
    pub agent: Option<&'a str>,
    /// Response status returned to the agent.
    pub status: u16,
    /// SEKS error code when the broker itself refused or failed the request.
    pub error: Option<&'static str>,
    /// Time until the response headers were ready.
    pub elapsed: Duration,
}

/// Record one request.
pub fn record(r: &RequestRecord<'_>) {
    tracing::info!(
        target: "seks::audit",
        client = %r.client,
        method = r.method,
        provider = r.provider.unwrap_or("-"),
        path = r.path,
        token_id = r.token_id.unwrap_or("-"),
        agent = r.agent.unwrap_or("-"),
        status = r.status,
        error = r.error.unwrap_or("-"),
        elapsed_us = u64::try_from(r.elapsed.as_micros()).unwrap_or(u64::MAX),
        "request"
    );
}
