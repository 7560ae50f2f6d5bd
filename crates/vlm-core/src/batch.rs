//! The batching every native backend's `generate` does: each request prepared alone (an item that
//! cannot be prepared fails alone, with its own typed error), the prepared ones decoded together
//! `max_batch` at a time, each row's tokens turned into its [`Generation`]; a batch that fails as
//! a whole fails each of its members with the same error. [`GreedyBackend`]: that `generate`
//! for a backend whose model is a [`GreedyModel`].

use vlsbench_plugin_api::{BackendError, ChatMessage, GenerateRequest, Generation};

use crate::greedy::GreedyModel;
use crate::request::{budget_in_context, greedy_budget, model_error};
use crate::tokenizer::python_strip;

/// The image type of a [`GreedyBackend`]'s model.
pub type ImageOf<B> = <<B as GreedyBackend>::Model as GreedyModel>::Image;

/// A backend that prepares each request alone into ids and images, then decodes the prompts
/// greedily with a [`GreedyModel`], `MAX_BATCH` at a time, with the checkpoint's EOS ids and
/// repetition penalty (candle-qwen2vl and candle-mllama).
pub trait GreedyBackend {
    type Model: GreedyModel;
    /// The most requests decoded together.
    const MAX_BATCH: usize;

    /// A request's input ids and images, as the reference's processor makes them; an item that
    /// cannot be prepared is a `bad_request` naming it.
    fn prepare(&self, req: &GenerateRequest) -> Result<(Vec<u32>, Vec<ImageOf<Self>>), BackendError>;
    fn model(&self) -> &Self::Model;
    /// The checkpoint's chat template rendered for `messages` with the generation prompt
    /// (`apply_chat_template(messages, tokenize=False, add_generation_prompt=True)`).
    fn rendered_prompt(&self, messages: &[ChatMessage]) -> Result<String, BackendError>;
    /// The tokens that end an answer.
    fn eos(&self) -> &[u32];
    /// The repetition penalty decoding applies (1.0: none).
    fn repetition_penalty(&self) -> f32;
    /// The most positions a prompt and its answer may take (`max_position_embeddings`).
    fn context_length(&self) -> usize;
    /// The answer text for generated tokens (EOS not included), before Python's `strip`.
    fn decode(&self, tokens: &[u32]) -> Result<String, BackendError>;

    /// A request prepared for the decoder, with its budget of new tokens.
    fn embed_request(
        &self,
        req: &GenerateRequest,
    ) -> Result<(<Self::Model as GreedyModel>::Prompt, usize), BackendError> {
        let max_new = greedy_budget(req)?;
        let (ids, images) = self.prepare(req)?;
        let budget = budget_in_context(req, max_new, ids.len(), self.context_length())?;
        let refs: Vec<&ImageOf<Self>> = images.iter().collect();
        let prompt = self.model().prompt(&ids, &refs).map_err(|e| model_error(&req.id, e))?;
        Ok((prompt, budget))
    }

    /// Which requests a batch may hold together: those of equal keys (Mllama: the number of
    /// images). By default any.
    fn batch_key(&self, _req: &GenerateRequest) -> usize {
        0
    }

    /// Greedy answers for several requests, in order: grouped by [`GreedyBackend::batch_key`],
    /// each group decoded [`GreedyBackend::MAX_BATCH`] at a time.
    fn generate_batch(&self, requests: &[GenerateRequest]) -> Vec<Result<Generation, BackendError>> {
        let mut groups: Vec<(usize, Vec<usize>)> = Vec::new();
        for (k, r) in requests.iter().enumerate() {
            let key = self.batch_key(r);
            match groups.iter_mut().find(|(m, _)| *m == key) {
                Some((_, members)) => members.push(k),
                None => groups.push((key, vec![k])),
            }
        }
        if groups.len() <= 1 {
            return self.generate_group(requests);
        }
        let mut results: Vec<Option<Result<Generation, BackendError>>> = requests.iter().map(|_| None).collect();
        for (_, members) in groups {
            let group: Vec<GenerateRequest> = members.iter().map(|&k| requests[k].clone()).collect();
            for (&k, r) in members.iter().zip(self.generate_group(&group)) {
                results[k] = Some(r);
            }
        }
        results
            .into_iter()
            .map(|r| r.unwrap_or_else(|| Err(BackendError::model_failure("request left unanswered"))))
            .collect()
    }

    /// Greedy answers for requests a batch may hold together, decoded
    /// [`GreedyBackend::MAX_BATCH`] at a time ([`generate_in_batches`]).
    fn generate_group(&self, requests: &[GenerateRequest]) -> Vec<Result<Generation, BackendError>> {
        generate_in_batches(
            requests,
            Self::MAX_BATCH,
            |req| self.embed_request(req),
            |prompts, budgets| self.model().greedy_batch(&prompts, budgets, self.eos(), self.repetition_penalty()),
            |req, tokens| finish_generation(&req.id, tokens, self.eos(), |t| self.decode(t)),
        )
    }

    /// One request alone.
    fn generate_one(&self, req: &GenerateRequest) -> Result<Generation, BackendError> {
        single(self.generate_batch(std::slice::from_ref(req)))
    }
}

