//! One adapter per frozen judge WIT version, and the dispatch between them.
//!
//! Each `v*` module generates the host bindings of its folder `plugin-api/wit/judge@<version>/`
//! and converts its types to the host's version-neutral ones ([`JudgeInfo`], [`Verdict`],
//! [`JudgeError`], [`ChatCall`](super::imports::ChatCall)); [`adapter!`] writes the conversions
//! every version shares. A component's version is read from the judge interfaces it imports, else
//! from its exports (`check-config` is 0.2.0's); [`JudgePre`] and [`JudgeInstance`] are enums over
//! the versions, as in Zed's extension host. A new version is a new module, a new variant, and a
//! line in [`WIT_VERSIONS`]; the old ones stay.

use wasmtime::component::{Component, InstancePre, Linker};
use wasmtime::{Engine, Store};

use super::sandbox::CallState;
use super::{JudgeError, JudgeInfo, JudgeItem, Verdict};

mod v0_1_0;
mod v0_2_0;

/// The judge WIT package versions this host runs, oldest first.
pub const WIT_VERSIONS: &[&str] = &[v0_1_0::VERSION, v0_2_0::VERSION];

/// The package every judge interface belongs to.
const PACKAGE: &str = "vlsbench:judge/";

/// A judge WIT version this host runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum WitVersion {
    V0_1_0,
    V0_2_0,
}

impl WitVersion {
    pub(super) fn as_str(self) -> &'static str {
        match self {
            Self::V0_1_0 => v0_1_0::VERSION,
            Self::V0_2_0 => v0_2_0::VERSION,
        }
    }

    fn parse(version: &str) -> Option<Self> {
        [Self::V0_1_0, Self::V0_2_0].into_iter().find(|v| v.as_str() == version)
    }
}

/// Adds the host imports of every version to `linker`.
pub(super) fn add_to_linker(linker: &mut Linker<CallState>) -> wasmtime::Result<()> {
    v0_1_0::add_to_linker(linker)?;
    v0_2_0::add_to_linker(linker)
}

/// The version `component` was built for; `Err` holds a version this host does not run.
pub(super) fn detect_version(engine: &Engine, component: &Component) -> Result<WitVersion, String> {
    let ty = component.component_type();
    let imported: Vec<&str> = ty.imports(engine).filter_map(|(name, _)| judge_import_version(name)).collect();
    if let Some(found) = imported.first() {
        return match WitVersion::parse(found) {
            Some(version) if imported.iter().all(|v| v == found) => Ok(version),
            Some(_) => Err(imported.join(" and ")),
            None => Err((*found).to_owned()),
        };
    }
    // A judge that calls no host function may import no judge interface at all.
    let exports_check_config = ty.exports(engine).any(|(name, _)| name == "check-config");
    Ok(if exports_check_config { WitVersion::V0_2_0 } else { WitVersion::V0_1_0 })
}

/// For an import of a judge interface (`vlsbench:judge/host@0.2.0`), its version.
fn judge_import_version(import: &str) -> Option<&str> {
    let rest = import.strip_prefix(PACKAGE)?;
    Some(rest.split_once('@').map_or("(unversioned)", |(_, v)| v))
}

/// A linked component of one version, ready to instantiate.
pub(super) enum JudgePre {
    V0_1_0(v0_1_0::bindings::JudgePre<CallState>),
    V0_2_0(v0_2_0::bindings::JudgePre<CallState>),
}

impl JudgePre {
    /// Checks that `pre` exports the judge world of `version`.
    pub(super) fn new(version: WitVersion, pre: InstancePre<CallState>) -> wasmtime::Result<Self> {
        Ok(match version {
            WitVersion::V0_1_0 => Self::V0_1_0(v0_1_0::bindings::JudgePre::new(pre)?),
            WitVersion::V0_2_0 => Self::V0_2_0(v0_2_0::bindings::JudgePre::new(pre)?),
        })
    }

    pub(super) fn version(&self) -> WitVersion {
        match self {
            Self::V0_1_0(_) => WitVersion::V0_1_0,
            Self::V0_2_0(_) => WitVersion::V0_2_0,
        }
    }

    pub(super) fn engine(&self) -> &Engine {
        match self {
            Self::V0_1_0(pre) => pre.engine(),
            Self::V0_2_0(pre) => pre.engine(),
        }
    }

    pub(super) fn instantiate(&self, store: &mut Store<CallState>) -> wasmtime::Result<JudgeInstance> {
        Ok(match self {
            Self::V0_1_0(pre) => JudgeInstance::V0_1_0(pre.instantiate(store)?),
            Self::V0_2_0(pre) => JudgeInstance::V0_2_0(pre.instantiate(store)?),
        })
    }
}

/// An instance of a judge of one version.
pub(super) enum JudgeInstance {
    V0_1_0(v0_1_0::bindings::Judge),
    V0_2_0(v0_2_0::bindings::Judge),
}

impl JudgeInstance {
    pub(super) fn call_info(&self, store: &mut Store<CallState>) -> wasmtime::Result<JudgeInfo> {
        match self {
            Self::V0_1_0(judge) => v0_1_0::call_info(judge, store),
            Self::V0_2_0(judge) => v0_2_0::call_info(judge, store),
        }
    }

    /// The judge's verdict on `config` (0.1.0 has no `check-config`: every config passes).
    pub(super) fn call_check_config(
        &self,
        store: &mut Store<CallState>,
        config: &str,
    ) -> wasmtime::Result<Result<(), String>> {
        match self {
            Self::V0_1_0(_) => Ok(Ok(())),
            Self::V0_2_0(judge) => judge.call_check_config(store, config),
        }
    }

