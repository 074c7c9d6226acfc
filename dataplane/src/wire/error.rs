//! Why bytes are not a frame the switch accepts: the wire layer's own error.
//!
//! One variant per way a header can be wrong. The data path maps each to exactly one
//! drop reason (`DropReason::from`), so the wire layer knows nothing of counters.

/// What is wrong with a frame, by layer.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Error {
    /// Shorter than an Ethernet header.
    TruncatedEthernet,
    /// An 802.1Q tag cut short.
    TruncatedVlan,
    /// Stacked VLAN tags (QinQ / 802.1ad).
    StackedVlan,
    /// An EtherType other than ARP, IPv4 and IPv6.
    UnknownEthertype,
    /// ARP shorter than its address lengths require.
    TruncatedArp,
    /// ARP for something other than IPv4 over Ethernet.
    UnsupportedArp,
    TruncatedIpv4,
    /// Version or header length invalid, or a malformed authentication header.
    BadIpv4Header,
    /// Total length smaller than the header or larger than the frame.
    BadIpv4Length,
    BadIpv4Checksum,
    TruncatedIpv6,
    BadIpv6Header,
    /// Payload length larger than the frame.
    BadIpv6Length,
    BadIpv6ExtHeader,
    TruncatedTcp,
    /// Data offset smaller than the minimum header.
    BadTcpHeader,
    TruncatedUdp,
    /// UDP length inconsistent with the IP payload.
    BadUdpLength,
    TruncatedIcmp,
    /// Fewer than 8 bytes after the outer UDP header.
    TruncatedVxlan,
    /// No I flag: no valid VNI (RFC 7348 §5).
    BadVxlanFlags,
    /// Longer than any frame the switch handles ([`super::MAX_FRAME_LEN`]).
    Oversized,
    /// A virtio-net header inconsistent with its frame.
    BadOffloadHeader,
}

impl std::fmt::Display for Error {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        std::fmt::Debug::fmt(self, f)
    }
}

impl std::error::Error for Error {}
