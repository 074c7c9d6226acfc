#![no_main]
//! The virtio-net offload header and what is done with it, on arbitrary bytes: the
//! first 10 bytes are the header, the rest the frame. Invariants: decode never panics;
//! a header it accepts can be acted on without panicking — every segment fits
//! `segment_len` and checksum completion writes inside the frame — and when the
//! pipeline would take the frame (its headers parse and the offload state matches them),
//! every segment parses.

use libfuzzer_sys::fuzz_target;
use vswitch_dataplane::wire::offload::{self, VNET_HDR_LEN};
use vswitch_dataplane::wire::parse;

fuzz_target!(|data: &[u8]| {
    let Some((hdr, frame)) = data.split_first_chunk::<VNET_HDR_LEN>() else { return };
    let Ok(mut off) = offload::decode(hdr, frame) else { return };
    if off.is_gso() {
        let n = offload::segment_count(frame, &off);
        assert!(n <= offload::MAX_SEGMENTS);
        let mut out = vec![0u8; usize::from(off.segment_len)];
        for i in 0..n {
            let len = offload::write_segment(frame, &off, i, &mut out);
            assert!(len <= usize::from(off.segment_len));
            // A segment of a frame the pipeline accepts, parses.
            if parse::parse(frame).is_ok_and(|m| vswitch_dataplane::wire::offload::matches_headers(&off, &m).is_ok()) {
                assert!(parse::parse(&out[..len]).is_ok(), "segment {i} of a valid super-frame does not parse");
            }
        }
    } else {
        let mut copy = frame.to_vec();
        offload::complete_checksum(&mut copy, &mut off);
        assert_eq!(copy.len(), frame.len());
    }
});
