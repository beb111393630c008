//! The node's record of what happened: the event log (a bounded ring, with a broadcast
//! channel for live subscribers such as the SSE stream) and the change records with
//! their states. A node implementation writes to it; the API reads from it.

use std::collections::VecDeque;
use std::time::Duration;

use parking_lot::Mutex;
use tokio::sync::{broadcast, watch};

use crate::model::{now_ms, ChangeRecord, ChangeState, Event, StateStamp};

/// Events kept for `GET /api/v1/events`.
const EVENTS_KEPT: usize = 2000;
/// Finished changes kept for `GET /api/v1/changes`.
const CHANGES_KEPT: usize = 500;

/// Event log and change records of one node. Shared by reference (`Arc`).
pub struct Journal {
    node: String,
    events: Mutex<VecDeque<Event>>,
    next_seq: Mutex<u64>,
    live: broadcast::Sender<Event>,
    changes: Mutex<VecDeque<ChangeRecord>>,
    next_change: Mutex<u64>,
    /// Bumped on every change update, so waiters can watch for a final state.
    version: watch::Sender<u64>,
    /// Hold times of finished remaps.
    hold_times: crate::histogram::Histogram,
}

impl Journal {
    pub fn new(node: impl Into<String>) -> Journal {
        let (live, _) = broadcast::channel(1024);
        let (version, _) = watch::channel(0);
        Journal {
            node: node.into(),
            events: Mutex::new(VecDeque::new()),
            next_seq: Mutex::new(1),
            live,
            changes: Mutex::new(VecDeque::new()),
            next_change: Mutex::new(1),
            version,
            hold_times: crate::histogram::Histogram::new(crate::histogram::HOLD_BUCKETS),
        }
    }

    /// The node name events carry.
    pub fn node(&self) -> &str {
        &self.node
    }

    /// Log an event.
    pub fn event(&self, level: &str, kind: &str, message: impl Into<String>) {
        self.push(level, kind, message.into(), None);
    }

    fn push(&self, level: &str, kind: &str, message: String, change: Option<ChangeRecord>) {
        let mut events = self.events.lock();
        let seq = {
            let mut n = self.next_seq.lock();
            let s = *n;
            *n += 1;
            s
        };
        let ev = Event {
            seq,
            time_ms: now_ms(),
            level: level.into(),
            kind: kind.into(),
            node: self.node.clone(),
            message,
            change,
        };
        match ev.level.as_str() {
            "error" => tracing::error!(kind, "{}", ev.message),
            "warn" => tracing::warn!(kind, "{}", ev.message),
            _ => tracing::info!(kind, "{}", ev.message),
        }
        if events.len() >= EVENTS_KEPT {
            events.pop_front();
        }
        events.push_back(ev.clone());
        // Sent under the lock so subscribers see events in `seq` order.
        let _ = self.live.send(ev);
    }

    /// Events with `seq > since`, oldest first, at most `limit` (the newest ones).
    pub fn events(&self, since: u64, limit: usize) -> Vec<Event> {
        let events = self.events.lock();
        let all: Vec<Event> = events.iter().filter(|e| e.seq > since).cloned().collect();
        let skip = all.len().saturating_sub(limit);
        all.into_iter().skip(skip).collect()
    }

    /// Live events from now on (and, atomically, the backlog after `since`).
    pub fn subscribe(&self, since: Option<u64>) -> (Vec<Event>, broadcast::Receiver<Event>) {
        let events = self.events.lock();
        let rx = self.live.subscribe();
        let backlog = match since {
            Some(s) => events.iter().filter(|e| e.seq > s).cloned().collect(),
            None => Vec::new(),
        };
        (backlog, rx)
    }

    /// Open a change record in state `staged`-to-be; returns its id. The record starts
    /// in `state` (usually [`ChangeState::Staged`]).
    pub fn open_change(&self, mut rec: ChangeRecord) -> u64 {
        let id = {
            let mut n = self.next_change.lock();
            let id = *n;
            *n += 1;
            id
        };
        let now = now_ms();
        rec.id = id;
        rec.created_ms = now;
        rec.updated_ms = now;
        rec.history = vec![StateStamp {
            state: rec.state,
            at_ms: now,
        }];
        {
            let mut changes = self.changes.lock();
            if changes.len() >= CHANGES_KEPT {
                if let Some(i) = changes.iter().position(|c| c.state.is_final()) {
                    changes.remove(i);
                }
            }
            changes.push_back(rec.clone());
        }
        self.push(
            "info",
            "change",
            format!(
                "change {id}: {} of volume {} {} (epoch {} -> {})",
                rec.kind, rec.volume, rec.state, rec.from_epoch, rec.to_epoch
            ),
            Some(rec),
        );
        self.version.send_modify(|v| *v += 1);
        id
    }

