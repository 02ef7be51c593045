#!/bin/sh
# make check: http-cache-tests 0.4.5 (the suite behind cache-tests.fyi) run
# against netd as a private cache (tools/cache-tests), through each way in:
# the HTTP/1.1 gateway, the HTTP/2 gateway (TLS), the forward proxy, and the
# IPC socket as a kernel process in remote mode asks. Each of
# its 294 tests is a case, per front: one listed in
# tests/fixtures/cache-tests-expected.json (with why) must not pass, every
# other must. About a minute; installs the suite from the npm registry on first
# use (tools/cache-tests).
rc=0
for front in "" -2 -p -r; do
    "${srcdir:-.}/tools/cache-tests" $front \
        -e "${srcdir:-.}/tests/fixtures/cache-tests-expected.json" "${NST_BUILDDIR:-.}" || rc=1
done
exit $rc
