//! What a backend reads from an HF-format checkpoint folder besides its `config.json`, image
//! processor and weights, the same way for every arch: the folder itself ([`require_dir`]), the
//! chat template and tokenizer with the image token checked against `config.json`
//! ([`prompt_files`]), and the EOS ids and repetition penalty of `generation_config.json`
//! ([`eos_and_penalty`]). Every error is a `bad_config` naming the folder or the file.

use std::path::Path;

use vlsbench_plugin_api::BackendError;

use crate::generation::{GenerationDefaults, OtherProcessors};
use crate::template::ChatTemplate;
use crate::tokenizer::PromptTokenizer;

fn bad(e: &dyn std::fmt::Display) -> BackendError {
    BackendError::bad_config(e.to_string())
}

/// `dir` must be a folder.
pub fn require_dir(dir: &Path) -> Result<(), BackendError> {
    if dir.is_dir() {
        Ok(())
    } else {
        Err(BackendError::bad_config(format!("checkpoint {} is not a directory", dir.display())))
    }
}

/// The image token a model expects: its text, `config.json`'s id for it and that field's name.
#[derive(Debug, Clone, Copy)]
pub struct ImageToken<'a> {
    pub text: &'a str,
    pub id: u32,
    /// The `config.json` key the id came from (for messages).
    pub config_key: &'a str,
}

/// The checkpoint's chat template and tokenizer; the tokenizer's id for `image_token` must be
/// `config.json`'s.
pub fn prompt_files(dir: &Path, image_token: ImageToken) -> Result<(ChatTemplate, PromptTokenizer), BackendError> {
    let template = ChatTemplate::from_dir(dir).map_err(|e| bad(&e))?;
    let tokenizer = PromptTokenizer::from_dir(dir).map_err(|e| bad(&e))?;
    let ImageToken { text, id, config_key } = image_token;
    match tokenizer.token_id(text) {
        Some(found) if found == id => Ok((template, tokenizer)),
        other => Err(BackendError::bad_config(format!(
            "{}: the tokenizer's {text} is {other:?}, config.json's {config_key} {id}",
            dir.display()
        ))),
    }
}

/// `generation_config.json`'s EOS ids (else `config_eos`, `config.json`'s) and repetition penalty
/// (1.0 when it sets none); `others` says what its other logits processors do.
pub fn eos_and_penalty(
    dir: &Path,
    others: OtherProcessors,
    config_eos: &[u32],
) -> Result<(Vec<u32>, f32), BackendError> {
    let generation = GenerationDefaults::from_dir(dir, others).map_err(|e| bad(&e))?;
    let eos = generation.eos_token_ids.unwrap_or_else(|| config_eos.to_vec());
    Ok((eos, generation.repetition_penalty as f32))
}
