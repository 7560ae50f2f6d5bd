//! A Qwen2-VL checkpoint's configuration files, read the way transformers reads them, in both
//! on-disk layouts real checkpoints come in:
//!
//! - the 2024 hub upload (transformers 4.41-4.46): `config.json` flat, the text model's fields at
//!   the top level, `rope_scaling: {"type": "mrope", "mrope_section": [...]}`, `vision_config` with
//!   `in_chans` (ignored by transformers: `in_channels` takes its default), `embed_dim`, `depth`,
//!   `num_heads`, `mlp_ratio`, `hidden_size`, ...; `preprocessor_config.json` with
//!   `min_pixels` / `max_pixels`; `chat_template.json`; sharded safetensors.
//! - today's (transformers 5.x): `text_config`, `rope_parameters` (with `rope_theta` and
//!   `mrope_section`), the image processor's `size: {"shortest_edge", "longest_edge"}` (pixel counts),
//!   nested in `processor_config.json` or in its own `preprocessor_config.json`;
//!   `chat_template.jinja`.
//!
//! Missing fields take the defaults of transformers' config classes (`Qwen2VLTextConfig`,
//! `Qwen2VLVisionConfig`, `Qwen2VLConfig`, `Qwen2VLImageProcessor`). Every error names the file and
//! the field.

use std::path::{Path, PathBuf};

pub use crate::config_json::{ConfigError, parse_ids, read_json};
use crate::config_json::{
    Heads, channels, check_processor_type, field, heads, image_processor_json, image_std, invalid, model_type, size,
};
use serde_json::Value;

/// The Qwen2 text model (`Qwen2VLTextConfig`'s defaults for missing fields).
#[derive(Debug, Clone, PartialEq)]
pub struct TextConfig {
    pub vocab_size: usize,
    pub hidden_size: usize,
    pub intermediate_size: usize,
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    pub num_key_value_heads: usize,
    pub head_dim: usize,
    pub hidden_act: String,
    pub max_position_embeddings: usize,
    pub rms_norm_eps: f64,
    pub rope_theta: f64,
    /// Rotary frequencies per (temporal, height, width) position row; they sum to `head_dim / 2`.
    pub mrope_section: Vec<usize>,
    pub tie_word_embeddings: bool,
    pub eos_token_ids: Vec<u32>,
}

/// The vision tower (`Qwen2VLVisionConfig`'s defaults for missing fields).
#[derive(Debug, Clone, PartialEq)]
pub struct VisionConfig {
    pub depth: usize,
    pub embed_dim: usize,
    /// The merger's output size: the text model's hidden size.
    pub hidden_size: usize,
    pub hidden_act: String,
    pub mlp_ratio: f64,
    pub num_heads: usize,
    pub in_channels: usize,
    pub patch_size: usize,
    pub spatial_merge_size: usize,
    pub temporal_patch_size: usize,
    /// `VisionRotaryEmbedding`'s theta (10000; 5.x configs also write it in `rope_parameters`).
    pub rope_theta: f64,
}

impl VisionConfig {
    /// `int(embed_dim * mlp_ratio)`.
    pub fn mlp_hidden_dim(&self) -> usize {
        (self.embed_dim as f64 * self.mlp_ratio) as usize
    }
    pub fn head_dim(&self) -> usize {
        self.embed_dim / self.num_heads
    }
    /// Values in one flattened patch: channels x temporal x patch x patch.
    pub fn patch_dim(&self) -> usize {
        self.in_channels * self.temporal_patch_size * self.patch_size * self.patch_size
    }
}

/// A whole `config.json`.
#[derive(Debug, Clone, PartialEq)]
pub struct Qwen2VlConfig {
    pub text: TextConfig,
    pub vision: VisionConfig,
    pub image_token_id: u32,
    pub video_token_id: u32,
    pub vision_start_token_id: u32,
    pub vision_end_token_id: u32,
}

impl Qwen2VlConfig {
    pub fn from_dir(dir: &Path) -> Result<Self, ConfigError> {
        let path = dir.join("config.json");
        Self::from_value(&read_json(&path)?, &path)
    }

