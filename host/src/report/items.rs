//! Every selected item as the report's script reads it: one [`ItemView`] per item (judged or not),
//! with its full record (question, answer, label, explanation, the judge's raw output, errors), the
//! key of its thumbnail and a link to its full image relative to the report.

use std::collections::BTreeMap;
use std::path::Path;

use serde::Serialize;

use super::{ItemStatus, ReportInput};
use crate::store::{AnswerOutcome, VerdictOutcome};

/// One item of the report's item browser.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ItemView {
    pub id: u32,
    pub question: String,
    pub category: String,
    pub sub_category: String,
    pub source: String,
    /// The image path as `data.json` writes it (the key of its thumbnail).
    pub image: String,
    /// The full image, relative to the report's folder where possible.
    pub image_href: Option<String>,
    /// `judged`, `generation_error`, `judge_error`, `judge_refusal`, `not_generated`, `not_judged`.
    pub status: &'static str,
    /// 1, 2 or 3 for a judged item.
    pub label: Option<u8>,
    /// The error kind, for a generation or judge error.
    pub error_kind: Option<String>,
    /// The error message.
    pub error: Option<String>,
    pub answer: Option<String>,
    pub explanation: Option<String>,
    /// The judge's raw output.
    pub raw: Option<String>,
    pub answer_attempts: Option<u32>,
    pub answer_ms: Option<u64>,
    pub judge_attempts: Option<u32>,
    pub judge_ms: Option<u64>,
}

/// What the script needs beside the items.
#[derive(Debug, Clone, Serialize)]
pub struct ItemsData {
    pub items: Vec<ItemView>,
    /// Thumbnails by image path (`data:` URLs); images without one are absent.
    pub thumbs: BTreeMap<String, String>,
}

/// The link to an image: relative from the report's folder when both paths are absolute,
/// else the path as it is.
pub fn image_href(report_dir: Option<&Path>, image_file: &Path) -> String {
    let rel = report_dir.filter(|d| d.is_absolute() && image_file.is_absolute()).and_then(|d| {
        let d = d.canonicalize().unwrap_or_else(|_| d.to_path_buf());
        pathdiff::diff_paths(image_file, d)
    });
    let path = rel.unwrap_or_else(|| image_file.to_path_buf());
    // A relative URL: '/' separators, and the characters that would end or bend one escaped.
    let mut out = String::new();
    for c in path.to_string_lossy().chars() {
        match c {
            '%' | '#' | '?' | ' ' | '"' | '<' | '>' => out.push_str(&format!("%{:02X}", c as u32)),
            '\\' => out.push('/'),
            c => out.push(c),
        }
    }
    out
}

/// The items, ordered by id, with their thumbnails.
pub fn items_data(
    input: &ReportInput<'_>,
    report_dir: Option<&Path>,
    image_files: &BTreeMap<String, std::path::PathBuf>,
    thumbs: BTreeMap<String, String>,
) -> ItemsData {
    let mut items: Vec<ItemView> = input
        .items
        .iter()
        .map(|item| {
            let id = item.instruction_id;
            let status = input.status(item);
            let answer_rec = input.answers.get(&id);
            let verdict_rec = input.verdicts.get(&id);
            let mut view = ItemView {
                id,
                question: item.instruction.clone(),
                category: item.category.clone(),
                sub_category: item.sub_category.clone(),
                source: item.source.clone(),
                image: item.image_path.clone(),
                image_href: image_files.get(&item.image_path).map(|f| image_href(report_dir, f)),
                status: status_name(&status),
                label: None,
                error_kind: None,
                error: None,
                answer: None,
                explanation: None,
                raw: None,
                answer_attempts: None,
                answer_ms: None,
                judge_attempts: None,
                judge_ms: None,
            };
            if !matches!(status, ItemStatus::NotGenerated)
                && let Some(a) = answer_rec
            {
                view.answer_attempts = Some(a.attempts);
                view.answer_ms = Some(a.elapsed_ms);
                match &a.outcome {
                    AnswerOutcome::Ok { answer } => view.answer = Some(answer.clone()),
                    AnswerOutcome::Error { kind, message } => {
                        view.error_kind = Some(kind.clone());
                        view.error = Some(message.clone());
                    }
                }
            }
            let judged_or_failed =
                matches!(status, ItemStatus::Judged { .. } | ItemStatus::JudgeError { .. } | ItemStatus::JudgeRefusal);
            if judged_or_failed && let Some(v) = verdict_rec {
                view.judge_attempts = Some(v.attempts);
                view.judge_ms = Some(v.elapsed_ms);
                match &v.outcome {
                    VerdictOutcome::Ok { label, explanation, raw, .. } => {
                        view.label = Some(label.code());
                        view.explanation = Some(explanation.clone());
                        view.raw = Some(raw.clone());
                    }
                    VerdictOutcome::Error { kind, message } => {
                        view.error_kind = Some(kind.clone());
                        view.error = Some(message.clone());
                    }
                }
            }
            view
        })
        .collect();
    items.sort_by_key(|i| i.id);
    ItemsData { items, thumbs }
}

fn status_name(s: &ItemStatus<'_>) -> &'static str {
    match s {
        ItemStatus::Judged { .. } => "judged",
        ItemStatus::GenerationError { .. } => "generation_error",
        ItemStatus::JudgeError { .. } => "judge_error",
        ItemStatus::JudgeRefusal => "judge_refusal",
        ItemStatus::NotGenerated => "not_generated",
        ItemStatus::NotJudged => "not_judged",
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use crate::report::fixtures::*;

    #[test]
    fn every_selected_item_is_listed_with_its_status_label_and_error() {
        let run = mixed_run();
        let data = items_data(&run.input(), None, &BTreeMap::new(), BTreeMap::new());
        assert_eq!(data.items.len(), run.items.len());
        let by_id: BTreeMap<u32, &ItemView> = data.items.iter().map(|i| (i.id, i)).collect();
        assert_eq!(by_id[&3].label, Some(3));
        assert_eq!(by_id[&3].raw.as_deref(), Some("raw"));
        assert_eq!(by_id[&9].status, "generation_error");
        assert_eq!(by_id[&9].error_kind.as_deref(), Some("timeout"));
        assert_eq!(by_id[&4].status, "judge_error");
        assert_eq!(by_id[&4].error_kind.as_deref(), Some("invalid_output"));
        assert!(by_id[&4].answer.is_some(), "a judge error keeps the answer");
        assert_eq!(by_id[&8].status, "not_generated");
        assert_eq!(by_id[&6].status, "not_judged");
        assert_eq!(by_id[&6].label, None);
    }

    #[test]
    fn an_image_link_is_relative_to_the_report_folder_and_escaped() {
        let href = image_href(Some(Path::new("/runs/out/r1")), Path::new("/data/vls bench/imgs/a#1.png"));
        assert_eq!(href, "../../../data/vls%20bench/imgs/a%231.png");
        assert_eq!(image_href(None, Path::new("imgs/1.png")), "imgs/1.png");
    }
}
