"""An inversion's artefacts: its pictures, their names, and the files `preimage invert` writes.

One naming scheme (:func:`picture_name`) serves every consumer: the experiment units store their
pictures under these names and the report reads them back through the same function, so a
picture's name is never a string typed twice. :func:`inversion_pictures` makes the pictures of an
inversion result (originals, min–max stretched reconstructions, raw ones, the code's own picture
such as HOG glyphs, reconstructions with a receptive-field box); :func:`write_inversion` writes
what the CLI leaves in its output folder.

Everything here is duck-typed on the result (any object with ``reconstructions`` ``(N, R, K, C,
H, W)``, ``targets``, ``relative_errors`` ``(N, R, K)``, ``lambda_tv`` ``(K,)``, ``energy``,
``settings``, ``seconds``), so this module depends on nothing above :mod:`preimage.io`.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Callable, Iterable

import numpy as np
import torch

from .draw import draw_box, grid
from .images import save_image, stretch

#: Picture kinds: the original image, a stretched reconstruction, the raw (unstretched) one, the
#: stretched one with the receptive-field box drawn, and the picture of the target code.
KINDS = ("original", "recon", "raw", "boxed", "code")


def picture_name(kind: str, n: int = 0, r: int | None = None, k: int | None = None) -> str:
    """The name of one picture of an inversion: ``original_n0``, ``code_n0`` (per image) or
    ``recon_n0_r1_k2`` / ``raw_…`` / ``boxed_…`` (per image, restart, setting)."""
    if kind not in KINDS:
        raise ValueError(f"unknown picture kind {kind!r}; valid: {', '.join(KINDS)}")
    if kind in ("original", "code"):
        return f"{kind}_n{n}"
    return f"{kind}_n{n}_r{0 if r is None else r}_k{0 if k is None else k}"


def inclusive_box(box: tuple[int, int, int, int]) -> tuple[int, int, int, int]:
    """An exclusive ``(top, left, bottom, right)`` box (as receptive fields give it) → the
    inclusive one :func:`preimage.io.draw.draw_box` draws (never empty)."""
    top, left, bottom, right = (int(v) for v in box)
    return top, left, max(top, bottom - 1), max(left, right - 1)


def inversion_pictures(result, originals: torch.Tensor | None = None, *,
                       code_picture: Callable[[torch.Tensor], torch.Tensor | None] | None = None,
                       box: tuple[int, int, int, int] | None = None, images: Iterable[int] | None = None,
                       raw: bool = False) -> dict[str, torch.Tensor]:
    """The pictures of an inversion, named by :func:`picture_name`.

    Args:
        result: an inversion result (``reconstructions`` ``(N, R, K, C, H, W)`` on 0–255).
        originals: ``(N, C, H, W)`` on 0–255, or None (inverting a saved code).
        code_picture: the representation's ``render_code`` (target code ``(D, h, w)`` → picture
            ``(C, H', W')`` on 0–255, or None when the code has no picture).
        box: exclusive ``(top, left, bottom, right)`` receptive-field box, drawn on ``boxed_*``.
        images: which of the N images (default all).
        raw: also the unstretched reconstructions (``raw_*``).
    Returns:
        name → ``(C, H, W)`` tensor on 0–255, in a stable order.
    """
    recon = result.reconstructions
    n_all, r_all, k_all = recon.shape[:3]
    out: dict[str, torch.Tensor] = {}
    for n in (range(n_all) if images is None else images):
        if originals is not None:
            out[picture_name("original", n)] = originals[n]
        if code_picture is not None:
            pic = code_picture(result.targets[n].detach().cpu())
            if pic is not None:
                out[picture_name("code", n)] = pic
        for r in range(r_all):
            for k in range(k_all):
                shown = stretch(recon[n, r, k])
                out[picture_name("recon", n, r, k)] = shown
                if raw:
                    out[picture_name("raw", n, r, k)] = recon[n, r, k]
                if box is not None:
                    pic = np.asarray(draw_box(shown, inclusive_box(box)), dtype=np.float32)
                    out[picture_name("boxed", n, r, k)] = torch.from_numpy(pic).permute(2, 0, 1).contiguous()
    return out


def _file_name(kind: str, r: int, k: int, result) -> str:
    """The CLI's file name of a reconstruction: ``reconstruction[_r1][_tv5][_raw].png``."""
    r_all, k_all = result.reconstructions.shape[1:3]
    suffix = ("" if r_all == 1 else f"_r{r}") + ("" if k_all == 1 else f"_tv{float(result.lambda_tv[k]):g}")
    return f"reconstruction{suffix}{'_raw' if kind == 'raw' else ''}.png"


def summary_picture(result, pictures: dict[str, torch.Tensor], code_caption: str = "code", n: int = 0,
                    columns: int = 6):
    """One panel: the original, the code's picture, then every reconstruction of image ``n``
    (boxed where a box was drawn) captioned with λ_V, restart and relative code error. A PIL image."""
    tiles, captions = [], []
    if picture_name("original", n) in pictures:
        tiles.append(pictures[picture_name("original", n)])
        captions.append("original")
    if picture_name("code", n) in pictures:
        tiles.append(pictures[picture_name("code", n)])
        captions.append(code_caption)
    r_all, k_all = result.reconstructions.shape[1:3]
    for r in range(r_all):
        for k in range(k_all):
            boxed = picture_name("boxed", n, r, k)
            tiles.append(pictures.get(boxed, pictures[picture_name("recon", n, r, k)]))
            err = float(result.relative_errors[n, r, k])
            captions.append(f"λV={float(result.lambda_tv[k]):g} r{r}: {100 * err:.1f}%")
    return grid(tiles, captions, columns=min(len(tiles), columns))


def write_inversion(out: str | Path, result, pictures: dict[str, torch.Tensor], info: dict,
                    code_caption: str = "code") -> dict[str, Path]:
    """Write what ``preimage invert`` leaves in ``out`` for image 0 of ``result``.

    Files: ``original.png`` (when the original is known), ``reconstruction[_rR][_tvλ].png``
    (stretched, as the paper shows them) and ``…_raw.png``, ``summary.png``
    (:func:`summary_picture`), ``reconstructions.safetensors`` (``reconstructions`` ``(N, R, K, C,
    H, W)`` and ``target``) and ``result.json`` (``info`` + settings, errors, energies, seconds).
    Returns name → path of every file written.
    """
    from safetensors.torch import save_file

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    written: dict[str, Path] = {}
    if picture_name("original") in pictures:
        written["original"] = out / "original.png"
        save_image(pictures[picture_name("original")], written["original"])
    r_all, k_all = result.reconstructions.shape[1:3]
    for r in range(r_all):
        for k in range(k_all):
            for kind, tensor in (("recon", pictures[picture_name("recon", 0, r, k)]),
                                 ("raw", result.reconstructions[0, r, k])):
                path = out / _file_name(kind, r, k, result)
                save_image(tensor, path)
                written[path.stem] = path
    written["summary"] = out / "summary.png"
    summary_picture(result, pictures, code_caption).save(written["summary"])
    written["tensors"] = out / "reconstructions.safetensors"
    save_file({"reconstructions": result.reconstructions.contiguous(), "target": result.targets.contiguous()},
              str(written["tensors"]))
    record = {**info, "settings": result.settings, "relative_errors": result.relative_errors[0].tolist(),
              "energy": {k: v[0].tolist() for k, v in result.energy.items()}, "seconds": result.seconds}
    written["result"] = out / "result.json"
    written["result"].write_text(json.dumps(record, indent=2))
    return written
