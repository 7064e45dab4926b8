//! The state directory: its file names and atomic write, the write-ahead log, snapshots, kept
//! heads, the sample reservoir.

pub mod files;
pub mod recovery;
pub mod samples;
pub mod store;
