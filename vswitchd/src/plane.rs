//! What every controller changes: the desired tables, and the data plane they are
//! published to.
//!
//! The ports, the Services and the remote nodes each own a part of the tables; each
//! change edits [`Plane::tables`] and publishes the whole as a new snapshot. The data
//! path's ordering rule holds for every caller: queues are handed to workers before the
//! tables list their port, and the tables drop a port before its queues are taken back.

use vswitch_dataplane::datapath::Datapath;
use vswitch_dataplane::ids::SegmentId;
use vswitch_dataplane::tables::{
    Gateway, SegmentConfig, StormControl, TablesBuilder, TablesError, UnknownArp, UnknownUnicast,
};

use crate::config::{Config, UnknownArpPolicy, UnknownUnicastPolicy};

/// The segment of this node's pods, its host port and its gateway.
pub(crate) const POD_SEGMENT: SegmentId = SegmentId(0);

pub(crate) struct Plane {
    pub datapath: Datapath,
    pub tables: TablesBuilder,
}

impl Plane {
    /// Takes over `datapath` with tables holding the pods' segment (and no ports yet).
    pub(crate) fn new(config: &Config, datapath: Datapath) -> Result<Plane, TablesError> {
        let mut tables = TablesBuilder::default();
        tables.add_segment(SegmentConfig {
            id: POD_SEGMENT,
            gateway: Some(Gateway { ip: config.gateway_ip, mac: config.gateway_mac }),
            unknown_arp: match config.unknown_arp {
                UnknownArpPolicy::Drop => UnknownArp::Drop,
                UnknownArpPolicy::Flood => UnknownArp::Flood,
            },
            unknown_unicast: match config.unknown_unicast {
                UnknownUnicastPolicy::Drop => UnknownUnicast::Drop,
                UnknownUnicastPolicy::Flood => UnknownUnicast::Flood,
            },
            storm_control: (config.storm_control_pps > 0).then_some(StormControl {
                rate_pps: config.storm_control_pps,
                burst: config.storm_control_burst,
            }),
        })?;
        Ok(Plane { datapath, tables })
    }

    /// Builds the desired tables and hands them to the workers.
    pub(crate) fn publish(&self) -> Result<(), TablesError> {
        self.datapath.publish(self.tables.build()?);
        Ok(())
    }

    /// Publishing after a change that cannot make the port tables invalid (Services,
    /// nodes): a failure is a bug worth a log line, not an error for the caller.
    pub(crate) fn publish_or_log(&self) {
        if let Err(e) = self.publish() {
            tracing::error!(error = %e, "publishing tables");
        }
    }
}
