//! Greedy decoding of a left-padded batch through the decoder graph: the loop, EOS handling and
//! repetition penalty are `vlm_core`'s (the candle backends run the same ones); this module only
//! builds the graph's inputs (embeddings, attention mask, position ids) and carries the KV cache.

use candle_core::{Device, Tensor};
use vlm_core::generation::RepetitionPenalty;
use vlm_core::greedy::greedy_loop;
use vlm_core::{ModelError, Result};

use crate::graphs::{GraphError, Graphs};

/// One prompt ready for the decoder graph.
#[derive(Debug, Clone)]
pub struct Prompt {
    pub ids: Vec<u32>,
    /// (n, hidden) row-major, image features spliced in.
    pub embeds: Vec<f32>,
    /// Position ids per token: one row (LLaVA) or three (Qwen2-VL's M-RoPE), `[rows][n]`.
    pub positions: Vec<Vec<i64>>,
}

/// How positions continue: the padded prefill's position rows and a decode step's.
pub trait PositionScheme {
    /// Rows of the prefill's position ids for the batch, row-major (rows, b, n).
    fn prefill(&self, prompts: &[Prompt], pads: &[usize], n: usize) -> Vec<i64>;
    /// A decode step's position ids (rows, b, 1) with `cached` positions (padding included) in the
    /// cache.
    fn step(&self, cached: usize, pads: &[usize]) -> Vec<i64>;
}

pub(crate) fn model_err(e: GraphError) -> ModelError {
    ModelError::Input(e.to_string())
}

/// The prefill's last logits (b, vocab) before any penalty, and each row's greedy tokens.
pub fn greedy(
    graphs: &Graphs,
    scheme: &dyn PositionScheme,
    prompts: &[Prompt],
    max_new_tokens: &[usize],
    eos: &[u32],
    repetition_penalty: f32,
) -> Result<(Vec<f32>, Vec<Vec<u32>>)> {
    let b = prompts.len();
    if b == 0 || max_new_tokens.len() != b {
        return Err(ModelError::Input(format!("{b} prompts and {} budgets", max_new_tokens.len())));
    }
    let hidden = prompts[0].embeds.len() / prompts[0].ids.len().max(1);
    let n = prompts.iter().map(|p| p.ids.len()).max().unwrap_or(0);
    let pads: Vec<usize> = prompts.iter().map(|p| n - p.ids.len()).collect();
    let mut embeds = Vec::with_capacity(b * n * hidden);
    let mut mask = Vec::with_capacity(b * n);
    for (p, &pad) in prompts.iter().zip(&pads) {
        embeds.extend(std::iter::repeat_n(0f32, pad * hidden));
        embeds.extend_from_slice(&p.embeds);
        mask.extend(std::iter::repeat_n(0i64, pad));
        mask.extend(std::iter::repeat_n(1i64, p.ids.len()));
    }
    let positions = scheme.prefill(prompts, &pads, n);
    let past = graphs.empty_past(b).map_err(model_err)?;
    let (first, vocab, mut past) = graphs.decode(b, n, &embeds, &mask, &positions, past).map_err(model_err)?;
    let first_t = Tensor::from_vec(first.clone(), (b, vocab), &Device::Cpu)?;
    let mut penalty = RepetitionPenalty::new(repetition_penalty, prompts.iter().map(|p| p.ids.clone()).collect());
    let mut cached = n;
    let tokens = greedy_loop(penalty.apply(first_t)?, max_new_tokens, eos, |next| {
        // (1, b) ids embed to the same values as (b, 1).
        let e = graphs.embed(next).map_err(model_err)?;
        let pos = scheme.step(cached, &pads);
        for r in (0..b).rev() {
            mask.insert((r + 1) * cached, 1);
        }
        cached += 1;
        let taken = std::mem::take(&mut past);
        let (logits, vocab, p) = graphs.decode(b, 1, &e, &mask, &pos, taken).map_err(model_err)?;
        past = p;
        penalty.push(next);
        penalty.apply(Tensor::from_vec(logits, (b, vocab), &Device::Cpu)?)
    })?;
    Ok((first, tokens))
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_mask_grows_one_column_per_row() {
        // The in-place insertion `greedy` uses: (b, cached) -> (b, cached + 1), a 1 at each row's end.
        let (b, cached) = (2, 3);
        let mut mask = vec![0i64, 1, 1, 1, 1, 1];
        for r in (0..b).rev() {
            mask.insert((r + 1) * cached, 1);
        }
        assert_eq!(mask, vec![0, 1, 1, 1, 1, 1, 1, 1]);
    }
}
