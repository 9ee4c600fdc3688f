"""``python -m medray.doctor [--backend B ...] [--device D] [--json FILE] [--bench]``.

Exit status: 0 when everything that is installed works (missing libraries or devices
are reported with their fix, not errors); 1 when a check failed, or when a backend asked
for with ``--backend`` cannot run any of its precisions here.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys

from medray.doctor import report


def main(argv: list[str] | None = None) -> int:
    from medray.backends import REGISTRY

    p = argparse.ArgumentParser(prog="python -m medray.doctor", description=__doc__.split("\n\n")[0])
    p.add_argument("--backend", action="append", choices=sorted(REGISTRY), help="check only these (repeatable)")
    p.add_argument("--device", action="append", choices=["cpu", "cuda"], help="check only these devices")
    p.add_argument("--json", metavar="FILE", help="write every record (and the bench) as JSON")
    p.add_argument("--bench", action="store_true", help="DenseNet121 224 px through every working pair, batch 64 and 256")
    p.add_argument("--bench-batches", type=int, nargs="+", default=[64, 256], metavar="N")
    p.add_argument("--bench-iters", type=int, default=3, metavar="N", help="timed batches per point (after 1 warm-up)")
    p.add_argument("--quick", action="store_true", help="libraries, devices and precisions only: no model is run")
    p.add_argument("-v", "--verbose", action="store_true", help="the backends' logs too")
    a = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO if a.verbose else logging.WARNING, format="%(name)s: %(message)s")
    doc = report.collect(a.backend, a.device, run_models=not a.quick, bench=a.bench,
                         batches=tuple(a.bench_batches), iters=a.bench_iters)
    print(report.render(doc))
    if a.json:
        with open(a.json, "w") as f:
            json.dump(doc, f, indent=2, default=str)
        print(f"\nJSON: {a.json}")
    return report.exit_code(doc, a.backend)


if __name__ == "__main__":
    sys.exit(main())
