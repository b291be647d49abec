"""Named faults: the failures the real service (or the network) produces, ready to inject.

A :class:`Fault` turns the answer the simulator would have given into a failing one, so a
mid-stream fault keeps a real prefix of that answer (the soak test compares what was sent).
``FAULTS`` maps each name to a factory with sensible defaults; ``get_fault(name)`` builds one.

HTTP error bodies follow the service: ``{"message": ..., "reason": ...}`` plus the AWS error
type in ``x-amzn-errortype``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from ki2api.simulator.scripts import (
    FRAME_STEPS,
    ConnectionDrop,
    CorruptCrc,
    CutMidFrame,
    Delay,
    Event,
    ExceptionFrame,
    Garbage,
    HttpError,
    Script,
    SlowFirstByte,
    Stall,
    Step,
)

EXPIRED_TOKEN_MESSAGE = "The bearer token included in the request is invalid."
IMPROPERLY_FORMED_MESSAGE = "Improperly formed request."

_ERROR_TYPES = {
    400: "ValidationException",
    402: "ServiceQuotaExceededException",
    403: "AccessDeniedException",
    429: "ThrottlingException",
    500: "InternalServerException",
    503: "ServiceUnavailableException",
}


def http_error(
    status: int, message: str, reason: str | None = None, headers: Mapping[str, str] | None = None
) -> HttpError:
    """An error answer shaped like the service's."""
    error_type = _ERROR_TYPES.get(status, "InternalServerException")
    all_headers = {"x-amzn-errortype": f"{error_type}:http://internal.amazon.com/coral/"}
    all_headers.update(headers or {})
    body: dict[str, Any] = {"message": message, "reason": reason}
    return HttpError(status, body, all_headers)


@dataclass(frozen=True, slots=True)
class Fault:
    """A named transformation of the answer that would have been sent."""

    name: str
    transform: Callable[[Script], Script]

    def apply(self, answer: Script) -> Script:
        return self.transform(answer).named(self.name)


def _replace(step: Step) -> Callable[[Script], Script]:
    return lambda _answer: Script((step,))


def _is_content(step: Step) -> bool:
    """A frame the client sees something of (``initial-response`` carries nothing to show)."""
    if isinstance(step, Event):
        return step.event_type != "initial-response"
    return isinstance(step, FRAME_STEPS)


def _split_after(answer: Script, frames: int) -> tuple[tuple[Step, ...], tuple[Step, ...]]:
    """Cut the answer's steps after its ``frames``-th content frame, always leaving one content
    frame after the cut when there are two or more, so the fault lands mid-answer."""
    positions = [i for i, s in enumerate(answer.steps) if _is_content(s)]
    if not positions:
        return answer.steps, ()
    cut = positions[max(0, min(frames, len(positions) - 1))]
    return answer.steps[:cut], answer.steps[cut:]


# --- HTTP-level faults (answered instead of a stream) ------------------------------------------


def expired_token() -> Fault:
    return Fault("expired_token", _replace(http_error(403, EXPIRED_TOKEN_MESSAGE)))


def quota_exceeded() -> Fault:
    error = http_error(
        402, "You have reached the limit for monthly requests.", "MONTHLY_REQUEST_COUNT"
    )
    return Fault("quota_exceeded", _replace(error))


def suspended() -> Fault:
    error = http_error(
        403,
        "Your User ID has been temporarily suspended. Contact support to restore access.",
        "TEMPORARILY_SUSPENDED",
    )
    return Fault("suspended", _replace(error))


def not_authorized() -> Fault:
    return Fault(
        "not_authorized", _replace(http_error(403, "User is not authorized to make this call."))
    )


def throttled(retry_after: int | None = None) -> Fault:
    headers = {"retry-after": str(retry_after)} if retry_after is not None else None
    error = http_error(429, "Too many requests, please wait before trying again.", None, headers)
    return Fault("throttled", _replace(error))


def daily_quota() -> Fault:
    error = http_error(429, "You have reached the limit for daily requests.", "DAILY_REQUEST_COUNT")
    return Fault("daily_quota", _replace(error))


def insufficient_capacity() -> Fault:
    error = http_error(
        429,
        "I am experiencing high traffic, please try again shortly.",
        "INSUFFICIENT_MODEL_CAPACITY",
    )
    return Fault("insufficient_capacity", _replace(error))


def server_error() -> Fault:
    error = http_error(
        500, "Encountered an unexpected error when processing the request, please try again."
    )
    return Fault("server_error", _replace(error))


def model_unavailable() -> Fault:
    error = http_error(
        503,
        "The model you selected is temporarily unavailable. Please try again later.",
        "MODEL_TEMPORARILY_UNAVAILABLE",
    )
    return Fault("model_unavailable", _replace(error))


def improperly_formed() -> Fault:
    return Fault("improperly_formed", _replace(http_error(400, IMPROPERLY_FORMED_MESSAGE)))


def input_too_long() -> Fault:
    error = http_error(400, "Input is too long.", "CONTENT_LENGTH_EXCEEDS_THRESHOLD")
    return Fault("input_too_long", _replace(error))


def connection_drop() -> Fault:
    """The connection closes before any response: the client sees no status at all."""
    return Fault("connection_drop", _replace(ConnectionDrop()))


