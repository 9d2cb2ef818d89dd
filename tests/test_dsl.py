"""The layer-template DSL (``layers.create_factor_graph``) and FactorGraph input validation.

Happy paths: shape tracking, constant-input detection, prior options, SPEC 9 prior formulas (computed
here independently from the constants printed in SPEC 9), dtype propagation, seeding.
Mistakes: every template error is a ``ValueError`` naming the template index; bad inputs to the passes
raise ``ValueError`` and leave the graph's state untouched.
"""

import copy
import math

import numpy as np
import pytest

from layers import create_factor_graph

# SPEC 9 constants, written out here rather than imported, so the test is independent of config.py
TARGET_VAR, BIAS_VAR = 1.5, 0.5
A, B = 0.44958619556324186, 0.8040586726631379

MLP = [(3,), ("Linear", 4), ("LeakyReLU", 0.1), ("Linear", 2), ("Regression", 0.01)]


def linear_layers(fg):
    return [layer for layer in fg.layers if layer.kind == "Linear"]


# --- happy paths ---------------------------------------------------------------------------------

def test_shapes_are_tracked_through_flatten():
    fg = create_factor_graph([(28, 28, 1), ("Flatten",), ("Linear", 10), ("LeakyReLU", 0.1), ("Linear", 5),
                              ("Regression", 0.01)], batch_size=2, seed=0)
    assert [layer.kind for layer in fg.layers] == ["Flatten", "Linear", "LeakyReLU", "Linear", "Regression"]
    assert [layer.input_shape for layer in fg.layers] == [(28, 28, 1), (784,), (10,), (10,), (5,)]
    assert [layer.output_shape_ for layer in fg.layers] == [(784,), (10,), (10,), (5,), (5,)]
    assert fg.input_shape == (28, 28, 1) and fg.output_shape == (5,)
    assert fg.layers[1].params["W"].shape == (784, 10) and fg.layers[1].params["c"].shape == (10,)
    assert fg.layers[3].params["W"].shape == (10, 5)
    assert fg.num_parameters() == 784 * 10 + 10 + 10 * 5 + 5


def test_only_the_first_linear_has_constant_input():
    fg = create_factor_graph([(4,), ("Flatten",), ("Linear", 3), ("LeakyReLU", 0.1), ("Linear", 3),
                              ("LeakyReLU", 0.2), ("Linear", 1), ("Regression", 0.1)], batch_size=2, seed=0)
    assert [lin.constant_input for lin in linear_layers(fg)] == [True, False, False]
    assert fg.layers[0].constant_input  # Flatten before the first weighted layer sees data
    assert not hasattr(linear_layers(fg)[0], "m_to_x")  # constant-input variant keeps no input messages
    assert all(hasattr(lin, "m_to_x") for lin in linear_layers(fg)[1:])


def test_lists_and_numpy_integers_are_accepted():
    fg = create_factor_graph([[np.int64(3)], ["Linear", np.int32(2)], ["Regression", 0.1]], batch_size=1)
    assert fg.input_shape == (3,) and fg.output_shape == (2,)


def test_options_set_the_prior_slot_exactly():
    opts = {"prior_mean": 0.25, "prior_var": 0.3, "bias_prior_mean": -0.5, "bias_prior_var": 2.0}
    fg = create_factor_graph([(3,), ("Linear", 4), ("LeakyReLU", 0.1), ("Linear", 2, opts),
                              ("Regression", 0.01)], batch_size=3, seed=1)
    W, c = fg.layers[2].params["W"], fg.layers[2].params["c"]
    np.testing.assert_allclose(W.prior.mean, np.full((4, 2), 0.25), rtol=1e-15)
    np.testing.assert_allclose(W.prior.var, np.full((4, 2), 0.3), rtol=1e-15)
    np.testing.assert_allclose(c.prior.mean, np.full(2, -0.5), rtol=1e-15)
    np.testing.assert_allclose(c.prior.var, np.full(2, 2.0), rtol=1e-15)
    # the prior sits in slot B; per-example slots are uniform; q equals the prior
    assert np.all(W.msgs.tau[:3] == 0) and np.all(W.msgs.rho[:3] == 0)
    np.testing.assert_array_equal(W.q.tau, W.msgs.tau[3])
    np.testing.assert_array_equal(W.q.rho, W.msgs.rho[3])
    # the layer without options keeps the defaults: bias N(0, 0.5)
    c0 = fg.layers[0].params["c"]
    np.testing.assert_allclose(c0.prior.mean, 0.0)
    np.testing.assert_allclose(c0.prior.var, BIAS_VAR, rtol=1e-15)


