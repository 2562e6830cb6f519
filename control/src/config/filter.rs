//! `[filter]`: the XDP tier's rules (CIDR lists, prefix files, L4 rules,
//! rate limits) and its fail mode.

use super::*;

pub(super) fn parse_protocol(s: &str) -> Option<u8> {
    match s.to_ascii_lowercase().as_str() {
        "tcp" => Some(6),
        "udp" => Some(17),
        "icmp" => Some(1),
        "icmpv6" => Some(58),
        _ => None,
    }
}

/// Reads a prefix file: one `addr/len` (or bare address) per line, `#` comments.
pub(super) fn read_prefix_file(path: &Path) -> Result<Vec<(IpAddr, u8)>, String> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    let mut out = Vec::new();
    for (n, line) in text.lines().enumerate() {
        let line = line.split('#').next().unwrap_or("").trim();
        if line.is_empty() {
            continue;
        }
        let parsed = parse_cidr(line).or_else(|| {
            line.parse::<IpAddr>()
                .ok()
                .map(|ip| (ip, if ip.is_ipv4() { 32 } else { 128 }))
        });
        match parsed {
            Some(p) => out.push(p),
            None => {
                return Err(format!(
                    "{}:{}: {line:?} is not a prefix",
                    path.display(),
                    n + 1
                ));
            }
        }
    }
    Ok(out)
}

