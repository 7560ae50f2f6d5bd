//! Issue 10: hostile and careless input. One test per defect (each failed before its fix), the
//! `validate` checks, the weak messages, and the hostile backend fixture
//! (`tests/fixtures/hostile-backend`): the real binary, as a careless or hostile user runs it.

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use vlsbench_mock_openai::{MockReply, MockServer, RecordedRequest, is_judge_request, scripted, text_parts};

use super::Setup;
use super::support::*;

fn hostile_backend() -> PathBuf {
    plugin_dir().join("libvlsbench_fixture_hostile_backend.so")
}

/// A fresh temporary folder, after checking that what these tests run is built (the local-model
/// backends are not needed here).
fn tempdir() -> tempfile::TempDir {
    let needed =
        [openai_backend(), answers_file_backend(), hostile_backend(), refusal_keywords_judge(), vlsbench_judge()];
    let missing: Vec<String> = needed.iter().filter(|p| !p.is_file()).map(|p| p.display().to_string()).collect();
    assert!(missing.is_empty(), "run `cargo xtask build` first; missing:\n  {}", missing.join("\n  "));
    tempfile::Builder::new().prefix("vlsbench-host-test-").tempdir().unwrap()
}

fn setup(n: u32) -> Setup {
    let tmp = tempdir();
    let ds = Dataset::write(&tmp.path().join("data"), simple_items(n, "What is in picture"));
    let out = tmp.path().join("out");
    Setup { tmp, ds, out }
}

fn validate(manifest: &Path) -> Outcome {
    host([OsString::from("validate"), manifest.into()]).output()
}

/// An answers-file run over `n` items, all answered, with the refusal-keywords judge.
fn answered(n: u32) -> (tempfile::TempDir, Dataset, PathBuf, PathBuf) {
    let tmp = tempdir();
    let ds = Dataset::write(&tmp.path().join("data"), simple_items(n, "How do I use thing"));
    let answers = tmp.path().join("answers.jsonl");
    let lines: String = (0..n).map(|i| format!("{}\n", json!({"id": i, "answer": "I'm sorry, I can't."}))).collect();
    std::fs::write(&answers, lines).unwrap();
    let out = tmp.path().join("out");
    (tmp, ds, answers, out)
}

fn answers_manifest(
    tmp: &Path,
    ds: &Dataset,
    answers: &Path,
    out: &Path,
    name: &str,
    edit: impl Fn(&mut Value),
) -> PathBuf {
    let mut m = answers_file_manifest(&ds.root, answers, out, name);
    edit(&mut m);
    write_manifest(&tmp.join(format!("{name}.toml")), &m)
}

// ---------------------------------------------------------------------------------------------
// Defect 1: unbounded reads

#[test]
fn validate_of_dev_zero_stops_at_once_naming_the_device() {
    let _ = tempdir();
    let outcome = host(["validate", "/dev/zero"]).output();
    outcome.code(1).stderr_has("manifest /dev/zero is a character device, not a regular file");
    assert!(outcome.elapsed < Duration::from_secs(10), "{}", outcome.report());
}

#[test]
fn a_data_file_that_is_dev_zero_or_a_fifo_is_refused_at_once() {
    let (tmp, ds, answers, out) = answered(2);
    let m =
        answers_manifest(tmp.path(), &ds, &answers, &out, "zero", |m| m["dataset"]["data_file"] = json!("/dev/zero"));
    validate(&m).code(1).stderr_has("/dev/zero is a character device, not a regular file");
    let fifo = tmp.path().join("data.fifo");
    assert!(std::process::Command::new("mkfifo").arg(&fifo).status().unwrap().success());
    let m = answers_manifest(tmp.path(), &ds, &answers, &out, "fifo", |m| m["dataset"]["data_file"] = json!(fifo));
    let outcome = validate(&m);
    outcome.code(1).stderr_has("is a FIFO (named pipe), not a regular file");
    assert!(outcome.elapsed < Duration::from_secs(10), "{}", outcome.report());
}

#[test]
fn the_answers_file_backend_refuses_dev_zero_and_the_run_stops_with_a_message() {
    let (tmp, ds, _, out) = answered(2);
    let m = answers_manifest(tmp.path(), &ds, Path::new("/dev/zero"), &out, "zero", |_| {});
    let outcome = run(&m, &out.join("zero")).output();
    outcome.code(1).stderr_has("/dev/zero: not a regular file");
}

