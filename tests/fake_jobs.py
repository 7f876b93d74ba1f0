"""A job kind for the platform tests: counts slowly, reporting progress and epoch-like metrics."""

import time

from engine.exceptions import Cancelled
from services.jobs.runtime import job_kind


@job_kind("test-count", timeout=120, result_ttl=600, description="count to n, slowly (tests only)")
def count(ctx, params: dict) -> dict:
    n, delay = int(params["n"]), float(params.get("delay", 0.05))
    for i in range(1, n + 1):
        if ctx.should_stop():
            raise Cancelled()
        time.sleep(delay)
        ctx.epoch({"epoch": i, "epochs": n, "train_loss": 1 / i, "train_accuracy": i / n,
                   "test_loss": 2 / i, "test_accuracy": i / (2 * n), "best_accuracy": i / (2 * n)})
    return {"counted": n}
