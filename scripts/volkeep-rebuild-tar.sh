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
# recipe and the index in clear, a version 3 recipe's pieces and its text expanded and,
# when encrypted, the packs the archive uses, decrypted.
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
# with "T size -" when its tar's SHA-256 was not computed; version 3 keeps those lines in
# pieces, expanded in step 2b)
in_clear "$recipe" > "$work/recipe"
version=$(head -n 1 "$work/recipe")
case "$version" in
"volkeep-recipe 1" | "volkeep-recipe 2" | "volkeep-recipe 3") ;;
*) fail "$recipe: not a volkeep recipe of version 1, 2 or 3" ;;
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

# The packs. A pack's name is the SHA-256 of its stored bytes: each is checked once, before
# its first use (a chunk that did not compress is a zstd frame without a checksum of its own).
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

# 2b. A version 3 recipe: its P lines declare pieces, chunks whose plain bytes are lines of
# a version 2 recipe (numbered 0, 1, ... in the order of the P lines); each S line stands
# for the bytes [start, stop) of a piece. Each piece is extracted once, its length and its
# lines' kinds checked; replacing each S line by its bytes (whole lines, checked) and
# dropping the P lines gives the text of a version 2 recipe, which steps 3 and 4 follow.
is_number() {  # a decimal count: no leading 0 (arithmetic would read octal), at most 18 digits
    case $1 in
    '' | *[!0-9]* | 0?*) return 1 ;;
    esac
    [ ${#1} -le 18 ]
}
is_id() {
    case $1 in
    *[!0-9a-f]*) return 1 ;;
    esac
    [ ${#1} -eq 64 ]
}
ends_line() {  # whether byte $2 (counting from 1) of file $1 is a newline
    [ "$(tail -c +"$2" "$1" | head -c 1 | wc -l)" -eq 1 ]
}
splice() {  # "S piece start stop": write those bytes of the piece, once checked
    [ $# -eq 4 ] && is_number "$2" && is_number "$3" && is_number "$4" \
        || fail "$recipe, line $line: a damaged S line"
    [ "$2" -lt "$declared" ] || fail "$recipe, line $line: piece $2 is declared by no P line before it"
    piece="$work/pieces/$2"
    read -r length < "$piece.length"
    range="bytes [$3, $4) of piece $2"
    [ "$4" -gt "$3" ] || fail "$recipe, line $line: $range: an empty range"
    [ "$4" -le "$length" ] || fail "$recipe, line $line: $range: the piece has $length bytes"
    [ "$3" -eq 0 ] || ends_line "$piece" "$3" || fail "$recipe, line $line: $range do not start at a line's start"
    ends_line "$piece" "$4" || fail "$recipe, line $line: $range do not end at a line's end"
    tail -c +$(($3 + 1)) "$piece" | head -c $(($4 - $3))
}
if [ "$version" = "volkeep-recipe 3" ]; then
    mkdir "$work/pieces"
    line=0 pieces=0
    while read -r kind id length rest <&3; do
        line=$((line + 1))
        [ "$kind" = P ] || continue
        [ -z "$rest" ] && is_id "$id" && is_number "$length" || fail "$recipe, line $line: a damaged P line"
        echo "$id $pieces $length"
        pieces=$((pieces + 1))
    done 3< "$work/recipe" > "$work/wanted"
    sort -k1,1 "$work/wanted" > "$work/wanted-sorted"
    join "$work/wanted-sorted" "$work/index" | sort -k2,2n > "$work/piece-locations"
    found=$(wc -l < "$work/piece-locations")
    [ "$found" -eq "$pieces" ] || fail "$((pieces - found)) of the recipe's pieces are in no index"
    while read -r id n length pack offset frame plain <&3; do
        piece="$work/pieces/$n"
        [ "$plain" -eq "$length" ] || fail "piece $n (chunk $id): $length bytes by its P line, $plain by the index"
        open_pack "$pack"
        tail -c +$((offset + 1)) "$pack_path" | head -c "$frame" | zstd -dq > "$piece" \
            || fail "pack $pack: damaged piece $n at $offset"
        [ "$(wc -c < "$piece")" -eq "$length" ] || fail "piece $n (chunk $id): not $length bytes long"
        echo "$length" > "$piece.length"
        cut -c 1-2 "$piece" | sort -u > "$work/kinds"
        while IFS= read -r opening <&4; do
            case $opening in
            "R " | "Z " | "C " | "M ") ;;
            "T "*) fail "piece $n (chunk $id) holds a T line (the end line is the recipe file's)" ;;
            *) fail "piece $n (chunk $id) holds a line that is not R, Z, C or M" ;;
            esac
        done 4< "$work/kinds"
    done 3< "$work/piece-locations"
    line=0 declared=0
    {
        echo "volkeep-recipe 2"
        while IFS= read -r text <&3; do
            line=$((line + 1))
            case $text in
            "P "*) declared=$((declared + 1)) ;;
            "S "*)
                set -f
                # shellcheck disable=SC2086  # the line's fields, split on its spaces
                splice $text
                set +f
                ;;
            "R "* | "Z "* | "C "* | "M "*) printf '%s\n' "$text" ;;
            "T "*)
                printf '%s\n' "$text"
                break
                ;;
            *) [ "$line" -eq 1 ] || fail "$recipe, line $line: not a line of a version 3 recipe" ;;
            esac
        done 3< "$work/recipe"
    } > "$work/expanded"
    mv "$work/expanded" "$work/recipe"
fi

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
