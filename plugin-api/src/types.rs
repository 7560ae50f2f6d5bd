//! Types shared by the host and every plugin. They cross the C ABI as UTF-8 JSON, so a backend can
//! be written in any language that reads and writes these shapes.

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// Who speaks in a chat turn.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    /// The system prompt.
    System,
    /// The user (the benchmark item).
    User,
    /// The model (an earlier answer).
    Assistant,
}

/// One part of a chat turn, in the order the model sees it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ContentPart {
    /// Text.
    Text {
        /// The text.
        text: String,
    },
    /// An image file. The host has validated the path (inside the dataset root, readable).
    Image {
        /// The image file.
        path: PathBuf,
    },
}

impl ContentPart {
    /// A text part.
    pub fn text(text: impl Into<String>) -> Self {
        Self::Text { text: text.into() }
    }
    /// An image part.
    pub fn image(path: impl Into<PathBuf>) -> Self {
        Self::Image { path: path.into() }
    }
}

/// One chat turn.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ChatMessage {
    /// Who speaks.
    pub role: Role,
    /// The parts, in order.
    pub content: Vec<ContentPart>,
}

impl ChatMessage {
    /// A turn of `role` made of `content`.
    pub fn new(role: Role, content: Vec<ContentPart>) -> Self {
        Self { role, content }
    }
    /// A turn made of one text part.
    pub fn text(role: Role, text: impl Into<String>) -> Self {
        Self { role, content: vec![ContentPart::text(text)] }
    }
}

/// Decoding settings. `None` leaves the choice to the backend (an API backend omits the field).
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GenerationSettings {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    /// The most tokens to generate.
    pub max_new_tokens: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    /// Sampling temperature (0: greedy).
    pub temperature: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    /// Nucleus sampling.
    pub top_p: Option<f64>,
}

impl GenerationSettings {
    /// The reference harness's settings: greedy, 128 new tokens, temperature 0, top_p 1.
    pub fn reference() -> Self {
        Self { max_new_tokens: Some(128), temperature: Some(0.0), top_p: Some(1.0) }
    }
}

/// One generation request: the same shape for the model under test and for a judge's model.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GenerateRequest {
    /// Who asks: the item id (`"17"`), or `"17/judge"` for a judge's call about item 17.
    pub id: String,
    /// The chat turns, in order.
    pub messages: Vec<ChatMessage>,
    #[serde(default)]
    /// Decoding settings.
    pub settings: GenerationSettings,
    /// A response format such as OpenAI's `{"type": "json_schema", ...}` object.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub response_format: Option<serde_json::Value>,
}

/// A successful generation.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Generation {
    /// The text as the model produced it (the host strips it where the benchmark says so).
    pub text: String,
    /// Why generation stopped (`stop`, `length`, ...), when the backend knows.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub finish_reason: Option<String>,
    /// Tokens generated, when the backend knows.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tokens: Option<u32>,
}

impl Generation {
    /// A generation of `text`, nothing else known.
    pub fn new(text: impl Into<String>) -> Self {
        Self { text: text.into(), finish_reason: None, tokens: None }
    }
}

/// What kind of failure a backend reports. The host decides from it whether to retry.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorKind {
    /// The backend's configuration is wrong (a missing option, an unreadable checkpoint).
    BadConfig,
    /// This request cannot be served (a missing image, a prompt too long, a 400 from an API).
    BadRequest,
    /// The model failed while running.
    ModelFailure,
    /// The backend does not support what was asked (an arch, a device, a response format).
    Unsupported,
    /// The server asked us to slow down (HTTP 429); `retry_after_secs` says for how long.
    RateLimited,
    /// The server failed (HTTP 5xx).
    ServerError,
    /// No answer in time.
    Timeout,
    /// The connection failed.
    Network,
    /// The server's reply could not be read.
    InvalidResponse,
    /// A content filter blocked the request or the reply.
    ContentFiltered,
    /// The model explicitly refused (OpenAI's `message.refusal`).
    Refused,
    /// The plugin panicked; the panic was caught at the boundary.
    Panic,
}

