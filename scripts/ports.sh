# scripts/ports.sh — sourced by scripts/demo and tools/bench/*: free loopback ports.
#
#   free_ports N    prints N distinct port numbers, one per line
#
# Each is below the kernel's ephemeral range (net.ipv4.ip_local_port_range)
# and has no TCP or UDP socket of any state on it when picked. A port inside
# the ephemeral range may be taken as the local end of some client
# connection between the pick and the server's bind (a fuzzer or a load
# generator opens hundreds a second): the server then fails with "address
# already in use".
free_ports() {
    local n=$1 lo p picked=" "
    lo=$(cut -f1 /proc/sys/net/ipv4/ip_local_port_range 2>/dev/null) || lo=32768
    [[ $lo =~ ^[0-9]+$ ]] && [ "$lo" -gt 12000 ] || lo=32768
    while [ "$n" -gt 0 ]; do
        p=$((10000 + RANDOM % (lo - 10000)))
        [[ "$picked" == *" $p "* ]] && continue
        [ -z "$(ss -Htuan "sport = :$p" 2>/dev/null)" ] || continue
        picked+="$p "
        echo "$p"
        n=$((n - 1))
    done
}
