//! A sliding window of two counters in fixed buckets: no allocation, O(1)
//! updates, sums over the last `BUCKETS` bucket widths.

const BUCKETS: usize = 10;

#[derive(Debug, Clone, Default)]
pub(crate) struct Window {
    /// Bucket epoch (time / width) and its two counts.
    slots: [(i64, [u64; 2]); BUCKETS],
}

impl Window {
    fn width(window_us: i64) -> i64 {
        (window_us / BUCKETS as i64).max(1)
    }

    pub(crate) fn add(&mut self, window_us: i64, now_us: i64, a: u64, b: u64) {
        let epoch = now_us.div_euclid(Self::width(window_us));
        let slot = &mut self.slots[epoch.rem_euclid(BUCKETS as i64) as usize];
        if slot.0 != epoch {
            *slot = (epoch, [0, 0]);
        }
        slot.1[0] += a;
        slot.1[1] += b;
    }

    /// Both counts over the window ending now.
    pub(crate) fn sum(&self, window_us: i64, now_us: i64) -> [u64; 2] {
        let epoch = now_us.div_euclid(Self::width(window_us));
        self.slots
            .iter()
            .filter(|(e, _)| *e <= epoch && *e > epoch - BUCKETS as i64)
            .fold([0, 0], |acc, (_, c)| [acc[0] + c[0], acc[1] + c[1]])
    }

    pub(crate) fn clear(&mut self) {
        *self = Self::default();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn window_forgets_counts_older_than_its_length() {
        let mut w = Window::default();
        let win = 10_000_000; // 10 s
        w.add(win, 0, 5, 1);
        w.add(win, 4_000_000, 5, 0);
        assert_eq!(w.sum(win, 5_000_000), [10, 1]);
        assert_eq!(w.sum(win, 10_500_000), [5, 0]);
        assert_eq!(w.sum(win, 20_000_000), [0, 0]);
        // A slot reused by a later epoch starts from zero.
        w.add(win, 30_000_000, 1, 1);
        assert_eq!(w.sum(win, 30_000_000), [1, 1]);
    }
}
