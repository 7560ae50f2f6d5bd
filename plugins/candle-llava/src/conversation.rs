//! The original LLaVA code base's prompt, reproduced (haotian-liu/LLaVA):
//!
//! - [`Conversation`]: `llava/conversation.py`'s `conv_templates["llava_v1"]` (system text,
//!   roles `USER` / `ASSISTANT`, `SeparatorStyle.TWO` with `sep` `" "` and `sep2` `"</s>"`) and
//!   its `get_prompt()`; [`llava_v1_prompt`] is the one-turn prompt the eval scripts build
//!   (`<image>\n` + query, then an empty assistant turn).
//! - [`tokenizer_image_token`]: `llava/mm_utils.py`'s function of that name: the prompt split at
//!   each `<image>`, every chunk tokenized with its own BOS, the first BOS kept and the others
//!   dropped, and a marker ([`PromptToken::Image`], the code base's `IMAGE_TOKEN_INDEX` -200)
//!   where each image's features are spliced in.
//! - [`decode_answer`]: `tokenizer.batch_decode(output_ids, skip_special_tokens=True)[0].strip()`
//!   on the tokens before the first EOS, with Python's `str.strip()` whitespace.

use vlm_core::sentencepiece::{SentencePieceError, SlowLlamaTokenizer};
use vlm_core::tokenizer::python_strip;

/// `DEFAULT_IMAGE_TOKEN`: where an image goes in the prompt text.
pub const DEFAULT_IMAGE_TOKEN: &str = "<image>";
/// `IMAGE_TOKEN_INDEX`: the id `tokenizer_image_token` puts where an image goes.
pub const IMAGE_TOKEN_INDEX: i64 = -200;
/// `conv_llava_v1.system`.
pub const LLAVA_V1_SYSTEM: &str = "A chat between a curious human and an artificial intelligence assistant. \
The assistant gives helpful, detailed, and polite answers to the human's questions.";

/// A conversation in `SeparatorStyle.TWO` (the only style `llava_v1` uses).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Conversation {
    pub system: String,
    pub roles: [String; 2],
    /// (role, message); `None` is an open turn, rendered as `ROLE:` for the model to continue.
    pub messages: Vec<(String, Option<String>)>,
    pub sep: String,
    pub sep2: String,
}

impl Conversation {
    /// `conv_templates["llava_v1"]`, empty.
    pub fn llava_v1() -> Self {
        Self {
            system: LLAVA_V1_SYSTEM.to_owned(),
            roles: ["USER".to_owned(), "ASSISTANT".to_owned()],
            messages: Vec::new(),
            sep: " ".to_owned(),
            sep2: "</s>".to_owned(),
        }
    }

    /// `append_message(role, message)`.
    pub fn append_message(&mut self, role: &str, message: Option<&str>) {
        self.messages.push((role.to_owned(), message.map(str::to_owned)));
    }

    /// `get_prompt()` for `SeparatorStyle.TWO`: the system text and `sep`, then each turn as
    /// `ROLE: message` followed by `sep` / `sep2` alternately, or `ROLE:` for an open turn (an
    /// empty message counts as open, as Python's `if message:` does).
    pub fn prompt(&self) -> String {
        let seps = [self.sep.as_str(), self.sep2.as_str()];
        let mut out = format!("{}{}", self.system, seps[0]);
        for (i, (role, message)) in self.messages.iter().enumerate() {
            match message.as_deref() {
                Some(m) if !m.is_empty() => {
                    out.push_str(role);
                    out.push_str(": ");
                    out.push_str(m);
                    out.push_str(seps[i % 2]);
                }
                _ => {
                    out.push_str(role);
                    out.push(':');
                }
            }
        }
        out
    }
}

/// The prompt the LLaVA eval scripts build for one image and one question
/// (`mm_use_im_start_end` off): `DEFAULT_IMAGE_TOKEN + "\n" + query` as the user turn, then an
/// open assistant turn.
pub fn llava_v1_prompt(query: &str) -> String {
    let mut conv = Conversation::llava_v1();
    let [user, assistant] = conv.roles.clone();
    conv.append_message(&user, Some(&format!("{DEFAULT_IMAGE_TOKEN}\n{query}")));
    conv.append_message(&assistant, None);
    conv.prompt()
}

