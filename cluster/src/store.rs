//! Durable Raft storage: the log, the vote and snapshots on disk, and the state
//! machine that applies committed commands to a [`ClusterState`].
//!
//! Layout of a node's data directory:
//!
//! ```text
//! vote.json        the last vote (term + candidate), replaced atomically
//! committed.json   the last known committed log id (advisory; replayed at start)
//! purged.json      the last log id removed from the log
//! log.bin          the log entries, appended: records of [length u32 LE][CRC32C u32
//!                  LE][the entry as JSON]
//! snapshot.json    the last snapshot: its metadata and the state it captured
//! ```
//!
//! Small files are written to a temporary name, fsynced, renamed into place, and the
//! directory is fsynced, so a crash leaves either the old or the new file. An append
//! writes its records at the end of `log.bin` and is reported flushed to Raft only
//! after `fdatasync`; a record torn by a crash (never reported flushed) fails its
//! length or checksum and is cut off when the log is opened. Truncating and purging
//! rewrite `log.bin` atomically. (One file per entry, the first layout, cost a file
//! creation, two fsyncs and an inode scan per entry: about a sixth of a node's CPU
//! during back-to-back remaps. A log in that layout, `log/<index>.json`, is read and
//! converted at start.)
//! The state machine itself is not persisted per entry: at start it loads the snapshot
//! and Raft re-applies the log from there up to the committed index.

use std::collections::BTreeMap;
use std::fmt::Debug;
use std::fs::{self, File};
use std::io::{Cursor, Write as _};
use std::ops::RangeBounds;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use arc_swap::ArcSwap;
use openraft::storage::{LogFlushed, RaftLogStorage, RaftStateMachine};
use openraft::{
    Entry, EntryPayload, LogId, LogState, OptionalSend, RaftLogReader, RaftSnapshotBuilder,
    Snapshot, SnapshotMeta, StorageError, StorageIOError, StoredMembership, Vote,
};
use parking_lot::Mutex;
use serde::{de::DeserializeOwned, Deserialize, Serialize};
use tokio::sync::broadcast;

use crate::state::{ClusterState, Command, Outcome};
use crate::{NodeId, TypeConfig};

type SErr = StorageError<NodeId>;

/// One applied command, as told to [`crate::Cluster::subscribe`] subscribers. The
/// state after it is [`crate::Cluster::state`] (published before the event is sent).
#[derive(Debug, Clone)]
pub enum Event {
    /// A command was applied at log `index`.
    Applied {
        index: u64,
        command: Arc<Command>,
        outcome: Outcome,
    },
    /// The membership changed (Raft voters/learners).
    Membership { index: u64 },
    /// The whole state was replaced by a snapshot from the leader (a node that was far
    /// behind): re-read everything.
    Snapshot { index: u64 },
}

/// The state every reader sees: swapped atomically after each applied batch.
pub(crate) struct Published {
    pub state: ArcSwap<ClusterState>,
    pub events: broadcast::Sender<Event>,
    /// Called for every event synchronously, after the state is published and before
    /// the entries count as applied (see [`crate::ClusterNode::set_applier`]).
    pub applier: parking_lot::RwLock<Option<Applier>>,
    /// Applied entries whose local effect is still being completed.
    pub settling: Arc<Settling>,
}

/// A synchronous observer of applied events. It must be quick and must not block: what
/// takes longer (a PREEMPT AND ABORT's wait for the logical unit's writes in flight)
/// holds a [`Settling`] guard for the entry's index instead, and the entry does not
/// count as *settled* on this node until it is dropped.
pub type Applier = Arc<dyn Fn(&ClusterState, &Event) + Send + Sync>;

/// Log indexes whose local effect is still being completed after they were applied
/// (writes being drained after a PREEMPT AND ABORT). A node reports an index
/// *settled* once it has applied it and nothing at or below it is still settling;
/// a PR OUT waits for that on every serving node
/// ([`crate::ClusterNode::confirm_applied`]). Raft itself does not wait: later
/// entries (a remap's switch, say) apply meanwhile.
#[derive(Debug, Default)]
pub struct Settling {
    pending: parking_lot::Mutex<std::collections::BTreeMap<u64, usize>>,
    pub(crate) changed: tokio::sync::Notify,
}

