//! `CLIPImageProcessor` as transformers runs it with its PIL backend, reproduced bit for bit, on
//! an image the reference loader already opened ([`LOADER`]): a resize of the shortest edge with
//! Pillow's bicubic filter ([`crate::resize`]), a centre crop (zero padding where the image is
//! smaller), rescale and normalise in f32. The processor's own `convert_to_rgb` never runs: the
//! loader's `convert("RGB")` already made the image RGB.

use std::path::Path;

use crate::image::{ImageError, ImageLoader, Rgb8};
use crate::resize::resize_bicubic;

use super::config::{ImageProcessorConfig, ResizeTarget};

/// How the reference opens images for every LLaVA arch (`models/utils.py` `load_images`, and the
/// LLaVA code base's own loader): `Image.open(path).convert("RGB")`, alpha dropped.
pub const LOADER: ImageLoader = ImageLoader::DropAlpha;

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
    crate::image::to_chw_f32(
        img,
        cfg.do_rescale.then_some(cfg.rescale_factor),
        cfg.do_normalize.then_some((cfg.image_mean, cfg.image_std)),
    )
}

/// Opens and preprocesses one image: (pixel values (3, H, W), H, W).
pub fn preprocess(path: &Path, cfg: &ImageProcessorConfig) -> Result<(Vec<f32>, usize, usize), ImageError> {
    let img = LOADER.open(path)?;
    let img = resize_and_crop(&img, cfg);
    Ok((to_pixel_values(&img, cfg), img.height, img.width))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::llava::config::ProcessorConfig;
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
    fn shortest_edge_truncates_like_python() {
        assert_eq!(shortest_edge_size(5, 3, 56), (56, 93));
        assert_eq!(shortest_edge_size(90, 200, 56), (124, 56));
        assert_eq!(shortest_edge_size(200, 90, 56), (56, 124));
    }
}
