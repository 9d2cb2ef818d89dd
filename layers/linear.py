"""Dense layer ``z = x W + c`` with Gaussian weights ``W`` (d_in, d_out) and bias ``c`` (d_out,).

Two variants, chosen by the graph builder (SPEC 5.1, 5.2):

* constant input (the first weighted layer): S1 with the weights' cavities ``q_W / m_i->W``;
* variable input (hidden layers): S2 with the input marginal
  ``x_hat = min_rho(m_in * m_to_x[i], MIN_PRECISION)`` and the weight marginals ``q_W``; the message
  to the input is stored in ``m_to_x[i]`` across iterations.

The bias always uses S1 with its cavity.  Prediction uses the marginals.

Batched schedules (:class:`schedules.Parallel`): a chunk of examples is a matrix of inputs; the forward
messages are matrix products with the cavities ``q / m_site`` (first layer, bias) or the marginals
(hidden layers); the chunk's joint weight message comes from
:func:`~factorgraph.equations.s1_backward_to_b_gemm` / :func:`~factorgraph.equations.s2_backward_gemm`
(or, with ``expansion=None``, from the product of the per-example messages) and replaces slot ``site``.
On NumPy arrays with the compiled kernels on, the GEMM forms (the hidden layers' to order 0) run fused
with the cavity or marginal moments and the site replacement, one pass over the weights in blocks of rows
(:mod:`factorgraph.kernels.chunk_cpu`); on CuPy arrays the same steps run as one CUDA kernel each around
cuBLAS products (:mod:`factorgraph.kernels.chunk_cuda`); the exact product, order 1 for hidden layers and
deferred slots take the equations.
"""

import numpy as np

from factorgraph import config, guards, kernels
from factorgraph.backend import get_array_module
from factorgraph.equations import (
    s1_backward_to_b,
    s1_backward_to_b_gemm,
    s1_backward_to_bias,
    s1_forward,
    s2_backward,
    s2_backward_gemm,
    s2_forward,
)
from factorgraph.factor import Factor, WeightSlots
from factorgraph.gaussian import Gaussian, WithMoments, clamp_min_rho
from factorgraph.kernels import linear_cpu
from layers.priors import bias_prior, weight_prior

OPTIONS = ("prior_mean", "prior_var", "bias_prior_mean", "bias_prior_var", "prior")


