"""``results.json`` and ``RESULTS.md`` from one run's results (generated, never typed).

:func:`targets` scores the targets of :data:`benchmarks.workloads.TARGETS` that belong to the run's
suite (CPU or GPU) for the way each names, and the best proposed variant measured in the same run;
:func:`requirements` says what each missed target needs; :func:`markdown` renders everything a
reader needs (machine, load, every way's median, compile and end-to-end time, ratios, checks,
profiles); :func:`write` writes both files. ``results.json`` describes its headline ways
(:data:`HEADLINE_WAYS`, under ``"ways"``), so its readers (the paper's benchmarks table) need no
copy of this package's method ids; :func:`describe_ways` adds that description to a file
written before it existed (``python -m benchmarks.report --describe-ways results.json``).
"""

from __future__ import annotations

import json
import math
import shlex
import sys
from pathlib import Path
from typing import Any

from benchmarks.workloads import TARGETS, Target

__all__ = [
    "HEADLINE_WAYS",
    "describe_ways",
    "markdown",
    "readme_gpu_block",
    "requirements",
    "targets",
    "update_readme",
    "write",
]

#: The headline comparison of every workload, in column order: gradflow's default way (role
#: ``"gradflow"``: the way whose ``speedups`` are reported) and the peers it is measured against
#: (role ``"peer"``), each with a short label for tables. Written into results.json as ``"ways"``.
HEADLINE_WAYS = (
    {"method": "gradflow", "label": "gradflow", "role": "gradflow"},
    {"method": "naive_jax", "label": "naive JAX", "role": "peer"},
    {"method": "torch_func", "label": "torch.func", "role": "peer"},
    {"method": "pytorch", "label": "PyTorch", "role": "peer"},
)

#: Ways that are measured beside the default as candidate changes of it (the "best proposed").
_PROPOSED = ("gradflow_native", "gradflow_blocked", "gradflow_fast")


def _fmt_s(v: float | None) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "-"
    if v >= 100:
        return f"{v:.0f} s"
    if v >= 1:
        return f"{v:.2f} s"
    if v >= 1e-3:
        return f"{v * 1e3:.1f} ms"
    return f"{v * 1e6:.0f} µs"


def _fmt_x(v: float | None) -> str:
    return "-" if v is None else f"{v:.1f}x" if v >= 10 else f"{v:.2f}x"


def _measured(w: dict[str, Any], method: str, what: str, peak: float | None) -> float | None:
    if what == "peak_fraction":
        gflops = w.get("gflops", {}).get(method)
        return None if gflops is None or not peak else gflops / peak
    if what == "compile_ratio":
        return w.get("compile_ratio")
    if what == "compile_s":
        m = next((m for m in w["measurements"] if m["method"] == method), None)
        return None if m is None else m["compile_s"]
    kind, base = what.split(":")
    table = w["speedups"] if kind == "speedup" else w.get("e2e_speedups", {})
    return table.get(method, {}).get(base)


def _met(t: Target, v: float | None) -> bool:
    return v is not None and (v <= t.threshold if t.lower_is_better else v >= t.threshold)


def targets(results: dict[str, Any]) -> list[dict[str, Any]]:
    """One row per target of the run's suite whose workload ran: measured values, whether met."""
    peak = results.get("matmul_peak_gflops")
    suite = results.get("suite", "cpu")
    rows = []
    for t in TARGETS:
        w = results["workloads"].get(t.workload)
        if t.suite != suite or w is None:
            continue
        now = _measured(w, t.method, t.what, peak)
        proposed = {}
        if t.method == "gradflow" and t.what not in ("compile_ratio",):
            proposed = {m: _measured(w, m, t.what, peak) for m in w["speedups"] if m in _PROPOSED}
            proposed = {m: v for m, v in proposed.items() if v is not None}
        pick = min if t.lower_is_better else max
        best = pick(proposed, key=proposed.get) if proposed else None
        rows.append(
            {
                "issue": t.issue,
                "workload": t.workload,
                "method": t.method,
                "what": t.what,
                "threshold": t.threshold,
                "value": now,
                "met": _met(t, now),
                "best_proposed": best,
                "best_proposed_value": proposed.get(best),
                "best_proposed_met": best is not None and _met(t, proposed[best]),
            }
        )
    return rows


