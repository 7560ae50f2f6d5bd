//! The vlsbench [`Backend`] named `onnxruntime`: an ONNX export in transformers.js' layout, run
//! by ONNX Runtime, for arch `qwen2vl` (and `llava_hf`, see [`crate::llava`]).
//!
//! `check` (at `validate`, and before a run makes its folder) loads ONNX Runtime (the option
//! `ort_library`, else `ORT_DYLIB_PATH`, else the loader's `libonnxruntime.so`) and checks its
//! version, the CUDA provider when the device asks for it, and that the three graphs' files are
//! there. `create` loads the same runtime (once per process), then the checkpoint's configuration,
//! then opens the three graphs on the device and holds the decoder's inputs against `config.json`;
//! so a missing or unusable library, a missing CUDA provider or a mismatched export stops the run
//! before any item. `dtype` follows the graph: a manifest `dtype` other than the graph's is an
//! error naming both. `generate` batches like the candle backends (`vlm_core::batch`).

use std::path::{Path, PathBuf};

use vlm_core::batch::{finish_generation, generate_in_batches, single};
use vlm_core::request::{budget_in_context, greedy_budget};
use vlsbench_plugin_api::{
    Backend, BackendConfig, BackendError, BackendInfo, GenerateRequest, Generation, MessageLayout, OptionKind,
    OptionSpec,
};

use crate::graphs::{Elem, ExpectedDecoder, Graphs};
use crate::llava::LlavaOnnx;
use crate::qwen2vl::Qwen2VlOnnx;
use crate::runtime::Runtime;

pub const NAME: &str = "onnxruntime";
pub const ARCH_QWEN2VL: &str = "qwen2vl";
pub const ARCH_LLAVA_HF: &str = "llava_hf";
/// The most requests decoded together; `describe` says so to the host.
pub const MAX_BATCH: usize = 8;

/// `[model.options]` of the onnxruntime backend.
#[derive(Debug, Default, serde::Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct OnnxOptions {
    /// The ONNX Runtime library (`libonnxruntime.so.<version>`); else `ORT_DYLIB_PATH`.
    pub ort_library: Option<PathBuf>,
    /// Overrides `generation_config.json`'s `repetition_penalty`.
    pub repetition_penalty: Option<f32>,
    /// ONNX Runtime's intra-op threads (0 or absent: its default, one per core).
    pub threads: Option<u32>,
}

enum Model {
    Qwen2Vl(Qwen2VlOnnx),
    LlavaHf(LlavaOnnx),
}

/// One loaded export.
pub struct OnnxBackend {
    checkpoint: PathBuf,
    model: Model,
    eos: Vec<u32>,
    repetition_penalty: f32,
    runtime: &'static Runtime,
}

/// A request ready for the decoder.
enum Ready {
    Qwen(crate::qwen2vl::QwenPrompt),
    Plain(crate::decode::Prompt),
}

impl OnnxBackend {
    /// Loads the export in `dir` as `arch` on `device` with the library `options` names.
    pub fn load(
        dir: &Path,
        arch: &str,
        device: &str,
        dtype: Option<&str>,
        options: &OnnxOptions,
    ) -> Result<Self, BackendError> {
        let bad = |e: &dyn std::fmt::Display| BackendError::bad_config(e.to_string());
        let runtime = Runtime::load(options.ort_library.as_deref()).map_err(|e| bad(&e))?;
        crate::runtime::parse_device(device).map_err(|e| bad(&e))?;
        if !dir.is_dir() {
            return Err(BackendError::bad_config(format!("checkpoint {} is not a directory", dir.display())));
        }
        let threads = options.threads.unwrap_or(0) as usize;
        let open = |expect: &ExpectedDecoder| -> Result<Graphs, BackendError> {
            let g = Graphs::open(runtime, dir, device, threads, expect).map_err(|e| bad(&e))?;
            if let Some(want) = dtype
                && want != g.layout.elem.name()
            {
                return Err(BackendError::bad_config(format!(
                    "dtype {want:?}: {} is a {} graph (dtype follows the export; leave it out or say {:?})",
                    g.decoder.path.display(),
                    g.layout.elem.name(),
                    g.layout.elem.name()
                )));
            }
            Ok(g)
        };
        let (model, eos, penalty) = match arch {
            ARCH_QWEN2VL => {
                let m = Qwen2VlOnnx::load(dir, open)?;
                let (eos, p) = (m.inputs.eos.clone(), m.inputs.repetition_penalty);
                (Model::Qwen2Vl(m), eos, p)
            }
            ARCH_LLAVA_HF => {
                let m = LlavaOnnx::load(dir, open)?;
                let (eos, p) = (m.eos.clone(), m.repetition_penalty);
                (Model::LlavaHf(m), eos, p)
            }
            other => {
                return Err(BackendError::unsupported(format!(
                    "arch {other:?} is not served ({ARCH_QWEN2VL}, {ARCH_LLAVA_HF})"
                )));
            }
        };
        let repetition_penalty = match options.repetition_penalty {
            Some(p) if !(p > 0.0 && p.is_finite()) => {
                return Err(BackendError::bad_config(format!(
                    "[model.options]: `repetition_penalty` must be a positive number, got {p}"
                )));
            }
            Some(p) => p,
            None => penalty,
        };
        Ok(Self { checkpoint: dir.to_owned(), model, eos, repetition_penalty, runtime })
    }