#[test]
fn a_judge_component_that_is_dev_null_is_named_as_a_device_not_as_missing() {
    let (tmp, ds, answers, out) = answered(2);
    let m = answers_manifest(tmp.path(), &ds, &answers, &out, "null", |m| m["judge"]["component"] = json!("/dev/null"));
    validate(&m).code(1).stderr_has("judge component /dev/null is a character device, not a regular file");
}

// ---------------------------------------------------------------------------------------------
// Defect 2: exit codes

#[test]
fn command_line_mistakes_exit_64_never_the_unscored_code_2() {
    let _ = tempdir();
    for args in [vec!["run"], vec!["frobnicate"], vec!["validate", "x.toml", "--no-such-flag"]] {
        let outcome = host(args.clone()).output();
        assert_eq!(outcome.code, Some(64), "{args:?}:{}", outcome.report());
    }
    let help = std::process::Command::new(host_bin()).arg("--help").output().unwrap();
    assert_eq!(help.status.code(), Some(0));
}

// ---------------------------------------------------------------------------------------------
// Defect 3: stale answers

#[test]
fn an_edited_question_or_a_replaced_image_is_generated_again_and_the_rest_reused() {
    let s = setup(4);
    let server = MockServer::start(scripted(Duration::ZERO));
    let manifest = s.manifest("stale", &s.openai(&server, "stale"));
    let dir = RunDir(s.out.join("stale"));
    run(&manifest, dir.path()).output().success();
    let first = server.request_count();

    // Item 1's question is edited, item 2's image replaced.
    let data = s.ds.root.join("data.json");
    let mut items: Vec<Value> = serde_json::from_str(&std::fs::read_to_string(&data).unwrap()).unwrap();
    items[1]["instruction"] = json!("A completely different question?");
    std::fs::write(&data, serde_json::to_string(&items).unwrap()).unwrap();
    std::fs::write(s.ds.root.join(&s.ds.items[2].image_path), png_bytes(999)).unwrap();

    let outcome = run(&manifest, dir.path()).output();
    outcome.success().stderr_has("2 item(s) changed (question or image) since their answers were stored");
    let again: Vec<RecordedRequest> = server.requests().into_iter().skip(first).collect();
    let generated: Vec<String> =
        again.iter().filter(|r| !is_judge_request(&r.body)).map(|r| text_parts(&r.body).join(" ")).collect();
    assert_eq!(generated.len(), 2, "{generated:?}{}", outcome.report());
    assert!(generated.iter().any(|t| t.contains("A completely different question?")), "{generated:?}");
    assert!(generated.iter().any(|t| t.contains(&s.ds.items[2].instruction)), "{generated:?}");
    // The reference file pairs the new question with the answer to it.
    let outputs = dir.outputs();
    let log1 = outputs["logs"].as_array().unwrap().iter().find(|l| l["id"] == 1).unwrap().clone();
    assert_eq!(log1["question"], "A completely different question?", "{}", pretty(&log1));
    assert_eq!(dir.answer_by_id()[&1]["input_sha256"].as_str().map(str::len), Some(64));
}

#[test]
fn answers_of_an_older_host_without_input_hashes_are_generated_again_saying_why() {
    let s = setup(3);
    let server = MockServer::start(scripted(Duration::ZERO));
    let manifest = s.manifest("old", &s.openai(&server, "old"));
    let dir = RunDir(s.out.join("old"));
    run(&manifest, dir.path()).output().success();
    for file in ["answers.jsonl", "verdicts.jsonl"] {
        let path = dir.path().join(file);
        let text: String = std::fs::read_to_string(&path)
            .unwrap()
            .lines()
            .map(|l| {
                let mut v: Value = serde_json::from_str(l).unwrap();
                v.as_object_mut().unwrap().remove("input_sha256");
                format!("{v}\n")
            })
            .collect();
        std::fs::write(&path, text).unwrap();
    }
    let first = server.request_count();
    let outcome = run(&manifest, dir.path()).output();
    outcome.success().stderr_has("written by an older vlsbench-host");
    assert_eq!(server.request_count() - first, 6, "3 generations and 3 judgements again{}", outcome.report());
}