def requirements(results: dict[str, Any]) -> list[dict[str, Any]]:
    """For every missed target: what would meet it. Speed-ups: the median (end to end: compile +
    median) at most the base's median / the target, i.e. every counted FLOP at the rate given,
    against the matmul peak and the rate of one batched matmul at the workload's layer shape.
    Compile targets: the compile time that would meet them."""
    peak = results.get("matmul_peak_gflops")
    out = []
    for r in targets(results):
        if r["met"] or r["value"] is None:
            continue
        w = results["workloads"][r["workload"]]
        by = {m["method"]: m for m in w["measurements"]}
        row = {k: r[k] for k in ("issue", "workload", "method", "what", "threshold")}
        if r["what"] == "compile_ratio":
            d = w["per_depth"]
            row.update(needed_s=r["threshold"] * d[0]["compile_s"], now_s=d[-1]["compile_s"],
                       depths=(d[0]["depth"], d[-1]["depth"]))  # fmt: skip
        elif r["what"] == "compile_s":
            row.update(needed_s=r["threshold"], now_s=by[r["method"]]["compile_s"])
        elif r["what"] == "peak_fraction":
            row.update(needed_peak_fraction=r["threshold"], now=r["value"])
        else:
            kind, base = r["what"].split(":")
            if base not in by or r["method"] not in by:
                continue
            mm = by[r["method"]]
            budget = by[base]["median_s"] / r["threshold"]
            if kind == "e2e":  # compile + run within the budget
                row.update(needed_s=budget, now_s=mm["e2e_s"], compile_s=mm["compile_s"],
                           run_s=mm["median_s"])  # fmt: skip
                needed_run = budget - (mm["compile_s"] or 0.0)
            else:
                row.update(needed_s=budget, now_s=mm["median_s"])
                needed_run = budget
            if "flops_per_run" in w and peak and needed_run > 0:
                gflops = w["flops_per_run"] * w["runs"] / needed_run / 1e9
                lm = w.get("layer_matmul", {}).get("gflops")
                row.update(
                    needed_gflops=gflops,
                    needed_peak_fraction=gflops / peak,
                    layer_matmul_gflops=lm,
                    vs_layer_matmul=gflops / lm if lm else None,
                )
        out.append(row)
    return out


_WAY_NAMES = {"pytorch": "the PyTorch loop", "torch_func": "torch.func",
              "naive_jax": "naive JAX", "jax_grad": "jax.grad"}  # fmt: skip


def _target_text(what: str, threshold: float) -> str:
    if what == "peak_fraction":
        return f">= {threshold:.0%} of the float32 matmul peak"
    if what == "compile_ratio":
        return f"compile at the deepest <= {threshold:g}x at the shallowest"
    if what == "compile_s":
        return f"compile <= {threshold:g} s"
    kind, base = what.split(":")
    name = _WAY_NAMES.get(base, base)
    if kind == "e2e":
        return f"end to end (compile + run) >= {threshold:g}x {name}"
    return f">= {threshold:g}x {name}"


def _value_text(what: str, v: float | None) -> str:
    if v is None:
        return "not measured"
    if what == "peak_fraction":
        return f"{v:.0%}"
    if what == "compile_s":
        return _fmt_s(v)
    return _fmt_x(v)


def _requirement_text(r: dict[str, Any]) -> str:
    head = f"- {r['workload']} `{r['method']}` {_target_text(r['what'], r['threshold'])}: "
    if r["what"] == "compile_ratio":
        hi = r["depths"][1]
        return head + (f"compile at depth {hi} <= {_fmt_s(r['needed_s'])} (now "
                       f"{_fmt_s(r['now_s'])}): XLA must not compile every layer (a scan over "
                       "the stacked layers)")  # fmt: skip
    if r["what"] == "compile_s":
        return head + f"compile <= {_fmt_s(r['needed_s'])} (now {_fmt_s(r['now_s'])})"
    if r["what"] == "peak_fraction":
        return head + f"now {r['now']:.0%} of the float32 peak"
    text = head + f"at most {_fmt_s(r['needed_s'])} (now {_fmt_s(r['now_s'])}"
    if r["what"].startswith("e2e:"):
        text += f" = compile {_fmt_s(r['compile_s'])} + run {_fmt_s(r['run_s'])}"
        if r["needed_s"] <= (r["compile_s"] or 0.0):
            return text + "): the compile alone exceeds it"
    text += ")"
    if "needed_gflops" in r:
        lm = (
            f", {r['vs_layer_matmul']:.2f}x the rate of one batched matmul of the layer shape "
            f"alone ({r['layer_matmul_gflops']:.1f} GFLOP/s)"
            if r.get("vs_layer_matmul") is not None
            else ""
        )
        text += (
            f", i.e. the run at {r['needed_gflops']:.1f} GFLOP/s = "
            f"{r['needed_peak_fraction']:.0%} of the float32 matmul peak{lm}"
        )
    return text


