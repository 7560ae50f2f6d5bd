//! What the host offers a judge: the `chat` and `log` imports, gated by grants.
//!
//! A capability works only if the judge asked for it in `info` *and* the manifest grants it; the
//! engine decides that once per call and leaves in the store a
//! [`CallContext`](super::sandbox::CallContext) (a chat channel or none, log
//! allowed or not). A denied call traps with a `CapabilityDeniedTrap`, which the sandbox turns into
//! [`JudgeError::CapabilityDenied`](super::JudgeError::CapabilityDenied).
//!
//! These functions take version-neutral requests ([`ChatCall`]); each WIT version's adapter
//! (`wit/v*.rs`) converts its own generated types to and from them.

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::mpsc;
use std::time::Instant;

use vlsbench_plugin_api::{ChatMessage, ContentPart, GenerateRequest, GenerationSettings, Role};

use super::sandbox::{CallState, CapabilityDeniedTrap, ChatJob};
use super::{ChatFailure, ChatProvider};

/// The longest `log` line kept (longer ones are cut), and the most lines one call may write.
const LOG_LINE_LIMIT: usize = 4096;
const LOG_LINES_PER_CALL: usize = 1000;

/// Serves chat jobs until the store (holding the sender) is dropped. A panicking provider fails
/// the chat call instead of the host.
pub(super) fn serve_chat(queue: mpsc::Receiver<ChatJob>, provider: &dyn ChatProvider) {
    for (request, reply) in queue {
        let result = catch_unwind(AssertUnwindSafe(|| provider.chat(request)))
            .unwrap_or_else(|_| Err(ChatFailure::Failed("the chat provider panicked".to_owned())));
        let _ = reply.send(result);
    }
}

/// A judge's chat request, whatever the WIT version it was written against.
pub(super) struct ChatCall {
    pub messages: Vec<(Role, Vec<ChatPart>)>,
    pub temperature: Option<f32>,
    pub top_p: Option<f32>,
    pub max_tokens: Option<u32>,
    /// A JSON-schema response format, as JSON text.
    pub response_format: Option<String>,
}

/// One part of a judge's chat message.
pub(super) enum ChatPart {
    Text(String),
    /// This item's image.
    Image,
}

/// The level of a judge's log line.
#[derive(Debug, Clone, Copy)]
pub(super) enum LogLevel {
    Debug,
    Info,
    Warn,
    Error,
}

impl CallState {
    fn deny(&mut self, capability: &'static str) -> wasmtime::Error {
        self.denied = Some(capability);
        wasmtime::Error::new(CapabilityDeniedTrap(capability))
    }

    /// The `chat` import: the outer error traps (capability denied), the inner one is the judge's.
    pub(super) fn chat(&mut self, call: ChatCall) -> wasmtime::Result<Result<String, ChatFailure>> {
        let Some(jobs) = self.context.chat.clone() else {
            return Err(self.deny("chat"));
        };
        let request = match self.generate_request(call) {
            Ok(request) => request,
            Err(message) => return Ok(Err(ChatFailure::Failed(message))),
        };
        let started = Instant::now();
        let (reply_to, reply) = mpsc::channel();
        let gone = || ChatFailure::Failed("the chat provider is gone".to_owned());
        let result = match jobs.send((request, reply_to)) {
            Ok(()) => reply.recv().unwrap_or_else(|_| Err(gone())),
            Err(_) => Err(gone()),
        };
        // Time spent waiting for the judge model is not the judge's computation.
        self.clock.in_chat += started.elapsed();
        Ok(result)
    }

    /// The `log` import: at most [`LOG_LINES_PER_CALL`] lines of [`LOG_LINE_LIMIT`] bytes.
    pub(super) fn log(&mut self, level: LogLevel, message: &str) -> wasmtime::Result<()> {
        if !self.context.log_allowed {
            return Err(self.deny("log"));
        }
        self.log_lines += 1;
        if self.log_lines > LOG_LINES_PER_CALL {
            return Ok(());
        }
        let mut end = message.len().min(LOG_LINE_LIMIT);
        while !message.is_char_boundary(end) {
            end -= 1;
        }
        let message = &message[..end];
        let (judge, item) = (&self.judge_name, self.context.item_id);
        match level {
            LogLevel::Debug => tracing::debug!(judge = %judge, item = ?item, "{message}"),
            LogLevel::Info => tracing::info!(judge = %judge, item = ?item, "{message}"),
            LogLevel::Warn => tracing::warn!(judge = %judge, item = ?item, "{message}"),
            LogLevel::Error => tracing::error!(judge = %judge, item = ?item, "{message}"),
        }
        Ok(())
    }

    /// The host's form of a judge's chat request.
    fn generate_request(&self, call: ChatCall) -> Result<GenerateRequest, String> {
        let item_id = self.context.item_id.ok_or("chat is not available outside an item's judgement")?;
        let mut messages = Vec::with_capacity(call.messages.len());
        for (role, parts) in call.messages {
            let mut content = Vec::with_capacity(parts.len());
            for part in parts {
                content.push(match part {
                    ChatPart::Text(text) => ContentPart::Text { text },
                    ChatPart::Image => match &self.context.image {
                        Some(path) => ContentPart::Image { path: path.clone() },
                        None => return Err("the request has an image part but this item has no image".to_owned()),
                    },
                });
            }
            messages.push(ChatMessage { role, content });
        }
        let response_format = call
            .response_format
            .map(|text| serde_json::from_str(&text).map_err(|e| format!("response_format is not JSON: {e}")))
            .transpose()?;
        Ok(GenerateRequest {
            id: format!("{item_id}/judge"),
            messages,
            settings: GenerationSettings {
                max_new_tokens: call.max_tokens,
                temperature: call.temperature.map(|t| to_f64("temperature", t)).transpose()?,
                top_p: call.top_p.map(|p| to_f64("top_p", p)).transpose()?,
            },
            response_format,
        })
    }
}

/// An `f32` setting as the `f64` with the same shortest decimal form (`0.7f32` → `0.7`, not
/// `0.699999988079071`).
fn to_f64(name: &str, value: f32) -> Result<f64, String> {
    if !value.is_finite() {
        return Err(format!("{name} is not a finite number"));
    }
    Ok(value.to_string().parse().unwrap_or(f64::from(value)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn f32_settings_keep_their_decimal_form() {
        assert_eq!(to_f64("t", 0.7), Ok(0.7));
        assert_eq!(to_f64("t", 0.0), Ok(0.0));
        assert!(to_f64("t", f32::NAN).is_err());
    }
}
