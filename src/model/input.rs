//! Payload → input tensor: JPEG/PNG decoding and preprocessing, raw little-endian f32, JSON tensors.

use std::io::Cursor;

use image::{DynamicImage, ImageReader, Limits, RgbImage};
use serde::Deserialize;

/// Largest image side accepted from a payload (pixels).
pub const MAX_IMAGE_SIDE: u32 = 8192;
/// Largest allocation the image decoder may make (bytes).
pub const MAX_IMAGE_ALLOC: u64 = 256 * 1024 * 1024;

/// Memory layout of the input tensor.
#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Layout {
    Nchw,
    Nhwc,
}

/// Channel order the model expects.
#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Channels {
    Rgb,
    Bgr,
}

/// Resampling filter used to bring an image to the input size.
#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Resize {
    Nearest,
    Bilinear,
    Bicubic,
    Lanczos3,
}

/// How an image whose aspect differs from the input is fitted.
#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Crop {
    /// Center square of side `round(min(w, h) · crop_fraction)`, then resize.
    Center,
    /// Pad to a square of the background colour (for cut-out objects), then resize.
    Pad,
    /// Resize to the input size, ignoring the aspect ratio.
    Stretch,
}

/// The model's input tensor and how images become that tensor (`[input]` of `model.toml`).
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct InputSpec {
    /// Name of the graph input (informational; the first input is used).
    #[serde(default)]
    pub name: Option<String>,
    /// Fixed input shape, batch first, e.g. `[1, 3, 224, 224]`.
    pub shape: Vec<usize>,
    /// `nchw` or `nhwc` (only meaningful for image inputs).
    #[serde(default = "default_layout")]
    pub layout: Layout,
    /// `rgb` or `bgr`.
    #[serde(default = "default_channels")]
    pub channels: Channels,
    /// Resampling filter.
    #[serde(default = "default_resize")]
    pub resize: Resize,
    /// Fitting strategy.
    #[serde(default = "default_crop")]
    pub crop: Crop,
    /// Fraction of the short side kept by a center crop.
    #[serde(default = "default_crop_fraction")]
    pub crop_fraction: f32,
    /// Per-channel mean subtracted from the 0..255 pixel value.
    #[serde(default)]
    pub mean: [f32; 3],
    /// Per-channel divisor applied after the mean.
    #[serde(default = "default_std")]
    pub std: [f32; 3],
    /// Colour that transparent pixels and padding become.
    #[serde(default = "default_background")]
    pub background: [u8; 3],
}

fn default_layout() -> Layout {
    Layout::Nchw
}
fn default_channels() -> Channels {
    Channels::Rgb
}
fn default_resize() -> Resize {
    Resize::Bilinear
}
fn default_crop() -> Crop {
    Crop::Center
}
fn default_crop_fraction() -> f32 {
    1.0
}
fn default_std() -> [f32; 3] {
    [1.0, 1.0, 1.0]
}
fn default_background() -> [u8; 3] {
    [255, 255, 255]
}

impl InputSpec {
    /// Checks the description for values that cannot work.
    pub fn validate(&self) -> Result<(), String> {
        if self.shape.is_empty() || self.shape.contains(&0) {
            return Err(format!(
                "input.shape {:?} must be non-empty and positive",
                self.shape
            ));
        }
        if self.shape[0] != 1 {
            return Err(format!("input.shape {:?}: batch must be 1", self.shape));
        }
        if !(self.crop_fraction > 0.0 && self.crop_fraction <= 1.0) {
            return Err(format!(
                "input.crop_fraction {} must be in (0, 1]",
                self.crop_fraction
            ));
        }
        if self.std.iter().any(|s| !s.is_finite() || *s == 0.0)
            || self.mean.iter().any(|m| !m.is_finite())
        {
            return Err("input.mean/std must be finite and std non-zero".into());
        }
        Ok(())
    }

    /// Number of f32 elements in one input.
    pub fn element_count(&self) -> usize {
        self.shape.iter().product()
    }

    /// `(height, width)` for image inputs, when the shape is a 4-D image tensor with 3 channels.
    pub fn image_size(&self) -> Option<(u32, u32)> {
        if self.shape.len() != 4 {
            return None;
        }
        let (c, h, w) = match self.layout {
            Layout::Nchw => (self.shape[1], self.shape[2], self.shape[3]),
            Layout::Nhwc => (self.shape[3], self.shape[1], self.shape[2]),
        };
        (c == 3).then_some((h as u32, w as u32))
    }
}

