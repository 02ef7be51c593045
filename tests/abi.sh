#!/bin/sh
# tests/abi.sh — libnetstash's ABI against the stored baseline abi/libnetstash.abi
# (abidw of the public headers' types and the exported symbols). Additions are
# fine; a removed or changed function, a changed public type or a changed
# callback-table layout fails. After a deliberate, versioned ABI change:
# scripts/abi-baseline BUILDDIR, and say why in the commit.
set -u
top=${srcdir:-.}
so=lib/.libs/libnetstash.so
if ! command -v abidiff >/dev/null 2>&1; then
    echo "abi: SKIP: abidiff missing (Debian package abigail-tools; scripts/setup installs it)"
    exit 77
fi
if [ ! -e "$so" ]; then
    echo "abi: SKIP: no shared library at $so (configured with --disable-shared?)"
    exit 77
fi
report=abi-report.txt
abidiff --headers-dir2 "$top/include/netstash" "$top/abi/libnetstash.abi" "$so" >"$report" 2>&1
rc=$?
cat "$report"
# abidiff's status is a bit set: 1 error, 2 usage error, 4 ABI change, 8 incompatible change
if [ $((rc & 3)) -ne 0 ]; then
    echo "abi: FAIL: abidiff could not compare (status $rc)"
    exit 1
fi
if [ $((rc & 8)) -ne 0 ]; then
    echo "abi: FAIL: incompatible ABI change against abi/libnetstash.abi (report above)"
    exit 1
fi
if [ $((rc & 4)) -ne 0 ]; then
    echo "abi: ok: compatible changes (additions) only; refresh the baseline with scripts/abi-baseline"
else
    echo "abi: ok: identical to the baseline"
fi
exit 0
