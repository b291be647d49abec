"""Issue 17 item 5: a request's images share one budget that fits Kiro's body limit; they are
fetched a few at a time and streamed into it, large ones are scaled down instead of refused,
and count_tokens never fetches. Real SDKs, the simulator and a loopback image server."""

from __future__ import annotations

import base64
import io
import os
import threading
import tracemalloc
from collections.abc import AsyncIterator, Iterator
from typing import Any

import anthropic
import openai
import pytest
from PIL import Image
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse
from starlette.routing import Route

from ki2api.api.images import FETCH_CONCURRENCY, MAX_IMAGES, shares
from ki2api.model.errors import InvalidRequest
from ki2api.model.request import ImagePart
from ki2api.pipeline import image_fit
from ki2api.pipeline.image_fit import fit_image
from ki2api.simulator.scripts import text_answer
from tests.servers import ServerThread
from tests.stack import Stack, StackFactory

pytestmark = pytest.mark.timeout(300)

MODEL = "claude-sonnet-4-5"
BUDGET = 600_000  # the default IMAGE_BUDGET_BYTES
MAX_IMAGE = 5 * 1024 * 1024  # the default MAX_IMAGE_BYTES


def noise_png(width: int, height: int) -> bytes:
    """Random pixels do not compress: 3 bytes a pixel, the worst case for every encoder."""
    out = io.BytesIO()
    Image.frombytes("RGB", (width, height), os.urandom(width * height * 3)).save(out, "PNG")
    return out.getvalue()


def noise_jpeg(width: int, height: int) -> bytes:
    out = io.BytesIO()
    picture = Image.frombytes("RGB", (width, height), os.urandom(width * height * 3))
    picture.save(out, "JPEG", quality=95)
    return out.getvalue()


BIG_PNG = noise_png(1000, 1000)  # about 3 MB
BIG_JPEG = noise_jpeg(1400, 1400)  # about 2.3 MB; served under many URLs
TINY_PNG = base64.b64decode(
    "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNk+M9QDwADhgGAWjR9awAAAABJRU5ErkJggg=="
)


class ImageServer:
    """Serves the images above and counts requests; bodies go out in 64 KB pieces, so the
    server itself never holds a second copy (the memory test measures this process)."""

    def __init__(self) -> None:
        self.hits = 0
        self._lock = threading.Lock()
        self.server = ServerThread(
            Starlette(
                routes=[
                    Route("/big.png", self._serve(BIG_PNG)),
                    Route("/big.jpg", self._serve(BIG_JPEG)),
                    Route("/tiny.png", self._serve(TINY_PNG)),
                ]
            )
        )

    def _serve(self, data: bytes) -> Any:
        async def endpoint(request: Request) -> Response:
            with self._lock:
                self.hits += 1

            async def pieces() -> AsyncIterator[bytes]:
                view = memoryview(data)
                for start in range(0, len(data), 65536):
                    yield bytes(view[start : start + 65536])

            return StreamingResponse(
                pieces(), media_type="image/png", headers={"content-length": str(len(data))}
            )

        return endpoint

    @property
    def url(self) -> str:
        return self.server.url


@pytest.fixture(scope="module")
def images() -> Iterator[ImageServer]:
    server = ImageServer()
    with server.server:
        yield server


@pytest.fixture
def stack(stack_factory: StackFactory) -> Stack:
    return stack_factory({"ALLOW_PRIVATE_IMAGE_URLS": "1"})


_clients: list[openai.OpenAI | anthropic.Anthropic] = []  # closed after each test


@pytest.fixture(autouse=True)
def _close_clients() -> Iterator[None]:
    yield
    while _clients:
        _clients.pop().close()


def oai(stack: Stack) -> openai.OpenAI:
    made = openai.OpenAI(base_url=stack.base_url, api_key=stack.api_key, max_retries=0)
    _clients.append(made)
    return made


