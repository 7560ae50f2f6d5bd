//! The onnxruntime backend on the ONNX exports of the tiny fixtures (`tests/fixtures/checkpoints/
//! {qwen2vl,llava_hf}_onnx`, made by `tests/fixtures/onnx_fixtures.py`) through the real ONNX
//! Runtime library: first-step logits against onnxruntime's in Python, greedy tokens against
//! onnxruntime's and transformers', a batch against one request at a time; what a missing
//! library, a CPU-only library asked for CUDA, a dtype other than the graph's and a real
//! onnx-community configuration do.
//!
//! The library: `ORT_DYLIB_PATH`, else the one `.ci/run` installs (`target/ort-venv`, PyPI's
//! `onnxruntime` wheel). Without either, each test says SKIPPED and why.

#![allow(clippy::unwrap_used)]

use std::path::{Path, PathBuf};

use serde_json::Value;
use vlm_core::testing::{fixtures, golden, ids, max_abs_diff, request};
use vlsbench_backend_onnxruntime::backend::{ARCH_LLAVA_HF, ARCH_QWEN2VL, OnnxBackend, OnnxOptions};
use vlsbench_backend_onnxruntime::graphs::{DecoderLayout, TensorElementType};
use vlsbench_plugin_api::{Backend, MessageLayout};

/// The ONNX Runtime library the tests run, or `None` (with the reason printed).
fn library() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("ORT_DYLIB_PATH").filter(|p| !p.is_empty()) {
        return Some(PathBuf::from(p));
    }
    let lib = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../target/ort-venv/lib");
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

fn options(lib: &Path) -> OnnxOptions {
    OnnxOptions { ort_library: Some(lib.to_owned()), repetition_penalty: None, threads: Some(1) }
}

fn load(lib: &Path, checkpoint: &str, arch: &str) -> OnnxBackend {
    let dir = fixtures().join("checkpoints").join(checkpoint);
    let mut b = OnnxBackend::load(&dir, arch, "cpu", None, &options(lib)).unwrap();
    // The fixtures' greedy goldens run 24 tokens without an EOS stop or a repetition penalty.
    b.set_eos(vec![]);
    b.set_repetition_penalty(1.0);
    b
}

fn layout(arch: &str) -> MessageLayout {
    OnnxBackend::describe().message_layouts[arch].clone()
}

/// Every golden case: first-step logits within 1e-4 of onnxruntime's in Python, greedy tokens
/// equal to onnxruntime's and to transformers'.
fn cases_match_python(checkpoint: &str, arch: &str, tolerance: f32) {
    let Some(lib) = library() else { return };
    let b = load(&lib, checkpoint, arch);
    let g = golden(checkpoint);
    let gdir = fixtures().join("golden").join(checkpoint);
    let max_new = g["header"]["max_new_tokens"].as_u64().unwrap() as usize;
    let cases = g["cases"].as_array().unwrap();
    assert!(!cases.is_empty());
    let mut report = Vec::new();
    let mut worst = 0f32;
    for (i, c) in cases.iter().enumerate() {
        let image = fixtures().join(c["image"].as_str().unwrap());
        let req = request(&i.to_string(), c["prompt"].as_str().unwrap(), &image, max_new as u32, &layout(arch));
        let (logits, tokens) = b.first_logits_and_tokens(&req, max_new).unwrap();
        let want = vlm_core::npy::read_f32(&gdir.join(c["first_step_logits"]["npy"].as_str().unwrap())).unwrap();
        let d = max_abs_diff(&logits, &want.data);
        worst = worst.max(d);
        let golden_tokens = ids(&c["greedy_tokens"]);
        report.push(format!(
            "{} / {}: |dlogit| {d:.2e}, tokens {}",
            c["image"],
            c["prompt_id"],
            if tokens == golden_tokens { "equal" } else { "DIFFER" }
        ));
        assert_eq!(tokens, golden_tokens, "{checkpoint} {} / {}:\n{}", c["image"], c["prompt_id"], report.join("\n"));
        assert!(d < tolerance, "{checkpoint} {} / {}: |dlogit| {d}\n{}", c["image"], c["prompt_id"], report.join("\n"));
    }
    println!("{checkpoint}: {} cases, worst |dlogit| {worst:.2e}\n{}", cases.len(), report.join("\n"));
}

#[test]
fn qwen2vl_export_matches_onnxruntime_in_python_and_transformers_on_every_case() {
    cases_match_python("qwen2vl_onnx", ARCH_QWEN2VL, 1e-4);
    assert!(
        golden("qwen2vl_onnx")["cases"]
            .as_array()
            .unwrap()
            .iter()
            .all(|c| c["greedy_tokens_equal_transformers"] == true)
    );
}

