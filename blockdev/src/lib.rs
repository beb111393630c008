//! Block stores: the back-ends a logical unit reads and writes.
//!
//! This crate owns the [`BlockStore`] trait (what a back-end can do, in logical blocks)
//! and its local implementations: [`FileStore`] (regular files, sparse files and block
//! devices, with `pread`/`pwrite` and `fdatasync`), and for tests [`MemStore`] (RAM) and
//! [`GatedStore`] (RAM whose writes wait until the test lets them through).
//! It knows nothing about SCSI or iSCSI; the SCSI core maps [`BlockError`] to sense data.
#![forbid(unsafe_code)]

mod file;
mod forward;
mod gated;
mod mem;

pub use file::{FileStore, FileStoreOptions};
pub use gated::{Gate, GatedStore};
pub use mem::MemStore;

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;

use bytes::Bytes;

/// The future of an asynchronous store operation ([`BlockStore::read_async`],
/// [`BlockStore::write_async`]). Polling it never blocks the thread.
pub type IoFuture<T> = Pin<Box<dyn Future<Output = Result<T, BlockError>> + Send + 'static>>;

/// An [`IoFuture`] that is ready at once (an error found before any I/O, a hole).
pub fn ready<T: Send + 'static>(r: Result<T, BlockError>) -> IoFuture<T> {
    Box::pin(std::future::ready(r))
}

/// What went wrong in a back-end. The SCSI core turns each into sense data.
#[derive(Debug, thiserror::Error)]
pub enum BlockError {
    /// The request reaches past the end of the store.
    #[error("blocks {lba}..{lba}+{blocks} are beyond the end of the store ({capacity} blocks)")]
    OutOfRange {
        lba: u64,
        blocks: u64,
        capacity: u64,
    },
    /// A buffer length that is not a whole number of blocks.
    #[error("buffer of {len} bytes is not a multiple of the {block_size}-byte block size")]
    Misaligned { len: usize, block_size: u32 },
    /// The store cannot do this (e.g. unmap on a block device without discard).
    #[error("operation not supported by this back-end: {0}")]
    Unsupported(&'static str),
    /// The store is read-only.
    #[error("the back-end is read-only")]
    ReadOnly,
    /// An I/O error from the operating system or a remote array.
    #[error("I/O error: {0}")]
    Io(#[from] io::Error),
    /// A remote back-end (an array reached over iSCSI) failed the command with this
    /// sense key, ASC and ASCQ, or the node describes a back-end failure in those
    /// terms (e.g. NOT READY while the array is unreachable). The SCSI core decides
    /// what the host sees (`scsi::Sense::from_block_error`): the back-end's sense is
    /// about the node's I_T nexus to the array, so not every code passes through.
    #[error("{msg} (back-end sense {key:02X}/{asc:02X}/{ascq:02X})")]
    Sense {
        key: u8,
        asc: u8,
        ascq: u8,
        msg: String,
    },
}

/// What a back-end can do beyond read, write and flush (SPDK's `io_type_supported`).
/// Atomic compare-and-write is reported by [`BlockStore::supports_compare_and_write`]
/// instead, so that the stores that build this struct field by field need no change.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Capabilities {
    /// Deallocate blocks (punch holes); unmapped blocks read back as zeroes.
    pub unmap: bool,
    /// Report which blocks are allocated (`lba_status`).
    pub lba_status: bool,
    /// Writes can be refused (a read-only store).
    pub read_only: bool,
    /// `write` with `fua = true` reaches stable storage before it returns.
    pub fua: bool,
}

/// How a [`BlockStore::compare_and_write`] that ran to completion ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CawOutcome {
    /// The medium matched the compare data and the write data was written.
    Written,
    /// The medium differed from the compare data; nothing was written. `offset` is the
    /// byte offset, from the start of the compare data, of the first byte that differs
    /// (what COMPARE AND WRITE reports in the sense INFORMATION field).
    Miscompare { offset: u64 },
}

/// Allocation state of a run of blocks, as GET LBA STATUS reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LbaStatus {
    /// True when the blocks are mapped (hold data); false for a hole.
    pub mapped: bool,
    /// Number of blocks, starting at the queried LBA, that share this state (>= 1).
    pub blocks: u64,
}

