//! Parity with transformers: every golden case of both checkpoint layouts (`mllama`, today's;
//! `mllama_old_layout`, the 2024 hub upload with bf16 shards, run in f32), stage by stage:
//! rendered prompt, input ids, the canvas before rescaling (byte for byte), tiles, aspect-ratio
//! id and mask, pixel values, the cross-attention mask, first-step logits, 24 greedy tokens, the
//! reference harness's `generate` answer; then the golden left-padded batch, batching against
//! one request at a time, and bad inputs.

use std::path::Path;

use serde_json::Value;
use vlm_core::npy;
use vlm_core::testing::{self, Parity, checkpoint_without, fixtures, golden, ids, png_claiming, temp_dir};
use vlsbench_plugin_api::{
    Backend, BackendConfig, ChatMessage, ContentPart, ErrorKind, GenerateRequest, GenerationSettings, MessageLayout,
    Role,
};

use crate::backend::CandleMllama;
use crate::processor::ProcessedImage;

const CHECKPOINTS: [&str; 2] = ["mllama", "mllama_old_layout"];

fn usizes(v: &Value) -> Vec<usize> {
    v.as_array().unwrap().iter().map(|x| x.as_u64().unwrap() as usize).collect()
}

fn backend_config(checkpoint: &str) -> BackendConfig {
    BackendConfig {
        arch: "mllama".into(),
        checkpoint: Some(format!("checkpoints/{checkpoint}")),
        device: None,
        dtype: None,
        options: Value::Null,
        base_dir: fixtures(),
    }
}

fn load(checkpoint: &str) -> CandleMllama {
    CandleMllama::create(backend_config(checkpoint)).unwrap()
}

/// One user message [image, text], as the backend's declared layout has the host send it.
fn request(id: &str, prompt: &str, image: &Path, max_new: u32) -> GenerateRequest {
    testing::request(id, prompt, image, max_new, &MessageLayout::image_then_text())
}

fn case_request(case: &Value, max_new: u32) -> GenerateRequest {
    request("0", case["prompt"].as_str().unwrap(), &fixtures().join(case["image"].as_str().unwrap()), max_new)
}

/// Tiles each token sees, from the processor's dense mask (tokens, images, max_tiles).
fn tiles_per_token(p: &crate::model::Prompt, max_tiles: usize) -> Vec<usize> {
    let per = (p.n_images * max_tiles).max(1);
    p.cross_mask.chunks(per).map(|c| c.iter().filter(|&&x| x == 1).count()).collect()
}

