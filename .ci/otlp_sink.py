#!/usr/bin/env python3
"""A stand-in OTLP/HTTP collector for CI: accepts POST /v1/traces, answers 200, and
appends one line per request to the log file: the path, the body size, and whether the
protobuf body names fluxio's run and stage spans. Prints the port it listens on."""
import http.server
import sys

log_path = sys.argv[1]


class Sink(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_POST(self):
        body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
        spans = b"fluxio.run" in body and b"fluxio.stage" in body
        with open(log_path, "a") as log:
            log.write(f"{self.path} {len(body)} {'fluxio-spans' if spans else 'other'}\n")
        self.send_response(200)
        self.send_header("Content-Type", "application/x-protobuf")
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *args):
        pass


server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Sink)
print(server.server_address[1], flush=True)
server.serve_forever()
