//! The one compile step: a parsed file, validated section by section, into
//! the engine's config (which carries the stack's and the routing snapshot).

use super::*;

pub(super) fn check(cfg: &FileConfig, rep: &mut Reporter<'_>) -> Option<Compiled> {
    let e = &cfg.engine;
    if *e.queues.get_ref() == 0 || *e.queues.get_ref() > ferrogate_ebpf::MAX_QUEUES {
        rep.at(
            e.queues.span(),
            "engine.queues",
            format!("must be 1..={}", ferrogate_ebpf::MAX_QUEUES),
        );
    }
    if !(1..=1024).contains(e.batch_size.get_ref()) {
        rep.at(e.batch_size.span(), "engine.batch_size", "must be 1..=1024");
    }
    if !(4096..=16 * 1024 * 1024).contains(e.tcp_buffer.get_ref()) {
        rep.at(
            e.tcp_buffer.span(),
            "engine.tcp_buffer",
            "must be 4096..=16777216 bytes",
        );
    }
    let tcp_buffer_max = match &e.tcp_buffer_max {
        Some(max) => {
            let (v, span) = (*max.get_ref(), max.span());
            if v < *e.tcp_buffer.get_ref() || v > 64 * 1024 * 1024 {
                rep.at(
                    span,
                    "engine.tcp_buffer_max",
                    "must be tcp_buffer..=67108864 bytes",
                );
            }
            v
        }
        None => (*e.tcp_buffer.get_ref()).max(4 * 1024 * 1024),
    };
    if *e.tcp_buffer_budget.get_ref() as u64 > 64 << 30 {
        rep.at(
            e.tcp_buffer_budget.span(),
            "engine.tcp_buffer_budget",
            "must be at most 68719476736 bytes (64 GiB) per worker",
        );
    }
    let [first_port, last_port] = *e.upstream_port_range.get_ref();
    let per_worker = (u32::from(last_port) + 1).saturating_sub(u32::from(first_port))
        / (*e.queues.get_ref()).max(1);
    if first_port < 1024 || last_port < first_port || last_port == u16::MAX || per_worker < 16 {
        rep.at(
            e.upstream_port_range.span(),
            "engine.upstream_port_range",
            "must be [first, last] with 1024 <= first <= last <= 65534 and at least 16 ports per queue",
        );
    }
    if e.interface.is_empty() || e.interface.len() > 15 {
        rep.at(
            0..0,
            "engine.interface",
            "must be an interface name of 1..=15 characters",
        );
    }

    let mut vips = Vec::new();
    if cfg.vips.is_empty() {
        rep.at(0..0, "vips", "at least one service address is required");
    }
    for (i, v) in cfg.vips.iter().enumerate() {
        match parse_cidr(v.get_ref()) {
            Some(c) => vips.push(c),
            None => rep.at(
                v.span(),
                format!("vips[{i}]"),
                format!(
                    "{:?} is not an address/prefix like 10.0.0.10/24",
                    v.get_ref()
                ),
            ),
        }
    }
    let gateway = cfg
        .gateway
        .as_ref()
        .and_then(|g| match g.get_ref().parse::<Ipv4Addr>() {
            Ok(a) => Some(a),
            Err(_) => {
                rep.at(
                    g.span(),
                    "gateway",
                    format!("{:?} is not an IPv4 address", g.get_ref()),
                );
                None
            }
        });

    let mut pools: Vec<(String, Arc<Upstream>)> = Vec::new();
    for (i, u) in cfg.upstreams.iter().enumerate() {
        let name = u.name.get_ref().clone();
        if pools.iter().any(|(n, _)| *n == name) {
            rep.at(
                u.name.span(),
                format!("upstreams[{i}].name"),
                format!("duplicate upstream {name:?}"),
            );
        }
        let (eps, policy) = check_upstream(i, u, rep);
        let index = pools.len();
        let mut pool = Upstream::new(name.clone(), index, &eps, policy);
        if let Some(tls) = check_upstream_tls(i, u, rep) {
            pool = pool.with_tls(tls);
        }
        match (&u.host, &u.sni) {
            (Some(h), _) if h.get_ref().is_empty() || !valid_host(h.get_ref().as_bytes()) => {
                rep.at(
                    h.span(),
                    format!("upstreams[{i}].host"),
                    format!("{:?} is not host[:port]", h.get_ref()),
                );
            }
            (Some(h), _) => pool = pool.with_host(h.get_ref().as_str()),
            (None, Some(sni)) if pool.tls.is_some() => {
                pool = pool.with_host(sni.get_ref().as_str())
            }
            _ => {}
        }
        if let Some(pp) = &u.proxy_protocol {
            match pp.get_ref().as_str() {
                "v1" => pool.proxy_protocol = Some(ferrogate_proxy::lb::ProxyProtocol::V1),
                "v2" => pool.proxy_protocol = Some(ferrogate_proxy::lb::ProxyProtocol::V2),
                other => rep.at(
                    pp.span(),
                    format!("upstreams[{i}].proxy_protocol"),
                    format!("{other:?} is not \"v1\" or \"v2\""),
                ),
            }
        }
        pools.push((name, Arc::new(pool)));
    }

    let rate_limits = check_rate_limits(cfg, rep);
    let jwt_providers = check_jwt(cfg, rep);
    let plugins = check_plugins(cfg, rep);
    let http3 = Arc::new(check_http3(&cfg.http3, rep));
    // A UDP listener's port is claimed by its sessions: HTTP/3 cannot share it.
    let udp_ports: HashSet<u16> = cfg
        .listeners
        .iter()
        .filter(|l| l.protocol.as_ref().is_some_and(|p| p.get_ref() == "udp"))
        .map(|l| *l.port.get_ref())
        .collect();
    let mut listeners = Vec::new();
    let mut udp_listeners = Vec::new();
    let mut ports = HashSet::new();
    let mut route_names = HashSet::new();
    let mut rule_names = HashSet::new();
    if cfg.listeners.is_empty() {
        rep.at(0..0, "listeners", "at least one listener is required");
    }
    for (i, l) in cfg.listeners.iter().enumerate() {
        let port = *l.port.get_ref();
        // TCP/HTTP and UDP ports are apart (DNS serves both on 53).
        let udp = l.protocol.as_ref().is_some_and(|p| p.get_ref() == "udp");
        if port == 0 || !ports.insert((port, udp)) {
            rep.at(
                l.port.span(),
                format!("listeners[{i}].port"),
                format!("port {port} is zero or used twice"),
            );
        }
        if (first_port..=last_port).contains(&port) {
            rep.at(
                l.port.span(),
                format!("listeners[{i}].port"),
                format!(
                    "lies in the upstream port range {first_port}..={last_port} (engine.upstream_port_range)"
                ),
            );
        }
        let is_http = l.protocol.as_ref().is_none_or(|p| p.get_ref() == "http");
        if !is_http && !l.rules.is_empty() {
            rep.at(
                l.port.span(),
                format!("listeners[{i}].rules"),
                "only HTTP listeners have rules",
            );
        }
        let jwt = listener_jwt(i, l, &jwt_providers, rep);
        let listener_plugins = listener_plugins(i, l, is_http, &plugins, rep);
        if !is_http && jwt.is_some() {
            rep.at(
                l.port.span(),
                format!("listeners[{i}].jwt"),
                "only HTTP listeners authenticate bearer tokens",
            );
        }
        let route_providers = l
            .routes
            .iter()
            .any(|r| r.jwt.as_ref().is_some_and(|n| n.get_ref() != NO_JWT));
        check_listener_claims(i, l, rep);
        let rules = check_rules(
            &format!("listeners[{i}]"),
            &l.rules,
            l,
            &pools,
            &mut rule_names,
            rep,
        );
        if !is_http && !l.rate_limits.is_empty() {
            rep.at(
                l.port.span(),
                format!("listeners[{i}].rate_limits"),
                "only HTTP listeners have L7 rate limits (use an XDP limit for TCP and UDP)",
            );
        }
        let listener_limits =
            rate_limits.resolve(&l.rate_limits, &[], &format!("listeners[{i}]"), rep);
        if !is_http {
            for (j, r) in l.routes.iter().enumerate() {
                if let Some(c) = &r.cache {
                    rep.at(
                        c.span(),
                        format!("listeners[{i}].routes[{j}].cache"),
                        "only HTTP listeners cache responses",
                    );
                }
            }
        }
        if udp {
            if let Some(u) = check_udp(i, l, &pools, rep) {
                udp_listeners.push(u);
            }
            continue;
        }
        let by_subject = |ls: &[Arc<ferrogate_proxy::limits::Limit>]| {
            ls.iter()
                .any(|l| l.key == ferrogate_proxy::limits::LimitKey::JwtSubject)
        };
        let mut routes = Vec::new();
        for (j, r) in l.routes.iter().enumerate() {
            let field = format!("listeners[{i}].routes[{j}]");
            let name = match &r.name {
                Some(n) => {
                    if !route_names.insert(n.get_ref().clone()) {
                        rep.at(
                            n.span(),
                            format!("{field}.name"),
                            format!(
                                "duplicate route name {:?} (counters are kept by name)",
                                n.get_ref()
                            ),
                        );
                    }
                    n.get_ref().clone()
                }
                None => format!("{port}:{j}"),
            };
            let anchor = r
                .upstream
                .as_ref()
                .map(|u| u.span())
                .or_else(|| r.respond.as_ref().map(|x| x.span()))
                .unwrap_or(0..0);
            let policy = r.jwt.is_some()
                || !r.rules.is_empty()
                || !r.rate_limits.is_empty()
                || r.respond.is_some()
                || listener_limits
                    .iter()
                    .any(|l| l.key == ferrogate_proxy::limits::LimitKey::Route);
            let path = check_path(r, &field, anchor.clone(), policy, rep);
            let action = match (&r.upstream, &r.respond) {
                (Some(u), None) => match pools.iter().find(|(n, _)| n == u.get_ref()) {
                    Some((_, p)) if p.proxy_protocol.is_some() => {
                        rep.at(
                            u.span(),
                            format!("{field}.upstream"),
                            format!(
                                "pool {:?} sends a PROXY protocol header, which names one client per connection: only TCP listeners may use it (HTTP reuses upstream connections across clients)",
                                u.get_ref()
                            ),
                        );
                        None
                    }
                    Some((_, p)) => Some(RouteAction::Proxy(p.clone())),
                    None => {
                        rep.at(
                            u.span(),
                            format!("{field}.upstream"),
                            format!("no upstream named {:?}", u.get_ref()),
                        );
                        None
                    }
                },
                (None, Some(resp)) => {
                    let d = resp.get_ref();
                    if !(200..=599).contains(&d.status) {
                        rep.at(
                            resp.span(),
                            format!("{field}.respond.status"),
                            "must be 200..=599",
                        );
                    }
                    if d.body.len() > MAX_DIRECT_BODY {
                        rep.at(
                            resp.span(),
                            format!("{field}.respond.body"),
                            format!("longer than {MAX_DIRECT_BODY} bytes"),
                        );
                    }
                    Some(RouteAction::Respond(Arc::new(DirectResponse {
                        status: d.status,
                        content_type: d.content_type.clone(),
                        body: d.body.clone().into_bytes(),
                        location: None,
                        retry_after: None,
                        www_authenticate: None,
                    })))
                }
                _ => {
                    rep.at(
                        anchor.clone(),
                        field.clone(),
                        "needs exactly one of `upstream` or `respond`",
                    );
                    None
                }
            };
            let mut methods = Vec::new();
            for (k, m) in r.methods.iter().enumerate() {
                let v = m.get_ref();
                if v.is_empty()
                    || !v
                        .bytes()
                        .all(|b| b.is_ascii_uppercase() || b == b'-' || b == b'_')
                {
                    rep.at(
                        m.span(),
                        format!("{field}.methods[{k}]"),
                        format!("{v:?} is not an upper-case method like GET (methods are case-sensitive)"),
                    );
                }
                methods.push(v.clone());
            }
            let headers = r
                .headers
                .iter()
                .filter_map(|(k, v)| {
                    if !is_token(k) {
                        rep.at(
                            v.span(),
                            format!("{field}.headers.{k}"),
                            format!("{k:?} is not a header name"),
                        );
                    }
                    match_value(v, format!("{field}.headers.{k}"), rep).map(|value| HeaderMatch {
                        name: k.clone(),
                        value,
                    })
                })
                .collect();
            let query = r
                .query
                .iter()
                .filter_map(|(k, v)| {
                    if k.is_empty() {
                        rep.at(v.span(), format!("{field}.query"), "empty parameter name");
                    }
                    match_value(v, format!("{field}.query.{k}"), rep).map(|value| QueryMatch {
                        name: k.clone(),
                        value,
                    })
                })
                .collect();
            if let Some(cn) = &r.client_cert_cn
                && l.tls.is_none()
            {
                rep.at(
                    cn.span(),
                    format!("{field}.client_cert_cn"),
                    "needs a TLS listener with client certificates ([listeners.tls] client_ca)",
                );
            }
            let canary = r
                .canary
                .as_ref()
                .and_then(|c| check_canary(&field, &name, c, &action, &pools, rep));
            let route_jwt = route_jwt(
                &field,
                r,
                l.jwt.is_some(),
                jwt.as_ref(),
                &jwt_providers,
                rep,
            );
            let has_token = match &route_jwt {
                RouteJwt::Listener => jwt.is_some(),
                RouteJwt::Exempt => false,
                RouteJwt::Provider(_) => true,
            };
            for (k, rule) in r.rules.iter().enumerate() {
                if let Some(claims) = claims_span(rule)
                    && !has_token
                {
                    rep.at(
                        claims,
                        format!("{field}.rules[{k}].jwt_claims"),
                        "needs a `jwt` provider on the route, or on its listener (and the route not exempt with \"none\")",
                    );
                }
                if r.respond.is_some()
                    && let Some(changes) = changes_span(rule)
                {
                    rep.at(
                        changes,
                        format!("{field}.rules[{k}]"),
                        "a rule's changes (headers, rewrite_prefix, pool) apply to proxied requests: this route responds itself",
                    );
                }
            }
            let rules = check_rules(&field, &r.rules, l, &pools, &mut rule_names, rep);
            let cache = if is_http {
                check_route_cache(&field, r, rep)
            } else {
                None
            };
            let limits = rate_limits.resolve(&r.rate_limits, &listener_limits, &field, rep);
            let route_plugins = route_plugins(&field, r, l, is_http, &plugins, rep);
            if !has_token && by_subject(&limits) {
                let span = r.rate_limits.first().map_or(anchor.clone(), |n| n.span());
                rep.at(
                    span,
                    format!("{field}.rate_limits"),
                    "a limit keyed by jwt:sub needs a `jwt` provider for the route (its own, or its listener's and not \"none\"): without one no request would be counted",
                );
            }
            if let (Some(action), Some(path)) = (action, path) {
                routes.push(Route {
                    canary,
                    host: r.host.clone(),
                    path,
                    methods,
                    headers,
                    query,
                    client_cert_cn: r.client_cert_cn.as_ref().map(|c| c.get_ref().clone()),
                    limits,
                    rules,
                    jwt: route_jwt,
                    cache,
                    plugins: route_plugins,
                    ..Route::new(name, action)
                });
            }
        }
        if let Some(l4) = check_l4(i, l, &pools, rep) {
            // TLS termination: the keys of HTTPS listeners, plaintext spliced.
            let tls = check_listener_tls(i, l, rep);
            if let Some(l4) = l4 {
                let mut listener = Listener::tcp(port, l4);
                if let Some(tls) = tls {
                    listener = listener.with_tls(Arc::new(tls));
                }
                listeners.push(listener);
            }
            continue;
        }
        if jwt.is_none() && !route_providers && by_subject(&listener_limits) {
            rep.at(
                l.port.span(),
                format!("listeners[{i}].rate_limits"),
                "a limit keyed by jwt:sub needs a `jwt` provider, the listener's or its routes' (without one no request would be counted)",
            );
        }
        let mut listener = Listener::new(port, routes)
            .with_http2(l.http2)
            .with_rules(rules)
            .with_limits(listener_limits)
            .with_plugins(listener_plugins);
        if let Some(j) = jwt {
            listener = listener.with_jwt(j);
        }
        let tls = check_listener_tls(i, l, rep);
        if let Some(h3) = listener_http3(i, l, tls.as_ref(), &http3, &udp_ports, rep) {
            listener = listener.with_http3(Some(h3));
        }
        if let Some(tls) = tls {
            listener = listener.with_tls(Arc::new(tls));
        }
        listeners.push(listener);
    }
    let filter = check_filter(cfg, rep, &vips, &pools);
    let numa = check_numa(cfg, rep);
    let dpdk = check_dpdk(&e.dpdk, rep);
    let (cache, cache_key_seed) = check_cache(&cfg.cache, rep);
    if !rep.errors.is_empty() {
        return None;
    }
    let (mut filter, fail_mode) = filter?;
    for rule in rate_limits.xdp {
        if filter.rate.iter().any(|r| r.id == rule.id) {
            rep.at(
                0..0,
                "rate_limits",
                format!(
                    "{:?} names both a [[filter.rate]] rule and an XDP limit",
                    rule.id
                ),
            );
        }
        filter.rate.push(rule);
    }
    if filter.rate.len() > ferrogate_ebpf::rules::MAX_RATE_RULES {
        rep.at(
            0..0,
            "rate_limits",
            format!(
                "[[filter.rate]] rules and XDP limits together: at most {}",
                ferrogate_ebpf::rules::MAX_RATE_RULES
            ),
        );
    }
    if !rep.errors.is_empty() {
        return None;
    }
    let routes = Arc::new(
        RouteTable::new(1, listeners, pools.iter().map(|(_, p)| p.clone()).collect())
            .with_udp(udp_listeners)
            .with_limits(rate_limits.l7),
    );
    let mut ec = EngineConfig::new(e.interface.clone(), vips, routes);
    ec.queues = *e.queues.get_ref();
    ec.backend = match e.backend {
        Backend::AfXdp => BackendChoice::AfXdp,
        Backend::AfPacket => BackendChoice::AfPacket,
        Backend::Auto => BackendChoice::Auto,
        Backend::Dpdk => BackendChoice::Dpdk,
    };
    ec.dpdk = dpdk;
    ec.xdp_mode = match e.xdp_mode {
        XdpMode::Auto => AttachMode::Auto,
        XdpMode::Native => AttachMode::Native,
        XdpMode::Generic => AttachMode::Generic,
    };
    ec.batch_size = *e.batch_size.get_ref();
    ec.polling = match e.polling {
        Polling::Interrupt => PollingMode::Interrupt,
        Polling::Busy => PollingMode::Busy,
        Polling::Adaptive => PollingMode::Adaptive {
            spin: Duration::from_micros(50),
        },
    };
    ec.cpus = e.cpus.clone();
    ec.stack.net.verify_rx_checksums = e.verify_rx_checksums;
    ec.hugepages = e.hugepages;
    if e.listen_backlog.is_some() {
        tracing::warn!(
            "engine.listen_backlog has no effect and is ignored (engine.max_connections bounds accepted connections); remove it"
        );
    }
    ec.stack.net.max_connections = e.max_connections;
    ec.stack.net.tcp_rx_buffer = *e.tcp_buffer.get_ref();
    ec.stack.net.tcp_tx_buffer = *e.tcp_buffer.get_ref();
    ec.stack.net.tcp_tx_buffer_max = tcp_buffer_max;
    ec.stack.net.tcp_rx_buffer_max = tcp_buffer_max;
    ec.stack.net.tcp_buffer_budget = *e.tcp_buffer_budget.get_ref();
    ec.stack.net.tcp_timestamps = e.tcp_timestamps;
    ec.upstream_port_range = first_port..last_port.saturating_add(1);
    ec.stack.net.gateway_v4 = gateway;
    ec.stack.max_request_body = cfg.limits.max_request_body_bytes;
    let mut access_log = None;
    if let Some(a) = &cfg.access_log {
        let path = a.path.get_ref().trim();
        if path.is_empty() {
            rep.at(
                a.path.span(),
                "access_log.path",
                "must name a file or \"-\"",
            );
        } else if path == "-" {
            access_log = Some(AccessLogTarget::Log);
        } else {
            let base = rep.file.parent().map(Path::to_path_buf).unwrap_or_default();
            access_log = Some(AccessLogTarget::File(base.join(path)));
        }
        if !(16..=1 << 20).contains(a.queue.get_ref()) {
            rep.at(
                a.queue.span(),
                "access_log.queue",
                "must be 16..=1048576 records",
            );
        }
        ec.access_log_queue = *a.queue.get_ref();
    }
    ec.numa = numa;
    ec.filter = filter;
    ec.fail_mode = fail_mode;
    let d = Timeouts::default();
    let ms = |v: Option<u64>, dflt: Duration| v.map(Duration::from_millis).unwrap_or(dflt);
    ec.stack.timeouts = Timeouts {
        client_header: ms(cfg.timeouts.client_header_ms, d.client_header),
        client_idle: ms(cfg.timeouts.client_idle_ms, d.client_idle),
        upstream_connect: ms(cfg.timeouts.upstream_connect_ms, d.upstream_connect),
        upstream_response: ms(cfg.timeouts.upstream_response_ms, d.upstream_response),
        upstream_read: cfg.timeouts.upstream_read_ms.map(Duration::from_millis),
    };
    ec.stack.h2 = check_http2(&cfg.http2, rep);
    ec.cache = cache;
    ec.cache_key_seed = cache_key_seed;
    let drain_timeout = match &cfg.timeouts.drain_ms {
        None => DEFAULT_DRAIN_TIMEOUT,
        Some(v) => {
            let t = Duration::from_millis(*v.get_ref());
            if t > MAX_DRAIN_TIMEOUT {
                rep.at(
                    v.span(),
                    "timeouts.drain_ms",
                    format!("must be 0..={}", MAX_DRAIN_TIMEOUT.as_millis()),
                );
            }
            t.min(MAX_DRAIN_TIMEOUT)
        }
    };
    Some(Compiled {
        netns: e.netns.clone(),
        engine: ec,
        access_log,
        files: Vec::new(),
        drain_timeout,
    })
}