/// Holds its index unsettled until dropped.
#[derive(Debug)]
#[must_use = "the index settles when the guard is dropped"]
pub struct SettleGuard {
    settling: Arc<Settling>,
    index: u64,
}

impl Settling {
    /// Hold `index` unsettled until the guard is dropped.
    pub fn hold(self: &Arc<Self>, index: u64) -> SettleGuard {
        *self.pending.lock().entry(index).or_default() += 1;
        SettleGuard {
            settling: self.clone(),
            index,
        }
    }

    /// How far this node has settled, given how far it has applied.
    pub fn settled(&self, applied: u64) -> u64 {
        match self.pending.lock().keys().next() {
            Some(&first) => applied.min(first.saturating_sub(1)),
            None => applied,
        }
    }
}

impl Drop for SettleGuard {
    fn drop(&mut self) {
        let mut p = self.settling.pending.lock();
        if let Some(n) = p.get_mut(&self.index) {
            *n -= 1;
            if *n == 0 {
                p.remove(&self.index);
            }
        }
        drop(p);
        self.settling.changed.notify_waiters();
    }
}

impl Published {
    fn emit(&self, state: &ClusterState, ev: Event) {
        if let Some(f) = self.applier.read().as_ref() {
            f(state, &ev);
        }
        // No subscribers is fine.
        let _ = self.events.send(ev);
    }
}

impl Published {
    pub fn new() -> Arc<Published> {
        let (events, _) = broadcast::channel(1024);
        Arc::new(Published {
            state: ArcSwap::from_pointee(ClusterState::default()),
            events,
            applier: parking_lot::RwLock::new(None),
            settling: Arc::default(),
        })
    }
}

fn write_atomic(dir: &Path, name: &str, bytes: &[u8], sync_dir: bool) -> std::io::Result<()> {
    let tmp = dir.join(format!(".{name}.tmp"));
    {
        let mut f = File::create(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
    }
    fs::rename(&tmp, dir.join(name))?;
    if sync_dir {
        File::open(dir)?.sync_all()?;
    }
    Ok(())
}

/// Run file I/O (writes and fsyncs) on the blocking pool: an fsync takes milliseconds,
/// and a runtime thread blocked on it would stall the iSCSI sessions and back-end
/// I/O that share the runtime (host latency during remaps).
async fn on_disk<T: Send + 'static>(
    f: impl FnOnce() -> std::io::Result<T> + Send + 'static,
) -> std::io::Result<T> {
    match tokio::runtime::Handle::try_current() {
        Ok(_) => tokio::task::spawn_blocking(f)
            .await
            .map_err(|e| std::io::Error::other(format!("storage task: {e}")))?,
        // Outside a runtime (tests driving the store by hand): inline.
        Err(_) => f(),
    }
}

fn read_json<T: DeserializeOwned>(path: &Path) -> std::io::Result<Option<T>> {
    match fs::read(path) {
        Ok(b) => serde_json::from_slice(&b)
            .map(Some)
            .map_err(|e| std::io::Error::other(format!("{}: {e}", path.display()))),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e),
    }
}

fn json<T: Serialize>(v: &T) -> Vec<u8> {
    serde_json::to_vec(v).expect("cluster storage types serialise")
}

/// The log file's name in the data directory.
const LOG_FILE: &str = "log.bin";

/// One log record: length, CRC32C of the payload, the entry as JSON.
fn record(e: &Entry<TypeConfig>) -> Vec<u8> {
    let payload = json(e);
    let mut out = Vec::with_capacity(8 + payload.len());
    out.extend_from_slice(&(payload.len() as u32).to_le_bytes());
    out.extend_from_slice(&crc32c::crc32c(&payload).to_le_bytes());
    out.extend_from_slice(&payload);
    out
}

