"""Streaming a big dataset upload: the API's resident memory while a multi-GB zip arrives (not a test).

Ours: ``POST /api/v1/datasets`` on the real stack (gunicorn + gevent), the body streamed to DATA_DIR in
pieces. Peer: the same bytes read whole into memory by a plain Python process (what a handler that calls
``request.get_data()`` would hold), measured the same way. Usage: ``python bench/bench_upload.py [MB]``.
"""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path

import psutil

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tests.harness import Stack, peak_rss_during, stream_multipart, unique  # noqa: E402
from tests.zips import stored_zip  # noqa: E402


def main(megabytes: int) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        path = stored_zip(Path(tmp) / "big.zip", megabytes=megabytes)
        stack = Stack(Path(tmp) / "data")
        stack.start()
        try:
            started = time.perf_counter()
            before, peak, (status, _) = peak_rss_during(psutil.Process(stack.api.pid),
                                                       lambda: stream_multipart(stack, path, unique("big")))
            seconds = time.perf_counter() - started
            me = psutil.Process()
            peer_before, peer_peak, _ = peak_rss_during(me, lambda: len(path.read_bytes()))
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
