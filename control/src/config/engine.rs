//! `[engine]` extras: `[engine.dpdk]` and `[numa.node.N]` tuning.

use super::*;

/// Checks `[engine.dpdk]` and builds the engine's settings from it.
pub(super) fn check_dpdk(
    d: &DpdkSection,
    rep: &mut Reporter<'_>,
) -> ferrogate_engine::DpdkSettings {
    let mut s = ferrogate_engine::DpdkSettings {
        hugepages: d.hugepages,
        huge_dir: d.huge_dir.clone(),
        ..Default::default()
    };
    for v in &d.vdevs {
        let t = v.get_ref();
        if !t.starts_with("net_") || t.chars().any(char::is_whitespace) {
            rep.at(
                v.span(),
                "engine.dpdk.vdevs",
                format!(
                    "{t:?}: expected a DPDK net vdev like \"net_af_packet0,iface=eth0\" (no spaces)"
                ),
            );
        }
        s.vdevs.push(t.clone());
    }
    if let Some(p) = &d.port {
        if p.get_ref().is_empty() {
            rep.at(p.span(), "engine.dpdk.port", "must not be empty");
        }
        s.port = Some(p.get_ref().clone());
    }
    if let Some(m) = &d.memory_mb {
        let v = *m.get_ref();
        if (!d.hugepages && v < 64) || v > 1024 * 1024 {
            rep.at(
                m.span(),
                "engine.dpdk.memory_mb",
                "must be 64..=1048576 without hugepages (0 = EAL default with hugepages)",
            );
        }
        s.memory_mb = v;
    }
    if let Some(m) = &d.mbufs {
        let v = *m.get_ref();
        if !(1023..=16 * 1024 * 1024).contains(&v) {
            rep.at(m.span(), "engine.dpdk.mbufs", "must be 1023..=16777216");
        }
        s.mbufs = v;
    }
    if let Some(m) = &d.mbuf_cache {
        let v = *m.get_ref();
        if v > 512 || (v as u64) * 3 / 2 > s.mbufs as u64 {
            rep.at(
                m.span(),
                "engine.dpdk.mbuf_cache",
                "must be <= 512 and <= mbufs / 1.5",
            );
        }
        s.mbuf_cache = v;
    }
    for (field, v, dst) in [
        ("engine.dpdk.rx_desc", &d.rx_desc, &mut s.rx_desc),
        ("engine.dpdk.tx_desc", &d.tx_desc, &mut s.tx_desc),
    ] {
        if let Some(v) = v {
            if !(64..=16384).contains(v.get_ref()) {
                rep.at(v.span(), field, "must be 64..=16384");
            }
            *dst = *v.get_ref();
        }
    }
    if let Some(p) = &d.file_prefix {
        let t = p.get_ref();
        if t.is_empty()
            || !t
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
        {
            rep.at(
                p.span(),
                "engine.dpdk.file_prefix",
                "must be letters, digits, '_' or '-'",
            );
        }
        s.file_prefix = Some(t.clone());
    }
    for a in &d.eal_args {
        if !a.get_ref().starts_with('-') {
            rep.at(
                a.span(),
                "engine.dpdk.eal_args",
                format!(
                    "{:?}: each entry is one EAL option starting with '-' (use --opt=value)",
                    a.get_ref()
                ),
            );
        }
        s.eal_args.push(a.get_ref().clone());
    }
    if let Some(x) = &d.exception_iface {
        let t = x.get_ref();
        // `all` and `default` name every interface's sysctls.
        let valid = !t.is_empty()
            && t.len() < 16
            && !matches!(t.as_str(), "." | ".." | "all" | "default")
            && t.chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
        // The vdev's own kernel interface would send every frame back in.
        let ported = d
            .vdevs
            .iter()
            .any(|v| v.get_ref().split(',').any(|kv| kv == format!("iface={t}")));
        if !valid {
            rep.at(
                x.span(),
                "engine.dpdk.exception_iface",
                format!("{t:?}: an interface name of 1 to 15 letters, digits, '-', '_' or '.'"),
            );
        } else if ported {
            rep.at(
                x.span(),
                "engine.dpdk.exception_iface",
                format!("{t:?} is the port's own interface (a vdev's iface=): name a TAP of its own, e.g. \"fgx0\""),
            );
        }
        s.exception_iface = Some(t.clone());
    }
    s
}

pub(super) fn check_numa(
    cfg: &FileConfig,
    rep: &mut Reporter<'_>,
) -> std::collections::BTreeMap<usize, ferrogate_engine::numa::NodeTuning> {
    let mut out = std::collections::BTreeMap::new();
    for (key, n) in &cfg.numa.node {
        let field = format!("numa.node.{key}");
        let Ok(id) = key.parse::<usize>() else {
            rep.at(0..0, field, "node ids are numbers: [numa.node.0]");
            continue;
        };
        let mut t = ferrogate_engine::numa::NodeTuning::default();
        if let Some(c) = &n.cores {
            match ferrogate_engine::numa::parse_cpu_list(c.get_ref()) {
                Ok(list) if !list.is_empty() => t.cores = Some(list),
                _ => rep.at(
                    c.span(),
                    format!("{field}.cores"),
                    format!("{:?} is not a CPU list like \"2-5,8\"", c.get_ref()),
                ),
            }
        }
        if let Some(v) = &n.umem_frames {
            if !(64..=1 << 20).contains(v.get_ref()) || !v.get_ref().is_power_of_two() {
                rep.at(
                    v.span(),
                    format!("{field}.umem_frames"),
                    "a power of two in 64..=1048576",
                );
            }
            t.umem_frames = Some(*v.get_ref());
        }
        if let Some(v) = &n.ring_size {
            if !(64..=1 << 16).contains(v.get_ref()) || !v.get_ref().is_power_of_two() {
                rep.at(
                    v.span(),
                    format!("{field}.ring_size"),
                    "a power of two in 64..=65536",
                );
            }
            t.ring_size = Some(*v.get_ref());
        }
        if let Some(v) = &n.batch_size {
            if !(1..=1024).contains(v.get_ref()) {
                rep.at(v.span(), format!("{field}.batch_size"), "must be 1..=1024");
            }
            t.batch_size = Some(*v.get_ref());
        }
        t.hugepages = n.hugepages;
        if let Some(p) = &n.polling {
            if !matches!(p.get_ref().as_str(), "busy" | "adaptive" | "interrupt") {
                rep.at(
                    p.span(),
                    format!("{field}.polling"),
                    "busy, adaptive or interrupt",
                );
            }
            t.polling = Some(p.get_ref().clone());
        }
        out.insert(id, t);
    }
    out
}