def test_prior_var_option_on_first_layer_overrides_spec_formula():
    fg = create_factor_graph([(5,), ("Linear", 2, {"prior_var": 0.125}), ("Regression", 0.1)], batch_size=1)
    np.testing.assert_allclose(fg.layers[0].params["W"].prior.var, 0.125, rtol=1e-15)


@pytest.mark.parametrize("d_in,d_out", [(6, 3), (3, 6), (256, 256)])
def test_prior_formulas_match_spec9(d_in, d_out):
    templates = lambda formula: [(2,), ("Linear", d_in, {"prior": formula}), ("LeakyReLU", 0.1),
                                 ("Linear", d_out, {"prior": formula}), ("Regression", 0.01)]
    code = create_factor_graph(templates("code"), batch_size=1, seed=0)
    thesis = create_factor_graph(templates("thesis"), batch_size=1, seed=0)
    r = min(1.0, d_out / d_in)
    want_code = (TARGET_VAR - r * B) / (d_in * A + B)
    want_thesis = (TARGET_VAR - r * B) / (d_in * (A + B))
    np.testing.assert_allclose(code.layers[2].params["W"].prior.var, want_code, rtol=1e-12)
    np.testing.assert_allclose(thesis.layers[2].params["W"].prior.var, want_thesis, rtol=1e-12)
    # the first layer is 1.5 / d_in whatever the formula
    for fg in (code, thesis):
        np.testing.assert_allclose(fg.layers[0].params["W"].prior.var, TARGET_VAR / 2, rtol=1e-12)
    if d_in == d_out == 256:  # the numbers quoted in SPEC 9
        assert round(want_code, 5) == 0.00600 and round(want_thesis, 5) == 0.00217


def test_prior_means_follow_spectral_scale():
    d_in, d_out = 400, 100
    fg = create_factor_graph([(d_in,), ("Linear", d_out), ("Regression", 0.1)], batch_size=1, seed=3)
    means = fg.layers[0].params["W"].prior.mean
    sigma = min(1.0, math.sqrt(d_out / d_in)) / math.sqrt(d_in)
    assert abs(means.std() / sigma - 1) < 0.02 and abs(means.mean()) < 4 * sigma / math.sqrt(means.size)


def test_default_prior_is_code_formula():
    a = create_factor_graph(MLP, batch_size=1, seed=0)
    want = (TARGET_VAR - min(1.0, 2 / 4) * B) / (4 * A + B)
    np.testing.assert_allclose(a.layers[2].params["W"].prior.var, want, rtol=1e-12)


def test_float32_propagates_to_every_stored_array():
    fg = create_factor_graph([(2, 2, 1), ("Flatten",), ("Linear", 4), ("LeakyReLU", 0.1), ("Linear", 2),
                              ("Regression", 0.01)], batch_size=3, seed=0, dtype=np.float32)
    rng = np.random.default_rng(0)
    fg.train_batch(rng.normal(size=(3, 2, 2, 1)), rng.normal(size=(3, 2)), num_training_its=2)
    assert fg.dtype == np.float32
    for layer in fg.layers:
        assert layer.dtype == np.float32
        for slots in layer.params.values():
            for arr in (slots.msgs.tau, slots.msgs.rho, slots.q.tau, slots.q.rho):
                assert arr.dtype == np.float32
    floats = {k: v.dtype for k, v in fg.state().items() if v.dtype.kind == "f"}
    assert floats and set(floats.values()) == {np.dtype(np.float32)}, floats


def test_float32_messages_and_predictions():
    fg = create_factor_graph(MLP, batch_size=2, seed=0, dtype=np.float32)
    assert fg.forward_pass(np.ones(3), 0).dtype == np.float32
    mean, var = fg.predict(np.ones((2, 3)))
    assert mean.dtype == var.dtype == np.float32


def test_same_seed_same_priors_different_seed_different():
    def priors(seed):
        fg = create_factor_graph(MLP, batch_size=2, seed=seed)
        return [s.prior.mean.copy() for lin in linear_layers(fg) for s in lin.params.values()]

    for a, b in zip(priors(7), priors(7)):
        np.testing.assert_array_equal(a, b)
    diff = [not np.array_equal(a, b) for a, b in zip(priors(7), priors(8))]
    assert diff == [True, False, True, False]  # weight means are random, bias means are 0


def test_dtype_must_be_float32_or_float64():
    for bad in (np.int32, np.float16, "complex128", "not-a-dtype"):
        with pytest.raises(TypeError):
            create_factor_graph(MLP, batch_size=1, dtype=bad)


# --- template mistakes: ValueError naming the template index --------------------------------------