pub(super) fn check_filter(
    cfg: &FileConfig,
    rep: &mut Reporter<'_>,
    vips: &[(IpAddr, u8)],
    pools: &[(String, Arc<Upstream>)],
) -> Option<(FilterRules, FailMode)> {
    let f = &cfg.filter;
    let before = rep.errors.len();
    let mut ids: HashSet<String> = HashSet::new();
    let mut id_ok = |rep: &mut Reporter<'_>, id: &Spanned<String>, field: String| {
        let v = id.get_ref();
        let valid = !v.is_empty()
            && v.len() <= 64
            && v.chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_');
        if !valid {
            rep.at(
                id.span(),
                field,
                "ids are 1..=64 characters of [A-Za-z0-9_-]",
            );
        } else if !ids.insert(v.clone())
            || v == ferrogate_ebpf::NOT_ALLOWED_RULE
            || v == UPSTREAM_RULE
        {
            rep.at(
                id.span(),
                field,
                format!("duplicate or reserved rule id {v:?}"),
            );
        }
    };
    let base = rep.file.parent().map(Path::to_path_buf).unwrap_or_default();
    let mut rules = FilterRules {
        default_deny: matches!(f.mode, FilterMode::AllowList),
        ..Default::default()
    };
    for (i, c) in f.cidr.iter().enumerate() {
        id_ok(rep, &c.id, format!("filter.cidr[{i}].id"));
        let mut prefixes = Vec::new();
        for (j, p) in c.cidrs.iter().enumerate() {
            match parse_cidr(p.get_ref()) {
                Some(x) => prefixes.push(x),
                None => rep.at(
                    p.span(),
                    format!("filter.cidr[{i}].cidrs[{j}]"),
                    format!("{:?} is not a prefix like 192.0.2.0/24", p.get_ref()),
                ),
            }
        }
        for (j, file) in c.cidr_files.iter().enumerate() {
            rep.uses(&base.join(file.get_ref()));
            match read_prefix_file(&base.join(file.get_ref())) {
                Ok(mut v) => prefixes.append(&mut v),
                Err(e) => rep.at(file.span(), format!("filter.cidr[{i}].cidr_files[{j}]"), e),
            }
        }
        if prefixes.is_empty() {
            rep.at(
                c.id.span(),
                format!("filter.cidr[{i}]"),
                "needs `cidrs` or `cidr_files`",
            );
        }
        rules.cidr.push(CidrRule {
            id: c.id.get_ref().clone(),
            action: match c.action {
                CidrActionSetting::Deny => CidrAction::Deny,
                CidrActionSetting::Allow => CidrAction::Allow,
            },
            prefixes,
        });
    }
    if matches!(f.mode, FilterMode::AllowList)
        && !f
            .cidr
            .iter()
            .any(|c| matches!(c.action, CidrActionSetting::Allow))
    {
        rep.at(
            0..0,
            "filter.mode",
            "allow_list needs at least one [[filter.cidr]] with action = \"allow\"",
        );
    }
    if f.rate.len() > ferrogate_ebpf::rules::MAX_RATE_RULES {
        rep.at(
            0..0,
            "filter.rate",
            format!(
                "at most {} rate rules",
                ferrogate_ebpf::rules::MAX_RATE_RULES
            ),
        );
    }
    for (i, r) in f.rate.iter().enumerate() {
        let field = format!("filter.rate[{i}]");
        id_ok(rep, &r.id, format!("{field}.id"));
        if r.pps == 0 && r.bps == 0 {
            rep.at(r.id.span(), field.clone(), "needs pps or bps (or both)");
        }
        if r.prefix4 > 32 || r.prefix6 > 128 {
            rep.at(
                r.id.span(),
                format!("{field}.prefix4"),
                "prefix4 <= 32, prefix6 <= 128",
            );
        }
        let vip = r
            .vip
            .as_ref()
            .and_then(|v| match v.get_ref().parse::<IpAddr>() {
                Ok(ip) if vips.iter().any(|(x, _)| *x == ip) => Some(ip),
                _ => {
                    rep.at(
                        v.span(),
                        format!("{field}.vip"),
                        format!("{:?} is not one of the configured vips", v.get_ref()),
                    );
                    None
                }
            });
        let protocol = r
            .protocol
            .as_ref()
            .and_then(|p| match parse_protocol(p.get_ref()) {
                Some(x) => Some(x),
                None => {
                    rep.at(
                        p.span(),
                        format!("{field}.protocol"),
                        "tcp, udp, icmp or icmpv6",
                    );
                    None
                }
            });
        if r.syn_only && protocol.is_some_and(|p| p != 6) {
            rep.at(
                r.id.span(),
                format!("{field}.syn_only"),
                "syn_only needs protocol tcp (or none)",
            );
        }
        // Default bursts: one second's worth.
        let burst_packets = r.burst_packets.unwrap_or(r.pps);
        let burst_bytes = r.burst_bytes.unwrap_or(r.bps);
        if burst_packets > ferrogate_ebpf::rules::MAX_BURST_PACKETS
            || burst_bytes > ferrogate_ebpf::rules::MAX_BURST_BYTES
        {
            rep.at(r.id.span(), format!("{field}.burst"), "burst too large");
        }
        rules.rate.push(RateRule {
            id: r.id.get_ref().clone(),
            key: match r.key {
                RateKeySetting::Source => RateKey::Source {
                    prefix4: r.prefix4.min(32),
                    prefix6: r.prefix6.min(128),
                },
                RateKeySetting::Global => RateKey::Global,
            },
            pps: r.pps,
            burst_packets,
            bps: r.bps,
            burst_bytes,
            syn_only: r.syn_only,
            vip,
            port: r.port,
            protocol: if r.syn_only && protocol.is_none() {
                Some(6)
            } else {
                protocol
            },
        });
    }
    for (i, l) in f.l4.iter().enumerate() {
        let field = format!("filter.l4[{i}]");
        id_ok(rep, &l.id, format!("{field}.id"));
        let vip = match l.vip.get_ref().parse::<IpAddr>() {
            Ok(ip) if vips.iter().any(|(x, _)| *x == ip) => ip,
            _ => {
                rep.at(
                    l.vip.span(),
                    format!("{field}.vip"),
                    format!("{:?} is not one of the configured vips", l.vip.get_ref()),
                );
                continue;
            }
        };
        let mut allow = Vec::new();
        for (j, a) in l.allow.iter().enumerate() {
            let v = a.get_ref();
            let (proto, port) = match v.split_once('/') {
                Some((p, port)) => (
                    parse_protocol(p),
                    port.parse::<u16>().ok().filter(|p| *p > 0),
                ),
                None => (parse_protocol(v), Some(0)),
            };
            match (proto, port) {
                (Some(p @ (6 | 17)), Some(port)) if port > 0 => allow.push((p, port)),
                (Some(p @ (1 | 58)), Some(0)) => allow.push((p, 0)),
                _ => rep.at(
                    a.span(),
                    format!("{field}.allow[{j}]"),
                    format!("{v:?}: expected tcp/PORT, udp/PORT, icmp or icmpv6"),
                ),
            }
        }
        rules.l4.push(L4Rule {
            id: l.id.get_ref().clone(),
            vip,
            allow,
        });
    }
    // Replies from upstream endpoints must never meet client rules.
    let mut upstream_prefixes: Vec<(IpAddr, u8)> = pools
        .iter()
        .flat_map(|(_, p)| p.endpoints.iter())
        .map(|e| (e.ip(), if e.is_ipv4() { 32 } else { 128 }))
        .collect();
    upstream_prefixes.sort();
    upstream_prefixes.dedup();
    if !upstream_prefixes.is_empty() {
        rules.cidr.push(CidrRule {
            id: UPSTREAM_RULE.into(),
            action: CidrAction::Upstream,
            prefixes: upstream_prefixes,
        });
    }
    if rep.errors.len() > before {
        return None;
    }
    let fail = match f.fail_mode {
        FailModeSetting::Open => FailMode::Open,
        FailModeSetting::Closed => FailMode::Closed,
    };
    Some((rules, fail))
}

pub(super) fn parse_cidr(s: &str) -> Option<(IpAddr, u8)> {
    let (ip, len) = s.split_once('/')?;
    let ip: IpAddr = ip.parse().ok()?;
    let len: u8 = len.parse().ok()?;
    let max = if ip.is_ipv4() { 32 } else { 128 };
    (len <= max).then_some((ip, len))
}
