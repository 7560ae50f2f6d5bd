//! The tokenizer side of a processor: `tokenizer.json` (HF tokenizers), the processor's expansion
//! of each image placeholder to its number of image tokens, decoding with
//! `skip_special_tokens=True` and, where the reference's loader asks for it, transformers'
//! `clean_up_tokenization` pass; and Python's `str.strip()`, which the evaluation loop applies
//! to every answer.

use std::path::Path;

use crate::template::PromptError;

/// `tokenizer.json` plus what the processor needs around it.
pub struct PromptTokenizer {
    pub tokenizer: tokenizers::Tokenizer,
}

impl PromptTokenizer {
    pub fn from_dir(dir: &Path) -> Result<Self, PromptError> {
        let p = dir.join("tokenizer.json");
        if !p.is_file() {
            return Err(PromptError::Read { path: p, message: "missing (a tokenizer.json is needed)".into() });
        }
        let bytes =
            crate::fsread::read_small(&p).map_err(|e| PromptError::Read { path: p.clone(), message: e.to_string() })?;
        let tokenizer = tokenizers::Tokenizer::from_bytes(&bytes)
            .map_err(|e| PromptError::Read { path: p.clone(), message: e.to_string() })?;
        Ok(Self { tokenizer })
    }

    /// `LlavaProcessor.__call__`: each `image_token` in `text` becomes `n_image_tokens` copies,
    /// then the text is tokenized with special tokens added.
    pub fn encode(&self, text: &str, image_token: &str, n_image_tokens: usize) -> Result<Vec<u32>, PromptError> {
        let expanded = text.replace(image_token, &image_token.repeat(n_image_tokens));
        self.encode_text(&expanded, true)
    }

    /// `tokenizer(text, add_special_tokens=...)`: the ids of a text already expanded.
    pub fn encode_text(&self, text: &str, add_special_tokens: bool) -> Result<Vec<u32>, PromptError> {
        let enc = self.tokenizer.encode(text, add_special_tokens).map_err(|e| PromptError::Tokenizer(e.to_string()))?;
        Ok(enc.get_ids().to_vec())
    }

    /// `tokenizer.decode(ids, skip_special_tokens=True)`.
    pub fn decode(&self, ids: &[u32]) -> Result<String, PromptError> {
        self.tokenizer.decode(ids, true).map_err(|e| PromptError::Tokenizer(e.to_string()))
    }

    pub fn token_id(&self, token: &str) -> Option<u32> {
        self.tokenizer.token_to_id(token)
    }
}

/// The processor's text expansion: the i-th `image_token` in `text` becomes `counts[i]` copies.
/// The numbers of placeholders and images must agree.
pub fn expand_image_tokens(text: &str, image_token: &str, counts: &[usize]) -> Result<String, PromptError> {
    let found = if image_token.is_empty() { 0 } else { text.matches(image_token).count() };
    if found != counts.len() {
        return Err(PromptError::ImageTokens(format!(
            "the prompt has {found} {image_token} placeholders for {} images",
            counts.len()
        )));
    }
    let mut out = String::with_capacity(text.len() + counts.iter().sum::<usize>() * image_token.len());
    let mut pieces = text.split(image_token);
    out.push_str(pieces.next().unwrap_or(""));
    for (piece, &n) in pieces.zip(counts) {
        out.push_str(&image_token.repeat(n));
        out.push_str(piece);
    }
    Ok(out)
}

/// transformers' `PreTrainedTokenizerBase.clean_up_tokenization`: the spaces before punctuation
/// and English contractions that word-level tokenizers once produced, removed in this order.
pub fn clean_up_tokenization(s: &str) -> String {
    s.replace(" .", ".")
        .replace(" ?", "?")
        .replace(" !", "!")
        .replace(" ,", ",")
        .replace(" ' ", "'")
        .replace(" n't", "n't")
        .replace(" 'm", "'m")
        .replace(" 's", "'s")
        .replace(" 've", "'ve")
        .replace(" 're", "'re")
}

/// Python's `str.isspace()` for one character: Unicode white space plus the ASCII separators
/// U+001C..U+001F.
pub fn is_python_whitespace(c: char) -> bool {
    c.is_whitespace() || ('\u{1c}'..='\u{1f}').contains(&c)
}

/// Python's `str.strip()` with no argument.
pub fn python_strip(s: &str) -> &str {
    s.trim_matches(is_python_whitespace)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clean_up_removes_spaces_before_punctuation_and_contractions() {
        assert_eq!(
            clean_up_tokenization("Hi , you . I do n't know ! Is it ? It 's ok"),
            "Hi, you. I don't know! Is it? It's ok"
        );
        assert_eq!(clean_up_tokenization("we 're here , they 've gone , I 'm in"), "we're here, they've gone, I'm in");
        assert_eq!(clean_up_tokenization("a ' b"), "a'b");
        assert_eq!(clean_up_tokenization("no change"), "no change");
    }

    #[test]
    fn strip_is_pythons() {
        assert_eq!(python_strip("\u{1f} a b \n\u{3000}"), "a b");
    }

    #[test]
    fn image_tokens_expand_per_image() {
        assert_eq!(expand_image_tokens("a<i>b<i>", "<i>", &[2, 1]).unwrap(), "a<i><i>b<i>");
        let e = expand_image_tokens("a<i>", "<i>", &[1, 1]).unwrap_err().to_string();
        assert!(e.contains("1 <i> placeholders for 2 images"), "{e}");
    }
}
