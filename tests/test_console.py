"""medray.console: what reaches the console, the progress bar on a TTY, periodic lines elsewhere."""

from __future__ import annotations

import io
import logging

from medray.console import ConsoleFilter, Progress


def record(name: str, level: int) -> logging.LogRecord:
    return logging.LogRecord(name, level, __file__, 1, "m", None, None)


def test_console_keeps_medray_steps_and_other_libraries_errors_only():
    f = ConsoleFilter()
    assert f.filter(record("medray.execute", logging.INFO))
    assert not f.filter(record("medray.execute", logging.DEBUG))
    assert not f.filter(record("ray.data", logging.INFO)) and not f.filter(record("py.warnings", logging.WARNING))
    assert f.filter(record("ray.data", logging.ERROR))
    assert ConsoleFilter(debug=True).filter(record("ray.data", logging.DEBUG))  # log_level=DEBUG: everything


class TTY(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_progress_is_a_bar_on_a_tty():
    out = TTY()
    p = Progress("openvino-int8", 64, "image", stream=out)
    for _ in range(8):
        p.update(8)
    p.close()
    text = out.getvalue()
    assert "openvino-int8" in text and "64/64" in text and "image/s" in text


def test_progress_off_a_tty_is_periodic_lines(caplog):
    caplog.set_level(logging.INFO, logger="medray.progress")
    p = Progress("torch-fp32", 100, "image", interval_s=0.0, stream=io.StringIO())
    p.update(40)
    p.update(60)
    p.close()
    lines = [r.getMessage() for r in caplog.records]
    assert lines[0].startswith("torch-fp32: 40/100 images (40%)") and "ETA" in lines[0]
    assert lines[-1].startswith("torch-fp32: 100/100 images (100%)") and "done in" in lines[-1]
