//! Live table swaps: [`LiveVolume`] and [`RangeHolds`].
//!
//! This is the node-local half of the remap protocol in DESIGN.md (steps 3 to 6):
//!
//! 1. [`LiveVolume::stage`] resolves the new definition beside the live one and returns
//!    the virtual ranges whose mapping changes;
//! 2. [`LiveVolume::hold`] makes new I/O touching those ranges wait, and
//!    [`HoldGuard::drain`] waits until the I/O already running there has finished;
//! 3. (the caller copies data, if the change moves any);
//! 4. [`LiveVolume::switch`] swaps the staged table in — a pointer swap, refused unless
//!    the affected ranges are held and drained;
//! 5. dropping (or [`HoldGuard::release`]-ing) the hold lets held I/O run against the
//!    new table. [`LiveVolume::rollback`] drops a staged table instead.
//!
//! Every I/O passes the range gate first, then takes a snapshot of the current table
//! and runs to completion against it; the `*_tagged` methods report the epoch it ran
//! under. I/O outside held ranges never waits.
//!
//! # The fast path
//!
//! While no hold or drain exists (the common case) an I/O claims a free slot in a
//! small per-volume array with one compare-and-swap, publishes its range there, and
//! checks a gate counter; on completion it frees the slot with one store. No lock, no
//! allocation. A hold raises the gate; from then on new I/O registers under a mutex,
//! where it also checks the holds, and [`RangeHolds::drain`] scans both the slots and
//! the registered I/O for ranges that overlap. The slot store and the gate load on one
//! side, and the gate increment and the slot scan on the other, are sequentially
//! consistent, so either the I/O sees the gate and backs out to the slow path, or the
//! drain sees the I/O (Dekker's pattern).

use std::cell::Cell;
use std::io;
use std::sync::atomic::{AtomicU64, AtomicU8, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use blockdev::{BlockError, BlockStore, Capabilities, CawOutcome, IoFuture, LbaStatus};
use bytes::Bytes;
use parking_lot::{Condvar, Mutex, MutexGuard};

use crate::range::{coalesce, covers, display_ranges, BlockRange};
use crate::table::{affected_ranges_by, MappingTable, ValidationErrors, VolumeDef};
use crate::volume::{Registry, VirtualVolume};

/// Fast-path slots per volume; I/O beyond this many at once takes the slow path.
const SLOTS: usize = 128;
/// Slots an I/O tries before it takes the slow path.
const PROBE: usize = 8;

const FREE: u8 = 0;
const CLAIMED: u8 = 1;
const LIVE: u8 = 2;

/// One fast-path in-flight I/O, on its own cache line.
#[repr(align(64))]
#[derive(Default)]
struct Slot {
    state: AtomicU8,
    start: AtomicU64,
    end: AtomicU64,
}

static NEXT_HINT: AtomicUsize = AtomicUsize::new(0);

thread_local! {
    /// Where this thread starts looking for a free slot, so threads rarely collide.
    static HINT: Cell<usize> = Cell::new(NEXT_HINT.fetch_add(1, Ordering::Relaxed).wrapping_mul(PROBE));
}

#[derive(Default)]
struct State {
    next_id: u64,
    /// Active holds: id and ranges.
    holds: Vec<(u64, Vec<BlockRange>)>,
    /// I/O that entered on the slow path and is still running: id and range.
    tracked: Vec<(u64, BlockRange)>,
    /// Drains waiting on `drained`.
    drainers: usize,
}

struct Inner {
    /// Holds present plus drains running. Non-zero sends new I/O to the slow path.
    gate: AtomicUsize,
    slots: Box<[Slot]>,
    state: Mutex<State>,
    /// Signalled when in-flight I/O completes while a drain waits.
    drained: Condvar,
    /// Signalled when a hold is released.
    released: Condvar,
}

/// Per-volume range holds and in-flight accounting (the patent's hold control table,
/// pending queue and in-flight queue). Cloning shares the same holds.
#[derive(Clone)]
pub struct RangeHolds {
    inner: Arc<Inner>,
}

impl Default for RangeHolds {
    fn default() -> Self {
        RangeHolds::new()
    }
}

/// New I/O waited longer than allowed for a hold on its range.
#[derive(Debug, Clone, thiserror::Error)]
#[error("blocks {range} were held by a remap for more than {waited:?}")]
pub struct HeldTooLong {
    pub range: BlockRange,
    pub waited: Duration,
}

/// In-flight I/O in a range did not finish in time.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "{busy} I/O(s) in {ranges} still running after {timeout:?}; resume I/O and retry the \
     change, or retry when I/O is lower"
)]
pub struct DrainError {
    /// How many overlapping I/Os were still running.
    pub busy: usize,
    /// The ranges being drained, formatted.
    pub ranges: String,
    /// How long the drain waited.
    pub timeout: Duration,
}

