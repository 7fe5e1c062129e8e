#!/bin/sh
# Rebuild the tar of one deduplicated volkeep archive without volkeep, with sh, coreutils,
# zstd and age only (docs/format-dedup.md, "Recovery without volkeep").
#
#   volkeep-rebuild-tar.sh CHUNKS_DIR RECIPE OUTPUT [IDENTITY_FILE]
#
# CHUNKS_DIR is a local copy of the chunk repository (the directory that holds config,
# index/ and packs/), RECIPE the archive's recipe file, IDENTITY_FILE the age identity when
# the policy encrypts. OUTPUT is written (under OUTPUT.part first) and kept only when the
# rebuilt tar has the size and SHA-256 the recipe ends with. Scratch space ($TMPDIR): the
# recipe and the index in clear and, when encrypted, the packs the archive uses, decrypted.
set -eu
export LC_ALL=C

fail() {
    echo "volkeep-rebuild-tar: $*" >&2
    exit 1
}
if [ $# -ne 3 ] && [ $# -ne 4 ]; then
    echo "usage: $0 CHUNKS_DIR RECIPE OUTPUT [IDENTITY_FILE]" >&2
    exit 2
fi
chunks=$1 recipe=$2 output=$3 identity=${4:-}
work=$(mktemp -d)
trap 'rm -rf "$work" "$output.part"' EXIT
trap 'exit 1' HUP INT TERM

# in_clear FILE: a stored section (recipe, index) in clear: age (if encrypted), then zstd
in_clear() {
    if [ -n "$identity" ]; then
        age -d -i "$identity" -o "$work/sealed" "$1" || fail "$1: age cannot decrypt it"
        zstd -dq -c "$work/sealed" || fail "$1: damaged (zstd)"
    else
        zstd -dq -c "$1" || fail "$1: damaged (zstd)"
    fi
}

# 1. The recipe, one step per line: R base64 | Z count | C chunk-id length | T size sha256
# (version 2 adds M lines, which mark where members end and add no bytes, and may end
# with "T size -" when its tar's SHA-256 was not computed)
in_clear "$recipe" > "$work/recipe"
case "$(head -n 1 "$work/recipe")" in
"volkeep-recipe 1" | "volkeep-recipe 2") ;;
*) fail "$recipe: not a volkeep recipe of version 1 or 2" ;;
esac

# 2. Every index, one line per chunk: chunk-id pack offset stored-length plain-length
: > "$work/all-index"
for index in "$chunks"/index/*; do
    [ -f "$index" ] || fail "$chunks/index: no index file"
    in_clear "$index" > "$work/one-index"
    [ "$(head -n 1 "$work/one-index")" = "volkeep-index 1" ] || fail "$index: not a volkeep index of version 1"
    tail -n +2 "$work/one-index" >> "$work/all-index"
done
sort -k1,1 -u "$work/all-index" > "$work/index"

# 3. Where each chunk of the recipe is, in the recipe's order: chunk-id seq pack offset ...
seq=0
while read -r kind id rest; do
    if [ "$kind" = C ]; then
        seq=$((seq + 1))
        echo "$id $seq"
    fi
done < "$work/recipe" > "$work/wanted"
sort -k1,1 "$work/wanted" > "$work/wanted-sorted"
join "$work/wanted-sorted" "$work/index" | sort -k2,2n > "$work/locations"
found=$(wc -l < "$work/locations")
[ "$found" -eq "$seq" ] || fail "$((seq - found)) of the recipe's chunks are in no index"

# 4. Follow the recipe. Runs of chunks that lie one after the other in a pack are read
# and decompressed at once (zstd reads concatenated frames); runs of raw lines, too.
# A pack's name is the SHA-256 of its stored bytes: each is checked once, before its first
# use (a chunk that did not compress is a zstd frame without a checksum of its own).
mkdir "$work/packs" "$work/checked"
pack_path=
open_pack() {  # sets pack_path: the pack named $1, in clear
    stored="$chunks/packs/$(printf %.2s "$1")/$1"
    [ -f "$stored" ] || fail "$stored: pack missing"
    if [ ! -f "$work/checked/$1" ]; then
        [ "$(sha256sum < "$stored" | cut -d ' ' -f 1)" = "$1" ] || fail "$stored: damaged (its SHA-256 is not its name)"
        : > "$work/checked/$1"
    fi
    if [ -z "$identity" ]; then
        pack_path=$stored
        return
    fi
    pack_path="$work/packs/$1"
    if [ ! -f "$pack_path" ]; then
        age -d -i "$identity" -o "$pack_path" "$stored" || fail "$stored: age cannot decrypt it"
    fi
}
run_pack= run_start=0 run_end=0 raw=
flush_chunks() {
    if [ -n "$run_pack" ]; then
        open_pack "$run_pack"
        tail -c +$((run_start + 1)) "$pack_path" | head -c $((run_end - run_start)) \
            | zstd -dq >&5 || fail "pack $run_pack: damaged chunks at $run_start"
        run_pack=
    fi
}
flush_raw() {
    if [ -n "$raw" ]; then
        printf '%s' "$raw" | base64 -d >&5 || fail "damaged raw lines in the recipe"
        raw=
    fi
}
exec 5> "$output.part" 4< "$work/locations"
size= sum=
while read -r kind a b; do
    case $kind in
    R)
        flush_chunks
        raw="$raw$a
"
        ;;
    Z)
        flush_chunks
        flush_raw
        head -c "$a" /dev/zero >&5
        ;;
    C)
        flush_raw
        read -r id _ pack offset length _ <&4
        [ "$id" = "$a" ] || fail "chunk $a: not where the index says"
        if [ "$pack" = "$run_pack" ] && [ "$offset" -eq "$run_end" ]; then
            run_end=$((offset + length))
        else
            flush_chunks
            run_pack=$pack run_start=$offset run_end=$((offset + length))
        fi
        ;;
    T)
        flush_chunks
        flush_raw
        size=$a sum=$b
        break
        ;;
    M | volkeep-recipe) ;;
    *) fail "damaged recipe line starting with '$kind'" ;;
    esac
done < "$work/recipe"
exec 5>&- 4<&-

# 5. The tar is the archive only if it has the recipe's size and SHA-256.
[ -n "$size" ] || fail "$recipe: cut short (no end line)"
[ "$(wc -c < "$output.part")" -eq "$size" ] || fail "the rebuilt tar is not of the recipe's size"
if [ "$sum" != - ]; then  # "-": the recipe records none (members taken from an earlier one)
    [ "$(sha256sum < "$output.part" | cut -d ' ' -f 1)" = "$sum" ] || fail "the rebuilt tar's SHA-256 is not the recipe's"
fi
mv "$output.part" "$output"
