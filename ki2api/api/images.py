"""Image loading for the front doors: one request's images, within one budget.

A front door's converter does not load an image where it meets it: it gets a placeholder
(:meth:`RequestImages.load`, :meth:`RequestImages.load_base64`) and the request's images are
loaded together afterwards (:meth:`RequestImages.fill`), once their number is known:

- at most :data:`MAX_IMAGES` per request (Anthropic's own limit), refused before any fetch;
- the request's image budget (``IMAGE_BUDGET_BYTES``, sized to Kiro's body limit) is split:
  inline images (``data:``, base64) whose size is known and small enough keep it, the rest share
  what is left evenly (:func:`shares`); an image over its share is scaled down and re-encoded
  (:func:`ki2api.pipeline.image_fit.fit_image`) or refused;
- :data:`FETCH_CONCURRENCY` images are fetched or decoded at a time; a response is read only up
  to ``MAX_IMAGE_BYTES`` (the largest image accepted for scaling down), and only the fitted
  image is kept. So a request holds at most its budget plus ``FETCH_CONCURRENCY`` images of
  ``MAX_IMAGE_BYTES`` (and the decoders' pixels, bounded process-wide), however many URLs it
  names. ``data:`` URLs and base64 sources take the same path: decoded only in their turn.

``count_tokens`` uses :meth:`ImageLoaderFactory.counting`: inline images are checked and kept
(their size feeds the estimate), URLs stay placeholders and are never fetched.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import httpx

from ki2api.model.errors import InvalidRequest
from ki2api.model.request import ChatRequest, ImagePart
from ki2api.pipeline.image_fit import fit_image_async
from ki2api.pipeline.images import decode_base64_image, decode_data_url, load_image_url
from ki2api.settings import Settings

ImageLoader = Callable[[str, str], Awaitable[ImagePart]]

MAX_IMAGES = 100
FETCH_CONCURRENCY = 4


@dataclass(slots=True)
class _Pending:
    placeholder: ImagePart
    param: str
    url: str | None = None  # an http(s) or data: URL
    media_type: str = ""  # or a base64 source
    data: str = ""


class RequestImages:
    """One request's images: placeholders while the body is converted, then :meth:`fill`."""

    def __init__(self, settings: Settings, http: httpx.AsyncClient, *, fetch: bool) -> None:
        self._settings = settings
        self._http = http
        self._fetch = fetch
        self._pending: list[_Pending] = []

    async def load(self, url: str, param: str) -> ImagePart:
        """An image URL (http(s) or data:), as a placeholder; the ``ImageLoader`` signature."""
        return self._add(_Pending(self._placeholder(param), param, url=url))

    async def load_base64(self, media_type: str, data: str, param: str) -> ImagePart:
        """An Anthropic base64 source, as a placeholder."""
        return self._add(
            _Pending(self._placeholder(param), param, media_type=media_type, data=data)
        )

    def _placeholder(self, param: str) -> ImagePart:
        if len(self._pending) >= MAX_IMAGES:
            raise InvalidRequest(f"A request may carry at most {MAX_IMAGES} images.", param=param)
        return ImagePart(format="png", data=b"")  # told apart by identity, replaced by fill

    def _add(self, pending: _Pending) -> ImagePart:
        self._pending.append(pending)
        return pending.placeholder

    async def fill(self, request: ChatRequest) -> None:
        """Load every image (or, when counting, only check the inline ones) and put them in
        place of their placeholders."""
        if not self._pending:
            return
        pending, self._pending = self._pending, []
        loaded: dict[int, ImagePart] = {}
        if not self._fetch:
            for item in pending:  # inline ones are checked (and sized); URLs stay placeholders
                if item.url is None or item.url[:5].lower() == "data:":
                    loaded[id(item.placeholder)] = self._decode(item)
            _replace(request, loaded)
            return
        budget = shares([_known_size(item) for item in pending], self._settings.image_budget_bytes)
        jobs = iter(zip(pending, budget, strict=True))

        async def worker() -> None:
            for item, share in jobs:  # shared: each worker takes the next image
                loaded[id(item.placeholder)] = await self._one(item, share)

        try:
            async with asyncio.TaskGroup() as group:
                for _ in range(min(FETCH_CONCURRENCY, len(pending))):
                    group.create_task(worker())
        except* InvalidRequest as errors:
            raise errors.exceptions[0] from None
        _replace(request, loaded)

    async def _one(self, item: _Pending, share: int) -> ImagePart:
        if item.url is None or item.url[:5].lower() == "data:":
            image = self._decode(item)
        else:
            try:
                image = await load_image_url(
                    item.url,
                    http=self._http,
                    max_bytes=self._settings.max_image_bytes,
                    timeout=self._settings.image_fetch_timeout,
                    allow_private=self._settings.allow_private_image_urls,
                    param=item.param,
                )
            except InvalidRequest as exc:
                exc.param = exc.param or item.param
                raise
        return await fit_image_async(image, share, param=item.param)

    def _decode(self, item: _Pending) -> ImagePart:
        limit = self._settings.max_image_bytes
        if item.url is not None:
            return decode_data_url(item.url, max_bytes=limit, param=item.param)
        return decode_base64_image(item.media_type, item.data, max_bytes=limit, param=item.param)


def _replace(request: ChatRequest, loaded: dict[int, ImagePart]) -> None:
    for message in request.messages:
        if any(isinstance(p, ImagePart) for p in message.parts):
            message.parts = [
                loaded.get(id(p), p) if isinstance(p, ImagePart) else p for p in message.parts
            ]


def shares(sizes: list[int | None], budget: int) -> list[int]:
    """Each image's share of ``budget``: a known size that fits within an even split of what is
    left is granted as it is (repeatedly, smallest first); the others, and unknown sizes (URLs),
    split the rest evenly. The shares never add up to more than ``budget``."""
    result = [0] * len(sizes)
    known = sorted((size, i) for i, size in enumerate(sizes) if size is not None)
    left = len(sizes)
    granted: set[int] = set()
    for size, i in known:
        if size > budget // left:
            break
        result[i] = size
        budget -= size
        left -= 1
        granted.add(i)
    for i in range(len(sizes)):
        if i not in granted:
            result[i] = budget // left
    return result


def _known_size(item: _Pending) -> int | None:
    """No less than an inline image's decoded size (base64 is 4 characters for 3 bytes; a
    percent-encoded byte takes 1 to 3); ``None`` for an image still to be fetched."""
    if item.url is None:
        return len(item.data) * 3 // 4 + 3
    head, _, payload = item.url.partition(",")
    if item.url[:5].lower() != "data:":
        return None
    return len(payload) * 3 // 4 + 3 if ";base64" in head.lower() else len(payload)


class ImageLoaderFactory:
    def __init__(self, settings: Settings, http: httpx.AsyncClient) -> None:
        self._settings = settings
        self._http = http

    def loader(self) -> RequestImages:
        """A request's images, loaded by :meth:`RequestImages.fill`."""
        return RequestImages(self._settings, self._http, fetch=True)

    def counting(self) -> RequestImages:
        """For ``count_tokens``: inline images are checked, URLs are never fetched."""
        return RequestImages(self._settings, self._http, fetch=False)
