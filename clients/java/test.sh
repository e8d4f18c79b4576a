#!/bin/sh
# Builds the library and its tests with plain javac and runs them with the JUnit 5 console
# launcher (Debian's junit5 package), as CI does. Maven users: `mvn test` runs the same tests.
set -eu
cd "$(dirname "$0")"
JUNIT=${JUNIT_CONSOLE:-/usr/share/java/junit-platform-console-standalone.jar}
rm -rf build && mkdir -p build/classes build/test-classes
javac --release 17 -Xlint:all -Werror -d build/classes $(find src/main/java -name '*.java')
javac --release 17 -d build/test-classes -cp build/classes:"$JUNIT" $(find src/test/java -name '*.java')
(cd build/classes && jar --create --file ../microvm-agent-client.jar .)
exec java -Dmva.classpath="$PWD/build/classes:$PWD/build/test-classes" -jar "$JUNIT" --class-path build/classes:build/test-classes --scan-class-path \
  --disable-banner --details=tree --fail-if-no-tests
