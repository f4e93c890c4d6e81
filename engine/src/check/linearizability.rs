//! Linearizability checker for the key-value histories recorded by the simulator.
//!
//! # What it checks
//!
//! Every key is an independent register that starts absent (`None`): `Put` overwrites it, `Get`
//! reads it. A history is linearizable iff its operations fit in one total order that respects
//! real time (A precedes B iff A responded before B was invoked, `A.ret < B.call`) and in which
//! every `Get` observes the latest earlier `Put` (or `None` if there is none). Linearizability is
//! local, so each key's sub-history is checked on its own (P-compositionality, as in Porcupine):
//! the search space is per key, not per history.
//!
//! # Unknown outcomes
//!
//! A `Put` with no response (`ret: None`: the client timed out, crashed, or the run ended) may have
//! taken effect at any instant after its call, or never: it returns at +infinity and may be left
//! out of the order. A `Get` with no response constrains nothing and is ignored.
//!
//! # Algorithm
//!
//! Wing & Gong's backtracking search ("Testing and verifying concurrent objects", JPDC 1993) with
//! Lowe's just-in-time linearization and memoization ("Testing for linearizability", Concurrency
//! and Computation: Practice and Experience, 2017), as in Porcupine
//! (<https://github.com/anishathalye/porcupine>). Call and return events sit in a doubly linked
//! list sorted by time. Walking from the head, the search linearizes the first call it can (the
//! register accepts the op and the resulting state is new), unlinks that op and restarts from the
//! head; meeting a return means that op could not be placed before it returned, so the last choice
//! is undone and the walk resumes after it. A key is linearizable once every completed op is placed.
//! Each (set of placed ops, register value) is expanded at most once, so the cost is bounded by the
//! number of distinct states, which stays near the op count when concurrency is low.
//!
//! Three reductions shrink the search without changing the answer. An unknown `Put` whose value
//! no completed `Get` observed is dropped: placing it can only hide values others need. An
//! unknown `Put` that is the only writer of an observed value must precede every `Get` that saw
//! it, so it becomes a completed op returning when the first such `Get` did. And a `Put` is not
//! placed over a value that some unplaced `Get` still needs while no unplaced `Put` can write it
//! again. With them, a history whose values are unique per key costs about one state per op
//! unless many writes are concurrent; the `budget` bounds the rest.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::hash::{BuildHasherDefault, Hasher};

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum OpKind {
    /// Write `value` to the key.
    Put { value: u64 },
    /// A read that returned `observed` (None = key absent).
    Get { observed: Option<u64> },
}

#[derive(Clone, Debug)]
pub struct Operation {
    pub client: u64,
    pub key: u64,
    pub kind: OpKind,
    /// Logical time of the invocation. Times are unique across the whole history (an event counter).
    pub call: u64,
    /// Logical time of the response; None = outcome unknown (only for Put: the write may take
    /// effect at any time after `call`, or never). Gets with no response are ignored.
    pub ret: Option<u64>,
}

#[derive(Debug)]
pub struct Violation {
    pub key: u64,
    /// The key's sub-history, sorted by call time, for printing (`#i` in `explanation` indexes it).
    pub history: Vec<Operation>,
    /// Human-readable explanation: the longest partial linearization found and the op that could
    /// not be placed after it.
    pub explanation: String,
}

#[derive(Debug)]
pub enum CheckError {
    Violation(Violation),
    /// The search for one key exceeded `budget` explored states; the history is too concurrent to decide.
    TooComplex {
        key: u64,
        ops: usize,
        explored: u64,
    },
    /// `op` responded before it was invoked: a bug in the recorder, not in the system under test.
    Malformed {
        key: u64,
        op: Operation,
    },
}

#[derive(Debug, Default)]
pub struct CheckStats {
    /// Keys checked.
    pub keys: usize,
    /// Operations examined, including ignored Gets without a response.
    pub ops: usize,
    /// Search states explored, summed over keys.
    pub explored: u64,
}

