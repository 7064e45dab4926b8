//! Request errors with stable machine-readable codes: what goes on `{root}/error`.

use crate::head::HeadError;
use crate::model::EmbedError;

/// Why a request was refused. Every variant has a stable [`code`](RequestError::code); the
/// message is for humans. A refused request changes nothing.
#[derive(Debug, thiserror::Error)]
pub enum RequestError {
    #[error(transparent)]
    Embed(#[from] EmbedError),
    #[error(transparent)]
    Head(#[from] HeadError),
    #[error("payload of {size} bytes exceeds the limit of {max} bytes")]
    TooLarge { size: usize, max: usize },
    #[error("invalid JSON request: {0}")]
    BadJson(String),
    #[error("invalid request: {0}")]
    BadRequest(String),
    #[error("no class {0:?}")]
    UnknownLabel(String),
    #[error("no recent prediction has id {0:?} (it may have left the feedback ring)")]
    UnknownId(String),
    #[error("cannot unlearn {id:?}: {}", not_kept(*why))]
    NotKept {
        id: String,
        why: crate::state::ledger::Missing,
    },
    #[error("no prediction to correct yet: {0}")]
    NothingToCorrect(&'static str),
    #[error("unknown command {name:?} (known: {known})")]
    UnknownCommand { name: String, known: String },
    #[error("the head has no classes yet: teach one on {root}/learn/<label>")]
    NoClasses { root: String },
    #[error("no kept head has version {0}")]
    NoSuchVersion(u64),
    #[error("the learn queue is full; send learn messages with QoS 1 to get backpressure")]
    Busy,
    #[error("state directory: {0}")]
    Storage(#[from] std::io::Error),
    #[error("fleet: {0}")]
    Fleet(#[from] crate::fleet::FleetError),
}

/// Why a sample cannot be unlearned, for humans.
fn not_kept(why: crate::state::ledger::Missing) -> &'static str {
    use crate::state::ledger::{Gone, Missing};
    match why {
        Missing::Never => "no sample with this id was learned (or it was forgotten long ago)",
        Missing::Gone(Gone::Unlearned) => "it was already unlearned",
        Missing::Gone(Gone::Dropped) => {
            "it is no longer kept: the oldest samples are dropped past state.unlearn_max_bytes"
        }
        Missing::Gone(Gone::Forgotten) => {
            "it is no longer in the head (its class was forgotten, or the head was reset, \
             imported, rolled back or retrained without it)"
        }
    }
}

impl RequestError {
    /// Stable error code for `{root}/error` replies.
    pub fn code(&self) -> &'static str {
        match self {
            RequestError::Embed(e) => e.code(),
            RequestError::Head(e) => e.code(),
            RequestError::TooLarge { .. } => "too_large",
            RequestError::BadJson(_) => "bad_json",
            RequestError::BadRequest(_) => "bad_request",
            RequestError::UnknownId(_)
            | RequestError::NothingToCorrect(_)
            | RequestError::NotKept { .. } => "unknown_id",
            RequestError::UnknownLabel(_) => "unknown_label",
            RequestError::UnknownCommand { .. } => "unknown_command",
            RequestError::NoClasses { .. } => "no_classes",
            RequestError::NoSuchVersion(_) => "no_such_version",
            RequestError::Busy => "busy",
            RequestError::Storage(_) => "storage",
            RequestError::Fleet(e) => e.code(),
        }
    }
}
