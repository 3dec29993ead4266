"""The Redis key schema: the name of every key attune keeps in Redis, written once.

Every process that writes or reads Redis (the speed layer, the batch views, the collector, the
personalization API, erasure, the benchmarks and tests) takes its key names from :class:`Keys`;
the online store's Lua scripts receive them through their parameters (:class:`KeyTemplate`), so
no other module spells a key out. ``docs/online_store.md`` shows the same table for people.

``P`` is ``speed.online_store.key_prefix`` (``att`` by default). ``{u}`` is a pseudonymized
subject: the HMAC of the app's user id, else of the anonymous id (the events topic's key). Ids
sit in braces, Redis Cluster's hash tag, so all keys of one user (or one item) share a slot;
and every key of a user starts with ``P:u:{u}:``, so erasure deletes them all by that prefix
(:meth:`Keys.user_glob`). Times are epoch milliseconds. "user TTL" is
``speed.online_store.user_ttl`` (90 days), renewed by every write; "views TTL" is
``batch.views.ttl``.

Per user (``P:u:{u}:...``):

====================  ======  ===========================  ====================  ==========
key                   type    written by                   read by               expires
====================  ======  ===========================  ====================  ==========
``recent``            zset    write script                 feature reader        user TTL
``recent_meta``       hash    write script                 feature reader        user TTL
``aff``               hash    write script                 feature reader        user TTL
``counters``          hash    write script                 feature reader        user TTL
``session``           hash    write script                 feature reader        user TTL
``dismissed``         zset    write script; API feedback   feature reader        user TTL
``neg``               hash    write script                 feature reader        user TTL
``undo``              zset    write script; API feedback   feature reader        user TTL
``applied``           zset    write script                 write script          user TTL
``meta``              hash    write script                 write script          user TTL
``outbox``            hash    write script                 online store writer   user TTL
``recs``              zset    batch views stage            API (batch fallback)  views TTL
``batch``             hash    batch views stage            API (segment)         views TTL
``suppressed``        zset    API feedback                 API (rules)           user TTL
``msg:<message id>``  zset    API frequency cap script     the same script       cap window
``exp:<experiment>``  string  API (a bandit's first pick)  API (sticky variant)  user TTL
``consent``           string  collector (consent updates)  collector, API        never
====================  ======  ===========================  ====================  ==========

Per item (``P:i:{item}:...``) and the aggregates (``P:{agg}:...``):

================================  ====  =================  ======================  ===========
key                               type  written by         read by                 expires
================================  ====  =================  ======================  ===========
``P:i:{item}:meta``               hash  catalog mirror     write script, API       never
``P:i:{item}:similar``            zset  batch views stage  API (neighbours)        views TTL
``P:i:{item}:bought_with``        zset  batch views stage  API (similar items)     views TTL
``P:i:{item}:knn``                zset  batch views stage  API (neighbours)        views TTL
``P:i:{item}:vec``                str   new-item vectors   API (new items)         never
``P:new_items``                   zset  new-item vectors   API (new items)         never
``P:new_items:meta``              hash  new-item vectors   API, speed status       never
``P:{agg}:i:<item>:stats``        hash  aggregate script   ``read_item_stats``     never
``P:{agg}:popular``               zset  aggregate script   API, ``read_popular``   never
``P:{agg}:trend:<w>:<n>``         zset  aggregate script   trending script         2 windows
``P:{agg}:trending:<w>``          zset  trending script    API, ``read_trending``  2 windows
``P:{agg}:meta``                  hash  both scripts       trending script         never
``P:{agg}:seen``                  zset  aggregate script   aggregate script        window
``P:seg:<segment>:popular``       zset  batch views stage  (no reader yet)         next run
``P:views``                       hash  batch views stage  ``attune demo``         never
``P:{exp}:state``                 hash  experiments CLI    API, experiments CLI    never
``P:erased:{user}``               str   privacy erase      API (query user id)     model block
``P:{exp}:history``               list  experiments CLI    experiments CLI         never
``P:{agg}:exp:live:<d>``          hash  aggregate script   ``read_live_counts``    3 days
``P:{agg}:exp:live:<d>:users:*``  hll   aggregate script   ``read_live_counts``    3 days
``P:bandit:{<policy>}``           hash  bandit script      bandit policies         never
================================  ====  =================  ======================  ===========

``<d>`` is a UTC event date (``YYYY-MM-DD``); ``users:*`` is one HyperLogLog per
``<experiment>|<variant>`` (:mod:`attune.experiments.live`). ``<policy>`` names one decision
point of a bandit (``slot:<slot>``, ``messages``, ``experiment:<id>``); the hash holds its
arms' impressions, clicks and linear statistics (:mod:`attune.bandits.store`, "bandit script"
is its update script).

"write script", "aggregate script" and "trending script" are the online store's Lua scripts,
run by the speed layer and by the batch views stage when it re-applies what the stream missed.
The write script touches one user's keys only (one hash slot); what its events add to the
aggregates waits in the user's ``outbox`` until the aggregate script, whose keys all carry the
``{agg}`` hash tag (one slot), has counted it (:mod:`attune.online_store`, "Redis Cluster").
"feature reader" is :func:`attune.online_store.read_user_features` (the personalization API,
the drift report);
"catalog mirror" is fed by the speed layer (catalog topic) and the batch views stage;
"new-item vectors" is the speed layer's :class:`speed_layer.catalog.NewItemVectors`: the
retrieval vectors of catalog items the served retrieval model does not know, computed by the
model server from their content (``docs/online_store.md``, "New items").

What each key holds is documented in ``docs/online_store.md`` (features), ``docs/batch.md``
(views), ``docs/api.md`` (feedback, caps) and ``docs/collector.md`` (consent).

Consent moved. Before this module, the collector kept consent in ``consent:<subject>``, outside
the user's prefix, so erasing a user by prefix missed it. It now lives in ``P:u:{u}:consent``.
``attune store migrate-keys`` moves the old keys (:mod:`attune.ingest.consent`), and the
collector runs the same migration once per process: when it starts or, if Redis cannot be
reached then, before its first consent read; so nothing written by an older version is missed.
The API runs it when it starts too (and its feedback path, like the collector, before its first
read). That was chosen over reading the old key as a fallback on every
request: most subjects have no stored consent at all, so the fallback would double the keys of
every consent read for good, where the migration costs one SCAN per process start and nothing
afterwards. Erasure also deletes the user's old key, in case it was not migrated yet.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from attune.config import AttuneConfig

ONLINE_USER_KEYS = (
    "recent",
    "recent_meta",
    "aff",
    "counters",
    "session",
    "dismissed",
    "neg",
    "undo",
    "applied",
    "meta",
    "outbox",
)
"""The online store's per-user keys, in the order its write script receives them (``KEYS``)."""
ONLINE_FEATURE_KEYS = ONLINE_USER_KEYS[:7]
"""The per-user keys that hold features (deleted when personalization consent is withdrawn)."""
USER_KEYS = (*ONLINE_USER_KEYS, "recs", "batch", "suppressed", "consent")
"""Every per-user key with a fixed name. Message caps (``msg:<message id>``) and the variants
a bandit chose in an experiment (``exp:<experiment>``) are the per-user families with a variable
name; erasure finds them by the user's prefix."""
LEGACY_CONSENT_PREFIX = "consent:"
"""Where the collector kept consent before it moved under the user's prefix (shared by every
key prefix: it never carried one)."""