/// An I/O registered as in flight; dropping it marks the I/O complete.
#[must_use = "the I/O counts as in flight only while this is alive"]
pub struct Inflight<'a> {
    inner: &'a Inner,
    token: Token,
}

enum Token {
    Slot(usize),
    Tracked(u64),
}

impl Drop for Inflight<'_> {
    fn drop(&mut self) {
        match self.token {
            Token::Slot(i) => self.inner.exit_slot(i),
            Token::Tracked(id) => self.inner.exit_tracked(id),
        }
    }
}

/// An I/O in flight that entered on the fast path and owns its slot, so that a future
/// can carry it ([`RangeHolds::try_enter`]). Dropping it ends the I/O.
pub struct OwnedInflight {
    inner: Arc<Inner>,
    token: Token,
}

impl Drop for OwnedInflight {
    fn drop(&mut self) {
        match self.token {
            Token::Slot(i) => self.inner.exit_slot(i),
            Token::Tracked(id) => self.inner.exit_tracked(id),
        }
    }
}

/// A hold on some ranges of a volume: new I/O touching them waits until the guard is
/// released or dropped.
#[must_use = "dropping the guard releases the hold at once"]
pub struct HoldGuard {
    holds: RangeHolds,
    id: u64,
    ranges: Vec<BlockRange>,
}

impl HoldGuard {
    /// The held ranges (coalesced).
    pub fn ranges(&self) -> &[BlockRange] {
        &self.ranges
    }

    /// Wait until I/O in the held ranges that started before the hold has finished.
    pub fn drain(&self, timeout: Duration) -> Result<(), DrainError> {
        self.holds.drain(&self.ranges, timeout)
    }

    /// Release the hold: held I/O proceeds (against whatever table is current).
    pub fn release(self) {}
}

impl Drop for HoldGuard {
    fn drop(&mut self) {
        let inner = &self.holds.inner;
        let mut st = inner.state.lock();
        st.holds.retain(|(id, _)| *id != self.id);
        inner.gate.fetch_sub(1, Ordering::SeqCst);
        drop(st);
        inner.released.notify_all();
    }
}

/// Lowers the gate when a drain ends, however it ends.
struct GateRaised<'a>(&'a Inner);

impl Drop for GateRaised<'_> {
    fn drop(&mut self) {
        self.0.gate.fetch_sub(1, Ordering::SeqCst);
    }
}

impl Inner {
    /// Try to register `range` in a free slot without locking.
    /// Try `probe` slots from this thread's hint.
    fn claim(&self, range: BlockRange, probe: usize) -> Option<usize> {
        let base = HINT.with(|h| h.get());
        for k in 0..probe {
            let i = base.wrapping_add(k) % SLOTS;
            let s = &self.slots[i];
            if s.state.load(Ordering::Relaxed) == FREE
                && s.state
                    .compare_exchange(FREE, CLAIMED, Ordering::Acquire, Ordering::Relaxed)
                    .is_ok()
            {
                s.start.store(range.start, Ordering::Relaxed);
                s.end.store(range.end, Ordering::Relaxed);
                // Publish, then (in `enter`) check the gate: both SeqCst.
                s.state.store(LIVE, Ordering::SeqCst);
                return Some(i);
            }
        }
        None
    }

    fn exit_slot(&self, i: usize) {
        self.slots[i].state.store(FREE, Ordering::SeqCst);
        if self.gate.load(Ordering::SeqCst) > 0 {
            // A drain may be waiting for this I/O. Taking the lock orders this wake-up
            // after the drain's scan, so it cannot be lost.
            let st = self.state.lock();
            if st.drainers > 0 {
                self.drained.notify_all();
            }
        }
    }

    fn exit_tracked(&self, id: u64) {
        let mut st = self.state.lock();
        if let Some(i) = st.tracked.iter().position(|(t, _)| *t == id) {
            st.tracked.swap_remove(i);
        }
        if st.drainers > 0 {
            self.drained.notify_all();
        }
    }

    fn held(st: &State, range: &BlockRange) -> bool {
        st.holds.iter().any(|(_, rs)| range.overlaps_any(rs))
    }

    /// In-flight I/O overlapping `ranges` (the caller holds the state lock).
    fn busy(&self, st: &State, ranges: &[BlockRange]) -> usize {
        let tracked = st
            .tracked
            .iter()
            .filter(|(_, r)| r.overlaps_any(ranges))
            .count();
        let slots = self
            .slots
            .iter()
            .filter(|s| match s.state.load(Ordering::SeqCst) {
                FREE => false,
                // Being published: it will see the gate and back out. Count it until then.
                CLAIMED => true,
                _ => {
                    let r = BlockRange::new(
                        s.start.load(Ordering::Relaxed),
                        s.end.load(Ordering::Relaxed),
                    );
                    r.overlaps_any(ranges)
                }
            })
            .count();
        tracked + slots
    }
}

