//! `--remote URL`: the admin API of a running broker as the CLI's backend, over the same
//! rustls client the broker uses for upstreams. The admin token comes from the environment
//! (`SEKS_ADMIN_TOKEN`), never from argv.

use std::time::Duration;

use anyhow::{Context as _, bail};
use axum::body::Body;
use http::{Method, Request, header};
use http_body_util::BodyExt;
use percent_encoding::{AsciiSet, NON_ALPHANUMERIC, utf8_percent_encode};
use secrecy::{ExposeSecret, SecretString};
use serde::de::DeserializeOwned;

use crate::config::Settings;
use crate::providers::is_loopback;
use crate::proxy::{UpstreamClient, Upstreams};
use crate::store::redacted;

/// Environment variable holding the admin token for `--remote`.
pub const ADMIN_TOKEN_ENV: &str = "SEKS_ADMIN_TOKEN";
/// Longest wait for the admin API's answer.
const TIMEOUT: Duration = Duration::from_secs(30);
/// Characters left as they are in a path segment or query value.
const SEGMENT: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'_')
    .remove(b'.')
    .remove(b'~');

/// A URL-safe path segment or query value.
pub fn encode(text: &str) -> String {
    utf8_percent_encode(text, SEGMENT).to_string()
}

/// A client of one broker's admin API.
pub struct Remote {
    base: String,
    token: SecretString,
    client: UpstreamClient,
}

impl Remote {
    /// A client of the admin API at `url`, with the token from [`ADMIN_TOKEN_ENV`].
    pub fn new(url: &str, settings: &Settings) -> anyhow::Result<Remote> {
        // The URL may carry a password (`https://admin:…@host`): messages show it masked.
        let shown = redacted(url);
        let uri: http::Uri = url
            .parse()
            .with_context(|| format!("--remote `{shown}` is not a URL"))?;
        if !matches!(uri.scheme_str(), Some("http" | "https")) || uri.authority().is_none() {
            bail!("--remote `{shown}` must be an http(s) URL such as http://127.0.0.1:8081");
        }
        // Secret values and the admin token travel in these requests.
        if uri.scheme() == Some(&http::uri::Scheme::HTTP) && !uri.host().is_some_and(is_loopback) {
            bail!(
                "--remote `{shown}` would send secrets and the admin token in clear text: plain \
                 http is only for a loopback address (127.0.0.1, [::1]); use https:// (TLS in \
                 front of the admin API) or an SSH tunnel to 127.0.0.1"
            );
        }
        let token = std::env::var(ADMIN_TOKEN_ENV)
            .ok()
            .filter(|t| !t.is_empty())
            .map(SecretString::from)
            .with_context(|| {
                format!("--remote needs the admin token in {ADMIN_TOKEN_ENV} (see `seks admin token create`)")
            })?;
        let client = Upstreams::new(&settings.upstream)?.client(false).clone();
        Ok(Remote {
            base: url.trim_end_matches('/').to_owned(),
            token,
            client,
        })
    }

    /// Call `method path` with an optional JSON body; the answer's JSON, or the API's error.
    pub async fn call<T: DeserializeOwned>(
        &self,
        method: Method,
        path: &str,
        body: Option<Vec<u8>>,
    ) -> anyhow::Result<T> {
        self.call_waiting(method, path, body, TIMEOUT).await
    }

    /// Like [`Remote::call`], waiting up to `wait` for the answer (a capability's trial run
    /// lasts as long as the capability's own timeout allows).
    pub async fn call_waiting<T: DeserializeOwned>(
        &self,
        method: Method,
        path: &str,
        body: Option<Vec<u8>>,
        wait: Duration,
    ) -> anyhow::Result<T> {
        let bytes = self.send(method, path, body, wait).await?;
        serde_json::from_slice(&bytes).context("the admin API's answer is not the expected JSON")
    }

    /// Like [`Remote::call`], for answers without content.
    pub async fn call_empty(&self, method: Method, path: &str) -> anyhow::Result<()> {
        self.send(method, path, None, TIMEOUT).await.map(drop)
    }

    async fn send(
        &self,
        method: Method,
        path: &str,
        body: Option<Vec<u8>>,
        wait: Duration,
    ) -> anyhow::Result<bytes::Bytes> {
        let url = format!("{}{path}", self.base);
        let shown = redacted(&url);
        let mut request = Request::builder().method(method).uri(&url).header(
            header::AUTHORIZATION,
            format!("Bearer {}", self.token.expose_secret()),
        );
        if body.is_some() {
            request = request.header(header::CONTENT_TYPE, "application/json");
        }
        let request = request
            .body(body.map_or_else(Body::empty, Body::from))
            .context("building the admin API request")?;
        let response = tokio::time::timeout(wait, self.client.request(request))
            .await
            .with_context(|| format!("{shown}: no answer within {wait:?}"))?
            .with_context(|| format!("{shown}: cannot reach the admin API"))?;
        let status = response.status();
        let bytes = tokio::time::timeout(wait, response.into_body().collect())
            .await
            .with_context(|| format!("{shown}: the answer did not finish within {wait:?}"))?
            .with_context(|| format!("{shown}: reading the answer"))?
            .to_bytes();
        if status.is_success() {
            return Ok(bytes);
        }
        let message = serde_json::from_slice::<serde_json::Value>(&bytes)
            .ok()
            .and_then(|v| v["error"]["message"].as_str().map(str::to_owned))
            .unwrap_or_else(|| String::from_utf8_lossy(&bytes).into_owned());
        bail!("{message} (admin API: {status})")
    }
}