def claude(stack: Stack) -> anthropic.Anthropic:
    made = anthropic.Anthropic(base_url=stack.url, api_key=stack.api_key, max_retries=0)
    _clients.append(made)
    return made


def sent_images(stack: Stack) -> list[bytes]:
    record = stack.state.requests[-1]
    assert record.refusal is None, record.refusal
    current = record.body["conversationState"]["currentMessage"]["userInputMessage"]
    return [base64.b64decode(i["source"]["bytes"]) for i in current.get("images", [])]


def user(content: Any) -> list[Any]:
    """One user message (typed loosely: the SDKs' message unions are for callers, not tests)."""
    return [{"role": "user", "content": content}]


def url_parts(urls: list[str]) -> list[dict[str, Any]]:
    return [{"type": "image_url", "image_url": {"url": u}} for u in urls]


# --- through the front doors ------------------------------------------------------------------


def test_a_3_mb_png_url_is_scaled_down_and_the_request_succeeds(
    stack: Stack, images: ImageServer
) -> None:
    assert len(BIG_PNG) > 2_900_000
    stack.state.enqueue(text_answer("A noisy square."))
    answer = oai(stack).chat.completions.create(
        model=MODEL,
        messages=user(url_parts([f"{images.url}/big.png"])),
    )
    assert answer.choices[0].message.content == "A noisy square."
    [sent] = sent_images(stack)
    assert len(sent) <= BUDGET
    assert Image.open(io.BytesIO(sent)).format == "JPEG"
    assert stack.state.requests[-1].body["conversationState"]["currentMessage"]


def test_the_budget_is_a_setting(stack_factory: StackFactory, images: ImageServer) -> None:
    small = stack_factory({"ALLOW_PRIVATE_IMAGE_URLS": "1", "IMAGE_BUDGET_BYTES": "50000"})
    assert small.settings.image_budget_bytes == 50_000
    small.state.enqueue(text_answer("ok"))
    oai(small).chat.completions.create(
        model=MODEL, messages=user(url_parts([f"{images.url}/big.png"]))
    )
    [sent] = sent_images(small)
    assert len(sent) <= 50_000


def test_a_3_mb_base64_png_is_scaled_down_and_the_request_succeeds(stack: Stack) -> None:
    stack.state.enqueue(text_answer("Seen."))
    data = base64.b64encode(BIG_PNG).decode()
    source = {"type": "base64", "media_type": "image/png", "data": data}
    message = claude(stack).messages.create(
        model=MODEL,
        max_tokens=64,
        messages=user(
            [{"type": "text", "text": "What is this?"}, {"type": "image", "source": source}]
        ),
    )
    assert message.content[0].text == "Seen."  # type: ignore[union-attr]
    [sent] = sent_images(stack)
    assert len(sent) <= BUDGET


def test_a_3_mb_png_data_url_is_scaled_down_on_the_responses_api(stack: Stack) -> None:
    stack.state.enqueue(text_answer("Seen too."))
    url = "data:image/png;base64," + base64.b64encode(BIG_PNG).decode()
    response = oai(stack).responses.create(
        model=MODEL,
        input=user([{"type": "input_image", "image_url": url}]),
    )
    assert response.output_text == "Seen too."
    [sent] = sent_images(stack)
    assert len(sent) <= BUDGET


