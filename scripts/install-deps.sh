#!/bin/sh
# Installs the Debian packages Kiln needs. Idempotent; a no-op (well under a second)
# when everything is already installed. Needs root only when something is missing.
#
#   scripts/install-deps.sh          # install what is missing, quietly
#   scripts/install-deps.sh --check  # exit 1 and list what is missing; install nothing
set -eu

PACKAGES="
etcd-server etcd-client
podman buildah runc debootstrap
docker-registry
nginx-light libnginx-mod-http-lua
libgit2-dev zlib1g-dev pkg-config libcurl4-openssl-dev libssl-dev
libmaven-compiler-plugin-java libmaven-jar-plugin-java libmaven-resources-plugin-java
libsurefire-java libmaven-install-plugin-java junit4
libcommons-lang3-java
git python3 curl zstd busybox-static
chromium
openssh-server fcgiwrap apache2-utils
"
# libcommons-lang3-java: the demo app's (fixtures/demo) runtime dependency; it puts
#   org/apache/commons/commons-lang3/3.12.0 into /usr/share/maven-repo, which the test
#   Maven mirror serves.
# zlib1g-dev: gzip of the scheduler's log archive (the CZlib system library target).
# python3, curl: the test Maven mirror (python3 -m http.server) and the fixture checks.
# zstd: fixtures/make-images.sh compresses its cached root filesystem tarballs.
# busybox-static: the tiny test image (localhost/kiln/busybox:1) for the container API tests.
# openssh-server, fcgiwrap: the private git servers of the tests (SSH with a deploy key; HTTPS
#   with basic auth through nginx and git http-backend as CGI); apache2-utils: htpasswd -B, the
#   bcrypt file of the test's second registry (Distribution takes bcrypt only).
# chromium: the headless browser the web console's tests drive (/usr/bin/chromium).

# Installed packages, one name a line ("install ok installed" only; half-installed or
# removed-with-config packages count as missing).
installed=$(dpkg-query -W -f='${Status} ${Package}\n' $PACKAGES 2>/dev/null \
    | awk '$1 == "install" && $2 == "ok" && $3 == "installed" { print $4 }') || true

missing=""
for p in $PACKAGES; do
    case "
$installed
" in
        *"
$p
"*) ;;
        *) missing="$missing $p" ;;
    esac
done

if [ -z "$missing" ]; then
    exit 0
fi

if [ "${1:-}" = "--check" ]; then
    echo "missing Debian packages:$missing" >&2
    exit 1
fi

if [ "$(id -u)" -ne 0 ]; then
    echo "install-deps: missing Debian packages:$missing" >&2
    echo "install-deps: run this script as root (sudo $0) to install them" >&2
    exit 1
fi

log=$(mktemp /tmp/kiln-install-deps.XXXXXX.log)
echo "install-deps: installing$missing (log: $log)"
export DEBIAN_FRONTEND=noninteractive
if ! apt-get update -qq >>"$log" 2>&1; then
    echo "install-deps: apt-get update failed; last lines of $log:" >&2
    tail -n 20 "$log" >&2
    exit 1
fi
# shellcheck disable=SC2086
if ! apt-get install -y -qq -o Dpkg::Use-Pty=0 $missing >>"$log" 2>&1; then
    echo "install-deps: apt-get install failed; last lines of $log:" >&2
    tail -n 20 "$log" >&2
    exit 1
fi
rm -f "$log"
echo "install-deps: done"
