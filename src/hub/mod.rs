//! The hub: presence index, live sessions and the fan-out core. No I/O.
//!
//! Transports hand the hub an [`Outbox`] per session; the hub only ever calls
//! its non-blocking [`Outbox::offer`]. A frame is encoded once by the caller
//! and the same reference-counted bytes go into every recipient's queue.
//!
//! Locking: one `RwLock` around the index and the session table, held only
//! for plain in-memory work (never across an `.await`): selection and
//! delivery take the read side, location updates and (un)registration the
//! write side, each for well under a millisecond.

pub mod presence;
pub mod queue;

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use bytes::Bytes;
use h3o::CellIndex;
use parking_lot::RwLock;

use crate::domain::{LatLng, Principal, Unit, UnitSet};
pub use presence::{PresenceIndex, ResponderId};
pub use queue::{Ready, SessionQueue};

/// One server → client text frame: UTF-8 JSON, encoded once, shared.
pub type Frame = Bytes;

/// What sits in a session's queue: the frame and its event `seq` (0 when
/// the frame is not a sequenced event) so a resuming session can skip what
/// its replay already sent.
///
/// One pointer wide, so a queue slot costs 8 bytes (a session's first
/// channel block is 32 slots, allocated when the session opens) and a
/// fan-out to N sessions is N reference-count increments.
#[derive(Debug, Clone)]
pub struct Outgoing(Arc<Envelope>);

#[derive(Debug)]
struct Envelope {
    seq: u64,
    frame: Frame,
}

impl Outgoing {
    pub fn new(seq: u64, frame: Frame) -> Self {
        Self(Arc::new(Envelope { seq, frame }))
    }
    pub fn seq(&self) -> u64 {
        self.0.seq
    }
    /// The frame's bytes (a cheap reference-counted clone).
    pub fn frame(&self) -> Frame {
        self.0.frame.clone()
    }
}

/// The result of offering a frame to a session's bounded queue.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Offer {
    Queued,
    /// The queue is full: the transport closes the session as slow; the
    /// client resumes from its last `seq`.
    Full,
    Closed,
}

/// A session's outbound queue, implemented by the transport.
pub trait Outbox: Send + Sync {
    /// Must never block.
    fn offer(&self, item: Outgoing) -> Offer;
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SessionId(pub u64);

/// What one fan-out did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Delivery {
    /// Recipients (responders) with at least one session that took the frame.
    pub responders_live: usize,
    /// Frames queued, over all sessions (responders and staff).
    pub frames: usize,
    /// Sessions whose queue was full (they are being closed as slow).
    pub slow: usize,
}

impl Delivery {
    /// Counts one offer; true when the frame was queued.
    fn tally(&mut self, offer: Offer) -> bool {
        match offer {
            Offer::Queued => self.frames += 1,
            Offer::Full => self.slow += 1,
            Offer::Closed => {}
        }
        offer == Offer::Queued
    }
}

/// A targeted responder as the alert record keeps it.
#[derive(Debug, Clone)]
pub struct TargetInfo {
    pub rid: ResponderId,
    pub sub: Arc<str>,
    pub unit: Unit,
    pub live: bool,
}

struct SessionEntry {
    outbox: Arc<dyn Outbox>,
    owner: Owner,
}

#[derive(Clone)]
enum Owner {
    Responder(ResponderId),
    Staff,
}

#[derive(Default)]
struct HubState {
    presence: PresenceIndex,
    /// Live sessions per responder, indexed by `ResponderId`.
    responder_sessions: Vec<Vec<(SessionId, Arc<dyn Outbox>)>>,
    staff: HashMap<SessionId, Arc<dyn Outbox>>,
    sessions: HashMap<SessionId, SessionEntry>,
}

impl HubState {
    fn sessions_of(&self, rid: ResponderId) -> &[(SessionId, Arc<dyn Outbox>)] {
        self.responder_sessions
            .get(rid.0 as usize)
            .map(Vec::as_slice)
            .unwrap_or(&[])
    }

    fn ensure_slot(&mut self, rid: ResponderId) {
        let need = rid.0 as usize + 1;
        if self.responder_sessions.len() < need {
            self.responder_sessions.resize_with(need, Vec::new);
        }
    }
}

/// Cheap to share: wrap in `Arc`.
#[derive(Default)]
pub struct Hub {
    state: RwLock<HubState>,
    next_session: AtomicU64,
}

impl Hub {
    pub fn new() -> Self {
        Self::default()
    }

