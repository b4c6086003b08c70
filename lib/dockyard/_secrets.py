"""Secrets: values that never show, and the masker that hides them everywhere.

`Secret` values never show in a repr, log or event, and one `Masker` hides every known
secret value (and its quoted forms) wherever text leaves dockyard; `SecretBook` holds what
one manager knows of, to mask its Sentry events by value.
"""

from __future__ import annotations

import json
import re
import threading
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any
from urllib.parse import quote, quote_plus

from cachetools import LRUCache

__all__ = [
    "MASK",
    "Masker",
    "Secret",
    "SecretBook",
    "SecretEnv",
    "job_data_secrets",
    "reveal",
    "router_secret_values",
    "worker_secret_values",
]


MASK = "***"

# Worker variables whose values are secret (besides every project credential and JOB_DATA).
SECRET_ENV_KEYS = frozenset(
    {
        "DATABASE_URL",
        "DATABASE_CA_CERT",
        "CLAUDE_CODE_OAUTH_TOKEN",
        "CREDENTIAL_MASTER_KEY",
        "SENTRY_DSN",
        "REDIS_URL",
        "JOB_DATA",
        "WORKER_IMAGE_REGISTRY_PASSWORD",
    }
)
# A router variable whose name says it holds a secret, though dockyard never reads it.
_SECRET_NAME = re.compile(r"TOKEN|SECRET|PASSW|KEY|DSN|CREDENTIAL|AUTH|_URL$", re.IGNORECASE)
# Values shorter than this are masked only where they stand as a whole token: replacing
# every "42" or "abc" inside ordinary words and numbers would garble the output while
# hiding nothing (a value that short is guessed faster than it is read).
MIN_SUBSTRING_LENGTH = 4
# A router variable picked by its name alone must be at least this long to be masked.
MIN_ROUTER_NAMED_SECRET = 8
# Job-data strings shorter than this are ids and labels (already in names and logs), not secrets.
MIN_JOB_DATA_LEAF = 8
_WORD_CHARS = r"A-Za-z0-9_"
_BOOK_JOBS = 256  # jobs whose secrets a manager's Sentry events are masked against


@dataclass(frozen=True, slots=True, repr=False)
class Secret:
    """A secret string: `repr`, `str` and formatting show `***`; `.reveal()` gives the value.

    Sentry's serializer renders unknown objects through `repr`, so a `Secret` held in a
    frame's locals, a dataclass or a list never shows its value in an event.
    """

    _value: str

    def reveal(self) -> str:
        return self._value

    def __repr__(self) -> str:
        return f"Secret({MASK!r})"

    def __str__(self) -> str:
        return MASK

    def __format__(self, spec: str) -> str:
        return MASK

    def __len__(self) -> int:
        return len(self._value)


def reveal(value: str | Secret) -> str:
    """The plain value, whether given plain or as a `Secret`."""
    return value.reveal() if isinstance(value, Secret) else value


class SecretEnv(Mapping[str, Secret]):
    """A worker environment whose every value is a `Secret`; `reveal()` is the plain dict.

    Used from the moment the environment is built until the create call, which alone
    needs plain strings.
    """

    __slots__ = ("_items",)

    def __init__(self, items: Mapping[str, str | Secret] | None = None) -> None:
        self._items: dict[str, Secret] = {
            key: value if isinstance(value, Secret) else Secret(value)
            for key, value in (items or {}).items()
        }

    def __getitem__(self, key: str) -> Secret:
        return self._items[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self._items)

    def __len__(self) -> int:
        return len(self._items)

    def __repr__(self) -> str:
        return f"SecretEnv(keys={list(self._items)!r})"

    def reveal(self) -> dict[str, str]:
        return {key: value.reveal() for key, value in self._items.items()}


def _forms(value: str) -> set[str]:
    """The ways a value shows up in text: as is, URL-encoded, and escaped inside JSON."""
    return {
        value,
        quote(value, safe=""),
        quote(value),
        quote_plus(value),
        json.dumps(value)[1:-1],
        json.dumps(value, ensure_ascii=False)[1:-1],
    }


