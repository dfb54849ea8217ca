"""gradflow.taps: the layers a traced program runs, in order, and exact taps of their outputs."""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax

from gradflow import taps

KEY = jax.random.key(0)


def _names(fn, params, x, *rest):
    return [row.name for row in taps.trace(fn, params, x, *rest).layers]


def _check_exact(fn, params, x, *rest):
    """apply() with zero perturbations returns fn's outputs bit for bit."""
    plan = taps.trace(fn, params, x, *rest)
    out, values = plan.apply(params, x, *rest)
    ref = fn(params, x, *rest)
    for a, b in zip(jax.tree.leaves(out), jax.tree.leaves(ref)):
        np.testing.assert_array_equal(a, b)
    return plan, values


def test_leaf_paths_name_dicts_sequences_and_attributes():
    tree = {"a": {"kernel": 1.0, "bias": 2.0}, "layers": [3.0, {"w": 4.0}]}
    assert taps.leaf_paths(tree) == (
        ("a", "bias"),
        ("a", "kernel"),
        ("layers", "0"),
        ("layers", "1", "w"),
    )


def test_plain_function_layers_follow_the_dataflow_not_the_names():
    params = {"z": jnp.ones((3, 4)), "a": jnp.ones((4, 2)), "b_z": jnp.zeros(4)}
    fn = lambda p, x: jnp.tanh(x @ p["z"] + p["b_z"]) @ p["a"]
    plan, _ = _check_exact(fn, params, jnp.ones((5, 3)))
    assert [r.name for r in plan.layers] == ["z", "a"]
    z = plan.layers[0]
    # leaves in jax.tree order: a, b_z, z; the bias added to z's output belongs to z's layer
    # (top-level leaves share one namespace)
    assert z.weight == ((2, ()),) and z.bias == ((1, ()),)
    assert z.shape == (5, 4) and z.batch_axis == 0 and z.channel_axes == (1,)


def test_tied_embedding_gives_a_row_per_use():
    class Tied(nn.Module):
        @nn.compact
        def __call__(self, tokens):
            emb = nn.Embed(7, 4, name="embed")
            return emb.attend(jnp.tanh(emb(tokens)))

    m = Tied()
    tok = jnp.zeros((2, 3), jnp.int32)
    v = m.init(KEY, tok)
    plan, _ = _check_exact(lambda p, x: m.apply({"params": p}, x), v["params"], tok)
    assert [(r.name, r.kind) for r in plan.layers] == [
        ("embed", "embedding"),
        ("embed#2", "dense"),
    ]


def test_nested_jit_is_followed_and_remat_is_kept():
    params = {"l1": {"w": jnp.ones((3, 3))}, "l2": {"w": jnp.ones((3, 2))}}

    @jax.jit
    def layer(w, h):
        return jnp.sin(h @ w)

    def fn(p, x):
        h = layer(p["l1"]["w"], x)
        return jax.checkpoint(lambda h: h @ p["l2"]["w"])(h)

    plan, values = _check_exact(fn, params, jnp.ones((4, 3)))
    assert [r.name for r in plan.layers] == ["l1", "l2"]
    assert values[plan.layers[1].chain].shape == (4, 2)
    assert "remat" in str(jax.make_jaxpr(lambda p: plan.apply(p, jnp.ones((4, 3)))[0])(params))


def test_scan_over_stacked_weights_reports_each_iteration_in_run_order():
    w = jax.random.normal(KEY, (4, 3, 3))

    def fn(p, x, reverse):
        h, _ = jax.lax.scan(lambda h, wi: (jnp.tanh(h @ wi), None), x, p["w"], reverse=reverse)
        return h

    x = jnp.ones((2, 3))
    for reverse, order in ((False, [0, 1, 2, 3]), (True, [3, 2, 1, 0])):
        plan, values = _check_exact(lambda p, x, r=reverse: fn(p, x, r), {"w": w}, x)
        assert [r.name for r in plan.layers] == [f"w[{t}]" for t in order]
        assert [r.weight for r in plan.layers] == [((0, (t,)),) for t in order]
        assert values[0].shape == (4, 2, 3) and plan.layers[0].shape == (2, 3)


def _stack_axis0(arrays, how):
    """``jnp.stack(arrays)`` as different jax versions trace it: the ``stack`` primitive, or a
    unit axis inserted into each leaf (``expand_dims``: ``broadcast_in_dim`` or ``reshape``)
    and ``concatenate`` (in chunks, as ``jnp.concatenate`` does for long lists)."""
    if how == "stack":
        return jnp.stack(arrays)
    if how == "broadcast_in_dim":
        units = [
            lax.broadcast_in_dim(a, (1, *a.shape), tuple(range(1, a.ndim + 1))) for a in arrays
        ]
    else:
        units = [lax.reshape(a, (1, *a.shape)) for a in arrays]
    return lax.concatenate([lax.concatenate(units[:2], 0), lax.concatenate(units[2:], 0)], 0)


