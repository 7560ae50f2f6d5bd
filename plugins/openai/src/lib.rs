//! `vlsbench-backend-openai`: a native vlsbench backend for any OpenAI-compatible
//! chat-completions server (OpenAI, vLLM, SGLang, TGI, Ollama).
//!
//! - The manifest's `checkpoint` is the model name (`gpt-4o`); `"local"` (or no checkpoint) asks
//!   the server's `GET {base_url}/models` and uses the first model, as the reference harness does
//!   with a local server.
//! - Options ([`options`]): `base_url`, `api_key_env`, `timeout_secs`, `extra_headers`.
//! - Each request is one `POST {base_url}/chat/completions`, its body built as the reference
//!   builds it ([`wire`]); the reply, or the failure, is read into a [`Generation`] or a typed
//!   [`BackendError`] ([`reply`]). The plugin never retries: the host does, with backoff, from the
//!   error's kind and `retry_after_secs`.
//! - The API key is read from the environment, sent as `Authorization: Bearer`, and never appears
//!   in an error message or in `Debug` output.

pub mod options;
pub mod reply;
pub mod wire;

use std::error::Error as _;
use std::fmt;
use std::time::{Duration, SystemTime};

use reqwest::blocking::{Client, RequestBuilder};
use reqwest::header::{AUTHORIZATION, HeaderMap, HeaderName, HeaderValue, RETRY_AFTER};
use vlsbench_plugin_api::{
    Backend, BackendConfig, BackendError, BackendInfo, ErrorKind, GenerateRequest, Generation, MessageLayout, UserParts,
};

use crate::options::{ApiKey, Options};

/// The arch this backend serves.
pub const ARCH: &str = "openai";
/// The system message the reference sends to API models.
pub const SYSTEM_PROMPT: &str = "You are a helpful assistant.";
/// The checkpoint that means "the first model the server lists".
pub const LOCAL_CHECKPOINT: &str = "local";

/// One configured client of one server and model. Shared by the host's threads.
pub struct OpenAiBackend {
    client: Client,
    base_url: String,
    model: String,
    timeout: Duration,
    /// Kept only to scrub it from any text that leaves the plugin.
    api_key: Option<ApiKey>,
}

impl fmt::Debug for OpenAiBackend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("OpenAiBackend")
            .field("base_url", &self.base_url)
            .field("model", &self.model)
            .field("timeout", &self.timeout)
            .field("sends_api_key", &self.api_key.is_some())
            .finish_non_exhaustive()
    }
}

/// A reply as it came: status, raw `Retry-After`, body.
struct RawReply {
    status: u16,
    retry_after: Option<String>,
    body: Vec<u8>,
}

