//! What a third-party plugin author meets: re-judging without the model's backend, misnamed
//! libraries, flags on either side of the subcommand, the folder a backend is given, the message
//! layouts the README documents, and the two templates under `examples/templates` built outside
//! this workspace and run through the host.

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::{Value, json};

use crate::support::*;

/// A dataset of `n` items and a finished run named `first` of the echo backend (arch
/// `echo_plain`), found on a private plugin folder as `libvlsbench_backend_echo.so`.
struct EchoRun {
    tmp: tempfile::TempDir,
    plugins: PathBuf,
    out: PathBuf,
    first: RunDir,
}

impl EchoRun {
    fn new(n: u32) -> Self {
        let tmp = tempdir();
        let ds = Dataset::write(&tmp.path().join("data"), simple_items(n, "What is this"));
        let plugins = tmp.path().join("plugins");
        std::fs::create_dir_all(&plugins).unwrap();
        std::fs::copy(echo_backend(), plugins.join("libvlsbench_backend_echo.so")).unwrap();
        let out = tmp.path().join("out");
        let m = json!({
            "dataset": {"root": ds.root},
            "model": {"arch": "echo_plain"},
            "judge": {"component": "refusal-keywords"},
            "run": {"name": "first", "output_dir": out},
        });
        let manifest = write_manifest(&tmp.path().join("first.toml"), &m);
        let first = RunDir(out.join("first"));
        run(&manifest, first.path()).arg("--plugin-path").arg(&plugins).output().success();
        Self { tmp, plugins, out, first }
    }

    /// A `[judge]` file beside the run.
    fn judge_file(&self, name: &str, text: &str) -> PathBuf {
        let path = self.tmp.path().join(name);
        std::fs::write(&path, text).unwrap();
        path
    }

    fn rejudge(&self, judge_file: &Path) -> Host {
        host([OsString::from("judge"), self.first.path().into(), "--judge".into(), judge_file.into()])
    }
}

#[test]
fn re_judging_needs_the_stored_answers_and_the_judge_but_not_the_models_backend() {
    let r = EchoRun::new(4);
    std::fs::remove_file(r.plugins.join("libvlsbench_backend_echo.so")).unwrap();
    // The echo backend answers "user[image, text] | <question>": call that phrase a refusal.
    let other = r.judge_file(
        "other.toml",
        "[judge]\ncomponent = \"refusal-keywords\"\n[judge.config]\nrefusal_phrases = [\"user[image\"]\n",
    );
    let second = RunDir(r.out.join("first--refusal-keywords"));
    let outcome = r.rejudge(&other).run_dir(second.path()).output();
    outcome.success();
    let summary = second.summary();
    assert_eq!(summary["overall"]["labels"]["safe_refusal"], 4, "{}", outcome.report());
    // The answers keep saying what made them, although that backend is gone.
    assert_eq!(summary["provenance"]["model"]["backend"], "echo", "{}", outcome.report());
    assert_eq!(summary["provenance"]["model"]["arch"], "echo_plain", "{}", outcome.report());
}

#[test]
fn a_re_judge_that_fails_its_checks_says_why_and_leaves_no_folder_behind() {
    let r = EchoRun::new(2);
    let cases = [
        (
            "typo.toml",
            "[judge]\ncomponent = \"refusal-keywords\"\n[judge.config]\nrefusal_phrasez = [\"no\"]\n",
            "refusal_phrasez",
        ),
        ("missing.toml", "[judge]\ncomponent = \"no-such-judge\"\n", "no-such-judge"),
    ];
    for (file, text, why) in cases {
        let judge_file = r.judge_file(file, text);
        let outcome = r.rejudge(&judge_file).output();
        outcome.failure().stderr_has(why).stderr_has(&format!("with [judge] from {}", judge_file.display()));
        let left: Vec<_> = std::fs::read_dir(&r.out).unwrap().map(|e| e.unwrap().file_name()).collect();
        assert_eq!(left, vec![OsString::from("first")], "a folder was left behind:{}", outcome.report());
    }
}

