import pytest
import torch

from preimage.errors import InvalidTargetError
from preimage.invert import invert, invert_images
from preimage.representations.base import Representation


class Pool(Representation):
    input_channels = (1, 3)

    def forward(self, x):
        return torch.nn.functional.avg_pool2d(x, 4)


def test_batched_shapes_restarts_and_settings():
    imgs = torch.rand(2, 1, 16, 16) * 255
    res = invert(Pool(), imgs, restarts=3, lambda_tv=[0.5, 5.0], iterations=40, lr=5e-3, progress=False)
    assert res.reconstructions.shape == (2, 3, 2, 1, 16, 16)
    assert res.codes.shape == (2, 3, 2, 1, 4, 4)
    assert res.relative_errors.shape == (2, 3, 2)
    # restarts start from different noise, so their results differ
    assert not torch.allclose(res.reconstructions[0, 0, 0], res.reconstructions[0, 1, 0])
    # more TV → smoother result (lower raw TV per unit λ)
    tv_low = res.energy["tv"][:, :, 0] / 0.5
    tv_high = res.energy["tv"][:, :, 1] / 5.0
    assert (tv_high < tv_low).all()
    assert res.best().shape == (2, 2, 1, 16, 16)


def test_reconstruction_matches_code_of_a_smooth_image():
    x = torch.linspace(60, 200, 32).view(1, 1, 1, 32).expand(1, 1, 32, 32).contiguous()
    res = invert(Pool(), x, iterations=300, lr=1e-2, lambda_tv=0.5, progress=False)
    assert res.relative_errors.item() < 0.05


def test_chunks_give_the_same_answer_as_one_batch():
    imgs = torch.rand(3, 1, 16, 16) * 255
    a = invert(Pool(), imgs, iterations=20, lr=1e-2, progress=False)
    b = invert(Pool(), imgs, iterations=20, lr=1e-2, progress=False, max_batch=2)
    assert torch.allclose(a.reconstructions, b.reconstructions, atol=1e-4)


def test_invert_from_code_and_bad_targets():
    code = torch.rand(1, 1, 4, 4) * 100 + 10
    res = invert(Pool(), target=code, image_shape=(1, 16, 16), iterations=10, lr=1e-2, progress=False)
    assert res.reconstructions.shape == (1, 1, 1, 1, 16, 16)
    bad = code.clone()
    bad[0, 0, 0, 0] = float("inf")
    with pytest.raises(InvalidTargetError, match="NaN/Inf"):
        invert(Pool(), target=bad, image_shape=(1, 16, 16), progress=False)
    with pytest.raises(ValueError, match="either images"):
        invert(Pool(), target=code)
    with pytest.raises(ValueError, match="equal"):
        invert(Pool(), torch.rand(1, 1, 16, 16), lambda_tv=[1, 2], lambda_alpha=[1, 2, 3], progress=False)


def test_invert_images_groups_sizes_and_keeps_order():
    ims = [torch.rand(1, 16, 16) * 255, torch.rand(1, 20, 24) * 255, torch.rand(1, 16, 16) * 255]
    out = invert_images(Pool(), ims, iterations=5, lr=1e-2, progress=False)
    assert [tuple(o.reconstructions.shape[-2:]) for o in out] == [(16, 16), (20, 24), (16, 16)]
    assert torch.equal(out[2].targets[0], Pool()(ims[2][None])[0])


def test_default_tv_weight_is_the_representations_own():
    """A representation with a ``lambda_tv`` (a CNN layer: the paper's weight for its depth) sets
    the default λ_V; others get the paper's λ_V = 5; an explicit value always wins."""
    from preimage.objective import default_lambdas

    class Deep(Pool):
        lambda_tv = 50.0

    x = torch.rand(1, 1, 16, 16) * 255
    plain = invert(Pool(), x, iterations=2, lr=1e-3, progress=False)
    deep = invert(Deep(), x, iterations=2, lr=1e-3, progress=False)
    given = invert(Deep(), x, iterations=2, lr=1e-3, lambda_tv=0.5, progress=False)
    ref = default_lambdas((1, 16, 16))[1]
    assert float(plain.lambda_tv[0]) == pytest.approx(ref)
    assert float(deep.lambda_tv[0]) == pytest.approx(10 * ref)   # β = 2: λ_V does not scale with size
    assert float(given.lambda_tv[0]) == pytest.approx(0.5)


def test_divergence_halvings_are_reported_per_sample():
    """A rate that blows up is halved for the samples that diverge; settings say how often."""
    x = torch.rand(1, 1, 16, 16) * 255
    with pytest.warns(RuntimeWarning, match="diverged"):
        res = invert(Pool(), x, restarts=2, iterations=60, lr=50.0, lambda_alpha=1e3, lambda_tv=0.5, progress=False)
    halvings = torch.tensor(res.settings["lr_halvings"])
    assert halvings.shape == (1, 2, 1) and (halvings >= 1).all()
    assert torch.isfinite(res.reconstructions).all()


