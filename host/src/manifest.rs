//! Manifest stage: reads and checks the TOML file that names the dataset, the model, the judge and
//! the run settings. Unknown keys are errors; every error names the file, line and column.
//!
//! Relative paths in a manifest are relative to the manifest's own folder. Secrets never appear in
//! a manifest: a backend option names the environment variable that holds them.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use vlsbench_plugin_api::GenerationSettings;

/// Why a manifest could not be read.
#[derive(Debug, thiserror::Error)]
pub enum ManifestError {
    #[error("cannot read manifest {path}: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("{path}:{line}:{column}: {message}")]
    Parse { path: PathBuf, line: usize, column: usize, message: String },
    #[error("{path}: {message}")]
    Invalid { path: PathBuf, message: String },
}

/// A whole manifest, as written.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    pub dataset: DatasetSection,
    pub model: ModelSection,
    pub judge: JudgeSection,
    #[serde(default)]
    pub run: RunSection,
}

/// `[dataset]`: where the VLSBench root is and which items to run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DatasetSection {
    /// The folder holding `data.json` and the images it names.
    pub root: PathBuf,
    /// The annotation file inside `root` (default `data.json`).
    #[serde(default = "default_data_file")]
    pub data_file: String,
    /// Run at most this many items (after the other filters).
    #[serde(default)]
    pub limit: Option<usize>,
    /// Only these instruction ids.
    #[serde(default)]
    pub ids: Vec<u32>,
    #[serde(default)]
    pub categories: Vec<String>,
    #[serde(default)]
    pub sub_categories: Vec<String>,
    #[serde(default)]
    pub sources: Vec<String>,
}

fn default_data_file() -> String {
    "data.json".to_string()
}

/// `[model]` (and `[judge.model]`): which backend runs which checkpoint.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelSection {
    /// The arch, as a backend declares it: `openai`, `llava_hf`, `answers_file`, ...
    pub arch: String,
    /// A backend name (found on the plugin path) or a path to a backend library. Default: the
    /// backend on the plugin path that declares `arch`.
    #[serde(default)]
    pub backend: Option<String>,
    /// A checkpoint folder, or a model name for API backends.
    #[serde(default)]
    pub checkpoint: Option<String>,
    #[serde(default)]
    pub device: Option<String>,
    #[serde(default)]
    pub dtype: Option<String>,
    /// Overrides of the reference settings (max_new_tokens 128, temperature 0, top_p 1).
    #[serde(default)]
    pub generation: GenerationSettings,
    /// The backend's own options, passed to it as JSON.
    #[serde(default)]
    pub options: toml::Table,
}

impl ModelSection {
    /// The settings sent with every request: the reference's, overridden by `[model.generation]`.
    pub fn settings(&self) -> GenerationSettings {
        let reference = GenerationSettings::reference();
        GenerationSettings {
            max_new_tokens: self.generation.max_new_tokens.or(reference.max_new_tokens),
            temperature: self.generation.temperature.or(reference.temperature),
            top_p: self.generation.top_p.or(reference.top_p),
        }
    }

    /// The backend options as JSON.
    pub fn options_json(&self) -> serde_json::Value {
        serde_json::to_value(&self.options).unwrap_or(serde_json::Value::Null)
    }
}

/// A capability a judge may be granted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Capability {
    Chat,
    Log,
}

/// `[judge]`: which component labels the answers, what it may do, and under which limits.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JudgeSection {
    /// A judge name (`vlsbench`, `refusal-keywords`, found on the plugin path) or a `.wasm` path.
    pub component: String,
    /// Capabilities granted to the component. It also has to ask for them.
    #[serde(default)]
    pub grant: BTreeSet<Capability>,
    /// The component's own configuration, passed to it as JSON.
    #[serde(default)]
    pub config: toml::Table,
    #[serde(default)]
    pub limits: JudgeLimitsSection,
    /// The model the judge's `chat` calls reach.
    #[serde(default)]
    pub model: Option<ModelSection>,
}

impl JudgeSection {
    pub fn config_json(&self) -> serde_json::Value {
        serde_json::to_value(&self.config).unwrap_or(serde_json::Value::Null)
    }
}

/// `[judge.limits]`: per-call limits. Missing values take the defaults.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JudgeLimitsSection {
    /// Wasm fuel per call (a deterministic cut-off).
    #[serde(default)]
    pub fuel: Option<u64>,
    /// Wall time of the judge's own computation per call, in seconds (chat calls not counted).
    #[serde(default)]
    pub timeout_secs: Option<f64>,
    /// Linear memory cap per call, in MiB.
    #[serde(default)]
    pub memory_mib: Option<u64>,
    /// Largest verdict (explanation + raw output), in KiB.
    #[serde(default)]
    pub max_output_kib: Option<u64>,
}

