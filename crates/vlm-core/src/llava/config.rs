//! Reading an HF-format LLaVA checkpoint's configuration files the way transformers reads them.
//!
//! Two model types are read: `llava` (`LlavaConfig`, LLaVA-1.5, arch `llava_hf`) and
//! `llava_next` (`LlavaNextConfig`, LLaVA-NeXT with anyres tiling, arch `llava_next`). They share
//! every field ([`LlavaConfig`]); `llava_next` adds `image_grid_pinpoints` ([`ModelConfig`]).
//!
//! Real checkpoints were saved years apart, so every layout transformers accepts is read here:
//! - `config.json`: `image_token_index` (transformers 4.x and our fixtures) or `image_token_id`
//!   (newer); `text_config`/`vision_config` list only the fields that differ from the config
//!   class's defaults (`LlamaConfig`, `CLIPVisionConfig`), so missing ones take those defaults;
//!   `rope_theta` flat or inside `rope_parameters`; `image_grid_pinpoints` absent means
//!   `LlavaNextConfig`'s default grid.
//! - the image processor: nested under `image_processor` in `processor_config.json` (newest),
//!   or its own `preprocessor_config.json` (older); `size`/`crop_size` as dicts or integers;
//!   `CLIPImageProcessor` or `LlavaNextImageProcessor` (which adds `image_grid_pinpoints` and
//!   `do_pad`).
//! - `generation_config.json`: EOS ids, one or many.

use std::path::Path;

use serde_json::Value;

pub use crate::config_json::ConfigError;
pub use crate::config_json::read_json;
use crate::config_json::{self, field, invalid, parse_ids};

/// The Llama text model, with `LlamaConfig`'s defaults for missing fields.
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
    pub attention_bias: bool,
    pub mlp_bias: bool,
    pub tie_word_embeddings: bool,
    pub bos_token_id: Option<u32>,
    pub eos_token_ids: Vec<u32>,
}

/// The CLIP vision tower, with `CLIPVisionConfig`'s defaults for missing fields.
#[derive(Debug, Clone, PartialEq)]
pub struct VisionConfig {
    pub hidden_size: usize,
    pub intermediate_size: usize,
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    pub num_channels: usize,
    pub image_size: usize,
    pub patch_size: usize,
    pub hidden_act: String,
    pub layer_norm_eps: f64,
}

impl VisionConfig {
    /// Patches per side of the (square) input.
    pub fn patches_per_side(&self) -> usize {
        self.image_size / self.patch_size
    }
    /// Positions in the tower's sequence: every patch plus the class token.
    pub fn num_positions(&self) -> usize {
        self.patches_per_side() * self.patches_per_side() + 1
    }
}

/// How image features are selected from the vision tower's hidden states.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SelectStrategy {
    /// Drop the class token (`"default"`).
    Default,
    /// Keep every position (`"full"`).
    Full,
}

/// The `model_type` of `config.json`, and the vlsbench arch that serves it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ModelType {
    /// `llava`: `LlavaForConditionalGeneration` (LLaVA-1.5).
    Llava,
    /// `llava_next`: `LlavaNextForConditionalGeneration` (LLaVA-NeXT, anyres tiling).
    LlavaNext,
}

impl ModelType {
    /// The `model_type` string in `config.json`.
    pub fn as_str(self) -> &'static str {
        match self {
            ModelType::Llava => "llava",
            ModelType::LlavaNext => "llava_next",
        }
    }

    /// The vlsbench arch name (the manifest's `arch`).
    pub fn arch(self) -> &'static str {
        match self {
            ModelType::Llava => "llava_hf",
            ModelType::LlavaNext => "llava_next",
        }
    }
}

/// `LlavaNextConfig`'s and `LlavaNextImageProcessor`'s default grid, as (height, width).
pub const DEFAULT_GRID_PINPOINTS: [(usize, usize); 5] = [(336, 672), (672, 336), (672, 672), (1008, 336), (336, 1008)];

/// `image_grid_pinpoints`: a non-empty list of `[height, width]` pairs of positive sizes.
fn grid_pinpoints(v: &Value, path: &Path, ctx: &str) -> Result<Option<Vec<(usize, usize)>>, ConfigError> {
    let key = "image_grid_pinpoints";
    let Some(list) = field::<Vec<Vec<u64>>>(v, key, path, ctx)? else {
        return Ok(None);
    };
    if list.is_empty() {
        return Err(invalid(path, format!("{ctx}{key}: empty")));
    }
    list.iter()
        .map(|pair| match pair.as_slice() {
            &[h, w] if h > 0 && w > 0 => Ok((h as usize, w as usize)),
            _ => Err(invalid(path, format!("{ctx}{key}: {pair:?} is not a [height, width] pair of positive sizes"))),
        })
        .collect::<Result<Vec<_>, _>>()
        .map(Some)
}

