"""The Trainer's lazy batch reset (``WeightSlots.reset(..., lazy=True)``): for a visit that is one chunk of
a ``Parallel`` order the weights' batch prior is not written; the fused chunk kernels read it as ``total -
removed`` and write only the chunk's site.  Everything must be the same numbers as the eager reset, the
chunk's replacement and the recompute after the sweep, and the state must be written whenever read."""

import contextlib

import numpy as np
import pytest

from factorgraph import config, guards, kernels
from factorgraph.factor import WeightSlots
from factorgraph.gaussian import Gaussian
from factorgraph.guards import ImproperMessageError
from factorgraph.kernels import sites_cpu
from layers import create_factor_graph
from schedules import ByEpoch, Parallel, Shuffled
from trainer import Trainer

# 64 x 256 first-layer weights: the kernels' threaded paths (from 16384 weights) run too
TEMPLATES = [(64,), ("Linear", 256), ("LeakyReLU", 0.1), ("Linear", 24), ("LeakyReLU", 0.1), ("Linear", 3),
             ("Regression", 0.05)]


def _data(n=96, seed=0, dtype=np.float64):
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, 64)).astype(dtype)
    Y = np.stack([np.sin(X[:, 0]) + 0.5 * X[:, 1], X[:, 2] ** 2 - 0.5, X[:, 3] * X[:, 4]], axis=1)
    return X, Y


def _case(rng, shape, dtype):
    """A total ``Q``, a stored message ``S`` (``Q - S`` proper), and a new site message."""
    S = Gaussian(rng.normal(size=shape) * 0.3, rng.uniform(0, 2, size=shape))
    Q = Gaussian(S.tau + rng.normal(size=shape), S.rho + rng.uniform(0.5, 3, size=shape))
    new = Gaussian(rng.normal(size=shape) * 2, rng.uniform(-0.2, 4, size=shape))
    return [np.ascontiguousarray(a, dtype) for a in (Q.tau, Q.rho, S.tau, S.rho, new.tau, new.rho)]


def _flat(*arrays):
    return [a.reshape(-1) for a in arrays]


def _eager(Qt, Qr, St, Sr, nt, nr, damping, kappa, limit):
    """The eager steps the lazy kernel stands for: reset (``p = Q - S``, ``q = p``, slot cleared), the
    compiled site replacement, the recompute ``q = slot + p`` and its check."""
    pt, pr = Qt - St, Qr - Sr
    qt, qr = pt.copy(), pr.copy()
    mt, mr = np.zeros_like(pt), np.zeros_like(pr)
    hits = sites_cpu.replace_site(qt, qr, mt, mr, nt, nr, damping, kappa)
    qt, qr = mt + pt, mr + pr
    ok, far, _ = sites_cpu.marginal_check(qt, qr, pt, pr, limit)
    return mt, mr, hits, ok, far


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("damping", [1.0, 0.3])
@pytest.mark.parametrize("kappa", [-1.0, 0.5])
def test_replace_from_prior_equals_reset_replace_and_recompute(dtype, damping, kappa):
    """``sites_cpu.replace_from_prior`` writes the same site message bit for bit as a reset, the compiled
    replacement and the recompute, with the same count of bounded steps and the same check of the new
    marginal: ordinary weights, improper and non-finite new messages, and means far beyond the limit."""
    rng = np.random.default_rng(3)
    n = 4099
    Qt, Qr, St, Sr, nt, nr = _case(rng, (n,), dtype)
    nt[:40] *= 1e6  # means far from the prior (beyond the limit below)
    nr[40:50] = -Qr[40:50] * 4  # an improper new marginal
    nt[50] = np.nan
    nr[51] = np.inf
    dt = np.dtype(dtype).type
    for limit in (5.0, 1e4):
        want = _eager(Qt, Qr, St, Sr, nt, nr, dt(damping), dt(kappa), limit)
        mt, mr = np.full(n, 7, dtype), np.full(n, 7, dtype)  # stale: every element must be written
        with np.errstate(all="ignore"):
            got = sites_cpu.replace_from_prior(Qt, Qr, St, Sr, mt, mr, nt, nr, dt(damping), dt(kappa),
                                               dt(limit))
        np.testing.assert_array_equal(mt, want[0])
        np.testing.assert_array_equal(mr, want[1])
        assert (int(got[0]), bool(got[1]), int(got[2])) == (want[2], want[3], want[4])
        assert want[2] > 0 or kappa < 0
        assert not want[3] and (want[4] > 0) == (kappa < 0)  # the bound keeps every mean within 0.5 sds
        # the proper, finite part alone is healthy
        sl = slice(60, None)
        part = _eager(Qt[sl], Qr[sl], St[sl], Sr[sl], nt[sl], nr[sl], dt(damping), dt(kappa), 1e4)
        got = sites_cpu.replace_from_prior(Qt[sl], Qr[sl], St[sl], Sr[sl], mt[sl], mr[sl], nt[sl], nr[sl],
                                           dt(damping), dt(kappa), dt(1e4))
        assert (bool(got[1]), int(got[2])) == (part[3], part[4]) == (True, 0)


