//! Dataset stage: reads a VLSBench root (`data.json` + images), filters and validates it.

use serde::{Deserialize, Serialize};

/// One VLSBench item, as in `data.json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Item {
    pub instruction_id: u32,
    pub instruction: String,
    /// Relative to the dataset root, as written in `data.json` (e.g. `imgs/0.png`).
    pub image_path: String,
    pub category: String,
    pub sub_category: String,
    pub source: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image_description: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub safety_reason: Option<String>,
}
