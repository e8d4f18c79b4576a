#!/bin/sh
# Builds the Java agent and its tests with plain javac and runs them with the JUnit 5 console
# launcher (Debian's junit5 package), as CI does. Maven users: `mvn test` runs the same tests.
# The test JVM opens java.base's packages to the tests as the agent does to itself.
set -eu
cd "$(dirname "$0")"
JUNIT=${JUNIT_CONSOLE:-/usr/share/java/junit-platform-console-standalone.jar}
rm -rf build && mkdir -p build/classes build/test-classes
javac --release 9 -Xlint:all -Werror -encoding UTF-8 -d build/classes $(find src/main/java -name '*.java')
javac --release 17 -encoding UTF-8 -d build/test-classes -cp build/classes:"$JUNIT" $(find src/test/java -name '*.java')
exec java --add-opens java.base/java.lang=ALL-UNNAMED --add-opens java.base/java.util=ALL-UNNAMED \
  --add-opens java.base/java.util.concurrent=ALL-UNNAMED --add-opens java.base/java.security=ALL-UNNAMED \
  -jar "$JUNIT" --class-path build/classes:build/test-classes --scan-class-path \
  --disable-banner --details=tree --fail-if-no-tests
