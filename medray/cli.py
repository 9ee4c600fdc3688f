"""Shared glue of the thin ``jobs/`` entry points: validate → run → report → exit code."""

from __future__ import annotations

import logging
import sys
from collections.abc import Callable
from typing import Any

from medray.config import to_config
from medray.errors import BadSampleError, ConfigError

log = logging.getLogger("medray")


def register_configs() -> None:
    """Every job's schemas in Hydra's ConfigStore: evaluate, train and the axes' groups
    (:func:`medray.config.register_configs`), and the sweep's (:mod:`medray.tune.config`)."""
    from medray import config
    from medray.tune import config as tune_config

    config.register_configs()
    tune_config.register()


def setup_logging(level: str = "INFO") -> None:
    """medray's level; the console keeps medray's steps, the rest goes to the job's log file
    (:mod:`medray.console`)."""
    from medray import console

    logging.getLogger("medray").setLevel(level)
    path = console.configure(level)
    if path:
        log.debug("full log (Ray, Ray Data, workers, warnings): %s", path)


def main_wrapper(cfg: Any, schema: type, run: Callable[[Any], dict], on_interrupt: Callable[[Any], str] | None = None) -> dict:
    """Validate ``cfg`` against ``schema`` (before Ray starts), then ``run`` it.

    A ConfigError exits with status 2 and its message, without a traceback: it is the
    user's input that is wrong, and the message says how to fix it.  A bad input file
    with ``data.on_error=fail`` exits with status 3 the same way.  Ray is always shut
    down on failure.  Ctrl-C exits with 130 and, where the job can be continued, the
    command that continues it (``on_interrupt``).
    """
    obj = None
    try:
        obj = to_config(cfg, schema)
        setup_logging(getattr(obj, "log_level", "INFO"))
        doc = run(obj)
    except ConfigError as e:
        _shutdown_ray()
        print(f"medray: configuration error: {e}", file=sys.stderr)
        sys.exit(2)
    except Exception as e:
        _shutdown_ray()
        if not isinstance(e, BadSampleError):
            raise
        # A bad input file is the user's data, not a medray bug: the message names the
        # file, the reason and the `data.on_error=skip` hint; a traceback adds nothing.
        print(f"medray: bad input: {e}", file=sys.stderr)
        sys.exit(3)
    except KeyboardInterrupt:
        _shutdown_ray()
        print("medray: interrupted" + (f"; continue with: {on_interrupt(obj)}" if on_interrupt and obj is not None
                                       else ""), file=sys.stderr)
        sys.exit(130)
    except BaseException:  # SystemExit
        _shutdown_ray()
        raise
    out = (doc or {}).get("output_dir")
    if out:
        print(f"medray: outputs written to {out}")
    elif (doc or {}).get("message"):
        print(f"medray: {doc['message']}")
    return doc


def continue_command(script: str, *extra: str) -> Callable[[Any], str]:
    """``on_interrupt`` of :func:`main_wrapper`: the command line of this Hydra job with its
    own overrides, ``extra`` (e.g. ``resume=true``) and the run's ``output_dir``."""
    import shlex

    from hydra.core.hydra_config import HydraConfig

    keys = {e.split("=", 1)[0] for e in extra} | {"output_dir"}
    given = [o for o in HydraConfig.get().overrides.task if o.split("=", 1)[0].lstrip("+~") not in keys]

    def command(cfg: Any) -> str:
        return " ".join(["python", script, *map(shlex.quote, given), *extra, f"output_dir={shlex.quote(str(cfg.output_dir))}"])

    return command


def _shutdown_ray() -> None:
    if "ray" in sys.modules:
        import ray

        if ray.is_initialized():
            ray.shutdown()