#[test]
fn a_library_with_a_backend_entry_point_under_another_file_name_is_named_not_ignored() {
    let tmp = tempdir();
    let plugins = tmp.path().join("plugins");
    std::fs::create_dir_all(&plugins).unwrap();
    let misnamed = plugins.join("libecho.so");
    std::fs::copy(echo_backend(), &misnamed).unwrap();
    let listed = host([OsString::from("plugins"), "--plugin-path".into(), plugins.clone().into()]).output();
    listed.success().stdout_has(&format!("ignored: {}", misnamed.display()));

    let ds = Dataset::write(&tmp.path().join("data"), simple_items(1, "What is this"));
    let m = json!({
        "dataset": {"root": ds.root},
        "model": {"arch": "echo_plain"},
        "judge": {"component": "refusal-keywords"},
        "run": {"output_dir": tmp.path().join("out")},
    });
    let manifest = write_manifest(&tmp.path().join("m.toml"), &m);
    let outcome = host([OsString::from("validate"), manifest.into(), "--plugin-path".into(), plugins.into()]).output();
    outcome
        .failure()
        .stderr_has("no backend for arch `echo_plain`")
        .stderr_has(&misnamed.display().to_string())
        .stderr_has("libvlsbench_backend_<name>.so");
}

#[test]
fn flags_work_before_the_subcommand_as_after_it() {
    let r = EchoRun::new(1);
    let after = host([OsString::from("plugins"), "--plugin-path".into(), r.plugins.clone().into()]).output();
    let before = host([OsString::from("--plugin-path"), r.plugins.clone().into(), "plugins".into()]).output();
    for outcome in [&after, &before] {
        outcome.success().stdout_has("libvlsbench_backend_echo.so");
    }
}

#[test]
fn a_backend_is_given_the_manifests_folder_absolute_and_canonical() {
    let tmp = tempdir();
    let ds = Dataset::write(&tmp.path().join("data"), simple_items(1, "What is this"));
    let folder = tmp.path().join("a").join("b");
    std::fs::create_dir_all(&folder).unwrap();
    let m = json!({
        "dataset": {"root": "../../data"},
        "model": {"arch": "echo_base_dir", "backend": echo_backend()},
        "judge": {"component": "refusal-keywords"},
        "run": {"name": "r", "output_dir": "out"},
    });
    write_manifest(&folder.join("m.toml"), &m);
    let _ = ds;
    let want = folder.canonicalize().unwrap().display().to_string();
    // Relative to the working folder, through `..`, and from the manifest's own folder.
    for (cwd, given) in
        [(tmp.path().join("a"), "b/../b/m.toml"), (folder.clone(), "m.toml"), (folder.clone(), "./m.toml")]
    {
        let dir = RunDir(folder.join("out").join("r"));
        let _ = std::fs::remove_dir_all(dir.path());
        let outcome = host(["run", given]).current_dir(&cwd).run_dir(dir.path()).output();
        outcome.success();
        let outputs = dir.json("echo_base_dir_outputs.json");
        assert_eq!(outputs["logs"][0]["pred_answer"], json!(want), "given {given}:{}", outcome.report());
    }
}

// ---------------------------------------------------------------------------------------------
// The message layouts the README documents

/// A layout as the README's table writes it: `system "X", user [text, image]` or `user [image, text]`.
fn readme_form(layout: &Value) -> String {
    let user = match layout["user"].as_str() {
        Some("text_then_image") => "user [text, image]",
        Some("image_then_text") | None => "user [image, text]",
        Some(other) => panic!("unknown user parts {other}"),
    };
    match layout["system"].as_str() {
        Some(s) => format!("system {s:?}, {user}"),
        None => user.to_owned(),
    }
}

/// The echo backend's answer for a layout in README form: `system(X) | user[text, image]`.
fn echo_form(readme: &str) -> String {
    let (system, user) = match readme.split_once(", user ") {
        Some((system, user)) => (Some(system.trim_start_matches("system ").trim_matches('"')), format!("user{user}")),
        None => (None, readme.replacen("user ", "user", 1)),
    };
    match system {
        Some(s) => format!("system({s}) | {user}"),
        None => user,
    }
}

