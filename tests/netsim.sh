#!/bin/bash
# tests/netsim.sh — validates tools/netsim (link emulation): for slow4g and lte, TCP connect ≈ 1 RTT,
# HTTP TTFB ≈ 2 RTT, UDP echo RTT ≈ RTT, download and upload goodput within 15 % of the caps; with
# lte --loss 2, the loss seen by 2000 UDP packets each way (and no reordering). A tiny Python server runs in the srv
# namespace, curl and the UDP client in cli. Skips (77) when not root, or without netns, veth,
# tbf, NFQUEUE or the delayer. About 45 s.
set -u

skip() {
    echo "SKIP: $*"
    exit 77
}

[ "$(id -u)" -eq 0 ] || skip "not root (netsim creates network namespaces)"
srcdir=$(cd "$(dirname "$0")/.." && pwd)
NETSIM=$srcdir/tools/netsim
if [ -z "${NETSIM_DELAY-}" ]; then
    NETSIM_DELAY=${NST_BUILDDIR:-$PWD}/tools/netsim-delay
fi
[ -x "$NETSIM_DELAY" ] ||
    skip "$NETSIM_DELAY not built (configure found no libnetfilter_queue: install libnetfilter-queue-dev)"
export NETSIM_DELAY
for t in ip tc iptables ethtool curl python3; do
    command -v $t >/dev/null 2>&1 || skip "$t not installed (scripts/setup installs it)"
done
# the interpreter itself, not a wrapper (a pyenv shim costs ~1 s per start)
PY=$(python3 -c 'import sys; print(sys.executable)') || skip "python3 does not run"

NAME=nst$$
SRV=198.18.0.1
TMP=$(mktemp -d)
SERVER_PID=""
passed=0 failed=0

cleanup() {
    [ -z "$SERVER_PID" ] || kill "$SERVER_PID" 2>/dev/null
    "$NETSIM" down "$NAME" >/dev/null 2>&1
    rm -rf "$TMP"
}
trap cleanup EXIT
trap 'exit 1' INT TERM HUP

check() {  # check LABEL OK(0/1) TEXT
    if [ "$2" -eq 1 ]; then
        echo "ok   $1: $3"
        passed=$((passed + 1))
    else
        echo "FAIL $1: $3"
        failed=$((failed + 1))
    fi
}

# within MEASURED EXPECTED PCT: 1 when |MEASURED - EXPECTED| <= PCT % of EXPECTED
within() {
    awk -v m="$1" -v e="$2" -v p="$3" 'BEGIN { d = m - e; if (d < 0) d = -d; print (d <= e * p / 100) ? 1 : 0 }'
}

median() {  # median of the numbers on stdin
    sort -g | awk '{ v[NR] = $1 } END { print (NR % 2) ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2 }'
}

minimum() {  # smallest of the numbers on stdin
    sort -g | head -n 1
}

cat >"$TMP/helper.py" <<'EOF'
# serve ADDR HTTP_PORT UDP_PORT | udp-rtt ADDR PORT N | udp-loss ADDR PORT N HTTP_PORT
import socket, socketserver, statistics, sys, threading, time, urllib.request

udp_counts = {}

class Http(socketserver.StreamRequestHandler):
    def handle(self):
        line = self.rfile.readline(8192).decode('latin-1').split()
        hdrs = {}
        while True:
            h = self.rfile.readline(8192)
            if h in (b'\r\n', b'\n', b''):
                break
            k, _, v = h.decode('latin-1').partition(':')
            hdrs[k.strip().lower()] = v.strip()
        t0 = time.monotonic()
        method, path = line[0], line[1]
        if method == 'GET' and path.startswith('/bytes/'):
            n = int(path[7:])
            self.wfile.write(b'HTTP/1.1 200 OK\r\nContent-Length: %d\r\nConnection: close\r\n\r\n' % n)
            chunk = memoryview(bytes(65536))
            while n > 0:
                k = min(n, len(chunk))
                self.wfile.write(chunk[:k])
                n -= k
            return
        if method == 'PUT':
            n, got = int(hdrs.get('content-length', '0')), 0
            while got < n:
                b = self.rfile.read1(min(65536, n - got))
                if not b:
                    break
                got += len(b)
            body = b'%d %.6f\n' % (got, time.monotonic() - t0)
        elif path.startswith('/udpcount/'):
            body = b'%d\n' % udp_counts.get(path[10:], 0)
        else:
            body = b'ok\n'
        # one write: no Nagle wait between headers and body
        self.wfile.write(b'HTTP/1.1 200 OK\r\nContent-Length: %d\r\nConnection: close\r\n\r\n%s'
                         % (len(body), body))

