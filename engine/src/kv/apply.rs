//! `RangeApplier`: applies a range's committed entries to the `data` and `meta` column
//! families (DESIGN section 6).
//!
//! Pipeline: the store hands committed entries over; each normal entry holds a `RaftCommand`.
//! The applier consults the client's session (a retry gets its recorded response), checks the
//! command against the range (epoch, key span, limits), executes it against an overlay of the
//! batch's earlier writes, and records the response. The data, the sessions and the new apply
//! state go to RocksDB in one unsynced batch: after a crash, the applied index says where to
//! replay from the durable log, and entries at or below it are skipped, so replay is idempotent.

use std::sync::Arc;

use flotilla_transport::kv::{
    admin_request, AdminRequest, ChangeReplicasResponse, CommandHeader, SplitResponse,
};
use flotilla_transport::kv::{
    txn_op, txn_op_response, write_request, write_response, Compare, CompareOp, CompareTarget,
    DeleteRangeResponse, DeleteResponse, GetResponse, KeyValue, PutResponse, RaftCommand,
    StoredValue, TxnOp, TxnOpResponse, TxnResponse, WriteRequest, WriteResponse,
};
use flotilla_transport::meta::{ApplyState, RangeDescriptor, SessionRecord};
use flotilla_transport::raft::{ConfState, Entry, EntryType};
use prost::Message;

use super::config::KvConfig;
use super::error::KvError;
use super::overlay::Overlay;
use super::session::{self, Verdict};
use super::split::{plan as plan_split, SplitPlan};
use super::validate::{check_command, check_range, internal_span};
use crate::storage::{keys, Cf, Engine, EngineError, LogBatch, RangeLog};

/// The outcome of one applied normal entry carrying a command.
#[derive(Clone, Debug, PartialEq)]
pub struct Applied {
    pub index: u64,
    pub term: u64,
    pub client_id: u64,
    pub seq: u64,
    pub response: WriteResponse,
}

/// What an admin command decided: a response, or rows to write with the data.
enum AdminOutcome {
    Done(Box<WriteResponse>),
    Routing(flotilla_transport::kv::RoutingUpdate),
    /// A node's record, and whether only its address changes.
    Node(flotilla_transport::meta::NodeRecord, bool),
}

/// Applies one range's committed entries.
#[derive(Debug)]
pub struct RangeApplier {
    engine: Arc<Engine>,
    descriptor: RangeDescriptor,
    state: ApplyState,
    config: KvConfig,
    /// Ranges split off in the batch being applied, with the sessions they inherit.
    splits: Vec<(SplitPlan, Vec<SessionRecord>)>,
    /// Ranges split off by the last `apply`, for the store to open.
    created: Vec<RangeDescriptor>,
    /// The descriptor changed in the batch being applied (a membership change).
    descriptor_changed: bool,
}

fn error_response(index: u64, e: &KvError) -> WriteResponse {
    WriteResponse {
        revision: index,
        response: Some(write_response::Response::Error(e.into())),
    }
}

fn to_kv(user_key: &[u8], v: StoredValue) -> KeyValue {
    KeyValue {
        key: user_key.to_vec().into(),
        value: v.value,
        create_revision: v.create_revision,
        mod_revision: v.mod_revision,
        version: v.version,
    }
}

impl RangeApplier {
    /// Loads the applier of `range_id` from its descriptor and apply state.
    ///
    /// # Errors
    /// [`EngineError::RangeNotFound`], [`EngineError::Corruption`].
    pub fn load(engine: Arc<Engine>, range_id: u64, config: KvConfig) -> Result<Self, EngineError> {
        config
            .validate()
            .map_err(|e| EngineError::corruption(range_id, "kv config", e))?;
        let descriptor = engine
            .descriptor(range_id)?
            .ok_or(EngineError::RangeNotFound(range_id))?;
        let state = engine
            .apply_state(range_id)?
            .ok_or_else(|| EngineError::corruption(range_id, "apply state", "missing"))?;
        Ok(Self {
            engine,
            descriptor,
            state,
            config,
            splits: Vec::new(),
            created: Vec::new(),
            descriptor_changed: false,
        })
    }

    pub fn applied_index(&self) -> u64 {
        self.state.applied_index
    }

    pub fn apply_state(&self) -> &ApplyState {
        &self.state
    }

