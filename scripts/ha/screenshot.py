"""A screenshot of a Home Assistant frontend page, logged in with a token, by headless Chromium.

    python3 screenshot.py --url URL --base BASE --token ACCESS --refresh REFRESH --out PNG
                          [--wait S] [--width W] [--height H] [--profile DIR]

The frontend keeps its login in localStorage (`hassTokens`); this puts one there (the
long-lived access token, an expiry far away) before the page's own scripts run, through the
Chrome DevTools protocol (Page.addScriptToEvaluateOnNewDocument), then navigates, waits and
saves Page.captureScreenshot. Standard library only: a minimal websocket client for the
DevTools socket. Chromium: ${CHROMIUM:-chromium} (Debian: apt-get install chromium).
"""

import argparse
import base64
import json
import os
import shutil
import socket
import struct
import subprocess
import sys
import tempfile
import time
import urllib.request


class WebSocket:
    """Just enough of RFC 6455 for the DevTools protocol: text frames, client masking."""

    def __init__(self, url):
        assert url.startswith("ws://")
        hostport, _, path = url[5:].partition("/")
        host, _, port = hostport.partition(":")
        self.sock = socket.create_connection((host, int(port or 80)), timeout=60)
        key = base64.b64encode(os.urandom(16)).decode()
        self.sock.sendall((f"GET /{path} HTTP/1.1\r\nHost: {hostport}\r\nUpgrade: websocket\r\n"
                           f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
                           "Sec-WebSocket-Version: 13\r\n\r\n").encode())
        head = b""
        while b"\r\n\r\n" not in head:
            chunk = self.sock.recv(4096)
            if not chunk:
                raise OSError("websocket handshake: connection closed")
            head += chunk
        head, _, self.buf = head.partition(b"\r\n\r\n")
        if b" 101 " not in head.split(b"\r\n")[0]:
            raise OSError(f"websocket handshake refused: {head[:200]!r}")

    def send(self, text):
        data = text.encode()
        mask = os.urandom(4)
        n = len(data)
        if n < 126:
            header = struct.pack("!BB", 0x81, 0x80 | n)
        elif n < 1 << 16:
            header = struct.pack("!BBH", 0x81, 0x80 | 126, n)
        else:
            header = struct.pack("!BBQ", 0x81, 0x80 | 127, n)
        self.sock.sendall(header + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(data)))

    def _read(self, n):
        while len(self.buf) < n:
            chunk = self.sock.recv(1 << 20)
            if not chunk:
                raise OSError("websocket closed")
            self.buf += chunk
        out, self.buf = self.buf[:n], self.buf[n:]
        return out

    def recv(self):
        message = b""
        while True:
            b0, b1 = self._read(2)
            n = b1 & 0x7F
            if n == 126:
                n = struct.unpack("!H", self._read(2))[0]
            elif n == 127:
                n = struct.unpack("!Q", self._read(8))[0]
            mask = self._read(4) if b1 & 0x80 else None
            data = self._read(n)
            if mask:
                data = bytes(b ^ mask[i % 4] for i, b in enumerate(data))
            opcode = b0 & 0x0F
            if opcode == 0x8:
                raise OSError("websocket closed by the browser")
            if opcode in (0x9, 0xA):  # ping/pong: ignore
                continue
            message += data
            if b0 & 0x80:
                return message.decode()


class DevTools:
    def __init__(self, ws_url):
        self.ws = WebSocket(ws_url)
        self.next_id = 0

    def call(self, method, **params):
        self.next_id += 1
        self.ws.send(json.dumps({"id": self.next_id, "method": method, "params": params}))
        while True:
            msg = json.loads(self.ws.recv())
            if msg.get("id") == self.next_id:
                if "error" in msg:
                    raise RuntimeError(f"{method}: {msg['error']}")
                return msg.get("result", {})

    def evaluate(self, expression):
        r = self.call("Runtime.evaluate", expression=expression, returnByValue=True)
        return r.get("result", {}).get("value")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--url", required=True)
    ap.add_argument("--base", required=True, help="Home Assistant's URL (hassUrl)")
    ap.add_argument("--token", required=True)
    ap.add_argument("--refresh", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--wait", type=float, default=6.0)
    ap.add_argument("--width", type=int, default=1280)
    ap.add_argument("--height", type=int, default=1100)
    ap.add_argument("--profile")
    args = ap.parse_args()

    chromium = os.environ.get("CHROMIUM") or shutil.which("chromium") or shutil.which(
        "chromium-browser") or shutil.which("google-chrome")
    if not chromium:
        sys.exit("screenshot: no chromium (apt-get install chromium, or CHROMIUM=/path)")
    profile = args.profile or tempfile.mkdtemp(prefix="adaptd-chromium.")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    argv = [chromium, "--headless=new", f"--remote-debugging-port={port}",
            "--remote-debugging-address=127.0.0.1", f"--user-data-dir={profile}",
            "--no-first-run", "--no-default-browser-check", "--disable-gpu",
            "--disable-extensions", "--disable-background-networking", "--disable-sync",
            "--disable-component-update", "--hide-scrollbars", "--force-device-scale-factor=1",
            f"--window-size={args.width},{args.height}", "about:blank"]
    if os.geteuid() == 0:
        argv.insert(1, "--no-sandbox")
    browser = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        ws_url = None
        end = time.monotonic() + 30
        while time.monotonic() < end and not ws_url:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/json/list", timeout=2) as r:
                    pages = [p for p in json.load(r) if p.get("type") == "page"]
                ws_url = pages[0]["webSocketDebuggerUrl"] if pages else None
            except OSError:
                time.sleep(0.2)
        if not ws_url:
            sys.exit("screenshot: chromium's DevTools endpoint did not come up")
        dt = DevTools(ws_url)
        dt.call("Page.enable")
        dt.call("Emulation.setDeviceMetricsOverride", width=args.width, height=args.height,
                deviceScaleFactor=1, mobile=False)
        tokens = {"hassUrl": args.base, "clientId": args.base + "/",
                  "access_token": args.token, "refresh_token": args.refresh,
                  "token_type": "Bearer", "expires_in": 315360000,
                  "expires": int(time.time() * 1000) + 315360000 * 1000}
        dt.call("Page.addScriptToEvaluateOnNewDocument", source=(
            f"if (location.origin === {json.dumps(args.base)}) "
            f"localStorage.setItem('hassTokens', {json.dumps(json.dumps(tokens))});"))
        dt.call("Page.navigate", url=args.url)
        time.sleep(args.wait)
        where = dt.evaluate("location.href")
        if where and "/auth/" in where:
            sys.exit(f"screenshot: the frontend went to its login page ({where})")
        shot = dt.call("Page.captureScreenshot", format="png")
        with open(args.out, "wb") as f:
            f.write(base64.b64decode(shot["data"]))
        print(f"screenshot: {args.out} ({where})")
    finally:
        browser.terminate()
        try:
            browser.wait(10)
        except subprocess.TimeoutExpired:
            browser.kill()
        if not args.profile:
            shutil.rmtree(profile, ignore_errors=True)


if __name__ == "__main__":
    main()
