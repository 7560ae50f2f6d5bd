//! Parity with transformers: every golden case of both checkpoint layouts (`qwen2vl`, today's;
//! `qwen2vl_old_layout`, the 2024 hub upload with bf16 shards, run in f32), stage by stage:
//! rendered prompt, input ids, the image after `qwen_vl_utils`, `image_grid_thw`, pixel values,
//! M-RoPE position ids and `rope_deltas`, first-step logits, 24 greedy tokens, the decoded answer;
//! then the golden batch, batching against one request at a time, and bad inputs.

use std::path::Path;

use serde_json::Value;
use vlm_core::batch::GreedyBackend;
use vlm_core::greedy::GreedyModel;
use vlm_core::npy;
use vlm_core::testing::{self, Fixture, check_golden_rgb, check_pixel_values, fixtures, golden, ids, temp_dir};
use vlsbench_plugin_api::{
    Backend, BackendConfig, ChatMessage, ContentPart, GenerateRequest, GenerationSettings, MessageLayout, Role,
};

use crate::backend::{ARCH, CandleQwen2Vl};
use crate::processor::ProcessedImage;

const CHECKPOINTS: [&str; 2] = ["qwen2vl", "qwen2vl_old_layout"];

fn fixture() -> Fixture<CandleQwen2Vl> {
    Fixture::new(ARCH)
}

fn backend_config(checkpoint: &str) -> BackendConfig {
    fixture().config(checkpoint)
}

fn load(checkpoint: &str) -> CandleQwen2Vl {
    fixture().load(checkpoint)
}

/// The backend with no repetition penalty: pure argmax, as the goldens' greedy runs are.
fn load_argmax(checkpoint: &str) -> CandleQwen2Vl {
    let mut cfg = backend_config(checkpoint);
    cfg.options = serde_json::json!({"repetition_penalty": 1.0});
    CandleQwen2Vl::create(cfg).unwrap()
}

/// One user message [image, text], as the backend's declared layout has the host send it.
fn request(id: &str, prompt: &str, image: &Path, max_new: u32) -> GenerateRequest {
    testing::request(id, prompt, image, max_new, &MessageLayout::image_then_text())
}

fn case_request(case: &Value, max_new: u32) -> GenerateRequest {
    fixture().case_request(case, max_new)
}

#[test]
fn prompts_ids_images_grids_pixels_and_positions_match_goldens() {
    let header = "grid         max|dpixel|*std (1/255 allowed)";
    fixture().golden_cases_are_prepared_as_the_processor_does(
        &CHECKPOINTS,
        header,
        |b, checkpoint, case, what, ids_, img| {
            let grid: Vec<usize> =
                case["image_grid_thw"][0].as_array().unwrap().iter().map(|x| x.as_u64().unwrap() as usize).collect();
            assert_eq!(img.grid.to_vec(), grid, "{what}: image_grid_thw");
            assert_eq!(img.num_tokens(2) as u64, case["num_image_tokens"].as_u64().unwrap(), "{what}");
            // The image after qwen_vl_utils, byte for byte.
            let npy_name = case["qwen_image"]["npy"].as_str().unwrap();
            let size = (img.resized.height, img.resized.width);
            check_golden_rgb(what, checkpoint, npy_name, size, &img.resized.data, "the resized image differs");
            // Pixel values: within 1/255 before normalisation (value * std).
            let pv = &case["pixel_values"];
            let shape: Vec<usize> =
                pv["shape"].as_array().unwrap().iter().map(|x| x.as_u64().unwrap() as usize).collect();
            assert_eq!(shape, vec![img.grid.iter().product(), img.patches.len() / img.grid.iter().product::<usize>()]);
            let per_channel = img.patches.len() / shape[0] / 3;
            let channel = |i: usize| (i % (3 * per_channel)) / per_channel;
            let worst = check_pixel_values(what, checkpoint, pv, &img.patches, 1e-3, b.processor().image_std, channel);
            // M-RoPE position ids and rope_deltas.
            let (positions, delta) = b.model().rope_index(ids_, &[img.grid]).unwrap();
            for (row, want) in case["position_ids"].as_array().unwrap().iter().enumerate() {
                let got: Vec<u32> = positions.iter().map(|p| p[row]).collect();
                assert_eq!(got, ids(want), "{what}: position_ids row {row}");
            }
            assert_eq!(delta, case["rope_deltas"].as_i64().unwrap(), "{what}: rope_deltas");
            format!("{:<12} {worst}", format!("{:?}", img.grid))
        },
    );
}

#[test]
fn logits_and_greedy_tokens_match_goldens() {
    fixture().greedy_runs_match_goldens(&CHECKPOINTS);
}

