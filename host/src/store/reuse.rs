//! The rules that decide whether a stored answer or verdict stands for a new one: the same
//! provenance, the same input (question and image bytes), and for a verdict the same answer.
//! Every other stage asks these; none restates them.

use std::collections::BTreeMap;

use serde::Serialize;
use serde::de::DeserializeOwned;
use sha2::{Digest, Sha256};

use super::{AnswerProvenance, AnswerRecord, JudgeProvenance, Stored, VerdictOutcome, VerdictRecord};

/// Whether a provenance read back from disk equals the current one.
///
/// serde_json's default float parser may land one ulp off on long decimals (e.g. a computed
/// `0.9544127391902996` reads back as `...995`), so when the plain comparison fails, the current
/// provenance is compared once more after the same JSON round trip the stored one went through.
pub fn same_provenance<T>(stored: &T, current: &T) -> bool
where
    T: PartialEq + Serialize + DeserializeOwned,
{
    stored == current
        || serde_json::to_string(current)
            .ok()
            .and_then(|json| serde_json::from_str::<T>(&json).ok())
            .is_some_and(|round_tripped| round_tripped == *stored)
}

/// Whether a stored answer was produced with exactly the provenance `prov` (the rule the run's
/// reuse and the report's status share).
pub fn answer_is_current(record: &AnswerRecord, prov: &AnswerProvenance) -> bool {
    same_provenance(&record.provenance, prov)
}

/// Whether a stored verdict judged this very answer text (same SHA-256) with exactly the
/// provenance `prov`, whatever its outcome.
pub fn verdict_is_current(record: &VerdictRecord, answer: &str, prov: &JudgeProvenance) -> bool {
    record.answer_sha256 == sha256_hex(answer) && same_provenance(&record.provenance, prov)
}

/// The stored answer for `id`, if it may stand for a new generation: it is ok and
/// [current](answer_is_current).
pub fn reusable_answer<'a>(stored: &'a Stored, id: u32, prov: &AnswerProvenance) -> Option<&'a str> {
    let record = stored.answers.get(&id)?;
    answer_is_current(record, prov).then(|| record.outcome.answer()).flatten()
}

/// The stored verdict for `id`, if it may stand for a new judgement of `answer`: it is ok and
/// [current](verdict_is_current). Errors, judge refusals included, are never reused.
pub fn reusable_verdict<'a>(
    stored: &'a Stored,
    id: u32,
    answer: &str,
    prov: &JudgeProvenance,
) -> Option<&'a VerdictRecord> {
    let record = stored.verdicts.get(&id)?;
    let reusable = matches!(record.outcome, VerdictOutcome::Ok { .. }) && verdict_is_current(record, answer, prov);
    reusable.then_some(record)
}

/// The hash of what an item gives the model and the judge: its question text and the SHA-256 of
/// its image file's bytes. A stored answer or verdict whose hash differs was made for another
/// question or image.
pub fn input_sha256(question: &str, image_sha256: &str) -> String {
    let mut h = Sha256::new();
    h.update(b"vlsbench-input-v1\0question\0");
    h.update((question.len() as u64).to_le_bytes());
    h.update(question.as_bytes());
    h.update(b"\0image-sha256\0");
    h.update(image_sha256.as_bytes());
    hex::encode(h.finalize())
}

/// What [`Stored::forget_stale`] dropped, by id.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Stale {
    /// Answers whose question or image changed since they were generated.
    pub answers_changed: Vec<u32>,
    /// Answers written before input hashes were recorded.
    pub answers_unhashed: Vec<u32>,
    /// Verdicts whose question or image changed since they were judged.
    pub verdicts_changed: Vec<u32>,
    /// Verdicts written before input hashes were recorded.
    pub verdicts_unhashed: Vec<u32>,
}

impl Stale {
    /// Items whose stored results were dropped.
    pub fn items(&self) -> std::collections::BTreeSet<u32> {
        [&self.answers_changed, &self.answers_unhashed, &self.verdicts_changed, &self.verdicts_unhashed]
            .into_iter()
            .flatten()
            .copied()
            .collect()
    }

    /// Logs what was dropped and why, one line per reason.
    pub fn log(&self) {
        let ids = |v: &[u32]| crate::fsread::list_ids(v, 10);
        if !self.answers_changed.is_empty() {
            tracing::warn!(
                "{} item(s) changed (question or image) since their answers were stored: generating them again ({})",
                self.answers_changed.len(),
                ids(&self.answers_changed)
            );
        }
        if !self.answers_unhashed.is_empty() {
            tracing::warn!(
                "{} stored answer(s) do not record what the model was given (written by an older vlsbench-host): \
                 treated as changed and generated again ({})",
                self.answers_unhashed.len(),
                ids(&self.answers_unhashed)
            );
        }
        let verdicts_only: Vec<u32> =
            self.verdicts_changed.iter().filter(|id| !self.answers_changed.contains(id)).copied().collect();
        if !verdicts_only.is_empty() {
            tracing::warn!(
                "{} item(s) changed since their verdicts were stored: judging them again ({})",
                verdicts_only.len(),
                ids(&verdicts_only)
            );
        }
        if !self.verdicts_unhashed.is_empty() && self.answers_unhashed.is_empty() {
            tracing::warn!(
                "{} stored verdict(s) do not record what the judge was given (older vlsbench-host): judging again ({})",
                self.verdicts_unhashed.len(),
                ids(&self.verdicts_unhashed)
            );
        }
    }
}

impl Stored {
    /// Drops every stored answer and verdict of an item in `inputs` (id → the current
    /// [`input_sha256`]) whose recorded input hash differs from the current one or is absent, so
    /// that it is made again; says what it dropped. Records of ids not in `inputs` are kept.
    pub fn forget_stale(&mut self, inputs: &BTreeMap<u32, String>) -> Stale {
        let mut stale = Stale::default();
        let classify = |id: &u32, recorded: &Option<String>| -> Option<bool> {
            let current = inputs.get(id)?;
            match recorded {
                Some(h) if h == current => None,
                Some(_) => Some(true),
                None => Some(false),
            }
        };
        self.answers.retain(|id, r| match classify(id, &r.input_sha256) {
            None => true,
            Some(true) => {
                stale.answers_changed.push(*id);
                false
            }
            Some(false) => {
                stale.answers_unhashed.push(*id);
                false
            }
        });
        self.verdicts.retain(|id, r| match classify(id, &r.input_sha256) {
            None => true,
            Some(true) => {
                stale.verdicts_changed.push(*id);
                false
            }
            Some(false) => {
                stale.verdicts_unhashed.push(*id);
                false
            }
        });
        stale
    }
}

/// SHA-256 of the UTF-8 bytes of `s`, as 64 lowercase hex digits.
pub fn sha256_hex(s: &str) -> String {
    hex::encode(Sha256::digest(s.as_bytes()))
}