    pub fn checkpoint(&self) -> &Path {
        &self.checkpoint
    }

    /// The ONNX Runtime this backend runs on.
    pub fn runtime(&self) -> &'static Runtime {
        self.runtime
    }

    /// The Qwen2-VL model, when the export is one (benchmarks drive it directly).
    pub fn qwen2vl(&self) -> Option<&Qwen2VlOnnx> {
        match &self.model {
            Model::Qwen2Vl(m) => Some(m),
            Model::LlavaHf(_) => None,
        }
    }

    pub fn graphs(&self) -> &Graphs {
        match &self.model {
            Model::Qwen2Vl(m) => &m.graphs,
            Model::LlavaHf(m) => &m.graphs,
        }
    }

    /// The element type the graphs run in.
    pub fn elem(&self) -> Elem {
        self.graphs().layout.elem
    }

    pub fn eos(&self) -> &[u32] {
        &self.eos
    }

    /// Tests: stop at other tokens (the fixtures' greedy runs never reach their EOS).
    pub fn set_eos(&mut self, eos: Vec<u32>) {
        self.eos = eos;
    }

    pub fn set_repetition_penalty(&mut self, p: f32) {
        self.repetition_penalty = p;
    }

    fn max_positions(&self) -> usize {
        match &self.model {
            Model::Qwen2Vl(m) => m.inputs.config.text.max_position_embeddings,
            Model::LlavaHf(m) => m.max_positions,
        }
    }

    fn prepare(&self, req: &GenerateRequest) -> Result<(Ready, usize), BackendError> {
        let max_new = greedy_budget(req)?;
        let ready = match &self.model {
            Model::Qwen2Vl(m) => Ready::Qwen(m.prompt(req)?),
            Model::LlavaHf(m) => Ready::Plain(m.prompt(req)?),
        };
        let n = match &ready {
            Ready::Qwen(p) => p.prompt.ids.len(),
            Ready::Plain(p) => p.ids.len(),
        };
        let budget = budget_in_context(req, max_new, n, self.max_positions())?;
        Ok((ready, budget))
    }

    /// The prefill's last logits (b, vocab, before any penalty) and each row's greedy tokens.
    fn run(&self, ready: Vec<Ready>, budgets: &[usize]) -> vlm_core::Result<(Vec<f32>, Vec<Vec<u32>>)> {
        match &self.model {
            Model::Qwen2Vl(m) => {
                let prompts: Vec<_> =
                    ready.into_iter().filter_map(|r| if let Ready::Qwen(p) = r { Some(p) } else { None }).collect();
                m.greedy(&prompts, budgets, &self.eos, self.repetition_penalty)
            }
            Model::LlavaHf(m) => {
                let prompts: Vec<_> =
                    ready.into_iter().filter_map(|r| if let Ready::Plain(p) = r { Some(p) } else { None }).collect();
                m.greedy(&prompts, budgets, &self.eos, self.repetition_penalty)
            }
        }
    }

    /// The answer text for generated tokens (EOS not included).
    pub fn decode(&self, tokens: &[u32]) -> Result<String, BackendError> {
        match &self.model {
            Model::Qwen2Vl(m) => m.inputs.decode(tokens),
            Model::LlavaHf(m) => m.decode(tokens),
        }
    }

    /// Greedy answers for several requests, decoded together [`MAX_BATCH`] at a time.
    pub fn generate_batch(&self, requests: &[GenerateRequest]) -> Vec<Result<Generation, BackendError>> {
        generate_in_batches(
            requests,
            MAX_BATCH,
            |req| self.prepare(req),
            |ready, budgets| Ok(self.run(ready, budgets)?.1),
            |req, tokens| finish_generation(&req.id, tokens, &self.eos, |t| self.decode(t)),
        )
    }

    /// One request alone.
    pub fn generate_one(&self, req: &GenerateRequest) -> Result<Generation, BackendError> {
        single(self.generate_batch(std::slice::from_ref(req)))
    }

    /// Tests and tools: one request's first-step logits (vocab, before any penalty) and its greedy
    /// tokens (`max_new` of them, stopping at [`Self::eos`]).
    pub fn first_logits_and_tokens(
        &self,
        req: &GenerateRequest,
        max_new: usize,
    ) -> Result<(Vec<f32>, Vec<u32>), BackendError> {
        let (ready, _) = self.prepare(req)?;
        let (first, mut tokens) =
            self.run(vec![ready], &[max_new]).map_err(|e| vlm_core::request::model_error(&req.id, e))?;
        Ok((first, tokens.remove(0)))
    }
}

