//! The three graphs of a transformers.js-layout export (`onnx/vision_encoder.onnx`,
//! `onnx/embed_tokens.onnx`, `onnx/decoder_model_merged.onnx`), what their inputs say, and
//! running them on plain `f32` rows; the element type a graph asks for (f32 or f16) is converted
//! at its edge, so `dtype` follows the graph.
//!
//! The decoder's layout is read from the graph itself: `inputs_embeds`, `attention_mask`,
//! `position_ids` ((b, s), or (3, b, s) for M-RoPE), optionally `use_cache_branch` (older
//! optimum exports), and `past_key_values.{i}.key/value` (b, kv_heads, past, head_dim) in, `logits`
//! and `present.{i}.key/value` out. [`DecoderLayout::check_against`] holds it against the
//! checkpoint's `config.json` so a mismatched export fails at load, naming the file.

use std::borrow::Cow;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use half::f16;
use ort::session::{Session, SessionInputValue};
pub use ort::value::TensorElementType;
use ort::value::{DynValue, Tensor, ValueType};

use crate::runtime::{Runtime, RuntimeError};

/// Why a graph cannot be used or run; every message names the graph's file.
#[derive(Debug, thiserror::Error)]
pub enum GraphError {
    #[error(transparent)]
    Runtime(#[from] RuntimeError),
    #[error("{path}: {message}")]
    Layout { path: PathBuf, message: String },
    #[error("{path}: running the graph failed: {message}")]
    Run { path: PathBuf, message: String },
}

pub type Result<T> = std::result::Result<T, GraphError>;

/// The element types a graph's float inputs and outputs may have.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Elem {
    F32,
    F16,
}

impl Elem {
    fn of(path: &Path, name: &str, ty: TensorElementType) -> Result<Self> {
        match ty {
            TensorElementType::Float32 => Ok(Self::F32),
            TensorElementType::Float16 => Ok(Self::F16),
            other => Err(GraphError::Layout {
                path: path.to_owned(),
                message: format!("input {name} is {other:?}; f32 and f16 graphs are served"),
            }),
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Self::F32 => "f32",
            Self::F16 => "f16",
        }
    }
}

/// One graph and its file.
pub struct Graph {
    pub path: PathBuf,
    session: Mutex<Session>,
    /// (name, element type, shape with -1 for dynamic axes) of each input.
    pub inputs: Vec<(String, Option<TensorElementType>, Vec<i64>)>,
    pub outputs: Vec<String>,
}

impl Graph {
    pub fn open(rt: &Runtime, path: PathBuf, device: &str, threads: usize) -> Result<Self> {
        if !path.is_file() {
            return Err(GraphError::Layout {
                path,
                message: "not found (the transformers.js layout keeps the graphs under onnx/)".into(),
            });
        }
        let session = rt.session(&path, device, threads)?;
        let inputs = session
            .inputs()
            .iter()
            .map(|i| match i.dtype() {
                ValueType::Tensor { ty, shape, .. } => (i.name().to_owned(), Some(*ty), shape.to_vec()),
                _ => (i.name().to_owned(), None, vec![]),
            })
            .collect();
        let outputs = session.outputs().iter().map(|o| o.name().to_owned()).collect();
        Ok(Self { path, session: Mutex::new(session), inputs, outputs })
    }

    pub fn input(&self, name: &str) -> Option<&(String, Option<TensorElementType>, Vec<i64>)> {
        self.inputs.iter().find(|i| i.0 == name)
    }

    fn layout(&self, message: impl Into<String>) -> GraphError {
        GraphError::Layout { path: self.path.clone(), message: message.into() }
    }

    fn elem_of(&self, name: &str) -> Result<Elem> {
        let (_, ty, _) = self.input(name).ok_or_else(|| self.layout(format!("no input {name}")))?;
        Elem::of(&self.path, name, ty.ok_or_else(|| self.layout(format!("input {name} is not a tensor")))?)
    }