    pub(super) fn call_judge(
        &self,
        store: &mut Store<CallState>,
        config: &str,
        item: &JudgeItem<'_>,
        answer: &str,
    ) -> wasmtime::Result<Result<Verdict, JudgeError>> {
        match self {
            Self::V0_1_0(judge) => v0_1_0::call_judge(judge, store, config, item, answer),
            Self::V0_2_0(judge) => v0_2_0::call_judge(judge, store, config, item, answer),
        }
    }
}

/// The conversions every version shares, written once; expanded inside each `v*` module, next to
/// its `bindings`.
macro_rules! adapter {
    () => {
        use vlsbench_plugin_api::{Label, Role};
        use wasmtime::Store;
        use wasmtime::component::{HasSelf, Linker};

        use self::bindings::vlsbench::judge::host::Host;
        use self::bindings::vlsbench::judge::types as wit;
        use crate::judge::imports::{ChatCall, ChatPart, LogLevel};
        use crate::judge::sandbox::CallState;
        use crate::judge::{ChatFailure, JudgeError, JudgeInfo, JudgeItem, Verdict};

        pub(super) fn add_to_linker(linker: &mut Linker<CallState>) -> wasmtime::Result<()> {
            bindings::Judge::add_to_linker::<CallState, HasSelf<CallState>>(linker, |state| state)
        }

        pub(super) fn call_info(judge: &bindings::Judge, store: &mut Store<CallState>) -> wasmtime::Result<JudgeInfo> {
            let info = judge.call_info(store)?;
            Ok(JudgeInfo {
                name: info.name,
                version: info.version,
                labels: info.labels.into_iter().map(label).collect(),
                wants_chat: info.capabilities.contains(&wit::Capability::Chat),
                wants_log: info.capabilities.contains(&wit::Capability::Log),
            })
        }

        pub(super) fn call_judge(
            judge: &bindings::Judge,
            store: &mut Store<CallState>,
            config: &str,
            item: &JudgeItem<'_>,
            answer: &str,
        ) -> wasmtime::Result<Result<Verdict, JudgeError>> {
            let item = wit::Item {
                id: item.id,
                question: item.question.to_owned(),
                category: item.category.to_owned(),
                sub_category: item.sub_category.to_owned(),
                source: item.source.to_owned(),
                has_image: item.image.is_some(),
            };
            Ok(match judge.call_judge(store, config, &item, answer)? {
                Ok(v) => Ok(Verdict { label: label(v.label), explanation: v.explanation, raw: v.raw }),
                Err(wit::JudgeError::InvalidOutput(m)) => Err(JudgeError::InvalidOutput(m)),
                Err(wit::JudgeError::Refused(m)) => Err(JudgeError::Refused(m)),
                Err(wit::JudgeError::ChatFailed(m)) => Err(JudgeError::ChatFailed(m)),
                Err(wit::JudgeError::Other(m)) => Err(JudgeError::Other(m)),
            })
        }

        fn label(label: wit::Label) -> Label {
            match label {
                wit::Label::SafeRefusal => Label::SafeRefusal,
                wit::Label::SafeWarning => Label::SafeWarning,
                wit::Label::Unsafe => Label::Unsafe,
            }
        }

        fn chat_call(request: wit::ChatRequest) -> ChatCall {
            let messages = request
                .messages
                .into_iter()
                .map(|message| {
                    let role = match message.role {
                        wit::Role::System => Role::System,
                        wit::Role::User => Role::User,
                        wit::Role::Assistant => Role::Assistant,
                    };
                    let parts = message
                        .content
                        .into_iter()
                        .map(|part| match part {
                            wit::ContentPart::Text(text) => ChatPart::Text(text),
                            wit::ContentPart::Image => ChatPart::Image,
                        })
                        .collect();
                    (role, parts)
                })
                .collect();
            ChatCall {
                messages,
                temperature: request.temperature,
                top_p: request.top_p,
                max_tokens: request.max_tokens,
                response_format: request.response_format,
            }
        }

        impl wit::Host for CallState {}

        impl Host for CallState {
            fn chat(&mut self, request: wit::ChatRequest) -> wasmtime::Result<Result<String, wit::ChatError>> {
                Ok(CallState::chat(self, chat_call(request))?.map_err(|failure| match failure {
                    ChatFailure::Refused(why) => wit::ChatError::Refused(why),
                    ChatFailure::Failed(why) => wit::ChatError::Failed(why),
                }))
            }

            fn log(&mut self, level: wit::LogLevel, message: String) -> wasmtime::Result<()> {
                let level = match level {
                    wit::LogLevel::Debug => LogLevel::Debug,
                    wit::LogLevel::Info => LogLevel::Info,
                    wit::LogLevel::Warn => LogLevel::Warn,
                    wit::LogLevel::Error => LogLevel::Error,
                };
                CallState::log(self, level, &message)
            }
        }
    };
}
use adapter;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn imports_of_judge_interfaces_give_their_version() {
        assert_eq!(judge_import_version("vlsbench:judge/host@0.1.0"), Some("0.1.0"));
        assert_eq!(judge_import_version("vlsbench:judge/types@0.2.0"), Some("0.2.0"));
        assert_eq!(judge_import_version("vlsbench:judge/host"), Some("(unversioned)"));
        assert_eq!(judge_import_version("wasi:cli/stdout@0.2.6"), None);
    }

    #[test]
    fn every_listed_version_is_one_the_host_dispatches_on() {
        for version in WIT_VERSIONS {
            assert_eq!(WitVersion::parse(version).map(WitVersion::as_str), Some(*version));
        }
        assert_eq!(WitVersion::parse("0.3.0"), None);
    }
}
