#!/bin/sh
# Install volkeep on a Docker host (run as root):
#   - volkeep in a virtualenv under /opt/volkeep, linked as /usr/local/bin/volkeep
#   - the helper image volkeep-helper:busybox, built locally from Debian's busybox-static
#     (no registry needed; set VOLKEEP_SKIP_HELPER=1 to use your own helper_image)
#   - /var/backups/volkeep and /var/lib/volkeep (mode 0700)
#   - /etc/volkeep (mode 0700) holding config/example.yaml as volkeep.yaml (mode 0600),
#     unless it exists: the default --config of every command and of the service
#   - a small demo volume, volkeep_demo, that config/example.yaml backs up
#   - bash and zsh completion and the man page volkeep(1), generated from this volkeep,
#     under /usr/local/share (VOLKEEP_SHARE names another place)
# The virtualenv is built on the system's Python (/usr/bin/python3), never on one under
# /root or /home (pyenv, a user's build): the shipped unit's ProtectHome=yes hides those.
# VOLKEEP_PYTHON names another interpreter; VOLKEEP_PREFIX and VOLKEEP_ETC other places.
set -eu
here=$(cd "$(dirname "$0")" && pwd)
prefix=${VOLKEEP_PREFIX:-/opt/volkeep}
etc=${VOLKEEP_ETC:-/etc/volkeep}
share=${VOLKEEP_SHARE:-/usr/local/share}
system_python=/usr/bin/python3

choose_python() {  # print the interpreter the virtualenv is built on, or say why none
    chosen=${VOLKEEP_PYTHON:-}
    if [ -z "$chosen" ] && ! [ -x "$system_python" ]; then
        apt_install python3 python3-venv >&2 || true  # Debian's, where apt can bring it
    fi
    if [ -z "$chosen" ]; then
        if [ -x "$system_python" ]; then
            chosen=$system_python
        else
            chosen=$(command -v python3 || true)
        fi
    fi
    if [ -z "$chosen" ] || ! [ -x "$chosen" ]; then
        echo "install: no python3 found: install Debian's python3 and python3-venv" \
            "(apt-get install python3 python3-venv), or set VOLKEEP_PYTHON" >&2
        return 1
    fi
    real=$(readlink -f "$chosen")
    case $real in
        /root/* | /home/*)
            echo "install: $chosen ($real) lives under /root or /home, which the service's" \
                "ProtectHome=yes hides: install Debian's python3 (apt-get install python3" \
                "python3-venv), or set VOLKEEP_PYTHON to a Python 3.11+ outside them" >&2
            return 1 ;;
    esac
    if ! "$chosen" -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null; then
        echo "install: $chosen is older than Python 3.11, which volkeep needs: set" \
            "VOLKEEP_PYTHON to a newer one outside /root and /home" >&2
        return 1
    fi
    echo "$chosen"
}

install_config() {  # /etc/volkeep with the example, readable by root only; never replaced
    if [ -e "$etc" ]; then
        echo "install: $etc exists: left as it is"
        return 0
    fi
    install -d -m 0700 "$etc"
    install -m 0600 "$here/config/example.yaml" "$etc/volkeep.yaml"
    echo "install: wrote $etc/volkeep.yaml (the example: edit it, then volkeep validate)"
}

install_reference() {  # completions and the man page of the volkeep $1, where they are looked for
    install -d "$share/bash-completion/completions" "$share/zsh/site-functions" \
        "$share/man/man1"
    "$1" completion bash > "$share/bash-completion/completions/volkeep"
    "$1" completion zsh > "$share/zsh/site-functions/_volkeep"
    "$1" manpage > "$share/man/man1/volkeep.1"
    echo "install: bash and zsh completion, and man volkeep, in $share"
}

# VOLKEEP_INSTALL_FUNCTIONS_ONLY=1: define the steps above and stop (for the tests)
[ "${VOLKEEP_INSTALL_FUNCTIONS_ONLY:-0}" = 1 ] && return 0

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

python=$(choose_python) || exit 1
"$python" -m venv "$prefix" 2>/dev/null || { apt_install python3-venv && "$python" -m venv "$prefix"; }
"$prefix/bin/pip" install --quiet --disable-pip-version-check "$here"
ln -sf "$prefix/bin/volkeep" /usr/local/bin/volkeep
install_reference "$prefix/bin/volkeep"

if [ "${VOLKEEP_SKIP_HELPER:-0}" != 1 ] && ! docker image inspect volkeep-helper:busybox >/dev/null 2>&1; then
    /bin/busybox --list >/dev/null 2>&1 || apt_install busybox-static
    "$here/scripts/build-helper-image.sh" volkeep-helper:busybox
fi

install -d -m 0700 /var/backups/volkeep /var/lib/volkeep
install_config

if ! docker volume inspect volkeep_demo >/dev/null 2>&1; then
    docker volume create --label volkeep.demo=true volkeep_demo >/dev/null
    docker run --rm --network none --log-driver none -v volkeep_demo:/data volkeep-helper:busybox \
        sh -c 'mkdir -p /data/app /data/cache && date > /data/app/created && \
               seq 1 20000 > /data/app/numbers.txt && echo scratch > /data/cache/tmp'
fi
echo "volkeep $("$prefix/bin/volkeep" --version | cut -d' ' -f2) installed: try"
echo "  volkeep validate && volkeep backup demo"
