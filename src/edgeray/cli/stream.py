"""``edgeray detector replay``, ``edgeray edge`` and ``edgeray keys``: streaming."""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from edgeray.cli._common import (
    add_cxi_flags,
    add_tomo_path_flags,
    console,
    cxi_options,
    defaults_of,
    progress_bar,
    row_range,
    tomo_paths,
)
from edgeray.cli.config import add_config_flags
from edgeray.sim import PtychoSimConfig

PTYCHO_RATE_HZ = 2000.0  # a ptychography detector's default pace for `detector replay`
TOMO_RATE_HZ = 500.0  # a tomography detector's
#: what `detector replay --simulate` sends: 2 s at 2 kHz, a step dense enough for the edge model's mosaic
REPLAY_SCAN = PtychoSimConfig(n_positions=4000, step_px=4.0)


def replay_rate(args: argparse.Namespace, tomography: bool) -> float:
    """``--rate`` when given (any value, 2000 included), else the default pace of the file's kind."""
    if args.rate is not None:
        return args.rate
    return TOMO_RATE_HZ if tomography else PTYCHO_RATE_HZ


def _replay_scan(args: argparse.Namespace):
    """The scan a replay sends: a CXI file (read lazily) or a simulation of the command's options."""
    if args.scan_file is not None:
        from edgeray.io import CXIFile

        return _LazyScan(CXIFile(args.scan_file, **cxi_options(args)))
    from edgeray.sim import simulate_ptycho_lazy

    config = PtychoSimConfig(n_positions=args.n_positions, step_px=args.step_px, photons=args.photons,
                             object=args.object, seed=args.seed)  # fmt: skip
    return simulate_ptycho_lazy(config)  # frames made block by block as they are sent: any length


class _LazyFrames:
    """A CXI file's frames, read (oriented and checked) only when a block is sliced out."""

    def __init__(self, cxi):
        self.cxi, self.dtype = cxi, cxi._frames.dtype
        self.shape = (cxi.n_frames, *cxi.frame_shape)

    def __len__(self) -> int:
        return self.shape[0]

    def __getitem__(self, block: slice):
        start, stop, _ = block.indices(len(self))
        return self.cxi.read_frames(start, stop)


class _LazyScan:
    """A CXI file seen as a scan whose frames are read block by block while they are sent."""

    def __init__(self, cxi):
        self.frames, self.positions_m, self.geometry = _LazyFrames(cxi), cxi.positions_m, cxi.geometry


def _is_tomography(path: Path) -> bool:
    """Whether ``path`` is a raw tomography file (Data Exchange or NXtomo); else it is taken as CXI."""
    from edgeray.io import detect_kind

    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such scan file")
    return detect_kind(path) == "tomo-raw"


def _replay_tomo(args: argparse.Namespace) -> int:
    from edgeray.io import read_tomo
    from edgeray.stream import connect
    from edgeray.stream.tomo import replay_tomo

    scan = read_tomo(args.scan_file, args.entry, tomo_paths(args))
    socket = connect(args.endpoint, curve_keys=args.curve_keys)
    rate = replay_rate(args, tomography=True)
    console.print(f"sending {len(scan.theta_deg)} projections of {args.scan_file} in {args.order} order at "
                  f"{rate:g} Hz")  # fmt: skip
    for k in range(args.repeat):
        scan_id = args.scan_id if args.repeat == 1 else f"{args.scan_id or 'tomo'}-{k + 1}"
        report = replay_tomo(scan, socket, rate, args.order, scan_id, _slices_or_all(args.rows))
        print(json.dumps(report.as_dict()), flush=True)
    return _disconnect_or_warn(socket)


