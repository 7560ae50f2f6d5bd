//! The parity runner that every native backend's `examples/parity_<family>.rs` shares: the
//! committed goldens (`tests/fixtures/golden`, transformers' f32 first-step logits and 24 greedy
//! tokens) checked on any device and dtype, from a plain binary, so that a machine with a GPU and
//! no Rust toolchain can run them (`cargo xtask gpu-check`).
//!
//! The rule per dtype: an `f32` run keeps the first-step logits within [`F32_TOLERANCE`] (the CPU
//! parity tests' tolerance) and every greedy token. An `f16` / `bf16` run keeps its logits finite
//! and every greedy token up to where the two runs may honestly part: a sequence may leave the
//! golden one only at a step whose golden top-1/top-2 margin (`greedy_margins`) is within twice the
//! case's measured first-step |Δlogit| (each of the two logits may be off by that much), a near
//! tie that the dtype's rounding decides. The fixtures' random weights make such ties common
//! (margins down to 4e-4 against a bf16 |Δlogit| of 1e-2), so each one is shown with its step and
//! margin, and any other difference fails.
//!
//! Usage of a parity binary: `parity_<family> [--fixtures DIR] [--device cpu|cuda[:N]]
//! [--dtype f32|f16|bf16 ...]` (default: the repository's fixtures, `cpu`, `f32` then `bf16`).
//! It prints one table per checkpoint and dtype and exits non-zero when any check fails.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use serde_json::Value;
use vlsbench_plugin_api::{Backend, GenerateRequest, GenerationSettings, MessageLayout};

use crate::batch::{GreedyBackend, ImageOf};
use crate::greedy::GreedyModel;

/// The largest |Δlogit| an f32 run may show against the f32 goldens (as the CPU parity tests).
pub const F32_TOLERANCE: f32 = 1e-4;

/// What goes wrong reading the goldens or the command line.
#[derive(Debug, thiserror::Error)]
pub enum ParityError {
    #[error("{0}")]
    Usage(String),
    #[error("{path}: {message}")]
    Golden { path: PathBuf, message: String },
}

/// A parity binary's command line.
#[derive(Debug, Clone, PartialEq)]
pub struct ParityArgs {
    /// The `tests/fixtures` folder (checkpoints, images, goldens).
    pub fixtures: PathBuf,
    /// `cpu`, `cuda` or `cuda:N`, as a manifest's `device`.
    pub device: String,
    /// Each dtype to run, in order.
    pub dtypes: Vec<String>,
}

impl ParityArgs {
    /// Reads the process's arguments.
    pub fn from_env() -> Result<Self, ParityError> {
        Self::parse(std::env::args().skip(1))
    }

    pub fn parse(args: impl IntoIterator<Item = String>) -> Result<Self, ParityError> {
        let (mut fixtures, mut device, mut dtypes) = (crate::fixtures_dir(), "cpu".to_owned(), Vec::new());
        let mut it = args.into_iter();
        while let Some(a) = it.next() {
            let mut val = || it.next().ok_or_else(|| ParityError::Usage(format!("{a} needs a value")));
            match a.as_str() {
                "--fixtures" => fixtures = PathBuf::from(val()?),
                "--device" => device = val()?,
                "--dtype" => {
                    let d = val()?;
                    crate::request::parse_dtype(Some(&d)).map_err(|e| ParityError::Usage(e.message))?;
                    dtypes.push(d);
                }
                _ => {
                    return Err(ParityError::Usage(format!(
                        "unexpected argument {a}; usage: parity [--fixtures DIR] [--device cpu|cuda[:N]] \
                         [--dtype f32|f16|bf16 ...]"
                    )));
                }
            }
        }
        if dtypes.is_empty() {
            dtypes = vec!["f32".to_owned(), "bf16".to_owned()];
        }
        Ok(Self { fixtures, device, dtypes })
    }
}

/// One checkpoint's golden file, `<fixtures>/golden/<checkpoint>/golden.json`.
pub fn golden(fixtures: &Path, checkpoint: &str) -> Result<Value, ParityError> {
    let path = fixtures.join("golden").join(checkpoint).join("golden.json");
    let text = std::fs::read_to_string(&path)
        .map_err(|e| ParityError::Golden { path: path.clone(), message: e.to_string() })?;
    serde_json::from_str(&text).map_err(|e| ParityError::Golden { path, message: e.to_string() })
}

