//! Reading a checkpoint's small files (configs, tokenizers, chat templates, SentencePiece models,
//! weight indexes) with a size limit, refusing what is not a regular file: a checkpoint folder
//! with a FIFO, a device or a runaway file where `config.json` should be fails at once, naming
//! the file, instead of hanging or filling memory. The weights themselves are read tensor by
//! tensor against their headers ([`crate::weights`]); images are decoded under a pixel limit
//! ([`crate::image`]).

use std::io::{self, Read};
use std::path::Path;

/// The largest small file a checkpoint may hold: 512 MiB (a large `tokenizer.json` is tens of MB).
pub const MAX_SMALL_FILE: u64 = 512 << 20;

/// The bytes of `path`, a regular file of at most [`MAX_SMALL_FILE`] bytes. Errors are
/// [`io::Error`]s whose message says what is wrong (the callers name the file).
pub fn read_small(path: &Path) -> io::Result<Vec<u8>> {
    let meta = std::fs::metadata(path)?;
    if !meta.is_file() {
        let what = if meta.is_dir() { "a folder" } else { "not a regular file (a FIFO, socket or device)" };
        return Err(io::Error::new(io::ErrorKind::InvalidInput, format!("is {what}")));
    }
    let too_large =
        || io::Error::new(io::ErrorKind::InvalidData, format!("is larger than the {} MiB limit", MAX_SMALL_FILE >> 20));
    if meta.len() > MAX_SMALL_FILE {
        return Err(too_large());
    }
    let mut bytes = Vec::with_capacity(meta.len() as usize);
    // `take` bounds a file that grows while it is read.
    std::fs::File::open(path)?.take(MAX_SMALL_FILE + 1).read_to_end(&mut bytes)?;
    if bytes.len() as u64 > MAX_SMALL_FILE {
        return Err(too_large());
    }
    Ok(bytes)
}

/// [`read_small`] as UTF-8 text.
pub fn read_small_text(path: &Path) -> io::Result<String> {
    String::from_utf8(read_small(path)?).map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e.utf8_error()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_device_or_a_folder_is_refused_without_reading_it() {
        let err = read_small(Path::new("/dev/zero")).unwrap_err().to_string();
        assert!(err.contains("not a regular file"), "{err}");
        let err = read_small(Path::new("/")).unwrap_err().to_string();
        assert!(err.contains("a folder"), "{err}");
    }

    #[test]
    fn a_small_file_reads_whole() {
        let dir = crate::testing::temp_dir("fsread");
        let p = dir.join("config.json");
        std::fs::write(&p, "{\"a\": 1}").unwrap();
        assert_eq!(read_small_text(&p).unwrap(), "{\"a\": 1}");
    }
}