    fn next_id(&self) -> SessionId {
        SessionId(self.next_session.fetch_add(1, Ordering::Relaxed) + 1)
    }

    /// Registers a live session for a principal. Responders are interned in
    /// the presence index (their place, if known, is kept).
    pub fn register(&self, principal: &Principal, outbox: Arc<dyn Outbox>) -> SessionId {
        let sid = self.next_id();
        let mut st = self.state.write();
        let owner = match (principal.role.is_staff(), principal.unit) {
            (false, Some(unit)) => {
                let rid = st.presence.intern(&principal.sub, unit);
                st.ensure_slot(rid);
                st.responder_sessions[rid.0 as usize].push((sid, outbox.clone()));
                Owner::Responder(rid)
            }
            _ => {
                st.staff.insert(sid, outbox.clone());
                Owner::Staff
            }
        };
        st.sessions.insert(sid, SessionEntry { outbox, owner });
        sid
    }

    pub fn unregister(&self, sid: SessionId) {
        let mut st = self.state.write();
        let Some(entry) = st.sessions.remove(&sid) else {
            return;
        };
        match entry.owner {
            Owner::Responder(rid) => {
                if let Some(list) = st.responder_sessions.get_mut(rid.0 as usize) {
                    list.retain(|(s, _)| *s != sid);
                }
            }
            Owner::Staff => {
                st.staff.remove(&sid);
            }
        }
    }

    /// The responder's id, registering it without a place on first sight.
    pub fn intern(&self, sub: &Arc<str>, unit: Unit) -> ResponderId {
        let mut st = self.state.write();
        let rid = st.presence.intern(sub, unit);
        st.ensure_slot(rid);
        rid
    }

    /// Records a responder's cell; returns its id.
    pub fn set_place(
        &self,
        sub: &Arc<str>,
        unit: Unit,
        cell: CellIndex,
        at_ms: u64,
    ) -> ResponderId {
        self.state
            .write()
            .presence
            .set_place(sub, unit, cell, at_ms)
    }

    /// Forgets the responder's cell (off duty).
    pub fn clear_place(&self, sub: &str) {
        self.state.write().presence.clear_place(sub);
    }

    /// The responder's last cell and when it was seen.
    pub fn place_of(&self, sub: &str) -> Option<(CellIndex, u64)> {
        let st = self.state.read();
        let rid = st.presence.id_of(sub)?;
        st.presence.get(rid)?.place.map(|p| (p.cell, p.seen_at_ms))
    }

    pub fn responder_id(&self, sub: &str) -> Option<ResponderId> {
        self.state.read().presence.id_of(sub)
    }

    pub fn is_live(&self, sub: &str) -> bool {
        let st = self.state.read();
        st.presence
            .id_of(sub)
            .is_some_and(|rid| !st.sessions_of(rid).is_empty())
    }

    /// Those of `subs` with no live session (under one lock, for Web Push).
    pub fn offline(&self, subs: impl IntoIterator<Item = Arc<str>>) -> Vec<Arc<str>> {
        let st = self.state.read();
        subs.into_iter()
            .filter(|s| {
                st.presence
                    .id_of(s)
                    .is_none_or(|rid| st.sessions_of(rid).is_empty())
            })
            .collect()
    }

    /// Responders of `units` seen at or after `fresh_after_ms` whose cell
    /// centre lies within `radius_m` of `centre` (the cells
    /// [`crate::geo::cover`] would list), each with whether it has a live
    /// session; found through the presence index's parent cells.
    pub fn select_circle(
        &self,
        centre: LatLng,
        radius_m: f64,
        units: UnitSet,
        fresh_after_ms: u64,
    ) -> Vec<TargetInfo> {
        let st = self.state.read();
        let mut rids = Vec::new();
        st.presence
            .select_circle(centre, radius_m, units, fresh_after_ms, &mut rids);
        Self::targets(&st, rids)
    }

    fn targets(st: &HubState, rids: Vec<ResponderId>) -> Vec<TargetInfo> {
        rids.into_iter()
            .filter_map(|rid| {
                let entry = st.presence.get(rid)?;
                Some(TargetInfo {
                    rid,
                    sub: entry.sub.clone(),
                    unit: entry.unit,
                    live: !st.sessions_of(rid).is_empty(),
                })
            })
            .collect()
    }

    /// Runs `f` on the presence index under the read lock (benches, reports).
    pub fn with_presence<R>(&self, f: impl FnOnce(&PresenceIndex) -> R) -> R {
        f(&self.state.read().presence)
    }

