"""Streaming a big dataset upload: the API's resident memory while a multi-GB zip arrives (not a test).

Ours: ``POST /api/v1/datasets`` on the real stack (gunicorn + gevent), the body streamed to DATA_DIR in
pieces. Peer: the same bytes read whole into memory by a plain Python process (what a handler that calls
``request.get_data()`` would hold), measured the same way. Usage: ``python bench/bench_upload.py [MB]``.
"""

from __future__ import annotations

import sys
import tempfile
import threading
import time
from pathlib import Path

import psutil

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tests.harness import Stack  # noqa: E402
from tests.services.test_datasets_api import stored_zip, stream_multipart, unique  # noqa: E402


def peak_rss_while(process: psutil.Process, work) -> tuple[int, int, object]:
    """(RSS before, peak RSS of the process and its children during ``work()``, its result)."""
    def rss() -> int:
        return sum(p.memory_info().rss for p in [process, *process.children(recursive=True)])

    baseline, peak, done = rss(), [0], threading.Event()

    def sample():
        while not done.is_set():
            peak[0] = max(peak[0], rss())
            time.sleep(0.02)

    sampler = threading.Thread(target=sample)
    sampler.start()
    try:
        result = work()
    finally:
        done.set()
        sampler.join()
    return baseline, peak[0], result


def main(megabytes: int) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        path = stored_zip(Path(tmp) / "big.zip", megabytes=megabytes)
        stack = Stack(Path(tmp) / "data")
        stack.start()
        try:
            started = time.perf_counter()
            before, peak, (status, _) = peak_rss_while(psutil.Process(stack.api.pid),
                                                       lambda: stream_multipart(stack, path, unique("big")))
            seconds = time.perf_counter() - started
            me = psutil.Process()
            peer_before, peer_peak, _ = peak_rss_while(me, lambda: len(path.read_bytes()))
        finally:
            stack.close()
    mb = 2**20
    print(f"upload of {megabytes} MB: answer {status} in {seconds:.1f} s")
    print(f"ours (API, streamed):     RSS {before / mb:.0f} MB before, peak {peak / mb:.0f} MB "
          f"(+{(peak - before) / mb:.0f} MB)")
    print(f"peer (read whole, bytes): RSS {peer_before / mb:.0f} MB before, peak {peer_peak / mb:.0f} MB "
          f"(+{(peer_peak - peer_before) / mb:.0f} MB)")


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 2048)
