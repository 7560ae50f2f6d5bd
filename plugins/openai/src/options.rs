//! The backend's options: the manifest's `[model.options]` table, validated.
//!
//! | option          | type                   | default                       |
//! |-----------------|------------------------|-------------------------------|
//! | `base_url`      | string                 | `https://api.openai.com/v1`   |
//! | `api_key_env`   | string (a variable's name; `""` sends no key) | `OPENAI_API_KEY` |
//! | `timeout_secs`  | positive number        | `120`                         |
//! | `extra_headers` | table of string → string | none                        |
//!
//! Any other key is an error. The key itself is read from the environment, never from the
//! manifest, and is kept in an [`ApiKey`] whose `Debug` output hides it.

use std::collections::BTreeMap;
use std::fmt;
use std::time::Duration;

use serde::Deserialize;
use serde_json::Value;
use vlsbench_plugin_api::BackendError;
use vlsbench_plugin_api::options::read_table;

/// Where requests go when the manifest names no server.
pub const DEFAULT_BASE_URL: &str = "https://api.openai.com/v1";
/// The environment variable the key is read from by default.
pub const DEFAULT_API_KEY_ENV: &str = "OPENAI_API_KEY";
/// Seconds a request may take, start to end, by default.
pub const DEFAULT_TIMEOUT_SECS: f64 = 120.0;

/// An API key. Its `Debug` output never shows the key.
#[derive(Clone, PartialEq, Eq)]
pub struct ApiKey(String);

impl ApiKey {
    pub fn new(key: impl Into<String>) -> Self {
        Self(key.into())
    }

    /// The key itself, for the `Authorization` header only.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for ApiKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("ApiKey([redacted])")
    }
}

/// The validated options.
#[derive(Debug, Clone, PartialEq)]
pub struct Options {
    /// The server's base URL, without a trailing slash (`.../v1`).
    pub base_url: String,
    /// The variable the key came from, for error messages; `None` when no key is sent.
    pub api_key_env: Option<String>,
    pub api_key: Option<ApiKey>,
    pub timeout: Duration,
    pub extra_headers: Vec<(String, String)>,
}

/// `[model.options]` as written: every key optional, any other key refused by name.
#[derive(Deserialize)]
#[serde(default, deny_unknown_fields)]
struct Written {
    base_url: String,
    api_key_env: String,
    timeout_secs: f64,
    extra_headers: BTreeMap<String, String>,
}

impl Default for Written {
    fn default() -> Self {
        Self {
            base_url: DEFAULT_BASE_URL.to_owned(),
            api_key_env: DEFAULT_API_KEY_ENV.to_owned(),
            timeout_secs: DEFAULT_TIMEOUT_SECS,
            extra_headers: BTreeMap::new(),
        }
    }
}

impl Options {
    /// Validates `options` (a JSON object, or null for all defaults), reading the key through
    /// `env` (a variable's name → its value).
    pub fn parse(options: &Value, env: impl Fn(&str) -> Option<String>) -> Result<Self, BackendError> {
        let written: Written =
            read_table(options).map_err(|e| BackendError::bad_config(format!("the openai backend's options: {e}")))?;
        let base_url = written.base_url.trim().trim_end_matches('/').to_string();
        if !(base_url.starts_with("http://") || base_url.starts_with("https://")) {
            return Err(BackendError::bad_config(format!(
                "option `base_url` must start with http:// or https://, got `{base_url}`"
            )));
        }
        let secs = written.timeout_secs;
        if secs.is_finite() && secs >= 1.0e9 {
            return Err(BackendError::bad_config(format!(
                "option `timeout_secs` = {secs} is too large: at most 1e9 seconds (about 31 years)"
            )));
        }
        if !(secs.is_finite() && secs > 0.0) {
            return Err(BackendError::bad_config(format!(
                "option `timeout_secs` must be a positive number of seconds, got {secs}"
            )));
        }
        let (api_key_env, api_key) = read_key(written.api_key_env, env)?;
        Ok(Self {
            base_url,
            api_key_env,
            api_key,
            timeout: Duration::from_secs_f64(secs),
            extra_headers: written.extra_headers.into_iter().collect(),
        })
    }
}