def udp_echo(addr, port):
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind((addr, port))
    while True:
        data, peer = s.recvfrom(2048)
        run = data.split(b' ', 1)[0].decode()
        udp_counts[run] = udp_counts.get(run, 0) + 1
        s.sendto(data, peer)

def serve(addr, hport, uport):
    threading.Thread(target=udp_echo, args=(addr, uport), daemon=True).start()
    socketserver.ThreadingTCPServer.allow_reuse_address = True
    socketserver.ThreadingTCPServer.daemon_threads = True
    socketserver.ThreadingTCPServer((addr, hport), Http).serve_forever()

def udp_rtt(addr, port, n):
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.settimeout(2.0)
    rtts = []
    for i in range(n):
        t = time.monotonic()
        s.sendto(b'rtt %d' % i, (addr, port))
        try:
            while s.recv(2048) != b'rtt %d' % i:
                pass
            rtts.append((time.monotonic() - t) * 1000)
        except socket.timeout:
            pass
        time.sleep(0.02)
    print('%.1f' % statistics.median(rtts) if rtts else 'none')

def udp_loss(addr, port, n, hport):
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    run = 'loss%d' % int(time.time() * 1000)
    got = []
    def rx():
        s.settimeout(1.5)
        try:
            while True:
                got.append(int(s.recv(2048).split()[1]))
        except socket.timeout:
            pass
    th = threading.Thread(target=rx)
    th.start()
    for i in range(n):
        s.sendto(b'%s %d' % (run.encode(), i), (addr, port))
        time.sleep(0.001)
    th.join()
    with urllib.request.urlopen('http://%s:%d/udpcount/%s' % (addr, hport, run), timeout=10) as r:
        at_server = int(r.read())
    reordered = sum(1 for a, b in zip(got, got[1:]) if b < a)
    print(n, at_server, len(set(got)), reordered)

cmd, args = sys.argv[1], sys.argv[2:]
if cmd == 'serve':
    serve(args[0], int(args[1]), int(args[2]))
elif cmd == 'udp-rtt':
    udp_rtt(args[0], int(args[1]), int(args[2]))
else:
    udp_loss(args[0], int(args[1]), int(args[2]), int(args[3]))
EOF

# up PROFILE [ARG...]: bring the link up; skip when the kernel lacks a feature, fail otherwise
up() {
    local out rc
    out=$("$NETSIM" up "$NAME" "$@" 2>&1)
    rc=$?
    case $rc in
    0) echo "$out" ;;
    69 | 77) skip "netsim up: a kernel feature or tool is missing: $out" ;;
    *) echo "$out"; echo "FAIL netsim up $* (exit $rc)"; exit 1 ;;
    esac
    "$NETSIM" exec "$NAME" srv "$PY" "$TMP/helper.py" serve $SRV 8080 9000 &
    SERVER_PID=$!
    for _ in $(seq 100); do
        "$NETSIM" exec "$NAME" cli curl -s -m 2 -o /dev/null http://$SRV:8080/ && return 0
        sleep 0.1
    done
    echo "FAIL server in the srv namespace did not start"
    exit 1
}

down() {
    kill "$SERVER_PID" 2>/dev/null
    wait "$SERVER_PID" 2>/dev/null
    SERVER_PID=""
    "$NETSIM" down "$NAME"
}

cli() {
    "$NETSIM" exec "$NAME" cli "$@"
}

