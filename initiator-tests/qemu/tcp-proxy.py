#!/usr/bin/env python3
"""Loopback TCP forwarder for path A of the QEMU multipath test.

    tcp-proxy.py LISTEN_PORT TARGET_PORT

Listens on 127.0.0.1:LISTEN_PORT and forwards every connection to
127.0.0.1:TARGET_PORT (the switchyard portal). run.sh kills this process (SIGKILL)
to fail path A: every iSCSI connection through it is cut at once and new ones are
refused, as when a cable or a switch port dies; starting it again restores the path.
Only loopback addresses are ever used.
"""
import socket
import sys
import threading


def pump(src, dst):
    try:
        while True:
            b = src.recv(262144)
            if not b:
                break
            dst.sendall(b)
    except OSError:
        pass
    finally:
        for s in (src, dst):
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass


def main():
    listen_port, target_port = int(sys.argv[1]), int(sys.argv[2])
    srv = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    srv.bind(("127.0.0.1", listen_port))
    srv.listen(16)
    print(f"tcp-proxy: 127.0.0.1:{listen_port} -> 127.0.0.1:{target_port}", flush=True)
    while True:
        c, _ = srv.accept()
        try:
            u = socket.create_connection(("127.0.0.1", target_port), timeout=10)
            u.settimeout(None)
        except OSError:
            c.close()
            continue
        for s in (c, u):
            s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        threading.Thread(target=pump, args=(c, u), daemon=True).start()
        threading.Thread(target=pump, args=(u, c), daemon=True).start()


if __name__ == "__main__":
    main()
