//! A capability's arguments: the operator declares typed parameters, the broker derives the
//! JSON Schema the model sees from them and checks every call against exactly that subset,
//! so what reaches a backend is always a value of the declared type and bounds.

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value, json};

/// Longest string argument when a parameter sets no `max_length`.
pub const DEFAULT_MAX_LENGTH: usize = 10_000;
/// Longest string shown of an argument in audit records and approval requests.
const SHOWN_CHARS: usize = 80;
/// Most list items shown of an argument in audit records and approval requests.
const SHOWN_ITEMS: usize = 10;

/// The JSON type of a parameter.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ParamType {
    /// Text.
    String,
    /// A whole number (fits in an i64).
    Integer,
    /// Any number (f64).
    Number,
    /// `true` or `false`.
    Boolean,
}

impl ParamType {
    fn as_str(self) -> &'static str {
        match self {
            ParamType::String => "string",
            ParamType::Integer => "integer",
            ParamType::Number => "number",
            ParamType::Boolean => "boolean",
        }
    }

    fn admits(self, value: &Value) -> bool {
        match self {
            ParamType::String => value.is_string(),
            ParamType::Integer => value.is_i64(),
            ParamType::Number => value.is_number(),
            ParamType::Boolean => value.is_boolean(),
        }
    }
}

/// One declared parameter.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Param {
    /// Argument name: 1-64 lowercase letters, digits and `_`, starting with a letter.
    pub name: String,
    /// Its JSON type.
    #[serde(rename = "type")]
    pub kind: ParamType,
    /// What it means, for the model.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    /// Whether the argument must be given (default true); a missing optional one is null.
    #[serde(default = "yes", skip_serializing_if = "is_true")]
    pub required: bool,
    /// The only values allowed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub one_of: Option<Vec<Value>>,
    /// Smallest number allowed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min: Option<f64>,
    /// Largest number allowed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max: Option<f64>,
    /// Longest string allowed, in characters (default 10000).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_length: Option<usize>,
}

fn yes() -> bool {
    true
}

fn is_true(b: &bool) -> bool {
    *b
}

/// Whether `name` is a usable parameter name (also safe inside a `{name}` template).
pub fn valid_name(name: &str) -> bool {
    let mut bytes = name.bytes();
    name.len() <= 64
        && bytes.next().is_some_and(|b| b.is_ascii_lowercase())
        && bytes.all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
}

/// Check declared parameters: names, and bounds that fit their type.
pub fn check(params: &[Param]) -> Result<(), String> {
    for (i, p) in params.iter().enumerate() {
        if !valid_name(&p.name) {
            return Err(format!(
                "parameter `{}`: names are 1-64 lowercase letters, digits and `_`, starting with a letter",
                p.name
            ));
        }
        if params[..i].iter().any(|q| q.name == p.name) {
            return Err(format!("parameter `{}` is declared twice", p.name));
        }
        let numeric = matches!(p.kind, ParamType::Integer | ParamType::Number);
        if (p.min.is_some() || p.max.is_some()) && !numeric {
            return Err(format!(
                "parameter `{}`: `min` and `max` apply to numbers only",
                p.name
            ));
        }
        if p.max_length.is_some() && p.kind != ParamType::String {
            return Err(format!(
                "parameter `{}`: `max_length` applies to strings only",
                p.name
            ));
        }
        if let Some(values) = &p.one_of
            && let Some(bad) = values.iter().find(|v| !p.kind.admits(v))
        {
            return Err(format!(
                "parameter `{}`: `one_of` value {bad} is not of type {}",
                p.name,
                p.kind.as_str()
            ));
        }
    }
    Ok(())
}

/// The JSON Schema of an object with these parameters and nothing else.
pub fn schema(params: &[Param]) -> Value {
    let mut properties = Map::new();
    for p in params {
        let mut prop = Map::new();
        prop.insert("type".into(), p.kind.as_str().into());
        if let Some(d) = &p.description {
            prop.insert("description".into(), d.clone().into());
        }
        if let Some(values) = &p.one_of {
            prop.insert("enum".into(), Value::Array(values.clone()));
        }
        if let Some(min) = p.min {
            prop.insert("minimum".into(), json!(min));
        }
        if let Some(max) = p.max {
            prop.insert("maximum".into(), json!(max));
        }
        if p.kind == ParamType::String {
            prop.insert(
                "maxLength".into(),
                p.max_length.unwrap_or(DEFAULT_MAX_LENGTH).into(),
            );
        }
        properties.insert(p.name.clone(), Value::Object(prop));
    }
    let required: Vec<&str> = params
        .iter()
        .filter(|p| p.required)
        .map(|p| p.name.as_str())
        .collect();
    json!({
        "type": "object",
        "properties": properties,
        "required": required,
        "additionalProperties": false,
    })
}

