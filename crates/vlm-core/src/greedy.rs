//! Batched greedy decoding, the loop every native backend runs after its prefill: the argmax of
//! each row's logits, each row stopping at its first EOS (kept) or at its own budget of new
//! tokens; the step function feeds the chosen tokens back through the model. [`GreedyModel`]: a
//! model that makes prompts from ids and images and decodes them greedily, one or a left-padded
//! batch at a time.

use candle_core::{D, Tensor};

use crate::Result;

/// Greedy decoding from `first` (b, vocab) logits in f32 (the prefill's last positions):
/// `step(tokens)` runs one token per row (rows already finished still get one, whose result is
/// ignored) and returns the next (b, vocab) logits. Returns each row's tokens.
pub fn greedy_loop(
    first: Tensor,
    max_new_tokens: &[usize],
    eos: &[u32],
    mut step: impl FnMut(&[u32]) -> Result<Tensor>,
) -> Result<Vec<Vec<u32>>> {
    let b = max_new_tokens.len();
    let mut logits = first;
    let mut out: Vec<Vec<u32>> = vec![Vec::new(); b];
    let mut done: Vec<bool> = max_new_tokens.iter().map(|&m| m == 0).collect();
    let steps = max_new_tokens.iter().copied().max().unwrap_or(0);
    for _ in 0..steps {
        if done.iter().all(|&d| d) {
            break;
        }
        let next: Vec<u32> = logits.argmax(D::Minus1)?.flatten_all()?.to_vec1()?;
        for r in 0..b {
            if !done[r] {
                out[r].push(next[r]);
                done[r] = eos.contains(&next[r]) || out[r].len() >= max_new_tokens[r];
            }
        }
        if done.iter().all(|&d| d) {
            break;
        }
        logits = step(&next)?;
    }
    Ok(out)
}

/// A vision-language model that makes a prompt from its ids and images, then decodes prompts
/// greedily, left-padded into one batch: the Qwen2-VL and Mllama models on candle.
pub trait GreedyModel {
    /// One image as the model's processor made it.
    type Image;
    /// One prompt ready for the decoder.
    type Prompt;

    /// A prompt from its ids and images.
    fn prompt(&self, ids: &[u32], images: &[&Self::Image]) -> Result<Self::Prompt>;

    /// The prefill's last logits (b, vocab, before any penalty) and each row's greedy tokens
    /// (each row stopping after its `max_new_tokens`, or at the first of `eos`, which is kept),
    /// with transformers' repetition penalty (1.0: none).
    fn greedy_prompts(
        &self,
        prompts: &[Self::Prompt],
        max_new_tokens: &[usize],
        eos: &[u32],
        repetition_penalty: f32,
    ) -> Result<(Tensor, Vec<Vec<u32>>)>;

    /// Greedy decoding of one prompt with no penalty: the first step's logits (vocab,) and the
    /// tokens (stopping after `max_new_tokens`, or at the first of `eos`, which is kept).
    fn greedy(
        &self,
        ids: &[u32],
        images: &[&Self::Image],
        max_new_tokens: usize,
        eos: &[u32],
    ) -> Result<(Tensor, Vec<u32>)> {
        let prompt = self.prompt(ids, images)?;
        let (first, mut tokens) = self.greedy_prompts(&[prompt], &[max_new_tokens], eos, 1.0)?;
        Ok((first.squeeze(0)?, tokens.remove(0)))
    }

    /// Greedy decoding of several prompts left-padded into one batch, with transformers'
    /// repetition penalty (1.0: none); each row's tokens.
    fn greedy_batch(
        &self,
        prompts: &[Self::Prompt],
        max_new_tokens: &[usize],
        eos: &[u32],
        repetition_penalty: f32,
    ) -> Result<Vec<Vec<u32>>> {
        Ok(self.greedy_prompts(prompts, max_new_tokens, eos, repetition_penalty)?.1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    /// A "model" whose next token is the previous one plus one.
    fn counting(first: &[u32]) -> (Tensor, impl FnMut(&[u32]) -> Result<Tensor>) {
        let vocab = 16;
        let onehot = move |t: &[u32]| {
            let mut v = vec![0f32; t.len() * vocab];
            for (r, &x) in t.iter().enumerate() {
                v[r * vocab + (x as usize + 1) % vocab] = 1.0;
            }
            Tensor::from_vec(v, (t.len(), vocab), &Device::Cpu)
        };
        let start: Vec<u32> = first.iter().map(|&x| x.wrapping_sub(1) % vocab as u32).collect();
        (onehot(&start).unwrap(), move |t: &[u32]| Ok(onehot(t)?))
    }

    #[test]
    fn rows_stop_at_their_own_eos_or_budget() {
        let (first, step) = counting(&[1, 5, 9]);
        let out = greedy_loop(first, &[10, 2, 0], &[4], step).unwrap();
        assert_eq!(out, vec![vec![1, 2, 3, 4], vec![5, 6], vec![]]);
    }
}
