//! A checkpoint's weights as a candle `VarBuilder`: safetensors memory-mapped (`model.safetensors`
//! or the shards its index names), else PyTorch pickles (`pytorch_model.bin` or the shards
//! `pytorch_model.bin.index.json` names) read into memory; plus the helpers every model loader
//! uses to find a weight prefix and to name a missing weight.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor};
use candle_nn::{Linear, VarBuilder};
use serde_json::Value;

use crate::{ModelError, Result};

/// The weight files of a folder, by format.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WeightFiles {
    Safetensors(Vec<PathBuf>),
    Pickle(Vec<PathBuf>),
}

/// The files an index's `weight_map` names, each checked to exist.
fn indexed_files(dir: &Path, index: &Path) -> Result<Vec<PathBuf>> {
    let text = std::fs::read_to_string(index).map_err(|e| ModelError::Load(format!("{}: {e}", index.display())))?;
    let v: Value = serde_json::from_str(&text).map_err(|e| ModelError::Load(format!("{}: {e}", index.display())))?;
    let map = v
        .get("weight_map")
        .and_then(Value::as_object)
        .ok_or_else(|| ModelError::Load(format!("{}: no weight_map", index.display())))?;
    let mut files: Vec<PathBuf> = map.values().filter_map(Value::as_str).map(|f| dir.join(f)).collect();
    files.sort();
    files.dedup();
    if let Some(missing) = files.iter().find(|f| !f.is_file()) {
        return Err(ModelError::Load(format!("{} names {}, which is missing", index.display(), missing.display())));
    }
    Ok(files)
}

/// The safetensors files of a checkpoint: `model.safetensors`, or the shards an index names.
pub fn safetensors_files(dir: &Path) -> Result<Vec<PathBuf>> {
    let single = dir.join("model.safetensors");
    if single.is_file() {
        return Ok(vec![single]);
    }
    let index = dir.join("model.safetensors.index.json");
    if index.is_file() {
        return indexed_files(dir, &index);
    }
    Err(ModelError::Load(format!(
        "{}: no model.safetensors or model.safetensors.index.json (missing weights)",
        dir.display()
    )))
}

/// The weight files of a folder: safetensors when present, else PyTorch pickles.
pub fn weight_files(dir: &Path) -> Result<WeightFiles> {
    let safetensors_present =
        dir.join("model.safetensors").is_file() || dir.join("model.safetensors.index.json").is_file();
    if safetensors_present {
        return Ok(WeightFiles::Safetensors(safetensors_files(dir)?));
    }
    let single = dir.join("pytorch_model.bin");
    if single.is_file() {
        return Ok(WeightFiles::Pickle(vec![single]));
    }
    let index = dir.join("pytorch_model.bin.index.json");
    if !index.is_file() {
        return Err(ModelError::Load(format!(
            "{}: no weights (model.safetensors, model.safetensors.index.json, pytorch_model.bin or pytorch_model.bin.index.json)",
            dir.display()
        )));
    }
    Ok(WeightFiles::Pickle(indexed_files(dir, &index)?))
}

/// A `VarBuilder` over a folder's weights in `dtype` on `device`: safetensors memory-mapped,
/// pickles read into memory.
pub fn var_builder(dir: &Path, dtype: DType, device: &Device) -> Result<VarBuilder<'static>> {
    match weight_files(dir)? {
        WeightFiles::Safetensors(files) => {
            // SAFETY: the files are memory-mapped read-only and never written by this process; a
            // file changed underneath a running process is outside what any mmap-based loader can
            // prevent.
            unsafe { VarBuilder::from_mmaped_safetensors(&files, dtype, device) }
                .map_err(|e| ModelError::Load(format!("{}: {e}", dir.display())))
        }
        WeightFiles::Pickle(files) => {
            let mut tensors: HashMap<String, Tensor> = HashMap::new();
            for f in &files {
                let read = candle_core::pickle::read_all(f).map_err(|e| {
                    ModelError::Load(format!("{}: not a readable PyTorch checkpoint: {e}", f.display()))
                })?;
                for (name, t) in read {
                    tensors.insert(name, t.to_device(device)?);
                }
            }
            Ok(VarBuilder::from_tensors(tensors, dtype, device))
        }
    }
}

/// The first of `candidates` under which `probe` exists (checkpoints of one model name their
/// weights differently across transformers versions).
pub fn pick_prefix<'a>(vb: &VarBuilder, candidates: &[&'a str], probe: &str) -> Option<&'a str> {
    candidates.iter().copied().find(|p| vb.contains_tensor(&format!("{p}{probe}")))
}

/// An error naming the weight when `vb` lacks `name` (candle's own message does not say which).
pub fn need(vb: &VarBuilder, name: &str) -> Result<()> {
    if vb.contains_tensor(name) {
        Ok(())
    } else {
        Err(ModelError::Load(format!("missing weight {}", vb.prefix().to_owned() + "." + name)))
    }
}

/// A linear layer `in_dim` → `out_dim`, its missing weight named.
pub fn linear(vb: VarBuilder, in_dim: usize, out_dim: usize, bias: bool) -> Result<Linear> {
    need(&vb, "weight")?;
    Ok(candle_nn::linear_b(in_dim, out_dim, bias, vb)?)
}
