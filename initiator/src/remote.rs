//! [`RemoteStore`]: a [`BlockStore`] over one LUN of a back-end target, reached
//! through a [`Client`].
//!
//! At open it reads the geometry (READ CAPACITY(16)), the block limits (VPD B0h:
//! MAXIMUM TRANSFER LENGTH, unmap limits), logical block provisioning (LBPME from READ
//! CAPACITY(16), LBPU from VPD B2h), the write-protect bit (MODE SENSE) and the LU's
//! NAA designator (VPD 83h, for EXTENDED COPY; a LU without one still opens). I/O is
//! READ(16)/WRITE(16) (FUA when asked), SYNCHRONIZE CACHE(16), UNMAP and GET LBA
//! STATUS, split at the smaller of the target's MAXIMUM TRANSFER LENGTH and our own
//! cap, with the pieces of one request in flight together.
//!
//! COMPARE AND WRITE is passed through to the array, so that it is atomic across every
//! node that serves the LU (see [`RemoteStore::compare_and_write_support`] for how
//! support is detected). A miscompare comes back as [`CawOutcome::Miscompare`] with the
//! array's offset.
//!
//! Copies between two LUs of one array can be offloaded to it with EXTENDED COPY
//! (LID1): [`RemoteStore::extended_copy_to`], in `offload.rs`, which says when it
//! applies and what a caller does when it does not ([`OffloadOutcome`]).
//!
//! A UNIT ATTENTION from the back-end is consumed and the command retried (at most
//! [`MAX_UA_RETRIES`] times); CAPACITY DATA HAS CHANGED re-reads the capacity first.
//!
//! Failures become [`BlockError`]s that the SCSI core turns into the host's sense
//! (`scsi::Sense::from_block_error`): back-end sense without a dedicated variant
//! (NOT READY, MEDIUM ERROR, HARDWARE ERROR, ABORTED COMMAND, ...) is carried as
//! [`BlockError::Sense`]; a back-end that is unreachable, reconnecting, timed out or
//! BUSY is reported as NOT READY 04/01 (becoming ready: the host retries), a back-end
//! RESERVATION CONFLICT as NOT READY 04/03 (manual intervention required).
//!
//! # Threads
//!
//! The [`BlockStore`] methods are synchronous: they run the async I/O with
//! [`tokio::runtime::Handle::block_on`] on the runtime captured by
//! [`RemoteStore::open`]. Call them from threads outside the runtime's async workers —
//! `spawn_blocking` threads (as the SCSI core does) or plain threads — never from
//! inside an async task, where `block_on` panics.

use std::io;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicU8, Ordering};
use std::sync::Arc;
use std::time::Duration;

use blockdev::{BlockError, BlockStore, Capabilities, CawOutcome, IoFuture, LbaStatus};
use bytes::Bytes;
use futures::stream::{self, TryStreamExt};
use tokio::runtime::Handle;

use crate::client::Client;
use crate::error::InitiatorError;
use crate::outcome::{sense_key, status, ScsiOutcome, SenseInfo};
use crate::session::Session;

mod offload;

pub use offload::OffloadOutcome;

/// Unit attentions consumed (and the command retried) per command.
pub const MAX_UA_RETRIES: usize = 3;
/// BUSY / TASK SET FULL retries per command.
const MAX_BUSY_RETRIES: usize = 6;

/// Tunables of a [`RemoteStore`].
#[derive(Debug, Clone)]
pub struct RemoteStoreOptions {
    /// Timeout of each SCSI command.
    pub timeout: Duration,
    /// Our own cap on the bytes of one READ/WRITE (the target's limit applies too).
    pub max_io_bytes: u32,
    /// Pieces of one large request in flight at once.
    pub parallel: usize,
    /// Our own cap on the bytes one EXTENDED COPY moves (the array's limits apply
    /// too), so that each copy command ends well within `timeout`.
    pub max_copy_bytes: u64,
}

impl Default for RemoteStoreOptions {
    fn default() -> Self {
        RemoteStoreOptions {
            timeout: Duration::from_secs(30),
            max_io_bytes: 1024 * 1024,
            parallel: 8,
            max_copy_bytes: 64 << 20,
        }
    }
}

/// The failure of a command on a back-end LU, carried inside
/// [`BlockError::Io`] so that the message names the back-end and, when the array
/// returned sense data, the sense.
#[derive(Debug, Clone, thiserror::Error)]
#[error("back-end {backend}: {op} failed: {detail}")]
pub struct RemoteIoError {
    /// `"target <name> LUN <n>"`.
    pub backend: String,
    /// The command, e.g. "READ(16)".
    pub op: &'static str,
    /// The array's sense data, if it sent any.
    pub sense: Option<SenseInfo>,
    pub detail: String,
}

/// Whether the array runs COMPARE AND WRITE, as far as the store knows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CawSupport {
    /// REPORT SUPPORTED OPERATION CODES lists it (and the block limits allow it), or
    /// one ran. An INVALID COMMAND OPERATION CODE on use still turns it `Unsupported`:
    /// tgtd 1.0.85 lists 89h and reports a MAXIMUM COMPARE AND WRITE LENGTH, then
    /// refuses the command.
    Supported,
    /// The array did not say (no REPORT SUPPORTED OPERATION CODES); the first
    /// COMPARE AND WRITE decides: INVALID COMMAND OPERATION CODE makes it `Unsupported`.
    Unknown,
    /// The array refuses it: not listed, MAXIMUM COMPARE AND WRITE LENGTH 0, or INVALID
    /// COMMAND OPERATION CODE on use.
    Unsupported,
}

impl CawSupport {
    fn code(self) -> u8 {
        match self {
            CawSupport::Supported => 1,
            CawSupport::Unknown => 2,
            CawSupport::Unsupported => 0,
        }
    }

    fn from_code(c: u8) -> CawSupport {
        match c {
            1 => CawSupport::Supported,
            2 => CawSupport::Unknown,
            _ => CawSupport::Unsupported,
        }
    }
}

/// COMPARE AND WRITE support from what the array reports at open: MAXIMUM COMPARE AND
/// WRITE LENGTH from the block limits VPD page (`None` without the page) and the
/// SUPPORT field of REPORT SUPPORTED OPERATION CODES for opcode 89h (`None` when the
/// array does not implement that command).
fn caw_support(max_caw_blocks: Option<u8>, rsoc_support: Option<u8>) -> CawSupport {
    if max_caw_blocks == Some(0) {
        // SBC-4 6.6.4: zero means the device server does not support COMPARE AND WRITE.
        return CawSupport::Unsupported;
    }
    match rsoc_support {
        // 011b: supported as the standard says; 101b: in a vendor-specific way.
        Some(0b011 | 0b101) => CawSupport::Supported,
        // 001b: not supported.
        Some(0b001) => CawSupport::Unsupported,
        // 000b (not available now) or reserved values, or no answer: try it.
        _ => CawSupport::Unknown,
    }
}

