#!/bin/sh
# Form a Valkey Cluster once: wait until every node answers, then — only if none of them is in
# a formed cluster yet — `valkey-cli --cluster create` with REPLICAS_PER_PRIMARY replicas per
# primary. Re-running it on a formed cluster does nothing (safe in every `kubectl apply`).
#
# VALKEY_NODES: space-separated host:port of every node (the cluster overlay's Job lists the
#   StatefulSet's stable names relay-valkey-N.relay-valkey:6379).
# VALKEYCLI_AUTH / REDISCLI_AUTH: the admin password. VALKEY_CLI: valkey-cli (default) or redis-cli.
set -eu

nodes="${VALKEY_NODES:?VALKEY_NODES lists the cluster nodes}"
replicas="${REPLICAS_PER_PRIMARY:-1}"
cli="${VALKEY_CLI:-valkey-cli}"
wait_s="${BOOTSTRAP_WAIT_SECONDS:-600}"

addresses=""
for node in $nodes; do
    host="${node%:*}"
    port="${node##*:}"
    waited=0
    until "$cli" -h "$host" -p "$port" ping 2>/dev/null | grep -q PONG; do
        if [ "$waited" -ge "$wait_s" ]; then
            echo "bootstrap: $node did not answer in ${wait_s}s" >&2
            exit 1
        fi
        echo "bootstrap: waiting for $node"
        sleep 2
        waited=$((waited + 2))
    done
    if "$cli" -h "$host" -p "$port" cluster info | grep -q "cluster_state:ok"; then
        echo "bootstrap: cluster already formed ($node reports cluster_state:ok)"
        exit 0
    fi
    # CLUSTER MEET takes addresses: resolve each stable name once here; the nodes then
    # announce their hostnames (cluster-announce-hostname, set by valkey-render.sh).
    ip="$(getent hosts "$host" | awk '{print $1; exit}')"
    addresses="$addresses ${ip:-$host}:$port"
done

# shellcheck disable=SC2086  # one word per node
"$cli" --cluster create $addresses --cluster-replicas "$replicas" --cluster-yes
first="${nodes%% *}"
until "$cli" -h "${first%:*}" -p "${first##*:}" cluster info | grep -q "cluster_state:ok"; do
    sleep 1
done
echo "bootstrap: cluster formed"