# --- timing and stream faults (the answer starts, then something goes wrong) -------------------


def slow_first_byte(seconds: float = 2.0) -> Fault:
    return Fault("slow_first_byte", lambda answer: Script((SlowFirstByte(seconds),)) + answer)


def slow_frames(interval: float = 0.5) -> Fault:
    """Every frame after the first arrives ``interval`` seconds after the previous one."""

    def transform(answer: Script) -> Script:
        steps: list[Step] = []
        for step in answer.steps:
            if steps and isinstance(step, FRAME_STEPS):
                steps.append(Delay(interval))
            steps.append(step)
        return Script(tuple(steps))

    return Fault("slow_frames", transform)


def stall_mid_stream(after_frames: int = 1) -> Fault:
    def transform(answer: Script) -> Script:
        head, _ = _split_after(answer, after_frames)
        return Script((*head, Stall()))

    return Fault("stall_mid_stream", transform)


def cut_mid_frame(after_frames: int = 1, *, abort: bool = False) -> Fault:
    def transform(answer: Script) -> Script:
        head, tail = _split_after(answer, after_frames)
        victim = next((s for s in tail if isinstance(s, Event)), None)
        return Script((*head, CutMidFrame(victim, abort=abort)))

    return Fault("cut_mid_frame", transform)


def corrupted_crc(after_frames: int = 1) -> Fault:
    def transform(answer: Script) -> Script:
        head, tail = _split_after(answer, after_frames)
        return Script((*head, CorruptCrc(), *tail))

    return Fault("corrupted_crc", transform)


def garbage_bytes(n: int = 64, after_frames: int = 1) -> Fault:
    def transform(answer: Script) -> Script:
        head, _ = _split_after(answer, after_frames)
        return Script((*head, Garbage(n)))

    return Fault("garbage_bytes", transform)


def drop_mid_stream(after_frames: int = 1) -> Fault:
    """The TCP connection closes after a few frames (an incomplete chunked body)."""

    def transform(answer: Script) -> Script:
        head, _ = _split_after(answer, after_frames)
        return Script((*head, ConnectionDrop()))

    return Fault("drop_mid_stream", transform)


def in_stream(error: HttpError | Fault, after_frames: int = 1, name: str = "") -> Fault:
    """The twin of an HTTP error inside a started answer: the same body in an exception frame
    of the type the service names in ``x-amzn-errortype`` (a fault's error, or one made by
    :func:`http_error`). ``after_frames=0``: the stream's first event."""
    if isinstance(error, Fault):
        name = name or f"{error.name}_mid_stream"
        [step] = error.apply(Script(())).steps
        assert isinstance(step, HttpError), f"{error.name} is no HTTP error"
        error = step
    kind = error.headers.get("x-amzn-errortype", "").split(":")[0]
    kind = kind or _ERROR_TYPES.get(error.status, "InternalServerException")
    payload = error.body

    def transform(answer: Script) -> Script:
        head, _ = _split_after(answer, after_frames)
        return Script((*head, ExceptionFrame(kind, payload)))

    return Fault(name or f"{kind}_mid_stream", transform)


def daily_quota_mid_stream(after_frames: int = 1) -> Fault:
    """The answer starts, then an exception frame says the day's requests are used up."""
    return in_stream(daily_quota(), after_frames, "daily_quota_mid_stream")


def capacity_mid_stream(after_frames: int = 1) -> Fault:
    """The answer starts, then an exception frame says the model has no capacity left."""
    return in_stream(insufficient_capacity(), after_frames, "capacity_mid_stream")


FAULTS: Mapping[str, Callable[[], Fault]] = {
    "expired_token": expired_token,
    "quota_exceeded": quota_exceeded,
    "suspended": suspended,
    "not_authorized": not_authorized,
    "throttled": throttled,
    "daily_quota": daily_quota,
    "insufficient_capacity": insufficient_capacity,
    "server_error": server_error,
    "model_unavailable": model_unavailable,
    "improperly_formed": improperly_formed,
    "input_too_long": input_too_long,
    "connection_drop": connection_drop,
    "slow_first_byte": slow_first_byte,
    "slow_frames": slow_frames,
    "stall_mid_stream": stall_mid_stream,
    "cut_mid_frame": cut_mid_frame,
    "corrupted_crc": corrupted_crc,
    "garbage_bytes": garbage_bytes,
    "drop_mid_stream": drop_mid_stream,
    "daily_quota_mid_stream": daily_quota_mid_stream,
    "capacity_mid_stream": capacity_mid_stream,
}

# Faults a soak test can draw at random: each ends quickly and leaves accounts untouched (no
# auth or quota faults, which would change the gateway's account state; no stalls).
RANDOM_FAULTS: tuple[str, ...] = (
    "throttled",
    "server_error",
    "model_unavailable",
    "connection_drop",
    "cut_mid_frame",
    "corrupted_crc",
    "garbage_bytes",
    "drop_mid_stream",
)


def get_fault(name: str) -> Fault:
    try:
        return FAULTS[name]()
    except KeyError:
        raise KeyError(f"unknown fault {name!r}; known: {', '.join(FAULTS)}") from None
