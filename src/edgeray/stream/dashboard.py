"""The live view: a small web page, served by the edge service, showing the mosaic as it grows and the stats.

Routes: ``/`` (the page), ``/stats.json`` (:meth:`EdgeService.snapshot`), ``/phase.png`` and ``/amplitude.png``
(the open scan's mosaic, re-rendered at most ``max_fps`` times a second and only when it changed). The page polls
the stats ``max_fps`` times a second and reloads an image when the mosaic grew. The default, 3 a second, is what
two cores shared by the detector, the edge and a browser afford: at 10 a second the browser and the rendering
took ~0.6 of a core and the 2 kHz stream's p99 latency was 114-846 ms, at 3 it was 74-77 ms.
Binds 127.0.0.1 by default; the standard library's threading HTTP server is all it needs.
"""

from __future__ import annotations

import io
import json
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import numpy as np
from matplotlib import colormaps
from PIL import Image

from edgeray.stream.security import is_local

PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>EdgeRay live view</title>
<style>
 body { font-family: system-ui, sans-serif; margin: 1rem; background: #111; color: #eee; }
 h1 { font-size: 1.2rem; margin: 0 0 .5rem 0; }
 .row { display: flex; gap: 1rem; flex-wrap: wrap; }
 figure { margin: 0; } figcaption { font-size: .9rem; color: #aaa; }
 img { width: min(45vw, 640px); image-rendering: pixelated; background: #222; border: 1px solid #333; }
 table { border-collapse: collapse; margin-top: .5rem; } td { padding: .1rem .8rem .1rem 0; }
 td.v { font-variant-numeric: tabular-nums; text-align: right; }
 #state { font-weight: bold; }
 #problems { color: #f66; font-weight: bold; }
</style></head>
<body>
<h1>EdgeRay live view &mdash; <span id="scan">waiting for a scan</span> <span id="state"></span></h1>
<p id="problems"></p>
<div class="row">
 <figure><img id="phase" alt="phase mosaic"><figcaption>phase (magma, 1&ndash;99 % range)</figcaption></figure>
 <figure><img id="amplitude" alt="amplitude mosaic">
  <figcaption>amplitude (grey, 1&ndash;99 % range)</figcaption></figure>
</div>
<table>
 <tr><td>frames received / inferred / written</td><td class="v" id="frames">0</td></tr>
 <tr><td>receive rate</td><td class="v" id="rate">-</td></tr>
 <tr><td>latency arrival &rarr; mosaic, p50 / p99</td><td class="v" id="latency">-</td></tr>
 <tr><td>queues: inference / writer</td><td class="v" id="queues">-</td></tr>
 <tr><td>invalid messages</td><td class="v" id="invalid">0</td></tr>
 <tr><td>model</td><td class="v" id="model">-</td></tr>
 <tr><td>live refinement: epochs, misfit</td><td class="v" id="refine">off</td></tr>
 <tr><td>view updates</td><td class="v" id="updates">0</td></tr>
</table>
<script>
let shown = -1, updates = 0, busy = false;
const $ = (id) => document.getElementById(id);
const ms = (v) => v === null ? "-" : v.toFixed(1) + " ms";
async function tick() {
  if (busy) return; busy = true;
  try {
    const s = await (await fetch("stats.json", {cache: "no-store"})).json();
    $("scan").textContent = s.scan_id || "waiting for a scan";
    $("state").textContent = s.scan_id ? (s.scan_open ? "(running)" : "(ended)") : "";
    $("frames").textContent = `${s.frames_received} / ${s.frames_inferred} / ${s.frames_written}`;
    $("rate").textContent = s.receive_rate_hz.toFixed(0) + " frames/s";
    $("latency").textContent = `${ms(s.latency_ms_p50)} / ${ms(s.latency_ms_p99)}`;
    $("queues").textContent = `${s.infer_queue} / ${s.write_queue}`;
    $("invalid").textContent = s.frames_invalid_total;
    const problems = [...s.scan_errors];
    if (s.network_image) problems.push("no network image: " + s.network_image);
    if (s.scans_failed) problems.push(`${s.scans_failed} ended scan(s) failed: see their summaries`);
    $("problems").textContent = problems.join("; ");
    $("model").textContent = s.model_version;
    if (s.refine_epochs !== null) {
      const misfit = s.refine_misfit === null ? "-" : s.refine_misfit.toFixed(4);
      $("refine").textContent = `${s.refine_epochs.toFixed(2)}, ${misfit}`;
    }
    if (s.view_version !== shown && s.mosaic_patches > 0) {
      shown = s.view_version; updates += 1;
      $("phase").src = `phase.png?v=${shown}`;
      $("amplitude").src = `amplitude.png?v=${shown}`;
      $("updates").textContent = updates;
      document.body.dataset.patches = s.mosaic_patches;
    }
  } catch (e) { $("state").textContent = "(edge not reachable)"; }
  busy = false;
}
setInterval(tick, POLL_MS); tick();
</script></body></html>
"""


def render(image: np.ndarray, kind: str, max_side: int = 800) -> bytes:
    """PNG bytes of a complex mosaic's ``phase`` (magma) or ``amplitude`` (grey), each over its 1-99 % range;
    pixels no patch reached (NaN) are black."""
    step = max(1, int(np.ceil(max(image.shape) / max_side)))
    image = image[::step, ::step]
    valid = np.isfinite(image)
    if kind == "phase":
        values = np.angle(np.where(valid, image, 0))
        lut = (colormaps["magma"](np.linspace(0, 1, 256))[:, :3] * 255).astype(np.uint8)
    else:
        values = np.abs(np.where(valid, image, 0))
        lut = np.repeat(np.arange(256, dtype=np.uint8)[:, None], 3, axis=1)
    sample = values[valid][:: max(1, int(valid.sum()) // 20000)]  # 20,000 pixels give the range well enough
    low, high = np.percentile(sample, [1, 99]) if sample.size else (0.0, 1.0)
    normalized = (values - low) / max(high - low, 1e-12)
    index = np.clip(normalized * 255, 0, 255).astype(np.uint8)
    rgb = lut[index]
    rgb[~valid] = 0
    buffer = io.BytesIO()
    Image.fromarray(rgb).save(buffer, format="PNG", compress_level=1)
    return buffer.getvalue()


class _QuietServer(ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request, client_address) -> None:
        """A browser closing its connection mid-answer is normal; anything else is printed as usual."""
        if not isinstance(sys.exc_info()[1], (BrokenPipeError, ConnectionResetError)):
            super().handle_error(request, client_address)


def serve_view(host: str, port: int, page: str, stats, image, names: tuple[str, ...], thread_name: str,
               max_fps: float = 3.0):  # fmt: skip
    """An HTTP server for a live view (not started) on loopback ``host:port``: ``/`` the ``page`` (its ``POLL_MS``
    set for ``max_fps`` polls a second), ``/stats.json`` from ``stats()``, ``/<name>.png`` from ``image(name)`` (PNG
    bytes, or None: 404) for each of ``names``. Returns ``(server, url, thread)``; start the thread to serve.
    ValueError for a non-loopback ``host`` or ``max_fps <= 0``."""
    if not max_fps > 0:
        raise ValueError(f"the live view's updates per second must be > 0, not {max_fps}")
    if not is_local(f"tcp://{host}:{port}"):
        raise ValueError(f"the live view binds {host}: only loopback addresses are allowed (use an SSH tunnel)")
    page = page.replace("POLL_MS", str(round(1000 / max_fps)))
    pngs = {f"/{name}.png": name for name in names}

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args) -> None:  # quiet: the page polls several times a second
            pass

        def do_GET(self) -> None:
            path = self.path.split("?")[0]
            if path in ("/", "/index.html"):
                self._send(200, "text/html; charset=utf-8", page.encode())
            elif path == "/stats.json":
                self._send(200, "application/json", json.dumps(stats()).encode())
            elif path in pngs:
                png = image(pngs[path])
                if png is None:
                    self._send(404, "text/plain", b"no image yet")
                else:
                    self._send(200, "image/png", png)
            else:
                self._send(404, "text/plain", b"not found")

        def _send(self, status: int, content_type: str, body: bytes) -> None:
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            self.send_header("Cache-Control", "no-store")
            self.end_headers()
            try:
                self.wfile.write(body)
            except (BrokenPipeError, ConnectionResetError):  # the browser went away mid-answer
                pass

    server = _QuietServer((host, port), Handler)
    url = f"http://{host}:{server.server_address[1]}/"
    return server, url, threading.Thread(target=server.serve_forever, name=thread_name, daemon=True)


class Dashboard:
    """Serve the live view of ``service`` on ``host:port`` (port 0: any free port) in a background thread.

    Images are at most ``max_side`` pixels along each axis (every k-th mosaic pixel), re-rendered at most
    ``max_fps`` times a second, and at most once every ``busy_interval_s`` while more than ``busy_frames`` received
    frames wait for the mosaic (the stream comes first: a view rendered 10 times a second beside a browser on the
    same two cores held the live image seconds behind).
    """

    def __init__(self, service, host: str = "127.0.0.1", port: int = 8765, max_fps: float = 3.0, max_side: int = 512,
                 busy_frames: int = 64, busy_interval_s: float = 1.0):  # fmt: skip
        self.server, self.url, self.thread = serve_view(
            host, port, PAGE, service.snapshot, self.image, ("phase", "amplitude"), "edge-dashboard", max_fps
        )
        self.service = service
        self.min_interval_s = 1.0 / max_fps
        self.busy_frames, self.busy_interval_s = busy_frames, busy_interval_s
        self._cache: dict[str, tuple[int, bytes]] = {}
        self._render_lock = threading.Lock()
        self._last_render = 0.0
        self.max_side = max_side

    def start(self) -> Dashboard:
        self.thread.start()
        return self

    def image(self, kind: str) -> bytes | None:
        """The PNG of the mosaic's ``kind``; both kinds are re-rendered from one snapshot when the mosaic grew and
        the last render is older than ``1 / max_fps`` (``busy_interval_s`` while the stream has a backlog)."""
        with self._render_lock:
            stats = self.service.snapshot()
            patches = stats.get("view_version", 0)
            cached = self._cache.get(kind)
            busy = stats.get("infer_queue", 0) > self.busy_frames
            fresh_enough = time.perf_counter() - self._last_render < (
                self.busy_interval_s if busy else self.min_interval_s
            )
            if cached is not None and (cached[0] == patches or fresh_enough):
                return cached[1]
            image = self.service.mosaic_image(self.max_side)
            if image is None:
                return cached[1] if cached else None
            for name in ("phase", "amplitude"):
                self._cache[name] = (patches, render(image, name, self.max_side))
            self._last_render = time.perf_counter()
            return self._cache[kind][1]

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
