"""A quiet console: medray's steps and one progress bar per run; everything else to the log.

``jobs/`` runs under Hydra, whose job logging writes ``<output_dir>/evaluate.log`` (or
``sweep.log``) and echoes to the console.  :func:`configure` keeps medray's own INFO lines
on the console and sends the rest there only: third-party warnings (Python ``warnings``
included), Ray's and Ray Data's loggers (the periodic operator dumps), and — once Ray is
up, :func:`route_worker_logs` — the actors' and tasks' output (ONNX Runtime's C++
warnings, the backends' logs).  ``log_level=DEBUG`` shows everything on the console too.
Errors stay as they are: one line naming the file/key and the fix (``medray.cli``).
"""

from __future__ import annotations

import logging
import sys
import time

log = logging.getLogger("medray.progress")

# Set by configure(): the job's log file handler (None = not configured), and a second
# handler on the same file for the libraries' loggers (Ray Data sets the formatter of its
# handlers per dataset: it must not be Hydra's, which formats medray's lines).
_FILE: logging.FileHandler | None = None
_LIB: logging.FileHandler | None = None
_DEBUG = False
LIBRARY_LOGGERS = ("ray", "ray.data", "ray.tune", "ray.train", "ray.serve")


class ConsoleFilter(logging.Filter):
    """medray's INFO and above; other libraries' errors only (their warnings: the log file)."""

    def __init__(self, debug: bool = False):
        super().__init__()
        self.debug = debug

    def filter(self, record: logging.LogRecord) -> bool:
        if self.debug:
            return True
        if record.name == "medray" or record.name.startswith("medray."):
            return record.levelno >= logging.INFO
        return record.levelno >= logging.ERROR


def configure(level: str = "INFO") -> str | None:
    """Route the console as the module says; returns the log file (None: no file handler,
    e.g. medray used as a library — then nothing is changed)."""
    global _FILE, _LIB, _DEBUG
    root = logging.getLogger()
    fh = next((h for h in root.handlers if isinstance(h, logging.FileHandler)), None)
    if fh is None:
        return None
    _FILE, _DEBUG = fh, str(level).upper() == "DEBUG"
    fh.setLevel(logging.DEBUG)
    if _LIB is None or _LIB.baseFilename != fh.baseFilename:
        _LIB = logging.FileHandler(fh.baseFilename, mode="a", encoding="utf-8")
        _LIB.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s %(filename)s:%(lineno)d -- %(message)s"))
    for h in root.handlers:
        if type(h) is logging.StreamHandler and not any(isinstance(f, ConsoleFilter) for f in h.filters):
            h.addFilter(ConsoleFilter(_DEBUG))
    logging.captureWarnings(True)  # warnings.warn(...) → logger "py.warnings" → the file
    route_library_loggers()
    return fh.baseFilename


def route_library_loggers() -> None:
    """Ray's loggers print through their own console handlers: those keep errors only, and
    everything goes to the log file."""
    if _FILE is None or _DEBUG:
        return
    try:
        import ray.data  # noqa: F401  (configures the ray.data logger on import)
    except Exception:
        pass
    for name in LIBRARY_LOGGERS:
        lg = logging.getLogger(name)
        for h in list(lg.handlers):
            if isinstance(h, logging.StreamHandler) and not isinstance(h, logging.FileHandler):
                h.setLevel(logging.ERROR)  # their errors stay on the console; the rest: the file
        if _LIB not in lg.handlers and not lg.propagate:
            lg.addHandler(_LIB)


def route_worker_logs() -> bool:
    """After ``ray.init``: the workers' stdout/stderr (streamed to the driver) go to the log
    file instead of the console.  Ray's dispatcher is an internal API of the pinned Ray; if
    it moved, the output stays on the console (never lost)."""
    if _FILE is None or _DEBUG:
        return False
    try:
        from ray._private.ray_logging import global_worker_stdstream_dispatcher as dispatcher
    except Exception:
        return False
    fh = _LIB

    def to_file(data: dict) -> None:
        who = data.get("actor_name") or data.get("task_name") or "worker"
        prefix = f"({who} pid={data.get('pid')}, ip={data.get('ip')}) "
        fh.acquire()
        try:
            for line in data.get("lines", []):
                fh.stream.write(prefix + line + "\n")
            fh.stream.flush()
        finally:
            fh.release()

    dispatcher.remove_handler("ray_print_logs")
    dispatcher.add_handler("medray_log_file", to_file)
    route_library_loggers()
    return True


def progress_enabled() -> bool:
    """Our bar replaces Ray Data's when the console is routed."""
    return _FILE is not None and not _DEBUG


class Progress:
    """One run's progress: samples done / total, samples/s, ETA.

    A tqdm bar on a TTY; elsewhere (CI logs, ``ray job submit``) a single line every
    ``interval_s`` and at the end, through the ``medray.progress`` logger.
    """

    def __init__(self, name: str, total: int, unit: str = "sample", interval_s: float = 10.0, stream=None):
        self.name, self.total, self.unit, self.interval_s = name, int(total), unit, interval_s
        self.done = 0
        self.t0 = time.perf_counter()
        self._last = self.t0
        stream = stream or sys.stderr
        self._bar = None
        if getattr(stream, "isatty", lambda: False)():
            from tqdm import tqdm

            self._bar = tqdm(total=self.total, desc=name, unit=unit, file=stream, dynamic_ncols=True, leave=True)

    def update(self, n: int) -> None:
        self.done += int(n)
        if self._bar is not None:
            self._bar.update(int(n))
            return
        now = time.perf_counter()
        if now - self._last >= self.interval_s and self.done < self.total:
            self._last = now
            log.info(self.line())

    def line(self) -> str:
        el = max(time.perf_counter() - self.t0, 1e-9)
        rate = self.done / el
        eta = (self.total - self.done) / rate if rate > 0 else float("nan")
        pct = 100 * self.done / self.total if self.total else 100.0
        return (f"{self.name}: {self.done}/{self.total} {self.unit}s ({pct:.0f}%), {rate:.1f}/s, "
                + (f"ETA {eta:.0f} s" if self.done < self.total else f"done in {el:.1f} s"))

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
        else:
            log.info(self.line())
