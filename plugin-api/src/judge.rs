//! The judge SDK (feature `judge-guest`): write a judge against this crate's own Rust types and
//! let [`export_judge!`](crate::export_judge) make it a component of the WIT world
//! `vlsbench:judge@0.2.0` (`wit/judge@0.2.0/`).
//!
//! ```ignore
//! use serde::Deserialize;
//! use vlsbench_plugin_api::judge::{Item, Judge, JudgeError, JudgeInfo, Verdict};
//! use vlsbench_plugin_api::Label;
//!
//! #[derive(Deserialize, Default)]
//! #[serde(default, deny_unknown_fields)] // an unknown key in [judge.config] is refused, by name
//! struct Config { strict: bool }
//!
//! struct MyJudge;
//!
//! impl Judge for MyJudge {
//!     type Config = Config;
//!     fn info() -> JudgeInfo { JudgeInfo::new("my-judge", env!("CARGO_PKG_VERSION")) }
//!     fn judge(config: &Config, item: &Item, answer: &str) -> Result<Verdict, JudgeError> {
//!         Ok(Verdict::new(Label::Unsafe, "no rule matched"))
//!     }
//! }
//! vlsbench_plugin_api::export_judge!(MyJudge);
//! ```
//!
//! The macro writes the rest: `info`, `check-config` (the host calls it before the first item and
//! in `validate`: the config is parsed into [`Judge::Config`] with serde, then
//! [`Judge::check_config`] runs) and `judge` (the config parsed again, then [`Judge::judge`]). The
//! generated bindings stay hidden. On a native target (unit tests) the macro exports nothing and
//! [`chat`] answers with an error, so keep a judge's rules in plain functions and test those.

use serde::de::DeserializeOwned;

use crate::{Label, Role};

/// What a judge asks the host for; the manifest must also grant it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Capability {
    /// Send chat requests to the judge model of the manifest's `[judge.model]` ([`chat`]).
    Chat,
    /// Write lines to the host's log ([`log`]).
    Log,
}

/// What a judge says about itself.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JudgeInfo {
    /// Its name, as the manifest's `[judge] component` names it.
    pub name: String,
    /// Its version (recorded in every verdict's provenance).
    pub version: String,
    /// The labels it may emit.
    pub labels: Vec<Label>,
    /// The capabilities it asks for.
    pub capabilities: Vec<Capability>,
}

impl JudgeInfo {
    /// A judge that may emit all three labels and asks for nothing.
    pub fn new(name: impl Into<String>, version: impl Into<String>) -> Self {
        Self { name: name.into(), version: version.into(), labels: Label::ALL.to_vec(), capabilities: Vec::new() }
    }

    /// The same, asking for `capabilities`.
    pub fn with_capabilities(mut self, capabilities: &[Capability]) -> Self {
        self.capabilities = capabilities.to_vec();
        self
    }
}

/// One benchmark item, as a judge sees it. The image itself never reaches the judge: a
/// [`Part::Image`] in a chat request stands for it, and the host attaches the file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Item {
    /// The item's `instruction_id`.
    pub id: u32,
    /// The question, as in `data.json`.
    pub question: String,
    /// Its category.
    pub category: String,
    /// Its sub-category.
    pub sub_category: String,
    /// Where it comes from.
    pub source: String,
    /// Whether the item has an image a chat request can refer to.
    pub has_image: bool,
}

/// A judge's decision on one answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verdict {
    /// The label.
    pub label: Label,
    /// Why, in a sentence.
    pub explanation: String,
    /// The judge's raw output (a judge model's reply), kept for audit.
    pub raw: String,
}

impl Verdict {
    /// A verdict whose raw output is its explanation (a judge without a model).
    pub fn new(label: Label, explanation: impl Into<String>) -> Self {
        let explanation = explanation.into();
        Self { label, raw: explanation.clone(), explanation }
    }
}

/// Why a judge could not label an answer. Never a label.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum JudgeError {
    /// The judge model's reply could not be read as a verdict.
    #[error("invalid judge output: {0}")]
    InvalidOutput(String),
    /// The judge model refused to judge.
    #[error("the judge refused: {0}")]
    Refused(String),
    /// A chat call failed.
    #[error("chat failed: {0}")]
    ChatFailed(String),
    /// Anything else.
    #[error("{0}")]
    Other(String),
}

/// Why a [`chat`] call gave no reply.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ChatError {
    /// The judge model refused (a content filter, an explicit refusal).
    #[error("the judge model refused: {0}")]
    Refused(String),
    /// The request failed after the host's retries.
    #[error("{0}")]
    Failed(String),
}

impl From<ChatError> for JudgeError {
    fn from(error: ChatError) -> Self {
        match error {
            ChatError::Refused(why) => Self::Refused(why),
            ChatError::Failed(why) => Self::ChatFailed(why),
        }
    }
}

/// One part of a chat message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Part {
    /// Text.
    Text(String),
    /// This item's image; the host attaches the file.
    Image,
}

/// One chat turn.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    /// Who speaks.
    pub role: Role,
    /// What is said, in order.
    pub content: Vec<Part>,
}

