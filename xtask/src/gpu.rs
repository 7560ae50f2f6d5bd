//! The CUDA path, built on a machine with no GPU and checked on one that has a GPU and no Rust:
//!
//! - `cargo xtask build --cuda [--check]`: the three candle backends (`cdylib`s, their
//!   `bench_<family>` and `parity_<family>` examples) with the `cuda` feature, in their own target
//!   folder ([`CUDA_TARGET`]) so the CPU builds stay as they are. The CUDA toolchain is the one
//!   `../shared/gpu/cuda-build-env.sh` lays out ([`Toolchain::find`]). `--check` also builds the
//!   plugins' test binaries with `cuda` and runs a parity binary on `--device cuda` against the
//!   link-time driver stub, which must fail in the driver (proving the binary is CUDA-enabled); with
//!   no toolchain it says so and succeeds (skipped), so it can sit in any checklist.
//! - `cargo xtask gpu-check --prepare`: builds, then stages in [`STAGE`] what the GPU machine needs
//!   besides the working tree (one stripped, xz-compressed binary per family, the bench
//!   checkpoints without their weights, the `qwen_vl_utils` package), checks that the working tree plus the stage fits the 64 MiB that
//!   travels, and prints the device tool's invocation.
//! - `cargo xtask gpu-check`: runs `xtask/gpu-check/gpu-check.sh` here (it refuses clearly
//!   on a machine with no NVIDIA GPU); on the GPU machine the script runs directly.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use anyhow::{Context, bail};

use super::{BenchFamily, LLAVA_BENCH, MLLAMA_BENCH, QWEN2VL_BENCH, cargo, python, run};

/// The CUDA build's target folder.
pub const CUDA_TARGET: &str = "target/cuda";
/// What `gpu-check --prepare` stages for the GPU machine (an ignored path, carried).
pub const STAGE: &str = "target/gpu-check";
/// The on-device script.
const SCRIPT: &str = "xtask/gpu-check/gpu-check.sh";
/// The script that installs the toolchain (relative to the repository root).
const ENV_SCRIPT: &str = "../shared/gpu/cuda-build-env.sh";
/// What travels to the GPU machine at most: the working tree plus carried paths.
const TRAVEL_LIMIT: u64 = 64 << 20;
/// The device tool's time limit for one command; the script aims at under 8 minutes.
const RUN_TIMEOUT_S: u32 = 540;
/// Hopper (H100, H200), the GPU machine's chip.
const DEFAULT_COMPUTE_CAP: &str = "90";

/// The backends built with `cuda`, with their family name (examples `bench_<family>`,
/// `parity_<family>`) and the bench checkpoint of `cargo xtask bench <family>`.
const FAMILIES: [(&str, &str, &BenchFamily); 3] = [
    ("vlsbench-backend-candle-llava", "llava", &LLAVA_BENCH),
    ("vlsbench-backend-candle-qwen2vl", "qwen2vl", &QWEN2VL_BENCH),
    ("vlsbench-backend-candle-mllama", "mllama", &MLLAMA_BENCH),
];

/// A CUDA toolchain laid out as a CUDA root (nvcc, headers, libraries, a `libcuda.so` to link
/// against), as `cuda-build-env.sh` makes one.
#[derive(Debug, Clone)]
pub struct Toolchain {
    root: PathBuf,
    /// The folder holding the `libcuda.so` the build links against (the stub, or a driver's).
    driver_lib: PathBuf,
    compute_cap: String,
}

impl Toolchain {
    /// `$CUDA_HOME`, `$CUDA_ROOT` or `$CUDA_PATH` (the first set), else `${P:-$HOME/cuda-build}/cudaroot`
    /// where `cuda-build-env.sh` puts it. The error says what to run.
    pub fn find() -> Result<Self, String> {
        let var = |k: &str| std::env::var_os(k).filter(|v| !v.is_empty()).map(PathBuf::from);
        let from_env = ["CUDA_HOME", "CUDA_ROOT", "CUDA_PATH"].into_iter().find_map(var);
        let p = var("P").or_else(|| var("HOME").map(|h| h.join("cuda-build")));
        let root = from_env.clone().or_else(|| p.map(|p| p.join("cudaroot")));
        let howto = format!(
            "install it with `cargo fetch && bash {ENV_SCRIPT}` (CUDA 13.0 from PyPI, ~1.2 GB under \
             $P, default $HOME/cuda-build; under a minute), or point CUDA_HOME at a CUDA root with \
             bin/nvcc and lib/stubs/libcuda.so"
        );
        let Some(root) = root else { return Err(format!("no CUDA toolchain: {howto}")) };
        if !root.join("bin/nvcc").is_file() {
            return Err(format!("no CUDA toolchain: {} has no bin/nvcc; {howto}", root.display()));
        }
        let driver_lib = [root.join("lib/stubs"), root.join("lib64/stubs"), root.join("lib"), root.join("lib64")]
            .into_iter()
            .find(|d| d.join("libcuda.so").exists())
            .ok_or_else(|| format!("{}: no lib/stubs/libcuda.so to link against; {howto}", root.display()))?;
        let compute_cap = std::env::var("CUDA_COMPUTE_CAP").unwrap_or_else(|_| DEFAULT_COMPUTE_CAP.into());
        Ok(Self { root, driver_lib, compute_cap })
    }

