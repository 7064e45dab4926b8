//! Live sensor readings (`[[sources]] kind = "readings"`) for a sensor model: each message one
//! reading or a small batch of them — JSON `{"x": …, "y": …, "z": …}` named by the model's
//! channels (with an optional timestamp `t`), an array of such objects, `[x, y, z]`, an array
//! of those, or CSV lines — gathered per topic into the model's window. A message with a bad
//! reading (a missing channel, a value that is not a finite number, a timestamp not after the
//! last one) is refused whole and changes nothing.

use std::collections::VecDeque;

use crate::daemon::error::RequestError;
use crate::model::sensor::{self, WindowError};
use crate::model::EmbedError;

/// Most readings in one message.
pub const MAX_BATCH: usize = 10_000;

/// JSON keys taken as a reading's timestamp (seconds or any increasing number).
const TIME_KEYS: [&str; 4] = ["t", "ts", "time", "timestamp"];

/// A message's readings: their values one reading after another (each one value per channel,
/// in the model's channel order), and the timestamps of those that carry one, in order.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Batch {
    pub values: Vec<f32>,
    pub times: Vec<f64>,
}

/// A window cut from a stream of readings: its values channel after channel (the backbone's
/// layout), and which readings of the stream it holds (counted from 0 since adaptd began
/// following the topic).
#[derive(Debug, Clone, PartialEq)]
pub struct Cut {
    pub values: Vec<f64>,
    pub first: u64,
    pub last: u64,
}

/// One topic's recent readings, one after another.
#[derive(Debug, Default)]
pub struct Buffer {
    values: VecDeque<f32>,
    /// Readings since the last window was cut.
    fresh: usize,
    /// Readings taken on this topic.
    count: u64,
    last_t: Option<f64>,
}

impl Buffer {
    /// Takes a message's readings of `channels` values each (all or none) and cuts a window of
    /// `length` readings when `hop` readings have come since the last one (at most one window
    /// per message: a batch larger than a hop keeps the cadence of the newest readings).
    pub fn push(
        &mut self,
        batch: Batch,
        channels: usize,
        length: usize,
        hop: usize,
    ) -> Result<Option<Cut>, RequestError> {
        let mut last_t = self.last_t;
        for &t in &batch.times {
            if let Some(before) = last_t.filter(|before| t <= *before) {
                return Err(window_error(WindowError::OutOfOrder { t, before }));
            }
            last_t = Some(t);
        }
        self.last_t = last_t;
        let n = batch.values.len() / channels.max(1);
        self.count += n as u64;
        self.fresh += n;
        self.values.extend(batch.values);
        let excess = self.values.len().saturating_sub(length * channels);
        self.values.drain(..excess);
        if self.values.len() < length * channels || self.fresh < hop {
            return Ok(None);
        }
        self.fresh = (self.fresh - hop) % hop;
        let values = (0..channels)
            .flat_map(|c| {
                self.values
                    .iter()
                    .skip(c)
                    .step_by(channels)
                    .map(|&v| f64::from(v))
            })
            .collect();
        Ok(Some(Cut {
            values,
            first: self.count - length as u64,
            last: self.count - 1,
        }))
    }
}

fn window_error(e: WindowError) -> RequestError {
    RequestError::Embed(EmbedError::Window(e))
}