class Colour(Representation):
    """A linear toy representation of RGB images: 4×4 average pooling of every channel."""

    input_channels = (3,)

    def code_stride(self):
        return 4

    def forward(self, x):
        return torch.nn.functional.avg_pool2d(x, 4)


@pytest.mark.parametrize("param, options, iterations, gain",
                         [("fourier", {}, 60, 0.5), ("dip", {"channels": (8, 16, 16)}, 60, 0.75)])
def test_parameterised_images_lower_the_code_error(param, options, iterations, gain):
    """Fourier and DIP images are optimised through their own parameters (Adam, their declared
    rate) and reach a far lower code error than their starting point; settings say how."""
    torch.manual_seed(0)
    x = torch.nn.functional.avg_pool2d(torch.rand(2, 3, 32, 32), 5, 1, 2) * 200 + 20
    short = invert(Colour(), x, iterations=1, param=param, param_options=options, progress=False)
    res = invert(Colour(), x, restarts=2, iterations=iterations, param=param, param_options=options,
                 progress=False)
    assert res.reconstructions.shape == (2, 2, 1, 3, 32, 32)
    assert res.settings["param"] == param and res.settings["method"] == "adam"
    assert float(res.relative_errors.max()) < gain * float(short.relative_errors.min())


def test_parameterisation_options_default_to_the_class_recommendation():
    """invert builds the image with the parameterisation's recommended options (the Fourier
    image's sigmoid and margin) unless param_options overrides them, key by key; the settings
    record what was used."""
    from preimage.params import FourierParam
    x = torch.rand(1, 3, 16, 16) * 255
    res = invert(Colour(), x, iterations=2, param="fourier", progress=False)
    assert res.settings["param_options"] == FourierParam.recommended_options
    res = invert(Colour(), x, iterations=2, param="fourier", param_options={"bounded": False}, progress=False)
    assert res.settings["param_options"] == {**FourierParam.recommended_options, "bounded": False}
    assert invert(Colour(), x, iterations=2, method="paper", progress=False).settings["param_options"] == {}


def test_jitter_auto_follows_the_code_stride():
    """jitter="auto" takes IJCV's quarter of the code's stride; a representation without a
    stride must be given the jitter in pixels; the jittered run still converges."""
    x = torch.rand(1, 3, 32, 32) * 255
    res = invert(Colour(), x, iterations=30, param="fourier", jitter="auto", progress=False)
    assert res.settings["jitter"] == 1   # stride 4 → max(round(4/4), 1) = 1
    res = invert(Colour(), x, iterations=30, param="fourier", jitter=3, progress=False)
    assert res.settings["jitter"] == 3 and torch.isfinite(res.reconstructions).all()
    with pytest.raises(ValueError, match="stride"):
        invert(Pool(), torch.rand(1, 1, 16, 16) * 255, iterations=2, jitter="auto", progress=False)


def test_fourier_run_resumes_from_its_checkpoint(tmp_path):
    """An interrupted Fourier/Adam run resumes from its checkpoint (parameters and Adam's moments)
    and ends where an uninterrupted one does."""
    x = torch.rand(1, 3, 32, 32) * 255
    full = invert(Colour(), x, iterations=60, param="fourier", progress=False)
    calls = {"n": 0}
    rep = Colour()
    forward = rep.forward

    def interrupted(y):
        calls["n"] += 1
        if calls["n"] == 56:
            raise KeyboardInterrupt
        return forward(y)
    rep.forward = interrupted
    with pytest.raises(KeyboardInterrupt):
        invert(rep, x, iterations=60, param="fourier", progress=False, checkpoint=tmp_path / "ck")
    rep.forward = forward
    resumed = invert(rep, x, iterations=60, param="fourier", progress=False, checkpoint=tmp_path / "ck")
    assert torch.allclose(resumed.reconstructions, full.reconstructions, atol=1e-3)


def test_representation_recipe_optimiser_is_used_without_jitter_only():
    """A representation's ``recipe_optimiser`` for the parameterisation (CNN layers: L-BFGS on
    a Fourier image) is the default method and rate; a jitter (a changing objective), an
    explicit method or the paper's method keep theirs."""
    class QuasiNewton(Colour):
        recipe_optimiser = {"fourier": ("lbfgs", 0.5)}

    x = torch.rand(1, 3, 32, 32) * 255
    rep = QuasiNewton()
    res = invert(rep, x, iterations=20, param="fourier", progress=False)
    assert res.settings["method"] == "lbfgs" and res.settings["lr"] == [0.5]
    early = invert(rep, x, iterations=2, param="fourier", progress=False)
    assert res.relative_errors.item() < early.relative_errors.item()
    assert invert(rep, x, iterations=2, param="fourier", lr=0.2, progress=False).settings["lr"] == [0.2]
    assert invert(rep, x, iterations=2, param="fourier", jitter=3, progress=False).settings["method"] == "adam"
    assert invert(rep, x, iterations=2, param="fourier", method="adam", progress=False).settings["method"] == "adam"
    assert invert(rep, x, iterations=2, param="pixel", progress=False).settings["method"] == "momentum"
    assert invert(rep, x, iterations=2, method="paper", progress=False).settings["method"] == "momentum"
