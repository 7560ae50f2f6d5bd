//! A Llama 3.2 Vision (Mllama) checkpoint's configuration files, read the way transformers reads
//! them, in both on-disk layouts real checkpoints come in:
//!
//! - the 2024 hub upload (transformers 4.45): `config.json` with `text_config` (RoPE as
//!   `rope_scaling: {"rope_type": "llama3", "factor", "low_freq_factor", "high_freq_factor",
//!   "original_max_position_embeddings"}` plus a flat `rope_theta`) and `vision_config`, fields
//!   often left out at their defaults, `image_token_index`; `preprocessor_config.json`;
//!   `chat_template.json`; sharded safetensors with the 2024 weight names.
//! - today's (transformers 5.x): `rope_parameters` (with `rope_theta` inside), the image processor
//!   nested in `processor_config.json` or in its own `preprocessor_config.json`;
//!   `chat_template.jinja`.
//!
//! Missing fields take the defaults of transformers' config classes (`MllamaTextConfig`,
//! `MllamaVisionConfig`, `MllamaConfig`, `MllamaImageProcessor`). Every error names the file and
//! the field.

use std::path::{Path, PathBuf};

use serde_json::Value;
pub use vlm_core::config_json::{ConfigError, parse_ids, read_json};
use vlm_core::config_json::{
    Heads, channels, check_processor_type, field, heads, image_processor_json, image_std, invalid, model_type, size,
};
use vlm_core::resize::Filter;

/// Rotary position embedding: the default one, or Llama 3's frequency-dependent scaling.
#[derive(Debug, Clone, PartialEq)]
pub enum Rope {
    Default {
        theta: f64,
    },
    Llama3 {
        theta: f64,
        factor: f64,
        low_freq_factor: f64,
        high_freq_factor: f64,
        original_max_position_embeddings: usize,
    },
}

impl Rope {
    /// The inverse frequencies for `head_dim`, as `ROPE_INIT_FUNCTIONS` computes them (in f32,
    /// the llama3 wavelengths and smoothing in f32 tensors as torch does).
    pub fn inv_freq(&self, head_dim: usize) -> Vec<f32> {
        let theta = match self {
            Rope::Default { theta } | Rope::Llama3 { theta, .. } => *theta,
        };
        // `base ** (arange(0, dim, 2).float() / dim)`: the exponent in f32, the power of a Python
        // float by an f32 tensor computed in f32.
        let base = vlm_core::layers::default_inv_freq(theta, head_dim);
        let Rope::Llama3 { factor, low_freq_factor, high_freq_factor, original_max_position_embeddings, .. } = self
        else {
            return base;
        };
        let (factor, low, high) = (*factor as f32, *low_freq_factor as f32, *high_freq_factor as f32);
        let old = *original_max_position_embeddings as f32;
        let low_wavelen = old / low;
        let high_wavelen = old / high;
        base.iter()
            .map(|&f| {
                let wavelen = 2.0 * std::f32::consts::PI / f;
                let scaled = if wavelen > low_wavelen { f / factor } else { f };
                // `~(w < high) * ~(w > low)`; the wavelengths are finite, so this is the same.
                let medium = wavelen >= high_wavelen && wavelen <= low_wavelen;
                if medium {
                    let smooth = (old / wavelen - low) / (high - low);
                    (1.0 - smooth) * scaled / factor + smooth * scaled
                } else {
                    scaled
                }
            })
            .collect()
    }
}

/// The Llama 3 text model with cross-attention layers (`MllamaTextConfig`'s defaults).
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
    pub rope: Rope,
    pub cross_attention_layers: Vec<usize>,
    pub tie_word_embeddings: bool,
    pub eos_token_ids: Vec<u32>,
}

/// The vision encoder (`MllamaVisionConfig`'s defaults).
#[derive(Debug, Clone, PartialEq)]
pub struct VisionConfig {
    pub hidden_size: usize,
    pub hidden_act: String,
    pub num_hidden_layers: usize,
    pub num_global_layers: usize,
    pub attention_heads: usize,
    pub num_channels: usize,
    pub intermediate_size: usize,
    pub vision_output_dim: usize,
    pub image_size: usize,
    pub patch_size: usize,
    pub norm_eps: f64,
    pub max_num_tiles: usize,
    pub intermediate_layers_indices: Vec<usize>,
    pub supported_aspect_ratios: Vec<[usize; 2]>,
}

