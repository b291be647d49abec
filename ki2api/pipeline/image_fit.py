"""Shrinking an image to a byte size with Pillow, so a large image is sent smaller, not refused.

Kiro refuses request bodies above about 1.2 MB, images included (base64). An image over its
share of the request's image budget is decoded, turned upright (EXIF orientation), flattened
onto white if it has transparency, scaled to at most :data:`LONG_EDGE` pixels on its long edge
and written as JPEG; while that is still too large it is scaled down further. Images within
their share are sent as they came, byte for byte.

Decoding is the costly part, in memory and CPU: JPEGs are decoded at a reduced scale
(``draft``), other formats above :data:`MAX_PIXELS` are refused before decoding, and at most
:data:`DECODERS` images are decoded at a time in the whole process, on threads of their own
(:func:`fit_image_async`): never the event loop's default executor, which DNS lookups share.
"""

from __future__ import annotations

import asyncio
import io
import math
from concurrent.futures import ThreadPoolExecutor
from functools import partial

from PIL import Image, ImageOps

from ki2api.model.errors import InvalidRequest
from ki2api.model.request import ImagePart

# Anthropic scales images down to this long edge before the model sees them: more is wasted.
LONG_EDGE = 1568
MIN_EDGE = 32  # below this an image says nothing: refuse rather than send a smudge
MAX_PIXELS = 40_000_000  # decoded at full size (not JPEG): about 160 MB in RGBA, at most
DECODERS = 2  # images being decoded at once, process-wide
QUALITIES = (85, 70, 55)

_FORMATS = ("PNG", "JPEG", "GIF", "WEBP")  # what Kiro takes; no other decoder is ever tried
_decoders = ThreadPoolExecutor(max_workers=DECODERS, thread_name_prefix="ki2api-image")


def fit_image(image: ImagePart, max_bytes: int, *, param: str | None = None) -> ImagePart:
    """``image`` itself if it has at most ``max_bytes`` bytes, else a JPEG that does."""
    if len(image.data) <= max_bytes:
        return image
    return _shrink(image, max_bytes, param)


async def fit_image_async(
    image: ImagePart, max_bytes: int, *, param: str | None = None
) -> ImagePart:
    """:func:`fit_image` on the decoders' threads; a waiting job is dropped if cancelled."""
    if len(image.data) <= max_bytes:
        return image
    loop = asyncio.get_running_loop()
    return await loop.run_in_executor(_decoders, partial(_shrink, image, max_bytes, param))


def _shrink(image: ImagePart, max_bytes: int, param: str | None) -> ImagePart:
    try:
        with Image.open(io.BytesIO(image.data), formats=_FORMATS) as opened:
            if opened.format == "JPEG":
                opened.draft("RGB", (LONG_EDGE, LONG_EDGE))  # decode at 1/2, 1/4 or 1/8 scale
            width, height = opened.size
            if width * height > MAX_PIXELS:
                raise InvalidRequest(
                    f"An image of {width}x{height} pixels is too large to scale down here "
                    f"(the limit is {MAX_PIXELS:,} pixels); send a smaller one.",
                    param=param,
                )
            picture = _flattened(ImageOps.exif_transpose(opened))
    except InvalidRequest:
        raise
    except Exception:  # a decoder fed hostile bytes can fail in many ways: all are the client's
        raise InvalidRequest(
            f"An image of {len(image.data)} bytes is over its share of the request's image "
            f"budget ({max_bytes} bytes) and could not be decoded to scale it down.",
            param=param,
        ) from None
    picture.thumbnail((LONG_EDGE, LONG_EDGE), Image.Resampling.LANCZOS)
    while True:
        for quality in QUALITIES:
            data = _jpeg(picture, quality)
            if len(data) <= max_bytes:
                return ImagePart(format="jpeg", data=data)
        # JPEG size grows roughly with the pixel count: scale the area to the budget, with room.
        scale = min(0.9, math.sqrt(max_bytes / len(data)) * 0.9)
        width, height = round(picture.width * scale), round(picture.height * scale)
        if min(width, height) < MIN_EDGE:
            raise InvalidRequest(
                f"An image cannot be made to fit its share of the request's image budget "
                f"({max_bytes} bytes): send fewer or smaller images.",
                param=param,
            )
        picture = picture.resize((width, height), Image.Resampling.LANCZOS)


def image_tokens(image: ImagePart) -> int | None:
    """Anthropic's estimate for an image, from its header alone: width x height / 750, after
    the scaling its API applies (long edge 1568 px, about 1.15 megapixels); ``None`` when the
    size cannot be read (no bytes: a URL that was not fetched)."""
    if not image.data:
        return None
    try:
        with Image.open(io.BytesIO(image.data), formats=_FORMATS) as opened:
            width, height = opened.size  # the header only: nothing is decoded
    except Exception:
        return None
    scale = min(
        1.0, LONG_EDGE / max(width, height, 1), math.sqrt(1_150_000 / max(width * height, 1))
    )
    return max(1, round(width * scale) * round(height * scale) // 750)


def _flattened(picture: Image.Image) -> Image.Image:
    """RGB (or grayscale) for JPEG; transparent pixels become white, as on most pages."""
    if picture.mode in ("RGB", "L"):
        picture.load()
        return picture
    if picture.mode == "P" and "transparency" not in picture.info:
        return picture.convert("RGB")
    if picture.mode in ("RGBA", "LA", "P", "PA") or "transparency" in picture.info:
        rgba = picture.convert("RGBA")
        white = Image.new("RGB", rgba.size, (255, 255, 255))
        white.paste(rgba, mask=rgba.getchannel("A"))
        return white
    return picture.convert("RGB")  # CMYK, I;16, YCbCr ...


def _jpeg(picture: Image.Image, quality: int) -> bytes:
    out = io.BytesIO()
    picture.save(out, format="JPEG", quality=quality, optimize=True)
    return out.getvalue()
