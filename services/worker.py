"""An RQ worker for the studio's queue: ``python -m services.worker`` (forking ``Worker`` on Linux)."""

from __future__ import annotations

import logging
import os
import socket

from rq import Worker

from services.config import Config
from services.jobs import queue_for, redis_connection
from services.redis_server import wait_for_redis


def main() -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s worker %(levelname)s %(message)s")
    config = Config.from_env()
    wait_for_redis(config.effective_redis_url, timeout=30)
    name = f"studio-{socket.gethostname()}-{os.getpid()}"
    worker = Worker([queue_for(config)], connection=redis_connection(config.effective_redis_url), name=name)
    worker.work(with_scheduler=False, logging_level="INFO")


if __name__ == "__main__":
    main()
