"""Schedules as values: traversals derived from the graph, epoch schedules, within-batch orders."""

import re

import numpy as np
import pytest

from factorgraph.factor import Factor
from layers import create_factor_graph
from schedules import (Constant, EpochSchedule, Fixed, Schedule, Shuffled, Staircase, Step, backward_schedule,
                       forward_schedule, predict_schedule)

TEMPLATES = [(2, 2), ("Flatten",), ("Linear", 4), ("LeakyReLU", 0.1), ("Linear", 3), ("LeakyReLU", 0.2),
             ("Linear", 1), ("Regression", 0.01)]
L = len(TEMPLATES) - 1


@pytest.fixture(scope="module")
def fg():
    return create_factor_graph(TEMPLATES, batch_size=3, seed=0)


# --- traversals -----------------------------------------------------------------------------------

def test_forward_backward_predict_layer_orders(fg):
    s = fg.schedules
    assert s["forward"].layers() == tuple(range(L))
    assert s["backward"].layers() == tuple(reversed(range(L)))
    assert s["predict"].layers() == tuple(range(L))
    assert [st.target for st in s["forward"]] == ["output"] * L
    assert [st.target for st in s["backward"]] == ["input"] * L
    assert [st.node for st in s["forward"]] == [f"{layer.kind}{l}[0]" for l, layer in enumerate(fg.layers)]
    assert [st.node for st in s["predict"]] == [f"{layer.kind}{l}[pred]" for l, layer in enumerate(fg.layers)]
    assert len(s["forward"]) == L and [s.name for s in s.values()] == ["forward", "backward", "predict"]


def test_schedules_of_any_branch_are_the_same_layer_order(fg):
    G = fg.graph(branches=3)
    for b in range(3):
        assert forward_schedule(G, b).layers() == tuple(range(L))
        assert backward_schedule(G, b).layers() == tuple(reversed(range(L)))
        assert forward_schedule(G, b).steps[0].node == f"Flatten0[{b}]"
    assert predict_schedule(G) == fg.schedules["predict"]
    with pytest.raises(ValueError, match="no factors"):
        forward_schedule(G, 7)


def test_str_has_numbered_steps(fg):
    text = str(fg.schedules["forward"])
    lines = text.splitlines()
    assert lines[0].startswith("Schedule 'forward'") and f"({L} steps)" in lines[0]
    for k, (line, step) in enumerate(zip(lines[1:], fg.schedules["forward"]), start=1):
        assert re.fullmatch(rf"\s*{k}\. {re.escape(step.node)} -> output", line), line
    assert len(lines) == L + 1
    assert str(Step(2, "Linear2[0]", "input")) == "Linear2[0] -> input"


def test_schedules_are_values(fg):
    same = create_factor_graph(TEMPLATES, batch_size=5, seed=99)
    assert same.schedules == fg.schedules
    assert hash(same.schedules["forward"]) == hash(fg.schedules["forward"])
    other = create_factor_graph([(2, 2), ("Flatten",), ("Linear", 4), ("LeakyReLU", 0.1), ("Linear", 1),
                                 ("Regression", 0.01)], batch_size=3, seed=0)
    for name in ("forward", "backward", "predict"):
        assert other.schedules[name] != fg.schedules[name]
    assert Schedule("x", (Step(0, "a", "output"),)) == Schedule("x", (Step(0, "a", "output"),))
    assert Schedule("x", (Step(0, "a", "output"),)) != Schedule("x", (Step(0, "a", "input"),))


# --- epoch schedules ------------------------------------------------------------------------------

def test_staircase():
    s = Staircase(9)
    assert s.iterations == (1, 1, 2, 2, 3, 3, 4, 4, 5, 5, 6, 6, 7, 7, 8, 8, 9, 9)
    assert list(s) == list(s.iterations) and len(s) == 18 and s.total == 90
    assert Staircase() == s
    assert Staircase(1).iterations == (1, 1)
    assert "total 90" in str(s) and "18 epochs" in str(s)


def test_constant():
    s = Constant(3, 2)
    assert s.iterations == (2, 2, 2) and s.total == 6 and len(s) == 3
    assert Constant(4).iterations == (1, 1, 1, 1)
    assert Constant(np.int64(2), np.int32(3)).iterations == (3, 3)
    assert all(type(k) is int for k in Constant(np.int64(2), np.int32(3)))


@pytest.mark.parametrize("iterations", [(), (0,), (1, 0), (-1,), (1.5,), (2.0,), (True,), ("2",), (None,)])
def test_epoch_schedule_rejects_non_positive_or_non_integers(iterations):
    with pytest.raises(ValueError, match="positive integers"):
        EpochSchedule("custom", iterations)


