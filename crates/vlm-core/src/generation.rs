//! What greedy decoding takes from a checkpoint's `generation_config.json`
//! ([`GenerationDefaults`]: the EOS ids and the repetition penalty, other logits processors
//! refused where a backend asks) and transformers' `RepetitionPenaltyLogitsProcessor`
//! ([`repetition_penalised`], and [`RepetitionPenalty`] to carry each row's seen ids through the
//! greedy loop).

use std::path::Path;

use candle_core::{DType, Tensor};
use serde_json::Value;

use crate::config_json::{ConfigError, field, invalid, parse_ids, read_json};

/// Whether [`GenerationDefaults`] refuses the logits processors greedy decoding would apply that
/// no backend implements (`no_repeat_ngram_size`, `bad_words_ids`, `min_new_tokens`, ...).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OtherProcessors {
    /// An active one is an error naming the file and the key.
    Refuse,
    /// They are not read.
    Ignore,
}

/// What `generate` takes from `generation_config.json` when the caller does not override it.
/// The reference calls `generate(do_sample=False, max_new_tokens=128, top_p=1.0,
/// temperature=0.0)`: the EOS ids and any repetition penalty (1.05 for Qwen2-VL-7B-Instruct)
/// still apply; `temperature`, `top_p`, `top_k` only act when sampling.
#[derive(Debug, Clone, PartialEq)]
pub struct GenerationDefaults {
    /// `eos_token_id`, when the file names it.
    pub eos_token_ids: Option<Vec<u32>>,
    /// `repetition_penalty` (1.0, none, when absent).
    pub repetition_penalty: f64,
}

impl GenerationDefaults {
    /// `generation_config.json` of a checkpoint (defaults when the file is absent).
    pub fn from_dir(dir: &Path, others: OtherProcessors) -> std::result::Result<Self, ConfigError> {
        let path = dir.join("generation_config.json");
        if !path.is_file() {
            return Ok(Self { eos_token_ids: None, repetition_penalty: 1.0 });
        }
        Self::from_value(&read_json(&path)?, &path, others)
    }

    pub fn from_value(v: &Value, path: &Path, others: OtherProcessors) -> std::result::Result<Self, ConfigError> {
        let eos_token_ids = match v.get("eos_token_id") {
            None | Some(Value::Null) => None,
            Some(e) => Some(
                parse_ids(e)
                    .ok_or_else(|| invalid(path, format!("eos_token_id: expected an id or a list of ids, got {e}")))?,
            ),
        };
        let repetition_penalty = field::<f64>(v, "repetition_penalty", path, "")?.unwrap_or(1.0);
        if !(repetition_penalty > 0.0 && repetition_penalty.is_finite()) {
            return Err(invalid(path, format!("repetition_penalty {repetition_penalty}: must be positive")));
        }
        if others == OtherProcessors::Refuse {
            refuse_other_processors(v, path)?;
        }
        Ok(Self { eos_token_ids, repetition_penalty })
    }
}

/// Processors greedy decoding would apply that no backend implements: refused rather than ignored.
fn refuse_other_processors(v: &Value, path: &Path) -> std::result::Result<(), ConfigError> {
    let active = |key: &str| match v.get(key) {
        None | Some(Value::Null) | Some(Value::Bool(false)) => false,
        Some(Value::Number(n)) => n.as_f64() != Some(0.0) && !(key.ends_with("penalty") && n.as_f64() == Some(1.0)),
        Some(Value::Array(a)) => !a.is_empty(),
        Some(_) => true,
    };
    for key in [
        "no_repeat_ngram_size",
        "encoder_repetition_penalty",
        "min_length",
        "min_new_tokens",
        "bad_words_ids",
        "suppress_tokens",
        "begin_suppress_tokens",
        "forced_bos_token_id",
        "forced_eos_token_id",
        "sequence_bias",
    ] {
        if active(key) {
            return Err(invalid(path, format!("{key}: this logits processor is not supported")));
        }
    }
    Ok(())
}

/// transformers' `RepetitionPenaltyLogitsProcessor` on (b, vocab) f32 logits: every id row `r`
/// has seen gets its logit divided by `penalty` when positive, multiplied when negative (in f32,
/// once per id however often it was seen).
pub fn repetition_penalised(logits: &Tensor, seen: &[Vec<u32>], penalty: f32) -> crate::Result<Tensor> {
    let (b, vocab) = logits.dims2()?;
    let mut rows: Vec<f32> = logits.to_dtype(DType::F32)?.flatten_all()?.to_vec1()?;
    for (r, ids) in seen.iter().enumerate().take(b) {
        let row = &mut rows[r * vocab..(r + 1) * vocab];
        let mut done = vec![false; vocab];
        for &t in ids {
            let t = t as usize;
            if t < vocab && !done[t] {
                done[t] = true;
                let s = row[t];
                row[t] = if s < 0.0 { s * penalty } else { s / penalty };
            }
        }
    }
    Ok(Tensor::from_vec(rows, (b, vocab), logits.device())?)
}