# profile PROFILE RTT_MS DOWN_KBPS UP_KBPS DOWNLOAD_BYTES UPLOAD_BYTES
measure() {
    local p=$1 rtt=$2 down=$3 up=$4 dl=$5 ul=$6 t c f kbps out
    up "$p"

    # TCP connect ≈ 1 RTT, TTFB ≈ 2 RTT (median of 7 fresh connections)
    for _ in 1 2 3 4 5 6 7; do
        cli curl -s -o /dev/null -w '%{time_connect} %{time_starttransfer}\n' http://$SRV:8080/
    done >"$TMP/t"
    c=$(awk '{ print $1 * 1000 }' "$TMP/t" | median)
    f=$(awk '{ print $2 * 1000 }' "$TMP/t" | median)
    check "$p connect" "$(within "$c" "$rtt" 15)" "$(printf '%.1f ms (expected %d ms ±15 %%; min %.1f)' \
        "$c" "$rtt" "$(awk '{ print $1 * 1000 }' "$TMP/t" | minimum)")"
    check "$p TTFB" "$(within "$f" $((2 * rtt)) 15)" "$(printf '%.1f ms (expected %d ms ±15 %%; min %.1f)' \
        "$f" $((2 * rtt)) "$(awk '{ print $2 * 1000 }' "$TMP/t" | minimum)")"

    # UDP echo: both delayers, no TCP
    t=$(cli "$PY" "$TMP/helper.py" udp-rtt $SRV 9000 9)
    check "$p UDP RTT" "$(within "${t/none/0}" "$rtt" 15)" "$t ms (expected $rtt ms ±15 %)"

    # download goodput: body bytes over the time from the first to the last byte. A
    # measurement out of bounds is taken once more (a busy 2-core machine can starve the
    # delayer for a moment); both must be out for a failure.
    for try in 1 2; do
        out=$(cli curl -s -o /dev/null -w '%{size_download} %{time_starttransfer} %{time_total}' \
            http://$SRV:8080/bytes/"$dl")
        kbps=$(echo "$out" | awk '{ print ($3 > $2) ? $1 * 8 / ($3 - $2) / 1000 : 0 }')
        [ "$(within "$kbps" "$down" 15)" -eq 1 ] && break
    done
    check "$p download" "$(within "$kbps" "$down" 15)" \
        "$(awk -v k="$kbps" -v c="$down" -v n="$dl" 'BEGIN { printf "%d bytes at %.0f kbit/s = %.1f %% of %d kbit/s (±15 %%)", n, k, 100 * k / c, c }')"

    # upload goodput, timed by the server from the request head to the last body byte
    head -c "$ul" /dev/urandom >"$TMP/up.bin"
    for try in 1 2; do
        out=$(cli curl -s -T "$TMP/up.bin" -H 'Expect:' http://$SRV:8080/upload)
        kbps=$(echo "$out" | awk '{ print ($2 > 0 && $1 == '"$ul"') ? $1 * 8 / $2 / 1000 : 0 }')
        [ "$(within "$kbps" "$up" 15)" -eq 1 ] && break
    done
    check "$p upload" "$(within "$kbps" "$up" 15)" \
        "$(awk -v k="$kbps" -v c="$up" -v n="$ul" 'BEGIN { printf "%d bytes at %.0f kbit/s = %.1f %% of %d kbit/s (±15 %%)", n, k, 100 * k / c, c }')"
    down
}

start=$(date +%s)
measure slow4g 150 1600 750 2000000 1000000
measure lte 70 12000 12000 8000000 4000000

# loss: 2 % each way over 2000 UDP packets; tolerance 4 sigma of a binomial count
up lte --loss 2
read -r sent at_srv echoed reordered < <(cli "$PY" "$TMP/helper.py" udp-loss $SRV 9000 2000 8080)
for dir in up down; do
    if [ $dir = up ]; then n=$sent k=$at_srv; else n=$at_srv k=$echoed; fi
    check "lte --loss 2 ${dir}stream" \
        "$(awk -v n="$n" -v k="$k" 'BEGIN { l = 1 - k / n; t = 4 * sqrt(0.02 * 0.98 / n); print (n > 0 && l >= 0.02 - t && l <= 0.02 + t) ? 1 : 0 }')" \
        "$(awk -v n="$n" -v k="$k" 'BEGIN { printf "%d of %d lost = %.2f %% (expected 2 %% ± %.2f)", n - k, n, 100 * (1 - k / n), 400 * sqrt(0.02 * 0.98 / n) }')"
done
check "lte --loss 2 order" "$([ "${reordered:-1}" -eq 0 ] && echo 1 || echo 0)" "${reordered:-?} echoes out of order (expected 0)"
down

echo "netsim: $(($(date +%s) - start)) s"
echo "$passed passed, $failed failed"
[ "$failed" -eq 0 ]