R = ("Regression", 0.1)
BAD_TEMPLATES = [
    ("unknown layer", [(3,), ("Conv9", 2), R], 1),
    ("Linear width 0", [(3,), ("Linear", 0), R], 1),
    ("Linear width negative", [(3,), ("Linear", 4), ("LeakyReLU", 0.1), ("Linear", -2), R], 3),
    ("Linear width float", [(3,), ("Linear", 2.0), R], 1),
    ("Linear width bool", [(3,), ("Linear", True), R], 1),
    ("Linear width missing", [(3,), ("Linear",), R], 1),
    ("unknown option", [(3,), ("Linear", 2, {"prior_variance": 1.0}), R], 1),
    ("prior_var zero", [(3,), ("Linear", 2, {"prior_var": 0.0}), R], 1),
    ("prior_var negative", [(3,), ("Linear", 2), ("LeakyReLU", 0.1), ("Linear", 1, {"prior_var": -1}), R], 3),
    ("bias_prior_var zero", [(3,), ("Linear", 2, {"bias_prior_var": 0}), R], 1),
    ("prior_var not a number", [(3,), ("Linear", 2, {"prior_var": "big"}), R], 1),
    ("slope 0", [(3,), ("Linear", 2), ("LeakyReLU", 0.0), ("Linear", 1), R], 2),
    ("slope 1", [(3,), ("Linear", 2), ("LeakyReLU", 1.0), ("Linear", 1), R], 2),
    ("slope negative", [(3,), ("Linear", 2), ("LeakyReLU", -0.1), ("Linear", 1), R], 2),
    ("slope string", [(3,), ("Linear", 2), ("LeakyReLU", "0.1"), ("Linear", 1), R], 2),
    ("LeakyReLU first", [(3,), ("LeakyReLU", 0.1), ("Linear", 1), R], 1),
    ("LeakyReLU after Flatten, before Linear", [(3, 1), ("Flatten",), ("LeakyReLU", 0.1), ("Linear", 1), R], 2),
    ("Linear on 3-D input", [(28, 28, 1), ("Linear", 10), R], 1),
    ("Linear on 2-D input", [(2, 3), ("Linear", 4), R], 1),
    ("Regression not last", [(3,), ("Linear", 2), R, ("Linear", 1), R], 2),
    ("no signal at the end", [(3,), ("Linear", 2)], 1),
    ("no signal after LeakyReLU", [(3,), ("Linear", 2), ("LeakyReLU", 0.1)], 2),
    ("Regression beta2 zero", [(3,), ("Linear", 2), ("Regression", 0)], 2),
    ("input shape zero", [(0,), ("Linear", 1), R], 0),
    ("input shape string", [("a",), ("Linear", 1), R], 0),
    ("input shape int", [5, ("Linear", 1), R], 0),
    ("input shape empty", [(), ("Linear", 1), R], 0),
    ("input shape float", [(3.0,), ("Linear", 1), R], 0),
    ("template is a string", [(3,), "Linear", R], 1),
    ("template is an int", [(3,), ("Linear", 2), 7, R], 2),
    ("template without name", [(3,), (2, "Linear"), R], 1),
    ("empty template", [(3,), ("Linear", 2), (), R], 2),
    ("no weighted layer", [(3,), R], 1),
    ("no weighted layer, only Flatten", [(3, 2), ("Flatten",), R], 2),
]


@pytest.mark.parametrize("what,templates,k", BAD_TEMPLATES, ids=[c[0] for c in BAD_TEMPLATES])
def test_template_mistakes_name_the_template(what, templates, k):
    with pytest.raises(ValueError, match=f"template {k}\\b"):
        create_factor_graph(templates, batch_size=1)


def test_unknown_prior_formula_names_the_template():
    with pytest.raises(ValueError, match="template 3"):
        create_factor_graph([(3,), ("Linear", 2), ("LeakyReLU", 0.1), ("Linear", 1, {"prior": "paper"}), R],
                            batch_size=1)


@pytest.mark.parametrize("templates", [[], [(3,)], "Linear", None])
def test_templates_must_be_a_list_of_at_least_two(templates):
    with pytest.raises(ValueError):
        create_factor_graph(templates, batch_size=1)


@pytest.mark.parametrize("batch_size", [0, -1, 2.0, "4"])
def test_bad_batch_size(batch_size):
    with pytest.raises(ValueError, match="batch_size"):
        create_factor_graph(MLP, batch_size=batch_size)


# --- FactorGraph input validation leaves the state untouched ---------------------------------------

B_SIZE = 4


@pytest.fixture
def trained():
    """A small trained graph with data (X, Y) of B_SIZE examples."""
    rng = np.random.default_rng(0)
    X, Y = rng.normal(size=(B_SIZE, 3)), rng.normal(size=(B_SIZE, 2))
    fg = create_factor_graph(MLP, batch_size=B_SIZE, seed=0)
    fg.train_batch(X, Y, num_training_its=1)
    return fg, X, Y


