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
    #[error(transparent)]
    Read(#[from] crate::fsread::ReadError),
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
    /// Longest wait for one `generate` call, in seconds (default 3600): a backend that takes
    /// longer fails the call's items with `timeout` and the run goes on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub call_timeout_secs: Option<f64>,
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
    /// Items in flight at once: a number, or `"auto"` (each endpoint's limit found as the run goes,
    /// see `run::limiter`). Absent: `"auto"` for a remote backend (an API), 8 for a local one.
    #[serde(default)]
    pub concurrency: Option<Concurrency>,
    /// The most calls `"auto"` sends to one endpoint at once.
    #[serde(default = "default_max_concurrency")]
    pub max_concurrency: usize,
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
    /// How many shards the run is split into, for schedulers that give only the index
    /// (a Kubernetes Indexed Job's `JOB_COMPLETION_INDEX`); `run --shards` overrides it.
    #[serde(default)]
    pub shards: Option<u32>,
}

fn default_output_dir() -> PathBuf {
    PathBuf::from("outputs")
}
/// The worker count of a local backend when `[run] concurrency` is absent.
pub const DEFAULT_LOCAL_CONCURRENCY: usize = 8;
fn default_max_concurrency() -> usize {
    256
}

/// `[run] concurrency`: a fixed number of items in flight, or `"auto"`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "ConcurrencyValue", into = "ConcurrencyValue")]
pub enum Concurrency {
    Fixed(usize),
    Auto,
}

/// How `[run] concurrency` is written: a number or a word.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(untagged)]
enum ConcurrencyValue {
    Number(i64),
    Word(String),
}

impl TryFrom<ConcurrencyValue> for Concurrency {
    type Error = String;
    fn try_from(v: ConcurrencyValue) -> Result<Self, String> {
        match v {
            ConcurrencyValue::Number(n) if n >= 1 => Ok(Self::Fixed(usize::try_from(n).map_err(|e| e.to_string())?)),
            ConcurrencyValue::Number(n) => Err(format!("concurrency {n}: it must be at least 1, or \"auto\"")),
            ConcurrencyValue::Word(w) if w == "auto" => Ok(Self::Auto),
            ConcurrencyValue::Word(w) => Err(format!("concurrency {w:?}: expected a whole number or \"auto\"")),
        }
    }
}

impl From<Concurrency> for ConcurrencyValue {
    fn from(c: Concurrency) -> Self {
        match c {
            Concurrency::Fixed(n) => Self::Number(n as i64),
            Concurrency::Auto => Self::Word("auto".into()),
        }
    }
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
            concurrency: None,
            max_concurrency: default_max_concurrency(),
            max_tries: default_max_tries(),
            backoff_initial_ms: default_backoff_ms(),
            backoff_max_secs: default_backoff_max_secs(),
            retry_budget_secs: default_retry_budget_secs(),
            fail_on_unscored: false,
            shards: None,
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
    /// What error messages call this manifest: its path, or for a re-judging run the run's copy
    /// and the file the new `[judge]` came from.
    pub origin: String,
    /// The manifest's folder, absolute and canonical (what backends get as
    /// `BackendConfig::base_dir`, and what every relative path in the manifest starts from).
    pub base_dir: PathBuf,
    /// The file's text, copied into the run folder.
    pub text: String,
    pub manifest: Manifest,
}

impl LoadedManifest {
    /// Reads, parses and checks a manifest file.
    pub fn load(path: &Path) -> Result<Self, ManifestError> {
        let text = crate::fsread::read_to_string(path, crate::fsread::FileKind::Manifest)?;
        Self::from_text(path, text)
    }

    /// Parses and checks manifest text that came from `path`.
    pub fn from_text(path: &Path, text: String) -> Result<Self, ManifestError> {
        let manifest: Manifest = parse_toml(path, &text)?;
        let parent = path.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
        let base_dir = parent.canonicalize().or_else(|_| std::path::absolute(parent)).unwrap_or(parent.to_path_buf());
        let origin = path.display().to_string();
        let loaded = Self { path: path.to_path_buf(), origin, base_dir, text, manifest };
        loaded.check()?;
        Ok(loaded)
    }

    fn invalid(&self, message: impl Into<String>) -> ManifestError {
        ManifestError::Invalid { path: self.path.clone(), message: message.into() }
    }

