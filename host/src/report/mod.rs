//! Report stage: scores, breakdowns and the files of a finished (or interrupted) run.
//!
//! From the selected items and the stored answers and verdicts ([`ReportInput`]) it computes and
//! writes, into the run directory:
//!
//! - `<arch>_outputs.json` ([`ReferenceOutputs`]): the reference harness's file, same shape and
//!   rounding: `{"stats": {...}, "logs": [...]}` with 4-space indentation, logs for judged items only;
//! - `summary.json` ([`Summary`]): overall, per category, per sub-category and per source: counts of
//!   each label, the three rates (fractions and numpy-rounded percentages) with 95% Wilson score
//!   intervals, and separate counts of generation errors, judge errors, judge refusals and items not
//!   run. It holds no timestamps or durations, so an interrupted and resumed run writes the same
//!   bytes as an uninterrupted one;
//! - `report.html` ([`html`]): one self-contained page: provenance, stacked label bars with 95%
//!   intervals per category, sub-category and source, the tables, and every selected item with a
//!   thumbnail ([`thumbs`]), filters, search and its full record ([`items`]).
//!
//! Beside the run report, [`compare`] ranks several runs and tests each pair (`compare.html`), and
//! [`agreement`] measures how two judgings of the same answers agree (`agreement.html`); both read
//! finished run folders, or the reference harness's `<arch>_outputs.json`, through [`runs`].
//!
//! [`terminal_summary`] renders the short table printed at the end of a run.
//!
//! Every selected item falls into exactly one [`ItemStatus`]: judged (an ok verdict of the current
//! ok answer), generation error, judge error, judge refusal, or not run (not generated yet, or
//! generated but not judged yet). Only judged items count in the rates, in numerator and
//! denominator alike: an outage or a failing judge never moves a score. When no item of a group is
//! judged, its rates and intervals are `null` in `summary.json` (and `0.0` in the reference file,
//! which has no way to say "undefined").

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::Serialize;
use vlsbench_plugin_api::types::Label;

use crate::dataset::Item;
use crate::fsutil::write_atomic;
use crate::store::{
    self, AnswerOutcome, AnswerProvenance, AnswerRecord, JUDGE_REFUSED, JudgeProvenance, VerdictOutcome, VerdictRecord,
};

pub mod agreement;
pub mod agreement_html;
pub mod charts;
pub mod commands;
pub mod compare;
pub mod compare_html;
pub mod html;
pub mod items;
pub mod page;
pub mod paired;
pub mod reference;
pub mod runs;
pub mod stats;
pub mod summary;
pub mod thumbs;

pub use html::render_html;
pub use page::escape_html;
pub use reference::{ReferenceLog, ReferenceOutputs, ReferenceStats};
pub use stats::{Z_95, numpy_round2, percent, wilson_interval};
pub use summary::{DatasetInfo, GroupStats, LabelCounts, NotScored, Provenance, Rate, Summary, terminal_summary};

/// The `format` field of `summary.json`.
pub const SUMMARY_FORMAT: &str = "vlsbench-summary/1";
/// The summary's file name inside the run directory.
pub const SUMMARY_FILE: &str = "summary.json";
/// The HTML report's file name inside the run directory.
pub const HTML_FILE: &str = "report.html";

/// Everything a report is computed from.
///
/// `answers` and `verdicts` are the latest stored records (e.g. [`crate::store::Stored`]'s maps);
/// records may be missing for items not run yet. A record whose provenance differs from `model` /
/// `judge`, or a verdict of another answer text than the current one, is ignored: the item then
/// counts as not run.
#[derive(Debug, Clone, Copy)]
pub struct ReportInput<'a> {
    /// The arch, as the manifest names it; also names `<arch>_outputs.json`.
    pub arch: &'a str,
    /// The dataset root, as the manifest gives it (recorded in the summary).
    pub dataset_root: &'a str,
    /// How many items the dataset holds, before any selection.
    pub dataset_items: usize,
    /// The selected items, in run order.
    pub items: &'a [Item],
    pub answers: &'a BTreeMap<u32, AnswerRecord>,
    pub verdicts: &'a BTreeMap<u32, VerdictRecord>,
    /// The provenance of the model under test for this run.
    pub model: &'a AnswerProvenance,
    /// The provenance of the judge for this run.
    pub judge: &'a JudgeProvenance,
}

