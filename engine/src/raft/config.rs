//! Settings of one Raft group member, validated before use.

use super::error::ConfigError;

/// Settings of one Raft replica. Times are in ticks: the core has no clock, its caller ticks it.
///
/// `Default` gives the production settings of DESIGN section 12 except for `id`, which the caller
/// must set.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Config {
    /// This replica's id within its group; never 0.
    pub id: u64,
    /// Followers start an election after a randomized timeout in `[election_timeout_ticks,
    /// 2 * election_timeout_ticks)` without hearing from a leader (Raft paper 5.2).
    pub election_timeout_ticks: u64,
    /// The leader sends heartbeats every this many ticks; must be below the election timeout.
    pub heartbeat_interval_ticks: u64,
    /// Ask for pre-votes before a real election, so a node that was cut off does not disrupt
    /// the group by bumping the term when it returns (Raft thesis 9.6).
    pub pre_vote: bool,
    /// The leader steps down when it has not heard from a quorum within an election timeout, and
    /// followers that heard from a leader within one refuse votes (Raft thesis 6.2, 9.6).
    /// With neither this nor `pre_vote`, a replica removed from the group can depose leader
    /// after leader by campaigning with higher terms (thesis 4.2.3): keep at least one on.
    pub check_quorum: bool,
    /// Serve linearizable reads from the leader lease without a heartbeat round (Raft thesis
    /// 6.4.1). Needs `check_quorum`.
    pub lease_reads: bool,
    /// How much shorter than the election timeout the lease is, in ticks, so that tick rates
    /// drifting apart cannot let a deposed leader serve a stale read. With relative drift `d`
    /// between any two nodes' tick rates, choose at least `election_timeout_ticks * 2d + 1`.
    pub lease_drift_margin_ticks: u64,
    /// Appends in flight to one follower in the replicate state before the leader waits.
    pub max_inflight_msgs: usize,
    /// Size cap of the entries of one append message (at least one entry is always sent).
    pub max_size_per_msg_bytes: u64,
    /// Proposals are refused while the leader's uncommitted entries exceed this many bytes.
    pub max_uncommitted_size_bytes: u64,
    /// Size cap of the committed entries handed out in one `Ready`.
    pub max_committed_size_per_ready_bytes: u64,
    /// ReadIndex requests a leader holds while it waits to commit its first entry or a
    /// heartbeat round; more are refused.
    pub max_pending_reads: usize,
    /// Seed of the election-timeout jitter, for deterministic simulation.
    pub seed: u64,
    /// The last index the caller had applied when this replica (re)started.
    pub applied: u64,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            id: 0,
            election_timeout_ticks: 10,
            heartbeat_interval_ticks: 1,
            pre_vote: true,
            check_quorum: true,
            lease_reads: false,
            lease_drift_margin_ticks: 2,
            max_inflight_msgs: 32,
            max_size_per_msg_bytes: 1024 * 1024,
            max_uncommitted_size_bytes: 64 * 1024 * 1024,
            max_committed_size_per_ready_bytes: 16 * 1024 * 1024,
            max_pending_reads: 4096,
            seed: 0,
            applied: 0,
        }
    }
}

impl Config {
    /// A default configuration for replica `id`.
    pub fn new(id: u64) -> Self {
        Self {
            id,
            ..Self::default()
        }
    }

    /// Checks every setting and the relations between them.
    ///
    /// # Errors
    /// A [`ConfigError`] naming the field that is wrong and why.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let invalid = |field: &'static str, reason: String| Err(ConfigError { field, reason });
        if self.id == 0 {
            return invalid("id", "0 is reserved for 'no replica'".into());
        }
        if self.heartbeat_interval_ticks == 0 {
            return invalid("heartbeat_interval_ticks", "must be at least 1".into());
        }
        if self.election_timeout_ticks <= self.heartbeat_interval_ticks {
            return invalid(
                "election_timeout_ticks",
                format!(
                    "{} must exceed heartbeat_interval_ticks ({}), or followers time out between heartbeats",
                    self.election_timeout_ticks, self.heartbeat_interval_ticks
                ),
            );
        }
        if self.max_inflight_msgs == 0 {
            return invalid("max_inflight_msgs", "must be at least 1".into());
        }
        if self.max_size_per_msg_bytes == 0 {
            return invalid("max_size_per_msg_bytes", "must be at least 1".into());
        }
        if self.max_uncommitted_size_bytes == 0 {
            return invalid("max_uncommitted_size_bytes", "must be at least 1".into());
        }
        if self.max_committed_size_per_ready_bytes == 0 {
            return invalid(
                "max_committed_size_per_ready_bytes",
                "must be at least 1".into(),
            );
        }
        if self.lease_reads {
            if !self.check_quorum {
                return invalid(
                    "lease_reads",
                    "needs check_quorum: without it followers may vote while the leader still \
                     believes it holds the lease"
                        .into(),
                );
            }
            if self.lease_drift_margin_ticks == 0 {
                return invalid(
                    "lease_drift_margin_ticks",
                    "must be at least 1 with lease_reads: a lease as long as the election \
                     timeout is unsafe under any clock drift"
                        .into(),
                );
            }
            if self.lease_drift_margin_ticks >= self.election_timeout_ticks {
                return invalid(
                    "lease_drift_margin_ticks",
                    format!(
                        "{} leaves no lease: it must be below election_timeout_ticks ({})",
                        self.lease_drift_margin_ticks, self.election_timeout_ticks
                    ),
                );
            }
        }
        Ok(())
    }

    /// Ticks a lease lasts from the send time of the heartbeat a quorum acknowledged.
    pub(crate) fn lease_ticks(&self) -> u64 {
        self.election_timeout_ticks
            .saturating_sub(self.lease_drift_margin_ticks)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_with_an_id_is_valid() {
        assert_eq!(Config::new(1).validate(), Ok(()));
    }

    #[test]
    fn bad_settings_name_their_field() {
        let cases: Vec<(Config, &str)> = vec![
            (Config::default(), "id"),
            (
                Config {
                    heartbeat_interval_ticks: 10,
                    ..Config::new(1)
                },
                "election_timeout_ticks",
            ),
            (
                Config {
                    heartbeat_interval_ticks: 0,
                    ..Config::new(1)
                },
                "heartbeat_interval_ticks",
            ),
            (
                Config {
                    lease_reads: true,
                    check_quorum: false,
                    ..Config::new(1)
                },
                "lease_reads",
            ),
            (
                Config {
                    lease_reads: true,
                    lease_drift_margin_ticks: 10,
                    ..Config::new(1)
                },
                "lease_drift_margin_ticks",
            ),
            (
                Config {
                    lease_reads: true,
                    lease_drift_margin_ticks: 0,
                    ..Config::new(1)
                },
                "lease_drift_margin_ticks",
            ),
            (
                Config {
                    max_inflight_msgs: 0,
                    ..Config::new(1)
                },
                "max_inflight_msgs",
            ),
        ];
        for (config, field) in cases {
            let err = config.validate().expect_err(field);
            assert_eq!(err.field, field, "{err}");
            assert!(!err.to_string().is_empty());
        }
    }
}
