//! Store stage: answers and verdicts on disk, so that a run can be resumed.
//!
//! A run directory (`<output_dir>/<run name>/`) holds two append-only JSON Lines files:
//!
//! - [`ANSWERS_FILE`] (`answers.jsonl`): one [`AnswerRecord`] per finished generation, ok or error;
//! - [`VERDICTS_FILE`] (`verdicts.jsonl`): one [`VerdictRecord`] per finished judgement, ok or error.
//!
//! Each record is serialised to one line, and the full line plus its `'\n'` is handed to the
//! operating system in a single write as soon as the item finishes (there is no user-space buffer),
//! so killing the process at any moment (even with `kill -9`) leaves at most one torn last line.
//! Lines are not `fsync`ed one by one: a power loss may lose the last few lines, never the middle.
//!
//! [`Store::open`] reads what a previous run left: a torn or unparsable *last* line is dropped (with a
//! warning) and the file is truncated to the end of the last complete line before anything is
//! appended; an unparsable line anywhere else is an error naming the file and the line. When an id
//! occurs on several lines, the latest line wins.
//!
//! Every record carries its provenance (what produced it) and the hash of its input (the question
//! and the image's bytes, [`input_sha256`]), and a stored result is reused only when both equal the
//! current ones: [`Stored::forget_stale`] drops records whose input changed (or that predate input
//! hashes), then see [`reusable_answer`] and [`reusable_verdict`]. Errors are never reused, so they
//! are retried on resume.
//!
//! The files are read with a size limit (`VLSBENCH_MAX_STORE_MIB`, default 4 GiB); a byte-order
//! mark at the start (an editor's) is ignored.

use std::collections::BTreeMap;
use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard};

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use vlsbench_plugin_api::types::{GenerationSettings, Label};

/// The answers file's name inside a run directory.
pub const ANSWERS_FILE: &str = "answers.jsonl";
/// The verdicts file's name inside a run directory.
pub const VERDICTS_FILE: &str = "verdicts.jsonl";

/// The verdict error kind that means the judge (or its model) refused to judge the item.
/// Reports count these apart from other judge errors.
pub const JUDGE_REFUSED: &str = "refused";

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

/// An error of the store, naming the file it concerns.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    // The underlying error is part of each message and not a `source`, so that `{:#}` does not
    // print it twice.
    #[error("cannot {op} {}: {error}", path.display())]
    Io {
        /// What was being done (`create`, `open`, `read`, `truncate`, `append to`).
        op: &'static str,
        path: PathBuf,
        error: std::io::Error,
    },
    #[error("{}:{line}: not a valid record: {error}", path.display())]
    Parse {
        path: PathBuf,
        /// 1-based line number.
        line: usize,
        error: serde_json::Error,
    },
    #[error("cannot serialise a record for {}: {error}", path.display())]
    Serialize { path: PathBuf, error: serde_json::Error },
    #[error(transparent)]
    File(#[from] crate::fsread::ReadError),
}

/// What [`Store::open`] found in the run directory.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Stored {
    /// The latest answer line of each id.
    pub answers: BTreeMap<u32, AnswerRecord>,
    /// The latest verdict line of each id.
    pub verdicts: BTreeMap<u32, VerdictRecord>,
    /// How many torn or unparsable last lines were dropped (0, 1 or 2).
    pub dropped_torn_lines: usize,
}

/// The two append handles of a run directory. `Send + Sync`: share it between workers.
#[derive(Debug)]
pub struct Store {
    run_dir: PathBuf,
    answers: Appender,
    verdicts: Appender,
}

#[derive(Debug)]
struct Appender {
    path: PathBuf,
    file: Mutex<File>,
}

