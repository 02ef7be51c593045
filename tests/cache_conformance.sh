#!/bin/sh
# make check: http-cache-tests 0.4.5 (the suite behind cache-tests.fyi) run
# against netd's gateway as a private cache (tools/cache-tests), over
# HTTP/1.1 and then over the HTTP/2 gateway (TLS). Each of its 294 tests is a
# case, per front: one listed in tests/fixtures/cache-tests-expected.json
# (with why) must not pass, every other must. About 40 s; installs the suite
# from the npm registry on first use (tools/cache-tests).
rc=0
for front in "" -2; do
    "${srcdir:-.}/tools/cache-tests" $front \
        -e "${srcdir:-.}/tests/fixtures/cache-tests-expected.json" "${NST_BUILDDIR:-.}" || rc=1
done
exit $rc