def _replay_pva(args: argparse.Namespace) -> int:
    """``detector replay --pva CHANNEL``: serve the scan as an NTNDArray channel, once a client subscribes."""
    from edgeray.stream.detector import scan_geometry
    from edgeray.stream.pva_server import ptycho_frames, serve, serve_frames, tomo_frames
    from edgeray.tomo.streaming import acquisition_order

    if args.scan_file is not None and _is_tomography(args.scan_file):
        from edgeray.io import read_tomo

        scan = read_tomo(args.scan_file, args.entry, tomo_paths(args))
        order = acquisition_order(scan.theta_deg, args.order)
        frames, n = (
            tomo_frames(scan, order),
            len(order) + sum(len(f) for f in (scan.flats, scan.darks) if f is not None),
        )
        shape, dtype = scan.projections.shape[1:], scan.projections.dtype
        rate = replay_rate(args, tomography=True)
    else:
        scan = _replay_scan(args)
        frames, n = ptycho_frames(scan, scan_geometry(scan), args.cycles), len(scan.frames) * args.cycles
        shape, dtype, rate = scan.frames.shape[1:], scan.frames.dtype, replay_rate(args, tomography=False)
    server = serve(args.pva, tuple(shape), dtype.name, args.pva_interface)
    try:
        ready = {"pva": args.pva, "address": server.address, "search_port": server.search_port}
        print(json.dumps({"ready": ready}), flush=True)
        console.print(f"serving {n} frames as {args.pva} on {server.address} (UDP search port {server.search_port}) "
                      f"at {rate:g} Hz once a client subscribes")  # fmt: skip
        report = serve_frames(server, frames, n, rate, wait_s=args.pva_wait_s)
    finally:
        server.close()
    print(json.dumps(report.as_dict()), flush=True)
    return 0


def _disconnect_or_warn(socket) -> int:
    """Wait for the queued messages to leave (:func:`edgeray.stream.detector.disconnect`); 1 (and an error) when
    some could not."""
    from edgeray.stream import disconnect
    from edgeray.stream.detector import LINGER_MS

    if disconnect(socket):
        return 0
    console.print(f"[red]error:[/] {LINGER_MS / 1e3:g} s after the last send, messages were still queued (the edge is "
                  "that far behind, or gone); they and the end message were dropped")  # fmt: skip
    return 1


def _slices_or_all(spec: str | None) -> slice | None:
    rows = row_range(spec)
    return None if rows is None else slice(*rows)


def add_detector_replay(commands: argparse._SubParsersAction) -> None:
    """The arguments of ``cmd_detector_replay``."""
    from edgeray.stream.pva_server import serve_frames

    d = commands.add_parser("replay", help="send a CXI, Data Exchange or NXtomo file (or --simulate) at a steady rate")
    d.add_argument("scan_file", type=Path, nargs="?", help="CXI, Data Exchange or NXtomo file to replay")
    d.add_argument("--simulate", action="store_true", help="simulate the scan instead (options below)")
    d.add_argument("--n-positions", type=int, default=REPLAY_SCAN.n_positions, help="frames to simulate")
    d.add_argument("--step-px", type=float, default=REPLAY_SCAN.step_px, help="simulated scan step, object pixels")
    d.add_argument("--photons", type=float, default=REPLAY_SCAN.photons, help="simulated mean photons per frame")
    d.add_argument("--object", default=REPLAY_SCAN.object, help="simulated object (see simulate ptycho)")
    d.add_argument("--seed", type=int, default=REPLAY_SCAN.seed)
    d.add_argument("--rate", type=float, default=None,
                   help=f"frames per second (0: as fast as possible; default {PTYCHO_RATE_HZ:g}, or "
                   f"{TOMO_RATE_HZ:g} for tomography files)")  # fmt: skip
    d.add_argument("--endpoint", default="tcp://127.0.0.1:5555", help="the edge service's --listen endpoint")
    d.add_argument("--pva", default=None, metavar="CHANNEL",
                   help="serve the frames as this EPICS PV Access NTNDArray channel (as areaDetector)")  # fmt: skip
    d.add_argument("--pva-interface", default="127.0.0.1", help="--pva: the address to serve on")
    d.add_argument(
        "--pva-wait-s",
        type=float,
        default=defaults_of(serve_frames)["wait_s"],
        help="--pva: how long to wait for a subscriber",
    )
    d.add_argument("--scan-id", default=None, help="scan name (default: random)")
    d.add_argument("--repeat", type=int, default=1, help="send the scan this many times, as separate scans")
    d.add_argument("--cycles", type=int, default=1, help="send the frames this many times over, as one scan")
    d.add_argument(
        "--order",
        choices=("golden", "bit-reversed", "sequential"),
        default="golden",
        help="tomography files: the angle order projections are sent in",
    )
    d.add_argument("--rows", default=None, help="tomography files: detector rows FIRST:LAST to send (default all)")
    d.add_argument("--entry", default=None, help="NXtomo files: which entry (default: the first)")
    add_tomo_path_flags(d)
    add_config_flags(d)
    d.add_argument("--curve-keys", type=Path, default=None, help="CurveZMQ key folder (edgeray keys)")
    add_cxi_flags(d)
    d.set_defaults(func=cmd_detector_replay)