/// One LUN of a remote target as a block store.
pub struct RemoteStore {
    client: Client,
    lun: u64,
    handle: Handle,
    opts: RemoteStoreOptions,
    name: String,
    block_size: u32,
    blocks: AtomicU64,
    /// Blocks per READ/WRITE command.
    max_blocks: u32,
    lbpme: bool,
    lbpu: bool,
    max_unmap_blocks: u32,
    max_unmap_descriptors: u32,
    write_protected: AtomicBool,
    /// [`CawSupport`] as its code.
    caw: AtomicU8,
    /// MAXIMUM COMPARE AND WRITE LENGTH (1..=255 blocks; 255 when not reported).
    max_caw_blocks: u8,
    /// The LU's NAA designator from VPD page 83h, which names it in EXTENDED COPY.
    naa: Option<Vec<u8>>,
    /// The supported VPD pages list THIRD-PARTY COPY (8Fh).
    tpc_page: bool,
    /// What the array's copy manager can do, asked once (OPERATING PARAMETERS).
    copy_manager: tokio::sync::OnceCell<offload::CopyManager>,
    /// LIST IDENTIFIER of the next EXTENDED COPY sent to this LU.
    next_list_id: AtomicU8,
    /// Blocks this LU's array copied for us with EXTENDED COPY.
    offload_blocks: AtomicU64,
}

impl std::fmt::Debug for RemoteStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RemoteStore")
            .field("backend", &self.name)
            .field("block_size", &self.block_size)
            .field("blocks", &self.num_blocks())
            .field("max_blocks", &self.max_blocks)
            .field("lbpu", &self.lbpu)
            .field("compare_and_write", &self.compare_and_write_support())
            .field("naa", &self.naa.as_deref().map(hex))
            .field("third_party_copy_page", &self.tpc_page)
            .finish()
    }
}

/// Geometry from READ CAPACITY(16).
struct Capacity {
    blocks: u64,
    block_size: u32,
    lbpme: bool,
}

impl RemoteStore {
    /// Opens LUN `lun` of the client's target: clears pending unit attentions and
    /// reads geometry and limits. Captures the current tokio runtime for the sync
    /// [`BlockStore`] methods.
    pub async fn open(
        client: Client,
        lun: u64,
        opts: RemoteStoreOptions,
    ) -> Result<RemoteStore, InitiatorError> {
        let name = format!("target {} LUN {lun}", client.config().target_name);
        let mut store = RemoteStore {
            client,
            lun,
            handle: Handle::current(),
            opts,
            name,
            block_size: 512,
            blocks: AtomicU64::new(0),
            max_blocks: 1,
            lbpme: false,
            lbpu: false,
            max_unmap_blocks: 0,
            max_unmap_descriptors: 0,
            write_protected: AtomicBool::new(false),
            caw: AtomicU8::new(CawSupport::Unknown.code()),
            max_caw_blocks: u8::MAX,
            naa: None,
            tpc_page: false,
            copy_manager: tokio::sync::OnceCell::new(),
            next_list_id: AtomicU8::new(0),
            offload_blocks: AtomicU64::new(0),
        };
        let backend = store.name.clone();
        let failed = |what: &str, e: BlockError| InitiatorError::CommandFailed {
            target: backend.clone(),
            what: format!("{what}: {e}"),
        };
        // TEST UNIT READY: consumes the power-on / new-nexus unit attentions.
        store
            .command("TEST UNIT READY", &[0u8; 6], Bytes::new(), 0)
            .await
            .map_err(|e| failed("TEST UNIT READY", e))?;
        let cap = store
            .read_capacity()
            .await
            .map_err(|e| failed("READ CAPACITY(16)", e))?;
        if cap.block_size == 0 || !cap.block_size.is_power_of_two() {
            return Err(InitiatorError::CommandFailed {
                target: store.name.clone(),
                what: format!("unusable logical block size {}", cap.block_size),
            });
        }
        store.block_size = cap.block_size;
        store.blocks.store(cap.blocks, Ordering::Release);
        store.lbpme = cap.lbpme;
        let pages = store.vpd(0x00, 255).await.unwrap_or_default();
        let supported = |p: u8| pages.len() > 4 && pages[4..].contains(&p);
        let mut target_max = 0u32;
        let mut max_caw = None;
        if supported(0xb0) {
            if let Ok(b0) = store.vpd(0xb0, 64).await {
                if b0.len() > 5 {
                    max_caw = Some(b0[5]);
                }
                if b0.len() >= 28 {
                    target_max = be32(&b0[8..12]);
                    store.max_unmap_blocks = be32(&b0[20..24]);
                    store.max_unmap_descriptors = be32(&b0[24..28]);
                }
            }
        }
        // Device identification: the NAA designator names the LU in EXTENDED COPY.
        // Not every array has one (or answers); the store works without.
        if let Ok(p83) = store.vpd(0x83, 1024).await {
            store.naa = lu_naa(&p83);
        }
        store.tpc_page = supported(0x8f);
        if store.lbpme && supported(0xb2) {
            if let Ok(b2) = store.vpd(0xb2, 64).await {
                store.lbpu = b2.len() > 5 && b2[5] & 0x80 != 0;
            }
        }
        let own_max = (store.opts.max_io_bytes / store.block_size).max(1);
        store.max_blocks = if target_max == 0 {
            own_max
        } else {
            own_max.min(target_max)
        };
        if let Some(m) = max_caw.filter(|&m| m > 0) {
            store.max_caw_blocks = m;
        }
        let rsoc = store.caw_rsoc().await;
        store
            .caw
            .store(caw_support(max_caw, rsoc).code(), Ordering::Release);
        // MODE SENSE(6), DBD: the WP bit of the device-specific parameter.
        if let Ok(ms) = store
            .command(
                "MODE SENSE(6)",
                &[0x1a, 0x08, 0x3f, 0, 0xff, 0],
                Bytes::new(),
                255,
            )
            .await
        {
            if ms.data.len() > 2 {
                store
                    .write_protected
                    .store(ms.data[2] & 0x80 != 0, Ordering::Release);
            }
        }
        tracing::info!(backend = %store.name, ?store, "remote LU opened");
        Ok(store)
    }

