#!/bin/sh
# Builds microvm-reseed.jar, the Java agent the microvm-agent binary embeds, from src/main.
# Reproducible: classes compiled for Java 9 (no debug tables: the jar ships in the binary) by JDK 17's javac (CI's: Debian's openjdk-17), put
# into the jar in name order with one fixed date by a few lines of Python (the `jar` tool writes
# the JDK's version into the manifest). `--check` builds it and fails when the committed jar
# differs (CI runs that): a change to src/main must come with the jar it builds.
set -eu
cd "$(dirname "$0")"
out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT
javac --release 9 -g:none -Xlint:all -Werror -encoding UTF-8 -d "$out/classes" \
  $(find src/main/java -name '*.java' | LC_ALL=C sort)
python3 - "$out/classes" src/main/resources/META-INF/MANIFEST.MF "$out/microvm-reseed.jar" <<'PY'
import os, sys, zipfile
classes, manifest, jar = sys.argv[1:]
DATE = (2026, 1, 1, 0, 0, 0)
def add(z, name, data):
    info = zipfile.ZipInfo(name, DATE)
    info.compress_type = zipfile.ZIP_DEFLATED
    info.external_attr = 0o644 << 16
    info.create_system = 3
    z.writestr(info, data, compresslevel=9)
with zipfile.ZipFile(jar, "w") as z:
    add(z, "META-INF/MANIFEST.MF", open(manifest, "rb").read())
    files = []
    for root, _, names in os.walk(classes):
        files += [os.path.relpath(os.path.join(root, n), classes) for n in names]
    for name in sorted(files):
        add(z, name.replace(os.sep, "/"), open(os.path.join(classes, name), "rb").read())
PY
if [ "${1:-}" = --check ]; then
  cmp -s "$out/microvm-reseed.jar" microvm-reseed.jar || {
    echo "inproc/java/microvm-reseed.jar is not what src/main builds: run inproc/java/build.sh and commit the jar" >&2
    exit 1
  }
  echo "inproc/java/microvm-reseed.jar: rebuilt from source, identical"
else
  cp "$out/microvm-reseed.jar" microvm-reseed.jar
  echo "inproc/java/microvm-reseed.jar: $(wc -c < microvm-reseed.jar) bytes"
fi