/// `[http2]`: each key within the range RFC 9113 (or sense) allows.
fn check_http2(h: &Http2Section, rep: &mut Reporter<'_>) -> ferrogate_proxy::h2::ServerConfig {
    let mut c = ferrogate_proxy::h2::ServerConfig::default();
    let mut u32_key = |v: &Option<Spanned<u32>>,
                       name: &str,
                       range: std::ops::RangeInclusive<u32>,
                       out: &mut u32| {
        if let Some(v) = v {
            if range.contains(v.get_ref()) {
                *out = *v.get_ref();
            } else {
                rep.at(
                    v.span(),
                    format!("http2.{name}"),
                    format!("must be {}..={}", range.start(), range.end()),
                );
            }
        }
    };
    u32_key(
        &h.max_concurrent_streams,
        "max_concurrent_streams",
        1..=10_000,
        &mut c.max_concurrent_streams,
    );
    u32_key(
        &h.stream_window,
        "stream_window",
        1024..=(1 << 31) - 1,
        &mut c.stream_window,
    );
    u32_key(
        &h.connection_window,
        "connection_window",
        65_535..=(1 << 31) - 1,
        &mut c.connection_window,
    );
    u32_key(
        &h.max_frame_size,
        "max_frame_size",
        16_384..=16_777_215,
        &mut c.max_frame_size,
    );
    let mut list = c.max_header_list_size as u32;
    u32_key(
        &h.max_header_list_size,
        "max_header_list_size",
        1024..=1 << 20,
        &mut list,
    );
    c.max_header_list_size = list as usize;
    let mut resets = c.max_resets_per_window;
    u32_key(
        &h.max_resets_per_second,
        "max_resets_per_second",
        1..=1_000_000,
        &mut resets,
    );
    c.max_resets_per_window = resets;
    let mut control = c.max_control_frames_per_window;
    u32_key(
        &h.max_control_frames_per_second,
        "max_control_frames_per_second",
        1..=1_000_000,
        &mut control,
    );
    c.max_control_frames_per_window = control;
    c.flood_window = Duration::from_secs(1);
    if let Some(t) = &h.settings_timeout_ms {
        if (100..=600_000).contains(t.get_ref()) {
            c.settings_timeout = Duration::from_millis(*t.get_ref());
        } else {
            rep.at(
                t.span(),
                "http2.settings_timeout_ms",
                "must be 100..=600000",
            );
        }
    }
    c
}

