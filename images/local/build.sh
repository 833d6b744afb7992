#!/usr/bin/env bash
# Build asrflow's two images on this machine with podman, without a Docker engine or a
# registry (make images-local). The Dockerfiles' bases cannot be pulled here, so local
# stand-ins replace them through build arguments:
#   localhost/asrflow-base/debian:bookworm            debootstrap bookworm, podman import
#   localhost/asrflow-base/python:3.11-slim-bookworm  that + CPython 3.11 in /usr/local (python slim's stand-in)
#   localhost/asrflow-base/uv:VERSION                 the uv binary of the same version, from PyPI
# The train image is the CPU variant of images/train/Dockerfile (BASE_IMAGE, PYTHON, TORCH_INDEX).
# Stand-ins are built once per machine (skipped when present); podman's layer cache does the rest.
#
#   images/local/build.sh [all|conf|base|data|train]      (all: conf, base, data, train)
#
# Settings (environment): ASRFLOW_IMAGES_STATE (default /var/tmp/asrflow-images: containers.conf,
# the debootstrap root), DEBIAN_MIRROR (default: this machine's apt mirror), PYTHON (default
# .venv/bin/python: reads components/images.py and pip's configuration).
set -euo pipefail

cd "$(dirname "$0")/../.."
STATE=${ASRFLOW_IMAGES_STATE:-/var/tmp/asrflow-images}
PYTHON=${PYTHON:-.venv/bin/python}
DEBIAN_BASE=localhost/asrflow-base/debian:bookworm
PYTHON_BASE=localhost/asrflow-base/python:3.11-slim-bookworm
UV_VERSION=$(sed -n 's|^ARG UV_IMAGE=.*/uv:\([0-9.]*\)@.*|\1|p' images/train/Dockerfile)
UV_BASE=localhost/asrflow-base/uv:${UV_VERSION}
export CONTAINERS_CONF=$STATE/containers.conf

log() { printf '[images-local %(%H:%M:%S)T] %s\n' -1 "$*"; }
die() { printf 'images/local/build.sh: %s\n' "$*" >&2; exit 1; }

# podman's defaults fail here: crun cannot set RLIMIT_NOFILE and cgroups are in hybrid mode.
# runc with explicit limits works (nofile at the hard limit; nproc of 50000 or more fails).
write_conf() {
  command -v podman >/dev/null || die "podman is not installed: apt-get install -y podman buildah skopeo debootstrap runc uidmap"
  mkdir -p "$STATE"
  local nofile
  nofile=$(ulimit -Hn)
  [ "$nofile" = unlimited ] && nofile=1048576
  cat >"$CONTAINERS_CONF.tmp" <<EOF
# written by images/local/build.sh; CONTAINERS_CONF names it for podman and the container runner
[containers]
default_ulimits = ["nofile=$nofile:$nofile", "nproc=32768:32768"]
[engine]
runtime = "runc"
cgroup_manager = "cgroupfs"
events_logger = "file"
EOF
  mv "$CONTAINERS_CONF.tmp" "$CONTAINERS_CONF"
}

exists() { podman image exists "$1"; }