@pytest.mark.parametrize("how", ["stack", "broadcast_in_dim", "reshape"])
def test_scan_over_a_stack_of_separate_leaves_gives_each_leaf_its_own_row(how):
    """A scan over parameters stacked from separate leaves (gradflow.models' scanned MLP):
    iteration t is the layer of leaf t, named by its owner, with leaf t's weight, bias and
    fan-in axes, in run order."""
    params = {
        f"l{i}": {"w": jax.random.normal(jax.random.key(i), (3, 3)), "b": jnp.full(3, 0.1 * i)}
        for i in range(4)
    }
    params["out"] = {"w": jnp.ones((3, 2))}
    names = [f"l{i}" for i in range(4)]

    def fn(p, x, reverse):
        ws = _stack_axis0([p[n]["w"] for n in names], how)
        bs = _stack_axis0([p[n]["b"] for n in names], how)
        h, _ = lax.scan(
            lambda h, wb: (jnp.tanh(h @ wb[0] + wb[1]), None), x, (ws, bs), reverse=reverse
        )
        return h @ p["out"]["w"]

    paths = taps.leaf_paths(params)
    leaf = {path: i for i, path in enumerate(paths)}
    x = jnp.ones((5, 3))
    for reverse, order in ((False, [0, 1, 2, 3]), (True, [3, 2, 1, 0])):
        plan, values = _check_exact(lambda p, x, r=reverse: fn(p, x, r), params, x)
        rows = plan.layers[:-1]
        assert [r.name for r in plan.layers] == [f"l{t}" for t in order] + ["out"]
        assert [r.owner for r in rows] == [(f"l{t}",) for t in order]
        assert [r.weight for r in rows] == [((leaf[(f"l{t}", "w")], ()),) for t in order]
        assert [r.bias for r in rows] == [((leaf[(f"l{t}", "b")], ()),) for t in order]
        assert [r.fan_in for r in rows] == [((leaf[(f"l{t}", "w")], (0,)),) for t in order]
        assert [r.select for r in rows] == [(t,) for t in order] and rows[0].shape == (5, 3)
        # the tapped value of iteration t is layer t's output
        h = x
        for t in order:
            h_next = h @ params[f"l{t}"]["w"] + params[f"l{t}"]["b"]
            np.testing.assert_allclose(plan.output(values, rows[order.index(t)]), h_next, rtol=1e-6)
            h = jnp.tanh(h_next)


def test_a_stack_not_sliced_leaf_by_leaf_is_a_shared_weight():
    """Stacked along another axis, iteration t does not see leaf t: one row for the scan, its
    iterations are positions (as for any weight shared across iterations); the same stack
    scanned along its stacking axis gives a row per leaf."""
    params = {f"l{i}": {"w": jnp.eye(3) * (i + 1)} for i in range(3)}

    def fn(p, x):
        ws = jnp.stack([p[f"l{i}"]["w"] for i in range(3)], axis=1)  # (3, 3 layers, 3)
        h, _ = lax.scan(lambda h, w: (jnp.tanh(h @ w), None), x, ws)
        h, _ = lax.scan(lambda h, w: (h @ w, None), h, jnp.swapaxes(ws, 0, 1))
        return h

    plan, _ = _check_exact(fn, params, jnp.ones((2, 3)))
    assert [(r.name, r.select) for r in plan.layers] == [
        ("l0", (None,)),
        ("l0#2", (0,)),
        ("l1", (1,)),
        ("l2", (2,)),
    ]
    assert plan.layers[0].weight == ((0, ()), (1, ()), (2, ()))


