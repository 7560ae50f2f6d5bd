//! Shards: one run split over machines or scheduler tasks, then merged.
//!
//! `run --shard I/N` (1-based, as `--shard 2/4`) evaluates the selected items at positions
//! `k` with `k mod N = I-1` into its own folder, `<run name>--shard-I-of-N`, beside where the whole
//! run would go. Without the flag the shard comes from the scheduler's own variables:
//!
//! - Slurm job arrays: `SLURM_ARRAY_TASK_ID` and `SLURM_ARRAY_TASK_COUNT` (and
//!   `SLURM_ARRAY_TASK_MIN`, so `--array=0-3` and `--array=1-4` both work);
//! - Kubernetes Indexed Jobs: `JOB_COMPLETION_INDEX` (0-based), with the count from `--shards N`
//!   or `[run] shards`.
//!
//! [`merge`] puts the shards back together into one run folder whose reports are those of the
//! run made in one go.

use std::fmt;

use serde::{Deserialize, Serialize};

pub mod merge;

pub use merge::{MergeOutcome, merge};

/// One part of a run: items at positions `k` with `k mod count = index`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Shard {
    /// 0-based (shown 1-based: shard `index + 1` of `count`).
    #[serde(rename = "index0")]
    pub index: u32,
    pub count: u32,
}

/// Where a shard's index came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ShardSource {
    Flag,
    Slurm,
    Kubernetes,
}

impl fmt::Display for ShardSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Flag => "--shard",
            Self::Slurm => "SLURM_ARRAY_TASK_ID",
            Self::Kubernetes => "JOB_COMPLETION_INDEX",
        })
    }
}

/// Why no shard could be worked out.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ShardError {
    #[error("--shard {given}: expected I/N with 1 <= I <= N, e.g. --shard 2/4")]
    BadFlag { given: String },
    #[error("{var}={value}: expected a whole number")]
    BadVariable { var: &'static str, value: String },
    #[error(
        "SLURM_ARRAY_TASK_ID={id} is not one of the array's {count} tasks from SLURM_ARRAY_TASK_MIN={min}: shard a run with a contiguous array (--array={min}-{last})",
        last = min + count.saturating_sub(1)
    )]
    SlurmOutOfRange { id: u32, min: u32, count: u32 },
    #[error(
        "JOB_COMPLETION_INDEX={index} is set, but not how many shards there are: pass --shards N (the Job's completions) or set [run] shards"
    )]
    NoCount { index: u32 },
    #[error("JOB_COMPLETION_INDEX={index} is not below the number of shards, {count}")]
    IndexOutOfRange { index: u32, count: u32 },
    #[error(
        "[run] shards = {count}, but this process has no shard index: pass --shard I/{count}, or run it as a Slurm job array or a Kubernetes Indexed Job"
    )]
    NoIndex { count: u32 },
    #[error("the number of shards must be at least 1")]
    ZeroCount,
}

impl Shard {
    /// Parses the flag's `I/N` (1-based).
    pub fn parse(given: &str) -> Result<Self, ShardError> {
        let bad = || ShardError::BadFlag { given: given.to_owned() };
        let (i, n) = given.split_once('/').ok_or_else(bad)?;
        let (i, n): (u32, u32) = (i.trim().parse().map_err(|_| bad())?, n.trim().parse().map_err(|_| bad())?);
        if i == 0 || i > n {
            return Err(bad());
        }
        Ok(Self { index: i - 1, count: n })
    }

    /// The shard this process runs: the flag's, else the scheduler's, else none. `count_hint` is
    /// `--shards` or `[run] shards` (the count an Indexed Job does not say).
    pub fn resolve(
        flag: Option<&str>,
        count_hint: Option<u32>,
        env: impl Fn(&str) -> Option<String>,
    ) -> Result<Option<(Self, ShardSource)>, ShardError> {
        if count_hint == Some(0) {
            return Err(ShardError::ZeroCount);
        }
        if let Some(given) = flag {
            return Ok(Some((Self::parse(given)?, ShardSource::Flag)));
        }
        let number = |var: &'static str| -> Result<Option<u32>, ShardError> {
            match env(var).filter(|v| !v.trim().is_empty()) {
                None => Ok(None),
                Some(value) => value.trim().parse().map(Some).map_err(|_| ShardError::BadVariable { var, value }),
            }
        };
        if let (Some(id), Some(count)) = (number("SLURM_ARRAY_TASK_ID")?, number("SLURM_ARRAY_TASK_COUNT")?) {
            let min = number("SLURM_ARRAY_TASK_MIN")?.unwrap_or(0);
            if count == 0 || id < min || id - min >= count {
                return Err(ShardError::SlurmOutOfRange { id, min, count });
            }
            return Ok(Some((Self { index: id - min, count }, ShardSource::Slurm)));
        }
        if let Some(index) = number("JOB_COMPLETION_INDEX")? {
            let count = count_hint.ok_or(ShardError::NoCount { index })?;
            if index >= count {
                return Err(ShardError::IndexOutOfRange { index, count });
            }
            return Ok(Some((Self { index, count }, ShardSource::Kubernetes)));
        }
        match count_hint {
            Some(count) if count > 1 => Err(ShardError::NoIndex { count }),
            _ => Ok(None),
        }
    }

    /// Whether the item at `position` (in the selection's order) belongs to this shard.
    pub fn holds(&self, position: usize) -> bool {
        position % self.count as usize == self.index as usize
    }

    /// Keeps this shard's part of `items`.
    pub fn select<T>(&self, items: &mut Vec<T>) {
        let mut position = 0;
        items.retain(|_| {
            let keep = self.holds(position);
            position += 1;
            keep
        });
    }

    /// The shard's folder name for run `name`: `<name>--shard-I-of-N`.
    pub fn folder_name(&self, name: &str) -> String {
        format!("{name}{SHARD_SUFFIX}{}-of-{}", self.index + 1, self.count)
    }

    /// The whole run's name from a shard folder's (`<name>--shard-I-of-N` → `<name>`).
    pub fn run_name(folder_name: &str) -> &str {
        folder_name.rsplit_once(SHARD_SUFFIX).map_or(folder_name, |(name, _)| name)
    }
}

