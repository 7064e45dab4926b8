//! Live sensor readings (`[[sources]] kind = "readings"`) for a sensor model: each message one
//! reading or a small batch of them — JSON `{"x": …, "y": …, "z": …}` named by the model's
//! channels (with an optional timestamp `t`), an array of such objects, `[x, y, z]`, an array
//! of those, or CSV lines — gathered per topic into the model's window. A message with a bad
//! reading (a missing channel, a value that is not a finite number, a timestamp not after the
//! last one) is refused whole and changes nothing.

use std::collections::VecDeque;

use crate::daemon::error::RequestError;
use crate::model::sensor::WindowError;
use crate::model::EmbedError;

/// Most readings in one message.
pub const MAX_BATCH: usize = 10_000;

/// JSON keys taken as a reading's timestamp (seconds or any increasing number).
const TIME_KEYS: [&str; 4] = ["t", "ts", "time", "timestamp"];

/// One reading: its timestamp, if it has one, and one value per channel.
#[derive(Debug, Clone, PartialEq)]
pub struct Reading {
    pub t: Option<f64>,
    pub values: Vec<f32>,
}

/// A window cut from a stream of readings: one vector per channel, and which readings of the
/// stream it holds (counted from 0 since adaptd began following the topic).
#[derive(Debug, Clone, PartialEq)]
pub struct Cut {
    pub channels: Vec<Vec<Option<f64>>>,
    pub first: u64,
    pub last: u64,
}

/// One topic's recent readings.
#[derive(Debug, Default)]
pub struct Buffer {
    readings: VecDeque<Vec<f32>>,
    /// Readings since the last window was cut.
    fresh: usize,
    /// Readings taken on this topic.
    count: u64,
    last_t: Option<f64>,
}

impl Buffer {
    /// Takes a message's readings (all or none) and cuts a window of `length` readings when
    /// `hop` readings have come since the last one (at most one window per message: a batch
    /// larger than a hop keeps the cadence of the newest readings).
    pub fn push(
        &mut self,
        readings: Vec<Reading>,
        length: usize,
        hop: usize,
    ) -> Result<Option<Cut>, RequestError> {
        let mut last_t = self.last_t;
        for r in &readings {
            if let Some(t) = r.t {
                if let Some(before) = last_t.filter(|before| t <= *before) {
                    return Err(window_error(WindowError::OutOfOrder { t, before }));
                }
                last_t = Some(t);
            }
        }
        self.last_t = last_t;
        let n = readings.len();
        self.count += n as u64;
        self.fresh += n;
        self.readings.extend(readings.into_iter().map(|r| r.values));
        let excess = self.readings.len().saturating_sub(length);
        self.readings.drain(..excess);
        if self.readings.len() < length || self.fresh < hop {
            return Ok(None);
        }
        self.fresh = (self.fresh - hop) % hop;
        let channels = self.readings.front().map_or(0, Vec::len);
        let cut = (0..channels)
            .map(|c| {
                self.readings
                    .iter()
                    .map(|r| Some(f64::from(r[c])))
                    .collect()
            })
            .collect();
        Ok(Some(Cut {
            channels: cut,
            first: self.count - length as u64,
            last: self.count - 1,
        }))
    }
}

fn window_error(e: WindowError) -> RequestError {
    RequestError::Embed(EmbedError::Window(e))
}

/// The readings of a message, for a model with `channels`.
pub fn parse(payload: &[u8], channels: &[String]) -> Result<Vec<Reading>, RequestError> {
    let text = std::str::from_utf8(payload)
        .map_err(|_| RequestError::BadRequest("readings must be UTF-8 JSON or CSV".into()))?;
    let trimmed = text.trim_start();
    let readings = if trimmed.starts_with(['{', '[']) {
        let v: serde_json::Value =
            serde_json::from_str(trimmed).map_err(|e| RequestError::BadJson(e.to_string()))?;
        match v {
            serde_json::Value::Array(items) if items.is_empty() => Vec::new(),
            serde_json::Value::Array(items)
                if items.iter().all(|i| i.is_object() || i.is_array()) && !items.is_empty() =>
            {
                items
                    .iter()
                    .enumerate()
                    .map(|(n, i)| reading(i, channels, n))
                    .collect::<Result<Vec<_>, _>>()?
            }
            v => vec![reading(&v, channels, 0)?],
        }
    } else {
        text.lines()
            .filter(|l| !l.trim().is_empty())
            .enumerate()
            .map(|(n, line)| csv_reading(line, channels, n))
            .collect::<Result<Vec<_>, _>>()?
    };
    if readings.is_empty() {
        return Err(RequestError::BadRequest(
            "no readings in the message".into(),
        ));
    }
    if readings.len() > MAX_BATCH {
        return Err(RequestError::BadRequest(format!(
            "{} readings in one message; at most {MAX_BATCH}",
            readings.len()
        )));
    }
    Ok(readings)
}

/// A value of reading `n`, channel `c`.
fn value(v: Option<&serde_json::Value>, n: usize, c: usize) -> Result<f32, RequestError> {
    let missing = || {
        window_error(WindowError::Missing {
            channel: c,
            sample: n,
        })
    };
    let x = match v {
        None | Some(serde_json::Value::Null) => return Err(missing()),
        Some(serde_json::Value::Number(x)) => x.as_f64().ok_or_else(missing)?,
        Some(_) => {
            return Err(RequestError::BadRequest(format!(
                "reading {n}: channel {c} is not a number"
            )))
        }
    };
    finite(x, n, c)
}