/// The fields `LlavaConfig` and `LlavaNextConfig` share (see [`ModelConfig`] for the rest).
#[derive(Debug, Clone, PartialEq)]
pub struct LlavaConfig {
    pub text: TextConfig,
    pub vision: VisionConfig,
    pub image_token_id: u32,
    pub image_seq_length: usize,
    pub projector_hidden_act: String,
    pub multimodal_projector_bias: bool,
    /// Indices into transformers' `hidden_states` (index 0 is the embeddings output); several are
    /// concatenated on the feature axis.
    pub vision_feature_layers: Vec<i64>,
    pub select_strategy: SelectStrategy,
    pub pad_token_id: Option<u32>,
}

/// A whole HF-format `config.json`: its model type, the shared fields, and LLaVA-NeXT's grid.
#[derive(Debug, Clone, PartialEq)]
pub struct ModelConfig {
    pub model_type: ModelType,
    pub llava: LlavaConfig,
    /// `llava_next` only (empty for `llava`): the anyres resolutions, (height, width).
    pub image_grid_pinpoints: Vec<(usize, usize)>,
}

impl ModelConfig {
    /// Reads `config.json` from a checkpoint directory.
    pub fn from_dir(dir: &Path) -> Result<Self, ConfigError> {
        let path = dir.join("config.json");
        Self::from_value(&read_json(&path)?, &path)
    }

    pub fn from_value(v: &Value, path: &Path) -> Result<Self, ConfigError> {
        let model_type = model_type(v, path)?;
        let llava = LlavaConfig::from_value(v, path)?;
        let image_grid_pinpoints = match model_type {
            ModelType::Llava => Vec::new(),
            ModelType::LlavaNext => grid_pinpoints(v, path, "")?.unwrap_or_else(|| DEFAULT_GRID_PINPOINTS.to_vec()),
        };
        Ok(Self { model_type, llava, image_grid_pinpoints })
    }
}

/// `model_type`: `llava` or `llava_next`.
fn model_type(v: &Value, path: &Path) -> Result<ModelType, ConfigError> {
    let accepted = [("llava", "llava_hf"), ("llava_next", "llava_next")];
    Ok(match config_json::model_type(v, path, &accepted, "an HF-format LLaVA config")? {
        0 => ModelType::Llava,
        _ => ModelType::LlavaNext,
    })
}

pub fn text_config(v: &Value, path: &Path) -> Result<TextConfig, ConfigError> {
    let ctx = "text_config.";
    if let Some(mt) = v.get("model_type").and_then(Value::as_str)
        && mt != "llama"
    {
        return Err(invalid(path, format!("text_config.model_type {mt:?} is not supported (llama only)")));
    }
    let hidden_size = field(v, "hidden_size", path, ctx)?.unwrap_or(4096usize);
    let num_attention_heads = field(v, "num_attention_heads", path, ctx)?.unwrap_or(32usize);
    if num_attention_heads == 0 || hidden_size % num_attention_heads != 0 {
        return Err(invalid(path, "text_config: hidden_size is not a multiple of num_attention_heads"));
    }
    let num_key_value_heads = field(v, "num_key_value_heads", path, ctx)?.unwrap_or(num_attention_heads);
    if num_key_value_heads == 0 || num_attention_heads % num_key_value_heads != 0 {
        return Err(invalid(path, "text_config: num_attention_heads is not a multiple of num_key_value_heads"));
    }
    // rope_theta: flat (transformers 4.x) or in rope_parameters (5.x); rope_scaling must be absent.
    let rope_params = v.get("rope_parameters").filter(|p| !p.is_null());
    let rope_theta = match rope_params.and_then(|p| p.get("rope_theta")).and_then(Value::as_f64) {
        Some(t) => t,
        None => field(v, "rope_theta", path, ctx)?.unwrap_or(10_000.0),
    };
    let rope_type = rope_params
        .and_then(|p| p.get("rope_type").or_else(|| p.get("type")))
        .or_else(|| {
            v.get("rope_scaling")
                .filter(|s| !s.is_null())
                .map(|s| s.get("rope_type").or_else(|| s.get("type")).unwrap_or(s))
        })
        .and_then(Value::as_str)
        .unwrap_or("default");
    if rope_type != "default" {
        return Err(invalid(path, format!("text_config: rope type {rope_type:?} is not supported")));
    }
    let hidden_act: String = field(v, "hidden_act", path, ctx)?.unwrap_or_else(|| "silu".into());
    if hidden_act != "silu" {
        return Err(invalid(path, format!("text_config.hidden_act {hidden_act:?} is not supported")));
    }
    let eos_token_ids =
        v.get("eos_token_id").map_or(Some(vec![2]), |e| if e.is_null() { Some(vec![]) } else { parse_ids(e) });
    Ok(TextConfig {
        vocab_size: field(v, "vocab_size", path, ctx)?.unwrap_or(32000),
        hidden_size,
        intermediate_size: field(v, "intermediate_size", path, ctx)?.unwrap_or(11008),
        num_hidden_layers: field(v, "num_hidden_layers", path, ctx)?.unwrap_or(32),
        num_attention_heads,
        num_key_value_heads,
        head_dim: field(v, "head_dim", path, ctx)?.unwrap_or(hidden_size / num_attention_heads),
        hidden_act,
        max_position_embeddings: field(v, "max_position_embeddings", path, ctx)?.unwrap_or(2048),
        rms_norm_eps: field(v, "rms_norm_eps", path, ctx)?.unwrap_or(1e-6),
        rope_theta,
        attention_bias: field(v, "attention_bias", path, ctx)?.unwrap_or(false),
        mlp_bias: field(v, "mlp_bias", path, ctx)?.unwrap_or(false),
        tie_word_embeddings: field(v, "tie_word_embeddings", path, ctx)?.unwrap_or(false),
        bos_token_id: if v.get("bos_token_id").is_some() { field(v, "bos_token_id", path, ctx)? } else { Some(1) },
        eos_token_ids: eos_token_ids
            .ok_or_else(|| invalid(path, "text_config.eos_token_id: not an id or a list of ids"))?,
    })
}

