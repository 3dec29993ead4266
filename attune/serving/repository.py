"""Model versions on disk -> loaded servables: discovery, loading, atomic swap, unloading.

The :class:`ModelManager` keeps, for every configured model, the map of its *available*
versions. A poll thread (every ``poll_interval_s``) re-reads the model list (the model config
file, or the repository) and each model's base path, and reconciles:

1. versions the policy wants that are not loaded are loaded completely (SavedModel restored,
   warm-up requests run) while the old versions keep serving;
2. the new version is published by replacing the model's version map with a new dict in one
   assignment, so a request sees either the old map or the new one, never a half-built one;
3. versions no longer wanted are then removed from the map the same way and closed. A request
   that already picked the old version holds a reference to it and finishes on it; the version
   is freed when the last such request ends. Old versions are kept until a wanted version is
   available (TF Serving's availability-preserving policy), unless their folder was deleted.

A version folder counts once it is complete: its name is an integer and it holds
``saved_model.pb``. Temporary folders (``.tmp-*``, any non-integer name) and integer folders
without ``saved_model.pb`` (still being written by a non-atomic writer) are ignored. A version
that fails to load is reported (state ``END`` with the error, as TF Serving does) and retried only
when its ``saved_model.pb`` changes.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from attune.config import ConfigError
from attune.model_repository import version_folders
from attune.serving.config import ModelEntry
from attune.serving.errors import Code, invalid_argument, not_found
from attune.serving.servable import Servable, load_servable, saved_model_file

log = logging.getLogger(__name__)

MAX_STATES_PER_MODEL = 50

# ModelVersionStatus.State of tensorflow_serving/apis/get_model_status.proto
START, LOADING, AVAILABLE, UNLOADING, END = "START", "LOADING", "AVAILABLE", "UNLOADING", "END"


@dataclass(frozen=True)
class VersionStatus:
    state: str
    error_code: Code = Code.OK
    error_message: str = ""


class Source(Protocol):
    """Where the list of models comes from (a config file, the repository, a reload RPC)."""

    def read(self) -> list[ModelEntry]: ...

    def describe(self) -> str: ...


class StaticSource:
    def __init__(self, entries: list[ModelEntry], origin: str = "a reload request") -> None:
        self.entries = entries
        self.origin = origin

    def read(self) -> list[ModelEntry]:
        return self.entries

    def describe(self) -> str:
        return self.origin


class ConfigFileSource:
    """A TF Serving model config file, re-read when it changes."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._stamp: tuple[int, int] | None = None
        self._entries: list[ModelEntry] = []

    def read(self) -> list[ModelEntry]:
        from attune.serving.config import read_model_config_file

        try:
            st = self.path.stat()
        except OSError:
            raise ConfigError(f"model config file {self.path} does not exist") from None
        stamp = (st.st_mtime_ns, st.st_size)
        if stamp != self._stamp:
            self._entries = read_model_config_file(self.path)
            self._stamp = stamp
        return self._entries

    def describe(self) -> str:
        return f"model config file {self.path}"


