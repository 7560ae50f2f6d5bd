//! Dataset stage: reads a VLSBench root (`data.json` + the images it names), filters it and
//! validates every selected item, naming the item in every message.
//!
//! Each distinct image file is checked once, however many items share it (223 images are shared in
//! the released set). An image path must stay inside the root: no absolute path, no `..`, no
//! symlink that leads out.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::{Component, Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::manifest::DatasetSection;

/// One VLSBench item, as in `data.json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Item {
    pub instruction_id: u32,
    pub instruction: String,
    /// Relative to the dataset root, as written in `data.json` (e.g. `imgs/0.png`).
    pub image_path: String,
    pub category: String,
    pub sub_category: String,
    pub source: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image_description: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub safety_reason: Option<String>,
}

/// Why a dataset could not be used.
#[derive(Debug, thiserror::Error)]
pub enum DatasetError {
    #[error("dataset root {0} does not exist or is not a folder")]
    NoRoot(PathBuf),
    #[error("cannot read {path}: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("{path}:{line}:{column}: not valid JSON: {message}")]
    Json { path: PathBuf, line: usize, column: usize, message: String },
    #[error("{path}: the top level must be a JSON array of items")]
    NotAnArray { path: PathBuf },
    #[error("{path}: {count} problem(s):\n{}", .problems.join("\n"))]
    Invalid { path: PathBuf, count: usize, problems: Vec<String> },
    #[error("{path}: the filters select no item ({filters})")]
    Empty { path: PathBuf, filters: String },
}

/// Which items to run; empty lists select everything.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Filters {
    pub limit: Option<usize>,
    pub ids: BTreeSet<u32>,
    pub categories: BTreeSet<String>,
    pub sub_categories: BTreeSet<String>,
    pub sources: BTreeSet<String>,
}

impl Filters {
    pub fn from_section(s: &DatasetSection) -> Self {
        Self {
            limit: s.limit,
            ids: s.ids.iter().copied().collect(),
            categories: s.categories.iter().cloned().collect(),
            sub_categories: s.sub_categories.iter().cloned().collect(),
            sources: s.sources.iter().cloned().collect(),
        }
    }

    fn selects(&self, item: &Item) -> bool {
        (self.ids.is_empty() || self.ids.contains(&item.instruction_id))
            && (self.categories.is_empty() || self.categories.contains(&item.category))
            && (self.sub_categories.is_empty() || self.sub_categories.contains(&item.sub_category))
            && (self.sources.is_empty() || self.sources.contains(&item.source))
    }

    fn describe(&self) -> String {
        let mut parts = Vec::new();
        if !self.ids.is_empty() {
            parts.push(format!("ids {:?}", self.ids));
        }
        if !self.categories.is_empty() {
            parts.push(format!("categories {:?}", self.categories));
        }
        if !self.sub_categories.is_empty() {
            parts.push(format!("sub_categories {:?}", self.sub_categories));
        }
        if !self.sources.is_empty() {
            parts.push(format!("sources {:?}", self.sources));
        }
        if let Some(l) = self.limit {
            parts.push(format!("limit {l}"));
        }
        if parts.is_empty() { "no filter".into() } else { parts.join(", ") }
    }
}

/// What is known of one distinct image file.
#[derive(Debug, Clone, PartialEq)]
pub struct ImageInfo {
    /// Canonical path inside the root.
    pub path: PathBuf,
    pub width: u32,
    pub height: u32,
    pub bytes: u64,
}

/// A loaded, filtered and validated dataset.
#[derive(Debug, Clone)]
pub struct Dataset {
    pub root: PathBuf,
    pub data_file: PathBuf,
    /// Items in the file's order.
    pub all_items: usize,
    /// The selected items, in the file's order.
    pub items: Vec<Item>,
    /// Each distinct image of the selected items, by its path as written in `data.json`.
    pub images: BTreeMap<String, ImageInfo>,
    /// Problems that do not stop a run (an empty instruction, ...), each naming its item.
    pub warnings: Vec<String>,
}

impl Dataset {
    /// The validated, canonical image file of an item.
    pub fn image_file(&self, item: &Item) -> Option<&Path> {
        self.images.get(&item.image_path).map(|i| i.path.as_path())
    }
}