/// `[http3]`: each key within its range, compiled into what the QUIC
/// endpoint of every `http3 = true` listener is built from (worker 0: each
/// worker sets its own index).
fn check_http3(h: &Http3Section, rep: &mut Reporter<'_>) -> Http3Listener {
    fn ranged<T: PartialOrd + Copy + std::fmt::Display>(
        rep: &mut Reporter<'_>,
        v: &Option<Spanned<T>>,
        name: &str,
        range: std::ops::RangeInclusive<T>,
    ) -> Option<T> {
        let v = v.as_ref()?;
        if range.contains(v.get_ref()) {
            return Some(*v.get_ref());
        }
        rep.at(
            v.span(),
            format!("http3.{name}"),
            format!("must be {}..={}", range.start(), range.end()),
        );
        None
    }
    let mut quic = ferrogate_proxy::quic::QuicConfig::default();
    if let Some(r) = &h.retry {
        quic.retry = *r.get_ref();
    }
    if let Some(n) = ranged(rep, &h.max_connections, "max_connections", 1..=1_000_000) {
        quic.max_connections = n;
    }
    if let Some(n) = ranged(
        rep,
        &h.max_connections_per_source,
        "max_connections_per_source",
        1..=1_000_000,
    ) {
        quic.max_connections_per_source = n;
    }
    if let Some(n) = ranged(
        rep,
        &h.retry_above_handshakes,
        "retry_above_handshakes",
        0..=1_000_000,
    ) {
        quic.retry_above_handshakes = n;
    }
    if let Some(ms) = ranged(rep, &h.idle_timeout_ms, "idle_timeout_ms", 1000..=600_000) {
        quic.idle_timeout = Duration::from_millis(ms);
    }
    // QUIC's MAX_STREAMS (bidi) and HTTP/3's request bound are one limit:
    // a stream QUIC admits past the latter would only be rejected.
    if let Some(n) = ranged(
        rep,
        &h.max_concurrent_streams,
        "max_concurrent_streams",
        1..=10_000,
    ) {
        quic.max_bidi_streams = n;
        quic.h3.max_concurrent_requests = n as usize;
    }
    if let Some(n) = ranged(
        rep,
        &h.max_buffered_body,
        "max_buffered_body",
        1024..=16 << 20,
    ) {
        quic.max_buffered_body = n;
    }
    if let Some(n) = ranged(
        rep,
        &h.max_field_section_size,
        "max_field_section_size",
        1024..=1 << 20,
    ) {
        quic.h3.max_field_section_size = n;
    }
    let alt_svc_max_age = ranged(rep, &h.alt_svc_max_age, "alt_svc_max_age", 0..=31_536_000)
        .unwrap_or(DEFAULT_ALT_SVC_MAX_AGE);
    Http3Listener {
        quic,
        alt_svc_max_age,
    }
}