def cmd_detector_replay(args: argparse.Namespace) -> int:
    from edgeray.stream import connect, replay

    if (args.scan_file is None) == (not args.simulate):
        raise ValueError("give a CXI file to replay or --simulate (not both)")
    if args.pva:
        return _replay_pva(args)
    if args.scan_file is not None and _is_tomography(args.scan_file):
        return _replay_tomo(args)
    scan = _replay_scan(args)
    socket = connect(args.endpoint, curve_keys=args.curve_keys)
    reports = []
    for k in range(args.repeat):
        scan_id = args.scan_id if args.repeat == 1 else f"{args.scan_id or 'scan'}-{k + 1}"
        rate = replay_rate(args, tomography=False)
        with progress_bar(f"sending at {rate:g} Hz", len(scan.frames) * args.cycles) as update:
            report = replay(scan, socket, rate, scan_id=scan_id, progress=update, cycles=args.cycles)
        reports.append(report.as_dict())
        print(json.dumps(report.as_dict()), flush=True)
    return _disconnect_or_warn(socket)


def _pva_bridge(service, args: argparse.Namespace):
    """``--pva CHANNEL``: the EPICS PV Access bridge feeding ``service``'s receiver (None without ``--pva``)."""
    if not args.pva:
        return None
    from edgeray.stream.pva import PvaBridge, PvaOptions, load_positions

    positions, geometry = (None, {}) if args.positions is None else load_positions(args.positions, args.mode)
    options = PvaOptions(channel=args.pva, name_server=args.pva_name_server, mode=args.mode, positions=positions,
                         geometry=geometry, frames=args.pva_frames, idle_s=args.pva_idle_s)  # fmt: skip
    return PvaBridge(options, service.endpoint, service.context).start()


def _listen(args: argparse.Namespace) -> str:
    """The receiver's endpoint: ``--listen``, or an in-process one when frames come over PV Access."""
    return f"inproc://edgeray-pva-{args.pva}" if args.pva else args.listen


def _positive_bytes(gib: float, flag: str) -> int:
    if not gib > 0:
        raise ValueError(f"{flag} must be positive, not {gib}")
    return int(gib * 2**30)


STOP_GRACE_S = 4.0  # after SIGTERM or SIGINT the open scan is closed and summarized within this, or left as is