fn finite(x: f64, n: usize, c: usize) -> Result<f32, RequestError> {
    let v = x as f32;
    if !x.is_finite() || !v.is_finite() {
        return Err(window_error(WindowError::NonFinite {
            channel: c,
            sample: n,
        }));
    }
    Ok(v)
}

fn reading(v: &serde_json::Value, channels: &[String], n: usize) -> Result<Reading, RequestError> {
    match v {
        serde_json::Value::Object(o) => {
            let values = channels
                .iter()
                .enumerate()
                .map(|(c, name)| value(o.get(name), n, c))
                .collect::<Result<Vec<_>, _>>()?;
            let t = match TIME_KEYS.iter().find_map(|k| o.get(*k)) {
                None => None,
                Some(serde_json::Value::Number(t)) => t.as_f64().filter(|t| t.is_finite()),
                Some(_) => {
                    return Err(RequestError::BadRequest(format!(
                        "reading {n}: the timestamp is not a number"
                    )))
                }
            };
            Ok(Reading { t, values })
        }
        serde_json::Value::Array(a) => {
            check_count(a.len(), channels)?;
            let values = a
                .iter()
                .enumerate()
                .map(|(c, x)| value(Some(x), n, c))
                .collect::<Result<Vec<_>, _>>()?;
            Ok(Reading { t: None, values })
        }
        _ => Err(RequestError::BadRequest(format!(
            "reading {n} is not an object of channels ({}) nor an array of {} numbers",
            channels.join(", "),
            channels.len()
        ))),
    }
}

/// A reading of `got` values for a model with `channels`.
fn check_count(got: usize, channels: &[String]) -> Result<(), RequestError> {
    if got != channels.len() {
        return Err(window_error(WindowError::Channels {
            got,
            want: channels.len(),
            names: channels.join(", "),
        }));
    }
    Ok(())
}

fn csv_reading(line: &str, channels: &[String], n: usize) -> Result<Reading, RequestError> {
    let cells: Vec<&str> = line.split(',').map(str::trim).collect();
    check_count(cells.len(), channels)?;
    let values = cells
        .iter()
        .enumerate()
        .map(|(c, cell)| {
            if cell.is_empty() {
                return Err(window_error(WindowError::Missing {
                    channel: c,
                    sample: n,
                }));
            }
            let x = cell.parse::<f64>().map_err(|_| {
                window_error(WindowError::Csv {
                    line: n + 1,
                    message: format!("{cell:?} is not a number"),
                })
            })?;
            finite(x, n, c)
        })
        .collect::<Result<Vec<_>, _>>()?;
    Ok(Reading { t: None, values })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn xyz() -> Vec<String> {
        ["x", "y", "z"].map(String::from).to_vec()
    }

    fn code(r: Result<Vec<Reading>, RequestError>) -> &'static str {
        r.expect_err("refused").code()
    }

    #[test]
    fn every_form_gives_the_same_readings() {
        let want = vec![
            Reading {
                t: None,
                values: vec![1.0, 2.0, 3.0],
            },
            Reading {
                t: None,
                values: vec![4.0, 5.0, 6.0],
            },
        ];
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
        assert_eq!(one[0].t, Some(17.5));
        assert_eq!(
            parse(b"[1, 2, 3]", &c).unwrap()[0].values,
            vec![1.0, 2.0, 3.0]
        );
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

    fn r(t: Option<f64>, v: f32) -> Reading {
        Reading {
            t,
            values: vec![v, -v],
        }
    }

    #[test]
    fn windows_are_cut_every_hop_and_out_of_order_readings_change_nothing() {
        let mut b = Buffer::default();
        let mut cuts = Vec::new();
        for i in 0..10 {
            if let Some(cut) = b.push(vec![r(Some(f64::from(i)), i as f32)], 4, 2).unwrap() {
                cuts.push(cut);
            }
        }
        // Windows of 4 readings every 2: ending at readings 3, 5, 7, 9.
        assert_eq!(cuts.len(), 4);
        assert_eq!((cuts[0].first, cuts[0].last), (0, 3));
        assert_eq!(
            cuts[0].channels[0],
            vec![Some(0.0), Some(1.0), Some(2.0), Some(3.0)]
        );
        assert_eq!(cuts[0].channels[1][3], Some(-3.0));
        assert_eq!((cuts[3].first, cuts[3].last), (6, 9));
        // A timestamp not after the last: refused whole, nothing taken.
        let e = b
            .push(vec![r(Some(10.0), 10.0), r(Some(9.5), 11.0)], 4, 2)
            .unwrap_err();
        assert_eq!(e.code(), "out_of_order");
        assert_eq!(b.count, 10);
        // A batch of readings: one window, the newest.
        let cut = b
            .push(
                (10..15).map(|i| r(Some(f64::from(i)), i as f32)).collect(),
                4,
                2,
            )
            .unwrap()
            .expect("a window");
        assert_eq!((cut.first, cut.last), (11, 14));
        // Readings without timestamps are taken in arrival order.
        assert!(b.push(vec![r(None, 0.0)], 4, 2).is_ok());
    }
}
