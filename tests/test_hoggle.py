"""HOGgle baseline: training on synthetic images, inversion quality, geometry, safe persistence."""

import pickle

import numpy as np
import pytest
import torch

from helpers import textured as synthetic_image
from preimage.baselines import hoggle as H
from preimage.errors import InvalidTargetError, PreimageError
from preimage.io.images import save_image


@pytest.fixture(scope="module")
def synthetic_set():
    rng = np.random.default_rng(1234)
    train = [synthetic_image(rng) for _ in range(24)]
    test = [synthetic_image(rng) for _ in range(4)]
    return train, test


@pytest.fixture(scope="module")
def small_dictionary(synthetic_set):
    train, _ = synthetic_set
    return H.train_hoggle(train, n_atoms=96, alpha=0.02, windows_per_image=100, n_iter=40, batch_size=256,
                          seed=0, progress=False)


# --------------------------------------------------------------------------------------- quality

def test_inversion_beats_blank_image(synthetic_set, small_dictionary):
    """On held-out synthetic images the reconstruction's HOG is much closer to the target than a
    blank image's (whose HOG is 0: relative error 1), its pixels correlate with the original, and
    breaking the HOG/grey pairing of the atoms destroys that correlation."""
    _, test = synthetic_set
    rng = np.random.default_rng(0)
    shuffled = H.HoggleDictionary(np.concatenate(
        [small_dictionary.hog_atoms, small_dictionary.grey_atoms[rng.permutation(small_dictionary.n_atoms)]], 1),
        dict(small_dictionary.metadata))
    hog_errors, corrs, shuffled_corrs = [], [], []
    for img in test:
        target = H.compute_hog(img)
        recon = H.hoggle_invert_image(img, small_dictionary)
        assert recon.shape == img.shape
        blank = torch.full_like(img, 128.0)
        blank_err = float((H.compute_hog(blank) - target).norm() / target.norm())
        assert blank_err == pytest.approx(1.0)
        hog_errors.append(float((H.compute_hog(recon) - target).norm() / target.norm()))
        corrs.append(np.corrcoef(recon.flatten().numpy(), img.flatten().numpy())[0, 1])
        bad = H.hoggle_invert_image(img, shuffled)
        shuffled_corrs.append(np.corrcoef(bad.flatten().numpy(), img.flatten().numpy())[0, 1])
    assert np.mean(hog_errors) < 0.8 and max(hog_errors) < 0.9, hog_errors
    assert np.mean(corrs) > 0.4 and min(corrs) > 0.3, corrs
    assert np.mean(np.abs(shuffled_corrs)) < np.mean(corrs) - 0.2, (corrs, shuffled_corrs)


def test_output_shape_range_and_batching(synthetic_set, small_dictionary):
    _, test = synthetic_set
    img = test[0][:, :100, :90]
    code = H.compute_hog(img)
    out = H.invert_hoggle(code, small_dictionary, tuple(img.shape[-2:]))
    assert out.shape == (1, 100, 90)
    assert float(out.min()) == pytest.approx(0.0) and float(out.max()) == pytest.approx(255.0)
    both = H.invert_hoggle(torch.stack([code, code]), small_dictionary, (100, 90))
    assert both.shape == (2, 1, 100, 90)
    torch.testing.assert_close(both[0], out, atol=1e-3, rtol=0)
    # colour input goes through BT.601 grey
    rgb = img.repeat(3, 1, 1)
    torch.testing.assert_close(H.hoggle_invert_image(rgb, small_dictionary), out, atol=1e-3, rtol=0)
    with pytest.raises(InvalidTargetError):
        H.invert_hoggle(torch.zeros(31, 5, 5), small_dictionary)
    with pytest.raises(InvalidTargetError):
        H.invert_hoggle(torch.full((27, 5, 5), float("nan")), small_dictionary)


