"""Trainer: batched training over K batches with per-batch messages (SPEC 8, intended semantics).

For each weighted tensor the Trainer keeps the true prior and one message ``W_msg[b]`` per batch
(initially ``G(0, 0)``), and a running total ``Q = prior * prod_b W_msg[b]``.  For every batch ``b``
visited in an epoch:

1. batch prior ``P_b = Q / W_msg[b]``, formed as a new array (the stored messages are not mutated);
2. the FactorGraph is reset: slot B := ``P_b``, q := ``P_b``, per-example messages and caches cleared;
3. ``train_batch(X_b, Y_b, its)``;
4. ``L_b`` = product of the batch's per-example messages; ``W_msg[b] := EMA(W_msg[b], L_b, beta_e)`` and
   ``Q`` is updated by the difference (recomputed exactly at the end of each epoch).

Batches are contiguous blocks of the training set in its given order; the batch visit order is
reshuffled every epoch by a dedicated generator (seed 42 by default), the within-batch order by the
graph's generator.  The damping rate follows ``damping(epoch)``, 1-based across calls.
"""

import json

import numpy as np
from tqdm.auto import tqdm

from factorgraph.backend import to_device
from factorgraph.gaussian import Gaussian
from schedules.epochs import Constant, EpochSchedule
from trainer.damping import thesis_damping

_FORMAT = "factorgraph-trainer-1"


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
    order : within-batch order, optional
        Passed to ``train_batch`` (default shuffled).
    progress : bool or None
        Show a tqdm bar; ``None`` shows it only on a terminal.
    callbacks : dict, optional
        ``{"on_batch_end": f(trainer, epoch, batch), "on_epoch_end": f(trainer, epoch)}``.
    """

    def __init__(self, fg, X, Y, seed=42, damping=thesis_damping, order=None, progress=None, callbacks=None):
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
        B = fg.batch_size
        self.batches = [(s, min(s + B, X.shape[0])) for s in range(0, X.shape[0], B)]
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
        """``P_b = Q / W_msg[b]`` for every weighted tensor, as new arrays (``{layer: {name: G}}``)."""
        out = {}
        for (l, name), q in self.total.items():
            m = self.msgs[(l, name)]
            out.setdefault(l, {})[name] = Gaussian(q.tau - m.tau[b], q.rho - m.rho[b])
        return out

    def _follow_device(self):
        """Move the batch messages to the graph's device (after ``fg.to(...)``)."""
        if self.device != self.fg.device:
            dev = self.fg.device
            for store in (self.prior, self.msgs, self.total):
                for key, g in store.items():
                    store[key] = Gaussian(to_device(g.tau, dev), to_device(g.rho, dev))
            self.device = dev

    def train_epoch(self, num_training_its=1):
        """One epoch: every batch once, ``num_training_its`` sweeps per visit."""
        self._follow_device()
        self.epoch += 1
        beta = self.damping(self.epoch)
        order = self.rng.permutation(self.num_batches)
        disable = None if self.progress is None else not self.progress  # None: only on a terminal
        bar = tqdm(order, desc=f"epoch {self.epoch}", disable=disable, leave=False)
        for b in bar:
            start, stop = self.batches[b]
            self.fg.reset_batch(self.batch_prior(b))
            self.fg.train_batch(self.X[start:stop], self.Y[start:stop], num_training_its, order=self.order)
            for l, layer in self.fg.weighted_layers():
                for name, slots in layer.params.items():
                    key = (l, name)
                    new = slots.likelihood(stop - start)
                    old = self.msgs[key][b]
                    damped = old.damp(new, beta)
                    self.total[key] = Gaussian(self.total[key].tau + damped.tau - old.tau,
                                               self.total[key].rho + damped.rho - old.rho)
                    self.msgs[key][b] = damped
            if "on_batch_end" in self.callbacks:
                self.callbacks["on_batch_end"](self, self.epoch, int(b))
        bar.close()
        self.recompute_total()
        if "on_epoch_end" in self.callbacks:
            self.callbacks["on_epoch_end"](self, self.epoch)

    def recompute_total(self):
        """``Q := prior * prod_b W_msg[b]`` exactly."""
        for key, m in self.msgs.items():
            p = self.prior[key]
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
        }
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
        if meta.get("format") != _FORMAT:
            raise ValueError(f"{path}: not a factorgraph trainer file (format {meta.get('format')!r})")
        templates = _templates_from_json(meta["templates"])
        fg = create_factor_graph(templates, meta["batch_size"], seed=meta["seed"], dtype=meta["dtype"])
        fg.load_state({k[3:]: v for k, v in arrays.items() if k.startswith("fg.")})
        if "X" in arrays:
            X, Y = arrays["X"], arrays["Y"]
        elif X is None or Y is None:
            raise ValueError(f"{path} was saved without its training data; pass X and Y to Trainer.load")
        tr = cls(fg, X, Y, seed=meta["trainer_seed"], damping=damping, order=order,
                 progress=progress, callbacks=callbacks)
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
