//! In-memory back-end for tests: blocks live in RAM, sharded under small locks so that
//! concurrent I/O to different regions does not contend. Unwritten blocks read as zero.

use parking_lot::RwLock;

use crate::{BlockError, BlockStore, Capabilities, LbaStatus};

const SHARD_BLOCKS: u64 = 256;

/// A RAM-backed block store.
pub struct MemStore {
    block_size: u32,
    blocks: u64,
    shards: Vec<RwLock<Option<Box<[u8]>>>>,
}

impl MemStore {
    /// A zero-filled store of `blocks` blocks of `block_size` bytes.
    pub fn new(block_size: u32, blocks: u64) -> MemStore {
        let n = blocks.div_ceil(SHARD_BLOCKS) as usize;
        MemStore {
            block_size,
            blocks,
            shards: (0..n).map(|_| RwLock::new(None)).collect(),
        }
    }

    fn shard_bytes(&self) -> usize {
        SHARD_BLOCKS as usize * self.block_size as usize
    }

    /// Visit each (shard index, byte offset in shard, range in the caller's buffer).
    fn for_each_piece(
        &self,
        lba: u64,
        len: usize,
        mut f: impl FnMut(usize, usize, std::ops::Range<usize>),
    ) {
        let bs = self.block_size as usize;
        let mut done = 0usize;
        let mut cur = lba;
        while done < len {
            let shard = (cur / SHARD_BLOCKS) as usize;
            let in_shard = (cur % SHARD_BLOCKS) as usize * bs;
            let n = (self.shard_bytes() - in_shard).min(len - done);
            f(shard, in_shard, done..done + n);
            done += n;
            cur += (n / bs) as u64;
        }
    }
}

impl BlockStore for MemStore {
    fn block_size(&self) -> u32 {
        self.block_size
    }
    fn num_blocks(&self) -> u64 {
        self.blocks
    }
    fn inline_ok(&self) -> bool {
        true
    }

    fn capabilities(&self) -> Capabilities {
        Capabilities {
            unmap: true,
            lba_status: true,
            read_only: false,
            fua: true,
        }
    }
    fn read(&self, lba: u64, buf: &mut [u8]) -> Result<(), BlockError> {
        self.check_buf(lba, buf.len())?;
        self.for_each_piece(lba, buf.len(), |shard, off, r| {
            let g = self.shards[shard].read();
            match g.as_ref() {
                Some(data) => buf[r.clone()].copy_from_slice(&data[off..off + r.len()]),
                None => buf[r].fill(0),
            }
        });
        Ok(())
    }
    fn write(&self, lba: u64, data: &[u8], _fua: bool) -> Result<(), BlockError> {
        self.check_buf(lba, data.len())?;
        let sb = self.shard_bytes();
        self.for_each_piece(lba, data.len(), |shard, off, r| {
            let mut g = self.shards[shard].write();
            let mem = g.get_or_insert_with(|| vec![0u8; sb].into_boxed_slice());
            mem[off..off + r.len()].copy_from_slice(&data[r]);
        });
        Ok(())
    }
    fn flush(&self) -> Result<(), BlockError> {
        Ok(())
    }
    fn unmap(&self, lba: u64, blocks: u64) -> Result<(), BlockError> {
        self.check_range(lba, blocks)?;
        let len = blocks as usize * self.block_size as usize;
        self.for_each_piece(lba, len, |shard, off, r| {
            let mut g = self.shards[shard].write();
            if let Some(mem) = g.as_mut() {
                mem[off..off + r.len()].fill(0);
                if mem.iter().all(|&b| b == 0) {
                    *g = None;
                }
            }
        });
        Ok(())
    }
    fn lba_status(&self, lba: u64) -> Result<LbaStatus, BlockError> {
        self.check_range(lba, 1)?;
        let first = self.shards[(lba / SHARD_BLOCKS) as usize].read().is_some();
        let mut cur = lba;
        while cur < self.blocks {
            let shard = (cur / SHARD_BLOCKS) as usize;
            if self.shards[shard].read().is_some() != first {
                break;
            }
            cur = (shard as u64 + 1) * SHARD_BLOCKS;
        }
        Ok(LbaStatus {
            mapped: first,
            blocks: cur.min(self.blocks) - lba,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roundtrip_across_shards() {
        let s = MemStore::new(512, 2000);
        let data: Vec<u8> = (0..512 * 600).map(|i| (i % 253) as u8).collect();
        s.write(100, &data, false).unwrap();
        let mut back = vec![0u8; data.len()];
        s.read(100, &mut back).unwrap();
        assert_eq!(back, data);
        let mut z = vec![1u8; 512];
        s.read(1999, &mut z).unwrap();
        assert!(z.iter().all(|&b| b == 0));
        assert!(s.read(1999, &mut [0u8; 1024]).is_err());
    }

    #[test]
    fn unmap_zeroes() {
        let s = MemStore::new(512, 1024);
        s.write(0, &vec![7u8; 512 * 1024], false).unwrap();
        s.unmap(256, 256).unwrap();
        let mut b = vec![1u8; 512];
        s.read(300, &mut b).unwrap();
        assert!(b.iter().all(|&x| x == 0));
        let st = s.lba_status(256).unwrap();
        assert!(!st.mapped);
        assert_eq!(st.blocks, 256);
        assert!(s.lba_status(0).unwrap().mapped);
    }
}
