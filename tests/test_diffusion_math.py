"""The diffusion math against its closed-form definitions."""
from __future__ import annotations

import math

import pytest
import torch

from sgm.modules.diffusionmodules.denoiser import Denoiser
from sgm.modules.diffusionmodules.denoiser_scaling import VScaling, VScalingWithEDMcNoise
from sgm.modules.diffusionmodules.discretizer import EDMDiscretization
from sgm.modules.diffusionmodules.guiders import IdentityGuider, LinearPredictionGuider, VanillaCFG
from sgm.modules.diffusionmodules.loss_weighting import EDMWeighting, VWeighting
from sgm.modules.diffusionmodules.refinement import refine_latents, refinement_alpha
from sgm.modules.diffusionmodules.sampling import EulerEDMSampler
from sgm.modules.diffusionmodules.sampling_utils import churn_gamma
from sgm.modules.diffusionmodules.sigma_sampling import EDMSampling

SIGMAS = torch.tensor([0.002, 0.1, 1.0, 3.0, 80.0, 700.0], dtype=torch.float64)
EDM_DISCRETIZATION = {"target": "sgm.modules.diffusionmodules.discretizer.EDMDiscretization",
                      "params": {"sigma_max": 700.0}}


def test_v_scaling_matches_formula():
    c_skip, c_out, c_in, c_noise = VScalingWithEDMcNoise()(SIGMAS)
    for s, skip, out, inp, noise in zip(SIGMAS.tolist(), c_skip, c_out, c_in, c_noise):
        assert skip.item() == pytest.approx(1 / (s * s + 1))
        assert out.item() == pytest.approx(-s / math.sqrt(s * s + 1))
        assert inp.item() == pytest.approx(1 / math.sqrt(s * s + 1))
        assert noise.item() == pytest.approx(0.25 * math.log(s))
    # plain v scaling feeds sigma itself to the network
    assert torch.equal(VScaling()(SIGMAS)[3], SIGMAS)


@pytest.mark.parametrize("n", [1, 2, 7, 25])
def test_edm_discretization_endpoints_and_monotonicity(n):
    sigmas = EDMDiscretization(sigma_min=0.002, sigma_max=700.0, rho=7.0)(n)
    assert sigmas.shape == (n + 1,)
    assert sigmas[-1].item() == 0.0
    assert sigmas[0].item() == pytest.approx(700.0, rel=1e-5)
    if n > 1:
        assert sigmas[n - 1].item() == pytest.approx(0.002, rel=1e-4)
        assert torch.all(sigmas[1:] < sigmas[:-1])


def test_edm_discretization_interior_point_matches_formula():
    n, i, smin, smax, rho = 25, 10, 0.002, 700.0, 7.0
    expected = (smax ** (1 / rho) + i / (n - 1) * (smin ** (1 / rho) - smax ** (1 / rho))) ** rho
    assert EDMDiscretization(smin, smax, rho)(n)[i].item() == pytest.approx(expected, rel=1e-5)


def test_edm_discretization_rejects_bad_range():
    with pytest.raises(ValueError, match="sigma_min"):
        EDMDiscretization(sigma_min=1.0, sigma_max=0.5)


def test_linear_prediction_guider_scales_each_frame():
    frames, clips = 5, 2
    guider = LinearPredictionGuider(max_scale=2.5, num_frames=frames, min_scale=1.0)
    x_u = torch.zeros(clips * frames, 1, 2, 2)
    x_c = torch.ones(clips * frames, 1, 2, 2)
    out = guider(torch.cat([x_u, x_c]), torch.ones(2 * clips * frames))
    per_frame = out[:, 0, 0, 0].reshape(clips, frames)
    expected = torch.tensor([1.0 + k * (2.5 - 1.0) / (frames - 1) for k in range(frames)])
    for clip in range(clips):
        torch.testing.assert_close(per_frame[clip], expected)
    assert per_frame[0, 0].item() == 1.0  # frame 0: purely conditional


def test_linear_prediction_guider_rejects_partial_clip():
    guider = LinearPredictionGuider(max_scale=2.0, num_frames=4)
    with pytest.raises(ValueError, match="whole number of clips"):
        guider(torch.zeros(2 * 6, 1), torch.ones(12))


def test_vanilla_cfg_batches_uncond_first_and_combines():
    guider = VanillaCFG(scale=3.0)
    cond = {"vector": torch.ones(2, 3), "num": torch.tensor(4)}
    uc = {"vector": torch.zeros(2, 3), "num": torch.tensor(4)}
    x, sigma, merged = guider.prepare_inputs(torch.randn(2, 3), torch.ones(2), cond, uc)
    assert x.shape[0] == 4 and sigma.shape[0] == 4
    torch.testing.assert_close(merged["vector"][:2], uc["vector"])
    torch.testing.assert_close(merged["vector"][2:], cond["vector"])
    out = guider(torch.cat([torch.full((2, 1), 1.0), torch.full((2, 1), 2.0)]), sigma)
    torch.testing.assert_close(out, torch.full((2, 1), 1.0 + 3.0 * (2.0 - 1.0)))


