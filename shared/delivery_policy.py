"""When to try a failed delivery (SR C-STORE or HL7 ORU) again, and when to give up.

Pure functions, no Celery: the delivery task records the outcome on its `deliveries` row
(attempts, next_attempt_at, last_error, state) and whatever schedules work reads that row, so a
broker restart loses nothing.

Policy: exponential backoff with *full jitter* (delay drawn uniformly from
[0, min(cap, base · 2^(attempts-1))]) so that a RIS or PACS coming back after an outage is not
hit by every queued message at the same instant; at most `max_attempts` tries, then 'failed'
(visible in the UI; an admin may retry). A permanent error (AR, an invalid message) fails at once:
sending the same bytes again cannot succeed, and it must not hold a worker slot for hours.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Literal


class DeliveryError(Exception):
    """A delivery attempt that did not succeed. `transient` says whether retrying can help.

    `ack_code` is what the peer answered (MSA-1, or a DIMSE status in hex) when it answered at
    all; `detail` is a short, PHI-free text for `deliveries.last_error`.
    """

    transient: bool = True

    def __init__(self, detail: str, *, ack_code: str | None = None) -> None:
        super().__init__(detail)
        self.detail = detail
        self.ack_code = ack_code


@dataclass(frozen=True)
class RetryPolicy:
    base_s: float = 5.0
    cap_s: float = 15 * 60.0
    max_attempts: int = 10

    def __post_init__(self) -> None:
        if self.base_s <= 0 or self.cap_s < self.base_s or self.max_attempts < 1:
            raise ValueError(f"invalid retry policy {self}")

    def max_delay_s(self, attempts: int) -> float:
        """Upper bound of the wait after the `attempts`-th failure (1-based)."""
        exponent = max(attempts - 1, 0)
        # min() before the power would overflow for large attempt counts.
        return self.cap_s if exponent >= 64 else min(self.cap_s, self.base_s * 2.0**exponent)

    def delay_s(self, attempts: int, rng: random.Random | None = None) -> float:
        return (rng or random).uniform(0.0, self.max_delay_s(attempts))


DEFAULT_POLICY = RetryPolicy()


@dataclass(frozen=True)
class RetryDecision:
    state: Literal["retrying", "failed"]
    next_attempt_at: datetime | None  # None when failed


def after_failure(
    attempts: int,
    *,
    transient: bool,
    now: datetime,
    policy: RetryPolicy = DEFAULT_POLICY,
    rng: random.Random | None = None,
) -> RetryDecision:
    """What to record after a failed attempt. `attempts` counts every attempt made so far,
    including the one that just failed."""
    if not transient or attempts >= policy.max_attempts:
        return RetryDecision("failed", None)
    return RetryDecision("retrying", now + timedelta(seconds=policy.delay_s(attempts, rng)))


def next_attempt_at(
    attempts: int,
    now: datetime,
    policy: RetryPolicy = DEFAULT_POLICY,
    rng: random.Random | None = None,
) -> datetime | None:
    """Next try after a transient failure, or None when the attempt limit is reached."""
    return after_failure(attempts, transient=True, now=now, policy=policy, rng=rng).next_attempt_at