@pytest.mark.parametrize("args", [(0,), (3, 0), (3, 1.5), (2.5, 1), (-1, 1), (3, True)])
def test_constant_rejects_bad_arguments(args):
    with pytest.raises(ValueError):
        Constant(*args)


@pytest.mark.parametrize("top", [0, -2, 2.5])
def test_staircase_rejects_bad_top(top):
    with pytest.raises(ValueError):
        Staircase(top)


def test_epoch_schedule_is_a_hashable_value():
    s = EpochSchedule("custom", [3, 1, 2])
    assert s.iterations == (3, 1, 2) and hash(s) == hash(EpochSchedule("custom", (3, 1, 2)))
    with pytest.raises(Exception):
        s.iterations = (1,)


# --- within-batch orders --------------------------------------------------------------------------

def test_shuffled_is_a_reproducible_permutation():
    a = Shuffled().permutation(50, np.random.default_rng(5))
    b = Shuffled().permutation(50, np.random.default_rng(5))
    c = Shuffled().permutation(50, np.random.default_rng(6))
    np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(np.sort(a), np.arange(50))
    assert not np.array_equal(a, c) and not np.array_equal(a, np.arange(50))
    assert Shuffled() == Shuffled() and str(Shuffled()) == "Shuffled()"


def test_fixed_is_arange():
    np.testing.assert_array_equal(Fixed().permutation(7, np.random.default_rng(0)), np.arange(7))
    np.testing.assert_array_equal(Fixed().permutation(7, None), np.arange(7))
    assert str(Fixed()) == "Fixed()"


class Recorder(Factor):
    """Identity factor that records the example slot of every training forward and backward."""

    kind = "Recorder"

    def __init__(self):
        super().__init__()
        self.forwards, self.backwards = [], []

    def forward(self, m_in, i):
        self.forwards.append(i)
        return m_in

    def backward(self, m_out, i):
        self.backwards.append(i)
        return m_out

    def predict(self, m_in):
        return m_in


def recorded_graph(batch_size=5, seed=0):
    rec = Recorder()
    fg = create_factor_graph([(2,), ("Linear", 2), rec, ("LeakyReLU", 0.1), ("Linear", 1), ("Regression", 0.1)],
                             batch_size=batch_size, seed=seed)
    return fg, rec


def data(n):
    rng = np.random.default_rng(1)
    return rng.normal(size=(n, 2)), rng.normal(size=(n, 1))


def test_fixed_order_visits_examples_in_order():
    fg, rec = recorded_graph()
    X, Y = data(5)
    fg.train_batch(X, Y, num_training_its=3, order=Fixed())
    assert rec.forwards == [0, 1, 2, 3, 4] * 3
    assert rec.backwards == rec.forwards
    rec.forwards.clear()
    fg.train_batch(X[:3], Y[:3], num_training_its=1, order=Fixed())  # a short batch visits only its examples
    assert rec.forwards == [0, 1, 2]


def test_shuffled_order_is_drawn_once_per_call_from_the_graph_generator():
    fg, rec = recorded_graph()
    X, Y = data(5)
    expected_rng = np.random.default_rng()
    expected_rng.bit_generator.state = fg.rng.bit_generator.state
    perm = list(Shuffled().permutation(5, expected_rng))
    fg.train_batch(X, Y, num_training_its=2)  # default order is Shuffled()
    assert rec.forwards == perm * 2  # the same permutation for every iteration of one visit (SPEC 6.2)
    assert sorted(perm) == list(range(5))
    # the next call draws the next permutation from the same generator
    rec.forwards.clear()
    perm2 = list(Shuffled().permutation(5, expected_rng))
    fg.train_batch(X, Y, num_training_its=1, order=Shuffled())
    assert rec.forwards == perm2


def test_same_seed_same_training_order():
    X, Y = data(5)
    runs = []
    for _ in range(2):
        fg, rec = recorded_graph(seed=11)
        fg.train_batch(X, Y, num_training_its=1)
        fg.train_batch(X, Y, num_training_its=1)
        runs.append(rec.forwards)
    assert runs[0] == runs[1]


def test_passes_follow_the_schedule():
    fg, rec = recorded_graph()
    X, Y = data(5)
    out = fg.forward_pass(X[2], 2)
    assert rec.forwards == [2] and out.shape == (1,)
    fg.backward_pass(Y[2], 2)
    assert rec.backwards == [2]
