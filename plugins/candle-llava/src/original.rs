//! The original LLaVA format (liuhaotian/llava-v1.5-7b, arch `llava`), read the way the LLaVA code
//! base (haotian-liu/LLaVA: `model/builder.py`, `model/llava_arch.py`, `mm_utils.py`) reads it:
//!
//! - `config.json` is a `LlavaLlamaForCausalLM` config: the Llama fields at the top level plus
//!   `mm_vision_tower` (a CLIP checkpoint, given to us as a folder), `mm_vision_select_layer`,
//!   `mm_vision_select_feature` (`patch` drops the class token), `mm_projector_type`
//!   (`mlp2x_gelu`: Linear, GELU, Linear) and `image_aspect_ratio` (`pad`).
//! - Weights are PyTorch pickle shards (`pytorch_model-*.bin` + `pytorch_model.bin.index.json`) or
//!   safetensors; the projector is `model.mm_projector.{0,2}`, the text model `model.*` and
//!   `lm_head`. The vision tower comes from the CLIP folder (`vision_model.*`).
//! - Images are opened with `Image.open(path).convert("RGB")` (alpha dropped, not composited),
//!   padded to a square filled with the processor's mean colour (`expand2square`), then run
//!   through the CLIP folder's `CLIPImageProcessor`.

use std::path::{Path, PathBuf};

use serde_json::Value;
use vlm_core::config_json::{field, invalid};
use vlm_core::image::{ImageError, Rgb8};

use crate::config::{self, ConfigError, ImageProcessorConfig, LlavaConfig, SelectStrategy, read_json};
use crate::image_proc;

/// The id the prompt carries where the image goes (the LLaVA code base's `IMAGE_TOKEN_INDEX`,
/// -200, seen as an unsigned id). It is never embedded: image features replace it.
pub const IMAGE_MARKER_ID: u32 = (-200i32) as u32;

/// Whether a `config.json` is an original-format LLaVA config rather than transformers' own.
pub fn is_original_config(v: &Value) -> bool {
    let arch_named = v
        .get("architectures")
        .and_then(Value::as_array)
        .is_some_and(|a| a.iter().any(|x| x.as_str().is_some_and(|s| s.starts_with("LlavaLlama"))));
    arch_named || (v.get("mm_vision_tower").is_some() && v.get("text_config").is_none())
}

/// Everything the original format says about a checkpoint.
#[derive(Debug, Clone)]
pub struct OriginalCheckpoint {
    pub dir: PathBuf,
    pub config: LlavaConfig,
    /// The CLIP folder the vision tower and image processor come from.
    pub vision_dir: PathBuf,
    pub image: ImageProcessorConfig,
    /// `image_aspect_ratio == "pad"`: pad to a square in the mean colour first.
    pub pad_to_square: bool,
    pub eos: Vec<u32>,
}

