//! Thumbnails of the dataset's images for the report: each distinct image scaled to fit
//! [`THUMB_PX`] and encoded as a small JPEG `data:` URL, so that a report of the 2,241 items stays
//! a few MB and needs no file beside it. Images are decoded on all cores; one that cannot be
//! read gets no thumbnail (the report says so), never a failed report.

use std::collections::BTreeMap;
use std::io::Cursor;
use std::path::{Path, PathBuf};

use base64::Engine as _;

/// The longest side of a thumbnail, in pixels.
pub const THUMB_PX: u32 = 80;
/// JPEG quality of the thumbnails.
const QUALITY: u8 = 60;

/// A `data:image/jpeg;base64,...` thumbnail of the image at `path`, or why there is none.
pub fn thumbnail(path: &Path) -> Result<String, String> {
    let reader = image::ImageReader::open(path).map_err(|e| format!("cannot open {}: {e}", path.display()))?;
    let reader = reader.with_guessed_format().map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    let img = reader.decode().map_err(|e| format!("cannot decode {}: {e}", path.display()))?;
    let small = img.thumbnail(THUMB_PX, THUMB_PX).to_rgb8();
    let mut out = Cursor::new(Vec::new());
    let encoder = image::codecs::jpeg::JpegEncoder::new_with_quality(&mut out, QUALITY);
    small.write_with_encoder(encoder).map_err(|e| format!("cannot encode a thumbnail of {}: {e}", path.display()))?;
    Ok(format!("data:image/jpeg;base64,{}", base64::engine::general_purpose::STANDARD.encode(out.into_inner())))
}

/// Thumbnails of `images` (key: the image path as `data.json` writes it; value: its file), made on
/// all cores. Images that cannot be read are logged and left out.
pub fn thumbnails(images: &BTreeMap<String, PathBuf>) -> BTreeMap<String, String> {
    thumbnails_on(images, std::thread::available_parallelism().map(|n| n.get()).unwrap_or(2))
}

/// [`thumbnails`] on at most `workers` threads (a run makes them beside its items, on half the
/// cores).
pub fn thumbnails_on(images: &BTreeMap<String, PathBuf>, workers: usize) -> BTreeMap<String, String> {
    let list: Vec<(&String, &PathBuf)> = images.iter().collect();
    let workers = workers.clamp(1, 16);
    let next = std::sync::atomic::AtomicUsize::new(0);
    let results = std::sync::Mutex::new(BTreeMap::new());
    std::thread::scope(|s| {
        for _ in 0..workers.min(list.len()) {
            s.spawn(|| {
                loop {
                    let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    let Some((key, path)) = list.get(i) else { break };
                    match thumbnail(path) {
                        Ok(url) => {
                            results.lock().unwrap_or_else(|p| p.into_inner()).insert((*key).clone(), url);
                        }
                        Err(e) => tracing::warn!("report: no thumbnail for {key}: {e}"),
                    }
                }
            });
        }
    });
    results.into_inner().unwrap_or_else(|p| p.into_inner())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn a_large_image_becomes_a_small_jpeg_data_url_that_keeps_its_aspect() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("big.png");
        image::RgbImage::from_fn(640, 320, |x, y| image::Rgb([(x % 256) as u8, (y % 256) as u8, 90]))
            .save(&path)
            .unwrap();
        let url = thumbnail(&path).unwrap();
        let b64 = url.strip_prefix("data:image/jpeg;base64,").unwrap();
        let bytes = base64::engine::general_purpose::STANDARD.decode(b64).unwrap();
        assert!(bytes.len() < 6 * 1024, "{} bytes", bytes.len());
        let thumb = image::load_from_memory(&bytes).unwrap();
        assert_eq!((thumb.width(), thumb.height()), (THUMB_PX, THUMB_PX / 2));
    }

    #[test]
    fn an_unreadable_image_gets_no_thumbnail_and_names_its_file() {
        let dir = tempfile::tempdir().unwrap();
        let bad = dir.path().join("bad.png");
        std::fs::write(&bad, b"not a png").unwrap();
        assert!(thumbnail(&bad).unwrap_err().contains("bad.png"));
        let images = BTreeMap::from([("imgs/bad.png".to_owned(), bad)]);
        assert!(thumbnails(&images).is_empty());
    }
}
