#!/bin/sh
# Build a volkeep helper image locally, with no registry: Debian's busybox-static for sh,
# find, rm, chown, touch...; with --gnu-tar, the host's GNU tar (and the libraries it
# needs) replaces busybox's tar.
# Usage: scripts/build-helper-image.sh [--gnu-tar] [IMAGE]
#        (default IMAGE: volkeep-helper:busybox, or volkeep-helper:gnutar with --gnu-tar)
set -eu
gnu_tar=0
if [ "${1:-}" = --gnu-tar ]; then
    gnu_tar=1
    shift
fi
default=volkeep-helper:busybox
[ "$gnu_tar" = 1 ] && default=volkeep-helper:gnutar
image="${1:-$default}"
busybox=/bin/busybox
if [ ! -x "$busybox" ] || ! "$busybox" --list >/dev/null 2>&1; then
    echo "build-helper-image: $busybox missing; install Debian's busybox-static" >&2
    exit 1
fi
root=$(mktemp -d)
trap 'rm -rf "$root"' EXIT
mkdir -p "$root/bin" "$root/tmp" "$root/etc"
cp "$busybox" "$root/bin/busybox"
for applet in $("$busybox" --list); do
    [ "$applet" = busybox ] || ln -s busybox "$root/bin/$applet"
done
if [ "$gnu_tar" = 1 ]; then
    rm "$root/bin/tar"
    cp /bin/tar "$root/bin/tar"
    # the shared libraries and the loader, at the paths the binary asks for
    for library in $(ldd /bin/tar | grep -o '/[^ ]*'); do
        mkdir -p "$root$(dirname "$library")"
        cp -L "$library" "$root$library"
    done
fi
echo 'root:x:0:0:root:/:/bin/sh' > "$root/etc/passwd"
echo 'root:x:0:' > "$root/etc/group"
tar -C "$root" -c . | docker import --change 'CMD ["/bin/sh"]' - "$image" >/dev/null
echo "built $image"
