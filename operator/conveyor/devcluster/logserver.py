"""The local node's kubelet endpoint for ``kubectl logs``: the apiserver asks
``https://127.0.0.1:<port>/containerLogs/<ns>/<pod>/<container>`` (``tailLines``, ``follow``) and this
serves the container's log file from the pod sandbox. Nothing else of the kubelet API is served."""

from __future__ import annotations

import ssl
import threading
import time
import urllib.parse
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path


def serve_logs(
    pods_dir: Path, cert: Path, key: Path, running: Callable[[str, str], bool]
) -> tuple[ThreadingHTTPServer, int]:
    """Start the endpoint on a free loopback port; ``running(ns, pod)`` says whether to keep following."""

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, format: str, *args: object) -> None:
            pass

        def do_GET(self) -> None:
            url = urllib.parse.urlparse(self.path)
            parts = url.path.strip("/").split("/")
            query = urllib.parse.parse_qs(url.query)
            if len(parts) != 4 or parts[0] != "containerLogs":
                self.send_error(404)
                return
            _, ns, pod, container = parts
            logs = sorted(
                pods_dir.glob(f"{ns}_{pod}_*/logs/{container}.log"), key=lambda p: p.stat().st_mtime
            )
            if not logs:
                self.send_error(404, f"no log for {ns}/{pod}/{container}")
                return
            data = logs[-1].read_bytes()
            if "tailLines" in query:
                lines = data.splitlines(keepends=True)
                data = b"".join(lines[-int(query["tailLines"][0]) :]) if int(query["tailLines"][0]) else b""
            self.send_response(200)
            self.send_header("Content-Type", "text/plain")
            self.end_headers()
            self.wfile.write(data)
            if query.get("follow", ["false"])[0] == "true":
                offset = logs[-1].stat().st_size
                with open(logs[-1], "rb") as f:
                    f.seek(offset)
                    while True:
                        chunk = f.read()
                        if chunk:
                            self.wfile.write(chunk)
                            self.wfile.flush()
                        elif not running(ns, pod):
                            break
                        else:
                            time.sleep(0.2)

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(str(cert), str(key))
    server.socket = ctx.wrap_socket(server.socket, server_side=True)
    threading.Thread(target=server.serve_forever, name="kubelet-logs", daemon=True).start()
    return server, int(server.server_address[1])