def test_cfg_refuses_unguided_key_that_differs():
    with pytest.raises(ValueError, match="differs"):
        VanillaCFG(2.0).prepare_inputs(torch.zeros(1, 1), torch.ones(1), {"other": torch.ones(1)}, {"other": torch.zeros(1)})


def test_identity_guider_passes_through():
    g = IdentityGuider()
    x = torch.randn(3, 2)
    assert g.prepare_inputs(x, torch.ones(3), {"a": 1}, {"a": 2})[2] == {"a": 1}
    assert g(x, torch.ones(3)) is x


def _linear_gaussian_denoiser(sigma_data: float):
    """Exact denoiser of N(0, sigma_data^2 I) data: D(x, s) = x * sd^2 / (sd^2 + s^2)."""
    def denoise(x, sigma, cond):
        s = sigma.reshape(-1, *([1] * (x.ndim - 1)))
        return x * sigma_data**2 / (sigma_data**2 + s**2)
    return denoise


def test_euler_step_on_linear_denoiser_matches_formula():
    sampler = EulerEDMSampler(EDM_DISCRETIZATION, num_steps=3)
    x = torch.randn(2, 1, 3, 3, dtype=torch.float64)
    sigma, next_sigma = torch.full((2,), 4.0, dtype=torch.float64), torch.full((2,), 1.5, dtype=torch.float64)
    out, denoised = sampler.step(_linear_gaussian_denoiser(1.0), x, sigma, next_sigma, {}, {})
    torch.testing.assert_close(denoised, x / (1 + 16.0))
    expected = x + (1.5 - 4.0) * (x - x / (1 + 16.0)) / 4.0
    torch.testing.assert_close(out, expected)


def test_euler_sampler_converges_to_exact_ode_solution():
    # For Gaussian data the probability-flow ODE gives x(0) = x(s_max) * sd / sqrt(sd^2 + s_max^2).
    sd = 0.7
    sampler = EulerEDMSampler(
        {"target": "sgm.modules.diffusionmodules.discretizer.EDMDiscretization",
         "params": {"sigma_max": 80.0, "sigma_min": 0.002}}, num_steps=400)
    noise = torch.randn(3, 2, 4, 4, dtype=torch.float64)
    out = sampler(_linear_gaussian_denoiser(sd), noise, {})
    sigma_max = sampler.sigmas(device="cpu")[0].double()
    exact = noise * torch.sqrt(1 + sigma_max**2) * sd / torch.sqrt(sd**2 + sigma_max**2)
    torch.testing.assert_close(out, exact, rtol=2e-2, atol=1e-3)


def test_sampler_scales_noise_by_sqrt_one_plus_sigma0_squared_and_last_step_returns_denoised():
    sampler = EulerEDMSampler(EDM_DISCRETIZATION, num_steps=1)  # one step: sigma_max -> 0
    seen = []

    def denoise(x, sigma, cond):
        seen.append(x.clone())
        return torch.full_like(x, 0.25)
    noise = torch.ones(2, 1, 1, 1)
    out = sampler(denoise, noise, {})
    torch.testing.assert_close(seen[0], noise * math.sqrt(1 + 700.0**2))
    torch.testing.assert_close(out, torch.full_like(noise, 0.25), rtol=0, atol=1e-4)


def test_churn_gamma_formula():
    assert churn_gamma(5.0, 25, s_churn=0.0, s_tmin=0.0, s_tmax=math.inf) == 0.0
    assert churn_gamma(5.0, 10, s_churn=1.0, s_tmin=0.0, s_tmax=math.inf) == pytest.approx(0.1)
    assert churn_gamma(5.0, 1, s_churn=10.0, s_tmin=0.0, s_tmax=math.inf) == pytest.approx(math.sqrt(2) - 1)
    assert churn_gamma(5.0, 10, s_churn=1.0, s_tmin=6.0, s_tmax=10.0) == 0.0


def test_churned_step_is_seeded_by_generator():
    sampler = EulerEDMSampler(EDM_DISCRETIZATION, num_steps=4, s_churn=2.0)
    noise = torch.randn(2, 1, 2, 2)
    den = _linear_gaussian_denoiser(1.0)
    a = sampler(den, noise, {}, generator=torch.Generator().manual_seed(3))
    b = sampler(den, noise, {}, generator=torch.Generator().manual_seed(3))
    c = sampler(den, noise, {}, generator=torch.Generator().manual_seed(4))
    torch.testing.assert_close(a, b)
    assert not torch.allclose(a, c)


def test_loss_weightings_match_formula():
    s = SIGMAS
    torch.testing.assert_close(VWeighting()(s), (s**2 + 1) / s**2)
    torch.testing.assert_close(EDMWeighting(0.5)(s), (s**2 + 0.25) / (s * 0.5) ** 2)


