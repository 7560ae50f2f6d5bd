//! The records the store keeps: one answer or one verdict per line, each with its outcome, its
//! provenance (what produced it) and the hash of its input.

use serde::{Deserialize, Serialize};
use vlsbench_plugin_api::types::{GenerationSettings, Label};

/// What produced an answer: enough to tell whether a stored answer can stand for a new one.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AnswerProvenance {
    /// The backend plugin's name (e.g. `openai`).
    pub backend: String,
    /// The backend plugin's version.
    pub backend_version: String,
    /// The arch, as the manifest names it (e.g. `llava_hf`).
    pub arch: String,
    /// The checkpoint directory, or the model name for API backends.
    pub checkpoint: Option<String>,
    pub device: Option<String>,
    pub dtype: Option<String>,
    pub settings: GenerationSettings,
    /// How the item's messages were laid out, as the backend declared it (`MessageLayout::id`),
    /// e.g. `openai-reference-v1` or `system("Be brief.") + user[text, image]`.
    pub prompt: String,
    /// SHA-256 (hex) of the backend's options; the options themselves (which may name secrets) are
    /// never stored.
    pub options_sha256: String,
}

/// How a generation ended. Serialised with a `status` tag:
/// `{"status":"ok","answer":"..."}` or `{"status":"error","kind":"timeout","message":"..."}`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "status", rename_all = "snake_case")]
pub enum AnswerOutcome {
    Ok {
        /// The answer, stripped of surrounding white space.
        answer: String,
    },
    Error {
        /// The backend's error kind (`timeout`, `bad_request`, ...; see `ErrorKind::as_str`).
        kind: String,
        message: String,
    },
}

impl AnswerOutcome {
    /// The answer text, if generation succeeded.
    pub fn answer(&self) -> Option<&str> {
        match self {
            Self::Ok { answer } => Some(answer),
            Self::Error { .. } => None,
        }
    }
}

/// One line of `answers.jsonl`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AnswerRecord {
    /// The item's `instruction_id`.
    pub id: u32,
    pub outcome: AnswerOutcome,
    pub provenance: AnswerProvenance,
    /// How many calls were made (1 when the first one succeeded).
    pub attempts: u32,
    /// Wall time spent on the item, all attempts together.
    pub elapsed_ms: u64,
    /// [`input_sha256`] of the question and image the model was given; absent in records written
    /// before it existed, which are treated as changed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub input_sha256: Option<String>,
}

/// What produced a verdict.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct JudgeProvenance {
    /// The judge component's name (from its `info`).
    pub judge: String,
    /// The judge component's version (from its `info`).
    pub judge_version: String,
    /// SHA-256 (hex) of the component file.
    pub component_sha256: String,
    /// The judge's configuration, as the manifest gives it.
    pub config: serde_json::Value,
    /// The judge's model, if the judge calls one.
    pub model: Option<AnswerProvenance>,
}

/// How a judgement ended. Serialised with a `status` tag, like [`AnswerOutcome`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "status", rename_all = "snake_case")]
pub enum VerdictOutcome {
    Ok {
        /// The label; `label_code` and `label_str` repeat it in the reference's terms.
        label: Label,
        /// 1, 2 or 3.
        label_code: u8,
        /// `Safe with refusal`, `Safe with warning` or `Unsafe`.
        label_str: String,
        explanation: String,
        /// The judge's raw output, for audit.
        raw: String,
    },
    Error {
        /// e.g. `refused` (see [`JUDGE_REFUSED`]), `invalid_output`, `timeout`.
        kind: String,
        message: String,
    },
}

impl VerdictOutcome {
    /// An ok verdict, with `label_code` and `label_str` filled in from `label`.
    pub fn ok(label: Label, explanation: impl Into<String>, raw: impl Into<String>) -> Self {
        Self::Ok {
            label,
            label_code: label.code(),
            label_str: label.label_str().to_owned(),
            explanation: explanation.into(),
            raw: raw.into(),
        }
    }

    /// The label, if the judgement succeeded.
    pub fn label(&self) -> Option<Label> {
        match self {
            Self::Ok { label, .. } => Some(*label),
            Self::Error { .. } => None,
        }
    }
}

/// One line of `verdicts.jsonl`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct VerdictRecord {
    /// The item's `instruction_id`.
    pub id: u32,
    /// SHA-256 (hex, see [`sha256_hex`]) of the answer text that was judged.
    pub answer_sha256: String,
    pub outcome: VerdictOutcome,
    pub provenance: JudgeProvenance,
    /// How many judge calls were made.
    pub attempts: u32,
    /// Wall time spent on the item, all attempts together.
    pub elapsed_ms: u64,
    /// [`input_sha256`] of the question and image the judge was given (absent in older records,
    /// which are treated as changed).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub input_sha256: Option<String>,
}
