//! IPv6 headers (RFC 8200): named field offsets of the fixed header.

/// Field offsets from the start of the fixed IPv6 header.
pub mod field {
    use std::ops::Range;
    pub const VERSION_CLASS_FLOW: Range<usize> = 0..4;
    pub const PAYLOAD_LEN: Range<usize> = 4..6;
    pub const NEXT_HEADER: usize = 6;
    pub const HOP_LIMIT: usize = 7;
    pub const SOURCE: Range<usize> = 8..24;
    pub const DESTINATION: Range<usize> = 24..40;
}

/// Length of the fixed header.
pub const HEADER_LEN: usize = 40;