#[test]
fn prompts_ids_canvases_tiles_pixels_and_cross_masks_match_goldens() {
    for checkpoint in CHECKPOINTS {
        let b = load(checkpoint);
        let g = golden(checkpoint);
        let std = b.processor().image_std;
        let max_tiles = b.processor().max_image_tiles;
        let mut table =
            format!("{checkpoint}:\nimage          prompt     tiles  id  max|dpixel|*std (1/255 allowed)\n");
        for case in g["cases"].as_array().unwrap() {
            let image = case["image"].as_str().unwrap();
            let what = format!("{checkpoint} {image} {}", case["prompt_id"]);
            let req = case_request(case, 24);
            assert_eq!(b.rendered_prompt(&req.messages).unwrap(), case["rendered_prompt"].as_str().unwrap(), "{what}");
            let (got_ids, images) = b.prepare(&req).unwrap();
            assert_eq!(got_ids, ids(&case["input_ids"]), "{what}: input ids");
            let [img]: [ProcessedImage; 1] = images.try_into().unwrap();
            // The canvas: resized size, tile grid, and the padded uint8 image byte for byte.
            let canvas = &case["canvas"];
            assert_eq!(usizes(&canvas["resized_hw"]), vec![img.resized.height, img.resized.width], "{what}: resized");
            assert_eq!(usizes(&canvas["tiles_hw"]), vec![img.aspect_ratio.0, img.aspect_ratio.1], "{what}: tiles");
            let want = npy::read_u8(&fixtures().join("golden").join(checkpoint).join(canvas["npy"].as_str().unwrap()))
                .unwrap();
            assert_eq!(want.shape, vec![img.padded.height, img.padded.width, 3], "{what}: canvas size");
            assert!(want.data == img.padded.data, "{what}: the canvas differs (Pillow bilinear)");
            assert_eq!(case["num_tiles"].as_u64().unwrap() as usize, img.num_tiles(), "{what}");
            assert_eq!(case["aspect_ratio_ids"][0][0].as_u64().unwrap() as usize, img.aspect_ratio_id, "{what}");
            let mask: Vec<u8> = usizes(&case["aspect_ratio_mask"][0][0]).iter().map(|&x| x as u8).collect();
            assert_eq!(mask, img.aspect_ratio_mask, "{what}: aspect_ratio_mask");
            // Pixel values: within 1/255 before normalisation (value * std).
            let pv = &case["pixel_values"];
            let sum: f64 = img.pixel_values.iter().map(|&x| x as f64).sum();
            assert!(
                (sum - pv["stats"]["sum"].as_f64().unwrap()).abs() < 1e-2,
                "{what}: pixel sum {sum} vs {}",
                pv["stats"]["sum"]
            );
            let mut worst = None;
            if let Some(npy_name) = pv["npy"].as_str() {
                let want = npy::read_f32(&fixtures().join("golden").join(checkpoint).join(npy_name)).unwrap();
                let plane = img.tile_size * img.tile_size;
                let d = img
                    .pixel_values
                    .iter()
                    .zip(&want.data)
                    .enumerate()
                    .map(|(i, (a, b))| (a - b).abs() * std[(i / plane) % 3] as f32)
                    .fold(0f32, f32::max);
                assert!(d <= 1.0 / 255.0, "{what}: pixel values differ by {d} before normalisation");
                worst = Some(d);
            }
            // The processor's cross-attention mask.
            let refs: Vec<&ProcessedImage> = vec![&img];
            let p = b.model().prompt(&got_ids, &refs).unwrap();
            let cam = &case["cross_attention_mask"];
            assert_eq!(tiles_per_token(&p, max_tiles), usizes(&cam["tiles_per_token"]), "{what}: cross-attention mask");
            table += &format!(
                "{:<14} {:<10} {:<6} {:<3} {}\n",
                image.trim_start_matches("images/"),
                case["prompt_id"].as_str().unwrap(),
                format!("{}x{}", img.aspect_ratio.0, img.aspect_ratio.1),
                img.aspect_ratio_id,
                worst.map_or("stats only (no .npy)".to_owned(), |d| format!("{d:.3e}"))
            );
        }
        println!("{table}");
    }
}

#[test]
fn logits_and_greedy_tokens_match_goldens() {
    for checkpoint in CHECKPOINTS {
        let b = load(checkpoint);
        let mut parity = Parity::new(checkpoint);
        for case in golden(checkpoint)["cases"].as_array().unwrap() {
            let (_, images) = b.prepare(&case_request(case, 24)).unwrap();
            let refs: Vec<&ProcessedImage> = images.iter().collect();
            // From the golden ids, 24 pure-argmax steps with no EOS stop.
            let (logits, tokens) = b.model().greedy(&ids(&case["input_ids"]), &refs, 24, &[]).unwrap();
            let label = (case["image"].as_str().unwrap(), case["prompt_id"].as_str().unwrap());
            let npy_name = case["first_step_logits"]["npy"].as_str().unwrap();
            parity.record(label, npy_name, &logits.to_vec1::<f32>().unwrap(), &tokens, &ids(&case["greedy_tokens"]));
        }
        parity.check();
    }
}

