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

use serde::Serialize;
use serde::de::DeserializeOwned;

mod jsonl;
mod records;
mod reuse;

pub use jsonl::{Parsed, parse_jsonl};
pub use records::{AnswerOutcome, AnswerProvenance, AnswerRecord, JudgeProvenance, VerdictOutcome, VerdictRecord};
pub use reuse::{
    Stale, answer_is_current, input_sha256, reusable_answer, reusable_verdict, same_provenance, sha256_hex,
    verdict_is_current,
};

/// The answers file's name inside a run directory.
pub const ANSWERS_FILE: &str = "answers.jsonl";
/// The verdicts file's name inside a run directory.
pub const VERDICTS_FILE: &str = "verdicts.jsonl";

/// The verdict error kind that means the judge (or its model) refused to judge the item.
/// Reports count these apart from other judge errors.
pub const JUDGE_REFUSED: &str = "refused";

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

/// The answers stored in a run folder, read without creating, repairing or locking anything.
pub fn read_answers(run_dir: &Path) -> Result<BTreeMap<u32, AnswerRecord>, StoreError> {
    read_records(&run_dir.join(ANSWERS_FILE), |r: &AnswerRecord| r.id)
}

/// The verdicts stored in a run folder, read as [`read_answers`] reads the answers.
pub fn read_verdicts(run_dir: &Path) -> Result<BTreeMap<u32, VerdictRecord>, StoreError> {
    read_records(&run_dir.join(VERDICTS_FILE), |r: &VerdictRecord| r.id)
}

/// The latest record of each id in a JSON Lines file (none when it does not exist).
fn read_records<T: DeserializeOwned>(path: &Path, id_of: fn(&T) -> u32) -> Result<BTreeMap<u32, T>, StoreError> {
    if !path.exists() {
        return Ok(BTreeMap::new());
    }
    let data = crate::fsread::read(path, crate::fsread::FileKind::Store)?;
    Ok(parse_jsonl(&data, path, id_of)?.records)
}

/// Sample provenances shared by the store's and the report's unit tests.
#[cfg(test)]
pub(crate) mod test_samples {
    use vlsbench_plugin_api::types::GenerationSettings;

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

    use vlsbench_plugin_api::types::Label;

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
