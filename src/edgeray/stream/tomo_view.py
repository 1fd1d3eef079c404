"""The live view of the edge in tomography mode: the middle slice as streamed (raw) and enhanced, and the counts.

Routes: ``/`` (the page), ``/stats.json`` (:meth:`TomoEdgeService.snapshot`), ``/raw.png``, ``/enhanced.png``.
The page polls the stats ``max_fps`` times a second (3) and reloads the images after each update of the slices.
Binds 127.0.0.1 only, as the ptychography view does.
"""

from __future__ import annotations

import io

import numpy as np
from PIL import Image

from edgeray.stream.dashboard import serve_view

PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>EdgeRay live tomography</title>
<style>
 body { font-family: system-ui, sans-serif; margin: 1rem; background: #111; color: #eee; }
 h1 { font-size: 1.2rem; margin: 0 0 .5rem 0; } .row { display: flex; gap: 1rem; flex-wrap: wrap; }
 figure { margin: 0; } figcaption { font-size: .9rem; color: #aaa; }
 img { width: min(45vw, 512px); image-rendering: pixelated; background: #222; border: 1px solid #333; }
 td.v { font-variant-numeric: tabular-nums; text-align: right; padding-left: 1rem; }
</style></head>
<body>
<h1>EdgeRay live tomography &mdash; <span id="scan">waiting for a scan</span></h1>
<div class="row">
 <figure><img id="raw" alt="streamed slice"><figcaption>middle slice, as streamed (grey, 1&ndash;99 %)</figcaption>
 </figure>
 <figure><img id="enhanced" alt="enhanced slice"><figcaption>the same, enhanced (TomoGAN)</figcaption></figure>
</div>
<table>
 <tr><td>frames received</td><td class="v" id="frames">0</td></tr>
 <tr><td>projections in the buffer</td><td class="v" id="buffer">0</td></tr>
 <tr><td>slice updates</td><td class="v" id="updates">0</td></tr>
</table>
<script>
let shown = -1;
const $ = (id) => document.getElementById(id);
async function tick() {
  try {
    const s = await (await fetch("stats.json", {cache: "no-store"})).json();
    $("scan").textContent = s.scan_id || "waiting for a scan";
    $("frames").textContent = s.frames_received;
    $("buffer").textContent = s.projections_in_buffer;
    $("updates").textContent = s.updates;
    if (s.updates !== shown && s.updates > 0) {
      shown = s.updates;
      $("raw").src = `raw.png?v=${shown}`; $("enhanced").src = `enhanced.png?v=${shown}`;
      document.body.dataset.updates = shown;
    }
  } catch (e) { $("scan").textContent = "(edge not reachable)"; }
}
setInterval(tick, POLL_MS); tick();
</script></body></html>
"""


def grey_png(image: np.ndarray) -> bytes:
    """PNG bytes of a real image over its 1-99 % range."""
    low, high = np.percentile(image, [1, 99])
    index = np.clip((image - low) / max(high - low, 1e-12) * 255, 0, 255).astype(np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(index).save(buffer, format="PNG", compress_level=1)
    return buffer.getvalue()


class TomoDashboard:
    """Serve the live view of a :class:`~edgeray.stream.tomo.TomoEdgeService` on ``host:port`` (0: any port); the
    page polls ``max_fps`` times a second."""

    def __init__(self, service, host: str = "127.0.0.1", port: int = 8765, max_fps: float = 3.0):
        self.service = service
        self.server, self.url, self.thread = serve_view(
            host, port, PAGE, service.snapshot, self.image, ("raw", "enhanced"), "tomo-view", max_fps
        )

    def image(self, name: str) -> bytes | None:
        """PNG of the middle slice, ``raw`` or ``enhanced``, or None before the first update."""
        image = self.service.view_images().get(name)
        return None if image is None else grey_png(image)

    def start(self) -> TomoDashboard:
        self.thread.start()
        return self

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
