//! Parity with transformers: every golden case of both checkpoint layouts (`mllama`, today's;
//! `mllama_old_layout`, the 2024 hub upload with bf16 shards, run in f32), stage by stage:
//! rendered prompt, input ids, the canvas before rescaling (byte for byte), tiles, aspect-ratio
//! id and mask, pixel values, the cross-attention mask, first-step logits, 24 greedy tokens, the
//! reference harness's `generate` answer; then the golden left-padded batch, batching against
//! one request at a time, and bad inputs.

use std::path::Path;

use serde_json::Value;
use vlm_core::batch::GreedyBackend;
use vlm_core::greedy::GreedyModel;
use vlm_core::testing::{self, Fixture, check_golden_rgb, check_pixel_values, fixtures, golden, ids};
use vlsbench_plugin_api::{
    Backend, BackendConfig, ChatMessage, ContentPart, GenerateRequest, GenerationSettings, MessageLayout, Role,
};

use crate::backend::{ARCH, CandleMllama};
use crate::processor::ProcessedImage;

const CHECKPOINTS: [&str; 2] = ["mllama", "mllama_old_layout"];

fn usizes(v: &Value) -> Vec<usize> {
    v.as_array().unwrap().iter().map(|x| x.as_u64().unwrap() as usize).collect()
}

fn fixture() -> Fixture<CandleMllama> {
    Fixture::new(ARCH)
}

fn backend_config(checkpoint: &str) -> BackendConfig {
    fixture().config(checkpoint)
}

fn load(checkpoint: &str) -> CandleMllama {
    fixture().load(checkpoint)
}

/// One user message [image, text], as the backend's declared layout has the host send it.
fn request(id: &str, prompt: &str, image: &Path, max_new: u32) -> GenerateRequest {
    testing::request(id, prompt, image, max_new, &MessageLayout::image_then_text())
}

/// Tiles each token sees, from the processor's dense mask (tokens, images, max_tiles).
fn tiles_per_token(p: &crate::model::Prompt, max_tiles: usize) -> Vec<usize> {
    let per = (p.n_images * max_tiles).max(1);
    p.cross_mask.chunks(per).map(|c| c.iter().filter(|&&x| x == 1).count()).collect()
}

#[test]
fn prompts_ids_canvases_tiles_pixels_and_cross_masks_match_goldens() {
    let header = "tiles  id  max|dpixel|*std (1/255 allowed)";
    fixture().golden_cases_are_prepared_as_the_processor_does(
        &CHECKPOINTS,
        header,
        |b, checkpoint, case, what, ids, img| {
            // The canvas: resized size, tile grid, and the padded uint8 image byte for byte.
            let canvas = &case["canvas"];
            assert_eq!(usizes(&canvas["resized_hw"]), vec![img.resized.height, img.resized.width], "{what}: resized");
            assert_eq!(usizes(&canvas["tiles_hw"]), vec![img.aspect_ratio.0, img.aspect_ratio.1], "{what}: tiles");
            let size = (img.padded.height, img.padded.width);
            let differs = "the canvas differs (Pillow bilinear)";
            check_golden_rgb(what, checkpoint, canvas["npy"].as_str().unwrap(), size, &img.padded.data, differs);
            assert_eq!(case["num_tiles"].as_u64().unwrap() as usize, img.num_tiles(), "{what}");
            assert_eq!(case["aspect_ratio_ids"][0][0].as_u64().unwrap() as usize, img.aspect_ratio_id, "{what}");
            let mask: Vec<u8> = usizes(&case["aspect_ratio_mask"][0][0]).iter().map(|&x| x as u8).collect();
            assert_eq!(mask, img.aspect_ratio_mask, "{what}: aspect_ratio_mask");
            // Pixel values: within 1/255 before normalisation (value * std).
            let plane = img.tile_size * img.tile_size;
            let std = b.processor().image_std;
            let worst =
                check_pixel_values(what, checkpoint, &case["pixel_values"], &img.pixel_values, 1e-2, std, |i| {
                    (i / plane) % 3
                });
            // The processor's cross-attention mask.
            let p = b.model().prompt(ids, &[&img]).unwrap();
            let cam = &case["cross_attention_mask"];
            let max_tiles = b.processor().max_image_tiles;
            assert_eq!(tiles_per_token(&p, max_tiles), usizes(&cam["tiles_per_token"]), "{what}: cross-attention mask");
            let tiles = format!("{}x{}", img.aspect_ratio.0, img.aspect_ratio.1);
            format!("{tiles:<6} {:<3} {worst}", img.aspect_ratio_id)
        },
    );
}