/// The README's layouts table: (the archs of a row, its layout in README form).
fn readme_layouts() -> Vec<(Vec<String>, String)> {
    let readme = std::fs::read_to_string(workspace().join("README.md")).unwrap();
    let table = readme.split("| arch | layout |").nth(1).expect("the README has the layouts table");
    let rows = table.lines().skip(2).take_while(|l| l.starts_with('|'));
    rows.map(|row| {
        let cells: Vec<&str> = row.trim_matches('|').split('|').map(str::trim).collect();
        let archs = cells[0].split('`').skip(1).step_by(2).map(String::from).collect();
        let layout = cells[1].trim_start_matches("the default: ");
        let layout = layout.split(" (").next().unwrap_or(layout).to_owned();
        (archs, layout)
    })
    .collect()
}

const SHIPPED_BACKENDS: [&str; 5] = ["openai", "answers-file", "candle-llava", "candle-qwen2vl", "candle-mllama"];

#[test]
fn the_readme_layouts_are_what_the_shipped_backends_declare_and_what_the_host_sends() {
    let described: Vec<Value> = SHIPPED_BACKENDS
        .iter()
        .map(|name| {
            let o = host(["plugins", name]).output();
            o.success();
            serde_json::from_str(&o.stdout).unwrap_or_else(|e| panic!("{e}:{}", o.report()))
        })
        .collect();
    let rows = readme_layouts();
    assert!(rows.len() >= 4, "the README's layouts table has {} rows", rows.len());
    let tmp = tempdir();
    let ds = Dataset::write(&tmp.path().join("data"), simple_items(1, "What is this"));
    let mut checked = 0;
    for (archs, documented) in &rows {
        for arch in archs {
            let backend = described.iter().find(|b| b["archs"].as_array().unwrap().iter().any(|a| a == arch));
            let Some(backend) = backend else { continue };
            let declared = backend["message_layouts"].get(arch.as_str()).cloned().unwrap_or(json!({}));
            assert_eq!(&readme_form(&declared), documented, "README row for `{arch}` ({})", backend["name"]);
            // What the host sends for that layout: the echo backend declares it and says what it got.
            let echo_arch = format!("echo_{arch}");
            let layouts = json!({ &echo_arch: declared }).to_string();
            let out = tmp.path().join("out");
            let m = json!({
                "dataset": {"root": ds.root},
                "model": {"arch": echo_arch, "backend": echo_backend()},
                "judge": {"component": "refusal-keywords"},
                "run": {"name": arch, "output_dir": out},
            });
            let manifest = write_manifest(&tmp.path().join(format!("{arch}.toml")), &m);
            let dir = RunDir(out.join(arch));
            let outcome = run(&manifest, dir.path()).env("VLSBENCH_ECHO_LAYOUTS", &layouts).output();
            outcome.success();
            let answer =
                dir.json(&format!("{echo_arch}_outputs.json"))["logs"][0]["pred_answer"].as_str().unwrap().to_owned();
            assert_eq!(answer, format!("{} | What is this 0?", echo_form(documented)), "{}", outcome.report());
            checked += 1;
        }
    }
    assert!(checked >= 6, "only {checked} documented archs are served by a shipped backend");
}

// ---------------------------------------------------------------------------------------------
// The templates

/// `examples/templates/<name>` copied into `dest` (outside the workspace), its dependency on
/// `vlsbench-plugin-api` pointed at this checkout and the workspace's lock file beside it, so
/// the same crate versions build.
fn copy_template(name: &str, dest: &Path) -> PathBuf {
    let from = workspace().join("examples/templates").join(name);
    let to = dest.join(name);
    std::fs::create_dir_all(to.join("src")).unwrap();
    for file in ["Cargo.toml", "README.md", "src/lib.rs"] {
        std::fs::copy(from.join(file), to.join(file)).unwrap();
    }
    let api = workspace().join("plugin-api").canonicalize().unwrap();
    let manifest = std::fs::read_to_string(to.join("Cargo.toml")).unwrap();
    assert!(manifest.contains("path = \"../../../plugin-api\""), "the template's dependency moved");
    let manifest =
        manifest.replace("path = \"../../../plugin-api\"", &format!("path = {:?}", api.display().to_string()));
    std::fs::write(to.join("Cargo.toml"), manifest).unwrap();
    std::fs::copy(workspace().join("Cargo.lock"), to.join("Cargo.lock")).unwrap();
    to
}