/// Why a payload could not become an input tensor. `code()` is the stable machine-readable kind.
#[derive(Debug, thiserror::Error)]
pub enum InputError {
    #[error("empty payload")]
    Empty,
    #[error("cannot decode image: {0}")]
    Image(String),
    #[error("this model does not take images (input shape {0:?})")]
    NotImage(Vec<usize>),
    #[error("tensor has {got} values, the model input {shape:?} needs {want}")]
    Length {
        got: usize,
        want: usize,
        shape: Vec<usize>,
    },
    #[error("tensor value at index {index} is not finite")]
    NonFinite { index: usize },
    #[error("invalid JSON: {0}")]
    Json(String),
    #[error(
        "unrecognised payload of {0} bytes: not JPEG, PNG, JSON, nor raw little-endian f32 of the input's size"
    )]
    Unrecognised(usize),
}

impl InputError {
    /// Stable error code for replies.
    pub fn code(&self) -> &'static str {
        match self {
            InputError::Length { .. } => "shape_mismatch",
            InputError::NonFinite { .. } => "non_finite",
            InputError::NotImage(_) => "shape_mismatch",
            _ => "bad_payload",
        }
    }
}

/// What a payload's first bytes say it is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PayloadKind {
    Jpeg,
    Png,
    Json,
    RawF32,
}

/// Detects the kind of an input payload from its bytes; raw f32 is recognised by exact length.
pub fn sniff(bytes: &[u8], element_count: usize) -> Option<PayloadKind> {
    if bytes.starts_with(&[0xFF, 0xD8, 0xFF]) {
        return Some(PayloadKind::Jpeg);
    }
    if bytes.starts_with(b"\x89PNG\r\n\x1a\n") {
        return Some(PayloadKind::Png);
    }
    if bytes.len() == element_count * 4 {
        return Some(PayloadKind::RawF32);
    }
    match bytes.iter().find(|b| !b.is_ascii_whitespace()) {
        Some(b'{') | Some(b'[') => Some(PayloadKind::Json),
        _ => None,
    }
}

/// Turns payloads into the model's input tensor, following an [`InputSpec`].
#[derive(Debug, Clone)]
pub struct Preprocessor {
    spec: InputSpec,
}

/// JSON tensor payload: a bare array or `{"tensor": [...]}`.
#[derive(Deserialize)]
#[serde(untagged)]
enum JsonTensor {
    Bare(Vec<f64>),
    Wrapped { tensor: Vec<f64> },
}

impl Preprocessor {
    /// A preprocessor for a validated spec.
    pub fn new(spec: InputSpec) -> Preprocessor {
        Preprocessor { spec }
    }

    /// The spec this preprocessor follows.
    pub fn spec(&self) -> &InputSpec {
        &self.spec
    }

    /// Decodes any supported payload (JPEG, PNG, raw f32, JSON tensor) into the input tensor.
    pub fn decode(&self, bytes: &[u8]) -> Result<Vec<f32>, InputError> {
        if bytes.is_empty() {
            return Err(InputError::Empty);
        }
        match sniff(bytes, self.spec.element_count()) {
            Some(PayloadKind::Jpeg) | Some(PayloadKind::Png) => self.from_image_bytes(bytes),
            Some(PayloadKind::RawF32) => self.from_f32_le(bytes),
            Some(PayloadKind::Json) => {
                let t: JsonTensor =
                    serde_json::from_slice(bytes).map_err(|e| InputError::Json(e.to_string()))?;
                let values = match t {
                    JsonTensor::Bare(v) | JsonTensor::Wrapped { tensor: v } => v,
                };
                self.from_values(&values)
            }
            None => Err(InputError::Unrecognised(bytes.len())),
        }
    }

    /// Decodes an encoded image (JPEG, PNG; format from the magic bytes) and preprocesses it.
    pub fn from_image_bytes(&self, bytes: &[u8]) -> Result<Vec<f32>, InputError> {
        if bytes.is_empty() {
            return Err(InputError::Empty);
        }
        let img = decode_image(bytes)?;
        self.from_image(&img)
    }

