//! Sensor windows for a model with a `[sensor]` section: a window of C channels × T samples as
//! JSON (`[[…], […]]`, one array per channel), CSV (one reading per line, one column per
//! channel) or raw little-endian f32 (channel after channel); its checks (channel count,
//! length, missing and non-finite values) and its normalisation.

use serde::Deserialize;

/// The `[sensor]` section of `model.toml`.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct SensorSpec {
    /// The channels' names, in the model's channel order (e.g. `["x", "y", "z"]`): a CSV header
    /// and a stream's JSON readings name them.
    pub channels: Vec<String>,
    /// What is done to a window before the backbone.
    #[serde(default)]
    pub normalise: Normalise,
}

/// Normalisation of a window before the backbone.
#[derive(Debug, Clone, Copy, Default, Deserialize, serde::Serialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Normalise {
    /// The window as it comes (a model fitted on raw windows, like MiniRocket's biases).
    #[default]
    None,
    /// Each channel of each window to mean 0 and standard deviation 1 (a constant channel to
    /// 0), so the level and the scale of a sensor do not matter, only the shape.
    Zscore,
}

/// Why a window was refused.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum WindowError {
    #[error("the window has {got} channels; the model takes {want} ({names})")]
    Channels {
        got: usize,
        want: usize,
        names: String,
    },
    #[error("channel {channel} has {got} samples; the model takes windows of {want}")]
    Length {
        channel: usize,
        got: usize,
        want: usize,
    },
    #[error("channel {channel} sample {sample} is missing")]
    Missing { channel: usize, sample: usize },
    #[error("channel {channel} sample {sample} is not a finite number")]
    NonFinite { channel: usize, sample: usize },
    #[error("CSV line {line}: {message}")]
    Csv { line: usize, message: String },
    #[error("a reading at t = {t} came after one at t = {before}: readings must be in time order")]
    OutOfOrder { t: f64, before: f64 },
}

impl WindowError {
    /// Stable error code for replies.
    pub fn code(&self) -> &'static str {
        match self {
            WindowError::Channels { .. } => "wrong_channels",
            WindowError::Length { .. } => "wrong_length",
            WindowError::Missing { .. } => "missing_value",
            WindowError::NonFinite { .. } => "non_finite",
            WindowError::Csv { .. } => "bad_csv",
            WindowError::OutOfOrder { .. } => "out_of_order",
        }
    }
}

/// A sensor model's window shape and normalisation.
#[derive(Debug, Clone)]
pub struct Windows {
    spec: SensorSpec,
    length: usize,
}

impl Windows {
    /// The windows of `spec` with `length` samples per channel (the input shape's last axis).
    pub fn new(spec: SensorSpec, length: usize) -> Windows {
        Windows { spec, length }
    }

    /// The `[sensor]` section.
    pub fn spec(&self) -> &SensorSpec {
        &self.spec
    }

    /// Samples per channel.
    pub fn length(&self) -> usize {
        self.length
    }

    /// The backbone input of a window given channel by channel (`None` for a missing value):
    /// checked, normalised, channel-major.
    pub fn from_channels(&self, channels: &[Vec<Option<f64>>]) -> Result<Vec<f32>, WindowError> {
        self.check_channels(channels.len())?;
        let mut out = Vec::with_capacity(channels.len() * self.length);
        for (c, values) in channels.iter().enumerate() {
            if values.len() != self.length {
                return Err(WindowError::Length {
                    channel: c,
                    got: values.len(),
                    want: self.length,
                });
            }
            for (s, v) in values.iter().enumerate() {
                out.push(checked(*v, c, s)?);
            }
        }
        Ok(self.normalised(out))
    }

    /// The backbone input of a window as raw values, channel after channel (raw little-endian
    /// f32, a JSON tensor): checked and normalised.
    pub fn from_flat(&self, values: &[f32]) -> Result<Vec<f32>, WindowError> {
        let want = self.spec.channels.len() * self.length;
        if values.len() != want {
            return Err(WindowError::Length {
                channel: 0,
                got: values.len() / self.spec.channels.len().max(1),
                want: self.length,
            });
        }
        for (i, v) in values.iter().enumerate() {
            if !v.is_finite() {
                return Err(WindowError::NonFinite {
                    channel: i / self.length.max(1),
                    sample: i % self.length.max(1),
                });
            }
        }
        Ok(self.normalised(values.to_vec()))
    }