/// Checks every key's sub-history; `budget` bounds the states explored per key.
///
/// Keys are checked in ascending order, so the reported key is the same on every run.
pub fn check(history: &[Operation], budget: u64) -> Result<CheckStats, CheckError> {
    let mut by_key: BTreeMap<u64, Vec<&Operation>> = BTreeMap::new();
    for op in history {
        by_key.entry(op.key).or_default().push(op);
    }
    let mut stats = CheckStats::default();
    for (key, mut ops) in by_key {
        // Stable sort: ties (a recorder bug) keep their input order, so reports stay deterministic.
        ops.sort_by_key(|op| op.call);
        if let Some(op) = ops.iter().find(|op| op.ret.is_some_and(|r| r < op.call)) {
            let op = (*op).clone();
            return Err(CheckError::Malformed { key, op });
        }
        stats.keys += 1;
        stats.ops += ops.len();
        stats.explored += check_key(key, &ops, budget)?;
    }
    Ok(stats)
}

fn violation(key: u64, ops: &[&Operation], explanation: String) -> CheckError {
    let history = ops.iter().map(|&op| op.clone()).collect();
    CheckError::Violation(Violation {
        key,
        history,
        explanation,
    })
}

/// An op the search must place (`deadline` is Some) or may place (an unknown put).
struct Slot {
    op: usize,
    deadline: Option<u64>,
    put: bool,
    /// Dense id of the value written or observed; 0 is absent.
    id: usize,
}