def _serve(service, view_class, args: argparse.Namespace, label: str) -> int:
    """Run a started edge service (and its live view unless ``--http off``) until it stops: SIGTERM or Ctrl-C
    closes the open scan with every received frame written; print the ready line and the summaries as JSON."""
    import signal
    import threading

    bridge = _pva_bridge(service, args)
    dashboard = None
    if args.http != "off":
        host, _, port = args.http.rpartition(":")
        dashboard = view_class(service, host or "127.0.0.1", int(port), max_fps=args.view_fps).start()
    ready = {"listen": service.endpoint, "view": dashboard.url if dashboard else None, "out": str(args.out)}
    if bridge is not None:
        ready["pva"] = args.pva
    print(json.dumps({"ready": ready}), flush=True)
    source = f"PV Access channel {args.pva}" if bridge is not None else service.endpoint
    console.print(f"[bold]{label}[/] listening on {source}; live view {ready['view']}; writing to {args.out}")
    asked_to_stop: list[float] = []  # when SIGTERM or SIGINT came

    def on_signal(signum: int, _frame) -> None:
        if not asked_to_stop:
            console.print(f"[yellow]stopping[/] ({signal.Signals(signum).name}): closing the open scan with every "
                          "received frame written")  # fmt: skip
        asked_to_stop.append(time.monotonic())
        service.stop()

    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, on_signal)
        signal.signal(signal.SIGINT, on_signal)
    clean = True
    while not service.wait(0.2):
        if asked_to_stop and time.monotonic() - asked_to_stop[0] > STOP_GRACE_S:
            clean = service.finished.is_set()  # only publishing to Tiled may still be under way: that is given up
            if not clean:
                console.print(f"[red]the edge did not finish within {STOP_GRACE_S:g} s of the signal[/]: closing its "
                              "files")  # fmt: skip
            break
    if bridge is not None:
        bridge.stop()
        (Path(args.out) / "pva.json").write_text(json.dumps(bridge.stats(), indent=2) + "\n")
    if getattr(args, "hold", 0) > 0 and dashboard is not None:
        time.sleep(args.hold)
    service.join(STOP_GRACE_S if asked_to_stop else 10)
    if dashboard is not None:
        dashboard.close()
    for summary in service.summaries:
        print(json.dumps({"summary": summary}), flush=True)
        _print_headroom(summary)
    return 0 if clean else 1


def _print_headroom(summary: dict) -> None:
    """One line per scan for people: frames, latency, and the highest rate the edge could have kept (from the CPU
    time of each stage: none above one core, all within the machine's cores)."""
    cpu = summary.get("stage_cpu_fraction") or {}
    if not cpu or not summary.get("max_rate_hz"):
        return
    stage = max(cpu, key=cpu.get)
    console.print(
        f"[bold]{summary['scan_id']}[/]: {summary['frames_received']:,} received, {summary['frames_written']:,} "
        f"written, {summary['frames_inferred']:,} inverted at {summary['frames_per_s']:,.0f} frames/s, p99 latency "
        f"{summary['latency_ms_p99']:.0f} ms; the stream used {summary['stream_cpu_cores']:.2f} cores (busiest: "
        f"{stage}, {cpu[stage]:.2f}): the edge could have kept ~{summary['max_rate_hz']:,.0f} frames/s",
        soft_wrap=True,  # one line, whatever the terminal's width: scripts grep it
    )


def _edge_tomo(args: argparse.Namespace) -> int:
    from edgeray.stream.tomo import TomoEdgeOptions, TomoEdgeService
    from edgeray.stream.tomo_view import TomoDashboard

    shipped = args.enhancer in (None, "shipped")
    enhancer = None if shipped else ("off" if args.enhancer == "off" else Path(args.enhancer))
    options = TomoEdgeOptions(listen=_listen(args), out=args.out, update_every=args.update_every,
                              capacity=args.capacity, enhancer=enhancer, scans=args.scans,
                              curve_keys=args.curve_keys)  # fmt: skip
    return _serve(TomoEdgeService(options).start(), TomoDashboard, args, "edge (tomo)")


