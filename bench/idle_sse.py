# Opens N idle connections (SSE, WebSocket, or WebSocket over TLS) to a
# running roomhub server and prints the server's RSS growth per connection
# (VmRSS before and 3 s after opening them).
# usage: idle_sse.py <sse|ws|wss> <port> <server-pid> <n> <jwt-secret>
# (wss: the server's certificate is not checked; this measures memory.)
import asyncio, base64, hashlib, hmac, json, os, ssl, sys, time

kind, port, pid, n, secret = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]), sys.argv[5]

def b64(b): return base64.urlsafe_b64encode(b).rstrip(b"=").decode()
def token(user):
    h = b64(json.dumps({"alg": "HS256", "typ": "JWT"}).encode())
    p = b64(json.dumps({"sub": user, "name": user, "exp": int(time.time()) + 3600}).encode())
    sig = hmac.new(secret.encode(), f"{h}.{p}".encode(), hashlib.sha256).digest()
    return f"{h}.{p}.{b64(sig)}"

def rss_kib():
    for line in open(f"/proc/{pid}/status"):
        if line.startswith("VmRSS:"):
            return int(line.split()[1])

async def read_until(r, marker):
    buf = b""
    while marker not in buf:
        chunk = await r.read(4096)
        if not chunk: raise RuntimeError("closed")
        buf += chunk
    return buf

async def open_one(i):
    tls = None
    if kind == "wss":
        tls = ssl.create_default_context()
        tls.check_hostname = False
        tls.verify_mode = ssl.CERT_NONE
    r, w = await asyncio.open_connection("127.0.0.1", port, ssl=tls)
    t = token(f"u{i}")
    if kind == "sse":
        w.write(f"GET /sse?token={t} HTTP/1.1\r\nHost: x\r\nAccept: text/event-stream\r\n\r\n".encode())
        await w.drain()
        await read_until(r, b'"session"')
    else:
        key = base64.b64encode(os.urandom(16)).decode()
        w.write((f"GET /ws?token={t} HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                 f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n").encode())
        await w.drain()
        buf = await read_until(r, b"\r\n\r\n")
        assert b" 101 " in buf.split(b"\r\n")[0], buf[:100]
    return r, w

async def main():
    await asyncio.sleep(0.5)
    before = rss_kib()
    conns = []
    for start in range(0, n, 200):
        conns += await asyncio.gather(*(open_one(i) for i in range(start, min(n, start + 200))))
    await asyncio.sleep(3)
    after = rss_kib()
    print(json.dumps({"kind": kind, "n": n, "rss_before_kib": before, "rss_after_kib": after,
                      "kib_per_conn": round((after - before) / n, 2)}))
    for r, w in conns: w.close()

asyncio.run(main())