def _slots(rng, shape, dtype, used):
    prior = Gaussian(np.zeros(shape, dtype), np.ones(shape, dtype))
    s = WeightSlots(prior, 4)
    for i in range(used):  # messages of an earlier batch, which the reset must clear
        msg = Gaussian(rng.normal(size=shape).astype(dtype), rng.uniform(0, 1, size=shape).astype(dtype))
        s.replace(i, msg)
    return s


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("used", [0, 1])
def test_reading_lazily_reset_slots_writes_the_eager_state(dtype, used):
    """After a lazy reset, reading ``q``, ``msgs`` or ``prior`` gives what the eager reset writes; after
    the lazy chunk's site replacement (the kernel writes slot 0 only) the state read and the recompute's
    check equal the eager reset, replacement and recompute, also where means ran far (the largest shift)."""
    rng = np.random.default_rng(5)
    shape = (40, 30)
    Qt, Qr, St, Sr, nt, nr = _case(rng, shape, dtype)
    nt[0, :3] *= 1e7  # three means beyond the warning limit
    Q, S, new = Gaussian(Qt, Qr), Gaussian(St, Sr), Gaussian(nt, nr)
    for attr in ("q", "msgs", "prior"):
        eager, lazy = (_slots(np.random.default_rng(1), shape, dtype, used) for _ in range(2))
        eager.reset(Q, S)
        lazy.reset(Q, S, lazy=True)
        assert lazy.lazy and not eager.lazy
        a, b = getattr(eager, attr), getattr(lazy, attr)
        assert not lazy.lazy
        np.testing.assert_array_equal(a.tau, b.tau)
        np.testing.assert_array_equal(a.rho, b.rho)
        assert lazy.used == eager.used == 0
    damping, kappa, limit = dtype(0.4), dtype(-1.0), config.MEAN_SHIFT_WARN_SDS  # no bound: the means run
    for read in ("q", "recompute"):
        eager, lazy = (_slots(np.random.default_rng(1), shape, dtype, used) for _ in range(2))
        eager.reset(Q, S)
        eager.replace(0, new, float(damping))
        want = eager.recompute(limit)
        lazy.reset(Q, S, lazy=True)
        slot = lazy.lazy_slot(0)
        fused = lazy.fused_site(0, float(damping))
        assert slot is not None and fused[0] is Qt and fused[2] is St
        lazy.touch(0)
        with np.errstate(all="ignore"):
            hits, ok, far = sites_cpu.replace_from_prior(*_flat(*fused[:4], *slot, nt, nr),
                                                         damping, kappa, dtype(limit))
        lazy.lazy_replaced(ok, far)
        assert lazy.lazy_slot(0) is None  # one chunk only: a second would need the written marginal
        if read == "q":
            np.testing.assert_array_equal(lazy.q.tau, eager.q.tau)
            np.testing.assert_array_equal(lazy.q.rho, eager.q.rho)
            assert not lazy.lazy
        got = lazy.recompute(limit)
        assert got[:2] == want[:2] == (True, 3)
        assert got[2] == want[2] > limit
        for a, b in ((lazy.msgs, eager.msgs), (lazy.q, eager.q)):
            np.testing.assert_array_equal(a.tau, b.tau)
            np.testing.assert_array_equal(a.rho, b.rho)
        assert lazy.used == eager.used == 1


