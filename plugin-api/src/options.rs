//! Reading a plugin's own options (a backend's `[model.options]`, a judge's `[judge.config]`) into
//! a serde type: one rule for both, so every plugin refuses the same mistakes the same way.
//!
//! The type should carry `#[serde(default, deny_unknown_fields)]`: an absent table then reads as
//! the defaults, and an unknown key is refused by name. A value of the wrong type is named too
//! (serde alone does not say which key it was), and a table is required (serde would read a
//! struct from an array).

use serde::de::DeserializeOwned;
use serde_json::Value;

/// Reads `table` (`null` reads as `{}`) into `T`; the error says what is wrong, naming the key.
pub fn read_table<T: DeserializeOwned>(table: &Value) -> Result<T, String> {
    let table = match table {
        Value::Null => Value::Object(Default::default()),
        Value::Object(_) => table.clone(),
        other => return Err(format!("expected a table, not {}", json_type(other))),
    };
    // From a `Value`, serde_json's messages carry no position (which would point into the host's
    // JSON rendering of the manifest's TOML, not the manifest).
    serde_json::from_value(table.clone()).map_err(|e| name_the_key::<T>(&table, &e))
}

/// serde names an unknown or missing key, but not the key whose value has the wrong type: that
/// one is found by reading each key alone (the type's fields have defaults).
fn name_the_key<T: DeserializeOwned>(table: &Value, error: &serde_json::Error) -> String {
    let message = error.to_string();
    if message.contains("field `") {
        return message;
    }
    let bad_key = table.as_object().and_then(|table| {
        table.iter().find_map(|(key, value)| {
            let alone = Value::Object([(key.clone(), value.clone())].into_iter().collect());
            serde_json::from_value::<T>(alone).is_err().then_some(key)
        })
    });
    match bad_key {
        Some(key) => format!("`{key}`: {message}"),
        None => message,
    }
}

/// "a string", "an array", ... for messages.
pub fn json_type(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "a table",
    }
}

#[cfg(test)]
mod tests {
    use serde::Deserialize;
    use serde_json::json;

    use super::*;

    #[derive(Deserialize, Debug, Default, PartialEq)]
    #[serde(default, deny_unknown_fields)]
    struct Options {
        path: Option<String>,
        timeout_secs: u64,
    }

    #[test]
    fn an_absent_table_reads_as_the_defaults() {
        assert_eq!(read_table::<Options>(&Value::Null), Ok(Options::default()));
        assert_eq!(read_table::<Options>(&json!({})), Ok(Options::default()));
    }

    #[test]
    fn an_unknown_key_is_refused_by_name() {
        let err = read_table::<Options>(&json!({"paht": "x"})).expect_err("typo");
        assert!(err.contains("unknown field `paht`") && err.contains("`path`"), "{err}");
        assert!(!err.contains("line"), "{err}");
    }

    #[test]
    fn a_value_of_the_wrong_type_is_named() {
        let err = read_table::<Options>(&json!({"path": "p", "timeout_secs": "9"})).expect_err("a string");
        assert!(err.starts_with("`timeout_secs`: invalid type"), "{err}");
    }

    #[test]
    fn an_array_is_not_a_table() {
        assert_eq!(read_table::<Options>(&json!(["p", 1])), Err("expected a table, not an array".to_owned()));
    }
}
