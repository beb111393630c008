//! File and block-device back-end: positional I/O (`pread`/`pwrite`) on one shared file
//! descriptor, so concurrent commands never wait on each other; `fdatasync` for FUA and
//! SYNCHRONIZE CACHE; hole punching and SEEK_HOLE/SEEK_DATA for sparse files.

use std::fs::{File, OpenOptions};
use std::io::{self, Seek, SeekFrom};
use std::os::unix::fs::{FileExt, FileTypeExt};
use std::path::{Path, PathBuf};

use rustix::fs::{fadvise, fallocate, Advice, FallocateFlags};

use crate::{BlockError, BlockStore, Capabilities, LbaStatus};

/// How to open a [`FileStore`].
#[derive(Debug, Clone)]
pub struct FileStoreOptions {
    /// Logical block size: 512 or 4096.
    pub block_size: u32,
    /// Create a sparse file of this many bytes if the path does not exist.
    pub create_size: Option<u64>,
    /// Open read-only.
    pub read_only: bool,
    /// Let the kernel read ahead on this file. Off by default: the store is told
    /// the access is random (`POSIX_FADV_RANDOM`). Hosts read ahead themselves, and
    /// read-ahead fills the page cache with large folios, into which every later 4K
    /// write costs time in proportion to the folio's size (ext4 on Linux 6.16 and
    /// later walks the folio's block buffers under the file's lock): 4K random
    /// writes measured at half the rate. Reads still read what they ask for.
    pub readahead: bool,
}

impl Default for FileStoreOptions {
    fn default() -> Self {
        FileStoreOptions {
            block_size: 512,
            create_size: None,
            read_only: false,
            readahead: false,
        }
    }
}

/// A logical unit stored in a regular file (possibly sparse) or a block device.
#[derive(Debug)]
pub struct FileStore {
    file: File,
    path: PathBuf,
    block_size: u32,
    blocks: u64,
    is_regular: bool,
    read_only: bool,
}

impl FileStore {
    /// Open (or create, see [`FileStoreOptions::create_size`]) a store. Fails clearly
    /// when the block size is not 512 or 4096, or the size is not a multiple of it.
    pub fn open(path: impl AsRef<Path>, opts: &FileStoreOptions) -> io::Result<FileStore> {
        let path = path.as_ref();
        if opts.block_size != 512 && opts.block_size != 4096 {
            return Err(invalid(format!(
                "{}: block size {} is not supported (use 512 or 4096)",
                path.display(),
                opts.block_size
            )));
        }
        if let Some(size) = opts.create_size {
            if !path.exists() {
                if size == 0 || !size.is_multiple_of(u64::from(opts.block_size)) {
                    return Err(invalid(format!(
                        "{}: size {size} is not a positive multiple of the {}-byte block size",
                        path.display(),
                        opts.block_size
                    )));
                }
                if let Some(dir) = path.parent() {
                    if !dir.as_os_str().is_empty() {
                        std::fs::create_dir_all(dir)?;
                    }
                }
                let f = OpenOptions::new().write(true).create_new(true).open(path)?;
                f.set_len(size)?;
            }
        }
        let mut file = OpenOptions::new()
            .read(true)
            .write(!opts.read_only)
            .open(path)
            .map_err(|e| io::Error::new(e.kind(), format!("{}: {e}", path.display())))?;
        let meta = file.metadata()?;
        let is_regular = meta.file_type().is_file();
        if !is_regular && !meta.file_type().is_block_device() {
            return Err(invalid(format!(
                "{}: not a regular file or block device",
                path.display()
            )));
        }
        if !opts.readahead {
            // Advice only: where the kernel or file system ignores it, nothing changes.
            let _ = fadvise(&file, 0, None, Advice::Random);
        }
        let size = file.seek(SeekFrom::End(0))?;
        let bs = u64::from(opts.block_size);
        if size == 0 || !size.is_multiple_of(bs) {
            return Err(invalid(format!(
                "{}: size {size} bytes is not a positive multiple of the {bs}-byte block size; \
                 resize it (e.g. `truncate -s 1G {}`) or pick another block size",
                path.display(),
                path.display()
            )));
        }
        Ok(FileStore {
            file,
            path: path.to_path_buf(),
            block_size: opts.block_size,
            blocks: size / bs,
            is_regular,
            read_only: opts.read_only,
        })
    }

    /// The path this store was opened from.
    pub fn path(&self) -> &Path {
        &self.path
    }

    fn offset(&self, lba: u64) -> u64 {
        lba * u64::from(self.block_size)
    }
}

fn invalid(msg: String) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidInput, msg)
}

