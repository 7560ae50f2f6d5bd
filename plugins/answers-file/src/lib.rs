//! `answers_file` backend: answers produced elsewhere, read from a file, so teams that generate with
//! their own infrastructure can still score with vlsbench's judges.
//!
//! Options (`[model.options]`):
//! - `path`: the file, relative to the manifest's folder. Either JSON Lines, one object per line
//!   with `id` (the instruction id) and `answer`; or a reference-format `<arch>_outputs.json`
//!   (`{"logs": [{"id": .., "pred_answer": ..}, ...]}`).
//!
//! A request's id is the item id. An item the file does not answer is a `bad_request` error for that
//! item, never an empty answer; an id answered twice is an error naming both places.
//!
//! The file must be a regular file of at most 1 GiB (`VLSBENCH_MAX_ANSWERS_MIB` raises it): a FIFO or
//! a device (`/dev/zero`) is refused before it is read. A leading UTF-8 byte-order mark is ignored.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use serde::Deserialize;
use vlsbench_plugin_api::{
    Backend, BackendConfig, BackendError, BackendInfo, GenerateRequest, Generation, OptionKind, OptionSpec,
};

/// The backend: a map from item id to answer.
#[derive(Debug)]
pub struct AnswersFile {
    path: PathBuf,
    answers: HashMap<String, String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Options {
    path: PathBuf,
}

#[derive(Deserialize)]
struct Line {
    id: serde_json::Value,
    answer: String,
}

#[derive(Deserialize)]
struct OutputsFile {
    logs: Vec<OutputsLog>,
}

#[derive(Deserialize)]
struct OutputsLog {
    id: serde_json::Value,
    pred_answer: String,
}

fn id_key(v: &serde_json::Value) -> Option<String> {
    match v {
        serde_json::Value::Number(n) => n.as_u64().map(|n| n.to_string()),
        serde_json::Value::String(s) => Some(s.clone()),
        _ => None,
    }
}

/// The default size limit of an answers file, in MiB.
pub const DEFAULT_LIMIT_MIB: u64 = 1024;
/// The variable that raises it.
pub const LIMIT_ENV: &str = "VLSBENCH_MAX_ANSWERS_MIB";

/// Reads a whole regular file of at most `limit` bytes; FIFOs, devices and folders are refused
/// before they are opened for reading.
pub fn read_bounded(path: &Path, limit: u64) -> Result<Vec<u8>, BackendError> {
    use std::io::Read as _;
    let bad = |m: String| BackendError::bad_config(format!("answers file {}: {m}", path.display()));
    let meta = std::fs::metadata(path).map_err(|e| bad(format!("cannot read it ({e})")))?;
    if !meta.is_file() {
        return Err(bad("not a regular file (a FIFO, a device or a folder)".into()));
    }
    let too_large = || {
        bad(format!(
            "larger than the {} MiB limit (set {LIMIT_ENV} to a larger number of MiB to raise it)",
            limit >> 20
        ))
    };
    if meta.len() > limit {
        return Err(too_large());
    }
    let file = std::fs::File::open(path).map_err(|e| bad(format!("cannot read it ({e})")))?;
    let mut data = Vec::new();
    file.take(limit.saturating_add(1)).read_to_end(&mut data).map_err(|e| bad(format!("cannot read it ({e})")))?;
    if data.len() as u64 > limit {
        return Err(too_large());
    }
    Ok(data)
}

fn limit() -> u64 {
    std::env::var(LIMIT_ENV)
        .ok()
        .and_then(|v| v.trim().parse::<u64>().ok())
        .filter(|&m| m > 0)
        .unwrap_or(DEFAULT_LIMIT_MIB)
        .saturating_mul(1 << 20)
}

/// Reads a JSON Lines answers file or a reference outputs file.
pub fn read_answers(path: &Path) -> Result<HashMap<String, String>, BackendError> {
    let data = read_bounded(path, limit())?;
    let data = data.strip_prefix(b"\xEF\xBB\xBF".as_slice()).unwrap_or(&data);
    let text = std::str::from_utf8(data).map_err(|e| {
        BackendError::bad_config(format!("answers file {}: not UTF-8 text at byte {}", path.display(), e.valid_up_to()))
    })?;
    parse_answers(text, path)
}

/// Parses the text of an answers file (`path` names it in messages). Never panics, whatever the
/// text; every rejection is a `bad_config` error.
pub fn parse_answers(text: &str, path: &Path) -> Result<HashMap<String, String>, BackendError> {
    if text.trim_start().starts_with('{')
        && let Ok(outputs) = serde_json::from_str::<OutputsFile>(text)
    {
        let mut answers = HashMap::new();
        for (i, log) in outputs.logs.into_iter().enumerate() {
            let id = id_key(&log.id).ok_or_else(|| {
                BackendError::bad_config(format!("{}: logs[{i}] has an id that is not a number", path.display()))
            })?;
            if answers.insert(id.clone(), log.pred_answer).is_some() {
                return Err(BackendError::bad_config(format!("{}: logs[{i}]: id {id} answered twice", path.display())));
            }
        }
        return Ok(answers);
    }
    let mut answers = HashMap::new();
    for (n, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let parsed: Line = serde_json::from_str(line).map_err(|e| {
            BackendError::bad_config(format!(
                "{}:{}: expected {{\"id\": <number>, \"answer\": <string>}}: {e}",
                path.display(),
                n + 1
            ))
        })?;
        let id = id_key(&parsed.id)
            .ok_or_else(|| BackendError::bad_config(format!("{}:{}: id must be a number", path.display(), n + 1)))?;
        if answers.insert(id.clone(), parsed.answer).is_some() {
            return Err(BackendError::bad_config(format!("{}:{}: id {id} answered twice", path.display(), n + 1)));
        }
    }
    Ok(answers)
}

impl Backend for AnswersFile {
    fn describe() -> BackendInfo {
        BackendInfo {
            name: "answers-file".into(),
            version: env!("CARGO_PKG_VERSION").into(),
            description: "answers produced elsewhere, read from a JSON Lines or reference outputs file".into(),
            archs: vec!["answers_file".into()],
            max_batch: 1024,
            concurrent: true,
            devices: vec!["cpu".into()],
            checkpoint_is_path: false,
            path_options: vec!["path".into()],
            // The answers were produced elsewhere: the layout only names the provenance.
            message_layouts: Default::default(),
        }
    }

