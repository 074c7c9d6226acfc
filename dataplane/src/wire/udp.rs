//! UDP headers: a typed view with named field offsets.

use super::bytes::{get_u16, set_u16};

/// Field offsets from the start of the UDP header.
pub mod field {
    use std::ops::Range;
    pub const SOURCE_PORT: Range<usize> = 0..2;
    pub const DESTINATION_PORT: Range<usize> = 2..4;
    pub const LENGTH: Range<usize> = 4..6;
    pub const CHECKSUM: Range<usize> = 6..8;
}

pub const HEADER_LEN: usize = 8;

/// A view of the UDP header at the start of a buffer at least [`HEADER_LEN`] long.
#[derive(Debug)]
pub struct Header<T: AsRef<[u8]>>(T);

impl<T: AsRef<[u8]>> Header<T> {
    #[inline]
    pub fn new_checked(buffer: T) -> Option<Header<T>> {
        (buffer.as_ref().len() >= HEADER_LEN).then_some(Header(buffer))
    }

    #[inline]
    pub fn source_port(&self) -> u16 {
        get_u16(self.0.as_ref(), field::SOURCE_PORT)
    }

    #[inline]
    pub fn destination_port(&self) -> u16 {
        get_u16(self.0.as_ref(), field::DESTINATION_PORT)
    }

    /// Header plus payload, in bytes.
    #[inline]
    pub fn len(&self) -> u16 {
        get_u16(self.0.as_ref(), field::LENGTH)
    }

    #[inline]
    pub fn is_empty(&self) -> bool {
        usize::from(self.len()) <= HEADER_LEN
    }

    /// Zero: not computed (RFC 768, IPv4 only).
    #[inline]
    pub fn checksum(&self) -> u16 {
        get_u16(self.0.as_ref(), field::CHECKSUM)
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> Header<T> {
    /// Writes the whole header.
    #[inline]
    pub fn write(&mut self, source_port: u16, destination_port: u16, len: u16, checksum: u16) {
        let b = self.0.as_mut();
        set_u16(b, field::SOURCE_PORT, source_port);
        set_u16(b, field::DESTINATION_PORT, destination_port);
        set_u16(b, field::LENGTH, len);
        set_u16(b, field::CHECKSUM, checksum);
    }

    #[inline]
    pub fn set_len(&mut self, len: u16) {
        set_u16(self.0.as_mut(), field::LENGTH, len);
    }

    #[inline]
    pub fn set_checksum(&mut self, checksum: u16) {
        set_u16(self.0.as_mut(), field::CHECKSUM, checksum);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{FrameSpec, mac};
    use std::net::Ipv4Addr;

    #[test]
    fn reads_and_writes_named_fields() {
        let f =
            FrameSpec::udp(mac(1), mac(2), Ipv4Addr::new(10, 0, 0, 1), Ipv4Addr::new(10, 0, 0, 2), 53, 5353)
                .payload(b"abcd")
                .build();
        let h = Header::new_checked(&f[34..]).unwrap();
        assert_eq!((h.source_port(), h.destination_port(), h.len()), (53, 5353, 12));
        assert!(h.checksum() != 0 && !h.is_empty());
        let mut b = [0u8; 8];
        Header::new_checked(&mut b[..]).unwrap().write(1, 2, 8, 0);
        assert_eq!(b, [0, 1, 0, 2, 0, 8, 0, 0]);
        assert!(Header::new_checked(&b[..7]).is_none());
    }
}
