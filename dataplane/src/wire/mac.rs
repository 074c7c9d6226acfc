//! Ethernet MAC addresses.

use std::fmt;
use std::str::FromStr;

/// A 48-bit IEEE 802 MAC address, in transmission byte order.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub struct MacAddr(pub [u8; 6]);

impl MacAddr {
    pub const BROADCAST: MacAddr = MacAddr([0xff; 6]);
    pub const ZERO: MacAddr = MacAddr([0; 6]);

    /// Reads the address from the first six bytes of `bytes`.
    ///
    /// Callers pass slices whose length the parser already checked.
    #[inline]
    pub fn from_bytes(bytes: &[u8]) -> MacAddr {
        let mut mac = [0u8; 6];
        mac.copy_from_slice(&bytes[..6]);
        MacAddr(mac)
    }

    /// Group bit set: multicast, including broadcast.
    #[inline]
    pub fn is_multicast(self) -> bool {
        self.0[0] & 0x01 != 0
    }

    #[inline]
    pub fn is_broadcast(self) -> bool {
        self == Self::BROADCAST
    }

    #[inline]
    pub fn is_zero(self) -> bool {
        self == Self::ZERO
    }

    /// The address as the low 48 bits of a `u64`, for compact table keys.
    #[inline]
    pub fn to_u64(self) -> u64 {
        let b = self.0;
        u64::from_be_bytes([0, 0, b[0], b[1], b[2], b[3], b[4], b[5]])
    }

    /// Inverse of [`MacAddr::to_u64`]; the top 16 bits are ignored.
    #[inline]
    pub fn from_u64(v: u64) -> MacAddr {
        let b = v.to_be_bytes();
        MacAddr([b[2], b[3], b[4], b[5], b[6], b[7]])
    }

    /// The modified EUI-64 IPv6 link-local address a host derives from this MAC (RFC 4291 §2.5.1).
    pub fn ipv6_link_local(self) -> std::net::Ipv6Addr {
        let m = self.0;
        std::net::Ipv6Addr::from([
            0xfe,
            0x80,
            0,
            0,
            0,
            0,
            0,
            0,
            m[0] ^ 0x02,
            m[1],
            m[2],
            0xff,
            0xfe,
            m[3],
            m[4],
            m[5],
        ])
    }
}

impl fmt::Display for MacAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let b = self.0;
        write!(f, "{:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}", b[0], b[1], b[2], b[3], b[4], b[5])
    }
}

impl fmt::Debug for MacAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

/// The text was not six colon-separated hex octets.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid MAC address {0:?}: expected six hex octets like 02:00:00:00:00:01")]
pub struct ParseMacError(pub String);

impl FromStr for MacAddr {
    type Err = ParseMacError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let err = || ParseMacError(s.to_string());
        let mut mac = [0u8; 6];
        let mut parts = s.split([':', '-']);
        for byte in &mut mac {
            let part = parts.next().ok_or_else(err)?;
            if part.len() != 2 {
                return Err(err());
            }
            *byte = u8::from_str_radix(part, 16).map_err(|_| err())?;
        }
        if parts.next().is_some() {
            return Err(err());
        }
        Ok(MacAddr(mac))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_prints() {
        let mac: MacAddr = "02:0a:FF:00:01:9c".parse().unwrap();
        assert_eq!(mac.0, [0x02, 0x0a, 0xff, 0x00, 0x01, 0x9c]);
        assert_eq!(mac.to_string(), "02:0a:ff:00:01:9c");
        assert_eq!("02-0a-ff-00-01-9c".parse::<MacAddr>().unwrap(), mac);
    }

    #[test]
    fn rejects_malformed_text() {
        for bad in ["", "02:00:00:00:00", "02:00:00:00:00:00:00", "2:00:00:00:00:00", "zz:00:00:00:00:00"] {
            assert!(bad.parse::<MacAddr>().is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn u64_round_trip_and_flags() {
        let mac = MacAddr([0x01, 0x00, 0x5e, 0x00, 0x00, 0x01]);
        assert_eq!(MacAddr::from_u64(mac.to_u64()), mac);
        assert!(mac.is_multicast() && !mac.is_broadcast());
        assert!(MacAddr::BROADCAST.is_multicast() && MacAddr::BROADCAST.is_broadcast());
        assert!(!MacAddr([0x02, 0, 0, 0, 0, 1]).is_multicast());
    }

    #[test]
    fn eui64_link_local() {
        let mac: MacAddr = "52:54:00:12:34:56".parse().unwrap();
        assert_eq!(mac.ipv6_link_local(), "fe80::5054:ff:fe12:3456".parse::<std::net::Ipv6Addr>().unwrap());
    }
}
