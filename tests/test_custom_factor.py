"""The custom-factor example (examples/custom_factor.py): messages, training, both template forms."""

import pathlib
import sys

import numpy as np
import pytest

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1] / "examples"))

import custom_factor  # noqa: E402
from custom_factor import TEMPLATES, Scale, make_data, train  # noqa: E402
from factorgraph import Gaussian  # noqa: E402
from layers import REGISTRY, create_factor_graph  # noqa: E402


def built(a, shape=(6,), constant_input=False):
    s = Scale(a)
    s.build(shape, 2, dtype=np.float64, rng=np.random.default_rng(0), constant_input=constant_input)
    return s


@pytest.mark.parametrize("a", [3.0, -0.5, 1e-3, 7])
def test_messages_match_moment_form(a):
    rng = np.random.default_rng(1)
    mean, var = rng.normal(size=6), rng.uniform(0.1, 2.0, size=6)
    s = built(a)
    fwd = s.forward(Gaussian.from_mean_var(mean, var), 0)
    np.testing.assert_allclose(fwd.mean, a * mean, rtol=1e-12)
    np.testing.assert_allclose(fwd.var, a * a * var, rtol=1e-12)
    back = s.backward(Gaussian.from_mean_var(mean, var), 1)
    np.testing.assert_allclose(back.mean, mean / a, rtol=1e-12)
    np.testing.assert_allclose(back.var, var / (a * a), rtol=1e-12)
    pred = s.predict(Gaussian.from_mean_var(np.tile(mean, (3, 1)), np.tile(var, (3, 1))))
    np.testing.assert_allclose(pred.mean, np.tile(a * mean, (3, 1)), rtol=1e-12)
    np.testing.assert_allclose(pred.var, np.tile(a * a * var, (3, 1)), rtol=1e-12)
    # backward inverts forward
    round_trip = s.backward(fwd, 0)
    np.testing.assert_allclose(round_trip.mean, mean, rtol=1e-12)
    np.testing.assert_allclose(round_trip.var, var, rtol=1e-12)


def test_uniform_message_stays_uniform():
    s = built(2.0)
    for m in (s.forward(Gaussian.uniform((6,)), 0), s.backward(Gaussian.uniform((6,)), 0)):
        assert np.all(m.tau == 0) and np.all(m.rho == 0)


def test_constant_input_scales_data_and_sends_nothing_back():
    s = built(2.0, constant_input=True)
    x = np.arange(6.0)
    np.testing.assert_array_equal(s.forward(x, 0), 2.0 * x)
    np.testing.assert_array_equal(s.predict(x[None]), 2.0 * x[None])
    assert s.backward(Gaussian.uniform((6,)), 0) is None


@pytest.mark.parametrize("a", [0, 0.0, float("nan"), float("inf"), True, "3"])
def test_bad_scale_is_rejected(a):
    with pytest.raises(ValueError):
        Scale(a)
    with pytest.raises(ValueError, match="template 2"):
        create_factor_graph([(2,), ("Linear", 1), ("Scale", a), ("Regression", 0.01)], batch_size=1)


def test_registered():
    assert REGISTRY["Scale"] is Scale and Scale.kind == "Scale"


def test_trains_to_low_rmse():
    fg, X, Y = train()
    assert fg.evaluate(X, Y)["rmse"] < 0.12  # data noise is 0.1
    np.testing.assert_allclose(fg.layers[0].params["W"].q.mean.ravel(), [0.5, -1.0], atol=0.02)
    Xt, Yt = make_data(n=100, seed=1)
    assert fg.evaluate(Xt, Yt)["rmse"] < 0.12


def test_instance_form_equals_registered_name_form():
    named, X, _ = train(TEMPLATES, seed=4)
    instance, _, _ = train([(2,), ("Linear", 1), Scale(3.0), ("Regression", 0.01)], seed=4)
    assert [layer.kind for layer in named.layers] == [layer.kind for layer in instance.layers]
    assert named.schedules == instance.schedules
    s1, s2 = named.state(), instance.state()
    assert s1.keys() == s2.keys()
    for key in s1:
        np.testing.assert_array_equal(s1[key], s2[key])
    for a, b in zip(named.predict(X), instance.predict(X)):
        np.testing.assert_array_equal(a, b)


def test_scale_before_the_first_linear_equals_scaled_data():
    X, Y = make_data(n=50)
    scaled = create_factor_graph([(2,), ("Scale", 2.0), ("Linear", 1), ("Regression", 0.01)], batch_size=50, seed=2)
    plain = create_factor_graph([(2,), ("Linear", 1), ("Regression", 0.01)], batch_size=50, seed=2)
    scaled.train_batch(X, Y, num_training_its=2)
    plain.train_batch(2.0 * X, Y, num_training_its=2)
    for a, b in zip(scaled.predict(X), plain.predict(2.0 * X)):
        np.testing.assert_allclose(a, b, rtol=1e-10)


def test_scale_between_hidden_layers_trains():
    X, Y = make_data(n=40)
    fg = create_factor_graph([(2,), ("Linear", 8), ("Scale", 0.5), ("LeakyReLU", 0.1), ("Linear", 1),
                              ("Regression", 0.01)], batch_size=40, seed=0)
    before = fg.evaluate(X, Y)["rmse"]
    fg.train_batch(X, Y, num_training_its=3)
    mean, var = fg.predict(X)
    assert np.all(np.isfinite(mean)) and np.all(var > 0)
    assert fg.evaluate(X, Y)["rmse"] < before


def test_main_prints_rmse(capsys):
    custom_factor.main()
    out = capsys.readouterr().out
    assert "RMSE" in out and "Scale" in out