impl VisionConfig {
    /// Patches per tile, the class token included: `(image_size / patch_size)² + 1`.
    pub fn num_patches(&self) -> usize {
        (self.image_size / self.patch_size).pow(2) + 1
    }
    /// `max_aspect_ratio_id`: the number of supported aspect ratios.
    pub fn max_aspect_ratio_id(&self) -> usize {
        self.supported_aspect_ratios.len()
    }
}

/// A whole `config.json`.
#[derive(Debug, Clone, PartialEq)]
pub struct MllamaConfig {
    pub text: TextConfig,
    pub vision: VisionConfig,
    pub image_token_id: u32,
}

impl MllamaConfig {
    pub fn from_dir(dir: &Path) -> Result<Self, ConfigError> {
        let path = dir.join("config.json");
        Self::from_value(&read_json(&path)?, &path)
    }

    pub fn from_value(v: &Value, path: &Path) -> Result<Self, ConfigError> {
        model_type(v, path, &[("mllama", "mllama")], "an Mllama config")?;
        let empty = Value::Object(Default::default());
        let sub = |key: &str| -> Result<&Value, ConfigError> {
            match v.get(key) {
                Some(o @ Value::Object(_)) => Ok(o),
                None | Some(Value::Null) => Ok(&empty),
                Some(_) => Err(invalid(path, format!("{key}: expected an object"))),
            }
        };
        let text = text_config(sub("text_config")?, path)?;
        let vision = vision_config(sub("vision_config")?, path)?;
        // `image_token_id` is an alias of `image_token_index` (attribute_map).
        let image_token_id = match field::<u32>(v, "image_token_index", path, "")? {
            Some(i) => i,
            None => field::<u32>(v, "image_token_id", path, "")?.unwrap_or(128_256),
        };
        Ok(Self { text, vision, image_token_id })
    }
}

fn text_config(v: &Value, path: &Path) -> Result<TextConfig, ConfigError> {
    let ctx = "text_config.";
    let Heads { hidden_size, num_attention_heads, num_key_value_heads, head_dim } = heads(v, path, ctx, [4096, 32, 8])?;
    if head_dim % 2 != 0 {
        return Err(invalid(path, format!("{ctx}hidden_size / num_attention_heads must be even")));
    }
    let num_hidden_layers: usize = field(v, "num_hidden_layers", path, ctx)?.unwrap_or(40);
    let rope = rope(v, path, ctx)?;
    let cross_attention_layers: Vec<usize> =
        field(v, "cross_attention_layers", path, ctx)?.unwrap_or_else(|| vec![3, 8, 13, 18, 23, 28, 33, 38]);
    if let Some(l) = cross_attention_layers.iter().find(|&&l| l >= num_hidden_layers) {
        return Err(invalid(
            path,
            format!("{ctx}cross_attention_layers: layer {l} is past num_hidden_layers {num_hidden_layers}"),
        ));
    }
    Ok(TextConfig {
        vocab_size: size(v, "vocab_size", 128_256, path, ctx)?,
        hidden_size,
        intermediate_size: size(v, "intermediate_size", 14_336, path, ctx)?,
        num_hidden_layers,
        num_attention_heads,
        num_key_value_heads,
        head_dim,
        hidden_act: field(v, "hidden_act", path, ctx)?.unwrap_or_else(|| "silu".to_owned()),
        max_position_embeddings: size(v, "max_position_embeddings", 131_072, path, ctx)?,
        rms_norm_eps: field(v, "rms_norm_eps", path, ctx)?.unwrap_or(1e-5),
        rope,
        cross_attention_layers,
        tie_word_embeddings: field(v, "tie_word_embeddings", path, ctx)?.unwrap_or(false),
        eos_token_ids: match v.get("eos_token_id") {
            None => vec![128_001],
            Some(Value::Null) => vec![],
            Some(e) => {
                parse_ids(e).ok_or_else(|| invalid(path, format!("{ctx}eos_token_id: expected an id or ids")))?
            }
        },
    })
}