    /// The library folders (the stub's first), as `LIBRARY_PATH` for linking and
    /// `LD_LIBRARY_PATH` for running a CUDA binary here.
    fn lib_path(&self) -> String {
        let lib = self.root.join("lib");
        let mut dirs = vec![self.driver_lib.display().to_string()];
        if lib != self.driver_lib {
            dirs.push(lib.display().to_string());
        }
        dirs.join(":")
    }

    /// `LD_LIBRARY_PATH` for running a CUDA binary here: the stub as `libcuda.so.1` (the name the
    /// binaries ask for; the stub's symbols all fail, so no GPU is ever reached), then the
    /// toolchain's libraries (cuBLAS, cuRAND, the runtime).
    fn runtime_lib_path(&self) -> anyhow::Result<String> {
        let dir = Path::new(CUDA_TARGET).join("driver-stub");
        std::fs::create_dir_all(&dir)?;
        let link = dir.join("libcuda.so.1");
        if link.symlink_metadata().is_err() {
            std::os::unix::fs::symlink(self.driver_lib.join("libcuda.so"), &link)
                .with_context(|| format!("cannot link {}", link.display()))?;
        }
        let dir = std::fs::canonicalize(&dir)?;
        Ok(format!("{}:{}", dir.display(), self.lib_path()))
    }

    /// Sets what nvcc, candle's build scripts and the linker read.
    fn apply(&self, cmd: &mut Command) {
        let path = std::env::var("PATH").unwrap_or_default();
        let lib_path = std::env::var("LIBRARY_PATH").ok().filter(|l| !l.is_empty());
        cmd.env("CUDA_HOME", &self.root)
            .env("CUDA_ROOT", &self.root)
            .env("CUDA_PATH", &self.root)
            .env("PATH", format!("{}:{path}", self.root.join("bin").display()))
            .env("LIBRARY_PATH", lib_path.map_or(self.lib_path(), |l| format!("{}:{l}", self.lib_path())))
            .env("CUDA_COMPUTE_CAP", &self.compute_cap)
            .env("CARGO_TARGET_DIR", CUDA_TARGET);
        if std::env::var_os("CARGO_BUILD_JOBS").is_none() {
            // These machines have few cores, shared: a CUDA build must not take them all.
            cmd.env("CARGO_BUILD_JOBS", "2");
        }
    }
}

/// `cargo xtask build --cuda [--check]`.
pub fn build_cuda(args: &[String]) -> anyhow::Result<()> {
    let check = args.iter().any(|a| a == "--check");
    let tc = match Toolchain::find() {
        Ok(tc) => tc,
        Err(e) if check => {
            println!("build --cuda --check: SKIPPED, {e}");
            return Ok(());
        }
        Err(e) => bail!("{e}"),
    };
    let secs = build_with(&tc, check)?;
    println!(
        "CUDA build (compute capability {}, {CUDA_TARGET}/release): {secs:.0} s with {} jobs",
        tc.compute_cap,
        std::env::var("CARGO_BUILD_JOBS").unwrap_or_else(|_| "2".into())
    );
    if check {
        probe(&tc)?;
        println!("build --cuda --check: OK, the three backends, their examples and tests compile with `cuda`");
    }
    Ok(())
}

/// Builds the backends and their examples with `cuda` (and their tests with `tests`); the seconds
/// it took.
fn build_with(tc: &Toolchain, tests: bool) -> anyhow::Result<f64> {
    let t = Instant::now();
    let mut cmd = cargo();
    cmd.args(["build", "--release", "--lib", "--examples"]);
    if tests {
        cmd.arg("--tests");
    }
    let features: Vec<String> = FAMILIES.iter().map(|(c, _, _)| format!("{c}/cuda")).collect();
    for (c, _, _) in FAMILIES {
        cmd.args(["-p", c]);
    }
    cmd.args(["--features", &features.join(",")]);
    tc.apply(&mut cmd);
    run(&mut cmd).context(format!("the CUDA build failed (toolchain {})", tc.root.display()))?;
    Ok(t.elapsed().as_secs_f64())
}