#[test]
fn logits_and_greedy_tokens_match_goldens() {
    fixture().greedy_runs_match_goldens(&CHECKPOINTS);
}

/// What the reference harness records: transformers' `generate(do_sample=False, top_p=1.0,
/// temperature=0.0)` on top of the checkpoint's generation_config.json (EOS ids), for 24 new
/// tokens; the backend with its defaults must give the same tokens and the same stripped answer,
/// in both layouts.
#[test]
fn answers_with_the_checkpoints_defaults_equal_the_reference_harnesss_generate() {
    fixture().answers_equal_the_reference_harnesss_generate(&CHECKPOINTS, |b, g, case, got| {
        assert_eq!(b.eos(), ids(&g["eos_token_ids"]).as_slice());
        assert_eq!(b.repetition_penalty(), 1.0);
        assert_eq!(ids(&case["reference_generate"]["eos_token_id"]), b.eos());
        assert_eq!(got.text, case["decoded_until_eos_stripped"].as_str().unwrap(), "{}", case["image"]);
        let stopped = !case["first_eos_index"].is_null();
        assert_eq!(got.finish_reason.as_deref(), Some(if stopped { "stop" } else { "length" }));
    });
}

#[test]
fn the_golden_left_padded_batch_matches_transformers() {
    fixture().golden_batches_match(&CHECKPOINTS, |b, checkpoint, row, pad, images, p| {
        assert_eq!(images[0].aspect_ratio_id as u64, row["aspect_ratio_ids"][0].as_u64().unwrap());
        let want = usizes(&row["cross_attention_mask"]["tiles_per_token"]);
        assert!(want[..pad].iter().all(|&t| t == 0));
        let max_tiles = b.processor().max_image_tiles;
        assert_eq!(tiles_per_token(p, max_tiles), want[pad..].to_vec(), "{checkpoint}: cross mask");
    });
}

fn text_only(id: &str) -> GenerateRequest {
    GenerateRequest {
        id: id.into(),
        messages: vec![
            ChatMessage::new(Role::System, vec![ContentPart::text("Be brief.")]),
            ChatMessage::new(Role::User, vec![ContentPart::text("Hello?")]),
        ],
        settings: GenerationSettings { max_new_tokens: Some(6), temperature: Some(0.0), top_p: Some(1.0) },
        response_format: None,
    }
}

fn two_images(id: &str) -> GenerateRequest {
    let fx = fixtures();
    GenerateRequest {
        id: id.into(),
        messages: vec![ChatMessage::new(
            Role::User,
            vec![
                ContentPart::image(fx.join("images/wide2.png")),
                ContentPart::image(fx.join("images/tall.png")),
                ContentPart::text("Compare them."),
            ],
        )],
        settings: GenerationSettings { max_new_tokens: Some(5), temperature: Some(0.0), top_p: Some(1.0) },
        response_format: None,
    }
}

#[test]
fn a_batch_answers_like_one_request_at_a_time() {
    // Every golden case (different tile grids and prompt lengths), budgets 8, 16 and 24, mixed
    // with a text-only request and a two-image one (decoded in their own groups).
    let mut reqs = fixture().golden_requests("mllama");
    reqs.insert(3, text_only("text"));
    reqs.insert(7, two_images("two"));
    Fixture::batch_answers_like_one_request_at_a_time(&load("mllama"), reqs);
}