/// The entries of a log file, and the length of its valid prefix (a record torn by a
/// crash, and anything after it, is not part of the log).
fn read_log(path: &Path) -> std::io::Result<(Vec<Entry<TypeConfig>>, u64)> {
    let bytes = match fs::read(path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok((Vec::new(), 0)),
        Err(e) => return Err(e),
    };
    let mut out = Vec::new();
    let mut at = 0usize;
    while bytes.len() - at >= 8 {
        let len = u32::from_le_bytes(bytes[at..at + 4].try_into().expect("4 bytes")) as usize;
        let crc = u32::from_le_bytes(bytes[at + 4..at + 8].try_into().expect("4 bytes"));
        let Some(payload) = bytes.get(at + 8..at + 8 + len) else {
            break;
        };
        if crc32c::crc32c(payload) != crc {
            break;
        }
        match serde_json::from_slice::<Entry<TypeConfig>>(payload) {
            Ok(e) => out.push(e),
            Err(_) => break,
        }
        at += 8 + len;
    }
    Ok((out, at as u64))
}

/// Replace the log file with `entries` (atomically) and return a handle that appends
/// to the new file.
fn rewrite_log<'a>(
    dir: &Path,
    entries: impl Iterator<Item = &'a Entry<TypeConfig>>,
) -> std::io::Result<File> {
    let mut bytes = Vec::new();
    for e in entries {
        bytes.extend_from_slice(&record(e));
    }
    write_atomic(dir, LOG_FILE, &bytes, true)?;
    fs::OpenOptions::new().append(true).open(dir.join(LOG_FILE))
}

struct LogInner {
    dir: PathBuf,
    /// Appends go here (the end of `log.bin`).
    file: Arc<Mutex<File>>,
    entries: BTreeMap<u64, Entry<TypeConfig>>,
    last_purged: Option<LogId<NodeId>>,
    vote: Option<Vote<NodeId>>,
    committed: Option<LogId<NodeId>>,
}

/// The Raft log and vote (see the module docs for the layout). Cheap to clone (shared).
#[derive(Clone)]
pub struct LogStore {
    inner: Arc<Mutex<LogInner>>,
}

impl LogStore {
    /// Open (or create) the log in `dir`.
    pub fn open(dir: &Path) -> std::io::Result<LogStore> {
        fs::create_dir_all(dir)?;
        // The replicated state holds secrets (CHAP secrets of arrays added online):
        // the owner only.
        {
            use std::os::unix::fs::PermissionsExt as _;
            fs::set_permissions(dir, fs::Permissions::from_mode(0o700))?;
        }
        let vote = read_json(&dir.join("vote.json"))?;
        let committed = read_json(&dir.join("committed.json"))?;
        let last_purged: Option<LogId<NodeId>> = read_json(&dir.join("purged.json"))?;
        let path = dir.join(LOG_FILE);
        let (records, valid) = read_log(&path)?;
        let mut entries = BTreeMap::new();
        for e in records {
            entries.insert(e.log_id.index, e);
        }
        // The first layout: one file per entry under log/.
        let old_dir = dir.join("log");
        let mut converted = false;
        if old_dir.is_dir() {
            for f in fs::read_dir(&old_dir)? {
                let p = f?.path();
                let name = p.file_name().and_then(|n| n.to_str()).unwrap_or("");
                // Temporary files were never reported flushed.
                if !name.starts_with('.') && name.ends_with(".json") {
                    if let Some(e) = read_json::<Entry<TypeConfig>>(&p)? {
                        entries.insert(e.log_id.index, e);
                    }
                }
            }
            converted = true;
        }
        if let Some(p) = last_purged {
            entries.retain(|i, _| *i > p.index);
        }
        let torn = fs::metadata(&path)
            .map(|m| m.len() > valid)
            .unwrap_or(false);
        let file = if converted || torn {
            if torn {
                tracing::warn!(
                    path = %path.display(),
                    "the Raft log ends with a record torn by a crash (never reported written); cut off"
                );
            }
            let f = rewrite_log(dir, entries.values())?;
            if converted {
                fs::remove_dir_all(&old_dir)?;
            }
            f
        } else {
            fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(&path)?
        };
        Ok(LogStore {
            inner: Arc::new(Mutex::new(LogInner {
                dir: dir.to_path_buf(),
                file: Arc::new(Mutex::new(file)),
                entries,
                last_purged,
                vote,
                committed,
            })),
        })
    }

