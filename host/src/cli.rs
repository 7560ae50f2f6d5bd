//! Command line: `run`, `validate`, `judge` (re-judge a finished run's answers) and `plugins`.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use anyhow::{Context, bail};
use clap::{Args, Parser, Subcommand};

use crate::backend;
use crate::judge::JudgeEngine;
use crate::manifest::{JudgeSection, LoadedManifest, parse_toml};
use crate::run::{self, RunOptions};

/// Evaluates multimodal models on the VLSBench safety benchmark.
#[derive(Debug, Parser)]
#[command(name = "vlsbench-host", version, about)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Runs a manifest: generate, judge, report. Run it again to resume.
    Run {
        manifest: PathBuf,
        #[command(flatten)]
        common: Common,
    },
    /// Checks a manifest, its dataset and both plugins without running anything.
    Validate {
        manifest: PathBuf,
        #[command(flatten)]
        common: Common,
    },
    /// Judges the stored answers of a finished run with another judge, into a new run folder.
    Judge {
        /// A run folder (`<output_dir>/<run name>`).
        run_dir: PathBuf,
        /// A TOML file with a `[judge]` section (a whole manifest works too).
        #[arg(long)]
        judge: PathBuf,
        /// The new run's name (default: `<run name>--<judge component>`).
        #[arg(long)]
        name: Option<String>,
        #[command(flatten)]
        common: Common,
    },
    /// Ranks finished runs (or `<arch>_outputs.json` files) and compares each pair: paired
    /// difference of safe rates, McNemar's exact test. Writes compare.json and compare.html.
    Compare {
        /// Run folders or `<arch>_outputs.json` files (at least two).
        #[arg(required = true, num_args = 2..)]
        runs: Vec<PathBuf>,
        /// The dataset root (or its data.json) for per-category results (default: the runs' own).
        #[arg(long, value_name = "DIR")]
        dataset: Option<PathBuf>,
        /// Where to write compare.json and compare.html.
        #[arg(long, value_name = "DIR", default_value = ".")]
        out: PathBuf,
    },
    /// How two judgings of the same answers agree: confusion matrix, Cohen's kappa, per category,
    /// disagreeing items. Writes agreement.json and agreement.html.
    Agreement {
        /// The first run (rows of the matrix).
        run_a: PathBuf,
        /// The second run (columns).
        run_b: PathBuf,
        /// The dataset root (or its data.json) for per-category results (default: the runs' own).
        #[arg(long, value_name = "DIR")]
        dataset: Option<PathBuf>,
        /// Where to write agreement.json and agreement.html.
        #[arg(long, value_name = "DIR", default_value = ".")]
        out: PathBuf,
    },
    /// Lists the backends and judges on the plugin path, or describes one.
    Plugins {
        /// A backend or judge name to describe as JSON.
        name: Option<String>,
        #[command(flatten)]
        common: Common,
    },
}

#[derive(Debug, Args, Clone, Default)]
pub struct Common {
    /// A folder to search for plugins first (repeatable); `VLSBENCH_PLUGIN_PATH` is searched next.
    #[arg(long = "plugin-path", value_name = "DIR")]
    pub plugin_path: Vec<PathBuf>,
    /// Where compiled judge components are cached.
    #[arg(long, value_name = "DIR", env = "VLSBENCH_CACHE_DIR")]
    pub cache_dir: Option<PathBuf>,
    /// Exit with status 2 when any selected item ends without a label.
    #[arg(long)]
    pub fail_on_unscored: bool,
    /// Never draw a progress bar.
    #[arg(long)]
    pub no_progress: bool,
}

impl Common {
    fn options(&self) -> RunOptions {
        RunOptions {
            plugin_dirs: self.plugin_path.clone(),
            cache_dir: self.cache_dir.clone(),
            progress: !self.no_progress,
            judge_only: false,
            fail_on_unscored: self.fail_on_unscored,
        }
    }
}

/// Exit status when the command failed (a bad manifest, a dataset problem, a plugin that does not
/// load, a run that stopped on an error).
pub const EXIT_ERROR: u8 = 1;
/// Exit status of a command-line mistake (an unknown subcommand or flag, a missing argument), as
/// BSD's `EX_USAGE`; clap's own default, 2, belongs to [`EXIT_UNSCORED`].
pub const EXIT_USAGE: u8 = 64;
/// Exit status when `--fail-on-unscored` (or `[run] fail_on_unscored`) finds an unscored item.
pub const EXIT_UNSCORED: u8 = 2;
/// Exit status when a run was interrupted (as a shell reports SIGINT).
pub const EXIT_INTERRUPTED: u8 = 130;