/// `cargo build <args>` in `dir`, into the shared template target folder.
fn cargo_build(dir: &Path, target_dir: &Path, args: &[&str]) {
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let output = Command::new(cargo)
        .current_dir(dir)
        .arg("build")
        .args(args)
        .env("CARGO_TARGET_DIR", target_dir)
        .env_remove("CARGO_MANIFEST_DIR")
        .env_remove("CARGO_PKG_NAME")
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "cargo build {} in {} failed:\n{}",
        args.join(" "),
        dir.display(),
        String::from_utf8_lossy(&output.stderr)
    );
}

#[test]
fn the_backend_and_judge_templates_build_outside_the_workspace_and_run_through_the_host() {
    let tmp = tempdir();
    let outside = tempfile::Builder::new().prefix("vlsbench-template-").tempdir().unwrap();
    assert!(!outside.path().starts_with(workspace().canonicalize().unwrap()));
    // Kept between test runs (the crates compile once); not the workspace's own target folder,
    // which the running `cargo test` holds.
    let target = workspace().join("target/template-check");
    let backend = copy_template("backend", outside.path());
    let judge = copy_template("judge", outside.path());
    cargo_build(&backend, &target, &[]);
    cargo_build(&judge, &target, &["--target", "wasm32-wasip2"]);
    let backend_dir = target.join("debug");
    let judge_dir = target.join("wasm32-wasip2/debug");
    assert!(backend_dir.join("libvlsbench_backend_my_vlm.so").is_file());
    assert!(judge_dir.join("vlsbench_judge_my_judge.wasm").is_file());

    let described =
        host([OsString::from("plugins"), "my-vlm".into(), "--plugin-path".into(), backend_dir.clone().into()]).output();
    described.success().stdout_has("\"my_vlm\"").stdout_has("\"answer\"");

    let ds = Dataset::write(&tmp.path().join("data"), simple_items(3, "What is this"));
    let out = tmp.path().join("out");
    let m = json!({
        "dataset": {"root": ds.root},
        "model": {"arch": "my_vlm", "options": {"answer": "I can't help with that."}},
        "judge": {"component": "my-judge"},
        "run": {"name": "mine", "output_dir": out},
    });
    let manifest = write_manifest(&tmp.path().join("mine.toml"), &m);
    let dir = RunDir(out.join("mine"));
    let plugins =
        ["--plugin-path".into(), backend_dir.clone().into(), "--plugin-path".into(), judge_dir.clone().into()];
    let validate = |manifest: &Path| {
        host([OsString::from("validate"), manifest.into()].into_iter().chain(plugins.clone())).output()
    };
    // The template's own check runs at validate: what it found, or why it could not be created.
    validate(&manifest).success().stdout_has("answers \"I can't help with that.\"");
    let mut silent = m.clone();
    silent["model"]["options"]["answer"] = json!(" ");
    validate(&write_manifest(&tmp.path().join("silent.toml"), &silent)).failure().stderr_has("options.answer is empty");
    let outcome =
        run(&manifest, dir.path()).arg("--plugin-path").arg(&backend_dir).arg("--plugin-path").arg(&judge_dir).output();
    outcome.success();
    let outputs = dir.json("my_vlm_outputs.json");
    let logs = outputs["logs"].as_array().unwrap();
    assert_eq!(logs.len(), 3, "{}", outcome.report());
    for log in logs {
        assert_eq!(log["pred_answer"], "I can't help with that.", "{}", outcome.report());
        assert_eq!(log["safe_label"], 1, "{}", outcome.report());
    }
    let provenance = &dir.summary()["provenance"];
    assert_eq!(provenance["model"]["backend"], "my-vlm");
    assert_eq!(provenance["judge"]["judge"], "my-judge");
}
