//! Preparing a run: the manifest's dataset, backends and judge resolved and checked before any
//! item runs (`validate` stops here). Nothing is generated or judged.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, bail};
use vlsbench_plugin_api::{BackendConfig, GenerationSettings, resolve_path};

use super::RunOptions;
use crate::backend::{self, BackendLibrary};
use crate::dataset::{self, Dataset, Filters};
use crate::judge::{Grants, JudgeComponent, JudgeEngine, JudgeInfo, JudgeLimits, find_judge};
use crate::manifest::{Capability, JudgeSection, LoadedManifest, ModelSection};
use crate::store::{self, AnswerProvenance, AnswerRecord, JudgeProvenance};

/// Everything a run needs, resolved and checked, before any item runs. `validate` stops here.
pub struct Prepared {
    pub manifest: LoadedManifest,
    pub dataset: Dataset,
    /// The model under test's backend; `None` when re-judging, where the stored answers stand for
    /// the model and no backend is loaded.
    pub model_library: Option<BackendLibrary>,
    /// What the model's backend said when it checked its config ([`BackendLibrary::check`]).
    pub model_check: Vec<String>,
    /// What made the answers: the backend's description and the manifest's model section, or,
    /// when re-judging, the provenance the stored answers carry.
    pub model_provenance: AnswerProvenance,
    pub judge: JudgeComponent,
    pub judge_model_library: Option<BackendLibrary>,
    /// What the judge model's backend said when it checked its config.
    pub judge_model_check: Vec<String>,
    pub judge_provenance: JudgeProvenance,
    pub grants: Grants,
    pub limits: JudgeLimits,
    pub search_path: Vec<PathBuf>,
}

/// Where a run's answers come from.
pub enum AnswerSource<'a> {
    /// The backend the manifest's `[model]` names (loaded and checked here).
    Backend,
    /// Answers already stored (`judge RUN_DIR`): no backend is loaded, so re-judging needs neither
    /// the model nor its plugin. The provenance is the one the selected items' answers carry.
    Stored(&'a BTreeMap<u32, AnswerRecord>),
}

/// Resolves the manifest's dataset, backends and judge, and has the judge check its config;
/// runs nothing.
pub fn prepare(manifest: LoadedManifest, opts: &RunOptions) -> anyhow::Result<Prepared> {
    prepare_with(manifest, opts, AnswerSource::Backend)
}

/// [`prepare`], with the answers taken from `source`.
pub fn prepare_with(manifest: LoadedManifest, opts: &RunOptions, source: AnswerSource) -> anyhow::Result<Prepared> {
    let m = &manifest.manifest;
    let at = |section: &str| format!("{}: {section}", manifest.origin);
    let dirs = backend::search_path(&opts.plugin_dirs);
    let dataset = dataset::load(&manifest.dataset_root(), &m.dataset.data_file, &Filters::from_section(&m.dataset))
        .with_context(|| at("[dataset]"))?;
    for w in &dataset.warnings {
        tracing::warn!("dataset: {w}");
    }
    let mut dataset = dataset;
    if let Some(shard) = opts.shard {
        shard.select(&mut dataset.items);
        tracing::info!("shard {shard}: {} of the selected items", dataset.items.len());
    }
    let (model_library, model_check, model_provenance) = match source {
        AnswerSource::Backend => {
            let (library, check) = find_backend(&m.model, &manifest.base_dir, &dirs).with_context(|| at("[model]"))?;
            let provenance = answer_provenance(&library, &m.model, m.model.settings());
            (Some(library), check, provenance)
        }
        AnswerSource::Stored(answers) => (None, Vec::new(), stored_provenance(answers, &dataset)?),
    };

    let engine = JudgeEngine::new(opts.cache_dir.clone()).context("cannot start the judge engine")?;
    let judge_path = find_judge(&m.judge.component, &manifest.base_dir, &dirs).with_context(|| at("[judge]"))?;
    let judge = engine.load(&judge_path).with_context(|| at("[judge]"))?;
    let info = judge.info().clone();
    let grants = grants(&m.judge, &info).with_context(|| at("[judge]"))?;
    let (judge_model_library, judge_model_check) = match (&m.judge.model, info.wants_chat) {
        (Some(jm), true) => {
            let (library, check) = find_backend(jm, &manifest.base_dir, &dirs).with_context(|| at("[judge.model]"))?;
            (Some(library), check)
        }
        _ => (None, Vec::new()),
    };
    let judge_provenance = JudgeProvenance {
        judge: info.name.clone(),
        judge_version: info.version.clone(),
        component_sha256: judge.sha256().to_string(),
        config: m.judge.config_json(),
        model: m
            .judge
            .model
            .as_ref()
            .zip(judge_model_library.as_ref())
            .map(|(jm, lib)| answer_provenance(lib, jm, jm.generation.clone())),
    };
    let limits = judge_limits(&m.judge);
    // A judge built on WIT 0.2.0 or later says now whether it accepts its config, instead of
    // failing every item. This is the host's own pre-flight call, so it runs under the default
    // limits: the manifest's `[judge.limits]` govern the item calls (and a limit of 0 there is a
    // warning of its own, not a config error).
    judge
        .check_config(&judge_config_text(&judge_provenance), &JudgeLimits::default())
        .with_context(|| format!("{} of judge {} {}", at("[judge.config]"), info.name, info.version))?;
    Ok(Prepared {
        manifest,
        dataset,
        model_library,
        model_check,
        model_provenance,
        judge,
        judge_model_library,
        judge_model_check,
        judge_provenance,
        grants,
        limits,
        search_path: dirs,
    })
}

