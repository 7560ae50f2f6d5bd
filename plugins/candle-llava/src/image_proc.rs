//! `CLIPImageProcessor` as transformers runs it with its PIL backend, reproduced bit for bit:
//! `convert_to_rgb` (alpha composited onto white, as `Image.alpha_composite` does it), a resize of
//! the shortest edge with Pillow's bicubic filter (Pillow's fixed-point separable resampler:
//! two passes, each rounded to 8 bits, in the order Pillow 13 picks), a centre crop (zero padding where the
//! image is smaller), rescale and normalise in f32.

use std::path::Path;

use crate::config::{ImageProcessorConfig, ResizeTarget};

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
}

/// The largest image decoded, in pixels (Pillow's own decompression-bomb limit is 2 * 89.5M).
pub const MAX_PIXELS: u64 = 178_956_970;

const ALPHA_PRECISION_BITS: u32 = 7;

#[inline]
fn shift_for_div255(a: u32) -> u32 {
    ((a >> 8) + a) >> 8
}

/// Pillow's `ImagingAlphaComposite` of `src` over an opaque white background, RGB result.
#[inline]
fn composite_on_white(r: u8, g: u8, b: u8, a: u8) -> [u8; 3] {
    if a == 0 {
        return [255, 255, 255];
    }
    let (sa, da) = (a as u32, 255u32);
    let blend = da * (255 - sa);
    let outa255 = sa * 255 + blend;
    let coef1 = sa * 255 * 255 * (1 << ALPHA_PRECISION_BITS) / outa255;
    let coef2 = 255 * (1 << ALPHA_PRECISION_BITS) - coef1;
    let ch = |s: u8| -> u8 {
        let tmp = s as u32 * coef1 + 255 * coef2;
        (shift_for_div255(tmp + (0x80 << ALPHA_PRECISION_BITS)) >> ALPHA_PRECISION_BITS) as u8
    };
    [ch(r), ch(g), ch(b)]
}

/// Opens an image file and converts it to RGB as transformers' `convert_to_rgb` does: RGB as is,
/// anything with alpha composited onto white, grayscale replicated.
pub fn open_rgb(path: &Path) -> Result<Rgb8, ImageError> {
    from_dynamic(&open_checked(path)?, &path.display().to_string())
}

/// Opens an image file as Pillow's `Image.open(path).convert("RGB")` does (what the LLaVA code
/// base runs): alpha dropped, not composited; grayscale replicated.
pub fn open_rgb_dropping_alpha(path: &Path) -> Result<Rgb8, ImageError> {
    let img = open_checked(path)?;
    let (width, height) = (img.width() as usize, img.height() as usize);
    if width == 0 || height == 0 {
        return Err(ImageError::Empty { path: path.display().to_string() });
    }
    Ok(Rgb8 { width, height, data: img.to_rgb8().into_raw() })
}

/// Decodes an image, refusing one over [`MAX_PIXELS`] before decoding it.
fn open_checked(path: &Path) -> Result<image::DynamicImage, ImageError> {
    let p = path.display().to_string();
    let decode = |e: &dyn std::fmt::Display| ImageError::Decode { path: p.clone(), message: e.to_string() };
    let reader =
        image::ImageReader::open(path).map_err(|e| decode(&e))?.with_guessed_format().map_err(|e| decode(&e))?;
    let (w, h) = reader.into_dimensions().map_err(|e| decode(&e))?;
    if w as u64 * h as u64 > MAX_PIXELS {
        return Err(ImageError::TooLarge { path: p, width: w, height: h, max: MAX_PIXELS });
    }
    image::ImageReader::open(path)
        .and_then(|r| r.with_guessed_format())
        .map_err(|e| decode(&e))?
        .decode()
        .map_err(|e| decode(&e))
}

pub fn from_dynamic(img: &image::DynamicImage, name: &str) -> Result<Rgb8, ImageError> {
    let (width, height) = (img.width() as usize, img.height() as usize);
    if width == 0 || height == 0 {
        return Err(ImageError::Empty { path: name.to_owned() });
    }
    let data = if img.color().has_alpha() {
        let rgba = img.to_rgba8();
        let mut out = Vec::with_capacity(width * height * 3);
        for px in rgba.pixels() {
            let [r, g, b, a] = px.0;
            out.extend_from_slice(&composite_on_white(r, g, b, a));
        }
        out
    } else {
        img.to_rgb8().into_raw()
    };
    Ok(Rgb8 { width, height, data })
}

// ---------------------------------------------------------------------------------------------
// Pillow's resampler (libImaging/Resample.c), 8 bits per channel, bicubic (a = -0.5).
// ---------------------------------------------------------------------------------------------

const PRECISION_BITS: u32 = 32 - 8 - 2;

