"""Draft vs exact JPEG decoding on real radiographs: what the fast decode costs in pixels
and probabilities, and what it saves in time.

The radiographs are real: pydicom-data's CR chest (RG1, 1955x1841, 15 bits) and CR
extremity (RG3, 1760x1760), converted by medray's DICOM reader and written as JPEGs of
1024-2048 px (crops, scales and qualities, like a user's folder of radiographs).  Each is
decoded with ``preprocess.exact=true`` (full-size decode) and ``false`` (PIL draft: libjpeg
at 1/2, 1/4 or 1/8 scale), and both tensors are run through the models below.

    python benchmarks/fidelity.py --json fidelity.json --markdown fidelity.md

Models: the binary demo model (``model=demo``, trained by medray, preset medray 96 px) and
DenseNet121 at 224 px with the imagenet preset (random weights: its probabilities barely
move, so its row says little about Δprob; the input difference is what it shows).
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np

from medray.backends import library_modules
from medray.machine import machine


def radiographs(folder: Path, n: int, seed: int = 0) -> list[Path]:
    """``n`` JPEGs cut from the two real CR radiographs (crops of 60–100 %, long side 1024–2048)."""
    from data_store import __file__ as store
    from PIL import Image

    from medray.data.dicom import decode_dicom_gray

    src = [decode_dicom_gray(str(Path(store).parent / "data" / f)) for f in ("RG1_UNCR.dcm", "RG3_UNCR.dcm")]
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        a = src[i % 2]
        h, w = a.shape
        f = rng.uniform(0.6, 1.0)
        ch, cw = int(h * f), int(w * rng.uniform(0.6, 1.0))
        y, x = int(rng.integers(0, h - ch + 1)), int(rng.integers(0, w - cw + 1))
        im = Image.fromarray(a[y:y + ch, x:x + cw])
        long = int(rng.integers(1024, 2049))
        s = long / max(im.size)
        im = im.resize((max(1, round(im.size[0] * s)), max(1, round(im.size[1] * s))), Image.LANCZOS)
        p = folder / f"cr_{i:03d}.jpg"
        im.save(p, quality=int(rng.choice([85, 90, 95])))
        out.append(p)
    return out


def decode_all(paths, prep) -> tuple[np.ndarray, float]:
    from medray.data.preprocess import decode_image

    t0 = time.perf_counter()
    images = np.stack([decode_image(str(p), prep) for p in paths])
    return images, (time.perf_counter() - t0) * 1e3 / len(paths)


def measure(name: str, model, prep: dict, in_chans: int, paths) -> dict:
    import torch

    from medray.data.preprocess import to_model_input
    from medray.metrics.scores import probabilities

    out = {"model": name, "preset": prep["name"], "size": prep["size"]}
    probs, inputs = {}, {}
    for exact in (True, False):
        p = {**prep, "exact": exact}
        decode_all(paths[:3], p)  # warm the decoder
        images, ms = decode_all(paths, p)
        x = to_model_input(images, in_chans, p)
        with torch.inference_mode():
            z = torch.cat([model(torch.from_numpy(x[i:i + 16])) for i in range(0, len(x), 16)]).double().numpy()
        probs[exact], inputs[exact] = probabilities(z, "multiclass"), x
        out[f"decode_ms_{'exact' if exact else 'draft'}"] = ms
    dp = np.abs(probs[True] - probs[False])
    dx = np.abs(inputs[True] - inputs[False])
    out.update(n=len(paths), max_abs_prob_diff=float(dp.max()), mean_abs_prob_diff=float(dp.mean()),
               max_abs_input_diff=float(dx.max()), mean_abs_input_diff=float(dx.mean()),
               decision_flips=int((probs[True].argmax(1) != probs[False].argmax(1)).sum()),
               speedup=out["decode_ms_exact"] / out["decode_ms_draft"])
    return out


def demo_model():
    """The binary demo (trained and cached by medray on first use) and its preprocessing."""
    from hydra import compose, initialize_config_dir

    from medray.cli import register_configs
    from medray.config import conf_dir, to_config
    from medray.data.load import load_table
    from medray.models.loaders import load_torch_model
    from medray.models.resolve import resolve_model

    register_configs()
    with initialize_config_dir(config_dir=str(conf_dir()), version_base="1.3"):
        cfg = to_config(compose(config_name="evaluate", overrides=["backend=torch"]))
    spec = resolve_model(cfg, load_table(cfg.data, cfg.data_root))
    return load_torch_model(spec), spec.preprocess, spec.in_chans


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--num-images", type=int, default=40)
    ap.add_argument("--json", type=Path)
    ap.add_argument("--markdown", type=Path)
    args = ap.parse_args(argv)
    import timm
    import torch

    from medray.data.preprocess import PreprocessConfig, resolve

    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory(prefix="medray-fidelity-") as tmp:
        paths = radiographs(Path(tmp), args.num_images)
        rows = []
        model, prep, chans = demo_model()
        rows.append(measure("demo (binary, trained)", model, prep, chans, paths))
        torch.manual_seed(0)
        dn = timm.create_model("densenet121", pretrained=False, num_classes=2).eval()
        rows.append(measure("densenet121 (random weights)", dn, resolve(PreprocessConfig(name="imagenet"), 3, 224), 3, paths))
    doc = {"machine": machine(modules=library_modules()), "images": args.num_images, "source": "pydicom-data RG1_UNCR (CR chest), RG3_UNCR (CR extremity)",
           "rows": rows}
    lines = ["| model | preset | size | decode exact / draft (ms/img) | × faster | max / mean |Δprob| | decision flips "
             "| max / mean |Δinput| |", "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['model']} | {r['preset']} | {r['size'][0]} | {r['decode_ms_exact']:.1f} / {r['decode_ms_draft']:.1f} "
                     f"| {r['speedup']:.1f}× | {r['max_abs_prob_diff']:.2e} / {r['mean_abs_prob_diff']:.2e} | "
                     f"{r['decision_flips']} of {r['n']} | {r['max_abs_input_diff']:.3f} / {r['mean_abs_input_diff']:.4f} |")
    md = "\n".join(lines) + "\n"
    print(json.dumps(doc["machine"]))
    print(md)
    if args.json:
        args.json.write_text(json.dumps(doc, indent=1))
    if args.markdown:
        args.markdown.write_text(md)
    return doc


if __name__ == "__main__":
    main()
