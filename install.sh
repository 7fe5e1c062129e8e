#!/bin/sh
# Install volkeep on a Docker host (run as root):
#   - volkeep in a virtualenv under /opt/volkeep, linked as /usr/local/bin/volkeep
#   - the helper image volkeep-helper:busybox, built locally from Debian's busybox-static
#     (no registry needed; set VOLKEEP_SKIP_HELPER=1 to use your own helper_image)
#   - /var/backups/volkeep and /var/lib/volkeep (mode 0700)
#   - a small demo volume, volkeep_demo, that config/example.yaml backs up
set -eu
here=$(cd "$(dirname "$0")" && pwd)
prefix=${VOLKEEP_PREFIX:-/opt/volkeep}

if ! docker info >/dev/null 2>&1; then
    echo "install: the Docker engine does not answer (is dockerd running?)" >&2
    exit 1
fi

apt_install() {  # Debian's packages, when the host has apt and lacks them
    command -v apt-get >/dev/null || return 1
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" >/dev/null
}

python3 -m venv "$prefix" 2>/dev/null || { apt_install python3-venv && python3 -m venv "$prefix"; }
"$prefix/bin/pip" install --quiet --disable-pip-version-check "$here"
ln -sf "$prefix/bin/volkeep" /usr/local/bin/volkeep

if [ "${VOLKEEP_SKIP_HELPER:-0}" != 1 ] && ! docker image inspect volkeep-helper:busybox >/dev/null 2>&1; then
    /bin/busybox --list >/dev/null 2>&1 || apt_install busybox-static
    "$here/scripts/build-helper-image.sh" volkeep-helper:busybox
fi

install -d -m 0700 /var/backups/volkeep /var/lib/volkeep

if ! docker volume inspect volkeep_demo >/dev/null 2>&1; then
    docker volume create --label volkeep.demo=true volkeep_demo >/dev/null
    docker run --rm --network none --log-driver none -v volkeep_demo:/data volkeep-helper:busybox \
        sh -c 'mkdir -p /data/app /data/cache && date > /data/app/created && \
               seq 1 20000 > /data/app/numbers.txt && echo scratch > /data/cache/tmp'
fi
echo "volkeep $("$prefix/bin/volkeep" --version | cut -d' ' -f2) installed: try"
echo "  volkeep --config $here/config/example.yaml run"
