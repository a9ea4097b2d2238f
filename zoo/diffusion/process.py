"""The Gaussian diffusion process: forward noising, the model's reverse step, and the training losses (torch only).

``GaussianDiffusion`` takes tensors and a callable; it never owns weights. Conventions:

* ``t`` is a LongTensor (B,) of indices into *this* process's schedule (0 .. T−1; a respaced process has T = the
  number of kept steps). The network is always called with the *original* timesteps ``timestep_map[t]``
  (see ``model_timesteps``), because that is what it was trained on.
* Data may have any shape (B, ...): images (B, C, H, W), embeddings (B, D). Per-timestep coefficients broadcast as
  (B, 1, ..., 1); per-example reductions average over every non-batch dimension.
* A learned-range model outputs twice the channels along dim 1: [mean part ; v], v in [−1, 1], and
  log Σ = frac · log β_t + (1 − frac) · log β̃_t with frac = (v + 1)/2 and β̃_t the clipped posterior variance.
* Mean parameterisations: 'eps' (ε), 'x0' (x_0), 'v' (v = √ᾱ ε − √(1−ᾱ) x_0, Salimans & Ho).
* The arithmetic runs in x_t's dtype (keep it float32 or float64); the coefficient tables are computed in float64
  and cast once per (device, dtype).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable, Optional

import torch

from zoo.diffusion.losses import discretized_gaussian_log_likelihood, gaussian_log_likelihood, normal_kl
from zoo.diffusion.noise import randn
from zoo.diffusion.schedules import NoiseSchedule, Steps, respace

MEAN_TYPES = ("eps", "x0", "v")
VAR_TYPES = ("fixed_small", "fixed_large", "learned_range")
LOSS_TYPES = ("mse", "hybrid")
DECODER_NLLS = ("discretized", "gaussian")


@dataclass
class ReverseStep:
    """p(x_{t−1} | x_t) = N(mean, variance) and the predictions it was built from. mean and the predictions have
    x_t's shape; variance and log_variance broadcast to it ((B, 1, ..., 1) for fixed variances)."""

    mean: torch.Tensor
    variance: torch.Tensor
    log_variance: torch.Tensor
    pred_x0: torch.Tensor  # clipped if clipping was asked for
    pred_eps: torch.Tensor  # consistent with the (clipped) pred_x0 and x_t


def check_snr_gamma(snr_gamma, option: str = "snr_gamma") -> Optional[float]:
    """None, or Min-SNR-γ's γ as a float; ValueError (zoo.errors' ConfigError, worded as every option, naming
    ``option``) unless it is a finite number > 0: float() took Hydra's string "5" and true as γ = 1."""
    from zoo.errors import check_number

    why = "Min-SNR-γ's γ (5 is the paper's; null: no reweighting)"
    gamma = check_number(option, snr_gamma, 0, low_open=True, fix=5, none_ok=True, why=why)
    return None if gamma is None else float(gamma)


def mean_flat(x: torch.Tensor) -> torch.Tensor:
    """(B, ...) -> (B,): the mean over every non-batch dimension."""
    return x.reshape(x.shape[0], -1).mean(1)