def add_edge(commands: argparse._SubParsersAction) -> None:
    """The arguments of ``cmd_edge``."""
    from edgeray.stream.dashboard import Dashboard
    from edgeray.stream.edge import EdgeOptions as E
    from edgeray.stream.learn import LearnOptions
    from edgeray.stream.pva import PvaOptions
    from edgeray.stream.refine import RefineOptions as R
    from edgeray.stream.tiled_publish import TiledOptions
    from edgeray.stream.tomo import TomoEdgeOptions as T

    e = commands.add_parser("edge", help="the edge service: receive, write, infer, stitch, live view")
    e.add_argument(
        "--mode",
        choices=("ptycho", "tomo"),
        default="ptycho",
        help="ptycho: invert frames, stitch a mosaic; tomo: streaming slices of interleaved projections",
    )
    e.add_argument("--update-every", type=int, default=T.update_every, help="tomo: projections between slice updates")
    e.add_argument("--capacity", type=int, default=None, help="tomo: projections in the buffer (default: a half turn)")
    e.add_argument("--enhancer", default=T.enhancer,
                   help="tomo: a model directory, 'off', or 'shipped' (the default: the stream TomoGAN)")  # fmt: skip
    e.add_argument("--listen", default=E.listen, help="PULL endpoint detectors connect to")
    e.add_argument("--pva", default=None, metavar="CHANNEL",
                   help="take frames from this EPICS PV Access NTNDArray channel (areaDetector) instead")  # fmt: skip
    e.add_argument("--pva-name-server", default=None, metavar="HOST:PORT",
                   help="--pva: ask this PVA server directly (default: EPICS_PVA_ADDR_LIST search)")  # fmt: skip
    e.add_argument("--positions", type=Path, default=None,
                   help="--pva: positions of frames without position attributes (.npy/.csv, or CXI)")  # fmt: skip
    e.add_argument("--pva-frames", type=int, default=None,
                   help="--pva: frames per scan when the frames carry no n_frames attribute")  # fmt: skip
    e.add_argument(
        "--pva-idle-s", type=float, default=PvaOptions.idle_s, help="--pva: a scan without frames this long has ended"
    )
    e.add_argument("--out", type=Path, default=E.out, help="folder for run files, products and summaries")
    e.add_argument("--model", type=Path, default=None, help="surrogate folder (default: the shipped edge model)")
    e.add_argument("--max-batch", type=int, default=E.max_batch, help="largest inference batch, frames")
    e.add_argument("--max-wait-ms", type=float, default=E.max_wait_ms, help="longest a frame waits for its batch, ms")
    e.add_argument("--infer-threads", type=int, default=E.infer_threads,
                   help="threads for the network (others need a core)")  # fmt: skip
    e.add_argument("--ring-frames", type=int, default=E.ring_frames,
                   help="frames held in shared memory per scan: how long a stalled stage costs nothing")  # fmt: skip
    e.add_argument("--memory-gb", type=float, default=None,
                   help="most memory one scan's ring and spill may take, GiB (default: a quarter of the "
                   "machine's); a larger frame gets a smaller ring, a scan whose 64-frame ring would not fit is "
                   "refused")  # fmt: skip
    e.add_argument("--max-object-px", type=int, default=E.max_object_px,
                   help="widest object a scan may span, object pixels: frames positioned beyond it are "
                   "refused")  # fmt: skip
    e.add_argument("--infer-workers", type=int, default=E.infer_workers,
                   help="network calls at once, each on --infer-threads threads (for cores to spare)")  # fmt: skip
    e.add_argument("--registry", type=Path, default=None,
                   help="model registry to follow: run CURRENT, swap to new versions between batches")  # fmt: skip
    e.add_argument("--http", default="127.0.0.1:8765", help="live view HOST:PORT, or 'off'")
    e.add_argument("--view-fps", type=float, default=defaults_of(Dashboard)["max_fps"],
                   help="live view updates per second (10 beside a browser on 2 cores: p99 latency 114-846 ms; "
                        "3: 74-77 ms)")  # fmt: skip
    e.add_argument("--publish", default=E.publish, help="PUB endpoint for mosaic and stats, or 'off'")
    e.add_argument("--tiled", default=None, metavar="URI",
                   help="publish each scan (live image, products, metadata) under this Tiled node; the API key from "
                   "TILED_API_KEY")  # fmt: skip
    e.add_argument("--tiled-period-s", type=float, default=TiledOptions.period_s,
                   help="--tiled: the live image is rewritten at most this often, s")  # fmt: skip
    e.add_argument(
        "--tiled-retry-s",
        type=float,
        default=TiledOptions.retry_s,
        help="--tiled: how long a scan's products are tried after its end before the failure is reported",
    )
    e.add_argument("--scans", type=int, default=None, help="exit after this many scans (default: run until stopped)")
    e.add_argument("--hold", type=float, default=0.0, help="keep the live view up this many seconds at exit")
    e.add_argument("--curve-keys", type=Path, default=None, help="CurveZMQ key folder; needed off loopback")
    e.add_argument("--refine", action="store_true",
                   help="refine the live image in the spare CPU time (writes <scan>_refined.h5)")  # fmt: skip
    e.add_argument("--refine-engine", choices=("lsqml", "rpie"), default=R.engine, help="engine of the refinement")
    e.add_argument("--refine-tail-s", type=float, default=R.tail_s, help="seconds of refinement after a scan's end")
    e.add_argument("--refine-probe", type=Path, default=None, help="probe for refinement (default: the model's)")
    e.add_argument("--refine-seed", choices=("network-detail", "network", "flat"), default=R.seed,
                   help="where the refinement starts: the mosaic without its large-scale phase (default), "
                   "the mosaic, or a flat object")  # fmt: skip
    e.add_argument("--learn", action="store_true",
                   help="learn each scan's sample from its frames in the spare CPU time; swap in a model that fits "
                   "held-out frames better (written to OUT/learned/) and make the mosaic again with it")  # fmt: skip
    e.add_argument("--learn-start-frames", type=int, default=LearnOptions.start_frames,
                   help="frames received before learning starts")  # fmt: skip
    e.add_argument("--learn-tail-s", type=float, default=LearnOptions.tail_s,
                   help="seconds of learning after a scan's end")  # fmt: skip
    add_config_flags(e)
    e.set_defaults(func=cmd_edge)


