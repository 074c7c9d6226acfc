//! What a frame no stage decided may cost its segment. A bridge floods it; here, unicast
//! to a MAC nobody has in a segment whose MACs are all registered goes nowhere (it has
//! no legitimate destination), and broadcast, multicast and the remaining unknown
//! unicast are flooded within each ingress port's storm-control budget — a token
//! bucket per port, as hardware switches' storm control, OVS meters and VPP policers
//! offer — so one pod cannot have the switch copy its traffic to every other pod.

use std::time::Instant;

use crate::drop_reason::DropReason;
use crate::frame::Frame;
use crate::ids::PortId;
use crate::stage::Verdict;
use crate::tables::{SegmentConfig, UnknownUnicast};

/// One ingress port's budget on one worker.
#[derive(Clone, Copy, Debug, Default)]
struct Bucket {
    tokens: f64,
    /// Nanoseconds since the epoch of the last refill; zero: never used (full).
    refilled: u64,
}

/// The flood budgets of one worker's ingress ports.
pub(crate) struct FloodLimits {
    buckets: Box<[Bucket]>,
    epoch: Instant,
}

impl FloodLimits {
    pub(crate) fn new(max_ports: usize) -> FloodLimits {
        FloodLimits { buckets: vec![Bucket::default(); max_ports].into_boxed_slice(), epoch: Instant::now() }
    }

    /// The verdict for `frame`, from `ingress` in `segment`, that no stage decided.
    pub(crate) fn verdict(&mut self, segment: &SegmentConfig, ingress: PortId, frame: &Frame) -> Verdict {
        let unicast = frame.data().first().is_some_and(|b| b & 1 == 0);
        if unicast && segment.unknown_unicast == UnknownUnicast::Drop {
            return Verdict::Drop(DropReason::UnknownUnicast);
        }
        let Some(limit) = segment.storm_control else { return Verdict::Flood };
        let Some(bucket) = self.buckets.get_mut(ingress.index()) else { return Verdict::Flood };
        // At least one nanosecond: zero marks a bucket never used.
        let now = (self.epoch.elapsed().as_nanos() as u64).max(1);
        let burst = f64::from(limit.burst.max(1));
        bucket.tokens = if bucket.refilled == 0 {
            burst
        } else {
            let earned = (now - bucket.refilled) as f64 * f64::from(limit.rate_pps) / 1e9;
            (bucket.tokens + earned).min(burst)
        };
        bucket.refilled = now;
        if bucket.tokens >= 1.0 {
            bucket.tokens -= 1.0;
            Verdict::Flood
        } else {
            Verdict::Drop(DropReason::StormControl)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::frame::FramePool;
    use crate::tables::StormControl;
    use crate::tables::tests::segment0;
    use crate::testing::{FrameSpec, mac};
    use crate::wire::MacAddr;
    use std::net::Ipv4Addr;

    fn broadcast(pool: &mut FramePool) -> Frame {
        let bytes = FrameSpec::udp(
            mac(1),
            MacAddr::BROADCAST,
            Ipv4Addr::new(10, 244, 1, 2),
            Ipv4Addr::BROADCAST,
            68,
            67,
        )
        .build();
        pool.copy_of(&bytes).unwrap()
    }

    #[test]
    fn a_port_floods_its_burst_then_its_rate_and_the_others_theirs() {
        let mut pool = FramePool::standalone(2048);
        let segment =
            SegmentConfig { storm_control: Some(StormControl { rate_pps: 1000, burst: 5 }), ..segment0() };
        let mut limits = FloodLimits::new(4);
        let frame = broadcast(&mut pool);
        let flooded = |limits: &mut FloodLimits, port: u16, n: usize| {
            (0..n)
                .filter(|_| matches!(limits.verdict(&segment, PortId(port), &frame), Verdict::Flood))
                .count()
        };
        assert_eq!(flooded(&mut limits, 1, 8), 5, "the burst, then nothing");
        assert_eq!(flooded(&mut limits, 2, 8), 5, "another port's budget is its own");
        std::thread::sleep(std::time::Duration::from_millis(3));
        let again = flooded(&mut limits, 1, 8);
        assert!((2..=5).contains(&again), "about 3 ms × 1000/s earned: {again}");
        assert!(
            matches!(limits.verdict(&segment0(), PortId(1), &frame), Verdict::Flood),
            "no limit, no drop"
        );
    }

    #[test]
    fn unknown_unicast_goes_nowhere_where_every_mac_is_registered() {
        let mut pool = FramePool::standalone(2048);
        let bytes = FrameSpec::udp(
            mac(1),
            mac(0x777),
            Ipv4Addr::new(10, 244, 1, 2),
            Ipv4Addr::new(10, 244, 1, 9),
            1,
            2,
        )
        .build();
        let frame = pool.copy_of(&bytes).unwrap();
        let mut limits = FloodLimits::new(4);
        let dropping = SegmentConfig { unknown_unicast: UnknownUnicast::Drop, ..segment0() };
        assert!(matches!(
            limits.verdict(&dropping, PortId(1), &frame),
            Verdict::Drop(DropReason::UnknownUnicast)
        ));
        assert!(matches!(limits.verdict(&segment0(), PortId(1), &frame), Verdict::Flood));
    }
}