    /// The backbone input of a CSV window: one reading per line, one column per channel, an
    /// optional header line naming the channels (in any order: the columns are matched to the
    /// model's channels by name), `#` comment lines and blank lines skipped. An empty cell is
    /// a missing value.
    pub fn from_csv(&self, text: &str) -> Result<Vec<f32>, WindowError> {
        let names = &self.spec.channels;
        let mut columns: Option<Vec<usize>> = None;
        let mut channels: Vec<Vec<Option<f64>>> = vec![Vec::new(); names.len()];
        let mut first = true;
        for (n, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let cells: Vec<&str> = line.split(',').map(str::trim).collect();
            if first {
                first = false;
                if cells
                    .iter()
                    .any(|c| !c.is_empty() && c.parse::<f64>().is_err())
                {
                    columns = Some(self.header(&cells, n + 1)?);
                    continue;
                }
            }
            match &columns {
                None => self.check_channels(cells.len())?,
                Some(order) if cells.len() != order.len() => {
                    return Err(WindowError::Csv {
                        line: n + 1,
                        message: format!("{} cells; the header has {}", cells.len(), order.len()),
                    })
                }
                Some(_) => {}
            }
            for (i, cell) in cells.iter().enumerate() {
                let channel = columns.as_ref().map_or(i, |order| order[i]);
                channels[channel].push(csv_cell(cell, n + 1)?);
            }
        }
        self.from_channels(&channels)
    }

    /// The model channel of each CSV column, from the header line.
    fn header(&self, cells: &[&str], line: usize) -> Result<Vec<usize>, WindowError> {
        let names = &self.spec.channels;
        self.check_channels(cells.len())?;
        let mut order = Vec::with_capacity(cells.len());
        for cell in cells {
            match names.iter().position(|n| n == cell) {
                Some(i) if !order.contains(&i) => order.push(i),
                _ => {
                    return Err(WindowError::Csv {
                        line,
                        message: format!(
                            "header column {cell:?} is not one of the model's channels ({}), or \
                             is repeated",
                            names.join(", ")
                        ),
                    })
                }
            }
        }
        Ok(order)
    }

    fn check_channels(&self, got: usize) -> Result<(), WindowError> {
        check_count(got, &self.spec.channels)
    }

    fn normalised(&self, mut values: Vec<f32>) -> Vec<f32> {
        if self.spec.normalise == Normalise::Zscore && self.length > 0 {
            for channel in values.chunks_mut(self.length) {
                let n = channel.len() as f64;
                let mean = channel.iter().map(|&v| f64::from(v)).sum::<f64>() / n;
                let var = channel
                    .iter()
                    .map(|&v| (f64::from(v) - mean).powi(2))
                    .sum::<f64>()
                    / n;
                let std = var.sqrt();
                for v in channel.iter_mut() {
                    *v = if std > 1e-8 {
                        ((f64::from(*v) - mean) / std) as f32
                    } else {
                        0.0
                    };
                }
            }
        }
        values
    }
}

/// `got` values where the model has the channels `names`.
pub(crate) fn check_count(got: usize, names: &[String]) -> Result<(), WindowError> {
    if got != names.len() {
        return Err(WindowError::Channels {
            got,
            want: names.len(),
            names: names.join(", "),
        });
    }
    Ok(())
}

/// A CSV cell on text line `line`: empty is a missing value, else it must be a number.
pub(crate) fn csv_cell(cell: &str, line: usize) -> Result<Option<f64>, WindowError> {
    if cell.is_empty() {
        return Ok(None);
    }
    cell.parse::<f64>().map(Some).map_err(|_| WindowError::Csv {
        line,
        message: format!("{cell:?} is not a number"),
    })
}

/// A value of `channel` at `sample` as the backbone takes it: present and finite in f32.
pub(crate) fn checked(v: Option<f64>, channel: usize, sample: usize) -> Result<f32, WindowError> {
    match v {
        None => Err(WindowError::Missing { channel, sample }),
        Some(v) if !v.is_finite() || !(v as f32).is_finite() => {
            Err(WindowError::NonFinite { channel, sample })
        }
        Some(v) => Ok(v as f32),
    }
}