/// `Ok` for the archs this backend serves.
fn served(arch: &str) -> Result<(), BackendError> {
    match arch {
        ARCH_QWEN2VL | ARCH_LLAVA_HF => Ok(()),
        other => {
            Err(BackendError::unsupported(format!("arch {other:?} is not served ({ARCH_QWEN2VL}, {ARCH_LLAVA_HF})")))
        }
    }
}

impl Backend for OnnxBackend {
    fn describe() -> BackendInfo {
        BackendInfo {
            name: NAME.into(),
            version: env!("CARGO_PKG_VERSION").into(),
            description: format!(
                "ONNX exports in transformers.js' three-graph layout on ONNX Runtime (>= 1.{}, loaded at run time): \
                 the same preprocessing, batching and greedy decoding as the candle backends (vlm-core)",
                crate::runtime::MIN_ORT_MINOR
            ),
            archs: vec![ARCH_QWEN2VL.into(), ARCH_LLAVA_HF.into()],
            max_batch: MAX_BATCH as u32,
            concurrent: false,
            devices: vec!["cpu".into(), "cuda".into()],
            checkpoint_is_path: true,
            path_options: vec!["ort_library".into()],
            // The reference's loaders: qwen2vl [image, text]; llava_hf [text, image].
            message_layouts: [
                (ARCH_QWEN2VL.to_owned(), MessageLayout::image_then_text()),
                (ARCH_LLAVA_HF.to_owned(), MessageLayout::text_then_image()),
            ]
            .into(),
        }
    }

    fn options() -> Option<Vec<OptionSpec>> {
        Some(vec![
            OptionSpec::new(
                "ort_library",
                OptionKind::Path,
                "the ONNX Runtime library, e.g. <site-packages>/onnxruntime/capi/libonnxruntime.so.1.32.0 (else ORT_DYLIB_PATH)",
            ),
            OptionSpec::new(
                "repetition_penalty",
                OptionKind::Number,
                "overrides generation_config.json's repetition_penalty",
            ),
            OptionSpec::new("threads", OptionKind::Integer, "ONNX Runtime's intra-op threads (default: one per core)"),
        ])
    }

    /// Loads ONNX Runtime (kept for `create`) and checks its version, the CUDA provider when the
    /// device asks for it, and the export's three graphs; says which library it found.
    fn check(config: &BackendConfig) -> Result<Vec<String>, BackendError> {
        let bad = |e: &dyn std::fmt::Display| BackendError::bad_config(e.to_string());
        served(&config.arch)?;
        let options: OnnxOptions = config.options()?;
        let library = options.ort_library.map(|p| config.resolve(p));
        let runtime = Runtime::load(library.as_deref()).map_err(|e| bad(&e))?;
        let device = config.device.as_deref().unwrap_or("cpu");
        if crate::runtime::parse_device(device).map_err(|e| bad(&e))?.is_some() && !runtime.has_cuda() {
            let e = crate::runtime::RuntimeError::NoCuda { device: device.to_owned(), path: runtime.path.clone() };
            return Err(bad(&e));
        }
        if let Some(dir) = config.checkpoint.as_deref().map(|c| config.resolve(c)) {
            for graph in crate::graphs::graph_paths(&dir) {
                if !graph.is_file() {
                    return Err(BackendError::bad_config(format!(
                        "checkpoint {}: {} is missing (an export in transformers.js' layout holds \
                         onnx/vision_encoder.onnx, onnx/embed_tokens.onnx and onnx/decoder_model_merged.onnx)",
                        dir.display(),
                        graph.display()
                    )));
                }
            }
        }
        let (_, source) = crate::runtime::library_path(library.as_deref());
        Ok(vec![format!("ONNX Runtime {} at {} ({})", runtime.version, runtime.path.display(), source.describe())])
    }

    fn create(config: BackendConfig) -> Result<Self, BackendError> {
        served(&config.arch)?;
        let options: OnnxOptions = config.options()?;
        let options = OnnxOptions { ort_library: options.ort_library.map(|p| config.resolve(p)), ..options };
        let dir = config
            .checkpoint
            .as_deref()
            .map(|c| config.resolve(c))
            .ok_or_else(|| BackendError::bad_config("[model] checkpoint: the export's folder is required"))?;
        let device = config.device.as_deref().unwrap_or("cpu");
        Self::load(&dir, &config.arch, device, config.dtype.as_deref(), &options)
    }

    fn generate(&self, requests: Vec<GenerateRequest>) -> Vec<Result<Generation, BackendError>> {
        self.generate_batch(&requests)
    }
}
