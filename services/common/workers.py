"""A background worker that drains a queue kept in the database: it runs rounds while there is
work, sleeps when there is none until woken or polled, and backs off while a dependency fails.
"""

import threading

import grpc
import structlog

log = structlog.get_logger("creditline.workers")


class BackgroundWorker:
    """Subclasses implement `run_once`: do one round, return whether there was work."""

    def __init__(
        self, name: str, idle_seconds: float = 1.0, max_backoff_seconds: float = 30.0
    ) -> None:
        self.name = name
        self.idle_seconds = idle_seconds
        self.max_backoff_seconds = max_backoff_seconds
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name=name, daemon=True)

    def run_once(self) -> bool:
        raise NotImplementedError

    def start(self):
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()
        if self._thread.is_alive():
            self._thread.join()

    def wake(self) -> None:
        """There is new work: start a round now rather than at the next poll."""
        self._wake.set()

    def _loop(self) -> None:
        backoff = 0.0
        while not self._stop.is_set():
            try:
                busy = self.run_once()
                backoff = 0.0
            except Exception as error:  # noqa: BLE001 - the worker must outlive a bad round
                backoff = min(max(backoff * 2, 0.2), self.max_backoff_seconds)
                if isinstance(error, grpc.RpcError):
                    code = error.code().name  # a dependency is down or slow: expected
                    log.warning(f"{self.name}.unavailable", code=code, retry_in=backoff)
                else:
                    log.exception(f"{self.name}.failed", retry_in=backoff)
                busy = False
            if not busy:
                self._wake.wait(backoff or self.idle_seconds)
                self._wake.clear()
