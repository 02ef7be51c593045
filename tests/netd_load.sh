#!/bin/sh
# make check: netd under 8 client processes x 500 requests (remote mode; 50 %
# preload, 30 % cache, 20 % network), one restart under load. Fails on any
# wrong answer or request lost for good, netd's peak RSS (VmHWM) over 64 MiB
# (measured: 17-18 MiB) or its peak anonymous RSS over 32 MiB (measured: 4 MiB),
# more than 16 fds left over after the clients ended, or `netstash verify`
# failing afterwards (tests/stress/netd_load.c; ASan builds add 256 MiB). The full run is `netd_load` (64 x 10,000); the
# 10-minute soak is scripts/soak.
exec "${NST_BUILDDIR:-.}/tests/stress/netd_load" --clients 8 --requests 500 --restarts 1 \
  --max-rss-mb 64 --max-anon-mb 32 --fd-slack 16 "$@"