/// RoPE: `rope_parameters` (5.x, theta inside) or `rope_scaling` + `rope_theta` (4.x); neither:
/// the default rope with `default_theta` 500000.
fn rope(v: &Value, path: &Path, ctx: &str) -> Result<Rope, ConfigError> {
    let (params, key) = match (v.get("rope_parameters"), v.get("rope_scaling")) {
        (Some(p @ Value::Object(_)), _) => (Some(p), "rope_parameters"),
        (_, Some(p @ Value::Object(_))) => (Some(p), "rope_scaling"),
        _ => (None, ""),
    };
    let flat_theta = field::<f64>(v, "rope_theta", path, ctx)?;
    let Some(p) = params else {
        return Ok(Rope::Default { theta: flat_theta.unwrap_or(500_000.0) });
    };
    let rctx = format!("{ctx}{key}.");
    let theta = field::<f64>(p, "rope_theta", path, &rctx)?.or(flat_theta).unwrap_or(500_000.0);
    let rope_type = p.get("rope_type").or_else(|| p.get("type")).and_then(Value::as_str).unwrap_or("default");
    match rope_type {
        "default" => Ok(Rope::Default { theta }),
        "llama3" => {
            let need = |k: &str| -> Result<f64, ConfigError> {
                field::<f64>(p, k, path, &rctx)?
                    .ok_or_else(|| invalid(path, format!("{rctx}{k}: missing (rope_type llama3)")))
            };
            let factor = need("factor")?;
            let low_freq_factor = need("low_freq_factor")?;
            let high_freq_factor = need("high_freq_factor")?;
            if high_freq_factor == low_freq_factor {
                return Err(invalid(path, format!("{rctx}high_freq_factor equals low_freq_factor")));
            }
            let original_max_position_embeddings =
                match field::<usize>(p, "original_max_position_embeddings", path, &rctx)? {
                    Some(o) => o,
                    None => size(v, "max_position_embeddings", 131_072, path, ctx)?,
                };
            Ok(Rope::Llama3 { theta, factor, low_freq_factor, high_freq_factor, original_max_position_embeddings })
        }
        other => Err(invalid(path, format!("{rctx}rope_type {other:?} is not supported (default, llama3)"))),
    }
}

fn vision_config(v: &Value, path: &Path) -> Result<VisionConfig, ConfigError> {
    let ctx = "vision_config.";
    let hidden_size = size(v, "hidden_size", 1280, path, ctx)?;
    // `num_attention_heads` is an alias of `attention_heads` (attribute_map).
    let attention_heads = match field::<usize>(v, "attention_heads", path, ctx)? {
        Some(h) => h,
        None => field::<usize>(v, "num_attention_heads", path, ctx)?.unwrap_or(16),
    };
    if attention_heads == 0 || hidden_size % attention_heads != 0 {
        return Err(invalid(path, format!("{ctx}hidden_size is not a multiple of attention_heads")));
    }
    let num_channels = size(v, "num_channels", 3, path, ctx)?;
    if num_channels != 3 {
        return Err(invalid(path, format!("{ctx}num_channels {num_channels}: only RGB (3) is supported")));
    }
    let image_size = size(v, "image_size", 448, path, ctx)?;
    let patch_size = size(v, "patch_size", 14, path, ctx)?;
    if image_size % patch_size != 0 {
        return Err(invalid(
            path,
            format!("{ctx}image_size {image_size} is not a multiple of patch_size {patch_size}"),
        ));
    }
    let num_hidden_layers: usize = field(v, "num_hidden_layers", path, ctx)?.unwrap_or(32);
    let intermediate_layers_indices: Vec<usize> =
        field(v, "intermediate_layers_indices", path, ctx)?.unwrap_or_else(|| vec![3, 7, 15, 23, 30]);
    // Index n (= num_hidden_layers) is the last local layer's output; 0..n are the layers' inputs.
    if let Some(i) = intermediate_layers_indices.iter().find(|&&i| i > num_hidden_layers) {
        return Err(invalid(path, format!("{ctx}intermediate_layers_indices: {i} is past num_hidden_layers")));
    }
    let vision_output_dim = size(v, "vision_output_dim", 7680, path, ctx)?;
    if vision_output_dim != hidden_size * (1 + intermediate_layers_indices.len()) {
        return Err(invalid(
            path,
            format!(
                "{ctx}vision_output_dim {vision_output_dim} is not hidden_size x (1 + {} intermediate layers)",
                intermediate_layers_indices.len()
            ),
        ));
    }
    let max_num_tiles = size(v, "max_num_tiles", 4, path, ctx)?;
    let supported: Vec<[usize; 2]> = field(v, "supported_aspect_ratios", path, ctx)?
        .unwrap_or_else(|| vec![[1, 1], [1, 2], [1, 3], [1, 4], [2, 1], [2, 2], [3, 1], [4, 1]]);
    Ok(VisionConfig {
        hidden_size,
        hidden_act: field(v, "hidden_act", path, ctx)?.unwrap_or_else(|| "gelu".to_owned()),
        num_hidden_layers,
        num_global_layers: field(v, "num_global_layers", path, ctx)?.unwrap_or(8),
        attention_heads,
        num_channels,
        intermediate_size: size(v, "intermediate_size", 5120, path, ctx)?,
        vision_output_dim,
        image_size,
        patch_size,
        norm_eps: field(v, "norm_eps", path, ctx)?.unwrap_or(1e-5),
        max_num_tiles,
        intermediate_layers_indices,
        supported_aspect_ratios: supported,
    })
}

