//! Local models through the real host: the candle-llava, candle-qwen2vl and candle-mllama backends
//! (`libvlsbench_backend_candle_*.so`) loaded by `vlsbench-host run` on the tiny random-weight
//! checkpoints under `tests/fixtures/`, each answer compared with what transformers generated
//! greedily for the same image and question (`tests/fixtures/golden/<checkpoint>/golden.json`,
//! written by `tests/fixtures/make_fixtures.py`). Also: the per-arch example manifests, and what
//! `validate` says when their paths are missing.

use std::ffi::OsString;
use std::path::{Path, PathBuf};

use serde_json::{Value, json};

use crate::support::*;

mod onnx;

pub(crate) fn fixtures() -> PathBuf {
    workspace().join("tests/fixtures")
}

pub(crate) fn golden(checkpoint: &str) -> Value {
    let path = fixtures().join("golden").join(checkpoint).join("golden.json");
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_json::from_str(&text).unwrap()
}

/// One dataset item per golden case: the case's question and a copy of its image.
pub(crate) fn golden_dataset(root: &Path, golden: &Value) -> Dataset {
    let cases = golden["cases"].as_array().unwrap();
    let items: Vec<TestItem> = cases
        .iter()
        .enumerate()
        .map(|(i, c)| {
            let image = Path::new(c["image"].as_str().unwrap()).file_name().unwrap().to_str().unwrap().to_owned();
            item(i as u32, c["prompt"].as_str().unwrap(), &format!("imgs/{image}"))
        })
        .collect();
    Dataset::write_with(root, items, |path, _| {
        let name = Path::new(path).file_name().unwrap();
        std::fs::read(fixtures().join("images").join(name)).unwrap()
    })
}

pub(crate) fn local_manifest(
    ds: &Dataset,
    arch: &str,
    checkpoint: &Path,
    out: &Path,
    name: &str,
    max_new: u64,
) -> Value {
    json!({
        "dataset": {"root": ds.root},
        "model": {
            "arch": arch,
            "checkpoint": checkpoint,
            "dtype": "f32",
            "generation": {"max_new_tokens": max_new},
        },
        "judge": {"component": "refusal-keywords"},
        "run": {"name": name, "output_dir": out, "concurrency": 1},
    })
}

/// The backend that serves each local arch.
fn backend_for(arch: &str) -> &'static str {
    match arch {
        "qwen2vl" => "candle-qwen2vl",
        "mllama" => "candle-mllama",
        _ => "candle-llava",
    }
}

/// Runs every golden case of `checkpoint` through the host as arch `arch` and compares answers.
fn answers_equal_transformers(arch: &str, checkpoint: &str, options: Option<Value>) {
    require_built();
    let g = golden(checkpoint);
    let tmp = tempdir();
    let ds = golden_dataset(&tmp.path().join("data"), &g);
    let out = tmp.path().join("out");
    let max_new = g["header"]["max_new_tokens"].as_u64().unwrap();
    let ck = fixtures().join("checkpoints").join(checkpoint);
    let mut m = local_manifest(&ds, arch, &ck, &out, checkpoint, max_new);
    if let Some(opts) = options {
        m["model"]["options"] = opts;
    }
    let manifest = write_manifest(&tmp.path().join(format!("{checkpoint}.toml")), &m);
    let dir = RunDir(out.join(checkpoint));
    let outcome = run(&manifest, dir.path()).output();
    outcome.success();
    let answers = dir.answer_by_id();
    let cases = g["cases"].as_array().unwrap();
    assert_eq!(answers.len(), cases.len(), "{}", outcome.report());
    let mut mismatches = Vec::new();
    for (i, case) in cases.iter().enumerate() {
        let a = &answers[&(i as u32)];
        assert_eq!(a["outcome"]["status"], "ok", "{checkpoint} item {i}: {a}\n{}", outcome.report());
        assert_eq!(a["provenance"]["backend"], backend_for(arch));
        // What the reference harness records: transformers' generate with the checkpoint's
        // generation_config (Qwen2-VL's repetition penalty 1.05 included) where the golden has it,
        // else the greedy run (the LLaVA checkpoints set no logits processor).
        let want = case["reference_generate"]["answer"]
            .as_str()
            .unwrap_or_else(|| case["decoded_until_eos_stripped"].as_str().unwrap());
        if a["outcome"]["answer"] != want {
            mismatches.push(format!(
                "{} / {}: got {}, transformers {:?}",
                case["image"], case["prompt_id"], a["outcome"]["answer"], want
            ));
        }
    }
    assert!(
        mismatches.is_empty(),
        "{checkpoint}: {} of {} answers differ:\n{}",
        mismatches.len(),
        cases.len(),
        mismatches.join("\n")
    );
    // Every item was judged too: a local run ends like any other.
    assert_eq!(dir.verdicts().len(), cases.len(), "{}", outcome.report());
}

#[test]
fn llava_hf_answers_through_the_host_equal_transformers_greedy_answers() {
    answers_equal_transformers("llava_hf", "llava_hf", None);
}

