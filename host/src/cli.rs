//! Command line: `run`, `validate`, `judge` (re-judge a finished run's answers), `merge` (a run's
//! shards into one run), `serve` (a backend as an OpenAI-compatible endpoint) and `plugins`.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use anyhow::{Context, bail};
use clap::{Args, Parser, Subcommand};

use crate::backend;
use crate::fsread::{FileKind, read_to_string};
use crate::judge::JudgeEngine;
use crate::manifest::{JudgeSection, LoadedManifest, parse_toml};
use crate::run::{self, RunOptions};
use crate::shard::Shard;

/// Evaluates multimodal models on the VLSBench safety benchmark.
#[derive(Debug, Parser)]
#[command(name = "vlsbench-host", version, about)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
    /// Flags every subcommand takes, before or after its name.
    #[command(flatten)]
    pub common: Common,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Runs a manifest: generate, judge, report. Run it again to resume.
    Run {
        manifest: PathBuf,
        /// Run shard I of N (1-based, e.g. 2/4) into `<run name>--shard-I-of-N`; without it, a
        /// Slurm job array's or a Kubernetes Indexed Job's variables choose the shard.
        #[arg(long, value_name = "I/N")]
        shard: Option<String>,
        /// How many shards an Indexed Job has (`JOB_COMPLETION_INDEX` does not say); overrides
        /// `[run] shards`.
        #[arg(long, value_name = "N")]
        shards: Option<u32>,
    },
    /// Merges the shard folders of one run into one run folder (default: `<run name>` beside them).
    Merge {
        /// Every shard folder of the run (`<run name>--shard-I-of-N`).
        #[arg(required = true)]
        shard_dirs: Vec<PathBuf>,
        /// The run folder to write (it must not hold a run).
        #[arg(long, value_name = "DIR")]
        out: Option<PathBuf>,
    },
    /// Checks a manifest, its dataset and both plugins without running anything.
    Validate { manifest: PathBuf },
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
    },
    /// Serves the `[model]` of a TOML file (a manifest works) as an OpenAI-compatible endpoint.
    Serve {
        /// A TOML file with a `[model]` section.
        model: PathBuf,
        /// The address to listen on (loopback by default).
        #[arg(long, default_value = "127.0.0.1")]
        host: std::net::IpAddr,
        /// The port (0: any free port; the address is printed).
        #[arg(long, default_value_t = 8000)]
        port: u16,
        /// The variable holding the key clients must send as `Authorization: Bearer <key>`.
        #[arg(long, value_name = "VAR")]
        api_key_env: Option<String>,
        /// The model's name in /v1/models (default: the checkpoint, else the arch).
        #[arg(long)]
        model_name: Option<String>,
        /// How long a batch waits for more requests after its first, in milliseconds.
        #[arg(long, default_value_t = 5)]
        batch_window_ms: u64,
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
    },
}

#[derive(Debug, Args, Clone, Default)]
pub struct Common {
    /// A folder to search for plugins first (repeatable); `VLSBENCH_PLUGIN_PATH` is searched next.
    #[arg(long = "plugin-path", value_name = "DIR", global = true)]
    pub plugin_path: Vec<PathBuf>,
    /// Where compiled judge components are cached.
    #[arg(long, value_name = "DIR", env = "VLSBENCH_CACHE_DIR", global = true)]
    pub cache_dir: Option<PathBuf>,
    /// Exit with status 2 when any selected item ends without a label.
    #[arg(long, global = true)]
    pub fail_on_unscored: bool,
    /// Never draw a progress bar.
    #[arg(long, global = true)]
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
            shard: None,
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
        tracing::warn!("{}: {w}", loaded.origin);
    }
    warnings
}