def test_admm_matches_exact_positive_lasso():
    """The batched ADMM solver reaches sklearn's exact positive-lasso objective."""
    from sklearn.decomposition import sparse_encode
    rng = np.random.default_rng(0)
    D = rng.standard_normal((120, 60))
    D /= np.linalg.norm(D, axis=1, keepdims=True)
    X = rng.standard_normal((50, 60))
    X /= np.linalg.norm(X, axis=1, keepdims=True)
    exact = sparse_encode(X, D, algorithm="lasso_cd", alpha=0.02, positive=True)
    ours = H.positive_lasso(torch.tensor(X), torch.tensor(D), 0.02, n_iter=40).double().numpy()
    obj = lambda c: 0.5 * ((X - c @ D) ** 2).sum() + 0.02 * c.sum()  # noqa: E731
    assert ours.min() >= 0
    assert obj(ours) <= obj(exact) * 1.01


# -------------------------------------------------------------------------------------- training

def test_same_seed_same_dictionary(synthetic_set):
    train, _ = synthetic_set
    kw = dict(n_atoms=32, windows_per_image=30, n_iter=6, batch_size=64, progress=False)
    a = H.train_hoggle(train[:8], seed=3, **kw)
    b = H.train_hoggle(train[:8], seed=3, **kw)
    c = H.train_hoggle(train[:8], seed=4, **kw)
    assert np.array_equal(a.atoms, b.atoms)
    assert not np.array_equal(a.atoms, c.atoms)
    assert a.metadata["n_windows"] == 6 * 64 and a.metadata["n_train_images"] == 8
    assert np.all(np.linalg.norm(a.atoms, axis=1) <= 1 + 1e-5)


def test_sklearn_backend_runs(synthetic_set):
    train, _ = synthetic_set
    d = H.train_hoggle(train[:4], n_atoms=16, windows_per_image=16, n_iter=2, batch_size=32, seed=0,
                       progress=False, backend="sklearn")
    assert d.atoms.shape == (16, H.HOG_DIM + H.GREY_DIM) and d.metadata["backend"] == "sklearn"


def test_training_from_files(tmp_path, synthetic_set):
    train, _ = synthetic_set
    paths = []
    for k, img in enumerate(train[:3]):
        p = tmp_path / f"im{k}.png"
        save_image(img, p)
        paths.append(p)
    d = H.train_hoggle(paths, n_atoms=8, windows_per_image=10, n_iter=2, batch_size=16, progress=False)
    assert d.metadata["n_train_images"] == 3


# -------------------------------------------------------------------------------------- geometry

def test_pair_extraction_geometry():
    """The HOG half is cells [i, i+5) × [j, j+5); the grey half pixels [8i−8, 8i+48) × [8j−8, 8j+48)."""
    Hh, Ww = 80, 104
    grey = np.arange(Hh * Ww, dtype=np.float64).reshape(Hh, Ww)
    h, w = (Hh + 4) // 8, (Ww + 4) // 8
    hog = np.arange(27 * h * w, dtype=np.float64).reshape(27, h, w)
    rows, cols = H.valid_window_range(Hh, Ww)
    assert (rows.start, cols.start) == (1, 1)
    assert 8 * (rows.stop - 1) + 48 <= Hh < 8 * rows.stop + 48    # last patch fits, one more would not
    assert 8 * (cols.stop - 1) + 48 <= Ww < 8 * cols.stop + 48
    pos = np.array([[1, 1], [rows.stop - 1, cols.stop - 1], [2, 3]])
    hw, gp = H.extract_pairs(grey, hog, pos, normalise=False)
    for (i, j), a, b in zip(pos, hw, gp):
        np.testing.assert_array_equal(a, hog[:, i:i + 5, j:j + 5].reshape(-1).astype(np.float32))
        patch = grey[8 * i - 8:8 * i + 48, 8 * j - 8:8 * j + 48]
        np.testing.assert_array_equal(b.reshape(56, 56), patch.astype(np.float32))
    with pytest.raises(ValueError):
        H.extract_pairs(grey, hog, np.array([[0, 1]]), normalise=False)
    hwn, gpn = H.extract_pairs(grey, hog, pos)
    np.testing.assert_allclose(np.linalg.norm(hwn, axis=1), 1, rtol=1e-5)
    np.testing.assert_allclose(gpn.mean(1), 0, atol=1e-6)