pub fn vision_config(v: Option<&Value>, path: &Path) -> Result<VisionConfig, ConfigError> {
    let ctx = "vision_config.";
    let Some(v) = v.filter(|v| !v.is_null()) else {
        // LlavaConfig without a vision_config: CLIP ViT-L/14-336, as transformers fills it in.
        return Ok(VisionConfig {
            hidden_size: 1024,
            intermediate_size: 4096,
            num_hidden_layers: 24,
            num_attention_heads: 16,
            num_channels: 3,
            image_size: 336,
            patch_size: 14,
            hidden_act: "quick_gelu".into(),
            layer_norm_eps: 1e-5,
        });
    };
    if let Some(mt) = v.get("model_type").and_then(Value::as_str)
        && mt != "clip_vision_model"
    {
        return Err(invalid(
            path,
            format!("vision_config.model_type {mt:?} is not supported (clip_vision_model only)"),
        ));
    }
    let c = VisionConfig {
        hidden_size: field(v, "hidden_size", path, ctx)?.unwrap_or(768),
        intermediate_size: field(v, "intermediate_size", path, ctx)?.unwrap_or(3072),
        num_hidden_layers: field(v, "num_hidden_layers", path, ctx)?.unwrap_or(12),
        num_attention_heads: field(v, "num_attention_heads", path, ctx)?.unwrap_or(12),
        num_channels: field(v, "num_channels", path, ctx)?.unwrap_or(3),
        image_size: field(v, "image_size", path, ctx)?.unwrap_or(224),
        patch_size: field(v, "patch_size", path, ctx)?.unwrap_or(32),
        hidden_act: field(v, "hidden_act", path, ctx)?.unwrap_or_else(|| "quick_gelu".into()),
        layer_norm_eps: field(v, "layer_norm_eps", path, ctx)?.unwrap_or(1e-5),
    };
    if c.num_attention_heads == 0 || !c.hidden_size.is_multiple_of(c.num_attention_heads) || c.patch_size == 0 {
        return Err(invalid(path, "vision_config: inconsistent sizes"));
    }
    Ok(c)
}

impl LlavaConfig {
    /// Reads `config.json` from a checkpoint directory.
    pub fn from_dir(dir: &Path) -> Result<Self, ConfigError> {
        let path = dir.join("config.json");
        let v = read_json(&path)?;
        Self::from_value(&v, &path)
    }

