"""``python -m benchmarks.run``: measure every workload and write RESULTS.md and results.json.

Usage::

    python -m benchmarks.run                  # full sizes -> benchmarks/RESULTS.md, results.json
    python -m benchmarks.run --quick          # toy sizes  -> benchmarks/quick/
    python -m benchmarks.run --only w1,w3 --repeats 3
    python -m benchmarks.run --profile        # + timing breakdowns and XLA op profiles
    python -m benchmarks.run --cpu-devices 1  # one CPU device (default: one per usable core)

The same command runs on a GPU or TPU host: the JAX ways use ``jax.devices()`` (reported), the
PyTorch ways stay on the CPU (the common way on a laptop; edit nothing to compare).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
WORKLOADS = ("w1", "w2", "w3", "w4")


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m benchmarks.run",
        description="gradflow against the PyTorch loop and naive JAX, side by side.",
    )
    p.add_argument(
        "--quick",
        action="store_true",
        help="toy sizes (seconds); default output benchmarks/quick/RESULTS.md",
    )
    p.add_argument(
        "--repeats",
        type=int,
        default=None,
        help="timed repeats per way (median reported); default 5 (quick: 2)",
    )
    p.add_argument(
        "--only",
        default=",".join(WORKLOADS),
        help=f"comma-separated workloads to run, of {','.join(WORKLOADS)}",
    )
    p.add_argument(
        "--out",
        type=Path,
        default=None,
        help="Markdown output (results.json is written beside it); default benchmarks/RESULTS.md",
    )
    p.add_argument(
        "--budget",
        type=float,
        default=None,
        help="seconds of timed repeats per way before stopping early (default 60; "
        "quick 5); at least 3 repeats are always run (or --repeats if fewer)",
    )
    p.add_argument(
        "--torch-threads",
        type=int,
        default=None,
        help="torch intra-op threads for every workload (default: 1 for the loops of "
        "small ops, w1 and w3; every core for w2 and w4)",
    )
    p.add_argument("--no-torch", action="store_true", help="skip the PyTorch ways")
    p.add_argument(
        "--profile",
        action="store_true",
        help="also time init vs probe, threefry modes, and profile XLA ops",
    )
    p.add_argument(
        "--cpu-devices",
        default="auto",
        help="jax_num_cpu_devices: CPU devices gradflow's ways shard over (default 'auto': one "
        "per usable core, as `gradflow run --cpu-devices auto`; the naive loop uses the first)",
    )
    return p


def _log(msg: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    only = [w.strip() for w in args.only.split(",") if w.strip()]
    unknown = [w for w in only if w not in WORKLOADS]
    if unknown or not only:
        raise SystemExit(f"--only: unknown workload(s) {unknown}; valid: {', '.join(WORKLOADS)}")
    if args.repeats is not None and args.repeats < 1:
        raise SystemExit(f"--repeats must be >= 1, got {args.repeats}")
    import gradflow as gf  # importing starts no backend

    n = args.cpu_devices
    try:
        gf.sweep.cpu_devices(n if n == "auto" else int(n))
    except ValueError:
        raise SystemExit(f"--cpu-devices must be an int >= 1 or 'auto', got {n!r}") from None

    from benchmarks import harness, report, workloads

    configs = workloads.QUICK if args.quick else workloads.FULL
    out = args.out or (HERE / "quick" / "RESULTS.md" if args.quick else HERE / "RESULTS.md")
    options = workloads.Options(
        repeats=args.repeats or (2 if args.quick else 5),
        budget_s=args.budget if args.budget is not None else (5.0 if args.quick else 60.0),
        min_repeats=1 if args.quick else 3,
        torch_threads=args.torch_threads,
        torch=not args.no_torch,
        profile=args.profile,
    )
    if options.torch and not workloads.torch_available():
        _log("torch is not installed (pip install -e '.[bench]'): skipping the PyTorch ways")
        options.torch = False

    results = {
        "command": report.command_line(),
        "quick": args.quick,
        "machine": harness.machine_info(),
        "options": vars(options).copy(),
        "workloads": {},
    }
    _log(
        f"machine: {results['machine']['cpu_model']}, load {results['machine']['load_average']}"
        f", devices {results['machine']['jax_devices']}"
    )
    n = 512 if args.quick else 2048
    peaks = {"start": harness.matmul_peak(n)}
    _log(f"matmul peak {peaks['start']['gflops']:.1f} GFLOP/s")
    if options.torch:
        from benchmarks import torch_baselines as tb

        threads = args.torch_threads or os.cpu_count() or 1
        tb.set_threads(threads)
        results["torch_matmul_peak"] = {**tb.matmul_peak(n), "threads": threads}

    t_start = time.perf_counter()
    for key in only:
        cfg = configs[key]
        _log(f"{key}: {cfg.title} ...")
        t0 = time.perf_counter()
        w = workloads.run_workload(cfg, options)
        results["workloads"][key] = w
        summary = ", ".join(f"{m['method']} {m['median_s']:.3g}s" for m in w["measurements"])
        _log(f"{key} done in {time.perf_counter() - t0:.0f}s: {summary}")
        for c in w["checks"]:
            if not c["ok"]:
                _log(f"{key} CHECK FAILED: {c['check']}: {c['max_rel_err']:.3g} > {c['tol']:g}")
    peaks["end"] = harness.matmul_peak(n)
    results["matmul_peak"] = peaks
    results["matmul_peak_gflops"] = max(p["gflops"] for p in peaks.values())
    results["load_average_end"] = harness.load_average()
    results["total_s"] = time.perf_counter() - t_start
    json_path = Path(out).with_name("results.json")
    results["json_name"] = json_path.name
    report.write(results, out, json_path)
    _log(f"wrote {out} and {json_path} ({results['total_s']:.0f}s)")
    for r in report.targets(results):
        _log(
            f"target {r['workload']} {r['what']} >= {r['threshold']:g}: gradflow "
            f"{r['gradflow']}, met={r['met']}; best proposed {r['best_proposed']} "
            f"{r['best_proposed_value']}"
        )
    failed = [
        c
        for w in results["workloads"].values()
        for c in w["checks"]
        if not c["ok"] and "informative" not in c["note"]
    ]
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
