"""Starting the server: every option and the address checked before the model loads, then
uvicorn with one process, or several (`--workers`) each holding its own copy of the model."""

from __future__ import annotations

import json
import logging
import os
import socket
from pathlib import Path

from ..errors import TransferlabError
from .uploads import Limits

log = logging.getLogger("transferlab")

SETTINGS_VARIABLE = "TRANSFERLAB_SERVE"  # how worker processes get the parent's settings


def check_options(run, port: int, workers: int, batch_size: int, wait_ms: float, limits: Limits) -> Path:
    run = Path(run)
    if not run.is_dir():
        raise TransferlabError(f"'{run}' is not a folder: give a run directory written by `transferlab train`")
    if not (run / "model.json").is_file():
        raise TransferlabError(f"'{run}' has no model.json: it is not a finished run (give a run directory "
                               "written by `transferlab train`, or finish it with `transferlab train --resume`)")
    checks = [(0 <= port <= 65535, f"--port {port} is not a port: give 1..65535 (0 picks a free one)"),
              (workers >= 1, f"--workers {workers} must be at least 1"),
              (batch_size >= 1, f"--batch-size {batch_size} must be at least 1"),
              (0 <= wait_ms <= 1000, f"--batch-wait-ms {wait_ms} is outside 0..1000"),
              (1 <= limits.max_files <= 64, f"--max-files {limits.max_files} is outside 1..64"),
              (limits.max_bytes >= 1024, "--max-mb must be at least 0.001"),
              (limits.max_pixels >= 1, f"--max-pixels {limits.max_pixels} must be at least 1")]
    for ok, message in checks:
        if not ok:
            raise TransferlabError(message)
    return run


def bind(host: str, port: int) -> socket.socket:
    """The listening socket, or a one-line error naming the address (in use, not this machine's)."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except socket.gaierror:
        raise TransferlabError(f"--host '{host}' is not a known address: give 127.0.0.1 (this machine "
                               "only) or 0.0.0.0 (every interface)") from None
    family, kind, proto, _, address = infos[0]
    sock = socket.socket(family, kind, proto)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind(address)
    except OSError as err:
        sock.close()
        hint = "another program listens there: pass another --port (0 picks a free one)" \
            if err.errno == 98 else "pass another --host or --port"
        raise TransferlabError(f"cannot listen on {host}:{port} ({err.strerror}): {hint}") from None
    sock.set_inheritable(True)
    return sock


def model_threads(workers: int, cores: int | None = None) -> int:
    """Threads for each worker's network: its share of the cores less one, which decoding and the
    HTTP work need; on 2 cores a network with both loses more to the contention than it gains."""
    cores = cores or os.cpu_count() or 1
    return max(1, cores // workers - 1)


def serve(run, host: str = "127.0.0.1", port: int = 8000, workers: int = 1, onnx: bool = False,
          batch_size: int = 8, wait_ms: float = 5.0, limits: Limits | None = None, access_log: bool = True,
          threads: int | None = None, runtime: str = "auto") -> None:
    """Serve `run` until interrupted. `threads`: the network's threads in each worker (default
    model_threads); `runtime`: where the network runs without `onnx` (runtime/frozen.py)."""
    import uvicorn

    from .app import create_app
    from .model import ServedModel

    limits = limits or Limits()
    run = check_options(run, port, workers, batch_size, wait_ms, limits)
    if threads is not None and threads < 1:
        raise TransferlabError(f"--threads {threads} must be at least 1")
    sock = bind(host, port)
    threads = threads or model_threads(workers)
    # Loaded here even for several workers: a damaged run fails once, in one line, and the ONNX
    # file is exported once, before workers could race to write it.
    model = ServedModel(run, onnx=onnx, threads=threads, runtime=runtime)
    bound = sock.getsockname()[1]
    print(f"serving {run} ({model.spec.backbone}, {model.spec.strategy}, {model.engine}) at "
          f"http://{host}:{bound}/  (Ctrl-C stops)", flush=True)
    if workers == 1:
        app = create_app(model, limits, batch_size, wait_ms)
        config = uvicorn.Config(app, log_level="info", access_log=access_log, timeout_graceful_shutdown=5)
        try:
            uvicorn.Server(config).run(sockets=[sock])
        except KeyboardInterrupt:
            pass  # Ctrl-C is how a server stops: uvicorn finished the requests in flight, then raised it
        served = app.state.counts["requests"]
        print(f"serve: stopped ({served} request{'' if served == 1 else 's'} served)", flush=True)
        return
    del model
    sock.close()  # the supervisor binds the same address again for its workers
    os.environ[SETTINGS_VARIABLE] = json.dumps({
        "run": str(run), "onnx": onnx, "runtime": runtime, "threads": threads, "batch_size": batch_size, "wait_ms": wait_ms,
        "limits": limits.to_dict()})
    uvicorn.run(f"{__name__}:app_from_environment", factory=True, host=host, port=bound, workers=workers,
                log_level="info", access_log=access_log, timeout_graceful_shutdown=5)
    # The supervisor returns once its workers, told to stop, have finished their requests in flight.
    print(f"serve: stopped ({workers} workers)", flush=True)


def app_from_environment():
    """The app of one worker process, from the settings its parent left in the environment."""
    from .app import create_app
    from .model import ServedModel

    settings = json.loads(os.environ[SETTINGS_VARIABLE])
    model = ServedModel(settings["run"], onnx=settings["onnx"], threads=settings["threads"],
                        runtime=settings["runtime"])
    return create_app(model, Limits(**settings["limits"]), settings["batch_size"], settings["wait_ms"])