impl RangeHolds {
    /// No holds, nothing in flight.
    pub fn new() -> RangeHolds {
        RangeHolds {
            inner: Arc::new(Inner {
                gate: AtomicUsize::new(0),
                slots: (0..SLOTS).map(|_| Slot::default()).collect(),
                state: Mutex::new(State::default()),
                drained: Condvar::new(),
                released: Condvar::new(),
            }),
        }
    }

    /// Register an I/O on `range` as in flight, first waiting up to `wait` while a hold
    /// covers any of it. Drop the returned value when the I/O completes.
    pub fn enter(&self, range: BlockRange, wait: Duration) -> Result<Inflight<'_>, HeldTooLong> {
        let inner = &*self.inner;
        if inner.gate.load(Ordering::Relaxed) == 0 {
            if let Some(i) = inner.claim(range, PROBE) {
                if inner.gate.load(Ordering::SeqCst) == 0 {
                    return Ok(Inflight {
                        inner,
                        token: Token::Slot(i),
                    });
                }
                // A hold or drain began meanwhile: go through the slow path.
                inner.exit_slot(i);
            }
        }
        self.enter_slow(range, wait)
    }

    /// [`RangeHolds::enter`] without waiting, for I/O that runs as a future: `None`
    /// when a hold covers part of `range` (the caller takes the path that waits).
    /// Without holds or drains it takes a slot (any free one: futures in flight
    /// outnumber threads); otherwise, or when every slot is taken, it registers under
    /// the lock like the slow path, so I/O outside held ranges keeps flowing.
    pub fn try_enter(&self, range: BlockRange) -> Option<OwnedInflight> {
        let inner = &self.inner;
        if inner.gate.load(Ordering::Relaxed) == 0 {
            if let Some(slot) = inner.claim(range, SLOTS) {
                if inner.gate.load(Ordering::SeqCst) == 0 {
                    return Some(OwnedInflight {
                        inner: inner.clone(),
                        token: Token::Slot(slot),
                    });
                }
                inner.exit_slot(slot);
            }
        }
        let mut st = inner.state.lock();
        if Inner::held(&st, &range) {
            return None;
        }
        let id = st.next_id;
        st.next_id += 1;
        st.tracked.push((id, range));
        Some(OwnedInflight {
            inner: inner.clone(),
            token: Token::Tracked(id),
        })
    }

    fn enter_slow(&self, range: BlockRange, wait: Duration) -> Result<Inflight<'_>, HeldTooLong> {
        let inner = &*self.inner;
        let begin = Instant::now();
        let deadline = begin + wait;
        let mut st = inner.state.lock();
        loop {
            if !Inner::held(&st, &range) {
                let id = st.next_id;
                st.next_id += 1;
                st.tracked.push((id, range));
                return Ok(Inflight {
                    inner,
                    token: Token::Tracked(id),
                });
            }
            if Instant::now() >= deadline {
                return Err(HeldTooLong {
                    range,
                    waited: begin.elapsed(),
                });
            }
            inner.released.wait_until(&mut st, deadline);
        }
    }

    /// Hold `ranges`: from now on, new I/O touching them waits (see [`RangeHolds::enter`])
    /// until the guard is dropped. I/O already running is not affected; see
    /// [`HoldGuard::drain`].
    pub fn hold(&self, ranges: &[BlockRange]) -> HoldGuard {
        let ranges = coalesce(ranges.to_vec());
        let mut st = self.inner.state.lock();
        let id = st.next_id;
        st.next_id += 1;
        st.holds.push((id, ranges.clone()));
        self.inner.gate.fetch_add(1, Ordering::SeqCst);
        drop(st);
        tracing::debug!(holds = %display_ranges(&ranges), "range hold");
        HoldGuard {
            holds: self.clone(),
            id,
            ranges,
        }
    }

    /// Wait up to `timeout` until no I/O overlapping `ranges` is in flight. Meant for
    /// held ranges (then only I/O that started before the hold remains); on ranges that
    /// are not held, new I/O may keep it waiting until the timeout.
    pub fn drain(&self, ranges: &[BlockRange], timeout: Duration) -> Result<(), DrainError> {
        let inner = &*self.inner;
        let ranges = coalesce(ranges.to_vec());
        let deadline = Instant::now() + timeout;
        inner.gate.fetch_add(1, Ordering::SeqCst);
        let _gate = GateRaised(inner);
        let mut st = inner.state.lock();
        st.drainers += 1;
        let result = loop {
            let busy = inner.busy(&st, &ranges);
            if busy == 0 {
                break Ok(());
            }
            if Instant::now() >= deadline {
                break Err(DrainError {
                    busy,
                    ranges: display_ranges(&ranges),
                    timeout,
                });
            }
            inner.drained.wait_until(&mut st, deadline);
        };
        st.drainers -= 1;
        result
    }

    /// Number of I/Os in flight that overlap `ranges` (a point-in-time count).
    pub fn in_flight(&self, ranges: &[BlockRange]) -> usize {
        let st = self.inner.state.lock();
        self.inner.busy(&st, ranges)
    }

    /// The ranges currently held, coalesced.
    pub fn held_ranges(&self) -> Vec<BlockRange> {
        let st = self.inner.state.lock();
        coalesce(
            st.holds
                .iter()
                .flat_map(|(_, r)| r.iter().copied())
                .collect(),
        )
    }

    /// Run `f` while it is certain that `ranges` are held and drained: under the state
    /// lock, so no I/O can enter them and no hold can go away meanwhile.
    fn with_quiesced<R>(
        &self,
        ranges: &[BlockRange],
        f: impl FnOnce() -> R,
    ) -> Result<R, RemapError> {
        let st: MutexGuard<'_, State> = self.inner.state.lock();
        let held: Vec<BlockRange> = st
            .holds
            .iter()
            .flat_map(|(_, r)| r.iter().copied())
            .collect();
        if !covers(&held, ranges) {
            return Err(RemapError::NotHeld {
                ranges: display_ranges(ranges),
            });
        }
        let busy = self.inner.busy(&st, ranges);
        if busy > 0 {
            return Err(RemapError::NotDrained { busy });
        }
        Ok(f())
    }
}