/// `[run]`: where results go and how hard to push.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RunSection {
    /// The run's folder name under `output_dir` (default: the manifest's file stem).
    #[serde(default)]
    pub name: Option<String>,
    #[serde(default = "default_output_dir")]
    pub output_dir: PathBuf,
    /// Items in flight at once (generate and judge calls together).
    #[serde(default = "default_concurrency")]
    pub concurrency: usize,
    /// Tries per call, the first included, for retryable failures.
    #[serde(default = "default_max_tries")]
    pub max_tries: u32,
    /// First backoff pause, in milliseconds; doubles each try, with jitter.
    #[serde(default = "default_backoff_ms")]
    pub backoff_initial_ms: u64,
    /// Longest single pause, in seconds (a longer Retry-After is still honoured up to `retry_budget_secs`).
    #[serde(default = "default_backoff_max_secs")]
    pub backoff_max_secs: f64,
    /// Total time one call may spend retrying, in seconds.
    #[serde(default = "default_retry_budget_secs")]
    pub retry_budget_secs: f64,
    /// Exit non-zero when any selected item ends unscored.
    #[serde(default)]
    pub fail_on_unscored: bool,
}

fn default_output_dir() -> PathBuf {
    PathBuf::from("outputs")
}
fn default_concurrency() -> usize {
    8
}
fn default_max_tries() -> u32 {
    4
}
fn default_backoff_ms() -> u64 {
    1000
}
fn default_backoff_max_secs() -> f64 {
    60.0
}
fn default_retry_budget_secs() -> f64 {
    300.0
}

impl Default for RunSection {
    fn default() -> Self {
        Self {
            name: None,
            output_dir: default_output_dir(),
            concurrency: default_concurrency(),
            max_tries: default_max_tries(),
            backoff_initial_ms: default_backoff_ms(),
            backoff_max_secs: default_backoff_max_secs(),
            retry_budget_secs: default_retry_budget_secs(),
            fail_on_unscored: false,
        }
    }
}

impl RunSection {
    pub fn backoff_initial(&self) -> Duration {
        Duration::from_millis(self.backoff_initial_ms)
    }
}

/// A manifest read from a file, with the folder its relative paths are relative to.
#[derive(Debug, Clone)]
pub struct LoadedManifest {
    pub path: PathBuf,
    /// The manifest's folder.
    pub base_dir: PathBuf,
    /// The file's text, copied into the run folder.
    pub text: String,
    pub manifest: Manifest,
}

impl LoadedManifest {
    /// Reads, parses and checks a manifest file.
    pub fn load(path: &Path) -> Result<Self, ManifestError> {
        let text =
            std::fs::read_to_string(path).map_err(|source| ManifestError::Read { path: path.to_path_buf(), source })?;
        Self::from_text(path, text)
    }

    /// Parses and checks manifest text that came from `path`.
    pub fn from_text(path: &Path, text: String) -> Result<Self, ManifestError> {
        let manifest: Manifest = parse_toml(path, &text)?;
        let base_dir = path
            .parent()
            .map(|p| if p.as_os_str().is_empty() { Path::new(".") } else { p })
            .unwrap_or(Path::new("."))
            .to_path_buf();
        let loaded = Self { path: path.to_path_buf(), base_dir, text, manifest };
        loaded.check()?;
        Ok(loaded)
    }

    fn invalid(&self, message: impl Into<String>) -> ManifestError {
        ManifestError::Invalid { path: self.path.clone(), message: message.into() }
    }

    fn check(&self) -> Result<(), ManifestError> {
        let m = &self.manifest;
        if m.run.concurrency == 0 {
            return Err(self.invalid("[run] concurrency must be at least 1"));
        }
        if m.run.max_tries == 0 {
            return Err(self.invalid("[run] max_tries must be at least 1 (it counts the first try)"));
        }
        if let Some(name) = &m.run.name
            && (name.is_empty() || name.contains(['/', '\\']) || name == "." || name == "..")
        {
            return Err(self.invalid(format!("[run] name {name:?} must be a plain folder name")));
        }
        check_settings(&m.model.settings()).map_err(|e| self.invalid(format!("[model.generation] {e}")))?;
        if let Some(jm) = &m.judge.model {
            check_settings(&jm.generation).map_err(|e| self.invalid(format!("[judge.model.generation] {e}")))?;
        }
        if m.judge.model.is_none() && m.judge.grant.contains(&Capability::Chat) {
            return Err(self.invalid("[judge] grants \"chat\" but there is no [judge.model] for it to reach"));
        }
        Ok(())
    }

    /// Resolves a manifest path against the manifest's folder.
    pub fn resolve(&self, p: &Path) -> PathBuf {
        vlsbench_plugin_api::resolve_path(&self.base_dir, p)
    }

    /// The dataset root.
    pub fn dataset_root(&self) -> PathBuf {
        self.resolve(&self.manifest.dataset.root)
    }