fn example(family: &str, kind: &str) -> PathBuf {
    Path::new(CUDA_TARGET).join("release/examples").join(format!("{kind}_{family}"))
}

/// A CUDA binary asked for `--device cuda` on a machine whose `libcuda` is the stub must fail in the
/// driver, not with "this build has no CUDA": the build is CUDA-enabled.
fn probe(tc: &Toolchain) -> anyhow::Result<()> {
    let bin = example("qwen2vl", "parity");
    let mut cmd = Command::new(&bin);
    cmd.args(["--device", "cuda", "--dtype", "f32"]);
    let has_gpu = Command::new("nvidia-smi").arg("-L").output().is_ok_and(|o| o.status.success());
    if !has_gpu {
        cmd.env("LD_LIBRARY_PATH", tc.runtime_lib_path()?);
    }
    let out = cmd.output().with_context(|| format!("cannot start {}", bin.display()))?;
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    if text.contains("no CUDA") {
        bail!("{} was built without the `cuda` feature:\n{text}", bin.display());
    }
    if out.status.success() {
        println!("{} ran on a real GPU here:\n{text}", bin.display());
    } else {
        let first = text.lines().find(|l| l.contains("error")).unwrap_or("").trim().to_owned();
        println!("probe: {} --device cuda fails in the CUDA driver as it must without a GPU: {first}", bin.display());
    }
    Ok(())
}

/// `cargo xtask gpu-check [--prepare]`.
pub fn gpu_check(args: &[String]) -> anyhow::Result<()> {
    if args.iter().any(|a| a == "--prepare") {
        return prepare();
    }
    if !Path::new(STAGE).join("STAGED.txt").is_file() {
        bail!("nothing staged in {STAGE}: run `cargo xtask gpu-check --prepare` first");
    }
    run(Command::new("bash").arg(SCRIPT))
}

/// Builds, stages, checks the size and prints the device tool's invocation.
fn prepare() -> anyhow::Result<()> {
    let tc = Toolchain::find().map_err(|e| anyhow::anyhow!("{e}"))?;
    let secs = build_with(&tc, false)?;
    let stage = Path::new(STAGE);
    if stage.exists() {
        std::fs::remove_dir_all(stage).with_context(|| format!("cannot clear {STAGE}"))?;
    }
    let bin = stage.join("bin");
    std::fs::create_dir_all(&bin)?;
    let py = python()?;
    for (_, family, bench) in FAMILIES {
        // One binary per family (`parity_<family> bench ...` is the bench), stripped and
        // compressed: 57 MB each as linked (candle's PTX and kernels), ~7 MB as .xz.
        let to = bin.join(format!("parity_{family}"));
        std::fs::copy(example(family, "parity"), &to).with_context(|| format!("cannot stage {}", to.display()))?;
        strip(&to);
        run(Command::new("xz").args(["-6", "-T0", "-f"]).arg(&to)).context("compressing needs xz")?;
        stage_bench_checkpoint(&py, family, bench, &stage.join("bench").join(family))?;
    }
    stage_qwen_vl_utils(&py, &stage.join("py"))?;
    let commit = Command::new("git")
        .args(["rev-parse", "--short", "HEAD"])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
        .unwrap_or_default();
    let staged = dir_size(stage)?;
    let tree = travelling_tree_size()?;
    std::fs::write(
        stage.join("STAGED.txt"),
        format!(
            "staged from commit {commit} (plus the working tree's changes) on {}, compute capability {}\n\
             CUDA build: {secs:.0} s; stage {:.1} MiB, working tree {:.1} MiB\n",
            utc_now(),
            tc.compute_cap,
            mib(staged),
            mib(tree)
        ),
    )?;
    println!("\nstaged {STAGE}: {:.1} MiB; the working tree that travels: {:.1} MiB", mib(staged), mib(tree));
    if staged + tree > TRAVEL_LIMIT {
        bail!("{:.1} MiB would travel, over the 64 MiB limit", mib(staged + tree));
    }
    println!(
        "\nOn a session with the GPU machine, call the device tool `run` with\n  command: bash {SCRIPT}\n  \
         carry: [\"{STAGE}\"]\n  timeout_s: {RUN_TIMEOUT_S}\nas JSON: {}",
        serde_json::json!({"command": format!("bash {SCRIPT}"), "carry": [STAGE], "timeout_s": RUN_TIMEOUT_S})
    );
    Ok(())
}