    pub fn from_value(v: &Value, path: &Path) -> Result<Self, ConfigError> {
        model_type(v, path, &[("qwen2_vl", "qwen2vl")], "a Qwen2-VL config")?;
        // Today's layout nests the text model; the 2024 one keeps it at the top level (transformers
        // builds Qwen2VLTextConfig from every top-level key then).
        let (text_obj, ctx) = match v.get("text_config") {
            Some(t @ Value::Object(_)) => (t, "text_config."),
            _ => (v, ""),
        };
        let mut text = text_config(text_obj, path, ctx)?;
        // tie_word_embeddings may sit at the top level of either layout.
        if let Some(t) = field::<bool>(v, "tie_word_embeddings", path, "")?
            && !matches!(text_obj.get("tie_word_embeddings"), Some(Value::Bool(_)))
        {
            text.tie_word_embeddings = t;
        }
        if text.eos_token_ids.is_empty()
            && let Some(e) = v.get("eos_token_id").and_then(parse_ids)
        {
            text.eos_token_ids = e;
        }
        let vision = match v.get("vision_config") {
            Some(vc @ Value::Object(_)) => vision_config(vc, path)?,
            None | Some(Value::Null) => vision_config(&Value::Object(Default::default()), path)?,
            Some(_) => return Err(invalid(path, "vision_config: expected an object")),
        };
        let id = |key: &str, default: u32| -> Result<u32, ConfigError> {
            Ok(field::<u32>(v, key, path, "")?.unwrap_or(default))
        };
        Ok(Self {
            text,
            vision,
            image_token_id: id("image_token_id", 151_655)?,
            video_token_id: id("video_token_id", 151_656)?,
            vision_start_token_id: id("vision_start_token_id", 151_652)?,
            vision_end_token_id: id("vision_end_token_id", 151_653)?,
        })
    }
}

fn text_config(v: &Value, path: &Path, ctx: &str) -> Result<TextConfig, ConfigError> {
    let Heads { hidden_size, num_attention_heads, num_key_value_heads, head_dim } = heads(v, path, ctx, [8192, 64, 8])?;
    if field::<bool>(v, "use_sliding_window", path, ctx)?.unwrap_or(false) {
        return Err(invalid(path, format!("{ctx}use_sliding_window: sliding-window attention is not supported")));
    }
    // RoPE: `rope_parameters` (5.x) or `rope_scaling` (4.x, with a flat `rope_theta`).
    let (rope, rope_key) = match (v.get("rope_parameters"), v.get("rope_scaling")) {
        (Some(p @ Value::Object(_)), _) => (p, "rope_parameters"),
        (_, Some(p @ Value::Object(_))) => (p, "rope_scaling"),
        _ => {
            return Err(invalid(
                path,
                format!("{ctx}rope_scaling / rope_parameters: missing (Qwen2-VL needs its mrope_section)"),
            ));
        }
    };
    let rctx = format!("{ctx}{rope_key}.");
    let rope_type = rope.get("rope_type").or_else(|| rope.get("type")).and_then(Value::as_str).unwrap_or("default");
    if !matches!(rope_type, "default" | "mrope") {
        return Err(invalid(path, format!("{rctx}rope_type {rope_type:?} is not supported (default, mrope)")));
    }
    let rope_theta = match field::<f64>(rope, "rope_theta", path, &rctx)? {
        Some(t) => t,
        None => field::<f64>(v, "rope_theta", path, ctx)?.unwrap_or(1_000_000.0),
    };
    let mrope_section: Vec<usize> = field(rope, "mrope_section", path, &rctx)?
        .ok_or_else(|| invalid(path, format!("{rctx}mrope_section: missing")))?;
    if mrope_section.len() != 3 || mrope_section.iter().sum::<usize>() * 2 != head_dim {
        return Err(invalid(
            path,
            format!(
                "{rctx}mrope_section {mrope_section:?}: expected 3 sections summing to head_dim / 2 = {}",
                head_dim / 2
            ),
        ));
    }
    Ok(TextConfig {
        vocab_size: size(v, "vocab_size", 152_064, path, ctx)?,
        hidden_size,
        intermediate_size: size(v, "intermediate_size", 29_568, path, ctx)?,
        num_hidden_layers: field(v, "num_hidden_layers", path, ctx)?.unwrap_or(80),
        num_attention_heads,
        num_key_value_heads,
        head_dim,
        hidden_act: field(v, "hidden_act", path, ctx)?.unwrap_or_else(|| "silu".to_owned()),
        max_position_embeddings: size(v, "max_position_embeddings", 32_768, path, ctx)?,
        rms_norm_eps: field(v, "rms_norm_eps", path, ctx)?.unwrap_or(1e-5),
        rope_theta,
        mrope_section,
        tie_word_embeddings: field(v, "tie_word_embeddings", path, ctx)?.unwrap_or(false),
        eos_token_ids: v.get("eos_token_id").and_then(parse_ids).unwrap_or_default(),
    })
}

