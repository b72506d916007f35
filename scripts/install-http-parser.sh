#!/usr/bin/env bash
# Install http-parser 0.9.0 (with its C parser) into the Python environment of PYTHON.
#
#   scripts/install-http-parser.sh PYTHON      e.g. scripts/install-http-parser.sh venv/bin/python
#
# Run it before `pip install pymesos==0.3.15` (or the project). Idempotent: when
# `import http_parser.parser` already works it prints "http-parser: already installed" and exits.
#
# WHY this script exists:
#  * pymesos 0.3.15 (the Mesos binding, last released 2020) requires http-parser, pinned to
#    0.9.0 (2020, unmaintained: benoitc/http-parser#94, #98 are open).
#  * http-parser 0.9.0's sdist ships a parser.c that Cython generated years ago. It includes
#    CPython's private header `longintrepr.h`, which moved in Python 3.11, so on Python >= 3.11
#    `pip install http-parser==0.9.0` (and therefore `pip install pymesos`) fails with
#    "longintrepr.h: No such file or directory" (douban/pymesos#130, open since 2023). On 3.12+
#    its setup.py also imports the removed `imp` module when it has to compile.
#  * The Cython *source* (http_parser/parser.pyx) is fine. Regenerating parser.c from it with a
#    current Cython and building without build isolation (so setup.py sees the regenerated
#    file and our Cython) gives a working C extension.
#  * We want the C parser, not http_parser's pure-Python fallback (pyparser.py): the fallback
#    emits SyntaxWarnings on 3.12+ (fatal under our warnings-as-errors test settings) and is
#    slower.
# Nothing from http-parser is kept in this repository: the sdist is downloaded from PyPI at
# install time into a temporary directory that is removed on exit.
set -euo pipefail

VERSION=0.9.0

say() { printf 'http-parser: %s\n' "$*" >&2; }
die() { printf 'http-parser: ERROR: %s\n' "$*" >&2; exit 1; }

[ $# -eq 1 ] || die "usage: $0 PYTHON   (the interpreter of the virtualenv to install into)"
PYTHON=$1
command -v "$PYTHON" >/dev/null 2>&1 || die "no Python interpreter at '$PYTHON'"

# True when the C extension (not the pure-Python fallback) imports.
has_c_parser() { "$PYTHON" -c 'import http_parser.parser' >/dev/null 2>&1; }

if has_c_parser; then
  say "already installed"
  exit 0
fi

WORK=$(mktemp -d "${TMPDIR:-/tmp}/http-parser-build.XXXXXX")
trap 'rm -rf "$WORK"' EXIT

say "downloading the http-parser==$VERSION sdist from PyPI"
"$PYTHON" -m pip download --quiet --no-deps --no-binary :all: --dest "$WORK" "http-parser==$VERSION" \
  || die "pip download of http-parser==$VERSION failed (is PyPI reachable from here?)"

SDIST=$(find "$WORK" -maxdepth 1 -name 'http[-_]parser-*.tar.gz' | head -n 1)
[ -n "$SDIST" ] || die "pip download produced no http-parser sdist in $WORK"
say "unpacking $(basename "$SDIST")"
tar -xzf "$SDIST" -C "$WORK" || die "cannot unpack $SDIST"
SRC=$(find "$WORK" -mindepth 1 -maxdepth 1 -type d -name 'http[-_]parser-*' | head -n 1)
[ -f "$SRC/http_parser/parser.pyx" ] || die "the sdist has no http_parser/parser.pyx (unexpected layout in $SRC)"

if ! "$PYTHON" -c 'import Cython, sys; sys.exit(int(Cython.__version__.split(".")[0]) < 3)' >/dev/null 2>&1; then
  say "installing Cython>=3 into the environment (needed to regenerate parser.c)"
  "$PYTHON" -m pip install --quiet 'Cython>=3' || die "pip install 'Cython>=3' failed"
fi
# setuptools and wheel are needed because we build without build isolation (Python >= 3.12
# venvs ship neither).
if ! "$PYTHON" -c 'import setuptools, wheel' >/dev/null 2>&1; then
  say "installing setuptools and wheel into the environment (needed to build without isolation)"
  "$PYTHON" -m pip install --quiet setuptools wheel || die "pip install setuptools wheel failed"
fi

say "regenerating http_parser/parser.c with Cython $("$PYTHON" -c 'import Cython; print(Cython.__version__)')"
# language_level=2: parser.pyx was written for Cython 0.x, whose default was Python 2 semantics.
(cd "$SRC/http_parser" && "$PYTHON" -m cython -2 --force parser.pyx -o parser.c) \
  || die "cython failed to translate $SRC/http_parser/parser.pyx"

say "building and installing (this compiles a C extension; needs gcc and the Python headers)"
"$PYTHON" -m pip install --quiet --no-build-isolation --no-deps "$SRC" \
  || die "building http-parser from $SRC failed (see the compiler output above; on Debian: apt-get install gcc python3-dev)"

# Run outside the source tree so the installed package, not $SRC, is what gets imported.
(cd / && "$PYTHON" -c 'import http_parser.parser') \
  || die "installed, but 'import http_parser.parser' (the C parser) still fails"
say "installed http-parser $VERSION with its C parser"
