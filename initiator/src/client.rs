//! [`Client`]: N sessions to one back-end target (`sessions = N`), used round-robin,
//! each re-established after a connection loss.
//!
//! Every session slot keeps its ISID for life, so a new login reinstates the old
//! session on the target (RFC 7143 §6.3.5) and the target's per-I_T-nexus state
//! (reservations, unit attentions) follows us. A supervisor task per slot waits for its
//! session to end and logs in again with exponential backoff (capped).
//!
//! Commands in flight when a connection dies are retried once on a live session if
//! they are idempotent (reads, INQUIRY, SYNCHRONIZE CACHE, ...); others fail with
//! [`InitiatorError::ConnectionLost`], which says that the command may or may not have
//! run. Commands that never reached the wire are always retried until their timeout.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use tokio::sync::{watch, Notify};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::config::{random_isid, InitiatorConfig};
use crate::error::InitiatorError;
use crate::outcome::ScsiOutcome;
use crate::session::Session;

/// Sessions to one target with reconnect. Cheap to clone.
#[derive(Clone)]
pub struct Client {
    inner: Arc<ClientInner>,
}

struct ClientInner {
    cfg: Arc<InitiatorConfig>,
    slots: Vec<Arc<Slot>>,
    rr: AtomicUsize,
    /// Woken whenever a slot gets a new session.
    changed: Notify,
    shutdown: CancellationToken,
}

struct Slot {
    index: usize,
    isid: [u8; 6],
    current: watch::Sender<Option<Session>>,
    logins: AtomicU64,
}

impl Drop for ClientInner {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

impl Client {
    /// Opens `cfg.sessions` sessions (at least one). Fails if any initial login fails.
    pub async fn connect(cfg: InitiatorConfig) -> Result<Client, InitiatorError> {
        let cfg = Arc::new(cfg);
        let n = cfg.sessions.max(1);
        let mut slots = Vec::with_capacity(n);
        for i in 0..n {
            let isid = match cfg.isid {
                Some(mut isid) => {
                    // Distinct qualifiers for the sessions of one client.
                    let q = u16::from_be_bytes([isid[4], isid[5]]).wrapping_add(i as u16);
                    isid[4..6].copy_from_slice(&q.to_be_bytes());
                    isid
                }
                None => random_isid(i as u16),
            };
            let session = Session::connect_with_isid(cfg.clone(), isid).await?;
            let (tx, _) = watch::channel(Some(session));
            slots.push(Arc::new(Slot {
                index: i,
                isid,
                current: tx,
                logins: AtomicU64::new(1),
            }));
        }
        let inner = Arc::new(ClientInner {
            cfg,
            slots,
            rr: AtomicUsize::new(0),
            changed: Notify::new(),
            shutdown: CancellationToken::new(),
        });
        for slot in &inner.slots {
            tokio::spawn(supervise(Arc::downgrade(&inner), slot.clone()));
        }
        Ok(Client { inner })
    }

    /// The configuration.
    pub fn config(&self) -> &InitiatorConfig {
        &self.inner.cfg
    }

    /// The sessions that are logged in right now.
    pub fn sessions(&self) -> Vec<Session> {
        self.inner
            .slots
            .iter()
            .filter_map(|s| s.current.borrow().clone())
            .filter(|s| !s.is_closed())
            .collect()
    }

    /// Logins done so far over all slots (initial ones included).
    pub fn login_count(&self) -> u64 {
        self.inner
            .slots
            .iter()
            .map(|s| s.logins.load(Ordering::Relaxed))
            .sum()
    }

    /// Waits until every slot has a live session, or `timeout` passes.
    pub async fn wait_connected(&self, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        loop {
            let notified = self.inner.changed.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if self.sessions().len() == self.inner.slots.len() {
                return true;
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                return false;
            }
        }
    }

    /// Runs a SCSI command on some live session (round-robin), see
    /// [`Session::execute`]. Waits for a reconnect when no session is up, within
    /// `timeout`.
    pub async fn execute(
        &self,
        lun: u64,
        cdb: &[u8],
        data_out: Bytes,
        read_len: u32,
        timeout: Duration,
    ) -> Result<ScsiOutcome, InitiatorError> {
        let deadline = Instant::now() + timeout;
        let idempotent = data_out.is_empty() && cdb.first().is_some_and(|op| is_idempotent(*op));
        let mut retried = false;
        loop {
            if self.inner.shutdown.is_cancelled() {
                return Err(InitiatorError::Closed {
                    target: self.inner.cfg.target_name.clone(),
                });
            }
            let Some(session) = self.pick(deadline).await else {
                return Err(InitiatorError::NotConnected {
                    portal: self.inner.cfg.portal,
                    target: self.inner.cfg.target_name.clone(),
                });
            };
            let left = deadline.saturating_duration_since(Instant::now());
            match session
                .execute(lun, cdb, data_out.clone(), read_len, left)
                .await
            {
                Err(e) if e.never_sent() && Instant::now() < deadline => continue,
                Err(e @ InitiatorError::ConnectionLost { .. }) if idempotent && !retried => {
                    tracing::info!(error = %e, "retrying an idempotent command on a new session");
                    retried = true;
                }
                other => return other,
            }
        }
    }

