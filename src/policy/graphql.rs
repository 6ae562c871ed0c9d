//! GraphQL requests, read just far enough to tell whether one names a field that hands out a
//! credential: a GraphQL endpoint carries its operation in the body (or `?query=`), where a
//! path rule can't see it.
//!
//! Names are matched as whole GraphQL names anywhere in the decoded text, not by parsing the
//! operation: that catches aliases (`x: runnerCreate`), fragments (`...F` defined elsewhere)
//! and every operation of a batch, and it can't be fooled by a parser that reads the
//! document differently from the upstream's. A name that only appears in a string, a comment
//! or a variable is refused too; that errs toward refusal, as it should.

use std::fmt;

use serde::Deserialize;
use serde::de::{self, DeserializeSeed, MapAccess, SeqAccess, Visitor};

/// A body that isn't GraphQL over JSON: one `{"query": "…"}` object or an array of them.
#[derive(Debug, PartialEq, thiserror::Error)]
#[error("not a GraphQL request over JSON")]
pub struct NotGraphql;

/// One operation as GraphQL over JSON carries it, for its shape only: the names are looked for
/// in every string. A repeated `query` is an error (serde refuses duplicate fields), since
/// which copy the upstream runs is a guess.
#[derive(Deserialize)]
struct Operation {
    #[serde(rename = "query")]
    _query: String,
}

/// The first of `fields` that a GraphQL-over-JSON body names in any of its strings (keys
/// included, so a server that reads operations from another member, as Rails' `_json` is,
/// gets no pass); an error if the body isn't GraphQL over JSON.
pub fn body_names<'a>(body: &[u8], fields: &'a [String]) -> Result<Option<&'a str>, NotGraphql> {
    if serde_json::from_slice::<Operation>(body).is_err()
        && serde_json::from_slice::<Vec<Operation>>(body).is_err()
    {
        return Err(NotGraphql);
    }
    let mut found = None;
    let mut reader = serde_json::Deserializer::from_slice(body);
    Strings {
        fields,
        found: &mut found,
    }
    .deserialize(&mut reader)
    .and_then(|()| reader.end())
    .map_err(|_| NotGraphql)?;
    Ok(found)
}

/// The first of `fields` that a text names as a whole GraphQL name, in any case.
pub fn text_names<'a>(text: &str, fields: &'a [String]) -> Option<&'a str> {
    text.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
        // A name can't start with a digit, so a lexer that allowed `2runnerCreate` could only
        // read it as a number and then the name.
        .map(|word| word.trim_start_matches(|c: char| c.is_ascii_digit()))
        .filter(|word| !word.is_empty())
        .find_map(|word| {
            fields
                .iter()
                .find(|field| field.eq_ignore_ascii_case(word))
                .map(String::as_str)
        })
}

/// Whether `name` is a GraphQL name (`[_A-Za-z][_0-9A-Za-z]*`).
pub fn is_name(name: &str) -> bool {
    name.starts_with(|c: char| c.is_ascii_alphabetic() || c == '_')
        && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
}

/// Walks every string of a JSON document, keys and duplicates included, noting the first
/// listed field one names.
struct Strings<'s, 'a> {
    fields: &'a [String],
    found: &'s mut Option<&'a str>,
}

impl<'a> Strings<'_, 'a> {
    fn reborrow(&mut self) -> Strings<'_, 'a> {
        Strings {
            fields: self.fields,
            found: &mut *self.found,
        }
    }
}

impl<'de> DeserializeSeed<'de> for Strings<'_, '_> {
    type Value = ();

    fn deserialize<D: de::Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for Strings<'_, '_> {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("any JSON value")
    }

    fn visit_str<E: de::Error>(self, text: &str) -> Result<(), E> {
        if self.found.is_none() {
            *self.found = text_names(text, self.fields);
        }
        Ok(())
    }

    fn visit_bool<E: de::Error>(self, _: bool) -> Result<(), E> {
        Ok(())
    }

    fn visit_i64<E: de::Error>(self, _: i64) -> Result<(), E> {
        Ok(())
    }

