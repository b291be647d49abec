"""One error tree for the whole gateway. Front doors render it; nothing else is caught.

    GatewayError                      500 api_error          (never raised on purpose)
    ├── InvalidRequest                400 invalid_request_error
    │   ├── ContextLengthExceeded     400 context_length_exceeded
    │   └── UpstreamRejected          400 the service refused the request's shape
    ├── AuthenticationFailed          401 the client's API key (also expired, revoked, disabled)
    ├── PermissionDenied              403
    │   └── ModelNotAllowed           403 model_not_allowed (the key's model allowlist)
    ├── NotFound                      404
    │   └── ModelNotFound             404 model_not_found
    ├── RequestTooLarge               413
    ├── RateLimited                   429 (the gateway's own per-key limit: RPM, TPM)
    ├── BudgetSpent                   429 insufficient_quota (a key's credits for the day/month)
    ├── NotConfigured                 503 no credentials / no API key on a Space
    └── UpstreamError                 502 something between us and Kiro failed
        ├── UpstreamAuthFailed        502 the account's token was refused / cannot be refreshed
        │   ├── TokenExpired          502 "bearer token invalid": refresh once and retry
        │   └── AccountSuspended      502 Kiro suspended or flagged the account: out until a
        │                                 person acts
        ├── QuotaExceeded             429 insufficient_quota (an account's quota, until it resets)
        ├── UpstreamThrottled         429 rate_limit_exceeded (an account's request rate)
        │   ├── ModelCapacity         429 insufficient_model_capacity (a model, for a moment)
        │   └── AccountsCoolingDown   429 rate_limit_exceeded: every account that could serve
        │       │                         the request is cooling down after Kiro's 429s (local)
        │       └── AccountsPaced     429 rate_limit_exceeded: every such account's next turn
        │                                 (KIRO_MIN_INTERVAL_MS) is further off than QUEUE_TIMEOUT
        ├── UpstreamUnavailable       503 (Anthropic: 529 overloaded_error)
        │   ├── ModelUnavailable      503 model_unavailable (a model, for a moment)
        │   └── NoHealthyAccount      503 no account can serve (disabled, needs login, refresh)
        ├── UpstreamTimeout           504
        ├── UpstreamProtocolError     502 corrupt or cut event stream, malformed HTTP answer
        ├── UpstreamTlsError          502 Kiro's TLS certificate was not accepted
        └── UpstreamProxyError        502 the outbound proxy refused or cannot be reached

Each class carries its HTTP status and the ``type`` / ``code`` each client format expects;
``should_retry`` tells OpenAI's SDK (``x-should-retry``) whether trying again can help.
"""

from __future__ import annotations

from typing import ClassVar