/// Strips the symbols off a staged binary (a third of its size); leaves it as it is where `strip`
/// is missing.
fn strip(bin: &Path) {
    if let Err(e) = Command::new("strip").arg(bin).status() {
        eprintln!("strip {}: {e}; staged unstripped", bin.display());
    }
}

/// The bench checkpoint of `family` (made by `make_fixtures.py` when missing), staged without its
/// safetensors: the other files, and `weights.json`, from which the GPU machine rebuilds them.
fn stage_bench_checkpoint(py: &Path, family: &str, bench: &BenchFamily, to: &Path) -> anyhow::Result<()> {
    let ck = Path::new(bench.folder).join("checkpoint");
    if !ck.join("config.json").is_file() {
        run(Command::new(py).arg("tests/fixtures/make_fixtures.py").arg(bench.checkpoint_flag).arg(&ck))?;
    }
    let dest = to.join("checkpoint");
    std::fs::create_dir_all(&dest)?;
    for f in std::fs::read_dir(&ck).with_context(|| format!("cannot read {}", ck.display()))? {
        let f = f?.path();
        if f.is_file() && f.extension().is_none_or(|e| e != "safetensors") {
            std::fs::copy(&f, dest.join(f.file_name().context("a file name")?))?;
        }
    }
    run(Command::new(py).arg("xtask/gpu-check/bench_weights.py").arg("describe").arg(&ck).arg(to.join("weights.json")))
        .with_context(|| format!("describing the {family} bench checkpoint"))
}

/// `qwen_vl_utils` (pure Python, which the GPU machine lacks) from the fixture Python, for
/// `bench_qwen2vl.py` (found without importing it: its import needs torchvision).
fn stage_qwen_vl_utils(py: &Path, to: &Path) -> anyhow::Result<()> {
    let out = Command::new(py)
        .args([
            "-c",
            "import importlib.util as u; s = u.find_spec('qwen_vl_utils'); print(list(s.submodule_search_locations)[0])",
        ])
        .output()?;
    let src = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
    if !out.status.success() || !src.is_dir() {
        bail!("{} has no qwen_vl_utils (tests/fixtures/requirements.txt installs it)", py.display());
    }
    let dest = to.join("qwen_vl_utils");
    std::fs::create_dir_all(&dest)?;
    for f in std::fs::read_dir(&src)? {
        let f = f?.path();
        if f.extension().is_some_and(|e| e == "py") {
            std::fs::copy(&f, dest.join(f.file_name().context("a file name")?))?;
        }
    }
    Ok(())
}

fn dir_size(dir: &Path) -> anyhow::Result<u64> {
    let mut total = 0;
    for e in std::fs::read_dir(dir)? {
        let e = e?;
        let m = e.metadata()?;
        total += if m.is_dir() { dir_size(&e.path())? } else { m.len() };
    }
    Ok(total)
}

/// The bytes of the working tree that travel: tracked files and untracked ones git does not ignore.
fn travelling_tree_size() -> anyhow::Result<u64> {
    let out = Command::new("git").args(["ls-files", "-z", "--cached", "--others", "--exclude-standard"]).output()?;
    Ok(out
        .stdout
        .split(|&b| b == 0)
        .filter(|p| !p.is_empty())
        .filter_map(|p| std::fs::metadata(String::from_utf8_lossy(p).as_ref()).ok())
        .map(|m| m.len())
        .sum())
}

fn mib(bytes: u64) -> f64 {
    bytes as f64 / (1 << 20) as f64
}

fn utc_now() -> String {
    Command::new("date")
        .args(["-u", "+%FT%TZ"])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_missing_toolchain_names_the_script_to_run() {
        // Where a toolchain is installed there is no message to check.
        if let Err(e) = Toolchain::find() {
            assert!(e.contains("cuda-build-env.sh") && e.contains("CUDA_HOME"), "{e}");
        }
    }

    #[test]
    fn the_on_device_script_and_its_helpers_are_where_prepare_says() {
        let root = super::super::workspace_root();
        for f in [SCRIPT, "xtask/gpu-check/bench_weights.py", "xtask/gpu-check/table.py"] {
            assert!(root.join(f).is_file(), "{f}");
        }
    }
}
