"""The protocol every per-layer factor follows, and the per-example weight-message store.

A layer of the network is one factor node contracted over all branches: it holds, per example slot
``i`` of the active batch, whatever it must remember between iterations (messages to its weights,
backward messages to its input), and exposes three operations:

``forward(m_in, i)``
    training forward for example slot ``i``; ``m_in`` is a :class:`Gaussian` of the layer's input shape,
    or a plain array of constants when the layer sits before the first weighted layer.  Returns the
    forward message of the output.
``backward(m_out, i)``
    training backward for slot ``i`` given the backward message on the output; updates the layer's own
    weight messages and returns the backward message to the input (``None`` for constant inputs).
``predict(m_in)``
    batched prediction (leading axis ``n``), using the weight marginals; returns the output message.

For the batched schedule (:class:`schedules.Parallel`) a factor also implements
``forward_chunk(m_in, idx, site)`` / ``backward_chunk(m_out, idx, site, damping, expansion)``: the same
messages for the examples in slots ``idx`` at once (leading axis ``len(idx)``); a weighted factor stores
the chunk's joint weight message in slot ``site`` (``damping=None``: the slots' own; ``expansion=None``:
the product of the exact per-example messages, 0 or 1: the GEMM form to that order, see
:func:`factorgraph.equations.s2_backward_gemm`); a signal implements ``backward_signal_chunk(Y, idx)``.
Such a factor sets ``supports_chunks = True``.

A training signal (likelihood) is the last factor: it sets ``is_signal = True`` and implements
``backward_signal(y, i)`` (the first backward message), ``predict`` (the predictive of the head) and
``check_targets(Y)``.

To write a custom factor, subclass :class:`Factor`, set ``kind`` and implement ``output_shape``,
``forward``, ``backward`` and ``predict``; pass an instance in the template list of
``create_factor_graph`` (see ``examples/custom_factor.py``).  Factors hold no message math of their own
beyond calls to :mod:`factorgraph.equations`.
"""

import math

import numpy as np

from factorgraph import config, guards, kernels
from factorgraph.backend import get_array_module
from factorgraph.gaussian import Gaussian, WithMoments, divide


class Factor:
    """Base class of a per-layer factor (see the module docstring for the protocol)."""

    #: short name used in the graph, errors and saved files
    kind = "Factor"
    #: interfaces of the factor node; weighted factors add "weight" and "bias"
    interfaces = ("input", "output")
    #: True for likelihood / training-signal factors (must be last)
    is_signal = False
    #: True when the factor owns weight variables (stored in ``self.params``)
    has_weights = False
    #: True when the factor implements forward_chunk / backward_chunk (batched schedules)
    supports_chunks = False
    #: attributes holding per-example Gaussian caches, saved with the state (absent ones are skipped)
    cache_names = ()
    #: the caches among them that hold backward messages to activations (warm-startable)
    activation_cache_names = ()

    def __init__(self):
        self.input_shape = None
        self.output_shape_ = None
        self.constant_input = False
        self.params = {}

    # --- construction ---------------------------------------------------------------------------
    def output_shape(self, input_shape):
        """Return the output shape for ``input_shape`` or raise ``ValueError`` naming the problem."""
        return tuple(input_shape)

    def build(self, input_shape, batch_size, *, dtype, rng, constant_input):
        """Allocate per-example state for ``batch_size`` slots; called once by the graph builder."""
        self.input_shape = tuple(input_shape)
        self.output_shape_ = tuple(self.output_shape(input_shape))
        self.batch_size = batch_size
        self.dtype = np.dtype(dtype)
        self.constant_input = constant_input

    # --- message passing ------------------------------------------------------------------------
    def forward(self, m_in, i):
        raise NotImplementedError(f"{type(self).__name__} must implement forward(m_in, i)")

    def backward(self, m_out, i):
        raise NotImplementedError(f"{type(self).__name__} must implement backward(m_out, i)")

    def predict(self, m_in):
        raise NotImplementedError(f"{type(self).__name__} must implement predict(m_in)")

    def forward_chunk(self, m_in, idx, site):
        raise NotImplementedError(f"{type(self).__name__} does not support batched schedules (forward_chunk)")

    def backward_chunk(self, m_out, idx, site, damping, expansion):
        raise NotImplementedError(f"{type(self).__name__} does not support batched schedules (backward_chunk)")

    def backward_signal_chunk(self, Y, idx):
        """A training signal's first backward messages for the stacked targets ``Y`` of slots ``idx``."""
        raise NotImplementedError(f"{type(self).__name__} does not support batched schedules "
                                  "(backward_signal_chunk)")

    def reset_batch_caches(self):
        """Forget the per-example caches kept across iterations (backward messages to inputs, ...)."""

    def warm_start(self, name, g):
        """Set every example slot of activation cache ``name`` to the message ``g`` (one example's shape)."""
        cache = getattr(self, name)
        cache.tau[...] = g.tau
        cache.rho[...] = g.rho

    # --- persistence ----------------------------------------------------------------------------
    def state(self):
        """Arrays that define this factor's state (for save/load), as ``{name: ndarray}``."""
        out = {}
        for pname, slots in self.params.items():
            for k, v in slots.state().items():
                out[f"{pname}.{k}"] = v
        for name in self.cache_names:
            g = getattr(self, name, None)
            if g is not None:
                out[f"{name}.tau"], out[f"{name}.rho"] = g.tau, g.rho
        return out

    def load_state(self, arrays):
        for pname, slots in self.params.items():
            slots.load_state({k[len(pname) + 1:]: v for k, v in arrays.items() if k.startswith(pname + ".")})
        for name in self.cache_names:
            if f"{name}.tau" in arrays:
                setattr(self, name, Gaussian(arrays[f"{name}.tau"].copy(), arrays[f"{name}.rho"].copy()))

    def describe(self):
        return f"{self.kind}{self.input_shape}->{self.output_shape_}"


