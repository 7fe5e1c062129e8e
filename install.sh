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

apt_install() {  # Debian's packages, when the host has apt and lacks them
    command -v apt-get >/dev/null || return 1
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" >/dev/null
}

start_engine() {  # systemd where it runs, else dockerd in the background
    if [ -d /run/systemd/system ] && command -v systemctl >/dev/null; then
        systemctl enable --now docker >/dev/null 2>&1 || true
    fi
    if ! docker info >/dev/null 2>&1 && command -v dockerd >/dev/null; then
        setsid dockerd >/var/log/dockerd.log 2>&1 < /dev/null &
    fi
    for _ in $(seq 60); do
        docker info >/dev/null 2>&1 && return 0
        sleep 1
    done
    return 1
}

# A fresh Debian or Ubuntu host has no Docker engine: offer Debian's docker.io (say yes
# without a question with VOLKEEP_INSTALL_DOCKER=1, or no with VOLKEEP_INSTALL_DOCKER=0).
if ! docker info >/dev/null 2>&1; then
    if ! command -v dockerd >/dev/null && command -v apt-get >/dev/null; then
        answer=${VOLKEEP_INSTALL_DOCKER:-}
        if [ -z "$answer" ] && [ -t 0 ]; then
            printf "install: no Docker engine here. Install Debian's docker.io and start it? [Y/n] "
            read -r reply || reply=n
            case $reply in [nN]*) answer=0 ;; *) answer=1 ;; esac
        fi
        if [ "${answer:-0}" = 1 ]; then
            echo "install: installing docker.io"
            apt_install docker.io
        fi
    fi
    if command -v dockerd >/dev/null; then
        start_engine || true
    fi
fi
if ! docker info >/dev/null 2>&1; then
    if command -v apt-get >/dev/null; then
        echo "install: no Docker engine answers. Run again and accept docker.io, or" \
            "VOLKEEP_INSTALL_DOCKER=1 $0" >&2
    else
        echo "install: no Docker engine answers. Install Docker Engine for this system" \
            "(https://docs.docker.com/engine/install/), start it, and run $0 again" >&2
    fi
    exit 1
fi

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
