import math

import pytest
import torch

from preimage.metrics import normalised_errors, pairwise_normaliser, relative_error, summarise


def test_relative_error():
    t = torch.tensor([[3.0, 4.0]])
    assert relative_error(torch.tensor([[3.0, 4.0]]), t).item() == 0
    assert relative_error(torch.tensor([[0.0, 0.0]]), t).item() == pytest.approx(1.0)


def test_pairwise_normaliser_conventions():
    codes = [torch.tensor([0.0, 0.0]), torch.tensor([3.0, 4.0]), torch.tensor([0.0, 4.0])]
    d01, d02, d12 = 5.0, 4.0, 3.0
    assert pairwise_normaliser(codes, "paper") == pytest.approx((d01 + d02 + d12) / 3)
    # authors: squared distances averaged over all 9 ordered pairs, diagonal (0) included
    assert pairwise_normaliser(codes, "authors") == pytest.approx(2 * (25 + 16 + 9) / 9)


def test_codes_of_different_sizes_are_zero_padded():
    codes = [torch.ones(2, 2), torch.ones(3, 3)]
    assert pairwise_normaliser(codes, "paper") == pytest.approx(math.sqrt(5))


def test_normalised_errors_and_summary():
    targets = [torch.tensor([0.0, 0.0]), torch.tensor([3.0, 4.0])]
    recon = [torch.tensor([0.5, 0.0]), torch.tensor([3.0, 4.0])]
    e = normalised_errors(recon, targets, convention="paper")
    assert e.tolist() == pytest.approx([0.1, 0.0])
    ea = normalised_errors(recon, targets, convention="authors")
    assert ea.tolist() == pytest.approx([0.25 / (50 / 4), 0.0])
    s = summarise(e)
    assert s["mean"] == pytest.approx(5.0) and s["std"] == pytest.approx(5.0)


def test_score_set_is_the_table_scorer():
    """One scorer for every table: both conventions from codes, equal to the library's formulas."""
    from preimage.metrics import normalised_errors, pairwise_normaliser, score_set, summarise
    g = torch.Generator().manual_seed(0)
    targets = [torch.randn(4, 3, 3, generator=g) for _ in range(4)]
    recons = [t + 0.1 * torch.randn(4, 3, 3, generator=g) for t in targets]
    scored = score_set(recons, targets)
    for conv in ("paper", "authors"):
        errs = normalised_errors(recons, targets, convention=conv)
        assert scored[conv]["per_image"] == errs.tolist()
        assert scored[conv]["normaliser"] == pairwise_normaliser(targets, conv)
        assert scored[conv]["mean"] == summarise(errs)["mean"] and scored[conv]["n"] == 4