/// `MllamaImageProcessor`'s settings.
#[derive(Debug, Clone, PartialEq)]
pub struct ImageProcessorConfig {
    /// The tile side (`size.height` = `size.width`).
    pub tile_size: usize,
    pub max_image_tiles: usize,
    /// The Pillow filter it resizes with (`resample`: 2 = `PIL.Image.BILINEAR`, the Mllama default
    /// and the real checkpoint's; 3 = `PIL.Image.BICUBIC`).
    pub resample: Filter,
    pub do_rescale: bool,
    pub rescale_factor: f64,
    pub do_normalize: bool,
    pub image_mean: [f64; 3],
    pub image_std: [f64; 3],
    /// The file it came from (for messages).
    pub path: PathBuf,
}

/// IMAGENET_STANDARD_MEAN / STD, `MllamaImageProcessor`'s defaults.
pub const IMAGENET_STANDARD: [f64; 3] = [0.5, 0.5, 0.5];

impl ImageProcessorConfig {
    /// The image processor of a checkpoint: nested in `processor_config.json` (newest), else
    /// `preprocessor_config.json`.
    pub fn from_dir(dir: &Path) -> Result<Self, ConfigError> {
        let (v, path, ctx) = image_processor_json(dir)?;
        Self::from_value(&v, &path, ctx)
    }

    pub fn from_value(v: &Value, path: &Path, ctx: &str) -> Result<Self, ConfigError> {
        check_processor_type(v, "MllamaImageProcessor", path, ctx)?;
        for key in ["do_resize", "do_pad"] {
            if field::<bool>(v, key, path, ctx)? == Some(false) {
                return Err(invalid(path, format!("{ctx}{key}: MllamaImageProcessor does not support false")));
            }
        }
        let sctx = format!("{ctx}size.");
        let tile_size = match v.get("size") {
            None | Some(Value::Null) => 224,
            Some(s @ Value::Object(_)) => {
                let h = field::<usize>(s, "height", path, &sctx)?;
                let w = field::<usize>(s, "width", path, &sctx)?;
                match (h, w) {
                    (Some(h), Some(w)) if h == w && h > 0 => h,
                    _ => return Err(invalid(path, format!("{sctx}height and width must be equal and positive"))),
                }
            }
            Some(_) => return Err(invalid(path, format!("{ctx}size: expected {{\"height\", \"width\"}}"))),
        };
        let max_image_tiles = size(v, "max_image_tiles", 4, path, ctx)?;
        let resample = match field::<i64>(v, "resample", path, ctx)?.unwrap_or(2) {
            2 => Filter::Bilinear,
            3 => Filter::Bicubic,
            other => {
                return Err(invalid(
                    path,
                    format!("{ctx}resample {other}: only 2 (bilinear) and 3 (bicubic) are supported"),
                ));
            }
        };
        let image_std = image_std(v, IMAGENET_STANDARD, path, ctx)?;
        Ok(Self {
            tile_size,
            max_image_tiles,
            resample,
            do_rescale: field(v, "do_rescale", path, ctx)?.unwrap_or(true),
            rescale_factor: field(v, "rescale_factor", path, ctx)?.unwrap_or(1.0 / 255.0),
            do_normalize: field(v, "do_normalize", path, ctx)?.unwrap_or(true),
            image_mean: channels(v, "image_mean", IMAGENET_STANDARD, path, ctx)?,
            image_std,
            path: path.to_owned(),
        })
    }

