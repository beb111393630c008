//! A logical unit: configuration, the block store it executes over, mode parameters,
//! the SPC-2 reservation and the per-nexus unit attention queues.
//!
//! Concurrency: there is no lock around command execution. Reads and writes go
//! straight to the store (which must be thread-safe); the small pieces of state are
//! each behind their own parking_lot lock and held only to read or flip a few bits.
//! Atomic commands (COMPARE AND WRITE, WRITE ATOMIC, ORWRITE) hold their LBA range
//! exclusively in `ranges`; every other medium command holds its range shared, which
//! costs two atomic operations while no atomic command is active (`range_lock.rs`).

use std::sync::Arc;

use blockdev::BlockStore;
use parking_lot::RwLock;

use crate::alua::{LuAlua, PortGroups};
use crate::cdb::{parse_cdb, Cdb, PrOut};
use crate::commands;
use crate::mode::{self, MediumInfo, ModeState};
use crate::nexus::{NexusState, Nexuses};
use crate::pr::{self, ItNexus, PersistentReservations, PrError, PrState, ProutParams};
use crate::pr_cluster::{PrAttention, PrClusterError, PrCommitError, PrCoordinator};
use crate::pr_store::{PrSnapshot, PrStore, PrStoreError};
use crate::range_lock::{self, RangeGuard, RangeLocks};
use crate::reservation::{self, Reservations};
use crate::sense::Sense;
use crate::target::LunMap;
use crate::vpd::{self, VpdSource};
use crate::write_drain::{WriteDrain, WriteTicket};
use crate::{caw, inquiry, sbc, spc, thin, tmf, Request, Response, Status};

/// How many times a PERSISTENT RESERVE OUT (or, with a coordinator, an SPC-2 RESERVE
/// or RELEASE) is executed again when another node committed first, before it is
/// refused with NOT READY 04/0A.
pub const PR_COMMIT_ATTEMPTS: u32 = 8;

/// Configuration of one logical unit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LuConfig {
    /// NAA designator bytes; the first `naa_len` are used.
    pub wwn: [u8; 16],
    /// 8 (NAA 5, registered) or 16 (NAA 6, registered extended).
    pub naa_len: u8,
    /// Unit serial number (VPD 80h); the NAA in hex when empty.
    pub serial: String,
    /// T10 vendor identification (8 characters used).
    pub vendor: String,
    /// Product identification (16 characters used).
    pub product: String,
    /// Product revision level (4 characters used).
    pub revision: String,
    /// Thin provisioned (SBC-3 4.7): LBPME=1, UNMAP, WRITE SAME with UNMAP, GET LBA
    /// STATUS reporting holes. Ignored (the LU is fully provisioned) when the store
    /// cannot unmap; [`LogicalUnit::config`] shows the effective value.
    pub thin: bool,
    /// Refuse writes with DATA PROTECT, WRITE PROTECTED.
    pub read_only: bool,
}

impl Default for LuConfig {
    fn default() -> Self {
        LuConfig {
            wwn: [0; 16],
            naa_len: 16,
            serial: String::new(),
            vendor: "SWITCHYD".into(),
            product: "VIRTUAL-DISK".into(),
            revision: "0001".into(),
            thin: false,
            read_only: false,
        }
    }
}

impl LuConfig {
    /// The NAA designator: 8 or 16 bytes of `wwn`.
    pub fn naa_bytes(&self) -> &[u8] {
        if self.naa_len == 8 {
            &self.wwn[..8]
        } else {
            &self.wwn[..]
        }
    }
}

/// Transfer limits a logical unit advertises in the block limits VPD page and
/// enforces (SBC-3 6.5.3).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// MAXIMUM TRANSFER LENGTH in blocks: longer transfers are INVALID FIELD IN CDB.
    pub max_transfer_blocks: u32,
    /// OPTIMAL TRANSFER LENGTH in blocks (0: not reported).
    pub optimal_transfer_blocks: u32,
    /// OPTIMAL TRANSFER LENGTH GRANULARITY in blocks (0: not reported).
    pub optimal_granularity_blocks: u16,
    /// MAXIMUM WRITE SAME LENGTH in blocks: longer WRITE SAME is INVALID FIELD IN CDB.
    pub max_write_same_blocks: u64,
    /// MAXIMUM UNMAP LBA COUNT: blocks one UNMAP may deallocate (thin LUs only).
    pub max_unmap_blocks: u32,
    /// MAXIMUM UNMAP BLOCK DESCRIPTOR COUNT (thin LUs only).
    pub max_unmap_descriptors: u32,
    /// MAXIMUM COMPARE AND WRITE LENGTH in blocks.
    pub max_compare_write_blocks: u8,
    /// MAXIMUM ATOMIC TRANSFER LENGTH in blocks (also the limit with an atomic
    /// boundary and the maximum atomic boundary size: writes are never split).
    pub max_atomic_blocks: u32,
    /// ATOMIC ALIGNMENT in blocks (0: none).
    pub atomic_alignment: u32,
    /// ATOMIC TRANSFER LENGTH GRANULARITY in blocks (0: none).
    pub atomic_granularity: u32,
}