/// Parses the arguments and runs the command.
pub fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            // --help and --version print and succeed; anything else is a usage mistake.
            let _ = e.print();
            return if e.use_stderr() { ExitCode::from(EXIT_USAGE) } else { ExitCode::SUCCESS };
        }
    };
    match dispatch(cli) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {}", crate::secrets::redact(&format!("{e:#}")));
            ExitCode::from(EXIT_ERROR)
        }
    }
}

/// Logs what in a manifest probably spoils a run without stopping it.
fn warn_manifest(loaded: &LoadedManifest) -> Vec<String> {
    let warnings = loaded.warnings();
    for w in &warnings {
        tracing::warn!("{}: {w}", loaded.path.display());
    }
    warnings
}

fn dispatch(cli: Cli) -> anyhow::Result<ExitCode> {
    match cli.command {
        Command::Run { manifest, common } => {
            let loaded = LoadedManifest::load(&manifest)?;
            warn_manifest(&loaded);
            run_loaded(loaded, common.options())
        }
        Command::Validate { manifest, common } => validate(&manifest, &common),
        Command::Judge { run_dir, judge, name, common } => rejudge(&run_dir, &judge, name, &common),
        Command::Plugins { name, common } => plugins(name.as_deref(), &common),
        Command::Compare { runs, dataset, out } => {
            crate::report::commands::compare_command(&runs, dataset.as_deref(), &out).map(|()| ExitCode::SUCCESS)
        }
        Command::Agreement { run_a, run_b, dataset, out } => {
            crate::report::commands::agreement_command(&run_a, &run_b, dataset.as_deref(), &out)
                .map(|()| ExitCode::SUCCESS)
        }
    }
}

/// First Ctrl-C: finish the items in flight, keep everything, write the reports. Second: exit now
/// (finished items are on disk already).
fn install_ctrl_c(cancel: Arc<AtomicBool>) {
    let presses = AtomicUsize::new(0);
    let result = ctrlc::set_handler(move || {
        if presses.fetch_add(1, Ordering::SeqCst) == 0 {
            cancel.store(true, Ordering::SeqCst);
            eprintln!("\ninterrupted: finishing the items in flight (press Ctrl-C again to stop at once)");
        } else {
            eprintln!("\nstopped; finished items are kept, run the same command to resume");
            std::process::exit(i32::from(EXIT_INTERRUPTED));
        }
    });
    if let Err(e) = result {
        tracing::warn!("cannot install the Ctrl-C handler: {e}");
    }
}

fn run_loaded(loaded: LoadedManifest, opts: RunOptions) -> anyhow::Result<ExitCode> {
    let fail_on_unscored = opts.fail_on_unscored || loaded.manifest.run.fail_on_unscored;
    let prepared = run::prepare(loaded, &opts)?;
    let cancel = Arc::new(AtomicBool::new(false));
    install_ctrl_c(cancel.clone());
    let outcome = run::execute(&prepared, &opts, cancel)?;
    println!("{}", outcome.terminal_summary);
    let shown = outcome.run_dir.canonicalize().unwrap_or_else(|_| outcome.run_dir.clone());
    println!("results in {}", shown.display());
    if outcome.interrupted {
        eprintln!("interrupted: run the same command again to resume");
        return Ok(ExitCode::from(EXIT_INTERRUPTED));
    }
    if fail_on_unscored && outcome.unscored > 0 {
        eprintln!("{} item(s) not scored (--fail-on-unscored)", outcome.unscored);
        return Ok(ExitCode::from(EXIT_UNSCORED));
    }
    Ok(ExitCode::SUCCESS)
}

