#!/bin/sh
# Build volkeep's image locally, with no container registry: a root file system of Debian's
# python3 and the packages it needs (fetched and extracted by mmdebstrap from a Debian
# mirror: no package manager, no maintainer scripts), volkeep and its dependencies installed
# from wheels (PyPI's manylinux wheels for CPython 3.11, whatever Python this machine
# runs), then `docker import`. With a registry, deploy/docker/Dockerfile does the same from
# python:3.11-slim.
#
# The image carries a label with a digest of what it was built from (volkeep's sources,
# pyproject.toml, this script): if IMAGE has that digest already, nothing is built.
#
# Usage: scripts/build-volkeep-image.sh [IMAGE]      (default IMAGE: volkeep:local)
# Needs: mmdebstrap (Debian's package), python3 with pip, docker; run as root.
# Environment: VOLKEEP_DEBIAN_MIRROR (default http://deb.debian.org/debian).
set -eu
image="${1:-volkeep:local}"
repository=$(cd "$(dirname "$0")/.." && pwd)
suite=bookworm # its python3 is CPython 3.11, the version of the wheels below
mirror="${VOLKEEP_DEBIAN_MIRROR:-http://deb.debian.org/debian}"

for tool in mmdebstrap docker; do
    if ! command -v "$tool" >/dev/null; then
        echo "build-volkeep-image: $tool missing; install Debian's $tool package" >&2
        exit 1
    fi
done

source_digest=$(
    cd "$repository"
    find daemon pyproject.toml scripts/build-volkeep-image.sh -type f \
        ! -name '*.pyc' ! -path '*/__pycache__/*' -print0 |
        LC_ALL=C sort -z | xargs -0 sha256sum | sha256sum | cut -c1-64
)
built=$(docker image inspect --format '{{index .Config.Labels "volkeep.source"}}' "$image" \
    2>/dev/null || true)
if [ "$built" = "$source_digest" ]; then
    echo "$image is up to date"
    exit 0
fi

case "$(uname -m)" in
    x86_64) architecture=amd64 platform=x86_64 ;;
    aarch64) architecture=arm64 platform=aarch64 ;;
    *)
        echo "build-volkeep-image: no wheels for $(uname -m)" >&2
        exit 1
        ;;
esac

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
root="$work/root"

# Only what python3 needs (--variant=extract unpacks the packages and their dependencies);
# tzdata for the policies' time zones; dash for `docker exec ... sh`.
mmdebstrap --quiet --mode=root --variant=extract --architectures="$architecture" \
    --include=python3,tzdata,dash "$suite" "$root" "$mirror"
rm -rf "$root/usr/share/doc" "$root/usr/share/man" "$root/usr/share/locale" \
    "$root/usr/share/info" "$root/var/cache/apt" "$root/var/lib/apt/lists"

# Wheels of volkeep and of the dependencies PyPI has no wheel of (built here: pure Python),
# then everything installed where Debian's python3 finds it, binary wheels chosen for its
# CPython 3.11 and any glibc up to bookworm's 2.36 (pip infers no older tag from a newer).
python3 -m venv "$work/pip" # a pip of its own, that sees none of this machine's packages
pip="$work/pip/bin/pip --quiet --disable-pip-version-check"
# from a copy: a build in the checkout would leave build/ there, whose stale files a later
# wheel would take in
mkdir "$work/source"
(cd "$repository" && tar -c --exclude=__pycache__ pyproject.toml README.md daemon) |
    tar -C "$work/source" -x
$pip wheel --wheel-dir "$work/wheels" "$work/source"
platforms=""
for minor in $(seq 36 -1 5); do
    platforms="$platforms --platform manylinux_2_${minor}_$platform"
done
# shellcheck disable=SC2086 # one word per option
$pip install --no-compile \
    --target "$root/usr/local/lib/python3.11/dist-packages" --find-links "$work/wheels" \
    --only-binary=:all: --implementation cp --python-version 3.11 --abi cp311 \
    $platforms "$work"/wheels/volkeep-*.whl
rm -rf "$root/usr/local/lib/python3.11/dist-packages/bin" # scripts for this machine's Python
mkdir -p "$root/usr/local/bin" "$root/etc/volkeep" "$root/var/lib/volkeep" "$root/tmp"
chmod 1777 "$root/tmp"
printf '%s\n' '#!/usr/bin/python3' 'from daemon.cli.main import run' 'run()' >"$root/usr/local/bin/volkeep"
chmod 755 "$root/usr/local/bin/volkeep"
echo 'root:x:0:0:root:/root:/bin/sh' >"$root/etc/passwd"
echo 'root:x:0:' >"$root/etc/group"

tar -C "$root" -c . | docker import \
    --change 'ENV PATH=/usr/local/bin:/usr/bin:/bin LANG=C.UTF-8' \
    --change 'ENV VOLKEEP_CONFIG=/etc/volkeep VOLKEEP_STATE_DIR=/var/lib/volkeep' \
    --change 'ENTRYPOINT ["/usr/local/bin/volkeep"]' \
    --change 'CMD ["run"]' \
    --change "LABEL volkeep.source=$source_digest" \
    - "$image" >/dev/null
echo "built $image"