    /// Runs the graph on named inputs; returns the named outputs in the order asked.
    pub fn run(
        &self,
        inputs: Vec<(Cow<'static, str>, SessionInputValue<'static>)>,
        want: &[&str],
    ) -> Result<Vec<DynValue>> {
        let mut s = self.session.lock().unwrap_or_else(|p| p.into_inner());
        let run_err = |e: &dyn std::fmt::Display| GraphError::Run { path: self.path.clone(), message: e.to_string() };
        let mut out = s.run(inputs).map_err(|e| run_err(&e))?;
        want.iter().map(|n| out.remove(*n).ok_or_else(|| self.layout(format!("no output {n}")))).collect()
    }
}

/// A float tensor in `elem` from f32 values.
pub fn float_tensor(shape: Vec<i64>, data: &[f32], elem: Elem) -> Result<DynValue> {
    let r = match elem {
        Elem::F32 => Tensor::from_array((shape, data.to_vec())).map(|t| t.into_dyn()),
        Elem::F16 => Tensor::from_array((shape, data.iter().map(|&x| f16::from_f32(x)).collect::<Vec<_>>()))
            .map(|t| t.into_dyn()),
    };
    r.map_err(|e| GraphError::Run { path: PathBuf::from("(input tensor)"), message: e.to_string() })
}

pub fn i64_tensor(shape: Vec<i64>, data: Vec<i64>) -> Result<DynValue> {
    Tensor::from_array((shape, data))
        .map(|t| t.into_dyn())
        .map_err(|e| GraphError::Run { path: PathBuf::from("(input tensor)"), message: e.to_string() })
}

/// A float output's shape and values in f32.
pub fn to_f32(path: &Path, v: &DynValue) -> Result<(Vec<i64>, Vec<f32>)> {
    let err = |e: &dyn std::fmt::Display| GraphError::Run { path: path.to_owned(), message: e.to_string() };
    if let Ok((shape, data)) = v.try_extract_tensor::<f32>() {
        return Ok((shape.to_vec(), data.to_vec()));
    }
    let (shape, data) = v.try_extract_tensor::<f16>().map_err(|e| err(&e))?;
    Ok((shape.to_vec(), data.iter().map(|x| x.to_f32()).collect()))
}

/// What the decoder graph's inputs say.
#[derive(Debug, Clone, PartialEq)]
pub struct DecoderLayout {
    pub layers: usize,
    pub kv_heads: usize,
    pub head_dim: usize,
    pub hidden: Option<usize>,
    /// Rows of `position_ids`: 1 ((b, s)) or 3 (M-RoPE's (3, b, s)); 0: the graph takes none.
    pub position_rows: usize,
    pub use_cache_branch: bool,
    pub elem: Elem,
    pub kv_elem: Elem,
}