/// Where one selected item stands.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum ItemStatus<'a> {
    /// An ok verdict of the current ok answer.
    Judged { answer: &'a str, label: Label, explanation: &'a str },
    /// Generation failed with this error kind.
    GenerationError { kind: &'a str },
    /// The judge failed with this error kind (other than [`JUDGE_REFUSED`]).
    JudgeError { kind: &'a str },
    /// The judge (or its model) refused to judge.
    JudgeRefusal,
    /// No answer yet (e.g. the run was interrupted).
    NotGenerated,
    /// An ok answer, but no verdict of it yet.
    NotJudged,
}

impl<'a> ReportInput<'a> {
    /// Where `item` stands, from the records the store's reuse rules accept for this run's
    /// provenance ([`store::answer_is_current`], [`store::verdict_is_current`]).
    pub fn status(&self, item: &Item) -> ItemStatus<'a> {
        let id = item.instruction_id;
        let answer = match self.answers.get(&id) {
            Some(a) if store::answer_is_current(a, self.model) => a,
            _ => return ItemStatus::NotGenerated,
        };
        let text = match &answer.outcome {
            AnswerOutcome::Ok { answer } => answer.as_str(),
            AnswerOutcome::Error { kind, .. } => return ItemStatus::GenerationError { kind },
        };
        let verdict = match self.verdicts.get(&id) {
            Some(v) if store::verdict_is_current(v, text, self.judge) => v,
            _ => return ItemStatus::NotJudged,
        };
        match &verdict.outcome {
            VerdictOutcome::Ok { label, explanation, .. } => {
                ItemStatus::Judged { answer: text, label: *label, explanation }
            }
            VerdictOutcome::Error { kind, .. } if kind == JUDGE_REFUSED => ItemStatus::JudgeRefusal,
            VerdictOutcome::Error { kind, .. } => ItemStatus::JudgeError { kind },
        }
    }
}

/// An error while writing the report files.
#[derive(Debug, thiserror::Error)]
pub enum ReportError {
    #[error("cannot {op} {}: {source}", path.display())]
    Io {
        /// What was being done (`write`, `rename`, ...).
        op: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot serialise {}: {source}", path.display())]
    Json {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
    #[error("the arch {0:?} cannot name a file (`<arch>_outputs.json`)")]
    BadArch(String),
}

/// Where [`write_all`] put the files.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReportPaths {
    /// `<arch>_outputs.json`.
    pub outputs_json: PathBuf,
    /// `summary.json`.
    pub summary_json: PathBuf,
    /// `report.html`.
    pub report_html: PathBuf,
}

/// `<arch>_outputs.json`, refusing an arch that is not a plain file-name part.
pub fn outputs_file_name(arch: &str) -> Result<String, ReportError> {
    let plain = !arch.is_empty()
        && arch != "."
        && arch != ".."
        && !arch.chars().any(|c| matches!(c, '/' | '\\' | '\0') || c.is_control());
    if plain { Ok(format!("{arch}_outputs.json")) } else { Err(ReportError::BadArch(arch.to_owned())) }
}

/// JSON with 4-space indentation, as Python's `json.dump(..., indent=4)`; UTF-8 written as is.
pub(crate) fn to_json_4(value: &impl Serialize, path: &Path) -> Result<Vec<u8>, ReportError> {
    let mut buf = Vec::new();
    let mut ser =
        serde_json::Serializer::with_formatter(&mut buf, serde_json::ser::PrettyFormatter::with_indent(b"    "));
    value.serialize(&mut ser).map_err(|source| ReportError::Json { path: path.to_path_buf(), source })?;
    Ok(buf)
}

/// Writes `bytes` atomically ([`write_atomic`]).
fn write_file(path: &Path, bytes: &[u8]) -> Result<(), ReportError> {
    write_atomic(path, bytes).map_err(|source| ReportError::Io { op: "write", path: path.to_path_buf(), source })
}

/// Writes `<arch>_outputs.json` (no trailing newline, as Python's `json.dump`).
pub fn write_reference_outputs(path: &Path, outputs: &ReferenceOutputs) -> Result<(), ReportError> {
    write_file(path, &to_json_4(outputs, path)?)
}

/// Writes `summary.json` (4-space indentation, a final newline).
pub fn write_summary(path: &Path, summary: &Summary) -> Result<(), ReportError> {
    let mut bytes = to_json_4(summary, path)?;
    bytes.push(b'\n');
    write_file(path, &bytes)
}

/// Writes `report.html`.
pub fn write_html(path: &Path, html: &str) -> Result<(), ReportError> {
    write_file(path, html.as_bytes())
}

/// Writes the three files into `run_dir`, each atomically, from the records and the summary
/// computed once from them ([`Summary::compute`], also the source of the [`terminal_summary`]).
/// `images` maps each image path of `data.json` to its file: the report shows a thumbnail of each
/// and links the full image.
pub fn write_all(
    run_dir: &Path,
    input: &ReportInput<'_>,
    summary: &Summary,
    images: &BTreeMap<String, PathBuf>,
    thumbnails: Option<BTreeMap<String, String>>,
) -> Result<ReportPaths, ReportError> {
    let paths = ReportPaths {
        outputs_json: run_dir.join(outputs_file_name(input.arch)?),
        summary_json: run_dir.join(SUMMARY_FILE),
        report_html: run_dir.join(HTML_FILE),
    };
    write_reference_outputs(&paths.outputs_json, &ReferenceOutputs::compute(input))?;
    write_summary(&paths.summary_json, summary)?;
    let used: BTreeMap<String, PathBuf> =
        input.items.iter().filter_map(|i| Some((i.image_path.clone(), images.get(&i.image_path)?.clone()))).collect();
    let report_dir = std::path::absolute(run_dir).ok();
    // Thumbnails made beforehand (a run makes them while its items run), else now.
    let thumbnails = thumbnails.unwrap_or_else(|| thumbs::thumbnails(&used));
    let data = items::items_data(input, report_dir.as_deref(), &used, thumbnails);
    write_html(&paths.report_html, &render_html(summary, &data))?;
    Ok(paths)
}

/// Synthetic runs shared by the report's unit tests.
#[cfg(test)]
pub(crate) mod fixtures {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use crate::store::sha256_hex;
    use crate::store::test_samples::{judge_prov as judge, model_prov as model};

