#!/usr/bin/env python3
"""Evaluate JavaScript in a page of a running headless Chromium, over the DevTools
protocol (a websocket), with nothing but the standard library.

Usage: cdp.py PORT EXPR [--until-true SECONDS]

Prints the value of EXPR (JSON). With --until-true, evaluates EXPR every 200 ms until
it is true, and exits 1 if it is not within SECONDS. Used by console-test.sh to click
the console's buttons the way an admin does.
"""
import base64
import json
import os
import socket
import struct
import sys
import time
import urllib.request


def page_ws(port):
    """The websocket URL of the first page target."""
    for _ in range(100):
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/json/list", timeout=2) as r:
                for t in json.load(r):
                    if t.get("type") == "page" and t.get("webSocketDebuggerUrl"):
                        return t["webSocketDebuggerUrl"]
        except OSError:
            pass
        time.sleep(0.1)
    sys.exit(f"cdp: no page on DevTools port {port}")


class Ws:
    """A minimal websocket client (RFC 6455): text frames, client-masked."""

    def __init__(self, url):
        rest = url.split("://", 1)[1]
        hostport, path = rest.split("/", 1)
        host, port = hostport.rsplit(":", 1)
        self.s = socket.create_connection((host, int(port)), timeout=10)
        key = base64.b64encode(os.urandom(16)).decode()
        self.s.sendall(
            (
                f"GET /{path} HTTP/1.1\r\nHost: {hostport}\r\nUpgrade: websocket\r\n"
                f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
                "Sec-WebSocket-Version: 13\r\n\r\n"
            ).encode()
        )
        head = b""
        while b"\r\n\r\n" not in head:
            chunk = self.s.recv(1)
            if not chunk:
                sys.exit("cdp: the websocket handshake failed")
            head += chunk
        if b" 101 " not in head.split(b"\r\n", 1)[0]:
            sys.exit(f"cdp: handshake refused: {head[:80]!r}")

    def send(self, text):
        data = text.encode()
        n = len(data)
        if n < 126:
            hdr = struct.pack("!BB", 0x81, 0x80 | n)
        elif n < 1 << 16:
            hdr = struct.pack("!BBH", 0x81, 0x80 | 126, n)
        else:
            hdr = struct.pack("!BBQ", 0x81, 0x80 | 127, n)
        mask = os.urandom(4)
        self.s.sendall(hdr + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(data)))

    def _read(self, n):
        buf = b""
        while len(buf) < n:
            chunk = self.s.recv(n - len(buf))
            if not chunk:
                sys.exit("cdp: the websocket closed")
            buf += chunk
        return buf

    def recv(self):
        msg = b""
        while True:
            b0, b1 = self._read(2)
            n = b1 & 0x7F
            if n == 126:
                n = struct.unpack("!H", self._read(2))[0]
            elif n == 127:
                n = struct.unpack("!Q", self._read(8))[0]
            payload = self._read(n)
            msg += payload
            if b0 & 0x80:
                return msg.decode()


def evaluate(ws, expr, ident):
    ws.send(json.dumps({"id": ident, "method": "Runtime.evaluate",
                        "params": {"expression": expr, "returnByValue": True}}))
    while True:
        m = json.loads(ws.recv())
        if m.get("id") == ident:
            r = m.get("result", {})
            if "exceptionDetails" in r:
                return {"error": r["exceptionDetails"].get("text", "exception")}
            return r.get("result", {}).get("value")


def main():
    if len(sys.argv) < 3:
        sys.exit(__doc__)
    port, expr = sys.argv[1], sys.argv[2]
    until = float(sys.argv[4]) if len(sys.argv) > 4 and sys.argv[3] == "--until-true" else None
    ws = Ws(page_ws(port))
    if until is None:
        print(json.dumps(evaluate(ws, expr, 1)))
        return
    deadline = time.time() + until
    i = 1
    while time.time() < deadline:
        if evaluate(ws, expr, i) is True:
            print("true")
            return
        i += 1
        time.sleep(0.2)
    print("false")
    sys.exit(1)


if __name__ == "__main__":
    main()
