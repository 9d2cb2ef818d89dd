"""Trainer invariants (SPEC 8): one batch with damping 1 equals train_batch; after every batch the
total equals prior x product of batch messages; batch priors do not mutate stored messages;
save/load/resume reproduces the uninterrupted run bit for bit."""

import numpy as np
import pytest

from layers import create_factor_graph
from schedules import Staircase
from trainer import Trainer, constant_damping, thesis_damping

TEMPLATES = [(3,), ("Linear", 6), ("LeakyReLU", 0.1), ("Linear", 2), ("Regression", 0.05)]


def _data(n=30, seed=0):
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, 3))
    Y = np.stack([np.sin(X[:, 0]) + 0.5 * X[:, 1], X[:, 2] ** 2 - 0.5], axis=1)
    return X, Y


def _marginals(fg):
    return {(l, k): (s.q.tau.copy(), s.q.rho.copy()) for l, layer in fg.weighted_layers()
            for k, s in layer.params.items()}


def test_damping_schedule_matches_spec_table():
    table = [1.000, 0.974, 0.955, 0.941, 0.930, 0.922, 0.917, 0.912, 0.909, 0.907]
    np.testing.assert_allclose([thesis_damping(e) for e in range(1, 11)], table, atol=6e-4)


def test_one_batch_damping_one_equals_train_batch():
    X, Y = _data(20)
    fg_a = create_factor_graph(TEMPLATES, batch_size=20, seed=5)
    fg_b = create_factor_graph(TEMPLATES, batch_size=20, seed=5)
    Trainer(fg_a, X, Y, damping=constant_damping(1.0), progress=False).train(1, 3)
    fg_b.train_batch(X, Y, 3)
    for key, (tau, rho) in _marginals(fg_a).items():
        tau_b, rho_b = _marginals(fg_b)[key]
        np.testing.assert_allclose(tau, tau_b, rtol=1e-12, atol=1e-12)
        np.testing.assert_allclose(rho, rho_b, rtol=1e-12, atol=1e-12)


def test_total_equals_prior_times_batch_messages_after_every_batch():
    X, Y = _data(50)
    fg = create_factor_graph(TEMPLATES, batch_size=16, seed=1)
    checked = []

    def check(tr, epoch, b):
        for key, m in tr.msgs.items():
            p = tr.prior[key]
            tau = p.tau + sum(m.tau[k] for k in range(tr.num_batches))  # explicit product of batch messages
            rho = p.rho + sum(m.rho[k] for k in range(tr.num_batches))
            np.testing.assert_allclose(tr.total[key].tau, tau, rtol=1e-9, atol=1e-9)
            np.testing.assert_allclose(tr.total[key].rho, rho, rtol=1e-9, atol=1e-9)
        checked.append((epoch, b))

    tr = Trainer(fg, X, Y, progress=False, callbacks={"on_batch_end": check})
    tr.train(num_epochs=3, num_training_its=2)
    assert len(checked) == 3 * tr.num_batches == 12


def test_batch_prior_leaves_stored_messages_untouched_and_divides_out_own_message():
    X, Y = _data(50)
    fg = create_factor_graph(TEMPLATES, batch_size=16, seed=1)
    tr = Trainer(fg, X, Y, progress=False)
    tr.train(num_epochs=2, num_training_its=1)
    before = {k: (m.tau.copy(), m.rho.copy()) for k, m in tr.msgs.items()}
    for b in range(tr.num_batches):
        P = tr.batch_prior(b)
        for (l, name), m in tr.msgs.items():
            np.testing.assert_array_equal(m.tau, before[(l, name)][0])
            np.testing.assert_allclose(P[l][name].rho + m.rho[b], tr.total[(l, name)].rho, rtol=1e-12)
    # the graph's batch prior slot after a batch is exactly P_b of the last visited batch
    assert all(np.all(P[l][n].rho > 0) for l in P for n in P[l])


def test_damped_message_is_ema_of_old_message_and_new_batch_likelihood():
    X, Y = _data(50)
    fg = create_factor_graph(TEMPLATES, batch_size=16, seed=1)
    old, checked = {}, []

    def check(tr, epoch, b):
        if epoch != 2:
            return
        n_b = tr.batches[b][1] - tr.batches[b][0]
        for l, layer in tr.fg.weighted_layers():
            for name, slots in layer.params.items():
                new = slots.likelihood(n_b)
                expected = 0.5 * old[(l, name)][b] + 0.5 * new.rho
                np.testing.assert_allclose(tr.msgs[(l, name)].rho[b], expected, rtol=1e-12)
        checked.append(b)

    tr = Trainer(fg, X, Y, damping=constant_damping(0.5), progress=False, callbacks={"on_batch_end": check})
    tr.train(1, 1)
    old.update({k: m.rho.copy() for k, m in tr.msgs.items()})
    tr.train(1, 1)
    assert sorted(checked) == list(range(tr.num_batches))