@dataclass(frozen=True)
class Masker:
    """Replaces known secret values (and their encoded forms) in text with `***`.

    The only place dockyard decides how a secret is hidden in output: log tails, Sentry
    events. Its pattern is compiled on first use (most workers' output is never read), and
    it is only read afterwards, so it is thread-safe.
    """

    values: frozenset[str] = field(repr=False)

    @cached_property
    def _pattern(self) -> re.Pattern[str] | None:
        long_forms: set[str] = set()
        short: set[str] = set()
        for value in self.values:
            if len(value) >= MIN_SUBSTRING_LENGTH:
                long_forms.update(_forms(value))
            elif value:
                short.add(value)
        parts = [re.escape(form) for form in sorted(long_forms, key=len, reverse=True)]
        parts += [
            rf"(?<![{_WORD_CHARS}]){re.escape(value)}(?![{_WORD_CHARS}])"
            for value in sorted(short, key=len, reverse=True)
        ]
        return re.compile("|".join(parts)) if parts else None

    @classmethod
    def of(cls, *groups: Iterable[str | Secret]) -> Masker:
        return cls(frozenset(reveal(value) for group in groups for value in group))

    def __repr__(self) -> str:
        return f"Masker({len(self.values)} values)"

    def __bool__(self) -> bool:
        return any(self.values)

    def merged(self, *others: Masker) -> Masker:
        return Masker(self.values.union(*(other.values for other in others)))

    def mask(self, text: str) -> str:
        if self._pattern is None or not text:
            return text
        return self._pattern.sub(MASK, text)

    def spans(self, text: str) -> list[tuple[int, int]]:
        """Where `mask` would replace: the `(start, end)` of each secret found in `text`."""
        if self._pattern is None or not text:
            return []
        return [match.span() for match in self._pattern.finditer(text)]

    def mask_deep(self, node: Any) -> Any:
        """Mask every string in a JSON-like tree (dicts, lists, strings), keys included."""
        if isinstance(node, str):
            return self.mask(node)
        if isinstance(node, dict):
            return {self.mask_deep(k): self.mask_deep(v) for k, v in node.items()}
        if isinstance(node, list | tuple):
            return [self.mask_deep(item) for item in node]
        return node


def worker_secret_values(env: Mapping[str, str | Secret]) -> list[str]:
    """The values in a worker environment that must never be echoed: service secrets,
    job data and every project credential listed in `CASCADE_CREDENTIAL_KEYS`."""
    keys = set(SECRET_ENV_KEYS) - {"JOB_DATA"}
    listed = env.get("CASCADE_CREDENTIAL_KEYS")
    if listed is not None:
        keys.update(k.strip() for k in reveal(listed).split(",") if k.strip())
    found = [reveal(env[key]) for key in keys if key in env and reveal(env[key])]
    job_data = reveal(env.get("JOB_DATA", ""))
    if len(job_data) >= MIN_JOB_DATA_LEAF:  # `{}` is no secret, and masking it garbles output
        found.append(job_data)
    return found


def router_secret_values(environ: Mapping[str, str]) -> list[str]:
    """The router's own secrets: the worker secret keys plus every variable named like one.

    A variable picked by its name alone counts only when its value is long enough to be a
    secret: `SOME_TOKEN_TTL=1` would otherwise mask every `1` in every event.
    """
    return [
        value
        for key, value in environ.items()
        if value
        and (
            key in SECRET_ENV_KEYS
            or (_SECRET_NAME.search(key) and len(value) >= MIN_ROUTER_NAMED_SECRET)
        )
    ]


def job_data_secrets(data: object, job_data_json: str, public: Iterable[str | None]) -> list[str]:
    """Job data as a secret: the whole JSON and each string in it, but not the ids
    dockyard derives from it (they are in names and labels already) nor short strings."""
    skip = {value for value in public if value}
    found = [job_data_json]
    stack = [data]
    while stack:
        node = stack.pop()
        if isinstance(node, str):
            if len(node) >= MIN_JOB_DATA_LEAF and node not in skip:
                found.append(node)
        elif isinstance(node, Mapping):
            stack.extend(node.values())
        elif isinstance(node, list | tuple):
            stack.extend(node)
    return found


class SecretBook:
    """Every secret value one manager knows of, to mask its Sentry events by value.

    The router's own secrets stay for the manager's life; each job's are kept for the
    last `history` jobs (a report about a job comes while or shortly after it runs).
    """

    def __init__(self, router: Masker, history: int = 1024) -> None:
        self._router = router
        self._lock = threading.Lock()
        # Bounded: a report compiles one pattern of all of them.
        self._jobs: LRUCache[str, Masker] = LRUCache(maxsize=max(1, min(history, _BOOK_JOBS)))

    def __repr__(self) -> str:
        return "SecretBook()"

    def hold(self, job_id: str, masker: Masker) -> None:
        with self._lock:
            self._jobs[job_id] = masker

    def masker(self) -> Masker:
        with self._lock:
            jobs = list(self._jobs.values())
        return self._router.merged(*jobs)
