"""Tests for gradflow.experiment: configs, overrides, layout, generated LaTeX."""

import dataclasses
import json

import pytest

import gradflow as gf
from gradflow.experiment import Experiment


def _exp(**kw):
    base = dict(
        name="demo",
        claim="c",
        source="s",
        configs={
            "quick": {"seeds": 2, "lr": 0.1, "depths": (2, 4), "act": "tanh", "x64": False},
            "full": {"seeds": 20, "lr": 0.1, "depths": (2, 4, 8), "act": "tanh", "x64": False},
        },
        run=lambda cfg, d: None,
        plot=lambda r, f: [],
    )
    base.update(kw)
    return Experiment(**base)


def test_parse_override():
    P = gf.experiment.parse_override
    assert P("seeds=4") == ("seeds", 4)
    assert P("lr=1e-2") == ("lr", 0.01)
    assert P("depths=(1, 2)") == ("depths", (1, 2))
    assert P("act=relu") == ("act", "relu")
    assert P("x64=True") == ("x64", True)


def test_resolve_config():
    e = _exp()
    assert e.config("quick")["seeds"] == 2
    cfg = e.config("quick", {"seeds": 3, "lr": 1, "depths": [3], "act": "relu"})
    assert cfg == {"seeds": 3, "lr": 1.0, "depths": (3,), "act": "relu", "x64": False}
    assert isinstance(cfg["lr"], float)


def test_bad_configs():
    e = _exp()
    with pytest.raises(
        ValueError, match="unknown config key 'seed' for experiment 'demo'; valid keys: act, depths"
    ):
        e.config("quick", {"seed": 1})
    with pytest.raises(ValueError, match="config key 'seeds' takes a int"):
        e.config("quick", {"seeds": "many"})
    with pytest.raises(ValueError, match="takes True or False"):
        e.config("quick", {"x64": 1})
    with pytest.raises(ValueError, match="unknown mode 'fast'; valid modes: quick, full"):
        e.config("fast")
    with pytest.raises(ValueError, match="malformed override 'seeds'"):
        gf.experiment.parse_override("seeds")
    with pytest.raises(ValueError, match="is not a config key"):
        gf.experiment.parse_override("1x=2")
    with pytest.raises(ValueError, match="lacks config"):
        _exp(configs={"quick": {}})
    with pytest.raises(ValueError, match="name must match"):
        _exp(name="Bad Name")
    with pytest.raises(
        ValueError, match="unknown experiment 'nope'; valid names: activation_derivatives"
    ):
        gf.experiment.get("nope")


def test_layout(tmp_path):
    lay = gf.experiment.layout("layer_speed", "quick", tmp_path)
    assert lay.results == tmp_path / "results" / "layer_speed" / "quick"
    assert lay.figures == tmp_path / "paper" / "figures"
    with pytest.raises(ValueError, match="unknown mode"):
        gf.experiment.layout("x", "medium")


def test_index_markdown():
    # the installed registry: one row per experiment, timings where recorded, totals, budgets
    names = gf.experiment.names()
    first = names[0]
    runtimes = {
        "quick": {
            first: {
                "seconds": 12.4,
                "devices": "1 x cpu (1 process(es))",
                "matmul_precision": "highest",
            }
        },
        "reproduce": {
            "quick": {
                "seconds": 151.2,
                "paper": "built",
                "finished": "2026-11-22T10:00:00Z",
                "machine_at_start": {"cpus": 2, "cpus_usable": 2, "load_average": [0.5, 1, 1]},
            },
            "full": {"seconds": 1300.0, "paper": "built", "machine_at_start": {"cpus": 2}},
        },
    }
    md = gf.experiment.index_markdown(runtimes)
    rows = [ln for ln in md.splitlines() if ln.startswith("| `")]
    assert [r.split("`")[1] for r in rows] == list(names)
    assert rows[0].endswith("| 12 s | -- |") and rows[1].endswith("| -- | -- |")
    assert "| **total** | | | | 12 s | -- |" in md
    assert "Wall times measured on: 1 x cpu (1 process(es))." in md
    assert (
        "The whole `gradflow reproduce --quick` (every experiment from scratch, the index, the "
        "paper's tables and PDF: built): **151 s** wall on 2 CPUs, load average 0.50 at the start"
        in md
    )
    assert "within the 180 s budget" in md and "OVER the 1200 s budget" in md
    assert "Float32 matrix products at precision: `highest` (`gradflow.config`" in md
    assert "1 x cpu" not in gf.experiment.index_markdown({"quick": {}})  # nothing timed