    /// Preprocesses a decoded image: alpha → background, crop/pad, resize, normalize, layout.
    pub fn from_image(&self, img: &DynamicImage) -> Result<Vec<f32>, InputError> {
        let (h, w) = self
            .spec
            .image_size()
            .ok_or_else(|| InputError::NotImage(self.spec.shape.clone()))?;
        let rgb = flatten_alpha(img, self.spec.background);
        let fitted = self.fit(rgb, w, h)?;
        Ok(self.normalize(&fitted))
    }

    /// Crop or pad to a square, then resize to `w`×`h` with the model's filter: one pass of
    /// `fast_image_resize` (SIMD, the crop read in place), which matches PIL's convolution
    /// resampling that the reference preprocessing uses.
    fn fit(&self, rgb: RgbImage, w: u32, h: u32) -> Result<RgbImage, InputError> {
        use fast_image_resize as fr;
        let alg = match self.spec.resize {
            Resize::Nearest => fr::ResizeAlg::Nearest,
            Resize::Bilinear => fr::ResizeAlg::Convolution(fr::FilterType::Bilinear),
            Resize::Bicubic => fr::ResizeAlg::Convolution(fr::FilterType::CatmullRom),
            Resize::Lanczos3 => fr::ResizeAlg::Convolution(fr::FilterType::Lanczos3),
        };
        let (iw, ih) = rgb.dimensions();
        let mut options = fr::ResizeOptions::new().resize_alg(alg);
        let (square, (sw, sh)) = match self.spec.crop {
            Crop::Stretch => (rgb, (iw, ih)),
            Crop::Center => {
                let side = ((iw.min(ih) as f32 * self.spec.crop_fraction) + 0.5).floor() as u32;
                let side = side.clamp(1, iw.min(ih));
                let (left, top) = ((iw - side) / 2, (ih - side) / 2);
                options = options.crop(
                    f64::from(left),
                    f64::from(top),
                    f64::from(side),
                    f64::from(side),
                );
                (rgb, (iw, ih))
            }
            Crop::Pad => {
                let side = iw.max(ih);
                let mut canvas = RgbImage::from_pixel(side, side, image::Rgb(self.spec.background));
                image::imageops::replace(
                    &mut canvas,
                    &rgb,
                    i64::from((side - iw) / 2),
                    i64::from((side - ih) / 2),
                );
                (canvas, (side, side))
            }
        };
        let resize_err = |e: &dyn std::fmt::Display| InputError::Image(format!("resize: {e}"));
        // Typed views: `Resizer::resize` dispatches over all 13 pixel types and links every
        // one's kernels (about 2 MiB of code); only RGB u8 is ever resized here.
        let src = square.into_raw();
        let src = fr::images::TypedImageRef::<fr::pixels::U8x3>::from_buffer(sw, sh, &src)
            .map_err(|e| resize_err(&e))?;
        let mut out = vec![0u8; w as usize * h as usize * 3];
        let mut dst = fr::images::TypedImage::<fr::pixels::U8x3>::from_buffer(w, h, &mut out)
            .map_err(|e| resize_err(&e))?;
        fr::Resizer::new()
            .resize_typed(&src, &mut dst, &options)
            .map_err(|e| resize_err(&e))?;
        RgbImage::from_raw(w, h, out)
            .ok_or_else(|| InputError::Image("resize: short output".into()))
    }

    fn normalize(&self, img: &RgbImage) -> Vec<f32> {
        let (w, h) = img.dimensions();
        let (w, h) = (w as usize, h as usize);
        let order: [usize; 3] = match self.spec.channels {
            Channels::Rgb => [0, 1, 2],
            Channels::Bgr => [2, 1, 0],
        };
        let mut out = vec![0f32; 3 * w * h];
        for (x, y, px) in img.enumerate_pixels() {
            let (x, y) = (x as usize, y as usize);
            for (c, &src) in order.iter().enumerate() {
                let v = (f32::from(px.0[src]) - self.spec.mean[c]) / self.spec.std[c];
                let ix = match self.spec.layout {
                    Layout::Nchw => c * h * w + y * w + x,
                    Layout::Nhwc => (y * w + x) * 3 + c,
                };
                out[ix] = v;
            }
        }
        out
    }

