"""Image loading for the front doors: data URLs decoded, http(s) URLs fetched within limits."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

import httpx

from ki2api.core.errors import InvalidRequest
from ki2api.core.images import decode_data_url, load_image_url
from ki2api.core.request import ImagePart
from ki2api.settings import Settings

ImageLoader = Callable[[str, str], Awaitable[ImagePart]]


class ImageLoaderFactory:
    def __init__(self, settings: Settings, get_http: Callable[[], httpx.AsyncClient]) -> None:
        self._settings = settings
        self._get_http = get_http

    def loader(self) -> ImageLoader:
        return self.load

    async def load(self, url: str, param: str) -> ImagePart:
        try:
            if url.startswith("data:"):
                return decode_data_url(url)
            return await load_image_url(
                url,
                http=self._get_http(),
                max_bytes=self._settings.max_image_bytes,
                timeout=self._settings.image_fetch_timeout,
                allow_private=self._settings.allow_private_image_urls,
            )
        except InvalidRequest as exc:
            exc.param = exc.param or param
            raise