/// What a shard's folder name adds to the run's name.
const SHARD_SUFFIX: &str = "--shard-";

impl fmt::Display for Shard {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.index + 1, self.count)
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;

    fn env(vars: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let vars: HashMap<String, String> = vars.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        move |k| vars.get(k).cloned()
    }

    #[test]
    fn the_flag_is_one_based_and_checked() {
        assert_eq!(Shard::parse("2/4"), Ok(Shard { index: 1, count: 4 }));
        for bad in ["0/4", "5/4", "2", "a/4", "2/0"] {
            assert!(matches!(Shard::parse(bad), Err(ShardError::BadFlag { .. })), "{bad}");
        }
    }

    #[test]
    fn a_slurm_array_from_zero_or_from_one_gives_the_same_shards() {
        let from_zero = env(&[("SLURM_ARRAY_TASK_ID", "2"), ("SLURM_ARRAY_TASK_COUNT", "4")]);
        let from_one =
            env(&[("SLURM_ARRAY_TASK_ID", "3"), ("SLURM_ARRAY_TASK_COUNT", "4"), ("SLURM_ARRAY_TASK_MIN", "1")]);
        let want = Some((Shard { index: 2, count: 4 }, ShardSource::Slurm));
        assert_eq!(Shard::resolve(None, None, from_zero), Ok(want));
        assert_eq!(Shard::resolve(None, None, from_one), Ok(want));
        let stepped = env(&[("SLURM_ARRAY_TASK_ID", "6"), ("SLURM_ARRAY_TASK_COUNT", "4")]);
        assert!(matches!(Shard::resolve(None, None, stepped), Err(ShardError::SlurmOutOfRange { .. })));
    }

    #[test]
    fn an_indexed_job_needs_the_count_from_the_flag_or_the_manifest() {
        let k8s = env(&[("JOB_COMPLETION_INDEX", "1")]);
        assert_eq!(Shard::resolve(None, None, &k8s), Err(ShardError::NoCount { index: 1 }));
        assert_eq!(
            Shard::resolve(None, Some(3), &k8s),
            Ok(Some((Shard { index: 1, count: 3 }, ShardSource::Kubernetes)))
        );
        assert_eq!(Shard::resolve(None, Some(1), &k8s), Err(ShardError::IndexOutOfRange { index: 1, count: 1 }));
    }

    #[test]
    fn the_flag_wins_over_the_schedulers_variables_and_a_count_alone_is_an_error() {
        let both = env(&[("SLURM_ARRAY_TASK_ID", "0"), ("SLURM_ARRAY_TASK_COUNT", "2"), ("JOB_COMPLETION_INDEX", "0")]);
        assert_eq!(
            Shard::resolve(Some("2/2"), None, &both),
            Ok(Some((Shard { index: 1, count: 2 }, ShardSource::Flag)))
        );
        assert_eq!(Shard::resolve(None, Some(4), env(&[])), Err(ShardError::NoIndex { count: 4 }));
        assert_eq!(Shard::resolve(None, None, env(&[])), Ok(None));
        assert_eq!(Shard::resolve(None, Some(1), env(&[])), Ok(None));
    }

    #[test]
    fn the_shards_of_a_selection_cover_it_once() {
        let items: Vec<u32> = (0..11).collect();
        let mut seen = Vec::new();
        for index in 0..3 {
            let mut part = items.clone();
            Shard { index, count: 3 }.select(&mut part);
            seen.extend(part);
        }
        seen.sort();
        assert_eq!(seen, items);
    }

    #[test]
    fn a_shard_folder_names_its_run() {
        let s = Shard { index: 1, count: 4 };
        assert_eq!(s.folder_name("qwen2vl"), "qwen2vl--shard-2-of-4");
        assert_eq!(Shard::run_name("qwen2vl--shard-2-of-4"), "qwen2vl");
        assert_eq!(Shard::run_name("plain"), "plain");
    }
}
