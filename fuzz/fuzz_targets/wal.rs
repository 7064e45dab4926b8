//! The write-ahead log reader on arbitrary (torn, corrupted) files.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let (records, good) = adaptd::state::store::parse_wal(data);
    assert!(good <= data.len());
    let _ = records.len();
});