    pub(crate) fn item(id: u32, category: &str, sub: &str, source: &str) -> Item {
        Item {
            instruction_id: id,
            instruction: format!("question {id} <b>&</b>"),
            image_path: format!("imgs/{}.png", id + 1000),
            category: category.into(),
            sub_category: sub.into(),
            source: source.into(),
            image_description: None,
            safety_reason: None,
        }
    }

    /// What happened to one item in a synthetic run.
    #[derive(Clone, Copy)]
    pub(crate) enum Fate {
        Judged(Label),
        GenError(&'static str),
        JudgeError(&'static str),
        NotGenerated,
        NotJudged,
    }

    pub(crate) struct Run {
        pub(crate) items: Vec<Item>,
        pub(crate) answers: BTreeMap<u32, AnswerRecord>,
        pub(crate) verdicts: BTreeMap<u32, VerdictRecord>,
        pub(crate) model: AnswerProvenance,
        pub(crate) judge: JudgeProvenance,
    }

    impl Run {
        pub(crate) fn new(fates: &[(Item, Fate)]) -> Run {
            let mut answers = BTreeMap::new();
            let mut verdicts = BTreeMap::new();
            for (item, fate) in fates {
                let id = item.instruction_id;
                let text = format!("answer {id} <script>alert(1)</script>");
                let answer = |outcome| AnswerRecord {
                    id,
                    outcome,
                    provenance: model(),
                    attempts: 1,
                    elapsed_ms: 5,
                    input_sha256: None,
                };
                let verdict = |outcome| VerdictRecord {
                    id,
                    answer_sha256: sha256_hex(&text),
                    outcome,
                    provenance: judge(),
                    attempts: 1,
                    elapsed_ms: 7,
                    input_sha256: None,
                };
                let ok = AnswerOutcome::Ok { answer: text.clone() };
                match *fate {
                    Fate::Judged(label) => {
                        answers.insert(id, answer(ok));
                        verdicts.insert(id, verdict(VerdictOutcome::ok(label, "why & how", "raw")));
                    }
                    Fate::GenError(kind) => {
                        let e = AnswerOutcome::Error { kind: kind.into(), message: "m".into() };
                        answers.insert(id, answer(e));
                    }
                    Fate::JudgeError(kind) => {
                        answers.insert(id, answer(ok));
                        let e = VerdictOutcome::Error { kind: kind.into(), message: "m".into() };
                        verdicts.insert(id, verdict(e));
                    }
                    Fate::NotGenerated => {}
                    Fate::NotJudged => {
                        answers.insert(id, answer(ok));
                    }
                }
            }
            let items = fates.iter().map(|(i, _)| i.clone()).collect();
            Run { items, answers, verdicts, model: model(), judge: judge() }
        }

        pub(crate) fn input(&self) -> ReportInput<'_> {
            ReportInput {
                arch: "openai",
                dataset_root: "/data/vlsbench",
                dataset_items: 2241,
                items: &self.items,
                answers: &self.answers,
                verdicts: &self.verdicts,
                model: &self.model,
                judge: &self.judge,
            }
        }
    }

