"""Everything a test can set or read on a running simulator: scripted answers and faults,
accounts and tokens, timing, and the logs of chat requests and refresh calls.

The state is shared between the test's thread and the server's event loop thread: every
mutation of shared collections happens under one lock, and ``wait_for`` lets a test block until
the server has done something (finished a request, closed a stream ...). Times are
``time.monotonic()`` values, comparable with the test's own clock.
"""

from __future__ import annotations

import random
import threading
import time
from collections import deque
from collections.abc import Callable, Collection, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from ki2api.simulator.accounts import (
    DEFAULT_TOKEN_TTL,
    SOCIAL_PROFILE_ARN,
    Account,
    AccountBook,
    AuthMethod,
    Authorization,
)
from ki2api.simulator.faults import RANDOM_FAULTS, Fault, get_fault
from ki2api.simulator.mcp import SearchBook
from ki2api.simulator.scripts import HttpError, Script, Step, as_script
from ki2api.simulator.validator import KNOWN_MODEL_IDS, MAX_BODY_BYTES

QueueItem = Script | Fault
# Picks the answer from the request itself (the parsed chat request body); None: the default
# answer. For clients whose requests a queue cannot foresee (coding agents: side requests for a
# title or a summary, in an order the test cannot know).
Responder = Callable[[Any], "Script | Step | Iterable[Step] | None"]
Scriptable = Script | Step | Iterable[Step]


@dataclass(slots=True, repr=False)
class RequestRecord:
    """One chat request as the simulator saw it, and what it did with it."""

    id: int
    path: str
    style: str  # "path", "json-1.0" or "openai"
    headers: dict[str, str]  # lower-case names
    body: Any  # the parsed JSON (None when it did not parse)
    body_size: int
    started: float
    refusal: str | None = None  # the validator's reason when the body was refused
    status: int | None = None
    account: str | None = None  # label of the known account whose token was used
    script: str | None = None  # name of the script that answered
    fault: str | None = None  # name of the injected fault, if any
    # Text of every assistantResponseEvent written before any corrupt frame or garbage: what a
    # correct client could show.
    sent_text: str = ""
    frames_sent: int = 0
    bytes_sent: int = 0
    finished: float | None = None
    closed_by_client: bool = False  # the client left before the answer was complete
    closed_by_client_at: float | None = None

    @property
    def done(self) -> bool:
        return self.finished is not None

    def __repr__(self) -> str:
        # Short, and without headers or body: they hold tokens.
        return (
            f"RequestRecord(#{self.id} {self.style} {self.path} status={self.status} "
            f"script={self.script!r} fault={self.fault!r} refusal={self.refusal!r} "
            f"closed_by_client={self.closed_by_client})"
        )


@dataclass(frozen=True, slots=True, repr=False)
class RefreshCall:
    path: str
    body: Any  # the parsed JSON body (it holds the refresh token and client secret)
    time: float
    status: int

    def __repr__(self) -> str:
        return f"RefreshCall({self.path} status={self.status})"


def _default_models() -> list[dict[str, Any]]:
    names = {
        "auto": "Auto",
        "claude-sonnet-4": "Claude Sonnet 4",
        "claude-sonnet-4.5": "Claude Sonnet 4.5",
        "claude-haiku-4.5": "Claude Haiku 4.5",
        "claude-opus-4.5": "Claude Opus 4.5",
        "claude-sonnet-4.6": "Claude Sonnet 4.6",
        "claude-opus-4.6": "Claude Opus 4.6",
    }
    return [
        {
            "modelId": model_id,
            "modelName": name,
            "description": f"{name} (simulated)",
            "rateMultiplier": 1.0,
            "rateUnit": "credit",
            "supportedInputTypes": ["TEXT", "IMAGE"],
            "tokenLimits": {"maxInputTokens": 200_000, "maxOutputTokens": 64_000},
        }
        for model_id, name in names.items()
    ]