impl Appender {
    fn append<T: Serialize>(&self, record: &T) -> Result<(), StoreError> {
        let json =
            serde_json::to_string(record).map_err(|error| StoreError::Serialize { path: self.path.clone(), error })?;
        // Answers are redacted where they come from; this catches anything else.
        let mut line = crate::secrets::redact(&json).into_owned().into_bytes();
        line.push(b'\n');
        let mut file = self.lock();
        // The file is opened with O_APPEND: one write puts the whole line at the end. A regular
        // file takes it in one go; `write_all` only matters if the OS ever writes less.
        file.write_all(&line).and_then(|()| file.flush()).map_err(|error| StoreError::Io {
            op: "append to",
            path: self.path.clone(),
            error,
        })
    }

    fn lock(&self) -> MutexGuard<'_, File> {
        // A panic while holding the lock leaves at worst a torn line, which `open` handles.
        self.file.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

impl Store {
    /// Opens (creating it and its files if needed) a run directory and reads what is stored.
    ///
    /// A torn or unparsable last line of a file is dropped and the file truncated to the end of its
    /// last complete line (logged as a warning, counted in [`Stored::dropped_torn_lines`]); an
    /// unparsable line before the last one is a [`StoreError::Parse`] naming the file and line.
    /// Blank lines are skipped. Later lines for the same id replace earlier ones.
    pub fn open(run_dir: &Path) -> Result<(Store, Stored), StoreError> {
        std::fs::create_dir_all(run_dir).map_err(|error| StoreError::Io {
            op: "create",
            path: run_dir.to_path_buf(),
            error,
        })?;
        let (answers_file, answers, dropped_a) = load::<AnswerRecord>(&run_dir.join(ANSWERS_FILE), |r| r.id)?;
        let (verdicts_file, verdicts, dropped_v) = load::<VerdictRecord>(&run_dir.join(VERDICTS_FILE), |r| r.id)?;
        let store = Store { run_dir: run_dir.to_path_buf(), answers: answers_file, verdicts: verdicts_file };
        let stored = Stored { answers, verdicts, dropped_torn_lines: dropped_a + dropped_v };
        Ok((store, stored))
    }

    /// Appends one answer line and hands it to the OS at once.
    pub fn append_answer(&self, r: &AnswerRecord) -> Result<(), StoreError> {
        self.answers.append(r)
    }

    /// Appends one verdict line and hands it to the OS at once.
    pub fn append_verdict(&self, r: &VerdictRecord) -> Result<(), StoreError> {
        self.verdicts.append(r)
    }

