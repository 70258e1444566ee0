//! One room as this node sees it: local member connections, per-user
//! presence, and the cached tail of the room's history used for fan-out
//! bookkeeping and recovery.

use std::collections::{BTreeMap, VecDeque};
use std::sync::Arc;

use bytes::Bytes;
use indexmap::{IndexMap, IndexSet};
use rustc_hash::FxBuildHasher;

use crate::event::SequencedMessage;
use crate::ids::{ConnId, Epoch, NodeId, UserRef};
use crate::request::Since;
use crate::time::Timestamp;

pub(crate) struct Room {
    /// Local member connections. Iteration order is insertion order with
    /// swap-removal: deterministic, and a dense array for fan-out.
    pub(crate) members: IndexSet<ConnId, FxBuildHasher>,
    /// Users present, with how many of their connections are members.
    pub(crate) users: IndexMap<Arc<str>, Presence, FxBuildHasher>,
    /// Cluster mode: users present on other nodes, with those nodes.
    pub(crate) remote: IndexMap<Arc<str>, RemotePresence, FxBuildHasher>,
    pub(crate) state: RoomState,
}

pub(crate) struct RemotePresence {
    pub(crate) user: UserRef,
    pub(crate) nodes: std::collections::BTreeSet<NodeId>,
}

/// A presence change from another node: (node, user, present).
pub(crate) type PresenceChange = (NodeId, UserRef, bool);

pub(crate) struct Presence {
    pub(crate) user: UserRef,
    pub(crate) connections: u32,
}

pub(crate) enum RoomState {
    /// `OpenRoom` was emitted; joins wait for the snapshot.
    Opening {
        waiting: Vec<WaitingJoin>,
        /// Messages sequenced before the snapshot arrived.
        early: Vec<SequencedMessage>,
        /// Other nodes' presence changes seen before the snapshot arrived;
        /// applied after it, in order.
        early_presence: Vec<PresenceChange>,
        /// More changes came than `early_presence` holds: once open, the
        /// room is resynced, which reconciles presence from the broker.
        presence_overflowed: bool,
        /// Server API `history` calls waiting for the room's log.
        readers: Vec<HistoryRead>,
    },
    Open(RoomLog),
}

/// A server API `history` call: its ticket and the page it wants.
pub(crate) struct HistoryRead {
    pub(crate) ticket: u64,
    pub(crate) limit: usize,
    pub(crate) before: Option<u64>,
}

pub(crate) struct WaitingJoin {
    pub(crate) conn: ConnId,
    pub(crate) request_id: Option<Arc<str>>,
    pub(crate) since: Option<Since>,
}

impl Room {
    pub(crate) fn opening(first: WaitingJoin) -> Self {
        Room::opening_for(vec![first], Vec::new())
    }

    /// A room opened for a server API `history` call alone: it closes
    /// again once the call is answered, unless someone joined meanwhile.
    pub(crate) fn opening_to_read(read: HistoryRead) -> Self {
        Room::opening_for(Vec::new(), vec![read])
    }

    fn opening_for(waiting: Vec<WaitingJoin>, readers: Vec<HistoryRead>) -> Self {
        Room {
            members: IndexSet::default(),
            users: IndexMap::default(),
            remote: IndexMap::default(),
            state: RoomState::Opening {
                waiting,
                early: Vec::new(),
                early_presence: Vec::new(),
                presence_overflowed: false,
                readers,
            },
        }
    }

    pub(crate) fn user_list(&self) -> Vec<&UserRef> {
        user_list(&self.users, &self.remote)
    }

    /// Whether `user` is in the room on this node or any other.
    /// Users present across the cluster, each once.
    pub(crate) fn user_count(&self) -> usize {
        self.users.len()
            + self
                .remote
                .keys()
                .filter(|id| !self.users.contains_key(*id))
                .count()
    }

    pub(crate) fn has_user(&self, user: &str) -> bool {
        self.users.contains_key(user) || self.remote.contains_key(user)
    }

    /// Records another node's presence change. Returns whether the user's
    /// presence across the cluster changed (joined or left everywhere).
    pub(crate) fn apply_remote(&mut self, (node, user, present): PresenceChange) -> bool {
        let before = self.has_user(&user.id);
        if present {
            self.remote
                .entry(user.id.clone())
                .or_insert_with(|| RemotePresence {
                    user: user.clone(),
                    nodes: Default::default(),
                })
                .nodes
                .insert(node);
        } else if let Some(entry) = self.remote.get_mut(&user.id) {
            entry.nodes.remove(&node);
            if entry.nodes.is_empty() {
                self.remote.shift_remove(&user.id);
            }
        }
        before != self.has_user(&user.id)
    }

    /// Nobody is in the room and nobody is waiting to get in.
    pub(crate) fn is_deserted(&self) -> bool {
        self.members.is_empty()
            && match &self.state {
                RoomState::Opening {
                    waiting, readers, ..
                } => waiting.is_empty() && readers.is_empty(),
                RoomState::Open(_) => true,
            }
    }
}