class GaussianDiffusion:
    """A diffusion process over a ``NoiseSchedule`` with explicit mean / variance / loss options.

    model_mean_type: 'eps' | 'x0' | 'v'.  model_var_type: 'fixed_small' (β̃_t, the posterior variance: the better
    choice for few steps), 'fixed_large' (β_t, with β̃_1 at t = 0 so the last step is not noisier than the
    posterior), 'learned_range'.  loss_type: 'mse' (L_simple on the mean part) or 'hybrid'
    (L_simple + vb_weight · T · L_t, the single-timestep VLB estimate of λ L_vlb with λ = vb_weight = 0.001;
    needs learned_range; the VLB sees the mean through ``detach`` so it only trains the variance).
    decoder_nll: the t = 0 term of the VLB — 'discretized' for 8-bit images in [−1, 1], 'gaussian' (a density) for
    continuous data.
    snr_gamma: None (L_simple as is: every timestep's error on the target weighted 1) or γ > 0 for Min-SNR-γ
    weighting (Hang et al. 2023): the mean part's MSE is rescaled per example so that, whatever the target, it weighs
    the error of the implied x_0 by min(SNR_t, γ), SNR_t = ᾱ_t / (1 − ᾱ_t). As weights on the target's own MSE:
    ε: min(SNR, γ) / SNR; x_0: min(SNR, γ); v: min(SNR, γ) / (SNR + 1). It caps the weight of the nearly clean
    timesteps, where the x_0 error is tiny but plentiful, so training spends its gradient on the noisy ones where
    layout and colour are decided (γ = 5 is the paper's choice). The VLB term of 'hybrid' is not reweighted.
    """

    def __init__(
        self,
        schedule: NoiseSchedule,
        model_mean_type: str = "eps",
        model_var_type: str = "fixed_small",
        loss_type: str = "mse",
        vb_weight: float = 1e-3,
        decoder_nll: str = "discretized",
        snr_gamma: Optional[float] = None,
    ):
        snr_gamma = check_snr_gamma(snr_gamma)
        for name, value, allowed in (
            ("model_mean_type", model_mean_type, MEAN_TYPES),
            ("model_var_type", model_var_type, VAR_TYPES),
            ("loss_type", loss_type, LOSS_TYPES),
            ("decoder_nll", decoder_nll, DECODER_NLLS),
        ):
            if value not in allowed:
                raise ValueError(f"{name}={value!r}; expected one of {allowed}")
        learned = model_var_type == "learned_range"
        if learned != (loss_type == "hybrid"):
            # mse alone never trains a learned variance; hybrid with a fixed variance adds a constant
            raise ValueError(
                f"loss_type={loss_type!r} does not fit model_var_type={model_var_type!r}: "
                "use 'hybrid' with 'learned_range' and 'mse' with a fixed variance"
            )
        self.schedule = schedule
        self.model_mean_type = model_mean_type
        self.model_var_type = model_var_type
        self.loss_type = loss_type
        self.vb_weight = vb_weight
        self.decoder_nll = decoder_nll
        self.snr_gamma = snr_gamma
        s = schedule
        ac, prev = s.alphas_cumprod, s.alphas_cumprod_prev
        large_var = torch.cat([s.posterior_variance[1:2], s.betas[1:]]) if len(s.betas) > 1 else s.betas
        # float64 tables; cast per (device, dtype) on first use
        self._tables64 = {
            "sqrt_ac": ac.sqrt(),
            "sqrt_1m_ac": (1.0 - ac).sqrt(),
            "sqrt_recip_ac": (1.0 / ac).sqrt(),
            "sqrt_recipm1_ac": (1.0 / ac - 1.0).sqrt(),
            "ac_prev": prev,
            "sqrt_ac_prev": prev.sqrt(),
            "sqrt_1m_ac_prev": (1.0 - prev).sqrt(),
            # DDIM's σ_t at η = 1: √((1−ᾱ_prev)/(1−ᾱ)) · √(1 − ᾱ/ᾱ_prev) = √β̃_t
            "ddim_sigma1": ((1.0 - prev) / (1.0 - ac) * (1.0 - ac / prev)).sqrt(),
            "post_coef1": s.posterior_mean_coef1,
            "post_coef2": s.posterior_mean_coef2,
            "post_var": s.posterior_variance,
            "post_logvar": s.posterior_log_variance_clipped,
            "log_betas": s.betas.log(),
            "large_var": large_var,
            "large_logvar": large_var.log(),
            "snr": ac / (1.0 - ac),
        }
        self._tables: dict[tuple, dict[str, torch.Tensor]] = {}
        self._timestep_maps: dict[torch.device, torch.Tensor] = {}

    # ---- bookkeeping ----------------------------------------------------------------------------------------------

    @property
    def num_timesteps(self) -> int:
        return self.schedule.num_timesteps

    @property
    def learned_variance(self) -> bool:
        return self.model_var_type == "learned_range"

    def respaced(self, steps: Steps) -> "GaussianDiffusion":
        """The same process on ``respace(schedule, steps)`` (for sampling with fewer steps)."""
        return GaussianDiffusion(
            respace(self.schedule, steps),
            self.model_mean_type,
            self.model_var_type,
            self.loss_type,
            self.vb_weight,
            self.decoder_nll,
            self.snr_gamma,
        )

    def model_timesteps(self, t: torch.Tensor) -> torch.Tensor:
        """Indices into this schedule (B,) -> the original timesteps the network is conditioned on (B,) int64."""
        key = t.device
        if key not in self._timestep_maps:
            self._timestep_maps[key] = self.schedule.timestep_map.to(key)
        return self._timestep_maps[key][t]

    def sample_timesteps(self, batch: int, device=None, generator: Optional[torch.Generator] = None) -> torch.Tensor:
        """Uniform t ~ U{0..T−1} (B,): the training distribution of L_simple and of the VLB estimate."""
        return torch.randint(0, self.num_timesteps, (batch,), device=device, generator=generator)

    def _table(self, name: str, device, dtype) -> torch.Tensor:
        key = (torch.device(device), dtype)
        if key not in self._tables:
            # via CPU in the target dtype: some devices (MPS) have no float64
            self._tables[key] = {k: v.to(dtype).to(key[0]) for k, v in self._tables64.items()}
        return self._tables[key][name]

    def coef(self, name: str, t: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """table[t] shaped (B, 1, ..., 1) to broadcast against x (B, ...), in x's dtype and device.

        Tables: sqrt_ac, sqrt_1m_ac, sqrt_recip_ac, sqrt_recipm1_ac (of ᾱ_t), ac_prev, sqrt_ac_prev, sqrt_1m_ac_prev
        (of ᾱ_{t−1}), ddim_sigma1 (DDIM's σ_t at η = 1), post_coef1/2, post_var, post_logvar (posterior),
        log_betas, large_var, large_logvar ('fixed_large')."""
        return self._table(name, x.device, x.dtype)[t].reshape(-1, *([1] * (x.dim() - 1)))

    # ---- forward process ------------------------------------------------------------------------------------------

    def q_mean_variance(self, x0: torch.Tensor, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """q(x_t | x_0) = N(√ᾱ_t x_0, (1 − ᾱ_t) I): (mean, variance broadcastable)."""
        return self.coef("sqrt_ac", t, x0) * x0, self.coef("sqrt_1m_ac", t, x0) ** 2

    def q_sample(
        self,
        x0: torch.Tensor,
        t: torch.Tensor,
        noise: Optional[torch.Tensor] = None,
        generator: Optional[torch.Generator] = None,
    ) -> torch.Tensor:
        """x_t = √ᾱ_t x_0 + √(1 − ᾱ_t) ε, ε ~ N(0, I) drawn from ``generator`` unless given."""
        if noise is None:
            noise = randn(x0.shape, generator, device=x0.device, dtype=x0.dtype)
        return self.coef("sqrt_ac", t, x0) * x0 + self.coef("sqrt_1m_ac", t, x0) * noise

    def q_posterior_mean_variance(self, x0: torch.Tensor, x_t: torch.Tensor, t: torch.Tensor):
        """q(x_{t−1} | x_t, x_0): (mean, variance, log variance clipped), the last two (B, 1, ..., 1)."""
        mean = self.coef("post_coef1", t, x_t) * x0 + self.coef("post_coef2", t, x_t) * x_t
        return mean, self.coef("post_var", t, x_t), self.coef("post_logvar", t, x_t)

    # ---- parameterisations ----------------------------------------------------------------------------------------

    def x0_from_eps(self, x_t: torch.Tensor, t: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
        return self.coef("sqrt_recip_ac", t, x_t) * x_t - self.coef("sqrt_recipm1_ac", t, x_t) * eps

    def eps_from_x0(self, x_t: torch.Tensor, t: torch.Tensor, x0: torch.Tensor) -> torch.Tensor:
        return (self.coef("sqrt_recip_ac", t, x_t) * x_t - x0) / self.coef("sqrt_recipm1_ac", t, x_t)

    def v_from_x0_eps(self, x0: torch.Tensor, t: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
        return self.coef("sqrt_ac", t, x0) * eps - self.coef("sqrt_1m_ac", t, x0) * x0

    def x0_from_v(self, x_t: torch.Tensor, t: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        return self.coef("sqrt_ac", t, x_t) * x_t - self.coef("sqrt_1m_ac", t, x_t) * v

    def eps_from_v(self, x_t: torch.Tensor, t: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        return self.coef("sqrt_1m_ac", t, x_t) * x_t + self.coef("sqrt_ac", t, x_t) * v

    def split_output(self, model_output: torch.Tensor) -> tuple[torch.Tensor, Optional[torch.Tensor]]:
        """(B, C or 2C, ...) -> (mean part (B, C, ...), v (B, C, ...) or None)."""
        if not self.learned_variance:
            return model_output, None
        if model_output.shape[1] % 2:
            raise ValueError(f"learned_range expects 2C channels along dim 1, got {model_output.shape[1]}")
        return model_output.chunk(2, dim=1)

    def predictions(
        self,
        model_output: torch.Tensor,
        x_t: torch.Tensor,
        t: torch.Tensor,
        clip_denoised: bool = False,
        clip_range: tuple[float, float] = (-1.0, 1.0),
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The mean part of the output -> (x̂_0, ε̂). With ``clip_denoised`` x̂_0 is clamped to ``clip_range`` and ε̂
        re-derived from the clamped x̂_0 (so DDIM stays consistent with the clamp)."""
        out, _ = self.split_output(model_output.to(x_t.dtype))
        if self.model_mean_type == "eps":
            x0, eps = self.x0_from_eps(x_t, t, out), out
        elif self.model_mean_type == "x0":
            x0, eps = out, self.eps_from_x0(x_t, t, out)
        else:
            x0, eps = self.x0_from_v(x_t, t, out), self.eps_from_v(x_t, t, out)
        if clip_denoised:
            x0 = x0.clamp(*clip_range)
            eps = self.eps_from_x0(x_t, t, x0)
        return x0, eps

    # ---- reverse process ------------------------------------------------------------------------------------------

    def p_variance(
        self, model_output: torch.Tensor, x_t: torch.Tensor, t: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(variance, log variance) of p(x_{t−1} | x_t): x_t's shape for learned_range, (B, 1, ..., 1) otherwise."""
        if self.model_var_type == "learned_range":
            _, v = self.split_output(model_output.to(x_t.dtype))
            frac = (v + 1.0) / 2.0
            log_var = frac * self.coef("log_betas", t, x_t) + (1.0 - frac) * self.coef("post_logvar", t, x_t)
            return torch.exp(log_var), log_var
        if self.model_var_type == "fixed_small":
            return self.coef("post_var", t, x_t), self.coef("post_logvar", t, x_t)
        return self.coef("large_var", t, x_t), self.coef("large_logvar", t, x_t)

    def p_mean_variance(
        self,
        model_output: torch.Tensor,
        x_t: torch.Tensor,
        t: torch.Tensor,
        clip_denoised: bool = False,
        clip_range: tuple[float, float] = (-1.0, 1.0),
    ) -> ReverseStep:
        """p(x_{t−1} | x_t) = N(posterior mean at x̂_0, Σ) from the network's output at (x_t, t); clipping as in
        ``predictions``. Fixed variances come back as (B, 1, ..., 1) (they broadcast; expanding costs a pass)."""
        var, log_var = self.p_variance(model_output, x_t, t)
        pred_x0, pred_eps = self.predictions(model_output, x_t, t, clip_denoised, clip_range)
        mean, _, _ = self.q_posterior_mean_variance(pred_x0, x_t, t)
        return ReverseStep(mean=mean, variance=var, log_variance=log_var, pred_x0=pred_x0, pred_eps=pred_eps)

    # ---- losses ---------------------------------------------------------------------------------------------------

    def vb_terms_bpd(
        self, model_output: torch.Tensor, x0: torch.Tensor, x_t: torch.Tensor, t: torch.Tensor
    ) -> torch.Tensor:
        """The VLB term L_t of each example, in bits per dimension (B,): KL(q posterior ‖ p) for t > 0, the decoder
        NLL −log p(x_0 | x_1) at t = 0. No clipping (the bound is of the model as trained)."""
        true_mean, _, true_log_var = self.q_posterior_mean_variance(x0, x_t, t)
        p = self.p_mean_variance(model_output, x_t, t)
        kl = mean_flat(normal_kl(true_mean, true_log_var, p.mean, p.log_variance)) / math.log(2.0)
        nll_fn = discretized_gaussian_log_likelihood if self.decoder_nll == "discretized" else gaussian_log_likelihood
        nll = -mean_flat(nll_fn(x0, p.mean, 0.5 * p.log_variance)) / math.log(2.0)
        return torch.where(t == 0, nll, kl)

    def mse_weights(self, t: torch.Tensor) -> torch.Tensor:
        """(B,) float64 weights on the target's MSE at indices t: all ones without ``snr_gamma``, else Min-SNR-γ
        (see the class docstring)."""
        snr = self._table("snr", t.device, torch.float64)[t]
        if self.snr_gamma is None:
            return torch.ones_like(snr)
        if self.model_mean_type == "eps":
            return (self.snr_gamma / snr).clamp(max=1.0)  # = min(SNR, γ) / SNR, and 1 (not 0/0) where SNR = 0
        w_x0 = snr.clamp(max=self.snr_gamma)
        return w_x0 if self.model_mean_type == "x0" else w_x0 / (snr + 1.0)

    def training_losses(
        self,
        model_fn: Callable[..., torch.Tensor],
        x0: torch.Tensor,
        t: torch.Tensor,
        noise: Optional[torch.Tensor] = None,
        model_kwargs: Optional[dict[str, Any]] = None,
        generator: Optional[torch.Generator] = None,
        report_vb: bool = True,
    ) -> dict[str, torch.Tensor]:
        """Per-example loss terms (B,) for data x0 (B, ...) at indices t (B,).

        ``model_fn(x_t, timesteps, **model_kwargs)`` receives the original timesteps. Returns
        {'loss', 'mse', 'vb'}: mse is L_simple against the target of ``model_mean_type`` (ε, x_0 or v), vb the
        L_t of ``vb_terms_bpd`` (bits/dim; with a fixed variance it is reported without gradient), and
        loss = mse (+ vb_weight · T · vb for 'hybrid'). ``report_vb=False`` skips the reported-only vb of a fixed
        variance (no 'vb' key; the loss is the same); 'hybrid' always computes it (it is in the loss)."""
        if noise is None:
            noise = torch.randn(x0.shape, generator=generator, device=x0.device, dtype=x0.dtype)
        x_t = self.q_sample(x0, t, noise)
        output = model_fn(x_t, self.model_timesteps(t), **(model_kwargs or {}))
        mean_part, v = self.split_output(output)
        target = {"eps": noise, "x0": x0, "v": self.v_from_x0_eps(x0, t, noise)}[self.model_mean_type]
        if mean_part.shape != target.shape:
            raise ValueError(f"model output mean part {tuple(mean_part.shape)} != data {tuple(target.shape)}")
        mse = mean_flat((target - mean_part.to(target.dtype)) ** 2)
        if self.snr_gamma is not None:
            # 'mse' stays the target's plain error (comparable across runs); the loss takes the reweighted one
            mse_term = mse * self.mse_weights(t).to(mse.dtype)
        else:
            mse_term = mse
        if v is not None:
            # the VLB sees the mean as a constant: it trains only the variance (L_simple trains the mean)
            vb = self.vb_terms_bpd(torch.cat([mean_part.detach(), v], dim=1), x0, x_t, t)
            loss = mse_term + self.vb_weight * self.num_timesteps * vb
        elif report_vb:
            with torch.no_grad():
                vb = self.vb_terms_bpd(output.detach(), x0, x_t, t)
            loss = mse_term
        else:
            return {"loss": mse_term, "mse": mse}
        return {"loss": loss, "mse": mse, "vb": vb}