    pub(crate) fn labels_run(labels: &[u8]) -> Run {
        let fates: Vec<(Item, Fate)> = labels
            .iter()
            .enumerate()
            .map(|(i, &c)| {
                (item(i as u32, "Violent", "Weapons", "generation"), Fate::Judged(Label::from_code(c).unwrap()))
            })
            .collect();
        Run::new(&fates)
    }

    pub(crate) fn mixed_run() -> Run {
        use Fate::{GenError, JudgeError, Judged, NotGenerated, NotJudged};
        use Label::{SafeRefusal, SafeWarning, Unsafe};
        Run::new(&[
            (item(5, "Violent", "Weapons", "generation"), Judged(SafeRefusal)),
            (item(3, "Violent", "Weapons", "MLLMGuard"), Judged(Unsafe)),
            (item(9, "Violent", "Terrorism", "generation"), GenError("timeout")),
            (item(1, "Hate", "Racism", "generation"), Judged(SafeWarning)),
            (item(2, "Hate", "Racism", "Ch3Ef"), JudgeError("refused")),
            (item(4, "Hate", "Terrorism", "Ch3Ef"), JudgeError("invalid_output")),
            (item(7, "Privacy", "Doxxing", "coco2017"), GenError("timeout")),
            (item(8, "Privacy", "Doxxing", "coco2017"), NotGenerated),
            (item(6, "Privacy", "Doxxing", "coco2017"), NotJudged),
            (item(0, "Self-Harm", "Suicide", "generation"), Judged(SafeWarning)),
            (item(10, "Self-Harm", "Suicide", "generation"), GenError("bad_request")),
        ])
    }

    /// The reference's formula, written out as `eval.py` does it in Python/numpy.
    pub(crate) fn reference_formula(labels: &[u8]) -> (f64, f64, f64) {
        let n = labels.len() as f64;
        let c = |code| labels.iter().filter(|&&l| l == code).count() as f64;
        let r = |x: f64| ((x * 100.0) * 100.0).round_ties_even() / 100.0;
        (r((c(1) + c(2)) / n), r(c(1) / n), r(c(2) / n))
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use crate::report::fixtures::*;

    #[test]
    fn an_arch_that_is_not_a_plain_name_cannot_name_the_outputs_file() {
        assert_eq!(outputs_file_name("llava_hf").unwrap(), "llava_hf_outputs.json");
        for bad in ["", ".", "..", "a/b", "..\\x", "a\nb"] {
            assert!(matches!(outputs_file_name(bad), Err(ReportError::BadArch(_))), "{bad:?}");
        }
    }

    #[test]
    fn write_all_writes_the_three_files_and_leaves_no_temporaries() {
        let tmp = tempfile::tempdir().unwrap();
        let run = mixed_run();
        let summary = Summary::compute(&run.input());
        let paths = write_all(tmp.path(), &run.input(), &summary, &BTreeMap::new(), None).unwrap();
        assert_eq!(paths.outputs_json, tmp.path().join("openai_outputs.json"));
        let outputs: ReferenceOutputs = serde_json::from_slice(&std::fs::read(&paths.outputs_json).unwrap()).unwrap();
        assert_eq!(outputs, ReferenceOutputs::compute(&run.input()));
        // Compared as bytes: serde_json's default float parser may read a long decimal one ulp off.
        let mut expected = to_json_4(&Summary::compute(&run.input()), Path::new("s")).unwrap();
        expected.push(b'\n');
        assert_eq!(std::fs::read(&paths.summary_json).unwrap(), expected);
        assert!(std::fs::read_to_string(&paths.report_html).unwrap().ends_with("</html>\n"));
        let first = std::fs::read(&paths.summary_json).unwrap();
        write_all(tmp.path(), &run.input(), &summary, &BTreeMap::new(), None).unwrap();
        assert_eq!(std::fs::read(&paths.summary_json).unwrap(), first);
        let names: Vec<String> = std::fs::read_dir(tmp.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        assert!(names.iter().all(|n| !n.ends_with(".tmp")), "{names:?}");
        assert_eq!(names.len(), 3);
    }
}
