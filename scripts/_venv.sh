# Shared by scripts/serve and scripts/test: find Python >= 3.11 and make ./.venv with it.
VENV="${CALLREC_VENV:-.venv}"

ensure_venv() {
    if [ -x "$VENV/bin/python" ]; then return; fi
    local py=""
    for candidate in python3.13 python3.12 python3.11 python3; do
        if command -v "$candidate" >/dev/null 2>&1 &&
           "$candidate" -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null; then
            py="$candidate"; break
        fi
    done
    if [ -z "$py" ]; then
        echo "callrec needs Python 3.11 or newer (apt-get install python3)" >&2
        exit 1
    fi
    if ! "$py" -m venv "$VENV" 2>/dev/null; then
        # Debian and Ubuntu ship venv separately.
        if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
            apt-get update -qq && apt-get install -y -qq python3-venv >/dev/null
            rm -rf "$VENV"
            "$py" -m venv "$VENV"
        else
            echo "could not create a virtual environment: apt-get install python3-venv" >&2
            exit 1
        fi
    fi
    "$VENV/bin/pip" install --quiet --disable-pip-version-check --upgrade pip
}