    /// Append `entries` to the log file, `fdatasync` it, then add them in memory.
    async fn write_entries(&self, entries: Vec<Entry<TypeConfig>>) -> std::io::Result<()> {
        let file = self.inner.lock().file.clone();
        let mut bytes = Vec::new();
        for e in &entries {
            bytes.extend_from_slice(&record(e));
        }
        on_disk(move || {
            let mut f = file.lock();
            f.write_all(&bytes)?;
            f.sync_data()
        })
        .await?;
        let mut g = self.inner.lock();
        for e in entries {
            g.entries.insert(e.log_id.index, e);
        }
        Ok(())
    }

    /// Change the entries in memory with `edit`, then rewrite the log file to match
    /// (atomically, off the runtime threads).
    async fn rewrite(
        &self,
        edit: impl FnOnce(&mut BTreeMap<u64, Entry<TypeConfig>>),
    ) -> std::io::Result<()> {
        let (dir, file, kept) = {
            let mut g = self.inner.lock();
            edit(&mut g.entries);
            let kept: Vec<Entry<TypeConfig>> = g.entries.values().cloned().collect();
            (g.dir.clone(), g.file.clone(), kept)
        };
        on_disk(move || {
            // Appends wait: they would go to the file being replaced.
            let mut f = file.lock();
            *f = rewrite_log(&dir, kept.iter())?;
            Ok(())
        })
        .await
    }

    /// True when nothing was ever stored here (a fresh node).
    pub fn is_empty(&self) -> bool {
        let g = self.inner.lock();
        g.entries.is_empty() && g.last_purged.is_none() && g.vote.is_none()
    }
}

impl RaftLogReader<TypeConfig> for LogStore {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + OptionalSend>(
        &mut self,
        range: RB,
    ) -> Result<Vec<Entry<TypeConfig>>, SErr> {
        let g = self.inner.lock();
        Ok(g.entries.range(range).map(|(_, e)| e.clone()).collect())
    }
}

impl RaftLogStorage<TypeConfig> for LogStore {
    type LogReader = LogStore;

    async fn get_log_state(&mut self) -> Result<LogState<TypeConfig>, SErr> {
        let g = self.inner.lock();
        let last = g
            .entries
            .values()
            .next_back()
            .map(|e| e.log_id)
            .or(g.last_purged);
        Ok(LogState {
            last_purged_log_id: g.last_purged,
            last_log_id: last,
        })
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &Vote<NodeId>) -> Result<(), SErr> {
        let dir = self.inner.lock().dir.clone();
        let bytes = json(vote);
        on_disk(move || write_atomic(&dir, "vote.json", &bytes, true))
            .await
            .map_err(|e| StorageIOError::write_vote(&e))?;
        self.inner.lock().vote = Some(*vote);
        Ok(())
    }

    async fn read_vote(&mut self) -> Result<Option<Vote<NodeId>>, SErr> {
        Ok(self.inner.lock().vote)
    }

    async fn save_committed(&mut self, committed: Option<LogId<NodeId>>) -> Result<(), SErr> {
        let dir = self.inner.lock().dir.clone();
        let bytes = json(&committed);
        // Advisory (Raft can recompute it), so no directory sync.
        on_disk(move || write_atomic(&dir, "committed.json", &bytes, false))
            .await
            .map_err(|e| StorageIOError::write(&e))?;
        self.inner.lock().committed = committed;
        Ok(())
    }

    async fn read_committed(&mut self) -> Result<Option<LogId<NodeId>>, SErr> {
        Ok(self.inner.lock().committed)
    }

