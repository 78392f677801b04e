//! `Hist`: the latency histogram of the subscribers and of the publisher's
//! schedule lag.

/// Log-linear histogram of nanosecond values (64 sub-buckets per power of two,
/// so quantiles are within ~1.6%).
#[derive(Clone)]
pub struct Hist {
    pub counts: Vec<u64>,
    pub n: u64,
    pub max: u64,
}

impl Hist {
    pub fn new() -> Hist {
        Hist { counts: vec![0; 59 * 64], n: 0, max: 0 }
    }

    fn index(v: u64) -> usize {
        if v < 128 {
            return v as usize;
        }
        let e = 63 - v.leading_zeros() as usize; // ≥ 7
        (e - 6) * 64 + (v >> (e - 6)) as usize
    }

    fn value(i: usize) -> u64 {
        if i < 128 {
            return i as u64;
        }
        let (e, sub) = (i / 64 + 5, (i % 64 + 64) as u64);
        (sub << (e - 6)) + (1 << (e - 6)) / 2
    }

    pub fn record(&mut self, v: u64) {
        self.counts[Self::index(v)] += 1;
        self.n += 1;
        self.max = self.max.max(v);
    }

    pub fn quantile(&self, q: f64) -> Option<u64> {
        let target = ((q * self.n as f64).ceil() as u64).max(1);
        let mut seen = 0;
        for (i, c) in self.counts.iter().enumerate() {
            seen += c;
            if seen >= target {
                return Some(Self::value(i).min(self.max));
            }
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histogram_quantiles_are_close() {
        let mut h = Hist::new();
        (1..=100_000u64).for_each(|v| h.record(v * 1000));
        let p50 = h.quantile(0.5).unwrap() as f64;
        assert!((p50 / 50_000_000.0 - 1.0).abs() < 0.02, "{p50}");
        assert_eq!(h.quantile(1.0), Some(100_000_000));
    }
}