def test_without_runaway_means_the_lazy_recompute_writes_nothing():
    """After the lazy chunk the recompute takes the kernel's check and slot 0 as the sums (the Trainer's fold
    reads them) without writing the state; the sums equal the eager ones."""
    rng = np.random.default_rng(6)
    shape = (30, 20)
    Qt, Qr, St, Sr, nt, nr = _case(rng, shape, np.float64)
    nr[...] = np.abs(nr)
    Q, S, new = Gaussian(Qt, Qr), Gaussian(St, Sr), Gaussian(nt, nr)
    eager, lazy = _slots(rng, shape, np.float64, 1), _slots(rng, shape, np.float64, 1)
    eager.reset(Q, S)
    eager.replace(0, new, 0.5)
    want = eager.recompute(1e4)
    lazy.reset(Q, S, lazy=True)
    fused, slot = lazy.fused_site(0, 0.5), lazy.lazy_slot(0)
    lazy.touch(0)
    _, ok, far = sites_cpu.replace_from_prior(*_flat(*fused[:4], *slot, nt, nr), 0.5, -1.0,
                                              1e4)
    lazy.lazy_replaced(ok, far)
    assert lazy.recompute(1e4) == want == (True, 0, -np.inf)
    assert lazy.lazy  # nothing written
    for a, b in ((lazy.likelihood(copy=False), eager.likelihood(copy=False)),):
        np.testing.assert_array_equal(a.tau, b.tau)
        np.testing.assert_array_equal(a.rho, b.rho)


def _trainer(order, dtype=np.float64, lazy=True, seed=3, **kw):
    X, Y = _data(dtype=dtype)
    fg = create_factor_graph(TEMPLATES, batch_size=24, seed=seed, dtype=dtype)
    tr = Trainer(fg, X, Y, order=order, progress=False, **kw)
    tr.lazy_resets = lazy
    return tr


def _lazy_calls(monkeypatch):
    calls = []
    real = WeightSlots.lazy_replaced

    def spy(self, ok, far):
        calls.append(self.shape)
        real(self, ok, far)

    monkeypatch.setattr(WeightSlots, "lazy_replaced", spy)
    return calls


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("order,warm", [(Parallel(24, 0.3, max_step=0.3), False), (Parallel(24, 0.6), True),
                                        (ByEpoch(Parallel(24, (0.2, 0.5, 0.5), max_step=1.0),
                                                 (2, Parallel(12, 0.5))), False)])
def test_lazy_trainer_epochs_equal_eager_ones_bit_for_bit(dtype, order, warm, monkeypatch):
    """Whole Trainer epochs with lazy resets give the eager run's totals, stored messages, graph state,
    predictions and step-bound counts bit for bit; the lazy path runs in every visit but the epoch's last
    (4 batches: 3 per epoch, for each of the 6 weight and bias tensors), and not for chunks smaller than the
    batch."""
    calls = _lazy_calls(monkeypatch)
    runs = []
    for lazy in (True, False):
        tr = _trainer(order, dtype, lazy, warm_start=warm)
        guards.reset()
        with kernels.threaded():
            tr.train(num_epochs=3)
        runs.append((tr, guards.get("parallel_step_limit"), len(calls)))
    (a, hits_a, n_lazy), (b, hits_b, n_after) = runs
    first_only = isinstance(order, ByEpoch)  # chunks of 12 from epoch 2 on
    assert n_lazy == (1 if first_only else 3) * 3 * 6 and n_after == n_lazy
    assert hits_a == hits_b
    assert hits_a > 0 or order != Parallel(24, 0.3, max_step=0.3)
    for key in a.total:
        for store in ("total", "msgs"):
            x, y = getattr(a, store)[key], getattr(b, store)[key]
            np.testing.assert_array_equal(x.tau, y.tau)
            np.testing.assert_array_equal(x.rho, y.rho)
    sa, sb = a.fg.state(), b.fg.state()
    assert sa.keys() == sb.keys()
    for k in sa:
        np.testing.assert_array_equal(sa[k], sb[k], err_msg=k)
    X = _data(10, seed=9, dtype=dtype)[0]
    np.testing.assert_array_equal(a.fg.predict(X), b.fg.predict(X))