fn validate(path: &Path, common: &Common) -> anyhow::Result<ExitCode> {
    let loaded = LoadedManifest::load(path)?;
    let manifest_warnings = loaded.warnings();
    let p = run::prepare(loaded, &common.options())?;
    let m = &p.manifest;
    let ds = &p.dataset;
    // Loading read each image's header; a run decodes them all, so validate does too.
    let started = std::time::Instant::now();
    crate::dataset::verify_images(ds).with_context(|| format!("{}: [dataset]", m.path.display()))?;
    let decode_secs = started.elapsed().as_secs_f64();
    println!("manifest   {}: ok", m.path.display());
    for w in &manifest_warnings {
        println!("  warning: {w}");
    }
    println!(
        "dataset    {}: {} of {} items selected, {} distinct images, all decoded ({decode_secs:.1} s)",
        ds.root.display(),
        ds.items.len(),
        ds.all_items,
        ds.images.len()
    );
    for w in &ds.warnings {
        println!("  warning: {w}");
    }
    let lib = &p.model_library;
    println!(
        "model      arch {} → backend {} (ABI {}.{}, {})",
        m.manifest.model.arch,
        lib.label(),
        lib.abi.0,
        lib.abi.1,
        lib.path.display()
    );
    let info = p.judge.info();
    println!(
        "judge      {} {} ({}; sha256 {}…)",
        info.name,
        info.version,
        p.judge.path().display(),
        &p.judge.sha256()[..12.min(p.judge.sha256().len())]
    );
    println!(
        "           asks for: {}; granted: chat={} log={}",
        [info.wants_chat.then_some("chat"), info.wants_log.then_some("log")]
            .into_iter()
            .flatten()
            .collect::<Vec<_>>()
            .join(", "),
        p.grants.chat,
        p.grants.log
    );
    if let Some(jl) = &p.judge_model_library {
        println!("judge model → backend {} ({})", jl.label(), jl.path.display());
    }
    println!("run folder {}", m.run_dir().display());
    Ok(ExitCode::SUCCESS)
}

#[derive(serde::Deserialize)]
struct JudgeFile {
    judge: JudgeSection,
}

/// Re-judges a run's stored answers: a new run folder whose manifest is the old one with `[judge]`
/// replaced, seeded with the old answers; the model is never called.
fn rejudge(run_dir: &Path, judge_file: &Path, name: Option<String>, common: &Common) -> anyhow::Result<ExitCode> {
    use crate::fsread::{FileKind, read_to_string};
    let manifest_copy = run_dir.join("manifest.toml");
    let old_text = read_to_string(&manifest_copy, FileKind::Manifest)
        .with_context(|| format!("{} is not a run folder (no readable manifest.toml)", run_dir.display()))?;
    let run_info: serde_json::Value = read_to_string(&run_dir.join("run.json"), FileKind::RunInfo)
        .ok()
        .and_then(|t| serde_json::from_str(&t).ok())
        .unwrap_or_default();
    // Nothing to judge: say so before creating anything.
    let stored = crate::store::read_answers(run_dir)?;
    if !stored.values().any(|a| a.outcome.answer().is_some()) {
        bail!(
            "{} holds no answer to judge ({} is empty or has only errors); run the manifest first",
            run_dir.display(),
            run_dir.join(crate::store::ANSWERS_FILE).display()
        );
    }
    let base_dir = run_info
        .get("manifest_base_dir")
        .and_then(|v| v.as_str())
        .map(PathBuf::from)
        .unwrap_or_else(|| run_dir.to_path_buf());

    let judge_text = read_to_string(judge_file, FileKind::Manifest)?;
    let parsed: JudgeFile = parse_toml(judge_file, &judge_text)?;
    let mut judge = parsed.judge;
    let judge_dir = judge_file.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
    let judge_dir = judge_dir.canonicalize().unwrap_or_else(|_| judge_dir.to_path_buf());
    if crate::judge::discovery::names_a_file(&judge.component) {
        judge.component = vlsbench_plugin_api::resolve_path(&judge_dir, &judge.component).display().to_string();
    }

    let mut table: toml::Table = toml::from_str(&old_text).context("the run's manifest.toml is not valid TOML")?;
    let judge_value = toml::Value::try_from(&judge).context("cannot serialise [judge]")?;
    table.insert("judge".into(), judge_value);
    let source_name = run_dir.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_else(|| "run".into());
    let new_name = name.unwrap_or_else(|| {
        let j = Path::new(&judge.component).file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_default();
        format!("{source_name}--{}", j.trim_start_matches("vlsbench_judge_"))
    });
    let parent = run_dir.canonicalize().unwrap_or_else(|_| run_dir.to_path_buf());
    let parent = parent.parent().map(Path::to_path_buf).unwrap_or_else(|| PathBuf::from("."));
    let run = table.entry("run").or_insert_with(|| toml::Value::Table(Default::default()));
    if let Some(run) = run.as_table_mut() {
        run.insert("name".into(), toml::Value::String(new_name.clone()));
        run.insert("output_dir".into(), toml::Value::String(parent.display().to_string()));
    }
    let new_text = toml::to_string_pretty(&table).context("cannot write the new manifest")?;
    let new_dir = parent.join(&new_name);
    if new_dir == parent.join(&source_name) {
        bail!("the new run name must differ from {source_name}");
    }
    let mut loaded = LoadedManifest::from_text(&new_dir.join("manifest.toml"), new_text)?;
    loaded.base_dir = base_dir;
    warn_manifest(&loaded);

    std::fs::create_dir_all(&new_dir).with_context(|| format!("cannot create {}", new_dir.display()))?;
    let answers = new_dir.join(crate::store::ANSWERS_FILE);
    if !answers.exists() {
        std::fs::copy(run_dir.join(crate::store::ANSWERS_FILE), &answers)
            .with_context(|| format!("cannot copy the answers of {}", run_dir.display()))?;
    }
    let mut opts = common.options();
    opts.judge_only = true;
    run_loaded(loaded, opts)
}