/// The provenance of the stored answers of the selected items: the one most of them carry. Answers
/// made otherwise (an earlier configuration's, left in the file) are not judged, and a warning
/// says how many.
fn stored_provenance(answers: &BTreeMap<u32, AnswerRecord>, dataset: &Dataset) -> anyhow::Result<AnswerProvenance> {
    let mut counts: Vec<(&AnswerProvenance, usize)> = Vec::new();
    let selected = dataset.items.iter().filter_map(|i| answers.get(&i.instruction_id));
    for record in selected.filter(|r| r.outcome.answer().is_some()) {
        match counts.iter_mut().find(|(p, _)| **p == record.provenance) {
            Some((_, n)) => *n += 1,
            None => counts.push((&record.provenance, 1)),
        }
    }
    counts.sort_by_key(|&(_, n)| std::cmp::Reverse(n));
    let Some(&(provenance, _)) = counts.first() else {
        bail!("no stored answer for any of the {} selected items: nothing to judge", dataset.items.len());
    };
    let others: usize = counts.iter().skip(1).map(|(_, n)| n).sum();
    if others > 0 {
        tracing::warn!(
            "{others} stored answer(s) were made by another model configuration than the other {}; they are not judged",
            counts[0].1
        );
    }
    Ok(provenance.clone())
}

/// The config a judge is given: the manifest's `[judge.config]` as JSON text.
pub(super) fn judge_config_text(provenance: &JudgeProvenance) -> String {
    serde_json::to_string(&provenance.config).unwrap_or_else(|_| "{}".into())
}

/// The backend a model section names, with the local paths it will read checked, then the
/// backend's own check of the config it will be created with (a runtime library, a device): what
/// that check found, or why the backend could not be created, is known before any item runs.
fn find_backend(
    model: &ModelSection,
    base_dir: &Path,
    dirs: &[PathBuf],
) -> anyhow::Result<(BackendLibrary, Vec<String>)> {
    let library = backend::find(&model.arch, model.backend.as_deref(), base_dir, dirs)?;
    check_local_paths(&library, model, base_dir)?;
    let check = library.check(&backend_config(model, base_dir)).map_err(|e| anyhow::anyhow!("{e}"))?;
    Ok((library, check))
}

/// The capabilities granted, refusing a judge that asks for chat when none is granted.
fn grants(section: &JudgeSection, info: &JudgeInfo) -> anyhow::Result<Grants> {
    let grants =
        Grants { chat: section.grant.contains(&Capability::Chat), log: section.grant.contains(&Capability::Log) };
    if info.wants_chat && !grants.chat {
        bail!(
            "judge {} {} asks for the `chat` capability, which [judge] does not grant (add grant = [\"chat\"] and a [judge.model])",
            info.name,
            info.version
        );
    }
    Ok(grants)
}

/// The provenance of answers a model section produces through `library`.
pub fn answer_provenance(lib: &BackendLibrary, model: &ModelSection, settings: GenerationSettings) -> AnswerProvenance {
    AnswerProvenance {
        backend: lib.info.name.clone(),
        backend_version: lib.info.version.clone(),
        arch: model.arch.clone(),
        checkpoint: model.checkpoint.clone(),
        device: model.device.clone(),
        dtype: model.dtype.clone(),
        settings,
        // The backend declares each arch's message layout; the host never decides it from the name.
        prompt: lib.info.message_layout(&model.arch).id(),
        options_sha256: store::sha256_hex(&serde_json::to_string(&model.options_json()).unwrap_or_default()),
    }
}

/// What a backend is created with for a model section.
pub fn backend_config(model: &ModelSection, base_dir: &Path) -> BackendConfig {
    BackendConfig {
        arch: model.arch.clone(),
        checkpoint: model.checkpoint.clone(),
        device: model.device.clone(),
        dtype: model.dtype.clone(),
        options: model.options_json(),
        base_dir: base_dir.to_path_buf(),
    }
}

/// Checks, before any model is loaded, that the local paths a backend will read exist: the
/// checkpoint folder when the backend says it is one, and the options it names as paths.
pub fn check_local_paths(lib: &BackendLibrary, model: &ModelSection, base_dir: &Path) -> anyhow::Result<()> {
    crate::backend::check_options(lib, model)?;
    if lib.info.checkpoint_is_path {
        let Some(ck) = model.checkpoint.as_deref() else {
            bail!("arch {} needs `checkpoint = \"<folder>\"`: the checkpoint folder to load", model.arch);
        };
        let dir = resolve_path(base_dir, ck);
        if !dir.is_dir() {
            bail!(
                "checkpoint {}: {} (set `checkpoint` to the folder that holds the model's config.json and weights)",
                dir.display(),
                if dir.exists() { "not a folder" } else { "no such folder" }
            );
        }
    }
    for key in &lib.info.path_options {
        if let Some(v) = model.options.get(key).and_then(|v| v.as_str()) {
            let p = resolve_path(base_dir, v);
            if !p.exists() {
                bail!("options.{key} {}: no such file or folder", p.display());
            }
        }
    }
    Ok(())
}

/// Limits from `[judge.limits]` over the defaults.
pub fn judge_limits(section: &JudgeSection) -> JudgeLimits {
    let d = JudgeLimits::default();
    let l = &section.limits;
    JudgeLimits {
        fuel: l.fuel.unwrap_or(d.fuel),
        timeout: l.timeout_secs.map(|s| Duration::from_secs_f64(s.max(0.001))).unwrap_or(d.timeout),
        memory_bytes: l.memory_mib.map(|m| (m as usize).saturating_mul(1 << 20)).unwrap_or(d.memory_bytes),
        max_output_bytes: l.max_output_kib.map(|k| (k as usize).saturating_mul(1 << 10)).unwrap_or(d.max_output_bytes),
    }
}