/// A chat request to the judge model.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct ChatRequest {
    /// The turns.
    pub messages: Vec<Message>,
    /// Sampling temperature; `None` leaves the manifest's `[judge.model.generation]` choice.
    pub temperature: Option<f32>,
    /// Nucleus sampling; `None` as above.
    pub top_p: Option<f32>,
    /// Token budget; `None` as above.
    pub max_tokens: Option<u32>,
    /// A JSON-schema response format (OpenAI's `response_format` object), as JSON text.
    pub response_format: Option<String>,
}

/// The level of a [`log`] line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogLevel {
    /// Debug.
    Debug,
    /// Info.
    Info,
    /// Warn.
    Warn,
    /// Error.
    Error,
}

/// What a judge author implements; [`export_judge!`](crate::export_judge) does the rest.
pub trait Judge {
    /// The judge's `[judge.config]`, read with serde from the JSON the host passes (`{}` when the
    /// manifest has none). Put `#[serde(default, deny_unknown_fields)]` on it: an unknown key is
    /// then refused, and the error names it.
    type Config: DeserializeOwned;

    /// Name, version, labels, and the capabilities it asks for.
    fn info() -> JudgeInfo;

    /// Checks a config that parsed, beyond its shape (ranges, placeholders). The default accepts.
    fn check_config(_config: &Self::Config) -> Result<(), String> {
        Ok(())
    }

    /// Labels one answer.
    fn judge(config: &Self::Config, item: &Item, answer: &str) -> Result<Verdict, JudgeError>;
}

/// Reads a judge's config from the host's JSON text (empty text and `null` read as `{}`) with
/// [`read_table`](crate::options::read_table), then runs [`Judge::check_config`]. The error says
/// what is wrong, naming the key.
pub fn parse_config<J: Judge>(json: &str) -> Result<J::Config, String> {
    let table = match json.trim() {
        "" => serde_json::Value::Null,
        text => serde_json::from_str(text).map_err(|e| format!("the config is not valid JSON: {e}"))?,
    };
    let config = crate::options::read_table::<J::Config>(&table)?;
    J::check_config(&config)?;
    Ok(config)
}

/// Sends a chat request to the judge model (the `chat` capability, asked for in
/// [`Judge::info`] and granted by the manifest); returns the reply text.
pub fn chat(request: &ChatRequest) -> Result<String, ChatError> {
    #[cfg(target_arch = "wasm32")]
    return guest::chat(request);
    #[cfg(not(target_arch = "wasm32"))]
    {
        let _ = request;
        Err(ChatError::Failed("chat is only available inside a judge component".to_owned()))
    }
}

/// Writes a line to the host's log (the `log` capability). Outside a component it does nothing.
pub fn log(level: LogLevel, message: &str) {
    #[cfg(target_arch = "wasm32")]
    guest::log(level, message);
    #[cfg(not(target_arch = "wasm32"))]
    let _ = (level, message);
}

/// The bindings generated from `wit/judge@0.2.0` and the conversions the export macro uses.
#[doc(hidden)]
pub mod __private {
    pub use super::guest::*;
}

mod guest {
    // The generated bindings take every field of a WIT record as an argument.
    #![allow(clippy::too_many_arguments, missing_docs)]

    wit_bindgen::generate!({
        path: "wit/judge@0.2.0",
        world: "judge",
        pub_export_macro: true,
        export_macro_name: "__export_judge_world",
        default_bindings_module: "vlsbench_plugin_api::judge::__private",
    });

    use self::vlsbench::judge::types as wit;
    use super::{self as sdk, ChatError, ChatRequest, Judge, LogLevel, Part, parse_config};
    use crate::{Label, Role};

    /// The generated `Guest` over a [`Judge`].
    pub struct Adapter<J>(std::marker::PhantomData<J>);

    impl<J: Judge> Guest for Adapter<J> {
        fn info() -> wit::Info {
            let info = J::info();
            wit::Info {
                name: info.name,
                version: info.version,
                labels: info.labels.into_iter().map(label).collect(),
                capabilities: info
                    .capabilities
                    .into_iter()
                    .map(|c| match c {
                        super::Capability::Chat => wit::Capability::Chat,
                        super::Capability::Log => wit::Capability::Log,
                    })
                    .collect(),
            }
        }

        fn check_config(config: String) -> Result<(), String> {
            parse_config::<J>(&config).map(drop)
        }

        fn judge(config: String, item: wit::Item, answer: String) -> Result<wit::Verdict, wit::JudgeError> {
            let config = parse_config::<J>(&config).map_err(wit::JudgeError::Other)?;
            let item = sdk::Item {
                id: item.id,
                question: item.question,
                category: item.category,
                sub_category: item.sub_category,
                source: item.source,
                has_image: item.has_image,
            };
            match J::judge(&config, &item, &answer) {
                Ok(v) => Ok(wit::Verdict { label: label(v.label), explanation: v.explanation, raw: v.raw }),
                Err(sdk::JudgeError::InvalidOutput(m)) => Err(wit::JudgeError::InvalidOutput(m)),
                Err(sdk::JudgeError::Refused(m)) => Err(wit::JudgeError::Refused(m)),
                Err(sdk::JudgeError::ChatFailed(m)) => Err(wit::JudgeError::ChatFailed(m)),
                Err(sdk::JudgeError::Other(m)) => Err(wit::JudgeError::Other(m)),
            }
        }
    }

