//! Plain READ and WRITE as futures, for stores whose I/O waits on the network
//! ([`blockdev::BlockStore::async_ok`]: remote LUs and volumes over them).
//!
//! On the blocking path every such command parks a thread until the back-end answers:
//! a hand-off to the pool, a thread wake-up when the answer comes, and one parked
//! thread per command in flight. Here the fabric gets a future instead and runs it on
//! its event loop ([`LunMap::start`]).
//!
//! The command passes exactly the checks of the blocking path first — unit attention,
//! CDB, ALUA, reservations ([`LogicalUnit::admit`]), then transfer length, range and
//! write protection — and enters the lock-free path of the LU's range locks, held by
//! the future until the I/O completes, so that COMPARE AND WRITE stays atomic with
//! respect to it. Whenever the command cannot start as a future after those checks (an
//! atomic command is active on the LU, or the store declines this request: a volume
//! range held by a remap, a mirrored extent, a range across extents) it is handed back
//! as [`Started::Blocking`]: a closure that finishes it on a thread that may block,
//! without repeating the checks (a unit attention must not be reported twice).

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use blockdev::IoFuture;
use bytes::Bytes;

use crate::cdb::{check_range, Cdb};
use crate::lu::{Admitted, LogicalUnit, Origin};
use crate::sense::{IoKind, Sense};
use crate::target::LunMap;
use crate::write_drain::WriteTicket;
use crate::{sbc, Request, Response};

/// A command's response, computed on the fabric's event loop.
pub type ResponseFuture = Pin<Box<dyn Future<Output = Response> + Send + 'static>>;

/// What [`LunMap::start`] did with a command.
pub enum Started {
    /// The command has no asynchronous path: run [`LunMap::execute`] (on a thread
    /// that may block). Nothing was done.
    NotAsync,
    /// Finished without I/O: a unit attention, a reservation conflict, a bad field,
    /// an out-of-range LBA, zero blocks.
    Done(Response),
    /// Running: the future yields the response and never blocks its thread.
    Running(ResponseFuture),
    /// Admitted, but it must finish on a thread that may block: call it there.
    Blocking(Box<dyn FnOnce() -> Response + Send + 'static>),
}

impl std::fmt::Debug for Started {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Started::NotAsync => "NotAsync",
            Started::Done(_) => "Done",
            Started::Running(_) => "Running",
            Started::Blocking(_) => "Blocking",
        })
    }
}

/// READ(10), READ(16), WRITE(10) and WRITE(16): the commands that may run as futures.
fn plain_read_or_write(cdb: &[u8]) -> bool {
    matches!(
        (cdb.first(), cdb.len()),
        (Some(0x28 | 0x2a), 10..) | (Some(0x88 | 0x8a), 16..)
    )
}

impl LunMap {
    /// Start a command as a future when its LU's store has an asynchronous path and
    /// the command is a plain READ or WRITE; `data` holds the data-out that
    /// `req.data_out` borrows (written without a copy). See the module documentation
    /// for what each [`Started`] asks of the caller.
    pub fn start(&self, req: &Request<'_>, data: &Bytes) -> Started {
        let Some(lu) = self.get(req.lun) else {
            return Started::NotAsync;
        };
        if !plain_read_or_write(req.cdb) || !lu.store().async_ok() {
            return Started::NotAsync;
        }
        let origin = Origin::of(req);
        let admitted = match lu.admit(req) {
            Ok(a) => a,
            Err(resp) => return Started::Done(lu.finish(origin, resp)),
        };
        start_admitted(lu, origin, admitted, data)
    }
}