#[test]
fn text_only_and_two_image_requests_are_prepared_as_the_processor_does() {
    let b = load("mllama");
    let image_id = b.model().config.image_token_id;
    // No image: the template's system block, no <|image|>, the cross-attention layers skipped.
    let (got_ids, images) = b.prepare(&text_only("t")).unwrap();
    assert!(images.is_empty() && !got_ids.contains(&image_id));
    assert!(b.generate_one(&text_only("t")).is_ok());
    // Two images: two <|image|> tokens; the first image is seen from its token to the second's,
    // the second from there on.
    let (got_ids, images) = b.prepare(&two_images("2")).unwrap();
    let at: Vec<usize> = got_ids.iter().enumerate().filter(|(_, t)| **t == image_id).map(|(i, _)| i).collect();
    assert_eq!(at.len(), 2);
    let refs: Vec<&ProcessedImage> = images.iter().collect();
    let p = b.model().prompt(&got_ids, &refs).unwrap();
    let max_tiles = b.processor().max_image_tiles;
    let per = 2 * max_tiles;
    let row = |t: usize| &p.cross_mask[t * per..(t + 1) * per];
    assert!(row(at[0] - 1).iter().all(|&x| x == 0));
    // Consecutive image tokens: both images are seen from the first token to the end.
    if at[1] == at[0] + 1 {
        assert_eq!(row(at[0])[..2], [1, 1]);
        assert_eq!(row(got_ids.len() - 1)[max_tiles..max_tiles + 3], [1, 1, 1]);
    }
    assert!(b.generate_one(&two_images("2")).is_ok());
}

#[test]
fn a_bad_item_in_a_batch_fails_alone_with_a_typed_error_naming_it() {
    let wide2 = fixtures().join("images/wide2.png");
    let second_image = request("6", "A second <|image|> in the text", &wide2, 4);
    fixture().bad_items_fail_alone(&load("mllama"), &wide2, 70_000, vec![(second_image, vec!["<|image|>"])]);
}

#[test]
fn bad_configurations_are_named_at_load() {
    let missing = [
        ("model.safetensors", "no weights"),
        ("tokenizer.json", "tokenizer.json"),
        ("processor_config.json", "image processor"),
    ];
    fixture().bad_configurations_are_named_at_load("mllama", "qwen2vl", "qwen2vl", "mllama", &missing);
    let mut cfg = backend_config("mllama");
    cfg.options = serde_json::json!({"repetition_penalty": 1.1});
    assert!(CandleMllama::create(cfg).err().unwrap().message.contains("unknown field `repetition_penalty`"));
}

/// f16 and bf16 on the CPU (linear-layer weights kept half, math in f32) against the f32
/// goldens: the tolerance set from the largest first-step |Δlogit| measured (both layouts, every
/// case), with room; the greedy tokens equal.
const HALF_TOLERANCES: [(&str, f32); 2] = [("f16", 3e-3), ("bf16", 3e-2)];

#[test]
fn half_precision_weights_keep_the_greedy_tokens_and_the_logits_close() {
    fixture().half_precision_runs_match_goldens(&CHECKPOINTS, &HALF_TOLERANCES, |b| b.model().dtype);
}

#[test]
fn the_backend_declares_image_then_text_for_mllama() {
    fixture().declares_image_then_text("candle-mllama");
}

#[test]
fn the_real_chat_template_renders_the_fixture_prompts() {
    let file = "meta-llama__Llama-3.2-11B-Vision-Instruct/variants/chat_template_third_party_copy.json";
    let mut specials = serde_json::Map::new();
    specials.insert("bos_token".into(), Value::String("<|begin_of_text|>".into()));
    fixture().real_chat_template_renders_the_fixture_prompts(file, specials, "mllama");
}

#[test]
fn the_golden_rope_frequencies_are_ours() {
    let g = golden("mllama");
    let b = load("mllama");
    let c = &b.model().config.text;
    let ours = c.rope.inv_freq(c.head_dim);
    let want: Vec<f32> = g["rope_inv_freq"].as_array().unwrap().iter().map(|x| x.as_f64().unwrap() as f32).collect();
    assert_eq!(ours, want);
}

#[test]
fn generation_stops_at_the_first_eos_and_leaves_it_out_of_the_answer() {
    fixture().generation_stops_at_the_first_eos("mllama", Value::Null);
}