/// Arguments that failed validation: the JSON Pointer of the culprit and what is wrong.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("argument {path}: {why}")]
pub struct BadArgument {
    /// JSON Pointer into the arguments (`/customer_id`; empty for the whole object).
    pub path: String,
    /// What is wrong.
    pub why: String,
}

impl BadArgument {
    /// A failure at `path`.
    pub fn at(path: impl Into<String>, why: impl Into<String>) -> Self {
        BadArgument {
            path: path.into(),
            why: why.into(),
        }
    }
}

/// Check `args` against the parameters; `Ok` holds one value per parameter, in declaration
/// order (null for an absent optional one), ready to bind.
pub fn validate(params: &[Param], args: &Value) -> Result<Vec<Value>, BadArgument> {
    let object = match args {
        Value::Object(o) => o,
        Value::Null => &Map::new(),
        _ => return Err(BadArgument::at("", "the arguments must be a JSON object")),
    };
    if let Some(unknown) = object
        .keys()
        .find(|k| !params.iter().any(|p| &p.name == *k))
    {
        return Err(BadArgument::at(
            pointer(unknown),
            "no such parameter (additional properties are not allowed)",
        ));
    }
    params
        .iter()
        .map(|p| match object.get(&p.name) {
            None | Some(Value::Null) if p.required => {
                Err(BadArgument::at(pointer(&p.name), "is required"))
            }
            None | Some(Value::Null) => Ok(Value::Null),
            Some(value) => check_value(p, value).map(|()| value.clone()),
        })
        .collect()
}

fn check_value(p: &Param, value: &Value) -> Result<(), BadArgument> {
    let at = || pointer(&p.name);
    if !p.kind.admits(value) {
        return Err(BadArgument::at(
            at(),
            format!("expected {} {}", article(p.kind), p.kind.as_str()),
        ));
    }
    if let Some(allowed) = &p.one_of
        && !allowed.contains(value)
    {
        let list: Vec<String> = allowed.iter().map(Value::to_string).collect();
        return Err(BadArgument::at(
            at(),
            format!("must be one of {}", list.join(", ")),
        ));
    }
    if let Some(n) = value.as_f64() {
        if p.min.is_some_and(|min| n < min) {
            return Err(BadArgument::at(
                at(),
                format!("must be at least {}", p.min.unwrap_or_default()),
            ));
        }
        if p.max.is_some_and(|max| n > max) {
            return Err(BadArgument::at(
                at(),
                format!("must be at most {}", p.max.unwrap_or_default()),
            ));
        }
    }
    if let Some(text) = value.as_str() {
        let limit = p.max_length.unwrap_or(DEFAULT_MAX_LENGTH);
        if text.chars().count() > limit {
            return Err(BadArgument::at(
                at(),
                format!("is longer than {limit} characters"),
            ));
        }
    }
    Ok(())
}

fn article(kind: ParamType) -> &'static str {
    match kind {
        ParamType::Integer => "an",
        _ => "a",
    }
}

/// A JSON Pointer to a top-level member (`~` and `/` escaped as RFC 6901 says).
pub fn pointer(name: &str) -> String {
    format!("/{}", name.replace('~', "~0").replace('/', "~1"))
}

/// What the audit log sees of the arguments: scalars as given, long strings and lists cut
/// short with their size, so a record stays small and a body is not copied whole into the log.
pub fn summarise(args: &Value) -> String {
    shorten(args, 0, SHOWN_ITEMS).to_string()
}

/// Largest arguments a person deciding on a held call sees in full.
pub const APPROVAL_SHOWN_BYTES: usize = 64 * 1024;

/// What a person deciding on a held call sees: the arguments in full, since what is cut from
/// view (the rest of an email's body) would be approved unseen. Beyond
/// [`APPROVAL_SHOWN_BYTES`], long strings are cut, every list item still shown (lists are
/// bounded by the definition, such as `max_recipients`), and the summary says so.
pub fn summarise_for_approval(args: &Value) -> String {
    let full = args.to_string();
    if full.len() <= APPROVAL_SHOWN_BYTES {
        return full;
    }
    let short = shorten(args, 0, usize::MAX);
    format!("{short} (shortened: {} bytes in full)", full.len())
}