@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("order", [None, "parallel"])
def test_compiled_fold_equals_the_gaussian_arithmetic_bit_for_bit(dtype, order, monkeypatch):
    """The Trainer's compiled update after a batch (``sites_cpu.fold_message``: damp, total, store in one
    pass, in place) leaves the stored batch messages, the total and the marginals bit for bit where the
    Gaussian arithmetic it replaces leaves them: two epochs at damping 0.3 (the first from uniform
    messages), sequential and chunked orders, float64 and float32."""
    from schedules import Parallel

    from factorgraph.kernels import sites_cpu

    X, Y = _data(50)
    runs, calls = [], []
    fold = sites_cpu.fold_message
    monkeypatch.setattr(sites_cpu, "fold_message", lambda *a: calls.append(1) or fold(*a))
    for compiled in (True, False):
        if not compiled:
            assert len(calls) == 2 * 4 * 4  # epochs, batches, weight tensors
            monkeypatch.setattr(Trainer, "_compiled_arrays", staticmethod(lambda *gaussians: False))
        fg = create_factor_graph(TEMPLATES, batch_size=16, seed=4, dtype=dtype)
        tr = Trainer(fg, X, Y, damping=constant_damping(0.3), progress=False,
                     order=Parallel(4, 0.5) if order else None)
        tr.train(num_epochs=2, num_training_its=2)
        runs.append(tr)
    a, b = runs
    for key in a.msgs:
        for x, y in ((a.msgs[key], b.msgs[key]), (a.total[key], b.total[key])):
            assert x.tau.dtype == np.dtype(dtype)
            np.testing.assert_array_equal(x.tau, y.tau)
            np.testing.assert_array_equal(x.rho, y.rho)
    for key, (tau, rho) in _marginals(a.fg).items():
        np.testing.assert_array_equal(tau, _marginals(b.fg)[key][0])
        np.testing.assert_array_equal(rho, _marginals(b.fg)[key][1])


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("threads", [False, True])
def test_fold_message_kernel_equals_the_numpy_formula(dtype, threads, monkeypatch):
    """``fold_message`` against ``(1 - beta) old + beta new``, ``total + damped - old`` in NumPy, bit for bit,
    with infinities and NaN passed through as NumPy passes them, for beta 1 and 0.37, on one thread and in
    16 parts on all threads."""
    import contextlib

    from factorgraph import kernels
    from factorgraph.kernels import sites_cpu

    monkeypatch.setattr(sites_cpu, "THREADS_MIN", 1)

    rng = np.random.default_rng(2)
    for beta in (1.0, 0.37):
        total, old, new = (rng.normal(0, 10, (2, 203)).astype(dtype) for _ in range(3))  # rows: tau, rho
        old[0, :3] = [np.inf, -np.inf, np.nan]
        new[1, 3] = np.nan
        with np.errstate(invalid="ignore"):
            damped = (1 - beta) * old + beta * new
            want_total = total + damped - old
        got_total, store = total.copy(), old.copy()
        with np.errstate(invalid="ignore"), kernels.threaded() if threads else contextlib.nullcontext():
            sites_cpu.fold_message(got_total[0], got_total[1], store[0], store[1], new[0], new[1], beta)
        np.testing.assert_array_equal(store, damped)
        np.testing.assert_array_equal(got_total, want_total)
        assert store.dtype == got_total.dtype == dtype


def test_save_load_resume_reproduces_uninterrupted_run(tmp_path):
    X, Y = _data(40)
    full = Trainer(create_factor_graph(TEMPLATES, batch_size=16, seed=3), X, Y, progress=False)
    full.train(schedule=Staircase(2))  # iterations 1,1,2,2
    part = Trainer(create_factor_graph(TEMPLATES, batch_size=16, seed=3), X, Y, progress=False)
    part.train(num_epochs=2, num_training_its=1)
    path = tmp_path / "run.npz"
    part.save(path)
    resumed = Trainer.load(path, progress=False)
    assert resumed.epoch == 2
    resumed.train(num_epochs=2, num_training_its=2)
    m_full, v_full = full.fg.predict(X)
    m_res, v_res = resumed.fg.predict(X)
    np.testing.assert_array_equal(m_full, m_res)
    np.testing.assert_array_equal(v_full, v_res)
    for key in full.total:
        np.testing.assert_array_equal(full.total[key].tau, resumed.total[key].tau)