impl DecoderLayout {
    /// Reads the layout from the decoder's inputs: `inputs` as (name, element type, shape).
    pub fn from_inputs(path: &Path, inputs: &[(String, Option<TensorElementType>, Vec<i64>)]) -> Result<Self> {
        let layout = |m: String| GraphError::Layout { path: path.to_owned(), message: m };
        let find = |n: &str| inputs.iter().find(|i| i.0 == n);
        for need in ["inputs_embeds", "attention_mask"] {
            if find(need).is_none() {
                let names: Vec<&str> = inputs.iter().map(|i| i.0.as_str()).collect();
                return Err(layout(format!("the decoder has no input {need} (inputs: {names:?})")));
            }
        }
        let ty = |n: &str| find(n).and_then(|i| i.1).ok_or_else(|| layout(format!("input {n} is not a tensor")));
        let elem = Elem::of(path, "inputs_embeds", ty("inputs_embeds")?)?;
        let hidden = find("inputs_embeds").and_then(|i| i.2.get(2)).and_then(|&d| usize::try_from(d).ok());
        let mut layers = 0;
        while find(&format!("past_key_values.{layers}.key")).is_some() {
            if find(&format!("past_key_values.{layers}.value")).is_none() {
                return Err(layout(format!("past_key_values.{layers}.key has no .value beside it")));
            }
            layers += 1;
        }
        if layers == 0 {
            return Err(layout(
                "the decoder takes no past_key_values.{i}.key/value: not a merged decoder with a KV cache".into(),
            ));
        }
        let k0 = find("past_key_values.0.key").map(|i| i.2.clone()).unwrap_or_default();
        let dim = |i: usize, what: &str| {
            k0.get(i)
                .and_then(|&d| usize::try_from(d).ok())
                .ok_or_else(|| layout(format!("past_key_values.0.key has no fixed {what} (shape {k0:?})")))
        };
        let kv_heads = dim(1, "head count")?;
        let head_dim = dim(3, "head size")?;
        let kv_elem = Elem::of(path, "past_key_values.0.key", ty("past_key_values.0.key")?)?;
        let position_rows = match find("position_ids").map(|i| i.2.len()) {
            None => 0,
            Some(2) => 1,
            Some(3) => 3,
            Some(r) => return Err(layout(format!("position_ids has rank {r}; (b, s) or (3, b, s) are served"))),
        };
        let use_cache_branch = find("use_cache_branch").is_some();
        Ok(Self { layers, kv_heads, head_dim, hidden, position_rows, use_cache_branch, elem, kv_elem })
    }

    /// The layout must agree with `config.json`'s text model.
    pub fn check_against(&self, path: &Path, expect: &ExpectedDecoder) -> Result<()> {
        let mut bad = Vec::new();
        if self.layers != expect.layers {
            bad.push(format!("{} layers of past_key_values, config.json has {}", self.layers, expect.layers));
        }
        if self.kv_heads != expect.kv_heads {
            bad.push(format!("{} key/value heads, config.json has {}", self.kv_heads, expect.kv_heads));
        }
        if self.head_dim != expect.head_dim {
            bad.push(format!("head size {}, config.json has {}", self.head_dim, expect.head_dim));
        }
        if let Some(h) = self.hidden.filter(|&h| h != expect.hidden) {
            bad.push(format!("inputs_embeds of width {h}, config.json's hidden_size is {}", expect.hidden));
        }
        if self.position_rows != expect.position_rows {
            bad.push(format!("position_ids with {} rows, the arch needs {}", self.position_rows, expect.position_rows));
        }
        if bad.is_empty() {
            Ok(())
        } else {
            Err(GraphError::Layout {
                path: path.to_owned(),
                message: format!("does not fit config.json: {}", bad.join("; ")),
            })
        }
    }
}

/// What `config.json` says the decoder graph must take.
#[derive(Debug, Clone, PartialEq)]
pub struct ExpectedDecoder {
    pub layers: usize,
    pub kv_heads: usize,
    pub head_dim: usize,
    pub hidden: usize,
    pub position_rows: usize,
}

/// The three graphs of one export.
pub struct Graphs {
    pub vision: Graph,
    pub embed: Graph,
    pub decoder: Graph,
    pub layout: DecoderLayout,
    /// The element types the vision and embedding graphs take (`pixel_values`) and give.
    pub vision_elem: Elem,
}

/// The graph files of an export folder.
pub fn graph_paths(dir: &Path) -> [PathBuf; 3] {
    let onnx = dir.join("onnx");
    [onnx.join("vision_encoder.onnx"), onnx.join("embed_tokens.onnx"), onnx.join("decoder_model_merged.onnx")]
}