    /// The back-end's name for messages ("target X LUN n").
    pub fn backend_name(&self) -> &str {
        &self.name
    }

    /// Blocks per READ/WRITE command (target limit and our cap).
    pub fn max_transfer_blocks(&self) -> u32 {
        self.max_blocks
    }

    /// Whether the array runs COMPARE AND WRITE, as far as this store knows: probed at
    /// open (the block limits page's MAXIMUM COMPARE AND WRITE LENGTH, then REPORT
    /// SUPPORTED OPERATION CODES for opcode 89h); when the array does not say, the first
    /// COMPARE AND WRITE decides, and an INVALID COMMAND OPERATION CODE is remembered.
    pub fn compare_and_write_support(&self) -> CawSupport {
        CawSupport::from_code(self.caw.load(Ordering::Acquire))
    }

    /// MAXIMUM COMPARE AND WRITE LENGTH of the array (255 when it does not report one).
    pub fn max_compare_write_blocks(&self) -> u8 {
        self.max_caw_blocks
    }

    /// The LU's NAA designator (VPD page 83h, association LU; NAA 6 preferred, then
    /// NAA 5), if the array reports one.
    pub fn naa_designator(&self) -> Option<&[u8]> {
        self.naa.as_deref()
    }

    /// Whether the array lists the THIRD-PARTY COPY VPD page (8Fh) among its supported
    /// pages. Informational: arrays that implement only LID1 EXTENDED COPY may not
    /// list it, so [`RemoteStore::extended_copy_to`] asks the copy manager itself.
    pub fn lists_third_party_copy_page(&self) -> bool {
        self.tpc_page
    }

    /// The client this store runs over.
    pub fn client(&self) -> &Client {
        &self.client
    }

    /// Re-reads the capacity (after CAPACITY DATA HAS CHANGED); returns the blocks.
    pub async fn refresh_capacity(&self) -> Result<u64, BlockError> {
        let cap = self.read_capacity().await?;
        if cap.block_size != self.block_size {
            tracing::error!(backend = %self.name, old = self.block_size, new = cap.block_size, "the back-end changed its block size; I/O will fail");
            return Err(self.io_error(
                "READ CAPACITY(16)",
                io::ErrorKind::Other,
                None,
                format!(
                    "block size changed from {} to {}",
                    self.block_size, cap.block_size
                ),
            ));
        }
        let old = self.blocks.swap(cap.blocks, Ordering::AcqRel);
        if old != cap.blocks {
            tracing::info!(backend = %self.name, old, new = cap.blocks, "back-end capacity changed");
        }
        Ok(cap.blocks)
    }

    async fn read_capacity(&self) -> Result<Capacity, BlockError> {
        let mut cdb = [0u8; 16];
        cdb[0] = 0x9e;
        cdb[1] = 0x10;
        cdb[13] = 32;
        let out = self
            .command_inner("READ CAPACITY(16)", &cdb, Bytes::new(), 32, false)
            .await?;
        let d = &out.data;
        if d.len() < 12 {
            return Err(self.io_error(
                "READ CAPACITY(16)",
                io::ErrorKind::InvalidData,
                None,
                format!("only {} bytes of capacity data", d.len()),
            ));
        }
        Ok(Capacity {
            blocks: be64(&d[0..8]).wrapping_add(1),
            block_size: be32(&d[8..12]),
            lbpme: d.len() > 14 && d[14] & 0x80 != 0,
        })
    }

    /// REPORT SUPPORTED OPERATION CODES, one command (reporting options 001b), for
    /// COMPARE AND WRITE: the SUPPORT field, or `None` when the array does not answer.
    async fn caw_rsoc(&self) -> Option<u8> {
        let cdb = [0xa3, 0x0c, 0x01, 0x89, 0, 0, 0, 0, 0, 64, 0, 0];
        let out = self
            .command("REPORT SUPPORTED OPERATION CODES", &cdb, Bytes::new(), 64)
            .await
            .ok()?;
        out.data.get(1).map(|b| b & 0x07)
    }

    async fn vpd(&self, page: u8, len: u16) -> Result<Bytes, BlockError> {
        let [hi, lo] = len.to_be_bytes();
        let out = self
            .command(
                "INQUIRY",
                &[0x12, 0x01, page, hi, lo, 0],
                Bytes::new(),
                u32::from(len),
            )
            .await?;
        Ok(out.data)
    }

    fn io_error(
        &self,
        op: &'static str,
        kind: io::ErrorKind,
        sense: Option<SenseInfo>,
        detail: String,
    ) -> BlockError {
        BlockError::Io(io::Error::new(
            kind,
            RemoteIoError {
                backend: self.name.clone(),
                op,
                sense,
                detail,
            },
        ))
    }

    fn transport_error(&self, op: &'static str, e: InitiatorError) -> BlockError {
        transport_error(&self.name, op, e)
    }

    /// Runs a command with unit attention handling and BUSY retries.
    async fn command(
        &self,
        op: &'static str,
        cdb: &[u8],
        data_out: Bytes,
        read_len: u32,
    ) -> Result<ScsiOutcome, BlockError> {
        self.command_inner(op, cdb, data_out, read_len, true).await
    }

    async fn command_inner(
        &self,
        op: &'static str,
        cdb: &[u8],
        data_out: Bytes,
        read_len: u32,
        refresh_on_ua: bool,
    ) -> Result<ScsiOutcome, BlockError> {
        let out = self
            .command_outcome(None, op, cdb, data_out, read_len, refresh_on_ua)
            .await?;
        self.fail_on_sense(op, cdb, &out)?;
        Ok(out)
    }

    /// A CHECK CONDITION other than RECOVERED ERROR as the error it stands for.
    fn fail_on_sense(
        &self,
        op: &'static str,
        cdb: &[u8],
        out: &ScsiOutcome,
    ) -> Result<(), BlockError> {
        if out.status == status::CHECK_CONDITION {
            let sense = out.sense_info();
            if sense.is_none_or(|s| s.key != sense_key::RECOVERED_ERROR) {
                return Err(self.sense_error(op, cdb, sense));
            }
        }
        Ok(())
    }

