//! The state directory: write-ahead log, snapshots, kept heads, the sample reservoir.

pub mod recovery;
pub mod samples;
pub mod store;