fn plugins(name: Option<&str>, common: &Common) -> anyhow::Result<ExitCode> {
    let dirs = backend::search_path(&common.plugin_path);
    let engine = JudgeEngine::new(common.cache_dir.clone()).context("cannot start the judge engine")?;
    let backends = backend::discover(&dirs);
    let judges: Vec<_> = crate::judge::judge_files(&dirs).into_iter().map(|p| (p.clone(), engine.load(&p))).collect();
    if let Some(name) = name {
        if let Some(lib) = backends.iter().filter_map(|r| r.as_ref().ok()).find(|l| l.info.name == name) {
            let mut v = serde_json::to_value(&lib.info)?;
            v["path"] = serde_json::json!(lib.path);
            v["abi"] = serde_json::json!(format!("{}.{}", lib.abi.0, lib.abi.1));
            v["kind"] = serde_json::json!("backend");
            if let Some(options) = &lib.options {
                v["options"] = serde_json::to_value(options)?;
            }
            println!("{}", serde_json::to_string_pretty(&v)?);
            return Ok(ExitCode::SUCCESS);
        }
        if let Some((path, Ok(j))) = judges.iter().find(|(_, j)| j.as_ref().is_ok_and(|j| j.info().name == name)) {
            let i = j.info();
            let v = serde_json::json!({
                "kind": "judge", "name": i.name, "version": i.version, "path": path,
                "labels": i.labels, "wants_chat": i.wants_chat, "wants_log": i.wants_log, "sha256": j.sha256(),
                "wit": format!("vlsbench:judge@{}", j.wit_version()),
            });
            println!("{}", serde_json::to_string_pretty(&v)?);
            return Ok(ExitCode::SUCCESS);
        }
        bail!("no backend or judge named `{name}` on the plugin path");
    }
    println!("plugin path: {}", dirs.iter().map(|d| d.display().to_string()).collect::<Vec<_>>().join(":"));
    println!("backends:");
    for b in &backends {
        match b {
            Ok(l) => println!(
                "  {:<16} {:<8} archs [{}] devices [{}] max_batch {} ABI {}.{}  {}",
                l.info.name,
                l.info.version,
                l.info.archs.join(", "),
                l.info.devices.join(", "),
                l.info.max_batch,
                l.abi.0,
                l.abi.1,
                l.path.display()
            ),
            Err(e) => println!("  error: {e}"),
        }
    }
    println!("judges:");
    for (path, j) in &judges {
        match j {
            Ok(j) => {
                let i = j.info();
                let caps = [i.wants_chat.then_some("chat"), i.wants_log.then_some("log")]
                    .into_iter()
                    .flatten()
                    .collect::<Vec<_>>()
                    .join(", ");
                println!("  {:<16} {:<8} wants [{caps}]  {}", i.name, i.version, path.display());
            }
            Err(e) => println!("  error: {e}"),
        }
    }
    Ok(ExitCode::SUCCESS)
}
