"""Configuration documents as data: YAML files validated by a pydantic model, hot reloaded.

Limits' credit policy and monitoring's rules are both such documents. Loading checks every
field and names each problem by its path; a document that fails is never used.
`ReloadingDocument` keeps the one in force and swaps in a changed file only when the new one
validates, so a bad edit never replaces a good document.
"""

import threading
from collections.abc import Callable
from pathlib import Path
from typing import Generic, TypeVar

import structlog
import yaml
from pydantic import BaseModel, ConfigDict, ValidationError

log = structlog.get_logger("creditline.documents")

ModelT = TypeVar("ModelT", bound=BaseModel)


class StrictModel(BaseModel):
    """A part of a document: a misspelt key is an error, not a silently ignored setting."""

    model_config = ConfigDict(extra="forbid", frozen=True)


class DocumentError(Exception):
    """A document that must not be used; the message names every problem."""


def parse_document(text: str, model: type[ModelT], source: str, kind: str) -> ModelT:
    """Validates YAML `text` as `model`; `kind` ("policy", "rules") words the errors."""
    try:
        document = yaml.safe_load(text)
    except yaml.YAMLError as error:
        raise DocumentError(f"{source}: not valid YAML: {error}") from None
    if not isinstance(document, dict):
        raise DocumentError(f"{source}: expected a mapping at the top level")
    try:
        return model.model_validate(document)
    except ValidationError as error:
        problems = [
            f"  {'.'.join(str(p) for p in e['loc']) or '(top level)'}: {e['msg']}"
            for e in error.errors()
        ]
        raise DocumentError(f"{source}: invalid {kind}:\n" + "\n".join(problems)) from None


def read_document(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except OSError as error:
        raise DocumentError(f"{path}: cannot read: {error.strerror}") from None


class ReloadingDocument(Generic[ModelT]):
    """The document in force, reloaded from its file when the file changes and validates.

    The document needs a `version` field: every reload logs it, and so does every refusal.
    """

    def __init__(self, path: Path, load: Callable[[Path], ModelT], kind: str) -> None:
        self.path = path
        self.kind = kind
        self._load = load
        self._current = load(path)  # a bad file at start is fatal: fail fast
        self._stamp = _stamp(path)
        self._lock = threading.Lock()

    @property
    def current(self) -> ModelT:
        return self._current

    def reload_if_changed(self) -> bool:
        """Swaps in a changed file if it validates; returns whether the document changed."""
        with self._lock:
            stamp = _stamp(self.path)
            if stamp == self._stamp:
                return False
            self._stamp = stamp
            in_force = getattr(self._current, "version", "")
            try:
                document = self._load(self.path)
            except DocumentError as error:
                log.error(f"{self.kind}.refused", error=str(error), version_in_force=in_force)
                return False
            self._current = document
            log.info(f"{self.kind}.loaded", version=getattr(document, "version", ""))
            return True


def _stamp(path: Path) -> tuple[float, int] | None:
    try:
        stat = path.stat()
    except OSError:
        return None
    return stat.st_mtime_ns, stat.st_size