    /// Raw little-endian f32 of exactly the input's element count.
    pub fn from_f32_le(&self, bytes: &[u8]) -> Result<Vec<f32>, InputError> {
        let want = self.spec.element_count();
        if bytes.len() != want * 4 {
            return Err(InputError::Length {
                got: bytes.len() / 4,
                want,
                shape: self.spec.shape.clone(),
            });
        }
        let values: Vec<f32> = bytes
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect();
        check_finite(&values)?;
        Ok(values)
    }

    /// A tensor given as numbers (e.g. from JSON): length and finiteness are checked.
    pub fn from_values(&self, values: &[f64]) -> Result<Vec<f32>, InputError> {
        let want = self.spec.element_count();
        if values.len() != want {
            return Err(InputError::Length {
                got: values.len(),
                want,
                shape: self.spec.shape.clone(),
            });
        }
        let out: Vec<f32> = values.iter().map(|&v| v as f32).collect();
        check_finite(&out)?;
        Ok(out)
    }
}

fn check_finite(values: &[f32]) -> Result<(), InputError> {
    match values.iter().position(|v| !v.is_finite()) {
        Some(index) => Err(InputError::NonFinite { index }),
        None => Ok(()),
    }
}

/// Decodes JPEG or PNG bytes with bounded dimensions and allocation (no decompression bombs).
pub fn decode_image(bytes: &[u8]) -> Result<DynamicImage, InputError> {
    // JPEG decoders fill a truncated scan with grey instead of failing: require the end-of-image
    // marker near the end (0xFF 0xD9 cannot occur inside entropy-coded data).
    if bytes.starts_with(&[0xFF, 0xD8]) {
        let tail = &bytes[bytes.len().saturating_sub(64)..];
        if !tail.windows(2).any(|w| w == [0xFF, 0xD9]) {
            return Err(InputError::Image(
                "truncated JPEG: no end-of-image marker".into(),
            ));
        }
    }
    let mut reader = ImageReader::new(Cursor::new(bytes))
        .with_guessed_format()
        .map_err(|e| InputError::Image(e.to_string()))?;
    match reader.format() {
        Some(image::ImageFormat::Jpeg) | Some(image::ImageFormat::Png) => {}
        other => {
            return Err(InputError::Image(format!(
                "unsupported image format {other:?} (JPEG and PNG are accepted)"
            )))
        }
    }
    let mut limits = Limits::default();
    limits.max_image_width = Some(MAX_IMAGE_SIDE);
    limits.max_image_height = Some(MAX_IMAGE_SIDE);
    limits.max_alloc = Some(MAX_IMAGE_ALLOC);
    reader.limits(limits);
    reader
        .decode()
        .map_err(|e| InputError::Image(e.to_string()))
}