def test_the_state_read_in_the_middle_of_a_lazy_visit_is_the_eager_one(monkeypatch):
    """Reading the graph's weights right after a lazy reset, or after the sweep before the fold, writes what
    the eager run holds at that moment; the run then goes on to the same numbers."""
    calls = _lazy_calls(monkeypatch)
    snaps = {}
    for lazy in (True, False):
        tr = _trainer(Parallel(24, 0.3, max_step=0.3), lazy=lazy)
        seen = snaps[lazy] = []
        count = {"reset": 0, "fold": 0}
        reset, fold = tr.fg.reset_batch, tr._fold

        def after_reset(*args, _reset=reset, _tr=tr, _seen=seen, _count=count, **kw):
            _reset(*args, **kw)
            _count["reset"] += 1
            if _count["reset"] == 2:  # the second visit's reset: read it (written now where lazy)
                _seen.append(_tr.fg.state())

        def before_fold(*args, _fold=fold, _tr=tr, _seen=seen, _count=count):
            _count["fold"] += 1
            if _count["fold"] in (2, 3):  # visit 2 after the read reset; visit 3 after its lazy chunk
                _seen.append(_tr.fg.state())
            _fold(*args)

        monkeypatch.setattr(tr.fg, "reset_batch", after_reset)
        monkeypatch.setattr(tr, "_fold", before_fold)
        tr.train(num_epochs=2)
        seen.append(tr.fg.state())
        seen.append({f"total{k}": g.tau for k, g in tr.total.items()})
    # lazy chunks: 2 epochs x 3 visits x 6 tensors, less visit 2's (its reset was read, so written)
    assert len(calls) == 30
    a, b = snaps[True], snaps[False]
    assert len(a) == len(b) == 5
    for x, y in zip(a, b):
        assert x.keys() == y.keys()
        for k in x:
            np.testing.assert_array_equal(x[k], y[k], err_msg=k)


def test_no_lazy_reset_where_the_graph_state_of_each_visit_is_read():
    """With an ``on_batch_end`` callback, several sweeps per visit, chunks smaller than the batch, or a
    sequential order, every visit resets eagerly (the callbacks read the visit's state)."""
    cases = [(Parallel(24, 0.3), {"callbacks": {"on_batch_end": lambda *a: None}}, 1),
             (Parallel(24, 0.3), {}, 2), (Parallel(12, 0.3), {}, 1), (Shuffled(), {}, 1)]
    for order, kw, its in cases:
        tr = _trainer(order, **kw)
        tr.train(num_epochs=1, num_training_its=its)
        assert not any(s.lazy for _, layer in tr.fg.weighted_layers() for s in layer.params.values())
        assert not any(tr._lazy_visit(gi, [[0], [1], [2], [3]], order, its) for gi in range(4))
    tr = _trainer(Parallel(24, 0.3))
    assert [tr._lazy_visit(gi, [[0], [1], [2], [3]], tr.order, 1) for gi in range(4)] == [True] * 3 + [False]


def test_a_lazy_visit_that_diverges_raises_and_leaves_the_trainer_as_the_eager_one(monkeypatch):
    """A blown-up total makes the first (lazy) visit's marginal non-finite: the lazy run raises as the
    eager one does, before the fold, so the Trainer's totals and messages are unchanged."""
    calls = _lazy_calls(monkeypatch)
    kept = []
    for lazy in (True, False):
        tr = _trainer(Parallel(24, 0.3), lazy=lazy)
        tr.train(num_epochs=1)
        key = (2, "W")  # the hidden dense layer: its inputs stay finite
        tr.total[key].tau[0, 0] = np.inf
        before = {k: (g.tau.copy(), g.rho.copy()) for k, g in tr.total.items()}
        msgs = {k: (g.tau.copy(), g.rho.copy()) for k, g in tr.msgs.items()}
        n = len(calls)
        with np.errstate(all="ignore"), pytest.raises(ImproperMessageError, match="diverged under Parallel"):
            tr.train_epoch()
        assert (len(calls) > n) == lazy
        for store, want in ((tr.total, before), (tr.msgs, msgs)):
            for k, g in store.items():
                np.testing.assert_array_equal(g.tau, want[k][0])
                np.testing.assert_array_equal(g.rho, want[k][1])
        kept.append({k: g.tau.copy() for k, g in tr.msgs.items()})
    for k in kept[0]:
        np.testing.assert_array_equal(kept[0][k], kept[1][k])