/// Reads `root/data_file`, keeps the items the filters select, validates them and their images.
pub fn load(root: &Path, data_file: &str, filters: &Filters) -> Result<Dataset, DatasetError> {
    if !root.is_dir() {
        return Err(DatasetError::NoRoot(root.to_path_buf()));
    }
    let canonical_root =
        root.canonicalize().map_err(|source| DatasetError::Read { path: root.to_path_buf(), source })?;
    let data_path = root.join(data_file);
    let text =
        std::fs::read_to_string(&data_path).map_err(|source| DatasetError::Read { path: data_path.clone(), source })?;
    let raw: serde_json::Value = serde_json::from_str(&text).map_err(|e| DatasetError::Json {
        path: data_path.clone(),
        line: e.line(),
        column: e.column(),
        message: e.to_string(),
    })?;
    let serde_json::Value::Array(raw_items) = raw else {
        return Err(DatasetError::NotAnArray { path: data_path });
    };
    let all_items = raw_items.len();

    let mut problems = Vec::new();
    let mut warnings = Vec::new();
    let mut items = Vec::with_capacity(raw_items.len());
    let mut seen: HashMap<u32, usize> = HashMap::new();
    for (index, value) in raw_items.into_iter().enumerate() {
        let id_hint = value.get("instruction_id").map(|v| format!(" (instruction_id {v})")).unwrap_or_default();
        match serde_json::from_value::<Item>(value) {
            Ok(item) => {
                if let Some(first) = seen.insert(item.instruction_id, index) {
                    problems.push(format!(
                        "item {}: duplicate instruction_id (entries #{first} and #{index})",
                        item.instruction_id
                    ));
                }
                items.push(item);
            }
            Err(e) => problems.push(format!("entry #{index}{id_hint}: {e}")),
        }
    }
    if !problems.is_empty() {
        return Err(invalid(data_path, problems));
    }

    let mut selected: Vec<Item> = items.into_iter().filter(|i| filters.selects(i)).collect();
    if let Some(limit) = filters.limit {
        selected.truncate(limit);
    }
    if selected.is_empty() {
        return Err(DatasetError::Empty { path: data_path, filters: filters.describe() });
    }
    let missing_ids: Vec<u32> =
        filters.ids.iter().copied().filter(|id| !selected.iter().any(|i| i.instruction_id == *id)).collect();
    if !missing_ids.is_empty() && filters.limit.is_none() {
        warnings.push(format!("ids not selected (absent or filtered out): {missing_ids:?}"));
    }

    let mut images: BTreeMap<String, ImageInfo> = BTreeMap::new();
    let mut bad_images: BTreeMap<String, String> = BTreeMap::new();
    for item in &selected {
        if item.instruction.trim().is_empty() {
            warnings.push(format!("item {}: empty instruction (the model gets only the image)", item.instruction_id));
        }
        if images.contains_key(&item.image_path) {
            continue;
        }
        let result = match bad_images.get(&item.image_path) {
            Some(reason) => Err(reason.clone()),
            None => check_image(&canonical_root, &item.image_path),
        };
        match result {
            Ok(info) => {
                images.insert(item.image_path.clone(), info);
            }
            Err(reason) => {
                problems.push(format!("item {}: image {:?}: {reason}", item.instruction_id, item.image_path));
                bad_images.insert(item.image_path.clone(), reason);
            }
        }
    }
    if !problems.is_empty() {
        return Err(invalid(data_path, problems));
    }
    Ok(Dataset { root: canonical_root, data_file: data_path, all_items, items: selected, images, warnings })
}

fn invalid(path: PathBuf, mut problems: Vec<String>) -> DatasetError {
    const SHOWN: usize = 30;
    let count = problems.len();
    if count > SHOWN {
        problems.truncate(SHOWN);
        problems.push(format!("... and {} more", count - SHOWN));
    }
    DatasetError::Invalid { path, count, problems }
}