    /// Fan-out: offers `item` to every session of every recipient, and to every
    /// staff session when `to_staff`.
    pub fn deliver(&self, recipients: &[ResponderId], item: &Outgoing, to_staff: bool) -> Delivery {
        let st = self.state.read();
        let mut d = Delivery::default();
        for rid in recipients {
            let mut reached = false;
            for (_, outbox) in st.sessions_of(*rid) {
                reached |= d.tally(outbox.offer(item.clone()));
            }
            d.responders_live += usize::from(reached);
        }
        if to_staff {
            for outbox in st.staff.values() {
                d.tally(outbox.offer(item.clone()));
            }
        }
        d
    }

    /// Sends to the given sessions (watchers, one client).
    pub fn send_to(&self, sessions: &[SessionId], item: &Outgoing) -> Delivery {
        let st = self.state.read();
        let mut d = Delivery::default();
        for sid in sessions {
            if let Some(entry) = st.sessions.get(sid) {
                d.tally(entry.outbox.offer(item.clone()));
            }
        }
        d
    }

    /// Live session count and registered responder count.
    pub fn stats(&self) -> HubStats {
        let st = self.state.read();
        HubStats {
            sessions: st.sessions.len(),
            staff_sessions: st.staff.len(),
            responders: st.presence.len(),
            occupied_cells: st.presence.cell_count(),
        }
    }
}

#[derive(Debug, Clone, Copy, Default)]
pub struct HubStats {
    pub sessions: usize,
    pub staff_sessions: usize,
    pub responders: usize,
    pub occupied_cells: usize,
}

/// An outbox that counts and keeps what it is offered, up to a bound: for
/// tests and benches of the core without sockets.
pub struct MemoryOutbox {
    capacity: usize,
    items: parking_lot::Mutex<Vec<Outgoing>>,
}

impl MemoryOutbox {
    pub fn new(capacity: usize) -> Self {
        Self {
            capacity,
            items: parking_lot::Mutex::new(Vec::new()),
        }
    }
    pub fn take(&self) -> Vec<Outgoing> {
        std::mem::take(&mut *self.items.lock())
    }
}

impl Outbox for MemoryOutbox {
    fn offer(&self, item: Outgoing) -> Offer {
        let mut items = self.items.lock();
        if items.len() >= self.capacity {
            return Offer::Full;
        }
        items.push(item);
        Offer::Queued
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::{LatLng, Role};
    use crate::geo;

    fn responder(sub: &str, unit: Unit) -> Principal {
        Principal {
            sub: sub.into(),
            role: Role::Responder,
            unit: Some(unit),
            name: String::new(),
        }
    }

    #[test]
    fn deliver_reaches_every_session_and_staff_and_reports_full() {
        let hub = Hub::new();
        let res = geo::resolution(9).expect("res");
        let cell = geo::cell_at(LatLng::new(30.75, 120.75).expect("ll"), res).expect("cell");
        let phone = Arc::new(MemoryOutbox::new(10));
        let tablet = Arc::new(MemoryOutbox::new(0));
        let police = Arc::new(MemoryOutbox::new(10));
        let p = responder("r1", Unit::Volunteer);
        hub.register(&p, phone.clone());
        hub.register(&p, tablet.clone());
        hub.register(
            &Principal {
                sub: "p1".into(),
                role: Role::Police,
                unit: None,
                name: String::new(),
            },
            police.clone(),
        );
        hub.set_place(&p.sub, Unit::Volunteer, cell, 10);
        let targets = hub.select_circle(geo::center(cell), 1.0, UnitSet::all(), 0);
        assert_eq!(targets.len(), 1);
        assert!(targets[0].live);
        let item = Outgoing::new(1, Bytes::from_static(b"{}"));
        let d = hub.deliver(&[targets[0].rid], &item, true);
        assert_eq!(
            d,
            Delivery {
                responders_live: 1,
                frames: 2,
                slow: 1
            }
        );
        assert_eq!(phone.take().len(), 1);
        assert_eq!(police.take().len(), 1);
    }

    #[test]
    fn unregister_removes_the_session() {
        let hub = Hub::new();
        let p = responder("r1", Unit::Patrol);
        let sid = hub.register(&p, Arc::new(MemoryOutbox::new(1)));
        assert!(hub.is_live("r1"));
        hub.unregister(sid);
        assert!(!hub.is_live("r1"));
        assert_eq!(hub.stats().sessions, 0);
    }
}