/// The readings of a message, for a model with `channels`.
pub fn parse(payload: &[u8], channels: &[String]) -> Result<Batch, RequestError> {
    let text = std::str::from_utf8(payload)
        .map_err(|_| RequestError::BadRequest("readings must be UTF-8 JSON or CSV".into()))?;
    let trimmed = text.trim_start();
    let mut batch = Batch::default();
    if trimmed.starts_with(['{', '[']) {
        let v: serde_json::Value =
            serde_json::from_str(trimmed).map_err(|e| RequestError::BadJson(e.to_string()))?;
        match v {
            serde_json::Value::Array(items)
                if items.iter().all(|i| i.is_object() || i.is_array()) =>
            {
                for (n, item) in items.iter().enumerate() {
                    reading(item, channels, n, &mut batch)?;
                }
            }
            v => reading(&v, channels, 0, &mut batch)?,
        }
    } else {
        for (n, line) in text.lines().filter(|l| !l.trim().is_empty()).enumerate() {
            csv_reading(line, channels, n, &mut batch)?;
        }
    }
    let n = batch.values.len() / channels.len().max(1);
    if n == 0 {
        return Err(RequestError::BadRequest(
            "no readings in the message".into(),
        ));
    }
    if n > MAX_BATCH {
        return Err(RequestError::BadRequest(format!(
            "{n} readings in one message; at most {MAX_BATCH}"
        )));
    }
    Ok(batch)
}

/// The value of reading `n`, channel `c` in a JSON reading.
fn value(v: Option<&serde_json::Value>, n: usize, c: usize) -> Result<f32, RequestError> {
    let x = match v {
        None | Some(serde_json::Value::Null) => None,
        Some(serde_json::Value::Number(x)) => x.as_f64(),
        Some(_) => {
            return Err(RequestError::BadRequest(format!(
                "reading {n}: channel {c} is not a number"
            )))
        }
    };
    sensor::checked(x, c, n).map_err(window_error)
}

/// Reading `n` of a JSON message, into `batch`.
fn reading(
    v: &serde_json::Value,
    channels: &[String],
    n: usize,
    batch: &mut Batch,
) -> Result<(), RequestError> {
    match v {
        serde_json::Value::Object(o) => {
            for (c, name) in channels.iter().enumerate() {
                batch.values.push(value(o.get(name), n, c)?);
            }
            match TIME_KEYS.iter().find_map(|k| o.get(*k)) {
                None => {}
                Some(serde_json::Value::Number(t)) => {
                    batch.times.extend(t.as_f64().filter(|t| t.is_finite()))
                }
                Some(_) => {
                    return Err(RequestError::BadRequest(format!(
                        "reading {n}: the timestamp is not a number"
                    )))
                }
            }
        }
        serde_json::Value::Array(a) => {
            sensor::check_count(a.len(), channels).map_err(window_error)?;
            for (c, x) in a.iter().enumerate() {
                batch.values.push(value(Some(x), n, c)?);
            }
        }
        _ => {
            return Err(RequestError::BadRequest(format!(
                "reading {n} is not an object of channels ({}) nor an array of {} numbers",
                channels.join(", "),
                channels.len()
            )))
        }
    }
    Ok(())
}