    /// The shared fields of a `llava` or `llava_next` config.
    pub fn from_value(v: &Value, path: &Path) -> Result<Self, ConfigError> {
        model_type(v, path)?;
        let text = text_config(v.get("text_config").unwrap_or(&Value::Null), path)?;
        let vision = vision_config(v.get("vision_config"), path)?;
        let image_token_id =
            match (field::<u32>(v, "image_token_id", path, "")?, field::<u32>(v, "image_token_index", path, "")?) {
                (Some(a), _) => a,
                (None, Some(b)) => b,
                (None, None) => 32000,
            };
        let vision_feature_layers = match v.get("vision_feature_layer") {
            None | Some(Value::Null) => vec![-2],
            Some(Value::Number(n)) => {
                vec![n.as_i64().ok_or_else(|| invalid(path, "vision_feature_layer: not an integer"))?]
            }
            Some(Value::Array(a)) => a
                .iter()
                .map(|x| x.as_i64().ok_or_else(|| invalid(path, "vision_feature_layer: not a list of integers")))
                .collect::<Result<_, _>>()?,
            Some(_) => return Err(invalid(path, "vision_feature_layer: not an integer or a list")),
        };
        let n_hidden = vision.num_hidden_layers as i64 + 1;
        for &l in &vision_feature_layers {
            if l >= n_hidden || l < -n_hidden {
                return Err(invalid(
                    path,
                    format!("vision_feature_layer {l} is out of range for {n_hidden} hidden states"),
                ));
            }
        }
        let strategy: String =
            field(v, "vision_feature_select_strategy", path, "")?.unwrap_or_else(|| "default".into());
        let select_strategy = match strategy.as_str() {
            "default" => SelectStrategy::Default,
            "full" => SelectStrategy::Full,
            other => return Err(invalid(path, format!("vision_feature_select_strategy {other:?} is not supported"))),
        };
        let projector_hidden_act: String = field(v, "projector_hidden_act", path, "")?.unwrap_or_else(|| "gelu".into());
        if !matches!(projector_hidden_act.as_str(), "gelu" | "quick_gelu" | "silu" | "relu" | "gelu_pytorch_tanh") {
            return Err(invalid(path, format!("projector_hidden_act {projector_hidden_act:?} is not supported")));
        }
        Ok(Self {
            text,
            vision,
            image_token_id,
            image_seq_length: field(v, "image_seq_length", path, "")?.unwrap_or(576),
            projector_hidden_act,
            multimodal_projector_bias: field(v, "multimodal_projector_bias", path, "")?.unwrap_or(true),
            vision_feature_layers,
            select_strategy,
            pad_token_id: field(v, "pad_token_id", path, "")?,
        })
    }

    /// The deepest hidden state the selected feature layers reach (index into transformers'
    /// `hidden_states`, 0 being the embeddings): only the layers up to it are ever run.
    pub fn deepest_vision_layer(&self) -> usize {
        let n_hidden = self.vision.num_hidden_layers as i64 + 1;
        self.vision_feature_layers.iter().map(|&l| if l < 0 { n_hidden + l } else { l }).max().unwrap_or(n_hidden - 1)
            as usize
    }

    /// Image features per image, as the projector emits them.
    pub fn image_features_per_image(&self) -> usize {
        let n = self.vision.num_positions();
        match self.select_strategy {
            SelectStrategy::Default => n - 1,
            SelectStrategy::Full => n,
        }
    }
}

/// Which image processor class the checkpoint names (`image_processor_type`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ImageProcessorKind {
    /// `CLIPImageProcessor`: resize, centre crop, one tile per image.
    Clip,
    /// `LlavaNextImageProcessor`: the CLIP steps on a base image plus an anyres grid of tiles.
    LlavaNext,
}

/// `CLIPImageProcessor` settings, plus `LlavaNextImageProcessor`'s own.
#[derive(Debug, Clone, PartialEq)]
pub struct ImageProcessorConfig {
    /// `None` when the file does not name its class (transformers then goes by the model type).
    pub kind: Option<ImageProcessorKind>,
    pub do_convert_rgb: bool,
    pub do_resize: bool,
    /// `size`: a shortest edge, or an exact (height, width).
    pub size: ResizeTarget,
    pub resample: u32,
    pub do_center_crop: bool,
    /// (height, width)
    pub crop_size: (usize, usize),
    pub do_rescale: bool,
    pub rescale_factor: f64,
    pub do_normalize: bool,
    pub image_mean: [f64; 3],
    pub image_std: [f64; 3],
    /// `LlavaNextImageProcessor`: the anyres resolutions, (height, width); `None` when absent.
    pub image_grid_pinpoints: Option<Vec<(usize, usize)>>,
    /// `LlavaNextImageProcessor`: pad every image of a batch to the same number of tiles. With
    /// one image per call and the model reading only each image's own tiles, it changes nothing.
    pub do_pad: bool,
}

