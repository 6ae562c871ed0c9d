//! Rules on the JSON request body: bounds on numbers, lengths and allowed values of fields
//! named by JSON pointer, so a purchase or a message can be bounded.

use std::fmt;

use serde::{Deserialize, Serialize};
use serde_json::Value;

/// One limit on a JSON field, e.g. `{ pointer = "/amount", max = 5000 }`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(try_from = "BodyRuleFields")]
pub struct BodyRule {
    /// JSON pointer to the field (`/max_tokens`, `/to`, `/items/0/price`).
    pub pointer: String,
    /// Largest allowed number.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max: Option<f64>,
    /// Smallest allowed number.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub min: Option<f64>,
    /// Allowed values; for an array, every element must be one of them.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub one_of: Option<Vec<Value>>,
    /// Longest allowed string (in characters) or array.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_length: Option<usize>,
    /// Refuse requests without the field (by default a missing field passes).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub required: bool,
}

/// The fields as written, before validation.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct BodyRuleFields {
    pointer: String,
    max: Option<f64>,
    min: Option<f64>,
    one_of: Option<Vec<Value>>,
    max_length: Option<usize>,
    #[serde(default)]
    required: bool,
}

impl TryFrom<BodyRuleFields> for BodyRule {
    type Error = String;

    fn try_from(f: BodyRuleFields) -> Result<Self, String> {
        if !f.pointer.is_empty() && !f.pointer.starts_with('/') {
            return Err(format!(
                "body rule pointer `{}` must start with `/`",
                f.pointer
            ));
        }
        if f.max.is_none()
            && f.min.is_none()
            && f.one_of.is_none()
            && f.max_length.is_none()
            && !f.required
        {
            return Err(format!(
                "body rule for `{}` sets no limit (use max, min, one_of, max_length or required)",
                f.pointer
            ));
        }
        Ok(BodyRule {
            pointer: f.pointer,
            max: f.max,
            min: f.min,
            one_of: f.one_of,
            max_length: f.max_length,
            required: f.required,
        })
    }
}

impl fmt::Display for BodyRule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "body {}", self.pointer)?;
        if let Some(min) = self.min {
            write!(f, " >= {min}")?;
        }
        if let Some(max) = self.max {
            write!(f, " <= {max}")?;
        }
        if let Some(n) = self.max_length {
            write!(f, " length <= {n}")?;
        }
        if let Some(values) = &self.one_of {
            write!(f, " in {}", Value::from(values.clone()))?;
        }
        Ok(())
    }
}

impl BodyRule {
    /// Check the parsed body; `Err` says why it fails, naming the value.
    pub fn check(&self, body: &Value) -> Result<(), String> {
        let Some(value) = body.pointer(&self.pointer) else {
            return if self.required {
                Err(format!("the field {} is required", self.pointer))
            } else {
                Ok(())
            };
        };
        if self.min.is_some() || self.max.is_some() {
            let Some(n) = value.as_f64() else {
                return Err(format!("{} must be a number, got {value}", self.pointer));
            };
            if self.max.is_some_and(|max| n > max) || self.min.is_some_and(|min| n < min) {
                return Err(format!("{} = {value} is out of bounds", self.pointer));
            }
        }
        if let Some(limit) = self.max_length {
            let len = match value {
                Value::String(s) => s.chars().count(),
                Value::Array(a) => a.len(),
                _ => return Err(format!("{} must be a string or an array", self.pointer)),
            };
            if len > limit {
                return Err(format!("{} has length {len}, over {limit}", self.pointer));
            }
        }
        if let Some(allowed) = &self.one_of {
            let items: Vec<&Value> = match value {
                Value::Array(items) => items.iter().collect(),
                single => vec![single],
            };
            if let Some(bad) = items.iter().find(|v| !allowed.contains(v)) {
                return Err(format!("{} = {bad} is not an allowed value", self.pointer));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn rule(toml_text: &str) -> BodyRule {
        #[derive(Deserialize)]
        struct W {
            r: BodyRule,
        }
        toml::from_str::<W>(&format!("r = {toml_text}")).unwrap().r
    }

    #[test]
    fn numbers_lengths_and_allowed_values_are_bounded() {
        let amount = rule(r#"{ pointer = "/amount", max = 5000 }"#);
        assert!(amount.check(&json!({"amount": 4999})).is_ok());
        assert!(
            amount
                .check(&json!({"amount": 5001}))
                .unwrap_err()
                .contains("/amount = 5001")
        );
        assert!(amount.check(&json!({"amount": "5001"})).is_err());
        assert!(amount.check(&json!({})).is_ok());
        let to = rule(
            r#"{ pointer = "/to", one_of = ["ops@example.com", "dev@example.com"], required = true }"#,
        );
        assert!(to.check(&json!({"to": "ops@example.com"})).is_ok());
        assert!(
            to.check(&json!({"to": ["ops@example.com", "dev@example.com"]}))
                .is_ok()
        );
        assert!(
            to.check(&json!({"to": ["ops@example.com", "x@evil.example"]}))
                .is_err()
        );
        assert!(to.check(&json!({})).unwrap_err().contains("required"));
        let len = rule(r#"{ pointer = "/messages", max_length = 2 }"#);
        assert!(len.check(&json!({"messages": [1, 2, 3]})).is_err());
    }

    #[test]
    fn rules_without_a_limit_or_with_a_bad_pointer_are_refused() {
        #[derive(Debug, Deserialize)]
        #[allow(dead_code)]
        struct W {
            r: BodyRule,
        }
        assert!(
            toml::from_str::<W>(r#"r = { pointer = "/x" }"#)
                .unwrap_err()
                .to_string()
                .contains("sets no limit")
        );
        assert!(
            toml::from_str::<W>(r#"r = { pointer = "x", max = 1 }"#)
                .unwrap_err()
                .to_string()
                .contains("start with")
        );
        assert!(toml::from_str::<W>(r#"r = { pointer = "/x", maxx = 1 }"#).is_err());
    }
}
