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

#[test]
fn a_missing_onnx_runtime_library_stops_validate_and_run_before_any_item() {
    require_built();
    let tmp = tempdir();
    let ds = Dataset::write(&tmp.path().join("data"), simple_items(2, "Q"));
    let ck = fixtures().join("checkpoints/qwen2vl_onnx");
    let out = tmp.path().join("out");
    let absent = tmp.path().join("libonnxruntime.so.1.32.0");
    // Named by the option: the host checks the path before the backend is created.
    let mut m = local_manifest(&ds, "qwen2vl", &ck, &out, "noort", 4);
    m["model"]["backend"] = json!("onnxruntime");
    m["model"]["options"] = json!({"ort_library": absent});
    let manifest = write_manifest(&tmp.path().join("noort.toml"), &m);
    for command in ["validate", "run"] {
        host([OsString::from(command), manifest.clone().into()])
            .output()
            .failure()
            .stderr_has(&format!("options.ort_library {}: no such file or folder", absent.display()));
    }
    // Named by ORT_DYLIB_PATH: the backend refuses it when created, before any item runs.
    let mut m = local_manifest(&ds, "qwen2vl", &ck, &out, "noort_env", 4);
    m["model"]["backend"] = json!("onnxruntime");
    let manifest = write_manifest(&tmp.path().join("noort_env.toml"), &m);
    let dir = RunDir(out.join("noort_env"));
    let needed = ">= 1.22.0";
    run(&manifest, dir.path())
        .env("ORT_DYLIB_PATH", &absent.display().to_string())
        .output()
        .failure()
        .stderr_has(&absent.display().to_string())
        .stderr_has("ORT_DYLIB_PATH")
        .stderr_has(needed);
    assert!(!dir.path().join("answers.jsonl").exists() || dir.answers().is_empty(), "an item ran");
}