    async fn append<I>(&mut self, entries: I, callback: LogFlushed<TypeConfig>) -> Result<(), SErr>
    where
        I: IntoIterator<Item = Entry<TypeConfig>> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let result = self.write_entries(entries.into_iter().collect()).await;
        let err = result.as_ref().err().map(StorageIOError::write_logs);
        callback.log_io_completed(result);
        match err {
            Some(e) => Err(e.into()),
            None => Ok(()),
        }
    }

    async fn truncate(&mut self, log_id: LogId<NodeId>) -> Result<(), SErr> {
        self.rewrite(|entries| {
            entries.split_off(&log_id.index);
        })
        .await
        .map_err(|e| StorageIOError::write_logs(&e))?;
        Ok(())
    }

    async fn purge(&mut self, log_id: LogId<NodeId>) -> Result<(), SErr> {
        let dir = self.inner.lock().dir.clone();
        let bytes = json(&log_id);
        on_disk(move || write_atomic(&dir, "purged.json", &bytes, true))
            .await
            .map_err(|e| StorageIOError::write_logs(&e))?;
        self.inner.lock().last_purged = Some(log_id);
        // `open` also drops entries at or below purged.json's id, so a crash before
        // the rewrite loses nothing.
        self.rewrite(|entries| {
            *entries = entries.split_off(&(log_id.index + 1));
        })
        .await
        .map_err(|e| StorageIOError::write_logs(&e))?;
        Ok(())
    }
}

/// A snapshot as kept on disk.
#[derive(Serialize, Deserialize)]
struct SnapshotFile {
    meta: SnapshotMeta<NodeId, openraft::BasicNode>,
    state: ClusterState,
}

struct SmInner {
    dir: PathBuf,
    state: Arc<ClusterState>,
    last_applied: Option<LogId<NodeId>>,
    membership: StoredMembership<NodeId, openraft::BasicNode>,
    snapshot: Option<(SnapshotMeta<NodeId, openraft::BasicNode>, Vec<u8>)>,
    snapshots_built: u64,
}

/// The state machine: applies commands to the [`ClusterState`] and publishes it.
#[derive(Clone)]
pub struct StateMachine {
    inner: Arc<Mutex<SmInner>>,
    published: Arc<Published>,
}

impl StateMachine {
    /// Open the state machine in `dir`, starting from the snapshot there, if any.
    pub(crate) fn open(dir: &Path, published: Arc<Published>) -> std::io::Result<StateMachine> {
        fs::create_dir_all(dir)?;
        let snap: Option<SnapshotFile> = read_json(&dir.join("snapshot.json"))?;
        let (state, last_applied, membership, snapshot) = match snap {
            Some(s) => {
                let bytes = json(&s.state);
                (
                    s.state,
                    s.meta.last_log_id,
                    s.meta.last_membership.clone(),
                    Some((s.meta, bytes)),
                )
            }
            None => (
                ClusterState::default(),
                None,
                StoredMembership::default(),
                None,
            ),
        };
        let state = Arc::new(state);
        published.state.store(state.clone());
        Ok(StateMachine {
            inner: Arc::new(Mutex::new(SmInner {
                dir: dir.to_path_buf(),
                state,
                last_applied,
                membership,
                snapshot,
                snapshots_built: 0,
            })),
            published,
        })
    }

    /// Current Raft membership as applied.
    pub(crate) fn membership(&self) -> StoredMembership<NodeId, openraft::BasicNode> {
        self.inner.lock().membership.clone()
    }

    fn persist_snapshot(
        dir: &Path,
        meta: &SnapshotMeta<NodeId, openraft::BasicNode>,
        state: &ClusterState,
    ) -> std::io::Result<()> {
        let file = SnapshotFile {
            meta: meta.clone(),
            state: state.clone(),
        };
        write_atomic(dir, "snapshot.json", &json(&file), true)
    }
}

impl RaftSnapshotBuilder<TypeConfig> for StateMachine {
    async fn build_snapshot(&mut self) -> Result<Snapshot<TypeConfig>, SErr> {
        let (dir, meta, state) = {
            let mut g = self.inner.lock();
            g.snapshots_built += 1;
            let snapshot_id = match g.last_applied {
                Some(l) => format!("{}-{}-{}", l.leader_id.term, l.index, g.snapshots_built),
                None => format!("empty-{}", g.snapshots_built),
            };
            let meta = SnapshotMeta {
                last_log_id: g.last_applied,
                last_membership: g.membership.clone(),
                snapshot_id,
            };
            (g.dir.clone(), meta, g.state.clone())
        };
        let (m, s) = (meta.clone(), state.clone());
        on_disk(move || Self::persist_snapshot(&dir, &m, &s))
            .await
            .map_err(|e| StorageIOError::write_snapshot(Some(meta.signature()), &e))?;
        let bytes = json(&*state);
        {
            // A snapshot installed from the leader meanwhile is newer: keep it.
            let mut g = self.inner.lock();
            let newer = g
                .snapshot
                .as_ref()
                .is_some_and(|(m, _)| m.last_log_id > meta.last_log_id);
            if !newer {
                g.snapshot = Some((meta.clone(), bytes.clone()));
            }
        }
        Ok(Snapshot {
            meta,
            snapshot: Box::new(Cursor::new(bytes)),
        })
    }
}