def test_overrides_are_typed_element_by_element():
    e = _exp()
    for value, pattern in (
        ("abc", r"'depths' takes a tuple of int \(default \(2, 4\)\), got 'abc'"),
        ((2, "x"), r"got \(2, 'x'\): element 1 \('x'\) is not a int"),
        ((2, 4.5), r"element 1 \(4\.5\) is not a int"),
        ((2, True), r"element 1 \(True\) is not a int"),
    ):
        with pytest.raises(ValueError, match=pattern):
            e.config("quick", {"depths": value})
    with pytest.raises(ValueError, match=r"'lr' takes a finite number \(default 0\.1\), got inf"):
        e.config("quick", {"lr": float("inf")})
    with pytest.raises(ValueError, match=r"'lr' takes a float \(default 0\.1\), got True"):
        e.config("quick", {"lr": True})
    with pytest.raises(ValueError, match=r"'act' takes a str \(default 'tanh'\), got 3"):
        e.config("quick", {"act": 3})
    assert e.config("quick", {"depths": 8})["depths"] == (8,)  # one value is a 1-tuple


def test_check_runs_on_every_resolved_config():
    def check(cfg):
        if cfg["seeds"] < 1:
            raise ValueError(f"seeds must be >= 1, got {cfg['seeds']}")

    e = _exp(check=check)
    with pytest.raises(ValueError, match="seeds must be >= 1, got 0"):
        e.config("quick", {"seeds": 0})
    with pytest.raises(TypeError, match="check must be callable or None"):
        _exp(check="yes")


def test_every_experiment_validates_its_whole_config():
    """Every registered experiment checks its config when it is resolved, before anything runs:
    a wrong type, a non-finite number, an out-of-range value or a size that cannot fit in memory
    is one clear ValueError (the CLI's one line and exit 2)."""
    for name in gf.experiment.names():
        e = gf.experiment.get(name)
        assert all(isinstance(c, gf.experiment.Config) for c in e.configs.values()), name
        for mode in ("quick", "full"):
            e.config(mode)  # the shipped configs pass
    bad = {
        "activation_derivatives": ({"n_sup": 10**13 + 1}, r"n_sup=10000000000001.*needs about"),
        "chain_anatomy": ({"exploding_weights": "abc"}, "takes a tuple of float"),
        "clipping_decay": ({"learning_rate": 1e400}, "takes a finite number"),
        "criticality": ({"phase_sw2_max": -1.0}, "phase_sw2_max must be positive"),
        "dynamical_isometry": ({"width": 10**6}, r"width=1000000.*needs about .* of memory"),
        "layer_speed": ({"seeds": 1}, "seeds must be an int >= 2"),
        "remedies": ({"variants": ["nope"]}, r"unknown variants \['nope'\]"),
        "rnn_through_time": ({"lambda1": (0.5, -1.0)}, "lambda1 values must be positive"),
        "variance_propagation": ({"depth": 1}, "depth must be >= 2"),
        "transformer_layernorm": ({"width": 10**5}, r"width=100000.*needs about"),
        "residual_normalization": ({"depths": [8, 1]}, r"depths must be ints >= 2"),
    }
    assert set(bad) == set(gf.experiment.names())
    for name, (overrides, pattern) in bad.items():
        with pytest.raises(ValueError, match=pattern):
            gf.experiment.get(name).config("quick", overrides)


@dataclasses.dataclass(frozen=True)
class DemoConfig(gf.experiment.Config):
    seeds: int  # random draws
    lr: float  # step size
    depths: tuple[int, ...]  # depths
    act: str  # activation
    x64: bool  # float64

    def __post_init__(self):
        super().__post_init__()
        if self.seeds < 1:
            raise ValueError(f"seeds must be >= 1, got {self.seeds}")

    def check_resources(self):
        if self.seeds > 10**6:
            raise ValueError(f"seeds={self.seeds} needs about 1 PB of memory")