    fn visit_u64<E: de::Error>(self, _: u64) -> Result<(), E> {
        Ok(())
    }

    fn visit_f64<E: de::Error>(self, _: f64) -> Result<(), E> {
        Ok(())
    }

    fn visit_unit<E: de::Error>(self) -> Result<(), E> {
        Ok(())
    }

    fn visit_seq<A: SeqAccess<'de>>(mut self, mut seq: A) -> Result<(), A::Error> {
        while seq.next_element_seed(self.reborrow())?.is_some() {}
        Ok(())
    }

    fn visit_map<A: MapAccess<'de>>(mut self, mut map: A) -> Result<(), A::Error> {
        while map.next_key_seed(self.reborrow())?.is_some() {
            map.next_value_seed(self.reborrow())?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fields() -> Vec<String> {
        vec![
            "runnerCreate".to_owned(),
            "clusterAgentTokenCreate".to_owned(),
        ]
    }

    #[test]
    fn names_are_found_whole_in_any_spelling_the_upstream_reads() {
        let fields = fields();
        for body in [
            r#"{"query":"mutation { runnerCreate(input: {}) { errors } }"}"#,
            r#"{"query":"mutation{runnerCreate(input:{}){errors}}"}"#,
            r#"{"query":"mutation { \u0072unnerCreate { errors } }"}"#,
            r#"{"query":"mutation { x: runnerCreate { errors } }"}"#,
            r#"{"query":"mutation { ...F } fragment F on Mutation { runnerCreate { errors } }"}"#,
            r#"[{"query":"{ a }"},{"query":"mutation { runnerCreate { errors } }"}]"#,
            r#"{"query":"mutation { RUNNERCREATE }"}"#,
            r#"{"query":"mutation { 2runnerCreate }"}"#,
            // Rails runs a batch from `_json` whatever `query` says.
            r#"{"query":"{ a }","_json":[{"query":"mutation { runnerCreate }"}]}"#,
            // Whichever copy of a repeated member the upstream keeps.
            r#"{"query":"{ a }","_json":[{"query":"mutation { runnerCreate }"}],"_json":[]}"#,
            r#"{"query":"{ a }","runnerCreate":1}"#,
            r#"{"query":"{ a # runnerCreate\n }"}"#,
        ] {
            assert_eq!(
                body_names(body.as_bytes(), &fields),
                Ok(Some("runnerCreate")),
                "{body}"
            );
        }
        assert_eq!(
            text_names("{clusterAgentTokenCreate}", &fields),
            Some("clusterAgentTokenCreate")
        );
    }

    #[test]
    fn other_names_pass() {
        let fields = fields();
        for body in [
            r#"{"query":"{ runners { nodes { id } } }"}"#,
            r#"{"query":"{ runnerCreated: id xrunnerCreate runnerCreate_ }"}"#,
            r#"{"query":"query Q($v: Int) { a }","variables":{"v":1},"operationName":"Q"}"#,
            r#"[{"query":"{ a }"},{"query":"{ b }"}]"#,
        ] {
            assert_eq!(body_names(body.as_bytes(), &fields), Ok(None), "{body}");
        }
    }

    #[test]
    fn bodies_that_are_not_graphql_over_json_are_not_read() {
        let fields = fields();
        for body in [
            "",
            "mutation { runnerCreate }",
            "{}",
            r#"{"variables":{}}"#,
            r#"{"query":["{ a }"]}"#,
            r#"{"query":null}"#,
            r#"{"query":"{ a }","query":"mutation { runnerCreate }"}"#,
            r#"[{"query":"{ a }"},[{"query":"{ b }"}]]"#,
            r#"{"query":"{ a }"} {"query":"{ b }"}"#,
            r#"{"query":"\ud800"}"#,
            "\"{ a }\"",
        ] {
            assert_eq!(
                body_names(body.as_bytes(), &fields),
                Err(NotGraphql),
                "{body}"
            );
        }
    }

    #[test]
    fn only_graphql_names_are_names() {
        assert!(is_name("runnerCreate") && is_name("_a1"));
        assert!(!is_name("") && !is_name("1a") && !is_name("a-b") && !is_name("ä"));
    }
}