def cmd_edge(args: argparse.Namespace) -> int:
    from edgeray.stream import Dashboard, EdgeOptions, EdgeService
    from edgeray.stream.learn import LearnOptions
    from edgeray.stream.refine import RefineOptions

    if args.mode == "tomo":
        if args.tiled:
            raise ValueError("--tiled publishes ptychography scans; the tomography edge does not publish to Tiled yet")
        return _edge_tomo(args)
    refine = learn = tiled = None
    if args.refine:
        refine = RefineOptions(engine=args.refine_engine, tail_s=args.refine_tail_s, seed=args.refine_seed)
    if args.learn:
        learn = LearnOptions(start_frames=args.learn_start_frames, tail_s=args.learn_tail_s)
    if args.tiled:
        from edgeray.stream.tiled_publish import TiledOptions

        tiled = TiledOptions(uri=args.tiled, period_s=args.tiled_period_s, retry_s=args.tiled_retry_s)
    options = EdgeOptions(
        listen=_listen(args), out=args.out, model=args.model, max_batch=args.max_batch, max_wait_ms=args.max_wait_ms,
        publish=None if args.publish == "off" else args.publish, scans=args.scans, curve_keys=args.curve_keys,
        infer_threads=args.infer_threads, infer_workers=args.infer_workers, registry=args.registry, refine=refine,
        refine_probe_file=args.refine_probe, ring_frames=args.ring_frames, learn=learn, tiled=tiled,
        max_object_px=args.max_object_px,
        **({} if args.memory_gb is None else {"memory_bytes": _positive_bytes(args.memory_gb, "--memory-gb")}),
    )  # fmt: skip
    return _serve(EdgeService(options).start(), Dashboard, args, "edge")


def add_keys(commands: argparse._SubParsersAction) -> None:
    """The arguments of ``cmd_keys``."""
    k = commands.add_parser("keys", help="make CurveZMQ keys for an edge service and its detectors")
    k.add_argument("folder", type=Path)
    k.set_defaults(func=cmd_keys)


def cmd_keys(args: argparse.Namespace) -> int:
    from edgeray.stream import make_keys

    folder = make_keys(args.folder)
    console.print(f"[green]wrote[/] CurveZMQ keys in {folder}: give server.key, client.key and client.key_secret to "
                  "the detector; server.key_secret stays on the edge")  # fmt: skip
    return 0


def register(groups: argparse._SubParsersAction) -> None:
    """Add this module's commands to ``edgeray``."""
    detector = groups.add_parser("detector", help="detector stand-in: stream a scan to an edge service")
    detector_cmds = detector.add_subparsers(dest="action", metavar="ACTION", required=True)
    add_detector_replay(detector_cmds)
    add_edge(groups)
    add_keys(groups)
