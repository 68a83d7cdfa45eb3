#!/bin/sh
# Back up a running Valkey: `valkey-cli --rdb` asks the server for a full RDB snapshot over the
# network (the same transfer a new replica gets: consistent, no pause, no access to the
# server's volume needed) and writes it to BACKUP_DIR/relay-<host>-<UTC time>.rdb. The newest
# BACKUP_KEEP backups per host stay; older ones are deleted.
#
#   VALKEY_HOSTS="relay-valkey:6379" VALKEY_PASSWORD=<admin> BACKUP_DIR=/backups sh valkey-backup.sh
#
# VALKEY_HOSTS: space-separated host:port list (a Valkey Cluster: every primary).
# VALKEY_PASSWORD: the admin (`default` user) password; empty for a password-less local server.
# VALKEY_CLI: the client to use (default valkey-cli, else redis-cli).
# Used by the prod overlay's CronJob (a copy lives in deploy/k8s/overlays/prod/) and by hand.
# Restore: deploy/backup/valkey-restore.sh; docs/operations.md, "Backups".
set -eu

hosts="${VALKEY_HOSTS:-127.0.0.1:6379}"
backup_dir="${BACKUP_DIR:-./backups}"
keep="${BACKUP_KEEP:-24}"
cli="${VALKEY_CLI:-}"
if [ -z "$cli" ]; then
    if command -v valkey-cli >/dev/null 2>&1; then cli=valkey-cli; else cli=redis-cli; fi
fi
case "$keep" in
    "" | *[!0-9]*) echo "valkey-backup: BACKUP_KEEP must be a number" >&2; exit 1 ;;
esac

# The password goes in the environment (VALKEYCLI_AUTH; REDISCLI_AUTH for redis-cli), never
# on the command line where the process list would show it.
if [ -n "${VALKEY_PASSWORD:-}" ]; then
    VALKEYCLI_AUTH="$VALKEY_PASSWORD"
    REDISCLI_AUTH="$VALKEY_PASSWORD"
    export VALKEYCLI_AUTH REDISCLI_AUTH
fi

mkdir -p "$backup_dir"
stamp="$(date -u +%Y%m%dT%H%M%SZ)"
for address in $hosts; do
    host="${address%:*}"
    port="${address##*:}"
    name="relay-$(printf %s "$host" | tr -c 'A-Za-z0-9.-' '_')-$port"
    target="$backup_dir/$name-$stamp.rdb"
    if ! "$cli" -h "$host" -p "$port" --rdb "$target.partial" >/dev/null; then
        rm -f "$target.partial"
        echo "valkey-backup: snapshot of $address failed" >&2
        exit 1
    fi
    # An RDB file starts with the magic "REDIS" (Valkey 9 may write "VALKEY"); anything else
    # (an error page, an empty file) is not a backup.
    magic="$(head -c 6 "$target.partial" | tr -d '\0')"
    case "$magic" in
        REDIS* | VALKEY*) ;;
        *) rm -f "$target.partial"; echo "valkey-backup: $address sent no RDB" >&2; exit 1 ;;
    esac
    mv "$target.partial" "$target"
    echo "valkey-backup: $address -> $target ($(wc -c < "$target") bytes)"
    # Keep the newest $keep of this host (names sort by time).
    ls -1 "$backup_dir" | grep -E "^$name-[0-9TZ]+\.rdb$" | sort -r | tail -n +"$((keep + 1))" |
        while read -r old; do rm -f "$backup_dir/$old"; done
done
