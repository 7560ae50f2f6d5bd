//! A checkpoint's weights as a candle `VarBuilder`: safetensors (`model.safetensors` or the shards
//! its index names) read one tensor at a time when the model asks for it, else PyTorch pickles
//! (`pytorch_model.bin` or the shards `pytorch_model.bin.index.json` names) read into memory; plus
//! the helpers every model loader uses to find a weight prefix and to name a missing weight.
//!
//! Why safetensors are read, not memory-mapped: candle's CPU tensors own their memory, so a tensor
//! loaded from a memory-mapped file is a copy, and every mapped page it was copied from stays in
//! the process's resident set until the whole map is dropped at the end of loading. With
//! `from_mmaped_safetensors` a checkpoint whose file dtype is the run's dtype peaked at twice its
//! weight bytes (28 GB for a 14 GB f16 7B checkpoint, more than a 24 GB machine has). Reading each
//! tensor's bytes with a positioned read goes through the page cache, which is not resident memory
//! of ours, so loading peaks at the weights plus one tensor.

use std::collections::HashMap;
use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

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
    let text =
        crate::fsread::read_small_text(index).map_err(|e| ModelError::Load(format!("{}: {e}", index.display())))?;
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

/// A `VarBuilder` over a folder's weights in `dtype` on `device`: safetensors read a tensor at a
/// time (see the module docs), pickles read into memory.
pub fn var_builder(dir: &Path, dtype: DType, device: &Device) -> Result<VarBuilder<'static>> {
    match weight_files(dir)? {
        WeightFiles::Safetensors(files) => {
            let reader = SafetensorsReader::open(&files)?;
            Ok(VarBuilder::from_backend(Box::new(reader), dtype, device.clone()))
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

/// Where one tensor lies in a safetensors file: its dtype, shape and byte range after the header.
#[derive(Debug, Clone)]
struct TensorEntry {
    file: usize,
    dtype: DType,
    shape: Vec<usize>,
    start: u64,
    end: u64,
}

/// The safetensors files of a checkpoint, their headers parsed once; a tensor's bytes are read
/// when a model loader asks for it (candle's `SimpleBackend`).
struct SafetensorsReader {
    files: Vec<(PathBuf, Mutex<File>)>,
    tensors: HashMap<String, TensorEntry>,
}

/// The largest safetensors header accepted (the format's own reference reader refuses over 100 MB).
const MAX_HEADER_BYTES: u64 = 100_000_000;

impl SafetensorsReader {
    fn open(paths: &[PathBuf]) -> Result<Self> {
        let mut files = Vec::new();
        let mut tensors = HashMap::new();
        for (i, path) in paths.iter().enumerate() {
            let bad =
                |why: String| ModelError::Load(format!("{}: not a readable safetensors file: {why}", path.display()));
            let mut f = File::open(path).map_err(|e| bad(e.to_string()))?;
            let len = f.metadata().map_err(|e| bad(e.to_string()))?.len();
            let mut n = [0u8; 8];
            f.read_exact(&mut n).map_err(|e| bad(format!("no header length ({e})")))?;
            let header_len = u64::from_le_bytes(n);
            if header_len > MAX_HEADER_BYTES || 8 + header_len > len {
                return Err(bad(format!("header length {header_len} does not fit a {len}-byte file")));
            }
            let mut header = vec![0u8; header_len as usize];
            f.read_exact(&mut header).map_err(|e| bad(format!("truncated header ({e})")))?;
            let header: serde_json::Map<String, Value> =
                serde_json::from_slice(&header).map_err(|e| bad(format!("header is not JSON ({e})")))?;
            let data_start = 8 + header_len;
            for (name, info) in header {
                if name == "__metadata__" {
                    continue;
                }
                let entry = parse_entry(&name, &info, i, data_start, len).map_err(bad)?;
                tensors.insert(name, entry);
            }
            files.push((path.clone(), Mutex::new(f)));
        }
        Ok(Self { files, tensors })
    }

    /// The tensor `name` as stored, on `device`.
    fn read(&self, name: &str, device: &Device) -> candle_core::Result<Tensor> {
        let e = self
            .tensors
            .get(name)
            .ok_or_else(|| candle_core::Error::CannotFindTensor { path: name.to_owned() }.bt())?;
        let (path, file) = &self.files[e.file];
        let mut bytes = vec![0u8; (e.end - e.start) as usize];
        {
            let mut f = file.lock().map_err(|_| candle_core::Error::Msg("a weight read panicked".into()))?;
            f.seek(SeekFrom::Start(e.start))
                .and_then(|_| f.read_exact(&mut bytes))
                .map_err(|err| candle_core::Error::Msg(format!("{}: reading {name}: {err}", path.display())))?;
        }
        Tensor::from_raw_buffer(&bytes, e.dtype, &e.shape, device)
    }
}

/// One header entry: `{"dtype": "BF16", "shape": [..], "data_offsets": [start, end]}`, checked
/// against the file's length and the dtype's size.
fn parse_entry(
    name: &str,
    info: &Value,
    file: usize,
    data_start: u64,
    len: u64,
) -> std::result::Result<TensorEntry, String> {
    let dtype = match info.get("dtype").and_then(Value::as_str) {
        Some("F32") => DType::F32,
        Some("F16") => DType::F16,
        Some("BF16") => DType::BF16,
        Some("F64") => DType::F64,
        Some("I64") => DType::I64,
        Some("I32") => DType::I32,
        Some("I16") => DType::I16,
        Some("U32") => DType::U32,
        Some("U8") => DType::U8,
        other => return Err(format!("tensor {name} has dtype {other:?}, which cannot be loaded")),
    };
    let shape: Vec<usize> = info
        .get("shape")
        .and_then(Value::as_array)
        .and_then(|a| a.iter().map(|d| d.as_u64().and_then(|d| usize::try_from(d).ok())).collect())
        .ok_or_else(|| format!("tensor {name} has no shape"))?;
    let offsets: Vec<u64> = info
        .get("data_offsets")
        .and_then(Value::as_array)
        .and_then(|a| a.iter().map(Value::as_u64).collect())
        .filter(|o: &Vec<u64>| o.len() == 2)
        .ok_or_else(|| format!("tensor {name} has no data_offsets"))?;
    let (start, end) = (data_start + offsets[0], data_start + offsets[1]);
    let elems = shape.iter().try_fold(1u64, |n, &d| n.checked_mul(d as u64));
    let want = elems.and_then(|n| n.checked_mul(dtype.size_in_bytes() as u64));
    if end < start || end > len || want != Some(end - start) {
        return Err(format!(
            "tensor {name} ({dtype:?} {shape:?}) has bytes {}..{} of a {len}-byte file",
            offsets[0], offsets[1]
        ));
    }
    Ok(TensorEntry { file, dtype, shape, start, end })
}

impl candle_nn::var_builder::SimpleBackend for SafetensorsReader {
    fn get(
        &self,
        s: candle_core::Shape,
        name: &str,
        _: candle_nn::Init,
        dtype: DType,
        dev: &Device,
    ) -> candle_core::Result<Tensor> {
        let t = self.read(name, dev)?.to_dtype(dtype)?;
        if t.shape() != &s {
            return Err(candle_core::Error::UnexpectedShape {
                msg: format!("shape mismatch for {name}"),
                expected: s,
                got: t.shape().clone(),
            }
            .bt());
        }
        Ok(t)
    }

    fn get_unchecked(&self, name: &str, dtype: DType, dev: &Device) -> candle_core::Result<Tensor> {
        self.read(name, dev)?.to_dtype(dtype)
    }

    fn contains_tensor(&self, name: &str) -> bool {
        self.tensors.contains_key(name)
    }
}

/// The first of `candidates` under which `probe` exists (checkpoints of one model name their
/// weights differently across transformers versions).
pub fn pick_prefix<'a>(vb: &VarBuilder, candidates: &[&'a str], probe: &str) -> Option<&'a str> {
    candidates.iter().copied().find(|p| vb.contains_tensor(&format!("{p}{probe}")))
}