    fn options() -> Option<Vec<OptionSpec>> {
        Some(vec![OptionSpec::new(
            "path",
            OptionKind::Path,
            "the JSON Lines answers file or reference <arch>_outputs.json, relative to the manifest's folder",
        )])
    }

    fn create(config: BackendConfig) -> Result<Self, BackendError> {
        let options: Options = config.options()?;
        // Already resolved when the host created it through the ABI; resolving is idempotent.
        let path = config.resolve(&options.path);
        let answers = read_answers(&path)?;
        Ok(Self { path, answers })
    }

    fn generate(&self, requests: Vec<GenerateRequest>) -> Vec<Result<Generation, BackendError>> {
        requests
            .into_iter()
            .map(|r| {
                self.answers.get(&r.id).map(|a| Generation::new(a.clone())).ok_or_else(|| {
                    BackendError::bad_request(format!("no answer for item {} in {}", r.id, self.path.display()))
                })
            })
            .collect()
    }
}

vlsbench_plugin_api::export_backend!(AnswersFile);

#[cfg(test)]
mod tests {
    use super::*;
    use vlsbench_plugin_api::GenerationSettings;

    fn request(id: &str) -> GenerateRequest {
        GenerateRequest {
            id: id.into(),
            messages: vec![],
            settings: GenerationSettings::default(),
            response_format: None,
        }
    }

    fn backend_for(contents: &str) -> Result<AnswersFile, BackendError> {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::write(dir.path().join("a.jsonl"), contents).expect("write");
        AnswersFile::create(BackendConfig {
            arch: "answers_file".into(),
            checkpoint: None,
            device: None,
            dtype: None,
            options: serde_json::json!({"path": "a.jsonl"}),
            base_dir: dir.path().to_path_buf(),
        })
    }

    #[test]
    fn json_lines_answers_are_served_by_id() {
        let b =
            backend_for("{\"id\": 3, \"answer\": \"three\"}\n\n{\"id\": 7, \"answer\": \" seven \"}\n").expect("ok");
        let out = b.generate(vec![request("7"), request("3")]);
        assert_eq!(out[0].as_ref().expect("7").text, " seven ");
        assert_eq!(out[1].as_ref().expect("3").text, "three");
    }