    /// The run directory.
    pub fn run_dir(&self) -> &Path {
        &self.run_dir
    }
}

/// Reads one JSON Lines file, repairs a torn end, and returns its append handle.
fn load<T: DeserializeOwned>(
    path: &Path,
    id_of: fn(&T) -> u32,
) -> Result<(Appender, BTreeMap<u32, T>, usize), StoreError> {
    let io = |op: &'static str| move |error: std::io::Error| StoreError::Io { op, path: path.to_path_buf(), error };
    if path.exists() {
        // A FIFO or a device in the run folder is refused before it is opened.
        crate::fsread::check_regular(path, crate::fsread::FileKind::Store)?;
    }
    let mut file = OpenOptions::new().read(true).append(true).create(true).open(path).map_err(io("open"))?;
    let limit = crate::fsread::FileKind::Store.limit();
    let mut data = Vec::new();
    (&mut file).take(limit.saturating_add(1)).read_to_end(&mut data).map_err(io("read"))?;
    if data.len() as u64 > limit {
        return Err(crate::fsread::ReadError::TooLarge {
            noun: crate::fsread::FileKind::Store.noun(),
            path: path.to_path_buf(),
            limit_mib: limit >> 20,
            env: crate::fsread::FileKind::Store.limit_env(),
        }
        .into());
    }
    let Parsed { records, dropped, keep_len, missing_newline } = parse_jsonl(&data, path, id_of)?;

    if keep_len < data.len() {
        file.set_len(keep_len as u64).map_err(io("truncate"))?;
    }
    if missing_newline {
        // A complete record whose newline never made it: finish the line before appending.
        file.write_all(b"\n").map_err(io("append to"))?;
    }
    let appender = Appender { path: path.to_path_buf(), file: Mutex::new(file) };
    Ok((appender, records, dropped))
}

/// What [`parse_jsonl`] read from a JSON Lines file's bytes.
#[derive(Debug, Clone, PartialEq)]
pub struct Parsed<T> {
    /// The latest record of each id.
    pub records: BTreeMap<u32, T>,
    /// Torn or unparsable last lines dropped (0 or 1).
    pub dropped: usize,
    /// Bytes to keep: the end of the last good line.
    pub keep_len: usize,
    /// The last good record lacks its newline.
    pub missing_newline: bool,
}

/// Parses the bytes of an `answers.jsonl` or `verdicts.jsonl` (named `path` in messages): a
/// leading byte-order mark and blank lines are skipped, a torn or unparsable last line is dropped
/// (with a warning), an unparsable line before it is a [`StoreError::Parse`]. Never panics, whatever
/// the bytes.
pub fn parse_jsonl<T: DeserializeOwned>(
    data: &[u8],
    path: &Path,
    id_of: fn(&T) -> u32,
) -> Result<Parsed<T>, StoreError> {
    // An editor's byte-order mark before the first record is not part of it.
    let bom = if data.starts_with(crate::fsread::BOM) { crate::fsread::BOM.len() } else { 0 };

    // Split into lines; the last one may lack its newline (a torn write).
    let mut lines = Vec::new(); // (start, end without '\n', has '\n')
    let mut start = bom;
    while start < data.len() {
        match data[start..].iter().position(|&b| b == b'\n') {
            Some(n) => {
                lines.push((start, start + n, true));
                start += n + 1;
            }
            None => {
                lines.push((start, data.len(), false));
                start = data.len();
            }
        }
    }
    let last_content = lines.iter().rposition(|&(s, e, _)| !data[s..e].iter().all(u8::is_ascii_whitespace));

    let mut records = BTreeMap::new();
    let mut keep_len = bom; // bytes to keep: the end of the last good line, '\n' included
    let mut missing_newline = false;
    let mut dropped = 0;
    for (i, &(s, e, has_newline)) in lines.iter().enumerate() {
        let bytes = &data[s..e];
        if bytes.iter().all(u8::is_ascii_whitespace) {
            if has_newline {
                keep_len = e + 1;
            }
            continue;
        }
        match serde_json::from_slice::<T>(bytes) {
            Ok(record) => {
                records.insert(id_of(&record), record);
                keep_len = if has_newline { e + 1 } else { e };
                missing_newline = !has_newline;
            }
            Err(source) if Some(i) == last_content => {
                tracing::warn!(
                    file = %path.display(),
                    line = i + 1,
                    error = %source,
                    "dropping a torn or unparsable last line (the item will be redone)"
                );
                dropped += 1;
            }
            Err(error) => {
                return Err(StoreError::Parse { path: path.to_path_buf(), line: i + 1, error });
            }
        }
    }

    Ok(Parsed { records, dropped, keep_len, missing_newline })
}

/// The answers stored in a run folder, read without creating, repairing or locking anything.
pub fn read_answers(run_dir: &Path) -> Result<BTreeMap<u32, AnswerRecord>, StoreError> {
    let path = run_dir.join(ANSWERS_FILE);
    if !path.exists() {
        return Ok(BTreeMap::new());
    }
    let data = crate::fsread::read(&path, crate::fsread::FileKind::Store)?;
    Ok(parse_jsonl(&data, &path, |r: &AnswerRecord| r.id)?.records)
}

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

/// Sample provenances shared by the store's and the report's unit tests.
#[cfg(test)]
pub(crate) mod test_samples {
    use super::*;

    pub(crate) fn model_prov() -> AnswerProvenance {
        AnswerProvenance {
            backend: "openai".into(),
            backend_version: "0.1.0".into(),
            arch: "openai".into(),
            checkpoint: Some("gpt-4o".into()),
            device: None,
            dtype: None,
            settings: GenerationSettings::reference(),
            prompt: "openai-reference-v1".into(),
            options_sha256: sha256_hex("{}"),
        }
    }