def _config_text(cfg: dict[str, Any]) -> str:
    skip = {"title", "naive_timed", "torch_timed", "sweep_run", "topk_variant", "extra_ways"}
    return ", ".join(f"{k}={v}" for k, v in cfg.items() if k not in skip and v is not None)


def markdown(results: dict[str, Any]) -> str:
    """RESULTS.md: machine, targets, then one section per workload."""
    m = results["machine"]
    opts = results["options"]
    suite = results.get("suite", "cpu")
    gpu = suite == "gpu"
    lines = [
        "# gradflow benchmarks" + (" on a GPU" if gpu else ""),
        "",
        f"Generated by `{results['command']}` on {m['date_utc']} UTC. Do not edit: rerun to "
        f"regenerate. Machine-readable: `benchmarks/{results.get('json_name', 'results.json')}`.",
        "",
        "Each workload is computed several ways in the same process on the same machine (see "
        "`benchmarks/__init__.py`); times are medians of repeated runs from host inputs to host "
        "results, compile time excluded and reported separately, and end to end (compile + "
        "median: what a one-shot run costs). Speed-up = the other way's median / gradflow's "
        "median. gradflow's float32 matmuls run at `gradflow.config`'s precision "
        f"`{m.get('matmul_precision', 'highest')}` unless a way says otherwise"
        + (f"; the PyTorch ways run on `{results.get('torch_device', 'cpu')}`." if gpu else "."),
        "",
        "## Machine",
        "",
        "| | |",
        "| --- | --- |",
        f"| CPU | {m['cpu_model']} ({m['cpu_count']} logical CPUs, {m['cpu_usable']} usable) |",
        *([f"| GPU | {m['gpu']} |"] if m.get("gpu") else []),
        f"| JAX devices | {', '.join(m['jax_devices'])} (backend `{m['jax_backend']}`, "
        f"{m['device_kind']}) |",
        f"| versions | jax {m['jax']}, jaxlib {m['jaxlib']}, flax {m['flax']}, optax "
        f"{m['optax']}, numpy {m['numpy']}, torch {m['torch'] or 'not installed'}, Python "
        f"{m['python']} |",
        f"| gradflow commit | {m['gradflow_commit']} |",
        f"| load average (1/5/15 min) at start | {m['load_average']} |",
        f"| load average at end | {results.get('load_average_end')} |",
        f"| jax_threefry_partitionable | {m['threefry_partitionable']} |",
        f"| XLA_FLAGS | `{m['xla_flags'] or '(none)'}` |",
        f"| repeats | up to {opts['repeats']} per way (budget {opts['budget_s']:g} s per way, "
        f"at least {opts['min_repeats']}) |",
    ]
    peak = results.get("matmul_peak")
    if peak:
        lines.append(
            "| float32 matmul peak | "
            + "; ".join(
                f"{p['gflops']:.1f} GFLOP/s ({when}: jnp.matmul {p['n']}x{p['n']}, median of "
                f"{p['repeats']})"
                for when, p in peak.items()
            )
            + f"; used: {results['matmul_peak_gflops']:.1f} (the higher) |"
        )
    fast = results.get("matmul_peak_fast")
    if fast:
        lines.append(
            f"| matmul at precision `{fast['precision']}` (TF32 on NVIDIA GPUs) | "
            f"{fast['gflops']:.1f} GFLOP/s (jnp.matmul {fast['n']}x{fast['n']}) |"
        )
    if results.get("torch_matmul_peak"):
        p = results["torch_matmul_peak"]
        where = f"{p['threads']} threads" if p.get("device", "cpu") == "cpu" else p["device"]
        lines.append(f"| torch matmul (reference) | {p['gflops']:.1f} GFLOP/s ({where}) |")
    load = m.get("load_average")
    if not gpu and load and m.get("cpu_usable") and load[0] > 0.5 * m["cpu_usable"]:
        lines += [
            "",
            f"> **Noisy machine**: load average {load[0]:g} on {m['cpu_usable']} usable CPUs "
            "when the run started (other jobs were running). Absolute times are inflated and "
            "ratios are uncertain; rerun on an idle machine for publishable numbers.",
        ]
    rows = targets(results)
    if rows:
        lines += [
            "",
            "## Targets",
            "",
            "| issue | workload | way | target | value | met | best proposed change | value "
            "| met |",
            "| --- | --- | --- | --- | --- | --- | --- | --- | --- |",
        ]
        for r in rows:
            best = r["best_proposed"]
            best_value = _value_text(r["what"], r["best_proposed_value"]) if best else "-"
            best_met = "-" if not best else ("yes" if r["best_proposed_met"] else "no")
            lines.append(
                f"| {r['issue']} | {r['workload']} | `{r['method']}` | "
                f"{_target_text(r['what'], r['threshold'])} | "
                f"{_value_text(r['what'], r['value'])} | {'yes' if r['met'] else 'no'} | "
                f"{best or '-'} | {best_value} | {best_met} |"
            )
    for label, key in (
        ("failed", "failed_workloads"),
        ("skipped (--deadline)", "skipped_workloads"),
    ):
        if results.get(key):
            items = results[key]
            text = ", ".join(f"{k} ({v})" for k, v in items.items()) if isinstance(
                items, dict) else ", ".join(items)  # fmt: skip
            lines += ["", f"Workloads {label}: {text}."]
    needs = requirements(results)
    if needs:
        lines += [
            "",
            "What each missed target needs. Speed-ups: the way's median (end to end: compile + "
            "median) at most the other way's median / the target, i.e. every counted FLOP (all of "
            "them matmul FLOPs) done at the rate given, against the float32 matmul peak and "
            "against the rate one batched matmul of the workload's layer shape (w3: its training "
            "step's) reaches alone, with no activation, statistic, random number or host "
            "transfer:",
            "",
        ]
        lines += [_requirement_text(r) for r in needs]
    for key, w in results["workloads"].items():
        lines += ["", f"## {key}: {w['title']}", "", _config_text(w["config"]), ""]
        by = {mm["method"]: mm for mm in w["measurements"]}
        ref = by.get("gradflow", {}).get("median_s")
        lines += [
            "| way | median | min | repeats | compile | end to end | / gradflow | GFLOP/s | "
            "notes |",
            "| --- | --- | --- | --- | --- | --- | --- | --- | --- |",
        ]
        for mm in w["measurements"]:
            rel = mm["median_s"] / ref if ref else None
            gflops = w.get("gflops", {}).get(mm["method"])
            e2e = mm.get("e2e_s") if mm["compile_s"] is not None else None
            lines.append(
                f"| {mm['method']}: {mm['label']} | {_fmt_s(mm['median_s'])} | "
                f"{_fmt_s(mm['min_s'])} | {mm['repeats']} | {_fmt_s(mm['compile_s'])} | "
                f"{_fmt_s(e2e)} | {'-' if rel is None else f'{rel:.2f}'} | "
                f"{'-' if gflops is None else f'{gflops:.1f}'} | {mm['notes']} |"
            )
        if w.get("skipped"):
            lines += ["", f"Not measured (the run's --deadline had passed): "
                      f"{', '.join(w['skipped'])}."]  # fmt: skip
        if w["speedups"]:
            lines.append("")
            for method, sp in w["speedups"].items():
                if sp:
                    parts = ", ".join(f"vs {b} **{_fmt_x(v)}**" for b, v in sp.items())
                    lines.append(f"- speed-up of `{method}`: {parts}")
                e2e = w.get("e2e_speedups", {}).get(method)
                if e2e:
                    parts = ", ".join(f"vs {b} **{_fmt_x(v)}**" for b, v in e2e.items())
                    lines.append(f"  - end to end (its compile + run): {parts}")
        if w.get("per_depth"):
            lines += ["", "Compile time by depth: " + ", ".join(
                f"depth {d['depth']} {_fmt_s(d['compile_s'])}" for d in w["per_depth"]
            ) + (f"; deepest / shallowest {w['compile_ratio']:.1f}x" if "compile_ratio" in w
                 else "")]  # fmt: skip
        if "gflops" in w and results.get("matmul_peak_gflops"):
            g = w["gflops"].get("gradflow")
            if g:
                lines.append(
                    f"- gradflow achieves {g:.1f} GFLOP/s = "
                    f"{g / results['matmul_peak_gflops']:.0%} of the matmul peak "
                    f"({w['flops_per_run']:.3g} FLOPs per run counted as "
                    f"{w.get('flops_counted', '6 B W^2 D')})"
                )
        lm = w.get("layer_matmul")
        if lm and results.get("matmul_peak_gflops"):
            lines.append(
                f"- one batched matmul of this workload's layer shape, {lm['shape']}, alone: "
                f"{lm['gflops']:.1f} GFLOP/s = "
                f"{lm['gflops'] / results['matmul_peak_gflops']:.0%} of the matmul peak "
                f"({_fmt_s(lm['median_s'])}, {lm['devices']} device(s))"
            )
        if w["checks"]:
            lines += ["", "Checks (before timing):", ""]
            for c in w["checks"]:
                info = "informative" in c["note"]
                mark = "ok" if c["ok"] else ("outside (informative)" if info else "**FAILED**")
                note = f" ({c['note']})" if c["note"] else ""
                lines.append(
                    f"- {mark}: {c['check']}: {c['max_rel_err']:.2g} (tolerance {c['tol']:g}){note}"
                )
        if "breakdown" in w:
            lines += ["", "Breakdown of the gradflow program (`--profile`):", ""]
            for k, v in w["breakdown"].items():
                lines.append(f"- {k}: {_fmt_s(v['median_s'])} (compile {_fmt_s(v['compile_s'])})")
        if "profile" in w and "categories" in w["profile"]:
            p = w["profile"]
            lines += [
                "",
                f"XLA op time of one gradflow call by source (`--profile`, "
                f"{_fmt_s(p['op_time_s'])} summed over ops):",
                "",
            ]
            for k, v in p["categories"].items():
                lines.append(f"- {k}: {_fmt_s(v['s'])} ({v['share']:.0%})")
            if p.get("top_sources"):
                lines += ["", "Largest single sources (HLO op_name, dense_* = every layer):", ""]
                for k, v in p["top_sources"].items():
                    lines.append(f"- `{k}`: {_fmt_s(v)}")
    return "\n".join(lines) + "\n"


