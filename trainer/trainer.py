"""Trainer: batched training over K batches with per-batch messages (SPEC 8, intended semantics).

For each weighted tensor the Trainer keeps the true prior and one message ``W_msg[b]`` per batch
(initially ``G(0, 0)``), and a running total ``Q = prior * prod_b W_msg[b]``.  For every batch ``b``
visited in an epoch:

1. batch prior ``P_b = Q / W_msg[b]`` (the stored messages are not mutated);
2. the FactorGraph is reset: slot B := ``P_b``, q := ``P_b``, per-example messages and caches cleared (steps
   1 and 2 in one compiled pass per weight tensor on the CPU, :meth:`factorgraph.factor.WeightSlots.reset`;
   for a visit that is one chunk of a :class:`schedules.Parallel` order, lazily: nothing is written, the
   chunk kernels read ``P_b`` as ``Q - W_msg[b]`` and write only the chunk's site, and any other read writes
   the state first, with the same numbers; :attr:`Trainer.lazy_resets`, :meth:`Trainer._lazy_visit`);
3. ``train_batch(X_b, Y_b, its)``;
4. ``L_b`` = product of the batch's per-example messages; ``W_msg[b] := EMA(W_msg[b], L_b, beta_e)`` and
   ``Q`` is updated by the difference (recomputed exactly at the end of each epoch).

Two options from the thesis's future work:

* ``mixing=True`` (thesis 6.2, item 4): messages are stored per *half* batch (contiguous blocks of B/2);
  every epoch the halves are paired at random into batches, so examples meet new batch partners while
  each half keeps its own message (steps 1 and 4 run over both halves of a batch).
* ``warm_start=True`` (item 3): instead of clearing the activation messages of a new batch (the
  per-example backward messages to hidden units), fill them with an exponential moving average (rate
  ``WARM_RATE``) of the per-unit mean of those messages over the batches trained so far.

Batches are contiguous blocks of the training set in its given order; the batch visit order is
reshuffled every epoch by a dedicated generator (seed 42 by default), the within-batch order by the
graph's generator.  The damping rate follows ``damping(epoch)``, 1-based across calls.
"""

import json

import numpy as np
from tqdm.auto import tqdm

from factorgraph import kernels
from factorgraph.backend import to_device
from factorgraph.gaussian import Gaussian
from schedules.epochs import Constant, EpochSchedule
from schedules.orders import ByEpoch, Parallel, Shuffled, is_order
from trainer.damping import thesis_damping

#: written by :meth:`Trainer.save`; version 2 stores only the weight slots in use (``WeightSlots.state``)
_FORMAT = "factorgraph-trainer-2"
#: what :meth:`Trainer.load` reads (version 1 held all ``B + 1`` slots of every weight tensor)
_READS = ("factorgraph-trainer-1", _FORMAT)
#: weight of the old average in the warm-start moving average
WARM_RATE = 0.9


