//! The ARP proxy: the switch answers ARP requests itself, so they never reach pods.
//!
//! Requests for the gateway IP are answered with the gateway MAC; requests for any
//! address registered in the tables with its owner's MAC. The reply is the request
//! rewritten in place and sent back out of the ingress port: no buffer is allocated.
//!
//! Gratuitous ARP and probes of one's own address are absorbed (the binding is already
//! known, and other pods learn addresses only from the switch). A request for an address
//! nobody registered is dropped, or flooded if the segment is configured so.

use std::ops::ControlFlow;

use crate::drop_reason::DropReason;
use crate::stage::{Packet, StageContext, Step, drop, forward};
use crate::tables::UnknownArp;
use crate::wire::parse::{ARP_OP_REPLY, ARP_OP_REQUEST};
use crate::wire::{Net, arp};

// Always inlined: see `pipeline::stages`.
#[inline(always)]
pub(crate) fn answer<'a>(ctx: &mut StageContext<'a>, pkt: &mut Packet<'a, '_>) -> Step {
    let Net::Arp(req) = &pkt.meta.net else {
        return ControlFlow::Continue(());
    };
    let (tables, port) = (ctx.tables, pkt.port);
    let absorb = drop(DropReason::ArpForSelf);
    match req.op {
        ARP_OP_REQUEST => {
            if req.sender_ip == req.target_ip {
                return absorb; // gratuitous announcement
            }
            match tables.arp_answer(port.segment, req.target_ip) {
                // Someone else's address (a probe for it included: RFC 5227 expects the
                // owner's reply, which signals the conflict).
                Some(a) if a.port != Some(port.id) => {
                    arp::reply_in_place(pkt.frame.data_mut(), usize::from(pkt.meta.l3_offset), req, a.mac);
                    ctx.events().arp_replies.inc();
                    forward(port.id)
                }
                // The sender's own address: a probe before configuring it.
                Some(_) => absorb,
                None => match tables.segment(port.segment).map(|s| s.config.unknown_arp) {
                    Some(UnknownArp::Flood) => ControlFlow::Continue(()),
                    _ => drop(DropReason::ArpUnknownTarget),
                },
            }
        }
        ARP_OP_REPLY if req.sender_ip == req.target_ip => absorb,
        ARP_OP_REPLY => ControlFlow::Continue(()),
        _ => drop(DropReason::UnsupportedArp),
    }
}