def test_edge_lands_in_matching_cell_and_patch_column():
    """A vertical edge in the middle of cell b: the window's HOG energy peaks in its column b − j
    and the paired patch's gradient peaks at pixel 8(b − j + 1) + 4 (one cell of margin)."""
    img = np.zeros((128, 128))
    b = 7
    img[:, 8 * b + 4:] = 200.0
    hog = H.compute_hog(torch.from_numpy(img)[None].float()).double().numpy()
    for j in (3, 4, 5):
        hw, gp = H.extract_pairs(img, hog, np.array([[5, j]]), normalise=False)
        energy = hw.reshape(27, 5, 5).sum((0, 1))
        assert int(np.argmax(energy)) == b - j
        grad = np.abs(np.diff(gp.reshape(56, 56)[28]))
        assert int(np.argmax(grad)) == 8 * (b - j + 1) + 3      # step between pixels 8(b−j+1)+3 and +4


def test_assembly_places_patch_over_its_pixels():
    """A single non-zero window patch lands on pixels [8(a − pad − 1), +56) of the image."""
    h, w, pad = 9, 11, 4
    n_rows, n_cols = h + 2 * pad - 4, w + 2 * pad - 4
    Hh, Ww = 8 * h, 8 * w
    for a, bb in [(pad, pad), (pad + 2, pad + 3), (0, 0)]:
        patches = torch.zeros(n_rows * n_cols, 56, 56, dtype=torch.float64)
        patches[a * n_cols + bb] = 1.0
        img = H.assemble_patches(patches, n_rows, n_cols, pad, (Hh, Ww)).numpy()
        ys, xs = np.nonzero(img > 1e-12)
        y0, x0 = 8 * (a - pad - 1), 8 * (bb - pad - 1)
        assert ys.min() == max(y0, 0) and ys.max() == min(y0 + 55, Hh - 1)
        assert xs.min() == max(x0, 0) and xs.max() == min(x0 + 55, Ww - 1)


def test_padding_covers_every_pixel(small_dictionary):
    """With the default padding every pixel gets weight (no holes); a too-small map is refused."""
    code = torch.rand(27, 3, 4)
    out = H.invert_hoggle(code, small_dictionary, (20, 28))
    assert out.shape == (1, 20, 28) and torch.isfinite(out).all()
    with pytest.raises(ValueError):
        H.invert_hoggle(code, small_dictionary, (20, 28), pad=0)


# ----------------------------------------------------------------------------------- persistence

@pytest.mark.parametrize("suffix", [".safetensors", ".npz"])
def test_save_load_round_trip(tmp_path, small_dictionary, suffix):
    path = small_dictionary.save(tmp_path / f"d{suffix}")
    back = H.HoggleDictionary.load(path)
    assert np.array_equal(back.atoms, small_dictionary.atoms) and back.atoms.dtype == np.float32
    assert back.metadata == small_dictionary.metadata
    for key in ("n_atoms", "alpha", "cell_size", "hog_window_cells", "patch_pixels", "seed", "n_windows",
                "n_train_images", "preimage_version"):
        assert key in back.metadata


class _Marker:
    """Unpickling this object would create a file: proves nothing was unpickled."""

    def __init__(self, path):
        self.path = str(path)

    def __reduce__(self):
        return (open, (self.path, "w"))


@pytest.mark.parametrize("suffix", [".safetensors", ".npz", ".pkl"])
def test_load_refuses_pickles(tmp_path, suffix):
    marker = tmp_path / "unpickled"
    path = tmp_path / f"evil{suffix}"
    path.write_bytes(pickle.dumps({"atoms": _Marker(marker)}))
    with pytest.raises(PreimageError):
        H.HoggleDictionary.load(path)
    assert not marker.exists()
    # an .npz that holds an object array needs allow_pickle: refused too
    objnpz = tmp_path / "obj.npz"
    np.savez(objnpz, atoms=np.array([_Marker(marker)], dtype=object), metadata=np.zeros(2, np.uint8))
    with pytest.raises(PreimageError):
        H.HoggleDictionary.load(objnpz)
    assert not marker.exists()