impl Graphs {
    pub fn open(rt: &Runtime, dir: &Path, device: &str, threads: usize, expect: &ExpectedDecoder) -> Result<Self> {
        let [v, e, d] = graph_paths(dir);
        let decoder = Graph::open(rt, d, device, threads)?;
        let layout = DecoderLayout::from_inputs(&decoder.path, &decoder.inputs)?;
        layout.check_against(&decoder.path, expect)?;
        let vision = Graph::open(rt, v, device, threads)?;
        let vision_elem = vision.elem_of("pixel_values")?;
        let embed = Graph::open(rt, e, device, threads)?;
        if embed.input("input_ids").is_none() {
            return Err(embed.layout("the embedding graph has no input input_ids"));
        }
        Ok(Self { vision, embed, decoder, layout, vision_elem })
    }

    /// `embed_tokens` for one row of ids: (n, hidden) row-major.
    pub fn embed(&self, ids: &[u32]) -> Result<Vec<f32>> {
        let t = i64_tensor(vec![1, ids.len() as i64], ids.iter().map(|&i| i64::from(i)).collect())?;
        let out = self.embed.run(vec![("input_ids".into(), t.into())], &["inputs_embeds"])?;
        Ok(to_f32(&self.embed.path, &out[0])?.1)
    }

    /// The vision encoder on `pixel_values` of `shape` (plus `grid_thw` for Qwen2-VL): the image
    /// features, flattened to (tokens, hidden) row-major.
    pub fn vision(&self, shape: Vec<i64>, pixels: &[f32], grid_thw: Option<[usize; 3]>) -> Result<Vec<f32>> {
        let mut inputs: Vec<(Cow<'static, str>, SessionInputValue<'static>)> =
            vec![("pixel_values".into(), float_tensor(shape, pixels, self.vision_elem)?.into())];
        if let Some(g) = grid_thw {
            let name = ["grid_thw", "image_grid_thw"]
                .into_iter()
                .find(|n| self.vision.input(n).is_some())
                .ok_or_else(|| self.vision.layout("the vision encoder takes no grid_thw"))?;
            inputs.push((name.into(), i64_tensor(vec![1, 3], g.iter().map(|&x| x as i64).collect())?.into()));
        }
        let name = self.vision.outputs.first().cloned().unwrap_or_else(|| "image_features".into());
        let out = self.vision.run(inputs, &[name.as_str()])?;
        Ok(to_f32(&self.vision.path, &out[0])?.1)
    }

    /// An empty KV cache for a batch of `b`.
    pub fn empty_past(&self, b: usize) -> Result<Vec<DynValue>> {
        let l = &self.layout;
        (0..2 * l.layers)
            .map(|_| float_tensor(vec![b as i64, l.kv_heads as i64, 0, l.head_dim as i64], &[], l.kv_elem))
            .collect()
    }