    pub fn descriptor(&self) -> &RangeDescriptor {
        &self.descriptor
    }

    pub fn config(&self) -> &KvConfig {
        &self.config
    }

    /// Applies `entries` (committed, in order; those at or below the applied index are
    /// skipped) and records `conf_state` as the membership of the new applied index. Writes
    /// everything in one unsynced batch and returns the responses of the commands.
    ///
    /// # Errors
    /// [`EngineError`] when the disk fails or a stored row is damaged (the node must stop).
    ///
    /// # Panics
    /// If `entries` skip an index past the applied one: applying out of order corrupts data.
    pub fn apply(
        &mut self,
        entries: &[Entry],
        conf_state: Option<&ConfState>,
    ) -> Result<Vec<Applied>, EngineError> {
        let engine = Arc::clone(&self.engine);
        let mut overlay = Overlay::new(&engine, self.descriptor.id);
        // The in-memory state moves only once the batch is written: a failed read or write
        // leaves it where the disk is.
        let before = (self.state.clone(), self.descriptor.clone());
        self.splits.clear();
        self.descriptor_changed = false;
        let result = self
            .apply_batch(&mut overlay, entries, conf_state)
            .and_then(|out| {
                let mut batch = LogBatch::new();
                overlay.flush(batch.raw());
                let created = self.stage_splits(&mut batch)?;
                if self.descriptor_changed && self.splits.is_empty() {
                    engine.put_record(
                        batch.raw(),
                        Cf::Meta,
                        &keys::descriptor_key(self.descriptor.id),
                        &self.descriptor,
                    );
                }
                engine.put_record(
                    batch.raw(),
                    Cf::Meta,
                    &keys::apply_state_key(self.descriptor.id),
                    &self.state,
                );
                batch.write_unsynced(&engine)?;
                Ok((out, created))
            });
        self.splits.clear();
        match result {
            Ok((out, created)) => {
                self.created.extend(created);
                Ok(out)
            }
            Err(e) => {
                (self.state, self.descriptor) = before;
                Err(e)
            }
        }
    }

    /// The ranges split off since the last call: the store opens their replicas.
    pub fn take_created(&mut self) -> Vec<RangeDescriptor> {
        std::mem::take(&mut self.created)
    }

    /// Writes the narrowed descriptor and each new range (its descriptor, initial Raft state,
    /// apply state with this range's clock, and the sessions it inherits) into `batch`, with
    /// the data of the entries that split. A range that exists already was created by an
    /// earlier apply of the same entry (a replay after a crash): it is left as it is.
    fn stage_splits(&self, batch: &mut LogBatch) -> Result<Vec<RangeDescriptor>, EngineError> {
        let mut created = Vec::new();
        if self.splits.is_empty() {
            return Ok(created);
        }
        let engine = &self.engine;
        engine.put_record(
            batch.raw(),
            Cf::Meta,
            &keys::descriptor_key(self.descriptor.id),
            &self.descriptor,
        );
        for (plan, sessions) in &self.splits {
            let right = &plan.right;
            if engine.descriptor(right.id)?.is_some() {
                continue;
            }
            RangeLog::create(engine, batch, right, &plan.right_initial)?;
            let apply_state = ApplyState {
                applied_index: plan.right_initial.index,
                applied_term: plan.right_initial.term,
                conf_state: plan.right_initial.conf_state.clone(),
                clock_ms: self.state.clock_ms,
            };
            engine.put_record(
                batch.raw(),
                Cf::Meta,
                &keys::apply_state_key(right.id),
                &apply_state,
            );
            for session in sessions {
                engine.put_record(
                    batch.raw(),
                    Cf::Meta,
                    &keys::session_key(right.id, session.client_id),
                    session,
                );
            }
            created.push(right.clone());
        }
        Ok(created)
    }

