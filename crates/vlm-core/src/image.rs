//! Images opened the way each reference loader opens them, before any processor sees them
//! (SPEC: "How each reference loader prepares the image"). Which loader an arch uses is a property
//! of the arch's reference loader, never of the processor class:
//!
//! - [`ImageLoader::DropAlpha`]: `Image.open(path).convert("RGB")`, what the reference's
//!   `models/utils.py` `load_images` does for `llava`, `llava_hf`, `llava_next` and `mllama`:
//!   alpha dropped, the colour channels kept as they are; grayscale replicated; palettes expanded.
//! - [`ImageLoader::CompositeRgbaOnWhite`]: `qwen_vl_utils`' `to_rgb`, for `qwen2vl`: an RGBA image
//!   pasted onto a white RGB canvas with its alpha as the mask (Pillow's `paste`), any other mode
//!   converted with `convert("RGB")` (so a grey-alpha or palette image still drops its alpha).
//!
//! Every image is checked against [`MAX_PIXELS`] before it is decoded.

use std::path::Path;

use image::{ExtendedColorType, ImageDecoder};

/// An 8-bit RGB image, row-major, 3 bytes a pixel.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rgb8 {
    pub width: usize,
    pub height: usize,
    pub data: Vec<u8>,
}

#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    #[error("cannot read image {path}: {message}")]
    Decode { path: String, message: String },
    #[error("image {path} is {width}x{height}, larger than the {max} pixels allowed")]
    TooLarge { path: String, width: u32, height: u32, max: u64 },
    #[error("image {path} is empty")]
    Empty { path: String },
    #[error("image {path} is {width}x{height}: {message}")]
    Geometry { path: String, width: usize, height: usize, message: String },
}

/// The largest image decoded, in pixels (Pillow's own decompression-bomb limit is 2 * 89.5M).
pub const MAX_PIXELS: u64 = 178_956_970;

/// How a reference loader turns an image file into RGB (see the module docs).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ImageLoader {
    /// `Image.open(path).convert("RGB")`.
    DropAlpha,
    /// `qwen_vl_utils`' `to_rgb`: RGBA pasted onto white, other modes `convert("RGB")`.
    CompositeRgbaOnWhite,
}

impl ImageLoader {
    pub fn open(self, path: &Path) -> Result<Rgb8, ImageError> {
        match self {
            ImageLoader::DropAlpha => open_rgb_dropping_alpha(path),
            ImageLoader::CompositeRgbaOnWhite => open_rgb_compositing_rgba_on_white(path),
        }
    }
}

/// A decoded image and whether Pillow would open it in mode `RGBA` (a truecolour-with-alpha
/// file, as opposed to grey + alpha or a palette with a transparent entry).
struct Decoded {
    image: image::DynamicImage,
    rgba_mode: bool,
}

/// Decodes an image, refusing one over [`MAX_PIXELS`] before decoding it.
fn open_checked(path: &Path) -> Result<Decoded, ImageError> {
    let p = path.display().to_string();
    let decode = |e: &dyn std::fmt::Display| ImageError::Decode { path: p.clone(), message: e.to_string() };
    let decoder = image::ImageReader::open(path)
        .map_err(|e| decode(&e))?
        .with_guessed_format()
        .map_err(|e| decode(&e))?
        .into_decoder()
        .map_err(|e| decode(&e))?;
    let (w, h) = decoder.dimensions();
    if w as u64 * h as u64 > MAX_PIXELS {
        return Err(ImageError::TooLarge { path: p, width: w, height: h, max: MAX_PIXELS });
    }
    if w == 0 || h == 0 {
        return Err(ImageError::Empty { path: p });
    }
    let rgba_mode = matches!(
        decoder.original_color_type(),
        ExtendedColorType::Rgba8 | ExtendedColorType::Rgba16 | ExtendedColorType::Rgba32F
    );
    let image = image::DynamicImage::from_decoder(decoder).map_err(|e| decode(&e))?;
    Ok(Decoded { image, rgba_mode })
}

