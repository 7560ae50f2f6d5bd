//! Thumbnails of the dataset's images for the report: each distinct image scaled to fit
//! [`THUMB_PX`] and encoded as a small JPEG `data:` URL, so that a report of the 2,241 items stays
//! a few MB and needs no file beside it. Images are decoded on all cores; one that cannot be
//! read gets no thumbnail (the report says so), never a failed report. A run folder keeps its
//! thumbnails in [`CACHE_FILE`] by the image file's SHA-256, so a resumed run, a re-judge or a
//! second merge decodes only the images it has not seen.

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

/// The file in a run folder that keeps its report's thumbnails: a JSON object from an image
/// file's SHA-256 to its thumbnail. Only a cache: a missing or unreadable one is made again.
pub const CACHE_FILE: &str = ".thumbnails.json";

/// Thumbnails of `images` (key: the image path as `data.json` writes it; value: its file and the
/// SHA-256 of its bytes): those `run_dir`'s [`CACHE_FILE`] holds for the same bytes are reused,
/// the others made on `workers` threads, and the cache is saved again, holding these images only.
pub fn thumbnails_cached(
    run_dir: &Path,
    images: &BTreeMap<String, (PathBuf, String)>,
    workers: usize,
) -> BTreeMap<String, String> {
    let cache_path = run_dir.join(CACHE_FILE);
    let mut cache: BTreeMap<String, String> = match std::fs::read(&cache_path) {
        Ok(bytes) => serde_json::from_slice(&bytes).unwrap_or_else(|e| {
            tracing::debug!("report: {} is unreadable ({e}); thumbnails are made again", cache_path.display());
            BTreeMap::new()
        }),
        Err(_) => BTreeMap::new(),
    };
    let todo: BTreeMap<String, PathBuf> = images
        .iter()
        .filter(|(_, (_, sha))| !cache.contains_key(sha))
        .map(|(key, (path, _))| (key.clone(), path.clone()))
        .collect();
    let made = thumbnails_on(&todo, workers);
    let stale = cache.len();
    cache.retain(|sha, _| images.values().any(|(_, s)| s == sha));
    let mut out = BTreeMap::new();
    for (key, (_, sha)) in images {
        if let Some(url) = made.get(key) {
            cache.insert(sha.clone(), url.clone());
        }
        if let Some(url) = cache.get(sha) {
            out.insert(key.clone(), url.clone());
        }
    }
    if !made.is_empty() || cache.len() != stale {
        let saved = serde_json::to_vec(&cache)
            .map_err(std::io::Error::other)
            .and_then(|bytes| crate::fsutil::write_atomic(&cache_path, &bytes));
        if let Err(e) = saved {
            tracing::debug!("report: cannot save {}: {e}", cache_path.display());
        }
    }
    out
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

    #[test]
    fn a_run_folder_keeps_its_thumbnails_by_the_images_bytes_and_makes_only_new_ones() {
        let dir = tempfile::tempdir().unwrap();
        let (run_dir, img) = (dir.path().join("run"), dir.path().join("a.png"));
        std::fs::create_dir_all(&run_dir).unwrap();
        image::RgbImage::from_pixel(40, 20, image::Rgb([200, 10, 10])).save(&img).unwrap();
        let images = BTreeMap::from([("imgs/a.png".to_owned(), (img.clone(), "sha-red".to_owned()))]);
        let first = thumbnails_cached(&run_dir, &images, 1);
        assert!(first["imgs/a.png"].starts_with("data:image/jpeg;base64,"));
        assert!(run_dir.join(CACHE_FILE).is_file());
        // The same bytes: the thumbnail comes from the cache (the file is not even read again).
        std::fs::remove_file(&img).unwrap();
        assert_eq!(thumbnails_cached(&run_dir, &images, 1), first);
        // Other bytes under the same name: made again, and the old entry leaves the cache.
        image::RgbImage::from_pixel(40, 20, image::Rgb([10, 10, 200])).save(&img).unwrap();
        let images = BTreeMap::from([("imgs/a.png".to_owned(), (img.clone(), "sha-blue".to_owned()))]);
        let second = thumbnails_cached(&run_dir, &images, 1);
        assert_ne!(second["imgs/a.png"], first["imgs/a.png"]);
        let cache: BTreeMap<String, String> =
            serde_json::from_slice(&std::fs::read(run_dir.join(CACHE_FILE)).unwrap()).unwrap();
        assert_eq!(cache.keys().collect::<Vec<_>>(), ["sha-blue"]);
        // An unreadable cache is only a cache: the thumbnails are made again.
        std::fs::write(run_dir.join(CACHE_FILE), b"{not json").unwrap();
        assert_eq!(thumbnails_cached(&run_dir, &images, 1), second);
    }
}
