"""A Kiro look-alike HTTP server for tests, benchmarks and demo mode (never calls AWS).

::

    from ki2api.simulator import SimulatorServer, text_answer

    with SimulatorServer() as sim:
        sim.state.enqueue(text_answer("Hello!", chunks=3))
        ...  # point the gateway at sim.url

See ``scripts`` for the answer language, ``faults`` for named faults, ``validator`` for the
request rules, and ``state`` for what a test can set and read.
"""

from ki2api.simulator.accounts import SOCIAL_PROFILE_ARN, Account
from ki2api.simulator.app import CHAT_TARGET, MODELS_TARGET, create_simulator_app
from ki2api.simulator.default_model import SIMULATOR_TAG, Prompt, default_answer
from ki2api.simulator.faults import FAULTS, RANDOM_FAULTS, Fault, get_fault, http_error, in_stream
from ki2api.simulator.scripts import (
    ConnectionDrop,
    CorruptCrc,
    CutMidFrame,
    Delay,
    Event,
    ExceptionFrame,
    Flood,
    Garbage,
    HttpError,
    Raw,
    Script,
    SlowFirstByte,
    Stall,
    ToolCall,
    capture,
    capture_bytes,
    capture_names,
    context_usage_event,
    message_metadata_event,
    metadata_event,
    metering_event,
    parallel_tool_use_answer,
    text_answer,
    tool_use_answer,
)
from ki2api.simulator.server import SimulatorServer
from ki2api.simulator.state import RefreshCall, RequestRecord, SimulatorState
from ki2api.simulator.validator import KNOWN_MODEL_IDS, Refusal, check_request, validate_request

__all__ = [
    "CHAT_TARGET",
    "FAULTS",
    "KNOWN_MODEL_IDS",
    "MODELS_TARGET",
    "RANDOM_FAULTS",
    "SIMULATOR_TAG",
    "SOCIAL_PROFILE_ARN",
    "Account",
    "ConnectionDrop",
    "CorruptCrc",
    "CutMidFrame",
    "Delay",
    "Event",
    "ExceptionFrame",
    "Fault",
    "Flood",
    "Garbage",
    "HttpError",
    "Prompt",
    "Raw",
    "RefreshCall",
    "Refusal",
    "RequestRecord",
    "Script",
    "SimulatorServer",
    "SimulatorState",
    "SlowFirstByte",
    "Stall",
    "ToolCall",
    "capture",
    "capture_bytes",
    "capture_names",
    "check_request",
    "context_usage_event",
    "create_simulator_app",
    "default_answer",
    "get_fault",
    "http_error",
    "in_stream",
    "message_metadata_event",
    "metadata_event",
    "metering_event",
    "parallel_tool_use_answer",
    "text_answer",
    "tool_use_answer",
    "validate_request",
]