    /// The run name: `[run] name`, else the manifest's file stem.
    pub fn run_name(&self) -> String {
        self.manifest.run.name.clone().unwrap_or_else(|| {
            self.path.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_else(|| "run".to_string())
        })
    }

    /// `<output_dir>/<run name>`.
    pub fn run_dir(&self) -> PathBuf {
        self.resolve(&self.manifest.run.output_dir).join(self.run_name())
    }
}

fn check_settings(s: &GenerationSettings) -> Result<(), String> {
    if s.max_new_tokens == Some(0) {
        return Err("max_new_tokens must be at least 1".into());
    }
    if let Some(t) = s.temperature
        && !(0.0..=2.0).contains(&t)
    {
        return Err(format!("temperature {t} is outside 0..=2"));
    }
    if let Some(p) = s.top_p
        && !(p > 0.0 && p <= 1.0)
    {
        return Err(format!("top_p {p} is outside (0, 1]"));
    }
    Ok(())
}

/// Parses TOML into `T`, turning errors into `file:line:column: message`.
pub fn parse_toml<T: serde::de::DeserializeOwned>(path: &Path, text: &str) -> Result<T, ManifestError> {
    toml::from_str(text).map_err(|e| {
        let (line, column) = e.span().map(|s| line_column(text, s.start)).unwrap_or((1, 1));
        ManifestError::Parse { path: path.to_path_buf(), line, column, message: e.message().trim().to_string() }
    })
}

/// 1-based line and column (in characters) of a byte offset.
pub fn line_column(text: &str, offset: usize) -> (usize, usize) {
    let offset = offset.min(text.len());
    let before = text.get(..offset).unwrap_or(text);
    let line = before.matches('\n').count() + 1;
    let line_start = before.rfind('\n').map(|i| i + 1).unwrap_or(0);
    let column = before.get(line_start..).map(|s| s.chars().count()).unwrap_or(0) + 1;
    (line, column)
}

#[cfg(test)]
mod tests {
    use super::*;

    const MINIMAL: &str = r#"
[dataset]
root = "data"

[model]
arch = "openai"
checkpoint = "gpt-4o"

[judge]
component = "refusal-keywords"
"#;

    fn load(text: &str) -> Result<LoadedManifest, ManifestError> {
        LoadedManifest::from_text(Path::new("dir/m.toml"), text.to_string())
    }

    #[test]
    fn a_minimal_manifest_takes_the_reference_defaults() {
        let m = load(MINIMAL).expect("valid");
        assert_eq!(m.manifest.model.settings(), GenerationSettings::reference());
        assert_eq!(m.run_name(), "m");
        assert_eq!(m.run_dir(), Path::new("dir/outputs/m"));
        assert_eq!(m.dataset_root(), Path::new("dir/data"));
        assert_eq!(m.manifest.run.concurrency, 8);
    }

    #[test]
    fn an_unknown_key_is_an_error_with_its_line_and_column() {
        let text = MINIMAL.replace("checkpoint = \"gpt-4o\"", "checkpoint = \"gpt-4o\"\nchekpoint = 1");
        let err = load(&text).expect_err("unknown key").to_string();
        assert!(err.starts_with("dir/m.toml:8:1:"), "{err}");
        assert!(err.contains("chekpoint"), "{err}");
    }

    #[test]
    fn malformed_toml_names_file_line_and_column() {
        let err = load("[dataset]\nroot = \"x\n").expect_err("bad toml").to_string();
        assert!(err.starts_with("dir/m.toml:2:"), "{err}");
    }

    #[test]
    fn granting_chat_without_a_judge_model_is_refused() {
        let text = MINIMAL.replace("component = \"refusal-keywords\"", "component = \"vlsbench\"\ngrant = [\"chat\"]");
        let err = load(&text).expect_err("no judge model").to_string();
        assert!(err.contains("[judge.model]"), "{err}");
    }

    #[test]
    fn generation_overrides_keep_the_other_reference_settings() {
        let text = format!("{MINIMAL}\n[model.generation]\nmax_new_tokens = 64\n");
        // [model.generation] after [judge] is still the model's table in TOML.
        let m = load(&text).expect("valid");
        let s = m.manifest.model.settings();
        assert_eq!(s.max_new_tokens, Some(64));
        assert_eq!(s.temperature, Some(0.0));
    }

    #[test]
    fn zero_concurrency_is_refused() {
        let err = load(&format!("{MINIMAL}\n[run]\nconcurrency = 0\n")).expect_err("zero").to_string();
        assert!(err.contains("concurrency"), "{err}");
    }

    #[test]
    fn line_column_counts_from_one() {
        assert_eq!(line_column("ab\ncd", 0), (1, 1));
        assert_eq!(line_column("ab\ncd", 4), (2, 2));
    }
}
