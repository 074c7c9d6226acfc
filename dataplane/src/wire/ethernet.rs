//! Ethernet II headers: a typed view with named field offsets.

use super::MacAddr;
use super::bytes::{get_u16, set_u16};

/// Field offsets from the first byte of the frame.
pub mod field {
    use std::ops::Range;
    pub const DESTINATION: Range<usize> = 0..6;
    pub const SOURCE: Range<usize> = 6..12;
    pub const ETHERTYPE: Range<usize> = 12..14;
}

/// Length of an untagged Ethernet header.
pub const HEADER_LEN: usize = 14;
/// Length of one 802.1Q tag (after the addresses, before the EtherType it carries).
pub const VLAN_TAG_LEN: usize = 4;

pub const ETHERTYPE_IPV4: u16 = 0x0800;
pub const ETHERTYPE_ARP: u16 = 0x0806;
pub const ETHERTYPE_VLAN: u16 = 0x8100;
pub const ETHERTYPE_QINQ: u16 = 0x88a8;
pub const ETHERTYPE_IPV6: u16 = 0x86dd;

/// A view of the Ethernet header at the start of a buffer at least [`HEADER_LEN`] long.
#[derive(Debug)]
pub struct Header<T: AsRef<[u8]>>(T);

impl<T: AsRef<[u8]>> Header<T> {
    /// `None` when the buffer is shorter than a header.
    #[inline]
    pub fn new_checked(buffer: T) -> Option<Header<T>> {
        (buffer.as_ref().len() >= HEADER_LEN).then_some(Header(buffer))
    }

    #[inline]
    pub fn destination(&self) -> MacAddr {
        MacAddr::from_bytes(&self.0.as_ref()[field::DESTINATION])
    }

    #[inline]
    pub fn source(&self) -> MacAddr {
        MacAddr::from_bytes(&self.0.as_ref()[field::SOURCE])
    }

    #[inline]
    pub fn ethertype(&self) -> u16 {
        get_u16(self.0.as_ref(), field::ETHERTYPE)
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> Header<T> {
    #[inline]
    pub fn set_destination(&mut self, mac: MacAddr) {
        self.0.as_mut()[field::DESTINATION].copy_from_slice(&mac.0);
    }

    #[inline]
    pub fn set_source(&mut self, mac: MacAddr) {
        self.0.as_mut()[field::SOURCE].copy_from_slice(&mac.0);
    }

    #[inline]
    pub fn set_ethertype(&mut self, ethertype: u16) {
        set_u16(self.0.as_mut(), field::ETHERTYPE, ethertype);
    }
}

/// Sets both addresses of the frame in `frame` (at least [`HEADER_LEN`] bytes, as every
/// parsed frame is): where a routed or answered frame goes, and from whom.
#[inline]
pub fn set_addresses(frame: &mut [u8], destination: MacAddr, source: MacAddr) {
    frame[field::DESTINATION].copy_from_slice(&destination.0);
    frame[field::SOURCE].copy_from_slice(&source.0);
}

/// Exchanges source and destination MAC (reflecting a frame back to its sender).
#[inline]
pub fn swap_addresses(frame: &mut [u8]) {
    let (dst, rest) = frame.split_at_mut(field::SOURCE.start);
    dst.swap_with_slice(&mut rest[..6]);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rewrites_touch_only_the_addresses() {
        let mut f: Vec<u8> = (0u8..20).collect();
        swap_addresses(&mut f);
        assert_eq!(&f[..12], &[6, 7, 8, 9, 10, 11, 0, 1, 2, 3, 4, 5]);
        set_addresses(&mut f, MacAddr([0xaa; 6]), MacAddr([0xbb; 6]));
        assert_eq!(&f[..12], &[0xaa, 0xaa, 0xaa, 0xaa, 0xaa, 0xaa, 0xbb, 0xbb, 0xbb, 0xbb, 0xbb, 0xbb]);
        assert_eq!(&f[12..], &[12, 13, 14, 15, 16, 17, 18, 19]);
    }

    #[test]
    fn the_view_reads_and_writes_named_fields() {
        let syn = crate::testing::CAPTURED_TCP_SYN;
        let h = Header::new_checked(syn).unwrap();
        assert_eq!(h.ethertype(), 0x0800);
        assert_eq!(h.destination(), MacAddr::from_bytes(&syn[0..6]));
        let mut buf = syn.to_vec();
        let mut h = Header::new_checked(&mut buf[..]).unwrap();
        h.set_source(MacAddr([2, 0, 0, 0, 0, 9]));
        h.set_ethertype(0x86dd);
        assert_eq!(h.source(), MacAddr([2, 0, 0, 0, 0, 9]));
        assert_eq!(&buf[12..14], &[0x86, 0xdd]);
        assert!(Header::new_checked(&syn[..13]).is_none());
    }
}