debian_mirror() {
  local mirror=${DEBIAN_MIRROR:-}
  if [ -z "$mirror" ]; then
    mirror=$(sed -n 's/^URIs: *\([^ ]*\).*/\1/p' /etc/apt/sources.list.d/*.sources 2>/dev/null | grep -v security | head -n1 || true)
  fi
  if [ -z "$mirror" ]; then
    mirror=$(sed -n 's/^deb \(\[[^]]*\] \)\?\([^ ]*\) .*/\2/p' /etc/apt/sources.list 2>/dev/null | head -n1 || true)
  fi
  [ -n "$mirror" ] || die "no Debian mirror found in /etc/apt: set DEBIAN_MIRROR"
  echo "$mirror"
}

build_debian() {
  exists "$DEBIAN_BASE" && { log "$DEBIAN_BASE exists"; return; }
  local root=$STATE/rootfs mirror
  mirror=$(debian_mirror)
  log "debootstrap bookworm from $mirror"
  rm -rf "$root"
  debootstrap --variant=minbase bookworm "$root" "$mirror" >"$STATE/debootstrap.log" 2>&1 \
    || die "debootstrap failed: see $STATE/debootstrap.log"
  tar -C "$root" -c . | podman import --change 'CMD ["bash"]' - "$DEBIAN_BASE" >/dev/null
  rm -rf "$root"
}

# CPython from source in /usr/local, as in python:3.11-slim: the build that runs this project's
# tests here (sys.base_prefix of $PYTHON), when it is one (not /usr) with tarfile's extraction
# filters (3.11.4+); else Debian's python3.11.
cpython_tar() {
  local out=$1 prefix
  prefix=$("$PYTHON" -c 'import sys, tarfile; print(sys.base_prefix if hasattr(tarfile, "data_filter") else "")')
  if [ -z "$prefix" ] || [ "$prefix" = /usr ] || [ ! -x "$prefix/bin/python3.11" ]; then
    tar -cf "$out" --files-from /dev/null
    return 1
  fi
  local lib=lib/python3.11
  tar -C "$prefix" -cf "$out" \
    --exclude="$lib/site-packages/*" --exclude="$lib/test" --exclude="$lib/idlelib" --exclude="$lib/tkinter" \
    --exclude="$lib/turtledemo" --exclude="$lib/config-3.11-*" --exclude="$lib/lib-dynload/_tkinter*" \
    --exclude="$lib/lib-dynload/_test*" \
    bin/python3.11 lib/python3.11 $(cd "$prefix" && ls lib/libpython3*.so* 2>/dev/null)
}

build_python() {
  exists "$PYTHON_BASE" && { log "$PYTHON_BASE exists"; return; }
  local dir debian_python=0
  dir=$(mktemp -d)
  cp images/local/python-standin.Dockerfile "$dir/Containerfile"
  if cpython_tar "$dir/cpython.tar"; then
    log "building $PYTHON_BASE with CPython $("$PYTHON" -c 'import platform; print(platform.python_version())')"
  else
    debian_python=1
    log "building $PYTHON_BASE with Debian's python3.11 (no CPython 3.11.4+ build here: NeMo cannot restore models in it)"
  fi
  podman build --network host --pull=never --build-arg "DEBIAN_IMAGE=$DEBIAN_BASE" \
    --build-arg "DEBIAN_PYTHON=$debian_python" -f "$dir/Containerfile" -t "$PYTHON_BASE" "$dir"
  rm -rf "$dir"
}

build_uv() {
  exists "$UV_BASE" && { log "$UV_BASE exists"; return; }
  log "building $UV_BASE from PyPI's uv==$UV_VERSION"
  local dir
  dir=$(mktemp -d)
  "$PYTHON" -m pip download -q --no-deps --only-binary :all: -d "$dir" "uv==$UV_VERSION" \
    --platform manylinux_2_17_x86_64 2> >(grep -v '^WARNING: Location' >&2)
  "$PYTHON" -m zipfile -e "$dir"/uv-*.whl "$dir/wheel"
  install -m 0755 "$dir/wheel/uv-$UV_VERSION.data/scripts/uv" "$dir/uv"
  printf 'FROM scratch\nCOPY uv /uv\nENTRYPOINT ["/uv"]\n' >"$dir/Containerfile"
  podman build --pull=never -f "$dir/Containerfile" -t "$UV_BASE" "$dir"
  rm -rf "$dir"
}

# The image references, version and source from components/images.py (the pipeline's own).
image_ref() { "$PYTHON" -c "from components import images; print(images.$1)"; }

build_image() {
  local name=$1 ref revision config mounts
  ref=$(image_ref "${name^^}_IMAGE")
  revision=$(git rev-parse HEAD 2>/dev/null || echo unknown)
  config=$(mktemp -d)
  mapfile -t mounts < <("$PYTHON" images/local/installer_config.py "$config" "$PYTHON" -m pip | xargs -n1)
  local args=(
    --build-arg "BASE_IMAGE=$PYTHON_BASE" --build-arg "UV_IMAGE=$UV_BASE" --build-arg "TORCH_INDEX="
    --build-arg "UV_BUILD_CONFIG=/mnt/uv.toml"
    --build-arg "VERSION=$(image_ref VERSION)" --build-arg "REVISION=$revision" --build-arg "SOURCE=$(image_ref SOURCE)"
  )
  [ "$name" = train ] && args+=(--build-arg "PYTHON=/usr/local/bin/python3.11")
  log "building $ref (images/$name/Dockerfile, revision $revision)"
  local started=$SECONDS
  podman build --network host --pull=never "${mounts[@]}" "${args[@]}" \
    -f "images/$name/Dockerfile" -t "$ref" . || { rm -rf "$config"; die "building $ref failed"; }
  rm -rf "$config"
  log "built $ref in $((SECONDS - started)) s: $(podman image inspect --format '{{.Size}}' "$ref" | awk '{printf "%.2f GB", $1/1e9}')"
}

main() {
  local what=${1:-all}
  case "$what" in
    conf) write_conf; echo "$CONTAINERS_CONF" ;;
    base) write_conf; build_debian; build_python; build_uv ;;
    data|train) write_conf; build_image "$what" ;;
    all)
      write_conf; build_debian; build_python; build_uv; build_image data; build_image train
      podman image prune -f >/dev/null  # earlier builds' layers no tagged image uses: the disk stays bounded
      ;;
    *) die "unknown target $what (all, conf, base, data, train)" ;;
  esac
}

main "$@"