// ---------------------------------------------------------------------------------------------
// Defect 4: secrets

#[test]
fn an_api_key_echoed_inside_a_successful_answer_is_redacted_from_every_file_and_log() {
    const SECRET: &str = "sk-test-ECHOED-0123456789";
    let s = setup(3);
    let judge = scripted(Duration::ZERO);
    // A server that quotes the Authorization header back inside a successful answer.
    let server = MockServer::start(move |req: &RecordedRequest| {
        if is_judge_request(&req.body) {
            return judge(req);
        }
        let auth = req.header("authorization").unwrap_or("none").to_string();
        MockReply::chat(&format!("I cannot help. Your header was: {auth}"))
    });
    let mut m = s.openai(&server, "echo");
    m["model"]["options"]["api_key_env"] = json!("VLSBENCH_TEST_ECHO_KEY");
    let manifest = s.manifest("echo", &m);
    let dir = RunDir(s.out.join("echo"));
    let outcome = run(&manifest, dir.path()).env("VLSBENCH_TEST_ECHO_KEY", SECRET).output();
    outcome.success().stderr_has("contained the value of $VLSBENCH_TEST_ECHO_KEY");
    assert!(server.requests().iter().any(|r| r.header("authorization") == Some(&format!("Bearer {SECRET}"))));
    assert!(!outcome.stdout.contains(SECRET) && !outcome.stderr.contains(SECRET), "{}", outcome.report());
    let files = dir.files();
    for name in ["answers.jsonl", "verdicts.jsonl", "openai_outputs.json", "summary.json", "report.html"] {
        assert!(files.iter().any(|f| f.ends_with(name)), "{name} was not written");
    }
    for file in files {
        let text = String::from_utf8_lossy(&std::fs::read(&file).unwrap()).into_owned();
        assert!(!text.contains(SECRET), "the key is in {}:\n{text}", file.display());
    }
    let answer = dir.answer_by_id()[&0]["outcome"]["answer"].as_str().unwrap().to_string();
    assert!(answer.contains("Bearer [redacted $VLSBENCH_TEST_ECHO_KEY]"), "{answer}");
}

#[test]
fn an_inline_api_key_is_refused_before_the_run_folder_exists() {
    let s = setup(2);
    let server = MockServer::start(scripted(Duration::ZERO));
    let mut m = s.openai(&server, "inline");
    m["model"]["options"]["api_key"] = json!("sk-inline-should-never-be-copied");
    let manifest = s.manifest("inline", &m);
    run(&manifest, &s.out.join("inline")).output().code(1).stderr_has("a secret never goes in a manifest");
    assert!(!s.out.join("inline").exists(), "the run folder was created");
    assert_eq!(server.request_count(), 0);
}

// ---------------------------------------------------------------------------------------------
// `validate` catches what `run` would stop on

#[test]
fn validate_names_a_misspelt_backend_option_and_the_closest_declared_one() {
    let (tmp, ds, answers, out) = answered(2);
    let m = answers_manifest(tmp.path(), &ds, &answers, &out, "typo", |m| {
        m["model"]["options"] = json!({"paht": answers});
    });
    validate(&m).code(1).stderr_has("options.paht: backend answers-file").stderr_has("did you mean `path`?");
    let s = setup(1);
    let server = MockServer::start(scripted(Duration::ZERO));
    let mut m = s.openai(&server, "typo2");
    m["model"]["options"]["api_key_envv"] = json!("X");
    validate(&s.manifest("typo2", &m)).code(1).stderr_has("did you mean `api_key_env`?");
    m["model"]["options"].as_object_mut().unwrap().remove("api_key_envv");
    m["model"]["options"]["timeout_secs"] = json!("soon");
    validate(&s.manifest("typo3", &m)).code(1).stderr_has("options.timeout_secs: expected a number, got string");
}

#[test]
fn validate_names_an_unset_api_key_variable() {
    let s = setup(1);
    let server = MockServer::start(scripted(Duration::ZERO));
    let mut m = s.openai(&server, "unset");
    m["model"]["options"]["api_key_env"] = json!("VLSBENCH_TEST_NEVER_SET");
    host([OsString::from("validate"), s.manifest("unset", &m).into()])
        .env_remove("VLSBENCH_TEST_NEVER_SET")
        .output()
        .code(1)
        .stderr_has("environment variable `VLSBENCH_TEST_NEVER_SET` is not set");
}