class RepositorySource:
    """Every model folder of the model repository, at its promoted (else latest) version."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def read(self) -> list[ModelEntry]:
        from attune.serving.config import discover_models

        return discover_models(self.root)

    def describe(self) -> str:
        return f"model repository {self.root}"


def scan_versions(base_path: Path) -> dict[int, Path]:
    """The complete versions in a model's base path: ``{version: folder}``.

    The repository's version folders (:func:`attune.model_repository.version_folders`) that
    hold a SavedModel; one without is still being written by a non-atomic writer.
    """
    return {
        version: folder
        for version, folder in version_folders(base_path).items()
        if saved_model_file(folder) is not None
    }


def _fingerprint(folder: Path) -> str:
    path = saved_model_file(folder)
    if path is None:
        return ""
    st = path.stat()
    return f"{st.st_mtime_ns}:{st.st_size}"


class _Model:
    """A model's mutable record. ``available`` and ``states`` are replaced, never mutated, so
    readers on other threads always see a consistent map."""

    def __init__(self, entry: ModelEntry) -> None:
        self.entry = entry
        self.available: dict[int, Servable] = {}
        self.states: dict[int, VersionStatus] = {}
        self.failed: dict[int, str] = {}  # version -> fingerprint of the attempt that failed

    def set_state(self, version: int, status: VersionStatus) -> None:
        states = dict(self.states)
        states[version] = status
        if len(states) > MAX_STATES_PER_MODEL:  # forget the oldest ended versions
            for v in sorted(states):
                if len(states) <= MAX_STATES_PER_MODEL:
                    break
                if states[v].state == END:
                    del states[v]
        self.states = states


Loader = Callable[[str, int, Path], Servable]
EventHook = Callable[[str, str, int, float], None]  # (model, event, version, seconds)


class ModelManager:
    """Serves the versions a :class:`Source` asks for; swaps them without failing requests."""

    def __init__(
        self,
        source: Source,
        *,
        loader: Loader = load_servable,
        poll_interval_s: float = 1.0,
        on_event: EventHook | None = None,
    ) -> None:
        self._source = source
        self._loader = loader
        self.poll_interval_s = poll_interval_s
        self._on_event = on_event
        self._models: dict[str, _Model] = {}  # replaced, never mutated
        self._lock = threading.Lock()  # one reconciliation at a time
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._last_source_error: str | None = None

    # lifecycle ----------------------------------------------------------------------------
    def start(self) -> None:
        """Load what the source asks for (errors in the source are raised), then poll."""
        self.poll_once(raise_errors=True)
        self._thread = threading.Thread(target=self._poll_loop, name="model-poll", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=60)
        with self._lock:
            models, self._models = self._models, {}
            for model in models.values():
                for servable in model.available.values():
                    servable.close()

    def _poll_loop(self) -> None:
        while not self._stop.wait(self.poll_interval_s):
            try:
                self.poll_once()
            except Exception:
                log.exception("model poll failed; retrying in %.1f s", self.poll_interval_s)

    def set_source(self, source: Source) -> None:
        """Serve what ``source`` lists from now on (a reload request); raises on bad config."""
        with self._lock:
            entries = source.read()
            self._source = source
            self._apply(entries)

    def poll_once(self, raise_errors: bool = False) -> None:
        with self._lock:
            try:
                entries = self._source.read()
            except ConfigError as exc:
                if raise_errors:
                    raise
                if str(exc) != self._last_source_error:
                    log.error("%s; still serving the previous configuration", exc)
                    self._last_source_error = str(exc)
                return
            self._last_source_error = None
            self._apply(entries)

    # reconciliation (under self._lock) ----------------------------------------------------
    def _apply(self, entries: list[ModelEntry]) -> None:
        wanted = {e.name: e for e in entries}
        models = dict(self._models)
        for name in [n for n in models if n not in wanted]:
            log.info("model %s is no longer configured: unloading it", name)
            self._unload_all(models.pop(name))
        for name, entry in wanted.items():
            model = models.get(name)
            if model is None:
                model = models[name] = _Model(entry)
                log.info(
                    "serving model %s from %s (versions: %s%s)",
                    name,
                    entry.base_path,
                    entry.policy.describe(),
                    f", labels {dict(entry.labels)}" if entry.labels else "",
                )
            elif model.entry != entry:
                log.info("model %s: configuration changed (%s)", name, entry.policy.describe())
                model.entry = entry
            self._models = dict(models)  # a new model is visible (loading) from now on
            self._reconcile(model)
        self._models = models

    def _reconcile(self, model: _Model) -> None:
        entry = model.entry
        on_disk = scan_versions(entry.base_path)
        wanted = entry.policy.select(on_disk)
        for version in sorted(wanted - set(model.available)):
            path = on_disk[version]
            fingerprint = _fingerprint(path)
            if model.failed.get(version) == fingerprint:
                continue  # failed before and unchanged since
            self._load(model, version, path, fingerprint)
        any_wanted_available = any(v in model.available for v in wanted)
        for version in sorted(set(model.available) - wanted):
            if any_wanted_available or version not in on_disk:
                self._unload(model, version)

    def _load(self, model: _Model, version: int, path: Path, fingerprint: str) -> None:
        name = model.entry.name
        model.set_state(version, VersionStatus(LOADING))
        log.info("loading %s version %d from %s", name, version, path)
        started = time.perf_counter()
        try:
            servable = self._loader(name, version, path)
        except Exception as exc:
            model.failed[version] = fingerprint
            message = f"loading {path} failed: {type(exc).__name__}: {exc}"
            model.set_state(version, VersionStatus(END, Code.UNKNOWN, message))
            log.error("%s version %d: %s", name, version, message)
            self._event(name, "load_failed", version, time.perf_counter() - started)
            return
        model.failed.pop(version, None)
        available = dict(model.available)
        available[version] = servable
        model.available = available  # the atomic swap: requests see the new version from here
        model.set_state(version, VersionStatus(AVAILABLE))
        seconds = time.perf_counter() - started
        log.info("%s version %d is available (loaded in %.2f s)", name, version, seconds)
        self._event(name, "loaded", version, seconds)

    def _unload(self, model: _Model, version: int) -> None:
        name = model.entry.name
        servable = model.available[version]
        available = dict(model.available)
        del available[version]
        model.available = available  # new requests no longer see this version
        model.set_state(version, VersionStatus(UNLOADING))
        started = time.perf_counter()
        servable.close()  # requests already on it finish; batch queues drain first
        model.set_state(version, VersionStatus(END))
        log.info("%s version %d unloaded", name, version)
        self._event(name, "unloaded", version, time.perf_counter() - started)

    def _unload_all(self, model: _Model) -> None:
        for version in sorted(model.available):
            self._unload(model, version)

    def _event(self, model: str, event: str, version: int, seconds: float) -> None:
        if self._on_event is not None:
            self._on_event(model, event, version, seconds)

    # queries (any thread) -----------------------------------------------------------------
    def model_names(self) -> list[str]:
        return sorted(self._models)

    def knows(self, name: str) -> bool:
        return name in self._models

    def available_versions(self, name: str) -> list[int]:
        model = self._models.get(name)
        return sorted(model.available) if model else []

    def resolve_label(self, name: str, label: str) -> int:
        model = self._models.get(name)
        version = model.entry.labels.get(label) if model else None
        if version is None:
            raise invalid_argument(f"Unrecognized servable version label: {label}")
        return version

    def resolve(self, name: str, version: int | None = None, label: str | None = None) -> Servable:
        """The servable a request addresses: a version, a label, or the latest available."""
        if label is not None:
            version = self.resolve_label(name, label)
        model = self._models.get(name)
        available = model.available if model else {}
        if version is None:
            if not available:
                raise not_found(f"Servable not found for request: Latest({name})")
            return available[max(available)]
        servable = available.get(version)
        if servable is None:
            raise not_found(f"Servable not found for request: Specific({name}, {version})")
        return servable

    def status(
        self, name: str, version: int | None = None, label: str | None = None
    ) -> list[tuple[int, VersionStatus]]:
        """States of a model's versions, newest first (TF Serving's GetModelStatus)."""
        if not name:
            raise invalid_argument("Missing model name in request.")
        if label is not None:
            version = self.resolve_label(name, label)
        model = self._models.get(name)
        states = model.states if model else {}
        if version is not None:
            if version not in states:
                raise not_found(f"Could not find version {version} of model {name}")
            return [(version, states[version])]
        if not states:
            raise not_found(f"Could not find any versions of model {name}")
        return sorted(states.items(), reverse=True)

    def describe(self) -> dict[str, Any]:
        return {
            name: {
                "base_path": str(m.entry.base_path),
                "policy": m.entry.policy.describe(),
                "labels": dict(m.entry.labels),
                "available": sorted(m.available),
            }
            for name, m in sorted(self._models.items())
        }
