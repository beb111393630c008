//! What the bench tools (`loadgen`, `relay`) share.

/// A tokio runtime with `threads` worker threads; 1 (or 0) gives a single-threaded
/// runtime, like iscsi-perf's event loop.
pub fn runtime(threads: usize) -> std::io::Result<tokio::runtime::Runtime> {
    if threads <= 1 {
        tokio::runtime::Builder::new_current_thread()
    } else {
        let mut b = tokio::runtime::Builder::new_multi_thread();
        b.worker_threads(threads);
        b
    }
    .enable_all()
    .build()
}