#[test]
fn an_f16_qwen2vl_export_runs_in_f16_and_matches_onnxruntime_in_python() {
    let Some(lib) = library() else { return };
    let dir = fixtures().join("checkpoints/qwen2vl_onnx_f16");
    let b = OnnxBackend::load(&dir, ARCH_QWEN2VL, "cpu", None, &options(&lib)).unwrap();
    assert_eq!(b.elem().name(), "f16", "dtype follows the graph");
    // Our f32 pixels rounded to f16 at the graph's edge, as Python rounds them: the same graph, so
    // the logits agree to f16's resolution at these magnitudes.
    cases_match_python("qwen2vl_onnx_f16", ARCH_QWEN2VL, 1e-2);
}

#[test]
fn llava_hf_export_matches_onnxruntime_in_python_and_transformers_on_every_case() {
    cases_match_python("llava_hf_onnx", ARCH_LLAVA_HF, 1e-4);
    assert!(
        golden("llava_hf_onnx")["cases"]
            .as_array()
            .unwrap()
            .iter()
            .all(|c| c["greedy_tokens_equal_transformers"] == true)
    );
}

/// Requests of different lengths decoded together give each the tokens it gets alone.
fn batch_equals_one_at_a_time(checkpoint: &str, arch: &str) {
    let Some(lib) = library() else { return };
    let b = load(&lib, checkpoint, arch);
    let g: Value = golden(checkpoint);
    let cases = g["cases"].as_array().unwrap();
    // Different images and prompts: different lengths, so the batch is left-padded.
    let picked: Vec<&Value> = cases.iter().step_by(4).take(4).collect();
    let reqs: Vec<_> = picked
        .iter()
        .enumerate()
        .map(|(i, c)| {
            let image = fixtures().join(c["image"].as_str().unwrap());
            request(&i.to_string(), c["prompt"].as_str().unwrap(), &image, 12, &layout(arch))
        })
        .collect();
    let lens: Vec<usize> = picked.iter().map(|c| c["input_ids"].as_array().unwrap().len()).collect();
    assert!(lens.iter().any(|&l| l != lens[0]), "the batch must need padding: {lens:?}");
    let together = b.generate_batch(&reqs);
    for (r, t) in reqs.iter().zip(&together) {
        let alone = b.generate_one(r).unwrap();
        let t = t.as_ref().unwrap();
        assert_eq!(t.text, alone.text, "item {}", r.id);
        assert_eq!(t.tokens, alone.tokens, "item {}", r.id);
    }
}

#[test]
fn a_qwen2vl_batch_answers_like_one_request_at_a_time() {
    batch_equals_one_at_a_time("qwen2vl_onnx", ARCH_QWEN2VL);
}

#[test]
fn a_llava_hf_batch_answers_like_one_request_at_a_time() {
    batch_equals_one_at_a_time("llava_hf_onnx", ARCH_LLAVA_HF);
}

#[test]
fn a_missing_library_is_named_with_the_version_needed_at_creation() {
    let dir = fixtures().join("checkpoints/qwen2vl_onnx");
    let missing = PathBuf::from("/nonexistent/libonnxruntime.so.1.32.0");
    let opts = OnnxOptions { ort_library: Some(missing), repetition_penalty: None, threads: None };
    let e = OnnxBackend::load(&dir, ARCH_QWEN2VL, "cpu", None, &opts).err().unwrap();
    let m = e.to_string();
    assert!(m.contains("/nonexistent/libonnxruntime.so.1.32.0"), "{m}");
    assert!(m.contains(&format!(">= 1.{}", vlsbench_backend_onnxruntime::runtime::MIN_ORT_MINOR)), "{m}");
}

#[test]
fn a_file_that_is_not_onnx_runtime_is_refused_naming_it() {
    let dir = fixtures().join("checkpoints/qwen2vl_onnx");
    // A real file, but no shared library.
    let not_lib = std::fs::canonicalize(dir.join("config.json")).unwrap();
    let opts = OnnxOptions { ort_library: Some(not_lib.clone()), repetition_penalty: None, threads: None };
    let e = OnnxBackend::load(&dir, ARCH_QWEN2VL, "cpu", None, &opts).err().unwrap().to_string();
    if e.contains("already loaded") {
        // Another test of this binary loaded the real library first: that is what is said.
        assert!(e.contains(&not_lib.display().to_string()), "{e}");
        return;
    }
    assert!(e.contains(&not_lib.display().to_string()) && e.contains("cannot load ONNX Runtime"), "{e}");
}

