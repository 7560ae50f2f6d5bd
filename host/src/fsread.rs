//! Bounded reads: every file the host reads from outside goes through [`read`] (or
//! [`read_to_string`]), which refuses anything that is not a regular file (a FIFO, a device, a
//! socket, a folder) *before* opening it for reading, and stops at a size limit that depends on what
//! the file is ([`FileKind`]). So `validate /dev/zero` or `data_file = "/dev/zero"` end with one clear
//! error instead of growing memory until the kernel kills the process.
//!
//! Each error names the file, the limit and, where a bigger file can be legitimate, the environment
//! variable that raises it (`VLSBENCH_MAX_<KIND>_MIB`).
//!
//! The same module strips a UTF-8 byte-order mark ([`strip_bom`]): editors on some systems write
//! one at the start of JSON files, and serde_json would report it as "expected value at line 1
//! column 1".

use std::io::Read;
use std::os::unix::fs::{FileTypeExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

/// What a file is, which sets its size limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FileKind {
    /// A TOML manifest (or a `judge --judge` file).
    Manifest,
    /// The dataset's annotation file (`data.json`).
    DataFile,
    /// One image of the dataset.
    Image,
    /// A run folder's `answers.jsonl` or `verdicts.jsonl`, read on resume.
    Store,
    /// A judge component (`.wasm`).
    JudgeComponent,
    /// A run folder's small bookkeeping files (`run.json`).
    RunInfo,
}

impl FileKind {
    /// The default limit in MiB.
    const fn default_mib(self) -> u64 {
        match self {
            Self::Manifest => 1,
            Self::DataFile => 256,
            Self::Image => 64,
            Self::Store => 4096,
            Self::JudgeComponent => 256,
            Self::RunInfo => 1,
        }
    }

    /// The variable that raises the limit, where a larger file can be legitimate.
    pub const fn limit_env(self) -> Option<&'static str> {
        match self {
            Self::DataFile => Some("VLSBENCH_MAX_DATA_FILE_MIB"),
            Self::Image => Some("VLSBENCH_MAX_IMAGE_MIB"),
            Self::Store => Some("VLSBENCH_MAX_STORE_MIB"),
            Self::JudgeComponent => Some("VLSBENCH_MAX_JUDGE_MIB"),
            Self::Manifest | Self::RunInfo => None,
        }
    }

    /// What the file is, in words.
    pub const fn noun(self) -> &'static str {
        match self {
            Self::Manifest => "manifest",
            Self::DataFile => "annotation file",
            Self::Image => "image",
            Self::Store => "run record file",
            Self::JudgeComponent => "judge component",
            Self::RunInfo => "run info file",
        }
    }

    /// The limit in bytes: the environment's value (MiB) when set and valid, else the default.
    pub fn limit(self) -> u64 {
        let mib = self
            .limit_env()
            .and_then(|v| std::env::var(v).ok())
            .and_then(|v| v.trim().parse::<u64>().ok())
            .filter(|&m| m > 0)
            .unwrap_or(self.default_mib());
        mib.saturating_mul(1 << 20)
    }
}

/// Why a file could not be read.
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    #[error("{noun} {}: no such file", path.display())]
    Missing { noun: &'static str, path: PathBuf },
    #[error("{noun} {} is {what}, not a regular file", path.display())]
    NotRegular { noun: &'static str, path: PathBuf, what: &'static str },
    #[error("{noun} {} is larger than the {limit_mib} MiB limit for {noun}s{}", path.display(), hint(.env))]
    TooLarge { noun: &'static str, path: PathBuf, limit_mib: u64, env: Option<&'static str> },
    /// The OS error is part of the message, not a `source`, so `{:#}` does not print it twice.
    #[error("cannot read {noun} {}: {error}", path.display())]
    Io { noun: &'static str, path: PathBuf, error: std::io::Error },
    #[error("{noun} {} is not UTF-8 text (first bad byte at offset {offset})", path.display())]
    NotUtf8 { noun: &'static str, path: PathBuf, offset: usize },
}

fn hint(env: &Option<&'static str>) -> String {
    env.map(|v| format!(" (set {v} to a larger number of MiB to raise it)")).unwrap_or_default()
}

/// What a file type is, in words.
fn describe_type(t: std::fs::FileType) -> &'static str {
    if t.is_dir() {
        "a folder"
    } else if t.is_fifo() {
        "a FIFO (named pipe)"
    } else if t.is_char_device() {
        "a character device"
    } else if t.is_block_device() {
        "a block device"
    } else if t.is_socket() {
        "a socket"
    } else {
        "not a regular file"
    }
}

/// Checks that `path` (symlinks followed) is a regular file, without opening it.
pub fn check_regular(path: &Path, kind: FileKind) -> Result<std::fs::Metadata, ReadError> {
    let noun = kind.noun();
    let meta = std::fs::metadata(path).map_err(|error| match error.kind() {
        std::io::ErrorKind::NotFound => ReadError::Missing { noun, path: path.to_path_buf() },
        _ => ReadError::Io { noun, path: path.to_path_buf(), error },
    })?;
    if !meta.file_type().is_file() {
        return Err(ReadError::NotRegular { noun, path: path.to_path_buf(), what: describe_type(meta.file_type()) });
    }
    Ok(meta)
}

/// Reads a whole regular file of at most `kind.limit()` bytes.
pub fn read(path: &Path, kind: FileKind) -> Result<Vec<u8>, ReadError> {
    read_limited(path, kind, kind.limit())
}

fn read_limited(path: &Path, kind: FileKind, limit: u64) -> Result<Vec<u8>, ReadError> {
    let noun = kind.noun();
    let too_large =
        || ReadError::TooLarge { noun, path: path.to_path_buf(), limit_mib: limit >> 20, env: kind.limit_env() };
    let meta = check_regular(path, kind)?;
    if meta.len() > limit {
        return Err(too_large());
    }
    // O_NONBLOCK: should the path have become a FIFO since the check, opening it does not wait for
    // a writer; the type is checked again on the open file.
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK)
        .open(path)
        .map_err(|error| ReadError::Io { noun, path: path.to_path_buf(), error })?;
    let meta = file.metadata().map_err(|error| ReadError::Io { noun, path: path.to_path_buf(), error })?;
    if !meta.file_type().is_file() {
        return Err(ReadError::NotRegular { noun, path: path.to_path_buf(), what: describe_type(meta.file_type()) });
    }
    let mut data = Vec::with_capacity(usize::try_from(meta.len().min(limit)).unwrap_or(0));
    // One byte past the limit tells a file that grew while being read from one that fits.
    file.take(limit.saturating_add(1)).read_to_end(&mut data).map_err(|error| ReadError::Io {
        noun,
        path: path.to_path_buf(),
        error,
    })?;
    if data.len() as u64 > limit {
        return Err(too_large());
    }
    Ok(data)
}