    fn label(label: Label) -> wit::Label {
        match label {
            Label::SafeRefusal => wit::Label::SafeRefusal,
            Label::SafeWarning => wit::Label::SafeWarning,
            Label::Unsafe => wit::Label::Unsafe,
        }
    }

    #[cfg_attr(not(target_arch = "wasm32"), allow(dead_code))]
    pub(super) fn chat(request: &ChatRequest) -> Result<String, ChatError> {
        let messages = request
            .messages
            .iter()
            .map(|m| wit::Message {
                role: match m.role {
                    Role::System => wit::Role::System,
                    Role::User => wit::Role::User,
                    Role::Assistant => wit::Role::Assistant,
                },
                content: m
                    .content
                    .iter()
                    .map(|p| match p {
                        Part::Text(text) => wit::ContentPart::Text(text.clone()),
                        Part::Image => wit::ContentPart::Image,
                    })
                    .collect(),
            })
            .collect();
        let request = wit::ChatRequest {
            messages,
            temperature: request.temperature,
            top_p: request.top_p,
            max_tokens: request.max_tokens,
            response_format: request.response_format.clone(),
        };
        vlsbench::judge::host::chat(&request).map_err(|e| match e {
            wit::ChatError::Refused(why) => ChatError::Refused(why),
            wit::ChatError::Failed(why) => ChatError::Failed(why),
        })
    }

    #[cfg_attr(not(target_arch = "wasm32"), allow(dead_code))]
    pub(super) fn log(level: LogLevel, message: &str) {
        let level = match level {
            LogLevel::Debug => wit::LogLevel::Debug,
            LogLevel::Info => wit::LogLevel::Info,
            LogLevel::Warn => wit::LogLevel::Warn,
            LogLevel::Error => wit::LogLevel::Error,
        };
        vlsbench::judge::host::log(level, message);
    }
}

/// Exports a type implementing [`Judge`](crate::judge::Judge) as the judge component (on
/// `wasm32`; on other targets it expands to nothing).
#[macro_export]
macro_rules! export_judge {
    ($judge:ty) => {
        #[cfg(target_arch = "wasm32")]
        #[doc(hidden)]
        type __VlsbenchJudgeExport = $crate::judge::__private::Adapter<$judge>;
        #[cfg(target_arch = "wasm32")]
        $crate::judge::__private::__export_judge_world!(
            __VlsbenchJudgeExport with_types_in $crate::judge::__private
        );
    };
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(serde::Deserialize, Debug, PartialEq)]
    #[serde(default, deny_unknown_fields)]
    struct Config {
        prompt: String,
        max_tokens: u32,
    }

    impl Default for Config {
        fn default() -> Self {
            Self { prompt: "p".into(), max_tokens: 128 }
        }
    }

    struct Sample;

    impl Judge for Sample {
        type Config = Config;
        fn info() -> JudgeInfo {
            JudgeInfo::new("sample", "1").with_capabilities(&[Capability::Chat])
        }
        fn check_config(config: &Config) -> Result<(), String> {
            if config.max_tokens == 0 { Err("`max_tokens` must be positive".into()) } else { Ok(()) }
        }
        fn judge(_: &Config, _: &Item, _: &str) -> Result<Verdict, JudgeError> {
            Ok(Verdict::new(Label::Unsafe, "x"))
        }
    }

    #[test]
    fn an_absent_config_reads_as_the_defaults() {
        for text in ["", " null ", "{}"] {
            assert_eq!(parse_config::<Sample>(text), Ok(Config::default()), "{text:?}");
        }
    }

    #[test]
    fn an_unknown_config_key_is_refused_by_name_without_a_json_position() {
        let err = parse_config::<Sample>(r#"{"promt": "x"}"#).expect_err("unknown key");
        assert!(err.contains("unknown field `promt`") && err.contains("`prompt`"), "{err}");
        assert!(!err.contains("line"), "{err}");
    }

    #[test]
    fn a_config_that_parses_is_checked_by_the_judge() {
        assert_eq!(parse_config::<Sample>(r#"{"max_tokens": 0}"#), Err("`max_tokens` must be positive".into()));
        let err = parse_config::<Sample>(r#"{"prompt": "x", "max_tokens": "9"}"#).expect_err("a string");
        assert!(err.contains("`max_tokens`: invalid type"), "{err}");
        assert!(parse_config::<Sample>(r#"["p", 1]"#).expect_err("an array").contains("expected a table"));
        assert!(parse_config::<Sample>("{").is_err());
    }

    #[test]
    fn chat_outside_a_component_is_an_error_not_a_panic() {
        let err: JudgeError = chat(&ChatRequest::default()).expect_err("native").into();
        assert!(matches!(err, JudgeError::ChatFailed(_)));
        log(LogLevel::Info, "nothing happens");
    }
}
