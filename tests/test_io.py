"""Tests of gradflow._io.atomic_write, the one atomic writer behind every file gradflow writes:
a temporary file created exclusively in the target directory (never a planted file or symlink),
the usual permissions, nothing left behind on failure; and the four writers that use it."""

from __future__ import annotations

import os
import stat

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import gradflow as gf
from gradflow import _io


def _plant(directory, name):
    """Symlinks at the temporary names the writers used to predict (``.<name>.<pid>.tmp``),
    pointing at a victim file outside the directory."""
    victim = directory.parent / f"victim-{name}"
    victim.write_text("precious")
    for tmp in (f".{name}.{os.getpid()}.tmp", f".{name}.{os.getpid()}.tmp.pdf"):
        (directory / tmp).symlink_to(victim)
    return victim


def test_atomic_write_bytes_text_and_callable(tmp_path):
    assert _io.atomic_write(tmp_path / "a", b"\x00\x01").read_bytes() == b"\x00\x01"
    assert _io.atomic_write(tmp_path / "b", "ü").read_text(encoding="utf-8") == "ü"
    assert _io.atomic_write(tmp_path / "c", lambda f: f.write(b"xyz")).read_bytes() == b"xyz"
    _io.atomic_write(tmp_path / "c", b"new")  # replaces
    assert (tmp_path / "c").read_bytes() == b"new"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a", "b", "c"]  # no temp files left


def test_atomic_write_mode_follows_the_umask(tmp_path):
    old = os.umask(0o022)
    try:
        path = _io.atomic_write(tmp_path / "f", b"x")
    finally:
        os.umask(old)
    # mkstemp creates 0600; the result must be readable like any file the user writes (0644)
    assert stat.S_IMODE(path.stat().st_mode) == 0o666 & ~_io._UMASK


def test_atomic_write_failure_leaves_the_destination_and_no_temp_file(tmp_path):
    dest = tmp_path / "keep.json"
    dest.write_text("old")

    def boom(f):
        f.write(b"half")
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError, match="disk full"):
        _io.atomic_write(dest, boom)
    assert dest.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["keep.json"]


def test_writers_do_not_follow_a_planted_symlink(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    victims = {name: _plant(out, name) for name in ("t.tex", "fig.pdf", "fig", "c.npz", "m.json")}
    gf.experiment.write_atomic(out / "t.tex", "table")
    fig, _ = gf.plotting.figure()
    gf.plotting.savefig(fig, out / "fig", formats=("pdf",))
    params = {"dense_0": {"kernel": jnp.ones((2, 2)), "bias": jnp.zeros(2)}}
    state = gf.training.TrainState(
        step=jnp.zeros((), jnp.int32), params=params, model_state={}, opt_state=(),
        key=jax.random.key(0),
    )  # fmt: skip
    gf.training.save_checkpoint(out / "c.npz", state)
    gf.sweep._write_json(out / "m.json", {"a": 1})
    for name, victim in victims.items():
        assert victim.read_text() == "precious", name
    assert (out / "t.tex").read_text() == "table"
    assert (out / "fig.pdf").read_bytes()[:4] == b"%PDF"
    assert (out / "m.json").read_text().strip().startswith("{")
    assert np.load(out / "c.npz")["__format__"] == "gradflow.training/1"


def test_write_atomic_takes_text_only(tmp_path):
    with pytest.raises(TypeError, match="write_atomic writes text: got bytes"):
        gf.experiment.write_atomic(tmp_path / "x", b"bytes")
