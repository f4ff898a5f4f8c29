#!/bin/sh
# A rootless container's supervisor: root of a user namespace that maps one id (here nobody's, as podman rootless
# maps the user's). It cannot become the sandbox id 65534, so it must sandbox as an unprivileged supervisor does,
# every layer on, instead of failing every worker's start (as it once did: "mount(tmpfs, scratch): EINVAL").
# Usage: rootless.sh CLI MODE
set -u
cli=$1 mode=$2
as_user=""
[ "$(id -u)" = 0 ] && as_user="setpriv --reuid=65534 --regid=65534 --clear-groups"
inside="$as_user unshare --user --map-root-user"
if ! $inside true 2>/dev/null; then
  echo "FAIL: this machine refuses an unprivileged user namespace, which the sandbox itself needs"; exit 1
fi
timeout=$((5 * ${SPR_TEST_TIME_SCALE:-1}))  # a process-mode run builds its process inside its time
out=$(cd / && $inside "$cli" run -c 'print(6 * 7)' --isolation "$mode" --timeout "$timeout" 2>&1)
case $out in
  *'"ok":true'*'"stdout":"42\n"'*) ;;
  *) echo "FAIL: the run did not succeed: $out"; exit 1 ;;
esac
layers=$(cd / && $inside "$cli" doctor --isolation "$mode" 2>&1)
if printf '%s\n' "$layers" | grep -q '^ *\[off'; then
  echo "FAIL: a layer is off:"; printf '%s\n' "$layers"; exit 1
fi
printf '%s\n' "$layers" | grep -q '^ *\[on \] root:' || { echo "FAIL: no own root: $layers"; exit 1; }
echo "ok: $mode"
