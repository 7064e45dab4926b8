//! Inbound requests, decoded once: the JSON or raw body of infer/learn/feedback messages, and
//! the commands of `{root}/cmd/<name>` as a [`Command`] whose names come from the enum.

use base64::Engine;
use serde::Deserialize;

use crate::daemon::error::RequestError;
use crate::head::Algorithm;
use crate::model::Input;

/// Longest request id accepted (bytes).
const MAX_ID_BYTES: usize = 128;
/// Largest head file accepted by `import`, `merge` and from fleet peers.
pub const MAX_HEAD_BYTES: usize = 64 * 1024 * 1024;
/// Largest payload of a command with a small argument (a label, a version, a name).
const MAX_ARGUMENT_BYTES: usize = 1024;
/// Largest feedback message.
pub const MAX_FEEDBACK_BYTES: usize = 64 * 1024;

/// A decoded request body.
#[derive(Debug, Default)]
pub struct Request {
    /// Request id (echoed in replies).
    pub id: Option<String>,
    /// Label, for learn and feedback.
    pub label: Option<String>,
    /// Input tensor, when the request carries an input.
    pub input: Option<Input>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct JsonRequest {
    #[serde(default)]
    id: Option<serde_json::Value>,
    #[serde(default)]
    label: Option<String>,
    #[serde(default)]
    image: Option<String>,
    #[serde(default)]
    tensor: Option<Vec<f64>>,
    /// A sound file (WAV), base64.
    #[serde(default)]
    audio: Option<String>,
    /// Mono signed 16-bit little-endian PCM, base64, at `rate` Hz.
    #[serde(default)]
    pcm: Option<String>,
    #[serde(default)]
    rate: Option<u32>,
    /// A text, for a text model.
    #[serde(default)]
    text: Option<String>,
    /// A sensor window, one array of numbers per channel (`null`: missing), or CSV text, for a
    /// sensor model.
    #[serde(default)]
    window: Option<serde_json::Value>,
}

fn base64_field(name: &str, b64: &str) -> Result<Vec<u8>, RequestError> {
    base64::engine::general_purpose::STANDARD
        .decode(b64.trim())
        .map_err(|e| RequestError::BadRequest(format!("{name} is not base64: {e}")))
}

/// Checks the payload size limit.
pub fn check_size(payload: &[u8], max: usize) -> Result<(), RequestError> {
    if payload.len() > max {
        return Err(RequestError::TooLarge {
            size: payload.len(),
            max,
        });
    }
    Ok(())
}

/// Best-effort id of a request, for error replies to requests that fail to parse fully.
pub fn sniff_id(payload: &[u8]) -> Option<String> {
    if payload.first() != Some(&b'{') || payload.len() > 1 << 20 {
        return None;
    }
    let v: serde_json::Value = serde_json::from_slice(payload).ok()?;
    id_string(v.get("id")?).ok()
}

fn id_string(v: &serde_json::Value) -> Result<String, RequestError> {
    let s = match v {
        serde_json::Value::String(s) => s.clone(),
        serde_json::Value::Number(n) => n.to_string(),
        _ => {
            return Err(RequestError::BadRequest(
                "id must be a string or a number".into(),
            ))
        }
    };
    if s.is_empty() || s.len() > MAX_ID_BYTES || s.chars().any(char::is_control) {
        return Err(RequestError::BadRequest(format!(
            "id must be 1..={MAX_ID_BYTES} bytes without control characters"
        )));
    }
    Ok(s)
}

/// Decodes a request: a JSON object (`id`, `label`, and one of `image` base64, `tensor`, `audio`,
/// `pcm` + `rate`, `text`, `window`), or any other
/// payload taken as the input itself.
pub fn parse_request(payload: &bytes::Bytes) -> Result<Request, RequestError> {
    let raw = || Request {
        input: Some(Input::Payload(payload.clone())),
        ..Request::default()
    };
    let first = payload.iter().find(|b| !b.is_ascii_whitespace());
    if first != Some(&b'{') {
        return Ok(raw());
    }
    let req: JsonRequest = match serde_json::from_slice(payload) {
        Ok(req) => req,
        // JSON is UTF-8: a binary payload (raw f32 of a tensor or a sensor window) that happens
        // to start with the byte of `{` is the input itself. Checked only when the JSON parse
        // failed, so a valid request is not scanned twice.
        Err(_) if std::str::from_utf8(payload).is_err() => return Ok(raw()),
        Err(e) => return Err(RequestError::BadJson(e.to_string())),
    };
    let id = req.id.as_ref().map(id_string).transpose()?;
    let given = [
        req.image.is_some(),
        req.tensor.is_some(),
        req.audio.is_some(),
        req.pcm.is_some(),
        req.text.is_some(),
        req.window.is_some(),
    ];
    if given.iter().filter(|g| **g).count() > 1 {
        return Err(RequestError::BadRequest(
            "give one of image, tensor, audio, pcm, text or window".into(),
        ));
    }
    if req.rate.is_some() != req.pcm.is_some() {
        return Err(RequestError::BadRequest(
            "pcm needs its rate (Hz), and rate goes with pcm".into(),
        ));
    }
    let input = if let Some(b64) = req.image {
        Some(Input::Image(base64_field("image", &b64)?))
    } else if let Some(t) = req.tensor {
        Some(Input::Tensor(t))
    } else if let Some(b64) = req.audio {
        Some(Input::Audio(base64_field("audio", &b64)?))
    } else if let (Some(b64), Some(rate)) = (req.pcm, req.rate) {
        let clip = crate::model::audio::pcm_s16le(&base64_field("pcm", &b64)?, rate)
            .map_err(|e| RequestError::BadRequest(e.to_string()))?;
        Some(Input::Pcm(clip))
    } else if let Some(w) = req.window {
        match w {
            // CSV text, a reading per line (what `adaptd teach` sends for a .csv file).
            serde_json::Value::String(csv) => Some(Input::Csv(csv)),
            w => Some(Input::Window(
                crate::model::sensor::parse_json_window(&w).map_err(RequestError::BadRequest)?,
            )),
        }
    } else {
        req.text.map(Input::Text)
    };
    Ok(Request {
        id,
        label: req.label,
        input,
    })
}

/// A message of a `[[sources]]` topic with `text_field`: a JSON object's `field` (a string) is
/// the text, and its `id` the request id when there is one; any other payload is the text
/// itself.
pub fn parse_text_source(payload: &bytes::Bytes, field: &str) -> Result<Request, RequestError> {
    let first = payload.iter().find(|b| !b.is_ascii_whitespace());
    if first != Some(&b'{') {
        return parse_request(payload);
    }
    let doc: serde_json::Map<String, serde_json::Value> =
        serde_json::from_slice(payload).map_err(|e| RequestError::BadJson(e.to_string()))?;
    let text = match doc.get(field) {
        Some(serde_json::Value::String(s)) => s.clone(),
        _ => {
            return Err(RequestError::BadRequest(format!(
                "no string field {field:?} (the source's text_field)"
            )))
        }
    };
    let id = doc.get("id").map(id_string).transpose()?;
    Ok(Request {
        id,
        label: None,
        input: Some(Input::Text(text)),
    })
}

macro_rules! commands {
    ($($(#[$doc:meta])* $kind:ident = $name:literal,)*) => {
        /// The commands of `{root}/cmd/<name>`, without their arguments.
        #[derive(Debug, Clone, Copy, PartialEq, Eq)]
        pub enum CommandKind {
            $($(#[$doc])* $kind,)*
        }

        impl CommandKind {
            /// Every command, in the order the docs list them.
            pub const ALL: &'static [CommandKind] = &[$(CommandKind::$kind,)*];

            /// The command's name in its topic.
            pub fn name(self) -> &'static str {
                match self {
                    $(CommandKind::$kind => $name,)*
                }
            }
        }
    };
}

commands! {
    /// Forget a class.
    Forget = "forget",
    /// Forget every class and stored sample.
    Reset = "reset",
    /// Snapshot and publish now.
    Snapshot = "snapshot",
    /// Restore a kept head.
    Rollback = "rollback",
    /// Switch learner, retraining from the stored samples.
    Algorithm = "algorithm",
    /// Replace the head by a head file.
    Import = "import",
    /// Merge a head file into the head.
    Merge = "merge",
    /// Forget the adaptation statistics.
    AdaptReset = "adapt-reset",
    /// Stop merging one fleet peer.
    FleetLeave = "fleet-leave",
    /// Remove exactly one learned sample, by id.
    Unlearn = "unlearn",
    /// Move one learned sample, by id, to another label.
    Relabel = "relabel",
}

impl CommandKind {
    /// The kind named `name`.
    pub fn from_name(name: &str) -> Option<CommandKind> {
        CommandKind::ALL.iter().copied().find(|k| k.name() == name)
    }

    /// Every name, comma-separated (for error messages).
    pub fn names() -> String {
        CommandKind::ALL
            .iter()
            .map(|k| k.name())
            .collect::<Vec<_>>()
            .join(", ")
    }
}

/// A command with its parsed argument.
#[derive(Debug, Clone, PartialEq)]
pub enum Command {
    Forget {
        label: String,
    },
    Reset,
    Snapshot,
    /// `None`: the newest kept head older than the current one.
    Rollback {
        version: Option<u64>,
    },
    Algorithm(Algorithm),
    /// A head file, checked against the backbone by the learner.
    Import(bytes::Bytes),
    Merge(bytes::Bytes),
    AdaptReset,
    FleetLeave {
        peer: String,
    },
    /// The id of a learned sample (a learn request's id, or the prediction id feedback used).
    Unlearn {
        id: String,
    },
    Relabel {
        id: String,
        label: String,
    },
}

impl Command {
    /// Parses the command `name` with its payload; nothing is executed.
    pub fn parse(name: &str, payload: &bytes::Bytes) -> Result<Command, RequestError> {
        let kind = CommandKind::from_name(name).ok_or_else(|| RequestError::UnknownCommand {
            name: name.to_string(),
            known: CommandKind::names(),
        })?;
        let small = || check_size(payload, MAX_ARGUMENT_BYTES);
        Ok(match kind {
            CommandKind::Forget => {
                small()?;
                let label = json_or_text(payload, "label")
                    .ok_or_else(|| RequestError::BadRequest("forget needs a label".into()))?;
                crate::head::validate_label(&label)?;
                Command::Forget { label }
            }
            CommandKind::Reset => Command::Reset,
            CommandKind::Snapshot => Command::Snapshot,
            CommandKind::Rollback => {
                small()?;
                let version = match json_or_text(payload, "version").filter(|s| !s.is_empty()) {
                    Some(v) => Some(v.parse::<u64>().map_err(|_| {
                        RequestError::BadRequest(format!("version {v:?} is not a number"))
                    })?),
                    None => None,
                };
                Command::Rollback { version }
            }
            CommandKind::Algorithm => {
                small()?;
                let text = json_or_text(payload, "algorithm")
                    .ok_or_else(|| RequestError::BadRequest("algorithm needs a name".into()))?;
                Command::Algorithm(text.parse()?)
            }
            CommandKind::Import => {
                check_size(payload, MAX_HEAD_BYTES)?;
                Command::Import(payload.clone())
            }
            CommandKind::Merge => {
                check_size(payload, MAX_HEAD_BYTES)?;
                Command::Merge(payload.clone())
            }
            CommandKind::AdaptReset => Command::AdaptReset,
            CommandKind::FleetLeave => {
                small()?;
                let peer = json_or_text(payload, "peer")
                    .filter(|p| !p.is_empty())
                    .ok_or_else(|| {
                        RequestError::BadRequest("fleet-leave needs a peer device id".into())
                    })?;
                crate::head::validate_label(&peer)
                    .map_err(|e| RequestError::BadRequest(format!("peer: {e}")))?;
                Command::FleetLeave { peer }
            }
            CommandKind::Unlearn => {
                small()?;
                let id = json_or_text(payload, "id")
                    .filter(|i| !i.is_empty())
                    .ok_or_else(|| RequestError::BadRequest("unlearn needs an id".into()))?;
                Command::Unlearn {
                    id: id_string(&serde_json::Value::String(id))?,
                }
            }
            CommandKind::Relabel => {
                small()?;
                let text = std::str::from_utf8(payload).unwrap_or("").trim();
                if !text.starts_with('{') {
                    return Err(RequestError::BadRequest(
                        "relabel needs a JSON object {\"id\": ..., \"label\": ...}".into(),
                    ));
                }
                let id = json_or_text(payload, "id")
                    .ok_or_else(|| RequestError::BadRequest("relabel needs an id".into()))?;
                let id = id_string(&serde_json::Value::String(id))?;
                let label = json_or_text(payload, "label").ok_or_else(|| {
                    RequestError::Head(crate::head::HeadError::BadLabel(
                        "relabel needs a label".into(),
                    ))
                })?;
                crate::head::validate_label(&label)?;
                Command::Relabel { id, label }
            }
        })
    }

    /// The command's kind.
    pub fn kind(&self) -> CommandKind {
        match self {
            Command::Forget { .. } => CommandKind::Forget,
            Command::Reset => CommandKind::Reset,
            Command::Snapshot => CommandKind::Snapshot,
            Command::Rollback { .. } => CommandKind::Rollback,
            Command::Algorithm(_) => CommandKind::Algorithm,
            Command::Import(_) => CommandKind::Import,
            Command::Merge(_) => CommandKind::Merge,
            Command::AdaptReset => CommandKind::AdaptReset,
            Command::FleetLeave { .. } => CommandKind::FleetLeave,
            Command::Unlearn { .. } => CommandKind::Unlearn,
            Command::Relabel { .. } => CommandKind::Relabel,
        }
    }
}

/// A command argument: a JSON object's `field`, or the whole payload as text.
fn json_or_text(payload: &[u8], field: &str) -> Option<String> {
    let text = std::str::from_utf8(payload).ok()?.trim();
    if text.starts_with('{') {
        let v: serde_json::Value = serde_json::from_str(text).ok()?;
        return match v.get(field)? {
            serde_json::Value::String(s) => Some(s.clone()),
            serde_json::Value::Number(n) => Some(n.to_string()),
            _ => None,
        };
    }
    Some(text.trim_matches('"').to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_binary_payload_starting_with_a_brace_is_the_input() {
        let mut raw = vec![b'{'];
        raw.extend(0.5f32.to_le_bytes());
        raw.extend([0xff, 0xfe, 0x80]);
        let r = parse_request(&bytes::Bytes::from(raw.clone())).expect("raw");
        assert_eq!(r.input, Some(Input::Payload(bytes::Bytes::from(raw))));
        // Text that starts with a brace is JSON, and bad JSON is an error.
        assert!(parse_request(&bytes::Bytes::from_static(b"{ not json")).is_err());
    }

    #[test]
    fn text_sources_take_their_field() {
        let b = |s: &str| bytes::Bytes::from(s.to_string());
        let hermes = "{\"text\": \"lights off\", \"siteId\": \"kitchen\", \"likelihood\": 1}";
        let r = parse_text_source(&b(hermes), "text").expect("hermes");
        assert!(matches!(r.input, Some(Input::Text(ref t)) if t == "lights off"));
        assert_eq!(r.id, None);
        let r = parse_text_source(&b("{\"transcript\": \"hi\", \"id\": 4}"), "transcript")
            .expect("field");
        assert_eq!(r.id.as_deref(), Some("4"));
        let r = parse_text_source(&b("plain words"), "text").expect("raw");
        assert!(matches!(r.input, Some(Input::Payload(_))));
        for bad in ["{\"text\": 1}", "{\"other\": \"x\"}", "{\"text\": "] {
            assert!(parse_text_source(&b(bad), "text").is_err(), "{bad}");
        }
    }

    #[test]
    fn requests_parse_or_fail_clearly() {
        let b = |s: &str| bytes::Bytes::from(s.to_string());
        let r =
            parse_request(&b("{\"id\": 7, \"label\": \"cat\", \"tensor\": [1, 2]}")).expect("json");
        assert_eq!(r.id.as_deref(), Some("7"));
        assert!(matches!(r.input, Some(Input::Tensor(ref t)) if t.len() == 2));
        let r = parse_request(&b("{\"image\": \"aGVsbG8=\"}")).expect("b64");
        assert!(matches!(r.input, Some(Input::Image(ref i)) if i == b"hello"));
        let r = parse_request(&b("{\"audio\": \"aGVsbG8=\"}")).expect("audio");
        assert!(matches!(r.input, Some(Input::Audio(ref a)) if a == b"hello"));
        let r = parse_request(&b("{\"pcm\": \"AIAAAP9/\", \"rate\": 8000}")).expect("pcm");
        assert!(matches!(r.input, Some(Input::Pcm(ref c))
            if c.rate == 8000 && c.samples == [-1.0, 0.0, 32767.0 / 32768.0]));
        assert!(matches!(
            parse_request(&b("[1,2,3]")).expect("bare").input,
            Some(Input::Payload(_))
        ));
        let r = parse_request(&b("{\"id\": \"t\", \"text\": \"lights off\"}")).expect("text");
        assert!(matches!(r.input, Some(Input::Text(ref t)) if t == "lights off"));
        for (bad, code) in [
            ("{\"text\": \"a\", \"image\": \"aGk=\"}", "bad_request"),
            ("{\"text\": 3}", "bad_json"),
            ("{\"tensor\": [1,", "bad_json"),
            ("{\"tensr\": [1]}", "bad_json"),
            ("{\"image\": \"***\"}", "bad_request"),
            ("{\"image\": \"aGk=\", \"tensor\": [1]}", "bad_request"),
            ("{\"id\": {\"a\": 1}}", "bad_request"),
            ("{\"audio\": \"aGk=\", \"image\": \"aGk=\"}", "bad_request"),
            ("{\"pcm\": \"AAA=\"}", "bad_request"),
            ("{\"rate\": 16000}", "bad_request"),
            ("{\"pcm\": \"AA==\", \"rate\": 16000}", "bad_request"),
            ("{\"pcm\": \"AAA=\", \"rate\": 0}", "bad_request"),
            ("{\"pcm\": \"\", \"rate\": 16000}", "bad_request"),
        ] {
            assert_eq!(parse_request(&b(bad)).expect_err(bad).code(), code, "{bad}");
        }
        assert_eq!(
            sniff_id(b"{\"id\": \"x\", \"oops\": 1}").as_deref(),
            Some("x")
        );
    }

    #[test]
    fn commands_parse_once_with_their_arguments() {
        let b = |s: &str| bytes::Bytes::from(s.to_string());
        assert_eq!(
            Command::parse("forget", &b("{\"label\": \"cat\"}")).expect("forget"),
            Command::Forget {
                label: "cat".into()
            }
        );
        assert_eq!(
            Command::parse("forget", &b("cat")).expect("forget text"),
            Command::Forget {
                label: "cat".into()
            }
        );
        assert_eq!(
            Command::parse("rollback", &b("")).expect("rollback"),
            Command::Rollback { version: None }
        );
        assert_eq!(
            Command::parse("rollback", &b("{\"version\": 3}")).expect("rollback 3"),
            Command::Rollback { version: Some(3) }
        );
        assert_eq!(
            Command::parse("algorithm", &b("slda")).expect("algorithm"),
            Command::Algorithm(Algorithm::Slda)
        );
        assert_eq!(
            Command::parse("fleet-leave", &b("{\"peer\": \"cam2\"}")).expect("leave"),
            Command::FleetLeave {
                peer: "cam2".into()
            }
        );
        assert_eq!(
            Command::parse("unlearn", &b("{\"id\": \"cam1-7\"}")).expect("unlearn"),
            Command::Unlearn {
                id: "cam1-7".into()
            }
        );
        assert_eq!(
            Command::parse("unlearn", &b("{\"id\": 42}")).expect("numeric id"),
            Command::Unlearn { id: "42".into() }
        );
        assert_eq!(
            Command::parse("unlearn", &b("cam1-7")).expect("unlearn text"),
            Command::Unlearn {
                id: "cam1-7".into()
            }
        );
        assert_eq!(
            Command::parse("relabel", &b("{\"id\": \"p1\", \"label\": \"dog\"}")).expect("relabel"),
            Command::Relabel {
                id: "p1".into(),
                label: "dog".into()
            }
        );
        for kind in CommandKind::ALL {
            assert_eq!(CommandKind::from_name(kind.name()), Some(*kind));
        }
        for (name, payload, code) in [
            ("forget", "", "bad_label"),
            ("forget", "a/b", "bad_label"),
            ("rollback", "x", "bad_request"),
            ("algorithm", "nope", "bad_config"),
            ("fleet-leave", "", "bad_request"),
            ("fleet-leave", "a+b", "bad_request"),
            ("unlearn", "", "bad_request"),
            ("unlearn", "{\"label\": \"x\"}", "bad_request"),
            ("unlearn", "{\"id\": \"a\\u0001\"}", "bad_request"),
            ("relabel", "p1 dog", "bad_request"),
            ("relabel", "{\"label\": \"dog\"}", "bad_request"),
            ("relabel", "{\"id\": \"p1\"}", "bad_label"),
            (
                "relabel",
                "{\"id\": \"p1\", \"label\": \"a/b\"}",
                "bad_label",
            ),
            ("relabel", "{\"id\": \"p1\", \"label\": \"\"}", "bad_label"),
            ("dance", "", "unknown_command"),
        ] {
            let e = Command::parse(name, &b(payload)).expect_err(name);
            assert_eq!(e.code(), code, "{name} {payload:?}: {e}");
        }
        let e = Command::parse("dance", &b("")).expect_err("unknown");
        assert!(e.to_string().contains("forget, reset, snapshot"), "{e}");
        let big = bytes::Bytes::from(vec![b'a'; 2000]);
        assert_eq!(
            Command::parse("forget", &big).expect_err("big").code(),
            "too_large"
        );
    }
}