    fn apply_batch(
        &mut self,
        overlay: &mut Overlay<'_>,
        entries: &[Entry],
        conf_state: Option<&ConfState>,
    ) -> Result<Vec<Applied>, EngineError> {
        let mut out = Vec::new();
        for e in entries {
            if e.index <= self.state.applied_index {
                continue;
            }
            assert_eq!(
                e.index,
                self.state.applied_index + 1,
                "range {}: entry {} applied after {}",
                self.descriptor.id,
                e.index,
                self.state.applied_index
            );
            if e.entry_type == EntryType::Normal as i32 && !e.data.is_empty() {
                out.push(self.apply_command(overlay, e)?);
            } else if e.entry_type == EntryType::ConfChange as i32 {
                out.extend(self.apply_membership(e));
            }
            self.state.applied_index = e.index;
            self.state.applied_term = e.term;
            if e.index % self.config.session_sweep_interval == 0 {
                self.sweep_sessions(overlay)?;
            }
        }
        if let Some(cs) = conf_state {
            debug_assert_eq!(
                self.state.conf_state.as_ref(),
                Some(cs),
                "range {}: the descriptor's membership and Raft's differ",
                self.descriptor.id
            );
            self.state.conf_state = Some(cs.clone());
        }
        Ok(out)
    }

    /// A committed membership change: the descriptor follows Raft's membership (the same
    /// pure function of the log on every replica). An entry the core skips changes nothing
    /// and answers nothing (its proposer hears it was dropped).
    fn apply_membership(&mut self, e: &Entry) -> Option<Applied> {
        let current = self.state.conf_state.clone().unwrap_or_default();
        let (descriptor, conf_state) =
            super::replicas::apply_change(&self.descriptor, &current, e)?;
        self.descriptor = descriptor;
        self.state.conf_state = Some(conf_state);
        self.descriptor_changed = true;
        Some(Applied {
            index: e.index,
            term: e.term,
            client_id: 0,
            seq: 0,
            response: WriteResponse {
                revision: e.index,
                response: Some(write_response::Response::ChangeReplicas(
                    ChangeReplicasResponse {
                        descriptor: Some(self.descriptor.clone()),
                    },
                )),
            },
        })
    }

    fn apply_command(
        &mut self,
        overlay: &mut Overlay<'_>,
        e: &Entry,
    ) -> Result<Applied, EngineError> {
        let cmd = match RaftCommand::decode(e.data.as_ref()) {
            Ok(c) => c,
            Err(err) => {
                let response = error_response(e.index, &KvError::Malformed(err.to_string()));
                return Ok(Applied {
                    index: e.index,
                    term: e.term,
                    client_id: 0,
                    seq: 0,
                    response,
                });
            }
        };
        let header = cmd.header.unwrap_or_default();
        self.state.clock_ms = self.state.clock_ms.max(header.proposed_at_ms);
        let applied = |response| Applied {
            index: e.index,
            term: e.term,
            client_id: header.client_id,
            seq: header.seq,
            response,
        };
        let mut session = None;
        if header.client_id != 0 {
            let stored = overlay.session(header.client_id)?;
            match session::check(stored, &header, self.state.clock_ms, &self.config) {
                Verdict::Apply(s) => session = Some(s),
                Verdict::Duplicate(r) => return Ok(applied(r)),
                Verdict::Refuse(err) => return Ok(applied(error_response(e.index, &err))),
            }
        }
        if let Some(admin) = cmd.admin {
            let (response, plan) = match self.apply_admin(&header, admin, e) {
                Ok(done) => done,
                // Refusals are not recorded: a retry with the same number may succeed.
                Err(err) => return Ok(applied(error_response(e.index, &err))),
            };
            let response = match response {
                AdminOutcome::Done(r) => *r,
                AdminOutcome::Routing(update) => WriteResponse {
                    revision: e.index,
                    response: Some(write_response::Response::RoutingUpdate(
                        super::routing::apply_update(overlay, &update, e.index)?,
                    )),
                },
                AdminOutcome::Node(record, address_only) => WriteResponse {
                    revision: e.index,
                    response: Some(write_response::Response::NodeUpdate(
                        super::routing::apply_node_update(overlay, record, address_only, e.index)?,
                    )),
                },
            };
            if let Some(mut s) = session {
                session::record(&mut s, &header, &response, &self.config);
                overlay.put_session(s);
            }
            if let Some(plan) = plan {
                // The new range inherits the sessions as they are now, this command's own
                // response included, so a retry of the split or of any earlier write that
                // now routes there gets its recorded response.
                let sessions = overlay.all_sessions()?;
                self.splits.push((plan, sessions));
            }
            return Ok(applied(response));
        }
        let request = cmd.request.unwrap_or_default();
        let response = match check_command(&self.descriptor, &header, &request, &self.config) {
            Err(err) => error_response(e.index, &err),
            Ok(()) => {
                let r = self.execute(overlay, &request, e.index)?;
                if let Some(mut s) = session {
                    session::record(&mut s, &header, &r, &self.config);
                    overlay.put_session(s);
                }
                r
            }
        };
        Ok(applied(response))
    }