class Trainer:
    """Train a FactorGraph on ``(X, Y)`` in batches of ``fg.batch_size``.

    Parameters
    ----------
    fg : FactorGraph
    X, Y : arrays
        Training inputs (n, *input_shape) and targets of the graph's training signal.
    seed : int
        Seed of the batch-order generator (42 as in the thesis code).
    damping : callable
        ``epoch -> beta`` (default :func:`trainer.damping.thesis_damping`).
    order : within-batch order or :class:`schedules.ByEpoch`, optional
        Passed to ``train_batch`` (default shuffled); a ``ByEpoch`` passes each epoch's own order.
    progress : bool or None
        Show a tqdm bar; ``None`` shows it only on a terminal.
    callbacks : dict, optional
        ``{"on_batch_end": f(trainer, epoch, batch), "on_epoch_end": f(trainer, epoch)}``.
    mixing : bool
        Store messages per half batch and recombine halves every epoch (see the module docstring).
    warm_start : bool
        Start each batch's activation messages from a moving average (see the module docstring).
    """

    def __init__(self, fg, X, Y, seed=42, damping=thesis_damping, order=None, progress=None, callbacks=None,
                 mixing=False, warm_start=False):
        X = fg._check_inputs(X)
        Y = fg.signal.check_targets(Y, X.shape[0])
        if X.shape[0] == 0:
            raise ValueError("the training set is empty")
        self.fg = fg
        self.X, self.Y = X, Y
        self.damping = damping
        self.order = order
        self.progress = progress
        self.callbacks = dict(callbacks or {})
        self.seed = seed
        self.rng = np.random.default_rng(seed)
        self.epoch = 0
        self.device = "cpu"
        for name, v in (("mixing", mixing), ("warm_start", warm_start)):
            if not isinstance(v, (bool, np.bool_)):
                raise TypeError(f"{name} must be True or False, got {v!r}")
        self.mixing, self.warm_start = bool(mixing), bool(warm_start)
        #: reset the weights lazily where a visit is one chunk of a Parallel order (:meth:`_lazy_visit`); the
        #: same numbers with ``False``, which writes every batch's state (as the tests compare)
        self.lazy_resets = True
        if order is not None and not (isinstance(order, ByEpoch) or is_order(order)):
            raise TypeError(f"order must be a within-batch order (schedules.Shuffled, Parallel, ...) or "
                            f"schedules.ByEpoch, got {order!r}")
        if self.mixing and any(isinstance(o, Parallel) for o in _orders(order)):
            raise ValueError("mixing needs per-example messages; Parallel stores one message per chunk")
        for o in _orders(order):  # each order (and its per-layer dampings) must fit the graph before an epoch
            if o is not None:
                fg._check_order(o)
        B = fg.batch_size
        if self.mixing and B < 2:
            raise ValueError("mixing needs batch_size >= 2 (batches are made of two halves)")
        step = B // 2 if self.mixing else B
        #: the blocks that own a stored message: batches, or half batches with ``mixing``
        self.batches = [(s, min(s + step, X.shape[0])) for s in range(0, X.shape[0], step)]
        self.warm = {}
        self._views = {}  # per weight tensor: the arrays of the compiled fold (:meth:`_flat_views`)
        K = len(self.batches)
        self.prior, self.msgs, self.total = {}, {}, {}
        for l, layer in fg.weighted_layers():
            for name, slots in layer.params.items():
                key = (l, name)
                self.prior[key] = slots.prior.copy()
                self.msgs[key] = Gaussian.uniform((K,) + slots.shape, fg.dtype)
                self.total[key] = slots.prior.copy()

    @property
    def num_batches(self):
        return len(self.batches)

    # --- one batch / one epoch ------------------------------------------------------------------
    def batch_prior(self, b):
        """``P_b = Q / W_msg[b]`` for every weighted tensor, as new arrays (``{layer: {name: G}}``); ``b`` is
        a block index or a list of them (their messages are all divided out)."""
        blocks = [b] if isinstance(b, (int, np.integer)) else list(b)
        out = {}
        for (l, name), q in self.total.items():
            m = self.msgs[(l, name)]
            tau, rho = q.tau, q.rho
            for k in blocks:
                tau, rho = tau - m.tau[k], rho - m.rho[k]
            out.setdefault(l, {})[name] = Gaussian(tau, rho)
        return out

    def _follow_device(self):
        """Move the batch messages to the graph's device (after ``fg.to(...)``)."""
        if self.device != self.fg.device:
            dev = self.fg.device
            for store in (self.prior, self.msgs, self.total, self.warm):
                for key, g in store.items():
                    store[key] = Gaussian(to_device(g.tau, dev), to_device(g.rho, dev))
            self.device = dev

    def _groups(self):
        """The batches of one epoch as lists of blocks, in visit order."""
        order = [int(k) for k in self.rng.permutation(self.num_batches)]
        if not self.mixing:
            return [[k] for k in order]
        return [order[j:j + 2] for j in range(0, len(order), 2)]

    def train_epoch(self, num_training_its=1):
        """One epoch: every batch once, ``num_training_its`` sweeps per visit."""
        self._follow_device()
        self.epoch += 1
        beta = self.damping(self.epoch)
        disable = None if self.progress is None else not self.progress  # None: only on a terminal
        groups = self._groups()
        order = self.order.at(self.epoch) if isinstance(self.order, ByEpoch) else self.order
        bar = tqdm(groups, desc=f"epoch {self.epoch}", disable=disable, leave=False)
        prepared = None  # the visit whose lazy reset was made right after the previous fold
        for gi, group in enumerate(bar):
            ranges = [self.batches[k] for k in group]
            lazy = self._lazy_visit(gi, groups, order, num_training_its)
            if len(group) == 1:  # the batch prior Q / W_msg[b] formed inside the reset's own pass
                (a, b), = ranges
                rows = slice(a, b)
                if not (lazy and prepared == gi):
                    self._reset(group[0], lazy)
            else:
                rows = np.concatenate([np.arange(a, b) for a, b in ranges])
                self.fg.reset_batch(self.batch_prior(group))
            if self.warm_start:
                self.fg.warm_start_caches(self.warm)
            # X and Y were checked once, whole, by __init__ (and the order too)
            self.fg._train_checked(self.X[rows], self.Y[rows], num_training_its, order or Shuffled())
            if self.warm_start:
                self._update_warm(sum(b - a for a, b in ranges))
            with kernels.threaded():
                self._fold(group, ranges, beta)
            if lazy:  # the weights' lazy state read the arrays the fold just changed: the next visit's reset
                self._reset(groups[gi + 1][0], True)
                prepared = gi + 1
            if "on_batch_end" in self.callbacks:
                self.callbacks["on_batch_end"](self, self.epoch, group[0] if len(group) == 1 else tuple(group))
        bar.close()
        self.recompute_total()
        if "on_epoch_end" in self.callbacks:
            self.callbacks["on_epoch_end"](self, self.epoch)

    def _reset(self, k, lazy):
        """Reset the graph for a visit of block ``k`` alone: batch prior ``Q / W_msg[k]``; ``lazy``: not
        written until read (:meth:`factorgraph.factor.WeightSlots.reset`)."""
        removed = self._by_layer({key: m[k] for key, m in self.msgs.items()})
        with kernels.threaded():
            self.fg.reset_batch(self._by_layer(self.total), removed, **({"lazy": True} if lazy else {}))

    def _lazy_visit(self, gi, groups, order, its):
        """Whether visit ``gi`` of ``groups`` resets the weights lazily: one block, one sweep of a
        :class:`schedules.Parallel` order with one chunk for the batch (its kernels then read the batch prior
        as ``Q - W_msg[b]`` and write only the chunk's site, :class:`factorgraph.factor.WeightSlots`), on the
        CPU, not the epoch's last visit and no ``on_batch_end`` callback (the graph then holds the state of
        a visit as the eager reset leaves it).  The same numbers either way."""
        if not (self.lazy_resets and len(groups[gi]) == 1 and gi + 1 < len(groups) and its == 1
                and isinstance(order, Parallel) and self.fg.device == "cpu"
                and "on_batch_end" not in self.callbacks):
            return False
        a, b = self.batches[groups[gi][0]]
        return order.chunk_size >= b - a

    @staticmethod
    def _by_layer(d):
        """``{(l, name): v}`` as ``{l: {name: v}}`` (the form of :meth:`batch_prior`)."""
        out = {}
        for (l, name), v in d.items():
            out.setdefault(l, {})[name] = v
        return out

    def _fold(self, group, ranges, beta):
        """After a visit of ``group``: each block's stored message moves toward its new likelihood,
        ``W_msg[b] := (1 - beta) W_msg[b] + beta L_b``, and the total follows, ``Q := Q + W_msg[b]_new -
        W_msg[b]_old`` (on the CPU one compiled pass per weight tensor, :func:`factorgraph.kernels.sites_cpu.
        fold_message`, in place; the same numbers as the Gaussian arithmetic it replaces)."""
        offset = 0
        for k, (a, b) in zip(group, ranges):
            for l, layer in self.fg.weighted_layers():
                for name, slots in layer.params.items():
                    key = (l, name)
                    new = slots.likelihood(offset + b - a, start=offset, copy=False)
                    store, total = self.msgs[key], self.total[key]
                    flat = self._flat_views(key, total, store)
                    if flat is not None:
                        dt = flat[0].dtype
                        n_t, n_r = (np.ascontiguousarray(x, dt).reshape(-1) for x in (new.tau, new.rho))
                        flat[4](*flat[:2], flat[2][k], flat[3][k], n_t, n_r, beta)
                        continue
                    old = store[k]
                    damped = old.damp(new, beta)
                    self.total[key] = Gaussian(total.tau + damped.tau - old.tau,
                                               total.rho + damped.rho - old.rho)
                    store[k] = damped
            offset += b - a

    def _flat_views(self, key, total, store):
        """``(Q_tau, Q_rho, S_tau, S_rho, fold_message)``: the total ``total`` flat and the stored messages
        ``store`` as (K, n) views, with the compiled fold, where :meth:`_compiled_arrays` takes them (else
        ``None``); kept per tensor while ``self.total`` and ``self.msgs`` hold these Gaussians and the kernels
        stay on or off (a batch's fold then calls the kernel without re-checking its arrays)."""
        plan = self._views.get(key)
        on = kernels.enabled()
        if plan is None or plan[0] is not total or plan[1] is not store or plan[2] != on:
            sites = kernels.module(total.tau, "sites")
            flat = None
            if hasattr(sites, "fold_message") and self._compiled_arrays(total, store):
                K = store.tau.shape[0]
                flat = (total.tau.reshape(-1), total.rho.reshape(-1), store.tau.reshape(K, -1),
                        store.rho.reshape(K, -1), sites.fold_message)
            plan = self._views[key] = (total, store, on, flat)
        return plan[3]

    @staticmethod
    def _compiled_arrays(*gaussians):
        """Whether the compiled passes (:meth:`_fold`, :meth:`recompute_total`) can take these Gaussians:
        C-contiguous NumPy arrays of one dtype."""
        arrays = [x for g in gaussians for x in (g.tau, g.rho)]
        return (all(type(x) is np.ndarray and x.flags.c_contiguous for x in arrays)
                and len({x.dtype for x in arrays}) == 1)

    def _update_warm(self, n):
        """Fold the per-unit mean of this batch's activation messages into the moving average."""
        for key, g in self.fg.activation_caches(n).items():
            mean = Gaussian(g.tau.mean(axis=0), g.rho.mean(axis=0))
            old = self.warm.get(key)
            self.warm[key] = mean if old is None else old.damp(mean, 1 - WARM_RATE)

    def recompute_total(self):
        """``Q := prior * prod_b W_msg[b]`` exactly (on the CPU by the compiled pass of the weight marginals,
        :func:`factorgraph.kernels.sites_cpu.marginal_sums`: NumPy's numbers, on all threads)."""
        for key, m in self.msgs.items():
            p = self.prior[key]
            sites = kernels.module(m.tau, "sites")
            if (hasattr(sites, "marginal_sums") and self._compiled_arrays(m, p)
                    and p.tau.shape == p.rho.shape == m.tau.shape[1:]):
                K = m.tau.shape[0]
                out = [np.empty(p.tau.shape, p.tau.dtype) for _ in range(4)]
                with kernels.threaded():
                    sites.marginal_sums(m.tau.reshape(K, -1), m.rho.reshape(K, -1), K, p.tau.reshape(-1),
                                        p.rho.reshape(-1), *(o.reshape(-1) for o in out))
                self.total[key] = Gaussian(out[2], out[3])
                continue
            self.total[key] = Gaussian(p.tau + m.tau.sum(axis=0), p.rho + m.rho.sum(axis=0))

    def train(self, num_epochs=1, num_training_its=1, schedule=None):
        """Train ``num_epochs`` epochs of ``num_training_its`` sweeps, or follow an epoch ``schedule``
        (e.g. ``schedules.Staircase()``)."""
        if schedule is None:
            schedule = Constant(num_epochs, num_training_its)
        if not isinstance(schedule, EpochSchedule):
            raise TypeError(f"schedule must be an EpochSchedule, got {type(schedule).__name__}")
        for its in schedule:
            self.train_epoch(its)
        return self

    # --- persistence ----------------------------------------------------------------------------
    def save(self, path, include_data=True):
        """Write the full training state (graph and trainer) to an ``.npz`` file (no pickled code).

        With ``include_data=False`` the training set is left out (a smaller file); :meth:`load` then needs
        it passed back as ``X``, ``Y``.
        """
        self._follow_device()
        arrays = {f"fg.{k}": v for k, v in self.fg.state().items()}
        for (l, name) in self.msgs:
            key = f"{l}.{name}"
            for attr, store in (("msgs", self.msgs), ("prior", self.prior), ("total", self.total)):
                arrays[f"tr.{attr}.{key}.tau"] = to_device(store[(l, name)].tau, "cpu")
                arrays[f"tr.{attr}.{key}.rho"] = to_device(store[(l, name)].rho, "cpu")
        meta = {
            "format": _FORMAT,
            "templates": _templates_to_json(self.fg.templates),
            "batch_size": self.fg.batch_size,
            "dtype": self.fg.dtype.name,
            "seed": self.fg.seed,
            "trainer_seed": self.seed,
            "epoch": self.epoch,
            "rng": self.rng.bit_generator.state,
            "mixing": self.mixing,
            "warm_start": self.warm_start,
            "warm_keys": [[l, name] for (l, name) in self.warm],
        }
        for (l, name), g in self.warm.items():
            arrays[f"tr.warm.{l}.{name}.tau"] = to_device(g.tau, "cpu")
            arrays[f"tr.warm.{l}.{name}.rho"] = to_device(g.rho, "cpu")
        arrays["meta"] = np.array(json.dumps(meta))
        if include_data:
            arrays["X"], arrays["Y"] = self.X, self.Y
        np.savez(path, **arrays)

    @classmethod
    def load(cls, path, damping=thesis_damping, order=None, progress=None, callbacks=None, X=None, Y=None):
        """Rebuild the graph and trainer saved by :meth:`save`; training resumes where it stopped.

        ``X``, ``Y``: the training set, needed when it was saved with ``include_data=False``.
        """
        from layers.dsl import create_factor_graph

        with np.load(path, allow_pickle=False) as f:
            arrays = {k: f[k] for k in f.files}
        meta = json.loads(str(arrays["meta"]))
        if meta.get("format") not in _READS:
            raise ValueError(f"{path}: not a factorgraph trainer file (format {meta.get('format')!r})")
        templates = _templates_from_json(meta["templates"])
        fg = create_factor_graph(templates, meta["batch_size"], seed=meta["seed"], dtype=meta["dtype"])
        fg.load_state({k[3:]: v for k, v in arrays.items() if k.startswith("fg.")})
        if "X" in arrays:
            X, Y = arrays["X"], arrays["Y"]
        elif X is None or Y is None:
            raise ValueError(f"{path} was saved without its training data; pass X and Y to Trainer.load")
        tr = cls(fg, X, Y, seed=meta["trainer_seed"], damping=damping, order=order, progress=progress,
                 callbacks=callbacks, mixing=meta.get("mixing", False), warm_start=meta.get("warm_start", False))
        for l, name in meta.get("warm_keys", []):
            tr.warm[(l, name)] = Gaussian(arrays[f"tr.warm.{l}.{name}.tau"].copy(),
                                          arrays[f"tr.warm.{l}.{name}.rho"].copy())
        tr.epoch = meta["epoch"]
        tr.rng.bit_generator.state = meta["rng"]
        for (l, name) in tr.msgs:
            key = f"{l}.{name}"
            for attr, store in (("msgs", tr.msgs), ("prior", tr.prior), ("total", tr.total)):
                store[(l, name)] = Gaussian(arrays[f"tr.{attr}.{key}.tau"].copy(), arrays[f"tr.{attr}.{key}.rho"].copy())
        return tr


def _templates_to_json(templates):
    if templates is None:
        raise ValueError("this FactorGraph was not built from templates; save needs create_factor_graph")
    out = []
    for t in templates:
        if not isinstance(t, (tuple, list)):
            raise ValueError(f"cannot save a graph with a custom factor instance {t!r}; register it with "
                             "layers.register_factor and use a (name, *args) template instead")
        out.append(list(t))
    return out


def _templates_from_json(templates):
    return [tuple(t) for t in templates]


def _orders(order):
    """The within-batch orders ``order`` stands for (all of a :class:`~schedules.ByEpoch`)."""
    return order.orders if isinstance(order, ByEpoch) else (order,)
