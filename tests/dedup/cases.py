"""Constructed duplicate cases from real demo images (issue 23, item 7), shared by the tests of
the duplicates stage and its library: a split `a` (ImageFolder layout) holding distinct demo
images and, for each case, copies of some of them; a split `b` sharing images with `a` under
other labels (a leak with conflicting labels)."""

from __future__ import annotations

import io
import shutil
from collections.abc import Callable
from pathlib import Path

from PIL import Image, ImageOps

from stages.contracts import formats

Copy = Callable[[Path, Path], None]


def _save(image: Image.Image, target: Path, **kwargs: object) -> None:
    image.save(target, **kwargs)


def _byte_copy(src: Path, dst: Path) -> None:
    shutil.copyfile(src, dst.with_suffix(".JPEG"))


def _lossless(src: Path, dst: Path) -> None:
    _save(Image.open(src).convert("RGB"), dst.with_suffix(".png"), format="PNG")


def _requality(src: Path, dst: Path) -> None:
    _save(Image.open(src).convert("RGB"), dst.with_suffix(".JPEG"), format="JPEG", quality=60)


def _resized(src: Path, dst: Path) -> None:
    image = Image.open(src).convert("RGB")
    small = image.resize((image.width * 2 // 3, image.height * 2 // 3), Image.Resampling.BICUBIC)
    _save(small, dst.with_suffix(".JPEG"), format="JPEG", quality=90)


def _cropped(src: Path, dst: Path) -> None:
    image = Image.open(src).convert("RGB")
    w, h = image.size
    box = (w // 20, h // 20, w - w // 20, h - h // 20)  # 90 % of each side, centred
    _save(image.crop(box), dst.with_suffix(".JPEG"), format="JPEG", quality=90)


def _shifted(src: Path, dst: Path) -> None:
    image = Image.open(src).convert("RGB")
    w, h = image.size
    dx, dy = max(1, w // 16), max(1, h // 16)  # drop a 6 % strip left and top, pad right/bottom
    moved = ImageOps.pad(image.crop((dx, dy, w, h)), (w, h), centering=(0, 0))
    _save(moved, dst.with_suffix(".JPEG"), format="JPEG", quality=90)


def _grayscale(src: Path, dst: Path) -> None:
    _save(Image.open(src).convert("L").convert("RGB"), dst.with_suffix(".JPEG"), format="JPEG")


CASES: dict[str, tuple[Copy, str]] = {
    "byte_copy": (_byte_copy, "exact"),
    "lossless_png": (_lossless, "exact"),
    "reencoded_q60": (_requality, "near"),
    "resized_2_3": (_resized, "near"),
    "cropped_90": (_cropped, "near"),
    "shifted_6pct": (_shifted, "near"),
    "grayscale": (_grayscale, "near"),
}
"""Case -> (how the copy is made, the kind it must be found as)."""


def build_cases(images: list[Path], root: Path, per_case: int) -> dict[str, list[tuple[str, str]]]:
    """Write split `a` under root/a and split `b` under root/b (ImageFolder: <wnid>/<file>).

    Split a: every image of `images` once, labelled by its position (class k); then `per_case`
    copies per case, each of another source image, under the source's class. Split b: `per_case`
    of a's source images, byte-identical, under class 999 - k (conflicting labels).

    Returns:
        case -> [(copy image_id, source image_id)] (`b_leak`: b's image ids, a's source ids).
    """
    wnids = formats.class_wnids()
    expected: dict[str, list[tuple[str, str]]] = {}
    ids = [p.stem for p in images]
    for k, src in enumerate(images):
        folder = root / "a" / wnids[k]
        folder.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(src, folder / src.name)
    k = 0
    for case, (make, _kind) in CASES.items():
        expected[case] = []
        for _ in range(per_case):
            source = k % len(images)
            name = f"{case}_{ids[source]}"
            make(images[source], root / "a" / wnids[source] / name)
            expected[case].append((name, ids[source]))
            k += 1
    expected["b_leak"] = []
    for n in range(per_case):
        source = len(images) - 1 - n
        folder = root / "b" / wnids[999 - source]
        folder.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(images[source], folder / images[source].name)
        expected["b_leak"].append((ids[source], ids[source]))
    return expected


def image_bytes(image: Image.Image) -> bytes:
    """An image as JPEG bytes (for in-memory checks)."""
    out = io.BytesIO()
    image.save(out, format="JPEG")
    return out.getvalue()