/// What the reference harness records: transformers' `generate(do_sample=False, top_p=1.0,
/// temperature=0.0)` on top of the checkpoint's generation_config.json (EOS ids), for 24 new
/// tokens; the backend with its defaults must give the same tokens and the same stripped answer,
/// in both layouts.
#[test]
fn answers_with_the_checkpoints_defaults_equal_the_reference_harnesss_generate() {
    let mut table = String::from("checkpoint          image          prompt     tokens equal  answer equal\n");
    let mut all = true;
    for checkpoint in CHECKPOINTS {
        let b = load(checkpoint);
        let g = golden(checkpoint);
        assert_eq!(b.eos(), ids(&g["eos_token_ids"]).as_slice());
        assert_eq!(b.repetition_penalty(), 1.0);
        for case in g["cases"].as_array().unwrap() {
            let reference = &case["reference_generate"];
            assert_eq!(ids(&reference["eos_token_id"]), b.eos());
            let (input_ids, images) = b.prepare(&case_request(case, 24)).unwrap();
            let refs: Vec<&ProcessedImage> = images.iter().collect();
            let prompt = b.model().prompt(&input_ids, &refs).unwrap();
            let tokens = b.model().greedy_batch(&[prompt], &[24], b.eos(), b.repetition_penalty()).unwrap().remove(0);
            let got = b.generate_one(&case_request(case, 24)).unwrap();
            let tokens_equal = tokens == ids(&reference["tokens"]);
            let answer_equal = got.text == reference["answer"].as_str().unwrap()
                && got.text == case["decoded_until_eos_stripped"].as_str().unwrap();
            let stopped = !case["first_eos_index"].is_null();
            assert_eq!(got.finish_reason.as_deref(), Some(if stopped { "stop" } else { "length" }));
            all &= tokens_equal && answer_equal;
            let image = case["image"].as_str().unwrap().trim_start_matches("images/");
            table += &format!(
                "{checkpoint:<19} {image:<14} {:<10} {tokens_equal:<13} {answer_equal}\n",
                case["prompt_id"].as_str().unwrap()
            );
        }
    }
    println!("{table}");
    assert!(all, "{table}");
}

