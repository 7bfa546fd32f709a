#!/usr/bin/env bash
# Build a Debian bookworm base image from Debian packages and import it into the container engine,
# for machines that reach Debian's mirror but no image registry:
#
#   docker/bootstrap-base.sh [IMAGE]          # default IMAGE: localhost/tfmf-base:bookworm
#
# debootstrap (variant minbase: apt, dpkg, coreutils, no docs beyond that) writes a rootfs into a
# temporary folder; its apt sources point at the same mirror the host's apt uses; the folder is
# tarred and imported with `ENGINE import`. The Dockerfile then builds FROM it via
# `--build-arg BASE_IMAGE=IMAGE`. An image that already exists is kept (FORCE=1 rebuilds it).
#
# Environment:
#   ENGINE          podman (default) or docker
#   DEBIAN_MIRROR   mirror URL (default: the first bookworm mirror in /etc/apt/sources.list*)
#   SECURITY_MIRROR security mirror URL (default: the host's bookworm-security one, if any)
#   SUITE           default bookworm (its Python is 3.11, the project's)
#   WORKDIR         where the rootfs is made (default: a mktemp folder under /var/tmp)
set -euo pipefail

IMAGE="${1:-localhost/tfmf-base:bookworm}"
ENGINE="${ENGINE:-podman}"
SUITE="${SUITE:-bookworm}"

if [[ "${FORCE:-0}" != 1 ]] && "$ENGINE" image inspect "$IMAGE" >/dev/null 2>&1; then
  echo "bootstrap-base: $IMAGE already exists (FORCE=1 rebuilds it)"
  exit 0
fi
if [[ "$(id -u)" != 0 ]]; then
  echo "bootstrap-base: debootstrap needs root" >&2
  exit 1
fi
command -v debootstrap >/dev/null || { echo "bootstrap-base: apt-get install debootstrap" >&2; exit 1; }

# The host's apt mirror for SUITE (and SUITE-security): deb822 .sources files first, then one-line
# sources.list entries.
mirror_for() {  # $1 = suite name to look for
  local suite="$1" f
  for f in /etc/apt/sources.list.d/*.sources; do
    [[ -e "$f" ]] || continue
    awk -v s="$suite" '
      /^URIs:/   { uri = $2 }
      /^Suites:/ { for (i = 2; i <= NF; i++) if ($i == s) found = 1 }
      /^$/       { if (found && uri) { print uri; exit } ; uri = ""; found = 0 }
      END        { if (found && uri) print uri }' "$f"
  done
  { cat /etc/apt/sources.list /etc/apt/sources.list.d/*.list 2>/dev/null || true; } \
    | awk -v s="$suite" '$1 == "deb" { u = ($2 ~ /^\[/) ? $3 : $2; t = ($2 ~ /^\[/) ? $4 : $3;
                                        if (t == s) print u }'
  return 0
}
DEBIAN_MIRROR="${DEBIAN_MIRROR:-$(mirror_for "$SUITE" | sed -n 1p)}"
SECURITY_MIRROR="${SECURITY_MIRROR:-$(mirror_for "$SUITE-security" | sed -n 1p)}"
if [[ -z "$DEBIAN_MIRROR" ]]; then
  echo "bootstrap-base: no $SUITE mirror in /etc/apt/sources.list*; set DEBIAN_MIRROR" >&2
  exit 1
fi

ROOT_PARENT="${WORKDIR:-$(mktemp -d /var/tmp/tfmf-base.XXXXXX)}"
ROOTFS="$ROOT_PARENT/rootfs"
trap 'rm -rf "$ROOT_PARENT"' EXIT
echo "bootstrap-base: debootstrap $SUITE from $DEBIAN_MIRROR into $ROOTFS"
start=$(date +%s)
debootstrap --variant=minbase --include=ca-certificates "$SUITE" "$ROOTFS" "$DEBIAN_MIRROR"

# apt sources inside the image: the same mirror(s), main only.
{
  echo "deb $DEBIAN_MIRROR $SUITE main"
  echo "deb $DEBIAN_MIRROR $SUITE-updates main"
  [[ -n "$SECURITY_MIRROR" ]] && echo "deb $SECURITY_MIRROR $SUITE-security main"
} > "$ROOTFS/etc/apt/sources.list"
# Keep the image small: no package lists, caches, logs or man pages; no recommends by default.
cat > "$ROOTFS/etc/apt/apt.conf.d/90tfmf-container" <<'EOF'
APT::Install-Recommends "false";
APT::Install-Suggests "false";
EOF
rm -rf "$ROOTFS"/var/lib/apt/lists/* "$ROOTFS"/var/cache/apt/*.bin "$ROOTFS"/var/cache/apt/archives/*.deb \
       "$ROOTFS"/var/log/* "$ROOTFS"/tmp/* "$ROOTFS"/usr/share/man/* "$ROOTFS"/usr/share/doc/*
# The host's resolver and hostname are bind-mounted by the engine at run time.
: > "$ROOTFS/etc/resolv.conf"
echo tfmf > "$ROOTFS/etc/hostname"

tar --numeric-owner -C "$ROOTFS" -c . \
  | "$ENGINE" import --change 'CMD ["/bin/bash"]' --change 'ENV LANG=C.UTF-8' - "$IMAGE"
echo "bootstrap-base: imported $IMAGE in $(( $(date +%s) - start )) s"
"$ENGINE" image ls "$IMAGE"
