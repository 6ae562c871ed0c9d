//! `/mcp`: the Model Context Protocol (streamable HTTP transport, stateless, JSON answers)
//! for agents whose runtime speaks MCP. The agent's `seks_` token authenticates every
//! request (`Authorization: Bearer`); `tools/list` shows exactly the capabilities that token
//! may invoke, and `tools/call` runs one through the same checks as
//! `POST /v1/capabilities/NAME`. Each HTTP request leaves one audit record, which names the
//! capability and its outcome for a `tools/call`.

use std::sync::Arc;

use axum::body::Body;
use axum::extract::{ConnectInfo, State};
use axum::response::Response;
use http::{HeaderMap, Request, StatusCode, header};
use http_body_util::{BodyExt, Limited};
use rmcp::model::{
    CallToolRequestParams, CallToolResponse, CallToolResult, ContentBlock, Implementation,
    ListToolsResult, PaginatedRequestParams, ServerCapabilities, ServerConfig, Tool,
};
use rmcp::service::RequestContext;
use rmcp::transport::streamable_http_server::session::never::NeverSessionManager;
use rmcp::transport::{StreamableHttpServerConfig, StreamableHttpService};
use rmcp::{ErrorData, RoleServer, ServerHandler};
use serde_json::Value;

use super::AppState;
use super::capability::{self, audited};
use super::conn::ClientAddr;
use crate::capabilities::invoke::{CallError, Capabilities};
use crate::keyring::TokenEntry;
use crate::providers::ErrorShape;
use crate::proxy::{PendingRecord, ProxyError};

/// Where the MCP server listens on the agent listener.
pub const MCP_PATH: &str = "/mcp";

/// Most of a refusal's text kept from the MCP layer (its own are one line).
const MAX_REFUSAL_TEXT: usize = 1024;

/// The MCP service, built once and shared by every request.
pub type McpService = StreamableHttpService<McpHandler, NeverSessionManager>;

/// Who made an MCP request: passed to the handler with the HTTP request.
#[derive(Clone)]
struct Caller {
    entry: Arc<TokenEntry>,
    record: Arc<PendingRecord>,
}

/// Answers MCP requests with the capabilities of the calling token.
pub struct McpHandler {
    capabilities: Arc<Capabilities>,
}

/// The MCP service over `capabilities`.
pub fn service(capabilities: Arc<Capabilities>, max_body_bytes: usize) -> McpService {
    let config = StreamableHttpServerConfig::default()
        .with_legacy_session_mode(false)
        .with_json_response(true)
        .with_max_request_body_bytes(max_body_bytes)
        // Host checks stop DNS rebinding against servers that trust whoever reaches them;
        // this one trusts only a bearer token a web page can't know, and agents reach the
        // broker under any name (container networks).
        .disable_allowed_hosts();
    StreamableHttpService::new(
        move || {
            Ok(McpHandler {
                capabilities: capabilities.clone(),
            })
        },
        Arc::new(NeverSessionManager::default()),
        config,
    )
}

/// Every request to `/mcp`: the token is checked before the MCP layer sees anything.
pub async fn handle(
    State(state): State<Arc<AppState>>,
    ConnectInfo(ClientAddr(client)): ConnectInfo<ClientAddr>,
    request: Request<Body>,
) -> Response {
    let method = request.method().clone();
    let capabilities = state.capabilities.clone();
    let mcp = state.mcp.clone();
    let limit = state.max_arguments_bytes;
    audited(
        &state,
        client,
        &method,
        MCP_PATH.to_owned(),
        |record, bytes_in| async move {
            let (mut parts, body) = request.into_parts();
            let proxy = capabilities.proxy();
            let entry = match proxy.bearer(&parts.headers).await {
                Ok(entry) => entry,
                Err(e) => return e.into_response(ErrorShape::OpenAi),
            };
            record.update(|r| r.attribute_to(&entry.record));
            // A revoked or expired token gets no tool list either.
            if let Err(e) = proxy.check_call(&entry, |_| Ok(())) {
                return e.into_response(ErrorShape::OpenAi);
            }
            // Read here rather than by the MCP layer, so that a body that stalls, breaks off
            // or is too large gets the same answer as anywhere else on the broker.
            let body = crate::proxy::CountedBody::new(body, bytes_in);
            let body = match Limited::new(body, limit).collect().await {
                Ok(collected) => collected.to_bytes(),
                Err(e) => {
                    return ProxyError::unreadable_body(e.as_ref(), limit)
                        .into_response(ErrorShape::OpenAi);
                }
            };
            let sent_json = declares_json(&parts.headers);
            parts.extensions.insert(Caller { entry, record });
            let answer = mcp
                .handle(Request::from_parts(parts, Body::from(body)))
                .await;
            json_refusal(answer.map(Body::new), sent_json).await
        },
    )
    .await
}

