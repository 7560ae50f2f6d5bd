//! `merge SHARD_DIR...`: the shard folders of one run made into one run folder, whose
//! `summary.json` and `<arch>_outputs.json` are those the run would have written in one go.
//!
//! Refused, naming what differs or what is missing: folders that are not shards, shards of
//! different manifests, counts or provenance, a shard given twice or not at all, and items that
//! have no answer in their shard (a shard that has not finished: run it again to resume).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{Context, bail};

use super::Shard;
use crate::dataset::{self, Filters};
use crate::manifest::LoadedManifest;
use crate::report::{Provenance, Summary};
use crate::run::{Records, RunInfo, write_reports};
use crate::store::{self, AnswerRecord, Store, VerdictRecord};

/// What a merge made.
#[derive(Debug)]
pub struct MergeOutcome {
    pub run_dir: PathBuf,
    pub summary: Summary,
}

/// One shard folder, read.
struct ShardDir {
    dir: PathBuf,
    shard: Shard,
    info: RunInfo,
    manifest_text: String,
    answers: BTreeMap<u32, AnswerRecord>,
    verdicts: BTreeMap<u32, VerdictRecord>,
}

impl ShardDir {
    fn read(dir: &Path) -> anyhow::Result<Self> {
        let dir = dir.canonicalize().with_context(|| format!("no shard folder {}", dir.display()))?;
        let info = RunInfo::read(&dir).with_context(|| format!("{} is not a run folder", dir.display()))?;
        let Some(shard) = info.shard else {
            bail!("{} is not a shard: its run.json names no shard (made without --shard)", dir.display());
        };
        let manifest_text =
            crate::fsread::read_to_string(&dir.join("manifest.toml"), crate::fsread::FileKind::Manifest)?;
        let answers = store::read_answers(&dir)?;
        let verdicts = store::read_verdicts(&dir)?;
        Ok(Self { dir, shard, info, manifest_text, answers, verdicts })
    }
}

/// Merges `dirs` (every shard of one run) into `out`, or into the run's own folder beside them
/// (`<name>` for shards `<name>--shard-I-of-N`). The output folder must not hold a run already.
pub fn merge(dirs: &[PathBuf], out: Option<&Path>) -> anyhow::Result<MergeOutcome> {
    let shards: Vec<ShardDir> = dirs.iter().map(|d| ShardDir::read(d)).collect::<anyhow::Result<_>>()?;
    let Some(first) = shards.first() else { bail!("merge needs the shard folders of a run") };
    let provenance = check_same_run(&shards)?;
    check_complete(&shards)?;

    let mut loaded = LoadedManifest::from_text(&first.dir.join("manifest.toml"), first.manifest_text.clone())?;
    loaded.base_dir = first.info.manifest_base_dir.clone();
    let m = &loaded.manifest;
    let ds = dataset::load(&loaded.dataset_root(), &m.dataset.data_file, &Filters::from_section(&m.dataset))
        .with_context(|| format!("{}: [dataset]", loaded.origin))?;

    // Each selected item from the shard that ran it.
    let count = first.shard.count;
    let by_index: BTreeMap<u32, &ShardDir> = shards.iter().map(|s| (s.shard.index, s)).collect();
    let (mut answers, mut verdicts, mut missing) = (BTreeMap::new(), BTreeMap::new(), Vec::new());
    for (position, item) in ds.items.iter().enumerate() {
        let shard = by_index[&((position % count as usize) as u32)];
        let id = item.instruction_id;
        match shard.answers.get(&id) {
            Some(a) => {
                answers.insert(id, a.clone());
            }
            None => missing.push(format!("{id} (shard {})", shard.shard)),
        }
        if let Some(v) = shard.verdicts.get(&id) {
            verdicts.insert(id, v.clone());
        }
    }
    if !missing.is_empty() {
        bail!(
            "{} selected item(s) have no answer in their shard, so it has not finished (run it again to resume): {}",
            missing.len(),
            crate::fsread::list_ids(&missing, 10)
        );
    }

    let run_dir = match out {
        Some(out) => std::path::absolute(out).unwrap_or_else(|_| out.to_path_buf()),
        None => {
            let folder = first.dir.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
            first.dir.parent().unwrap_or(Path::new(".")).join(Shard::run_name(&folder))
        }
    };
    if std::fs::read_dir(&run_dir).is_ok_and(|mut d| d.next().is_some()) {
        bail!("{} exists and is not empty: remove it, or merge into another folder with --out", run_dir.display());
    }
    let (store, _) = Store::open(&run_dir)?;
    for a in answers.values() {
        store.append_answer(a)?;
    }
    for v in verdicts.values() {
        store.append_verdict(v)?;
    }
    crate::fsutil::write_atomic(&run_dir.join("manifest.toml"), first.manifest_text.as_bytes())
        .with_context(|| format!("cannot write {}/manifest.toml", run_dir.display()))?;
    let info = RunInfo {
        shard: None,
        merged_from: shards.iter().map(|s| s.dir.clone()).collect(),
        provenance: Some(provenance.clone()),
        concurrency: Vec::new(),
        ..first.info.clone()
    };
    info.write(&run_dir)?;
    let records = Records { answers: &answers, verdicts: &verdicts };
    let summary = write_reports(&run_dir, &loaded, &ds, records, (&provenance.model, &provenance.judge), None)?;
    Ok(MergeOutcome { run_dir, summary })
}

/// The shards' common provenance, refusing shards of different manifests, counts or provenance.
fn check_same_run(shards: &[ShardDir]) -> anyhow::Result<Provenance> {
    let first = &shards[0];
    let Some(provenance) = first.info.provenance.clone() else {
        bail!("{}: run.json records no provenance (made by an older host); run the shard again", first.dir.display());
    };
    for other in &shards[1..] {
        let differs = |what: &str| {
            anyhow::anyhow!(
                "{} and {} are not shards of one run: their {what} differ",
                first.dir.display(),
                other.dir.display()
            )
        };
        if other.manifest_text != first.manifest_text {
            return Err(differs("manifests"));
        }
        if other.shard.count != first.shard.count {
            return Err(anyhow::anyhow!(
                "{} is shard {} but {} is shard {}: one run is split one way",
                first.dir.display(),
                first.shard,
                other.dir.display(),
                other.shard
            ));
        }
        if other.info.provenance.as_ref() != Some(&provenance) {
            return Err(differs("provenances (model, backend, settings or judge)"));
        }
    }
    Ok(provenance)
}

/// Refuses a shard given twice or missing.
fn check_complete(shards: &[ShardDir]) -> anyhow::Result<()> {
    let count = shards[0].shard.count;
    let mut seen: BTreeMap<u32, &Path> = BTreeMap::new();
    for s in shards {
        if let Some(earlier) = seen.insert(s.shard.index, &s.dir) {
            bail!("shard {} is given twice: {} and {}", s.shard, earlier.display(), s.dir.display());
        }
    }
    let missing: Vec<String> =
        (0..count).filter(|i| !seen.contains_key(i)).map(|index| Shard { index, count }.to_string()).collect();
    if !missing.is_empty() {
        bail!("shard(s) {} of this run are missing", missing.join(", "));
    }
    Ok(())
}