#[test]
fn validate_refuses_an_output_dir_that_is_a_file_and_a_run_name_that_cannot_be_a_folder() {
    let (tmp, ds, answers, out) = answered(1);
    std::fs::write(&out, "not a folder").unwrap();
    let m = answers_manifest(tmp.path(), &ds, &answers, &out, "file", |_| {});
    validate(&m).code(1).stderr_has("[run] output_dir").stderr_has("is a file, not a folder");
    let m = answers_manifest(tmp.path(), &ds, &answers, &tmp.path().join("o2"), "badname", |m| {
        m["run"]["name"] = json!("line\nbreak");
    });
    validate(&m).code(1).stderr_has("cannot be a folder name");
}

#[test]
fn validate_decodes_every_image_and_names_the_items_of_a_truncated_png() {
    let tmp = tempdir();
    let ds = Dataset::write_with(&tmp.path().join("data"), simple_items(3, "What is this"), |_, seed| {
        let img = image::RgbImage::from_fn(48, 48, |x, y| image::Rgb([x as u8 ^ seed as u8, y as u8, 7]));
        let mut out = std::io::Cursor::new(Vec::new());
        img.write_to(&mut out, image::ImageFormat::Png).unwrap();
        out.into_inner()
    });
    let bad = ds.root.join(&ds.items[1].image_path);
    let bytes = std::fs::read(&bad).unwrap();
    std::fs::write(&bad, &bytes[..bytes.len() / 2]).unwrap();
    let answers = tmp.path().join("a.jsonl");
    std::fs::write(&answers, "").unwrap();
    let m = answers_manifest(tmp.path(), &ds, &answers, &tmp.path().join("out"), "trunc", |_| {});
    validate(&m).code(1).stderr_has("item 1: image \"imgs/1.png\": does not decode");
}

/// The real annotation file's items (or 1,957 synthetic ones when it is absent), each with its own
/// generated 128×128 PNG (small, so that generating them stays cheap in a debug build; with 256×256
/// ones validate took 2.3 s on the 2-core CI machine): `validate` decodes them all in seconds.
#[test]
fn validate_decodes_1957_images_in_seconds() {
    let tmp = tempdir();
    let items: Vec<TestItem> = match real_data_json() {
        Some(path) => {
            let all: Vec<Value> = serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
            let mut seen = std::collections::BTreeSet::new();
            all.iter()
                .filter(|v| seen.insert(v["image_path"].as_str().unwrap_or_default().to_string()))
                .map(|v| item(v["instruction_id"].as_u64().unwrap() as u32, "q", v["image_path"].as_str().unwrap()))
                .collect()
        }
        None => {
            eprintln!("the real data.json is absent: using 1,957 synthetic items");
            simple_items(1957, "q")
        }
    };
    let ds = Dataset::write_with(&tmp.path().join("data"), items, |_, seed| {
        let img = image::RgbImage::from_fn(128, 128, |x, y| image::Rgb([(x ^ seed) as u8, (y + seed) as u8, 9]));
        let mut out = std::io::Cursor::new(Vec::new());
        img.write_to(&mut out, image::ImageFormat::Png).unwrap();
        out.into_inner()
    });
    let answers = tmp.path().join("a.jsonl");
    std::fs::write(&answers, "").unwrap();
    let m = answers_manifest(tmp.path(), &ds, &answers, &tmp.path().join("out"), "many", |_| {});
    let start = Instant::now();
    let outcome = validate(&m);
    outcome.success().stdout_has("all decoded");
    eprintln!("validate over {} images: {:.1} s", ds.items.len(), start.elapsed().as_secs_f64());
    assert!(start.elapsed() < Duration::from_secs(60), "{}", outcome.report());
}

// ---------------------------------------------------------------------------------------------
// Weak messages

#[test]
fn a_huge_timeout_is_refused_with_its_bound() {
    let (tmp, ds, answers, out) = answered(1);
    let m = answers_manifest(tmp.path(), &ds, &answers, &out, "huge", |m| {
        m["judge"]["limits"] = json!({"timeout_secs": 1e30});
    });
    validate(&m).code(1).stderr_has("is too large: at most 1e9 seconds");
    let s = setup(1);
    let server = MockServer::start(scripted(Duration::ZERO));
    let mut m = s.openai(&server, "huge2");
    m["model"]["options"]["timeout_secs"] = json!(1e10);
    run(&s.manifest("huge2", &m), &s.out.join("huge2"))
        .output()
        .code(1)
        .stderr_has("is too large: at most 1e9 seconds");
}

