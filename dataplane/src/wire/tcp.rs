//! TCP headers: a typed view with named field offsets.

use super::bytes::{get_u16, get_u32, set_u32};

/// Field offsets from the start of the TCP header.
pub mod field {
    use std::ops::Range;
    pub const SOURCE_PORT: Range<usize> = 0..2;
    pub const DESTINATION_PORT: Range<usize> = 2..4;
    pub const SEQUENCE: Range<usize> = 4..8;
    pub const ACKNOWLEDGEMENT: Range<usize> = 8..12;
    /// Data offset in the high nibble.
    pub const DATA_OFFSET: usize = 12;
    pub const FLAGS: usize = 13;
    pub const WINDOW: Range<usize> = 14..16;
    pub const CHECKSUM: Range<usize> = 16..18;
    pub const URGENT: Range<usize> = 18..20;
}

/// Length of a header without options.
pub const MIN_HEADER_LEN: usize = 20;

pub const FIN: u8 = 0x01;
pub const SYN: u8 = 0x02;
pub const RST: u8 = 0x04;
pub const PSH: u8 = 0x08;
pub const ACK: u8 = 0x10;
pub const CWR: u8 = 0x80;

/// A view of a TCP header at the start of a buffer at least [`MIN_HEADER_LEN`] long.
#[derive(Debug)]
pub struct Header<T: AsRef<[u8]>>(T);

impl<T: AsRef<[u8]>> Header<T> {
    #[inline]
    pub fn new_checked(buffer: T) -> Option<Header<T>> {
        (buffer.as_ref().len() >= MIN_HEADER_LEN).then_some(Header(buffer))
    }

    #[inline]
    pub fn source_port(&self) -> u16 {
        get_u16(self.0.as_ref(), field::SOURCE_PORT)
    }

    #[inline]
    pub fn destination_port(&self) -> u16 {
        get_u16(self.0.as_ref(), field::DESTINATION_PORT)
    }

    #[inline]
    pub fn sequence(&self) -> u32 {
        get_u32(self.0.as_ref(), field::SEQUENCE)
    }

    /// The header's length in bytes, options included.
    #[inline]
    pub fn header_len(&self) -> usize {
        usize::from(self.0.as_ref()[field::DATA_OFFSET] >> 4) * 4
    }

    #[inline]
    pub fn flags(&self) -> u8 {
        self.0.as_ref()[field::FLAGS]
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> Header<T> {
    #[inline]
    pub fn set_sequence(&mut self, seq: u32) {
        set_u32(self.0.as_mut(), field::SEQUENCE, seq);
    }

    #[inline]
    pub fn set_flags(&mut self, flags: u8) {
        self.0.as_mut()[field::FLAGS] = flags;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_a_captured_syn() {
        let syn = &crate::testing::CAPTURED_TCP_SYN[34..];
        let mut h = Header::new_checked(syn.to_vec()).unwrap();
        assert_eq!((h.source_port(), h.destination_port(), h.flags()), (59520, 80, SYN));
        assert!(h.header_len() >= MIN_HEADER_LEN);
        h.set_flags(SYN | ACK);
        h.set_sequence(7);
        assert_eq!((h.flags(), h.sequence()), (SYN | ACK, 7));
        assert!(Header::new_checked(&syn[..19]).is_none());
    }
}
