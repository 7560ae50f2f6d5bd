//! The onnxruntime backend through the real host: the ONNX exports of the tiny Qwen2-VL and
//! LLaVA-1.5 fixtures (`tests/fixtures/checkpoints/{qwen2vl,llava_hf}_onnx`) run by `vlsbench-host
//! run` (batched, as the host sends them) give, on every golden case, the answers transformers
//! gives and the answers the candle backend gives on the same weights; a missing ONNX Runtime
//! library stops `validate` or the run before any item, naming the path and the version needed.
//!
//! The library: `ORT_DYLIB_PATH`, else `target/ort-venv` (which `.ci/run` makes from PyPI's
//! `onnxruntime` wheel). Without either, the tests say SKIPPED and why.

use super::*;

/// The ONNX Runtime library, or `None` with the reason printed.
fn ort_library() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("ORT_DYLIB_PATH").filter(|p| !p.is_empty()) {
        return Some(PathBuf::from(p));
    }
    let lib = workspace().join("target/ort-venv/lib");
    let found = std::fs::read_dir(&lib).ok().into_iter().flatten().flatten().find_map(|py| {
        let capi = py.path().join("site-packages/onnxruntime/capi");
        std::fs::read_dir(capi)
            .ok()?
            .flatten()
            .map(|e| e.path())
            .find(|p| p.file_name().and_then(|n| n.to_str()).is_some_and(|n| n.starts_with("libonnxruntime.so.")))
    });
    if found.is_none() {
        println!(
            "SKIPPED: no ONNX Runtime library (set ORT_DYLIB_PATH, or `python3 -m venv target/ort-venv && \
             target/ort-venv/bin/pip install onnxruntime==1.32.0` as .ci/run does)"
        );
    }
    found
}

/// Every case of `<checkpoint>_onnx`'s golden through the host twice, on the ONNX export with
/// backend onnxruntime and on the safetensors checkpoint with the candle backend: both answer as
/// transformers does, so they answer alike.
fn onnx_answers_equal_transformers_and_candle(arch: &str, checkpoint: &str, candle: &str) {
    require_built();
    let Some(lib) = ort_library() else { return };
    let onnx_ck = format!("{checkpoint}_onnx");
    let g = golden(&onnx_ck);
    let tmp = tempdir();
    let ds = golden_dataset(&tmp.path().join("data"), &g);
    let out = tmp.path().join("out");
    let max_new = g["header"]["max_new_tokens"].as_u64().unwrap();
    let mut answers = Vec::new();
    for (name, ck, backend) in [
        ("onnx", fixtures().join("checkpoints").join(&onnx_ck), "onnxruntime"),
        ("candle", fixtures().join("checkpoints").join(checkpoint), candle),
    ] {
        let mut m = local_manifest(&ds, arch, &ck, &out, name, max_new);
        m["model"]["backend"] = json!(backend);
        if backend == "onnxruntime" {
            m["model"]["options"] = json!({"ort_library": lib});
        }
        let manifest = write_manifest(&tmp.path().join(format!("{name}.toml")), &m);
        let dir = RunDir(out.join(name));
        let outcome = run(&manifest, dir.path()).output();
        outcome.success();
        let by_id = dir.answer_by_id();
        assert_eq!(by_id.len(), g["cases"].as_array().unwrap().len(), "{}", outcome.report());
        for a in by_id.values() {
            assert_eq!(a["outcome"]["status"], "ok", "{name}: {a}\n{}", outcome.report());
            assert_eq!(a["provenance"]["backend"], backend);
        }
        answers.push(by_id);
    }
    let mut mismatches = Vec::new();
    for (i, case) in g["cases"].as_array().unwrap().iter().enumerate() {
        let want = case["transformers_answer"].as_str().unwrap();
        let (onnx, candle) =
            (&answers[0][&(i as u32)]["outcome"]["answer"], &answers[1][&(i as u32)]["outcome"]["answer"]);
        if onnx != want || candle != want {
            mismatches.push(format!(
                "{} / {}: onnxruntime {onnx}, candle {candle}, transformers {want:?}",
                case["image"], case["prompt_id"]
            ));
        }
    }
    assert!(mismatches.is_empty(), "{onnx_ck}: answers differ:\n{}", mismatches.join("\n"));
}

#[test]
fn onnx_qwen2vl_answers_through_the_host_equal_transformers_and_candle() {
    onnx_answers_equal_transformers_and_candle("qwen2vl", "qwen2vl", "candle-qwen2vl");
}

#[test]
fn onnx_llava_hf_answers_through_the_host_equal_transformers_and_candle() {
    onnx_answers_equal_transformers_and_candle("llava_hf", "llava_hf", "candle-llava");
}

/// An ONNX Runtime too old for this build (1.21.1: it needs 1.22), which `.ci/run` takes out of
/// PyPI's wheel into `target/ort-old`; `None` with the reason printed.
fn old_ort_library() -> Option<PathBuf> {
    let found = std::fs::read_dir(workspace().join("target/ort-old"))
        .ok()?
        .flatten()
        .map(|e| e.path())
        .find(|p| p.file_name().and_then(|n| n.to_str()).is_some_and(|n| n.starts_with("libonnxruntime.so.1.")));
    if found.is_none() {
        println!(
            "SKIPPED: no old ONNX Runtime in target/ort-old (.ci/run extracts onnxruntime 1.21.1's library there)"
        );
    }
    found
}