impl Limits {
    /// Defaults: 8 MiB per transfer, 64 MiB (at most 65535 blocks) per WRITE SAME,
    /// 1 GiB (at most 2^20 blocks) and 256 descriptors per UNMAP, 255 blocks per
    /// COMPARE AND WRITE, and atomic writes as long as any transfer, with no alignment
    /// or granularity.
    ///
    /// The 65535 cap: libiscsi's WriteSame16.Unmap test, once MAXIMUM WRITE SAME
    /// LENGTH reaches 65536, fills 65536 blocks with one WRITE(16) whatever the
    /// MAXIMUM TRANSFER LENGTH, and fails on a thin 512-byte LU.
    pub fn for_block_size(block_size: u32) -> Limits {
        let bs = block_size.max(1);
        let max_transfer_blocks = (8 << 20) / bs;
        Limits {
            max_transfer_blocks,
            optimal_transfer_blocks: 0,
            optimal_granularity_blocks: 0,
            max_write_same_blocks: u64::from(((64 << 20) / bs).min(65535)),
            max_unmap_blocks: ((1 << 30) / bs).min(1 << 20),
            max_unmap_descriptors: 256,
            max_compare_write_blocks: 255,
            max_atomic_blocks: max_transfer_blocks,
            atomic_alignment: 0,
            atomic_granularity: 0,
        }
    }
}

/// A logical unit: a block store with SCSI state.
pub struct LogicalUnit {
    cfg: LuConfig,
    store: Arc<dyn BlockStore>,
    limits: Limits,
    mode: RwLock<ModeState>,
    nexuses: Nexuses,
    reservation: Reservations,
    /// Shared with the background commits of SPC-2 releases (`reservation.rs`).
    pr: Arc<PersistentReservations>,
    /// Target port groups (ALUA); by default one Active/Optimized group.
    alua: LuAlua,
    /// Where persistent reservations persist through power loss (APTPL).
    pr_store: Option<Arc<dyn PrStore>>,
    /// Commits persistent reservation changes cluster-wide (replaces `pr_store`).
    pr_coordinator: Option<Arc<dyn PrCoordinator>>,
    ranges: RangeLocks,
    /// Writes in flight, for PREEMPT AND ABORT to wait for (`write_drain.rs`).
    writes: Arc<WriteDrain>,
    /// EXTENDED COPY state: copies in progress and held results (xcopy.rs).
    pub(crate) xcopy: crate::xcopy::CopyManager,
}

impl std::fmt::Debug for LogicalUnit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LogicalUnit")
            .field("cfg", &self.cfg)
            .field("block_size", &self.store.block_size())
            .field("blocks", &self.store.num_blocks())
            .finish_non_exhaustive()
    }
}

/// Context a command runs in: the target and the LUN map it came through.
pub(crate) struct Ctx<'a> {
    pub(crate) map: &'a LunMap,
}

/// Where a command came from, for [`LogicalUnit::finish`]'s log line.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Origin {
    pub(crate) lun: u64,
    pub(crate) nexus: u64,
    pub(crate) opcode: u8,
}

impl Origin {
    pub(crate) fn of(req: &Request<'_>) -> Origin {
        Origin {
            lun: req.lun,
            nexus: req.nexus.id,
            opcode: req.cdb.first().copied().unwrap_or(0),
        }
    }
}

/// A plain command's place on the lock-free path of the range locks, owned so that a
/// future can carry it ([`LogicalUnit::try_fast`]); dropping it leaves.
pub(crate) struct FastRange(Arc<LogicalUnit>);

impl Drop for FastRange {
    fn drop(&mut self) {
        self.0.ranges.leave_fast();
    }
}

/// A command that passed [`LogicalUnit::admit`].
pub(crate) struct Admitted {
    pub(crate) cdb: Cdb,
    pub(crate) nexus: Arc<NexusState>,
    /// Bytes of data-out the CDB asks for (for the response's residual).
    pub(crate) data_out_len: u32,
    /// Held by a command that writes the medium until it has finished, so that a
    /// PREEMPT AND ABORT waits for it (`write_drain.rs`).
    pub(crate) ticket: Option<WriteTicket>,
}

impl LogicalUnit {
    /// A logical unit over `store` with default limits.
    pub fn new(cfg: LuConfig, store: Arc<dyn BlockStore>) -> LogicalUnit {
        let limits = Limits::for_block_size(store.block_size());
        LogicalUnit::with_limits(cfg, store, limits)
    }

    /// A logical unit with explicit transfer limits.
    pub fn with_limits(cfg: LuConfig, store: Arc<dyn BlockStore>, limits: Limits) -> LogicalUnit {
        let mut cfg = cfg;
        cfg.thin &= store.capabilities().unmap;
        LogicalUnit {
            cfg,
            store,
            limits,
            mode: RwLock::new(ModeState::default()),
            nexuses: Nexuses::default(),
            reservation: Reservations::default(),
            pr: Arc::default(),
            alua: LuAlua::default(),
            pr_store: None,
            pr_coordinator: None,
            ranges: RangeLocks::default(),
            writes: Arc::default(),
            xcopy: Default::default(),
        }
    }

