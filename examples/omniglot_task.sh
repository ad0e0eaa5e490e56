#!/usr/bin/env bash
# Arrange Omniglot characters as `metalearn adapt` folders: task/support/<character>/ (SHOTS
# drawings each) and task/query/<character>/ (QUERIES other drawings each).
#   examples/omniglot_task.sh ALPHABET_FOLDER WAYS SHOTS QUERIES OUT
# e.g. after `unzip images_evaluation.zip` (alphabets that omniglot-small never trains on):
#   examples/omniglot_task.sh images_evaluation/Kannada 5 1 5 task
set -euo pipefail
alphabet=$1 ways=$2 shots=$3 queries=$4 out=$5
rm -rf "$out"
for character in $(ls "$alphabet" | sort | head -n "$ways"); do
  mkdir -p "$out/support/$character" "$out/query/$character"
  drawings=("$alphabet/$character"/*.png)
  cp "${drawings[@]:0:$shots}" "$out/support/$character/"
  cp "${drawings[@]:$shots:$queries}" "$out/query/$character/"
done
echo "$out: $ways classes, $shots support and $queries query images each" >&2