#[test]
fn cuda_with_a_cpu_only_library_is_an_error_not_a_cpu_run() {
    let Some(lib) = library() else { return };
    let dir = fixtures().join("checkpoints/qwen2vl_onnx");
    let rt = vlsbench_backend_onnxruntime::runtime::Runtime::load(Some(&lib)).unwrap();
    if rt.has_cuda() {
        println!("SKIPPED: this ONNX Runtime has the CUDA provider ({})", lib.display());
        return;
    }
    let e = OnnxBackend::load(&dir, ARCH_QWEN2VL, "cuda", None, &options(&lib)).err().unwrap().to_string();
    assert!(e.contains("CUDA execution provider") && e.contains(&rt.path.display().to_string()), "{e}");
}

#[test]
fn a_dtype_other_than_the_graphs_is_refused_naming_both() {
    let Some(lib) = library() else { return };
    let dir = fixtures().join("checkpoints/llava_hf_onnx");
    let e = OnnxBackend::load(&dir, ARCH_LLAVA_HF, "cpu", Some("f16"), &options(&lib)).err().unwrap().to_string();
    assert!(e.contains("\"f16\"") && e.contains("f32 graph") && e.contains("decoder_model_merged.onnx"), "{e}");
    // Left out, it follows the graph.
    let b = OnnxBackend::load(&dir, ARCH_LLAVA_HF, "cpu", None, &options(&lib)).unwrap();
    assert_eq!(b.elem().name(), "f32");
}

#[test]
fn an_arch_whose_config_does_not_fit_the_export_is_refused() {
    let Some(lib) = library() else { return };
    // The LLaVA export read as Qwen2-VL: config.json's model_type says otherwise.
    let dir = fixtures().join("checkpoints/llava_hf_onnx");
    let e = OnnxBackend::load(&dir, ARCH_QWEN2VL, "cpu", None, &options(&lib)).err().unwrap().to_string();
    assert!(e.contains("config.json") && e.contains("qwen2_vl"), "{e}");
}

/// The decoder inputs onnx-community's Qwen2-VL-2B-Instruct export declares, written out: `inputs_embeds`
/// (b, s, 1536), `attention_mask` (b, total), `position_ids` (3, b, s), `past_key_values.{i}.key/value`
/// (b, 2, past, 128) for 28 layers. `positions`: the shape of `position_ids`.
fn qwen2vl_2b_decoder_inputs(positions: &[i64]) -> Vec<(String, Option<TensorElementType>, Vec<i64>)> {
    let t = |n: &str, ty, s: &[i64]| (n.to_owned(), Some(ty), s.to_vec());
    let mut v = vec![
        t("inputs_embeds", TensorElementType::Float32, &[-1, -1, 1536]),
        t("attention_mask", TensorElementType::Int64, &[-1, -1]),
        t("position_ids", TensorElementType::Int64, positions),
    ];
    for i in 0..28 {
        for kv in ["key", "value"] {
            v.push(t(&format!("past_key_values.{i}.{kv}"), TensorElementType::Float32, &[-1, 2, -1, 128]));
        }
    }
    v
}

#[test]
fn the_onnx_community_qwen2vl_2b_configuration_parses_and_picks_its_graph_inputs() {
    use vlm_core::qwen2vl::config::{ImageProcessorConfig, Qwen2VlConfig};
    use vlsbench_backend_onnxruntime::qwen2vl::expected_decoder;
    let dir = fixtures().join("onnx_community/Qwen2-VL-2B-Instruct");
    let cfg = Qwen2VlConfig::from_dir(&dir).unwrap();
    let proc = ImageProcessorConfig::from_dir(&dir).unwrap();
    proc.check_against(&cfg.vision).unwrap();
    assert_eq!(cfg.vision.patch_dim(), 1176, "pixel_values rows of the vision encoder");
    assert_eq!((proc.min_pixels, proc.max_pixels, proc.merge_size), (3136, 12845056, 2));
    assert_eq!(cfg.image_token_id, 151655);
    assert_eq!(cfg.text.mrope_section, vec![16, 24, 24]);
    let want = expected_decoder(&cfg);
    assert_eq!((want.layers, want.kv_heads, want.head_dim, want.hidden, want.position_rows), (28, 2, 128, 1536, 3));
    let path = dir.join("onnx/decoder_model_merged.onnx");
    let layout = DecoderLayout::from_inputs(&path, &qwen2vl_2b_decoder_inputs(&[3, -1, -1])).unwrap();
    assert_eq!((layout.layers, layout.kv_heads, layout.head_dim, layout.position_rows), (28, 2, 128, 3));
    assert!(!layout.use_cache_branch);
    layout.check_against(&path, &want).unwrap();
    // A decoder with 1-D positions (a plain Qwen2 export) does not fit Qwen2-VL's config.
    let flat = DecoderLayout::from_inputs(&path, &qwen2vl_2b_decoder_inputs(&[-1, -1])).unwrap();
    let e = flat.check_against(&path, &want).unwrap_err().to_string();
    assert!(e.contains("position_ids with 1 rows") && e.contains("decoder_model_merged.onnx"), "{e}");
}
