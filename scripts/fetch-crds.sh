#!/usr/bin/env bash
# Fetch the upstream CRDs that manifests/crds.lock pins (raw GitHub files at the release tags) and
# verify every sha256, or verify a folder that holds them already.
#   scripts/fetch-crds.sh               download into .crds/ (the tests read it when there is no
#                                       ../shared/crds); nothing is written unless all files match
#   scripts/fetch-crds.sh --check DIR   verify DIR (e.g. ../shared/crds) against the lock
# CRDS_DEST replaces .crds; CRDS_BASE_URL replaces https://raw.githubusercontent.com.
set -euo pipefail

LOCK=manifests/crds.lock
BASE_URL="${CRDS_BASE_URL:-https://raw.githubusercontent.com}"

usage() {
  sed -n '2,7p' "$0" | sed 's/^# \{0,1\}//' >&2
  exit 2
}

check=""
case "${1:-}" in
  "") [ $# -eq 0 ] || usage ;;
  --check)
    [ $# -eq 2 ] || usage
    check="$2"
    [ -d "$check" ] || {
      echo "error: $check is not a folder (want one with <project>-<version>/ folders of CRDs)" >&2
      exit 1
    }
    ;;
  *) usage ;;
esac
# Folders given by the caller are relative to where it runs; the lock is read from the repository.
if [ -n "$check" ]; then check="$(cd "$check" && pwd)"; fi
if [ -n "${CRDS_DEST:-}" ]; then
  DEST="$(cd "$(dirname "$CRDS_DEST")" && pwd)/$(basename "$CRDS_DEST")"
fi
cd "$(dirname "$0")/.."
DEST="${DEST:-.crds}"

work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
sums="$work/SHA256SUMS"
: >"$sums"
folders=()
while read -r project version repository tag path file sha256 extra; do
  case "$project" in '' | '#'*) continue ;; esac
  if [ -z "$sha256" ] || [ -n "$extra" ]; then
    echo "error: $LOCK: the line for '$project $version ${file:-}' needs 7 fields" >&2
    exit 1
  fi
  folder="$project-$version"
  printf '%s  %s\n' "$sha256" "$folder/$file" >>"$sums"
  case " ${folders[*]} " in *" $folder "*) ;; *) folders+=("$folder") ;; esac
  if [ -z "$check" ]; then
    url="$BASE_URL/$repository/$tag/$path/$file"
    mkdir -p "$work/crds/$folder"
    echo "fetching $url" >&2
    if ! curl --fail --silent --show-error --location --retry 3 \
      --output "$work/crds/$folder/$file" "$url"; then
      echo "error: cannot download $url (no internet access, or a tag or path in $LOCK is wrong)" >&2
      exit 1
    fi
  fi
done <"$LOCK"

# verify DIR: every locked file there with its sha256, and no CRD file there that the lock lacks.
verify() {
  local dir="$1" ok=0 expected rel actual f
  if ! (cd "$dir" && sha256sum --check --strict --quiet "$sums" >&2); then
    ok=1
    while read -r expected rel; do
      if [ ! -f "$dir/$rel" ]; then
        echo "  $rel: missing" >&2
        continue
      fi
      actual="$(sha256sum "$dir/$rel" | cut -d' ' -f1)"
      [ "$actual" = "$expected" ] || echo "  $rel: the lock says $expected, the file is $actual" >&2
    done <"$sums"
  fi
  for folder in "${folders[@]}"; do
    for f in "$dir/$folder"/*.yaml; do
      [ -e "$f" ] || continue
      rel="$folder/${f##*/}"
      if ! grep -qF "  $rel" "$sums"; then
        echo "  $rel: not in $LOCK (add it with its sha256, or remove it)" >&2
        ok=1
      fi
    done
  done
  return "$ok"
}

if [ -n "$check" ]; then
  if ! verify "$check"; then
    echo "error: $check does not match $LOCK (above): fetch the pinned files again" \
      "(scripts/fetch-crds.sh), or, after an upgrade, review them and update the lock" >&2
    exit 1
  fi
  echo "$check matches $LOCK ($(wc -l <"$sums") files)" >&2
  exit 0
fi

if ! verify "$work/crds"; then
  echo "error: the downloaded files do not match the sha256 in $LOCK (above); nothing was" \
    "written to $DEST. After changing a version in the lock, review the new CRDs and update" \
    "its sha256; otherwise a tag was moved upstream or the download was altered" >&2
  exit 1
fi
mkdir -p "$DEST"
for folder in "${folders[@]}"; do
  rm -rf "${DEST:?}/$folder"
  cp -R "$work/crds/$folder" "$DEST/$folder"
done
echo "$(wc -l <"$sums") CRD files verified into $DEST/" >&2
