"""iPNDM (Zhang & Chen 2023, "Fast Sampling of Diffusion Models with Exponential Integrator",
the improved PNDM of their appendix): fixed-coefficient Adams-Bashforth on eps in sigma.

    xbar_{i+1} = xbar_i + h_i * sum_{j<k} b^(k)_j eps_{i-j},   h_i = sigma_{i+1} - sigma_i,
    b^(1) = 1,  b^(2) = (3, -1)/2,  b^(3) = (23, -16, 5)/12,  b^(4) = (55, -59, 37, -9)/24,

with k = min(i + 1, order): a lower order while the history builds (no Runge-Kutta warm-up, unlike
PLMS), so every step costs one model call. In the sigma form DDIM is exact for constant eps
(E30, E32), so the multistep corrections act only on the variation of eps.

The fixed weights assume equal steps: order 4 holds on a grid uniform in sigma; on a smooth
non-uniform grid (karras, logsnr) the order drops to 2 (the weights do not see the step ratios;
``lms`` has variable-step weights). The warm-up's local errors (O(h^2) for the Euler step) stay in
the result, so as h -> 0 the order is 2; where the warm-up runs at large sigma, as in sampling,
eps is nearly constant there and the order-4 term dominates at practical step counts.
The step to sigma = 0 uses the same formula (no model call at sigma = 0).
"""

from __future__ import annotations

from .lms import LMS


class IPNDM(LMS):
    """iPNDM: fixed-coefficient Adams-Bashforth on eps (Zhang & Chen 2023), order up to 4, 1 call/step."""

    name = "ipndm"
    variable_step = False  # the fixed table b^(k) above; LMS's step and history otherwise
