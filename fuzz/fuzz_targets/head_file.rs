//! Head files (imports, merges, rollbacks): parse, and when accepted re-encode, re-parse and
//! predict.
#![no_main]
use adaptd::head::{Expect, Head};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let expect = Expect {
        backbone_sha256: None,
        dim: None,
        max_bytes: 1 << 22,
    };
    if let Ok(h) = Head::from_bytes(data, &expect) {
        let bytes = h.to_bytes().expect("an accepted head re-encodes");
        let again = Head::from_bytes(&bytes, &expect).expect("and parses again");
        assert_eq!(again.samples(), h.samples());
        if h.dim() <= 4096 {
            let p = h.snapshot();
            let _ = p.predict(&vec![0.5; h.dim()], 3);
        }
    }
});
