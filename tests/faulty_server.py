"""A threaded HTTP server on 127.0.0.1 that serves generated files with
switchable faults, for testing fetch against a misbehaving network."""
import http.server
import re
import socket
import struct
import threading
import time


class FaultyServer:
    """files: {name: bytes}. faults: {name: mode}; modes:

    ok        serve normally (Range honoured)
    truncate  first request: send half the body, then close
    reset     first request: send a little, then reset the connection (RST)
    500x2     answer 500 twice, then serve
    429once   answer 429 once, then serve
    404       always 404
    wrong     serve other bytes of the right length
    norange   ignore Range headers (always 200 with the whole file)
    trickle   first request: send 1 KiB, then stall past the client's read timeout
    stall     every request stalls after 1 KiB
    slow      send in 64 KiB pieces with a pause between them
    badlength first request: a non-numeric Content-Length and a third of the body
    """

    def __init__(self, files, faults=None):
        self.files = dict(files)
        self.faults = dict(faults or {})
        self.requests = []          # (name, Range header or None)
        self.paths = []             # request paths as sent
        self.sent = {}              # name -> body bytes sent
        self.hits = {}
        self.slow_pause = 0.05
        self.stall_seconds = 3.0
        self._lock = threading.Lock()
        server = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):
                pass

            def do_GET(self):
                server._handle(self)

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.port = self.httpd.server_address[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def stop(self):
        self.httpd.shutdown()
        self.httpd.server_close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.stop()

    def _count(self, name):
        with self._lock:
            self.hits[name] = self.hits.get(name, 0) + 1
            return self.hits[name]

    def _send(self, handler, name, data):
        handler.wfile.write(data)
        handler.wfile.flush()
        with self._lock:
            self.sent[name] = self.sent.get(name, 0) + len(data)

    def _handle(self, h):
        name = h.path.rsplit("/", 1)[-1]
        rng = h.headers.get("Range")
        self.requests.append((name, rng))
        self.paths.append(h.path)
        hit = self._count(name)
        mode = self.faults.get(name, "ok")
        if name not in self.files or mode == "404":
            return self._status(h, 404, "Not Found")
        if mode == "500x2" and hit <= 2:
            return self._status(h, 500, "Internal Server Error")
        if mode == "429once" and hit == 1:
            return self._status(h, 429, "Too Many Requests", {"Retry-After": "0"})
        body = self.files[name]
        if mode == "wrong":
            body = bytes((b + 1) % 256 for b in body)
        start = 0
        match = re.match(r"bytes=(\d+)-$", rng or "")
        if match and mode != "norange":
            start = int(match.group(1))
        if start > len(body):
            return self._status(h, 416, "Range Not Satisfiable")
        part = body[start:]
        if mode == "badlength" and hit == 1:  # a non-numeric Content-Length, then a cut
            h.send_response(200)
            h.send_header("Content-Length", "12abc")
            h.end_headers()
            self._send(h, name, part[: len(part) // 3])
            h.close_connection = True
            return
        h.send_response(206 if start else 200)
        h.send_header("Content-Length", str(len(part)))
        h.send_header("Accept-Ranges", "none" if mode == "norange" else "bytes")
        if start:
            h.send_header("Content-Range", f"bytes {start}-{len(body) - 1}/{len(body)}")
        h.end_headers()
        try:
            if mode == "truncate" and hit == 1:
                self._send(h, name, part[: len(part) // 2])
                h.close_connection = True
                return
            if mode == "reset" and hit == 1:
                self._send(h, name, part[:4096])
                h.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                h.connection.close()
                h.close_connection = True
                return
            if (mode == "trickle" and hit == 1) or mode == "stall":
                self._send(h, name, part[:1024])
                time.sleep(self.stall_seconds)
                h.close_connection = True
                return
            if mode == "slow":
                for i in range(0, len(part), 65536):
                    self._send(h, name, part[i:i + 65536])
                    time.sleep(self.slow_pause)
                return
            self._send(h, name, part)
        except (BrokenPipeError, ConnectionResetError):
            h.close_connection = True

    @staticmethod
    def _status(h, code, reason, headers=None):
        body = f"{code} {reason}\n".encode()
        h.send_response(code, reason)
        h.send_header("Content-Length", str(len(body)))
        for key, value in (headers or {}).items():
            h.send_header(key, value)
        h.end_headers()
        h.wfile.write(body)
