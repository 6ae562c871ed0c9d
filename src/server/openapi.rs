//! The admin API's OpenAPI 3.1 document, served at `/openapi.json`. Each endpoint carries
//! its [`Doc`] in the same table that routes it (`admin::endpoints`), so the router and the
//! document can't disagree; the schemas of its bodies are described here.

use axum::routing::MethodFilter;
use serde_json::{Map, Value, json};

/// An HTTP method an endpoint answers.
#[derive(Debug, Clone, Copy)]
pub enum Verb {
    /// GET.
    Get,
    /// POST.
    Post,
    /// PUT.
    Put,
    /// PATCH.
    Patch,
    /// DELETE.
    Delete,
}

impl Verb {
    /// Its name as an OpenAPI path item key.
    pub fn key(self) -> &'static str {
        match self {
            Verb::Get => "get",
            Verb::Post => "post",
            Verb::Put => "put",
            Verb::Patch => "patch",
            Verb::Delete => "delete",
        }
    }

    /// The axum filter that routes it.
    pub fn filter(self) -> MethodFilter {
        match self {
            Verb::Get => MethodFilter::GET,
            Verb::Post => MethodFilter::POST,
            Verb::Put => MethodFilter::PUT,
            Verb::Patch => MethodFilter::PATCH,
            Verb::Delete => MethodFilter::DELETE,
        }
    }
}

/// A reference to a schema in `components`.
pub fn schema(name: &str) -> Value {
    json!({"$ref": format!("#/components/schemas/{name}")})
}

/// An array of a `components` schema.
pub fn array_of(name: &str) -> Value {
    json!({"type": "array", "items": schema(name)})
}

/// A path parameter.
pub fn path_param(name: &str, description: &str) -> Value {
    json!({"name": name, "in": "path", "required": true, "description": description, "schema": {"type": "string"}})
}

/// An optional query parameter.
pub fn query_param(name: &str, description: &str, schema: Value) -> Value {
    json!({"name": name, "in": "query", "required": false, "description": description, "schema": schema})
}

/// The description of one operation.
#[derive(Debug, Clone)]
pub struct Doc {
    summary: &'static str,
    tag: &'static str,
    params: Vec<Value>,
    body: Option<(Value, bool)>,
    ok: (u16, Option<Value>),
    errors: Vec<u16>,
}

impl Doc {
    /// An operation answering 200 without content until told otherwise.
    pub fn new(summary: &'static str, tag: &'static str) -> Doc {
        Doc {
            summary,
            tag,
            params: Vec::new(),
            body: None,
            ok: (200, None),
            errors: Vec::new(),
        }
    }

    /// Add a parameter.
    pub fn param(mut self, param: Value) -> Doc {
        self.params.push(param);
        self
    }

    /// A required JSON body of the named schema.
    pub fn body(mut self, name: &str) -> Doc {
        self.body = Some((schema(name), true));
        self
    }

    /// An optional JSON body of the named schema.
    pub fn optional_body(mut self, name: &str) -> Doc {
        self.body = Some((schema(name), false));
        self
    }

    /// The success status and its JSON schema.
    pub fn ok(mut self, status: u16, schema: Value) -> Doc {
        self.ok = (status, Some(schema));
        self
    }

    /// Success is 204 without content.
    pub fn no_content(mut self) -> Doc {
        self.ok = (204, None);
        self
    }

    /// Error statuses besides 401 and 503, which every operation may answer.
    pub fn errors(mut self, statuses: &[u16]) -> Doc {
        self.errors = statuses.to_vec();
        self
    }

    fn operation(&self) -> Value {
        let mut responses = Map::new();
        let success = match &self.ok.1 {
            Some(s) => {
                json!({"description": "success", "content": {"application/json": {"schema": s}}})
            }
            None => json!({"description": "success, no content"}),
        };
        responses.insert(self.ok.0.to_string(), success);
        for status in [401, 503].iter().chain(&self.errors) {
            responses.insert(
                status.to_string(),
                json!({"description": "error", "content": {"application/json": {"schema": schema("Error")}}}),
            );
        }
        let mut operation = json!({
            "summary": self.summary,
            "tags": [self.tag],
            "security": [{"adminToken": []}],
            "responses": responses,
        });
        if !self.params.is_empty() {
            operation["parameters"] = Value::Array(self.params.clone());
        }
        if let Some((body, required)) = &self.body {
            operation["requestBody"] =
                json!({"required": required, "content": {"application/json": {"schema": body}}});
        }
        operation
    }
}

fn string() -> Value {
    json!({"type": "string"})
}

fn nullable_string() -> Value {
    json!({"type": ["string", "null"]})
}

fn object(required: &[&str], properties: Value) -> Value {
    json!({"type": "object", "required": required, "properties": properties})
}