/// The repetition penalty through a batched greedy loop: each row's seen ids (its prompt without
/// padding, then its answer so far) and the penalty over them (1.0: logits pass unchanged).
pub struct RepetitionPenalty {
    penalty: f32,
    seen: Vec<Vec<u32>>,
}

impl RepetitionPenalty {
    /// One row per prompt, each starting from the prompt's ids.
    pub fn new(penalty: f32, prompts: Vec<Vec<u32>>) -> Self {
        Self { penalty, seen: prompts }
    }

    /// The step's (b, vocab) logits with the penalty over each row's seen ids.
    pub fn apply(&self, logits: Tensor) -> crate::Result<Tensor> {
        if self.penalty == 1.0 { Ok(logits) } else { repetition_penalised(&logits, &self.seen, self.penalty) }
    }

    /// Records one token per row (the step's greedy choice).
    pub fn push(&mut self, next: &[u32]) {
        for (s, &t) in self.seen.iter_mut().zip(next) {
            s.push(t);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;
    use serde_json::json;

    #[test]
    fn the_repetition_penalty_divides_positive_and_multiplies_negative_seen_logits_once() {
        let logits = Tensor::new(&[[-2f32, 1., 3., 0.5], [1., 1., 1., 1.]], &Device::Cpu).unwrap();
        let got = repetition_penalised(&logits, &[vec![0, 2, 2, 0], vec![3]], 2.0).unwrap();
        assert_eq!(got.to_vec2::<f32>().unwrap(), vec![vec![-4., 1., 1.5, 0.5], vec![1., 1., 1., 0.5]]);
    }

    #[test]
    fn the_penalty_follows_each_rows_tokens() {
        let logits = Tensor::new(&[[2f32, 2.], [2., 2.]], &Device::Cpu).unwrap();
        let mut p = RepetitionPenalty::new(2.0, vec![vec![0], vec![]]);
        p.push(&[1, 1]);
        assert_eq!(p.apply(logits.clone()).unwrap().to_vec2::<f32>().unwrap(), vec![vec![1., 1.], vec![2., 1.]]);
        let none = RepetitionPenalty::new(1.0, vec![vec![0], vec![1]]);
        assert_eq!(none.apply(logits).unwrap().to_vec2::<f32>().unwrap(), vec![vec![2., 2.], vec![2., 2.]]);
    }

    #[test]
    fn generation_defaults_keep_the_repetition_penalty() {
        // Qwen2-VL-7B-Instruct's generation_config.json.
        let v = json!({"bos_token_id": 151643, "pad_token_id": 151643, "do_sample": true,
            "eos_token_id": [151645, 151643], "repetition_penalty": 1.05, "temperature": 0.01,
            "top_p": 0.001, "top_k": 1, "transformers_version": "4.37.0"});
        let g =
            GenerationDefaults::from_value(&v, Path::new("generation_config.json"), OtherProcessors::Refuse).unwrap();
        assert_eq!(g.eos_token_ids, Some(vec![151645, 151643]));
        assert_eq!(g.repetition_penalty, 1.05);
        let g = GenerationDefaults::from_value(&json!({}), Path::new("g.json"), OtherProcessors::Refuse).unwrap();
        assert_eq!((g.eos_token_ids, g.repetition_penalty), (None, 1.0));
        let e = GenerationDefaults::from_value(
            &json!({"eos_token_id": "x"}),
            Path::new("/g.json"),
            OtherProcessors::Ignore,
        )
        .unwrap_err();
        assert!(e.to_string().contains("/g.json") && e.to_string().contains("eos_token_id"), "{e}");
        let e = GenerationDefaults::from_value(
            &json!({"repetition_penalty": 0.0}),
            Path::new("g"),
            OtherProcessors::Ignore,
        )
        .unwrap_err();
        assert!(e.to_string().contains("must be positive"), "{e}");
    }

    #[test]
    fn generation_defaults_keep_eos_and_refuse_unknown_processors_when_asked() {
        // Llama-3.2-11B-Vision-Instruct's generation_config.json (sampling settings greedy ignores).
        let v = json!({"bos_token_id": 128000, "do_sample": true, "eos_token_id": [128001, 128008, 128009],
            "pad_token_id": 128004, "temperature": 0.6, "top_p": 0.9, "transformers_version": "4.45.0.dev0"});
        let g = GenerationDefaults::from_value(&v, Path::new("g.json"), OtherProcessors::Refuse).unwrap();
        assert_eq!(g.eos_token_ids, Some(vec![128001, 128008, 128009]));
        assert_eq!(g.repetition_penalty, 1.0);
        let ngram = json!({"no_repeat_ngram_size": 3});
        let e = GenerationDefaults::from_value(&ngram, Path::new("/g.json"), OtherProcessors::Refuse).unwrap_err();
        assert!(e.to_string().contains("/g.json") && e.to_string().contains("no_repeat_ngram_size"), "{e}");
        assert!(GenerationDefaults::from_value(&ngram, Path::new("g"), OtherProcessors::Ignore).is_ok());
        let neutral = json!({"encoder_repetition_penalty": 1.0});
        assert!(GenerationDefaults::from_value(&neutral, Path::new("g"), OtherProcessors::Refuse).is_ok());
    }
}