# ----------------------------------------------------------------- the default: recipe and cache

@pytest.fixture()
def tiny_recipe(tmp_path, synthetic_set, monkeypatch):
    """A tiny recipe on three synthetic image files, a private cache folder, no override."""
    monkeypatch.delenv(H.DICTIONARY_ENV, raising=False)
    monkeypatch.setenv(H.CACHE_ENV, str(tmp_path / "cache"))
    paths = []
    for k, img in enumerate(synthetic_set[0][:3]):
        paths.append(tmp_path / f"train{k}.png")
        save_image(img, paths[-1])
    recipe = H.Recipe.for_files(paths, n_atoms=8, windows_per_image=10, n_iter=2, batch_size=16)
    return recipe, paths


def test_recipe_stamp_changes_with_every_part_of_the_recipe(monkeypatch):
    from preimage.baselines.hoggle import geometry, recipe as recipe_module
    from preimage.representations.hog import HOG
    base = H.Recipe(images=(("a.png", "aa"), ("b.png", "bb")))
    assert base.stamp() == H.Recipe(images=(("a.png", "aa"), ("b.png", "bb"))).stamp()
    assert len(base.stamp()) == 12 and base.stamp() in base.file_name()
    assert base.file_name().startswith("hoggle-k1000-a0.02-s0-") and base.file_name().endswith(".safetensors")
    stamps = {base.stamp()}
    changes = dict(n_atoms=999, alpha=0.03, seed=1, windows_per_image=999, n_iter=41, batch_size=1000,
                   lasso_iter=14, backend="sklearn")
    assert set(changes) == set(base.settings())               # every setting is tried
    for key, value in changes.items():
        stamps.add(base.with_settings(**{key: value}).stamp())
    for images in [(("a.png", "aa"),), (("b.png", "bb"), ("a.png", "aa")), (("a.png", "ab"), ("b.png", "bb")),
                   (("c.png", "aa"), ("b.png", "bb"))]:
        stamps.add(H.Recipe(images=images).stamp())
    monkeypatch.setattr(recipe_module, "TRAINING_VERSION", H.TRAINING_VERSION + 1)
    stamps.add(base.stamp())
    monkeypatch.undo()
    monkeypatch.setattr(recipe_module, "code_digest", lambda: "edited")
    stamps.add(base.stamp())
    monkeypatch.undo()
    monkeypatch.setattr(geometry, "_HOG_MODULE", HOG(cell_size=8, variant="uoctti", bilinear=True))
    stamps.add(base.stamp())
    monkeypatch.undo()
    assert len(stamps) == 1 + len(changes) + 4 + 3, "a change of the recipe kept the stamp"
    assert base.stamp() == H.Recipe(images=(("a.png", "aa"), ("b.png", "bb"))).stamp()


