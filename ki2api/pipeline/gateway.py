"""The pipeline driver shared by every front door and the UI.

``Gateway.open`` does everything that can fail before the first byte reaches a client: model
lookup, request building, choosing an account (refreshing its token), connecting, checking the
status, retrying and failing over. It returns a :class:`DeltaStream`; from then on failures
travel inside the stream as :class:`StreamError` deltas.
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import AsyncGenerator, AsyncIterator, Callable
from dataclasses import dataclass, field
from enum import Enum

from ki2api.kiro.accounts.available_models import AvailableModels
from ki2api.kiro.accounts.pool import NO_ACCOUNT_NOW, AccountPool, Lease
from ki2api.kiro.http.client import KiroClient, KiroResponse
from ki2api.kiro.http.mcp import KiroWebSearch
from ki2api.kiro.wire.events import KiroEventParser
from ki2api.kiro.wire.eventstream import Frame
from ki2api.kiro.wire.models import ModelCatalog, ModelInfo
from ki2api.kiro.wire.request_builder import KiroRequest, build_kiro_request
from ki2api.model.context import current_request
from ki2api.model.deltas import (
    KEEP_ALIVE,
    Delta,
    ReasoningDelta,
    ServerToolResult,
    ServerToolUse,
    Stop,
    StopReason,
    StreamError,
    TextDelta,
    ToolCallArgs,
    ToolCallEnd,
    ToolCallStart,
    Usage,
)
from ki2api.model.errors import (
    AccountsCoolingDown,
    AccountsPaced,
    GatewayError,
    InvalidRequest,
    ModelNotFound,
    NoHealthyAccount,
    QuotaExceeded,
    TokenExpired,
    UpstreamAuthFailed,
    UpstreamError,
    UpstreamThrottled,
)
from ki2api.model.logsafe import printable
from ki2api.model.request import ChatRequest
from ki2api.pipeline.admission import Admission
from ki2api.pipeline.calibration import TokenCalibration
from ki2api.pipeline.concurrency import AccountBusy, AccountSlots, Slot
from ki2api.pipeline.conversation import conversation_id_for
from ki2api.pipeline.output_limits import OutputLimiter
from ki2api.pipeline.stats import RequestRecord, RequestStats
from ki2api.pipeline.sticky import MemorySticky, StickyStore
from ki2api.settings import Settings
from ki2api.store.records import OPERATOR_KEY_ID

log = logging.getLogger("ki2api.gateway")

_NONE: frozenset[str] = frozenset()
_BACKOFF_BASE = 0.2
_BACKOFF_CAP = 2.0


def _backoff(attempt: int) -> float:
    delay: float = min(_BACKOFF_CAP, _BACKOFF_BASE * 2**attempt)
    return delay * (0.5 + random.random() / 2)


def settle(
    lease: Lease, error: GatewayError | None, kiro_model: str, models: AvailableModels | None
) -> None:
    """What an attempt's outcome does to its account: the same whether Kiro said it in the
    status of its answer or inside the answer (one table classified both; docs/errors.md, "What
    a failure cools down"). ``models`` None: the lease is not the pool's (a visitor's token)."""
    lease.settle(error)
    if isinstance(error, ModelNotFound) and models is not None:
        # Kiro does not offer the model to this account: skip it for that model.
        models.note_missing(lease.credential.label, kiro_model)


class DeltaStream:
    """An open answer: ``async for delta in stream``; ``await stream.aclose()`` cancels it."""

    def __init__(
        self,
        *,
        response: KiroResponse,
        parser: KiroEventParser,
        lease: Lease,
        model: ModelInfo,
        request: ChatRequest,
        stats: RequestStats | None,
        started: float,
        release: Callable[[], None] | None = None,
        models: AvailableModels | None = None,
    ) -> None:
        self.model = model
        self.requested_model = request.model
        self.account = lease.credential.label
        self.started = started
        self.first_delta_at: float | None = None
        self._response = response
        self._parser = parser
        self._lease = lease
        self._models = models  # who lacks which model (None for a lease not from the pool)
        self._stats = stats
        self._release = release  # gives the account's concurrency slot back
        limited = request.max_tokens is not None or bool(request.stop)
        self._limiter = OutputLimiter(request.max_tokens, request.stop) if limited else None
        self._streamed = request.stream
        self._error: GatewayError | None = None  # what ended the answer early, if anything
        self._cut = False  # the answer ended before the upstream's end (an error, a limit)
        self._usage: Usage | None = None  # the answer's usage, once the parser gave it
        self._context = current_request.get()
        if self._context is not None:
            self._context.model = model.id
            self._context.kiro_model = model.kiro_id
            self._context.account = self.account
            self._context.streamed = request.stream
        self._batches = self._run()
        self._flat: AsyncGenerator[Delta, None] | None = None

    def batches(self) -> AsyncIterator[list[Delta]]:
        """The deltas in batches, one per upstream read: a renderer can answer each batch
        with a single write (the first batch also carries its preamble)."""
        return self._batches

    def __aiter__(self) -> AsyncIterator[Delta]:
        if self._flat is None:
            self._flat = self._flatten()
        return self._flat

    async def _flatten(self) -> AsyncGenerator[Delta, None]:
        async for batch in self._batches:
            for delta in batch:
                yield delta

    async def aclose(self) -> None:
        if self._flat is not None:
            await self._flat.aclose()
        await self._batches.aclose()
        # A stream closed before its first read never ran _run's cleanup.
        await self._response.aclose()
        if self._release is not None:
            self._release()

    async def _run(self) -> AsyncGenerator[list[Delta], None]:
        """Read the upstream, one batch of deltas per read, until the answer ends; then give
        the upstream back and tell the account and the stats how it went."""
        if self._stats is not None:
            self._stats.active_streams += 1
        try:
            async for frames in self._response.frame_batches():
                if frames is None:  # the upstream is quiet: let the client know we are alive
                    yield [KEEP_ALIVE]
                    continue
                batch = self._deltas(frames)
                if batch:
                    yield batch
                if self._cut:
                    return
            yield self._ending()
        except GatewayError as exc:
            self._error = exc
            log.warning(
                "upstream failed mid-stream on %s: %s", self.account, printable(exc.message)
            )
            yield [StreamError(exc)]
        finally:
            await self._ended()

    def _deltas(self, frames: list[Frame]) -> list[Delta]:
        """One upstream read's deltas, through the client's output limits. Sets ``_cut`` when
        they end the answer early: Kiro's in-stream error, or the client's limit reached."""
        parser, limiter = self._parser, self._limiter
        batch: list[Delta] = []
        for frame in frames:
            for delta in parser.feed(frame):
                if isinstance(delta, StreamError):
                    self._error, self._cut = delta.error, True
                    batch.append(delta)
                    return batch
                if self.first_delta_at is None:
                    self._first_delta()
                if limiter is None:
                    batch.append(delta)
                    continue
                batch.extend(limiter.feed(delta))
                if limiter.stop is not None:
                    usage = self._usage = parser.usage()
                    batch += (usage, limiter.stop)
                    self._cut = True
                    return batch
        return batch

    def _first_delta(self) -> None:
        self.first_delta_at = time.perf_counter()
        if self._context is not None:
            self._context.ttft = self.first_delta_at - self.started

    def _ending(self) -> list[Delta]:
        """The upstream's end: the parser's usage and stop, through the output limits."""
        limiter = self._limiter
        batch: list[Delta] = []
        for delta in self._parser.finish():
            if isinstance(delta, Usage):
                self._usage = delta
            if limiter is not None and isinstance(delta, Stop):
                batch.extend(limiter.flush())
                delta = limiter.stop or delta
            batch.append(delta)
        return batch

    async def _ended(self) -> None:
        """However the answer ended (also when the client left): free the upstream and the
        slot, settle the account as for a failed status, and count the request."""
        await self._response.aclose()
        if self._release is not None:
            self._release()
        error, usage, ctx = self._error, self._usage, self._context
        caller = ctx.caller if ctx is not None else None
        if ctx is not None:
            if error is not None:
                ctx.error = str(error.openai_code)
            # What this answer used, also when it failed or was cut (then partly estimated).
            ctx.add_usage(usage if usage is not None else self._parser.usage())
        settle(self._lease, error, self.model.kiro_id, self._models)
        if self._stats is not None:
            self._stats.active_streams -= 1
            now = time.perf_counter()
            self._stats.add(
                RequestRecord(
                    finished_at=time.time(),
                    model=self.model.id,
                    account=self.account,
                    latency=now - self.started,
                    ttft=None
                    if self.first_delta_at is None
                    else self.first_delta_at - self.started,
                    output_tokens=0 if usage is None else usage.output_tokens,
                    input_tokens=0 if usage is None else usage.input_tokens,
                    error=None if error is None else str(error.openai_code),
                    streamed=self._streamed,
                    key="" if caller is None or caller.key_id == OPERATOR_KEY_ID else caller.name,
                )
            )


@dataclass(slots=True)
class CompletedToolCall:
    id: str
    name: str
    arguments: str  # JSON text, as the model produced it


@dataclass(slots=True)
class Completion:
    """A whole answer, assembled from the same stream the streaming front doors render."""

    text: str = ""
    reasoning: str = ""
    reasoning_signature: str | None = None
    tool_calls: list[CompletedToolCall] = field(default_factory=list)
    usage: Usage = field(default_factory=lambda: Usage(0, 0))
    stop: Stop = field(default_factory=lambda: Stop(StopReason.END_TURN))
    # searches the gateway ran (requests with a web-search tool only), in order
    server_tools: list[ServerToolUse | ServerToolResult] = field(default_factory=list)


async def collect(stream: DeltaStream, *, close: bool = True) -> Completion:
    """Drain a stream into a :class:`Completion`; an in-stream failure is raised (nothing has
    been sent to the client yet, so it can still become a proper HTTP error).

    ``close=False`` returns at the answer's end (its ``Stop``) and leaves closing the stream to
    the caller, who can answer the client first; on a failure the stream is closed anyway.
    """
    text: list[str] = []
    reasoning: list[str] = []
    calls: dict[int, CompletedToolCall] = {}
    args: dict[int, list[str]] = {}
    done = Completion()
    try:
        async for delta in stream:
            if isinstance(delta, TextDelta):
                text.append(delta.text)
            elif isinstance(delta, ReasoningDelta):
                reasoning.append(delta.text)
                done.reasoning_signature = delta.signature or done.reasoning_signature
            elif isinstance(delta, ToolCallStart):
                args[delta.index] = []
                calls[delta.index] = CompletedToolCall(delta.id, delta.name, "")
            elif isinstance(delta, ToolCallArgs):
                args[delta.index].append(delta.fragment)
            elif isinstance(delta, ToolCallEnd):
                # Only calls that ended are complete: a cut one is never passed on.
                calls[delta.index].arguments = "".join(args[delta.index])
                done.tool_calls.append(calls[delta.index])
            elif isinstance(delta, Usage):
                done.usage = delta
            elif isinstance(delta, Stop):
                done.stop = delta
                if not close:
                    break
            elif isinstance(delta, StreamError):
                raise delta.error
            elif isinstance(delta, ServerToolUse | ServerToolResult):
                done.server_tools.append(delta)
    except BaseException:
        await stream.aclose()
        raise
    if close:
        await stream.aclose()
    done.text = "".join(text)
    done.reasoning = "".join(reasoning)
    return done


class _Opening:
    """One request on its way to an answer: its Kiro bodies (built once per profile ARN), its
    parser, and what its failed attempts taught (accounts tried, accounts lacking the model,
    Kiro's last answer)."""

    __slots__ = (
        "bodies",
        "conversation_id",
        "lacking",
        "last",
        "model",
        "models",
        "parser",
        "prefer",
        "request",
        "tried",
        "while_waiting",
    )

    def __init__(
        self,
        request: ChatRequest,
        model: ModelInfo,
        conversation_id: str,
        models: AvailableModels | None,
        while_waiting: Callable[[], object] | None,
    ) -> None:
        self.request = request
        self.model = model
        self.conversation_id = conversation_id
        self.models = models  # who lacks which model (None: unknown, or not the pool's account)
        self.while_waiting = while_waiting
        self.bodies: dict[str | None, KiroRequest] = {}
        self.parser: KiroEventParser | None = None
        # Accounts that do not offer the model sit this request out (they stay healthy).
        self.lacking = models.skip_for(model.kiro_id) if models is not None else _NONE
        self.tried: set[str] = set()
        self.last: GatewayError | None = None
        self.prefer: str | None = None  # the account the conversation sticks to, if it has room

    def body_for(self, profile_arn: str | None) -> KiroRequest:
        # Accounts differ in profileArn only; build once per distinct value.
        body = self.bodies.get(profile_arn)
        if body is None:
            body = self.bodies[profile_arn] = build_kiro_request(
                self.request,
                model=self.model,
                profile_arn=profile_arn,
                conversation_id=self.conversation_id,
            )
        return body

    def prepare(self) -> None:
        """Once, while the first answer is awaited: the parser, and the caller's preparation."""
        if self.parser is not None:
            return
        first = next(iter(self.bodies.values()))  # the parser's inputs are the same for each
        model = self.model
        self.parser = KiroEventParser(
            tool_names=first.tool_names,
            split_thinking=self.request.reasoning is not None or model.thinking,
            prompt_tokens_estimate=max(1, first.prompt_chars // 4),
            context_window=model.context_window,
        )
        if self.while_waiting is not None:
            self.while_waiting()


class _Next(Enum):
    """What a request does after a failed attempt (docs/errors.md, "gateway does")."""

    GIVE_UP = "give up"  # the failure is the answer
    SKIP_FOR_MODEL = "skip for the model"  # the account lacks the model: another may have it
    OTHER_ACCOUNT = "other account"  # this account is out (or busy): another at once
    RETRY = "retry"  # a passing failure: another account, else this one, after a back-off


def _next_step(failure: GatewayError, pinned: bool, knows_models: bool, final: bool) -> _Next:
    if isinstance(failure, ModelNotFound):
        return _Next.SKIP_FOR_MODEL if knows_models else _Next.GIVE_UP
    if not isinstance(failure, UpstreamError):
        return _Next.GIVE_UP  # the request is at fault (or the setup): no retry can help
    if isinstance(failure, AccountBusy | QuotaExceeded | UpstreamAuthFailed | UpstreamThrottled):
        return _Next.GIVE_UP if pinned else _Next.OTHER_ACCOUNT
    return _Next.GIVE_UP if pinned and final else _Next.RETRY


class Gateway:
    def __init__(
        self,
        settings: Settings,
        client: KiroClient,
        pool: AccountPool,
        catalog: ModelCatalog,
        stats: RequestStats | None = None,
        models: AvailableModels | None = None,
        sticky: StickyStore | None = None,
        admission: Admission | None = None,
    ) -> None:
        self.settings = settings
        self.admission = admission  # client keys' limits, checked before an account is chosen
        self.client = client
        self.pool = pool
        self.catalog = catalog
        self.models = models  # per-account model lists: who lacks which model
        self.stats = stats or RequestStats()
        self.slots = AccountSlots(settings.max_concurrent_per_account, settings.queue_timeout)
        # Only for server-tool requests; each account's search goes through its own proxy.
        self.web_search = KiroWebSearch(client.upstream.for_proxy, settings)
        self.calibration = TokenCalibration()  # input-token estimates, per Kiro model
        # Which account each conversation sticks to (off with KIRO_STICKY_TTL=0). The "first"
        # strategy needs none: it goes back to the primary account as soon as it is healthy.
        if sticky is None and settings.kiro_sticky_ttl > 0 and pool.strategy != "first":
            sticky = MemorySticky(settings.kiro_sticky_max)
        self.sticky = sticky

    async def open(
        self,
        request: ChatRequest,
        *,
        conversation_header: str | None = None,
        lease: Lease | None = None,
        while_waiting: Callable[[], object] | None = None,
    ) -> DeltaStream:
        """Start an answer. ``lease`` (e.g. a visitor's own token) bypasses the account pool.

        ``while_waiting`` runs once, after the request has gone upstream and before its answer
        starts: a front door prepares its rendering there, off the way to the first token."""
        started = time.perf_counter()
        self._check_message_count(request)
        model = self.catalog.resolve(request.model)
        await self.admit(request, model)
        conversation_id = conversation_id_for(request, conversation_header)
        pinned = lease is not None
        models = None if pinned else self.models  # a lease of the caller's: not the pool's
        job = _Opening(request, model, conversation_id, models, while_waiting)
        sticky = self.sticky if not pinned and len(self.pool) > 1 else None
        if sticky is not None:
            job.prefer = await sticky.get(conversation_id)
            if job.prefer is not None and not self.slots.has_room(job.prefer):
                job.prefer = None  # every slot taken: the conversation moves rather than queues
        attempts = max(1, self.settings.upstream_attempts)
        for attempt in range(attempts):
            if lease is not None:
                account = lease
            else:
                account = await self._pick_account(job, attempt)
                if sticky is not None:  # set on every turn: the entry lives TTL after the last
                    label = account.credential.label
                    await sticky.set(conversation_id, label, self.settings.kiro_sticky_ttl)
            body = job.body_for(account.credential.profile_arn)
            try:
                response, slot = await self._open_in_slot(body, account, job.prepare)
            except GatewayError as failure:
                if not isinstance(failure, AccountBusy):  # a full line never reached Kiro
                    settle(account, failure, model.kiro_id, models)
                final = attempt == attempts - 1
                step = _next_step(failure, pinned, models is not None, final)
                if step is _Next.GIVE_UP:
                    raise
                await self._before_next_attempt(job, account, failure, step, attempt, attempts)
                continue
            job.prepare()  # in case the transport had no moment for it
            assert job.parser is not None
            return DeltaStream(
                response=response,
                parser=job.parser,
                lease=account,
                model=model,
                request=request,
                stats=self.stats,
                started=started,
                release=slot.release,
                models=models,
            )
        assert job.last is not None
        raise job.last  # what Kiro said last (a 429 stays a 429, with Kiro's reason)

    def _check_message_count(self, request: ChatRequest) -> None:
        if 0 < self.settings.max_messages < len(request.messages):
            raise InvalidRequest(
                f"Too many messages ({len(request.messages)}); the limit is "
                f"{self.settings.max_messages} (MAX_MESSAGES).",
                param="messages",
                code="too_many_messages",
            )

    async def admit(self, request: ChatRequest, model: ModelInfo) -> None:
        """The caller's own limits (client keys), before any account is spent on the request;
        raises the client's error. Every way to the upstream passes here first."""
        if self.admission is not None:
            ctx = current_request.get()
            if ctx is not None and ctx.caller is not None:
                await self.admission.admit(ctx, request.model, model)

    async def _pick_account(self, job: _Opening, attempt: int) -> Lease:
        """The pool's choice for the next attempt, among the accounts not tried yet."""
        try:
            return await self.pool.acquire(
                exclude=frozenset(job.tried),
                model=job.model.kiro_id,
                lacking=job.lacking,
                prefer=job.prefer,
            )
        except NO_ACCOUNT_NOW as refused:
            return await self._none_free(refused, job, attempt)

    async def _none_free(self, refused: GatewayError, job: _Opening, attempt: int) -> Lease:
        """No account can take the next attempt now: wait out a short cooldown, or retry the
        accounts that failed only passingly; otherwise answer why (see _final_error)."""
        model = job.model.kiro_id
        retry_tried = bool(job.tried) and self.pool.any_ready(job.tried, model)
        wait = _wait_before_retry(refused, job.last, retry_tried, attempt)
        if wait is None:
            raise _final_error(job.last, refused) from None
        if wait > 0:
            await self.pool.wait(wait)
        job.tried.clear()
        try:
            return await self.pool.acquire(model=model, lacking=job.lacking)
        except NO_ACCOUNT_NOW as again:
            raise _final_error(job.last, again) from None

    async def _before_next_attempt(
        self,
        job: _Opening,
        account: Lease,
        failure: GatewayError,
        step: _Next,
        attempt: int,
        attempts: int,
    ) -> None:
        """Remember what the failed attempt taught, and back off where that is due."""
        label = account.credential.label
        if step is _Next.SKIP_FOR_MODEL:
            # Skipped for the rest of this request too (a retry after a throttle elsewhere must
            # not ask it again), and never the answer while another account's failure (a
            # throttle, a quota) tells the client more.
            job.lacking = job.lacking | {label}
            job.last = job.last or failure
            return
        job.last = failure
        job.tried.add(label)  # another account next, if there is one
        if isinstance(failure, AccountBusy):
            return  # a less busy account
        if step is _Next.OTHER_ACCOUNT:
            log.info("account %s failed (%s); trying another", label, failure.openai_code)
            return
        log.info("Kiro failed (%s), attempt %d of %d", failure.openai_code, attempt + 1, attempts)
        if attempt < attempts - 1:
            await self.pool.sleep(_backoff(attempt))

    async def _open_in_slot(
        self, kiro_request: KiroRequest, lease: Lease, while_waiting: Callable[[], object]
    ) -> tuple[KiroResponse, Slot]:
        slot = await self.slots.acquire(lease.credential.label)
        try:
            return await self._open_with_refresh(kiro_request, lease, while_waiting), slot
        except BaseException:
            slot.release()
            raise

    async def _open_with_refresh(
        self, kiro_request: KiroRequest, lease: Lease, while_waiting: Callable[[], object]
    ) -> KiroResponse:
        try:
            return await self.client.open(kiro_request.body, lease.credential, while_waiting)
        except TokenExpired as exc:
            credential = await lease.token_rejected()
            if credential is None:
                raise UpstreamAuthFailed(
                    f"{exc.message}; refreshing the account's token did not help"
                ) from exc
            return await self.client.open(kiro_request.body, credential, while_waiting)


# Seconds a request waits for an account (or model) cooling down after a throttle when no other
# account can serve it: about what a client's own retry would wait. Longer ones are answered at
# once with 429 and Retry-After.
_LONGEST_COOLDOWN_WAIT = 2.0


def _wait_before_retry(
    refused: GatewayError, last: GatewayError | None, retry_tried: bool, attempt: int
) -> float | None:
    """Seconds to wait before asking the pool again, or None to answer the client now.

    A short throttle cooldown is waited out (so one 429 never becomes a refusal on a one-account
    gateway). Accounts tried in this request that failed only passingly are retried: at once
    after a 5xx (its back-off was already waited), after a short back-off after a 429 that
    cooled nothing (Kiro asked for no wait; the next try must not hammer it).
    """
    if isinstance(refused, AccountsCoolingDown) and refused.retry_after is not None:
        # A paced account's turn was already too far off to wait for (QUEUE_TIMEOUT).
        if refused.retry_after <= _LONGEST_COOLDOWN_WAIT and not isinstance(refused, AccountsPaced):
            return refused.retry_after
    if last is None or isinstance(last, QuotaExceeded | UpstreamAuthFailed | ModelNotFound):
        return None
    if retry_tried:
        return _backoff(attempt) if isinstance(last, UpstreamThrottled) else 0.0
    return None


def _final_error(last: GatewayError | None, refused: GatewayError) -> GatewayError:
    """What to tell the client when no account can be tried again: Kiro's own last answer when
    the client can act on it (a quota, a refused account, a throttle with its reason and
    Retry-After), else the pool's refusal, which names what Kiro said to each account."""
    if last is None:
        return refused
    if isinstance(last, ModelNotFound) and isinstance(refused, AccountsCoolingDown | QuotaExceeded):
        return refused  # that account lacks the model; another may serve it once it is back
    if isinstance(last, UpstreamThrottled) and isinstance(refused, AccountsCoolingDown):
        last.retry_after = refused.retry_after  # when the first account is back, not the last
        return last
    if isinstance(last, QuotaExceeded | UpstreamThrottled | ModelNotFound) or (
        isinstance(last, UpstreamAuthFailed) and not isinstance(last, TokenExpired)
    ):
        return last
    if isinstance(refused, NoHealthyAccount):
        return NoHealthyAccount(
            f"{refused.message} Last error: {last.message}", retry_after=refused.retry_after
        )
    if isinstance(last, AccountBusy):
        return refused
    return last  # a 5xx of Kiro's, e.g. a model unavailable for longer than worth waiting
