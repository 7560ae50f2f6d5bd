//! Reading a checkpoint's JSON configuration files the way every backend's `config.rs` reads them:
//! [`read_json`], optional typed fields ([`field`], [`size`]), EOS ids ([`parse_ids`]), and the
//! [`ConfigError`] they return, which always names the file.

use std::path::{Path, PathBuf};

use serde::Deserialize;
use serde_json::Value;

/// A configuration problem, naming the file.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read {path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("{path}: invalid JSON: {source}")]
    Json { path: PathBuf, source: serde_json::Error },
    #[error("{path}: {message}")]
    Invalid { path: PathBuf, message: String },
}

/// A JSON file, parsed.
pub fn read_json(path: &Path) -> Result<Value, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Io { path: path.to_owned(), source })?;
    serde_json::from_str(&text).map_err(|source| ConfigError::Json { path: path.to_owned(), source })
}

/// [`ConfigError::Invalid`] for `path`.
pub fn invalid(path: &Path, message: impl Into<String>) -> ConfigError {
    ConfigError::Invalid { path: path.to_owned(), message: message.into() }
}

/// An optional field as `T` (absent and `null` are `None`); a value of the wrong type is an error
/// naming `ctx` + `key`.
pub fn field<T: for<'de> Deserialize<'de>>(
    obj: &Value,
    key: &str,
    path: &Path,
    ctx: &str,
) -> Result<Option<T>, ConfigError> {
    match obj.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(v) => serde_json::from_value(v.clone()).map(Some).map_err(|e| invalid(path, format!("{ctx}{key}: {e}"))),
    }
}

/// A positive size field, or its default.
pub fn size(obj: &Value, key: &str, default: usize, path: &Path, ctx: &str) -> Result<usize, ConfigError> {
    let v = field::<usize>(obj, key, path, ctx)?.unwrap_or(default);
    if v == 0 {
        return Err(invalid(path, format!("{ctx}{key}: must be positive")));
    }
    Ok(v)
}

/// `eos_token_id` (or any id field): one id or a list.
pub fn parse_ids(v: &Value) -> Option<Vec<u32>> {
    match v {
        Value::Number(n) => n.as_u64().map(|x| vec![x as u32]),
        Value::Array(a) => a.iter().map(|x| x.as_u64().map(|x| x as u32)).collect(),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn fields_name_the_file_and_the_key() {
        let v = json!({"a": 3, "b": "x", "z": 0, "n": null});
        let p = Path::new("/c.json");
        assert_eq!(field::<usize>(&v, "a", p, "").unwrap(), Some(3));
        assert_eq!(field::<usize>(&v, "n", p, "").unwrap(), None);
        let e = field::<usize>(&v, "b", p, "text_config.").unwrap_err().to_string();
        assert!(e.starts_with("/c.json: text_config.b: "), "{e}");
        assert_eq!(size(&v, "missing", 7, p, "").unwrap(), 7);
        assert_eq!(size(&v, "z", 7, p, "").unwrap_err().to_string(), "/c.json: z: must be positive");
    }

    #[test]
    fn ids_are_one_or_a_list() {
        assert_eq!(parse_ids(&json!(2)), Some(vec![2]));
        assert_eq!(parse_ids(&json!([1, 2])), Some(vec![1, 2]));
        assert_eq!(parse_ids(&json!("2")), None);
        assert_eq!(parse_ids(&json!([1, -1])), None);
    }
}
