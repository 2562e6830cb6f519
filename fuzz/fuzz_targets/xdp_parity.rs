//! Differential: each frame through the real XDP program
//! (`BPF_PROG_TEST_RUN`, loaded once, attached nowhere) and through its Rust
//! twin (`swfilter`, what DPDK workers run) under the same deny / allow /
//! port rules: the same verdict and the same counters moved. Needs root
//! (loading BPF); `fuzz/run.sh` runs it only as root. Rate rules stay out
//! (time-dependent: `ebpf/tests/parity.rs` checks them).
#![no_main]

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::sync::OnceLock;

use ferrogate_ebpf::swfilter::{Buckets, FilterCounters, RuleIndex, SwFilter, SwRules};
use ferrogate_ebpf::{
    CidrAction, CidrRule, FailMode, FilterRules, L4Rule, VipAction, XdpCounters, XdpFilter,
};
use libfuzzer_sys::fuzz_target;

const XDP_PASS: u32 = 2;

fn rules() -> FilterRules {
    let cidr = |id: &str, action, p: (IpAddr, u8)| CidrRule {
        id: id.into(),
        action,
        prefixes: vec![p],
    };
    FilterRules {
        default_deny: false,
        cidr: vec![
            cidr(
                "deny",
                CidrAction::Deny,
                (Ipv4Addr::new(192, 0, 2, 0).into(), 24),
            ),
            cidr(
                "allow",
                CidrAction::Allow,
                (Ipv4Addr::new(198, 51, 100, 0).into(), 24),
            ),
            cidr(
                "origins",
                CidrAction::Upstream,
                (Ipv4Addr::new(10, 77, 0, 3).into(), 32),
            ),
            cidr(
                "deny6",
                CidrAction::Deny,
                (Ipv6Addr::new(0xfd77, 0, 0, 0, 0, 0, 0, 2).into(), 128),
            ),
        ],
        rate: Vec::new(),
        l4: vec![L4Rule {
            id: "ports".into(),
            vip: Ipv4Addr::new(10, 77, 0, 10).into(),
            allow: vec![(6, 80), (17, 53)],
        }],
    }
}

struct Both {
    xdp: XdpFilter,
    rules: SwRules,
    buckets: Buckets,
    counters: FilterCounters,
}

fn both() -> &'static std::sync::Mutex<Both> {
    static BOTH: OnceLock<std::sync::Mutex<Both>> = OnceLock::new();
    BOTH.get_or_init(|| {
        let vips = [
            IpAddr::V4(Ipv4Addr::new(10, 77, 0, 10)),
            IpAddr::V6(Ipv6Addr::new(0xfd77, 0, 0, 0, 0, 0, 0, 0x10)),
        ];
        let rules = rules();
        let xdp = XdpFilter::load(
            "fuzz",
            &vips,
            VipAction::PassToKernel,
            FailMode::Open,
            &rules,
        )
        .expect("load the XDP program (root, BPF)");
        let mut index = RuleIndex::default();
        let sw = SwRules::compile(&rules, &vips, &mut index, 0).expect("rules compile");
        std::sync::Mutex::new(Both {
            xdp,
            rules: sw,
            buckets: Buckets::default(),
            counters: FilterCounters::default(),
        })
    })
}

fn moved(after: &XdpCounters, before: &XdpCounters, kernel: bool) -> Vec<&'static str> {
    let mut v: Vec<&'static str> = after
        .since(before)
        .iter()
        .filter(|(_, c)| c.packets != 0)
        // No AF_XDP socket in a test run: the program's pass_vip is the
        // Rust filter's redirect_vip.
        .map(|(n, _)| {
            if kernel && n == "pass_vip" {
                "redirect_vip"
            } else {
                n
            }
        })
        .collect();
    v.sort();
    v
}

fuzz_target!(|frame: &[u8]| {
    // The kernel refuses test frames shorter than an Ethernet header.
    if frame.len() < 14 || frame.len() > 1514 {
        return;
    }
    let b = both().lock().expect("one fuzz thread");
    let sw_counters = |c: &FilterCounters| {
        let mut x = XdpCounters::default();
        c.add_to(&mut x);
        x
    };
    let before = sw_counters(&b.counters);
    let admitted = SwFilter {
        rules: &b.rules,
        buckets: &b.buckets,
        counters: &b.counters,
    }
    .admit(frame, 0);
    let ours = moved(&sw_counters(&b.counters), &before, false);
    let kb = b.xdp.counters().expect("counters");
    let action = b.xdp.test_run(frame).expect("BPF_PROG_TEST_RUN");
    let theirs = moved(&b.xdp.counters().expect("counters"), &kb, true);
    assert_eq!(
        (admitted, &ours),
        (action == XDP_PASS, &theirs),
        "rust vs xdp on {} bytes {:02x?}",
        frame.len(),
        &frame[..frame.len().min(96)]
    );
});
