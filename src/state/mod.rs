//! The state directory: its file names and atomic write, the write-ahead log, snapshots, kept
//! heads, the sample reservoir, the ledger of learned samples by id (for unlearning).

pub mod files;
pub mod ledger;
pub mod recovery;
pub mod samples;
pub mod store;