impl BlockStore for FileStore {
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
            unmap: self.is_regular && !self.read_only,
            lba_status: self.is_regular,
            read_only: self.read_only,
            fua: true,
        }
    }

    fn read(&self, lba: u64, buf: &mut [u8]) -> Result<(), BlockError> {
        self.check_buf(lba, buf.len())?;
        self.file.read_exact_at(buf, self.offset(lba))?;
        Ok(())
    }

    fn write(&self, lba: u64, data: &[u8], fua: bool) -> Result<(), BlockError> {
        if self.read_only {
            return Err(BlockError::ReadOnly);
        }
        self.check_buf(lba, data.len())?;
        self.file.write_all_at(data, self.offset(lba))?;
        if fua {
            // fdatasync makes this write (and every earlier one) durable. A range sync
            // would be cheaper, but sync_file_range does not flush the disk cache.
            self.file.sync_data()?;
        }
        Ok(())
    }

    fn flush(&self) -> Result<(), BlockError> {
        self.file.sync_data()?;
        Ok(())
    }

    fn unmap(&self, lba: u64, blocks: u64) -> Result<(), BlockError> {
        if self.read_only {
            return Err(BlockError::ReadOnly);
        }
        if !self.is_regular {
            return Err(BlockError::Unsupported("unmap on a block device"));
        }
        self.check_range(lba, blocks)?;
        if blocks == 0 {
            return Ok(());
        }
        fallocate(
            &self.file,
            FallocateFlags::PUNCH_HOLE | FallocateFlags::KEEP_SIZE,
            self.offset(lba),
            blocks * u64::from(self.block_size),
        )
        .map_err(io::Error::from)?;
        Ok(())
    }

    fn lba_status(&self, lba: u64) -> Result<LbaStatus, BlockError> {
        self.check_range(lba, 1)?;
        if !self.is_regular {
            return Err(BlockError::Unsupported("lba status on a block device"));
        }
        let bs = u64::from(self.block_size);
        let end = self.blocks * bs;
        let off = self.offset(lba);
        // Where does the data at or after `off` start? ENXIO means only a hole follows.
        let data = match rustix::fs::seek(&self.file, rustix::fs::SeekFrom::Data(off)) {
            Ok(d) => d.min(end),
            Err(rustix::io::Errno::NXIO) => end,
            Err(e) => return Err(io::Error::from(e).into()),
        };
        if data > off {
            // A hole from `off` to `data`; only whole blocks count as unmapped.
            let hole_blocks = (data - off) / bs;
            if hole_blocks > 0 {
                return Ok(LbaStatus {
                    mapped: false,
                    blocks: hole_blocks,
                });
            }
        }
        let hole = match rustix::fs::seek(&self.file, rustix::fs::SeekFrom::Hole(off)) {
            Ok(h) => h.min(end),
            Err(e) => return Err(io::Error::from(e).into()),
        };
        let mapped_blocks = hole.saturating_sub(off).div_ceil(bs).max(1);
        Ok(LbaStatus {
            mapped: true,
            blocks: mapped_blocks.min(self.blocks - lba),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn store(size: u64, bs: u32) -> (tempfile::TempDir, FileStore) {
        let dir = tempfile::tempdir().unwrap();
        let s = FileStore::open(
            dir.path().join("lu.img"),
            &FileStoreOptions {
                block_size: bs,
                create_size: Some(size),
                ..Default::default()
            },
        )
        .unwrap();
        (dir, s)
    }

    #[test]
    fn write_read_roundtrip_512_and_4096() {
        for bs in [512u32, 4096] {
            let (_d, s) = store(1 << 20, bs);
            assert_eq!(s.num_blocks(), (1 << 20) / u64::from(bs));
            let data: Vec<u8> = (0..bs as usize * 3).map(|i| (i % 251) as u8).collect();
            s.write(7, &data, true).unwrap();
            let mut back = vec![0u8; data.len()];
            s.read(7, &mut back).unwrap();
            assert_eq!(back, data);
        }
    }

    #[test]
    fn rejects_out_of_range_and_overflow() {
        let (_d, s) = store(8192, 512);
        let mut buf = vec![0u8; 1024];
        assert!(matches!(
            s.read(15, &mut buf),
            Err(BlockError::OutOfRange { .. })
        ));
        assert!(matches!(
            s.check_range(u64::MAX, 2),
            Err(BlockError::OutOfRange { .. })
        ));
        assert!(matches!(
            s.write(0, &[0u8; 100], false),
            Err(BlockError::Misaligned { .. })
        ));
    }

    #[test]
    fn rejects_size_not_multiple_of_block_size() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("odd.img");
        std::fs::write(&p, vec![0u8; 1000]).unwrap();
        let err = FileStore::open(&p, &FileStoreOptions::default()).unwrap_err();
        assert!(err.to_string().contains("not a positive multiple"), "{err}");
        let err = FileStore::open(
            &p,
            &FileStoreOptions {
                block_size: 1024,
                ..Default::default()
            },
        )
        .unwrap_err();
        assert!(err.to_string().contains("block size 1024"), "{err}");
    }

    #[test]
    fn unmap_punches_hole_that_reads_zero_and_reports_unmapped() {
        let (_d, s) = store(4 << 20, 4096);
        let data = vec![0xabu8; 4096 * 256];
        s.write(0, &data, false).unwrap();
        assert!(s.lba_status(0).unwrap().mapped);
        s.unmap(16, 32).unwrap();
        let mut back = vec![1u8; 4096];
        s.read(20, &mut back).unwrap();
        assert!(back.iter().all(|&b| b == 0));
        let st = s.lba_status(16).unwrap();
        assert!(!st.mapped, "{st:?}");
        assert_eq!(st.blocks, 32);
        // The tail past the written area is a hole as well.
        let tail = s.lba_status(300).unwrap();
        assert!(!tail.mapped);
        assert_eq!(tail.blocks, s.num_blocks() - 300);
    }

    #[test]
    fn data_survives_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("lu.img");
        let opts = FileStoreOptions {
            block_size: 512,
            create_size: Some(1 << 20),
            ..Default::default()
        };
        {
            let s = FileStore::open(&p, &opts).unwrap();
            s.write(100, &[0x5a; 512], true).unwrap();
            s.flush().unwrap();
        }
        let s = FileStore::open(&p, &opts).unwrap();
        let mut b = [0u8; 512];
        s.read(100, &mut b).unwrap();
        assert_eq!(b, [0x5a; 512]);
    }

    #[test]
    fn read_only_refuses_writes() {
        let (d, s) = store(8192, 512);
        drop(s);
        let s = FileStore::open(
            d.path().join("lu.img"),
            &FileStoreOptions {
                read_only: true,
                ..Default::default()
            },
        )
        .unwrap();
        assert!(matches!(
            s.write(0, &[0; 512], false),
            Err(BlockError::ReadOnly)
        ));
        assert!(s.capabilities().read_only);
    }
}
