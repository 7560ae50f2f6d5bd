//! Finished runs as `compare` and `agreement` read them ([`load_run`]): a run folder (its
//! `summary.json`, `<arch>_outputs.json` and `verdicts.jsonl`) or a reference harness's
//! `<arch>_outputs.json` on its own. Categories come from the dataset's `data.json`
//! ([`load_catalog`]): the one `--dataset` names, else the one a run folder's manifest names.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::Deserialize;
use vlsbench_plugin_api::types::Label;

use super::reference::{ReferenceLog, ReferenceOutputs};
use super::summary::{Provenance, Summary};
use super::{SUMMARY_FILE, outputs_file_name};
use crate::dataset::Item;
use crate::fsread::{FileKind, ReadError, read_to_string};
use crate::store::{VERDICTS_FILE, VerdictOutcome, VerdictRecord, parse_jsonl, sha256_hex};

/// Why a run could not be read.
#[derive(Debug, thiserror::Error)]
pub enum RunsError {
    #[error(
        "{} is neither a run folder (with summary.json) nor an `<arch>_outputs.json` file",
        .0.display()
    )]
    NotARun(PathBuf),
    #[error(transparent)]
    Read(#[from] ReadError),
    #[error("{}: not a valid {what}: {error}", path.display())]
    Json { path: PathBuf, what: &'static str, error: serde_json::Error },
    #[error("{}: {error}", path.display())]
    Store { path: PathBuf, error: String },
    #[error("{}: {error}", path.display())]
    Dataset { path: PathBuf, error: String },
}

/// One run: what its judge labelled, and what it is.
#[derive(Debug, Clone)]
pub struct RunData {
    /// A short name: the run folder's name, or the outputs file's name.
    pub name: String,
    pub path: PathBuf,
    /// True for a bare `<arch>_outputs.json` (e.g. the reference harness's).
    pub reference_file: bool,
    pub arch: String,
    /// What produced the run (run folders only).
    pub provenance: Option<Provenance>,
    /// Every judged item, by id.
    pub judged: BTreeMap<u32, ReferenceLog>,
    /// The judge's explanation of each judged item (run folders only).
    pub explanations: BTreeMap<u32, String>,
    /// Selected items without a label, by id, with the reason (run folders only).
    pub not_scored: BTreeMap<u32, &'static str>,
    /// The dataset root the run's manifest names, resolved (run folders only).
    pub dataset_root: Option<PathBuf>,
}

impl RunData {
    /// The label of a judged item.
    pub fn label(&self, id: u32) -> Option<Label> {
        self.judged.get(&id).and_then(|l| Label::from_code(l.safe_label))
    }

    /// One line saying what the run is.
    pub fn describe(&self) -> String {
        match &self.provenance {
            Some(p) => format!(
                "{} via {} {}, judged by {} {}",
                p.model.checkpoint.as_deref().unwrap_or(&p.model.arch),
                p.model.backend,
                p.model.backend_version,
                p.judge.judge,
                p.judge.judge_version
            ),
            None => format!("{} (an `<arch>_outputs.json`: no provenance recorded)", self.arch),
        }
    }
}

fn read_json<T: serde::de::DeserializeOwned>(path: &Path, kind: FileKind, what: &'static str) -> Result<T, RunsError> {
    let text = read_to_string(path, kind)?;
    serde_json::from_str(&text).map_err(|error| RunsError::Json { path: path.to_path_buf(), what, error })
}

#[derive(Deserialize)]
struct ManifestDataset {
    dataset: DatasetPart,
}

#[derive(Deserialize)]
struct DatasetPart {
    root: PathBuf,
    #[serde(default = "data_json")]
    data_file: String,
}

fn data_json() -> String {
    "data.json".to_owned()
}

/// The `data.json` a run folder's manifest names, resolved as the run resolved it.
fn run_data_file(dir: &Path) -> Option<PathBuf> {
    let text = read_to_string(&dir.join("manifest.toml"), FileKind::Manifest).ok()?;
    let m: ManifestDataset = toml::from_str(&text).ok()?;
    let base = read_to_string(&dir.join("run.json"), FileKind::RunInfo)
        .ok()
        .and_then(|t| serde_json::from_str::<serde_json::Value>(&t).ok())
        .and_then(|v| v.get("manifest_base_dir").and_then(|b| b.as_str()).map(PathBuf::from))
        .unwrap_or_else(|| dir.to_path_buf());
    let root = vlsbench_plugin_api::resolve_path(&base, &m.dataset.root);
    Some(root.join(m.dataset.data_file))
}

/// Reads a run folder or an outputs file.
pub fn load_run(path: &Path) -> Result<RunData, RunsError> {
    if path.is_file() {
        let outputs: ReferenceOutputs = read_json(path, FileKind::Store, "`<arch>_outputs.json`")?;
        let file = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
        let arch = file.strip_suffix("_outputs.json").unwrap_or(&file).to_owned();
        return Ok(RunData {
            name: file,
            path: path.to_path_buf(),
            reference_file: true,
            arch,
            provenance: None,
            judged: outputs.logs.into_iter().map(|l| (l.id, l)).collect(),
            explanations: BTreeMap::new(),
            not_scored: BTreeMap::new(),
            dataset_root: None,
        });
    }
    let summary_path = path.join(SUMMARY_FILE);
    if !summary_path.is_file() {
        return Err(RunsError::NotARun(path.to_path_buf()));
    }
    let summary: Summary = read_json(&summary_path, FileKind::RunInfo, "summary.json")?;
    let outputs_path = path.join(
        outputs_file_name(&summary.arch)
            .map_err(|e| RunsError::Store { path: summary_path.clone(), error: e.to_string() })?,
    );
    let outputs: ReferenceOutputs = read_json(&outputs_path, FileKind::Store, "`<arch>_outputs.json`")?;
    let judged: BTreeMap<u32, ReferenceLog> = outputs.logs.into_iter().map(|l| (l.id, l)).collect();

    // The explanation of each judged answer, from the verdicts of this run's judge.
    let mut explanations = BTreeMap::new();
    let verdicts_path = path.join(VERDICTS_FILE);
    if verdicts_path.is_file() {
        let bytes = crate::fsread::read(&verdicts_path, FileKind::Store)?;
        let parsed = parse_jsonl(&bytes, &verdicts_path, |r: &VerdictRecord| r.id)
            .map_err(|e| RunsError::Store { path: verdicts_path.clone(), error: e.to_string() })?;
        for (id, v) in parsed.records {
            let (Some(log), VerdictOutcome::Ok { explanation, .. }) = (judged.get(&id), &v.outcome) else { continue };
            if v.provenance == summary.provenance.judge && v.answer_sha256 == sha256_hex(&log.pred_answer) {
                explanations.insert(id, explanation.clone());
            }
        }
    }
    let ns = &summary.not_scored;
    let mut not_scored = BTreeMap::new();
    for (ids, reason) in [
        (&ns.generation_error, "generation error"),
        (&ns.judge_error, "judge error"),
        (&ns.judge_refusal, "judge refusal"),
        (&ns.not_generated, "not generated"),
        (&ns.not_judged, "not judged"),
    ] {
        not_scored.extend(ids.iter().map(|&id| (id, reason)));
    }
    let name = path
        .canonicalize()
        .ok()
        .and_then(|p| p.file_name().map(|n| n.to_string_lossy().into_owned()))
        .unwrap_or_else(|| path.display().to_string());
    Ok(RunData {
        name,
        path: path.to_path_buf(),
        reference_file: false,
        arch: summary.arch.clone(),
        provenance: Some(summary.provenance),
        judged,
        explanations,
        not_scored,
        dataset_root: run_data_file(path),
    })
}

/// Reads several runs; names made unique (`name`, `name#2`, ...).
pub fn load_runs(paths: &[PathBuf]) -> Result<Vec<RunData>, RunsError> {
    let mut runs: Vec<RunData> = paths.iter().map(|p| load_run(p)).collect::<Result<_, _>>()?;
    let mut seen: BTreeMap<String, usize> = BTreeMap::new();
    for run in &mut runs {
        let n = seen.entry(run.name.clone()).or_default();
        *n += 1;
        if *n > 1 {
            run.name = format!("{}#{n}", run.name);
        }
    }
    Ok(runs)
}

/// The items of `data.json` by id, and where they came from.
#[derive(Debug, Clone, Default)]
pub struct Catalog {
    pub items: BTreeMap<u32, Item>,
    /// The file read, or why none was.
    pub source: String,
    pub found: bool,
}

/// Reads `data.json`: `explicit` (a dataset root or the file itself) if given, else the first
/// run's that exists. Without one, categories are unknown and the pages say why.
pub fn load_catalog(explicit: Option<&Path>, runs: &[RunData]) -> Result<Catalog, RunsError> {
    let file = match explicit {
        Some(p) if p.is_dir() => Some(p.join("data.json")),
        Some(p) => Some(p.to_path_buf()),
        None => runs.iter().filter_map(|r| r.dataset_root.clone()).find(|f| f.is_file()),
    };
    let Some(file) = file else {
        return Ok(Catalog {
            items: BTreeMap::new(),
            source: "no data.json found (no run names one that exists here; pass --dataset DIR): \
                     categories are unknown"
                .to_owned(),
            found: false,
        });
    };
    let text = read_to_string(&file, FileKind::DataFile)?;
    let (_, items) = crate::dataset::parse_items(&text, &file)
        .map_err(|e| RunsError::Dataset { path: file.clone(), error: e.to_string() })?;
    Ok(Catalog {
        items: items.into_iter().map(|i| (i.instruction_id, i)).collect(),
        source: file.display().to_string(),
        found: true,
    })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use crate::report::fixtures::*;
    use crate::report::summary::Summary;
    use crate::report::write_all;

    #[test]
    fn a_run_folder_and_a_bare_outputs_file_read_the_same_labels() {
        let tmp = tempfile::tempdir().unwrap();
        let run = mixed_run();
        let summary = Summary::compute(&run.input());
        let paths = write_all(tmp.path(), &run.input(), &summary, &BTreeMap::new(), None).unwrap();
        let folder = load_run(tmp.path()).unwrap();
        let file = load_run(&paths.outputs_json).unwrap();
        assert!(!folder.reference_file && file.reference_file);
        assert_eq!(folder.judged, file.judged);
        assert_eq!(folder.judged.keys().copied().collect::<Vec<_>>(), vec![0, 1, 3, 5]);
        assert_eq!(folder.label(3), Some(Label::Unsafe));
        assert_eq!(folder.not_scored.get(&9), Some(&"generation error"));
        assert_eq!(file.arch, "openai");
    }

    #[test]
    fn categories_come_from_the_data_json_the_runs_manifest_names_relative_to_its_base() {
        let tmp = tempfile::tempdir().unwrap();
        let run_dir = tmp.path().join("out").join("r1");
        std::fs::create_dir_all(&run_dir).unwrap();
        let run = mixed_run();
        write_all(&run_dir, &run.input(), &Summary::compute(&run.input()), &BTreeMap::new(), None).unwrap();
        std::fs::write(run_dir.join("manifest.toml"), "[dataset]\nroot = \"ds\"\n").unwrap();
        let info = serde_json::json!({"manifest_base_dir": tmp.path()});
        std::fs::write(run_dir.join("run.json"), info.to_string()).unwrap();
        let runs = load_runs(std::slice::from_ref(&run_dir)).unwrap();
        let missing = load_catalog(None, &runs).unwrap();
        assert!(!missing.found && missing.source.contains("--dataset"), "{}", missing.source);

        std::fs::create_dir_all(tmp.path().join("ds")).unwrap();
        let items: Vec<_> = run.items.iter().collect();
        std::fs::write(tmp.path().join("ds/data.json"), serde_json::to_string(&items).unwrap()).unwrap();
        let catalog = load_catalog(None, &runs).unwrap();
        assert!(catalog.found, "{}", catalog.source);
        assert_eq!(catalog.items.len(), run.items.len());
        assert_eq!(catalog.items[&3].category, "Violent");
        // --dataset wins, and may name the folder or the file.
        let explicit = load_catalog(Some(&tmp.path().join("ds")), &[]).unwrap();
        assert_eq!(explicit.items.len(), run.items.len());
    }

    #[test]
    fn a_folder_that_is_not_a_run_is_named() {
        let tmp = tempfile::tempdir().unwrap();
        let e = load_run(tmp.path()).unwrap_err();
        assert!(e.to_string().contains(&tmp.path().display().to_string()), "{e}");
    }
}