def test_edm_sigma_sampling_is_lognormal():
    sigmas = EDMSampling(p_mean=1.0, p_std=1.6)(200_000, generator=torch.Generator().manual_seed(0))
    logs = sigmas.log()
    assert logs.mean().item() == pytest.approx(1.0, abs=0.02)
    assert logs.std().item() == pytest.approx(1.6, abs=0.02)


def test_refinement_alpha_schedule():
    assert refinement_alpha(0, 25) == 1.0
    # values quoted from the official loop: cos of i/25 radians, power 40
    for i, expected in [(5, 0.670), (10, 0.200), (24, 6.8e-5)]:
        assert refinement_alpha(i, 25) == pytest.approx(expected, rel=0.02)
    assert refinement_alpha(3, 25) == pytest.approx((0.5 * (1 + math.cos(3 / 25))) ** 40)


def test_denoiser_combines_scalings_and_network():
    denoiser = Denoiser({"target": "sgm.modules.diffusionmodules.denoiser_scaling.VScalingWithEDMcNoise"})
    x = torch.randn(3, 2, 4, 4)
    sigma = torch.tensor([0.5, 2.0, 9.0])
    calls = {}

    def network(x_in, c_noise, cond, **kwargs):
        calls.update(x_in=x_in, c_noise=c_noise, kwargs=kwargs)
        return torch.ones_like(x_in)
    out = denoiser(network, x, sigma, {}, num_video_frames=3)
    s = sigma[:, None, None, None]
    torch.testing.assert_close(calls["x_in"], x / (s**2 + 1).sqrt())
    torch.testing.assert_close(calls["c_noise"], sigma.log() / 4)
    assert calls["kwargs"] == {"num_video_frames": 3}
    torch.testing.assert_close(out, x / (s**2 + 1) - s / (s**2 + 1).sqrt())


def test_guider_is_an_argument_of_the_call_and_leaves_the_sampler_unchanged():
    # data: x0 = 0 for the unconditional half, 1 for the conditional one; a guider of scale w
    # therefore makes the x0 estimate w (frame-wise for the linear guider)
    config_guider = {"target": "sgm.modules.diffusionmodules.guiders.VanillaCFG", "params": {"scale": 2.0}}
    sampler = EulerEDMSampler(EDM_DISCRETIZATION, num_steps=1, guider_config=config_guider)

    def denoise(x, sigma, cond):
        return cond["vector"].reshape(-1, 1, 1, 1).expand_as(x).clone()
    cond, uc = {"vector": torch.ones(4, 1)}, {"vector": torch.zeros(4, 1)}
    noise = torch.zeros(4, 1, 1, 1)
    linear = LinearPredictionGuider(max_scale=3.0, num_frames=4, min_scale=1.0)
    per_call = sampler(denoise, noise, cond, uc, guider=linear)
    default = sampler(denoise, noise, cond, uc)
    # one step to sigma 0 returns the guided x0 estimate
    torch.testing.assert_close(per_call.flatten(), torch.tensor([1.0, 5 / 3, 7 / 3, 3.0]), atol=1e-4, rtol=0)
    torch.testing.assert_close(default.flatten(), torch.full((4,), 2.0), atol=1e-4, rtol=0)
    assert sampler.guider.scale == 2.0 and not isinstance(sampler.guider, LinearPredictionGuider)


def test_step_callback_receives_step_total_sigma_and_denoised():
    sampler = EulerEDMSampler(EDM_DISCRETIZATION, num_steps=3)
    sd = 1.0
    seen = []
    noise = torch.randn(2, 1, 2, 2, dtype=torch.float64)
    out = sampler(_linear_gaussian_denoiser(sd), noise, {}, callback=seen.append)
    sigmas = sampler.sigmas(device="cpu")
    assert [(info["step"], info["total"]) for info in seen] == [(0, 3), (1, 3), (2, 3)]
    for i, info in enumerate(seen):
        assert float(info["sigma"]) == float(sigmas[i]) and float(info["sigma_next"]) == float(sigmas[i + 1])
        before = noise * torch.sqrt(1 + sigmas[0] ** 2) if i == 0 else seen[i - 1]["x"]
        # the exact Gaussian denoiser's estimate at the step's own sigma
        torch.testing.assert_close(info["denoised"], before * sd**2 / (sd**2 + sigmas[i].double() ** 2))
    torch.testing.assert_close(seen[-1]["x"], out)


def test_refinement_passes_the_generator_to_every_step():
    sampler = EulerEDMSampler(EDM_DISCRETIZATION, num_steps=4, s_churn=2.0)
    noise, z = torch.randn(2, 1, 2, 2), torch.randn(2, 1, 2, 2)
    den = _linear_gaussian_denoiser(1.0)
    runs = [refine_latents(sampler, den, noise, z, {}, {}, generator=torch.Generator().manual_seed(seed))
            for seed in (3, 3, 4)]
    torch.testing.assert_close(runs[0], runs[1])
    assert not torch.allclose(runs[0], runs[2])