impl OpenAiBackend {
    /// Builds the client for `options` and settles the model: `checkpoint`, or the server's first
    /// model when it is `"local"`, empty or absent.
    pub fn with_options(checkpoint: Option<&str>, options: Options) -> Result<Self, BackendError> {
        let headers = headers(&options)?;
        let client = Client::builder()
            .timeout(options.timeout)
            .default_headers(headers)
            .user_agent(concat!("vlsbench-backend-openai/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| BackendError::bad_config(format!("cannot build the HTTP client: {}", error_chain(&e))))?;

        let mut backend = Self {
            client,
            base_url: options.base_url,
            model: String::new(),
            timeout: options.timeout,
            api_key: options.api_key,
        };
        backend.model = match checkpoint.map(str::trim) {
            None | Some("") | Some(LOCAL_CHECKPOINT) => backend.first_model()?,
            Some(model) => model.to_string(),
        };
        Ok(backend)
    }

    /// The model every request names.
    pub fn model(&self) -> &str {
        &self.model
    }

    /// The server's base URL, without a trailing slash.
    pub fn base_url(&self) -> &str {
        &self.base_url
    }

    fn url(&self, route: &str) -> String {
        format!("{}/{route}", self.base_url)
    }

    /// `GET {base_url}/models`, first model's id.
    fn first_model(&self) -> Result<String, BackendError> {
        let url = self.url("models");
        let reply = self.send(self.client.get(&url)).map_err(|e| self.scrub(e))?;
        if !(200..300).contains(&reply.status) {
            let mut e =
                reply::classify_status(reply.status, reply.retry_after.as_deref(), &reply.body, SystemTime::now());
            e.message = format!("listing the server's models at {url} for checkpoint \"local\": {}", e.message);
            return Err(self.scrub(e));
        }
        reply::parse_first_model(&reply.body).map_err(|e| self.scrub(e))
    }

    /// Sends one request and reads the whole reply.
    fn send(&self, request: RequestBuilder) -> Result<RawReply, BackendError> {
        let response = request.send().map_err(|e| self.transport_error(&e))?;
        let status = response.status().as_u16();
        let retry_after = response.headers().get(RETRY_AFTER).and_then(|v| v.to_str().ok()).map(str::to_string);
        let body = response.bytes().map_err(|e| self.transport_error(&e))?.to_vec();
        Ok(RawReply { status, retry_after, body })
    }

    fn transport_error(&self, e: &reqwest::Error) -> BackendError {
        let detail = error_chain(e);
        let kind = if e.is_timeout() {
            ErrorKind::Timeout
        } else if e.is_builder() {
            ErrorKind::BadConfig
        } else if e.is_decode() {
            ErrorKind::InvalidResponse
        } else {
            ErrorKind::Network
        };
        let message = match kind {
            ErrorKind::Timeout => format!("no reply within {:.1} s: {detail}", self.timeout.as_secs_f64()),
            ErrorKind::Network if e.is_connect() => format!("cannot connect to {}: {detail}", self.base_url),
            _ => detail,
        };
        BackendError::new(kind, message)
    }

    /// Replaces the API key, should it appear, in an error's message.
    fn scrub(&self, mut e: BackendError) -> BackendError {
        if let Some(key) = &self.api_key
            && !key.expose().is_empty()
            && e.message.contains(key.expose())
        {
            e.message = e.message.replace(key.expose(), "[redacted]");
        }
        e
    }

    /// Serves one request.
    pub fn generate_one(&self, request: &GenerateRequest) -> Result<Generation, BackendError> {
        let body = wire::request_body(&self.model, request)?;
        let reply = self.send(self.client.post(self.url("chat/completions")).json(&body)).map_err(|e| self.scrub(e))?;
        if !(200..300).contains(&reply.status) {
            let e = reply::classify_status(reply.status, reply.retry_after.as_deref(), &reply.body, SystemTime::now());
            return Err(self.scrub(e));
        }
        reply::parse_completion(&reply.body).map_err(|e| self.scrub(e))
    }
}

/// An error and its sources, `: `-joined.
fn error_chain(e: &reqwest::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        let s_text = s.to_string();
        if !text.contains(&s_text) {
            text.push_str(": ");
            text.push_str(&s_text);
        }
        source = s.source();
    }
    text
}

/// The headers every request carries: the key as a bearer token and `extra_headers`, each
/// checked as HTTP allows.
fn headers(options: &Options) -> Result<HeaderMap, BackendError> {
    let mut headers = HeaderMap::new();
    if let Some(key) = &options.api_key {
        let mut value = HeaderValue::from_str(&format!("Bearer {}", key.expose())).map_err(|_| {
            BackendError::bad_config(format!(
                "the API key in `{}` is not a valid HTTP header value",
                options.api_key_env.as_deref().unwrap_or("?")
            ))
        })?;
        value.set_sensitive(true);
        headers.insert(AUTHORIZATION, value);
    }
    for (name, value) in &options.extra_headers {
        let header_name = HeaderName::from_bytes(name.as_bytes()).map_err(|_| {
            BackendError::bad_config(format!("option `extra_headers`: `{name}` is not a valid header name"))
        })?;
        let mut header_value = HeaderValue::from_str(value).map_err(|_| {
            BackendError::bad_config(format!(
                "option `extra_headers`: the value of `{name}` is not a valid header value"
            ))
        })?;
        header_value.set_sensitive(true);
        headers.insert(header_name, header_value);
    }
    Ok(headers)
}

impl Backend for OpenAiBackend {
    fn describe() -> BackendInfo {
        BackendInfo {
            name: "openai".into(),
            version: env!("CARGO_PKG_VERSION").into(),
            description: "Any OpenAI-compatible chat-completions server (OpenAI, vLLM, SGLang, TGI, Ollama)".into(),
            archs: vec![ARCH.into()],
            max_batch: 1,
            concurrent: true,
            devices: vec!["remote".into()],
            checkpoint_is_path: false,
            path_options: vec![],
            // The reference's API request: system "You are a helpful assistant.", user [text, image].
            message_layouts: [(
                ARCH.to_owned(),
                MessageLayout { system: Some(SYSTEM_PROMPT.into()), user: UserParts::TextThenImage },
            )]
            .into(),
        }
    }

    fn options() -> Option<Vec<vlsbench_plugin_api::OptionSpec>> {
        use vlsbench_plugin_api::{OptionKind, OptionSpec};
        Some(vec![
            OptionSpec::new("base_url", OptionKind::String, "the server's base URL (…/v1)")
                .with_default(options::DEFAULT_BASE_URL.into()),
            OptionSpec::new("api_key_env", OptionKind::SecretEnv, "the variable holding the API key; \"\" for none")
                .with_default(options::DEFAULT_API_KEY_ENV.into()),
            OptionSpec::new("timeout_secs", OptionKind::Number, "seconds one request may take")
                .with_default(options::DEFAULT_TIMEOUT_SECS.into()),
            OptionSpec::new("extra_headers", OptionKind::Table, "HTTP headers sent with every request"),
        ])
    }

    /// The options as `create` reads them (URL, timeout, key, headers), without a request: what
    /// the server says is only known when the run asks it.
    fn check(config: &BackendConfig) -> Result<Vec<String>, BackendError> {
        let options = parsed(config)?;
        headers(&options)?;
        let model = match config.checkpoint.as_deref().map(str::trim) {
            None | Some("") | Some(LOCAL_CHECKPOINT) => "the server's first model".to_owned(),
            Some(model) => format!("model {model:?}"),
        };
        let key = options.api_key_env.as_deref().map_or("no API key".to_owned(), |v| format!("the key in ${v}"));
        Ok(vec![format!("{} with {key}; {model}", options.base_url)])
    }

    fn create(config: BackendConfig) -> Result<Self, BackendError> {
        let options = parsed(&config)?;
        Self::with_options(config.checkpoint.as_deref(), options)
    }

    fn generate(&self, requests: Vec<GenerateRequest>) -> Vec<Result<Generation, BackendError>> {
        requests.iter().map(|r| self.generate_one(r)).collect()
    }
}

/// The options of `config`, for the one arch this backend serves.
fn parsed(config: &BackendConfig) -> Result<Options, BackendError> {
    if config.arch != ARCH {
        return Err(BackendError::unsupported(format!(
            "the openai backend serves arch `{ARCH}`, not `{}`",
            config.arch
        )));
    }
    Options::parse(&config.options, |name| std::env::var(name).ok())
}

vlsbench_plugin_api::export_backend!(OpenAiBackend);
