//! Reading a JSON Lines store file's bytes: the latest record of each id, a torn last line dropped.

use std::collections::BTreeMap;
use std::path::Path;

use serde::de::DeserializeOwned;

use super::StoreError;

/// What [`parse_jsonl`] read from a JSON Lines file's bytes.
#[derive(Debug, Clone, PartialEq)]
pub struct Parsed<T> {
    /// The latest record of each id.
    pub records: BTreeMap<u32, T>,
    /// Torn or unparsable last lines dropped (0 or 1).
    pub dropped: usize,
    /// Bytes to keep: the end of the last good line.
    pub keep_len: usize,
    /// The last good record lacks its newline.
    pub missing_newline: bool,
}

/// Parses the bytes of an `answers.jsonl` or `verdicts.jsonl` (named `path` in messages): a
/// leading byte-order mark and blank lines are skipped, a torn or unparsable last line is dropped
/// (with a warning), an unparsable line before it is a [`StoreError::Parse`]. Never panics, whatever
/// the bytes.
pub fn parse_jsonl<T: DeserializeOwned>(
    data: &[u8],
    path: &Path,
    id_of: fn(&T) -> u32,
) -> Result<Parsed<T>, StoreError> {
    // An editor's byte-order mark before the first record is not part of it.
    let bom = if data.starts_with(crate::fsread::BOM) { crate::fsread::BOM.len() } else { 0 };

    // Split into lines; the last one may lack its newline (a torn write).
    let mut lines = Vec::new(); // (start, end without '\n', has '\n')
    let mut start = bom;
    while start < data.len() {
        match data[start..].iter().position(|&b| b == b'\n') {
            Some(n) => {
                lines.push((start, start + n, true));
                start += n + 1;
            }
            None => {
                lines.push((start, data.len(), false));
                start = data.len();
            }
        }
    }
    let last_content = lines.iter().rposition(|&(s, e, _)| !data[s..e].iter().all(u8::is_ascii_whitespace));

    let mut records = BTreeMap::new();
    let mut keep_len = bom; // bytes to keep: the end of the last good line, '\n' included
    let mut missing_newline = false;
    let mut dropped = 0;
    for (i, &(s, e, has_newline)) in lines.iter().enumerate() {
        let bytes = &data[s..e];
        if bytes.iter().all(u8::is_ascii_whitespace) {
            if has_newline {
                keep_len = e + 1;
            }
            continue;
        }
        match serde_json::from_slice::<T>(bytes) {
            Ok(record) => {
                records.insert(id_of(&record), record);
                keep_len = if has_newline { e + 1 } else { e };
                missing_newline = !has_newline;
            }
            Err(source) if Some(i) == last_content => {
                tracing::warn!(
                    file = %path.display(),
                    line = i + 1,
                    error = %source,
                    "dropping a torn or unparsable last line (the item will be redone)"
                );
                dropped += 1;
            }
            Err(error) => {
                return Err(StoreError::Parse { path: path.to_path_buf(), line: i + 1, error });
            }
        }
    }

    Ok(Parsed { records, dropped, keep_len, missing_newline })
}