    fn check(&self) -> Result<(), ManifestError> {
        let m = &self.manifest;
        if m.run.max_concurrency == 0 {
            return Err(self.invalid("[run] max_concurrency must be at least 1"));
        }
        if m.run.max_tries == 0 {
            return Err(self.invalid("[run] max_tries must be at least 1 (it counts the first try)"));
        }
        if let Err(why) = check_folder_name(&self.run_name()) {
            let what = if m.run.name.is_some() { "[run] name" } else { "the run name (the manifest's file stem)" };
            return Err(self.invalid(format!("{what} {:?} cannot be a folder name: {why}", self.run_name())));
        }
        self.check_output_dir()?;
        check_no_inline_secrets(&m.model.options, "[model.options]").map_err(|e| self.invalid(e))?;
        if let Some(jm) = &m.judge.model {
            check_no_inline_secrets(&jm.options, "[judge.model.options]").map_err(|e| self.invalid(e))?;
        }
        check_durations(m).map_err(|e| self.invalid(e))?;
        check_settings(&m.model.settings()).map_err(|e| self.invalid(format!("[model.generation] {e}")))?;
        if let Some(jm) = &m.judge.model {
            check_settings(&jm.generation).map_err(|e| self.invalid(format!("[judge.model.generation] {e}")))?;
        }
        if m.judge.model.is_none() && m.judge.grant.contains(&Capability::Chat) {
            return Err(self.invalid("[judge] grants \"chat\" but there is no [judge.model] for it to reach"));
        }
        Ok(())
    }

    /// `output_dir` and the run folder must be folders (or not exist yet): a file in their place
    /// would only fail when the run starts writing.
    fn check_output_dir(&self) -> Result<(), ManifestError> {
        let out = self.resolve(&self.manifest.run.output_dir);
        let run_dir = out.join(self.run_name());
        for (what, p) in [("[run] output_dir", &out), ("the run folder", &run_dir)] {
            if p.exists() && !p.is_dir() {
                return Err(self.invalid(format!("{what} {} is a file, not a folder", p.display())));
            }
        }
        // A missing output_dir is created; one of its parents being a file is not.
        if let Some(blocker) = out.ancestors().skip(1).find(|a| a.exists() && !a.is_dir()) {
            return Err(self.invalid(format!(
                "[run] output_dir {} cannot be created: {} is a file",
                out.display(),
                blocker.display()
            )));
        }
        Ok(())
    }

