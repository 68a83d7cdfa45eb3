#!/bin/sh
# Restore a backup made by valkey-backup.sh into a Valkey data directory. Valkey must be
# STOPPED (Kubernetes: scale the StatefulSet to 0 and run this in a pod that mounts its volume;
# compose: `docker compose stop valkey` and run it in a container on the valkey-data volume).
#
#   sh valkey-restore.sh /backups/relay-relay-valkey-6379-20260101T000000Z.rdb /data
#
# The RDB becomes the base of a fresh multi-part AOF (what `appendonly yes` loads at start, the
# same layout Valkey writes itself), so the server starts with exactly the backup's data and
# keeps appending from there. The current AOF directory (and any dump.rdb) are moved to
# <data dir>/pre-restore-<UTC time>/, never deleted. APPENDDIRNAME / APPENDFILENAME must match
# valkey.conf (defaults: appendonlydir / appendonly.aof).
#
# Consumers: gateways notice the streams went back and send every subscriber a `reset` gap
# before the messages published after the restore (docs/operations.md, "Backups").
set -eu

if [ "$#" -ne 2 ]; then
    echo "usage: valkey-restore.sh BACKUP.rdb DATA_DIR" >&2
    exit 2
fi
backup="$1"
data_dir="$2"
dir_name="${APPENDDIRNAME:-appendonlydir}"
file_name="${APPENDFILENAME:-appendonly.aof}"

magic="$(head -c 6 "$backup" | tr -d '\0')"
case "$magic" in
    REDIS* | VALKEY*) ;;
    *) echo "valkey-restore: $backup is not an RDB file" >&2; exit 1 ;;
esac
if [ ! -d "$data_dir" ]; then
    echo "valkey-restore: $data_dir is not a directory" >&2
    exit 1
fi

aside="$data_dir/pre-restore-$(date -u +%Y%m%dT%H%M%SZ)"
mkdir -p "$aside"
for old in "$dir_name" dump.rdb; do
    if [ -e "$data_dir/$old" ]; then mv "$data_dir/$old" "$aside/"; fi
done

staging="$data_dir/.$dir_name.restoring"
rm -rf "$staging"
mkdir -p "$staging"
cp "$backup" "$staging/$file_name.1.base.rdb"
printf 'file %s.1.base.rdb seq 1 type b\n' "$file_name" > "$staging/$file_name.manifest"
mv "$staging" "$data_dir/$dir_name"
echo "valkey-restore: $backup -> $data_dir/$dir_name (previous data in $aside)"
