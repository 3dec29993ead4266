"""``attune demo``: the platform end to end on the embedded defaults (grows with each issue).

Today it: starts the local stack (``attune.stack.stack_up``: Kafka, Redis, topics), starts the
collector as a child process (``attune serve collector``) and waits for ``/readyz``, replays
MovieTweetings 100K through it as fast as possible (publishing the catalog first), shows what
landed (``attune events summary``), and stops the collector (the stack stays up).

Re-running is idempotent: replayed event ids are deterministic, so before replaying the demo
reads the events topic and sends only the events whose ids are not there yet. A second run
sends nothing and shows the same counts; a run after an interrupted one completes it without
duplicates.
"""

from __future__ import annotations

import argparse
import time

from attune.config import AttuneConfig, ConfigError

DATASET = "movietweetings"


def _say(message: str) -> None:
    print(f"demo: {message}", flush=True)


def cmd_demo(cfg: AttuneConfig, args: argparse.Namespace) -> int:
    from attune.collector.process import collector_process
    from attune.events_cli import print_summary, summarize_events, summarize_keyed
    from attune.replay import dataset_events, print_replay_summary, replay
    from attune.secrets import ensure_write_key
    from attune.stack import stack_up

    start = time.monotonic()
    stack_up(cfg)
    write_key = ensure_write_key(cfg, "demo")

    limit = getattr(args, "limit", None)
    _, rows, events = dataset_events(cfg, DATASET, limit)
    wanted = {e["event_id"] for e in events}
    _say(f"checking which of the {len(wanted):,} {DATASET} events are already in Kafka")
    present: set[str] = set()
    summarize_events(
        cfg,
        progress=True,
        on_event=lambda e: present.add(e["event_id"]) if e.get("event_id") in wanted else None,
    )
    missing = len(wanted) - len(present)

    if missing == 0:
        _say(f"all {len(wanted):,} events of {DATASET} are already in the topic: not replaying")
    else:
        log_path = cfg.log_dir / "collector-demo.log"
        _say(f"starting the collector (log {log_path})")
        with collector_process(cfg, log_path=log_path) as url:
            _say(f"collector ready at {url}; replaying {missing:,} events")
            summary = replay(
                cfg, DATASET, url=url, write_key=write_key, limit=limit, skip_event_ids=present
            )
            print_replay_summary(summary)
        _say("collector stopped")
        if summary.failed or summary.rejected:
            raise ConfigError(
                f"the replay lost events: {summary.failed} failed, {summary.rejected} rejected; "
                f"see {log_path}"
            )

    _say("what landed:")
    landed: set[str] = set()
    summaries = {
        "events": summarize_events(
            cfg,
            progress=True,
            on_event=lambda e: landed.add(e["event_id"]) if e.get("event_id") in wanted else None,
        ),
        "catalog": summarize_keyed(cfg, "catalog"),
        "dead_letter": summarize_keyed(cfg, "dead_letter"),
    }
    print_summary(summaries)
    _say(
        f"{DATASET}: {rows:,} ratings -> {len(wanted):,} events ({rows:,} item_view + {rows:,} "
        f"rating); {len(landed):,} of them are in the topic; "
        f"done in {time.monotonic() - start:.0f} s"
    )
    if len(landed) != len(wanted):
        raise ConfigError(f"{len(wanted) - len(landed):,} events of {DATASET} did not land")
    return 0
