#!/bin/sh
# /usr/bin/openatp: runs the bundle installed in /opt/openatp. A wrapper rather than a
# symlink so the bundle always finds its _internal folder, whatever the PATH lookup was.
# Qt wants a UTF-8 locale and says so on every start when none is set (cron, ssh, kiosks).
[ -n "${LC_ALL:-}${LC_CTYPE:-}${LANG:-}" ] || export LANG=C.UTF-8
exec /opt/openatp/openatp "$@"
