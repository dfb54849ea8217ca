"""The public surface researchers type (the API contract): a rename is a visible decision."""

import pytest

import gradflow as gf

CONTRACT = {
    "config": [
        "PRECISIONS",
        "DEFAULT",
        "matmul_precision",
        "set_matmul_precision",
        "use_matmul_precision",
        "matmul_scope",
        "wrap",
    ],
    "activations": ["Activation", "BUILTIN", "get", "names", "register", "unregister"],
    "initializers": ["get", "names", "weight_variance"],
    "analytic": [
        "chain_forward",
        "chain_grads",
        "chain_log_grads",
        "gradient_bound",
        "exploding_chain",
        "deep_linear_gain",
        "scaled_identity_mlp",
        "mlp_forward",
        "mlp_grads",
    ],
    "meanfield": [
        "q_map",
        "c_map",
        "q_star",
        "c_star",
        "chi1",
        "depth_scales",
        "critical_sw2",
        "phase_diagram",
    ],
    "spectra": ["jacobian_singular_values", "jacobian_moments"],
    "models": ["Chain", "MLP", "DeepLinear", "RNN"],
    "adapters": ["KINDS", "Model", "as_model"],
    "taps": ["KINDS", "Layer", "TapPlan", "leaf_paths", "trace"],
    "losses": ["LOSSES", "get_loss", "softmax_cross_entropy", "sigmoid_cross_entropy", "mse"],
    "probes": ["probe", "probe_rnn", "time_decay_rate"],
    "report": [
        "LayerReport",
        "RecurrentReport",
        "STATS",
        "verdict",
        "format_report",
        "to_frame",
        "plot_report",
    ],
    "history": ["Sign", "check_history"],
    "optim": [
        "layer_order",
        "LayerOrder",
        "clip_by_value",
        "clip_by_global_norm",
        "clip_by_layer_norm",
        "adaptive_grad_clip",
        "add_l1_decay",
        "add_l2_decay",
        "decay_mask",
        "monitor_grad_stats",
        "telemetry",
        "make_optimizer",
    ],
    "data": ["load_digits", "adding_problem", "teacher_student", "markov_sequences", "Sequences"],
    "training": ["TrainState", "TrainConfig", "train_fn", "fit", "evaluate"],
    "sweep": ["run", "load", "batched", "cpu_devices", "usable_cores", "in_use", "to_arrays"],
    "rng": ["IMPL", "NAMES", "key", "resolve", "threefry2x32"],
    "plotting": ["style", "figure", "savefig", "band", "COLORS"],
    "experiment": [
        "Experiment",
        "get",
        "names",
        "registry",
        "layout",
        "write_macros",
        "latex_table",
        "check_memory",
        "Config",
        "resolve_config",
        "stored_config",
        "fmt",
    ],
    "latex": ["fmt", "write_macros", "latex_table"],
}


def test_modules_reexported():
    assert set(CONTRACT) <= set(gf.__all__)
    assert gf.__version__


@pytest.mark.parametrize("module", sorted(CONTRACT))
def test_contract_names(module):
    mod = getattr(gf, module)
    missing = [n for n in CONTRACT[module] if not hasattr(mod, n)]
    assert not missing, f"gradflow.{module} lacks {missing}"
    if hasattr(mod, "__all__"):
        undefined = [n for n in mod.__all__ if not hasattr(mod, n)]
        assert not undefined, f"gradflow.{module}.__all__ names undefined {undefined}"


#: Names that moved out of gradflow.probes into their own modules: ``gf.probes.<name>`` still
#: works and is the same object.
MOVED_FROM_PROBES = {
    "losses": ["LOSSES", "get_loss", "softmax_cross_entropy", "sigmoid_cross_entropy", "mse"],
    "report": [
        "LayerReport",
        "RecurrentReport",
        "STATS",
        "VANISHING",
        "EXPLODING",
        "verdict",
        "format_report",
        "to_frame",
        "plot_report",
    ],
    "history": ["Sign", "check_history"],
}


@pytest.mark.parametrize("module", sorted(MOVED_FROM_PROBES))
def test_probes_keeps_the_names_that_moved(module):
    for name in MOVED_FROM_PROBES[module]:
        assert getattr(gf.probes, name) is getattr(getattr(gf, module), name), name


def test_activation_contract_values():
    act = gf.activations.get("sigmoid")
    assert act.sup_grad == 0.25 and act.name == "sigmoid"
    assert gf.initializers.weight_variance("xavier_normal", 30, 10) == pytest.approx(2 / 40)
