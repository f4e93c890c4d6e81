//! Coalesced heartbeats (DESIGN section 7): a heartbeat and its response carry only a few
//! numbers, so they travel in the compact `Heartbeat` form inside the node pair's batch and are
//! fanned out into Raft messages on receipt. Anything that would not survive the round trip
//! exactly travels as a full message.

use crate::raft::{Message, MessageType};
use crate::wire::{Heartbeat, RangeMessage};

/// The compact form of `m`, if it is a heartbeat (response) that converts back unchanged.
pub fn compact(range_id: u64, m: &Message) -> Option<Heartbeat> {
    let response = match MessageType::try_from(m.msg_type).ok()? {
        MessageType::Heartbeat => false,
        MessageType::HeartbeatResponse => true,
        _ => return None,
    };
    let hb = Heartbeat {
        range_id,
        from: m.from,
        to: m.to,
        term: m.term,
        commit: m.commit,
        read_round: m.read_round,
        response,
    };
    (expand(&hb).message.as_ref() == Some(m)).then_some(hb)
}

/// The Raft message of a compact heartbeat.
pub fn expand(hb: &Heartbeat) -> RangeMessage {
    let msg_type = if hb.response {
        MessageType::HeartbeatResponse
    } else {
        MessageType::Heartbeat
    };
    RangeMessage {
        range_id: hb.range_id,
        message: Some(Message {
            msg_type: msg_type as i32,
            from: hb.from,
            to: hb.to,
            term: hb.term,
            commit: hb.commit,
            read_round: hb.read_round,
            ..Message::default()
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::raft::Entry;

    #[test]
    fn only_exact_heartbeats_are_compacted() {
        let hb = Message {
            msg_type: MessageType::Heartbeat as i32,
            from: 1,
            to: 2,
            term: 5,
            commit: 9,
            read_round: 3,
            ..Message::default()
        };
        let c = compact(7, &hb).expect("a heartbeat");
        assert_eq!(expand(&c).message, Some(hb.clone()));
        let odd = Message {
            entries: vec![Entry::default()],
            ..hb
        };
        assert_eq!(compact(7, &odd), None);
        let append = Message {
            msg_type: MessageType::Append as i32,
            ..Message::default()
        };
        assert_eq!(compact(7, &append), None);
    }
}