def describe_ways(results: dict[str, Any]) -> dict[str, Any]:
    """``results`` with ``"ways"``: :data:`HEADLINE_WAYS` (method, label, role), so the file says
    which of its ways are the headline comparison and how to label them. Measurements are left
    as they are: a results file written before ``"ways"`` existed is upgraded without rerunning."""
    return {**results, "ways": [dict(w) for w in HEADLINE_WAYS]}


def write(results: dict[str, Any], md_path: str | Path, json_path: str | Path) -> None:
    """Write ``results`` (plus the headline ways and the scored targets) as JSON and Markdown."""
    results = describe_ways(results)
    results = {**results, "targets": targets(results), "requirements": requirements(results)}
    Path(json_path).parent.mkdir(parents=True, exist_ok=True)
    Path(json_path).write_text(json.dumps(results, indent=2, default=float) + "\n")
    Path(md_path).parent.mkdir(parents=True, exist_ok=True)
    Path(md_path).write_text(markdown(results))


def command_line() -> str:
    """The command that produced the results, for the header."""
    return "python -m benchmarks.run " + " ".join(shlex.quote(a) for a in sys.argv[1:])


# ------------------------------------------------------------------------- the README's GPU table

README_BEGIN = "<!-- gpu-results: generated by `python -m benchmarks.report --readme` -->"
README_END = "<!-- /gpu-results -->"
_README_WAYS = (("w1", "gradflow"), ("w2", "gradflow"), ("w2big", "gradflow"),
                ("w2big", "gradflow_fast"), ("w3", "gradflow"))  # fmt: skip