fn vision_config(v: &Value, path: &Path) -> Result<VisionConfig, ConfigError> {
    let ctx = "vision_config.";
    let embed_dim = size(v, "embed_dim", 1280, path, ctx)?;
    let num_heads = size(v, "num_heads", 16, path, ctx)?;
    if embed_dim % num_heads != 0 || (embed_dim / num_heads) % 4 != 0 {
        return Err(invalid(path, format!("{ctx}embed_dim / num_heads must be a multiple of 4")));
    }
    // transformers reads `in_channels`; the 2024 upload's `in_chans` is an unknown key to it.
    let in_channels = size(v, "in_channels", 3, path, ctx)?;
    if in_channels != 3 {
        return Err(invalid(path, format!("{ctx}in_channels {in_channels}: only RGB (3) is supported")));
    }
    let spatial_merge_size = size(v, "spatial_merge_size", 2, path, ctx)?;
    let rope_theta = match v.get("rope_parameters") {
        Some(p @ Value::Object(_)) => field(p, "rope_theta", path, "vision_config.rope_parameters.")?,
        _ => None,
    };
    Ok(VisionConfig {
        depth: field(v, "depth", path, ctx)?.unwrap_or(32),
        embed_dim,
        hidden_size: size(v, "hidden_size", 3584, path, ctx)?,
        hidden_act: field(v, "hidden_act", path, ctx)?.unwrap_or_else(|| "quick_gelu".to_owned()),
        mlp_ratio: field(v, "mlp_ratio", path, ctx)?.unwrap_or(4.0),
        num_heads,
        in_channels,
        patch_size: size(v, "patch_size", 14, path, ctx)?,
        spatial_merge_size,
        temporal_patch_size: size(v, "temporal_patch_size", 2, path, ctx)?,
        rope_theta: rope_theta.unwrap_or(10_000.0),
    })
}

/// `Qwen2VLImageProcessor`'s settings.
#[derive(Debug, Clone, PartialEq)]
pub struct ImageProcessorConfig {
    pub min_pixels: u64,
    pub max_pixels: u64,
    pub patch_size: usize,
    pub temporal_patch_size: usize,
    pub merge_size: usize,
    pub image_mean: [f64; 3],
    pub image_std: [f64; 3],
    pub do_resize: bool,
    pub do_rescale: bool,
    pub rescale_factor: f64,
    pub do_normalize: bool,
    /// The file it came from (for messages).
    pub path: PathBuf,
}

/// OPENAI_CLIP_MEAN / OPENAI_CLIP_STD, `Qwen2VLImageProcessor`'s defaults.
pub const CLIP_MEAN: [f64; 3] = [0.48145466, 0.4578275, 0.40821073];
pub const CLIP_STD: [f64; 3] = [0.26862954, 0.26130258, 0.27577711];

impl ImageProcessorConfig {
    /// The image processor of a checkpoint: nested in `processor_config.json` (newest), else
    /// `preprocessor_config.json`.
    pub fn from_dir(dir: &Path) -> Result<Self, ConfigError> {
        let (v, path, ctx) = image_processor_json(dir)?;
        Self::from_value(&v, &path, ctx)
    }