_GLOB_SPECIAL = frozenset("*?[]\\")


def glob_escape(text: str) -> str:
    """``text`` as a literal in a Redis ``SCAN MATCH`` / ``KEYS`` pattern."""
    return "".join("\\" + c if c in _GLOB_SPECIAL else c for c in text)


@dataclass(frozen=True)
class Keys:
    """Every Redis key name of one deployment (one key prefix). See the module docstring."""

    prefix: str = "att"

    @classmethod
    def from_config(cls, cfg: AttuneConfig) -> Keys:
        return cls(cfg.speed.online_store.key_prefix)

    # -- the aggregates: one hash slot ---------------------------------------------------------
    @property
    def agg_prefix(self) -> str:
        """What every aggregate key starts with: the ``{agg}`` hash tag puts them in one slot,
        so the aggregate and trending scripts can declare every key they touch."""
        return f"{self.prefix}:{{agg}}:"

    @property
    def agg_seen(self) -> str:
        """The interaction ids the aggregate script counted lately (by arrival time)."""
        return f"{self.agg_prefix}seen"

    # -- per user ---------------------------------------------------------------------------
    def user_prefix(self, user: str) -> str:
        """What every key of ``user`` starts with."""
        return f"{self.prefix}:u:{{{user}}}:"

    def user_glob(self, user: str) -> str:
        """SCAN pattern matching every key of ``user``, whatever characters the id holds."""
        return glob_escape(self.user_prefix(user)) + "*"

    def user_key(self, user: str, name: str) -> str:
        """The per-user key ``name`` (one of :data:`USER_KEYS`) of ``user``."""
        if name not in USER_KEYS:
            raise ValueError(f"unknown user key {name!r}; expected one of {USER_KEYS}")
        return self.user_prefix(user) + name

    def online_user_keys(self, user: str) -> list[str]:
        """The online store's keys of ``user``, in the write script's ``KEYS`` order."""
        return [self.user_key(user, name) for name in ONLINE_USER_KEYS]

    def user_keys(self, user: str) -> list[str]:
        """Every fixed-name key of ``user`` (:data:`USER_KEYS`)."""
        return [self.user_key(user, name) for name in USER_KEYS]

    def user_recs(self, user: str) -> str:
        return self.user_key(user, "recs")

    def user_batch(self, user: str) -> str:
        return self.user_key(user, "batch")

    def suppressed(self, user: str) -> str:
        return self.user_key(user, "suppressed")

    def message_cap(self, user: str, message_id: str) -> str:
        return f"{self.user_prefix(user)}msg:{message_id}"

    def user_experiment_variant(self, user: str, experiment: str) -> str:
        """The variant a bandit chose for ``user`` in ``experiment`` (JSON: variant,
        propensity, decision id, first exposure ms; :mod:`attune.experiments.bandit`)."""
        return f"{self.user_prefix(user)}exp:{experiment}"

    def consent(self, subject: str) -> str:
        return self.user_key(subject, "consent")

    @staticmethod
    def legacy_consent(subject: str) -> str:
        """The key older versions kept ``subject``'s consent in (see the module docstring)."""
        return LEGACY_CONSENT_PREFIX + subject

    # -- per item ---------------------------------------------------------------------------
    def item_stats(self, item_id: str) -> str:
        """An item's engagements by type: an aggregate, in the ``{agg}`` slot."""
        return f"{self.agg_prefix}i:{item_id}:stats"

    def item_meta(self, item_id: str) -> str:
        return f"{self.prefix}:i:{{{item_id}}}:meta"

    def item_similar(self, item_id: str) -> str:
        return f"{self.prefix}:i:{{{item_id}}}:similar"

    def item_bought_with(self, item_id: str) -> str:
        return f"{self.prefix}:i:{{{item_id}}}:bought_with"

    def erased(self, user: str) -> str:
        """Set when ``user`` was erased (value: erasure time, ms): the API stops sending their
        id to the models, whose id vocabulary still holds them until the next model. Outside
        the user's prefix so that deleting the user's keys keeps it."""
        return f"{self.prefix}:erased:{{{user}}}"

    def item_knn(self, item_id: str) -> str:
        """Items engaged with by the same users (item-kNN, shrunk cosine)."""
        return f"{self.prefix}:i:{{{item_id}}}:knn"

    def item_vector(self, item_id: str) -> str:
        """The retrieval vector of an item the served model does not know (float32,
        little-endian bytes), computed from its content by the model server."""
        return f"{self.prefix}:i:{{{item_id}}}:vec"

    @property
    def new_items(self) -> str:
        """Items with a vector in :meth:`item_vector` -> time (ms) it was written."""
        return f"{self.prefix}:new_items"

    @property
    def new_items_meta(self) -> str:
        """What the new-item vectors belong to: ``model``, ``version``, ``dim``,
        ``updated_ms``."""
        return f"{self.prefix}:new_items:meta"

    # -- global -----------------------------------------------------------------------------
    @property
    def popular(self) -> str:
        return f"{self.agg_prefix}popular"

    @property
    def meta(self) -> str:
        """The online store's global bookkeeping (latest event time, trending as-of)."""
        return f"{self.agg_prefix}meta"

    def trend_slice(self, window_s: int | str, slice_index: int | str) -> str:
        return f"{self.agg_prefix}trend:{window_s}:{slice_index}"

    def trending(self, window_s: int | str) -> str:
        return f"{self.agg_prefix}trending:{window_s}"

    def segment_popular(self, segment: str) -> str:
        return f"{self.prefix}:seg:{segment}:popular"

    @property
    def views_meta(self) -> str:
        """What the last batch views run wrote (``as_of``, counts)."""
        return f"{self.prefix}:views"

    @property
    def experiments_state(self) -> str:
        """Experiment id -> its running state as JSON (:mod:`attune.experiments.state`)."""
        return f"{self.prefix}:{{exp}}:state"

    @property
    def experiments_history(self) -> str:
        """Every start, forced re-start and stop of an experiment, oldest first (JSON)."""
        return f"{self.prefix}:{{exp}}:history"

    def experiment_live(self, day: str) -> str:
        """Today's partial counts (``day`` = ``YYYY-MM-DD``, UTC event date): field
        ``<experiment>|<variant>|<impressions|clicks|purchases>`` -> n
        (:mod:`attune.experiments.live`)."""
        return f"{self.agg_prefix}exp:live:{day}"

    def bandit(self, policy: str) -> str:
        """One bandit decision point's state (``policy``: ``slot:<slot>``, ``messages``):
        per arm impressions, clicks and linear statistics (:mod:`attune.bandits.store`)."""
        return f"{self.prefix}:bandit:{{{policy}}}"

    def bandit_history(self, policy: str) -> str:
        """A bandit policy's impressions and clicks per arm and hour, for the dashboard
        (fields ``<hour start, epoch ms>:n:<arm>`` / ``...:c:<arm>``; same hash slot)."""
        return f"{self.prefix}:bandit:{{{policy}}}:hist"

    def bandit_seen(self, policy: str) -> str:
        """The interaction ids the speed layer counted for a policy (zset id -> event time):
        each impression and click counts once (same hash slot as the state)."""
        return f"{self.prefix}:bandit:{{{policy}}}:seen"

    def experiment_live_users(self, day: str, experiment: str, variant: str) -> str:
        """HyperLogLog of the users a variant showed an impression to on ``day``."""
        return f"{self.agg_prefix}exp:live:{day}:users:{experiment}|{variant}"


