#!/bin/sh
# make check: http-cache-tests 0.4.5 (the suite behind cache-tests.fyi) run
# against netd's gateway as a private cache (tools/cache-tests). Each of its
# 294 tests is a case: one listed in tests/fixtures/cache-tests-expected.json
# (with why) must not pass, every other must. About 20 s; installs the suite
# from the npm registry on first use (tools/cache-tests).
exec "${srcdir:-.}/tools/cache-tests" -e "${srcdir:-.}/tests/fixtures/cache-tests-expected.json" \
    "${NST_BUILDDIR:-.}"