/// `Alt-Svc` max-age when `[http3]` sets none: one day.
pub(super) const DEFAULT_ALT_SVC_MAX_AGE: u32 = 86_400;

/// An HTTP listener's `http3 = true`: it needs TLS without client
/// certificates, a UDP port of its own, and a TLS config QUIC can use
/// (checked by building the endpoint once). None when off or refused
/// (reported).
fn listener_http3(
    i: usize,
    l: &ListenerSection,
    tls: Option<&ferrogate_proxy::tls::ListenerTls>,
    http3: &Arc<Http3Listener>,
    udp_ports: &HashSet<u16>,
    rep: &mut Reporter<'_>,
) -> Option<Arc<Http3Listener>> {
    let on = l.http3.as_ref().filter(|h| *h.get_ref())?;
    let field = format!("listeners[{i}].http3");
    let errors_before = rep.errors.len();
    let Some(t) = &l.tls else {
        rep.at(
            on.span(),
            field,
            "needs [listeners.tls]: HTTP/3 runs over QUIC, which is always TLS 1.3",
        );
        return None;
    };
    let t = t.get_ref();
    let none = t
        .client_auth
        .as_ref()
        .is_some_and(|m| m.get_ref() == "none");
    let client_certs = !none && (t.client_ca.is_some() || t.client_auth.is_some());
    if client_certs {
        rep.at(
            on.span(),
            field.clone(),
            "not with client certificates (client_ca / client_auth): mTLS over QUIC is not supported yet",
        );
    }
    let port = *l.port.get_ref();
    if udp_ports.contains(&port) {
        rep.at(
            on.span(),
            field.clone(),
            format!(
                "UDP port {port} is a UDP listener's (protocol = \"udp\"): HTTP/3 would claim it twice"
            ),
        );
    }
    // Without a TLS config its errors are reported already.
    let tls = tls.filter(|_| rep.errors.len() == errors_before)?;
    match ferrogate_proxy::quic::QuicEndpoint::new(http3.quic.clone(), (*tls.server.config).clone())
    {
        Ok(_) => Some(http3.clone()),
        Err(e) => {
            rep.at(on.span(), field, e.to_string());
            None
        }
    }
}

