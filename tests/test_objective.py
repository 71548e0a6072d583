import contextlib
import math
import os
import subprocess
import sys

import pytest
import torch

from preimage.errors import InvalidTargetError
from preimage.paper import LAMBDA_ALPHA as PAPER_LAMBDA_ALPHA
from preimage.paper import SIGMA_REFERENCE
from preimage.masks import central_window_mask
from preimage import compiled
from preimage.objective import (InversionObjective, alpha_norm, default_lambdas, heuristic_lambdas, natural_sigma,
                                total_variation)
from preimage.representations.base import Representation


class Pool(Representation):
    """A linear toy representation: 4×4 average pooling."""

    def forward(self, x):
        return torch.nn.functional.avg_pool2d(x, 4)


def test_sigma_matches_authors_value_and_scales_with_sqrt_of_size():
    assert natural_sigma((3, 227, 227)) == pytest.approx(SIGMA_REFERENCE)
    assert natural_sigma((1, 454, 454)) / natural_sigma((1, 227, 227)) == pytest.approx(2.0)


def test_default_lambdas_are_papers_at_reference_and_follow_the_heuristic_law():
    la, lv = default_lambdas((3, 227, 227))
    assert la == pytest.approx(PAPER_LAMBDA_ALPHA) and lv == pytest.approx(5.0)
    la2, lv2 = default_lambdas((3, 454, 454))  # 4× the pixels: λ_α ∝ N², λ_V (β=2) constant
    assert la2 / la == pytest.approx(16.0) and lv2 == pytest.approx(5.0)
    _, lv1 = default_lambdas((3, 454, 454), beta=1.0)
    _, lv1_ref = default_lambdas((3, 227, 227), beta=1.0)
    assert lv1 / lv1_ref == pytest.approx(0.5)  # β=1: λ_V ∝ N^{-1/2}
    ha, hv = heuristic_lambdas((3, 227, 227))
    sigma = SIGMA_REFERENCE
    assert ha == pytest.approx(sigma ** 6 / (227 * 227 * 3 * 128.0 ** 6))
    assert hv == pytest.approx(sigma ** 2 / (227 * 227 * 3 * 1.28 ** 2))


def test_alpha_norm_and_tv_values():
    u = torch.tensor([[[[1.0, 2.0], [4.0, 8.0]]]])
    assert alpha_norm(u, 6).item() == pytest.approx(1 + 2 ** 6 + 4 ** 6 + 8 ** 6)
    # replicate padding: differences (1,0) at x=0 row 0: (2-1)² + (4-1)², (0)+(8-2)², (8-4)²+0, 0
    assert total_variation(u, 2.0).item() == pytest.approx(1 + 9 + 36 + 16)
    expected_b1 = math.sqrt(10) + 6 + 4 + 0
    assert total_variation(u, 1.0).item() == pytest.approx(expected_b1, rel=1e-5)
    # summed over colour channels
    assert total_variation(u.repeat(1, 3, 1, 1), 2.0).item() == pytest.approx(3 * 62)


@pytest.mark.parametrize("use_compiled", [False, pytest.param(True, marks=pytest.mark.skipif(
    not compiled.available(), reason="numba is not installed (the compiled priors need it)"))],
    ids=["torch", "compiled"])
def test_priors_values_and_gradients(use_compiled):
    """α⁶ and TV² (both forms): values against the plain formulas, float64 gradcheck with
    per-sample weights, NaN propagating; the compiled and the torch forms agree."""
    g = torch.Generator().manual_seed(0)
    u = torch.randn(3, 3, 9, 7, generator=g, dtype=torch.float64)
    dx, dy = u[..., :, 1:] - u[..., :, :-1], u[..., 1:, :] - u[..., :-1, :]
    weight = torch.tensor([1.0, -2.0, 0.5], dtype=torch.float64)
    with (contextlib.nullcontext() if use_compiled else compiled.disabled()):
        assert torch.allclose(alpha_norm(u), u.pow(6).flatten(1).sum(1), rtol=1e-12)
        assert torch.allclose(total_variation(u), dx.pow(2).flatten(1).sum(1) + dy.pow(2).flatten(1).sum(1),
                              rtol=1e-12)
        for prior in (alpha_norm, total_variation):
            assert torch.autograd.gradcheck(lambda v: prior(v) * weight, (u.clone().requires_grad_(),))
        v = u.float().requires_grad_()
        (alpha_norm(v) * weight.float() + total_variation(v)).sum().backward()
        nan = u.clone()
        nan[1, 0, 2, 2] = float("nan")
        assert torch.isnan(alpha_norm(nan))[1] and torch.isnan(total_variation(nan))[1]
        assert torch.isfinite(alpha_norm(nan)[[0, 2]]).all()
    with compiled.disabled():
        w = u.float().requires_grad_()
        (alpha_norm(w) * weight.float() + total_variation(w)).sum().backward()
    assert torch.allclose(v.grad, w.grad, rtol=1e-5, atol=1e-5 * float(w.grad.abs().max()))