    /// One decoder call: `embeds` (b, s, hidden) row-major, `mask` (b, past + s), `positions`
    /// (rows, b, s) flattened, the past from the last call. Returns each row's last logits (b,
    /// vocab) and the new past.
    pub fn decode(
        &self,
        b: usize,
        s: usize,
        embeds: &[f32],
        mask: &[i64],
        positions: &[i64],
        past: Vec<DynValue>,
    ) -> Result<(Vec<f32>, usize, Vec<DynValue>)> {
        let l = &self.layout;
        let hidden = embeds.len() / (b * s).max(1);
        let total = mask.len() / b.max(1);
        let mut inputs: Vec<(Cow<'static, str>, SessionInputValue<'static>)> = vec![
            ("inputs_embeds".into(), float_tensor(vec![b as i64, s as i64, hidden as i64], embeds, l.elem)?.into()),
            ("attention_mask".into(), i64_tensor(vec![b as i64, total as i64], mask.to_vec())?.into()),
        ];
        match l.position_rows {
            0 => {}
            1 => inputs.push(("position_ids".into(), i64_tensor(vec![b as i64, s as i64], positions.to_vec())?.into())),
            r => inputs.push((
                "position_ids".into(),
                i64_tensor(vec![r as i64, b as i64, s as i64], positions.to_vec())?.into(),
            )),
        }
        if l.use_cache_branch {
            let first = past.first().and_then(|p| p.shape().get(2).copied()).unwrap_or(0) > 0;
            let t = Tensor::from_array((vec![1i64], vec![first]))
                .map_err(|e| GraphError::Run { path: self.decoder.path.clone(), message: e.to_string() })?;
            inputs.push(("use_cache_branch".into(), t.into_dyn().into()));
        }
        for (i, v) in past.into_iter().enumerate() {
            let kv = if i % 2 == 0 { "key" } else { "value" };
            inputs.push((format!("past_key_values.{}.{kv}", i / 2).into(), v.into()));
        }
        let mut want = vec!["logits".to_owned()];
        for i in 0..l.layers {
            want.push(format!("present.{i}.key"));
            want.push(format!("present.{i}.value"));
        }
        let want_ref: Vec<&str> = want.iter().map(String::as_str).collect();
        let mut out = self.decoder.run(inputs, &want_ref)?;
        let present = out.split_off(1);
        let (shape, logits) = to_f32(&self.decoder.path, &out[0])?;
        let vocab = shape.last().copied().unwrap_or(0) as usize;
        let steps = shape.get(1).copied().unwrap_or(1) as usize;
        // Each row's last position.
        let mut last = Vec::with_capacity(b * vocab);
        for r in 0..b {
            let at = (r * steps + steps - 1) * vocab;
            last.extend_from_slice(&logits[at..at + vocab]);
        }
        Ok((last, vocab, present))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn input(name: &str, ty: TensorElementType, shape: &[i64]) -> (String, Option<TensorElementType>, Vec<i64>) {
        (name.to_owned(), Some(ty), shape.to_vec())
    }

    fn qwen_like(layers: usize) -> Vec<(String, Option<TensorElementType>, Vec<i64>)> {
        let mut v = vec![
            input("inputs_embeds", TensorElementType::Float32, &[-1, -1, 64]),
            input("attention_mask", TensorElementType::Int64, &[-1, -1]),
            input("position_ids", TensorElementType::Int64, &[3, -1, -1]),
        ];
        for i in 0..layers {
            v.push(input(&format!("past_key_values.{i}.key"), TensorElementType::Float32, &[-1, 2, -1, 16]));
            v.push(input(&format!("past_key_values.{i}.value"), TensorElementType::Float32, &[-1, 2, -1, 16]));
        }
        v
    }

    #[test]
    fn the_decoder_layout_is_read_from_its_inputs() {
        let l = DecoderLayout::from_inputs(Path::new("d.onnx"), &qwen_like(2)).unwrap();
        assert_eq!((l.layers, l.kv_heads, l.head_dim, l.position_rows, l.hidden), (2, 2, 16, 3, Some(64)));
        assert_eq!((l.elem, l.use_cache_branch), (Elem::F32, false));
    }

    #[test]
    fn a_decoder_without_a_kv_cache_is_refused_naming_the_file() {
        let inputs = qwen_like(0);
        let e = DecoderLayout::from_inputs(Path::new("/m/onnx/decoder_model_merged.onnx"), &inputs).unwrap_err();
        let e = e.to_string();
        assert!(e.contains("/m/onnx/decoder_model_merged.onnx") && e.contains("past_key_values"), "{e}");
    }

    #[test]
    fn a_layout_that_does_not_fit_the_config_names_each_difference() {
        let l = DecoderLayout::from_inputs(Path::new("d.onnx"), &qwen_like(2)).unwrap();
        let want = ExpectedDecoder { layers: 3, kv_heads: 2, head_dim: 16, hidden: 64, position_rows: 1 };
        let e = l.check_against(Path::new("d.onnx"), &want).unwrap_err().to_string();
        assert!(
            e.contains("2 layers") && e.contains("config.json has 3") && e.contains("position_ids with 3 rows"),
            "{e}"
        );
    }
}