/// Reads a whole regular UTF-8 file of at most `kind.limit()` bytes, without a leading byte-order
/// mark.
pub fn read_to_string(path: &Path, kind: FileKind) -> Result<String, ReadError> {
    let mut bytes = read(path, kind)?;
    if bytes.starts_with(BOM) {
        bytes.drain(..BOM.len());
    }
    String::from_utf8(bytes).map_err(|e| ReadError::NotUtf8 {
        noun: kind.noun(),
        path: path.to_path_buf(),
        offset: e.utf8_error().valid_up_to(),
    })
}

/// The UTF-8 byte-order mark.
pub const BOM: &[u8] = b"\xEF\xBB\xBF";

/// `bytes` without a leading UTF-8 byte-order mark.
pub fn strip_bom(bytes: &[u8]) -> &[u8] {
    bytes.strip_prefix(BOM).unwrap_or(bytes)
}

/// A list of item ids for a message, at most `shown` of them, then how many more:
/// `1, 2, 3 … and 747 more`.
pub fn list_ids<T: std::fmt::Display>(ids: &[T], shown: usize) -> String {
    let mut out = ids.iter().take(shown).map(ToString::to_string).collect::<Vec<_>>().join(", ");
    if ids.len() > shown {
        out.push_str(&format!(" … and {} more", ids.len() - shown));
    }
    out
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn dev_zero_is_refused_as_a_device_without_reading_it() {
        let err = read(Path::new("/dev/zero"), FileKind::DataFile).unwrap_err();
        assert!(matches!(err, ReadError::NotRegular { .. }), "{err:?}");
        assert_eq!(err.to_string(), "annotation file /dev/zero is a character device, not a regular file");
    }

    #[test]
    fn a_fifo_is_refused_without_waiting_for_a_writer() {
        let dir = tempfile::tempdir().unwrap();
        let fifo = dir.path().join("pipe");
        let status = std::process::Command::new("mkfifo").arg(&fifo).status().unwrap();
        assert!(status.success());
        let err = read(&fifo, FileKind::Manifest).unwrap_err();
        assert!(err.to_string().contains("is a FIFO (named pipe), not a regular file"), "{err}");
    }

    #[test]
    fn a_file_over_the_limit_is_refused_naming_the_limit_and_how_to_raise_it() {
        let dir = tempfile::tempdir().unwrap();
        let big = dir.path().join("data.json");
        std::fs::write(&big, vec![b' '; (1 << 20) + 1]).unwrap();
        let err = read_limited(&big, FileKind::DataFile, 1 << 20).unwrap_err().to_string();
        assert!(err.contains("larger than the 1 MiB limit for annotation files"), "{err}");
        assert!(err.contains("VLSBENCH_MAX_DATA_FILE_MIB"), "{err}");
        let err = read_limited(&big, FileKind::Manifest, 1 << 20).unwrap_err().to_string();
        assert!(!err.contains("VLSBENCH_MAX"), "a manifest's limit is not raised: {err}");
        assert_eq!(read_limited(&big, FileKind::DataFile, 2 << 20).unwrap().len(), (1 << 20) + 1);
    }

    #[test]
    fn a_missing_file_and_a_folder_are_named() {
        let dir = tempfile::tempdir().unwrap();
        let err = read(&dir.path().join("nope"), FileKind::Image).unwrap_err().to_string();
        assert!(err.ends_with("nope: no such file"), "{err}");
        let err = read(dir.path(), FileKind::Image).unwrap_err().to_string();
        assert!(err.contains("is a folder"), "{err}");
    }

    #[test]
    fn a_byte_order_mark_is_dropped_from_text() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("m.toml");
        std::fs::write(&p, b"\xEF\xBB\xBF[a]\n").unwrap();
        assert_eq!(read_to_string(&p, FileKind::Manifest).unwrap(), "[a]\n");
        assert_eq!(strip_bom(b"\xEF\xBB\xBF{}"), b"{}");
    }

    #[test]
    fn os_error_text_appears_once_in_an_error_chain() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("locked");
        std::fs::write(&p, b"x").unwrap();
        let e = ReadError::Io {
            noun: "manifest",
            path: p,
            error: std::io::Error::from(std::io::ErrorKind::PermissionDenied),
        };
        let chain = format!("{:#}", anyhow::Error::from(e));
        assert_eq!(chain.matches("permission denied").count(), 1, "{chain}");
    }

    #[test]
    fn id_lists_are_bounded() {
        let ids: Vec<u32> = (0..750).collect();
        assert_eq!(list_ids(&ids, 3), "0, 1, 2 … and 747 more");
        assert_eq!(list_ids(&ids[..2], 3), "0, 1");
    }
}