    pub fn from_value(v: &Value, path: &Path, ctx: &str) -> Result<Self, ConfigError> {
        check_processor_type(v, "Qwen2VLImageProcessor", path, ctx)?;
        // Pixel bounds: `min_pixels`/`max_pixels` (they win, as in transformers), else `size` as
        // {shortest_edge, longest_edge} (5.x) or {min_pixels, max_pixels} (4.x), else the defaults.
        let size_obj = v.get("size").filter(|s| s.is_object());
        let sctx = format!("{ctx}size.");
        let from_size = |a: &str, b: &str| -> Result<Option<u64>, ConfigError> {
            match size_obj {
                Some(s) => Ok(field::<u64>(s, a, path, &sctx)?.or(field::<u64>(s, b, path, &sctx)?)),
                None => Ok(None),
            }
        };
        let min_pixels = match field::<u64>(v, "min_pixels", path, ctx)? {
            Some(m) => m,
            None => from_size("shortest_edge", "min_pixels")?.unwrap_or(56 * 56),
        };
        let max_pixels = match field::<u64>(v, "max_pixels", path, ctx)? {
            Some(m) => m,
            None => from_size("longest_edge", "max_pixels")?.unwrap_or(28 * 28 * 1280),
        };
        if min_pixels > max_pixels || max_pixels == 0 {
            return Err(invalid(path, format!("{ctx}min_pixels {min_pixels} / max_pixels {max_pixels}: not a range")));
        }
        let image_std = image_std(v, CLIP_STD, path, ctx)?;
        Ok(Self {
            min_pixels,
            max_pixels,
            patch_size: size(v, "patch_size", 14, path, ctx)?,
            temporal_patch_size: size(v, "temporal_patch_size", 2, path, ctx)?,
            merge_size: size(v, "merge_size", 2, path, ctx)?,
            image_mean: channels(v, "image_mean", CLIP_MEAN, path, ctx)?,
            image_std,
            do_resize: field(v, "do_resize", path, ctx)?.unwrap_or(true),
            do_rescale: field(v, "do_rescale", path, ctx)?.unwrap_or(true),
            rescale_factor: field(v, "rescale_factor", path, ctx)?.unwrap_or(1.0 / 255.0),
            do_normalize: field(v, "do_normalize", path, ctx)?.unwrap_or(true),
            path: path.to_owned(),
        })
    }

