"""An encoder process: reads (encoder, raw batch) frames on stdin, answers on stdout.

Frames are an 8-byte big-endian length and a pickle. The first frame out is `READY`, once the
encoders' modules are imported; then the answer to each request, in order, is
`("ok", EncodedBatch)` or `("error", exception)`. The process ends when stdin closes, which is
also what happens when its worker dies, so it never outlives the worker.

    python -m export_service.encoding.child
"""

from __future__ import annotations

import os
import pickle
import signal
import sys
from typing import Any, BinaryIO

HEADER = 8
READY = b"ready"


def frame(payload: bytes) -> bytes:
    return len(payload).to_bytes(HEADER, "big") + payload


def _answer(payload: bytes) -> bytes:
    try:
        # From the worker that started us, over our own stdin: trusted like our own code.
        encoder, raw = pickle.loads(payload)  # noqa: S301
        result: tuple[str, Any] = ("ok", encoder(raw))
        return pickle.dumps(result, protocol=pickle.HIGHEST_PROTOCOL)
    except Exception as exc:
        try:
            return pickle.dumps(("error", exc), protocol=pickle.HIGHEST_PROTOCOL)
        except Exception:  # an exception that does not pickle: its text does
            return pickle.dumps(("error", RuntimeError(f"{type(exc).__name__}: {exc}")))


def serve(requests: BinaryIO, responses: BinaryIO) -> None:
    while len(header := requests.read(HEADER)) == HEADER:
        payload = requests.read(int.from_bytes(header, "big"))
        responses.write(frame(_answer(payload)))
        responses.flush()


def main() -> None:
    # Ctrl-C in a terminal reaches the whole process group; the worker decides when we stop
    # (by closing stdin), so an export it is finishing keeps its encoder.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    # Answers get a descriptor of their own; anything printed goes to stderr, not into a frame.
    responses = os.fdopen(os.dup(sys.stdout.fileno()), "wb")
    os.dup2(sys.stderr.fileno(), sys.stdout.fileno())
    # Imported before READY, so a broken installation shows at start-up, not mid-export.
    import export_service.encoding.entries
    import export_service.encoding.rows  # noqa: F401

    responses.write(frame(READY))
    responses.flush()
    serve(sys.stdin.buffer, responses)


if __name__ == "__main__":
    main()