class _Written:
    """An attribute of :class:`WeightSlots` (kept as ``_name``) that writes a pending lazy reset before it
    is read or set."""

    def __set_name__(self, owner, name):
        self.attr = "_" + name

    def __get__(self, slots, owner=None):
        if slots is None:
            return self
        if slots._lazy is not None:
            slots._materialise()
        return getattr(slots, self.attr)

    def __set__(self, slots, value):
        if slots._lazy is not None:
            slots._materialise()
        setattr(slots, self.attr, value)


class WeightSlots:
    """Messages to one weight tensor from every example slot, plus the batch prior and the marginal.

    ``msgs`` has shape ``(B + 1, *shape)``: slots ``0..B-1`` hold the per-example messages, slot ``B`` the
    batch prior.  The marginal ``q`` is their product (sum of natural parameters), maintained
    incrementally by :meth:`replace` (``q <- q + new - old``) and exactly by :meth:`recompute`
    (SPEC 7).

    A lazy reset (``reset(total, removed, lazy=True)``, the Trainer's batches of one chunk) writes nothing:
    the batch prior stays ``total - removed`` in the Trainer's arrays, which the fused chunk kernels read
    (:meth:`fused_site`, :meth:`lazy_slot`), and the first chunk writes only its site's slot.  Anything else
    that reads ``msgs`` or ``q`` (both properties) first writes the state the reset and that chunk stand for
    (:meth:`_materialise`), with the same numbers.
    """

    def __init__(self, prior, batch_size):
        xp = prior.xp
        self.batch_size = batch_size
        self.shape = prior.shape
        self._lazy = None  # (total, removed) of a lazy reset not yet written (see the class docstring)
        self._lazy_health = None  # (ok, far) once the lazy batch's first chunk has replaced slot 0
        self._dirty = 0  # slots 0 .. _dirty-1 may still hold the messages of before a lazy reset
        self.msgs = Gaussian.uniform((batch_size + 1,) + prior.shape, prior.dtype, xp)
        self.msgs[batch_size] = prior
        self.q = prior.copy()
        self.pending = None  # accumulated marginal change while deferred (parallel schedules)
        self.damping = 1.0
        self.used = 0  # slots 0 .. used-1 may hold messages; the others are G(0, 0)
        self._sums = None  # (tau, rho) sums of slots 0 .. used-1 from the last recompute, while unchanged
        self._sum_buf = None  # the arrays the compiled recompute writes those sums into, kept between batches
        self.max_step = None  # trust region of :meth:`replace` in marginal sds (schedules.Parallel)

    #: the slot messages ``(B + 1, *shape)`` and the marginal (written first where a lazy reset is pending)
    msgs = _Written()
    q = _Written()

    @property
    def lazy(self):
        """Whether a lazy reset is pending (its batch prior not written; see the class docstring)."""
        return self._lazy is not None

    def _drop_lazy(self):
        """Forget a pending lazy reset without writing it (a new reset overwrites what it stood for)."""
        if self._lazy is not None:
            self.used = max(self.used, self._dirty)
            self._lazy = self._lazy_health = None
            self._dirty = 0

    def _materialise(self):
        """Write the state a pending lazy reset stands for: the batch prior ``total - removed`` in slot ``B``
        and ``q`` with the old slots cleared (:meth:`reset`); after the first chunk's replacement
        (:meth:`lazy_replaced`) also ``q = prior + slot 0``, the exact marginal (:meth:`recompute`), the
        value the chunk's incremental update gave there."""
        (total, removed), replaced = self._lazy, self._lazy_health is not None
        self._drop_lazy()
        if not replaced:
            self.reset(total, removed)
            return
        self.used = 0  # keep slot 0: it holds the chunk's message
        self.reset(total, removed)
        self.used = 1
        self.recompute()

    def lazy_slot(self, i):
        """``(tau, rho)`` of slot ``i`` for a fused chunk kernel to write the site's new message into, where
        a lazy reset is pending and ``i`` is its first site (0), no chunk has replaced it yet and nothing is
        deferred, with the CPU kernels on; else ``None``.  :meth:`fused_site` then gives the Trainer's
        ``(total, removed)`` arrays in place of ``(q, slot i)``."""
        if (self._lazy is None or i != 0 or self._lazy_health is not None or self.pending is not None
                or not kernels.enabled()):
            return None
        return self._msgs.tau[0], self._msgs.rho[0]

    def lazy_replaced(self, ok, far):
        """A fused kernel wrote the lazy batch's first site message (:meth:`lazy_slot`); ``(ok, far)`` is its
        check of the new marginal (:func:`factorgraph.kernels.sites_cpu.replace_from_prior`), which
        :meth:`recompute` returns."""
        self._lazy_health = (bool(ok), int(far))

    @property
    def prior(self):
        """The batch prior (slot ``B``)."""
        return self.msgs[self.batch_size]

    def cavity(self, i):
        """``q / m_i`` by strict division."""
        return divide(self.q, self.msgs[i])

    def cavity_moments(self, i):
        """:meth:`cavity` with its mean and variance (:class:`WithMoments`), in one compiled pass.  On the GPU
        the counts stay on the device: an improper division raises when the guards are flushed (after the
        batch, :func:`factorgraph.guards.flush`), not at once.  Where a lazy reset is pending and ``i`` is its
        site (:meth:`lazy_slot`), the cavity is the batch prior, the strict division ``total / removed``,
        and nothing is written."""
        if self.lazy_slot(i) is not None:
            q, m = self._lazy
        else:
            q, m = self.q, self.msgs[i]
        cpu = type(m.tau) is np.ndarray
        if (cpu and not kernels.enabled()) or not q.tau.flags.c_contiguous or not q.rho.flags.c_contiguous:
            return self.cavity(i).with_moments()
        xp = q.xp
        out = [xp.empty(self.shape, m.dtype) for _ in range(4)]
        args = (q.tau.reshape(-1), q.rho.reshape(-1), m.tau.reshape(-1), m.rho.reshape(-1),
                config.STRICT_DIVISION_RTOL, *(o.reshape(-1) for o in out))
        if not cpu:  # counted on the device; an improper division raises when the guards are flushed
            counts = guards.device_counts(("strict_division_roundoff", "improper_division"), xp)
            kernels.module(m.tau, "sites").cavity_moments(*args, counts)
            return WithMoments.of(*out)
        roundoff, bad = kernels.module(m.tau, "sites").cavity_moments(*args)
        if bad:
            worst = float((q.rho - m.rho).min())
            raise guards.ImproperMessageError(f"division would give negative precision (worst {worst:.3g}); "
                                              f"{bad} element(s) beyond tolerance")
        guards.record("strict_division_roundoff", roundoff)
        return WithMoments.of(*out)

    def replace(self, i, new, damping=None):
        """Store ``new`` as slot ``i``'s message and update the marginal incrementally; while deferred,
        store ``old + damping (new - old)`` and accumulate the change without touching ``q``.  An explicit
        ``damping`` overrides the deferred one.  Where a lazy reset is pending and ``i`` is its site
        (:meth:`lazy_slot`), :func:`factorgraph.kernels.sites_cpu.replace_from_prior` writes only the slot
        (the same numbers, with the after-sweep check)."""
        slot = self.lazy_slot(i)
        if slot is not None and np.shape(new.tau) == np.shape(new.rho) == self.shape:
            self._replace_lazy(i, slot, new, self.damping if damping is None else damping)
            return
        self.touch(i)
        old_tau, old_rho = self.msgs.tau[i], self.msgs.rho[i]
        damping = self.damping if damping is None else damping
        mod = None if self.pending is not None else kernels.module(old_tau, "sites")
        if (mod is not None and self.q.tau.flags.c_contiguous and self.q.rho.flags.c_contiguous
                and np.shape(new.tau) == old_tau.shape and np.shape(new.rho) == old_tau.shape):
            xp = self.q.xp
            args = (self.q.tau.reshape(-1), self.q.rho.reshape(-1), old_tau.reshape(-1), old_rho.reshape(-1),
                    xp.ascontiguousarray(new.tau, old_tau.dtype).reshape(-1),
                    xp.ascontiguousarray(new.rho, old_rho.dtype).reshape(-1),
                    # in the slots' dtype, as NumPy computes ``old + damping (new - old)`` for a float32 slot
                    old_tau.dtype.type(damping), old_tau.dtype.type(-1.0 if self.max_step is None else self.max_step))
            if xp is np:
                guards.record("parallel_step_limit", mod.replace_site(*args))
            else:  # the count stays on the device until the guards are flushed
                mod.replace_site(*args, guards.device_counts(("parallel_step_limit",), xp))
            return
        if damping != 1.0:
            new = Gaussian(old_tau + damping * (new.tau - old_tau), old_rho + damping * (new.rho - old_rho))
        if self.max_step is not None and self.pending is None:
            new = self._limit_step(old_tau, old_rho, new)
        sink = self.q if self.pending is None else self.pending
        sink.tau += new.tau - old_tau
        sink.rho += new.rho - old_rho
        self.msgs.tau[i] = new.tau
        self.msgs.rho[i] = new.rho

    def _replace_lazy(self, i, slot, new, damping):
        """:meth:`replace` of the lazy batch's site ``i`` (its ``slot`` arrays) from the batch prior."""
        (total, removed), dt = self._lazy, self._msgs.dtype
        self.touch(i)
        arrays = (total.tau, total.rho, removed.tau, removed.rho, *slot,
                  np.ascontiguousarray(new.tau, dt), np.ascontiguousarray(new.rho, dt))
        kappa, limit = -1.0 if self.max_step is None else self.max_step, config.MEAN_SHIFT_WARN_SDS
        hits, ok, far = kernels.module(total.tau, "sites").replace_from_prior(
            *(a.reshape(-1) for a in arrays), dt.type(damping), dt.type(kappa), dt.type(limit))
        self.lazy_replaced(ok, far)
        guards.record("parallel_step_limit", int(hits))

    def fused_site(self, i, damping=None):
        """``(q_tau, q_rho, s_tau, s_rho, damping, kappa)`` for a compiled kernel that computes slot ``i``'s
        new message and replaces it in place as :meth:`replace` does (``kappa = -1``: no step bound), or
        ``None`` where only :meth:`replace` can (deferred, CPU kernels off).  The kernel's caller calls
        :meth:`touch` first."""
        damping = self.damping if damping is None else damping
        kappa = -1.0 if self.max_step is None else self.max_step
        if self.lazy_slot(i) is not None:  # the batch prior total - removed, read by the kernels
            (total, removed) = self._lazy
            return total.tau, total.rho, removed.tau, removed.rho, damping, kappa
        q = self.q
        if (self.pending is not None or (type(q.tau) is np.ndarray and not kernels.enabled())
                or not q.tau.flags.c_contiguous or not q.rho.flags.c_contiguous):
            return None
        return (q.tau, q.rho, self.msgs.tau[i], self.msgs.rho[i], damping, kappa)

    def _limit_step(self, old_tau, old_rho, new):
        """Scale the step ``new - old`` per weight so the marginal mean moves at most ``max_step`` of the
        marginal's standard deviation: with ``d_tau, d_rho`` the step, ``A = d_tau - mu d_rho`` and
        ``kappa = max_step``, the full step moves the mean by ``|A| / (rho + d_rho)``; where that exceeds
        ``kappa / sqrt(rho)``, the fraction ``s = kappa sqrt(rho) / (|A| - kappa d_rho / sqrt(rho))`` of
        the step moves it by exactly that.  The precision stays between ``rho`` and ``rho + d_rho``."""
        xp = self.q.xp  # the array form; :meth:`replace` mostly runs it inside the compiled ``replace_site``
        d_tau, d_rho = new.tau - old_tau, new.rho - old_rho
        rho = self.q.rho
        sd_inv = xp.sqrt(xp.maximum(rho, 0))
        with np.errstate(divide="ignore", invalid="ignore"):
            mu = xp.where(rho > 0, self.q.tau / xp.where(rho > 0, rho, 1), 0)
            a = xp.abs(d_tau - mu * d_rho)
            kappa = self.max_step
            over = (rho > 0) & (a * sd_inv > kappa * (rho + d_rho))
            if not guards.fired("parallel_step_limit", over):
                return new
            frac = xp.where(over, kappa * sd_inv / xp.where(over, a - kappa * d_rho / sd_inv, 1), 1)
        return Gaussian(old_tau + frac * d_tau, old_rho + frac * d_rho)

    def touch(self, i):
        """Note that slot ``i`` holds (or is about to hold) a message; code that writes ``msgs`` in place
        (the fused kernels) calls this, so sums over slots can skip the unused ones.  Where a lazy reset is
        pending and slot ``i`` is not its site (:meth:`lazy_slot`), the state is written first (the count of
        used slots is the written state's)."""
        if self._lazy is not None and self.lazy_slot(i) is None:
            self._materialise()
        self._sums = None
        if i >= self.used:
            self.used = int(i) + 1

    def defer(self, damping=1.0):
        """Start a parallel chunk: messages computed from now on see the same marginal ``q``; their
        change to it is accumulated (after damping) and applied by :meth:`commit`."""
        xp = self.q.xp
        self.pending = Gaussian(xp.zeros_like(self.q.tau), xp.zeros_like(self.q.rho))
        self.damping = float(damping)

    def commit(self):
        """End a parallel chunk: apply the accumulated change to ``q``."""
        if self.pending is not None:
            self.q.tau += self.pending.tau
            self.q.rho += self.pending.rho
        self.pending = None
        self.damping = 1.0

    def sink(self):
        """The arrays the fused kernels add the marginal change to (``q``, or the pending change)."""
        g = self.q if self.pending is None else self.pending
        return g.tau, g.rho

    def recompute(self, limit=None):
        """Exact marginal: product of all B + 1 slots (the unused ones are G(0, 0) and skipped).

        On the CPU one compiled pass (:func:`factorgraph.kernels.sites_cpu.marginal_sums`) into the
        marginal's own arrays; with ``limit`` (prior sds) it also checks the new marginal in that pass and
        returns ``(finite and proper?, means beyond limit, largest shift)`` as
        :meth:`factorgraph.model.FactorGraph._marginal_health` does.  Returns ``None`` where it did not check
        (no ``limit``, or the array form ran).

        After a lazy batch's only chunk the marginal is not written: its check came from the chunk's kernel
        (:meth:`lazy_replaced`) and the sums are slot 0 (the largest shift, needed only where some mean is
        beyond ``limit``, writes the state first)."""
        if self._lazy is not None and self._lazy_health is not None and self.used == 1:
            ok, far = self._lazy_health
            if limit is None or not far:
                self._sums = (self._msgs.tau[0], self._msgs.rho[0])
                return None if limit is None else (ok, far, -math.inf)
            self._materialise()  # then the compiled recompute below checks it again, with the largest shift
        u, B = self.used, self.batch_size
        m = self.msgs
        if self._compiled():
            q = self._writable_q()
            if u == 1:  # the sum is slot 0 itself: the kernel does not copy it
                sums = (m.tau[0], m.rho[0])
            else:
                if self._sum_buf is None:
                    self._sum_buf = tuple(np.empty(self.shape, m.dtype) for _ in range(2))
                sums = self._sum_buf
            flat = [a.reshape(-1) for a in (m.tau[B], m.rho[B], *sums, q.tau, q.rho)]
            sites = kernels.module(m.tau, "sites")
            health = sites.marginal_sums(m.tau.reshape(B + 1, -1), m.rho.reshape(B + 1, -1), u, *flat, limit)
            self._sums, self.q = sums, q
            return health
        self._sums = (m.tau[:u].sum(axis=0), m.rho[:u].sum(axis=0))
        self.q = Gaussian(self._sums[0] + m.tau[B], self._sums[1] + m.rho[B])
        return None

    def _compiled(self):
        """Whether the compiled CPU passes take the slots (NumPy, C-contiguous, kernels on; the arrays' kind,
        which writing a pending lazy reset does not change)."""
        m = self._msgs
        return (type(m.tau) is np.ndarray and kernels.enabled() and m.tau.flags.c_contiguous
                and m.rho.flags.c_contiguous)

    def _takes(self, prior, removed):
        """Whether a lazy reset can keep ``prior`` and ``removed`` for the compiled kernels: C-contiguous
        NumPy arrays of the slots' shape and dtype, the slots' own compiled (a chain of tests, not a
        generator: this runs for every weight tensor of every visit)."""
        pt, pr, rt, rr = prior.tau, prior.rho, removed.tau, removed.rho
        return (self._compiled() and type(pt) is np.ndarray and type(pr) is np.ndarray
                and type(rt) is np.ndarray and type(rr) is np.ndarray
                and pt.shape == pr.shape == rt.shape == rr.shape == self.shape
                and pt.dtype == pr.dtype == rt.dtype == rr.dtype == self._msgs.dtype
                and pt.flags.c_contiguous and pr.flags.c_contiguous and rt.flags.c_contiguous
                and rr.flags.c_contiguous)

    def _writable_q(self, *avoid):
        """The marginal's arrays where a compiled pass may write them in place (two distinct C-contiguous
        NumPy arrays of the slots' shape and dtype, sharing no memory with the arrays ``avoid``), else new
        arrays."""
        q, dtype = self.q, self.msgs.dtype
        arrays = (q.tau, q.rho)
        if (all(type(a) is np.ndarray and a.shape == self.shape and a.dtype == dtype and a.flags.c_contiguous
                for a in arrays) and not np.may_share_memory(*arrays)
                and not any(np.may_share_memory(a, b) for a in avoid for b in arrays)):
            return q
        return Gaussian(np.empty(self.shape, dtype), np.empty(self.shape, dtype))

    def reset(self, prior, removed=None, lazy=False):
        """Set the batch prior to ``prior`` (to ``prior / removed``, natural parameters subtracted, where
        ``removed`` is given), clear every per-example message, and set ``q`` to the batch prior.  On the
        CPU one compiled pass (:func:`factorgraph.kernels.sites_cpu.reset_slots`) into the slots' and the
        marginal's own arrays.

        ``lazy`` (with ``removed``, on the CPU, at most one slot in use): write nothing yet, keep references
        to ``prior`` and ``removed`` (see the class docstring); the caller must not change them while the
        reset is pending."""
        self._drop_lazy()
        if (lazy and removed is not None and self.used <= 1 and self.pending is None
                and self._takes(prior, removed)):
            self._lazy, self._dirty = (prior, removed), self.used
            self.used = 0
            self._sums = None
            return
        m, B = self._msgs, self.batch_size
        given = (prior.tau, prior.rho) + (() if removed is None else (removed.tau, removed.rho))
        native = all(type(a) is np.ndarray and a.shape == self.shape for a in given)
        if self._compiled() and native:
            self.q = q = self._writable_q(*given)
            flat = [np.ascontiguousarray(a, m.dtype).reshape(-1) for a in given]
            kernels.module(m.tau, "sites").reset_slots(m.tau.reshape(B + 1, -1), m.rho.reshape(B + 1, -1),
                                                       self.used, B, *flat[:2], q.tau.reshape(-1),
                                                       q.rho.reshape(-1), *flat[2:])
        else:
            if removed is not None:
                prior = Gaussian(prior.tau - removed.tau, prior.rho - removed.rho)
            m.tau[:self.used] = 0
            m.rho[:self.used] = 0
            m[B] = prior
            self.q = prior.copy()
        self.used = 0
        self._sums = None

    def likelihood(self, n=None, start=0, copy=True):
        """Product of the per-example messages of slots ``start .. n-1`` (prior slot excluded).  With
        ``copy=False`` the sums of the last :meth:`recompute` may be returned as they are (read them only,
        before the next :meth:`recompute` or :meth:`reset`: the sums are the recompute's arrays, or slot 0's
        own message where only slot 0 is in use)."""
        n = min(self.batch_size if n is None else n, self.used)
        m = self._msgs  # slots 0 .. used-1 are written, lazy reset or not
        xp = m.xp
        if n <= start:
            return Gaussian(xp.zeros(self.shape, m.dtype), xp.zeros(self.shape, m.dtype))
        if start == 0 and n == self.used and self._sums is not None:  # the same sums :meth:`recompute` took
            if not copy:
                return Gaussian(self._sums[0], self._sums[1])
            return Gaussian(self._sums[0].copy(), self._sums[1].copy())
        return Gaussian(m.tau[start:n].sum(axis=0), m.rho[start:n].sum(axis=0))

    def state(self):
        """The slots that may hold messages (``0 .. used - 1``: every example's under the per-example
        schedules, one per chunk under :class:`schedules.Parallel`), the batch prior and the marginal.  The
        other slots are ``G(0, 0)`` and not written (a chunk-trained MLP's file was 30x larger with them)."""
        u, B = self.used, self.batch_size
        return {"tau": self.msgs.tau[:u], "rho": self.msgs.rho[:u], "prior_tau": self.msgs.tau[B],
                "prior_rho": self.msgs.rho[B], "q_tau": self.q.tau, "q_rho": self.q.rho}

    def load_state(self, arrays):
        """Inverse of :meth:`state`; also reads the older form that held all ``B + 1`` slots (prior last)."""
        tau, rho, B = arrays["tau"], arrays["rho"], self.batch_size
        for key in ("prior_tau", "prior_rho", "q_tau", "q_rho"):
            if key in arrays and arrays[key].shape != self.shape:
                raise ValueError(f"saved {key} of shape {arrays[key].shape} does not fit weights of shape "
                                 f"{self.shape}")
        if "prior_tau" in arrays:
            u = tau.shape[0]
            if tau.shape[1:] != self.shape or rho.shape != tau.shape or u > B:
                raise ValueError(f"saved weight messages of shape {tau.shape} do not fit {B} slots of shape "
                                 f"{self.shape}")
            msgs = Gaussian.uniform((B + 1,) + self.shape, tau.dtype, get_array_module(tau))
            msgs.tau[:u], msgs.rho[:u] = tau, rho
            msgs.tau[B], msgs.rho[B] = arrays["prior_tau"], arrays["prior_rho"]
        else:
            if tau.shape != (B + 1,) + self.shape or rho.shape != tau.shape:
                raise ValueError(f"saved weight messages of shape {tau.shape} do not fit {B} slots of shape "
                                 f"{self.shape}")
            msgs, u = Gaussian(tau.copy(), rho.copy()), B
        self.msgs, self.used, self._sums = msgs, u, None
        self.q = Gaussian(arrays["q_tau"].copy(), arrays["q_rho"].copy())