impl OriginalCheckpoint {
    /// Reads `dir/config.json` and the CLIP folder: `vision_tower` when given (the manifest's
    /// `options.vision_tower`), else `mm_vision_tower` when it names a folder (relative to `dir`).
    pub fn from_dir(dir: &Path, vision_tower: Option<&Path>) -> Result<Self, ConfigError> {
        let path = dir.join("config.json");
        let v = read_json(&path)?;
        if !is_original_config(&v) {
            return Err(invalid(
                &path,
                "not an original-format LLaVA config (no LlavaLlamaForCausalLM / mm_vision_tower); \
                 an HF-format checkpoint is arch llava_hf",
            ));
        }
        let named = v.get("mm_vision_tower").and_then(Value::as_str).unwrap_or("");
        let vision_dir = match vision_tower {
            Some(p) => p.to_owned(),
            None => {
                let p = dir.join(named);
                if named.is_empty() || !p.join("config.json").is_file() {
                    return Err(invalid(
                        &path,
                        format!(
                            "mm_vision_tower {named:?} is not a folder here: download that CLIP checkpoint and set \
                             [model.options] vision_tower = \"<its folder>\""
                        ),
                    ));
                }
                p
            }
        };
        let clip_path = vision_dir.join("config.json");
        let clip = read_json(&clip_path)?;
        // A CLIPModel folder nests the tower's config; a CLIPVisionModel folder is the tower's config.
        let vision_v = clip.get("vision_config").unwrap_or(&clip);
        let vision = config::vision_config(Some(vision_v), &clip_path)?;
        // The Llama fields sit at the top level, beside model_type "llava".
        let mut llama = v.clone();
        if let Some(o) = llama.as_object_mut() {
            o.remove("model_type");
        }
        let text = config::text_config(&llama, &path)?;
        let layer: i64 = field(&v, "mm_vision_select_layer", &path, "")?.unwrap_or(-2);
        let n_hidden = vision.num_hidden_layers as i64 + 1;
        if layer >= n_hidden || layer < -n_hidden {
            return Err(invalid(
                &path,
                format!("mm_vision_select_layer {layer} is out of range for {n_hidden} hidden states"),
            ));
        }
        let select_strategy = match field::<String>(&v, "mm_vision_select_feature", &path, "")?.as_deref() {
            None | Some("patch") => SelectStrategy::Default,
            Some("cls_patch") => SelectStrategy::Full,
            Some(other) => return Err(invalid(&path, format!("mm_vision_select_feature {other:?} is not supported"))),
        };
        match field::<String>(&v, "mm_projector_type", &path, "")?.as_deref() {
            None | Some("mlp2x_gelu") => {}
            Some(other) => {
                return Err(invalid(&path, format!("mm_projector_type {other:?} is not supported (mlp2x_gelu only)")));
            }
        }
        let mm_hidden: Option<usize> = field(&v, "mm_hidden_size", &path, "")?;
        if let Some(h) = mm_hidden
            && h != vision.hidden_size
        {
            return Err(invalid(
                &path,
                format!("mm_hidden_size {h} differs from the CLIP tower's hidden size {}", vision.hidden_size),
            ));
        }
        for flag in ["mm_use_im_start_end", "mm_use_im_patch_token"] {
            if field::<bool>(&v, flag, &path, "")?.unwrap_or(false) {
                return Err(invalid(&path, format!("{flag} = true is not supported (LLaVA-1.5 leaves it false)")));
            }
        }
        let aspect: Option<String> = field(&v, "image_aspect_ratio", &path, "")?;
        let pad_to_square = match aspect.as_deref() {
            Some("pad") => true,
            None | Some("square") | Some("resize") => false,
            Some(other) => return Err(invalid(&path, format!("image_aspect_ratio {other:?} is not supported (pad)"))),
        };
        let pre_path = vision_dir.join("preprocessor_config.json");
        let image = config::image_processor(&read_json(&pre_path)?, &pre_path)?;
        let eos = match config::generation_eos_ids(dir)? {
            Some(e) => e,
            None => text.eos_token_ids.clone(),
        };
        let config = LlavaConfig {
            image_seq_length: vision.patches_per_side() * vision.patches_per_side(),
            text,
            vision,
            image_token_id: IMAGE_MARKER_ID,
            projector_hidden_act: "gelu".into(),
            multimodal_projector_bias: true,
            vision_feature_layers: vec![layer],
            select_strategy,
            pad_token_id: field(&v, "pad_token_id", &path, "")?,
        };
        Ok(Self { dir: dir.to_owned(), config, vision_dir, image, pad_to_square, eos })
    }

    /// The background `expand2square` fills with: `tuple(int(x * 255) for x in image_mean)`.
    pub fn pad_colour(&self) -> [u8; 3] {
        self.image.image_mean.map(|m| (m * 255.0) as u8)
    }

    /// `process_images`: open as RGB (alpha dropped), pad to a square when the config says so,
    /// then the CLIP processor. Returns (pixel values (3, H, W), H, W).
    pub fn preprocess(&self, path: &Path) -> Result<(Vec<f32>, usize, usize), ImageError> {
        let mut img = image_proc::LOADER.open(path)?;
        if self.pad_to_square {
            img = expand2square(&img, self.pad_colour());
        }
        let img = image_proc::resize_and_crop(&img, &self.image);
        Ok((image_proc::to_pixel_values(&img, &self.image), img.height, img.width))
    }
}