def test_nested_scans_index_the_leaf_axis_by_axis_and_another_axis_is_shared():
    """Nested scans over a (2, 3, n, n) leaf give one row per (i, j) holding w[i, j]; a scan
    along the leaf's axis 1 (after a transpose) does not select w[t], so the leaf is one weight
    shared by every iteration (it used to give rows indexed along axis 0, the wrong slices)."""
    w = jax.random.normal(KEY, (2, 3, 4, 4)) / 2

    def nested(p, x):
        def outer(h, wi):
            h, _ = lax.scan(lambda h, wij: (jnp.tanh(h @ wij), None), h, wi)
            return h, None

        return lax.scan(outer, x, p["w"])[0]

    x = jnp.ones((5, 4))
    plan, values = _check_exact(nested, {"w": w}, x)
    assert [r.name for r in plan.layers] == [f"w[{i}][{j}]" for i in range(2) for j in range(3)]
    assert [r.weight for r in plan.layers] == [((0, (i, j)),) for i in range(2) for j in range(3)]
    h = x
    for r, (i, j) in zip(plan.layers, [(i, j) for i in range(2) for j in range(3)]):
        np.testing.assert_allclose(plan.output(values, r), h @ w[i, j], rtol=1e-6)
        h = jnp.tanh(h @ w[i, j])

    v = w[0]  # (3 layers, 4, 4), scanned along axis 1 of the leaf
    plan, _ = _check_exact(
        lambda p, x: lax.scan(lambda h, wt: (jnp.tanh(h @ wt), None), x, p["v"].swapaxes(0, 1))[0],
        {"v": v.swapaxes(0, 1)},
        x,
    )
    assert [(r.name, r.weight, r.select) for r in plan.layers] == [("v", ((0, ()),), (None,))]


def test_scan_with_shared_weights_is_one_row_whose_positions_are_the_steps():
    def fn(p, x):  # x: (batch, time, features); a vanilla RNN cell
        def step(h, xt):
            h = jnp.tanh(xt @ p["cell"]["wx"] + h @ p["cell"]["wh"])
            return h, h

        _, hs = jax.lax.scan(step, jnp.zeros((x.shape[0], 3)), jnp.swapaxes(x, 0, 1))
        return hs[-1] @ p["out"]["w"]

    params = {
        "cell": {"wx": jnp.ones((2, 3)) / 3, "wh": jnp.eye(3) / 2},
        "out": {"w": jnp.ones((3, 1))},
    }
    plan, _ = _check_exact(fn, params, jnp.ones((5, 7, 2)))
    rows = {r.name: r for r in plan.layers}
    assert list(rows) == ["cell", "cell#2", "out"]
    assert rows["cell"].select == (None,) and rows["cell"].shape == (7, 5, 3)
    assert rows["cell"].batch_axis == 1


def test_norm_layers_with_and_without_bias_tap_the_normalised_output():
    for use_bias in (True, False):
        for norm in (nn.LayerNorm, nn.RMSNorm):
            if norm is nn.RMSNorm and use_bias:
                continue
            kw = {"use_bias": use_bias} if norm is nn.LayerNorm else {}

            class Net(nn.Module):
                @nn.compact
                def __call__(self, x, norm=norm, kw=kw):
                    return nn.Dense(2)(norm(name="norm", **kw)(nn.Dense(4)(x)) + x.sum())

            m = Net()
            x = jax.random.normal(KEY, (3, 5))
            v = m.init(KEY, x)
            fn = lambda p, x, m=m: m.apply({"params": p}, x)
            plan, values = _check_exact(fn, v["params"], x)
            row = next(r for r in plan.layers if r.name == "norm")
            assert row.kind == "norm"
            captured = m.apply(v, x, capture_intermediates=True, mutable=["intermediates"])[1]
            want = captured["intermediates"]["norm"]["__call__"][0]
            np.testing.assert_allclose(values[row.chain], want, rtol=1e-6, atol=1e-6)


def test_a_parameter_only_added_is_not_a_layer_and_custom_vjp_bodies_are_not_seen():
    @jax.custom_vjp
    def hidden(x, w):
        return x @ w

    hidden.defvjp(lambda x, w: (x @ w, (x, w)), lambda r, g: (g @ r[1].T, r[0].T @ g))
    params = {"pos": jnp.ones(3), "w": jnp.ones((3, 3)), "v": jnp.ones((3, 2))}
    fn = lambda p, x: hidden(x + p["pos"], p["w"]) @ p["v"]
    assert _names(fn, params, jnp.ones((4, 3))) == ["v"]


def test_example_axis_found_when_the_batch_is_not_leading():
    def fn(p, x):  # works time-major inside
        h = jnp.swapaxes(x, 0, 1) @ p["w"]  # (time, batch, 4)
        return h.mean(0)

    plan = taps.trace(fn, {"w": jnp.ones((3, 4))}, jnp.ones((2, 5, 3)))
    assert plan.layers[0].batch_axis == 1 and plan.layers[0].shape == (5, 2, 4)


def test_trace_rejects_paths_of_the_wrong_length():
    with pytest.raises(ValueError, match="paths has 1 entries for 2 parameter leaves"):
        taps.trace(
            lambda p, x: x @ p[0] @ p[1], [jnp.ones((2, 2))] * 2, jnp.ones((1, 2)), paths=[("a",)]
        )