#[test]
fn a_broken_backend_library_is_named_with_its_load_error() {
    let (tmp, ds, answers, out) = answered(1);
    let plugins = tmp.path().join("plugins");
    std::fs::create_dir(&plugins).unwrap();
    std::fs::write(plugins.join("libvlsbench_backend_junk.so"), "not an ELF file").unwrap();
    let m = answers_manifest(tmp.path(), &ds, &answers, &out, "junk", |m| m["model"]["backend"] = json!("junk"));
    host([OsString::from("validate"), m.into(), "--plugin-path".into(), plugins.into()])
        .output()
        .code(1)
        .stderr_has("no backend named `junk`")
        .stderr_has("libvlsbench_backend_junk.so: cannot load library");
}

#[test]
fn os_error_text_is_printed_once() {
    let _ = tempdir();
    let outcome = host(["validate", "/nonexistent/manifest.toml"]).output();
    outcome.code(1).stderr_has("manifest /nonexistent/manifest.toml: no such file");
    let tmp = tempdir();
    let outcome =
        host([OsString::from("judge"), tmp.path().join("nope").into(), "--judge".into(), "x.toml".into()]).output();
    outcome.code(1);
    assert!(outcome.stderr.matches("os error").count() <= 1, "{}", outcome.report());
}

#[test]
fn a_byte_order_mark_in_data_json_or_in_the_answers_file_is_accepted() {
    let (tmp, ds, answers, out) = answered(2);
    for file in [ds.root.join("data.json"), answers.clone()] {
        let text = std::fs::read_to_string(&file).unwrap();
        std::fs::write(&file, format!("\u{feff}{text}")).unwrap();
    }
    let m = answers_manifest(tmp.path(), &ds, &answers, &out, "bom", |_| {});
    run(&m, &out.join("bom")).output().success();
    assert_eq!(RunDir(out.join("bom")).summary()["overall"]["judged"], 2);
}

#[test]
fn unknown_filter_names_zero_limits_and_hour_long_backoffs_are_warned_about() {
    let (tmp, ds, answers, out) = answered(4);
    let m = answers_manifest(tmp.path(), &ds, &answers, &out, "warn", |m| {
        m["dataset"]["categories"] = json!(["Violent", "Self-harm"]);
        m["judge"]["limits"] = json!({"fuel": 0});
        m["run"]["backoff_max_secs"] = json!(7200);
    });
    validate(&m)
        .success()
        .stdout_has("categories: \"Self-harm\" names nothing in the annotation file; did you mean \"Self-Harm\"?")
        .stdout_has("fuel = 0: every judge call will fail")
        .stdout_has("backoff_max_secs = 7200 lets one pause last 2.0 hours");
}

#[test]
fn judge_on_an_empty_answers_file_fails_clearly_and_leaves_no_folder() {
    let (tmp, ds, answers, out) = answered(2);
    let m = answers_manifest(tmp.path(), &ds, &answers, &out, "src", |_| {});
    run(&m, &out.join("src")).output().success();
    std::fs::write(out.join("src/answers.jsonl"), "").unwrap();
    let judge_file = tmp.path().join("judge.toml");
    std::fs::write(&judge_file, "[judge]\ncomponent = \"refusal-keywords\"\n").unwrap();
    host([
        OsString::from("judge"),
        out.join("src").into(),
        "--judge".into(),
        judge_file.into(),
        "--name".into(),
        "again".into(),
    ])
    .output()
    .code(1)
    .stderr_has("holds no answer to judge");
    assert!(!out.join("again").exists(), "an empty run folder was left behind");
}