fn shorten(value: &Value, depth: usize, max_items: usize) -> Value {
    match value {
        Value::String(s) if s.chars().count() > SHOWN_CHARS => {
            let head: String = s.chars().take(SHOWN_CHARS).collect();
            Value::String(format!("{head}… ({} chars)", s.chars().count()))
        }
        Value::Array(items) if depth >= 2 => Value::String(format!("[{} items]", items.len())),
        Value::Object(map) if depth >= 2 => Value::String(format!("{{{} keys}}", map.len())),
        Value::Array(items) => {
            let mut out: Vec<Value> = items
                .iter()
                .take(max_items)
                .map(|v| shorten(v, depth + 1, max_items))
                .collect();
            if items.len() > max_items {
                out.push(Value::String(format!("… ({} items)", items.len())));
            }
            Value::Array(out)
        }
        Value::Object(map) => Value::Object(
            map.iter()
                .map(|(k, v)| (k.clone(), shorten(v, depth + 1, max_items)))
                .collect(),
        ),
        other => other.clone(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn params() -> Vec<Param> {
        toml::from_str::<toml::Table>(
            r#"p = [
                { name = "customer_id", type = "integer", min = 1 },
                { name = "status", type = "string", one_of = ["open", "paid"], required = false },
                { name = "note", type = "string", max_length = 5, required = false },
            ]"#,
        )
        .unwrap()["p"]
            .clone()
            .try_into()
            .unwrap()
    }

    #[test]
    fn arguments_are_checked_against_the_declared_subset_with_the_failing_path() {
        let p = params();
        check(&p).unwrap();
        assert_eq!(
            validate(&p, &json!({"customer_id": 7})).unwrap(),
            vec![json!(7), Value::Null, Value::Null]
        );
        let cases = [
            (json!({}), "/customer_id", "required"),
            (json!({"customer_id": "7"}), "/customer_id", "integer"),
            (json!({"customer_id": 1.5}), "/customer_id", "integer"),
            (json!({"customer_id": 0}), "/customer_id", "at least 1"),
            (
                json!({"customer_id": 1, "status": "void"}),
                "/status",
                "one of",
            ),
            (
                json!({"customer_id": 1, "note": "toolong"}),
                "/note",
                "longer",
            ),
            (json!({"customer_id": 1, "x/y": 1}), "/x~1y", "no such"),
            (json!([1]), "", "object"),
        ];
        for (args, path, why) in cases {
            let err = validate(&p, &args).unwrap_err();
            assert_eq!(err.path, path, "{args}");
            assert!(err.why.contains(why), "{args}: {err}");
        }
    }

    #[test]
    fn the_schema_says_what_validation_checks() {
        let schema = schema(&params());
        assert_eq!(schema["required"], json!(["customer_id"]));
        assert_eq!(schema["additionalProperties"], false);
        assert_eq!(schema["properties"]["customer_id"]["minimum"], json!(1.0));
        assert_eq!(
            schema["properties"]["status"]["enum"],
            json!(["open", "paid"])
        );
        assert_eq!(schema["properties"]["note"]["maxLength"], 5);
    }

    #[test]
    fn declarations_that_cannot_hold_are_refused() {
        for bad in [
            r#"p = [{ name = "Bad", type = "string" }]"#,
            r#"p = [{ name = "a", type = "string" }, { name = "a", type = "integer" }]"#,
            r#"p = [{ name = "a", type = "string", min = 1 }]"#,
            r#"p = [{ name = "a", type = "integer", max_length = 1 }]"#,
            r#"p = [{ name = "a", type = "integer", one_of = ["x"] }]"#,
        ] {
            let p: Vec<Param> = toml::from_str::<toml::Table>(bad).unwrap()["p"]
                .clone()
                .try_into()
                .unwrap();
            assert!(check(&p).is_err(), "{bad}");
        }
    }

    #[test]
    fn summaries_cut_long_values() {
        let long = "x".repeat(500);
        let s = summarise(&json!({"body": long, "to": ["a@b.c"], "n": 3}));
        assert!(s.contains("(500 chars)") && s.len() < 200, "{s}");
        assert!(s.contains("a@b.c") && s.contains("\"n\":3"), "{s}");
    }

    #[test]
    fn an_approver_sees_the_whole_call_unless_it_is_huge() {
        let body = format!("{} and wire $9,000 to the account below", "x".repeat(500));
        let args = json!({"body": body, "to": ["a@b.c"]});
        assert_eq!(summarise_for_approval(&args), args.to_string());
        let to: Vec<String> = (0..20).map(|i| format!("r{i}@b.c")).collect();
        let huge = json!({"body": "y".repeat(APPROVAL_SHOWN_BYTES), "to": to});
        let s = summarise_for_approval(&huge);
        assert!(s.len() < 2_000 && s.contains("r19@b.c"), "{s}");
        assert!(
            s.ends_with(&format!(
                "(shortened: {} bytes in full)",
                huge.to_string().len()
            )),
            "{s}"
        );
    }
}
