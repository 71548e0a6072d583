"""The default dictionary: its recipe (:mod:`.recipe`: the settings, the shared training images'
contents, the HOG, the training code), where it is cached (``$PREIMAGE_CACHE``, under a name that
carries the recipe's stamp, or a file named by ``$PREIMAGE_HOGGLE_DICTIONARY``), training it, and
loading it: trained once, announced on stderr and shown by progress bars, the first time HOGgle is
used on a machine (≈ 1 minute on two cores), and again whenever the recipe changes."""

from __future__ import annotations

import os
import sys
from pathlib import Path

from ...errors import PreimageError
from .dictionary import DEFAULT_ALPHA, HoggleDictionary
from .recipe import DEFAULT_N_ATOMS, DEFAULT_N_ITER, DEFAULT_WINDOWS_PER_IMAGE, Recipe
from .training import train_hoggle

CACHE_ENV = "PREIMAGE_CACHE"
DICTIONARY_ENV = "PREIMAGE_HOGGLE_DICTIONARY"


def default_recipe(max_images: int | None = None, **settings) -> Recipe:
    """The recipe of the default dictionary: the shared training images (the first
    ``max_images`` of them, sorted; all 200 by default) and the default settings, or ``settings``
    (``n_atoms``, ``alpha``, ``seed``, ...). :class:`PreimageError` when the images are missing."""
    from ...data import train_images
    try:
        paths = train_images()
    except FileNotFoundError as exc:
        raise PreimageError(f"the HOGgle dictionary is trained on the shared training images: {exc} "
                            f"(or set {DICTIONARY_ENV} to a trained dictionary file)") from None
    paths = paths[:max_images] if max_images else paths
    if not paths:
        raise PreimageError("no training images found under data/imagenet-sample/train")
    return Recipe.for_files(paths, **settings)


def cache_dir() -> Path:
    """``$PREIMAGE_CACHE``, default ``~/.cache/preimage``."""
    return Path(os.environ.get(CACHE_ENV) or Path.home() / ".cache" / "preimage").expanduser()


def default_dictionary_path(recipe: Recipe | None = None) -> Path:
    """Where the dictionary of ``recipe`` (default :func:`default_recipe`) is cached:
    :func:`cache_dir` ``/`` :meth:`Recipe.file_name`
    (``hoggle-k{n_atoms}-a{alpha}-s{seed}-{stamp}.safetensors``). For the default recipe,
    ``$PREIMAGE_HOGGLE_DICTIONARY`` (a file) overrides it."""
    env = os.environ.get(DICTIONARY_ENV)
    if env and recipe is None:
        return Path(env).expanduser()
    return cache_dir() / (recipe or default_recipe()).file_name()


def train_recipe(recipe: Recipe, paths, out: str | Path, progress: bool = True) -> HoggleDictionary:
    """Train ``recipe`` on the image files ``paths`` (those the recipe was made from), record the
    recipe and its stamp in the metadata, save to ``out`` and print a one-line summary."""
    d = train_hoggle(paths, progress=progress, **recipe.settings())
    d.metadata.update(recipe=recipe.as_dict(), recipe_stamp=recipe.stamp())
    d.save(out)
    print(f"preimage: HOGgle dictionary trained: {recipe.n_atoms} atoms, {d.metadata['n_windows']} windows "
          f"from {d.metadata['n_train_images']} images in {d.metadata['training_seconds']:.0f} s → {out}",
          file=sys.stderr)
    return d