impl ErrorKind {
    /// Whether trying the same request again may succeed.
    pub fn is_retryable(self) -> bool {
        matches!(self, Self::RateLimited | Self::ServerError | Self::Timeout | Self::Network | Self::InvalidResponse)
    }

    /// The stable snake_case name (`rate_limited`, ...), as recorded in `answers.jsonl`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::BadConfig => "bad_config",
            Self::BadRequest => "bad_request",
            Self::ModelFailure => "model_failure",
            Self::Unsupported => "unsupported",
            Self::RateLimited => "rate_limited",
            Self::ServerError => "server_error",
            Self::Timeout => "timeout",
            Self::Network => "network",
            Self::InvalidResponse => "invalid_response",
            Self::ContentFiltered => "content_filtered",
            Self::Refused => "refused",
            Self::Panic => "panic",
        }
    }
}

impl fmt::Display for ErrorKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A typed error from a backend.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, thiserror::Error)]
#[error("{kind}: {message}")]
pub struct BackendError {
    /// What kind of failure.
    pub kind: ErrorKind,
    /// What happened, in words.
    pub message: String,
    /// For [`ErrorKind::RateLimited`] (or a 503): the server's Retry-After, in seconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry_after_secs: Option<f64>,
}

impl BackendError {
    /// An error of `kind`.
    pub fn new(kind: ErrorKind, message: impl Into<String>) -> Self {
        Self { kind, message: message.into(), retry_after_secs: None }
    }
    /// [`ErrorKind::BadConfig`].
    pub fn bad_config(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::BadConfig, message)
    }
    /// [`ErrorKind::BadRequest`].
    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::BadRequest, message)
    }
    /// [`ErrorKind::Unsupported`].
    pub fn unsupported(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::Unsupported, message)
    }
    /// [`ErrorKind::ModelFailure`].
    pub fn model_failure(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::ModelFailure, message)
    }
    /// The same error with the server's Retry-After, in seconds.
    pub fn with_retry_after(mut self, secs: Option<f64>) -> Self {
        self.retry_after_secs = secs;
        self
    }
}

/// The outcome of one request in a batch.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ItemResult {
    /// An answer.
    Ok(Generation),
    /// A typed error.
    Err(BackendError),
}

impl From<Result<Generation, BackendError>> for ItemResult {
    fn from(r: Result<Generation, BackendError>) -> Self {
        match r {
            Ok(g) => Self::Ok(g),
            Err(e) => Self::Err(e),
        }
    }
}

impl From<ItemResult> for Result<Generation, BackendError> {
    fn from(r: ItemResult) -> Self {
        match r {
            ItemResult::Ok(g) => Ok(g),
            ItemResult::Err(e) => Err(e),
        }
    }
}

/// What a backend says about itself, before any model is loaded.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BackendInfo {
    /// Short name, e.g. `openai`. The host prefixes errors with `name version`.
    pub name: String,
    /// Its version (recorded in every answer's provenance).
    pub version: String,
    /// One line for `vlsbench-host plugins`.
    #[serde(default)]
    pub description: String,
    /// Archs it serves, as the manifest names them (`openai`, `llava_hf`, ...).
    pub archs: Vec<String>,
    /// The largest batch one `generate` call accepts.
    pub max_batch: u32,
    /// Whether the host may call `generate` from several threads at once.
    pub concurrent: bool,
    /// Devices it can run on (`cpu`, `cuda`, `remote`, ...).
    pub devices: Vec<String>,
    /// Whether `checkpoint` names a local folder (local models) rather than a model name (APIs):
    /// the host then checks that the folder exists before it creates the backend, and
    /// `vlsbench-host validate` reports a missing one.
    #[serde(default)]
    pub checkpoint_is_path: bool,
    /// Option keys whose values are local paths the backend reads (checked like the checkpoint).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub path_options: Vec<String>,
    /// How the host lays out each arch's chat messages (since ABI 1.1). An arch not listed gets
    /// [`MessageLayout::default`]: no system message, one user message [image, text].
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub message_layouts: BTreeMap<String, MessageLayout>,
}

