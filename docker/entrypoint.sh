#!/usr/bin/env bash
# Starts a virtual X display when a window is wanted (CARIL_XVFB=1, e.g. for `caril drive` screenshots)
# and then runs the command in place of this shell, so that signals from tini reach it directly.
set -euo pipefail

if [[ "${CARIL_XVFB:-0}" == "1" ]]; then
    export DISPLAY="${DISPLAY:-:99}"
    Xvfb "${DISPLAY}" -screen 0 1280x720x24 -nolisten tcp &
    export SDL_VIDEODRIVER=x11
fi

exec "$@"