def train_command(out_path: str | Path | None = None, n_atoms: int = DEFAULT_N_ATOMS,
                  alpha: float = DEFAULT_ALPHA, seed: int = 0, max_images: int | None = None,
                  windows_per_image: int = DEFAULT_WINDOWS_PER_IMAGE, n_iter: int = DEFAULT_N_ITER,
                  progress: bool = True, **settings) -> Path:
    """Train on the shared training images (the first ``max_images`` of them, sorted; all 200 by
    default), save, print a one-line summary and return the file's path (default
    :func:`default_dictionary_path` of this recipe). ``settings``: further recipe fields
    (``batch_size``, ``lasso_iter``)."""
    from ...data import train_images
    recipe = default_recipe(max_images, n_atoms=n_atoms, alpha=alpha, seed=seed,
                            windows_per_image=windows_per_image, n_iter=n_iter, **settings)
    out = Path(out_path) if out_path else default_dictionary_path(recipe)
    paths = train_images()[:len(recipe.images)]
    announce(recipe, out, "training a HOGgle dictionary")
    train_recipe(recipe, paths, out, progress)
    return out


def announce(recipe: Recipe, out: Path, what: str) -> None:
    """Print the line that says training starts: what, roughly how long, and where it goes."""
    print(f"preimage: {what} (recipe {recipe.stamp()}: {recipe.n_atoms} atoms, {recipe.n_iter} batches of "
          f"{recipe.batch_size} windows from {len(recipe.images)} images; ≈ {recipe.estimated_seconds():.0f} s "
          f"on one core) → {out} …", file=sys.stderr, flush=True)


def load_or_train_default(progress: bool = True, recipe: Recipe | None = None,
                          paths=None) -> HoggleDictionary:
    """The default dictionary, trained once and cached (:func:`default_dictionary_path`).

    A cached file is used only when its metadata holds exactly this recipe (and stamp); a
    missing, unreadable or mismatching file is (re)trained, after one line on stderr that says
    so, how long it takes and where the file goes (tqdm bars follow when ``progress``). A file
    named by ``$PREIMAGE_HOGGLE_DICTIONARY`` is used as it is (a warning when its recipe differs).

    Args:
        recipe: the recipe (default :func:`default_recipe`); ``paths``: its image files (default:
            the shared training images it was made from).
    Returns:
        :class:`HoggleDictionary`.
    """
    env = os.environ.get(DICTIONARY_ENV)
    if env and recipe is None:
        return _load_named(Path(env).expanduser())
    if recipe is None:
        from ...data import train_images
        recipe = default_recipe()
        paths = train_images()
    path = cache_dir() / recipe.file_name()
    reason = _why_not_usable(path, recipe)
    if reason is None:
        return HoggleDictionary.load(path)
    stale = sorted(p.name for p in path.parent.glob("hoggle-*.safetensors") if p != path)
    if reason or stale:
        note = f"other dictionaries in {path.parent} are not reused: {', '.join(stale)}" if stale else ""
        print(f"preimage: {'; '.join(r for r in (reason, note) if r)}", file=sys.stderr)
    announce(recipe, path, "training the default HOGgle dictionary once")
    return train_recipe(recipe, paths, path, progress)


def _why_not_usable(path: Path, recipe: Recipe) -> str | None:
    """``None`` when ``path`` holds the dictionary of ``recipe``, else why not (one phrase; empty
    when there is no file)."""
    if not path.is_file():
        return ""
    try:
        mismatch = recipe.mismatch(HoggleDictionary.load(path))
    except PreimageError as exc:
        return f"{path} is unreadable ({exc}); retraining"
    return f"{path} is not reused: {mismatch}; retraining" if mismatch else None


def _load_named(path: Path) -> HoggleDictionary:
    """The dictionary named by ``$PREIMAGE_HOGGLE_DICTIONARY``, with a warning on stderr when it
    was not trained with the default recipe (checked only when the training images are there)."""
    if not path.is_file():
        raise PreimageError(f"{DICTIONARY_ENV}={path}: no such file")
    d = HoggleDictionary.load(path)
    try:
        mismatch = default_recipe().mismatch(d)
    except PreimageError:
        mismatch = None
    if mismatch:
        print(f"preimage: warning: {DICTIONARY_ENV}={path}: {mismatch} (used as given)", file=sys.stderr)
    return d