/// `expand2square`: the image pasted onto a square of `background`, centred on the long axis
/// with the offset rounded down.
pub fn expand2square(img: &Rgb8, background: [u8; 3]) -> Rgb8 {
    let (w, h) = (img.width, img.height);
    if w == h {
        return img.clone();
    }
    let side = w.max(h);
    let (x0, y0) = if w > h { (0, (w - h) / 2) } else { ((h - w) / 2, 0) };
    let mut data = background.repeat(side * side);
    for y in 0..h {
        let src = &img.data[y * w * 3..(y + 1) * w * 3];
        let at = ((y + y0) * side + x0) * 3;
        data[at..at + w * 3].copy_from_slice(src);
    }
    Rgb8 { width: side, height: side, data }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fixture(name: &str) -> PathBuf {
        crate::test_util::fixtures().join("checkpoints").join(name)
    }

    #[test]
    fn the_tiny_original_checkpoint_reads_with_its_clip_folder() {
        let c = OriginalCheckpoint::from_dir(&fixture("llava_original"), None).unwrap();
        assert_eq!(c.config.text.hidden_size, 64);
        assert_eq!(c.config.text.vocab_size, 420);
        assert_eq!(c.config.vision.hidden_size, 32);
        assert_eq!(c.config.vision_feature_layers, vec![-2]);
        assert_eq!(c.config.select_strategy, SelectStrategy::Default);
        assert!(c.pad_to_square);
        assert_eq!(c.eos, vec![2]);
        assert_eq!(c.pad_colour(), [122, 116, 104]);
        assert_eq!(c.image.crop_size, (56, 56));
    }

    #[test]
    fn a_hub_name_for_the_vision_tower_asks_for_a_folder() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../../shared/checkpoints/liuhaotian__llava-v1.5-7b");
        if !dir.join("config.json").is_file() {
            println!("SKIPPED: {} absent (the real checkpoint's config files)", dir.display());
            return;
        }
        let e = OriginalCheckpoint::from_dir(&dir, None).unwrap_err().to_string();
        assert!(e.contains("openai/clip-vit-large-patch14-336") && e.contains("vision_tower"), "{e}");
        // With the tiny CLIP folder standing in for the real one, the real config parses to 7B shapes.
        let c = OriginalCheckpoint::from_dir(&dir, Some(&fixture("llava_original_clip")));
        let e = c.unwrap_err().to_string();
        assert!(e.contains("mm_hidden_size 1024"), "{e}");
    }

    #[test]
    fn an_hf_checkpoint_is_not_taken_for_an_original_one() {
        let e = OriginalCheckpoint::from_dir(&fixture("llava_hf"), None).unwrap_err().to_string();
        assert!(e.contains("llava_hf"), "{e}");
    }

    #[test]
    fn expand2square_centres_with_the_offset_rounded_down() {
        let img = Rgb8 { width: 1, height: 2, data: vec![1, 1, 1, 2, 2, 2] };
        let sq = expand2square(&img, [9, 9, 9]);
        assert_eq!((sq.width, sq.height), (2, 2));
        // (2 - 1) / 2 = 0: the column is pasted at x = 0.
        assert_eq!(sq.data, vec![1, 1, 1, 9, 9, 9, 2, 2, 2, 9, 9, 9]);
        let wide = Rgb8 { width: 3, height: 1, data: vec![5; 9] };
        let sq = expand2square(&wide, [0, 0, 0]);
        assert_eq!(&sq.data[9..18], &[5; 9]); // row (3 - 1) / 2 = 1
    }

    #[test]
    fn padded_pixel_values_equal_the_llava_code_bases() {
        let fx = crate::test_util::fixtures();
        let c = OriginalCheckpoint::from_dir(&fixture("llava_original"), None).unwrap();
        let g: Value =
            serde_json::from_str(&std::fs::read_to_string(fx.join("golden/llava_original/golden.json")).unwrap())
                .unwrap();
        let mut seen = std::collections::BTreeSet::new();
        for case in g["cases"].as_array().unwrap() {
            let image = case["image"].as_str().unwrap();
            if !seen.insert(image.to_owned()) {
                continue;
            }
            let bg: Vec<u8> = case["expand2square_background"]
                .as_array()
                .unwrap()
                .iter()
                .map(|x| x.as_u64().unwrap() as u8)
                .collect();
            assert_eq!(bg, c.pad_colour().to_vec());
            let (px, h, w) = c.preprocess(&fx.join(image)).unwrap();
            let npy = case["pixel_values"]["npy"].as_str().unwrap();
            let want = vlm_core::npy::read_f32(&fx.join("golden/llava_original").join(npy)).unwrap();
            assert_eq!(want.shape, vec![1, 3, h, w], "{image}");
            // In units of 1/255 before normalisation.
            let hw = h * w;
            let worst = (0..px.len())
                .map(|i| (px[i] - want.data[i]).abs() * c.image.image_std[i / hw] as f32 * 255.0)
                .fold(0f32, f32::max);
            assert!(worst <= 1e-3, "{image}: pixels differ by {worst}/255");
        }
        assert_eq!(seen.len(), 7);
    }

    #[test]
    fn pickle_shards_are_read_with_their_index() {
        use candle_core::{DType, Device};
        use vlm_core::weights::{WeightFiles, var_builder, weight_files};
        let files = weight_files(&fixture("llava_original")).unwrap();
        assert!(matches!(&files, WeightFiles::Pickle(f) if f.len() == 2));
        let vb = var_builder(&fixture("llava_original"), DType::F32, &Device::Cpu).unwrap();
        assert!(vb.contains_tensor("model.mm_projector.0.weight"));
        assert!(vb.contains_tensor("lm_head.weight"));
        let w = vb.get((64, 32), "model.mm_projector.0.weight").unwrap();
        assert_eq!(w.dtype(), DType::F32);
    }
}