fn schemas() -> Value {
    let mut all = operator_schemas();
    if let Some(all) = all.as_object_mut() {
        for more in [capability_schemas(), audit_schemas()] {
            if let Value::Object(more) = more {
                all.extend(more);
            }
        }
    }
    all
}

/// Secrets, tokens, policies, approvals and usage.
fn operator_schemas() -> Value {
    let rules =
        json!({"type": "array", "items": {"type": "string", "description": "METHOD /path/glob"}});
    json!({
        "Error": object(&["error"], json!({
            "error": object(&["message", "code"], json!({"message": string(), "code": string()}))
        })),
        "SecretView": object(&["id", "name", "provider", "version", "tokens"], json!({
            "id": string(), "name": string(), "provider": string(),
            "version": {"type": "integer"}, "tokens": {"type": "integer"},
            "created_at": nullable_string(), "rotated_at": nullable_string()
        })),
        "NewSecretRequest": {
            "type": "object", "required": ["name", "provider", "value"], "additionalProperties": false,
            "properties": {"name": string(), "provider": string(),
                "value": {"type": "string", "description": "the credential; never echoed", "writeOnly": true}}
        },
        "RotateSecretRequest": {
            "type": "object", "required": ["value"], "additionalProperties": false,
            "properties": {"value": {"type": "string", "writeOnly": true}}
        },
        "SecretRemoved": object(&["name", "tokens_removed"], json!({
            "name": string(), "tokens_removed": {"type": "integer"}
        })),
        "PolicySpec": {
            "type": "object", "additionalProperties": false,
            "description": "the same fields as a policy file",
            "properties": {
                "allow": rules, "deny": rules, "require_approval": rules,
                "models": {"type": "array", "items": string()},
                "body": {"type": "array", "items": {"type": "object"}},
                "rpm": {"type": "integer", "minimum": 1}, "concurrency": {"type": "integer", "minimum": 1},
                "daily_requests": {"type": "integer", "minimum": 0}, "daily_tokens": {"type": "integer", "minimum": 0},
                "ttl": {"type": "string", "description": "e.g. 30m, 8h"},
                "expires_at": {"type": "string", "format": "date-time"},
                "capabilities": {"type": "array", "items": string(), "description": "capabilities the token may invoke"},
                "mint_credentials": {"type": "boolean", "description": "may call the provider's credential routes and GraphQL credential fields (granted only by a root token's policy)"}
            }
        },
        "NullablePolicy": {"oneOf": [schema("PolicySpec"), {"type": "null"}]},
        "TokenView": object(&["id", "agent", "secret", "provider", "token", "state"], json!({
            "id": string(), "agent": string(), "secret": string(), "provider": string(),
            "token": {"type": "string", "description": "a short prefix, never the token"},
            "state": {"type": "string", "enum": ["active", "revoked", "expired"]},
            "parent": nullable_string(), "policy_name": nullable_string(), "own_policy": {"type": "boolean"},
            "created_at": nullable_string(), "expires_at": nullable_string(),
            "revoked_at": nullable_string(), "last_used_at": nullable_string()
        })),
        "TokenDetail": object(&["token"], json!({
            "token": schema("TokenView"), "policy": schema("NullablePolicy"), "named_policy": schema("NullablePolicy")
        })),
        "MintedView": object(&["token", "id", "agent"], json!({
            "token": {"type": "string", "description": "shown only once"},
            "id": string(), "agent": string(), "parent_id": nullable_string(), "expires_at": nullable_string(),
            "access_key_id": string()
        })),
        "NewTokenRequest": {
            "type": "object", "required": ["secret"], "additionalProperties": false,
            "properties": {"secret": string(), "agent": string(), "policy": schema("NullablePolicy"),
                "policy_name": nullable_string()}
        },
        "DeriveTokenRequest": {
            "type": "object", "additionalProperties": false,
            "properties": {"agent": nullable_string(), "policy": schema("NullablePolicy")}
        },
        "UpdateTokenRequest": {
            "type": "object", "additionalProperties": false,
            "properties": {"policy": schema("NullablePolicy"), "policy_name": nullable_string(),
                "clear_policy_name": {"type": "boolean"}}
        },
        "Revoked": object(&["id", "revoked"], json!({"id": string(), "revoked": {"type": "integer"}})),
        "PolicyView": object(&["name", "policy"], json!({
            "name": string(), "policy": schema("PolicySpec"),
            "created_at": nullable_string(), "updated_at": nullable_string()
        })),
        "ApprovalView": object(&["id", "state", "request"], json!({
            "id": string(),
            "state": {"type": "string", "enum": ["pending", "approved", "denied", "expired"]},
            "request": {"type": "object", "description": "agent, provider, method, path, model, rule; arguments for a capability call"},
            "reason": nullable_string(), "created_at": nullable_string(), "expires_at": nullable_string(),
            "decided_at": nullable_string(), "decided_by": nullable_string()
        })),
        "DenyRequest": {
            "type": "object", "additionalProperties": false, "properties": {"reason": nullable_string()}
        },
        "TokenUsage": object(&["day", "token_id", "agent", "requests", "tokens"], json!({
            "day": {"type": "string", "format": "date"}, "token_id": string(), "agent": string(),
            "requests": {"type": "integer"}, "tokens": {"type": "integer"}
        })),
        "AgentUsage": object(&["day", "agent", "requests", "tokens"], json!({
            "day": {"type": "string", "format": "date"}, "agent": string(),
            "requests": {"type": "integer"}, "tokens": {"type": "integer"}
        })),
        "UsageReport": object(&["tokens", "agents"], json!({
            "tokens": array_of("TokenUsage"), "agents": array_of("AgentUsage")
        })),
    })
}