class Linear(Factor):
    """Dense layer with ``d_out`` outputs; options: ``prior_mean``, ``prior_var``, ``bias_prior_mean``,
    ``bias_prior_var``, ``prior`` ("code" or "thesis" hidden-layer variance formula)."""

    kind = "Linear"
    interfaces = ("input", "weight", "bias", "output")
    has_weights = True
    supports_chunks = True
    cache_names = ("m_to_x",)
    activation_cache_names = ("m_to_x",)

    def __init__(self, d_out, **options):
        super().__init__()
        if not isinstance(d_out, (int, np.integer)) or isinstance(d_out, bool) or d_out < 1:
            raise ValueError(f"Linear needs a positive integer number of outputs, got {d_out!r}")
        unknown = set(options) - set(OPTIONS)
        if unknown:
            raise ValueError(f"Linear: unknown option(s) {sorted(unknown)}; allowed: {list(OPTIONS)}")
        for key in ("prior_var", "bias_prior_var"):
            if key in options and not options[key] > 0:
                raise ValueError(f"Linear: {key} must be > 0, got {options[key]!r}")
        if options.get("prior", "code") not in ("code", "thesis"):
            raise ValueError(f"Linear: option prior must be 'code' or 'thesis', got {options['prior']!r}")
        self.d_out = int(d_out)
        self.options = options

    def output_shape(self, input_shape):
        if len(input_shape) != 1:
            raise ValueError(f"Linear needs a 1-D input, got shape {tuple(input_shape)}; add ('Flatten',)")
        return (self.d_out,)

    def build(self, input_shape, batch_size, *, dtype, rng, constant_input):
        super().build(input_shape, batch_size, dtype=dtype, rng=rng, constant_input=constant_input)
        d_in = input_shape[0]
        w = weight_prior((d_in, self.d_out), d_in, self.d_out, constant_input, rng, dtype, self.options)
        c = bias_prior((self.d_out,), dtype, self.options)
        self.params = {"W": WeightSlots(w, batch_size), "c": WeightSlots(c, batch_size)}
        if not constant_input:
            self.m_to_x = Gaussian.uniform((batch_size, d_in), dtype)
        self._guards = kernels.GuardCounts(linear_cpu.GUARD_NAMES)
        self._scratch = None

    def _kernels(self):
        """The compiled kernel module for the arrays' device (``None``: the NumPy reference)."""
        return kernels.module(self.params["W"].q.tau, "linear")

    def _buffers(self):
        """Scratch of the compiled paths on the arrays' device, allocated once per device."""
        q = self.params["W"].q.tau
        if self._scratch is None or type(self._scratch[0]) is not type(q):
            xp = self.params["W"].q.xp
            K, J = q.shape
            self._scratch = tuple(xp.zeros(n, q.dtype) for n in (J, J, K, K))
        return self._scratch

    def flush_guards(self):
        self._guards.flush()

    # --- training -------------------------------------------------------------------------------
    def forward(self, m_in, i):
        mod = self._kernels()
        if mod is not None:
            return self._forward_kernel(mod, m_in, i)
        return self.forward_chunk(m_in, i, i)  # the NumPy reference: a chunk of one, site = slot

    def backward(self, m_out, i):
        mod = self._kernels()
        if mod is not None:
            return self._backward_kernel(mod, m_out, i)
        return self.backward_chunk(m_out, i, i, None, None)

    def _forward_kernel(self, mod, m_in, i):
        W, c = self.params["W"], self.params["c"]
        f_mu, f_var, x_mu, x_var = self._buffers()
        counts = self._guards.array(f_mu)
        if self.constant_input:
            self._x = m_in
            mod.linear_const_fwd(m_in, W.q.tau, W.q.rho, W.msgs.tau[i], W.msgs.rho[i], c.q.tau, c.q.rho,
                                 c.msgs.tau[i], c.msgs.rho[i], f_mu, f_var, counts)
        else:
            mod.linear_var_fwd(m_in.tau, m_in.rho, self.m_to_x.tau[i], self.m_to_x.rho[i], W.q.tau, W.q.rho,
                               c.q.tau, c.q.rho, c.msgs.tau[i], c.msgs.rho[i], x_mu, x_var, f_mu, f_var, counts)
        self._guards.after_call(f_mu)
        return Gaussian(f_mu / f_var, 1 / f_var)

    def _backward_kernel(self, mod, m_out, i):
        W, c = self.params["W"], self.params["c"]
        f_mu, f_var, x_mu, x_var = self._buffers()
        counts = self._guards.array(f_mu)
        W.touch(i)
        c.touch(i)
        w_args = (W.q.tau, W.q.rho, W.msgs.tau[i], W.msgs.rho[i], *W.sink())
        c_args = (c.q.tau, c.q.rho, c.msgs.tau[i], c.msgs.rho[i], *c.sink())
        if self.constant_input:
            mod.linear_const_bwd(self._x, *w_args, *c_args, W.damping, f_mu, f_var, m_out.tau, m_out.rho, counts)
            to_x = None
        else:
            mod.linear_var_bwd(x_mu, x_var, *w_args, *c_args, W.damping, f_mu, f_var, m_out.tau, m_out.rho,
                               self.m_to_x.tau[i], self.m_to_x.rho[i], counts)
            to_x = self.m_to_x[i]
        self._guards.after_call(f_mu)
        return to_x

    # --- batched (chunk) training; with idx = site = i also the per-example reference -------------
    def forward_chunk(self, m_in, idx, site):
        W, c = self.params["W"], self.params["c"]
        # messages the backward reads again keep their moments (computed once per chunk)
        self._cav_c = c.cavity_moments(site)
        self._cav_w = self._qw = self._inputs = None
        fused = self._fused(m_in, site)
        if self.constant_input:
            self._x = m_in
            if fused is not None and self._fused_s1_forward(fused, self._chunk_module(fused)):
                return self._out
            self._cav_w = W.cavity_moments(site)
            self._out = s1_forward(m_in, self._cav_w, self._cav_c).with_moments()
        else:
            if fused is not None:
                chunk, xp = self._chunk_module(fused), m_in.xp
                t, r, mu, var = xp.empty((4,) + m_in.shape, m_in.dtype)
                low = chunk.input_marginal(m_in.tau, m_in.rho, self.m_to_x.tau, self.m_to_x.rho,
                                           np.asarray(idx), m_in.dtype.type(config.MIN_PRECISION), t, r, mu,
                                           var)
                guards.record("min_rho_clamp", low)
                self._x = WithMoments.of(t, r, mu, var)
                self._inputs = chunk.s2_inputs(mu, var)  # the backward reads them again
                mu, var = xp.empty((2, len(m_in), self.d_out), self._x.dtype)
                # a lazily reset batch: the marginal is the batch prior total - removed (fused[:4])
                prior = fused[2:4] if self.params["W"].lazy_slot(site) is not None else ()
                chunk.s2_chunk_forward(self._inputs, fused[0], fused[1], mu, var, *prior)
                self._out = self._with_bias(mu, var, chunk)
                return self._out
            self._x = clamp_min_rho(m_in * self.m_to_x[idx], config.MIN_PRECISION).with_moments()
            self._qw = W.q.with_moments()  # W.q changes only in the backward's replace, after its last use
            self._out = s2_forward(self._x, self._qw, self._cav_c).with_moments()
        return self._out

    def _fused(self, m_in, site):
        """The weight site's arrays for the fused chunk kernels of their device
        (:mod:`factorgraph.kernels.chunk_cpu` / :mod:`~factorgraph.kernels.chunk_cuda`), or ``None`` where
        the NumPy equations run (CPU kernels off, a single example, deferred updates, another dtype)."""
        fused = self.params["W"].fused_site(site)
        x = m_in if self.constant_input else m_in.tau
        if fused is None or type(x) is not type(fused[0]) or x.ndim != 2 or x.dtype != fused[0].dtype:
            return None
        return fused

    @staticmethod
    def _chunk_module(fused):
        return kernels.module(fused[0], "chunk")

    def _with_bias(self, mu, var, chunk):
        tau, rho = (get_array_module(mu).empty(mu.shape, mu.dtype) for _ in range(2))
        chunk.add_bias(mu, var, self._cav_c.mean, self._cav_c.var, tau, rho)
        return WithMoments.of(tau, rho, mu, var)

    def _fused_s1_forward(self, fused, chunk):
        """The first layer's chunk forward by the fused kernel; ``False`` (nothing changed) where a cavity
        has zero precision: the NumPy form's zero-coefficient rule handles it."""
        mu, var = get_array_module(fused[0]).empty((2, len(self._x), self.d_out), fused[0].dtype)
        self._inputs = chunk.s1_inputs(self._x)  # the backward reads them again
        counts = chunk.s1_chunk_forward(self._inputs, *fused[:4], config.STRICT_DIVISION_RTOL, mu, var)
        if counts[chunk.BAD] or counts[chunk.ZERO]:
            return False  # W.cavity_moments raises on the first, the NumPy form takes the second
        guards.record("strict_division_roundoff", int(counts[chunk.ROUNDOFF]))
        self._out = self._with_bias(mu, var, chunk)
        return True

    def backward_chunk(self, m_out, idx, site, damping, expansion):
        """``damping=None``: the weight slots' own (deferred) damping; ``expansion=None``: the product of the
        per-use messages, else the GEMM form to that order."""
        W, c = self.params["W"], self.params["c"]
        fused = None if expansion is None else W.fused_site(site, damping)
        ready = self._cav_w is None if self.constant_input else expansion == 0 and self._qw is None
        if fused is not None and ready:
            return self._fused_backward(m_out, idx, site, damping, expansion, fused)
        to_c = s1_backward_to_bias(self._cav_c, self._out, m_out)
        to_x = None
        if self.constant_input:
            if self._cav_w is None:
                self._cav_w = W.cavity_moments(site)
            args = (self._x, self._cav_w, self._out, m_out)
            to_w = s1_backward_to_b(*args) if expansion is None else s1_backward_to_b_gemm(*args, expansion)
        else:
            if self._qw is None:
                self._qw = W.q.with_moments()
            args = (self._x, self._qw, self._out, m_out)
            to_x, to_w = s2_backward(*args) if expansion is None else s2_backward_gemm(*args, expansion)
            xp = to_x.xp
            flat = xp.all(self._out.rho <= config.TINY_PRECISION, axis=-1) & \
                xp.all(m_out.rho <= config.TINY_PRECISION, axis=-1)
            # SPEC 4.3 edge rule, per example: nothing known downstream, send ~flat
            if guards.fired("linear_all_tiny_precision", flat):
                to_x = Gaussian(xp.where(flat[..., None], 0, to_x.tau),
                                xp.where(flat[..., None], config.MIN_PRECISION, to_x.rho))
            to_x = clamp_min_rho(to_x, config.MIN_PRECISION)
            self.m_to_x[idx] = to_x
        W.replace(site, to_w, damping)
        c.replace(site, to_c, damping)
        return to_x

    def _fused_backward(self, m_out, idx, site, damping, expansion, fused):
        """:meth:`backward_chunk` by the fused kernels (:mod:`factorgraph.kernels.chunk_cpu`): ``g, h`` and
        the bias message in one pass, the weight message formed and put in place block by block, the
        messages to the inputs (edge rule and ``min_rho``) stored in one pass."""
        W, c = self.params["W"], self.params["c"]
        out, cav_c, dt = self._out, self._cav_c, fused[0].dtype.type
        chunk, xp = self._chunk_module(fused), get_array_module(fused[0])
        r_t, r_r = xp.ascontiguousarray(m_out.tau), xp.ascontiguousarray(m_out.rho)
        g, h, tau_c, rho_c, clamps = chunk.gh_bias(out.mean, out.var, r_t, r_r, cav_c.mean, cav_c.var)
        guards.record("s1_rest_variance_clamp", clamps)
        # a lazily reset batch (WeightSlots.reset): fused holds the Trainer's (total, removed), the kernel
        # writes only slot ``site`` and checks the new marginal as the recompute after the sweep would
        lazy = W.lazy_slot(site)
        extra = {} if lazy is None else {"lazy": lazy, "limit": config.MEAN_SHIFT_WARN_SDS}
        W.touch(site)
        to_x = None
        inputs = self._inputs
        if self.constant_input:
            inputs = chunk.s1_inputs(self._x) if inputs is None else inputs
            hits = chunk.s1_chunk_backward(inputs, g, h, *fused[:4], config.STRICT_DIVISION_RTOL, *fused[4:],
                                           expansion, **extra)
        else:
            inputs = chunk.s2_inputs(self._x.mean, self._x.var) if inputs is None else inputs
            ta, ra, hits = chunk.s2_chunk_backward(inputs, g, h, *fused, **extra)
            to_x = Gaussian(xp.empty(self._x.shape, self._x.dtype), xp.empty(self._x.shape, self._x.dtype))
            flats, low = chunk.store_input_messages(ta, ra, out.rho, r_r, dt(config.TINY_PRECISION),
                                                    dt(config.MIN_PRECISION), to_x.tau, to_x.rho,
                                                    self.m_to_x.tau, self.m_to_x.rho, np.asarray(idx))
            guards.record("linear_all_tiny_precision", flats)
            guards.record("min_rho_clamp", low)
        if lazy is not None:
            hits, ok, far = hits
            W.lazy_replaced(ok, far)
        guards.record("parallel_step_limit", hits)
        c.replace(site, Gaussian(tau_c, rho_c), damping)
        return to_x

    def reset_batch_caches(self):
        if not self.constant_input:
            self.m_to_x.tau[...] = 0
            self.m_to_x.rho[...] = 0

    # --- prediction -----------------------------------------------------------------------------
    def predict(self, m_in):
        W, c = self.params["W"], self.params["c"]
        if self.constant_input:
            return s1_forward(m_in, W.q, c.q)
        return s2_forward(m_in, W.q, c.q)
