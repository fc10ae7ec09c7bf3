#!/bin/bash
# Keep a --preset book run's --resume state in this repository without putting it in main's history:
# the newest checkpoint of each step (about 31 MB each at width 64) goes into one parentless commit
# at refs/runs/book-preset, which a plain clone does not fetch (each snapshot replaces the last).
#
#   experiments/results/book_preset/snapshot_state.sh RUN_ROOT    # RUN_ROOT/step09_diffusion, .../step10_guidance
#
# Get it back and continue:
#   git fetch <this repo> refs/runs/book-preset && git archive FETCH_HEAD | tar -x -C RUN_ROOT
#   python -m experiments.step09_diffusion --preset book --out RUN_ROOT/step09_diffusion --no-ddpm-fid --resume
set -euo pipefail
root=$(cd "$1" && pwd)
repo=$(git -C "$(dirname "$0")" rev-parse --show-toplevel)
tmp=$(mktemp -d)
trap 'rm -rf "$tmp" "$tmp.idx"' EXIT
for step in step09_diffusion step10_guidance; do
  for folder in checkpoints.partial checkpoints; do
    src="$root/$step/$folder"
    [ -d "$src" ] || continue
    last=$(ls "$src" | grep -E '^[0-9]+$' | sort -n | tail -1)
    [ -n "$last" ] || continue
    mkdir -p "$tmp/$step/$folder"
    cp -a "$src/$last" "$tmp/$step/$folder/"
    echo "$step: $folder/$last"
    break
  done
done
[ -n "$(ls "$tmp")" ] || { echo "no checkpoint under $root" >&2; exit 1; }
export GIT_INDEX_FILE="$tmp.idx"
git -C "$repo" --work-tree="$tmp" add -A .
tree=$(git -C "$repo" write-tree)
commit=$(git -C "$repo" commit-tree "$tree" -m "--preset book resume state from $root ($(date -u +%FT%TZ))")
git -C "$repo" update-ref refs/runs/book-preset "$commit"
echo "refs/runs/book-preset -> $commit"
