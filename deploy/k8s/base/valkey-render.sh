#!/bin/sh
# Render the deployed valkey.conf from the repo's valkey.conf, then exec the remaining arguments
# (e.g. `valkey-server /etc/valkey/valkey.conf`). Used by Kubernetes (init container) and by
# compose (entrypoint of the official valkey/valkey image).
#
# - replaces the dev ACL passwords (`relay-dev-ingest`, `relay-dev-gateway`) with
#   VALKEY_INGEST_PASSWORD / VALKEY_GATEWAY_PASSWORD (from a Secret);
# - gives the admin `default` user VALKEY_ADMIN_PASSWORD (requirepass), which also lifts
#   protected mode so the services can connect from other hosts;
# - listens on every interface and keeps data in VALKEY_DATA_DIR (default /data);
# - with VALKEY_CLUSTER=yes (the cluster overlay): cluster mode, nodes.conf in the data dir,
#   replicas authenticate to their primary as the admin, and the node announces
#   VALKEY_ANNOUNCE_HOSTNAME (its stable StatefulSet DNS name) instead of a pod IP that changes.
# Passwords may hold only A-Z a-z 0-9 _ - (e.g. `openssl rand -hex 32`).
set -eu

template="${VALKEY_CONF_TEMPLATE:-/config/valkey.conf}"
output="${VALKEY_CONF:-/etc/valkey/valkey.conf}"
data_dir="${VALKEY_DATA_DIR:-/data}"

for name in VALKEY_ADMIN_PASSWORD VALKEY_INGEST_PASSWORD VALKEY_GATEWAY_PASSWORD; do
    eval "value=\${$name:-}"
    case "$value" in
        "") echo "valkey-render: $name is not set" >&2; exit 1 ;;
        *[!A-Za-z0-9_-]*) echo "valkey-render: $name may only hold A-Z a-z 0-9 _ -" >&2; exit 1 ;;
    esac
done

mkdir -p "$(dirname "$output")" "$data_dir"
sed -e "s/ >relay-dev-ingest / >${VALKEY_INGEST_PASSWORD} /" \
    -e "s/ >relay-dev-gateway / >${VALKEY_GATEWAY_PASSWORD} /" \
    "$template" > "$output"
if grep -q ">relay-dev-" "$output"; then
    echo "valkey-render: a dev password survived in $output (user line format changed?)" >&2
    exit 1
fi
cat >> "$output" <<CONF

# ---- rendered for deployment by valkey-render.sh (later lines win) ----
bind * -::*
dir ${data_dir}
requirepass ${VALKEY_ADMIN_PASSWORD}
CONF
if [ "${VALKEY_CLUSTER:-no}" = "yes" ]; then
    cat >> "$output" <<CONF
cluster-enabled yes
cluster-config-file ${data_dir}/nodes.conf
cluster-node-timeout 5000
masterauth ${VALKEY_ADMIN_PASSWORD}
CONF
    if [ -n "${VALKEY_ANNOUNCE_HOSTNAME:-}" ]; then
        printf 'cluster-announce-hostname %s\ncluster-preferred-endpoint-type hostname\n' \
            "$VALKEY_ANNOUNCE_HOSTNAME" >> "$output"
    fi
fi
chmod 600 "$output"

if [ "$#" -gt 0 ]; then
    exec "$@"
fi