    /// A live session (round-robin), waiting for a reconnect within `timeout`: for
    /// commands that must share one I_T nexus, such as an EXTENDED COPY and the
    /// RECEIVE COPY RESULTS that asks for its outcome.
    pub async fn session(&self, timeout: Duration) -> Result<Session, InitiatorError> {
        if self.inner.shutdown.is_cancelled() {
            return Err(InitiatorError::Closed {
                target: self.inner.cfg.target_name.clone(),
            });
        }
        self.pick(Instant::now() + timeout)
            .await
            .ok_or_else(|| InitiatorError::NotConnected {
                portal: self.inner.cfg.portal,
                target: self.inner.cfg.target_name.clone(),
            })
    }

    /// A live session, round-robin; waits for a reconnect until `deadline`.
    async fn pick(&self, deadline: Instant) -> Option<Session> {
        loop {
            let notified = self.inner.changed.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            let n = self.inner.slots.len();
            let start = self.inner.rr.fetch_add(1, Ordering::Relaxed);
            for i in 0..n {
                let slot = &self.inner.slots[(start + i) % n];
                let s = slot.current.borrow().clone();
                if let Some(s) = s {
                    if !s.is_closed() {
                        return Some(s);
                    }
                }
            }
            tokio::select! {
                _ = &mut notified => {}
                _ = tokio::time::sleep_until(deadline) => return None,
                _ = self.inner.shutdown.cancelled() => return None,
            }
        }
    }

    /// Stops reconnecting and logs every session out.
    pub async fn close(&self) {
        self.inner.shutdown.cancel();
        let sessions: Vec<Session> = self
            .inner
            .slots
            .iter()
            .filter_map(|s| s.current.send_replace(None))
            .collect();
        let logouts = sessions.iter().map(|s| s.logout());
        for r in futures::future::join_all(logouts).await {
            if let Err(e) = r {
                tracing::debug!(error = %e, "logout failed");
            }
        }
        self.inner.changed.notify_waiters();
    }
}

/// Per slot: wait for the session to end, then log in again with backoff.
async fn supervise(client: std::sync::Weak<ClientInner>, slot: Arc<Slot>) {
    let mut rx = slot.current.subscribe();
    loop {
        let Some(inner) = client.upgrade() else {
            return;
        };
        let shutdown = inner.shutdown.clone();
        let cfg = inner.cfg.clone();
        drop(inner);
        let current = rx.borrow_and_update().clone();
        match current {
            Some(s) => {
                tokio::select! {
                    _ = s.closed() => {}
                    _ = shutdown.cancelled() => return,
                }
                tracing::warn!(
                    target = %cfg.target_name,
                    slot = slot.index,
                    reason = s.close_reason().unwrap_or_default(),
                    "session lost; reconnecting"
                );
            }
            None if shutdown.is_cancelled() => return,
            None => {}
        }
        slot.current.send_replace(None);
        let mut backoff = cfg.reconnect_initial.max(Duration::from_millis(1));
        loop {
            if shutdown.is_cancelled() {
                return;
            }
            match Session::connect_with_isid(cfg.clone(), slot.isid).await {
                Ok(s) => {
                    slot.logins.fetch_add(1, Ordering::Relaxed);
                    tracing::info!(target = %cfg.target_name, slot = slot.index, tsih = s.tsih(), "session re-established");
                    if shutdown.is_cancelled() {
                        let _ = s.logout().await;
                        return;
                    }
                    slot.current.send_replace(Some(s));
                    if let Some(inner) = client.upgrade() {
                        inner.changed.notify_waiters();
                    }
                    break;
                }
                Err(e) => {
                    tracing::warn!(target = %cfg.target_name, slot = slot.index, error = %e, retry_in = ?backoff, "reconnect failed");
                    tokio::select! {
                        _ = tokio::time::sleep(backoff) => {}
                        _ = shutdown.cancelled() => return,
                    }
                    backoff = (backoff * 2).min(cfg.reconnect_max.max(backoff));
                }
            }
        }
    }
}

/// Commands that may safely run twice: they read, or (SYNCHRONIZE CACHE) have the
/// same effect however often they run.
pub fn is_idempotent(opcode: u8) -> bool {
    matches!(
        opcode,
        0x00 // TEST UNIT READY
            | 0x03 // REQUEST SENSE
            | 0x08 // READ(6)
            | 0x12 // INQUIRY
            | 0x1a // MODE SENSE(6)
            | 0x25 // READ CAPACITY(10)
            | 0x28 // READ(10)
            | 0x2f // VERIFY(10)
            | 0x35 // SYNCHRONIZE CACHE(10)
            | 0x4d // LOG SENSE
            | 0x5a // MODE SENSE(10)
            | 0x88 // READ(16)
            | 0x8f // VERIFY(16)
            | 0x91 // SYNCHRONIZE CACHE(16)
            | 0x9e // SERVICE ACTION IN(16): READ CAPACITY(16), GET LBA STATUS
            | 0xa0 // REPORT LUNS
            | 0xa3 // MAINTENANCE IN (REPORT TARGET PORT GROUPS, ...)
            | 0xa8 // READ(12)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn idempotent_commands() {
        assert!(is_idempotent(0x88));
        assert!(is_idempotent(0x28));
        assert!(is_idempotent(0x91));
        assert!(!is_idempotent(0x8a), "WRITE(16)");
        assert!(!is_idempotent(0x2a), "WRITE(10)");
        assert!(!is_idempotent(0x42), "UNMAP");
        assert!(!is_idempotent(0x89), "COMPARE AND WRITE");
    }
}