    /// An admin command: checked against the range like any command, then carried out on
    /// the in-memory descriptor; a split's new range is returned for `stage_splits`.
    fn apply_admin(
        &mut self,
        header: &CommandHeader,
        admin: AdminRequest,
        e: &Entry,
    ) -> Result<(AdminOutcome, Option<SplitPlan>), KvError> {
        check_range(&self.descriptor, header.range_id, header.epoch.as_ref())?;
        match admin.request {
            Some(admin_request::Request::RoutingUpdate(update)) => {
                if self.descriptor.id != super::routing::META_RANGE {
                    return Err(KvError::Malformed(
                        "routing records live in the meta range".into(),
                    ));
                }
                Ok((AdminOutcome::Routing(update), None))
            }
            Some(admin_request::Request::NodeUpdate(update)) => {
                if self.descriptor.id != super::routing::META_RANGE {
                    return Err(KvError::Malformed(
                        "node records live in the meta range".into(),
                    ));
                }
                let Some(record) = update.record.filter(|r| r.node_id != 0) else {
                    return Err(KvError::Malformed("a node update names no node".into()));
                };
                Ok((AdminOutcome::Node(record, update.address_only), None))
            }
            Some(admin_request::Request::Split(split)) => {
                if self
                    .state
                    .conf_state
                    .as_ref()
                    .is_some_and(|cs| !cs.voters_outgoing.is_empty())
                {
                    return Err(KvError::NotReady(format!(
                        "range {} is changing its replicas",
                        self.descriptor.id
                    )));
                }
                let plan = plan_split(&self.descriptor, &split.split_key, e.index, e.term)?;
                self.descriptor = plan.left.clone();
                let response = WriteResponse {
                    revision: e.index,
                    response: Some(write_response::Response::Split(SplitResponse {
                        left: Some(plan.left.clone()),
                        right: Some(plan.right.clone()),
                    })),
                };
                Ok((AdminOutcome::Done(Box::new(response)), Some(plan)))
            }
            // Replica changes travel as membership entries and leader transfers not at all.
            Some(
                admin_request::Request::ChangeReplicas(_)
                | admin_request::Request::TransferLeader(_),
            )
            | None => Err(KvError::Malformed("unknown admin operation".into())),
        }
    }

    fn execute(
        &self,
        overlay: &mut Overlay<'_>,
        request: &WriteRequest,
        revision: u64,
    ) -> Result<WriteResponse, EngineError> {
        use write_request::Request;
        let response = match &request.request {
            Some(Request::Put(p)) => write_response::Response::Put(
                self.put(overlay, &p.key, &p.value, p.prev_kv, revision)?,
            ),
            Some(Request::Delete(d)) => {
                write_response::Response::Delete(self.delete(overlay, &d.key, d.prev_kv)?)
            }
            Some(Request::DeleteRange(r)) => {
                write_response::Response::DeleteRange(self.delete_range(overlay, &r.start, &r.end)?)
            }
            Some(Request::Txn(t)) => {
                let mut succeeded = true;
                for c in &t.compares {
                    if !self.compare(overlay, c)? {
                        succeeded = false;
                        break;
                    }
                }
                let ops = if succeeded { &t.success } else { &t.failure };
                let mut responses = Vec::with_capacity(ops.len());
                for op in ops {
                    responses.push(self.txn_op(overlay, op, revision)?);
                }
                write_response::Response::Txn(TxnResponse {
                    succeeded,
                    responses,
                })
            }
            None => unreachable!("check_write refuses a write without a request"),
        };
        Ok(WriteResponse {
            revision,
            response: Some(response),
        })
    }

