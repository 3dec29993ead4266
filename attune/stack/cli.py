"""``attune stack up | down | topics | status`` (wired in :mod:`attune.cli`)."""

from __future__ import annotations

import argparse
import json
import sys

from attune.config import AttuneConfig
from attune.stack import StackError, component_status, create_topics, stack_down, stack_up


def cmd_up(cfg: AttuneConfig, args: argparse.Namespace) -> int:
    try:
        stack_up(cfg)
    except StackError as exc:
        print(f"attune stack up: {exc}", file=sys.stderr)
        return 1
    return 0


def cmd_down(cfg: AttuneConfig, args: argparse.Namespace) -> int:
    try:
        stack_down(cfg)
    except StackError as exc:
        print(f"attune stack down: {exc}", file=sys.stderr)
        return 1
    return 0


def cmd_topics(cfg: AttuneConfig, args: argparse.Namespace) -> int:
    """Create the declared topics on whatever broker ``kafka.bootstrap_servers`` names (used by
    docker/compose.yaml, where Kafka is not started by attune)."""
    try:
        create_topics(cfg)
    except StackError as exc:
        print(f"attune stack topics: {exc}", file=sys.stderr)
        return 1
    return 0


def cmd_status(cfg: AttuneConfig, args: argparse.Namespace) -> int:
    try:
        statuses = component_status(cfg)
    except StackError as exc:
        print(f"attune stack status: {exc}", file=sys.stderr)
        return 1
    if getattr(args, "json", False):
        print(json.dumps([s.as_dict() for s in statuses], indent=2))
    else:
        width = max(len(s.component) for s in statuses)
        addr_width = max(len(s.address) for s in statuses)
        for s in statuses:
            health = "up" if s.healthy else "DOWN"
            print(f"{s.component:<{width}}  {s.address:<{addr_width}}  {health:<4}  {s.detail}")
    return 0 if all(s.healthy for s in statuses) else 1