/// The key from the variable `name` (`""`: no key, no variable read).
fn read_key(
    name: String,
    env: impl Fn(&str) -> Option<String>,
) -> Result<(Option<String>, Option<ApiKey>), BackendError> {
    if name.is_empty() {
        return Ok((None, None));
    }
    match env(&name) {
        None => Err(BackendError::bad_config(format!(
            "environment variable `{name}` is not set; it should hold the API key \
             (set option `api_key_env` to another variable's name, or to \"\" to send no key)"
        ))),
        Some(key) if key.trim().is_empty() => {
            Err(BackendError::bad_config(format!("environment variable `{name}` is empty; it should hold the API key")))
        }
        Some(key) => Ok((Some(name), Some(ApiKey::new(key.trim())))),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use serde_json::json;
    use vlsbench_plugin_api::ErrorKind;

    use super::*;

    const SECRET: &str = "sk-test-SECRET-0123456789";

    fn env_with_key(name: &str) -> Option<String> {
        (name == "OPENAI_API_KEY" || name == "MY_KEY").then(|| SECRET.to_string())
    }

    fn no_env(_: &str) -> Option<String> {
        None
    }

    #[test]
    fn no_options_gives_the_openai_defaults() {
        let o = Options::parse(&Value::Null, env_with_key).unwrap();
        assert_eq!(o.base_url, "https://api.openai.com/v1");
        assert_eq!(o.api_key_env.as_deref(), Some("OPENAI_API_KEY"));
        assert_eq!(o.api_key.as_ref().map(ApiKey::expose), Some(SECRET));
        assert_eq!(o.timeout, Duration::from_secs(120));
        assert!(o.extra_headers.is_empty());
    }

    #[test]
    fn every_option_is_read() {
        let o = Options::parse(
            &json!({
                "base_url": "http://localhost:8000/v1/",
                "api_key_env": "MY_KEY",
                "timeout_secs": 7.5,
                "extra_headers": {"X-Org": "lab"}
            }),
            env_with_key,
        )
        .unwrap();
        assert_eq!(o.base_url, "http://localhost:8000/v1", "the trailing slash is dropped");
        assert_eq!(o.api_key_env.as_deref(), Some("MY_KEY"));
        assert_eq!(o.timeout, Duration::from_millis(7500));
        assert_eq!(o.extra_headers, vec![("X-Org".to_string(), "lab".to_string())]);
    }

    #[test]
    fn an_unknown_option_is_a_config_error_that_names_it() {
        let e = Options::parse(&json!({"base_ur": "http://x"}), env_with_key).unwrap_err();
        assert_eq!(e.kind, ErrorKind::BadConfig);
        assert!(e.message.contains("`base_ur`") && e.message.contains("`base_url`"), "{}", e.message);
        let e = Options::parse(&json!({"base_url": "http://x", "timeout_secs": "10"}), env_with_key).unwrap_err();
        assert!(e.message.contains("`timeout_secs`"), "{}", e.message);
    }

    #[test]
    fn an_unset_key_variable_is_a_config_error_that_names_the_variable() {
        let e = Options::parse(&json!({"api_key_env": "LAB_OPENAI_KEY"}), no_env).unwrap_err();
        assert_eq!(e.kind, ErrorKind::BadConfig);
        assert!(e.message.contains("LAB_OPENAI_KEY"), "{}", e.message);
    }

    #[test]
    fn an_empty_key_variable_name_sends_no_key_and_reads_no_variable() {
        let o = Options::parse(&json!({"api_key_env": ""}), |_| panic!("no variable should be read")).unwrap();
        assert_eq!(o.api_key, None);
        assert_eq!(o.api_key_env, None);
    }

    #[test]
    fn the_key_never_shows_in_debug_output() {
        let o = Options::parse(&Value::Null, env_with_key).unwrap();
        let debug = format!("{o:?}");
        assert!(!debug.contains(SECRET), "{debug}");
        assert!(debug.contains("redacted"), "{debug}");
    }

    #[test]
    fn the_key_never_shows_in_config_errors() {
        let e = Options::parse(&json!({"timeout_secs": -1}), env_with_key).unwrap_err();
        assert!(!e.message.contains(SECRET));
        let e = Options::parse(&json!({"extra_headers": {"X": 1}}), env_with_key).unwrap_err();
        assert!(!e.message.contains(SECRET));
    }

    #[test]
    fn options_of_the_wrong_type_are_config_errors() {
        for bad in [
            json!({"base_url": 3}),
            json!({"base_url": "ftp://x"}),
            json!({"timeout_secs": 0}),
            json!({"timeout_secs": "10"}),
            json!({"extra_headers": ["X"]}),
            json!({"extra_headers": {"X": 1}}),
            json!(["not", "a", "table"]),
        ] {
            let e = Options::parse(&bad, env_with_key).unwrap_err();
            assert_eq!(e.kind, ErrorKind::BadConfig, "{bad}");
        }
    }

    #[test]
    fn a_huge_timeout_is_refused_with_its_bound_not_as_negative() {
        let e = Options::parse(&json!({"timeout_secs": 1e10}), env_with_key).unwrap_err();
        assert!(e.message.contains("is too large: at most 1e9 seconds"), "{e}");
        let e = Options::parse(&json!({"timeout_secs": -1}), env_with_key).unwrap_err();
        assert!(e.message.contains("must be a positive number"), "{e}");
    }
}