fn dispatch(cli: Cli) -> anyhow::Result<ExitCode> {
    let common = cli.common;
    match cli.command {
        Command::Run { manifest, shard, shards } => {
            let mut loaded = LoadedManifest::load(&manifest)?;
            warn_manifest(&loaded);
            let mut opts = common.options();
            let count = shards.or(loaded.manifest.run.shards);
            let resolved = Shard::resolve(shard.as_deref(), count, |k| std::env::var(k).ok())
                .with_context(|| format!("{}: cannot tell which shard to run", loaded.origin))?;
            if let Some((shard, source)) = resolved {
                tracing::info!("running shard {shard} (from {source})");
                loaded.manifest.run.name = Some(shard.folder_name(&loaded.run_name()));
                opts.shard = Some(shard);
            }
            run_loaded(loaded, opts)
        }
        Command::Merge { shard_dirs, out } => {
            let merged = crate::shard::merge(&shard_dirs, out.as_deref())?;
            println!("{}", crate::report::terminal_summary(&merged.summary));
            println!("merged {} shards into {}", shard_dirs.len(), merged.run_dir.display());
            Ok(ExitCode::SUCCESS)
        }
        Command::Validate { manifest } => validate(&manifest, &common),
        Command::Judge { run_dir, judge, name } => rejudge(&run_dir, &judge, name, &common),
        Command::Serve { model, host, port, api_key_env, model_name, batch_window_ms } => {
            crate::serve::serve(crate::serve::ServeOptions {
                model_file: model,
                host,
                port,
                api_key_env,
                model_name,
                batch_window: std::time::Duration::from_millis(batch_window_ms),
                plugin_dirs: common.plugin_path.clone(),
            })?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Plugins { name } => plugins(name.as_deref(), &common),
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
    let prepared = run::prepare(loaded, &opts)?;
    execute_prepared(prepared, opts)
}

fn execute_prepared(prepared: run::Prepared, opts: RunOptions) -> anyhow::Result<ExitCode> {
    let fail_on_unscored = opts.fail_on_unscored || prepared.manifest.manifest.run.fail_on_unscored;
    let cancel = Arc::new(AtomicBool::new(false));
    install_ctrl_c(cancel.clone());
    let outcome = run::execute(&prepared, &opts, cancel)?;
    println!("{}", outcome.terminal_summary);
    for stats in outcome.concurrency.iter().filter(|s| s.mode == "auto" || s.throttled > 0) {
        println!("concurrency: {stats}");
    }
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
    if let Some(lib) = &p.model_library {
        println!(
            "model      arch {} → backend {} (ABI {}.{}, {})",
            m.manifest.model.arch,
            lib.label(),
            lib.abi.0,
            lib.abi.1,
            lib.path.display()
        );
        for line in &p.model_check {
            println!("           {line}");
        }
    }
    let info = p.judge.info();
    println!(
        "judge      {} {} ({}; sha256 {}…)",
        info.name,
        info.version,
        p.judge.path().display(),
        &p.judge.sha256()[..12.min(p.judge.sha256().len())]
    );
    let asks: Vec<&str> =
        [info.wants_chat.then_some("chat"), info.wants_log.then_some("log")].into_iter().flatten().collect();
    println!(
        "           asks for: {}; granted: chat={} log={}",
        if asks.is_empty() { "nothing".to_owned() } else { asks.join(", ") },
        p.grants.chat,
        p.grants.log
    );
    if let Some(jl) = &p.judge_model_library {
        println!("judge model → backend {} ({})", jl.label(), jl.path.display());
        for line in &p.judge_model_check {
            println!("           {line}");
        }
    }
    println!("run folder {}", m.run_dir().display());
    Ok(ExitCode::SUCCESS)
}

#[derive(serde::Deserialize)]
struct JudgeFile {
    judge: JudgeSection,
}

/// Re-judges a run's stored answers: a new run folder whose manifest is the old one with `[judge]`
/// replaced, seeded with the old answers. The model is never called and its backend never loaded,
/// and everything is checked (dataset, judge, its config) before the new folder is created.
fn rejudge(run_dir: &Path, judge_file: &Path, name: Option<String>, common: &Common) -> anyhow::Result<ExitCode> {
    let source = SourceRun::read(run_dir)?;
    let judge_text = read_to_string(judge_file, FileKind::Manifest)?;
    let parsed: JudgeFile = parse_toml(judge_file, &judge_text)?;
    let mut judge = parsed.judge;
    let judge_dir = judge_file.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
    let judge_dir = judge_dir.canonicalize().unwrap_or_else(|_| judge_dir.to_path_buf());
    if crate::judge::discovery::names_a_file(&judge.component) {
        judge.component = vlsbench_plugin_api::resolve_path(&judge_dir, &judge.component).display().to_string();
    }
    let new_name = name.unwrap_or_else(|| {
        let j = Path::new(&judge.component).file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_default();
        format!("{}--{}", source.name, j.trim_start_matches("vlsbench_judge_"))
    });
    if new_name == source.name {
        bail!("the new run name must differ from {}", source.name);
    }
    let new_dir = source.parent.join(&new_name);
    let mut loaded = source.manifest_with(&judge, &new_name)?;
    loaded.origin = format!("{} with [judge] from {}", loaded.origin, judge_file.display());
    loaded.path = new_dir.join("manifest.toml");
    warn_manifest(&loaded);

    let mut opts = common.options();
    opts.judge_only = true;
    let prepared = run::prepare_with(loaded, &opts, run::AnswerSource::Stored(&source.answers))?;
    std::fs::create_dir_all(&new_dir).with_context(|| format!("cannot create {}", new_dir.display()))?;
    let answers = new_dir.join(crate::store::ANSWERS_FILE);
    if !answers.exists() {
        std::fs::copy(run_dir.join(crate::store::ANSWERS_FILE), &answers)
            .with_context(|| format!("cannot copy the answers of {}", run_dir.display()))?;
    }
    execute_prepared(prepared, opts)
}

/// A finished run folder, as `judge RUN_DIR` reads it.
struct SourceRun {
    /// The folder's name (the run's name).
    name: String,
    /// The folder holding it, where the re-judged run goes too.
    parent: PathBuf,
    /// Its copy of the manifest.
    manifest_copy: PathBuf,
    manifest_text: String,
    /// Where the original manifest's relative paths started (from `run.json`).
    base_dir: PathBuf,
    answers: std::collections::BTreeMap<u32, crate::store::AnswerRecord>,
}

impl SourceRun {
    /// Reads `run_dir`'s manifest copy, `run.json` and answers; refuses a folder with no answer.
    fn read(run_dir: &Path) -> anyhow::Result<Self> {
        let dir = run_dir.canonicalize().with_context(|| format!("no run folder {}", run_dir.display()))?;
        let manifest_copy = dir.join("manifest.toml");
        let manifest_text = read_to_string(&manifest_copy, FileKind::Manifest)
            .with_context(|| format!("{} is not a run folder (no readable manifest.toml)", run_dir.display()))?;
        let answers = crate::store::read_answers(&dir)?;
        if !answers.values().any(|a| a.outcome.answer().is_some()) {
            bail!(
                "{} holds no answer to judge ({} is empty or has only errors); run the manifest first",
                run_dir.display(),
                dir.join(crate::store::ANSWERS_FILE).display()
            );
        }
        // Where the original manifest's relative paths started; the run folder when run.json is
        // unreadable.
        let base_dir = run::RunInfo::read(&dir).map_or_else(|_| dir.clone(), |info| info.manifest_base_dir);
        let name = dir.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_else(|| "run".into());
        let parent = dir.parent().map(Path::to_path_buf).unwrap_or_else(|| PathBuf::from("."));
        Ok(Self { name, parent, manifest_copy, manifest_text, base_dir, answers })
    }

    /// The run's manifest with `[judge]` replaced and the run named `new_name` beside this one.
    fn manifest_with(&self, judge: &JudgeSection, new_name: &str) -> anyhow::Result<LoadedManifest> {
        let mut table: toml::Table = toml::from_str(&self.manifest_text)
            .with_context(|| format!("{} is not valid TOML", self.manifest_copy.display()))?;
        table.insert("judge".into(), toml::Value::try_from(judge).context("cannot serialise [judge]")?);
        let run = table.entry("run").or_insert_with(|| toml::Value::Table(Default::default()));
        if let Some(run) = run.as_table_mut() {
            run.insert("name".into(), toml::Value::String(new_name.to_owned()));
            run.insert("output_dir".into(), toml::Value::String(self.parent.display().to_string()));
        }
        let text = toml::to_string_pretty(&table).context("cannot write the new manifest")?;
        let mut loaded = LoadedManifest::from_text(&self.manifest_copy, text)?;
        loaded.base_dir = self.base_dir.clone();
        Ok(loaded)
    }
}

fn plugins(name: Option<&str>, common: &Common) -> anyhow::Result<ExitCode> {
    let dirs = backend::search_path(&common.plugin_path);
    let engine = JudgeEngine::new(common.cache_dir.clone()).context("cannot start the judge engine")?;
    let backends = backend::discover(&dirs);
    let judges: Vec<_> = crate::judge::judge_files(&dirs).into_iter().map(|p| (p.clone(), engine.load(&p))).collect();
    let text = match name {
        Some(name) => describe_plugin(name, &dirs, &backends, &judges)?,
        None => list_plugins(&dirs, &backends, &judges),
    };
    print_to_stdout(&text)?;
    Ok(ExitCode::SUCCESS)
}

type LoadedJudges = [(PathBuf, Result<crate::judge::JudgeComponent, crate::judge::JudgeLoadError>)];

/// One backend or judge as pretty JSON.
fn describe_plugin(
    name: &str,
    dirs: &[PathBuf],
    backends: &[Result<backend::BackendLibrary, backend::BackendLoadError>],
    judges: &LoadedJudges,
) -> anyhow::Result<String> {
    if let Some(lib) = backends.iter().filter_map(|r| r.as_ref().ok()).find(|l| l.info.name == name) {
        let mut v = serde_json::to_value(&lib.info)?;
        v["path"] = serde_json::json!(lib.path);
        v["abi"] = serde_json::json!(format!("{}.{}", lib.abi.0, lib.abi.1));
        v["kind"] = serde_json::json!("backend");
        if let Some(options) = &lib.options {
            v["options"] = serde_json::to_value(options)?;
        }
        return Ok(serde_json::to_string_pretty(&v)? + "\n");
    }
    if let Some((path, Ok(j))) = judges.iter().find(|(_, j)| j.as_ref().is_ok_and(|j| j.info().name == name)) {
        let i = j.info();
        let v = serde_json::json!({
            "kind": "judge", "name": i.name, "version": i.version, "path": path,
            "labels": i.labels, "wants_chat": i.wants_chat, "wants_log": i.wants_log, "sha256": j.sha256(),
            "wit": format!("vlsbench:judge@{}", j.wit_version()),
        });
        return Ok(serde_json::to_string_pretty(&v)? + "\n");
    }
    bail!("no backend or judge named `{name}` on the plugin path{}", backend::misnamed_libraries(dirs));
}

/// The plugin path, its backends and judges, a line each, with what could not be loaded and the
/// libraries skipped for their file name.
fn list_plugins(
    dirs: &[PathBuf],
    backends: &[Result<backend::BackendLibrary, backend::BackendLoadError>],
    judges: &LoadedJudges,
) -> String {
    use std::fmt::Write as _;
    let mut out = String::new();
    let path = dirs.iter().map(|d| d.display().to_string()).collect::<Vec<_>>().join(":");
    let _ = writeln!(out, "plugin path: {path}\nbackends:");
    for b in backends {
        let _ = match b {
            Ok(l) => writeln!(
                out,
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
            Err(e) => writeln!(out, "  error: {e}"),
        };
    }
    for path in &backend::misnamed_libraries(dirs).0 {
        let _ = writeln!(
            out,
            "  ignored: {} has a backend's entry point, but discovery only loads files named lib{}<name>.so",
            path.display(),
            backend::LIBRARY_PREFIX
        );
    }
    let _ = writeln!(out, "judges:");
    for (path, j) in judges {
        let _ = match j {
            Ok(j) => {
                let i = j.info();
                let caps = [i.wants_chat.then_some("chat"), i.wants_log.then_some("log")];
                let caps = caps.into_iter().flatten().collect::<Vec<_>>().join(", ");
                writeln!(out, "  {:<16} {:<8} wants [{caps}]  {}", i.name, i.version, path.display())
            }
            Err(e) => writeln!(out, "  error: {e}"),
        };
    }
    out
}

/// Writes `text` to stdout; a reader that has gone (`plugins | head`) ends the command quietly.
fn print_to_stdout(text: &str) -> anyhow::Result<()> {
    use std::io::Write as _;
    let mut stdout = std::io::stdout().lock();
    match stdout.write_all(text.as_bytes()).and_then(|()| stdout.flush()) {
        Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => Err(e).context("cannot write to stdout"),
        _ => Ok(()),
    }
}