    /// Runs a command with unit attention handling and BUSY retries, and returns its
    /// final outcome: GOOD, CONDITION MET, or CHECK CONDITION (RECOVERED ERROR, or a
    /// sense the caller maps). Other statuses are errors. `via`: on this session
    /// (one I_T nexus) rather than any of the client's.
    async fn command_outcome(
        &self,
        via: Option<&Session>,
        op: &'static str,
        cdb: &[u8],
        data_out: Bytes,
        read_len: u32,
        refresh_on_ua: bool,
    ) -> Result<ScsiOutcome, BlockError> {
        let mut uas = 0;
        let mut busy = 0;
        loop {
            let out = match via {
                Some(s) => {
                    s.execute(self.lun, cdb, data_out.clone(), read_len, self.opts.timeout)
                        .await
                }
                None => {
                    self.client
                        .execute(self.lun, cdb, data_out.clone(), read_len, self.opts.timeout)
                        .await
                }
            }
            .map_err(|e| self.transport_error(op, e))?;
            match out.status {
                status::GOOD | status::CONDITION_MET => return Ok(out),
                status::CHECK_CONDITION => {
                    let sense = out.sense_info();
                    match sense {
                        // RECOVERED ERROR: the command completed (SPC-4 4.5.6).
                        Some(s) if s.key == sense_key::RECOVERED_ERROR => {
                            tracing::debug!(backend = %self.name, sense = %s, op, "recovered error from the back-end");
                            return Ok(out);
                        }
                        Some(s) if s.key == sense_key::UNIT_ATTENTION && uas < MAX_UA_RETRIES => {
                            uas += 1;
                            tracing::info!(backend = %self.name, sense = %s, op, "unit attention from the back-end; retrying");
                            if refresh_on_ua && (s.asc, s.ascq) == (0x2a, 0x09) {
                                // CAPACITY DATA HAS CHANGED.
                                self.refresh_capacity_no_ua().await?;
                            }
                        }
                        _ => return Ok(out),
                    }
                }
                status::BUSY | status::TASK_SET_FULL if busy < MAX_BUSY_RETRIES => {
                    busy += 1;
                    tokio::time::sleep(Duration::from_millis(5 << busy)).await;
                }
                status::TASK_ABORTED if busy < MAX_BUSY_RETRIES => {
                    // Aborted by another initiator's action (TAS): run it again.
                    busy += 1;
                }
                other => return Err(status_error(&self.name, op, other)),
            }
        }
    }