fn start_admitted(lu: &Arc<LogicalUnit>, origin: Origin, a: Admitted, data: &Bytes) -> Started {
    let data_out_len = a.data_out_len;
    let respond = move |lu: &LogicalUnit, r: Result<Vec<u8>, Sense>| {
        let mut resp = match r {
            Ok(d) => Response::good(d),
            Err(sense) => Response::check_condition(sense),
        };
        resp.data_out_len = data_out_len;
        lu.finish(origin, resp)
    };
    // A write's ticket (`write_drain.rs`) goes with the command to wherever it
    // finishes: into the future, or into the closure for the blocking path.
    let mut ticket = a.ticket;
    let blocking = |lu: &Arc<LogicalUnit>, cdb: Cdb, data: Bytes, ticket: Option<WriteTicket>| {
        let lu = lu.clone();
        Started::Blocking(Box::new(move || {
            let _ticket = ticket;
            let r = {
                let _range = crate::range_lock::plain_range(&cdb, lu.store().num_blocks())
                    .map(|(lba, blocks)| lu.lock_shared(lba, blocks));
                sbc::execute(&lu, &cdb, &data)
            };
            respond(&lu, r)
        }))
    };
    let store = lu.store();
    match a.cdb {
        Cdb::Read {
            lba,
            blocks,
            cdb_len,
            ..
        } => {
            let checked = sbc::check_transfer(lu, blocks, cdb_len)
                .and_then(|()| check_range(lba, u64::from(blocks), store.num_blocks()));
            if let Err(sense) = checked {
                return Started::Done(respond(lu, Err(sense)));
            }
            if blocks == 0 {
                return Started::Done(respond(lu, Ok(Vec::new())));
            }
            let start = || store.clone().read_async(lba, blocks);
            match under_range(lu, start, IoKind::Read, |d| d, respond, &mut ticket) {
                Some(running) => running,
                None => blocking(lu, a.cdb, data.clone(), ticket),
            }
        }
        Cdb::Write {
            lba,
            blocks,
            fua,
            cdb_len,
            ..
        } => {
            let checked = lu
                .check_writable()
                .and_then(|()| sbc::check_transfer(lu, blocks, cdb_len))
                .and_then(|()| check_range(lba, u64::from(blocks), store.num_blocks()));
            if let Err(sense) = checked {
                return Started::Done(respond(lu, Err(sense)));
            }
            // The whole blocks of data-out that arrived, up to what the CDB asked for.
            let have = sbc::received(store.as_ref(), blocks, data).len();
            if have == 0 {
                return Started::Done(respond(lu, Ok(Vec::new())));
            }
            let fua = fua || !lu.mode().wce;
            let start = || store.clone().write_async(lba, data.slice(..have), fua);
            match under_range(
                lu,
                start,
                IoKind::Write,
                |()| Vec::new(),
                respond,
                &mut ticket,
            ) {
                Some(running) => running,
                None => blocking(lu, a.cdb, data.clone(), ticket),
            }
        }
        // Not reached: `plain_read_or_write` admits only these opcodes, and they
        // parse only to `Read` and `Write`. Finished the ordinary way regardless.
        _ => blocking(lu, a.cdb, data.clone(), ticket),
    }
}

/// Start the store's I/O on the lock-free path of the LU's range locks and hold it
/// there until the I/O completes. `None`, with nothing done, when an atomic command
/// is active or the store declines: the command then takes the blocking path. A
/// started future holds the write's `ticket` until the I/O completes.
fn under_range<T: Send + 'static>(
    lu: &Arc<LogicalUnit>,
    start: impl FnOnce() -> Option<IoFuture<T>>,
    kind: IoKind,
    data_in: fn(T) -> Vec<u8>,
    respond: impl FnOnce(&LogicalUnit, Result<Vec<u8>, Sense>) -> Response + Send + 'static,
    ticket: &mut Option<WriteTicket>,
) -> Option<Started> {
    let range = lu.try_fast()?;
    let io = start()?;
    let lu = lu.clone();
    let ticket = ticket.take();
    Some(Started::Running(Box::pin(async move {
        let r = io.await;
        drop(range);
        drop(ticket);
        let r = r
            .map(data_in)
            .map_err(|e| Sense::from_block_error(&e, kind));
        respond(&lu, r)
    })))
}