/// A JSON window: one array per channel, a `null` is a missing value.
pub fn parse_json_window(v: &serde_json::Value) -> Result<Vec<Vec<Option<f64>>>, String> {
    let rows = v
        .as_array()
        .ok_or("window must be an array of channels, each an array of numbers")?;
    rows.iter()
        .enumerate()
        .map(|(c, row)| {
            let row = row
                .as_array()
                .ok_or_else(|| format!("window channel {c} is not an array of numbers"))?;
            row.iter()
                .enumerate()
                .map(|(s, x)| match x {
                    serde_json::Value::Null => Ok(None),
                    serde_json::Value::Number(n) => Ok(n.as_f64()),
                    _ => Err(format!("window channel {c} sample {s} is not a number")),
                })
                .collect()
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn windows(normalise: Normalise) -> Windows {
        let spec = SensorSpec {
            channels: vec!["x".into(), "y".into(), "z".into()],
            normalise,
        };
        Windows::new(spec, 4)
    }

    #[test]
    fn channels_and_csv_give_the_same_window() {
        let w = windows(Normalise::None);
        let rows: Vec<Vec<Option<f64>>> = (0..3)
            .map(|c| (0..4).map(|s| Some((c * 10 + s) as f64)).collect())
            .collect();
        let want = w.from_channels(&rows).unwrap();
        assert_eq!(want[..4], [0.0, 1.0, 2.0, 3.0]);
        assert_eq!(want[8..], [20.0, 21.0, 22.0, 23.0]);
        let csv = "0,10,20\n1,11,21\n\n# a comment\n2,12,22\n3,13,23\n";
        assert_eq!(w.from_csv(csv).unwrap(), want);
        // A header matches the columns by name, in any order.
        let csv = "z,x,y\n20,0,10\n21,1,11\n22,2,12\n23,3,13\n";
        assert_eq!(w.from_csv(csv).unwrap(), want);
        assert_eq!(w.from_flat(&want).unwrap(), want);
    }

    #[test]
    fn bad_windows_are_refused_with_their_codes() {
        let w = windows(Normalise::None);
        let code = |r: Result<Vec<f32>, WindowError>| r.unwrap_err().code();
        let full = |c: usize, n: usize| vec![vec![Some(1.0); n]; c];
        assert_eq!(code(w.from_channels(&full(2, 4))), "wrong_channels");
        assert_eq!(code(w.from_channels(&full(3, 5))), "wrong_length");
        let mut gap = full(3, 4);
        gap[1][2] = None;
        assert_eq!(code(w.from_channels(&gap)), "missing_value");
        let mut nan = full(3, 4);
        nan[2][0] = Some(f64::NAN);
        assert_eq!(code(w.from_channels(&nan)), "non_finite");
        nan[2][0] = Some(1e300);
        assert_eq!(code(w.from_channels(&nan)), "non_finite");
        assert_eq!(code(w.from_csv("1,2,3\n1,2\n")), "wrong_channels");
        assert_eq!(
            code(w.from_csv("1,2,3\n1,,3\n1,2,3\n1,2,3\n")),
            "missing_value"
        );
        assert_eq!(code(w.from_csv("1,2,3\n1,a,3\n")), "bad_csv");
        assert_eq!(code(w.from_csv("x,y,w\n1,2,3\n")), "bad_csv");
        assert_eq!(code(w.from_csv("x,x,y\n1,2,3\n")), "bad_csv");
        assert_eq!(code(w.from_csv("1,2,3\n")), "wrong_length");
        assert_eq!(code(w.from_csv("")), "wrong_length");
        assert_eq!(code(w.from_flat(&[0.0; 11])), "wrong_length");
        assert_eq!(code(w.from_flat(&[f32::NAN; 12])), "non_finite");
        let e = parse_json_window(&serde_json::json!([[1, 2], "x"])).unwrap_err();
        assert!(e.contains("channel 1"), "{e}");
        let ok = parse_json_window(&serde_json::json!([[1, null], [2.5, 3]])).unwrap();
        assert_eq!(ok, vec![vec![Some(1.0), None], vec![Some(2.5), Some(3.0)]]);
    }

    #[test]
    fn zscore_takes_level_and_scale_away() {
        let w = windows(Normalise::Zscore);
        let a: Vec<f32> = [1.0, 2.0, 3.0, 4.0, 5.0, 5.0, 5.0, 5.0, 0.0, 1.0, 0.0, 1.0].to_vec();
        let b: Vec<f32> = a.iter().map(|v| v * 7.0 + 100.0).collect();
        let (na, nb) = (w.from_flat(&a).unwrap(), w.from_flat(&b).unwrap());
        for (x, y) in na.iter().zip(&nb) {
            assert!((x - y).abs() < 1e-4, "{na:?} vs {nb:?}");
        }
        // A constant channel becomes zeros, not NaN.
        assert_eq!(na[4..8], [0.0; 4]);
        let mean: f32 = na[..4].iter().sum::<f32>() / 4.0;
        assert!(mean.abs() < 1e-6);
    }
}