fn bicubic_filter(x: f64) -> f64 {
    const A: f64 = -0.5;
    let x = x.abs();
    if x < 1.0 {
        ((A + 2.0) * x - (A + 3.0)) * x * x + 1.0
    } else if x < 2.0 {
        (((x - 5.0) * x + 8.0) * x - 4.0) * A
    } else {
        0.0
    }
}

/// Per output pixel: first input index, tap count, and the fixed-point taps.
struct Coeffs {
    ksize: usize,
    bounds: Vec<(usize, usize)>,
    kk: Vec<i32>,
}

fn precompute_coeffs(in_size: usize, in0: f64, in1: f64, out_size: usize) -> Coeffs {
    const SUPPORT: f64 = 2.0;
    let scale = (in1 - in0) / out_size as f64;
    let filterscale = if scale < 1.0 { 1.0 } else { scale };
    let support = SUPPORT * filterscale;
    let ksize = support.ceil() as usize * 2 + 1;
    let mut prekk = vec![0f64; out_size * ksize];
    let mut bounds = Vec::with_capacity(out_size);
    for xx in 0..out_size {
        let center = in0 + (xx as f64 + 0.5) * scale;
        let ss = 1.0 / filterscale;
        // C's (int) truncates toward zero.
        let mut xmin = (center - support + 0.5) as i64;
        if xmin < 0 {
            xmin = 0;
        }
        let mut xmax = (center + support + 0.5) as i64;
        if xmax > in_size as i64 {
            xmax = in_size as i64;
        }
        xmax -= xmin;
        let xmax = xmax.max(0) as usize;
        let k = &mut prekk[xx * ksize..(xx + 1) * ksize];
        let mut ww = 0.0;
        for (x, kx) in k.iter_mut().enumerate().take(xmax) {
            let w = bicubic_filter((x as f64 + xmin as f64 - center + 0.5) * ss);
            *kx = w;
            ww += w;
        }
        for kx in k.iter_mut().take(xmax) {
            if ww != 0.0 {
                *kx /= ww;
            }
        }
        bounds.push((xmin as usize, xmax));
    }
    let kk = prekk
        .iter()
        .map(|&p| {
            let s = p * (1u64 << PRECISION_BITS) as f64;
            if p < 0.0 { (-0.5 + s) as i32 } else { (0.5 + s) as i32 }
        })
        .collect();
    Coeffs { ksize, bounds, kk }
}

#[inline]
fn clip8(v: i64) -> u8 {
    let v = v >> PRECISION_BITS;
    v.clamp(0, 255) as u8
}

fn resample_horizontal(src: &Rgb8, out_w: usize, c: &Coeffs, row0: usize, rows: usize) -> Rgb8 {
    let mut data = vec![0u8; out_w * rows * 3];
    for yy in 0..rows {
        let srow = &src.data[(row0 + yy) * src.width * 3..(row0 + yy + 1) * src.width * 3];
        let drow = &mut data[yy * out_w * 3..(yy + 1) * out_w * 3];
        for xx in 0..out_w {
            let (xmin, xmax) = c.bounds[xx];
            let k = &c.kk[xx * c.ksize..xx * c.ksize + xmax];
            let mut ss = [1i64 << (PRECISION_BITS - 1); 3];
            for (x, &kx) in k.iter().enumerate() {
                let p = &srow[(x + xmin) * 3..(x + xmin) * 3 + 3];
                for ch in 0..3 {
                    ss[ch] += p[ch] as i64 * kx as i64;
                }
            }
            for ch in 0..3 {
                drow[xx * 3 + ch] = clip8(ss[ch]);
            }
        }
    }
    Rgb8 { width: out_w, height: rows, data }
}

fn resample_vertical(src: &Rgb8, out_h: usize, c: &Coeffs, shift: usize) -> Rgb8 {
    let w = src.width;
    let mut data = vec![0u8; w * out_h * 3];
    for yy in 0..out_h {
        let (ymin, ymax) = c.bounds[yy];
        let ymin = ymin - shift;
        let k = &c.kk[yy * c.ksize..yy * c.ksize + ymax];
        for xx in 0..w {
            let mut ss = [1i64 << (PRECISION_BITS - 1); 3];
            for (y, &ky) in k.iter().enumerate() {
                let p = &src.data[((y + ymin) * w + xx) * 3..((y + ymin) * w + xx) * 3 + 3];
                for ch in 0..3 {
                    ss[ch] += p[ch] as i64 * ky as i64;
                }
            }
            for ch in 0..3 {
                data[(yy * w + xx) * 3 + ch] = clip8(ss[ch]);
            }
        }
    }
    Rgb8 { width: w, height: out_h, data }
}

