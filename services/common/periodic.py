"""Runs a function every few seconds in a daemon thread until stopped: file watchers."""

import threading
from collections.abc import Callable

import structlog

log = structlog.get_logger("creditline.periodic")


class Periodic:
    def __init__(
        self,
        interval_seconds: float,
        task: Callable[[], object],
        name: str,
        *,
        immediately: bool = False,  # run the task once at start, before the first interval
    ) -> None:
        self.interval_seconds = interval_seconds
        self.task = task
        self.immediately = immediately
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name=name, daemon=True)

    def start(self) -> "Periodic":
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join()

    def _loop(self) -> None:
        if self.immediately:
            self._run()
        while not self._stop.wait(self.interval_seconds):
            self._run()

    def _run(self) -> None:
        try:
            self.task()
        except Exception:  # noqa: BLE001 - one failed run must not end the watching
            log.exception("periodic.failed", task=self._thread.name)
