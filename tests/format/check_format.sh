#!/usr/bin/env bash
# Fails, listing them, when C++ sources of the project differ from what
# clang-format (Debian's, with the repository's .clang-format) makes of them.
# Fix with: clang-format -i FILE...
set -euo pipefail
root=${1:?usage: check_format.sh SOURCE_DIR}
cd "$root"
mapfile -t files < <(find core eval proto server client bench tests \
  -name '*.cc' -o -name '*.h' -o -name '*.inc' | sort)
unformatted=()
for f in "${files[@]}"; do
  clang-format --dry-run --Werror "$f" >/dev/null 2>&1 || unformatted+=("$f")
done
echo "${#files[@]} files checked, ${#unformatted[@]} not formatted"
if ((${#unformatted[@]})); then
  printf '  %s\n' "${unformatted[@]}"
  exit 1
fi