impl RaftStateMachine<TypeConfig> for StateMachine {
    type SnapshotBuilder = StateMachine;

    async fn applied_state(
        &mut self,
    ) -> Result<
        (
            Option<LogId<NodeId>>,
            StoredMembership<NodeId, openraft::BasicNode>,
        ),
        SErr,
    > {
        let g = self.inner.lock();
        Ok((g.last_applied, g.membership.clone()))
    }

    async fn apply<I>(&mut self, entries: I) -> Result<Vec<Outcome>, SErr>
    where
        I: IntoIterator<Item = Entry<TypeConfig>> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let mut g = self.inner.lock();
        let mut out = Vec::new();
        let mut events = Vec::new();
        let mut state = (*g.state).clone();
        for e in entries {
            g.last_applied = Some(e.log_id);
            state.applied_index = e.log_id.index;
            match e.payload {
                EntryPayload::Blank => out.push(Outcome::Ok),
                EntryPayload::Normal(cmd) => {
                    let outcome = state.apply(&cmd);
                    if let Outcome::Refused(r) = &outcome {
                        tracing::info!(index = e.log_id.index, "command refused: {r}");
                    }
                    events.push(Event::Applied {
                        index: e.log_id.index,
                        command: Arc::new(cmd),
                        outcome: outcome.clone(),
                    });
                    out.push(outcome);
                }
                EntryPayload::Membership(m) => {
                    g.membership = StoredMembership::new(Some(e.log_id), m);
                    events.push(Event::Membership {
                        index: e.log_id.index,
                    });
                    out.push(Outcome::Ok);
                }
            }
        }
        let state = Arc::new(state);
        g.state = state.clone();
        self.published.state.store(state.clone());
        drop(g);
        for ev in events {
            self.published.emit(&state, ev);
        }
        Ok(out)
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        self.clone()
    }

    async fn begin_receiving_snapshot(&mut self) -> Result<Box<Cursor<Vec<u8>>>, SErr> {
        Ok(Box::new(Cursor::new(Vec::new())))
    }

    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMeta<NodeId, openraft::BasicNode>,
        snapshot: Box<Cursor<Vec<u8>>>,
    ) -> Result<(), SErr> {
        let bytes = snapshot.into_inner();
        let state: ClusterState = serde_json::from_slice(&bytes)
            .map_err(|e| StorageIOError::read_snapshot(Some(meta.signature()), &e))?;
        let mut g = self.inner.lock();
        Self::persist_snapshot(&g.dir, meta, &state)
            .map_err(|e| StorageIOError::write_snapshot(Some(meta.signature()), &e))?;
        let state = Arc::new(state);
        g.state = state.clone();
        g.last_applied = meta.last_log_id;
        g.membership = meta.last_membership.clone();
        g.snapshot = Some((meta.clone(), bytes));
        self.published.state.store(state.clone());
        drop(g);
        let index = meta.last_log_id.map(|l| l.index).unwrap_or(0);
        self.published.emit(&state, Event::Snapshot { index });
        Ok(())
    }

    async fn get_current_snapshot(&mut self) -> Result<Option<Snapshot<TypeConfig>>, SErr> {
        let g = self.inner.lock();
        Ok(g.snapshot.as_ref().map(|(meta, bytes)| Snapshot {
            meta: meta.clone(),
            snapshot: Box::new(Cursor::new(bytes.clone())),
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use openraft::{CommittedLeaderId, EntryPayload};

    fn entry(index: u64) -> Entry<TypeConfig> {
        Entry {
            log_id: LogId::new(CommittedLeaderId::new(1, 1), index),
            payload: EntryPayload::Normal(Command::SetHealth {
                id: index,
                health: crate::Health::Active,
            }),
        }
    }

    fn indexes(s: &LogStore) -> Vec<u64> {
        s.inner.lock().entries.keys().copied().collect()
    }

    #[tokio::test]
    async fn the_log_survives_reopening_truncation_purge_and_a_torn_tail() {
        let dir = tempfile::tempdir().unwrap();
        let s = LogStore::open(dir.path()).unwrap();
        assert!(s.is_empty());
        s.write_entries((1..=5).map(entry).collect()).await.unwrap();
        s.write_entries(vec![entry(6)]).await.unwrap();
        assert_eq!(
            indexes(&LogStore::open(dir.path()).unwrap()),
            [1, 2, 3, 4, 5, 6]
        );
        // Truncate from 5 (a conflicting leader), then append a new 5.
        s.rewrite(|e| {
            e.split_off(&5);
        })
        .await
        .unwrap();
        s.write_entries(vec![entry(5)]).await.unwrap();
        assert_eq!(
            indexes(&LogStore::open(dir.path()).unwrap()),
            [1, 2, 3, 4, 5]
        );
        // Purge up to 2 (purged.json first, as `purge` writes it).
        write_atomic(dir.path(), "purged.json", &json(&entry(2).log_id), true).unwrap();
        s.rewrite(|e| *e = e.split_off(&3)).await.unwrap();
        let again = LogStore::open(dir.path()).unwrap();
        assert_eq!(indexes(&again), [3, 4, 5]);
        assert_eq!(again.inner.lock().entries[&4], entry(4));
        drop((s, again));
        // A record torn by a crash: cut off, the rest intact, appends go on after it.
        let path = dir.path().join(LOG_FILE);
        let full = fs::metadata(&path).unwrap().len();
        let mut torn = record(&entry(6));
        torn.truncate(torn.len() - 3);
        fs::OpenOptions::new()
            .append(true)
            .open(&path)
            .unwrap()
            .write_all(&torn)
            .unwrap();
        let s = LogStore::open(dir.path()).unwrap();
        assert_eq!(indexes(&s), [3, 4, 5]);
        assert_eq!(fs::metadata(&path).unwrap().len(), full);
        s.write_entries(vec![entry(6)]).await.unwrap();
        assert_eq!(indexes(&LogStore::open(dir.path()).unwrap()), [3, 4, 5, 6]);
        // A flipped bit fails the checksum: the log ends before that record.
        let mut bytes = fs::read(&path).unwrap();
        let last = bytes.len() - 2;
        bytes[last] ^= 1;
        fs::write(&path, &bytes).unwrap();
        assert_eq!(indexes(&LogStore::open(dir.path()).unwrap()), [3, 4, 5]);
    }

    #[test]
    fn the_data_directory_is_the_owners_only() {
        use std::os::unix::fs::PermissionsExt as _;
        let dir = tempfile::tempdir().unwrap();
        let raft = dir.path().join("raft");
        fs::create_dir_all(&raft).unwrap();
        fs::set_permissions(&raft, fs::Permissions::from_mode(0o755)).unwrap();
        LogStore::open(&raft).unwrap();
        let mode = fs::metadata(&raft).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o700);
    }

    #[test]
    fn a_log_in_the_first_layout_is_converted() {
        let dir = tempfile::tempdir().unwrap();
        let old = dir.path().join("log");
        fs::create_dir_all(&old).unwrap();
        for i in 1..=3 {
            fs::write(old.join(format!("{i:020}.json")), json(&entry(i))).unwrap();
        }
        fs::write(old.join(".00000000000000000004.json.tmp"), b"{").unwrap();
        let s = LogStore::open(dir.path()).unwrap();
        assert_eq!(indexes(&s), [1, 2, 3]);
        assert!(!old.exists());
        assert_eq!(indexes(&LogStore::open(dir.path()).unwrap()), [1, 2, 3]);
    }
}