/// The golden cases of `golden` (its `cases` array).
pub fn cases(golden: &Value) -> &[Value] {
    golden["cases"].as_array().map_or(&[], |v| v.as_slice())
}

/// A golden list of ids (`input_ids`, `greedy_tokens`); entries that are no `u32` are left out.
pub fn ids(v: &Value) -> Vec<u32> {
    v.as_array().map_or_else(Vec::new, |a| a.iter().filter_map(|x| x.as_u64().map(|x| x as u32)).collect())
}

/// A golden case's greedy request (its `prompt` and `image`, 24 new tokens, temperature 0) in the
/// message layout the backend declares for the arch.
pub fn case_request(fixtures: &Path, case: &Value, layout: &MessageLayout) -> GenerateRequest {
    let image = fixtures.join(case["image"].as_str().unwrap_or_default());
    GenerateRequest {
        id: "0".into(),
        messages: layout.messages(case["prompt"].as_str().unwrap_or_default(), &image),
        settings: GenerationSettings { max_new_tokens: Some(24), temperature: Some(0.0), top_p: Some(1.0) },
        response_format: None,
    }
}

/// The first-step logits and greedy tokens of one checkpoint in one dtype, as a table, judged by
/// the rule of the module docs.
#[derive(Debug)]
pub struct ParityReport {
    fixtures: PathBuf,
    checkpoint: String,
    title: String,
    tolerance: Option<f32>,
    table: String,
    worst: f32,
    min_margin: f64,
    all_equal: bool,
    /// Cases whose tokens leave the golden ones at a near tie (half dtypes only).
    near_ties: usize,
    cases: usize,
}

impl ParityReport {
    /// An empty report for `checkpoint` run in `dtype` on `device`.
    pub fn new(fixtures: &Path, checkpoint: &str, device: &str, dtype: &str) -> Self {
        let tolerance = (dtype == "f32").then_some(F32_TOLERANCE);
        let rule = tolerance.map_or("greedy tokens equal but at near ties, logits reported".to_owned(), |t| {
            format!("logits within {t:e}, greedy tokens equal")
        });
        Self {
            fixtures: fixtures.to_owned(),
            checkpoint: checkpoint.to_owned(),
            title: format!("{checkpoint} on {device}, {dtype} ({rule})"),
            tolerance,
            table: "image          prompt     max|dlogit|   golden min margin   tokens\n".to_owned(),
            worst: 0.0,
            min_margin: f64::INFINITY,
            all_equal: true,
            near_ties: 0,
            cases: 0,
        }
    }

    /// One golden case: our first-step logits and greedy tokens against its
    /// `first_step_logits.npy` and `greedy_tokens`.
    pub fn record_case(&mut self, case: &Value, logits: &[f32], tokens: &[u32]) -> Result<(), ParityError> {
        let npy = case["first_step_logits"]["npy"].as_str().unwrap_or_default();
        let path = self.fixtures.join("golden").join(&self.checkpoint).join(npy);
        let want = crate::npy::read_f32(&path)
            .map_err(|e| ParityError::Golden { path: path.clone(), message: e.to_string() })?;
        if want.data.len() != logits.len() {
            return Err(ParityError::Golden {
                path,
                message: format!("{} golden logits, {} computed", want.data.len(), logits.len()),
            });
        }
        let d = logits.iter().zip(&want.data).map(|(a, b)| (a - b).abs()).fold(0f32, |m, x| m.max(x));
        // NaN compares false everywhere: count it as the worst.
        let d = if d.is_nan() || logits.iter().any(|x| !x.is_finite()) { f32::INFINITY } else { d };
        let margin = case["greedy_min_margin"].as_f64().unwrap_or(f64::NAN);
        let want = ids(&case["greedy_tokens"]);
        let verdict = match tokens.iter().zip(&want).position(|(a, b)| a != b) {
            None if tokens.len() == want.len() => "equal".to_owned(),
            first => {
                let step = first.unwrap_or(tokens.len().min(want.len()));
                let at = case["greedy_margins"][step].as_f64().unwrap_or(f64::NAN);
                // Each of the two logits may be off by d: a margin up to 2d can flip.
                if self.tolerance.is_none() && at <= 2.0 * f64::from(d) {
                    self.near_ties += 1;
                    format!("near tie at step {step} (margin {at:.1e})")
                } else {
                    self.all_equal = false;
                    format!("DIFFER at step {step} (margin {at:.1e})")
                }
            }
        };
        self.worst = self.worst.max(d);
        self.min_margin = self.min_margin.min(margin);
        self.cases += 1;
        let image = case["image"].as_str().unwrap_or_default().trim_start_matches("images/");
        let prompt = case["prompt_id"].as_str().unwrap_or_default();
        self.table += &format!("{image:<14} {prompt:<10} {d:<13.3e} {margin:<19.3e} {verdict}\n");
        Ok(())
    }