/// A listener's `protocol` and the keys of TCP listeners. None: an HTTP
/// listener (TCP-only keys on it are reported); Some(None): a TCP listener
/// with errors; Some(Some(l4)): a TCP listener.
fn check_l4(
    i: usize,
    l: &ListenerSection,
    pools: &[(String, Arc<Upstream>)],
    rep: &mut Reporter<'_>,
) -> Option<Option<L4Listener>> {
    let field = |k: &str| format!("listeners[{i}].{k}");
    let tcp = match &l.protocol {
        None => false,
        Some(p) => match p.get_ref().as_str() {
            "http" => false,
            "tcp" => true,
            other => {
                rep.at(
                    p.span(),
                    field("protocol"),
                    format!("{other:?} is not \"http\", \"tcp\" or \"udp\""),
                );
                return Some(None);
            }
        },
    };
    if !tcp {
        const L4: &str = "a TCP or UDP listener (protocol = \"tcp\" / \"udp\")";
        const TCP: &str = "a TCP listener (protocol = \"tcp\")";
        const UDP: &str = "a UDP listener (protocol = \"udp\")";
        let only_l4 = [
            ("upstream", L4, l.upstream.as_ref().map(|u| u.span())),
            (
                "idle_timeout_ms",
                L4,
                l.idle_timeout_ms.as_ref().map(|u| u.span()),
            ),
            (
                "max_connections",
                TCP,
                l.max_connections.as_ref().map(|u| u.span()),
            ),
            ("sni", TCP, l.sni.as_ref().map(|u| u.span())),
            (
                "max_sessions",
                UDP,
                l.max_sessions.as_ref().map(|u| u.span()),
            ),
            (
                "proxy_protocol_from",
                TCP,
                l.proxy_protocol_from
                    .as_ref()
                    .and_then(|v| v.first())
                    .map(|u| u.span()),
            ),
        ];
        for (k, kind, span) in only_l4 {
            if let Some(span) = span {
                rep.at(
                    span,
                    field(k),
                    format!("only {kind} has it; HTTP listeners route with [[listeners.routes]]"),
                );
            }
        }
        return None;
    }
    let anchor = l.protocol.as_ref().map(|p| p.span()).unwrap_or(0..0);
    let mut ok = true;
    if !l.routes.is_empty() {
        rep.at(
            anchor.clone(),
            field("routes"),
            "a TCP listener has no routes (it sends every connection to its `upstream`)",
        );
        ok = false;
    }
    if let (Some(_), Some(sni)) = (&l.tls, &l.sni) {
        rep.at(
            sni.span(),
            field("sni"),
            "TLS passthrough (`sni`) and TLS termination ([listeners.tls]) exclude each other: choose one",
        );
        ok = false;
    }
    if l.mtls_headers.is_some() {
        rep.at(
            anchor.clone(),
            field("mtls_headers"),
            "not for a TCP listener",
        );
        ok = false;
    }
    if l.http2 {
        rep.at(anchor.clone(), field("http2"), "not for a TCP listener");
        ok = false;
    }
    if let Some(h3) = l.http3.as_ref().filter(|h| *h.get_ref()) {
        rep.at(
            h3.span(),
            field("http3"),
            "not for a TCP listener (HTTP/3 needs an HTTP listener with [listeners.tls])",
        );
        ok = false;
    }
    if let Some(m) = &l.max_sessions {
        rep.at(
            m.span(),
            field("max_sessions"),
            "a TCP listener bounds `max_connections`",
        );
        ok = false;
    }
    let upstream = listener_pool(i, l, pools, rep, "TCP", |p| {
        p.tls.is_some().then(|| {
            "speaks TLS to its endpoints; a TCP listener forwards bytes untouched (use a pool without `tls`)"
                .to_string()
        })
    });
    let idle_timeout = idle_timeout_of(i, l, ferrogate_proxy::route::L4_IDLE_TIMEOUT, rep, &mut ok);
    // TLS passthrough: `sni = { "name" = "pool", "*.suffix" = "pool" }`.
    let mut sni = Vec::new();
    if let Some(map) = &l.sni {
        for (name, pool) in map.get_ref() {
            let f = format!("listeners[{i}].sni.{name:?}");
            let bare = name.strip_prefix("*.").unwrap_or(name);
            let host_ok = !bare.is_empty()
                && bare.len() <= 253
                && !bare.contains('*')
                && bare
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_'))
                && !bare.starts_with('.')
                && !bare.ends_with('.');
            if !host_ok {
                rep.at(
                    map.span(),
                    f.clone(),
                    "a server name is a host name or `*.suffix`",
                );
                ok = false;
                continue;
            }
            match pools.iter().find(|(n, _)| n == pool.get_ref()) {
                None => {
                    rep.at(
                        pool.span(),
                        f,
                        format!("no upstream named {:?}", pool.get_ref()),
                    );
                    ok = false;
                }
                Some((_, p)) if p.tls.is_some() => {
                    rep.at(
                        pool.span(),
                        f,
                        "a passthrough pool forwards the client's TLS untouched (use a pool without `tls`)",
                    );
                    ok = false;
                }
                Some((_, p)) => {
                    // Wildcards are kept as "*.suffix" minus the star's
                    // dot: matching takes a name that ends with ".suffix".
                    let key = match name.strip_prefix('*') {
                        Some(rest) => format!("*{}", rest.to_ascii_lowercase()),
                        None => name.to_ascii_lowercase(),
                    };
                    sni.push((key, p.clone()));
                }
            }
        }
    }
    // Load balancers in front that send a PROXY header.
    let mut proxy_from = Vec::new();
    for (k, c) in l.proxy_protocol_from.iter().flatten().enumerate() {
        match super::filter::parse_cidr(c.get_ref()) {
            Some(p) => proxy_from.push(p),
            None => {
                rep.at(
                    c.span(),
                    format!("listeners[{i}].proxy_protocol_from[{k}]"),
                    format!(
                        "{:?} is not an address prefix (e.g. \"10.0.0.0/8\")",
                        c.get_ref()
                    ),
                );
                ok = false;
            }
        }
    }
    let max_connections = match &l.max_connections {
        Some(m) if *m.get_ref() == 0 => {
            rep.at(m.span(), field("max_connections"), "must be at least 1");
            ok = false;
            None
        }
        m => m.as_ref().map(|m| *m.get_ref()),
    };
    match upstream {
        Some(upstream) if ok => Some(Some(L4Listener {
            upstream,
            idle_timeout,
            max_connections,
            sni: sni.into(),
            proxy_from: proxy_from.into(),
        })),
        _ => Some(None),
    }
}