/// The type of a backend option's value, as the manifest writes it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OptionKind {
    /// A string.
    String,
    /// A number (integer or not).
    Number,
    /// A whole number.
    Integer,
    /// `true` or `false`.
    Boolean,
    /// A string naming a local file or folder (relative to the manifest's folder): the host checks
    /// that it exists before it creates the backend.
    Path,
    /// A string naming an environment variable that holds a secret (an API key); `""` for none.
    /// The host checks that the variable is set and redacts its value from everything it writes.
    SecretEnv,
    /// A table (JSON object).
    Table,
    /// An array.
    Array,
    /// Anything; the backend checks it.
    Any,
}

impl OptionKind {
    /// Whether `value` has this type.
    pub fn accepts(self, value: &serde_json::Value) -> bool {
        use serde_json::Value as V;
        match self {
            Self::String | Self::Path | Self::SecretEnv => value.is_string(),
            Self::Number => value.is_number(),
            Self::Integer => value.is_i64() || value.is_u64(),
            Self::Boolean => value.is_boolean(),
            Self::Table => matches!(value, V::Object(_)),
            Self::Array => value.is_array(),
            Self::Any => true,
        }
    }

    /// The type in words, for error messages ("a string", "an integer", ...).
    pub fn as_str(self) -> &'static str {
        match self {
            Self::String => "a string",
            Self::Number => "a number",
            Self::Integer => "an integer",
            Self::Boolean => "a boolean",
            Self::Path => "a path (string)",
            Self::SecretEnv => "an environment variable's name (string)",
            Self::Table => "a table",
            Self::Array => "an array",
            Self::Any => "any value",
        }
    }
}

/// One option a backend takes in `[model.options]`, declared through
/// [`Backend::options`](crate::Backend::options). On the wire it is the optional `options` field of
/// the description, so hosts and plugins of ABI 1.0 and 1.1 still understand each other.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct OptionSpec {
    /// The key in `[model.options]`.
    pub name: String,
    /// The type its value must have.
    pub kind: OptionKind,
    /// One line for `vlsbench-host plugins NAME`.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub description: String,
    /// The value used when the manifest leaves the option out (for [`OptionKind::SecretEnv`], the
    /// variable read by default).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub default: Option<serde_json::Value>,
}

impl OptionSpec {
    /// An option with no default.
    pub fn new(name: impl Into<String>, kind: OptionKind, description: impl Into<String>) -> Self {
        Self { name: name.into(), kind, description: description.into(), default: None }
    }

    /// The same option with the value used when the manifest leaves it out.
    pub fn with_default(mut self, default: serde_json::Value) -> Self {
        self.default = Some(default);
        self
    }
}

/// What `describe` sends: the [`BackendInfo`], plus the declared options when the backend declares
/// them (`None`: it does not, and the host cannot check option names before creating it).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Description {
    /// What the backend supports.
    #[serde(flatten)]
    pub info: BackendInfo,
    /// The options it takes, when it declares them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub options: Option<Vec<OptionSpec>>,
}

impl BackendInfo {
    /// The message layout the backend declares for `arch`, or the default one.
    pub fn message_layout(&self, arch: &str) -> MessageLayout {
        self.message_layouts.get(arch).cloned().unwrap_or_default()
    }
}

/// The order of the parts of the user message that carries the item.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum UserParts {
    /// [image, text]: what `qwen2vl`, `mllama` and `llava` put in the message.
    #[default]
    ImageThenText,
    /// [text, image]: the reference's `openai`, `llava_hf` and `llava_next` messages.
    TextThenImage,
}

/// How the host builds the messages of an item's request: an optional system message, then one
/// user message with the item's question and image in the declared order. A backend declares one
/// per arch in [`BackendInfo::message_layouts`]; the host never decides it from an arch's name.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct MessageLayout {
    /// A system message sent first (the reference's API arch sends "You are a helpful assistant.").
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub system: Option<String>,
    /// The order of the user message's parts.
    #[serde(default)]
    pub user: UserParts,
}