class SimulatorState:
    """The simulator's knobs and logs. Attributes are plain and may be set at any time:

    - ``latency`` (s) before an answer starts, ``chunk_interval`` (s) between two frames, on a
      clock started with the answer (frame k due ``latency + k * chunk_interval``);
    - ``require_known_tokens``: only issued / registered tokens are accepted;
    - ``fault_rate`` with ``random_faults`` (names in ``faults.FAULTS``), drawn from a seeded RNG;
    - ``model_ids`` the validator accepts, ``max_body_bytes``, ``available_models``;
    - ``refresh_latency`` (s) before a refresh answer, ``access_token_ttl`` (s);
    - ``responder``: a function of the chat request body that picks the answer by its content,
      or None for the default (asked only when nothing is queued);
    - ``log_limit``: the newest requests kept in ``requests`` (None: all).
    """

    def __init__(
        self,
        *,
        latency: float = 0.0,
        chunk_interval: float = 0.0,
        require_known_tokens: bool = False,
        fault_rate: float = 0.0,
        fault_seed: int | None = 0,
        random_faults: Collection[str] = RANDOM_FAULTS,
        model_ids: Collection[str] = KNOWN_MODEL_IDS,
        max_body_bytes: int = MAX_BODY_BYTES,
        access_token_ttl: float = DEFAULT_TOKEN_TTL,
        refresh_latency: float = 0.0,
        profile_arn: str = SOCIAL_PROFILE_ARN,
        log_limit: int | None = 10_000,
    ) -> None:
        self._changed = threading.Condition(threading.RLock())
        self.reset(
            latency=latency,
            chunk_interval=chunk_interval,
            require_known_tokens=require_known_tokens,
            fault_rate=fault_rate,
            fault_seed=fault_seed,
            random_faults=random_faults,
            model_ids=model_ids,
            max_body_bytes=max_body_bytes,
            access_token_ttl=access_token_ttl,
            refresh_latency=refresh_latency,
            profile_arn=profile_arn,
            log_limit=log_limit,
        )

    def reset(
        self,
        *,
        latency: float = 0.0,
        chunk_interval: float = 0.0,
        require_known_tokens: bool = False,
        fault_rate: float = 0.0,
        fault_seed: int | None = 0,
        random_faults: Collection[str] = RANDOM_FAULTS,
        model_ids: Collection[str] = KNOWN_MODEL_IDS,
        max_body_bytes: int = MAX_BODY_BYTES,
        access_token_ttl: float = DEFAULT_TOKEN_TTL,
        refresh_latency: float = 0.0,
        profile_arn: str = SOCIAL_PROFILE_ARN,
        log_limit: int | None = 10_000,
    ) -> None:
        """Back to a fresh state: settings, accounts, queues and logs (one server can then
        serve many tests). Call it while no answer is playing."""
        with self._changed:
            self.latency = latency
            self.chunk_interval = chunk_interval
            self.fault_rate = fault_rate
            self.random_faults = tuple(random_faults)
            self.model_ids = frozenset(model_ids)
            self.max_body_bytes = max_body_bytes
            self.refresh_latency = refresh_latency
            self.profile_arn = profile_arn
            self.log_limit = log_limit
            self.available_models: list[dict[str, Any]] = _default_models()
            self.accounts = AccountBook(
                require_known_tokens=require_known_tokens, token_ttl=access_token_ttl
            )
            self.requests: list[RequestRecord] = []
            self.refresh_calls: list[RefreshCall] = []
            self.models_calls: list[str | None] = []  # account label of each model-list call
            self.usage_calls: list[str | None] = []  # account label of each getUsageLimits call
            self.open_streams = 0
            self._rng = random.Random(fault_seed)
            self._queue: deque[QueueItem] = deque()
            # Web search (POST /mcp): a queue of results or faults, and the log of calls.
            self.searches = SearchBook()
            self.responder: Responder | None = None
            self._refresh_faults: deque[HttpError] = deque()
            self._ids = 0

    # --- settings that live in the account book ------------------------------------------

    @property
    def require_known_tokens(self) -> bool:
        return self.accounts.require_known_tokens

    @require_known_tokens.setter
    def require_known_tokens(self, value: bool) -> None:
        self.accounts.require_known_tokens = value

    @property
    def access_token_ttl(self) -> float:
        return self.accounts.token_ttl

    @access_token_ttl.setter
    def access_token_ttl(self, value: float) -> None:
        self.accounts.token_ttl = value

    def seed(self, seed: int | None) -> None:
        """Restart the random fault sequence."""
        with self._changed:
            self._rng.seed(seed)

    # --- scripted answers -----------------------------------------------------------------

    def enqueue(self, *scripts: Scriptable | Fault) -> None:
        """Queue answers for the next chat requests, first in first out. A :class:`Fault` is
        applied to the answer the request would otherwise get."""
        with self._changed:
            self._queue.extend(_queue_item(s) for s in scripts)

    def fail_next(self, n: int, fault: Fault | str | Scriptable) -> None:
        """The next ``n`` chat requests fail with ``fault`` (a name from ``faults.FAULTS``, a
        :class:`Fault`, an :class:`HttpError` or any script), ahead of anything queued."""
        item = get_fault(fault) if isinstance(fault, str) else _queue_item(fault)
        with self._changed:
            self._queue.extendleft(item for _ in range(n))

    def pending(self) -> int:
        with self._changed:
            return len(self._queue)

    def clear_queue(self) -> None:
        with self._changed:
            self._queue.clear()
            self._refresh_faults.clear()

    def answer_from_responder(self, body: Any) -> Script | None:
        """What ``responder`` (if set) answers to this body."""
        responder = self.responder
        answer = responder(body) if responder is not None and body is not None else None
        return None if answer is None else as_script(answer, "responder")

    def next_answer(
        self, default: Callable[[], Script], account: Account | None = None, body: Any = None
    ) -> tuple[Script, str | None]:
        """The script for one chat request and the name of the injected fault, if any.

        Order: the account's own fault, then the queue, then a random fault, then
        ``responder``'s answer to ``body``, else ``default`` (the fake model's).
        """
        with self._changed:
            item: QueueItem | None = None
            if account is not None and account.fault is not None:
                item = account.fault
            elif self._queue:
                item = self._queue.popleft()
            elif self.fault_rate > 0 and self._rng.random() < self.fault_rate:
                item = get_fault(self._rng.choice(self.random_faults))
        if item is None:
            return self.answer_from_responder(body) or default(), None
        if isinstance(item, Fault):
            return item.apply(self.answer_from_responder(body) or default()), item.name
        return item, None

    # --- accounts and tokens --------------------------------------------------------------

    def add_account(
        self,
        *,
        access_token: str | None = None,
        refresh_token: str | None = None,
        rotate_refresh: bool = False,
        auth: AuthMethod = "social",
        client_id: str | None = None,
        client_secret: str | None = None,
        profile_arn: str | None = None,
        label: str | None = None,
        expires_in: float | None = None,
    ) -> Account:
        return self.accounts.add(
            access_token=access_token,
            refresh_token=refresh_token,
            rotate_refresh=rotate_refresh,
            auth=auth,
            client_id=client_id,
            client_secret=client_secret,
            profile_arn=profile_arn or self.profile_arn,
            label=label,
            expires_in=expires_in,
        )

    def add_api_key(self, key: str) -> None:
        self.accounts.add_api_key(key)

    def expire_access_token(self, token: str) -> None:
        self.accounts.expire_access_token(token)

    def revoke_refresh_token(self, token: str) -> None:
        self.accounts.revoke_refresh_token(token)

    def authorize(self, headers: Mapping[str, str]) -> Authorization:
        return self.accounts.authorize(headers)

    def fail_next_refresh(self, n: int, error: HttpError) -> None:
        """The next ``n`` refresh calls (either flow) answer ``error``."""
        with self._changed:
            self._refresh_faults.extend(error for _ in range(n))

    def next_refresh_fault(self) -> HttpError | None:
        with self._changed:
            return self._refresh_faults.popleft() if self._refresh_faults else None

    def log_refresh(self, path: str, body: Any, status: int) -> None:
        with self._changed:
            self.refresh_calls.append(RefreshCall(path, body, time.monotonic(), status))
            self._changed.notify_all()

    def log_models_call(self, label: str | None) -> None:
        with self._changed:
            self.models_calls.append(label)
            self._changed.notify_all()

    def log_usage_call(self, label: str | None) -> None:
        with self._changed:
            self.usage_calls.append(label)
            self._changed.notify_all()

    # --- request log ----------------------------------------------------------------------

    def new_record(
        self, path: str, style: str, headers: dict[str, str], body_size: int
    ) -> RequestRecord:
        with self._changed:
            self._ids += 1
            record = RequestRecord(
                self._ids, path, style, headers, None, body_size, time.monotonic()
            )
            self.requests.append(record)
            limit = self.log_limit
            if limit is not None and len(self.requests) > limit + limit // 10:
                # Trimmed in batches (amortised O(1)) so a long soak keeps bounded memory.
                del self.requests[: len(self.requests) - limit]
            self._changed.notify_all()
            return record

    def finish_record(self, record: RequestRecord, status: int | None = None) -> None:
        with self._changed:
            if status is not None:
                record.status = status
            record.finished = time.monotonic()
            self._changed.notify_all()

    def stream_opened(self) -> None:
        with self._changed:
            self.open_streams += 1
            self._changed.notify_all()

    def stream_closed(self) -> None:
        with self._changed:
            self.open_streams -= 1
            self._changed.notify_all()

    @property
    def last_request(self) -> RequestRecord | None:
        with self._changed:
            return self.requests[-1] if self.requests else None

    def wait_for(self, predicate: Callable[[SimulatorState], bool], timeout: float = 5.0) -> bool:
        """Block until ``predicate(state)`` holds (checked whenever the server changes the
        state); False on timeout."""
        with self._changed:
            return self._changed.wait_for(lambda: predicate(self), timeout)

    def wait_for_requests(self, n: int, timeout: float = 5.0) -> list[RequestRecord]:
        """Wait until ``n`` requests have finished; return the log (raises on timeout)."""
        if not self.wait_for(lambda s: sum(r.done for r in s.requests) >= n, timeout):
            raise TimeoutError(f"fewer than {n} requests finished within {timeout} s")
        with self._changed:
            return list(self.requests)

    def wait_idle(self, timeout: float = 5.0) -> bool:
        """Wait until no answer is being played."""
        return self.wait_for(lambda s: s.open_streams == 0, timeout)

    def reset_logs(self) -> None:
        with self._changed:
            self.requests.clear()
            self.refresh_calls.clear()


def _queue_item(value: Scriptable | Fault) -> QueueItem:
    return value if isinstance(value, Fault) else as_script(value)