/// A store of fixed-size logical blocks. Implementations must be safe to call from many
/// threads at once; they should not serialise unrelated I/O behind one lock.
pub trait BlockStore: Send + Sync + 'static {
    /// Logical block size in bytes (512 or 4096).
    fn block_size(&self) -> u32;
    /// Capacity in logical blocks.
    fn num_blocks(&self) -> u64;
    /// What the store can do beyond read, write and flush.
    fn capabilities(&self) -> Capabilities;
    /// Read `buf.len() / block_size` blocks starting at `lba` into `buf`.
    fn read(&self, lba: u64, buf: &mut [u8]) -> Result<(), BlockError>;
    /// Write `data` starting at `lba`. With `fua`, the data is on stable storage when
    /// this returns.
    fn write(&self, lba: u64, data: &[u8], fua: bool) -> Result<(), BlockError>;
    /// Make every completed write durable (SYNCHRONIZE CACHE).
    fn flush(&self) -> Result<(), BlockError>;
    /// Deallocate `blocks` blocks at `lba`; they read back as zeroes afterwards.
    fn unmap(&self, lba: u64, blocks: u64) -> Result<(), BlockError> {
        let _ = (lba, blocks);
        Err(BlockError::Unsupported("unmap"))
    }
    /// Allocation state of the run of blocks starting at `lba`.
    fn lba_status(&self, lba: u64) -> Result<LbaStatus, BlockError> {
        let _ = lba;
        Err(BlockError::Unsupported("lba status"))
    }

    /// Atomically compare `compare.len() / block_size` blocks at `lba` with `compare`
    /// and, only if they are equal, write `write` there (`fua` as for
    /// [`BlockStore::write`]). `compare` and `write` have the same length. Atomic means
    /// with respect to every other command on the medium, from whichever node or path
    /// it comes — which a caller that reads, compares and writes cannot promise once
    /// several nodes serve the same blocks. The store does it itself or on its array
    /// (COMPARE AND WRITE passed through).
    ///
    /// `Ok(CawOutcome::Miscompare { .. })` is not an error: nothing was written.
    /// Stores that cannot do it atomically return [`BlockError::Unsupported`] (the
    /// default), having done nothing; the caller then falls back to its own
    /// read-compare-write under its own lock.
    fn compare_and_write(
        &self,
        lba: u64,
        compare: &[u8],
        write: &[u8],
        fua: bool,
    ) -> Result<CawOutcome, BlockError> {
        let _ = (lba, compare, write, fua);
        Err(BlockError::Unsupported("compare and write"))
    }

    /// True when [`BlockStore::compare_and_write`] may run atomically here — for every
    /// range, or (a volume over several back-ends) for some — so that callers can skip
    /// the attempt when it is false. A hint only: callers must still fall back on
    /// `Unsupported`. It may change over the store's life (a remote array that turns
    /// out to refuse the command, a volume remapped onto other back-ends). Wrappers
    /// that forward `compare_and_write` must forward this too.
    fn supports_compare_and_write(&self) -> bool {
        false
    }

    /// True when plain reads and writes (no FUA) complete in microseconds without
    /// sleeping on a network or a lock held across I/O — e.g. page-cache-backed files
    /// and RAM. The fabric may then run them inline on its event loop instead of handing
    /// them to a thread pool (3x the IOPS at queue depth 32). Remote stores, whose
    /// methods block on the network, must keep the default `false`.
    fn inline_ok(&self) -> bool {
        false
    }

    /// True when [`BlockStore::read_async`] and [`BlockStore::write_async`] can start
    /// the I/O (return `Some`), at least for some requests, so that the fabric tries
    /// to run plain reads and writes as futures on its event loop instead of on a
    /// blocking thread: remote stores, whose I/O waits on the network, and volumes
    /// with extents on them. A hint only: callers fall back when the methods return
    /// `None`.
    fn async_ok(&self) -> bool {
        false
    }

    /// Start reading `blocks` blocks at `lba` without blocking the calling thread;
    /// the future yields the data (`blocks * block_size` bytes). `None` when the store
    /// has no asynchronous path for this request now (the default; a volume whose
    /// range is held by a remap or spans a mirrored extent): nothing was done, and the
    /// caller uses [`BlockStore::read`] on a thread that may block. Range errors come
    /// back through the future.
    fn read_async(self: Arc<Self>, lba: u64, blocks: u32) -> Option<IoFuture<Vec<u8>>> {
        let _ = (lba, blocks);
        None
    }

    /// Start writing `data` at `lba` (`fua` as for [`BlockStore::write`]) without
    /// blocking the calling thread. `None` as for [`BlockStore::read_async`]: nothing
    /// was done, and the caller uses [`BlockStore::write`] instead.
    fn write_async(self: Arc<Self>, lba: u64, data: Bytes, fua: bool) -> Option<IoFuture<()>> {
        let _ = (lba, data, fua);
        None
    }

    /// Check that `blocks` blocks at `lba` lie inside the store (overflow-safe).
    fn check_range(&self, lba: u64, blocks: u64) -> Result<(), BlockError> {
        match lba.checked_add(blocks) {
            Some(end) if end <= self.num_blocks() => Ok(()),
            _ => Err(BlockError::OutOfRange {
                lba,
                blocks,
                capacity: self.num_blocks(),
            }),
        }
    }

    /// Check a buffer length and range; returns the number of blocks it covers.
    fn check_buf(&self, lba: u64, len: usize) -> Result<u64, BlockError> {
        let bs = self.block_size();
        if !len.is_multiple_of(bs as usize) {
            return Err(BlockError::Misaligned {
                len,
                block_size: bs,
            });
        }
        let blocks = (len / bs as usize) as u64;
        self.check_range(lba, blocks)?;
        Ok(blocks)
    }
}