def readme_gpu_block(results: dict[str, Any] | None) -> str:
    """The README's GPU table, generated from ``benchmarks/results-gpu.json`` (None: not yet
    measured): per workload, gradflow's median and compile time against torch.func's and the
    PyTorch loop's medians on the same GPU."""
    lines = [README_BEGIN]
    if not results:
        lines += [
            "",
            "No GPU results yet: run `python -m benchmarks.run --device gpu` (or "
            "`bash benchmarks/gpu_session.sh`) on a GPU host, then "
            "`python -m benchmarks.report --readme`.",
            "",
        ]
    else:
        m = results["machine"]
        lines += [
            "",
            f"Measured by `{results['command']}` on {m['date_utc']} UTC, "
            f"{m.get('gpu') or m['device_kind']}, jax {m['jax']}, torch {m['torch']} on "
            f"`{results.get('torch_device', '?')}` "
            f"([benchmarks/RESULTS-gpu.md](benchmarks/RESULTS-gpu.md)):",
            "",
            "| workload | gradflow | compile | torch.func | PyTorch loop |",
            "| --- | --- | --- | --- | --- |",
        ]
        for key, method in _README_WAYS:
            w = results["workloads"].get(key)
            if w is None:
                continue
            by = {mm["method"]: mm for mm in w["measurements"]}
            if method not in by:
                continue
            mm = by[method]
            fast = method.endswith("_fast")
            base = "torch_func_fast" if fast else "torch_func"
            cells = []
            for b in (base, "pytorch"):
                if b in by:
                    ratio = by[b]["median_s"] / mm["median_s"]
                    cells.append(f"{_fmt_s(by[b]['median_s'])} ({_fmt_x(ratio)})")
                else:
                    cells.append("-")
            precision = mm.get("extra", {}).get("matmul_precision", "highest")
            lines.append(
                f"| {key}: {_config_text(w['config'])} (`{precision}`) | "
                f"{_fmt_s(mm['median_s'])} | {_fmt_s(mm['compile_s'])} | {cells[0]} | "
                f"{cells[1] if not fast else '-'} |"
            )
        lines.append("")
        big = results["workloads"].get("w2big", {})
        moved = [c for c in big.get("checks", []) if c["check"].startswith("gradflow at")]
        if moved:
            lines += [
                f"At the fast passes the w2big per-layer gradient norms moved by "
                f"{moved[0]['max_rel_err']:.2g} relative to float32 (`highest`).",
                "",
            ]
    lines.append(README_END)
    return "\n".join(lines)