#[test]
fn the_golden_left_padded_batch_matches_transformers() {
    for checkpoint in CHECKPOINTS {
        let b = load(checkpoint);
        let g = golden(checkpoint);
        let rows = g["batch"]["rows"].as_array().unwrap();
        let cases = g["cases"].as_array().unwrap();
        let max_tiles = b.processor().max_image_tiles;
        let mut prompts = Vec::new();
        for row in rows {
            let case = cases.iter().find(|c| c["image"] == row["image"] && c["prompt_id"] == row["prompt_id"]).unwrap();
            let (got_ids, images) = b.prepare(&case_request(case, 24)).unwrap();
            let pad = row["num_pad"].as_u64().unwrap() as usize;
            assert_eq!(got_ids, ids(&row["input_ids"])[pad..].to_vec(), "{checkpoint}: unpadded ids");
            assert_eq!(images[0].aspect_ratio_id as u64, row["aspect_ratio_ids"][0].as_u64().unwrap());
            let refs: Vec<&ProcessedImage> = images.iter().collect();
            let p = b.model().prompt(&got_ids, &refs).unwrap();
            let want = usizes(&row["cross_attention_mask"]["tiles_per_token"]);
            assert!(want[..pad].iter().all(|&t| t == 0));
            assert_eq!(tiles_per_token(&p, max_tiles), want[pad..].to_vec(), "{checkpoint}: cross mask");
            prompts.push(p);
        }
        let longest = prompts.iter().map(|p| p.ids.len()).max().unwrap();
        for (p, row) in prompts.iter().zip(rows) {
            assert_eq!((longest - p.ids.len()) as u64, row["num_pad"].as_u64().unwrap());
        }
        let (first, tokens) = b.model().greedy_prompts(&prompts, &vec![24; rows.len()], &[], 1.0).unwrap();
        let first: Vec<Vec<f32>> = first.to_vec2().unwrap();
        let mut parity = Parity::new(checkpoint);
        for ((row, logits), toks) in rows.iter().zip(&first).zip(&tokens) {
            let label = (row["image"].as_str().unwrap(), "batch");
            let npy_name = row["first_step_logits"]["npy"].as_str().unwrap();
            parity.record(label, npy_name, logits, toks, &ids(&row["greedy_tokens"]));
        }
        parity.check();
    }
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
    let b = load("mllama");
    let g = golden("mllama");
    // Every golden case (different tile grids and prompt lengths), budgets 8, 16 and 24, mixed
    // with a text-only request and a two-image one (decoded in their own groups).
    let mut reqs: Vec<GenerateRequest> = g["cases"]
        .as_array()
        .unwrap()
        .iter()
        .enumerate()
        .map(|(i, c)| {
            let mut r = case_request(c, 8 + (i as u32 % 3) * 8);
            r.id = i.to_string();
            r
        })
        .collect();
    reqs.insert(3, text_only("text"));
    reqs.insert(7, two_images("two"));
    let batched = b.generate(reqs.clone());
    assert_eq!(batched.len(), reqs.len());
    for (req, got) in reqs.iter().zip(batched) {
        assert_eq!(got.unwrap(), b.generate_one(req).unwrap(), "item {} batched vs alone", req.id);
    }
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
    let fx = fixtures();
    let dir = temp_dir("candle-mllama");
    let corrupt = dir.join("corrupt.png");
    std::fs::write(&corrupt, b"\x89PNG not really").unwrap();
    let huge = dir.join("huge.png");
    std::fs::write(&huge, png_claiming(60_000, 60_000)).unwrap();
    let b = load("mllama");
    let good = request("1", "What is this?", &fx.join("images/wide2.png"), 4);
    let out = b.generate(vec![
        good.clone(),
        request("2", "What is this?", &corrupt, 4),
        request("3", "What is this?", &dir.join("absent.png"), 4),
        request("4", "What is this?", &huge, 4),
        request("5", &"word ".repeat(70_000), &fx.join("images/wide2.png"), 4),
        request("6", "A second <|image|> in the text", &fx.join("images/wide2.png"), 4),
    ]);
    assert_eq!(out[0].as_ref().unwrap(), &b.generate_one(&good).unwrap());
    let expected = [(1, "corrupt.png"), (2, "absent.png"), (3, "60000x60000"), (4, "context"), (5, "<|image|>")];
    assert!(out[4].as_ref().unwrap_err().message.contains("wide2.png"));
    assert!(out[3].as_ref().unwrap_err().message.contains("huge.png"));
    for (k, what) in expected {
        let e = out[k].as_ref().unwrap_err();
        assert_eq!(e.kind, ErrorKind::BadRequest, "{e}");
        assert!(e.message.contains(&format!("item {}", k + 1)) && e.message.contains(what), "{e}");
    }
}

#[test]
fn bad_configurations_are_named_at_load() {
    let fx = fixtures();
    let mut cfg = backend_config("mllama");
    cfg.arch = "qwen2vl".into();
    assert_eq!(CandleMllama::create(cfg).err().unwrap().kind, ErrorKind::Unsupported);
    let mut cfg = backend_config("mllama");
    cfg.dtype = Some("f64".into());
    let e = CandleMllama::create(cfg).err().unwrap();
    assert!(e.message.contains("f64") && e.message.contains("bf16"), "{e}");
    let mut cfg = backend_config("mllama");
    cfg.checkpoint = Some("checkpoints/qwen2vl".into());
    let e = CandleMllama::create(cfg).err().unwrap();
    assert_eq!(e.kind, ErrorKind::BadConfig);
    assert!(e.message.contains("config.json") && e.message.contains("mllama"), "{e}");
    let mut cfg = backend_config("mllama");
    cfg.options = serde_json::json!({"repetition_penalty": 1.1});
    assert!(CandleMllama::create(cfg).err().unwrap().message.contains("unknown field `repetition_penalty`"));
    // A checkpoint missing a piece names it.
    for (missing, named) in [
        ("model.safetensors", "no weights"),
        ("tokenizer.json", "tokenizer.json"),
        ("processor_config.json", "image processor"),
    ] {
        let dir = temp_dir("candle-mllama").join(format!("no-{missing}"));
        checkpoint_without(&fx.join("checkpoints/mllama"), &dir, missing);
        let mut cfg = backend_config("mllama");
        cfg.checkpoint = Some(dir.display().to_string());
        let e = CandleMllama::create(cfg).err().unwrap();
        assert_eq!(e.kind, ErrorKind::BadConfig, "{e}");
        assert!(e.message.contains(named), "{missing}: {e}");
    }
}