    /// The processor must cut tiles the way the vision encoder reads them.
    pub fn check_against(&self, vision: &VisionConfig) -> Result<(), ConfigError> {
        if self.tile_size != vision.image_size {
            return Err(invalid(
                &self.path,
                format!(
                    "size {} differs from the vision encoder's image_size {} (config.json)",
                    self.tile_size, vision.image_size
                ),
            ));
        }
        if self.max_image_tiles != vision.max_num_tiles {
            return Err(invalid(
                &self.path,
                format!(
                    "max_image_tiles {} differs from the vision encoder's max_num_tiles {} (config.json)",
                    self.max_image_tiles, vision.max_num_tiles
                ),
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    /// The fields third-party re-saves of the 2024 hub config.json show (rope as rope_scaling).
    fn hub_2024() -> Value {
        json!({
            "architectures": ["MllamaForConditionalGeneration"], "image_token_index": 128256, "model_type": "mllama",
            "text_config": {"model_type": "mllama_text_model", "cross_attention_layers": [3, 8, 13, 18, 23, 28, 33, 38],
                "hidden_size": 4096, "intermediate_size": 14336, "num_attention_heads": 32, "num_hidden_layers": 40,
                "num_key_value_heads": 8, "rms_norm_eps": 1e-05, "rope_theta": 500000.0, "vocab_size": 128256,
                "eos_token_id": [128001, 128008, 128009], "max_position_embeddings": 131072,
                "rope_scaling": {"factor": 8.0, "high_freq_factor": 4.0, "low_freq_factor": 1.0,
                    "original_max_position_embeddings": 8192, "rope_type": "llama3"}},
            "vision_config": {"model_type": "mllama_vision_model", "attention_heads": 16, "hidden_size": 1280,
                "image_size": 560, "intermediate_layers_indices": [3, 7, 15, 23, 30], "max_num_tiles": 4,
                "num_global_layers": 8, "num_hidden_layers": 32, "patch_size": 14, "vision_output_dim": 7680}
        })
    }

    #[test]
    fn the_2024_layout_reads_rope_scaling_and_defaults() {
        let c = MllamaConfig::from_value(&hub_2024(), Path::new("config.json")).unwrap();
        assert_eq!(c.image_token_id, 128256);
        assert_eq!(c.text.head_dim, 128);
        assert_eq!(c.text.eos_token_ids, vec![128001, 128008, 128009]);
        assert_eq!(
            c.text.rope,
            Rope::Llama3 {
                theta: 500000.0,
                factor: 8.0,
                low_freq_factor: 1.0,
                high_freq_factor: 4.0,
                original_max_position_embeddings: 8192
            }
        );
        assert_eq!(c.vision.num_patches(), 1601);
        assert_eq!(c.vision.max_aspect_ratio_id(), 8);
        assert_eq!(c.vision.norm_eps, 1e-5);
        assert_eq!(c.vision.hidden_act, "gelu");
    }

    #[test]
    fn todays_layout_reads_rope_parameters_and_empty_configs_take_class_defaults() {
        let v = json!({"model_type": "mllama", "image_token_id": 7,
            "text_config": {"rope_parameters": {"rope_type": "default", "rope_theta": 10000.0}, "hidden_size": 64,
                "num_attention_heads": 4, "num_key_value_heads": 2, "num_hidden_layers": 5, "cross_attention_layers": [1]},
            "vision_config": {"num_attention_heads": 2, "hidden_size": 32, "vision_output_dim": 96,
                "intermediate_layers_indices": [0, 1], "num_hidden_layers": 3}});
        let c = MllamaConfig::from_value(&v, Path::new("config.json")).unwrap();
        assert_eq!(c.image_token_id, 7);
        assert_eq!(c.text.rope, Rope::Default { theta: 10000.0 });
        assert_eq!(c.vision.attention_heads, 2);
        let d = MllamaConfig::from_value(&json!({"model_type": "mllama"}), Path::new("c.json")).unwrap();
        assert_eq!(d.text.rope, Rope::Default { theta: 500000.0 });
        assert_eq!(d.text.cross_attention_layers, vec![3, 8, 13, 18, 23, 28, 33, 38]);
        assert_eq!(d.vision.image_size, 448);
        assert_eq!(d.image_token_id, 128256);
        assert_eq!(d.text.eos_token_ids, vec![128001]);
    }

    #[test]
    fn config_errors_name_the_file_and_field() {
        let mut v = hub_2024();
        v["text_config"]["rope_scaling"].as_object_mut().unwrap().remove("factor");
        let e = MllamaConfig::from_value(&v, Path::new("/x/config.json")).unwrap_err().to_string();
        assert!(e.contains("/x/config.json") && e.contains("text_config.rope_scaling.factor"), "{e}");
        let mut v = hub_2024();
        v["vision_config"]["num_global_layers"] = json!("many");
        let e = MllamaConfig::from_value(&v, Path::new("/x/config.json")).unwrap_err().to_string();
        assert!(e.contains("vision_config.num_global_layers"), "{e}");
        let mut v = hub_2024();
        v["model_type"] = json!("qwen2_vl");
        let e = MllamaConfig::from_value(&v, Path::new("/x/config.json")).unwrap_err().to_string();
        assert!(e.contains("qwen2_vl") && e.contains("mllama"), "{e}");
        let e = ImageProcessorConfig::from_value(&json!({"resample": 1}), Path::new("/p.json"), "").unwrap_err();
        assert!(e.to_string().contains("/p.json") && e.to_string().contains("resample"), "{e}");
        let e =
            ImageProcessorConfig::from_value(&json!({"size": {"height": 560, "width": 448}}), Path::new("/p.json"), "");
        assert!(e.unwrap_err().to_string().contains("size."));
    }

    #[test]
    fn the_real_preprocessor_config_reads_bilinear_560_and_clip_statistics() {
        // The 437-byte preprocessor_config.json of the third-party copies (SOURCES.md).
        let v = json!({"do_convert_rgb": true, "do_normalize": true, "do_pad": true, "do_rescale": true,
            "do_resize": true, "image_mean": [0.48145466, 0.4578275, 0.40821073],
            "image_processor_type": "MllamaImageProcessor", "image_std": [0.26862954, 0.26130258, 0.27577711],
            "max_image_tiles": 4, "resample": 2, "rescale_factor": 0.00392156862745098,
            "size": {"height": 560, "width": 560}});
        let c = ImageProcessorConfig::from_value(&v, Path::new("p.json"), "").unwrap();
        assert_eq!((c.tile_size, c.max_image_tiles, c.resample), (560, 4, Filter::Bilinear));
        let hub = MllamaConfig::from_value(&hub_2024(), Path::new("config.json")).unwrap();
        c.check_against(&hub.vision).unwrap();
        let d = ImageProcessorConfig::from_value(&json!({}), Path::new("p.json"), "").unwrap();
        assert_eq!((d.tile_size, d.image_mean), (224, IMAGENET_STANDARD));
    }

    #[test]
    fn llama3_rope_scales_low_frequencies_and_smooths_the_middle() {
        let r = Rope::Llama3 {
            theta: 500000.0,
            factor: 8.0,
            low_freq_factor: 1.0,
            high_freq_factor: 4.0,
            original_max_position_embeddings: 8192,
        };
        let base = Rope::Default { theta: 500000.0 }.inv_freq(128);
        let f = r.inv_freq(128);
        assert_eq!(f.len(), 64);
        // High frequencies (wavelength < 8192 / 4 = 2048) unchanged; low (> 8192) divided by 8.
        for (i, (&a, &b)) in f.iter().zip(&base).enumerate() {
            let wavelen = 2.0 * std::f32::consts::PI / b;
            if wavelen < 2048.0 {
                assert_eq!(a, b, "{i}");
            } else if wavelen > 8192.0 {
                assert_eq!(a, b / 8.0, "{i}");
            } else {
                assert!(a < b && a > b / 8.0, "{i}: {a} {b}");
            }
        }
        // The bits transformers 5.24 gives (torch f32) at indices 0, 20, 40, 45, 50, 63.
        let want =
            [(0, 1065353216u32), (20, 1015523779), (40, 940558584), (45, 927879669), (50, 915670731), (63, 883213055)];
        for (i, bits) in want {
            assert_eq!(f[i].to_bits(), bits, "inv_freq[{i}] = {} vs {}", f[i], f32::from_bits(bits));
        }
    }
}
