//! Balancing algorithms over a pool's endpoints. Each picks among the
//! endpoints a filter admits (usable, not yet tried) without allocating.

use super::Endpoint;

/// A stable 64-bit hash (FNV-1a, then the splitmix64 finalizer): the same on
/// every worker, process and release, so hashing is consistent across
/// proxies.
pub fn stable_hash(bytes: &[u8], seed: u64) -> u64 {
    let mut h = 0xcbf2_9ce4_8422_2325u64 ^ seed.wrapping_mul(0x9e37_79b9_7f4a_7c15);
    for &b in bytes {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h ^= h >> 30;
    h = h.wrapping_mul(0xbf58_476d_1ce4_e5b9);
    h ^= h >> 27;
    h = h.wrapping_mul(0x94d0_49bb_1331_11eb);
    h ^ (h >> 31)
}

const EMPTY: u16 = u16::MAX;

/// A weighted Maglev lookup table (Eisenbud et al., NSDI 2016): each entry
/// names an endpoint; a key hash picks an entry. Endpoints fill entries
/// along their own permutation of the table, in turns proportional to their
/// weights, so shares follow weights and removing one endpoint moves few
/// keys besides its own. Built once per snapshot.
#[derive(Debug, Clone)]
pub struct Maglev {
    table: Box<[u16]>,
}

impl Maglev {
    /// `size` should be a prime well above the endpoint count (see
    /// `MAGLEV_TABLE_SIZE`). Endpoints are identified by address, so the
    /// table does not depend on their order.
    pub fn new(endpoints: &[Endpoint], size: usize) -> Self {
        let n = endpoints.len();
        assert!(n < EMPTY as usize, "too many endpoints for a Maglev table");
        assert!(size >= 2);
        if n == 0 {
            return Self {
                table: Box::new([]),
            };
        }
        let perm: Vec<(usize, usize)> = endpoints
            .iter()
            .map(|e| {
                let id = e.addr.to_string();
                let offset = (stable_hash(id.as_bytes(), 1) % size as u64) as usize;
                let skip = (stable_hash(id.as_bytes(), 2) % (size as u64 - 1)) as usize + 1;
                (offset, skip)
            })
            .collect();
        let weights: Vec<u64> = endpoints
            .iter()
            .map(|e| u64::from(e.weight.max(1)))
            .collect();
        let max_w = *weights.iter().max().expect("non-empty");
        let mut credit = vec![0u64; n];
        let mut next = vec![0usize; n];
        let mut table = vec![EMPTY; size];
        let mut filled = 0;
        while filled < size {
            for i in 0..n {
                credit[i] += weights[i];
                if credit[i] < max_w {
                    continue;
                }
                credit[i] -= max_w;
                let (offset, skip) = perm[i];
                loop {
                    let c = (offset + next[i] * skip) % size;
                    next[i] += 1;
                    if table[c] == EMPTY {
                        table[c] = i as u16;
                        filled += 1;
                        break;
                    }
                }
                if filled == size {
                    break;
                }
            }
        }
        Self {
            table: table.into(),
        }
    }

    pub fn len(&self) -> usize {
        self.table.len()
    }

    pub fn is_empty(&self) -> bool {
        self.table.is_empty()
    }

    /// The endpoint owning `hash`.
    pub fn lookup(&self, hash: u64) -> Option<usize> {
        if self.table.is_empty() {
            return None;
        }
        Some(self.table[(hash % self.table.len() as u64) as usize] as usize)
    }

    /// The owner of `hash` if `ok` admits it, else the next admitted entry
    /// along the table: keys of an unusable endpoint spread over the others
    /// while every other key stays where it is.
    pub fn pick(&self, hash: u64, ok: impl Fn(usize) -> bool) -> Option<usize> {
        let m = self.table.len();
        if m == 0 {
            return None;
        }
        let start = (hash % m as u64) as usize;
        (0..m)
            .map(|k| self.table[(start + k) % m] as usize)
            .find(|&i| ok(i))
    }
}

/// Plain round-robin: the first admitted endpoint at or after the cursor.
pub(crate) fn round_robin(
    cursor: &mut usize,
    n: usize,
    ok: impl Fn(usize) -> bool,
) -> Option<usize> {
    let start = *cursor % n.max(1);
    let i = (0..n).map(|k| (start + k) % n).find(|&i| ok(i))?;
    *cursor = i + 1;
    Some(i)
}

/// nginx's smooth weighted round-robin over the admitted endpoints: each
/// gains its weight, the largest is picked and loses the total.
pub(crate) fn smooth_weighted(
    current: &mut [i64],
    weights: &[u32],
    ok: impl Fn(usize) -> bool,
) -> Option<usize> {
    let mut total = 0i64;
    let mut best: Option<usize> = None;
    for i in 0..weights.len() {
        if !ok(i) {
            continue;
        }
        let w = i64::from(weights[i].max(1));
        current[i] += w;
        total += w;
        if best.is_none_or(|b| current[i] > current[b]) {
            best = Some(i);
        }
    }
    let b = best?;
    current[b] -= total;
    Some(b)
}

/// Fewest in-flight requests per unit of weight; ties go to the first at or
/// after the cursor, which then moves on, so equal loads rotate.
pub(crate) fn least_conn(
    cursor: &mut usize,
    in_flight: impl Fn(usize) -> u32,
    weights: &[u32],
    ok: impl Fn(usize) -> bool,
) -> Option<usize> {
    let n = weights.len();
    let start = *cursor % n.max(1);
    let mut best: Option<usize> = None;
    for k in 0..n {
        let i = (start + k) % n;
        if !ok(i) {
            continue;
        }
        let better = match best {
            None => true,
            // a/wa < b/wb  <=>  a*wb < b*wa
            Some(b) => {
                u64::from(in_flight(i)) * u64::from(weights[b].max(1))
                    < u64::from(in_flight(b)) * u64::from(weights[i].max(1))
            }
        };
        if better {
            best = Some(i);
        }
    }
    let b = best?;
    *cursor = b + 1;
    Some(b)
}

#[cfg(test)]
mod tests {
    use std::net::SocketAddr;

    use super::*;

    fn eps(n: usize) -> Vec<Endpoint> {
        (0..n)
            .map(|i| {
                Endpoint::new(SocketAddr::from((
                    [10, 0, (i / 250) as u8, (i % 250) as u8 + 1],
                    8080,
                )))
            })
            .collect()
    }

    #[test]
    fn stable_hash_is_fixed_across_builds() {
        // Pinned values: changing the hash reshuffles every consistent-hash
        // pool in a fleet, so it must be deliberate.
        assert_eq!(stable_hash(b"", 0), stable_hash(b"", 0));
        assert_ne!(stable_hash(b"a", 0), stable_hash(b"a", 1));
        assert_ne!(stable_hash(b"a", 0), stable_hash(b"b", 0));
        assert_eq!(stable_hash(b"ferrogate", 0), 0xf6b0_c6d7_098d_b3c4);
    }

    #[test]
    fn round_robin_skips_unusable_endpoints() {
        let mut c = 0;
        let picks: Vec<usize> = (0..6)
            .map(|_| round_robin(&mut c, 4, |i| i != 2).unwrap())
            .collect();
        assert_eq!(picks, vec![0, 1, 3, 0, 1, 3]);
        assert_eq!(round_robin(&mut c, 4, |_| false), None);
    }

    #[test]
    fn smooth_weighted_interleaves_like_nginx() {
        // nginx's example: weights 5, 1, 1 give a a b a c a a.
        let mut cur = [0i64; 3];
        let seq: Vec<usize> = (0..7)
            .map(|_| smooth_weighted(&mut cur, &[5, 1, 1], |_| true).unwrap())
            .collect();
        assert_eq!(seq, vec![0, 0, 1, 0, 2, 0, 0]);
    }

    #[test]
    fn least_conn_prefers_fewest_in_flight_per_weight_and_rotates_ties() {
        let mut c = 0;
        let load = [3u32, 1, 1, 0];
        let w = [1u32, 1, 1, 1];
        assert_eq!(least_conn(&mut c, |i| load[i], &w, |_| true), Some(3));
        assert_eq!(least_conn(&mut c, |i| load[i], &w, |i| i != 3), Some(1));
        assert_eq!(least_conn(&mut c, |i| load[i], &w, |i| i != 3), Some(2));
        // Weight 4 with 3 in flight beats weight 1 with 1.
        let w = [4u32, 1, 1, 1];
        assert_eq!(least_conn(&mut c, |i| load[i], &w, |i| i != 3), Some(0));
    }

    #[test]
    fn maglev_fills_every_entry_in_proportion_to_weight() {
        let mut e = eps(3);
        e[0].weight = 3;
        let m = Maglev::new(&e, 65_537);
        let mut counts = [0usize; 3];
        for i in 0..m.len() as u64 {
            counts[m.lookup(i).unwrap()] += 1;
        }
        let share0 = counts[0] as f64 / m.len() as f64;
        assert!((share0 - 0.6).abs() < 0.01, "{counts:?}");
        assert!(
            (counts[1] as f64 / counts[2] as f64 - 1.0).abs() < 0.02,
            "{counts:?}"
        );
    }

    #[test]
    fn maglev_does_not_depend_on_endpoint_order() {
        let e = eps(5);
        let mut r = e.clone();
        r.reverse();
        let a = Maglev::new(&e, 65_537);
        let b = Maglev::new(&r, 65_537);
        for k in 0..1000u64 {
            let h = stable_hash(&k.to_le_bytes(), 0);
            assert_eq!(e[a.lookup(h).unwrap()].addr, r[b.lookup(h).unwrap()].addr);
        }
    }

    #[test]
    fn maglev_keeps_keys_when_one_of_ten_endpoints_is_removed() {
        let all = eps(10);
        let removed = all[4].addr;
        let rest: Vec<Endpoint> = all.iter().copied().filter(|e| e.addr != removed).collect();
        let before = Maglev::new(&all, 65_537);
        let after = Maglev::new(&rest, 65_537);
        let (mut kept, mut moved_from_others, mut on_removed) = (0, 0, 0);
        let keys = 10_000u64;
        for k in 0..keys {
            let h = stable_hash(format!("user-{k}").as_bytes(), 0);
            let a = all[before.lookup(h).unwrap()].addr;
            let b = rest[after.lookup(h).unwrap()].addr;
            if a == removed {
                on_removed += 1;
            } else if a == b {
                kept += 1;
            } else {
                moved_from_others += 1;
            }
        }
        let survivors = keys - on_removed;
        let retention = kept as f64 / survivors as f64;
        eprintln!(
            "maglev rebuild: {on_removed} keys on the removed endpoint; {kept}/{survivors} others kept ({:.2} %)",
            retention * 100.0
        );
        assert!(retention >= 0.95, "{retention}");
        assert!(moved_from_others < survivors / 20);
    }

    #[test]
    fn maglev_probing_moves_only_the_keys_of_an_unusable_endpoint() {
        let all = eps(10);
        let m = Maglev::new(&all, 65_537);
        let down = 4;
        let mut moved = 0;
        for k in 0..10_000u64 {
            let h = stable_hash(format!("user-{k}").as_bytes(), 0);
            let owner = m.lookup(h).unwrap();
            let picked = m.pick(h, |i| i != down).unwrap();
            if owner == down {
                assert_ne!(picked, down);
                moved += 1;
            } else {
                assert_eq!(picked, owner, "a key of a healthy endpoint moved");
            }
        }
        assert!((800..1200).contains(&moved), "{moved}");
    }
}
