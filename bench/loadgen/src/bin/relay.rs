//! `relay`: a byte-for-byte TCP relay, the cheapest thing that can sit in an iSCSI
//! path. It parses nothing: each accepted connection is joined to a new connection to
//! the upstream portal and bytes are copied both ways on one thread (`--threads 1`,
//! the default) or on a thread per CPU.
//!
//! `bench/run.sh` measures the array through it to find the floor under any in-path
//! virtualizer on the machine: a virtual node receives and sends every byte the relay
//! does, and also parses, maps and re-issues each command.
//!
//! ```text
//! relay --listen 127.0.0.1:23264 --upstream 127.0.0.1:23262
//! ```

use std::net::SocketAddr;

use clap::Parser;
use tokio::net::{TcpListener, TcpStream};

#[derive(Debug, Parser)]
#[command(about = "Byte-for-byte TCP relay (the floor under an in-path iSCSI virtualizer)")]
struct Args {
    /// Address to accept connections on.
    #[arg(long)]
    listen: SocketAddr,
    /// Portal every accepted connection is relayed to.
    #[arg(long)]
    upstream: SocketAddr,
    /// Event-loop threads.
    #[arg(long, default_value_t = 1)]
    threads: usize,
    /// No event loop: two threads per connection, one per direction, each in a
    /// blocking read and write loop.
    #[arg(long)]
    blocking: bool,
    /// No sleeping: one thread per connection polls both sockets without blocking,
    /// forever (costs a CPU per connection; shows what wake-ups cost).
    #[arg(long)]
    spin: bool,
    /// With --spin: sleep in poll(2) once nothing has arrived for this many
    /// microseconds (0: never sleep).
    #[arg(long, default_value_t = 0)]
    spin_us: u64,
}

fn main() {
    let args = Args::parse();
    if args.blocking {
        if let Err(e) = serve_blocking(&args) {
            eprintln!("relay: {e}");
            std::process::exit(1);
        }
        return;
    }
    let rt = match loadgen::runtime(args.threads) {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("relay: cannot start the runtime: {e}");
            std::process::exit(1);
        }
    };
    if let Err(e) = rt.block_on(serve(&args)) {
        eprintln!("relay: {e}");
        std::process::exit(1);
    }
}

async fn serve(args: &Args) -> std::io::Result<()> {
    let listener = TcpListener::bind(args.listen).await?;
    loop {
        let (mut down, _) = listener.accept().await?;
        let upstream = args.upstream;
        tokio::spawn(async move {
            let mut up = match TcpStream::connect(upstream).await {
                Ok(s) => s,
                Err(e) => {
                    eprintln!("relay: cannot connect to {upstream}: {e}");
                    return;
                }
            };
            let _ = down.set_nodelay(true);
            let _ = up.set_nodelay(true);
            let _ =
                tokio::io::copy_bidirectional_with_sizes(&mut down, &mut up, 256 << 10, 256 << 10)
                    .await;
        });
    }
}

fn serve_blocking(args: &Args) -> std::io::Result<()> {
    let listener = std::net::TcpListener::bind(args.listen)?;
    loop {
        let (down, _) = listener.accept()?;
        let up = match std::net::TcpStream::connect(args.upstream) {
            Ok(s) => s,
            Err(e) => {
                eprintln!("relay: cannot connect to {}: {e}", args.upstream);
                continue;
            }
        };
        let _ = down.set_nodelay(true);
        let _ = up.set_nodelay(true);
        if args.spin {
            down.set_nonblocking(true)?;
            up.set_nonblocking(true)?;
            let budget = std::time::Duration::from_micros(args.spin_us);
            std::thread::spawn(move || spin(down, up, budget));
            continue;
        }
        let (down2, up2) = (down.try_clone()?, up.try_clone()?);
        std::thread::spawn(move || pump(down, up));
        std::thread::spawn(move || pump(up2, down2));
    }
}

/// Copy `from` to `to` until either side closes, then shut both down.
fn pump(mut from: std::net::TcpStream, mut to: std::net::TcpStream) {
    use std::io::{Read, Write};
    let mut buf = vec![0u8; 256 << 10];
    while let Ok(n) = from.read(&mut buf) {
        if n == 0 || to.write_all(&buf[..n]).is_err() {
            break;
        }
    }
    let _ = from.shutdown(std::net::Shutdown::Both);
    let _ = to.shutdown(std::net::Shutdown::Both);
}

