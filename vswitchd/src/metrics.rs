//! Metrics in the Prometheus text exposition format (version 0.0.4), rendered from the
//! same counters as the API's stats on every scrape.

use std::fmt::Write;

use vswitch_api::Stats;

/// Escapes a label value: backslash, double quote and newline.
fn label(v: &str) -> String {
    v.replace('\\', r"\\").replace('"', "\\\"").replace('\n', r"\n")
}

fn header(out: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(out, "# HELP {name} {help}");
    let _ = writeln!(out, "# TYPE {name} {kind}");
}

/// The exposition text for `stats`, the number of attached pod ports and, in cluster
/// mode, the watchers.
/// Captures, flow logs and live traces open now: while any is, every received batch
/// takes the data path's watched path, so one left open is worth seeing.
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct ObserversOpen {
    pub captures: usize,
    pub flow_logs: usize,
    pub live_traces: usize,
}

pub(crate) fn render_with(
    stats: &Stats,
    pod_ports: usize,
    observers: ObserversOpen,
    cluster: Option<&vswitch_api::ClusterStatus>,
) -> String {
    let mut out = String::with_capacity(4096);
    type Field = fn(&vswitch_api::PortStats) -> u64;
    let per_port: [(&str, &str, Field); 4] = [
        ("vswitch_port_rx_packets_total", "Frames received on a port.", |p| p.rx_packets),
        ("vswitch_port_rx_bytes_total", "Bytes received on a port.", |p| p.rx_bytes),
        ("vswitch_port_tx_packets_total", "Frames transmitted on a port.", |p| p.tx_packets),
        ("vswitch_port_tx_bytes_total", "Bytes transmitted on a port.", |p| p.tx_bytes),
    ];
    for (name, help, value) in per_port {
        header(&mut out, name, "counter", help);
        for p in &stats.ports {
            let _ = writeln!(out, "{name}{{port=\"{}\",name=\"{}\"}} {}", p.id, label(&p.name), value(p));
        }
    }
    header(
        &mut out,
        "vswitch_port_drops_total",
        "counter",
        "Frames that entered on a port and were dropped, by reason.",
    );
    for p in &stats.ports {
        for (reason, n) in &p.drops {
            let _ = writeln!(
                out,
                "vswitch_port_drops_total{{port=\"{}\",name=\"{}\",reason=\"{reason}\"}} {n}",
                p.id,
                label(&p.name)
            );
        }
    }
    header(&mut out, "vswitch_drops_total", "counter", "Frames dropped, by reason, over all ports.");
    for (reason, n) in &stats.drops {
        let _ = writeln!(out, "vswitch_drops_total{{reason=\"{reason}\"}} {n}");
    }
    header(
        &mut out,
        "vswitch_events_total",
        "counter",
        "Switching events that are not drops (learning, flooding, ARP replies, ...).",
    );
    for (event, n) in &stats.events {
        let _ = writeln!(out, "vswitch_events_total{{event=\"{event}\"}} {n}");
    }
    header(&mut out, "vswitch_fdb_entries", "gauge", "Learned MAC addresses in the forwarding database.");
    let _ = writeln!(out, "vswitch_fdb_entries {}", stats.fdb_entries);
    header(&mut out, "vswitch_conntrack_entries", "gauge", "Flows tracked for Service NAT.");
    let _ = writeln!(out, "vswitch_conntrack_entries {}", stats.conntrack_entries);
    header(
        &mut out,
        "vswitch_conntrack_max_entries",
        "gauge",
        "Capacity of the connection-tracking table; new Service flows are dropped beyond it.",
    );
    let _ = writeln!(out, "vswitch_conntrack_max_entries {}", stats.conntrack_max_entries);
    header(
        &mut out,
        "vswitch_affinity_entries",
        "gauge",
        "Clients remembered for ClientIP session affinity.",
    );
    let _ = writeln!(out, "vswitch_affinity_entries {}", stats.affinity_entries);
    header(&mut out, "vswitch_pod_ports", "gauge", "Attached pod ports.");
    let _ = writeln!(out, "vswitch_pod_ports {pod_ports}");
    header(
        &mut out,
        "vswitch_observers_open",
        "gauge",
        "Captures, flow logs and live traces open now (each puts the data path on its watched path).",
    );
    for (kind, n) in [
        ("capture", observers.captures),
        ("flow_log", observers.flow_logs),
        ("live_trace", observers.live_traces),
    ] {
        let _ = writeln!(out, "vswitch_observers_open{{kind=\"{kind}\"}} {n}");
    }
    type PerWorker = fn(&vswitch_api::WorkerStats) -> String;
    let per_worker: [(&str, &str, &str, PerWorker); 3] = [
        (
            "vswitch_worker_busy_ratio",
            "gauge",
            "Share of a worker's time spent in poll rounds that found work.",
            |w| format!("{:.6}", w.busy_ratio),
        ),
        ("vswitch_worker_polls_total", "counter", "Poll rounds of a worker.", |w| w.polls.to_string()),
        (
            "vswitch_worker_sleeps_total",
            "counter",
            "Times a worker slept in epoll, its idle polling over.",
            |w| w.sleeps.to_string(),
        ),
    ];
    for (name, kind, help, value) in per_worker {
        header(&mut out, name, kind, help);
        for w in &stats.workers {
            let _ = writeln!(out, "{name}{{worker=\"{}\"}} {}", w.id, value(w));
        }
    }
    if let Some(c) = cluster {
        type W = fn(&vswitch_api::WatcherStatus) -> u64;
        let per_watcher: [(&str, &str, &str, W); 4] = [
            ("vswitch_cluster_watch_synced", "gauge", "1 once the watcher has listed its resource.", |w| {
                u64::from(w.synced)
            }),
            ("vswitch_cluster_watch_objects", "gauge", "Objects in the watcher's store.", |w| {
                w.objects as u64
            }),
            ("vswitch_cluster_watch_events_total", "counter", "Watch events received.", |w| w.events),
            (
                "vswitch_cluster_watch_errors_total",
                "counter",
                "Watch failures (retried with backoff; tables unchanged).",
                |w| w.errors,
            ),
        ];
        for (name, kind, help, value) in per_watcher {
            header(&mut out, name, kind, help);
            for w in &c.watchers {
                let _ = writeln!(out, "{name}{{resource=\"{}\"}} {}", label(&w.resource), value(w));
            }
        }
        header(
            &mut out,
            "vswitch_cluster_snapshots_applied_total",
            "counter",
            "Cluster snapshots applied to the tables.",
        );
        let _ = writeln!(out, "vswitch_cluster_snapshots_applied_total {}", c.applied);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;
    use vswitch_api::PortStats;

    #[test]
    fn renders_valid_exposition_lines() {
        let stats = Stats {
            ports: vec![PortStats {
                id: 3,
                name: "ab\"c/eth0".into(),
                rx_packets: 5,
                drops: BTreeMap::from([("spoofed_source_ip".to_string(), 2)]),
                ..Default::default()
            }],
            drops: BTreeMap::from([("spoofed_source_ip".to_string(), 2), ("tx_failed".to_string(), 0)]),
            fdb_entries: 7,
            ..Default::default()
        };
        let cluster = vswitch_api::ClusterStatus {
            node_name: "n".into(),
            watchers: vec![vswitch_api::WatcherStatus {
                resource: "services".into(),
                synced: true,
                errors: 2,
                ..Default::default()
            }],
            applied: 3,
            skipped: vec![],
        };
        let open = ObserversOpen { captures: 2, flow_logs: 0, live_traces: 1 };
        let text = render_with(&stats, 1, open, Some(&cluster));
        assert!(text.contains("vswitch_observers_open{kind=\"capture\"} 2\n"), "{text}");
        assert!(text.contains("vswitch_observers_open{kind=\"flow_log\"} 0\n"));
        assert!(text.contains("vswitch_observers_open{kind=\"live_trace\"} 1\n"));
        assert!(text.contains("vswitch_cluster_watch_errors_total{resource=\"services\"} 2"));
        assert!(
            text.contains("vswitch_port_rx_packets_total{port=\"3\",name=\"ab\\\"c/eth0\"} 5\n"),
            "{text}"
        );
        assert!(text.contains(
            "vswitch_port_drops_total{port=\"3\",name=\"ab\\\"c/eth0\",reason=\"spoofed_source_ip\"} 2\n"
        ));
        assert!(text.contains("vswitch_drops_total{reason=\"tx_failed\"} 0\n"), "zero reasons are listed");
        assert!(text.contains("vswitch_fdb_entries 7\n"));
        // Every line is a comment or `name{labels} value`, and every metric is typed.
        for line in text.lines().filter(|l| !l.starts_with('#')) {
            let (name, value) = line.rsplit_once(' ').unwrap();
            assert!(value.parse::<f64>().is_ok(), "{line}");
            let metric = name.split('{').next().unwrap();
            assert!(text.contains(&format!("# TYPE {metric} ")), "{metric} untyped");
        }
    }
}