    /// Whether every check held (at least one case ran, every logit finite).
    pub fn passed(&self) -> bool {
        self.cases > 0 && self.all_equal && self.worst.is_finite() && self.tolerance.is_none_or(|t| self.worst <= t)
    }

    /// Prints the table and the verdict; returns [`ParityReport::passed`].
    pub fn finish(self) -> bool {
        let ok = self.passed();
        println!(
            "{}: {} cases, worst |dlogit| {:.3e}, smallest golden margin {:.3e}, tokens {}: {}\n{}",
            self.title,
            self.cases,
            self.worst,
            self.min_margin,
            match (self.all_equal, self.near_ties) {
                (false, _) => "DIFFER".to_owned(),
                (true, 0) => "all equal".to_owned(),
                (true, n) => format!("equal but {n} near ties"),
            },
            if ok { "PASS" } else { "FAIL" },
            self.table
        );
        ok
    }
}

/// A checkpoint of the fixtures and the arch it is served as.
#[derive(Debug, Clone, Copy)]
pub struct ParityCheckpoint {
    pub name: &'static str,
    pub arch: &'static str,
}

/// A parity binary's `main`: for each dtype of the command line and each checkpoint, `run` fills a
/// [`ParityReport`] (loading the backend on `args.device` in that dtype); prints every table, then
/// one line per checkpoint and dtype, and fails when any check or run failed.
pub fn main_with(
    family: &str,
    checkpoints: &[ParityCheckpoint],
    mut run: impl FnMut(&ParityArgs, ParityCheckpoint, &str, &mut ParityReport) -> Result<(), Box<dyn std::error::Error>>,
) -> ExitCode {
    let args = match ParityArgs::from_env() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("parity_{family}: {e}");
            return ExitCode::from(2);
        }
    };
    let mut summary = Vec::new();
    for dtype in &args.dtypes {
        for &ck in checkpoints {
            let mut report = ParityReport::new(&args.fixtures, ck.name, &args.device, dtype);
            let verdict = match run(&args, ck, dtype, &mut report) {
                Ok(()) if report.finish() => "PASS".to_owned(),
                Ok(()) => "FAIL".to_owned(),
                Err(e) => {
                    println!("{} {dtype}: error: {e}", ck.name);
                    format!("ERROR ({e})")
                }
            };
            summary.push(format!("parity {family} {} {} {dtype}: {verdict}", ck.name, args.device));
        }
    }
    println!("{}", summary.join("\n"));
    if summary.iter().all(|s| s.ends_with("PASS")) { ExitCode::SUCCESS } else { ExitCode::FAILURE }
}

/// [`main_with`] for a [`GreedyBackend`]: per golden case, the request through the backend's
/// `prepare` (template, tokenizer, image processor), then 24 pure-argmax steps (no EOS stop) from
/// the golden input ids, as the parity tests run them.
pub fn greedy_main<B: Backend + GreedyBackend>(family: &str, checkpoints: &[ParityCheckpoint]) -> ExitCode {
    main_with(family, checkpoints, |args, ck, dtype, report| {
        let b = B::create(fixture_config(args, &ck, dtype))?;
        let layout = B::describe().message_layout(ck.arch);
        let g = golden(&args.fixtures, ck.name)?;
        for case in cases(&g) {
            let (_, images) = b.prepare(&case_request(&args.fixtures, case, &layout))?;
            let refs: Vec<&ImageOf<B>> = images.iter().collect();
            let (logits, tokens) = b.model().greedy(&ids(&case["input_ids"]), &refs, 24, &[])?;
            report.record_case(case, &logits.to_vec1::<f32>()?, &tokens)?;
        }
        Ok(())
    })
}

/// `parity_<family> bench ARGS`: runs the family's bench code (`bench_<family>` ARGS) so one
/// binary per family travels to a GPU machine; `None` when the first argument is not `bench`.
pub fn bench_subcommand(
    family: &str,
    run: impl FnOnce(crate::bench::BenchArgs) -> crate::bench::BenchResult<()>,
) -> Option<ExitCode> {
    if std::env::args().nth(1).as_deref() != Some("bench") {
        return None;
    }
    Some(match crate::bench::BenchArgs::parse(std::env::args().skip(2)).and_then(run) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("bench_{family}: {e}");
            ExitCode::FAILURE
        }
    })
}