/// Copy both ways between two non-blocking sockets, never sleeping.
/// After `budget` without data (if not zero) it sleeps in poll(2) until either
/// socket is readable.
fn spin(mut a: std::net::TcpStream, mut b: std::net::TcpStream, budget: std::time::Duration) {
    use std::os::fd::AsRawFd;
    let mut ab = vec![0u8; 256 << 10];
    let mut ba = vec![0u8; 256 << 10];
    let mut last = std::time::Instant::now();
    loop {
        let (Some(x), Some(y)) = (step(&mut a, &mut b, &mut ab), step(&mut b, &mut a, &mut ba))
        else {
            return;
        };
        if x || y {
            last = std::time::Instant::now();
        } else if !budget.is_zero() && last.elapsed() > budget {
            let mut fds = [a.as_raw_fd(), b.as_raw_fd()].map(|fd| libc::pollfd {
                fd,
                events: libc::POLLIN,
                revents: 0,
            });
            // SAFETY: `fds` is a valid array of two pollfd for the call's duration.
            unsafe { libc::poll(fds.as_mut_ptr(), 2, -1) };
            last = std::time::Instant::now();
        }
    }
}

/// Move what `from` has to `to`: whether anything moved; `None` once either side is
/// gone.
fn step(
    from: &mut std::net::TcpStream,
    to: &mut std::net::TcpStream,
    buf: &mut [u8],
) -> Option<bool> {
    match std::io::Read::read(from, buf) {
        Ok(0) => None,
        Ok(n) => write_all_spinning(to, &buf[..n]).is_ok().then_some(true),
        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => Some(false),
        Err(_) => None,
    }
}

fn write_all_spinning(to: &mut std::net::TcpStream, mut data: &[u8]) -> std::io::Result<()> {
    while !data.is_empty() {
        match std::io::Write::write(to, data) {
            Ok(0) => return Err(std::io::ErrorKind::WriteZero.into()),
            Ok(n) => data = &data[n..],
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => std::hint::spin_loop(),
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::io::{Read, Write};
    use std::net::{TcpListener, TcpStream};

    /// A connected pair of loopback sockets.
    fn pair() -> (TcpStream, TcpStream) {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let a = TcpStream::connect(l.local_addr().unwrap()).unwrap();
        let (b, _) = l.accept().unwrap();
        (a, b)
    }

    /// Bytes written at one end of the relay come out of the other, in order, whole,
    /// in both directions, with every mode.
    #[test]
    fn relays_every_byte_both_ways() {
        for spin in [false, true] {
            let (mut host, relay_down) = pair();
            let (relay_up, mut array) = pair();
            if spin {
                relay_down.set_nonblocking(true).unwrap();
                relay_up.set_nonblocking(true).unwrap();
                std::thread::spawn(move || {
                    super::spin(relay_down, relay_up, std::time::Duration::ZERO)
                });
            } else {
                let (d2, u2) = (
                    relay_down.try_clone().unwrap(),
                    relay_up.try_clone().unwrap(),
                );
                std::thread::spawn(move || super::pump(relay_down, relay_up));
                std::thread::spawn(move || super::pump(u2, d2));
            }
            let out: Vec<u8> = (0..1_000_000u32).map(|i| (i * 7 + i / 255) as u8).collect();
            let sent = out.clone();
            let writer = std::thread::spawn(move || host.write_all(&sent).map(|_| host));
            let mut got = vec![0u8; out.len()];
            array.read_exact(&mut got).unwrap();
            assert!(got == out, "spin = {spin}: bytes changed on the way up");
            let mut host = writer.join().unwrap().unwrap();
            array.write_all(b"answer").unwrap();
            let mut back = [0u8; 6];
            host.read_exact(&mut back).unwrap();
            assert_eq!(&back, b"answer", "spin = {spin}");
            // The array closing ends the relay: the host reads end of stream.
            drop(array);
            assert_eq!(host.read(&mut back).unwrap(), 0, "spin = {spin}");
        }
    }
}