def snapshot(fg):
    slots = {(l, name): (s.msgs.tau.copy(), s.msgs.rho.copy(), s.q.tau.copy(), s.q.rho.copy())
             for l, layer in fg.weighted_layers() for name, s in layer.params.items()}
    return slots, copy.deepcopy(fg.state())


def assert_unchanged(fg, snap):
    slots, state = snapshot(fg)
    assert slots.keys() == snap[0].keys() and state.keys() == snap[1].keys()
    for key in slots:
        for new, old in zip(slots[key], snap[0][key]):
            np.testing.assert_array_equal(new, old)
    for key in state:
        np.testing.assert_array_equal(state[key], snap[1][key])


def with_nan(a, idx=(0, 0)):
    a = a.copy()
    a[idx] = np.nan
    return a


BAD_CALLS = {
    "forward_pass: x wrong shape": lambda fg, X, Y: fg.forward_pass(X[0, :2], 0),
    "forward_pass: x batched": lambda fg, X, Y: fg.forward_pass(X, 0),
    "forward_pass: x NaN": lambda fg, X, Y: fg.forward_pass(with_nan(X)[0], 0),
    "forward_pass: x inf": lambda fg, X, Y: fg.forward_pass(np.array([1.0, np.inf, 0.0]), 0),
    "forward_pass: slot = B": lambda fg, X, Y: fg.forward_pass(X[0], B_SIZE),
    "forward_pass: slot -1": lambda fg, X, Y: fg.forward_pass(X[0], -1),
    "forward_pass: slot float": lambda fg, X, Y: fg.forward_pass(X[0], 1.0),
    "forward_pass: slot str": lambda fg, X, Y: fg.forward_pass(X[0], "0"),
    "backward_pass: y wrong shape": lambda fg, X, Y: fg.backward_pass(Y[0, :1], 0),
    "backward_pass: y NaN": lambda fg, X, Y: fg.backward_pass(with_nan(Y)[0], 0),
    "backward_pass: slot = B": lambda fg, X, Y: fg.backward_pass(Y[0], B_SIZE),
    "train_batch: X wrong shape": lambda fg, X, Y: fg.train_batch(X[:, :2], Y),
    "train_batch: X 1-D": lambda fg, X, Y: fg.train_batch(X[0], Y),
    "train_batch: X NaN": lambda fg, X, Y: fg.train_batch(with_nan(X, (2, 1)), Y),
    "train_batch: Y NaN": lambda fg, X, Y: fg.train_batch(X, with_nan(Y, (3, 1))),
    "train_batch: Y inf": lambda fg, X, Y: fg.train_batch(X, np.where(Y > 0, np.inf, Y)),
    "train_batch: Y wrong shape": lambda fg, X, Y: fg.train_batch(X, Y[:, :1]),
    "train_batch: Y 1-D": lambda fg, X, Y: fg.train_batch(X, Y[:, 0]),
    "train_batch: Y too few rows": lambda fg, X, Y: fg.train_batch(X, Y[:-1]),
    "train_batch: more examples than batch_size": lambda fg, X, Y: fg.train_batch(
        np.concatenate([X, X[:1]]), np.concatenate([Y, Y[:1]])),
    "train_batch: num_training_its 0": lambda fg, X, Y: fg.train_batch(X, Y, num_training_its=0),
    "train_batch: num_training_its float": lambda fg, X, Y: fg.train_batch(X, Y, num_training_its=1.0),
    "predict: X wrong shape": lambda fg, X, Y: fg.predict(X[:, :2]),
    "predict: X 1-D": lambda fg, X, Y: fg.predict(X[0]),
    "predict: X NaN": lambda fg, X, Y: fg.predict(with_nan(X)),
    "evaluate: Y wrong shape": lambda fg, X, Y: fg.evaluate(X, Y[:, :1]),
}


@pytest.mark.parametrize("call", BAD_CALLS.values(), ids=BAD_CALLS.keys())
def test_bad_inputs_raise_and_leave_state_unchanged(trained, call):
    fg, X, Y = trained
    snap = snapshot(fg)
    with pytest.raises(ValueError):
        call(fg, X, Y)
    assert_unchanged(fg, snap)


def test_bool_slot_is_rejected(trained):
    fg, X, _ = trained
    with pytest.raises(ValueError, match="slot"):
        fg.forward_pass(X[0], True)


def test_valid_calls_after_rejected_ones_still_work(trained):
    fg, X, Y = trained
    with pytest.raises(ValueError):
        fg.train_batch(with_nan(X), Y)
    fg.train_batch(X[:2], Y[:2], num_training_its=1)  # fewer examples than slots is fine
    mean, var = fg.predict(X)
    assert mean.shape == var.shape == (B_SIZE, 2) and np.all(var > 0)
