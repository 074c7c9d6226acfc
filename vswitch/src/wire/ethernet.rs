//! In-place rewrites of the Ethernet header.

use super::MacAddr;

#[inline]
pub fn set_destination(frame: &mut [u8], mac: MacAddr) {
    frame[0..6].copy_from_slice(&mac.0);
}

#[inline]
pub fn set_source(frame: &mut [u8], mac: MacAddr) {
    frame[6..12].copy_from_slice(&mac.0);
}

/// Exchanges source and destination MAC (reflecting a frame back to its sender).
#[inline]
pub fn swap_addresses(frame: &mut [u8]) {
    let (dst, rest) = frame.split_at_mut(6);
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
        set_destination(&mut f, MacAddr([0xaa; 6]));
        set_source(&mut f, MacAddr([0xbb; 6]));
        assert_eq!(&f[..12], &[0xaa, 0xaa, 0xaa, 0xaa, 0xaa, 0xaa, 0xbb, 0xbb, 0xbb, 0xbb, 0xbb, 0xbb]);
        assert_eq!(&f[12..], &[12, 13, 14, 15, 16, 17, 18, 19]);
    }
}