    /// Move change `id` to `state`, logging an event. `error`/`hint` are recorded when
    /// given.
    pub fn set_state(
        &self,
        id: u64,
        state: ChangeState,
        error: Option<String>,
        hint: Option<String>,
    ) {
        let Some(rec) = self.update(id, |r| {
            r.state = state;
            if error.is_some() {
                r.error = error.clone();
            }
            if hint.is_some() {
                r.hint = hint.clone();
            }
            r.history.push(StateStamp {
                state,
                at_ms: now_ms(),
            });
        }) else {
            return;
        };
        let level = match state {
            ChangeState::Failed | ChangeState::RolledBack => "error",
            _ => "info",
        };
        let mut msg = format!("change {id}: {} of volume {} {state}", rec.kind, rec.volume);
        if let Some(e) = &rec.error {
            if state.is_final() {
                msg.push_str(&format!(": {e}"));
            }
        }
        self.push(level, "change", msg, Some(rec));
    }

    /// Record copy progress; emits a `progress` event every `every` blocks or so.
    pub fn progress(&self, id: u64, copied: u64, emit: bool) {
        let Some(rec) = self.update(id, |r| r.copied_blocks = copied) else {
            return;
        };
        if emit {
            let pct = (copied * 100).checked_div(rec.moved_blocks).unwrap_or(100);
            self.push(
                "info",
                "progress",
                format!(
                    "change {id}: copied {copied} of {} blocks ({pct}%)",
                    rec.moved_blocks
                ),
                Some(rec),
            );
        }
    }

    /// Record how long the change held its ranges.
    pub fn set_hold(&self, id: u64, held: Duration) {
        self.hold_times.observe(held);
        self.update(id, |r| r.hold_ms = Some(held.as_millis() as u64));
    }

    /// Record one hold time (a node's part in a cluster-wide remap) for the histogram.
    pub fn record_hold(&self, held: Duration) {
        self.hold_times.observe(held);
    }

    /// Apply `f` to change `id`; returns the updated record.
    pub fn update(&self, id: u64, f: impl FnOnce(&mut ChangeRecord)) -> Option<ChangeRecord> {
        let rec = {
            let mut changes = self.changes.lock();
            let r = changes.iter_mut().find(|c| c.id == id)?;
            f(r);
            r.updated_ms = now_ms();
            r.clone()
        };
        self.version.send_modify(|v| *v += 1);
        Some(rec)
    }

    /// Every change kept, newest first.
    pub fn changes(&self) -> Vec<ChangeRecord> {
        self.changes.lock().iter().rev().cloned().collect()
    }

    /// Change `id`.
    pub fn change(&self, id: u64) -> Option<ChangeRecord> {
        self.changes.lock().iter().find(|c| c.id == id).cloned()
    }

    /// Wait until change `id` reaches a final state (or `timeout` passes); returns the
    /// record as it is then.
    pub async fn wait_final(&self, id: u64, timeout: Duration) -> Option<ChangeRecord> {
        let mut rx = self.version.subscribe();
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let rec = self.change(id)?;
            if rec.state.is_final() {
                return Some(rec);
            }
            if tokio::time::timeout_at(deadline, rx.changed())
                .await
                .is_err()
            {
                return Some(rec);
            }
        }
    }

    /// Hold times of finished remaps.
    pub fn hold_times(&self) -> crate::histogram::HistogramSnapshot {
        self.hold_times.snapshot()
    }

    /// Number of changes by state.
    pub fn change_counts(&self) -> Vec<(ChangeState, u64)> {
        let changes = self.changes.lock();
        ChangeState::ALL
            .iter()
            .map(|s| (*s, changes.iter().filter(|c| c.state == *s).count() as u64))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec() -> ChangeRecord {
        ChangeRecord {
            id: 0,
            kind: "remap".into(),
            volume: "v".into(),
            state: ChangeState::Staged,
            leader: "n".into(),
            from_epoch: 1,
            to_epoch: 2,
            affected: vec![],
            moved_blocks: 10,
            copied_blocks: 0,
            hold_ms: None,
            extents_before: vec![],
            extents_after: vec![],
            created_ms: 0,
            updated_ms: 0,
            error: None,
            hint: None,
            history: vec![],
            cluster_change: None,
            timeline: vec![],
        }
    }

    #[tokio::test]
    async fn changes_and_events() {
        let j = Journal::new("n1");
        let (_, mut rx) = j.subscribe(None);
        let id = j.open_change(rec());
        j.progress(id, 5, true);
        j.set_state(id, ChangeState::Done, None, None);
        let r = j.wait_final(id, Duration::from_secs(1)).await.unwrap();
        assert_eq!(r.state, ChangeState::Done);
        assert_eq!(r.copied_blocks, 5);
        assert_eq!(r.history.len(), 2);
        let evs = j.events(0, 100);
        assert_eq!(evs.len(), 3);
        assert_eq!(evs[1].kind, "progress");
        assert!(evs[1].message.contains("50%"), "{}", evs[1].message);
        assert_eq!(rx.recv().await.unwrap().seq, 1);
        assert_eq!(j.events(2, 100).len(), 1);
        assert_eq!(j.events(0, 1)[0].seq, 3);
        let (backlog, _) = j.subscribe(Some(1));
        assert_eq!(backlog.len(), 2);
    }
}