/// A UDP listener's keys (`protocol = "udp"`); None when any is wrong
/// (reported).
fn check_udp(
    i: usize,
    l: &ListenerSection,
    pools: &[(String, Arc<Upstream>)],
    rep: &mut Reporter<'_>,
) -> Option<UdpListener> {
    let field = |k: &str| format!("listeners[{i}].{k}");
    let anchor = l.protocol.as_ref().map(|p| p.span()).unwrap_or(0..0);
    let mut ok = true;
    let mut refuse = |rep: &mut Reporter<'_>, k: &str, span: std::ops::Range<usize>, why: &str| {
        rep.at(span, field(k), why.to_string());
        ok = false;
    };
    if !l.routes.is_empty() {
        refuse(
            rep,
            "routes",
            anchor.clone(),
            "a UDP listener has no routes (it forwards every datagram to its `upstream`)",
        );
    }
    if let Some(t) = &l.tls {
        refuse(
            rep,
            "tls",
            t.span(),
            "not for a UDP listener (DTLS is not supported)",
        );
    }
    if l.http2 {
        refuse(rep, "http2", anchor.clone(), "not for a UDP listener");
    }
    if let Some(h3) = l.http3.as_ref().filter(|h| *h.get_ref()) {
        refuse(
            rep,
            "http3",
            h3.span(),
            "not for a UDP listener (HTTP/3 needs an HTTP listener with [listeners.tls])",
        );
    }
    if l.mtls_headers.is_some() {
        refuse(
            rep,
            "mtls_headers",
            anchor.clone(),
            "not for a UDP listener",
        );
    }
    if let Some(s) = &l.sni {
        refuse(
            rep,
            "sni",
            s.span(),
            "not for a UDP listener (TLS passthrough is for TCP listeners)",
        );
    }
    if let Some(p) = l.proxy_protocol_from.as_ref().and_then(|v| v.first()) {
        refuse(
            rep,
            "proxy_protocol_from",
            p.span(),
            "not for a UDP listener",
        );
    }
    if let Some(m) = &l.max_connections {
        refuse(
            rep,
            "max_connections",
            m.span(),
            "a UDP listener bounds `max_sessions`",
        );
    }
    let upstream = listener_pool(i, l, pools, rep, "UDP", |p| {
        if p.endpoints.iter().any(|e| e.is_ipv6()) {
            Some(
                "has IPv6 endpoints; a UDP listener forwards to IPv4 endpoints only (for now)"
                    .into(),
            )
        } else if p.tls.is_some() || p.proxy_protocol.is_some() {
            Some("speaks TLS or sends a PROXY header; a UDP listener forwards datagrams untouched (use a plain pool)".into())
        } else {
            None
        }
    });
    let idle_timeout =
        idle_timeout_of(i, l, ferrogate_proxy::route::UDP_IDLE_TIMEOUT, rep, &mut ok);
    let max_sessions = match &l.max_sessions {
        None => ferrogate_proxy::route::UDP_MAX_SESSIONS,
        Some(m) if !(1..=1_000_000).contains(m.get_ref()) => {
            rep.at(m.span(), field("max_sessions"), "must be 1..=1000000");
            ok = false;
            1
        }
        Some(m) => *m.get_ref(),
    };
    match upstream {
        Some(upstream) if ok => Some(UdpListener {
            port: *l.port.get_ref(),
            upstream,
            idle_timeout,
            max_sessions,
        }),
        _ => None,
    }
}

