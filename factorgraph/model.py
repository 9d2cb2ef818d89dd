"""FactorGraph: a chain of per-layer factors with one training branch per batch slot (SPEC 2, 6).

Usually built with :func:`layers.create_factor_graph` from layer templates.  Messages flow along whole
branches: ``forward_pass(x, i)`` from the input to the training signal, ``backward_pass(y, i)`` back;
``train_batch`` sweeps the batch ``num_training_its`` times in one within-batch order and recomputes
the weight marginals exactly after each sweep; ``predict`` propagates moments through the predictive
branch.  The order of the layers in every pass is a :class:`schedules.Schedule` derived from the
explicit graph :meth:`FactorGraph.graph`.
"""

import json
import math
import warnings

import numpy as np
from tqdm.auto import tqdm

from factorgraph import config, guards, kernels
from factorgraph.guards import ImproperMessageError
from factorgraph.backend import check_dtype, resolve_device, to_device
from factorgraph.equations import argmax_probs, probit_softmax
from factorgraph.gaussian import Gaussian
from factorgraph.graph import build_graph, draw_graph
from schedules.orders import Chains, Parallel, Shuffled, is_order
from schedules.traversal import backward_schedule, forward_schedule, predict_schedule


class FactorGraph:
    """A Bayesian network as a factor graph of per-layer factors.

    Parameters
    ----------
    layers : list of Factor
        The factors in data-flow order; the last must be a training signal (``is_signal``).
    input_shape : tuple of int
        Shape of one input example.
    batch_size : int
        Number of example slots B (training branches).
    dtype : float32 or float64
    seed : int or None
        Seed of the generator used for priors and within-batch orders.
    templates : list, optional
        The templates the graph was built from (kept for save/load).
    """

    def __init__(self, layers, input_shape, batch_size, *, dtype=np.float64, seed=None, templates=None):
        self.dtype = check_dtype(dtype)
        if not isinstance(batch_size, (int, np.integer)) or batch_size < 1:
            raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
        if not layers or not layers[-1].is_signal:
            raise ValueError("the last layer must be a training signal such as ('Regression', beta2)")
        self.layers = list(layers)
        self.input_shape = tuple(int(s) for s in input_shape)
        self.batch_size = int(batch_size)
        self.seed = seed
        self.templates = templates
        self.rng = np.random.default_rng(seed)
        self.device = "cpu"
        shape = self.input_shape
        constant = True
        for layer in self.layers:
            layer.build(shape, self.batch_size, dtype=self.dtype, rng=self.rng, constant_input=constant)
            if layer.has_weights:
                constant = False
            shape = layer.output_shape_
        G = self.graph(branches=1)
        self.schedules = {
            "forward": forward_schedule(G, 0),
            "backward": backward_schedule(G, 0),
            "predict": predict_schedule(G),
        }

    # --- device ---------------------------------------------------------------------------------
    def to(self, device):
        """Move every array of the graph to ``device`` ("cpu" or "cuda"; cuda needs cupy and a GPU).

        The public API is the same on both devices; results come back as NumPy arrays.  A Trainer
        driving this graph follows it at its next epoch.
        """
        resolve_device(device)
        if device != self.device:
            for layer in self.layers:
                arrays = {k: (v if k == "seen_back" else to_device(v, device)) for k, v in layer.state().items()}
                layer.load_state(arrays)
                if hasattr(layer, "on_device"):
                    layer.on_device(device)
            self.device = device
        return self

    def _flush_guards(self):
        for layer in self.layers:
            if hasattr(layer, "flush_guards"):
                layer.flush_guards()
        guards.flush()  # counts of device masks (no-op on the CPU)

    # --- structure ------------------------------------------------------------------------------
    @property
    def signal(self):
        return self.layers[-1]

    @property
    def output_shape(self):
        return self.signal.output_shape_

    def weighted_layers(self):
        """``[(index, layer)]`` of the layers that own weights."""
        return [(l, layer) for l, layer in enumerate(self.layers) if layer.has_weights]

    def num_parameters(self):
        return sum(int(np.prod(s.shape)) for _, layer in self.weighted_layers() for s in layer.params.values())

    def graph(self, branches=None):
        """The explicit factor graph (networkx) with ``branches`` training branches (default: all B)."""
        k = self.batch_size if branches is None else int(branches)
        if not 0 <= k <= self.batch_size:
            raise ValueError(f"branches must be between 0 and batch_size={self.batch_size}, got {branches}")
        return build_graph(self.layers, self.input_shape, range(k))

    def draw(self, path, branches=2):
        """Draw the graph with ``branches`` training branches and the predictive branch to ``path``."""
        draw_graph(self.graph(branches), path)

    def __repr__(self):
        body = "\n".join(f"  {l}: {layer.describe()}" for l, layer in enumerate(self.layers))
        return f"FactorGraph(batch_size={self.batch_size}, dtype={self.dtype.name}, " \
               f"parameters={self.num_parameters()})\n{body}"

    # --- validation -----------------------------------------------------------------------------
    def _check_inputs(self, X, what="X"):
        X = np.asarray(X)
        if X.ndim == 0 or X.shape[1:] != self.input_shape:
            raise ValueError(f"{what} must have shape (n, {', '.join(map(str, self.input_shape))}), got {X.shape}")
        if not np.issubdtype(X.dtype, np.number):
            raise TypeError(f"{what} must be numeric, got dtype {X.dtype}")
        if not np.all(np.isfinite(X)):
            raise ValueError(f"{what} contains NaN or inf")
        return X.astype(self.dtype, copy=False)

    def _check_slot(self, i):
        if isinstance(i, bool) or not isinstance(i, (int, np.integer)) or not 0 <= i < self.batch_size:
            raise ValueError(f"example slot must be an integer in [0, {self.batch_size}), got {i!r}")

    # --- passes ---------------------------------------------------------------------------------
    def _xp(self):
        return resolve_device(self.device)

    def forward_pass(self, x, i):
        """Training forward pass of one example ``x`` (shape ``input_shape``) in slot ``i``."""
        self._check_slot(i)
        x = self._xp().asarray(self._check_inputs(np.asarray(x)[None], "x")[0])
        out = self._forward(x, i)
        self._flush_guards()
        return out

    def backward_pass(self, y, i):
        """Training backward pass of target ``y`` in slot ``i`` (after ``forward_pass(x, i)``)."""
        self._check_slot(i)
        y = self._xp().asarray(self.signal.check_targets(np.asarray(y)[None], 1)[0])
        self._backward(y, i)
        self._flush_guards()

    def _forward(self, x, i):
        m = x
        for step in self.schedules["forward"]:
            m = self.layers[step.layer].forward(m, i)
        return m

    def _backward(self, y, i):
        steps = iter(self.schedules["backward"])
        m = self.layers[next(steps).layer].backward_signal(y, i)
        for step in steps:
            m = self.layers[step.layer].backward(m, i)
            if m is None:
                break

    def train_batch(self, X, Y, num_training_its=1, order=None, progress=False):
        """Train on one batch: ``num_training_its`` sweeps over its examples, in one order per call.

        ``X`` (n, *input_shape) with ``n <= batch_size``; ``Y`` targets of the training signal.
        The order (default :class:`schedules.Shuffled`) is drawn once from the graph's generator and
        reused for every sweep; the marginals are recomputed exactly after each sweep (SPEC 6.2).  With
        :class:`schedules.Chunked` the examples of each chunk send their (damped) messages from the same
        marginals, which change once per chunk; :class:`schedules.Parallel` computes each chunk as
        matrices and stores its joint weight message; :class:`schedules.Chains` runs k chains.
        """
        X = self._check_inputs(X)
        n = X.shape[0]
        if n == 0:
            raise ValueError("train_batch got no examples (X is empty)")
        if n > self.batch_size:
            raise ValueError(f"batch has {n} examples but the graph has batch_size={self.batch_size}")
        Y = self.signal.check_targets(Y, n)
        if not isinstance(num_training_its, (int, np.integer)) or num_training_its < 1:
            raise ValueError(f"num_training_its must be a positive integer, got {num_training_its!r}")
        order = order or Shuffled()
        self._check_order(order)
        self._train_checked(X, Y, num_training_its, order, progress)

    def _check_order(self, order):
        """Raise ``TypeError``/``ValueError`` unless ``order`` is a within-batch order this graph can run."""
        if not is_order(order):
            hint = (" (ByEpoch changes the order between epochs: pass it to trainer.Trainer)"
                    if hasattr(order, "at") else "")
            raise TypeError(f"order must be a within-batch order (schedules.Shuffled, Parallel, ...), "
                            f"got {order!r}{hint}")
        if isinstance(order, Parallel):
            bad = [layer.kind for layer in self.layers if not layer.supports_chunks]
            if bad:
                raise ValueError(f"{order} needs layers with batched messages (forward_chunk/backward_chunk); "
                                 f"not supported by: {', '.join(bad)}")
            order.layer_damping(len(self.weighted_layers()))

    def _train_checked(self, X, Y, num_training_its, order, progress=False):
        """:meth:`train_batch` after its checks: ``X``, ``Y`` as its checks return them (the Trainer checks
        its whole training set once and passes batches of it), ``order`` passed :meth:`_check_order`."""
        n = X.shape[0]
        perm = order.permutation(n, self.rng)
        xp = self._xp()
        X, Y = xp.asarray(X), xp.asarray(Y)
        bar = tqdm(total=num_training_its * n, desc="train_batch", leave=False) if progress else None
        for _ in range(num_training_its):
            try:
                if isinstance(order, Parallel):
                    with kernels.threaded(blas_threads=1):  # see kernels.threaded
                        self._sweep_parallel(X, Y, perm, order)
                elif isinstance(order, Chains):
                    self._sweep_chains(X, Y, perm, order.chains, order.damping)
                else:
                    self._sweep(X, Y, perm, getattr(order, "chunk_size", 1), getattr(order, "damping", 1.0))
            except (ZeroDivisionError, FloatingPointError) as e:  # compiled kernels raise these on inf/NaN
                self._diverged(order, f"{type(e).__name__} ({e}) inside a sweep", e)
            if bar is not None:
                bar.update(n)
            with kernels.threaded():  # large passes once per sweep, whatever the order
                self._check_marginals(order, self.recompute_marginals(check=True))
        if bar is not None:
            bar.close()
        self._flush_guards()

    def _check_marginals(self, order, health=None):
        """Raise (never continue silently) when a sweep left a weight marginal non-finite or improper;
        warn (guard ``mean_shift_beyond_prior``) when marginal means ran more than
        ``config.MEAN_SHIFT_WARN_SDS`` batch-prior standard deviations away from the batch prior.
        ``health``: the recompute's own checks (:meth:`recompute_marginals`), where it made them."""
        far = []
        named = [(l, layer, name, s) for l, layer in self.weighted_layers()
                 for name, s in layer.params.items()]
        health = list(health or [None] * len(named))
        missing = [j for j, h in enumerate(health) if h is None]
        for j, h in zip(missing, self._marginals_health([named[j][3] for j in missing])):
            health[j] = h
        for (l, layer, name, s), (ok, n, top) in zip(named, health):
            if not ok:
                self._diverged(order, f"the marginal of layer {l} ({layer.kind}) {name} is non-finite or "
                                      "improper after a sweep")
            if n:
                far.append(f"layer {l} ({layer.kind}) {name}: {n} of {s.q.tau.size}, up to {top:.3g}")
        if far:
            guards.record("mean_shift_beyond_prior", len(far))
            warnings.warn(f"training under {order} may be diverging: weight means moved more than "
                          f"{config.MEAN_SHIFT_WARN_SDS:g} batch-prior standard deviations ({'; '.join(far)}); "
                          "use smaller chunks or stronger damping", RuntimeWarning, stacklevel=3)

    @classmethod
    def _marginals_health(cls, slots):
        """:meth:`_marginal_health` of each weight slots; on the GPU one kernel per tensor and one transfer
        for all (:func:`factorgraph.kernels.sites_cuda.marginal_checks`)."""
        if slots and type(slots[0].q.tau) is not np.ndarray and all(s.q.tau.shape == s.prior.tau.shape
                                                                    for s in slots):
            tensors = [(s.q.tau, s.q.rho, s.prior.tau, s.prior.rho) for s in slots]
            sites = kernels.module(slots[0].q.tau, "sites")
            return sites.marginal_checks(tensors, config.MEAN_SHIFT_WARN_SDS)
        return [cls._marginal_health(s) for s in slots]

    @staticmethod
    def _marginal_health(s):
        """``(finite and proper?, means beyond MEAN_SHIFT_WARN_SDS prior sds, largest shift)`` of weight slots
        ``s`` (the largest shift is reported where some mean is beyond): a compiled pass on the CPU
        (:func:`factorgraph.kernels.sites_cpu.marginal_check`), else the array module's operations."""
        q, prior, limit = s.q, s.prior, config.MEAN_SHIFT_WARN_SDS
        if type(q.tau) is np.ndarray and kernels.enabled() and q.tau.shape == prior.tau.shape:
            from factorgraph.kernels import sites_cpu

            flat = [np.ascontiguousarray(a).reshape(-1) for a in (q.tau, q.rho, prior.tau, prior.rho)]
            ok, n, top = sites_cpu.marginal_check(*flat, limit)
            return bool(ok), int(n), float(top)
        xp = q.xp
        ok = bool(xp.isfinite(q.tau).all()) and bool((q.rho > 0).all()) and bool(xp.isfinite(q.rho).all())
        shift = xp.abs(q.mean - prior.mean) * xp.sqrt(prior.rho)
        return ok, int((shift > limit).sum()), float(shift.max()) if ok else math.nan

    @staticmethod
    def _diverged(order, what, cause=None):
        guards.record("diverged_sweep", 1)
        raise ImproperMessageError(f"training diverged under {order}: {what}; use smaller chunks or stronger "
                                   "damping") from cause

    def _slots(self):
        return [s for _, layer in self.weighted_layers() for s in layer.params.values()]

    def _sweep(self, X, Y, perm, chunk, damping):
        """One sweep example by example; chunks > 1 (or damping) defer the marginal update per chunk."""
        parallel = chunk > 1 or damping != 1.0
        slots = self._slots()
        for start in range(0, len(perm), chunk):
            if parallel:
                for s in slots:
                    s.defer(damping)
            for i in perm[start:start + chunk]:
                i = int(i)
                self._forward(X[i], i)
                self._backward(Y[i], i)
            if parallel:
                for s in slots:
                    s.commit()

    def _sweep_parallel(self, X, Y, perm, order):
        """One sweep of :class:`schedules.Parallel`: chunk ``k`` is weight site ``k`` (its step bounded by
        ``order.max_step`` marginal sds per weight when set)."""
        slots = self._slots()
        for s in slots:
            s.max_step = getattr(order, "max_step", None)
        weighted = [l for l, _ in self.weighted_layers()]
        damping = dict(zip(weighted, order.layer_damping(len(weighted))))
        try:
            for k, start in enumerate(range(0, len(perm), order.chunk_size)):
                idx = perm[start:start + order.chunk_size]
                m = X[idx]
                for step in self.schedules["forward"]:
                    m = self.layers[step.layer].forward_chunk(m, idx, k)
                steps = iter(self.schedules["backward"])
                m = self.layers[next(steps).layer].backward_signal_chunk(Y[idx], idx)
                for step in steps:
                    m = self.layers[step.layer].backward_chunk(m, idx, k, damping.get(step.layer, 1.0),
                                                               order.messages)
                    if m is None:
                        break
        finally:
            for s in slots:
                s.max_step = None

    def _sweep_chains(self, X, Y, perm, k, damping):
        """One sweep of :class:`schedules.Chains`: part ``j = perm[j::k]`` runs on its own marginal copy."""
        slots = self._slots()
        own = [[s.q.copy() for s in slots] for _ in range(k)]
        parts = [perm[j::k] for j in range(k)]
        for s in slots:
            s.damping = float(damping)
        try:
            for t in range(len(parts[0])):
                for j in range(k):
                    if t < len(parts[j]):
                        for s, q in zip(slots, own[j]):
                            s.q = q
                        i = int(parts[j][t])
                        self._forward(X[i], i)
                        self._backward(Y[i], i)
        finally:
            for s in slots:
                s.damping = 1.0

    def recompute_marginals(self, check=False):
        """Set every weight marginal to the exact product of its batch prior and per-example messages.  With
        ``check``, the list of each weight tensor's health (:meth:`_marginal_health`) where the recompute's
        compiled pass checked it, ``None`` for the others."""
        limit = config.MEAN_SHIFT_WARN_SDS if check else None
        health = [s.recompute(limit) for _, layer in self.weighted_layers() for s in layer.params.values()]
        return health if check else None

    def reset_batch(self, priors, removed=None, lazy=False):
        """Start a new batch: ``priors[l][name]`` (divided by ``removed[l][name]`` where given: the Trainer's
        total without the batch's own message) becomes each weight's batch prior and marginal; every
        per-example message and cache is cleared (SPEC 8.3 step 2).  ``lazy``: the weights' part is not
        written until read (:meth:`factorgraph.factor.WeightSlots.reset`)."""
        for l, layer in self.weighted_layers():
            for name, slots in layer.params.items():
                slots.reset(priors[l][name], None if removed is None else removed[l][name], lazy=lazy)
        for layer in self.layers:
            layer.reset_batch_caches()

    def activation_caches(self, n=None):
        """``{(layer, name): Gaussian (n, ...)}``: the per-example backward messages to activations of the
        first ``n`` slots (the caches a warm start fills)."""
        n = self.batch_size if n is None else n
        return {(l, name): getattr(layer, name)[:n] for l, layer in enumerate(self.layers)
                for name in layer.activation_cache_names if getattr(layer, name, None) is not None}

    def warm_start_caches(self, messages):
        """Fill activation caches with ``messages[(layer, name)]`` (one example's shape) after a reset."""
        for (l, name), g in messages.items():
            self.layers[l].warm_start(name, g)

    # --- prediction -----------------------------------------------------------------------------
    def predict_messages(self, X):
        """The predictive output message (after the training signal's predict) for inputs ``X``."""
        X = self._check_inputs(X)
        xp = self._xp()
        outs = []
        with kernels.threaded():
            self.recompute_marginals()
            for start in range(0, X.shape[0], self.batch_size):
                m = xp.asarray(X[start:start + self.batch_size])
                for step in self.schedules["predict"]:
                    m = self.layers[step.layer].predict(m)
                outs.append(m)
        self._flush_guards()
        tau = to_device(xp.concatenate([o.tau for o in outs]), "cpu")
        rho = to_device(xp.concatenate([o.rho for o in outs]), "cpu")
        return Gaussian(tau, rho)

    def predict(self, X, split=False):
        """Posterior predictive for ``X`` (n, *input_shape).

        Classification head: class probabilities (n, C).  Regression head: ``(mean, var)`` of shape
        (n, d_out) with ``var`` = epistemic + aleatoric; with ``split=True`` returns
        ``(mean, epistemic_var, aleatoric_var)``.
        """
        m = self.predict_messages(X)
        if self.signal.output == "probabilities":
            return self.signal.probabilities(m)
        mean, var = m.mean, m.var
        if split:
            ale = np.full_like(var, self.signal.beta2)
            return mean, var - ale, ale
        return mean, var

    def predict_proba(self, X, mapping="argmax"):
        """Class probabilities (n, C) for every head.

        For a regression head trained on one-hot targets the Gaussian predictive (beta^2 included) is
        mapped to probabilities by ``mapping``: ``"argmax"`` (SPEC 6.2: argmax probabilities with noise
        ``ARGMAX_NOISE``), ``"probit"`` (probit-approximated softmax of the predictive) or a float, used as
        the argmax noise variance (choose it by held-out likelihood).
        """
        m = self.predict_messages(X)
        if self.signal.output == "probabilities":
            return self.signal.probabilities(m)
        if m.shape[-1] < 2:
            raise ValueError("predict_proba needs at least 2 outputs (one-hot targets)")
        if mapping == "argmax":
            return argmax_probs(m, config.ARGMAX_NOISE)
        if mapping == "probit":
            return probit_softmax(m)
        if isinstance(mapping, (int, float)) and not isinstance(mapping, bool) and mapping >= 0:
            return argmax_probs(m, float(mapping))
        raise ValueError(f"mapping must be 'argmax', 'probit' or a noise variance >= 0, got {mapping!r}")

    def fit_argmax_noise(self, X_val, y_val, grid=None):
        """Choose the argmax noise variance of a regression head's probability mapping by held-out
        likelihood: the value on ``grid`` (default 0.01 .. 10, log-spaced) with the lowest NLL of
        ``predict_proba(X_val, mapping=noise)`` on integer labels ``y_val``.  Returns the noise."""
        from factorgraph import metrics

        if self.signal.output != "gaussian":
            raise ValueError("fit_argmax_noise applies to a regression head trained on one-hot targets")
        grid = np.logspace(-2, 1, 31) if grid is None else np.asarray(grid, float)
        m = self.predict_messages(X_val)
        losses = [metrics.nll(argmax_probs(m, float(b)), y_val) for b in grid]
        return float(grid[int(np.argmin(losses))])

    def evaluate(self, X, Y, X_ood=None, mapping="argmax"):
        """Metrics of the posterior predictive on ``(X, Y)`` as a dict (see :mod:`factorgraph.metrics`).

        Regression head with float targets (n, d): rmse, nll, coverage.  Classification head, or a
        regression head given integer labels (n,) (R-MP, probabilities by ``mapping``): accuracy, nll,
        brier, ece, thesis_ece, relative-calibration AUC and, with ``X_ood``, OOD AUROC/AUPR.
        """
        from factorgraph import metrics

        X = self._check_inputs(X)
        n = X.shape[0]
        if n == 0:
            raise ValueError("evaluate got no examples (X is empty)")
        labels = np.asarray(Y)
        if self.signal.output == "gaussian" and not (labels.ndim == 1 and np.issubdtype(labels.dtype, np.integer)):
            Y = self.signal.check_targets(Y, n)
            mean, var = self.predict(X)
            return metrics.regression_metrics(mean, var, Y)
        C = self.output_shape[0]
        if labels.shape != (n,) or not np.issubdtype(labels.dtype, np.integer):
            raise ValueError(f"classification labels must be integers of shape ({n},), got {labels.dtype} {labels.shape}")
        if n and (labels.min() < 0 or labels.max() >= C):
            raise ValueError(f"labels must lie in [0, {C}), got range [{labels.min()}, {labels.max()}]")
        P = self.predict_proba(X, mapping)
        P_ood = None if X_ood is None else self.predict_proba(X_ood, mapping)
        return metrics.classification_metrics(P, labels, P_ood)

    # --- persistence ----------------------------------------------------------------------------
    def state(self):
        """All arrays of the graph's state, flat ``{key: ndarray}`` (for npz files)."""
        out = {}
        for l, layer in enumerate(self.layers):
            for k, v in layer.state().items():
                out[f"layer{l}.{k}"] = to_device(v, "cpu")
        out["fg.rng"] = np.array(json.dumps(self.rng.bit_generator.state))
        return out

    def load_state(self, arrays):
        for l, layer in enumerate(self.layers):
            prefix = f"layer{l}."
            layer.load_state({k[len(prefix):]: (v if k.endswith("seen_back") else to_device(v, self.device))
                              for k, v in arrays.items() if k.startswith(prefix)})
        self.rng.bit_generator.state = json.loads(str(arrays["fg.rng"]))
