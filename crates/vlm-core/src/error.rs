//! The error every model stage returns: candle's own, a checkpoint that cannot be loaded, or an
//! input the model cannot take (the item's fault, reported as a bad request).

pub type Result<T> = std::result::Result<T, ModelError>;

#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    #[error("{0}")]
    Candle(#[from] candle_core::Error),
    #[error("{0}")]
    Load(String),
    #[error("{0}")]
    Input(String),
}

impl ModelError {
    /// The same error again, for every member of a batch that failed as a whole.
    pub fn duplicate(&self) -> ModelError {
        match self {
            ModelError::Input(m) => ModelError::Input(m.clone()),
            other => ModelError::Load(other.to_string()),
        }
    }
}