impl ImageProcessorConfig {
    /// The anyres resolutions the processor uses: its own, or `LlavaNextImageProcessor`'s default.
    pub fn grid_pinpoints(&self) -> Vec<(usize, usize)> {
        self.image_grid_pinpoints.clone().unwrap_or_else(|| DEFAULT_GRID_PINPOINTS.to_vec())
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ResizeTarget {
    ShortestEdge(usize),
    Exact { height: usize, width: usize },
}

/// `LlavaProcessor` settings plus its image processor.
#[derive(Debug, Clone, PartialEq)]
pub struct ProcessorConfig {
    pub image: ImageProcessorConfig,
    pub image_token: String,
    pub patch_size: Option<usize>,
    pub num_additional_image_tokens: usize,
    pub vision_feature_select_strategy: Option<String>,
}

fn size_dict(v: &Value, key: &str, path: &Path) -> Result<Option<ResizeTarget>, ConfigError> {
    match v.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Number(n)) => {
            let n = n.as_u64().ok_or_else(|| invalid(path, format!("{key}: not a size")))? as usize;
            Ok(Some(ResizeTarget::ShortestEdge(n)))
        }
        Some(Value::Object(o)) => {
            let get = |k: &str| o.get(k).and_then(Value::as_u64).map(|x| x as usize);
            if let Some(s) = get("shortest_edge") {
                Ok(Some(ResizeTarget::ShortestEdge(s)))
            } else if let (Some(height), Some(width)) = (get("height"), get("width")) {
                Ok(Some(ResizeTarget::Exact { height, width }))
            } else {
                Err(invalid(path, format!("{key}: expected shortest_edge or height and width")))
            }
        }
        Some(_) => Err(invalid(path, format!("{key}: not a size"))),
    }
}

pub fn image_processor(v: &Value, path: &Path) -> Result<ImageProcessorConfig, ConfigError> {
    let ctx = "image processor: ";
    // The class, with or without transformers' backend suffix (`...Fast`, `...Pil`).
    let kind = match v.get("image_processor_type").and_then(Value::as_str) {
        None => None,
        Some(t) if t.starts_with("CLIPImageProcessor") => Some(ImageProcessorKind::Clip),
        Some(t) if t.starts_with("LlavaNextImageProcessor") => Some(ImageProcessorKind::LlavaNext),
        Some(t) => {
            return Err(invalid(
                path,
                format!("image_processor_type {t:?} is not supported (CLIPImageProcessor, LlavaNextImageProcessor)"),
            ));
        }
    };
    let size = size_dict(v, "size", path)?.unwrap_or(ResizeTarget::ShortestEdge(224));
    let crop_size = match size_dict(v, "crop_size", path)? {
        None => (224, 224),
        // An integer crop size means a square (transformers' get_size_dict with default_to_square).
        Some(ResizeTarget::ShortestEdge(n)) => (n, n),
        Some(ResizeTarget::Exact { height, width }) => (height, width),
    };
    let triple = |key: &str, default: [f64; 3]| -> Result<[f64; 3], ConfigError> {
        match field::<Vec<f64>>(v, key, path, ctx)? {
            None => Ok(default),
            Some(x) if x.len() == 3 => Ok([x[0], x[1], x[2]]),
            Some(x) if x.len() == 1 => Ok([x[0]; 3]),
            Some(_) => Err(invalid(path, format!("{key}: expected 3 values"))),
        }
    };
    let resample = field(v, "resample", path, ctx)?.unwrap_or(3u32);
    if resample != 3 {
        return Err(invalid(path, format!("resample {resample} is not supported (bicubic, 3, only)")));
    }
    Ok(ImageProcessorConfig {
        kind,
        do_convert_rgb: field(v, "do_convert_rgb", path, ctx)?.unwrap_or(true),
        do_resize: field(v, "do_resize", path, ctx)?.unwrap_or(true),
        size,
        resample,
        do_center_crop: field(v, "do_center_crop", path, ctx)?.unwrap_or(true),
        crop_size,
        do_rescale: field(v, "do_rescale", path, ctx)?.unwrap_or(true),
        rescale_factor: field(v, "rescale_factor", path, ctx)?.unwrap_or(1.0 / 255.0),
        do_normalize: field(v, "do_normalize", path, ctx)?.unwrap_or(true),
        image_mean: triple("image_mean", [0.48145466, 0.4578275, 0.40821073])?,
        image_std: triple("image_std", [0.26862954, 0.26130258, 0.27577711])?,
        image_grid_pinpoints: grid_pinpoints(v, path, ctx)?,
        do_pad: field(v, "do_pad", path, ctx)?.unwrap_or(true),
    })
}

