#![no_main]
//! The whole pipeline fed arbitrary frames from arbitrary ports.
//!
//! Input: records of `[port: u8][len: u16 big-endian][len bytes]`; a port byte with the
//! top bit set is a control operation instead (age the FDB out, republish the tables).
//! Invariants: no panic; every received frame is forwarded, flooded or dropped with a
//! reason, exactly once; every frame the switch sends parses.

use libfuzzer_sys::fuzz_target;
use vswitch_dataplane::fuzzing::Topology;

fuzz_target!(|data: &[u8]| {
    let mut topo = Topology::new();
    let mut rest = data;
    while let [op, tail @ ..] = rest {
        if op & 0x80 != 0 {
            topo.control(*op);
            rest = tail;
            continue;
        }
        let [hi, lo, body @ ..] = tail else { break };
        let len = usize::from(u16::from_be_bytes([*hi, *lo])).min(body.len());
        topo.receive(*op, &body[..len]);
        rest = &body[len..];
    }
    topo.check_invariants();
});