/// How long [`LiveVolume::switch`] waits for I/O still leaving the held ranges.
const SWITCH_SETTLE: Duration = Duration::from_millis(100);

/// Why a step of a local remap failed.
#[derive(Debug, thiserror::Error)]
pub enum RemapError {
    #[error("no table is staged; stage one first")]
    NothingStaged,
    #[error("the staged table has epoch {staged} but the volume is already at epoch {current}")]
    StaleEpoch { staged: u64, current: u64 },
    #[error("the definition is for volume {got:?}, this is volume {volume:?}")]
    WrongVolume { volume: String, got: String },
    #[error("volume {0:?} is not in the new table")]
    VolumeMissing(String),
    #[error("the block size of a live volume cannot change ({from} -> {to}); create a new volume and migrate")]
    BlockSizeChange { from: u32, to: u32 },
    #[error("the new definition is invalid: {0}")]
    Invalid(#[from] ValidationErrors),
    #[error("ranges {ranges} must be held before the switch")]
    NotHeld { ranges: String },
    #[error("{busy} I/O(s) still in flight in the affected ranges; drain before the switch")]
    NotDrained { busy: usize },
    #[error("drain timed out: {0}")]
    Drain(#[from] DrainError),
    #[error("copying the moved data failed: {0}")]
    Copy(BlockError),
}

struct Staged {
    vol: Arc<VirtualVolume>,
    affected: Vec<BlockRange>,
}

/// A virtual volume whose mapping can change while I/O runs. It is a [`BlockStore`]:
/// this is what the SCSI core serves.
pub struct LiveVolume {
    name: String,
    block_size: u32,
    current: ArcSwap<VirtualVolume>,
    staged: Mutex<Option<Staged>>,
    holds: RangeHolds,
    hold_wait: Duration,
    /// Fenced: every I/O fails with a retryable NOT READY (see [`LiveVolume::set_fenced`]).
    fenced: std::sync::atomic::AtomicBool,
}

/// How long new I/O waits for a hold by default: well below the 30 s a Linux host
/// waits for a SCSI command.
pub const DEFAULT_HOLD_WAIT: Duration = Duration::from_secs(10);

impl LiveVolume {
    /// Serve `vol`; I/O waits at most [`DEFAULT_HOLD_WAIT`] for a hold.
    pub fn new(vol: VirtualVolume) -> LiveVolume {
        LiveVolume {
            name: vol.name().to_string(),
            block_size: vol.block_size(),
            current: ArcSwap::from_pointee(vol),
            staged: Mutex::new(None),
            holds: RangeHolds::new(),
            hold_wait: DEFAULT_HOLD_WAIT,
            fenced: std::sync::atomic::AtomicBool::new(false),
        }
    }

    /// Fence (or unfence) the volume on this node: new I/O — and I/O waiting at a hold,
    /// when it wakes up — fails with NOT READY (a host retries, through another node)
    /// instead of running against a table the cluster may have replaced. The cluster
    /// participant fences a changing volume when it loses its leader mid-change.
    pub fn set_fenced(&self, on: bool) {
        self.fenced.store(on, std::sync::atomic::Ordering::SeqCst);
    }

    /// Whether the volume is fenced on this node.
    pub fn is_fenced(&self) -> bool {
        self.fenced.load(std::sync::atomic::Ordering::SeqCst)
    }

    fn check_fence(&self) -> Result<(), BlockError> {
        if self.is_fenced() {
            return Err(BlockError::Sense {
                key: 0x02,
                asc: 0x04,
                ascq: 0x01,
                msg: format!(
                    "volume {:?} is fenced on this node (it lost the cluster leader during a change); retry through another node",
                    self.name
                ),
            });
        }
        Ok(())
    }

    /// Set how long new I/O waits for a hold before it fails.
    pub fn with_hold_wait(mut self, wait: Duration) -> LiveVolume {
        self.hold_wait = wait;
        self
    }

    /// Name of the volume.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The current table (a snapshot; it stays valid after a switch).
    pub fn current(&self) -> Arc<VirtualVolume> {
        self.current.load_full()
    }

    /// Epoch of the current table.
    pub fn epoch(&self) -> u64 {
        self.current.load().epoch()
    }

    /// The volume's range holds.
    pub fn holds(&self) -> &RangeHolds {
        &self.holds
    }

    /// Hold `ranges` (see [`RangeHolds::hold`]).
    pub fn hold(&self, ranges: &[BlockRange]) -> HoldGuard {
        self.holds.hold(ranges)
    }

    /// Drain `ranges` (see [`RangeHolds::drain`]).
    pub fn drain(&self, ranges: &[BlockRange], timeout: Duration) -> Result<(), DrainError> {
        self.holds.drain(ranges, timeout)
    }

    /// Resolve `def` at `epoch` beside the live table. Returns the virtual ranges whose
    /// mapping changes: hold and drain them, then [`LiveVolume::switch`]. A table staged
    /// earlier is replaced.
    pub fn stage(
        &self,
        def: &VolumeDef,
        registry: &Registry,
        epoch: u64,
    ) -> Result<Vec<BlockRange>, RemapError> {
        if def.name != self.name {
            return Err(RemapError::WrongVolume {
                volume: self.name.clone(),
                got: def.name.clone(),
            });
        }
        if def.block_size != self.block_size {
            return Err(RemapError::BlockSizeChange {
                from: self.block_size,
                to: def.block_size,
            });
        }
        let cur = self.current.load_full();
        if epoch <= cur.epoch() {
            return Err(RemapError::StaleEpoch {
                staged: epoch,
                current: cur.epoch(),
            });
        }
        let vol = cur.successor(def, registry, epoch)?;
        // Blocks that only change path (same LBAs of the same LU) need no hold.
        let affected = affected_ranges_by(cur.def(), def, &|a, b| registry.same_lu(a, b));
        tracing::info!(volume = %self.name, epoch, affected = %display_ranges(&affected), "table staged");
        *self.staged.lock() = Some(Staged {
            vol: Arc::new(vol),
            affected: affected.clone(),
        });
        Ok(affected)
    }

    /// [`LiveVolume::stage`] this volume's definition from a whole table.
    pub fn stage_table(
        &self,
        table: &MappingTable,
        registry: &Registry,
    ) -> Result<Vec<BlockRange>, RemapError> {
        let def = table
            .volume(&self.name)
            .ok_or_else(|| RemapError::VolumeMissing(self.name.clone()))?;
        self.stage(def, registry, table.epoch)
    }

    /// The ranges the staged table changes, if a table is staged.
    pub fn staged_affected(&self) -> Option<Vec<BlockRange>> {
        self.staged.lock().as_ref().map(|s| s.affected.clone())
    }

    /// Swap the staged table in and return its epoch. Refused unless every affected
    /// range is held and no I/O is in flight there.
    pub fn switch(&self) -> Result<u64, RemapError> {
        let mut staged = self.staged.lock();
        let s = staged.as_ref().ok_or(RemapError::NothingStaged)?;
        let current = self.current.load().epoch();
        if s.vol.epoch() <= current {
            return Err(RemapError::StaleEpoch {
                staged: s.vol.epoch(),
                current,
            });
        }
        // An I/O that raced the hold (it claimed a slot in a held range, then saw the
        // hold and is backing out) counts as in flight for a moment: give such I/O a
        // short while to leave. Nothing new can enter held ranges meanwhile, and the
        // check itself is done under the holds' lock.
        let settle = Instant::now() + SWITCH_SETTLE;
        loop {
            match self
                .holds
                .with_quiesced(&s.affected, || self.current.store(s.vol.clone()))
            {
                Err(RemapError::NotDrained { .. }) if Instant::now() < settle => {
                    let _ = self.holds.drain(&s.affected, Duration::from_millis(5));
                }
                r => {
                    r?;
                    break;
                }
            }
        }
        let epoch = s.vol.epoch();
        *staged = None;
        tracing::info!(volume = %self.name, epoch, "table switched");
        Ok(epoch)
    }

    /// Drop the staged table; returns whether there was one.
    pub fn rollback(&self) -> bool {
        let had = self.staged.lock().take().is_some();
        if had {
            tracing::info!(volume = %self.name, "staged table rolled back");
        }
        had
    }

    /// The whole local sequence: stage, hold, drain, `copy(affected)`, switch, release.
    /// On any failure the staged table is dropped, the hold released, and I/O goes on
    /// against the old table. Returns the new epoch.
    pub fn remap(
        &self,
        def: &VolumeDef,
        registry: &Registry,
        epoch: u64,
        drain_timeout: Duration,
        copy: impl FnOnce(&[BlockRange]) -> Result<(), BlockError>,
    ) -> Result<u64, RemapError> {
        let affected = self.stage(def, registry, epoch)?;
        let hold = self.hold(&affected);
        let result = hold
            .drain(drain_timeout)
            .map_err(RemapError::from)
            .and_then(|()| copy(&affected).map_err(RemapError::Copy))
            .and_then(|()| self.switch());
        if result.is_err() {
            self.rollback();
        }
        hold.release();
        result
    }

    fn range_of(&self, lba: u64, len: usize) -> Result<BlockRange, BlockError> {
        let bs = self.block_size as usize;
        if !len.is_multiple_of(bs) {
            return Err(BlockError::Misaligned {
                len,
                block_size: self.block_size,
            });
        }
        Ok(BlockRange::at(lba, (len / bs) as u64))
    }

    /// Pass the range gate, then run `f` on a snapshot of the current table.
    fn io<T>(
        &self,
        range: BlockRange,
        f: impl FnOnce(&VirtualVolume) -> Result<T, BlockError>,
    ) -> Result<(T, u64), BlockError> {
        self.check_fence()?;
        let _inflight = self.holds.enter(range, self.hold_wait).map_err(|e| {
            BlockError::Io(io::Error::new(
                io::ErrorKind::TimedOut,
                format!(
                    "volume {:?}: {e}; the remap should time out and resume I/O, retry the command",
                    self.name
                ),
            ))
        })?;
        // Fenced while it waited at a hold: it must not run on this table.
        self.check_fence()?;
        let vol = self.current.load();
        let out = f(&vol)?;
        Ok((out, vol.epoch()))
    }

    /// [`BlockStore::read`], returning the epoch of the table the read ran under.
    pub fn read_tagged(&self, lba: u64, buf: &mut [u8]) -> Result<u64, BlockError> {
        let range = self.range_of(lba, buf.len())?;
        self.io(range, |v| v.read(lba, buf)).map(|((), e)| e)
    }

    /// [`BlockStore::write`], returning the epoch of the table the write ran under.
    pub fn write_tagged(&self, lba: u64, data: &[u8], fua: bool) -> Result<u64, BlockError> {
        let range = self.range_of(lba, data.len())?;
        self.io(range, |v| v.write(lba, data, fua)).map(|((), e)| e)
    }

    /// [`BlockStore::compare_and_write`], returning also the epoch of the table it ran
    /// under.
    pub fn compare_and_write_tagged(
        &self,
        lba: u64,
        compare: &[u8],
        write: &[u8],
        fua: bool,
    ) -> Result<(CawOutcome, u64), BlockError> {
        let range = self.range_of(lba, compare.len())?;
        self.io(range, |v| v.compare_and_write(lba, compare, write, fua))
    }
}

impl BlockStore for LiveVolume {
    fn block_size(&self) -> u32 {
        self.block_size
    }

    fn num_blocks(&self) -> u64 {
        self.current.load().num_blocks()
    }

    fn capabilities(&self) -> Capabilities {
        self.current.load().capabilities()
    }

    fn read(&self, lba: u64, buf: &mut [u8]) -> Result<(), BlockError> {
        self.read_tagged(lba, buf).map(|_| ())
    }

    fn write(&self, lba: u64, data: &[u8], fua: bool) -> Result<(), BlockError> {
        self.write_tagged(lba, data, fua).map(|_| ())
    }

    /// Flushes the back-ends of the current table. A write that completed under an
    /// older table went to a back-end the remap copied from; the remap's copy must be
    /// flushed by whoever copied it before the switch.
    fn flush(&self) -> Result<(), BlockError> {
        self.current.load().flush()
    }

    fn unmap(&self, lba: u64, blocks: u64) -> Result<(), BlockError> {
        self.io(BlockRange::at(lba, blocks), |v| v.unmap(lba, blocks))
            .map(|((), _)| ())
    }

    fn lba_status(&self, lba: u64) -> Result<LbaStatus, BlockError> {
        self.io(BlockRange::at(lba, 1), |v| v.lba_status(lba))
            .map(|(s, _)| s)
    }

    /// Through the range gate like a write (it waits for a hold on its blocks and
    /// counts as in flight for a drain), then [`VirtualVolume::compare_and_write`] on
    /// the current table: passed to the back-end when the blocks lie in one extent.
    fn compare_and_write(
        &self,
        lba: u64,
        compare: &[u8],
        write: &[u8],
        fua: bool,
    ) -> Result<CawOutcome, BlockError> {
        self.compare_and_write_tagged(lba, compare, write, fua)
            .map(|(o, _)| o)
    }

    /// As the current table's volume says (some back-end supports it; the range
    /// decides on each call).
    fn supports_compare_and_write(&self) -> bool {
        self.current.load().supports_compare_and_write()
    }

    fn async_ok(&self) -> bool {
        self.current.load().async_ok()
    }

    /// Through the range gate without waiting ([`RangeHolds::try_enter`]), then
    /// [`VirtualVolume::read_async`] on the current table; the future counts as in
    /// flight for a drain until it completes. `None` when a hold covers the range (the
    /// caller's [`BlockStore::read`] waits at it) or the table has no asynchronous
    /// path for it.
    fn read_async(self: Arc<Self>, lba: u64, blocks: u32) -> Option<IoFuture<Vec<u8>>> {
        self.gated(BlockRange::at(lba, u64::from(blocks)), |v| {
            v.read_async(lba, blocks)
        })
    }

    /// As [`LiveVolume::read_async`], for writes.
    fn write_async(self: Arc<Self>, lba: u64, data: Bytes, fua: bool) -> Option<IoFuture<()>> {
        let range = match self.range_of(lba, data.len()) {
            Ok(r) => r,
            Err(e) => return Some(blockdev::ready(Err(e))),
        };
        self.gated(range, |v| v.write_async(lba, data, fua))
    }
}

impl LiveVolume {
    /// The asynchronous counterpart of [`LiveVolume::io`]: pass the range gate without
    /// waiting and start `io` on the current table, holding the gate until it ends.
    fn gated<T: Send + 'static>(
        &self,
        range: BlockRange,
        io: impl FnOnce(Arc<VirtualVolume>) -> Option<IoFuture<T>>,
    ) -> Option<IoFuture<T>> {
        let inflight = self.holds.try_enter(range)?;
        if let Err(e) = self.check_fence() {
            return Some(blockdev::ready(Err(e)));
        }
        let io = io(self.current.load_full())?;
        Some(Box::pin(async move {
            let r = io.await;
            drop(inflight);
            r
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::mpsc;
    use std::thread;

    const LONG: Duration = Duration::from_secs(5);

    #[test]
    fn a_path_switch_stages_nothing_to_hold_and_switches_without_a_hold() {
        use crate::table::{Extent, HolePolicy};
        use blockdev::{BlockStore, MemStore};
        let lu = Arc::new(MemStore::new(512, 64));
        lu.write(3, &[7u8; 512], false).unwrap();
        let reg = Registry::new()
            .with("arr/lun0", lu.clone() as Arc<dyn BlockStore>)
            .with("arr2/lun0", lu.clone() as Arc<dyn BlockStore>);
        let def = |backend: &str| VolumeDef {
            name: "v".into(),
            wwn: "naa.6001405000000001".into(),
            block_size: 512,
            blocks: 64,
            holes: HolePolicy::Zero,
            extents: vec![Extent {
                vstart: 0,
                blocks: 64,
                backend: backend.into(),
                bstart: 0,
                mirror: None,
            }],
        };
        let live = LiveVolume::new(VirtualVolume::new(&def("arr/lun0"), &reg, 1).unwrap());
        // Without identities the two ids are different LUs: everything is affected.
        assert_eq!(
            live.stage(&def("arr2/lun0"), &reg, 2).unwrap(),
            vec![BlockRange::new(0, 64)]
        );
        assert!(live.rollback());
        reg.set_identity("arr/lun0", "naa.600a");
        reg.set_identity("arr2/lun0", "naa.600a");
        assert!(live.stage(&def("arr2/lun0"), &reg, 2).unwrap().is_empty());
        assert_eq!(live.switch().unwrap(), 2, "no hold needed");
        let mut b = [0u8; 512];
        live.read_tagged(3, &mut b).unwrap();
        assert_eq!(b, [7u8; 512]);
        assert!(!reg.same_lu("arr/lun0", "other"));
    }

    #[test]
    fn fast_path_and_counts() {
        let h = RangeHolds::new();
        let r = BlockRange::new(10, 20);
        let a = h.enter(r, LONG).unwrap();
        let b = h.enter(BlockRange::new(100, 110), LONG).unwrap();
        assert!(matches!(a.token, Token::Slot(_)));
        assert_eq!(h.in_flight(&[BlockRange::new(0, 15)]), 1);
        assert_eq!(h.in_flight(&[BlockRange::new(0, 200)]), 2);
        drop(a);
        drop(b);
        assert_eq!(h.in_flight(&[BlockRange::new(0, 200)]), 0);
        // More I/O than slots spills to the slow path and still counts.
        let many: Vec<_> = (0..SLOTS + 10)
            .map(|i| h.enter(BlockRange::at(i as u64, 1), LONG).unwrap())
            .collect();
        assert_eq!(h.in_flight(&[BlockRange::new(0, 1000)]), SLOTS + 10);
        drop(many);
        assert_eq!(h.in_flight(&[BlockRange::new(0, 1000)]), 0);
    }

    #[test]
    fn a_hold_stops_only_overlapping_io_and_times_out() {
        let h = RangeHolds::new();
        let g = h.hold(&[BlockRange::new(10, 20)]);
        // Elsewhere flows.
        drop(h.enter(BlockRange::new(20, 30), LONG).unwrap());
        drop(h.enter(BlockRange::new(0, 10), LONG).unwrap());
        // Inside waits, then fails.
        let err = h
            .enter(BlockRange::new(15, 25), Duration::from_millis(30))
            .err()
            .unwrap();
        assert!(err.to_string().contains("held"), "{err}");
        // A waiter proceeds when the hold is released.
        let (tx, rx) = mpsc::channel();
        let h2 = h.clone();
        let t = thread::spawn(move || {
            let _io = h2.enter(BlockRange::new(12, 13), LONG).unwrap();
            tx.send(()).unwrap();
        });
        assert!(rx.recv_timeout(Duration::from_millis(50)).is_err());
        assert_eq!(h.held_ranges(), vec![BlockRange::new(10, 20)]);
        g.release();
        rx.recv_timeout(LONG).unwrap();
        t.join().unwrap();
        assert!(h.held_ranges().is_empty());
    }

    #[test]
    fn drain_waits_for_io_that_started_before_the_hold() {
        let h = RangeHolds::new();
        let (entered, go) = (mpsc::channel(), mpsc::channel::<()>());
        let h2 = h.clone();
        let t = thread::spawn(move || {
            let _inside = h2.enter(BlockRange::new(5, 15), LONG).unwrap();
            entered.0.send(()).unwrap();
            go.1.recv().unwrap();
            thread::sleep(Duration::from_millis(30));
        });
        entered.1.recv().unwrap();
        let outside = h.enter(BlockRange::new(50, 60), LONG).unwrap();
        let g = h.hold(&[BlockRange::new(10, 20)]);
        let err = g.drain(Duration::from_millis(20)).unwrap_err();
        assert_eq!(err.busy, 1);
        go.0.send(()).unwrap();
        g.drain(LONG).unwrap();
        t.join().unwrap();
        // `outside` never mattered; I/O outside the hold still enters.
        drop(h.enter(BlockRange::new(30, 40), LONG).unwrap());
        drop(outside);
    }

    #[test]
    fn the_gate_races_cleanly_with_the_fast_path() {
        // Hammer enter/exit on one range while holds come and go; whenever a drain
        // succeeds, nothing may be in flight in the held range.
        let h = RangeHolds::new();
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let inside = Arc::new(AtomicUsize::new(0));
        let workers: Vec<_> = (0..3)
            .map(|_| {
                let (h, stop, inside) = (h.clone(), stop.clone(), inside.clone());
                thread::spawn(move || {
                    while !stop.load(Ordering::Relaxed) {
                        let _io = h.enter(BlockRange::new(0, 8), LONG).unwrap();
                        inside.fetch_add(1, Ordering::SeqCst);
                        std::hint::spin_loop();
                        inside.fetch_sub(1, Ordering::SeqCst);
                    }
                })
            })
            .collect();
        for _ in 0..300 {
            let g = h.hold(&[BlockRange::new(4, 5)]);
            g.drain(LONG).unwrap();
            assert_eq!(inside.load(Ordering::SeqCst), 0);
            drop(g);
        }
        stop.store(true, Ordering::Relaxed);
        for w in workers {
            w.join().unwrap();
        }
    }
}
