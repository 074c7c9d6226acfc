//! The Internet checksum (RFC 1071) and its incremental update (RFC 1624).
//!
//! NAT and TTL rewrites change a few 16-bit words of a header; recomputing the
//! whole checksum would touch the whole payload (TCP/UDP checksums cover it).
//! [`update_u16`]/[`update_u32`] adjust an existing checksum from the old and new
//! value of the changed words only, per RFC 1624 equation 3:
//! `HC' = ~(~HC + ~m + m')`.

use std::net::Ipv4Addr;

/// One's-complement sum of `data` as big-endian 16-bit words, added to `initial`.
/// An odd trailing byte is padded with zero. Not folded; see [`fold`].
// Always inlined: see `pipeline::stages`.
#[inline(always)]
pub fn sum(data: &[u8], initial: u64) -> u64 {
    // Big-endian 32-bit words summed into 64 bits fold to the same 16-bit one's-complement
    // sum as 16-bit words (carries wrap around either way); no overflow below 2^32 words.
    let mut acc = initial;
    let mut words = data.chunks_exact(4);
    for w in &mut words {
        acc += u64::from(u32::from_be_bytes([w[0], w[1], w[2], w[3]]));
    }
    let rest = words.remainder();
    if rest.len() >= 2 {
        acc += u64::from(u16::from_be_bytes([rest[0], rest[1]]));
    }
    if rest.len() % 2 == 1 {
        acc += u64::from(rest[rest.len() - 1]) << 8;
    }
    acc
}

/// Folds a wide one's-complement sum into 16 bits (end-around carry).
#[inline]
pub fn fold(mut acc: u64) -> u16 {
    while acc > 0xffff {
        acc = (acc & 0xffff) + (acc >> 16);
    }
    acc as u16
}

/// The Internet checksum of `data`: the complement of its folded sum.
#[inline]
pub fn checksum(data: &[u8]) -> u16 {
    !fold(sum(data, 0))
}

/// Sum of the IPv4 pseudo-header used by TCP and UDP checksums.
#[inline]
pub fn pseudo_header_v4(src: Ipv4Addr, dst: Ipv4Addr, protocol: u8, l4_len: u16) -> u64 {
    let s = src.octets();
    let d = dst.octets();
    u64::from(u16::from_be_bytes([s[0], s[1]]))
        + u64::from(u16::from_be_bytes([s[2], s[3]]))
        + u64::from(u16::from_be_bytes([d[0], d[1]]))
        + u64::from(u16::from_be_bytes([d[2], d[3]]))
        + u64::from(protocol)
        + u64::from(l4_len)
}

/// The checksum `hc` after one 16-bit word of the covered data changed from `old` to `new`.
#[inline]
pub fn update_u16(hc: u16, old: u16, new: u16) -> u16 {
    !fold(u64::from(!hc) + u64::from(!old) + u64::from(new))
}

/// The checksum `hc` after two adjacent, word-aligned 16-bit words (e.g. an IPv4 address)
/// changed from `old` to `new`.
#[inline]
pub fn update_u32(hc: u16, old: u32, new: u32) -> u16 {
    !fold(
        u64::from(!hc)
            + u64::from(!(old >> 16) as u16)
            + u64::from(!(old as u16))
            + u64::from((new >> 16) as u16)
            + u64::from(new as u16),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn rfc1071_example() {
        // RFC 1071 §3: the words 0001 f203 f4f5 f6f7 sum to ddf2 (folded).
        let data = [0x00, 0x01, 0xf2, 0x03, 0xf4, 0xf5, 0xf6, 0xf7];
        assert_eq!(fold(sum(&data, 0)), 0xddf2);
        assert_eq!(checksum(&data), !0xddf2);
    }

    #[test]
    fn odd_length_pads_with_zero() {
        assert_eq!(sum(&[0x12, 0x34, 0x56], 0), 0x1234 + 0x5600);
    }

    #[test]
    fn real_ipv4_header_verifies_to_zero() {
        // Captured: 192.168.0.1 -> 192.168.0.199, TTL 64, UDP, id 0x1c46.
        let hdr = [
            0x45, 0x00, 0x00, 0x73, 0x00, 0x00, 0x40, 0x00, 0x40, 0x11, 0xb8, 0x61, 0xc0, 0xa8, 0x00, 0x01,
            0xc0, 0xa8, 0x00, 0xc7,
        ];
        assert_eq!(checksum(&hdr), 0);
    }

    fn with_checksum(mut data: Vec<u8>, at: usize) -> Vec<u8> {
        data[at] = 0;
        data[at + 1] = 0;
        let c = checksum(&data);
        data[at..at + 2].copy_from_slice(&c.to_be_bytes());
        data
    }

    proptest! {
        /// Incremental update of any word agrees with recomputing from scratch.
        #[test]
        fn update_u16_matches_recompute(
            data in proptest::collection::vec(any::<u8>(), 4..64),
            word in 0usize..32,
            new in any::<u16>(),
        ) {
            let mut data = data;
            if data.len() % 2 == 1 { data.push(0); }
            let words = data.len() / 2;
            let csum_at = 0;
            let data = with_checksum(data, csum_at);
            let word = 1 + word % (words - 1); // never the checksum field itself
            let old = u16::from_be_bytes([data[2 * word], data[2 * word + 1]]);
            let hc = u16::from_be_bytes([data[0], data[1]]);

            let mut changed = data.clone();
            changed[2 * word..2 * word + 2].copy_from_slice(&new.to_be_bytes());
            let expected = with_checksum(changed, csum_at);
            prop_assert_eq!(update_u16(hc, old, new), u16::from_be_bytes([expected[0], expected[1]]));
        }

        #[test]
        fn update_u32_matches_recompute(
            data in proptest::collection::vec(any::<u8>(), 8..64),
            at in 0usize..16,
            new in any::<u32>(),
        ) {
            let mut data = data;
            if data.len() % 2 == 1 { data.push(0); }
            let data = with_checksum(data, 0);
            let words = data.len() / 2;
            let word = 1 + at % (words - 2);
            let old = u32::from_be_bytes(data[2 * word..2 * word + 4].try_into().unwrap());
            let hc = u16::from_be_bytes([data[0], data[1]]);

            let mut changed = data.clone();
            changed[2 * word..2 * word + 4].copy_from_slice(&new.to_be_bytes());
            let expected = with_checksum(changed, 0);
            prop_assert_eq!(update_u32(hc, old, new), u16::from_be_bytes([expected[0], expected[1]]));
        }

        /// The 32-bit word loop and a plain 16-bit word loop agree.
        #[test]
        fn sum_is_independent_of_chunking(data in proptest::collection::vec(any::<u8>(), 0..200)) {
            let mut slow = 0u64;
            for pair in data.chunks(2) {
                let hi = u64::from(pair[0]) << 8;
                let lo = pair.get(1).copied().map_or(0, u64::from);
                slow += hi | lo;
            }
            prop_assert_eq!(fold(sum(&data, 0)), fold(slow));
        }
    }
}
