//! Limits and session settings of the state machine. Every replica of a range must run with the
//! same values: they decide what apply does. (Today that is the operator's duty; the store
//! issue is to carry them in replicated state so a rolling change cannot split replicas.)

/// Settings of the key-value state machine.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KvConfig {
    pub max_key_bytes: usize,
    pub max_value_bytes: usize,
    /// Operations in one Txn branch, and compares.
    pub max_txn_ops: usize,
    /// A session not used for this long expires (by the state machine's clock).
    pub session_ttl_ms: u64,
    /// How far a client's clock may run ahead of the leaders' (see `session.rs`).
    pub max_clock_skew_ms: u64,
    /// Sessions are swept at every entry whose index is a multiple of this.
    pub session_sweep_interval: u64,
    /// Responses kept per session for retries.
    pub max_cached_responses: usize,
    /// Scan defaults and caps.
    pub scan_default_limit: u32,
    pub scan_max_limit: u32,
    pub scan_default_bytes: u64,
    pub scan_max_bytes: u64,
}

impl Default for KvConfig {
    fn default() -> Self {
        Self {
            max_key_bytes: 8 << 10,
            max_value_bytes: 8 << 20,
            max_txn_ops: 128,
            session_ttl_ms: 3_600_000,
            max_clock_skew_ms: 60_000,
            session_sweep_interval: 4096,
            max_cached_responses: 256,
            scan_default_limit: 1000,
            scan_max_limit: 10_000,
            scan_default_bytes: 4 << 20,
            scan_max_bytes: 64 << 20,
        }
    }
}

impl KvConfig {
    /// Checks the settings together.
    ///
    /// # Errors
    /// A message naming the field that cannot work.
    pub fn validate(&self) -> Result<(), String> {
        let positive = [
            ("max-key-bytes", self.max_key_bytes as u64),
            ("max-value-bytes", self.max_value_bytes as u64),
            ("max-txn-ops", self.max_txn_ops as u64),
            ("session-ttl-ms", self.session_ttl_ms),
            ("session-sweep-interval", self.session_sweep_interval),
            ("max-cached-responses", self.max_cached_responses as u64),
            ("scan-default-limit", u64::from(self.scan_default_limit)),
            ("scan-default-bytes", self.scan_default_bytes),
        ];
        if let Some((field, _)) = positive.iter().find(|(_, v)| *v == 0) {
            return Err(format!("{field}: must be positive"));
        }
        if self.scan_default_limit > self.scan_max_limit {
            return Err("scan-default-limit: must not exceed scan-max-limit".into());
        }
        if self.scan_default_bytes > self.scan_max_bytes {
            return Err("scan-default-bytes: must not exceed scan-max-bytes".into());
        }
        Ok(())
    }
}
