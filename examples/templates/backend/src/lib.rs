//! A backend template: the arch `my_vlm`, a "model" that answers every item with the text in its
//! options after checking that it can read the item's image. Replace [`MyVlm::answer`] with your
//! model; everything else (the description, options, message layout, errors) is what a real
//! backend keeps.

use std::collections::BTreeMap;
use std::path::Path;

use serde::Deserialize;
use vlsbench_plugin_api::{
    Backend, BackendConfig, BackendError, BackendInfo, ContentPart, GenerateRequest, Generation, MessageLayout,
    OptionKind, OptionSpec, Role,
};

/// `[model.options]`: every key optional; an unknown key is a `bad_config` error naming it.
#[derive(Debug, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Options {
    /// What the model answers.
    pub answer: String,
}

impl Default for Options {
    fn default() -> Self {
        Self { answer: "I cannot help with that.".into() }
    }
}

/// The loaded model.
pub struct MyVlm {
    options: Options,
}

impl MyVlm {
    /// One item's answer, from its question and image. The host has checked that the image path
    /// is inside the dataset root; reading it can still fail, which is an error, never an answer.
    fn answer(&self, question: &str, image: &Path) -> Result<String, BackendError> {
        let bytes = std::fs::read(image)
            .map_err(|e| BackendError::bad_request(format!("cannot read {}: {e}", image.display())))?;
        let _ = (question, bytes);
        Ok(self.options.answer.clone())
    }
}

impl Backend for MyVlm {
    fn describe() -> BackendInfo {
        BackendInfo {
            name: "my-vlm".into(),
            version: env!("CARGO_PKG_VERSION").into(),
            description: "a template backend: answers with the text in its options".into(),
            archs: vec!["my_vlm".into()],
            max_batch: 4,
            concurrent: true,
            devices: vec!["cpu".into()],
            checkpoint_is_path: false,
            path_options: vec![],
            // Without this line `my_vlm` gets the default layout: user [image, text].
            message_layouts: BTreeMap::from([("my_vlm".to_owned(), MessageLayout::text_then_image())]),
        }
    }

    fn options() -> Option<Vec<OptionSpec>> {
        Some(vec![
            OptionSpec::new("answer", OptionKind::String, "what the model answers")
                .with_default(Options::default().answer.into()),
        ])
    }

    /// Runs at `validate` and before a run makes its folder, without loading the model: check
    /// here what `create` needs that the host cannot see (a library, a device, files), and say
    /// what you found. `validate` prints the lines.
    fn check(config: &BackendConfig) -> Result<Vec<String>, BackendError> {
        let options: Options = config.options()?;
        if options.answer.trim().is_empty() {
            return Err(BackendError::bad_config("options.answer is empty: the model would answer nothing"));
        }
        Ok(vec![format!("answers {:?}", options.answer)])
    }

    fn create(config: BackendConfig) -> Result<Self, BackendError> {
        // `config.base_dir` is the manifest's folder (absolute); resolve relative paths against it.
        Ok(Self { options: config.options()? })
    }

    fn generate(&self, requests: Vec<GenerateRequest>) -> Vec<Result<Generation, BackendError>> {
        requests.iter().map(|r| self.answer_request(r).map(Generation::new)).collect()
    }
}

impl MyVlm {
    /// The question and the image of a request laid out as declared (one user message).
    fn answer_request(&self, request: &GenerateRequest) -> Result<String, BackendError> {
        let user = request.messages.iter().find(|m| m.role == Role::User);
        let parts = user.map(|m| m.content.as_slice()).unwrap_or_default();
        let question = parts.iter().find_map(|p| match p {
            ContentPart::Text { text } => Some(text.as_str()),
            ContentPart::Image { .. } => None,
        });
        let image = parts.iter().find_map(|p| match p {
            ContentPart::Image { path } => Some(path.as_path()),
            ContentPart::Text { .. } => None,
        });
        match (question, image) {
            (Some(q), Some(i)) => self.answer(q, i),
            _ => Err(BackendError::bad_request("a request needs a question and an image")),
        }
    }
}

vlsbench_plugin_api::export_backend!(MyVlm);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_unreadable_image_is_an_error_not_an_answer() {
        let model = MyVlm { options: Options::default() };
        assert!(model.answer("What is this?", Path::new("/no/such/image.png")).is_err());
    }
}