/// One position of a tokenized prompt: a token id, or the place of an image's features.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum PromptToken {
    Text(u32),
    Image,
}

impl PromptToken {
    /// The id the LLaVA code base uses: the token's, or [`IMAGE_TOKEN_INDEX`] for an image.
    pub fn llava_id(self) -> i64 {
        match self {
            PromptToken::Text(id) => i64::from(id),
            PromptToken::Image => IMAGE_TOKEN_INDEX,
        }
    }
}

/// `mm_utils.tokenizer_image_token(prompt, tokenizer)`: each `<image>`-separated chunk
/// tokenized as `tokenizer(chunk).input_ids` (with BOS); if the first chunk starts with BOS that
/// BOS is kept once and the first token of every chunk is dropped; an image marker between chunks.
pub fn tokenizer_image_token(prompt: &str, tok: &SlowLlamaTokenizer) -> Vec<PromptToken> {
    let chunks: Vec<Vec<u32>> = prompt.split(DEFAULT_IMAGE_TOKEN).map(|c| tok.encode(c, true)).collect();
    let mut out = Vec::new();
    let mut offset = 0;
    if let Some(&first) = chunks.first().and_then(|c| c.first())
        && first == tok.bos_id()
    {
        offset = 1;
        out.push(PromptToken::Text(first));
    }
    // insert_separator(chunks, [IMAGE_TOKEN_INDEX] * (offset + 1)), then x[offset:] of each
    let separator = vec![PromptToken::Image; offset + 1];
    for (i, chunk) in chunks.iter().enumerate() {
        if i > 0 {
            out.extend_from_slice(&separator[offset..]);
        }
        out.extend(chunk.iter().skip(offset).map(|&id| PromptToken::Text(id)));
    }
    out
}

/// The prompt as the LLaVA code base's id list (images as [`IMAGE_TOKEN_INDEX`]).
pub fn llava_ids(tokens: &[PromptToken]) -> Vec<i64> {
    tokens.iter().map(|t| t.llava_id()).collect()
}

/// The token ids between images: one run more than there are images (runs may be empty), so
/// that a caller embeds run 0, splices image 0's features, embeds run 1, and so on.
pub fn text_runs(tokens: &[PromptToken]) -> Vec<Vec<u32>> {
    let mut runs = vec![Vec::new()];
    for t in tokens {
        match *t {
            PromptToken::Text(id) => {
                if let Some(run) = runs.last_mut() {
                    run.push(id);
                }
            }
            PromptToken::Image => runs.push(Vec::new()),
        }
    }
    runs
}