    pub fn config(&self) -> &LuConfig {
        &self.cfg
    }

    pub fn store(&self) -> &Arc<dyn BlockStore> {
        &self.store
    }

    pub fn limits(&self) -> &Limits {
        &self.limits
    }

    /// Puts the logical unit in a target port group model shared with the other
    /// logical units of its target (SPC-4 5.15). Without it the logical unit has one
    /// Active/Optimized group 1 containing every port.
    pub fn with_port_groups(mut self, groups: Arc<PortGroups>) -> LogicalUnit {
        self.alua = LuAlua::new(groups);
        self
    }

    /// The target port group model (to change states at run time).
    pub fn port_groups(&self) -> &Arc<PortGroups> {
        self.alua.groups()
    }

    /// Keeps persistent reservations in `store` while APTPL is set (PTPL_C=1), and
    /// restores what it holds. A store that cannot be read or holds a corrupt
    /// snapshot is an error: the logical unit must not start without its
    /// reservations.
    ///
    /// On a logical unit that has a [`PrCoordinator`] this does nothing (the cluster
    /// is the store; see [`LogicalUnit::with_pr_coordinator`]).
    pub fn with_pr_store(mut self, store: Arc<dyn PrStore>) -> Result<LogicalUnit, PrStoreError> {
        if self.pr_coordinator.is_some() {
            tracing::info!(
                store = %store.location(),
                "persistent reservations are kept by the cluster; local store not used"
            );
            return Ok(self);
        }
        if let Some(snap) = store.load()? {
            if snap.aptpl {
                let st = snap.to_state().map_err(|reason| PrStoreError::Corrupt {
                    path: store.location(),
                    reason,
                })?;
                tracing::info!(
                    store = %store.location(),
                    registrations = st.registrations.len(),
                    reserved = st.reservation.is_some(),
                    "persistent reservations restored"
                );
                self.pr.update(|s| *s = st);
            }
        }
        self.pr_store = Some(store);
        Ok(self)
    }

    /// Makes persistent reservation changes coherent with the other nodes that serve
    /// this logical unit (see `pr_cluster.rs`): loads the cluster's current state and
    /// version (whatever its APTPL bit: the cluster is the persistent store, and
    /// APTPL=1 is accepted, PTPL_C=1), and from now on commits every PERSISTENT
    /// RESERVE OUT through `coordinator` before completing it. The SPC-2
    /// reservation (RESERVE(6)/(10), RELEASE) becomes cluster-wide too: held by an
    /// I_T nexus (initiator port, relative target port) instead of a local nexus id,
    /// and committed the same way (`reservation.rs`).
    ///
    /// The coordinator wins over a local [`PrStore`]: one set by
    /// [`LogicalUnit::with_pr_store`] before is dropped (what it restored is replaced
    /// by the cluster's state, and it is never written again), and `with_pr_store`
    /// afterwards does nothing. Moving a single node's saved reservations into a new
    /// cluster is the node's job (commit them through the coordinator first).
    ///
    /// Calls [`PrCoordinator::current`], which may block: call it from a blocking
    /// thread. A cluster that cannot be read or returns an inconsistent snapshot is
    /// an error: the logical unit must not start without its reservations.
    pub fn with_pr_coordinator(
        mut self,
        coordinator: Arc<dyn PrCoordinator>,
    ) -> Result<LogicalUnit, PrClusterError> {
        let (version, snap) = coordinator
            .current()
            .map_err(|e| PrClusterError::Unavailable(e.to_string()))?;
        let st = snap
            .to_state()
            .map_err(|reason| PrClusterError::Corrupt { version, reason })?;
        if let Some(store) = self.pr_store.take() {
            tracing::info!(
                store = %store.location(),
                "persistent reservations are kept by the cluster; local store not used"
            );
        }
        tracing::info!(
            ?coordinator,
            version,
            registrations = st.registrations.len(),
            reserved = st.reservation.is_some(),
            "persistent reservations loaded from the cluster"
        );
        self.pr.replace(version, st);
        self.pr_coordinator = Some(coordinator);
        Ok(self)
    }

    /// The cluster version of the persistent reservation state (0 without a
    /// coordinator or before the first commit).
    pub fn pr_version(&self) -> u64 {
        self.pr.version()
    }

    /// The persistent reservation state and its cluster version.
    pub fn pr_snapshot(&self) -> (u64, PrSnapshot) {
        let (st, version) = self.pr.versioned();
        (version, PrSnapshot::of(&st))
    }

    /// Wait until every write this logical unit admitted before the call has finished
    /// (`write_drain.rs`). A PREEMPT AND ABORT does it on the node that received it;
    /// a coordinator calls it on the other nodes after [`Self::apply_remote_pr`]
    /// installs a PREEMPT AND ABORT (see [`PrCoordinator::commit`]). Blocks: call it
    /// where a thread may wait, never on a thread that runs the writes' futures.
    pub fn drain_writes(&self) {
        self.writes.drain();
    }

