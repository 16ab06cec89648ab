"""pygev's benchmark harness: `python -m bench --help`.

loadgen.c (a C load generator, built on demand) drives echo, framed-echo and WebSocket servers;
redis-benchmark drives the RESP servers; idle_rss.py measures memory per idle connection.  Servers
are pinned to one core and the client to another, interleaved per cell; medians go to RESULTS.md.
"""
