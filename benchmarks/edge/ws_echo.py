#!/usr/bin/env python3
"""A WebSocket echo backend for the edge benchmark (standard library only).

    ws_echo.py --ports 18086,18087,18088 [--host 127.0.0.1]

One asyncio process listening on every port.  A WebSocket handshake
(RFC 6455) gets a 101; from then on every data frame is echoed back as one
unmasked frame with the same opcode, pings get pongs, a close gets a close.
Any other request (a health check) gets "200 ok" on a keep-alive
connection.  Each response carries `X-Backend: PORT`.  It does the least
work a correct echo server can do, so that the load side (which shares a
core with it) stays cheap.
"""
from __future__ import annotations

import argparse
import asyncio
import base64
import hashlib

GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"


def unmask(payload: bytes, key: bytes) -> bytes:
    n = len(payload)
    if not n:
        return payload
    mask = int.from_bytes((key * (n // 4 + 1))[:n], "big")
    return (int.from_bytes(payload, "big") ^ mask).to_bytes(n, "big")


def frame(opcode: int, payload: bytes) -> bytes:
    n = len(payload)
    if n < 126:
        head = bytes((0x80 | opcode, n))
    elif n < 65536:
        head = bytes((0x80 | opcode, 126)) + n.to_bytes(2, "big")
    else:
        head = bytes((0x80 | opcode, 127)) + n.to_bytes(8, "big")
    return head + payload


class Echo(asyncio.Protocol):
    def __init__(self, port: int) -> None:
        self.port = port
        self.buf = b""
        self.ws = False
        self.transport = None

    def connection_made(self, transport) -> None:
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        self.buf += data
        if self.ws:
            self.frames()
            return
        while not self.ws:
            end = self.buf.find(b"\r\n\r\n")
            if end < 0:
                return
            head, self.buf = self.buf[:end], self.buf[end + 4:]
            self.request(head)
        self.frames()

    def request(self, head: bytes) -> None:
        headers = {}
        for line in head.split(b"\r\n")[1:]:
            name, _, value = line.partition(b":")
            headers[name.strip().lower()] = value.strip()
        key = headers.get(b"sec-websocket-key")
        if key and b"websocket" in headers.get(b"upgrade", b"").lower():
            accept = base64.b64encode(hashlib.sha1(key + GUID).digest())
            self.transport.write(
                b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n"
                b"Connection: Upgrade\r\nSec-WebSocket-Accept: " + accept +
                b"\r\nX-Backend: %d\r\n\r\n" % self.port)
            self.ws = True
            return
        self.transport.write(b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\nX-Backend: %d\r\n\r\nok\n"
                             % self.port)
        if headers.get(b"connection", b"").lower() == b"close":
            self.transport.close()

    def frames(self) -> None:
        buf, pos, out = self.buf, 0, []
        while True:
            if len(buf) - pos < 2:
                break
            b0, b1 = buf[pos], buf[pos + 1]
            n, hdr = b1 & 0x7F, 2
            if n == 126:
                if len(buf) - pos < 4:
                    break
                n, hdr = int.from_bytes(buf[pos + 2:pos + 4], "big"), 4
            elif n == 127:
                if len(buf) - pos < 10:
                    break
                n, hdr = int.from_bytes(buf[pos + 2:pos + 10], "big"), 10
            masked = b1 & 0x80
            total = hdr + (4 if masked else 0) + n
            if len(buf) - pos < total:
                break
            payload = buf[pos + total - n:pos + total]
            if masked:
                payload = unmask(payload, buf[pos + hdr:pos + hdr + 4])
            pos += total
            opcode = b0 & 0x0F
            if opcode == 8:
                out.append(frame(8, payload[:2]))
                self.transport.write(b"".join(out))
                self.transport.close()
                self.buf = b""
                return
            out.append(frame(10 if opcode == 9 else opcode, payload))
        self.buf = buf[pos:]
        if out:
            self.transport.write(b"".join(out) if len(out) > 1 else out[0])


async def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--ports", required=True, help="comma-separated ports")
    ap.add_argument("--host", default="127.0.0.1")
    a = ap.parse_args()
    loop = asyncio.get_running_loop()
    servers = []
    for p in (int(x) for x in a.ports.split(",")):
        servers.append(await loop.create_server(lambda p=p: Echo(p), a.host, p, backlog=4096))
    print(f"ws_echo listening on {a.host}:{a.ports}", flush=True)
    await asyncio.gather(*(s.serve_forever() for s in servers))


if __name__ == "__main__":
    try:
        asyncio.run(main())
    except KeyboardInterrupt:
        pass