    #[test]
    fn a_reference_outputs_file_is_accepted() {
        let b = backend_for(r#"{"stats": {}, "logs": [{"id": 1, "question": "q", "pred_answer": "a"}]}"#).expect("ok");
        assert_eq!(b.generate(vec![request("1")])[0].as_ref().expect("1").text, "a");
    }

    #[test]
    fn a_missing_answer_is_an_error_for_that_item_only() {
        let b = backend_for("{\"id\": 1, \"answer\": \"a\"}\n").expect("ok");
        let out = b.generate(vec![request("1"), request("2")]);
        assert!(out[0].is_ok());
        let err = out[1].as_ref().expect_err("missing");
        assert!(err.message.contains("no answer for item 2"), "{err}");
    }

    #[test]
    fn a_bad_line_is_named() {
        let err = backend_for("{\"id\": 1, \"answer\": \"a\"}\nnot json\n").expect_err("bad");
        assert!(err.message.contains("a.jsonl:2:"), "{err}");
    }

    #[test]
    fn dev_zero_and_a_fifo_are_refused_without_reading_them() {
        let err = read_answers(Path::new("/dev/zero")).expect_err("device");
        assert!(err.message.contains("not a regular file"), "{err}");
        let dir = tempfile::tempdir().expect("tempdir");
        let fifo = dir.path().join("answers.jsonl");
        assert!(std::process::Command::new("mkfifo").arg(&fifo).status().expect("mkfifo").success());
        let err = read_answers(&fifo).expect_err("fifo");
        assert!(err.message.contains("not a regular file"), "{err}");
    }

    #[test]
    fn a_file_over_the_limit_is_refused_naming_the_variable_that_raises_it() {
        let dir = tempfile::tempdir().expect("tempdir");
        let p = dir.path().join("a.jsonl");
        std::fs::write(&p, vec![b'\n'; (1 << 20) + 1]).expect("write");
        let err = read_bounded(&p, 1 << 20).expect_err("too large");
        assert!(err.message.contains("1 MiB limit") && err.message.contains(LIMIT_ENV), "{err}");
    }

    #[test]
    fn a_byte_order_mark_is_ignored() {
        let b = backend_for("\u{feff}{\"id\": 1, \"answer\": \"a\"}\n").expect("ok");
        assert_eq!(b.generate(vec![request("1")])[0].as_ref().expect("1").text, "a");
    }

    #[test]
    fn an_id_answered_twice_in_an_outputs_file_is_refused() {
        let text = r#"{"logs": [{"id": 1, "pred_answer": "a"}, {"id": 1, "pred_answer": "b"}]}"#;
        let err = backend_for(text).expect_err("dup");
        assert!(err.message.contains("logs[1]: id 1 answered twice"), "{err}");
    }

    mod properties {
        use super::super::*;
        use proptest::prelude::*;

        proptest! {
            #![proptest_config(ProptestConfig { cases: 2000, ..ProptestConfig::default() })]

            #[test]
            fn any_text_parses_or_is_a_bad_config_error(text in "\\PC*") {
                if let Err(e) = parse_answers(&text, Path::new("a.jsonl")) {
                    prop_assert_eq!(e.kind, vlsbench_plugin_api::ErrorKind::BadConfig);
                }
            }

            #[test]
            fn json_lines_of_ids_and_answers_read_back(
                answers in proptest::collection::btree_map(0u32..5000, "\\PC{0,40}", 0..20)
            ) {
                let text: String = answers
                    .iter()
                    .map(|(id, a)| format!("{}\n", serde_json::json!({"id": id, "answer": a})))
                    .collect();
                let got = parse_answers(&text, Path::new("a.jsonl")).expect("valid lines");
                prop_assert_eq!(got.len(), answers.len());
                for (id, a) in &answers {
                    prop_assert_eq!(&got[&id.to_string()], a);
                }
            }

            #[test]
            fn mutated_lines_never_panic(
                answers in proptest::collection::vec(("[0-9]{1,4}", "\\PC{0,20}"), 1..10),
                cut in 0usize..400,
                junk in proptest::collection::vec(any::<u8>(), 0..8),
            ) {
                let mut text: String = answers
                    .iter()
                    .map(|(id, a)| format!("{}\n", serde_json::json!({"id": id.parse::<u32>().unwrap_or(0), "answer": a})))
                    .collect();
                let at = text.char_indices().map(|(i, _)| i).nth(cut).unwrap_or(text.len());
                text.insert_str(at, &String::from_utf8_lossy(&junk));
                let _ = parse_answers(&text, Path::new("a.jsonl"));
            }
        }
    }

    #[test]
    fn an_id_answered_twice_is_refused() {
        let err = backend_for("{\"id\": 1, \"answer\": \"a\"}\n{\"id\": 1, \"answer\": \"b\"}\n").expect_err("dup");
        assert!(err.message.contains("answered twice"), "{err}");
    }
}