impl ProcessorConfig {
    /// Reads the processor: `processor_config.json` (with the image processor nested under
    /// `image_processor`, or processor-level fields only) and `preprocessor_config.json`.
    pub fn from_dir(dir: &Path) -> Result<Self, ConfigError> {
        let proc_path = dir.join("processor_config.json");
        let pre_path = dir.join("preprocessor_config.json");
        let proc = if proc_path.is_file() { Some(read_json(&proc_path)?) } else { None };
        let nested = proc.as_ref().and_then(|p| p.get("image_processor")).filter(|v| v.is_object());
        let image = match nested {
            Some(ip) => image_processor(ip, &proc_path)?,
            None if pre_path.is_file() => image_processor(&read_json(&pre_path)?, &pre_path)?,
            None => {
                return Err(ConfigError::Io {
                    path: pre_path,
                    source: std::io::Error::new(
                        std::io::ErrorKind::NotFound,
                        "no image processor: neither processor_config.json's image_processor nor preprocessor_config.json",
                    ),
                });
            }
        };
        let (p, path) = match &proc {
            Some(p) => (p.clone(), proc_path),
            None => (Value::Object(Default::default()), pre_path),
        };
        Ok(Self {
            image,
            image_token: field(&p, "image_token", &path, "")?.unwrap_or_else(|| "<image>".into()),
            patch_size: field(&p, "patch_size", &path, "")?,
            num_additional_image_tokens: field(&p, "num_additional_image_tokens", &path, "")?.unwrap_or(0),
            vision_feature_select_strategy: field(&p, "vision_feature_select_strategy", &path, "")?,
        })
    }

    /// How many `<image>` tokens transformers' `LlavaProcessor` writes for a pixel tensor of
    /// `height` x `width`, or `None` when the processor does not expand (no `patch_size`).
    pub fn num_image_tokens(&self, height: usize, width: usize) -> Option<usize> {
        let p = self.patch_size?;
        let mut n = (height / p) * (width / p) + self.num_additional_image_tokens;
        if self.vision_feature_select_strategy.as_deref() == Some("default") {
            n -= 1;
        }
        Some(n)
    }
}