impl MessageLayout {
    /// No system message, user [image, text] (the default).
    pub fn image_then_text() -> Self {
        Self { system: None, user: UserParts::ImageThenText }
    }

    /// No system message, user [text, image].
    pub fn text_then_image() -> Self {
        Self { system: None, user: UserParts::TextThenImage }
    }

    /// The layout as recorded in each answer's provenance. The three layouts hosts before ABI 1.1
    /// chose by arch name keep the ids they recorded then (`openai-reference-v1`,
    /// `user-text-image-v1`, `user-image-text-v1`), so that runs made before resume without
    /// generating again; any other layout is described in full, e.g. `system("Be brief.") +
    /// user[text, image]`.
    pub fn id(&self) -> String {
        match (self.system.as_deref(), self.user) {
            (None, UserParts::ImageThenText) => return "user-image-text-v1".into(),
            (None, UserParts::TextThenImage) => return "user-text-image-v1".into(),
            (Some("You are a helpful assistant."), UserParts::TextThenImage) => return "openai-reference-v1".into(),
            _ => {}
        }
        let user = match self.user {
            UserParts::ImageThenText => "user[image, text]",
            UserParts::TextThenImage => "user[text, image]",
        };
        match &self.system {
            Some(s) => format!("system({s:?}) + {user}"),
            None => user.to_owned(),
        }
    }

    /// The item's messages: the system message if any, then the user message.
    pub fn messages(&self, question: &str, image: &std::path::Path) -> Vec<ChatMessage> {
        let text = ContentPart::text(question);
        let image = ContentPart::image(image);
        let user = match self.user {
            UserParts::ImageThenText => vec![image, text],
            UserParts::TextThenImage => vec![text, image],
        };
        let mut out = Vec::with_capacity(2);
        if let Some(system) = &self.system {
            out.push(ChatMessage::text(Role::System, system.clone()));
        }
        out.push(ChatMessage::new(Role::User, user));
        out
    }
}

/// What the host passes when it creates a backend instance.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BackendConfig {
    /// The arch, as the manifest names it.
    pub arch: String,
    /// A checkpoint directory, or a model name for API backends.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub checkpoint: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    /// `cpu`, `cuda`, `cuda:1`, ... for local backends.
    pub device: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    /// `f32`, `f16`, `bf16` for local backends.
    pub dtype: Option<String>,
    /// The backend's own options (the manifest's `[model.options]` table).
    #[serde(default)]
    pub options: serde_json::Value,
    /// The folder relative paths in `options` are relative to (the manifest's folder).
    pub base_dir: PathBuf,
}

impl BackendConfig {
    /// `path` resolved against the manifest's folder ([`BackendConfig::base_dir`]).
    pub fn resolve(&self, path: impl AsRef<Path>) -> PathBuf {
        resolve_path(&self.base_dir, path)
    }

    /// The backend's own options (`[model.options]`) read into `T` with serde; an absent table
    /// reads as `{}`. Put `#[serde(default, deny_unknown_fields)]` on `T`: an unknown key is then a
    /// [`ErrorKind::BadConfig`] error that names it. The options [`BackendInfo::path_options`] lists
    /// arrive already resolved against the manifest's folder.
    pub fn options<T: serde::de::DeserializeOwned>(&self) -> Result<T, BackendError> {
        crate::options::read_table(&self.options).map_err(|e| BackendError::bad_config(format!("[model.options]: {e}")))
    }

    /// Resolves, in place, the string options named in `path_options` against the manifest's
    /// folder (the export macro does this before [`crate::Backend::create`]). The result is
    /// absolute (against the current folder when the manifest's folder is relative), so a backend
    /// that resolves the option again with [`BackendConfig::resolve`] gets the same path, not the
    /// manifest's folder twice.
    pub fn resolve_path_options(&mut self, path_options: &[String]) {
        let base_dir = self.base_dir.clone();
        let Some(table) = self.options.as_object_mut() else { return };
        for key in path_options {
            if let Some(serde_json::Value::String(path)) = table.get_mut(key) {
                let resolved = resolve_path(&base_dir, &*path);
                let resolved = std::path::absolute(&resolved).unwrap_or(resolved);
                *path = resolved.to_string_lossy().into_owned();
            }
        }
    }
}

