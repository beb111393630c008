//! [`forward_to!`](crate::forward_to): the methods of a [`BlockStore`](crate::BlockStore)
//! that wraps another and only changes some of them.

/// Implements the named [`BlockStore`](crate::BlockStore) methods by calling the same
/// method on a field, inside an `impl BlockStore for …` block:
///
/// ```
/// use blockdev::{BlockError, BlockStore, MemStore};
///
/// /// A store that refuses every write.
/// struct NoWrites(MemStore);
///
/// impl BlockStore for NoWrites {
///     blockdev::forward_to!(0: block_size, num_blocks, capabilities, read, flush);
///     fn write(&self, _: u64, _: &[u8], _: bool) -> Result<(), BlockError> {
///         Err(BlockError::ReadOnly)
///     }
/// }
///
/// let s = NoWrites(MemStore::new(512, 8));
/// assert_eq!(s.num_blocks(), 8);
/// assert!(s.write(0, &[0; 512], false).is_err());
/// ```
///
/// Forwards `block_size`, `num_blocks`, `capabilities`, `read`, `write`, `flush`,
/// `unmap` and `lba_status`; the others keep their defaults unless written out.
#[macro_export]
macro_rules! forward_to {
    ($field:tt: $($method:ident),+ $(,)?) => {
        $( $crate::forward_to!(@one $field $method); )+
    };
    (@one $f:tt block_size) => {
        fn block_size(&self) -> u32 {
            self.$f.block_size()
        }
    };
    (@one $f:tt num_blocks) => {
        fn num_blocks(&self) -> u64 {
            self.$f.num_blocks()
        }
    };
    (@one $f:tt capabilities) => {
        fn capabilities(&self) -> $crate::Capabilities {
            self.$f.capabilities()
        }
    };
    (@one $f:tt read) => {
        fn read(&self, lba: u64, buf: &mut [u8]) -> Result<(), $crate::BlockError> {
            self.$f.read(lba, buf)
        }
    };
    (@one $f:tt write) => {
        fn write(&self, lba: u64, data: &[u8], fua: bool) -> Result<(), $crate::BlockError> {
            self.$f.write(lba, data, fua)
        }
    };
    (@one $f:tt flush) => {
        fn flush(&self) -> Result<(), $crate::BlockError> {
            self.$f.flush()
        }
    };
    (@one $f:tt unmap) => {
        fn unmap(&self, lba: u64, blocks: u64) -> Result<(), $crate::BlockError> {
            self.$f.unmap(lba, blocks)
        }
    };
    (@one $f:tt lba_status) => {
        fn lba_status(&self, lba: u64) -> Result<$crate::LbaStatus, $crate::BlockError> {
            self.$f.lba_status(lba)
        }
    };
}