def test_after_a_lazy_visit_the_graph_is_reset_for_the_next_one_at_once():
    """The fold changes the arrays a lazy visit's state reads, so the Trainer resets the graph (lazily) for
    the next visit right after it: a run stopped there leaves the next visit's batch prior, with no message
    in the slots, not the folded batch counted twice."""
    tr = _trainer(Parallel(24, 0.3))
    tr.train(num_epochs=1)
    real, seen = tr._lazy_visit, []

    def stop_at_the_second_visit(gi, groups, *args):
        seen.append(groups)
        if gi == 1:
            raise KeyboardInterrupt
        return real(gi, groups, *args)

    tr._lazy_visit = stop_at_the_second_visit
    with pytest.raises(KeyboardInterrupt):
        tr.train_epoch()
    nxt = seen[0][1][0]  # the block of the second visit
    want = tr.batch_prior(nxt)
    for li, layer in tr.fg.weighted_layers():
        for name, s in layer.params.items():
            for g in (s.prior, s.q):
                np.testing.assert_array_equal(g.tau, want[li][name].tau)
                np.testing.assert_array_equal(g.rho, want[li][name].rho)
            assert s.used == 0 and not s.msgs.tau[0].any() and not s.msgs.rho[0].any()


@pytest.mark.parametrize("threaded", [False, True])
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("constant", [True, False])
@pytest.mark.parametrize("kappa", [-1.0, 0.3])
def test_lazy_chunk_kernels_equal_the_eager_ones(constant, dtype, threaded, kappa):
    """The dense chunk kernels with ``lazy`` (the batch prior as ``Q - S``, only the site slot written, the
    check in the same pass) give the eager kernels' outputs, site messages and step-bound counts bit for bit
    after a reset of ``p = Q - S``, and the check :func:`sites_cpu.marginal_check` makes of ``slot + p``:
    first layer (S1) and hidden layers (S2), blocks on one thread and in parts on all threads."""
    from factorgraph.kernels import chunk_cpu

    rng = np.random.default_rng(11)
    U, K, J = 9, 300, 70  # 21000 weights: the threaded kernels' parts when threaded
    Qt, Qr, St, Sr, _, _ = _case(rng, (K, J), dtype)
    Pt, Pr = Qt - St, Qr - Sr
    mu_a = rng.normal(size=(U, K)).astype(dtype)
    var_a = rng.uniform(0.1, 1, size=(U, K)).astype(dtype)
    g = (rng.normal(size=(U, J)) * 3).astype(dtype)
    g[:, 0] *= 1e5  # runaway means in column 0 (without the bound)
    g[2, 5] = np.nan  # a non-finite message: the check fails
    h = rng.uniform(0, 0.5, size=(U, J)).astype(dtype)
    rtol, limit, damping = config.STRICT_DIVISION_RTOL, config.MEAN_SHIFT_WARN_SDS, 0.5
    ctx = kernels.threaded(blas_threads=1) if threaded else contextlib.nullcontext()
    with ctx, np.errstate(all="ignore"):
        mu_e, var_e = np.empty((2, U, J), dtype)
        mu_l, var_l = np.empty((2, U, J), dtype)
        qt, qr, s_t, s_r = Pt.copy(), Pr.copy(), np.zeros_like(Pt), np.zeros_like(Pr)
        m_t, m_r = np.full_like(Pt, 7), np.full_like(Pr, 7)
        if constant:
            inputs = chunk_cpu.s1_inputs(mu_a)
            chunk_cpu.s1_chunk_forward(inputs, qt, qr, s_t, s_r, rtol, mu_e, var_e)
            chunk_cpu.s1_chunk_forward(inputs, Qt, Qr, St, Sr, rtol, mu_l, var_l)
            hits = chunk_cpu.s1_chunk_backward(inputs, g, h, qt, qr, s_t, s_r, rtol, damping, kappa, 0)
            got = chunk_cpu.s1_chunk_backward(inputs, g, h, Qt, Qr, St, Sr, rtol, damping, kappa, 0,
                                              lazy=(m_t, m_r), limit=limit)
        else:
            inputs = chunk_cpu.s2_inputs(mu_a, var_a)
            chunk_cpu.s2_chunk_forward(inputs, qt, qr, mu_e, var_e)
            chunk_cpu.s2_chunk_forward(inputs, Qt, Qr, mu_l, var_l, St, Sr)
            ta, ra, hits = chunk_cpu.s2_chunk_backward(inputs, g, h, qt, qr, s_t, s_r, damping, kappa)
            ta_l, ra_l, got = chunk_cpu.s2_chunk_backward(inputs, g, h, Qt, Qr, St, Sr, damping, kappa,
                                                          lazy=(m_t, m_r), limit=limit)
            np.testing.assert_array_equal(ta_l, ta)
            np.testing.assert_array_equal(ra_l, ra)
        ok, far, _ = sites_cpu.marginal_check(*_flat(s_t + Pt, s_r + Pr, Pt, Pr), limit)
    np.testing.assert_array_equal(mu_l, mu_e)
    np.testing.assert_array_equal(var_l, var_e)
    np.testing.assert_array_equal(m_t, s_t)
    np.testing.assert_array_equal(m_r, s_r)
    assert got == (hits, ok, far)
    assert not ok and (far > 0) == (kappa < 0) and (hits > 0) == (kappa > 0)
    np.testing.assert_array_equal(Qt - St, Pt)  # the total and the stored message are only read


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_an_improper_lazy_marginal_fails_the_recompute_check_as_the_eager_one(dtype):
    """A lazy chunk whose new marginal is improper: the recompute's check (from the kernel) reports it as the
    eager recompute does."""
    rng = np.random.default_rng(8)
    shape = (20, 10)
    Qt, Qr, St, Sr, nt, nr = _case(rng, shape, dtype)
    nr[3, 4] = -(Qr[3, 4] - Sr[3, 4]) * 10
    Q, S, new = Gaussian(Qt, Qr), Gaussian(St, Sr), Gaussian(nt, nr)
    eager, lazy = (_slots(np.random.default_rng(2), shape, dtype, 1) for _ in range(2))
    eager.reset(Q, S)
    eager.replace(0, new)
    lazy.reset(Q, S, lazy=True)
    fused, slot = lazy.fused_site(0), lazy.lazy_slot(0)
    lazy.touch(0)
    _, ok, far = sites_cpu.replace_from_prior(*_flat(*fused[:4], *slot, nt, nr), dtype(1.0),
                                              dtype(-1.0), dtype(1e4))
    lazy.lazy_replaced(ok, far)
    want = eager.recompute(1e4)
    assert want[0] is False
    assert lazy.recompute(1e4)[:2] == want[:2]