/// The answer text the LLaVA code base reports for generated tokens: those before the first
/// EOS, decoded with `skip_special_tokens=True`, then `.strip()`.
pub fn decode_answer(tok: &SlowLlamaTokenizer, generated: &[u32]) -> Result<String, SentencePieceError> {
    let end = generated.iter().position(|&t| t == tok.eos_id()).unwrap_or(generated.len());
    Ok(python_strip(&tok.decode(&generated[..end], true)?).to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_util::fixtures;
    use serde_json::Value;

    fn tokenizer() -> SlowLlamaTokenizer {
        SlowLlamaTokenizer::from_file(fixtures().join("checkpoints/llava_original/tokenizer.model"))
            .expect("the llava_original tokenizer.model loads")
    }

    fn json(rel: &str) -> Value {
        let path = fixtures().join(rel);
        let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
    }

    fn golden_cases() -> Vec<Value> {
        let cases = json("golden/llava_original/golden.json")["cases"].as_array().expect("cases is a list").clone();
        assert_eq!(cases.len(), 21, "golden.json holds 21 cases");
        cases
    }

    fn ints(v: &Value) -> Vec<i64> {
        v.as_array().expect("a list of ids").iter().map(|x| x.as_i64().expect("an id")).collect()
    }

    fn u32s(v: &Value) -> Vec<u32> {
        ints(v).into_iter().map(|x| u32::try_from(x).expect("a token id")).collect()
    }

    fn str_of<'a>(v: &'a Value, key: &str) -> &'a str {
        v[key].as_str().unwrap_or_else(|| panic!("{key} is a string"))
    }

    #[test]
    fn every_golden_prompt_renders_as_the_llava_v1_conversation() {
        for case in golden_cases() {
            assert_eq!(llava_v1_prompt(str_of(&case, "prompt")), str_of(&case, "rendered_prompt"));
        }
    }

    #[test]
    fn every_golden_prompt_tokenizes_to_the_recorded_ids_with_the_image_marker_in_place() {
        let tok = tokenizer();
        for case in golden_cases() {
            let tokens = tokenizer_image_token(str_of(&case, "rendered_prompt"), &tok);
            assert_eq!(llava_ids(&tokens), ints(&case["input_ids"]), "input ids of {:?}", case["prompt"]);
            assert_eq!(tokens.iter().filter(|t| **t == PromptToken::Image).count(), 1);
        }
    }

    #[test]
    fn every_golden_greedy_continuation_decodes_to_the_recorded_text() {
        let tok = tokenizer();
        for case in golden_cases() {
            let greedy = u32s(&case["greedy_tokens"]);
            let decoded = tok.decode(&greedy, true).expect("greedy tokens are in the vocabulary");
            assert_eq!(decoded, str_of(&case, "decoded"), "decode of {greedy:?}");
            let until_eos = match case["first_eos_index"].as_u64() {
                Some(i) => &greedy[..i as usize],
                None => &greedy[..],
            };
            let stripped = python_strip(&tok.decode(until_eos, true).expect("in the vocabulary")).to_owned();
            assert_eq!(stripped, str_of(&case, "decoded_until_eos_stripped"));
            assert_eq!(decode_answer(&tok, &greedy).expect("in the vocabulary"), stripped);
        }
    }

    #[test]
    fn prompts_with_no_several_or_adjacent_images_tokenize_like_mm_utils() {
        let tok = tokenizer();
        let v = json("golden/llava_original/tokenizer_vectors.json");
        let cases = v["image_prompts"].as_array().expect("image_prompts is a list");
        assert!(cases.len() >= 8);
        for case in cases {
            let prompt = str_of(case, "prompt");
            let tokens = tokenizer_image_token(prompt, &tok);
            assert_eq!(llava_ids(&tokens), ints(&case["input_ids"]), "input ids of {prompt:?}");
            let images = tokens.iter().filter(|t| **t == PromptToken::Image).count();
            assert_eq!(text_runs(&tokens).len(), images + 1);
        }
    }

    #[test]
    fn text_runs_split_the_prompt_at_each_image() {
        use PromptToken::{Image, Text};
        assert_eq!(text_runs(&[Text(1), Text(5), Image, Text(7)]), vec![vec![1, 5], vec![7]]);
        assert_eq!(text_runs(&[Text(1), Image, Image]), vec![vec![1], vec![], vec![]]);
        assert_eq!(text_runs(&[]), vec![Vec::<u32>::new()]);
    }

    #[test]
    fn the_answer_stops_at_the_first_eos_and_is_stripped_like_python() {
        let tok = tokenizer();
        let mut ids = tok.encode("  two words \n", false);
        let answer_len = ids.len();
        ids.extend([tok.eos_id()]);
        ids.extend(tok.encode("after eos", false));
        assert_eq!(decode_answer(&tok, &ids).expect("in the vocabulary"), "two words");
        assert_eq!(decode_answer(&tok, &ids[..answer_len]).expect("in the vocabulary"), "two words");
        assert_eq!(python_strip("\u{1F}\u{3000} x \u{85}\u{1C}"), "x");
        assert_eq!(python_strip("\u{200B}x"), "\u{200B}x");
    }

    #[test]
    fn a_multi_turn_llava_v1_conversation_alternates_the_two_separators() {
        let mut conv = Conversation::llava_v1();
        conv.append_message("USER", Some("hi"));
        conv.append_message("ASSISTANT", Some("hello"));
        conv.append_message("USER", Some("and?"));
        conv.append_message("ASSISTANT", None);
        assert_eq!(conv.prompt(), format!("{LLAVA_V1_SYSTEM} USER: hi ASSISTANT: hello</s>USER: and? ASSISTANT:"));
    }
}
