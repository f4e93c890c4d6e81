//! The simulated network: per-message delay with a long tail (which also reorders), drops,
//! duplicates, symmetric and one-way partitions, and clogged links (FoundationDB's favourite
//! fault: a link that delivers, but very late).

use std::collections::BTreeSet;

use rand::Rng;
use rand_chacha::ChaCha8Rng;

/// Time in simulated microseconds; one nominal tick is `TICK_US`.
pub type Micros = u64;
pub const TICK_US: Micros = 1_000;

/// Prints one line of a narrated run, stamped with its simulated time.
pub fn narrate(now: Micros, what: &str) {
    println!("{:>8.1} ticks  {what}", now as f64 / TICK_US as f64);
}

#[derive(Clone, Debug)]
pub struct NetworkConfig {
    pub drop_rate: f64,
    pub duplicate_rate: f64,
    /// Typical one-way delay.
    pub base_delay_us: Micros,
    /// Chance that a message takes 10-50 times longer (GC pause, retransmit, queueing).
    pub long_tail_rate: f64,
}

impl NetworkConfig {
    pub fn random(rng: &mut ChaCha8Rng) -> Self {
        let lossy = rng.random_bool(0.7);
        Self {
            drop_rate: if lossy {
                rng.random_range(0.0..0.10)
            } else {
                0.0
            },
            duplicate_rate: if lossy {
                rng.random_range(0.0..0.05)
            } else {
                0.0
            },
            base_delay_us: rng.random_range(50..800),
            long_tail_rate: rng.random_range(0.0..0.03),
        }
    }
}

pub struct Network {
    pub config: NetworkConfig,
    /// Directed links `(from, to)` that lose everything.
    cut: BTreeSet<(u64, u64)>,
    /// Directed links that deliver everything very late.
    clogged: BTreeSet<(u64, u64)>,
    /// Message types lost everywhere ("drop one message type in one group").
    dropped_types: BTreeSet<i32>,
}

/// What to do with one message.
pub enum Fate {
    Drop,
    /// Deliver after each of these delays (two for a duplicate).
    Deliver(Vec<Micros>),
}

impl Network {
    pub fn new(config: NetworkConfig) -> Self {
        Self {
            config,
            cut: BTreeSet::new(),
            clogged: BTreeSet::new(),
            dropped_types: BTreeSet::new(),
        }
    }

    pub fn fate(&self, rng: &mut ChaCha8Rng, from: u64, to: u64, msg_type: i32) -> Fate {
        if self.cut.contains(&(from, to))
            || self.dropped_types.contains(&msg_type)
            || rng.random_bool(self.config.drop_rate)
        {
            return Fate::Drop;
        }
        let copies = if rng.random_bool(self.config.duplicate_rate) {
            2
        } else {
            1
        };
        let clogged = self.clogged.contains(&(from, to));
        let delays = (0..copies)
            .map(|_| {
                let base = self.config.base_delay_us;
                let mut d = rng.random_range(base / 2..=base + base / 2);
                if clogged {
                    d += rng.random_range(5..30) * TICK_US;
                } else if rng.random_bool(self.config.long_tail_rate) {
                    d *= rng.random_range(10..50);
                }
                d
            })
            .collect();
        Fate::Deliver(delays)
    }

    /// Whether the link `from -> to` loses everything now.
    pub fn is_cut(&self, from: u64, to: u64) -> bool {
        self.cut.contains(&(from, to))
    }

    pub fn cut_one_way(&mut self, from: u64, to: u64) {
        self.cut.insert((from, to));
    }

    /// Splits the nodes into `side` and the rest, both directions.
    pub fn partition(&mut self, side: &[u64], all: &[u64]) {
        for &a in side {
            for &b in all {
                if !side.contains(&b) {
                    self.cut.insert((a, b));
                    self.cut.insert((b, a));
                }
            }
        }
    }

    pub fn drop_type(&mut self, msg_type: i32) {
        self.dropped_types.insert(msg_type);
    }

    pub fn clog(&mut self, from: u64, to: u64) {
        self.clogged.insert((from, to));
    }

    /// Restores every link.
    pub fn heal(&mut self) {
        self.cut.clear();
        self.clogged.clear();
        self.dropped_types.clear();
    }

    /// Makes the network reliable (still delayed and reordered) for the liveness phase.
    pub fn calm(&mut self) {
        self.heal();
        self.config.drop_rate = 0.0;
        self.config.duplicate_rate = 0.0;
        self.config.long_tail_rate = 0.0;
    }

    pub fn describe_cuts(&self) -> String {
        format!("{:?}", self.cut)
    }
}