def test_first_use_announces_trains_once_and_never_reuses_another_recipe(tiny_recipe, capsys, monkeypatch):
    from preimage.baselines.hoggle import default as default_module
    recipe, paths = tiny_recipe
    cache = H.default_dictionary_path(recipe).parent
    old = H.train_hoggle(paths, n_atoms=8, windows_per_image=10, n_iter=2, batch_size=16, progress=False)
    old.save(cache / "hoggle-k8-a0.02-s0-v1.safetensors")            # an older-format file: not used
    real_train, announced = default_module.train_hoggle, []

    def train_after_announcement(*args, **kwargs):
        announced.append("training the default HOGgle dictionary once" in capsys.readouterr().err)
        return real_train(*args, **kwargs)
    monkeypatch.setattr(default_module, "train_hoggle", train_after_announcement)

    first = H.load_or_train_default(progress=False, recipe=recipe, paths=paths)
    assert announced == [True]                                   # said so before training started
    path = cache / recipe.file_name()
    assert path.is_file() and first.metadata["recipe_stamp"] == recipe.stamp()
    assert first.metadata["recipe"] == recipe.as_dict() and recipe.mismatch(first) is None
    again = H.load_or_train_default(progress=False, recipe=recipe, paths=paths)
    assert announced == [True] and "training" not in capsys.readouterr().err      # cached: no training
    assert np.array_equal(again.atoms, first.atoms)

    changed = recipe.with_settings(n_iter=3)                     # a new recipe: a new file, trained
    assert changed.file_name() != recipe.file_name()
    H.load_or_train_default(progress=False, recipe=changed, paths=paths)
    assert announced == [True, True]

    # a file under the right name whose metadata holds another recipe is retrained, with a message
    tampered = H.HoggleDictionary(first.atoms, {**first.metadata, "recipe": {**first.metadata["recipe"], "n_iter": 9}})
    tampered.save(path)
    assert "n_iter" in recipe.mismatch(tampered) and "recipe" in recipe.mismatch(old)
    capsys.readouterr()
    back = H.load_or_train_default(progress=False, recipe=recipe, paths=paths)
    assert announced == [True, True, True]
    assert H.HoggleDictionary.load(path).metadata["recipe"]["n_iter"] == 2 and recipe.mismatch(back) is None
    assert np.array_equal(back.atoms, first.atoms)               # same recipe, same seed: same atoms


def test_named_dictionary_file_is_used_as_given(tmp_path, monkeypatch, capsys, small_dictionary):
    monkeypatch.setenv(H.DICTIONARY_ENV, str(tmp_path / "missing.safetensors"))
    with pytest.raises(PreimageError):
        H.load_or_train_default(progress=False)
    path = small_dictionary.save(tmp_path / "mine.safetensors")
    monkeypatch.setenv(H.DICTIONARY_ENV, str(path))
    assert H.default_dictionary_path() == path
    assert np.array_equal(H.load_or_train_default(progress=False).atoms, small_dictionary.atoms)
    from preimage.data import shared_dir
    if shared_dir() is not None:                                 # the default recipe is known: warned
        assert "warning" in capsys.readouterr().err


def test_block_atom_update_equals_the_sequential_one():
    """The blocked update is scikit-learn's atom-by-atom pass (unused atoms replaced) to rounding."""
    from preimage.baselines.hoggle.training import _update_atoms
    g = torch.Generator().manual_seed(0)
    K, d, n = 150, 90, 64
    D = torch.randn(K, d, generator=g, dtype=torch.float64)
    D /= D.norm(dim=1, keepdim=True)
    C = torch.rand(n, K, generator=g, dtype=torch.float64) * (torch.rand(n, K, generator=g) < 0.2)
    C[:, [3, 70, 71, 149]] = 0                                   # never used: replaced
    A, X = C.T @ C / n, torch.randn(n, d, generator=g, dtype=torch.float64)
    Bs = 3 * C.T @ X / n
    ref, ours = D.clone(), D.clone()
    gen = torch.Generator().manual_seed(5)
    for k in range(K):
        if A[k, k] > 1e-6:
            ref[k] += (Bs[k] - A[k] @ ref) / A[k, k]
        else:
            new = X[int(torch.randint(n, (1,), generator=gen))]
            ref[k] = new + torch.randn(new.shape, generator=gen) * 0.01 * float(new.std())
        ref[k] /= max(float(ref[k].norm()), 1.0)
    _update_atoms(ours, A, Bs, X, torch.Generator().manual_seed(5), block=32)
    torch.testing.assert_close(ours, ref, atol=1e-10, rtol=0)


def test_evaluate_hoggle_reports_both_conventions(tmp_path, synthetic_set, small_dictionary):
    _, test = synthetic_set
    paths = []
    for k, img in enumerate(test[:3]):
        p = tmp_path / f"e{k}.png"
        save_image(img, p)
        paths.append(p)
    res = H.evaluate_hoggle(paths, small_dictionary, progress=False)
    assert res["n"] == 3 and res["seconds_per_image"] > 0
    for conv in ("paper", "authors"):
        assert len(res[conv]["per_image"]) == 3 and res[conv]["normaliser"] > 0
        assert 0 < res[conv]["mean"] < 200
