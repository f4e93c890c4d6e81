//! YCSB's key choosers, as its core workload defines them: uniform, zipfian (Gray et al.'s
//! "Quickly generating billion-record synthetic databases", the constant 0.99), scrambled
//! zipfian (the popular keys spread over the keyspace by a hash), latest (zipfian from the
//! newest insert backwards) and hotspot (a hot fraction of the keys gets a hot fraction of the
//! operations). Each chooser is seeded, so a run's key sequence can be replayed.

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

/// YCSB's zipfian constant.
pub const ZIPFIAN_CONSTANT: f64 = 0.99;

/// FNV-1a over the 8 bytes of `x` (YCSB's `Utils.fnvhash64`): how YCSB turns a record number
/// into a key that is not in insert order.
pub fn fnv64(x: u64) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in x.to_le_bytes() {
        h ^= u64::from(byte);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h
}

fn zeta(n: u64, theta: f64) -> f64 {
    (1..=n).map(|i| 1.0 / (i as f64).powf(theta)).sum()
}

/// Zipfian over `[0, n)`: item 0 the most popular.
#[derive(Clone, Debug)]
pub struct Zipfian {
    items: u64,
    theta: f64,
    alpha: f64,
    zetan: f64,
    eta: f64,
}

impl Zipfian {
    pub fn new(items: u64) -> Self {
        let items = items.max(1);
        let theta = ZIPFIAN_CONSTANT;
        let zeta2 = zeta(2, theta);
        let zetan = zeta(items, theta);
        Self {
            items,
            theta,
            alpha: 1.0 / (1.0 - theta),
            zetan,
            eta: (1.0 - (2.0 / items as f64).powf(1.0 - theta)) / (1.0 - zeta2 / zetan),
        }
    }

    pub fn next(&self, rng: &mut impl Rng) -> u64 {
        let u: f64 = rng.random();
        let uz = u * self.zetan;
        if uz < 1.0 {
            return 0;
        }
        if uz < 1.0 + 0.5f64.powf(self.theta) {
            return 1.min(self.items - 1);
        }
        let v = (self.items as f64 * (self.eta * u - self.eta + 1.0).powf(self.alpha)) as u64;
        v.min(self.items - 1)
    }
}

/// How a workload picks the records it reads and updates.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Distribution {
    Uniform,
    Zipfian,
    Latest,
    Hotspot {
        /// Share of the records that are hot (`hotspotdatafraction`).
        data_fraction: f64,
        /// Share of the operations that go to them (`hotspotopnfraction`).
        op_fraction: f64,
    },
}

impl Distribution {
    /// YCSB's `requestdistribution` names.
    pub fn parse(name: &str, data_fraction: f64, op_fraction: f64) -> Option<Self> {
        match name {
            "uniform" => Some(Self::Uniform),
            "zipfian" => Some(Self::Zipfian),
            "latest" => Some(Self::Latest),
            "hotspot" => Some(Self::Hotspot {
                data_fraction,
                op_fraction,
            }),
            _ => None,
        }
    }
}

/// Picks record numbers below the number of records inserted so far.
#[derive(Clone, Debug)]
pub struct Chooser {
    distribution: Distribution,
    zipfian: Zipfian,
    rng: ChaCha8Rng,
}

impl Chooser {
    /// For `records` records (zipfian's table is built for that many; inserts past it are
    /// reached by latest, and by the others through the modulo, as in YCSB).
    pub fn new(distribution: Distribution, records: u64, seed: u64) -> Self {
        Self::with_zipfian(distribution, Zipfian::new(records), seed)
    }

    /// With a zipfian table built once (its constant costs O(records) to compute) and shared.
    pub fn with_zipfian(distribution: Distribution, zipfian: Zipfian, seed: u64) -> Self {
        Self {
            distribution,
            zipfian,
            rng: ChaCha8Rng::seed_from_u64(seed),
        }
    }

    /// A record number in `[0, inserted)`.
    pub fn next(&mut self, inserted: u64) -> u64 {
        let n = inserted.max(1);
        match self.distribution {
            Distribution::Uniform => self.rng.random_range(0..n),
            // Scrambled: the popular items spread over the keyspace, not clustered at its start.
            Distribution::Zipfian => fnv64(self.zipfian.next(&mut self.rng)) % n,
            Distribution::Latest => n - 1 - self.zipfian.next(&mut self.rng) % n,
            Distribution::Hotspot {
                data_fraction,
                op_fraction,
            } => {
                let hot = ((n as f64 * data_fraction) as u64).clamp(1, n);
                if self.rng.random_bool(op_fraction.clamp(0.0, 1.0)) || hot == n {
                    self.rng.random_range(0..hot)
                } else {
                    self.rng.random_range(hot..n)
                }
            }
        }
    }

    /// A uniform number in `[low, high]` (scan lengths).
    pub fn uniform(&mut self, low: u64, high: u64) -> u64 {
        self.rng.random_range(low..=high.max(low))
    }

    /// A uniform fraction in `[0, 1)` (choosing the operation).
    pub fn fraction(&mut self) -> f64 {
        self.rng.random()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn histogram(d: Distribution, n: u64, draws: usize) -> Vec<u64> {
        let mut c = Chooser::new(d, n, 7);
        let mut counts = vec![0u64; n as usize];
        for _ in 0..draws {
            let k = c.next(n);
            assert!(k < n, "{d:?} drew {k} of {n}");
            counts[k as usize] += 1;
        }
        counts
    }

    #[test]
    fn zipfian_favours_few_items_and_stays_in_bounds() {
        let z = Zipfian::new(1000);
        let mut rng = ChaCha8Rng::seed_from_u64(1);
        let mut counts = vec![0u64; 1000];
        for _ in 0..100_000 {
            counts[z.next(&mut rng) as usize] += 1;
        }
        // Item 0 of 1,000 under theta 0.99 takes about 1/zeta(1000) ~ 13% of the draws.
        assert!((10_000..16_000).contains(&counts[0]), "{}", counts[0]);
        assert!(counts[0] > counts[1] && counts[1] > counts[10] && counts[10] > counts[500]);
    }

    #[test]
    fn the_scrambled_hot_keys_are_spread_over_the_keyspace() {
        let counts = histogram(Distribution::Zipfian, 1000, 100_000);
        let hottest = (0..1000).max_by_key(|&i| counts[i]).expect("items");
        assert_ne!(
            hottest, 0,
            "scrambling moves the hottest item away from record 0"
        );
        let top = counts.iter().max().copied().unwrap_or_default();
        assert!(top > 5_000, "still skewed: {top}");
    }

    #[test]
    fn latest_prefers_the_newest_and_hotspot_keeps_its_fractions() {
        let latest = histogram(Distribution::Latest, 1000, 50_000);
        assert!(latest[999] > latest[500] && latest[999] > 5_000);
        let hot = Distribution::Hotspot {
            data_fraction: 0.2,
            op_fraction: 0.8,
        };
        let counts = histogram(hot, 1000, 50_000);
        let in_hot: u64 = counts[..200].iter().sum();
        assert!((38_000..42_000).contains(&in_hot), "{in_hot}");
        let uniform = histogram(Distribution::Uniform, 10, 50_000);
        assert!(uniform.iter().all(|&c| (4_500..5_500).contains(&c)));
    }
}