/// Capabilities: as listed, as added, and a trial run's arguments.
fn capability_schemas() -> Value {
    json!({
        "CapabilityView": object(&["name", "kind", "description", "secret", "source",
            "require_approval", "input_schema"], json!({
            "name": string(), "kind": {"type": "string", "enum": ["email", "sql", "http"]},
            "description": string(), "secret": string(),
            "source": {"type": "string", "enum": ["config", "store"]},
            "require_approval": {"type": "boolean"},
            "input_schema": {"type": "object", "description": "JSON Schema of the arguments"}
        })),
        "NewCapabilities": {
            "type": "object", "required": ["capabilities"], "additionalProperties": false,
            "properties": {"capabilities": {
                "type": "object",
                "description": "by name, the fields of a [capabilities.NAME] table of the config file",
                "additionalProperties": {"type": "object", "required": ["kind"],
                    "properties": {"kind": {"type": "string", "enum": ["email", "sql", "http"]}}}
            }}
        },
        "CapabilityAdded": object(&["name", "replaced", "secret", "secret_provider",
            "secret_exists"], json!({
            "name": string(), "replaced": {"type": "boolean"}, "secret": string(),
            "secret_provider": string(),
            "secret_exists": {"type": "boolean", "description": "calls fail until it exists"}
        })),
        "TestCapabilityRequest": {
            "type": "object", "additionalProperties": false,
            "properties": {"arguments": {"type": "object", "description": "default {}"}}
        }
    })
}

/// The audit log's records and verification.
fn audit_schemas() -> Value {
    json!({
        "AuditView": {
            "type": "object",
            "required": ["seq", "time", "request_id", "tenant", "method", "path", "status",
                "decision", "bytes_in", "bytes_out", "total_us", "client", "prev_hash", "hash"],
            "properties": {
                "seq": {"type": "integer"}, "time": {"type": "string", "format": "date-time"},
                "at_ms": {"type": "integer"}, "request_id": string(), "tenant": string(),
                "token_id": string(), "agent": string(), "secret": string(), "provider": string(),
                "method": string(), "path": string(), "host": string(), "model": string(),
                "capability": string(), "arguments": string(),
                "usage_tokens": {"type": "integer"}, "status": {"type": "integer"},
                "decision": {"type": "string",
                    "enum": ["allowed", "approved", "denied", "upstream_error", "failed",
                        "client_closed"]},
                "error": string(), "reason": string(),
                "bytes_in": {"type": "integer"}, "bytes_out": {"type": "integer"},
                "upstream_us": {"type": "integer"}, "total_us": {"type": "integer"},
                "client": string(), "prev_hash": string(), "hash": string()
            }
        },
        "VerifyReport": object(&["intact", "tenants"], json!({
            "intact": {"type": "boolean"},
            "tenants": {"type": "array", "items": object(&["tenant", "records"], json!({
                "tenant": string(), "records": {"type": "integer"}
            }))},
            "problem": {"type": "string", "description": "the first record altered, removed or reordered"}
        }))
    })
}

/// The whole document, from each endpoint's path, method and [`Doc`].
pub fn document<'a>(endpoints: impl IntoIterator<Item = (&'a str, Verb, &'a Doc)>) -> Value {
    let mut paths = Map::new();
    for (path, verb, doc) in endpoints {
        let item = paths.entry(path).or_insert_with(|| json!({}));
        item[verb.key()] = doc.operation();
    }
    json!({
        "openapi": "3.1.0",
        "info": {
            "title": "SEKS admin API",
            "version": env!("CARGO_PKG_VERSION"),
            "description": "Operate a SEKS broker: secrets, agent tokens, named policies, capabilities, approvals, usage and the audit log. \
                Send the admin token (`seks admin token create`) as `Authorization: Bearer <token>`."
        },
        "components": {
            "securitySchemes": {"adminToken": {"type": "http", "scheme": "bearer"}},
            "schemas": schemas(),
        },
        "paths": paths,
    })
}
