//! Which of a listener's rules can match a request, found without
//! scanning them: each rule is filed under one condition it cannot match
//! without (its gate) — its path test, one of its source prefixes, or a
//! header it needs present — and only the rules whose gate holds, plus
//! those without one, are evaluated in full, in rule order. The gate only
//! narrows: a candidate is still checked on every condition.

use std::collections::HashMap;
use std::net::IpAddr;

use crate::http::RequestView;
use crate::rules::{PathTest, Rule, ValueTest};

/// A header name longer than this is not looked up in the index: every
/// header-gated rule becomes a candidate (correct, only slower).
const NAME_MAX: usize = 128;

#[derive(Debug, Clone, Default)]
pub(crate) struct RuleIndex {
    /// One bit per rule: those evaluated for every request (no gate).
    always: Vec<u64>,
    exact: HashMap<Box<[u8]>, Vec<u32>>,
    /// Prefix lengths in use, shortest first.
    prefix_lens: Vec<usize>,
    prefix: HashMap<Box<[u8]>, Vec<u32>>,
    /// The rule of each path regex of the listener's set, by slot.
    regex_rule: Vec<u32>,
    /// By lower-case header name.
    header: HashMap<Box<[u8]>, Vec<u32>>,
    /// Every header-gated rule (a request header name too long to look up).
    header_all: Vec<u32>,
    source_lens4: Vec<u8>,
    source_lens6: Vec<u8>,
    source: HashMap<(IpAddr, u8), Vec<u32>>,
}

/// A request's path in one form and which of the set's regexes match it.
pub(crate) struct Form<'a> {
    pub path: &'a [u8],
    pub hits: &'a [bool],
}

fn masked(ip: IpAddr, len: u8) -> IpAddr {
    match ip {
        IpAddr::V4(a) => {
            let m = u32::MAX.checked_shl(32 - u32::from(len)).unwrap_or(0);
            IpAddr::V4((u32::from(a) & m).into())
        }
        IpAddr::V6(a) => {
            let m = u128::MAX.checked_shl(128 - u32::from(len)).unwrap_or(0);
            IpAddr::V6((u128::from(a) & m).into())
        }
    }
}

fn insert_len(lens: &mut Vec<u8>, len: u8) {
    if let Err(at) = lens.binary_search(&len) {
        lens.insert(at, len);
    }
}

impl RuleIndex {
    /// Files `rules` (their regex slots already assigned) under their gates.
    pub(crate) fn build(rules: &[Rule]) -> Self {
        let mut ix = Self {
            always: vec![0; rules.len().div_ceil(64)],
            ..Self::default()
        };
        for (i, r) in rules.iter().enumerate() {
            let i32 = i as u32;
            let m = &r.matches;
            match (&m.path, r.path_slot()) {
                (Some(PathTest::Exact(p)), _) => {
                    ix.exact.entry(p.as_bytes().into()).or_default().push(i32);
                    continue;
                }
                (Some(PathTest::Prefix(p)), _) => {
                    if let Err(at) = ix.prefix_lens.binary_search(&p.len()) {
                        ix.prefix_lens.insert(at, p.len());
                    }
                    ix.prefix.entry(p.as_bytes().into()).or_default().push(i32);
                    continue;
                }
                (Some(PathTest::Regex(_)), Some(slot)) => {
                    if ix.regex_rule.len() <= slot {
                        ix.regex_rule.resize(slot + 1, u32::MAX);
                    }
                    ix.regex_rule[slot] = i32;
                    continue;
                }
                _ => {}
            }
            if !m.sources.is_empty() {
                for c in &m.sources {
                    let (addr, len) = (c.addr(), c.len());
                    match addr {
                        IpAddr::V4(_) => insert_len(&mut ix.source_lens4, len),
                        IpAddr::V6(_) => insert_len(&mut ix.source_lens6, len),
                    }
                    let list = ix.source.entry((masked(addr, len), len)).or_default();
                    if list.last() != Some(&i32) {
                        list.push(i32);
                    }
                }
                continue;
            }
            // A header (or cookie) test other than "absent" needs the
            // header there.
            let needed = m
                .headers
                .iter()
                .find(|(_, t)| !matches!(t, ValueTest::Absent))
                .map(|(n, _)| n.to_ascii_lowercase())
                .or_else(|| {
                    m.cookies
                        .iter()
                        .any(|(_, t)| !matches!(t, ValueTest::Absent))
                        .then(|| "cookie".to_string())
                });
            match needed {
                Some(name) if name.len() <= NAME_MAX => {
                    ix.header
                        .entry(name.into_bytes().into())
                        .or_default()
                        .push(i32);
                    ix.header_all.push(i32);
                }
                _ => ix.always[i / 64] |= 1 << (i % 64),
            }
        }
        ix
    }

    /// Marks in `cand` (one bit per rule) the rules that can match.
    pub(crate) fn candidates(
        &self,
        req: &RequestView<'_>,
        client: IpAddr,
        forms: &[Form<'_>],
        cand: &mut Vec<u64>,
    ) {
        cand.clear();
        cand.extend_from_slice(&self.always);
        let mut mark = |list: &[u32]| {
            for &i in list {
                cand[i as usize / 64] |= 1 << (i % 64);
            }
        };
        for f in forms {
            if !self.exact.is_empty()
                && let Some(l) = self.exact.get(f.path)
            {
                mark(l);
            }
            for &len in &self.prefix_lens {
                if len > f.path.len() {
                    break;
                }
                if let Some(l) = self.prefix.get(&f.path[..len]) {
                    mark(l);
                }
            }
            for (slot, _) in f.hits.iter().enumerate().filter(|(_, hit)| **hit) {
                if let Some(&i) = self.regex_rule.get(slot) {
                    mark(&[i]);
                }
            }
        }
        let lens = match client {
            IpAddr::V4(_) => &self.source_lens4,
            IpAddr::V6(_) => &self.source_lens6,
        };
        for &len in lens {
            if let Some(l) = self.source.get(&(masked(client, len), len)) {
                mark(l);
            }
        }
        if !self.header.is_empty() {
            let mut buf = [0u8; NAME_MAX];
            for h in req.headers.iter() {
                let name = h.name.as_bytes();
                if name.len() > NAME_MAX {
                    mark(&self.header_all);
                    continue;
                }
                let lower = &mut buf[..name.len()];
                lower.copy_from_slice(name);
                lower.make_ascii_lowercase();
                if let Some(l) = self.header.get(&*lower) {
                    mark(l);
                }
            }
        }
    }
}
