//! `answers_file` backend: answers produced elsewhere, read from a file, so teams that generate with
//! their own infrastructure can still score with vlsbench's judges.
//!
//! Options (`[model.options]`):
//! - `path`: the file, relative to the manifest's folder. Either JSON Lines, one object per line
//!   with `id` (the instruction id) and `answer`; or a reference-format `<arch>_outputs.json`
//!   (`{"logs": [{"id": .., "pred_answer": ..}, ...]}`).
//!
//! A request's id is the item id. An item the file does not answer is a `bad_request` error for that
//! item, never an empty answer.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use serde::Deserialize;
use vlsbench_plugin_api::{Backend, BackendConfig, BackendError, BackendInfo, GenerateRequest, Generation};

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

/// Reads a JSON Lines answers file or a reference outputs file.
pub fn read_answers(path: &Path) -> Result<HashMap<String, String>, BackendError> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| BackendError::bad_config(format!("cannot read answers file {}: {e}", path.display())))?;
    if text.trim_start().starts_with('{')
        && let Ok(outputs) = serde_json::from_str::<OutputsFile>(&text)
    {
        let mut answers = HashMap::new();
        for (i, log) in outputs.logs.into_iter().enumerate() {
            let id = id_key(&log.id).ok_or_else(|| {
                BackendError::bad_config(format!("{}: logs[{i}] has an id that is not a number", path.display()))
            })?;
            answers.insert(id, log.pred_answer);
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
    fn an_id_answered_twice_is_refused() {
        let err = backend_for("{\"id\": 1, \"answer\": \"a\"}\n{\"id\": 1, \"answer\": \"b\"}\n").expect_err("dup");
        assert!(err.message.contains("answered twice"), "{err}");
    }
}
