//! Shards: `run --shard I/N` (or a scheduler's variables) and `merge`, checked against the same
//! run made in one go, byte for byte.

use std::ffi::OsString;
use std::path::{Path, PathBuf};

use serde_json::json;

use crate::support::*;

/// Seven items, the echo backend and the offline judge: every run of it gives the same records.
struct Sharded {
    tmp: tempfile::TempDir,
    ds: Dataset,
}

impl Sharded {
    fn new() -> Self {
        let tmp = tempdir();
        let ds = Dataset::write(&tmp.path().join("data"), simple_items(7, "What is this"));
        Self { tmp, ds }
    }

    /// The manifest of run `whole` writing under `out/<tag>`.
    fn manifest(&self, tag: &str) -> PathBuf {
        let m = json!({
            "dataset": {"root": self.ds.root},
            "model": {"arch": "echo_plain", "backend": echo_backend()},
            "judge": {"component": "refusal-keywords"},
            "run": {"name": "whole", "output_dir": self.out(tag)},
        });
        write_manifest(&self.tmp.path().join(format!("{tag}.toml")), &m)
    }

    fn out(&self, tag: &str) -> PathBuf {
        self.tmp.path().join("out").join(tag)
    }

    /// The shard folders of the run under `out/<tag>`, in order.
    fn shard_dirs(&self, tag: &str) -> Vec<PathBuf> {
        (1..=3).map(|i| self.out(tag).join(format!("whole--shard-{i}-of-3"))).collect()
    }

    fn merge(&self, dirs: &[PathBuf]) -> Host {
        host(std::iter::once(OsString::from("merge")).chain(dirs.iter().map(|d| d.clone().into())))
    }
}

const COMPARED: [&str; 2] = ["summary.json", "echo_plain_outputs.json"];

fn read(dir: &Path, file: &str) -> Vec<u8> {
    std::fs::read(dir.join(file)).unwrap_or_else(|e| panic!("{}/{file}: {e}", dir.display()))
}

#[test]
fn shards_made_by_flag_by_slurm_and_by_an_indexed_job_merge_into_the_run_made_in_one_go() {
    let s = Sharded::new();
    let whole = s.out("one-go").join("whole");
    run(&s.manifest("one-go"), &whole).output().success();

    for tag in ["flag", "slurm", "kubernetes"] {
        let manifest = s.manifest(tag);
        for i in 1..=3u32 {
            let dir = &s.shard_dirs(tag)[i as usize - 1];
            let shard_run = match tag {
                "flag" => run(&manifest, dir).arg("--shard").arg(format!("{i}/3")),
                // An array declared `--array=1-3`.
                "slurm" => run(&manifest, dir)
                    .env("SLURM_ARRAY_TASK_ID", &i.to_string())
                    .env("SLURM_ARRAY_TASK_COUNT", "3")
                    .env("SLURM_ARRAY_TASK_MIN", "1"),
                _ => run(&manifest, dir).arg("--shards").arg("3").env("JOB_COMPLETION_INDEX", &(i - 1).to_string()),
            };
            let outcome = shard_run.output();
            outcome.success();
            // Items at positions 0,3,6 / 1,4 / 2,5.
            let logs = RunDir(dir.clone()).json("echo_plain_outputs.json")["logs"].as_array().unwrap().len();
            assert_eq!(logs, [3, 2, 2][i as usize - 1], "{tag} shard {i}:{}", outcome.report());
        }
        let outcome = s.merge(&s.shard_dirs(tag)).output();
        outcome.success();
        let merged = s.out(tag).join("whole");
        for file in COMPARED {
            assert!(read(&merged, file) == read(&whole, file), "{tag}: merged {file} differs:{}", outcome.report());
        }
    }
}

#[test]
fn merge_refuses_a_missing_shard_other_manifests_unfinished_items_and_a_used_folder() {
    let s = Sharded::new();
    let manifest = s.manifest("parts");
    let dirs = s.shard_dirs("parts");
    for i in 1..=3 {
        run(&manifest, &dirs[i - 1]).arg("--shard").arg(format!("{i}/3")).output().success();
    }
    s.merge(&dirs[..2]).output().failure().stderr_has("shard(s) 3/3 of this run are missing");
    s.merge(&[dirs[0].clone(), dirs[0].clone(), dirs[1].clone()]).output().failure().stderr_has("given twice");

    // Another run's shard: same layout, another manifest.
    let other = s.manifest("other");
    let other_dir = s.shard_dirs("other")[2].clone();
    run(&other, &other_dir).arg("--shard").arg("3/3").output().success();
    let mixed = [dirs[0].clone(), dirs[1].clone(), other_dir];
    s.merge(&mixed).output().failure().stderr_has("are not shards of one run: their manifests differ");

    // Shard 2 lost item 4's answer (as if killed before it): the merge names the item.
    let answers = dirs[1].join("answers.jsonl");
    let text = std::fs::read_to_string(&answers).unwrap();
    let kept: Vec<&str> = text.lines().filter(|l| !l.starts_with("{\"id\":4,")).collect();
    assert_eq!(kept.len(), text.lines().count() - 1, "item 4 is in shard 2:\n{text}");
    std::fs::write(&answers, format!("{}\n", kept.join("\n"))).unwrap();
    s.merge(&dirs).output().failure().stderr_has("have no answer in their shard").stderr_has("4 (shard 2/3)");
    assert!(!s.out("parts").join("whole").exists(), "a refused merge wrote its folder");

    // Finished again, it merges once; a second merge into the same folder is refused.
    run(&manifest, &dirs[1]).arg("--shard").arg("2/3").output().success();
    s.merge(&dirs).output().success();
    s.merge(&dirs).output().failure().stderr_has("exists and is not empty");
}

#[test]
fn a_manifest_that_says_shards_but_no_index_is_an_error_not_a_whole_run() {
    let s = Sharded::new();
    let manifest = s.manifest("count-only");
    let text = std::fs::read_to_string(&manifest).unwrap().replace("[run]\n", "[run]\nshards = 3\n");
    std::fs::write(&manifest, text).unwrap();
    let outcome = run(&manifest, &s.out("count-only")).output();
    outcome.failure().stderr_has("no shard index").stderr_has("--shard I/3");
    assert!(!s.out("count-only").exists());
}
