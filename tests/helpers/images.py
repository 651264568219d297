"""Encoded images for the tests of image decoding and transforms."""

from __future__ import annotations


def jpeg(width: int, height: int, seed: int = 0) -> bytes:
    """A JPEG of ``width`` x ``height`` RGB noise drawn from ``seed`` (PIL encodes it)."""
    import io

    import numpy as np
    from PIL import Image

    arr = np.random.default_rng(seed).integers(0, 256, size=(height, width, 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="JPEG")
    return buf.getvalue()
