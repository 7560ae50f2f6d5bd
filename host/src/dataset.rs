//! Dataset stage: reads a VLSBench root (`data.json` + the images it names), filters it and
//! validates every selected item, naming the item in every message.
//!
//! Each distinct image file is checked once, however many items share it (223 images are shared in
//! the released set). An image path must stay inside the root: no absolute path, no `..`, no
//! symlink that leads out.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::{Component, Path, PathBuf};

use serde::{Deserialize, Serialize};
use sha2::Digest as _;

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
    #[error("cannot read {path}: {error}")]
    Read { path: PathBuf, error: std::io::Error },
    #[error(transparent)]
    File(#[from] crate::fsread::ReadError),
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
    /// SHA-256 (hex) of the file's bytes: part of what the model was given (see
    /// [`crate::store::input_sha256`]).
    pub sha256: String,
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

    /// The hash of what the model is given for `item` (its question and its image's bytes), which
    /// stored answers and verdicts record; `None` for an item whose image was not validated.
    pub fn input_sha256(&self, item: &Item) -> Option<String> {
        let image = self.images.get(&item.image_path)?;
        Some(crate::store::input_sha256(&item.instruction, &image.sha256))
    }

    /// The current input hash of every selected item, by id.
    pub fn input_hashes(&self) -> BTreeMap<u32, String> {
        self.items.iter().filter_map(|i| Some((i.instruction_id, self.input_sha256(i)?))).collect()
    }
}

/// Runs `f` over `inputs` on all cores; results in the inputs' order.
fn par_map<T: Sync, R: Send>(inputs: &[T], f: impl Fn(&T) -> R + Sync) -> Vec<R> {
    let workers = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(2).min(inputs.len()).max(1);
    let next = std::sync::atomic::AtomicUsize::new(0);
    let mut slots: Vec<Option<R>> = Vec::with_capacity(inputs.len());
    slots.resize_with(inputs.len(), || None);
    let done = std::sync::Mutex::new(slots);
    std::thread::scope(|scope| {
        for _ in 0..workers {
            scope.spawn(|| {
                loop {
                    let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    let Some(input) = inputs.get(i) else { break };
                    let r = f(input);
                    done.lock().unwrap_or_else(|e| e.into_inner())[i] = Some(r);
                }
            });
        }
    });
    done.into_inner().unwrap_or_else(|e| e.into_inner()).into_iter().flatten().collect()
}

/// Decodes every distinct image of the dataset fully, in parallel (loading checked only the
/// header): a truncated or corrupt file is reported with the ids of the items that use it.
pub fn verify_images(ds: &Dataset) -> Result<(), DatasetError> {
    let images: Vec<(&String, &ImageInfo)> = ds.images.iter().collect();
    let results = par_map(&images, |(_, info)| decode_fully(&info.path));
    let mut problems = Vec::new();
    for ((rel, _), result) in images.iter().zip(results) {
        if let Err(reason) = result {
            let ids: Vec<u32> = ds.items.iter().filter(|i| &&i.image_path == rel).map(|i| i.instruction_id).collect();
            let who = if ids.len() == 1 { "item" } else { "items" };
            problems.push(format!("{who} {}: image {rel:?}: {reason}", crate::fsread::list_ids(&ids, 10)));
        }
    }
    if problems.is_empty() { Ok(()) } else { Err(invalid(ds.data_file.clone(), problems)) }
}

fn decode_fully(path: &Path) -> Result<(), String> {
    let bytes = crate::fsread::read(path, crate::fsread::FileKind::Image).map_err(|e| e.to_string())?;
    image::ImageReader::new(std::io::Cursor::new(bytes))
        .with_guessed_format()
        .map_err(|e| format!("unreadable ({e})"))?
        .decode()
        .map(drop)
        .map_err(|e| format!("does not decode ({e})"))
}

/// Reads one field of an item.
type FieldOf = fn(&Item) -> &str;

/// Filter values that name nothing in the file, each with the closest known name.
fn unknown_filter_names(items: &[Item], filters: &Filters) -> Vec<String> {
    let mut out = Vec::new();
    let lists: [(&str, &BTreeSet<String>, FieldOf); 3] = [
        ("categories", &filters.categories, |i| &i.category),
        ("sub_categories", &filters.sub_categories, |i| &i.sub_category),
        ("sources", &filters.sources, |i| &i.source),
    ];
    for (what, wanted, field) in lists {
        let known: BTreeSet<&str> = items.iter().map(field).collect();
        for name in wanted.iter().filter(|n| !known.contains(n.as_str())) {
            let closest = known
                .iter()
                .map(|k| (strsim::jaro_winkler(&name.to_lowercase(), &k.to_lowercase()), *k))
                .filter(|(score, _)| *score > 0.8)
                .max_by(|a, b| a.0.total_cmp(&b.0))
                .map(|(_, k)| format!("; did you mean {k:?}?"))
                .unwrap_or_default();
            out.push(format!("[dataset] {what}: {name:?} names nothing in the annotation file{closest}"));
        }
    }
    out
}