/// The `upstream` pool of a TCP or UDP listener (`kind`): it must exist,
/// and `unfit` says why a pool cannot serve it (None: it can).
fn listener_pool(
    i: usize,
    l: &ListenerSection,
    pools: &[(String, Arc<Upstream>)],
    rep: &mut Reporter<'_>,
    kind: &str,
    unfit: impl Fn(&Upstream) -> Option<String>,
) -> Option<Arc<Upstream>> {
    let field = format!("listeners[{i}].upstream");
    let Some(u) = &l.upstream else {
        let anchor = l.protocol.as_ref().map(|p| p.span()).unwrap_or(0..0);
        rep.at(
            anchor,
            field,
            format!("a {kind} listener needs an `upstream` pool"),
        );
        return None;
    };
    match pools.iter().find(|(n, _)| n == u.get_ref()) {
        None => {
            rep.at(
                u.span(),
                field,
                format!("no upstream named {:?}", u.get_ref()),
            );
            None
        }
        Some((name, p)) => match unfit(p) {
            Some(why) => {
                rep.at(u.span(), field, format!("pool {name:?} {why}"));
                None
            }
            None => Some(p.clone()),
        },
    }
}

/// A TCP or UDP listener's `idle_timeout_ms` (`default` when absent); 0 is
/// reported and clears `ok`.
fn idle_timeout_of(
    i: usize,
    l: &ListenerSection,
    default: std::time::Duration,
    rep: &mut Reporter<'_>,
    ok: &mut bool,
) -> std::time::Duration {
    match &l.idle_timeout_ms {
        None => default,
        Some(ms) if *ms.get_ref() == 0 => {
            rep.at(
                ms.span(),
                format!("listeners[{i}].idle_timeout_ms"),
                "must be at least 1",
            );
            *ok = false;
            default
        }
        Some(ms) => std::time::Duration::from_millis(*ms.get_ref()),
    }
}