@pytest.mark.skipif(not compiled.available(), reason="numba is not installed (the compiled priors need it)")
def test_first_compile_is_announced_once(tmp_path):
    """A machine without numba's cached loops hears that they are being compiled; the next process
    (cache on disk) does not."""
    probe = ("import torch; from preimage.objective import alpha_norm, total_variation; "
             "u = torch.rand(1, 1, 8, 8, requires_grad=True); (alpha_norm(u) + total_variation(u)).sum().backward()")
    env = dict(os.environ, NUMBA_CACHE_DIR=str(tmp_path))
    runs = [subprocess.run([sys.executable, "-c", probe], env=env, capture_output=True, text=True, check=True)
            for _ in range(2)]
    assert runs[0].stderr.count("preimage: compiling the priors' CPU loops with numba") == 1
    assert "compiling" not in runs[1].stderr


def test_loops_that_fail_to_load_fall_back_to_torch(monkeypatch, capsys):
    """Loops numba cannot set up (a broken install, no folder to cache in) leave the torch forms
    and one line saying so; the priors still work."""
    def broken(name):
        raise RuntimeError("cannot cache function: no locator available")

    monkeypatch.setattr(compiled.importlib, "import_module", broken)
    monkeypatch.setattr(compiled, "_modules", {})
    assert compiled.load("objective_numba") is None
    assert "the priors' CPU loops are unavailable (RuntimeError" in capsys.readouterr().err
    u = torch.rand(2, 1, 5, 5, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda v: alpha_norm(v) + total_variation(v), (u,))


def test_tv_beta1_gradient_is_finite_on_flat_image():
    u = torch.zeros(1, 1, 5, 5, requires_grad=True)
    total_variation(u, 1.0).sum().backward()
    assert torch.isfinite(u.grad).all()


def test_objective_rejects_bad_targets():
    rep = Pool()
    t = torch.ones(1, 1, 4, 4)
    t[0, 0, 0, 0] = float("nan")
    with pytest.raises(InvalidTargetError, match="NaN"):
        InversionObjective(rep, t, (1, 16, 16))
    with pytest.raises(InvalidTargetError, match="all zeros"):
        InversionObjective(rep, torch.zeros(1, 1, 4, 4), (1, 16, 16))
    with pytest.raises(ValueError, match="does not broadcast"):
        InversionObjective(rep, torch.ones(1, 1, 4, 4), (1, 16, 16), mask=torch.ones(1, 2, 4, 4))


def test_objective_terms_are_per_sample_and_independent():
    rep = Pool()
    target = torch.rand(2, 1, 4, 4) * 100 + 50
    obj = InversionObjective(rep, target, (1, 16, 16), lambda_alpha=[1e3, 1e3], lambda_tv=[0.0, 100.0])
    u = torch.randn(2, 1, 16, 16, requires_grad=True)
    terms = obj(u)
    assert terms.data.shape == (2,) and terms.tv[0] == 0 and terms.tv[1] > 0
    terms.total[0].backward()
    assert u.grad[1].abs().sum() == 0  # sample 0 does not depend on sample 1
    # the data term is zero at the target image (a constant image has a constant pooled code)
    img = torch.full((1, 1, 16, 16), 200.0)
    obj2 = InversionObjective(rep, rep(img), (1, 16, 16))
    u_star = (img - obj2.mean_pixel) / obj2.sigma
    assert obj2(u_star).data.item() == pytest.approx(0.0, abs=1e-10)


def test_masked_loss_ignores_outside_and_normalises_by_masked_target():
    rep = Pool()
    target = torch.rand(1, 1, 6, 6) + 1
    mask = central_window_mask((1, 6, 6), 2)
    obj = InversionObjective(rep, target, (1, 24, 24), mask=mask)
    code = target.clone()
    code[..., 0, 0] += 100  # outside the window
    assert obj.data_term(code).item() == pytest.approx(0.0)
    code = target.clone()
    code[..., 2, 2] += 1.0  # inside
    expected = 1.0 / (target * mask).pow(2).sum()
    assert obj.data_term(code).item() == pytest.approx(float(expected), rel=1e-5)
