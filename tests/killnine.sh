#!/bin/sh
# make check: 60 kill -9 trials (warm, cache, cookie writers) on one profile,
# each followed by the consistency checks (tests/stress/killnine.c). The full
# run is `tests/stress/killnine --trials 1000` (NST_BUILDDIR set).
exec "${NST_BUILDDIR:-.}/tests/stress/killnine" --trials 60 --max-delay 400 "$@"
