//! Reading a checkpoint's JSON configuration files the way every backend's `config.rs` reads them:
//! [`read_json`], optional typed fields ([`field`], [`size`], [`channels`]), where the image processor is
//! ([`image_processor_json`]), EOS ids ([`parse_ids`]), and the
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
    let text =
        crate::fsread::read_small_text(path).map_err(|source| ConfigError::Io { path: path.to_owned(), source })?;
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

/// A per-channel field (`image_mean`, `image_std`): one number for every channel or a list of
/// three, or its default.
pub fn channels(obj: &Value, key: &str, default: [f64; 3], path: &Path, ctx: &str) -> Result<[f64; 3], ConfigError> {
    match obj.get(key) {
        None | Some(Value::Null) => Ok(default),
        Some(Value::Number(n)) => Ok([n.as_f64().unwrap_or(0.0); 3]),
        Some(_) => {
            let l: Vec<f64> = field(obj, key, path, ctx)?.unwrap_or_default();
            l.try_into().map_err(|_| invalid(path, format!("{ctx}{key}: expected 3 values")))
        }
    }
}

/// A checkpoint's image processor settings as transformers finds them: nested under
/// `image_processor` in `processor_config.json` (newest), else `preprocessor_config.json`. The
/// value, the file it came from and the context for messages (`"image_processor."` when nested).
pub fn image_processor_json(dir: &Path) -> Result<(Value, PathBuf, &'static str), ConfigError> {
    let nested = dir.join("processor_config.json");
    if nested.is_file() {
        let v = read_json(&nested)?;
        if let Some(ip @ Value::Object(_)) = v.get("image_processor") {
            return Ok((ip.clone(), nested, "image_processor."));
        }
    }
    let path = dir.join("preprocessor_config.json");
    if !path.is_file() {
        return Err(invalid(
            dir,
            "no image processor (processor_config.json with image_processor, or preprocessor_config.json)",
        ));
    }
    Ok((read_json(&path)?, path, ""))
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
    fn channels_are_one_number_or_three() {
        let v = json!({"one": 0.5, "three": [1, 2, 3], "two": [1, 2]});
        let p = Path::new("p.json");
        assert_eq!(channels(&v, "one", [0.0; 3], p, "").unwrap(), [0.5; 3]);
        assert_eq!(channels(&v, "three", [0.0; 3], p, "").unwrap(), [1.0, 2.0, 3.0]);
        assert_eq!(channels(&v, "none", [9.0; 3], p, "").unwrap(), [9.0; 3]);
        assert_eq!(channels(&v, "two", [0.0; 3], p, "x.").unwrap_err().to_string(), "p.json: x.two: expected 3 values");
    }

    #[test]
    fn ids_are_one_or_a_list() {
        assert_eq!(parse_ids(&json!(2)), Some(vec![2]));
        assert_eq!(parse_ids(&json!([1, 2])), Some(vec![1, 2]));
        assert_eq!(parse_ids(&json!("2")), None);
        assert_eq!(parse_ids(&json!([1, -1])), None);
    }
}