/// [`pick_prefix`], or a load error naming the folder, the part whose weights are missing
/// (`what`) and the weight looked for (`example`).
pub fn require_prefix<'a>(
    vb: &VarBuilder,
    dir: &Path,
    candidates: &[&'a str],
    probe: &str,
    what: &str,
    example: &str,
) -> Result<&'a str> {
    pick_prefix(vb, candidates, probe)
        .ok_or_else(|| ModelError::Load(format!("{}: no {what} weights ({example})", dir.display())))
}

/// `vb` under a prefix [`pick_prefix`] found (its trailing dot dropped).
pub fn under<'a>(vb: &VarBuilder<'a>, prefix: &str) -> VarBuilder<'a> {
    vb.pp(prefix.trim_end_matches('.'))
}

/// A load error naming the folder and the part that failed to load.
pub fn load_error(dir: &Path, part: &str, e: impl std::fmt::Display) -> ModelError {
    ModelError::Load(format!("{}: {part}: {e}", dir.display()))
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{fixtures, temp_dir};

    #[test]
    fn tensors_read_one_at_a_time_equal_candles_memory_mapped_ones() {
        let dir = fixtures().join("checkpoints/qwen2vl");
        let files = safetensors_files(&dir).unwrap();
        let reader = SafetensorsReader::open(&files).unwrap();
        // SAFETY: read-only map of a committed fixture nobody writes during the test.
        let mapped = unsafe { candle_core::safetensors::MmapedSafetensors::multi(&files) }.unwrap();
        assert!(!reader.tensors.is_empty());
        for name in reader.tensors.keys() {
            let ours = reader.read(name, &Device::Cpu).unwrap();
            let theirs = mapped.load(name, &Device::Cpu).unwrap();
            assert_eq!(ours.dtype(), theirs.dtype(), "{name}");
            assert_eq!(ours.dims(), theirs.dims(), "{name}");
            let diff = (ours.to_dtype(DType::F64).unwrap() - theirs.to_dtype(DType::F64).unwrap())
                .unwrap()
                .abs()
                .unwrap()
                .flatten_all()
                .unwrap()
                .max(0)
                .unwrap()
                .to_scalar::<f64>()
                .unwrap_or(0.0);
            assert_eq!(diff, 0.0, "{name}");
        }
    }

    #[test]
    fn a_var_builder_converts_to_the_run_dtype_and_checks_shapes() {
        let dir = fixtures().join("checkpoints/qwen2vl");
        let vb = var_builder(&dir, DType::BF16, &Device::Cpu).unwrap();
        let reader = SafetensorsReader::open(&safetensors_files(&dir).unwrap()).unwrap();
        let (name, e) = reader.tensors.iter().find(|(_, e)| e.shape.len() == 2).unwrap();
        let t = vb.get(e.shape.as_slice(), name).unwrap();
        assert_eq!(t.dtype(), DType::BF16);
        let wrong: Vec<usize> = e.shape.iter().map(|d| d + 1).collect();
        let err = vb.get(wrong.as_slice(), name).unwrap_err().to_string();
        assert!(err.contains("shape mismatch"), "{err}");
    }

    #[test]
    fn a_truncated_or_lying_header_is_an_error_naming_the_file() {
        let dir = temp_dir("weights-bad-header");
        let path = dir.join("model.safetensors");
        std::fs::write(&path, [0xff, 0xff, 0xff, 0xff, 0, 0, 0, 0, b'{']).unwrap();
        let err = SafetensorsReader::open(std::slice::from_ref(&path)).err().unwrap().to_string();
        assert!(err.contains("model.safetensors") && err.contains("header length"), "{err}");

        let header = br#"{"w":{"dtype":"F32","shape":[4,4],"data_offsets":[0,64]}}"#;
        let mut bytes = (header.len() as u64).to_le_bytes().to_vec();
        bytes.extend_from_slice(header);
        bytes.extend_from_slice(&[0u8; 16]); // 16 of the 64 bytes the header promises
        std::fs::write(&path, &bytes).unwrap();
        let err = SafetensorsReader::open(std::slice::from_ref(&path)).err().unwrap().to_string();
        assert!(err.contains("tensor w") && err.contains("model.safetensors"), "{err}");
    }
}
