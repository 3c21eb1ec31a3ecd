"""Command line: ``python -m theory verify`` and ``python -m theory figures --out DIR``."""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import List, Optional

from theory import TheoryInputError


DEFAULT_VERIFY_OUT = Path("runs") / "theory_verify"


def _verify(out: Path) -> int:
    from theory import checks
    from theory._validation import output_dir, versions, write_json

    t0 = time.perf_counter()
    out = output_dir(out, "--out")  # before the checks run, named as the flag
    print("tolljax theory checks (float64; paper §3.3, Appendix A, Figure 2)")
    results = checks.run_all()
    n_fail = sum(not c.passed for c in results)
    elapsed = time.perf_counter() - t0
    print(f"{len(results) - n_fail}/{len(results)} checks passed in {elapsed:.1f} s"
          + ("" if n_fail == 0 else f"; {n_fail} FAILED"))
    path = write_json(out / "verify.json", {
        "command": "verify", "passed": len(results) - n_fail, "failed": n_fail,
        "checks": [c.record() for c in results],
        "seconds": elapsed, "versions": versions()})
    print(f"results: {path}")
    return 0 if n_fail == 0 else 1


def _figures(out: Path, formats: List[str], seed: int) -> int:
    from theory import figures
    from theory._validation import output_dir

    t0 = time.perf_counter()
    # Checked before the ~30 s of figure work, and named as the flag the user typed.
    out = output_dir(out, "--out")
    paths = figures.make_all(out, formats=formats, seed=seed)
    for p in paths:
        print(p)
    print(f"{len(paths)} files written to {out} in {time.perf_counter() - t0:.1f} s")
    return 0


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m theory",
        description="Linear learning-dynamics theory of Toll (paper §3.3): checks and figures.")
    sub = parser.add_subparsers(dest="command", required=True)
    ver = sub.add_parser("verify", help="run every numerical check; exit status 1 on any failure")
    ver.add_argument("--out", type=Path, default=DEFAULT_VERIFY_OUT,
                     help="folder for verify.json, every check's result (default: %(default)s)")
    fig = sub.add_parser("figures", help="write Figure 2, learning-dynamics and training-time "
                                          "figures, and figures.json (settings and values shown)")
    fig.add_argument("--out", type=Path, required=True, help="output directory (created if missing)")
    fig.add_argument("--formats", default="png,pdf",
                     help="comma-separated file formats out of png, pdf, svg (default: png,pdf)")
    fig.add_argument("--seed", type=int, default=0,
                     help="seed of the initial weights and of the learning-dynamics covariance "
                          "(default: 0)")
    args = parser.parse_args(argv)
    try:
        if args.command == "verify":
            return _verify(args.out)
        from theory.figures import FORMATS  # imported by the figure work below anyway

        formats = [f.strip().lower() for f in args.formats.split(",") if f.strip()]
        bad = [f for f in formats if f not in FORMATS]
        if bad or not formats:
            fig.error(f"--formats must be a comma-separated subset of {','.join(FORMATS)}; "
                      f"got {args.formats!r}")
        if len(set(formats)) < len(formats):
            fig.error(f"--formats {args.formats!r} names a format twice")
        if args.seed < 0:
            fig.error(f"--seed must be >= 0, got {args.seed}")
        return _figures(args.out, formats, args.seed)
    except TheoryInputError as exc:
        # Bad input is the user's to fix: one line and exit status 2 (argparse's usage-error
        # status), never a traceback.
        print(f"error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
