#![no_main]
//! A pod's super-frame (the first 10 bytes are its virtio-net header, the rest the frame)
//! through the whole-frame encapsulation toward a tunnel port and through the coalescer:
//! see `vswitch_dataplane::fuzzing::check_whole_encapsulation` for the invariants (the
//! bytes that leave, cut by a reference segmenter, equal the segments the other
//! underlays carry; coalesced segments cut again into themselves).

use libfuzzer_sys::fuzz_target;
use vswitch_dataplane::wire::offload::VNET_HDR_LEN;

fuzz_target!(|data: &[u8]| {
    let Some((hdr, frame)) = data.split_first_chunk::<VNET_HDR_LEN>() else { return };
    vswitch_dataplane::fuzzing::check_whole_encapsulation(hdr, frame);
});