FULL = DemoConfig(seeds=20, lr=0.1, depths=(2, 4, 8), act="tanh", x64=False)
QUICK = dataclasses.replace(FULL, seeds=2, depths=(2, 4))


def test_typed_config_overrides_and_validation():
    e = _exp(configs={"quick": QUICK, "full": FULL})
    assert e.config("full") == FULL
    cfg = e.config("quick", {"seeds": 3, "lr": 1, "depths": [3], "act": "relu"})
    assert cfg == DemoConfig(seeds=3, lr=1.0, depths=(3,), act="relu", x64=False)
    assert isinstance(cfg.lr, float) and isinstance(cfg.depths, tuple)
    # the stored form: a dict in field order (tuples stay tuples; JSON writes them as lists)
    assert cfg.to_dict() == {"seeds": 3, "lr": 1.0, "depths": (3,), "act": "relu", "x64": False}
    assert list(QUICK.to_dict()) == ["seeds", "lr", "depths", "act", "x64"]
    for overrides, pattern in (
        ({"seed": 1}, "unknown config key 'seed' for experiment 'demo'; valid keys: act, depths"),
        ({"seeds": "many"}, r"config key 'seeds' takes a int \(default 2\), got 'many'"),
        ({"x64": 1}, "config key 'x64' takes True or False, got 1"),
        ({"depths": (2, 4.5)}, r"element 1 \(4\.5\) is not a int"),
        ({"lr": float("inf")}, r"'lr' takes a finite number \(default 0\.1\), got inf"),
        ({"seeds": 0}, "seeds must be >= 1, got 0"),  # __post_init__
        ({"seeds": 10**7}, "needs about 1 PB of memory"),  # check_resources
    ):
        with pytest.raises(ValueError, match=pattern):
            e.config("quick", overrides)


def test_typed_config_checks_its_field_types():
    with pytest.raises(TypeError, match=r"DemoConfig.seeds must be a int, got 2\.5"):
        dataclasses.replace(FULL, seeds=2.5)
    with pytest.raises(TypeError, match=r"DemoConfig.depths must be a tuple of int, got \[2\]"):
        dataclasses.replace(FULL, depths=[2])
    with pytest.raises(TypeError, match=r"DemoConfig.x64 must be a bool, got 0"):
        dataclasses.replace(FULL, x64=0)

    @dataclasses.dataclass(frozen=True)
    class Untyped(gf.experiment.Config):
        grid: dict

    with pytest.raises(
        TypeError, match=r"Untyped.grid: unsupported config type .*tuple\[T, \.\.\.\]"
    ):
        Untyped(grid={})


def test_experiment_configs_one_kind():
    with pytest.raises(TypeError, match="configs must be instances of one Config class"):
        _exp(configs={"quick": QUICK, "full": {"seeds": 1}})
    with pytest.raises(TypeError, match="order must be an int or None, got 'first'"):
        _exp(order="first")


def test_names_follow_each_experiments_order(monkeypatch):
    from importlib import metadata

    group = gf.experiment.ENTRY_POINT_GROUP
    eps = {ep.name: ep for ep in metadata.entry_points(group=group)}
    assert gf.experiment.names()[:3] == ("activation_derivatives", "layer_speed", "chain_anatomy")
    orders = [gf.experiment.get(n).order for n in gf.experiment.names()]
    assert orders == sorted(orders) and None not in orders
    missing = metadata.EntryPoint("aaa_missing", "no_such_module_xyz:EXPERIMENT", group)
    monkeypatch.setattr(gf.experiment, "_entry_points", lambda: {**eps, "aaa_missing": missing})
    assert gf.experiment.names()[-1] == "aaa_missing"  # cannot load: last, get() says why


def test_stored_config_and_run_record(tmp_path):
    gf.sweep.run(
        lambda hparams, key: {"x": hparams["a"] * 2.0},
        grid={"a": [1.0]},
        seeds=[0],
        workdir=tmp_path / "store",
        config=QUICK.to_dict(),
        progress=False,
    )
    assert gf.experiment.stored_config(tmp_path / "store") == {
        "seeds": 2, "lr": 0.1, "depths": [2, 4], "act": "tanh", "x64": False,
    }  # fmt: skip
    record = json.loads(json.dumps(QUICK, default=gf.experiment.jsonable))
    assert record == gf.experiment.stored_config(tmp_path / "store")