#[test]
fn answers_are_decoded_cleaned_and_stripped_like_the_reference() {
    for checkpoint in CHECKPOINTS {
        let b = load_argmax(checkpoint);
        let g = golden(checkpoint);
        assert_eq!(b.eos(), ids(&g["eos_token_ids"]).as_slice());
        for case in g["cases"].as_array().unwrap() {
            let got = b.generate(vec![case_request(case, 24)]).pop().unwrap().unwrap();
            assert_eq!(
                got.text,
                case["decoded_until_eos_stripped"].as_str().unwrap(),
                "{checkpoint} {}",
                case["image"]
            );
            let stopped = !case["first_eos_index"].is_null();
            assert_eq!(got.finish_reason.as_deref(), Some(if stopped { "stop" } else { "length" }));
        }
        for v in g["decode_vectors"].as_array().unwrap() {
            let tokens = ids(&v["ids"]);
            assert_eq!(b.tokenizer().decode(&tokens).unwrap(), v["raw"].as_str().unwrap());
            assert_eq!(
                vlm_core::tokenizer::clean_up_tokenization(v["raw"].as_str().unwrap()),
                v["cleaned"].as_str().unwrap()
            );
            assert_eq!(b.decode(&tokens).unwrap(), v["cleaned_stripped"].as_str().unwrap());
        }
    }
}

#[test]
fn the_golden_left_padded_batch_matches_transformers() {
    fixture().golden_batches_match(&CHECKPOINTS, |_, checkpoint, row, pad, _, p| {
        assert_eq!(p.embeds.dim(1).unwrap(), p.ids.len(), "{checkpoint}: one embedding a token");
        for (r, want) in row["position_ids"].as_array().unwrap().iter().enumerate() {
            let got: Vec<u32> = p.positions.iter().map(|x| x[r]).collect();
            assert_eq!(got, ids(want)[pad..].to_vec(), "{checkpoint}: position_ids row {r}");
        }
    });
}

#[test]
fn a_batch_answers_like_one_request_at_a_time() {
    // Every golden case (different images, grids and prompt lengths), budgets 8, 16 and 24.
    Fixture::batch_answers_like_one_request_at_a_time(&load("qwen2vl"), fixture().golden_requests("qwen2vl"));
}

#[test]
fn a_bad_item_in_a_batch_fails_alone_with_a_typed_error_naming_it() {
    // An image too thin for Qwen2-VL's aspect-ratio limit.
    let needle = temp_dir("candle-qwen2vl").join("needle.png");
    image::RgbImage::new(402, 2).save(&needle).unwrap();
    let needle = (request("6", "What is this?", &needle, 4), vec!["aspect ratio", "needle.png"]);
    fixture().bad_items_fail_alone(&load("qwen2vl"), &fixtures().join("images/mult28.png"), 40_000, vec![needle]);
}

#[test]
fn bad_configurations_are_named_at_load() {
    let missing = [("model.safetensors", "no weights"), ("tokenizer.json", "tokenizer.json")];
    fixture().bad_configurations_are_named_at_load("qwen2vl", "llava_hf", "llava_hf", "qwen2_vl", &missing);
}

/// f16 and bf16 on the CPU (linear-layer weights kept half, math in f32) against the f32
/// goldens: the largest first-step |Δlogit| measured (both layouts, every case) and the
/// tolerance set from it, with room; the greedy tokens equal.
const HALF_TOLERANCES: [(&str, f32); 2] = [("f16", 2e-3), ("bf16", 2e-2)];

#[test]
fn half_precision_weights_keep_the_greedy_tokens_and_the_logits_close() {
    fixture().half_precision_runs_match_goldens(&CHECKPOINTS, &HALF_TOLERANCES, |b| b.model().dtype);
}

#[test]
fn the_backend_declares_image_then_text_for_qwen2vl() {
    fixture().declares_image_then_text("candle-qwen2vl");
}

#[test]
fn the_real_chat_template_renders_the_fixture_prompts() {
    let file = "Qwen__Qwen2-VL-7B-Instruct/variants/chat_template@db8ce50.json";
    fixture().real_chat_template_renders_the_fixture_prompts(file, Default::default(), "qwen2vl");
}

