//! ARP (RFC 826) for IPv4 over Ethernet: the reply the switch's ARP proxy sends.

use super::parse::ARP_OP_REPLY;
use super::{ArpMeta, MacAddr, ethernet};

/// Length of an Ethernet/IPv4 ARP packet (without Ethernet header or padding).
pub const ARP_LEN: usize = 28;

/// Turns the ARP request `req` (at `l3_offset` in `frame`) into the reply
/// "`req.target_ip` is at `answer`", addressed back to the requester.
///
/// The frame keeps its length and any VLAN tag; the Ethernet source becomes `answer`, as
/// if the owner of the address had replied itself.
pub fn reply_in_place(frame: &mut [u8], l3_offset: usize, req: &ArpMeta, answer: MacAddr) {
    ethernet::set_destination(frame, req.sender_mac);
    ethernet::set_source(frame, answer);
    let arp = &mut frame[l3_offset..l3_offset + ARP_LEN];
    arp[6..8].copy_from_slice(&ARP_OP_REPLY.to_be_bytes());
    arp[8..14].copy_from_slice(&answer.0);
    arp[14..18].copy_from_slice(&req.target_ip.octets());
    arp[18..24].copy_from_slice(&req.sender_mac.0);
    arp[24..28].copy_from_slice(&req.sender_ip.octets());
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
    }
}