def test_load_rejects_other_files(tmp_path):
    path = tmp_path / "x.npz"
    np.savez(path, meta=np.array('{"format": "other"}'))
    with pytest.raises(ValueError, match="not a factorgraph trainer file"):
        Trainer.load(path)


def test_bad_data_and_schedule_are_rejected_before_any_state_change():
    X, Y = _data(20)
    fg = create_factor_graph(TEMPLATES, batch_size=8, seed=0)
    with pytest.raises(ValueError, match="shape"):
        Trainer(fg, X, Y[:, :1])
    Xn = X.copy()
    Xn[3, 1] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        Trainer(fg, Xn, Y)
    tr = Trainer(fg, X, Y, progress=False)
    with pytest.raises(TypeError):
        tr.train(schedule=[1, 2])
    assert tr.epoch == 0


def test_empty_data_is_refused():
    fg = create_factor_graph(TEMPLATES, batch_size=8, seed=0)
    with pytest.raises(ValueError, match="empty"):
        Trainer(fg, np.zeros((0, 3)), np.zeros((0, 2)))
    with pytest.raises(ValueError, match="no examples"):
        fg.train_batch(np.zeros((0, 3)), np.zeros((0, 2)))
    with pytest.raises(ValueError, match="no examples"):
        fg.evaluate(np.zeros((0, 3)), np.zeros((0, 2)))


def test_save_without_data_needs_it_back(tmp_path):
    X, Y = _data(40)
    tr = Trainer(create_factor_graph(TEMPLATES, batch_size=16, seed=3), X, Y, progress=False)
    tr.train(1, 1)
    tr.save(tmp_path / "small.npz", include_data=False)
    with pytest.raises(ValueError, match="without its training data"):
        Trainer.load(tmp_path / "small.npz")
    back = Trainer.load(tmp_path / "small.npz", X=X, Y=Y)
    tr.train(1, 2)
    back.train(1, 2)
    np.testing.assert_array_equal(tr.fg.predict(X)[0], back.fg.predict(X)[0])


def test_batch_likelihood_reuses_the_recompute_sums_only_while_no_slot_changed():
    """``likelihood()`` of all used slots returns the sums the exact recompute took (bitwise the direct
    sum); after any slot changes it sums the slots again."""
    from factorgraph.gaussian import Gaussian

    rng = np.random.default_rng(3)
    fg = create_factor_graph([(3,), ("Linear", 4), ("LeakyReLU", 0.1), ("Linear", 1), ("Regression", 0.1)],
                             batch_size=6, seed=0)
    X = rng.normal(size=(6, 3))
    fg.train_batch(X, X[:, :1] * 2, 2)
    slots = fg.layers[0].params["W"]
    direct = (slots.msgs.tau[:slots.used].sum(axis=0), slots.msgs.rho[:slots.used].sum(axis=0))
    got = slots.likelihood()
    np.testing.assert_array_equal(got.tau, direct[0])
    np.testing.assert_array_equal(got.rho, direct[1])
    got.tau += 1.0  # the caller owns the arrays it gets
    np.testing.assert_array_equal(slots.likelihood().tau, direct[0])
    new = Gaussian(slots.msgs.tau[2] + 0.5, slots.msgs.rho[2] * 2)
    slots.replace(2, new)
    after = slots.likelihood()
    np.testing.assert_array_equal(after.tau, slots.msgs.tau[:slots.used].sum(axis=0))
    assert not np.array_equal(after.tau, direct[0])
    half = slots.likelihood(3)
    np.testing.assert_array_equal(half.rho, slots.msgs.rho[:3].sum(axis=0))


@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_compiled_total_recompute_equals_numpy_bit_for_bit(dtype, monkeypatch):
    """The epoch's exact total ``Q = prior * prod_b W_msg[b]`` by ``sites_cpu.marginal_sums`` (threaded)
    equals NumPy's ``prior + msgs.sum(axis=0)`` bit for bit, after two epochs of stored messages."""
    from factorgraph import kernels

    X, Y = _data(50)
    tr = Trainer(create_factor_graph(TEMPLATES, batch_size=8, seed=2, dtype=dtype), X, Y,
                 damping=constant_damping(0.4), progress=False)
    tr.train(num_epochs=2)
    tr.recompute_total()
    compiled = {k: (g.tau.copy(), g.rho.copy()) for k, g in tr.total.items()}
    monkeypatch.setattr(kernels, "_ENABLED", False)
    tr.recompute_total()
    for key, g in tr.total.items():
        assert g.tau.dtype == np.dtype(dtype)
        np.testing.assert_array_equal(compiled[key][0], g.tau)
        np.testing.assert_array_equal(compiled[key][1], g.rho)
    assert len(tr.msgs) == 4 and tr.num_batches == 7