    /// Problems that do not stop a run but probably spoil it: judge limits of 0 (every item fails),
    /// backoff settings that can keep a run waiting for hours.
    pub fn warnings(&self) -> Vec<String> {
        let m = &self.manifest;
        let mut w = Vec::new();
        let l = &m.judge.limits;
        for (name, zero) in [
            ("fuel", l.fuel == Some(0)),
            ("timeout_secs", l.timeout_secs == Some(0.0)),
            ("memory_mib", l.memory_mib == Some(0)),
            ("max_output_kib", l.max_output_kib == Some(0)),
        ] {
            if zero {
                w.push(format!("[judge.limits] {name} = 0: every judge call will fail on this limit"));
            }
        }
        let r = &m.run;
        if r.backoff_initial_ms > 600_000 {
            w.push(format!(
                "[run] backoff_initial_ms = {} waits {} before the first retry",
                r.backoff_initial_ms,
                human_secs(r.backoff_initial_ms as f64 / 1000.0)
            ));
        }
        if r.backoff_max_secs > 3600.0 {
            w.push(format!(
                "[run] backoff_max_secs = {} lets one pause last {}",
                r.backoff_max_secs,
                human_secs(r.backoff_max_secs)
            ));
        }
        if r.retry_budget_secs > 4.0 * 3600.0 && r.max_tries > 1 {
            w.push(format!(
                "[run] retry_budget_secs = {} lets one failing call retry for {}",
                r.retry_budget_secs,
                human_secs(r.retry_budget_secs)
            ));
        }
        w
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

/// Longest value accepted for a duration in seconds (about 31 years): larger values cannot be a
/// wait anyone means, and overflow the clock arithmetic.
pub const MAX_SECS: f64 = 1.0e9;

/// `secs` as hours, minutes or seconds.
fn human_secs(secs: f64) -> String {
    if secs >= 3600.0 {
        format!("{:.1} hours", secs / 3600.0)
    } else if secs >= 60.0 {
        format!("{:.0} minutes", secs / 60.0)
    } else {
        format!("{secs:.0} s")
    }
}

fn check_secs(what: &str, v: f64) -> Result<(), String> {
    if !v.is_finite() || v < 0.0 {
        return Err(format!("{what} = {v} must be a number of seconds, 0 or more"));
    }
    if v > MAX_SECS {
        return Err(format!("{what} = {v} is too large: at most {MAX_SECS:e} seconds (about 31 years)"));
    }
    Ok(())
}

/// Every duration of the manifest is finite, non-negative and not absurdly large.
fn check_durations(m: &Manifest) -> Result<(), String> {
    if let Some(t) = m.judge.limits.timeout_secs {
        check_secs("[judge.limits] timeout_secs", t)?;
    }
    check_secs("[run] backoff_max_secs", m.run.backoff_max_secs)?;
    check_secs("[run] retry_budget_secs", m.run.retry_budget_secs)?;
    check_secs("[run] backoff_initial_ms / 1000", m.run.backoff_initial_ms as f64 / 1000.0)?;
    for (what, section) in [("[model]", Some(&m.model)), ("[judge.model]", m.judge.model.as_ref())] {
        if let Some(t) = section.and_then(|s| s.call_timeout_secs) {
            check_secs(&format!("{what} call_timeout_secs"), t)?;
            if t == 0.0 {
                return Err(format!("{what} call_timeout_secs must be more than 0"));
            }
        }
    }
    Ok(())
}

/// Why `name` cannot be one folder's name, if it cannot.
pub fn check_folder_name(name: &str) -> Result<(), String> {
    if name.is_empty() {
        return Err("it is empty".into());
    }
    if name == "." || name == ".." {
        return Err("it names the current or the parent folder".into());
    }
    if let Some(c) = name.chars().find(|c| matches!(c, '/' | '\\' | '\0')) {
        return Err(format!("it contains {c:?}"));
    }
    if let Some(c) = name.chars().find(|c| c.is_control()) {
        return Err(format!("it contains the control character {c:?}"));
    }
    if name.len() > 255 {
        return Err(format!("it is {} bytes long; a folder name holds at most 255", name.len()));
    }
    Ok(())
}

/// Option names that hold a secret when their value is a string: a manifest names the variable
/// that holds the secret, never the secret itself.
const SECRET_KEYS: [&str; 6] = ["api_key", "apikey", "token", "password", "secret", "authorization"];

fn check_no_inline_secrets(options: &toml::Table, section: &str) -> Result<(), String> {
    for (key, value) in options {
        let k = key.to_ascii_lowercase().replace('-', "_");
        let secret = SECRET_KEYS.iter().any(|s| k == *s || k.ends_with(&format!("_{s}")));
        if secret && value.is_str() {
            return Err(format!(
                "{section} {key}: a secret never goes in a manifest (it is copied into the run folder); \
                 put it in an environment variable and name the variable (e.g. api_key_env = \"OPENAI_API_KEY\")"
            ));
        }
    }
    Ok(())
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
        // Relative paths start from the manifest's folder, made absolute.
        let dir = std::path::absolute("dir").expect("the working folder exists");
        assert_eq!(m.base_dir, dir);
        assert_eq!(m.run_dir(), dir.join("outputs/m"));
        assert_eq!(m.dataset_root(), dir.join("data"));
        assert_eq!(m.manifest.run.concurrency, None, "chosen by the backend's kind");
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
    fn an_inline_api_key_is_refused() {
        let text =
            MINIMAL.replace("checkpoint = \"gpt-4o\"", "checkpoint = \"gpt-4o\"\noptions = { api_key = \"sk-x\" }");
        let err = load(&text).expect_err("inline key").to_string();
        assert!(err.contains("[model.options] api_key: a secret never goes in a manifest"), "{err}");
    }

    #[test]
    fn a_run_name_that_cannot_be_a_folder_is_refused() {
        for bad in ["a/b", "..", "x\\ny", &"n".repeat(256)] {
            let text = format!("{MINIMAL}\n[run]\nname = {}\n", toml::Value::String(bad.to_string()));
            let err = load(&text).expect_err("bad name").to_string();
            assert!(err.contains("cannot be a folder name"), "{bad:?}: {err}");
        }
    }

    #[test]
    fn an_output_dir_that_is_a_file_is_refused() {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::write(dir.path().join("outputs"), "x").expect("write");
        let path = dir.path().join("m.toml");
        let err = LoadedManifest::from_text(&path, MINIMAL.to_string()).expect_err("file").to_string();
        assert!(err.contains("output_dir") && err.contains("is a file"), "{err}");
        let text = format!("{MINIMAL}\n[run]\noutput_dir = \"outputs/deeper\"\n");
        let err = LoadedManifest::from_text(&path, text).expect_err("parent is a file").to_string();
        assert!(err.contains("cannot be created") && err.contains("is a file"), "{err}");
    }

    #[test]
    fn a_huge_timeout_is_refused_with_its_bound_not_a_panic() {
        let err = load(&format!("{MINIMAL}\n[judge.limits]\ntimeout_secs = 1e30\n")).expect_err("huge").to_string();
        assert!(err.contains("timeout_secs = 1000000000000000000000000000000 is too large"), "{err}");
        let err = load(&format!("{MINIMAL}\n[run]\nbackoff_max_secs = inf\n")).expect_err("inf").to_string();
        assert!(err.contains("backoff_max_secs"), "{err}");
    }

    #[test]
    fn limits_of_zero_and_hour_long_backoffs_are_warnings() {
        let text = format!(
            "{MINIMAL}\n[judge.limits]\nfuel = 0\ntimeout_secs = 0\n[run]\nbackoff_max_secs = 86400\nretry_budget_secs = 200000\n"
        );
        let w = load(&text).expect("valid").warnings();
        assert!(w.iter().any(|w| w.contains("fuel = 0")), "{w:?}");
        assert!(w.iter().any(|w| w.contains("timeout_secs = 0")), "{w:?}");
        assert!(w.iter().any(|w| w.contains("backoff_max_secs") && w.contains("24.0 hours")), "{w:?}");
        assert!(w.iter().any(|w| w.contains("retry_budget_secs")), "{w:?}");
        assert!(load(MINIMAL).expect("valid").warnings().is_empty());
    }

    #[test]
    fn reading_dev_zero_as_a_manifest_is_refused_at_once() {
        let err = LoadedManifest::load(Path::new("/dev/zero")).expect_err("device").to_string();
        assert_eq!(err, "manifest /dev/zero is a character device, not a regular file");
    }

    mod properties {
        use super::*;
        use proptest::prelude::*;

        proptest! {
            #![proptest_config(ProptestConfig { cases: 2000, ..ProptestConfig::default() })]

            #[test]
            fn any_text_loads_or_is_a_typed_error(text in "\\PC*") {
                match load(&text) {
                    Ok(_) | Err(ManifestError::Parse { .. } | ManifestError::Invalid { .. }) => {}
                    Err(other) => prop_assert!(false, "unexpected error {other}"),
                }
            }

            #[test]
            fn spliced_manifests_never_panic(cut in 0usize..400, junk in "[\\[\\]=\"'.a-z0-9 \\n{}-]{0,12}") {
                let at = MINIMAL.char_indices().map(|(i, _)| i).nth(cut).unwrap_or(MINIMAL.len());
                let mut text = MINIMAL.to_string();
                text.insert_str(at, &junk);
                if let Err(e) = load(&text) {
                    let message = e.to_string();
                    prop_assert!(message.starts_with("dir/m.toml"), "{}", message);
                }
            }

            #[test]
            fn any_numbers_in_run_and_limits_load_or_are_refused_never_panic(
                concurrency in any::<i64>(), tries in any::<i64>(), backoff in any::<f64>(), timeout in any::<f64>(),
            ) {
                let text = format!(
                    "{MINIMAL}\n[judge.limits]\ntimeout_secs = {}\n[run]\nconcurrency = {concurrency}\nmax_tries = {tries}\nbackoff_max_secs = {}\n",
                    toml::Value::Float(timeout), toml::Value::Float(backoff)
                );
                if let Ok(m) = load(&text) {
                    let _ = m.warnings();
                    let _ = crate::run::judge_limits(&m.manifest.judge);
                    let _ = crate::run::RetryPolicy::from_manifest(&m);
                }
            }
        }
    }

    #[test]
    fn line_column_counts_from_one() {
        assert_eq!(line_column("ab\ncd", 0), (1, 1));
        assert_eq!(line_column("ab\ncd", 4), (2, 2));
    }

    #[test]
    fn every_example_manifest_parses() {
        let examples = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples");
        let mut parsed = 0;
        for entry in std::fs::read_dir(&examples).expect("examples/") {
            let path = entry.expect("entry").path();
            let text = std::fs::read_to_string(&path).unwrap_or_default();
            // judge-*.toml hold a [judge] section alone (for `judge RUN_DIR --judge`).
            if path.extension().is_some_and(|e| e == "toml") && text.contains("[dataset]") {
                LoadedManifest::load(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
                parsed += 1;
            }
        }
        assert!(parsed >= 8, "only {parsed} example manifests");
    }
}