/// Parses the text of an annotation file (`data_path` names it in messages): a JSON array of
/// items, each with every field, ids unique. Returns the number of entries and the items. Never
/// panics, whatever the text; every rejection is a [`DatasetError`].
pub fn parse_items(text: &str, data_path: &Path) -> Result<(usize, Vec<Item>), DatasetError> {
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    let raw: serde_json::Value = serde_json::from_str(text).map_err(|e| DatasetError::Json {
        path: data_path.to_path_buf(),
        line: e.line(),
        column: e.column(),
        message: e.to_string(),
    })?;
    let serde_json::Value::Array(raw_items) = raw else {
        return Err(DatasetError::NotAnArray { path: data_path.to_path_buf() });
    };
    let all_items = raw_items.len();

    let mut problems = Vec::new();
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
        return Err(invalid(data_path.to_path_buf(), problems));
    }

    Ok((all_items, items))
}

/// Reads `root/data_file`, keeps the items the filters select, validates them and their images.
pub fn load(root: &Path, data_file: &str, filters: &Filters) -> Result<Dataset, DatasetError> {
    if !root.is_dir() {
        return Err(DatasetError::NoRoot(root.to_path_buf()));
    }
    let canonical_root = root.canonicalize().map_err(|error| DatasetError::Read { path: root.to_path_buf(), error })?;
    let data_path = root.join(data_file);
    // Bounded, regular files only, a byte-order mark dropped.
    let text = crate::fsread::read_to_string(&data_path, crate::fsread::FileKind::DataFile)?;
    let (all_items, items) = parse_items(&text, &data_path)?;
    let mut problems = Vec::new();
    let mut warnings = Vec::new();

    let unknown_names = unknown_filter_names(&items, filters);
    let mut selected: Vec<Item> = items.into_iter().filter(|i| filters.selects(i)).collect();
    if let Some(limit) = filters.limit {
        selected.truncate(limit);
    }
    if selected.is_empty() {
        let mut described = filters.describe();
        for u in &unknown_names {
            described.push_str(&format!("; {u}"));
        }
        return Err(DatasetError::Empty { path: data_path, filters: described });
    }
    warnings.extend(unknown_names);
    let missing_ids: Vec<u32> =
        filters.ids.iter().copied().filter(|id| !selected.iter().any(|i| i.instruction_id == *id)).collect();
    if !missing_ids.is_empty() && filters.limit.is_none() {
        warnings.push(format!("ids not selected (absent or filtered out): {missing_ids:?}"));
    }

    // Each distinct image is read and hashed once, on all cores.
    let distinct: Vec<&str> =
        selected.iter().map(|i| i.image_path.as_str()).collect::<BTreeSet<_>>().into_iter().collect();
    let checked: BTreeMap<&str, Result<ImageInfo, String>> =
        distinct.iter().copied().zip(par_map(&distinct, |rel| check_image(&canonical_root, rel))).collect();
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
            None => {
                checked.get(item.image_path.as_str()).cloned().unwrap_or_else(|| Err("was not checked".to_string()))
            }
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
    let data = match crate::fsread::read(&canonical, crate::fsread::FileKind::Image) {
        Ok(data) => data,
        Err(crate::fsread::ReadError::NotRegular { what, .. }) => return Err(format!("{what}, not a file")),
        Err(e @ crate::fsread::ReadError::TooLarge { .. }) => return Err(e.to_string()),
        Err(e) => return Err(format!("unreadable ({e})")),
    };
    let sha256 = hex::encode(sha2::Sha256::digest(&data));
    let bytes = data.len() as u64;
    let reader = image::ImageReader::new(std::io::Cursor::new(data))
        .with_guessed_format()
        .map_err(|e| format!("unreadable ({e})"))?;
    if reader.format().is_none() {
        return Err("not a known image format".into());
    }
    let (width, height) = reader.into_dimensions().map_err(|e| format!("not a readable image ({e})"))?;
    if width == 0 || height == 0 {
        return Err(format!("image has no pixels ({width}x{height})"));
    }
    Ok(ImageInfo { path: canonical, width, height, bytes, sha256 })
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
    fn a_byte_order_mark_before_the_array_is_ignored() {
        let dir = root_with(&[item(0, "imgs/0.png")]);
        let text = std::fs::read_to_string(dir.path().join("data.json")).expect("read");
        std::fs::write(dir.path().join("data.json"), format!("\u{feff}{text}")).expect("write");
        let ds = load(dir.path(), "data.json", &Filters::default()).expect("valid despite the BOM");
        assert_eq!(ds.items.len(), 1);
    }

    #[test]
    fn dev_zero_as_the_data_file_is_refused_without_reading_it() {
        let dir = root_with(&[item(0, "imgs/0.png")]);
        let err = load(dir.path(), "/dev/zero", &Filters::default()).expect_err("device").to_string();
        assert!(err.contains("/dev/zero is a character device, not a regular file"), "{err}");
    }

    #[test]
    fn an_unknown_category_name_is_a_warning_with_the_closest_name() {
        let dir = root_with(&[item(0, "imgs/0.png"), item(1, "imgs/1.png")]);
        let f = Filters { categories: ["A".to_string(), "b".to_string()].into(), ..Default::default() };
        let ds = load(dir.path(), "data.json", &f).expect("valid");
        assert!(
            ds.warnings
                .iter()
                .any(|w| w.contains("categories: \"b\" names nothing") && w.contains("did you mean \"B\"")),
            "{:?}",
            ds.warnings
        );
    }

    #[test]
    fn a_truncated_png_passes_the_header_check_and_fails_the_full_decode_naming_its_items() {
        let dir = root_with(&[item(0, "imgs/0.png"), item(1, "imgs/1.png"), item(2, "imgs/1.png")]);
        let img = image::RgbImage::from_fn(64, 64, |x, y| image::Rgb([x as u8, y as u8, (x * y) as u8]));
        let path = dir.path().join("imgs/1.png");
        img.save(&path).expect("png");
        let bytes = std::fs::read(&path).expect("read");
        std::fs::write(&path, &bytes[..bytes.len() / 2]).expect("truncate");
        let ds = load(dir.path(), "data.json", &Filters::default()).expect("the header is intact");
        let err = verify_images(&ds).expect_err("truncated").to_string();
        assert!(err.contains("items 1, 2: image \"imgs/1.png\": does not decode"), "{err}");
        assert!(!err.contains("imgs/0.png"), "{err}");
    }

    #[test]
    fn images_are_hashed_so_a_replaced_image_changes_the_input_hash() {
        let dir = root_with(&[item(0, "imgs/0.png")]);
        let before = load(dir.path(), "data.json", &Filters::default()).expect("valid");
        let img = image::RgbImage::from_pixel(4, 3, image::Rgb([99, 20, 30]));
        img.save(dir.path().join("imgs/0.png")).expect("png");
        let after = load(dir.path(), "data.json", &Filters::default()).expect("valid");
        let (b, a) = (&before.items[0], &after.items[0]);
        assert_ne!(before.input_sha256(b), after.input_sha256(a));
    }

    mod properties {
        use super::super::*;
        use proptest::prelude::*;

        fn item_json() -> impl Strategy<Value = serde_json::Value> {
            (0u32..50, "\\PC{0,30}", "[a-z/.]{0,12}", "[A-Z][a-z]{0,6}", prop::bool::ANY).prop_map(
                |(id, q, img, cat, drop_field)| {
                    let mut v = serde_json::json!({
                        "instruction_id": id, "instruction": q, "image_path": img,
                        "category": cat, "sub_category": "s", "source": "g"
                    });
                    if drop_field && let Some(o) = v.as_object_mut() {
                        o.remove("source");
                    }
                    v
                },
            )
        }

        proptest! {
            #![proptest_config(ProptestConfig { cases: 2000, ..ProptestConfig::default() })]

            #[test]
            fn any_text_parses_or_is_a_typed_error(text in "\\PC*") {
                let _ = parse_items(&text, Path::new("data.json"));
            }

            #[test]
            fn arrays_of_items_parse_or_name_the_bad_entry(items in prop::collection::vec(item_json(), 0..12)) {
                let text = serde_json::to_string(&items).unwrap_or_default();
                match parse_items(&text, Path::new("data.json")) {
                    Ok((n, parsed)) => {
                        prop_assert_eq!(n, items.len());
                        prop_assert_eq!(parsed.len(), items.len());
                    }
                    Err(DatasetError::Invalid { problems, .. }) => {
                        prop_assert!(problems.iter().all(|p| p.starts_with("item ") || p.starts_with("entry #") || p.starts_with("...")));
                    }
                    Err(other) => prop_assert!(false, "unexpected error {other}"),
                }
            }

            #[test]
            fn truncated_or_spliced_files_never_panic(
                items in prop::collection::vec(item_json(), 1..6),
                cut in 0usize..600,
                junk in "\\PC{0,6}",
            ) {
                let mut text = serde_json::to_string(&items).unwrap_or_default();
                let at = text.char_indices().map(|(i, _)| i).nth(cut).unwrap_or(text.len());
                text.insert_str(at, &junk);
                let _ = parse_items(&text, Path::new("data.json"));
                let _ = parse_items(&text[..at], Path::new("data.json"));
            }
        }
    }

    #[test]
    fn a_missing_root_is_named() {
        let err = load(Path::new("/nonexistent/vls"), "data.json", &Filters::default()).expect_err("none");
        assert!(err.to_string().contains("/nonexistent/vls"));
    }
}