def test_images_share_the_budget_and_small_ones_pass_unchanged(
    stack: Stack, images: ImageServer
) -> None:
    stack.state.enqueue(text_answer("ok"))
    urls = [f"{images.url}/big.png", f"{images.url}/tiny.png", f"{images.url}/big.jpg"]
    oai(stack).chat.completions.create(model=MODEL, messages=user(url_parts(urls)))
    sent = sent_images(stack)
    assert len(sent) == 3
    assert sent[1] == TINY_PNG  # within its share: byte for byte
    assert all(len(s) <= BUDGET // 3 for s in sent)
    assert sum(len(s) for s in sent) <= BUDGET


def test_small_inline_images_leave_the_rest_of_the_budget_to_a_large_one(stack: Stack) -> None:
    stack.state.enqueue(text_answer("ok"))
    tiny = {
        "type": "base64",
        "media_type": "image/png",
        "data": base64.b64encode(TINY_PNG).decode(),
    }
    big = {"type": "base64", "media_type": "image/png", "data": base64.b64encode(BIG_PNG).decode()}
    blocks = [{"type": "image", "source": tiny} for _ in range(5)]
    blocks.insert(2, {"type": "image", "source": big})
    claude(stack).messages.create(model=MODEL, max_tokens=64, messages=user(blocks))
    sent = sent_images(stack)
    assert len(sent) == 6 and sent[0] == sent[5] == TINY_PNG
    assert BUDGET // 6 < len(sent[2]) <= BUDGET - 5 * len(TINY_PNG)


@pytest.mark.parametrize(
    ("sizes", "budget", "expected"),
    [
        ([None, None, None], 900, [300, 300, 300]),
        ([10, None, 20], 900, [10, 870, 20]),
        ([10, 2000, 20], 900, [10, 870, 20]),
        ([500, 500, 10], 900, [445, 445, 10]),
        ([100, 200], 900, [100, 200]),
        ([], 900, []),
    ],
)
def test_shares_of_the_budget(sizes: list[int | None], budget: int, expected: list[int]) -> None:
    assert shares(sizes, budget) == expected
    assert sum(shares(sizes, budget)) <= budget


def test_many_large_image_urls_keep_memory_bounded(stack: Stack, images: ImageServer) -> None:
    """40 URLs to a 2.3 MB JPEG (92 MB in all; a request used to hold every one, then their
    base64). The bound: the budget, FETCH_CONCURRENCY images of MAX_IMAGE_BYTES being read,
    and 16 MB for the Kiro body and its copies (in this process: gateway and simulator).
    tracemalloc sees Python's allocations; Pillow's pixels are bounded apart (image_fit)."""
    count = 40
    urls = [f"{images.url}/big.jpg?n={i}" for i in range(count)]
    stack.state.enqueue(text_answer("Forty squares."))
    client = oai(stack)
    hits = images.hits
    answer: Any = None
    tracemalloc.start()
    try:
        tracemalloc.reset_peak()
        before = tracemalloc.get_traced_memory()[0]
        try:
            answer = client.chat.completions.create(model=MODEL, messages=user(url_parts(urls)))
        except openai.APIStatusError as exc:
            answer = exc  # the bound is checked first, whatever the outcome
        peak = tracemalloc.get_traced_memory()[1] - before
    finally:
        tracemalloc.stop()
    bound = BUDGET + FETCH_CONCURRENCY * MAX_IMAGE + 16 * 1024 * 1024
    print(f"peak {peak / 1e6:.1f} MB, bound {bound / 1e6:.1f} MB")
    assert peak < bound, f"peak {peak / 1e6:.1f} MB over the bound {bound / 1e6:.1f} MB"
    assert isinstance(answer, openai.types.chat.ChatCompletion), answer
    assert answer.choices[0].message.content == "Forty squares."
    assert images.hits - hits == count
    sent = sent_images(stack)
    assert len(sent) == count and sum(len(s) for s in sent) <= BUDGET


def test_count_tokens_never_fetches_images(stack: Stack, images: ImageServer) -> None:
    hits = images.hits
    image = {"type": "image", "source": {"type": "url", "url": f"{images.url}/big.png"}}
    counted = claude(stack).messages.count_tokens(
        model=MODEL,
        messages=user([{"type": "text", "text": "hi"}, image, image]),
    )
    assert counted.input_tokens >= 2 * 1_600  # a flat estimate per image
    assert images.hits == hits
    assert not stack.state.requests  # nor anything upstream


def test_count_tokens_sizes_inline_images_from_their_header(stack: Stack) -> None:
    def count(raw: bytes) -> int:
        data = base64.b64encode(raw).decode()
        image = {
            "type": "image",
            "source": {"type": "base64", "media_type": "image/png", "data": data},
        }
        return claude(stack).messages.count_tokens(model=MODEL, messages=user([image])).input_tokens

    out = io.BytesIO()
    Image.new("RGB", (3000, 3000)).save(out, "PNG")  # scaled by the API to about 1.15 MP
    tiny, big, huge = count(TINY_PNG), count(BIG_PNG), count(out.getvalue())
    assert tiny < 10  # a 1x1 image
    assert 1_300 <= big <= 1_400  # 1000 x 1000 / 750
    assert 1_450 <= huge <= 1_600


def test_count_tokens_still_checks_inline_images(stack: Stack) -> None:
    bad = {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": "@@"}}
    with pytest.raises(anthropic.BadRequestError) as info:
        claude(stack).messages.count_tokens(model=MODEL, messages=user([bad]))
    assert "base64" in info.value.message


def test_too_many_images_are_refused_before_any_fetch(stack: Stack, images: ImageServer) -> None:
    hits = images.hits
    urls = [f"{images.url}/tiny.png?n={i}" for i in range(MAX_IMAGES + 1)]
    with pytest.raises(openai.BadRequestError) as info:
        oai(stack).chat.completions.create(model=MODEL, messages=user(url_parts(urls)))
    assert f"at most {MAX_IMAGES} images" in info.value.message
    assert images.hits == hits


def test_an_image_that_cannot_be_decoded_is_still_a_400(stack: Stack) -> None:
    fake = b"\x89PNG\r\n\x1a\n" + os.urandom(BUDGET + 10)  # a PNG signature, then garbage
    url = "data:image/png;base64," + base64.b64encode(fake).decode()
    with pytest.raises(openai.BadRequestError) as info:
        oai(stack).chat.completions.create(model=MODEL, messages=user(url_parts([url])))
    assert "could not be decoded" in info.value.message
    assert info.value.body["param"] == "messages[0].content[0].image_url"  # type: ignore[index]


# --- fit_image ----------------------------------------------------------------------------------


def test_fit_keeps_images_within_the_limit_byte_for_byte() -> None:
    image = ImagePart("png", TINY_PNG)
    assert fit_image(image, 1000) is image


def test_fit_flattens_transparency_onto_white() -> None:
    out = io.BytesIO()
    Image.new("RGBA", (400, 300), (0, 0, 0, 0)).save(out, "PNG")
    fitted = fit_image(ImagePart("png", out.getvalue()), 500)
    assert fitted.format == "jpeg" and len(fitted.data) <= 500
    picture = Image.open(io.BytesIO(fitted.data))
    assert picture.getpixel((5, 5)) in ((255, 255, 255), 255)


def test_fit_turns_images_upright() -> None:
    picture = Image.frombytes("RGB", (600, 200), os.urandom(600 * 200 * 3))
    exif = picture.getexif()
    exif[0x0112] = 6  # orientation: rotate 90°
    out = io.BytesIO()
    picture.save(out, "JPEG", exif=exif, quality=95)
    fitted = fit_image(ImagePart("jpeg", out.getvalue()), 20_000)
    width, height = Image.open(io.BytesIO(fitted.data)).size
    assert height > width


def test_fit_refuses_a_decompression_bomb_before_decoding() -> None:
    out = io.BytesIO()
    Image.new("L", (8000, 6000)).save(out, "PNG")  # a few KB on the wire, 48 MP decoded
    assert len(out.getvalue()) < 100_000
    with pytest.raises(InvalidRequest, match="too large to scale down"):
        fit_image(ImagePart("png", out.getvalue()), 1000, param="p")


def test_fit_gives_up_below_a_readable_size(monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(InvalidRequest, match="send fewer or smaller images"):
        fit_image(ImagePart("png", BIG_PNG), 200)
    monkeypatch.setattr(image_fit, "MIN_EDGE", 4)
    assert len(fit_image(ImagePart("png", BIG_PNG), 600).data) <= 600