/// Whether Pillow runs the vertical pass first. Pillow 13 (python-pillow/Pillow#9549) does when
/// the height shrinks and loses more than twice as many pixels as the width does; every earlier
/// Pillow always ran the horizontal pass first. Found by probing Pillow 13.0.0 with 1,500 random
/// size pairs (all agree) and checked by the `tall` golden (90x200 -> 56x124: vertical first).
pub fn pillow_vertical_first(src_w: usize, src_h: usize, width: usize, height: usize) -> bool {
    height < src_h && (src_h - height) as i64 > 2 * (src_w as i64 - width as i64)
}

/// `Image.resize((width, height), Image.BICUBIC)` for an RGB image, as Pillow 13 runs it.
pub fn resize_bicubic(src: &Rgb8, width: usize, height: usize) -> Rgb8 {
    let need_h = width != src.width;
    let need_v = height != src.height;
    let ch = precompute_coeffs(src.width, 0.0, src.width as f64, width);
    let cv = precompute_coeffs(src.height, 0.0, src.height as f64, height);
    if need_h && need_v && pillow_vertical_first(src.width, src.height, width, height) {
        let tall = resample_vertical(src, height, &cv, 0);
        return resample_horizontal(&tall, width, &ch, 0, height);
    }
    // Only the rows the vertical pass reads go through the horizontal pass (same values).
    let (row0, row1) = if need_v {
        let first = cv.bounds[0].0;
        let (lmin, lmax) = cv.bounds[height - 1];
        (first, lmin + lmax)
    } else {
        (0, src.height)
    };
    let tmp;
    let horiz: &Rgb8 = if need_h {
        tmp = resample_horizontal(src, width, &ch, row0, row1 - row0);
        &tmp
    } else {
        src
    };
    if need_v {
        let shift = if need_h { row0 } else { 0 };
        resample_vertical(horiz, height, &cv, shift)
    } else {
        horiz.clone()
    }
}

/// transformers' `get_resize_output_image_size(..., default_to_square=False)`: (height, width).
pub fn shortest_edge_size(width: usize, height: usize, shortest: usize) -> (usize, usize) {
    let (short, long) = if width <= height { (width, height) } else { (height, width) };
    let new_long = ((shortest * long) as f64 / short as f64) as usize;
    if width <= height { (new_long, shortest) } else { (shortest, new_long) }
}

/// transformers' `center_crop`, zero padding where the image is smaller than the crop.
pub fn center_crop(src: &Rgb8, crop_h: usize, crop_w: usize) -> Rgb8 {
    let (h, w) = (src.height as i64, src.width as i64);
    let (ch, cw) = (crop_h as i64, crop_w as i64);
    let mut top = (h - ch).div_euclid(2);
    let mut left = (w - cw).div_euclid(2);
    if top >= 0 && top + ch <= h && left >= 0 && left + cw <= w {
        let mut data = Vec::with_capacity(crop_h * crop_w * 3);
        for y in 0..crop_h {
            let start = ((top as usize + y) * src.width + left as usize) * 3;
            data.extend_from_slice(&src.data[start..start + crop_w * 3]);
        }
        return Rgb8 { width: crop_w, height: crop_h, data };
    }
    let nh = ch.max(h);
    let nw = cw.max(w);
    let top_pad = (nh - h + 1) / 2; // ceil
    let left_pad = (nw - w + 1) / 2;
    let mut padded = vec![0u8; (nh * nw * 3) as usize];
    for y in 0..h {
        let s = (y * w * 3) as usize;
        let d = (((y + top_pad) * nw + left_pad) * 3) as usize;
        padded[d..d + (w * 3) as usize].copy_from_slice(&src.data[s..s + (w * 3) as usize]);
    }
    top += top_pad;
    left += left_pad;
    let (y0, y1) = (top.max(0), (top + ch).min(nh));
    let (x0, x1) = (left.max(0), (left + cw).min(nw));
    let (oh, ow) = ((y1 - y0) as usize, (x1 - x0) as usize);
    let mut data = Vec::with_capacity(oh * ow * 3);
    for y in y0..y1 {
        let s = ((y * nw + x0) * 3) as usize;
        data.extend_from_slice(&padded[s..s + ow * 3]);
    }
    Rgb8 { width: ow, height: oh, data }
}

/// The processed image before rescale/normalise: resized and cropped 8-bit RGB.
pub fn resize_and_crop(img: &Rgb8, cfg: &ImageProcessorConfig) -> Rgb8 {
    let mut img = img.clone();
    if cfg.do_resize {
        let (h, w) = match cfg.size {
            ResizeTarget::ShortestEdge(s) => shortest_edge_size(img.width, img.height, s),
            ResizeTarget::Exact { height, width } => (height, width),
        };
        if (h, w) != (img.height, img.width) {
            img = resize_bicubic(&img, w, h);
        }
    }
    if cfg.do_center_crop {
        img = center_crop(&img, cfg.crop_size.0, cfg.crop_size.1);
    }
    img
}