/// f16 and bf16 on the CPU (linear-layer weights kept half, math in f32) against the f32
/// goldens: the tolerance set from the largest first-step |Δlogit| measured (both layouts, every
/// case), with room; the greedy tokens equal.
const HALF_TOLERANCES: [(&str, f32); 2] = [("f16", 3e-3), ("bf16", 3e-2)];

#[test]
fn half_precision_weights_keep_the_greedy_tokens_and_the_logits_close() {
    for (dtype, tolerance) in HALF_TOLERANCES {
        for checkpoint in CHECKPOINTS {
            let mut cfg = backend_config(checkpoint);
            cfg.dtype = Some(dtype.into());
            let b = CandleMllama::create(cfg).unwrap();
            assert_eq!(b.model().dtype, vlm_core::request::parse_dtype(Some(dtype)).unwrap());
            let mut parity = Parity::with_tolerance(checkpoint, dtype, tolerance);
            for case in golden(checkpoint)["cases"].as_array().unwrap() {
                let (_, images) = b.prepare(&case_request(case, 24)).unwrap();
                let refs: Vec<&ProcessedImage> = images.iter().collect();
                let (logits, tokens) = b.model().greedy(&ids(&case["input_ids"]), &refs, 24, &[]).unwrap();
                parity.record_case(case, &logits.to_vec1::<f32>().unwrap(), &tokens);
            }
            parity.check();
        }
    }
}

#[test]
fn the_backend_declares_image_then_text_for_mllama() {
    let info = CandleMllama::describe();
    assert_eq!(info.name, "candle-mllama");
    assert_eq!(info.archs, vec!["mllama".to_owned()]);
    assert_eq!(info.max_batch, 8);
    assert!(info.checkpoint_is_path);
    assert_eq!(info.message_layout("mllama"), vlsbench_plugin_api::MessageLayout::image_then_text());
}

#[test]
fn the_real_chat_template_renders_the_fixture_prompts() {
    let p = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../../shared/checkpoints/meta-llama__Llama-3.2-11B-Vision-Instruct/variants/chat_template_third_party_copy.json");
    if !p.is_file() {
        println!("SKIPPED: {} absent", p.display());
        return;
    }
    let v: Value = serde_json::from_str(&std::fs::read_to_string(&p).unwrap()).unwrap();
    let mut specials = serde_json::Map::new();
    specials.insert("bos_token".into(), Value::String("<|begin_of_text|>".into()));
    let t = vlm_core::template::ChatTemplate::new(v["chat_template"].as_str().unwrap(), specials).unwrap();
    for case in golden("mllama")["cases"].as_array().unwrap() {
        let req = case_request(case, 1);
        assert_eq!(t.render(&req.messages).unwrap(), case["rendered_prompt"].as_str().unwrap());
    }
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
    let mut b = load("mllama");
    let g = golden("mllama");
    let cases = g["cases"].as_array().unwrap();
    let tokens = ids(&cases[0]["greedy_tokens"]);
    let stop = tokens[4];
    let at = tokens.iter().position(|&t| t == stop).unwrap();
    b.set_eos(vec![stop]);
    let got = b.generate_one(&case_request(&cases[0], 24)).unwrap();
    assert_eq!(got.finish_reason.as_deref(), Some("stop"));
    assert_eq!(got.tokens, Some(at as u32 + 1));
    assert_eq!(got.text, vlm_core::tokenizer::python_strip(&b.decode(&tokens[..at]).unwrap()));
    let reqs: Vec<GenerateRequest> = cases.iter().step_by(4).map(|c| case_request(c, 24)).collect();
    for (req, got) in reqs.iter().zip(b.generate(reqs.clone())) {
        assert_eq!(got.unwrap(), b.generate_one(req).unwrap());
    }
}