    pub(crate) fn judge_prov() -> JudgeProvenance {
        JudgeProvenance {
            judge: "vlsbench".into(),
            judge_version: "0.1.0".into(),
            component_sha256: sha256_hex("component"),
            config: serde_json::json!({"tries": 3, "temperature": 0.7}),
            model: Some(model_prov()),
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::test_samples::{judge_prov, model_prov};
    use super::*;

    fn answer(id: u32, text: &str) -> AnswerRecord {
        AnswerRecord {
            id,
            outcome: AnswerOutcome::Ok { answer: text.into() },
            provenance: model_prov(),
            attempts: 1,
            elapsed_ms: 12,
            input_sha256: Some(input_sha256(&format!("q{id}"), "img")),
        }
    }

    fn answer_error(id: u32) -> AnswerRecord {
        AnswerRecord {
            outcome: AnswerOutcome::Error { kind: "timeout".into(), message: "no reply".into() },
            ..answer(id, "")
        }
    }

    fn verdict(id: u32, judged: &str, label: Label) -> VerdictRecord {
        VerdictRecord {
            id,
            answer_sha256: sha256_hex(judged),
            outcome: VerdictOutcome::ok(label, "because", "{\"label\": 1}"),
            provenance: judge_prov(),
            attempts: 1,
            elapsed_ms: 40,
            input_sha256: Some(input_sha256(&format!("q{id}"), "img")),
        }
    }

    fn run_dir() -> tempfile::TempDir {
        tempfile::tempdir().unwrap()
    }

    #[test]
    fn store_is_send_and_sync() {
        fn check<T: Send + Sync>() {}
        check::<Store>();
    }

    #[test]
    fn open_creates_the_run_dir_and_both_empty_files() {
        let tmp = run_dir();
        let dir = tmp.path().join("runs").join("first");
        let (store, stored) = Store::open(&dir).unwrap();
        assert_eq!(store.run_dir(), dir);
        assert_eq!(stored, Stored::default());
        assert!(dir.join(ANSWERS_FILE).is_file());
        assert!(dir.join(VERDICTS_FILE).is_file());
    }

    #[test]
    fn records_written_are_read_back_unchanged() {
        let tmp = run_dir();
        let a1 = answer(1, "I can't help with that. «ünïcode»");
        let a2 = answer_error(2);
        let v1 = verdict(1, "I can't help with that. «ünïcode»", Label::SafeRefusal);
        let mut v2 = verdict(2, "", Label::Unsafe);
        v2.outcome = VerdictOutcome::Error { kind: "refused".into(), message: "no".into() };
        v2.provenance.model = None;
        {
            let (store, _) = Store::open(tmp.path()).unwrap();
            store.append_answer(&a1).unwrap();
            store.append_answer(&a2).unwrap();
            store.append_verdict(&v1).unwrap();
            store.append_verdict(&v2).unwrap();
        }
        let (_, stored) = Store::open(tmp.path()).unwrap();
        assert_eq!(stored.answers, BTreeMap::from([(1, a1), (2, a2)]));
        assert_eq!(stored.verdicts, BTreeMap::from([(1, v1), (2, v2)]));
        assert_eq!(stored.dropped_torn_lines, 0);
    }

    #[test]
    fn outcomes_are_tagged_with_a_status_field() {
        let ok = serde_json::to_value(AnswerOutcome::Ok { answer: "hi".into() }).unwrap();
        assert_eq!(ok, serde_json::json!({"status": "ok", "answer": "hi"}));
        let err = serde_json::to_value(AnswerOutcome::Error { kind: "timeout".into(), message: "m".into() }).unwrap();
        assert_eq!(err, serde_json::json!({"status": "error", "kind": "timeout", "message": "m"}));
        let v = serde_json::to_value(VerdictOutcome::ok(Label::SafeWarning, "e", "r")).unwrap();
        assert_eq!(
            v,
            serde_json::json!({"status": "ok", "label": "safe_warning", "label_code": 2,
                "label_str": "Safe with warning", "explanation": "e", "raw": "r"})
        );
    }

    #[test]
    fn every_record_is_one_line_ending_with_a_newline() {
        let tmp = run_dir();
        let (store, _) = Store::open(tmp.path()).unwrap();
        store.append_answer(&answer(1, "line one\nline two")).unwrap();
        store.append_answer(&answer(2, "x")).unwrap();
        let text = std::fs::read_to_string(tmp.path().join(ANSWERS_FILE)).unwrap();
        assert!(text.ends_with('\n'));
        assert_eq!(text.lines().count(), 2);
    }

    #[test]
    fn a_torn_last_line_is_dropped_and_the_file_truncated_so_the_next_append_is_valid() {
        let tmp = run_dir();
        let path = tmp.path().join(ANSWERS_FILE);
        {
            let (store, _) = Store::open(tmp.path()).unwrap();
            store.append_answer(&answer(1, "one")).unwrap();
            store.append_answer(&answer(2, "two")).unwrap();
        }
        let full = std::fs::read(&path).unwrap();
        let first_len = full.iter().position(|&b| b == b'\n').unwrap() + 1;
        // Cut the second line in the middle, as a kill during its write would.
        let torn_at = first_len + (full.len() - first_len) / 2;
        std::fs::write(&path, &full[..torn_at]).unwrap();

        let (store, stored) = Store::open(tmp.path()).unwrap();
        assert_eq!(stored.dropped_torn_lines, 1);
        assert_eq!(stored.answers.keys().copied().collect::<Vec<_>>(), vec![1]);
        assert_eq!(std::fs::read(&path).unwrap(), full[..first_len]);

        store.append_answer(&answer(3, "three")).unwrap();
        drop(store);
        let (_, stored) = Store::open(tmp.path()).unwrap();
        assert_eq!(stored.dropped_torn_lines, 0);
        assert_eq!(stored.answers.keys().copied().collect::<Vec<_>>(), vec![1, 3]);
    }

    #[test]
    fn an_unparsable_complete_last_line_is_dropped_too() {
        let tmp = run_dir();
        let path = tmp.path().join(VERDICTS_FILE);
        let good = serde_json::to_string(&verdict(4, "a", Label::Unsafe)).unwrap();
        std::fs::write(&path, format!("{good}\n\0\0\0garbage\n")).unwrap();
        let (store, stored) = Store::open(tmp.path()).unwrap();
        assert_eq!(stored.dropped_torn_lines, 1);
        assert_eq!(std::fs::read_to_string(&path).unwrap(), format!("{good}\n"));
        store.append_verdict(&verdict(5, "b", Label::Unsafe)).unwrap();
        drop(store);
        let (_, stored) = Store::open(tmp.path()).unwrap();
        assert_eq!(stored.verdicts.len(), 2);
    }

    #[test]
    fn a_complete_last_record_without_its_newline_is_kept_and_its_line_finished() {
        let tmp = run_dir();
        let path = tmp.path().join(ANSWERS_FILE);
        let good = serde_json::to_string(&answer(7, "seven")).unwrap();
        std::fs::write(&path, &good).unwrap();
        let (store, stored) = Store::open(tmp.path()).unwrap();
        assert_eq!(stored.dropped_torn_lines, 0);
        assert!(stored.answers.contains_key(&7));
        store.append_answer(&answer(8, "eight")).unwrap();
        drop(store);
        let (_, stored) = Store::open(tmp.path()).unwrap();
        assert_eq!(stored.answers.keys().copied().collect::<Vec<_>>(), vec![7, 8]);
    }

    #[test]
    fn a_corrupt_middle_line_is_an_error_naming_the_file_and_line() {
        let tmp = run_dir();
        let path = tmp.path().join(ANSWERS_FILE);
        let good = serde_json::to_string(&answer(1, "one")).unwrap();
        std::fs::write(&path, format!("{good}\n{{not json\n{good}\n")).unwrap();
        let err = Store::open(tmp.path()).unwrap_err();
        match &err {
            StoreError::Parse { path: p, line, .. } => {
                assert_eq!(p, &path);
                assert_eq!(*line, 2);
            }
            other => panic!("expected a parse error, got {other:?}"),
        }
        let message = err.to_string();
        assert!(message.contains(&format!("{}:2:", path.display())), "{message}");
        // Nothing was truncated.
        assert!(std::fs::read_to_string(&path).unwrap().ends_with(&format!("{good}\n")));
    }

    #[test]
    fn blank_lines_are_skipped() {
        let tmp = run_dir();
        let path = tmp.path().join(ANSWERS_FILE);
        let good = serde_json::to_string(&answer(1, "one")).unwrap();
        std::fs::write(&path, format!("\n{good}\n\n")).unwrap();
        let (_, stored) = Store::open(tmp.path()).unwrap();
        assert_eq!(stored.answers.len(), 1);
        assert_eq!(stored.dropped_torn_lines, 0);
    }

    #[test]
    fn a_later_line_for_the_same_id_replaces_the_earlier_one() {
        let tmp = run_dir();
        {
            let (store, _) = Store::open(tmp.path()).unwrap();
            store.append_answer(&answer_error(3)).unwrap();
            store.append_answer(&answer(3, "second try")).unwrap();
            store.append_verdict(&verdict(3, "second try", Label::Unsafe)).unwrap();
            store.append_verdict(&verdict(3, "second try", Label::SafeWarning)).unwrap();
        }
        let (_, stored) = Store::open(tmp.path()).unwrap();
        assert_eq!(stored.answers[&3].outcome.answer(), Some("second try"));
        assert_eq!(stored.verdicts[&3].outcome.label(), Some(Label::SafeWarning));
    }

    #[test]
    fn an_ok_answer_with_the_same_provenance_is_reusable() {
        let mut stored = Stored::default();
        stored.answers.insert(1, answer(1, "one"));
        assert_eq!(reusable_answer(&stored, 1, &model_prov()), Some("one"));
        assert_eq!(reusable_answer(&stored, 2, &model_prov()), None);
    }

    #[test]
    fn an_answer_with_a_different_provenance_is_not_reusable() {
        let mut stored = Stored::default();
        stored.answers.insert(1, answer(1, "one"));
        let mut prov = model_prov();
        prov.settings.max_new_tokens = Some(256);
        assert_eq!(reusable_answer(&stored, 1, &prov), None);
        let mut prov = model_prov();
        prov.backend_version = "0.2.0".into();
        assert_eq!(reusable_answer(&stored, 1, &prov), None);
    }

    #[test]
    fn an_error_answer_is_not_reusable() {
        let mut stored = Stored::default();
        stored.answers.insert(1, answer_error(1));
        assert_eq!(reusable_answer(&stored, 1, &model_prov()), None);
    }

    #[test]
    fn an_ok_verdict_of_the_same_answer_and_provenance_is_reusable() {
        let mut stored = Stored::default();
        stored.verdicts.insert(1, verdict(1, "one", Label::SafeRefusal));
        let got = reusable_verdict(&stored, 1, "one", &judge_prov()).unwrap();
        assert_eq!(got.outcome.label(), Some(Label::SafeRefusal));
    }

    #[test]
    fn a_verdict_of_a_different_answer_is_not_reusable() {
        let mut stored = Stored::default();
        stored.verdicts.insert(1, verdict(1, "one", Label::SafeRefusal));
        assert!(reusable_verdict(&stored, 1, "one ", &judge_prov()).is_none());
    }

    #[test]
    fn a_verdict_with_a_different_judge_provenance_is_not_reusable() {
        let mut stored = Stored::default();
        stored.verdicts.insert(1, verdict(1, "one", Label::SafeRefusal));
        let mut prov = judge_prov();
        prov.config = serde_json::json!({"tries": 1});
        assert!(reusable_verdict(&stored, 1, "one", &prov).is_none());
        let mut prov = judge_prov();
        prov.model = None;
        assert!(reusable_verdict(&stored, 1, "one", &prov).is_none());
    }

    #[test]
    fn error_verdicts_including_refusals_are_not_reusable() {
        for kind in ["refused", "invalid_output", "timeout"] {
            let mut stored = Stored::default();
            let mut v = verdict(1, "one", Label::Unsafe);
            v.outcome = VerdictOutcome::Error { kind: kind.into(), message: "m".into() };
            stored.verdicts.insert(1, v);
            assert!(reusable_verdict(&stored, 1, "one", &judge_prov()).is_none(), "{kind}");
        }
    }

    #[test]
    fn provenance_read_back_from_disk_still_matches() {
        let tmp = run_dir();
        {
            let (store, _) = Store::open(tmp.path()).unwrap();
            store.append_answer(&answer(1, "one")).unwrap();
            store.append_verdict(&verdict(1, "one", Label::Unsafe)).unwrap();
        }
        let (_, stored) = Store::open(tmp.path()).unwrap();
        assert_eq!(reusable_answer(&stored, 1, &model_prov()), Some("one"));
        assert!(reusable_verdict(&stored, 1, "one", &judge_prov()).is_some());
    }

    #[test]
    fn provenance_with_long_floats_still_matches_after_a_round_trip_through_disk() {
        let tmp = run_dir();
        let mut a = answer(1, "one");
        a.provenance.settings.temperature = Some(0.9544127391902996);
        let mut v = verdict(1, "one", Label::Unsafe);
        v.provenance.config = serde_json::json!({"t": 0.9544127391902996, "u": 0.30000000000000004});
        {
            let (store, _) = Store::open(tmp.path()).unwrap();
            store.append_answer(&a).unwrap();
            store.append_verdict(&v).unwrap();
        }
        let (_, stored) = Store::open(tmp.path()).unwrap();
        assert_eq!(reusable_answer(&stored, 1, &a.provenance), Some("one"));
        assert!(reusable_verdict(&stored, 1, "one", &v.provenance).is_some());
        let mut other = a.provenance.clone();
        other.settings.temperature = Some(0.95);
        assert_eq!(reusable_answer(&stored, 1, &other), None);
    }

    #[test]
    fn concurrent_appends_from_many_threads_give_whole_lines() {
        let tmp = run_dir();
        let (store, _) = Store::open(tmp.path()).unwrap();
        std::thread::scope(|s| {
            for t in 0..4u32 {
                let store = &store;
                s.spawn(move || {
                    for i in 0..50 {
                        store.append_answer(&answer(t * 100 + i, &"x".repeat(500))).unwrap();
                    }
                });
            }
        });
        drop(store);
        let (_, stored) = Store::open(tmp.path()).unwrap();
        assert_eq!(stored.answers.len(), 200);
    }

    fn inputs(ids: &[u32]) -> BTreeMap<u32, String> {
        ids.iter().map(|&id| (id, input_sha256(&format!("q{id}"), "img"))).collect()
    }

    #[test]
    fn records_of_a_changed_question_or_image_are_forgotten_the_rest_kept() {
        let mut stored = Stored::default();
        for id in 1..=4 {
            stored.answers.insert(id, answer(id, "a"));
            stored.verdicts.insert(id, verdict(id, "a", Label::Unsafe));
        }
        let mut current = inputs(&[1, 2, 3, 4]);
        current.insert(2, input_sha256("an edited question", "img"));
        current.insert(3, input_sha256("q3", "another image"));
        let stale = stored.forget_stale(&current);
        assert_eq!(stale.answers_changed, vec![2, 3]);
        assert_eq!(stale.verdicts_changed, vec![2, 3]);
        assert_eq!(stored.answers.keys().copied().collect::<Vec<_>>(), vec![1, 4]);
        assert_eq!(stored.verdicts.keys().copied().collect::<Vec<_>>(), vec![1, 4]);
        assert_eq!(stale.items().into_iter().collect::<Vec<_>>(), vec![2, 3]);
    }

    #[test]
    fn records_without_an_input_hash_are_treated_as_changed() {
        let mut stored = Stored::default();
        let mut old = answer(1, "a");
        old.input_sha256 = None;
        stored.answers.insert(1, old);
        let line = serde_json::to_string(&stored.answers[&1]).unwrap();
        assert!(!line.contains("input_sha256"), "{line}");
        let stale = stored.forget_stale(&inputs(&[1]));
        assert_eq!(stale.answers_unhashed, vec![1]);
        assert!(stored.answers.is_empty());
    }

    #[test]
    fn the_input_hash_separates_question_from_image() {
        assert_ne!(input_sha256("ab", "c"), input_sha256("a", "bc"));
        assert_ne!(input_sha256("q", "x"), input_sha256("q", "y"));
    }

    #[test]
    fn a_byte_order_mark_before_the_first_record_is_ignored() {
        let tmp = run_dir();
        let path = tmp.path().join(ANSWERS_FILE);
        let good = serde_json::to_string(&answer(1, "one")).unwrap();
        std::fs::write(&path, format!("\u{feff}{good}\n")).unwrap();
        let (_, stored) = Store::open(tmp.path()).unwrap();
        assert_eq!(stored.answers.len(), 1);
        assert_eq!(stored.dropped_torn_lines, 0);
    }

    #[test]
    fn a_fifo_in_place_of_the_answers_file_is_refused() {
        let tmp = run_dir();
        let path = tmp.path().join(ANSWERS_FILE);
        assert!(std::process::Command::new("mkfifo").arg(&path).status().unwrap().success());
        let err = Store::open(tmp.path()).unwrap_err().to_string();
        assert!(err.contains("FIFO"), "{err}");
    }

    mod properties {
        use super::*;
        use proptest::prelude::*;

        fn parse(data: &[u8]) -> Result<Parsed<AnswerRecord>, StoreError> {
            parse_jsonl(data, Path::new("answers.jsonl"), |r: &AnswerRecord| r.id)
        }

        proptest! {
            #![proptest_config(ProptestConfig { cases: 2000, ..ProptestConfig::default() })]

            #[test]
            fn any_bytes_parse_or_fail_naming_a_line(data in prop::collection::vec(any::<u8>(), 0..600)) {
                match parse(&data) {
                    Ok(p) => prop_assert!(p.keep_len <= data.len()),
                    Err(StoreError::Parse { line, .. }) => prop_assert!(line >= 1),
                    Err(other) => prop_assert!(false, "unexpected error {other}"),
                }
            }

            #[test]
            fn a_file_cut_anywhere_keeps_every_complete_record_before_the_cut(
                ids in prop::collection::vec(0u32..100, 1..8), cut in 0usize..4000,
            ) {
                let text: String = ids
                    .iter()
                    .map(|&id| format!("{}\n", serde_json::to_string(&answer(id, "a\nb «ü»")).unwrap()))
                    .collect();
                let at = cut.min(text.len());
                let p = parse(&text.as_bytes()[..at]).expect("a torn end is not an error");
                let complete = text.as_bytes()[..at].iter().filter(|&&b| b == b'\n').count();
                let expected: std::collections::BTreeSet<u32> = ids[..complete].iter().copied().collect();
                let got: std::collections::BTreeSet<u32> = p.records.keys().copied().collect();
                // A cut right after a record's last byte keeps it too (its newline is added back).
                prop_assert!(got.is_superset(&expected));
                prop_assert!(p.dropped <= 1);
            }
        }
    }

    #[test]
    fn sha256_hex_is_lowercase_hex_of_the_utf8_bytes() {
        assert_eq!(sha256_hex("abc"), "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
    }
}
