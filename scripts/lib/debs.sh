# Shared by scripts/setup.sh and scripts/go-oracle.sh: downloads pinned Debian packages with a
# private apt configuration (nothing is added to the system's apt sources) and unpacks them.
#
#   fetch_debs DEST SPEC...   SPEC is name|suite|upstream version; unpacks into DEST
#
# The Debian revision (binNMU suffixes such as +b3) is resolved at download time, because
# Debian rebuilds packages and drops old revisions; the upstream version must match exactly.

fetch_debs() {
  local dest="$1"
  shift
  command -v apt-get >/dev/null || { echo "setup: apt-get is required (Debian)" >&2; return 1; }
  command -v dpkg >/dev/null || { echo "setup: dpkg is required (Debian)" >&2; return 1; }
  local apt_dir="$dest/.apt"
  mkdir -p "$apt_dir/lists/partial" "$apt_dir/cache/archives/partial" "$apt_dir/debs"
  cat >"$apt_dir/sources.list" <<SRC
deb http://deb.debian.org/debian bookworm main
deb http://deb.debian.org/debian trixie main
deb http://deb.debian.org/debian bullseye main
SRC
  : >"$apt_dir/preferences"
  local opts=(
    -o "Dir::Etc::SourceList=$apt_dir/sources.list"
    -o "Dir::Etc::SourceParts=/dev/null"
    -o "Dir::Etc::Preferences=$apt_dir/preferences"
    -o "Dir::Etc::PreferencesParts=/dev/null"
    -o "Dir::State::Lists=$apt_dir/lists"
    -o "Dir::Cache=$apt_dir/cache"
    -o "Dir::State::Status=/dev/null"
    -o "APT::Get::List-Cleanup=0"
    -o "Acquire::Retries=3"
    -o "APT::Sandbox::User=root"
  )
  if [ ! -f "$apt_dir/lists/.updated" ]; then
    echo "setup: apt-get update (private lists in $apt_dir)"
    apt-get "${opts[@]}" -q update >/dev/null
    touch "$apt_dir/lists/.updated"
  fi
  local spec name suite version full deb
  for spec in "$@"; do
    IFS='|' read -r name suite version <<<"$spec"
    if ! ls "$apt_dir/debs/${name}_${version}"[-+~]*.deb >/dev/null 2>&1; then
      full=$(apt-cache "${opts[@]}" madison "$name" \
        | awk -F'|' -v s=" $suite/" -v v="$version" '
            index($3, s) { gsub(/ /, "", $2); split($2, a, /[-+~]/); sub(/^[0-9]+:/, "", a[1]);
                           if (a[1] == v) { print $2; exit } }')
      if [ -z "$full" ]; then
        echo "setup: $name $version not found in Debian $suite; available:" >&2
        apt-cache "${opts[@]}" madison "$name" >&2 || true
        return 1
      fi
      echo "setup: downloading $name=$full ($suite)"
      (cd "$apt_dir/debs" && apt-get "${opts[@]}" -q download "$name=$full" >/dev/null)
    fi
    for deb in "$apt_dir/debs/${name}_${version}"[-+~]*.deb; do
      dpkg -x "$deb" "$dest"
    done
  done
}