/// The users present, as shown in `room_info` and `online_users`: this
/// node's, then those only on other nodes.
pub(crate) fn user_list<'a>(
    users: &'a IndexMap<Arc<str>, Presence, FxBuildHasher>,
    remote: &'a IndexMap<Arc<str>, RemotePresence, FxBuildHasher>,
) -> Vec<&'a UserRef> {
    users
        .values()
        .map(|p| &p.user)
        .chain(
            remote
                .iter()
                .filter(|(id, _)| !users.contains_key(*id))
                .map(|(_, r)| &r.user),
        )
        .collect()
}

/// A message as kept for recovery: its serialized `new_message` frame.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct Logged {
    pub(crate) offset: u64,
    pub(crate) timestamp: Timestamp,
    pub(crate) frame: Bytes,
    /// The local connection that sent it, which never gets it back.
    pub(crate) sender: Option<ConnId>,
}

impl Logged {
    /// The heap a retained message holds besides its slot in the ring:
    /// its frame and the frame's allocation headers.
    pub(crate) fn cost(&self) -> usize {
        self.frame.len() + 32
    }
}

/// The contiguous tail of a room's history up to `head`, bounded by count and
/// age, plus messages that arrived ahead of a gap.
pub(crate) struct RoomLog {
    pub(crate) epoch: Epoch,
    /// Highest offset delivered to members, with every earlier retained one.
    pub(crate) head: u64,
    ring: VecDeque<Logged>,
    /// Messages beyond `head + 1`, held until the gap is filled.
    pub(crate) ahead: BTreeMap<u64, SequencedMessage>,
    /// An `OpenRoom { after }` is outstanding for this room.
    pub(crate) resyncing: bool,
    /// Cluster mode: the broker came back since this room's last resync,
    /// so the next one announces every local member again.
    pub(crate) reannounce: bool,
    /// Receipts for this node's messages whose delivery has not reached
    /// this node yet (in a cluster the receipt and the delivery travel
    /// different paths). The delivery sends the ack, so a sender never
    /// learns an offset before the messages below it.
    pub(crate) pending_acks: BTreeMap<u64, crate::event::AppendReceipt>,
    /// Receipts in an epoch this room is not in (the broker started a new
    /// one that this node has not been told of yet): they wait for the
    /// resync they asked for, so that the `room_reset` reaches the sender
    /// before an ack in the new epoch.
    pub(crate) foreign_acks: Vec<crate::event::AppendReceipt>,
    /// The head when the room was opened: messages up to it came with the
    /// snapshot, not through delivery, so their receipts ack at once.
    pub(crate) opened_head: u64,
    /// What the retained messages hold, as [`Logged::cost`] counts it
    /// (their slots in `ring` are counted by its capacity).
    bytes: usize,
    /// The hub's activity count at this room's latest message: the history
    /// bound trims the rooms with the oldest first.
    pub(crate) last_active: u64,
}

/// What a rejoining connection can be given.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Recovery<'a> {
    /// Every missed message, in offset order (possibly none).
    Complete(Vec<&'a Logged>),
    /// The epoch changed or the messages are gone.
    Impossible,
}

impl RoomLog {
    pub(crate) fn new(epoch: Epoch, head: u64) -> Self {
        RoomLog {
            epoch,
            head,
            ring: VecDeque::new(),
            ahead: BTreeMap::new(),
            resyncing: false,
            reannounce: false,
            pending_acks: BTreeMap::new(),
            foreign_acks: Vec::new(),
            opened_head: head,
            bytes: 0,
            last_active: 0,
        }
    }

    /// Records the message at `head + 1`.
    pub(crate) fn push(&mut self, logged: Logged, max_messages: usize) {
        debug_assert_eq!(logged.offset, self.head + 1, "log must stay contiguous");
        self.head = logged.offset;
        self.bytes += logged.cost();
        self.ring.push_back(logged);
        while self.ring.len() > max_messages {
            self.pop_oldest();
        }
    }

    fn pop_oldest(&mut self) {
        if let Some(gone) = self.ring.pop_front() {
            self.bytes -= gone.cost();
        }
    }

    /// What the retained messages hold, with every slot the ring has
    /// allocated (a ring grown to a thousand slots keeps them when it
    /// empties by age or count).
    pub(crate) fn bytes(&self) -> usize {
        self.bytes + self.ring.capacity() * std::mem::size_of::<Logged>()
    }

    /// Forgets the retained tail: the history continues after a hole.
    pub(crate) fn restart_at(&mut self, head: u64) {
        self.ring = VecDeque::new();
        self.bytes = 0;
        self.head = head;
    }