/// Whether the request says its body is JSON, as the MCP transport requires.
fn declares_json(headers: &HeaderMap) -> bool {
    headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .is_some_and(|essence| essence.trim().eq_ignore_ascii_case("application/json"))
}

/// The MCP layer refuses what it can't take (a wrong method, `Accept` header or content
/// type, a body that isn't JSON-RPC) in plain text; the agent gets the broker's JSON error
/// instead, marked with `x-seks-error`. A JSON body that isn't JSON-RPC is a 400, where the
/// MCP layer says 415 as if the content type were wrong.
async fn json_refusal(answer: Response, sent_json: bool) -> Response {
    let status = answer.status();
    // Only a short plain text is replaced: never a JSON-RPC answer, nor a stream.
    let plain = answer
        .headers()
        .get(header::CONTENT_TYPE)
        .is_none_or(|v| v.as_bytes().starts_with(b"text/plain"));
    if !plain || !(status.is_client_error() || status.is_server_error()) {
        return answer;
    }
    let (parts, body) = answer.into_parts();
    let text = match Limited::new(body, MAX_REFUSAL_TEXT).collect().await {
        Ok(text) => String::from_utf8_lossy(&text.to_bytes()).trim().to_owned(),
        Err(_) => String::new(),
    };
    let (status, code) = match status {
        StatusCode::UNSUPPORTED_MEDIA_TYPE if sent_json => (StatusCode::BAD_REQUEST, "bad_body"),
        StatusCode::UNSUPPORTED_MEDIA_TYPE => (status, "unsupported_media_type"),
        StatusCode::METHOD_NOT_ALLOWED => (status, "method_not_allowed"),
        StatusCode::NOT_ACCEPTABLE => (status, "not_acceptable"),
        s if s.is_server_error() => (status, "mcp_failed"),
        _ => (status, "bad_request"),
    };
    let message = if text.is_empty() {
        status.canonical_reason().unwrap_or("refused")
    } else {
        &text
    };
    let mut refusal = capability::error(status, code, message);
    if let Some(allow) = parts.headers.get(header::ALLOW) {
        refusal.headers_mut().insert(header::ALLOW, allow.clone());
    }
    refusal
}

fn caller(context: &RequestContext<RoleServer>) -> Result<Caller, ErrorData> {
    context
        .extensions
        .get::<http::request::Parts>()
        .and_then(|parts| parts.extensions.get::<Caller>())
        .cloned()
        .ok_or_else(|| ErrorData::internal_error("request without a caller", None))
}

impl ServerHandler for McpHandler {
    fn get_info(&self) -> ServerConfig {
        ServerConfig::new(ServerCapabilities::builder().enable_tools().build())
            .with_server_info(Implementation::new("seks", env!("CARGO_PKG_VERSION")))
            .with_instructions(
                "Each tool is an action the operator of this credential broker allows your \
                 token to take; it runs with credentials you never see.",
            )
    }

    async fn list_tools(
        &self,
        _request: Option<PaginatedRequestParams>,
        context: RequestContext<RoleServer>,
    ) -> Result<ListToolsResult, ErrorData> {
        let caller = caller(&context)?;
        let allowed = self
            .capabilities
            .allowed_for(&caller.entry)
            .await
            .map_err(|e| ErrorData::internal_error(self.capabilities.shown(&e), None))?;
        let tools = allowed
            .iter()
            .map(|c| {
                let schema = c.schema.as_object().cloned().unwrap_or_default();
                Tool::new(
                    c.name.clone(),
                    c.spec.common().description.to_owned(),
                    Arc::new(schema),
                )
            })
            .collect();
        Ok(ListToolsResult::with_all_items(tools))
    }

    async fn call_tool(
        &self,
        request: CallToolRequestParams,
        context: RequestContext<RoleServer>,
    ) -> Result<CallToolResponse, ErrorData> {
        let caller = caller(&context)?;
        let args = request.arguments.map(Value::Object).unwrap_or(Value::Null);
        let name = request.name.as_ref();
        match self
            .capabilities
            .call(&caller.entry, name, &args, &caller.record)
            .await
        {
            // An HTTP capability's provider refusing (4xx/5xx) is a failed call to the model.
            Ok(answer) if answer["status"].as_u64().is_some_and(|s| s >= 400) => {
                Ok(CallToolResult::structured_error(answer).into())
            }
            Ok(answer) => Ok(CallToolResult::structured(answer).into()),
            Err(e) => match e.as_seen_by_agent() {
                // This token has no such tool, whether the capability exists or not.
                CallError::Unknown(_) => Err(ErrorData::invalid_params(
                    format!("unknown tool `{name}`"),
                    None,
                )),
                e => Ok(CallToolResult::error(vec![ContentBlock::text(
                    self.capabilities.shown(&e),
                )])
                .into()),
            },
        }
    }
}