#[test]
fn llava_hf_in_the_old_on_disk_layout_answers_like_transformers() {
    answers_equal_transformers("llava_hf", "llava_hf_old_layout", None);
}

#[test]
fn llava_next_answers_through_the_host_equal_transformers_greedy_answers() {
    answers_equal_transformers("llava_next", "llava_next", None);
}

#[test]
fn llava_next_in_the_old_on_disk_layout_answers_like_transformers() {
    answers_equal_transformers("llava_next", "llava_next_old_layout", None);
}

#[test]
fn original_format_llava_answers_through_the_host_equal_the_llava_code_bases() {
    let clip = fixtures().join("checkpoints/llava_original_clip");
    answers_equal_transformers("llava", "llava_original", Some(json!({"vision_tower": clip})));
}

#[test]
fn qwen2vl_answers_through_the_host_equal_transformers_greedy_answers() {
    answers_equal_transformers("qwen2vl", "qwen2vl", None);
}

#[test]
fn qwen2vl_in_the_2024_on_disk_layout_answers_like_transformers() {
    answers_equal_transformers("qwen2vl", "qwen2vl_old_layout", None);
}

#[test]
fn mllama_answers_through_the_host_equal_transformers_greedy_answers() {
    answers_equal_transformers("mllama", "mllama", None);
}

#[test]
fn mllama_in_the_2024_on_disk_layout_answers_like_transformers() {
    answers_equal_transformers("mllama", "mllama_old_layout", None);
}

#[test]
fn a_missing_vision_tower_folder_is_named_before_anything_loads() {
    require_built();
    let tmp = tempdir();
    let ds = Dataset::write(&tmp.path().join("data"), simple_items(1, "Q"));
    let ck = fixtures().join("checkpoints/llava_original");
    let mut m = local_manifest(&ds, "llava", &ck, &tmp.path().join("out"), "noclip", 4);
    let absent = tmp.path().join("clip-vit-large-patch14-336");
    m["model"]["options"] = json!({"vision_tower": absent});
    let manifest = write_manifest(&tmp.path().join("noclip.toml"), &m);
    for command in ["validate", "run"] {
        host([OsString::from(command), manifest.clone().into()])
            .output()
            .failure()
            .stderr_has(&format!("options.vision_tower {}: no such file or folder", absent.display()));
    }
}

// ---------------------------------------------------------------------------------------------
// Example manifests

/// An example manifest with its dataset root pointed at a generated dataset, other paths kept.
fn example_with_dataset(example: &str, tmp: &Path) -> (PathBuf, String) {
    let text = std::fs::read_to_string(workspace().join("examples").join(example)).unwrap();
    let ds = Dataset::write(&tmp.join("data"), simple_items(2, "Q"));
    let text = text.replace("root = \"/path/to/vlsbench\"", &format!("root = {:?}", ds.root.display().to_string()));
    let path = tmp.join(example);
    std::fs::write(&path, &text).unwrap();
    (path, text)
}

#[test]
fn every_local_arch_has_an_example_manifest_whose_missing_paths_validate_names() {
    require_built();
    for (example, arch, placeholder) in [
        ("llava-hf.toml", "llava_hf", "/path/to/llava-1.5-7b-hf"),
        ("llava-next.toml", "llava_next", "/path/to/llama3-llava-next-8b-hf"),
        ("llava.toml", "llava", "/path/to/llava-v1.5-7b"),
        ("qwen2vl.toml", "qwen2vl", "/path/to/Qwen2-VL-7B-Instruct"),
        ("mllama.toml", "mllama", "/path/to/Llama-3.2-11B-Vision-Instruct"),
        ("onnx-qwen2vl.toml", "qwen2vl", "/path/to/Qwen2-VL-2B-Instruct-onnx"),
    ] {
        // As shipped: the dataset root is the first placeholder named.
        let shipped = workspace().join("examples").join(example);
        host([OsString::from("validate"), shipped.into()]).output().failure().stderr_has("/path/to/vlsbench");

        let tmp = tempdir();
        let (path, text) = example_with_dataset(example, tmp.path());
        assert!(text.contains(&format!("arch = \"{arch}\"")), "{example}");
        host([OsString::from("validate"), path.clone().into()])
            .output()
            .failure()
            .stderr_has(&format!("checkpoint {placeholder}: no such folder"))
            .stderr_has("[model]")
            .stderr_has(&path.display().to_string());
    }
}

#[test]
fn validate_accepts_the_llava_hf_example_once_its_paths_exist() {
    require_built();
    let tmp = tempdir();
    let (path, text) = example_with_dataset("llava-hf.toml", tmp.path());
    let ck = fixtures().join("checkpoints/llava_hf");
    let text = text.replace("\"/path/to/llava-1.5-7b-hf\"", &format!("{:?}", ck.display().to_string()));
    std::fs::write(&path, text).unwrap();
    // The example's judge model reads its key from OPENAI_API_KEY, which validate checks is set.
    host([OsString::from("validate"), path.into()])
        .env("OPENAI_API_KEY", "sk-test-not-a-real-key")
        .output()
        .success()
        .stdout_has("arch llava_hf → backend candle-llava");
}