/// Answers for `requests`, in order. `prepare` turns one request into the model's input and its
/// budget of new tokens; `decode` runs up to `max_batch` inputs together and returns each row's
/// tokens; `finish` makes a row's tokens into its answer.
pub fn generate_in_batches<P>(
    requests: &[GenerateRequest],
    max_batch: usize,
    mut prepare: impl FnMut(&GenerateRequest) -> Result<(P, usize), BackendError>,
    mut decode: impl FnMut(Vec<P>, &[usize]) -> crate::Result<Vec<Vec<u32>>>,
    mut finish: impl FnMut(&GenerateRequest, Vec<u32>) -> Result<Generation, BackendError>,
) -> Vec<Result<Generation, BackendError>> {
    let mut results: Vec<Option<Result<Generation, BackendError>>> = requests.iter().map(|_| None).collect();
    let mut ready = Vec::new();
    for (k, req) in requests.iter().enumerate() {
        match prepare(req) {
            Ok((input, budget)) => ready.push((k, input, budget)),
            Err(e) => results[k] = Some(Err(e)),
        }
    }
    let mut ready = ready.into_iter().peekable();
    while ready.peek().is_some() {
        let chunk: Vec<(usize, P, usize)> = ready.by_ref().take(max_batch.max(1)).collect();
        let members: Vec<usize> = chunk.iter().map(|(k, _, _)| *k).collect();
        let budgets: Vec<usize> = chunk.iter().map(|(_, _, b)| *b).collect();
        let inputs: Vec<P> = chunk.into_iter().map(|(_, p, _)| p).collect();
        match decode(inputs, &budgets) {
            Ok(outs) if outs.len() == members.len() => {
                for (&k, tokens) in members.iter().zip(outs) {
                    results[k] = Some(finish(&requests[k], tokens));
                }
            }
            Ok(outs) => {
                let e =
                    BackendError::model_failure(format!("{} rows decoded for {} requests", outs.len(), members.len()));
                for &k in &members {
                    results[k] = Some(Err(e.clone()));
                }
            }
            Err(e) => {
                for &k in &members {
                    results[k] = Some(Err(model_error(&requests[k].id, e.duplicate())));
                }
            }
        }
    }
    results
        .into_iter()
        .map(|r| r.unwrap_or_else(|| Err(BackendError::model_failure("request left unanswered"))))
        .collect()
}

/// A row's answer: generation stopped when its last token is one of `eos` (which is left out of
/// the text), else it ran out of budget; the text is `decode`d and stripped as Python strips.
pub fn finish_generation<E: std::fmt::Display>(
    item: &str,
    mut tokens: Vec<u32>,
    eos: &[u32],
    decode: impl FnOnce(&[u32]) -> Result<String, E>,
) -> Result<Generation, BackendError> {
    let stopped = tokens.last().is_some_and(|t| eos.contains(t));
    if stopped {
        tokens.pop();
    }
    let n = tokens.len() as u32 + u32::from(stopped);
    let text = decode(&tokens).map_err(|e| BackendError::model_failure(format!("item {item}: {e}")))?;
    Ok(Generation {
        text: python_strip(&text).to_owned(),
        finish_reason: Some(if stopped { "stop" } else { "length" }.into()),
        tokens: Some(n),
    })
}

/// The answer of a one-request [`generate_in_batches`] (a backend's `generate_one`).
pub fn single(mut results: Vec<Result<Generation, BackendError>>) -> Result<Generation, BackendError> {
    results.pop().unwrap_or_else(|| Err(BackendError::model_failure("request left unanswered")))
}

#[cfg(test)]
mod tests {
    use super::*;
    use vlsbench_plugin_api::GenerationSettings;

    fn req(id: &str) -> GenerateRequest {
        GenerateRequest {
            id: id.into(),
            messages: vec![],
            settings: GenerationSettings::reference(),
            response_format: None,
        }
    }

    #[test]
    fn bad_items_fail_alone_and_the_rest_decode_in_chunks() {
        let requests: Vec<GenerateRequest> = ["1", "bad", "3", "4", "5"].iter().map(|i| req(i)).collect();
        let mut chunks = Vec::new();
        let out = generate_in_batches(
            &requests,
            2,
            |r| {
                if r.id == "bad" { Err(BackendError::bad_request("item bad: no image")) } else { Ok((r.id.clone(), 3)) }
            },
            |inputs, budgets| {
                chunks.push(inputs.clone());
                assert!(budgets.iter().all(|&b| b == 3));
                Ok(inputs.iter().map(|i| vec![i.parse::<u32>().unwrap(), 0]).collect())
            },
            |r, tokens| finish_generation(&r.id, tokens, &[0], |t| Ok::<_, String>(format!(" {t:?}\n"))),
        );
        assert_eq!(chunks, vec![vec!["1".to_owned(), "3".to_owned()], vec!["4".to_owned(), "5".to_owned()]]);
        assert_eq!(out[0].as_ref().unwrap().text, "[1]");
        assert_eq!(out[0].as_ref().unwrap().finish_reason.as_deref(), Some("stop"));
        assert!(out[1].as_ref().unwrap_err().message.contains("no image"));
        assert_eq!(out[4].as_ref().unwrap().tokens, Some(2));
    }

    #[test]
    fn a_batch_that_fails_fails_each_member_with_its_id() {
        let requests: Vec<GenerateRequest> = ["7", "8"].iter().map(|i| req(i)).collect();
        let out = generate_in_batches(
            &requests,
            8,
            |r| Ok((r.id.clone(), 1)),
            |_, _| Err(crate::ModelError::Input("too long".into())),
            |r, t| finish_generation(&r.id, t, &[], |_| Ok::<_, String>(String::new())),
        );
        for (r, o) in requests.iter().zip(&out) {
            let e = o.as_ref().unwrap_err();
            assert!(e.message.contains(&format!("item {}", r.id)) && e.message.contains("too long"), "{e}");
        }
    }
}