    /// Another node committed `snapshot` as `version` with these unit attentions:
    /// when `version` is newer than the installed one, installs it (commands check
    /// conflicts against it from now on) and raises each attention for the local
    /// I_T nexuses of its port (ports of other nodes match none). Returns whether it
    /// changed anything: an old or equal version (e.g. one this logical unit
    /// committed itself and already installed) is a no-op. Call it for every
    /// committed version in order, so that no unit attention is missed.
    ///
    /// Never blocks on a cluster commit in flight (takes only the short state lock),
    /// so a coordinator may call it from inside [`PrCoordinator::commit`].
    pub fn apply_remote_pr(
        &self,
        version: u64,
        snapshot: &PrSnapshot,
        attentions: &[PrAttention],
    ) -> bool {
        let st = match snapshot.to_state() {
            Ok(st) => st,
            Err(reason) => {
                tracing::error!(
                    version,
                    %reason,
                    "inconsistent persistent reservations from the cluster; not installed"
                );
                return false;
            }
        };
        if !self.pr.install(version, st, true) {
            return false;
        }
        tracing::debug!(version, "persistent reservations changed on another node");
        for a in attentions {
            self.nexuses
                .notify_port(&a.initiator, a.relative_port, &a.sense());
        }
        true
    }

    /// PTPL_C: persistent reservations can persist through power loss (a local
    /// store or the cluster keeps them).
    fn ptpl_c(&self) -> bool {
        self.pr_store.is_some() || self.pr_coordinator.is_some()
    }

    /// Saves the state a PERSISTENT RESERVE OUT produced while APTPL is (or was) set.
    fn persist(&self, before: &PrState, after: &PrState) -> Result<(), PrError> {
        let Some(store) = &self.pr_store else {
            return Ok(());
        };
        if (!before.aptpl && !after.aptpl) || before == after {
            return Ok(());
        }
        store.save(&PrSnapshot::of(after)).map_err(|e| {
            tracing::error!(error = %e, "cannot save persistent reservations");
            PrError::Sense(Sense::internal_target_failure())
        })
    }

    /// Tells every nexus the capacity changed (after the store grew or shrank).
    pub fn capacity_changed(&self) {
        self.nexuses.notify(None, &Sense::capacity_changed());
    }

    /// Raises a unit attention for every nexus except `except`.
    pub(crate) fn notify(&self, except: Option<u64>, sense: &Sense) {
        self.nexuses.notify(except, sense);
    }

    /// Logical unit reset (SAM-5 6.3.3): releases the SPC-2 reservation (persistent
    /// reservations stay, SPC-4 5.13.2), restores the default mode parameters and
    /// raises BUS DEVICE RESET FUNCTION OCCURRED for every nexus except the one that
    /// asked for the reset.
    ///
    /// With a coordinator the SPC-2 reservation is released cluster-wide, whoever
    /// holds it through whichever node: at once here, on the other nodes once a
    /// background commit lands (`reservation.rs`). Never blocks, so it may be called
    /// from an async runtime thread.
    pub fn reset(&self, by: Option<u64>) {
        // Every effect is in place here before the unit attention is; the commit
        // starts last.
        let released = match &self.pr_coordinator {
            None => {
                self.reservation.clear();
                None
            }
            Some(_) => self.pr.spc2_release_local(None),
        };
        *self.mode.write() = ModeState::default();
        self.nexuses.notify(by, &Sense::bus_device_reset());
        self.commit_spc2_release(released, "logical unit reset");
    }

    /// The session of this nexus ended. Its persistent reservation registrations stay
    /// (SPC-4 5.13.2): they belong to the initiator port, which may log in again. Its
    /// SPC-2 reservation goes (with a coordinator: as [`LogicalUnit::reset`] releases
    /// it, in the background). Never blocks.
    pub(crate) fn nexus_gone(&self, id: u64) {
        match &self.pr_coordinator {
            None => self.reservation.nexus_gone(id),
            Some(_) => {
                if let Some(who) = self.reservation.reserver_gone(id) {
                    let released = self.pr.spc2_release_local(Some(&who));
                    self.commit_spc2_release(released, "I_T nexus loss");
                }
            }
        }
        self.nexuses.remove(id);
        self.xcopy.nexus_gone(id);
    }

    /// The I_T nexus logs out: with a coordinator, release its SPC-2 reservation and
    /// wait until the release is committed cluster-wide (so the initiator may reserve
    /// through another node as soon as its Logout completes). Blocks: call it from a
    /// blocking thread. Without a coordinator, or when it holds nothing, does nothing
    /// (`nexus_gone` follows as usual).
    pub(crate) fn release_spc2_blocking(&self, id: u64) {
        let Some(c) = &self.pr_coordinator else {
            return;
        };
        if let Some(who) = self.reservation.reserver_gone(id) {
            if let Some((version, released)) = self.pr.spc2_release_local(Some(&who)) {
                reservation::commit_release(&self.pr, c.as_ref(), version, released, "logout");
            }
        }
    }