/// Checks that `rel` names a readable image inside `root` (canonical), reading only its header.
fn check_image(root: &Path, rel: &str) -> Result<ImageInfo, String> {
    let rel_path = Path::new(rel);
    if rel.is_empty() {
        return Err("empty path".into());
    }
    for c in rel_path.components() {
        match c {
            Component::Normal(_) | Component::CurDir => {}
            Component::ParentDir => return Err("path contains `..`".into()),
            Component::RootDir | Component::Prefix(_) => return Err("path is absolute".into()),
        }
    }
    let joined = root.join(rel_path);
    let canonical = joined.canonicalize().map_err(|e| format!("missing or unreachable ({e})"))?;
    if !canonical.starts_with(root) {
        return Err(format!("leads out of the dataset root (to {})", canonical.display()));
    }
    let meta = std::fs::metadata(&canonical).map_err(|e| format!("unreadable ({e})"))?;
    if !meta.is_file() {
        return Err("not a file".into());
    }
    let reader = image::ImageReader::open(&canonical)
        .map_err(|e| format!("unreadable ({e})"))?
        .with_guessed_format()
        .map_err(|e| format!("unreadable ({e})"))?;
    if reader.format().is_none() {
        return Err("not a known image format".into());
    }
    let (width, height) = reader.into_dimensions().map_err(|e| format!("not a readable image ({e})"))?;
    if width == 0 || height == 0 {
        return Err(format!("image has no pixels ({width}x{height})"));
    }
    Ok(ImageInfo { path: canonical, width, height, bytes: meta.len() })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn png(path: &Path) {
        let img = image::RgbImage::from_pixel(4, 3, image::Rgb([10, 20, 30]));
        img.save(path).expect("write png");
    }

    fn item(id: u32, image: &str) -> serde_json::Value {
        serde_json::json!({
            "instruction_id": id, "instruction": format!("question {id}"), "image_path": image,
            "category": if id.is_multiple_of(2) { "A" } else { "B" }, "sub_category": "s", "source": "ours"
        })
    }

    fn root_with(items: &[serde_json::Value]) -> tempfile::TempDir {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::create_dir(dir.path().join("imgs")).expect("mkdir");
        for i in 0..4 {
            png(&dir.path().join(format!("imgs/{i}.png")));
        }
        std::fs::write(dir.path().join("data.json"), serde_json::to_string(items).expect("json")).expect("write");
        dir
    }

    #[test]
    fn a_valid_root_loads_and_shared_images_are_checked_once() {
        let dir = root_with(&[item(0, "imgs/0.png"), item(1, "imgs/0.png"), item(2, "imgs/1.png")]);
        let ds = load(dir.path(), "data.json", &Filters::default()).expect("valid");
        assert_eq!(ds.items.len(), 3);
        assert_eq!(ds.images.len(), 2);
        assert_eq!(ds.images["imgs/0.png"].width, 4);
    }

    #[test]
    fn filters_select_by_category_and_limit() {
        let dir = root_with(&[item(0, "imgs/0.png"), item(1, "imgs/1.png"), item(2, "imgs/2.png")]);
        let f = Filters { categories: ["A".to_string()].into(), limit: Some(1), ..Default::default() };
        let ds = load(dir.path(), "data.json", &f).expect("valid");
        assert_eq!(ds.items.iter().map(|i| i.instruction_id).collect::<Vec<_>>(), vec![0]);
    }

    #[test]
    fn every_problem_names_its_item() {
        let dir = root_with(&[
            item(0, "imgs/missing.png"),
            item(1, "../outside.png"),
            item(2, "/etc/passwd"),
            item(3, "data.json"),
        ]);
        let err = load(dir.path(), "data.json", &Filters::default()).expect_err("invalid").to_string();
        assert!(err.contains("item 0: image \"imgs/missing.png\": missing"), "{err}");
        assert!(err.contains("item 1: image \"../outside.png\": path contains `..`"), "{err}");
        assert!(err.contains("item 2: image \"/etc/passwd\": path is absolute"), "{err}");
        assert!(err.contains("item 3: image \"data.json\": not a known image format"), "{err}");
    }

    #[test]
    fn a_symlink_out_of_the_root_is_refused() {
        let outside = tempfile::tempdir().expect("tempdir");
        png(&outside.path().join("x.png"));
        let dir = root_with(&[item(0, "imgs/link.png")]);
        std::os::unix::fs::symlink(outside.path().join("x.png"), dir.path().join("imgs/link.png")).expect("symlink");
        let err = load(dir.path(), "data.json", &Filters::default()).expect_err("escape").to_string();
        assert!(err.contains("leads out of the dataset root"), "{err}");
    }

    #[test]
    fn duplicate_ids_and_missing_fields_are_errors() {
        let mut broken = item(1, "imgs/1.png");
        broken.as_object_mut().expect("object").remove("category");
        let dir = root_with(&[item(0, "imgs/0.png"), item(0, "imgs/1.png"), broken]);
        let err = load(dir.path(), "data.json", &Filters::default()).expect_err("invalid").to_string();
        assert!(err.contains("item 0: duplicate instruction_id"), "{err}");
        assert!(err.contains("entry #2 (instruction_id 1): missing field `category`"), "{err}");
    }

    #[test]
    fn an_empty_instruction_is_a_warning() {
        let mut empty = item(0, "imgs/0.png");
        empty["instruction"] = serde_json::json!("");
        let dir = root_with(&[empty]);
        let ds = load(dir.path(), "data.json", &Filters::default()).expect("valid");
        assert!(ds.warnings.iter().any(|w| w.contains("item 0: empty instruction")), "{:?}", ds.warnings);
    }

    #[test]
    fn malformed_json_names_line_and_column() {
        let dir = root_with(&[]);
        std::fs::write(dir.path().join("data.json"), "[\n{\"instruction_id\": }]").expect("write");
        let err = load(dir.path(), "data.json", &Filters::default()).expect_err("bad").to_string();
        assert!(err.contains("data.json:2:"), "{err}");
    }

    #[test]
    fn a_missing_root_is_named() {
        let err = load(Path::new("/nonexistent/vls"), "data.json", &Filters::default()).expect_err("none");
        assert!(err.to_string().contains("/nonexistent/vls"));
    }
}
