"""Regenerate ``tests/data/meanfield_reference.json``: mean-field references for tanh at the edges
(sw2 from 1e-8 to 1e6, the critical line, the c-map at large q), computed independently of
gradflow by adaptive quadrature (not collected: no ``test_`` prefix)::

    python tests/make_meanfield_reference.py            # about 15 minutes on one core

* One-dimensional expectations :math:`E[f(\\sqrt q z)]` by ``scipy.integrate.quad`` on
  :math:`z \\ge 0` (``f(u) + f(-u)``, split at 0), with breakpoints on the activation's scale
  :math:`1/\\sqrt q` and on the Gaussian's, and again by ``mpmath.quad`` at 30 digits; both
  are stored with their relative difference (``agreement``).
* Fixed points by ``scipy.optimize.brentq`` on :math:`\\sigma_w^2 E[\\tanh^2(\\sqrt q z)] +
  \\sigma_b^2 - q` (bracket :math:`[\\sigma_b^2, \\sigma_w^2 + \\sigma_b^2]`, since
  :math:`\\tanh^2 \\le 1`), :math:`\\chi_1 = \\sigma_w^2 E[\\mathrm{sech}^4(\\sqrt{q^*} z)]`, the
  critical :math:`\\sigma_w^2` by ``brentq`` on :math:`\\chi_1 = 1`.
* Two-dimensional expectations (the c-map) by nested ``quad``: the inner integral over
  :math:`z_2` split at the kink line :math:`u_2 = 0` with breakpoints on its scale, the outer over
  :math:`z_1` split at 0. The c-map gap :math:`1 - c_{l+1} = \\sigma_w^2
  E[(\\phi(u_1) - \\phi(u_2))^2] / (2 q_{l+1})` and slope :math:`\\chi_c(c) = \\sigma_w^2
  E[\\phi'(u_1)\\phi'(u_2)]\\, q / q_{l+1}`; :math:`c^*` near the critical line by ``brentq`` on
  the gap.

The numbers feed ``tests/test_meanfield.py::test_*_reference*`` (tolerances stated there).
"""

from __future__ import annotations

import itertools
import json
import math
import sys
import time
from pathlib import Path

import mpmath as mp
from scipy import integrate, optimize

OUT = Path(__file__).resolve().parent / "data" / "meanfield_reference.json"
SB2 = 0.05
SW2 = [1e-8, 1e-6, 1e-4, 1e-2, 0.5, 1.0, 1.5, 2.0, 4.0, 10.0, 1e2, 1e3, 1e4, 1e5, 1e6]
C_MAP_Q = [1.0, 100.0, 1e4]
C_MAP_C = [0.0, 0.5, 0.99, 0.9999]
C_MAP_SW2 = 1.5
SQRT_2PI = math.sqrt(2 * math.pi)
mp.mp.dps = 30


def _tanh2(u):
    return math.tanh(u) ** 2


def _sech4(u):
    return 0.0 if abs(u) > 150 else 1.0 / math.cosh(u) ** 4


def _points(s: float, top: float = 13.0) -> list[float]:
    """Breakpoints on [0, top]: the activation's scale s = 1/sqrt(q) and the Gaussian's."""
    pts = {0.0, top, 0.5, 1.0, 2.0, 4.0, 8.0}
    pts |= {s * 2.0**k for k in range(-6, 8)}
    return sorted(p for p in pts if 0 <= p <= top)


def expect(f, q: float) -> float:
    """E[f(sqrt(q) z)] by scipy.integrate.quad (float64)."""
    sq = math.sqrt(q)

    def g(z):
        return (f(sq * z) + f(-sq * z)) * math.exp(-0.5 * z * z) / SQRT_2PI

    pts = _points(1 / sq)
    return sum(
        integrate.quad(g, a, b, epsabs=0, epsrel=1e-13, limit=500)[0]
        for a, b in itertools.pairwise(pts)
    )


def expect_mp(f, q) -> mp.mpf:
    """E[f(sqrt(q) z)] by mpmath.quad at 30 digits."""
    q = mp.mpf(q)
    sq = mp.sqrt(q)

    def g(z):
        return (f(sq * z) + f(-sq * z)) * mp.exp(-z * z / 2) / mp.sqrt(2 * mp.pi)

    return mp.quad(g, [mp.mpf(p) for p in _points(float(1 / sq))])


def q_star(sw2: float, sb2: float) -> float:
    def h(q):
        return sw2 * expect(_tanh2, q) + sb2 - q

    return optimize.brentq(h, sb2, sw2 + sb2, xtol=1e-300, rtol=1e-15, maxiter=500)


def chi1(sw2: float, q: float) -> float:
    return sw2 * expect(_sech4, q)