    /// With a coordinator: commits in the background the SPC-2 release that
    /// `PersistentReservations::spc2_release_local` made (`None`: it released
    /// nothing, and nothing is committed).
    fn commit_spc2_release(&self, released: Option<(u64, PrState)>, why: &'static str) {
        if let (Some(c), Some((version, released))) = (&self.pr_coordinator, released) {
            tracing::debug!(version, why, "SPC-2 reservation released; committing it");
            reservation::commit_release_in_background(
                self.pr.clone(),
                c.clone(),
                version,
                released,
                why,
            );
        }
    }

    /// True when a command of this access kind from `nexus` conflicts with the SPC-2
    /// reservation: kept by local nexus id, or with a coordinator the cluster-wide
    /// holder of the installed state (one atomic load while nobody holds it).
    fn spc2_conflicts(&self, nexus: &crate::Nexus, access: commands::Access) -> bool {
        if self.pr_coordinator.is_some() {
            self.pr.spc2_conflicts(nexus, access)
        } else {
            self.reservation.conflicts(nexus.id, access)
        }
    }

    /// True when some I_T nexus holds the SPC-2 reservation (cluster-wide with a
    /// coordinator).
    fn spc2_held(&self) -> bool {
        if self.pr_coordinator.is_some() {
            self.pr.spc2_held()
        } else {
            self.reservation.is_held()
        }
    }

    /// True when a command of these kinds from `nexus` conflicts with the SPC-2 or
    /// persistent reservation (EXTENDED COPY asks this of its copy targets).
    pub(crate) fn conflicts(
        &self,
        nexus: &crate::Nexus,
        access: commands::Access,
        pr: commands::PrAccess,
    ) -> bool {
        self.spc2_conflicts(nexus, access)
            || self
                .pr
                .conflicts(nexus, pr, &Cdb::TestUnitReady, self.spc2_held())
    }

    pub(crate) fn nexus(&self, id: u64) -> Arc<NexusState> {
        self.nexuses.get(id)
    }

    pub(crate) fn mode(&self) -> ModeState {
        *self.mode.read()
    }