#[test]
fn images_in_one_call_never_attend_to_each_other() {
    let b = load("qwen2vl");
    let fx = fixtures();
    let cfg = b.processor();
    let a = crate::processor::preprocess(&fx.join("images/mult28.png"), cfg).unwrap();
    let c = crate::processor::preprocess(&fx.join("images/verywide.png"), cfg).unwrap();
    let together = b.model().image_features(&[&a, &c]).unwrap().unwrap();
    let alone_a = b.model().image_features(&[&a]).unwrap().unwrap();
    let alone_c = b.model().image_features(&[&c]).unwrap().unwrap();
    let apart = candle_core::Tensor::cat(&[&alone_a, &alone_c], 0).unwrap();
    let d: f32 = (together - apart).unwrap().abs().unwrap().max_all().unwrap().to_scalar().unwrap();
    assert!(d < 1e-5, "{d}");
    // A request with two images: one <|image_pad|> run per image, in order, and an answer.
    let req = GenerateRequest {
        id: "two".into(),
        messages: vec![ChatMessage::new(
            Role::User,
            vec![
                ContentPart::image(fx.join("images/mult28.png")),
                ContentPart::image(fx.join("images/verywide.png")),
                ContentPart::text("Compare them."),
            ],
        )],
        settings: GenerationSettings { max_new_tokens: Some(4), temperature: Some(0.0), top_p: Some(1.0) },
        response_format: None,
    };
    let (got_ids, images) = b.prepare(&req).unwrap();
    let n_image = got_ids.iter().filter(|&&t| t == b.model().config.image_token_id).count();
    assert_eq!(n_image, images[0].num_tokens(2) + images[1].num_tokens(2));
    assert!(b.generate_one(&req).is_ok());
    // And none: a text-only request (a judge's, say) counts positions like a plain Qwen2.
    let mut text_only = req.clone();
    text_only.messages = vec![
        ChatMessage::new(Role::System, vec![ContentPart::text("Be brief.")]),
        ChatMessage::new(Role::User, vec![ContentPart::text("Hello?")]),
    ];
    let (got_ids, images) = b.prepare(&text_only).unwrap();
    assert!(images.is_empty());
    let (positions, delta) = b.model().rope_index(&got_ids, &[]).unwrap();
    assert_eq!(delta, 0);
    assert!(positions.iter().enumerate().all(|(i, p)| *p == [i as u32; 3]));
    assert!(b.generate_one(&text_only).is_ok());
}

#[test]
fn generation_stops_at_the_first_eos_and_leaves_it_out_of_the_answer() {
    // Pure argmax, as the goldens' greedy runs are.
    fixture().generation_stops_at_the_first_eos("qwen2vl", serde_json::json!({"repetition_penalty": 1.0}));
}

/// What the reference harness records: transformers' `generate(do_sample=False, top_p=1.0,
/// temperature=0.0)` on top of the checkpoint's generation_config.json (EOS ids, repetition
/// penalty 1.05), for 24 new tokens; the backend with its defaults must give the same tokens and
/// the same cleaned, stripped answer, in both layouts.
#[test]
fn answers_with_the_checkpoints_defaults_equal_the_reference_harnesss_generate() {
    fixture().answers_equal_the_reference_harnesss_generate(&CHECKPOINTS, |b, _, case, _| {
        let reference = &case["reference_generate"];
        assert_eq!(reference["repetition_penalty"].as_f64().unwrap() as f32, b.repetition_penalty());
    });
}

#[test]
fn the_checkpoints_repetition_penalty_applies_to_the_prompt_and_the_answer() {
    // generation_config.json says 1.05, and the reference's generate(do_sample=False) keeps it.
    let b = load("qwen2vl");
    assert_eq!(b.repetition_penalty(), 1.05);
    let mut changed = 0;
    for case in golden("qwen2vl")["cases"].as_array().unwrap() {
        // The first token: the argmax of transformers' logits penalised over the prompt's ids.
        let input_ids = ids(&case["input_ids"]);
        let npy_name = case["first_step_logits"]["npy"].as_str().unwrap();
        let logits = npy::read_f32(&fixtures().join("golden/qwen2vl").join(npy_name)).unwrap().data;
        let mut penalised = logits.clone();
        let mut seen = std::collections::HashSet::new();
        for &t in &input_ids {
            if seen.insert(t) {
                let s = penalised[t as usize];
                penalised[t as usize] = if s < 0.0 { s * 1.05 } else { s / 1.05 };
            }
        }
        let argmax =
            |v: &[f32]| v.iter().enumerate().fold(0, |best, (i, &x)| if x > v[best] { i } else { best }) as u32;
        let (_, images) = b.prepare(&case_request(case, 1)).unwrap();
        let refs: Vec<&ProcessedImage> = images.iter().collect();
        let prompt = b.model().prompt(&input_ids, &refs).unwrap();
        let tokens = b.model().greedy_batch(std::slice::from_ref(&prompt), &[24], &[], 1.05).unwrap().remove(0);
        assert_eq!(tokens[0], argmax(&penalised), "{}", case["image"]);
        changed += usize::from(tokens != ids(&case["greedy_tokens"]));
        // The backend decodes with it.
        let answer = b.generate_one(&case_request(case, 24)).unwrap();
        assert_eq!(answer.text, b.decode(&tokens).unwrap());
    }
    println!("repetition penalty 1.05 changed {changed} of 18 greedy runs");
    assert!(changed > 0, "the fixtures should show the penalty at work");
    let mut cfg = backend_config("qwen2vl");
    cfg.options = serde_json::json!({"repetition_penalty": "high"});
    let e = CandleQwen2Vl::create(cfg).err().unwrap();
    assert!(e.message.contains("[model.options]") && e.message.contains("`repetition_penalty`"), "{e}");
    let mut cfg = backend_config("qwen2vl");
    cfg.options = serde_json::json!({"vision_tower": "x"});
    assert!(CandleQwen2Vl::create(cfg).err().unwrap().message.contains("unknown field `vision_tower`"));
}
