"""The few Redis commands :class:`attune.experiments.state.StateStore` uses, in memory (unit
tests need no services; ``tests/integration/experiments`` runs the same code on real Redis)."""

from __future__ import annotations

from typing import Any


class FakePipeline:
    def __init__(self, r: FakeRedis) -> None:
        self.r = r
        self.queued: list[tuple[str, tuple[Any, ...]]] = []
        self.buffering = False

    def __enter__(self) -> FakePipeline:
        return self

    def __exit__(self, *exc: object) -> None:
        self.queued.clear()

    def watch(self, *keys: str) -> None:
        self.r.watched_version = self.r.version

    def unwatch(self) -> None:
        pass

    def multi(self) -> None:
        self.buffering = True

    def __getattr__(self, name: str) -> Any:
        method = getattr(self.r, name)

        def call(*args: Any) -> Any:
            if self.buffering:
                self.queued.append((name, args))
                return self
            return method(*args)

        return call

    def execute(self) -> list[Any]:
        if self.r.interfere is not None:  # a concurrent writer between WATCH and EXEC
            interfere, self.r.interfere = self.r.interfere, None
            interfere(self.r)
        if self.r.version != self.r.watched_version:
            import redis

            self.queued.clear()
            self.buffering = False
            raise redis.WatchError("watched key changed")
        out = [getattr(self.r, name)(*args) for name, args in self.queued]
        self.queued.clear()
        return out


class FakeRedis:
    def __init__(self) -> None:
        self.hashes: dict[str, dict[bytes, bytes]] = {}
        self.lists: dict[str, list[bytes]] = {}
        self.version = 0
        self.watched_version = 0
        self.interfere: Any = None

    @staticmethod
    def _b(v: Any) -> bytes:
        return v if isinstance(v, bytes) else str(v).encode()

    def hgetall(self, key: str) -> dict[bytes, bytes]:
        return dict(self.hashes.get(key, {}))

    def hset(self, key: str, field: str, value: str) -> int:
        self.version += 1
        self.hashes.setdefault(key, {})[self._b(field)] = self._b(value)
        return 1

    def rpush(self, key: str, value: str) -> int:
        self.version += 1
        self.lists.setdefault(key, []).append(self._b(value))
        return len(self.lists[key])

    def lrange(self, key: str, start: int, stop: int) -> list[bytes]:
        items = self.lists.get(key, [])
        return items[start:] if stop == -1 else items[start : stop + 1]

    def pipeline(self, transaction: bool = True) -> FakePipeline:
        return FakePipeline(self)