@pytest.mark.parametrize("mixing", [False, True])
def test_the_batch_reset_in_one_pass_equals_batch_prior_and_reset(mixing):
    """The epoch's reset of a batch (``reset_batch(total, removed=W_msg[b])``, the batch prior formed in the
    reset's own pass) leaves every weight's slots and marginal where ``reset_batch(batch_prior(b))`` leaves
    them, bit for bit; a mixing Trainer (two blocks per batch) trains on after it."""
    import copy

    X, Y = _data(48)
    tr = Trainer(create_factor_graph(TEMPLATES, batch_size=8, seed=2), X, Y, mixing=mixing, progress=False,
                 damping=constant_damping(0.5))
    tr.train(num_epochs=2)
    a, b = copy.deepcopy(tr.fg), copy.deepcopy(tr.fg)
    a.reset_batch(tr.batch_prior(3))
    b.reset_batch(tr._by_layer(tr.total), tr._by_layer({k: m[3] for k, m in tr.msgs.items()}))
    for (l, layer), (_, other) in zip(a.weighted_layers(), b.weighted_layers()):
        for name, s in layer.params.items():
            o = other.params[name]
            for x, y in ((s.msgs, o.msgs), (s.q, o.q)):
                np.testing.assert_array_equal(x.tau, y.tau)
                np.testing.assert_array_equal(x.rho, y.rho)
    tr.train(num_epochs=1)


def test_each_visit_starts_from_its_own_batch_prior():
    """Every visit of batch ``b`` in an epoch starts the graph from ``P_b = Q / W_msg[b]`` of that moment
    (the batch prior slot and the marginal of every weight), with three batches and unequal messages."""
    X, Y = _data(48)
    fg = create_factor_graph(TEMPLATES, batch_size=16, seed=2)
    seen = []
    tr = Trainer(fg, X, Y, progress=False, damping=constant_damping(0.6),
                 callbacks={"on_batch_end": lambda t, e, b: seen.append(b)})
    tr.train(num_epochs=1)
    reset = fg.reset_batch
    started = []

    def recording(*args):
        want = [tr.batch_prior(k) for k in range(tr.num_batches)]  # before the reset, from this moment's Q
        reset(*args)
        started.append((want, {(li, n): (s.prior.copy(), s.q.copy()) for li, layer in fg.weighted_layers()
                               for n, s in layer.params.items()}))

    fg.reset_batch = recording
    seen.clear()
    tr.train(num_epochs=2)
    assert len(seen) == len(started) == 2 * tr.num_batches == 6
    for b, (want, got) in zip(seen, started):
        for (l, name), (prior, q) in got.items():
            for g in (prior, q):
                np.testing.assert_array_equal(g.tau, want[b][l][name].tau)
                np.testing.assert_array_equal(g.rho, want[b][l][name].rho)


def test_the_fold_follows_the_kernels_switch_within_an_epoch(monkeypatch):
    """The Trainer keeps the compiled fold's arrays per tensor (``Trainer._flat_views``); kernels switched
    off by a callback in the middle of an epoch make the next folds take the array form (the compiled one
    would fail here)."""
    from factorgraph import kernels
    from factorgraph.kernels import sites_cpu

    X, Y = _data(48)

    def compiled(*args):
        raise AssertionError("the compiled fold ran with the kernels off")

    def switch_off(trainer, epoch, batch):
        if not switched:
            switched.append(kernels.set_enabled(False))
            monkeypatch.setattr(sites_cpu, "_fold_part", compiled)
            monkeypatch.setattr(sites_cpu, "_fold_threads", compiled)

    switched = []
    tr = Trainer(create_factor_graph(TEMPLATES, batch_size=16, seed=2), X, Y, progress=False,
                 callbacks={"on_batch_end": switch_off})
    try:
        tr.train(num_epochs=1)  # three batches: the second and third fold with the kernels off
    finally:
        kernels.set_enabled(switched[0])
    assert switched