    /// The processor must cut patches the way the vision tower reads them.
    pub fn check_against(&self, vision: &VisionConfig) -> Result<(), ConfigError> {
        let pairs = [
            ("patch_size", self.patch_size, vision.patch_size),
            ("temporal_patch_size", self.temporal_patch_size, vision.temporal_patch_size),
            ("merge_size", self.merge_size, vision.spatial_merge_size),
        ];
        for (key, ours, model) in pairs {
            if ours != model {
                return Err(invalid(
                    &self.path,
                    format!("{key} {ours} differs from the vision tower's {model} (config.json vision_config)"),
                ));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn shared(rel: &str) -> Option<PathBuf> {
        let p = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../../shared").join(rel);
        if p.exists() {
            Some(p)
        } else {
            println!("SKIPPED: {} absent", p.display());
            None
        }
    }

    /// The 2024 hub config.json as Qwen2-VL-7B-Instruct was uploaded (the fields SOURCES.md saw).
    fn hub_2024() -> Value {
        json!({
            "architectures": ["Qwen2VLForConditionalGeneration"],
            "model_type": "qwen2_vl",
            "hidden_size": 3584, "intermediate_size": 18944, "num_attention_heads": 28,
            "num_hidden_layers": 28, "num_key_value_heads": 4, "rms_norm_eps": 1e-06,
            "rope_theta": 1000000.0, "vocab_size": 152064, "max_position_embeddings": 32768,
            "eos_token_id": 151645, "tie_word_embeddings": false, "use_sliding_window": false,
            "image_token_id": 151655, "video_token_id": 151656, "vision_start_token_id": 151652,
            "vision_end_token_id": 151653, "vision_token_id": 151654,
            "vision_config": {"depth": 32, "embed_dim": 1280, "mlp_ratio": 4, "num_heads": 16,
                "in_chans": 3, "hidden_size": 3584, "patch_size": 14, "spatial_merge_size": 2,
                "spatial_patch_size": 14, "temporal_patch_size": 2},
            "rope_scaling": {"type": "mrope", "mrope_section": [16, 24, 24]}
        })
    }

    #[test]
    fn the_2024_flat_layout_reads_text_fields_from_the_top_level() {
        let c = Qwen2VlConfig::from_value(&hub_2024(), Path::new("config.json")).unwrap();
        assert_eq!(c.text.hidden_size, 3584);
        assert_eq!(c.text.head_dim, 128);
        assert_eq!(c.text.num_key_value_heads, 4);
        assert_eq!(c.text.mrope_section, vec![16, 24, 24]);
        assert_eq!(c.text.rope_theta, 1e6);
        assert_eq!(c.text.rms_norm_eps, 1e-6);
        assert_eq!(c.text.eos_token_ids, vec![151645]);
        assert_eq!(c.vision.embed_dim, 1280);
        assert_eq!(c.vision.mlp_hidden_dim(), 5120);
        assert_eq!(c.vision.hidden_act, "quick_gelu");
        assert_eq!(c.vision.in_channels, 3);
        assert_eq!(c.vision.patch_dim(), 3 * 2 * 14 * 14);
        assert_eq!(c.vision_start_token_id, 151652);
    }

    #[test]
    fn todays_layout_reads_text_config_and_rope_parameters() {
        let v = json!({
            "model_type": "qwen2_vl",
            "text_config": {"model_type": "qwen2_vl_text", "hidden_size": 64, "num_attention_heads": 4,
                "num_key_value_heads": 2, "num_hidden_layers": 2, "intermediate_size": 128, "vocab_size": 300,
                "rope_parameters": {"rope_type": "default", "rope_theta": 10000.0, "mrope_section": [2, 3, 3]},
                "tie_word_embeddings": true},
            "vision_config": {"depth": 1, "embed_dim": 32, "num_heads": 2, "hidden_size": 64, "in_channels": 3},
            "image_token_id": 5
        });
        let c = Qwen2VlConfig::from_value(&v, Path::new("config.json")).unwrap();
        assert_eq!((c.text.hidden_size, c.text.head_dim, c.text.num_hidden_layers), (64, 16, 2));
        assert_eq!(c.text.rope_theta, 10000.0);
        assert!(c.text.tie_word_embeddings);
        assert_eq!(c.image_token_id, 5);
        // Defaults from the config classes.
        assert_eq!(c.text.max_position_embeddings, 32768);
        assert_eq!(c.video_token_id, 151656);
        assert_eq!(c.vision.temporal_patch_size, 2);
    }

    #[test]
    fn config_errors_name_the_file_and_field() {
        let mut v = hub_2024();
        v["rope_scaling"]["mrope_section"] = json!([16, 24]);
        let e = Qwen2VlConfig::from_value(&v, Path::new("/x/config.json")).unwrap_err().to_string();
        assert!(e.contains("/x/config.json") && e.contains("rope_scaling.mrope_section"), "{e}");
        let mut v = hub_2024();
        v["vision_config"]["depth"] = json!("deep");
        let e = Qwen2VlConfig::from_value(&v, Path::new("/x/config.json")).unwrap_err().to_string();
        assert!(e.contains("vision_config.depth"), "{e}");
        let mut v = hub_2024();
        v["model_type"] = json!("llava");
        let e = Qwen2VlConfig::from_value(&v, Path::new("/x/config.json")).unwrap_err().to_string();
        assert!(e.contains("llava") && e.contains("qwen2_vl"), "{e}");
        let e = ImageProcessorConfig::from_value(&json!({"image_mean": [1, 2]}), Path::new("/p.json"), "")
            .unwrap_err()
            .to_string();
        assert!(e.contains("/p.json") && e.contains("image_mean"), "{e}");
    }

    #[test]
    fn pixel_bounds_come_from_min_max_pixels_or_size() {
        let p = Path::new("p.json");
        let old = ImageProcessorConfig::from_value(&json!({"min_pixels": 100, "max_pixels": 200}), p, "").unwrap();
        assert_eq!((old.min_pixels, old.max_pixels), (100, 200));
        let new = ImageProcessorConfig::from_value(
            &json!({"size": {"shortest_edge": 3136, "longest_edge": 12845056}}),
            p,
            "",
        )
        .unwrap();
        assert_eq!((new.min_pixels, new.max_pixels), (3136, 12845056));
        let default = ImageProcessorConfig::from_value(&json!({}), p, "").unwrap();
        assert_eq!((default.min_pixels, default.max_pixels), (3136, 1003520));
        assert_eq!(default.image_mean, CLIP_MEAN);
    }

    #[test]
    fn the_real_preprocessor_config_parses() {
        let Some(p) = shared("checkpoints/Qwen__Qwen2-VL-7B-Instruct/preprocessor_config.json") else { return };
        let c = ImageProcessorConfig::from_value(&read_json(&p).unwrap(), &p, "").unwrap();
        assert_eq!((c.min_pixels, c.max_pixels), (3136, 12845056));
        assert_eq!((c.patch_size, c.temporal_patch_size, c.merge_size), (14, 2, 2));
        assert_eq!(c.image_mean, CLIP_MEAN);
        assert_eq!(c.image_std, CLIP_STD);
        let hub = Qwen2VlConfig::from_value(&hub_2024(), Path::new("config.json")).unwrap();
        c.check_against(&hub.vision).unwrap();
    }
}
