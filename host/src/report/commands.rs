//! The `compare` and `agreement` subcommands: read the runs, compute, print the terminal table and
//! write `<name>.json` and `<name>.html` into the output folder.

use std::path::{Path, PathBuf};

use anyhow::{Context, bail};

use super::agreement::agreement;
use super::agreement_html::render_agreement;
use super::compare::compare;
use super::compare_html::render_compare;
use super::runs::{load_catalog, load_runs};
use crate::fsutil::write_atomic;

fn write_pair(out_dir: &Path, stem: &str, json: &impl serde::Serialize, html: &str) -> anyhow::Result<()> {
    std::fs::create_dir_all(out_dir).with_context(|| format!("cannot create {}", out_dir.display()))?;
    let json_path = out_dir.join(format!("{stem}.json"));
    let mut bytes = super::to_json_4(json, &json_path)?;
    bytes.push(b'\n');
    write_atomic(&json_path, &bytes).with_context(|| format!("cannot write {}", json_path.display()))?;
    let html_path = out_dir.join(format!("{stem}.html"));
    write_atomic(&html_path, html.as_bytes()).with_context(|| format!("cannot write {}", html_path.display()))?;
    println!("wrote {} and {}", json_path.display(), html_path.display());
    Ok(())
}

/// `vlsbench-host compare RUN RUN [...]`.
pub fn compare_command(paths: &[PathBuf], dataset: Option<&Path>, out_dir: &Path) -> anyhow::Result<()> {
    if paths.len() < 2 {
        bail!("compare needs at least two runs (run folders or `<arch>_outputs.json` files)");
    }
    let runs = load_runs(paths)?;
    let catalog = load_catalog(dataset, &runs)?;
    let c = compare(&runs, &catalog);
    print!("{}", super::compare::terminal(&c));
    write_pair(out_dir, "compare", &c, &render_compare(&c))
}

/// `vlsbench-host agreement RUN RUN`.
pub fn agreement_command(a: &Path, b: &Path, dataset: Option<&Path>, out_dir: &Path) -> anyhow::Result<()> {
    let runs = load_runs(&[a.to_path_buf(), b.to_path_buf()])?;
    let catalog = load_catalog(dataset, &runs)?;
    let ag = agreement(&runs[0], &runs[1], &catalog);
    if ag.both_judged == 0 {
        bail!("{} and {} judged no item in common: there is nothing to compare", runs[0].name, runs[1].name);
    }
    print!("{}", super::agreement::terminal(&ag));
    write_pair(out_dir, "agreement", &ag, &render_agreement(&ag))
}