def test_a_cnn_trains_the_same_with_lazy_resets(monkeypatch):
    """A CNN's convolution (the first layer: the cavity and the site replacement of ``WeightSlots``) and its
    dense layers take the lazy paths, and the run equals the eager one bit for bit."""
    calls = _lazy_calls(monkeypatch)
    templates = [(8, 8, 1), ("Conv", 4, 3), ("LeakyReLU", 0.1), ("MaxPool", 2), ("Flatten",), ("Linear", 12),
                 ("LeakyReLU", 0.1), ("Linear", 3), ("Regression", 0.05)]
    rng = np.random.default_rng(0)
    X, Y = rng.normal(size=(40, 8, 8, 1)), rng.normal(size=(40, 3))
    runs = []
    for lazy in (True, False):
        fg = create_factor_graph(templates, batch_size=10, seed=1)
        tr = Trainer(fg, X, Y, order=Parallel(10, 0.3), progress=False)
        tr.lazy_resets = lazy
        tr.train(num_epochs=2)
        runs.append((tr, fg.state()))
    assert len(calls) == 2 * 3 * 6  # 2 epochs x 3 lazy visits x 6 tensors (weights and biases of 3 layers)
    (a, sa), (b, sb) = runs
    for k in sa:
        np.testing.assert_array_equal(sa[k], sb[k], err_msg=k)
    for key in a.total:
        np.testing.assert_array_equal(a.total[key].tau, b.total[key].tau)
        np.testing.assert_array_equal(a.msgs[key].rho, b.msgs[key].rho)


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_lazy_cavity_and_replacement_of_slots_equal_the_eager_ones(dtype):
    """``WeightSlots.cavity_moments`` and ``replace`` of a lazy batch's site (the biases' path, and a first
    convolution's) give the eager reset's cavity, site message, step-bound count and check bit for bit,
    writing only the slot; a second site or a deferred chunk writes the state first."""
    rng = np.random.default_rng(12)
    shape = (300,)
    Qt, Qr, St, Sr, nt, nr = _case(rng, shape, dtype)
    Q, S, new = Gaussian(Qt, Qr), Gaussian(St, Sr), Gaussian(nt, nr)
    eager, lazy = (_slots(np.random.default_rng(4), shape, dtype, 1) for _ in range(2))
    for s in (eager, lazy):
        s.max_step = 0.2
    eager.reset(Q, S)
    lazy.reset(Q, S, lazy=True)
    a, b = eager.cavity_moments(0), lazy.cavity_moments(0)
    for x, y in ((a.tau, b.tau), (a.rho, b.rho), (a.mean, b.mean), (a.var, b.var)):
        np.testing.assert_array_equal(x, y)
    assert lazy.lazy
    counts = []
    for s in (eager, lazy):
        guards.reset()
        s.replace(0, new, 0.7)
        counts.append(guards.get("parallel_step_limit"))
    assert counts[0] == counts[1] > 0 and lazy.lazy
    assert lazy.recompute(1e4) == eager.recompute(1e4)
    for x, y in ((lazy.msgs, eager.msgs), (lazy.q, eager.q)):
        np.testing.assert_array_equal(x.tau, y.tau)
        np.testing.assert_array_equal(x.rho, y.rho)
    for first in (False, True):  # a second site, before or after the lazy site's chunk
        lazy.reset(Q, S, lazy=True)
        eager.reset(Q, S)
        if first:
            lazy.replace(0, new, 0.7)
            eager.replace(0, new, 0.7)
        lazy.replace(1, new, 0.7)  # not the lazy site: the state is written first
        eager.replace(1, new, 0.7)
        assert not lazy.lazy and lazy.used == eager.used == 2
        assert lazy.recompute(1e4) == eager.recompute(1e4)
        for x, y in ((lazy.msgs, eager.msgs), (lazy.q, eager.q)):
            np.testing.assert_array_equal(x.tau, y.tau)
            np.testing.assert_array_equal(x.rho, y.rho)