/// EOS ids from `generation_config.json`, or `None` when the file or the field is absent.
pub fn generation_eos_ids(dir: &Path) -> Result<Option<Vec<u32>>, ConfigError> {
    let path = dir.join("generation_config.json");
    if !path.is_file() {
        return Ok(None);
    }
    let v = read_json(&path)?;
    match v.get("eos_token_id") {
        None | Some(Value::Null) => Ok(None),
        Some(e) => parse_ids(e).map(Some).ok_or_else(|| invalid(&path, "eos_token_id: not an id or a list of ids")),
    }
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;

    use super::*;

    pub(crate) fn fixtures() -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures")
    }

    fn check_tiny(c: &LlavaConfig) {
        assert_eq!(c.image_token_id, 420);
        assert_eq!(c.pad_token_id, Some(421));
        assert_eq!(c.text.hidden_size, 64);
        assert_eq!(c.text.intermediate_size, 128);
        assert_eq!(c.text.num_hidden_layers, 2);
        assert_eq!(c.text.num_attention_heads, 4);
        assert_eq!(c.text.num_key_value_heads, 2);
        assert_eq!(c.text.head_dim, 16);
        assert_eq!(c.text.vocab_size, 448);
        assert_eq!(c.text.rope_theta, 10000.0);
        assert_eq!(c.text.rms_norm_eps, 1e-5);
        assert_eq!(c.text.max_position_embeddings, 4096);
        assert!(!c.text.attention_bias && !c.text.mlp_bias && !c.text.tie_word_embeddings);
        assert_eq!(c.text.eos_token_ids, vec![2]);
        assert_eq!(c.vision.hidden_size, 32);
        assert_eq!(c.vision.intermediate_size, 64);
        assert_eq!(c.vision.num_hidden_layers, 3);
        assert_eq!(c.vision.num_attention_heads, 2);
        assert_eq!(c.vision.image_size, 56);
        assert_eq!(c.vision.patch_size, 14);
        assert_eq!(c.vision.hidden_act, "quick_gelu");
        assert_eq!(c.vision.layer_norm_eps, 1e-5);
        assert_eq!(c.vision_feature_layers, vec![-2]);
        assert_eq!(c.select_strategy, SelectStrategy::Default);
        assert_eq!(c.projector_hidden_act, "gelu");
        assert!(c.multimodal_projector_bias);
        assert_eq!(c.image_features_per_image(), 16);
    }

    fn check_tiny_processor(p: &ProcessorConfig) {
        assert_eq!(p.image.size, ResizeTarget::ShortestEdge(56));
        assert_eq!(p.image.crop_size, (56, 56));
        assert_eq!(p.image.resample, 3);
        assert!(p.image.do_convert_rgb && p.image.do_center_crop && p.image.do_normalize && p.image.do_rescale);
        assert_eq!(p.image.image_mean, [0.48145466, 0.4578275, 0.40821073]);
        assert_eq!(p.image_token, "<image>");
        assert_eq!(p.num_image_tokens(56, 56), Some(16));
    }

    #[test]
    fn new_layout_parses() {
        let dir = fixtures().join("checkpoints/llava_hf");
        let c = LlavaConfig::from_dir(&dir).unwrap();
        check_tiny(&c);
        assert_eq!(c.image_seq_length, 16);
        check_tiny_processor(&ProcessorConfig::from_dir(&dir).unwrap());
        assert_eq!(generation_eos_ids(&dir).unwrap(), Some(vec![2]));
    }

    #[test]
    fn old_layout_fills_defaults() {
        let dir = fixtures().join("checkpoints/llava_hf_old_layout");
        let c = LlavaConfig::from_dir(&dir).unwrap();
        check_tiny(&c);
        assert_eq!(c.image_seq_length, 576); // absent: LlavaConfig's default
        check_tiny_processor(&ProcessorConfig::from_dir(&dir).unwrap());
        assert_eq!(generation_eos_ids(&dir).unwrap(), Some(vec![2]));
    }

    #[test]
    fn real_llava_1_5_7b_config_implies_its_shapes() {
        let dir = Path::new("/work/shared/checkpoints/llava-hf__llava-1.5-7b-hf");
        let dir = std::env::var_os("VLSBENCH_SHARED_CHECKPOINTS")
            .map(|d| PathBuf::from(d).join("llava-hf__llava-1.5-7b-hf"))
            .unwrap_or_else(|| dir.to_owned());
        if !dir.join("config.json").is_file() {
            println!("SKIPPED: {} has no config.json (real llava-1.5-7b-hf config files absent)", dir.display());
            return;
        }
        let c = LlavaConfig::from_dir(&dir).unwrap();
        assert_eq!(c.text.hidden_size, 4096);
        assert_eq!(c.text.intermediate_size, 11008);
        assert_eq!(c.text.num_hidden_layers, 32);
        assert_eq!(c.text.num_attention_heads, 32);
        assert_eq!(c.text.num_key_value_heads, 32);
        assert_eq!(c.text.head_dim, 128);
        assert_eq!(c.text.vocab_size, 32064);
        assert_eq!(c.text.rope_theta, 10000.0);
        assert_eq!(c.text.rms_norm_eps, 1e-5);
        assert_eq!(c.image_token_id, 32000);
        assert_eq!(c.pad_token_id, Some(32001));
        assert_eq!(c.vision.hidden_size, 1024);
        assert_eq!(c.vision.num_hidden_layers, 24);
        assert_eq!(c.vision.num_attention_heads, 16);
        assert_eq!(c.vision.image_size, 336);
        assert_eq!(c.vision.patch_size, 14);
        assert_eq!(c.vision.hidden_act, "quick_gelu");
        assert_eq!(c.vision_feature_layers, vec![-2]);
        assert_eq!(c.image_features_per_image(), 576);
        let p = ProcessorConfig::from_dir(&dir).unwrap();
        assert_eq!(p.image.size, ResizeTarget::ShortestEdge(336));
        assert_eq!(p.image.crop_size, (336, 336));
        assert_eq!(p.num_image_tokens(336, 336), Some(576));
        let eos = generation_eos_ids(&dir).unwrap();
        assert_eq!(eos, Some(vec![2]));
    }

    const FIXTURE_PINPOINTS: [(usize, usize); 5] = [(56, 112), (112, 56), (112, 112), (168, 56), (56, 168)];

    #[test]
    fn llava_next_config_parses() {
        let dir = fixtures().join("checkpoints/llava_next");
        let m = ModelConfig::from_dir(&dir).unwrap();
        assert_eq!(m.model_type, ModelType::LlavaNext);
        assert_eq!(m.model_type.arch(), "llava_next");
        assert_eq!(m.image_grid_pinpoints, FIXTURE_PINPOINTS.to_vec());
        let c = m.llava;
        assert_eq!(c.image_token_id, 405);
        assert_eq!(c.pad_token_id, Some(406));
        assert_eq!(c.text.rope_theta, 500000.0);
        assert_eq!(c.text.intermediate_size, 160);
        assert_eq!(c.text.max_position_embeddings, 8192);
        assert_eq!(c.text.eos_token_ids, vec![404]);
        assert_eq!(c.vision.image_size, 56);
        assert_eq!(c.vision.patch_size, 14);
        assert_eq!(c.select_strategy, SelectStrategy::Default);
        let p = ProcessorConfig::from_dir(&dir).unwrap();
        assert_eq!(p.image.kind, Some(ImageProcessorKind::LlavaNext));
        assert_eq!(p.image.image_grid_pinpoints, Some(FIXTURE_PINPOINTS.to_vec()));
        assert!(p.image.do_pad);
        assert_eq!(p.image.size, ResizeTarget::ShortestEdge(56));
        assert_eq!(p.image.crop_size, (56, 56));
        assert_eq!(p.patch_size, Some(14));
        assert_eq!(p.num_additional_image_tokens, 1);
        assert_eq!(p.vision_feature_select_strategy.as_deref(), Some("default"));
        assert_eq!(generation_eos_ids(&dir).unwrap(), Some(vec![404]));
        // The LLaVA-1.5 checkpoint is model_type llava, with no grid.
        let m = ModelConfig::from_dir(&fixtures().join("checkpoints/llava_hf")).unwrap();
        assert_eq!(m.model_type, ModelType::Llava);
        assert!(m.image_grid_pinpoints.is_empty());
    }

    #[test]
    fn llava_next_missing_fields_take_llava_next_defaults() {
        let v = serde_json::json!({"model_type": "llava_next"});
        let m = ModelConfig::from_value(&v, Path::new("config.json")).unwrap();
        assert_eq!(m.image_grid_pinpoints, DEFAULT_GRID_PINPOINTS.to_vec());
        let c = m.llava;
        assert_eq!(c.image_token_id, 32000);
        assert_eq!(c.image_seq_length, 576);
        assert_eq!(c.vision.image_size, 336);
        assert_eq!(c.vision_feature_layers, vec![-2]);
        let ip = image_processor(
            &serde_json::json!({"image_processor_type": "LlavaNextImageProcessor", "crop_size": 336}),
            Path::new("preprocessor_config.json"),
        )
        .unwrap();
        assert_eq!(ip.kind, Some(ImageProcessorKind::LlavaNext));
        assert_eq!(ip.image_grid_pinpoints, None);
        assert_eq!(ip.grid_pinpoints(), DEFAULT_GRID_PINPOINTS.to_vec());
        assert!(ip.do_pad);
        assert_eq!(ip.size, ResizeTarget::ShortestEdge(224));
        assert_eq!(ip.crop_size, (336, 336));
    }

    #[test]
    fn bad_grid_pinpoints_are_named() {
        for bad in [
            serde_json::json!([]),
            serde_json::json!([[336]]),
            serde_json::json!([[0, 336]]),
            serde_json::json!("anyres"),
        ] {
            let v = serde_json::json!({"model_type": "llava_next", "image_grid_pinpoints": bad});
            let e = ModelConfig::from_value(&v, Path::new("x/config.json")).unwrap_err().to_string();
            assert!(e.contains("x/config.json") && e.contains("image_grid_pinpoints"), "{e}");
        }
        let e =
            image_processor(&serde_json::json!({"image_processor_type": "SiglipImageProcessor"}), Path::new("p.json"))
                .unwrap_err()
                .to_string();
        assert!(e.contains("SiglipImageProcessor") && e.contains("LlavaNextImageProcessor"), "{e}");
    }

    /// llava-hf/llama3-llava-next-8b-hf: its generation_config.json (the one file of it on hand)
    /// and the config facts its SOURCES.md records (nothing else: the vision tower is left to
    /// `LlavaNextConfig`'s default, CLIP ViT-L/14-336).
    #[test]
    fn real_llama3_llava_next_facts() {
        let v = serde_json::json!({
            "architectures": ["LlavaNextForConditionalGeneration"],
            "model_type": "llava_next",
            "image_token_index": 128256,
            "image_grid_pinpoints": [[336, 672], [672, 336], [672, 672], [1008, 336], [336, 1008]],
            "text_config": {"model_type": "llama", "vocab_size": 128320, "rope_theta": 500000.0,
                            "eos_token_id": 128009},
            "torch_dtype": "bfloat16",
            "use_image_newline_parameter": true,
        });
        let m = ModelConfig::from_value(&v, Path::new("config.json")).unwrap();
        assert_eq!(m.model_type, ModelType::LlavaNext);
        assert_eq!(m.image_grid_pinpoints, DEFAULT_GRID_PINPOINTS.to_vec());
        let c = m.llava;
        assert_eq!(c.image_token_id, 128256);
        assert_eq!(c.text.vocab_size, 128320);
        assert_eq!(c.text.rope_theta, 500000.0);
        assert_eq!(c.text.eos_token_ids, vec![128009]);
        assert_eq!(c.image_features_per_image(), 576);

        let dir = std::env::var_os("VLSBENCH_SHARED_CHECKPOINTS")
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from("/work/shared/checkpoints"))
            .join("llava-hf__llama3-llava-next-8b-hf");
        if !dir.join("generation_config.json").is_file() {
            println!("SKIPPED: {} has no generation_config.json (real llama3-llava-next files absent)", dir.display());
            return;
        }
        assert_eq!(generation_eos_ids(&dir).unwrap(), Some(vec![128009]));
    }

    #[test]
    fn wrong_arch_is_named() {
        let v = serde_json::json!({"model_type": "qwen2_vl"});
        let e = LlavaConfig::from_value(&v, Path::new("x/config.json")).unwrap_err().to_string();
        assert!(e.contains("x/config.json") && e.contains("qwen2_vl"), "{e}");
    }
}
