"""The error tree every layer speaks.

Adapters translate library exceptions (botocore, tomllib, pydantic) into these, chained with ``from``, so nothing
above the adapters needs to know which library failed. Each error says whether retrying can help
(``temporary``) and which process exit code the CLI maps it to (DESIGN §8).
"""

from __future__ import annotations

EX_OK = 0
EX_FAILED = 1  # operation failed or was refused
EX_USAGE = 2
EX_UNAVAILABLE = 69  # AWS unreachable
EX_CONFIG = 78  # invalid configuration


class MonitorError(Exception):
    """Base of every error we raise on purpose; its message is meant for an operator."""

    exit_code = EX_FAILED
    temporary = False


class ConfigError(MonitorError):
    """The configuration file or an override is missing, malformed or invalid."""

    exit_code = EX_CONFIG


class InvalidInput(MonitorError):
    """An operator-supplied value (workset id, priority, bucket...) is not acceptable."""


class NotFound(MonitorError):
    """The workset (or table) does not exist."""


class IllegalTransition(MonitorError):
    """The transition table refuses this action in the workset's current state."""

    def __init__(self, message: str, *, state: str, action: str) -> None:
        super().__init__(message)
        self.state = state
        self.action = action


class Conflict(MonitorError):
    """A conditional write lost: someone else changed the item since we read it."""

    temporary = True


class LeaseLost(Conflict):
    """A fenced write was refused because our lease token is no longer on the item."""

    temporary = False


class Paused(MonitorError):
    """A claim was refused because intake is paused fleet-wide (``workset-monitor pause``)."""


class FleetFull(MonitorError):
    """A claim was refused because ``run.max_fleet_concurrent`` worksets are already in progress fleet-wide."""

    temporary = True


class SchemaMismatch(MonitorError):
    """An existing table does not have the keys or index this program needs."""


class CorruptItem(MonitorError):
    """An item in the table cannot be read: an attribute is missing, of the wrong type (a fraction where an integer
    belongs) or not a known value. Listings leave it out (the daemon logs it once); a read of it reports this."""

    def __init__(self, *, table: str, key: str, attribute: str, problem: str) -> None:
        super().__init__(f"corrupt item in table {table} ({key}): attribute {attribute} {problem}")
        self.table, self.key, self.attribute, self.problem = table, key, attribute, problem


class AwsError(MonitorError):
    """AWS refused or failed a call in a way retrying will not fix (access denied, validation)."""


class AwsTemporaryError(AwsError):
    """Throttling or a server error that outlived botocore's own retries."""

    temporary = True


class AwsUnavailable(AwsError):
    """AWS cannot be reached at all: no route, no endpoint, or no credentials."""

    exit_code = EX_UNAVAILABLE
    temporary = True


class DeliveryError(MonitorError):
    """A notification channel refused or failed a message."""

    def __init__(self, message: str, *, temporary: bool, retry_after_s: float | None = None) -> None:
        super().__init__(message)
        self.temporary = temporary
        self.retry_after_s = retry_after_s