/// A route's `canary`: the pool (not the route's, not PROXY-protocol), the
/// share, the cohort key and the brake.
fn check_canary(
    field: &str,
    route: &str,
    c: &Spanned<CanarySection>,
    action: &Option<RouteAction>,
    pools: &[(String, Arc<Upstream>)],
    rep: &mut Reporter<'_>,
) -> Option<Arc<ferrogate_proxy::canary::Canary>> {
    use ferrogate_proxy::canary::{Brake, Canary, CohortKey};
    let (span, s) = (c.span(), c.get_ref());
    let field = format!("{field}.canary");
    let before = rep.errors.len();
    let base = match action {
        Some(RouteAction::Proxy(p)) => Some(p.clone()),
        Some(RouteAction::Respond(_)) => {
            rep.at(
                span.clone(),
                field.clone(),
                "only a route that proxies has a canary",
            );
            None
        }
        None => None,
    };
    let pool = match pools.iter().find(|(n, _)| *n == s.pool) {
        None => {
            rep.at(
                span.clone(),
                format!("{field}.pool"),
                format!("no upstream named {:?}", s.pool),
            );
            None
        }
        Some((_, p)) if p.proxy_protocol.is_some() => {
            rep.at(
                span.clone(),
                format!("{field}.pool"),
                format!(
                    "pool {:?} sends a PROXY protocol header: only TCP listeners may use it",
                    s.pool
                ),
            );
            None
        }
        Some((_, p)) if base.as_ref().is_some_and(|b| b.name == p.name) => {
            rep.at(
                span.clone(),
                format!("{field}.pool"),
                "is the route's own pool",
            );
            None
        }
        Some((_, p)) => Some(p.clone()),
    };
    if !(s.percent.is_finite() && (0.0..=100.0).contains(&s.percent))
        || (s.percent > 0.0 && (s.percent * 100.0).round() < 1.0)
    {
        rep.at(
            span.clone(),
            format!("{field}.percent"),
            "must be 0..=100, in steps of 0.01",
        );
    }
    let key = match s.key.as_deref() {
        None => None,
        Some(k) => match (k.strip_prefix("header:"), k.strip_prefix("cookie:")) {
            (Some(h), _) if is_token(h) => Some(CohortKey::Header(h.to_ascii_lowercase())),
            (_, Some(c)) if is_token(c) => Some(CohortKey::Cookie(c.to_string())),
            _ => {
                rep.at(
                    span.clone(),
                    format!("{field}.key"),
                    format!("{k:?}: must be \"header:NAME\" or \"cookie:NAME\""),
                );
                None
            }
        },
    };
    let brake = s.brake.as_ref().and_then(|b| {
        let ok = (0.0..1.0).contains(&b.max_5xx_delta)
            && b.max_p99_ratio.is_none_or(|r| r.is_finite() && r >= 2.0)
            && (1..=3600).contains(&b.window_s)
            && b.min_requests >= 1;
        if !ok {
            rep.at(
                span.clone(),
                format!("{field}.brake"),
                "max_5xx_delta 0..1, max_p99_ratio >= 2 (p99 is measured to a factor of two), window_s 1..=3600, min_requests >= 1",
            );
            return None;
        }
        if s.percent >= 100.0 {
            rep.at(
                span.clone(),
                format!("{field}.brake"),
                "a brake compares the canary with the baseline: percent must leave the baseline some requests (< 100)",
            );
            return None;
        }
        Some(Brake {
            max_5xx_delta: b.max_5xx_delta,
            max_p99_ratio: b.max_p99_ratio,
            window_us: b.window_s * 1_000_000,
            min_requests: b.min_requests,
        })
    });
    if rep.errors.len() != before {
        return None;
    }
    Some(Arc::new(Canary::new(
        route,
        pool?,
        (s.percent * 100.0).round() as u32,
        key,
        brake,
    )))
}
