# Shell helpers for the scripts in initiator-tests/ (source this file).

# start_node BIN CONFIG WORK: start `BIN serve --config CONFIG` in the background
# (stdout in WORK/node.out, stderr in WORK/node.err) and wait up to 30 s for its
# management API. Sets node_pid and url (the API's base URL); fails with the node's
# log when it does not come up.
start_node() {
    "$1" serve --config "$2" >"$3/node.out" 2>"$3/node.err" &
    node_pid=$!
    local _
    for _ in $(seq 300); do
        grep -q '^management: ' "$3/node.out" && break
        kill -0 "$node_pid" 2>/dev/null || break
        sleep 0.1
    done
    url="$(sed -n 's/^management: \([^ ]*\).*/\1/p' "$3/node.out")"
    if [ -z "$url" ]; then
        cat "$3/node.err"
        echo "the node did not start (config $2)"
        return 1
    fi
}
