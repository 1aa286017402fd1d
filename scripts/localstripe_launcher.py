"""Start localstripe bound to 127.0.0.1 only (its own CLI binds every interface)."""
import logging
import sys

from aiohttp import web
from localstripe import server


def main() -> None:
    port = int(sys.argv[1])
    logging.basicConfig(level=logging.INFO)
    # No store.try_load_from_disk(): every start is from scratch, like `localstripe --from-scratch`.
    web.run_app(server.app, host="127.0.0.1", port=port, access_log=logging.getLogger("aiohttp.access"))


if __name__ == "__main__":
    main()