/// A manifest of two items for the onnxruntime backend on `checkpoint`.
fn onnx_manifest(tmp: &Path, name: &str, checkpoint: &Path, edit: impl FnOnce(&mut Value)) -> (PathBuf, RunDir) {
    let ds = Dataset::write(&tmp.join("data"), simple_items(2, "Q"));
    let out = tmp.join("out");
    let mut m = local_manifest(&ds, "qwen2vl", checkpoint, &out, name, 4);
    m["model"]["backend"] = json!("onnxruntime");
    edit(&mut m);
    (write_manifest(&tmp.join(format!("{name}.toml")), &m), RunDir(out.join(name)))
}

#[test]
fn a_missing_onnx_runtime_library_stops_validate_and_run_before_any_item() {
    require_built();
    let tmp = tempdir();
    let ck = fixtures().join("checkpoints/qwen2vl_onnx");
    let absent = tmp.path().join("libonnxruntime.so.1.32.0");
    // Named by the option: the host checks the path before the backend is asked.
    let (manifest, _) =
        onnx_manifest(tmp.path(), "noort", &ck, |m| m["model"]["options"] = json!({"ort_library": absent}));
    for command in ["validate", "run"] {
        host([OsString::from(command), manifest.clone().into()])
            .output()
            .failure()
            .stderr_has(&format!("options.ort_library {}: no such file or folder", absent.display()));
    }
    // Named by ORT_DYLIB_PATH only: the backend's own check refuses it, at validate as at the
    // start of a run, which then makes no run folder at all.
    let (manifest, dir) = onnx_manifest(tmp.path(), "noort_env", &ck, |_| {});
    for command in ["validate", "run"] {
        host([OsString::from(command), manifest.clone().into()])
            .env("ORT_DYLIB_PATH", &absent.display().to_string())
            .output()
            .failure()
            .stderr_has(&format!("cannot load ONNX Runtime from {}", absent.display()))
            .stderr_has("from ORT_DYLIB_PATH")
            .stderr_has(">= 1.22.0");
    }
    assert!(!dir.path().exists(), "a run that could not start made {}", dir.path().display());
}

#[test]
fn an_onnx_runtime_too_old_is_refused_at_validate_naming_its_path_the_version_found_and_the_version_needed() {
    require_built();
    let Some(old) = old_ort_library() else { return };
    let tmp = tempdir();
    let ck = fixtures().join("checkpoints/qwen2vl_onnx");
    let (by_option, _) =
        onnx_manifest(tmp.path(), "old_option", &ck, |m| m["model"]["options"] = json!({"ort_library": old}));
    let (by_env, dir) = onnx_manifest(tmp.path(), "old_env", &ck, |_| {});
    let path = old.canonicalize().unwrap().display().to_string();
    for (manifest, env, source) in [
        (&by_option, None, "from [model.options] ort_library"),
        (&by_env, Some(old.display().to_string()), "from ORT_DYLIB_PATH"),
    ] {
        for command in ["validate", "run"] {
            let mut h = host([OsString::from(command), manifest.clone().into()]).env_remove("ORT_DYLIB_PATH");
            if let Some(v) = &env {
                h = h.env("ORT_DYLIB_PATH", v);
            }
            h.output()
                .failure()
                .stderr_has(&format!("ONNX Runtime at {path} ({source}) is version 1.21.1"))
                .stderr_has("needs ONNX Runtime >= 1.22.0");
        }
    }
    assert!(!dir.path().exists(), "a run that could not start made {}", dir.path().display());
}

#[test]
fn validate_says_which_onnx_runtime_it_found_and_refuses_a_cuda_device_or_an_export_it_cannot_run() {
    require_built();
    let Some(lib) = ort_library() else { return };
    let tmp = tempdir();
    let ck = fixtures().join("checkpoints/qwen2vl_onnx");
    let path = lib.canonicalize().unwrap().display().to_string();
    let (manifest, _) = onnx_manifest(tmp.path(), "found", &ck, |_| {});
    let validate = |manifest: &Path| {
        host([OsString::from("validate"), manifest.into()]).env("ORT_DYLIB_PATH", &lib.display().to_string()).output()
    };
    validate(&manifest).success().stdout_has(&format!("at {path} (from ORT_DYLIB_PATH)")).stdout_has("ONNX Runtime 1.");
    // PyPI's `onnxruntime` is built without CUDA: asking for it is refused, never run on the CPU.
    let (cuda, _) = onnx_manifest(tmp.path(), "cuda", &ck, |m| m["model"]["device"] = json!("cuda"));
    validate(&cuda).failure().stderr_has("needs ONNX Runtime's CUDA execution provider").stderr_has(&path);
    // A folder that is not an export in transformers.js' layout is named with the graph it lacks.
    let empty = tmp.path().join("not_an_export");
    std::fs::create_dir_all(&empty).unwrap();
    let (not_export, _) = onnx_manifest(tmp.path(), "not_export", &empty, |_| {});
    validate(&not_export)
        .failure()
        .stderr_has(&format!("{} is missing", empty.join("onnx/vision_encoder.onnx").display()));
}
