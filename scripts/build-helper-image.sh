#!/bin/sh
# Build volkeep's helper image locally from Debian's busybox-static, with no registry.
# Usage: scripts/build-helper-image.sh [IMAGE]   (default: volkeep-helper:busybox)
set -eu
image="${1:-volkeep-helper:busybox}"
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
echo 'root:x:0:0:root:/:/bin/sh' > "$root/etc/passwd"
echo 'root:x:0:' > "$root/etc/group"
tar -C "$root" -c . | docker import --change 'CMD ["/bin/sh"]' - "$image" >/dev/null
echo "built $image"
