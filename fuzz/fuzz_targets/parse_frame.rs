#![no_main]
//! The frame parser on arbitrary bytes: never panics, and whenever the fast path
//! accepts a frame, the etherparse reference path returns the same metadata.

use libfuzzer_sys::fuzz_target;
use vswitch_dataplane::wire::parse::{parse, parse_with_etherparse};

fuzz_target!(|frame: &[u8]| {
    let reference = parse_with_etherparse(frame);
    let fast_or_reference = parse(frame);
    assert_eq!(fast_or_reference, reference, "fast path and etherparse disagree");
    if let Ok(meta) = fast_or_reference {
        // Offsets the parser reports lie inside the frame.
        assert!(usize::from(meta.l3_offset) <= frame.len());
    }
});
