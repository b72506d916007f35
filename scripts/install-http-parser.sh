#!/usr/bin/env bash
# Install http-parser 0.9.0, with its C parser, into the Python environment of PYTHON.
#
#   scripts/install-http-parser.sh PYTHON      e.g. scripts/install-http-parser.sh venv/bin/python
#
# Run it before `pip install pymesos==0.3.15` (or before installing this project, which needs
# pymesos). Idempotent: when `import http_parser.parser` already works it prints
# "http-parser: already installed" and exits 0.
#
# WHY this script exists:
#  * pymesos 0.3.15 (the Mesos binding; last release 2020) requires http-parser, pinned to
#    0.9.0 (2020; unmaintained, benoitc/http-parser#94 and #98 are open).
#  * http-parser 0.9.0's sdist ships a parser.c that an old Cython generated. It includes
#    CPython's private header `longintrepr.h`, which moved in Python 3.11. So on Python >= 3.11
#    `pip install http-parser==0.9.0`, and with it `pip install pymesos`, fails with
#    "longintrepr.h: No such file or directory" (douban/pymesos#130, open since 2023).
#    On Python >= 3.12 its setup.py fails even earlier: it imports `imp`, which was removed.
#  * Its Cython *source*, http_parser/parser.pyx, is fine. Regenerating parser.c from it with
#    a current Cython, and building without build isolation (so pip uses that parser.c and
#    our setuptools), gives a working C extension. For 3.12+ a stand-in `imp` module that
#    provides the one function setup.py uses (`load_source`) is put on PYTHONPATH.
#  * We want the C parser, not http_parser's pure-Python fallback (pyparser.py): the fallback
#    raises SyntaxWarnings on 3.12+, which our warnings-as-errors test settings make fatal.
# Nothing from http-parser is kept in this repository: the sdist is downloaded from PyPI with
# pip at install time into a temporary directory that is removed on exit.
set -euo pipefail

VERSION=0.9.0

say() { printf 'http-parser: %s\n' "$*" >&2; }
die() { printf 'http-parser: ERROR: %s\n' "$*" >&2; exit 1; }

[ $# -eq 1 ] || die "usage: $0 PYTHON   (the interpreter of the virtualenv to install into)"
PYTHON=$1
command -v "$PYTHON" >/dev/null 2>&1 || die "no Python interpreter at '$PYTHON'"

# Run outside any source tree so that only the installed package can be imported.
has_c_parser() { (cd / && "$PYTHON" -c 'import http_parser.parser') >/dev/null 2>&1; }

if has_c_parser; then
  say "already installed"
  exit 0
fi

WORK=$(mktemp -d "${TMPDIR:-/tmp}/http-parser-build.XXXXXX")
trap 'rm -rf "$WORK"' EXIT

# --- build tools: Cython >= 3 to regenerate parser.c; setuptools and wheel because we build
# without isolation (venvs of Python >= 3.12 ship neither).
if ! "$PYTHON" -c 'import Cython, sys; sys.exit(int(Cython.__version__.split(".")[0]) < 3)' >/dev/null 2>&1; then
  say "installing Cython>=3 into the environment (to regenerate parser.c)"
  "$PYTHON" -m pip install --quiet 'Cython>=3' || die "pip install 'Cython>=3' failed"
fi
if ! "$PYTHON" -c 'import setuptools, wheel' >/dev/null 2>&1; then
  say "installing setuptools and wheel into the environment (to build without isolation)"
  "$PYTHON" -m pip install --quiet setuptools wheel || die "pip install setuptools wheel failed"
fi

# --- the stand-in `imp` for setup.py on Python >= 3.12 (unused, and harmless, on 3.11).
mkdir "$WORK/shim"
cat >"$WORK/shim/imp.py" <<'SHIM'
"""Stand-in for the removed `imp` module: only what http-parser 0.9.0's setup.py uses."""
import importlib.util


def load_source(name, path):
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
SHIM
shim_pip() { PYTHONPATH="$WORK/shim${PYTHONPATH:+:$PYTHONPATH}" "$PYTHON" -m pip "$@"; }

# --- fetch and unpack the sdist. `pip download` of an sdist runs its setup.py for metadata,
# hence --no-build-isolation and the shim here too.
say "downloading the http-parser==$VERSION sdist from PyPI"
shim_pip download --quiet --no-deps --no-build-isolation --no-binary :all: --dest "$WORK" \
  "http-parser==$VERSION" || die "pip download of http-parser==$VERSION failed (see above)"
SDIST=$(find "$WORK" -maxdepth 1 -name 'http[-_]parser-*.tar.gz' | head -n 1)
[ -n "$SDIST" ] || die "pip download produced no http-parser sdist in $WORK"
say "unpacking $(basename "$SDIST")"
tar -xzf "$SDIST" -C "$WORK" || die "cannot unpack $SDIST"
SRC=$(find "$WORK" -mindepth 1 -maxdepth 1 -type d -name 'http[-_]parser-*' | head -n 1)
[ -f "$SRC/http_parser/parser.pyx" ] || die "the sdist has no http_parser/parser.pyx (unexpected layout in $SRC)"

# --- regenerate parser.c.
# language_level 2 (-2): parser.pyx was written for Cython 0.x, whose default was Python 2.
# Run from the sdist's root, not from http_parser/: that folder holds an http.py that would
# shadow the standard library's `http` package inside Cython itself.
# Cython 3 warns "Casting a GIL-requiring function into a nogil function". Harmless here: the
# callbacks only ever run inside HttpParser.execute(), which holds the GIL.
say "regenerating http_parser/parser.c with Cython $("$PYTHON" -c 'import Cython; print(Cython.__version__)')"
(cd "$SRC" && "$PYTHON" -m cython -2 --force http_parser/parser.pyx -o http_parser/parser.c) \
  || die "cython failed to translate $SRC/http_parser/parser.pyx"

# --- build and install.
say "building and installing (compiles a C extension: needs gcc and the Python headers)"
shim_pip install --quiet --no-deps --no-build-isolation "$SRC" \
  || die "building http-parser from $SRC failed (see the compiler output above; on Debian: apt-get install gcc python3-dev)"

has_c_parser || die "installed, but 'import http_parser.parser' (the C parser) still fails"
say "installed http-parser $VERSION with its C parser"