    /// Holds `blocks` blocks at `lba` exclusively (atomic commands).
    pub(crate) fn lock_exclusive(&self, lba: u64, blocks: u64) -> RangeGuard<'_> {
        self.ranges.exclusive(lba, blocks)
    }

    /// Holds `blocks` blocks at `lba` shared (every other command touching the medium).
    pub(crate) fn lock_shared(&self, lba: u64, blocks: u64) -> RangeGuard<'_> {
        self.ranges.shared(lba, blocks)
    }

    /// DATA PROTECT when writes are refused: read-only configuration or store, or the
    /// control mode page's SWP bit.
    pub(crate) fn check_writable(&self) -> Result<(), Sense> {
        if self.cfg.read_only || self.store.capabilities().read_only {
            return Err(Sense::write_protected());
        }
        if self.mode.read().swp {
            return Err(Sense::software_write_protected());
        }
        Ok(())
    }

    fn medium(&self) -> MediumInfo {
        MediumInfo {
            block_size: self.store.block_size(),
            blocks: self.store.num_blocks(),
            write_protected: self.check_writable().is_err(),
        }
    }

    /// Runs one command for this logical unit.
    pub(crate) fn execute(&self, ctx: &Ctx<'_>, req: &Request<'_>) -> Response {
        let resp = self.run(ctx, req);
        self.finish(Origin::of(req), resp)
    }

    /// The last touch of every response: the sense format the LU asked for, and a
    /// debug line for a CHECK CONDITION.
    pub(crate) fn finish(&self, origin: Origin, mut resp: Response) -> Response {
        resp.descriptor_sense = self.mode.read().d_sense;
        if let Some(sense) = &resp.sense {
            tracing::debug!(
                lun = origin.lun,
                nexus = origin.nexus,
                opcode = origin.opcode,
                %sense,
                "check condition"
            );
        }
        resp
    }

    /// Enter the lock-free path of the range locks for a plain command that will run
    /// as a future, without waiting: `None` while an atomic command is active (the
    /// caller then runs the command where it may wait, under [`Self::lock_shared`]).
    pub(crate) fn try_fast(self: &Arc<Self>) -> Option<FastRange> {
        self.ranges.try_fast().then(|| FastRange(self.clone()))
    }

    /// The checks every command passes before it runs, in SAM-5 order: a pending unit
    /// attention, the CDB itself, ALUA access state, and reservation conflicts.
    /// `Err`: the response to send instead.
    pub(crate) fn admit(&self, req: &Request<'_>) -> Result<Admitted, Response> {
        self.alua.sync(&self.nexuses);
        let nexus = self.nexus(req.nexus.id);
        nexus.set_port(&req.nexus.initiator, req.nexus.relative_port);
        // SAM-5 5.14 / SPC-4 5.14: a pending unit attention is reported instead of
        // running the command, except for INQUIRY, REPORT LUNS and REQUEST SENSE.
        let exempt = matches!(req.cdb.first(), Some(0x12 | 0xA0 | 0x03));
        if !exempt {
            if let Some(ua) = nexus.pop() {
                return Err(Response::check_condition(ua));
            }
        }
        let cdb = parse_cdb(req.cdb).map_err(Response::check_condition)?;
        let data_out_len = cdb.data_out_len(self.store.block_size());
        let with_len = |mut r: Response| {
            r.data_out_len = data_out_len;
            r
        };
        let mut ticket = None;
        if let Ok(info) = commands::find(req.cdb) {
            if let Err(sense) = self.alua.check(req.nexus.relative_port, info) {
                return Err(with_len(Response::check_condition(sense)));
            }
            // Before the reservation check: a PREEMPT AND ABORT that changes the
            // reservations after this check waits for this command to finish.
            if info.access == commands::Access::Write {
                ticket = Some(self.writes.ticket());
            }
            if self.spc2_conflicts(req.nexus, info.access)
                || self
                    .pr
                    .conflicts(req.nexus, info.pr, &cdb, self.spc2_held())
            {
                return Err(with_len(Response::status(Status::ReservationConflict)));
            }
        }
        Ok(Admitted {
            cdb,
            nexus,
            data_out_len,
            ticket,
        })
    }

    fn run(&self, ctx: &Ctx<'_>, req: &Request<'_>) -> Response {
        let Admitted {
            cdb,
            nexus,
            data_out_len,
            ticket: _ticket,
        } = match self.admit(req) {
            Ok(a) => a,
            Err(resp) => return resp,
        };
        let with_len = |mut r: Response| {
            r.data_out_len = data_out_len;
            r
        };
        match (&self.pr_coordinator, &cdb) {
            (Some(c), Cdb::Reserve | Cdb::Release) => {
                return with_len(self.spc2_commit(c.as_ref(), req, cdb == Cdb::Reserve));
            }
            (None, Cdb::Reserve) if !self.reservation.reserve(req.nexus.id) => {
                return with_len(Response::status(Status::ReservationConflict));
            }
            _ => {}
        }
        if let Cdb::PersistentReserveOut {
            action,
            scope,
            pr_type,
            param_len,
        } = cdb
        {
            return with_len(
                self.persistent_reserve_out(ctx, req, action, scope, pr_type, param_len),
            );
        }
        if let Cdb::ExtendedCopy { param_len } = cdb {
            return with_len(crate::xcopy::extended_copy(self, ctx.map, req, param_len));
        }
        with_len(match self.dispatch(ctx, req, &nexus, &cdb) {
            Ok(data) => Response::good(data),
            Err(sense) => Response::check_condition(sense),
        })
    }

    /// REGISTER AND MOVE names another initiator port and a relative target port: the
    /// fabric's zoning must let that initiator reach this logical unit, and the port
    /// must exist (SPC-4 6.16.4; else INVALID FIELD IN PARAMETER LIST, at the
    /// TransportID or at the RELATIVE TARGET PORT IDENTIFIER).
    fn check_move_target(&self, ctx: &Ctx<'_>, p: &ProutParams) -> Result<(), Sense> {
        let (Some(mv), Some(access)) = (&p.mv, ctx.map.access()) else {
            return Ok(());
        };
        let name = mv
            .nexus
            .initiator
            .split(",i,")
            .next()
            .unwrap_or(&mv.nexus.initiator);
        match access.check(name, mv.nexus.relative_port, self) {
            Ok(()) => Ok(()),
            Err(crate::PortRefusal::Initiator) => Err(Sense::invalid_field_in_param_list(24, None)),
            Err(crate::PortRefusal::Port) => Err(Sense::invalid_field_in_param_list(18, None)),
        }
    }

    /// PERSISTENT RESERVE OUT (SPC-4 6.16): RESERVATION CONFLICT is a status, not
    /// sense data, so it does not go through `dispatch`. The unit attentions the
    /// transition raises go to the I_T nexuses of the ports they name.
    fn persistent_reserve_out(
        &self,
        ctx: &Ctx<'_>,
        req: &Request<'_>,
        action: PrOut,
        scope: u8,
        pr_type: u8,
        param_len: u32,
    ) -> Response {
        let who = ItNexus::of(req.nexus);
        let out = ProutParams::parse(action, param_len, req.data_out, self.ptpl_c())
            .and_then(|p| self.check_move_target(ctx, &p).map(|()| p))
            .map_err(PrError::from)
            .and_then(|p| match &self.pr_coordinator {
                Some(c) => self.commit_out(c.as_ref(), &who, action, scope, pr_type, &p),
                None => {
                    // Changed on a copy: when it cannot be saved, nothing changes.
                    self.pr.update(|st| {
                        let mut next = st.clone();
                        let uas = pr::execute_out(&mut next, &who, action, scope, pr_type, &p)?;
                        self.persist(st, &next)?;
                        *st = next;
                        Ok(uas)
                    })
                }
            });
        match out {
            Ok(attentions) => {
                tracing::debug!(lun = req.lun, initiator = %who.initiator, ?action, "persistent reserve out");
                for (to, sense) in attentions {
                    self.nexuses
                        .notify_port(&to.initiator, to.relative_port, &sense);
                }
                if action == PrOut::PreemptAndAbort {
                    // The preemption is installed; writes admitted before it finish
                    // before this command completes (`write_drain.rs`).
                    self.writes.drain();
                }
                Response::good(Vec::new())
            }
            Err(PrError::Conflict) => Response::status(Status::ReservationConflict),
            Err(PrError::Sense(sense)) => Response::check_condition(sense),
        }
    }

    /// SPC-2 RESERVE (`reserve`) or RELEASE with a coordinator: the holder is the
    /// I_T nexus, and the change is committed cluster-wide like a PERSISTENT RESERVE
    /// OUT ([`LogicalUnit::commit_change`]) before GOOD. RESERVE by the holder again
    /// and RELEASE by anyone else commit nothing.
    fn spc2_commit(
        &self,
        coordinator: &dyn PrCoordinator,
        req: &Request<'_>,
        reserve: bool,
    ) -> Response {
        let who = ItNexus::of(req.nexus);
        let out = if reserve {
            self.commit_change(coordinator, "RESERVE", false, |st| st.spc2_reserve(&who))
        } else {
            self.commit_change(coordinator, "RELEASE", false, |st| st.spc2_release(&who))
        };
        match out {
            Ok(_) => {
                if reserve {
                    self.reservation.reserved_as(req.nexus.id, &who);
                }
                Response::good(Vec::new())
            }
            Err(PrError::Conflict) => Response::status(Status::ReservationConflict),
            Err(PrError::Sense(sense)) => Response::check_condition(sense),
        }
    }

    /// PERSISTENT RESERVE OUT with a coordinator (see [`LogicalUnit::commit_change`]).
    fn commit_out(
        &self,
        coordinator: &dyn PrCoordinator,
        who: &ItNexus,
        action: PrOut,
        scope: u8,
        pr_type: u8,
        p: &ProutParams,
    ) -> Result<Vec<pr::Attention>, PrError> {
        let abort = action == PrOut::PreemptAndAbort;
        self.commit_change(coordinator, "PR OUT", abort, |st| {
            pr::execute_out(st, who, action, scope, pr_type, p)
        })
    }

    /// A reservation change with a coordinator (PERSISTENT RESERVE OUT, SPC-2
    /// RESERVE and RELEASE): `change` executed on a copy of the installed state,
    /// committed cluster-wide at the installed version, then installed. The unit
    /// attentions to raise here are returned (none when the coordinator's
    /// `apply_remote_pr` installed this version first and raised them). Another node
    /// having committed first ([`PrCommitError::Stale`]) re-reads the cluster's state
    /// and executes the command again against it, at most [`PR_COMMIT_ATTEMPTS`]
    /// times; a cluster that cannot commit (or keeps winning the race) is NOT READY
    /// 04/0A, so a multipath host retries, possibly through another node, and nothing
    /// changes here. A change that changes nothing commits nothing. `what` names the
    /// command in the log; `abort` is passed on to the coordinator (PREEMPT AND ABORT).
    ///
    /// Locking: `serialize_out` is held across the commit (reservation changes are
    /// rare, and this keeps this node's own from racing each other). The state lock,
    /// which conflict checks on the I/O path and `apply_remote_pr` take, is not: I/O
    /// and the coordinator's delivery of commits go on while a commit is in flight,
    /// and they see the old state until it is installed (the command has not
    /// completed yet, so either order is allowed).
    fn commit_change(
        &self,
        coordinator: &dyn PrCoordinator,
        what: &'static str,
        abort: bool,
        change: impl Fn(&mut PrState) -> Result<Vec<pr::Attention>, PrError>,
    ) -> Result<Vec<pr::Attention>, PrError> {
        let not_ready = || PrError::Sense(Sense::not_ready_state_transition());
        let _serial = self.pr.serialize_out();
        for attempt in 1..=PR_COMMIT_ATTEMPTS {
            let (st, version) = self.pr.versioned();
            let mut next = st.clone();
            let uas = change(&mut next)?;
            if next == st && uas.is_empty() {
                return Ok(uas);
            }
            let attentions: Vec<PrAttention> = uas.iter().map(PrAttention::of).collect();
            match coordinator.commit(version, &PrSnapshot::of(&next), &attentions, abort) {
                Ok(committed) => {
                    let raise = self.pr.install_committed(committed, next);
                    return Ok(if raise { uas } else { Vec::new() });
                }
                Err(PrCommitError::Stale) => {
                    tracing::debug!(
                        attempt,
                        version,
                        what,
                        "persistent reservations changed on another node; executing again"
                    );
                    let (version, snap) = coordinator.current().map_err(|e| {
                        tracing::warn!(error = %e, "cannot read persistent reservations");
                        not_ready()
                    })?;
                    let st = snap.to_state().map_err(|reason| {
                        tracing::error!(
                            version,
                            %reason,
                            "inconsistent persistent reservations from the cluster"
                        );
                        not_ready()
                    })?;
                    self.pr.install(version, st, false);
                }
                Err(PrCommitError::Unavailable(msg)) => {
                    tracing::warn!(
                        error = %msg,
                        what,
                        "cannot commit a reservation change; command refused"
                    );
                    return Err(not_ready());
                }
            }
        }
        tracing::warn!(
            attempts = PR_COMMIT_ATTEMPTS,
            what,
            "reservations keep changing on other nodes; command refused"
        );
        Err(not_ready())
    }

    fn dispatch(
        &self,
        ctx: &Ctx<'_>,
        req: &Request<'_>,
        nexus: &NexusState,
        cdb: &Cdb,
    ) -> Result<Vec<u8>, Sense> {
        match *cdb {
            // With a coordinator RESERVE and RELEASE do not get here (`spc2_commit`).
            Cdb::TestUnitReady | Cdb::Reserve => Ok(Vec::new()),
            Cdb::Release => {
                self.reservation.release(req.nexus.id);
                Ok(Vec::new())
            }
            Cdb::RequestSense { desc, alloc } => {
                let sense = nexus.pop().unwrap_or_else(Sense::no_sense);
                Ok(spc::request_sense(&sense, desc, alloc))
            }
            Cdb::Inquiry { evpd, page, alloc } => {
                let data = if evpd {
                    // The target port group designator comes from the ALUA model.
                    let nexus = crate::Nexus {
                        port_group: self.alua.group_id(req.nexus.relative_port),
                        ..req.nexus.clone()
                    };
                    let src = VpdSource {
                        cfg: &self.cfg,
                        limits: &self.limits,
                        target: ctx.map.target(),
                        nexus: &nexus,
                    };
                    vpd::page(&src, page)?
                } else {
                    inquiry::standard(Some(&self.cfg))
                };
                Ok(truncate(data, usize::from(alloc)))
            }
            Cdb::ModeSense {
                ten,
                dbd,
                llbaa,
                pc,
                page,
                subpage,
                alloc,
            } => {
                let st = self.mode();
                let data =
                    mode::mode_sense(&st, &self.medium(), ten, dbd, llbaa, pc, page, subpage)?;
                Ok(truncate(data, usize::from(alloc)))
            }
            Cdb::ModeSelect { ten, pf, param_len } => {
                let n = usize::from(param_len).min(req.data_out.len());
                let medium = self.medium();
                let mut st = self.mode.write();
                let new = mode::mode_select(&st, &medium, ten, pf, &req.data_out[..n])?;
                if new != *st {
                    *st = new;
                    drop(st);
                    self.notify(Some(req.nexus.id), &Sense::parameters_changed());
                }
                Ok(Vec::new())
            }
            Cdb::ReportLuns { select, alloc } => {
                let data = spc::report_luns(ctx.map.luns(), select);
                ctx.map.luns_reported(req.nexus.id);
                Ok(truncate(data, alloc as usize))
            }
            Cdb::ReportSupportedOpcodes {
                rctd,
                options,
                opcode,
                service_action,
                alloc,
            } => {
                let data =
                    commands::report_supported_opcodes(rctd, options, opcode, service_action)?;
                Ok(truncate(data, alloc as usize))
            }
            Cdb::PersistentReserveIn { action, alloc } => {
                let data = self.pr.snapshot().read(action, self.ptpl_c());
                Ok(truncate(data, usize::from(alloc)))
            }
            Cdb::ReportTargetPortGroups { extended, alloc } => {
                let data = self.alua.report(extended, &self.nexuses.relative_ports());
                Ok(truncate(data, alloc as usize))
            }
            Cdb::ReceiveCopyResults {
                action,
                list_id,
                alloc,
            } => {
                let data = crate::xcopy::receive_copy_results(self, req.nexus.id, action, list_id)?;
                Ok(truncate(data, alloc as usize))
            }
            Cdb::Unsupported(_) => Err(Sense::invalid_opcode()),
            Cdb::Unmap { .. } | Cdb::GetLbaStatus { .. } => thin::execute(self, cdb, req.data_out),
            Cdb::CompareAndWrite { .. } | Cdb::WriteAtomic { .. } => {
                caw::execute(self, cdb, req.data_out)
            }
            Cdb::ReportSupportedTmf { repd, alloc } => tmf::report(repd, alloc),
            _ => {
                let _range = range_lock::plain_range(cdb, self.store.num_blocks())
                    .map(|(lba, blocks)| self.lock_shared(lba, blocks));
                sbc::execute(self, cdb, req.data_out)
            }
        }
    }
}

/// Truncates parameter data to the allocation length.
pub(crate) fn truncate(mut data: Vec<u8>, alloc: usize) -> Vec<u8> {
    data.truncate(alloc);
    data
}