def expect_2d(g, q: float, c: float) -> float:
    """E[g(u1, u2)], u1 = sqrt(q) z1, u2 = sqrt(q) (c z1 + sqrt(1 - c^2) z2), nested quad."""
    sq, sc = math.sqrt(q), math.sqrt(1 - c * c)
    s = 1 / sq

    def inner(z1):
        k = -c * z1 / sc  # the kink line u2 = 0
        s2 = s / sc
        pts = {-13.0, 13.0, k}
        pts |= {k + sign * s2 * 2.0**j for sign in (-1, 1) for j in range(-4, 8)}
        pts = sorted(p for p in pts if -13 <= p <= 13)

        def h(z2):
            return g(sq * z1, sq * (c * z1 + sc * z2)) * math.exp(-0.5 * z2 * z2)

        val = sum(
            integrate.quad(h, a, b, epsabs=0, epsrel=1e-12, limit=200)[0]
            for a, b in itertools.pairwise(pts)
            if b > a
        )
        return val * math.exp(-0.5 * z1 * z1) / (2 * math.pi)

    half = _points(s)
    pts = sorted({-p for p in half} | set(half))
    return sum(
        integrate.quad(inner, a, b, epsabs=0, epsrel=1e-11, limit=200)[0]
        for a, b in itertools.pairwise(pts)
    )


def _gap_integrand(u1, u2):
    return (math.tanh(u1) - math.tanh(u2)) ** 2


def _sech2(u):
    return 0.0 if abs(u) > 150 else 1.0 / math.cosh(u) ** 2


def _slope_integrand(u1, u2):
    return _sech2(u1) * _sech2(u2)


def c_gap(c: float, q: float, sw2: float, sb2: float) -> float:
    """1 - c_{l+1} of the c-map at (c, q)."""
    return sw2 * expect_2d(_gap_integrand, q, c) / (2 * (sw2 * expect(_tanh2, q) + sb2))


def c_map(c: float, q: float, sw2: float, sb2: float) -> dict[str, float]:
    """The c-map at (c, q): gap 1 - c_{l+1} and slope chi_c(c)."""
    q_next = sw2 * expect(_tanh2, q) + sb2
    slope = sw2 * expect_2d(_slope_integrand, q, c) * q / q_next
    return {"gap": c_gap(c, q, sw2, sb2), "slope": slope}


def main() -> int:
    t0 = time.time()
    out: dict = {"activation": "tanh", "sb2": SB2, "generator": "tests/make_meanfield_reference.py"}
    rows = []
    for sw2 in SW2:
        q = q_star(sw2, SB2)
        chi = chi1(sw2, q)
        chi_mp = float(sw2 * expect_mp(lambda u: mp.sech(u) ** 4, q))
        res_mp = float(sw2 * expect_mp(lambda u: mp.tanh(u) ** 2, q) + SB2 - q)
        rows.append(
            {
                "sw2": sw2,
                "q_star": q,
                "chi1": chi,
                "agreement": abs(chi - chi_mp) / chi,  # scipy vs mpmath at 30 digits
                "q_residual_mpmath": abs(res_mp) / q,  # the fixed point, rechecked by mpmath
            }
        )
        print(f"sw2={sw2:g}: q*={q:.12g} chi1={chi:.12g} ({time.time() - t0:.0f} s)", flush=True)
    out["fixed_points"] = rows
    out["chi1_at_q"] = [
        {"sw2": 1e6, "q": 999202.0, "chi1": chi1(1e6, 999202.0)},
        {"sw2": 1.0, "q": 1e-6, "chi1": chi1(1.0, 1e-6)},
    ]
    crit = optimize.brentq(
        lambda s: chi1(s, q_star(s, SB2)) - 1.0, 1.5, 2.0, xtol=1e-15, rtol=1e-15
    )
    out["critical_sw2"] = crit
    print(f"critical sw2 = {crit:.15g} ({time.time() - t0:.0f} s)", flush=True)
    # c-map at large q (sw2 = 1.5, sb2 = 0.05; q given, not q*)
    cm = []
    for q in C_MAP_Q:
        for c in C_MAP_C:
            cm.append({"q": q, "c": c, **c_map(c, q, C_MAP_SW2, SB2)})
            print(f"c-map q={q:g} c={c}: {cm[-1]} ({time.time() - t0:.0f} s)", flush=True)
    out["c_map"] = {"sw2": C_MAP_SW2, "sb2": SB2, "rows": cm}
    # near the critical line, chaotic side: c* by brentq on the gap at q*, chi_c and xi_c there
    near = []
    for rel in (1e-2, 1e-4):
        sw2 = crit * (1 + rel)
        q = q_star(sw2, SB2)
        d = optimize.brentq(
            lambda d, sw2=sw2, q=q: c_gap(1 - d, q, sw2, SB2) - d,
            1e-3 * rel,
            min(1.0, 100 * rel),
            xtol=1e-18,
            rtol=1e-12,
        )
        chi_c = c_map(1 - d, q, sw2, SB2)["slope"]
        near.append(
            {"rel": rel, "sw2": sw2, "q_star": q, "c_star": 1 - d, "one_minus_c_star": d,
             "chi_c": chi_c, "xi_c": -1 / math.log(chi_c), "chi1": chi1(sw2, q)}
        )  # fmt: skip
        print(f"near the line {rel:g}: {near[-1]} ({time.time() - t0:.0f} s)", flush=True)
    out["near_critical"] = near
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(json.dumps(out, indent=1) + "\n")
    print(f"wrote {OUT} in {time.time() - t0:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