    fn txn_op(
        &self,
        overlay: &mut Overlay<'_>,
        op: &TxnOp,
        revision: u64,
    ) -> Result<TxnOpResponse, EngineError> {
        use txn_op_response::Response;
        let response = match &op.op {
            Some(txn_op::Op::Put(p)) => {
                Response::Put(self.put(overlay, &p.key, &p.value, p.prev_kv, revision)?)
            }
            Some(txn_op::Op::Delete(d)) => {
                Response::Delete(self.delete(overlay, &d.key, d.prev_kv)?)
            }
            Some(txn_op::Op::DeleteRange(r)) => {
                Response::DeleteRange(self.delete_range(overlay, &r.start, &r.end)?)
            }
            Some(txn_op::Op::Get(g)) => Response::Get(GetResponse {
                kv: overlay
                    .get(&keys::data_key(&g.key))?
                    .map(|v| to_kv(&g.key, v)),
            }),
            None => unreachable!("check_write refuses a txn op without an operation"),
        };
        Ok(TxnOpResponse {
            response: Some(response),
        })
    }

    fn put(
        &self,
        overlay: &mut Overlay<'_>,
        key: &[u8],
        value: &bytes::Bytes,
        prev_kv: bool,
        revision: u64,
    ) -> Result<PutResponse, EngineError> {
        let ikey = keys::data_key(key);
        let prev = overlay.get(&ikey)?;
        overlay.put(
            ikey,
            super::overlay::next_value(prev.as_ref(), value.clone(), revision),
        );
        Ok(PutResponse {
            prev_kv: prev.filter(|_| prev_kv).map(|p| to_kv(key, p)),
        })
    }

    fn delete(
        &self,
        overlay: &mut Overlay<'_>,
        key: &[u8],
        prev_kv: bool,
    ) -> Result<DeleteResponse, EngineError> {
        let ikey = keys::data_key(key);
        let prev = overlay.get(&ikey)?;
        let deleted = u64::from(prev.is_some());
        if prev.is_some() {
            overlay.delete(ikey);
        }
        Ok(DeleteResponse {
            deleted,
            prev_kv: prev.filter(|_| prev_kv).map(|p| to_kv(key, p)),
        })
    }

    fn delete_range(
        &self,
        overlay: &mut Overlay<'_>,
        start: &[u8],
        end: &[u8],
    ) -> Result<DeleteRangeResponse, EngineError> {
        let (start, end) = internal_span(&self.descriptor, start, end, &self.config)
            .expect("check_write checked the span");
        let doomed = overlay.keys_in(&start, &end)?;
        let deleted = doomed.len() as u64;
        for k in doomed {
            overlay.delete(k);
        }
        Ok(DeleteRangeResponse { deleted })
    }

    fn compare(&self, overlay: &Overlay<'_>, c: &Compare) -> Result<bool, EngineError> {
        let current = overlay.get(&keys::data_key(&c.key))?;
        let op = CompareOp::try_from(c.op).unwrap_or(CompareOp::Equal);
        let ordering = match CompareTarget::try_from(c.target) {
            Ok(CompareTarget::Value) => match &current {
                Some(v) => v.value.as_ref().cmp(c.value.as_ref()),
                // A missing key has no value: every value comparison is false.
                None => return Ok(false),
            },
            Ok(CompareTarget::ModRevision) => current
                .as_ref()
                .map_or(0, |v| v.mod_revision)
                .cmp(&c.revision),
            Ok(CompareTarget::CreateRevision) => current
                .as_ref()
                .map_or(0, |v| v.create_revision)
                .cmp(&c.revision),
            Ok(CompareTarget::Version) => {
                current.as_ref().map_or(0, |v| v.version).cmp(&c.revision)
            }
            Ok(CompareTarget::Exists) => {
                let holds = current.is_some() == c.exists;
                return Ok(if op == CompareOp::NotEqual {
                    !holds
                } else {
                    holds
                });
            }
            Err(_) => return Ok(false),
        };
        Ok(match op {
            CompareOp::Equal => ordering.is_eq(),
            CompareOp::NotEqual => ordering.is_ne(),
            CompareOp::Less => ordering.is_lt(),
            CompareOp::Greater => ordering.is_gt(),
        })
    }

    fn sweep_sessions(&self, overlay: &mut Overlay<'_>) -> Result<(), EngineError> {
        for s in overlay.all_sessions()? {
            if session::expired(&s, self.state.clock_ms, &self.config) {
                overlay.drop_session(s.client_id);
            }
        }
        Ok(())
    }
}