/// `ops` is one key's sub-history sorted by call time, with `call <= ret` already verified.
/// Returns the number of states explored.
fn check_key(key: u64, ops: &[&Operation], budget: u64) -> Result<u64, CheckError> {
    // Dense ids keep the register state and the per-value counters in plain vectors.
    let mut ids: HashMap<Option<u64>, usize> = HashMap::from([(None, 0)]);
    let mut per_id = vec![(0u32, u64::MAX)]; // (writers, earliest response of a read of it)
    let mut id_of = Vec::with_capacity(ops.len());
    for op in ops {
        let value = match op.kind {
            OpKind::Put { value } => Some(value),
            OpKind::Get { observed } => observed,
        };
        let fresh = per_id.len();
        let id = *ids.entry(value).or_insert(fresh);
        if id == fresh {
            per_id.push((0, u64::MAX));
        }
        match (&op.kind, op.ret) {
            (OpKind::Put { .. }, _) => per_id[id].0 += 1,
            (OpKind::Get { .. }, Some(ret)) => per_id[id].1 = per_id[id].1.min(ret),
            (OpKind::Get { .. }, None) => {}
        }
        id_of.push(id);
    }
    let mut slots = Vec::new();
    for (i, op) in ops.iter().enumerate() {
        let (id, put) = (id_of[i], matches!(op.kind, OpKind::Put { .. }));
        let (writers, seen) = per_id[id];
        let deadline = match op.ret {
            Some(_) if !put && id != 0 && writers == 0 => {
                let explanation = format!("{} observed a value no put wrote.", label(i, op));
                return Err(violation(key, ops, explanation));
            }
            Some(ret) => Some(ret),
            None if !put || seen == u64::MAX => continue,
            // The sole writer of a value must precede every read of it. A read that returned
            // before the call is left for the search to reject, keeping events in order.
            None if writers == 1 && seen >= op.call => Some(seen),
            None => None,
        };
        slots.push(Slot {
            op: i,
            deadline,
            put,
            id,
        });
    }
    let completed = slots.iter().filter(|s| s.deadline.is_some()).count();

    // Event list: entry 0 is the head, 1..=m the events by time, m + 1 the tail. Calls sort
    // before returns at equal times because A precedes B only if A.ret < B.call.
    let mut events: Vec<(u64, bool, usize)> = Vec::new();
    for (s, slot) in slots.iter().enumerate() {
        events.push((ops[slot.op].call, false, s));
        events.extend(slot.deadline.map(|ret| (ret, true, s)));
    }
    events.sort_unstable();
    let tail = events.len() + 1;
    let mut slot_of = vec![0; tail + 1];
    let mut partner = vec![None; tail + 1]; // a call's return entry
    let mut call_entry = vec![0; slots.len()];
    for (e, &(_, is_return, s)) in (1..).zip(&events) {
        slot_of[e] = s;
        if is_return {
            partner[call_entry[s]] = Some(e);
        } else {
            call_entry[s] = e;
        }
    }
    let is_call = |e: usize| e != tail && call_entry[slot_of[e]] == e;
    let mut next: Vec<usize> = (1..=tail + 1).collect();
    let mut prev: Vec<usize> = (0..=tail).map(|e| e.saturating_sub(1)).collect();

    // Unplaced [reads, writes] per id, unknown writes included.
    let mut left = vec![[0u32; 2]; per_id.len()];
    for slot in &slots {
        left[slot.id][usize::from(slot.put)] += 1;
    }
    let zobrist: Vec<u64> = (1..=slots.len() as u64).map(mix).collect();
    let words = slots.len().div_ceil(64);
    let mut visit = vec![0u64; words + 1]; // placed-op bitset, then the state id
    let mut cache = Cache::default();
    let mut hash = 0u64; // XOR of zobrist over placed ops, kept incrementally
    let mut state = 0usize;
    let mut placed = 0; // completed ops placed
    let mut stack: Vec<(usize, usize)> = Vec::new(); // (call entry, state before it)

    // The deepest partial linearization, as slots; `stack[..shared]` matches `best[..shared]`,
    // so recording a new best copies only what was pushed since, keeping recording linear.
    let (mut best, mut best_placed, mut shared) = (Vec::new(), 0, 0);
    let mut explored = 0u64;
    let mut entry = next[0];
    while placed < completed {
        if is_call(entry) {
            let s = slot_of[entry];
            let slot = &slots[s];
            let after = if slot.put { slot.id } else { state };
            // A put that hides a value some unplaced read needs, with no writer left to restore
            // it, leads nowhere.
            let hides = after != state && left[state][0] > 0 && left[state][1] == 0;
            if (slot.put && !hides) || (!slot.put && slot.id == state) {
                visit[s / 64] |= 1 << (s % 64);
                visit[words] = after as u64;
                if cache.insert(hash ^ zobrist[s] ^ mix(after as u64), &visit) {
                    explored += 1;
                    if explored > budget {
                        let ops = ops.len();
                        return Err(CheckError::TooComplex { key, ops, explored });
                    }
                    stack.push((entry, state));
                    (hash, state) = (hash ^ zobrist[s], after);
                    left[slot.id][usize::from(slot.put)] -= 1;
                    // Dancing links: unlinked entries keep their pointers, so relinking in
                    // reverse order on backtrack restores the list exactly.
                    for e in [Some(entry), partner[entry]].into_iter().flatten() {
                        (next[prev[e]], prev[next[e]]) = (next[e], prev[e]);
                    }
                    placed += usize::from(slot.deadline.is_some());
                    if placed > best_placed {
                        best.truncate(shared);
                        best.extend(stack[shared..].iter().map(|&(e, _)| slot_of[e]));
                        (best_placed, shared) = (placed, stack.len());
                    }
                    entry = next[0];
                    continue;
                }
                visit[s / 64] &= !(1 << (s % 64));
            }
            entry = next[entry];
        } else {
            // A return, or the tail (which cannot come first while a completed op is unplaced).
            let Some((e, before)) = stack.pop() else {
                return Err(violation(key, ops, explain(ops, &slots, &best)));
            };
            shared = shared.min(stack.len());
            let s = slot_of[e];
            let slot = &slots[s];
            visit[s / 64] &= !(1 << (s % 64));
            (hash, state) = (hash ^ zobrist[s], before);
            left[slot.id][usize::from(slot.put)] += 1;
            for r in [partner[e], Some(e)].into_iter().flatten() {
                (next[prev[r]], prev[next[r]]) = (r, r);
            }
            placed -= usize::from(slot.deadline.is_some());
            entry = next[e];
        }
    }
    Ok(explored)
}

/// Set of visited (bitset, state) keys. Keys live in one flat arena chained by hash, so a lookup
/// allocates nothing.
#[derive(Default)]
struct Cache {
    heads: HashMap<u64, usize, BuildHasherDefault<PreHashed>>,
    arena: Vec<u64>,
    chain: Vec<Option<usize>>,
}

