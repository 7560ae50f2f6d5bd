//! A tiny reader for the `.npy` files the goldens are stored in: f32 little-endian arrays
//! (pixel values, logits) and u8 arrays (images after a reference loader).

use std::path::Path;

#[derive(Debug, Clone)]
pub struct NpyF32 {
    pub shape: Vec<usize>,
    pub data: Vec<f32>,
}

#[derive(Debug, Clone)]
pub struct NpyU8 {
    pub shape: Vec<usize>,
    pub data: Vec<u8>,
}

/// Reads a C-ordered `|u1` array (format versions 1 to 3).
pub fn read_u8(path: &Path) -> Result<NpyU8, String> {
    let (shape, body) = read_raw(path, &["'descr': '|u1'", "'descr': '<u1'"], 1)?;
    Ok(NpyU8 { shape, data: body })
}

/// Reads a C-ordered `<f4` array (format versions 1 to 3).
pub fn read_f32(path: &Path) -> Result<NpyF32, String> {
    let (shape, body) = read_raw(path, &["'descr': '<f4'"], 4)?;
    let data = body.chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect();
    Ok(NpyF32 { shape, data })
}

/// The shape and data bytes of an array whose header names one of `descrs`.
fn read_raw(path: &Path, descrs: &[&str], item: usize) -> Result<(Vec<usize>, Vec<u8>), String> {
    let bytes = std::fs::read(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let err = |m: &str| format!("{}: {m}", path.display());
    if bytes.len() < 10 || &bytes[..6] != b"\x93NUMPY" {
        return Err(err("not an .npy file"));
    }
    let (hlen, hstart) = match bytes[6] {
        1 => (u16::from_le_bytes([bytes[8], bytes[9]]) as usize, 10),
        2 | 3 => {
            if bytes.len() < 12 {
                return Err(err("truncated header"));
            }
            (u32::from_le_bytes([bytes[8], bytes[9], bytes[10], bytes[11]]) as usize, 12)
        }
        v => return Err(err(&format!("unsupported version {v}"))),
    };
    let header = std::str::from_utf8(bytes.get(hstart..hstart + hlen).ok_or_else(|| err("truncated header"))?)
        .map_err(|_| err("header is not UTF-8"))?;
    if !descrs.iter().any(|d| header.contains(d)) {
        return Err(err(&format!("not an array of {}: {header}", descrs.join(" or "))));
    }
    if header.contains("'fortran_order': True") {
        return Err(err("Fortran order is not supported"));
    }
    let shape_str = header
        .split("'shape':")
        .nth(1)
        .and_then(|s| s.split('(').nth(1))
        .and_then(|s| s.split(')').next())
        .ok_or_else(|| err("no shape"))?;
    let shape = shape_str
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(|s| s.parse::<usize>().map_err(|_| err("bad shape")))
        .collect::<Result<Vec<_>, _>>()?;
    let n: usize = shape.iter().product();
    let body = &bytes[hstart + hlen..];
    if body.len() != n * item {
        return Err(err(&format!("expected {} data bytes, found {}", n * item, body.len())));
    }
    Ok((shape, body.to_vec()))
}