    /// Forgets every retained message (the history bound): a rejoin from
    /// before the head is told `recovered: false`.
    pub(crate) fn forget_history(&mut self) {
        self.restart_at(self.head);
    }

    /// Drops messages older than the retention age.
    pub(crate) fn trim_by_age(&mut self, now: Timestamp, max_age_ms: u64) {
        while self
            .ring
            .front()
            .is_some_and(|m| now.ms_since(m.timestamp) > max_age_ms)
        {
            self.pop_oldest();
        }
    }

    /// The frames after `since`, if every one of them is still retained.
    pub(crate) fn recover(&self, since: &Since) -> Recovery<'_> {
        if since.epoch != self.epoch || since.offset > self.head {
            return Recovery::Impossible;
        }
        if since.offset == self.head {
            return Recovery::Complete(Vec::new());
        }
        let first_needed = since.offset + 1;
        let Some(front) = self.ring.front() else {
            return Recovery::Impossible;
        };
        if front.offset > first_needed {
            return Recovery::Impossible;
        }
        // The ring is contiguous, so the index follows from the offset.
        let skip = usize::try_from(first_needed - front.offset).unwrap_or(usize::MAX);
        Recovery::Complete(self.ring.iter().skip(skip).collect())
    }

    /// A page of history as of `now` (older messages than the age limit
    /// trimmed first): the newest `limit` retained frames below `before`
    /// (all of them when `None`), oldest first, and whether earlier ones
    /// are retained. What a member's `history` and the API's share.
    pub(crate) fn page_at(
        &mut self,
        now: Timestamp,
        max_age_ms: u64,
        before: Option<u64>,
        limit: usize,
    ) -> (Vec<Bytes>, bool) {
        self.trim_by_age(now, max_age_ms);
        let (page, has_more) = self.page(before, limit);
        (page.iter().map(|m| m.frame.clone()).collect(), has_more)
    }

    /// The newest `limit` retained messages below `before` (all of them
    /// when `None`), oldest first, and whether earlier ones are retained.
    fn page(&self, before: Option<u64>, limit: usize) -> (Vec<&Logged>, bool) {
        let Some(front) = self.ring.front() else {
            return (Vec::new(), false);
        };
        // The ring is contiguous: the messages below `before` are a prefix.
        let below = before.map_or(self.ring.len(), |b| {
            usize::try_from(b.saturating_sub(front.offset))
                .map_or(self.ring.len(), |n| n.min(self.ring.len()))
        });
        let first = below.saturating_sub(limit);
        (self.ring.range(first..below).collect(), first > 0)
    }

    #[cfg(test)]
    pub(crate) fn retained(&self) -> usize {
        self.ring.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn log_with(epoch: &str, offsets: std::ops::RangeInclusive<u64>, max: usize) -> RoomLog {
        let mut log = RoomLog::new(Epoch::new(epoch), offsets.start() - 1);
        for o in offsets {
            log.push(
                Logged {
                    offset: o,
                    timestamp: Timestamp(o * 1000),
                    frame: Bytes::from(format!("m{o}")),
                    sender: None,
                },
                max,
            );
        }
        log
    }

    fn since(offset: u64, epoch: &str) -> Since {
        Since {
            offset,
            epoch: Epoch::new(epoch),
        }
    }

    fn frames(r: Recovery<'_>) -> Vec<String> {
        match r {
            Recovery::Complete(f) => f
                .into_iter()
                .map(|m| String::from_utf8_lossy(&m.frame).into_owned())
                .collect(),
            Recovery::Impossible => panic!("expected recovery"),
        }
    }

    #[test]
    fn recovers_exactly_the_missed_tail() {
        let log = log_with("e", 1..=5, 10);
        assert_eq!(frames(log.recover(&since(2, "e"))), ["m3", "m4", "m5"]);
        assert_eq!(frames(log.recover(&since(0, "e"))).len(), 5);
        assert!(frames(log.recover(&since(5, "e"))).is_empty());
    }

    #[test]
    fn refuses_other_epochs_future_offsets_and_trimmed_history() {
        let log = log_with("e", 1..=20, 10);
        assert_eq!(log.retained(), 10);
        assert_eq!(log.recover(&since(3, "other")), Recovery::Impossible);
        assert_eq!(log.recover(&since(21, "e")), Recovery::Impossible);
        assert_eq!(log.recover(&since(9, "e")), Recovery::Impossible);
        assert_eq!(frames(log.recover(&since(10, "e"))).len(), 10);
    }

    #[test]
    fn age_trim_makes_old_messages_unrecoverable() {
        let mut log = log_with("e", 1..=5, 10);
        log.trim_by_age(Timestamp(5_500), 2_000);
        assert_eq!(log.retained(), 2);
        assert_eq!(log.recover(&since(2, "e")), Recovery::Impossible);
        assert_eq!(frames(log.recover(&since(3, "e"))), ["m4", "m5"]);
    }
}