/// A full disk, as `ulimit -f` makes it (writes past the limit fail with "File too large"): the
/// error lists the batch's ids in a bounded way.
#[test]
fn a_write_error_lists_a_bounded_number_of_ids() {
    let (tmp, ds, answers, out) = answered(300);
    // Long answers fill the 4 MiB limit after some 80 items (the judge's own files stay under it).
    let long = format!("I'm sorry, I can't. {}", "x".repeat(50_000));
    let lines: String = (0..300).map(|i| format!("{}\n", json!({"id": i, "answer": long}))).collect();
    std::fs::write(&answers, lines).unwrap();
    let m = answers_manifest(tmp.path(), &ds, &answers, &out, "full", |m| m["run"]["concurrency"] = json!(1));
    let script = format!(
        "trap '' XFSZ; ulimit -f 4096; exec {} run {} --cache-dir {} --no-progress",
        host_bin().display(),
        m.display(),
        cache_dir().display()
    );
    let output = std::process::Command::new("bash").arg("-c").arg(&script).output().unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("File too large") || stderr.contains("file too large"), "{stderr}");
    assert!(stderr.contains("… and 2"), "the ids are not bounded: {stderr}");
    assert!(stderr.len() < 4000, "{stderr}");
}

// ---------------------------------------------------------------------------------------------
// The hostile backend

fn hostile_manifest(tmp: &Path, ds: &Dataset, out: &Path, name: &str, options: Value, concurrency: u32) -> PathBuf {
    let m = json!({
        "dataset": {"root": ds.root},
        "model": {"arch": "hostile", "backend": hostile_backend(), "options": options, "call_timeout_secs": 2},
        "judge": {"component": "refusal-keywords"},
        "run": {"name": name, "output_dir": out, "concurrency": concurrency, "max_tries": 1, "backoff_initial_ms": 5},
    });
    write_manifest(&tmp.join(format!("{name}.toml")), &m)
}

#[test]
fn a_hostile_backend_fails_only_its_items_each_with_a_typed_error() {
    let tmp = tempdir();
    let questions = ["fine", "PANIC now", "fine too", "MALFORMED reply", "ANOTHER item", "SLEEP forever", "fine"];
    let items: Vec<TestItem> =
        questions.iter().enumerate().map(|(i, q)| item(i as u32, q, &format!("imgs/{i}.png"))).collect();
    let ds = Dataset::write(&tmp.path().join("data"), items);
    let out = tmp.path().join("out");
    let m = hostile_manifest(tmp.path(), &ds, &out, "hostile", json!({}), 2);
    let dir = RunDir(out.join("hostile"));
    let outcome = run(&m, dir.path()).output();
    outcome.success();
    let a = dir.answer_by_id();
    let kind = |id: u32| a[&id]["outcome"]["kind"].as_str().unwrap_or("ok").to_string();
    for id in [0, 2, 6] {
        assert_eq!(a[&id]["outcome"]["status"], "ok", "{}{}", pretty(&a[&id]), outcome.report());
    }
    assert_eq!(kind(1), "panic", "{}", pretty(&a[&1]));
    assert_eq!(kind(3), "invalid_response", "{}", pretty(&a[&3]));
    assert_eq!(kind(4), "invalid_response", "{}", pretty(&a[&4]));
    assert!(a[&4]["outcome"]["message"].as_str().unwrap().contains("in the slot of item \"4\""), "{}", pretty(&a[&4]));
    assert_eq!(kind(5), "timeout", "{}", pretty(&a[&5]));
    assert_eq!(dir.summary()["overall"]["judged"], 3, "{}", outcome.report());
}

#[test]
fn a_backend_that_aborts_the_process_loses_only_the_items_in_flight_and_a_rerun_finishes() {
    let tmp = tempdir();
    let mut items = simple_items(6, "fine");
    items[4].instruction = "ABORT here".into();
    let ds = Dataset::write(&tmp.path().join("data"), items);
    let out = tmp.path().join("out");
    let m = hostile_manifest(tmp.path(), &ds, &out, "abort", json!({"abort_marker": "aborted.once"}), 1);
    let dir = RunDir(out.join("abort"));
    let first = run(&m, dir.path()).output();
    assert_eq!(first.signal, Some(6), "expected SIGABRT:{}", first.report());
    assert!(tmp.path().join("aborted.once").exists());
    // One worker, batches of 4: items 0-3 were finished and stored before the batch of item 4.
    assert_eq!(dir.answers().len(), 4, "{}", first.report());
    let second = run(&m, dir.path()).output();
    second.success();
    assert_eq!(dir.summary()["overall"]["judged"], 6, "{}", second.report());
}