class GatewayError(Exception):
    status: ClassVar[int] = 500
    openai_type: ClassVar[str] = "api_error"
    openai_code: ClassVar[str | None] = "internal_error"
    anthropic_type: ClassVar[str] = "api_error"
    should_retry: ClassVar[bool] = False

    def __init__(
        self,
        message: str,
        *,
        param: str | None = None,
        code: str | None = None,
        retry_after: float | None = None,
        status: int | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.param = param
        self.retry_after = retry_after
        if code is not None:
            self.openai_code = code  # type: ignore[misc]
        if status is not None:
            self.status = status  # type: ignore[misc]


class InvalidRequest(GatewayError):
    status = 400
    openai_type = "invalid_request_error"
    openai_code = "invalid_request"
    anthropic_type = "invalid_request_error"


class ContextLengthExceeded(InvalidRequest):
    openai_code = "context_length_exceeded"


class UpstreamRejected(InvalidRequest):
    openai_code = "upstream_rejected"


class AuthenticationFailed(GatewayError):
    status = 401
    openai_type = "authentication_error"
    openai_code = "invalid_api_key"
    anthropic_type = "authentication_error"


class PermissionDenied(GatewayError):
    status = 403
    openai_type = "permission_error"
    openai_code = "permission_denied"
    anthropic_type = "permission_error"


class ModelNotAllowed(PermissionDenied):
    openai_code = "model_not_allowed"


class NotFound(GatewayError):
    status = 404
    openai_type = "invalid_request_error"
    openai_code = "not_found"
    anthropic_type = "not_found_error"


class ModelNotFound(NotFound):
    openai_code = "model_not_found"


class RequestTooLarge(GatewayError):
    status = 413
    openai_type = "invalid_request_error"
    openai_code = "request_too_large"
    anthropic_type = "request_too_large"


class RateLimited(GatewayError):
    status = 429
    openai_type = "rate_limit_error"
    openai_code = "rate_limit_exceeded"
    anthropic_type = "rate_limit_error"
    should_retry = True


class BudgetSpent(GatewayError):
    """A client key's credit budget for the day or month is spent (the gateway's own limit,
    not an account's quota: that is :class:`QuotaExceeded`)."""

    status = 429
    openai_type = "insufficient_quota"
    openai_code = "insufficient_quota"
    anthropic_type = "rate_limit_error"


class NotConfigured(GatewayError):
    status = 503
    openai_type = "server_error"
    openai_code = "not_configured"
    anthropic_type = "api_error"


class UpstreamError(GatewayError):
    status = 502
    openai_type = "server_error"
    openai_code = "upstream_error"
    anthropic_type = "api_error"
    should_retry = True


class UpstreamAuthFailed(UpstreamError):
    openai_code = "upstream_auth_failed"
    should_retry = False


class TokenExpired(UpstreamAuthFailed):
    openai_code = "upstream_token_expired"


class AccountSuspended(UpstreamAuthFailed):
    """Kiro suspended the account, or flagged it and limits it: no retry, no refresh undoes
    it, and it is read from Kiro's words whatever status carries them. Clients see the same
    502 as for any refused account; the pool shows the account as suspended."""


class QuotaExceeded(UpstreamError):
    status = 429
    openai_type = "insufficient_quota"
    openai_code = "insufficient_quota"
    anthropic_type = "rate_limit_error"
    should_retry = False


class UpstreamThrottled(UpstreamError):
    status = 429
    openai_type = "rate_limit_error"
    openai_code = "rate_limit_exceeded"
    anthropic_type = "rate_limit_error"


class ModelCapacity(UpstreamThrottled):
    """Kiro has no capacity for this model right now: about the model, not the account."""

    openai_code = "insufficient_model_capacity"


class AccountsCoolingDown(UpstreamThrottled):
    """Answered by the gateway itself: every account that could serve the request is cooling
    down after Kiro's own 429s. Carries the shortest wait and what Kiro said."""


class AccountsPaced(AccountsCoolingDown):
    """Answered by the gateway itself: every account that could serve the request keeps a
    minimum interval between requests (``KIRO_MIN_INTERVAL_MS``) and its next turn is further
    off than a request may wait (``QUEUE_TIMEOUT``). Retry-After: when the first turn is free."""


class UpstreamUnavailable(UpstreamError):
    status = 503
    openai_code = "upstream_unavailable"
    anthropic_type = "overloaded_error"


class ModelUnavailable(UpstreamUnavailable):
    """Kiro says the model is temporarily unavailable: about the model, not the account."""

    openai_code = "model_unavailable"


class NoHealthyAccount(UpstreamUnavailable):
    openai_code = "no_healthy_account"


class UpstreamTimeout(UpstreamError):
    status = 504
    openai_code = "upstream_timeout"


class UpstreamProtocolError(UpstreamError):
    openai_code = "upstream_protocol_error"


class UpstreamTlsError(UpstreamError):
    """A configuration matter (KIRO_CA_BUNDLE, the URL's host name): retrying cannot help."""

    openai_code = "upstream_tls_error"
    should_retry = False


class UpstreamProxyError(UpstreamError):
    openai_code = "upstream_proxy_error"