def update_readme(readme: str | Path, results_json: str | Path) -> bool:
    """Rewrite the README's generated GPU block from ``results_json`` (missing: the "not yet"
    text); returns whether the README changed."""
    readme = Path(readme)
    text = readme.read_text()
    if README_BEGIN not in text or README_END not in text:
        raise ValueError(f"{readme} has no {README_BEGIN!r} ... {README_END!r} block")
    results = json.loads(Path(results_json).read_text()) if Path(results_json).is_file() else None
    head, rest = text.split(README_BEGIN, 1)
    tail = rest.split(README_END, 1)[1]
    new = head + readme_gpu_block(results) + tail
    if new != text:
        readme.write_text(new)
    return new != text


if __name__ == "__main__":
    import argparse

    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.report",
        description="Regenerate the README's GPU table from benchmarks/results-gpu.json, or add "
        "the headline ways to a results.json written before they were recorded.",
    )
    parser.add_argument("--readme", action="store_true", help="rewrite README.md's GPU block")
    parser.add_argument(
        "--describe-ways",
        metavar="RESULTS_JSON",
        help='add "ways" (HEADLINE_WAYS) to this results file in place; nothing is rerun',
    )
    args = parser.parse_args()
    if args.describe_ways:
        path = Path(args.describe_ways)
        upgraded = describe_ways(json.loads(path.read_text()))
        path.write_text(json.dumps(upgraded, indent=2, default=float) + "\n")
        print(f"{path}: ways {', '.join(w['method'] for w in upgraded['ways'])}")
    if args.readme:
        root = Path(__file__).resolve().parents[1]
        changed = update_readme(root / "README.md", root / "benchmarks" / "results-gpu.json")
        print("README.md " + ("updated" if changed else "unchanged"))