/// Reading `n` of a CSV message (one line), into `batch`.
fn csv_reading(
    line: &str,
    channels: &[String],
    n: usize,
    batch: &mut Batch,
) -> Result<(), RequestError> {
    let cells: Vec<&str> = line.split(',').map(str::trim).collect();
    sensor::check_count(cells.len(), channels).map_err(window_error)?;
    for (c, cell) in cells.iter().enumerate() {
        let x = sensor::csv_cell(cell, n + 1).map_err(window_error)?;
        batch
            .values
            .push(sensor::checked(x, c, n).map_err(window_error)?);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn xyz() -> Vec<String> {
        ["x", "y", "z"].map(String::from).to_vec()
    }

    fn code(r: Result<Batch, RequestError>) -> &'static str {
        r.expect_err("refused").code()
    }

    #[test]
    fn every_form_gives_the_same_readings() {
        let want = Batch {
            values: vec![1.0, 2.0, 3.0, 4.0, 5.0, 6.0],
            times: vec![],
        };
        let c = xyz();
        let forms: [&[u8]; 4] = [
            br#"[{"x": 1, "y": 2, "z": 3, "sensor": "imu"}, {"z": 6, "y": 5, "x": 4}]"#,
            b"[[1, 2, 3], [4, 5, 6]]",
            b"1,2,3\n4, 5, 6\n",
            b"1,2,3\r\n\r\n4,5,6",
        ];
        for f in forms {
            assert_eq!(
                parse(f, &c).unwrap(),
                want,
                "{}",
                String::from_utf8_lossy(f)
            );
        }
        let one = parse(br#"{"x": 1, "y": 2, "z": 3, "t": 17.5}"#, &c).unwrap();
        assert_eq!(one.times, vec![17.5]);
        assert_eq!(parse(b"[1, 2, 3]", &c).unwrap().values, vec![1.0, 2.0, 3.0]);
    }

    #[test]
    fn bad_readings_are_refused_with_their_codes() {
        let c = xyz();
        assert_eq!(code(parse(br#"{"x": 1, "y": 2}"#, &c)), "missing_value");
        assert_eq!(
            code(parse(br#"{"x": 1, "y": null, "z": 3}"#, &c)),
            "missing_value"
        );
        assert_eq!(
            code(parse(br#"{"x": 1e300, "y": 2, "z": 3}"#, &c)),
            "non_finite"
        );
        assert_eq!(
            code(parse(br#"{"x": "a", "y": 2, "z": 3}"#, &c)),
            "bad_request"
        );
        assert_eq!(code(parse(b"[1, 2]", &c)), "wrong_channels");
        assert_eq!(code(parse(b"1,2\n", &c)), "wrong_channels");
        assert_eq!(code(parse(b"1,,3\n", &c)), "missing_value");
        assert_eq!(code(parse(b"1,nan,3\n", &c)), "non_finite");
        assert_eq!(code(parse(b"1,b,3\n", &c)), "bad_csv");
        assert_eq!(code(parse(b"{x", &c)), "bad_json");
        assert_eq!(code(parse(b"", &c)), "bad_request");
        assert_eq!(code(parse(b"\xff\xfe", &c)), "bad_request");
        assert_eq!(code(parse(b"[]", &c)), "bad_request");
    }

    /// Readings `from..to` of two channels (v, -v), each with its timestamp when `timed`.
    fn batch(from: i32, to: i32, timed: bool) -> Batch {
        Batch {
            values: (from..to).flat_map(|i| [i as f32, -(i as f32)]).collect(),
            times: if timed {
                (from..to).map(f64::from).collect()
            } else {
                Vec::new()
            },
        }
    }

    #[test]
    fn windows_are_cut_every_hop_and_out_of_order_readings_change_nothing() {
        let mut b = Buffer::default();
        let mut cuts = Vec::new();
        for i in 0..10 {
            if let Some(cut) = b.push(batch(i, i + 1, true), 2, 4, 2).unwrap() {
                cuts.push(cut);
            }
        }
        // Windows of 4 readings every 2: ending at readings 3, 5, 7, 9.
        assert_eq!(cuts.len(), 4);
        assert_eq!((cuts[0].first, cuts[0].last), (0, 3));
        // Channel after channel: the first channel's 4 values, then the second's.
        assert_eq!(cuts[0].values[..4], [0.0, 1.0, 2.0, 3.0]);
        assert_eq!(cuts[0].values[4 + 3], -3.0);
        assert_eq!((cuts[3].first, cuts[3].last), (6, 9));
        // A timestamp not after the last: refused whole, nothing taken.
        let late = Batch {
            values: vec![10.0, -10.0, 11.0, -11.0],
            times: vec![10.0, 9.5],
        };
        let e = b.push(late, 2, 4, 2).unwrap_err();
        assert_eq!(e.code(), "out_of_order");
        assert_eq!(b.count, 10);
        // A batch of readings: one window, the newest.
        let cut = b
            .push(batch(10, 15, true), 2, 4, 2)
            .unwrap()
            .expect("a window");
        assert_eq!((cut.first, cut.last), (11, 14));
        // Readings without timestamps are taken in arrival order.
        assert!(b.push(batch(0, 1, false), 2, 4, 2).is_ok());
    }
}