/// The backend config of a fixture checkpoint on the run's device, in `dtype`, without options.
pub fn fixture_config(args: &ParityArgs, ck: &ParityCheckpoint, dtype: &str) -> vlsbench_plugin_api::BackendConfig {
    vlsbench_plugin_api::BackendConfig {
        arch: ck.arch.into(),
        checkpoint: Some(format!("checkpoints/{}", ck.name)),
        device: Some(args.device.clone()),
        dtype: Some(dtype.into()),
        options: Value::Null,
        base_dir: args.fixtures.clone(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_command_line_takes_fixtures_device_and_dtypes() {
        let a = ParityArgs::parse(["--device", "cuda:1", "--dtype", "bf16", "--fixtures", "/fx"].map(String::from))
            .unwrap();
        assert_eq!(a, ParityArgs { fixtures: "/fx".into(), device: "cuda:1".into(), dtypes: vec!["bf16".into()] });
        let d = ParityArgs::parse(Vec::<String>::new()).unwrap();
        assert_eq!((d.device.as_str(), d.dtypes), ("cpu", vec!["f32".to_owned(), "bf16".to_owned()]));
        assert!(ParityArgs::parse(["--dtype", "f64"].map(String::from)).is_err());
        assert!(ParityArgs::parse(["--bogus"].map(String::from)).is_err());
    }

    #[test]
    fn f32_is_held_to_the_tolerance_and_half_types_to_the_tokens() {
        let fx = crate::fixtures_dir();
        let g = golden(&fx, "qwen2vl").unwrap();
        let case = &cases(&g)[0];
        let npy = case["first_step_logits"]["npy"].as_str().unwrap();
        let want = crate::npy::read_f32(&fx.join("golden/qwen2vl").join(npy)).unwrap().data;
        let tokens = ids(&case["greedy_tokens"]);
        let off: Vec<f32> = want.iter().map(|x| x + 1e-2).collect();
        let mut f32_exact = ParityReport::new(&fx, "qwen2vl", "cpu", "f32");
        f32_exact.record_case(case, &want, &tokens).unwrap();
        assert!(f32_exact.passed());
        let mut f32_off = ParityReport::new(&fx, "qwen2vl", "cpu", "f32");
        f32_off.record_case(case, &off, &tokens).unwrap();
        assert!(!f32_off.passed());
        let mut bf16_off = ParityReport::new(&fx, "qwen2vl", "cpu", "bf16");
        bf16_off.record_case(case, &off, &tokens).unwrap();
        assert!(bf16_off.passed());
        let mut bf16_flip = ParityReport::new(&fx, "qwen2vl", "cpu", "bf16");
        bf16_flip.record_case(case, &want, &tokens[1..]).unwrap();
        assert!(!bf16_flip.passed(), "exact logits explain no flip");
        // A flip at the step of the golden's smallest margin, with logits off by more than half of it.
        let margins: Vec<f64> =
            case["greedy_margins"].as_array().unwrap().iter().map(|m| m.as_f64().unwrap()).collect();
        let (step, &m) = margins.iter().enumerate().min_by(|a, b| a.1.total_cmp(b.1)).unwrap();
        let mut flipped = tokens.clone();
        flipped[step] = flipped[step].wrapping_add(1);
        let noisy: Vec<f32> = want.iter().map(|x| x + (m as f32) * 0.6).collect();
        let mut tie = ParityReport::new(&fx, "qwen2vl", "cpu", "bf16");
        tie.record_case(case, &noisy, &flipped).unwrap();
        assert!(tie.passed(), "a flip at a margin within 2 |dlogit| is a near tie");
        let mut f32_tie = ParityReport::new(&fx, "qwen2vl", "cpu", "f32");
        f32_tie.record_case(case, &want, &flipped).unwrap();
        assert!(!f32_tie.passed(), "f32 allows no flip");
        let mut nan = ParityReport::new(&fx, "qwen2vl", "cpu", "bf16");
        let nans = vec![f32::NAN; want.len()];
        nan.record_case(case, &nans, &tokens).unwrap();
        assert!(!nan.passed(), "a non-finite logit fails any dtype");
        assert!(!ParityReport::new(&fx, "qwen2vl", "cpu", "f32").finish(), "no case, no pass");
    }
}
