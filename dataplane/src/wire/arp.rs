//! ARP (RFC 826) for IPv4 over Ethernet: a typed view, and the reply the switch's ARP
//! proxy sends.

use std::net::Ipv4Addr;

use super::bytes::{get_u16, set_u16};
use super::meta::ArpMeta;
use super::{MacAddr, ethernet};

pub const ARP_OP_REQUEST: u16 = 1;
pub const ARP_OP_REPLY: u16 = 2;

/// Field offsets from the start of the ARP packet.
pub mod field {
    use std::ops::Range;
    pub const HARDWARE_TYPE: Range<usize> = 0..2;
    pub const PROTOCOL_TYPE: Range<usize> = 2..4;
    pub const HARDWARE_LEN: usize = 4;
    pub const PROTOCOL_LEN: usize = 5;
    pub const OPERATION: Range<usize> = 6..8;
    pub const SENDER_MAC: Range<usize> = 8..14;
    pub const SENDER_IP: Range<usize> = 14..18;
    pub const TARGET_MAC: Range<usize> = 18..24;
    pub const TARGET_IP: Range<usize> = 24..28;
}

/// Length of an Ethernet/IPv4 ARP packet (without Ethernet header or padding).
pub const ARP_LEN: usize = 28;

/// A view of an Ethernet/IPv4 ARP packet in a buffer at least [`ARP_LEN`] long.
#[derive(Debug)]
pub struct Packet<T: AsRef<[u8]>>(T);

impl<T: AsRef<[u8]>> Packet<T> {
    /// `None` when the buffer is shorter than an Ethernet/IPv4 ARP packet.
    #[inline]
    pub fn new_checked(buffer: T) -> Option<Packet<T>> {
        (buffer.as_ref().len() >= ARP_LEN).then_some(Packet(buffer))
    }

    /// Hardware type Ethernet (1), protocol IPv4, 6-byte MACs, 4-byte addresses.
    #[inline]
    pub fn is_ethernet_ipv4(&self) -> bool {
        let b = self.0.as_ref();
        get_u16(b, field::HARDWARE_TYPE) == 1
            && get_u16(b, field::PROTOCOL_TYPE) == ethernet::ETHERTYPE_IPV4
            && b[field::HARDWARE_LEN] == 6
            && b[field::PROTOCOL_LEN] == 4
    }

    #[inline]
    pub fn operation(&self) -> u16 {
        get_u16(self.0.as_ref(), field::OPERATION)
    }

    #[inline]
    pub fn sender_mac(&self) -> MacAddr {
        MacAddr::from_bytes(&self.0.as_ref()[field::SENDER_MAC])
    }

    #[inline]
    pub fn sender_ip(&self) -> Ipv4Addr {
        ipv4_at(self.0.as_ref(), field::SENDER_IP.start)
    }

    #[inline]
    pub fn target_mac(&self) -> MacAddr {
        MacAddr::from_bytes(&self.0.as_ref()[field::TARGET_MAC])
    }

    #[inline]
    pub fn target_ip(&self) -> Ipv4Addr {
        ipv4_at(self.0.as_ref(), field::TARGET_IP.start)
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> Packet<T> {
    #[inline]
    pub fn set_operation(&mut self, op: u16) {
        set_u16(self.0.as_mut(), field::OPERATION, op);
    }

    #[inline]
    pub fn set_sender(&mut self, mac: MacAddr, ip: Ipv4Addr) {
        let b = self.0.as_mut();
        b[field::SENDER_MAC].copy_from_slice(&mac.0);
        b[field::SENDER_IP].copy_from_slice(&ip.octets());
    }

    #[inline]
    pub fn set_target(&mut self, mac: MacAddr, ip: Ipv4Addr) {
        let b = self.0.as_mut();
        b[field::TARGET_MAC].copy_from_slice(&mac.0);
        b[field::TARGET_IP].copy_from_slice(&ip.octets());
    }
}

#[inline]
fn ipv4_at(b: &[u8], at: usize) -> Ipv4Addr {
    Ipv4Addr::new(b[at], b[at + 1], b[at + 2], b[at + 3])
}

/// Turns the ARP request `req` (at `l3_offset` in `frame`) into the reply
/// "`req.target_ip` is at `answer`", addressed back to the requester.
///
/// The frame keeps its length and any VLAN tag; the Ethernet source becomes `answer`, as
/// if the owner of the address had replied itself.
pub fn reply_in_place(frame: &mut [u8], l3_offset: usize, req: &ArpMeta, answer: MacAddr) {
    ethernet::set_addresses(frame, req.sender_mac, answer);
    let mut arp = Packet(&mut frame[l3_offset..l3_offset + ARP_LEN]);
    arp.set_operation(ARP_OP_REPLY);
    arp.set_sender(answer, req.target_ip);
    arp.set_target(req.sender_mac, req.sender_ip);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{arp_reply, arp_request, mac};
    use crate::wire::{Net, parse};
    use std::net::Ipv4Addr;

    #[test]
    fn request_becomes_the_reply_the_owner_would_send() {
        let asker = mac(1);
        let owner = mac(2);
        let (asker_ip, owner_ip) = (Ipv4Addr::new(10, 244, 1, 2), Ipv4Addr::new(10, 244, 1, 3));
        let mut frame = arp_request(asker, asker_ip, owner_ip);
        let Net::Arp(req) = parse(&frame).unwrap().net else { panic!() };
        reply_in_place(&mut frame, 14, &req, owner);
        assert_eq!(frame, arp_reply(owner, owner_ip, asker, asker_ip));
        let reply = Packet::new_checked(&frame[14..]).unwrap();
        assert!(reply.is_ethernet_ipv4());
        assert_eq!((reply.operation(), reply.sender_mac(), reply.sender_ip()), (2, owner, owner_ip));
        assert_eq!((reply.target_mac(), reply.target_ip()), (asker, asker_ip));
        assert!(Packet::new_checked(&frame[14..14 + 27]).is_none());
    }
}
