"""Worklist priority (DESIGN.md §6, radiology worklist).

``priority = max(order priority, AI urgency)``, where the AI urgency is the highest urgency class of
the positive findings of the study's reads; and every study reaches :attr:`Priority.STAT` once it
has waited ``worklist_max_wait_minutes`` since it arrived, so that an AI-negative study never waits
without limit. AI only re-orders: a negative or missing read never lowers the order priority and
never takes a study off the list.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable
from dataclasses import dataclass
from enum import IntEnum


class Priority(IntEnum):
    ROUTINE = 0
    URGENT = 1
    STAT = 2

    @classmethod
    def clamp(cls, value: int) -> Priority:
        """Any stored integer as a priority (out-of-range values are pinned to the ends)."""
        return cls(min(max(int(value), cls.ROUTINE), cls.STAT))

    @property
    def label(self) -> str:
        return self.name


@dataclass(frozen=True)
class PriorityDecision:
    priority: Priority
    #: Why, e.g. "AI: consolidation", "order STAT", "waited > 120 min" (several joined by "; ").
    reason: str
    waiting_minutes: float


@dataclass(frozen=True)
class AIUrgency:
    """One positive finding's contribution."""

    label: str
    urgency: int


def decide_priority(
    *,
    order_priority: int,
    ai_urgencies: Iterable[AIUrgency],
    received_at: dt.datetime,
    now: dt.datetime,
    max_wait_minutes: float,
) -> PriorityDecision:
    """The study's priority and every reason that raises it to that level."""
    waiting = max(0.0, (now - received_at).total_seconds() / 60.0)
    order = Priority.clamp(order_priority)
    ai = [(Priority.clamp(u.urgency), u.label) for u in ai_urgencies if u.urgency > Priority.ROUTINE]
    ai_level = max((level for level, _ in ai), default=Priority.ROUTINE)
    waited_out = waiting >= max_wait_minutes

    priority = Priority.STAT if waited_out else max(order, ai_level)
    reasons: list[str] = []
    if order == priority and order > Priority.ROUTINE:
        reasons.append(f"order {order.label}")
    if ai_level == priority and ai_level > Priority.ROUTINE:
        labels = sorted({label for level, label in ai if level == ai_level})
        reasons.append("AI: " + ", ".join(labels))
    if waited_out and not reasons:
        reasons.append(f"waited > {max_wait_minutes:g} min")
    if not reasons:
        reasons.append("routine")
    return PriorityDecision(priority=priority, reason="; ".join(reasons), waiting_minutes=waiting)