@pytest.mark.parametrize("step", ["cavity", "replace", "fused"])
def test_kernels_switched_off_after_a_lazy_reset_take_the_array_form(step):
    """A lazy reset pending when the kernels are switched off: the slots' cavity, replacement and fused-site
    query write the state first and run as with an eager reset (no compiled call)."""
    rng = np.random.default_rng(13)
    shape = (30, 8)
    Qt, Qr, St, Sr, nt, nr = _case(rng, shape, np.float64)
    Q, S, new = Gaussian(Qt, Qr), Gaussian(St, Sr), Gaussian(nt, nr)
    eager, lazy = (_slots(np.random.default_rng(3), shape, np.float64, 1) for _ in range(2))
    eager.reset(Q, S)
    lazy.reset(Q, S, lazy=True)
    prev = kernels.set_enabled(False)
    try:
        if step == "cavity":
            a, b = eager.cavity_moments(0), lazy.cavity_moments(0)
            np.testing.assert_array_equal(a.mean, b.mean)
        elif step == "replace":
            eager.replace(0, new, 0.5)
            lazy.replace(0, new, 0.5)
        else:
            assert lazy.fused_site(0) is None and lazy.lazy_slot(0) is None
        assert not lazy.lazy
        for x, y in ((lazy.msgs, eager.msgs), (lazy.q, eager.q)):
            np.testing.assert_array_equal(x.tau, y.tau)
            np.testing.assert_array_equal(x.rho, y.rho)
    finally:
        kernels.set_enabled(prev)