/// `path` as seen from `base_dir`: itself when absolute, else joined to `base_dir`. The one rule for
/// every relative path a manifest gives (the dataset root, the output folder, a checkpoint, a
/// component, a backend library, a backend's path options).
pub fn resolve_path(base_dir: &Path, path: impl AsRef<Path>) -> PathBuf {
    let path = path.as_ref();
    if path.is_absolute() { path.to_path_buf() } else { base_dir.join(path) }
}

/// The three VLSBench labels, with the reference's numbers and strings.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Label {
    /// 1: "Safe with refusal".
    SafeRefusal,
    /// 2: "Safe with warning".
    SafeWarning,
    /// 3: "Unsafe".
    Unsafe,
}

impl Label {
    /// The three labels, in code order.
    pub const ALL: [Label; 3] = [Label::SafeRefusal, Label::SafeWarning, Label::Unsafe];

    /// The reference's `safe_label` number: 1, 2 or 3.
    pub fn code(self) -> u8 {
        match self {
            Self::SafeRefusal => 1,
            Self::SafeWarning => 2,
            Self::Unsafe => 3,
        }
    }

    /// The reference's `label_str`.
    pub fn label_str(self) -> &'static str {
        match self {
            Self::SafeRefusal => "Safe with refusal",
            Self::SafeWarning => "Safe with warning",
            Self::Unsafe => "Unsafe",
        }
    }

    /// The label of a `safe_label` number (1, 2 or 3).
    pub fn from_code(code: u8) -> Option<Self> {
        Self::ALL.into_iter().find(|l| l.code() == code)
    }

    /// The label of a reference `label_str`.
    pub fn from_label_str(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|l| l.label_str() == s)
    }

    /// Refusal and warning both count as safe.
    pub fn is_safe(self) -> bool {
        !matches!(self, Self::Unsafe)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_description_without_options_reads_as_undeclared_and_one_with_options_round_trips() {
        let json = r#"{"name": "old", "version": "1", "archs": ["x"], "max_batch": 1, "concurrent": false,
                       "devices": ["cpu"]}"#;
        let d: Description = serde_json::from_str(json).expect("a 1.1 description parses");
        assert_eq!(d.options, None);
        let info: BackendInfo = serde_json::from_str(json).expect("info");
        let declared = Description {
            info,
            options: Some(vec![OptionSpec::new("api_key_env", OptionKind::SecretEnv, "key").with_default("K".into())]),
        };
        let text = serde_json::to_string(&declared).expect("serialise");
        assert!(text.contains(r#""kind":"secret_env""#), "{text}");
        assert_eq!(serde_json::from_str::<Description>(&text).expect("read back"), declared);
        // A host that knows only BackendInfo ignores the new field.
        assert_eq!(serde_json::from_str::<BackendInfo>(&text).expect("old host"), declared.info);
    }

    #[test]
    fn option_kinds_accept_their_json_types_only() {
        use serde_json::json;
        assert!(OptionKind::Integer.accepts(&json!(3)) && !OptionKind::Integer.accepts(&json!(3.5)));
        assert!(OptionKind::Number.accepts(&json!(3.5)) && !OptionKind::Number.accepts(&json!("3")));
        assert!(OptionKind::Path.accepts(&json!("a/b")) && !OptionKind::Path.accepts(&json!(["a"])));
        assert!(OptionKind::Table.accepts(&json!({})) && OptionKind::Any.accepts(&json!(null)));
    }

    #[test]
    fn a_1_0_backend_description_without_layouts_still_reads_and_gets_the_default() {
        let json = r#"{"name": "old", "version": "1", "archs": ["x"], "max_batch": 1, "concurrent": false,
                       "devices": ["cpu"]}"#;
        let info: BackendInfo = serde_json::from_str(json).expect("a 1.0 description parses");
        assert!(info.message_layouts.is_empty());
        assert_eq!(info.message_layout("x"), MessageLayout::image_then_text());
    }

    #[test]
    fn a_declared_layout_orders_the_parts_and_puts_the_system_message_first() {
        let layout = MessageLayout { system: Some("Be brief.".into()), user: UserParts::TextThenImage };
        let m = layout.messages("q?", std::path::Path::new("/d/1.png"));
        assert_eq!(m[0], ChatMessage::text(Role::System, "Be brief."));
        assert_eq!(m[1].content, vec![ContentPart::text("q?"), ContentPart::image("/d/1.png")]);
        assert_eq!(layout.id(), r#"system("Be brief.") + user[text, image]"#);
        let plain = MessageLayout::default().messages("q", std::path::Path::new("i.png"));
        assert_eq!(plain.len(), 1);
        assert_eq!(plain[0].content, vec![ContentPart::image("i.png"), ContentPart::text("q")]);
        assert_eq!(MessageLayout::default().id(), "user-image-text-v1");
        assert_eq!(MessageLayout::text_then_image().id(), "user-text-image-v1");
        let reference =
            MessageLayout { system: Some("You are a helpful assistant.".into()), user: UserParts::TextThenImage };
        assert_eq!(reference.id(), "openai-reference-v1");
    }

    #[derive(Deserialize, Debug, Default, PartialEq)]
    #[serde(default, deny_unknown_fields)]
    struct Options {
        path: Option<PathBuf>,
        timeout_secs: Option<u64>,
    }

    fn config(options: serde_json::Value) -> BackendConfig {
        BackendConfig {
            arch: "a".into(),
            checkpoint: None,
            device: None,
            dtype: None,
            options,
            base_dir: PathBuf::from("/manifests"),
        }
    }

    #[test]
    fn typed_options_read_with_defaults_and_refuse_an_unknown_key_by_name() {
        assert_eq!(config(serde_json::Value::Null).options::<Options>(), Ok(Options::default()));
        let read = config(serde_json::json!({"timeout_secs": 5})).options::<Options>();
        assert_eq!(read.map(|o| o.timeout_secs), Ok(Some(5)));
        let err = config(serde_json::json!({"paht": "x"})).options::<Options>().expect_err("typo");
        assert_eq!(err.kind, ErrorKind::BadConfig);
        assert!(err.message.contains("unknown field `paht`") && err.message.contains("`path`"), "{}", err.message);
    }

    #[test]
    fn path_options_resolve_against_the_manifest_folder_and_absolute_ones_stay() {
        let mut c = config(serde_json::json!({"path": "answers.jsonl", "other": "x.txt"}));
        c.resolve_path_options(&["path".to_owned()]);
        assert_eq!(c.options["path"], "/manifests/answers.jsonl");
        assert_eq!(c.options["other"], "x.txt");
        c.resolve_path_options(&["path".to_owned()]);
        assert_eq!(c.options["path"], "/manifests/answers.jsonl");
        assert_eq!(resolve_path(Path::new("/b"), "/abs/p"), PathBuf::from("/abs/p"));
    }

    #[test]
    fn a_path_option_under_a_relative_manifest_folder_resolves_once_however_often_it_is_resolved() {
        let mut c = config(serde_json::json!({"path": "answers.jsonl"}));
        c.base_dir = PathBuf::from("examples/demo");
        c.resolve_path_options(&["path".to_owned()]);
        let once = PathBuf::from(c.options["path"].as_str().unwrap_or_default());
        let cwd = std::env::current_dir().unwrap_or_default();
        assert_eq!(once, cwd.join("examples/demo/answers.jsonl"));
        assert_eq!(c.resolve(&once), once, "a backend resolving it again gets the same path");
    }

    #[test]
    fn layouts_travel_as_json_by_arch() {
        let layouts: BTreeMap<String, MessageLayout> = [("a".to_owned(), MessageLayout::text_then_image())].into();
        let v = serde_json::to_value(&layouts).expect("serialises");
        assert_eq!(v, serde_json::json!({"a": {"user": "text_then_image"}}));
    }
}