    /// Capacity re-read that does not recurse into unit attention handling.
    fn refresh_capacity_no_ua(
        &self,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = Result<u64, BlockError>> + Send + '_>>
    {
        Box::pin(self.refresh_capacity())
    }

    fn sense_error(&self, op: &'static str, cdb: &[u8], sense: Option<SenseInfo>) -> BlockError {
        sense_error(&self.name, op, cdb, self.num_blocks(), sense)
    }

    /// The checks of a write before anything is sent: range and write protection.
    fn check_write(&self, lba: u64, len: usize) -> Result<(), BlockError> {
        self.check_buf(lba, len)?;
        if self.write_protected.load(Ordering::Acquire) {
            return Err(BlockError::ReadOnly);
        }
        Ok(())
    }

    fn lba_cdb(op: u8, lba: u64, blocks: u32, fua: bool) -> [u8; 16] {
        let mut c = [0u8; 16];
        c[0] = op;
        if fua {
            c[1] = 0x08;
        }
        c[2..10].copy_from_slice(&lba.to_be_bytes());
        c[10..14].copy_from_slice(&blocks.to_be_bytes());
        c
    }

    /// READ(16) of `buf.len()` bytes at `lba` into `buf`, in pieces of at most
    /// `max_blocks` blocks, `opts.parallel` of them in flight.
    async fn read_pieces(&self, lba: u64, buf: &mut [u8]) -> Result<(), BlockError> {
        let bs = self.block_size as usize;
        let piece = self.max_blocks as usize * bs;
        if buf.len() <= piece {
            return self.read_piece(lba, buf).await;
        }
        stream::iter(buf.chunks_mut(piece).enumerate().map(Ok))
            .try_for_each_concurrent(self.opts.parallel.max(1), |(i, chunk)| async move {
                self.read_piece(lba + (i * piece / bs) as u64, chunk).await
            })
            .await
    }

    async fn read_piece(&self, at: u64, chunk: &mut [u8]) -> Result<(), BlockError> {
        let data = self.read_one(at, chunk.len()).await?;
        chunk.copy_from_slice(&data);
        Ok(())
    }

    /// One READ(16) of `len` bytes (at most `max_blocks` blocks) at `at`: exactly
    /// `len` bytes, or an error for a short read.
    async fn read_one(&self, at: u64, len: usize) -> Result<Bytes, BlockError> {
        let blocks = (len / self.block_size as usize) as u32;
        let cdb = Self::lba_cdb(0x88, at, blocks, false);
        let out = self
            .command("READ(16)", &cdb, Bytes::new(), len as u32)
            .await?;
        if out.data.len() < len {
            return Err(self.io_error(
                "READ(16)",
                io::ErrorKind::UnexpectedEof,
                None,
                format!("short read: {} of {len} bytes at LBA {at}", out.data.len()),
            ));
        }
        Ok(out.data.slice(..len))
    }

    /// WRITE(16) of `data` at `lba`, in pieces as [`RemoteStore::read_pieces`]; each
    /// piece is a slice of `data` (no copy).
    async fn write_pieces(&self, lba: u64, data: Bytes, fua: bool) -> Result<(), BlockError> {
        let bs = self.block_size as usize;
        let piece = self.max_blocks as usize * bs;
        if data.len() <= piece {
            return self.write_piece(lba, data, fua).await;
        }
        let n = data.len().div_ceil(piece);
        stream::iter((0..n).map(Ok))
            .try_for_each_concurrent(self.opts.parallel.max(1), |i| {
                let chunk = data.slice(i * piece..((i + 1) * piece).min(data.len()));
                async move {
                    self.write_piece(lba + (i * piece / bs) as u64, chunk, fua)
                        .await
                }
            })
            .await
    }

    async fn write_piece(&self, at: u64, chunk: Bytes, fua: bool) -> Result<(), BlockError> {
        let blocks = (chunk.len() / self.block_size as usize) as u32;
        let cdb = Self::lba_cdb(0x8a, at, blocks, fua);
        let out = self.command("WRITE(16)", &cdb, chunk, 0).await?;
        if let crate::outcome::Residual::Underflow(n) = out.residual {
            if n > 0 {
                return Err(self.io_error(
                    "WRITE(16)",
                    io::ErrorKind::WriteZero,
                    None,
                    format!("the back-end took {n} bytes less than sent at LBA {at}"),
                ));
            }
        }
        Ok(())
    }

    /// COMPARE AND WRITE (SBC-4 5.3) of `compare.len() / block_size` blocks: one
    /// command, data-out = compare data then write data.
    async fn compare_and_write_async(
        &self,
        lba: u64,
        compare: &[u8],
        write: &[u8],
        fua: bool,
    ) -> Result<CawOutcome, BlockError> {
        const OP: &str = "COMPARE AND WRITE";
        let blocks = compare.len() / self.block_size as usize;
        let cdb = caw_cdb(lba, blocks as u8, fua);
        let mut data = Vec::with_capacity(compare.len() + write.len());
        data.extend_from_slice(compare);
        data.extend_from_slice(write);
        let out = self
            .command_outcome(None, OP, &cdb, Bytes::from(data), 0, true)
            .await?;
        if out.status == status::CHECK_CONDITION {
            let sense = out.sense_info();
            return match sense {
                Some(s) if s.key == sense_key::MISCOMPARE && s.asc == 0x1d => {
                    let offset = match s.info {
                        Some(o) => o,
                        // The array did not say where: find it ourselves (the medium
                        // may have changed since; then the offset is only a guess).
                        None => self.miscompare_offset(lba, compare).await,
                    };
                    Ok(CawOutcome::Miscompare { offset })
                }
                Some(s) if s.key == sense_key::RECOVERED_ERROR => Ok(CawOutcome::Written),
                _ => {
                    let e = self.sense_error(OP, &cdb, sense);
                    if matches!(e, BlockError::Unsupported(_)) {
                        self.caw
                            .store(CawSupport::Unsupported.code(), Ordering::Release);
                        tracing::warn!(backend = %self.name, "the back-end refuses COMPARE AND WRITE; the node emulates it, which is not atomic across nodes");
                    }
                    Err(e)
                }
            };
        }
        if let crate::outcome::Residual::Underflow(n) = out.residual {
            if n > 0 {
                return Err(self.io_error(
                    OP,
                    io::ErrorKind::WriteZero,
                    None,
                    format!("the back-end took {n} bytes less than sent at LBA {lba}"),
                ));
            }
        }
        if self.compare_and_write_support() == CawSupport::Unknown {
            self.caw
                .store(CawSupport::Supported.code(), Ordering::Release);
        }
        Ok(CawOutcome::Written)
    }

    /// Offset of the first byte of `compare` that differs from the medium, or 0.
    async fn miscompare_offset(&self, lba: u64, compare: &[u8]) -> u64 {
        let mut cur = vec![0u8; compare.len()];
        match self.read_pieces(lba, &mut cur).await {
            Ok(()) => cur
                .iter()
                .zip(compare)
                .position(|(a, b)| a != b)
                .unwrap_or(0) as u64,
            Err(_) => 0,
        }
    }

    async fn unmap_async(&self, lba: u64, blocks: u64) -> Result<(), BlockError> {
        let per_desc = u64::from(if self.max_unmap_blocks == 0 {
            u32::MAX
        } else {
            self.max_unmap_blocks
        });
        let per_cmd = self.max_unmap_descriptors.clamp(1, 256) as usize;
        let mut ranges = Vec::new();
        let (mut at, mut left) = (lba, blocks);
        while left > 0 {
            let n = left.min(per_desc);
            ranges.push((at, n as u32));
            at += n;
            left -= n;
        }
        for group in ranges.chunks(per_cmd) {
            // UNMAP parameter list (SBC-4 5.30.2): 8-byte header, 16-byte descriptors.
            let mut p = vec![0u8; 8 + 16 * group.len()];
            let total = p.len();
            p[0..2].copy_from_slice(&((total - 2) as u16).to_be_bytes());
            p[2..4].copy_from_slice(&((total - 8) as u16).to_be_bytes());
            for (i, (l, n)) in group.iter().enumerate() {
                let d = 8 + 16 * i;
                p[d..d + 8].copy_from_slice(&l.to_be_bytes());
                p[d + 8..d + 12].copy_from_slice(&n.to_be_bytes());
            }
            let mut cdb = [0u8; 10];
            cdb[0] = 0x42;
            cdb[7..9].copy_from_slice(&(total as u16).to_be_bytes());
            self.command("UNMAP", &cdb, Bytes::from(p), 0).await?;
        }
        Ok(())
    }

    async fn lba_status_async(&self, lba: u64) -> Result<LbaStatus, BlockError> {
        let mut cdb = [0u8; 16];
        cdb[0] = 0x9e;
        cdb[1] = 0x12;
        cdb[2..10].copy_from_slice(&lba.to_be_bytes());
        cdb[13] = 24;
        let out = self
            .command("GET LBA STATUS", &cdb, Bytes::new(), 24)
            .await?;
        let d = &out.data;
        if d.len() < 24 {
            return Err(self.io_error(
                "GET LBA STATUS",
                io::ErrorKind::InvalidData,
                None,
                format!("only {} bytes of LBA status", d.len()),
            ));
        }
        let start = be64(&d[8..16]);
        let count = u64::from(be32(&d[16..20]));
        let provisioning = d[20] & 0x0f;
        let end = start.saturating_add(count);
        if start > lba || end <= lba {
            return Err(self.io_error(
                "GET LBA STATUS",
                io::ErrorKind::InvalidData,
                None,
                format!("descriptor {start}+{count} does not cover LBA {lba}"),
            ));
        }
        Ok(LbaStatus {
            mapped: provisioning == 0,
            blocks: end - lba,
        })
    }
}

/// A [`BlockError::Sense`] whose message names the back-end and the command.
fn backend_sense(
    backend: &str,
    op: &'static str,
    (key, asc, ascq): (u8, u8, u8),
    sense: Option<SenseInfo>,
    detail: String,
) -> BlockError {
    let msg = RemoteIoError {
        backend: backend.to_string(),
        op,
        sense,
        detail,
    }
    .to_string();
    BlockError::Sense {
        key,
        asc,
        ascq,
        msg,
    }
}

/// NOT READY, LOGICAL UNIT IS IN PROCESS OF BECOMING READY: transient, the host retries.
const BECOMING_READY: (u8, u8, u8) = (sense_key::NOT_READY, 0x04, 0x01);
/// NOT READY, MANUAL INTERVENTION REQUIRED.
const MANUAL_INTERVENTION: (u8, u8, u8) = (sense_key::NOT_READY, 0x04, 0x03);
/// HARDWARE ERROR, INTERNAL TARGET FAILURE.
const INTERNAL_FAILURE: (u8, u8, u8) = (sense_key::HARDWARE_ERROR, 0x44, 0x00);

/// Back-end sense to a [`BlockError`]: LBA OUT OF RANGE, DATA PROTECT and INVALID
/// COMMAND OPERATION CODE have variants; everything else (medium and hardware errors,
/// NOT READY, ABORTED COMMAND, unit attentions left after the retries, ...) is
/// [`BlockError::Sense`] with the array's codes, which the SCSI core filters.
fn sense_error(
    backend: &str,
    op: &'static str,
    cdb: &[u8],
    capacity: u64,
    sense: Option<SenseInfo>,
) -> BlockError {
    let Some(s) = sense else {
        return backend_sense(
            backend,
            op,
            INTERNAL_FAILURE,
            None,
            "CHECK CONDITION without sense data".into(),
        );
    };
    match (s.key, s.asc, s.ascq) {
        (sense_key::ILLEGAL_REQUEST, 0x21, 0x00) => {
            let (lba, blocks) = lba_and_blocks(cdb);
            BlockError::OutOfRange {
                lba,
                blocks,
                capacity,
            }
        }
        (sense_key::ILLEGAL_REQUEST, 0x20, 0x00) => BlockError::Unsupported(op),
        (sense_key::DATA_PROTECT, ..) => BlockError::ReadOnly,
        (key, asc, ascq) => backend_sense(backend, op, (key, asc, ascq), Some(s), s.to_string()),
    }
}

/// A SCSI status other than GOOD and CHECK CONDITION, once its retries are used up.
fn status_error(backend: &str, op: &'static str, st: u8) -> BlockError {
    let (code, detail) = match st {
        status::RESERVATION_CONFLICT => (
            MANUAL_INTERVENTION,
            "RESERVATION CONFLICT: another initiator holds a reservation on the back-end LU"
                .to_string(),
        ),
        status::BUSY | status::TASK_SET_FULL | status::TASK_ABORTED => (
            BECOMING_READY,
            format!("SCSI status {st:#04x} after {MAX_BUSY_RETRIES} retries"),
        ),
        other => (INTERNAL_FAILURE, format!("SCSI status {other:#04x}")),
    };
    backend_sense(backend, op, code, None, detail)
}

/// A command that got no SCSI status: the array is unreachable, the session is being
/// re-established, or the command timed out (and was aborted) — NOT READY 04/01, so
/// that the host retries while the client reconnects. A protocol-level refusal of the
/// command is an internal failure.
fn transport_error(backend: &str, op: &'static str, e: InitiatorError) -> BlockError {
    let code = match e {
        InitiatorError::Rejected { .. }
        | InitiatorError::TargetFailure { .. }
        | InitiatorError::CommandFailed { .. }
        | InitiatorError::Invalid(_) => INTERNAL_FAILURE,
        InitiatorError::Io { .. }
        | InitiatorError::Login(_)
        | InitiatorError::PhaseTimeout { .. }
        | InitiatorError::NotConnected { .. }
        | InitiatorError::ConnectionLost { .. }
        | InitiatorError::Timeout { .. }
        | InitiatorError::Protocol { .. }
        | InitiatorError::Closed { .. } => BECOMING_READY,
    };
    backend_sense(backend, op, code, None, e.to_string())
}

/// The LU's NAA designator in VPD page 83h data: a designation descriptor of
/// association 0 (the logical unit), designator type 3 (NAA) and the binary code set,
/// 8 or 16 bytes long. NAA 6 (16 bytes) is preferred, then NAA 5 (8 bytes), then any
/// other NAA format of those lengths. Malformed pages give what was found before the
/// damage.
fn lu_naa(page: &[u8]) -> Option<Vec<u8>> {
    if page.len() < 4 || page[1] != 0x83 {
        return None;
    }
    let end = page
        .len()
        .min(4 + usize::from(u16::from_be_bytes([page[2], page[3]])));
    let rank = |d: &[u8]| match (d[0] >> 4, d.len()) {
        (6, 16) => 0,
        (5, 8) => 1,
        _ => 2,
    };
    let mut best: Option<&[u8]> = None;
    let mut at = 4;
    while at + 4 <= end {
        let next = at + 4 + usize::from(page[at + 3]);
        if next > end {
            break;
        }
        let (code_set, association, kind) = (
            page[at] & 0x0f,
            (page[at + 1] >> 4) & 0x03,
            page[at + 1] & 0x0f,
        );
        let d = &page[at + 4..next];
        if code_set == 1
            && association == 0
            && kind == 3
            && matches!(d.len(), 8 | 16)
            && best.is_none_or(|b| rank(d) < rank(b))
        {
            best = Some(d);
        }
        at = next;
    }
    best.map(<[u8]>::to_vec)
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

fn be32(b: &[u8]) -> u32 {
    u32::from_be_bytes([b[0], b[1], b[2], b[3]])
}

fn be64(b: &[u8]) -> u64 {
    let mut x = [0u8; 8];
    x.copy_from_slice(&b[..8]);
    u64::from_be_bytes(x)
}

/// LBA and block count of a READ/WRITE(16) or COMPARE AND WRITE CDB, for OutOfRange
/// errors.
fn lba_and_blocks(cdb: &[u8]) -> (u64, u64) {
    if cdb.len() >= 14 && matches!(cdb[0], 0x88 | 0x8a) {
        (be64(&cdb[2..10]), u64::from(be32(&cdb[10..14])))
    } else if cdb.len() >= 14 && cdb[0] == 0x89 {
        (be64(&cdb[2..10]), u64::from(cdb[13]))
    } else {
        (0, 0)
    }
}

/// COMPARE AND WRITE CDB (SBC-4 5.3): LBA in bytes 2..10, NUMBER OF LOGICAL BLOCKS in
/// byte 13, FUA bit 3 of byte 1.
fn caw_cdb(lba: u64, blocks: u8, fua: bool) -> [u8; 16] {
    let mut c = [0u8; 16];
    c[0] = 0x89;
    if fua {
        c[1] = 0x08;
    }
    c[2..10].copy_from_slice(&lba.to_be_bytes());
    c[13] = blocks;
    c
}

impl BlockStore for RemoteStore {
    fn block_size(&self) -> u32 {
        self.block_size
    }

    fn num_blocks(&self) -> u64 {
        self.blocks.load(Ordering::Acquire)
    }

    fn capabilities(&self) -> Capabilities {
        Capabilities {
            unmap: self.lbpu,
            lba_status: self.lbpme,
            read_only: self.write_protected.load(Ordering::Acquire),
            fua: true,
        }
    }

    fn read(&self, lba: u64, buf: &mut [u8]) -> Result<(), BlockError> {
        self.check_buf(lba, buf.len())?;
        if buf.is_empty() {
            return Ok(());
        }
        self.handle.block_on(self.read_pieces(lba, buf))
    }

    fn write(&self, lba: u64, data: &[u8], fua: bool) -> Result<(), BlockError> {
        self.check_write(lba, data.len())?;
        if data.is_empty() {
            return Ok(());
        }
        self.handle
            .block_on(self.write_pieces(lba, Bytes::copy_from_slice(data), fua))
    }

    /// Every read and write has an asynchronous path.
    fn async_ok(&self) -> bool {
        true
    }

    fn read_async(self: Arc<Self>, lba: u64, blocks: u32) -> Option<IoFuture<Vec<u8>>> {
        if let Err(e) = self.check_range(lba, u64::from(blocks)) {
            return Some(blockdev::ready(Err(e)));
        }
        let len = blocks as usize * self.block_size as usize;
        Some(Box::pin(async move {
            if len == 0 {
                return Ok(Vec::new());
            }
            if blocks <= self.max_blocks {
                // One command: its data copied once, into the response.
                return Ok(self.read_one(lba, len).await?.to_vec());
            }
            let mut buf = vec![0u8; len];
            self.read_pieces(lba, &mut buf).await?;
            Ok(buf)
        }))
    }

    fn write_async(self: Arc<Self>, lba: u64, data: Bytes, fua: bool) -> Option<IoFuture<()>> {
        if let Err(e) = self.check_write(lba, data.len()) {
            return Some(blockdev::ready(Err(e)));
        }
        if data.is_empty() {
            return Some(blockdev::ready(Ok(())));
        }
        Some(Box::pin(
            async move { self.write_pieces(lba, data, fua).await },
        ))
    }

    fn flush(&self) -> Result<(), BlockError> {
        let cdb = [0x91u8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0];
        self.handle
            .block_on(self.command("SYNCHRONIZE CACHE(16)", &cdb, Bytes::new(), 0))
            .map(|_| ())
    }

    fn unmap(&self, lba: u64, blocks: u64) -> Result<(), BlockError> {
        if !self.lbpu {
            return Err(BlockError::Unsupported("unmap"));
        }
        self.check_range(lba, blocks)?;
        if blocks == 0 {
            return Ok(());
        }
        self.handle.block_on(self.unmap_async(lba, blocks))
    }

    fn lba_status(&self, lba: u64) -> Result<LbaStatus, BlockError> {
        if !self.lbpme {
            return Err(BlockError::Unsupported("lba status"));
        }
        self.check_range(lba, 1)?;
        self.handle.block_on(self.lba_status_async(lba))
    }

    /// COMPARE AND WRITE on the array. `Unsupported` (nothing sent) when the array is
    /// known not to support it or the request is longer than its MAXIMUM COMPARE AND
    /// WRITE LENGTH, and (remembered) when the array answers INVALID COMMAND OPERATION
    /// CODE.
    fn compare_and_write(
        &self,
        lba: u64,
        compare: &[u8],
        write: &[u8],
        fua: bool,
    ) -> Result<CawOutcome, BlockError> {
        if compare.len() != write.len() {
            return Err(BlockError::Misaligned {
                len: write.len(),
                block_size: self.block_size,
            });
        }
        let blocks = self.check_buf(lba, compare.len())?;
        if self.compare_and_write_support() == CawSupport::Unsupported {
            return Err(BlockError::Unsupported("compare and write"));
        }
        if blocks > u64::from(self.max_caw_blocks) {
            return Err(BlockError::Unsupported(
                "compare and write longer than the back-end's limit",
            ));
        }
        if self.write_protected.load(Ordering::Acquire) {
            return Err(BlockError::ReadOnly);
        }
        if blocks == 0 {
            return Ok(CawOutcome::Written);
        }
        self.handle
            .block_on(self.compare_and_write_async(lba, compare, write, fua))
    }

    fn supports_compare_and_write(&self) -> bool {
        self.compare_and_write_support() != CawSupport::Unsupported
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cdbs() {
        let c = RemoteStore::lba_cdb(0x8a, 0x0102_0304_0506_0708, 16, true);
        assert_eq!(c[0], 0x8a);
        assert_eq!(c[1], 0x08);
        assert_eq!(&c[2..10], &[1, 2, 3, 4, 5, 6, 7, 8]);
        assert_eq!(&c[10..14], &[0, 0, 0, 16]);
        assert_eq!(lba_and_blocks(&c), (0x0102_0304_0506_0708, 16));
        let r = RemoteStore::lba_cdb(0x88, 5, 1, false);
        assert_eq!(r[1], 0);
    }

    /// A designation descriptor: code set, association, designator type, designator.
    fn desig(code_set: u8, assoc: u8, kind: u8, d: &[u8]) -> Vec<u8> {
        let mut v = vec![code_set, (assoc << 4) | kind, 0, d.len() as u8];
        v.extend_from_slice(d);
        v
    }

    fn page83(descriptors: &[Vec<u8>]) -> Vec<u8> {
        let body: Vec<u8> = descriptors.concat();
        let mut p = vec![0, 0x83];
        p.extend_from_slice(&(body.len() as u16).to_be_bytes());
        p.extend_from_slice(&body);
        p
    }

    #[test]
    fn naa_designator_of_the_lu() {
        let naa6: Vec<u8> = [0x60].into_iter().chain(1..16).collect();
        let naa5 = vec![0x50, 1, 2, 3, 4, 5, 6, 7];
        let naa3 = vec![0x30, 9, 9, 9, 9, 9, 9, 9];
        let t10 = desig(2, 0, 1, b"SWITCHYDSERIAL0");
        // NAA 6 preferred over NAA 5 whatever the order; target port ones (association
        // 1), ASCII code sets and other designator types are ignored.
        let p = page83(&[
            t10.clone(),
            desig(1, 1, 3, &naa6),
            desig(1, 0, 3, &naa5),
            desig(1, 0, 3, &naa6),
        ]);
        assert_eq!(lu_naa(&p), Some(naa6.clone()));
        assert_eq!(
            lu_naa(&page83(&[desig(1, 0, 3, &naa3), desig(1, 0, 3, &naa5)])),
            Some(naa5.clone())
        );
        assert_eq!(lu_naa(&page83(&[desig(1, 0, 3, &naa3)])), Some(naa3));
        assert_eq!(lu_naa(&page83(&[t10.clone(), desig(1, 2, 3, &naa5)])), None);
        assert_eq!(lu_naa(&page83(&[desig(1, 0, 3, &naa6[..12])])), None);
        assert_eq!(lu_naa(&page83(&[desig(2, 0, 3, &naa5)])), None);
        // Truncated pages give what came before the damage, and never panic.
        let full = page83(&[desig(1, 0, 3, &naa5), desig(1, 0, 3, &naa6)]);
        for n in 0..full.len() {
            let got = lu_naa(&full[..n]);
            assert!(got.is_none() || got == Some(naa5.clone()), "{n}: {got:?}");
        }
        assert_eq!(lu_naa(&full), Some(naa6.clone()));
        let mut wrong_page = full.clone();
        wrong_page[1] = 0x80;
        assert_eq!(lu_naa(&wrong_page), None);
        // A PAGE LENGTH beyond the data: what arrived counts.
        let mut long = full;
        long[3] = 0xff;
        assert_eq!(lu_naa(&long), Some(naa6));
    }

    fn codes(e: &BlockError) -> (u8, u8, u8) {
        match e {
            BlockError::Sense { key, asc, ascq, .. } => (*key, *asc, *ascq),
            other => panic!("expected BlockError::Sense, got {other:?}"),
        }
    }

    fn sense(key: u8, asc: u8, ascq: u8) -> Option<SenseInfo> {
        Some(SenseInfo {
            key,
            asc,
            ascq,
            info: Some(77),
        })
    }

    #[test]
    fn caw_cdb_and_support() {
        let c = caw_cdb(0x0102_0304_0506_0708, 3, true);
        assert_eq!(c[0], 0x89);
        assert_eq!(c[1], 0x08);
        assert_eq!(&c[2..10], &[1, 2, 3, 4, 5, 6, 7, 8]);
        assert_eq!(&c[10..13], &[0, 0, 0]);
        assert_eq!(c[13], 3);
        assert_eq!(caw_cdb(9, 1, false)[1], 0);
        assert_eq!(lba_and_blocks(&c), (0x0102_0304_0506_0708, 3));

        assert_eq!(caw_support(Some(255), Some(3)), CawSupport::Supported);
        assert_eq!(caw_support(None, Some(5)), CawSupport::Supported);
        assert_eq!(caw_support(Some(1), Some(1)), CawSupport::Unsupported);
        assert_eq!(caw_support(Some(0), Some(3)), CawSupport::Unsupported);
        assert_eq!(caw_support(Some(0), None), CawSupport::Unsupported);
        assert_eq!(caw_support(Some(1), None), CawSupport::Unknown);
        assert_eq!(caw_support(None, None), CawSupport::Unknown);
        assert_eq!(caw_support(None, Some(0)), CawSupport::Unknown);
        for s in [
            CawSupport::Supported,
            CawSupport::Unknown,
            CawSupport::Unsupported,
        ] {
            assert_eq!(CawSupport::from_code(s.code()), s);
        }
    }

    #[test]
    fn back_end_sense_becomes_block_errors() {
        let cdb = RemoteStore::lba_cdb(0x88, 100, 8, false);
        let err = |s| sense_error("target t LUN 0", "READ(16)", &cdb, 1000, s);
        assert!(matches!(
            err(sense(0x5, 0x21, 0x00)),
            BlockError::OutOfRange {
                lba: 100,
                blocks: 8,
                capacity: 1000
            }
        ));
        assert!(matches!(
            err(sense(0x5, 0x20, 0x00)),
            BlockError::Unsupported("READ(16)")
        ));
        assert!(matches!(err(sense(0x7, 0x27, 0x00)), BlockError::ReadOnly));
        // Everything else carries the array's codes for the SCSI core to filter.
        for (k, a, q) in [
            (0x2, 0x04, 0x01), // NOT READY, becoming ready
            (0x2, 0x3a, 0x00), // NOT READY, medium not present
            (0x3, 0x11, 0x00), // MEDIUM ERROR, unrecovered read error
            (0x3, 0x0c, 0x00), // MEDIUM ERROR, write error
            (0x4, 0x44, 0x00), // HARDWARE ERROR
            (0xb, 0x00, 0x00), // ABORTED COMMAND
            (0x6, 0x29, 0x00), // UNIT ATTENTION left after the retries
            (0x5, 0x24, 0x00), // ILLEGAL REQUEST, invalid field in CDB
        ] {
            let e = err(sense(k, a, q));
            assert_eq!(codes(&e), (k, a, q));
            let msg = e.to_string();
            assert!(
                msg.contains("target t LUN 0") && msg.contains("READ(16)"),
                "{msg}"
            );
        }
        assert_eq!(codes(&err(None)), INTERNAL_FAILURE);
    }

    #[test]
    fn statuses_and_transport_failures_become_sense() {
        assert_eq!(
            codes(&status_error(
                "b",
                "WRITE(16)",
                status::RESERVATION_CONFLICT
            )),
            MANUAL_INTERVENTION
        );
        assert_eq!(
            codes(&status_error("b", "WRITE(16)", status::BUSY)),
            BECOMING_READY
        );
        assert_eq!(
            codes(&status_error("b", "WRITE(16)", status::ACA_ACTIVE)),
            INTERNAL_FAILURE
        );
        let portal = "127.0.0.1:3260".parse().unwrap();
        let transient = [
            InitiatorError::Timeout {
                target: "t".into(),
                opcode: 0x8a,
                after: Duration::from_secs(15),
            },
            InitiatorError::ConnectionLost {
                portal,
                target: "t".into(),
                why: "reset".into(),
            },
            InitiatorError::NotConnected {
                portal,
                target: "t".into(),
            },
            InitiatorError::Closed { target: "t".into() },
        ];
        for e in transient {
            let what = e.to_string();
            let b = transport_error("b", "WRITE(16)", e);
            assert_eq!(codes(&b), BECOMING_READY, "{what}");
            assert!(b.to_string().contains(&what));
        }
        let e = InitiatorError::Rejected {
            target: "t".into(),
            reason: 4,
        };
        assert_eq!(
            codes(&transport_error("b", "READ(16)", e)),
            INTERNAL_FAILURE
        );
    }
}