/// `Image.open(path).convert("RGB")`: alpha dropped, not composited; grayscale replicated.
pub fn open_rgb_dropping_alpha(path: &Path) -> Result<Rgb8, ImageError> {
    let img = open_checked(path)?.image;
    let (width, height) = (img.width() as usize, img.height() as usize);
    Ok(Rgb8 { width, height, data: img.to_rgb8().into_raw() })
}

/// `qwen_vl_utils.vision_process.to_rgb`: an RGBA image pasted onto white with its alpha as the
/// mask; every other mode through `convert("RGB")`.
pub fn open_rgb_compositing_rgba_on_white(path: &Path) -> Result<Rgb8, ImageError> {
    let Decoded { image, rgba_mode } = open_checked(path)?;
    let (width, height) = (image.width() as usize, image.height() as usize);
    if !rgba_mode {
        return Ok(Rgb8 { width, height, data: image.to_rgb8().into_raw() });
    }
    let rgba = image.to_rgba8();
    let mut data = Vec::with_capacity(width * height * 3);
    for px in rgba.pixels() {
        let [r, g, b, a] = px.0;
        data.extend_from_slice(&[paste_on_white(r, a), paste_on_white(g, a), paste_on_white(b, a)]);
    }
    Ok(Rgb8 { width, height, data })
}

/// Pillow's `paste` with an `L` mask (`Paste.c`, `BLEND`): `DIV255(255 * (255 - a) + c * a)`
/// with its rounding division by 255.
#[inline]
pub fn paste_on_white(c: u8, a: u8) -> u8 {
    let v = 255 * (255 - a as u32) + c as u32 * a as u32;
    let tmp = v + 128;
    (((tmp >> 8) + tmp) >> 8) as u8
}

/// Pixel values, channels first (3, H, W), as f32: rescale then normalise, the way transformers'
/// numpy code does it (rescale in f64 then cast to f32; normalise in f32). `rescale` and
/// `normalize` are `None` when the processor skips that step.
pub fn to_chw_f32(img: &Rgb8, rescale: Option<f64>, normalize: Option<([f64; 3], [f64; 3])>) -> Vec<f32> {
    let (h, w) = (img.height, img.width);
    let mut out = vec![0f32; 3 * h * w];
    for c in 0..3 {
        for i in 0..h * w {
            let v = img.data[i * 3 + c];
            let mut x = match rescale {
                Some(f) => (v as f64 * f) as f32,
                None => v as f32,
            };
            if let Some((mean, std)) = normalize {
                x = (x - mean[c] as f32) / std[c] as f32;
            }
            out[c * h * w + i] = x;
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pasting_on_white_rounds_like_pillow() {
        assert_eq!(paste_on_white(0, 0), 255);
        assert_eq!(paste_on_white(0, 255), 0);
        assert_eq!(paste_on_white(200, 255), 200);
        // 255 * 127 + 10 * 128 = 33665; (33665 + 128) = 33793; (132 + 33793) >> 8 = 132.
        assert_eq!(paste_on_white(10, 128), 132);
    }

    #[test]
    fn the_two_loaders_differ_only_on_half_transparent_rgba() {
        let fx = crate::test_util::fixtures().join("images");
        let drop = open_rgb_dropping_alpha(&fx.join("rgba.png")).unwrap();
        let paste = open_rgb_compositing_rgba_on_white(&fx.join("rgba.png")).unwrap();
        assert_ne!(drop, paste);
        // Fully opaque pixels keep their colour either way; fully transparent ones turn white.
        let src = image::open(fx.join("rgba.png")).unwrap().to_rgba8();
        for (i, px) in src.pixels().enumerate() {
            let a = px.0[3];
            assert_eq!(&drop.data[i * 3..i * 3 + 3], &px.0[..3]);
            if a == 0 {
                assert_eq!(&paste.data[i * 3..i * 3 + 3], &[255, 255, 255]);
            } else if a == 255 {
                assert_eq!(&paste.data[i * 3..i * 3 + 3], &px.0[..3]);
            }
        }
        for name in ["square.png", "gray.png"] {
            assert_eq!(
                open_rgb_dropping_alpha(&fx.join(name)).unwrap(),
                open_rgb_compositing_rgba_on_white(&fx.join(name)).unwrap()
            );
        }
    }
}
