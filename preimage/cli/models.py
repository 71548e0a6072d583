"""``preimage models``: the networks preimage can use here, and where it looked for model files.

Lists the named models (found where, or missing and where to download them), the ``.onnx`` and
``.tflite`` files in each folder of the model search path (``--model-dir``, ``PREIMAGE_MODELS``,
the shared data's ``models/``, ``~/.cache/preimage/models``) and the other ways to name a model.
"""

from __future__ import annotations

import argparse
import json


def add_models_parser(subparsers) -> argparse.ArgumentParser:
    """Add the ``models`` subcommand to an ``argparse`` subparsers object (sets ``func``)."""
    sp = subparsers.add_parser("models", help="list the models found and the folders searched for model files")
    sp.add_argument("--model-dir", action="append", metavar="DIR", help="folder searched first (repeatable)")
    sp.add_argument("--json", action="store_true", help="print the listing as JSON")
    sp.set_defaults(func=cmd_models)
    return sp


def models_listing(model_dir=None) -> dict:
    """``{"search_path": [{"folder", "from", "exists", "files"}], "named": [{"name", "files",
    "found", "missing": [{"file", "url"}]}]}`` for the model search path with ``model_dir`` first."""
    from ..models.paths import MODEL_FILES, find_model_file, list_model_files
    folders = [{"folder": str(f), "from": why, "exists": f.is_dir(), "files": [p.name for p in files]}
               for f, why, files in list_model_files(model_dir)]
    named = [{"name": "caffenet", "files": [], "found": True,
              "note": "built in; random weights unless --weights FILE (or use the ONNX zoo's "
                      "bvlc_reference_caffenet: --model PATH/caffenet.onnx)"}]
    for name, files in MODEL_FILES.items():
        found = [find_model_file(f.name, model_dir) for f in files]
        named.append({"name": name, "files": [str(p) if p else f.name for p, f in zip(found, files)],
                      "found": all(found),
                      "missing": [{"file": f.name, "url": f.url} for p, f in zip(found, files) if p is None]})
    return {"search_path": folders, "named": named}


def format_listing(listing: dict) -> str:
    """The text printed by ``preimage models``."""
    lines = ["Named models:"]
    for m in listing["named"]:
        if m["name"] == "caffenet":
            lines.append(f"  caffenet            {m['note']}")
        elif m["found"]:
            lines.append(f"  {m['name']:<19} {' + '.join(m['files'])}")
        else:
            get = "; ".join(f"{x['file']} from {x['url']}" for x in m["missing"])
            lines.append(f"  {m['name']:<19} MISSING: download {get}")
    lines.append("Model search path (first match wins):")
    for f in listing["search_path"]:
        state = "" if f["exists"] else "  (missing)"
        lines.append(f"  {f['folder']}  [{f['from']}]{state}")
        lines += [f"      {name}" for name in f["files"]]
    lines += ["Also: --model PATH.onnx | PATH.tflite | FILE NAME on the search path | package.module:factory "
              "[--weights FILE] | torchvision:NAME (with torchvision)"]
    return "\n".join(lines)


def cmd_models(args) -> int:
    """Entry point of ``preimage models``."""
    listing = models_listing(args.model_dir)
    print(json.dumps(listing, indent=2) if args.json else format_listing(listing))
    return 0
