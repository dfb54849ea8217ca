"""``python -m benchmarks.run``: measure every workload and write RESULTS.md and results.json.

Usage::

    python -m benchmarks.run                  # full sizes -> benchmarks/RESULTS.md, results.json
    python -m benchmarks.run --quick          # toy sizes  -> benchmarks/quick/
    python -m benchmarks.run --only w1,w3 --repeats 3
    python -m benchmarks.run --profile        # + timing breakdowns and XLA op profiles
    python -m benchmarks.run --cpu-devices 1  # one CPU device (default: one per usable core)
    python -m benchmarks.run --device gpu     # JAX on the GPU, torch on CUDA, the GPU suite
                                              # -> benchmarks/RESULTS-gpu.md, results-gpu.json
    python -m benchmarks.run --suite gpu --quick   # the GPU suite's code path, here, toy sizes

``--suite`` (default: the device's) picks the workloads and targets: the CPU suite (w1-w4 and
the compile-time workload) or the GPU suite (w2big, w1, w2, w3, compile, w4, sized for one prepared
session, ``benchmarks/gpu_session.sh``). ``--deadline S`` starts no further way after S seconds
and still writes the report (the ways left out are listed).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
import traceback
from pathlib import Path

HERE = Path(__file__).resolve().parent
WORKLOADS = ("w1", "w2", "w3", "w4", "compile")
GPU_WORKLOADS = ("w2big", "w1", "w2", "w3", "compile", "w4")


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
        default=None,
        help=f"comma-separated workloads to run (CPU suite: {','.join(WORKLOADS)}; GPU suite: "
        f"{','.join(GPU_WORKLOADS)}); default all of the suite",
    )
    p.add_argument(
        "--device",
        choices=("cpu", "gpu"),
        default="cpu",
        help="cpu (default): JAX on CPU devices, torch on the CPU; gpu: JAX on the GPU (it must "
        "be JAX's default backend), torch on CUDA",
    )
    p.add_argument(
        "--suite",
        choices=("cpu", "gpu"),
        default=None,
        help="the workloads and targets: default the device's (--suite gpu on a CPU runs the GPU "
        "suite's code path there, e.g. with --quick)",
    )
    p.add_argument(
        "--deadline",
        type=float,
        default=None,
        help="seconds after which no further way starts (the report is still written)",
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
    t_start = time.perf_counter()
    args = _parser().parse_args(argv)
    suite = args.suite or args.device
    valid = GPU_WORKLOADS if suite == "gpu" else WORKLOADS
    only = valid if args.only is None else [w.strip() for w in args.only.split(",") if w.strip()]
    unknown = [w for w in only if w not in valid]
    if unknown or not only:
        raise SystemExit(
            f"--only: unknown workload(s) {unknown} for the {suite} suite; valid: "
            f"{', '.join(valid)}"
        )
    if args.repeats is not None and args.repeats < 1:
        raise SystemExit(f"--repeats must be >= 1, got {args.repeats}")
    if args.deadline is not None and args.deadline <= 0:
        raise SystemExit(f"--deadline must be > 0 seconds, got {args.deadline}")
    import gradflow as gf  # importing starts no backend

    if args.device == "cpu":
        n = args.cpu_devices
        try:
            gf.sweep.cpu_devices(n if n == "auto" else int(n))
        except ValueError:
            raise SystemExit(f"--cpu-devices must be an int >= 1 or 'auto', got {n!r}") from None
    import jax

    if args.device == "gpu" and jax.default_backend() != "gpu":
        raise SystemExit(
            f"--device gpu: JAX's default backend is {jax.default_backend()!r}, not 'gpu' "
            "(install jax with CUDA: pip install -e '.[cuda]')"
        )

    from benchmarks import harness, report, workloads

    if suite == "gpu":
        configs = workloads.GPU_QUICK if args.quick else workloads.GPU_FULL
        name = "RESULTS-gpu.md"
    else:
        configs = workloads.QUICK if args.quick else workloads.FULL
        name = "RESULTS.md"
    out = args.out or (HERE / "quick" / name if args.quick else HERE / name)
    options = workloads.Options(
        repeats=args.repeats or (2 if args.quick else 5),
        budget_s=args.budget if args.budget is not None else (5.0 if args.quick else 60.0),
        min_repeats=1 if args.quick else 3,
        torch_threads=args.torch_threads,
        torch=not args.no_torch,
        profile=args.profile,
        deadline=None if args.deadline is None else t_start + args.deadline,
    )
    if options.torch and not workloads.torch_available():
        _log("torch is not installed (pip install -e '.[bench]'): skipping the PyTorch ways")
        options.torch = False
    torch_device = "cpu"
    if options.torch and args.device == "gpu":
        import torch

        if torch.cuda.is_available():
            torch_device = "cuda"
        else:
            _log("torch has no CUDA here: skipping the PyTorch ways on the GPU")
            options.torch = False

    results = {
        "command": report.command_line(),
        "quick": args.quick,
        "suite": suite,
        "device": args.device,
        "torch_device": torch_device,
        "machine": harness.machine_info(),
        "options": vars(options).copy(),
        "workloads": {},
    }
    _log(
        f"machine: {results['machine']['cpu_model']}, load {results['machine']['load_average']}"
        f", devices {results['machine']['jax_devices']}, suite {suite}"
    )
    n = 512 if args.quick else (8192 if args.device == "gpu" else 2048)
    peaks = {"start": harness.matmul_peak(n)}
    _log(f"float32 matmul peak {peaks['start']['gflops']:.1f} GFLOP/s")
    if args.device == "gpu":
        results["matmul_peak_fast"] = harness.matmul_peak(n, precision="default")
    if options.torch:
        from benchmarks import torch_baselines as tb

        tb.set_device(torch_device)
        threads = args.torch_threads or os.cpu_count() or 1
        tb.set_threads(threads)
        results["torch_matmul_peak"] = {
            **tb.matmul_peak(n),
            "threads": threads,
            "device": torch_device,
        }

    for key in only:
        cfg = configs[key]
        if workloads._expired(options):
            _log(f"{key}: skipped (--deadline passed)")
            results.setdefault("skipped_workloads", []).append(key)
            continue
        _log(f"{key}: {cfg.title} ...")
        t0 = time.perf_counter()
        try:
            w = workloads.run_workload(cfg, options)
        except Exception as e:  # one workload failing (e.g. out of memory) must not lose the rest
            traceback.print_exc()
            _log(f"{key} FAILED: {type(e).__name__}: {e}")
            results.setdefault("failed_workloads", {})[key] = f"{type(e).__name__}: {e}"
            continue
        results["workloads"][key] = w
        summary = ", ".join(
            f"{m['method']} {m['median_s']:.3g}s (compile {m['compile_s'] or 0:.3g}s)"
            for m in w["measurements"]
        )
        _log(f"{key} done in {time.perf_counter() - t0:.0f}s: {summary}")
        for c in w["checks"]:
            if not c["ok"]:
                _log(f"{key} CHECK FAILED: {c['check']}: {c['max_rel_err']:.3g} > {c['tol']:g}")
        _write(results, peaks, out, suite, t_start)  # after every workload: a kill loses none
    peaks["end"] = harness.matmul_peak(n)
    results["load_average_end"] = harness.load_average()
    json_path = _write(results, peaks, out, suite, t_start)
    _log(f"wrote {out} and {json_path} ({results['total_s']:.0f}s)")
    for r in report.targets(results):
        _log(
            f"target {r['workload']} {r['method']} {r['what']} {r['threshold']:g}: "
            f"{r['value']}, met={r['met']}; best proposed {r['best_proposed']} "
            f"{r['best_proposed_value']}"
        )
    failed = [
        c
        for w in results["workloads"].values()
        for c in w["checks"]
        if not c["ok"] and "informative" not in c["note"]
    ]
    return 1 if failed or results.get("failed_workloads") else 0


def _write(results, peaks, out, suite, t_start) -> Path:
    """Write RESULTS*.md and the json beside it (``results-gpu.json`` for the GPU suite)."""
    from benchmarks import report

    results["matmul_peak"] = dict(peaks)
    results["matmul_peak_gflops"] = max(p["gflops"] for p in peaks.values())
    results["total_s"] = time.perf_counter() - t_start
    json_path = Path(out).with_name("results-gpu.json" if suite == "gpu" else "results.json")
    results["json_name"] = json_path.name
    report.write(results, out, json_path)
    return json_path


if __name__ == "__main__":
    sys.exit(main())