/// Converts any image to 8-bit RGB, compositing transparency onto `background`.
fn flatten_alpha(img: &DynamicImage, background: [u8; 3]) -> RgbImage {
    if !img.color().has_alpha() {
        return img.to_rgb8();
    }
    let rgba = img.to_rgba8();
    let (w, h) = rgba.dimensions();
    RgbImage::from_fn(w, h, |x, y| {
        let p = rgba.get_pixel(x, y).0;
        let a = u32::from(p[3]);
        let mix = |c: u8, b: u8| ((u32::from(c) * a + u32::from(b) * (255 - a) + 127) / 255) as u8;
        image::Rgb([
            mix(p[0], background[0]),
            mix(p[1], background[1]),
            mix(p[2], background[2]),
        ])
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec() -> InputSpec {
        toml::from_str(
            r#"
            shape = [1, 3, 4, 4]
            resize = "bilinear"
            crop = "stretch"
            mean = [0.0, 0.0, 0.0]
            std = [255.0, 255.0, 255.0]
            "#,
        )
        .expect("spec")
    }

    fn png(img: &DynamicImage) -> Vec<u8> {
        let mut out = Vec::new();
        img.write_to(&mut Cursor::new(&mut out), image::ImageFormat::Png)
            .expect("encode");
        out
    }

    #[test]
    fn raw_f32_round_trip() {
        let p = Preprocessor::new(spec());
        let vals: Vec<f32> = (0..48).map(|i| i as f32 * 0.5).collect();
        let bytes: Vec<u8> = vals.iter().flat_map(|v| v.to_le_bytes()).collect();
        assert_eq!(p.decode(&bytes).expect("decode"), vals);
    }

    #[test]
    fn json_tensors_bare_and_wrapped() {
        let p = Preprocessor::new(spec());
        let vals: Vec<f64> = (0..48).map(f64::from).collect();
        let bare = serde_json::to_vec(&vals).expect("json");
        let wrapped = serde_json::to_vec(&serde_json::json!({ "tensor": vals })).expect("json");
        assert_eq!(p.decode(&bare).expect("bare")[47], 47.0);
        assert_eq!(p.decode(&wrapped).expect("wrapped")[1], 1.0);
    }

    #[test]
    fn wrong_length_nan_and_garbage_are_errors() {
        let p = Preprocessor::new(spec());
        let short = serde_json::to_vec(&[1.0; 47][..]).expect("json");
        assert_eq!(p.decode(&short).unwrap_err().code(), "shape_mismatch");
        let mut vals = [0f32; 48];
        vals[7] = f32::NAN;
        let bytes: Vec<u8> = vals.iter().flat_map(|v| v.to_le_bytes()).collect();
        assert!(matches!(
            p.decode(&bytes),
            Err(InputError::NonFinite { index: 7 })
        ));
        assert_eq!(p.decode(b"hello").unwrap_err().code(), "bad_payload");
        assert!(matches!(p.decode(b""), Err(InputError::Empty)));
        assert_eq!(
            p.decode(b"{\"tensor\": [1,").unwrap_err().code(),
            "bad_payload"
        );
    }

    #[test]
    fn truncated_images_are_errors() {
        let p = Preprocessor::new(spec());
        let img = DynamicImage::ImageRgb8(RgbImage::from_pixel(16, 16, image::Rgb([1, 2, 3])));
        let bytes = png(&img);
        // (Cutting only into the trailing IEND chunk leaves every pixel intact: accepted.)
        for cut in [8, 20, bytes.len() / 2, bytes.len() - 20] {
            assert!(p.decode(&bytes[..cut]).is_err(), "cut at {cut} accepted");
        }
        assert!(p.decode(&[0xFF, 0xD8, 0xFF, 0xE0, 0, 0]).is_err());
    }

    #[test]
    fn layout_channels_and_normalization() {
        let mut s = spec();
        s.shape = vec![1, 3, 2, 2];
        let img = DynamicImage::ImageRgb8(RgbImage::from_pixel(2, 2, image::Rgb([255, 0, 51])));
        let nchw = Preprocessor::new(s.clone()).from_image(&img).expect("nchw");
        assert_eq!(&nchw[0..4], &[1.0; 4]);
        assert_eq!(&nchw[4..8], &[0.0; 4]);
        assert!((nchw[8] - 0.2).abs() < 1e-6);
        s.layout = Layout::Nhwc;
        s.shape = vec![1, 2, 2, 3];
        s.channels = Channels::Bgr;
        let nhwc = Preprocessor::new(s).from_image(&img).expect("nhwc");
        assert!((nhwc[0] - 0.2).abs() < 1e-6);
        assert_eq!(nhwc[2], 1.0);
    }

    #[test]
    fn alpha_goes_to_background_and_pad_keeps_aspect() {
        let mut s = spec();
        s.shape = vec![1, 3, 2, 2];
        s.crop = Crop::Pad;
        s.resize = Resize::Nearest;
        s.background = [255, 255, 255];
        // A 2x1 fully transparent image padded to 2x2: everything is background.
        let img = DynamicImage::ImageRgba8(image::RgbaImage::from_pixel(
            2,
            1,
            image::Rgba([0, 0, 0, 0]),
        ));
        let out = Preprocessor::new(s).from_image(&img).expect("pad");
        assert!(out.iter().all(|v| (*v - 1.0).abs() < 1e-6), "{out:?}");
    }

    #[test]
    fn center_crop_takes_the_middle() {
        let mut s = spec();
        s.shape = vec![1, 3, 2, 2];
        s.crop = Crop::Center;
        s.crop_fraction = 0.5;
        s.resize = Resize::Nearest;
        // 4x4 image: black border, white 2x2 center.
        let img = RgbImage::from_fn(4, 4, |x, y| {
            let inside = (1..3).contains(&x) && (1..3).contains(&y);
            image::Rgb(if inside { [255; 3] } else { [0; 3] })
        });
        let out = Preprocessor::new(s)
            .from_image(&DynamicImage::ImageRgb8(img))
            .expect("crop");
        assert!(out.iter().all(|v| (*v - 1.0).abs() < 1e-6));
    }
}