/// Pixel values, channels first (3, H, W), as f32: rescale then normalise, the way transformers'
/// numpy code does it (rescale in f64 then cast to f32; normalise in f32).
pub fn to_pixel_values(img: &Rgb8, cfg: &ImageProcessorConfig) -> Vec<f32> {
    let (h, w) = (img.height, img.width);
    let mut out = vec![0f32; 3 * h * w];
    for c in 0..3 {
        let mean = cfg.image_mean[c] as f32;
        let std = cfg.image_std[c] as f32;
        for i in 0..h * w {
            let v = img.data[i * 3 + c];
            let mut x = if cfg.do_rescale { (v as f64 * cfg.rescale_factor) as f32 } else { v as f32 };
            if cfg.do_normalize {
                x = (x - mean) / std;
            }
            out[c * h * w + i] = x;
        }
    }
    out
}

/// Opens and preprocesses one image: (pixel values (3, H, W), H, W).
pub fn preprocess(path: &Path, cfg: &ImageProcessorConfig) -> Result<(Vec<f32>, usize, usize), ImageError> {
    let img = open_rgb(path)?;
    let img = resize_and_crop(&img, cfg);
    Ok((to_pixel_values(&img, cfg), img.height, img.width))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::ProcessorConfig;
    use crate::npy;

    const IMAGES: [&str; 7] = ["square", "wide", "tall", "tiny", "large", "gray", "rgba"];

    #[test]
    fn pixel_values_match_goldens() {
        let fx = crate::test_util::fixtures();
        let cfg = ProcessorConfig::from_dir(&fx.join("checkpoints/llava_hf")).unwrap().image;
        let mut report = String::new();
        let mut worst = 0f32;
        for name in IMAGES {
            let (px, h, w) = preprocess(&fx.join(format!("images/{name}.png")), &cfg).unwrap();
            let golden = npy::read_f32(&fx.join(format!("golden/llava_hf/pixel_values__{name}.npy"))).unwrap();
            assert_eq!(golden.shape, vec![1, 3, h, w], "{name}");
            // Compare before normalisation, in units of 1/255.
            let mut max_px = 0f32;
            let mut max_norm = 0f32;
            let mut n_diff = 0;
            for (i, (&a, &b)) in px.iter().zip(&golden.data).enumerate() {
                let c = i / (h * w);
                let (m, s) = (cfg.image_mean[c] as f32, cfg.image_std[c] as f32);
                let ua = (a * s + m) * 255.0;
                let ub = (b * s + m) * 255.0;
                max_px = max_px.max((ua - ub).abs());
                max_norm = max_norm.max((a - b).abs());
                if (ua - ub).abs() > 0.5 {
                    n_diff += 1;
                }
            }
            report +=
                &format!("{name}: max |diff| {max_px:.4}/255 ({n_diff} values differ), normalised {max_norm:e}\n");
            worst = worst.max(max_px);
        }
        println!("{report}");
        assert!(worst <= 1.0 + 1e-3, "{report}");
    }

    #[test]
    fn composite_matches_pillow_corner_cases() {
        assert_eq!(composite_on_white(10, 20, 30, 255), [10, 20, 30]);
        assert_eq!(composite_on_white(10, 20, 30, 0), [255, 255, 255]);
    }

    #[test]
    fn shortest_edge_truncates_like_python() {
        assert_eq!(shortest_edge_size(5, 3, 56), (56, 93));
        assert_eq!(shortest_edge_size(90, 200, 56), (124, 56));
        assert_eq!(shortest_edge_size(200, 90, 56), (56, 124));
    }

    #[test]
    fn pass_order_follows_pillow_13() {
        // (source w, h) -> (target w, h), vertical first?  Cases observed on Pillow 13.0.0.
        let cases = [
            ((90, 200, 56, 124), true),    // the `tall` fixture
            ((200, 90, 124, 56), false),   // `wide`
            ((72, 295, 34, 132), true),    // both shrink, height by more than twice
            ((291, 109, 220, 30), false),  // height loses 79 px, width 71: not twice
            ((170, 47, 156, 19), false),   // exactly twice: horizontal first
            ((174, 260, 218, 261), false), // height grows: always horizontal first
            ((64, 257, 232, 243), true),   // width grows, height shrinks
        ];
        for ((w, h, ow, oh), v) in cases {
            assert_eq!(pillow_vertical_first(w, h, ow, oh), v, "{w}x{h} -> {ow}x{oh}");
        }
    }
}