_MARK = "\x00{}\x00"  # stands for an id while a builder is traced; never part of a key


@dataclass(frozen=True)
class KeyTemplate:
    """A family of keys that differ only in their ids: ``parts[0] + id1 + parts[1] + ...``.

    Made from a :class:`Keys` builder (:meth:`of`), so a Lua script (which gets ``parts`` as a
    JSON array), a SCAN pattern or a Spark executor builds the keys exactly as the builder does
    without stating the layout a second time.
    """

    parts: tuple[str, ...]

    @classmethod
    def of(cls, build: Callable[..., str], arity: int = 1) -> KeyTemplate:
        """Trace ``build`` (taking ``arity`` ids) into a template."""
        marks = [_MARK.format(i) for i in range(arity)]
        rest = build(*marks)
        parts = []
        for mark in marks:
            head, found, rest = rest.partition(mark)
            if not found:
                raise ValueError(f"{build!r} does not put each of its {arity} id(s) in the key")
            parts.append(head)
        parts.append(rest)
        return cls(tuple(parts))

    def key(self, *ids: str) -> str:
        if len(ids) != len(self.parts) - 1:
            raise ValueError(f"this template takes {len(self.parts) - 1} id(s), got {len(ids)}")
        out = [self.parts[0]]
        for value, part in zip(ids, self.parts[1:], strict=True):
            out += [value, part]
        return "".join(out)

    def glob(self) -> str:
        """SCAN pattern matching every key of the family."""
        return "*".join(glob_escape(p) for p in self.parts)

    def id_of(self, key: str | bytes) -> str | None:
        """The id of a one-id family's ``key``, or None when ``key`` is not of the family."""
        if len(self.parts) != 2:
            raise ValueError("id_of needs a template of one id")
        text = key.decode() if isinstance(key, bytes) else key
        head, tail = self.parts
        if len(text) < len(head) + len(tail) or not (text.startswith(head) and text.endswith(tail)):
            return None
        return text[len(head) : len(text) - len(tail)]
