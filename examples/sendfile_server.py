"""File server: each request (any bytes) is answered with a whole file, sent by sendfile(2).

    python examples/sendfile_server.py --port 1833 --file PATH
    python examples/sendfile_server.py --port 1833 --size-mib 64     # a temporary file of that size
"""
from __future__ import annotations

import argparse
import logging
import os
import tempfile

from reactor import Handler, Server


class FileServer(Handler):
    def __init__(self, file) -> None:
        self.file = file

    def on_message(self, conn, ctx, data):
        conn.sendfile(self.file)    # zero copy: the kernel sends it; pygev never reads it


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=1833)
    parser.add_argument("--file", help="the file to serve")
    parser.add_argument("--size-mib", type=int, default=64, help="without --file: a temporary file")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    if args.file:
        file = open(args.file, "rb")
    else:
        file = tempfile.TemporaryFile()
        chunk = os.urandom(1 << 20)
        for _ in range(args.size_mib):
            file.write(chunk)
        file.flush()
    with file:
        Server(FileServer(file), address=f"{args.host}:{args.port}").start()


if __name__ == "__main__":
    main()
