//! Ingress checks: what a port may send.
//!
//! Every port is an untagged access port with unicast sources. A port with port
//! security (every pod port) may further send only from its bound MAC and IPs; the same
//! holds for the sender fields of its ARP packets, so a pod cannot poison anyone's ARP
//! cache or impersonate another pod or the gateway.
//!
//! IPv6: besides its bound addresses, a pod may use the EUI-64 link-local address of its
//! MAC (what Linux configures by default) and the unspecified address for ICMPv6
//! (duplicate address detection, MLD), as OVN's port security allows.

use std::ops::ControlFlow;

use crate::drop_reason::DropReason;
use crate::stage::{Packet, StageContext, Step, drop};
use crate::tables::PortEntry;
use crate::wire::{FrameMeta, L4, Net};

/// The stage: frames their port may not send are dropped.
// Always inlined: see `pipeline::stages`.
#[inline(always)]
pub(crate) fn check<'a>(_ctx: &mut StageContext<'a>, pkt: &mut Packet<'a, '_>) -> Step {
    allowed(pkt.port, pkt.meta)
}

/// Whether `port` may send the frame `meta` describes.
// Always inlined: see `pipeline::stages`.
#[inline(always)]
fn allowed(port: &PortEntry, meta: &FrameMeta) -> Step {
    let deny = drop;
    if meta.src_mac.is_multicast() {
        return deny(DropReason::MulticastSourceMac);
    }
    if meta.vlan_tci.is_some() {
        return deny(DropReason::VlanTagged);
    }
    if !port.port_security {
        return ControlFlow::Continue(());
    }
    let Some(bound_mac) = port.mac else {
        return deny(DropReason::SpoofedSourceMac);
    };
    if meta.src_mac != bound_mac {
        return deny(DropReason::SpoofedSourceMac);
    }
    match &meta.net {
        Net::Arp(arp) => {
            let ip_ok = arp.sender_ip.is_unspecified() || port.ipv4.contains(&arp.sender_ip);
            if arp.sender_mac != bound_mac || !ip_ok {
                return deny(DropReason::SpoofedArpSender);
            }
        }
        Net::Ipv4(ip) => {
            if !port.ipv4.contains(&ip.src) {
                return deny(DropReason::SpoofedSourceIp);
            }
        }
        Net::Ipv6(ip) => {
            let ok = port.ipv6.contains(&ip.src)
                || ip.src == bound_mac.ipv6_link_local()
                || (ip.src.is_unspecified() && matches!(ip.l4, L4::Icmpv6 { .. }));
            if !ok {
                return deny(DropReason::SpoofedSourceIp);
            }
        }
        Net::Unparsed => return deny(DropReason::UnknownEthertype),
    }
    ControlFlow::Continue(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tables::tests::pod;
    use crate::testing::{FrameSpec, arp_request, mac};
    use crate::wire::{MacAddr, parse};
    use std::net::{Ipv4Addr, Ipv6Addr};

    use crate::stage::Verdict;

    fn verdict(port: &PortEntry, frame: &[u8]) -> ControlFlow<Verdict> {
        allowed(port, &parse(frame).unwrap())
    }

    const OK: ControlFlow<Verdict> = ControlFlow::Continue(());
    fn dropped(r: DropReason) -> ControlFlow<Verdict> {
        ControlFlow::Break(Verdict::Drop(r))
    }

    #[test]
    fn pod_may_send_only_as_itself() {
        let p = pod(1, [10, 244, 1, 2]);
        let me = Ipv4Addr::new(10, 244, 1, 2);
        let other = Ipv4Addr::new(10, 244, 1, 3);
        let udp = |smac, sip| FrameSpec::udp(smac, mac(2), sip, other, 1, 2).build();
        assert_eq!(verdict(&p, &udp(mac(1), me)), OK);
        assert_eq!(verdict(&p, &udp(mac(7), me)), dropped(DropReason::SpoofedSourceMac));
        assert_eq!(verdict(&p, &udp(mac(1), other)), dropped(DropReason::SpoofedSourceIp));
        assert_eq!(verdict(&p, &arp_request(mac(1), me, other)), OK);
        assert_eq!(verdict(&p, &arp_request(mac(1), Ipv4Addr::UNSPECIFIED, other)), OK, "RFC 5227 probe");
        assert_eq!(verdict(&p, &arp_request(mac(1), other, me)), dropped(DropReason::SpoofedArpSender));
        // Ethernet source right, ARP sender hardware address forged.
        let mut forged = arp_request(mac(1), me, other);
        forged[22..28].copy_from_slice(&mac(9).0);
        assert_eq!(verdict(&p, &forged), dropped(DropReason::SpoofedArpSender));
    }

    #[test]
    fn ipv6_link_local_and_dad() {
        let mut p = pod(1, [10, 244, 1, 2]);
        p.ipv6 = vec!["fd00::2".parse().unwrap()];
        let dst: Ipv6Addr = "ff02::1".parse().unwrap();
        let udp6 = |src: Ipv6Addr| {
            FrameSpec::udp6(mac(1), MacAddr([0x33, 0x33, 0, 0, 0, 1]), src, dst, 1, 2).build()
        };
        assert_eq!(verdict(&p, &udp6("fd00::2".parse().unwrap())), OK);
        assert_eq!(verdict(&p, &udp6(mac(1).ipv6_link_local())), OK);
        assert_eq!(verdict(&p, &udp6(mac(5).ipv6_link_local())), dropped(DropReason::SpoofedSourceIp));
        assert_eq!(verdict(&p, &udp6("fd00::3".parse().unwrap())), dropped(DropReason::SpoofedSourceIp));
        assert_eq!(
            verdict(&p, &udp6(Ipv6Addr::UNSPECIFIED)),
            dropped(DropReason::SpoofedSourceIp),
            "only ICMPv6 may use ::"
        );
    }

    #[test]
    fn every_port_rejects_tags_and_group_sources() {
        let mut uplink = pod(1, [10, 244, 1, 2]);
        uplink.port_security = false;
        uplink.mac = None;
        let any = Ipv4Addr::new(192, 0, 2, 1);
        assert_eq!(
            verdict(&uplink, &FrameSpec::udp(mac(77), mac(2), any, any, 1, 2).build()),
            OK,
            "no binding"
        );
        let tagged = FrameSpec::udp(mac(77), mac(2), any, any, 1, 2).vlan(10).build();
        assert_eq!(verdict(&uplink, &tagged), dropped(DropReason::VlanTagged));
        let group = FrameSpec::udp(MacAddr([1, 0, 0x5e, 0, 0, 1]), mac(2), any, any, 1, 2).build();
        assert_eq!(verdict(&uplink, &group), dropped(DropReason::MulticastSourceMac));
    }
}