impl Cache {
    /// Returns true if `key` was not present. All keys of one cache have the same length.
    fn insert(&mut self, hash: u64, key: &[u64]) -> bool {
        let head = self.heads.get(&hash).copied();
        let mut cur = head;
        while let Some(i) = cur {
            if self.arena[i * key.len()..(i + 1) * key.len()] == *key {
                return false;
            }
            cur = self.chain[i];
        }
        self.heads.insert(hash, self.chain.len());
        self.chain.push(head);
        self.arena.extend_from_slice(key);
        true
    }
}

/// Cache hashes are already well mixed; hashing them again would only cost time.
#[derive(Default)]
struct PreHashed(u64);

impl Hasher for PreHashed {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        self.0 = bytes
            .iter()
            .fold(self.0, |h, &b| h.rotate_left(8) ^ u64::from(b));
    }
    fn write_u64(&mut self, n: u64) {
        self.0 = n;
    }
}

/// SplitMix64: distinct inputs give independent-looking Zobrist keys.
fn mix(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// Describes the deepest partial linearization and the op that could not follow it; the
/// caller prints the full history next to this, so ops are referred to by `#index`.
fn explain(ops: &[&Operation], slots: &[Slot], best: &[usize]) -> String {
    let (mut placed, mut state) = (vec![false; slots.len()], None);
    for &s in best {
        placed[s] = true;
        if let OpKind::Put { value } = ops[slots[s].op].kind {
            state = Some(value);
        }
    }
    let must = |s: &usize| slots[*s].deadline.is_some();
    let order: Vec<String> = best.iter().map(|&s| format!("#{}", slots[s].op)).collect();
    let mut out = format!(
        "no linearization exists. The deepest partial one places {} of the {} ops that must take \
         effect, in the order [{}], leaving the register at {}.",
        best.iter().copied().filter(must).count(),
        (0..slots.len()).filter(must).count(),
        order.join(" "),
        show(state),
    );
    let unplaced = |t: &usize| !placed[*t];
    let stuck = (0..slots.len()).filter(unplaced);
    let Some((deadline, s)) = stuck.filter_map(|s| Some((slots[s].deadline?, s))).min() else {
        return out;
    };
    let (i, may_go_first) = (slots[s].op, (0..slots.len()).filter(unplaced));
    let may_go_first = may_go_first.filter(|&t| ops[slots[t].op].call <= deadline);
    let may_go_first: Vec<String> = may_go_first.map(|t| format!("#{}", slots[t].op)).collect();
    out += &format!(
        "\nThen {} must take effect by time {deadline}, but no order of the ops that may go \
         first ({}) allows it",
        label(i, ops[i]),
        may_go_first.join(" "),
    );
    let readers = (0..slots.len()).filter(unplaced).filter(|&t| !slots[t].put);
    let readers = readers.filter(|&t| ops[slots[t].op].kind == OpKind::Get { observed: state });
    let readers: Vec<String> = readers.map(|t| format!("#{}", slots[t].op)).collect();
    if slots[s].put && !readers.is_empty() {
        let value = show(state);
        out += &format!(
            ": it would overwrite {value}, which {} must still read",
            readers.join(" ")
        );
    }
    out + "."
}

fn show(state: Option<u64>) -> String {
    state.map_or_else(|| "absent".to_string(), |v| v.to_string())
}

fn label(i: usize, op: &Operation) -> String {
    let kind = match op.kind {
        OpKind::Put { value } => format!("put {value}"),
        OpKind::Get { observed } => format!("get -> {}", show(observed)),
    };
    let ret = op.ret.map_or_else(|| "?".to_string(), |r| r.to_string());
    format!(
        "#{i} (client {}, {kind}, call {}, ret {ret})",
        op.client, op.call
    )
}

impl fmt::Display for CheckError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CheckError::Violation(Violation {
                key,
                history,
                explanation,
            }) => {
                writeln!(f, "linearizability violation on key {key}\n{explanation}")?;
                writeln!(
                    f,
                    "history of key {key} by call time (ret ? = outcome unknown):"
                )?;
                let mut lines = history.iter().enumerate();
                lines.try_for_each(|(i, op)| writeln!(f, "  {}", label(i, op)))
            }
            CheckError::TooComplex { key, ops, explored } => write!(
                f,
                "linearizability check gave up on key {key} ({ops} ops) after {explored} states: \
                 too concurrent to decide within the budget."
            ),
            CheckError::Malformed { key, op } => write!(
                f,
                "malformed history on key {key}: {op:?} responded before it was invoked \
                 (recorder bug)."
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn op(key: u64, kind: OpKind, call: u64, ret: Option<u64>) -> Operation {
        let client = call % 5;
        Operation {
            client,
            key,
            kind,
            call,
            ret,
        }
    }
    /// "p1:0-1 r1:2-3 p2:4-? r_:5-6 3/p7:8-9": put 1 over [0, 1], a read of 1, a put with
    /// no response, a read of absent, a put on key 3 (others are on key 0).
    fn h(text: &str) -> Vec<Operation> {
        let num = |s: &str| s.parse::<u64>().ok();
        let parse = |token: &str| {
            let (key, token) = token.split_once('/').unwrap_or(("0", token));
            let (what, times) = token.split_once(':')?;
            let (call, ret) = times.split_once('-')?;
            let value = num(what.get(1..)?);
            let kind = match what.get(..1)? {
                "p" => OpKind::Put { value: value? },
                _ => OpKind::Get { observed: value },
            };
            Some(op(num(key)?, kind, num(call)?, num(ret)))
        };
        let ops = text.split_whitespace().map(|t| parse(t).ok_or(t));
        ops.collect::<Result<_, _>>()
            .unwrap_or_else(|t| panic!("bad op {t:?}"))
    }
    fn ok(history: &[Operation]) -> CheckStats {
        check(history, 1_000_000).unwrap_or_else(|e| panic!("expected linearizable:\n{e}"))
    }
    fn bad(history: &[Operation]) -> Violation {
        match check(history, 1_000_000) {
            Err(CheckError::Violation(v)) => v,
            other => panic!("expected a violation, got {other:?}\nfor {history:?}"),
        }
    }

    /// "verdict: what it shows: history in the notation of `h`"
    const CASES: &[&str] = &[
        "ok: empty history: ",
        "ok: sequential puts and reads: p1:0-1 r1:2-3 p2:4-5 r2:6-7",
        "bad: stale read after a completed put: p1:0-1 p2:2-3 r1:4-5",
        "bad: read of a value never written: p1:0-1 r9:2-3",
        "ok: read during a put sees the old value: p1:0-3 r_:1-2",
        "ok: read during a put sees the new value: p1:0-3 r1:1-2",
        "ok: concurrent puts, then the first is read: p1:0-10 p2:1-11 r1:12-13",
        "ok: concurrent puts, then the second is read: p1:0-10 p2:1-11 r2:12-13",
        "ok: reads see 2 then 1 while both puts run: p1:0-10 p2:1-11 r2:2-3 r1:4-5",
        "bad: read goes back to the older put: p1:0-10 p2:1-11 r2:12-13 r1:14-15",
        "ok: unknown put observed later: p1:0-1 p2:2-? r2:10-11",
        "ok: unknown put never observed: p1:0-1 p2:2-? r1:10-11 r1:12-13",
        "ok: unknown put observed after the old value: p1:0-1 p2:2-? r1:3-4 r2:5-6",
        "bad: unknown put observed then un-observed: p1:0-1 p2:2-? r2:3-4 r1:5-6",
        "bad: unknown put observed before its call: p1:0-1 r2:2-3 p2:4-?",
        "ok: either unknown writer explains reads: p7:0-? p1:1-2 p7:3-? r7:4-5 r7:6-7",
        "bad: 1 cannot follow 7 written after it: p7:0-? p1:1-2 p7:3-? r7:4-5 r1:6-7",
        "ok: absent before any write: r_:0-1 p5:2-3 r5:4-5",
        "bad: absent after a completed write: p5:0-1 r_:2-3",
        "ok: unanswered read constrains nothing: p1:0-1 r9:2-? r1:3-4",
        "ok: equal times do not order ops: p1:0-2 r_:2-3",
        "ok: a second writer of a read value may never happen: p7:0-? r7:1-6 p9:2-3 p7:4-? r9:7-8",
    ];

    #[test]
    fn small_histories() {
        for case in CASES {
            let mut parts = case.splitn(3, ": ");
            let (verdict, text) = (parts.next(), parts.nth(1).unwrap_or_default());
            match check(&h(text), 1_000_000) {
                Ok(_) if verdict == Some("ok") => {}
                Err(CheckError::Violation(_)) if verdict == Some("bad") => {}
                other => panic!("{case:?} gave {other:?}"),
            }
        }
    }

    fn has(text: &str, needle: &str) {
        assert!(text.contains(needle), "{needle:?} not in:\n{text}");
    }

    #[test]
    fn explanations_and_stats() {
        let v = bad(&h("p1:0-1 p2:2-3 r1:4-5"));
        assert_eq!((v.key, v.history.len()), (0, 3));
        has(&v.explanation, "overwrite 1, which #2 must still read");
        has(
            &bad(&h("p1:0-1 r9:2-3")).explanation,
            "#1 (client 2, get -> 9, call 2, ret 3)",
        );
        let stats = ok(&h("p1:0-1 r9:2-? r1:3-4 2/r_:5-6"));
        assert_eq!((stats.keys, stats.ops, stats.explored), (2, 4, 3));
        let err = check(&h("p1:5-4"), 100);
        assert!(matches!(err, Err(CheckError::Malformed { .. })), "{err:?}");
    }

    #[test]
    fn multi_key_history_reports_the_bad_key() {
        let mut history = h("1/p1:0-1 2/p1:2-3 3/p1:4-5 1/r1:6-7 3/r1:8-9");
        assert_eq!(ok(&history).keys, 3);
        history.extend(h("2/p2:10-11 2/r1:12-13"));
        let v = bad(&history);
        assert!(
            v.key == 2 && v.history.iter().all(|op| op.key == 2),
            "{v:?}"
        );
        let report = CheckError::Violation(v).to_string();
        has(&report, "violation on key 2");
        has(&report, "\n  #2 (client 2, get -> 1, call 12, ret 13)\n");
    }

    #[test]
    fn budget_exceeded_is_too_complex() {
        // Each final read needs its put to go last; ruling that out for both means trying every
        // order of the other 14 concurrent puts.
        let puts = (0..16).map(|v| format!("p{v}:{v}-{}", 100 + v));
        let mut history = h(&(puts.collect::<Vec<_>>().join(" ") + " r0:200-201 r1:202-203"));
        match check(&history, 10_000) {
            Err(e @ CheckError::TooComplex { ops: 18, .. }) => {
                has(&e.to_string(), "gave up on key 0")
            }
            other => panic!("expected TooComplex, got {other:?}"),
        }
        bad(&history);
        history.pop();
        ok(&history);
    }

    #[test]
    fn long_low_concurrency_history_is_cheap() {
        let stats = ok(&random_history(&mut Lcg(7), 20_000, 1, 2));
        assert!(stats.explored < 40_000, "{stats:?}");
    }

    /// Knuth's MMIX LCG, high bits only.
    struct Lcg(u64);
    impl Lcg {
        fn below(&mut self, n: u64) -> u64 {
            const MUL: u64 = 6364136223846793005;
            self.0 = self.0.wrapping_mul(MUL).wrapping_add(1442695040888963407);
            (self.0 >> 33) % n
        }
    }

    /// Makes tied raw times unique (`i` < 2^20 numbers the op) without reordering unequal ones.
    fn time(raw: u64, i: u64, is_ret: bool) -> u64 {
        raw << 21 | i << 1 | u64::from(is_ret)
    }

    /// A sequential execution (op i takes effect at raw time 100 * i) stretched into intervals
    /// around those points, so it stays a valid witness.
    fn random_history(rng: &mut Lcg, n: u64, keys: u64, spread: u64) -> Vec<Operation> {
        let mut registers = vec![None; keys as usize];
        let mut history = Vec::new();
        for i in 0..n {
            let key = rng.below(keys);
            let point = (i + spread + 1) * 100;
            let call = point - 1 - rng.below(spread * 100);
            let ret = point + 1 + rng.below(spread * 100);
            let register = &mut registers[key as usize];
            let (kind, answered) = if rng.below(2) == 0 {
                let took_effect = rng.below(10) != 0;
                if took_effect {
                    *register = Some(i);
                }
                (OpKind::Put { value: i }, took_effect && rng.below(10) != 0)
            } else {
                let observed = *register;
                (OpKind::Get { observed }, rng.below(20) != 0)
            };
            let ret = answered.then_some(time(ret, i, true));
            history.push(op(key, kind, time(call, i, false), ret));
        }
        history
    }

    #[test]
    fn random_histories_pass_and_mutations_fail() {
        let mut mutations = [0; 3];
        for seed in 0..200 {
            let history = random_history(&mut Lcg(seed), 60, 3, 1 + seed % 6);
            ok(&history);
            for (g, read) in history.iter().enumerate() {
                if !matches!(read.kind, OpKind::Get { .. }) || read.ret.is_none() {
                    continue;
                }
                // (value, call, ret) of completed puts before the read.
                let puts: Vec<(u64, u64, u64)> = history
                    .iter()
                    .filter(|p| p.key == read.key && p.ret < Some(read.call))
                    .filter_map(|p| match p.kind {
                        OpKind::Put { value } => Some((value, p.call, p.ret?)),
                        OpKind::Get { .. } => None,
                    })
                    .collect();
                // A value overwritten by a later completed put is stale in every order.
                let stale = puts.iter().find(|p| puts.iter().any(|q| p.2 < q.1));
                let never_written = Some(Some(1_000_000));
                let absent = (!puts.is_empty()).then_some(None);
                let wrong = [never_written, stale.map(|p| Some(p.0)), absent];
                for (m, observed) in wrong.into_iter().enumerate() {
                    let Some(observed) = observed else { continue };
                    let mut mutated = history.clone();
                    mutated[g].kind = OpKind::Get { observed };
                    assert_eq!(bad(&mutated).key, read.key, "seed {seed}, read #{g}");
                    mutations[m] += 1;
                }
            }
        }
        assert!(mutations.iter().all(|&n| n > 1000), "{mutations:?}");
    }

    /// Tries every real-time-respecting order of every subset that holds all completed ops.
    fn brute_force(ops: &[&Operation], placed: &mut [bool], state: Option<u64>) -> bool {
        let pending: Vec<usize> = (0..ops.len())
            .filter(|&j| !placed[j] && ops[j].ret.is_some())
            .collect();
        let blocked = |i: usize| pending.iter().any(|&j| ops[j].ret < Some(ops[i].call));
        for i in 0..ops.len() {
            if placed[i] || blocked(i) {
                continue;
            }
            let next = match ops[i].kind {
                OpKind::Put { value } => Some(value),
                OpKind::Get { observed } if observed == state => state,
                OpKind::Get { .. } => continue,
            };
            placed[i] = true;
            let found = brute_force(ops, placed, next);
            placed[i] = false;
            if found {
                return true;
            }
        }
        pending.is_empty()
    }

    #[test]
    fn agrees_with_brute_force_on_small_histories() {
        let (mut rng, mut verdicts) = (Lcg(42), [0; 2]);
        for _ in 0..4000 {
            let mut history = Vec::new();
            for i in 0..1 + rng.below(7) {
                let (call, len) = (rng.below(20), rng.below(10));
                // Values repeat on purpose: correctness must not rest on unique writes.
                let (value, observed) = (1 + rng.below(3), Some(rng.below(4)).filter(|&v| v > 0));
                let kind = [OpKind::Put { value }, OpKind::Get { observed }][rng.below(2) as usize]
                    .clone();
                let ret = (rng.below(5) > 0).then_some(time(call + len, i, true));
                history.push(op(0, kind, time(call, i, false), ret));
            }
            let recorded: Vec<&Operation> = history
                .iter()
                .filter(|op| op.ret.is_some() || matches!(op.kind, OpKind::Put { .. }))
                .collect();
            let expected = brute_force(&recorded, &mut vec![false; recorded.len()], None);
            match check(&history, 1_000_000) {
                Ok(_) if expected => verdicts[0] += 1,
                Err(CheckError::Violation(_)) if !expected => verdicts[1] += 1,
                other => panic!("brute force: {expected}, checker: {other:?} on {history:#?}"),
            }
        }
        assert!(verdicts.iter().all(|&n| n > 500), "{verdicts:?}");
    }
}
