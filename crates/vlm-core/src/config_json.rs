//! Reading a checkpoint's JSON configuration files the way every backend's `config.rs` reads them:
//! [`read_json`], optional typed fields ([`field`], [`size`], [`channels`]), where the image processor is
//! ([`image_processor_json`]), EOS ids ([`parse_ids`]), the `model_type` ([`model_type`]), a text
//! model's attention heads ([`heads`]), and the [`ConfigError`] they return, which always names the
//! file.

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

/// `image_std`: [`channels`], none of them zero (normalising divides by it).
pub fn image_std(obj: &Value, default: [f64; 3], path: &Path, ctx: &str) -> Result<[f64; 3], ConfigError> {
    let std = channels(obj, "image_std", default, path, ctx)?;
    if std.contains(&0.0) {
        return Err(invalid(path, format!("{ctx}image_std: a zero standard deviation")));
    }
    Ok(std)
}

/// An image processor's `image_processor_type`, when it names one, must be `class` (or a
/// subclass named after it: `...Fast`).
pub fn check_processor_type(obj: &Value, class: &str, path: &Path, ctx: &str) -> Result<(), ConfigError> {
    match obj.get("image_processor_type").and_then(Value::as_str) {
        Some(t) if !t.starts_with(class) => {
            Err(invalid(path, format!("{ctx}image_processor_type {t:?} is not {class}")))
        }
        _ => Ok(()),
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

/// `model_type`, which must be one of `accepted`, (model type, vlsbench arch) pairs: its index
/// there. `what` names the kind of config a file without one is not (`"a Qwen2-VL config"`).
pub fn model_type(v: &Value, path: &Path, accepted: &[(&str, &str)], what: &str) -> Result<usize, ConfigError> {
    match v.get("model_type").and_then(Value::as_str) {
        Some(t) => accepted.iter().position(|(m, _)| *m == t).ok_or_else(|| {
            let want: Vec<String> = accepted.iter().map(|(m, arch)| format!("{m:?} (arch {arch})")).collect();
            invalid(path, format!("model_type is {t:?}, not {}", want.join(" or ")))
        }),
        None => Err(invalid(path, format!("no model_type: not {what}"))),
    }
}

/// A text model's attention geometry.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Heads {
    pub hidden_size: usize,
    pub num_attention_heads: usize,
    pub num_key_value_heads: usize,
    /// `hidden_size / num_attention_heads`.
    pub head_dim: usize,
}

/// `hidden_size`, `num_attention_heads` and `num_key_value_heads` of the object `v` (at `ctx`),
/// each positive or its default (in that order in `defaults`); the heads must divide the hidden
/// size and the key-value heads the heads.
pub fn heads(v: &Value, path: &Path, ctx: &str, defaults: [usize; 3]) -> Result<Heads, ConfigError> {
    let hidden_size = size(v, "hidden_size", defaults[0], path, ctx)?;
    let num_attention_heads = size(v, "num_attention_heads", defaults[1], path, ctx)?;
    if hidden_size % num_attention_heads != 0 {
        return Err(invalid(path, format!("{ctx}hidden_size is not a multiple of num_attention_heads")));
    }
    let num_key_value_heads = size(v, "num_key_value_heads", defaults[2], path, ctx)?;
    if num_attention_heads % num_key_value_heads != 0 {
        return Err(invalid(path, format!("{ctx}num_attention_heads is not a multiple of num_key_value_heads")));
    }
    Ok(Heads { hidden_size, num_attention_heads, num_key_value_heads, head_dim: hidden_size / num_attention_heads })
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
    fn the_model_type_must_be_one_served() {
        let p = Path::new("c.json");
        let accepted = [("llava", "llava_hf"), ("llava_next", "llava_next")];
        assert_eq!(model_type(&json!({"model_type": "llava_next"}), p, &accepted, "a LLaVA config").unwrap(), 1);
        let e = model_type(&json!({"model_type": "mllama"}), p, &accepted, "a LLaVA config").unwrap_err();
        assert_eq!(
            e.to_string(),
            "c.json: model_type is \"mllama\", not \"llava\" (arch llava_hf) or \"llava_next\" (arch llava_next)"
        );
        let e = model_type(&json!({}), p, &accepted[..1], "a LLaVA config").unwrap_err();
        assert_eq!(e.to_string(), "c.json: no model_type: not a LLaVA config");
    }

    #[test]
    fn heads_must_divide_the_hidden_size_and_kv_heads_the_heads() {
        let p = Path::new("c.json");
        let h = heads(&json!({"hidden_size": 64, "num_attention_heads": 4}), p, "t.", [8, 2, 2]).unwrap();
        assert_eq!(h, Heads { hidden_size: 64, num_attention_heads: 4, num_key_value_heads: 2, head_dim: 16 });
        let e = heads(&json!({"hidden_size": 10, "num_attention_heads": 4}), p, "t.", [8, 2, 2]).unwrap_err();
        assert_eq!(e.to_string(), "c.json: t.hidden_size is not a multiple of num_attention_heads");
        let e = heads(&json!({"num_key_value_heads": 3}), p, "", [12, 4, 2]).unwrap_err();
        assert_eq!(e.to_string(), "c.json: num_attention_heads is not a multiple of num_key_value_heads");
        assert!(heads(&json!({"num_attention_heads": 0}), p, "", [8, 2, 2]).is_err());
    }

    #[test]
    fn image_std_may_not_be_zero_and_the_processor_type_must_match() {
        let p = Path::new("p.json");
        assert_eq!(image_std(&json!({}), [0.5; 3], p, "").unwrap(), [0.5; 3]);
        let e = image_std(&json!({"image_std": [1, 0, 1]}), [0.5; 3], p, "x.").unwrap_err().to_string();
        assert_eq!(e, "p.json: x.image_std: a zero standard deviation");
        let v = json!({"image_processor_type": "Qwen2VLImageProcessorFast"});
        assert!(check_processor_type(&v, "Qwen2VLImageProcessor", p, "").is_ok());
        assert!(check_processor_type(&json!({}), "Qwen2VLImageProcessor", p, "").is_ok());
        let e = check_processor_type(&v, "MllamaImageProcessor", p, "").unwrap_err().to_string();
        assert_eq!(e, "p.json: image_processor_type \"Qwen2VLImageProcessorFast\" is not MllamaImageProcessor");
    }

    #[test]
    fn ids_are_one_or_a_list() {
        assert_eq!(parse_ids(&json!(2)), Some(vec![2]));
        assert_eq!(parse_ids(&json!([1, 2])), Some(vec![1, 2]));
        assert_eq!(parse_ids(&json!("2")), None);
        assert_eq!(parse_ids(&json!([1, -1])), None);
    }
}
